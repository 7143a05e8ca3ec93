//! Model-based property test of the outbox (issue 5, point 7): random sequences of ingest
//! (group commits of observation batches, alarms, ADT events and dead letters for a few
//! devices), fetch (with random limits, live windows and backlog budgets; or the next cycle
//! prepared behind the bundles in flight, used only if they are all delivered), delivery
//! reports (success or failure per bundle, marked like the bridge marks them: one
//! `mark_sent_many` transaction, or bundle by bundle), failed cycles, repeated `mark_sent` /
//! `mark_sent_many`, a bridge restart and a crash (both connections dropped with records in flight,
//! the same file reopened), run against real SQLite files and checked after every step against a
//! plain in-memory model: `(stream, device, seq) → (received time, sent)`, including the cheap
//! counts (`ReaderDb::counts`, from heads and `next_seq`) against the model and `COUNT(*)`.
//!
//! `PROPTEST_CASES` overrides the number of cases (default 64, each of 50 to 100 operations);
//! `PROPTEST_RNG_SEED` fixes the seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use icu_gateway::store::db::{row_records, UnsentRow, ROW_MAX};
use icu_gateway::store::{
    AlarmWrite, DeadLetter, ObservationBatch, ReaderDb, StoreDb, WriteOutcome, WriteRequest,
};
use icu_outbox::{FetchRequest, Fetched, InFlightRuns, SentRange, Stream};
use icu_protos::v1::{AdtEvent, Alarm, Observation, StoredRecord};
use icu_protos::Message as _;
use proptest::prelude::*;

const DEVICES: [&str; 3] = ["mon-0", "mon-1", "vent-2"];
const ADT_SOURCE: &str = "adt";

#[derive(Debug, Clone)]
enum Write {
    Observations { device: usize, n: usize },
    Alarm { device: usize },
    Adt,
    DeadLetter { device: usize },
}

#[derive(Debug, Clone)]
enum Op {
    /// One group commit of these requests.
    Ingest(Vec<Write>),
    /// A bridge cycle's fetch; its runs become in-flight bundles of `bundle` records. With
    /// `after` (and bundles in flight) it is the next cycle prepared while those are delivered
    /// (`fetch_after` behind them): it becomes the in-flight set only if every bundle in flight
    /// is then delivered, else it is discarded, as the bridge does.
    Fetch {
        limit: usize,
        window: u64,
        budget: usize,
        bundle: usize,
        after: bool,
    },
    /// Delivery reports for the in-flight bundles, in order (missing = failed); the markable
    /// ones marked in one `mark_sent_many` call (true, as the bridge does) or one `mark_sent`
    /// per bundle (false).
    Report(Vec<bool>, bool),
    /// The cycle failed (broker down, timeout): nothing is marked.
    Fail,
    /// `mark_sent` again for a range delivered earlier, or (`mark_sent_many`) for it and the
    /// next few delivered ranges.
    Remark(usize, usize),
    /// The bridge restarts: its connection is reopened, in-flight records are forgotten.
    RestartBridge,
    /// The gateway dies: both connections dropped with records in flight, file reopened.
    Crash,
}

fn write_strategy() -> impl Strategy<Value = Write> {
    prop_oneof![
        6 => (0..DEVICES.len(), 0usize..6).prop_map(|(device, n)| Write::Observations { device, n }),
        // More readings than one row holds (ROW_MAX): the message takes two rows.
        1 => (0..DEVICES.len(), 60usize..70).prop_map(|(device, n)| Write::Observations { device, n }),
        2 => (0..DEVICES.len()).prop_map(|device| Write::Alarm { device }),
        1 => Just(Write::Adt),
        1 => (0..DEVICES.len()).prop_map(|device| Write::DeadLetter { device }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(write_strategy(), 1..4).prop_map(Op::Ingest),
        4 => (0usize..25, 0u64..12, 0usize..12, 1usize..5, prop::bool::weighted(0.3)).prop_map(|(limit, window, budget, bundle, after)| Op::Fetch { limit, window, budget, bundle, after }),
        4 => (prop::collection::vec(prop::bool::weighted(0.8), 0..12), prop::bool::weighted(0.75)).prop_map(|(o, many)| Op::Report(o, many)),
        1 => Just(Op::Fail),
        1 => (0usize..100, 0usize..4).prop_map(|(i, n)| Op::Remark(i, n)),
        1 => Just(Op::RestartBridge),
        1 => Just(Op::Crash),
    ]
}

type Key = (Stream, String, u64);

/// What must be true of the store: every committed record, its receive time and sent flag.
#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<Key, (i64, bool)>,
    next_seq: BTreeMap<(Stream, String), u64>,
}

