//! The central station in a real browser (issue 17): headless Chromium, driven by selenium from
//! `scripts/station_test.py`, against a real gateway fed by `icu-sim` and an ADT feed: the
//! admitted patient's name on the bed's tile; a desaturation that makes the tile flash with
//! the alarm's colour and puts the alarm first in the alarm bar; the audio state the page
//! reports; an Acknowledge button that is the same element across refreshes and works; and,
//! when the gateway stops, NO DATA on every tile within 5 s. The device console shows a reading
//! the gateway refused (its dead letter with the raw bytes, and its AE among the device's last
//! messages); the bed view draws the last hour's trends and the alarm history. Screenshots go to
//! `test-artifacts/` (station, devices, bed, station-no-data).
//!
//! Needs `ICU_PYTHON` (with selenium), `/usr/bin/chromium` and `/usr/bin/chromedriver`
//! (`scripts/test` installs them); skipped without them except under CI.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use icu_tests::ChildGuard;
use support::{config_text, run_sim_with, GatewayProc, Sender, SPO2_LOW_ALARM};

/// The value of the reading the decoder refuses, found again in the device console.
const MARKER: &str = "STATION-MARKER-not-a-number";

/// An ADT^A01 admitting JOHN DOE (MRN 123456) to `loc`.
fn admit(loc: &str) -> String {
    let ts = chrono::Utc::now().format("%Y%m%d%H%M%S+0000");
    [
        format!("MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|{ts}||ADT^A01^ADT_A01|ADT1|P|2.5"),
        format!("EVN||{ts}"),
        "PID|1||123456^^^HOSP^MR||DOE^JOHN^Q^^^^L||19600101|M".to_string(),
        format!("PV1|1|I|{loc}|||||||||||||||||V0001^^^HOSP^VN"),
    ]
    .join("\r")
}

