//! Simulated serial devices on pseudo-terminals.
//!
//! A pty is a real tty: the gateway opens the slave side exactly as it would open /dev/ttyUSB0.
//! Each simulated device owns a pty pair, sets the line to raw mode, and publishes the slave's
//! path under a stable name (a symlink such as `<dir>/spo2-01`) that the gateway config names.
//! A "cable pull" closes the pair (the gateway's reads fail with EIO); "plugging it back" opens a
//! new pair and points the symlink at it, and the gateway reopens the same configured path.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use crate::physiology::Patient;

/// One pty pair with its published path. Only the master side stays open here: the line
/// counts as connected while the gateway holds the slave open (see [`Pty::connected`]).
pub struct Pty {
    pub master: File,
    pub slave_path: PathBuf,
    pub link: PathBuf,
}

impl Pty {
    /// Whether someone (the gateway) has the slave side open: a master reports POLLHUP while
    /// no slave is open.
    pub fn connected(&self) -> bool {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.master.as_fd(),
            nix::poll::PollFlags::empty(),
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP)),
            Err(_) => false,
        }
    }
}

/// Opens a pty pair in raw mode and points `link` at its slave.
pub fn open_pty(link: &Path) -> anyhow::Result<Pty> {
    let pair = openpty(None, None).context("openpty")?;
    let mut t = tcgetattr(&pair.slave).context("tcgetattr")?;
    cfmakeraw(&mut t);
    tcsetattr(&pair.slave, SetArg::TCSANOW, &t).context("tcsetattr")?;
    let slave_path = nix::unistd::ttyname(&pair.slave).context("ttyname")?;
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&slave_path, &tmp)
        .with_context(|| format!("symlink {}", tmp.display()))?;
    std::fs::rename(&tmp, link).with_context(|| format!("publishing {}", link.display()))?;
    let slave: OwnedFd = pair.slave;
    drop(slave);
    Ok(Pty {
        master: File::from(pair.master),
        slave_path,
        link: link.to_owned(),
    })
}

/// Controls of a running simulated serial device.
#[derive(Default)]
pub struct SerialControl {
    /// While true the cable is pulled: the pty is closed and nothing is sent.
    pub unplugged: AtomicBool,
    pub stop: AtomicBool,
    /// Lines (records) written so far.
    pub records: AtomicU64,
    /// Bytes of garbage to inject before the next record (0 = none).
    pub garbage: AtomicU64,
}

/// One Masimo ASCII 1 line for the given values (dashes for a missing value, as the device does).
pub fn masimo_line(
    time: chrono::DateTime<chrono::Utc>,
    serial: &str,
    spo2: Option<f64>,
    bpm: Option<f64>,
    pi: Option<f64>,
    exc: u32,
) -> String {
    let spo2 = spo2.map_or("---".to_string(), |v| format!("{:03}", v as i64));
    let bpm = bpm.map_or("---".to_string(), |v| format!("{:03}", v as i64));
    let pi = pi.map_or("--.--".to_string(), |v| format!("{v:05.2}"));
    format!(
        "{} SN={serial} SPO2={spo2}% BPM={bpm} PI={pi}% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC={exc:06X}\r\n",
        time.format("%m/%d/%y %H:%M:%S")
    )
}

