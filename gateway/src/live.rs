//! Live view of the ICU: latest value per bed and parameter, and per-device counters.
//!
//! Owns: the in-memory state behind `/api/beds` and `/api/devices`. It is updated by the device
//! actors as each message is decoded, before the store commits, so the page (and, in a later
//! issue, the alarm engine) never waits on the disk or the network. Guarantees: readers get a
//! consistent snapshot per call; nothing here is durable (the store is).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use icu_protos::v1::{Observation, ObservationStatus};
use serde::Serialize;

use crate::domain::{Bed, Device};

#[derive(Debug, Clone, Serialize)]
pub struct ValueView {
    pub mdc_code: u32,
    pub refid: String,
    pub display: String,
    pub value: Option<f64>,
    pub value_text: String,
    pub unit: String,
    pub status: String,
    pub device_id: String,
    pub device_time: Option<String>,
    pub receive_time: String,
    pub receive_time_us: i64,
    #[serde(skip)]
    event_time_us: i64,
}

/// An active alarm as the page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmView {
    pub alarm_id: String,
    pub device_id: String,
    pub condition: String,
    pub text: String,
    pub priority: String,
    pub alert_type: String,
    pub since: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    pub id: String,
    pub bed: String,
    pub protocol: crate::domain::Protocol,
    /// `waiting` (never heard from), `connecting`, `online`, `silent` (nothing for
    /// `silent_after`), `reconnecting` (link lost, retrying) or `failed`.
    pub state: String,
    /// How the gateway knows the device: the EUI-64 (or other id) its messages are matched on,
    /// or its serial port and line settings.
    pub identity: String,
    /// What the transport last said about the link, and since when.
    pub link: Option<crate::domain::LinkState>,
    pub link_reason: Option<String>,
    pub link_since: Option<String>,
    pub active_alarms: Vec<AlarmView>,
    pub messages: u64,
    pub observations: u64,
    pub errors: u64,
    pub duplicates: u64,
    pub last_seen: Option<String>,
    /// `ok`, or `unsynced` while its device times lie outside the bounds of trust
    /// (`alarms.device_clock`; its readings are then alarmed on at receive time).
    pub device_clock: &'static str,
    /// Device time minus receive time of its last untrusted reading, in seconds.
    pub device_clock_offset_s: Option<i64>,
    #[serde(skip)]
    clock_untrusted_us: Option<i64>,
    #[serde(skip)]
    last_seen_us: Option<i64>,
    #[serde(skip)]
    silent_after: Duration,
    pub last_error: Option<String>,
}

