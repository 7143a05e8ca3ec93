//! The thin MQTT transport: one rumqttc connection, manual acknowledgements, reconnection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ClientError, Event, EventLoop, MqttOptions, Packet, Publish, QoS, Request,
    Subscribe, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::codec::{encode_payload, MqttBatch};
use super::config::{MqttConfig, MqttConfigError, MqttTls};
use super::tls::{self, MqttSetupError};
use super::topic::{subscription_filter, ObsTopic};

/// First wait after a failed connection attempt; doubles up to `reconnect_max_backoff_ms`.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Capacity of rumqttc's request channel (acks and subscriptions to the event loop).
const REQUEST_CHANNEL: usize = 64;

/// Room for the topic and the MQTT header above `max_payload_bytes` in one packet.
const PACKET_OVERHEAD: usize = 64 * 1024;

/// One received PUBLISH, as handed to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttMessage {
    pub topic: String,
    pub payload: Bytes,
    /// The MQTT packet id (0 for QoS 0).
    pub pkid: u16,
    /// Set by the broker on a redelivery (the gateway had not acknowledged it).
    pub dup: bool,
    /// The delivery QoS (0, 1 or 2; 2 is downgraded to 1 by the subscription).
    pub qos: u8,
}

/// What became of a message; decides whether the transport acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Durably stored: acknowledged.
    Stored,
    /// Refused (bad payload, unknown device) and kept as a dead letter: acknowledged, so the
    /// broker does not resend it; counted in `rejected`.
    Rejected(String),
    /// Could not be stored (e.g. the store failed): NOT acknowledged; the broker resends it after
    /// the next reconnection, and not before (a full in-flight window of such messages stops
    /// the deliveries). Counted in `store_failures`.
    NotStored(String),
}

/// The acknowledgement handle of one delivery. Complete it once the message is durably stored
/// (or rejected); dropping it unused counts as [`Disposition::NotStored`].
#[derive(Debug)]
pub struct AckHandle {
    tx: oneshot::Sender<Disposition>,
}

impl AckHandle {
    /// Report what became of the message; the transport acknowledges it (in arrival order) when
    /// `disposition` is `Stored` or `Rejected`.
    pub fn complete(self, disposition: Disposition) {
        // The transport may have shut down: nothing left to acknowledge then.
        let _ = self.tx.send(disposition);
    }
}

/// A message and the handle that acknowledges it.
#[derive(Debug)]
pub struct Delivery {
    pub message: MqttMessage,
    pub ack: AckHandle,
}

/// Counters of one subscriber; read them with `load(Ordering::Relaxed)` or [`Self::snapshot`].
#[derive(Debug, Default)]
pub struct MqttCounters {
    /// PUBLISH packets received (redeliveries included).
    pub messages: AtomicU64,
    /// PUBACKs handed to the connection (QoS 1 messages Stored or Rejected).
    pub acked: AtomicU64,
    /// Messages the caller rejected (also acknowledged).
    pub rejected: AtomicU64,
    /// Messages the caller could not store (not acknowledged; redelivered later).
    pub store_failures: AtomicU64,
    /// Acknowledgements not sent because the connection that carried the message is gone (the
    /// broker redelivers it on the new connection, which is acknowledged instead).
    pub stale_acks: AtomicU64,
    /// SUBACKs received (one per connection once subscribed).
    pub subscribed: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts and dropped connections (all kinds, the two below included).
    pub connection_errors: AtomicU64,
    /// Connection attempts that failed in the TLS handshake (untrusted, expired or misnamed
    /// certificate, handshake refused).
    pub tls_failures: AtomicU64,
    /// Connection attempts the broker refused for their username or password.
    pub auth_failures: AtomicU64,
    /// The connection state and the last error (see [`Self::connection`]).
    link: Mutex<MqttLink>,
}

/// The state of the broker connection, for `/api/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MqttLink {
    /// `connecting` (before the first answer), `connected`, `tls_failed`, `auth_failed`,
    /// `refused` (another CONNACK refusal) or `disconnected` (network).
    pub state: &'static str,
    /// The last connection error with the setting to fix; kept after a reconnection.
    pub last_error: Option<String>,
}

impl Default for MqttLink {
    fn default() -> Self {
        Self {
            state: "connecting",
            last_error: None,
        }
    }
}

