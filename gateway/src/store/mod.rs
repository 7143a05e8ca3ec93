//! The durable store: SQLite in WAL mode, written with group commit.
//!
//! Owns: the database file, per-device `seq` assignment, the outbox (records not yet delivered
//! to Kafka) and the dead-letter table.
//!
//! Shape: [`Store`] is an async actor that callers `send().await` to; it gathers the requests
//! that arrive while the disk is busy and hands them as one batch to [`StoreWriter`], a
//! `SyncArbiter` actor that owns the only writing connection. So at low load each request is
//! committed at once, and at high load many requests share one commit (group commit).
//!
//! Guarantees: a caller gets `Ok` only after the `COMMIT` that holds its whole request returned
//! (the MLLP ACK is sent after that); a request is stored whole or not at all; the number of
//! requests waiting for the disk is bounded (`store.max_pending`), beyond which requests are
//! refused (and counted), never dropped silently.

pub mod db;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use icu_cloud_bridge::outbox::{FetchRequest, Fetched, Outbox, OutboxRecord};
use icu_protos::v1::StoredRecord;
use icu_protos::Message as _;
use tokio::sync::oneshot;

pub use db::{
    AlarmWrite, DeadLetter, ObservationBatch, ReaderDb, StoreDb, StoreError, WriteOutcome,
    WriteRequest,
};

/// Counters of the store, shared with the API.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub commits: AtomicU64,
    pub requests_stored: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_refused_overload: AtomicU64,
    pub largest_batch: AtomicU64,
}

impl StoreStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "commits": self.commits.load(Ordering::Relaxed),
            "requests_stored": self.requests_stored.load(Ordering::Relaxed),
            "requests_failed": self.requests_failed.load(Ordering::Relaxed),
            "requests_refused_overload": self.requests_refused_overload.load(Ordering::Relaxed),
            "largest_batch": self.largest_batch.load(Ordering::Relaxed),
        })
    }
}

/// One batch for the writer thread.
struct CommitBatch(Vec<WriteRequest>);

impl actix::Message for CommitBatch {
    type Result = Vec<Result<WriteOutcome, StoreError>>;
}

/// Owns the writing connection; runs on a `SyncArbiter` thread.
pub struct StoreWriter {
    db: StoreDb,
}

impl Actor for StoreWriter {
    type Context = SyncContext<Self>;
}

impl Handler<CommitBatch> for StoreWriter {
    type Result = MessageResult<CommitBatch>;

    fn handle(&mut self, msg: CommitBatch, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.db.commit_batch(&msg.0))
    }
}

/// Store one request durably. Resolves after the commit that holds it.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, StoreError>")]
pub struct Append(pub WriteRequest);

/// Who gets told after a commit (the bridge, so it forwards at once instead of at its next poll).
pub type CommitListener = Box<dyn Fn() + Send>;

type Pending = (
    WriteRequest,
    oneshot::Sender<Result<WriteOutcome, StoreError>>,
);

/// The async front of the store (see the module docs).
pub struct Store {
    writer: Addr<StoreWriter>,
    pending: Vec<Pending>,
    busy: bool,
    max_batch: usize,
    max_pending: usize,
    stats: Arc<StoreStats>,
    on_commit: Option<CommitListener>,
}

