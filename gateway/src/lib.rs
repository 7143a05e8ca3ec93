//! The ICU edge gateway service.
//!
//! Owns the actix system that reads bedside devices and keeps every reading: the MLLP listener
//! ([`mllp`]), one actor per device ([`device`]), the durable store with group commit and the
//! outbox ([`store`]), the live view ([`live`]) and the local page and API ([`http`]); the
//! bridge to Kafka comes from `icu-cloud-bridge`. [`app`] wires them together and [`config`]
//! validates the one config file. See ARCHITECTURE.md for one observation's path.

pub mod alarm;
pub mod allow;
pub mod app;
pub mod audit;
pub mod auth;
pub mod census;
pub mod clock;
pub mod config;
/// `icu-gateway demo` (cargo feature `demo`, on by default): links the simulator.
#[cfg(feature = "demo")]
pub mod demo;
pub mod device;
pub mod domain;
pub mod http;
pub mod live;
pub mod metrics;
pub mod mllp;
pub mod mqtt;
/// `icu-gateway check-config --probe`: serial ports, brokers, topics, keys, certificates, disk.
pub mod probe;
pub mod serial;
pub mod serial_protocols;
pub mod snippet;
pub mod swap;
pub mod telemetry;
pub mod tls;
pub mod waves;

/// The durable store lives in its own crate (`icu-store`, `gateway/store/`), which does not
/// depend on the gateway nor on the cloud bridge; it is reachable here as `crate::store`.
pub use icu_store as store;
