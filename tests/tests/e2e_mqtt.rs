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
