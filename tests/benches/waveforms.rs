//! Waveforms at ICU scale (issue 19): the gateway's CPU and RSS, the bytes it stores per sample,
//! and the alarm latency, with and without the curves flowing.
//!
//! The gateway runs as a child process (the release build, [`gateway_bin`]) with
//! `synchronous = "full"`. Each of `--beds` monitors (default 30) sends, on one MLLP connection,
//! today's numerics load (a 15-row PCD-01 message every second, waiting for its ACK) and, in the
//! `on` case, its curves on a second connection: three ECG leads at 500 Hz, the pleth and the
//! arterial pressure at 125 Hz as PCD-01 waveform messages from `icu_sim::waveform`
//! (`WaveformMonitor`, one message per channel group every 800 ms, 1,750 samples/s per bed:
//! 52,500 samples/s for 30 beds), the beds' clocks spread over each period. The alarm probe of `icu_tests::bench` (a monitor whose alarm
//! starts and ends every 250 ms, timed from the socket write to the page's event stream) runs
//! meanwhile. With `--kafka` the gateway also forwards everything to a live tansu broker.
//!
//!     cargo bench -p icu-tests --bench waveforms
//!     cargo bench -p icu-tests --bench waveforms -- --beds 30 --seconds 30 --kafka
//!
//! Options (`--name value`, or env `ICU_BENCH_<NAME>`): `--beds 30`, `--seconds 30`,
//! `--warmup 5`, `--waveforms off,on`, `--kafka`.
//!
//! Measured over the window after the warm-up: gateway CPU (user + system seconds per second,
//! as a share of all the machine's cores), RSS (max, sampled), the probe's alarm latency p50 and
//! p99. After the run: the waveform rows' stored bytes (`records.payload` of kind 6) per sample
//! the monitors had acknowledged, against 2 bytes (16-bit raw).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_tests::bench::*;
use tokio_util::codec::Framed;

struct Row {
    waveforms: bool,
    kafka: bool,
    beds: usize,
    /// Warm-up plus window: what the client counts cover.
    run_secs: f64,
    numeric_msgs: u64,
    wave_msgs: u64,
    samples: u64,
    not_aa: u64,
    cpu_share: f64,
    rss_max_mib: f64,
    alarm: (usize, f64, f64),
    wave_bytes: u64,
    wave_samples_stored: u64,
}

/// Client tallies.
#[derive(Default)]
struct Counts {
    numeric_msgs: AtomicU64,
    wave_msgs: AtomicU64,
    /// Samples present in acknowledged waveform messages (all of the run).
    samples: AtomicU64,
    not_aa: AtomicU64,
}

async fn connect(addr: std::net::SocketAddr) -> Framed<tokio::net::TcpStream, MllpCodec> {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("MLLP connect");
    s.set_nodelay(true).expect("nodelay");
    Framed::new(s, MllpCodec::new(4 << 20))
}

/// Sends one message and waits for its ACK; whether it was AA.
async fn exchange(framed: &mut Framed<tokio::net::TcpStream, MllpCodec>, msg: &[u8]) -> bool {
    framed.send(msg).await.expect("MLLP send");
    match framed.next().await {
        Some(Ok(MllpEvent::Frame { payload, .. })) => payload.windows(7).any(|w| w == b"MSA|AA|"),
        other => panic!("no ACK: {other:?}"),
    }
}

/// Bed `bed`'s phase in a period: the beds' clocks are spread over it, as real monitors'
/// are (all at once would make every period a burst).
fn phase(bed: usize, beds: usize, period: Duration) -> Duration {
    period.mul_f64((bed - 1) as f64 / beds.max(1) as f64)
}

