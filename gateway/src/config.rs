//! Gateway configuration: one TOML file per ICU.
//!
//! Owns: the raw file format ([`RawConfig`], `deny_unknown_fields`) and its one validation step
//! into the domain type [`Config`]. Guarantees: a `Config` only exists if every field was valid;
//! [`RawConfig::validate`] reports *every* problem at once, each with its field path, so a
//! biomedical engineer can fix a file in one pass. Defaults are named functions; the doc comments
//! of the raw fields are the user documentation of the file.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::domain::{Bed, ClockPolicy, Device, FieldProblem, Protocol};
pub use crate::mllp::MllpConfig;
pub use crate::store::StoreConfig;

/// A problem with the configuration file, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML for this gateway: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<FieldProblem>,
    },
}

/// The configuration file as written (see `gateway/gateway.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Stable id of this gateway; it is part of every record's dedup key
    /// `(gateway_id, device_id, seq)`. Letters, digits, `-`, `_` and `.` only.
    pub gateway_id: String,
    /// Folder for the store, the dead letters and `endpoints.json`.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub mllp: RawMllp,
    #[serde(default)]
    pub http: RawHttp,
    /// The ADT feed (HL7v2 A01/A02/A03/... on the MLLP listener).
    #[serde(default)]
    pub adt: RawAdt,
    #[serde(default)]
    pub signing: RawSigning,
    /// The hospital's Kafka backbone; leave out to store only (records wait in the outbox).
    pub kafka: Option<RawKafka>,
    /// The MQTT broker that pumps and wearables publish to; needed for `protocol = "mqtt"`.
    pub mqtt: Option<RawMqtt>,
    /// Local alarm rules (limits with sustain and hysteresis, rate of change, NEWS2); the
    /// defaults apply when the section is absent. Clinicians override limits per bed at run time.
    pub alarms: Option<crate::alarm::AlarmConfig>,
    /// An IHE ACM alarm manager that receives every alarm state change as PCD-04 (ORU^R40) over
    /// MLLP, with retry; leave out when there is none.
    pub alarm_manager: Option<RawAlarmManager>,
    /// How the gateway decides whether its clock is synchronised:
    /// `"auto"` (systemd-timesyncd or chrony state), `"synced"` or `"unsynced"`.
    #[serde(default = "default_clock")]
    pub clock: String,
    /// The beds of this ICU.
    #[serde(default)]
    pub beds: Vec<RawBed>,
    /// The devices of this ICU, each assigned to one bed.
    #[serde(default)]
    pub devices: Vec<RawDevice>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// Database file; relative paths are inside `data_dir`.
    #[serde(default = "default_store_file")]
    pub file: PathBuf,
    /// Most disk the store may use, in MiB, counted as the database pages in use plus the
    /// write-ahead log (so deleted records count as freed). Near it, forwarded records are
    /// pruned oldest first; when that is not enough, `on_full` decides. The full policy is in
    /// the `store` module docs (and the README).
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Percent of the budget at which pruning of forwarded records starts (default 90).
    #[serde(default = "default_high_water_pct")]
    pub high_water_pct: u8,
    /// Percent of the budget at which pruning stops and the store's technical alarm clears
    /// (default 80; below `high_water_pct`).
    #[serde(default = "default_low_water_pct")]
    pub low_water_pct: u8,
    /// Headroom above the budget, in percent of it, that only alarm state changes and ADT
    /// events may use, so they are still stored while observations are refused (default 2;
    /// at most 20).
    #[serde(default = "default_alarm_reserve_pct")]
    pub alarm_reserve_pct: u8,
    /// When pruning forwarded records is not enough: `"refuse"` (default) refuses new
    /// observations (senders get AR) and keeps every acknowledged one; `"drop_oldest_unsent"`
    /// deletes the oldest unsent observations (counted, logged, high-priority technical alarm).
    #[serde(default = "default_on_full")]
    pub on_full: String,
    /// `"full"`: a reading is acknowledged only once it survives power loss (fsync);
    /// `"normal"`: it survives a process crash but the last commits may be lost on power loss.
    #[serde(default = "default_synchronous")]
    pub synchronous: String,
    /// Most write requests merged into one commit (group commit).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most write requests waiting for the disk before new ones are refused (AR).
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            file: default_store_file(),
            disk_budget_mb: default_disk_budget_mb(),
            high_water_pct: default_high_water_pct(),
            low_water_pct: default_low_water_pct(),
            alarm_reserve_pct: default_alarm_reserve_pct(),
            on_full: default_on_full(),
            synchronous: default_synchronous(),
            max_batch: default_max_batch(),
            max_pending: default_max_pending(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMllp {
    /// Address the HL7v2/MLLP listener binds (PCD-01 from monitors). Port 0 picks a free port,
    /// written to `endpoints.json`.
    #[serde(default = "default_mllp_listen")]
    pub listen: String,
    /// Largest accepted MLLP frame in bytes; larger frames are refused with AR.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Most open MLLP connections at once; further connections are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open MLLP connections from one source address (default 32), so that one hostile or
    /// broken host cannot take every slot of `max_connections`; further connections from that
    /// address are closed at once. Raise it for a central station that forwards many monitors
    /// from one address over one connection each.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Seconds a started frame (or any bytes not yet forming a whole frame) may take to
    /// complete (default 30); then the connection is closed and what arrived is dead-lettered.
    #[serde(default = "default_frame_timeout_s")]
    pub frame_timeout_s: u64,
    /// Seconds a connection may stay silent between messages (default 300); then it is closed.
    /// Senders reconnect on their next message.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
}

impl Default for RawMllp {
    fn default() -> Self {
        Self {
            listen: default_mllp_listen(),
            max_frame_bytes: default_max_frame_bytes(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            frame_timeout_s: default_frame_timeout_s(),
            idle_timeout_s: default_idle_timeout_s(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdt {
    /// Addresses or CIDR ranges the ADT sender may connect from, e.g. `["10.20.0.15"]` or
    /// `["10.20.0.0/24", "fd00::/8"]`. An ADT message from elsewhere is refused (AR) and
    /// dead-lettered, and changes nothing in the census. Empty or absent: any address.
    #[serde(default)]
    pub allow_from: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address of the local page and API. Keep it on the ICU network or loopback.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Most open event streams (`/api/events`, the page's live alarm feed) at once (default
    /// 32); a further client gets 503 and the page falls back to polling.
    #[serde(default = "default_max_event_streams")]
    pub max_event_streams: usize,
    /// Largest accepted request body in bytes (default 16384); larger bodies get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            max_event_streams: default_max_event_streams(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// The gateway's ed25519 private key (PKCS#8 PEM, made by `icu-gateway keygen`); relative
    /// paths are inside `data_dir`.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
}

impl Default for RawSigning {
    fn default() -> Self {
        Self {
            key_file: default_key_file(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub bootstrap: String,
    /// Topic for FHIR Bundles of Observations.
    #[serde(default = "default_topic_observations")]
    pub topic_observations: String,
    /// Topic for alarm state changes (one FHIR Observation each, PCD-04 attributes).
    #[serde(default = "default_topic_alarms")]
    pub topic_alarms: String,
    /// Topic for ADT events (FHIR Patient + Encounter).
    #[serde(default = "default_topic_adt")]
    pub topic_adt: String,
    /// Topic for rejected input (JSON: what, from where, at which offset, why).
    #[serde(default = "default_topic_deadletter")]
    pub topic_deadletter: String,
    /// How long the producer keeps trying one record before reporting it failed (it is then
    /// sent again from the store, never dropped).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Most observations per Kafka record (one FHIR Bundle).
    #[serde(default = "default_max_per_bundle")]
    pub max_per_bundle: usize,
    /// Producer compression: none, gzip, snappy, lz4 or zstd.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Most outbox records the bridge reads and forwards per cycle (default 5000, 1..=100000).
    /// A new alarm waits behind at most two such cycles (the one being delivered and the one
    /// prepared meanwhile).
    #[serde(default = "default_fetch_limit")]
    pub fetch_limit: usize,
    /// A device whose oldest unforwarded reading is younger than this is "live" and forwarded in
    /// full every cycle; older means "backlog" (default 10000 ms, 1000..=3600000).
    #[serde(default = "default_live_window_ms")]
    pub live_window_ms: u64,
    /// Backlog observations forwarded per second at most, all backlog devices together, shared
    /// fairly (default 100000, at least 1). Alarms, ADT events and live devices are never
    /// throttled. Must exceed the ingest rate for a backlog to catch up.
    #[serde(default = "default_backlog_rate")]
    pub backlog_rate: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlarmManager {
    /// `host:port` of the alarm manager's MLLP listener.
    pub mllp: String,
    /// MSH-5 receiving application.
    #[serde(default = "default_alarm_manager_app")]
    pub receiving_application: String,
}

fn default_alarm_manager_app() -> String {
    "ALARM_MANAGER".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// Broker host name or address (MQTT 3.1.1, plain TCP).
    #[serde(default = "default_mqtt_host")]
    pub broker_host: String,
    #[serde(default = "default_mqtt_port")]
    pub broker_port: u16,
    /// Stable client id (the broker keeps the gateway's session under it); default
    /// `icu-gateway-<gateway_id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Largest accepted payload in bytes.
    #[serde(default = "default_mqtt_max_payload")]
    pub max_payload_bytes: usize,
}

fn default_mqtt_host() -> String {
    "127.0.0.1".into()
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_mqtt_max_payload() -> usize {
    256 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBed {
    /// Bed id as used in ADT (PV1-3) and on the page, e.g. `"ICU1-101-A"`.
    pub id: String,
    /// Label shown to nurses; defaults to the id.
    pub label: Option<String>,
    /// The bed as the ADT system names it in PV1-3, `PointOfCare^Room^Bed` (e.g.
    /// `"ICU1^101^A"`). Without it, an ADT location whose bed component equals this bed's id
    /// matches.
    pub adt_location: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    /// Stable device id; part of every record's dedup key.
    pub id: String,
    /// The bed this device is at (one of `beds[].id`).
    pub bed: String,
    /// The protocol it speaks: `"pcd01"` (IHE PCD-01 over MLLP), `"masimo"` (Masimo ASCII 1 over
    /// a serial line) or `"medibus"` (Dräger MEDIBUS over a serial line).
    pub protocol: String,
    /// For `pcd01`: how incoming messages are recognised as this device: its EUI-64 (MSH-3.2 or
    /// OBX-18), or the sending application namespace (MSH-3.1).
    #[serde(rename = "match")]
    pub match_id: Option<String>,
    /// For serial protocols: the port and its line settings.
    pub serial: Option<RawSerial>,
    /// Seconds without data after which the device counts as silent.
    #[serde(default = "default_silent_after_s")]
    pub silent_after_s: u64,
    /// For `pcd01`: addresses or CIDR ranges this device may send from, e.g. `["10.1.2.3"]` or
    /// `["10.1.0.0/16", "::1"]`. A message for this device from elsewhere is refused (AR, naming
    /// the peer) and dead-lettered with the peer address. Empty or absent: any address.
    #[serde(default)]
    pub allow_from: Vec<String>,
}

/// A serial port. Defaults are the protocol's usual settings (Masimo 9600 8N1, MEDIBUS 19200 8E1);
/// set them to what the device's COM-port menu says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerial {
    /// Device path, e.g. `/dev/ttyUSB0` or a stable `/dev/serial/by-id/...` link.
    pub port: PathBuf,
    pub baud: Option<u32>,
    /// 7 or 8.
    pub data_bits: Option<u8>,
    /// `"none"`, `"even"` or `"odd"`.
    pub parity: Option<String>,
    /// 1 or 2.
    pub stop_bits: Option<u8>,
}

fn default_clock() -> String {
    "auto".into()
}
fn default_store_file() -> PathBuf {
    PathBuf::from("gateway.db")
}
fn default_disk_budget_mb() -> u64 {
    10 * 1024
}
fn default_high_water_pct() -> u8 {
    90
}
fn default_low_water_pct() -> u8 {
    80
}
fn default_alarm_reserve_pct() -> u8 {
    2
}
fn default_on_full() -> String {
    "refuse".into()
}
fn default_synchronous() -> String {
    "full".into()
}
fn default_max_batch() -> usize {
    512
}
fn default_max_pending() -> usize {
    20_000
}
fn default_mllp_listen() -> String {
    "0.0.0.0:2575".into()
}
fn default_max_frame_bytes() -> usize {
    icu_drivers::mllp::DEFAULT_MAX_FRAME_BYTES
}
fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_address() -> usize {
    32
}
fn default_frame_timeout_s() -> u64 {
    30
}
fn default_idle_timeout_s() -> u64 {
    300
}
fn default_max_event_streams() -> usize {
    32
}
fn default_max_body_bytes() -> usize {
    16 * 1024
}
fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_key_file() -> PathBuf {
    PathBuf::from("gateway.key")
}
fn default_topic_observations() -> String {
    "icu.observations".into()
}
fn default_topic_alarms() -> String {
    "icu.alarms".into()
}
fn default_topic_adt() -> String {
    "icu.adt".into()
}
fn default_topic_deadletter() -> String {
    "icu.deadletter".into()
}
fn default_message_timeout_ms() -> u64 {
    30_000
}
fn default_max_per_bundle() -> usize {
    100
}
fn default_compression() -> String {
    "lz4".into()
}
fn default_fetch_limit() -> usize {
    5000
}
fn default_live_window_ms() -> u64 {
    10_000
}
fn default_backlog_rate() -> u64 {
    100_000
}
fn default_silent_after_s() -> u64 {
    30
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway_id: String,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub mllp: MllpConfig,
    /// Addresses the ADT sender may connect from (empty: any).
    pub adt_allow_from: crate::allow::AllowList,
    pub http_listen: SocketAddr,
    pub http_limits: crate::http::HttpLimits,
    pub key_file: PathBuf,
    pub kafka: Option<KafkaConfig>,
    pub mqtt: Option<icu_drivers::mqtt::MqttConfig>,
    pub alarms: crate::alarm::AlarmConfig,
    /// `(host:port, receiving application)` of the PCD-04 alarm manager.
    pub alarm_manager: Option<(String, String)>,
    pub clock: ClockPolicy,
    pub beds: Vec<Bed>,
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub topic_observations: String,
    pub topic_alarms: String,
    pub topic_adt: String,
    pub topic_deadletter: String,
    pub message_timeout_ms: u64,
    pub max_per_bundle: usize,
    pub compression: String,
    pub fetch_limit: usize,
    pub live_window: std::time::Duration,
    pub backlog_rate: u64,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages and to resolve
    /// relative `data_dir`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        raw.validate(base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// ADT locations (PV1-3 `PointOfCare^Room^Bed`, or a bare bed component) → bed id.
    pub fn bed_map(&self) -> crate::census::BedMap {
        let mut map = crate::census::BedMap::new();
        for b in &self.beds {
            map.insert(b.id.clone(), b.id.clone());
            if let Some(loc) = &b.adt_location {
                map.insert(loc.clone(), b.id.clone());
            }
        }
        map
    }

    /// Devices indexed by every identifier that recognises them.
    pub fn device_index(&self) -> HashMap<String, usize> {
        self.devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.match_id.clone().map(|m| (m, i)))
            .collect()
    }
}

/// Parses an allow-list, reporting each bad entry as `field[index]`.
fn allow_list(
    field: &str,
    entries: &[String],
    problem: &mut impl FnMut(&str, String),
) -> crate::allow::AllowList {
    crate::allow::AllowList::parse(entries).unwrap_or_else(|bad| {
        for (j, message) in bad {
            problem(&format!("{field}[{j}]"), message);
        }
        crate::allow::AllowList::default()
    })
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl RawConfig {
    /// Turns the raw file into a [`Config`], or lists every problem with its field path.
    /// Relative `data_dir` is resolved against `base` (the config file's folder).
    pub fn validate(self, base: &Path) -> Result<Config, Vec<FieldProblem>> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(FieldProblem {
                field: field.to_owned(),
                message,
            })
        };

        if !valid_id(&self.gateway_id) {
            problem(
                "gateway_id",
                format!(
                    "'{}' must be 1-64 letters, digits, '-', '_' or '.'",
                    self.gateway_id
                ),
            );
        }
        let data_dir = if self.data_dir.is_absolute() {
            self.data_dir.clone()
        } else {
            base.join(&self.data_dir)
        };
        let in_data = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                data_dir.join(p)
            }
        };

        if self.store.disk_budget_mb == 0 {
            problem("store.disk_budget_mb", "must be at least 1".into());
        }
        if !(2..=100).contains(&self.store.high_water_pct) {
            problem(
                "store.high_water_pct",
                format!("{} must be 2-100", self.store.high_water_pct),
            );
        }
        if self.store.low_water_pct == 0 || self.store.low_water_pct >= self.store.high_water_pct {
            problem(
                "store.low_water_pct",
                format!(
                    "{} must be at least 1 and below store.high_water_pct ({})",
                    self.store.low_water_pct, self.store.high_water_pct
                ),
            );
        }
        if self.store.alarm_reserve_pct > 20 {
            problem(
                "store.alarm_reserve_pct",
                format!("{} must be 0-20", self.store.alarm_reserve_pct),
            );
        }
        let on_full = match self.store.on_full.as_str() {
            "refuse" => crate::store::OnFull::Refuse,
            "drop_oldest_unsent" => crate::store::OnFull::DropOldestUnsent,
            other => {
                problem(
                    "store.on_full",
                    format!("'{other}' is not one of \"refuse\", \"drop_oldest_unsent\""),
                );
                crate::store::OnFull::Refuse
            }
        };
        let synchronous_full = match self.store.synchronous.as_str() {
            "full" => true,
            "normal" => false,
            other => {
                problem(
                    "store.synchronous",
                    format!("'{other}' is not one of \"full\", \"normal\""),
                );
                true
            }
        };
        if self.store.max_batch == 0 {
            problem("store.max_batch", "must be at least 1".into());
        }
        if self.store.max_pending < self.store.max_batch {
            problem(
                "store.max_pending",
                format!(
                    "must be at least store.max_batch ({})",
                    self.store.max_batch
                ),
            );
        }

        let mut addr = |field: &str, s: &str| -> SocketAddr {
            match s.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    problem(
                        field,
                        format!("'{s}' is not an address like 127.0.0.1:2575"),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            }
        };
        let mllp_listen = addr("mllp.listen", &self.mllp.listen);
        let http_listen = addr("http.listen", &self.http.listen);
        if self.mllp.max_frame_bytes < 1024 || self.mllp.max_frame_bytes > 64 << 20 {
            problem(
                "mllp.max_frame_bytes",
                format!("{} is outside 1024..=67108864", self.mllp.max_frame_bytes),
            );
        }
        if self.mllp.max_connections == 0 {
            problem("mllp.max_connections", "must be at least 1".into());
        }
        if self.mllp.max_connections_per_address == 0 {
            problem(
                "mllp.max_connections_per_address",
                "must be at least 1".into(),
            );
        }
        for (field, secs) in [
            ("mllp.frame_timeout_s", self.mllp.frame_timeout_s),
            ("mllp.idle_timeout_s", self.mllp.idle_timeout_s),
        ] {
            if !(1..=86_400).contains(&secs) {
                problem(field, format!("{secs} is outside 1..=86400 seconds"));
            }
        }
        if self.http.max_event_streams == 0 {
            problem("http.max_event_streams", "must be at least 1".into());
        }
        if !(1024..=16 << 20).contains(&self.http.max_body_bytes) {
            problem(
                "http.max_body_bytes",
                format!("{} is outside 1024..=16777216", self.http.max_body_bytes),
            );
        }
        let adt_allow_from = allow_list("adt.allow_from", &self.adt.allow_from, &mut problem);

        let kafka = self.kafka.as_ref().map(|k| {
            if k.bootstrap.trim().is_empty() {
                problem("kafka.bootstrap", "must name at least one host:port".into());
            }
            if k.topic_observations.trim().is_empty() {
                problem("kafka.topic_observations", "must not be empty".into());
            }
            if k.topic_alarms.trim().is_empty() {
                problem("kafka.topic_alarms", "must not be empty".into());
            }
            if k.topic_adt.trim().is_empty() {
                problem("kafka.topic_adt", "must not be empty".into());
            }
            if k.topic_deadletter.trim().is_empty() {
                problem("kafka.topic_deadletter", "must not be empty".into());
            }
            if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&k.compression.as_str()) {
                problem(
                    "kafka.compression",
                    format!(
                        "'{}' is not one of none, gzip, snappy, lz4, zstd",
                        k.compression
                    ),
                );
            }
            if k.max_per_bundle == 0 || k.max_per_bundle > 10_000 {
                problem("kafka.max_per_bundle", "must be within 1..=10000".into());
            }
            if k.message_timeout_ms < 1000 {
                problem("kafka.message_timeout_ms", "must be at least 1000".into());
            }
            if k.fetch_limit == 0 || k.fetch_limit > 100_000 {
                problem("kafka.fetch_limit", "must be within 1..=100000".into());
            }
            if !(1000..=3_600_000).contains(&k.live_window_ms) {
                problem(
                    "kafka.live_window_ms",
                    "must be within 1000..=3600000".into(),
                );
            }
            if k.backlog_rate == 0 {
                problem(
                    "kafka.backlog_rate",
                    "must be at least 1 observation per second".into(),
                );
            }
            KafkaConfig {
                bootstrap: k.bootstrap.clone(),
                topic_observations: k.topic_observations.clone(),
                topic_alarms: k.topic_alarms.clone(),
                topic_adt: k.topic_adt.clone(),
                topic_deadletter: k.topic_deadletter.clone(),
                message_timeout_ms: k.message_timeout_ms,
                max_per_bundle: k.max_per_bundle,
                compression: k.compression.clone(),
                fetch_limit: k.fetch_limit,
                live_window: std::time::Duration::from_millis(k.live_window_ms),
                backlog_rate: k.backlog_rate,
            }
        });

        let mqtt = self.mqtt.as_ref().map(|m| {
            let cfg = icu_drivers::mqtt::MqttConfig {
                broker_host: m.broker_host.clone(),
                broker_port: m.broker_port,
                client_id: m
                    .client_id
                    .clone()
                    .unwrap_or_else(|| format!("icu-gateway-{}", self.gateway_id)),
                gateway_id: self.gateway_id.clone(),
                keep_alive_s: 30,
                max_payload_bytes: m.max_payload_bytes,
                reconnect_max_backoff_ms: 5_000,
                username: m.username.clone(),
                password: m.password.clone(),
            };
            if let Err(e) = cfg.validate() {
                problem("mqtt", e.to_string());
            }
            cfg
        });

        let alarms = self.alarms.clone().unwrap_or_default();
        if let Some(am) = &self.alarm_manager {
            if !am.mllp.contains(':') {
                problems.push(FieldProblem {
                    field: "alarm_manager.mllp".into(),
                    message: format!("'{}' is not host:port", am.mllp),
                });
            }
        }
        problems.extend(alarms.validate("alarms"));
        let mut problem = |field: &str, message: String| {
            problems.push(FieldProblem {
                field: field.to_owned(),
                message,
            })
        };

        let clock = match self.clock.as_str() {
            "auto" => ClockPolicy::Auto,
            "synced" => ClockPolicy::Synced,
            "unsynced" => ClockPolicy::Unsynced,
            other => {
                problem(
                    "clock",
                    format!("'{other}' is not one of \"auto\", \"synced\", \"unsynced\""),
                );
                ClockPolicy::Auto
            }
        };

        let mut beds = Vec::new();
        let mut bed_ids = BTreeMap::new();
        for (i, b) in self.beds.iter().enumerate() {
            if !valid_id(&b.id) {
                problem(
                    &format!("beds[{i}].id"),
                    format!("'{}' must be 1-64 letters, digits, '-', '_' or '.'", b.id),
                );
            }
            if let Some(prev) = bed_ids.insert(b.id.clone(), i) {
                problem(
                    &format!("beds[{i}].id"),
                    format!("'{}' is already used by beds[{prev}]", b.id),
                );
            }
            if let Some(loc) = &b.adt_location {
                if loc.split('^').count() != 3 || loc.split('^').any(str::is_empty) {
                    problem(
                        &format!("beds[{i}].adt_location"),
                        format!("'{loc}' is not PointOfCare^Room^Bed as in PV1-3, e.g. ICU1^101^A"),
                    );
                }
            }
            beds.push(Bed {
                id: b.id.clone(),
                label: b.label.clone().unwrap_or_else(|| b.id.clone()),
                adt_location: b.adt_location.clone(),
            });
        }

        let mut devices = Vec::new();
        let mut device_ids = BTreeMap::new();
        let mut match_ids = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for (i, d) in self.devices.iter().enumerate() {
            if !valid_id(&d.id) {
                problem(
                    &format!("devices[{i}].id"),
                    format!("'{}' must be 1-64 letters, digits, '-', '_' or '.'", d.id),
                );
            }
            if let Some(prev) = device_ids.insert(d.id.clone(), i) {
                problem(
                    &format!("devices[{i}].id"),
                    format!("'{}' is already used by devices[{prev}]", d.id),
                );
            }
            if !bed_ids.contains_key(&d.bed) {
                problem(
                    &format!("devices[{i}].bed"),
                    format!("'{}' is not one of the configured beds", d.bed),
                );
            }
            let protocol = match d.protocol.as_str() {
                "pcd01" => Protocol::Pcd01,
                "masimo" => Protocol::Masimo,
                "medibus" => Protocol::Medibus,
                "mqtt" => Protocol::Mqtt,
                other => {
                    problem(
                        &format!("devices[{i}].protocol"),
                        format!(
                            "'{other}' is not a supported protocol (pcd01, masimo, medibus, mqtt)"
                        ),
                    );
                    Protocol::Pcd01
                }
            };
            let needs_match = protocol == Protocol::Pcd01;
            if protocol == Protocol::Mqtt && self.mqtt.is_none() {
                problem(
                    &format!("devices[{i}].protocol"),
                    "mqtt devices need an [mqtt] section naming the broker".into(),
                );
            }
            match (&d.match_id, protocol.is_serial()) {
                (None, false) if needs_match => problem(
                    &format!("devices[{i}].match"),
                    "is required for pcd01 devices (the EUI-64 or MSH-3.1 that identifies them)"
                        .into(),
                ),
                (None, false) => {}
                (Some(_), false) if !needs_match => problem(
                    &format!("devices[{i}].match"),
                    "is only for pcd01 devices; mqtt devices are identified by their topic".into(),
                ),
                (Some(m), false) if m.trim().is_empty() => {
                    problem(&format!("devices[{i}].match"), "must not be empty".into())
                }
                (Some(m), false) => {
                    if let Some(prev) = match_ids.insert(m.clone(), i) {
                        problem(
                            &format!("devices[{i}].match"),
                            format!("'{m}' already identifies devices[{prev}]"),
                        );
                    }
                }
                (Some(_), true) => problem(
                    &format!("devices[{i}].match"),
                    "is only for pcd01 devices; serial devices are identified by their port".into(),
                ),
                (None, true) => {}
            }
            let serial = match (&d.serial, protocol.is_serial()) {
                (None, true) => {
                    problem(
                        &format!("devices[{i}].serial"),
                        format!(
                            "is required for {} devices (port and line settings)",
                            d.protocol
                        ),
                    );
                    None
                }
                (Some(_), false) => {
                    problem(
                        &format!("devices[{i}].serial"),
                        "is only for serial devices (masimo, medibus)".into(),
                    );
                    None
                }
                (None, false) => None,
                (Some(sp), true) => {
                    let (baud, parity) = match protocol {
                        Protocol::Medibus => (19200, "even"),
                        _ => (9600, "none"),
                    };
                    let parity = sp.parity.clone().unwrap_or_else(|| parity.to_owned());
                    let data_bits = sp.data_bits.unwrap_or(8);
                    let stop_bits = sp.stop_bits.unwrap_or(1);
                    let baud = sp.baud.unwrap_or(baud);
                    let usual = match protocol {
                        Protocol::Medibus => "MEDIBUS: usually 19200",
                        _ => "Masimo: 9600",
                    };
                    for (field, message) in icu_drivers::serial_line::line_problems(
                        &sp.port.to_string_lossy(),
                        baud,
                        data_bits,
                        &parity,
                        stop_bits,
                        usual,
                    ) {
                        problem(&format!("devices[{i}].serial.{field}"), message);
                    }
                    if let Some(prev) = ports.insert(sp.port.clone(), i) {
                        problem(
                            &format!("devices[{i}].serial.port"),
                            format!("{} is already used by devices[{prev}]", sp.port.display()),
                        );
                    }
                    Some(crate::serial::SerialSettings {
                        port: sp.port.clone(),
                        baud,
                        data_bits,
                        parity,
                        stop_bits,
                    })
                }
            };
            if d.silent_after_s == 0 {
                problem(
                    &format!("devices[{i}].silent_after_s"),
                    "must be at least 1".into(),
                );
            }
            if !d.allow_from.is_empty() && protocol != Protocol::Pcd01 {
                problem(
                    &format!("devices[{i}].allow_from"),
                    "is only for pcd01 devices (senders on the MLLP listener)".into(),
                );
            }
            let allow_from = allow_list(
                &format!("devices[{i}].allow_from"),
                &d.allow_from,
                &mut problem,
            );
            devices.push(Device {
                id: d.id.clone(),
                bed: d.bed.clone(),
                protocol,
                match_id: d.match_id.clone(),
                serial,
                silent_after: Duration::from_secs(d.silent_after_s),
                allow_from,
            });
        }

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            gateway_id: self.gateway_id,
            store: StoreConfig {
                path: in_data(&self.store.file),
                disk_budget_bytes: self.store.disk_budget_mb.saturating_mul(1 << 20),
                high_water_pct: self.store.high_water_pct,
                low_water_pct: self.store.low_water_pct,
                alarm_reserve_pct: self.store.alarm_reserve_pct,
                on_full,
                synchronous_full,
                max_batch: self.store.max_batch,
                max_pending: self.store.max_pending,
            },
            mllp: MllpConfig {
                listen: mllp_listen,
                max_frame_bytes: self.mllp.max_frame_bytes,
                max_connections: self.mllp.max_connections,
                max_connections_per_address: self
                    .mllp
                    .max_connections_per_address
                    .min(self.mllp.max_connections),
                frame_timeout: Duration::from_secs(self.mllp.frame_timeout_s),
                idle_timeout: Duration::from_secs(self.mllp.idle_timeout_s),
            },
            adt_allow_from,
            http_listen,
            http_limits: crate::http::HttpLimits {
                max_event_streams: self.http.max_event_streams,
                max_body_bytes: self.http.max_body_bytes,
            },
            key_file: in_data(&self.signing.key_file),
            kafka,
            mqtt,
            alarms,
            alarm_manager: self
                .alarm_manager
                .as_ref()
                .map(|a| (a.mllp.clone(), a.receiving_application.clone())),
            clock,
            beds,
            devices,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
gateway_id = "icu-a"
data_dir = "data"
[mllp]
listen = "127.0.0.1:0"
[[beds]]
id = "bed-1"
[[devices]]
id = "mon-1"
bed = "bed-1"
protocol = "pcd01"
match = "0012AB00000000B2"
"#;

    #[test]
    fn good_config_validates_with_defaults() {
        let c = Config::from_toml(GOOD, Path::new("/etc/icu/gateway.toml")).unwrap();
        assert_eq!(c.gateway_id, "icu-a");
        assert_eq!(c.data_dir, PathBuf::from("/etc/icu/data"));
        assert_eq!(c.store.path, PathBuf::from("/etc/icu/data/gateway.db"));
        assert!(c.store.synchronous_full);
        assert_eq!(c.beds[0].label, "bed-1");
        assert_eq!(c.devices[0].protocol, Protocol::Pcd01);
        assert!(c.kafka.is_none());
    }

    #[test]
    fn store_budget_policy_defaults_and_validation() {
        let c = Config::from_toml(GOOD, Path::new("/etc/icu/gateway.toml")).unwrap();
        let p = c.store.budget_policy();
        assert_eq!(p.budget_bytes, 10 << 30);
        assert_eq!(
            (p.high_water_pct, p.low_water_pct, p.alarm_reserve_pct),
            (90, 80, 2)
        );
        assert_eq!(p.on_full, crate::store::OnFull::Refuse);
        let set = GOOD.replace(
            "[mllp]",
            "[store]\ndisk_budget_mb = 64\nhigh_water_pct = 95\nlow_water_pct = 70\nalarm_reserve_pct = 5\non_full = \"drop_oldest_unsent\"\n[mllp]",
        );
        let p = Config::from_toml(&set, Path::new("g.toml"))
            .unwrap()
            .store
            .budget_policy();
        assert_eq!(p.budget_bytes, 64 << 20);
        assert_eq!(
            (p.high_water_pct, p.low_water_pct, p.alarm_reserve_pct),
            (95, 70, 5)
        );
        assert_eq!(p.on_full, crate::store::OnFull::DropOldestUnsent);
        let bad = GOOD.replace(
            "[mllp]",
            "[store]\nhigh_water_pct = 80\nlow_water_pct = 85\nalarm_reserve_pct = 50\non_full = \"panic\"\n[mllp]",
        );
        let ConfigError::Invalid { problems, .. } =
            Config::from_toml(&bad, Path::new("g.toml")).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "store.low_water_pct",
                "store.alarm_reserve_pct",
                "store.on_full"
            ]
        );
        assert!(problems[2].message.contains("drop_oldest_unsent"));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let text = r#"
gateway_id = "icu a"
data_dir = "d"
[store]
synchronous = "sometimes"
[mllp]
listen = "nowhere"
[[beds]]
id = "bed-1"
[[devices]]
id = "mon-1"
bed = "bed-9"
protocol = "medibus9"
match = "x"
[[devices]]
id = "mon-1"
bed = "bed-1"
protocol = "pcd01"
match = "x"
"#;
        let err = Config::from_toml(text, Path::new("g.toml")).unwrap_err();
        let ConfigError::Invalid { problems, .. } = err else {
            panic!("expected Invalid, got {err}");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "gateway_id",
                "store.synchronous",
                "mllp.listen",
                "devices[0].bed",
                "devices[0].protocol",
                "devices[1].id",
                "devices[1].match"
            ]
        );
    }

    #[test]
    fn serial_devices_need_a_valid_line() {
        let text = r#"
gateway_id = "icu-a"
data_dir = "d"
[[beds]]
id = "bed-1"
[[devices]]
id = "vent-1"
bed = "bed-1"
protocol = "medibus"
[devices.serial]
port = "/dev/ttyUSB0"
parity = "mark"
stop_bits = 3
[[devices]]
id = "spo2-1"
bed = "bed-1"
protocol = "masimo"
"#;
        let ConfigError::Invalid { problems, .. } =
            Config::from_toml(text, Path::new("g.toml")).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "devices[0].serial.parity",
                "devices[0].serial.stop_bits",
                "devices[1].serial"
            ]
        );
        let ok = text
            .replace("parity = \"mark\"\nstop_bits = 3\n", "")
            .replace(
                "protocol = \"masimo\"\n",
                "protocol = \"masimo\"\n[devices.serial]\nport = \"/dev/ttyUSB1\"\n",
            );
        let c = Config::from_toml(&ok, Path::new("g.toml")).unwrap();
        let vent = c.devices[0].serial.as_ref().unwrap();
        assert_eq!((vent.baud, vent.parity.as_str()), (19200, "even"));
        let spo2 = c.devices[1].serial.as_ref().unwrap();
        assert_eq!((spo2.baud, spo2.parity.as_str()), (9600, "none"));
    }

    #[test]
    fn listener_limits_and_allow_lists_have_defaults_and_are_validated() {
        let c = Config::from_toml(GOOD, Path::new("g.toml")).unwrap();
        assert_eq!(c.mllp.max_connections, 256);
        assert_eq!(c.mllp.max_connections_per_address, 32);
        assert_eq!(c.mllp.frame_timeout, Duration::from_secs(30));
        assert_eq!(c.mllp.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.http_limits, crate::http::HttpLimits::default());
        assert!(c.adt_allow_from.is_empty() && c.devices[0].allow_from.is_empty());

        let set = GOOD
            .replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_connections = 8\nmax_connections_per_address = 20\nframe_timeout_s = 2\nidle_timeout_s = 5\n[adt]\nallow_from = [\"10.20.0.0/24\"]\n[http]\nmax_event_streams = 4\nmax_body_bytes = 4096",
            )
            .replace("match = \"0012AB00000000B2\"", "match = \"0012AB00000000B2\"\nallow_from = [\"10.1.2.3\", \"::1\"]");
        let c = Config::from_toml(&set, Path::new("g.toml")).unwrap();
        assert_eq!(
            c.mllp.max_connections_per_address, 8,
            "never above the total"
        );
        assert_eq!(c.mllp.frame_timeout, Duration::from_secs(2));
        assert_eq!(c.mllp.idle_timeout, Duration::from_secs(5));
        assert!(c.adt_allow_from.allows("10.20.0.7".parse().unwrap()));
        assert!(!c.adt_allow_from.allows("10.20.1.7".parse().unwrap()));
        assert!(c.devices[0].allow_from.allows("::1".parse().unwrap()));
        assert!(!c.devices[0].allow_from.allows("10.1.2.4".parse().unwrap()));
        assert_eq!(c.http_limits.max_event_streams, 4);
        assert_eq!(c.http_limits.max_body_bytes, 4096);

        let bad = GOOD
            .replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nmax_connections_per_address = 0\nframe_timeout_s = 0\n[adt]\nallow_from = [\"10.20.0.0/40\"]",
            )
            .replace("match = \"0012AB00000000B2\"", "match = \"0012AB00000000B2\"\nallow_from = [\"10.1.2.3\", \"monitor-3\"]");
        let ConfigError::Invalid { problems, .. } =
            Config::from_toml(&bad, Path::new("g.toml")).unwrap_err()
        else {
            panic!("expected Invalid");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "mllp.max_connections_per_address",
                "mllp.frame_timeout_s",
                "adt.allow_from[0]",
                "devices[0].allow_from[1]"
            ]
        );
        assert!(problems[3]
            .message
            .contains("'monitor-3' is not an IP address"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = format!("{GOOD}\n[kafka]\nbootstrap = \"h:1\"\ntopic = \"x\"\n");
        let err = Config::from_toml(&text, Path::new("g.toml")).unwrap_err();
        assert!(err.to_string().contains("unknown field `topic`"), "{err}");
    }

    #[test]
    fn kafka_drain_knobs_have_documented_defaults_and_are_validated() {
        let parse = |extra: &str| {
            let text = format!("{GOOD}\n[kafka]\nbootstrap = \"h:1\"\n{extra}\n");
            Config::from_toml(&text, Path::new("g.toml")).map(|c| c.kafka.unwrap())
        };
        let k = parse("").unwrap();
        assert_eq!(k.fetch_limit, 5000);
        assert_eq!(k.live_window, std::time::Duration::from_secs(10));
        assert_eq!(k.backlog_rate, 100_000);
        for (line, field) in [
            ("fetch_limit = 0", "kafka.fetch_limit"),
            ("live_window_ms = 10", "kafka.live_window_ms"),
            ("backlog_rate = 0", "kafka.backlog_rate"),
        ] {
            let err = parse(line).unwrap_err();
            assert!(err.to_string().contains(field), "{line}: {err}");
        }
        let k = parse("fetch_limit = 500\nlive_window_ms = 2000\nbacklog_rate = 750").unwrap();
        assert_eq!(
            (k.fetch_limit, k.live_window.as_millis(), k.backlog_rate),
            (500, 2000, 750)
        );
    }
}
