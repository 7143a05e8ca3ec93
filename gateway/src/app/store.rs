//! The store part: the `Store` actor (which creates the schema), its outbox reader, and the
//! slots through which it reaches the bridge and the alarm engine started after it.

use std::sync::{Arc, OnceLock};

use actix::Addr;
use anyhow::Context as _;
use icu_cloud_bridge::bridge::{BridgeActor, Wake};

use crate::alarm::actor::{AlarmActor, Technical};
use crate::clock::now_us;
use crate::config::Config;
use crate::store::{SqliteOutbox, Store, StoreStats};

/// The started store and the slots for the parts that need it first.
pub(super) struct StorePart {
    pub store: Addr<Store>,
    pub outbox: Arc<SqliteOutbox>,
    pub stats: Arc<StoreStats>,
    /// Set once the bridge runs: each commit wakes it.
    pub bridge_slot: Arc<OnceLock<Addr<BridgeActor>>>,
    /// Set once the alarm engine runs: the disk-budget technical alarm goes through it.
    pub alarm_slot: Arc<OnceLock<Addr<AlarmActor>>>,
}

/// Starts the store and opens the outbox reader on its file.
pub(super) fn start_store(config: &Config) -> anyhow::Result<StorePart> {
    // Bridge address is known only after the store exists (the bridge reads the store's outbox).
    let bridge_slot: Arc<OnceLock<Addr<BridgeActor>>> = Arc::new(OnceLock::new());
    let slot = bridge_slot.clone();
    let on_commit: crate::store::CommitListener = Box::new(move || {
        if let Some(b) = slot.get() {
            // A hint only: the bridge also polls, so a full mailbox loses nothing.
            let _ = b.try_send(Wake);
        }
    });
    let stats = Arc::new(StoreStats::default());
    // The store's disk-budget technical alarm goes through the alarm engine (started later),
    // so it reaches the page, MQTT and PCD-04 like any other technical alarm.
    let alarm_slot: Arc<OnceLock<Addr<AlarmActor>>> = Arc::new(OnceLock::new());
    let slot = alarm_slot.clone();
    let on_condition: crate::store::ConditionListener = Box::new(move |c| {
        let Some(alarms) = slot.get() else {
            return false;
        };
        alarms
            .try_send(Technical {
                bed: crate::store::GATEWAY_SOURCE.into(),
                device_id: crate::store::GATEWAY_SOURCE.into(),
                condition: crate::store::STORE_BUDGET_CONDITION.into(),
                text: c.text.clone(),
                priority: c.priority.into(),
                active: c.active,
                time_us: now_us(),
            })
            .is_ok()
    });
    let store = Store::start_with(
        &config.store,
        &config.gateway_id,
        stats.clone(),
        Some(on_commit),
        Some(on_condition),
    )
    .with_context(|| format!("opening the store {}", config.store.path.display()))?;
    let outbox = Arc::new(SqliteOutbox::open(&config.store).with_context(|| {
        format!(
            "opening the outbox reader on {}",
            config.store.path.display()
        )
    })?);
    // The bridge's sent marks join the writer's group commits (no second writer waiting for
    // the write lock while ingest runs flat out).
    outbox.mark_through(store.clone());
    Ok(StorePart {
        store,
        outbox,
        stats,
        bridge_slot,
        alarm_slot,
    })
}
