//! The device console for biomedical engineers (`/devices`): the page, each device's last
//! messages with the ACK that was sent, and the dead letters, searchable by device and time.
//!
//! Guarantees:
//! - **Patient data is audited.** Messages and dead letters hold HL7 with PID segments: each
//!   read is a (throttled) `patient_read` audit entry, like the beds.
//! - **Bounded.** The last [`crate::live::EXCHANGES_PER_DEVICE`] messages per device; at most
//!   [`crate::store::db::MAX_DEAD_LETTERS`] dead letters per request, paged by id; the store is
//!   read on the blocking pool from a reader connection, never blocking the writer.
//! - **Shown safely.** Raw bytes go to the page as text and base64; the page only ever sets
//!   `textContent`.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use base64::Engine as _;

use super::guard::{AuthState, Caller};
use crate::auth::Permission;
use crate::live::LiveState;
use crate::store::db::{DeadLetterQuery, MAX_DEAD_LETTERS};
use crate::store::SqliteOutbox;

pub(super) const PAGE: &str = include_str!("devices.html");
pub(super) const PAGE_JS: &str = include_str!("devices.js");

pub(super) async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

pub(super) async fn page_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(PAGE_JS)
}

async fn allowed(
    auth: &AuthState,
    caller: &Caller,
    endpoint: &'static str,
    what: &str,
) -> Option<HttpResponse> {
    if let Err(r) = caller.require(Permission::Read) {
        return Some(r);
    }
    auth.audit_read(caller, endpoint, what).await.err()
}

/// `GET /api/devices/{id}/messages`: the device's last messages and the answers, newest first.
pub(super) async fn messages(
    auth: web::Data<AuthState>,
    live: web::Data<Arc<LiveState>>,
    caller: Caller,
    path: web::Path<String>,
) -> HttpResponse {
    if let Some(r) = allowed(&auth, &caller, "/api/devices/messages", "device messages").await {
        return r;
    }
    let id = path.into_inner();
    match live.exchanges(&id) {
        Some(list) => HttpResponse::Ok().json(serde_json::json!({
            "device": id,
            "messages": list,
            "rejected": live.rejected_exchanges(&id),
        })),
        None => HttpResponse::NotFound().body("no such device\n"),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct DeadLetterParams {
    device: Option<String>,
    /// RFC 3339 or µs since the epoch.
    from: Option<String>,
    to: Option<String>,
    before: Option<i64>,
    limit: Option<usize>,
}

fn time_param(name: &str, v: Option<&str>) -> Result<Option<i64>, HttpResponse> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(us) = v.parse::<i64>() {
        return Ok(Some(us));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_micros()))
        .map_err(|_| {
            HttpResponse::BadRequest().body(format!(
                "{name}: {v:?} is neither RFC 3339 (2026-12-07T10:00:00Z) nor microseconds\n"
            ))
        })
}

/// `GET /api/dead-letters?device=&from=&to=&before=&limit=`: newest first; `next_before` pages.
pub(super) async fn dead_letters(
    auth: web::Data<AuthState>,
    outbox: web::Data<Arc<SqliteOutbox>>,
    caller: Caller,
    params: web::Query<DeadLetterParams>,
) -> HttpResponse {
    if let Some(r) = allowed(&auth, &caller, "/api/dead-letters", "dead letters").await {
        return r;
    }
    let p = params.into_inner();
    let (from_us, to_us) = match (
        time_param("from", p.from.as_deref()),
        time_param("to", p.to.as_deref()),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let limit = p.limit.unwrap_or(50).clamp(1, MAX_DEAD_LETTERS);
    let query = DeadLetterQuery {
        device_id: p
            .device
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty()),
        from_us,
        to_us,
        before_id: p.before,
        limit,
    };
    let outbox = outbox.get_ref().clone();
    match web::block(move || outbox.dead_letters(&query)).await {
        Ok(Ok(rows)) => {
            let next_before = (rows.len() == limit)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            let letters: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|r| {
                    serde_json::json!({
                        "id": r.id,
                        "received_us": r.received_us,
                        "received": chrono::DateTime::from_timestamp_micros(r.received_us)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                        "transport": r.transport,
                        "peer": r.peer,
                        "device_id": r.device_id,
                        "stream_offset": r.stream_offset,
                        "ack_code": r.ack_code,
                        "error_code": r.error_code,
                        "location": r.location,
                        "reason": r.reason,
                        "raw_text": String::from_utf8_lossy(&r.raw),
                        "raw_base64": base64::engine::general_purpose::STANDARD.encode(&r.raw),
                        "raw_len": r.raw_len,
                        "forwarded": r.forwarded,
                    })
                })
                .collect();
            HttpResponse::Ok()
                .json(serde_json::json!({"dead_letters": letters, "next_before": next_before}))
        }
        _ => HttpResponse::InternalServerError().body("cannot read the dead letters\n"),
    }
}
