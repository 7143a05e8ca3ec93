//! Rotating the gateway's signing key, and the keys a running gateway signs with.
//!
//! Owns: [`rotate`] (`icu-gateway keygen --rotate [--from TIME]`), the files of a scheduled
//! rotation ([`next_paths`]), [`parse_from`], and [`SigningKeys`]: the current key and the
//! scheduled next one, re-read from their files while the gateway runs.
//!
//! The files, for `--out gateway.key`:
//! - `gateway.key` / `gateway.pub`: the key in use;
//! - `gateway.key.next` / `gateway.key.next.pub` / `gateway.key.next.from`: a key scheduled by
//!   `--rotate --from TIME`, and that time (RFC 3339). The next `--rotate` promotes it to
//!   `gateway.key` once its time has passed;
//! - `keys/gateway.<key id>.pub`: every public key that ever signed, never deleted;
//!   `keys/gateway.<key id>.key.retired`: a replaced private key (mode 600), until the site
//!   deletes it.
//!
//! Guarantees:
//! - no public key is deleted: a topic spanning rotations verifies with the key directory;
//! - a running gateway signs with the new key from its `from` time without a restart
//!   ([`SigningKeys::reload`] sees the files change, [`SigningKeys::at`] picks by time);
//! - a second rotation while one is still pending is refused, naming the pending key and time.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::{write_new_file, GatewayKey};
use crate::error::BridgeError;
use chrono::{DateTime, SecondsFormat, Utc};

/// The files of a scheduled rotation beside the private key `P`: `P.next`, `P.next.pub`,
/// `P.next.from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextPaths {
    /// The next private key (mode 600).
    pub key: PathBuf,
    /// Its public key.
    pub public: PathBuf,
    /// When it starts signing (RFC 3339, one line).
    pub from: PathBuf,
}

/// Where a rotation scheduled for the private key `private` keeps its files.
pub fn next_paths(private: &Path) -> NextPaths {
    let with = |suffix: &str| {
        let mut name = private.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    NextPaths {
        key: with(".next"),
        public: with(".next.pub"),
        from: with(".next.from"),
    }
}

/// Reads `--from`: `now`, `+90s` / `+15m` / `+2h` from `now`, or an RFC 3339 time.
pub fn parse_from(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(rel) = text.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.len().saturating_sub(1));
        let n: u64 = n
            .parse()
            .map_err(|_| format!("{text:?}: expected +N followed by s, m or h"))?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(format!("{text:?}: expected +N followed by s, m or h")),
        };
        return Ok(now + std::time::Duration::from_secs(secs));
    }
    DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|e| format!("{text:?} is not now, +N(s|m|h) or an RFC 3339 time: {e}"))
}

fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn read_from(path: &Path) -> Result<SystemTime, BridgeError> {
    let text = fs::read_to_string(path).map_err(|source| BridgeError::KeyIo {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    DateTime::parse_from_rfc3339(text.trim())
        .map(SystemTime::from)
        .map_err(|e| BridgeError::KeyRotation {
            path: path.to_path_buf(),
            reason: format!("the start time {:?} is not RFC 3339: {e}", text.trim()),
        })
}

/// What [`rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// A scheduled key whose time had passed, promoted to the key file first.
    pub promoted: Option<String>,
    /// Key id of the key that is replaced.
    pub old_key_id: String,
    /// Where its public key is kept (`<dir>/<stem>.<old key id>.pub`).
    pub old_public: PathBuf,
    /// Where the old private key was moved (`<dir>/<stem>.<old key id>.key.retired`, mode 600),
    /// for an immediate rotation; a scheduled one leaves it in place until it is promoted.
    pub old_private: Option<PathBuf>,
    /// Key id of the new key.
    pub new_key_id: String,
    /// Where the new private key is: the key file, or the `.next` file when scheduled.
    pub new_private: PathBuf,
    /// From when the new key signs.
    pub from: SystemTime,
    /// Whether the new key waits for `from` (written as the `.next` files).
    pub scheduled: bool,
}

impl Rotation {
    /// `from` as RFC 3339 (UTC, seconds).
    pub fn from_text(&self) -> String {
        rfc3339(self.from)
    }
}

struct KeyFiles<'a> {
    private: &'a Path,
    public: &'a Path,
    key_dir: &'a Path,
    stem: String,
}

