//! The real `icu-sim pcd01` binary: one run to its end ([`run_sim`], [`run_sim_with`]) or an
//! open-ended run in the background ([`SimProc`]), each with its manifest of acknowledged
//! observations ([`SimRun`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin_path, wait_for};

/// An open-ended `icu-sim pcd01` run in the background (it retries an un-ACKed message up to
/// `--max-attempts` times, so it rides out gateway restarts); [`SimProc::stop`] ends it with
/// SIGTERM and reads its manifest of acknowledged observations.
pub struct SimProc {
    child: Option<Child>,
    manifest: PathBuf,
    out: PathBuf,
}

impl SimProc {
    /// `icu-sim pcd01` against `mllp` with `beds` beds at `rate` messages/s per bed, running
    /// until stopped, with `extra` arguments (e.g. `--scenario`).
    pub fn start(
        mllp: SocketAddr,
        beds: usize,
        rate: f64,
        manifest: &Path,
        extra: &[&str],
    ) -> SimProc {
        let out = manifest.with_extension("out");
        let log = std::fs::File::create(&out).unwrap();
        let child = Command::new(bin_path("icu-sim"))
            .args(["pcd01", "--target", &mllp.to_string()])
            .args(["--beds", &beds.to_string(), "--rate", &rate.to_string()])
            .args(["--duration-secs", "86400", "--max-attempts", "1000000"])
            .arg("--manifest")
            .arg(manifest)
            .args(extra)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting icu-sim");
        SimProc {
            child: Some(child),
            manifest: manifest.to_owned(),
            out,
        }
    }

    /// SIGTERM, wait for the sender to finish its report, and read the manifest.
    pub fn stop(mut self) -> SimRun {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let status = wait_for(Duration::from_secs(60), "icu-sim to stop", || {
            c.try_wait().ok().flatten()
        })
        .unwrap_or_else(|e| {
            let _ = c.kill();
            panic!("{e}")
        });
        let accepted = std::fs::read_to_string(&self.manifest)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("manifest line"))
            .collect();
        SimRun {
            ok: status.success(),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            accepted,
        }
    }
}

impl Drop for SimProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Result of one `icu-sim pcd01` run.
pub struct SimRun {
    pub ok: bool,
    pub stdout: String,
    pub accepted: Vec<icu_sim::pcd01::SentObservation>,
}

/// Runs the real `icu-sim pcd01` binary against `mllp` and reads its manifest.
pub fn run_sim(mllp: SocketAddr, beds: usize, messages: u64, rate: f64, manifest: &Path) -> SimRun {
    run_sim_with(mllp, beds, messages, rate, manifest, &[])
}

/// As [`run_sim`], with extra `icu-sim pcd01` arguments (e.g. `--scenario`).
pub fn run_sim_with(
    mllp: SocketAddr,
    beds: usize,
    messages: u64,
    rate: f64,
    manifest: &Path,
    extra: &[&str],
) -> SimRun {
    let out = Command::new(bin_path("icu-sim"))
        .args(["pcd01", "--target", &mllp.to_string()])
        .args(extra)
        .args([
            "--beds",
            &beds.to_string(),
            "--messages",
            &messages.to_string(),
        ])
        .args(["--rate", &rate.to_string(), "--manifest"])
        .arg(manifest)
        .output()
        .expect("running icu-sim");
    let accepted = std::fs::read_to_string(manifest)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("manifest line"))
        .collect();
    SimRun {
        ok: out.status.success(),
        stdout: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        accepted,
    }
}
