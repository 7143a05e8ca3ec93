//! Replay: observations per second forwarded to Kafka (a real tansu broker) from a backlog of
//! stored observations (default 10 million) while live PCD-01 ingest continues.
//!
//! The backlog is written straight through `StoreDb::commit_batch` (the gateway's own write
//! path: savepoint per message, per-device seqs, one compressed row of `StoredRecord`s per
//! message) in big
//! batches, for `--backlog-beds` monitors, and cached as
//! `target/bench-cache/replay-backlog-<N>x<beds>-<obx>obx-v3.db`; every run copies it, so only
//! the first run pays for building it. Then the gateway (child process, `synchronous` per
//! `--sync`, default full) starts on the copy with `[kafka]` pointing at a fresh tansu, and
//! `--live-beds` other monitors send `--live-rate` messages per second each over MLLP.
//!
//! Measured from the store through a read-only connection every 100 ms (cheap: per device
//! the first unsent seq of the unsent index, since the bridge marks each device's records sent in seq
//! order): backlog observations forwarded per second (overall and per 10 s), how long the first
//! forwarded record took, and for every live message the time from its AA to its last record
//! being marked sent (live records must not starve behind the backlog). `/api/status` (whose
//! `store.unsent` is a `COUNT(*)` over the outbox, seconds on 10M rows, holding the outbox
//! reader the bridge needs) is read only at the start and at the end.
//!
//!     cargo bench -p icu-tests --bench replay                       # 10M backlog, 120 s
//!     cargo bench -p icu-tests --bench replay -- --backlog 1000000 --seconds 60
//!
//! Options (`--name value`, or env `ICU_BENCH_<NAME>`): `--backlog 10000000`,
//! `--backlog-beds 30`, `--obx 15`, `--live-beds 3`, `--live-rate 1` (messages/s per live bed; 0:
//! as fast as the ACKs allow, one message in flight per bed: the gateway's maximal ingest),
//! `--seconds 120` (0: until the backlog is drained), `--sync full`, `--perf <file.data>`
//! (perf record of the gateway for 30 s after the first forwarded record).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_gateway::store::db::digest;
use icu_gateway::store::{ObservationBatch, StoreDb, WriteRequest};
use icu_tests::bench::*;
use tokio_util::codec::Framed;

/// Messages per `commit_batch` while building the backlog.
const BUILD_BATCH: usize = 2000;

fn backlog_path(n: u64, beds: usize, obx: usize) -> PathBuf {
    cache_dir().join(format!("replay-backlog-{n}x{beds}-{obx}obx-v3.db"))
}

fn remove_db(p: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut f = p.as_os_str().to_owned();
        f.push(suffix);
        let _ = std::fs::remove_file(Path::new(&f));
    }
}

