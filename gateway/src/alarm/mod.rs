//! Local alarms: the rule engine that raises bedside alarms from the in-memory stream of
//! decoded observations, with no dependency on the disk, Kafka or any remote service.
//!
//! Owns: the alarm rules of the config file ([`AlarmConfig`]), NEWS2 scoring ([`news2`]) and
//! the runtime-free [`Engine`] that an actor wraps. The engine evaluates, per bed and in event
//! time, limit rules (sustain and hysteresis), rate-of-change rules, NEWS2 and technical
//! conditions (stale feed, device-reported conditions), and returns every alarm state change as
//! an `icu.v1.Alarm` with its IHE PCD-04 phase, state and priority. Persisting clinician limits,
//! audit, and delivering alarms (page, MQTT, PCD-04, store) are the gateway's job.

pub mod actor;
mod config;
mod device_time;
mod engine;
mod lifecycle;
pub mod limits_store;
pub mod news2;
pub mod pcd04_out;
mod rules;

#[cfg(test)]
mod tests;

pub use config::{
    default_limits, default_rates, AlarmConfig, DeviceClockConfig, Direction, LimitRule,
    News2Config, OutputsConfig, Priority, RateRule,
};
pub use device_time::{checked_time, fmt_offset, CheckedTime, DeviceClockView};
pub use engine::{AlarmError, Engine, LimitChange, LimitOff};
pub use lifecycle::{
    AlarmState, AlarmView, AlertType, EngineStats, Phase, ALARM_OUTPUT_SOURCE, DEVICE_CLOCK_SOURCE,
    GATEWAY_BED, MDC_EVT_ALARM, NEWS2_SOURCE, STALE_FEED_SOURCE,
};
pub use rules::Limits;
