//! Wiring: starts every part of the gateway inside the running actix `System`.
//!
//! Owns: start-up order and shutdown. Order: store (creates the schema) and its outbox reader
//! ([`store`]) → bridge, if Kafka is configured ([`bridge`]) → ADT census → alarm engine and its
//! outputs ([`alarms`]) → live state, one device actor per configured device and the transports:
//! serial lines, MQTT, MLLP listener ([`ingest`]) → HTTP server ([`http`]) → `endpoints.json`.
//! Shutdown stops the listeners first, so no new message is accepted, then lets the store finish
//! what it holds before the System stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::Addr;
use anyhow::Context as _;
use icu_cloud_bridge::bridge::BridgeStats;
use icu_cloud_bridge::signing::{GatewayKey, SigningKeys};
use icu_drivers::terminology::Terminology;
use tokio::sync::watch;

use crate::audit::{Action, AuditEntry, AuditLog, TargetKind};
use crate::config::Config;
use crate::live::LiveState;
use crate::store::{SqliteOutbox, Store};

mod alarms;
mod audit_watch;
mod bridge;
mod http;
mod ingest;
mod keys;
mod reload;
mod service;
mod store;

pub use reload::{ReloadRefused, ReloadReport};

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
    /// The alarm engine (systemd's watchdog pings it, [`service`]).
    pub alarms: Addr<crate::alarm::actor::AlarmActor>,
    shutdown: watch::Sender<bool>,
    http: actix_web::dev::ServerHandle,
    mllp_task: tokio::task::JoinHandle<()>,
    mqtt: Option<icu_drivers::mqtt::MqttSubscriber>,
    readiness: Arc<crate::metrics::Readiness>,
    /// The audit trail (the stop is recorded in it).
    pub audit: Arc<AuditLog>,
    /// Re-reads the config file on request (SIGHUP); one reload at a time.
    reloader: tokio::sync::Mutex<reload::Reloader>,
}

impl Running {
    /// Re-reads the config file and applies it without a restart (see `app::reload`): devices
    /// start and stop, alarm rules and beds change, connections and the alarm path go on. A
    /// file that does not validate changes nothing.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadRefused> {
        self.reloader.lock().await.reload().await
    }

    /// Stops accepting input, then stops the HTTP server. The store commits what it holds.
    pub async fn shutdown(self) {
        self.readiness.set_listening(false);
        let _ = self.shutdown.send(true);
        let _ = self.mllp_task.await;
        if let Some(m) = self.mqtt {
            m.shutdown().await;
        }
        self.http.stop(true).await;
        let audit = self.audit.clone();
        let stopped = tokio::task::spawn_blocking(move || {
            audit.append(AuditEntry::new(Action::GatewayStop).target(TargetKind::Gateway, ""))
        })
        .await;
        if !matches!(stopped, Ok(Ok(_))) {
            tracing::error!("the audit trail could not record the stop");
        }
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
    if let Some(why) = crate::tls::too_open(path) {
        anyhow::bail!("refusing the signing key: {why}");
    }
    GatewayKey::load(path).with_context(|| format!("loading signing key {}", path.display()))
}

/// Loads the gateway key, or creates it (with its public key beside it) when there is none yet:
/// the audit trail is signed from the first start. Returns whether it was created.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<(GatewayKey, bool)> {
    if path.exists() {
        return Ok((load_key(path)?, false));
    }
    let key = GatewayKey::generate();
    let public = public_key_path(path);
    key.write(path, &public)
        .with_context(|| format!("creating signing key {}", path.display()))?;
    tracing::warn!(key = %path.display(), public = %public.display(), key_id = key.key_id(),
        "created the gateway's signing key (none existed): give the public key to the central data team");
    Ok((key, true))
}

