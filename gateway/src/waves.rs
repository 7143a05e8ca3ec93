//! The last minute of every bed's curves, in memory (issue 19): what the device actors decoded,
//! kept per channel so the page can draw them live and an alarm's snippet can be cut from them
//! without reading the disk. Bounded: per channel at most [`RETAIN_US`] of segments (by their
//! own timeline) and [`MAX_SEGMENTS_PER_CHANNEL`] segments; older ones fall off.
//!
//! Segments are shared (`Arc`), never copied per reader. Each gets a cursor (a counter over the
//! whole ring) so a reader asks for "what came after the last one I saw".

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use icu_protos::v1::WaveformSegment;

/// How much of each channel's timeline is kept: the ±15 s of an alarm snippet plus room for
/// the segment that ends the window to arrive late.
pub const RETAIN_US: i64 = 60_000_000;
/// Most segments kept per channel whatever their length (a device sending tiny segments).
pub const MAX_SEGMENTS_PER_CHANNEL: usize = 2_000;

/// The channel a segment belongs to: bed, device, MDC code and reference id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelKey {
    pub bed: String,
    pub device_id: String,
    pub mdc_code: u32,
    pub mdc_refid: String,
}

impl ChannelKey {
    pub fn of(s: &WaveformSegment) -> Self {
        Self {
            bed: s.bed.clone(),
            device_id: s.device_id.clone(),
            mdc_code: s.mdc_code,
            mdc_refid: s.mdc_refid.clone(),
        }
    }
}

/// A segment in the ring, with its cursor.
#[derive(Debug, Clone)]
pub struct Kept {
    pub cursor: u64,
    pub segment: Arc<WaveformSegment>,
}

/// The time of a segment's first position on the gateway's timeline: the device's own time
/// when it is trusted, else its receive time less its duration (the last sample arrived about
/// when the message did).
pub fn start_us(s: &WaveformSegment) -> i64 {
    match s.first_sample_time_us {
        Some(t) if !s.device_time_untrusted => t,
        _ => s.receive_time_us - duration_us(s),
    }
}

/// The length of a segment's timeline (every position, present or missing).
pub fn duration_us(s: &WaveformSegment) -> i64 {
    (f64::from(s.sample_count) * s.sample_period_us).round() as i64
}

/// The time just after a segment's last position.
pub fn end_us(s: &WaveformSegment) -> i64 {
    start_us(s) + duration_us(s)
}

/// Most alarm snippets kept in memory for the page (newest kept).
pub const MAX_SNIPPETS: usize = 200;

#[derive(Debug, Default)]
struct Inner {
    next_cursor: u64,
    channels: BTreeMap<ChannelKey, VecDeque<Kept>>,
    /// The last alarm snippets built, oldest first (the page shows one when an alarm is
    /// clicked; the stored copy goes to `icu.alarms`).
    snippets: VecDeque<Arc<icu_protos::v1::AlarmSnippet>>,
}

/// The ring of every bed's recent segments.
#[derive(Debug, Default)]
pub struct WaveformRing {
    inner: Mutex<Inner>,
}

impl WaveformRing {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps these segments (already stamped with device, bed and patient).
    pub fn record(&self, segments: &[Arc<WaveformSegment>]) {
        let mut inner = self.lock();
        for s in segments {
            inner.next_cursor += 1;
            let cursor = inner.next_cursor;
            let q = inner.channels.entry(ChannelKey::of(s)).or_default();
            q.push_back(Kept {
                cursor,
                segment: s.clone(),
            });
            let newest_end = q.iter().map(|k| end_us(&k.segment)).max().unwrap_or(0);
            while q.len() > MAX_SEGMENTS_PER_CHANNEL
                || q.front()
                    .is_some_and(|k| end_us(&k.segment) < newest_end - RETAIN_US)
            {
                q.pop_front();
            }
        }
    }

