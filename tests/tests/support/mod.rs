//! Running the real `icu-gateway` and `icu-sim` binaries for the end-to-end tests.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use icu_tests::{bin_path, wait_for};

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Endpoints {
    pub mllp: SocketAddr,
    pub http: SocketAddr,
}

/// A gateway process with its own data folder.
pub struct GatewayProc {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub endpoints: Endpoints,
    child: Option<Child>,
    log: PathBuf,
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
/// desaturating bed alarms within seconds and steady beds do not (e2e_alarms.rs and
/// e2e_page.rs carry the same limit with their own copies). It must come before the generated
/// `[[beds]]`.
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
    pub fn start(dir: &Path, config: &str) -> GatewayProc {
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        // The test accounts exist before the gateway starts (as the installer makes the first).
        icu_tests::http::prepare_accounts(&config_path)
            .unwrap_or_else(|e| panic!("test accounts: {e}"));
        let mut g = GatewayProc {
            dir: dir.to_owned(),
            config_path,
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
        let child = Command::new(bin_path("icu-gateway"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            // ICU_GATEWAY_LOG: another filter, e.g. `info,icu_gateway=debug,icu_cloud_bridge=debug`.
            .env(
                "RUST_LOG",
                std::env::var("ICU_GATEWAY_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| "info,icu_gateway=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting icu-gateway");
        self.child = Some(child);
        let endpoints: Endpoints =
            wait_for(Duration::from_secs(60), "gateway endpoints.json", || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("gateway exited with {status}; log:\n{}", self.log_text());
                    }
                }
                let text = std::fs::read_to_string(&ep).ok()?;
                serde_json::from_str(&text).ok()
            })
            .unwrap_or_else(|e| panic!("{e}; log:\n{}", self.log_text()));
        icu_tests::http::register(endpoints.http, &self.config_path)
            .unwrap_or_else(|e| panic!("test accounts: {e}"));
        self.endpoints = endpoints;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

/// An open-ended `icu-sim pcd01` run in the background (it retries an un-ACKed message up to
/// `--max-attempts` times, so it rides out gateway restarts); [`SimProc::stop`] ends it with
/// SIGTERM and reads its manifest of acknowledged observations.
pub struct SimProc {
    child: Option<Child>,
    manifest: PathBuf,
    out: PathBuf,
}

impl SimProc {
    /// `icu-sim pcd01` against `mllp` with `beds` beds at `rate` messages/s per bed, running
    /// until stopped, with `extra` arguments (e.g. `--scenario`).
    pub fn start(
        mllp: SocketAddr,
        beds: usize,
        rate: f64,
        manifest: &Path,
        extra: &[&str],
    ) -> SimProc {
        let out = manifest.with_extension("out");
        let log = std::fs::File::create(&out).unwrap();
        let child = Command::new(bin_path("icu-sim"))
            .args(["pcd01", "--target", &mllp.to_string()])
            .args(["--beds", &beds.to_string(), "--rate", &rate.to_string()])
            .args(["--duration-secs", "86400", "--max-attempts", "1000000"])
            .arg("--manifest")
            .arg(manifest)
            .args(extra)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting icu-sim");
        SimProc {
            child: Some(child),
            manifest: manifest.to_owned(),
            out,
        }
    }

    /// SIGTERM, wait for the sender to finish its report, and read the manifest.
    pub fn stop(mut self) -> SimRun {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let status = wait_for(Duration::from_secs(60), "icu-sim to stop", || {
            c.try_wait().ok().flatten()
        })
        .unwrap_or_else(|e| {
            let _ = c.kill();
            panic!("{e}")
        });
        let accepted = std::fs::read_to_string(&self.manifest)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("manifest line"))
            .collect();
        SimRun {
            ok: status.success(),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            accepted,
        }
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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

/// GET a JSON document (status 200 only) as the test physician `dr.test`, or with the service
/// token for `/metrics` (see `icu_tests::http`).
pub fn http_get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = icu_tests::http::authed(addr, "GET", path, None)?;
    anyhow::ensure!(r.status == 200, "status: {}\n{}", r.head, r.body);
    r.json()
}

/// A request with a JSON body as `dr.test`; returns the JSON answer (status 200 only).
pub fn http_send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let r = icu_tests::http::authed(addr, method, path, Some(body))?;
    anyhow::ensure!(r.status == 200, "status: {}\n{}", r.head, r.body);
    r.json()
}

pub fn http_post_json(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    http_send_json(addr, "POST", path, body)
}

pub fn http_put_json(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    http_send_json(addr, "PUT", path, body)
}

/// Result of one `icu-sim pcd01` run.
pub struct SimRun {
    pub ok: bool,
    pub stdout: String,
    pub accepted: Vec<icu_sim::pcd01::SentObservation>,
}

/// Runs the real `icu-sim pcd01` binary against `mllp` and reads its manifest.
pub fn run_sim(mllp: SocketAddr, beds: usize, messages: u64, rate: f64, manifest: &Path) -> SimRun {
    run_sim_with(mllp, beds, messages, rate, manifest, &[])
}

/// As [`run_sim`], with extra `icu-sim pcd01` arguments (e.g. `--scenario`).
pub fn run_sim_with(
    mllp: SocketAddr,
    beds: usize,
    messages: u64,
    rate: f64,
    manifest: &Path,
    extra: &[&str],
) -> SimRun {
    let out = Command::new(bin_path("icu-sim"))
        .args(["pcd01", "--target", &mllp.to_string()])
        .args(extra)
        .args([
            "--beds",
            &beds.to_string(),
            "--messages",
            &messages.to_string(),
        ])
        .args(["--rate", &rate.to_string(), "--manifest"])
        .arg(manifest)
        .output()
        .expect("running icu-sim");
    let accepted = std::fs::read_to_string(manifest)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("manifest line"))
        .collect();
    SimRun {
        ok: out.status.success(),
        stdout: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        accepted,
    }
}

/// A sender on one TCP connection that reads one MLLP-framed ACK per request.
pub struct Sender {
    s: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Sender {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Self { s, buf: Vec::new() }
    }

    /// A sender on a stream connected already (e.g. from a chosen local address).
    pub fn from_stream(s: std::net::TcpStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Self { s, buf: Vec::new() }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> String {
        self.s.write_all(bytes).unwrap();
        self.read_ack()
    }

    pub fn send(&mut self, msg: &str) -> String {
        self.send_raw(&icu_drivers::mllp::encode_frame(msg.as_bytes()))
    }

    pub fn read_ack(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == [0x1C, 0x0D]) {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let start = frame
                    .iter()
                    .position(|b| *b == 0x0B)
                    .expect("ACK starts with 0x0B");
                return String::from_utf8(frame[start + 1..frame.len() - 2].to_vec()).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = self.s.read(&mut chunk).expect("reading the ACK");
            assert!(n > 0, "connection closed without an ACK");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Collects every message on the gateway's MQTT alarm topics.
pub fn mqtt_alarms(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use icu_drivers::mqtt::rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    let (client, mut connection) =
        Client::new(MqttOptions::new("nurse-call", "127.0.0.1", port), 16);
    client
        .subscribe("icu/test-gw/alarms/#", QoS::AtLeastOnce)
        .unwrap();
    std::thread::spawn(move || {
        let _client = client;
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let text = format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                    keep.lock().unwrap().push(text);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    got
}
