//! One actor per configured device.
//!
//! Owns: the device's identity (id, bed) on every reading it sends, its live counters, and the
//! hand-off of its readings to the store. Guarantees: readings are stamped with the configured
//! device id and bed (never a guessed patient), and reach the live view before the disk; the
//! reply resolves only after the store committed the whole message (or refused it), so the
//! transport acknowledges only what is durable. The mailbox is bounded: a transport that sends
//! faster than the disk takes is slowed down (`send().await` waits), never dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use icu_protos::v1::Alarm;

use crate::census::CensusReader;
use crate::clock::{now_us, ClockState};
use crate::domain::Device;
pub use crate::domain::LinkState;
use crate::live::LiveState;
use crate::store::{
    AlarmWrite, Append, ObservationBatch, Store, StoreError, WriteOrder, WriteOutcome, WriteRequest,
};

/// The alarm engine's address and the counters of its input path.
pub type AlarmPath = Option<(
    Addr<crate::alarm::actor::AlarmActor>,
    Arc<crate::alarm::actor::AlarmPathStats>,
)>;

/// Most messages waiting in one device's mailbox.
pub const DEVICE_MAILBOX: usize = 64;

/// How often the actor checks whether its feed went silent.
const SILENCE_CHECK: Duration = Duration::from_secs(1);

/// MDC_EVT_ALARM: the generic technical alarm event code (PCD-04).
pub const MDC_EVT_ALARM: u32 = 196616;

/// A transport's report about the link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Link {
    pub state: LinkState,
    pub reason: Option<String>,
}

/// Decoded observations from this device (any transport).
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, StoreError>")]
pub struct IngestObservations {
    pub observations: Vec<icu_protos::v1::Observation>,
    /// `(message id, digest of its bytes)` when the protocol has message ids, to recognise a
    /// sender's retry.
    pub dedup: Option<(String, i64)>,
    pub receive_time_us: i64,
    /// Ordering against this device's other writes; a [`WriteOrder::Retry`] is a message the
    /// alarm engine and live view already saw, so it is only stored.
    pub order: WriteOrder,
    /// The W3C trace context of the transport's commit span, kept with the stored records
    /// (`icu_cloud_bridge::trace`); `None` with tracing off.
    pub traceparent: Option<String>,
    /// The message's waveform segments (issue 19): stamped like the readings (bed, patient,
    /// clock) and stored with them in one commit, on the device's `waveforms` stream.
    pub waveforms: Vec<icu_protos::v1::WaveformSegment>,
}

/// As [`IngestObservations`], answered in two steps: the `send()` resolves as soon as the actor
/// handed the readings to the store (so the store sees them in mailbox order), and `reply`
/// gets the store's answer after the commit. Lets a transport keep many messages of one device
/// in flight (group commit) while their order into the store stays the order it sent them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueueObservations {
    pub ingest: IngestObservations,
    pub reply: tokio::sync::oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// A condition the device itself reports (e.g. Masimo EXC "sensor off"), raised or cleared.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceCondition {
    /// Stable id of the condition on this device, e.g. `masimo:exc:0x000020`.
    pub id: String,
    pub text: String,
    /// PH, PM or PL.
    pub priority: String,
    /// SP physiological, ST technical.
    pub alert_type: String,
    pub active: bool,
    pub time_us: i64,
}

pub struct DeviceActor {
    device: Device,
    store: Addr<Store>,
    live: Arc<LiveState>,
    clock: Arc<ClockState>,
    census: CensusReader,
    alarms: AlarmPath,
    /// Bounds of trust in the device's own clock (`alarms.device_clock`).
    device_clock: crate::alarm::DeviceClockConfig,
    /// Ingest counters of `/metrics`, counted here when the store answered: the one place that
    /// knows both the transport (from the protocol) and the outcome.
    ingest_stats: Arc<crate::metrics::IngestStats>,
    started_us: i64,
    last_seen_us: Option<i64>,
    /// Active alarms raised by this actor, by condition id, with their start time.
    active: HashMap<String, i64>,
    /// The silence check; cancelled when the device is retired, so that the actor stops once
    /// the last transport lets go of it.
    silence_check: Option<SpawnHandle>,
}

