//! Proves the broker setup every e2e test relies on: a real `tansu` broker,
//! the topics, rdkafka producing and consuming through it, and the stock
//! Python consumer (`scripts/kafka_consume.py`) verifying signatures.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use icu_tests::{python, script, Broker, PARTITIONS, TOPICS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const N: usize = 100;

fn producer(broker: &Broker) -> anyhow::Result<FutureProducer> {
    broker
        .client_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("create producer")
}

/// A consumer assigned to every partition of `topic` from the beginning.
fn consumer_from_start(broker: &Broker, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = broker
        .client_config()
        .set("group.id", format!("icu-smoke-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("create consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
    pairs.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(*value),
        })
    })
}

fn header_map<M: Message>(m: &M) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let Some(h) = m.headers() {
        for i in 0..h.count() {
            let hd = h.get(i);
            let v = hd.value.map(|v| String::from_utf8_lossy(v).into_owned());
            out.insert(hd.key.to_string(), v.unwrap_or_default());
        }
    }
    out
}

struct Received {
    partition: i32,
    offset: i64,
    key: String,
    value: serde_json::Value,
    headers: HashMap<String, String>,
}

fn consume(
    consumer: &BaseConsumer,
    want: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Received>> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < want {
        if start.elapsed() > deadline {
            bail!("only {} of {want} records after {deadline:?}", got.len());
        }
        let Some(res) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = res.context("consume")?;
        got.push(Received {
            partition: m.partition(),
            offset: m.offset(),
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            value: serde_json::from_slice(m.payload().unwrap_or_default())
                .context("value is JSON")?,
            headers: header_map(&m),
        });
    }
    Ok(got)
}

#[test]
fn broker_starts_and_lists_the_topics() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    broker.create_topics(TOPICS)?;
    // Creating again is fine.
    broker.create_topics(&TOPICS[..1])?;
    let md = broker.metadata()?;
    for t in TOPICS {
        let topic = md
            .topics()
            .iter()
            .find(|m| m.name() == *t)
            .with_context(|| format!("{t} missing from metadata"))?;
        assert_eq!(topic.partitions().len(), PARTITIONS as usize, "{t}");
    }
    let port = broker.port();
    assert!(broker.is_running());
    broker.stop();
    assert!(!broker.is_running());
    // The port is free again once stop() returns: a broker can be restarted on it.
    let again = Broker::start_on(port)?;
    assert_eq!(again.addr, format!("127.0.0.1:{port}"));
    Ok(())
}

