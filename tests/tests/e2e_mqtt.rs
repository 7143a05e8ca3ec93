//! MQTT devices end to end: a pump publishes JSON and protobuf readings at QoS 1 to a real
//! mosquitto; the gateway stores them (PUBACK only after the commit) and forwards them to a real
//! Kafka-protocol broker with the pump's MDC/UCUM codes, bed and seq. Bad payloads, unknown
//! devices and a wrong bed land in dead letters; later messages still arrive.

mod support;

use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::fhir::observations_of;
use icu_cloud_bridge::signing::load_public_key;
use icu_drivers::mqtt::rumqttc::{AsyncClient, MqttOptions, QoS};
use icu_drivers::mqtt::{publish_observations, MqttBatch, ObsTopic, PayloadFormat};
use icu_protos::v1::Observation;
use icu_tests::mosquitto::Mosquitto;
use icu_tests::{wait_for, Broker, TOPICS};
use support::{keygen, GatewayProc};

#[test]
fn pump_readings_over_mqtt_reach_kafka_and_bad_ones_are_dead_lettered() {
    let broker = Broker::start().expect("kafka broker");
    broker.create_topics(TOPICS).unwrap();
    let mosquitto = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let cfg = format!(
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
bootstrap = "{kafka}"
message_timeout_ms = 5000
[mqtt]
broker_port = {port}
[[beds]]
id = "bed-01"
[[beds]]
id = "bed-02"
[[devices]]
id = "pump-01"
bed = "bed-01"
protocol = "mqtt"
"#,
        dir = dir.path().display(),
        kafka = broker.addr,
        port = mosquitto.port
    );
    let gw = GatewayProc::start(dir.path(), &cfg);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut opts = MqttOptions::new("test-pump", "127.0.0.1", mosquitto.port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        // Publish only once the gateway's subscription is in place (nothing is retained).
        wait_for_subscription(&gw).await;
        let topic = |bed: &str, device: &str, f| ObsTopic::new("test-gw", bed, device, f).unwrap();
        let batch = |id: &str, rate: f64| MqttBatch {
            waveforms: Vec::new(),
            msg_id: id.into(),
            observations: vec![
                Observation {
                    mdc_code: 157784,
                    value: Some(rate),
                    unit_ucum: "mL/h".into(),
                    ..Default::default()
                },
                Observation {
                    mdc_code: 157884,
                    value: Some(250.0),
                    unit_ucum: "mL".into(),
                    ..Default::default()
                },
            ],
        };
        publish_observations(
            &client,
            &topic("bed-01", "pump-01", PayloadFormat::Json),
            &batch("m1", 12.5),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        publish_observations(
            &client,
            &topic("bed-01", "pump-01", PayloadFormat::Protobuf),
            &batch("m2", 13.0),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        // Garbage, an unknown device, and the right device under the wrong bed.
        client
            .publish(
                "icu/test-gw/bed/bed-01/device/pump-01/obs/json",
                QoS::AtLeastOnce,
                false,
                b"{not json".to_vec(),
            )
            .await
            .unwrap();
        publish_observations(
            &client,
            &topic("bed-01", "pump-99", PayloadFormat::Json),
            &batch("m3", 1.0),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        publish_observations(
            &client,
            &topic("bed-02", "pump-01", PayloadFormat::Json),
            &batch("m4", 1.0),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        // And a good one after them.
        publish_observations(
            &client,
            &topic("bed-01", "pump-01", PayloadFormat::Json),
            &batch("m5", 14.0),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    });

    let (report, records) = wait_for(Duration::from_secs(60), "6 pump readings on kafka", || {
        let (r, recs) = consume(&ConsumeOptions {
            brokers: broker.addr.clone(),
            topic: "icu.observations".into(),
            public_key: Some(key),
            idle_timeout: Duration::from_millis(300),
            max_wait: Duration::from_secs(20),
        })
        .ok()?;
        (r.devices
            .get("pump-01")
            .is_some_and(|d| d.distinct_seqs >= 6))
        .then_some((r, recs))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert_eq!(report.signatures_bad, 0);
    let d = &report.devices["pump-01"];
    assert_eq!(
        (d.distinct_seqs, d.duplicate_seqs, d.gaps.len()),
        (6, 0, 0),
        "{d:?}"
    );
    let obs: Vec<_> = records
        .iter()
        .flat_map(|r| observations_of(&r.value).unwrap())
        .collect();
    let rates: Vec<f64> = obs
        .iter()
        .filter(|o| o.mdc_code == 157784)
        .map(|o| o.value.unwrap())
        .collect();
    assert_eq!(rates, [12.5, 13.0, 14.0]);
    assert!(obs
        .iter()
        .filter(|o| o.mdc_code == 157784)
        .all(|o| o.unit.as_deref() == Some("mL/h")));
    assert!(records
        .iter()
        .all(|r| r.headers.get("icu-bed").map(String::as_str) == Some("bed-01")));

    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let reasons: Vec<String> = c
        .prepare("SELECT reason FROM dead_letters WHERE transport = 'mqtt' ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[1].contains("pump-99"), "{reasons:?}");
    assert!(reasons[2].contains("wrong bed"), "{reasons:?}");
}

async fn wait_for_subscription(gw: &GatewayProc) {
    for _ in 0..200 {
        let s = gw.get_json("/api/status");
        if s["mqtt"]["subscribed"].as_u64().unwrap_or(0) >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway never subscribed: {}", gw.log_text());
}

/// The MQTT acceptance of issue 11: a store that refuses a burst of pump messages (its disk
/// budget is reached while the backbone is down) and then accepts again (the backbone returns,
/// forwarded records are pruned) gets every refused message stored, once and in order, and
/// later messages keep flowing, with no restart of the gateway, the pump or mosquitto.
#[test]
fn pump_messages_refused_by_a_full_store_are_stored_in_order_once_it_accepts_again() {
    const BURST: usize = 30; // more than mosquitto's in-flight window (20)
    const LATER: usize = 10;
    let port = icu_tests::free_port();
    let kafka = format!("127.0.0.1:{port}");
    let mosquitto = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let cfg = support::config_text(dir.path(), 2, Some(&kafka), "disk_budget_mb = 1").replacen(
        "[[beds]]",
        &format!(
            "[mqtt]\nbroker_port = {}\n\n[[devices]]\nid = \"pump-01\"\nbed = \"bed-01\"\nprotocol = \"mqtt\"\n\n[[beds]]",
            mosquitto.port
        ),
        1,
    );
    let gw = GatewayProc::start(dir.path(), &cfg);
    let status = |key: &str| -> u64 {
        let s = gw.get_json("/api/status");
        key.split('.')
            .fold(&s, |v, k| &v[k])
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {s}"))
    };

    // Fill the store over MLLP until its budget refuses readings.
    for round in 0..40 {
        let run = support::run_sim(
            gw.endpoints.mllp,
            2,
            300,
            400.0,
            &dir.path().join(format!("fill-{round}.jsonl")),
        );
        if status("store_writes.budget.requests_refused_budget") > 0 {
            break;
        }
        assert!(run.ok, "nothing refused yet, all AA:\n{}", run.stdout);
    }
    assert!(status("store_writes.budget.requests_refused_budget") > 0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let topic = ObsTopic::new("test-gw", "bed-01", "pump-01", PayloadFormat::Json).unwrap();
    let batch = |i: usize| MqttBatch {
        waveforms: Vec::new(),
        msg_id: format!("pump-01-{i:04}"),
        observations: vec![Observation {
            mdc_code: 157784,
            value: Some(i as f64),
            unit_ucum: "mL/h".into(),
            ..Default::default()
        }],
    };
    let (client, _pump) = rt.block_on(async {
        let mut opts = MqttOptions::new("test-pump", "127.0.0.1", mosquitto.port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let pump = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        wait_for_subscription(&gw).await;
        (client, pump)
    });
    let publish = |range: std::ops::RangeInclusive<usize>| {
        rt.block_on(async {
            for i in range {
                publish_observations(&client, &topic, &batch(i), QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
        })
    };
    let refused_before = status("store_writes.budget.requests_refused_budget");
    publish(1..=BURST);
    // The store refuses them; the broker's window (20) is full of them, so the gateway has
    // received 20 and acknowledged none.
    wait_for(
        Duration::from_secs(30),
        "20 messages refused by the full store",
        || {
            (status("mqtt.messages") >= 20
                && status("store_writes.budget.requests_refused_budget") > refused_before)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert_eq!(status("mqtt.messages"), 20, "mosquitto's in-flight window");
    assert_eq!(
        status("mqtt.acked"),
        0,
        "nothing acknowledged before it is stored"
    );

    // The backbone returns: the backlog is forwarded and pruned, the held messages are stored
    // (then the 10 the broker still queued), and later ones keep flowing.
    let broker = Broker::start_on(port).expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let rates_on_kafka = |n: usize| {
        wait_for(
            Duration::from_secs(120),
            &format!("{n} pump readings on icu.observations"),
            || {
                let (report, records) = consume(&ConsumeOptions {
                    brokers: broker.addr.clone(),
                    topic: "icu.observations".into(),
                    public_key: Some(key),
                    idle_timeout: Duration::from_millis(500),
                    max_wait: Duration::from_secs(20),
                })
                .ok()?;
                let d = report.devices.get("pump-01")?;
                (d.distinct_seqs >= n as u64).then_some((report, records))
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()))
    };
    rates_on_kafka(BURST);
    publish(BURST + 1..=BURST + LATER);
    let (report, records) = rates_on_kafka(BURST + LATER);
    assert_eq!(report.signatures_bad, 0);
    let d = &report.devices["pump-01"];
    assert_eq!(
        (d.distinct_seqs, d.duplicate_seqs, d.gaps.len()),
        ((BURST + LATER) as u64, 0, 0),
        "{d:?}"
    );
    // Every message once, stored in the order the pump sent them (seq order is value order).
    let mut by_seq: Vec<(u64, f64)> = records
        .iter()
        .filter(|r| r.device_id.as_deref() == Some("pump-01"))
        .flat_map(|r| observations_of(&r.value).unwrap())
        .map(|o| (o.seq, o.value.unwrap()))
        .collect();
    by_seq.sort_by_key(|(seq, _)| *seq);
    by_seq.dedup_by_key(|(seq, _)| *seq);
    let values: Vec<f64> = by_seq.iter().map(|(_, v)| *v).collect();
    let sent: Vec<f64> = (1..=BURST + LATER).map(|i| i as f64).collect();
    assert_eq!(values, sent);
    assert!(status("mqtt.acked") >= (BURST + LATER) as u64);
    assert_eq!(status("mqtt.reconnects"), 0, "no new session was needed");
}
