//! Pure planning of one forwarding cycle: which records go into which Kafka record, which
//! delivered ranges may be marked sent, and the token bucket that rate-limits the backlog. No
//! I/O, no runtime.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use icu_protos::v1::{
    stored_record::Body, AdtEvent, Alarm, AlarmSnippet, AuditEntry, DeadLetter, Observation,
    WaveformSegment,
};

use icu_outbox::{OutboxRecord, Stream};

/// One Kafka record to produce: consecutive seqs of one device's stream, all of one patient.
///
/// An observations bundle holds up to `max_per_bundle` observations (one FHIR Bundle); an
/// alarms bundle up to `max_per_bundle` consecutive alarm state changes of one device (one FHIR
/// Bundle of alarm Observations, in seq order: a sick unit's alarm records go out a bundle per
/// device per cycle, not one Kafka record each ahead of every observation); an ADT bundle holds
/// exactly one ADT event (one FHIR Bundle with a Patient and an Encounter); an audit bundle holds
/// exactly one audit-trail entry (one FHIR AuditEvent); a dead-letter bundle holds exactly one
/// dead letter (one plain JSON object); a waveforms bundle holds a device's consecutive
/// segments over at most [`PlanLimits::waveform_span_us`] of timeline and at most
/// [`PlanLimits::max_waveform_segments`] segments (one FHIR Bundle of SampledData
/// Observations); an alarm snippet (alarms stream) is a bundle of its own, never with alarm
/// state changes (one FHIR Bundle with a DiagnosticReport).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBundle {
    pub stream: Stream,
    pub device_id: String,
    pub bed: String,
    /// The census patient of every record in the bundle (trimmed); empty when unassociated.
    /// It is the Kafka key when non-empty.
    pub patient_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// In seq order; `last_seq - first_seq + 1 == observations.len()` (observations stream).
    pub observations: Vec<Observation>,
    /// The alarm state changes, in seq order (alarms stream).
    pub alarms: Vec<Alarm>,
    /// The ADT event (ADT stream).
    pub adt: Option<AdtEvent>,
    /// The dead letter (dead-letter stream).
    pub dead_letter: Option<DeadLetter>,
    /// The audit-trail entry (audit stream).
    pub audit: Option<AuditEntry>,
    /// The waveform segments, in seq order (waveforms stream).
    pub waveforms: Vec<WaveformSegment>,
    /// The alarm snippet (alarms stream, a bundle of its own).
    pub snippet: Option<AlarmSnippet>,
    /// The W3C trace context stored with the first of its records that has one (the span that
    /// committed that message; `crate::trace`); empty when tracing was off.
    pub traceparent: String,
}

impl PlannedBundle {
    /// Records (observations, alarms, ADT events or dead letters) this bundle carries.
    pub fn len(&self) -> usize {
        (self.last_seq - self.first_seq + 1) as usize
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A record left in the outbox because its body does not belong to its stream (or it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    pub stream: Stream,
    pub device_id: String,
    pub seq: u64,
    /// The body found: "observation", "alarm", "device_status", "adt_event", "dead_letter",
    /// "audit_entry" or "empty" (an audit entry whose seq is not the record's is skipped too).
    pub kind: &'static str,
}

/// The result of [`plan_bundles`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Ordered by stream, device id, then seq.
    pub bundles: Vec<PlannedBundle>,
    pub skipped: Vec<SkippedRecord>,
}

/// The content of one record once matched to its stream.
enum Content {
    Observation(Observation),
    Alarm(Alarm),
    Adt(AdtEvent),
    DeadLetter(DeadLetter),
    Audit(AuditEntry),
    Waveform(WaveformSegment),
    Snippet(AlarmSnippet),
}

/// How big a bundle may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// Most observations or alarm state changes per bundle (`[kafka] max_per_bundle`).
    pub max_per_bundle: usize,
    /// Most timeline one waveforms bundle covers, µs (`[kafka] waveform_bundle_ms`): from the
    /// start of its first segment to the end of its last.
    pub waveform_span_us: i64,
    /// Most segments per waveforms bundle (`[kafka] max_waveform_segments`).
    pub max_waveform_segments: usize,
}