/// The device left the configuration (a reload removed or changed it): its open alarms end,
/// its silence check stops, and the actor stops once no transport holds its address any more.
/// Readings already handed to it are still stored and acknowledged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl DeviceActor {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        device: Device,
        store: Addr<Store>,
        live: Arc<LiveState>,
        clock: Arc<ClockState>,
        census: CensusReader,
        alarms: AlarmPath,
        device_clock: crate::alarm::DeviceClockConfig,
        ingest_stats: Arc<crate::metrics::IngestStats>,
    ) -> Addr<Self> {
        // Supervised: if the actor stops (a failed handler), it is restarted behind the same
        // address, so transports and routes keep working without re-wiring.
        actix::Supervisor::start(move |ctx: &mut Context<DeviceActor>| {
            ctx.set_mailbox_capacity(DEVICE_MAILBOX);
            DeviceActor {
                device,
                store,
                live,
                clock,
                census,
                alarms,
                device_clock: device_clock.clone(),
                ingest_stats,
                started_us: now_us(),
                last_seen_us: None,
                active: HashMap::new(),
                silence_check: None,
            }
        })
    }

    /// Stamps identity, updates the live view, and hands the readings to the store.
    fn ingest(
        &mut self,
        msg: IngestObservations,
        ctx: &mut Context<Self>,
    ) -> impl std::future::Future<Output = Result<WriteOutcome, StoreError>> + 'static {
        let IngestObservations {
            mut observations,
            dedup,
            receive_time_us,
            order,
            traceparent,
            mut waveforms,
        } = msg;
        let synced = self.clock.is_synced(receive_time_us);
        for o in &mut observations {
            o.device_id = self.device.id.clone();
            o.bed = self.device.bed.clone();
            o.clock_synced = synced;
            // Device time is trusted only within bounds (the same rule as the alarm engine's):
            // outside them the reading is flagged and placed at its receive time.
            let checked =
                crate::alarm::checked_time(o.device_time_us, o.receive_time_us, &self.device_clock);
            o.device_time_untrusted = checked.untrusted_offset_us.is_some();
            // The patient in this bed at the reading's own (checked) time (never a guess:
            // none → empty).
            let at = checked.t_us;
            o.patient_id = self
                .census
                .patient_at(&self.device.bed, at)
                .map(|p| p.patient_id)
                .unwrap_or_default();
        }
        // The curves get the same identity, clock and patient rules, by their first sample.
        for w in &mut waveforms {
            w.device_id = self.device.id.clone();
            w.bed = self.device.bed.clone();
            w.clock_synced = synced;
            let checked = crate::alarm::checked_time(
                w.first_sample_time_us,
                w.receive_time_us,
                &self.device_clock,
            );
            w.device_time_untrusted = checked.untrusted_offset_us.is_some();
            let at = crate::waves::start_us(w);
            w.patient_id = self
                .census
                .patient_at(&self.device.bed, at)
                .map(|p| p.patient_id)
                .unwrap_or_default();
        }
        let waveforms: Arc<[icu_protos::v1::WaveformSegment]> = waveforms.into();
        // The alarm engine and the live view first: they never wait for the disk. A full alarm
        // mailbox is counted and visible, never silent (the readings are still stored).
        // One allocation shared by the alarm actor and the store (no deep copy per reading).
        let observations: Arc<[icu_protos::v1::Observation]> = observations.into();
        let first_sight = !matches!(order, WriteOrder::Retry { .. });
        if let Some((engine, stats)) = self.alarms.as_ref().filter(|_| first_sight) {
            if engine
                .try_send(crate::alarm::actor::Observations(observations.clone()))
                .is_err()
            {
                stats
                    .dropped_batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(device = %self.device.id, bed = %self.device.bed, "alarm engine mailbox full: batch not evaluated");
            }
        }
        if first_sight {
            self.live.record_message(
                &self.device.id,
                &self.device.bed,
                &observations,
                receive_time_us,
            );
            if !waveforms.is_empty() {
                let kept: Vec<Arc<icu_protos::v1::WaveformSegment>> =
                    waveforms.iter().map(|w| Arc::new(w.clone())).collect();
                self.live.waves.record(&kept);
            }
            self.last_seen_us = Some(receive_time_us);
        }
        if first_sight && self.active.contains_key(STALE_FEED) {
            self.raise(
                ctx,
                STALE_FEED,
                "data flows again".into(),
                "PM",
                "ST",
                false,
                receive_time_us,
            );
        }
        let request = WriteRequest::Observations(ObservationBatch {
            device_id: self.device.id.clone(),
            bed: self.device.bed.clone(),
            dedup,
            observations,
            order,
            traceparent,
            waveforms: waveforms.clone(),
        });
        let stored = self.store.send(Append(request));
        let live = self.live.clone();
        let device_id = self.device.id.clone();
        let ingest_stats = self.ingest_stats.clone();
        let transport = crate::metrics::Transport::of(self.device.protocol);
        async move {
            match stored.await {
                Ok(Ok(outcome)) => {
                    match &outcome {
                        WriteOutcome::Stored {
                            first_seq,
                            last_seq,
                        } => {
                            ingest_stats
                                .stored(transport, (last_seq + 1).saturating_sub(*first_seq));
                            // Serial has no ACK: its latency is receipt to commit (MLLP and
                            // MQTT count theirs where the ACK leaves).
                            if transport == crate::metrics::Transport::Serial {
                                let us = now_us().saturating_sub(receive_time_us).max(0);
                                ingest_stats.ack_latency(transport).observe(us as f64 / 1e6);
                            }
                        }
                        WriteOutcome::Duplicate { .. } => {
                            ingest_stats.duplicate(transport);
                            live.record_duplicate(&device_id);
                        }
                        _ => {}
                    }
                    Ok(outcome)
                }
                Ok(Err(e)) => {
                    ingest_stats.refused(transport, &e);
                    live.record_error(&device_id, &e.to_string());
                    Err(e)
                }
                Err(_) => {
                    ingest_stats.refused(transport, &StoreError::Closed);
                    Err(StoreError::Closed)
                }
            }
        }
    }

    /// Starts (`active`) or ends an alarm of this device and stores the state change; it is
    /// forwarded to `icu.alarms`. Repeated starts or ends of the same condition are ignored.
    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        ctx: &mut Context<Self>,
        id: &str,
        text: String,
        priority: &str,
        alert_type: &str,
        active: bool,
        time_us: i64,
    ) {
        let started = match (active, self.active.get(id).copied()) {
            (true, Some(_)) | (false, None) => return,
            (true, None) => {
                self.active.insert(id.to_owned(), time_us);
                time_us
            }
            (false, Some(start)) => {
                self.active.remove(id);
                start
            }
        };
        let alarm = Alarm {
            device_id: self.device.id.clone(),
            seq: 0,
            bed: self.device.bed.clone(),
            alarm_id: format!("{}:{id}:{started}", self.device.id),
            mdc_code: MDC_EVT_ALARM,
            text,
            priority: priority.to_owned(),
            phase: if active { "start" } else { "end" }.into(),
            state: if active { "active" } else { "inactive" }.into(),
            event_time_us: time_us,
            alert_type: alert_type.to_owned(),
            source: id.to_owned(),
            patient_id: self
                .census
                .patient_at(&self.device.bed, time_us)
                .map(|p| p.patient_id)
                .unwrap_or_default(),
            ..Alarm::default()
        };
        if active {
            tracing::warn!(device = %self.device.id, bed = %self.device.bed, condition = id, text = %alarm.text, "technical alarm raised");
        } else {
            tracing::info!(device = %self.device.id, bed = %self.device.bed, condition = id, "technical alarm ended");
        }
        self.live.record_alarm(&self.device.id, &alarm);
        // Through the alarm engine when there is one, so technical alarms reach every output
        // (page events, MQTT, PCD-04, store) with the same lifecycle as physiological ones.
        if let Some((engine, stats)) = &self.alarms {
            let msg = crate::alarm::actor::Technical {
                bed: self.device.bed.clone(),
                device_id: self.device.id.clone(),
                condition: id.to_owned(),
                text: alarm.text.clone(),
                priority: priority.to_owned(),
                active,
                time_us,
            };
            if engine.try_send(msg).is_err() {
                stats
                    .dropped_batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(device = %self.device.id, bed = %self.device.bed, "alarm engine mailbox full: technical alarm not evaluated");
            } else {
                return;
            }
        }
        let request = WriteRequest::Alarm(AlarmWrite {
            device_id: self.device.id.clone(),
            bed: self.device.bed.clone(),
            alarm,
        });
        let (device_id, bed) = (self.device.id.clone(), self.device.bed.clone());
        ctx.spawn(
            self.store
                .send(Append(request))
                .into_actor(self)
                .map(move |res, _, _| match res {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(device = %device_id, bed = %bed, error = %e, "alarm state change not stored")
                    }
                    Err(_) => tracing::error!(device = %device_id, bed = %bed, "alarm state change not stored: store stopped"),
                }),
        );
    }

    fn check_silence(&mut self, ctx: &mut Context<Self>) {
        let now = now_us();
        let since = self.last_seen_us.unwrap_or(self.started_us);
        let silent_for = now.saturating_sub(since);
        if silent_for > self.device.silent_after.as_micros() as i64 {
            let text = match self.last_seen_us {
                Some(_) => format!(
                    "no data from {} at {} for {} s",
                    self.device.id,
                    self.device.bed,
                    silent_for / 1_000_000
                ),
                None => format!(
                    "{} at {} has not sent data since the gateway started",
                    self.device.id, self.device.bed
                ),
            };
            self.raise(ctx, STALE_FEED, text, "PM", "ST", true, now);
        }
    }
}