impl Model {
    fn append(&mut self, stream: Stream, device: &str, n: usize, received_us: i64) -> (u64, u64) {
        let next = self
            .next_seq
            .entry((stream, device.to_owned()))
            .or_insert(1);
        let first = *next;
        for seq in first..first + n as u64 {
            self.records
                .insert((stream, device.to_owned(), seq), (received_us, false));
        }
        *next += n as u64;
        (first, *next - 1)
    }

    /// Lowest unsent seq and its receive time, per `(stream, device)`.
    fn heads(&self) -> BTreeMap<(Stream, String), (u64, i64)> {
        let mut heads = BTreeMap::new();
        for ((stream, device, seq), (received, sent)) in &self.records {
            if !sent {
                heads
                    .entry((*stream, device.clone()))
                    .or_insert((*seq, *received));
            }
        }
        heads
    }
}

/// One bundle awaiting its delivery report (the bridge's memory only).
#[derive(Debug, Clone)]
struct Bundle {
    stream: Stream,
    device: String,
    first: u64,
    last: u64,
}

struct Harness {
    path: PathBuf,
    store: StoreDb,
    reader: ReaderDb,
    check: rusqlite::Connection,
    model: Model,
    in_flight: Vec<Bundle>,
    /// The next cycle, fetched behind `in_flight` while it is delivered.
    prepared: Option<Vec<Bundle>>,
    delivered: Vec<Bundle>,
    clock: i64,
}

fn open_store(path: &Path) -> (StoreDb, ReaderDb, rusqlite::Connection) {
    // synchronous=NORMAL: this test is about the state machine, not fsync (the crash test is);
    // a 1 GiB budget, so the disk-budget policy never prunes here.
    (
        StoreDb::open(path, "gw-model", false, 1 << 30).expect("open store"),
        ReaderDb::open(path, false).expect("open reader"),
        rusqlite::Connection::open(path).expect("open check connection"),
    )
}

