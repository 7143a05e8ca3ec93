//! Live curves on the page (issue 19): a real gateway fed over MLLP by the simulated monitor
//! (`icu_sim::waveform::WaveformMonitor`: three ECG leads at 500 Hz, pleth and ABP at 125 Hz,
//! with dropped samples).
//!
//! - HTTP: the curve stream `/api/beds/{bed}/waves` refuses an anonymous caller and gives a
//!   logged-in one every sample that was sent, bit for bit, with its first-sample time and its
//!   gaps where the monitor dropped samples; an alarm's snippet cut from the ring does the same.
//! - Browser: headless Chromium (`scripts/wave_page_test.py`) logs in, opens the bed view, and
//!   reads the ECG canvas twice a second apart: drawn, and moving; the screenshot goes to
//!   `test-artifacts/bed-waves.png`. Needs `ICU_PYTHON` (with selenium), `/usr/bin/chromium` and
//!   `/usr/bin/chromedriver` (`scripts/test` installs them); skipped without them except under
//!   CI.

mod support;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use icu_sim::physiology::Vitals;
use icu_sim::waveform::{GapPlan, SentSegment, WaveformMonitor};
use icu_tests::ChildGuard;
use support::{config_text, GatewayProc, Sender, SPO2_LOW_ALARM};

const VITALS: Vitals = Vitals {
    heart_rate: 75.0,
    spo2: 97.0,
    resp_rate: 14.0,
    temp_c: 37.0,
    nibp_sys: 120.0,
    nibp_dia: 80.0,
};

/// A gateway for one simulated bed, with an SpO2 low limit (alarms within seconds).
fn gateway(dir: &Path) -> GatewayProc {
    support::keygen(dir);
    let cfg = config_text(dir, 1, None, "");
    let cfg = cfg.replacen("[[beds]]", &format!("{SPO2_LOW_ALARM}\n[[beds]]"), 1);
    GatewayProc::start(dir, &cfg)
}

/// Sends the monitor's next segment (one message per channel group); each must be accepted.
fn send_segment(feed: &mut Sender, monitor: &mut WaveformMonitor) -> Vec<SentSegment> {
    let mut sent = Vec::new();
    for (msg, segs) in monitor.next_messages(&VITALS) {
        let ack = feed.send(&msg);
        assert!(ack.contains("MSA|AA"), "waveform message refused: {ack}");
        sent.extend(segs);
    }
    sent
}

/// The `data:` of each server-sent event read from a chunked HTTP answer, as JSON, on `tx`.
fn read_events(mut s: std::net::TcpStream, tx: mpsc::Sender<serde_json::Value>) {
    let mut raw = Vec::new();
    let mut body = Vec::new();
    let mut head_done = false;
    let mut buf = [0u8; 16384];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            raw.drain(..end + 4);
            head_done = true;
        }
        // De-chunk what is complete.
        while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
                .expect("chunk size");
            if raw.len() < eol + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
            raw.drain(..eol + 2 + size + 2);
        }
        while let Some(end) = body.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = body.drain(..end + 2).collect();
            let text = String::from_utf8(event).unwrap();
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                if tx.send(serde_json::from_str(data).unwrap()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Opens the bed's curve stream as the test physician; its frames arrive on the receiver.
fn open_stream(addr: SocketAddr, bed: &str) -> mpsc::Receiver<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = icu_tests::http::auth_header_lines(addr);
    write!(
        s,
        "GET /api/beds/{bed}/waves HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n"
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || read_events(s, tx));
    rx
}