impl PlanLimits {
    /// `max_per_bundle` with the default waveform limits (5 s, 64 segments).
    pub fn new(max_per_bundle: usize) -> Self {
        Self {
            max_per_bundle,
            waveform_span_us: 5_000_000,
            max_waveform_segments: 64,
        }
    }
}

/// The timeline a segment covers, µs: from its first sample's device time (the receive time
/// when it has none or it is untrusted) for `sample_count` sample periods.
fn segment_span(seg: &WaveformSegment) -> (i64, i64) {
    let start = seg
        .first_sample_time_us
        .filter(|_| !seg.device_time_untrusted)
        .unwrap_or(seg.receive_time_us);
    let length = f64::from(seg.sample_count) * seg.sample_period_us;
    let length = if length.is_finite() && length > 0.0 {
        length.min(i64::MAX as f64 / 2.0) as i64
    } else {
        0
    };
    (start, start.saturating_add(length))
}

/// Groups records into bundles of at most `max_per_bundle` consecutive seqs of one device's
/// stream (ADT events, dead letters and audit entries: one per bundle).
///
/// A bundle ends at a stream or device change, a seq gap (including a skipped record whose body
/// does not belong to its stream), a bed change, a patient change (a bundle never mixes
/// patients, nor associated with unassociated readings), or when full. Input order does not
/// matter; duplicates of a `(stream, device, seq)` are dropped. Each observation and alarm gets
/// the record's device id and seq (and bed when it has none) and its patient id trimmed, so the
/// bundle content, its key and its headers always agree.
pub fn plan_bundles(records: Vec<OutboxRecord>, max_per_bundle: usize) -> Plan {
    plan_bundles_with(records, PlanLimits::new(max_per_bundle))
}