impl Harness {
    fn new(dir: &Path) -> Self {
        let path = dir.join("outbox.db");
        let (store, reader, check) = open_store(&path);
        Self {
            path,
            store,
            reader,
            check,
            model: Model::default(),
            in_flight: Vec::new(),
            prepared: None,
            delivered: Vec::new(),
            clock: 0,
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.clock += 1;
        let now_us = self.clock * 1000;
        match op {
            Op::Ingest(writes) => self.ingest(writes, now_us)?,
            Op::Fetch {
                limit,
                window,
                budget,
                bundle,
                after,
            } => {
                let request = FetchRequest {
                    limit: *limit,
                    live_since_us: now_us - (*window as i64) * 1000,
                    backlog_budget: *budget,
                    held: None,
                };
                let prepare = *after && !self.in_flight.is_empty();
                let mut behind = InFlightRuns::new();
                if prepare {
                    for b in &self.in_flight {
                        let to = behind.entry((b.stream, b.device.clone())).or_insert(b.last);
                        *to = (*to).max(b.last);
                    }
                }
                let fetched = self
                    .reader
                    .fetch_after(&request, &behind)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                self.check_fetch(&request, &behind, &fetched)?;
                if prepare {
                    self.prepared = Some(bundles(&fetched.records, *bundle));
                } else {
                    // A new cycle: whatever the last one left unresolved failed.
                    self.in_flight = bundles(&fetched.records, *bundle);
                    self.prepared = None;
                }
            }
            Op::Report(outcomes, many) => self.report(outcomes, *many)?,
            Op::Fail => {
                self.in_flight.clear();
                self.prepared = None;
            }
            Op::Remark(i, n) => {
                if !self.delivered.is_empty() {
                    let start = i % self.delivered.len();
                    let b = self.delivered[start].clone();
                    let changed = if *n == 0 {
                        self.reader.mark_sent(b.stream, &b.device, b.first, b.last)
                    } else {
                        let end = (start + n).min(self.delivered.len());
                        self.reader
                            .mark_sent_many(&sent_ranges(&self.delivered[start..end]))
                    }
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(changed, 0, "marking again changes nothing: {:?}", b);
                }
            }
            Op::RestartBridge => {
                self.in_flight.clear();
                self.prepared = None;
                self.reader = ReaderDb::open(&self.path, false).expect("reopen reader");
            }
            Op::Crash => {
                // In-flight records were never marked; the model keeps them unsent.
                self.in_flight.clear();
                self.prepared = None;
                let (store, reader, check) = open_store(&self.path);
                // Drop the old connections first (assignment drops the old value after the new
                // one is opened; both orders are valid for SQLite, this one mirrors a restart).
                self.store = store;
                self.reader = reader;
                self.check = check;
            }
        }
        self.check_store()
    }

    fn ingest(&mut self, writes: &[Write], now_us: i64) -> Result<(), TestCaseError> {
        let requests: Vec<WriteRequest> = writes
            .iter()
            .map(|w| match *w {
                Write::Observations { device, n } => WriteRequest::Observations(ObservationBatch {
                    device_id: DEVICES[device].into(),
                    bed: "bed-1".into(),
                    dedup: None,
                    observations: (0..n)
                        .map(|i| Observation {
                            mdc_code: 150456,
                            value: Some(90.0 + i as f64),
                            unit_ucum: "%".into(),
                            receive_time_us: now_us,
                            ..Default::default()
                        })
                        .collect(),
                    order: Default::default(),
                    traceparent: None,
                    waveforms: Default::default(),
                }),
                Write::Alarm { device } => WriteRequest::Alarm(AlarmWrite {
                    device_id: DEVICES[device].into(),
                    bed: "bed-1".into(),
                    alarm: Alarm {
                        event_time_us: now_us,
                        ..Default::default()
                    },
                }),
                Write::Adt => WriteRequest::Adt(AdtEvent {
                    event: "A01".into(),
                    patient_id: "P1".into(),
                    bed: "bed-1".into(),
                    event_time_us: now_us,
                    ..Default::default()
                }),
                Write::DeadLetter { device } => WriteRequest::DeadLetter(DeadLetter {
                    received_us: now_us,
                    transport: "mllp".into(),
                    peer: "127.0.0.1:1".into(),
                    device_id: Some(DEVICES[device].into()),
                    stream_offset: 0,
                    ack_code: "AE".into(),
                    error_code: 100,
                    location: None,
                    reason: "model test".into(),
                    raw: b"x".to_vec(),
                    raw_len: 1,
                }),
            })
            .collect();
        let results = self.store.commit_batch(&requests);
        prop_assert_eq!(results.len(), writes.len());
        for (w, result) in writes.iter().zip(results) {
            let outcome = result.map_err(|e| TestCaseError::fail(format!("commit: {e}")))?;
            let (stream, device, n) = match *w {
                Write::Observations { device, n } => (Stream::Observations, DEVICES[device], n),
                Write::Alarm { device } => (Stream::Alarms, DEVICES[device], 1),
                Write::Adt => (Stream::Adt, ADT_SOURCE, 1),
                Write::DeadLetter { device } => (Stream::DeadLetters, DEVICES[device], 1),
            };
            let (first, last) = self.model.append(stream, device, n, now_us);
            match outcome {
                WriteOutcome::Stored {
                    first_seq,
                    last_seq,
                } => {
                    prop_assert_eq!(
                        (first_seq, last_seq),
                        (first, last),
                        "seqs continue gaplessly"
                    );
                }
                WriteOutcome::DeadLettered { .. } => {
                    prop_assert_eq!(stream, Stream::DeadLetters)
                }
                other => prop_assert!(false, "unexpected outcome {:?}", other),
            }
        }
        Ok(())
    }

    /// Delivery reports, marked like the bridge marks them: per (stream, device), in order, up
    /// to the first failed bundle; all in one `mark_sent_many` call or bundle by bundle.
    fn report(&mut self, outcomes: &[bool], many: bool) -> Result<(), TestCaseError> {
        let mut blocked: Vec<(Stream, String)> = Vec::new();
        let mut markable = Vec::new();
        let prepared = self.prepared.take();
        for (i, b) in std::mem::take(&mut self.in_flight).into_iter().enumerate() {
            let id = (b.stream, b.device.clone());
            if blocked.contains(&id) {
                continue;
            }
            if !outcomes.get(i).copied().unwrap_or(false) {
                blocked.push(id);
                continue;
            }
            markable.push(b);
        }
        if many {
            let changed = self
                .reader
                .mark_sent_many(&sent_ranges(&markable))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected: u64 = markable.iter().map(|b| b.last - b.first + 1).sum();
            prop_assert_eq!(
                changed as u64,
                expected,
                "every record of the delivered bundles was unsent: {:?}",
                &markable
            );
        }
        for b in markable {
            if !many {
                let changed = self
                    .reader
                    .mark_sent(b.stream, &b.device, b.first, b.last)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(
                    changed as u64,
                    b.last - b.first + 1,
                    "every record of a delivered bundle was unsent: {:?}",
                    b
                );
            }
            for seq in b.first..=b.last {
                let rec = self
                    .model
                    .records
                    .get_mut(&(b.stream, b.device.clone(), seq));
                let rec = rec.ok_or_else(|| TestCaseError::fail("marked a record never stored"))?;
                rec.1 = true;
            }
            self.delivered.push(b);
        }
        // The prepared next cycle goes out only if everything in flight was delivered.
        if blocked.is_empty() {
            if let Some(next) = prepared {
                self.in_flight = next;
            }
        }
        Ok(())
    }

    /// A fetch returns only unsent records, each device's run from its lowest unsent seq without
    /// a hole, in drain order (alarms, ADT, live, backlog up to the budget, dead letters), and
    /// shares each class fairly.
    ///
    /// A fetch behind in-flight runs (`behind`) reads each such device from the seq after
    /// them; its class is still decided by its head.
    fn check_fetch(
        &self,
        request: &FetchRequest,
        behind: &InFlightRuns,
        fetched: &Fetched<UnsentRow>,
    ) -> Result<(), TestCaseError> {
        let rows = &fetched.records;
        prop_assert!(rows.len() <= request.limit);
        let keys: Vec<(Stream, &str, u64)> = rows
            .iter()
            .map(|r| (r.stream, r.device_id.as_str(), r.seq))
            .collect();
        prop_assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "ordered by (stream, device, seq), alarms first, no duplicate: {:?}",
            keys
        );
        let heads = self.model.heads();
        // Where each device's run starts: its head, or after its in-flight run.
        let start = |id: &(Stream, String)| -> u64 {
            let head = heads[id].0;
            behind.get(id).map_or(head, |last| head.max(last + 1))
        };
        // Unsent records a fetch may return of a device: from its start on.
        let unsent_from = |id: &(Stream, String)| -> usize {
            let from = start(id);
            self.model
                .records
                .range((id.0, id.1.clone(), from)..=(id.0, id.1.clone(), u64::MAX))
                .filter(|(_, (_, sent))| !sent)
                .count()
        };
        let mut runs: BTreeMap<(Stream, String), Vec<u64>> = BTreeMap::new();
        for r in rows {
            let state = self
                .model
                .records
                .get(&(r.stream, r.device_id.clone(), r.seq));
            prop_assert_eq!(
                state.map(|s| s.1),
                Some(false),
                "fetched {:?} {} {} must be committed and unsent",
                r.stream,
                &r.device_id,
                r.seq
            );
            let stored = StoredRecord::decode(r.payload.as_slice())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                (stored.seq, stored.device_id.as_str()),
                (r.seq, r.device_id.as_str())
            );
            prop_assert_eq!(stored.gateway_id.as_str(), "gw-model");
            runs.entry((r.stream, r.device_id.clone()))
                .or_default()
                .push(r.seq);
        }
        for (id, seqs) in &runs {
            let head = start(id);
            let expected: Vec<u64> = (head..head + seqs.len() as u64).collect();
            prop_assert_eq!(
                seqs,
                &expected,
                "{:?} starts at its head (or behind its in-flight run), no hole",
                id
            );
        }