impl KeyFiles<'_> {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BridgeError {
        let path = path.to_path_buf();
        move |source| BridgeError::KeyIo {
            action,
            path,
            source,
        }
    }

    /// Keeps `key`'s public key in the key directory (never replaced or deleted).
    fn keep_public(&self, key: &GatewayKey) -> Result<PathBuf, BridgeError> {
        let path = self
            .key_dir
            .join(format!("{}.{}.pub", self.stem, key.key_id()));
        if !path.exists() {
            write_new_file(&path, key.public_pem(&path)?.as_bytes(), 0o644)?;
        }
        Ok(path)
    }

    /// Moves the key file's private key into the key directory as `.key.retired` and removes
    /// its public key file; returns where the private key went.
    fn retire(&self, key: &GatewayKey) -> Result<PathBuf, BridgeError> {
        let retired = self
            .key_dir
            .join(format!("{}.{}.key.retired", self.stem, key.key_id()));
        fs::rename(self.private, &retired).map_err(Self::io("write", &retired))?;
        if self.public.exists() {
            fs::remove_file(self.public).map_err(Self::io("write", self.public))?;
        }
        Ok(retired)
    }
}

/// Rotates the key pair at `private` / `public`: a new key signs from `from` (default: now).
///
/// - A scheduled key (`.next`) whose time has passed is first promoted to the key file; one
///   whose time has not come is an error (one rotation at a time).
/// - Immediate (`from` not after `now`): the new pair replaces the key file, the old private key
///   goes to the key directory as `.key.retired`.
/// - Scheduled (`from` after `now`): the new pair is written as the `.next` files with `from`.
///
/// Every public key involved is kept in `key_dir` as `<stem>.<key id>.pub`.
pub fn rotate(
    private: &Path,
    public: &Path,
    key_dir: &Path,
    from: Option<SystemTime>,
    now: SystemTime,
) -> Result<Rotation, BridgeError> {
    let files = KeyFiles {
        private,
        public,
        key_dir,
        stem: private
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "gateway".into()),
    };
    fs::create_dir_all(key_dir).map_err(KeyFiles::io("write", key_dir))?;
    let next = next_paths(private);
    let mut promoted = None;
    if next.key.exists() {
        let due = read_from(&next.from)?;
        let pending = GatewayKey::load(&next.key)?;
        if due > now {
            return Err(BridgeError::KeyRotation {
                path: private.to_path_buf(),
                reason: format!(
                    "key {} is already scheduled to sign from {}; rotate again after that time \
                     (or delete {}, {} and {} to cancel it)",
                    pending.key_id(),
                    rfc3339(due),
                    next.key.display(),
                    next.public.display(),
                    next.from.display()
                ),
            });
        }
        let current = GatewayKey::load(private)?;
        files.keep_public(&current)?;
        files.keep_public(&pending)?;
        files.retire(&current)?;
        fs::rename(&next.key, private).map_err(KeyFiles::io("write", private))?;
        fs::rename(&next.public, public).map_err(KeyFiles::io("write", public))?;
        fs::remove_file(&next.from).map_err(KeyFiles::io("write", &next.from))?;
        promoted = Some(pending.key_id().to_owned());
    }
    let old = GatewayKey::load(private)?;
    let old_public = files.keep_public(&old)?;
    let new = GatewayKey::generate();
    let from = from.unwrap_or(now);
    let scheduled = from > now;
    let (old_private, new_private) = if scheduled {
        new.write(&next.key, &next.public)?;
        let text = format!("{}\n", rfc3339(from));
        write_new_file(&next.from, text.as_bytes(), 0o644)?;
        (None, next.key.clone())
    } else {
        let retired = files.retire(&old)?;
        new.write(private, public)?;
        (Some(retired), private.to_path_buf())
    };
    files.keep_public(&new)?;
    Ok(Rotation {
        promoted,
        old_key_id: old.key_id().to_owned(),
        old_public,
        old_private,
        new_key_id: new.key_id().to_owned(),
        new_private,
        from,
        scheduled,
    })
}