/// A copy of [`MqttCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttCountersSnapshot {
    pub messages: u64,
    pub acked: u64,
    pub rejected: u64,
    pub store_failures: u64,
    pub stale_acks: u64,
    pub subscribed: u64,
    pub reconnects: u64,
    pub connection_errors: u64,
    pub tls_failures: u64,
    pub auth_failures: u64,
}

impl MqttCounters {
    pub fn snapshot(&self) -> MqttCountersSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MqttCountersSnapshot {
            messages: l(&self.messages),
            acked: l(&self.acked),
            rejected: l(&self.rejected),
            store_failures: l(&self.store_failures),
            stale_acks: l(&self.stale_acks),
            subscribed: l(&self.subscribed),
            reconnects: l(&self.reconnects),
            connection_errors: l(&self.connection_errors),
            tls_failures: l(&self.tls_failures),
            auth_failures: l(&self.auth_failures),
        }
    }

    /// The connection state and the last error.
    pub fn connection(&self) -> MqttLink {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_link(&self, state: &'static str, error: Option<String>) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        link.state = state;
        if error.is_some() {
            link.last_error = error;
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A received message waiting for its disposition, in arrival order.
struct PendingAck {
    publish: Publish,
    generation: u64,
    rx: oneshot::Receiver<Disposition>,
}

/// The gateway's MQTT subscriber. Needs a tokio runtime; stops on [`Self::shutdown`] or drop.
#[derive(Debug)]
pub struct MqttSubscriber {
    client: AsyncClient,
    counters: Arc<MqttCounters>,
    connected: Arc<AtomicBool>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The rumqttc options of a validated config: manual acks, persistent session, packet bound,
/// TLS (`tls = "required"`: the CA bundle and optional client certificate read now) and the
/// credentials (the password read now from `password_file` or `password_env`).
pub fn mqtt_options(config: &MqttConfig) -> Result<MqttOptions, MqttSetupError> {
    let mut opts = MqttOptions::new(
        config.client_id(),
        config.broker_host.clone(),
        config.broker_port,
    );
    opts.set_keep_alive(config.keep_alive())
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(
            config.max_payload_bytes.saturating_add(PACKET_OVERHEAD),
            config.max_payload_bytes.saturating_add(PACKET_OVERHEAD),
        );
    if config.tls == MqttTls::Required {
        let ca = config.ca_file.as_deref().ok_or_else(|| MqttSetupError {
            field: "ca_file",
            message: "is required with tls = \"required\"".into(),
        })?;
        let client = match (&config.client_cert_file, &config.client_key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let tls = tls::client_config(ca, client)?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    }
    if let Some(user) = &config.username {
        let password = match (&config.password_file, &config.password_env) {
            (Some(file), _) => tls::read_password_file("password_file", file)?,
            (None, Some(name)) => tls::read_password_env("password_env", name)?,
            (None, None) => String::new(),
        };
        opts.set_credentials(user.clone(), password);
    }
    Ok(opts)
}

impl MqttSubscriber {
    /// Connects (in the background) and subscribes to this gateway's observation topics.
    /// Deliveries arrive in order on the returned channel (`capacity` deep); the transport
    /// acknowledges each, in arrival order, once its [`AckHandle`] is completed with `Stored` or
    /// `Rejected`.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns its tasks there).
    pub fn start(
        config: &MqttConfig,
        capacity: usize,
    ) -> Result<(MqttSubscriber, mpsc::Receiver<Delivery>), MqttConfigError> {
        config.validate()?;
        let options = mqtt_options(config).map_err(|e| MqttConfigError {
            problems: vec![e.to_string()],
        })?;
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL);
        let counters = Arc::new(MqttCounters::default());
        let connected = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let cancel = CancellationToken::new();
        let (deliveries_tx, deliveries_rx) = mpsc::channel(capacity.max(1));
        // Unbounded, yet bounded in practice: QoS 1 messages stay unacknowledged until the
        // caller completes them, so the broker's in-flight window (mosquitto:
        // max_inflight_messages) bounds this queue. It must never block the event loop, which
        // is what sends the acknowledgements this queue waits for.
        let (acks_tx, acks_rx) = mpsc::unbounded_channel();

        let event_loop = EventLoopTask {
            eventloop,
            filter: subscription_filter(&config.gateway_id),
            deliveries: deliveries_tx,
            acks: acks_tx,
            counters: counters.clone(),
            connected: connected.clone(),
            generation: generation.clone(),
            max_backoff: config.reconnect_max_backoff(),
            cancel: cancel.clone(),
            host: config.broker_host.clone(),
        };
        let acker = AckTask {
            client: client.clone(),
            acks: acks_rx,
            counters: counters.clone(),
            generation,
        };
        let tasks = vec![tokio::spawn(event_loop.run()), tokio::spawn(acker.run())];
        Ok((
            MqttSubscriber {
                client,
                counters,
                connected,
                cancel,
                tasks,
            },
            deliveries_rx,
        ))
    }

    /// As [`Self::start`], with `handler` called for each message in arrival order, one at a
    /// time; the message is acknowledged after the handler's future resolves to `Stored` or
    /// `Rejected`. One message is handled at a time: see [`Self::start_pipelined`] to overlap
    /// them (and so let the store commit many in one transaction).
    pub fn start_with_handler<F, Fut>(
        config: &MqttConfig,
        mut handler: F,
    ) -> Result<MqttSubscriber, MqttConfigError>
    where
        F: FnMut(MqttMessage) -> Fut + Send + 'static,
        Fut: Future<Output = Disposition> + Send + 'static,
    {
        Self::start_pipelined(config, 1, move |message| {
            std::future::ready(handler(message))
        })
    }

    /// As [`Self::start`], with each message handled in two stages:
    ///
    /// 1. `handler(message)` and the future it returns run one message at a time, in arrival
    ///    order: the place to hand the message on in order (e.g. into a device's mailbox), so
    ///    whatever follows sees the messages in the order the broker sent them;
    /// 2. the future that stage 1 resolves to (e.g. waiting for the commit) runs concurrently
    ///    with the stage 2 of up to `max_in_flight - 1` earlier messages.
    ///
    /// A message is acknowledged after its stage 2 resolves to `Stored` or `Rejected`, and
    /// PUBACKs still leave in arrival order (a completed message waits for the earlier ones),
    /// so a crash never leaves an acknowledged message unstored. Stage 1 waiting (or
    /// `max_in_flight` unfinished messages) stops the reading: back-pressure reaches the
    /// broker, whose in-flight window bounds what is received but not yet acknowledged.
    pub fn start_pipelined<F, Fut, Done>(
        config: &MqttConfig,
        max_in_flight: usize,
        mut handler: F,
    ) -> Result<MqttSubscriber, MqttConfigError>
    where
        F: FnMut(MqttMessage) -> Fut + Send + 'static,
        Fut: Future<Output = Done> + Send + 'static,
        Done: Future<Output = Disposition> + Send + 'static,
    {
        let max_in_flight = max_in_flight.max(1);
        let (mut subscriber, mut rx) = Self::start(config, 1)?;
        subscriber.tasks.push(tokio::spawn(async move {
            // Dropped (and so aborted) with this task when the subscriber stops.
            let mut in_flight = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                    delivery = rx.recv(), if in_flight.len() < max_in_flight => {
                        let Some(Delivery { message, ack }) = delivery else { break };
                        let done = handler(message).await;
                        in_flight.spawn(async move { ack.complete(done.await) });
                    }
                }
            }
            // The deliveries ended (the event loop stopped): let the last ones finish.
            while in_flight.join_next().await.is_some() {}
        }));
        Ok(subscriber)
    }

    /// The counters (shared; they keep counting until shutdown).
    pub fn counters(&self) -> Arc<MqttCounters> {
        self.counters.clone()
    }

    /// Whether the broker connection is up (a CONNACK was received and no error since).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The connection flag itself, for a watcher that outlives borrows of the subscriber (the
    /// gateway's alarm-output technical alarm).
    pub fn connected_flag(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// The rumqttc client of this connection (e.g. to publish alarms on the same session).
    pub fn client(&self) -> &AsyncClient {
        &self.client
    }

    /// Disconnects and stops the background tasks. Messages not yet acknowledged stay with the
    /// broker, which redelivers them to the next session with the same client id.
    pub async fn shutdown(mut self) {
        let _ = self.client.try_disconnect();
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for MqttSubscriber {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct EventLoopTask {
    eventloop: EventLoop,
    filter: String,
    deliveries: mpsc::Sender<Delivery>,
    acks: mpsc::UnboundedSender<PendingAck>,
    counters: Arc<MqttCounters>,
    connected: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    max_backoff: Duration,
    cancel: CancellationToken,
    host: String,
}

impl EventLoopTask {
    async fn run(mut self) {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => return,
                event = self.eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    if generation > 1 {
                        bump(&self.counters.reconnects);
                    }
                    self.connected.store(true, Ordering::Relaxed);
                    self.counters.set_link("connected", None);
                    backoff = INITIAL_BACKOFF;
                    tracing::info!(
                        filter = %self.filter,
                        session_present = connack.session_present,
                        "mqtt connected, subscribing"
                    );
                    // Every time: the broker may have lost the session. Queued on the event
                    // loop itself (sent before any other request) so this task never waits on
                    // the request channel.
                    self.eventloop
                        .pending
                        .push_front(Request::Subscribe(Subscribe::new(
                            self.filter.clone(),
                            QoS::AtLeastOnce,
                        )));
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    bump(&self.counters.messages);
                    let (tx, rx) = oneshot::channel();
                    let message = MqttMessage {
                        topic: publish.topic.clone(),
                        payload: publish.payload.clone(),
                        pkid: publish.pkid,
                        dup: publish.dup,
                        qos: publish.qos as u8,
                    };
                    let pending = PendingAck {
                        publish,
                        generation: self.generation.load(Ordering::SeqCst),
                        rx,
                    };
                    if self.acks.send(pending).is_err() {
                        return;
                    }
                    let delivery = Delivery {
                        message,
                        ack: AckHandle { tx },
                    };
                    // Back-pressure: a slow consumer stops the reading here.
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        sent = self.deliveries.send(delivery) => if sent.is_err() {
                            tracing::info!("mqtt consumer gone, stopping the subscriber");
                            return;
                        },
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(suback))) => {
                    bump(&self.counters.subscribed);
                    tracing::debug!(codes = ?suback.return_codes, "mqtt subscribed");
                }
                Ok(_) => {}
                Err(error) => {
                    self.connected.store(false, Ordering::Relaxed);
                    bump(&self.counters.connection_errors);
                    let (kind, reason) = tls::explain(&error, &self.host);
                    match kind {
                        tls::FailureKind::Tls => bump(&self.counters.tls_failures),
                        tls::FailureKind::Auth => bump(&self.counters.auth_failures),
                        _ => {}
                    }
                    self.counters.set_link(kind.state(), Some(reason.clone()));
                    tracing::warn!(
                        state = kind.state(),
                        %reason,
                        retry_in_ms = backoff.as_millis() as u64,
                        "mqtt connection failed"
                    );
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}

struct AckTask {
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<PendingAck>,
    counters: Arc<MqttCounters>,
    generation: Arc<AtomicU64>,
}

impl AckTask {
    /// Acknowledges in arrival order (MQTT 3.1.1 §4.6), each after its disposition arrived.
    async fn run(mut self) {
        while let Some(p) = self.acks.recv().await {
            let disposition = p.rx.await.unwrap_or_else(|_| {
                Disposition::NotStored("the delivery was dropped without a disposition".into())
            });
            let topic = &p.publish.topic;
            match disposition {
                Disposition::NotStored(reason) => {
                    bump(&self.counters.store_failures);
                    tracing::warn!(%topic, pkid = p.publish.pkid, %reason,
                        "mqtt message not stored, not acknowledged (the broker resends it after reconnecting)");
                    continue;
                }
                Disposition::Rejected(reason) => {
                    bump(&self.counters.rejected);
                    tracing::warn!(%topic, pkid = p.publish.pkid, %reason, "mqtt message rejected");
                }
                Disposition::Stored => {}
            }
            if p.publish.qos == QoS::AtMostOnce {
                continue;
            }
            // A packet id belongs to one connection: after a reconnection the broker resends
            // the message (same content, possibly another id) and that copy gets acknowledged.
            if self.generation.load(Ordering::SeqCst) != p.generation {
                bump(&self.counters.stale_acks);
                tracing::debug!(%topic, pkid = p.publish.pkid, "mqtt ack skipped: connection changed");
                continue;
            }
            if self.client.ack(&p.publish).await.is_err() {
                return;
            }
            bump(&self.counters.acked);
        }
    }
}

/// Publishes `batch` to `topic`, encoded as the topic's format says (`.../obs/json` or
/// `.../obs/pb`). For the simulator and tests. Returns once the request is queued on the
/// client; the PUBACK is seen on the publisher's own event loop.
pub async fn publish_observations(
    client: &AsyncClient,
    topic: &ObsTopic,
    batch: &MqttBatch,
    qos: QoS,
) -> Result<(), ClientError> {
    let payload = encode_payload(topic.format, batch);
    client.publish(topic.to_string(), qos, false, payload).await
}
