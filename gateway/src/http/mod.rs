//! The local HTTP surface: the page for nurses and biomedical engineers, and the JSON API.
//!
//! Owns: `/` (the page), `/api/beds`, `/api/beds/{bed}/trends` (in `trends.rs`), the live
//! curves `/api/beds/{bed}/waves` and alarm snippets (in `curves.rs`), `/api/devices`,
//! `/api/status`, `/metrics` (Prometheus,
//! see [`crate::metrics`]), `/healthz` (liveness: the HTTP server answers) and `/readyz`
//! (readiness: listeners bound, store running, readable and under its disk budget; 503 with the
//! reasons otherwise). It reads the live state in memory and the store's counters through its
//! own read connections (on the blocking pool), so it never blocks ingest. It is meant for the
//! ICU network or loopback.
//!
//! Bounded input ([`HttpLimits`]): at most `http.max_event_streams` event streams are open at
//! once (503 beyond), a request body is at most `http.max_body_bytes` (413 beyond), and every
//! string a request carries is length-checked before the handler acts on it (400):
//! [`MAX_NAME_CHARS`] for user names and bed ids, [`MAX_ALARM_ID_CHARS`] for alarm ids,
//! [`MAX_TEXT_CHARS`] for free text such as a reason.

// Handlers refuse with a ready `HttpResponse` (`Result<(), HttpResponse>`): that is the answer
// the client gets, so boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::error::JsonPayloadError;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};
use icu_cloud_bridge::bridge::BridgeStats;

use crate::clock::now_us;
use crate::live::LiveState;
use crate::metrics::{
    self, BridgeFigures, DeviceFigures, Figures, Latencies, StoreCounters, StoreFigures,
};
use crate::mllp::MllpStats;
use crate::store::{ReaderDb, SqliteOutbox, Store, StoreError, StoreStats};

mod bedview;
mod console;
mod curves;
pub mod guard;
mod limits;
mod session;
mod streams;
mod trends;

use limits::check_lengths;
pub use limits::{MAX_ALARM_ID_CHARS, MAX_NAME_CHARS, MAX_TEXT_CHARS};

use guard::Caller;
use streams::EventStreams;

use crate::audit::{Action, Outcome, TargetKind};
use crate::auth::Permission;

const PAGE: &str = include_str!("page.html");
const PAGE_JS: &str = include_str!("page.js");
const PAGE_CSS: &str = include_str!("page.css");

/// The `[http]` section of the config file: the one definition of these settings, their
/// defaults and their rules ([`HttpConfig::problems`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the local page and API. Keep it on the ICU network or loopback.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Most open event streams (`/api/events`, the page's live alarm feed) at once (default
    /// 32); a further client gets 503 and the page falls back to polling.
    #[serde(default = "default_max_event_streams")]
    pub max_event_streams: usize,
    /// Largest accepted request body in bytes (default 16384); larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_event_streams() -> usize {
    32
}
fn default_max_body_bytes() -> usize {
    16 * 1024
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_event_streams: default_max_event_streams(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

impl HttpConfig {
    /// Every problem of the limits, under the file's names (`http.max_body_bytes`, ...). The
    /// listen address is parsed by the config, like every other address.
    pub fn problems(&self) -> Vec<crate::domain::FieldProblem> {
        let mut out = Vec::new();
        let mut problem = |field: &str, message: String| {
            out.push(crate::domain::FieldProblem {
                field: field.into(),
                message,
            })
        };
        if self.max_event_streams == 0 {
            problem("http.max_event_streams", "must be at least 1".into());
        }
        if !(1024..=16 << 20).contains(&self.max_body_bytes) {
            problem(
                "http.max_body_bytes",
                format!("{} is outside 1024..=16777216", self.max_body_bytes),
            );
        }
        out
    }

    /// The limits the server runs with.
    pub fn limits(&self) -> HttpLimits {
        HttpLimits {
            max_event_streams: self.max_event_streams,
            max_body_bytes: self.max_body_bytes,
        }
    }
}

/// Limits of the HTTP surface, as the server runs with them (from [`HttpConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Most event streams (`/api/events`) open at once.
    pub max_event_streams: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpConfig::default().limits()
    }
}