async fn numerics(
    addr: std::net::SocketAddr,
    (bed, beds): (usize, usize),
    counts: Arc<Counts>,
    t_end: Instant,
) {
    let mut framed = connect(addr).await;
    let period = Duration::from_secs(1);
    let first = tokio::time::Instant::now() + phase(bed, beds, period);
    let mut tick = tokio::time::interval_at(first, period);
    let mut n = 0;
    while Instant::now() < t_end {
        tick.tick().await;
        n += 1;
        if exchange(&mut framed, &pcd01(bed, n, 15, &hl7_now())).await {
            counts.numeric_msgs.fetch_add(1, Ordering::Relaxed);
        } else {
            counts.not_aa.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn curves(
    addr: std::net::SocketAddr,
    (bed, beds): (usize, usize),
    counts: Arc<Counts>,
    t_end: Instant,
) {
    let sim_bed = icu_sim::SimBed {
        index: bed,
        bed_id: bed_id(bed),
        device_id: monitor_id(bed),
        monitor_eui64: eui(bed),
    };
    let mut monitor = icu_sim::waveform::WaveformMonitor::new(sim_bed, 7, chrono::Utc::now());
    let vitals = icu_sim::physiology::Patient::new(bed as u64).step();
    let mut framed = connect(addr).await;
    let period = Duration::from_millis(u64::from(monitor.segment_ms));
    let first = tokio::time::Instant::now() + phase(bed, beds, period);
    let mut tick = tokio::time::interval_at(first, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while Instant::now() < t_end {
        tick.tick().await;
        for (msg, sent) in monitor.next_messages(&vitals) {
            if exchange(&mut framed, msg.as_bytes()).await {
                counts.wave_msgs.fetch_add(1, Ordering::Relaxed);
                let present: usize = sent
                    .iter()
                    .map(|s| s.samples.iter().flatten().count())
                    .sum();
                counts.samples.fetch_add(present as u64, Ordering::Relaxed);
            } else {
                counts.not_aa.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn run_case(
    rt: &tokio::runtime::Runtime,
    beds: usize,
    seconds: u64,
    warmup: u64,
    kafka: bool,
    waveforms: bool,
) -> Row {
    let scratch = scratch("waveforms-");
    let tansu = kafka.then(start_tansu);
    let probe = beds + 1;
    let spec = GatewaySpec {
        dir: scratch.path().to_owned(),
        synchronous: "full".into(),
        monitors: probe,
        pumps: 0,
        mqtt_port: None,
        kafka: tansu.as_ref().map(|t| format!("127.0.0.1:{}", t.port)),
        store_extra: String::new(),
        mllp_tls: None,
        alarms: probe_alarms(),
    };
    let mut gw = spec.start();
    let pid = gw.pid();
    let cookie = icu_tests::http::login(
        gw.endpoints.http,
        icu_tests::http::DEFAULT_ACCOUNT,
        icu_tests::http::TEST_PASSWORD,
    )
    .expect("login for the event stream");
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let t_warm = start + Duration::from_secs(warmup);
    let t_end = t_warm + Duration::from_secs(seconds);
    let (mllp, http) = (gw.endpoints.mllp, gw.endpoints.http);
    let (cpu, rss_kib, mut alarm_ms) = rt.block_on(async {
        let prober = tokio::spawn(alarm_probe(mllp, http, cookie, probe, t_warm, t_end));
        let mut tasks = Vec::new();
        for bed in 1..=beds {
            tasks.push(tokio::spawn(numerics(
                mllp,
                (bed, beds),
                counts.clone(),
                t_end,
            )));
            if waveforms {
                tasks.push(tokio::spawn(curves(
                    mllp,
                    (bed, beds),
                    counts.clone(),
                    t_end,
                )));
            }
        }
        tokio::time::sleep_until(t_warm.into()).await;
        let cpu0 = proc_cpu_seconds(&pid.to_string());
        let rss = RssSampler::start(pid);
        tokio::time::sleep_until(t_end.into()).await;
        let cpu1 = proc_cpu_seconds(&pid.to_string());
        let rss_kib = rss.max_kib();
        for t in tasks {
            t.await.expect("load task");
        }
        (cpu1 - cpu0, rss_kib, prober.await.expect("alarm probe"))
    });
    gw.stop();
    let secs = seconds as f64;
    let db = scratch.path().join("gateway.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("store");
    let (wave_bytes, _rows): (i64, i64) = conn
        .query_row(
            "SELECT COALESCE(SUM(LENGTH(payload)), 0), COUNT(*) FROM records WHERE kind = 6",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("waveform rows");
    drop(tansu);
    sort(&mut alarm_ms);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let samples = counts.samples.load(Ordering::Relaxed);
    Row {
        waveforms,
        kafka,
        beds,
        run_secs: (warmup + seconds) as f64,
        numeric_msgs: counts.numeric_msgs.load(Ordering::Relaxed),
        wave_msgs: counts.wave_msgs.load(Ordering::Relaxed),
        samples,
        not_aa: counts.not_aa.load(Ordering::Relaxed),
        cpu_share: cpu / secs / cores,
        rss_max_mib: rss_kib as f64 / 1024.0,
        alarm: (
            alarm_ms.len(),
            percentile(&alarm_ms, 0.50),
            percentile(&alarm_ms, 0.99),
        ),
        wave_bytes: wave_bytes as u64,
        wave_samples_stored: samples,
    }
}

fn main() {
    let args = Args::parse();
    let beds: usize = args.get("beds", 30);
    let seconds: u64 = args.get("seconds", 30);
    let warmup: u64 = args.get("warmup", 5);
    let kafka = args.flag("kafka");
    let cases: Vec<String> = args.list("waveforms", "off,on");
    Calibration::print();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for case in &cases {
        let on = case == "on";
        eprintln!("waveforms {case}: {beds} beds, {seconds} s after {warmup} s of warm-up...");
        rows.push(run_case(&rt, beds, seconds, warmup, kafka, on));
    }
    println!(
        "| waveforms | kafka | beds | numeric msg/s | waveform msg/s | samples/s | not AA | gateway CPU (share of all cores) | RSS max MiB | alarm p50 / p99 ms (n) | stored bytes/sample | ratio vs 16-bit |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let per_sample = if r.wave_samples_stored > 0 {
            r.wave_bytes as f64 / r.wave_samples_stored as f64
        } else {
            0.0
        };
        let ratio = if per_sample > 0.0 {
            format!("{:.2}:1", 2.0 / per_sample)
        } else {
            "-".into()
        };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {:.1} % | {:.0} | {:.2} / {:.2} ({}) | {:.3} | {} |",
            if r.waveforms { "on" } else { "off" },
            if r.kafka { "yes" } else { "no" },
            r.beds,
            r.numeric_msgs as f64 / r.run_secs,
            r.wave_msgs as f64 / r.run_secs,
            r.samples as f64 / r.run_secs,
            r.not_aa,
            r.cpu_share * 100.0,
            r.rss_max_mib,
            r.alarm.1,
            r.alarm.2,
            r.alarm.0,
            per_sample,
            ratio
        );
    }
}