#[test]
fn the_station_shows_the_patient_flashes_the_alarm_keeps_the_button_and_blanks_on_loss() {
    let Some(python) = icu_tests::browser_python("e2e_station") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    support::keygen(dir.path());
    let cfg = config_text(dir.path(), 2, None, "")
        .replacen("[[beds]]", &format!("{SPO2_LOW_ALARM}\n[[beds]]"), 1)
        .replace(
            "id = \"bed-01\"\n",
            "id = \"bed-01\"\nadt_location = \"ICU1^101^A\"\n",
        );
    let mut gw = GatewayProc::start(dir.path(), &cfg);
    let artifacts = icu_tests::workspace_root().join("test-artifacts");
    for name in [
        "station.png",
        "devices.png",
        "bed.png",
        "station-no-data.png",
    ] {
        let _ = std::fs::remove_file(artifacts.join(name));
    }

    // The patient is admitted before the page opens; mon-01 sends a reading the decoder
    // refuses (a non-numeric NM value), which the device console must show.
    let mut feed = Sender::connect(gw.endpoints.mllp);
    let ack = feed.send(&admit("ICU1^101^A"));
    assert!(ack.contains("MSA|AA"), "{ack}");
    let ts = chrono::Utc::now().format("%Y%m%d%H%M%S+0000");
    let bad = [
        format!("MSH|^~\\&|MON^0012AB0000000001^EUI-64|ICU|ICU_GW|ICU|{ts}||ORU^R01^ORU_R01|BAD-STATION-1|P|2.6"),
        "PID|1||123456^^^HOSP^MR".to_owned(),
        format!("OBR|1|||182777000^monitoring of patient^SNOMED-CT|||{ts}"),
        format!("OBX|1|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|{MARKER}|262688^MDC_DIM_PERCENT^MDC|||||R|||{ts}"),
    ]
    .join("\r");
    let mut monitor = Sender::connect(gw.endpoints.mllp);
    let ack = monitor.send(&bad);
    assert!(ack.contains("MSA|AE"), "the refused reading: {ack}");

    let url = format!("http://127.0.0.1:{}/", gw.endpoints.http.port());
    let mut cmd = Command::new(&python);
    cmd.arg(icu_tests::script("station_test.py"))
        .arg(&url)
        .arg(&artifacts)
        .args(["--account", "nurse.test"])
        .args(["--password", icu_tests::http::TEST_PASSWORD])
        .args(["--patient", "DOE, JOHN", "--timeout", "60"])
        .args(["--dead-letter-marker", MARKER])
        .args(["--bed-view", "bed-01"])
        .env("PYTHONUNBUFFERED", "1");
    let mut page = ChildGuard::spawn_tied(&cmd, Stdio::piped(), Stdio::piped())
        .expect("starting scripts/station_test.py");
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = page.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("station_test.py: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = page.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let next = |prefix: &str, within: Duration| -> String {
        let deadline = Instant::now() + within;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("station_test.py: no `{prefix}` line within {within:?} ({e})"),
            }
        }
    };

    next("LOGGED_IN", Duration::from_secs(60));
    // The desaturation on bed-01 (SpO2 below the 90 % limit for 2 s: a medium alarm), 2 Hz.
    let mllp = gw.endpoints.mllp;
    let manifest = dir.path().join("m.jsonl");
    let _sim = std::thread::spawn(move || {
        run_sim_with(
            mllp,
            2,
            40,
            2.0,
            &manifest,
            &["--scenario", "desaturation:1:0"],
        )
    });
    let patient = next("PATIENT", Duration::from_secs(30));
    assert_eq!(patient, "PATIENT bed-01");
    let audio = next("AUDIO", Duration::from_secs(30));
    assert!(
        audio == "AUDIO on" || audio == "AUDIO paused",
        "the page reports its audio state: {audio}"
    );
    let alarm = next("ALARM", Duration::from_secs(60));
    assert!(alarm.contains(" PM "), "a medium SpO2 alarm: {alarm}");
    let alarm_id = alarm.split_whitespace().nth(1).unwrap().to_owned();
    next("ACKED", Duration::from_secs(30));
    let acked = gw.get_json("/api/alarms")["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["alarm_id"] == alarm_id.as_str())
        .cloned();
    if let Some(a) = acked {
        assert_eq!(a["acknowledged_by"], "nurse.test", "{a}");
    }
    next("SCREENSHOT", Duration::from_secs(10));
    let dead = next("DEAD_LETTER", Duration::from_secs(30));
    assert!(dead.ends_with(" mon-01"), "attributed to mon-01: {dead}");
    next("MESSAGES mon-01", Duration::from_secs(30));
    next("SCREENSHOT", Duration::from_secs(10));
    // The bed view draws the last hour's trends from the store's rollup.
    let view = next("BED_VIEW", Duration::from_secs(60));
    let series: usize = view.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(series >= 5, "a trend per parameter of the monitor: {view}");
    next("SCREENSHOT", Duration::from_secs(10));
    next("READY_TO_STOP", Duration::from_secs(30));
    let stopped = Instant::now();
    gw.kill();
    let no_data = next("NO_DATA", Duration::from_secs(20));
    let ms: u64 = no_data.split_whitespace().nth(1).unwrap().parse().unwrap();
    eprintln!(
        "NO DATA on every tile {ms} ms after the page was told, {:?} after the kill",
        stopped.elapsed()
    );
    assert!(ms <= 5000, "NO DATA within 5 s: {ms} ms");
    // Every line is a check that passed; the last one is the second screenshot. (The script's
    // exit status is not used: chromedriver's shutdown signals its process group.)
    next("SCREENSHOT", Duration::from_secs(10));
    drop(page);
    let _ = errors.join();
    for name in [
        "station.png",
        "devices.png",
        "bed.png",
        "station-no-data.png",
    ] {
        let meta = std::fs::metadata(artifacts.join(name)).unwrap();
        assert!(meta.len() > 1000, "{name} is a screenshot");
    }
}
