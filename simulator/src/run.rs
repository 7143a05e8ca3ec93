//! Sends simulated monitors' PCD-01 messages over MLLP/TCP and checks every ACK.
//!
//! One TCP connection per bed, one message in flight per connection (as real monitors do). A
//! message whose ACK does not arrive (timeout, broken connection) is sent again, unchanged, on a
//! new connection, so the gateway's duplicate recognition is exercised rather than bypassed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::Framed;

use crate::pcd01::{Monitor, SentObservation};
use crate::physiology::Course;
use crate::SimBed;

/// The scenario's bed number that means every bed.
pub const ALL_BEDS: usize = 0;

/// A scripted scenario for one bed's monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ScenarioKind {
    /// A clinical course (deterioration, desaturation, apnea).
    Course(Course),
    /// The monitor's clock is off by this many seconds.
    ClockSkew(i64),
    /// Pairs of messages arrive newest first.
    OutOfOrder,
    /// Every message is sent twice (as after a lost ACK); the gateway must store it once.
    Duplicates,
    /// Garbage bytes on the line before every message.
    Garbage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Scenario {
    pub kind: ScenarioKind,
    /// 1-based bed number, or [`ALL_BEDS`] (`0`): every bed (a whole unit that is sick).
    pub bed: usize,
    /// Messages sent normally before the scenario starts.
    pub after_messages: u64,
}

