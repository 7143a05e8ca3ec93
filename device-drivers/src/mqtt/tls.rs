//! TLS and credentials of an MQTT connection: the rustls client configuration (ring provider,
//! the CA bundle from a PEM file, an optional client certificate and key), the secret-file rules
//! and the reading of a password from a file or the environment.
//!
//! Shared by the gateway's subscriber ([`super::mqtt_options`]) and the simulator's pumps, so
//! both speak to the broker the same way. Guarantees: no certificate store of the system is
//! trusted (only the configured CA bundle); a secret file (password, private key) that group or
//! others may read is refused, with the `chmod 600` that fixes it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A setting that cannot be used as it is: which one (`ca_file`, `password_env`, ...) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mqtt.{field}: {message}")]
pub struct MqttSetupError {
    pub field: &'static str,
    pub message: String,
}

impl MqttSetupError {
    fn new(field: &'static str, message: impl fmt::Display) -> Self {
        Self {
            field,
            message: message.to_string(),
        }
    }
}

/// The rustls client configuration trusting only the CA certificates in `ca_file`, presenting
/// the certificate chain of `client_cert_file` with the key of `client_key_file` when given
/// (mutual TLS). TLS 1.2 and 1.3, ring provider.
pub fn client_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, MqttSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = read_certs("ca_file", ca_file)?;
    for ca in cas {
        roots.add(ca).map_err(|e| {
            MqttSetupError::new(
                "ca_file",
                format!(
                    "{}: a certificate is not usable as a CA: {e}",
                    ca_file.display()
                ),
            )
        })?;
    }
    // ring, not rustls' default aws-lc-rs: no C/cmake build of aws-lc on the gateway's build
    // machines. rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange
    // (X25519MLKEM768); the classic groups stay secure today. Revisit with the gateway-wide
    // `[tls]` section (issue 14, point 1).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttSetupError::new("tls", e))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = read_certs("client_cert_file", cert_file)?;
            check_secret_file(key_file).map_err(|m| MqttSetupError::new("client_key_file", m))?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
                MqttSetupError::new(
                    "client_key_file",
                    format!("{}: no PEM private key read: {e}", key_file.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                MqttSetupError::new(
                    "client_key_file",
                    format!(
                        "{} does not fit the certificate of {}: {e}",
                        key_file.display(),
                        cert_file.display()
                    ),
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

fn read_certs(
    field: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, MqttSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| MqttSetupError::new(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(MqttSetupError::new(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Refuses a secret file (password, private key) that group or others may read or write, with
/// the command that fixes it; also a file that does not exist.
pub fn check_secret_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is a secret but group or others may access it (mode {mode:o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// The password in the first line of `path` (without its line end), after the secret-file
/// check. `field` names the setting in the errors.
pub fn read_password_file(field: &'static str, path: &Path) -> Result<String, MqttSetupError> {
    check_secret_file(path).map_err(|m| MqttSetupError::new(field, m))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| MqttSetupError::new(field, format!("{}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(MqttSetupError::new(
            field,
            format!("{}: the first line (the password) is empty", path.display()),
        ));
    }
    Ok(line.to_owned())
}

/// The password in environment variable `name`.
pub fn read_password_env(field: &'static str, name: &str) -> Result<String, MqttSetupError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(MqttSetupError::new(
            field,
            format!("environment variable {name} is empty"),
        )),
        Err(_) => Err(MqttSetupError::new(
            field,
            format!("environment variable {name} is not set (or not UTF-8)"),
        )),
    }
}

/// Why a connection attempt failed, in the terms a biomedical engineer can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The TLS handshake failed (certificate not trusted, expired, wrong name, refused).
    Tls,
    /// The broker refused the username or password (or the client is not authorised).
    Auth,
    /// The broker refused the connection for another reason.
    Refused,
    /// Network: no broker, connection dropped, timeout.
    Network,
}

impl FailureKind {
    /// The `state` shown in `/api/status` after this failure.
    pub fn state(self) -> &'static str {
        match self {
            FailureKind::Tls => "tls_failed",
            FailureKind::Auth => "auth_failed",
            FailureKind::Refused => "refused",
            FailureKind::Network => "disconnected",
        }
    }
}

/// Classifies a rumqttc connection error and says which setting (or which side) to fix.
pub fn explain(error: &rumqttc::ConnectionError, host: &str) -> (FailureKind, String) {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    match error {
        E::ConnectionRefused(code @ (Code::BadUserNamePassword | Code::NotAuthorized)) => (
            FailureKind::Auth,
            format!(
                "the broker refused the credentials ({code:?}): check mqtt.username and the \
                 password in mqtt.password_file or mqtt.password_env (and the broker's password file)"
            ),
        ),
        E::ConnectionRefused(code) => (
            FailureKind::Refused,
            format!("the broker refused the connection ({code:?}): check mqtt.client_id and the broker"),
        ),
        other => match find_rustls_error(other) {
            Some(tls) => (FailureKind::Tls, explain_tls(tls, host)),
            None => match other {
                E::Tls(e) => (
                    FailureKind::Tls,
                    format!("TLS with the broker failed: {e}; check mqtt.ca_file, mqtt.broker_host"),
                ),
                e => (FailureKind::Network, format!("{e}")),
            },
        },
    }
}

fn explain_tls(e: &rustls::Error, host: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as R};
    match e {
        R::InvalidCertificate(C::UnknownIssuer) => format!(
            "TLS: the broker's certificate is not signed by a CA in mqtt.ca_file (unknown issuer): \
             set mqtt.ca_file to the CA bundle that signed the broker's certificate ({e})"
        ),
        R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => format!(
            "TLS: the broker's certificate has expired: renew the broker's certificate ({e})"
        ),
        R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => format!(
            "TLS: the broker's certificate is not valid yet: check the clocks and the broker's certificate ({e})"
        ),
        R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
            "TLS: the broker's certificate does not name '{host}': set mqtt.broker_host to a name \
             the certificate holds ({e})"
        ),
        R::AlertReceived(
            a @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::HandshakeFailure),
        ) => format!(
            "TLS: the broker refused the handshake ({a:?}): it may require a client certificate it \
             trusts: check mqtt.client_cert_file and mqtt.client_key_file ({e})"
        ),
        e => format!("TLS with the broker failed: {e}; check mqtt.ca_file and mqtt.broker_host"),
    }
}

/// The rustls error inside a rumqttc error, if any (a handshake error arrives as an I/O error
/// wrapping it, during the TLS connect or, for TLS 1.3 client certificates, at the first read).
fn find_rustls_error(error: &rumqttc::ConnectionError) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(r);
            }
        }
        source = e.source();
    }
    None
}
