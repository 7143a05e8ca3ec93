//! The store writer alone: observations per second through `StoreDb::commit_batch` (the group
//! commit the gateway's `StoreWriter` thread runs), with no network, no HL7 decoding and no
//! actors. This is the ceiling the durable-ingest bench (`--bench ingest`) can reach on this
//! machine, and it says where the writer's time goes: CPU (user and system) per observation and
//! bytes the process wrote per observation (`/proc/self/io` `write_bytes`/`wchar`: the WAL,
//! checkpoints and the database file).
//!
//!     cargo bench -p icu-tests --bench store_commit
//!     cargo bench -p icu-tests --bench store_commit -- --requests 14,30 --sync full,normal --seconds 10
//!
//! Options (`--name value`, or env `ICU_BENCH_<NAME>`): `--beds 30`, `--obx 15`,
//! `--requests 14` (messages per commit; the ingest bench sees ~14 at 30 beds),
//! `--sync full,normal`, `--seconds 10`.

use std::time::{Duration, Instant};

use icu_gateway::store::db::digest;
use icu_gateway::store::{ObservationBatch, StoreDb, WriteRequest};
use icu_tests::bench::*;

fn proc_io() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (get("wchar:"), get("write_bytes:"))
}

/// User and system CPU seconds of this process (`/proc/self/stat`, clock ticks of 10 ms).
fn cpu_times() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    (ticks(11), ticks(12))
}

fn main() {
    let args = Args::parse();
    let calibration = icu_tests::bench::Calibration::print();
    let mut ratios = Vec::new();
    let beds: usize = args.get("beds", 30);
    let obx: usize = args.get("obx", 15);
    let seconds: u64 = args.get("seconds", 10);
    let requests = args.list("requests", "14");
    let syncs: Vec<String> = args.list("sync", "full,normal");
    let now_us = chrono::Utc::now().timestamp_micros();
    let templates = decoded_templates(beds, obx, now_us);
    println!(
        "store writer alone: {beds} monitors, {obx} observations per message, {seconds} s per case, commit_batch on this thread"
    );
    println!(
        "{:<7} {:>8} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "sync",
        "req/cmt",
        "obs/s",
        "commits/s",
        "us/obs",
        "usr us",
        "sys us",
        "wchar B/o",
        "disk B/o"
    );
    for sync in &syncs {
        for &per_commit in &requests {
            let dir = scratch("store-commit");
            let path = dir.path().join("store.db");
            let mut db =
                StoreDb::open(&path, GATEWAY_ID, sync == "full", 64 << 30).expect("open store");
            let mut k = 0u64;
            let mut run = |db: &mut StoreDb, until: Instant| -> (u64, u64) {
                let (mut obs, mut commits) = (0u64, 0u64);
                while Instant::now() < until {
                    let batch: Vec<WriteRequest> = (0..per_commit)
                        .map(|i| {
                            let b = ((k as usize + i) % beds) + 1;
                            let t = now_us + k as i64 * 1000 + i as i64;
                            let control = format!("S{b}-{k}-{i}");
                            WriteRequest::Observations(ObservationBatch {
                                device_id: monitor_id(b),
                                bed: bed_id(b),
                                dedup: Some((control.clone(), digest(control.as_bytes()))),
                                observations: templates[b - 1]
                                    .iter()
                                    .map(|o| {
                                        let mut o = o.clone();
                                        o.device_id = monitor_id(b);
                                        o.bed = bed_id(b);
                                        o.receive_time_us = t;
                                        o.device_time_us = Some(t - 200_000);
                                        o.source_message_id = control.clone();
                                        o
                                    })
                                    .collect(),
                                order: Default::default(),
                                traceparent: None,
                                waveforms: Default::default(),
                            })
                        })
                        .collect();
                    k += 1;
                    for r in db.commit_batch(&batch) {
                        r.expect("bench write");
                    }
                    obs += (per_commit * obx) as u64;
                    commits += 1;
                }
                (obs, commits)
            };
            // Warm-up: the tables have a few hundred thousand rows before measuring.
            run(&mut db, Instant::now() + Duration::from_secs(2));
            let (w0, d0) = proc_io();
            let (u0, s0) = cpu_times();
            let t0 = Instant::now();
            let (obs, commits) = run(&mut db, t0 + Duration::from_secs(seconds));
            let secs = t0.elapsed().as_secs_f64();
            let (u1, s1) = cpu_times();
            let (w1, d1) = proc_io();
            let per = |v: f64| v / obs as f64;
            ratios.push(format!(
                "  ratio: {sync} {per_commit} per commit: {:.2} obs/s per (SQLite row/s)",
                obs as f64 / secs / calibration.sqlite_rows_per_s
            ));
            println!(
                "{:<7} {:>8} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>10.0}",
                sync,
                per_commit,
                obs as f64 / secs,
                commits as f64 / secs,
                per(secs * 1e6),
                per((u1 - u0) * 1e6),
                per((s1 - s0) * 1e6),
                per((w1 - w0) as f64),
                per((d1 - d0) as f64),
            );
        }
    }
    println!("us/obs: wall time per observation on the writer (1e6 / obs/s); usr/sys: CPU per observation;");
    println!("wchar: bytes the process handed to write(2) per observation; disk: bytes it caused to be written to storage.");
    println!("{}", calibration.line());
    for r in &ratios {
        println!("{r}");
    }
}
