//! IHE PCD-04 output: every alarm state change sent as `ORU^R40` over MLLP to the configured
//! alarm manager, with retry (protocols.md §4.5, issue 4 item 3).
//!
//! Owns: one bounded queue and one background Tokio task that keeps a single MLLP connection to
//! the alarm manager, sends one message at a time and waits for its ACK.
//!
//! Guarantees:
//! - The alarm path never waits on the network: [`Pcd04Sender::try_send`] never blocks; when the
//!   queue is full the alarm is refused ([`Full`]) and counted in `dropped_queue_full`.
//! - In order: a message is sent only after the previous one was acknowledged, rejected or given
//!   up. On a connection error or no ACK within `ack_timeout_ms` (10 s by default) the connection
//!   is dropped and the *same* message (same MSH-10) is resent on a new connection, after an
//!   exponential backoff (`initial_ms`, doubling, at most `max_ms`). Delivery is therefore
//!   at-least-once: an ACK lost in transit means the alarm manager sees the message twice.
//! - MSA-1 `AA`/`CA` is delivered (`acked`); `AE`/`AR` (or `CE`/`CR`, or anything else) is logged
//!   and counted in `rejected` and never resent. An ACK whose MSA-2 is not the message's control
//!   id (e.g. a late ACK of an earlier attempt) is ignored.
//! - With `max_attempts = Some(n)` a message is given up (`given_up`) after `n` attempts; with
//!   `None` (the default) it is retried until delivered, and alarms behind it wait in the queue
//!   (then overflow into `dropped_queue_full`, which is visible in the stats).
//! - Dropping the [`Pcd04Sender`] stops the task; queued messages are then lost (the store, not
//!   this output, is the durable record of alarms).
//! - While idle the task checks its connection every [`PROBE_EVERY`] (a closed one is noticed,
//!   a missing one is opened), so `connected` tells whether the alarm manager could take an
//!   alarm now; the gateway raises the `gateway:alarm-output` technical alarm from it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use icu_drivers::hl7::{build_pcd04, Pcd04Context};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_protos::v1::Alarm;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// The `[alarm_manager]` section: an IHE ACM alarm manager that receives every alarm state
/// change as PCD-04 (ORU^R40) over MLLP, with retry. The one definition of these settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmManagerConfig {
    /// `host:port` of the alarm manager's MLLP listener.
    pub mllp: String,
    /// MSH-5 receiving application.
    #[serde(default = "default_receiving_application")]
    pub receiving_application: String,
}

fn default_receiving_application() -> String {
    "ALARM_MANAGER".into()
}

impl AlarmManagerConfig {
    /// Every problem of this section, under the file's names (`alarm_manager.mllp`).
    pub fn problems(&self) -> Vec<crate::domain::FieldProblem> {
        let mut out = Vec::new();
        if !self.mllp.contains(':') {
            out.push(crate::domain::FieldProblem {
                field: "alarm_manager.mllp".into(),
                message: format!("'{}' is not host:port", self.mllp),
            });
        }
        out
    }
}

/// Reconnect and resend policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff after a failure.
    pub initial_ms: u64,
    /// Backoff ceiling (the backoff doubles after each consecutive failure).
    pub max_ms: u64,
    /// Attempts per message before it is given up; `None` retries until delivered.
    pub max_attempts: Option<u32>,
    /// How long to wait for the ACK of a sent message (also bounds a connect).
    pub ack_timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_ms: 500,
            max_ms: 30_000,
            max_attempts: None,
            ack_timeout_ms: 10_000,
        }
    }
}

/// Live counters of the PCD-04 output (shared with the status page).
#[derive(Debug, Default)]
pub struct Pcd04Stats {
    sent: AtomicU64,
    acked: AtomicU64,
    rejected: AtomicU64,
    retries: AtomicU64,
    given_up: AtomicU64,
    dropped_queue_full: AtomicU64,
    queue_depth: AtomicU64,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// A copy of [`Pcd04Stats`] at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pcd04StatsSnapshot {
    /// Messages written to the connection (resends included).
    pub sent: u64,
    /// Messages acknowledged with AA/CA.
    pub acked: u64,
    /// Messages refused by the alarm manager (AE/AR/...); not resent.
    pub rejected: u64,
    /// Attempts after the first one of a message (reconnect and resend).
    pub retries: u64,
    /// Messages abandoned after `max_attempts`.
    pub given_up: u64,
    /// Alarms refused by [`Pcd04Sender::try_send`] because the queue was full.
    pub dropped_queue_full: u64,
    /// Alarms waiting in the queue (not counting the one being sent).
    pub queue_depth: u64,
    /// A connection to the alarm manager is open.
    pub connected: bool,
    /// The latest failure (connect, send, ACK timeout or rejection).
    pub last_error: Option<String>,
}