        // Class sizes: each class takes what it has, up to what is left of the limit.
        let live = |received: i64| received >= request.live_since_us;
        let class_of = |stream: Stream, device: &str| -> usize {
            match stream {
                Stream::Alarms => 0,
                Stream::Adt => 1,
                // The model writes no audit entries (they live in the gateway's audit_log).
                Stream::Audit => 2,
                Stream::Observations if live(heads[&(stream, device.to_owned())].1) => 3,
                Stream::Observations => 4,
                Stream::Waveforms => 5,
                Stream::DeadLetters => 6,
            }
        };
        let mut available = [0usize; 7];
        for (stream, device) in heads.keys() {
            available[class_of(*stream, device)] += unsent_from(&(*stream, device.clone()));
        }
        let mut got = [0usize; 7];
        for r in rows {
            got[class_of(r.stream, &r.device_id)] += 1;
        }
        let mut left = request.limit;
        for class in 0..7 {
            let mut want = available[class].min(left);
            if class == 4 {
                want = want.min(request.backlog_budget);
            }
            prop_assert_eq!(
                got[class],
                want,
                "class {} (alarms, adt, audit, live, backlog, dead letters) of {:?}: available {:?}, got {:?}",
                class,
                request,
                available,
                got
            );
            left -= want;
        }
        prop_assert_eq!(fetched.backlog, got[4], "backlog count reported");

