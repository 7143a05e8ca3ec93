use icu_drivers::hl7::{decode_pcd01_waveforms, WaveformConfig};
use icu_drivers::terminology::Terminology;
use icu_protos::v1::WaveformSegment;

use super::*;

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn vitals(heart_rate: f64, spo2: f64) -> Vitals {
    Vitals {
        heart_rate,
        spo2,
        resp_rate: 14.0,
        temp_c: 37.0,
        nibp_sys: 120.0,
        nibp_dia: 70.0,
    }
}

fn monitor(gaps: GapPlan) -> WaveformMonitor {
    let mut m = WaveformMonitor::new(crate::beds(1).remove(0), 42, start());
    m.gaps = gaps;
    m
}

/// Every position of a decoded segment: its sample, or `None` inside a gap.
fn positions(s: &WaveformSegment) -> Vec<Option<i32>> {
    let mut out = Vec::with_capacity(s.sample_count as usize);
    let mut samples = s.samples.iter();
    for i in 0..s.sample_count {
        let in_gap = s
            .gaps
            .iter()
            .any(|g| (g.start..g.start + g.count).contains(&i));
        out.push(if in_gap {
            None
        } else {
            samples.next().copied()
        });
    }
    assert!(samples.next().is_none(), "no sample left over");
    out
}

/// Decodes each message with the gateway's decoder; the samples come back bit-exact and the
/// dropped ones as gaps.
#[test]
fn the_decoder_gets_back_exactly_what_was_sent_gaps_included() {
    let mut m = monitor(GapPlan {
        every: 97,
        length: 5,
    });
    let term = Terminology::builtin();
    let config = WaveformConfig::default();
    let mut dropped = 0;
    for round in 0..4 {
        let messages = m.next_messages(&vitals(70.0 + f64::from(round) * 10.0, 97.0));
        assert_eq!(messages.len(), 2, "one message per channel group");
        for (msg, sent) in messages {
            let decoded = decode_pcd01_waveforms(msg.as_bytes(), 1, &term, &config)
                .unwrap_or_else(|e| panic!("{e}: {msg}"));
            assert!(decoded.message.observations.is_empty(), "no numerics");
            assert_eq!(decoded.segments.len(), sent.len());
            for (d, s) in decoded.segments.iter().zip(&sent) {
                assert_eq!(d.mdc_code, s.mdc_code);
                assert_eq!(d.sample_rate_hz, f64::from(s.rate_hz));
                assert_eq!(d.decimal_exponent, 0);
                assert_eq!(d.first_sample_time_us, Some(s.first_sample_time_us));
                assert_eq!(positions(d), s.samples, "channel {}", s.mdc_code);
                assert_eq!(d.source_message_id, s.control_id);
                dropped += s.samples.iter().filter(|v| v.is_none()).count();
            }
        }
    }
    assert!(dropped > 0, "the gap plan dropped samples");
}

#[test]
fn channels_rates_scales_and_times_are_as_announced() {
    let mut m = monitor(GapPlan::default());
    let term = Terminology::builtin();
    let config = WaveformConfig::default();
    let first = m.next_messages(&vitals(80.0, 97.0));
    let second = m.next_messages(&vitals(80.0, 97.0));
    let decode = |msg: &str| {
        decode_pcd01_waveforms(msg.as_bytes(), 1, &term, &config)
            .unwrap()
            .segments
    };
    let ecg = decode(&first[0].0);
    assert_eq!(
        ecg.iter().map(|s| s.mdc_code).collect::<Vec<_>>(),
        [131_329, 131_330, 131_389]
    );
    assert!(ecg
        .iter()
        .all(|s| s.sample_count == 400 && s.scale == 0.005));
    assert!(
        ecg.iter().all(|s| s.unit_ucum == "mV"),
        "{:?}",
        ecg[0].unit_ucum
    );
    let slow = decode(&first[1].0);
    assert_eq!(slow[0].mdc_code, 150_452);
    assert_eq!(slow[1].mdc_code, 150_036);
    assert!(slow.iter().all(|s| s.sample_count == 100));
    assert_eq!(slow[1].scale, 0.1);
    assert_eq!(slow[1].unit_ucum, "mm[Hg]");
    // Segments follow each other without a hole or an overlap.
    let next = decode(&second[1].0);
    let period_end = slow[0].first_sample_time_us.unwrap() + 800_000;
    assert_eq!(next[0].first_sample_time_us, Some(period_end));
    assert!(ecg
        .iter()
        .chain(&slow)
        .all(|s| s.below_range.is_empty() && s.above_range.is_empty()));
}

/// R waves in lead II per second of signal, at the heart rate given.
fn beats_per_minute(heart_rate: f64) -> f64 {
    let mut m = monitor(GapPlan::default());
    let mut lead_ii = Vec::new();
    for _ in 0..10 {
        for (_, sent) in m.next_messages(&vitals(heart_rate, 97.0)) {
            if let Some(s) = sent.iter().find(|s| s.mdc_code == ECG_II.code) {
                lead_ii.extend(s.samples.iter().flatten().copied());
            }
        }
    }
    // An R wave: a crossing of half its 1.2 mV height (120 counts), upwards.
    let r = lead_ii
        .windows(2)
        .filter(|w| w[0] < 120 && w[1] >= 120)
        .count();
    r as f64 * 60.0 / (lead_ii.len() as f64 / 500.0)
}

#[test]
fn the_curves_follow_the_heart_rate_and_the_saturation() {
    for hr in [50.0, 75.0, 130.0] {
        let seen = beats_per_minute(hr);
        assert!(
            (seen - hr).abs() <= 8.0,
            "{hr} bpm gave {seen} R waves a minute"
        );
    }
    let swing = |spo2: f64, code: u32| {
        let mut m = monitor(GapPlan::default());
        let sent: Vec<i32> = (0..3)
            .flat_map(|_| m.next_messages(&vitals(80.0, spo2)))
            .flat_map(|(_, s)| s)
            .filter(|s| s.mdc_code == code)
            .flat_map(|s| s.samples.into_iter().flatten())
            .collect();
        (*sent.iter().min().unwrap(), *sent.iter().max().unwrap())
    };
    let (lo, hi) = swing(98.0, PLETH.code);
    let (lo80, hi80) = swing(80.0, PLETH.code);
    assert!(
        hi80 - lo80 < (hi - lo) / 2,
        "pleth {lo}..{hi} at 98 %, {lo80}..{hi80} at 80 %"
    );
    // Arterial pressure swings between about the diastolic and the systolic value (0.1 mmHg).
    let (lo, hi) = swing(97.0, ABP.code);
    assert!((1150..=1210).contains(&hi), "systolic {hi}");
    assert!((690..=800).contains(&lo), "diastolic {lo}");
}

#[test]
fn same_seed_same_messages() {
    let mut a = monitor(GapPlan::default());
    let mut b = monitor(GapPlan::default());
    for _ in 0..3 {
        assert_eq!(
            a.next_messages(&vitals(72.0, 97.0)),
            b.next_messages(&vitals(72.0, 97.0))
        );
    }
}
