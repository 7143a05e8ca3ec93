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
use crate::store::{AlarmWrite, Append, Store, WriteOutcome, WriteRequest};

/// Most observation batches waiting for the engine; beyond that they are counted as dropped.
pub const ALARM_MAILBOX: usize = 4096;

/// How often the alarm records are summarised in one info line.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Counters of the alarm path visible on `/api/status`.
#[derive(Debug)]
pub struct AlarmPathStats {
    /// Batches a device actor could not hand to the engine because its mailbox was full.
    pub dropped_batches: AtomicU64,
    pub state_changes: AtomicU64,
    pub store_failures: AtomicU64,
    /// `icu_alarm_path_latency_seconds`: a reading's receipt (its `receive_time_us`) to the
    /// alarm state change it caused, handed to every output (page, MQTT, PCD-04); one
    /// observation per state change.
    pub latency: prometheus::Histogram,
    /// What the alarm snippet builder (`crate::snippet`) did with the starts it was told of.
    pub snippets: SnippetStats,
}

/// The alarm snippet builder's counters (`GET /api/alarms` `snippets`).
#[derive(Debug, Default, serde::Serialize)]
pub struct SnippetStats {
    /// Snippets built and stored.
    pub stored: AtomicU64,
    /// Starts on a bed with no curves in the window (no snippet).
    pub no_curves: AtomicU64,
    /// Snippets the store refused (logged).
    pub store_failures: AtomicU64,
    /// Starts not taken: the builder's mailbox or its pending list was full (logged).
    pub dropped: AtomicU64,
}

