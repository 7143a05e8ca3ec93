//! Disk full, end to end, through real parts: `icu-sim` (PCD-01 over MLLP) → `icu-gateway`
//! with a 2 MiB disk budget → a real Kafka-protocol broker (tansu) that is down at first.
//!
//! With the broker down nothing can be forwarded, so nothing can be pruned: the store fills to
//! its budget and, under the default `on_full = "refuse"`, answers AR from then on. While it is
//! full the gateway raises its `gateway:store-budget` technical alarm, and the alarm path keeps
//! working: a desaturation still raises the SpO2 alarm on `/api/alarms`, on the page's event
//! stream and on the MQTT alarm topic, and its state changes are still stored (alarm reserve).
//! When the broker returns, every reading acknowledged AA before the budget was hit reaches
//! `icu.observations` (per device, seqs 1..=n, exactly the values sent), the forwarded records
//! are pruned, the technical alarm clears and readings are accepted again.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions, ConsumeReport, ConsumedRecord};
use icu_cloud_bridge::fhir::observations_of;
use icu_cloud_bridge::signing::load_public_key;
use icu_sim::pcd01::SentObservation;
use icu_tests::{wait_for, Broker, TOPICS};
use support::{
    config_text, keygen, mqtt_alarms, run_sim, run_sim_with, GatewayProc, SPO2_LOW_ALARM,
};

const BEDS: usize = 2;

fn active(gw: &GatewayProc) -> Vec<serde_json::Value> {
    gw.get_json("/api/alarms")["active"]
        .as_array()
        .unwrap()
        .clone()
}

fn budget(gw: &GatewayProc) -> serde_json::Value {
    gw.get_json("/api/status")["store_writes"]["budget"].clone()
}

/// Every line of the page's event stream (`/api/events`), read on a thread of its own.
fn page_events(http: std::net::SocketAddr) -> Arc<Mutex<Vec<String>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = got.clone();
    let mut s = std::net::TcpStream::connect(http).unwrap();
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {http}\r\n{}Accept: text/event-stream\r\n\r\n",
        icu_tests::http::auth_header_lines(http)
    )
    .unwrap();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(s);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            keep.lock().unwrap().push(line);
        }
    });
    got
}

fn read_observations(
    broker: &str,
    key: &ed25519_dalek::VerifyingKey,
) -> (ConsumeReport, Vec<ConsumedRecord>) {
    consume(&ConsumeOptions {
        brokers: broker.to_owned(),
        topic: "icu.observations".to_owned(),
        public_key: Some(*key),
        idle_timeout: Duration::from_millis(500),
        max_wait: Duration::from_secs(20),
    })
    .expect("consuming icu.observations")
}

/// Every acknowledged observation is on the topic once, per device at seqs 1..=n in the order
/// it was sent, with its value, and every record verifies.
fn assert_every_acknowledged_reading_arrived(
    report: &ConsumeReport,
    records: &[ConsumedRecord],
    accepted: &[SentObservation],
) {
    assert_eq!(report.signatures_bad, 0, "bad signatures: {report:?}");
    assert_eq!(report.unparseable, 0);
    let mut sent: BTreeMap<&str, Vec<&SentObservation>> = BTreeMap::new();
    for o in accepted {
        sent.entry(o.device_id.as_str()).or_default().push(o);
    }
    let mut got: BTreeMap<String, BTreeMap<u64, icu_cloud_bridge::fhir::ParsedObservation>> =
        BTreeMap::new();
    for r in records {
        let device = r.device_id.clone().expect("icu-device-id header");
        for o in observations_of(&r.value).expect("value parses as a FHIR Bundle") {
            got.entry(device.clone()).or_default().insert(o.seq, o);
        }
    }
    assert_eq!(got.len(), sent.len(), "devices on the topic");
    for (device, sent) in sent {
        let got = &got[device];
        let d = &report.devices[device];
        assert!(d.gaps.is_empty(), "{device}: gaps {:?}", d.gaps);
        assert_eq!(
            got.len(),
            sent.len(),
            "{device}: every acknowledged reading"
        );
        for (i, ((seq, o), s)) in got.iter().zip(sent).enumerate() {
            assert_eq!(*seq, i as u64 + 1, "{device}: seqs are 1..=n");
            assert_eq!(o.mdc_code, s.mdc_code, "{device} seq {seq}: code");
            assert_eq!(o.value, Some(s.value), "{device} seq {seq}: value");
        }
    }
}

