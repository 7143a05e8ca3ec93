//! The real `icu-gateway` binary as a child process with its own data folder ([`GatewayProc`]),
//! the config text the end-to-end tests give it ([`config_text`], [`SPO2_LOW_ALARM`]) and
//! `icu-gateway keygen` ([`keygen`]).
//!
//! A started gateway has the test accounts of [`crate::http`] (made with the real
//! `icu-gateway user add` / `token add` commands before it starts) and is registered with
//! [`crate::http::authed`], so API requests to it carry a login. The benches start it through
//! [`GatewayProc::start_with`] with their own binary (the release build) and log filter.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use icu_gateway::app::Endpoints;

use crate::http::http_get_json;
use crate::process::log_tail;
use crate::{bin_path, wait_for};

/// A gateway process with its own data folder (`<dir>/gateway.toml`, its log
/// `<dir>/gateway.log`), killed on drop.
pub struct GatewayProc {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub endpoints: Endpoints,
    launch: Launch,
    child: Option<Child>,
    log: PathBuf,
}

/// How a [`GatewayProc`] is started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `icu-gateway` binary (it also makes the test accounts, with `user add`/`token add`).
    pub bin: PathBuf,
    /// The gateway's `RUST_LOG`.
    pub log_filter: String,
    /// How long it may take to write its `endpoints.json`.
    pub ready_within: Duration,
    /// Extra environment variables (secrets given the systemd way, e.g. a Kafka password).
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// The end-to-end tests' launch: the debug binary ([`bin_path`]), log filter
    /// `ICU_GATEWAY_LOG` (e.g. `info,icu_gateway=debug,icu_cloud_bridge=debug`), else
    /// `info,icu_gateway=debug`; ready within 60 s.
    pub fn tests() -> Launch {
        Launch {
            bin: bin_path("icu-gateway"),
            log_filter: std::env::var("ICU_GATEWAY_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "info,icu_gateway=debug".into()),
            ready_within: Duration::from_secs(60),
            env: Vec::new(),
        }
    }
}

/// Config text for a gateway serving the simulator's `beds` monitors.
pub fn config_text(dir: &Path, beds: usize, kafka: Option<&str>, extra_store: &str) -> String {
    let mut s = format!(
        "gateway_id = \"test-gw\"\ndata_dir = \"{}\"\nclock = \"synced\"\n\n[mllp]\nlisten = \"127.0.0.1:0\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[store]\nsynchronous = \"normal\"\n{extra_store}\n\n",
        dir.display()
    );
    if let Some(k) = kafka {
        s.push_str(&format!(
            "[kafka]\nbootstrap = \"{k}\"\nmessage_timeout_ms = 5000\n\n"
        ));
    }
    s.push_str(&icu_sim::gateway_config_blocks(&icu_sim::beds(beds)));
    s
}

/// An `[alarms]` section with only an SpO2 low limit (90 %) sustained 2 s of event time, so a
/// desaturating bed alarms within seconds and steady beds do not. It must come before the
/// generated `[[beds]]`.
pub const SPO2_LOW_ALARM: &str = r#"
[alarms]
rates = []
[alarms.news2]
enabled = false
[[alarms.limits]]
id = "spo2"
label = "SpO2"
mdc_codes = [150456]
low = 90.0
priority = "medium"
sustain_s = 2
hysteresis = 1.0
"#;

/// `icu-gateway keygen` into `dir`; returns the public key path.
pub fn keygen(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("gateway.key");
    let out = Command::new(bin_path("icu-gateway"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .expect("running icu-gateway keygen");
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("gateway.pub")
}

impl GatewayProc {
    /// Writes `config` to `<dir>/gateway.toml`, makes the test accounts, starts the gateway
    /// ([`Launch::tests`]) and waits for its endpoints.
    pub fn start(dir: &Path, config: &str) -> GatewayProc {
        GatewayProc::start_with(dir, config, Launch::tests())
    }

    /// As [`GatewayProc::start`], launched as `launch` says.
    pub fn start_with(dir: &Path, config: &str, launch: Launch) -> GatewayProc {
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        // The test accounts exist before the gateway starts (as the installer makes the first).
        crate::http::prepare_accounts_with(&launch.bin, &config_path)
            .unwrap_or_else(|e| panic!("test accounts: {e}"));
        let mut g = GatewayProc {
            dir: dir.to_owned(),
            config_path,
            launch,
            endpoints: Endpoints {
                mllp: "127.0.0.1:1".parse().unwrap(),
                http: "127.0.0.1:1".parse().unwrap(),
            },
            child: None,
            log: dir.join("gateway.log"),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let ep = self.dir.join("endpoints.json");
        let _ = std::fs::remove_file(&ep);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.launch.bin)
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", &self.launch.log_filter)
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting icu-gateway");
        self.child = Some(child);
        let endpoints: Endpoints =
            wait_for(self.launch.ready_within, "gateway endpoints.json", || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("gateway exited with {status}; log:\n{}", self.log_text());
                    }
                }
                let text = std::fs::read_to_string(&ep).ok()?;
                serde_json::from_str(&text).ok()
            })
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()));
        crate::http::register(endpoints.http, &self.config_path)
            .unwrap_or_else(|e| panic!("test accounts: {e}"));
        self.endpoints = endpoints;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the gateway's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// The process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// GET a JSON document from the gateway's HTTP API.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        http_get_json(self.endpoints.http, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Graceful stop (SIGTERM) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The audit trail as `icu-gateway audit show --json` prints it, one entry a line.
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        let config = self.config_path.to_str().expect("utf-8 path");
        let args = ["audit", "show", "--config", config, "--json"];
        let out = crate::http::gateway_cli_with(&self.launch.bin, &args, "").expect("audit show");
        out.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("gateway.db")
    }

    /// SIGKILL and reap: no shutdown code runs, as in a crash. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the gateway again on the same data folder and config (so on the same ports when
    /// the config names them), killing it first if it still runs; waits for its endpoints.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
