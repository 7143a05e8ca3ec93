//! Durable ingest: observations per second acknowledged only after the SQLite COMMIT that holds
//! them, for MLLP (PCD-01) and MQTT input, plus bytes on disk per stored observation and the
//! gateway's RSS.
//!
//! The gateway runs as a child process (`icu-gateway run --config ...`, built by cargo for this
//! bench) with a store only (no `[kafka]`: the bridge does not run, so every byte of the store is
//! the backlog's), `synchronous = "full"` unless `--sync` says otherwise.
//!
//! * MLLP: one TCP connection per bed, each sending PCD-01 messages with `--obx` metric rows as
//!   fast as its ACKs come back (`--pipeline` messages in flight per connection; the gateway
//!   handles one message per connection at a time and sends AA only after the commit). Latency
//!   = message written → AA read.
//! * MQTT: one client per bed publishing QoS 1 `MqttBatch`es (`--obx` observations,
//!   `--mqtt-format json|pb`) to a private mosquitto on `icu/bench/bed/<bed>/device/<dev>/obs/..`;
//!   the gateway PUBACKs each after its commit. A publisher sends its next message once fewer
//!   than `--pipeline` of its messages wait for their commit, seen by polling the store's
//!   `devices.next_seq` every 2 ms from a read-only connection (the PUBACK mosquitto returns to
//!   a publisher says nothing about the gateway). Latency = publish → commit visible (±2 ms).
//!   With `--pipeline 1` a pump waits for each commit, so at 30 beds the rate is bound by that
//!   round trip rather than by the gateway; real pumps publish on their own clock, never waiting.
//!
//! Counted: only what was acknowledged between the end of the warm-up and the end of the run.
//! After each case the gateway is stopped (SIGTERM); bytes per observation = (db + wal) / stored
//! observations, then again after `PRAGMA wal_checkpoint(TRUNCATE)`.
//!
//!     cargo bench -p icu-tests --bench ingest
//!     cargo bench -p icu-tests --bench ingest -- --transports mllp --beds 30,300 --sync full,normal --seconds 30
//!
//! Options (`--name value`, or env `ICU_BENCH_<NAME>`): `--transports mllp,mqtt`,
//! `--beds 30,100,300` (MLLP), `--mqtt-beds 30,100`, `--sync full,normal`, `--seconds 15`,
//! `--warmup 3`, `--obx 15`, `--pipeline 1` (MLLP and MQTT), `--mqtt-format json`, `--store-extra 'max_batch = 512'`,
//! `--course calm,sick` (`sick`: every bed in alarm, see `icu_tests::bench::sick_value`),
//! `--kafka` (forward to a live tansu broker meanwhile: forwarded/s and the outbox's growth),
//! `--tls off,on` (`on`: MLLP over TLS with client certificates required, each monitor
//! presenting its own from a test PKI made by `icu-gateway cert`; the row says `mllp+mtls`),
//! `--perf <file.data>` (perf record of the gateway during the first case's measured window).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_drivers::mqtt::rumqttc::{AsyncClient, MqttOptions, QoS};
use icu_drivers::mqtt::{publish_observations, MqttBatch, ObsTopic, PayloadFormat};
use icu_protos::v1::Observation;
use icu_tests::bench::*;
use tokio_util::codec::Framed;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    Mllp,
    Mqtt,
}

#[derive(Clone)]
struct Opts {
    /// Values that keep every bed in alarm ([`sick_value`]).
    sick: bool,
    /// Forward to a live tansu broker while ingesting.
    kafka: bool,
    seconds: u64,
    warmup: u64,
    obx: usize,
    pipeline: usize,
    mqtt_format: PayloadFormat,
    store_extra: String,
    perf: Option<std::path::PathBuf>,
}

