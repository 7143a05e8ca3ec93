//! The census timeline in memory, without I/O: stays per bed, names, the read handle device
//! actors and the API use ([`CensusReader`]), and the planning of an ADT event against the
//! timeline (what it opens, closes, cancels or reopens, or why it is refused). The SQLite side
//! (`mod.rs`, [`super::Census`]) writes a plan, then applies it here.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use icu_drivers::hl7::{AckCode, AdtEventKind, AdtMessage, ErrorCode, ErrorLocation, Hl7Error};

/// The patient associated with a bed at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRef {
    pub patient_id: String,
    pub family: String,
    pub given: String,
    /// When the stay in this bed began (µs since the Unix epoch).
    pub stay_start_us: i64,
}

/// What [`super::Census::apply`] did with an ADT message. Every variant was committed (or needed no
/// change); the gateway answers AA except for [`ApplyOutcome::UnknownBed`] (see
/// [`ApplyOutcome::hl7_error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// A01/A04: a stay opened in `bed`.
    Admitted { patient_id: String, bed: String },
    /// A01/A02 into a bed another patient held: their stay ended at the event time and the
    /// patient's stay opened.
    Displaced {
        patient_id: String,
        bed: String,
        displaced_patient_id: String,
    },
    /// A02: the stay in `from_bed` (if the patient had one here) ended and one in `to_bed` opened.
    Transferred {
        patient_id: String,
        from_bed: Option<String>,
        to_bed: String,
    },
    /// A01/A02/A04 naming the bed the patient already occupies: nothing changed.
    AlreadyInBed { patient_id: String, bed: String },
    /// A03: the stay in `bed` ended.
    Discharged { patient_id: String, bed: String },
    /// A08 (or A04 without a location): demographics recorded.
    DemographicsUpdated { patient_id: String },
    /// A08 whose location is not where the census has the patient: demographics recorded, the
    /// patient not moved (only A02 moves a patient).
    LocationMismatch {
        patient_id: String,
        census_bed: Option<String>,
        location: String,
    },
    /// A11/A12/A13: the patient's latest admit/transfer/discharge was undone.
    Cancelled {
        patient_id: String,
        cancelled_event: String,
        cancelled_message_id: String,
    },
    /// A01/A02/A04 to a location that maps to no configured bed: recorded; no reading is
    /// associated; if the patient had a stay here it ended (`left_bed`).
    UnknownBed {
        location: String,
        left_bed: Option<String>,
    },
    /// A03/A11/A12/A13 for a patient the census has never had in a bed: recorded, nothing to do.
    NotInCensus { patient_id: String },
    /// The same message (sender, control id, event, patient, time) was applied before.
    Duplicate { message_id: String },
}

impl ApplyOutcome {
    /// Short name kept in `adt_events.outcome`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApplyOutcome::Admitted { .. } => "admitted",
            ApplyOutcome::Displaced { .. } => "displaced",
            ApplyOutcome::Transferred { .. } => "transferred",
            ApplyOutcome::AlreadyInBed { .. } => "already_in_bed",
            ApplyOutcome::Discharged { .. } => "discharged",
            ApplyOutcome::DemographicsUpdated { .. } => "demographics_updated",
            ApplyOutcome::LocationMismatch { .. } => "location_mismatch",
            ApplyOutcome::Cancelled { .. } => "cancelled",
            ApplyOutcome::UnknownBed { .. } => "unknown_bed",
            ApplyOutcome::NotInCensus { .. } => "not_in_census",
            ApplyOutcome::Duplicate { .. } => "duplicate",
        }
    }

    /// The error to put in the ACK, if any: AE 103 at `PV1^1^3` for an unknown bed; `None` (AA)
    /// otherwise.
    pub fn hl7_error(&self) -> Option<Hl7Error> {
        match self {
            ApplyOutcome::UnknownBed { .. } => Some(Hl7Error::new(
                AckCode::AE,
                ErrorCode::TableValueNotFound,
                Some(ErrorLocation::field("PV1", 1, 3)),
                self.to_string(),
            )),
            _ => None,
        }
    }
}