impl Pcd04Stats {
    pub fn snapshot(&self) -> Pcd04StatsSnapshot {
        Pcd04StatsSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    fn set_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

/// The queue was full (or the sender task has stopped): the alarm was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PCD-04 output queue is full; alarm dropped from this output")]
pub struct Full;

struct Item {
    alarm: Alarm,
    ctx: Pcd04Context,
}

/// Handle of the PCD-04 output. See the module docs.
#[derive(Debug)]
pub struct Pcd04Sender {
    tx: mpsc::Sender<Item>,
    stats: Arc<Pcd04Stats>,
    ctx_base: Pcd04Context,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Item")
            .field("alarm_id", &self.alarm.alarm_id)
            .finish()
    }
}

impl Pcd04Sender {
    /// Starts the output task (must be called within a Tokio runtime, e.g. the actix system).
    ///
    /// `target` is the alarm manager's `host:port` (resolved on every connect). `ctx_base`
    /// supplies the MSH fields (sending/receiving application and facility, MSH-21 profile) of
    /// every message, and the patient, location, equipment and metric when an alarm's own
    /// context leaves them `None`. `queue_capacity` is at least 1.
    pub fn start(
        target: impl ToString,
        ctx_base: Pcd04Context,
        queue_capacity: usize,
        retry: RetryPolicy,
    ) -> (Pcd04Sender, Arc<Pcd04Stats>) {
        Self::start_tls(target, ctx_base, queue_capacity, retry, None)
    }

    /// As [`Pcd04Sender::start`], over TLS when `tls` is given (the alarm manager's certificate
    /// must name the target's host).
    pub fn start_tls(
        target: impl ToString,
        ctx_base: Pcd04Context,
        queue_capacity: usize,
        retry: RetryPolicy,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> (Pcd04Sender, Arc<Pcd04Stats>) {
        let (tx, rx) = mpsc::channel(queue_capacity.max(1));
        let stats = Arc::new(Pcd04Stats::default());
        let target = target.to_string();
        let host = target.rsplit_once(':').map_or(target.clone(), |(h, _)| {
            h.trim_matches(['[', ']']).to_owned()
        });
        let worker = Worker {
            target,
            retry,
            stats: Arc::clone(&stats),
            conn: None,
            tls: tls.map(|c| (tokio_rustls::TlsConnector::from(c), host)),
            next_id: 0,
            id_prefix: format!("ALM{}", chrono::Utc::now().timestamp()),
        };
        let task = tokio::spawn(worker.run(rx));
        let sender = Pcd04Sender {
            tx,
            stats: Arc::clone(&stats),
            ctx_base,
            task,
        };
        (sender, stats)
    }

    /// The context given at start (clone it and fill the per-alarm fields).
    pub fn context_base(&self) -> &Pcd04Context {
        &self.ctx_base
    }

    /// Queues one alarm state change; never blocks. `ctx` carries the per-alarm fields (patient,
    /// bed location, equipment, metric); its MSH fields are replaced by the base context's.
    pub fn try_send(&self, alarm: Alarm, ctx: Pcd04Context) -> Result<(), Full> {
        let base = &self.ctx_base;
        let ctx = Pcd04Context {
            sending_app: base.sending_app.clone(),
            sending_facility: base.sending_facility.clone(),
            receiving_app: base.receiving_app.clone(),
            receiving_facility: base.receiving_facility.clone(),
            profile: base.profile.clone(),
            patient_id: ctx.patient_id.or_else(|| base.patient_id.clone()),
            patient_authority: ctx
                .patient_authority
                .or_else(|| base.patient_authority.clone()),
            bed_location: ctx.bed_location.or_else(|| base.bed_location.clone()),
            equipment_id: ctx.equipment_id.or_else(|| base.equipment_id.clone()),
            metric: ctx.metric.or_else(|| base.metric.clone()),
        };
        self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Item { alarm, ctx }) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                match e {
                    mpsc::error::TrySendError::Full(item) => {
                        self.stats
                            .dropped_queue_full
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            alarm_id = %item.alarm.alarm_id,
                            "PCD-04 queue full: alarm not sent to the alarm manager"
                        );
                    }
                    mpsc::error::TrySendError::Closed(_) => {
                        self.stats
                            .dropped_queue_full
                            .fetch_add(1, Ordering::Relaxed);
                        self.stats.set_error("PCD-04 sender task stopped".into());
                    }
                }
                Err(Full)
            }
        }
    }
}

