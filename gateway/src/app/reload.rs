//! Reload without a restart: SIGHUP (`systemctl reload icu-gateway`) re-reads the config file.
//!
//! Owns: the running config and what a reload changes in the running gateway. Guarantees:
//! - A file that does not read or validate changes nothing: the running config stays, the
//!   refusal is logged with every problem and audited (`config_reload`, outcome `denied`).
//! - Devices: a new device starts; a removed one leaves the route tables first (its next
//!   message is refused as from an unknown device, so no reading lands under a bed it no longer
//!   serves), then stops after the message it is handling is stored and acknowledged; a device
//!   whose bed, protocol, identity, serial line or silence timeout changed is replaced by a new
//!   actor (a serial one closes its port first and opens it again); a device whose only change
//!   is `allow_from` keeps its actor. An unchanged device keeps its actor, its serial port and
//!   whatever it has in flight; MLLP connections and the MQTT session are never touched (the
//!   listener and the subscriber look their routes up per message).
//! - Alarms: changed `[alarms]` rules apply from the next reading; open alarms of rules that
//!   are gone end (a high-priority one latches). The alarm actor is never stopped.
//! - Beds: labels and ADT locations apply (the live view, the census' location map).
//! - The other sections (listeners, store, Kafka, MQTT broker, TLS, accounts, signing key,
//!   alarm manager, clock) are read by parts that are built once: a change to them is named in
//!   the log and the audit entry as needing a restart, and the rest of the reload applies.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use actix::Addr;

use super::ingest::{DeviceSet, RunningDevice};
use crate::alarm::actor::{AlarmActor, ReplaceConfig};
use crate::audit::{Action, AuditEntry, AuditLog, Outcome, TargetKind};
use crate::census::actor::{CensusActor, SetBedMap};
use crate::config::{Config, ConfigError};
use crate::device::SetDeviceClock;
use crate::domain::Device;
use crate::live::LiveState;

/// Sections a reload applies; every other top-level key needs a restart.
const RELOADABLE: &[&str] = &["beds", "devices", "alarms"];

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Replaced by a new actor (bed, protocol, identity, serial line or timeout changed).
    pub replaced: Vec<String>,
    /// Kept their actor; only `allow_from` changed.
    pub updated: Vec<String>,
    pub alarms_changed: bool,
    /// Open alarms that ended because their rule is gone.
    pub alarms_ended: usize,
    pub beds_changed: bool,
    /// Top-level sections that changed but apply only after a restart.
    pub needs_restart: Vec<String>,
    /// `sha256:<hex>` of the file now running.
    pub sha256: String,
}

impl ReloadReport {
    /// One line for the log and the audit entry.
    pub fn summary(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        let mut s = format!(
            "devices added: {}; removed: {}; replaced: {}; updated: {}; alarms: {}; beds: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.replaced),
            list(&self.updated),
            if self.alarms_changed {
                format!("changed ({} open alarm(s) ended)", self.alarms_ended)
            } else {
                "unchanged".into()
            },
            if self.beds_changed {
                "changed"
            } else {
                "unchanged"
            },
        );
        if !self.needs_restart.is_empty() {
            s.push_str(&format!(
                "; needs a restart to apply: [{}]",
                self.needs_restart.join("], [")
            ));
        }
        s
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReloadRefused(pub String);

/// The running config and the parts a reload changes.
pub(super) struct Reloader {
    path: PathBuf,
    current: Config,
    /// The file's top-level tables as last applied (to tell which sections changed).
    current_raw: Option<toml::Table>,
    devices: DeviceSet,
    live: Arc<LiveState>,
    alarms: Addr<AlarmActor>,
    census: Addr<CensusActor>,
    audit: Arc<AuditLog>,
}

/// How a device's new config differs from the running one.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    None,
    /// Only where its messages may come from.
    RoutesOnly,
    /// Anything its actor or serial task was built with.
    Replace,
}

fn change(old: &Device, new: &Device) -> Change {
    if old.bed != new.bed
        || old.protocol != new.protocol
        || old.match_id != new.match_id
        || old.serial != new.serial
        || old.silent_after != new.silent_after
    {
        Change::Replace
    } else if old.allow_from != new.allow_from {
        Change::RoutesOnly
    } else {
        Change::None
    }
}

fn read_raw(path: &std::path::Path) -> Option<toml::Table> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str(&text).ok()
}

/// Reads the file once and validates it; its top-level tables come from the same text, so the
/// sections compared for a restart are those of the config applied.
fn load(path: &std::path::Path) -> Result<(Config, Option<toml::Table>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = Config::from_toml(&text, path)?;
    Ok((config, toml::from_str(&text).ok()))
}

