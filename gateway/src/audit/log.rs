//! The SQLite side: the `audit_log` and `audit_head` tables in the store's file, the
//! [`AuditLog`] handle that appends (one committed, signed entry per call) and reads, and the
//! [`Filter`] of `audit show`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use icu_cloud_bridge::signing::SigningKeys;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use super::chain::{head_message, HashInput, KeyRing, ZERO_HASH};
use super::entry::{Action, AuditEntry, AuditRecord};
use super::error::AuditError;
use super::row::{has_audit_tables, RawRow, COLUMNS};
use super::verify::{verify, VerifyFailure, VerifySummary};
use crate::clock::{now_us, ClockState};
use crate::domain::ClockPolicy;

/// The tables and their guards. `audit_log` is append-only: triggers abort any UPDATE or
/// DELETE, and an INSERT whose seq is not the next one. `audit_head` holds one row (id 1): the
/// last seq and hash, signed, rewritten in the same transaction as each insert.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq          INTEGER PRIMARY KEY,
    time_us      INTEGER NOT NULL,
    clock_synced INTEGER NOT NULL,
    account      TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target_kind  TEXT    NOT NULL,
    target_id    TEXT    NOT NULL,
    bed          TEXT,
    old_value    TEXT,
    new_value    TEXT,
    outcome      TEXT    NOT NULL,
    reason       TEXT,
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL,
    key_id       TEXT    NOT NULL,
    signature    BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_time ON audit_log (time_us);
CREATE TABLE IF NOT EXISTS audit_head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    hash      BLOB    NOT NULL,
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: no UPDATE'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: no DELETE'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_next_seq BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT (SELECT MAX(COALESCE((SELECT MAX(seq) FROM audit_log), 0),
                               COALESCE((SELECT seq FROM audit_head WHERE id = 1), 0)) + 1)
BEGIN SELECT RAISE(ABORT, 'audit_log seq must be the next one'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'audit_head cannot be deleted'); END;
";

enum NextLink {
    Sql(rusqlite::Error),
    Damaged(String),
}

impl From<rusqlite::Error> for NextLink {
    fn from(e: rusqlite::Error) -> Self {
        NextLink::Sql(e)
    }
}

/// The seq and prev_hash of the next entry, from the last row and the signed head.
///
/// Normally the head names the last row. When it names a later seq (the tail was cut) the next
/// entry follows the head, so the gap stays visible to `verify` (the first cut seq is then
/// "missing") instead of being papered over by new entries. A trail with rows but no head is
/// refused: continuing would hide how much was cut.
fn next_link(tx: &Connection) -> Result<(u64, [u8; 32]), NextLink> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let head: Option<(i64, Vec<u8>)> = tx
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let (seq, hash) = match (last, head) {
        (None, None) => return Ok((1, ZERO_HASH)),
        (Some((seq, _)), None) => {
            return Err(NextLink::Damaged(format!(
                "entries up to seq {seq} exist but the signed head row is gone"
            )))
        }
        (Some((last_seq, _)), Some((head_seq, head_hash))) if head_seq > last_seq => {
            tracing::error!(
                last_seq,
                head_seq,
                "audit trail: entries after seq {last_seq} are gone (the signed head names seq \
                 {head_seq}); new entries follow the head, so the gap stays visible to `audit verify`"
            );
            (head_seq, head_hash)
        }
        (None, Some((head_seq, head_hash))) => {
            tracing::error!(
                head_seq,
                "audit trail: every entry is gone but the signed head"
            );
            (head_seq, head_hash)
        }
        (Some(last), Some(_)) => last,
    };
    let prev = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| {
        NextLink::Damaged(format!(
            "the hash of seq {seq} is not 32 bytes, so no entry can follow it"
        ))
    })?;
    Ok((seq.max(0) as u64 + 1, prev))
}

/// The selection of `audit show`: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Entries at or after this time (µs since the epoch, UTC).
    pub since_us: Option<i64>,
    /// Entries strictly before this time.
    pub until_us: Option<i64>,
    pub account: Option<String>,
    /// Entries whose `bed` is this, or whose target is this bed.
    pub bed: Option<String>,
    pub action: Option<Action>,
    /// Entries from this seq on.
    pub from_seq: Option<u64>,
    /// At most this many (the oldest first).
    pub limit: Option<usize>,
}

