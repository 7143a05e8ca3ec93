//! The `[mllp]` section: its serde form as written in the config file ([`MllpSettings`], with
//! the defaults and the one set of rules, [`MllpSettings::problems`]) and the runtime form the
//! listener runs with ([`MllpConfig`]: an address, durations). `config/` only composes them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::FieldProblem;

/// The `[mllp]` section as written (see `gateway/gateway.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpSettings {
    /// Address the HL7v2/MLLP listener binds (PCD-01 from monitors). Port 0 picks a free port,
    /// written to `endpoints.json`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest accepted MLLP frame in bytes; larger frames are refused with AR.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Most open MLLP connections at once; further connections are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most open MLLP connections from one source address (default 32), so that one hostile or
    /// broken host cannot take every slot of `max_connections`; further connections from that
    /// address are closed at once. Raise it for a central station that forwards many monitors
    /// from one address over one connection each.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Seconds a started frame (or any bytes not yet forming a whole frame) may take to
    /// complete (default 30); then the connection is closed and what arrived is dead-lettered.
    #[serde(default = "default_frame_timeout_s")]
    pub frame_timeout_s: u64,
    /// Seconds a connection may stay silent between messages (default 300); then it is closed.
    /// Senders reconnect on their next message.
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u64,
}

impl Default for MllpSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_frame_bytes: default_max_frame_bytes(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            frame_timeout_s: default_frame_timeout_s(),
            idle_timeout_s: default_idle_timeout_s(),
        }
    }
}

impl MllpSettings {
    /// Every problem of the section, under the file's names (`mllp.listen`, ...): the one set
    /// of rules for these settings.
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut out = Vec::new();
        let mut problem = |field: &str, message: String| {
            out.push(FieldProblem {
                field: format!("mllp.{field}"),
                message,
            })
        };
        if self.listen.parse::<SocketAddr>().is_err() {
            problem(
                "listen",
                format!("'{}' is not an address like 127.0.0.1:2575", self.listen),
            );
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 64 << 20 {
            problem(
                "max_frame_bytes",
                format!("{} is outside 1024..=67108864", self.max_frame_bytes),
            );
        }
        if self.max_connections == 0 {
            problem("max_connections", "must be at least 1".into());
        }
        if self.max_connections_per_address == 0 {
            problem("max_connections_per_address", "must be at least 1".into());
        }
        for (field, secs) in [
            ("frame_timeout_s", self.frame_timeout_s),
            ("idle_timeout_s", self.idle_timeout_s),
        ] {
            if !(1..=86_400).contains(&secs) {
                problem(field, format!("{secs} is outside 1..=86400 seconds"));
            }
        }
        out
    }

    /// The listener's runtime settings. Meant for settings without
    /// [`problems`](Self::problems); an unreadable `listen` becomes `127.0.0.1:0`.
    pub fn config(&self) -> MllpConfig {
        MllpConfig {
            listen: self
                .listen
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            max_frame_bytes: self.max_frame_bytes,
            max_connections: self.max_connections,
            max_connections_per_address: self.max_connections_per_address.min(self.max_connections),
            frame_timeout: Duration::from_secs(self.frame_timeout_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
        }
    }
}

/// The listener's runtime settings (from [`MllpSettings::config`]).
#[derive(Debug, Clone)]
pub struct MllpConfig {
    pub listen: SocketAddr,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub frame_timeout: Duration,
    pub idle_timeout: Duration,
}

fn default_listen() -> String {
    "0.0.0.0:2575".into()
}
fn default_max_frame_bytes() -> usize {
    icu_drivers::mllp::DEFAULT_MAX_FRAME_BYTES
}
fn default_max_connections() -> usize {
    256
}
fn default_max_connections_per_address() -> usize {
    32
}
fn default_frame_timeout_s() -> u64 {
    30
}
fn default_idle_timeout_s() -> u64 {
    300
}