/// A JSON body that is too large (413), of the wrong type (415) or malformed (400), answered
/// in plain words.
fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let response = HttpResponse::build(err.status_code())
        .content_type("text/plain; charset=utf-8")
        .body(format!("{err}\n"));
    actix_web::error::InternalError::from_response(err, response).into()
}

pub struct HttpState {
    pub gateway_id: String,
    pub live: Arc<LiveState>,
    pub outbox: Arc<SqliteOutbox>,
    pub store_stats: Arc<StoreStats>,
    pub mllp_stats: Arc<MllpStats>,
    pub bridge: Option<Arc<BridgeStats>>,
    pub kafka_bootstrap: Option<String>,
    pub census: crate::census::CensusReader,
    pub mqtt: Option<Arc<icu_drivers::mqtt::MqttCounters>>,
    /// `"tcp"` or `"tls"`: how the MQTT subscriber reaches its broker (plain text is shown as
    /// such).
    pub mqtt_transport: &'static str,
    pub alarms: actix::Addr<crate::alarm::actor::AlarmActor>,
    pub alarm_stats: Arc<crate::alarm::actor::AlarmPathStats>,
    pub limits: Arc<std::sync::Mutex<crate::alarm::limits_store::LimitsStore>>,
    /// Alarm state changes as JSON, for the page's server-sent events.
    pub events: tokio::sync::broadcast::Sender<String>,
    /// Pages that fell behind (for the alarm-output technical alarm).
    pub event_stream: Arc<EventStreamHealth>,
    pub started_us: i64,
    /// The store actor (alive or not, for `/readyz`).
    pub store: actix::Addr<Store>,
    /// A read connection of its own for `/metrics` and `/readyz` (not the bridge's).
    pub metrics_db: Arc<std::sync::Mutex<ReaderDb>>,
    pub store_path: std::path::PathBuf,
    pub ingest: Arc<metrics::IngestStats>,
    pub readiness: Arc<metrics::Readiness>,
    /// Accounts, sessions, tokens and the audit seam.
    pub auth: web::Data<guard::AuthState>,
    /// Which interfaces are encrypted (`/api/status` `transport`): plain text is said as such.
    pub transport: serde_json::Value,
    /// Seconds until the gateway's TLS certificate expires (None: no certificate configured).
    pub tls_expiry: Option<Arc<std::sync::atomic::AtomicI64>>,
}

/// Whether the page's event stream delivers: pages that fell behind lost alarm events.
#[derive(Debug, Default)]
pub struct EventStreamHealth {
    /// When a page last lost events (µs; 0 = never).
    last_lag_us: std::sync::atomic::AtomicI64,
    lost_events: std::sync::atomic::AtomicU64,
}

impl EventStreamHealth {
    /// A page fell behind and lost `n` events.
    pub fn lagged(&self, n: u64, now_us: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_lag_us.store(now_us, Relaxed);
        self.lost_events.fetch_add(n, Relaxed);
    }

    /// Why the stream is failing now, if it is: fewer clients than required, or a page lost
    /// events within the last 5 s.
    pub fn failing(&self, clients: usize, required: u32, now_us: i64) -> Option<String> {
        if (clients as u64) < u64::from(required) {
            return Some(format!(
                "{clients} of the {required} required pages connected"
            ));
        }
        let last = self.last_lag_us.load(std::sync::atomic::Ordering::Relaxed);
        (last > 0 && now_us - last < 5_000_000).then(|| {
            format!(
                "pages fall behind and lose alarm events ({} lost so far)",
                self.lost_events.load(std::sync::atomic::Ordering::Relaxed)
            )
        })
    }
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn page_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(PAGE_JS)
}

async fn page_css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(PAGE_CSS)
}

/// Checks `p` and, for reads of patient data, writes the (throttled) audit entry first.
macro_rules! allow {
    ($caller:expr, $perm:expr) => {
        if let Err(r) = $caller.require($perm) {
            return r;
        }
    };
    ($state:expr, $caller:expr, $perm:expr, read $endpoint:expr, $what:expr) => {
        if let Err(r) = $caller.require($perm) {
            return r;
        }
        if let Err(r) = $state.auth.audit_read(&$caller, $endpoint, $what).await {
            return r;
        }
    };
}