impl Filter {
    /// `WHERE ...` (or empty) and its parameters.
    fn sql(&self) -> (String, Vec<Value>) {
        let mut conds: Vec<&str> = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        if let Some(t) = self.since_us {
            conds.push("time_us >= ?");
            values.push(Value::Integer(t));
        }
        if let Some(t) = self.until_us {
            conds.push("time_us < ?");
            values.push(Value::Integer(t));
        }
        if let Some(a) = &self.account {
            conds.push("account = ?");
            values.push(Value::Text(a.clone()));
        }
        if let Some(b) = &self.bed {
            conds.push("(bed = ? OR (target_kind = 'bed' AND target_id = ?))");
            values.push(Value::Text(b.clone()));
            values.push(Value::Text(b.clone()));
        }
        if let Some(a) = self.action {
            conds.push("action = ?");
            values.push(Value::Text(a.as_str().to_owned()));
        }
        if let Some(s) = self.from_seq {
            conds.push("seq >= ?");
            values.push(Value::Integer(i64::try_from(s).unwrap_or(i64::MAX)));
        }
        let mut sql = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        sql.push_str(" ORDER BY seq");
        if let Some(n) = self.limit {
            sql.push_str(&format!(" LIMIT {n}"));
        }
        (sql, values)
    }
}

/// Creates the audit tables and triggers in `conn` if they are missing.
pub fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(SCHEMA)
}

/// The entries `filter` selects, oldest first.
pub fn query(conn: &Connection, filter: &Filter) -> Result<Vec<AuditRecord>, AuditError> {
    let sql_err = |e: rusqlite::Error| AuditError::Sqlite {
        path: conn.path().unwrap_or_default().to_owned(),
        message: e.to_string(),
    };
    if !has_audit_tables(conn).map_err(sql_err)? {
        return Ok(Vec::new());
    }
    let (tail, values) = filter.sql();
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM audit_log{tail}"))
        .map_err(sql_err)?;
    let rows = st
        .query_map(params_from_iter(values), RawRow::read)
        .map_err(sql_err)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql_err)?.into_record()?);
    }
    Ok(out)
}

