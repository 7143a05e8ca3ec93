//! Tracing and logs of the real gateway binary (issue 18, points 5 and 7).
//!
//! One PCD-01 message over real MLLP/TCP (and one pump publish over a real mosquitto) to a
//! gateway whose `[tracing] otlp_endpoint` names a real OTLP/HTTP receiver (`scripts/otlp_receiver.py` on the official `opentelemetry-proto`
//! package; `ICU_OTLP_PYTHON`, set by `scripts/test`), forwarding to a real Kafka-protocol
//! broker (tansu): the receiver gets one trace with the receipt, decode, commit, ACK and Kafka
//! delivery spans linked parent to child, and the record read back from the broker carries a
//! `traceparent` header naming that trace (and still verifies). Then the logs: a gateway with
//! JSON logs names the device and bed of a message it rejects.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::signing::load_public_key;
use icu_drivers::mqtt::rumqttc::{AsyncClient, MqttOptions, QoS};
use icu_drivers::mqtt::{publish_observations, MqttBatch, ObsTopic, PayloadFormat};
use icu_protos::v1::Observation;
use icu_tests::mosquitto::Mosquitto;
use icu_tests::{wait_for, Broker, ChildGuard, TOPICS};
use serde_json::Value;
use support::{config_text, keygen, GatewayProc, Launch, Sender};

const EUI: &str = "0012AB0000000001";
/// The device and bed the simulator's config gives that EUI-64.
const DEVICE: &str = "mon-01";
const BED: &str = "bed-01";
/// An MQTT pump at the same bed.
const PUMP: &str = "pump-01";

fn pcd01(control: &str, hr: &str) -> String {
    [
        format!("MSH|^~\\&|SIM_MON^{EUI}^EUI-64|ICU_SIM|ICU_GW|HOSP|20250101120000+0000||ORU^R01^ORU_R01|{control}|P|2.6|||AL|NE"),
        "PID|||SIM0001^^^HOSP^MR||Doe^Jane".to_string(),
        "OBR|1|X|X|182777000^monitoring of patient^SCT|||20250101120000+0000".to_string(),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{EUI}^^{EUI}^EUI-64"),
        format!("OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R"),
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R".to_string(),
    ]
    .join("\r")
}

/// The receiver's Python (`ICU_OTLP_PYTHON`); under CI its absence fails the test.
fn otlp_python() -> Option<PathBuf> {
    let py = std::env::var_os("ICU_OTLP_PYTHON").filter(|p| !p.is_empty());
    if py.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "ICU_OTLP_PYTHON is not set under CI: run the suite through scripts/test"
        );
        eprintln!("skipped: ICU_OTLP_PYTHON not set (scripts/test sets it)");
    }
    py.map(PathBuf::from)
}

/// The OTLP receiver, listening; its spans go to `<dir>/spans.jsonl`.
struct Receiver {
    _child: ChildGuard,
    port: u16,
    spans: PathBuf,
    log: PathBuf,
}