impl Drop for Pcd04Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one attempt to deliver a message ended.
enum Outcome {
    Delivered,
    Rejected(String),
    Failed(String),
}

/// How often an idle sender checks (or opens) its connection to the alarm manager.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A connection to the alarm manager: plain MLLP or MLLP over TLS (`tls.alarm_manager`).
enum Conn {
    Plain(Framed<TcpStream, MllpCodec>),
    Tls(Box<Framed<tokio_rustls::client::TlsStream<TcpStream>, MllpCodec>>),
}

impl Conn {
    /// The socket underneath (to notice, without reading, that the peer closed it).
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(f) => f.get_ref(),
            Conn::Tls(f) => f.get_ref().get_ref().0,
        }
    }

    async fn send(&mut self, payload: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(f) => f.send(payload).await,
            Conn::Tls(f) => f.send(payload).await,
        }
    }

    async fn wait_for_ack(&mut self, control_id: &str) -> Outcome {
        match self {
            Conn::Plain(f) => wait_for_ack(f, control_id).await,
            Conn::Tls(f) => wait_for_ack(f.as_mut(), control_id).await,
        }
    }
}

struct Worker {
    target: String,
    retry: RetryPolicy,
    stats: Arc<Pcd04Stats>,
    conn: Option<Conn>,
    /// TLS to the alarm manager, with the name its certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, String)>,
    next_id: u64,
    id_prefix: String,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>) {
        self.probe().await;
        loop {
            let item = tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => return,
                },
                _ = tokio::time::sleep(PROBE_EVERY) => {
                    self.probe().await;
                    continue;
                }
            };
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            self.next_id += 1;
            let control_id = format!("{}{:06}", self.id_prefix, self.next_id);
            let payload = build_pcd04(&item.alarm, &item.ctx, &control_id, chrono::Utc::now());
            self.deliver(&item.alarm.alarm_id, &control_id, &payload)
                .await;
        }
    }

    /// Checks the idle connection: notices one the alarm manager closed, and opens one when
    /// there is none, so that `connected` is true only while an alarm could be sent now.
    async fn probe(&mut self) {
        if let Some(conn) = self.conn.as_ref() {
            let mut buf = [0u8; 1];
            // Peeked, never read: under TLS the bytes belong to the TLS session (a late ACK of
            // a resent message is skipped by the next wait for an ACK).
            match futures::FutureExt::now_or_never(conn.socket().peek(&mut buf)) {
                Some(Ok(0)) => self.lost("connection closed by the alarm manager".into()),
                None | Some(Ok(_)) => return,
                Some(Err(e)) => self.lost(format!("receive: {e}")),
            }
        }
        match self.connect().await {
            Ok(conn) => {
                self.conn = Some(conn);
                self.stats.connected.store(true, Ordering::Relaxed);
            }
            Err(why) => self.lost(why),
        }
    }

    /// Opens a connection (TCP, then the TLS handshake when configured).
    async fn connect(&self) -> Result<Conn, String> {
        let timeout = Duration::from_millis(self.retry.ack_timeout_ms.max(1));
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&self.target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Err(_) => return Err("connect: timed out".into()),
        };
        let _ = stream.set_nodelay(true);
        let Some((connector, host)) = &self.tls else {
            return Ok(Conn::Plain(Framed::new(stream, MllpCodec::default())));
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("TLS: '{host}' is not a server name: {e}"))?;
        match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
            Ok(Ok(tls)) => Ok(Conn::Tls(Box::new(Framed::new(tls, MllpCodec::default())))),
            Ok(Err(e)) => Err(format!(
                "TLS handshake: {e} (tls.ca_file must hold the CA of the alarm manager's certificate, which must name {host})"
            )),
            Err(_) => Err("TLS handshake: timed out".into()),
        }
    }

    fn lost(&mut self, why: String) {
        if self.stats.connected.swap(false, Ordering::Relaxed) {
            tracing::warn!("PCD-04 to {}: {why}", self.target);
        }
        self.conn = None;
        self.stats.set_error(why);
    }

    /// Sends one message until it is acknowledged, rejected or given up.
    async fn deliver(&mut self, alarm_id: &str, control_id: &str, payload: &str) {
        let mut backoff = self.retry.initial_ms.max(1);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            if attempt > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            match self.attempt(control_id, payload).await {
                Outcome::Delivered => {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Outcome::Rejected(why) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%alarm_id, %control_id, "PCD-04 rejected by the alarm manager: {why}");
                    self.stats.set_error(why);
                    return;
                }
                Outcome::Failed(why) => {
                    self.conn = None;
                    self.stats.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(%alarm_id, %control_id, attempt, "PCD-04 to {}: {why}", self.target);
                    self.stats.set_error(why);
                    if self.retry.max_attempts.is_some_and(|max| attempt >= max) {
                        self.stats.given_up.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%alarm_id, %control_id, "PCD-04 given up after {attempt} attempts");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                    backoff = backoff.saturating_mul(2).min(self.retry.max_ms.max(1));
                }
            }
        }
    }

    async fn attempt(&mut self, control_id: &str, payload: &str) -> Outcome {
        let timeout = Duration::from_millis(self.retry.ack_timeout_ms.max(1));
        if self.conn.is_none() {
            match self.connect().await {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.stats.connected.store(true, Ordering::Relaxed);
                }
                Err(why) => return Outcome::Failed(why),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Outcome::Failed("no connection".into());
        };
        if let Err(e) = conn.send(payload.as_bytes()).await {
            return Outcome::Failed(format!("send: {e}"));
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, conn.wait_for_ack(control_id)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Failed(format!("no ACK within {} ms", self.retry.ack_timeout_ms)),
        }
    }
}

