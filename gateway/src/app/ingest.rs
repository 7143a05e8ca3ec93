//! The ingest part: the live view, one device actor per configured device, and the transports
//! that feed them (serial lines, the MQTT subscriber, the MLLP listener).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use anyhow::Context as _;
use icu_drivers::mqtt::MqttSubscriber;
use icu_drivers::terminology::Terminology;
use tokio::sync::watch;

use super::alarms::Alarms;
use crate::census::actor::CensusActor;
use crate::census::CensusReader;
use crate::clock::ClockState;
use crate::config::{Config, Protocol};
use crate::device::DeviceActor;
use crate::live::LiveState;
use crate::metrics::IngestStats;
use crate::mllp::{self, Ingest, MllpStats, Route};
use crate::store::Store;

/// The running ingest side.
pub(super) struct IngestPart {
    pub live: Arc<LiveState>,
    pub stats: Arc<IngestStats>,
    pub mllp_stats: Arc<MllpStats>,
    pub mllp_addr: SocketAddr,
    pub mllp_task: tokio::task::JoinHandle<()>,
    pub mqtt: Option<MqttSubscriber>,
    /// `true` stops the listeners and the serial tasks.
    pub shutdown: watch::Sender<bool>,
}

/// What every transport shares.
struct Shared<'a> {
    config: &'a Config,
    terminology: &'a Arc<Terminology>,
    store: &'a Addr<Store>,
    live: &'a Arc<LiveState>,
}

/// Starts the device actors and every configured transport.
pub(super) async fn start_ingest(
    config: &Config,
    terminology: Arc<Terminology>,
    store: &Addr<Store>,
    census_reader: CensusReader,
    census_addr: Addr<CensusActor>,
    alarms: &Alarms,
) -> anyhow::Result<IngestPart> {
    let live = Arc::new(
        LiveState::new(&config.beds, &config.devices)
            .with_clock_settle_s(config.alarms.device_clock.settle_s),
    );
    let stats = Arc::new(IngestStats::default());
    let clock = Arc::new(ClockState::new(config.clock));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Shared {
        config,
        terminology: &terminology,
        store,
        live: &live,
    };
    let device_addrs = start_devices(&shared, &clock, census_reader, alarms, &stats, &shutdown_rx);
    let mqtt = match &config.mqtt {
        None => None,
        Some(_) => Some(start_mqtt(&shared, &device_addrs, alarms)?),
    };
    let mllp_stats = Arc::new(MllpStats::default());
    let (mllp_addr, mllp_task) = start_mllp(
        &shared,
        &device_addrs,
        mllp_stats.clone(),
        census_addr,
        shutdown_rx,
    )
    .await?;
    Ok(IngestPart {
        live,
        stats,
        mllp_stats,
        mllp_addr,
        mllp_task,
        mqtt,
        shutdown,
    })
}

/// One device actor per configured device (a serial device's port task with it), by id.
fn start_devices(
    s: &Shared<'_>,
    clock: &Arc<ClockState>,
    census_reader: CensusReader,
    alarms: &Alarms,
    stats: &Arc<IngestStats>,
    shutdown: &watch::Receiver<bool>,
) -> HashMap<String, Addr<DeviceActor>> {
    let mut device_addrs = HashMap::new();
    for d in &s.config.devices {
        let addr = DeviceActor::start(
            d.clone(),
            s.store.clone(),
            s.live.clone(),
            clock.clone(),
            census_reader.clone(),
            Some((alarms.addr.clone(), alarms.stats.clone())),
            s.config.alarms.device_clock.clone(),
            stats.clone(),
        );
        device_addrs.insert(d.id.clone(), addr.clone());
        if let Some(settings) = &d.serial {
            let protocol = crate::serial_protocols::for_device(d, s.terminology.clone());
            // Every log line of the serial task names the device and its bed.
            let span = tracing::info_span!("serial", device = %d.id, bed = %d.bed);
            tokio::spawn(tracing::Instrument::instrument(
                crate::serial::run(
                    d.id.clone(),
                    settings.clone(),
                    d.silent_after,
                    protocol,
                    addr,
                    s.store.clone(),
                    shutdown.clone(),
                ),
                span,
            ));
        }
    }
    device_addrs
}

