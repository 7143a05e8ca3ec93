//! Serial-line devices (ventilators, oximeters) over tokio-serial.
//!
//! Owns: opening the configured port with its line settings, reading bytes into the device's
//! protocol (a pure codec/session from `icu_drivers`, adapted by a [`SerialProtocol`]), writing
//! what the protocol asks to send, and reopening the port with backoff when the line drops (a
//! pulled cable, a powered-off device, a USB adapter that disappears). Guarantees: the link state
//! is reported to the device actor on every change; readings go to the device actor with
//! `send().await` (a slow disk slows the reader, never drops data); rejected bytes are
//! dead-lettered with the stream offset; one device's line never affects another's.
//! A pseudo-terminal is a real tty: tests and the simulator use them exactly like /dev/ttyUSB0.

use std::time::Duration;

use actix::Addr;
use bytes::BytesMut;
use icu_protos::v1::{Observation, WaveformSegment};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_serial::SerialPortBuilderExt;

use crate::clock::now_us;
use crate::device::{DeviceActor, DeviceCondition, IngestObservations, Link, LinkState};
pub use crate::domain::SerialSettings;
use crate::store::{Append, DeadLetter, Store, WriteRequest};

/// What a protocol asks the transport to do.
#[derive(Debug)]
pub enum SerialAction {
    /// Bytes to write to the device.
    Write(Vec<u8>),
    /// Decoded readings.
    Observations(Vec<Observation>),
    /// Decoded curve segments (e.g. MEDIBUS realtime), stored like readings.
    Waveforms(Vec<WaveformSegment>),
    /// Bytes the protocol could not accept.
    Reject {
        offset: u64,
        len: usize,
        reason: String,
        raw: Vec<u8>,
    },
    /// A condition the device reports (raised or cleared).
    Condition(DeviceCondition),
    /// The protocol knows the device is talking (e.g. MEDIBUS identification answered).
    Up,
    /// The protocol lost the device (e.g. MEDIBUS response timeout) and re-initialises.
    Lost(String),
}

/// A device protocol as the serial transport drives it. Implementations are pure adapters over
/// the codecs in `icu_drivers`; time is passed in.
pub trait SerialProtocol: Send + 'static {
    /// The port was (re)opened.
    fn on_open(&mut self, now_us: i64) -> Vec<SerialAction>;
    /// New bytes arrived in `buf` (the protocol consumes what it can).
    fn on_bytes(&mut self, buf: &mut BytesMut, now_us: i64) -> Vec<SerialAction>;
    /// Called every [`SerialProtocol::tick`], also when nothing arrived.
    fn on_tick(&mut self, now_us: i64) -> Vec<SerialAction>;
    /// How often `on_tick` runs.
    fn tick(&self) -> Duration {
        Duration::from_millis(200)
    }
    /// Name used in logs and dead letters, e.g. "masimo".
    fn name(&self) -> &'static str;
}

fn parity(p: &str) -> tokio_serial::Parity {
    match p {
        "even" => tokio_serial::Parity::Even,
        "odd" => tokio_serial::Parity::Odd,
        _ => tokio_serial::Parity::None,
    }
}

/// The port of `settings` with its line settings (baud, data bits, parity, stop bits, no flow
/// control), as the gateway opens it (also `check-config --probe`).
pub fn port_builder(settings: &SerialSettings) -> tokio_serial::SerialPortBuilder {
    let data_bits = match settings.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if settings.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let path = settings.port.to_string_lossy().into_owned();
    tokio_serial::new(path, settings.baud)
        .data_bits(data_bits)
        .parity(parity(&settings.parity))
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
}

fn open(settings: &SerialSettings) -> Result<tokio_serial::SerialStream, String> {
    let mut stream = port_builder(settings)
        .open_native_async()
        .map_err(|e| format!("cannot open {}: {e}", settings.port.display()))?;
    // Exclusive access is the default on unix; a pty slave reopened after a cable pull must not
    // be refused because of a stale lock, so keep it non-exclusive.
    let _ = stream.set_exclusive(false);
    Ok(stream)
}