impl Scenario {
    /// Parses `NAME[:BED[:AFTER]]`, e.g. `desaturation:2:10`, `clock-skew=-300:1`, or
    /// `deterioration:0` for every bed.
    pub fn parse(s: &str) -> Result<Scenario, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let bed = parts
            .next()
            .map_or(Ok(1), |b| b.parse().map_err(|_| format!("bad bed '{b}'")))?;
        let after = parts
            .next()
            .map_or(Ok(0), |a| a.parse().map_err(|_| format!("bad start '{a}'")))?;
        let kind = match name.split_once('=') {
            Some(("clock-skew", secs)) => ScenarioKind::ClockSkew(
                secs.parse().map_err(|_| format!("bad clock skew '{secs}'"))?,
            ),
            _ => match name {
                "deterioration" => ScenarioKind::Course(Course::Deterioration),
                "desaturation" => ScenarioKind::Course(Course::Desaturation),
                "apnea" => ScenarioKind::Course(Course::Apnea),
                "out-of-order" => ScenarioKind::OutOfOrder,
                "duplicates" => ScenarioKind::Duplicates,
                "garbage" => ScenarioKind::Garbage,
                other => return Err(format!(
                    "unknown scenario '{other}' (deterioration, desaturation, apnea, clock-skew=SECONDS, out-of-order, duplicates, garbage)"
                )),
            },
        };
        Ok(Scenario {
            kind,
            bed,
            after_messages: after,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The gateway's MLLP address, `host:port`.
    pub target: String,
    pub beds: Vec<SimBed>,
    /// Messages per second per bed.
    pub rate_hz: f64,
    /// Stop after this many acknowledged-or-given-up messages per bed.
    pub messages_per_bed: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub seed: u64,
    pub ack_timeout: Duration,
    /// How often one message is tried before it counts as unanswered.
    pub max_attempts: u32,
    pub scenario: Option<Scenario>,
    /// MLLP over TLS, as a monitor with a client certificate would speak it.
    pub tls: Option<SimTls>,
    /// Also send waveforms (three ECG leads, pleth, arterial pressure) as PCD-01 WCM messages
    /// on the same connection, one message per channel group per segment.
    pub waveforms: Option<WaveOptions>,
}

/// The waveform output of each simulated monitor.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaveOptions {
    /// Length of one segment, ms (a multiple of 8; 800 when 0).
    pub segment_ms: u32,
    /// Samples left out on purpose (sent as empty values).
    pub gaps: crate::waveform::GapPlan,
}

/// TLS of the simulated monitors.
#[derive(Debug, Clone)]
pub struct SimTls {
    /// The CA bundle that signed the gateway's certificate.
    pub ca: std::path::PathBuf,
    /// A folder of client certificates `<device_id>.crt`/`.key` (as `icu-gateway cert` makes
    /// them in `devices/`); None: no client certificate.
    pub cert_dir: Option<std::path::PathBuf>,
    /// Present this device's certificate instead of each monitor's own (a test of the refusal).
    pub cert_as: Option<String>,
    /// The name the gateway's certificate must carry (default: the target's host).
    pub server_name: Option<String>,
}

/// One client configuration per monitor (ring provider, the test CA, its own certificate).
pub fn tls_connector(tls: &SimTls, device_id: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&tls.ca)
        .with_context(|| format!("reading {}", tls.ca.display()))?
    {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &tls.cert_dir {
        Some(dir) => {
            let id = tls.cert_as.as_deref().unwrap_or(device_id);
            let cert = dir.join(format!("{id}.crt"));
            let key = dir.join(format!("{id}.key"));
            let chain = CertificateDer::pem_file_iter(&cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// A byte stream the MLLP codec can frame: TCP or TLS over TCP.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            target: "127.0.0.1:2575".into(),
            beds: crate::beds(3),
            rate_hz: 1.0,
            messages_per_bed: Some(10),
            duration: None,
            seed: 42,
            ack_timeout: Duration::from_secs(10),
            max_attempts: 5,
            scenario: None,
            tls: None,
            waveforms: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceReport {
    pub messages: u64,
    pub aa: u64,
    pub ae: u64,
    pub ar: u64,
    pub unanswered: u64,
    pub resends: u64,
    pub observations_accepted: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SimReport {
    pub devices: BTreeMap<String, DeviceReport>,
    /// Waveform segments of AA-acknowledged messages, per device in sending order.
    #[serde(skip)]
    pub accepted_waves: Vec<crate::waveform::SentSegment>,
    /// Observations of AA-acknowledged messages, per device in sending order.
    #[serde(skip)]
    pub accepted: Vec<SentObservation>,
    /// The text of every AE/AR received (first 20).
    pub rejections: Vec<String>,
}

impl SimReport {
    pub fn total(&self) -> DeviceReport {
        let mut t = DeviceReport::default();
        for d in self.devices.values() {
            t.messages += d.messages;
            t.aa += d.aa;
            t.ae += d.ae;
            t.ar += d.ar;
            t.unanswered += d.unanswered;
            t.resends += d.resends;
            t.observations_accepted += d.observations_accepted;
        }
        t
    }
}

/// MSA-1 of an ACK, e.g. "AA".
pub fn ack_code(ack: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(ack).ok()?;
    text.split(['\r', '\n'])
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .map(str::to_owned)
}

async fn send_one(
    conn: &mut Option<Framed<Box<dyn Io>, MllpCodec>>,
    target: &str,
    tls: Option<&(tokio_rustls::TlsConnector, String)>,
    msg: &str,
    garbage: bool,
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    if conn.is_none() {
        let s = TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        s.set_nodelay(true)?;
        let io: Box<dyn Io> = match tls {
            None => Box::new(s),
            Some((connector, name)) => {
                let name = rustls::pki_types::ServerName::try_from(name.clone())
                    .with_context(|| format!("server name {name}"))?;
                let t = tokio::time::timeout(timeout, connector.connect(name, s))
                    .await
                    .context("TLS handshake timed out")?
                    .with_context(|| format!("TLS handshake with {target}"))?;
                Box::new(t)
            }
        };
        *conn = Some(Framed::new(io, MllpCodec::new(1 << 20)));
    }
    let framed = conn.as_mut().context("no connection")?;
    if garbage {
        // Line noise before the frame: the gateway dead-letters it without answering, so the
        // next ACK is this message's (an unsolicited answer would be taken as this one's).
        use tokio::io::AsyncWriteExt;
        framed.get_mut().write_all(b"\x07noise\xff\xfe").await?;
    }
    framed.send(msg.as_bytes()).await?;
    let reply = tokio::time::timeout(timeout, framed.next())
        .await
        .context("no ACK within the timeout")?;
    match reply {
        Some(Ok(MllpEvent::Frame { payload, .. })) => {
            if garbage && !acks_control_id(&payload, msg) {
                anyhow::bail!(
                    "the first ACK after line noise answers another message: {}",
                    String::from_utf8_lossy(&payload).replace('\r', "\n")
                );
            }
            Ok(payload.to_vec())
        }
        Some(Ok(other)) => anyhow::bail!("unexpected bytes instead of an ACK: {other:?}"),
        Some(Err(e)) => Err(e.into()),
        None => anyhow::bail!("connection closed before the ACK"),
    }
}

/// The pause before retry number `attempt` (1-based) of one message: 200 ms more per attempt,
/// at most 1 s, so a sender told to retry many times keeps knocking while a gateway restarts.
fn retry_pause(attempt: u32) -> Duration {
    Duration::from_millis((200 * u64::from(attempt)).min(1000))
}

/// Whether an ACK's MSA-2 is the control id (MSH-10) of `msg`.
fn acks_control_id(ack: &[u8], msg: &str) -> bool {
    let control = msg
        .split('\r')
        .next()
        .and_then(|msh| msh.split('|').nth(9))
        .unwrap_or("");
    let text = String::from_utf8_lossy(ack);
    text.split(['\r', '\n'])
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(2))
        == Some(control)
}

/// Resolves once `stop` turns true; never if its sender is gone without saying so.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What one bed's task brings back.
struct BedOutcome {
    device: String,
    report: DeviceReport,
    accepted: Vec<SentObservation>,
    accepted_waves: Vec<crate::waveform::SentSegment>,
    rejections: Vec<String>,
}

/// The connection and retry state of one bed's monitor.
struct Sender<'a> {
    opts: &'a RunOptions,
    device: String,
    conn: Option<Framed<Box<dyn Io>, MllpCodec>>,
    tls: Option<(tokio_rustls::TlsConnector, String)>,
}

impl Sender<'_> {
    /// Sends one message until it is answered (or the attempts run out, or `stop`), counting
    /// it in `report`; the answer's ACK code, `None` when unanswered.
    async fn deliver(
        &mut self,
        msg: &str,
        garbage: bool,
        report: &mut DeviceReport,
        rejections: &mut Vec<String>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<String> {
        report.messages += 1;
        for attempt in 0..self.opts.max_attempts.max(1) {
            if attempt > 0 {
                if *stop.borrow() {
                    break; // asked to stop while the gateway is away: give up on it
                }
                report.resends += 1;
                let pause = retry_pause(attempt);
                tokio::select! {
                    _ = stopped(stop) => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            match send_one(
                &mut self.conn,
                &self.opts.target,
                self.tls.as_ref(),
                msg,
                garbage,
                self.opts.ack_timeout,
            )
            .await
            {
                Ok(ack) => {
                    let code = ack_code(&ack).unwrap_or_default();
                    match code.as_str() {
                        "AA" | "CA" => report.aa += 1,
                        other => {
                            if other == "AE" || other == "CE" {
                                report.ae += 1;
                            } else {
                                report.ar += 1;
                            }
                            if rejections.len() < 20 {
                                rejections.push(String::from_utf8_lossy(&ack).replace('\r', "\n"));
                            }
                        }
                    }
                    return Some(code);
                }
                Err(e) => {
                    tracing::warn!(device = %self.device, attempt, error = %e, "message not acknowledged; reconnecting");
                    self.conn = None;
                }
            }
        }
        report.unanswered += 1;
        None
    }
}

async fn run_bed(opts: RunOptions, bed: SimBed, mut stop: watch::Receiver<bool>) -> BedOutcome {
    let device = bed.device_id.clone();
    let scenario = opts
        .scenario
        .filter(|s| s.bed == bed.index || s.bed == ALL_BEDS);
    let mut monitor = Monitor::new(bed.clone(), opts.seed);
    match scenario.map(|s| (s.kind, s.after_messages)) {
        Some((ScenarioKind::Course(c), after)) => monitor.patient.set_course(c, after),
        Some((ScenarioKind::ClockSkew(secs), _)) => monitor.clock_skew_s = secs,
        _ => {}
    }
    let mut report = DeviceReport::default();
    let mut accepted = Vec::new();
    let mut accepted_waves = Vec::new();
    let mut rejections = Vec::new();
    let tls = match &opts.tls {
        None => None,
        Some(t) => {
            let host = t.server_name.clone().unwrap_or_else(|| {
                opts.target
                    .rsplit_once(':')
                    .map_or(opts.target.clone(), |(h, _)| h.to_owned())
            });
            match tls_connector(t, &device) {
                Ok(c) => Some((c, host)),
                // Never fall back to plain text: a TLS run that cannot set up TLS stops.
                Err(e) => panic!("TLS setup for {device}: {e:#}"),
            }
        }
    };
    let mut sender = Sender {
        opts: &opts,
        device: device.clone(),
        conn: None,
        tls,
    };
    let period = Duration::from_secs_f64(1.0 / opts.rate_hz.max(0.001));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The waveform output: its own clock, one segment per tick, from the first tick's time.
    let mut waves = opts.waveforms.map(|w| {
        let mut m =
            crate::waveform::WaveformMonitor::new(bed.clone(), opts.seed, chrono::Utc::now());
        if w.segment_ms > 0 {
            m.segment_ms = w.segment_ms;
        }
        m.gaps = w.gaps;
        let mut t = tokio::time::interval(Duration::from_millis(u64::from(m.segment_ms)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        (m, t)
    });
    let mut numerics_done = false;
    loop {
        if let Some(max) = opts.messages_per_bed {
            numerics_done = report.messages >= max;
            // With waveforms and a duration, the curves go on until the duration ends.
            if numerics_done && (waves.is_none() || opts.duration.is_none()) {
                break;
            }
        }
        let wave_tick = async {
            match waves.as_mut() {
                Some((_, t)) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let numerics_tick = async {
            if numerics_done {
                std::future::pending::<()>().await;
            }
            ticker.tick().await;
        };
        let numerics = tokio::select! {
            _ = stopped(&mut stop) => break,
            _ = numerics_tick => true,
            _ = wave_tick => false,
        };
        if *stop.borrow() {
            break;
        }
        if !numerics {
            let Some((m, _)) = waves.as_mut() else {
                continue;
            };
            let vitals = monitor
                .last_vitals
                .clone()
                .unwrap_or_else(|| monitor.patient.step());
            for (msg, sent) in m.next_messages(&vitals) {
                let code = sender
                    .deliver(&msg, false, &mut report, &mut rejections, &mut stop)
                    .await;
                if matches!(code.as_deref(), Some("AA") | Some("CA")) {
                    accepted_waves.extend(sent);
                }
            }
            continue;
        }
        let active = scenario
            .filter(|s| report.messages >= s.after_messages)
            .map(|s| s.kind);
        let now = chrono::Utc::now();
        let mut batch = vec![monitor.next_message(now)];
        if active == Some(ScenarioKind::OutOfOrder) {
            // A second, newer message goes out before the first.
            batch.insert(0, monitor.next_message(now + chrono::Duration::seconds(1)));
        }
        if active == Some(ScenarioKind::Duplicates) {
            let again = batch[0].clone();
            batch.push((again.0, Vec::new()));
        }
        for (msg, sent) in batch {
            let garbage = active == Some(ScenarioKind::Garbage);
            let code = sender
                .deliver(&msg, garbage, &mut report, &mut rejections, &mut stop)
                .await;
            if matches!(code.as_deref(), Some("AA") | Some("CA")) {
                report.observations_accepted += sent.len() as u64;
                accepted.extend(sent.iter().cloned());
            }
        }
    }
    BedOutcome {
        device,
        report,
        accepted,
        accepted_waves,
        rejections,
    }
}

/// Runs every bed until its message count or the duration is reached, or `stop` turns true.
pub async fn run(opts: RunOptions, external_stop: Option<watch::Receiver<bool>>) -> SimReport {
    let (own_tx, stop_rx) = watch::channel(false);
    if let Some(mut external) = external_stop {
        let tx = own_tx.clone();
        tokio::spawn(async move {
            stopped(&mut external).await;
            let _ = tx.send(true);
        });
    }
    let stop = stop_rx;
    let mut tasks = Vec::new();
    for bed in opts.beds.clone() {
        tasks.push(tokio::spawn(run_bed(opts.clone(), bed, stop.clone())));
    }
    let timer = opts.duration.map(|d| {
        let own_tx = own_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = own_tx.send(true);
        })
    });
    let mut report = SimReport::default();
    for t in tasks {
        if let Ok(o) = t.await {
            report.devices.insert(o.device, o.report);
            report.accepted.extend(o.accepted);
            report.accepted_waves.extend(o.accepted_waves);
            report.rejections.extend(o.rejections);
        }
    }
    if let Some(t) = timer {
        t.abort();
    }
    drop(own_tx);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway that drops the first two connections without answering (as one killed mid-
    /// message does), then answers AA: the message is sent again, unchanged, and accepted once.
    #[tokio::test]
    async fn an_unacknowledged_message_is_sent_again_on_a_new_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut received = Vec::new();
            for conn in 0.. {
                let Ok((mut s, _)) = listener.accept().await else {
                    break;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.ends_with(&[0x1C, 0x0D]) {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the sender closed mid-message");
                    buf.extend_from_slice(&chunk[..n]);
                }
                received.push(buf);
                if conn < 2 {
                    continue; // dropped without an ACK
                }
                let msg = String::from_utf8_lossy(&received[conn]).into_owned();
                let control = msg.split('|').nth(9).unwrap_or_default().to_owned();
                let ack =
                    format!("MSH|^~\\&|GW|X|SIM|X|20250101000000||ACK|A1|P|2.6\rMSA|AA|{control}");
                let frame = icu_drivers::mllp::encode_frame(ack.as_bytes());
                s.write_all(&frame).await.unwrap();
                return received;
            }
            received
        });
        let report = run(
            RunOptions {
                target,
                beds: crate::beds(1),
                rate_hz: 50.0,
                messages_per_bed: Some(1),
                max_attempts: 10,
                ..Default::default()
            },
            None,
        )
        .await;
        let received = server.await.unwrap();
        assert_eq!(received.len(), 3, "sent three times");
        assert!(
            received.iter().all(|m| *m == received[0]),
            "resent unchanged"
        );
        let d = &report.devices["mon-01"];
        assert_eq!((d.messages, d.aa, d.resends, d.unanswered), (1, 1, 2, 0));
        assert_eq!(
            report.accepted.len(),
            8,
            "one message's observations, listed once"
        );
    }

    #[test]
    fn retries_back_off_up_to_one_second() {
        assert_eq!(retry_pause(1), Duration::from_millis(200));
        assert_eq!(retry_pause(4), Duration::from_millis(800));
        assert_eq!(retry_pause(5), Duration::from_secs(1));
        assert_eq!(retry_pause(500), Duration::from_secs(1));
    }

    #[test]
    fn ack_code_reads_msa_1() {
        assert_eq!(
            ack_code(b"MSH|^~\\&|A\rMSA|AE|X1\rERR||"),
            Some("AE".into())
        );
        assert_eq!(ack_code(b"garbage"), None);
    }
}
