//! Serial devices over real pseudo-terminals (a pty is a real tty: the gateway opens it exactly
//! like /dev/ttyUSB0): a simulated Masimo oximeter → `icu-gateway` → a real Kafka-protocol broker.
//! Also the cable pull: the line drops, the device goes silent, a technical alarm is stored and
//! forwarded, and the gateway reconnects by itself when the line returns.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::fhir::observations_of;
use icu_cloud_bridge::signing::load_public_key;
use icu_sim::serial::{run_masimo, SerialControl};
use icu_tests::{wait_for, Broker, TOPICS};
use support::{keygen, GatewayProc};

fn config(dir: &std::path::Path, broker: &str, port: &std::path::Path) -> String {
    format!(
        r#"gateway_id = "test-gw"
data_dir = "{dir}"
clock = "synced"
[mllp]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[store]
synchronous = "normal"
[kafka]
bootstrap = "{broker}"
message_timeout_ms = 5000
[[beds]]
id = "bed-01"
[[devices]]
id = "mon-01"
bed = "bed-01"
protocol = "pcd01"
match = "0012AB0000000001"
[[devices]]
id = "spo2-01"
bed = "bed-01"
protocol = "masimo"
silent_after_s = 2
[devices.serial]
port = "{port}"
"#,
        dir = dir.display(),
        port = port.display()
    )
}

fn device(gw: &GatewayProc, id: &str) -> serde_json::Value {
    let v = gw.get_json("/api/devices");
    v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .cloned()
        .unwrap()
}

#[test]
fn masimo_over_a_pty_reaches_kafka_and_survives_a_cable_pull() {
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let port = dir.path().join("spo2-01");
    let control = Arc::new(SerialControl::default());
    let sim = run_masimo(
        port.clone(),
        "0000012345".into(),
        7,
        Duration::from_millis(200),
        control.clone(),
    )
    .expect("simulated oximeter on a pty");
    let gw = GatewayProc::start(dir.path(), &config(dir.path(), &broker.addr, &port));

    let read = |topic: &str| {
        consume(&ConsumeOptions {
            brokers: broker.addr.clone(),
            topic: topic.into(),
            public_key: Some(key),
            idle_timeout: Duration::from_millis(300),
            max_wait: Duration::from_secs(20),
        })
        .expect("consume")
    };

    // Readings reach Kafka with the same MDC/UCUM/LOINC codes a PCD-01 monitor would use.
    let (report, records) = wait_for(Duration::from_secs(60), "masimo readings on kafka", || {
        let (r, recs) = read("icu.observations");
        (r.devices
            .get("spo2-01")
            .is_some_and(|d| d.distinct_seqs >= 9))
        .then_some((r, recs))
    })
    .unwrap();
    assert_eq!(report.signatures_bad, 0);
    let obs: Vec<_> = records
        .iter()
        .flat_map(|r| observations_of(&r.value).unwrap())
        .collect();
    let spo2 = obs.iter().find(|o| o.mdc_code == 150456).expect("SpO2");
    assert_eq!(spo2.unit.as_deref(), Some("%"));
    assert!(spo2.loinc.is_some(), "SpO2 carries its LOINC code");
    assert!(spo2.value.unwrap() > 80.0);
    let pulse = obs
        .iter()
        .find(|o| o.mdc_code == 149530)
        .expect("pulse rate from SpO2");
    assert_eq!(pulse.unit.as_deref(), Some("/min"));
    assert!(records
        .iter()
        .all(|r| r.headers.get("icu-bed").map(String::as_str) == Some("bed-01")));
    assert!(report.devices["spo2-01"].gaps.is_empty());

    // Garbage on the line lands in dead letters; the device keeps going.
    control.garbage.store(40, Ordering::Relaxed);
    wait_for(Duration::from_secs(20), "a serial dead letter", || {
        let c = rusqlite::Connection::open(gw.db_path()).ok()?;
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM dead_letters WHERE transport = 'serial:masimo'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (n >= 1).then_some(())
    })
    .unwrap();
    assert_eq!(device(&gw, "spo2-01")["state"], "online");
    // ... and on icu.deadletter: what, from which device, at which offset, and why.
    let letter = wait_for(Duration::from_secs(30), "the dead letter on kafka", || {
        let (r, recs) = read("icu.deadletter");
        (r.records >= 1).then(|| recs[0].clone())
    })
    .unwrap();
    assert_eq!(letter.signature_ok, Some(true));
    assert_eq!(letter.key.as_deref(), Some("spo2-01"));
    let v: serde_json::Value = serde_json::from_slice(&letter.value).unwrap();
    assert_eq!(v["transport"], "serial:masimo");
    assert!(v["stream_offset"].as_u64().unwrap() > 0);
    assert!(!v["reason"].as_str().unwrap().is_empty());

    // Cable pull: the line drops, the device goes silent and raises a technical alarm, while
    // the bed's monitor keeps sending over MLLP and misses nothing.
    let mllp = gw.endpoints.mllp;
    let manifest = dir.path().join("monitor.jsonl");
    let monitor = std::thread::spawn(move || support::run_sim(mllp, 1, 40, 3.0, &manifest));
    control.unplugged.store(true, Ordering::Relaxed);
    let d = wait_for(
        Duration::from_secs(30),
        "stale-feed technical alarm",
        || {
            let d = device(&gw, "spo2-01");
            d["active_alarms"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
                .then_some(d)
        },
    )
    .unwrap();
    assert_ne!(d["state"], "online", "{d}");
    let alarm = &d["active_alarms"][0];
    assert_eq!(alarm["condition"], "gateway:stale-feed");
    assert_eq!(alarm["alert_type"], "ST");

    // The line returns: the gateway reconnects by itself and data flows again; the alarm ends.
    control.unplugged.store(false, Ordering::Relaxed);
    wait_for(
        Duration::from_secs(40),
        "device back online without its alarm",
        || {
            let d = device(&gw, "spo2-01");
            (d["state"] == "online" && d["active_alarms"].as_array().is_some_and(|a| a.is_empty()))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}\nlog:\n{}", device(&gw, "spo2-01"), gw.log_text()));

    let monitor = monitor.join().unwrap();
    assert!(monitor.ok, "{}", monitor.stdout);
    wait_for(
        Duration::from_secs(30),
        "every monitor reading on kafka",
        || {
            let (r, _) = read("icu.observations");
            let d = r.devices.get("mon-01")?;
            (d.distinct_seqs == monitor.accepted.len() as u64
                && d.gaps.is_empty()
                && d.duplicate_seqs == 0)
                .then_some(())
        },
    )
    .unwrap();

    // Both alarm state changes (start, end) reach icu.alarms, signed, in order (each record a
    // Bundle of the device's state changes, one Observation each).
    let phases_of = |recs: &[icu_cloud_bridge::consume::ConsumedRecord]| -> Vec<String> {
        recs.iter()
            .flat_map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                v["entry"].as_array().cloned().unwrap_or_default()
            })
            .map(|e| {
                let comp = e["resource"]["component"].as_array().unwrap().clone();
                comp.iter()
                    .find(|c| c["code"]["coding"][0]["code"] == "68481")
                    .map(|c| c["valueString"].as_str().unwrap().to_owned())
                    .unwrap()
            })
            .collect()
    };
    let (alarms, recs) = wait_for(
        Duration::from_secs(30),
        "alarm start and end on icu.alarms",
        || {
            let (r, recs) = read("icu.alarms");
            (phases_of(&recs).len() >= 2).then_some((r, recs))
        },
    )
    .unwrap();
    assert_eq!(alarms.signatures_bad, 0);
    assert_eq!(phases_of(&recs), ["start", "end"]);

    control.stop.store(true, Ordering::Relaxed);
    let _ = sim.join();
}