#[test]
fn disk_full_keeps_every_acknowledged_reading_and_the_alarm_path() {
    // The backbone is down at first: its address is reserved, the broker starts later.
    let port = icu_tests::free_port();
    let kafka = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let mosquitto = icu_tests::mosquitto::Mosquitto::start().expect("mosquitto");
    let nurse_call = mqtt_alarms(mosquitto.port);
    let cfg = config_text(dir.path(), BEDS, Some(&kafka), "disk_budget_mb = 2").replacen(
        "[[beds]]",
        &format!(
            "{SPO2_LOW_ALARM}\n[mqtt]\nbroker_port = {}\n\n[[beds]]",
            mosquitto.port
        ),
        1,
    );
    let gw = GatewayProc::start(dir.path(), &cfg);
    wait_for(Duration::from_secs(20), "mqtt subscription", || {
        (gw.get_json("/api/status")["mqtt"]["subscribed"].as_u64() >= Some(1)).then_some(())
    })
    .unwrap();
    let events = page_events(gw.endpoints.http);
    let b = budget(&gw);
    assert_eq!(b["budget_bytes"], 2 << 20, "{b}");
    assert_eq!(b["full"], false, "{b}");

    // Fill the store until the budget refuses readings (AR), keeping what was acknowledged.
    let mut accepted: Vec<SentObservation> = Vec::new();
    for round in 0..20 {
        let run = run_sim(
            gw.endpoints.mllp,
            BEDS,
            500,
            400.0,
            &dir.path().join(format!("fill-{round}.jsonl")),
        );
        accepted.extend(run.accepted);
        if budget(&gw)["requests_refused_budget"].as_u64() > Some(0) {
            break;
        }
        assert!(run.ok, "nothing refused yet, all AA:\n{}", run.stdout);
    }
    let b = budget(&gw);
    assert!(b["requests_refused_budget"].as_u64() > Some(0), "{b}");
    assert_eq!(b["full"], true, "{b}");
    assert_eq!(b["pruned_unsent_observations"], 0, "{b}");
    assert!(!accepted.is_empty());
    eprintln!(
        "budget reached after {} acknowledged readings: {b}",
        accepted.len()
    );

    // Still full: a further reading is refused with AR (never AA), nothing half-stored.
    let refused = run_sim(
        gw.endpoints.mllp,
        1,
        3,
        20.0,
        &dir.path().join("full.jsonl"),
    );
    assert!(refused.accepted.is_empty(), "{}", refused.stdout);

    // The store's technical alarm is on the alarm API.
    let tech = wait_for(Duration::from_secs(10), "the store technical alarm", || {
        active(&gw)
            .into_iter()
            .find(|a| a["source"] == "gateway:store-budget")
    })
    .unwrap();
    assert_eq!(tech["bed"], "gateway", "{tech}");
    assert_eq!(tech["alert_type"], "ST", "{tech}");
    assert_eq!(tech["priority"], "PM", "{tech}");
    assert!(
        tech["text"].as_str().unwrap().contains("store full"),
        "{tech}"
    );

    // The alarm path works while the disk is full: a desaturation on bed-01 raises the SpO2
    // alarm, though every one of its readings is refused by the store.
    let desat = run_sim_with(
        gw.endpoints.mllp,
        BEDS,
        24,
        2.0,
        &dir.path().join("desat.jsonl"),
        &["--scenario", "desaturation:1:0"],
    );
    assert!(
        desat.accepted.is_empty(),
        "the store stayed full: {}",
        desat.stdout
    );
    let spo2 = wait_for(Duration::from_secs(20), "the SpO2 alarm", || {
        active(&gw)
            .into_iter()
            .find(|a| a["source"] == "limit:spo2")
    })
    .unwrap();
    assert_eq!(spo2["bed"], "bed-01");
    let spo2_id = spo2["alarm_id"].as_str().unwrap().to_owned();
    // On the page's event stream ...
    wait_for(Duration::from_secs(10), "alarms on the page stream", || {
        let lines = events.lock().unwrap();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        (has(&spo2_id) && has("gateway:store-budget")).then_some(())
    })
    .unwrap();
    // ... and on the MQTT alarm topic.
    wait_for(Duration::from_secs(10), "alarms on the MQTT topic", || {
        let got = nurse_call.lock().unwrap();
        let spo2 = got
            .iter()
            .any(|m| m.starts_with("icu/test-gw/alarms/bed-01 ") && m.contains(&spo2_id));
        let store = got.iter().any(|m| {
            m.starts_with("icu/test-gw/alarms/gateway ") && m.contains("gateway:store-budget")
        });
        (spo2 && store).then_some(())
    })
    .unwrap();
    // The alarm state changes were stored in the reserve above the budget.
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let stored = |device: &str| -> i64 {
        c.query_row(
            "SELECT COUNT(*) FROM records WHERE kind = 2 AND device_id = ?1",
            [device],
            |r| r.get(0),
        )
        .unwrap()
    };
    let device = spo2["device_id"].as_str().unwrap();
    assert!(stored(device) >= 1, "the SpO2 alarm was stored");
    assert!(stored("gateway") >= 1, "the store alarm was stored");
    drop(c);
    assert_eq!(
        gw.get_json("/api/alarms")["store_failures"],
        0,
        "no alarm state change was refused by the full store"
    );

    // The broker returns: every reading acknowledged before the budget was hit arrives.
    let broker = Broker::start_on(port).expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let (report, records) = wait_for(
        Duration::from_secs(120),
        "every acknowledged reading on icu.observations",
        || {
            let (report, records) = read_observations(&broker.addr, &key);
            let distinct: u64 = report.devices.values().map(|d| d.distinct_seqs).sum();
            (distinct >= accepted.len() as u64).then_some((report, records))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; {}", broker.log_tail(20)));
    assert_every_acknowledged_reading_arrived(&report, &records, &accepted);

    // Forwarded records are pruned down to the low-water mark; the technical alarm clears and
    // readings are accepted again.
    wait_for(
        Duration::from_secs(60),
        "the store back at its low-water mark",
        || {
            let b = budget(&gw);
            (b["used_bytes"].as_u64() <= b["low_water_bytes"].as_u64()).then_some(())
        },
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        "the technical alarm cleared",
        || {
            active(&gw)
                .iter()
                .all(|a| a["source"] != "gateway:store-budget")
                .then_some(())
        },
    )
    .unwrap();
    let b = budget(&gw);
    assert!(b["pruned_sent_records"].as_u64() > Some(0), "{b}");
    assert_eq!(b["pruned_unsent_observations"], 0, "{b}");
    assert_eq!(b["full"], false, "{b}");
    let again = run_sim(
        gw.endpoints.mllp,
        1,
        3,
        20.0,
        &dir.path().join("again.jsonl"),
    );
    assert!(again.ok, "accepted again: {}", again.stdout);

    // The audit trail has the refusals: when they started and when they stopped (not one entry
    // per refused message), and it still verifies.
    let c = gw.config_path.to_str().unwrap().to_owned();
    let shown = icu_tests::http::gateway_cli(
        &[
            "audit",
            "show",
            "--config",
            &c,
            "--action",
            "budget_refusal",
            "--json",
        ],
        "",
    )
    .unwrap();
    let entries: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        entries.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("started")))
            && entries.iter().any(|e| e["outcome"] == "success"),
        "{shown}"
    );
    assert!(
        entries.len() < 20,
        "one entry per episode and minute: {shown}"
    );
    let verified = icu_tests::http::gateway_cli(&["audit", "verify", "--config", &c], "").unwrap();
    assert!(verified.contains("audit trail verified"), "{verified}");
}