impl Default for AlarmPathStats {
    fn default() -> Self {
        Self {
            dropped_batches: AtomicU64::new(0),
            state_changes: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            snippets: SnippetStats::default(),
            latency: crate::metrics::alarm_path_latency_histogram(),
        }
    }
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

/// Told of each alarm *start* once the store has kept it, with its seq on the device's alarm
/// stream (the alarm snippet builder refers to that record).
pub type StoredStartListener = Box<dyn Fn(&Alarm, u64) + Send>;

/// Whether an alarm output can deliver now: `None` when it can, else why it cannot.
pub type OutputProbe = Box<dyn Fn() -> Option<String> + Send>;

/// One alarm output watched for the `gateway:alarm-output` technical alarm.
pub struct WatchedOutput {
    /// Stable short key, part of the alarm id: `pcd04`, `mqtt`, `page-events`.
    pub key: &'static str,
    /// Name shown in the alarm text, e.g. `pcd04 alarm manager 10.1.2.3:2575`.
    pub name: String,
    pub probe: OutputProbe,
}

/// An output seen down: since when, and whether the technical alarm is raised.
struct Down {
    since_us: i64,
    raised: bool,
}

pub struct AlarmActor {
    engine: Engine,
    store: Addr<Store>,
    stats: Arc<AlarmPathStats>,
    listeners: Vec<AlarmListener>,
    outputs: Vec<WatchedOutput>,
    stored_starts: Vec<StoredStartListener>,
    down: std::collections::HashMap<String, Down>,
    /// Records per phase since the last summary line.
    summary: std::collections::BTreeMap<String, u64>,
}

impl AlarmActor {
    pub fn start(
        engine: Engine,
        store: Addr<Store>,
        stats: Arc<AlarmPathStats>,
        listeners: Vec<AlarmListener>,
        outputs: Vec<WatchedOutput>,
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
                outputs,
                stored_starts: Vec::new(),
                down: Default::default(),
                summary: Default::default(),
            }
        })
    }

    /// Raises the `gateway:alarm-output` technical alarm for an output that has been down for
    /// `alarms.outputs.down_after_s`, and ends it when the output delivers again.
    fn watch_outputs(&mut self, now: i64) -> Vec<Alarm> {
        let after_us = i64::from(self.engine.config().outputs.down_after_s) * 1_000_000;
        let mut alarms = Vec::new();
        for output in &self.outputs {
            match (output.probe)() {
                Some(why) => {
                    let down = self.down.entry(output.name.clone()).or_insert(Down {
                        since_us: now,
                        raised: false,
                    });
                    let for_s = (now - down.since_us) / 1_000_000;
                    if now - down.since_us >= after_us {
                        let text = format!(
                            "alarm output {} down for {for_s} s: {why}; alarms are not reaching it",
                            output.name
                        );
                        if !down.raised {
                            tracing::error!(output = %output.name, %why, "alarm output down: technical alarm raised");
                        }
                        down.raised = true;
                        alarms.extend(self.engine.output_down(output.key, &text, true, now));
                    }
                }
                None => {
                    if let Some(down) = self.down.remove(&output.name) {
                        if down.raised {
                            tracing::info!(output = %output.name, "alarm output delivers again");
                            alarms.extend(self.engine.output_down(output.key, "", false, now));
                        }
                    }
                }
            }
        }
        alarms
    }

    /// One info line for the records of the last [`SUMMARY_EVERY`] (none when there were none):
    /// a sick unit's alarm traffic is a line a minute in the log, each record at debug.
    fn summarise(&mut self) {
        if self.summary.is_empty() {
            return;
        }
        let counts = std::mem::take(&mut self.summary);
        let total: u64 = counts.values().sum();
        let by_phase = counts
            .iter()
            .map(|(phase, n)| format!("{phase} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let open = self.engine.active_all().len();
        tracing::info!(
            records = total,
            open,
            "alarm records in the last {} s: {by_phase}; {open} open",
            SUMMARY_EVERY.as_secs()
        );
    }

    fn emit(&mut self, alarms: Vec<Alarm>, ctx: &mut Context<Self>) {
        for alarm in alarms {
            self.stats.state_changes.fetch_add(1, Ordering::Relaxed);
            // Each record at debug; the minute's summary at info (`summarise`).
            tracing::debug!(bed = %alarm.bed, device = %alarm.device_id, alarm_id = %alarm.alarm_id,
                phase = %alarm.phase, state = %alarm.state, priority = %alarm.priority, text = %alarm.text, "alarm");
            *self.summary.entry(alarm.phase.clone()).or_default() += 1;
            for l in &self.listeners {
                l(&alarm);
            }
            let stats = self.stats.clone();
            let start =
                (alarm.phase == "start" && !self.stored_starts.is_empty()).then(|| alarm.clone());
            let request = WriteRequest::Alarm(AlarmWrite {
                device_id: alarm.device_id.clone(),
                bed: alarm.bed.clone(),
                alarm,
            });
            ctx.spawn(self.store.send(Append(request)).into_actor(self).map(
                move |res, act: &mut AlarmActor, _| {
                    if let (Some(a), Ok(Ok(WriteOutcome::Stored { first_seq, .. }))) =
                        (&start, &res)
                    {
                        for l in &act.stored_starts {
                            l(a, *first_seq);
                        }
                    }
                    if !matches!(res, Ok(Ok(_))) {
                        stats.store_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("alarm state change not stored (it was shown and sent)");
                    }
                },
            ));
        }
    }
}

impl Actor for AlarmActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            let now = now_us();
            let mut alarms = act.engine.tick(now);
            alarms.extend(act.watch_outputs(now));
            act.emit(alarms, ctx);
        });
        ctx.run_interval(SUMMARY_EVERY, |act, _| act.summarise());
    }
}

/// Decoded observations of one message (sent by device actors with `try_send`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Observations(pub std::sync::Arc<[Observation]>);

/// Adds a listener told of each stored alarm start (see [`StoredStartListener`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct OnStoredStart(pub StoredStartListener);

impl Handler<OnStoredStart> for AlarmActor {
    type Result = ();

    fn handle(&mut self, msg: OnStoredStart, _: &mut Self::Context) {
        self.stored_starts.push(msg.0);
    }
}

impl Handler<Observations> for AlarmActor {
    type Result = ();

