//! How the bridge (and the `icu-bridge consume` verifier) reaches a secured Kafka backbone:
//! the `[kafka.security]` section ([`KafkaSecurity`]) and the `[kafka.properties]` pass-through
//! table, mapped onto librdkafka's client properties.
//!
//! Owns: the security settings, their rules ([`KafkaSecurity::problems`],
//! [`properties_problems`]), reading the SASL password (from a file or the environment, never
//! inline) and the librdkafka properties they become ([`client_properties`]); the classification
//! of librdkafka's authentication and TLS errors ([`SecurityFailure`]).
//!
//! Guarantees: a password never appears in the config file, its `Debug` output or a log line; a
//! password file or client key that group or others may read is refused when the client is made
//! (with the `chmod 600` that fixes it); a pass-through property never overrides a setting the
//! bridge or this section owns, and never carries a secret inline; plain text is the default and
//! is always said so (`/api/status` backbone `security`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::BridgeError;

/// `security.protocol`: how the connection to the brokers is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the default; a site's choice, shown as plain text).
    #[default]
    Plaintext,
    /// TLS (server certificate checked against `ca_file`; a client certificate for mutual TLS).
    Ssl,
    /// TLS plus SASL (SCRAM) authentication: what a hospital's central cluster usually requires.
    SaslSsl,
    /// SASL (SCRAM) authentication without TLS: the data travels in plain text.
    SaslPlaintext,
}

impl SecurityProtocol {
    /// The librdkafka value of `security.protocol`.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslSsl => "sasl_ssl",
            Self::SaslPlaintext => "sasl_plaintext",
        }
    }

    /// Parses the config / command-line spelling (`sasl_ssl`, also `SASL_SSL`).
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "plaintext" => Some(Self::Plaintext),
            "ssl" => Some(Self::Ssl),
            "sasl_ssl" => Some(Self::SaslSsl),
            "sasl_plaintext" => Some(Self::SaslPlaintext),
            _ => None,
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn is_sasl(self) -> bool {
        matches!(self, Self::SaslSsl | Self::SaslPlaintext)
    }
}

/// SASL mechanisms the bridge offers: SCRAM (librdkafka implements it on OpenSSL; Kerberos
/// needs Cyrus SASL and is out of scope) and PLAIN (only over TLS: it sends the password).
pub const SASL_MECHANISMS: &[&str] = &["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"];

/// The default SASL mechanism.
pub const DEFAULT_SASL_MECHANISM: &str = "SCRAM-SHA-512";

/// `[kafka.security]`: TLS and SASL towards the brokers. Every field is optional; without the
/// section the bridge speaks plain text.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `"plaintext"` (default), `"ssl"`, `"sasl_ssl"` or `"sasl_plaintext"`.
    #[serde(default)]
    pub protocol: SecurityProtocol,
    /// CA bundle (PEM) the brokers' certificates are checked against (`ssl.ca.location`);
    /// required with `ssl` and `sasl_ssl`: the hospital's CA.
    pub ca_file: Option<PathBuf>,
    /// This gateway's client certificate (PEM) for mutual TLS (`ssl.certificate.location`).
    pub client_cert_file: Option<PathBuf>,
    /// Its private key (PEM, mode 600) (`ssl.key.location`).
    pub client_key_file: Option<PathBuf>,
    /// Whether the broker's certificate must name the host in `bootstrap` (default true;
    /// `ssl.endpoint.identification.algorithm`).
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
    /// `"SCRAM-SHA-512"` (default), `"SCRAM-SHA-256"` or `"PLAIN"` (only with `sasl_ssl`).
    pub sasl_mechanism: Option<String>,
    /// The SASL user name (`sasl.username`).
    pub username: Option<String>,
    /// File holding the SASL password (first line; mode 600, e.g. a systemd credential).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the SASL password (instead of `password_file`).
    pub password_env: Option<String>,
}

fn default_true() -> bool {
    true
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No secret is held here (only where it is); still list fields explicitly.
        f.debug_struct("KafkaSecurity")
            .field("protocol", &self.protocol)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("verify_hostname", &self.verify_hostname)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .finish()
    }
}

