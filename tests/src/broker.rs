//! A real Kafka-protocol broker (`tansu`, in-memory storage) per test.

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

use crate::process::{log_tail, wait_for, ChildGuard};
use crate::{free_port, tansu_bin};

/// Partitions per topic made by [`Broker::create_topics`] (tansu's default).
pub const PARTITIONS: i32 = 3;

/// How long a broker may take to answer metadata after being spawned.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Environment variables tansu reads as defaults for its flags; removed so a
/// developer's shell cannot change the test broker.
const TANSU_ENV: &[&str] = &[
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
    // Declared last: removed after the child is stopped.
    dir: TempDir,
}

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
        let dir = tempfile::Builder::new()
            .prefix("icu-tansu-")
            .tempdir()
            .context("temp dir for the broker")?;
        let log = dir.path().join("tansu.log");
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;

        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--cluster-id", &format!("icu-test-{port}")])
            // tansu loads a `.env` from its working directory: use an empty one.
            .current_dir(dir.path())
            .env(
                "RUST_LOG",
                std::env::var("ICU_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1");
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        let child = ChildGuard::spawn_tied(&cmd, Stdio::from(out), Stdio::from(err))
            .with_context(|| format!("spawn {}", tansu_bin().display()))?;

        let mut broker = Broker {
            addr: format!("127.0.0.1:{port}"),
            port,
            child: Some(child),
            log,
            dir,
        };
        broker
            .wait_ready()
            .with_context(|| format!("tansu broker on {}", broker.addr))?;
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

    /// `tcp://127.0.0.1:PORT`, as tansu's own tools want it.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// A client config with `bootstrap.servers` set to this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.addr);
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

    /// The last `lines` lines of the broker's log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stop the broker and wait until it has exited (its port is then free).
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.shutdown(Duration::from_secs(10));
        }
    }

    /// Whether the broker process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.exited().is_none(),
            None => false,
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
