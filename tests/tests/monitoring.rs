//! The monitoring files shipped in `gateway/monitoring/` against `promtool` (Debian's
//! `prometheus` package, `ICU_PROMTOOL_BIN`, installed by `scripts/test`) and a real gateway:
//! the alert and recording rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`); the real `/metrics` of a gateway fed by `icu-sim` over MLLP passes
//! `promtool check metrics`; every metric the rules and the dashboard name exists in that
//! exposition (so they cannot rot); and the histograms counted what was fed.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{config_text, run_sim_with, GatewayProc, SPO2_LOW_ALARM};

fn promtool() -> Option<PathBuf> {
    icu_tests::tool_from_env("ICU_PROMTOOL_BIN")
}

fn monitoring() -> PathBuf {
    icu_tests::workspace_root().join("gateway/monitoring")
}

/// Runs promtool in `gateway/monitoring/` with `stdin`; exit code and everything it printed.
fn run(promtool: &Path, args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write as _;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(monitoring())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn alert_and_slo_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let (code, out) = run(&promtool, &["check", "rules", "alerts.yml", "slo.yml"], "");
    assert_eq!(code, 0, "promtool check rules:\n{out}");
    let (code, out) = run(
        &promtool,
        &["test", "rules", "alerts_test.yml", "slo_test.yml"],
        "",
    );
    assert_eq!(code, 0, "promtool test rules:\n{out}");
    // Every alert of the rule files is exercised by a unit test.
    let tests = std::fs::read_to_string(monitoring().join("alerts_test.yml")).unwrap()
        + &std::fs::read_to_string(monitoring().join("slo_test.yml")).unwrap();
    for file in ["alerts.yml", "slo.yml"] {
        let rules = std::fs::read_to_string(monitoring().join(file)).unwrap();
        for alert in rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
        {
            assert!(
                tests.contains(&format!("alertname: {alert}\n")),
                "alert {alert} of {file} has no unit test"
            );
        }
    }
}

/// The metric names an expression uses: `icu_*` and `process_*` (histogram series by their
/// family name) and the `icu:*` recorded series.
fn names_in(expr: &str, out: &mut BTreeSet<String>) {
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("icu_") || word.starts_with("icu:") || word.starts_with("process_") {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(&word);
            out.insert(family.to_owned());
        }
        word.clear();
    }
}

/// Family name → type, and every sample line's series → value, of an exposition.
fn parse(text: &str) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            samples.insert(series.to_owned(), value.parse().expect(line));
        }
    }
    (types, samples)
}

