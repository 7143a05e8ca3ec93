//! The local HTTP surface: the page for nurses and biomedical engineers, and the JSON API.
//!
//! Owns: `/` (the page), `/api/beds`, `/api/devices`, `/api/status`, `/healthz`. It reads the
//! live state in memory and the store's counters through its own read connection (on the
//! blocking pool), so it never blocks ingest. It is meant for the ICU network or loopback.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use icu_cloud_bridge::bridge::BridgeStats;

use crate::clock::now_us;
use crate::live::LiveState;
use crate::mllp::MllpStats;
use crate::store::{SqliteOutbox, StoreStats};

const PAGE: &str = include_str!("page.html");

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
    pub started_us: i64,
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn beds(state: web::Data<HttpState>) -> HttpResponse {
    let patients: std::collections::HashMap<String, crate::census::PatientRef> =
        state.census.current().into_iter().collect();
    let beds: Vec<serde_json::Value> = state
        .live
        .beds()
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
            let mut v = serde_json::to_value(b).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("patient".into(), patient.unwrap_or(serde_json::Value::Null));
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

async fn devices(state: web::Data<HttpState>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "gateway_id": state.gateway_id,
        "devices": state.live.devices(now_us()),
    }))
}

async fn status(state: web::Data<HttpState>) -> HttpResponse {
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
            serde_json::json!({
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
    }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

/// Starts the HTTP server on an already bound listener (port 0 works); signals are handled by
/// the gateway, not by the server.
pub fn start(listener: TcpListener, state: HttpState) -> std::io::Result<actix_web::dev::Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/", web::get().to(page))
            .route("/api/beds", web::get().to(beds))
            .route("/api/devices", web::get().to(devices))
            .route("/api/status", web::get().to(status))
            .route("/healthz", web::get().to(healthz))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run();
    Ok(server)
}
