//! The bridge's waveform path on a real broker (tansu): simulated monitor curves (PCD-01
//! waveform messages with dropped samples), decoded by the gateway's decoder, forwarded by the
//! real `BridgeActor` from an in-memory outbox to `icu.waveforms` (and an alarm snippet to
//! `icu.alarms`), then read back by `icu-bridge consume` and by the library decoder: every
//! sample as the simulator wrote it, `E` exactly where it dropped one. The gateway's store is
//! not in this test (its waveform stream is another part's); the 30-bed round trip covers the
//! whole chain.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor as _;
use chrono::{DateTime, Utc};
use icu_cloud_bridge::bridge::BridgeStats;
use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::fhir::{decode_value, snippet_of};
use icu_cloud_bridge::{BridgeActor, BridgeConfig, GatewayKey, MemoryOutbox, OutboxRecord, Stream};
use icu_drivers::hl7::{decode_pcd01_waveforms, WaveformConfig};
use icu_drivers::terminology::Terminology;
use icu_protos::v1::{stored_record::Body, AlarmSnippet, StoredRecord, WaveformSegment};
use icu_sim::physiology::Vitals;
use icu_sim::waveform::{GapPlan, SentSegment, WaveformMonitor};
use icu_tests::{bin_path, Broker, TOPICS};

fn record(stream: Stream, device: &str, seq: u64, body: Body) -> OutboxRecord {
    OutboxRecord {
        stream,
        device_id: device.into(),
        seq,
        bed: "bed-01".into(),
        record: StoredRecord {
            gateway_id: "icu-north".into(),
            device_id: device.into(),
            seq,
            body: Some(body),
            traceparent: String::new(),
        },
    }
}

