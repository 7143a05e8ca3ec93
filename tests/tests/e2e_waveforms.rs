//! Waveforms end to end through real parts (issue 19): simulated monitors send three ECG leads,
//! the pleth and the arterial pressure as PCD-01 waveform messages over MLLP/TCP → the gateway
//! (decoded, stamped, stored packed in SQLite) → the bridge (FHIR Observations with
//! `valueSampledData` on `icu.waveforms`, signed) → a real Kafka-protocol broker (tansu) → this
//! test, which decodes every sample back and compares it with what the simulator wrote.
//!
//! `ICU_WAVE_SECONDS` shortens the 60 s of the acceptance run for a quick local try.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::fhir::waveform::decode_value;
use icu_cloud_bridge::signing::load_public_key;
use icu_sim::waveform::{GapPlan, SentSegment};
use icu_tests::{wait_for, Broker, TOPICS};
use support::{config_text, keygen, GatewayProc};

/// Per (device, MDC code): the segments in time order, each as (first sample time, samples
/// with `None` where one is missing).
type Curves = BTreeMap<(String, u32), Vec<(i64, Vec<Option<i32>>)>>;

fn run_monitors(
    mllp: std::net::SocketAddr,
    beds: usize,
    seconds: u64,
    gaps: GapPlan,
    scenario: Option<icu_sim::run::Scenario>,
    rate_hz: f64,
) -> icu_sim::run::SimReport {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(icu_sim::run::run(
        icu_sim::run::RunOptions {
            target: mllp.to_string(),
            beds: icu_sim::beds(beds),
            rate_hz,
            messages_per_bed: None,
            duration: Some(Duration::from_secs(seconds)),
            seed: 19,
            scenario,
            waveforms: Some(icu_sim::run::WaveOptions {
                segment_ms: 0,
                gaps,
            }),
            ..Default::default()
        },
        None,
    ))
}

fn sent_curves(sent: &[SentSegment]) -> Curves {
    let mut out = Curves::new();
    for s in sent {
        out.entry((s.device_id.clone(), s.mdc_code))
            .or_default()
            .push((s.first_sample_time_us, s.samples.clone()));
    }
    for v in out.values_mut() {
        v.sort_by_key(|(t, _)| *t);
    }
    out
}