/// Opens the audit trail and records the start (with the SHA-256 of the config file) and, when
/// it was just made, the key's creation. A trail that cannot be written does not stop the
/// gateway (alarms never wait for it); every audited action is then refused, and said so.
fn open_audit(
    config: &Config,
    keys: &Arc<SigningKeys>,
    created: bool,
) -> anyhow::Result<Arc<AuditLog>> {
    let key = keys.active();
    let clock = Arc::new(crate::clock::ClockState::new(config.clock));
    let audit = Arc::new(
        AuditLog::open(&config.store.path, keys.clone())
            .with_context(|| format!("opening the audit trail in {}", config.store.path.display()))?
            .with_clock(clock),
    );
    let mut entries = Vec::new();
    // A different key than the one that signed the last entry: the key was replaced (rotated)
    // while the gateway was stopped. Verification needs the old public key from now on.
    let last_key = match audit.last() {
        Ok(Some((seq, _))) => audit
            .read(seq, 1)
            .ok()
            .and_then(|r| r.into_iter().next())
            .map(|r| r.key_id),
        _ => None,
    };
    if let Some(old) = last_key.filter(|old| old != key.key_id()) {
        tracing::warn!(old_key_id = %old, key_id = key.key_id(), "the signing key changed since the last start (rotation)");
        entries.push(
            AuditEntry::new(Action::KeyRotated)
                .target(TargetKind::Key, key.key_id())
                .values(Some(old), Some(key.key_id().to_owned())),
        );
    }
    if created {
        entries.push(
            AuditEntry::new(Action::KeyCreated)
                .target(TargetKind::Key, key.key_id())
                .values(None, Some(config.key_file.display().to_string())),
        );
    }
    entries.push(
        AuditEntry::new(Action::GatewayStart)
            .target(TargetKind::Config, config.source_path.display().to_string())
            .values(None, Some(format!("sha256:{}", config.source_sha256))),
    );
    for e in entries {
        if let Err(e) = audit.append(e) {
            tracing::error!(error = %e, "the audit trail cannot be written: audited actions (logins, acknowledgements, limit changes) will be refused");
        }
    }
    Ok(audit)
}