/// [`plan_bundles`] with the waveform limits too: a waveforms bundle also ends when the next
/// segment would make it cover more than `waveform_span_us` of timeline or hold more than
/// `max_waveform_segments` segments (a single longer segment goes alone); an alarm snippet is
/// always a bundle of its own.
pub fn plan_bundles_with(mut records: Vec<OutboxRecord>, limits: PlanLimits) -> Plan {
    let max_per_bundle = limits.max_per_bundle.max(1);
    records.sort_by(|a, b| (a.stream, &a.device_id, a.seq).cmp(&(b.stream, &b.device_id, b.seq)));
    records.dedup_by(|b, a| a.stream == b.stream && a.device_id == b.device_id && a.seq == b.seq);

    let mut plan = Plan::default();
    for mut rec in records {
        let traceparent = std::mem::take(&mut rec.record.traceparent);
        let content = match (rec.stream, rec.record.body) {
            (Stream::Observations, Some(Body::Observation(o))) => {
                Content::Observation(stamped(o, (&rec.device_id, rec.seq, &rec.bed)))
            }
            (Stream::Alarms, Some(Body::Alarm(a))) => {
                Content::Alarm(stamped(a, (&rec.device_id, rec.seq, &rec.bed)))
            }
            (Stream::Adt, Some(Body::AdtEvent(mut adt))) => {
                trim_in_place(&mut adt.patient_id);
                Content::Adt(adt)
            }
            (Stream::DeadLetters, Some(Body::DeadLetter(dl))) => Content::DeadLetter(dl),
            (Stream::Waveforms, Some(Body::Waveform(w))) => {
                Content::Waveform(stamped(w, (&rec.device_id, rec.seq, &rec.bed)))
            }
            (Stream::Alarms, Some(Body::AlarmSnippet(s))) => {
                Content::Snippet(stamped(s, (&rec.device_id, rec.seq, &rec.bed)))
            }
            // The entry's own seq is the record's: a row that says otherwise is not forwarded.
            (Stream::Audit, Some(Body::AuditEntry(entry))) if entry.seq == rec.seq => {
                Content::Audit(entry)
            }
            (stream, other) => {
                let kind = match other {
                    Some(Body::Observation(_)) => "observation",
                    Some(Body::Alarm(_)) => "alarm",
                    Some(Body::DeviceStatus(_)) => "device_status",
                    Some(Body::AdtEvent(_)) => "adt_event",
                    Some(Body::DeadLetter(_)) => "dead_letter",
                    Some(Body::AuditEntry(_)) => "audit_entry",
                    Some(Body::Waveform(_)) => "waveform",
                    Some(Body::AlarmSnippet(_)) => "alarm_snippet",
                    None => "empty",
                };
                plan.skipped.push(SkippedRecord {
                    stream,
                    device_id: rec.device_id,
                    seq: rec.seq,
                    kind,
                });
                continue;
            }
        };
        let (limit, patient_id) = match &content {
            Content::Observation(obs) => (max_per_bundle, obs.patient_id.clone()),
            Content::Alarm(alarm) => (max_per_bundle, alarm.patient_id.clone()),
            Content::Adt(adt) => (1, adt.patient_id.clone()),
            // Never a patient: the key is the device id.
            Content::DeadLetter(_) => (1, String::new()),
            // The key is the gateway id: the whole chain in one partition, in order.
            Content::Audit(_) => (1, String::new()),
            Content::Waveform(seg) => (limits.max_waveform_segments.max(1), seg.patient_id.clone()),
            Content::Snippet(snippet) => (1, snippet.patient_id.clone()),
        };
        let fits_timeline = match &content {
            Content::Waveform(seg) => plan.bundles.last().is_none_or(|b| {
                let (start, end) = segment_span(seg);
                let (first, last) = b
                    .waveforms
                    .iter()
                    .map(segment_span)
                    .fold((start, end), |(s, e), (a, b)| (s.min(a), e.max(b)));
                last.saturating_sub(first) <= limits.waveform_span_us
            }),
            _ => true,
        };
        let extends = plan.bundles.last().is_some_and(|b| {
            b.stream == rec.stream
                && b.device_id == rec.device_id
                && b.bed == rec.bed
                && b.patient_id == patient_id
                && b.last_seq.checked_add(1) == Some(rec.seq)
                && b.len() < limit
                && b.snippet.is_none()
                && fits_timeline
        });
        match (plan.bundles.last_mut(), content) {
            (Some(bundle), Content::Observation(obs)) if extends => {
                bundle.last_seq = rec.seq;
                bundle.observations.push(obs);
                if bundle.traceparent.is_empty() {
                    bundle.traceparent = traceparent;
                }
            }
            (Some(bundle), Content::Alarm(alarm)) if extends => {
                bundle.last_seq = rec.seq;
                bundle.alarms.push(alarm);
                if bundle.traceparent.is_empty() {
                    bundle.traceparent = traceparent;
                }
            }
            (Some(bundle), Content::Waveform(seg)) if extends => {
                bundle.last_seq = rec.seq;
                bundle.waveforms.push(seg);
                if bundle.traceparent.is_empty() {
                    bundle.traceparent = traceparent;
                }
            }
            (_, content) => {
                let (mut observations, mut alarms, mut adt, mut dead_letter, mut audit) =
                    (Vec::new(), Vec::new(), None, None, None);
                let (mut waveforms, mut snippet) = (Vec::new(), None);
                match content {
                    Content::Observation(obs) => observations.push(obs),
                    Content::Alarm(a) => alarms.push(a),
                    Content::Adt(a) => adt = Some(a),
                    Content::DeadLetter(dl) => dead_letter = Some(dl),
                    Content::Audit(entry) => audit = Some(entry),
                    Content::Waveform(seg) => waveforms.push(seg),
                    Content::Snippet(s) => snippet = Some(s),
                }
                plan.bundles.push(PlannedBundle {
                    stream: rec.stream,
                    device_id: rec.device_id,
                    bed: rec.bed,
                    patient_id,
                    first_seq: rec.seq,
                    last_seq: rec.seq,
                    observations,
                    alarms,
                    adt,
                    dead_letter,
                    audit,
                    waveforms,
                    snippet,
                    traceparent,
                });
            }
        }
    }
    plan
}

/// A record's content that names its device, seq, bed and patient.
trait Stamp {
    fn parts(&mut self) -> (&mut String, &mut u64, &mut String, &mut String);
}

macro_rules! stamp_impl {
    ($($t:ty),*) => {$(
        impl Stamp for $t {
            fn parts(&mut self) -> (&mut String, &mut u64, &mut String, &mut String) {
                (&mut self.device_id, &mut self.seq, &mut self.bed, &mut self.patient_id)
            }
        }
    )*};
}
stamp_impl!(Observation, Alarm, WaveformSegment, AlarmSnippet);