/// Top-level sections that differ between two files, leaving out the reloadable ones.
fn restart_sections(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| !RELOADABLE.contains(&k.as_str()))
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

impl Reloader {
    pub fn new(
        current: Config,
        devices: DeviceSet,
        live: Arc<LiveState>,
        alarms: Addr<AlarmActor>,
        census: Addr<CensusActor>,
        audit: Arc<AuditLog>,
    ) -> Self {
        let path = current.source_path.clone();
        let current_raw = read_raw(&path);
        Self {
            path,
            current,
            current_raw,
            devices,
            live,
            alarms,
            census,
            audit,
        }
    }

    /// Re-reads the config file and applies what can be applied (see the module docs).
    pub async fn reload(&mut self) -> Result<ReloadReport, ReloadRefused> {
        tracing::info!(config = %self.path.display(), "reloading the config");
        // File I/O and parsing off the async threads.
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError::Read {
                    path: self.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        let (new, new_raw) = match loaded {
            Ok(c) => c,
            Err(e) => {
                let why = e.to_string();
                tracing::error!(config = %self.path.display(), error = %why,
                    "config reload refused: the file does not validate; the running config stays");
                self.audit(
                    AuditEntry::new(Action::ConfigReload)
                        .outcome(Outcome::Denied)
                        .reason(why.clone())
                        .target(TargetKind::Config, self.path.display().to_string()),
                )
                .await;
                return Err(ReloadRefused(why));
            }
        };
        let mut report = ReloadReport {
            sha256: format!("sha256:{}", new.source_sha256),
            ..Default::default()
        };
        if let (Some(old), Some(new)) = (&self.current_raw, &new_raw) {
            report.needs_restart = restart_sections(old, new);
        }

        // Alarm rules first, so that new devices' readings meet the new rules.
        if new.alarms != self.current.alarms {
            match self.alarms.send(ReplaceConfig(new.alarms.clone())).await {
                Ok(Ok(ended)) => {
                    report.alarms_changed = true;
                    report.alarms_ended = ended;
                }
                Ok(Err(problems)) => {
                    // Validated with the file; reaching this is a bug, and nothing changed.
                    let why = problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::error!(error = %why, "config reload refused by the alarm engine");
                    return Err(ReloadRefused(why));
                }
                Err(_) => return Err(ReloadRefused("the alarm engine is not running".into())),
            }
        }

        // Beds: the live view first (devices' views follow), then the census' locations.
        let beds_changed = new.beds.len() != self.current.beds.len()
            || new.beds.iter().zip(&self.current.beds).any(|(a, b)| {
                a.id != b.id || a.label != b.label || a.adt_location != b.adt_location
            });
        report.beds_changed = beds_changed;
        self.live.reconfigure(&new.beds, &new.devices);
        if beds_changed {
            let _ = self.census.send(SetBedMap(new.bed_map())).await;
        }

        self.apply_devices(&new, &mut report).await;
        // Once more, now that retired devices have stopped: a reading one of them handled
        // during the reload must not leave a value under a bed it no longer serves.
        self.live.reconfigure(&new.beds, &new.devices);

        // What needs a restart stays as it runs; the reloadable sections are the new file's.
        self.current.beds = new.beds;
        self.current.devices = new.devices;
        self.current.alarms = new.alarms;
        self.current.source_sha256 = new.source_sha256;
        if let (Some(running), Some(file)) = (self.current_raw.as_mut(), new_raw) {
            for key in RELOADABLE {
                match file.get(*key) {
                    Some(v) => running.insert((*key).to_string(), v.clone()),
                    None => running.remove(*key),
                };
            }
        }

        let summary = report.summary();
        if report.needs_restart.is_empty() {
            tracing::info!(config = %self.path.display(), %summary, "config reloaded");
        } else {
            tracing::warn!(config = %self.path.display(), %summary,
                "config reloaded; some changes wait for a restart");
        }
        self.audit(
            AuditEntry::new(Action::ConfigReload)
                .target(TargetKind::Config, self.path.display().to_string())
                .values(None, Some(format!("{}; {summary}", report.sha256))),
        )
        .await;
        Ok(report)
    }

    /// Starts, replaces and retires device actors; publishes the new route tables.
    async fn apply_devices(&mut self, new: &Config, report: &mut ReloadReport) {
        let clock_changed = new.alarms.device_clock != self.devices.kit.device_clock;
        self.live
            .set_clock_settle_s(new.alarms.device_clock.settle_s);
        self.devices.kit.device_clock = new.alarms.device_clock.clone();
        let wanted: BTreeSet<&str> = new.devices.iter().map(|d| d.id.as_str()).collect();
        let mut leaving: Vec<RunningDevice> = Vec::new();
        // Devices to start once the ones they replace have closed their serial port.
        let mut after_retire: Vec<&Device> = Vec::new();

        let gone: Vec<String> = self
            .devices
            .running
            .keys()
            .filter(|id| !wanted.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(r) = self.devices.running.remove(&id) {
                leaving.push(r);
                report.removed.push(id);
            }
        }
        for d in &new.devices {
            match self.devices.running.get_mut(&d.id) {
                None => {
                    let started = self.devices.kit.start(d);
                    self.devices.running.insert(d.id.clone(), started);
                    report.added.push(d.id.clone());
                }
                Some(r) => match change(&r.config, d) {
                    Change::None => {}
                    Change::RoutesOnly => {
                        r.config = d.clone();
                        report.updated.push(d.id.clone());
                    }
                    Change::Replace => {
                        report.replaced.push(d.id.clone());
                        let serial = r.config.serial.is_some() || d.serial.is_some();
                        if serial {
                            if let Some(old) = self.devices.running.remove(&d.id) {
                                leaving.push(old);
                            }
                            after_retire.push(d);
                        } else {
                            // A message-based device: the new actor takes its routes before
                            // the old one retires, so none of its messages finds no route.
                            let started = self.devices.kit.start(d);
                            if let Some(old) = self.devices.running.insert(d.id.clone(), started) {
                                leaving.push(old);
                            }
                        }
                    }
                },
            }
        }
        if clock_changed {
            for r in self.devices.running.values() {
                let _ = r
                    .addr
                    .send(SetDeviceClock(new.alarms.device_clock.clone()))
                    .await;
            }
        }
        self.devices.publish_routes();
        for r in leaving {
            r.retire().await;
        }
        if !after_retire.is_empty() {
            for d in after_retire {
                let started = self.devices.kit.start(d);
                self.devices.running.insert(d.id.clone(), started);
            }
            self.devices.publish_routes();
        }
    }

    /// Appends to the audit trail off the async threads; a failure is logged, never fatal.
    async fn audit(&self, entry: AuditEntry) {
        let audit = self.audit.clone();
        let done = tokio::task::spawn_blocking(move || audit.append(entry)).await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::error!("the audit trail could not record the config reload");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn only_sections_a_reload_cannot_apply_are_named_for_a_restart() {
        let old = table(
            "gateway_id = \"a\"\n[mllp]\nlisten = \"0.0.0.0:2575\"\n[alarms]\nrates = []\n[[beds]]\nid = \"b1\"\n",
        );
        let same_but_reloadable = table(
            "gateway_id = \"a\"\n[mllp]\nlisten = \"0.0.0.0:2575\"\n[alarms]\nallowed_lateness_s = 5\n[[beds]]\nid = \"b2\"\n[[devices]]\nid = \"d\"\n",
        );
        assert!(restart_sections(&old, &same_but_reloadable).is_empty());
        let moved = table(
            "gateway_id = \"a\"\n[mllp]\nlisten = \"0.0.0.0:2576\"\n[kafka]\nbootstrap = \"k:9092\"\n",
        );
        assert_eq!(restart_sections(&old, &moved), vec!["kafka", "mllp"]);
    }

    fn device(bed: &str) -> Device {
        Device {
            id: "mon-01".into(),
            bed: bed.into(),
            protocol: crate::domain::Protocol::Pcd01,
            match_id: Some("0001".into()),
            serial: None,
            silent_after: std::time::Duration::from_secs(30),
            allow_from: Default::default(),
        }
    }

    #[test]
    fn a_device_moved_to_another_bed_is_replaced_and_an_allow_list_change_keeps_the_actor() {
        let old = device("bed-01");
        assert_eq!(change(&old, &device("bed-01")), Change::None);
        assert_eq!(change(&old, &device("bed-02")), Change::Replace);
        let mut fenced = device("bed-01");
        fenced.allow_from = crate::allow::AllowList::parse(&["10.0.0.0/8"]).unwrap();
        assert_eq!(change(&old, &fenced), Change::RoutesOnly);
        let mut slower = device("bed-01");
        slower.silent_after = std::time::Duration::from_secs(60);
        assert_eq!(change(&old, &slower), Change::Replace);
    }
}
