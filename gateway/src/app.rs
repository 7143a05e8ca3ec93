//! Wiring: starts every part of the gateway inside the running actix `System`.
//!
//! Owns: start-up order and shutdown. Order: store (creates the schema) → outbox reader →
//! bridge (if Kafka is configured) → live state and one device actor per configured device →
//! MLLP listener → HTTP server → `endpoints.json`. Shutdown stops the listeners first, so no new
//! message is accepted, then lets the store finish what it holds before the System stops.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use actix::Addr;
use anyhow::Context as _;
use icu_cloud_bridge::bridge::{BridgeActor, BridgeStats, Wake};
use icu_cloud_bridge::signing::GatewayKey;
use icu_drivers::terminology::Terminology;
use tokio::sync::watch;

use crate::clock::{now_us, ClockState};
use crate::config::Config;
use crate::device::DeviceActor;
use crate::http::{self, HttpState};
use crate::live::LiveState;
use crate::mllp::{self, Ingest, MllpStats, Route};
use crate::store::{SqliteOutbox, Store, StoreStats};

/// Where a running gateway can be reached (also written to `<data_dir>/endpoints.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Endpoints {
    pub mllp: SocketAddr,
    pub http: SocketAddr,
}

/// A started gateway; dropping it does not stop it, call [`Running::shutdown`].
pub struct Running {
    pub endpoints: Endpoints,
    pub live: Arc<LiveState>,
    pub outbox: Arc<SqliteOutbox>,
    pub bridge: Option<Arc<BridgeStats>>,
    pub store: Addr<Store>,
    shutdown: watch::Sender<bool>,
    http: actix_web::dev::ServerHandle,
    mllp_task: tokio::task::JoinHandle<()>,
    mqtt: Option<icu_drivers::mqtt::MqttSubscriber>,
    readiness: Arc<crate::metrics::Readiness>,
}

impl Running {
    /// Stops accepting input, then stops the HTTP server. The store commits what it holds.
    pub async fn shutdown(self) {
        self.readiness.set_listening(false);
        let _ = self.shutdown.send(true);
        let _ = self.mllp_task.await;
        if let Some(m) = self.mqtt {
            m.shutdown().await;
        }
        self.http.stop(true).await;
        tracing::info!("gateway stopped accepting input");
    }
}

/// Path of the public key written beside a private key file.
pub fn public_key_path(private: &Path) -> PathBuf {
    private.with_extension("pub")
}

/// Loads the gateway key, telling the engineer how to make one if it is missing.
pub fn load_key(path: &Path) -> anyhow::Result<GatewayKey> {
    if !path.exists() {
        anyhow::bail!(
            "signing key {} does not exist; create it with `icu-gateway keygen --out {}`",
            path.display(),
            path.display()
        );
    }
    GatewayKey::load(path).with_context(|| format!("loading signing key {}", path.display()))
}

