//! `icu-gateway check-config --probe`: beyond the file, whether what it names is there and
//! answers, as an installer or a biomedical engineer checks a gateway before (or while) it runs.
//!
//! Owns: the probes, one file per kind: `serial.rs` (each serial port opened with its line
//! settings), `kafka.rs` (the brokers with the bridge's own TLS/SASL settings, every topic the
//! gateway produces to present with the settings it needs), `mqtt.rs` (a login with the
//! configured credentials and TLS), `files.rs` (the signing key; every certificate's expiry and
//! key), `disk.rs` (the data directory writable, room for the disk budget) and
//! `alarm_manager.rs` (a TCP, or TLS, connection); [`Check`] and [`ProbeOptions`] in `check.rs`.
//!
//! Guarantees:
//! - One line per check: `OK   <what>`, `FAIL <what>: <why>; <what to do>`, or `SKIP <what>:
//!   <why>` for a part the config does not have; the last line is `<file>: valid` only when no
//!   check failed, else `<file>: N check(s) failed` ([`Report::render`]; [`Report::json`] for
//!   machines). [`command`] prints it and gives the exit code: 0 all passed, 1 a probe failed,
//!   78 ([`EX_CONFIG`]) the file is not valid (nothing probed; its problems on stderr).
//! - Every probe has its own bound (`ProbeOptions::timeout`) and they run at the same time, so
//!   the whole probe takes about one timeout at most, whatever does not answer.
//! - Nothing is changed: no patient data is sent, no topic created, nothing produced or
//!   published; the MQTT login uses its own client id with a clean session; a serial port is
//!   opened and closed like the gateway opens it, nothing written.

mod alarm_manager;
mod check;
mod disk;
mod files;
mod kafka;
mod mqtt;
mod serial;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub use check::{parse_duration, Check, ProbeOptions, Status};

use crate::config::{Config, ConfigError};

/// sysexits.h `EX_CONFIG`: `check-config`'s exit code for a file that is not valid.
pub const EX_CONFIG: i32 = 78;

/// `check-config --probe`: prints the report (or, for a file that is not valid, its problems on
/// stderr and one FAIL line) and returns the exit code: 0 all passed, 1 a probe failed,
/// [`EX_CONFIG`] the file is not valid.
pub fn command(loaded: Result<Config, ConfigError>, opts: &ProbeOptions, json: bool) -> i32 {
    let (report, code) = match loaded {
        Err(e) => {
            eprintln!("Error: {e}");
            let problems = match &e {
                ConfigError::Invalid { problems, .. } => problems.len(),
                _ => 1,
            };
            (Report::invalid(&opts.config_path, problems), EX_CONFIG)
        }
        Ok(cfg) => match run(&cfg, opts) {
            Ok(report) => {
                let code = if report.failed() == 0 { 0 } else { 1 };
                (report, code)
            }
            Err(e) => {
                eprintln!("Error: cannot start the probes: {e}");
                return 1;
            }
        },
    };
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.render());
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}

/// Every check's answer, in a fixed order: the file, the signing key, certificates, the data
/// directory, serial ports (in device order), Kafka, MQTT, the alarm manager.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub config: String,
    pub checks: Vec<Check>,
}

impl Report {
    /// The report of a file that is not valid: nothing was probed.
    pub fn invalid(path: &Path, problems: usize) -> Report {
        Report {
            config: path.display().to_string(),
            checks: vec![Check::fail(
                format!("config file {}", path.display()),
                format!("not valid ({problems} problem(s), listed on stderr)"),
                "fix them, then run check-config again",
            )],
        }
    }

    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }

    /// The lines, then `<file>: valid` or `<file>: N check(s) failed`.
    pub fn render(&self) -> String {
        let mut out: String = self.checks.iter().map(|c| c.line() + "\n").collect();
        match self.failed() {
            0 => out.push_str(&format!("{}: valid\n", self.config)),
            n => out.push_str(&format!("{}: {n} check(s) failed\n", self.config)),
        }
        out
    }

    /// `{"config": ..., "checks": [{"status", "what", "why", "fix"}], "failed": N, "valid": bool}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.config,
            "checks": self.checks,
            "failed": self.failed(),
            "valid": self.failed() == 0,
        })
    }
}

