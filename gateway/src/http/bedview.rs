//! The bed view (`/beds/<id>`): the page, and the bed's alarm history with who acknowledged or
//! silenced what. Trends come from `/api/beds/<id>/trends`, the limit history from
//! `/api/limit-changes`, the live curves and alarm snippets (`waves.js`) from `curves.rs`.
//!
//! Guarantees: the alarm history is patient data (audited as a read), bounded to the last 24 h
//! and [`crate::store::db::MAX_ALARM_HISTORY`] state changes, and read on the blocking pool from
//! a reader connection.

use std::sync::Arc;

use actix_web::{web, HttpResponse};

use super::guard::{AuthState, Caller};
use crate::auth::Permission;
use crate::clock::now_us;
use crate::store::db::MAX_ALARM_HISTORY;
use crate::store::SqliteOutbox;

const PAGE: &str = include_str!("bed.html");
const PAGE_JS: &str = include_str!("bed.js");
/// The bed view's live curves and alarm snippets (issue 19; data from `curves.rs`).
const WAVES_JS: &str = include_str!("waves.js");

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

pub(super) async fn waves_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(WAVES_JS)
}

#[derive(serde::Deserialize)]
pub(super) struct HistoryParams {
    /// How far back, 1..=24 (default 24).
    hours: Option<u32>,
}

/// `GET /api/beds/{bed}/alarm-history?hours=N`: the bed's alarm state changes, newest first.
pub(super) async fn alarm_history(
    auth: web::Data<AuthState>,
    outbox: web::Data<Arc<SqliteOutbox>>,
    caller: Caller,
    path: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> HttpResponse {
    if let Err(r) = caller.require(Permission::Read) {
        return r;
    }
    if let Err(r) = auth
        .audit_read(&caller, "/api/beds/alarm-history", "alarm history")
        .await
    {
        return r;
    }
    let bed = path.into_inner();
    let hours = params.hours.unwrap_or(24).clamp(1, 24);
    let from_us = now_us() - i64::from(hours) * 3_600_000_000;
    let outbox = outbox.get_ref().clone();
    let b = bed.clone();
    match web::block(move || outbox.alarm_history(&b, from_us, MAX_ALARM_HISTORY)).await {
        Ok(Ok(list)) => {
            let changes: Vec<serde_json::Value> = list
                .into_iter()
                .map(|a| {
                    serde_json::json!({
                        "time": chrono::DateTime::from_timestamp_micros(a.event_time_us)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                        "time_us": a.event_time_us,
                        "alarm_id": a.alarm_id,
                        "device_id": a.device_id,
                        "mdc_code": a.mdc_code,
                        "text": a.text,
                        "priority": a.priority,
                        "phase": a.phase,
                        "state": a.state,
                        "alert_type": a.alert_type,
                        "source": a.source,
                        "acknowledged_by": a.acknowledged_by,
                        "silenced_by": a.silenced_by,
                    })
                })
                .collect();
            HttpResponse::Ok()
                .json(serde_json::json!({"bed": bed, "hours": hours, "changes": changes}))
        }
        _ => HttpResponse::InternalServerError().body("cannot read the alarm history\n"),
    }
}