impl DeviceView {
    /// Its last message (µs since the Unix epoch), if any.
    pub fn last_seen_us(&self) -> Option<i64> {
        self.last_seen_us
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BedView {
    pub id: String,
    pub label: String,
    pub devices: Vec<String>,
    /// Latest value per parameter, ordered by MDC code.
    pub values: Vec<ValueView>,
    /// Active alarms of the bed's devices, highest priority first.
    pub alarms: Vec<AlarmView>,
}

/// One message a device sent and the answer the gateway gave (the device console's last N).
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub received: String,
    pub received_us: i64,
    /// The message as received (its first [`EXCHANGE_MAX_BYTES`] bytes, lossy UTF-8) and its
    /// whole length.
    pub message: String,
    pub message_len: usize,
    /// The ACK sent (MSA-1 code first), empty when none was sent.
    pub ack_code: String,
    pub ack: String,
}

/// Messages kept per device for the console.
pub const EXCHANGES_PER_DEVICE: usize = 20;
/// Bytes of each message kept for the console.
pub const EXCHANGE_MAX_BYTES: usize = 4096;

#[derive(Default)]
struct Inner {
    beds: BTreeMap<String, (Bed, BTreeMap<u32, ValueView>)>,
    devices: BTreeMap<String, DeviceView>,
    /// The last [`EXCHANGES_PER_DEVICE`] messages and answers of each device, and apart from
    /// them its last rejected ones (AE/AR), which a busy device would otherwise push out.
    exchanges: BTreeMap<String, std::collections::VecDeque<Exchange>>,
    rejected: BTreeMap<String, std::collections::VecDeque<Exchange>>,
}

pub struct LiveState {
    inner: Mutex<Inner>,
    /// How long a device stays `unsynced` after its last untrusted device time.
    clock_settle_us: std::sync::atomic::AtomicI64,
    /// The last minute of every bed's curves (the page's live curves, alarm snippets).
    pub waves: crate::waves::WaveformRing,
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn status_name(s: i32) -> &'static str {
    match ObservationStatus::try_from(s).unwrap_or(ObservationStatus::Unspecified) {
        ObservationStatus::Valid => "valid",
        ObservationStatus::NotAvailable => "not-available",
        ObservationStatus::Invalid => "invalid",
        ObservationStatus::Corrected => "corrected",
        ObservationStatus::Test => "test",
        ObservationStatus::Unspecified => "unspecified",
    }
}

/// The live view of a configured device that has not been heard from yet.
fn device_view(d: &Device) -> DeviceView {
    DeviceView {
        id: d.id.clone(),
        bed: d.bed.clone(),
        protocol: d.protocol,
        state: "waiting".into(),
        identity: match (&d.match_id, &d.serial) {
            (_, Some(sp)) => format!("{} {}", sp.port.display(), sp.line_text()),
            (Some(m), None) => format!("matched on {m}"),
            (None, None) => String::new(),
        },
        link: None,
        link_reason: None,
        link_since: None,
        active_alarms: Vec::new(),
        messages: 0,
        observations: 0,
        errors: 0,
        duplicates: 0,
        last_seen: None,
        device_clock: "ok",
        device_clock_offset_s: None,
        clock_untrusted_us: None,
        last_seen_us: None,
        silent_after: d.silent_after,
        last_error: None,
    }
}

impl LiveState {
    pub fn new(beds: &[Bed], devices: &[Device]) -> Self {
        let mut inner = Inner::default();
        for b in beds {
            inner
                .beds
                .insert(b.id.clone(), (b.clone(), BTreeMap::new()));
        }
        for d in devices {
            inner.devices.insert(d.id.clone(), device_view(d));
        }
        Self {
            inner: Mutex::new(inner),
            clock_settle_us: std::sync::atomic::AtomicI64::new(30_000_000),
            waves: crate::waves::WaveformRing::new(),
        }
    }

    /// Sets how long a device stays `unsynced` after its last untrusted device time
    /// (`alarms.device_clock.settle_s`).
    pub fn with_clock_settle_s(self, settle_s: u32) -> Self {
        self.set_clock_settle_s(settle_s);
        self
    }