/// `content` with the outbox record's device id and seq (`at`: device, seq, bed), its bed
/// when it has none, and its patient id trimmed: the bundle content, its key and its headers
/// then agree.
fn stamped<T: Stamp>(mut content: T, (device_id, seq, bed): (&String, u64, &String)) -> T {
    let (device, content_seq, content_bed, patient) = content.parts();
    device.clone_from(device_id);
    *content_seq = seq;
    if content_bed.is_empty() {
        content_bed.clone_from(bed);
    }
    trim_in_place(patient);
    content
}

fn trim_in_place(s: &mut String) {
    let trimmed = s.trim();
    if trimmed.len() != s.len() {
        *s = trimmed.to_owned();
    }
}

/// Which bundles may be marked sent, given which were delivered.
///
/// Per device, in bundle order, up to (not including) its first undelivered bundle: a later
/// bundle of that device stays unsent even if delivered, and is re-sent (a duplicate with the
/// same `(gateway, device, seq)` key, deduplicated downstream), so the outbox never has a hole
/// behind a sent record. Returns bundle indices in order.
pub fn markable(bundles: &[PlannedBundle], delivered: &[bool]) -> Vec<usize> {
    let mut blocked: BTreeMap<(Stream, &str), bool> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, bundle) in bundles.iter().enumerate() {
        let stopped = blocked
            .entry((bundle.stream, bundle.device_id.as_str()))
            .or_insert(false);
        if *stopped {
            continue;
        }
        if delivered.get(i).copied().unwrap_or(false) {
            out.push(i);
        } else {
            *stopped = true;
        }
    }
    out
}

