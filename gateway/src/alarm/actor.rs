//! The alarm engine inside the actix system.
//!
//! Owns: feeding the [`Engine`] with every decoded observation (device actors `try_send` it
//! before the store sees the readings, so the alarm path never waits on the disk or Kafka),
//! clinician limit overrides (persisted in SQLite by the HTTP layer, applied here without a
//! restart), acknowledge and silence actions, and handing every alarm state change to its
//! outputs: the live view (page), the store (for `icu.alarms`), and PCD-04 when configured. Each
//! output is independent: storing is spawned, never awaited on the alarm path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use icu_protos::v1::{Alarm, Observation};

use super::{AlarmError, AlarmView, Engine, EngineStats};
use crate::clock::now_us;
use crate::store::{AlarmWrite, Append, Store, WriteRequest};

/// Most observation batches waiting for the engine; beyond that they are counted as dropped.
pub const ALARM_MAILBOX: usize = 4096;

/// Counters of the alarm path visible on `/api/status`.
#[derive(Debug, Default)]
pub struct AlarmPathStats {
    /// Batches a device actor could not hand to the engine because its mailbox was full.
    pub dropped_batches: AtomicU64,
    pub state_changes: AtomicU64,
    pub store_failures: AtomicU64,
}

/// An alarm state change as JSON (the page's events and the MQTT alarm topic).
pub fn alarm_json(a: &Alarm) -> serde_json::Value {
    serde_json::json!({
        "alarm_id": a.alarm_id,
        "bed": a.bed,
        "device_id": a.device_id,
        "patient_id": a.patient_id,
        "mdc_code": a.mdc_code,
        "text": a.text,
        "priority": a.priority,
        "phase": a.phase,
        "state": a.state,
        "alert_type": a.alert_type,
        "source": a.source,
        "event_time_us": a.event_time_us,
    })
}

/// Where alarm state changes go besides the store.
pub type AlarmListener = Box<dyn Fn(&Alarm) + Send>;

pub struct AlarmActor {
    engine: Engine,
    store: Addr<Store>,
    stats: Arc<AlarmPathStats>,
    listeners: Vec<AlarmListener>,
}

impl AlarmActor {
    pub fn start(
        engine: Engine,
        store: Addr<Store>,
        stats: Arc<AlarmPathStats>,
        listeners: Vec<AlarmListener>,
    ) -> Addr<AlarmActor> {
        // Its own thread: the alarm path never queues behind MLLP parsing, device actors or the
        // HTTP layer on the system arbiter (measured by `benches/alarm_latency.rs`). The arbiter
        // stops with the system.
        let arbiter = Arbiter::new();
        AlarmActor::start_in_arbiter(&arbiter.handle(), move |ctx| {
            ctx.set_mailbox_capacity(ALARM_MAILBOX);
            AlarmActor {
                engine,
                store,
                stats,
                listeners,
            }
        })
    }

    fn emit(&mut self, alarms: Vec<Alarm>, ctx: &mut Context<Self>) {
        for alarm in alarms {
            self.stats.state_changes.fetch_add(1, Ordering::Relaxed);
            tracing::info!(bed = %alarm.bed, device = %alarm.device_id, alarm_id = %alarm.alarm_id,
                phase = %alarm.phase, state = %alarm.state, priority = %alarm.priority, text = %alarm.text, "alarm");
            for l in &self.listeners {
                l(&alarm);
            }
            let stats = self.stats.clone();
            let request = WriteRequest::Alarm(AlarmWrite {
                device_id: alarm.device_id.clone(),
                bed: alarm.bed.clone(),
                alarm,
            });
            ctx.spawn(
                self.store
                    .send(Append(request))
                    .into_actor(self)
                    .map(move |res, _, _| {
                        if !matches!(res, Ok(Ok(_))) {
                            stats.store_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                "alarm state change not stored (it was shown and sent)"
                            );
                        }
                    }),
            );
        }
    }
}

impl Actor for AlarmActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            let alarms = act.engine.tick(now_us());
            act.emit(alarms, ctx);
        });
    }
}

