//! A Kafka backbone of several `tansu` brokers over ONE shared storage ([`Backbone`]), and a
//! consumer group of several members reading a topic while the backbone changes
//! ([`GroupReader`]).
//!
//! tansu 0.6 brokers are stateless over S3: topics, records, high watermarks, producer ids and
//! consumer-group state are objects in the bucket, updated with conditional writes (`If-Match`
//! on the object's ETag; a broker that loses the race reads the object again and retries). So
//! two brokers started with the same `--cluster-id` on the same bucket serve the same topics:
//! a record produced through one is read through the other, and one consumer group can have its
//! members on different brokers. What tansu 0.6 does *not* do is know its peers: each broker
//! gives itself the same node id ([`TANSU_NODE_ID`], there is no option for it) and its metadata
//! lists only itself, as the leader of every partition. A client therefore learns the second
//! broker only from its own bootstrap list, and when the broker it talks to goes away it asks
//! another bootstrap address, whose metadata names *the same node id* at another address
//! (librdkafka then moves that node to the new address). Clients of such a backbone must list
//! every broker in `bootstrap.servers` ([`Backbone::bootstrap_from`]). Two more tansu 0.6
//! traits a reader of such a backbone meets: a broker answers from a 5 s memory of each object's
//! ETag, so it may see another broker's writes that much later; and ListOffsets(latest) on the
//! S3 engine is not the log's end ([`latest_offsets`]).
//!
//! The storage is the harness's S3 emulator (`moto_server`, see `broker.rs`), one per backbone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use icu_cloud_bridge::consume::ConsumedRecord;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use tempfile::TempDir;

use crate::broker::{ObjectStore, BUCKET, START_DEADLINE, TANSU_ENV};
use crate::process::{log_tail, wait_for, ChildGuard};
use crate::{free_port, tansu_bin};

/// The node id every tansu 0.6 broker advertises for itself (`NODE_ID` of `tansu-cli`).
pub const TANSU_NODE_ID: i32 = 111;

/// The cluster id all brokers of a [`Backbone`] share: tansu keeps a cluster's objects under
/// `clusters/<id>/` in the bucket, so brokers with the same id see the same topics.
pub const CLUSTER_ID: &str = "icu-backbone";

/// Timeout of one metadata request of the harness's clients.
const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// Several tansu brokers on 127.0.0.1 sharing one S3 bucket (one cluster id), each with its own
/// port and log; brokers can be stopped and restarted one at a time ([`Backbone::stop`],
/// [`Backbone::restart`]). Everything is stopped on drop, the brokers before the storage.
#[derive(Debug)]
pub struct Backbone {
    // Fields drop in order: the brokers stop before the storage; the folder goes last.
    nodes: Vec<Node>,
    storage: ObjectStore,
    dir: TempDir,
}

/// One broker process of a [`Backbone`].
#[derive(Debug)]
struct Node {
    port: u16,
    child: Option<ChildGuard>,
    /// Processes started so far on this port (each writes its own log).
    generation: u32,
    dir: PathBuf,
    log: PathBuf,
}

