//! A whole simulated ICU of 30 beds for 60 s through every real transport (PCD-01 and ADT over
//! MLLP, Masimo and MEDIBUS over ptys, pumps over mosquitto) into the gateway and a real
//! Kafka-protocol broker: per device, what reaches Kafka is exactly what the simulator counted
//! as acknowledged — no gap, no duplicate, every signature valid.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::signing::load_public_key;
use icu_tests::mosquitto::Mosquitto;
use icu_tests::{bin_path, wait_for, Broker, TOPICS};
use support::{keygen, GatewayProc};

const BEDS: usize = 30;

#[test]
fn thirty_beds_for_sixty_seconds_arrive_exactly() {
    let broker = Broker::start().expect("kafka broker");
    broker.create_topics(TOPICS).unwrap();
    let mosquitto = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let serial_dir = dir.path().join("serial");
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let cfg = format!(
        "gateway_id = \"icu-gw\"\ndata_dir = \"{}\"\nclock = \"synced\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nsynchronous = \"normal\"\n[kafka]\nbootstrap = \"{}\"\nmessage_timeout_ms = 10000\n[mqtt]\nbroker_port = {}\n\n{}",
        dir.path().display(),
        broker.addr,
        mosquitto.port,
        icu_sim::icu::config_blocks(&icu_sim::icu::plan(BEDS), &serial_dir)
    );
    let gw = GatewayProc::start(dir.path(), &cfg);
    wait_for(Duration::from_secs(30), "mqtt subscription", || {
        (gw.get_json("/api/status")["mqtt"]["subscribed"].as_u64() >= Some(1)).then_some(())
    })
    .unwrap();

    let report_path = dir.path().join("sim-report.json");
    let out = Command::new(bin_path("icu-sim"))
        .args(["icu", "--beds", &BEDS.to_string(), "--duration-secs", "60"])
        .args([
            "--mllp",
            &gw.endpoints.mllp.to_string(),
            "--gateway-id",
            "icu-gw",
        ])
        .args(["--mqtt-port", &mosquitto.port.to_string(), "--serial-dir"])
        .arg(&serial_dir)
        .arg("--report")
        .arg(&report_path)
        .output()
        .expect("icu-sim icu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(
        report["adt_messages_acked"],
        BEDS as u64 + 2,
        "admissions, a discharge and a transfer: {stdout}"
    );
    assert_eq!(report["monitor_rejected"], 0, "{stdout}");
    let expected: BTreeMap<String, u64> = report["observations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(
        expected.len(),
        30 + 6 + 3 + 10,
        "monitors, oximeters, ventilators, pumps: {expected:?}"
    );
    assert!(
        expected.values().all(|n| *n > 0),
        "every device sent something: {expected:?}"
    );

    let total: u64 = expected.values().sum();
    let got = wait_for(
        Duration::from_secs(120),
        "every acknowledged observation on kafka",
        || {
            let (r, _) = consume(&ConsumeOptions {
                brokers: broker.addr.clone(),
                topic: "icu.observations".into(),
                public_key: Some(key),
                idle_timeout: Duration::from_millis(500),
                max_wait: Duration::from_secs(60),
            })
            .ok()?;
            let n: u64 = r.devices.values().map(|d| d.distinct_seqs).sum();
            (n >= total).then_some(r)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; status {}", gw.get_json("/api/status")));
    assert_eq!(got.signatures_bad, 0);
    let mut mismatches = Vec::new();
    for (device, n) in &expected {
        let d = got.devices.get(device);
        let (distinct, dups, gaps) = d.map_or((0, 0, 0), |d| {
            (d.distinct_seqs, d.duplicate_seqs, d.gaps.len())
        });
        if distinct != *n || dups != 0 || gaps != 0 {
            mismatches.push(format!(
                "{device}: simulator {n}, kafka {distinct} ({dups} duplicate seqs, {gaps} gaps)"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "per-device counts differ:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(
        got.devices.len(),
        expected.len(),
        "no device on kafka that the simulator did not run"
    );
}
