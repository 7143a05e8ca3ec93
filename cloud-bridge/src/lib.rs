//! Cloud bridge of the ICU edge gateway: FHIR R4 mapping, ed25519 signing, the Kafka forwarder
//! and the topic verifier.
//!
//! Owns the path from the store's outbox to Kafka and back out to central teams: the outbox
//! contract (crate `icu-outbox`, re-exported here: what the bridge reads and marks) →
//! [`bridge`] (the actor: group, map with [`fhir`], sign with [`signing`], produce with
//! [`headers`], mark sent on delivery report) → Kafka → [`consume`] (read, verify signatures,
//! account seqs for gaps and duplicates). The bridge does not depend on the store: it drains any
//! [`Outbox`].
//!
//! Guarantees, end to end: a record leaves the outbox only after Kafka's delivery report; every
//! Kafka record's value is exactly the signed bytes and verifies with any ed25519 library and the
//! gateway's PEM public key; `(gateway_id, device_id, seq)` is in the headers and the FHIR
//! identifiers; no patient is ever guessed.

pub mod bridge;
pub mod consume;
pub mod deadletter;
pub mod error;
pub mod fhir;
pub mod headers;
pub mod signing;
pub mod trace;

pub(crate) use icu_drivers::terminology::Terminology;

pub use bridge::{BridgeActor, BridgeConfig, BridgeState, BridgeStats, Wake};
pub use error::BridgeError;
pub use icu_outbox::{MemoryOutbox, Outbox, OutboxError, OutboxRecord, Stream};
pub use signing::GatewayKey;