/// The modification time, size and (on Unix) inode of a file, or none: what
/// [`SigningKeys::reload`] compares (a key file replaced by a rename has a new inode even when
/// time and size look the same).
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some((m.modified().ok()?, m.len(), inode))
}

struct State {
    current: Arc<GatewayKey>,
    next: Option<(SystemTime, Arc<GatewayKey>)>,
    stamps: [Stamp; 3],
}

/// The keys a running gateway signs with: the key file's key and, when a rotation is
/// scheduled, the next key with its start time. Shared by the bridge and the audit trail.
pub struct SigningKeys {
    path: Option<PathBuf>,
    state: RwLock<State>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("SigningKeys")
            .field("path", &self.path)
            .field("current", &s.current.key_id())
            .field(
                "next",
                &s.next.as_ref().map(|(t, k)| (rfc3339(*t), k.key_id())),
            )
            .finish()
    }
}

impl From<GatewayKey> for SigningKeys {
    fn from(key: GatewayKey) -> Self {
        Self::fixed(key)
    }
}

impl From<GatewayKey> for Arc<SigningKeys> {
    fn from(key: GatewayKey) -> Self {
        Arc::new(SigningKeys::fixed(key))
    }
}

impl SigningKeys {
    /// One key, no files watched (tests, tools).
    pub fn fixed(key: GatewayKey) -> Self {
        Self {
            path: None,
            state: RwLock::new(State {
                current: Arc::new(key),
                next: None,
                stamps: [None, None, None],
            }),
        }
    }

    /// The key file `private` (already checked by the caller) and its scheduled next key, if any.
    pub fn load(private: &Path) -> Result<Self, BridgeError> {
        let (state, _) = Self::read_files(private)?;
        Ok(Self {
            path: Some(private.to_path_buf()),
            state: RwLock::new(state),
        })
    }

    fn stamps_of(private: &Path) -> [Stamp; 3] {
        let next = next_paths(private);
        [stamp(private), stamp(&next.key), stamp(&next.from)]
    }

    fn read_files(private: &Path) -> Result<(State, [Stamp; 3]), BridgeError> {
        let stamps = Self::stamps_of(private);
        let current = Arc::new(GatewayKey::load(private)?);
        let paths = next_paths(private);
        let next = if paths.key.exists() {
            Some((
                read_from(&paths.from)?,
                Arc::new(GatewayKey::load(&paths.key)?),
            ))
        } else {
            None
        };
        Ok((
            State {
                current,
                next,
                stamps,
            },
            stamps,
        ))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key file this was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the files when one changed (size or time). `Ok(true)` when they were re-read;
    /// on an error the keys in use stay as they were.
    pub fn reload(&self) -> Result<bool, BridgeError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        if Self::stamps_of(path) == self.read().stamps {
            return Ok(false);
        }
        let (state, _) = Self::read_files(path)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
        Ok(true)
    }

    /// The key that signs at `t`: the next key from its start time, else the current one.
    pub fn at(&self, t: SystemTime) -> Arc<GatewayKey> {
        let s = self.read();
        match &s.next {
            Some((from, key)) if t >= *from => key.clone(),
            _ => s.current.clone(),
        }
    }

    /// The key that signs now.
    pub fn active(&self) -> Arc<GatewayKey> {
        self.at(SystemTime::now())
    }

    /// The scheduled key's id and start time, while one is scheduled.
    pub fn scheduled(&self) -> Option<(String, SystemTime)> {
        self.read()
            .next
            .as_ref()
            .map(|(t, k)| (k.key_id().to_owned(), *t))
    }

