//! The store-and-forward promise, end to end (issue 5, point 7): every observation the gateway
//! acknowledged reaches Kafka, and a record that arrives twice carries an already-seen
//! (gateway, device, seq) key with identical content, however the gateway or the broker fails
//! in between. Real parts throughout: `icu-sim pcd01` (several beds sending continuously, each
//! un-ACKed message re-sent until it is acknowledged) → `icu-gateway` (a real process) → a real
//! Kafka-protocol broker (tansu) → the verifier of `icu-bridge consume`.
//!
//! * crash: the gateway is SIGKILLed at random points while the simulator sends and the bridge
//!   forwards, and restarted on the same data folder and ports; 10 cycles, or
//!   `ICU_SOAK_CYCLES` (the soak: `ICU_SOAK_CYCLES=100`, see `scripts/soak`);
//! * outage: the broker is stopped for longer than the bridge's `message_timeout_ms` (5 s
//!   here) while readings are acknowledged, then started again on the same port with its data;
//!   `ICU_OUTAGE_SECS` sets the outage (default 15 s);
//! * broker restarts (stop and start at once) at random points mid-forwarding; 3 restarts, or
//!   `ICU_BROKER_RESTARTS`. The stop is SIGTERM, then SIGKILL 3 s later. tansu 0.6 does not
//!   drain requests in progress on SIGTERM: it either exits at once (status 0) or waits on its
//!   client connections and is killed (137), and either way may cut a produce short. Its S3
//!   engine writes a produce in three steps (the producer's sequence number, the high watermark,
//!   the batch), so a stop between them leaves a batch that the broker never stored but whose
//!   sequence it recorded (both kinds of stop were seen to): the producer's retry is then
//!   answered DUPLICATE_SEQUENCE_NUMBER, which
//!   librdkafka reports as delivered (its records at offsets -1, 0, 1, ...). What this proves:
//!   the bridge never marks sent a record of a batch answered so, and sends it again, so even a
//!   broker that loses a batch this way loses no acknowledged reading (it costs duplicates). On
//!   a loss the test prints the missing seqs, whether the gateway's store has them marked sent,
//!   the same after re-reading the topic, offset holes and the broker's error lines, and keeps
//!   the logs and the database in a folder it names;
//! * alarms first: alarms raised while the broker is down reach `icu.alarms` before the backlog
//!   of observations reaches `icu.observations` (Kafka CreateTime of each record, which the
//!   producer stamps when the bridge hands the record over). `ICU_OUTAGE_SECS` sets the outage
//!   (default 20 s); `ICU_OUTAGE_SECS=600` is the 10-minute acceptance run.
//!
//! The random points come from a seed printed at the start; `ICU_DURABILITY_SEED` repeats a
//! run. The broker tests use a durable broker (`Broker::start_durable`: tansu on an S3
//! emulator), so a stopped broker comes back with what it had.
//!
//! The checks, against the simulator's manifest of AA-acknowledged observations:
//! every record verifies and parses; per device the seqs on the topic are exactly 1..=n (no
//! gap) and first seen in increasing order; a record seen again (same device and seq range) has
//! the same bytes and signature, and any seq seen again has the same content and gateway; and
//! every acknowledged observation (device, device time, MDC code, value, unit) is on the topic.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use icu_cloud_bridge::consume::{
    consume, report_from_records, ConsumeOptions, ConsumeReport, ConsumedRecord,
};
use icu_cloud_bridge::fhir::observations_of;
use icu_cloud_bridge::headers;
use icu_cloud_bridge::signing::load_public_key;
use icu_sim::pcd01::SentObservation;
use icu_tests::{free_port, wait_for, Broker, TOPICS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use support::{config_text, http_get_json, keygen, GatewayProc, SimProc, SimRun, SPO2_LOW_ALARM};

const OBSERVATIONS: &str = "icu.observations";
const ALARMS: &str = "icu.alarms";
const GATEWAY_ID: &str = "test-gw";

// ---------------------------------------------------------------------------------------------
// Set-up helpers

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        _ => default,
    }
}

/// A small deterministic generator (splitmix64) for the random kill and restart points.
struct Rng(u64);

impl Rng {
    /// Seeded from `ICU_DURABILITY_SEED`, else the clock; the seed is printed.
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("ICU_DURABILITY_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        println!("{test}: seed {seed} (ICU_DURABILITY_SEED={seed} repeats the random points)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration in `[lo, hi)`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = (hi - lo).as_millis() as u64;
        lo + Duration::from_millis(self.next() % span.max(1))
    }
}

