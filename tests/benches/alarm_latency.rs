//! Alarm latency: from the moment a reading that crosses a limit is written to the gateway's MLLP
//! socket to the moment the alarm event arrives on the page's event stream (`/api/events`).
//!
//! 30 beds, one MLLP connection each, sending PCD-01 messages as fast as the ACKs come back
//! (each message waits for its ACK, so the store's commit is on every bed's path). Every other
//! message of a bed alternates its heart rate between 150 (alarm start) and 80 (alarm end).
//! Runs twice: with a Kafka bootstrap address where nothing listens (backbone down), and with
//! `synchronous = "full"` (every commit waits for fsync: the slow-disk case) plus the backbone
//! down, and with `synchronous = "full"` while another writer on the same file system syncs 64 KiB
//! writes back to back (the slow, contended disk). Prints p50 / p99 / max in milliseconds.
//!
//!     cargo bench -p icu-tests --bench alarm_latency
//!
//! Each setting runs twice: every bed paced at its devices' full rate (ICU_BENCH_RATE messages/s
//! per bed, default 10; the beds' phases spread over the period), and saturated (as fast as the ACKs come back: the latency then includes
//! the queueing of a machine at 100 % load). The clients run on their own thread.
//!
//! Options (env): ICU_BENCH_SECONDS (default 20), ICU_BENCH_BEDS (default 30), ICU_BENCH_RATE,
//! ICU_BENCH_TLS (`off`, `on` or `off,on`: MLLP with each monitor's client certificate required
//! and the event stream over HTTPS, from a test PKI made in process).
//!
//! The gateway runs in this process (`icu_gateway::app::start`) with the harness's test accounts
//! (`icu_tests::http`, made in its store file before it starts); the event stream is read as the
//! test physician.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_tests::bench::percentile;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::codec::Framed;

const ALARMS: &str = r#"
[alarms]
rates = []
[alarms.news2]
enabled = false
[[alarms.limits]]
id = "hr"
label = "HR"
mdc_codes = [147842]
low = 40.0
high = 120.0
priority = "medium"
sustain_s = 0
hysteresis = 2.0
"#;

fn message(bed: usize, n: u64, hr: u32) -> String {
    let eui = format!("0012AB{bed:010X}");
    let ts = chrono::Utc::now().format("%Y%m%d%H%M%S%.3f+0000");
    [
        format!("MSH|^~\\&|BENCH^{eui}^EUI-64|BENCH|ICU_GW|HOSP|{ts}||ORU^R01^ORU_R01|B{bed}-{n}|P|2.6|||AL|NE"),
        format!("OBR|1|X|X|182777000^monitoring of patient^SCT|||{ts}"),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^^{eui}^EUI-64"),
        format!("OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R"),
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R".into(),
    ]
    .join("\r")
}

