//! The census on its own `SyncArbiter` thread: ADT messages are applied there (SQLite writes),
//! while device actors read the bed→patient timeline from the shared in-memory
//! [`CensusReader`](super::CensusReader) without ever waiting for the disk.

use actix::prelude::*;
use icu_drivers::hl7::AdtMessage;

use super::{ApplyOutcome, BedMap, Census, CensusError};

pub struct CensusActor {
    census: Census,
    beds: BedMap,
}

impl CensusActor {
    pub fn start(census: Census, beds: BedMap) -> Addr<CensusActor> {
        let cell = std::sync::Mutex::new(Some((census, beds)));
        SyncArbiter::start(1, move || {
            let (census, beds) = cell
                .lock()
                .expect("census cell")
                .take()
                .expect("the census actor is started exactly once");
            CensusActor { census, beds }
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
        let outcome = self.census.apply_from(
            &msg.message,
            &self.beds,
            msg.received_us,
            msg.peer.as_deref(),
        )?;
        Ok((outcome, super::to_adt_event(&msg.message, &self.beds)))
    }
}
