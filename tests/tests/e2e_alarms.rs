//! Local alarms with the network down: a desaturation raises the SpO2 alarm on the gateway's API
//! (the page's source) and in the store while Kafka is unreachable; when the broker returns the
//! alarm records reach `icu.alarms`. A clinician's per-bed limit applies to the next reading,
//! is recorded (who, old, new) and survives a restart.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::signing::load_public_key;
use icu_tests::{wait_for, Broker, TOPICS};
use support::{config_text, keygen, mqtt_alarms, run_sim_with, GatewayProc, SPO2_LOW_ALARM};

/// The harness's SpO2 low limit (short sustain, so the test does not wait 15 s of event time)
/// plus a heart-rate rule with bedside ranges; everything else default.
const HR_RULE: &str = r#"
[[alarms.limits]]
id = "hr"
label = "HR"
mdc_codes = [147842]
low = 50.0
high = 120.0
low_range = [30.0, 100.0]
high_range = [40.0, 200.0]
priority = "medium"
sustain_s = 0
hysteresis = 2.0
"#;

fn with_alarms(cfg: String) -> String {
    // The [alarms] tables must come before the [[beds]] arrays of the generated config.
    cfg.replacen(
        "[[beds]]",
        &format!("{SPO2_LOW_ALARM}{HR_RULE}\n[[beds]]"),
        1,
    )
}

fn active(gw: &GatewayProc) -> Vec<serde_json::Value> {
    gw.get_json("/api/alarms")["active"]
        .as_array()
        .unwrap()
        .clone()
}

/// Starts a gateway from `cfg` with `outputs` (TOML sections) inserted before its beds, and
/// waits until its MQTT subscription is in place.
fn start_with_outputs(dir: &std::path::Path, cfg: String, outputs: &str) -> GatewayProc {
    let cfg = cfg.replacen("[[beds]]", &format!("{outputs}\n[[beds]]"), 1);
    let gw = GatewayProc::start(dir, &cfg);
    wait_for(Duration::from_secs(20), "mqtt subscription", || {
        (gw.get_json("/api/status")["mqtt"]["subscribed"].as_u64() >= Some(1)).then_some(())
    })
    .unwrap();
    gw
}

/// A test alarm manager: an MLLP listener that answers AA and keeps every message.
fn alarm_manager() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = s.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(2).position(|w| w == [0x1C, 0x0D]) {
                    let frame: Vec<u8> = buf.drain(..end + 2).collect();
                    let start = frame.iter().position(|b| *b == 0x0B).unwrap_or(0);
                    let msg =
                        String::from_utf8_lossy(&frame[start + 1..frame.len() - 2]).into_owned();
                    let control = msg.split('|').nth(9).unwrap_or("").to_owned();
                    keep.lock().unwrap().push(msg);
                    let ack = format!(
                        "MSH|^~\\&|AM|HOSP|ICU_GW|ICU|20250101000000||ACK^R40^ACK|A1|P|2.6\rMSA|AA|{control}"
                    );
                    let _ = s.write_all(&icu_drivers::mllp::encode_frame(ack.as_bytes()));
                }
            }
        }
    });
    (addr, got)
}