impl Receiver {
    fn start(py: &Path, dir: &Path) -> Receiver {
        let (port_file, spans, log) = (
            dir.join("otlp.port"),
            dir.join("spans.jsonl"),
            dir.join("otlp.log"),
        );
        let mut cmd = Command::new(py);
        cmd.arg(icu_tests::script("otlp_receiver.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--out")
            .arg(&spans);
        let child = ChildGuard::spawn_tied(
            &cmd,
            Stdio::null(),
            Stdio::from(std::fs::File::create(&log).unwrap()),
        )
        .expect("starting the OTLP receiver");
        let port = wait_for(Duration::from_secs(20), "the OTLP receiver's port", || {
            std::fs::read_to_string(&port_file)
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|e| panic!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default()));
        Receiver {
            _child: child,
            port,
            spans,
            log,
        }
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
            .collect()
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

fn the_one<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one {name} span in the trace: {spans:#?}");
    found[0]
}

#[test]
fn one_message_is_one_trace_from_receipt_to_the_kafka_delivery() {
    let Some(py) = otlp_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&py, dir.path());
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let mosquitto = Mosquitto::start().expect("mosquitto");
    let public = keygen(dir.path());
    let config = config_text(dir.path(), 1, Some(&broker.addr), "").replace(
        "[http]\n",
        &format!(
            "[tracing]\notlp_endpoint = \"http://127.0.0.1:{}\"\n\n[mqtt]\nbroker_port = {}\n\n[http]\n",
            receiver.port, mosquitto.port
        ),
    ) + &format!("\n[[devices]]\nid = \"{PUMP}\"\nbed = \"{BED}\"\nprotocol = \"mqtt\"\n");
    let mut gw = GatewayProc::start(dir.path(), &config);

    let ack = Sender::connect(gw.endpoints.mllp).send(&pcd01("TRACE-1", "72"));
    assert!(ack.contains("MSA|AA|TRACE-1"), "{ack}");
    publish_one(&gw, mosquitto.port);
    let key = load_public_key(&public).unwrap();
    let records = wait_for(
        Duration::from_secs(30),
        "both records on icu.observations",
        || {
            let (_, records) = consume(&ConsumeOptions {
                brokers: broker.addr.clone(),
                topic: "icu.observations".into(),
                public_key: Some(key),
                idle_timeout: Duration::from_millis(300),
                max_wait: Duration::from_secs(5),
            })
            .ok()?;
            (records.len() == 2).then_some(records)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", gw.log_tail(40)));
    for r in &records {
        assert_eq!(
            r.signature_ok,
            Some(true),
            "traceparent is outside the signed envelope"
        );
    }
    let of = |device: &str| {
        records
            .iter()
            .find(|r| r.device_id.as_deref() == Some(device))
            .unwrap_or_else(|| panic!("no record of {device}"))
    };
    let record = of(DEVICE);
    // A graceful stop exports the spans still queued.
    gw.stop();

    let spans = wait_for(Duration::from_secs(10), "the delivery spans", || {
        let spans = receiver.spans();
        (named(&spans, "kafka.deliver").len() >= 2).then_some(spans)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; spans: {:#?}\nreceiver log:\n{}\ngateway log:\n{}",
            receiver.spans(),
            std::fs::read_to_string(&receiver.log).unwrap_or_default(),
            gw.log_tail(40)
        )
    });
    let receipts = named(&spans, "mllp.receive");
    assert_eq!(receipts.len(), 1, "one message, one receipt: {spans:#?}");
    let receipt = receipts[0];
    let trace_id = receipt["trace_id"].as_str().unwrap();
    let trace: Vec<Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == trace_id)
        .cloned()
        .collect();

    // The root: the message as received, with who sent it and how it was answered.
    assert_eq!(receipt["parent_span_id"], "", "the receipt is the root");
    let attrs = &receipt["attributes"];
    assert_eq!(attrs["transport"], "mllp");
    assert_eq!(attrs["device"], DEVICE);
    assert_eq!(attrs["bed"], BED);
    assert_eq!(attrs["control_id"], "TRACE-1");
    assert_eq!(attrs["observations"], 2);
    assert_eq!(attrs["ack_code"], "AA");
    assert_eq!(receipt["resource"]["service.name"], "icu-gateway");
    assert_eq!(receipt["resource"]["service.instance.id"], "test-gw");

    // Its children: decode, commit, ACK.
    let root_id = receipt["span_id"].as_str().unwrap();
    for name in ["hl7.decode", "store.commit", "mllp.ack"] {
        assert_eq!(the_one(&trace, name)["parent_span_id"], root_id, "{name}");
    }
    let commit = the_one(&trace, "store.commit");
    assert_eq!(commit["attributes"]["outcome"], "stored");
    assert_eq!(commit["attributes"]["seq_first"], 1);
    assert_eq!(commit["attributes"]["seq_last"], 2);

    // The delivery continues the commit's trace across the outbox.
    let deliver = the_one(&trace, "kafka.deliver");
    assert_eq!(deliver["parent_span_id"], commit["span_id"]);
    let d = &deliver["attributes"];
    assert_eq!(d["device"], DEVICE);
    assert_eq!(d["bed"], BED);
    assert_eq!(d["topic"], "icu.observations");
    assert_eq!(d["seq_first"], 1);
    assert_eq!(d["partition"], record.partition);
    assert_eq!(d["offset"], record.offset);

    // The Kafka record names that trace and that delivery span.
    let traceparent = record
        .headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("no traceparent header: {:?}", record.headers));
    assert_eq!(
        traceparent,
        &format!("00-{trace_id}-{}-01", deliver["span_id"].as_str().unwrap())
    );

    // The pump's publish: its own trace, receipt → commit → delivery, named by its record.
    let pump = named(&spans, "mqtt.receive");
    assert_eq!(pump.len(), 1, "{spans:#?}");
    assert_eq!(pump[0]["parent_span_id"], "");
    assert_eq!(pump[0]["attributes"]["device"], PUMP);
    assert_eq!(pump[0]["attributes"]["bed"], BED);
    let pump_id = pump[0]["trace_id"].as_str().unwrap();
    assert_ne!(pump_id, trace_id);
    let pump_trace: Vec<Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == pump_id)
        .cloned()
        .collect();
    let pump_commit = the_one(&pump_trace, "store.commit");
    assert_eq!(pump_commit["parent_span_id"], pump[0]["span_id"]);
    let pump_deliver = the_one(&pump_trace, "kafka.deliver");
    assert_eq!(pump_deliver["parent_span_id"], pump_commit["span_id"]);
    assert_eq!(
        of(PUMP).headers.get("traceparent"),
        Some(&format!(
            "00-{pump_id}-{}-01",
            pump_deliver["span_id"].as_str().unwrap()
        ))
    );

    // No patient data in any exported attribute (the message named Jane Doe, MRN SIM0001).
    let text = std::fs::read_to_string(&receiver.spans).unwrap();
    for secret in ["Doe", "Jane", "SIM0001"] {
        assert!(
            !text.contains(secret),
            "{secret} exported in a span: {text}"
        );
    }
}

/// One pump batch at QoS 1, once the gateway's subscription is in place.
fn publish_one(gw: &GatewayProc, port: u16) {
    wait_for(
        Duration::from_secs(10),
        "the gateway's MQTT subscription",
        || (gw.get_json("/api/status")["mqtt"]["subscribed"].as_u64() >= Some(1)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", gw.log_tail(30)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, mut eventloop) =
            AsyncClient::new(MqttOptions::new("pump", "127.0.0.1", port), 8);
        let polling = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let batch = MqttBatch {
            waveforms: Vec::new(),
            msg_id: "p1".into(),
            observations: vec![Observation {
                mdc_code: 157784,
                value: Some(12.5),
                unit_ucum: "mL/h".into(),
                ..Default::default()
            }],
        };
        let topic = ObsTopic::new("test-gw", BED, PUMP, PayloadFormat::Json).unwrap();
        publish_observations(&client, &topic, &batch, QoS::AtLeastOnce)
            .await
            .unwrap();
        // The event loop sends the publish, then the disconnect, and ends.
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), polling).await;
    });
}

