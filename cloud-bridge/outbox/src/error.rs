//! The outbox's one error type.
//!
//! Owns: [`OutboxError`], what every [`crate::Outbox`] call reports when it fails. The bridge
//! turns it into its own error (`icu_cloud_bridge::BridgeError::Outbox`, same message) with
//! `From`; the store builds it from its own errors.

/// An outbox call failed: the store behind it (a SQLite error, a record that does not decode,
/// a closed connection) or an injected failure of [`crate::MemoryOutbox`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox {operation} failed: {reason}")]
pub struct OutboxError {
    /// The call that failed: "fetch_unsent", "mark_sent" or "mark_sent_many".
    pub operation: &'static str,
    /// Why, as the implementation reported it.
    pub reason: String,
}

impl OutboxError {
    /// A failure of `operation` because of `reason`.
    pub fn new(operation: &'static str, reason: impl Into<String>) -> Self {
        Self {
            operation,
            reason: reason.into(),
        }
    }
}