/// A gateway config with fixed MLLP and HTTP ports (a restarted gateway is where the simulator
/// and the test expect it), the bridge's message timeout at 5 s, and `extra` tables before the
/// generated `[[beds]]`.
fn gateway_config(dir: &Path, beds: usize, kafka: &str, extra: &str) -> String {
    let cfg = config_text(dir, beds, Some(kafka), "");
    let any_port = "listen = \"127.0.0.1:0\"";
    assert_eq!(
        cfg.matches(any_port).count(),
        2,
        "mllp and http listen: {cfg}"
    );
    assert!(
        cfg.contains("message_timeout_ms = 5000"),
        "the outage test relies on a 5 s message timeout: {cfg}"
    );
    let cfg = cfg
        .replacen(
            any_port,
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
            1,
        )
        .replacen(
            any_port,
            &format!("listen = \"127.0.0.1:{}\"", free_port()),
            1,
        );
    cfg.replacen("[[beds]]", &format!("{extra}\n[[beds]]"), 1)
}

fn status(gw: &GatewayProc) -> Option<serde_json::Value> {
    http_get_json(gw.endpoints.http, "/api/status").ok()
}

fn unsent(s: &serde_json::Value) -> Option<u64> {
    s["store"]["unsent"].as_u64()
}

fn online(s: &serde_json::Value) -> bool {
    s["backbone"]["state"] == "online"
}

fn forwarded_records(s: &serde_json::Value) -> u64 {
    s["backbone"]["forwarded_records"].as_u64().unwrap_or(0)
}

fn acks_aa(s: &serde_json::Value) -> u64 {
    s["mllp"]["acks_aa"].as_u64().unwrap_or(0)
}

