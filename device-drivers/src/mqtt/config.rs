//! `[mqtt]` configuration of the gateway: which broker, which gateway id, which limits.
//!
//! The one definition of these settings: the gateway's config file reads its `[mqtt]` section
//! straight into [`MqttConfig`] (defaults here), fills in [`MqttConfig::gateway_id`] from its
//! top-level `gateway_id`, and reports [`MqttConfig::problems`] under `mqtt.<field>`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::codec::DEFAULT_MAX_PAYLOAD_BYTES;
use super::tls::check_secret_file;
use super::topic::check_level;

/// Whether the connection to the broker is encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttTls {
    /// Plain TCP: readings, patient-linked alarms and the password travel in clear text. For a
    /// broker on the gateway's own host (loopback) or an isolated segment.
    #[default]
    Off,
    /// TLS only, the broker's certificate checked against `ca_file` and `broker_host`.
    Required,
}

/// The MQTT subscriber of one gateway. The field comments are the user documentation.
/// No secret is held here: the password comes from `password_file` or `password_env` when the
/// connection starts (see [`super::mqtt_options`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Host name or IP address of the MQTT broker (MQTT 3.1.1). With TLS it must be a name (or
    /// IP address) that the broker's certificate holds.
    #[serde(default = "default_broker_host")]
    pub broker_host: String,
    /// TCP port of the broker (usually 1883 plain, 8883 TLS).
    #[serde(default = "default_broker_port")]
    pub broker_port: u16,
    /// Client id the gateway connects with; default `icu-gateway-<gateway_id>` (see
    /// [`MqttConfig::client_id()`]). It must be stable across restarts: the broker keeps the
    /// gateway's session (subscription and unacknowledged messages) under this id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// This gateway's id: the second level of every observation topic it subscribes to
    /// (`icu/<gateway_id>/bed/+/device/+/obs/#`). In the gateway's config file it is not part of
    /// `[mqtt]`: the gateway sets it from its top-level `gateway_id`.
    #[serde(default)]
    pub gateway_id: String,
    /// Seconds between keep-alive pings; the broker drops the gateway after 1.5 times this
    /// without traffic.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u16,
    /// Largest payload accepted, in bytes. A bigger payload is refused (and acknowledged, so the
    /// broker does not resend it). Set the broker's `message_size_limit` to at most this plus the
    /// topic length: a packet above `max_payload_bytes + 64 KiB` drops the connection.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Upper bound of the wait between reconnection attempts, in milliseconds. The wait starts
    /// at 100 ms and doubles after each failed attempt up to this bound.
    #[serde(default = "default_reconnect_max_backoff_ms")]
    pub reconnect_max_backoff_ms: u64,
    /// `"off"` (default: plain TCP) or `"required"` (TLS only; needs `ca_file`).
    #[serde(default)]
    pub tls: MqttTls,
    /// PEM bundle of the CA certificates trusted to sign the broker's certificate (only with
    /// `tls = "required"`; the system's certificate store is not used).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain the gateway presents to the broker (mutual TLS; with
    /// `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`; a secret: mode 600.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    /// Username for the broker, if it requires one.
    #[serde(default)]
    pub username: Option<String>,
    /// File whose first line is the broker password (only with `username`); a secret: mode
    /// 600. Alternative to `password_env`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Name of the environment variable holding the broker password (systemd credentials or
    /// `Environment=`); only with `username`. Alternative to `password_file`.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Never set: a password written in the config file is refused (use `password_file` or
    /// `password_env`). Kept only to say so clearly.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field("broker_host", &self.broker_host)
            .field("broker_port", &self.broker_port)
            .field("client_id", &self.client_id)
            .field("gateway_id", &self.gateway_id)
            .field("keep_alive_s", &self.keep_alive_s)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("reconnect_max_backoff_ms", &self.reconnect_max_backoff_ms)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `127.0.0.1`.
pub fn default_broker_host() -> String {
    "127.0.0.1".into()
}
/// `1883`, the IANA MQTT port.
pub fn default_broker_port() -> u16 {
    1883
}
/// `icu-gateway-<gateway_id>`.
pub fn default_client_id(gateway_id: &str) -> String {
    format!("icu-gateway-{gateway_id}")
}
/// `30` seconds.
pub fn default_keep_alive_s() -> u16 {
    30
}
/// 256 KiB.
pub fn default_max_payload_bytes() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}
/// `5000` ms.
pub fn default_reconnect_max_backoff_ms() -> u64 {
    5_000
}

impl MqttConfig {
    /// A config with every default and this gateway id.
    pub fn new(gateway_id: impl Into<String>) -> Self {
        Self {
            broker_host: default_broker_host(),
            broker_port: default_broker_port(),
            client_id: None,
            gateway_id: gateway_id.into(),
            keep_alive_s: default_keep_alive_s(),
            max_payload_bytes: default_max_payload_bytes(),
            reconnect_max_backoff_ms: default_reconnect_max_backoff_ms(),
            tls: MqttTls::Off,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            username: None,
            password_file: None,
            password_env: None,
            password: None,
        }
    }