/// Reads frames until the ACK of `control_id` arrives or the connection fails.
async fn wait_for_ack<S>(conn: &mut Framed<S, MllpCodec>, control_id: &str) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let payload = match conn.next().await {
            None => return Outcome::Failed("connection closed before the ACK".into()),
            Some(Err(e)) => return Outcome::Failed(format!("receive: {e}")),
            Some(Ok(MllpEvent::Frame { payload, .. })) => payload,
            Some(Ok(other)) => {
                tracing::debug!(
                    "PCD-04: ignoring non-frame bytes from the alarm manager: {other:?}"
                );
                continue;
            }
        };
        let text = String::from_utf8_lossy(&payload);
        let Some((code, acked_id)) = parse_msa(&text) else {
            tracing::debug!("PCD-04: ignoring a reply without MSA");
            continue;
        };
        if acked_id != control_id {
            tracing::debug!(%acked_id, %control_id, "PCD-04: ignoring an ACK for another message");
            continue;
        }
        return match code.as_str() {
            "AA" | "CA" => Outcome::Delivered,
            _ => Outcome::Rejected(format!(
                "MSA-1 {code} for {control_id}{}",
                error_text(&text)
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            )),
        };
    }
}

// The ACK reading is a pure parser, fuzzed with the other decoders in icu-drivers.
use icu_drivers::hl7::{ack_error_text as error_text, parse_msa};

#[cfg(test)]
mod tests {
    use super::*;
    use icu_drivers::hl7::{build_ack, parse_header, AckCode, MetricRow};
    use tokio::net::TcpListener;

    const ATTRIBUTE_CODES: [&str; 7] = [
        "196648^MDC_EVT_HI^MDC",
        "147842^MDC_ECG_HEART_RATE^MDC",
        "68481^MDC_ATTR_EVENT_PHASE^MDC",
        "68482^MDC_ATTR_ALARM_STATE^MDC",
        "68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC",
        "68484^MDC_ATTR_ALARM_PRIORITY^MDC",
        "68485^MDC_ATTR_ALERT_TYPE^MDC",
    ];

