//! One actor per configured device.
//!
//! Owns: the device's identity (id, bed) on every reading it sends, its live counters, and the
//! hand-off of its readings to the store. Guarantees: readings are stamped with the configured
//! device id and bed (never a guessed patient), and reach the live view before the disk; the
//! reply resolves only after the store committed the whole message (or refused it), so the
//! transport acknowledges only what is durable. The mailbox is bounded: a transport that sends
//! faster than the disk takes is slowed down (`send().await` waits), never dropped.

use std::sync::Arc;

use actix::prelude::*;
use icu_drivers::hl7::{AckCode, ErrorCode, Hl7Error, Pcd01Message};

use crate::clock::ClockState;
use crate::config::Device;
use crate::live::LiveState;
use crate::store::{Append, ObservationBatch, Store, StoreError, WriteOutcome, WriteRequest};

/// Most messages waiting in one device's mailbox.
pub const DEVICE_MAILBOX: usize = 64;

pub struct DeviceActor {
    device: Device,
    store: Addr<Store>,
    live: Arc<LiveState>,
    clock: Arc<ClockState>,
}

impl DeviceActor {
    pub fn start(
        device: Device,
        store: Addr<Store>,
        live: Arc<LiveState>,
        clock: Arc<ClockState>,
    ) -> Addr<Self> {
        DeviceActor::create(|ctx| {
            ctx.set_mailbox_capacity(DEVICE_MAILBOX);
            DeviceActor {
                device,
                store,
                live,
                clock,
            }
        })
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Self::Context) {
        tracing::info!(device = %self.device.id, bed = %self.device.bed, "device actor started");
    }
}

/// A decoded PCD-01 message from this device.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, Hl7Error>")]
pub struct IngestPcd01 {
    pub message: Pcd01Message,
    /// Digest of the raw message bytes, to recognise a sender's retry.
    pub digest: i64,
    pub receive_time_us: i64,
}

/// The HL7 answer for a store failure: AR, application internal error, saying why.
pub fn store_error_to_hl7(e: &StoreError) -> Hl7Error {
    Hl7Error::new(
        AckCode::AR,
        ErrorCode::ApplicationInternalError,
        None,
        format!("{e}; please resend later"),
    )
}

impl Handler<IngestPcd01> for DeviceActor {
    type Result = ResponseFuture<Result<WriteOutcome, Hl7Error>>;

    fn handle(&mut self, msg: IngestPcd01, _: &mut Self::Context) -> Self::Result {
        let synced = self.clock.is_synced(msg.receive_time_us);
        let mut observations = msg.message.observations;
        for o in &mut observations {
            o.device_id = self.device.id.clone();
            o.bed = self.device.bed.clone();
            o.clock_synced = synced;
        }
        // Live view (and later the alarm engine) first: it never waits for the disk.
        self.live.record_message(
            &self.device.id,
            &self.device.bed,
            &observations,
            msg.receive_time_us,
        );
        let request = WriteRequest::Observations(ObservationBatch {
            device_id: self.device.id.clone(),
            bed: self.device.bed.clone(),
            dedup: Some((msg.message.header.control_id.clone(), msg.digest)),
            observations,
        });
        let stored = self.store.send(Append(request));
        let live = self.live.clone();
        let device_id = self.device.id.clone();
        Box::pin(async move {
            match stored.await {
                Ok(Ok(outcome)) => {
                    if matches!(outcome, WriteOutcome::Duplicate { .. }) {
                        live.record_duplicate(&device_id);
                    }
                    Ok(outcome)
                }
                Ok(Err(e)) => {
                    live.record_error(&device_id, &e.to_string());
                    Err(store_error_to_hl7(&e))
                }
                Err(_) => Err(store_error_to_hl7(&StoreError::Closed)),
            }
        })
    }
}