#[test]
fn a_real_exposition_passes_promtool_has_every_ruled_metric_and_counts_the_fed_messages() {
    let Some(promtool) = promtool() else { return };
    let dir = tempfile::tempdir().unwrap();
    // The harness's SpO2 limit raised to 100 % with no sustain: every simulated patient
    // crosses it, so each bed's first message raises an alarm.
    let alarms = SPO2_LOW_ALARM
        .replace("low = 90.0", "low = 100.0")
        .replace("sustain_s = 2", "sustain_s = 0");
    let config = config_text(dir.path(), 2, None, "").replacen(
        "[[beds]]",
        &format!("{alarms}\n[[beds]]"),
        1,
    );
    let gw = GatewayProc::start(dir.path(), &config);
    let scrape = || {
        let r = icu_tests::http::authed(gw.endpoints.http, "GET", "/metrics", None).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    // Idle (nothing ingested: the buffer left is +Inf, the histograms empty) it lints clean too.
    let idle = scrape();
    let (code, out) = run(&promtool, &["check", "metrics"], &idle);
    assert_eq!(code, 0, "promtool check metrics (idle):\n{out}\n{idle}");
    let sim = run_sim_with(
        gw.endpoints.mllp,
        2,
        10,
        50.0,
        &dir.path().join("manifest.jsonl"),
        &["--seed", "7"],
    );
    assert!(sim.ok, "every message acknowledged AA:\n{}", sim.stdout);
    // The alarm actor runs beside the ACK path, and each ACK's latency is observed once it is
    // written: wait until both beds' alarms and every ACK are counted.
    let text = icu_tests::wait_for(
        std::time::Duration::from_secs(10),
        "the alarms and every ACK counted",
        || {
            let text = scrape();
            let (_, s) = parse(&text);
            let acks = s.get(r#"icu_ack_latency_seconds_count{transport="mllp"}"#);
            (s.get("icu_alarm_path_latency_seconds_count") >= Some(&2.0) && acks == Some(&20.0))
                .then_some(text)
        },
    )
    .expect("the heart-rate alarms were raised");

    // promtool lints the real exposition (names, units, HELP, counter suffixes).
    let (code, out) = run(&promtool, &["check", "metrics"], &text);
    assert_eq!(code, 0, "promtool check metrics:\n{out}\n{text}");

    // Every metric the rules and the dashboard use exists (recorded series are defined in
    // slo.yml). Not in this exposition, by design: `up` (Prometheus makes it) and the
    // certificate expiry (only with a TLS certificate configured; e2e_tls checks it).
    let (types, s) = parse(&text);
    let mut used = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    for file in ["alerts.yml", "slo.yml"] {
        let rules = std::fs::read_to_string(monitoring().join(file)).unwrap();
        names_in(&rules, &mut used);
        recorded.extend(
            rules
                .lines()
                .filter_map(|l| l.trim().strip_prefix("- record: "))
                .map(str::to_owned),
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut in_dashboard = BTreeSet::new();
    for target in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
    {
        names_in(target["expr"].as_str().unwrap(), &mut in_dashboard);
    }
    assert!(in_dashboard.len() >= 20, "{in_dashboard:?}");
    used.extend(in_dashboard);
    for name in &used {
        if name.starts_with("icu:") {
            assert!(recorded.contains(name), "{name} is not recorded in slo.yml");
        } else if name != "icu_tls_certificate_expiry_seconds" {
            assert!(
                types.contains_key(name),
                "{name} is not in /metrics:\n{text}"
            );
        }
    }

    // The histograms counted what was fed: one ACK per message, one commit at least, the two
    // alarms; everything within 10 s.
    let messages = s[r#"icu_ingest_messages_total{transport="mllp"}"#];
    assert_eq!(messages, 20.0);
    assert_eq!(types["icu_ack_latency_seconds"], "histogram");
    let acks = s[r#"icu_ack_latency_seconds_count{transport="mllp"}"#];
    assert_eq!(
        acks, messages,
        "one ACK-latency observation per acknowledged message"
    );
    assert_eq!(
        s[r#"icu_ack_latency_seconds_bucket{transport="mllp",le="10"}"#],
        acks
    );
    assert_eq!(
        s[r#"icu_ack_latency_seconds_count{transport="serial"}"#],
        0.0
    );
    let commits = s["icu_store_commit_latency_seconds_count"];
    assert!(commits >= 1.0 && commits >= s["icu_store_commits_total"] - 1.0);
    assert_eq!(
        s[r#"icu_store_commit_latency_seconds_bucket{le="10"}"#],
        commits
    );
    let alarms = s["icu_alarm_path_latency_seconds_count"];
    assert_eq!(
        s[r#"icu_alarm_path_latency_seconds_bucket{le="10"}"#],
        alarms
    );
    // No Kafka: nothing delivered, but the family is there.
    assert_eq!(s["icu_bridge_delivery_latency_seconds_count"], 0.0);

    // One series per configured device, each up, its messages counted.
    let up: Vec<_> = s
        .iter()
        .filter(|(k, _)| k.starts_with("icu_device_up{"))
        .collect();
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up.iter().all(|(_, v)| **v == 1.0), "{up:?}");
    let device_messages: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("icu_device_messages_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(device_messages, messages);
    // The process collector.
    assert!(s["process_resident_memory_bytes"] > 0.0);
    assert!(s["process_open_fds"] > 0.0);
}
