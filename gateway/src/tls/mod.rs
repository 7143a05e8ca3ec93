//! One TLS setup for the gateway (`[tls]`): its certificate chain and key, the CA bundle it
//! trusts for its peers, and per interface whether TLS is `off`, `optional` or `required`.
//! rustls with the `ring` provider; no OpenSSL in the gateway's own code.
//!
//! - [`TlsConfig`]: the section, its defaults and rules.
//! - [`Reloadable`]: the server configuration the listeners use, rebuilt when a certificate,
//!   key or CA file changes (checked every `reload_check_s`) or on SIGHUP. A handshake takes
//!   the configuration in force when it starts; connections already open are never dropped. A
//!   file that does not load keeps the old configuration (logged).
//! - [`identity_of`]: the names a peer certificate carries (subject CN, DNS and URI SANs), to
//!   which the MLLP listener binds a device's claimed identity.
//! - [`expiry`]: days until the gateway's certificate expires, for `/metrics` and the
//!   `gateway:tls-cert-expiry` technical alarm (`expiry_warning_days` before).
//! - [`pki`]: `icu-gateway cert`, a small test PKI for demos and tests.

pub mod pki;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::domain::FieldProblem;

/// Whether an interface speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plain text only (the interface is shown as plain text in `/api/status`).
    #[default]
    Off,
    /// Both: the listener tells a TLS ClientHello from an MLLP start block by the first byte.
    Optional,
    /// TLS only: a plain-text client is refused.
    Required,
}

impl Mode {
    pub fn is_on(self) -> bool {
        self != Mode::Off
    }
}

/// `[tls]`. Relative paths are inside `data_dir`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The gateway's certificate chain (PEM, leaf first).
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8, SEC1 or PKCS#1); mode 0600.
    pub key_file: Option<PathBuf>,
    /// The CA bundle (PEM) trusted for peers: device and ADT client certificates, the alarm
    /// manager's server certificate.
    pub ca_file: Option<PathBuf>,
    /// The MLLP listener (monitors, ADT).
    pub mllp: Mode,
    /// Client certificates on the MLLP listener: `required` (mutual TLS; a device's certificate
    /// must name it), `optional` (checked when presented) or `off`.
    pub mllp_client_certs: Mode,
    /// The page and API (HTTPS; HSTS and a Secure cookie when on). `off` or `required`.
    pub http: Mode,
    /// The PCD-04 alarm output to the alarm manager. `off` or `required`.
    pub alarm_manager: Mode,
    /// Days before the gateway certificate's expiry at which the technical alarm is raised.
    pub expiry_warning_days: u32,
    /// How often the certificate files are checked for changes (seconds).
    pub reload_check_s: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            ca_file: None,
            mllp: Mode::Off,
            mllp_client_certs: Mode::Off,
            http: Mode::Off,
            alarm_manager: Mode::Off,
            expiry_warning_days: 30,
            reload_check_s: 10,
        }
    }
}

impl TlsConfig {
    /// Paths made absolute against `data_dir`.
    pub fn resolved(&self, data_dir: &Path) -> TlsConfig {
        let abs = |p: &Option<PathBuf>| {
            p.as_ref().map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    data_dir.join(p)
                }
            })
        };
        TlsConfig {
            cert_file: abs(&self.cert_file),
            key_file: abs(&self.key_file),
            ca_file: abs(&self.ca_file),
            ..self.clone()
        }
    }

    /// Whether any interface uses TLS.
    pub fn any(&self) -> bool {
        self.mllp.is_on() || self.http.is_on() || self.alarm_manager.is_on()
    }

    /// The section's rules, under the file's names (`tls.cert_file`, ...).
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: String| {
            out.push(FieldProblem {
                field: format!("tls.{field}"),
                message,
            })
        };
        let serves = self.mllp.is_on() || self.http.is_on();
        if serves {
            for (field, p) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
                if p.is_none() {
                    bad(field, "is needed when tls.mllp or tls.http is on".into());
                }
            }
        }
        if (self.mllp_client_certs.is_on() || self.alarm_manager.is_on()) && self.ca_file.is_none()
        {
            bad(
                "ca_file",
                "is needed to check client certificates (tls.mllp_client_certs) or the alarm manager's certificate (tls.alarm_manager)".into(),
            );
        }
        if self.mllp_client_certs.is_on() && !self.mllp.is_on() {
            bad("mllp_client_certs", "needs tls.mllp on".into());
        }
        if self.http == Mode::Optional {
            bad(
                "http",
                "is off or required (a page served both ways would leak its session cookie)".into(),
            );
        }
        if self.alarm_manager == Mode::Optional {
            bad("alarm_manager", "is off or required".into());
        }
        for (field, p) in [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_file", &self.ca_file),
        ] {
            if let Some(p) = p {
                if !p.exists() {
                    bad(field, format!("{} does not exist", p.display()));
                }
            }
        }
        if let Some(k) = &self.key_file {
            if let Some(why) = crate::tls::too_open(k) {
                bad("key_file", why);
            }
        }
        if !(1..=365).contains(&self.expiry_warning_days) {
            bad("expiry_warning_days", "must be within 1..=365".into());
        }
        if !(1..=3600).contains(&self.reload_check_s) {
            bad("reload_check_s", "must be within 1..=3600 seconds".into());
        }
        out
    }
}