/// Probes everything `cfg` names, each part at the same time, each within `opts.timeout`.
/// Blocking: runs its own small runtime.
pub fn run(cfg: &Config, opts: &ProbeOptions) -> std::io::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let checks = runtime.block_on(probe_all(cfg.clone(), opts.clone()));
    // A port or broker that never answered may still hold a blocking thread: do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(Report {
        config: opts.config_path.display().to_string(),
        checks,
    })
}

async fn probe_all(cfg: Config, opts: ProbeOptions) -> Vec<Check> {
    let timeout = opts.timeout;
    let mut parts: Vec<tokio::task::JoinHandle<Vec<Check>>> = Vec::new();
    let c = cfg.clone();
    parts.push(blocking(
        timeout,
        "signing key and certificates",
        move || {
            let mut out = vec![files::signing_key(&c)];
            out.extend(files::certificates(&c));
            out.push(disk::probe(&c));
            out
        },
    ));
    for (index, device) in cfg.devices.iter().enumerate() {
        let Some(settings) = device.serial.clone() else {
            continue;
        };
        let device = device.clone();
        let what = format!("serial port {} ({})", settings.port.display(), device.id);
        parts.push(blocking(timeout, &what, move || {
            vec![serial::probe(index, &device, &settings)]
        }));
    }
    match cfg.kafka.clone() {
        Some(k) => {
            let o = opts.clone();
            let what = format!("kafka brokers {}", k.brokers);
            // Metadata, then the topics' settings: each bounded by the timeout.
            parts.push(blocking(
                timeout * 2 + Duration::from_secs(1),
                &what,
                move || kafka::probe(&k, &o),
            ));
        }
        None => parts.push(ready(Check::skip(
            "kafka",
            "no [kafka] section: readings are stored only",
        ))),
    }
    match cfg.mqtt.clone() {
        Some(m) => parts.push(tokio::spawn(
            async move { vec![mqtt::probe(&m, timeout).await] },
        )),
        None => parts.push(ready(Check::skip("mqtt", "no [mqtt] section"))),
    }
    match cfg.alarm_manager.clone() {
        Some(am) => {
            let tls = cfg.tls.clone();
            parts.push(tokio::spawn(async move {
                vec![alarm_manager::probe(&am, &tls, timeout).await]
            }))
        }
        None => parts.push(ready(Check::skip(
            "alarm manager",
            "no [alarm_manager] section: alarms go to the page and MQTT only",
        ))),
    }
    let mut out = vec![Check::ok_note(
        format!("config file {}", opts.config_path.display()),
        format!(
            "gateway {}, {} beds, {} devices",
            cfg.gateway_id,
            cfg.beds.len(),
            cfg.devices.len()
        ),
    )];
    for part in parts {
        match part.await {
            Ok(checks) => out.extend(checks),
            Err(e) => out.push(Check::fail(
                "a probe",
                e.to_string(),
                "report this as a bug",
            )),
        }
    }
    out
}

fn ready(check: Check) -> tokio::task::JoinHandle<Vec<Check>> {
    spawn_bounded(Duration::from_secs(1), "", async move { vec![check] })
}

/// Runs blocking `work` on the blocking pool, a FAIL naming `what` if it outlasts `timeout`.
fn blocking<F>(timeout: Duration, what: &str, work: F) -> tokio::task::JoinHandle<Vec<Check>>
where
    F: FnOnce() -> Vec<Check> + Send + 'static,
{
    let task = tokio::task::spawn_blocking(work);
    spawn_bounded(timeout, what, async move {
        task.await.unwrap_or_else(|e| {
            vec![Check::fail(
                "a probe",
                e.to_string(),
                "report this as a bug",
            )]
        })
    })
}

fn spawn_bounded<F>(timeout: Duration, what: &str, work: F) -> tokio::task::JoinHandle<Vec<Check>>
where
    F: Future<Output = Vec<Check>> + Send + 'static,
{
    let what = what.to_owned();
    tokio::spawn(async move {
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                vec![Check::fail(
                    what,
                    format!("no answer within {} s", timeout.as_secs_f64()),
                    "check that it is reachable and not hung (a larger --timeout may help)",
                )]
            })
    })
}

#[cfg(test)]
mod tests;