/// librdkafka properties the bridge or `[kafka.security]` set: `[kafka.properties]` may not
/// override them.
const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "compression.type",
    "compression.codec",
    "message.timeout.ms",
    "allow.auto.create.topics",
    "security.protocol",
    "ssl.ca.location",
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.certificate.pem",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
    "sasl.mechanisms",
    "sasl.mechanism",
    "sasl.username",
];

/// Properties that carry a secret: never inline in the config file.
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Problems of a `[kafka.properties]` table, each with the property named in the reason.
pub fn properties_problems(properties: &BTreeMap<String, String>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, value) in properties {
        let key = name.trim();
        if key.is_empty() {
            out.push(("properties", "a property name is empty".to_owned()));
        } else if SECRET_PROPERTIES.contains(&key) {
            out.push((
                "properties",
                format!(
                    "{key:?} carries a secret and may not be written in the config file; use \
                     [kafka.security] password_file or password_env"
                ),
            ));
        } else if OWNED_PROPERTIES.contains(&key) {
            out.push((
                "properties",
                format!(
                    "{key:?} is set by the gateway itself ([kafka] or [kafka.security]); set it \
                     there, not as a pass-through property"
                ),
            ));
        } else if value.contains('\n') {
            out.push((
                "properties",
                format!("{key:?} has a line break in its value"),
            ));
        }
    }
    out
}

impl KafkaSecurity {
    /// A short description for `/api/status` and the log: `"plaintext"` or e.g.
    /// `"sasl_ssl SCRAM-SHA-512 as icu-gw-1"`.
    pub fn describe(&self) -> String {
        let mut out = self.protocol.as_librdkafka().to_owned();
        if self.protocol.is_sasl() {
            out.push(' ');
            out.push_str(self.mechanism());
            if let Some(user) = &self.username {
                out.push_str(" as ");
                out.push_str(user);
            }
        }
        if self.protocol.is_tls() && self.client_cert_file.is_some() {
            out.push_str(" with a client certificate");
        }
        out
    }

    /// The SASL mechanism (default [`DEFAULT_SASL_MECHANISM`]).
    pub fn mechanism(&self) -> &str {
        self.sasl_mechanism
            .as_deref()
            .map(str::trim)
            .unwrap_or(DEFAULT_SASL_MECHANISM)
    }

    /// Every problem of this section, each with its field name (`security.<field>`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let mut bad = |field, reason: String| out.push((field, reason));
        let protocol = self.protocol.as_librdkafka();
        if self.protocol.is_tls() {
            if self.ca_file.is_none() {
                bad(
                    "security.ca_file",
                    format!("is required with protocol {protocol:?}: the CA bundle (PEM) that signed the brokers' certificates"),
                );
            }
            if self.client_cert_file.is_some() != self.client_key_file.is_some() {
                bad(
                    "security.client_cert_file",
                    "mutual TLS needs both client_cert_file and client_key_file".into(),
                );
            }
        } else {
            for (field, set) in [
                ("security.ca_file", self.ca_file.is_some()),
                ("security.client_cert_file", self.client_cert_file.is_some()),
                ("security.client_key_file", self.client_key_file.is_some()),
            ] {
                if set {
                    bad(
                        field,
                        format!("is set but protocol {protocol:?} has no TLS: use \"ssl\" or \"sasl_ssl\""),
                    );
                }
            }
        }
        if self.protocol.is_sasl() {
            let mechanism = self.mechanism();
            if !SASL_MECHANISMS.contains(&mechanism) {
                bad(
                    "security.sasl_mechanism",
                    format!(
                        "unknown mechanism {mechanism:?}; use one of {}",
                        SASL_MECHANISMS.join(", ")
                    ),
                );
            } else if mechanism == "PLAIN" && !self.protocol.is_tls() {
                bad(
                    "security.sasl_mechanism",
                    "PLAIN sends the password itself: only with protocol \"sasl_ssl\"".into(),
                );
            }
            if self.username.as_deref().is_none_or(|u| u.trim().is_empty()) {
                bad(
                    "security.username",
                    format!("is required with protocol {protocol:?}"),
                );
            }
            match (&self.password_file, &self.password_env) {
                (None, None) => bad(
                    "security.password_file",
                    format!("protocol {protocol:?} needs the password from password_file or password_env (never inline)"),
                ),
                (Some(_), Some(_)) => bad(
                    "security.password_env",
                    "give the password either in password_file or in password_env, not both".into(),
                ),
                (None, Some(var)) if var.trim().is_empty() => {
                    bad("security.password_env", "must name an environment variable".into())
                }
                _ => {}
            }
        } else {
            for (field, set) in [
                ("security.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("security.username", self.username.is_some()),
                ("security.password_file", self.password_file.is_some()),
                ("security.password_env", self.password_env.is_some()),
            ] {
                if set {
                    bad(
                        field,
                        format!("is set but protocol {protocol:?} has no SASL: use \"sasl_ssl\""),
                    );
                }
            }
        }
        out
    }

