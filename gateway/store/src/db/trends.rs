//! The trend rollup: per-minute aggregates of each bed's readings, kept by the store writer.
//!
//! Owns: the tables `trend_minutes` and `trend_rolled` (see `schema.sql`) and the writer's
//! in-memory [`TrendRollup`] of readings committed but not yet in them.
//!
//! Guarantees:
//! - every committed observation is counted in `trend_minutes` once, under its bed, MDC code and
//!   the minute of its trusted time ([`trusted_time_us`]); readings without a usable value
//!   ([`usable_value`]) only count in `skipped`;
//! - the writer never pays per reading in SQL: committed readings are merged in memory and
//!   written at most every [`FLUSH_EVERY`] inside a group commit, one upsert per
//!   (bed, MDC, minute) touched, with each device's `trend_rolled.upto` (the last seq rolled up)
//!   in the same transaction; after a crash, [`TrendRollup::recover`] rolls up the records above
//!   `upto` when the writer opens, so nothing is lost or counted twice;
//! - the table is bounded: minutes older than the retention ([`super::BudgetPolicy`]
//!   `trend_retention_s`) are deleted once a minute, at most [`PRUNE_ROWS`] rows at a time; its
//!   pages count in the disk budget like every table of the file;
//! - a device the writer meets for the first time gets its `trend_rolled` row in the commit
//!   that stores its first readings; a store file written before the rollup existed is rolled up
//!   from the moment it is opened (no back-fill of older readings).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use icu_protos::v1::{stored_record, Observation, ObservationStatus, StoredRecord};
use icu_protos::Message;
use rusqlite::{params, Connection};

/// How the writer spreads a `records` row into its encoded records (`db.rs` `row_records`),
/// passed in so this file does not import its parent.
pub type RowRecords = fn(usize, &[u8]) -> Result<Vec<Vec<u8>>, String>;

/// Most records one `records` row holds (`db.rs` `ROW_MAX`).
const ROW_MAX: i64 = 64;

/// How long committed readings wait in memory before they are written to `trend_minutes`.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often minutes past the retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most rows deleted by one retention pass.
pub const PRUNE_ROWS: i64 = 20_000;

const MINUTE_US: i64 = 60_000_000;

/// The time a reading is trended at: its device time, unless the gateway did not trust it (or
/// there is none), else its receive time (the alarm engine's rule, see `device_time_untrusted`).
pub fn trusted_time_us(o: &Observation) -> i64 {
    match o.device_time_us {
        Some(t) if !o.device_time_untrusted => t,
        _ => o.receive_time_us,
    }
}

/// The value a reading contributes to its trend: a finite number the device marked valid or
/// corrected (or did not qualify). Not available, invalid and test values are not trended.
pub fn usable_value(o: &Observation) -> Option<f64> {
    let status = ObservationStatus::try_from(o.status).unwrap_or(ObservationStatus::Unspecified);
    match status {
        ObservationStatus::Valid
        | ObservationStatus::Corrected
        | ObservationStatus::Unspecified => o.value.filter(|v| v.is_finite()),
        ObservationStatus::NotAvailable | ObservationStatus::Invalid | ObservationStatus::Test => {
            None
        }
    }
}

/// One (bed, MDC, minute) as merged in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
struct MinuteAgg {
    n: i64,
    min: f64,
    max: f64,
    sum: f64,
    last: f64,
    last_us: i64,
    skipped: i64,
}

impl Default for MinuteAgg {
    fn default() -> Self {
        Self {
            n: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            last: 0.0,
            last_us: i64::MIN,
            skipped: 0,
        }
    }
}

impl MinuteAgg {
    fn add(&mut self, value: Option<f64>, t_us: i64) {
        let Some(v) = value else {
            self.skipped += 1;
            return;
        };
        self.n += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        if t_us >= self.last_us {
            self.last = v;
            self.last_us = t_us;
        }
    }
}