/// Writes `n` observations (messages of `obx`, round-robin over `beds` monitors, one message
/// per monitor per second of device time, ending now) through the gateway's writer.
fn build_backlog(path: &Path, n: u64, beds: usize, obx: usize) {
    let tmp = path.with_extension("building");
    remove_db(&tmp);
    let started = Instant::now();
    let mut db = StoreDb::open(&tmp, GATEWAY_ID, false, u64::MAX).expect("open backlog store");
    let messages = n.div_ceil(obx as u64);
    let now_us = chrono::Utc::now().timestamp_micros();
    let first_us = now_us - (messages / beds as u64) as i64 * 1_000_000;
    // One decoded message per bed, as the device actor hands it to the store.
    let templates = decoded_templates(beds, obx, now_us);
    println!(
        "building the backlog: {n} observations ({messages} messages of {obx}) for {beds} monitors into {}",
        path.display()
    );
    let mut m = 0u64;
    let mut written = 0u64;
    let mut next_report = 1_000_000u64;
    while m < messages {
        let mut batch = Vec::with_capacity(BUILD_BATCH);
        while batch.len() < BUILD_BATCH && m < messages {
            let b = (m % beds as u64) as usize + 1;
            let k = m / beds as u64;
            let t = first_us + k as i64 * 1_000_000;
            let left = (n - written - batch.len() as u64 * obx as u64).min(obx as u64) as usize;
            let observations = templates[b - 1][..left]
                .iter()
                .enumerate()
                .map(|(i, o)| {
                    let mut o = o.clone();
                    o.device_id = monitor_id(b);
                    o.bed = bed_id(b);
                    o.clock_synced = true;
                    o.receive_time_us = t;
                    o.device_time_us = Some(t - 200_000);
                    o.value = o.value.map(|v| v + ((k as usize + i) % 5) as f64);
                    o.source_message_id = format!("B{b}-{k}");
                    o
                })
                .collect();
            let control = format!("B{b}-{k}");
            batch.push(WriteRequest::Observations(ObservationBatch {
                device_id: monitor_id(b),
                bed: bed_id(b),
                dedup: Some((control.clone(), digest(control.as_bytes()))),
                observations,
                order: Default::default(),
                traceparent: None,
                waveforms: Default::default(),
            }));
            m += 1;
        }
        let obs_in_batch: u64 = batch
            .iter()
            .map(|r| match r {
                WriteRequest::Observations(b) => b.observations.len() as u64,
                _ => 0,
            })
            .sum();
        for r in db.commit_batch(&batch) {
            r.expect("backlog write");
        }
        written += obs_in_batch;
        if written >= next_report {
            next_report += 1_000_000;
            let s = started.elapsed().as_secs_f64();
            println!(
                "  {written} observations in {s:.0} s ({:.0} obs/s)",
                written as f64 / s
            );
        }
    }
    drop(db);
    let conn = rusqlite::Connection::open(&tmp).expect("reopen backlog");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint backlog");
    drop(conn);
    std::fs::rename(&tmp, path).expect("move the backlog into the cache");
    remove_db(&tmp);
    let s = started.elapsed().as_secs_f64();
    println!(
        "backlog built: {written} observations in {s:.0} s ({:.0} obs/s through StoreDb::commit_batch, synchronous=normal), {:.0} MiB",
        written as f64 / s,
        mib(file_size(path))
    );
}

/// A live message: the last seq of its records and when its AA arrived.
struct LiveAck {
    last_seq: u64,
    acked: Instant,
}

#[derive(Default)]
struct Live {
    /// Per live bed (index 0.. for bed `backlog_beds + 1 + i`), messages acked and not yet seen
    /// sent.
    pending: Vec<VecDeque<LiveAck>>,
    ack_ms: Vec<f64>,
    forward_ms: Vec<f64>,
    msgs: u64,
    errors: u64,
}

async fn live_bed(
    addr: std::net::SocketAddr,
    bed: usize,
    slot: usize,
    obx: usize,
    rate: f64,
    live: Arc<Mutex<Live>>,
    stop: Arc<AtomicBool>,
) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("MLLP connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut framed = Framed::new(stream, MllpCodec::new(1 << 20));
    // Rate 0: as fast as the ACKs allow (one message in flight), the gateway's maximal ingest.
    let mut tick = (rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        n += 1;
        let msg = pcd01(bed, n, obx, &hl7_now());
        let t0 = Instant::now();
        framed.send(msg.as_slice()).await.expect("MLLP send");
        match framed.next().await {
            Some(Ok(MllpEvent::Frame { payload, .. })) => {
                let now = Instant::now();
                let mut l = live.lock().expect("live");
                if payload.windows(7).any(|w| w == b"MSA|AA|") {
                    l.msgs += 1;
                    l.ack_ms.push(now.duration_since(t0).as_secs_f64() * 1e3);
                    l.pending[slot].push_back(LiveAck {
                        last_seq: n * obx as u64,
                        acked: now,
                    });
                } else {
                    l.errors += 1;
                    // A refused message consumes no seq: the next one reuses them.
                    n -= 1;
                }
            }
            other => panic!("live bed {bed}: no ACK: {other:?}"),
        }
    }
}

