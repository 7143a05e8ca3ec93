//! The census on its own `SyncArbiter` thread: ADT messages are applied there (SQLite writes),
//! while device actors read the bed→patient timeline from the shared in-memory
//! [`CensusReader`](super::CensusReader) without ever waiting for the disk.

use actix::prelude::*;
use icu_drivers::hl7::AdtMessage;

use std::sync::Arc;

use super::{ApplyOutcome, BedMap, Census, CensusError};
use crate::audit::{AuditEntry, AuditLog, Outcome};

pub struct CensusActor {
    census: Census,
    beds: BedMap,
    /// Every ADT event is written to the audit trail (sender and peer) before it is applied.
    audit: Option<Arc<AuditLog>>,
}

impl CensusActor {
    pub fn start(census: Census, beds: BedMap, audit: Option<Arc<AuditLog>>) -> Addr<CensusActor> {
        let cell = std::sync::Mutex::new(Some((census, beds, audit)));
        SyncArbiter::start(1, move || {
            let (census, beds, audit) = cell
                .lock()
                .expect("census cell")
                .take()
                .expect("the census actor is started exactly once");
            CensusActor {
                census,
                beds,
                audit,
            }
        })
    }
}

impl Actor for CensusActor {
    type Context = SyncContext<Self>;
}

/// Apply one decoded ADT message; resolves after its census transaction committed.
#[derive(Message)]
#[rtype(result = "Result<(ApplyOutcome, icu_protos::v1::AdtEvent), CensusError>")]
pub struct ApplyAdt {
    pub message: AdtMessage,
    pub received_us: i64,
    /// The address it came from (`ip:port`), recorded with the event.
    pub peer: Option<String>,
}

impl Handler<ApplyAdt> for CensusActor {
    type Result = Result<(ApplyOutcome, icu_protos::v1::AdtEvent), CensusError>;

    fn handle(&mut self, msg: ApplyAdt, _: &mut Self::Context) -> Self::Result {
        let event = super::to_adt_event(&msg.message, &self.beds);
        // Audited first: an event the trail cannot record is refused (AR, the sender resends).
        let entry = self.audit.as_ref().map(|_| {
            AuditEntry::adt_applied(
                &msg.message.header.sending_application,
                msg.peer.as_deref().unwrap_or(""),
                &event.event,
                &event.bed,
                &event.patient_id,
            )
            .reason(format!("control id {}", msg.message.header.control_id))
        });
        if let (Some(audit), Some(entry)) = (&self.audit, &entry) {
            audit
                .append(entry.clone())
                .map_err(|e| CensusError::Database {
                    path: "audit trail".into(),
                    message: format!(
                        "the ADT event could not be audited, so it is not applied: {e}"
                    ),
                })?;
        }
        let outcome = self.census.apply_from(
            &msg.message,
            &self.beds,
            msg.received_us,
            msg.peer.as_deref(),
        );
        if let (Err(e), Some(audit), Some(entry)) = (&outcome, &self.audit, entry) {
            let _ = audit.append(entry.outcome(Outcome::Failed).reason(e.to_string()));
        }
        Ok((outcome?, event))
    }
}

/// A configuration reload's beds: ADT locations map to beds by the new table from the next
/// ADT message on. Patients already placed keep their place.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetBedMap(pub BedMap);

impl Handler<SetBedMap> for CensusActor {
    type Result = ();

    fn handle(&mut self, msg: SetBedMap, _: &mut Self::Context) {
        self.beds = msg.0;
    }
}