    /// The bed's segments that overlap `[from_us, to_us)`, per channel in arrival order.
    pub fn between(&self, bed: &str, from_us: i64, to_us: i64) -> Vec<Arc<WaveformSegment>> {
        let inner = self.lock();
        inner
            .channels
            .iter()
            .filter(|(k, _)| k.bed == bed)
            .flat_map(|(_, q)| q.iter())
            .filter(|k| start_us(&k.segment) < to_us && end_us(&k.segment) > from_us)
            .map(|k| k.segment.clone())
            .collect()
    }

    /// The bed's segments kept after `cursor` (0: all), and the cursor to ask from next time.
    pub fn since(&self, bed: &str, cursor: u64) -> (Vec<Kept>, u64) {
        let inner = self.lock();
        let mut out: Vec<Kept> = inner
            .channels
            .iter()
            .filter(|(k, _)| k.bed == bed)
            .flat_map(|(_, q)| q.iter())
            .filter(|k| k.cursor > cursor)
            .cloned()
            .collect();
        out.sort_by_key(|k| k.cursor);
        let next = out.last().map_or(cursor, |k| k.cursor);
        (out, next)
    }

    /// Keeps an alarm's snippet for the page (the last [`MAX_SNIPPETS`]).
    pub fn keep_snippet(&self, snippet: Arc<icu_protos::v1::AlarmSnippet>) {
        let mut inner = self.lock();
        inner.snippets.push_back(snippet);
        while inner.snippets.len() > MAX_SNIPPETS {
            inner.snippets.pop_front();
        }
    }

    /// The newest kept snippet of an alarm, by the alarm's id and (when given) start time.
    pub fn snippet(
        &self,
        alarm_id: &str,
        start_us: Option<i64>,
    ) -> Option<Arc<icu_protos::v1::AlarmSnippet>> {
        let inner = self.lock();
        inner
            .snippets
            .iter()
            .rev()
            .find(|s| s.alarm_id == alarm_id && start_us.is_none_or(|t| s.alarm_start_us == t))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(bed: &str, code: u32, start_s: i64, n: u32) -> Arc<WaveformSegment> {
        Arc::new(WaveformSegment {
            device_id: "mon".into(),
            bed: bed.into(),
            mdc_code: code,
            sample_rate_hz: 500.0,
            sample_period_us: 2000.0,
            sample_count: n,
            first_sample_time_us: Some(start_s * 1_000_000),
            receive_time_us: start_s * 1_000_000 + i64::from(n) * 2000,
            samples: (0..n as i32).collect(),
            ..Default::default()
        })
    }

    #[test]
    fn keeps_a_minute_per_channel_and_finds_a_window() {
        let ring = WaveformRing::new();
        // 100 one-second segments on two channels: only the last ~60 s stay.
        for t in 0..100 {
            ring.record(&[seg("bed-1", 1, t, 500), seg("bed-1", 2, t, 500)]);
        }
        let all = ring.between("bed-1", 0, i64::MAX);
        assert_eq!(all.len(), 2 * 61, "60 s behind the newest end, per channel");
        let window = ring.between("bed-1", 80_000_000, 90_000_000);
        assert_eq!(window.len(), 20, "10 one-second segments per channel");
        assert!(ring.between("bed-2", 0, i64::MAX).is_empty());
        let (after, next) = ring.since("bed-1", 0);
        assert_eq!(after.len(), 122);
        let (none, same) = ring.since("bed-1", next);
        assert!(none.is_empty());
        assert_eq!(same, next);
    }

    #[test]
    fn an_untrusted_device_time_is_placed_at_its_receive_time() {
        let mut s = (*seg("b", 1, 10, 500)).clone();
        s.device_time_untrusted = true;
        s.first_sample_time_us = Some(999_000_000_000);
        s.receive_time_us = 20_000_000;
        assert_eq!(start_us(&s), 19_000_000);
        assert_eq!(end_us(&s), 20_000_000);
    }
}

/// `[waveforms]`: what the PCD-01 waveform decoder accepts and how alarm snippets are cut.
/// Every field has a default; the section may be left out.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaveformSettings {
    /// Most samples (present or missing) one waveform row may carry; a longer one is refused
    /// with AE (15 000 is 30 s at 500 Hz).
    pub max_samples: u32,
    /// Highest sample rate accepted, per second.
    pub max_sample_rate_hz: f64,
    /// OBX-3 identifiers of the attribute rows that give the sample rate, the data range and the
    /// resolution (UNCONFIRMED across vendors: add a vendor's own here).
    pub sample_rate_ids: Vec<String>,
    pub data_range_ids: Vec<String>,
    pub resolution_ids: Vec<String>,
    /// When set, a segment's duration must match OBR-8 minus its first sample's time within
    /// this fraction; leave out to turn the check off.
    pub interval_tolerance: Option<f64>,
    /// An alarm's snippet holds the bed's curves from this long before its start ...
    pub snippet_before_s: u32,
    /// ... to this long after it; it is built and stored once that time has passed (plus
    /// `snippet_grace_s` for the last segments to arrive).
    pub snippet_after_s: u32,
    pub snippet_grace_s: u32,
}