    /// Every key held (current, then next): what a local verifier accepts.
    pub fn all(&self) -> Vec<Arc<GatewayKey>> {
        let s = self.read();
        std::iter::once(s.current.clone())
            .chain(s.next.as_ref().map(|(_, k)| k.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{key_id_of, load_public_key, KeyRing};
    use std::time::Duration;

    fn pair(dir: &Path) -> (PathBuf, PathBuf, GatewayKey) {
        let (private, public) = (dir.join("gateway.key"), dir.join("gateway.pub"));
        let key = GatewayKey::generate();
        key.write(&private, &public).unwrap();
        (private, public, key)
    }

    #[test]
    fn immediate_rotation_keeps_every_public_key_in_the_key_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, first) = pair(dir.path());
        let keys = dir.path().join("keys");
        let now = SystemTime::now();
        let r1 = rotate(&private, &public, &keys, None, now).unwrap();
        assert!(!r1.scheduled && r1.promoted.is_none());
        assert_eq!(r1.old_key_id, first.key_id());
        let second = GatewayKey::load(&private).unwrap();
        assert_eq!(second.key_id(), r1.new_key_id);
        assert_ne!(r1.new_key_id, r1.old_key_id);
        assert_eq!(key_id_of(&load_public_key(&public).unwrap()), r1.new_key_id);
        let r2 = rotate(&private, &public, &keys, None, now).unwrap();
        assert_eq!(r2.old_key_id, r1.new_key_id);
        let ring = KeyRing::load_dir(&keys).unwrap();
        let ids: Vec<&str> = ring.ids().collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        for id in [&r1.old_key_id, &r1.new_key_id, &r2.new_key_id] {
            assert!(ring.get(id).is_some(), "{id} in {ids:?}");
        }
        assert!(r1.old_private.unwrap().exists() && r2.old_private.unwrap().exists());
    }

    #[test]
    fn a_scheduled_key_signs_from_its_time_and_is_promoted_by_the_next_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, first) = pair(dir.path());
        let keys_dir = dir.path().join("keys");
        let now = SystemTime::now();
        // Whole seconds: the `.next.from` file keeps seconds.
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs + 60);
        let keys = SigningKeys::load(&private).unwrap();
        assert_eq!(keys.at(at).key_id(), first.key_id());

        let r = rotate(&private, &public, &keys_dir, Some(at), now).unwrap();
        assert!(r.scheduled && r.old_private.is_none());
        assert_eq!(r.new_private, next_paths(&private).key);
        assert_eq!(GatewayKey::load(&private).unwrap().key_id(), first.key_id());
        assert!(keys.reload().unwrap(), "the new files are seen");
        assert!(!keys.reload().unwrap(), "and read once");
        assert_eq!(
            keys.at(now).key_id(),
            first.key_id(),
            "old key until `from`"
        );
        assert_eq!(keys.at(at).key_id(), r.new_key_id, "new key from `from`");
        assert_eq!(keys.scheduled().unwrap(), (r.new_key_id.clone(), at));
        let ring = KeyRing::load_dir(&keys_dir).unwrap();
        assert!(ring.get(&r.new_key_id).is_some() && ring.get(first.key_id()).is_some());

        // A second rotation before the first is due is refused, naming the pending key.
        let err = rotate(&private, &public, &keys_dir, None, now)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&r.new_key_id) && err.contains("already scheduled"),
            "{err}"
        );

        // After its time, the next rotation promotes it first.
        let later = at + Duration::from_secs(1);
        let r2 = rotate(&private, &public, &keys_dir, None, later).unwrap();
        assert_eq!(r2.promoted.as_deref(), Some(r.new_key_id.as_str()));
        assert_eq!(r2.old_key_id, r.new_key_id);
        assert!(!next_paths(&private).key.exists() && !next_paths(&private).from.exists());
        assert_eq!(GatewayKey::load(&private).unwrap().key_id(), r2.new_key_id);
        assert!(keys.reload().unwrap());
        assert_eq!(keys.active().key_id(), r2.new_key_id);
        assert_eq!(KeyRing::load_dir(&keys_dir).unwrap().ids().count(), 3);
    }

    #[test]
    fn from_accepts_now_relative_and_rfc3339() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_from("now", now).unwrap(), now);
        assert_eq!(
            parse_from("+90s", now).unwrap(),
            now + Duration::from_secs(90)
        );
        assert_eq!(
            parse_from("+2h", now).unwrap(),
            now + Duration::from_secs(7200)
        );
        assert_eq!(
            parse_from("2026-12-06T20:00:00Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_587_200)
        );
        assert!(parse_from("tomorrow", now).is_err());
        assert!(parse_from("+5d", now).is_err());
    }
}