/// Why a secret file may not be used: readable or writable by group or others.
pub fn too_open(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

/// Why TLS material did not load.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {message}")]
pub struct TlsError {
    pub what: &'static str,
    pub path: String,
    pub message: String,
}

fn err(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The `ring` provider: rustls now prefers aws-lc-rs (which adds post-quantum key exchange) and
/// marks this one deprecated, but aws-lc-rs builds a large C library with cmake on every fresh
/// machine; ring's classical suites are what the devices and brokers of an ICU speak today.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err("certificate file", path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("certificate file", path, e))?;
    if certs.is_empty() {
        return Err(err("certificate file", path, "holds no certificate"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| err("key file", path, e))
}

/// The trust store of a CA bundle.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (ok, _bad) = roots.add_parsable_certificates(load_certs(path)?);
    if ok == 0 {
        return Err(err("CA file", path, "holds no usable CA certificate"));
    }
    Ok(roots)
}

/// A server configuration from the gateway's certificate and key; client certificates checked
/// against `ca` (`client_certs` optional or required) or not asked for.
pub fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    client_certs: Mode,
) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS setup for", cert, e))?;
    let builder = match (client_certs, ca) {
        (Mode::Off, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(ca)) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if mode == Mode::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| err("client verifier from", ca, e))?,
            )
        }
    };
    builder
        .with_single_cert(certs, key_der)
        .map_err(|e| err("certificate and key", cert, e))
}

/// A client configuration trusting `ca`, presenting `cert`/`key` when given (mutual TLS).
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS setup for", ca, e))?
        .with_root_certificates(roots);
    match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| err("client certificate", cert, e)),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// The names a certificate carries: subject CN, DNS and URI SANs (lower-cased), and its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    pub names: Vec<String>,
    /// Seconds since the epoch.
    pub not_after: i64,
}

impl PeerIdentity {
    /// Whether the certificate names `id` (a device id or EUI-64, compared case-insensitively;
    /// a URI SAN such as `urn:icu:device:<id>` names its last component).
    pub fn names_any(&self, ids: &[&str]) -> bool {
        self.names.iter().any(|n| {
            let last = n.rsplit(':').next().unwrap_or(n);
            ids.iter()
                .filter(|id| !id.is_empty())
                .any(|id| n.eq_ignore_ascii_case(id) || last.eq_ignore_ascii_case(id))
        })
    }

    pub fn describe(&self) -> String {
        self.names.join(", ")
    }
}

/// The identity of a DER certificate.
pub fn identity_of(der: &[u8]) -> Option<PeerIdentity> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let mut names = Vec::new();
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_ascii_lowercase());
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::URI(u) => names.push(u.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    names.dedup();
    Some(PeerIdentity {
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Seconds until the first certificate of a PEM file expires (negative: expired).
pub fn expiry(cert: &Path) -> Result<i64, TlsError> {
    let certs = load_certs(cert)?;
    let id = identity_of(&certs[0])
        .ok_or_else(|| err("certificate file", cert, "does not parse as X.509"))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Ok(id.not_after - now)
}

/// The certificate of whatever a [`Reloadable`] holds now (see [`Reloadable::following`]).
struct Follow(Arc<Reloadable>);

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("files", &self.0.files)
            .finish()
    }
}

impl rustls::server::ResolvesServerCert for Follow {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.current().cert_resolver.resolve(hello)
    }
}

/// A server configuration that follows its files.
pub struct Reloadable {
    current: RwLock<Arc<ServerConfig>>,
    build: Box<dyn Fn() -> Result<ServerConfig, TlsError> + Send + Sync>,
    files: Vec<PathBuf>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

fn stamps(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

impl Reloadable {
    /// Builds the first configuration (an error here stops the start).
    pub fn new(
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<ServerConfig, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let first = build()?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
            stamps: RwLock::new(stamps(&files)),
            build: Box::new(build),
            files,
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds when a file changed (or always, with `force`); Ok(true) when it did.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        if !force && *self.stamps.read().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        *self.stamps.write().unwrap_or_else(|p| p.into_inner()) = now;
        let next = (self.build)()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(true)
    }

    /// A server configuration for a listener that cannot swap its configuration itself (the
    /// page's actix-web server): this one's settings, with a certificate resolver that asks
    /// this [`Reloadable`]'s current configuration at every handshake, so a reload reaches new
    /// connections while open ones keep theirs.
    pub fn following(self: &Arc<Self>) -> ServerConfig {
        let mut cfg = (*self.current()).clone();
        cfg.cert_resolver = Arc::new(Follow(self.clone()));
        cfg
    }

    /// Checks the files every `every` and on SIGHUP, for as long as the runtime runs.
    pub fn watch(self: &Arc<Self>, every: std::time::Duration, what: &'static str) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                // File reads and the rebuild run on the blocking pool, not the listener's thread.
                let me2 = me.clone();
                let reloaded = tokio::task::spawn_blocking(move || me2.reload(force))
                    .await
                    .unwrap_or(Ok(false));
                match reloaded {
                    Ok(true) => tracing::info!(
                        what,
                        "TLS certificate files reloaded; open connections keep theirs"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(what, error = %e, "TLS certificate files changed but do not load; the previous ones stay in force")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