/// Starts the gateway. Must be called inside a running actix `System`.
pub async fn start(config: Config, key: Option<GatewayKey>) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let terminology = Terminology::builtin();

    // Bridge address is known only after the store exists (the bridge reads the store's outbox).
    let bridge_slot: Arc<OnceLock<Addr<BridgeActor>>> = Arc::new(OnceLock::new());
    let slot = bridge_slot.clone();
    let on_commit: crate::store::CommitListener = Box::new(move || {
        if let Some(b) = slot.get() {
            // A hint only: the bridge also polls, so a full mailbox loses nothing.
            let _ = b.try_send(Wake);
        }
    });
    let store_stats = Arc::new(StoreStats::default());
    // The store's disk-budget technical alarm goes through the alarm engine (started later),
    // so it reaches the page, MQTT and PCD-04 like any other technical alarm.
    let alarm_slot: Arc<OnceLock<Addr<crate::alarm::actor::AlarmActor>>> =
        Arc::new(OnceLock::new());
    let slot = alarm_slot.clone();
    let on_condition: crate::store::ConditionListener = Box::new(move |c| {
        let Some(alarms) = slot.get() else {
            return false;
        };
        alarms
            .try_send(crate::alarm::actor::Technical {
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
        store_stats.clone(),
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

    let bridge = match &config.kafka {
        None => {
            tracing::warn!("no [kafka] configured: readings are stored and wait in the outbox");
            None
        }
        Some(k) => {
            let key = match key {
                Some(k) => k,
                None => load_key(&config.key_file)?,
            };
            tracing::info!(key_id = key.key_id(), bootstrap = %k.brokers, topic = %k.topic_observations, "forwarding to kafka");
            let stats = BridgeStats::new();
            let cfg = k.clone();
            let actor =
                BridgeActor::new(cfg, outbox.clone(), key, terminology.clone(), stats.clone())
                    .context("starting the kafka bridge")?;
            let addr = actix::Actor::start(actor);
            let _ = bridge_slot.set(addr);
            Some(stats)
        }
    };

    let census = crate::census::Census::open(&config.store.path)
        .with_context(|| format!("opening the ADT census in {}", config.store.path.display()))?;
    let census_reader = census.reader();
    let census_addr = crate::census::actor::CensusActor::start(census, config.bed_map());

    // The alarm engine, with the clinicians' persisted limit overrides applied.
    let mut engine = crate::alarm::Engine::new(config.alarms.clone())
        .map_err(|p| anyhow::anyhow!("alarm rules: {p:?}"))?;
    let limits = crate::alarm::limits_store::LimitsStore::open(&config.store.path)
        .with_context(|| format!("opening alarm limits in {}", config.store.path.display()))?;
    for l in limits.all().context("reading persisted alarm limits")? {
        let change = crate::alarm::LimitChange {
            low: l.low,
            high: l.high,
            reason: l.reason.clone(),
            who: l.set_by.clone(),
            at_us: l.set_us,
        };
        // Checked against today's config: a persisted limit outside the hard bounds (the
        // bounds changed since) is not applied; the config default is in force instead.
        if let Err(e) = engine.set_bed_limits(&l.bed, l.mdc_code, &change) {
            tracing::error!(bed = %l.bed, mdc_code = l.mdc_code, error = %e, "persisted limit not applied: the config default is in force");
        }
    }
    let alarm_stats = Arc::new(crate::alarm::actor::AlarmPathStats::default());
    let (events_tx, _) = tokio::sync::broadcast::channel::<String>(1024);
    let mut alarm_outputs: Vec<crate::alarm::actor::AlarmListener> = Vec::new();
    // Outputs watched for the `gateway:alarm-output` technical alarm.
    let mut watched: Vec<crate::alarm::actor::WatchedOutput> = Vec::new();
    let event_stream = Arc::new(crate::http::EventStreamHealth::default());
    {
        // The page (server-sent events): never blocks; a slow page only lags.
        let tx = events_tx.clone();
        alarm_outputs.push(Box::new(move |a| {
            let _ = tx.send(crate::alarm::actor::alarm_json(a).to_string());
        }));
        let tx = events_tx.clone();
        let health = event_stream.clone();
        let required = config.alarms.outputs.page_clients_required;
        watched.push(crate::alarm::actor::WatchedOutput {
            key: "page-events",
            name: "page event stream".into(),
            probe: Box::new(move || health.failing(tx.receiver_count(), required, now_us())),
        });
    }
    let mqtt_alarm_client: Arc<std::sync::OnceLock<icu_drivers::mqtt::rumqttc::AsyncClient>> =
        Arc::new(std::sync::OnceLock::new());
    let mqtt_connected: Arc<OnceLock<Arc<std::sync::atomic::AtomicBool>>> =
        Arc::new(OnceLock::new());
    if let Some(m) = &config.mqtt {
        let flag = mqtt_connected.clone();
        let broker = format!("{}:{}", m.broker_host, m.broker_port);
        watched.push(crate::alarm::actor::WatchedOutput {
            key: "mqtt",
            name: format!("mqtt alarm broker {broker}"),
            probe: Box::new(move || match flag.get() {
                Some(f) if f.load(std::sync::atomic::Ordering::Relaxed) => None,
                Some(_) => Some("not connected to the broker".into()),
                None => Some("mqtt not started".into()),
            }),
        });
    }
    {
        // The MQTT alarm topic for nurse call and pagers (when [mqtt] is configured).
        let client = mqtt_alarm_client.clone();
        let gateway_id = config.gateway_id.clone();
        alarm_outputs.push(Box::new(move |a| {
            if let Some(c) = client.get() {
                let topic = format!("icu/{gateway_id}/alarms/{}", a.bed);
                let payload = crate::alarm::actor::alarm_json(a).to_string();
                if let Err(e) = c.try_publish(
                    topic,
                    icu_drivers::mqtt::rumqttc::QoS::AtLeastOnce,
                    false,
                    payload,
                ) {
                    tracing::warn!(error = %e, "alarm not published on mqtt (queue full or disconnected)");
                }
            }
        }));
    }
    if let Some(am) = &config.alarm_manager {
        let (target, receiving_app) = (&am.mllp, &am.receiving_application);
        // IHE PCD-04 to the alarm manager: a bounded queue, never waited on by the alarm path.
        use icu_drivers::hl7::{MetricRow, Pcd04Context};
        let base = Pcd04Context {
            sending_app: format!("ICU_GW^{}", config.gateway_id),
            receiving_app: receiving_app.clone(),
            ..Default::default()
        };
        let (sender, pcd04_stats) = crate::alarm::pcd04_out::Pcd04Sender::start(
            target.clone(),
            base,
            1024,
            crate::alarm::pcd04_out::RetryPolicy::default(),
        );
        watched.push(crate::alarm::actor::WatchedOutput {
            key: "pcd04",
            name: format!("pcd04 alarm manager {target}"),
            probe: Box::new(move || {
                let s = pcd04_stats.snapshot();
                (!s.connected).then(|| s.last_error.unwrap_or_else(|| "not connected".into()))
            }),
        });
        let locations: HashMap<String, String> = config
            .beds
            .iter()
            .map(|b| {
                (
                    b.id.clone(),
                    b.adt_location.clone().unwrap_or_else(|| b.id.clone()),
                )
            })
            .collect();
        let term = terminology.clone();
        tracing::info!(%target, "pcd-04 alarm output enabled");
        alarm_outputs.push(Box::new(move |a| {
            let metric = term.by_mdc(a.mdc_code).map(|t| MetricRow {
                mdc_code: t.mdc_code,
                refid: t.refid.clone(),
                value: None,
                unit_code: t.unit_mdc_code,
                unit_refid: String::new(),
                limits: None,
                containment: None,
            });
            let ctx = Pcd04Context {
                patient_id: (!a.patient_id.is_empty()).then(|| a.patient_id.clone()),
                bed_location: locations.get(&a.bed).cloned(),
                equipment_id: Some(a.device_id.clone()),
                metric,
                ..Default::default()
            };
            if sender.try_send(a.clone(), ctx).is_err() {
                tracing::error!(alarm_id = %a.alarm_id, "pcd-04 queue full: alarm not sent to the alarm manager");
            }
        }));
    }
    let alarm_addr = crate::alarm::actor::AlarmActor::start(
        engine,
        store.clone(),
        alarm_stats.clone(),
        alarm_outputs,
        watched,
    );
    let _ = alarm_slot.set(alarm_addr.clone());

    let live = Arc::new(
        LiveState::new(&config.beds, &config.devices)
            .with_clock_settle_s(config.alarms.device_clock.settle_s),
    );
    let ingest_stats = Arc::new(crate::metrics::IngestStats::default());
    let clock = Arc::new(ClockState::new(config.clock));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut routes = HashMap::new();
    let mut device_addrs = HashMap::new();
    for d in &config.devices {
        let addr = DeviceActor::start(
            d.clone(),
            store.clone(),
            live.clone(),
            clock.clone(),
            census_reader.clone(),
            Some((alarm_addr.clone(), alarm_stats.clone())),
            config.alarms.device_clock.clone(),
            ingest_stats.clone(),
        );
        device_addrs.insert(d.id.clone(), addr.clone());
        if let Some(m) = &d.match_id {
            routes.insert(
                m.clone(),
                Route {
                    device_id: d.id.clone(),
                    addr: addr.clone(),
                    allow_from: d.allow_from.clone(),
                },
            );
        }
        if let Some(settings) = &d.serial {
            let protocol = crate::serial_protocols::for_device(d, terminology.clone());
            tokio::spawn(crate::serial::run(
                d.id.clone(),
                settings.clone(),
                d.silent_after,
                protocol,
                addr,
                store.clone(),
                shutdown_rx.clone(),
            ));
        }
    }

    let mqtt = match &config.mqtt {
        None => None,
        Some(mcfg) => {
            let routes: HashMap<String, crate::mqtt::MqttRoute> = config
                .devices
                .iter()
                .filter(|d| d.protocol == crate::config::Protocol::Mqtt)
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
                store: store.clone(),
                live: live.clone(),
                terminology: terminology.clone(),
                max_payload_bytes: mcfg.max_payload_bytes,
                holds: Default::default(),
            });
            let subscriber = icu_drivers::mqtt::MqttSubscriber::start_pipelined(
                mcfg,
                crate::mqtt::MAX_IN_FLIGHT,
                move |msg| router.clone().dispatch(msg),
            )
            .map_err(|e| anyhow::anyhow!("mqtt: {e:?}"))?;
            let _ = mqtt_alarm_client.set(subscriber.client().clone());
            let _ = mqtt_connected.set(subscriber.connected_flag());
            tracing::info!(broker = %format!("{}:{}", mcfg.broker_host, mcfg.broker_port),
                filter = %icu_drivers::mqtt::subscription_filter(&config.gateway_id), "mqtt subscriber started");
            Some(subscriber)
        }
    };

    let mllp_stats = Arc::new(MllpStats::default());
    let ingest = Arc::new(
        Ingest::new(
            routes,
            store.clone(),
            live.clone(),
            terminology,
            config.mllp.max_frame_bytes,
            mllp_stats.clone(),
            census_addr,
        )
        .with_adt_allow_from(config.adt_allow_from.clone()),
    );
    let mllp_listener = tokio::net::TcpListener::bind(config.mllp.listen)
        .await
        .with_context(|| {
            format!(
                "binding the MLLP listener on {} (mllp.listen)",
                config.mllp.listen
            )
        })?;
    let mllp_addr = mllp_listener.local_addr()?;
    let mllp_task = tokio::spawn(mllp::serve(
        mllp_listener,
        ingest,
        config.mllp.clone(),
        shutdown_rx,
    ));

    let http_listener = std::net::TcpListener::bind(config.http_listen).with_context(|| {
        format!(
            "binding the HTTP listener on {} (http.listen)",
            config.http_listen
        )
    })?;
    let http_addr = http_listener.local_addr()?;
    // `/metrics` and `/readyz` read through a connection of their own, not the bridge's.
    let metrics_db =
        crate::store::ReaderDb::open(&config.store.path, config.store.synchronous_full)
            .with_context(|| {
                format!(
                    "opening the metrics reader on {}",
                    config.store.path.display()
                )
            })?;
    let readiness = Arc::new(crate::metrics::Readiness::default());
    let server = http::start(
        http_listener,
        HttpState {
            gateway_id: config.gateway_id.clone(),
            live: live.clone(),
            outbox: outbox.clone(),
            event_stream,
            store_stats,
            mllp_stats,
            bridge: bridge.clone(),
            kafka_bootstrap: config.kafka.as_ref().map(|k| k.brokers.clone()),
            census: census_reader,
            mqtt: mqtt.as_ref().map(|m| m.counters()),
            alarms: alarm_addr,
            alarm_stats,
            limits: Arc::new(std::sync::Mutex::new(limits)),
            events: events_tx,
            started_us: now_us(),
            store: store.clone(),
            metrics_db: Arc::new(std::sync::Mutex::new(metrics_db)),
            store_path: config.store.path.clone(),
            ingest: ingest_stats,
            forward_rates: bridge
                .as_ref()
                .map(|b| crate::metrics::ForwardRates::start(b.clone())),
            readiness: readiness.clone(),
        },
        config.http_limits,
    )?;
    let http_handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "http server failed");
        }
    });

    let endpoints = Endpoints {
        mllp: mllp_addr,
        http: http_addr,
    };
    let ep_path = config.data_dir.join("endpoints.json");
    std::fs::write(&ep_path, serde_json::to_vec_pretty(&endpoints)?)
        .with_context(|| format!("writing {}", ep_path.display()))?;
    readiness.set_listening(true);
    tracing::info!(mllp = %mllp_addr, http = %format!("http://{http_addr}/"), gateway_id = %config.gateway_id,
        devices = config.devices.len(), "gateway ready");

    Ok(Running {
        endpoints,
        live,
        outbox,
        bridge,
        store,
        shutdown: shutdown_tx,
        http: http_handle,
        mllp_task,
        mqtt,
        readiness,
    })
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `icu-gateway run`: starts the gateway and runs until a signal.
pub fn run(config: Config) -> anyhow::Result<()> {
    let system = actix::System::new();
    system.block_on(async move {
        let running = start(config, None).await?;
        println!(
            "icu-gateway ready: mllp {} page http://{}/",
            running.endpoints.mllp, running.endpoints.http
        );
        wait_for_signal().await;
        tracing::info!("stopping");
        running.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