/// One row of the results table.
struct Row {
    transport: Transport,
    tls: bool,
    sick: bool,
    kafka: bool,
    /// Observations forwarded to Kafka in the measured window.
    forwarded_obs: u64,
    /// Outbox records unsent at the start and the end of the window.
    unsent_start: u64,
    unsent_end: u64,
    /// Alarm records emitted in the window.
    alarm_records: u64,
    /// CPU seconds over the window: gateway, broker (0 without one), this bench's generators.
    cpu_window: [f64; 3],
    /// The bridge over the window: cycles, then µs preparing, delivering, marking sent.
    bridge_window: [u64; 4],
    /// The alarm probe: events measured, latency p50 and p99 (ms); `None` without a probe.
    alarm_ms: Option<(usize, f64, f64)>,
    sync: String,
    beds: usize,
    msgs: u64,
    obs: u64,
    secs: f64,
    committed_obs: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    commits: u64,
    requests: u64,
    rss_max_mib: f64,
    hwm_mib: f64,
    stored_obs: u64,
    bytes_per_obs: f64,
    bytes_per_obs_ckpt: f64,
}

fn committed_obs(conn: &rusqlite::Connection) -> u64 {
    conn.query_row(
        "SELECT COALESCE(SUM(next_seq - 1), 0) FROM devices WHERE kind = 1",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
    .unwrap_or(0)
}

fn read_only(db: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("read-only store connection");
    c.busy_timeout(Duration::from_secs(10)).expect("busy");
    c
}

/// Client-side tallies of one bed.
#[derive(Default)]
struct Tally {
    msgs: u64,
    obs: u64,
    errors: u64,
    lat_ms: Vec<f64>,
}

async fn mllp_bed(
    addr: std::net::SocketAddr,
    bed: usize,
    tls: Option<tokio_rustls::TlsConnector>,
    o: Arc<Opts>,
    t_warm: Instant,
    t_end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("MLLP connect");
    stream.set_nodelay(true).expect("nodelay");
    let io: Box<dyn icu_sim::run::Io> = match tls {
        None => Box::new(stream),
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
            Box::new(
                connector
                    .connect(name, stream)
                    .await
                    .expect("TLS handshake with the gateway"),
            )
        }
    };
    let mut framed = Framed::new(io, MllpCodec::new(1 << 20));
    let mut n = 0u64;
    let mut in_flight = std::collections::VecDeque::new();
    let mut ts = hl7_now();
    let mut ts_at = Instant::now();
    loop {
        while in_flight.len() < o.pipeline && Instant::now() < t_end {
            n += 1;
            if ts_at.elapsed() > Duration::from_millis(100) {
                ts = hl7_now();
                ts_at = Instant::now();
            }
            let msg = pcd01_course(bed, n, o.obx, &ts, o.sick);
            let t0 = Instant::now();
            framed.send(msg.as_slice()).await.expect("MLLP send");
            in_flight.push_back(t0);
        }
        let Some(t0) = in_flight.pop_front() else {
            break;
        };
        match framed.next().await {
            Some(Ok(MllpEvent::Frame { payload, .. })) => {
                let now = Instant::now();
                let aa = payload.windows(7).any(|w| w == b"MSA|AA|");
                if !aa {
                    t.errors += 1;
                    if t.errors == 1 {
                        eprintln!(
                            "bed {bed}: not AA: {}",
                            String::from_utf8_lossy(&payload).replace('\r', "\n")
                        );
                    }
                } else if t0 >= t_warm && now <= t_end {
                    t.msgs += 1;
                    t.obs += o.obx as u64;
                    t.lat_ms.push(now.duration_since(t0).as_secs_f64() * 1e3);
                }
            }
            other => panic!("bed {bed}: no ACK: {other:?}"),
        }
    }
    t
}

