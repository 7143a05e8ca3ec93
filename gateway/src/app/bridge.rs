//! The bridge part: forwarding the outbox to Kafka when `[kafka]` is configured.

use std::sync::{Arc, OnceLock};

use actix::Addr;
use anyhow::Context as _;
use icu_cloud_bridge::bridge::{BridgeActor, BridgeStats};
use icu_cloud_bridge::signing::GatewayKey;
use icu_drivers::terminology::Terminology;

use crate::config::Config;
use crate::store::SqliteOutbox;

/// Starts the bridge on the store's outbox (and sets `slot`, so commits wake it); `None`
/// without `[kafka]`. Without a given `key`, the configured key file is loaded.
pub(super) fn start_bridge(
    config: &Config,
    key: Option<GatewayKey>,
    outbox: &Arc<SqliteOutbox>,
    terminology: &Arc<Terminology>,
    slot: &OnceLock<Addr<BridgeActor>>,
) -> anyhow::Result<Option<Arc<BridgeStats>>> {
    let Some(k) = &config.kafka else {
        tracing::warn!("no [kafka] configured: readings are stored and wait in the outbox");
        return Ok(None);
    };
    let key = match key {
        Some(k) => k,
        None => super::load_key(&config.key_file)?,
    };
    tracing::info!(key_id = key.key_id(), bootstrap = %k.brokers, topic = %k.topic_observations, "forwarding to kafka");
    let stats = BridgeStats::new();
    let actor = BridgeActor::new(
        k.clone(),
        outbox.clone(),
        key,
        terminology.clone(),
        stats.clone(),
    )
    .context("starting the kafka bridge")?;
    let addr = actix::Actor::start(actor);
    let _ = slot.set(addr);
    Ok(Some(stats))
}