        // Fair: within a class, a device that got 2+ fewer than another got all it had.
        for class in 0..6 {
            let members: Vec<&(Stream, String)> = heads
                .keys()
                .filter(|(s, d)| class_of(*s, d) == class)
                .collect();
            for a in &members {
                for b in &members {
                    let ga = runs.get(*a).map_or(0, Vec::len);
                    let gb = runs.get(*b).map_or(0, Vec::len);
                    if ga + 1 < gb {
                        prop_assert_eq!(
                            ga,
                            unsent_from(a),
                            "{:?} got {} while {:?} got {}",
                            a,
                            ga,
                            b,
                            gb
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The file holds exactly the model: every committed record (gapless seqs per stream and
    /// device), with its sent flag, and the next seq of every stream. A row holds the records
    /// `seq .. seq + n` (each decodes with its own seq); they are sent when the row is, or up
    /// to `sent_upto` while it is partly sent.
    fn check_store(&self) -> Result<(), TestCaseError> {
        let mut stmt = self
            .check
            .prepare_cached(
                "SELECT kind, device_id, seq, n, received_us, sent, sent_upto, payload FROM records",
            )
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    (
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ),
                    (
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Vec<u8>>(7)?,
                    ),
                ))
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut stored: BTreeMap<Key, (i64, bool)> = BTreeMap::new();
        for row in rows {
            let ((kind, device, seq, n), (received, sent, sent_upto, payload)) =
                row.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let stream = Stream::from_code(kind).ok_or_else(|| TestCaseError::fail("bad kind"))?;
            prop_assert!(
                (1..=ROW_MAX as i64).contains(&n),
                "row {device} {seq} holds {n}"
            );
            prop_assert!(
                sent == 1 || sent_upto < seq + n - 1,
                "a row sent up to its last record is sent"
            );
            let records = row_records(n as usize, &payload).map_err(TestCaseError::fail)?;
            for (i, record) in records.into_iter().enumerate() {
                let s = seq + i as i64;
                let decoded = StoredRecord::decode(record.as_slice())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(decoded.seq, s as u64, "record {} of row {}", i, seq);
                stored.insert(
                    (stream, device.clone(), s as u64),
                    (received, sent != 0 || s <= sent_upto),
                );
            }
        }
        prop_assert_eq!(&stored, &self.model.records, "store and model agree");
        let mut stmt = self
            .check
            .prepare_cached("SELECT kind, device_id, next_seq FROM devices")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let next: BTreeMap<(Stream, String), u64> = stmt
            .query_map([], |r| {
                Ok((
                    (
                        Stream::from_code(r.get(0)?).expect("known kind"),
                        r.get::<_, String>(1)?,
                    ),
                    r.get::<_, i64>(2)? as u64,
                ))
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&next, &self.model.next_seq, "next seq per (stream, device)");
        // Sent is a prefix per (stream, device): no unsent record behind a sent one.
        let heads = self.model.heads();
        for ((stream, device, seq), (_, sent)) in &self.model.records {
            if let Some((head, _)) = heads.get(&(*stream, device.clone())) {
                prop_assert_eq!(*sent, seq < head, "{:?} {} {}", stream, device, seq);
            }
        }
        // The cheap counts (index seeks, no COUNT(*)) are exact while the invariants hold.
        let fail = |e: icu_gateway::store::StoreError| TestCaseError::fail(e.to_string());
        let counts = self.reader.counts().map_err(fail)?;
        let unsent = self.model.records.values().filter(|(_, s)| !s).count() as u64;
        prop_assert_eq!(
            (counts.records, counts.unsent),
            (self.model.records.len() as u64, unsent),
            "counts (records, unsent) from the heads"
        );
        prop_assert_eq!(
            self.reader.exact_counts().map_err(fail)?,
            (counts.records, counts.unsent)
        );
        let mut by_stream: BTreeMap<Stream, u64> = BTreeMap::new();
        for ((stream, _, _), (_, sent)) in &self.model.records {
            if !sent {
                *by_stream.entry(*stream).or_default() += 1;
            }
        }
        let got: BTreeMap<Stream, u64> = self
            .reader
            .unsent_by_stream()
            .map_err(fail)?
            .into_iter()
            .collect();
        prop_assert_eq!(got, by_stream, "unsent per stream");
        Ok(())
    }
}

fn sent_ranges(bundles: &[Bundle]) -> Vec<SentRange> {
    bundles
        .iter()
        .map(|b| SentRange {
            stream: b.stream,
            device_id: b.device.clone(),
            first_seq: b.first,
            last_seq: b.last,
        })
        .collect()
}

/// Splits the fetched runs into bundles of at most `size` consecutive seqs of one device.
fn bundles(rows: &[UnsentRow], size: usize) -> Vec<Bundle> {
    let mut out: Vec<Bundle> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(b)
                if b.stream == r.stream
                    && b.device == r.device_id
                    && b.last + 1 == r.seq
                    && ((b.last - b.first + 1) as usize) < size =>
            {
                b.last = r.seq;
            }
            _ => out.push(Bundle {
                stream: r.stream,
                device: r.device_id.clone(),
                first: r.seq,
                last: r.seq,
            }),
        }
    }
    out
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_outbox_follows_its_model(ops in prop::collection::vec(op_strategy(), 50..100)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness::new(dir.path());
        for op in &ops {
            h.apply(op)?;
        }
        // Drain: with everything delivered, nothing committed is left unsent or lost.
        for _ in 0..1000 {
            h.apply(&Op::Fetch { limit: 50, window: 0, budget: 50, bundle: 3, after: false })?;
            if h.in_flight.is_empty() {
                break;
            }
            let all = vec![true; h.in_flight.len()];
            h.apply(&Op::Report(all, true))?;
        }
        prop_assert!(h.model.records.values().all(|(_, sent)| *sent), "drained");
        prop_assert_eq!(h.reader.counts().map_err(|e| TestCaseError::fail(e.to_string()))?.unsent, 0);
    }
}
