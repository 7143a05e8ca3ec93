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
    /// The store (the `icu-store` crate's own settings type, with its defaults and rules).
    #[serde(default)]
    pub store: crate::store::StoreSettings,
    /// The HL7v2/MLLP listener (the listener's own settings type, `crate::mllp::MllpSettings`).
    #[serde(default)]
    pub mllp: crate::mllp::MllpSettings,
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
    /// The bridge's own settings type (`icu_cloud_bridge::bridge::KafkaSettings`, checked by
    /// the rules of its `BridgeConfig`).
    pub kafka: Option<icu_cloud_bridge::bridge::KafkaSettings>,
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
    /// Log line format and OpenTelemetry tracing (off by default): `crate::telemetry`.
    #[serde(default)]
    pub tracing: crate::telemetry::TracingSettings,
    /// Waveforms (curves): the PCD-01 waveform decoder's bounds and the alarm snippets
    /// (`crate::waves::WaveformSettings`).
    #[serde(default)]
    pub waveforms: crate::waves::WaveformSettings,
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
    /// For `medibus`: the realtime curves to receive next to the slow protocol, in stream order,
    /// by name (`"airway_pressure"`, `"flow"`, `"volume"`) or Dräger realtime code (`"00"`,
    /// `"01"`, `"03"`). Empty or absent: no curves (the default). Curves the ventilator does not
    /// offer are left out; the numerics are polled either way.
    #[serde(default)]
    pub realtime: Vec<String>,
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
fn default_key_file() -> PathBuf {
    PathBuf::from("gateway.key")
}
fn default_silent_after_s() -> u64 {
    30
}
