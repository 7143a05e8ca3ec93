//! The signing keys of a running gateway: loaded at start with a scheduled rotation, if any,
//! then watched, so `icu-gateway keygen --rotate [--from TIME]` takes effect without a restart.
//!
//! Every two seconds the key files are re-read when they changed (a key readable by others is
//! refused, as at start, and the keys in use stay), and when the key that signs changes (its
//! time came, or the key file was replaced) the change is logged and written to the audit
//! trail (`key_rotated`, old and new key id). The bridge and the trail pick the key per record
//! ([`SigningKeys::at`]), so records name the key that signed them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use icu_cloud_bridge::signing::{next_paths, GatewayKey, SigningKeys};

use crate::audit::{Action, AuditEntry, AuditLog, TargetKind};

/// The key files' schedule when `key` is the key file's key; else `key` alone (a caller that
/// brought its own key).
pub(super) fn signing_keys(path: &Path, key: GatewayKey) -> anyhow::Result<Arc<SigningKeys>> {
    if !path.exists() {
        return Ok(Arc::new(SigningKeys::fixed(key)));
    }
    refuse_open_next(path)?;
    let keys = SigningKeys::load(path)?;
    if keys.all()[0].key_id() != key.key_id() {
        return Ok(Arc::new(SigningKeys::fixed(key)));
    }
    if let Some((id, from)) = keys.scheduled() {
        tracing::info!(key_id = %id, from = %chrono::DateTime::<chrono::Utc>::from(from).to_rfc3339(),
            "a signing key rotation is scheduled");
    }
    Ok(Arc::new(keys))
}

/// A scheduled private key readable by others is refused like the key itself.
fn refuse_open_next(path: &Path) -> anyhow::Result<()> {
    let next = next_paths(path).key;
    if next.exists() {
        if let Some(why) = crate::tls::too_open(&next) {
            anyhow::bail!("refusing the scheduled signing key: {why}");
        }
    }
    Ok(())
}

/// Watches the key files for as long as the actor system runs.
pub(super) fn watch(keys: Arc<SigningKeys>, audit: Arc<AuditLog>) {
    if keys.path().is_none() {
        return;
    }
    actix::spawn(async move {
        let mut signing = keys.active().key_id().to_owned();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let k = keys.clone();
            let reloaded = tokio::task::spawn_blocking(move || {
                let path = k.path().expect("watched keys have a path");
                refuse_open_next(path)?;
                Ok::<_, anyhow::Error>(k.reload()?)
            })
            .await;
            match reloaded {
                Ok(Ok(true)) => match keys.scheduled() {
                    Some((id, from)) => tracing::info!(key_id = %id,
                        from = %chrono::DateTime::<chrono::Utc>::from(from).to_rfc3339(),
                        "signing key files changed: a rotation is scheduled"),
                    None => tracing::info!("signing key files changed"),
                },
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %format!("{e:#}"), "the changed signing key files cannot be used; signing goes on with the keys in use")
                }
                Err(e) => tracing::error!(error = %e, "reading the signing key files failed"),
            }
            let now = keys.active().key_id().to_owned();
            if now != signing {
                tracing::warn!(old_key_id = %signing, key_id = %now,
                    "signing with the new key from now on (rotation): give the key directory to the central data team");
                let entry = AuditEntry::new(Action::KeyRotated)
                    .target(TargetKind::Key, now.clone())
                    .values(Some(signing.clone()), Some(now.clone()));
                let log = audit.clone();
                let written = tokio::task::spawn_blocking(move || log.append(entry)).await;
                if !matches!(written, Ok(Ok(_))) {
                    tracing::error!(key_id = %now, "the key rotation could not be written to the audit trail");
                }
                signing = now;
            }
        }
    });
}