impl fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyOutcome::Admitted { patient_id, bed } => {
                write!(f, "patient {patient_id} admitted to bed {bed}")
            }
            ApplyOutcome::Displaced {
                patient_id,
                bed,
                displaced_patient_id,
            } => write!(
                f,
                "patient {patient_id} placed in bed {bed}, which patient {displaced_patient_id} held: their stay there ended"
            ),
            ApplyOutcome::Transferred {
                patient_id,
                from_bed,
                to_bed,
            } => write!(
                f,
                "patient {patient_id} transferred from {} to bed {to_bed}",
                from_bed
                    .as_deref()
                    .map_or_else(|| "outside this unit".to_owned(), |b| format!("bed {b}"))
            ),
            ApplyOutcome::AlreadyInBed { patient_id, bed } => {
                write!(f, "patient {patient_id} is already in bed {bed}; nothing changed")
            }
            ApplyOutcome::Discharged { patient_id, bed } => {
                write!(f, "patient {patient_id} discharged from bed {bed}")
            }
            ApplyOutcome::DemographicsUpdated { patient_id } => {
                write!(f, "demographics of patient {patient_id} updated")
            }
            ApplyOutcome::LocationMismatch {
                patient_id,
                census_bed,
                location,
            } => write!(
                f,
                "update for patient {patient_id} gives location '{location}' but the census has them in {}; patient not moved (send A02 to transfer)",
                census_bed
                    .as_deref()
                    .map_or_else(|| "no bed".to_owned(), |b| format!("bed {b}"))
            ),
            ApplyOutcome::Cancelled {
                patient_id,
                cancelled_event,
                cancelled_message_id,
            } => write!(
                f,
                "{cancelled_event} {cancelled_message_id} of patient {patient_id} cancelled"
            ),
            ApplyOutcome::UnknownBed { location, left_bed } => {
                write!(
                    f,
                    "location '{location}' (PV1-3) maps to no configured bed: recorded, no readings are associated"
                )?;
                if let Some(bed) = left_bed {
                    write!(f, "; the patient's stay in bed {bed} ended")?;
                }
                Ok(())
            }
            ApplyOutcome::NotInCensus { patient_id } => {
                write!(f, "patient {patient_id} has no stay in this unit; nothing to do")
            }
            ApplyOutcome::Duplicate { message_id } => {
                write!(f, "message {message_id} was already applied; nothing changed")
            }
        }
    }
}

/// Why an ADT message was refused by the census.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The event time contradicts the timeline (e.g. a transfer timed before the admission).
    OutOfOrder,
    /// A cancel whose target is not the patient's latest change, or whose undo conflicts.
    CannotCancel,
    /// An admit/transfer without a location (only possible for hand-built messages).
    NoLocation,
}

/// One stay of the timeline.
#[derive(Debug, Clone)]
pub(super) struct Stay {
    pub(super) id: i64,
    pub(super) patient_id: String,
    pub(super) bed: String,
    pub(super) start_us: i64,
    pub(super) end_us: Option<i64>,
    pub(super) source_event: String,
    pub(super) message_id: String,
    pub(super) opened_by: i64,
    pub(super) end_event: Option<String>,
    pub(super) end_message_id: Option<String>,
    pub(super) closed_by: Option<i64>,
}

impl Stay {
    pub(super) fn covers(&self, t: i64) -> bool {
        self.start_us <= t && self.end_us.is_none_or(|end| t < end)
    }