/// The gateway's audit trail: appends signed, chained entries to the store's SQLite file.
///
/// Thread-safe (one connection behind a mutex); every call blocks on SQLite, so call it from
/// `web::block` / `spawn_blocking`, never on an actor's or the async runtime's thread.
pub struct AuditLog {
    conn: Mutex<Connection>,
    /// Which key signs is decided per entry ([`SigningKeys::active`]): a scheduled rotation
    /// takes effect at its time.
    key: Arc<SigningKeys>,
    clock: Arc<ClockState>,
    path: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("keys", &self.key)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating when missing) the audit tables in the store file at `path`, through the
    /// store's one opener (WAL, busy timeout, `synchronous = FULL`). Entries are signed with
    /// `key`; the clock-sync flag comes from the OS ([`ClockPolicy::Auto`]) unless
    /// [`Self::with_clock`] gives the gateway's clock.
    pub fn open(path: &Path, key: impl Into<Arc<SigningKeys>>) -> Result<Self, AuditError> {
        let conn = crate::store::db::open_connection(path, true)?;
        prepare(&conn).map_err(|e| AuditError::Sqlite {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
            key: key.into(),
            clock: Arc::new(ClockState::new(ClockPolicy::Auto)),
            path: path.to_owned(),
        })
    }

    /// Uses the gateway's clock state for the clock-sync flag.
    pub fn with_clock(mut self, clock: Arc<ClockState>) -> Self {
        self.clock = clock;
        self
    }

    /// The id of the key entries are signed with now.
    pub fn key_id(&self) -> String {
        self.key.active().key_id().to_owned()
    }

    /// The keys entries are signed with.
    pub fn keys(&self) -> &Arc<SigningKeys> {
        &self.key
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
        move |e| AuditError::Sqlite {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, AuditError> {
        self.conn.lock().map_err(|_| AuditError::Poisoned)
    }

    /// Appends `entry` as the next seq, stamped now, chained and signed, and commits it (with
    /// the signed head) before returning. On `Ok` the entry is durable: do the action. On `Err`
    /// nothing was written: refuse the action, telling the user the audit trail is unavailable.
    pub fn append(&self, entry: AuditEntry) -> Result<AuditRecord, AuditError> {
        let time_us = now_us();
        let synced = self.clock.is_synced(time_us);
        self.append_at(entry, time_us, synced)
    }

    /// [`Self::append`] with a given time and clock-sync flag.
    pub fn append_at(
        &self,
        entry: AuditEntry,
        time_us: i64,
        clock_synced: bool,
    ) -> Result<AuditRecord, AuditError> {
        let sql = self.sql_err();
        let mut conn = self.lock()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&sql)?;
        let (seq, prev_hash) = next_link(&tx).map_err(|e| match e {
            NextLink::Sql(e) => sql(e),
            NextLink::Damaged(message) => AuditError::Damaged { message },
        })?;
        let key = self.key.active();
        let key_id = key.key_id().to_owned();
        let input = HashInput {
            seq,
            time_us,
            clock_synced,
            account: &entry.account,
            role: &entry.role,
            source: &entry.source,
            action: entry.action.as_str(),
            target_kind: entry.target.kind.as_str(),
            target_id: &entry.target.id,
            bed: entry.bed.as_deref(),
            old_value: entry.old_value.as_deref(),
            new_value: entry.new_value.as_deref(),
            outcome: entry.outcome.as_str(),
            reason: entry.reason.as_deref(),
            key_id: &key_id,
            prev_hash: &prev_hash,
        };
        let hash = input.hash();
        let signature = key.sign(&hash);
        let head_signature = key.sign(&head_message(seq, &hash));
        tx.execute(
            &format!(
                "INSERT INTO audit_log ({COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
            ),
            params![
                seq as i64,
                time_us,
                i64::from(clock_synced),
                entry.account,
                entry.role,
                entry.source,
                entry.action.as_str(),
                entry.target.kind.as_str(),
                entry.target.id,
                entry.bed,
                entry.old_value,
                entry.new_value,
                entry.outcome.as_str(),
                entry.reason,
                &prev_hash[..],
                &hash[..],
                key_id,
                &signature[..],
            ],
        )
        .map_err(&sql)?;
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash, key_id, signature) VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,
             key_id = excluded.key_id, signature = excluded.signature",
            params![seq as i64, &hash[..], key_id, &head_signature[..]],
        )
        .map_err(&sql)?;
        tx.commit().map_err(&sql)?;
        Ok(AuditRecord {
            seq,
            time_us,
            clock_synced,
            entry,
            prev_hash,
            hash,
            key_id,
            signature,
        })
    }

    /// Up to `limit` entries from `from_seq` on, oldest first (e.g. for the outbox).
    pub fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        self.query(&Filter {
            from_seq: Some(from_seq),
            limit: Some(limit),
            ..Filter::default()
        })
    }

    /// The entries `filter` selects, oldest first.
    pub fn query(&self, filter: &Filter) -> Result<Vec<AuditRecord>, AuditError> {
        let conn = self.lock()?;
        query(&conn, filter)
    }

    /// The last seq and hash (None while the trail is empty).
    pub fn last(&self) -> Result<Option<(u64, [u8; 32])>, AuditError> {
        let conn = self.lock()?;
        let row: Option<(i64, Vec<u8>)> = conn
            .query_row(
                "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql_err())?;
        row.map(|(seq, hash)| {
            <[u8; 32]>::try_from(hash.as_slice())
                .map(|h| (seq as u64, h))
                .map_err(|_| AuditError::Corrupt {
                    seq: seq as u64,
                    message: "hash is not 32 bytes".into(),
                })
        })
        .transpose()
    }

    /// Verifies the trail with this log's own public key (see [`verify`]).
    pub fn verify(&self, from_seq: Option<u64>) -> Result<VerifySummary, VerifyFailure> {
        let mut ring = KeyRing::new();
        for key in self.key.all() {
            ring.add(key.verifying_key());
        }
        let conn = self.lock().map_err(|e| VerifyFailure::Unreadable {
            message: e.to_string(),
        })?;
        verify(&conn, &ring, from_seq)
    }

    /// Runs `f` on the connection (tests tamper with the file through it).
    #[cfg(test)]
    pub(super) fn with_conn<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        f(&self.lock().expect("audit lock"))
    }
}
