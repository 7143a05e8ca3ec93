//! `/metrics`, `/readyz` and `/healthz` of a real `icu-gateway`, fed by the real `icu-sim` over
//! MLLP/TCP, scraped over HTTP and parsed as the Prometheus text format: the ingest counter is
//! exactly what was acknowledged (and so is the ACK-latency histogram's count), the outbox depth
//! is what is unsent (no Kafka configured), "hours of buffer left" is finite while readings
//! arrive and grows with the disk budget, and with Kafka the delivery-latency histogram counts
//! every forwarded observation.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use support::{config_text, run_sim_with, GatewayProc};

const MIB: f64 = 1024.0 * 1024.0;

/// Status code, headers (lower-cased names) and body of one HTTP GET.
fn http_get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{}Connection: close\r\n\r\n",
        if path.starts_with("/metrics") {
            icu_tests::http::token_header_line(addr)
        } else {
            icu_tests::http::auth_header_lines(addr)
        }
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// One scrape: every sample by `name{labels}` (labels as written), checked against the text
/// format (HELP and TYPE before the samples of each family, values that parse).
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut helped = HashSet::new();
        let mut types = BTreeMap::new();
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(!help.trim().is_empty(), "empty HELP: {line}");
                helped.insert(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(line);
                assert!(
                    matches!(kind, "counter" | "gauge" | "histogram"),
                    "unknown type: {line}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice: {line}"
                );
            } else {
                assert!(!line.starts_with('#'), "unexpected comment: {line}");
                let (series, value) = line.rsplit_once(' ').expect(line);
                let sample = series.split('{').next().unwrap();
                // A histogram's series carry its family name with a suffix.
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| sample.strip_suffix(s))
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                    .unwrap_or(sample);
                assert!(
                    types.contains_key(name) && helped.contains(name),
                    "sample before its HELP/TYPE: {line}"
                );
                if types[name] == "counter" {
                    assert!(name.ends_with("_total"), "counter without _total: {line}");
                }
                // Rust's float syntax (`inf`), which Prometheus' parser takes as well.
                let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
                assert!(
                    samples.insert(series.to_owned(), v).is_none(),
                    "series twice: {line}"
                );
            }
        }
        Scrape {
            samples,
            types,
            text: text.to_owned(),
        }
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }
}

fn scrape(gw: &GatewayProc) -> Scrape {
    let (status, headers, body) = http_get(gw.endpoints.http, "/metrics");
    assert_eq!(status, 200, "{body}");
    let ct = headers.get("content-type").cloned().unwrap_or_default();
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content type {ct}"
    );
    Scrape::parse(&body)
}

fn start(dir: &std::path::Path, budget_mb: u64) -> GatewayProc {
    GatewayProc::start(
        dir,
        &config_text(dir, 2, None, &format!("disk_budget_mb = {budget_mb}")),
    )
}

/// Sends `messages` per bed from 2 beds; returns the observations acknowledged.
fn send(gw: &GatewayProc, messages: u64, seed: u64, manifest: &std::path::Path) -> u64 {
    let seed = seed.to_string();
    let sim = run_sim_with(
        gw.endpoints.mllp,
        2,
        messages,
        20.0,
        manifest,
        &["--seed", &seed],
    );
    assert!(sim.ok, "every message acknowledged AA:\n{}", sim.stdout);
    sim.accepted.len() as u64
}

const FAMILIES: &[&str] = &[
    "icu_gateway_info",
    "icu_gateway_uptime_seconds",
    "icu_ingest_observations_total",
    "icu_ingest_messages_total",
    "icu_ingest_duplicate_messages_total",
    "icu_ingest_refused_total",
    "icu_ack_latency_seconds",
    "icu_store_commit_latency_seconds",
    "icu_alarm_path_latency_seconds",
    "icu_bridge_delivery_latency_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "icu_outbox_unsent_records",
    "icu_outbox_oldest_unsent_age_seconds",
    "icu_bridge_state",
    "icu_bridge_forwarded_records_total",
    "icu_bridge_forwarded_observations_total",
    "icu_bridge_in_flight_records",
    "icu_bridge_delivery_errors_total",
    "icu_bridge_broker_errors_total",
    "icu_bridge_outbox_errors_total",
    "icu_store_up",
    "icu_store_commits_total",
    "icu_store_write_failures_total",
    "icu_store_refused_overload_total",
    "icu_store_records",
    "icu_dead_letters_stored",
    "icu_store_refused_budget_total",
    "icu_store_pruned_sent_records_total",
    "icu_store_pruned_unsent_observations_total",
    "icu_store_pruned_dead_letters_total",
    "icu_store_disk_usage_bytes",
    "icu_store_file_bytes",
    "icu_store_disk_budget_bytes",
    "icu_store_high_water_bytes",
    "icu_store_budget_full",
    "icu_store_pruning",
    "icu_store_bytes_per_record",
    "icu_store_free_budget_bytes",
    "icu_buffer_left_seconds",
];