#[test]
fn desaturation_alarms_with_kafka_down_and_reaches_icu_alarms_later() {
    let port = icu_tests::free_port();
    let kafka = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let mosquitto = icu_tests::mosquitto::Mosquitto::start().expect("mosquitto");
    // An alarm manager is configured but unreachable: that output retries on its own and
    // delays nothing else.
    let am_addr = format!("127.0.0.1:{}", icu_tests::free_port());
    let nurse_call = mqtt_alarms(mosquitto.port);
    let outputs = format!(
        "\n[mqtt]\nbroker_port = {}\n\n[alarm_manager]\nmllp = \"{am_addr}\"\n",
        mosquitto.port
    );
    let gw = start_with_outputs(
        dir.path(),
        with_alarms(config_text(dir.path(), 2, Some(&kafka), "")),
        &outputs,
    );

    let m = dir.path().join("m.jsonl");
    let run = run_sim_with(
        gw.endpoints.mllp,
        2,
        24,
        2.0,
        &m,
        &["--scenario", "desaturation:1:0"],
    );
    assert!(run.ok, "{}", run.stdout);
    let alarm = wait_for(Duration::from_secs(20), "the SpO2 alarm", || {
        active(&gw)
            .into_iter()
            .find(|a| a["source"] == "limit:spo2")
    })
    .unwrap();
    assert_eq!(alarm["bed"], "bed-01");
    assert_eq!(alarm["priority"], "PM");
    assert!(alarm["text"].as_str().unwrap().contains("SpO2"), "{alarm}");
    // On the bed card (the page reads /api/beds).
    let beds = gw.get_json("/api/beds");
    assert!(beds["beds"][0]["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["alarm_id"] == alarm["alarm_id"]));
    assert!(beds["beds"][1]["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["source"] != "limit:spo2"));
    // In the store, while Kafka is down.
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let stored: i64 = c
        .query_row(
            "SELECT COUNT(*) FROM records WHERE kind = 2 AND sent = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored >= 1, "alarm records wait in the outbox");

    // On the MQTT alarm topic for nurse call (the broker is local, not the backbone).
    wait_for(
        Duration::from_secs(10),
        "the alarm on the MQTT alarm topic",
        || {
            let got = nurse_call.lock().unwrap();
            got.iter()
                .find(|m| m.starts_with("icu/test-gw/alarms/bed-01 ") && m.contains("limit:spo2"))
                .cloned()
        },
    )
    .unwrap();
    // Acknowledge it through the API (what the page's button does).
    let id = alarm["alarm_id"].as_str().unwrap().to_owned();
    let ack = support::http_post_json(
        gw.endpoints.http,
        &format!("/api/alarms/bed-01/{id}/ack"),
        r#"{"who": "nurse.test"}"#,
    )
    .unwrap();
    assert_eq!(ack["ok"], true);

    // The broker returns: the alarm state changes reach icu.alarms, signed.
    let broker = Broker::start_on(port).expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let recs = wait_for(
        Duration::from_secs(60),
        "alarm records on icu.alarms",
        || {
            let (r, recs) = consume(&ConsumeOptions {
                brokers: broker.addr.clone(),
                topic: "icu.alarms".into(),
                public_key: Some(key),
                idle_timeout: Duration::from_millis(300),
                max_wait: Duration::from_secs(20),
            })
            .ok()?;
            (r.records as i64 > stored && r.signatures_bad == 0).then_some(recs)
        },
    )
    .unwrap();
    let texts: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&id) && t.contains("\"start\"")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains(&id) && t.contains("\"acknowledged\"")),
        "{texts:?}"
    );
    // It names who acknowledged: the logged-in account, not the body's `who`.
    assert!(
        texts.iter().any(|t| t.contains(&id)
            && t.contains("\"acknowledged\"")
            && t.contains("acknowledged-by\",\"valueString\":\"dr.test\"")),
        "{texts:?}"
    );
}

#[test]
fn a_clinician_limit_applies_at_once_is_audited_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = GatewayProc::start(
        dir.path(),
        &with_alarms(config_text(dir.path(), 1, None, "")),
    );
    let m = dir.path().join("m.jsonl");
    let run = run_sim_with(gw.endpoints.mllp, 1, 3, 10.0, &m, &["--seed", "5"]);
    assert!(run.ok);
    assert!(
        active(&gw).iter().all(|a| a["source"] != "limit:hr"),
        "no HR alarm at default limits"
    );

    // A high limit below the patient's heart rate: the next reading alarms.
    let change = support::http_put_json(
        gw.endpoints.http,
        "/api/beds/bed-01/limits/147842",
        r#"{"low": 40, "high": 45, "who": "dr.test"}"#,
    )
    .unwrap();
    assert_eq!(change["who"], "dr.test");
    assert_eq!(
        (change["old_low"].clone(), change["new_high"].as_f64()),
        (serde_json::Value::Null, Some(45.0))
    );
    let run = run_sim_with(gw.endpoints.mllp, 1, 1, 10.0, &m, &["--seed", "6"]);
    assert!(run.ok);
    wait_for(
        Duration::from_secs(10),
        "HR alarm after the limit change",
        || active(&gw).into_iter().find(|a| a["source"] == "limit:hr"),
    )
    .unwrap();

    // Restart: the override is still in force, and the change is on record.
    gw.stop();
    let gw = GatewayProc::start(
        dir.path(),
        &with_alarms(config_text(dir.path(), 1, None, "")),
    );
    let limits = gw.get_json("/api/beds/bed-01/limits/147842");
    assert_eq!(
        (limits["low"].as_f64(), limits["high"].as_f64()),
        (Some(40.0), Some(45.0))
    );
    let changes = gw.get_json("/api/limit-changes");
    assert_eq!(changes[0]["who"], "dr.test");
    assert_eq!(changes[0]["new_high"].as_f64(), Some(45.0));
}

#[test]
fn pcd04_reaches_the_alarm_manager_with_the_seven_attribute_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (am_addr, pcd04) = alarm_manager();
    let cfg = with_alarms(config_text(dir.path(), 1, None, "")).replacen(
        "[[beds]]",
        &format!("\n[alarm_manager]\nmllp = \"{am_addr}\"\n\n[[beds]]"),
        1,
    );
    let gw = GatewayProc::start(dir.path(), &cfg);
    let m = dir.path().join("m.jsonl");
    let run = run_sim_with(
        gw.endpoints.mllp,
        1,
        24,
        2.0,
        &m,
        &["--scenario", "desaturation:1:0"],
    );
    assert!(run.ok, "{}", run.stdout);
    // The alarm manager as IHE PCD-04: the seven alert attribute rows in order.
    let msg = wait_for(Duration::from_secs(10), "a PCD-04 message", || {
        pcd04
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.contains("ORU^R40"))
            .cloned()
    })
    .unwrap();
    let obx: Vec<Vec<&str>> = msg
        .split('\r')
        .filter(|s| s.starts_with("OBX|"))
        .map(|s| s.split('|').collect())
        .collect();
    let attrs = &obx[obx.len() - 7..];
    for (i, row) in attrs.iter().enumerate() {
        assert!(
            row[4].ends_with(&format!(".{}", i + 1)),
            "sub-id of row {i}: {}",
            row[4]
        );
        assert_eq!(row[11], "R", "OBX-11 of row {i}");
    }
    assert!(
        attrs[1][3].starts_with("150456^"),
        "the source is the SpO2 metric: {:?}",
        attrs[1]
    );
    let codes: Vec<&str> = attrs[2..]
        .iter()
        .map(|r| r[3].split('^').next().unwrap())
        .collect();
    assert_eq!(codes, ["68481", "68482", "68483", "68484", "68485"]);
    assert_eq!(attrs[2][5], "start");
    assert_eq!(attrs[5][5], "PM");
    assert_eq!(attrs[6][5], "SP");
}

