//! Whether the gateway's clock is synchronised, stamped on every observation.
//!
//! Owns: the `clock` policy from config. `auto` asks the OS: systemd-timesyncd marks a
//! synchronised clock with `/run/systemd/timesync/synchronized`, chrony with a non-zero
//! leap status in `/var/lib/chrony` is not inspected (use `synced` when chrony manages the clock).
//! The answer is cached and refreshed at most every 30 s, so the hot path only reads an atomic.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::domain::ClockPolicy;

const TIMESYNCD_MARKER: &str = "/run/systemd/timesync/synchronized";
const REFRESH_US: i64 = 30_000_000;

pub struct ClockState {
    policy: ClockPolicy,
    synced: AtomicBool,
    checked_us: AtomicI64,
}

impl ClockState {
    pub fn new(policy: ClockPolicy) -> Self {
        let s = Self {
            policy,
            synced: AtomicBool::new(false),
            checked_us: AtomicI64::new(i64::MIN),
        };
        s.is_synced(now_us());
        s
    }

    pub fn is_synced(&self, now_us: i64) -> bool {
        match self.policy {
            ClockPolicy::Synced => true,
            ClockPolicy::Unsynced => false,
            ClockPolicy::Auto => {
                let last = self.checked_us.load(Ordering::Relaxed);
                if now_us.saturating_sub(last) > REFRESH_US {
                    self.checked_us.store(now_us, Ordering::Relaxed);
                    self.synced
                        .store(Path::new(TIMESYNCD_MARKER).exists(), Ordering::Relaxed);
                }
                self.synced.load(Ordering::Relaxed)
            }
        }
    }
}

/// Wall-clock time in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}
