//! Shared pieces of the benches (`tests/benches/`: `ingest`, `replay`, `store_commit`,
//! `alarm_latency`): their gateway config ([`GatewaySpec`], started as a child process with the
//! harness's [`GatewayProc`], so its RSS is its own, from the release build), a private
//! mosquitto and tansu tuned for load, the PCD-01 message they send, argument parsing,
//! percentiles and RSS sampling.
//!
//! Every helper process is started on a free loopback port with its files in its own folder and
//! is stopped when its guard is dropped.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::gateway::{Endpoints, GatewayProc, Launch};
use crate::{free_port, tansu_bin};

/// The gateway id every bench config uses (topics, stored records).
pub const GATEWAY_ID: &str = "bench";

/// Topics the bridge needs (it refuses to forward to a missing topic).
pub const TOPICS: &[&str] = &[
    "icu.observations",
    "icu.alarms",
    "icu.adt",
    "icu.deadletter",
    "icu.audit",
    "icu.devices",
    "icu.waveforms",
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

/// `target/bench-cache`: cached backlogs and the benches' scratch folders (same disk as the
/// store would be, not a tmpfs).
pub fn cache_dir() -> PathBuf {
    let d = crate::target_dir().join("bench-cache");
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

// ---------------------------------------------------------------------------------------------
// Calibration: what this machine can do, so figures can be compared across machines.

/// Two fixed workloads measured on the machine a bench runs on, in the bench's scratch folder
/// (the disk the store uses): the figures of a bench divided by these say whether the product or
/// the machine changed.
#[derive(Debug, Clone, Copy)]
pub struct Calibration {
    /// Median time of one 4 KiB write + `fdatasync` (what every durable commit waits for), µs.
    pub fsync_p50_us: f64,
    /// SQLite rows inserted per second, one prepared INSERT of a 100-byte blob per row, 200,000
    /// rows in one transaction, `synchronous = OFF` (the CPU cost of SQLite on this machine).
    pub sqlite_rows_per_s: f64,
}

impl Calibration {
    /// Measures both (about 1-2 s).
    pub fn measure() -> Calibration {
        use std::io::Write as _;
        let dir = scratch("calibrate-");
        let mut f = std::fs::File::create(dir.path().join("fsync")).expect("calibration file");
        let block = [0x5au8; 4096];
        let mut times: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                f.write_all(&block).expect("write");
                f.sync_data().expect("fdatasync");
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let conn = rusqlite::Connection::open(dir.path().join("calibrate.db")).expect("sqlite");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;
             CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .expect("calibration schema");
        let rows = 200_000u32;
        let t = Instant::now();
        conn.execute_batch("BEGIN").expect("begin");
        {
            let mut stmt = conn
                .prepare("INSERT INTO t (v) VALUES (?1)")
                .expect("prepare");
            let blob = [7u8; 100];
            for _ in 0..rows {
                stmt.execute([&blob[..]]).expect("insert");
            }
        }
        conn.execute_batch("COMMIT").expect("commit");
        let secs = t.elapsed().as_secs_f64();
        Calibration {
            fsync_p50_us: times[times.len() / 2],
            sqlite_rows_per_s: f64::from(rows) / secs,
        }
    }

    /// The line every bench prints first.
    pub fn line(&self) -> String {
        format!(
            "calibration: fsync p50 {:.0} us (4 KiB + fdatasync on the bench's disk); SQLite {:.0}k rows/s (CPU); {} CPUs",
            self.fsync_p50_us,
            self.sqlite_rows_per_s / 1000.0,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        )
    }

    /// Measures and prints [`Calibration::line`].
    pub fn print() -> Calibration {
        let c = Calibration::measure();
        println!("{}", c.line());
        c
    }

    /// `figure` per 1,000 SQLite rows/s of this machine: the CPU-bound ratio the README gives
    /// next to each throughput.
    pub fn per_ksqlite(&self, figure: f64) -> f64 {
        figure / (self.sqlite_rows_per_s / 1000.0)
    }
}

/// The gateway the benches run: the `icu-gateway` binary of this bench's profile (release),
/// built if needed.
pub fn gateway_bin() -> PathBuf {
    crate::profile_bin("icu-gateway", "icu-gateway")
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
    /// MLLP over TLS with client certificates required (mutual TLS, each monitor bound to its
    /// certificate): the folder [`bench_pki`] made. `None`: plain text.
    pub mllp_tls: Option<PathBuf>,
    /// An `[alarms]` section (empty: the gateway's defaults).
    pub alarms: String,
}

/// A test PKI (`icu-gateway cert`) for `monitors` bench monitors in `dir`: `ca.crt`, the
/// gateway's certificate, and `devices/mon-NNNN.crt`/`.key`.
pub fn bench_pki(dir: &Path, monitors: usize) -> PathBuf {
    let mut cmd = std::process::Command::new(gateway_bin());
    cmd.args(["cert", "--out"]).arg(dir);
    for b in 1..=monitors {
        cmd.args(["--device", &monitor_id(b)]);
    }
    let out = cmd.output().expect("running icu-gateway cert");
    assert!(
        out.status.success(),
        "icu-gateway cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_owned()
}

/// A TLS connector presenting monitor `bed`'s certificate from [`bench_pki`]'s folder.
pub fn monitor_tls(pki: &Path, bed: usize) -> tokio_rustls::TlsConnector {
    icu_sim::run::tls_connector(
        &icu_sim::run::SimTls {
            ca: pki.join("ca.crt"),
            cert_dir: Some(pki.join("devices")),
            cert_as: None,
            server_name: None,
        },
        &monitor_id(bed),
    )
    .expect("monitor TLS connector")
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
        if !self.alarms.is_empty() {
            s.push_str(&self.alarms);
            s.push_str("\n\n");
        }
        if let Some(p) = &self.mllp_tls {
            s.push_str(&format!(
                "[tls]\ncert_file = \"{p}/gateway.crt\"\nkey_file = \"{p}/gateway.key\"\nca_file = \"{p}/ca.crt\"\n\
                 mllp = \"required\"\nmllp_client_certs = \"required\"\n\n",
                p = p.display()
            ));
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

impl GatewaySpec {
    /// Writes the config, makes the test accounts (`icu_tests::http`, so `/api/status` and
    /// `/api/events` answer), starts the gateway ([`gateway_bin`], `RUST_LOG` from
    /// `ICU_BENCH_GATEWAY_LOG`, default `warn`) and waits for its `endpoints.json`. The gateway
    /// makes its signing key at first start.
    pub fn start(&self) -> GatewayProc {
        let launch = Launch {
            bin: gateway_bin(),
            log_filter: std::env::var("ICU_BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
            ready_within: Duration::from_secs(120),
            env: Vec::new(),
        };
        GatewayProc::start_with(&self.dir, &self.toml(), launch)
    }
}

impl GatewayProc {
    /// `(VmRSS, VmHWM)` in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        proc_memory_kib(self.pid())
    }

    /// `/api/status`, as the test physician.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        crate::http::http_get_json(self.endpoints.http, "/api/status")
    }
}

/// User plus system CPU seconds a process has used (`/proc/PID/stat`, clock ticks of 10 ms; 0
/// when unreadable). `pid` may be `"self"`.
pub fn proc_cpu_seconds(pid: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    ticks(11) + ticks(12)
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
/// Calm values (inside every default limit).
pub fn pcd01(bed: usize, n: u64, obx: usize, ts: &str) -> Vec<u8> {
    pcd01_course(bed, n, obx, ts, false)
}

/// A sick patient's value of metric `code` in message `n`: every value changes from message to
/// message and together they keep NEWS2 between 6 and 9 (so the bed's NEWS2 alarm is always on
/// and crosses the high-priority threshold of 7 back and forth), with the heart rate crossing its
/// high limit (120) now and then: a deteriorating unit, as issue 15 measures it.
pub fn sick_value(code: u32, bed: usize, n: u64) -> String {
    let k = n + bed as u64;
    match code {
        147842 => format!("{}", 112 + (n * 7 + bed as u64) % 19), // HR 112-130: NEWS2 2
        150456 => format!("{}", 92 + k % 3),                      // SpO2 92-94: 2 or 1
        150301 => format!("{}", 100 + (n * 5 + bed as u64) % 12), // SBP 100-111: 2, 1 or 0
        150302 => format!("{}", 60 + k % 5),
        150303 => format!("{}", 73 + k % 5),
        151562 => format!("{}", 21 + k % 4), // RR 21-24: 2
        150364 => format!("{:.1}", 38.1 + (k % 4) as f64 * 0.1), // 38.1-38.4: 1
        _ => "1".into(),
    }
}

/// [`pcd01`], with [`sick_value`]s when `sick`.
pub fn pcd01_course(bed: usize, n: u64, obx: usize, ts: &str, sick: bool) -> Vec<u8> {
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
        let sick_value;
        let value: &str = if sick {
            sick_value = self::sick_value(METRICS[i % METRICS.len()].0, bed, n);
            &sick_value
        } else {
            value
        };
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

// ---------------------------------------------------------------------------------------------
// The alarm probe (shared by the ingest and waveform benches).

/// How often the alarm probe sends (alternating an alarm start and its end).
pub const PROBE_PERIOD: Duration = Duration::from_millis(250);
/// The probe's parameter: body temperature (MDC_TEMP), which no load bed sends and no default
/// rule watches (they watch 150364 and 150368).
pub const PROBE_CODE: u32 = 150344;
/// The probe's values: above [`PROBE_HIGH`] starts its alarm, below ends it.
pub const PROBE_VALUES: [&str; 2] = ["41.0", "37.0"];
/// The probe rule's high limit.
pub const PROBE_HIGH: f64 = 40.0;

/// The gateway's default alarm limits plus the probe's rule (`probe`: [`PROBE_CODE`] above
/// [`PROBE_HIGH`], no sustain, no hysteresis, medium priority so it never latches).
pub fn probe_alarms() -> String {
    #[derive(serde::Serialize)]
    struct Alarms {
        limits: Vec<icu_gateway::alarm::LimitRule>,
    }
    #[derive(serde::Serialize)]
    struct File {
        alarms: Alarms,
    }
    let defaults = toml::to_string(&File {
        alarms: Alarms {
            limits: icu_gateway::alarm::default_limits(),
        },
    })
    .expect("default limits as TOML");
    format!(
        "{defaults}\n[[alarms.limits]]\nid = \"probe\"\nlabel = \"probe\"\nmdc_codes = [{PROBE_CODE}]\n\
         high = {PROBE_HIGH:.1}\npriority = \"medium\"\nsustain_s = 0\nhysteresis = 0.0\n"
    )
}

/// One PCD-01 message of the probe monitor with the probe value `value`.
pub fn probe_message(bed: usize, n: u64, value: &str) -> Vec<u8> {
    let t = icu_drivers::terminology::Terminology::builtin();
    let term = t.by_mdc(PROBE_CODE).expect("probe code in the terminology");
    let unit = t.unit(term.unit_mdc_code).expect("probe unit");
    let eui = eui(bed);
    let ts = hl7_now();
    format!(
        "MSH|^~\\&|BENCH^{eui}^EUI-64|BENCH|ICU_GW|HOSP|{ts}||ORU^R01^ORU_R01|P{bed}-{n}|P|2.6|||AL|NE\r\
         OBR|1|P{bed}-{n}|P{bed}-{n}|182777000^monitoring of patient^SCT|||{ts}\r\
         OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^^{eui}^EUI-64\r\
         OBX|2|NM|{PROBE_CODE}^{}^MDC|1.1.1.1|{value}|{}^{}^MDC|||||R\r",
        term.refid, unit.unit_mdc_code, unit.refid
    )
    .into_bytes()
}

/// The alarm probe (monitor `bed`, beyond the load beds): every [`PROBE_PERIOD`] a message that
/// starts or ends its `probe` alarm, timed from the moment it is written to the MLLP socket to
/// the moment the alarm event arrives on the page's event stream (`/api/events`, as the test
/// physician). Returns the latencies (ms) of the events sent within `[t_warm, t_end)`.
pub async fn alarm_probe(
    mllp: std::net::SocketAddr,
    http: std::net::SocketAddr,
    cookie: String,
    bed: usize,
    t_warm: Instant,
    t_end: Instant,
) -> Vec<f64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    // The crossing in flight: (alarm start?, written at).
    let pending: std::sync::Arc<std::sync::Mutex<Option<(bool, Instant)>>> =
        std::sync::Arc::default();
    let latencies: std::sync::Arc<std::sync::Mutex<Vec<f64>>> = std::sync::Arc::default();
    let mut sse = tokio::net::TcpStream::connect(http)
        .await
        .expect("event stream connect");
    sse.write_all(
        format!("GET /api/events HTTP/1.1\r\nHost: {http}\r\nCookie: icu_session={cookie}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("event stream request");
    let reader = {
        let (pending, latencies) = (pending.clone(), latencies.clone());
        let bed_id = bed_id(bed);
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(sse).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(json) = line.strip_prefix("data: ") else {
                    continue;
                };
                let at = Instant::now();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
                    continue;
                };
                if v["bed"].as_str() != Some(bed_id.as_str())
                    || !v["source"].as_str().unwrap_or("").contains("probe")
                {
                    continue;
                }
                let start = match v["phase"].as_str() {
                    Some("start") => true,
                    Some("end") => false,
                    _ => continue,
                };
                let mut p = pending.lock().expect("probe");
                if let Some((want, t0)) = *p {
                    if want == start {
                        *p = None;
                        if t0 >= t_warm && t0 < t_end {
                            latencies
                                .lock()
                                .expect("probe")
                                .push(at.duration_since(t0).as_secs_f64() * 1e3);
                        }
                    }
                }
            }
        })
    };
    let stream = tokio::net::TcpStream::connect(mllp)
        .await
        .expect("probe MLLP connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut framed =
        tokio_util::codec::Framed::new(stream, icu_drivers::mllp::MllpCodec::new(1 << 20));
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    let mut n = 0u64;
    while Instant::now() < t_end {
        tick.tick().await;
        n += 1;
        let start = n % 2 == 1;
        let msg = probe_message(bed, n, PROBE_VALUES[usize::from(!start)]);
        *pending.lock().expect("probe") = Some((start, Instant::now()));
        futures::SinkExt::send(&mut framed, msg.as_slice())
            .await
            .expect("probe send");
        match futures::StreamExt::next(&mut framed).await {
            Some(Ok(icu_drivers::mllp::MllpEvent::Frame { .. })) => {}
            other => panic!("alarm probe: no ACK: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    let l = latencies.lock().expect("probe").clone();
    l
}
