//! The Kafka forwarder: drains the outbox into signed FHIR records on one topic per stream
//! (observations, alarms, ADT events, audit-trail entries) and plain JSON dead letters.
//!
//! Owns: [`BridgeActor`] (an actix actor wrapping one forwarding loop), its [`BridgeConfig`],
//! the shared [`BridgeStats`] / [`BridgeState`], the [`Wake`] hint, and the pure cycle planning
//! in [`plan`].
//!
//! Guarantees:
//! - **Alarms first, live before backlog.** Each cycle fetches in the outbox's drain order
//!   (alarms, ADT events, audit entries, live observations, backlog observations, dead letters; see
//!   [`icu_outbox`]) and delivers one stream at a time in that order: every alarm bundle of
//!   the cycle is produced *and its delivery report awaited* before the first observation bundle
//!   is produced, so after an outage the alarms reach Kafka before the backlog. An alarm
//!   committed while a cycle is in flight waits for at most that cycle and the one prepared
//!   during it (2 × `fetch_limit` records).
//! - **The backlog is rate-limited.** Observations of devices whose oldest unsent record is
//!   older than `live_window` are *backlog*; they draw from a token bucket of `backlog_rate`
//!   observations/s (bursting up to one second's worth), so they never take the place of live
//!   data nor more than that share of the uplink. Live devices are never throttled.
//! - **Nothing leaves the outbox before Kafka has it.** A range is marked sent only after the
//!   delivery report of its record (idempotent producer, `acks=all`); a batch the broker answered
//!   "duplicate sequence number", which librdkafka reports as delivered (without real offsets),
//!   counts as failed: the broker may have lost it. Per device, marking stops at
//!   the first failed record, so the outbox never has a hole behind a sent record; later records
//!   of that device are re-sent (same `(gateway, device, seq)` key, deduplicated downstream).
//!   The delivered bundles of one stream's phase are marked in one call
//!   ([`Outbox::mark_sent_many`]: one SQLite transaction, one commit); if it fails, nothing of
//!   it is counted forwarded and the records are sent again.
//! - **The right key, never a guessed patient.** A Kafka record holds one patient's records (or
//!   only unassociated ones); its key is that patient id (also in header `icu-patient-id`), else
//!   the device id. ADT records are keyed by their patient id, dead letters by their device id,
//!   audit-trail entries (one FHIR AuditEvent each, header `icu-device-id: audit`, seq = the
//!   entry's) by the gateway id, so the whole chain is in one partition, in order.
//! - **One delivery at a time.** A single loop runs cycles; a [`Wake`] only shortens the idle
//!   wait between healthy cycles (it never cuts a backoff short), so losing one is harmless.
//!   While a full cycle (a backlog draining) is delivered, the next one is *prepared* on the
//!   blocking pool: fetched behind the records in flight ([`Outbox::fetch_unsent_after`]),
//!   planned, mapped and signed. It is produced only after the current cycle was delivered and
//!   marked in full, and discarded after any failure, so per device records still leave in seq
//!   order and sent stays a prefix; the fetch, mapping and signing of one cycle overlap the
//!   delivery of the other. The mapping and signing of a cycle's bundles (most of its CPU) is
//!   split over up to four scoped threads; the values are the same whichever thread made them.
//! - **Visible failure.** Unreachable brokers and a missing topic set [`BridgeState::Offline`] /
//!   [`BridgeState::TopicMissing`], are logged once per state change naming the brokers and the
//!   topic, and are retried with exponential backoff up to `max_backoff`.
//! - **The actor never blocks.** Outbox calls and Kafka metadata requests run on
//!   `tokio::task::spawn_blocking`.