    fn base() -> Pcd04Context {
        Pcd04Context {
            sending_app: "ICU_GW^0012AB00000000A1^EUI-64".into(),
            sending_facility: "ICU_GW".into(),
            receiving_app: "AM".into(),
            receiving_facility: "HOSP".into(),
            ..Default::default()
        }
    }

    fn hr_alarm(id: &str, value: u32) -> (Alarm, Pcd04Context) {
        let alarm = Alarm {
            device_id: "mon-1".into(),
            bed: "ICU1-101A".into(),
            alarm_id: id.into(),
            mdc_code: 147842,
            text: format!("HR {value} > 120"),
            priority: "PM".into(),
            phase: "start".into(),
            state: "active".into(),
            event_time_us: 1_735_732_799_000_000,
            alert_type: "SP".into(),
            source: "limit:hr".into(),
            patient_id: "123456".into(),
            ..Default::default()
        };
        let ctx = Pcd04Context {
            patient_id: Some("123456".into()),
            bed_location: Some("ICU1^101^A^HOSP".into()),
            equipment_id: Some("0012AB00000000B2".into()),
            metric: Some(MetricRow {
                mdc_code: 147842,
                refid: "MDC_ECG_HEART_RATE".into(),
                value: Some(f64::from(value)),
                unit_code: 264864,
                unit_refid: "MDC_DIM_BEAT_PER_MIN".into(),
                limits: Some((Some(50.0), Some(120.0))),
                containment: None,
            }),
            ..Default::default()
        };
        (alarm, ctx)
    }

