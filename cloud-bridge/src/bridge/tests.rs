use std::time::Instant;

use icu_protos::v1::{stored_record::Body, Observation, StoredRecord};

use std::sync::Mutex;

use super::*;
use crate::headers;
use crate::signing::GatewayKey;
use icu_outbox::{Fetched, MemoryOutbox, OutboxError, OutboxRecord};
use icu_protos::v1::{AdtEvent, Alarm, DeadLetter};

fn obs_record(device: &str, seq: u64) -> OutboxRecord {
    OutboxRecord {
        stream: Stream::Observations,
        device_id: device.into(),
        seq,
        bed: "bed-1".into(),
        record: StoredRecord {
            gateway_id: "gw-test".into(),
            device_id: device.into(),
            seq,
            body: Some(Body::Observation(Observation {
                device_id: device.into(),
                seq,
                mdc_code: 150456,
                value: Some(97.0),
                unit_ucum: "%".into(),
                receive_time_us: 1_700_000_000_000_000,
                ..Default::default()
            })),
            traceparent: String::new(),
        },
    }
}

fn quick_config(brokers: &str) -> BridgeConfig {
    BridgeConfig {
        gateway_id: "gw-test".into(),
        brokers: brokers.into(),
        message_timeout_ms: 1000,
        poll_interval: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..BridgeConfig::default()
    }
}