/// One alarm record as the MQTT alarm topic carries it.
#[derive(Debug, Clone)]
struct Rec {
    alarm_id: String,
    phase: String,
    state: String,
    priority: String,
    event_time_us: i64,
}

fn mqtt_records(got: &[String]) -> Vec<Rec> {
    got.iter()
        .filter_map(|m| {
            let (_, json) = m.split_once(' ')?;
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some(Rec {
                alarm_id: v["alarm_id"].as_str()?.to_owned(),
                phase: v["phase"].as_str()?.to_owned(),
                state: v["state"].as_str()?.to_owned(),
                priority: v["priority"].as_str()?.to_owned(),
                event_time_us: v["event_time_us"].as_i64()?,
            })
        })
        .collect()
}

#[test]
fn a_sick_unit_sends_alarm_updates_at_most_once_per_refresh_interval_on_every_output() {
    const BEDS: usize = 4;
    const REFRESH_S: i64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = icu_tests::mosquitto::Mosquitto::start().expect("mosquitto");
    let nurse_call = mqtt_alarms(mosquitto.port);
    let (am_addr, pcd04) = alarm_manager();
    // The default rules (limits, rates, NEWS2), with a short refresh and hold for the test.
    let outputs = format!(
        "\n[alarms]\nrefresh_s = {REFRESH_S}\ndeescalate_after_s = {REFRESH_S}\n\n[mqtt]\nbroker_port = {}\n\n[alarm_manager]\nmllp = \"{am_addr}\"\n",
        mosquitto.port
    );
    let gw = start_with_outputs(
        dir.path(),
        config_text(dir.path(), BEDS, None, ""),
        &outputs,
    );
    // Every bed deteriorates (NEWS2 rising past 5 and 7, limits crossed) at 4 messages/s for
    // 30 s: 480 messages of 7 vital signs, each changing the values.
    let run = run_sim_with(
        gw.endpoints.mllp,
        BEDS,
        120,
        4.0,
        &dir.path().join("m.jsonl"),
        &["--scenario", "deterioration:0"],
    );
    assert!(run.ok, "{}", run.stdout);
    // Let the last refresh interval pass, then compare the outputs.
    std::thread::sleep(Duration::from_secs(REFRESH_S as u64 + 2));
    let records = wait_for(Duration::from_secs(20), "both outputs settled", || {
        let mqtt = mqtt_records(&nurse_call.lock().unwrap());
        let pcd = pcd04
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("ORU^R40"))
            .count();
        (!mqtt.is_empty() && pcd == mqtt.len()).then_some(mqtt)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: mqtt {} records, pcd-04 {} messages",
            mqtt_records(&nurse_call.lock().unwrap()).len(),
            pcd04.lock().unwrap().len()
        )
    });
    let beds_in_alarm: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|r| r.alarm_id.contains(":news2:"))
        .map(|r| r.alarm_id.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(beds_in_alarm.len(), BEDS, "every bed has its NEWS2 alarm");

    // Per alarm, a plain value refresh (update, active, priority unchanged) comes at least
    // refresh_s after the record before it; everything else (start, escalate, end, latch) may
    // come at once.
    let mut by_alarm: BTreeMap<String, Vec<Rec>> = BTreeMap::new();
    for r in &records {
        by_alarm
            .entry(r.alarm_id.clone())
            .or_default()
            .push(r.clone());
    }
    let mut updates = 0;
    for (id, recs) in &by_alarm {
        for pair in recs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if b.phase == "update" && b.state == "active" && a.state == "active" {
                assert_eq!(a.priority, b.priority, "{id}: {recs:?}");
                updates += 1;
                assert!(
                    b.event_time_us - a.event_time_us >= (REFRESH_S - 1) * 1_000_000,
                    "{id}: a refresh {} ms after the record before: {recs:?}",
                    (b.event_time_us - a.event_time_us) / 1000
                );
            }
        }
        let escalations = recs.iter().filter(|r| r.phase == "escalate").count();
        let deescalations = recs.iter().filter(|r| r.phase == "deescalate").count();
        assert!(
            deescalations <= escalations,
            "{id}: no escalate/deescalate flapping: {recs:?}"
        );
    }
    assert!(updates > 0, "values changed, so refreshes were sent");
    // 120 messages a bed, several alarms a bed: a record per reading would be hundreds.
    let per_bed = records.len() / BEDS;
    assert!(
        per_bed <= 40,
        "{per_bed} records per bed: {:?}",
        by_alarm.keys().collect::<Vec<_>>()
    );
    eprintln!(
        "{} alarm records ({} refreshes) for {} messages; per alarm: {:?}",
        records.len(),
        updates,
        BEDS * 120,
        by_alarm
            .iter()
            .map(|(id, r)| (id.clone(), r.len()))
            .collect::<Vec<_>>()
    );
}
