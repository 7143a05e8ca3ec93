//! The exposition of [`super::Figures`] (`/metrics`): a `prometheus` registry filled at each
//! scrape (counters and gauges from the snapshot, the long-lived histograms, the process
//! collector) and written by its text encoder (format 0.0.4), families in name order.

use icu_cloud_bridge::bridge::BridgeState;
use icu_outbox::Stream;
use prometheus::core::Collector;
use prometheus::{CounterVec, Encoder as _, GaugeVec, Opts, Registry, TextEncoder};

use super::{Figures, REFUSAL_REASONS};

/// Every state the bridge can be in, as the `state` label says it.
const BRIDGE_STATES: [&str; 7] = [
    "disabled",
    "connecting",
    "online",
    "offline",
    "topic_missing",
    "auth_failed",
    "tls_failed",
];

/// The registry being filled for one scrape. A family that cannot be made (a bug: a name or
/// label the format does not allow) is logged and left out, never a failed scrape.
struct Out {
    registry: Registry,
}

impl Out {
    fn add(&self, name: &str, c: Box<dyn Collector>) {
        if let Err(e) = self.registry.register(c) {
            tracing::error!(metric = name, error = %e, "metrics: family left out");
        }
    }

    /// A counter family: one sample per `(label values, value)`.
    fn counter(&self, name: &str, help: &str, labels: &[&str], samples: &[(&[&str], f64)]) {
        match CounterVec::new(Opts::new(name, help), labels) {
            Ok(vec) => {
                for (values, v) in samples {
                    vec.with_label_values(values).inc_by(v.max(0.0));
                }
                self.add(name, Box::new(vec));
            }
            Err(e) => tracing::error!(metric = name, error = %e, "metrics: family left out"),
        }
    }

    /// A gauge family: one sample per `(label values, value)`.
    fn gauge(&self, name: &str, help: &str, labels: &[&str], samples: &[(&[&str], f64)]) {
        match GaugeVec::new(Opts::new(name, help), labels) {
            Ok(vec) => {
                for (values, v) in samples {
                    vec.with_label_values(values).set(*v);
                }
                self.add(name, Box::new(vec));
            }
            Err(e) => tracing::error!(metric = name, error = %e, "metrics: family left out"),
        }
    }

    fn single_counter(&self, name: &str, help: &str, v: u64) {
        self.counter(name, help, &[], &[(&[], v as f64)]);
    }

    fn single_gauge(&self, name: &str, help: &str, v: f64) {
        self.gauge(name, help, &[], &[(&[], v)]);
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

pub(super) fn state_label(s: &BridgeState) -> &'static str {
    s.name()
}

/// Renders the figures in the Prometheus text exposition format 0.0.4.
pub fn render(f: &Figures) -> String {
    let out = Out {
        registry: Registry::new(),
    };
    gateway(&out, f);
    ingest(&out, f);
    devices(&out, f);
    store_contents(&out, f);
    bridge(&out, f);
    store_writes(&out, f);
    mllp(&out, f);
    let l = &f.latencies;
    out.add("icu_ack_latency_seconds", Box::new(l.ack.clone()));
    out.add(
        "icu_store_commit_latency_seconds",
        Box::new(l.commit.clone()),
    );
    out.add(
        "icu_alarm_path_latency_seconds",
        Box::new(l.alarm_path.clone()),
    );
    out.add(
        "icu_bridge_delivery_latency_seconds",
        Box::new(l.delivery.clone()),
    );
    #[cfg(target_os = "linux")]
    out.add(
        "process",
        Box::new(prometheus::process_collector::ProcessCollector::for_self()),
    );
    let mut text = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&out.registry.gather(), &mut text) {
        tracing::error!(error = %e, "metrics: encoding failed");
    }
    String::from_utf8(text).unwrap_or_default()
}

