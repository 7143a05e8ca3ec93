//! The protobuf topic under a real schema registry: a tansu broker started with
//! `--schema-registry` holding `protos/schemas/icu.observations.pb.proto` (the committed schema)
//! takes the gateway's `icu.v1.ObservationBatch` records, and refuses a record that does not
//! match a topic's schema with INVALID_RECORD. A gateway whose protobuf topic holds an
//! incompatible schema keeps every refused record as a dead letter (`icu.deadletter`), shows it in
//! `/api/status`, and keeps forwarding FHIR: no silent loop, no stall.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use ed25519_dalek::Verifier as _;
use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::fhir::observations_of;
use icu_cloud_bridge::signing::load_public_key;
use icu_protos::v1::{ObservationBatch, StreamKey};
use icu_protos::Message as _;
use icu_tests::{wait_for, Broker, TOPICS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::{config_text, keygen, run_sim, GatewayProc};

const PB_TOPIC: &str = "icu.observations.pb";
/// A topic whose registry schema is an older, incompatible `Value` (field 1 retyped).
const OLD_TOPIC: &str = "icu.observations.pb-old";
const SCHEMA: &str = include_str!("../../protos/schemas/icu.observations.pb.proto");
const OLD_SCHEMA: &str = r#"syntax = "proto3";
package old;
message Key { string gateway_id = 1; string device_id = 2; }
message Value { fixed64 gateway_id = 1; }
"#;

fn gateway_config(dir: &std::path::Path, id: &str, beds: usize, broker: &str, pb: &str) -> String {
    config_text(dir, beds, Some(broker), "")
        .replace(
            "gateway_id = \"test-gw\"",
            &format!("gateway_id = \"{id}\""),
        )
        .replace(
            "message_timeout_ms = 5000\n",
            &format!("message_timeout_ms = 5000\ntopic_observations_pb = \"{pb}\"\n"),
        )
}

/// Every record of `topic` (from the start), as (key, headers, value).
type Raw = (Vec<u8>, Vec<(String, String)>, Vec<u8>);
fn read_all(broker: &Broker, topic: &str) -> Vec<Raw> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("pb-test-{}", icu_tests::free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 6 {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle = 0;
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.key().unwrap_or_default().to_vec(),
                    headers,
                    m.payload().unwrap_or_default().to_vec(),
                ));
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => idle += 1,
        }
    }
    out
}