/// Per device: observations marked sent (`MIN(unsent seq) - 1`, or `next_seq - 1`).
struct Progress {
    conn: rusqlite::Connection,
    indexed: bool,
}

impl Progress {
    fn open(db: &Path) -> Progress {
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("read-only store connection");
        conn.busy_timeout(Duration::from_secs(10)).expect("busy");
        // The partial index of unsent records makes the first unsent row a single seek; the primary key would
        // walk every sent row first.
        let indexed = conn
            .prepare("SELECT MAX(seq, sent_upto + 1) FROM records INDEXED BY records_unsent WHERE sent = 0 AND kind = 1 AND device_id = ?1 ORDER BY seq LIMIT 1")
            .is_ok();
        if !indexed {
            eprintln!("note: index records_unsent not found; progress polling may be slow");
        }
        Progress { conn, indexed }
    }

    fn sent(&self, device: &str) -> u64 {
        let sql = if self.indexed {
            "SELECT MAX(seq, sent_upto + 1) FROM records INDEXED BY records_unsent WHERE sent = 0 AND kind = 1 AND device_id = ?1 ORDER BY seq LIMIT 1"
        } else {
            "SELECT MAX(seq, sent_upto + 1) FROM records WHERE sent = 0 AND kind = 1 AND device_id = ?1 ORDER BY seq LIMIT 1"
        };
        let min_unsent: Option<i64> = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row([device], |r| r.get(0)))
            .unwrap_or(None);
        match min_unsent {
            Some(s) => (s - 1) as u64,
            None => self
                .conn
                .prepare_cached("SELECT next_seq FROM devices WHERE kind = 1 AND device_id = ?1")
                .and_then(|mut s| s.query_row([device], |r| r.get::<_, i64>(0)))
                .map(|n| (n - 1) as u64)
                .unwrap_or(0),
        }
    }
}

/// Moves the live messages whose records are all marked sent into the latency list; returns the
/// live observations acked and not yet seen sent.
fn check_live(progress: &Progress, devices: &[String], live: &Mutex<Live>, obx: usize) -> u64 {
    let now = Instant::now();
    let mut unsent = 0u64;
    let mut l = live.lock().expect("live");
    for (i, d) in devices.iter().enumerate() {
        let s = progress.sent(d);
        while let Some(a) = l.pending[i].front() {
            if a.last_seq > s {
                break;
            }
            let ms = now.duration_since(a.acked).as_secs_f64() * 1e3;
            l.forward_ms.push(ms);
            l.pending[i].pop_front();
        }
        unsent += l.pending[i].len() as u64 * obx as u64;
    }
    unsent
}

