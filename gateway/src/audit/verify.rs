//! Checking the trail: [`verify`] walks `audit_log` in seq order and stops at the first entry
//! that is missing, edited, out of place or badly signed, then checks the signed head.

use std::collections::BTreeSet;
use std::fmt;

use rusqlite::{Connection, OptionalExtension};

use super::chain::{head_message, KeyRing, ZERO_HASH};
use super::entry::hex;
use super::row::{has_audit_tables, RawRow, COLUMNS};

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifySummary {
    /// Entries checked.
    pub entries: u64,
    /// First and last seq checked (None when none was).
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The keys that signed the entries checked.
    pub key_ids: Vec<String>,
    /// The seq the signed head names (None for an empty trail).
    pub head_seq: Option<u64>,
}

impl fmt::Display for VerifySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit trail verified: {} entries", self.entries)?;
        if let (Some(a), Some(b)) = (self.first_seq, self.last_seq) {
            write!(f, ", seq {a}..{b}")?;
        }
        match self.key_ids.len() {
            0 => Ok(()),
            1 => write!(f, ", key {}", self.key_ids[0]),
            _ => write!(f, ", keys {}", self.key_ids.join(", ")),
        }
    }
}

/// Why the entry at the failing seq is bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Its fields do not hash to its stored hash (a value, the time or prev_hash was changed),
    /// or a column holds something that is not what was written.
    Edited { detail: String },
    /// No entry has this seq, though later ones exist: deleted.
    Missing,
    /// A signed entry that does not follow the one before it: its prev_hash is the hash of the
    /// entry at `belongs_after` (entries swapped or moved).
    OutOfOrder { belongs_after: Option<u64> },
    /// Its signature does not verify with the key its key id names.
    BadSignature,
    /// Signed with a key that is not among the verifier's public keys.
    UnknownKey { key_id: String },
    /// The signed head says the trail runs to `head_seq`, but it ends before: this seq is the
    /// first one cut off.
    Truncated { head_seq: u64 },
    /// Entries from this seq on are beyond the signed head (`head_seq`): not written by the
    /// gateway's append, which moves the head in the same transaction.
    BeyondHead { head_seq: u64 },
    /// The trail has entries but its signed head row is gone: a cut tail could not be seen.
    HeadMissing,
    /// The head's signature does not verify (or its key is unknown).
    HeadBadSignature { key_id: String },
    /// The head names this seq with another hash than the entry's.
    HeadMismatch,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Edited { detail } => write!(f, "edited ({detail})"),
            Problem::Missing => f.write_str("missing (deleted: later entries exist)"),
            Problem::OutOfOrder {
                belongs_after: Some(s),
            } => write!(
                f,
                "out of order (a signed entry that belongs after seq {s}, not here)"
            ),
            Problem::OutOfOrder { belongs_after: None } => {
                f.write_str("out of order (its prev_hash does not link to the entry before)")
            }
            Problem::BadSignature => f.write_str("bad signature (its hash was not signed by its key)"),
            Problem::UnknownKey { key_id } => {
                write!(f, "unknown key (signed by key {key_id}, which is not given)")
            }
            Problem::Truncated { head_seq } => write!(
                f,
                "truncated (the signed head says the trail runs to seq {head_seq}; this and later entries are gone)"
            ),
            Problem::BeyondHead { head_seq } => write!(
                f,
                "not covered by the signed head (which ends at seq {head_seq})"
            ),
            Problem::HeadMissing => f.write_str(
                "head missing (the signed head row is gone; a cut tail cannot be ruled out)",
            ),
            Problem::HeadBadSignature { key_id } => {
                write!(f, "the signed head does not verify (key {key_id})")
            }
            Problem::HeadMismatch => {
                f.write_str("the signed head names another hash for this entry (edited)")
            }
        }
    }
}

/// Verification failed: the first bad seq and why, or the trail could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    #[error("audit trail NOT verified: first bad entry seq {seq}: {problem}")]
    Bad { seq: u64, problem: Problem },
    #[error("audit trail NOT verified: cannot read it: {message}")]
    Unreadable { message: String },
}

impl VerifyFailure {
    /// The first bad seq (None when the trail could not be read).
    pub fn seq(&self) -> Option<u64> {
        match self {
            VerifyFailure::Bad { seq, .. } => Some(*seq),
            VerifyFailure::Unreadable { .. } => None,
        }
    }

    /// The problem (None when the trail could not be read).
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            VerifyFailure::Bad { problem, .. } => Some(problem),
            VerifyFailure::Unreadable { .. } => None,
        }
    }
}

fn unreadable(e: rusqlite::Error) -> VerifyFailure {
    VerifyFailure::Unreadable {
        message: e.to_string(),
    }
}

fn bad(seq: u64, problem: Problem) -> VerifyFailure {
    VerifyFailure::Bad { seq, problem }
}

/// The seq of the entry whose stored hash is `hash`, if any (a full scan: only on failure).
fn seq_with_hash(conn: &Connection, hash: &[u8]) -> Result<Option<u64>, VerifyFailure> {
    conn.query_row(
        "SELECT seq FROM audit_log WHERE hash = ?1 ORDER BY seq LIMIT 1",
        [hash],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|s| s.map(|s| s as u64))
    .map_err(unreadable)
}