    /// Whether the stay reaches past `t` (`end > t`, or open).
    pub(super) fn extends_past(&self, t: i64) -> bool {
        self.end_us.is_none_or(|end| end > t)
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct Demographics {
    pub(super) family: String,
    pub(super) given: String,
    pub(super) updated_us: i64,
}

/// The in-memory timeline: stays per bed sorted by `(start_us, id)`, and names.
#[derive(Debug, Default)]
pub(super) struct Index {
    pub(super) by_bed: HashMap<String, Vec<Stay>>,
    pub(super) names: HashMap<String, Demographics>,
}

impl Index {
    pub(super) fn stays(&self) -> impl Iterator<Item = &Stay> {
        self.by_bed.values().flatten()
    }

    pub(super) fn open_stay_of(&self, patient_id: &str) -> Option<&Stay> {
        self.stays()
            .find(|s| s.end_us.is_none() && s.patient_id == patient_id)
    }

    pub(super) fn open_stay_in(&self, bed: &str) -> Option<&Stay> {
        self.by_bed
            .get(bed)
            .and_then(|v| v.iter().find(|s| s.end_us.is_none()))
    }

    pub(super) fn patient_ref(&self, stay: &Stay) -> PatientRef {
        let names = self
            .names
            .get(&stay.patient_id)
            .cloned()
            .unwrap_or_default();
        PatientRef {
            patient_id: stay.patient_id.clone(),
            family: names.family,
            given: names.given,
            stay_start_us: stay.start_us,
        }
    }

    pub(super) fn patient_at(&self, bed: &str, time_us: i64) -> Option<PatientRef> {
        let stays = self.by_bed.get(bed)?;
        // Stays of a bed do not overlap: only the last one starting at or before t can cover it.
        let n = stays.partition_point(|s| s.start_us <= time_us);
        let stay = stays[..n].last().filter(|s| s.covers(time_us))?;
        Some(self.patient_ref(stay))
    }

    pub(super) fn current(&self) -> Vec<(String, PatientRef)> {
        let mut out: Vec<_> = self
            .by_bed
            .iter()
            .filter_map(|(bed, v)| {
                v.iter()
                    .find(|s| s.end_us.is_none())
                    .map(|s| (bed.clone(), self.patient_ref(s)))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub(super) fn find_mut(&mut self, id: i64) -> Option<&mut Stay> {
        self.by_bed.values_mut().flatten().find(|s| s.id == id)
    }

    pub(super) fn insert(&mut self, stay: Stay) {
        let v = self.by_bed.entry(stay.bed.clone()).or_default();
        let at = v.partition_point(|s| (s.start_us, s.id) < (stay.start_us, stay.id));
        v.insert(at, stay);
    }

    pub(super) fn remove(&mut self, id: i64) {
        for v in self.by_bed.values_mut() {
            v.retain(|s| s.id != id);
        }
    }
}

/// A cheap, cloneable, thread-safe read handle on the census timeline (for device actors and the
/// API). It sees every change once [`super::Census::apply`] has committed it.
#[derive(Debug, Clone)]
pub struct CensusReader {
    pub(super) index: Arc<RwLock<Index>>,
}

impl CensusReader {
    /// The patient whose stay in `bed` covers `time_us` (`start ≤ t < end`), if any. In memory.
    pub fn patient_at(&self, bed: &str, time_us: i64) -> Option<PatientRef> {
        self.read().patient_at(bed, time_us)
    }

    /// The open stays, by bed id.
    pub fn current(&self) -> Vec<(String, PatientRef)> {
        self.read().current()
    }

    pub(super) fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A change to the timeline, planned against memory, then written, then applied to memory.
#[derive(Debug)]
pub(super) enum Op {
    Open {
        patient_id: String,
        bed: String,
        start_us: i64,
        visit: Option<String>,
    },
    Close {
        id: i64,
        end_us: i64,
    },
    Cancel {
        id: i64,
    },
    Reopen {
        id: i64,
    },
}

pub(super) struct Plan {
    pub(super) ops: Vec<Op>,
    pub(super) outcome: ApplyOutcome,
    pub(super) demographics: bool,
}

pub(super) struct Reject {
    pub(super) kind: RejectKind,
    pub(super) reason: String,
}

pub(super) fn out_of_order(reason: String) -> Reject {
    Reject {
        kind: RejectKind::OutOfOrder,
        reason,
    }
}

/// What an ADT message means for the timeline, decided against memory only.
pub(super) fn plan(
    index: &Index,
    msg: &AdtMessage,
    bed: Option<&str>,
    t: i64,
) -> Result<Plan, Reject> {
    let patient_id = msg.patient.id.clone();
    let demographics = |ops, outcome| Plan {
        ops,
        outcome,
        demographics: true,
    };
    match msg.event {
        AdtEventKind::Admit | AdtEventKind::Register | AdtEventKind::Transfer => {
            let Some(location) = &msg.location else {
                if msg.event == AdtEventKind::Register {
                    return Ok(demographics(
                        Vec::new(),
                        ApplyOutcome::DemographicsUpdated { patient_id },
                    ));
                }
                return Err(Reject {
                    kind: RejectKind::NoLocation,
                    reason: "no PV1-3 location: an admit or transfer must name the bed".into(),
                });
            };
            let Some(bed) = bed else {
                // Somewhere this gateway does not monitor: the patient is no longer in our beds.
                let mut ops = Vec::new();
                let left_bed = match index.open_stay_of(&patient_id) {
                    Some(open) => {
                        ops.push(close_at(open, t)?);
                        Some(open.bed.clone())
                    }
                    None => None,
                };
                return Ok(demographics(
                    ops,
                    ApplyOutcome::UnknownBed {
                        location: location.key(),
                        left_bed,
                    },
                ));
            };
            let placed = place(index, &patient_id, bed, t, msg.visit_number.clone())?;
            let bed = bed.to_owned();
            let (ops, outcome) = match placed {
                Placed::Already => (Vec::new(), ApplyOutcome::AlreadyInBed { patient_id, bed }),
                Placed::Moved {
                    ops,
                    displaced: Some(displaced_patient_id),
                    ..
                } => (
                    ops,
                    ApplyOutcome::Displaced {
                        patient_id,
                        bed,
                        displaced_patient_id,
                    },
                ),
                Placed::Moved { ops, from_bed, .. } if msg.event == AdtEventKind::Transfer => (
                    ops,
                    ApplyOutcome::Transferred {
                        patient_id,
                        from_bed,
                        to_bed: bed,
                    },
                ),
                Placed::Moved { ops, .. } => (ops, ApplyOutcome::Admitted { patient_id, bed }),
            };
            Ok(demographics(ops, outcome))
        }
        AdtEventKind::Discharge => match index.open_stay_of(&patient_id) {
            Some(open) => {
                let op = close_at(open, t)?;
                Ok(demographics(
                    vec![op],
                    ApplyOutcome::Discharged {
                        patient_id,
                        bed: open.bed.clone(),
                    },
                ))
            }
            None => Ok(demographics(
                Vec::new(),
                ApplyOutcome::NotInCensus { patient_id },
            )),
        },
        AdtEventKind::Update => {
            let census_bed = index.open_stay_of(&patient_id).map(|s| s.bed.clone());
            let outcome = match &msg.location {
                Some(location)
                    if bed != census_bed.as_deref() && (bed.is_some() || census_bed.is_some()) =>
                {
                    ApplyOutcome::LocationMismatch {
                        patient_id,
                        census_bed,
                        location: location.key(),
                    }
                }
                _ => ApplyOutcome::DemographicsUpdated { patient_id },
            };
            Ok(demographics(Vec::new(), outcome))
        }
        AdtEventKind::CancelAdmit
        | AdtEventKind::CancelTransfer
        | AdtEventKind::CancelDischarge => {
            let targets: &[&str] = match msg.event {
                AdtEventKind::CancelAdmit => &["A01", "A04"],
                AdtEventKind::CancelTransfer => &["A02"],
                _ => &["A03"],
            };
            let (ops, outcome) = cancel(index, &patient_id, msg.event, targets)?;
            Ok(Plan {
                ops,
                outcome,
                demographics: false,
            })
        }
    }
}

pub(super) fn close_at(stay: &Stay, t: i64) -> Result<Op, Reject> {
    if stay.start_us > t {
        return Err(out_of_order(format!(
            "the event time ({}) is before the start of patient {}'s stay in bed {} ({}); events must arrive in time order",
            show_time(t),
            stay.patient_id,
            stay.bed,
            show_time(stay.start_us)
        )));
    }
    Ok(Op::Close {
        id: stay.id,
        end_us: t,
    })
}

pub(super) enum Placed {
    Already,
    Moved {
        ops: Vec<Op>,
        from_bed: Option<String>,
        displaced: Option<String>,
    },
}

/// Plans "patient is in `bed` from `t` on": ends their open stay elsewhere and the stay of
/// whoever holds the bed, both at `t`, and refuses anything that would overlap the timeline.
pub(super) fn place(
    index: &Index,
    patient_id: &str,
    bed: &str,
    t: i64,
    visit: Option<String>,
) -> Result<Placed, Reject> {
    let mut ops = Vec::new();
    let own = index.open_stay_of(patient_id);
    if let Some(open) = own {
        if open.bed == bed && open.start_us <= t {
            return Ok(Placed::Already);
        }
        ops.push(close_at(open, t)?);
    }
    if let Some(later) = index
        .stays()
        .find(|s| s.patient_id == patient_id && s.end_us.is_some() && s.extends_past(t))
    {
        return Err(out_of_order(format!(
            "the event time ({}) is before the end of patient {patient_id}'s stay in bed {} ({}); events must arrive in time order",
            show_time(t),
            later.bed,
            show_time(later.end_us.unwrap_or(later.start_us)),
        )));
    }
    let mut displaced = None;
    if let Some(occupant) = index
        .open_stay_in(bed)
        .filter(|s| s.patient_id != patient_id)
    {
        ops.push(close_at(occupant, t)?);
        displaced = Some(occupant.patient_id.clone());
    }
    if let Some(later) = index
        .by_bed
        .get(bed)
        .and_then(|v| v.iter().find(|s| s.end_us.is_some() && s.extends_past(t)))
    {
        return Err(out_of_order(format!(
            "bed {bed} was held by patient {} until {}, after this event's time ({}); events must arrive in time order",
            later.patient_id,
            show_time(later.end_us.unwrap_or(later.start_us)),
            show_time(t)
        )));
    }
    ops.push(Op::Open {
        patient_id: patient_id.to_owned(),
        bed: bed.to_owned(),
        start_us: t,
        visit,
    });
    Ok(Placed::Moved {
        ops,
        from_bed: own.map(|s| s.bed.clone()),
        displaced,
    })
}

/// Plans undoing the patient's latest change when it is one of `targets` (event codes).
pub(super) fn cancel(
    index: &Index,
    patient_id: &str,
    event: AdtEventKind,
    targets: &[&str],
) -> Result<(Vec<Op>, ApplyOutcome), Reject> {
    let cannot = |reason: String| Reject {
        kind: RejectKind::CannotCancel,
        reason,
    };
    // The patient's changes: (event id, code, message id), from the stays they touched.
    let mut changes: Vec<(i64, &str, &str)> = Vec::new();
    for s in index.stays().filter(|s| s.patient_id == patient_id) {
        changes.push((s.opened_by, &s.source_event, &s.message_id));
        if let (Some(id), Some(code), Some(m)) = (s.closed_by, &s.end_event, &s.end_message_id) {
            changes.push((id, code, m));
        }
    }
    let Some(&(latest, code, message_id)) = changes.iter().max_by_key(|c| c.0) else {
        return Ok((
            Vec::new(),
            ApplyOutcome::NotInCensus {
                patient_id: patient_id.to_owned(),
            },
        ));
    };
    if let Some(other) = index
        .stays()
        .find(|s| s.opened_by == latest && s.patient_id != patient_id)
    {
        return Err(cannot(format!(
            "the latest census change for patient {patient_id} is {code} {message_id} of patient {}, which ended their stay in bed {}; only a patient's own latest change can be cancelled",
            other.patient_id, other.bed
        )));
    }
    if !targets.contains(&code) {
        return Err(cannot(format!(
            "{event} cancels {}, but the latest census change for patient {patient_id} is {code} {message_id}; only the latest change can be cancelled",
            targets.join("/")
        )));
    }
    let undone: HashSet<i64> = index
        .stays()
        .filter(|s| s.opened_by == latest)
        .map(|s| s.id)
        .collect();
    let reopened: Vec<&Stay> = index
        .stays()
        .filter(|s| s.closed_by == Some(latest))
        .collect();
    for r in &reopened {
        if let Some(conflict) = index.stays().find(|o| {
            o.id != r.id
                && !undone.contains(&o.id)
                && (o.bed == r.bed || o.patient_id == r.patient_id)
                && o.extends_past(r.start_us)
        }) {
            return Err(cannot(format!(
                "undoing {code} {message_id} would give patient {} bed {} again, but patient {} has been in bed {} since {}",
                r.patient_id,
                r.bed,
                conflict.patient_id,
                conflict.bed,
                show_time(conflict.start_us)
            )));
        }
    }
    let mut ops: Vec<Op> = undone.iter().map(|&id| Op::Cancel { id }).collect();
    ops.extend(reopened.iter().map(|s| Op::Reopen { id: s.id }));
    Ok((
        ops,
        ApplyOutcome::Cancelled {
            patient_id: patient_id.to_owned(),
            cancelled_event: code.to_owned(),
            cancelled_message_id: message_id.to_owned(),
        },
    ))
}

/// A time for a log line: RFC 3339 UTC.
pub(super) fn show_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(
        || format!("{us} µs"),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}