const STREAMS: [&str; 4] = ["observations", "alarms", "adt", "deadletter"];

fn unsent(s: &Scrape, stream: &str) -> f64 {
    s.get(&format!("icu_outbox_unsent_records{{stream=\"{stream}\"}}"))
}

#[test]
fn metrics_show_ingest_outbox_and_buffer_hours_that_follow_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start(dir.path(), 64);

    // Liveness and readiness of a fresh gateway.
    let (status, _, body) = http_get(gw.endpoints.http, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = http_get(gw.endpoints.http, "/readyz");
    assert_eq!(status, 200, "ready: {body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");

    // Before any reading: every family is there, nothing ingested, infinite buffer.
    let before = scrape(&gw);
    for family in FAMILIES {
        assert!(
            before.types.contains_key(*family),
            "family {family} missing"
        );
    }
    for t in ["mllp", "serial", "mqtt"] {
        assert_eq!(
            before.get(&format!(
                "icu_ingest_observations_total{{transport=\"{t}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(before.get("icu_buffer_left_seconds"), f64::INFINITY);
    assert_eq!(before.get("icu_gateway_info{gateway_id=\"test-gw\"}"), 1.0);
    assert_eq!(before.get("icu_store_up"), 1.0);
    assert_eq!(before.get("icu_bridge_state{state=\"disabled\"}"), 1.0);
    assert_eq!(before.get("icu_store_disk_budget_bytes"), 64.0 * MIB);

    // Two beds, 30 messages each over about 1.5 s.
    let sent = send(&gw, 30, 1, &dir.path().join("manifest-1.jsonl"));
    assert!(sent > 0);
    let m = scrape(&gw);
    assert_eq!(
        m.get("icu_ingest_observations_total{transport=\"mllp\"}"),
        sent as f64,
        "ingest counter equals the observations acknowledged"
    );
    assert_eq!(m.get("icu_ingest_messages_total{transport=\"mllp\"}"), 60.0);
    for t in ["serial", "mqtt"] {
        assert_eq!(
            m.get(&format!(
                "icu_ingest_observations_total{{transport=\"{t}\"}}"
            )),
            0.0
        );
    }
    for reason in ["budget", "overload", "io", "closed"] {
        assert_eq!(
            m.get(&format!(
                "icu_ingest_refused_total{{reason=\"{reason}\",transport=\"mllp\"}}"
            )),
            0.0
        );
    }
    // Rates are PromQL's now (rate() on the counters); the ACK histogram saw every message.
    assert!(!m.text.contains("_per_second"), "no per-second gauges");
    // (Observed right after each ACK is written: the last may trail the sender's exit.)
    icu_tests::wait_for(Duration::from_secs(5), "60 ACK latencies", || {
        (scrape(&gw).get("icu_ack_latency_seconds_count{transport=\"mllp\"}") == 60.0).then_some(())
    })
    .expect("one ACK-latency observation per message");

    // No Kafka: every observation is still in the outbox, and nothing else holds records.
    assert_eq!(unsent(&m, "observations"), sent as f64, "outbox depth");
    let all_unsent: f64 = STREAMS.iter().map(|s| unsent(&m, s)).sum();
    assert_eq!(m.get("icu_store_records"), all_unsent, "nothing was sent");
    let status = gw.get_json("/api/status");
    assert_eq!(status["store"]["unsent"].as_f64(), Some(all_unsent));
    let age = m.get("icu_outbox_oldest_unsent_age_seconds");
    assert!((0.0..120.0).contains(&age), "oldest unsent age {age}");
    assert_eq!(m.get("icu_dead_letters_stored"), 0.0);
    assert!(m.get("icu_store_commits_total") >= 1.0);
    assert_eq!(m.get("icu_bridge_forwarded_observations_total"), 0.0);
    let used = m.get("icu_store_disk_usage_bytes");
    assert!(used > 0.0 && used < 64.0 * MIB, "bytes in use {used}");
    assert!(m.get("icu_store_file_bytes") > 0.0);
    assert_eq!(m.get("icu_store_budget_full"), 0.0);
    assert_eq!(
        m.get("icu_store_free_budget_bytes"),
        64.0 * MIB - used,
        "nothing forwarded: free is the budget less the bytes in use"
    );
    assert!(m.get("icu_store_bytes_per_record") >= 64.0);
    let small_budget_hours = m.get("icu_buffer_left_seconds") / 3600.0;
    assert!(
        small_budget_hours.is_finite() && small_budget_hours > 0.0,
        "buffer hours while ingesting: {small_budget_hours}"
    );

    // The same store with ten times the budget, the same load: many more hours.
    gw.stop();
    let mut gw = start(dir.path(), 640);
    let (status, _, body) = http_get(gw.endpoints.http, "/readyz");
    assert_eq!(status, 200, "ready after restart: {body}");
    let sent2 = send(&gw, 30, 2, &dir.path().join("manifest-2.jsonl"));
    let m2 = scrape(&gw);
    assert_eq!(
        m2.get("icu_ingest_observations_total{transport=\"mllp\"}"),
        sent2 as f64,
        "the counter starts again with the process"
    );
    assert_eq!(
        unsent(&m2, "observations"),
        (sent + sent2) as f64,
        "the outbox kept the first run"
    );
    assert_eq!(m2.get("icu_store_disk_budget_bytes"), 640.0 * MIB);
    let large_budget_hours = m2.get("icu_buffer_left_seconds") / 3600.0;
    eprintln!(
        "buffer hours: {small_budget_hours:.1} with 64 MiB, {large_budget_hours:.1} with 640 MiB \
         ({:.0} bytes/record, {:.0} bytes used)",
        m2.get("icu_store_bytes_per_record"),
        m2.get("icu_store_disk_usage_bytes")
    );
    assert!(
        large_budget_hours.is_finite() && large_budget_hours > 3.0 * small_budget_hours,
        "buffer hours {large_budget_hours} with 640 MiB against {small_budget_hours} with 64 MiB"
    );
    gw.stop();
}

#[test]
fn metrics_show_delivery_latency_and_an_empty_outbox_once_kafka_has_everything() {
    let broker = icu_tests::Broker::start().expect("broker");
    broker.create_topics(icu_tests::TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::keygen(dir.path());
    let gw = GatewayProc::start(
        dir.path(),
        &config_text(dir.path(), 2, Some(&broker.addr), ""),
    );
    let sent = send(&gw, 20, 3, &dir.path().join("manifest.jsonl"));

    // Everything acknowledged reaches Kafka: the outbox empties and the counters say so.
    let m = icu_tests::wait_for(Duration::from_secs(90), "observations forwarded", || {
        let m = scrape(&gw);
        (m.get("icu_bridge_forwarded_observations_total") >= sent as f64
            && unsent(&m, "observations") == 0.0)
            .then_some(m)
    })
    .expect("the outbox drains to kafka");
    assert_eq!(
        m.get("icu_bridge_forwarded_observations_total"),
        sent as f64,
        "each observation forwarded once"
    );
    assert!(m.get("icu_bridge_forwarded_records_total") >= 1.0);
    assert_eq!(m.get("icu_bridge_state{state=\"online\"}"), 1.0);
    assert_eq!(m.get("icu_bridge_state{state=\"disabled\"}"), 0.0);
    assert_eq!(m.get("icu_bridge_delivery_errors_total"), 0.0);
    assert_eq!(m.get("icu_outbox_oldest_unsent_age_seconds"), 0.0);
    assert!(
        m.get("icu_store_free_budget_bytes")
            > m.get("icu_store_disk_budget_bytes") - m.get("icu_store_disk_usage_bytes"),
        "forwarded records count as room (the store prunes them when it needs it)"
    );
    // The delivery-latency histogram saw each forwarded observation once, all within 60 s
    // (the forward rate is PromQL's rate() on the counters).
    assert_eq!(
        m.get("icu_bridge_delivery_latency_seconds_count"),
        sent as f64
    );
    assert_eq!(
        m.get("icu_bridge_delivery_latency_seconds_bucket{le=\"60\"}"),
        sent as f64
    );
    assert_eq!(
        m.get("icu_ingest_observations_total{transport=\"mllp\"}"),
        sent as f64
    );
}