impl Default for WaveformSettings {
    fn default() -> Self {
        let d = icu_drivers::hl7::WaveformConfig::default();
        Self {
            max_samples: d.max_samples,
            max_sample_rate_hz: d.max_sample_rate_hz,
            sample_rate_ids: d.sample_rate_ids,
            data_range_ids: d.data_range_ids,
            resolution_ids: d.resolution_ids,
            interval_tolerance: d.interval_tolerance,
            snippet_before_s: 15,
            snippet_after_s: 15,
            snippet_grace_s: 1,
        }
    }
}

impl WaveformSettings {
    /// The decoder's configuration.
    pub fn decoder(&self) -> icu_drivers::hl7::WaveformConfig {
        icu_drivers::hl7::WaveformConfig {
            max_samples: self.max_samples,
            max_sample_rate_hz: self.max_sample_rate_hz,
            sample_rate_ids: self.sample_rate_ids.clone(),
            data_range_ids: self.data_range_ids.clone(),
            resolution_ids: self.resolution_ids.clone(),
            interval_tolerance: self.interval_tolerance,
        }
    }

    /// Every problem of the section, with its field path.
    pub fn problems(&self) -> Vec<crate::domain::FieldProblem> {
        let mut out = Vec::new();
        let mut problem = |field: &str, message: String| {
            out.push(crate::domain::FieldProblem {
                field: format!("waveforms.{field}"),
                message,
            })
        };
        if !(1..=1_000_000).contains(&self.max_samples) {
            problem(
                "max_samples",
                format!("{} is not between 1 and 1000000", self.max_samples),
            );
        }
        if !(self.max_sample_rate_hz > 0.0 && self.max_sample_rate_hz <= 100_000.0) {
            problem(
                "max_sample_rate_hz",
                format!(
                    "{} is not above 0 and at most 100000",
                    self.max_sample_rate_hz
                ),
            );
        }
        if self.sample_rate_ids.iter().all(|s| s.trim().is_empty()) {
            problem(
                "sample_rate_ids",
                "must name at least one identifier".into(),
            );
        }
        if let Some(t) = self.interval_tolerance {
            if !(t > 0.0 && t < 1.0) {
                problem(
                    "interval_tolerance",
                    format!("{t} is not between 0 and 1 (leave it out to turn the check off)"),
                );
            }
        }
        let window = self.snippet_before_s + self.snippet_after_s + self.snippet_grace_s;
        if i64::from(window) * 1_000_000 > RETAIN_US - 5_000_000 {
            problem(
                "snippet_before_s",
                format!(
                    "before + after + grace is {window} s; the gateway keeps {} s of curves in memory, so at most {} s",
                    RETAIN_US / 1_000_000,
                    RETAIN_US / 1_000_000 - 5
                ),
            );
        }
        out
    }
}

