//! The alarms part: the alarm engine with the clinicians' persisted limits, and its outputs
//! (the page's event stream, the MQTT alarm topic, PCD-04 to the alarm manager), each watched
//! for the `gateway:alarm-output` technical alarm.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix::Addr;
use anyhow::Context as _;
use icu_drivers::mqtt::rumqttc::{AsyncClient, QoS};
use icu_drivers::terminology::Terminology;
use tokio::sync::broadcast;

use crate::alarm::actor::{alarm_json, AlarmActor, AlarmListener, AlarmPathStats, WatchedOutput};
use crate::alarm::limits_store::LimitsStore;
use crate::alarm::pcd04_out::AlarmManagerConfig;
use crate::clock::now_us;
use crate::config::Config;
use crate::http::EventStreamHealth;
use crate::store::Store;

/// The running alarm engine and what the other parts use of it.
pub(super) struct Alarms {
    pub addr: Addr<AlarmActor>,
    pub stats: Arc<AlarmPathStats>,
    /// The persisted clinician limits (the API changes them).
    pub limits: LimitsStore,
    /// The page's server-sent events.
    pub events: broadcast::Sender<String>,
    pub event_stream: Arc<EventStreamHealth>,
    /// Set when the MQTT subscriber runs: the alarm topic publishes through its client.
    pub mqtt_client: Arc<OnceLock<AsyncClient>>,
    /// Set when the MQTT subscriber runs: whether it is connected (a watched output).
    pub mqtt_connected: Arc<OnceLock<Arc<AtomicBool>>>,
}

/// Outputs of the alarm engine and the probes of those that are watched.
#[derive(Default)]
struct Outputs {
    listeners: Vec<AlarmListener>,
    watched: Vec<WatchedOutput>,
}

/// Starts the alarm engine with its outputs; it sends alarm state changes to `store`.
pub(super) fn start_alarms(
    config: &Config,
    store: &Addr<Store>,
    terminology: &Arc<Terminology>,
) -> anyhow::Result<Alarms> {
    let (engine, limits) = engine_with_persisted_limits(config)?;
    let stats = Arc::new(AlarmPathStats::default());
    let (events, _) = broadcast::channel::<String>(1024);
    let event_stream = Arc::new(EventStreamHealth::default());
    let mqtt_client: Arc<OnceLock<AsyncClient>> = Arc::new(OnceLock::new());
    let mqtt_connected: Arc<OnceLock<Arc<AtomicBool>>> = Arc::new(OnceLock::new());

    let mut outputs = Outputs::default();
    page_output(config, &events, &event_stream, &mut outputs);
    mqtt_output(config, &mqtt_client, &mqtt_connected, &mut outputs);
    if let Some(am) = &config.alarm_manager {
        pcd04_output(config, am, terminology, &mut outputs)?;
    }
    let addr = AlarmActor::start(
        engine,
        store.clone(),
        stats.clone(),
        outputs.listeners,
        outputs.watched,
    );
    Ok(Alarms {
        addr,
        stats,
        limits,
        events,
        event_stream,
        mqtt_client,
        mqtt_connected,
    })
}

/// The alarm engine, with the clinicians' persisted limit overrides applied.
fn engine_with_persisted_limits(
    config: &Config,
) -> anyhow::Result<(crate::alarm::Engine, LimitsStore)> {
    let mut engine = crate::alarm::Engine::new(config.alarms.clone())
        .map_err(|p| anyhow::anyhow!("alarm rules: {p:?}"))?;
    let limits = LimitsStore::open(&config.store.path)
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
    Ok((engine, limits))
}

/// The page (server-sent events): never blocks; a slow page only lags.
fn page_output(
    config: &Config,
    events: &broadcast::Sender<String>,
    health: &Arc<EventStreamHealth>,
    outputs: &mut Outputs,
) {
    let tx = events.clone();
    outputs.listeners.push(Box::new(move |a| {
        let _ = tx.send(alarm_json(a).to_string());
    }));
    let tx = events.clone();
    let health = health.clone();
    let required = config.alarms.outputs.page_clients_required;
    outputs.watched.push(WatchedOutput {
        key: "page-events",
        name: "page event stream".into(),
        probe: Box::new(move || health.failing(tx.receiver_count(), required, now_us())),
    });
}

/// The MQTT alarm topic for nurse call and pagers (when `[mqtt]` is configured): publishes
/// through the subscriber's client once it runs.
fn mqtt_output(
    config: &Config,
    client: &Arc<OnceLock<AsyncClient>>,
    connected: &Arc<OnceLock<Arc<AtomicBool>>>,
    outputs: &mut Outputs,
) {
    if let Some(m) = &config.mqtt {
        let flag = connected.clone();
        let broker = format!("{}:{}", m.broker_host, m.broker_port);
        outputs.watched.push(WatchedOutput {
            key: "mqtt",
            name: format!("mqtt alarm broker {broker}"),
            probe: Box::new(move || match flag.get() {
                Some(f) if f.load(Ordering::Relaxed) => None,
                Some(_) => Some("not connected to the broker".into()),
                None => Some("mqtt not started".into()),
            }),
        });
    }
    let client = client.clone();
    let gateway_id = config.gateway_id.clone();
    outputs.listeners.push(Box::new(move |a| {
        if let Some(c) = client.get() {
            let topic = format!("icu/{gateway_id}/alarms/{}", a.bed);
            let payload = alarm_json(a).to_string();
            if let Err(e) = c.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                tracing::warn!(error = %e, "alarm not published on mqtt (queue full or disconnected)");
            }
        }
    }));
}

/// IHE PCD-04 to the alarm manager: a bounded queue, never waited on by the alarm path.
fn pcd04_output(
    config: &Config,
    am: &AlarmManagerConfig,
    terminology: &Arc<Terminology>,
    outputs: &mut Outputs,
) -> anyhow::Result<()> {
    use icu_drivers::hl7::{MetricRow, Pcd04Context};
    let target = &am.mllp;
    let base = Pcd04Context {
        sending_app: format!("ICU_GW^{}", config.gateway_id),
        receiving_app: am.receiving_application.clone(),
        ..Default::default()
    };
    let (sender, pcd04_stats) = crate::alarm::pcd04_out::Pcd04Sender::start_tls(
        target.clone(),
        base,
        1024,
        crate::alarm::pcd04_out::RetryPolicy::default(),
        alarm_manager_tls(config)?,
    );
    outputs.watched.push(WatchedOutput {
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
    outputs.listeners.push(Box::new(move |a| {
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
    Ok(())
}

/// TLS to the alarm manager (`tls.alarm_manager = "required"`): trusts `tls.ca_file` and
/// presents the gateway's certificate when one is configured (mutual TLS).
fn alarm_manager_tls(config: &Config) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let t = &config.tls;
    if !t.alarm_manager.is_on() {
        return Ok(None);
    }
    let Some(ca) = &t.ca_file else {
        anyhow::bail!("tls.alarm_manager is on but tls.ca_file is missing");
    };
    let identity = t.cert_file.as_deref().zip(t.key_file.as_deref());
    let cfg = crate::tls::client_config(ca, identity)
        .context("loading TLS for the alarm manager ([tls])")?;
    Ok(Some(Arc::new(cfg)))
}