#[test]
fn a_taken_port_fails_fast_with_the_reason() -> anyhow::Result<()> {
    let holder = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = holder.local_addr()?.port();
    let start = Instant::now();
    let err = Broker::start_on(port).expect_err("the port is taken");
    let text = format!("{err:#}");
    assert!(text.contains("already in use"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    Ok(())
}

#[test]
fn produce_100_idempotent_lz4_records_and_read_them_back_in_order() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    broker.create_topics(TOPICS)?;
    let topic = "icu.observations";
    let rt = tokio::runtime::Runtime::new()?;

    let producer = producer(&broker)?;
    let delivered: Vec<(i32, i64)> = rt.block_on(async {
        // Enqueue all first so the producer batches (and compresses) them.
        let mut pending = Vec::with_capacity(N);
        for i in 0..N {
            let key = format!("bed-{}", i % 4);
            let value = serde_json::json!({"resourceType": "Bundle", "seq": i, "key": key});
            let payload = serde_json::to_vec(&value)?;
            let seq = i.to_string();
            let headers = headers(&[
                ("icu-seq-first", &seq),
                ("icu-seq-last", &seq),
                ("icu-device-id", &key),
                ("content-type", "application/fhir+json"),
            ]);
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            match producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((e, _)) => bail!("enqueue record {i}: {e}"),
            }
        }
        let mut out = Vec::with_capacity(N);
        for (i, f) in pending.into_iter().enumerate() {
            match f.await {
                Ok(Ok(d)) => out.push((d.partition, d.offset)),
                Ok(Err((e, _))) => bail!("delivery of record {i} failed: {e}"),
                Err(_) => bail!("delivery future of record {i} cancelled"),
            }
        }
        Ok(out)
    })?;
    producer.flush(Duration::from_secs(10))?;
    assert_eq!(delivered.len(), N);

    let consumer = consumer_from_start(&broker, topic)?;
    let got = consume(&consumer, N, Duration::from_secs(30))
        .with_context(|| format!("broker log:\n{}", broker.log_tail(30)))?;

    // Every record once, with its headers; per key (so per partition) in
    // production order, offsets increasing.
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for r in &got {
        let seq = r.value["seq"].as_u64().context("seq in value")?;
        assert_eq!(r.value["key"], r.key.as_str());
        assert_eq!(r.headers["icu-seq-first"], seq.to_string());
        assert_eq!(r.headers["icu-seq-last"], seq.to_string());
        assert_eq!(r.headers["icu-device-id"], r.key);
        assert_eq!(r.headers["content-type"], "application/fhir+json");
        assert_eq!(
            delivered[seq as usize],
            (r.partition, r.offset),
            "delivery report of {seq}"
        );
        if let Some(prev) = last_offset.insert(r.partition, r.offset) {
            assert!(
                r.offset > prev,
                "offsets increase in partition {}",
                r.partition
            );
        }
        per_key.entry(r.key.clone()).or_default().push(seq);
    }
    assert_eq!(per_key.len(), 4);
    for (key, seqs) in &per_key {
        let k: u64 = key.trim_start_matches("bed-").parse()?;
        let want: Vec<u64> = (0..N as u64).filter(|i| i % 4 == k).collect();
        assert_eq!(seqs, &want, "records of {key} complete and in order");
    }
    Ok(())
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ABC[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

/// What is changed in flight, after signing.
#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    Nothing,
    /// A digit of the value.
    Value,
    /// The `icu-seq-last` header (42 becomes 43).
    SeqHeader,
}

/// Produce one signed record the way the gateway does: over the value bytes alone (`ed25519`,
/// the older scheme) or over its envelope (`ed25519-envelope-v1`, the default), then changed in
/// flight as `tamper` says.
fn produce_signed(
    broker: &Broker,
    topic: &str,
    key: &SigningKey,
    envelope: bool,
    tamper: Tamper,
) -> anyhow::Result<()> {
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "147842"}]},
                "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "urn:iso:std:iso:11073:10101", "code": "150456"}]},
                "valueQuantity": {"value": 97, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}}
        ]
    });
    let mut value = serde_json::to_vec(&bundle)?;
    let record_key = "patient-0001";
    let mut fields = vec![
        ("icu-stream", "observations"),
        ("icu-key-id", "test-key-1"),
        ("icu-gateway-id", "gw-test"),
        ("icu-device-id", "mon-bed-01"),
        ("icu-bed", "bed-01"),
        ("icu-patient-id", record_key),
        ("icu-seq-first", "41"),
        ("icu-seq-last", "42"),
        ("content-type", "application/fhir+json"),
        ("ce_specversion", "1.0"),
        ("ce_id", "gw-test:observations:mon-bed-01:41-42"),
        ("ce_source", "urn:icu-gateway:gw-test:mon-bed-01"),
        ("ce_type", "org.icu-gateway.observations.v1"),
        ("ce_time", "2026-12-06T10:00:00Z"),
    ];
    let (alg, signature) = if envelope {
        let map: BTreeMap<&str, &str> = fields.iter().copied().collect();
        let covered = icu_cloud_bridge::signing::envelope::envelope(
            Some(record_key),
            |name| map.get(name).copied(),
            &value,
        );
        (
            "ed25519-envelope-v1",
            base64(&key.sign(&covered).to_bytes()),
        )
    } else {
        ("ed25519", base64(&key.sign(&value).to_bytes()))
    };
    match tamper {
        Tamper::Nothing => {}
        Tamper::Value => {
            let pos = value
                .iter()
                .position(|b| *b == b'7')
                .context("a digit to alter")?;
            value[pos] = b'8';
        }
        Tamper::SeqHeader => {
            for f in &mut fields {
                if f.0 == "icu-seq-last" {
                    f.1 = "43";
                }
            }
        }
    }
    fields.push(("icu-signature", &signature));
    fields.push(("icu-signature-alg", alg));
    let headers = headers(&fields);
    let producer = producer(broker)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let record = FutureRecord::to(topic)
            .key(record_key)
            .payload(&value)
            .headers(headers);
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => Ok(()),
            Err((e, _)) => bail!("produce signed record: {e}"),
        }
    })
}

fn run_consumer(
    py: &std::path::Path,
    broker: &Broker,
    topic: &str,
    pubkey: &std::path::Path,
) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(py)
        .arg(script("kafka_consume.py"))
        .args(["--brokers", &broker.addr, "--topic", topic])
        .arg("--public-key")
        .arg(pubkey)
        .args(["--max", "1", "--timeout", "60"])
        .output()
        .context("run scripts/kafka_consume.py")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("kafka_consume.py on {topic}:\n{stdout}{stderr}");
    Ok((out.status.code().unwrap_or(-1), stdout, stderr))
}