    /// As [`LiveState::with_clock_settle_s`], on a running gateway (a config reload).
    pub fn set_clock_settle_s(&self, settle_s: u32) {
        self.clock_settle_us.store(
            i64::from(settle_s) * 1_000_000,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// A configuration reload: beds and devices that stay keep their values, counters, link
    /// and console history; a device whose bed, protocol or identity changed starts afresh
    /// (its counters belonged to the old one); new ones start `waiting`; removed ones go.
    pub fn reconfigure(&self, beds: &[Bed], devices: &[Device]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut old_beds = std::mem::take(&mut inner.beds);
        // A bed keeps only the values of devices that are still configured at it: a value
        // from a device that moved to another bed must not show under this one.
        let at_bed: std::collections::BTreeSet<(&str, &str)> = devices
            .iter()
            .map(|d| (d.bed.as_str(), d.id.as_str()))
            .collect();
        for b in beds {
            let mut values = old_beds
                .remove(&b.id)
                .map(|(_, values)| values)
                .unwrap_or_default();
            values.retain(|_, v| at_bed.contains(&(b.id.as_str(), v.device_id.as_str())));
            inner.beds.insert(b.id.clone(), (b.clone(), values));
        }
        let mut old_devices = std::mem::take(&mut inner.devices);
        for d in devices {
            let fresh = device_view(d);
            let view = match old_devices.remove(&d.id) {
                Some(mut old)
                    if old.bed == fresh.bed
                        && old.protocol == fresh.protocol
                        && old.identity == fresh.identity =>
                {
                    old.silent_after = fresh.silent_after;
                    old
                }
                _ => fresh,
            };
            inner.devices.insert(d.id.clone(), view);
        }
        for gone in old_devices.keys() {
            inner.exchanges.remove(gone);
            inner.rejected.remove(gone);
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// A message of `device_id` and the answer sent (bounded: the last
    /// [`EXCHANGES_PER_DEVICE`], each cut to [`EXCHANGE_MAX_BYTES`]).
    pub fn record_exchange(&self, device_id: &str, received_us: i64, message: &[u8], ack: &str) {
        let cut =
            |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(EXCHANGE_MAX_BYTES)]).into_owned();
        let ack_code = ack
            .split('\r')
            .find(|seg| seg.starts_with("MSA|"))
            .and_then(|seg| seg.split('|').nth(1))
            .unwrap_or_default()
            .to_owned();
        let exchange = Exchange {
            received: rfc3339(received_us),
            received_us,
            message: cut(message),
            message_len: message.len(),
            ack_code,
            ack: cut(ack.as_bytes()),
        };
        self.with(|inner| {
            if !inner.devices.contains_key(device_id) {
                return;
            }
            let keep = |map: &mut BTreeMap<String, std::collections::VecDeque<Exchange>>,
                        e: Exchange| {
                let q = map.entry(device_id.to_owned()).or_default();
                if q.len() == EXCHANGES_PER_DEVICE {
                    q.pop_front();
                }
                q.push_back(e);
            };
            if exchange.ack_code != "AA" {
                keep(&mut inner.rejected, exchange.clone());
            }
            keep(&mut inner.exchanges, exchange);
        });
    }

    /// The last rejected messages (AE/AR) of `device_id`, newest first.
    pub fn rejected_exchanges(&self, device_id: &str) -> Vec<Exchange> {
        self.with(|inner| {
            inner
                .rejected
                .get(device_id)
                .map(|q| q.iter().rev().cloned().collect())
                .unwrap_or_default()
        })
    }

    /// The last messages of `device_id` and their answers, newest first; `None` for a device
    /// the config does not have.
    pub fn exchanges(&self, device_id: &str) -> Option<Vec<Exchange>> {
        self.with(|inner| {
            inner.devices.contains_key(device_id).then(|| {
                inner
                    .exchanges
                    .get(device_id)
                    .map(|q| q.iter().rev().cloned().collect())
                    .unwrap_or_default()
            })
        })
    }

    /// A decoded message from a device: counts it and records its latest values.
    pub fn record_message(&self, device_id: &str, bed: &str, obs: &[Observation], now_us: i64) {
        self.with(|inner| {
            if let Some(d) = inner.devices.get_mut(device_id) {
                d.messages += 1;
                d.observations += obs.len() as u64;
                d.last_seen_us = Some(now_us);
                if let Some(o) = obs.iter().find(|o| o.device_time_untrusted) {
                    d.clock_untrusted_us = Some(now_us);
                    d.device_clock_offset_s = o
                        .device_time_us
                        .map(|t| t.saturating_sub(o.receive_time_us) / 1_000_000);
                }
            }
            if let Some((_, values)) = inner.beds.get_mut(bed) {
                for o in obs {
                    // Latest by the value's own (checked) time: a late (out-of-order) value does
                    // not replace a newer one, and an untrusted device time counts as its
                    // receive time (a reading dated 2099 never pins the card).
                    let at = if o.device_time_untrusted {
                        o.receive_time_us
                    } else {
                        o.device_time_us.unwrap_or(o.receive_time_us)
                    };
                    let newer = values
                        .get(&o.mdc_code)
                        .map(|v| at >= v.event_time_us || v.device_id != o.device_id)
                        .unwrap_or(true);
                    if !newer {
                        continue;
                    }
                    values.insert(
                        o.mdc_code,
                        ValueView {
                            mdc_code: o.mdc_code,
                            refid: o.mdc_refid.clone(),
                            display: display_name(o),
                            value: o.value,
                            value_text: o.value_text.clone(),
                            unit: o.unit_ucum.clone(),
                            status: status_name(o.status).into(),
                            device_id: o.device_id.clone(),
                            device_time: o.device_time_us.map(rfc3339),
                            receive_time: rfc3339(o.receive_time_us),
                            receive_time_us: o.receive_time_us,
                            event_time_us: at,
                        },
                    );
                }
            }
        });
    }

    pub fn record_error(&self, device_id: &str, error: &str) {
        self.with(|inner| {
            if let Some(d) = inner.devices.get_mut(device_id) {
                d.errors += 1;
                d.last_error = Some(error.to_owned());
            }
        });
    }

    pub fn set_link(
        &self,
        device_id: &str,
        state: crate::domain::LinkState,
        reason: Option<String>,
    ) {
        self.with(|inner| {
            if let Some(d) = inner.devices.get_mut(device_id) {
                if d.link != Some(state) {
                    d.link_since = Some(rfc3339(crate::clock::now_us()));
                }
                d.link = Some(state);
                d.link_reason = reason;
            }
        });
    }

    /// An alarm state change of a device: adds it to, or removes it from, the active list.
    pub fn record_alarm(&self, device_id: &str, alarm: &icu_protos::v1::Alarm) {
        self.with(|inner| {
            if let Some(d) = inner.devices.get_mut(device_id) {
                d.active_alarms.retain(|a| a.condition != alarm.source);
                if alarm.state == "active" {
                    d.active_alarms.push(AlarmView {
                        alarm_id: alarm.alarm_id.clone(),
                        device_id: device_id.to_owned(),
                        condition: alarm.source.clone(),
                        text: alarm.text.clone(),
                        priority: alarm.priority.clone(),
                        alert_type: alarm.alert_type.clone(),
                        since: rfc3339(alarm.event_time_us),
                    });
                }
            }
        });
    }

    pub fn record_duplicate(&self, device_id: &str) {
        self.with(|inner| {
            if let Some(d) = inner.devices.get_mut(device_id) {
                d.duplicates += 1;
            }
        });
    }

    pub fn beds(&self) -> Vec<BedView> {
        self.with(|inner| {
            inner
                .beds
                .values()
                .map(|(bed, values)| BedView {
                    id: bed.id.clone(),
                    label: bed.label.clone(),
                    devices: inner
                        .devices
                        .values()
                        .filter(|d| d.bed == bed.id)
                        .map(|d| d.id.clone())
                        .collect(),
                    values: values.values().cloned().collect(),
                    alarms: {
                        let mut a: Vec<AlarmView> = inner
                            .devices
                            .values()
                            .filter(|d| d.bed == bed.id)
                            .flat_map(|d| d.active_alarms.iter().cloned())
                            .collect();
                        a.sort_by_key(|x| priority_rank(&x.priority));
                        a
                    },
                })
                .collect()
        })
    }

    pub fn devices(&self, now_us: i64) -> Vec<DeviceView> {
        self.with(|inner| {
            inner
                .devices
                .values()
                .map(|d| {
                    let mut d = d.clone();
                    d.last_seen = d.last_seen_us.map(rfc3339);
                    let unsynced = d.clock_untrusted_us.is_some_and(|t| {
                        now_us - t
                            < self
                                .clock_settle_us
                                .load(std::sync::atomic::Ordering::Relaxed)
                    });
                    d.device_clock = if unsynced { "unsynced" } else { "ok" };
                    d.state = match d.last_seen_us {
                        None => "waiting".into(),
                        Some(t) if now_us - t > d.silent_after.as_micros() as i64 => {
                            "silent".into()
                        }
                        Some(_) => "online".into(),
                    };
                    d
                })
                .collect()
        })
    }
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "PH" => 0,
        "PM" => 1,
        "PL" => 2,
        _ => 3,
    }
}

/// Human name of a parameter for the page (terminology display, else the MDC reference id).
fn display_name(o: &Observation) -> String {
    icu_drivers::terminology::Terminology::builtin()
        .by_mdc(o.mdc_code)
        .map(|t| t.display.clone())
        .unwrap_or_else(|| {
            if o.mdc_refid.is_empty() {
                o.mdc_code.to_string()
            } else {
                o.mdc_refid.clone()
            }
        })
}
