//! The data directory: writable, and its filesystem has room for the store to grow to its disk
//! budget (`store.disk_budget_mb` minus what the store's files hold already).

use std::path::{Path, PathBuf};

use super::check::{bytes_text, Check};
use crate::config::Config;

pub fn probe(cfg: &Config) -> Check {
    let dir = &cfg.data_dir;
    let what = format!("data directory {}", dir.display());
    // A directory that does not exist yet is made at the first start, in its nearest parent.
    let existing = nearest_existing(dir);
    if let Some(why) = not_writable(&existing, dir) {
        return Check::fail(
            what,
            why,
            format!(
                "let the gateway's user write there (chown icu-gateway {}) or set data_dir",
                existing.display()
            ),
        );
    }
    let stat = match nix::sys::statvfs::statvfs(&existing) {
        Ok(s) => s,
        Err(e) => return Check::fail(what, format!("statvfs: {e}"), "check the filesystem"),
    };
    let free = (stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64);
    let used = store_bytes(&cfg.store.path);
    let budget = cfg.store.disk_budget_bytes;
    let growth = budget.saturating_sub(used);
    let budget_mb = budget >> 20;
    if free < growth {
        let fits_mb = (used.saturating_add(free)) >> 20;
        return Check::fail(
            what,
            format!(
                "{} free, but the store may grow by {} more (store.disk_budget_mb {budget_mb}, \
                 {} used now)",
                bytes_text(free),
                bytes_text(growth),
                bytes_text(used)
            ),
            format!(
                "free space on that filesystem, or lower store.disk_budget_mb to at most \
                 {fits_mb} (the store then prunes forwarded readings first)"
            ),
        );
    }
    Check::ok_note(
        what,
        format!(
            "{} free, store {} of its {budget_mb} MiB budget",
            bytes_text(free),
            bytes_text(used)
        ),
    )
}

/// The store's file, its write-ahead log and shared-memory file, as they are on disk now.
fn store_bytes(db: &Path) -> u64 {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len())
        })
        .sum()
}

fn nearest_existing(dir: &Path) -> PathBuf {
    let mut p = dir;
    loop {
        if p.exists() {
            return p.to_owned();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("."),
        }
    }
}

/// Why this user cannot write the data directory (or make it, in `existing`).
fn not_writable(existing: &Path, dir: &Path) -> Option<String> {
    use nix::unistd::{access, AccessFlags};
    if !existing.is_dir() {
        return Some(format!("{} is not a directory", existing.display()));
    }
    match access(existing, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) => None,
        Err(e) if existing == dir => Some(format!("is not writable by this user ({e})")),
        Err(e) => Some(format!(
            "does not exist, and {} where it would be made is not writable by this user ({e})",
            existing.display()
        )),
    }
}