/// Waits until the bridge is online with an empty outbox.
fn wait_drained(gw: &GatewayProc, deadline: Duration) {
    let mut last = serde_json::Value::Null;
    wait_for(deadline, "the outbox to drain to Kafka", || {
        let s = status(gw)?;
        let done = online(&s) && unsent(&s) == Some(0);
        last = s;
        done.then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}; last status: {last}"));
}

/// A broker with the default topics (durable or in memory), a gateway for `beds` simulated beds
/// on fixed ports forwarding to it, and the gateway's public key.
struct Rig {
    // Fields drop in order: the gateway stops before the broker, the folder goes last.
    gw: GatewayProc,
    broker: Broker,
    key: ed25519_dalek::VerifyingKey,
    beds: usize,
    dir: tempfile::TempDir,
}

impl Rig {
    fn start(beds: usize, durable: bool, extra_config: &str) -> Rig {
        let broker = if durable {
            Broker::start_durable().expect("durable broker")
        } else {
            Broker::start().expect("broker")
        };
        broker.create_topics(TOPICS).expect("topics");
        let dir = tempfile::tempdir().unwrap();
        let key = load_public_key(&keygen(dir.path())).unwrap();
        let config = gateway_config(dir.path(), beds, &broker.addr, extra_config);
        let gw = GatewayProc::start(dir.path(), &config);
        Rig {
            gw,
            broker,
            key,
            beds,
            dir,
        }
    }

    /// `icu-sim pcd01` for every bed at `rate` messages/s, running until stopped.
    fn sim(&self, rate: f64, extra: &[&str]) -> SimProc {
        let manifest = self.dir.path().join("manifest.jsonl");
        SimProc::start(self.gw.endpoints.mllp, self.beds, rate, &manifest, extra)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// What reached Kafka

/// One observation as first seen on the topic, with what a duplicate must repeat.
#[derive(Debug, Clone, PartialEq)]
struct Content {
    gateway: Option<String>,
    mdc_code: u32,
    value: Option<u64>,
    unit: Option<String>,
    effective: Option<String>,
}

/// The topic, checked and indexed by (device, seq).
struct Arrived {
    records: usize,
    /// Records that carried at least one already-seen seq.
    duplicate_records: usize,
    /// Extra sightings of a seq.
    duplicate_seqs: u64,
    /// (device, seq) → content, from the first sighting.
    seen: BTreeMap<(String, u64), Content>,
    /// Highest seq per device.
    last_seq: BTreeMap<String, u64>,
}

impl Arrived {
    fn observations(&self) -> usize {
        self.seen.len()
    }
}

fn read_topic(
    broker: &str,
    topic: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> (ConsumeReport, Vec<ConsumedRecord>) {
    consume(&ConsumeOptions {
        brokers: broker.to_owned(),
        topic: topic.to_owned(),
        public_key: Some(*key),
        idle_timeout: Duration::from_secs(1),
        max_wait: Duration::from_secs(120),
    })
    .unwrap_or_else(|e| panic!("consuming {topic}: {e}"))
}

/// Checks every record of a topic of observation bundles and indexes its observations: each
/// record verifies and parses, carries this gateway's id and a seq range that matches its
/// observations; a record with an already-seen seq range has the same bytes and signature; an
/// already-seen seq has the same content; per device the first sightings come in increasing seq
/// order and cover exactly 1..=n.
fn check_topic(report: &ConsumeReport, records: &[ConsumedRecord]) -> Arrived {
    assert_eq!(report.signatures_bad, 0, "bad signatures: {report:?}");
    assert_eq!(report.unsigned, 0, "unsigned records: {report:?}");
    assert_eq!(report.unparseable, 0, "unparseable records: {report:?}");
    let mut records: Vec<&ConsumedRecord> = records.iter().collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut arrived = Arrived {
        records: records.len(),
        duplicate_records: 0,
        duplicate_seqs: 0,
        seen: BTreeMap::new(),
        last_seq: BTreeMap::new(),
    };
    // (device, first seq, last seq) → (value, signature) of the record first sent with it.
    type Sent<'a> = (&'a [u8], Option<&'a String>);
    let mut ranges: BTreeMap<(String, u64, u64), Sent> = BTreeMap::new();
    for r in records {
        let at = format!("partition {} offset {}", r.partition, r.offset);
        assert_eq!(r.signature_ok, Some(true), "{at}: signature");
        let device = r
            .device_id
            .clone()
            .unwrap_or_else(|| panic!("{at}: no device header"));
        let gateway = r.headers.get(headers::GATEWAY_ID).cloned();
        assert_eq!(gateway.as_deref(), Some(GATEWAY_ID), "{at}: gateway header");
        let (first, last) = (r.seq_first.unwrap(), r.seq_last.unwrap());
        let obs = observations_of(&r.value).unwrap_or_else(|e| panic!("{at}: {e}"));
        let seqs: Vec<u64> = obs.iter().map(|o| o.seq).collect();
        assert_eq!(
            seqs,
            (first..=last).collect::<Vec<_>>(),
            "{at}: seqs of {device}"
        );
        let signature = r.headers.get(headers::SIGNATURE);
        match ranges.get(&(device.clone(), first, last)) {
            Some((bytes, sig)) => {
                assert!(
                    *bytes == r.value.as_slice() && *sig == signature,
                    "{at}: {device} seqs {first}..={last} sent again with other bytes or signature"
                );
            }
            None => {
                ranges.insert((device.clone(), first, last), (&r.value, signature));
            }
        }
        let mut repeated = false;
        for o in obs {
            let content = Content {
                gateway: gateway.clone(),
                mdc_code: o.mdc_code,
                value: o.value.map(f64::to_bits),
                unit: o.unit,
                effective: o.effective,
            };
            let key = (device.clone(), o.seq);
            if let Some(before) = arrived.seen.get(&key) {
                assert_eq!(
                    *before, content,
                    "{at}: {device} seq {} again with other content",
                    o.seq
                );
                repeated = true;
                arrived.duplicate_seqs += 1;
                continue;
            }
            let newest = arrived.last_seq.entry(device.clone()).or_insert(0);
            assert!(
                o.seq > *newest,
                "{at}: {device} seq {} first seen after seq {newest}: per-device order broken",
                o.seq
            );
            *newest = o.seq;
            arrived.seen.insert(key, content);
        }
        arrived.duplicate_records += usize::from(repeated);
    }
    for (device, &last) in &arrived.last_seq {
        let count = arrived
            .seen
            .range((device.clone(), 0)..=(device.clone(), u64::MAX))
            .count() as u64;
        assert_eq!(
            count,
            last,
            "{device}: seqs 1..={last} with {} missing",
            last - count
        );
        let gaps = &report.devices[device].gaps;
        assert!(
            gaps.is_empty(),
            "{device}: the consumer reports gaps {gaps:?}"
        );
    }
    arrived
}

type Identity = (String, i64, u32, u64, String);

fn identity_of_sent(o: &SentObservation) -> Identity {
    (
        o.device_id.clone(),
        o.device_time_us,
        o.mdc_code,
        o.value.to_bits(),
        o.ucum.clone(),
    )
}

/// Every acknowledged observation is on the topic: matched as a multiset on device, device
/// time, MDC code, value and unit (the simulator cannot know the gateway's seqs).
fn check_acknowledged_arrived(arrived: &Arrived, accepted: &[SentObservation]) {
    let mut on_topic: BTreeMap<Identity, u64> = BTreeMap::new();
    for ((device, seq), c) in &arrived.seen {
        let effective = c
            .effective
            .as_deref()
            .unwrap_or_else(|| panic!("{device} seq {seq}: no effective time"));
        let t = chrono::DateTime::parse_from_rfc3339(effective)
            .unwrap_or_else(|e| panic!("{device} seq {seq}: effective {effective}: {e}"));
        let identity = (
            device.clone(),
            t.timestamp_micros(),
            c.mdc_code,
            c.value
                .unwrap_or_else(|| panic!("{device} seq {seq}: no value")),
            c.unit.clone().unwrap_or_default(),
        );
        *on_topic.entry(identity).or_default() += 1;
    }
    let mut acked: BTreeMap<Identity, u64> = BTreeMap::new();
    for o in accepted {
        *acked.entry(identity_of_sent(o)).or_default() += 1;
    }
    let missing: Vec<String> = acked
        .iter()
        .filter_map(|(id, n)| {
            let got = on_topic.get(id).copied().unwrap_or(0);
            (got < *n).then(|| {
                format!(
                    "{} t={} code {} value {} {}: acknowledged {n}, on the topic {got}",
                    id.0,
                    id.1,
                    id.2,
                    f64::from_bits(id.3),
                    id.4
                )
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged observations missing from {OBSERVATIONS}, e.g.:\n{}",
        missing.len(),
        missing[..missing.len().min(20)].join("\n")
    );
}

/// Stops the simulator, waits for the outbox to drain, reads `icu.observations` with the
/// consumer tool and runs every check. Prints and returns the figures.
fn stop_drain_and_check(what: &str, sim: SimProc, rig: &Rig, drain: Duration) -> (SimRun, Arrived) {
    let (gw, broker, key) = (&rig.gw, &rig.broker, &rig.key);
    let run = sim.stop();
    let messages = run
        .accepted
        .iter()
        .map(|o| &o.control_id)
        .collect::<BTreeSet<_>>()
        .len();
    assert!(
        messages > 0,
        "{what}: nothing acknowledged:\n{}",
        run.stdout
    );
    wait_drained(gw, drain);
    let (report, records) = read_topic(&broker.addr, OBSERVATIONS, key);
    explain_missing(what, rig, &records);
    let arrived = check_topic(&report, &records);
    check_acknowledged_arrived(&arrived, &run.accepted);
    println!(
        "{what}: {messages} messages ({} observations) acknowledged; on {OBSERVATIONS}: {} records, \
         {} distinct observations over {} devices, {} records carrying a repeated key \
         ({} repeated observations, all identical), 0 gaps, 0 acknowledged missing",
        run.accepted.len(),
        arrived.records,
        arrived.observations(),
        arrived.last_seq.len(),
        arrived.duplicate_records,
        arrived.duplicate_seqs,
    );
    println!("{what}: simulator said:\n{}", run.stdout.trim_end());
    assert_the_checks_catch_loss(&records, key, &run, &arrived);
    (run, arrived)
}

/// Per device, the observation seqs (kind 1) the gateway's store holds, with their `sent` flag
/// (the SQLite file opened read-only).
fn store_seqs(db: &Path) -> BTreeMap<String, BTreeMap<u64, bool>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {} read-only: {e}", db.display()));
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut q = c
        .prepare("SELECT device_id, seq, sent FROM record_seqs WHERE kind = 1")
        .unwrap();
    let rows = q
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? != 0,
            ))
        })
        .unwrap();
    let mut out: BTreeMap<String, BTreeMap<u64, bool>> = BTreeMap::new();
    for row in rows {
        let (device, seq, sent) = row.unwrap();
        out.entry(device).or_default().insert(seq, sent);
    }
    out
}

/// Per device, the observation seqs on the topic.
fn topic_seqs(records: &[ConsumedRecord]) -> BTreeMap<String, BTreeSet<u64>> {
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for r in records {
        if let (Some(device), Some(first), Some(last)) = (&r.device_id, r.seq_first, r.seq_last) {
            out.entry(device.clone()).or_default().extend(first..=last);
        }
    }
    out
}

/// Per device, the seqs up to the highest one the store or the topic knows that are not on the
/// topic, as `first..=last (status)` runs; status: what the store says of them.
fn missing_runs(
    store: &BTreeMap<String, BTreeMap<u64, bool>>,
    topic: &BTreeMap<String, BTreeSet<u64>>,
) -> Vec<String> {
    let devices: BTreeSet<&String> = store.keys().chain(topic.keys()).collect();
    let empty_store = BTreeMap::new();
    let empty_topic = BTreeSet::new();
    let mut runs = Vec::new();
    for device in devices {
        let held = store.get(device).unwrap_or(&empty_store);
        let seen = topic.get(device).unwrap_or(&empty_topic);
        let last = held
            .keys()
            .next_back()
            .copied()
            .max(seen.iter().next_back().copied())
            .unwrap_or(0);
        let mut run: Option<(u64, u64, &str)> = None;
        for seq in 1..=last + 1 {
            let status = if seq > last || seen.contains(&seq) {
                None
            } else {
                Some(match held.get(&seq) {
                    Some(true) => "marked sent in the store",
                    Some(false) => "unsent in the store",
                    None => "not in the store",
                })
            };
            match (run, status) {
                (Some((a, b, st)), Some(now)) if now == st && b + 1 == seq => {
                    run = Some((a, seq, st));
                }
                (prev, now) => {
                    if let Some((a, b, st)) = prev {
                        runs.push(format!(
                            "{device} seqs {a}..={b} ({} seqs, {st})",
                            b - a + 1
                        ));
                    }
                    run = now.map(|st| (seq, seq, st));
                }
            }
        }
    }
    runs
}

/// Offsets absent between the first and the last offset read, per partition (a produce the
/// broker counted in its high watermark but whose batch it does not have).
fn offset_holes(records: &[ConsumedRecord]) -> Vec<String> {
    let mut by_partition: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
    for r in records {
        by_partition
            .entry(r.partition)
            .or_default()
            .insert(r.offset);
    }
    let mut holes = Vec::new();
    for (p, offsets) in by_partition {
        let mut prev: Option<i64> = None;
        for &o in &offsets {
            if let Some(before) = prev.filter(|b| o > b + 1) {
                holes.push(format!("partition {p} offsets {}..={}", before + 1, o - 1));
            }
            prev = Some(o);
        }
    }
    holes
}

/// On a loss, says where it happened before the checks fail: the missing seqs with what the
/// gateway's store says of them (marked sent = the bridge had a successful delivery report),
/// the same after re-reading the topic after a pause (a reader that stopped early would find
/// them then), offset holes on the topic, and the broker's and the gateway's error lines. The
/// logs and the database are copied to a folder that outlives the test.
fn explain_missing(what: &str, rig: &Rig, records: &[ConsumedRecord]) {
    let db = rig.gw.db_path();
    let missing = missing_runs(&store_seqs(&db), &topic_seqs(records));
    if missing.is_empty() {
        return;
    }
    println!(
        "{what}: LOSS: {} runs of seqs missing from {OBSERVATIONS} ({} records read):\n  {}",
        missing.len(),
        records.len(),
        missing.join("\n  ")
    );
    let holes = offset_holes(records);
    println!(
        "{what}: offset holes on {OBSERVATIONS}: {}",
        if holes.is_empty() {
            "none".to_owned()
        } else {
            holes.join(", ")
        }
    );
    std::thread::sleep(Duration::from_secs(5));
    let (_, again) = read_topic(&rig.broker.addr, OBSERVATIONS, &rig.key);
    let still = missing_runs(&store_seqs(&db), &topic_seqs(&again));
    println!(
        "{what}: re-read after a 5 s pause: {} records; {}",
        again.len(),
        if still == missing {
            "the same seqs missing".to_owned()
        } else {
            format!("now missing:\n  {}", still.join("\n  "))
        }
    );
    let keep = std::env::temp_dir().join(format!("icu-durability-loss-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&keep);
    for log in rig.broker.log_paths() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("Duplicate") || l.contains("panick"))
            .collect();
        println!(
            "{what}: {}: {} error lines{}",
            log.display(),
            errors.len(),
            errors
                .iter()
                .take(30)
                .map(|l| format!("\n  {}", &l[..l.len().min(600)]))
                .collect::<String>()
        );
        if let Some(name) = log.file_name() {
            let _ = std::fs::copy(&log, keep.join(name));
        }
    }
    let gw_log = rig.gw.log_text();
    let bridge: Vec<&str> = gw_log
        .lines()
        .filter(|l| l.contains("icu_cloud_bridge") && (l.contains("WARN") || l.contains("ERROR")))
        .collect();
    println!(
        "{what}: gateway bridge warnings ({}), last 30:\n  {}",
        bridge.len(),
        tail(&bridge.join("\n"), 30).replace('\n', "\n  ")
    );
    let _ = std::fs::write(keep.join("gateway.log"), &gw_log);
    let _ = std::fs::copy(&db, keep.join("gateway.db"));
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::copy(db.with_extension(ext), keep.join(format!("gateway.{ext}")));
    }
    println!("{what}: logs and database kept in {}", keep.display());
}

/// The checks above can fail: an acknowledged observation that is not on the topic, and one
/// device's stream with a record taken out of its middle, are both caught.
fn assert_the_checks_catch_loss(
    records: &[ConsumedRecord],
    key: &ed25519_dalek::VerifyingKey,
    run: &SimRun,
    arrived: &Arrived,
) {
    let caught = |f: &mut dyn FnMut()| {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        std::panic::set_hook(hook);
        failed
    };
    let mut acked = run.accepted.clone();
    let mut never_sent = acked[0].clone();
    never_sent.value += 1000.0;
    acked.push(never_sent);
    assert!(
        caught(&mut || check_acknowledged_arrived(arrived, &acked)),
        "an acknowledged observation missing from the topic goes unnoticed"
    );

    let device = records[0].device_id.clone();
    let mut one: Vec<ConsumedRecord> = records
        .iter()
        .filter(|r| r.device_id == device)
        .cloned()
        .collect();
    one.sort_by_key(|r| (r.partition, r.offset));
    // A record in the middle whose seqs no other record repeats.
    let overlaps = |a: &ConsumedRecord, b: &ConsumedRecord| {
        a.seq_first <= b.seq_last && b.seq_first <= a.seq_last
    };
    let lonely = (1..one.len().saturating_sub(1))
        .find(|&i| {
            (0..one.len()).all(|j| j == i || !overlaps(&one[i], &one[j]))
                && one[i].seq_first > Some(1)
        })
        .expect("a record whose seqs are not repeated");
    one.remove(lonely);
    let report = report_from_records(&one, Some(key));
    assert!(
        caught(&mut || {
            check_topic(&report, &one);
        }),
        "a lost record goes unnoticed"
    );
}

/// Waits until the bridge has forwarded at least `n` records in this gateway process.
fn wait_forwarding(gw: &GatewayProc, n: u64, what: &str) {
    wait_for(Duration::from_secs(60), what, || {
        status(gw).filter(|s| forwarded_records(s) >= n).map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}; log tail:\n{}", tail(&gw.log_text(), 30)));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The tests

/// SIGKILL at random points while `icu-sim` sends and the bridge forwards; restart on the same
/// data folder and ports; at the end everything acknowledged is on the topic.
#[test]
fn sigkill_at_random_points_loses_no_acknowledged_observation() {
    let cycles = env_u64("ICU_SOAK_CYCLES", 10);
    let mut rng = Rng::from_env("crash");
    let mut rig = Rig::start(6, false, "");
    let sim = rig.sim(10.0, &["--seed", "11"]);
    wait_forwarding(&rig.gw, 1, "the bridge to forward");

    let started = Instant::now();
    let (mut busy_kills, mut acked_before_kills) = (0, 0);
    for cycle in 1..=cycles {
        let delay = rng.between(Duration::from_millis(50), Duration::from_millis(1500));
        std::thread::sleep(delay); // the random kill point, not a synchronisation
        let before = status(&rig.gw);
        rig.gw.kill();
        let (unsent_then, aa_then) = before
            .as_ref()
            .map_or((None, 0), |s| (unsent(s), acks_aa(s)));
        busy_kills += usize::from(unsent_then.is_some_and(|u| u > 0));
        acked_before_kills += aa_then;
        println!(
            "crash cycle {cycle}/{cycles}: SIGKILL {delay:?} after the restart \
             (this process had acknowledged {aa_then} messages; outbox {unsent_then:?} unsent)"
        );
        rig.gw.restart();
    }
    // The sender comes back to the last process, and the bridge forwards again.
    let aa_before = status(&rig.gw).map_or(0, |s| acks_aa(&s));
    wait_for(
        Duration::from_secs(60),
        "acknowledgements after the last restart",
        || {
            status(&rig.gw)
                .filter(|s| acks_aa(s) >= aa_before + 10 * rig.beds as u64)
                .map(|_| ())
        },
    )
    .unwrap();
    println!(
        "crash: {cycles} kill-and-restart cycles in {:.1?}; {busy_kills} kills with records \
         waiting in the outbox; {acked_before_kills} messages acknowledged by killed processes",
        started.elapsed()
    );
    let drain = Duration::from_secs(120 + cycles);
    let (run, arrived) = stop_drain_and_check("crash", sim, &rig, drain);
    assert!(
        busy_kills > 0,
        "no kill hit a gateway with records in the outbox"
    );
    assert!(
        arrived.observations() >= run.accepted.len(),
        "fewer distinct observations than acknowledged"
    );
    assert!(rig.gw.is_running());
}

/// The broker is down for longer than the bridge's message timeout while readings are
/// acknowledged; it comes back on the same port with its data; nothing acknowledged is lost.
#[test]
fn broker_outage_longer_than_the_message_timeout_loses_nothing() {
    let outage = Duration::from_secs(env_u64("ICU_OUTAGE_SECS", 15));
    assert!(
        outage > Duration::from_secs(5),
        "the outage must outlast the 5 s message timeout"
    );
    let mut rig = Rig::start(3, true, "");
    let sim = rig.sim(5.0, &[]);
    wait_forwarding(&rig.gw, 3, "the bridge to forward before the outage");

    rig.broker.stop();
    let down = Instant::now();
    let at_stop = status(&rig.gw).expect("status");
    println!(
        "outage: broker stopped for {outage:?}; gateway status then: {}",
        at_stop["backbone"]
    );
    let offline = wait_for(
        outage + Duration::from_secs(30),
        "the bridge to notice the outage",
        || status(&rig.gw).filter(|s| !online(s)),
    )
    .expect("the bridge goes offline");
    println!(
        "outage: bridge offline after {:.1?}: {}",
        down.elapsed(),
        offline["backbone"]
    );
    if let Some(rest) = outage.checked_sub(down.elapsed()) {
        std::thread::sleep(rest); // the outage itself
    }
    let during = status(&rig.gw).expect("status");
    assert!(
        !online(&during),
        "still offline at the end of the outage: {during}"
    );
    assert!(
        acks_aa(&during) > acks_aa(&at_stop),
        "messages acknowledged during the outage: {during}"
    );
    let waiting = unsent(&during).unwrap_or(0);
    assert!(waiting > 0, "records wait in the outbox: {during}");
    println!(
        "outage: {:.1?} down, {} messages acknowledged meanwhile, {waiting} records waiting, \
         {} delivery errors",
        down.elapsed(),
        acks_aa(&during) - acks_aa(&at_stop),
        during["backbone"]["delivery_errors"]
    );

    rig.broker.restart().expect("broker back on the same port");
    wait_forwarding(
        &rig.gw,
        forwarded_records(&during) + 1,
        "forwarding after the outage",
    );
    std::thread::sleep(Duration::from_secs(2)); // live readings after the return, then stop
    let drain = Duration::from_secs(120) + outage;
    stop_drain_and_check("outage", sim, &rig, drain);
}

/// The broker is stopped (SIGTERM, SIGKILL 3 s later: in effect a kill, see the module doc)
/// and started again at once, at random points while the bridge forwards; nothing acknowledged
/// is lost, including a batch whose retry the restarted broker answers as a duplicate sequence
/// number without having it.
#[test]
fn broker_restarts_mid_forwarding_lose_nothing() {
    let restarts = env_u64("ICU_BROKER_RESTARTS", 3);
    let mut rng = Rng::from_env("broker restart");
    let mut rig = Rig::start(3, true, "");
    let sim = rig.sim(8.0, &[]);
    wait_forwarding(&rig.gw, 3, "the bridge to forward");
    for i in 1..=restarts {
        let delay = rng.between(Duration::from_millis(300), Duration::from_millis(3000));
        std::thread::sleep(delay); // the random restart point
        let forwarded = status(&rig.gw).map_or(0, |s| forwarded_records(&s));
        let t = Instant::now();
        rig.broker.restart().expect("broker restart");
        println!(
            "broker restart {i}/{restarts} after {delay:?} ({forwarded} records forwarded so far); \
             back in {:.1?}; the old broker ended: {}",
            t.elapsed(),
            rig.broker
                .last_exit()
                .map_or("?".into(), |(s, d)| format!("{s} after {d:.1?}"))
        );
        wait_forwarding(
            &rig.gw,
            forwarded + 1,
            "forwarding after the broker restart",
        );
    }
    stop_drain_and_check("broker restart", sim, &rig, Duration::from_secs(120));
    let duplicates: usize = rig
        .broker
        .log_paths()
        .iter()
        .map(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            text.lines()
                .filter(|l| l.contains("ERROR") && l.contains("DuplicateSequenceNumber"))
                .count()
        })
        .sum();
    let resent = rig
        .gw
        .log_text()
        .lines()
        .filter(|l| l.contains("kafka delivery failed") && l.contains("duplicate sequence number"))
        .count();
    println!(
        "broker restart: the restarted brokers answered {duplicates} produce requests \
         DuplicateSequenceNumber (a batch whose sequence a stopped broker had recorded); the \
         bridge failed {resent} phases for it and sent their records again"
    );
}

/// A record's (device, seq range) and Kafka timestamp.
#[derive(Debug)]
struct Timed {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    device: String,
    seq_first: u64,
    seq_last: u64,
}

/// Reads a whole topic with each record's timestamp (CreateTime as the producer stamped it):
/// up to the high watermarks seen at the start and then until nothing came for 2 s (tansu's
/// watermarks can lag what a fetch returns, as `consume` also allows for).
fn read_timed(brokers: &str, topic: &str) -> Vec<Timed> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("icu-durability-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut remaining = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            remaining.insert(p, high);
        }
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiet_since = Instant::now();
    while !remaining.is_empty() || quiet_since.elapsed() < Duration::from_secs(2) {
        assert!(
            Instant::now() < deadline,
            "{topic}: not read to its end: {remaining:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        quiet_since = Instant::now();
        let m = m.expect("kafka message");
        let header = |name: &str| {
            m.headers().and_then(|hs| {
                hs.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let seq = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        out.push(Timed {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().expect("record timestamp"),
            device: header(headers::DEVICE_ID).expect("device header"),
            seq_first: seq(headers::SEQ_FIRST).expect("seq header"),
            seq_last: seq(headers::SEQ_LAST).expect("seq header"),
        });
        if remaining
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            remaining.remove(&m.partition());
        }
    }
    out.sort_by_key(|t| (t.partition, t.offset));
    out
}

/// (device, seq) → timestamp of the first record carrying it.
fn first_sightings(records: &[Timed]) -> BTreeMap<(String, u64), i64> {
    let mut first = BTreeMap::new();
    for r in records {
        for seq in r.seq_first..=r.seq_last {
            let t = first
                .entry((r.device.clone(), seq))
                .or_insert(r.timestamp_ms);
            *t = (*t).min(r.timestamp_ms);
        }
    }
    first
}

/// The outbox's unsent (device, seq) keys of one stream (1 observations, 2 alarms).
fn unsent_keys(db: &Path, kind: i64) -> BTreeSet<(String, u64)> {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut q = c
        .prepare("SELECT device_id, seq FROM record_seqs WHERE kind = ?1 AND sent = 0")
        .unwrap();
    let rows = q
        .query_map([kind], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Alarms raised while the broker is down reach `icu.alarms` before the backlog of
/// observations stored meanwhile reaches `icu.observations`.
#[test]
fn alarms_raised_during_an_outage_reach_kafka_before_the_backlog() {
    let outage = Duration::from_secs(env_u64("ICU_OUTAGE_SECS", 20));
    let mut rig = Rig::start(4, true, SPO2_LOW_ALARM);
    wait_for(Duration::from_secs(60), "the bridge online", || {
        status(&rig.gw).filter(online).map(|_| ())
    })
    .unwrap();

    rig.broker.stop();
    let down = Instant::now();
    // Steady beds build the backlog; bed 1 desaturates and alarms, all while the broker is down.
    let sim = rig.sim(4.0, &["--scenario", "desaturation:1:0"]);
    let alarm = wait_for(
        outage.max(Duration::from_secs(30)),
        "the SpO2 alarm",
        || {
            let alarms = http_get_json(rig.gw.endpoints.http, "/api/alarms").ok()?;
            alarms["active"]
                .as_array()?
                .iter()
                .find(|a| a["source"] == "limit:spo2")
                .cloned()
        },
    )
    .expect("the desaturation alarms while the broker is down");
    println!(
        "alarms first: {} raised {:.1?} into the outage",
        alarm["alarm_id"],
        down.elapsed()
    );
    if let Some(rest) = outage.checked_sub(down.elapsed()) {
        std::thread::sleep(rest); // the outage itself
    }

    let alarms_waiting = unsent_keys(&rig.gw.db_path(), 2);
    let backlog = unsent_keys(&rig.gw.db_path(), 1);
    assert!(
        !alarms_waiting.is_empty(),
        "alarm records wait in the outbox"
    );
    assert!(!backlog.is_empty(), "observations wait in the outbox");
    let returned_ms = now_ms();
    rig.broker.restart().expect("broker back on the same port");
    println!(
        "alarms first: broker back after {:.1?} with {} alarm records and {} observations waiting",
        down.elapsed(),
        alarms_waiting.len(),
        backlog.len()
    );
    std::thread::sleep(Duration::from_secs(3)); // live readings after the return, then stop
    let drain = Duration::from_secs(120) + outage;
    let (_, arrived) = stop_drain_and_check("alarms first", sim, &rig, drain);

    let alarm_times = first_sightings(&read_timed(&rig.broker.addr, ALARMS));
    let obs_timed = read_timed(&rig.broker.addr, OBSERVATIONS);
    assert_eq!(
        obs_timed.len(),
        arrived.records,
        "{OBSERVATIONS} read twice alike"
    );
    let obs_times = first_sightings(&obs_timed);
    let alarm_at: Vec<i64> = alarms_waiting
        .iter()
        .map(|k| {
            *alarm_times
                .get(k)
                .unwrap_or_else(|| panic!("alarm {k:?} not on {ALARMS}"))
        })
        .collect();
    let backlog_at: Vec<i64> = backlog
        .iter()
        .map(|k| {
            *obs_times
                .get(k)
                .unwrap_or_else(|| panic!("observation {k:?} not on {OBSERVATIONS}"))
        })
        .collect();
    // Records handed to the producer before the broker was back were already queued in the
    // client when it returned; the order promised is of what the bridge sends after that.
    let queued_before = backlog_at.iter().filter(|t| **t < returned_ms).count();
    let last_alarm = alarm_at.iter().copied().max().unwrap();
    let first_backlog = backlog_at
        .iter()
        .copied()
        .filter(|t| *t >= returned_ms)
        .min();
    let backlog_before_alarms = backlog_at
        .iter()
        .filter(|t| **t >= returned_ms && **t < last_alarm)
        .count();
    let backlog_done = backlog_at.iter().copied().max().unwrap();
    println!(
        "alarms first: after the return, last outage alarm sent at +{} ms, first backlog \
         observation at +{:?} ms, backlog complete at +{} ms; {backlog_before_alarms} of {} \
         backlog observations sent before the last alarm ({queued_before} were queued before \
         the return)",
        last_alarm - returned_ms,
        first_backlog.map(|t| t - returned_ms),
        backlog_done - returned_ms,
        backlog.len(),
    );
    assert_eq!(
        backlog_before_alarms, 0,
        "backlog observations reached {OBSERVATIONS} before the alarms raised during the outage \
         reached {ALARMS}"
    );
    assert!(
        queued_before < backlog.len(),
        "the backlog went out after the return (not only what was queued before)"
    );
}