async fn beds(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    allow!(state, caller, Permission::Read, read "/api/beds", "beds with patient names and values");
    let engine_alarms = state
        .alarms
        .send(crate::alarm::actor::GetActive)
        .await
        .map(|(a, _)| a)
        .unwrap_or_default();
    let (limits_off, _) = state
        .alarms
        .send(crate::alarm::actor::GetCaveats)
        .await
        .unwrap_or_default();
    let patients: std::collections::HashMap<String, crate::census::PatientRef> =
        state.census.current().into_iter().collect();
    let live_beds = state.live.beds();
    let bed_limits = state
        .alarms
        .send(crate::alarm::actor::GetBedLimits {
            beds: live_beds.iter().map(|b| b.id.clone()).collect(),
        })
        .await
        .unwrap_or_default();
    let beds: Vec<serde_json::Value> = live_beds
        .into_iter()
        .map(|b| {
            let patient = patients.get(&b.id).map(|p| {
                serde_json::json!({
                    "id": p.patient_id,
                    "family": p.family,
                    "given": p.given,
                    "since_us": p.stay_start_us,
                })
            });
            let bed_id = b.id.clone();
            let limits = bed_limits.get(&bed_id).cloned().unwrap_or_default();
            let mut v = serde_json::to_value(b).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("patient".into(), patient.unwrap_or(serde_json::Value::Null));
                // Engine alarms (physiological, NEWS2) first: they are ordered by priority.
                let mut alarms: Vec<serde_json::Value> = engine_alarms
                    .iter()
                    .filter(|a| a.bed == bed_id)
                    .map(engine_alarm_json)
                    .collect();
                if let Some(serde_json::Value::Array(tech)) = o.remove("alarms") {
                    alarms.extend(tech);
                }
                o.insert("alarms".into(), serde_json::Value::Array(alarms));
                // Limits a clinician switched off: shown on the card until restored.
                let off: Vec<serde_json::Value> = limits_off
                    .iter()
                    .filter(|l| l.bed == bed_id)
                    .map(|l| serde_json::to_value(l).unwrap_or_default())
                    .collect();
                o.insert("limits_off".into(), serde_json::Value::Array(off));
                // The limits in force per parameter, and whether a clinician changed them.
                o.insert(
                    "limits".into(),
                    serde_json::to_value(limits).unwrap_or_default(),
                );
            }
            v
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "gateway_id": state.gateway_id,
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "beds": beds,
    }))
}

async fn devices(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    allow!(caller, Permission::Read);
    let (_, clocks) = state
        .alarms
        .send(crate::alarm::actor::GetCaveats)
        .await
        .unwrap_or_default();
    let devices: Vec<serde_json::Value> = state
        .live
        .devices(now_us())
        .into_iter()
        .map(|d| {
            let clock = clocks.iter().find(|c| c.device_id == d.id);
            let mut v = serde_json::to_value(&d).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                // `unsynced` while the engine distrusts the device's times (the
                // gateway:device-clock technical alarm), else what the live view saw last.
                if clock.is_some_and(|c| c.state == "unsynced") {
                    o.insert("device_clock".into(), "unsynced".into());
                }
            }
            v
        })
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "gateway_id": state.gateway_id,
        "devices": devices,
    }))
}

async fn status(
    state: web::Data<HttpState>,
    curve_streams: web::Data<Arc<curves::CurveStreams>>,
    caller: Caller,
) -> HttpResponse {
    allow!(caller, Permission::Read);
    let outbox = state.outbox.clone();
    let counts = web::block(move || outbox.counts()).await;
    let store = match counts {
        Ok(Ok(c)) => serde_json::to_value(c).unwrap_or_default(),
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let backbone = match &state.bridge {
        None => {
            serde_json::json!({ "state": "disabled", "reason": "no [kafka] configured: readings are kept in the outbox" })
        }
        Some(b) => {
            let mut v = b.snapshot();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("bootstrap".into(), state.kafka_bootstrap.clone().into());
                // Flatten {"state": {"state": "offline", "reason": ..}} for the page and scripts.
                if let Some(serde_json::Value::Object(inner)) = obj.remove("state") {
                    obj.extend(inner);
                }
            }
            v
        }
    };
    HttpResponse::Ok().json(serde_json::json!({
        "gateway_id": state.gateway_id,
        "uptime_s": (now_us() - state.started_us) / 1_000_000,
        "store": store,
        "store_writes": state.store_stats.snapshot(),
        "mllp": state.mllp_stats.snapshot(),
        "mqtt": state.mqtt.as_ref().map(|m| {
            let c = m.snapshot();
            let link = m.connection();
            serde_json::json!({
                "transport": state.mqtt_transport,
                "state": link.state,
                "last_error": link.last_error,
                "tls_failures": c.tls_failures,
                "auth_failures": c.auth_failures,
                "messages": c.messages,
                "acked": c.acked,
                "rejected": c.rejected,
                "store_failures": c.store_failures,
                "subscribed": c.subscribed,
                "reconnects": c.reconnects,
                "connection_errors": c.connection_errors,
            })
        }),
        "backbone": backbone,
        "access": session::status_json(&state.auth),
        "transport": state.transport,
        "curve_streams": curve_streams.status_json(),
    }))
}

