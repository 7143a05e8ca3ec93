//! Harness for the workspace end-to-end tests (`icu-tests`).
//!
//! Everything a test needs from outside the process is started here and
//! stopped when the test ends: a real Kafka-protocol broker ([`Broker`], the
//! `tansu` binary that `scripts/install-tansu` builds), the workspace's own
//! binaries ([`bin_path`], which `cargo build --workspace --bins` builds) and
//! child processes in general ([`ChildGuard`]).  Nothing uses a fixed port:
//! [`free_port`] hands out an ephemeral one.
//!
//! Synchronisation is by polling a condition within a deadline ([`wait_for`]),
//! never by fixed sleeps.
//!
//! Environment read here:
//! - `ICU_TANSU_BIN`: the broker binary (default: the cache path that
//!   `scripts/install-tansu` uses);
//! - `ICU_CACHE_DIR`: that cache (default `$HOME/.cache/icu-gateway`);
//! - `ICU_PYTHON`: a Python with `confluent-kafka` and `cryptography`, for the
//!   stock-client tests (`scripts/test` sets it up);
//! - `CARGO_TARGET_DIR`: where the workspace binaries are;
//! - `ICU_TANSU_LOG`: the broker's `RUST_LOG` (default `warn`; its log file is
//!   in the broker's temp dir, and its tail is in every start-up error).

mod broker;
pub mod http;
pub mod mosquitto;
pub mod pki;
mod process;
pub mod tls_proxy;

pub use broker::{Broker, SecureOptions, PARTITIONS};
pub use process::{wait_for, ChildGuard};

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The default topics (DESIGN.md, "Kafka topics").
pub const TOPICS: &[&str] = &[
    "icu.observations",
    "icu.alarms",
    "icu.adt",
    "icu.devices",
    "icu.deadletter",
    "icu.audit",
];

/// The pinned broker version; `scripts/install-tansu` installs the same.
pub const TANSU_VERSION: &str = "0.6.0";

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("tests/ has a parent folder")
        .to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else the one this test
/// binary was built into (`<target>/debug/deps/<test>`), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if dir.is_absolute() {
            dir
        } else {
            workspace_root().join(dir)
        };
    }
    if let Some(dir) = target_dir_of_current_exe() {
        return dir;
    }
    workspace_root().join("target")
}

/// `<target>` when this process is `<target>/debug/deps/<exe>`.
fn target_dir_of_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let debug = deps.parent()?;
    if deps.file_name()? == "deps" && debug.file_name()? == "debug" {
        return debug.parent().map(Path::to_path_buf);
    }
    None
}

/// Path of a workspace binary (`icu-gateway`, `icu-sim`, `icu-bridge`, ...)
/// in `<target>/debug/`.
///
/// # Panics
/// When the binary has not been built: run `cargo build --workspace --bins`.
pub fn bin_path(name: &str) -> PathBuf {
    let path = target_dir()
        .join("debug")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// An ephemeral TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The cache folder shared with the scripts (`ICU_CACHE_DIR`, default
/// `$HOME/.cache/icu-gateway`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ICU_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("icu-gateway")
}

/// The `tansu` broker binary: `ICU_TANSU_BIN`, else the cache path.
///
/// # Panics
/// When it is missing: run `scripts/test` (it installs the broker).
pub fn tansu_bin() -> PathBuf {
    let path = match std::env::var_os("ICU_TANSU_BIN").filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => cache_dir()
            .join(format!("tansu-{TANSU_VERSION}"))
            .join("bin")
            .join("tansu"),
    };
    assert!(
        path.is_file(),
        "Kafka broker binary {} not found: run scripts/test (it installs the broker), \
         or scripts/install-tansu and set ICU_TANSU_BIN",
        path.display()
    );
    path
}

/// A Python interpreter with `confluent-kafka` and `cryptography`
/// (`ICU_PYTHON`, set by `scripts/test`), if any.
pub fn python() -> Option<PathBuf> {
    std::env::var_os("ICU_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// A file in `scripts/` of the workspace.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}