fn gateway(out: &Out, f: &Figures) {
    out.gauge(
        "icu_gateway_info",
        "The gateway; always 1.",
        &["gateway_id"],
        &[(&[&f.gateway_id], 1.0)],
    );
    out.single_gauge(
        "icu_gateway_uptime_seconds",
        "Seconds since the gateway started.",
        f.uptime_s,
    );
    if let Some(left) = f.tls_expiry_s {
        out.gauge(
            "icu_tls_certificate_expiry_seconds",
            "Seconds until the gateway's TLS certificate expires (negative: expired).",
            &["cert"],
            &[(&["gateway"], left as f64)],
        );
    }
}

fn ingest(out: &Out, f: &Figures) {
    let per_transport = |name: &str, help: &str, value: &dyn Fn(usize) -> u64| {
        let samples: Vec<([&str; 1], f64)> = f
            .ingest
            .iter()
            .enumerate()
            .map(|(i, t)| ([t.transport.as_str()], value(i) as f64))
            .collect();
        let samples: Vec<(&[&str], f64)> = samples.iter().map(|(l, v)| (&l[..], *v)).collect();
        out.counter(name, help, &["transport"], &samples);
    };
    per_transport(
        "icu_ingest_observations_total",
        "Observations committed to the store (acknowledged upstream), per transport.",
        &|i| f.ingest[i].observations,
    );
    per_transport(
        "icu_ingest_messages_total",
        "Messages committed to the store, per transport.",
        &|i| f.ingest[i].messages,
    );
    per_transport(
        "icu_ingest_duplicate_messages_total",
        "Retried messages recognised as already stored (acknowledged, not stored again).",
        &|i| f.ingest[i].duplicates,
    );
    let labels: Vec<([&str; 2], f64)> = f
        .ingest
        .iter()
        .flat_map(|x| {
            REFUSAL_REASONS
                .iter()
                .enumerate()
                .map(move |(i, reason)| ([x.transport.as_str(), *reason], x.refused[i] as f64))
        })
        .collect();
    let samples: Vec<(&[&str], f64)> = labels.iter().map(|(l, v)| (&l[..], *v)).collect();
    out.counter(
        "icu_ingest_refused_total",
        "Messages the store refused (the sender was told and sends again), per transport and reason.",
        &["transport", "reason"],
        &samples,
    );
}

/// One series per configured device (the live view knows no other).
fn devices(out: &Out, f: &Figures) {
    let labels: Vec<[&str; 2]> = f
        .devices
        .iter()
        .map(|d| [d.device.as_str(), d.bed.as_str()])
        .collect();
    let each = |value: &dyn Fn(usize) -> Option<f64>| -> Vec<(&[&str], f64)> {
        labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| value(i).map(|v| (&l[..], v)))
            .collect()
    };
    let d = &f.devices;
    out.gauge(
        "icu_device_up",
        "1 while the device sends (data within its silent_after), 0 when silent or never heard from.",
        &["device", "bed"],
        &each(&|i| Some(flag(d[i].up))),
    );
    out.gauge(
        "icu_device_last_seen_timestamp_seconds",
        "Unix time of the device's last message (absent until it sent one).",
        &["device", "bed"],
        &each(&|i| d[i].last_seen_us.map(|us| us as f64 / 1e6)),
    );
    out.counter(
        "icu_device_messages_total",
        "Messages received from the device (first sight; retries not counted).",
        &["device", "bed"],
        &each(&|i| Some(d[i].messages as f64)),
    );
    out.counter(
        "icu_device_errors_total",
        "Messages of the device refused or rejected (decode errors, refused senders, store refusals).",
        &["device", "bed"],
        &each(&|i| Some(d[i].errors as f64)),
    );
}

