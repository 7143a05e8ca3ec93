//! A simulated Dräger ventilator on a real pseudo-terminal for the realtime-curve tests
//! ([`run_ventilator`]): the simulator's [`VentilatorSim`] answers the gateway's MEDIBUS polls
//! and, once the gateway enables realtime transmission, streams airway pressure, flow and
//! volume at 125 Hz on the same line. Unlike `icu_sim::serial::run_medibus` it records every
//! realtime frame it put on the line ([`VentControl::sent`]) and can send one frame malformed
//! ([`VentControl::corrupt_frame`]), so a test compares what the gateway decoded with what went
//! over the wire, sample for sample.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use icu_drivers::medibus::{DeviceIdentity, MedibusValue, SampleByteOrder};
use icu_sim::serial::open_pty;
use icu_sim::ventilator::VentilatorSim;

/// The breathing rate of the simulated curves (fixed: the samples are reproducible).
pub const RESP_RATE: f64 = 15.0;

/// What the test controls and sees of a running ventilator.
pub struct VentControl {
    pub stop: AtomicBool,
    /// Index (0-based, since streaming began) of a realtime frame to send malformed: its sync
    /// byte followed by `0xE5`, a byte no realtime frame may hold. `u64::MAX`: none.
    pub corrupt_frame: AtomicU64,
    /// Per realtime frame sent, in order: the bins of its streams in stream order, or `None`
    /// for the malformed one.
    pub sent: Mutex<Vec<Option<Vec<u16>>>>,
    /// How often streaming (re)started (the gateway enabled the streams).
    pub stream_starts: AtomicU64,
    /// Measured-data answers sent (the slow protocol's numerics).
    pub measured_answers: AtomicU64,
    /// Stream offset (bytes written since the port opened) of the malformed frame's sync byte.
    pub corrupt_offset: AtomicU64,
}

impl Default for VentControl {
    fn default() -> Self {
        Self {
            stop: AtomicBool::new(false),
            corrupt_frame: AtomicU64::new(u64::MAX),
            sent: Mutex::new(Vec::new()),
            stream_starts: AtomicU64::new(0),
            measured_answers: AtomicU64::new(0),
            corrupt_offset: AtomicU64::new(u64::MAX),
        }
    }
}

/// The `[[devices]]` entry of the ventilator `vent-01` at `bed-01` on `port`, with all three
/// realtime curves.
pub fn device_toml(port: &std::path::Path) -> String {
    format!(
        "[[devices]]\nid = \"vent-01\"\nbed = \"bed-01\"\nprotocol = \"medibus\"\n\
         realtime = [\"airway_pressure\", \"flow\", \"volume\"]\nsilent_after_s = 5\n\
         [devices.serial]\nport = \"{}\"\n\n",
        port.display()
    )
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        device_id: "0161".into(),
        name: "EvitaXL".into(),
        revision: "04.03".into(),
    }
}

/// Runs the ventilator on a pty published at `link` until `control.stop`.
pub fn run_ventilator(
    link: PathBuf,
    control: Arc<VentControl>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut pty = open_pty(&link)?;
    Ok(std::thread::spawn(move || {
        let mut sim = VentilatorSim::new(identity(), SampleByteOrder::LowFirst);
        sim.resp_rate = RESP_RATE;
        sim.device.measured = vec![
            MedibusValue::number(0x7D, 22.0),
            MedibusValue::number(0xD6, RESP_RATE),
        ];
        let started = Instant::now();
        let mut written: u64 = 0;
        let mut streaming = false;
        while !control.stop.load(Ordering::Relaxed) {
            let incoming = read_some(&mut pty.master);
            let mut out = Vec::new();
            if !incoming.is_empty() {
                let before = sim.measured_answers;
                out.extend(sim.on_bytes(&incoming));
                control
                    .measured_answers
                    .fetch_add(sim.measured_answers - before, Ordering::Relaxed);
            }
            let first = sim.samples_sent();
            let realtime = sim.realtime_until(started.elapsed().as_micros() as u64);
            let now_streaming = !sim.device.realtime_streams().is_empty();
            if now_streaming && (!streaming || sim.samples_sent() < first) {
                control.stream_starts.fetch_add(1, Ordering::Relaxed);
            }
            streaming = now_streaming;
            if !realtime.is_empty() {
                let from = sim.samples_sent() - frame_starts(&realtime).len() as u64;
                let mut codes: Vec<(u8, u8)> = sim
                    .device
                    .realtime_streams()
                    .iter()
                    .map(|(stream, cfg)| (*stream, cfg.code))
                    .collect();
                codes.sort();
                let corrupt = control.corrupt_frame.load(Ordering::Relaxed);
                let starts = frame_starts(&realtime);
                let mut sent = control.sent.lock().unwrap();
                let base = written + out.len() as u64;
                let mut bytes = Vec::with_capacity(realtime.len());
                for (i, &at) in starts.iter().enumerate() {
                    let end = starts.get(i + 1).copied().unwrap_or(realtime.len());
                    let k = from + i as u64;
                    if k == corrupt {
                        control
                            .corrupt_offset
                            .store(base + bytes.len() as u64, Ordering::Relaxed);
                        bytes.extend([realtime[at], 0xE5]);
                        sent.push(None);
                    } else {
                        bytes.extend_from_slice(&realtime[at..end]);
                        sent.push(Some(codes.iter().map(|(_, c)| sim.bin(*c, k)).collect()));
                    }
                }
                out.extend(bytes);
            }
            if !out.is_empty() {
                if pty.master.write_all(&out).is_ok() {
                    written += out.len() as u64;
                }
            } else if incoming.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let _ = std::fs::remove_file(&link);
    }))
}

/// Positions of the sync bytes (`0xD0`–`0xDF`) in a run of realtime frames.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| (0xD0..=0xDF).contains(*b))
        .map(|(i, _)| i)
        .collect()
}

/// What the gateway wrote, waiting at most 5 ms (empty while no one has the slave open).
fn read_some(master: &mut std::fs::File) -> Vec<u8> {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        master.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5u8)) {
        Ok(n)
            if n > 0
                && fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLIN)) =>
        {
            let mut chunk = [0u8; 4096];
            match master.read(&mut chunk) {
                Ok(n) => chunk[..n].to_vec(),
                Err(_) => Vec::new(),
            }
        }
        _ => {
            // POLLHUP while no slave is open: do not spin.
            std::thread::sleep(Duration::from_millis(5));
            Vec::new()
        }
    }
}

/// The curve segments the gateway's serial adapter logged at trace level (target
/// `icu_gateway::serial_protocols`, message "serial curve segment"), per MDC code in log order,
/// each as its positions: `Some(bin)` or `None` for a gap.
pub fn logged_curves(log: &str) -> std::collections::BTreeMap<u32, Vec<Option<u16>>> {
    let mut curves: std::collections::BTreeMap<u32, Vec<Option<u16>>> = Default::default();
    for line in log.lines().filter(|l| l.contains("serial curve segment")) {
        let line = strip_ansi(line);
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(key).map(str::to_owned))
        };
        let (Some(code), Some(curve)) = (field("mdc_code="), field("curve=")) else {
            continue;
        };
        let Ok(code) = code.parse::<u32>() else {
            continue;
        };
        curves
            .entry(code)
            .or_default()
            .extend(
                curve
                    .split(',')
                    .map(|s| if s == "_" { None } else { s.parse().ok() }),
            );
    }
    curves
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
