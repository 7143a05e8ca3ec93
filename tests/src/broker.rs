//! A real Kafka-protocol broker (`tansu`) per test: in-memory storage, or
//! ([`Broker::start_durable`]) storage that outlives the broker process, so a
//! test can stop and restart the broker on the same port and find its topics
//! and records again ([`Broker::restart`]).

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use tempfile::TempDir;

use crate::pki::CertFiles;
use crate::process::{log_tail, wait_for, ChildGuard};
use crate::tls_proxy::TlsProxy;
use crate::{free_port, tansu_bin};

/// Partitions per topic made by [`Broker::create_topics`] (tansu's default).
pub const PARTITIONS: i32 = 3;

/// How long a broker may take to answer metadata after being spawned.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(30);

/// Environment variables tansu reads as defaults for its flags; removed so a
/// developer's shell cannot change the test broker.
pub(crate) const TANSU_ENV: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "DATA_LAKE",
];

/// A `tansu` broker on 127.0.0.1 with in-memory storage, its output in a log
/// file in a temporary folder.  Stopped (and waited for) on drop; it cannot
/// outlive the test process (see [`ChildGuard::spawn_tied`]).
#[derive(Debug)]
pub struct Broker {
    /// `"127.0.0.1:PORT"`, for `bootstrap.servers`.
    pub addr: String,
    port: u16,
    child: Option<ChildGuard>,
    log: PathBuf,
    /// The S3 store of a durable broker ([`Broker::start_durable`]); `None`: in memory.
    store: Option<ObjectStore>,
    /// Broker processes started so far (each writes its own log file).
    generation: u32,
    /// The port tansu itself listens on: `port`, or behind the TLS terminator of a secure
    /// broker ([`Broker::start_secure`]) a port only the terminator uses.
    plain_port: u16,
    /// A secure broker's TLS terminator and settings.
    secure: Option<(TlsProxy, SecureOptions)>,
    /// Started with `--authentication` (after [`Broker::require_authentication`]).
    authentication: bool,
    /// Started with the schema registry in `<dir>/schemas` (after
    /// [`Broker::use_schema_registry`]).
    schema_registry: bool,
    /// How the last stopped broker process ended, and how long the stop took.
    last_exit: Option<(std::process::ExitStatus, Duration)>,
    // Declared last: removed after the child is stopped.
    dir: TempDir,
}

/// How [`Broker::start_secure`] protects the broker.
#[derive(Debug, Clone)]
pub struct SecureOptions {
    /// The certificate and key the broker presents.
    pub server: CertFiles,
    /// The CA that signed it: what the harness's own clients trust.
    pub ca_file: PathBuf,
    /// Require a client certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// The harness's own client certificate, when `client_ca` is set.
    pub client_cert: Option<CertFiles>,
    /// SCRAM-SHA-512 users (name, password). When there are any, the broker keeps its data in
    /// SQLite (`sqlite://`, the one tansu 0.6 storage engine here that stores SCRAM
    /// credentials); [`Broker::require_authentication`] creates them and restarts the broker
    /// with `--authentication`, after which the harness's own client logs in as the first.
    pub scram_users: Vec<(String, String)>,
}

/// An S3 emulator (`moto_server`) holding a durable broker's data, so the
/// data outlives the broker process.  Stopped on drop, after the broker (the
/// broker's `Drop` stops the broker first).
#[derive(Debug)]
pub(crate) struct ObjectStore {
    pub(crate) endpoint: String,
    _child: ChildGuard,
}

/// The bucket a durable broker keeps its data in.
pub(crate) const BUCKET: &str = "tansu";

