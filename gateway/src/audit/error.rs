//! [`AuditError`]: why the trail could not be written or read.

use crate::store::StoreError;

/// Why the trail could not be written or read. An `append` that returns one of these wrote
/// nothing: the caller must refuse the action.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit trail cannot be opened: {0}")]
    Open(#[from] StoreError),
    #[error("audit trail write or read failed ({path}): {message}")]
    Sqlite { path: String, message: String },
    #[error(
        "audit trail entry seq {seq} is not readable ({message}); run `icu-gateway audit verify`"
    )]
    Corrupt { seq: u64, message: String },
    /// The trail was tampered with in a way that an append would hide (its signed head is
    /// gone, or the last hash is unusable): nothing is appended until someone looks.
    #[error(
        "audit trail is damaged ({message}); no entry was written; run `icu-gateway audit verify`"
    )]
    Damaged { message: String },
    #[error("audit trail is unavailable: a thread panicked while writing it")]
    Poisoned,
}
