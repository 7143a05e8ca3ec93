//! Clinician-set alarm limits per bed, persisted in the store's SQLite file, with an audit trail
//! of every change (who, when, old, new, and why a limit was switched off). Called from the HTTP
//! layer on the blocking pool. A change is checked by the engine, then persisted here with its
//! audit row in one transaction, and only then applied to the engine (by message), so a failed
//! write refuses the change and nothing is in force that a restart would forget.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bed_limits (
    bed       TEXT    NOT NULL,
    mdc_code  INTEGER NOT NULL,
    low       REAL,
    high      REAL,
    set_by    TEXT    NOT NULL,
    set_us    INTEGER NOT NULL,
    reason    TEXT,
    PRIMARY KEY (bed, mdc_code)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS limit_changes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    bed       TEXT    NOT NULL,
    mdc_code  INTEGER NOT NULL,
    old_low   REAL,
    old_high  REAL,
    new_low   REAL,
    new_high  REAL,
    who       TEXT    NOT NULL,
    at_us     INTEGER NOT NULL,
    reason    TEXT
);";

/// Columns added after the first release, for store files made before them.
const ADDED_COLUMNS: &[(&str, &str)] = &[("bed_limits", "reason"), ("limit_changes", "reason")];

/// One persisted override.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BedLimit {
    pub bed: String,
    pub mdc_code: u32,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub set_by: String,
    pub set_us: i64,
    /// Why a limit was switched off (None when none is).
    pub reason: Option<String>,
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LimitChange {
    pub bed: String,
    pub mdc_code: u32,
    pub old_low: Option<f64>,
    pub old_high: Option<f64>,
    pub new_low: Option<f64>,
    pub new_high: Option<f64>,
    pub who: String,
    pub at_us: i64,
    pub reason: Option<String>,
}

pub struct LimitsStore {
    conn: Connection,
}

impl LimitsStore {
    /// Opens the limits tables in the store's file, through the store's one opener (WAL, busy
    /// timeout, synchronous FULL: a limit change is answered only once it survives a power cut).
    pub fn open(path: &Path) -> Result<Self, crate::store::StoreError> {
        let conn = crate::store::db::open_connection(path, true)?;
        let sql = |e: rusqlite::Error| crate::store::StoreError::Sqlite {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        Self::prepare(&conn).map_err(sql)?;
        Ok(Self { conn })
    }

    /// Creates the tables, and adds the columns of later releases to older files.
    fn prepare(conn: &Connection) -> rusqlite::Result<()> {
        conn.execute_batch(SCHEMA)?;
        for (table, column) in ADDED_COLUMNS {
            let has: bool = conn.query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"))?;
            }
        }
        Ok(())
    }

    pub fn all(&self) -> rusqlite::Result<Vec<BedLimit>> {
        let mut st = self
            .conn
            .prepare("SELECT bed, mdc_code, low, high, set_by, set_us, reason FROM bed_limits ORDER BY bed, mdc_code")?;
        let rows = st.query_map([], |r| {
            Ok(BedLimit {
                bed: r.get(0)?,
                mdc_code: r.get::<_, i64>(1)? as u32,
                low: r.get(2)?,
                high: r.get(3)?,
                set_by: r.get(4)?,
                set_us: r.get(5)?,
                reason: r.get(6)?,
            })
        })?;
        rows.collect()
    }

    /// Stores a new override and its audit record in one transaction; returns the change.
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        bed: &str,
        mdc_code: u32,
        low: Option<f64>,
        high: Option<f64>,
        reason: Option<&str>,
        who: &str,
        at_us: i64,
    ) -> rusqlite::Result<LimitChange> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let old: Option<(Option<f64>, Option<f64>)> = tx
            .query_row(
                "SELECT low, high FROM bed_limits WHERE bed = ?1 AND mdc_code = ?2",
                params![bed, mdc_code],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (old_low, old_high) = old.unwrap_or((None, None));
        tx.execute(
            "INSERT INTO bed_limits (bed, mdc_code, low, high, set_by, set_us, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(bed, mdc_code) DO UPDATE SET low = excluded.low, high = excluded.high,
             set_by = excluded.set_by, set_us = excluded.set_us, reason = excluded.reason",
            params![bed, mdc_code, low, high, who, at_us, reason],
        )?;
        tx.execute(
            "INSERT INTO limit_changes (bed, mdc_code, old_low, old_high, new_low, new_high, who, at_us, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![bed, mdc_code, old_low, old_high, low, high, who, at_us, reason],
        )?;
        tx.commit()?;
        Ok(LimitChange {
            bed: bed.to_owned(),
            mdc_code,
            old_low,
            old_high,
            new_low: low,
            new_high: high,
            who: who.to_owned(),
            at_us,
            reason: reason.map(str::to_owned),
        })
    }

    pub fn changes(&self, limit: usize) -> rusqlite::Result<Vec<LimitChange>> {
        let mut st = self.conn.prepare(
            "SELECT bed, mdc_code, old_low, old_high, new_low, new_high, who, at_us, reason FROM limit_changes ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit as i64], |r| {
            Ok(LimitChange {
                bed: r.get(0)?,
                mdc_code: r.get::<_, i64>(1)? as u32,
                old_low: r.get(2)?,
                old_high: r.get(3)?,
                new_low: r.get(4)?,
                new_high: r.get(5)?,
                who: r.get(6)?,
                at_us: r.get(7)?,
                reason: r.get(8)?,
            })
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_persisted_with_its_audit_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let mut s = LimitsStore::open(&p).unwrap();
        s.set("bed-01", 150456, Some(88.0), None, None, "nurse.a", 1)
            .unwrap();
        let c = s
            .set(
                "bed-01",
                150456,
                None,
                None,
                Some("comfort care"),
                "dr.b",
                2,
            )
            .unwrap();
        assert_eq!((c.old_low, c.new_low, c.new_high), (Some(88.0), None, None));
        drop(s);
        let s = LimitsStore::open(&p).unwrap();
        let all = s.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(
            (all[0].low, all[0].set_by.as_str(), all[0].reason.as_deref()),
            (None, "dr.b", Some("comfort care"))
        );
        let changes = s.changes(10).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].who, "dr.b");
        assert_eq!(changes[0].reason.as_deref(), Some("comfort care"));
    }

    #[test]
    fn a_store_file_without_the_reason_columns_gets_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let old = Connection::open(&p).unwrap();
        old.execute_batch(
            "CREATE TABLE bed_limits (bed TEXT NOT NULL, mdc_code INTEGER NOT NULL, low REAL,
               high REAL, set_by TEXT NOT NULL, set_us INTEGER NOT NULL,
               PRIMARY KEY (bed, mdc_code)) WITHOUT ROWID;
             INSERT INTO bed_limits VALUES ('bed-01', 147842, 45.0, 130.0, 'dr.a', 1);",
        )
        .unwrap();
        drop(old);
        let s = LimitsStore::open(&p).unwrap();
        let all = s.all().unwrap();
        assert_eq!((all[0].low, all[0].reason.clone()), (Some(45.0), None));
    }

    #[test]
    fn a_read_only_store_file_refuses_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        LimitsStore::open(&p).unwrap();
        let ro =
            Connection::open_with_flags(&p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let mut s = LimitsStore { conn: ro };
        assert!(s
            .set("bed-01", 150456, Some(88.0), None, None, "dr.a", 1)
            .is_err());
        assert!(s.all().unwrap().is_empty());
    }
}