/// An engine alarm in the shape the page shows (`priority` as PH/PM/PL).
fn engine_alarm_json(a: &crate::alarm::AlarmView) -> serde_json::Value {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("priority".into(), a.priority.code().into());
        o.insert("engine".into(), true.into());
    }
    v
}

async fn alarms(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    allow!(state, caller, Permission::Read, read "/api/alarms", "active alarms");
    match state.alarms.send(crate::alarm::actor::GetActive).await {
        Ok((active, stats)) => HttpResponse::Ok().json(serde_json::json!({
            "active": active.iter().map(engine_alarm_json).collect::<Vec<_>>(),
            "stats": stats,
            "dropped_batches": state.alarm_stats.dropped_batches.load(std::sync::atomic::Ordering::Relaxed),
            "store_failures": state.alarm_stats.store_failures.load(std::sync::atomic::Ordering::Relaxed),
            "snippets": &state.alarm_stats.snippets,
        })),
        Err(_) => HttpResponse::ServiceUnavailable().body("alarm engine not running\n"),
    }
}

#[derive(serde::Deserialize)]
struct ActionBody {
    /// For silence: how long.
    seconds: Option<u32>,
}

/// Acknowledge or silence an alarm as the logged-in person. The audit entry is written first;
/// a refusal by the engine (e.g. the silence cap) is audited as refused.
async fn alarm_action(
    state: web::Data<HttpState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: web::Json<ActionBody>,
) -> HttpResponse {
    let (bed, alarm_id, action) = path.into_inner();
    if let Some(refused) = check_lengths(&[
        ("bed", &bed, MAX_NAME_CHARS),
        ("alarm_id", &alarm_id, MAX_ALARM_ID_CHARS),
    ]) {
        return refused;
    }
    let seconds = body.seconds;
    let (silence_s, needs, audit_action) = match action.as_str() {
        "ack" => (None, Permission::Acknowledge, Action::Acknowledge),
        "silence" => (
            Some(seconds.unwrap_or(120)),
            Permission::Silence,
            Action::Silence,
        ),
        other => return HttpResponse::NotFound().body(format!("unknown action '{other}'\n")),
    };
    allow!(caller, needs);
    let mut entry = caller
        .event(audit_action, TargetKind::Alarm, &alarm_id)
        .bed(bed.clone());
    if let Some(s) = silence_s {
        entry = entry.values(None, Some(format!("silenced {s} s")));
    }
    if let Err(r) = state.auth.audit(entry.clone()).await {
        return r;
    }
    let msg = crate::alarm::actor::AlarmAction {
        bed,
        alarm_id,
        who: caller.name(),
        silence_s,
    };
    match state.alarms.send(msg).await {
        Ok(Ok(())) => {
            HttpResponse::Ok().json(serde_json::json!({ "ok": true, "who": caller.name() }))
        }
        Ok(Err(e)) => {
            let _ = state
                .auth
                .audit(entry.outcome(Outcome::Denied).reason(e.to_string()))
                .await;
            HttpResponse::BadRequest().body(format!("{e}\n"))
        }
        Err(_) => HttpResponse::ServiceUnavailable().body("alarm engine not running\n"),
    }
}

#[derive(serde::Deserialize)]
struct LimitsBody {
    low: Option<f64>,
    high: Option<f64>,
    /// Why a limit is switched off (required then; shown on the bed card).
    #[serde(default)]
    reason: Option<String>,
}