/// Runs a simulated Masimo oximeter on a pty at `link`, one line per `period`, until stopped.
/// Every value written is reported through `on_record` (time, spo2, bpm, pi) for accounting.
pub fn run_masimo(
    link: PathBuf,
    serial: String,
    seed: u64,
    period: Duration,
    control: Arc<SerialControl>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut pty = Some(open_pty(&link)?);
    Ok(std::thread::spawn(move || {
        let mut patient = Patient::new(seed);
        let mut connected_since: Option<std::time::Instant> = None;
        while !control.stop.load(Ordering::Relaxed) {
            if control.unplugged.load(Ordering::Relaxed) {
                if pty.take().is_some() {
                    // Unpublish the port: the old /dev/pts number may be reused by another
                    // program's pty, and a gateway reopening a stale link would read it.
                    let _ = std::fs::remove_file(&link);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if pty.is_none() {
                match open_pty(&link) {
                    Ok(p) => pty = Some(p),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            }
            let Some(p) = pty.as_mut() else { continue };
            // A device writes into a cable nobody listens to only as lost bytes; and the
            // gateway's port open flushes the line: start once it has been open a moment.
            if !p.connected() {
                connected_since = None;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let since = *connected_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < Duration::from_millis(300) {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let garbage = control.garbage.swap(0, Ordering::Relaxed);
            if garbage > 0 {
                let junk: Vec<u8> = (0..garbage).map(|i| b"\x07#~?"[i as usize % 4]).collect();
                let _ = p.master.write_all(&junk);
                let _ = p.master.write_all(b"\r\n");
            }
            let v = patient.step();
            let line = masimo_line(
                chrono::Utc::now(),
                &serial,
                Some(v.spo2),
                Some(v.heart_rate),
                Some(2.5),
                0x000800,
            );
            if p.master.write_all(line.as_bytes()).is_ok() {
                control.records.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(period);
        }
        drop(pty);
        let _ = std::fs::remove_file(&link);
    }))
}

/// Measured values a simulated ventilator reports (MEDIBUS CP1 codes), from the patient.
pub fn ventilator_values(v: &crate::physiology::Vitals) -> Vec<icu_drivers::medibus::MedibusValue> {
    use icu_drivers::medibus::MedibusValue as V;
    vec![
        V::number(0x7D, 22.0),
        V::number(0x78, 5.0),
        V::number(0x88, 480.0),
        V::number(0xB9, 7.7),
        V::number(0xD6, v.resp_rate),
        V::number(0xF0, 40.0),
        V::number(0xEB, v.spo2),
        V::number(0xE1, v.heart_rate),
    ]
}

/// Runs a simulated Dräger ventilator on a pty at `link`: answers the gateway's MEDIBUS polls
/// (ICC, identification, measured data, limits, alarms, settings, NOP) until stopped, and once
/// the gateway configures and enables realtime transmission also streams realtime curves
/// (airway pressure, flow, volume: [`crate::ventilator`]) on the same line. Measured values
/// follow the patient, updated every `period`; `records` counts measured-data answers.
pub fn run_medibus(
    link: PathBuf,
    seed: u64,
    period: Duration,
    control: Arc<SerialControl>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    use icu_drivers::medibus::{DeviceIdentity, MedibusValue, SampleByteOrder};

    use crate::ventilator::VentilatorSim;

    let mut pty = Some(open_pty(&link)?);
    Ok(std::thread::spawn(move || {
        let mut patient = Patient::new(seed);
        let mut sim = VentilatorSim::new(
            DeviceIdentity {
                device_id: "0161".into(),
                name: "EvitaXL".into(),
                revision: "04.03".into(),
            },
            SampleByteOrder::LowFirst,
        );
        sim.device.low_limits = vec![
            MedibusValue::number(0x7D, 10.0),
            MedibusValue::number(0xD6, 8.0),
        ];
        sim.device.high_limits = vec![
            MedibusValue::number(0x7D, 40.0),
            MedibusValue::number(0xD6, 30.0),
        ];
        sim.device.date_time = "12:00:00 01-JAN-25".into();
        let started = std::time::Instant::now();
        let mut next_update = started;
        let mut buf = Vec::new();
        while !control.stop.load(Ordering::Relaxed) {
            if control.unplugged.load(Ordering::Relaxed) {
                if pty.take().is_some() {
                    // Unpublish the port: the old /dev/pts number may be reused by another
                    // program's pty, and a gateway reopening a stale link would read it.
                    let _ = std::fs::remove_file(&link);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if pty.is_none() {
                match open_pty(&link) {
                    Ok(p) => {
                        pty = Some(p);
                        sim.reset_line();
                    }
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            }
            if std::time::Instant::now() >= next_update {
                let v = patient.step();
                sim.resp_rate = v.resp_rate;
                sim.device.measured = ventilator_values(&v);
                next_update = std::time::Instant::now() + period;
            }
            let Some(p) = pty.as_mut() else { continue };
            if control.garbage.swap(0, Ordering::Relaxed) > 0 {
                // A response with a corrupt checksum, as line noise would make it.
                let _ = p.master.write_all(b"\x01$7D  22 00\r");
            }
            let mut incoming = bytes::BytesMut::new();
            let n = drain_into(&mut p.master, &mut incoming);
            buf.clear();
            if n > 0 {
                let before = sim.measured_answers;
                buf.extend(sim.on_bytes(&incoming));
                control
                    .records
                    .fetch_add(sim.measured_answers - before, Ordering::Relaxed);
            }
            buf.extend(sim.realtime_until(started.elapsed().as_micros() as u64));
            if !buf.is_empty() {
                let _ = p.master.write_all(&buf);
            } else if n == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(pty);
        let _ = std::fs::remove_file(&link);
    }))
}

/// Non-blocking read of what the gateway wrote into `buf`; returns bytes read (0 if none).
fn drain_into(master: &mut File, buf: &mut bytes::BytesMut) -> usize {
    use std::os::fd::AsFd;
    let mut fds = [nix::poll::PollFd::new(
        master.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u8)) {
        Ok(n) if n > 0 => {
            let mut chunk = [0u8; 1024];
            match master.read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    n
                }
                Err(_) => 0,
            }
        }
        _ => 0,
    }
}

/// Reads whatever the gateway wrote (keeps the pty's buffer from filling); returns bytes read.
pub fn drain(master: &mut File) -> usize {
    let mut buf = [0u8; 4096];
    master.read(&mut buf).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masimo_line_has_the_documented_shape() {
        let t = chrono::DateTime::parse_from_rfc3339("2025-01-15T10:22:07Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            masimo_line(t, "0000012345", Some(97.0), Some(72.0), Some(2.45), 0x800),
            "01/15/25 10:22:07 SN=0000012345 SPO2=097% BPM=072 PI=02.45% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000800\r\n"
        );
        assert!(masimo_line(t, "1", None, None, None, 1).contains("SPO2=---% BPM=--- PI=--.--%"));
    }

    #[test]
    fn pty_link_points_at_a_real_tty() {
        let dir = tempfile_dir();
        let link = dir.join("dev0");
        let pty = open_pty(&link).unwrap();
        let target = std::fs::read_link(&link).unwrap();
        assert_eq!(target, pty.slave_path);
        assert!(target.starts_with("/dev/pts/"), "{}", target.display());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("icu-sim-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
