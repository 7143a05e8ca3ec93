//! The Prometheus text format of [`super::Figures`] (`/metrics`): every metric with its HELP and
//! TYPE lines, in a fixed order.

use icu_cloud_bridge::bridge::BridgeState;
use icu_outbox::Stream;

use super::{Figures, TransportFigures, REFUSAL_REASONS};

/// A sample value as the text format writes it (`+Inf`, `-Inf`, `NaN`, integers without a
/// fraction).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Escapes a label value (backslash, double quote, line feed).
pub(super) fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text being written.
pub(super) struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        use std::fmt::Write as _;
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", format_value(v));
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    /// A family with one sample per transport.
    fn per_transport(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        ingest: &[TransportFigures],
        value: impl Fn(&TransportFigures) -> f64,
    ) {
        self.family(name, kind, help);
        for t in ingest {
            self.sample(name, &[("transport", t.transport.as_str())], value(t));
        }
    }
}

pub(super) fn state_label(s: &BridgeState) -> &'static str {
    s.name()
}

/// Renders the figures in the Prometheus text exposition format 0.0.4.
pub fn render(f: &Figures) -> String {
    let mut t = Text(String::with_capacity(8 * 1024));
    t.family("icu_gateway_info", "gauge", "The gateway; always 1.");
    t.sample("icu_gateway_info", &[("gateway_id", &f.gateway_id)], 1.0);
    t.single(
        "icu_gateway_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
        f.uptime_s,
    );

    let n = |v: u64| v as f64;
    t.per_transport(
        "icu_ingest_observations_total",
        "counter",
        "Observations committed to the store (acknowledged upstream), per transport.",
        &f.ingest,
        |x| n(x.observations),
    );
    t.per_transport(
        "icu_ingest_messages_total",
        "counter",
        "Messages committed to the store, per transport.",
        &f.ingest,
        |x| n(x.messages),
    );
    t.per_transport(
        "icu_ingest_duplicate_messages_total",
        "counter",
        "Retried messages recognised as already stored (acknowledged, not stored again).",
        &f.ingest,
        |x| n(x.duplicates),
    );
    t.family(
        "icu_ingest_refused_total",
        "counter",
        "Messages the store refused (the sender was told and sends again), per transport and reason.",
    );
    for x in &f.ingest {
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            t.sample(
                "icu_ingest_refused_total",
                &[("transport", x.transport.as_str()), ("reason", reason)],
                n(x.refused[i]),
            );
        }
    }
    t.per_transport(
        "icu_ingest_observations_per_second",
        "gauge",
        "Observations committed per second over the last 60 s, per transport.",
        &f.ingest,
        |x| x.observations_per_s,
    );

    // The outbox and the store's contents (absent when the store did not answer).
    t.single(
        "icu_store_up",
        "gauge",
        "1 when the store answered the metrics query.",
        if f.store.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(s) = &f.store {
        t.family(
            "icu_outbox_unsent_records",
            "gauge",
            "Outbox depth: records stored and not yet confirmed by Kafka, per stream.",
        );
        for stream in Stream::ALL {
            let depth = s
                .unsent
                .iter()
                .filter(|(k, _)| *k == stream)
                .map(|(_, c)| *c)
                .sum::<u64>();
            t.sample(
                "icu_outbox_unsent_records",
                &[("stream", stream.as_str())],
                n(depth),
            );
        }
        let age = s
            .oldest_unsent_us
            .map(|o| (f.now_us.saturating_sub(o)).max(0) as f64 / 1e6)
            .unwrap_or(0.0);
        t.single(
            "icu_outbox_oldest_unsent_age_seconds",
            "gauge",
            "Age of the oldest unsent record (by gateway receive time); 0 when the outbox is empty.",
            age,
        );
        t.single(
            "icu_store_records",
            "gauge",
            "Records in the store, sent and unsent, every stream.",
            n(s.records),
        );
        t.single(
            "icu_dead_letters_stored",
            "gauge",
            "Rejected inputs kept in the dead-letter table.",
            n(s.dead_letters),
        );
    }

    // The bridge.
    let b = &f.bridge;
    t.family(
        "icu_bridge_state",
        "gauge",
        "1 for the bridge's current state (disabled, connecting, online, offline, topic_missing, auth_failed, tls_failed).",
    );
    let current = state_label(&b.state);
    for s in [
        "disabled",
        "connecting",
        "online",
        "offline",
        "topic_missing",
        "auth_failed",
        "tls_failed",
    ] {
        t.sample(
            "icu_bridge_state",
            &[("state", s)],
            if s == current { 1.0 } else { 0.0 },
        );
    }
    t.single(
        "icu_bridge_forwarded_records_total",
        "counter",
        "Kafka records (bundles) delivered and marked sent.",
        n(b.forwarded_records),
    );
    t.single(
        "icu_bridge_forwarded_observations_total",
        "counter",
        "Observations in the Kafka records delivered and marked sent.",
        n(b.forwarded_observations),
    );
    t.single(
        "icu_bridge_forwarded_records_per_second",
        "gauge",
        "Kafka records delivered per second over the last 60 s.",
        b.records_per_s,
    );
    t.single(
        "icu_bridge_forwarded_observations_per_second",
        "gauge",
        "Observations delivered to Kafka per second over the last 60 s.",
        b.observations_per_s,
    );
    t.single(
        "icu_bridge_in_flight_records",
        "gauge",
        "Kafka records produced and awaiting their delivery report.",
        n(b.in_flight),
    );
    t.single(
        "icu_bridge_delivery_errors_total",
        "counter",
        "Kafka records whose delivery failed (they stay in the outbox and are sent again).",
        n(b.delivery_errors),
    );
    t.single(
        "icu_bridge_broker_errors_total",
        "counter",
        "Forwarding cycles that failed before producing (brokers unreachable, topic missing).",
        n(b.broker_errors),
    );
    t.single(
        "icu_bridge_outbox_errors_total",
        "counter",
        "Failed outbox reads or mark-sent calls of the bridge.",
        n(b.outbox_errors),
    );

    // Store writes and the disk budget.
    let c = &f.store_counters;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    for (name, kind, help, v) in [
        (
            "icu_store_commits_total",
            "counter",
            "Group commits run by the store.",
            n(c.commits),
        ),
        (
            "icu_store_write_failures_total",
            "counter",
            "Write requests that failed (disk budget, I/O); nothing of them was stored.",
            n(c.failed),
        ),
        (
            "icu_store_refused_overload_total",
            "counter",
            "Write requests refused because too many were waiting for the disk.",
            n(c.refused_overload),
        ),
        (
            "icu_store_refused_budget_total",
            "counter",
            "Write requests refused because the disk budget was reached (part of the write failures).",
            n(c.refused_budget),
        ),
        (
            "icu_store_pruned_sent_records_total",
            "counter",
            "Forwarded records deleted to stay under the disk budget.",
            n(c.pruned_sent_records),
        ),
        (
            "icu_store_pruned_unsent_observations_total",
            "counter",
            "Unsent observations deleted to make room (store.on_full = drop_oldest_unsent): data lost.",
            n(c.pruned_unsent_observations),
        ),
        (
            "icu_store_pruned_dead_letters_total",
            "counter",
            "Forwarded dead-letter rows deleted to stay under the disk budget.",
            n(c.pruned_dead_letters),
        ),
        (
            "icu_store_refused_dead_letters_total",
            "counter",
            "Dead letters refused at the disk budget's high-water mark: rejected input not kept (part of the budget refusals).",
            n(c.refused_dead_letters),
        ),
        (
            "icu_store_disk_usage_bytes",
            "gauge",
            "Bytes in use as the disk budget counts them (pages in use plus the write-ahead log).",
            n(c.used_bytes),
        ),
        (
            "icu_store_file_bytes",
            "gauge",
            "Bytes of the store's files (database plus write-ahead log; freed pages are reused, not returned).",
            n(f.file_bytes),
        ),
        (
            "icu_store_disk_budget_bytes",
            "gauge",
            "The store's disk budget (store.disk_budget_mb).",
            n(c.budget_bytes),
        ),
        (
            "icu_store_high_water_bytes",
            "gauge",
            "Above this many bytes in use the store prunes forwarded records.",
            n(c.high_water_bytes),
        ),
        (
            "icu_store_budget_full",
            "gauge",
            "1 while the disk budget is reached and new readings are refused.",
            flag(c.full),
        ),
        (
            "icu_store_pruning",
            "gauge",
            "1 between crossing the high-water mark and getting back to the low-water mark.",
            flag(c.pruning),
        ),
        (
            "icu_store_free_budget_bytes",
            "gauge",
            "Budget bytes left for unsent readings: budget less bytes in use, plus forwarded records (pruned to make room).",
            f.free_budget_bytes(),
        ),
    ] {
        t.single(name, kind, help, v);
    }
    t.single(
        "icu_store_bytes_per_record",
        "gauge",
        "Bytes one stored record takes (pages in use / records; 256 until 1000 records are stored).",
        f.bytes_per_record(),
    );
    t.single(
        "icu_buffer_hours_left",
        "gauge",
        "Hours until the free budget is full at the ingest rate of the last 60 s; +Inf when nothing is ingested.",
        f.buffer_hours_left(),
    );
    let m = &f.mllp;
    for (name, help, label_values) in [
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
        t.family(name, "counter", help);
        for (reason, v) in label_values {
            t.sample(name, &[("reason", reason)], n(v));
        }
    }
    t.single(
        "icu_mllp_accept_errors_total",
        "counter",
        "Failed accept calls of the MLLP listener (each followed by a pause of 10 ms to 1 s).",
        n(m.accept_errors),
    );
    t.single(
        "icu_mllp_peers_refused_total",
        "counter",
        "Messages refused because their sender's address is not allowed (devices[].allow_from, adt.allow_from).",
        n(m.peers_refused),
    );
    t.0
}