impl Backbone {
    /// Starts the S3 emulator and `brokers` tansu brokers on it, each on a free port, and waits
    /// until each answers metadata.
    pub fn start(brokers: usize) -> anyhow::Result<Backbone> {
        let storage = ObjectStore::start()?;
        let dir = tempfile::Builder::new()
            .prefix("icu-backbone-")
            .tempdir()
            .context("temp dir for the backbone")?;
        let mut backbone = Backbone {
            nodes: Vec::new(),
            storage,
            dir,
        };
        for i in 0..brokers {
            let node_dir = backbone.dir.path().join(format!("broker-{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut last = None;
            let mut started = None;
            for _ in 0..3 {
                let mut node = Node {
                    port: free_port(),
                    child: None,
                    generation: 0,
                    log: node_dir.join("tansu.log"),
                    dir: node_dir.clone(),
                };
                match node.spawn_ready(&backbone.storage.endpoint) {
                    Ok(()) => {
                        started = Some(node);
                        break;
                    }
                    Err(e) if format!("{e:#}").contains("already in use") => {
                        node.stop();
                        last = Some(e);
                    }
                    Err(e) => return Err(e.context(format!("broker {i}"))),
                }
            }
            match started {
                Some(node) => backbone.nodes.push(node),
                None => return Err(last.expect("three attempts were made")),
            }
        }
        Ok(backbone)
    }

    /// How many brokers the backbone has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the backbone has no broker.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `127.0.0.1:PORT` of broker `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every broker's address, starting with broker `first` (then the others in order), comma
    /// separated: a `bootstrap.servers` that lists the whole backbone.
    pub fn bootstrap_from(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|k| self.addr((first + k) % self.nodes.len()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Metadata for all topics as broker `i` alone answers it (a client bootstrapped with that
    /// broker only).
    pub fn metadata_at(&self, i: usize) -> anyhow::Result<Metadata> {
        metadata_client(&self.addr(i))?
            .fetch_metadata(None, METADATA_TIMEOUT)
            .with_context(|| format!("metadata from broker {i} ({})", self.addr(i)))
    }

    /// Creates `topics` with `partitions` partitions each (`tansu topic create` through the
    /// first running broker; a topic that exists already is fine), then waits until every
    /// running broker's own metadata lists each of them with that many partitions.
    pub fn create_topics(&mut self, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
        let via = (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_running())
            .context("no broker is running")?;
        let url = format!("tcp://127.0.0.1:{}", self.nodes[via].port);
        for topic in topics {
            let out = Command::new(tansu_bin())
                .args(["topic", "create", topic, "--broker", &url])
                .args(["--partitions", &partitions.to_string()])
                .current_dir(&self.nodes[via].dir)
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .output()
                .context("run tansu topic create")?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() && !text.contains("already exists") {
                bail!(
                    "tansu topic create {topic} --broker {url} failed ({}): {}",
                    out.status,
                    text.trim()
                );
            }
        }
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            let client = metadata_client(&self.addr(i))?;
            let mut wrong: Vec<String> = Vec::new();
            wait_for(
                Duration::from_secs(20),
                &format!("broker {i} to list the topics"),
                || {
                    let md = client.fetch_metadata(None, METADATA_TIMEOUT).ok()?;
                    wrong = topics
                        .iter()
                        .filter(|t| {
                            !md.topics().iter().any(|m| {
                                m.name() == **t
                                    && m.error().is_none()
                                    && m.partitions().len() == partitions as usize
                            })
                        })
                        .map(|t| t.to_string())
                        .collect();
                    wrong.is_empty().then_some(())
                },
            )
            .with_context(|| format!("broker {i} lacks (or has other partitions for) {wrong:?}"))?;
        }
        Ok(())
    }

    /// Stops broker `i` (SIGTERM, SIGKILL 3 s later) and waits until it has exited.
    /// Idempotent.
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts broker `i` again on its port and storage (stopping it first if it runs) and waits
    /// until it answers metadata; retries for a while if the port is not free yet.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let endpoint = self.storage.endpoint.clone();
        let node = &mut self.nodes[i];
        node.stop();
        let mut last = None;
        for _ in 0..20 {
            match node.spawn_ready(&endpoint) {
                Ok(()) => return Ok(()),
                Err(e) if format!("{e:#}").contains("already in use") => {
                    node.stop();
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("attempts were made"))
    }

    /// Whether broker `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// The log files of broker `i`, oldest first (`tansu.log`, `tansu-1.log` after its first
    /// restart, ...).
    pub fn log_paths(&self, i: usize) -> Vec<PathBuf> {
        self.nodes[i].log_paths()
    }

    /// The last `lines` lines of broker `i`'s current log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        log_tail(&self.nodes[i].log, lines)
    }

    /// The base offsets of the record batches that the storage holds for `topic`'s
    /// `partition` (tansu keeps each produced batch as the object
    /// `clusters/<cluster>/topics/<topic>/partitions/<partition>/records/<base offset>.batch`),
    /// listed from the S3 emulator: what the brokers wrote, whatever they answer.
    pub fn stored_batches(&self, topic: &str, partition: i32) -> anyhow::Result<Vec<i64>> {
        let prefix =
            format!("clusters/{CLUSTER_ID}/topics/{topic}/partitions/{partition:0>10}/records/");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("list-type=2&prefix={prefix}");
            if let Some(t) = &token {
                query.push_str(&format!("&continuation-token={t}"));
            }
            let body = http_get(&self.storage.endpoint, &format!("/{BUCKET}?{query}"))?;
            for key in xml_values(&body, "Key") {
                let base = key
                    .strip_prefix(&prefix)
                    .and_then(|k| k.strip_suffix(".batch"))
                    .and_then(|k| k.parse::<i64>().ok())
                    .with_context(|| format!("unexpected object {key}"))?;
                out.push(base);
            }
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                break;
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The `ERROR` lines of every broker's logs so far, each prefixed with its file name
    /// (diagnostics for a failure message).
    pub fn error_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for path in node.log_paths() {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.extend(
                    text.lines()
                        .filter(|l| l.contains("ERROR"))
                        .map(|l| format!("broker {i} {name}: {l}")),
                );
            }
        }
        out
    }
}

impl Node {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_paths(&self) -> Vec<PathBuf> {
        (0..self.generation)
            .map(|n| match n {
                0 => self.dir.join("tansu.log"),
                n => self.dir.join(format!("tansu-{n}.log")),
            })
            .collect()
    }

    /// Spawns `tansu broker` on this node's port, on the bucket of `endpoint` under
    /// [`CLUSTER_ID`], and waits until it answers metadata.
    fn spawn_ready(&mut self, endpoint: &str) -> anyhow::Result<()> {
        let name = match self.generation {
            0 => "tansu.log".to_owned(),
            n => format!("tansu-{n}.log"),
        };
        self.generation += 1;
        self.log = self.dir.join(name);
        let out =
            File::create(&self.log).with_context(|| format!("create {}", self.log.display()))?;
        let err = out.try_clone()?;
        let url = format!("tcp://{}", self.addr());
        let storage = format!("s3://{BUCKET}/");
        let mut cmd = Command::new(tansu_bin());
        cmd.arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &storage])
            .args(["--cluster-id", CLUSTER_ID])
            // tansu loads a `.env` from its working directory: use an empty one.
            .current_dir(&self.dir)
            .env(
                "RUST_LOG",
                std::env::var("ICU_TANSU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .env("AWS_ENDPOINT", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "icu-test")
            .env("AWS_SECRET_ACCESS_KEY", "icu-test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        let child = ChildGuard::spawn_tied(&cmd, Stdio::from(out), Stdio::from(err))
            .with_context(|| format!("spawn {}", tansu_bin().display()))?;
        self.child = Some(child);
        self.wait_ready()
            .with_context(|| format!("tansu broker on {} ({storage})", self.addr()))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let sock: SocketAddr = self.addr().parse()?;
        let mut client: Option<BaseConsumer> = None;
        let mut last_error = String::from("no answer yet");
        let res = wait_for(START_DEADLINE, "the broker to answer metadata", || {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                last_error = format!("tansu exited early ({status})");
                return Some(false);
            }
            if std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains("AddrInUse")) {
                last_error = format!("port {} already in use", self.port);
                return Some(false);
            }
            if let Err(e) = TcpStream::connect_timeout(&sock, Duration::from_millis(200)) {
                last_error = format!("connect: {e}");
                return None;
            }
            if client.is_none() {
                match metadata_client(&self.addr()) {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        last_error = format!("client: {e:#}");
                        return None;
                    }
                }
            }
            let c = client.as_ref().expect("set above");
            match c.fetch_metadata(None, METADATA_TIMEOUT) {
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
                    log_tail(&self.log, 40)
                )
            }
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.shutdown(Duration::from_secs(10));
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.exited().is_none())
    }
}

/// A metadata-only client bootstrapped with `bootstrap` alone.
fn metadata_client(bootstrap: &str) -> anyhow::Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "icu-tests-metadata")
        .set("socket.timeout.ms", "5000")
        .create()
        .context("create metadata client")
}