/// Decoded observations of one message (sent by device actors with `try_send`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observations(pub std::sync::Arc<[Observation]>);

impl Handler<Observations> for AlarmActor {
    type Result = ();

    fn handle(&mut self, msg: Observations, ctx: &mut Self::Context) {
        let now = now_us();
        let mut out = Vec::new();
        for o in msg.0.iter() {
            out.extend(self.engine.on_observation(o, now));
        }
        self.emit(out, ctx);
    }
}

/// A technical condition from a device actor: its feed went silent (`gateway:stale-feed`) or the
/// device reports a condition (raised or cleared).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Technical {
    pub bed: String,
    pub device_id: String,
    pub condition: String,
    pub text: String,
    /// PH, PM or PL.
    pub priority: String,
    pub active: bool,
    pub time_us: i64,
}

impl Handler<Technical> for AlarmActor {
    type Result = ();

    fn handle(&mut self, m: Technical, ctx: &mut Self::Context) {
        let alarms = if m.condition == super::STALE_FEED_SOURCE {
            self.engine
                .stale_feed(&m.bed, &m.device_id, m.active, m.time_us)
        } else {
            let priority = match m.priority.as_str() {
                "PH" => super::Priority::High,
                "PL" => super::Priority::Low,
                _ => super::Priority::Medium,
            };
            self.engine.device_condition(
                &m.bed,
                &m.device_id,
                &m.condition,
                &m.text,
                priority,
                m.active,
                m.time_us,
            )
        };
        self.emit(alarms, ctx);
    }
}

/// A clinician's limit change for one bed and parameter (`None` switches that side off).
#[derive(Message)]
#[rtype(result = "Result<(), AlarmError>")]
pub struct SetLimits {
    pub bed: String,
    pub mdc_code: u32,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

impl Handler<SetLimits> for AlarmActor {
    type Result = Result<(), AlarmError>;

    fn handle(&mut self, m: SetLimits, _: &mut Self::Context) -> Self::Result {
        self.engine
            .set_bed_limits(&m.bed, m.mdc_code, m.low, m.high)
    }
}

/// Acknowledge (`silence_s` None) or silence an active alarm.
#[derive(Message)]
#[rtype(result = "Result<(), AlarmError>")]
pub struct AlarmAction {
    pub bed: String,
    pub alarm_id: String,
    pub who: String,
    pub silence_s: Option<u32>,
}

impl Handler<AlarmAction> for AlarmActor {
    type Result = Result<(), AlarmError>;

    fn handle(&mut self, m: AlarmAction, ctx: &mut Self::Context) -> Self::Result {
        let now = now_us();
        let alarms = match m.silence_s {
            None => self.engine.acknowledge(&m.bed, &m.alarm_id, &m.who, now)?,
            Some(s) => self.engine.silence(&m.bed, &m.alarm_id, s, &m.who, now)?,
        };
        tracing::info!(bed = %m.bed, alarm_id = %m.alarm_id, who = %m.who, silence_s = ?m.silence_s, "alarm action");
        self.emit(alarms, ctx);
        Ok(())
    }
}

/// Active alarms of every bed, for the page and the API.
#[derive(Message)]
#[rtype(result = "(Vec<AlarmView>, EngineStats)")]
pub struct GetActive;

impl Handler<GetActive> for AlarmActor {
    type Result = MessageResult<GetActive>;

    fn handle(&mut self, _: GetActive, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.engine.active_all(), self.engine.stats()))
    }
}

/// The effective limits of a bed's parameter.
#[derive(Message)]
#[rtype(result = "Option<super::Limits>")]
pub struct GetLimits {
    pub bed: String,
    pub mdc_code: u32,
}

impl Handler<GetLimits> for AlarmActor {
    type Result = Option<super::Limits>;

    fn handle(&mut self, m: GetLimits, _: &mut Self::Context) -> Self::Result {
        self.engine.effective_limits(&m.bed, m.mdc_code)
    }
}