impl Broker {
    /// Start a broker on a free port and wait until it answers a metadata
    /// request.  Retries on a fresh port if the chosen one was taken in the
    /// meantime.
    pub fn start() -> anyhow::Result<Broker> {
        let mut last = None;
        for _ in 0..3 {
            match Broker::start_on(free_port()) {
                Ok(b) => return Ok(b),
                Err(e) if format!("{e:#}").contains("already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts were made"))
    }

    /// Start a broker on `port` (e.g. to restart one on the same address;
    /// the in-memory storage starts empty) and wait until it answers a
    /// metadata request.
    pub fn start_on(port: u16) -> anyhow::Result<Broker> {
        Broker::launch(port, None).map_err(|(e, _)| e)
    }

    /// Start a broker whose topics and records outlive its process: tansu's
    /// S3 storage engine on a local S3 emulator (`moto_server`, see
    /// [`moto_server_bin`]) that lives as long as this `Broker`.  With it,
    /// [`Broker::stop`] then [`Broker::restart`] is a real broker outage with
    /// nothing lost on the broker's side.
    pub fn start_durable() -> anyhow::Result<Broker> {
        let store = ObjectStore::start()?;
        let mut store = Some(store);
        let mut last = None;
        for _ in 0..3 {
            match Broker::launch(free_port(), store.take()) {
                Ok(b) => return Ok(b),
                Err((e, s)) if format!("{e:#}").contains("already in use") => {
                    store = s;
                    last = Some(e);
                }
                Err((e, _)) => return Err(e),
            }
        }
        Err(last.expect("three attempts were made"))
    }

    fn launch(port: u16, store: Option<ObjectStore>) -> anyhow::Result<Broker, LaunchError> {
        let dir = match tempfile::Builder::new().prefix("icu-tansu-").tempdir() {
            Ok(d) => d,
            Err(e) => {
                return Err((
                    anyhow::Error::new(e).context("temp dir for the broker"),
                    store,
                ))
            }
        };
        let mut broker = Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            child: None,
            log: dir.path().join("tansu.log"),
            store,
            generation: 0,
            plain_port: port,
            secure: None,
            authentication: false,
            schema_registry: false,
            last_exit: None,
            dir,
        };
        match broker.spawn_ready() {
            Ok(()) => Ok(broker),
            Err(e) => {
                broker.stop();
                Err((e, broker.store.take()))
            }
        }
    }