/// The rate limit of backlog observations: `rate` tokens per second, holding at most one
/// second's worth (so after an idle spell the backlog bursts to at most `rate` records, and over
/// any `T` seconds at most `rate × (T + 1)` leave). Time is passed in, so it is tested without
/// sleeping.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate_per_s` tokens (at least 1).
    pub fn new(rate_per_s: u64, now: Instant) -> Self {
        let rate = rate_per_s.max(1) as f64;
        Self {
            rate,
            capacity: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.floor() as usize
    }

    /// Spends `n` tokens (never below zero).
    pub fn take(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }

    /// The most tokens the bucket holds.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// How long until `n` tokens (capped at the capacity) are available.
    pub fn wait_for(&mut self, n: usize, now: Instant) -> Duration {
        self.refill(now);
        let missing = (n as f64).min(self.capacity) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icu_protos::v1::{AdtEvent, Alarm, DeadLetter, StoredRecord};

    #[test]
    fn token_bucket_refills_at_its_rate_and_holds_one_second() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000, t0);
        assert_eq!(bucket.available(t0), 1000, "starts full");
        bucket.take(1000);
        assert_eq!(bucket.available(t0), 0);
        assert_eq!(bucket.wait_for(500, t0), Duration::from_millis(500));
        assert_eq!(bucket.available(t0 + Duration::from_millis(250)), 250);
        bucket.take(10_000);
        assert_eq!(bucket.available(t0 + Duration::from_millis(250)), 0);
        assert_eq!(
            bucket.available(t0 + Duration::from_secs(60)),
            1000,
            "never more than one second's worth"
        );
        assert_eq!(
            bucket.wait_for(5000, t0 + Duration::from_secs(60)),
            Duration::ZERO
        );
        assert_eq!(bucket.capacity(), 1000);
        // Time going backwards (a caller's stale instant) never adds tokens.
        bucket.take(1000);
        assert_eq!(bucket.available(t0), 0);
        let mut tiny = TokenBucket::new(0, t0);
        assert_eq!(tiny.available(t0), 1, "a rate of 0 is treated as 1");
    }

    fn obs_rec(device: &str, seq: u64) -> OutboxRecord {
        OutboxRecord {
            stream: Stream::Observations,
            device_id: device.into(),
            seq,
            bed: "bed-1".into(),
            record: StoredRecord {
                gateway_id: "gw".into(),
                device_id: device.into(),
                seq,
                body: Some(Body::Observation(Observation {
                    mdc_code: 150456,
                    value: Some(97.0),
                    ..Default::default()
                })),
                traceparent: String::new(),
            },
        }
    }

    fn obs_for(device: &str, seq: u64, patient: &str) -> OutboxRecord {
        let mut rec = obs_rec(device, seq);
        if let Some(Body::Observation(obs)) = &mut rec.record.body {
            obs.patient_id = patient.into();
        }
        rec
    }

    fn adt_rec(seq: u64, event: &str, patient: &str) -> OutboxRecord {
        OutboxRecord {
            stream: Stream::Adt,
            device_id: "adt".into(),
            seq,
            bed: "bed-1".into(),
            record: StoredRecord {
                gateway_id: "gw".into(),
                device_id: "adt".into(),
                seq,
                body: Some(Body::AdtEvent(AdtEvent {
                    event: event.into(),
                    patient_id: patient.into(),
                    bed: "bed-1".into(),
                    ..Default::default()
                })),
                traceparent: String::new(),
            },
        }
    }

    fn ranges(plan: &Plan) -> Vec<(&str, u64, u64)> {
        plan.bundles
            .iter()
            .map(|b| (b.device_id.as_str(), b.first_seq, b.last_seq))
            .collect()
    }

    #[test]
    fn groups_consecutive_seqs_per_device_in_order() {
        let records = vec![
            obs_rec("mon-2", 1),
            obs_rec("mon-1", 3),
            obs_rec("mon-1", 1),
            obs_rec("mon-1", 2),
            obs_rec("mon-1", 5),
            obs_rec("mon-2", 2),
            obs_rec("mon-1", 2),
        ];
        let plan = plan_bundles(records, 100);
        assert_eq!(
            ranges(&plan),
            [("mon-1", 1, 3), ("mon-1", 5, 5), ("mon-2", 1, 2)]
        );
        let b = &plan.bundles[0];
        assert_eq!(b.observations.len(), 3, "duplicate seq 2 dropped");
        let seqs: Vec<u64> = b.observations.iter().map(|o| o.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert!(b
            .observations
            .iter()
            .all(|o| o.device_id == "mon-1" && o.bed == "bed-1"));
    }

    #[test]
    fn splits_at_max_size() {
        let records = (1..=250).map(|s| obs_rec("mon-1", s)).collect();
        let plan = plan_bundles(records, 100);
        assert_eq!(
            ranges(&plan),
            [("mon-1", 1, 100), ("mon-1", 101, 200), ("mon-1", 201, 250)]
        );
        for b in &plan.bundles {
            assert_eq!(b.observations.len() as u64, b.last_seq - b.first_seq + 1);
        }
        let plan = plan_bundles((1..=3).map(|s| obs_rec("d", s)).collect(), 0);
        assert_eq!(plan.bundles.len(), 3, "max 0 is treated as 1");
    }

    #[test]
    fn non_observations_are_skipped_and_split_the_run() {
        let mut alarm = obs_rec("mon-1", 3);
        alarm.record.body = Some(Body::Alarm(Alarm::default()));
        let mut empty = obs_rec("mon-1", 6);
        empty.record.body = None;
        let records = vec![
            obs_rec("mon-1", 1),
            obs_rec("mon-1", 2),
            alarm,
            obs_rec("mon-1", 4),
            obs_rec("mon-1", 5),
            empty,
        ];
        let plan = plan_bundles(records, 100);
        assert_eq!(ranges(&plan), [("mon-1", 1, 2), ("mon-1", 4, 5)]);
        assert_eq!(
            plan.skipped,
            [
                SkippedRecord {
                    stream: Stream::Observations,
                    device_id: "mon-1".into(),
                    seq: 3,
                    kind: "alarm"
                },
                SkippedRecord {
                    stream: Stream::Observations,
                    device_id: "mon-1".into(),
                    seq: 6,
                    kind: "empty"
                },
            ]
        );
    }

    #[test]
    fn bed_change_starts_a_new_bundle() {
        let mut moved = obs_rec("mon-1", 3);
        moved.bed = "bed-2".into();
        let plan = plan_bundles(vec![obs_rec("mon-1", 1), obs_rec("mon-1", 2), moved], 100);
        assert_eq!(ranges(&plan), [("mon-1", 1, 2), ("mon-1", 3, 3)]);
        assert_eq!(plan.bundles[1].observations[0].bed, "bed-2");
    }

    #[test]
    fn marks_stop_at_each_devices_first_failure() {
        let plan = plan_bundles(
            (1..=6)
                .map(|s| obs_rec("a", s))
                .chain((1..=4).map(|s| obs_rec("b", s)))
                .collect(),
            2,
        );
        // a: [1-2] ok, [3-4] failed, [5-6] ok (must not be marked); b: [1-2] ok, [3-4] ok.
        assert_eq!(plan.bundles.len(), 5);
        let delivered = [true, false, true, true, true];
        assert_eq!(markable(&plan.bundles, &delivered), [0, 3, 4]);
        assert_eq!(markable(&plan.bundles, &[false; 5]), Vec::<usize>::new());
        assert_eq!(markable(&plan.bundles, &[true; 5]), [0, 1, 2, 3, 4]);
        assert_eq!(
            markable(&plan.bundles, &[true]),
            [0],
            "missing outcome = failed"
        );
    }

    #[test]
    fn a_bundle_never_mixes_patients() {
        let records = vec![
            obs_for("mon-1", 1, ""),
            obs_for("mon-1", 2, ""),
            obs_for("mon-1", 3, "P1"),
            obs_for("mon-1", 4, " P1 "),
            obs_for("mon-1", 5, "P2"),
            obs_for("mon-1", 6, ""),
            obs_for("mon-1", 7, "P2"),
        ];
        let plan = plan_bundles(records, 100);
        let split: Vec<(u64, u64, &str)> = plan
            .bundles
            .iter()
            .map(|b| (b.first_seq, b.last_seq, b.patient_id.as_str()))
            .collect();
        assert_eq!(
            split,
            [
                (1, 2, ""),
                (3, 4, "P1"),
                (5, 5, "P2"),
                (6, 6, ""),
                (7, 7, "P2")
            ]
        );
        for b in &plan.bundles {
            assert!(
                b.observations.iter().all(|o| o.patient_id == b.patient_id),
                "content and key agree: {b:?}"
            );
        }
    }

    #[test]
    fn alarms_bundle_per_device_and_patient_and_adt_events_are_one_per_bundle() {
        let alarm = |seq: u64, patient: &str| OutboxRecord {
            stream: Stream::Alarms,
            device_id: "mon-1".into(),
            seq,
            bed: "bed-1".into(),
            record: StoredRecord {
                gateway_id: "gw".into(),
                device_id: "mon-1".into(),
                seq,
                body: Some(Body::Alarm(Alarm {
                    patient_id: patient.into(),
                    ..Alarm::default()
                })),
                traceparent: String::new(),
            },
        };
        let mut adt_wrong_body = adt_rec(3, "A01", "P9");
        adt_wrong_body.record.body = Some(Body::Observation(Observation::default()));
        let records = vec![
            obs_for("mon-1", 1, "P1"),
            adt_rec(2, "A02", "P1"),
            alarm(1, "P1"),
            alarm(2, ""),
            alarm(4, ""),
            alarm(3, ""),
            adt_rec(1, "A01", "P1"),
            adt_wrong_body,
            adt_rec(4, "A03", "P2"),
        ];
        let plan = plan_bundles(records, 100);
        let summary: Vec<(Stream, &str, u64, &str)> = plan
            .bundles
            .iter()
            .map(|b| {
                (
                    b.stream,
                    b.device_id.as_str(),
                    b.first_seq,
                    b.patient_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Stream::Alarms, "mon-1", 1, "P1"),
                (Stream::Alarms, "mon-1", 2, ""),
                (Stream::Adt, "adt", 1, "P1"),
                (Stream::Adt, "adt", 2, "P1"),
                (Stream::Adt, "adt", 4, "P2"),
                (Stream::Observations, "mon-1", 1, "P1"),
            ],
            "alarms, then ADT, then observations; alarms bundle per device and patient, in \
             seq order; one ADT event per bundle"
        );
        let lens: Vec<usize> = plan.bundles.iter().map(PlannedBundle::len).collect();
        assert_eq!(lens, [1, 3, 1, 1, 1, 1]);
        assert_eq!(plan.bundles[0].alarms[0].seq, 1);
        let seqs: Vec<u64> = plan.bundles[1].alarms.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(plan.bundles[3].adt.as_ref().unwrap().event, "A02");
        assert!(plan.bundles[3].alarms.is_empty() && plan.bundles[3].observations.is_empty());
        assert_eq!(
            plan.skipped,
            [SkippedRecord {
                stream: Stream::Adt,
                device_id: "adt".into(),
                seq: 3,
                kind: "observation"
            }]
        );
    }

    fn dl_rec(device: &str, seq: u64, reason: &str) -> OutboxRecord {
        OutboxRecord {
            stream: Stream::DeadLetters,
            device_id: device.into(),
            seq,
            bed: "bed-1".into(),
            record: StoredRecord {
                gateway_id: "gw".into(),
                device_id: device.into(),
                seq,
                body: Some(Body::DeadLetter(DeadLetter {
                    reason: reason.into(),
                    ..Default::default()
                })),
                traceparent: String::new(),
            },
        }
    }

    #[test]
    fn dead_letters_are_one_per_bundle_keyed_by_device_and_drained_last() {
        let mut wrong_body = dl_rec("mllp", 3, "x");
        wrong_body.record.body = Some(Body::Observation(Observation::default()));
        let mut dl_in_obs_stream = obs_rec("mon-1", 2);
        dl_in_obs_stream.record.body = dl_rec("mon-1", 2, "misfiled").record.body;
        let records = vec![
            dl_rec("mllp", 2, "second"),
            obs_for("mon-1", 1, "P1"),
            dl_rec("mllp", 1, "first"),
            wrong_body,
            dl_rec("mllp", 4, "fourth"),
            dl_rec("mon-1", 1, "other device"),
            adt_rec(1, "A01", "P1"),
            dl_in_obs_stream,
        ];
        let plan = plan_bundles(records, 100);
        let summary: Vec<(Stream, &str, u64, u64, &str)> = plan
            .bundles
            .iter()
            .map(|b| {
                (
                    b.stream,
                    b.device_id.as_str(),
                    b.first_seq,
                    b.last_seq,
                    b.patient_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Stream::Adt, "adt", 1, 1, "P1"),
                (Stream::Observations, "mon-1", 1, 1, "P1"),
                (Stream::DeadLetters, "mllp", 1, 1, ""),
                (Stream::DeadLetters, "mllp", 2, 2, ""),
                (Stream::DeadLetters, "mllp", 4, 4, ""),
                (Stream::DeadLetters, "mon-1", 1, 1, ""),
            ],
            "dead letters last, one per bundle, never a patient"
        );
        let reasons: Vec<&str> = plan.bundles[2..]
            .iter()
            .map(|b| b.dead_letter.as_ref().unwrap().reason.as_str())
            .collect();
        assert_eq!(reasons, ["first", "second", "fourth", "other device"]);
        assert!(plan.bundles[2..]
            .iter()
            .all(|b| b.observations.is_empty() && b.alarms.is_empty() && b.adt.is_none()));
        assert!(plan.bundles[..2].iter().all(|b| b.dead_letter.is_none()));
        assert_eq!(
            plan.skipped,
            [
                SkippedRecord {
                    stream: Stream::Observations,
                    device_id: "mon-1".into(),
                    seq: 2,
                    kind: "dead_letter"
                },
                SkippedRecord {
                    stream: Stream::DeadLetters,
                    device_id: "mllp".into(),
                    seq: 3,
                    kind: "observation"
                },
            ]
        );
    }

    /// Record `seq` of mon-1 (bed-1) on `stream` with `body`.
    fn mon1(stream: Stream, seq: u64, body: Body) -> OutboxRecord {
        let mut rec = obs_rec("mon-1", seq);
        rec.stream = stream;
        rec.record.body = Some(body);
        rec
    }

    fn wave_rec(seq: u64, start_ms: i64, patient: &str) -> OutboxRecord {
        let segment = WaveformSegment {
            // One second at 500 Hz.
            sample_period_us: 2000.0,
            sample_count: 500,
            first_sample_time_us: Some(1_700_000_000_000_000 + start_ms * 1000),
            receive_time_us: 1_700_000_000_000_000,
            patient_id: patient.into(),
            ..Default::default()
        };
        mon1(Stream::Waveforms, seq, Body::Waveform(segment))
    }

    #[test]
    fn waveform_bundles_hold_a_few_seconds_of_one_devices_curves_and_one_patient() {
        // Two channels, one-second segments, interleaved by seq: 0-1 s, 0-1 s, 1-2 s, ...
        let records: Vec<OutboxRecord> = (1..=16)
            .map(|seq| wave_rec(seq, ((seq as i64 - 1) / 2) * 1000, "P1"))
            .chain([
                wave_rec(17, 8000, "P2"),
                wave_rec(18, 8000, ""),
                obs_for("mon-1", 1, "P1"),
            ])
            .collect();
        let limits = PlanLimits::new(100);
        let plan = plan_bundles_with(records.clone(), limits);
        let summary: Vec<(Stream, u64, u64, &str)> = plan
            .bundles
            .iter()
            .map(|b| (b.stream, b.first_seq, b.last_seq, b.patient_id.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (Stream::Observations, 1, 1, "P1"),
                (Stream::Waveforms, 1, 10, "P1"),
                (Stream::Waveforms, 11, 16, "P1"),
                (Stream::Waveforms, 17, 17, "P2"),
                (Stream::Waveforms, 18, 18, ""),
            ],
            "observations first; 5 s of timeline per bundle; never two patients"
        );
        let b = &plan.bundles[1];
        assert_eq!(b.waveforms.len(), 10);
        assert!(b
            .waveforms
            .iter()
            .zip(1..)
            .all(|(w, seq)| w.seq == seq && w.device_id == "mon-1" && w.bed == "bed-1"));
        assert!(b.observations.is_empty() && b.alarms.is_empty() && b.snippet.is_none());

        // The segment cap.
        let capped = plan_bundles_with(
            records,
            PlanLimits {
                max_waveform_segments: 4,
                ..limits
            },
        );
        let lens: Vec<usize> = capped
            .bundles
            .iter()
            .filter(|b| b.stream == Stream::Waveforms)
            .map(PlannedBundle::len)
            .collect();
        assert_eq!(lens, [4, 4, 4, 4, 1, 1]);
        // A segment longer than the span goes alone; an untrusted device time is not the
        // timeline (the receive time is).
        let mut long = wave_rec(1, 0, "P1");
        let mut untrusted = wave_rec(2, 3_600_000, "P1");
        if let Some(Body::Waveform(w)) = &mut long.record.body {
            w.sample_count = 5000; // 10 s
        }
        if let Some(Body::Waveform(w)) = &mut untrusted.record.body {
            w.device_time_untrusted = true;
        }
        let plan = plan_bundles_with(vec![long, untrusted, wave_rec(3, 1000, "P1")], limits);
        assert_eq!(ranges(&plan), [("mon-1", 1, 1), ("mon-1", 2, 3)]);
    }

    #[test]
    fn an_alarm_snippet_is_a_bundle_of_its_own_between_alarm_state_changes() {
        let rec = |seq: u64, body: Body| mon1(Stream::Alarms, seq, body);
        let snippet = || {
            Body::AlarmSnippet(AlarmSnippet {
                patient_id: " P1 ".into(),
                ..Default::default()
            })
        };
        let alarm = || {
            Body::Alarm(Alarm {
                patient_id: "P1".into(),
                ..Default::default()
            })
        };
        let plan = plan_bundles(
            vec![
                rec(1, alarm()),
                rec(2, snippet()),
                rec(3, alarm()),
                rec(4, alarm()),
                rec(5, snippet()),
                rec(6, snippet()),
            ],
            100,
        );
        assert_eq!(
            ranges(&plan),
            [
                ("mon-1", 1, 1),
                ("mon-1", 2, 2),
                ("mon-1", 3, 4),
                ("mon-1", 5, 5),
                ("mon-1", 6, 6)
            ]
        );
        let s = plan.bundles[1].snippet.as_ref().expect("the snippet");
        assert_eq!(
            (s.seq, s.device_id.as_str(), s.bed.as_str()),
            (2, "mon-1", "bed-1")
        );
        assert_eq!(plan.bundles[1].patient_id, "P1", "trimmed, the record key");
        assert!(plan.bundles[1].alarms.is_empty());
        assert!(plan.bundles[2].snippet.is_none() && plan.bundles[2].alarms.len() == 2);
        // A waveform in the alarm stream (or a snippet elsewhere) is not forwarded.
        let mut wrong = rec(7, snippet());
        wrong.stream = Stream::Waveforms;
        let plan = plan_bundles(vec![wrong], 100);
        assert_eq!(plan.skipped[0].kind, "alarm_snippet");
    }
}