#[test]
fn unreachable_broker_goes_offline_and_marks_nothing() {
    let outbox = Arc::new(MemoryOutbox::new());
    for seq in 1..=3 {
        outbox.push(obs_record("mon-1", seq));
    }
    let stats = BridgeStats::new();
    let actor = BridgeActor::new(
        quick_config("127.0.0.1:1"),
        outbox.clone(),
        GatewayKey::generate().into(),
        Terminology::builtin(),
        stats.clone(),
    )
    .unwrap();

    let reason = actix::System::new().block_on({
        let stats = stats.clone();
        async move {
            let addr = actor.start();
            // A wake is only a hint; sending one must be harmless.
            addr.try_send(Wake).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let BridgeState::Offline { reason } = stats.state() {
                    break reason;
                }
                assert!(
                    Instant::now() < deadline,
                    "state stuck at {:?}",
                    stats.state()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    assert!(
        reason.contains("127.0.0.1:1"),
        "reason names the brokers: {reason}"
    );
    assert_eq!(outbox.unsent_len(), 3);
    assert!(outbox.sent_seqs("mon-1").is_empty());
    assert_eq!(stats.forwarded_records(), 0);
    assert_eq!(stats.in_flight(), 0);
    assert!(stats.broker_errors() >= 1);
    assert!(stats.cycles() >= 1);
}

#[test]
fn config_is_validated_with_field_names() {
    assert!(quick_config("k:9092").validate().is_ok());
    let cases: Vec<(BridgeConfig, &str)> = vec![
        (
            BridgeConfig {
                gateway_id: " ".into(),
                ..quick_config("k:9092")
            },
            "gateway_id",
        ),
        (quick_config(""), "brokers"),
        (
            BridgeConfig {
                fetch_limit: 0,
                ..quick_config("k:9092")
            },
            "fetch_limit",
        ),
        (
            BridgeConfig {
                max_per_bundle: 0,
                ..quick_config("k:9092")
            },
            "max_per_bundle",
        ),
        (
            BridgeConfig {
                waveform_bundle_ms: 99,
                ..quick_config("k:9092")
            },
            "waveform_bundle_ms",
        ),
        (
            BridgeConfig {
                max_waveform_segments: 0,
                ..quick_config("k:9092")
            },
            "max_waveform_segments",
        ),
        (
            BridgeConfig {
                topic_adt: "  ".into(),
                ..quick_config("k:9092")
            },
            "topic_adt",
        ),
        (
            BridgeConfig {
                topic_deadletter: " ".into(),
                ..quick_config("k:9092")
            },
            "topic_deadletter",
        ),
        (
            BridgeConfig {
                topic_alarms: String::new(),
                ..quick_config("k:9092")
            },
            "topic_alarms",
        ),
        (
            BridgeConfig {
                compression: "brotli".into(),
                ..quick_config("k:9092")
            },
            "compression",
        ),
        (
            BridgeConfig {
                max_backoff: Duration::ZERO,
                ..quick_config("k:9092")
            },
            "max_backoff",
        ),
        (
            BridgeConfig {
                live_window: Duration::ZERO,
                ..quick_config("k:9092")
            },
            "live_window",
        ),
        (
            BridgeConfig {
                backlog_rate: 0,
                ..quick_config("k:9092")
            },
            "backlog_rate",
        ),
    ];
    for (config, field) in cases {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(field), "{err}");
        let err = BridgeActor::new(
            config,
            Arc::new(MemoryOutbox::new()),
            GatewayKey::generate().into(),
            Terminology::builtin(),
            BridgeStats::new(),
        )
        .err()
        .expect("invalid config rejected");
        assert!(matches!(err, BridgeError::Config { .. }));
    }
}

#[test]
fn default_config_matches_the_documented_defaults() {
    let c = BridgeConfig::default();
    assert_eq!(c.topic_observations, "icu.observations");
    assert_eq!(c.topic(Stream::Observations), "icu.observations");
    assert_eq!(c.topic(Stream::Alarms), "icu.alarms");
    assert_eq!(c.topic(Stream::Adt), "icu.adt");
    assert_eq!(c.topic_deadletter, "icu.deadletter");
    assert_eq!(c.topic(Stream::DeadLetters), "icu.deadletter");
    assert_eq!(c.topic(Stream::Audit), "icu.audit");
    let topics: BTreeSet<&str> = Stream::ALL.iter().map(|s| c.topic(*s)).collect();
    assert_eq!(topics.len(), Stream::ALL.len(), "one topic per stream");
    assert_eq!(
        (c.fetch_limit, c.max_per_bundle, c.message_timeout_ms),
        (5000, 100, 30_000)
    );
    assert_eq!(c.poll_interval, Duration::from_millis(200));
    assert_eq!(c.live_window, Duration::from_secs(10));
    assert_eq!(c.backlog_rate, 100_000);
    assert_eq!(c.max_backoff, Duration::from_secs(10));
    assert_eq!(c.compression, "lz4");
    assert_eq!(c.topic(Stream::Waveforms), "icu.waveforms");
    assert_eq!((c.waveform_bundle_ms, c.max_waveform_segments), (5000, 64));
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let max = Duration::from_secs(1);
    let mut b = Duration::ZERO;
    let mut seen = Vec::new();
    for _ in 0..5 {
        b = next_backoff(b, max);
        seen.push(b.as_millis());
    }
    assert_eq!(seen, [250, 500, 1000, 1000, 1000]);
}

#[test]
fn topic_check_distinguishes_missing_from_other_errors() {
    assert!(topic_check("t", Some((None, 3))).is_ok());
    assert!(matches!(
        topic_check("t", None),
        Err(CycleError::TopicMissing(_))
    ));
    assert!(matches!(
        topic_check("t", Some((None, 0))),
        Err(CycleError::TopicMissing(_))
    ));
    assert!(matches!(
        topic_check(
            "t",
            Some((
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART),
                0
            ))
        ),
        Err(CycleError::TopicMissing(_))
    ));
    assert!(matches!(
        topic_check(
            "t",
            Some((
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE),
                1
            ))
        ),
        Err(CycleError::Offline(_))
    ));
}

#[test]
fn key_is_the_patient_when_associated_else_the_device() {
    let mut with_patient = obs_record("mon-1", 1);
    if let Some(Body::Observation(obs)) = &mut with_patient.record.body {
        obs.patient_id = "MRN123".into();
    }
    let adt = OutboxRecord {
        stream: Stream::Adt,
        device_id: "adt".into(),
        seq: 1,
        bed: "bed-1".into(),
        record: StoredRecord {
            gateway_id: "gw-test".into(),
            device_id: "adt".into(),
            seq: 1,
            body: Some(Body::AdtEvent(AdtEvent {
                event: "A01".into(),
                patient_id: "MRN9".into(),
                event_time_us: 1_700_000_000_000_000,
                ..Default::default()
            })),
            traceparent: String::new(),
        },
    };
    let dead_letter = OutboxRecord {
        stream: Stream::DeadLetters,
        device_id: "mon-2".into(),
        seq: 1,
        bed: "bed-2".into(),
        record: StoredRecord {
            gateway_id: "gw-test".into(),
            device_id: "mon-2".into(),
            seq: 1,
            body: Some(Body::DeadLetter(DeadLetter {
                device_id: "mon-2".into(),
                reason: "bad checksum".into(),
                ..Default::default()
            })),
            traceparent: String::new(),
        },
    };
    let audit = |seq: u64, entry_seq: u64| OutboxRecord {
        stream: Stream::Audit,
        device_id: icu_outbox::AUDIT_DEVICE.into(),
        seq,
        bed: String::new(),
        record: StoredRecord {
            gateway_id: String::new(),
            device_id: icu_outbox::AUDIT_DEVICE.into(),
            seq,
            body: Some(Body::AuditEntry(icu_protos::v1::AuditEntry {
                seq: entry_seq,
                time_us: 1_700_000_000_000_000,
                account: "dr.jo".into(),
                role: "physician".into(),
                action: "patient_read".into(),
                target_kind: "patient".into(),
                target_id: "MRN9".into(),
                outcome: "success".into(),
                prev_hash: vec![0; 32],
                hash: vec![1; 32],
                key_id: "k".into(),
                signature: vec![2; 64],
                ..Default::default()
            })),
            traceparent: String::new(),
        },
    };
    let plan = plan::plan_bundles(
        vec![
            with_patient,
            obs_record("mon-1", 2),
            adt,
            dead_letter,
            audit(1, 1),
            audit(2, 7),
        ],
        100,
    );
    assert_eq!(
        plan.skipped
            .iter()
            .map(|s| (s.stream, s.seq, s.kind))
            .collect::<Vec<_>>(),
        [(Stream::Audit, 2, "audit_entry")],
        "an entry whose seq is not its record's is never forwarded under that seq"
    );
    let keys: Vec<RecordKey> = plan
        .bundles
        .iter()
        .map(|b| record_key(b, "gw-test"))
        .collect();
    assert_eq!(
        keys,
        [
            RecordKey::Patient("MRN9"),
            RecordKey::Gateway("gw-test"),
            RecordKey::Patient("MRN123"),
            RecordKey::Device("mon-1"),
            RecordKey::Device("mon-2")
        ],
        "audit entries are keyed by the gateway, even when they name a patient"
    );
    // The audit bundle maps to a FHIR AuditEvent, signed like every record: over its envelope,
    // which the verifier rebuilds from the record as received.
    let key = GatewayKey::generate();
    let mapper = Mapper {
        fhir: crate::fhir::FhirContext::with_default_base("gw-test"),
        max_per_bundle: 100,
        waveform_span_us: 5_000_000,
        max_waveform_segments: 64,
        key: key.clone().into(),
        terminology: Terminology::builtin(),
        envelope: true,
        protobuf: false,
    };
    let signed = mapper.value(&plan.bundles[1]).unwrap();
    let header = |name: &str| {
        signed
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header(headers::KEY_ID).as_deref(), Some(key.key_id()));
    assert_eq!(header(headers::STREAM).as_deref(), Some("audit"));
    assert_eq!(signed.key, "gw-test");
    let json: serde_json::Value = serde_json::from_slice(&signed.value).unwrap();
    assert_eq!(json["resourceType"], "AuditEvent");
    let consumed = as_consumed(&signed, &key);
    assert_eq!(consumed.signature_ok, Some(true));
    let content_types: Vec<&str> = plan
        .bundles
        .iter()
        .map(|b| content_type(b.stream))
        .collect();
    assert_eq!(
        content_types,
        [
            headers::CONTENT_TYPE_FHIR_JSON,
            headers::CONTENT_TYPE_FHIR_JSON,
            headers::CONTENT_TYPE_FHIR_JSON,
            headers::CONTENT_TYPE_FHIR_JSON,
            headers::CONTENT_TYPE_JSON
        ]
    );
    assert_eq!(keys[0].as_str(), "MRN9");
    assert_eq!(keys[1].as_str(), "gw-test");
    assert_eq!(keys[3].as_str(), "mon-1");
}

/// A [`MemoryOutbox`] that logs every `mark_sent` with the time it came, i.e. the order in which
/// Kafka confirmed the bundles.
#[derive(Default)]
struct RecordingOutbox {
    inner: MemoryOutbox,
    marks: Mutex<Vec<Mark>>,
}

/// One `mark_sent` call: stream, device, first seq, last seq, when.
type Mark = (Stream, String, u64, u64, Instant);

impl Outbox for RecordingOutbox {
    fn fetch_unsent(&self, request: &FetchRequest) -> Result<Fetched, OutboxError> {
        self.inner.fetch_unsent(request)
    }

    fn mark_sent(
        &self,
        stream: Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), OutboxError> {
        self.inner
            .mark_sent(stream, device_id, first_seq, last_seq)?;
        self.marks.lock().unwrap().push((
            stream,
            device_id.to_owned(),
            first_seq,
            last_seq,
            Instant::now(),
        ));
        Ok(())
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn obs_received(device: &str, seq: u64, received_us: i64) -> OutboxRecord {
    let mut rec = obs_record(device, seq);
    if let Some(Body::Observation(obs)) = &mut rec.record.body {
        obs.receive_time_us = received_us;
    }
    rec
}

fn alarm_record(device: &str, seq: u64, event_time_us: i64) -> OutboxRecord {
    OutboxRecord {
        stream: Stream::Alarms,
        device_id: device.into(),
        seq,
        bed: "bed-1".into(),
        record: StoredRecord {
            gateway_id: "gw-test".into(),
            device_id: device.into(),
            seq,
            body: Some(Body::Alarm(Alarm {
                device_id: device.into(),
                seq,
                bed: "bed-1".into(),
                alarm_id: format!("{device}:spo2-low"),
                mdc_code: 150456,
                text: "SpO2 low".into(),
                priority: "PH".into(),
                phase: "start".into(),
                state: "active".into(),
                event_time_us,
                alert_type: "SP".into(),
                source: "limit".into(),
                patient_id: String::new(),
                ..Default::default()
            })),
            traceparent: String::new(),
        },
    }
}

/// librdkafka's in-process mock cluster (one broker) with the bridge's topics.
fn mock_cluster(
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    mock_cluster_without(None)
}

/// [`mock_cluster`] without one of the topics.
fn mock_cluster_without(
    missing: Option<&str>,
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    for topic in [
        "icu.observations",
        "icu.alarms",
        "icu.adt",
        "icu.deadletter",
        "icu.audit",
        "icu.waveforms",
        "icu.devices",
    ] {
        if Some(topic) != missing {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
    }
    cluster
}

/// Through the real producer against librdkafka's in-process mock cluster: after an outage the
/// alarms are confirmed before the first observation bundle, and a live device's new readings
/// go out within a cycle or two while another device's hour-old backlog drains at
/// `backlog_rate` (at 500/s the 6000 backlog readings would take 12 s: a live reading held
/// behind them would wait far longer than the 4 s allowed).
#[test]
fn alarms_go_first_and_a_live_device_is_not_held_behind_a_rate_limited_backlog() {
    let cluster = mock_cluster();
    let outbox = Arc::new(RecordingOutbox::default());
    let start_us = now_us();
    let hour_ago = start_us - 3_600_000_000;
    const BACKLOG: u64 = 6000;
    const RATE: u64 = 500;
    for seq in 1..=BACKLOG {
        outbox
            .inner
            .push(obs_received("old", seq, hour_ago + seq as i64));
    }
    for seq in 1..=3 {
        outbox
            .inner
            .push(alarm_record("old", seq, hour_ago + seq as i64));
        outbox.inner.push(alarm_record("new", seq, start_us));
    }
    let config = BridgeConfig {
        fetch_limit: 200,
        max_per_bundle: 50,
        backlog_rate: RATE,
        live_window: Duration::from_secs(10),
        ..quick_config(&cluster.bootstrap_servers())
    };
    let stats = BridgeStats::new();
    let actor = BridgeActor::new(
        config,
        outbox.clone(),
        GatewayKey::generate().into(),
        Terminology::builtin(),
        stats.clone(),
    )
    .unwrap();

    let started = Instant::now();
    let pushed_at: Vec<(u64, Instant)> = actix::System::new().block_on({
        let outbox = outbox.clone();
        async move {
            let _addr = actor.start();
            // The live device keeps sending: 5 readings every 100 ms for 2 s.
            let mut pushed = Vec::new();
            let mut seq = 0;
            for _ in 0..20 {
                for _ in 0..5 {
                    seq += 1;
                    outbox.inner.push(obs_received("new", seq, now_us()));
                    pushed.push((seq, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while outbox.inner.sent_seqs_of(Stream::Observations, "new").len() < pushed.len() {
                assert!(Instant::now() < deadline, "live readings not forwarded");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pushed
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let marks = outbox.marks.lock().unwrap().clone();

    // Alarms first: every alarm confirmed before the first observation bundle.
    let first_obs = marks
        .iter()
        .position(|m| m.0 == Stream::Observations)
        .expect("observations forwarded");
    let alarm_marks: Vec<usize> = (0..marks.len())
        .filter(|i| marks[*i].0 == Stream::Alarms)
        .collect();
    // Six alarm records, two devices: one bundle each (a record per device per cycle).
    assert_eq!(alarm_marks.len(), 2, "{marks:?}");
    let alarm_records: u64 = alarm_marks
        .iter()
        .map(|i| marks[*i].3 - marks[*i].2 + 1)
        .sum();
    assert_eq!(alarm_records, 6, "{marks:?}");
    assert!(
        alarm_marks.iter().all(|i| *i < first_obs),
        "alarms before observations: {marks:?}"
    );

    // The live device: every reading, in order, each soon after it was stored.
    let live_sent = outbox.inner.sent_seqs_of(Stream::Observations, "new");
    assert_eq!(live_sent, (1..=pushed_at.len() as u64).collect::<Vec<_>>());
    let worst = pushed_at
        .iter()
        .map(|(seq, at)| {
            let marked = marks
                .iter()
                .find(|m| m.0 == Stream::Observations && m.1 == "new" && (m.2..=m.3).contains(seq))
                .expect("marked")
                .4;
            marked.saturating_duration_since(*at)
        })
        .max()
        .unwrap();
    assert!(
        worst < Duration::from_secs(4),
        "a live reading waited {worst:?} behind the backlog"
    );

    // The backlog: in order from its head, progressing, but never faster than the rate (one
    // second of burst).
    let old_sent = outbox.inner.sent_seqs_of(Stream::Observations, "old");
    assert!(!old_sent.is_empty(), "the backlog drains too");
    assert_eq!(old_sent, (1..=old_sent.len() as u64).collect::<Vec<_>>());
    let cap = (RATE as f64 * (elapsed + 1.0)) as usize;
    assert!(
        old_sent.len() <= cap,
        "{} backlog readings in {elapsed:.1} s exceeds {RATE}/s",
        old_sent.len()
    );
    assert!(outbox.inner.unsent_len() as u64 >= BACKLOG - cap as u64);
    drop(cluster);
}

/// A retried produce answered DUPLICATE_SEQUENCE_NUMBER (what a broker that recorded the batch's
/// sequence number but lost the batch itself answers, e.g. tansu's S3 engine killed mid-produce)
/// is reported by librdkafka as delivered, without an offset. Such a report is no proof: the
/// bundle is not marked sent but produced again, and every seq marked sent is on the topic.
#[test]
fn a_delivery_report_without_an_offset_is_not_marked_sent() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = mock_cluster();
    // The first produce request is answered "duplicate" without the broker storing it.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER],
    );
    // Three devices, so the first produce request carries a batch of three records: librdkafka
    // reports them at offsets -1, 0 and 1 (the answer's base offset -1, counted up).
    let outbox = Arc::new(RecordingOutbox::default());
    let devices = ["mon-1", "mon-2", "mon-3"];
    for device in devices {
        for seq in 1..=3 {
            outbox.inner.push(obs_record(device, seq));
        }
    }
    let stats = BridgeStats::new();
    run_until(
        &cluster.bootstrap_servers(),
        &outbox,
        GatewayKey::generate(),
        stats.clone(),
        move |o| {
            devices
                .iter()
                .all(|d| o.sent_seqs_of(Stream::Observations, d) == [1, 2, 3])
        },
    );
    let (_, records) = crate::consume::consume(&crate::consume::ConsumeOptions {
        brokers: cluster.bootstrap_servers(),
        topic: "icu.observations".into(),
        public_key: None,
        idle_timeout: Duration::from_secs(1),
        max_wait: Duration::from_secs(20),
    })
    .unwrap();
    let on_topic: BTreeSet<(String, u64)> = records
        .iter()
        .flat_map(|r| {
            let device = r.device_id.clone().unwrap();
            (r.seq_first.unwrap()..=r.seq_last.unwrap()).map(move |seq| (device.clone(), seq))
        })
        .collect();
    let marks = outbox.marks.lock().unwrap().clone();
    for (_, device, first, last, _) in &marks {
        for seq in *first..=*last {
            assert!(
                on_topic.contains(&(device.clone(), seq)),
                "{device} seq {seq} marked sent but not on the topic ({on_topic:?}; marks {marks:?})"
            );
        }
    }
    assert!(
        stats.delivery_errors() >= 1,
        "the report without an offset counts as a failed delivery"
    );
}

#[test]
fn values_mapped_on_several_threads_are_in_bundle_order_and_the_same_as_on_one() {
    let mapper = Mapper {
        fhir: crate::fhir::FhirContext::with_default_base("gw1"),
        max_per_bundle: 3,
        waveform_span_us: 5_000_000,
        max_waveform_segments: 64,
        key: GatewayKey::generate().into(),
        terminology: Terminology::builtin(),
        envelope: true,
        protobuf: false,
    };
    let bundles: Vec<PlannedBundle> = (0..23u64)
        .map(|i| PlannedBundle {
            stream: Stream::Observations,
            device_id: format!("mon-{i}"),
            bed: "bed-1".into(),
            patient_id: String::new(),
            first_seq: 1,
            last_seq: 1,
            observations: vec![Observation {
                device_id: format!("mon-{i}"),
                seq: 1,
                mdc_code: 150456,
                value: Some(i as f64),
                receive_time_us: 1_700_000_000_000_000,
                ..Default::default()
            }],
            alarms: Vec::new(),
            adt: None,
            dead_letter: None,
            waveforms: Vec::new(),
            snippet: None,
            audit: None,
            traceparent: String::new(),
        })
        .collect();
    let one: Vec<Value> = bundles.iter().map(|b| mapper.value(b)).collect();
    for threads in [2, 3, MAX_MAP_THREADS] {
        let many = map_and_sign_on(&mapper, &bundles, threads);
        assert_eq!(one.len(), many.len());
        for (a, b) in one.iter().zip(&many) {
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            assert_eq!(
                (&a.key, &a.headers, &a.value),
                (&b.key, &b.headers, &b.value),
                "same bytes and signature in the same place"
            );
        }
    }
    let default = map_and_sign(&mapper, &bundles);
    assert_eq!(default.len(), one.len());
}

/// A produced record as a consumer reads it back, verified with `key`.
fn as_consumed(signed: &SignedRecord, key: &GatewayKey) -> crate::consume::ConsumedRecord {
    let headers = signed
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    crate::consume::ConsumedRecord::new(
        0,
        0,
        Some(signed.key.clone()),
        headers,
        signed.value.clone(),
        Some(&key.verifying_key()),
    )
}

/// The envelope signature covers the record key and every header a consumer accounts by: any of
/// them edited in flight fails verification, as does the value. `signature = "value"` signs the
/// value alone (header `ed25519`), for consumers not yet updated.
#[test]
fn the_signature_covers_the_key_and_the_headers_a_consumer_accounts_by() {
    let key = GatewayKey::generate();
    let mut record = obs_record("mon-1", 7);
    if let Some(Body::Observation(obs)) = &mut record.record.body {
        obs.patient_id = "MRN123".into();
    }
    let plan = plan::plan_bundles(vec![record], 100);
    let mut mapper = Mapper {
        fhir: crate::fhir::FhirContext::with_default_base("gw-test"),
        max_per_bundle: 100,
        waveform_span_us: 5_000_000,
        max_waveform_segments: 64,
        key: key.clone().into(),
        terminology: Terminology::builtin(),
        envelope: true,
        protobuf: true,
    };
    let signed = mapper.value(&plan.bundles[0]).unwrap();
    // The protobuf form: the canonical messages, signed over the value bytes.
    {
        use icu_protos::Message as _;
        let pb = signed.protobuf.as_ref().expect("a protobuf record");
        let batch = icu_protos::v1::ObservationBatch::decode(pb.value.as_slice()).unwrap();
        assert_eq!(
            (batch.gateway_id.as_str(), batch.device_id.as_str()),
            ("gw-test", "mon-1")
        );
        assert_eq!(batch.observations.len(), 1);
        assert_eq!(batch.observations[0].seq, 7);
        let stream_key = icu_protos::v1::StreamKey::decode(pb.key.as_slice()).unwrap();
        assert_eq!(
            (
                stream_key.gateway_id.as_str(),
                stream_key.device_id.as_str()
            ),
            ("gw-test", "mon-1")
        );
        let header = |name: &str| {
            pb.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(
            header(headers::SIGNATURE_ALG),
            headers::SIGNATURE_ALG_ED25519
        );
        assert_eq!(header(headers::SCHEMA_VERSION), "icu.v1.ObservationBatch");
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(header(headers::SIGNATURE))
            .unwrap();
        let signature = ed25519_dalek::Signature::from_slice(&signature).unwrap();
        use ed25519_dalek::Verifier as _;
        assert!(key.verifying_key().verify(&pb.value, &signature).is_ok());
    }
    let alg = |s: &SignedRecord| {
        s.headers
            .iter()
            .find(|(n, _)| *n == headers::SIGNATURE_ALG)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        alg(&signed).as_deref(),
        Some(headers::SIGNATURE_ALG_ENVELOPE_V1)
    );
    assert_eq!(signed.key, "MRN123");
    let header = |name: &str| {
        signed
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    // CloudEvents attributes, derived from the stored record (so a re-send carries the same).
    assert_eq!(header(headers::CE_SPECVERSION), Some("1.0"));
    assert_eq!(
        header(headers::CE_ID),
        Some("gw-test:observations:mon-1:7-7")
    );
    assert_eq!(
        header(headers::CE_SOURCE),
        Some("urn:icu-gateway:gw-test:mon-1")
    );
    assert_eq!(
        header(headers::CE_TYPE),
        Some("org.icu-gateway.observations.v1")
    );
    assert_eq!(header(headers::CE_TIME), Some("2023-11-14T22:13:20Z"));
    assert_eq!(as_consumed(&signed, &key).signature_ok, Some(true));
    for name in crate::signing::envelope::COVERED {
        let mut edited = as_consumed(&signed, &key);
        let was = edited.headers.insert(name.to_owned(), "9".into());
        assert!(was.is_some(), "{name} is on the record");
        let again = crate::consume::ConsumedRecord::new(
            0,
            0,
            edited.key.clone(),
            edited.headers,
            edited.value,
            Some(&key.verifying_key()),
        );
        assert_eq!(again.signature_ok, Some(false), "{name} edited in flight");
    }
    let mut moved = as_consumed(&signed, &key);
    moved.key = Some("MRN999".into());
    let moved = crate::consume::ConsumedRecord::new(
        0,
        0,
        moved.key,
        moved.headers,
        moved.value,
        Some(&key.verifying_key()),
    );
    assert_eq!(moved.signature_ok, Some(false), "record key edited");

    mapper.envelope = false;
    let legacy = mapper.value(&plan.bundles[0]).unwrap();
    assert_eq!(
        alg(&legacy).as_deref(),
        Some(headers::SIGNATURE_ALG_ED25519)
    );
    assert_eq!(as_consumed(&legacy, &key).signature_ok, Some(true));
    let signature = legacy
        .headers
        .iter()
        .find(|(n, _)| *n == headers::SIGNATURE)
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(crate::signing::verify_base64(
        &key.verifying_key(),
        &legacy.value,
        &signature
    ));
}

/// Runs a bridge (quick config, signing with `key`) over `outbox` against `brokers` until
/// `done` holds for the outbox; fails after 30 s.
fn run_until(
    brokers: &str,
    outbox: &Arc<RecordingOutbox>,
    key: GatewayKey,
    stats: Arc<BridgeStats>,
    done: impl Fn(&MemoryOutbox) -> bool + 'static,
) {
    let actor = BridgeActor::new(
        quick_config(brokers),
        outbox.clone(),
        key.into(),
        Terminology::builtin(),
        stats,
    )
    .unwrap();
    actix::System::new().block_on({
        let outbox = outbox.clone();
        async move {
            let _addr = actor.start();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done(&outbox.inner) {
                assert!(Instant::now() < deadline, "not forwarded in 30 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
}

/// One-second ECG segment `seq` of `device` (500 Hz, 3 decimals), with a gap of 5 samples in
/// every third segment; received now.
fn waveform_record(device: &str, seq: u64, patient: &str) -> OutboxRecord {
    let gap = seq.is_multiple_of(3);
    let samples: Vec<i32> = (0..if gap { 495 } else { 500 })
        .map(|i| ((i * 37 + seq as i32 * 11) % 2001) - 1000)
        .collect();
    let mut rec = obs_record(device, seq);
    rec.stream = Stream::Waveforms;
    rec.record.body = Some(Body::Waveform(icu_protos::v1::WaveformSegment {
        mdc_code: 131330,
        mdc_refid: "MDC_ECG_ELEC_POTL_II".into(),
        unit_ucum: "mV".into(),
        sample_rate_hz: 500.0,
        sample_period_us: 2000.0,
        decimal_exponent: -3,
        scale: 1.0,
        first_sample_time_us: Some(1_700_000_000_000_000 + seq as i64 * 1_000_000),
        receive_time_us: now_us(),
        sample_count: 500,
        samples,
        gaps: if gap {
            vec![icu_protos::v1::SampleRun {
                start: 100,
                count: 5,
            }]
        } else {
            Vec::new()
        },
        patient_id: patient.into(),
        ..Default::default()
    }));
    rec
}

/// Curves never hold up alarms and readings: without the waveform topic the alarm and the
/// readings are forwarded, the curves stay unsent in the outbox, and the status names the
/// missing topic.
#[test]
fn a_missing_waveform_topic_holds_the_curves_alone() {
    let stats = BridgeStats::new();
    let cluster = mock_cluster_without(Some("icu.waveforms"));
    let outbox = Arc::new(RecordingOutbox::default());
    for seq in 1..=4 {
        outbox.inner.push(waveform_record("mon-1", seq, "P-7"));
    }
    for seq in 1..=3 {
        outbox.inner.push(obs_received("mon-1", seq, now_us()));
    }
    outbox.inner.push(alarm_record("mon-1", 1, now_us()));
    let brokers = cluster.bootstrap_servers();
    run_until(
        &brokers,
        &outbox,
        GatewayKey::generate(),
        stats.clone(),
        |o| {
            o.sent_seqs_of(Stream::Observations, "mon-1").len() == 3
                && o.sent_seqs_of(Stream::Alarms, "mon-1").len() == 1
        },
    );
    assert!(outbox
        .inner
        .sent_seqs_of(Stream::Waveforms, "mon-1")
        .is_empty());
    assert_eq!(
        outbox.inner.unsent_len(),
        4,
        "the four curves wait in the outbox"
    );
    assert_eq!(stats.held_topic().as_deref(), Some("icu.waveforms"));
    assert_eq!(stats.snapshot()["curves_held_for_topic"], "icu.waveforms");
}

/// Through the real producer against librdkafka's mock cluster: a device's waveform segments go
/// to `icu.waveforms` after its alarms (an alarm snippet, its own record on `icu.alarms`) and
/// its numerics, a record per few seconds of curves, signed and keyed by the patient; a
/// consumer verifies every record and reads every sample back, E exactly at the gaps.
#[test]
fn waveforms_are_forwarded_after_alarms_and_numerics_and_read_back_sample_for_sample() {
    let cluster = mock_cluster();
    let outbox = Arc::new(RecordingOutbox::default());
    let segments: Vec<OutboxRecord> = (1..=12)
        .map(|seq| waveform_record("mon-1", seq, "P-7"))
        .collect();
    for rec in &segments {
        outbox.inner.push(rec.clone());
    }
    for seq in 1..=3 {
        outbox.inner.push(obs_received("mon-1", seq, now_us()));
    }
    let mut snippet = alarm_record("mon-1", 1, now_us());
    snippet.record.body = Some(Body::AlarmSnippet(icu_protos::v1::AlarmSnippet {
        alarm_id: "mon-1:spo2-low".into(),
        alarm_text: "SpO2 low".into(),
        window_start_us: 1_700_000_000_000_000,
        window_end_us: 1_700_000_030_000_000,
        built_time_us: now_us(),
        patient_id: "P-7".into(),
        segments: vec![match &segments[2].record.body {
            Some(Body::Waveform(w)) => w.clone(),
            _ => unreachable!("a waveform record"),
        }],
        ..Default::default()
    }));
    outbox.inner.push(snippet);
    let key = GatewayKey::generate();
    let public = key.verifying_key();
    run_until(
        &cluster.bootstrap_servers(),
        &outbox,
        key,
        BridgeStats::new(),
        |o| o.sent_seqs_of(Stream::Waveforms, "mon-1").len() == 12,
    );
    let marks = outbox.marks.lock().unwrap().clone();
    let order: Vec<(Stream, u64, u64)> = marks.iter().map(|m| (m.0, m.2, m.3)).collect();
    assert_eq!(
        order,
        [
            (Stream::Alarms, 1, 1),
            (Stream::Observations, 1, 3),
            (Stream::Waveforms, 1, 5),
            (Stream::Waveforms, 6, 10),
            (Stream::Waveforms, 11, 12),
        ],
        "alarms, then numerics, then curves; 5 s of curves per record"
    );

    let read = |topic: &str| {
        crate::consume::consume(&crate::consume::ConsumeOptions {
            brokers: cluster.bootstrap_servers(),
            topic: topic.into(),
            public_key: Some(public),
            idle_timeout: Duration::from_secs(1),
            max_wait: Duration::from_secs(20),
        })
        .unwrap()
    };
    let (report, records) = read("icu.waveforms");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.signatures_ok, 3);
    let dev = report.stream("gw-test", "mon-1").unwrap();
    assert_eq!(
        (
            dev.waveform_segments,
            dev.waveform_samples,
            dev.waveform_gaps
        ),
        (12, 12 * 500, 4 * 5)
    );
    let mut decoded = Vec::new();
    for r in &records {
        assert_eq!(r.key.as_deref(), Some("P-7"));
        assert_eq!(r.headers[headers::STREAM], "waveforms");
        decoded.extend(crate::fhir::decode_value(&r.value).unwrap());
    }
    assert_eq!(decoded.len(), 12);
    for (d, rec) in decoded.iter().zip(&segments) {
        let Some(Body::Waveform(w)) = &rec.record.body else {
            unreachable!("a waveform record")
        };
        let present: Vec<i32> = d.samples.iter().flatten().copied().collect();
        assert_eq!(
            present, w.samples,
            "seq {}: every sample as written",
            rec.seq
        );
        let gaps: Vec<usize> = (0..d.samples.len())
            .filter(|i| d.samples[*i].is_none())
            .collect();
        let want: Vec<usize> = if rec.seq.is_multiple_of(3) {
            (100..105).collect()
        } else {
            Vec::new()
        };
        assert_eq!(gaps, want, "seq {}: E exactly at the gap", rec.seq);
    }

    let (report, records) = read("icu.alarms");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(records.len(), 1);
    let dev = report.stream("gw-test", "mon-1").unwrap();
    assert_eq!((dev.snippets, dev.snippet_segments), (1, 1));
    let snippet = crate::fhir::snippet_of(&records[0].value).unwrap().unwrap();
    assert_eq!(snippet.segments[0].gaps(), 5);
}