/// The outbox and the store's contents (absent when the store did not answer).
fn store_contents(out: &Out, f: &Figures) {
    out.single_gauge(
        "icu_store_up",
        "1 when the store answered the metrics query.",
        flag(f.store.is_some()),
    );
    let Some(s) = &f.store else { return };
    let depths: Vec<([&str; 1], f64)> = Stream::ALL
        .iter()
        .map(|stream| {
            let depth: u64 = s
                .unsent
                .iter()
                .filter(|(k, _)| k == stream)
                .map(|(_, c)| *c)
                .sum();
            ([stream.as_str()], depth as f64)
        })
        .collect();
    let samples: Vec<(&[&str], f64)> = depths.iter().map(|(l, v)| (&l[..], *v)).collect();
    out.gauge(
        "icu_outbox_unsent_records",
        "Outbox depth: records stored and not yet confirmed by Kafka, per stream.",
        &["stream"],
        &samples,
    );
    let age = s
        .oldest_unsent_us
        .map(|o| (f.now_us.saturating_sub(o)).max(0) as f64 / 1e6)
        .unwrap_or(0.0);
    out.single_gauge(
        "icu_outbox_oldest_unsent_age_seconds",
        "Age of the oldest unsent record (by gateway receive time); 0 when the outbox is empty.",
        age,
    );
    out.single_gauge(
        "icu_store_records",
        "Records in the store, sent and unsent, every stream.",
        s.records as f64,
    );
    out.single_gauge(
        "icu_dead_letters_stored",
        "Rejected inputs kept in the dead-letter table.",
        s.dead_letters as f64,
    );
}

fn bridge(out: &Out, f: &Figures) {
    let b = &f.bridge;
    let current = state_label(&b.state);
    let states: Vec<([&str; 1], f64)> = BRIDGE_STATES
        .iter()
        .map(|s| ([*s], flag(*s == current)))
        .collect();
    let samples: Vec<(&[&str], f64)> = states.iter().map(|(l, v)| (&l[..], *v)).collect();
    out.gauge(
        "icu_bridge_state",
        "1 for the bridge's current state (disabled, connecting, online, offline, topic_missing, auth_failed, tls_failed).",
        &["state"],
        &samples,
    );
    for (name, help, v) in [
        (
            "icu_bridge_forwarded_records_total",
            "Kafka records (bundles) delivered and marked sent.",
            b.forwarded_records,
        ),
        (
            "icu_bridge_forwarded_observations_total",
            "Observations in the Kafka records delivered and marked sent.",
            b.forwarded_observations,
        ),
        (
            "icu_bridge_delivery_errors_total",
            "Kafka records whose delivery failed (they stay in the outbox and are sent again).",
            b.delivery_errors,
        ),
        (
            "icu_bridge_broker_errors_total",
            "Forwarding cycles that failed before producing (brokers unreachable, topic missing).",
            b.broker_errors,
        ),
        (
            "icu_bridge_outbox_errors_total",
            "Failed outbox reads or mark-sent calls of the bridge.",
            b.outbox_errors,
        ),
    ] {
        out.single_counter(name, help, v);
    }
    out.single_gauge(
        "icu_bridge_in_flight_records",
        "Kafka records produced and awaiting their delivery report.",
        b.in_flight as f64,
    );
}