impl Store {
    /// Opens the database and starts the writer thread. Fails if the file cannot be opened
    /// for writing.
    pub fn start(
        cfg: &crate::config::StoreConfig,
        gateway_id: &str,
        stats: Arc<StoreStats>,
        on_commit: Option<CommitListener>,
    ) -> Result<Addr<Store>, StoreError> {
        let db = StoreDb::open(
            &cfg.path,
            gateway_id,
            cfg.synchronous_full,
            cfg.disk_budget_bytes,
        )?;
        let cell = Mutex::new(Some(db));
        let writer = SyncArbiter::start(1, move || StoreWriter {
            db: cell
                .lock()
                .expect("store writer cell")
                .take()
                .expect("the store writer is started exactly once"),
        });
        let store = Store {
            writer,
            pending: Vec::new(),
            busy: false,
            max_batch: cfg.max_batch,
            max_pending: cfg.max_pending,
            stats,
            on_commit,
        };
        Ok(Store::create(|ctx| {
            ctx.set_mailbox_capacity(cfg.max_pending);
            store
        }))
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.pending.is_empty() {
            return;
        }
        let take = self.pending.len().min(self.max_batch);
        let batch: Vec<Pending> = self.pending.drain(..take).collect();
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        self.busy = true;
        self.stats
            .largest_batch
            .fetch_max(requests.len() as u64, Ordering::Relaxed);
        let n = requests.len();
        let fut = self
            .writer
            .send(CommitBatch(requests))
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.busy = false;
                let results =
                    res.unwrap_or_else(|_| (0..n).map(|_| Err(StoreError::Closed)).collect());
                act.stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut any_stored = false;
                for (reply, result) in replies.into_iter().zip(results) {
                    match &result {
                        Ok(_) => {
                            any_stored = true;
                            act.stats.requests_stored.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            act.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "store write refused");
                        }
                    }
                    let _ = reply.send(result);
                }
                if any_stored {
                    if let Some(f) = &act.on_commit {
                        f();
                    }
                }
                act.flush(ctx);
            });
        // spawn, not wait: new requests keep arriving (and queue up) while the disk is busy.
        ctx.spawn(fut);
    }
}

impl Actor for Store {
    type Context = Context<Self>;
}

impl Handler<Append> for Store {
    type Result = ResponseFuture<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        if self.pending.len() >= self.max_pending {
            self.stats
                .requests_refused_overload
                .fetch_add(1, Ordering::Relaxed);
            let pending = self.pending.len();
            return Box::pin(async move { Err(StoreError::Overloaded { pending }) });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.push((msg.0, tx));
        self.flush(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(StoreError::Closed)) })
    }
}

/// The outbox as the cloud bridge sees it, over its own SQLite connection.
pub struct SqliteOutbox {
    reader: Mutex<ReaderDb>,
}

impl SqliteOutbox {
    pub fn open(cfg: &crate::config::StoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            reader: Mutex::new(ReaderDb::open(&cfg.path, cfg.synchronous_full)?),
        })
    }

    pub fn counts(&self) -> Result<db::StoreCounts, StoreError> {
        self.reader.lock().map_err(|_| StoreError::Closed)?.counts()
    }
}

fn outbox_err(
    operation: &'static str,
) -> impl Fn(StoreError) -> icu_cloud_bridge::error::BridgeError {
    move |e| icu_cloud_bridge::error::BridgeError::Outbox {
        operation,
        reason: e.to_string(),
    }
}

impl Outbox for SqliteOutbox {
    fn fetch_unsent(
        &self,
        request: &FetchRequest,
    ) -> Result<Fetched, icu_cloud_bridge::error::BridgeError> {
        let fetched = self
            .reader
            .lock()
            .map_err(|_| outbox_err("fetch_unsent")(StoreError::Closed))?
            .fetch(request)
            .map_err(outbox_err("fetch_unsent"))?;
        let records = fetched
            .records
            .into_iter()
            .map(|row| {
                let db::UnsentRow {
                    stream,
                    device_id,
                    seq,
                    bed,
                    payload,
                } = row;
                let record = StoredRecord::decode(payload.as_slice()).map_err(|e| {
                    outbox_err("fetch_unsent")(StoreError::Sqlite {
                        path: format!("records({device_id}, {seq})"),
                        message: format!("stored record does not decode: {e}"),
                    })
                })?;
                Ok(OutboxRecord {
                    stream,
                    device_id,
                    seq,
                    bed,
                    record,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Fetched {
            records,
            backlog: fetched.backlog,
        })
    }

    fn mark_sent(
        &self,
        stream: icu_cloud_bridge::outbox::Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), icu_cloud_bridge::error::BridgeError> {
        self.reader
            .lock()
            .map_err(|_| outbox_err("mark_sent")(StoreError::Closed))?
            .mark_sent(stream, device_id, first_seq, last_seq)
            .map(|_| ())
            .map_err(outbox_err("mark_sent"))
    }
}