/// Checks one row whose seq is the expected one; returns its hash.
fn check_row(
    conn: &Connection,
    row: &RawRow,
    expected_prev: Option<&[u8; 32]>,
    keys: &KeyRing,
) -> Result<[u8; 32], VerifyFailure> {
    let seq = row.seq;
    let edited = |detail: &str| {
        bad(
            seq,
            Problem::Edited {
                detail: detail.to_owned(),
            },
        )
    };
    let prev = <[u8; 32]>::try_from(row.prev_hash.as_slice())
        .map_err(|_| edited("prev_hash is not 32 bytes"))?;
    let hash =
        <[u8; 32]>::try_from(row.hash.as_slice()).map_err(|_| edited("hash is not 32 bytes"))?;
    match keys.verify(&row.key_id, &hash, &row.signature) {
        None => {
            return Err(bad(
                seq,
                Problem::UnknownKey {
                    key_id: row.key_id.clone(),
                },
            ))
        }
        Some(false) => return Err(bad(seq, Problem::BadSignature)),
        Some(true) => {}
    }
    let linked = expected_prev.is_none_or(|e| *e == prev);
    let recomputed = row.hash_input(&prev).hash();
    if !linked {
        // A signed hash that does not link: a genuine entry moved here, or prev_hash edited.
        return match seq_with_hash(conn, &prev)? {
            Some(after) if after != seq => Err(bad(
                seq,
                Problem::OutOfOrder {
                    belongs_after: Some(after),
                },
            )),
            _ if recomputed == hash => Err(bad(
                seq,
                Problem::OutOfOrder {
                    belongs_after: None,
                },
            )),
            _ => Err(edited("its prev_hash is not the hash of the entry before")),
        };
    }
    if recomputed != hash {
        return Err(edited(&format!(
            "its fields hash to {}, the stored hash is {}",
            &hex(&recomputed)[..16],
            &hex(&hash)[..16]
        )));
    }
    Ok(hash)
}

/// Verifies the audit trail in `conn` from `from_seq` (default 1) to its end.
///
/// Checks, in seq order: that seqs are gapless from `from_seq`; each entry's signature over its
/// stored hash with the public key its key id names (any key of `keys`, so entries signed before
/// a rotation still verify); that its prev_hash is the hash of the entry before (the zero hash at
/// seq 1; from the middle, the stored hash of `from_seq - 1` when it exists); and that its fields
/// hash to its stored hash. Then the signed head: its signature, and that it names the last entry
/// with its hash (a cut tail fails naming the first missing seq). Stops at the first bad entry.
pub fn verify(
    conn: &Connection,
    keys: &KeyRing,
    from_seq: Option<u64>,
) -> Result<VerifySummary, VerifyFailure> {
    let from = from_seq.unwrap_or(1).max(1);
    let mut summary = VerifySummary {
        entries: 0,
        first_seq: None,
        last_seq: None,
        key_ids: Vec::new(),
        head_seq: None,
    };
    if !has_audit_tables(conn).map_err(unreadable)? {
        return Ok(summary);
    }
    // The entry before `from`: (seq, stored hash) of the last entry seen so far.
    let mut last: Option<(u64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
            [from as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
        .map_err(unreadable)?;
    let mut expected_prev: Option<[u8; 32]> = if from == 1 {
        Some(ZERO_HASH)
    } else {
        last.as_ref()
            .filter(|(seq, _)| *seq == from - 1)
            .and_then(|(_, h)| <[u8; 32]>::try_from(h.as_slice()).ok())
    };
    let mut key_ids = BTreeSet::new();
    let mut expected = from;
    {
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM audit_log WHERE seq >= ?1 ORDER BY seq"
            ))
            .map_err(unreadable)?;
        let mut rows = st.query([from as i64]).map_err(unreadable)?;
        while let Some(r) = rows.next().map_err(unreadable)? {
            let seq = r.get::<_, i64>(0).map_err(unreadable)? as u64;
            if seq != expected {
                return Err(bad(expected, Problem::Missing));
            }
            let row = RawRow::read(r).map_err(|e| {
                bad(
                    seq,
                    Problem::Edited {
                        detail: format!("a column does not hold what was written: {e}"),
                    },
                )
            })?;
            let hash = check_row(conn, &row, expected_prev.as_ref(), keys)?;
            key_ids.insert(row.key_id.clone());
            summary.entries += 1;
            summary.first_seq.get_or_insert(seq);
            summary.last_seq = Some(seq);
            expected_prev = Some(hash);
            last = Some((seq, hash.to_vec()));
            expected += 1;
        }
    }
    summary.key_ids = key_ids.into_iter().collect();

    let head: Option<(i64, Vec<u8>, String, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash, key_id, signature FROM audit_head WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(unreadable)?;
    let last_seq = last.as_ref().map_or(0, |(s, _)| *s);
    let Some((head_seq, head_hash, head_key, head_sig)) = head else {
        if last.is_some() {
            return Err(bad(last_seq + 1, Problem::HeadMissing));
        }
        return Ok(summary);
    };
    let head_seq = head_seq.max(0) as u64;
    let head_bad = || {
        bad(
            head_seq,
            Problem::HeadBadSignature {
                key_id: head_key.clone(),
            },
        )
    };
    let head_hash_arr = <[u8; 32]>::try_from(head_hash.as_slice()).map_err(|_| head_bad())?;
    if keys.verify(
        &head_key,
        &head_message(head_seq, &head_hash_arr),
        &head_sig,
    ) != Some(true)
    {
        return Err(head_bad());
    }
    summary.head_seq = Some(head_seq);
    if head_seq > last_seq {
        return Err(bad(last_seq + 1, Problem::Truncated { head_seq }));
    }
    if head_seq < last_seq {
        return Err(bad(head_seq + 1, Problem::BeyondHead { head_seq }));
    }
    if let Some((seq, hash)) = &last {
        if *hash != head_hash {
            return Err(bad(*seq, Problem::HeadMismatch));
        }
    }
    Ok(summary)
}