/// Store writes and the disk budget.
fn store_writes(out: &Out, f: &Figures) {
    let c = &f.store_counters;
    for (name, help, v) in [
        (
            "icu_store_commits_total",
            "Group commits run by the store.",
            c.commits,
        ),
        (
            "icu_store_write_failures_total",
            "Write requests that failed (disk budget, I/O); nothing of them was stored.",
            c.failed,
        ),
        (
            "icu_store_refused_overload_total",
            "Write requests refused because too many were waiting for the disk.",
            c.refused_overload,
        ),
        (
            "icu_store_refused_budget_total",
            "Write requests refused because the disk budget was reached (part of the write failures).",
            c.refused_budget,
        ),
        (
            "icu_store_pruned_sent_records_total",
            "Forwarded records deleted to stay under the disk budget.",
            c.pruned_sent_records,
        ),
        (
            "icu_store_pruned_unsent_observations_total",
            "Unsent observations deleted to make room (store.on_full = drop_oldest_unsent): data lost.",
            c.pruned_unsent_observations,
        ),
        (
            "icu_store_pruned_dead_letters_total",
            "Forwarded dead-letter rows deleted to stay under the disk budget.",
            c.pruned_dead_letters,
        ),
        (
            "icu_store_refused_dead_letters_total",
            "Dead letters refused at the disk budget's high-water mark: rejected input not kept (part of the budget refusals).",
            c.refused_dead_letters,
        ),
        (
            "icu_waveform_segments_not_stored_total",
            "Waveform segments of stored messages not kept: the store was at its waveform limit.",
            c.waveforms.segments_not_stored,
        ),
        (
            "icu_waveform_rows_pruned_unsent_total",
            "Unsent waveform segments deleted to make room for readings and alarms: curves lost.",
            c.waveforms.pruned_unsent,
        ),
    ] {
        out.single_counter(name, help, v);
    }
    for (name, help, v) in [
        (
            "icu_store_disk_usage_bytes",
            "Bytes in use as the disk budget counts them (pages in use plus the write-ahead log).",
            c.used_bytes as f64,
        ),
        (
            "icu_store_file_bytes",
            "Bytes of the store's files (database plus write-ahead log; freed pages are reused, not returned).",
            f.file_bytes as f64,
        ),
        (
            "icu_store_disk_budget_bytes",
            "The store's disk budget (store.disk_budget_mb).",
            c.budget_bytes as f64,
        ),
        (
            "icu_store_high_water_bytes",
            "Above this many bytes in use the store prunes forwarded records.",
            c.high_water_bytes as f64,
        ),
        (
            "icu_store_budget_full",
            "1 while the disk budget is reached and new readings are refused.",
            flag(c.full),
        ),
        (
            "icu_store_pruning",
            "1 between crossing the high-water mark and getting back to the low-water mark.",
            flag(c.pruning),
        ),
        (
            "icu_store_free_budget_bytes",
            "Budget bytes left for unsent readings: budget less bytes in use, plus forwarded records (pruned to make room).",
            f.free_budget_bytes(),
        ),
        (
            "icu_store_bytes_per_record",
            "Bytes one stored record takes (pages in use / records; 256 until 1000 records are stored).",
            f.bytes_per_record(),
        ),
        (
            "icu_buffer_left_seconds",
            "Seconds until the free budget is full at the ingest rate of the last 60 s; +Inf when nothing is ingested.",
            f.buffer_hours_left() * 3600.0,
        ),
    ] {
        out.single_gauge(name, help, v);
    }
}

fn mllp(out: &Out, f: &Figures) {
    let m = &f.mllp;
    for (name, help, [(a, va), (b, vb)]) in [
        (
            "icu_mllp_connections_refused_total",
            "MLLP connections closed at once because a cap was reached (mllp.max_connections, mllp.max_connections_per_address).",
            [
                ("max_connections", m.refused_max_connections),
                ("per_address", m.refused_per_address),
            ],
        ),
        (
            "icu_mllp_connections_timed_out_total",
            "MLLP connections closed by the frame or idle timeout (mllp.frame_timeout_s, mllp.idle_timeout_s).",
            [("frame", m.frame_timeouts), ("idle", m.idle_timeouts)],
        ),
    ] {
        out.counter(
            name,
            help,
            &["reason"],
            &[(&[a], va as f64), (&[b], vb as f64)],
        );
    }
    out.single_counter(
        "icu_mllp_accept_errors_total",
        "Failed accept calls of the MLLP listener (each followed by a pause of 10 ms to 1 s).",
        m.accept_errors,
    );
    out.single_counter(
        "icu_mllp_peers_refused_total",
        "Messages refused because their sender's address is not allowed (devices[].allow_from, adt.allow_from).",
        m.peers_refused,
    );
}