#[test]
fn the_registry_governs_the_protobuf_topic_and_a_refusal_is_a_dead_letter() {
    let mut broker = Broker::start().expect("broker");
    broker
        .use_schema_registry(&[
            ("icu.observations.pb.proto", SCHEMA),
            ("icu.observations.pb-old.proto", OLD_SCHEMA),
        ])
        .expect("broker with a schema registry");
    let mut topics: Vec<&str> = TOPICS.to_vec();
    topics.extend([PB_TOPIC, OLD_TOPIC]);
    broker.create_topics(&topics).unwrap();

    // The broker itself refuses a value that is no `Value` (a FHIR JSON document).
    let producer: FutureProducer = broker.client_config().create().unwrap();
    let refused = futures::executor::block_on(
        producer.send(
            FutureRecord::to(PB_TOPIC)
                .key(&StreamKey::default().encode_to_vec()[..])
                .payload(&b"{\"resourceType\":\"Bundle\"}"[..]),
            Duration::from_secs(10),
        ),
    );
    let err = refused.expect_err("a JSON value on the protobuf topic").0;
    assert!(
        format!("{err:?}").contains("InvalidRecord"),
        "the registry refuses it: {err:?}"
    );

    // Gateway A: the right schema. Gateway B: a topic whose schema is an incompatible one.
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let public_a = keygen(dir_a.path());
    let public_b = keygen(dir_b.path());
    let gw_a = GatewayProc::start(
        dir_a.path(),
        &gateway_config(dir_a.path(), "icu-a", 2, &broker.addr, PB_TOPIC),
    );
    let gw_b = GatewayProc::start(
        dir_b.path(),
        &gateway_config(dir_b.path(), "icu-b", 1, &broker.addr, OLD_TOPIC),
    );
    let sim_a = run_sim(
        gw_a.endpoints.mllp,
        2,
        4,
        20.0,
        &dir_a.path().join("m.jsonl"),
    );
    let sim_b = run_sim(
        gw_b.endpoints.mllp,
        1,
        3,
        20.0,
        &dir_b.path().join("m.jsonl"),
    );
    assert!(sim_a.ok && sim_b.ok, "{}\n{}", sim_a.stdout, sim_b.stdout);
    for gw in [&gw_a, &gw_b] {
        wait_for(Duration::from_secs(60), "outbox drained", || {
            let s = gw.get_json("/api/status");
            (s["store"]["unsent"].as_u64() == Some(0)).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", gw.log_tail(40)));
    }

    // A: every observation is on the protobuf topic as the canonical message, signed, keyed by
    // its stream, with the same seqs as on the FHIR topic.
    let key_a = load_public_key(&public_a).unwrap();
    let mut pb_seqs = BTreeSet::new();
    for (key, headers, value) in read_all(&broker, PB_TOPIC) {
        let batch = ObservationBatch::decode(value.as_slice()).expect("an ObservationBatch");
        let stream = StreamKey::decode(key.as_slice()).expect("a StreamKey");
        assert_eq!(stream.gateway_id, "icu-a");
        assert_eq!(
            (stream.device_id.as_str(), batch.gateway_id.as_str()),
            (batch.device_id.as_str(), "icu-a")
        );
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(
            header("icu-schema-version").as_deref(),
            Some("icu.v1.ObservationBatch")
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-protobuf")
        );
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(header("icu-signature").expect("signed"))
            .unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
        assert!(
            key_a.verify(&value, &signature).is_ok(),
            "the value verifies"
        );
        for o in batch.observations {
            pb_seqs.insert((batch.device_id.clone(), o.seq));
        }
    }
    let fhir = consume(&ConsumeOptions {
        brokers: broker.addr.clone(),
        topic: "icu.observations".into(),
        public_key: Some(key_a),
        idle_timeout: Duration::from_millis(500),
        max_wait: Duration::from_secs(20),
    })
    .unwrap()
    .1;
    let fhir_seqs: BTreeSet<(String, u64)> = fhir
        .iter()
        .filter(|r| r.gateway_id.as_deref() == Some("icu-a"))
        .flat_map(|r| {
            let device = r.device_id.clone().unwrap();
            observations_of(&r.value)
                .unwrap()
                .into_iter()
                .map(move |o| (device.clone(), o.seq))
        })
        .collect();
    let accepted_a = sim_a.accepted.len();
    assert_eq!(fhir_seqs.len(), accepted_a);
    assert_eq!(
        pb_seqs, fhir_seqs,
        "the protobuf topic has what the FHIR topic has"
    );
    let status_a = gw_a.get_json("/api/status");
    let pb = &status_a["backbone"]["protobuf"];
    assert_eq!(pb["topic"], PB_TOPIC, "{status_a}");
    assert_eq!(pb["state"], "ok", "{pb}");
    assert_eq!(pb["rejected"], 0, "{pb}");
    assert!(pb["delivered"].as_u64().unwrap() > 0, "{pb}");

    // B: every protobuf record refused, each a dead letter; the FHIR topic still got everything.
    let status_b = gw_b.get_json("/api/status");
    let pb = &status_b["backbone"]["protobuf"];
    assert_eq!(pb["state"], "rejecting", "{status_b}");
    assert!(pb["rejected"].as_u64().unwrap() > 0, "{pb}");
    assert_eq!(pb["delivered"], 0, "{pb}");
    let reason = pb["last_rejection"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(OLD_TOPIC) && reason.contains("validate"),
        "{reason}"
    );
    let key_b = load_public_key(&public_b).unwrap();
    let b_fhir: usize = fhir
        .iter()
        .filter(|r| r.gateway_id.as_deref() == Some("icu-b"))
        .map(|r| observations_of(&r.value).unwrap().len())
        .sum();
    assert_eq!(
        b_fhir,
        sim_b.accepted.len(),
        "FHIR is not held up by the refusals"
    );
    let (report, letters) = consume(&ConsumeOptions {
        brokers: broker.addr.clone(),
        topic: "icu.deadletter".into(),
        public_key: Some(key_b),
        idle_timeout: Duration::from_millis(500),
        max_wait: Duration::from_secs(20),
    })
    .unwrap();
    let kept: Vec<serde_json::Value> = letters
        .iter()
        .filter(|r| r.gateway_id.as_deref() == Some("icu-b"))
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .filter(|v: &serde_json::Value| v["transport"] == format!("kafka:{OLD_TOPIC}"))
        .collect();
    assert_eq!(
        kept.len() as u64,
        pb["rejected"].as_u64().unwrap(),
        "one dead letter per refused record: {report:?}"
    );
    assert!(kept[0]["location"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{OLD_TOPIC} seq ")));
    // Nothing refused is sent again: two more forwarding cycles, the same count.
    let cycles = status_b["backbone"]["cycles"].as_u64().unwrap();
    let again = wait_for(Duration::from_secs(20), "two more bridge cycles", || {
        let s = gw_b.get_json("/api/status");
        (s["backbone"]["cycles"].as_u64().unwrap() >= cycles + 2).then_some(s)
    })
    .unwrap();
    assert_eq!(again["backbone"]["protobuf"]["rejected"], pb["rejected"]);
}
