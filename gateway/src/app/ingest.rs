//! The ingest part: the live view, one device actor per configured device, and the transports
//! that feed them (serial lines, the MQTT subscriber, the MLLP listener).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use anyhow::Context as _;
use icu_drivers::mqtt::MqttSubscriber;
use icu_drivers::terminology::Terminology;
use tokio::sync::watch;

use super::alarms::Alarms;
use crate::alarm::DeviceClockConfig;
use crate::census::actor::CensusActor;
use crate::census::CensusReader;
use crate::clock::ClockState;
use crate::config::{Config, Protocol};
use crate::device::{AlarmPath, DeviceActor, Retire};
use crate::domain::Device;
use crate::live::LiveState;
use crate::metrics::{IngestStats, Transport};
use crate::mllp::{self, Ingest, MllpStats, Route};
use crate::mqtt::MqttRoute;
use crate::store::Store;
use crate::swap::Swap;

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
    /// The device actors and the route tables that lead to them; taken by the reloader.
    pub devices: Option<DeviceSet>,
}

/// What every transport shares.
struct Shared<'a> {
    config: &'a Config,
    terminology: &'a Arc<Terminology>,
    store: &'a Addr<Store>,
    live: &'a Arc<LiveState>,
    /// The ingest counters and the ACK-latency series of each transport.
    stats: &'a Arc<IngestStats>,
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
        stats: &stats,
    };
    let mut devices = DeviceSet {
        kit: DeviceKit {
            store: store.clone(),
            live: live.clone(),
            clock,
            census: census_reader,
            alarms: Some((alarms.addr.clone(), alarms.stats.clone())),
            device_clock: config.alarms.device_clock.clone(),
            stats: stats.clone(),
            terminology: terminology.clone(),
            shutdown: shutdown_rx.clone(),
        },
        running: BTreeMap::new(),
        mllp_routes: Arc::new(Swap::default()),
        mqtt_routes: Arc::new(Swap::default()),
    };
    for d in &config.devices {
        let running = devices.kit.start(d);
        devices.running.insert(d.id.clone(), running);
    }
    devices.publish_routes();
    let mqtt = match &config.mqtt {
        None => None,
        Some(_) => Some(start_mqtt(&shared, &devices.mqtt_routes, alarms)?),
    };
    let mllp_stats = Arc::new(MllpStats::default());
    let (mllp_addr, mllp_task) = start_mllp(
        &shared,
        &devices.mllp_routes,
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
        devices: Some(devices),
    })
}

/// What starting one device actor needs; kept so that a reload can start more.
pub(super) struct DeviceKit {
    store: Addr<Store>,
    live: Arc<LiveState>,
    clock: Arc<ClockState>,
    census: CensusReader,
    alarms: AlarmPath,
    /// `alarms.device_clock` as the running config has it.
    pub device_clock: DeviceClockConfig,
    stats: Arc<IngestStats>,
    terminology: Arc<Terminology>,
    /// The gateway's shutdown; each serial task also has its own stop.
    shutdown: watch::Receiver<bool>,
}

/// One configured device as it runs: its actor and, for a serial device, its port's task.
pub(super) struct RunningDevice {
    pub config: Device,
    pub addr: Addr<DeviceActor>,
    serial: Option<SerialTask>,
}

/// A serial device's port task and its own stop (a reload stops one device, not all).
struct SerialTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Every running device, and the route tables the MLLP listener and the MQTT subscriber find
/// them by. A reload changes the set and publishes new tables; connections keep going.
pub(super) struct DeviceSet {
    pub kit: DeviceKit,
    pub running: BTreeMap<String, RunningDevice>,
    pub mllp_routes: Arc<Swap<HashMap<String, Route>>>,
    pub mqtt_routes: Arc<Swap<HashMap<String, MqttRoute>>>,
}