/// The "latest" offset (ListOffsets) of every partition of `topic`, as the brokers of
/// `bootstrap` answer. Not the end of the log with tansu 0.6's S3 engine: it answers the base
/// offset + 1 of the batch object S3 lists as last modified (S3 times have whole seconds, and of
/// equal times the first listed wins), so a partition that took several batches within its last
/// second, or a last batch of several records, reads as shorter than it is. For diagnostics only:
/// read a topic until what is expected has arrived ([`GroupReader::finish`]).
pub fn latest_offsets(bootstrap: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let client = metadata_client(bootstrap)?;
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic} from {bootstrap}"))?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .with_context(|| format!("{topic} not in the metadata of {bootstrap}"))?;
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let (_, high) = client
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
        out.insert(p.id(), high);
    }
    Ok(out)
}

/// A consumer group of several members (one `BaseConsumer` each, all polled from one
/// background thread) subscribed to one topic, reading from the earliest offset and committing
/// as it goes (auto commit), until [`GroupReader::finish`].
pub struct GroupReader {
    state: Arc<Mutex<GroupState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a [`GroupReader`] has read so far.
#[derive(Debug, Clone, Default)]
pub struct GroupState {
    /// Every record read, with the index of the member that read it, in the order read
    /// (a record a member reads again after a rebalance is here twice).
    pub records: Vec<(usize, ConsumedRecord)>,
    /// Per member, its partition assignments in the order they changed (the empty assignment
    /// between a revoke and the next assign included).
    pub assignments: Vec<Vec<Vec<i32>>>,
    /// Per member, the errors its consumer reported (the first 20).
    pub errors: Vec<Vec<String>>,
}

impl GroupState {
    /// Per member, its current assignment (empty when it has none).
    pub fn current(&self) -> Vec<Vec<i32>> {
        self.assignments
            .iter()
            .map(|a| a.last().cloned().unwrap_or_default())
            .collect()
    }

