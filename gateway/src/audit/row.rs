//! One `audit_log` row as stored ([`RawRow`]: strings and blobs unparsed, so the verifier hashes
//! exactly what is in the file), its columns, and whether a file has the audit tables at all.

use rusqlite::{Connection, Row};

use super::chain::HashInput;
use super::entry::{Action, AuditEntry, AuditRecord, Outcome, Target, TargetKind};
use super::error::AuditError;

/// The columns of `audit_log` in the order [`RawRow::read`] expects.
pub(super) const COLUMNS: &str = "seq, time_us, clock_synced, account, role, source, action, \
     target_kind, target_id, bed, old_value, new_value, outcome, reason, prev_hash, hash, key_id, \
     signature";

/// One `audit_log` row exactly as stored (strings and blobs unparsed), for verifying.
#[derive(Debug, Clone)]
pub(super) struct RawRow {
    pub seq: u64,
    pub time_us: i64,
    pub clock_synced: i64,
    pub account: String,
    pub role: String,
    pub source: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub bed: Option<String>,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    pub key_id: String,
    pub signature: Vec<u8>,
}

impl RawRow {
    /// Reads a row selected with [`COLUMNS`]; fails on a column of the wrong type.
    pub fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            seq: r.get::<_, i64>(0)? as u64,
            time_us: r.get(1)?,
            clock_synced: r.get(2)?,
            account: r.get(3)?,
            role: r.get(4)?,
            source: r.get(5)?,
            action: r.get(6)?,
            target_kind: r.get(7)?,
            target_id: r.get(8)?,
            bed: r.get(9)?,
            old_value: r.get(10)?,
            new_value: r.get(11)?,
            outcome: r.get(12)?,
            reason: r.get(13)?,
            prev_hash: r.get(14)?,
            hash: r.get(15)?,
            key_id: r.get(16)?,
            signature: r.get(17)?,
        })
    }

    /// The hash input of this row with `prev_hash` (the row's own, when it is 32 bytes).
    pub fn hash_input<'a>(&'a self, prev_hash: &'a [u8; 32]) -> HashInput<'a> {
        HashInput {
            seq: self.seq,
            time_us: self.time_us,
            clock_synced: self.clock_synced != 0,
            account: &self.account,
            role: &self.role,
            source: &self.source,
            action: &self.action,
            target_kind: &self.target_kind,
            target_id: &self.target_id,
            bed: self.bed.as_deref(),
            old_value: self.old_value.as_deref(),
            new_value: self.new_value.as_deref(),
            outcome: &self.outcome,
            reason: self.reason.as_deref(),
            key_id: &self.key_id,
            prev_hash,
        }
    }

    /// The typed record; a string outside the vocabularies or a blob of the wrong size is an
    /// error naming the row.
    pub fn into_record(self) -> Result<AuditRecord, AuditError> {
        let seq = self.seq;
        let bad = |message: String| AuditError::Corrupt { seq, message };
        let action: Action = self.action.parse().map_err(bad)?;
        let kind: TargetKind = self.target_kind.parse().map_err(bad)?;
        let outcome: Outcome = self.outcome.parse().map_err(bad)?;
        let prev_hash = <[u8; 32]>::try_from(self.prev_hash.as_slice())
            .map_err(|_| bad("prev_hash is not 32 bytes".into()))?;
        let hash = <[u8; 32]>::try_from(self.hash.as_slice())
            .map_err(|_| bad("hash is not 32 bytes".into()))?;
        let signature = <[u8; 64]>::try_from(self.signature.as_slice())
            .map_err(|_| bad("signature is not 64 bytes".into()))?;
        Ok(AuditRecord {
            seq,
            time_us: self.time_us,
            clock_synced: self.clock_synced != 0,
            entry: AuditEntry {
                account: self.account,
                role: self.role,
                source: self.source,
                action,
                target: Target {
                    kind,
                    id: self.target_id,
                },
                bed: self.bed,
                old_value: self.old_value,
                new_value: self.new_value,
                outcome,
                reason: self.reason,
            },
            prev_hash,
            hash,
            key_id: self.key_id,
            signature,
        })
    }
}

/// Whether `conn`'s database has an `audit_log` table (a store file from before the audit trail,
/// or a gateway that never wrote one, has none: an empty trail).
pub fn has_audit_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}