#[test]
fn a_rejected_message_is_logged_as_json_naming_its_device_and_bed() {
    let dir = tempfile::tempdir().unwrap();
    let mut launch = Launch::tests();
    launch.env.push(("ICU_LOG_FORMAT".into(), "json".into()));
    let gw = GatewayProc::start_with(dir.path(), &config_text(dir.path(), 1, None, ""), launch);
    let ack = Sender::connect(gw.endpoints.mllp).send(&pcd01("BAD-1", "fast"));
    assert!(ack.contains("MSA|AE|BAD-1"), "{ack}");

    let line = wait_for(Duration::from_secs(10), "the rejection's log line", || {
        gw.log_text()
            .lines()
            .find(|l| l.contains("mllp input rejected"))
            .map(String::from)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", gw.log_tail(40)));
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "WARN", "{v}");
    assert!(v["timestamp"].is_string(), "{v}");
    assert_eq!(v["target"], "icu_gateway::mllp::handle", "{v}");
    let fields: &BTreeMap<String, Value> = &serde_json::from_value(v["fields"].clone()).unwrap();
    assert_eq!(fields["message"], "mllp input rejected");
    assert_eq!(fields["device"], DEVICE, "{v}");
    assert_eq!(fields["bed"], BED, "{v}");
    assert!(
        fields["location"]
            .as_str()
            .is_some_and(|l| l.contains("OBX^2^5")),
        "{v}"
    );
    // Every log line is one JSON object (the ready banner is on stdout, which the test's log
    // file holds too).
    for l in gw
        .log_text()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("icu-gateway ready:"))
    {
        assert!(
            serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()),
            "not a JSON line: {l}"
        );
    }
}