/// Every position of a segment of a frame or snippet: its integer, or `None` in a gap.
fn positions(seg: &serde_json::Value) -> Vec<Option<i32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(seg["d"].as_str().unwrap())
        .unwrap();
    let present: Vec<i32> = match seg["f"].as_str().unwrap() {
        "i16" => bytes
            .chunks(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        "i32" => bytes
            .chunks(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        f => panic!("unknown sample format {f}"),
    };
    let n = seg["n"].as_u64().unwrap() as usize;
    let mut out = vec![Some(0); n];
    for g in seg["gaps"].as_array().unwrap() {
        let (start, count) = (
            g[0].as_u64().unwrap() as usize,
            g[1].as_u64().unwrap() as usize,
        );
        for p in &mut out[start..start + count] {
            *p = None;
        }
    }
    let mut it = present.into_iter();
    for p in out.iter_mut().filter(|p| p.is_some()) {
        *p = Some(it.next().expect("fewer samples than present positions"));
    }
    assert!(it.next().is_none(), "more samples than present positions");
    out
}

/// Per MDC code: (first-sample time, positions) of each segment, in time order.
type Curves = BTreeMap<u64, Vec<(i64, Vec<Option<i32>>)>>;

/// Adds the segments of a frame or snippet answer to `curves`.
fn collect(answer: &serde_json::Value, codes: &mut BTreeMap<u64, u64>, curves: &mut Curves) {
    for ch in answer["channels"].as_array().unwrap() {
        codes.insert(ch["c"].as_u64().unwrap(), ch["code"].as_u64().unwrap());
    }
    for seg in answer["segs"].as_array().unwrap() {
        let code = codes[&seg["c"].as_u64().unwrap()];
        let list = curves.entry(code).or_default();
        list.push((seg["t0"].as_i64().unwrap(), positions(seg)));
        list.sort_by_key(|(t, _)| *t);
    }
}

fn sent_curves(sent: &[SentSegment]) -> Curves {
    let mut out = Curves::new();
    for s in sent {
        out.entry(u64::from(s.mdc_code))
            .or_default()
            .push((s.first_sample_time_us, s.samples.clone()));
    }
    out
}

#[test]
fn the_curve_stream_refuses_anonymous_callers_and_gives_every_sample_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let addr = gw.endpoints.http;

    for path in [
        "/api/beds/bed-01/waves",
        "/api/beds/bed-01/alarms/a-1/snippet?start_us=0",
    ] {
        let anon = icu_tests::http::request(addr, "GET", path, &[], None).unwrap();
        assert_eq!(anon.status, 401, "{path} without a login: {}", anon.head);
    }
    let unknown = icu_tests::http::authed(addr, "GET", "/api/beds/bed-99/waves", None).unwrap();
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // The stream first, then the curves: what it delivers is what arrived live.
    let frames = open_stream(addr, "bed-01");
    let first = frames
        .recv_timeout(Duration::from_secs(10))
        .expect("a first frame");
    assert_eq!(first["segs"].as_array().unwrap().len(), 0, "{first}");

    let bed = icu_sim::beds(1).remove(0);
    let start = chrono::Utc::now() - chrono::Duration::seconds(3);
    let mut monitor = WaveformMonitor::new(bed, 19, start);
    monitor.gaps = GapPlan {
        every: 150,
        length: 7,
    };
    let mut feed = Sender::connect(gw.endpoints.mllp);
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.extend(send_segment(&mut feed, &mut monitor));
    }
    let want = sent_curves(&sent);
    assert!(
        want.values()
            .flatten()
            .any(|(_, s)| s.iter().any(Option::is_none)),
        "the monitor dropped samples"
    );

    let mut codes = BTreeMap::new();
    let mut got = Curves::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let complete = |got: &Curves| {
        want.iter()
            .all(|(code, segs)| got.get(code).is_some_and(|g| g.len() >= segs.len()))
    };
    while !complete(&got) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = frames
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("frames stopped before every segment came ({e}): {got:?}"));
        assert_eq!(frame["dropped"], 0, "{frame}");
        collect(&frame, &mut codes, &mut got);
    }
    assert_eq!(
        got, want,
        "the stream's samples, times and gaps are exactly what was sent"
    );
    let ecg = got[&131_330].iter().map(|(_, s)| s.len()).sum::<usize>();
    eprintln!(
        "curve stream: {} channels, {ecg} ECG II positions, bit-exact with gaps",
        got.len()
    );

    // An alarm's snippet before it is built: cut from the ring, said so, the same samples.
    let alarm_start = start.timestamp_micros() + 1_000_000;
    let snippet = support::http_get_json(
        addr,
        &format!("/api/beds/bed-01/alarms/a-1/snippet?start_us={alarm_start}"),
    )
    .unwrap();
    assert_eq!(snippet["state"], "collecting", "{snippet}");
    assert!(
        snippet["message"]
            .as_str()
            .unwrap()
            .contains("not built yet"),
        "{snippet}"
    );
    let mut cut = Curves::new();
    collect(&snippet, &mut BTreeMap::new(), &mut cut);
    assert_eq!(cut, want, "the snippet holds the same samples");

    // Opening the stream was audited as a read of patient data.
    let audited = gw.audit_entries().into_iter().any(|e| {
        e["action"] == "patient_read" && e.to_string().contains("live curves of bed bed-01")
    });
    assert!(audited, "no audited read of the curves");
}