#[test]
fn medibus_ventilator_over_a_pty_is_polled_and_reaches_kafka() {
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let port = dir.path().join("vent-01");
    let control = Arc::new(SerialControl::default());
    let sim =
        icu_sim::serial::run_medibus(port.clone(), 3, Duration::from_millis(500), control.clone())
            .expect("simulated ventilator on a pty");
    let cfg = config(dir.path(), &broker.addr, &port)
        .replace("id = \"spo2-01\"", "id = \"vent-01\"")
        .replace("protocol = \"masimo\"", "protocol = \"medibus\"")
        .replace("silent_after_s = 2", "silent_after_s = 5");
    let gw = GatewayProc::start(dir.path(), &cfg);

    let (report, records) = wait_for(
        Duration::from_secs(60),
        "ventilator readings on kafka",
        || {
            let (r, recs) = consume(&ConsumeOptions {
                brokers: broker.addr.clone(),
                topic: "icu.observations".into(),
                public_key: Some(key),
                idle_timeout: Duration::from_millis(300),
                max_wait: Duration::from_secs(20),
            })
            .ok()?;
            (r.devices
                .get("vent-01")
                .is_some_and(|d| d.distinct_seqs >= 16))
            .then_some((r, recs))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert_eq!(report.signatures_bad, 0);
    assert!(report.devices["vent-01"].gaps.is_empty());
    let obs: Vec<_> = records
        .iter()
        .flat_map(|r| observations_of(&r.value).unwrap())
        .collect();
    let ppeak = obs.iter().find(|o| o.mdc_code == 151817).expect("Ppeak");
    assert_eq!(
        (ppeak.value, ppeak.unit.as_deref()),
        (Some(22.0), Some("mbar"))
    );
    let rr = obs
        .iter()
        .find(|o| o.mdc_code == 151562)
        .expect("respiratory rate");
    assert_eq!(rr.unit.as_deref(), Some("/min"));
    let fio2 = obs.iter().find(|o| o.mdc_code == 152196).expect("FiO2");
    assert_eq!(fio2.value, Some(40.0));
    // The limits polled from the ventilator ride along as the reference range.
    let text = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect::<String>();
    assert!(text.contains("referenceRange"), "limits reach FHIR");
    assert_eq!(device(&gw, "vent-01")["state"], "online");
    assert!(
        control.records.load(Ordering::Relaxed) >= 2,
        "the gateway polls measured data"
    );

    // A frame with a corrupt checksum: dead-lettered, the session re-initialises, data goes on.
    let before = control.records.load(Ordering::Relaxed);
    control.garbage.store(1, Ordering::Relaxed);
    wait_for(Duration::from_secs(20), "a medibus dead letter", || {
        let c = rusqlite::Connection::open(gw.db_path()).ok()?;
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM dead_letters WHERE transport = 'serial:medibus'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (n >= 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    wait_for(Duration::from_secs(20), "polling resumed", || {
        (control.records.load(Ordering::Relaxed) >= before + 3
            && device(&gw, "vent-01")["state"] == "online")
            .then_some(())
    })
    .unwrap();

    control.stop.store(true, Ordering::Relaxed);
    let _ = sim.join();
}