/// The MQTT subscriber (`[mqtt]`), routing to the mqtt devices; the alarm topic publishes
/// through its client.
fn start_mqtt(
    s: &Shared<'_>,
    device_addrs: &HashMap<String, Addr<DeviceActor>>,
    alarms: &Alarms,
) -> anyhow::Result<MqttSubscriber> {
    let config = s.config;
    let mcfg = config
        .mqtt
        .as_ref()
        .context("mqtt started without [mqtt]")?;
    let routes: HashMap<String, crate::mqtt::MqttRoute> = config
        .devices
        .iter()
        .filter(|d| d.protocol == Protocol::Mqtt)
        .filter_map(|d| {
            device_addrs.get(&d.id).map(|addr| {
                (
                    d.id.clone(),
                    crate::mqtt::MqttRoute {
                        bed: d.bed.clone(),
                        addr: addr.clone(),
                    },
                )
            })
        })
        .collect();
    let router = Arc::new(crate::mqtt::MqttRouter {
        gateway_id: config.gateway_id.clone(),
        routes,
        store: s.store.clone(),
        live: s.live.clone(),
        terminology: s.terminology.clone(),
        max_payload_bytes: mcfg.max_payload_bytes,
        holds: Default::default(),
    });
    let subscriber =
        MqttSubscriber::start_pipelined(mcfg, crate::mqtt::MAX_IN_FLIGHT, move |msg| {
            router.clone().dispatch(msg)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = alarms.mqtt_client.set(subscriber.client().clone());
    let _ = alarms.mqtt_connected.set(subscriber.connected_flag());
    tracing::info!(broker = %format!("{}:{}", mcfg.broker_host, mcfg.broker_port),
        transport = mcfg.transport(),
        filter = %icu_drivers::mqtt::subscription_filter(&config.gateway_id), "mqtt subscriber started");
    Ok(subscriber)
}

/// The MLLP listener (PCD-01 from monitors, ADT to the census), routing by `devices[].match`.
async fn start_mllp(
    s: &Shared<'_>,
    device_addrs: &HashMap<String, Addr<DeviceActor>>,
    stats: Arc<MllpStats>,
    census_addr: Addr<CensusActor>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let config = s.config;
    let mut routes = HashMap::new();
    for d in &config.devices {
        if let (Some(m), Some(addr)) = (&d.match_id, device_addrs.get(&d.id)) {
            routes.insert(
                m.clone(),
                Route {
                    device_id: d.id.clone(),
                    bed: d.bed.clone(),
                    addr: addr.clone(),
                    allow_from: d.allow_from.clone(),
                },
            );
        }
    }
    let ingest = Arc::new(
        Ingest::new(
            routes,
            s.store.clone(),
            s.live.clone(),
            s.terminology.clone(),
            config.mllp.max_frame_bytes,
            stats,
            census_addr,
        )
        .with_adt_allow_from(config.adt_allow_from.clone())
        .with_adt_cert_names(config.adt_cert_names.clone())
        .with_tls(listener_tls(config)?),
    );
    let listener = tokio::net::TcpListener::bind(config.mllp.listen)
        .await
        .with_context(|| {
            format!(
                "binding the MLLP listener on {} (mllp.listen)",
                config.mllp.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(mllp::serve(listener, ingest, config.mllp.clone(), shutdown));
    Ok((addr, task))
}

/// The MLLP listener's TLS from `[tls]` (None when `tls.mllp` is off); its files are watched.
fn listener_tls(config: &Config) -> anyhow::Result<Option<mllp::ListenerTls>> {
    let t = &config.tls;
    if !t.mllp.is_on() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (t.cert_file.clone(), t.key_file.clone()) else {
        anyhow::bail!("tls.mllp is on but tls.cert_file or tls.key_file is missing");
    };
    let ca = t.ca_file.clone();
    let client_certs = t.mllp_client_certs;
    let mut files = vec![cert.clone(), key.clone()];
    files.extend(ca.clone());
    let reloadable = crate::tls::Reloadable::new(files, move || {
        crate::tls::server_config(&cert, &key, ca.as_deref(), client_certs)
    })
    .context("loading the MLLP listener's TLS certificate ([tls])")?;
    reloadable.watch(
        std::time::Duration::from_secs(t.reload_check_s),
        "mllp listener",
    );
    tracing::info!(mode = ?t.mllp, client_certs = ?t.mllp_client_certs, "mllp listener speaks TLS");
    Ok(Some(mllp::ListenerTls {
        config: reloadable,
        mode: t.mllp,
        client_certs,
    }))
}
