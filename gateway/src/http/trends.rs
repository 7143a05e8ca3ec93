//! `GET /api/beds/{bed}/trends`: one bed's trends from the store's rollup (issue 17.2).
//!
//! Owns: the endpoint, its query parameters and its JSON, and [`TrendReader`], the read
//! connection trend queries share.
//!
//! Guarantees: the caller needs [`Permission::Read`] and the read is audited as patient data
//! (`patient_read`, throttled per session like `/api/beds`); the SQLite query runs on the
//! blocking pool, on a WAL read connection of its own (never the actix thread, never the
//! writer's connection, never behind `/metrics`); the answer is bounded by
//! `max_points` (default and most: [`MAX_POINTS`]) and paged with `next` / `after`; a bad
//! parameter is a 400 that names it, an unknown bed a 404.
//!
//! Parameters: `from`, `to` (RFC 3339 or Unix seconds; default: the hour up to now; at most
//! 24 h apart), `mdc` (comma-separated MDC codes; default all), `bucket_s` (60, the minute rows,
//! or a multiple of 60 up to 3600), `after` (the `next` of the previous page), `max_points`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};

use super::guard::{AuthState, Caller};
use crate::auth::Permission;
use crate::clock::now_us;
use crate::store::db::{TrendCursor, TrendError, TrendQuery, MAX_POINTS};
use crate::store::ReaderDb;

/// The trend queries' read connection and the configured beds.
pub struct TrendReader {
    db: Arc<Mutex<ReaderDb>>,
    beds: HashSet<String>,
}

impl TrendReader {
    pub fn open(
        path: &std::path::Path,
        beds: impl IntoIterator<Item = String>,
    ) -> std::io::Result<Self> {
        let db = ReaderDb::open(path, false).map_err(std::io::Error::other)?;
        Ok(Self {
            db: Arc::new(Mutex::new(db)),
            beds: beds.into_iter().collect(),
        })
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct TrendParams {
    from: Option<String>,
    to: Option<String>,
    mdc: Option<String>,
    bucket_s: Option<u32>,
    after: Option<String>,
    max_points: Option<usize>,
}

fn bad(why: String) -> HttpResponse {
    HttpResponse::BadRequest()
        .content_type("text/plain; charset=utf-8")
        .body(format!("{why}\n"))
}

/// A time parameter: RFC 3339, or Unix seconds.
fn time_us(name: &str, v: &str) -> Result<i64, HttpResponse> {
    if let Ok(s) = v.parse::<i64>() {
        return s
            .checked_mul(1_000_000)
            .ok_or_else(|| bad(format!("'{name}' {v} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            bad(format!(
                "'{name}' '{v}' is neither RFC 3339 nor Unix seconds: {e}"
            ))
        })
}

impl TrendParams {
    fn query(&self, bed: String, now: i64) -> Result<TrendQuery, HttpResponse> {
        let to_us = match &self.to {
            Some(v) => time_us("to", v)?,
            None => now,
        };
        let from_us = match &self.from {
            Some(v) => time_us("from", v)?,
            None => to_us.saturating_sub(3600 * 1_000_000),
        };
        let mdc = match self.mdc.as_deref().filter(|s| !s.is_empty()) {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|c| {
                    c.trim()
                        .parse::<u32>()
                        .map_err(|_| bad(format!("'mdc' '{c}' is not an MDC code")))
                })
                .collect::<Result<_, _>>()?,
        };
        let after = match &self.after {
            None => None,
            Some(a) => Some(
                TrendCursor::parse(a)
                    .ok_or_else(|| bad(format!("'after' '{a}' is not a 'next' of this API")))?,
            ),
        };
        Ok(TrendQuery {
            bed,
            from_us,
            to_us,
            mdc,
            bucket_s: self.bucket_s.unwrap_or(60),
            after,
            max_points: self.max_points.unwrap_or(MAX_POINTS),
        })
    }
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub async fn bed_trends(
    reader: web::Data<TrendReader>,
    auth: web::Data<AuthState>,
    caller: Caller,
    bed: web::Path<String>,
    params: web::Query<TrendParams>,
) -> HttpResponse {
    if let Err(r) = caller.require(Permission::Read) {
        return r;
    }
    let bed = bed.into_inner();
    if !reader.beds.contains(&bed) {
        return HttpResponse::NotFound().body(format!("no bed '{bed}' is configured\n"));
    }
    let q = match params.query(bed, now_us()) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if let Err(e) = q.check() {
        return bad(e.to_string());
    }
    if let Err(r) = auth
        .audit_read(
            &caller,
            "/api/beds/{bed}/trends",
            &format!("trends of bed {}", q.bed),
        )
        .await
    {
        return r;
    }
    let db = reader.db.clone();
    let query = q.clone();
    let answer = web::block(move || {
        db.lock()
            .map_err(|_| TrendError::Invalid("trend reader poisoned".into()))
            .and_then(|db| db.trends(&query))
    })
    .await;
    match answer {
        Ok(Ok(page)) => HttpResponse::Ok().json(serde_json::json!({
            "bed": q.bed,
            "from": rfc3339(q.from_us),
            "to": rfc3339(q.to_us),
            "bucket_s": q.bucket_s,
            "series": page.series,
            "next": page.next.map(|c| c.token()),
        })),
        Ok(Err(TrendError::Invalid(why))) => bad(why),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "trend query failed");
            HttpResponse::InternalServerError().body("cannot read the trends\n")
        }
        Err(e) => {
            tracing::error!(error = %e, "trend query: blocking pool");
            HttpResponse::InternalServerError().body("cannot read the trends\n")
        }
    }
}