    /// Spawn the broker process (log file `tansu.log`, then `tansu-N.log`
    /// for the N-th restart) and wait until it answers metadata.
    fn spawn_ready(&mut self) -> anyhow::Result<()> {
        let name = match self.generation {
            0 => "tansu.log".to_owned(),
            n => format!("tansu-{n}.log"),
        };
        self.generation += 1;
        self.log = self.dir.path().join(name);
        let out =
            File::create(&self.log).with_context(|| format!("create {}", self.log.display()))?;
        let err = out.try_clone()?;

        let port = self.port;
        let url = format!("tcp://127.0.0.1:{}", self.plain_port);
        let advertised = format!("tcp://127.0.0.1:{port}");
        let authentication = self.authentication;
        let storage = match &self.store {
            Some(_) => format!("s3://{BUCKET}/"),
            None if self.scram().is_some() => "sqlite://tansu.db".to_owned(),
            None => "memory://tansu/".to_owned(),
        };
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", &storage])
            .args(["--cluster-id", &format!("icu-test-{port}")])
            // tansu loads a `.env` from its working directory: use an empty one.
            .current_dir(self.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("ICU_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1");
        if authentication {
            cmd.arg("--authentication");
        }
        if self.schema_registry {
            // Relative to the broker's working directory (tansu resolves file:// urls so).
            cmd.args(["--schema-registry", "file://./schemas"]);
        }
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        if let Some(store) = &self.store {
            cmd.env("AWS_ENDPOINT", &store.endpoint)
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_ACCESS_KEY_ID", "icu-test")
                .env("AWS_SECRET_ACCESS_KEY", "icu-test")
                .env("AWS_DEFAULT_REGION", "us-east-1")
                .env("AWS_REGION", "us-east-1")
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_SESSION_TOKEN");
        }
        let child = ChildGuard::spawn_tied(&cmd, Stdio::from(out), Stdio::from(err))
            .with_context(|| format!("spawn {}", tansu_bin().display()))?;
        self.child = Some(child);
        self.wait_ready()
            .with_context(|| format!("tansu broker on {} ({storage})", self.addr))
    }

    /// Start the broker again on the same port (stopping it first if it is
    /// running) and wait until it answers metadata.  A durable broker
    /// ([`Broker::start_durable`]) comes back with its topics and records; an
    /// in-memory one comes back empty.  Retries for a while if the port is not
    /// free yet.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let mut last = None;
        for _ in 0..20 {
            match self.spawn_ready() {
                Ok(()) => return Ok(()),
                Err(e) if format!("{e:#}").contains("already in use") => {
                    self.stop();
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("attempts were made"))
    }

    /// Whether the broker's data outlives its process ([`Broker::start_durable`]).
    pub fn is_durable(&self) -> bool {
        self.store.is_some()
    }

    /// The first SCRAM user of a secure broker, if it has any.
    fn scram(&self) -> Option<&(String, String)> {
        self.secure
            .as_ref()
            .and_then(|(_, o)| o.scram_users.first())
    }

    /// Creates the SCRAM users (`tansu user create`, SCRAM-SHA-512, while the broker still
    /// accepts anyone on its plain port) and restarts the broker with `--authentication`: from
    /// then on every client, the harness's too, logs in with SASL over TLS. Topics created
    /// before stay (SQLite storage).
    pub fn require_authentication(&mut self) -> anyhow::Result<()> {
        let users = match &self.secure {
            Some((_, o)) if !o.scram_users.is_empty() => o.scram_users.clone(),
            _ => bail!("require_authentication: the broker was started without scram_users"),
        };
        for (name, password) in &users {
            let out = Command::new(tansu_bin())
                .args(["user", "create", "--broker", &self.url(), name, password])
                .args(["--mechanism", "scram512"])
                .current_dir(self.dir.path())
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .context("run tansu user create")?;
            if !out.status.success() {
                bail!(
                    "tansu user create {name} failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        self.authentication = true;
        self.restart()
    }

    /// Restarts the broker with its embedded schema registry (`--schema-registry`) holding
    /// `schemas`, `(file name, text)` pairs such as `("icu.observations.pb.proto", ...)`: from
    /// then on a record produced to such a topic whose key is no `Key` or whose value is no
    /// `Value` is refused with INVALID_RECORD. An in-memory broker comes back empty: create the
    /// topics after.
    pub fn use_schema_registry(&mut self, schemas: &[(&str, &str)]) -> anyhow::Result<()> {
        let dir = self.dir.path().join("schemas");
        std::fs::create_dir_all(&dir)?;
        for (name, text) in schemas {
            std::fs::write(dir.join(name), text)?;
        }
        self.schema_registry = true;
        self.restart()
    }

    /// Start a broker behind TLS (see [`crate::tls_proxy`]: tansu 0.6 cannot serve TLS
    /// itself: its `--cert` and `--key` options exclude each other), in memory (or SQLite with
    /// SCRAM users), optionally requiring client certificates.
    pub fn start_secure(options: SecureOptions) -> anyhow::Result<Broker> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the TLS port")?;
        let port = listener.local_addr()?.port();
        let plain_port = free_port();
        let proxy = TlsProxy::start(
            listener,
            &options.server.cert,
            &options.server.key,
            options.client_ca.as_deref(),
            plain_port,
        )?;
        let dir = tempfile::Builder::new().prefix("icu-tansu-").tempdir()?;
        let mut broker = Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            child: None,
            log: dir.path().join("tansu.log"),
            store: None,
            generation: 0,
            plain_port,
            secure: Some((proxy, options)),
            authentication: false,
            schema_registry: false,
            last_exit: None,
            dir,
        };
        broker.spawn_ready()?;
        Ok(broker)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let sock: SocketAddr = self.addr.parse()?;
        let mut consumer: Option<BaseConsumer> = None;
        let mut last_error = String::from("no answer yet");
        let res = wait_for(START_DEADLINE, "the broker to answer metadata", || {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                last_error = format!("tansu exited early ({status})");
                return Some(false);
            }
            // tansu logs the bind error but may keep running; fail fast so
            // start() can retry on another port.
            if std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("AddrInUse")) {
                last_error = format!("port {} already in use", self.port);
                return Some(false);
            }
            if let Err(e) = TcpStream::connect_timeout(&sock, Duration::from_millis(200)) {
                last_error = format!("connect: {e}");
                return None;
            }
            if consumer.is_none() {
                match self.metadata_client() {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        last_error = format!("client: {e:#}");
                        return None;
                    }
                }
            }
            let c = consumer.as_ref().expect("set above");
            match c.fetch_metadata(None, Duration::from_secs(2)) {
                Ok(md) if !md.brokers().is_empty() => Some(true),
                Ok(_) => {
                    last_error = "metadata lists no broker".into();
                    None
                }
                Err(e) => {
                    last_error = format!("metadata: {e}");
                    None
                }
            }
        });
        match res {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                let timeout = res.err().map(|e| format!("{e}; ")).unwrap_or_default();
                bail!(
                    "{timeout}{last_error}\n--- {} (tail) ---\n{}",
                    self.log.display(),
                    self.log_tail(40)
                )
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tcp://127.0.0.1:PORT`, as tansu's own tools want it: the broker's own plain-text
    /// port (behind the TLS terminator of a secure broker, where tansu's tools, which speak
    /// neither TLS nor SASL, reach it).
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.plain_port)
    }

