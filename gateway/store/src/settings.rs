//! The `[store]` section: its serde form as written in the gateway's config file
//! ([`StoreSettings`], with the defaults and the one set of rules, [`StoreSettings::problems`])
//! and the runtime form the store runs with ([`StoreConfig`]). The gateway's `config/` only
//! composes them and prefixes the field names with `store.`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::db::{BudgetPolicy, OnFull};

/// The `[store]` section as written (see `gateway/gateway.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Database file; relative paths are inside `data_dir`.
    #[serde(default = "default_file")]
    pub file: PathBuf,
    /// Most disk the store may use, in MiB, counted as the database pages in use plus the
    /// write-ahead log (so deleted records count as freed). Near it, forwarded records are
    /// pruned oldest first; when that is not enough, `on_full` decides. The full policy is in
    /// the crate docs ("Disk budget policy").
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Percent of the budget at which pruning of forwarded records starts (default 90).
    #[serde(default = "default_high_water_pct")]
    pub high_water_pct: u8,
    /// Percent of the budget at which pruning stops and the store's technical alarm clears
    /// (default 80; below `high_water_pct`).
    #[serde(default = "default_low_water_pct")]
    pub low_water_pct: u8,
    /// Headroom above the budget, in percent of it, that only alarm state changes and ADT
    /// events may use, so they are still stored while observations are refused (default 2;
    /// at most 20).
    #[serde(default = "default_alarm_reserve_pct")]
    pub alarm_reserve_pct: u8,
    /// When pruning forwarded records is not enough: `"refuse"` (default) refuses new
    /// observations (senders get AR) and keeps every acknowledged one; `"drop_oldest_unsent"`
    /// deletes the oldest unsent observations (counted, logged, high-priority technical alarm).
    #[serde(default = "default_on_full")]
    pub on_full: String,
    /// `"full"`: a reading is acknowledged only once it survives power loss (fsync);
    /// `"normal"`: it survives a process crash but the last commits may be lost on power loss.
    #[serde(default = "default_synchronous")]
    pub synchronous: String,
    /// Most write requests merged into one commit (group commit).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most write requests waiting for the disk before new ones are refused (AR).
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
    /// Hours of per-minute trend aggregates kept for the trend query (default 48: the 24 h a
    /// trend shows, plus a day); older minutes are deleted. 1-744.
    #[serde(default = "default_trend_retention_h")]
    pub trend_retention_h: u32,
    /// Percent of the disk budget below which waveform segments (ECG, pleth, pressure curves)
    /// are stored (default 50; 0-100, 0: never). At or above it each message's readings are
    /// still stored but its curves are not (counted and logged per device), and forwarded
    /// curves are deleted to make room for new ones: readings and alarms always win.
    #[serde(default = "default_waveform_budget_percent")]
    pub waveform_budget_percent: u8,
    /// Hours forwarded waveform segments are kept after they were received (default 24);
    /// older ones are deleted. 1-744.
    #[serde(default = "default_waveform_retention_h")]
    pub waveform_retention_h: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            file: default_file(),
            disk_budget_mb: default_disk_budget_mb(),
            high_water_pct: default_high_water_pct(),
            low_water_pct: default_low_water_pct(),
            alarm_reserve_pct: default_alarm_reserve_pct(),
            on_full: default_on_full(),
            synchronous: default_synchronous(),
            max_batch: default_max_batch(),
            max_pending: default_max_pending(),
            trend_retention_h: default_trend_retention_h(),
            waveform_budget_percent: default_waveform_budget_percent(),
            waveform_retention_h: default_waveform_retention_h(),
        }
    }
}

