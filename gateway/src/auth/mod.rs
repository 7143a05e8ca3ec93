//! Who may do what on the local HTTP surface: accounts, API tokens, sessions, roles and login
//! throttling. The HTTP layer (`crate::http::guard`) asks this module who a request is and
//! whether its role allows the endpoint; it never takes a user name from a request body.
//!
//! - [`roles`]: the role table (one home for it; the README links here).
//! - [`accounts`]: accounts (argon2id) and API tokens (SHA-256 of a 256-bit secret) in the
//!   gateway's SQLite file; managed by `icu-gateway user ...` and `icu-gateway token ...`.
//! - [`sessions`]: in-memory sessions with idle lock, PIN unlock and break-glass.
//! - [`throttle`]: failed-guess protection per account and per source address (governor).
//! - [`cli`]: the `user` and `token` subcommands.
//!
//! Every login, failed login, logoff, unlock, break-glass, user and token change is written to
//! the audit trail (`crate::audit`) by the caller, before it takes effect.

pub mod accounts;
pub mod cli;
pub mod roles;
pub mod sessions;
pub mod throttle;

use std::path::Path;
use std::time::Duration;

pub use accounts::{AccountInfo, Accounts, TokenInfo};
pub use roles::{Permission, Role};
pub use sessions::{BreakGlass, Lookup, SessionTimings, SessionView, Sessions};
pub use throttle::{LoginThrottle, ThrottleSettings};

use crate::domain::FieldProblem;

/// Why an authentication step failed. `BadCredentials` is all a client is told about a wrong
/// name, password, PIN or token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("wrong account name or password")]
    BadCredentials,
    #[error("account disabled")]
    Disabled,
    #[error("no such account")]
    UnknownAccount,
    #[error("{0}")]
    Invalid(String),
    #[error("account store: {0}")]
    Store(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// `[auth]`: sessions, logoff and login throttling. Every field has a default; the section may
/// be left out.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A session without its person's activity for this long locks (PIN or login to reopen).
    pub idle_logoff_s: u64,
    /// The same for `viewer` accounts (a wall display that only shows the unit).
    pub viewer_idle_logoff_s: u64,
    /// A locked session can be reopened by PIN for this long, then it ends.
    pub lock_max_s: u64,
    /// No session lasts longer than this (about a shift).
    pub max_session_s: u64,
    /// Sessions kept at once; the longest-idle one makes room for a new login.
    pub max_sessions: usize,
    /// Longest break-glass elevation a person can ask for.
    pub break_glass_max_s: u64,
    /// Login attempts per account name at once, then one per `login_account_period_s`.
    pub login_account_burst: u32,
    pub login_account_period_s: u64,
    /// Login attempts per source address at once, then one per `login_address_period_s`.
    pub login_address_burst: u32,
    pub login_address_period_s: u64,
    /// Host names (and host:port) the page and API answer to besides the listen address,
    /// `localhost`, `127.0.0.1` and `[::1]`: the name nurses type. Anything else is refused (DNS
    /// rebinding).
    pub allowed_hosts: Vec<String>,
    /// One session's reads of patient data through one endpoint are audited at most this often
    /// (the page refreshes every second; the first read and then one per interval are written).
    pub patient_read_audit_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            idle_logoff_s: 900,
            viewer_idle_logoff_s: 12 * 3600,
            lock_max_s: 4 * 3600,
            max_session_s: 13 * 3600,
            max_sessions: 256,
            break_glass_max_s: 3600,
            login_account_burst: 5,
            login_account_period_s: 60,
            login_address_burst: 20,
            login_address_period_s: 6,
            allowed_hosts: Vec::new(),
            patient_read_audit_s: 300,
        }
    }
}

impl AuthConfig {
    /// The section's own rules, under the file's names (`auth.idle_logoff_s`, ...).
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: &str| {
            out.push(FieldProblem {
                field: format!("auth.{field}"),
                message: message.to_owned(),
            })
        };
        if !(10..=24 * 3600).contains(&self.idle_logoff_s) {
            bad("idle_logoff_s", "must be within 10..=86400 seconds");
        }
        if self.viewer_idle_logoff_s != 0 && !(10..=24 * 3600).contains(&self.viewer_idle_logoff_s)
        {
            bad(
                "viewer_idle_logoff_s",
                "must be 0 (as idle_logoff_s) or within 10..=86400 seconds",
            );
        }
        if self.lock_max_s > 24 * 3600 {
            bad("lock_max_s", "must be at most 86400 seconds");
        }
        if !(60..=7 * 24 * 3600).contains(&self.max_session_s) {
            bad("max_session_s", "must be within 60..=604800 seconds");
        }
        if !(1..=100_000).contains(&self.max_sessions) {
            bad("max_sessions", "must be within 1..=100000");
        }
        if !(60..=24 * 3600).contains(&self.break_glass_max_s) {
            bad("break_glass_max_s", "must be within 60..=86400 seconds");
        }
        for (field, burst, period) in [
            (
                "login_account_burst",
                self.login_account_burst,
                self.login_account_period_s,
            ),
            (
                "login_address_burst",
                self.login_address_burst,
                self.login_address_period_s,
            ),
        ] {
            if !(1..=1000).contains(&burst) {
                bad(field, "must be within 1..=1000");
            }
            if !(1..=3600).contains(&period) {
                bad(
                    &field.replace("burst", "period_s"),
                    "must be within 1..=3600 seconds",
                );
            }
        }
        for h in &self.allowed_hosts {
            if h.is_empty() || h.contains(['/', ' ', '\\']) {
                bad("allowed_hosts", &format!("'{h}' is not a host name"));
            }
        }
        out
    }

    pub fn timings(&self) -> SessionTimings {
        let us = |s: u64| (s as i64).saturating_mul(1_000_000);
        SessionTimings {
            idle_logoff_us: us(self.idle_logoff_s),
            viewer_idle_logoff_us: us(self.viewer_idle_logoff_s),
            lock_max_us: us(self.lock_max_s),
            max_session_us: us(self.max_session_s),
            max_sessions: self.max_sessions,
        }
    }

    pub fn throttle(&self) -> ThrottleSettings {
        ThrottleSettings {
            per_account_burst: self.login_account_burst,
            per_account_period: Duration::from_secs(self.login_account_period_s),
            per_address_burst: self.login_address_burst,
            per_address_period: Duration::from_secs(self.login_address_period_s),
        }
    }
}

/// Everything the HTTP layer needs to authenticate: one per gateway.
pub struct Auth {
    pub config: AuthConfig,
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub throttle: LoginThrottle,
}

impl Auth {
    pub fn open(store_path: &Path, config: AuthConfig) -> Result<Self, AuthError> {
        Ok(Self {
            accounts: Accounts::open(store_path)?,
            sessions: Sessions::new(config.timings()),
            throttle: LoginThrottle::new(config.throttle()),
            config,
        })
    }
}

#[cfg(test)]
mod tests;
