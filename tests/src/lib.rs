//! Harness for the workspace end-to-end tests (`icu-tests`).
//!
//! Everything a test needs from outside the process is started here and
//! stopped when the test ends: a real Kafka-protocol broker ([`Broker`], the
//! `tansu` binary that `scripts/install-tansu` builds; several sharing one storage:
//! [`backbone::Backbone`]), the workspace's own
//! binaries ([`bin_path`], which `cargo build --workspace --bins` builds) and
//! child processes in general ([`ChildGuard`]).  Nothing uses a fixed port:
//! [`free_port`] hands out an ephemeral one.
//!
//! The real gateway and simulator run as child processes ([`gateway::GatewayProc`],
//! [`sim::run_sim`], [`sim::SimProc`]) and are spoken to over their real interfaces
//! ([`mllp::Sender`], [`http`] with the test accounts, [`mosquitto::mqtt_alarms`]). The benches
//! (`tests/benches/`, `cargo bench -p icu-tests --bench <name>`) use the same harness, plus
//! [`bench`] (arguments, their gateway config, load messages, percentiles, RSS).
//! `tests/tests/support/mod.rs` only re-exports what the end-to-end tests use.
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

pub mod backbone;
pub mod bench;
mod broker;
pub mod gateway;
pub mod http;
pub mod mllp;
pub mod mosquitto;
pub mod pki;
mod process;
pub mod sim;
pub mod tls_proxy;
pub mod ventilator;

pub use broker::{Broker, SecureOptions, PARTITIONS};
pub use process::{log_tail, wait_for, ChildGuard};

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
    "icu.waveforms",
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

/// `<target>` when this process is `<target>/<debug|release>/deps/<exe>`.
fn target_dir_of_current_exe() -> Option<PathBuf> {
    let profile = profile_dir_of_current_exe()?;
    profile.parent().map(Path::to_path_buf)
}

/// `<target>/<profile>` when this process is `<target>/<profile>/deps/<exe>` (`debug` or
/// `release`).
fn profile_dir_of_current_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let profile = deps.parent()?;
    let name = profile.file_name()?;
    (deps.file_name()? == "deps" && (name == "debug" || name == "release"))
        .then(|| profile.to_path_buf())
}

/// A workspace binary built with the same profile as this process (a bench: `release`),
/// built first with `cargo build [--release] -p <package> --bin <name>` (quick when it is up to
/// date; a bench of `icu-tests` does not build other packages' binaries by itself).
///
/// # Panics
/// When the build fails.
pub fn profile_bin(package: &str, name: &str) -> PathBuf {
    let profile = profile_dir_of_current_exe()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "release".to_owned());
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", package, "--bin", name])
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target_dir());
    if profile == "release" {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {name} failed"
    );
    target_dir()
        .join(profile)
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
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
            .join(format!("tansu-{TANSU_VERSION}-sql"))
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

/// The Python (with selenium) of the browser tests, when it and Debian's `/usr/bin/chromium`
/// and `/usr/bin/chromedriver` are there (`scripts/test` installs them). Without them: a
/// failure under CI, else `None` and a line saying why `test` is skipped.
pub fn browser_python(test: &str) -> Option<PathBuf> {
    let missing: Vec<&str> = ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let python = python().filter(|_| missing.is_empty());
    if python.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set, so the browser test {test} must run (ICU_PYTHON, {missing:?})"
        );
        eprintln!("SKIPPED {test}: ICU_PYTHON or {missing:?} missing (scripts/test installs them)");
    }
    python
}

/// A tool the test command installs and names in environment variable `var` (e.g.
/// `ICU_PROMTOOL_BIN`). Without it: a failure under CI (the suite must run through
/// `scripts/test`), else `None` and a printed reason, so the caller skips.
pub fn tool_from_env(var: &str) -> Option<PathBuf> {
    let bin = std::env::var_os(var).filter(|p| !p.is_empty());
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{var} is not set under CI: run the suite through scripts/test"
        );
        eprintln!("skipped: {var} not set (scripts/test sets it)");
    }
    bin.map(PathBuf::from)
}

/// A file in `scripts/` of the workspace.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts").join(name)
}