impl StoreSettings {
    /// Every problem of the section, each with its field name in the file (without the
    /// `store.` prefix): the one set of rules for these settings.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        if self.disk_budget_mb == 0 {
            out.push(("disk_budget_mb", "must be at least 1".into()));
        }
        if !(2..=100).contains(&self.high_water_pct) {
            out.push((
                "high_water_pct",
                format!("{} must be 2-100", self.high_water_pct),
            ));
        }
        if self.low_water_pct == 0 || self.low_water_pct >= self.high_water_pct {
            out.push((
                "low_water_pct",
                format!(
                    "{} must be at least 1 and below store.high_water_pct ({})",
                    self.low_water_pct, self.high_water_pct
                ),
            ));
        }
        if self.alarm_reserve_pct > 20 {
            out.push((
                "alarm_reserve_pct",
                format!("{} must be 0-20", self.alarm_reserve_pct),
            ));
        }
        if self.on_full().is_none() {
            out.push((
                "on_full",
                format!(
                    "'{}' is not one of \"refuse\", \"drop_oldest_unsent\"",
                    self.on_full
                ),
            ));
        }
        if self.synchronous_full().is_none() {
            out.push((
                "synchronous",
                format!("'{}' is not one of \"full\", \"normal\"", self.synchronous),
            ));
        }
        if self.max_batch == 0 {
            out.push(("max_batch", "must be at least 1".into()));
        }
        if self.max_pending < self.max_batch {
            out.push((
                "max_pending",
                format!("must be at least store.max_batch ({})", self.max_batch),
            ));
        }
        for (field, hours) in [
            ("trend_retention_h", self.trend_retention_h),
            ("waveform_retention_h", self.waveform_retention_h),
        ] {
            if !(1..=744).contains(&hours) {
                out.push((field, format!("{hours} must be 1-744")));
            }
        }
        if self.waveform_budget_percent > 100 {
            let pct = self.waveform_budget_percent;
            out.push(("waveform_budget_percent", format!("{pct} must be 0-100")));
        }
        out
    }

    /// `on_full` as a policy, if it names one.
    fn on_full(&self) -> Option<OnFull> {
        match self.on_full.as_str() {
            "refuse" => Some(OnFull::Refuse),
            "drop_oldest_unsent" => Some(OnFull::DropOldestUnsent),
            _ => None,
        }
    }

    /// Whether `synchronous` is `"full"` (`None`: neither `"full"` nor `"normal"`).
    fn synchronous_full(&self) -> Option<bool> {
        match self.synchronous.as_str() {
            "full" => Some(true),
            "normal" => Some(false),
            _ => None,
        }
    }

    /// The runtime settings, with the database at `path` (the gateway resolves `file` against
    /// its `data_dir`). Meant for settings without [`problems`](Self::problems); a value that
    /// has one falls back to its default.
    pub fn config(&self, path: PathBuf) -> StoreConfig {
        StoreConfig {
            path,
            disk_budget_bytes: self.disk_budget_mb.saturating_mul(1 << 20),
            high_water_pct: self.high_water_pct,
            low_water_pct: self.low_water_pct,
            alarm_reserve_pct: self.alarm_reserve_pct,
            on_full: self.on_full().unwrap_or(OnFull::Refuse),
            synchronous_full: self.synchronous_full().unwrap_or(true),
            max_batch: self.max_batch,
            max_pending: self.max_pending,
            trend_retention_s: u64::from(self.trend_retention_h) * 3600,
            waveform_budget_pct: self.waveform_budget_percent.min(100),
            waveform_retention_s: u64::from(self.waveform_retention_h) * 3600,
        }
    }
}

/// The store's runtime settings (from [`StoreSettings::config`]).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub disk_budget_bytes: u64,
    pub high_water_pct: u8,
    pub low_water_pct: u8,
    pub alarm_reserve_pct: u8,
    pub on_full: OnFull,
    pub synchronous_full: bool,
    pub max_batch: usize,
    pub max_pending: usize,
    /// See [`BudgetPolicy::trend_retention_s`].
    pub trend_retention_s: u64,
    /// See [`BudgetPolicy::waveform_budget_pct`].
    pub waveform_budget_pct: u8,
    /// See [`BudgetPolicy::waveform_retention_s`].
    pub waveform_retention_s: u64,
}

impl StoreConfig {
    /// The disk-budget policy of this config.
    pub fn budget_policy(&self) -> BudgetPolicy {
        BudgetPolicy {
            high_water_pct: self.high_water_pct,
            low_water_pct: self.low_water_pct,
            alarm_reserve_pct: self.alarm_reserve_pct,
            on_full: self.on_full,
            trend_retention_s: self.trend_retention_s,
            waveform_budget_pct: self.waveform_budget_pct,
            waveform_retention_s: self.waveform_retention_s,
            ..BudgetPolicy::with_budget(self.disk_budget_bytes)
        }
    }
}

fn default_file() -> PathBuf {
    PathBuf::from("gateway.db")
}
fn default_disk_budget_mb() -> u64 {
    10 * 1024
}
fn default_high_water_pct() -> u8 {
    90
}
fn default_low_water_pct() -> u8 {
    80
}
fn default_alarm_reserve_pct() -> u8 {
    2
}
fn default_on_full() -> String {
    "refuse".into()
}
fn default_synchronous() -> String {
    "full".into()
}
fn default_max_batch() -> usize {
    512
}
fn default_trend_retention_h() -> u32 {
    (crate::db::DEFAULT_TREND_RETENTION_S / 3600) as u32
}
fn default_waveform_budget_percent() -> u8 {
    crate::db::DEFAULT_WAVEFORM_BUDGET_PCT
}
fn default_waveform_retention_h() -> u32 {
    (crate::db::DEFAULT_WAVEFORM_RETENTION_S / 3600) as u32
}
fn default_max_pending() -> usize {
    20_000
}
