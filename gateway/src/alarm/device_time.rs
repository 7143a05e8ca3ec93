//! Bounded trust in device time: the one rule ([`checked_time`]) by which the alarm engine,
//! patient association and the live view decide whether a reading's own time may be used, and
//! the engine's per-device record of a clock it doubts.

use std::collections::VecDeque;

use serde::Serialize;

use super::config::DeviceClockConfig;

const US_PER_S: i64 = 1_000_000;

/// The time a reading is evaluated at, after checking its device time against its receive
/// time (see [`DeviceClockConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedTime {
    /// Event time to use: the device time when trusted, else the receive time.
    pub t_us: i64,
    /// Device time minus receive time when the device time lay outside the bounds.
    pub untrusted_offset_us: Option<i64>,
}

/// Checks a reading's device time against its receive time. The one rule for the alarm engine,
/// patient association and the live view: a device time more than `max_ahead_s` after, or
/// `max_behind_s` before, the receive time is not trusted and the receive time is used.
pub fn checked_time(
    device_time_us: Option<i64>,
    receive_time_us: i64,
    cfg: &DeviceClockConfig,
) -> CheckedTime {
    let Some(device) = device_time_us else {
        return CheckedTime {
            t_us: receive_time_us,
            untrusted_offset_us: None,
        };
    };
    let offset = device.saturating_sub(receive_time_us);
    let ahead = i64::from(cfg.max_ahead_s) * US_PER_S;
    let behind = i64::from(cfg.max_behind_s) * US_PER_S;
    if offset > ahead || offset < -behind {
        CheckedTime {
            t_us: receive_time_us,
            untrusted_offset_us: Some(offset),
        }
    } else {
        CheckedTime {
            t_us: device,
            untrusted_offset_us: None,
        }
    }
}

/// An offset in words: "3 s", "5 min", "2 h", "27 d".
pub fn fmt_offset(offset_us: i64) -> String {
    let s = offset_us.unsigned_abs() / 1_000_000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Trust in one device's clock.
#[derive(Debug, Default)]
pub(super) struct DeviceClock {
    pub(super) bed: String,
    /// Engine time of the last untrusted or late reading (past the threshold).
    pub(super) last_bad_us: Option<i64>,
    /// Receive times of its recent late readings.
    pub(super) late: VecDeque<i64>,
    /// The technical alarm is raised.
    pub(super) raised: bool,
}

/// A device clock's state as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceClockView {
    pub device_id: String,
    pub bed: String,
    /// `unsynced` while the technical alarm is raised.
    pub state: &'static str,
    pub last_bad_us: Option<i64>,
}