mod catalog;
mod config;
mod devices;
mod mapper;
pub mod plan;
mod protobuf;
mod quiet;
pub mod security;
mod stats;
pub mod topics;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::{Actor, AsyncContext, Context, Handler};
use futures::future::join_all;
use quiet::{FailureSlot, QuietContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

pub use self::config::{BridgeConfig, KafkaSettings};
pub use self::security::{KafkaSecurity, SecurityFailure, SecurityProtocol};
pub use self::stats::{BridgeState, BridgeStats, Phase};
use crate::error::BridgeError;
use crate::fhir::FhirContext;
use crate::signing::SigningKeys;
use crate::Terminology;
use icu_outbox::{FetchRequest, InFlightRuns, Outbox, SentRange, Stream};
#[cfg(test)]
use mapper::{content_type, map_and_sign_on, record_key, RecordKey, SignedRecord, MAX_MAP_THREADS};
use mapper::{map_and_sign, DeliveryError, Mapper, Value};
use plan::{markable, plan_bundles_with, PlannedBundle, TokenBucket};
use tokio::task::JoinHandle;

/// First backoff after a failed cycle.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// Bound of the remembered skipped records (used only to log each one once).
const SKIP_MEMORY: usize = 10_000;

/// How long a reported authentication / TLS failure explains a failed cycle.
const SECURITY_FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// The state for an authentication / TLS failure, its reason naming the setting to fix (also
/// the words of `check-config --probe`).
pub fn security_state(config: &BridgeConfig, failure: SecurityFailure) -> BridgeState {
    let s = &config.security;
    match failure {
        SecurityFailure::Auth(detail) => BridgeState::AuthFailed {
            reason: format!(
                "brokers {} refused the SASL login of user {:?} ({}): check [kafka.security] \
                 username and the password in {} (librdkafka: {detail})",
                config.brokers,
                s.username.as_deref().unwrap_or_default(),
                s.mechanism(),
                match (&s.password_file, &s.password_env) {
                    (Some(f), _) => format!("password_file {}", f.display()),
                    (None, Some(v)) => format!("password_env {v}"),
                    (None, None) => "password_file".into(),
                }
            ),
        },
        SecurityFailure::Tls(detail) => BridgeState::TlsFailed {
            reason: format!(
                "TLS handshake with brokers {} failed: check that [kafka.security] ca_file {} is \
                 the CA that signed the brokers' certificates{}{} (librdkafka: {detail})",
                config.brokers,
                s.ca_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "(not set)".into()),
                if s.verify_hostname {
                    " and that they name the host in bootstrap (verify_hostname)"
                } else {
                    ""
                },
                if s.client_cert_file.is_some() {
                    ", and that the brokers accept client_cert_file"
                } else {
                    ""
                },
            ),
        },
    }
}

/// Hint from the store after a commit: there may be something to send.
#[derive(Debug, Clone, Copy, actix::Message)]
#[rtype(result = "()")]
pub struct Wake;

/// The actix actor that runs the forwarding loop.
pub struct BridgeActor {
    wake: Arc<Notify>,
    worker: Option<Worker>,
}

impl BridgeActor {
    /// Validates the config and creates the Kafka producer (no network I/O yet).
    pub fn new(
        config: BridgeConfig,
        outbox: Arc<dyn Outbox>,
        key: Arc<SigningKeys>,
        terminology: Arc<Terminology>,
        stats: Arc<BridgeStats>,
    ) -> Result<Self, BridgeError> {
        config.validate()?;
        let failure = FailureSlot::default();
        let producer = create_producer(&config, &failure)?;
        let pb_producer = match &config.topic_observations_pb {
            Some(_) => Some(create_producer(&config, &failure)?),
            None => None,
        };
        stats.set_security(config.security.describe());
        stats.set_protobuf_topic(config.topic_observations_pb.clone());
        let mapper = Mapper {
            fhir: FhirContext::new(&config.gateway_id, &config.fhir_base),
            max_per_bundle: config.max_per_bundle,
            waveform_span_us: i64::try_from(config.waveform_bundle_ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
            max_waveform_segments: config.max_waveform_segments,
            key,
            terminology,
            envelope: config.signature == "envelope",
            protobuf: config.topic_observations_pb.is_some(),
        };
        Ok(Self {
            wake: Arc::new(Notify::new()),
            worker: Some(Worker {
                backlog: TokenBucket::new(config.backlog_rate, Instant::now()),
                config,
                outbox,
                mapper,
                prefetched: None,
                stats,
                producer,
                pb_producer,
                devices: catalog::DeviceCatalog::new(),
                topic_known: false,
                waveforms_held: None,
                skipped_logged: BTreeSet::new(),
                failure,
            }),
        })
    }
}

impl Actor for BridgeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Wakes are hints; a full mailbox drops them (try_send) and the poll covers it.
        ctx.set_mailbox_capacity(16);
        if let Some(worker) = self.worker.take() {
            ctx.spawn(actix::fut::wrap_future(worker.run(self.wake.clone())));
        }
    }
}

