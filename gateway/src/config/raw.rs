//! The configuration file as written: every section's serde form, `deny_unknown_fields`, with
//! its defaults as named functions. The doc comments are the user documentation of the file.

use std::path::PathBuf;

use serde::Deserialize;

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
    /// The local page and API (the http module's own settings type).
    #[serde(default)]
    pub http: crate::http::HttpConfig,
    /// The ADT feed (HL7v2 A01/A02/A03/... on the MLLP listener).
    #[serde(default)]
    pub adt: RawAdt,
    #[serde(default)]
    pub signing: RawSigning,
    /// Accounts, sessions and login throttling of the page and API (`crate::auth::AuthConfig`).
    #[serde(default)]
    pub auth: crate::auth::AuthConfig,
    /// TLS per interface (`crate::tls::TlsConfig`); plain text everywhere when absent.
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
    /// The hospital's Kafka backbone; leave out to store only (records wait in the outbox).
    pub kafka: Option<RawKafka>,
    /// The MQTT broker that pumps and wearables publish to; needed for `protocol = "mqtt"`.
    /// The transport's own settings type (fields, defaults and rules in
    /// `icu_drivers::mqtt::MqttConfig`); `gateway_id` comes from the top level.
    pub mqtt: Option<icu_drivers::mqtt::MqttConfig>,
    /// Local alarm rules (limits with sustain and hysteresis, rate of change, NEWS2); the
    /// defaults apply when the section is absent. Clinicians override limits per bed at run time.
    pub alarms: Option<crate::alarm::AlarmConfig>,
    /// An IHE ACM alarm manager that receives every alarm state change as PCD-04 (ORU^R40) over
    /// MLLP, with retry; leave out when there is none.
    pub alarm_manager: Option<crate::alarm::pcd04_out::AlarmManagerConfig>,
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
    /// With `[tls] mllp_client_certs`: names (subject CN or SAN) one of which the ADT sender's
    /// client certificate must carry, e.g. `["adt-engine"]`. An ADT message without such a
    /// certificate is refused (AR) and dead-lettered. Empty: any sender (subject to
    /// `allow_from`).
    #[serde(default)]
    pub cert_names: Vec<String>,
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
    /// Topic for the audit trail (one FHIR AuditEvent per entry, keyed by the gateway id).
    #[serde(default = "default_topic_audit")]
    pub topic_audit: String,
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
    /// `[kafka.security]`: TLS (with the hospital's CA, optionally a client certificate) and
    /// SASL/SCRAM towards the brokers; the bridge's own section (see its field docs). Without
    /// it the bridge speaks plain text.
    #[serde(default)]
    pub security: icu_cloud_bridge::bridge::KafkaSecurity,
    /// `[kafka.properties]`: other librdkafka properties, passed through (string → string);
    /// never one the gateway sets itself, never a secret.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
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
fn default_topic_audit() -> String {
    "icu.audit".into()
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