#[test]
fn stock_python_consumer_verifies_the_signature() -> anyhow::Result<()> {
    let Some(py) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ICU_PYTHON is not set under CI: run the suite through scripts/test"
        );
        eprintln!("skipped: ICU_PYTHON not set (scripts/test sets it)");
        return Ok(());
    };
    let broker = Broker::start()?;
    broker.create_topics(TOPICS)?;

    // A throwaway key: seeded from the clock, never stored but in a temp dir.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = (nanos >> ((i % 16) * 8)) as u8
            ^ (i as u8).wrapping_mul(151)
            ^ std::process::id() as u8;
    }
    let key = SigningKey::from_bytes(&seed);
    let dir = tempfile::tempdir()?;
    let pubkey = dir.path().join("gateway.pub");
    std::fs::write(
        &pubkey,
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .context("public key PEM")?,
    )?;

    produce_signed(&broker, "icu.observations", &key, true, Tamper::Nothing)?;
    let (code, stdout, _) = run_consumer(&py, &broker, "icu.observations", &pubkey)?;
    assert_eq!(code, 0, "consumer exit status");
    assert!(stdout.contains("signature=ok"), "{stdout}");
    assert!(stdout.contains("key=patient-0001"), "{stdout}");
    assert!(stdout.contains("device=mon-bed-01"), "{stdout}");
    assert!(stdout.contains("seq=41..42"), "{stdout}");
    assert!(stdout.contains("entries=2"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == "1 records, 1 signatures ok, 0 bad"),
        "{stdout}"
    );

    // A value changed after signing is reported BAD, with exit status 1; so is a covered header
    // (the seq range a consumer accounts by) edited in flight. The older scheme (the value
    // alone) still verifies.
    for (topic, envelope, tamper, expect_ok) in [
        ("icu.alarms", true, Tamper::Value, false),
        ("icu.adt", true, Tamper::SeqHeader, false),
        ("icu.deadletter", false, Tamper::Nothing, true),
        ("icu.audit", false, Tamper::Value, false),
    ] {
        produce_signed(&broker, topic, &key, envelope, tamper)?;
        let (code, stdout, _) = run_consumer(&py, &broker, topic, &pubkey)?;
        let summary = if expect_ok {
            "1 records, 1 signatures ok, 0 bad"
        } else {
            "1 records, 0 signatures ok, 1 bad"
        };
        assert_eq!(code, i32::from(!expect_ok), "{topic}: consumer exit status");
        assert!(stdout.lines().any(|l| l == summary), "{topic}: {stdout}");
    }
    Ok(())
}

/// `icu-gateway topics create` makes every topic of the config on a real broker (tansu), with
/// the partitions asked for, and a second run leaves them as they are.
#[test]
fn topics_create_makes_every_topic_of_the_config_once() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        icu_tests::gateway::config_text(dir.path(), 1, Some(&broker.addr), ""),
    )?;
    let config = config.to_string_lossy().into_owned();
    let args = [
        "topics",
        "create",
        "--config",
        &config,
        "--partitions",
        "3",
        "--replication-factor",
        "1",
    ];
    let ours = [
        "icu.alarms",
        "icu.adt",
        "icu.audit",
        "icu.observations",
        "icu.waveforms",
        "icu.deadletter",
        "icu.devices",
    ];
    let first = icu_tests::http::gateway_cli(&args, "")?;
    eprintln!("{first}");
    assert!(
        first
            .lines()
            .any(|l| l.starts_with("icu.waveforms: created")
                && l.contains("segment.bytes=268435456")),
        "the waveforms topic gets smaller log segments:\n{first}"
    );
    for topic in ours {
        assert!(
            first
                .lines()
                .any(|l| l.starts_with(&format!("{topic}: created (3 partitions, replication 1"))),
            "{topic} not created:\n{first}"
        );
    }
    let metadata = broker.metadata()?;
    for topic in ours {
        let t = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .with_context(|| format!("{topic} not in the broker's metadata"))?;
        assert_eq!(t.partitions().len(), 3, "{topic} partitions");
    }
    let again = icu_tests::http::gateway_cli(&args, "")?;
    for topic in ours {
        assert!(
            again
                .lines()
                .any(|l| l == format!("{topic}: exists (left as it is)")),
            "{topic} on the second run:\n{again}"
        );
    }
    Ok(())
}