    /// A client config with `bootstrap.servers` set to this broker (and, for a secure broker,
    /// TLS with its CA and the harness's client certificate).
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.addr);
        if let Some((_, o)) = &self.secure {
            cfg.set("security.protocol", "ssl")
                .set("ssl.ca.location", o.ca_file.display().to_string());
            if let Some(c) = &o.client_cert {
                cfg.set("ssl.certificate.location", c.cert.display().to_string())
                    .set("ssl.key.location", c.key.display().to_string());
            }
            if let (true, Some((name, password))) = (self.authentication, o.scram_users.first()) {
                cfg.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanism", "SCRAM-SHA-512")
                    .set("sasl.username", name)
                    .set("sasl.password", password);
            }
        }
        cfg
    }

    fn metadata_client(&self) -> anyhow::Result<BaseConsumer> {
        self.client_config()
            .set("group.id", "icu-tests-metadata")
            .set("socket.timeout.ms", "5000")
            .create()
            .context("create metadata client")
    }

    /// Cluster metadata for all topics.
    pub fn metadata(&self) -> anyhow::Result<Metadata> {
        self.metadata_client()?
            .fetch_metadata(None, Duration::from_secs(5))
            .context("fetch metadata")
    }

    /// Create `topics` ([`PARTITIONS`] partitions each) with
    /// `tansu topic create`, then wait until metadata lists them all.
    /// A topic that exists already is fine.
    pub fn create_topics(&self, topics: &[&str]) -> anyhow::Result<()> {
        let bin = tansu_bin();
        for topic in topics {
            let out = Command::new(&bin)
                .args(["topic", "create", topic, "--broker", &self.url()])
                .args(["--partitions", &PARTITIONS.to_string()])
                .current_dir(self.dir.path())
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("run {} topic create", bin.display()))?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() && !text.contains("already exists") {
                bail!(
                    "tansu topic create {topic} --broker {} failed ({}): {}",
                    self.url(),
                    out.status,
                    text.trim()
                );
            }
        }
        let client = self.metadata_client()?;
        let mut missing: Vec<String> = Vec::new();
        wait_for(Duration::from_secs(20), "the topics in metadata", || {
            let md = client.fetch_metadata(None, Duration::from_secs(2)).ok()?;
            missing = topics
                .iter()
                .filter(|t| {
                    !md.topics().iter().any(|m| {
                        m.name() == **t && m.error().is_none() && !m.partitions().is_empty()
                    })
                })
                .map(|t| t.to_string())
                .collect();
            missing.is_empty().then_some(())
        })
        .with_context(|| format!("topics missing: {missing:?}"))
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log files of every broker process started so far, oldest first (`tansu.log`,
    /// `tansu-1.log`, ...).
    pub fn log_paths(&self) -> Vec<PathBuf> {
        (0..self.generation)
            .map(|n| match n {
                0 => self.dir.path().join("tansu.log"),
                n => self.dir.path().join(format!("tansu-{n}.log")),
            })
            .collect()
    }

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stop the broker and wait until it has exited (its port is then free).
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let t = std::time::Instant::now();
            if let Ok(status) = child.shutdown(Duration::from_secs(10)) {
                self.last_exit = Some((status, t.elapsed()));
            }
        }
    }

    /// How the last stopped broker process ended (its exit status: 143 for SIGTERM, 137 for
    /// the SIGKILL that follows when it does not exit in time) and how long the stop took.
    pub fn last_exit(&self) -> Option<(std::process::ExitStatus, Duration)> {
        self.last_exit
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.exited().is_none(),
            None => false,
        }
    }
}