/// A clinician's limit change: checked by the engine (hard bounds, a reason to switch one off),
/// then persisted with its audit row, and only then applied. A failed write refuses the change
/// and the limits in force stay as they were.
async fn set_limits(
    state: web::Data<HttpState>,
    caller: Caller,
    path: web::Path<(String, u32)>,
    body: web::Json<LimitsBody>,
) -> HttpResponse {
    allow!(caller, Permission::ChangeLimits);
    let (bed, mdc_code) = path.into_inner();
    if let Some(refused) = check_lengths(&[
        ("bed", &bed, MAX_NAME_CHARS),
        (
            "reason",
            body.reason.as_deref().unwrap_or(""),
            MAX_TEXT_CHARS,
        ),
    ]) {
        return refused;
    }
    if !state.live.beds().iter().any(|b| b.id == bed) {
        return HttpResponse::NotFound().body(format!("bed '{bed}' is not configured\n"));
    }
    if let (Some(l), Some(h)) = (body.low, body.high) {
        if l.partial_cmp(&h) != Some(std::cmp::Ordering::Less) {
            return HttpResponse::BadRequest().body(format!("low {l} must be below high {h}\n"));
        }
    }
    if body.low.is_some_and(|v| !v.is_finite()) || body.high.is_some_and(|v| !v.is_finite()) {
        return HttpResponse::BadRequest().body("limits must be finite numbers\n");
    }
    let reason = body
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned);
    let change = crate::alarm::LimitChange {
        low: body.low,
        high: body.high,
        reason,
        who: caller.name(),
        at_us: now_us(),
    };
    // 1. Checked by the engine, which knows the rules' hard bounds.
    let checked = state
        .alarms
        .send(crate::alarm::actor::CheckLimits {
            bed: bed.clone(),
            mdc_code,
            change: change.clone(),
        })
        .await;
    let side = |v: Option<f64>| v.map_or("off".to_string(), |v| v.to_string());
    let mut entry = caller
        .event(
            Action::LimitChange,
            TargetKind::Parameter,
            &format!("{bed}/{mdc_code}"),
        )
        .bed(bed.clone())
        .values(
            None,
            Some(format!(
                "low={} high={}",
                side(change.low),
                side(change.high)
            )),
        );
    if let Some(r) = &change.reason {
        entry = entry.reason(r.clone());
    }
    let off = match checked {
        Ok(Ok(off)) => off,
        Ok(Err(e)) => {
            let entry = entry.outcome(Outcome::Denied).reason(e.to_string());
            if let Err(r) = state.auth.audit(entry).await {
                return r;
            }
            return HttpResponse::BadRequest().body(format!("{e}\n"));
        }
        Err(_) => return HttpResponse::ServiceUnavailable().body("alarm engine not running\n"),
    };
    // 2a. Audited before it is persisted or applied.
    if let Err(r) = state.auth.audit(entry).await {
        return r;
    }
    // 2. Persisted with its audit row; a failed write refuses the change.
    let limits = state.limits.clone();
    let (b, c) = (bed.clone(), change.clone());
    let stored = web::block(move || {
        limits
            .lock()
            .map_err(|_| rusqlite::Error::InvalidQuery)?
            .set(
                &b,
                mdc_code,
                c.low,
                c.high,
                c.reason.as_deref().filter(|_| off.is_some()),
                &c.who,
                c.at_us,
            )
    })
    .await;
    let audit = match stored {
        Ok(Ok(audit)) => audit,
        Ok(Err(e)) => {
            tracing::error!(bed = %bed, mdc_code, who = %change.who, error = %e, "alarm limit change refused: not persisted");
            return HttpResponse::InternalServerError().body(format!(
                "limit change refused: it could not be persisted ({e}); the limits in force are unchanged\n"
            ));
        }
        Err(e) => {
            return HttpResponse::InternalServerError().body(format!(
                "limit change refused: it could not be persisted ({e}); the limits in force are unchanged\n"
            ))
        }
    };
    // 3. Applied.
    let applied = state
        .alarms
        .send(crate::alarm::actor::SetLimits {
            bed: bed.clone(),
            mdc_code,
            change,
        })
        .await;
    match applied {
        Ok(Ok(())) => {
            tracing::info!(bed = %audit.bed, mdc_code, who = %audit.who, old_low = ?audit.old_low,
                old_high = ?audit.old_high, new_low = ?audit.new_low, new_high = ?audit.new_high,
                reason = audit.reason.as_deref().unwrap_or(""), "alarm limits changed");
            HttpResponse::Ok().json(audit)
        }
        Ok(Err(e)) => HttpResponse::InternalServerError().body(format!(
            "limit change persisted but refused by the engine ({e}); it is not in force and is checked again at the next start\n"
        )),
        Err(_) => HttpResponse::ServiceUnavailable().body(
            "alarm engine not running: the change is persisted and applies at the next start\n",
        ),
    }
}

