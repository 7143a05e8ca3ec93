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
use crate::metrics::Readiness;

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
            alarms: alarms.addr.clone(),
            alarm_stats: alarms.stats,
            limits: Arc::new(Mutex::new(alarms.limits)),
            events: alarms.events,
            started_us: now_us(),
            store: store.store.clone(),
            metrics_db: Arc::new(Mutex::new(metrics_db)),
            store_path: config.store.path.clone(),
            ingest: ingest.stats.clone(),
            readiness: readiness.clone(),
            auth: actix_web::web::Data::new(access),
            transport: transport(config),
            tls_expiry: cert_expiry_watch(config, alarms.addr.clone()),
        },
        config.http_limits,
        http_tls(config)?,
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

/// The page's TLS from `[tls]` (None when `tls.http` is off). The certificate files are
/// re-read when they change (`reload_check_s`) or on SIGHUP, like the MLLP listener's: new
/// connections get the new certificate, open ones keep theirs.
fn http_tls(config: &Config) -> anyhow::Result<Option<rustls::ServerConfig>> {
    let t = &config.tls;
    if !t.http.is_on() {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (t.cert_file.clone(), t.key_file.clone()) else {
        anyhow::bail!("tls.http is on but tls.cert_file or tls.key_file is missing");
    };
    let files = vec![cert.clone(), key.clone()];
    let reloadable = crate::tls::Reloadable::new(files, move || {
        crate::tls::server_config(&cert, &key, None, crate::tls::Mode::Off)
    })
    .context("loading the page's TLS certificate ([tls])")?;
    reloadable.watch(std::time::Duration::from_secs(t.reload_check_s), "https");
    Ok(Some(reloadable.following()))
}

/// Each interface's transport for `/api/status`: `tls`, `tls+plain` (optional) or `plain`.
fn transport(config: &Config) -> serde_json::Value {
    use crate::tls::Mode;
    let name = |m: Mode| match m {
        Mode::Off => "plain",
        Mode::Optional => "tls+plain",
        Mode::Required => "tls",
    };
    let t = &config.tls;
    serde_json::json!({
        "mllp": name(t.mllp),
        "mllp_client_certs": match t.mllp_client_certs {
            Mode::Off => "none",
            Mode::Optional => "checked when presented",
            Mode::Required => "required",
        },
        "http": name(t.http),
        "alarm_manager": config.alarm_manager.as_ref().map(|_| name(t.alarm_manager)),
    })
}

/// Watches the gateway certificate's expiry (at start, then hourly): the figure for `/metrics`,
/// and the `gateway:tls-cert-expiry` technical alarm for the biomed team from
/// `tls.expiry_warning_days` before (high priority once expired).
fn cert_expiry_watch(
    config: &Config,
    alarms: actix::Addr<crate::alarm::actor::AlarmActor>,
) -> Option<Arc<std::sync::atomic::AtomicI64>> {
    let cert = config.tls.cert_file.clone()?;
    let warn_s = i64::from(config.tls.expiry_warning_days) * 86_400;
    let left = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let figure = left.clone();
    actix::spawn(async move {
        let mut raised = false;
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let path = cert.clone();
            let read = tokio::task::spawn_blocking(move || crate::tls::expiry(&path)).await;
            let secs = match read.unwrap_or_else(|e| {
                Err(crate::tls::TlsError {
                    what: "certificate file",
                    path: cert.display().to_string(),
                    message: e.to_string(),
                })
            }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the gateway certificate's expiry");
                    continue;
                }
            };
            figure.store(secs, std::sync::atomic::Ordering::Relaxed);
            let due = secs < warn_s;
            if due || raised {
                let days = secs.div_euclid(86_400);
                let text = if secs < 0 {
                    format!("gateway TLS certificate {} has EXPIRED: devices and browsers refuse it; install a new one (tls.cert_file)", cert.display())
                } else {
                    format!("gateway TLS certificate {} expires in {days} days: renew it (tls.cert_file)", cert.display())
                };
                if due {
                    tracing::warn!(cert = %cert.display(), seconds_left = secs, "{text}");
                }
                let _ = alarms.try_send(crate::alarm::actor::Technical {
                    bed: crate::store::GATEWAY_SOURCE.into(),
                    device_id: crate::store::GATEWAY_SOURCE.into(),
                    condition: "gateway:tls-cert-expiry".into(),
                    text,
                    priority: if secs < 0 { "PH" } else { "PL" }.into(),
                    active: due,
                    time_us: now_us(),
                });
                raised = due;
            }
        }
    });
    Some(left)
}
