//! The trend query: one bed's readings over a window of at most a day, per parameter, as
//! points of 1-minute rows or coarser buckets computed from them, bounded and paged.
//!
//! Owns: [`TrendQuery`] (with its rules, [`TrendQuery::check`]), the answer [`TrendPage`] and
//! its cursor [`TrendCursor`].
//!
//! Guarantees:
//! - it reads `trend_minutes` only (the rollup of `db/trends.rs`), through a reader connection:
//!   a WAL reader never blocks the store writer, and a day of one bed is at most
//!   24 × 60 rows per parameter, whatever the reading rate;
//! - an answer holds at most [`TrendQuery::max_points`] points; when more are left it says
//!   where to go on ([`TrendPage::next`], given back as [`TrendQuery::after`]); pages are in
//!   (MDC code, time) order and never repeat or skip a point;
//! - input out of bounds is refused with a [`TrendError::Invalid`] that names the parameter.

use rusqlite::params;

use super::reader::ReaderDb;
use super::StoreError;

/// Widest window one query may ask for.
pub const MAX_WINDOW_US: i64 = 24 * 3600 * 1_000_000;
/// Most points one answer may hold (the default of [`TrendQuery::max_points`]).
pub const MAX_POINTS: usize = 20_000;
/// Bucket widths a query may ask for, in seconds: multiples of a minute up to an hour.
pub const MAX_BUCKET_S: u32 = 3600;

const MINUTE_US: i64 = 60_000_000;

/// Where a paged answer goes on: the first (MDC code, bucket start) not yet returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrendCursor {
    pub mdc: u32,
    pub t_s: i64,
}

