//! The trend query under load (issue 17.2): 24 h of one bed at 20 parameters per second (about
//! 1.7 million readings) in the store, queried through `GET /api/beds/{bed}/trends` while 30
//! MLLP monitors send as fast as their ACKs come back; durable ingest is measured in windows
//! alternating without and with the queries, so the run-to-run noise is visible next to the
//! difference.
//!
//!     cargo bench -p icu-tests --bench trends
//!     cargo bench -p icu-tests --bench trends -- --rounds 3 --seconds 15 --query-every-ms 250
//!
//! Options (`--name value`, or env `ICU_BENCH_<NAME>`): `--beds 30` (ingesting monitors),
//! `--obx 15`, `--sync full`, `--seconds 15` (per window), `--rounds 2` (pairs of windows),
//! `--query-every-ms 0` (pause between two 24 h queries; 0: back to back, one client).
//!
//! The 24 h are written straight through `StoreDb::commit_batch` (the writer's own path, the
//! rollup included) into the gateway's file before it starts, as bed 1's monitor, ending a
//! minute ago; then bed 1's monitor goes on live with the others.
//! One query is the whole 24 h of the bed at 1-minute resolution (28 800 points, two pages of
//! at most 20 000) and, separately, at 5 minutes (one page).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_gateway::store::{ObservationBatch, StoreDb, WriteRequest};
use icu_protos::v1::{Observation, ObservationStatus};
use icu_tests::bench::*;
use tokio_util::codec::Framed;

const PARAMS: u32 = 20;
const DAY_S: i64 = 24 * 3600;

/// Writes 24 h of bed 1 (20 readings a second, one message a second) ending a minute ago.
fn build_day(db_path: &std::path::Path) -> (u64, f64) {
    let started = Instant::now();
    let mut db = StoreDb::open(db_path, "bench-gw", false, 200_000 << 20).expect("store");
    db.set_trend_flush_every(Duration::ZERO);
    let now_s = chrono::Utc::now().timestamp();
    let first = (now_s - 60 - DAY_S) / 60 * 60;
    let mut written = 0u64;
    let per_commit = 600;
    for chunk in (0..DAY_S).collect::<Vec<_>>().chunks(per_commit) {
        let reqs: Vec<WriteRequest> = chunk
            .iter()
            .map(|s| {
                let t = (first + s) * 1_000_000;
                let obs: Vec<Observation> = (0..PARAMS)
                    .map(|p| Observation {
                        device_id: monitor_id(1),
                        mdc_code: 150_000 + p,
                        value: Some(60.0 + f64::from(p) + (s % 37) as f64 * 0.5),
                        unit_ucum: "/min".into(),
                        status: ObservationStatus::Valid as i32,
                        device_time_us: Some(t),
                        receive_time_us: t + 2_000,
                        clock_synced: true,
                        bed: bed_id(1),
                        ..Default::default()
                    })
                    .collect();
                written += obs.len() as u64;
                WriteRequest::Observations(ObservationBatch {
                    device_id: monitor_id(1),
                    bed: bed_id(1),
                    dedup: Some((format!("H{s}"), *s)),
                    observations: Arc::from(obs),
                    order: Default::default(),
                    traceparent: None,
                    waveforms: Default::default(),
                })
            })
            .collect();
        for r in db.commit_batch(&reqs) {
            r.expect("historic commit");
        }
    }
    db.commit_batch(&[]);
    (written, started.elapsed().as_secs_f64())
}

/// One monitor sending as fast as its ACKs come back; counts acknowledged observations.
async fn monitor(
    addr: std::net::SocketAddr,
    bed: usize,
    obx: usize,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut framed = Framed::new(stream, MllpCodec::new(1 << 20));
    let mut n = 1_000_000u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        framed
            .send(pcd01(bed, n, obx, &hl7_now()).as_slice())
            .await
            .expect("send");
        match framed.next().await {
            Some(Ok(MllpEvent::Frame { payload, .. })) => {
                if payload.windows(7).any(|w| w == b"MSA|AA|") {
                    acked.fetch_add(obx as u64, Ordering::Relaxed);
                }
            }
            other => panic!("bed {bed}: no ACK: {other:?}"),
        }
    }
}