#[test]
fn thirty_beds_of_curves_reach_kafka_bit_exact_with_their_gaps() {
    let seconds: u64 = std::env::var("ICU_WAVE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = keygen(dir.path());
    let key = load_public_key(&public).unwrap();
    let gw = GatewayProc::start(
        dir.path(),
        &config_text(dir.path(), 30, Some(&broker.addr), ""),
    );

    // 7 samples of every 997 left out on every channel: gaps at changing places in segments.
    let gaps = GapPlan {
        every: 997,
        length: 7,
    };
    let sim = run_monitors(gw.endpoints.mllp, 30, seconds, gaps, None, 1.0);
    let total = sim.total();
    assert_eq!(
        (total.ae, total.ar, total.unanswered),
        (0, 0, 0),
        "every message AA: {:?}",
        sim.rejections
    );
    let sent = sent_curves(&sim.accepted_waves);
    assert_eq!(sent.len(), 30 * 5, "five channels per bed");
    let positions: usize = sim.accepted_waves.iter().map(|s| s.samples.len()).sum();
    let dropped: usize = sim
        .accepted_waves
        .iter()
        .map(|s| s.samples.iter().filter(|v| v.is_none()).count())
        .sum();
    assert!(dropped > 0 && positions > 30 * 1750 * (seconds as usize - 2));

    wait_for(
        Duration::from_secs(180),
        "the outbox drained to Kafka",
        || {
            let s = gw.get_json("/api/status");
            (s["store"]["unsent"].as_u64() == Some(0)).then_some(())
        },
    )
    .unwrap();
    let (report, records) = consume(&ConsumeOptions {
        brokers: broker.addr.clone(),
        topic: "icu.waveforms".into(),
        public_key: Some(key),
        idle_timeout: Duration::from_millis(1500),
        max_wait: Duration::from_secs(120),
    })
    .expect("consuming icu.waveforms");
    assert_eq!(report.signatures_bad, 0, "{report:?}");
    assert_eq!(report.signatures_ok, report.records, "every record signed");

    let mut got = Curves::new();
    for r in &records {
        for seg in decode_value(&r.value).expect("a waveform bundle") {
            let t = seg
                .first_sample_time_us
                .expect("a trusted first-sample time");
            got.entry((seg.device_id.clone(), seg.mdc_code))
                .or_default()
                .push((t, seg.samples));
        }
    }
    for v in got.values_mut() {
        v.sort_by_key(|(t, _)| *t);
        v.dedup(); // a record sent twice after a lost delivery report is the same record
    }
    assert_eq!(got.len(), sent.len(), "channels on the topic");
    for (channel, sent) in &sent {
        let got = &got[channel];
        assert_eq!(got.len(), sent.len(), "{channel:?}: segments");
        for (i, (g, s)) in got.iter().zip(sent).enumerate() {
            assert_eq!(g.0, s.0, "{channel:?} segment {i}: first sample time");
            assert!(
                g.1 == s.1,
                "{channel:?} segment {i}: samples differ (first difference at {:?})",
                g.1.iter().zip(&s.1).position(|(a, b)| a != b)
            );
        }
    }
    eprintln!(
        "{} channels, {} segments, {positions} positions ({dropped} dropped on purpose) bit-exact on icu.waveforms in {} records",
        sent.len(),
        sim.accepted_waves.len(),
        records.len()
    );
}

/// An alarm on a bed whose monitor sends curves gets its snippet on `icu.alarms` within 20 s
/// of its start, holding the bed's curves from 15 s before the start.
#[test]
fn an_alarm_start_gets_its_curves_on_icu_alarms_within_20_s() {
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = keygen(dir.path());
    let key = load_public_key(&public).unwrap();
    let config = config_text(dir.path(), 1, Some(&broker.addr), "").replacen(
        "[[beds]]",
        &format!("{}\n[[beds]]", support::SPO2_LOW_ALARM),
        1,
    );
    let gw = GatewayProc::start(dir.path(), &config);
    // SpO2 falls after 30 numeric messages (15 s at 2/s): the curves run for 15 s before, and
    // 50 s in all, past the end of the snippet's window.
    let scenario = icu_sim::run::Scenario::parse("desaturation:1:30").unwrap();
    let mllp = gw.endpoints.mllp;
    let sim = std::thread::spawn(move || {
        run_monitors(mllp, 1, 50, GapPlan::default(), Some(scenario), 2.0)
    });
    let read = |topic: &str| {
        consume(&ConsumeOptions {
            brokers: broker.addr.clone(),
            topic: topic.into(),
            public_key: Some(key),
            idle_timeout: Duration::from_millis(300),
            max_wait: Duration::from_secs(10),
        })
        .expect("consuming")
        .1
    };
    // The alarm's start, then its snippet, each as the test first sees it on the topic.
    let (start_us, start_seq) = wait_for(
        Duration::from_secs(90),
        "the SpO2 alarm's start on icu.alarms",
        || {
            read("icu.alarms").iter().find_map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.value).ok()?;
                let obs = v["entry"].as_array()?.iter().find(|e| {
                    let t = e["resource"].to_string();
                    t.contains("\"start\"") && t.contains("150456")
                })?;
                let text = obs["resource"]["effectiveDateTime"].as_str()?;
                let at = chrono::DateTime::parse_from_rfc3339(text)
                    .ok()?
                    .timestamp_micros();
                Some((at, r.seq_first?))
            })
        },
    )
    .unwrap();
    let snippet = wait_for(
        Duration::from_secs(40),
        "the alarm's snippet on icu.alarms",
        || {
            read("icu.alarms")
                .iter()
                .find_map(|r| icu_cloud_bridge::fhir::snippet_of(&r.value).ok().flatten())
        },
    )
    .unwrap();
    let seen_us = chrono::Utc::now().timestamp_micros();
    assert!(
        seen_us - start_us <= 20_000_000,
        "snippet seen {} s after the alarm's start",
        (seen_us - start_us) as f64 / 1e6
    );
    assert!(
        snippet.alarm.ends_with(&format!("-alarm-{start_seq}")),
        "the snippet refers to the start record: {}",
        snippet.alarm
    );
    // The FHIR time of the start may be cut to the second.
    let window = snippet.window_start_us.expect("the window's start");
    assert!(
        (window - (start_us - 15_000_000)).abs() < 1_000_000,
        "the window starts 15 s before the alarm: {window} vs {start_us}"
    );
    let channels: std::collections::BTreeSet<u32> =
        snippet.segments.iter().map(|s| s.mdc_code).collect();
    assert_eq!(channels.len(), 5, "every curve of the bed: {channels:?}");
    let earliest = snippet
        .segments
        .iter()
        .filter_map(|s| s.first_sample_time_us)
        .min()
        .unwrap();
    assert!(
        earliest <= window + 8_000,
        "samples from 15 s before the start (earliest {} s after the window's start)",
        (earliest - window) as f64 / 1e6
    );
    // What the snippet holds is what the monitor sent for that time, sample for sample.
    let report = sim.join().unwrap();
    let sent = sent_curves(&report.accepted_waves);
    for seg in &snippet.segments {
        let t0 = seg.first_sample_time_us.unwrap();
        let period_us = (seg.period_ms * 1000.0).round() as i64;
        let sent = &sent[&(seg.device_id.clone(), seg.mdc_code)];
        for (i, v) in seg.samples.iter().enumerate() {
            let t = t0 + i as i64 * period_us;
            let (s0, samples) = sent
                .iter()
                .rfind(|(s0, _)| *s0 <= t)
                .expect("a sent segment covers the snippet");
            let k = ((t - s0) / period_us) as usize;
            assert_eq!(Some(v), samples.get(k), "{} at {t}", seg.mdc_code);
        }
    }
}