    /// A tiny MLLP alarm manager: forwards every received message and answers with
    /// `reply(n)` (0-based count of messages so far): `Some(code)` to ACK, `None` to stay silent.
    async fn serve(
        listener: TcpListener,
        reply: impl Fn(usize) -> Option<AckCode> + Send + 'static,
    ) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mut framed = Framed::new(stream, MllpCodec::default());
                while let Some(Ok(event)) = framed.next().await {
                    let MllpEvent::Frame { payload, .. } = event else {
                        continue;
                    };
                    let text = String::from_utf8(payload.to_vec()).unwrap();
                    let header = parse_header(text.as_bytes()).unwrap();
                    let _ = tx.send(text);
                    let code = reply(n);
                    n += 1;
                    if let Some(code) = code {
                        let ack = build_ack(Some(&header), code, None, "ACK1", chrono::Utc::now());
                        if framed.send(ack.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        rx
    }

    fn fields(segment: &str) -> Vec<&str> {
        segment.split('|').collect()
    }

    fn assert_seven_rows(msg: &str, value: &str) {
        let obx: Vec<&str> = msg.split('\r').filter(|s| s.starts_with("OBX|")).collect();
        assert_eq!(obx.len(), 8, "{msg}");
        assert_eq!(fields(obx[0])[11], "X");
        let values = ["", value, "start", "active", "enabled", "PM", "SP"];
        for (i, row) in obx[1..].iter().enumerate() {
            let f = fields(row);
            assert_eq!(f[3], ATTRIBUTE_CODES[i], "{row}");
            assert_eq!(f[4], format!("1.1.1.1.{}", i + 1), "{row}");
            if i > 0 {
                assert_eq!(f[5], values[i], "{row}");
            }
            assert_eq!(f[11], "R", "{row}");
        }
        assert!(fields(obx[1])[5].starts_with("HR "));
        assert_eq!(fields(obx[2])[7], "50-120");
    }

    async fn wait_until(stats: &Pcd04Stats, what: impl Fn(&Pcd04StatsSnapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !what(&stats.snapshot()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out: {:?}",
                stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn recv(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("message within 15 s")
            .expect("listener alive")
    }

    #[tokio::test]
    async fn pcd04_over_tls_reaches_an_alarm_manager_with_a_certificate_from_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::tls::pki::make(dir.path(), &Default::default()).unwrap();
        let server = Arc::new(
            crate::tls::server_config(
                &pki.gateway_cert,
                &pki.gateway_key,
                None,
                crate::tls::Mode::Off,
            )
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(server);
            while let Ok((s, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut framed = Framed::new(tls, MllpCodec::default());
                    while let Some(Ok(MllpEvent::Frame { payload, .. })) = framed.next().await {
                        let text = String::from_utf8_lossy(&payload).into_owned();
                        let header = icu_drivers::hl7::parse_header(&payload).unwrap();
                        let ack =
                            build_ack(Some(&header), AckCode::AA, None, "ACK1", chrono::Utc::now());
                        let _ = tx.send(text);
                        if framed.send(ack.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let tls = Arc::new(crate::tls::client_config(&pki.ca_cert, None).unwrap());
        let (sender, stats) =
            Pcd04Sender::start_tls(addr, base(), 16, RetryPolicy::default(), Some(tls));
        let (alarm, ctx) = hr_alarm("bed1:hr:tls", 150);
        sender.try_send(alarm, ctx).unwrap();
        let msg = recv(&mut rx).await;
        assert_seven_rows(&msg, "150");
        wait_until(&stats, |s| s.acked == 1 && s.connected).await;

        // A client that trusts another CA refuses this alarm manager, and says why.
        let other = tempfile::tempdir().unwrap();
        let other_pki = crate::tls::pki::make(other.path(), &Default::default()).unwrap();
        let untrusting = Arc::new(crate::tls::client_config(&other_pki.ca_cert, None).unwrap());
        let retry = RetryPolicy {
            max_attempts: Some(1),
            ..RetryPolicy::default()
        };
        let (sender, stats) = Pcd04Sender::start_tls(addr, base(), 16, retry, Some(untrusting));
        let (alarm, ctx) = hr_alarm("bed1:hr:untrusted", 151);
        sender.try_send(alarm, ctx).unwrap();
        wait_until(&stats, |s| s.given_up == 1).await;
        let s = stats.snapshot();
        assert!(!s.connected);
        assert!(
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("TLS handshake") && e.contains("tls.ca_file")),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn pcd04_two_alarms_reach_the_listener_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rx = serve(listener, |_| Some(AckCode::AA)).await;
        let (sender, stats) = Pcd04Sender::start(addr, base(), 16, RetryPolicy::default());
        for (id, v) in [("bed1:hr:1", 135), ("bed1:hr:2", 140)] {
            let (alarm, ctx) = hr_alarm(id, v);
            sender.try_send(alarm, ctx).unwrap();
        }
        let first = recv(&mut rx).await;
        let second = recv(&mut rx).await;
        for (msg, id, v) in [(&first, "bed1:hr:1", "135"), (&second, "bed1:hr:2", "140")] {
            let seg: Vec<&str> = msg.split('\r').collect();
            assert!(seg[0].starts_with("MSH|^~\\&|ICU_GW^0012AB00000000A1^EUI-64|ICU_GW|AM|HOSP|"));
            assert_eq!(fields(seg[0])[8], "ORU^R40^ORU_R40");
            assert_eq!(seg[1], "PID|||123456");
            assert_eq!(seg[2], "PV1||I|ICU1^101^A^HOSP");
            assert!(fields(seg[3])[3].starts_with(&format!("{id}^ICU_GW")));
            assert_seven_rows(msg, v);
        }
        wait_until(&stats, |s| s.acked == 2).await;
        let s = stats.snapshot();
        assert_eq!((s.sent, s.rejected, s.retries, s.queue_depth), (2, 0, 0, 0));
        assert!(s.connected);
        drop(sender);
    }

    #[tokio::test]
    async fn pcd04_retries_until_the_listener_is_up() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let target = format!("127.0.0.1:{port}");
        let retry = RetryPolicy {
            initial_ms: 100,
            max_ms: 400,
            ..RetryPolicy::default()
        };
        let (sender, stats) = Pcd04Sender::start(&target, base(), 16, retry);
        let (alarm, ctx) = hr_alarm("bed1:hr:1", 135);
        sender.try_send(alarm, ctx).unwrap();
        let (alarm, ctx) = hr_alarm("bed1:hr:2", 150);
        sender.try_send(alarm, ctx).unwrap();

        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = stats.snapshot();
        assert!(!s.connected);
        assert!(s.retries >= 1, "{s:?}");
        assert!(s.last_error.as_deref().unwrap_or("").starts_with("connect"));
        assert_eq!(s.queue_depth, 1);

        let listener = TcpListener::bind(&target).await.unwrap();
        let mut rx = serve(listener, |_| Some(AckCode::AA)).await;
        let first = recv(&mut rx).await;
        let second = recv(&mut rx).await;
        assert_seven_rows(&first, "135");
        assert_seven_rows(&second, "150");
        assert!(first.contains("|bed1:hr:1^ICU_GW"));
        assert!(second.contains("|bed1:hr:2^ICU_GW"));
        wait_until(&stats, |s| s.acked == 2).await;
        assert_eq!(stats.snapshot().given_up, 0);
    }

    #[tokio::test]
    async fn pcd04_resends_the_same_message_when_no_ack_arrives() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Silent on the first message, AA afterwards.
        let mut rx = serve(listener, |n| (n > 0).then_some(AckCode::AA)).await;
        let retry = RetryPolicy {
            initial_ms: 50,
            ack_timeout_ms: 300,
            ..RetryPolicy::default()
        };
        let (sender, stats) = Pcd04Sender::start(addr, base(), 16, retry);
        let (alarm, ctx) = hr_alarm("bed1:hr:1", 135);
        sender.try_send(alarm, ctx).unwrap();
        let first = recv(&mut rx).await;
        let resent = recv(&mut rx).await;
        assert_eq!(first, resent, "the same message (same MSH-10) is resent");
        wait_until(&stats, |s| s.acked == 1).await;
        let s = stats.snapshot();
        assert_eq!((s.sent, s.retries), (2, 1));
        assert!(s.last_error.unwrap().contains("no ACK"));
    }

    #[tokio::test]
    async fn pcd04_rejected_message_is_counted_and_not_resent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rx = serve(listener, |n| {
            Some(if n == 0 { AckCode::AE } else { AckCode::AA })
        })
        .await;
        let (sender, stats) = Pcd04Sender::start(addr, base(), 16, RetryPolicy::default());
        for (id, v) in [("bed1:hr:1", 135), ("bed1:hr:2", 140)] {
            let (alarm, ctx) = hr_alarm(id, v);
            sender.try_send(alarm, ctx).unwrap();
        }
        let first = recv(&mut rx).await;
        let second = recv(&mut rx).await;
        assert!(first.contains("|bed1:hr:1^"));
        assert!(
            second.contains("|bed1:hr:2^"),
            "the rejected one is not resent"
        );
        wait_until(&stats, |s| s.acked == 1 && s.rejected == 1).await;
        assert_eq!(stats.snapshot().retries, 0);
    }

    #[tokio::test]
    async fn pcd04_full_queue_is_counted_and_never_blocks() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let retry = RetryPolicy {
            initial_ms: 10_000,
            max_attempts: Some(1),
            ..RetryPolicy::default()
        };
        let (sender, stats) = Pcd04Sender::start(format!("127.0.0.1:{port}"), base(), 2, retry);
        let started = std::time::Instant::now();
        let results: Vec<bool> = (0..10)
            .map(|i| {
                let (alarm, ctx) = hr_alarm(&format!("bed1:hr:{i}"), 130);
                sender.try_send(alarm, ctx).is_ok()
            })
            .collect();
        assert!(started.elapsed() < Duration::from_millis(100));
        let accepted = results.iter().filter(|ok| **ok).count() as u64;
        let s = stats.snapshot();
        assert!((2..=3).contains(&accepted), "{results:?}");
        assert_eq!(s.dropped_queue_full, 10 - accepted);
        // The one being sent (if any) is not in the queue.
        assert!(s.queue_depth <= 2);
    }

    #[test]
    fn pcd04_msa_parsing() {
        assert_eq!(
            parse_msa("MSH|^~\\&|AM\rMSA|AA|X1\r"),
            Some(("AA".into(), "X1".into()))
        );
        assert_eq!(
            parse_msa("MSH#^~\\&#AM\nMSA#ae#X2"),
            Some(("AE".into(), "X2".into()))
        );
        assert_eq!(parse_msa("MSH|^~\\&|AM"), None);
        assert_eq!(
            error_text("MSH|x\rMSA|AE|1\rERR||OBX^3^5|102^Data type error^HL70357|E||||bad")
                .as_deref(),
            Some("bad")
        );
    }
}