fn mqtt_batch(bed: usize, k: u64, obx: usize) -> MqttBatch {
    let now = chrono::Utc::now().timestamp_micros();
    MqttBatch {
        waveforms: Vec::new(),
        msg_id: format!("m{bed}-{k}"),
        observations: (0..obx)
            .map(|i| {
                let (code, v, _) = METRICS[i % METRICS.len()];
                Observation {
                    mdc_code: code,
                    value: v.parse().ok(),
                    containment_id: format!("1.1.1.{}", i + 1),
                    device_time_us: Some(now),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn mqtt_bed(
    port: u16,
    bed: usize,
    o: Arc<Opts>,
    committed: Arc<Vec<AtomicU64>>,
    mut tick: tokio::sync::watch::Receiver<u64>,
    t_warm: Instant,
    t_end: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut opts = MqttOptions::new(format!("bench-pub-{bed}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 16);
    let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let topic =
        ObsTopic::new(GATEWAY_ID, &bed_id(bed), &pump_id(bed), o.mqtt_format).expect("topic");
    let mut k = 0u64;
    // Published and not yet seen committed: (observations committed once it is, publish time).
    let mut waiting: std::collections::VecDeque<(u64, Instant)> = Default::default();
    while Instant::now() < t_end {
        k += 1;
        let batch = mqtt_batch(bed, k, o.obx);
        let t0 = Instant::now();
        publish_observations(&client, &topic, &batch, QoS::AtLeastOnce)
            .await
            .expect("publish");
        waiting.push_back((k * o.obx as u64, t0));
        let give_up = t_end + Duration::from_secs(10);
        loop {
            let done = committed[bed].load(Ordering::Relaxed);
            let now = Instant::now();
            while let Some(&(target, sent)) = waiting.front() {
                if done < target {
                    break;
                }
                waiting.pop_front();
                if sent >= t_warm && now <= t_end {
                    t.msgs += 1;
                    t.obs += o.obx as u64;
                    t.lat_ms.push(now.duration_since(sent).as_secs_f64() * 1e3);
                }
            }
            if waiting.len() < o.pipeline {
                break;
            }
            if now > give_up {
                t.errors += 1;
                let _ = client.disconnect().await;
                poller.abort();
                return t;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), tick.changed()).await;
        }
    }
    let _ = client.disconnect().await;
    poller.abort();
    t
}

#[allow(clippy::too_many_arguments)]
fn run_case(
    rt: &tokio::runtime::Runtime,
    transport: Transport,
    tls: bool,
    sync: &str,
    beds: usize,
    o: &Arc<Opts>,
    perf: Option<&std::path::Path>,
) -> Row {
    let scratch = scratch("ingest-");
    let pki = tls.then(|| bench_pki(&scratch.path().join("pki"), beds));
    // The alarm probe runs next to MLLP load in plain text (its event stream client speaks HTTP).
    let probe = (transport == Transport::Mllp && !tls).then_some(beds + 1);
    let tansu = o.kafka.then(start_tansu);
    let mosquitto = (transport == Transport::Mqtt).then(start_mosquitto);
    let spec = GatewaySpec {
        dir: scratch.path().join("gw"),
        synchronous: sync.to_owned(),
        monitors: if transport == Transport::Mllp {
            probe.unwrap_or(beds)
        } else {
            0
        },
        pumps: if transport == Transport::Mqtt {
            beds
        } else {
            0
        },
        mqtt_port: mosquitto.as_ref().map(|m| m.port),
        kafka: tansu.as_ref().map(|t| format!("127.0.0.1:{}", t.port)),
        store_extra: o.store_extra.clone(),
        mllp_tls: pki.clone(),
        alarms: if probe.is_some() {
            probe_alarms()
        } else {
            String::new()
        },
    };
    let mut gw = spec.start();
    if transport == Transport::Mqtt {
        // Publish only once the gateway's subscription is in place.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let subscribed = gw
                .status()
                .ok()
                .and_then(|s| s["mqtt"]["subscribed"].as_u64())
                .unwrap_or(0);
            if subscribed > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "gateway never subscribed");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let db = gw.db_path();
    let rss = RssSampler::start(gw.pid());
    let start = Instant::now() + Duration::from_millis(200);
    let t_warm = start + Duration::from_secs(o.warmup);
    let t_end = t_warm + Duration::from_secs(o.seconds);

    // The gateway's own view at the start and the end of the measured window: observations
    // forwarded, records waiting in the outbox, alarm records emitted.
    let http = gw.endpoints.http;
    // CPU seconds of the gateway, the broker and this bench (the load generators) over the same
    // window: where the two cores went.
    let cpu_pids = [
        gw.pid().to_string(),
        tansu
            .as_ref()
            .map_or(String::new(), |t| t.pid().to_string()),
        "self".to_owned(),
    ];
    let cpu = move || {
        cpu_pids
            .clone()
            .map(|p| icu_tests::bench::proc_cpu_seconds(&p))
    };
    let sampler = std::thread::spawn(move || {
        let sample = || {
            let status = icu_tests::http::http_get_json(http, "/api/status").unwrap_or_default();
            let alarms = icu_tests::http::http_get_json(http, "/api/alarms").unwrap_or_default();
            let backbone = &status["backbone"];
            let time = |phase: &str| backbone["time_us"][phase].as_u64().unwrap_or(0);
            [
                backbone["forwarded_observations"].as_u64().unwrap_or(0),
                status["store"]["unsent"].as_u64().unwrap_or(0),
                alarms["stats"]["state_changes"].as_u64().unwrap_or(0),
                backbone["cycles"].as_u64().unwrap_or(0),
                time("preparing"),
                time("delivering"),
                time("marking_sent"),
            ]
        };
        std::thread::sleep(t_warm.saturating_duration_since(Instant::now()));
        let (at_warm, cpu_warm) = (sample(), cpu());
        std::thread::sleep(t_end.saturating_duration_since(Instant::now()));
        let (at_end, cpu_end) = (sample(), cpu());
        let cpu_window: [f64; 3] = std::array::from_fn(|i| cpu_end[i] - cpu_warm[i]);
        (at_warm, at_end, cpu_window)
    });

    // Store-side view: committed observations per device (MQTT flow control) and in total.
    let committed: Arc<Vec<AtomicU64>> = Arc::new((0..=beds).map(|_| AtomicU64::new(0)).collect());
    let (tick_tx, tick_rx) = tokio::sync::watch::channel(0u64);
    let stop_poll = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let totals = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let poller = {
        let (committed, stop, totals, db) = (
            committed.clone(),
            stop_poll.clone(),
            totals.clone(),
            db.clone(),
        );
        std::thread::spawn(move || {
            let conn = read_only(&db);
            let mut at_warm = false;
            let mut at_end = false;
            let mut stmt = conn
                .prepare("SELECT device_id, next_seq FROM devices WHERE kind = 1")
                .expect("prepare");
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if transport == Transport::Mqtt {
                    let rows = stmt
                        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                        .expect("poll devices");
                    for (d, next) in rows.flatten() {
                        if let Some(b) = d
                            .strip_prefix("pump-")
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            if b <= beds {
                                committed[b].store((next - 1) as u64, Ordering::Relaxed);
                            }
                        }
                    }
                    tick_tx.send_modify(|v| *v += 1);
                }
                if !at_warm && now >= t_warm {
                    at_warm = true;
                    totals[0].store(committed_obs(&conn), Ordering::Relaxed);
                }
                if !at_end && now >= t_end {
                    at_end = true;
                    totals[1].store(committed_obs(&conn), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let perf_child = perf.map(|p| {
        // Start recording at the end of the warm-up, for the measured window.
        let wait = t_warm.saturating_duration_since(Instant::now());
        let pid = gw.pid();
        let p = p.to_owned();
        let secs = o.seconds;
        std::thread::spawn(move || {
            std::thread::sleep(wait);
            if let Some(mut c) = perf_record(&p, pid, secs) {
                let _ = c.wait();
            }
        })
    });

    let probe_cookie = probe.map(|_| {
        icu_tests::http::login(
            gw.endpoints.http,
            icu_tests::http::DEFAULT_ACCOUNT,
            icu_tests::http::TEST_PASSWORD,
        )
        .expect("login for the event stream")
    });
    let (tallies, mut alarm_ms): (Vec<Tally>, Vec<f64>) = rt.block_on(async {
        let prober = probe.zip(probe_cookie).map(|(bed, cookie)| {
            tokio::spawn(alarm_probe(
                gw.endpoints.mllp,
                gw.endpoints.http,
                cookie,
                bed,
                t_warm,
                t_end,
            ))
        });
        tokio::time::sleep_until(start.into()).await;
        let mut tasks = Vec::new();
        for bed in 1..=beds {
            let o = o.clone();
            tasks.push(match transport {
                Transport::Mllp => tokio::spawn(mllp_bed(
                    gw.endpoints.mllp,
                    bed,
                    pki.as_deref().map(|p| monitor_tls(p, bed)),
                    o,
                    t_warm,
                    t_end,
                )),
                Transport::Mqtt => tokio::spawn(mqtt_bed(
                    mosquitto.as_ref().map(|m| m.port).unwrap_or(0),
                    bed,
                    o,
                    committed.clone(),
                    tick_rx.clone(),
                    t_warm,
                    t_end,
                )),
            });
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("bed task"));
        }
        let alarm_ms = match prober {
            Some(p) => p.await.expect("alarm probe"),
            None => Vec::new(),
        };
        (out, alarm_ms)
    });
    sort(&mut alarm_ms);
    if let Some(p) = perf_child {
        let _ = p.join();
    }
    stop_poll.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let (_, hwm) = gw.memory_kib();
    let rss_max = rss.max_kib();
    drop(rss);
    let (at_warm, at_end, cpu_window) = sampler.join().expect("sampler");
    let status = gw.status().unwrap_or_default();
    let commits = status["store_writes"]["commits"].as_u64().unwrap_or(0);
    let requests = status["store_writes"]["requests_stored"]
        .as_u64()
        .unwrap_or(0);
    gw.stop();

    let (d, w) = db_sizes(&db);
    let (stored_obs, ckpt_size) = {
        let conn = rusqlite::Connection::open(&db).expect("open store after the run");
        let stored = committed_obs(&conn);
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
        let (d2, w2) = db_sizes(&db);
        (stored, d2 + w2)
    };
    let mut lat: Vec<f64> = Vec::new();
    let (mut msgs, mut obs, mut errors) = (0, 0, 0);
    for t in tallies {
        msgs += t.msgs;
        obs += t.obs;
        errors += t.errors;
        lat.extend(t.lat_ms);
    }
    sort(&mut lat);
    let committed_window = totals[1]
        .load(Ordering::Relaxed)
        .saturating_sub(totals[0].load(Ordering::Relaxed));
    drop(mosquitto);
    drop(tansu);
    Row {
        transport,
        tls,
        sick: o.sick,
        kafka: o.kafka,
        forwarded_obs: at_end[0].saturating_sub(at_warm[0]),
        unsent_start: at_warm[1],
        unsent_end: at_end[1],
        alarm_records: at_end[2].saturating_sub(at_warm[2]),
        bridge_window: std::array::from_fn(|i| at_end[3 + i].saturating_sub(at_warm[3 + i])),
        cpu_window,
        alarm_ms: (probe.is_some()).then(|| {
            (
                alarm_ms.len(),
                percentile(&alarm_ms, 0.50),
                percentile(&alarm_ms, 0.99),
            )
        }),
        sync: sync.to_owned(),
        beds,
        msgs,
        obs,
        secs: o.seconds as f64,
        committed_obs: committed_window,
        errors,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        commits,
        requests,
        rss_max_mib: rss_max as f64 / 1024.0,
        hwm_mib: hwm as f64 / 1024.0,
        stored_obs,
        bytes_per_obs: (d + w) as f64 / stored_obs.max(1) as f64,
        bytes_per_obs_ckpt: ckpt_size as f64 / stored_obs.max(1) as f64,
    }
}

fn header() {
    println!(
        "{:<10} {:<5} {:<6} {:>5} {:>10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>7} {:>7} {:>10} {:>8} {:>8} {:>9} {:>10} {:>9} {:>16} {:>17}",
        "input",
        "course",
        "sync",
        "beds",
        "obs/s",
        "msgs/s",
        "p50 ms",
        "p99 ms",
        "req/cmt",
        "obs/s(db)",
        "RSS MiB",
        "HWM MiB",
        "stored obs",
        "B/obs",
        "B/obs*",
        "fwd/s",
        "outbox +/s",
        "alarms/s",
        "CPU% gw/brk/gen",
        "alarm p50/p99 ms"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:<10} {:<5} {:<6} {:>5} {:>10.0} {:>9.0} {:>8.2} {:>8.2} {:>8.1} {:>9.0} {:>7.1} {:>7.1} {:>10} {:>8.1} {:>8.1} {:>9} {:>10} {:>9.1} {:>16} {:>17}{}",
        match (r.transport, r.tls) {
            (Transport::Mllp, false) => "mllp",
            (Transport::Mllp, true) => "mllp+mtls",
            (Transport::Mqtt, _) => "mqtt",
        },
        if r.sick { "sick" } else { "calm" },
        r.sync,
        r.beds,
        r.obs as f64 / r.secs,
        r.msgs as f64 / r.secs,
        r.p50_ms,
        r.p99_ms,
        r.requests as f64 / r.commits.max(1) as f64,
        r.committed_obs as f64 / r.secs,
        r.rss_max_mib,
        r.hwm_mib,
        r.stored_obs,
        r.bytes_per_obs,
        r.bytes_per_obs_ckpt,
        if r.kafka {
            format!("{:.0}", r.forwarded_obs as f64 / r.secs)
        } else {
            "-".into()
        },
        if r.kafka {
            format!(
                "{:+.0}",
                (r.unsent_end as f64 - r.unsent_start as f64) / r.secs
            )
        } else {
            "-".into()
        },
        r.alarm_records as f64 / r.secs,
        {
            let [gw, broker, generators] = r.cpu_window.map(|c| c * 100.0 / r.secs);
            format!("{gw:.0}/{broker:.0}/{generators:.0}")
        },
        match r.alarm_ms {
            Some((n, p50, p99)) if n > 0 => format!("{p50:.2}/{p99:.2}"),
            Some(_) => "none seen".into(),
            None => "-".into(),
        },
        if r.errors > 0 {
            format!("  ({} errors)", r.errors)
        } else {
            String::new()
        }
    );
}

fn main() {
    let args = Args::parse();
    let calibration = icu_tests::bench::Calibration::print();
    let transports: Vec<String> = args.list("transports", "mllp,mqtt");
    let mllp_beds: Vec<usize> = args.list("beds", "30,100,300");
    let mqtt_beds: Vec<usize> = args.list("mqtt-beds", "30,100");
    let syncs: Vec<String> = args.list("sync", "full,normal");
    let tls_modes: Vec<String> = args.list("tls", "off");
    let courses: Vec<String> = args.list("course", "calm");
    let o = Opts {
        sick: false,
        kafka: args.flag("kafka"),
        seconds: args.get("seconds", 15),
        warmup: args.get("warmup", 3),
        obx: args.get("obx", 15),
        pipeline: args.get("pipeline", 1usize).max(1),
        mqtt_format: match args.get("mqtt-format", "json".to_owned()).as_str() {
            "pb" => PayloadFormat::Protobuf,
            _ => PayloadFormat::Json,
        },
        store_extra: args.get("store-extra", String::new()),
        perf: args.opt("perf").map(std::path::PathBuf::from),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "durable ingest: {} s measured after {} s warm-up, {} OBX per message, {} in flight per MLLP connection or MQTT publisher, MQTT {}, {}; {} CPUs",
        o.seconds,
        o.warmup,
        o.obx,
        o.pipeline,
        o.mqtt_format,
        if o.kafka {
            "forwarding to a live tansu broker"
        } else {
            "store only (no Kafka)"
        },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let mut rows = Vec::new();
    let mut perf = o.perf.clone();
    for t in &transports {
        let (transport, beds_list) = match t.as_str() {
            "mllp" => (Transport::Mllp, &mllp_beds),
            "mqtt" => (Transport::Mqtt, &mqtt_beds),
            other => panic!("--transports: unknown '{other}' (mllp, mqtt)"),
        };
        for sync in &syncs {
            for &beds in beds_list {
                for (mode, course) in tls_modes
                    .iter()
                    .flat_map(|m| courses.iter().map(move |c| (m, c)))
                {
                    let tls = match mode.as_str() {
                        "off" => false,
                        "on" if transport == Transport::Mllp => true,
                        "on" => continue,
                        other => panic!("--tls: unknown '{other}' (off, on)"),
                    };
                    let sick = match course.as_str() {
                        "calm" => false,
                        "sick" => true,
                        other => panic!("--course: unknown '{other}' (calm, sick)"),
                    };
                    let o = Arc::new(Opts { sick, ..o.clone() });
                    let row = run_case(&rt, transport, tls, sync, beds, &o, perf.take().as_deref());
                    if rows.is_empty() {
                        header();
                    }
                    print_row(&row);
                    rows.push(row);
                }
            }
        }
    }
    println!();
    println!("results (obs/s and msgs/s: acknowledged after commit, measured window only):");
    header();
    for r in &rows {
        print_row(r);
    }
    for r in rows.iter().filter(|r| r.kafka) {
        let [cycles, preparing, delivering, marking] = r.bridge_window;
        let per_s = |us: u64| us as f64 / 1e3 / r.secs;
        println!(
            "  bridge, {} {} {} beds: outbox {} records at the start of the window, {} at its end; {:.1} cycles/s, \
             {:.0} observations per cycle; per second: waiting for the prepared cycle {:.0} ms, delivering {:.0} ms, \
             marking sent {:.0} ms",
            if r.sick { "sick" } else { "calm" },
            r.sync,
            r.beds,
            r.unsent_start,
            r.unsent_end,
            cycles as f64 / r.secs,
            r.forwarded_obs as f64 / cycles.max(1) as f64,
            per_s(preparing),
            per_s(delivering),
            per_s(marking),
        );
    }
    println!("{}", calibration.line());
    for r in &rows {
        println!(
            "  ratio: {} {} {} beds: {:.2} obs/s per (SQLite row/s), ACK p50 {:.1} fsyncs",
            if r.sick { "sick" } else { "calm" },
            r.sync,
            r.beds,
            (r.obs as f64 / r.secs) / calibration.sqlite_rows_per_s,
            r.p50_ms * 1000.0 / calibration.fsync_p50_us,
        );
    }
    println!(
        "obs/s(db): observations committed in the window as the store shows them; req/cmt: requests per commit (group commit);\n\
         B/obs: (db + wal) / stored observations after the run; B/obs*: after wal_checkpoint(TRUNCATE).\n\
         course sick: every bed's values keep NEWS2 at 6-9 and change with every message; fwd/s: observations forwarded\n\
         to Kafka in the window (--kafka); outbox +/s: change of the unsent records over the window; alarms/s: alarm records.\n\
         CPU%: CPU time over the window as a share of one core, of the gateway / the broker (--kafka) / this bench's load generators.\n\
         alarm p50/p99: one more monitor (MLLP, plain) starts and ends an alarm every 250 ms (temperature 41/37 against a rule at 40 on a\n\
         code no load bed sends): from writing the message to the alarm event on the page's event stream.\n\
         Targets (issue 5): >= 100000 obs/s durable ingest, <= 150 MiB RSS."
    );
}