impl DeviceKit {
    /// Starts one device's actor and, for a serial device, its port's task.
    pub fn start(&self, d: &Device) -> RunningDevice {
        let addr = DeviceActor::start(
            d.clone(),
            self.store.clone(),
            self.live.clone(),
            self.clock.clone(),
            self.census.clone(),
            self.alarms.clone(),
            self.device_clock.clone(),
            self.stats.clone(),
        );
        let serial = d.serial.as_ref().map(|settings| {
            let protocol = crate::serial_protocols::for_device(d, self.terminology.clone());
            let (stop, stop_rx) = watch::channel(false);
            // The gateway's shutdown stops this task too.
            let mut gateway_stop = self.shutdown.clone();
            let forward = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = gateway_stop.wait_for(|stopping| *stopping) => { let _ = forward.send(true); }
                    _ = forward.closed() => {}
                }
            });
            // Every log line of the serial task names the device and its bed.
            let span = tracing::info_span!("serial", device = %d.id, bed = %d.bed);
            let task = tokio::spawn(tracing::Instrument::instrument(
                crate::serial::run(
                    d.id.clone(),
                    settings.clone(),
                    d.silent_after,
                    protocol,
                    addr.clone(),
                    self.store.clone(),
                    stop_rx,
                ),
                span,
            ));
            SerialTask { stop, task }
        });
        RunningDevice {
            config: d.clone(),
            addr,
            serial,
        }
    }
}

impl RunningDevice {
    /// Stops the device: its serial task (if any) after the message it is handling is stored,
    /// then its actor, which ends its open alarms and stops once no transport holds it. The
    /// caller has already taken it out of the route tables.
    pub async fn retire(self) {
        if let Some(serial) = self.serial {
            let _ = serial.stop.send(true);
            // The port must be closed before a changed device opens it again.
            if tokio::time::timeout(std::time::Duration::from_secs(10), serial.task)
                .await
                .is_err()
            {
                tracing::error!(device = %self.config.id, "serial task did not stop within 10 s");
            }
        }
        let _ = self.addr.send(Retire).await;
    }
}

impl DeviceSet {
    /// Builds the route tables from the running devices and publishes them.
    pub fn publish_routes(&self) {
        let mut mllp = HashMap::new();
        let mut mqtt = HashMap::new();
        for r in self.running.values() {
            let d = &r.config;
            if let Some(m) = &d.match_id {
                mllp.insert(
                    m.clone(),
                    Route {
                        device_id: d.id.clone(),
                        bed: d.bed.clone(),
                        addr: r.addr.clone(),
                        allow_from: d.allow_from.clone(),
                    },
                );
            }
            if d.protocol == Protocol::Mqtt {
                mqtt.insert(
                    d.id.clone(),
                    crate::mqtt::MqttRoute {
                        bed: d.bed.clone(),
                        addr: r.addr.clone(),
                    },
                );
            }
        }
        self.mllp_routes.store(mllp);
        self.mqtt_routes.store(mqtt);
    }
}

/// The MQTT subscriber (`[mqtt]`), routing to the mqtt devices; the alarm topic publishes
/// through its client.
fn start_mqtt(
    s: &Shared<'_>,
    routes: &Arc<Swap<HashMap<String, MqttRoute>>>,
    alarms: &Alarms,
) -> anyhow::Result<MqttSubscriber> {
    let config = s.config;
    let mcfg = config
        .mqtt
        .as_ref()
        .context("mqtt started without [mqtt]")?;
    let router = Arc::new(crate::mqtt::MqttRouter {
        gateway_id: config.gateway_id.clone(),
        routes: routes.clone(),
        store: s.store.clone(),
        live: s.live.clone(),
        terminology: s.terminology.clone(),
        max_payload_bytes: mcfg.max_payload_bytes,
        holds: Default::default(),
        ack_latency: s.stats.ack_latency(Transport::Mqtt).clone(),
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
    routes: &Arc<Swap<HashMap<String, Route>>>,
    stats: Arc<MllpStats>,
    census_addr: Addr<CensusActor>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let config = s.config;
    let ingest = Arc::new(
        Ingest::new(
            routes.clone(),
            s.store.clone(),
            s.live.clone(),
            s.terminology.clone(),
            config.mllp.max_frame_bytes,
            stats,
            census_addr,
        )
        .with_waveforms(std::sync::Arc::new(config.waveforms.decoder()))
        .with_adt_allow_from(config.adt_allow_from.clone())
        .with_adt_cert_names(config.adt_cert_names.clone())
        .with_tls(listener_tls(config)?)
        .with_ack_latency(s.stats.ack_latency(Transport::Mllp).clone()),
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