/// Readings committed but not yet in `trend_minutes`, and how far each device is rolled up.
#[derive(Debug)]
pub struct TrendRollup {
    /// bed → (MDC, minute) → aggregate.
    pending: HashMap<String, HashMap<(u32, i64), MinuteAgg>>,
    /// device → last seq merged into `pending` (written as `trend_rolled.upto` with it).
    rolled: HashMap<String, u64>,
    /// Devices with a `trend_rolled` row.
    known: std::collections::HashSet<String>,
    last_flush: Instant,
    next_prune: Instant,
    pub(super) flush_every: Duration,
}

impl TrendRollup {
    /// Loads which devices have a `trend_rolled` row, gives the others one at their current
    /// head (a file from before the rollup: no back-fill), and rolls up what a crash left
    /// between `upto` and each device's head (readings within `retention_us` of now only).
    pub fn recover(
        conn: &Connection,
        retention_us: i64,
        row_records: RowRecords,
    ) -> rusqlite::Result<Self> {
        let now = Instant::now();
        let mut me = Self {
            pending: HashMap::new(),
            rolled: HashMap::new(),
            known: Default::default(),
            last_flush: now,
            next_prune: now,
            flush_every: FLUSH_EVERY,
        };
        let obs = icu_outbox::Stream::Observations.code();
        conn.execute(
            "INSERT OR IGNORE INTO trend_rolled (device_id, upto)
             SELECT device_id, next_seq - 1 FROM devices WHERE kind = ?1",
            [obs],
        )?;
        let behind: Vec<(String, i64, i64)> = {
            let mut stmt = conn.prepare(
                "SELECT t.device_id, t.upto, d.next_seq FROM trend_rolled t
                 LEFT JOIN devices d ON d.device_id = t.device_id AND d.kind = ?1",
            )?;
            let rows = stmt.query_map([obs], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get::<_, Option<i64>>(2)?.unwrap_or(1),
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let since_us = now_us().saturating_sub(retention_us);
        for (device, upto, next) in behind {
            me.known.insert(device.clone());
            if next - 1 > upto {
                me.roll_up_records(conn, &device, upto, since_us, row_records)?;
            }
        }
        if !me.pending.is_empty() {
            tracing::info!(
                devices = me.rolled.len(),
                "store: trend rollup caught up with readings committed before a restart"
            );
        }
        Ok(me)
    }

    /// Merges the stored records of `device` above seq `upto` into `pending`.
    fn roll_up_records(
        &mut self,
        conn: &Connection,
        device: &str,
        upto: i64,
        since_us: i64,
        row_records: RowRecords,
    ) -> rusqlite::Result<()> {
        let mut stmt = conn.prepare(
            "SELECT n, bed, payload FROM records WHERE kind = ?1 AND device_id = ?2 AND seq > ?3
             AND received_us >= ?4 ORDER BY seq",
        )?;
        let from = upto.saturating_sub(ROW_MAX - 1);
        let mut rows = stmt.query(params![
            icu_outbox::Stream::Observations.code(),
            device,
            from,
            since_us
        ])?;
        while let Some(row) = rows.next()? {
            let n: i64 = row.get(0)?;
            let bed: String = row.get(1)?;
            let payload: Vec<u8> = row.get(2)?;
            let Ok(records) = row_records(n.max(1) as usize, &payload) else {
                continue;
            };
            for bytes in records {
                let Ok(rec) = StoredRecord::decode(bytes.as_slice()) else {
                    continue;
                };
                if rec.seq as i64 <= upto {
                    continue;
                }
                if let Some(stored_record::Body::Observation(o)) = &rec.body {
                    self.add(&bed, o);
                    self.rolled.insert(device.to_owned(), rec.seq);
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, bed: &str, o: &Observation) {
        let t = trusted_time_us(o);
        let per_bed = match self.pending.get_mut(bed) {
            Some(m) => m,
            None => self.pending.entry(bed.to_owned()).or_default(),
        };
        per_bed
            .entry((o.mdc_code, t.div_euclid(MINUTE_US)))
            .or_default()
            .add(usable_value(o), t);
    }

    /// Whether `device` still needs its `trend_rolled` row (its first readings since the
    /// rollup existed); [`TrendRollup::register`] writes it.
    pub fn is_new(&self, device: &str) -> bool {
        !self.known.contains(device)
    }

    /// Gives a new device its `trend_rolled` row, inside the savepoint that stores its first
    /// readings at `first_seq`.
    pub fn register(conn: &Connection, device: &str, first_seq: u64) -> rusqlite::Result<()> {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO trend_rolled (device_id, upto) VALUES (?1, ?2)",
        )?
        .execute(params![device, first_seq as i64 - 1])?;
        Ok(())
    }

    /// Merges one committed message's readings, stored under `first..=last`.
    pub fn committed(&mut self, device: &str, bed: &str, observations: &[Observation], last: u64) {
        self.known.insert(device.to_owned());
        for o in observations {
            self.add(bed, o);
        }
        self.rolled.insert(device.to_owned(), last);
    }

    /// Whether the pending readings are due to be written (or the retention pass to run).
    pub fn due(&self, now: Instant) -> bool {
        (!self.pending.is_empty() && now >= self.last_flush + self.flush_every)
            || now >= self.next_prune
    }

    /// Writes what is due inside the writer's transaction: the pending aggregates (one upsert
    /// per bed, MDC and minute) with each device's `upto`, and the retention pass. Nothing is
    /// forgotten until [`TrendRollup::written`] (after the commit).
    pub fn write(
        &self,
        conn: &Connection,
        now: Instant,
        retention_us: i64,
    ) -> rusqlite::Result<()> {
        if !self.pending.is_empty() && now >= self.last_flush + self.flush_every {
            let mut upsert = conn.prepare_cached(
                "INSERT INTO trend_minutes (bed, mdc, minute, n, vmin, vmax, vsum, vlast, last_us, skipped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (bed, mdc, minute) DO UPDATE SET
                   n = n + excluded.n,
                   vmin = MIN(COALESCE(vmin, excluded.vmin), COALESCE(excluded.vmin, vmin)),
                   vmax = MAX(COALESCE(vmax, excluded.vmax), COALESCE(excluded.vmax, vmax)),
                   vsum = COALESCE(vsum, 0) + COALESCE(excluded.vsum, 0),
                   vlast = CASE WHEN excluded.n > 0 AND (n = 0 OR excluded.last_us >= last_us)
                                THEN excluded.vlast ELSE vlast END,
                   last_us = CASE WHEN excluded.n > 0 AND (n = 0 OR excluded.last_us >= last_us)
                                THEN excluded.last_us ELSE last_us END,
                   skipped = skipped + excluded.skipped",
            )?;
            for (bed, minutes) in &self.pending {
                for (&(mdc, minute), a) in minutes {
                    let valued = |v: f64| (a.n > 0).then_some(v);
                    upsert.execute(params![
                        bed,
                        mdc,
                        minute,
                        a.n,
                        valued(a.min),
                        valued(a.max),
                        valued(a.sum),
                        valued(a.last),
                        (a.n > 0).then_some(a.last_us),
                        a.skipped
                    ])?;
                }
            }
            let mut upto =
                conn.prepare_cached("UPDATE trend_rolled SET upto = ?2 WHERE device_id = ?1")?;
            for (device, seq) in &self.rolled {
                upto.execute(params![device, *seq as i64])?;
            }
        }
        if now >= self.next_prune {
            let cutoff = now_us().saturating_sub(retention_us).div_euclid(MINUTE_US);
            prune(conn, cutoff, PRUNE_ROWS)?;
        }
        Ok(())
    }

    /// The transaction that [`TrendRollup::write`] wrote into committed: forget what it wrote.
    pub fn written(&mut self, now: Instant) {
        if !self.pending.is_empty() && now >= self.last_flush + self.flush_every {
            self.pending.clear();
            self.rolled.clear();
            self.last_flush = now;
        }
        if now >= self.next_prune {
            self.next_prune = now + PRUNE_EVERY;
        }
    }
}

/// Deletes up to `max` rows of minutes before `cutoff_minute`, oldest first; returns how many.
pub fn prune(conn: &Connection, cutoff_minute: i64, max: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM trend_minutes WHERE (bed, mdc, minute) IN
           (SELECT bed, mdc, minute FROM trend_minutes WHERE minute < ?1 ORDER BY minute LIMIT ?2)",
    )?
    .execute(params![cutoff_minute, max])
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