/// The part of a segment whose positions fall in `[from_us, to_us)` on the gateway's timeline
/// (see [`start_us`]), with its gaps and out-of-range runs; `None` when none does.
pub fn cut(s: &WaveformSegment, from_us: i64, to_us: i64) -> Option<WaveformSegment> {
    let period = s.sample_period_us;
    if period.is_nan() || period <= 0.0 || s.sample_count == 0 {
        return None;
    }
    let start = start_us(s);
    let n = i64::from(s.sample_count);
    let pos = |t: i64| (((t - start) as f64 / period).ceil() as i64).clamp(0, n);
    let (i0, i1) = (pos(from_us), pos(to_us));
    if i0 >= i1 {
        return None;
    }
    if i0 == 0 && i1 == n {
        return Some(s.clone());
    }
    let (i0, i1) = (i0 as u32, i1 as u32);
    let in_gap = |i: u32| s.gaps.iter().any(|r| i >= r.start && i - r.start < r.count);
    // Sample k belongs to the k-th present position.
    let mut samples = Vec::new();
    let mut k = 0usize;
    for i in 0..i1 {
        if in_gap(i) {
            continue;
        }
        if i >= i0 {
            if let Some(v) = s.samples.get(k) {
                samples.push(*v);
            }
        }
        k += 1;
    }
    let clip = |runs: &[icu_protos::v1::SampleRun]| -> Vec<icu_protos::v1::SampleRun> {
        runs.iter()
            .filter_map(|r| {
                let (a, b) = (r.start.max(i0), (r.start + r.count).min(i1));
                (a < b).then(|| icu_protos::v1::SampleRun {
                    start: a - i0,
                    count: b - a,
                })
            })
            .collect()
    };
    let mut out = WaveformSegment {
        samples,
        gaps: clip(&s.gaps),
        below_range: clip(&s.below_range),
        above_range: clip(&s.above_range),
        sample_count: i1 - i0,
        packed_samples: Vec::new(),
        ..s.clone()
    };
    out.first_sample_time_us = s
        .first_sample_time_us
        .map(|t| t + (f64::from(i0) * period).round() as i64);
    // An untrusted (or missing) device time places the segment by its receive time, which
    // then stands for the end of the kept part.
    out.receive_time_us =
        s.receive_time_us - (f64::from(s.sample_count - i1) * period).round() as i64;
    Some(out)
}

#[cfg(test)]
mod cut_tests {
    use super::*;
    use icu_protos::v1::SampleRun;

    #[test]
    fn a_cut_keeps_the_samples_and_gaps_of_its_window_exactly() {
        // 10 positions at 1 ms from t = 1 s; positions 3..5 missing, 7 above range.
        let s = WaveformSegment {
            sample_period_us: 1000.0,
            sample_count: 10,
            first_sample_time_us: Some(1_000_000),
            receive_time_us: 1_010_000,
            samples: vec![0, 1, 2, 5, 6, 7, 8, 9],
            gaps: vec![SampleRun { start: 3, count: 2 }],
            above_range: vec![SampleRun { start: 7, count: 1 }],
            ..Default::default()
        };
        let c = cut(&s, 1_002_000, 1_008_000).expect("positions 2..8");
        assert_eq!(c.sample_count, 6);
        assert_eq!(c.first_sample_time_us, Some(1_002_000));
        assert_eq!(c.samples, vec![2, 5, 6, 7]);
        assert_eq!(c.gaps, vec![SampleRun { start: 1, count: 2 }]);
        assert_eq!(c.above_range, vec![SampleRun { start: 5, count: 1 }]);
        assert_eq!(end_us(&c), 1_008_000);
        assert!(cut(&s, 0, 1_000_000).is_none());
        assert_eq!(cut(&s, 0, i64::MAX).as_ref(), Some(&s));
        // An untrusted device time: placed by the receive time, also after the cut.
        let u = WaveformSegment {
            device_time_untrusted: true,
            ..s.clone()
        };
        let c = cut(&u, 1_000_500, 1_004_000).expect("positions 1..4");
        assert_eq!((start_us(&c), end_us(&c)), (1_001_000, 1_004_000));
        assert_eq!(c.samples, vec![1, 2]);
    }
}
