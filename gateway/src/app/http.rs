//! The HTTP part: the local page, API, `/metrics` and health, reading every other part.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use icu_cloud_bridge::bridge::BridgeStats;

use super::alarms::Alarms;
use super::ingest::IngestPart;
use super::store::StorePart;
use crate::census::CensusReader;
use crate::clock::now_us;
use crate::config::Config;
use crate::http::HttpState;
use crate::metrics::{ForwardRates, Readiness};

/// The running HTTP server.
pub(super) struct HttpPart {
    pub addr: SocketAddr,
    pub handle: actix_web::dev::ServerHandle,
    pub readiness: Arc<Readiness>,
}

/// Binds `http.listen` and starts the server on the actix system.
pub(super) fn start_http(
    config: &Config,
    store: &StorePart,
    bridge: &Option<Arc<BridgeStats>>,
    census: CensusReader,
    alarms: Alarms,
    ingest: &IngestPart,
    access: crate::http::guard::AuthState,
) -> anyhow::Result<HttpPart> {
    let listener = std::net::TcpListener::bind(config.http_listen).with_context(|| {
        format!(
            "binding the HTTP listener on {} (http.listen)",
            config.http_listen
        )
    })?;
    let addr = listener.local_addr()?;
    // `/metrics` and `/readyz` read through a connection of their own, not the bridge's.
    let metrics_db =
        crate::store::ReaderDb::open(&config.store.path, config.store.synchronous_full)
            .with_context(|| {
                format!(
                    "opening the metrics reader on {}",
                    config.store.path.display()
                )
            })?;
    let readiness = Arc::new(Readiness::default());
    let server = crate::http::start(
        listener,
        HttpState {
            gateway_id: config.gateway_id.clone(),
            live: ingest.live.clone(),
            outbox: store.outbox.clone(),
            event_stream: alarms.event_stream,
            store_stats: store.stats.clone(),
            mllp_stats: ingest.mllp_stats.clone(),
            bridge: bridge.clone(),
            kafka_bootstrap: config.kafka.as_ref().map(|k| k.brokers.clone()),
            census,
            mqtt: ingest.mqtt.as_ref().map(|m| m.counters()),
            mqtt_transport: config.mqtt.as_ref().map_or("tcp", |m| m.transport()),
            alarms: alarms.addr,
            alarm_stats: alarms.stats,
            limits: Arc::new(Mutex::new(alarms.limits)),
            events: alarms.events,
            started_us: now_us(),
            store: store.store.clone(),
            metrics_db: Arc::new(Mutex::new(metrics_db)),
            store_path: config.store.path.clone(),
            ingest: ingest.stats.clone(),
            forward_rates: bridge.as_ref().map(|b| ForwardRates::start(b.clone())),
            readiness: readiness.clone(),
            auth: access,
        },
        config.http_limits,
    )?;
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok(HttpPart {
        addr,
        handle,
        readiness,
    })
}