#[allow(clippy::too_many_arguments)]
async fn run_case(
    name: &str,
    synchronous: &str,
    slow_disk: bool,
    tls: bool,
    beds: usize,
    seconds: u64,
    rate: f64,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    // Every interface of the path on TLS: MLLP with each monitor's client certificate required,
    // the page's event stream over HTTPS.
    let pki = tls.then(|| {
        let pki = dir.path().join("pki");
        icu_gateway::tls::pki::make(
            &pki,
            &icu_gateway::tls::pki::PkiRequest {
                devices: (1..=beds).map(|b| format!("mon-{b:02}")).collect(),
                days: 30,
                ..Default::default()
            },
        )
        .expect("test PKI");
        pki
    });
    // The slow disk: another writer on the same file system syncing 64 KiB writes back to back,
    // so every commit of the store queues behind its flushes.
    let stop_hog = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hog = slow_disk.then(|| {
        let path = dir.path().join("disk-hog");
        let stop = stop_hog.clone();
        std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut f = std::fs::File::create(path).expect("hog file");
            let block = vec![0x5au8; 64 * 1024];
            let mut syncs = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if syncs.is_multiple_of(256) {
                    f.rewind().expect("rewind");
                }
                f.write_all(&block).expect("hog write");
                f.sync_data().expect("hog sync");
                syncs += 1;
            }
            syncs
        })
    });
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kafka = dead.local_addr().unwrap();
    drop(dead);
    let mut cfg = format!(
        "gateway_id = \"bench\"\ndata_dir = \"{}\"\nclock = \"synced\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nsynchronous = \"{synchronous}\"\n[kafka]\nbootstrap = \"{kafka}\"\n{ALARMS}\n",
        dir.path().display()
    );
    if let Some(p) = &pki {
        cfg.push_str(&format!(
            "[tls]\ncert_file = \"{p}/gateway.crt\"\nkey_file = \"{p}/gateway.key\"\nca_file = \"{p}/ca.crt\"\n\
             mllp = \"required\"\nmllp_client_certs = \"required\"\nhttp = \"required\"\n",
            p = p.display()
        ));
    }
    for b in 1..=beds {
        cfg.push_str(&format!("[[beds]]\nid = \"bed-{b:02}\"\n"));
    }
    for b in 1..=beds {
        cfg.push_str(&format!(
            "[[devices]]\nid = \"mon-{b:02}\"\nbed = \"bed-{b:02}\"\nprotocol = \"pcd01\"\nmatch = \"0012AB{b:010X}\"\nsilent_after_s = 600\n"
        ));
    }
    let config =
        icu_gateway::config::Config::from_toml(&cfg, &dir.path().join("g.toml")).expect("config");
    let token =
        icu_tests::http::prepare_accounts_in_process(&config.store.path).expect("test accounts");
    let key = icu_cloud_bridge::signing::GatewayKey::generate();
    let running = icu_gateway::app::start(config, Some(key))
        .await
        .expect("gateway");
    let ep = running.endpoints.clone();
    icu_tests::http::register_token(ep.http, token);
    if let Some(p) = &pki {
        icu_tests::http::use_tls(ep.http, &p.join("ca.crt"));
    }
    // The load runs on its own thread and runtime, so the bench's clients do not queue on the
    // gateway's system arbiter: what is measured is the gateway.
    let load = tokio::task::spawn_blocking(move || {
        // The event stream needs a login (as the page's does).
        let cookie = icu_tests::http::login(
            ep.http,
            icu_tests::http::DEFAULT_ACCOUNT,
            icu_tests::http::TEST_PASSWORD,
        )
        .expect("login");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("load runtime")
            .block_on(load(ep, pki, &cookie, beds, seconds, rate))
    });
    let (n, mut l) = load.await.expect("load thread");
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pace = if rate > 0.0 {
        format!("{rate} msg/s per bed")
    } else {
        "as fast as ACKs allow".to_owned()
    };
    let name = if tls {
        format!("{name}, TLS (mllp mutual, https)")
    } else {
        name.to_owned()
    };
    println!(
        "{name}, {pace}: {beds} beds, {n} messages in {seconds} s ({:.0} msg/s), {} alarm events measured: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        n as f64 / seconds as f64,
        l.len(),
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
    running.shutdown().await;
    stop_hog.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(hog) = hog {
        let syncs = hog.join().expect("hog thread");
        println!("    (slow disk: the competing writer made {syncs} synced 64 KiB writes)");
    }
}