impl Handler<Wake> for BridgeActor {
    type Result = ();

    fn handle(&mut self, _: Wake, _: &mut Self::Context) {
        self.wake.notify_one();
    }
}

fn create_producer(
    config: &BridgeConfig,
    failure: &FailureSlot,
) -> Result<FutureProducer<QuietContext>, BridgeError> {
    let mut client = ClientConfig::new();
    for (k, v) in security::client_properties(&config.security, &config.properties)? {
        client.set(k, v);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("client.id", format!("icu-gateway-{}", config.gateway_id))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("compression.type", &config.compression)
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        // Topics are provisioned by the central team; never create one by producing to it.
        .set("allow.auto.create.topics", "false")
        .create_with_context(QuietContext::with_failure_slot(failure.clone()))
        .map_err(|source| BridgeError::Kafka {
            operation: "create producer",
            brokers: config.brokers.clone(),
            source,
        })
}

/// Why a cycle failed; decides the state.
enum CycleError {
    Offline(String),
    TopicMissing(String),
}

/// When to run the next cycle after a successful one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The fetch was full: right away.
    Now,
    /// The backlog was throttled: when the token bucket holds a batch again (or on a wake).
    After(Duration),
    /// Nothing more waiting: after `poll_interval` (or on a wake).
    Idle,
}

/// The forwarding loop's state, owned by one future.
struct Worker {
    config: BridgeConfig,
    outbox: Arc<dyn Outbox>,
    /// Maps and signs bundles (also on the blocking pool, for a prepared next cycle).
    mapper: Mapper,
    /// The next cycle, being prepared while the current one is delivered.
    prefetched: Option<JoinHandle<Result<Prepared, BridgeError>>>,
    stats: Arc<BridgeStats>,
    producer: FutureProducer<QuietContext>,
    /// The protobuf topic's own producer (`[kafka] topic_observations_pb`), see `protobuf.rs`.
    pb_producer: Option<FutureProducer<QuietContext>>,
    /// Every device's Device/DeviceMetric description and what was delivered of it
    /// (`icu.devices`, see `devices.rs`).
    devices: catalog::DeviceCatalog,
    /// Positive metadata answer for the topic (cached; reset on an unknown-topic error).
    topic_known: bool,
    /// The waveform topic is missing (since then): curves stay in the outbox, left out of each
    /// fetch, while alarms and readings forward; checked again every [`HELD_RECHECK`].
    waveforms_held: Option<Instant>,
    /// Tokens for backlog observations (`backlog_rate` per second).
    backlog: TokenBucket,
    skipped_logged: BTreeSet<(String, u64)>,
    /// The last authentication / TLS failure librdkafka reported (any of our producers).
    failure: FailureSlot,
}

/// How often a missing waveform topic is looked for again while the curves are held.
const HELD_RECHECK: Duration = Duration::from_secs(30);

