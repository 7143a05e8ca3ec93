//! The bridge part: forwarding the outbox to Kafka when `[kafka]` is configured.

use std::sync::{Arc, OnceLock};

use actix::Addr;
use anyhow::Context as _;
use icu_cloud_bridge::bridge::{BridgeActor, BridgeConfig, BridgeStats};
use icu_cloud_bridge::signing::SigningKeys;
use icu_drivers::terminology::Terminology;

use crate::store::SqliteOutbox;

/// Starts the bridge with these settings on the store's outbox, and sets `slot` so commits
/// wake it.
pub(super) fn start_bridge(
    kafka: &BridgeConfig,
    key: Arc<SigningKeys>,
    outbox: &Arc<SqliteOutbox>,
    terminology: &Arc<Terminology>,
    slot: &OnceLock<Addr<BridgeActor>>,
) -> anyhow::Result<Arc<BridgeStats>> {
    tracing::info!(key_id = key.active().key_id(), bootstrap = %kafka.brokers, topic = %kafka.topic_observations, "forwarding to kafka");
    let stats = BridgeStats::new();
    let actor = BridgeActor::new(
        kafka.clone(),
        outbox.clone(),
        key,
        terminology.clone(),
        stats.clone(),
    )
    .context("starting the kafka bridge")?;
    let addr = actix::Actor::start(actor);
    let _ = slot.set(addr);
    Ok(stats)
}