/// Drives `beds` MLLP connections for `seconds` (at `rate` messages/s per bed, 0 = as fast as the
/// ACKs allow) and returns the number of messages sent and the alarm latencies in ms.
async fn load(
    ep: icu_gateway::app::Endpoints,
    pki: Option<std::path::PathBuf>,
    cookie: &str,
    beds: usize,
    seconds: u64,
    rate: f64,
) -> (u64, Vec<f64>) {
    // Event stream client: alarm_id/phase → arrival time.
    let sent: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let tcp = tokio::net::TcpStream::connect(ep.http).await.unwrap();
    let connector = |bed: usize| {
        pki.as_ref().map(|p| {
            icu_sim::run::tls_connector(
                &icu_sim::run::SimTls {
                    ca: p.join("ca.crt"),
                    cert_dir: (bed > 0).then(|| p.join("devices")),
                    cert_as: None,
                    server_name: None,
                },
                &format!("mon-{bed:02}"),
            )
            .expect("TLS connector")
        })
    };
    let localhost = || rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut sse: Box<dyn icu_sim::run::Io> = match connector(0) {
        None => Box::new(tcp),
        Some(c) => Box::new(c.connect(localhost(), tcp).await.expect("HTTPS handshake")),
    };
    sse.write_all(
        format!(
            "GET /api/events HTTP/1.1\r\nHost: {}\r\nCookie: icu_session={cookie}\r\n\r\n",
            ep.http
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    {
        let sent = sent.clone();
        let latencies = latencies.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(sse).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(json) = line.strip_prefix("data: ") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                    continue;
                };
                let at = Instant::now();
                // "bed-07" + the message number that triggered it, carried in the text order:
                // we match on (bed, phase-parity) via the pending map instead.
                let bed: usize = v["bed"]
                    .as_str()
                    .unwrap_or("bed-0")
                    .trim_start_matches("bed-")
                    .parse()
                    .unwrap_or(0);
                let phase = v["phase"].as_str().unwrap_or("");
                let key = (bed, u64::from(phase == "end"));
                if let Some(t0) = sent.lock().unwrap().remove(&key) {
                    latencies
                        .lock()
                        .unwrap()
                        .push(at.duration_since(t0).as_secs_f64() * 1000.0);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let messages = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for bed in 1..=beds {
        let sent = sent.clone();
        let messages = messages.clone();
        let tls = connector(bed);
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(ep.mllp).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let io: Box<dyn icu_sim::run::Io> = match tls {
                None => Box::new(stream),
                Some(c) => Box::new(c.connect(localhost(), stream).await.expect("MLLP TLS")),
            };
            let mut framed = Framed::new(io, MllpCodec::new(1 << 20));
            let mut n = 0u64;
            let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
            // Beds are not phase-locked: bed b starts b/beds of a period late, as independent
            // monitors would (all 30 sending in the same instant is a burst no ICU produces).
            let mut next = tokio::time::Instant::now()
                + period.map_or(Duration::ZERO, |p| p.mul_f64(bed as f64 / beds as f64));
            while Instant::now() < deadline {
                if let Some(period) = period {
                    tokio::time::sleep_until(next).await;
                    next += period;
                }
                n += 1;
                // Odd messages start the alarm (HR 150), even ones end it (HR 80).
                let starting = n % 2 == 1;
                let hr = if starting { 150 } else { 80 };
                let msg = message(bed, n, hr);
                sent.lock()
                    .unwrap()
                    .insert((bed, u64::from(!starting)), Instant::now());
                framed.send(msg.as_bytes()).await.unwrap();
                match framed.next().await {
                    Some(Ok(MllpEvent::Frame { .. })) => {}
                    other => panic!("no ACK: {other:?}"),
                }
                messages.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = messages.load(std::sync::atomic::Ordering::Relaxed);
    let l = latencies.lock().unwrap().clone();
    (n, l)
}

fn main() {
    icu_tests::bench::Calibration::print();
    let env = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<f64>().ok());
    let seconds = env("ICU_BENCH_SECONDS").unwrap_or(20.0) as u64;
    let beds = env("ICU_BENCH_BEDS").unwrap_or(30.0) as usize;
    // A bed's full device rate: a monitor, a ventilator and pumps each sending numerics at 1 Hz
    // or faster come to well under 10 messages/s; 10 is the default paced rate.
    let rate = env("ICU_BENCH_RATE").unwrap_or(10.0);
    // ICU_BENCH_TLS: off (default), on, or off,on (each case plain, then on TLS).
    let tls_modes: Vec<bool> = std::env::var("ICU_BENCH_TLS")
        .unwrap_or_else(|_| "off".into())
        .split(',')
        .map(|m| match m.trim() {
            "on" => true,
            "off" => false,
            other => panic!("ICU_BENCH_TLS: unknown '{other}' (off, on)"),
        })
        .collect();
    let system = actix::System::new();
    system.block_on(async move {
        for (name, synchronous, slow_disk) in [
            ("backbone down, synchronous=normal", "normal", false),
            (
                "backbone down, synchronous=full (fsync per commit)",
                "full",
                false,
            ),
            (
                "backbone down, synchronous=full, slow disk (competing synced writer)",
                "full",
                true,
            ),
        ] {
            for &tls in &tls_modes {
                run_case(name, synchronous, slow_disk, tls, beds, seconds, rate).await;
                run_case(name, synchronous, slow_disk, tls, beds, seconds, 0.0).await;
            }
        }
    });
}