/// `icu-bridge consume` on `topic`: exit code and summary.
fn consume_cli(broker: &Broker, topic: &str, public: &std::path::Path) -> (i32, String) {
    let out = Command::new(bin_path("icu-bridge"))
        .args(["consume", "--brokers", &broker.addr, "--topic", topic])
        .arg("--public-key")
        .arg(public)
        .args(["--idle-timeout-secs", "1", "--max-wait-secs", "60"])
        .output()
        .expect("run icu-bridge consume");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("icu-bridge consume {topic}:\n{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn simulated_curves_reach_kafka_sample_for_sample_with_gaps_as_e() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let mut topics = TOPICS.to_vec();
    topics.push("icu.waveforms");
    broker.create_topics(&topics)?;

    // 6.4 s of one monitor's five curves, a dropped run of 4 samples in every 301.
    let start: DateTime<Utc> = Utc::now();
    let bed = icu_sim::beds(1).remove(0);
    let device = bed.device_id.clone();
    let mut monitor = WaveformMonitor::new(bed, 7, start);
    monitor.gaps = GapPlan {
        every: 301,
        length: 4,
    };
    let vitals = Vitals {
        heart_rate: 80.0,
        spo2: 97.0,
        resp_rate: 14.0,
        temp_c: 37.0,
        nibp_sys: 120.0,
        nibp_dia: 70.0,
    };
    let (term, config) = (Terminology::builtin(), WaveformConfig::default());
    let outbox = Arc::new(MemoryOutbox::new());
    let mut sent: Vec<SentSegment> = Vec::new();
    let mut decoded_at_ingest: Vec<WaveformSegment> = Vec::new();
    for _ in 0..8 {
        for (message, segments) in monitor.next_messages(&vitals) {
            let now = Utc::now().timestamp_micros();
            let wire = decode_pcd01_waveforms(message.as_bytes(), now, &term, &config)
                .map_err(|e| anyhow::anyhow!("decode: {e}"))?;
            for mut seg in wire.segments {
                seg.device_id.clone_from(&device);
                seg.patient_id = "P-0042".into();
                seg.clock_synced = true;
                let seq = decoded_at_ingest.len() as u64 + 1;
                seg.seq = seq;
                outbox.push(record(
                    Stream::Waveforms,
                    &device,
                    seq,
                    Body::Waveform(seg.clone()),
                ));
                decoded_at_ingest.push(seg);
            }
            sent.extend(segments);
        }
    }
    assert_eq!(sent.len(), decoded_at_ingest.len());
    let dropped: usize = sent
        .iter()
        .map(|s| s.samples.iter().filter(|v| v.is_none()).count())
        .sum();
    assert!(dropped > 0, "the gap plan dropped samples");
    // The alarm's snippet: the curves of the first two segments' time.
    outbox.push(record(
        Stream::Alarms,
        &device,
        1,
        Body::AlarmSnippet(AlarmSnippet {
            alarm_id: "bed-01:spo2-low".into(),
            alarm_text: "SpO2 low".into(),
            alarm_seq: 0,
            alarm_start_us: start.timestamp_micros(),
            window_start_us: start.timestamp_micros(),
            window_end_us: start.timestamp_micros() + 1_600_000,
            patient_id: "P-0042".into(),
            segments: decoded_at_ingest[..5].to_vec(),
            built_time_us: Utc::now().timestamp_micros(),
            ..Default::default()
        }),
    ));

    let dir = tempfile::tempdir()?;
    let key = GatewayKey::generate();
    let public = dir.path().join("gateway.pub");
    key.write(&dir.path().join("gateway.key"), &public)?;
    let bridge = BridgeActor::new(
        BridgeConfig {
            gateway_id: "icu-north".into(),
            brokers: broker.addr.clone(),
            poll_interval: Duration::from_millis(50),
            ..BridgeConfig::default()
        },
        outbox.clone(),
        key.into(),
        Terminology::builtin(),
        BridgeStats::new(),
    )?;
    let segments = decoded_at_ingest.len();
    actix::System::new().block_on({
        let outbox = outbox.clone();
        let device = device.clone();
        async move {
            let _addr = bridge.start();
            let deadline = Instant::now() + Duration::from_secs(30);
            while outbox.sent_seqs_of(Stream::Waveforms, &device).len() < segments
                || outbox.sent_seqs_of(Stream::Alarms, &device).is_empty()
            {
                assert!(Instant::now() < deadline, "not forwarded in 30 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // The verifier: signed, gapless, and the curves counted to the dropped sample.
    let positions: usize = sent.iter().map(|s| s.samples.len()).sum();
    let (code, summary) = consume_cli(&broker, "icu.waveforms", &public);
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.contains(&format!(
            "{segments} segments, {positions} samples, {dropped} gaps)"
        )),
        "{summary}"
    );
    let (code, summary) = consume_cli(&broker, "icu.alarms", &public);
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.contains("1 alarm snippets (5 segments)"),
        "{summary}"
    );

    // Bit-exact: the samples consumed from Kafka are the samples the simulator wrote.
    let (_, records) = consume(&ConsumeOptions {
        brokers: broker.addr.clone(),
        topic: "icu.waveforms".into(),
        public_key: None,
        idle_timeout: Duration::from_secs(1),
        max_wait: Duration::from_secs(30),
    })?;
    assert_eq!(records.len(), 2, "5 s of curves per record at most");
    let mut from_kafka = Vec::new();
    for r in &records {
        from_kafka.extend(decode_value(&r.value)?);
    }
    from_kafka.sort_by_key(|d| d.seq);
    assert_eq!(from_kafka.len(), sent.len());
    for (got, wrote) in from_kafka.iter().zip(&sent) {
        assert_eq!(got.mdc_code, wrote.mdc_code);
        assert_eq!(got.samples, wrote.samples, "seq {}", got.seq);
        assert_eq!(got.first_sample_time_us, Some(wrote.first_sample_time_us));
    }
    let (_, alarms) = consume(&ConsumeOptions {
        brokers: broker.addr.clone(),
        topic: "icu.alarms".into(),
        public_key: None,
        idle_timeout: Duration::from_secs(1),
        max_wait: Duration::from_secs(30),
    })?;
    let snippet = snippet_of(&alarms[0].value)?.expect("the snippet");
    assert_eq!(snippet.alarm, "alarm-id:bed-01:spo2-low");
    for (got, wrote) in snippet.segments.iter().zip(&sent) {
        assert_eq!(got.samples, wrote.samples);
    }
    Ok(())
}