impl TrendCursor {
    /// As written in the API (`after=<mdc>:<unix seconds>`).
    pub fn token(&self) -> String {
        format!("{}:{}", self.mdc, self.t_s)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (mdc, t) = token.split_once(':')?;
        Some(Self {
            mdc: mdc.parse().ok()?,
            t_s: t.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct TrendQuery {
    pub bed: String,
    /// The window `[from, to)`, µs since the Unix epoch; minutes that start in it are returned.
    pub from_us: i64,
    pub to_us: i64,
    /// Only these parameters (all of the bed's when empty).
    pub mdc: Vec<u32>,
    /// Bucket width in seconds: 60 (the minute rows as they are) or a multiple of 60 up to
    /// [`MAX_BUCKET_S`]; buckets are aligned on multiples of it since the epoch.
    pub bucket_s: u32,
    pub after: Option<TrendCursor>,
    pub max_points: usize,
}

/// Why a trend query was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrendError {
    /// The query itself is out of bounds (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TrendQuery {
    /// The query's problems, if any, in plain words naming the parameter.
    pub fn check(&self) -> Result<(), TrendError> {
        let bad = |s: String| Err(TrendError::Invalid(s));
        if self.to_us <= self.from_us {
            return bad("'to' must be after 'from'".into());
        }
        if self.to_us - self.from_us > MAX_WINDOW_US {
            return bad(format!(
                "the window 'from'..'to' is {} s long; at most {} s (24 h) are answered",
                (self.to_us - self.from_us) / 1_000_000,
                MAX_WINDOW_US / 1_000_000
            ));
        }
        if self.bucket_s == 0 || !self.bucket_s.is_multiple_of(60) || self.bucket_s > MAX_BUCKET_S {
            return bad(format!(
                "'bucket_s' {} must be a multiple of 60 from 60 to {MAX_BUCKET_S}",
                self.bucket_s
            ));
        }
        if self.max_points == 0 || self.max_points > MAX_POINTS {
            return bad(format!(
                "'max_points' {} must be 1-{MAX_POINTS}",
                self.max_points
            ));
        }
        if self.mdc.len() > 64 {
            return bad("at most 64 'mdc' codes per query".into());
        }
        Ok(())
    }
}

/// One bucket of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrendPoint {
    /// Bucket start, seconds since the Unix epoch.
    pub t: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// The bucket's latest value (by trusted time).
    pub last: f64,
    /// Valid values in the bucket.
    pub n: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrendSeries {
    pub mdc: u32,
    pub points: Vec<TrendPoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrendPage {
    pub series: Vec<TrendSeries>,
    /// Set when points are left: ask again with it as [`TrendQuery::after`].
    pub next: Option<TrendCursor>,
}

/// A bucket being folded from minute rows, with the time of its last value.
struct Open {
    mdc: u32,
    point: TrendPoint,
    sum: f64,
    last_us: i64,
}

impl ReaderDb {
    /// Answers `q` (checked first) from `trend_minutes` in one read snapshot.
    pub fn trends(&self, q: &TrendQuery) -> Result<TrendPage, TrendError> {
        q.check()?;
        let bucket_min = i64::from(q.bucket_s / 60);
        let mut from_min = q.from_us.div_euclid(MINUTE_US);
        if from_min * MINUTE_US < q.from_us {
            from_min += 1;
        }
        let to_min = (q.to_us - 1).div_euclid(MINUTE_US);
        let (after_mdc, after_min) = q.after.map_or((0, i64::MIN), |c| (c.mdc, c.t_s / 60));
        let only = if q.mdc.is_empty() {
            String::new()
        } else {
            let codes: Vec<String> = q.mdc.iter().map(u32::to_string).collect();
            format!("AND mdc IN ({})", codes.join(","))
        };
        let sql = format!(
            "SELECT mdc, minute, n, vmin, vmax, vsum, vlast, last_us FROM trend_minutes
             WHERE bed = ?1 AND minute BETWEEN ?2 AND ?3 AND n > 0 {only}
               AND (mdc > ?4 OR (mdc = ?4 AND minute >= ?5))
             ORDER BY mdc, minute"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![q.bed, from_min, to_min, after_mdc, after_min])
            .map_err(|e| self.err(e))?;
        let mut series: Vec<TrendSeries> = Vec::new();
        let mut points = 0usize;
        let mut open: Option<Open> = None;
        let mut next = None;
        let close = |o: Open, series: &mut Vec<TrendSeries>| {
            let mut p = o.point;
            p.mean = o.sum / p.n as f64;
            match series.last_mut() {
                Some(s) if s.mdc == o.mdc => s.points.push(p),
                _ => series.push(TrendSeries {
                    mdc: o.mdc,
                    points: vec![p],
                }),
            }
        };
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let get = |i| row.get::<_, f64>(i);
            let (mdc, minute, n): (u32, i64, i64) = (
                row.get(0).map_err(|e| self.err(e))?,
                row.get(1).map_err(|e| self.err(e))?,
                row.get(2).map_err(|e| self.err(e))?,
            );
            let (min, max, sum, last, last_us) =
                (|| Ok::<_, rusqlite::Error>((get(3)?, get(4)?, get(5)?, get(6)?, row.get(7)?)))()
                    .map_err(|e| self.err(e))?;
            let t = minute.div_euclid(bucket_min) * bucket_min * 60;
            if let Some(o) = open.as_mut().filter(|o| o.mdc == mdc && o.point.t == t) {
                o.point.n += n;
                o.point.min = o.point.min.min(min);
                o.point.max = o.point.max.max(max);
                o.sum += sum;
                if last_us >= o.last_us {
                    o.point.last = last;
                    o.last_us = last_us;
                }
                continue;
            }
            if let Some(o) = open.take() {
                close(o, &mut series);
                points += 1;
            }
            if points == q.max_points {
                next = Some(TrendCursor { mdc, t_s: t });
                break;
            }
            open = Some(Open {
                mdc,
                point: TrendPoint {
                    t,
                    min,
                    max,
                    mean: 0.0,
                    last,
                    n,
                },
                sum,
                last_us,
            });
        }
        if let Some(o) = open.take() {
            close(o, &mut series);
        }
        Ok(TrendPage { series, next })
    }
}