async fn get_limits(
    state: web::Data<HttpState>,
    caller: Caller,
    path: web::Path<(String, u32)>,
) -> HttpResponse {
    allow!(state, caller, Permission::Read, read "/api/beds/limits", "alarm limits");
    let (bed, mdc_code) = path.into_inner();
    if let Some(refused) = check_lengths(&[("bed", &bed, MAX_NAME_CHARS)]) {
        return refused;
    }
    match state
        .alarms
        .send(crate::alarm::actor::GetLimits { bed, mdc_code })
        .await
    {
        Ok(Some(l)) => HttpResponse::Ok().json(serde_json::json!({ "low": l.low, "high": l.high })),
        Ok(None) => HttpResponse::NotFound().body("no limits for that parameter\n"),
        Err(_) => HttpResponse::ServiceUnavailable().body("alarm engine not running\n"),
    }
}

async fn limit_changes(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    allow!(state, caller, Permission::Read, read "/api/limit-changes", "limit changes");
    let limits = state.limits.clone();
    match web::block(move || {
        limits
            .lock()
            .map_err(|_| rusqlite::Error::InvalidQuery)?
            .changes(200)
    })
    .await
    {
        Ok(Ok(c)) => HttpResponse::Ok().json(c),
        _ => HttpResponse::InternalServerError().body("cannot read limit changes\n"),
    }
}

/// Server-sent events: every alarm state change as `event: alarm`, and a comment every 15 s to
/// keep proxies from closing the stream. The page refreshes on each event, so an alarm appears
/// as soon as the engine raises it (the 1 s poll remains as a fallback). At most
/// `http.max_event_streams` are open at once; a further client gets 503.
async fn events(
    state: web::Data<HttpState>,
    caller: Caller,
    req: HttpRequest,
    streams: web::Data<Arc<EventStreams>>,
) -> HttpResponse {
    allow!(state, caller, Permission::Read, read "/api/events", "alarm event stream");
    let Some(slot) = streams.try_open() else {
        tracing::warn!(
            max_event_streams = streams.max,
            "event stream refused: too many open"
        );
        return HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "30"))
            .body(format!(
                "too many event streams open (at most {}, http.max_event_streams); the page keeps polling\n",
                streams.max
            ));
    };
    let rx = state.events.subscribe();
    let health = state.event_stream.clone();
    // A person's stream ends when their session locks or ends (idle logoff, logoff, a disabled
    // account): the page then asks for the PIN or a login before it gets alarms again.
    let session = match caller.principal {
        guard::Principal::Person(_) => req
            .cookie(guard::SESSION_COOKIE)
            .map(|c| (c.value().to_owned(), state.auth.clone())),
        guard::Principal::Token { .. } => None,
    };
    let stream = futures::stream::unfold((rx, slot, health), move |(mut rx, slot, health)| {
        let session = session.clone();
        async move {
            if let Some((token, auth)) = &session {
                if !matches!(
                    auth.auth.sessions.lookup(token, now_us(), false),
                    crate::auth::Lookup::Active(_)
                ) {
                    return None;
                }
            }
            let item = tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(json) => format!("event: alarm\ndata: {json}\n\n"),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        health.lagged(n, now_us());
                        tracing::warn!(lost = n, "a page fell behind the alarm event stream");
                        format!("event: lagged\ndata: {n}\n\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
                _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => ": keep-alive\n\n".to_string(),
            };
            Some((
                Ok::<_, actix_web::Error>(bytes::Bytes::from(item)),
                (rx, slot, health),
            ))
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

/// Runs `read` on the metrics read connection and measures the store's files, on the blocking
/// pool (never on the actix thread).
async fn read_store<T: Send + 'static>(
    state: &HttpState,
    read: impl FnOnce(&ReaderDb) -> Result<T, StoreError> + Send + 'static,
) -> (Result<T, StoreError>, u64) {
    let db = state.metrics_db.clone();
    let path = state.store_path.clone();
    web::block(move || {
        let file_bytes = metrics::store_file_bytes(&path);
        let result = db
            .lock()
            .map_err(|_| StoreError::Closed)
            .and_then(|db| read(&db));
        (result, file_bytes)
    })
    .await
    .unwrap_or_else(|e| {
        let e = StoreError::Sqlite {
            path: state.store_path.display().to_string(),
            message: format!("blocking pool: {e}"),
        };
        (Err(e), 0)
    })
}

/// Prometheus text exposition of [`Figures`] (see [`crate::metrics`] for the families).
async fn metrics_text(state: web::Data<HttpState>, caller: Caller) -> HttpResponse {
    allow!(caller, Permission::Metrics);
    let bridge = match &state.bridge {
        Some(b) => BridgeFigures::of(b),
        None => BridgeFigures::disabled(),
    };
    let mut figures = Figures::gather(
        &state.gateway_id,
        (now_us() - state.started_us) as f64 / 1e6,
        &state.ingest,
        StoreCounters::of(&state.store_stats),
        bridge,
    );
    figures.mllp = state.mllp_stats.figures();
    figures.devices = state
        .live
        .devices(figures.now_us)
        .into_iter()
        .map(|d| DeviceFigures {
            up: d.state == "online",
            last_seen_us: d.last_seen_us(),
            messages: d.messages,
            errors: d.errors,
            device: d.id,
            bed: d.bed,
        })
        .collect();
    figures.latencies = Latencies {
        ack: state.ingest.ack_latency_family(),
        commit: state.store_stats.commit_latency.0.clone(),
        alarm_path: state.alarm_stats.latency.clone(),
        delivery: match &state.bridge {
            Some(b) => b.delivery_latency().clone(),
            None => figures.latencies.delivery.clone(),
        },
    };
    figures.tls_expiry_s = state
        .tls_expiry
        .as_ref()
        .map(|left| left.load(Ordering::Relaxed));
    let (store, file_bytes) = read_store(&state, StoreFigures::read).await;
    figures.file_bytes = file_bytes;
    figures.store = match store {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: the store did not answer");
            None
        }
    };
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(&figures))
}

