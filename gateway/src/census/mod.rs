//! The census: which patient is in which configured bed, over time, from the ADT feed.
//!
//! Owns the `stays`, `patients` and `adt_events` tables (`schema.sql`, created if absent in the
//! store's database file, beside the store's own connections in WAL mode) and an in-memory copy
//! of the timeline that answers [`CensusReader::patient_at`] for every reading without touching
//! the disk. The timeline itself and the planning of an event against it, without I/O, are in
//! `timeline.rs`; this file is the SQLite side (open, load, write a plan, then apply it in
//! memory).
//!
//! Guarantees (DESIGN.md, "Patient association"):
//! - **Never guess.** A reading is associated with a patient only if a stay of that patient in
//!   that bed covers the reading's time (`start ≤ t < end`). Before the admission, after the
//!   discharge or transfer, or in a bed whose ADT location maps to no configured bed, there is no
//!   patient.
//! - Stays of one bed never overlap, nor do stays of one patient. An event that would break that
//!   (a transfer timed before the admission, a discharge before the stay began) is refused
//!   ([`CensusError::Rejected`]) and changes nothing.
//! - An ADT message is applied whole in one SQLite transaction, and the in-memory timeline
//!   changes only after the `COMMIT` returned; so the HL7 ACK sent after [`Census::apply`]
//!   returned `Ok` is for a durable change, and a restart ([`Census::open`]) gives the same
//!   answers.
//! - Every message, applied or refused, is kept in `adt_events` (with the address it came from,
//!   when known); a resent message (same sender, control id, event, patient and time) is
//!   recognised and not applied twice.
//!
//! Events: A01/A04 admit (A04 only when it names a location), A02 transfer, A03 discharge, A08
//! update (demographics only; never moves a patient), A11/A12/A13 undo the patient's latest
//! admit/transfer/discharge when it is still the latest change and undoing it conflicts with no
//! later stay. An admit or transfer into a bed held by another patient ends that patient's stay
//! at the event time ([`ApplyOutcome::Displaced`]). An admit or transfer to a location that maps
//! to no configured bed ends the patient's stay here, if any ([`ApplyOutcome::UnknownBed`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use icu_drivers::hl7::Hl7Error;
use icu_drivers::hl7::{AckCode, AdtLocation, AdtMessage, ErrorCode};
use icu_protos::v1::AdtEvent;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub mod actor;
mod timeline;

use timeline::{plan, Demographics, Index, Op, Plan, Stay};
pub use timeline::{ApplyOutcome, CensusReader, PatientRef, RejectKind};

#[cfg(test)]
mod tests;

const SCHEMA: &str = include_str!("schema.sql");

/// ADT location → configured bed id. Keys are `point_of_care^room^bed` (PV1-3 components 1-3,
/// as [`AdtLocation::key`]) or, as a fallback, the bare bed component (PV1-3.3).
pub type BedMap = HashMap<String, String>;

/// The configured bed an ADT location maps to: by `point_of_care^room^bed`, else by the bare bed
/// component.
pub fn resolve_bed<'a>(bed_map: &'a BedMap, location: &AdtLocation) -> Option<&'a str> {
    bed_map
        .get(&location.key())
        .or_else(|| {
            Some(&location.bed)
                .filter(|b| !b.is_empty())
                .and_then(|b| bed_map.get(b))
        })
        .map(String::as_str)
}

/// The ADT event for the store and the `icu.adt` topic. `bed`/`prior_bed` are the configured bed
/// ids when PV1-3/PV1-6 map to one, else the location key as written (`ICU9^1^A`), else empty;
/// `event_time_us` is 0 when the message carries no time at all.
pub fn to_adt_event(msg: &AdtMessage, bed_map: &BedMap) -> AdtEvent {
    let bed_of = |l: &Option<AdtLocation>| {
        l.as_ref()
            .map(|l| resolve_bed(bed_map, l).map_or_else(|| l.key(), str::to_owned))
            .unwrap_or_default()
    };
    AdtEvent {
        event: msg.event.code().to_owned(),
        patient_id: msg.patient.id.clone(),
        bed: bed_of(&msg.location),
        prior_bed: bed_of(&msg.prior_location),
        event_time_us: msg.event_time_us.unwrap_or_default(),
        family_name: msg.patient.family.clone(),
        given_name: msg.patient.given.clone(),
        visit_number: msg.visit_number.clone().unwrap_or_default(),
        birth_date: msg.patient.birth_date.clone(),
        sex: msg.patient.sex.clone(),
        admit_time_us: msg.admit_time_us,
        discharge_time_us: msg.discharge_time_us,
        assigning_authority: msg.patient.assigning_authority.clone(),
        message_id: msg.header.control_id.clone(),
        // Filled in by the listener, which knows the connection.
        peer: String::new(),
    }
}