    /// Per member, how many records it has read.
    pub fn records_per_member(&self) -> Vec<usize> {
        let mut out = vec![0; self.assignments.len()];
        for (m, _) in &self.records {
            out[*m] += 1;
        }
        out
    }
}

impl GroupReader {
    /// Starts one member per entry of `bootstraps` (its `bootstrap.servers`) in group `group`,
    /// subscribed to `topic`.
    pub fn start(bootstraps: &[String], group: &str, topic: &str) -> anyhow::Result<GroupReader> {
        let mut consumers = Vec::new();
        for (m, bootstrap) in bootstraps.iter().enumerate() {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", group)
                .set("client.id", format!("{group}-{m}"))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "500")
                .set("session.timeout.ms", "10000")
                .set("heartbeat.interval.ms", "1000")
                .set("reconnect.backoff.max.ms", "1000")
                .set("allow.auto.create.topics", "false")
                .create()
                .with_context(|| format!("group member {m} ({bootstrap})"))?;
            c.subscribe(&[topic])
                .with_context(|| format!("member {m} subscribe {topic}"))?;
            consumers.push(c);
        }
        let state = Arc::new(Mutex::new(GroupState {
            assignments: vec![Vec::new(); consumers.len()],
            errors: vec![Vec::new(); consumers.len()],
            ..GroupState::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("group-reader".into())
                .spawn(move || read_loop(consumers, &state, &stop))?
        };
        Ok(GroupReader {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// A copy of what was read so far.
    pub fn snapshot(&self) -> GroupState {
        self.state.lock().expect("group state").clone()
    }

    /// Waits until what was read satisfies `done` (e.g. every record expected has arrived) or
    /// `deadline` has passed, then stops the members (leaving the group) and returns everything
    /// read, and whether `done` was reached.
    pub fn finish(
        mut self,
        deadline: Duration,
        done: impl Fn(&GroupState) -> bool,
    ) -> (GroupState, bool) {
        let reached = wait_for(deadline, "the group to read what is expected", || {
            done(&self.snapshot()).then_some(())
        })
        .is_ok();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                panic!("the group reader thread panicked");
            }
        }
        (self.snapshot(), reached)
    }
}

impl Drop for GroupReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The members' poll loop (see [`GroupReader`]).
fn read_loop(consumers: Vec<BaseConsumer>, state: &Mutex<GroupState>, stop: &AtomicBool) {
    let started = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        for (m, c) in consumers.iter().enumerate() {
            let polled = c.poll(Duration::from_millis(50));
            let assignment: Vec<i32> = c
                .assignment()
                .map(|tpl| {
                    let set: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                    set.into_iter().collect()
                })
                .unwrap_or_default();
            let mut s = state.lock().expect("group state");
            if s.assignments[m].last() != Some(&assignment)
                && !(s.assignments[m].is_empty() && assignment.is_empty())
            {
                s.assignments[m].push(assignment);
            }
            match polled {
                None => {}
                Some(Err(e)) if s.errors[m].len() < 20 => {
                    s.errors[m].push(format!("{:.1?}: {e}", started.elapsed()));
                }
                Some(Err(_)) => {}
                Some(Ok(message)) => {
                    let record = ConsumedRecord::from_message(&message, None);
                    s.records.push((m, record));
                }
            }
        }
    }
    for c in &consumers {
        c.unsubscribe();
    }
}

/// `GET path` from the HTTP server at `endpoint` (`http://127.0.0.1:PORT`); the body of a 2xx
/// answer.
fn http_get(endpoint: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let host = endpoint
        .strip_prefix("http://")
        .with_context(|| format!("not an http endpoint: {endpoint}"))?;
    let mut s = TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: no header end"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with('2') {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_owned())
}

/// The texts of every `<tag>...</tag>` in `xml`, in order (no nesting, no entities: enough for
/// S3's object keys of this harness).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(after[..end].to_owned());
        rest = &after[end + close.len()..];
    }
    out
}
