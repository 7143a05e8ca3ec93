//! Files the gateway signs and speaks TLS with: the signing key (exists, mode 600, loads) and
//! every certificate of the config (`[tls]`, `[mqtt]`, `[kafka.security]`): parses, how many
//! days until it expires, and whether its private key belongs to it.
//!
//! Expiry: an expired certificate is a FAIL; one expiring within `tls.expiry_warning_days` is
//! OK with a note to renew it (the running gateway raises `gateway:tls-cert-expiry` for its own
//! certificate then), so a probe in an install script does not fail a month ahead.

use std::path::{Path, PathBuf};

use super::check::Check;
use crate::config::Config;

/// The signing key of `[signing] key_file`.
pub fn signing_key(cfg: &Config) -> Check {
    let path = &cfg.key_file;
    let what = format!("signing key {}", path.display());
    if !path.exists() {
        let fix = format!("run `icu-gateway keygen --out {}`", path.display());
        return if cfg.kafka.is_some() {
            Check::fail(what, "does not exist: nothing can be forwarded signed", fix)
        } else {
            Check::ok_note(
                what,
                "does not exist yet: the gateway makes it at its first start",
            )
        };
    }
    if let Some(why) = crate::tls::too_open(path) {
        return Check::fail(what, why, format!("run `chmod 600 {}`", path.display()));
    }
    match icu_cloud_bridge::signing::GatewayKey::load(path) {
        Ok(key) => Check::ok_note(what, format!("key id {}", key.key_id())),
        Err(e) => Check::fail(
            what,
            e.to_string(),
            format!(
                "restore the key from its backup, or make a new one with `icu-gateway keygen \
                 --rotate --out {}` and give its public key to the central data team",
                path.display()
            ),
        ),
    }
}

/// A certificate named by the config: the field, the file, its private key if any.
struct CertFile {
    field: &'static str,
    path: PathBuf,
    key: Option<PathBuf>,
}

/// Every certificate the config names.
fn cert_files(cfg: &Config) -> Vec<CertFile> {
    let mut out = Vec::new();
    let mut add = |field, path: Option<&PathBuf>, key: Option<&PathBuf>| {
        if let Some(p) = path {
            out.push(CertFile {
                field,
                path: p.clone(),
                key: key.cloned(),
            });
        }
    };
    add(
        "tls.cert_file",
        cfg.tls.cert_file.as_ref(),
        cfg.tls.key_file.as_ref(),
    );
    add("tls.ca_file", cfg.tls.ca_file.as_ref(), None);
    if let Some(m) = &cfg.mqtt {
        add("mqtt.ca_file", m.ca_file.as_ref(), None);
        add(
            "mqtt.client_cert_file",
            m.client_cert_file.as_ref(),
            m.client_key_file.as_ref(),
        );
    }
    if let Some(k) = &cfg.kafka {
        let s = &k.security;
        add("kafka.security.ca_file", s.ca_file.as_ref(), None);
        add(
            "kafka.security.client_cert_file",
            s.client_cert_file.as_ref(),
            s.client_key_file.as_ref(),
        );
    }
    out
}

/// One line per certificate of the config (none when it names none).
pub fn certificates(cfg: &Config) -> Vec<Check> {
    let warn_days = i64::from(cfg.tls.expiry_warning_days);
    cert_files(cfg)
        .iter()
        .map(|c| certificate(c, warn_days))
        .collect()
}

fn certificate(c: &CertFile, warn_days: i64) -> Check {
    let what = format!("certificate {} ({})", c.path.display(), c.field);
    let left = match crate::tls::expiry(&c.path) {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                what,
                format!("does not load: {}", e.message),
                format!(
                    "put the PEM certificate in {} or fix {}",
                    c.path.display(),
                    c.field
                ),
            )
        }
    };
    let days = left.div_euclid(86_400);
    if left < 0 {
        return Check::fail(
            what,
            format!("expired {} day(s) ago", -days),
            "renew it (peers refuse an expired certificate) and put the new one in its place",
        );
    }
    if let Some(key) = &c.key {
        if let Some(why) = key_mismatch(&c.path, key) {
            return Check::fail(
                what,
                why,
                format!(
                    "give the private key of this certificate in {}",
                    key_field(c.field)
                ),
            );
        }
    }
    if days < warn_days {
        Check::ok_note(
            what,
            format!("expires in {days} day(s), within tls.expiry_warning_days: renew it soon"),
        )
    } else {
        Check::ok_note(what, format!("expires in {days} days"))
    }
}

fn key_field(cert_field: &str) -> String {
    cert_field.replace("cert_file", "key_file")
}

/// Why `key` is not the private key of `cert` (rustls refuses a pair whose keys differ).
fn key_mismatch(cert: &Path, key: &Path) -> Option<String> {
    crate::tls::server_config(cert, key, None, crate::tls::Mode::Off)
        .err()
        .map(|e| {
            format!(
                "its private key {} does not fit: {}",
                key.display(),
                e.message
            )
        })
}
