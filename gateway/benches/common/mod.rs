//! Shared pieces of the throughput benches (`ingest`, `replay`): the gateway as a child process
//! (`icu-gateway run --config ...`, so its RSS is its own), a private mosquitto and tansu, the
//! PCD-01 message they send, argument parsing and percentiles.
//!
//! Every helper process is started on a free loopback port with its files in its own folder and
//! is stopped when its guard is dropped.

#![allow(dead_code)] // each bench uses a subset

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The gateway id every bench config uses (topics, stored records).
pub const GATEWAY_ID: &str = "bench";

/// Topics the bridge needs (it refuses to forward to a missing topic).
pub const TOPICS: &[&str] = &[
    "icu.observations",
    "icu.alarms",
    "icu.adt",
    "icu.deadletter",
    "icu.audit",
];

// ---------------------------------------------------------------------------------------------
// Arguments: `--name value` after `cargo bench ... --`, else the env var ICU_BENCH_<NAME>.

pub struct Args {
    values: HashMap<String, String>,
}

impl Args {
    /// Parses `--name value` and `--name=value` pairs; `--bench` (added by cargo) is ignored.
    pub fn parse() -> Args {
        let mut values = HashMap::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                continue;
            };
            if name == "bench" {
                continue;
            }
            if let Some((k, v)) = name.split_once('=') {
                values.insert(k.to_owned(), v.to_owned());
            } else if let Some(v) = it.next_if(|v| !v.starts_with("--")) {
                values.insert(name.to_owned(), v);
            } else {
                values.insert(name.to_owned(), "true".to_owned());
            }
        }
        Args { values }
    }

    /// The value of `--name` (or env `ICU_BENCH_NAME`, dashes as underscores), else `default`.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        let env = format!("ICU_BENCH_{}", name.replace('-', "_").to_uppercase());
        self.values
            .get(name)
            .cloned()
            .or_else(|| std::env::var(env).ok())
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{name} {v}: not a valid value"))
            })
            .unwrap_or(default)
    }

    /// A comma-separated list.
    pub fn list<T: std::str::FromStr>(&self, name: &str, default: &str) -> Vec<T> {
        let s: String = self.get(name, default.to_owned());
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                p.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("--{name} {s}: '{p}' is not a valid value"))
            })
            .collect()
    }

    /// The value of `--name` (or its env var), if given.
    pub fn opt(&self, name: &str) -> Option<String> {
        let env = format!("ICU_BENCH_{}", name.replace('-', "_").to_uppercase());
        self.values
            .get(name)
            .cloned()
            .or_else(|| std::env::var(env).ok())
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name, false)
    }
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `target/bench-cache`: cached backlogs and the benches' scratch folders (same disk as the
/// store would be, not a tmpfs).
pub fn cache_dir() -> PathBuf {
    let d = target_dir().join("bench-cache");
    std::fs::create_dir_all(&d).expect("create target/bench-cache");
    d
}

/// A scratch folder under [`cache_dir`], removed on drop.
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(cache_dir())
        .expect("scratch dir")
}

pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_icu-gateway"))
}

pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ICU_TANSU_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache"));
    cache.join("icu-gateway/tansu-0.6.0/bin/tansu")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Size of a file, 0 if missing.
pub fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `<db>` and `<db>-wal` sizes.
pub fn db_sizes(db: &Path) -> (u64, u64) {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    (file_size(db), file_size(Path::new(&wal)))
}

// ---------------------------------------------------------------------------------------------
// Devices and the gateway config.

/// `bed-0001`.
pub fn bed_id(b: usize) -> String {
    format!("bed-{b:04}")
}
/// `mon-0001`: a PCD-01 monitor over MLLP.
pub fn monitor_id(b: usize) -> String {
    format!("mon-{b:04}")
}
/// `pump-0001`: an MQTT device.
pub fn pump_id(b: usize) -> String {
    format!("pump-{b:04}")
}
/// The monitor's EUI-64 (its `match` in the config, MSH-3.2 and OBX-18 in its messages).
pub fn eui(b: usize) -> String {
    format!("0012AB{b:010X}")
}

