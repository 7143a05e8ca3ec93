//! Alarm snippets (issue 19): each alarm start on a bed with curves gets the bed's curves from
//! `snippet_before_s` before to `snippet_after_s` after its start attached, as one
//! `icu.v1.AlarmSnippet` stored on the alarm stream of the device whose alarm it is (the bridge
//! sends it to `icu.alarms` as a DiagnosticReport grouping the waveform Observations and
//! referring to the alarm's start record).
//!
//! The `SnippetBuilder` actor is told of each start once the store has kept it (with its seq;
//! `alarm::actor::OnStoredStart`), waits until the window has passed plus `snippet_grace_s`
//! for the last segments to arrive, then cuts the window out of the in-memory ring
//! (`LiveState.waves`, the last minute per channel: no disk read) and hands the snippet to the
//! store. It never touches the alarm path: alarms are raised, shown and sent before and
//! whatever happens here. A start on a bed without curves in the window gets no snippet
//! (counted). Pending starts are bounded ([`MAX_PENDING`]); beyond that a start is counted and
//! logged, never queued without limit.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use icu_protos::v1::{Alarm, AlarmSnippet};

use crate::alarm::actor::AlarmPathStats;
use crate::clock::now_us;
use crate::live::LiveState;
use crate::store::{Append, SnippetWrite, Store, WriteOutcome, WriteRequest};
use crate::waves::{cut, WaveformSettings};

/// Most alarm starts waiting for their window to pass.
pub const MAX_PENDING: usize = 1_000;

/// Most sample positions in one snippet: its FHIR record (about 6 bytes a position) must stay
/// under Kafka's default 1 MB record limit, or it would hold up its device's alarm stream. Five
/// channels (3 ECG at 500 Hz, 2 at 125 Hz) for 30 s are 52,500; a 12-lead monitor is cut to the
/// channels that fit, whole channels in MDC code order (ECG leads first), and logged.
pub const MAX_SNIPPET_POSITIONS: u64 = 120_000;

/// An alarm start the store has kept under `seq` on its device's alarm stream.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AlarmStarted {
    pub alarm: Alarm,
    pub seq: u64,
}

struct Pending {
    alarm: Alarm,
    seq: u64,
    due_us: i64,
}

pub struct SnippetBuilder {
    live: Arc<LiveState>,
    store: Addr<Store>,
    settings: WaveformSettings,
    stats: Arc<AlarmPathStats>,
    /// By (due time, device, seq): the next due first.
    pending: BTreeMap<(i64, String, u64), Pending>,
}

impl SnippetBuilder {
    pub fn start(
        live: Arc<LiveState>,
        store: Addr<Store>,
        settings: WaveformSettings,
        stats: Arc<AlarmPathStats>,
    ) -> Addr<Self> {
        SnippetBuilder::create(|ctx| {
            ctx.set_mailbox_capacity(256);
            SnippetBuilder {
                live,
                store,
                settings,
                stats,
                pending: BTreeMap::new(),
            }
        })
    }

    /// The snippet of one start, cut from the ring; `None` when the bed had no curves then.
    fn build(&self, p: &Pending, now: i64) -> Option<AlarmSnippet> {
        let a = &p.alarm;
        let from = a.event_time_us - i64::from(self.settings.snippet_before_s) * 1_000_000;
        let to = a.event_time_us + i64::from(self.settings.snippet_after_s) * 1_000_000;
        let mut segments: Vec<_> = self
            .live
            .waves
            .between(&a.bed, from, to)
            .iter()
            .filter_map(|s| cut(s, from, to))
            .collect();
        if segments.is_empty() {
            return None;
        }
        segments.sort_by(|x, y| {
            (
                &x.device_id,
                x.mdc_code,
                &x.mdc_refid,
                crate::waves::start_us(x),
            )
                .cmp(&(
                    &y.device_id,
                    y.mdc_code,
                    &y.mdc_refid,
                    crate::waves::start_us(y),
                ))
        });
        // Whole channels while they fit the record limit.
        let mut per_channel: BTreeMap<(String, u32, String), u64> = BTreeMap::new();
        for seg in &segments {
            *per_channel
                .entry((seg.device_id.clone(), seg.mdc_code, seg.mdc_refid.clone()))
                .or_default() += u64::from(seg.sample_count);
        }
        let mut total = 0u64;
        let mut kept = std::collections::BTreeSet::new();
        for (channel, n) in &per_channel {
            if total + n <= MAX_SNIPPET_POSITIONS {
                total += n;
                kept.insert(channel.clone());
            }
        }
        if kept.len() < per_channel.len() {
            tracing::warn!(bed = %a.bed, alarm_id = %a.alarm_id, channels = per_channel.len(), kept = kept.len(),
                "alarm snippet cut to the channels that fit one Kafka record ({MAX_SNIPPET_POSITIONS} samples)");
            segments.retain(|seg| {
                kept.contains(&(seg.device_id.clone(), seg.mdc_code, seg.mdc_refid.clone()))
            });
        }
        Some(AlarmSnippet {
            device_id: a.device_id.clone(),
            seq: 0,
            bed: a.bed.clone(),
            alarm_id: a.alarm_id.clone(),
            alarm_mdc_code: a.mdc_code,
            alarm_source: a.source.clone(),
            alarm_text: a.text.clone(),
            alarm_seq: p.seq,
            alarm_start_us: a.event_time_us,
            window_start_us: from,
            window_end_us: to,
            patient_id: a.patient_id.clone(),
            segments,
            built_time_us: now,
        })
    }