fn main() {
    let args = Args::parse();
    icu_tests::bench::Calibration::print();
    let backlog: u64 = args.get("backlog", 10_000_000);
    let backlog_beds: usize = args.get("backlog-beds", 30);
    let obx: usize = args.get("obx", 15);
    let live_beds: usize = args.get("live-beds", 3);
    let live_rate: f64 = args.get("live-rate", 1.0);
    let seconds: u64 = args.get("seconds", 120);
    let sync: String = args.get("sync", "full".to_owned());
    let perf = args.opt("perf").map(PathBuf::from);

    let cached = backlog_path(backlog, backlog_beds, obx);
    if !cached.exists() {
        build_backlog(&cached, backlog, backlog_beds, obx);
    } else {
        println!(
            "backlog: {} ({:.0} MiB, cached; delete it to rebuild)",
            cached.display(),
            mib(file_size(&cached))
        );
    }

    let tansu = start_tansu();
    let scratch = scratch("replay-");
    let gw_dir = scratch.path().join("gw");
    std::fs::create_dir_all(&gw_dir).expect("gateway dir");
    let t_copy = Instant::now();
    std::fs::copy(&cached, gw_dir.join("gateway.db")).expect("copy the backlog");
    println!(
        "copied the backlog in {:.1} s",
        t_copy.elapsed().as_secs_f64()
    );
    let spec = GatewaySpec {
        dir: gw_dir,
        synchronous: sync.clone(),
        monitors: backlog_beds + live_beds,
        pumps: 0,
        mqtt_port: None,
        kafka: Some(format!("127.0.0.1:{}", tansu.port)),
        store_extra: String::new(),
        mllp_tls: None,
        alarms: String::new(),
    };
    let t_start = Instant::now();
    let mut gw = spec.start();
    let startup = t_start.elapsed().as_secs_f64();
    let db = gw.db_path();
    let rss = RssSampler::start(gw.pid());
    let tansu_rss = RssSampler::start(tansu.pid());
    let status0 = gw.status().unwrap_or_default();
    println!(
        "gateway up in {startup:.1} s; /api/status store.unsent = {} (that request took {:.1} s)",
        status0["store"]["unsent"],
        t_start.elapsed().as_secs_f64() - startup
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let live = Arc::new(Mutex::new(Live {
        pending: (0..live_beds).map(|_| VecDeque::new()).collect(),
        ..Default::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for i in 0..live_beds {
        senders.push(rt.spawn(live_bed(
            gw.endpoints.mllp,
            backlog_beds + 1 + i,
            i,
            obx,
            live_rate,
            live.clone(),
            stop.clone(),
        )));
    }

    // Poll progress until the time is up (or the backlog is drained with --seconds 0).
    let progress = Progress::open(&db);
    let backlog_devices: Vec<String> = (1..=backlog_beds).map(monitor_id).collect();
    let live_devices: Vec<String> = (backlog_beds + 1..=backlog_beds + live_beds)
        .map(monitor_id)
        .collect();
    let sent_backlog = |p: &Progress| -> u64 { backlog_devices.iter().map(|d| p.sent(d)).sum() };
    let initial = sent_backlog(&progress);
    let total_backlog: u64 = {
        let c = &progress.conn;
        c.query_row(
            "SELECT COALESCE(SUM(next_seq - 1), 0) FROM devices WHERE kind = 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as u64
    };
    let began = Instant::now();
    let mut first_forward: Option<f64> = None;
    let mut timeline: Vec<(f64, u64)> = vec![(0.0, initial)];
    let mut last_mark = began;
    let mut perf_child = None;
    let forwarded_counter = AtomicU64::new(initial);
    println!(
        "{:>6} {:>12} {:>10} {:>12} {:>10} {:>8}",
        "t s", "forwarded", "obs/s", "backlog left", "live unsent", "RSS MiB"
    );
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        let t = now.duration_since(began).as_secs_f64();
        let sent = sent_backlog(&progress);
        forwarded_counter.store(sent, Ordering::Relaxed);
        if first_forward.is_none() && sent > initial {
            first_forward = Some(t);
            if let Some(p) = &perf {
                perf_child = perf_record(p, gw.pid(), 30);
            }
        }
        let live_unsent = check_live(&progress, &live_devices, &live, obx);
        if now.duration_since(last_mark) >= Duration::from_secs(10) {
            let prev = timeline.last().copied().unwrap_or((0.0, initial));
            timeline.push((t, sent));
            last_mark = now;
            println!(
                "{:>6.0} {:>12} {:>10.0} {:>12} {:>10} {:>8.1}",
                t,
                sent - initial,
                (sent - prev.1) as f64 / (t - prev.0),
                total_backlog.saturating_sub(sent),
                live_unsent,
                gw.memory_kib().0 as f64 / 1024.0
            );
        }
        let drained = sent >= total_backlog;
        if (seconds > 0 && t >= seconds as f64) || (seconds == 0 && drained) {
            break;
        }
        if seconds == 0 && t > 6.0 * 3600.0 {
            break;
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    let forwarded = forwarded_counter.load(Ordering::Relaxed) - initial;
    stop.store(true, Ordering::Relaxed);
    // Give the live senders their last ACK, and the bridge a moment for their records.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        check_live(&progress, &live_devices, &live, obx);
    }
    for s in senders {
        s.abort();
    }
    if let Some(mut c) = perf_child {
        let _ = c.wait();
    }
    let (_, hwm) = gw.memory_kib();
    let t_status = Instant::now();
    let status = gw.status().unwrap_or_default();
    let status_s = t_status.elapsed().as_secs_f64();
    gw.stop();

    let l = live.lock().expect("live");
    let mut ack = l.ack_ms.clone();
    let mut fwd = l.forward_ms.clone();
    sort(&mut ack);
    sort(&mut fwd);
    let live_left: usize = l.pending.iter().map(VecDeque::len).sum();
    let steady = first_forward
        .map(|f| forwarded as f64 / (elapsed - f).max(0.001))
        .unwrap_or(0.0);
    println!();
    println!(
        "replay: backlog {} observations ({} monitors, {obx} per message), sync={sync}, {live_beds} live beds at {}, {:.0} s",
        total_backlog,
        backlog_beds,
        if live_rate > 0.0 {
            format!("{live_rate} msg/s")
        } else {
            "the maximal rate (as fast as ACKs allow)".to_owned()
        },
        elapsed
    );
    println!("  {:<44} {:>14}", "metric", "value");
    let row = |k: &str, v: String| println!("  {k:<44} {v:>14}");
    row("backlog observations forwarded", forwarded.to_string());
    row(
        "forward rate, whole run (obs/s)",
        format!("{:.0}", forwarded as f64 / elapsed),
    );
    row(
        "forward rate after the first record (obs/s)",
        format!("{steady:.0}"),
    );
    row(
        "time to the first forwarded record (s)",
        first_forward
            .map(|f| format!("{f:.1}"))
            .unwrap_or_else(|| "none".into()),
    );
    row(
        "live messages acked (AA)",
        format!("{} ({} not AA)", l.msgs, l.errors),
    );
    row(
        "live ingest, acknowledged (obs/s)",
        format!("{:.0}", (l.msgs * obx as u64) as f64 / elapsed),
    );
    row(
        "backlog observations left at the end",
        total_backlog.saturating_sub(forwarded).to_string(),
    );
    row(
        "live ACK latency p50 / p99 (ms)",
        format!(
            "{:.1} / {:.1}",
            percentile(&ack, 0.5),
            percentile(&ack, 0.99)
        ),
    );
    row(
        "live AA -> marked sent p50 / p99 (ms)",
        format!(
            "{:.0} / {:.0}",
            percentile(&fwd, 0.5),
            percentile(&fwd, 0.99)
        ),
    );
    row(
        "live AA -> marked sent max (ms)",
        format!("{:.0}", fwd.last().copied().unwrap_or(f64::NAN)),
    );
    row(
        "live messages not yet sent at the end",
        live_left.to_string(),
    );
    row(
        "gateway RSS max / HWM (MiB)",
        format!(
            "{:.1} / {:.1}",
            rss.max_kib() as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
    );
    row(
        "tansu RSS max (MiB)",
        format!("{:.1}", tansu_rss.max_kib() as f64 / 1024.0),
    );
    row(
        "bridge forwarded_observations (/api/status)",
        status["backbone"]["forwarded_observations"].to_string(),
    );
    row(
        "bridge state / delivery errors",
        format!(
            "{} / {}",
            status["backbone"]["state"].as_str().unwrap_or("?"),
            status["backbone"]["delivery_errors"]
        ),
    );
    row(
        "store.unsent at the end (/api/status)",
        format!("{} ({status_s:.1} s)", status["store"]["unsent"]),
    );
    println!("  Target (issue 5): >= 50000 obs/s replay while live ingest continues.");
    drop(tansu);
}