    fn handle(&mut self, msg: Observations, ctx: &mut Self::Context) {
        let now = now_us();
        let out = self.engine.on_message(&msg.0, now);
        let (changes, received_us) = (out.len(), msg.0.first().map(|o| o.receive_time_us));
        self.emit(out, ctx);
        if let Some(received_us) = received_us.filter(|_| changes > 0) {
            let s = now_us().saturating_sub(received_us).max(0) as f64 / 1e6;
            for _ in 0..changes {
                self.stats.latency.observe(s);
            }
        }
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

/// A configuration reload's alarm rules (`[alarms]`). Answers how many open alarms ended
/// because their rule is gone, or the problems that kept the running rules.
#[derive(Message)]
#[rtype(result = "Result<usize, Vec<crate::domain::FieldProblem>>")]
pub struct ReplaceConfig(pub super::AlarmConfig);

impl Handler<ReplaceConfig> for AlarmActor {
    type Result = Result<usize, Vec<crate::domain::FieldProblem>>;

    fn handle(&mut self, m: ReplaceConfig, ctx: &mut Self::Context) -> Self::Result {
        let ended = self.engine.replace_config(m.0, now_us())?;
        let n = ended.len();
        self.emit(ended, ctx);
        Ok(n)
    }
}

/// A clinician's limit change for one bed and parameter (`None` switches that side off),
/// applied after it was persisted.
#[derive(Message)]
#[rtype(result = "Result<(), AlarmError>")]
pub struct SetLimits {
    pub bed: String,
    pub mdc_code: u32,
    pub change: super::LimitChange,
}

impl Handler<SetLimits> for AlarmActor {
    type Result = Result<(), AlarmError>;

    fn handle(&mut self, m: SetLimits, _: &mut Self::Context) -> Self::Result {
        self.engine.set_bed_limits(&m.bed, m.mdc_code, &m.change)
    }
}

/// Checks a limit change without applying it (before it is persisted); answers the sides it
/// switches off.
#[derive(Message)]
#[rtype(result = "Result<Option<String>, AlarmError>")]
pub struct CheckLimits {
    pub bed: String,
    pub mdc_code: u32,
    pub change: super::LimitChange,
}

impl Handler<CheckLimits> for AlarmActor {
    type Result = Result<Option<String>, AlarmError>;

    fn handle(&mut self, m: CheckLimits, _: &mut Self::Context) -> Self::Result {
        self.engine.check_bed_limits(&m.bed, m.mdc_code, &m.change)
    }
}

/// Limits switched off at the bedside and the trust state of device clocks, for the bed cards
/// and `/api/devices`.
#[derive(Message)]
#[rtype(result = "(Vec<super::LimitOff>, Vec<super::DeviceClockView>)")]
pub struct GetCaveats;

impl Handler<GetCaveats> for AlarmActor {
    type Result = MessageResult<GetCaveats>;

    fn handle(&mut self, _: GetCaveats, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.engine.limits_off(), self.engine.device_clocks()))
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
        let done = match m.silence_s {
            None => self.engine.acknowledge(&m.bed, &m.alarm_id, &m.who, now),
            Some(s) => self.engine.silence(&m.bed, &m.alarm_id, s, &m.who, now),
        };
        let alarms = match done {
            Ok(alarms) => alarms,
            Err(mut e) => {
                if let AlarmError::SilenceCapReached { reannounce, .. } = &mut e {
                    tracing::warn!(bed = %m.bed, alarm_id = %m.alarm_id, who = %m.who, "silence refused: cap reached; the alarm sounds again");
                    self.emit(std::mem::take(reannounce), ctx);
                }
                return Err(e);
            }
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

/// The limits of every parameter of each of `beds` ([`super::engine::Engine::bed_limits`]), in
/// one round trip.
#[derive(Message)]
#[rtype(result = "std::collections::HashMap<String, Vec<super::engine::BedLimit>>")]
pub struct GetBedLimits {
    pub beds: Vec<String>,
}

impl Handler<GetBedLimits> for AlarmActor {
    type Result = MessageResult<GetBedLimits>;

    fn handle(&mut self, m: GetBedLimits, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            m.beds
                .into_iter()
                .map(|bed| {
                    let limits = self.engine.bed_limits(&bed);
                    (bed, limits)
                })
                .collect(),
        )
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