    fn due(&mut self, ctx: &mut Context<Self>) {
        let now = now_us();
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().due_us > now {
                break;
            }
            let p = entry.remove();
            let Some(snippet) = self.build(&p, now) else {
                self.stats
                    .snippets
                    .no_curves
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bed = %p.alarm.bed, alarm_id = %p.alarm.alarm_id, "alarm start without curves: no snippet");
                continue;
            };
            let snippet = Arc::new(snippet);
            self.live.waves.keep_snippet(snippet.clone());
            let request = WriteRequest::Snippet(SnippetWrite {
                device_id: p.alarm.device_id.clone(),
                bed: p.alarm.bed.clone(),
                snippet: (*snippet).clone(),
            });
            let stats = self.stats.clone();
            let (bed, alarm_id) = (p.alarm.bed.clone(), p.alarm.alarm_id.clone());
            ctx.spawn(
                self.store
                    .send(Append(request))
                    .into_actor(self)
                    .map(move |res, _, _| match res {
                        Ok(Ok(WriteOutcome::Stored { first_seq, .. })) => {
                            stats.snippets.stored.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%bed, %alarm_id, seq = first_seq, "alarm snippet stored");
                        }
                        other => {
                            stats.snippets.store_failures.fetch_add(1, Ordering::Relaxed);
                            let why = match other {
                                Ok(Err(e)) => e.to_string(),
                                Ok(Ok(o)) => format!("{o:?}"),
                                Err(e) => e.to_string(),
                            };
                            tracing::error!(%bed, %alarm_id, %why, "alarm snippet not stored (the alarm itself was)");
                        }
                    }),
            );
        }
    }
}

impl Actor for SnippetBuilder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_millis(250), |act, ctx| act.due(ctx));
    }
}

impl Handler<AlarmStarted> for SnippetBuilder {
    type Result = ();

    fn handle(&mut self, msg: AlarmStarted, _: &mut Self::Context) {
        if msg.alarm.bed.is_empty() {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.stats.snippets.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bed = %msg.alarm.bed, alarm_id = %msg.alarm.alarm_id, "alarm snippet not built: {MAX_PENDING} starts already wait for theirs");
            return;
        }
        let after = self.settings.snippet_after_s + self.settings.snippet_grace_s;
        let due_us = msg.alarm.event_time_us + i64::from(after) * 1_000_000;
        let key = (due_us, msg.alarm.device_id.clone(), msg.seq);
        self.pending.insert(
            key,
            Pending {
                alarm: msg.alarm,
                seq: msg.seq,
                due_us,
            },
        );
    }
}

/// The listener the alarm actor calls for each stored start: hands it to the builder with
/// `try_send` (never blocks the alarm actor; a full mailbox is counted and logged).
pub fn listener(
    builder: Addr<SnippetBuilder>,
    stats: Arc<AlarmPathStats>,
) -> crate::alarm::actor::StoredStartListener {
    Box::new(move |alarm: &Alarm, seq: u64| {
        if builder
            .try_send(AlarmStarted {
                alarm: alarm.clone(),
                seq,
            })
            .is_err()
        {
            stats.snippets.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(bed = %alarm.bed, alarm_id = %alarm.alarm_id, "alarm snippet not built: the builder's mailbox is full");
        }
    })
}