/// The whole 24 h of bed 1 at `bucket_s`, every page; returns (ms, points, pages).
fn query_day(http: std::net::SocketAddr, from: i64, bucket_s: u32) -> (f64, usize, usize) {
    let t0 = Instant::now();
    let (mut points, mut pages) = (0, 0);
    let mut after = String::new();
    loop {
        let path = format!(
            "/api/beds/{}/trends?from={from}&to={}&bucket_s={bucket_s}{after}",
            bed_id(1),
            from + DAY_S
        );
        let page = icu_tests::http::http_get_json(http, &path).expect("trend query");
        pages += 1;
        for s in page["series"].as_array().expect("series") {
            points += s["points"].as_array().map_or(0, Vec::len);
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    (t0.elapsed().as_secs_f64() * 1e3, points, pages)
}

fn main() {
    let args = Args::parse();
    Calibration::print();
    let beds: usize = args.get("beds", 30);
    let obx: usize = args.get("obx", 15);
    let sync: String = args.get("sync", "full".to_string());
    let seconds: u64 = args.get("seconds", 15);
    let rounds: usize = args.get("rounds", 2);
    let every_ms: u64 = args.get("query-every-ms", 0);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "trends: 24 h of bed 1 ({PARAMS} parameters/s) in the store; {beds} MLLP monitors ({obx} OBX, 1 in flight), sync={sync}; {seconds} s windows, {rounds} rounds of without/with queries (pause {every_ms} ms); {cpus} CPUs"
    );
    let scratch = scratch("trends-");
    let spec = GatewaySpec {
        dir: scratch.path().join("gw"),
        synchronous: sync,
        monitors: beds,
        pumps: 0,
        mqtt_port: None,
        kafka: None,
        store_extra: String::new(),
        mllp_tls: None,
        alarms: String::new(),
    };
    std::fs::create_dir_all(&spec.dir).expect("dir");
    let (written, secs) = build_day(&spec.dir.join("gateway.db"));
    println!(
        "store built: {written} readings in {secs:.1} s ({:.0} MiB)",
        mib(file_size(&spec.dir.join("gateway.db")))
    );
    let gw = spec.start();
    let http = gw.endpoints.http;
    let from = (chrono::Utc::now().timestamp() - 60 - DAY_S) / 60 * 60;
    // Idle figures first: the query alone.
    let (idle_ms, points, pages) = query_day(http, from, 60);
    println!("idle: 24 h at 1 min: {idle_ms:.1} ms, {points} points in {pages} pages");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mllp = gw.endpoints.mllp;
    for b in 1..=beds {
        rt.spawn(monitor(mllp, b, obx, acked.clone(), stop.clone()));
    }
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "{:<8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "window", "obs/s", "1min p50 ms", "1min p99 ms", "5min p50 ms", "5min p99 ms", "queries"
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..rounds {
        for querying in [false, true] {
            let a0 = acked.load(Ordering::Relaxed);
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs(seconds);
            let (mut by_min, mut by_5min) = (Vec::new(), Vec::new());
            while Instant::now() < end {
                if querying {
                    let (ms, points, _) = query_day(http, from, 60);
                    assert!(points >= 28_000, "24 h at 1 min: {points} points");
                    by_min.push(ms);
                    by_5min.push(query_day(http, from, 300).0);
                    std::thread::sleep(Duration::from_millis(every_ms));
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let rate = (acked.load(Ordering::Relaxed) - a0) as f64 / t0.elapsed().as_secs_f64();
            sort(&mut by_min);
            sort(&mut by_5min);
            let p = |v: &[f64], q| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.1}", percentile(v, q))
                }
            };
            println!(
                "{:<8} {:>10.0} {:>12} {:>12} {:>12} {:>12} {:>8}",
                if querying { "queries" } else { "ingest" },
                rate,
                p(&by_min, 0.5),
                p(&by_min, 0.99),
                p(&by_5min, 0.5),
                p(&by_5min, 0.99),
                by_min.len() + by_5min.len()
            );
            if querying { &mut with } else { &mut without }.push(rate);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "ingest with queries: {:.0} obs/s against {:.0} without ({:+.1} %)",
        mean(&with),
        mean(&without),
        (mean(&with) / mean(&without) - 1.0) * 100.0
    );
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(gw);
}