/// What to put in a bench gateway's config.
pub struct GatewaySpec {
    pub dir: PathBuf,
    /// `full` or `normal`.
    pub synchronous: String,
    /// Beds `1..=monitors` each get a PCD-01 monitor `mon-NNNN`.
    pub monitors: usize,
    /// Beds `1..=pumps` each get an MQTT device `pump-NNNN` (needs `mqtt_port`).
    pub pumps: usize,
    pub mqtt_port: Option<u16>,
    /// Kafka bootstrap; `None`: store only (the bridge does not run).
    pub kafka: Option<String>,
    /// Extra lines for `[store]` (e.g. `max_batch = 1024`).
    pub store_extra: String,
}

impl GatewaySpec {
    pub fn toml(&self) -> String {
        let mut s = format!(
            "gateway_id = \"{GATEWAY_ID}\"\ndata_dir = \"{}\"\nclock = \"synced\"\n\n\
             [mllp]\nlisten = \"127.0.0.1:0\"\nmax_connections = 4096\nmax_connections_per_address = 4096\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\n\n\
             [store]\nfile = \"gateway.db\"\nsynchronous = \"{}\"\ndisk_budget_mb = 200000\n{}\n\n\
             [signing]\nkey_file = \"{}\"\n\n",
            self.dir.display(),
            self.synchronous,
            self.store_extra,
            self.dir.join("gateway.key").display(),
        );
        if let Some(k) = &self.kafka {
            s.push_str(&format!("[kafka]\nbootstrap = \"{k}\"\n\n"));
        }
        if let Some(port) = self.mqtt_port {
            s.push_str(&format!(
                "[mqtt]\nbroker_port = {port}\nclient_id = \"bench-gateway\"\n\n"
            ));
        }
        for b in 1..=self.monitors.max(self.pumps) {
            s.push_str(&format!("[[beds]]\nid = \"{}\"\n", bed_id(b)));
        }
        for b in 1..=self.monitors {
            s.push_str(&format!(
                "[[devices]]\nid = \"{}\"\nbed = \"{}\"\nprotocol = \"pcd01\"\nmatch = \"{}\"\nsilent_after_s = 3600\n",
                monitor_id(b),
                bed_id(b),
                eui(b)
            ));
        }
        for b in 1..=self.pumps {
            s.push_str(&format!(
                "[[devices]]\nid = \"{}\"\nbed = \"{}\"\nprotocol = \"mqtt\"\nsilent_after_s = 3600\n",
                pump_id(b),
                bed_id(b)
            ));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway process.

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Endpoints {
    pub mllp: SocketAddr,
    pub http: SocketAddr,
}

/// `icu-gateway run --config <dir>/gateway.toml`, killed on drop.
pub struct Gateway {
    pub dir: PathBuf,
    pub endpoints: Endpoints,
    child: Option<Child>,
    log: PathBuf,
}

impl Gateway {
    /// Writes the config (and a key when Kafka is configured), starts the gateway and waits for
    /// its `endpoints.json`.
    pub fn start(spec: &GatewaySpec) -> Gateway {
        std::fs::create_dir_all(&spec.dir).expect("gateway dir");
        let key = spec.dir.join("gateway.key");
        if spec.kafka.is_some() && !key.exists() {
            let out = Command::new(gateway_bin())
                .args(["keygen", "--out"])
                .arg(&key)
                .output()
                .expect("icu-gateway keygen");
            assert!(out.status.success(), "keygen: {out:?}");
        }
        let config = spec.dir.join("gateway.toml");
        std::fs::write(&config, spec.toml()).expect("write config");
        let ep = spec.dir.join("endpoints.json");
        let _ = std::fs::remove_file(&ep);
        let log = spec.dir.join("gateway.log");
        let out = std::fs::File::create(&log).expect("gateway log");
        let child = Command::new(gateway_bin())
            .args(["run", "--config"])
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("ICU_BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("spawn icu-gateway");
        let mut g = Gateway {
            dir: spec.dir.clone(),
            endpoints: Endpoints {
                mllp: "127.0.0.1:1".parse().expect("addr"),
                http: "127.0.0.1:1".parse().expect("addr"),
            },
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(Ok(Some(status))) = g.child.as_mut().map(Child::try_wait) {
                panic!("gateway exited with {status}:\n{}", g.log_tail(40));
            }
            if let Some(e) = std::fs::read_to_string(&ep)
                .ok()
                .and_then(|t| serde_json::from_str::<Endpoints>(&t).ok())
            {
                g.endpoints = e;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready after 120 s:\n{}",
                g.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("gateway.db")
    }

    /// `(VmRSS, VmHWM)` in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        proc_memory_kib(self.pid())
    }

    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        http_get_json(self.endpoints.http, "/api/status")
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM (the store commits what it holds), then wait up to 30 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `(VmRSS, VmHWM)` of a process in KiB (0 when unreadable).
pub fn proc_memory_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples a process's VmRSS every 500 ms until dropped; keeps the largest.
pub struct RssSampler {
    max: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        use std::sync::atomic::Ordering;
        let max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(proc_memory_kib(pid).0, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        RssSampler { max, stop }
    }

    /// Largest VmRSS seen, KiB.
    pub fn max_kib(&self) -> u64 {
        self.max.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A plain HTTP/1.1 GET returning the JSON body.
pub fn http_get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP body"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    Ok(serde_json::from_str(body)?)
}

// ---------------------------------------------------------------------------------------------
// Brokers.

/// A child process killed (and reaped) on drop, with its folder.
pub struct Service {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}");
        }
        assert!(Instant::now() < deadline, "{what} not listening after 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private mosquitto: no persistence, no logging of packets, a deep queue for the gateway's
/// session (so a slow gateway never makes mosquitto drop QoS 1 messages).
pub fn start_mosquitto() -> Service {
    let port = free_port();
    let dir = scratch("mosquitto-");
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 100\nlog_dest stderr\nlog_type error\n"
        ),
    )
    .expect("mosquitto conf");
    let log = std::fs::File::create(dir.path().join("mosquitto.log")).expect("mosquitto log");
    let bin = std::env::var_os("ICU_MOSQUITTO_BIN").unwrap_or_else(|| "/usr/sbin/mosquitto".into());
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("fd"))
        .stderr(log)
        .spawn()
        .expect("spawn mosquitto (apt-get install mosquitto, or set ICU_MOSQUITTO_BIN)");
    wait_port(port, "mosquitto", &mut child);
    Service { port, dir, child }
}

/// A tansu Kafka-protocol broker (in-memory storage) with the gateway's topics.
pub fn start_tansu() -> Service {
    let port = free_port();
    let dir = scratch("tansu-");
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("tansu.log")).expect("tansu log");
    let bin = tansu_bin();
    assert!(
        bin.is_file(),
        "tansu not found at {} (scripts/test installs it; or set ICU_TANSU_BIN)",
        bin.display()
    );
    let mut cmd = Command::new(&bin);
    cmd.arg("broker")
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .args(["--cluster-id", &format!("icu-bench-{port}")])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("fd"))
        .stderr(log);
    for var in [
        "CLUSTER_ID",
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "DATA_LAKE",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("spawn tansu");
    wait_port(port, "tansu", &mut child);
    for topic in TOPICS {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new(&bin)
                .args([
                    "topic",
                    "create",
                    topic,
                    "--broker",
                    &url,
                    "--partitions",
                    "3",
                ])
                .current_dir(dir.path())
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .expect("tansu topic create");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() || text.contains("already exists") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tansu topic create {topic}: {text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Service { port, dir, child }
}

// ---------------------------------------------------------------------------------------------
// The PCD-01 message.

/// Metrics a monitor reports: MDC code, a value inside every default alarm limit, the
/// reference range. Codes and units are written as the built-in terminology names them.
pub const METRICS: &[(u32, &str, &str)] = &[
    (147842, "72", "50-120"),
    (150456, "97", "90-100"),
    (150301, "128", "90-160"),
    (150302, "78", "50-90"),
    (150303, "95", "60-110"),
    (151562, "16", "8-30"),
    (150364, "37.2", "35.5-38.5"),
];

/// `(OBX-3, OBX-5, OBX-6, OBX-7)` of each metric, from the built-in terminology.
fn metric_rows() -> &'static [(String, &'static str, String, &'static str)] {
    static ROWS: std::sync::OnceLock<Vec<(String, &'static str, String, &'static str)>> =
        std::sync::OnceLock::new();
    ROWS.get_or_init(|| {
        let t = icu_drivers::terminology::Terminology::builtin();
        METRICS
            .iter()
            .map(|&(code, value, range)| {
                let term = t.by_mdc(code).expect("metric in the terminology");
                let unit = t.unit(term.unit_mdc_code).expect("unit in the terminology");
                (
                    format!("{code}^{}^MDC", term.refid),
                    value,
                    format!("{}^{}^MDC", unit.unit_mdc_code, unit.refid),
                    range,
                )
            })
            .collect()
    })
}

/// A bedside monitor's ORU^R01 (IHE PCD-01): MSH, PID, PV1, OBR, the MDS row and `obx` metric
/// rows (about 1.6 KB with 15). Control id `B<bed>-<n>`, so every message is new to the dedup.
pub fn pcd01(bed: usize, n: u64, obx: usize, ts: &str) -> Vec<u8> {
    let eui = eui(bed);
    let mut s = String::with_capacity(256 + obx * 110);
    use std::fmt::Write as _;
    let _ = write!(
        s,
        "MSH|^~\\&|BENCH^{eui}^EUI-64|BENCH|ICU_GW|HOSP|{ts}||ORU^R01^ORU_R01|B{bed}-{n}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
         PID|||P{bed:06}^^^HOSP^MR||DOE^JOHN^^^^^L\r\
         PV1||I|ICU1^{bed}^A^HOSP\r\
         OBR|1|B{bed}-{n}^BENCH^{eui}^EUI-64|B{bed}-{n}^BENCH^{eui}^EUI-64|182777000^monitoring of patient^SCT|||{ts}\r\
         OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^^{eui}^EUI-64"
    );
    for i in 0..obx {
        let rows = metric_rows();
        let (code, value, unit, range) = &rows[i % rows.len()];
        let _ = write!(
            s,
            "\rOBX|{}|NM|{code}|1.1.1.{}|{value}|{unit}|{range}||||R||||||AMEAS^auto-measurement^MDC",
            i + 2,
            i + 1
        );
    }
    s.into_bytes()
}

/// One decoded message per bed (`obx` readings each), as the device actor hands them to the
/// store: the templates the store benches write from.
#[allow(dead_code)] // not every bench writes the store directly
pub fn decoded_templates(
    beds: usize,
    obx: usize,
    now_us: i64,
) -> Vec<Vec<icu_protos::v1::Observation>> {
    let terminology = icu_drivers::terminology::Terminology::builtin();
    (1..=beds)
        .map(|b| {
            let raw = pcd01(b, 0, obx, "20250101120000+0000");
            icu_drivers::hl7::decode_pcd01(&raw, now_us, &terminology)
                .expect("bench message decodes")
                .observations
        })
        .collect()
}

/// HL7 timestamp of now (`YYYYMMDDHHMMSS.sss+0000`).
pub fn hl7_now() -> String {
    chrono::Utc::now()
        .format("%Y%m%d%H%M%S%.3f+0000")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Statistics.

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn sort(v: &mut [f64]) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `perf record` on a process for `seconds`, if `--perf <file>` was given (cpu-clock, call
/// graphs); returns the child to wait for.
pub fn perf_record(out: &Path, pid: u32, seconds: u64) -> Option<Child> {
    Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "499", "-g", "-o"])
        .arg(out)
        .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf not started: {e}"))
        .ok()
}