    /// Reads the SASL password (first line of `password_file`, or `password_env`), refusing a
    /// file that group or others may read.
    fn password(&self) -> Result<String, BridgeError> {
        if let Some(path) = &self.password_file {
            refuse_shared_secret(path, "password_file")?;
            let text = std::fs::read_to_string(path).map_err(|source| BridgeError::Secret {
                path: path.clone(),
                reason: source.to_string(),
            })?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            if password.is_empty() {
                return Err(BridgeError::Secret {
                    path: path.clone(),
                    reason: "the file is empty: write the SASL password on its first line".into(),
                });
            }
            return Ok(password);
        }
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(p) if !p.is_empty() => Ok(p),
                _ => Err(BridgeError::Config {
                    field: "security.password_env",
                    reason: format!("environment variable {var} is not set or empty"),
                }),
            };
        }
        Err(BridgeError::Config {
            field: "security.password_file",
            reason: "no SASL password configured".into(),
        })
    }
}

/// Refuses a secret file (password, private key) that group or others may read.
pub fn refuse_shared_secret(path: &Path, field: &'static str) -> Result<(), BridgeError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|source| BridgeError::Secret {
            path: path.to_path_buf(),
            reason: format!("{field}: {source}"),
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(BridgeError::Secret {
                path: path.to_path_buf(),
                reason: format!(
                    "{field} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
                    path.display()
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, field);
    Ok(())
}

/// The librdkafka properties of `security` then `properties` (the pass-through table), in the
/// order they are to be set. Reads the password; checks the secrets' file modes.
pub fn client_properties(
    security: &KafkaSecurity,
    properties: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, BridgeError> {
    if let Some((field, reason)) = security
        .problems()
        .into_iter()
        .chain(properties_problems(properties))
        .next()
    {
        return Err(BridgeError::Config { field, reason });
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| out.push((k.to_owned(), v));
    set(
        "security.protocol",
        security.protocol.as_librdkafka().into(),
    );
    if security.protocol.is_tls() {
        if let Some(ca) = &security.ca_file {
            set("ssl.ca.location", ca.display().to_string());
        }
        if let (Some(cert), Some(key)) = (&security.client_cert_file, &security.client_key_file) {
            refuse_shared_secret(key, "client_key_file")?;
            set("ssl.certificate.location", cert.display().to_string());
            set("ssl.key.location", key.display().to_string());
        }
        set(
            "ssl.endpoint.identification.algorithm",
            if security.verify_hostname {
                "https"
            } else {
                "none"
            }
            .into(),
        );
    }
    if security.protocol.is_sasl() {
        set("sasl.mechanisms", security.mechanism().to_owned());
        set(
            "sasl.username",
            security.username.clone().unwrap_or_default(),
        );
        set("sasl.password", security.password()?);
    }
    for (k, v) in properties {
        set(k.trim(), v.clone());
    }
    Ok(out)
}

/// An authentication or TLS failure librdkafka reported, classified for the bridge's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityFailure {
    /// SASL authentication failed (wrong user name or password, or mechanism refused).
    Auth(String),
    /// The TLS handshake failed (an untrusted or mismatched broker certificate, a refused
    /// client certificate, a plain-text broker).
    Tls(String),
}

impl SecurityFailure {
    /// Classifies a librdkafka error (its code and text); `None` for other errors.
    pub fn classify(code: Option<rdkafka::error::RDKafkaErrorCode>, text: &str) -> Option<Self> {
        use rdkafka::error::RDKafkaErrorCode as C;
        let lower = text.to_ascii_lowercase();
        match code {
            Some(C::Authentication | C::SaslAuthenticationFailed) => {
                Some(Self::Auth(text.to_owned()))
            }
            Some(C::SSL) => Some(Self::Tls(text.to_owned())),
            _ if lower.contains("sasl authentication error")
                || lower.contains("authentication failed") =>
            {
                Some(Self::Auth(text.to_owned()))
            }
            _ if lower.contains("ssl handshake failed")
                || lower.contains("certificate verify failed") =>
            {
                Some(Self::Tls(text.to_owned()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn scram(dir: &Path) -> KafkaSecurity {
        let pw = dir.join("kafka.pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            ca_file: Some(dir.join("ca.pem")),
            verify_hostname: true,
            username: Some("icu-gw".into()),
            password_file: Some(pw),
            ..KafkaSecurity::default()
        }
    }

    #[test]
    fn default_is_plaintext_and_parses_from_toml() {
        let s = KafkaSecurity::default();
        assert_eq!(s.protocol, SecurityProtocol::Plaintext);
        assert!(s.problems().is_empty());
        assert_eq!(s.describe(), "plaintext");
        let parsed: KafkaSecurity = serde_json::from_value(serde_json::json!({
            "protocol": "sasl_ssl", "ca_file": "/etc/icu/ca.pem", "username": "gw",
            "password_env": "KAFKA_PW"
        }))
        .unwrap();
        assert!(parsed.verify_hostname);
        assert!(parsed.problems().is_empty(), "{:?}", parsed.problems());
        assert_eq!(parsed.describe(), "sasl_ssl SCRAM-SHA-512 as gw");
    }

    #[test]
    fn maps_onto_librdkafka_properties_with_the_password_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = scram(dir.path());
        let props = client_properties(&s, &BTreeMap::new()).unwrap();
        let get = |k: &str| props.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.username"), Some("icu-gw"));
        assert_eq!(get("sasl.password"), Some("s3cret"));
        assert_eq!(get("ssl.endpoint.identification.algorithm"), Some("https"));
        assert!(get("ssl.ca.location").unwrap().ends_with("ca.pem"));
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn a_password_file_others_may_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let s = scram(dir.path());
        let pw = s.password_file.clone().unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = client_properties(&s, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("readable by group or others"), "{err}");
    }

    #[test]
    fn problems_name_the_field() {
        let s = KafkaSecurity {
            protocol: SecurityProtocol::SaslPlaintext,
            sasl_mechanism: Some("PLAIN".into()),
            ..KafkaSecurity::default()
        };
        let fields: Vec<&str> = s.problems().into_iter().map(|(f, _)| f).collect();
        assert!(fields.contains(&"security.sasl_mechanism"), "{fields:?}");
        assert!(fields.contains(&"security.username"), "{fields:?}");
        assert!(fields.contains(&"security.password_file"), "{fields:?}");
        let s = KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            client_cert_file: Some("c.pem".into()),
            ..KafkaSecurity::default()
        };
        let fields: Vec<&str> = s.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["security.ca_file", "security.client_cert_file"],
            "{:?}",
            s.problems()
        );
        let s = KafkaSecurity {
            ca_file: Some("ca.pem".into()),
            ..KafkaSecurity::default()
        };
        assert_eq!(s.problems()[0].0, "security.ca_file");
    }

    #[test]
    fn pass_through_properties_may_not_override_or_hold_secrets() {
        let mut p = BTreeMap::new();
        p.insert("socket.keepalive.enable".to_owned(), "true".to_owned());
        assert!(properties_problems(&p).is_empty());
        p.insert("security.protocol".to_owned(), "plaintext".to_owned());
        p.insert("sasl.password".to_owned(), "x".to_owned());
        let problems = properties_problems(&p);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|(_, r)| r.contains("carries a secret")));
        assert!(problems
            .iter()
            .any(|(_, r)| r.contains("set by the gateway")));
    }

    #[test]
    fn classifies_auth_and_tls_errors() {
        use rdkafka::error::RDKafkaErrorCode as C;
        assert!(matches!(
            SecurityFailure::classify(Some(C::Authentication), "SASL authentication error: x"),
            Some(SecurityFailure::Auth(_))
        ));
        assert!(matches!(
            SecurityFailure::classify(
                Some(C::SSL),
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
            ),
            Some(SecurityFailure::Tls(_))
        ));
        assert_eq!(
            SecurityFailure::classify(Some(C::AllBrokersDown), "1/1 brokers are down"),
            None
        );
    }
}