/// Why [`Census::apply`] or [`Census::open`] failed. After any error nothing of that message
/// changed (an `adt_events` row records a rejection).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CensusError {
    #[error("census database error ({path}): {message}")]
    Database { path: String, message: String },
    #[error("{event} {message_id} for patient {patient_id} refused: {reason}")]
    Rejected {
        kind: RejectKind,
        event: String,
        message_id: String,
        patient_id: String,
        reason: String,
    },
}

impl CensusError {
    /// The error for the ACK: AR 207 (resend later) for a database failure, AE 207 with the
    /// reason for a refused event (resending it unchanged fails again).
    pub fn to_hl7_error(&self) -> Hl7Error {
        match self {
            CensusError::Database { .. } => Hl7Error::internal(self.to_string()),
            CensusError::Rejected { .. } => Hl7Error::new(
                AckCode::AE,
                ErrorCode::ApplicationInternalError,
                None,
                self.to_string(),
            ),
        }
    }
}

/// The bed → patient census over its own SQLite connection. See the module docs.
pub struct Census {
    conn: Connection,
    path: PathBuf,
    index: Arc<RwLock<Index>>,
}

impl fmt::Debug for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Census").field("path", &self.path).finish()
    }
}

impl Census {
    /// Opens (creating if needed) the census tables in the database at `path` (the store's file)
    /// and loads the timeline into memory.
    pub fn open(path: &Path) -> Result<Census, CensusError> {
        let db_err = |e: rusqlite::Error| CensusError::Database {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        // The store's one opener (WAL, busy timeout, foreign keys), synchronous FULL: an ADT
        // change is acknowledged only once it survives a power cut.
        let conn =
            crate::store::db::open_connection(path, true).map_err(|e| CensusError::Database {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        add_peer_column(&conn).map_err(db_err)?;
        let index = load(&conn).map_err(db_err)?;
        Ok(Census {
            conn,
            path: path.to_owned(),
            index: Arc::new(RwLock::new(index)),
        })
    }

    /// A read handle that follows this census.
    pub fn reader(&self) -> CensusReader {
        CensusReader {
            index: Arc::clone(&self.index),
        }
    }

    /// See [`CensusReader::patient_at`].
    pub fn patient_at(&self, bed: &str, time_us: i64) -> Option<PatientRef> {
        self.read().patient_at(bed, time_us)
    }

    /// See [`CensusReader::current`].
    pub fn current(&self) -> Vec<(String, PatientRef)> {
        self.read().current()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one decoded ADT message at its event time (EVN-6/EVN-2/MSH-7, else
    /// `received_us`). `Ok` only after the change is committed; see the module docs.
    pub fn apply(
        &mut self,
        msg: &AdtMessage,
        bed_map: &BedMap,
        received_us: i64,
    ) -> Result<ApplyOutcome, CensusError> {
        self.apply_from(msg, bed_map, received_us, None)
    }

    /// [`Census::apply`], recording in `adt_events` the address the message came from.
    pub fn apply_from(
        &mut self,
        msg: &AdtMessage,
        bed_map: &BedMap,
        received_us: i64,
        peer: Option<&str>,
    ) -> Result<ApplyOutcome, CensusError> {
        let t = msg.event_time_us.unwrap_or(received_us);
        if self.already_applied(msg, t)? {
            return Ok(ApplyOutcome::Duplicate {
                message_id: msg.header.control_id.clone(),
            });
        }
        let bed = msg
            .location
            .as_ref()
            .and_then(|l| resolve_bed(bed_map, l))
            .map(str::to_owned);
        let plan = {
            let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
            plan(&index, msg, bed.as_deref(), t)
        };
        match plan {
            Ok(plan) => {
                let ids = self.commit(msg, t, received_us, bed.as_deref(), peer, &plan)?;
                self.apply_to_memory(msg, t, &plan, ids);
                Ok(plan.outcome)
            }
            Err(reject) => {
                let event = EventRow {
                    msg,
                    t,
                    received_us,
                    bed: bed.as_deref(),
                    accepted: false,
                    outcome: "rejected",
                    detail: &reject.reason,
                    peer,
                };
                let path = &self.path;
                let tx = self
                    .conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| db_error(path, e))?;
                insert_event(&tx, &event).map_err(|e| db_error(path, e))?;
                tx.commit().map_err(|e| db_error(path, e))?;
                Err(CensusError::Rejected {
                    kind: reject.kind,
                    event: msg.event.code().to_owned(),
                    message_id: msg.header.control_id.clone(),
                    patient_id: msg.patient.id.clone(),
                    reason: reject.reason,
                })
            }
        }
    }

    fn db_err(&self, e: rusqlite::Error) -> CensusError {
        db_error(&self.path, e)
    }

    fn already_applied(&self, msg: &AdtMessage, t: i64) -> Result<bool, CensusError> {
        self.conn
            .query_row(
                "SELECT 1 FROM adt_events WHERE sender = ?1 AND message_id = ?2 AND event = ?3
                   AND patient_id = ?4 AND event_time_us = ?5 AND accepted = 1 LIMIT 1",
                params![
                    sender(msg),
                    msg.header.control_id,
                    msg.event.code(),
                    msg.patient.id,
                    t
                ],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.db_err(e))
    }

    /// Writes the event, the stay changes and the demographics in one transaction; returns the
    /// `adt_events` id and the ids of the stays opened, in plan order.
    fn commit(
        &mut self,
        msg: &AdtMessage,
        t: i64,
        received_us: i64,
        bed: Option<&str>,
        peer: Option<&str>,
        plan: &Plan,
    ) -> Result<(i64, Vec<i64>), CensusError> {
        let path = self.path.display().to_string();
        let db_err = |e: rusqlite::Error| CensusError::Database {
            path: path.clone(),
            message: e.to_string(),
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        let detail = plan.outcome.to_string();
        let event_id = insert_event(
            &tx,
            &EventRow {
                msg,
                t,
                received_us,
                bed,
                accepted: true,
                outcome: plan.outcome.kind(),
                detail: &detail,
                peer,
            },
        )
        .map_err(db_err)?;
        let code = msg.event.code();
        let mut opened = Vec::new();
        for op in &plan.ops {
            match op {
                Op::Open {
                    patient_id,
                    bed,
                    start_us,
                    visit,
                } => {
                    tx.execute(
                        "INSERT INTO stays (patient_id, bed, start_us, visit, source_event, message_id, opened_by)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![patient_id, bed, start_us, visit, code, msg.header.control_id, event_id],
                    )
                    .map_err(db_err)?;
                    opened.push(tx.last_insert_rowid());
                }
                Op::Close { id, end_us } => {
                    tx.execute(
                        "UPDATE stays SET end_us = ?2, end_event = ?3, end_message_id = ?4, closed_by = ?5
                         WHERE id = ?1",
                        params![id, end_us, code, msg.header.control_id, event_id],
                    )
                    .map_err(db_err)?;
                }
                Op::Cancel { id } => {
                    tx.execute(
                        "UPDATE stays SET cancelled_by = ?2 WHERE id = ?1",
                        params![id, event_id],
                    )
                    .map_err(db_err)?;
                }
                Op::Reopen { id } => {
                    tx.execute(
                        "UPDATE stays SET end_us = NULL, end_event = NULL, end_message_id = NULL,
                           closed_by = NULL WHERE id = ?1",
                        params![id],
                    )
                    .map_err(db_err)?;
                }
            }
        }
        if plan.demographics {
            let p = &msg.patient;
            tx.execute(
                "INSERT INTO patients (patient_id, family, given, birth_date, sex, updated_us)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (patient_id) DO UPDATE SET
                   family = COALESCE(NULLIF(excluded.family, ''), family),
                   given = COALESCE(NULLIF(excluded.given, ''), given),
                   birth_date = COALESCE(NULLIF(excluded.birth_date, ''), birth_date),
                   sex = COALESCE(NULLIF(excluded.sex, ''), sex),
                   updated_us = excluded.updated_us
                 WHERE excluded.updated_us >= patients.updated_us",
                params![p.id, p.family, p.given, p.birth_date, p.sex, t],
            )
            .map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok((event_id, opened))
    }

    fn apply_to_memory(&mut self, msg: &AdtMessage, t: i64, plan: &Plan, ids: (i64, Vec<i64>)) {
        let (event_id, opened) = ids;
        let code = msg.event.code().to_owned();
        let message_id = msg.header.control_id.clone();
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let mut opened = opened.into_iter();
        for op in &plan.ops {
            match op {
                Op::Open {
                    patient_id,
                    bed,
                    start_us,
                    ..
                } => {
                    let Some(id) = opened.next() else { continue };
                    index.insert(Stay {
                        id,
                        patient_id: patient_id.clone(),
                        bed: bed.clone(),
                        start_us: *start_us,
                        end_us: None,
                        source_event: code.clone(),
                        message_id: message_id.clone(),
                        opened_by: event_id,
                        end_event: None,
                        end_message_id: None,
                        closed_by: None,
                    });
                }
                Op::Close { id, end_us } => {
                    if let Some(s) = index.find_mut(*id) {
                        s.end_us = Some(*end_us);
                        s.end_event = Some(code.clone());
                        s.end_message_id = Some(message_id.clone());
                        s.closed_by = Some(event_id);
                    }
                }
                Op::Cancel { id } => index.remove(*id),
                Op::Reopen { id } => {
                    if let Some(s) = index.find_mut(*id) {
                        s.end_us = None;
                        s.end_event = None;
                        s.end_message_id = None;
                        s.closed_by = None;
                    }
                }
            }
        }
        if plan.demographics {
            let p = &msg.patient;
            // The rule of the SQL upsert in `commit`: the latest event time wins, empty values
            // do not erase.
            let entry = index
                .names
                .entry(p.id.clone())
                .or_insert_with(|| Demographics {
                    updated_us: i64::MIN,
                    ..Demographics::default()
                });
            if t >= entry.updated_us {
                if !p.family.is_empty() {
                    entry.family.clone_from(&p.family);
                }
                if !p.given.is_empty() {
                    entry.given.clone_from(&p.given);
                }
                entry.updated_us = t;
            }
        }
    }
}

fn db_error(path: &Path, e: rusqlite::Error) -> CensusError {
    CensusError::Database {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// `MSH-3|MSH-4`, identifying the sender for duplicate detection.
fn sender(msg: &AdtMessage) -> String {
    format!(
        "{}|{}",
        msg.header.sending_application, msg.header.sending_facility
    )
}

struct EventRow<'a> {
    msg: &'a AdtMessage,
    t: i64,
    received_us: i64,
    bed: Option<&'a str>,
    accepted: bool,
    outcome: &'a str,
    detail: &'a str,
    peer: Option<&'a str>,
}

fn insert_event(conn: &Connection, e: &EventRow<'_>) -> Result<i64, rusqlite::Error> {
    conn.execute(
        "INSERT INTO adt_events (received_us, sender, message_id, event, patient_id, event_time_us,
           location, prior_location, bed, accepted, outcome, detail, peer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            e.received_us,
            sender(e.msg),
            e.msg.header.control_id,
            e.msg.event.code(),
            e.msg.patient.id,
            e.t,
            e.msg.location.as_ref().map(|l| l.raw.as_str()),
            e.msg.prior_location.as_ref().map(|l| l.raw.as_str()),
            e.bed,
            e.accepted,
            e.outcome,
            e.detail,
            e.peer,
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Files written before `adt_events` recorded the sender's address get the column (NULL for
/// their rows).
fn add_peer_column(conn: &Connection) -> Result<(), rusqlite::Error> {
    let has: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('adt_events') WHERE name = 'peer'",
        [],
        |r| r.get(0),
    )?;
    if !has {
        conn.execute_batch("ALTER TABLE adt_events ADD COLUMN peer TEXT")?;
    }
    Ok(())
}

fn load(conn: &Connection) -> Result<Index, rusqlite::Error> {
    let mut index = Index::default();
    let mut stmt = conn.prepare(
        "SELECT id, patient_id, bed, start_us, end_us, source_event, message_id, opened_by,
                end_event, end_message_id, closed_by
         FROM stays WHERE cancelled_by IS NULL ORDER BY start_us, id",
    )?;
    let stays = stmt.query_map([], |r| {
        Ok(Stay {
            id: r.get(0)?,
            patient_id: r.get(1)?,
            bed: r.get(2)?,
            start_us: r.get(3)?,
            end_us: r.get(4)?,
            source_event: r.get(5)?,
            message_id: r.get(6)?,
            opened_by: r.get(7)?,
            end_event: r.get(8)?,
            end_message_id: r.get(9)?,
            closed_by: r.get(10)?,
        })
    })?;
    for stay in stays {
        let stay = stay?;
        index.by_bed.entry(stay.bed.clone()).or_default().push(stay);
    }
    let mut stmt = conn.prepare("SELECT patient_id, family, given, updated_us FROM patients")?;
    let names = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Demographics {
                family: r.get(1)?,
                given: r.get(2)?,
                updated_us: r.get(3)?,
            },
        ))
    })?;
    for row in names {
        let (id, d) = row?;
        index.names.insert(id, d);
    }
    Ok(index)
}