/// A failed launch, with the object store handed back for another attempt.
type LaunchError = (anyhow::Error, Option<ObjectStore>);

impl ObjectStore {
    /// Start `moto_server` on a free port and create the bucket.
    pub(crate) fn start() -> anyhow::Result<ObjectStore> {
        let bin = moto_server_bin();
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir().join(format!("icu-moto-{port}.log"));
            let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let err = out.try_clone()?;
            let mut cmd = Command::new(&bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            let mut child = ChildGuard::spawn_tied(&cmd, Stdio::from(out), Stdio::from(err))
                .with_context(|| format!("spawn {}", bin.display()))?;
            let endpoint = format!("http://127.0.0.1:{port}");
            let created = wait_for(START_DEADLINE, "the S3 emulator to create a bucket", || {
                if child.exited().is_some() {
                    return Some(false);
                }
                http_put(port, &format!("/{BUCKET}")).ok().map(|()| true)
            });
            match created {
                Ok(true) => {
                    let _ = std::fs::remove_file(&log);
                    return Ok(ObjectStore {
                        endpoint,
                        _child: child,
                    });
                }
                other => {
                    let _ = child.shutdown(Duration::from_secs(5));
                    last = Some(anyhow::anyhow!(
                        "{} on port {port} did not start ({:?})\n--- {} (tail) ---\n{}",
                        bin.display(),
                        other.err(),
                        log.display(),
                        log_tail(&log, 20)
                    ));
                }
            }
        }
        Err(last.expect("three attempts were made"))
    }
}

/// `PUT path` with an empty body on 127.0.0.1:`port`; Ok on a 2xx answer.
fn http_put(port: u16, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer.split_whitespace().nth(1).unwrap_or_default();
    if status.starts_with('2') {
        Ok(())
    } else {
        bail!("PUT {path}: {}", answer.lines().next().unwrap_or_default())
    }
}

/// The S3 emulator for durable brokers: `ICU_MOTO_SERVER`, else
/// `moto_server` on `PATH` (pyenv shims skipped), else the newest
/// `~/.pyenv/versions/*/bin/moto_server` (the Python package `moto[server]`).
///
/// # Panics
/// When none is found.
pub(crate) fn moto_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ICU_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter(|d| !d.ends_with("shims"))
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let versions = PathBuf::from(home).join(".pyenv").join("versions");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&versions)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join("moto_server"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no S3 emulator for a durable broker: install the Python package `moto[server]` \
             (moto_server on PATH) or set ICU_MOTO_SERVER"
        )
    })
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