/// Runs one serial device until `shutdown` turns true: open, read, reopen on loss.
///
/// A serial line has no connection: a pulled RS-232 cable or a powered-off device is only
/// silence (a vanished USB adapter or a closed pty gives a read error). So the port is also
/// closed and reopened after `reopen_after` without a byte, which recovers adapters that were
/// replugged under the same name.
pub async fn run(
    device_id: String,
    settings: SerialSettings,
    reopen_after: Duration,
    mut protocol: Box<dyn SerialProtocol>,
    actor: Addr<DeviceActor>,
    store: Addr<Store>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    let mut offset: u64 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let _ = actor
            .send(Link {
                state: LinkState::Connecting,
                reason: None,
            })
            .await;
        let mut port = match open(&settings) {
            Ok(p) => p,
            Err(reason) => {
                tracing::warn!(device = %device_id, %reason, "serial port not available; retrying");
                let _ = actor
                    .send(Link {
                        state: LinkState::Reconnecting,
                        reason: Some(reason),
                    })
                    .await;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(device = %device_id, port = %settings.port.display(), baud = settings.baud, protocol = protocol.name(), "serial port open");
        let mut buf = BytesMut::with_capacity(4096);
        let mut up = false;
        let mut last_rx = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(protocol.tick());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let actions = protocol.on_open(now_us());
        let mut lost = apply(
            &device_id,
            protocol.name(),
            actions,
            &mut port,
            &actor,
            &store,
            &mut up,
            &mut backoff,
        )
        .await;
        while lost.is_none() {
            let mut chunk = [0u8; 1024];
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {
                    let actions = protocol.on_tick(now_us());
                    lost = apply(&device_id, protocol.name(), actions, &mut port, &actor, &store, &mut up, &mut backoff).await;
                    if lost.is_none() && last_rx.elapsed() > reopen_after {
                        lost = Some(format!("no data for {} s", reopen_after.as_secs()));
                    }
                }
                read = port.read(&mut chunk) => match read {
                    Ok(0) => lost = Some("end of stream (line closed)".to_string()),
                    Ok(n) => {
                        last_rx = tokio::time::Instant::now();
                        offset += n as u64;
                        buf.extend_from_slice(&chunk[..n]);
                        let actions = protocol.on_bytes(&mut buf, now_us());
                        lost = apply(&device_id, protocol.name(), actions, &mut port, &actor, &store, &mut up, &mut backoff).await;
                    }
                    Err(e) => lost = Some(format!("read failed: {e}")),
                },
            }
        }
        let reason = lost.unwrap_or_default();
        tracing::warn!(device = %device_id, port = %settings.port.display(), %reason, stream_offset = offset, "serial link lost; reopening");
        let _ = actor
            .send(Link {
                state: LinkState::Reconnecting,
                reason: Some(reason),
            })
            .await;
        drop(port);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Carries out a protocol's actions; returns why the link is lost, if it is.
#[allow(clippy::too_many_arguments)]
async fn apply(
    device_id: &str,
    protocol: &str,
    actions: Vec<SerialAction>,
    port: &mut tokio_serial::SerialStream,
    actor: &Addr<DeviceActor>,
    store: &Addr<Store>,
    up: &mut bool,
    backoff: &mut Duration,
) -> Option<String> {
    for action in actions {
        match action {
            SerialAction::Write(bytes) => {
                if let Err(e) = port.write_all(&bytes).await {
                    return Some(format!("write failed: {e}"));
                }
            }
            SerialAction::Waveforms(waveforms) => {
                let receive_time_us = waveforms
                    .first()
                    .map(|w| w.receive_time_us)
                    .unwrap_or_else(now_us);
                let stored = actor.send(IngestObservations {
                    observations: Vec::new(),
                    dedup: None,
                    receive_time_us,
                    order: Default::default(),
                    traceparent: None,
                    waveforms,
                });
                match stored.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(device = %device_id, error = %e, "serial curves not stored")
                    }
                    Err(_) => tracing::error!(device = %device_id, "device actor stopped"),
                }
            }
            SerialAction::Observations(observations) => {
                if !*up {
                    *up = true;
                    *backoff = Duration::from_millis(250);
                    let _ = actor
                        .send(Link {
                            state: LinkState::Up,
                            reason: None,
                        })
                        .await;
                }
                let receive_time_us = observations
                    .first()
                    .map(|o| o.receive_time_us)
                    .unwrap_or_else(now_us);
                // One reading set's trace (disabled, and free, unless tracing is on): its
                // receipt, and the commit as its child (serial lines are not acknowledged).
                let n = observations.len() as i64;
                let receipt = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET,
                    parent: None, "serial.receive", transport = "serial", device = %device_id,
                    protocol, observations = n);
                let commit = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET,
                    parent: &receipt, "store.commit", device = %device_id, observations = n);
                let traceparent = icu_cloud_bridge::trace::traceparent_of(&commit);
                let stored = actor.send(IngestObservations {
                    observations,
                    dedup: None,
                    receive_time_us,
                    order: Default::default(),
                    traceparent,
                    waveforms: Vec::new(),
                });
                match tracing::Instrument::instrument(stored, commit).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(device = %device_id, error = %e, "serial readings not stored")
                    }
                    Err(_) => tracing::error!(device = %device_id, "device actor stopped"),
                }
            }
            SerialAction::Reject {
                offset,
                len,
                reason,
                raw,
            } => {
                tracing::warn!(device = %device_id, protocol, offset, len, %reason, "serial input rejected");
                let letter = DeadLetter {
                    received_us: now_us(),
                    transport: format!("serial:{protocol}"),
                    peer: device_id.to_owned(),
                    device_id: Some(device_id.to_owned()),
                    stream_offset: offset,
                    ack_code: String::new(),
                    error_code: 0,
                    location: None,
                    reason,
                    raw,
                    raw_len: len,
                };
                if let Ok(Err(e)) = store.send(Append(WriteRequest::DeadLetter(letter))).await {
                    tracing::error!(device = %device_id, error = %e, "dead letter not stored");
                }
            }
            SerialAction::Condition(c) => {
                let _ = actor.send(c).await;
            }
            SerialAction::Up => {
                if !*up {
                    *up = true;
                    *backoff = Duration::from_millis(250);
                    let _ = actor
                        .send(Link {
                            state: LinkState::Up,
                            reason: None,
                        })
                        .await;
                }
            }
            SerialAction::Lost(reason) => {
                *up = false;
                let _ = actor
                    .send(Link {
                        state: LinkState::Connecting,
                        reason: Some(reason),
                    })
                    .await;
            }
        }
    }
    None
}