/// Condition id of the stale-feed technical alarm.
pub const STALE_FEED: &str = "gateway:stale-feed";

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(device = %self.device.id, bed = %self.device.bed, "device actor started");
        self.silence_check =
            Some(ctx.run_interval(SILENCE_CHECK, |act, ctx| act.check_silence(ctx)));
    }
}

/// A reload changed `alarms.device_clock`: the bounds of trust in device time apply from the
/// next reading on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDeviceClock(pub crate::alarm::DeviceClockConfig);

impl Handler<SetDeviceClock> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: SetDeviceClock, _: &mut Self::Context) {
        self.device_clock = msg.0;
    }
}

impl Handler<Retire> for DeviceActor {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        if let Some(h) = self.silence_check.take() {
            ctx.cancel_future(h);
        }
        let now = now_us();
        let mut open: Vec<String> = self.active.keys().cloned().collect();
        open.sort();
        for id in open {
            self.raise(
                ctx,
                &id,
                format!("{} removed from the configuration", self.device.id),
                "PM",
                "ST",
                false,
                now,
            );
        }
        tracing::info!(device = %self.device.id, bed = %self.device.bed,
            "device retired by a configuration reload: it stops once its last message is stored");
    }
}

impl actix::Supervised for DeviceActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!(device = %self.device.id, bed = %self.device.bed, "device actor restarting");
        self.live
            .record_error(&self.device.id, "device actor restarted");
    }
}

impl Handler<Link> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: Link, _: &mut Self::Context) {
        tracing::info!(device = %self.device.id, bed = %self.device.bed, state = ?msg.state, reason = msg.reason.as_deref().unwrap_or(""), "device link");
        self.live.set_link(&self.device.id, msg.state, msg.reason);
    }
}

impl Handler<DeviceCondition> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: DeviceCondition, ctx: &mut Self::Context) {
        self.raise(
            ctx,
            &msg.id,
            msg.text,
            &msg.priority,
            &msg.alert_type,
            msg.active,
            msg.time_us,
        );
    }
}

impl Handler<IngestObservations> for DeviceActor {
    type Result = ResponseFuture<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, msg: IngestObservations, ctx: &mut Self::Context) -> Self::Result {
        Box::pin(self.ingest(msg, ctx))
    }
}

impl Handler<QueueObservations> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: QueueObservations, ctx: &mut Self::Context) {
        let stored = self.ingest(msg.ingest, ctx);
        let reply = msg.reply;
        // As a `ResponseFuture` is run: beside the next messages, on this arbiter.
        actix::spawn(async move {
            let _ = reply.send(stored.await);
        });
    }
}