    /// The client id to connect with: the configured one, or else `icu-gateway-<gateway_id>`.
    pub fn client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| default_client_id(&self.gateway_id))
    }

    /// Checks every field and reports every problem, each with its field path under `mqtt.`.
    pub fn validate(&self) -> Result<(), MqttConfigError> {
        let problems: Vec<String> = self
            .problems()
            .into_iter()
            .map(|(field, msg)| format!("mqtt.{field}: {msg}"))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MqttConfigError { problems })
        }
    }

    /// Every problem of this config, each with its field name: the one set of rules for these
    /// settings (the gateway's config check reports them under `mqtt.<field>`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, msg: String| problems.push((field, msg));
        if self.broker_host.trim().is_empty() {
            problem("broker_host", "must not be empty".into());
        }
        if self.broker_port == 0 {
            problem("broker_port", "must be between 1 and 65535".into());
        }
        let client_id = self.client_id();
        if client_id.is_empty() || client_id.len() > 23 * 8 {
            problem(
                "client_id",
                "must be 1 to 184 characters (brokers may limit it to 23)".into(),
            );
        }
        if let Err(e) = check_level("gateway id", &self.gateway_id) {
            problem("gateway_id", e.to_string());
        }
        if self.keep_alive_s < 5 {
            problem(
                "keep_alive_s",
                format!("{} is below the minimum of 5 seconds", self.keep_alive_s),
            );
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 16 * 1024 * 1024 {
            problem(
                "max_payload_bytes",
                format!("{} is outside 1 byte to 16 MiB", self.max_payload_bytes),
            );
        }
        if self.reconnect_max_backoff_ms < 100 {
            problem(
                "reconnect_max_backoff_ms",
                format!(
                    "{} is below the initial wait of 100 ms",
                    self.reconnect_max_backoff_ms
                ),
            );
        }
        self.tls_problems(&mut problem);
        self.credential_problems(&mut problem);
        problems
    }

    fn tls_problems(&self, problem: &mut impl FnMut(&'static str, String)) {
        let files = [
            ("ca_file", &self.ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ];
        if self.tls == MqttTls::Off {
            for (field, value) in files {
                if value.is_some() {
                    problem(
                        field,
                        "is set but tls is \"off\": set tls = \"required\" or remove it".into(),
                    );
                }
            }
            return;
        }
        if self.ca_file.is_none() {
            problem(
                "ca_file",
                "is required with tls = \"required\": the PEM bundle of the CA that signed the broker's certificate".into(),
            );
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => problem(
                "client_key_file",
                "is required with client_cert_file (the certificate's private key)".into(),
            ),
            (None, Some(_)) => problem(
                "client_cert_file",
                "is required with client_key_file (the key's certificate)".into(),
            ),
            _ => {}
        }
        for (field, value) in files {
            if let Some(path) = value {
                if let Err(msg) = existing_file(path) {
                    problem(field, msg);
                } else if field == "client_key_file" {
                    if let Err(msg) = check_secret_file(path) {
                        problem(field, msg);
                    }
                }
            }
        }
    }

    fn credential_problems(&self, problem: &mut impl FnMut(&'static str, String)) {
        if self.password.is_some() {
            problem(
                "password",
                "a password is never written in the config file: put it in a file (mode 600) \
                 named by password_file, or in an environment variable named by password_env"
                    .into(),
            );
        }
        if let (Some(_), Some(_)) = (&self.password_file, &self.password_env) {
            problem(
                "password_env",
                "set only one of password_file and password_env".into(),
            );
        }
        if self.username.is_none() {
            if self.password_file.is_some() {
                problem("password_file", "is set but username is not".into());
            }
            if self.password_env.is_some() {
                problem("password_env", "is set but username is not".into());
            }
        }
        if let Some(path) = &self.password_file {
            if let Err(msg) = check_secret_file(path) {
                problem("password_file", msg);
            }
        }
        if let Some(name) = &self.password_env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                problem(
                    "password_env",
                    format!("'{name}' is not an environment variable name"),
                );
            }
        }
    }

    /// `"tls"` or `"tcp"`: the transport this config connects with (shown in `/api/status`).
    pub fn transport(&self) -> &'static str {
        match self.tls {
            MqttTls::Off => "tcp",
            MqttTls::Required => "tls",
        }
    }

    /// The keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keep_alive_s))
    }

    /// The reconnection backoff cap.
    pub fn reconnect_max_backoff(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_backoff_ms)
    }
}

fn existing_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Every problem found in an `[mqtt]` section, one per line with its field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MQTT configuration: {}", problems.join("; "))]
pub struct MqttConfigError {
    pub problems: Vec<String>,
}