/// Ready to take input: listeners bound (and not shutting down), the store writer running, the
/// store readable and under its disk budget. 503 with the reasons otherwise.
async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    // A cheap read (page counts), not the full figures: probes come often.
    let (store, _) = read_store(&state, ReaderDb::data_bytes).await;
    let budget = StoreCounters::of(&state.store_stats);
    let reasons = metrics::readiness_problems(
        state.readiness.listening(),
        state.store.connected(),
        store.err().map(|e| e.to_string()).as_deref(),
        budget.full,
        budget.used_bytes,
        budget.budget_bytes,
    );
    let ready = reasons.is_empty();
    let body = serde_json::json!({
        "ready": ready,
        "reasons": reasons,
        "used_bytes": budget.used_bytes,
        "budget_bytes": budget.budget_bytes,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Starts the HTTP server on an already bound listener (port 0 works); signals are handled by
/// the gateway, not by the server.
pub fn start(
    listener: TcpListener,
    state: HttpState,
    limits: HttpLimits,
    tls: Option<rustls::ServerConfig>,
) -> std::io::Result<actix_web::dev::Server> {
    let hsts = tls.is_some();
    let state = web::Data::new(state);
    let streams = web::Data::new(EventStreams::new(limits.max_event_streams));
    let curve_streams = web::Data::new(curves::CurveStreams::new(limits.max_event_streams));
    let trend_reader = web::Data::new(trends::TrendReader::open(
        &state.store_path,
        state.live.beds().into_iter().map(|b| b.id),
    )?);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(trend_reader.clone())
            .app_data(state.auth.clone())
            .app_data(web::Data::new(state.live.clone()))
            .app_data(web::Data::new(state.outbox.clone()))
            .app_data(streams.clone())
            .app_data(curve_streams.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(limits.max_body_bytes)
                    .error_handler(json_error),
            )
            .app_data(web::PayloadConfig::new(limits.max_body_bytes))
            .wrap(actix_web::middleware::from_fn(guard::hygiene))
            .wrap(guard::security_headers(hsts))
            .route("/", web::get().to(page))
            .route("/page.js", web::get().to(page_js))
            .route("/page.css", web::get().to(page_css))
            .route("/beds/{bed}", web::get().to(bedview::page))
            .route("/bed.js", web::get().to(bedview::page_js))
            .route("/waves.js", web::get().to(bedview::waves_js))
            .route("/api/beds/{bed}/waves", web::get().to(curves::stream))
            .route(
                "/api/beds/{bed}/alarms/{alarm_id}/snippet",
                web::get().to(curves::snippet),
            )
            .route(
                "/api/beds/{bed}/alarm-history",
                web::get().to(bedview::alarm_history),
            )
            .route("/devices", web::get().to(console::page))
            .route("/devices.js", web::get().to(console::page_js))
            .route(
                "/api/devices/{id}/messages",
                web::get().to(console::messages),
            )
            .route("/api/dead-letters", web::get().to(console::dead_letters))
            .route("/api/login", web::post().to(session::login))
            .route("/api/logout", web::post().to(session::logout))
            .route("/api/unlock", web::post().to(session::unlock))
            .route("/api/session", web::get().to(session::whoami))
            .route("/api/break-glass", web::post().to(session::break_glass))
            .route("/api/users", web::get().to(session::users))
            .route("/api/beds", web::get().to(beds))
            .route("/api/devices", web::get().to(devices))
            .route("/api/status", web::get().to(status))
            .route("/api/alarms", web::get().to(alarms))
            .route("/api/events", web::get().to(events))
            .route(
                "/api/alarms/{bed}/{alarm_id}/{action}",
                web::post().to(alarm_action),
            )
            .route("/api/beds/{bed}/limits/{mdc}", web::put().to(set_limits))
            .route("/api/beds/{bed}/limits/{mdc}", web::get().to(get_limits))
            .route("/api/limit-changes", web::get().to(limit_changes))
            .route("/api/beds/{bed}/trends", web::get().to(trends::bed_trends))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics_text))
    })
    .workers(1)
    // Alarm events are small writes on a long-lived stream: without TCP_NODELAY, Nagle holds an
    // event back until the browser acknowledges the previous one, and a delayed ACK makes that
    // up to 40 ms (seen as the alarm-latency bench's tail).
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        } else if let Some(tls) = conn.downcast_ref::<
            actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>,
        >() {
            // actix-web hands over its own wrapper of the rustls stream (not tokio-rustls's
            // type: a downcast to that one never matched, and HTTPS events waited for Nagle).
            let _ = tls.get_ref().0.set_nodelay(true);
        } else {
            tracing::warn!("http connection of an unknown stream type: TCP_NODELAY not set");
        }
    })
    .disable_signals()
    .shutdown_timeout(2);
    let server = match tls {
        Some(mut cfg) => {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            server.listen_rustls_0_23(listener, cfg)?
        }
        None => server.listen(listener)?,
    }
    .run();
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_stream_fails_while_pages_lose_events_or_too_few_are_open() {
        let h = EventStreamHealth::default();
        let s = 1_000_000;
        assert_eq!(h.failing(0, 0, 100 * s), None);
        let why = h.failing(1, 2, 100 * s).unwrap();
        assert!(why.contains("1 of the 2 required pages"), "{why}");
        h.lagged(7, 100 * s);
        let why = h.failing(3, 2, 104 * s).unwrap();
        assert!(why.contains("7 lost"), "{why}");
        assert_eq!(h.failing(3, 2, 105 * s), None);
    }

    #[test]
    fn strings_over_their_limit_are_refused_naming_the_field() {
        assert!(check_lengths(&[("who", "nurse", MAX_NAME_CHARS)]).is_none());
        // Characters, not bytes: 64 accented letters pass.
        let name = "é".repeat(MAX_NAME_CHARS);
        assert!(check_lengths(&[("who", &name, MAX_NAME_CHARS)]).is_none());
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let refused = check_lengths(&[
            ("bed", "b1", MAX_NAME_CHARS),
            ("who", &long, MAX_NAME_CHARS),
        ])
        .expect("refused");
        assert_eq!(refused.status(), actix_web::http::StatusCode::BAD_REQUEST);
        let body = actix_web::body::MessageBody::try_into_bytes(refused.into_body()).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "'who' is 65 characters long; at most 64 are accepted\n"
        );
    }
}