impl Worker {
    async fn run(mut self, wake: Arc<Notify>) {
        info!(
            brokers = %self.config.brokers,
            topic = %self.config.topic_observations,
            topic_alarms = %self.config.topic_alarms,
            topic_adt = %self.config.topic_adt,
            topic_deadletter = %self.config.topic_deadletter,
            topic_audit = %self.config.topic_audit,
            key_id = %self.mapper.key.active().key_id(),
            "cloud bridge starting"
        );
        self.stats.set_state(BridgeState::Connecting);
        let mut backoff = Duration::ZERO;
        loop {
            self.stats.add_cycle();
            match self.cycle().await {
                Ok(next) => {
                    backoff = Duration::ZERO;
                    *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if let Some(previous) = self.stats.set_state(BridgeState::Online) {
                        info!(
                            brokers = %self.config.brokers,
                            topic = %self.config.topic_observations,
                            previous = ?previous,
                            "cloud bridge online"
                        );
                    }
                    let pause = match next {
                        Next::Now => continue,
                        Next::After(pause) => pause,
                        Next::Idle => self.config.poll_interval,
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = wake.notified() => {}
                    }
                }
                Err(err) => {
                    self.enter_failure_state(err);
                    backoff = next_backoff(backoff, self.config.max_backoff);
                    debug!(
                        backoff_ms = backoff.as_millis() as u64,
                        "cloud bridge backing off"
                    );
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn enter_failure_state(&mut self, err: CycleError) {
        // After a failure, the next cycle fetches afresh.
        self.prefetched = None;
        let brokers = &self.config.brokers;
        match err {
            CycleError::TopicMissing(topic) => {
                self.topic_known = false;
                let state = BridgeState::TopicMissing {
                    topic: topic.clone(),
                };
                if self.stats.set_state(state).is_some() {
                    error!(
                        %topic,
                        %brokers,
                        "kafka topic does not exist; create it, records stay in the outbox until then"
                    );
                }
            }
            CycleError::Offline(reason) if self.recent_security_failure().is_some() => {
                let failure = self
                    .recent_security_failure()
                    .unwrap_or(SecurityFailure::Auth(reason));
                let state = security_state(&self.config, failure);
                if self.stats.set_state(state.clone()).is_some() {
                    let reason = match &state {
                        BridgeState::AuthFailed { reason } | BridgeState::TlsFailed { reason } => {
                            reason.as_str()
                        }
                        _ => "",
                    };
                    error!(%brokers, state = state.name(), %reason, "cloud bridge cannot log in to kafka; records stay in the outbox and are retried");
                }
            }
            CycleError::Offline(reason) => {
                let state = BridgeState::Offline {
                    reason: reason.clone(),
                };
                if self.stats.set_state(state).is_some() {
                    let topic = &self.config.topic_observations;
                    error!(%brokers, %topic, %reason, "cloud bridge offline; records stay in the outbox and are retried");
                }
            }
        }
    }

    /// The authentication / TLS failure librdkafka reported in the last minute, if any.
    fn recent_security_failure(&self) -> Option<SecurityFailure> {
        let slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .filter(|(at, _)| at.elapsed() < SECURITY_FAILURE_MEMORY)
            .map(|(_, f)| f.clone())
    }

    /// What this cycle asks of the outbox: `fetch_limit` records, live = received within
    /// `live_window`, backlog up to the tokens in the bucket.
    fn fetch_request(&mut self) -> FetchRequest {
        let now_us = unix_now_us();
        let limit = self.config.fetch_limit;
        FetchRequest {
            limit,
            live_since_us: now_us.saturating_sub(self.config.live_window.as_micros() as i64),
            backlog_budget: self.backlog.available(Instant::now()).min(limit),
            held: self.waveforms_held.map(|_| Stream::Waveforms),
        }
    }

    /// One fetch → produce → mark round, one stream at a time in drain order.
    ///
    /// When the fetch was full (a backlog is draining), the next cycle is prepared (fetched
    /// behind this cycle's records, planned, mapped and signed, on the blocking pool) while this
    /// one is produced and its delivery reports are awaited; it is used only if this cycle was
    /// delivered and marked in full, else discarded (fetched again after the backoff).
    async fn cycle(&mut self) -> Result<Next, CycleError> {
        if self
            .waveforms_held
            .is_some_and(|since| since.elapsed() >= HELD_RECHECK)
        {
            self.topic_known = false;
        }
        self.ensure_topic().await?;

        let waiting = Instant::now();
        let prepared = match self.prefetched.take() {
            Some(next) => next.await,
            None => {
                let request = self.fetch_request();
                let (outbox, mapper) = (self.outbox.clone(), self.mapper.clone());
                tokio::task::spawn_blocking(move || {
                    prepare(&*outbox, &mapper, request, &InFlightRuns::new())
                })
                .await
            }
        };
        self.stats.add_phase(Phase::Preparing, waiting.elapsed());
        let prepared = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(e)) => return Err(self.outbox_failure(e.to_string())),
            Err(e) => return Err(self.outbox_failure(format!("outbox fetch task failed: {e}"))),
        };
        let request = prepared.request;
        self.backlog.take(prepared.backlog);
        let count = prepared.count;
        let next = if count >= request.limit {
            Next::Now
        } else if request.backlog_budget < request.limit
            && prepared.backlog >= request.backlog_budget
        {
            // Throttled: more backlog may be waiting. Come back when a batch's worth of tokens
            // is in the bucket (a wake, i.e. new live data, comes back sooner).
            let batch = request.limit.min(self.backlog.capacity());
            let pause = self.backlog.wait_for(batch, Instant::now());
            Next::After(pause.clamp(Duration::from_millis(1), self.config.poll_interval))
        } else {
            Next::Idle
        };
        self.note_skipped(&prepared.skipped, count);
        if next == Next::Now {
            let request = self.fetch_request();
            let (outbox, mapper) = (self.outbox.clone(), self.mapper.clone());
            let in_flight = prepared.fetched_to.clone();
            self.prefetched = Some(tokio::task::spawn_blocking(move || {
                prepare(&*outbox, &mapper, request, &in_flight)
            }));
        }
        // Bundles are ordered by stream in drain order: alarms are delivered and marked before
        // the first ADT or observation bundle is produced.
        let (bundles, values) = (&prepared.bundles, &prepared.values);
        let mut start = 0;
        while start < bundles.len() {
            let stream = bundles[start].stream;
            let end = start
                + bundles[start..]
                    .iter()
                    .take_while(|b| b.stream == stream)
                    .count();
            if let Err(e) = self
                .deliver(&bundles[start..end], &values[start..end])
                .await
            {
                // The prepared next cycle starts behind records that are not all sent.
                self.prefetched = None;
                return Err(e);
            }
            start = end;
        }
        Ok(next)
    }

    /// Produces one stream's bundles, awaits every delivery report and marks what may be marked.
    async fn deliver(
        &mut self,
        bundles: &[PlannedBundle],
        values: &[Value],
    ) -> Result<(), CycleError> {
        let delivering = Instant::now();
        let delivered = self.produce(bundles, values).await;
        let delivered = self.deliver_protobuf(bundles, values, delivered).await;
        // The delivery reports are in: the end of each reading's delivery latency.
        let reported_us = unix_now_us();
        self.deliver_devices(bundles, &delivered).await;
        self.stats
            .add_phase(Phase::Delivering, delivering.elapsed());
        let failed = delivered.iter().filter(|r| r.is_err()).count();
        let ok: Vec<bool> = delivered.iter().map(Result::is_ok).collect();

        // Every markable bundle of the phase in one outbox call (one SQLite transaction, one
        // commit), not one commit per bundle.
        let marked: Vec<&PlannedBundle> = markable(bundles, &ok)
            .into_iter()
            .map(|i| &bundles[i])
            .collect();
        let mut first_error: Option<CycleError> = None;
        if !marked.is_empty() {
            let marking = Instant::now();
            let result = self.mark_sent(&marked).await;
            self.stats.add_phase(Phase::Marking, marking.elapsed());
            match result {
                Ok(()) => {
                    let observations: usize = marked.iter().map(|b| b.observations.len()).sum();
                    self.stats
                        .add_forwarded(marked.len() as u64, observations as u64);
                    let latency = self.stats.delivery_latency();
                    for o in marked.iter().flat_map(|b| &b.observations) {
                        let us = reported_us.saturating_sub(o.receive_time_us).max(0);
                        latency.observe(us as f64 / 1e6);
                    }
                }
                Err(reason) => first_error = Some(self.outbox_failure(reason)),
            }
        }

        let first_failure = delivered
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.as_ref().err().map(|e| (i, e)));
        if let Some((i, err)) = first_failure {
            self.stats.add_delivery_errors(failed as u64);
            let bundle = &bundles[i];
            warn!(
                device_id = %bundle.device_id,
                seq_first = bundle.first_seq,
                seq_last = bundle.last_seq,
                failed,
                error = %err.reason,
                "kafka delivery failed; the records stay in the outbox"
            );
            self.reset_producer();
            let unknown_topic = delivered
                .iter()
                .zip(bundles)
                .find(|(r, _)| r.as_ref().err().is_some_and(|e| e.unknown_topic))
                .map(|(_, b)| self.config.topic(b.stream).to_owned());
            return Err(if let Some(topic) = unknown_topic {
                CycleError::TopicMissing(topic)
            } else {
                CycleError::Offline(format!(
                    "{failed} of {} kafka records not delivered to {}: {}",
                    bundles.len(),
                    self.config.brokers,
                    err.reason
                ))
            });
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn outbox_failure(&self, reason: String) -> CycleError {
        self.stats.add_outbox_error();
        error!(%reason, "outbox call failed");
        CycleError::Offline(format!("outbox: {reason}"))
    }

    /// Logs each skipped record once (bounded memory) and warns when they stall the outbox.
    fn note_skipped(&mut self, skipped: &[plan::SkippedRecord], fetched: usize) {
        self.stats.set_skipped(skipped.len() as u64);
        let mut new = skipped
            .iter()
            .filter(|s| !self.skipped_logged.contains(&(s.device_id.clone(), s.seq)))
            .peekable();
        if let Some(first) = new.peek() {
            let (device_id, seq, kind) = (first.device_id.clone(), first.seq, first.kind);
            let count = new.count();
            warn!(
                count,
                %device_id,
                seq,
                kind,
                "leaving records whose body does not belong to their stream in the outbox"
            );
            if self.skipped_logged.len() + count > SKIP_MEMORY {
                self.skipped_logged.clear();
            }
            self.skipped_logged
                .extend(skipped.iter().map(|s| (s.device_id.clone(), s.seq)));
            if fetched >= self.config.fetch_limit && skipped.len() == fetched {
                error!(
                    fetched,
                    "every record at the head of the outbox is one the bridge cannot forward; forwarding is stalled until they are handled"
                );
            }
        }
    }

    /// Checks (once, then cached) that every topic the bridge writes to exists.
    async fn ensure_topic(&mut self) -> Result<(), CycleError> {
        if self.topic_known {
            return Ok(());
        }
        let topics = Stream::ALL
            .iter()
            .map(|s| self.config.topic(*s).to_owned())
            .chain([self.config.topic_devices.clone()])
            .chain(self.config.topic_observations_pb.clone());
        for topic in topics {
            let producer = self.producer.clone();
            let timeout = self.config.metadata_timeout();
            let wanted = topic.clone();
            let answer = tokio::task::spawn_blocking(move || {
                let metadata = producer.client().fetch_metadata(Some(&wanted), timeout)?;
                Ok::<_, KafkaError>(
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == wanted)
                        .map(|t| (t.error(), t.partitions().len())),
                )
            })
            .await;
            let result = match answer {
                Ok(Ok(found)) => topic_check(&topic, found),
                Ok(Err(e)) => Err(CycleError::Offline(format!(
                    "cannot reach kafka brokers {}: {e}",
                    self.config.brokers
                ))),
                Err(e) => Err(CycleError::Offline(format!("metadata task failed: {e}"))),
            };
            let waveforms = topic == self.config.topic(Stream::Waveforms);
            match result {
                // Curves never hold up alarms and readings: a missing waveform topic holds the
                // curves alone, in the outbox, and is checked again later.
                Err(CycleError::TopicMissing(_)) if waveforms => {
                    if self.waveforms_held.is_none() {
                        error!(%topic, brokers = %self.config.brokers,
                            "kafka topic for the curves does not exist; create it (icu-gateway topics create): curves stay in the outbox, alarms and readings are forwarded");
                    }
                    self.waveforms_held = Some(Instant::now());
                    self.prefetched = None;
                    self.stats.set_held_topic(Some(topic.clone()));
                }
                Err(e) => {
                    self.stats.add_broker_error();
                    return Err(e);
                }
                Ok(()) if waveforms && self.waveforms_held.is_some() => {
                    info!(%topic, "kafka topic for the curves exists now: the held curves are forwarded");
                    self.waveforms_held = None;
                    self.prefetched = None;
                    self.stats.set_held_topic(None);
                }
                Ok(()) => {}
            }
        }
        self.topic_known = true;
        Ok(())
    }

    /// Produces every (mapped and signed) bundle, then awaits every delivery report.
    async fn produce(
        &self,
        bundles: &[PlannedBundle],
        values: &[Value],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut pending = Vec::with_capacity(bundles.len());
        for (bundle, value) in bundles.iter().zip(values) {
            // From the produce call to the delivery report, continuing the trace of the
            // message that was committed (disabled, and free, with tracing off).
            let span = delivery_span(bundle, self.config.topic(bundle.stream));
            let traceparent = crate::trace::traceparent_of(&span);
            pending.push((self.enqueue(bundle, value, traceparent), span));
        }
        let in_flight = pending.iter().filter(|p| p.0.is_ok()).count() as u64;
        // Decrements on completion and also if the actor stops while waiting.
        let _in_flight = InFlight::new(&self.stats, in_flight);
        let results = join_all(pending.into_iter().map(|(p, span)| async move {
            let result = match p {
                Err(e) => Err(e),
                Ok(future) => match future.await {
                    Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
                    Ok(Err((e, _message))) => Err(DeliveryError::from_kafka(&e)),
                    Err(_canceled) => Err(DeliveryError {
                        reason: "delivery report lost (producer shut down)".into(),
                        unknown_topic: false,
                    }),
                },
            };
            match &result {
                Ok((partition, offset)) => {
                    span.record("partition", i64::from(*partition));
                    span.record("offset", offset);
                }
                Err(e) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error", e.reason.as_str());
                }
            }
            result
        }))
        .await;
        // librdkafka reports a batch answered DUPLICATE_SEQUENCE_NUMBER as delivered, with the
        // answer's base offset -1 counted up: its first record at -1, the others at 0, 1, ...
        // A broker that recorded the batch's sequence but lost the batch answers so (tansu's S3
        // engine killed between its writes; Kafka answers a retried duplicate with its offset).
        // No proof: every record of this phase on such a partition (a batch never spans phases:
        // each phase's reports are all awaited) is sent again.
        let suspect: BTreeSet<i32> = results
            .iter()
            .filter_map(|r| match r {
                Ok((partition, offset)) if *offset < 0 => Some(*partition),
                _ => None,
            })
            .collect();
        results
            .into_iter()
            .map(|r| match r {
                Ok((partition, _)) if suspect.contains(&partition) => Err(DeliveryError {
                    reason: format!(
                        "partition {partition} answered a batch \"duplicate sequence number\" \
                         (reported delivered without an offset): not proven stored, sent again"
                    ),
                    unknown_topic: false,
                }),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn enqueue(
        &self,
        bundle: &PlannedBundle,
        value: &Value,
        traceparent: Option<String>,
    ) -> Result<rdkafka::producer::DeliveryFuture, DeliveryError> {
        let signed = value.as_ref().map_err(Clone::clone)?;
        let mut record_headers = owned_headers(&signed.headers);
        // Transport metadata, outside the signed envelope (see `crate::trace`).
        if let Some(traceparent) = &traceparent {
            record_headers = record_headers.insert(header(crate::trace::TRACEPARENT, traceparent));
        }
        let record = FutureRecord::to(self.config.topic(bundle.stream))
            .key(signed.key.as_str())
            .payload(signed.value.as_slice())
            .headers(record_headers);
        self.producer
            .send_result(record)
            .map_err(|(e, _record)| DeliveryError::from_kafka(&e))
    }

    /// Marks the delivered bundles of one phase sent, in one outbox call.
    async fn mark_sent(&self, bundles: &[&PlannedBundle]) -> Result<(), String> {
        let outbox = self.outbox.clone();
        let ranges: Vec<SentRange> = bundles
            .iter()
            .map(|b| SentRange {
                stream: b.stream,
                device_id: b.device_id.clone(),
                first_seq: b.first_seq,
                last_seq: b.last_seq,
            })
            .collect();
        match tokio::task::spawn_blocking(move || outbox.mark_sent_many(&ranges)).await {
            Ok(Ok(())) => {
                debug!(bundles = bundles.len(), "bundles delivered and marked sent");
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("outbox mark_sent task failed: {e}")),
        }
    }

    /// After failed deliveries, starts a fresh producer and re-checks the topic next cycle.
    ///
    /// Every delivery report was awaited, so nothing is in flight in the old producer. A fresh
    /// producer gets a new producer id, which clears both a fatal idempotence error and a broker
    /// that lost this producer's state (it answers UnknownProducerId until messages time out).
    /// The records were not marked sent, so they are simply produced again.
    fn reset_producer(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            error!(?code, %reason, "kafka producer hit a fatal error");
        }
        self.topic_known = false;
        match create_producer(&self.config, &self.failure) {
            Ok(producer) => {
                let old = std::mem::replace(&mut self.producer, producer);
                // Dropping a producer joins its polling thread and flushes: keep it off the actor.
                drop(tokio::task::spawn_blocking(move || drop(old)));
                debug!("kafka producer recreated after failed deliveries");
            }
            Err(e) => error!(error = %e, "cannot recreate the kafka producer"),
        }
    }
}

/// One cycle fetched, planned, mapped and signed, ready to produce.
struct Prepared {
    request: FetchRequest,
    /// Records fetched.
    count: usize,
    /// Backlog observations among them (debited from the token bucket).
    backlog: usize,
    /// Ordered by stream (drain order), device, seq.
    bundles: Vec<PlannedBundle>,
    /// The Kafka value of each bundle.
    values: Vec<Value>,
    skipped: Vec<plan::SkippedRecord>,
    /// Per `(stream, device)` the highest seq fetched: what the next cycle, prepared while this
    /// one is delivered, starts behind.
    fetched_to: InFlightRuns,
}

/// Fetches (behind `in_flight`), plans, maps and signs one cycle. Blocking.
fn prepare(
    outbox: &dyn Outbox,
    mapper: &Mapper,
    request: FetchRequest,
    in_flight: &InFlightRuns,
) -> Result<Prepared, BridgeError> {
    let fetched = outbox.fetch_unsent_after(&request, in_flight)?;
    let count = fetched.records.len();
    let mut fetched_to = InFlightRuns::new();
    for r in &fetched.records {
        let to = fetched_to
            .entry((r.stream, r.device_id.clone()))
            .or_insert(r.seq);
        *to = (*to).max(r.seq);
    }
    let plan = plan_bundles_with(fetched.records, mapper.limits());
    let values = map_and_sign(mapper, &plan.bundles);
    Ok(Prepared {
        request,
        count,
        backlog: fetched.backlog,
        bundles: plan.bundles,
        values,
        skipped: plan.skipped,
        fetched_to,
    })
}

/// Counts records awaiting their delivery report for as long as it lives.
struct InFlight<'a> {
    stats: &'a BridgeStats,
    n: u64,
}

impl<'a> InFlight<'a> {
    fn new(stats: &'a BridgeStats, n: u64) -> Self {
        stats.add_in_flight(n);
        Self { stats, n }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.stats.sub_in_flight(self.n);
    }
}

/// The span of one bundle's delivery (`kafka.deliver`, a producer span), the child of the trace
/// context stored with its first traced record. Never a patient name: device, bed, stream, topic
/// and seq range only.
fn delivery_span(bundle: &PlannedBundle, topic: &str) -> tracing::Span {
    let span = tracing::info_span!(
        target: crate::trace::TARGET,
        "kafka.deliver",
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        device = %bundle.device_id,
        bed = %bundle.bed,
        stream = bundle.stream.as_str(),
        topic,
        seq_first = bundle.first_seq as i64,
        seq_last = bundle.last_seq as i64,
        records = bundle.len() as i64,
        partition = tracing::field::Empty,
        offset = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    crate::trace::continue_trace(&span, &bundle.traceparent);
    span
}

/// A record's headers as rdkafka takes them.
fn owned_headers(headers: &[(&'static str, String)]) -> OwnedHeaders {
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |h, (name, value)| h.insert(header(name, value)),
    )
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Decides from a metadata answer whether the topic is usable.
fn topic_check(
    topic: &str,
    found: Option<(Option<RDKafkaRespErr>, usize)>,
) -> Result<(), CycleError> {
    let missing = || Err(CycleError::TopicMissing(topic.to_owned()));
    match found {
        None => missing(),
        Some((Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), _))
        | Some((Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC), _)) => missing(),
        Some((Some(err), _)) => Err(CycleError::Offline(format!(
            "topic metadata error: {}",
            RDKafkaErrorCode::from(err)
        ))),
        Some((None, 0)) => missing(),
        Some((None, _)) => Ok(()),
    }
}

/// Doubles the backoff (starting at 250 ms), capped at `max`.
/// Wall-clock microseconds since the Unix epoch (the clock of the readings' receive times).
fn unix_now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn next_backoff(current: Duration, max: Duration) -> Duration {
    let next = if current.is_zero() {
        INITIAL_BACKOFF
    } else {
        current.saturating_mul(2)
    };
    next.min(max)
}

#[cfg(test)]
mod tests;