#[test]
fn headless_chromium_draws_the_bed_s_curves_and_they_move() {
    let Some(python) = icu_tests::browser_python("e2e_waves (browser)") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path());
    let screenshot = icu_tests::workspace_root()
        .join("test-artifacts")
        .join("bed-waves.png");
    let _ = std::fs::remove_file(&screenshot);

    // The monitor sends in real time (one 800 ms segment per 800 ms) until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let mllp = gw.endpoints.mllp;
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut monitor =
                WaveformMonitor::new(icu_sim::beds(1).remove(0), 7, chrono::Utc::now());
            monitor.gaps = GapPlan {
                every: 1000,
                length: 40,
            };
            let mut feed = Sender::connect(mllp);
            let t0 = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) && n < 150 {
                send_segment(&mut feed, &mut monitor);
                n += 1;
                // Pacing a real-time source, not synchronisation.
                let next = t0 + Duration::from_millis(800) * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            n
        })
    };

    // A desaturation on the same bed: an SpO2 alarm whose snippet the page shows when clicked.
    let mut numerics = Sender::connect(mllp);
    let now = chrono::Utc::now();
    for (i, spo2) in [84, 83, 82, 82].into_iter().enumerate() {
        let at = now - chrono::Duration::seconds(3 - i as i64);
        let ack = numerics.send(&icu_tests::mllp::spo2_message(
            1,
            &format!("D{i}"),
            spo2,
            at,
        ));
        assert!(ack.contains("MSA|AA"), "{ack}");
    }
    icu_tests::wait_for(Duration::from_secs(10), "the SpO2 alarm", || {
        let active = gw.get_json("/api/alarms")["active"].clone();
        (!active.as_array()?.is_empty()).then_some(())
    })
    .unwrap();

    let url = format!("http://{}/", gw.endpoints.http);
    let mut cmd = Command::new(&python);
    cmd.arg(icu_tests::script("wave_page_test.py"))
        .arg(&url)
        .arg("bed-01")
        .arg(&screenshot)
        .args(["--account", "nurse.test"])
        .args(["--password", icu_tests::http::TEST_PASSWORD])
        .arg("--snippet")
        .env("PYTHONUNBUFFERED", "1");
    let mut page = ChildGuard::spawn_tied(&cmd, Stdio::piped(), Stdio::piped()).unwrap();
    let mut out = String::new();
    let mut err = String::new();
    let mut stdout = page.stdout.take().unwrap();
    let mut stderr = page.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let _ = stdout.read_to_string(&mut out);
    let status = page.wait().unwrap();
    let err = err_reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let segments = feeder.join().expect("the monitor thread");
    eprintln!("wave_page_test.py:\n{out}{err}monitor sent {segments} segments");
    assert!(status.success(), "wave_page_test.py failed: {err}");

    let line = |word: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(word))
            .unwrap_or_else(|| panic!("no {word} line in:\n{out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let channels = line("CHANNELS");
    assert_eq!(
        channels[1], "5",
        "three ECG leads, pleth and ABP: {channels:?}"
    );
    let curve = line("CURVE");
    assert_eq!(curve[1], "131330", "the ECG II canvas: {curve:?}");
    let lit: usize = curve[2].parse().unwrap();
    assert!(
        lit > 200,
        "the ECG II canvas has a curve drawn ({lit} pixels)"
    );
    assert_eq!(curve[3], "true", "its pixels change over time: {curve:?}");
    // The alarm's curves around its start, cut from memory while the window is still open.
    let snippet = line("SNIPPET");
    assert!(
        ["collecting", "partial", "built"].contains(&snippet[1].as_str()),
        "{snippet:?}"
    );
    let drawn: usize = snippet[3].parse().unwrap();
    assert!(drawn > 1000, "the snippet's curves are drawn: {snippet:?}");
    assert!(
        snippet.len() > 4,
        "the page says what it shows: {snippet:?}"
    );
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the screenshot is a PNG");
    eprintln!("screenshot: {}", screenshot.display());
}
