//! Gateway configuration: one TOML file per ICU.
//!
//! Owns: the raw file format ([`RawConfig`], `deny_unknown_fields`) and its one validation step
//! into the domain type [`Config`]. Guarantees: a `Config` only exists if every field was valid;
//! [`RawConfig::validate`] reports *every* problem at once, each with its field path, so a
//! biomedical engineer can fix a file in one pass. Defaults are named functions; the doc comments
//! of the raw fields are the user documentation of the file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from and the SHA-256 of its text (the audit trail records which
    /// configuration a gateway ran with).
    pub source_path: PathBuf,
    pub source_sha256: String,
    pub gateway_id: String,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub mllp: MllpConfig,
    /// Addresses the ADT sender may connect from (empty: any).
    pub adt_allow_from: crate::allow::AllowList,
    /// Names the ADT sender's client certificate must carry (`adt.cert_names`).
    pub adt_cert_names: Vec<String>,
    pub http_listen: SocketAddr,
    pub http_limits: crate::http::HttpLimits,
    /// `[auth]`, validated by the auth module's own rules.
    pub auth: crate::auth::AuthConfig,
    /// `[tls]` with paths resolved, validated by the tls module's own rules.
    pub tls: crate::tls::TlsConfig,
    pub key_file: PathBuf,
    /// The bridge's settings (`[kafka]`), validated by the bridge's own rules.
    pub kafka: Option<icu_cloud_bridge::bridge::BridgeConfig>,
    pub mqtt: Option<icu_drivers::mqtt::MqttConfig>,
    pub alarms: crate::alarm::AlarmConfig,
    /// The PCD-04 alarm manager (`[alarm_manager]`), if any.
    pub alarm_manager: Option<crate::alarm::pcd04_out::AlarmManagerConfig>,
    pub clock: ClockPolicy,
    /// `[tracing]`: log format and OTLP export, checked by the telemetry module's rules.
    pub tracing: crate::telemetry::TracingSettings,
    /// `[waveforms]`: the waveform decoder's bounds and the alarm snippets.
    pub waveforms: crate::waves::WaveformSettings,
    pub beds: Vec<Bed>,
    pub devices: Vec<Device>,
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
        let parse = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let raw: RawConfig = if text.contains("${") {
            // `${NAME}` from the environment (systemd credentials): expand, then read.
            let mut value: toml::Value = toml::from_str(text).map_err(parse)?;
            let problems = env::expand(&mut value, &|name| std::env::var(name).ok());
            if !problems.is_empty() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    problems,
                });
            }
            value.try_into().map_err(parse)?
        } else {
            toml::from_str(text).map_err(parse)?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut cfg = raw
            .validate(base)
            .map_err(|problems| ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })?;
        cfg.source_path = path.to_owned();
        cfg.source_sha256 = crate::audit::sha256_hex(text.as_bytes());
        Ok(cfg)
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

mod env;
mod raw;
mod validate;

pub use raw::*;

#[cfg(test)]
mod tests;