/// Starts the gateway. Must be called inside a running actix `System`.
pub async fn start(config: Config, key: Option<GatewayKey>) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let terminology = Terminology::builtin();

    let stored = store::start_store(&config)?;
    let (key, key_created) = match key {
        Some(k) => (k, false),
        None => load_or_create_key(&config.key_file)?,
    };
    let keys = keys::signing_keys(&config.key_file, key)?;
    let audit = open_audit(&config, &keys, key_created)?;
    keys::watch(keys.clone(), audit.clone());
    let auth = crate::auth::Auth::open(&config.store.path, config.auth.clone())
        .with_context(|| format!("opening the accounts in {}", config.store.path.display()))?;
    let access =
        crate::http::guard::AuthState::new(Arc::new(auth), audit.clone(), config.tls.http.is_on());
    audit_watch::start(stored.stats.clone(), audit.clone());
    let bridge = match &config.kafka {
        None => {
            tracing::warn!("no [kafka] configured: readings are stored and wait in the outbox");
            None
        }
        Some(kafka) => Some(bridge::start_bridge(
            kafka,
            keys.clone(),
            &stored.outbox,
            &terminology,
            &stored.bridge_slot,
        )?),
    };

    let census = crate::census::Census::open(&config.store.path)
        .with_context(|| format!("opening the ADT census in {}", config.store.path.display()))?;
    let census_reader = census.reader();
    let census_addr =
        crate::census::actor::CensusActor::start(census, config.bed_map(), Some(audit.clone()));
    let census_for_reload = census_addr.clone();

    let alarms = alarms::start_alarms(&config, &stored.store, &terminology)?;
    let alarm_addr = alarms.addr.clone();
    let _ = stored.alarm_slot.set(alarms.addr.clone());
    let alarms_for_reload = alarms.addr.clone();

    let mut ingest = ingest::start_ingest(
        &config,
        terminology,
        &stored.store,
        census_reader.clone(),
        census_addr,
        &alarms,
    )
    .await?;

    // Alarm snippets: each stored alarm start gets its bed's curves around it.
    let snippet_stats = alarms.stats.clone();
    let snippets = crate::snippet::SnippetBuilder::start(
        ingest.live.clone(),
        stored.store.clone(),
        config.waveforms.clone(),
        snippet_stats.clone(),
    );
    alarm_addr
        .send(crate::alarm::actor::OnStoredStart(
            crate::snippet::listener(snippets, snippet_stats),
        ))
        .await
        .context("the alarm actor stopped before the snippet builder was attached")?;

    let http = http::start_http(
        &config,
        &stored,
        &bridge,
        census_reader,
        alarms,
        &ingest,
        access,
    )?;

    let endpoints = Endpoints {
        mllp: ingest.mllp_addr,
        http: http.addr,
    };
    let ep_path = config.data_dir.join("endpoints.json");
    std::fs::write(&ep_path, serde_json::to_vec_pretty(&endpoints)?)
        .with_context(|| format!("writing {}", ep_path.display()))?;
    http.readiness.set_listening(true);
    tracing::info!(mllp = %endpoints.mllp, http = %format!("http://{}/", endpoints.http), gateway_id = %config.gateway_id,
        devices = config.devices.len(), "gateway ready");

    let devices = ingest
        .devices
        .take()
        .context("the device set was taken before the reloader")?;
    let reloader = reload::Reloader::new(
        config,
        devices,
        ingest.live.clone(),
        alarms_for_reload,
        census_for_reload,
        audit.clone(),
    );
    Ok(Running {
        endpoints,
        live: ingest.live,
        outbox: stored.outbox,
        bridge,
        store: stored.store,
        alarms: alarm_addr,
        shutdown: ingest.shutdown,
        http: http.handle,
        mllp_task: ingest.mllp_task,
        mqtt: ingest.mqtt,
        readiness: http.readiness,
        audit,
        reloader: tokio::sync::Mutex::new(reloader),
    })
}

/// What ended [`wait_for_signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C or SIGTERM: stop.
    Stop,
    /// SIGHUP (`systemctl reload`): re-read the config.
    Reload,
}

/// The process signals the gateway answers, registered once (a SIGHUP that arrives during a
/// reload is kept for the next [`Signals::next`], not lost, and never kills the process).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Registers the handlers; call it inside the runtime, before the gateway is ready.
    pub fn register() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    /// Waits for Ctrl-C, SIGTERM or SIGHUP.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Signal::Stop,
                _ = recv(&mut self.term) => Signal::Stop,
                _ = recv(&mut self.hup) => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// Waits for Ctrl-C or SIGTERM (a SIGHUP is logged and ignored: only `run` reloads).
pub async fn wait_for_signal() {
    let mut signals = Signals::register();
    while signals.next().await == Signal::Reload {
        tracing::warn!("SIGHUP ignored: only `icu-gateway run` reloads its config");
    }
}

/// `icu-gateway run`: starts the gateway and runs until Ctrl-C or SIGTERM; SIGHUP reloads the
/// config.
pub fn run(config: Config) -> anyhow::Result<()> {
    let system = actix::System::new();
    system.block_on(async move {
        // Before anything can take long: from here on SIGHUP never ends the process.
        let mut signals = Signals::register();
        service::check_limits(&config);
        let running = start(config, None).await?;
        let ep = &running.endpoints;
        service::ready(
            running.store.clone(),
            running.alarms.clone(),
            ep.mllp,
            ep.http,
        );
        println!(
            "icu-gateway ready: mllp {} page http://{}/",
            running.endpoints.mllp, running.endpoints.http
        );
        while signals.next().await == Signal::Reload {
            // Refusals and results are logged and audited by the reload itself.
            service::reloaded(&running.reload().await);
        }
        tracing::info!("stopping");
        service::stopping();
        running.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
