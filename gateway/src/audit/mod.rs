//! The tamper-evident audit trail: who did what, when, to what, with what outcome, as a
//! hash-chained, ed25519-signed, append-only table in the store's SQLite file.
//!
//! Owns: [`AuditLog`] (open, [`AuditLog::append`], read, query), the vocabularies of
//! [`AuditEntry`] ([`Action`], [`TargetKind`], [`Outcome`]), the canonical encoding and the
//! chain ([`chain`]), [`verify()`] and the `icu-gateway audit verify|show` commands ([`cli`]).
//!
//! # Use
//!
//! A caller describes an action as an [`AuditEntry`] (account, role, source address, action,
//! target kind and id, bed, old and new values, outcome, reason) and calls
//! [`AuditLog::append`] on the blocking pool **before** the action takes effect. `append`
//! returns only once the entry is committed (`synchronous = FULL`); on `Err` nothing was written
//! and the caller refuses the action with a clear error. Alarms themselves never wait for it.
//! An append never hides tampering: after a cut tail the next entry follows the signed head (the
//! cut seqs stay "missing" to `verify`), and a trail whose head row is gone refuses appends
//! ([`AuditError::Damaged`]) until someone looks.
//!
//! # What is stored
//!
//! Table `audit_log`, one row per entry: `seq` (1, 2, 3... without gaps), `time_us` (UTC µs from
//! the gateway clock), `clock_synced` (0/1), `account`, `role`, `source`, `action`,
//! `target_kind`, `target_id`, `bed`, `old_value`, `new_value`, `outcome`, `reason` (the four
//! optional ones NULL when absent), `prev_hash` (32 bytes), `hash` (32 bytes), `key_id` (the
//! signing key's id, `icu_cloud_bridge::signing::key_id_of`) and `signature` (64 bytes).
//! Table `audit_head`, one row (id 1): the last `seq`, its `hash`, `key_id` and a `signature`
//! over the head message. Both are written in the same transaction.
//!
//! # The hash and the chain
//!
//! `hash = SHA-256(encoding)`, where the encoding is, in this order (integers big-endian; a
//! *string* is its UTF-8 length as u32 big-endian then its bytes; an *optional string* is one
//! byte 0 when absent, or 1 then the string):
//!
//! 1. string `"icu-gateway audit entry v1"` (format tag),
//! 2. `seq` u64, 3. `time_us` i64, 4. `clock_synced` one byte 0/1,
//! 5. strings `account`, `role`, `source`, `action`, `target_kind`, `target_id`,
//! 6. optional strings `bed`, `old_value`, `new_value`,
//! 7. string `outcome`, 8. optional string `reason`, 9. string `key_id`,
//! 10. the 32 bytes of `prev_hash`.
//!
//! Every field is length-prefixed or fixed-size, so no two different entries have the same
//! encoding. `prev_hash` is the previous entry's `hash` (32 zero bytes for seq 1): each entry
//! commits to the whole history before it. `signature` is plain ed25519 (no prehash, no
//! context) over the 32 bytes of `hash` with the gateway key, so any ed25519 library verifies
//! it. The head's signature covers string `"icu-gateway audit head v1"`, `seq` u64 and `hash`.
//!
//! # What `verify` checks
//!
//! From `from_seq` (default 1) in seq order, stopping at the first bad entry and naming its seq:
//! - **missing**: a seq is absent though later ones exist (a deleted row);
//! - **unknown key / bad signature**: the signature over the stored hash does not verify with the
//!   public key its key id names (any of the keys given, so entries of a rotated key still
//!   verify);
//! - **out of order**: a signed entry whose `prev_hash` is not the hash of the entry before (two
//!   entries swapped or moved; it names the entry it belongs after);
//! - **edited**: the fields do not hash to the stored hash (a value, time or flag changed);
//! - **truncated**: the signed head names a later seq than the last entry (a cut tail: the first
//!   missing seq is named); a missing head, a head whose signature fails, or one that names
//!   another hash fail too.
//!
//! SQLite triggers abort UPDATE and DELETE on `audit_log` and an INSERT of any but the next seq
//! (defence in depth); verification does not rely on them: an edit made after dropping them is
//! found all the same.
//!
//! # What it cannot detect
//!
//! - Someone holding the private key can rewrite history consistently (re-hash and re-sign every
//!   entry and the head), or replace the whole file by another validly signed trail. The copy
//!   forwarded to Kafka (`icu.audit`) and the central team's record of what it received are the
//!   defence there; keep the key readable by the gateway only.
//! - Deleting the whole trail (both tables, or the store file) leaves an empty, "valid" trail;
//!   the forwarded copy and the last seq seen centrally show it.
//! - Rolling the file back to an older copy (an old backup) verifies up to its own head; only a
//!   seq known from elsewhere (Kafka) shows the loss.
//! - An action that was never appended (a caller that skips `append`), or a false account
//!   given by a caller: the trail records what the gateway says, not what happened.
//! - Times are the gateway clock's: `clock_synced` says whether it was synchronised, not whether
//!   it was right.

pub mod chain;
pub mod cli;
mod entry;
mod error;
mod log;
mod row;
mod verify;

pub use chain::{KeyRing, ZERO_HASH};
pub use entry::{hex, sha256_hex, Action, AuditEntry, AuditRecord, Outcome, Target, TargetKind};
pub use error::AuditError;
pub use log::{prepare, query, AuditLog, Filter, SCHEMA};
pub use row::has_audit_tables;
pub use verify::{verify, Problem, VerifyFailure, VerifySummary};

#[cfg(test)]
mod tests;
