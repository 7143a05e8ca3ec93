use super::*;

fn figures(rate_obs: u64, budget: u64, used: u64) -> Figures {
    let ingest = IngestStats::new_at(0);
    // `rate_obs` observations per second over a full minute, all on MLLP.
    for s in 0..60 {
        ingest.stored_at(Transport::Mllp, rate_obs, 60_000 + s * 1000);
    }
    ingest.stored_at(Transport::Mqtt, 7, 119_000);
    ingest.duplicate(Transport::Mllp);
    ingest.refused(
        Transport::Serial,
        &StoreError::BudgetExceeded {
            used_mib: 1,
            budget_mib: 1,
        },
    );
    Figures {
        gateway_id: "gw \"1\"".into(),
        uptime_s: 120.0,
        now_us: 10_000_000,
        ingest: ingest.figures(119_999),
        store: Some(StoreFigures {
            records: 10_000,
            // Nothing forwarded yet: all 10 000 records are unsent.
            unsent: vec![(Stream::Observations, 9_998), (Stream::Alarms, 2)],
            dead_letters: 3,
            oldest_unsent_us: Some(4_000_000),
            data_bytes: 2_000_000,
        }),
        store_counters: StoreCounters {
            commits: 5,
            failed: 1,
            refused_budget: 1,
            used_bytes: used,
            budget_bytes: budget,
            high_water_bytes: budget / 10 * 9,
            waveforms: crate::store::WaveformCounts {
                segments_not_stored: 7,
                pruned_unsent: 3,
                ..Default::default()
            },
            ..Default::default()
        },
        file_bytes: used + 4096,
        bridge: BridgeFigures::disabled(),
        mllp: MllpFigures {
            refused_per_address: 284,
            frame_timeouts: 16,
            ..Default::default()
        },
        devices: vec![
            DeviceFigures {
                device: "mon-1".into(),
                bed: "bed-1".into(),
                up: true,
                last_seen_us: Some(9_500_000),
                messages: 12,
                errors: 1,
            },
            DeviceFigures {
                device: "pump-2".into(),
                bed: "bed-2".into(),
                up: false,
                last_seen_us: None,
                messages: 0,
                errors: 0,
            },
        ],
        latencies: Latencies::empty(),
        tls_expiry_s: None,
    }
}

/// `(name, labels, value)` of every sample line; checks every sample has its HELP and TYPE.
fn parse(text: &str) -> Vec<(String, String, String)> {
    let mut typed = std::collections::HashSet::new();
    let mut helped = std::collections::HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap().to_owned();
            assert!(
                matches!(it.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            assert!(typed.insert(name), "TYPE twice: {line}");
        } else {
            let (series, value) = line.rsplit_once(' ').expect(line);
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family) && helped.contains(family), "{line}");
            assert!(value.parse::<f64>().is_ok(), "value of {line}");
            out.push((name.to_owned(), labels.to_owned(), value.to_owned()));
        }
    }
    out
}

fn value(samples: &[(String, String, String)], name: &str, labels: &str) -> String {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
        .2
        .clone()
}

#[test]
fn the_text_format_has_every_family_with_help_type_and_values() {
    let f = figures(10, 1 << 30, 1 << 20);
    let text = render(&f);
    assert!(text.ends_with('\n'));
    let s = parse(&text);
    let expected = [
        ("icu_gateway_info", r#"gateway_id="gw \"1\"""#, "1"),
        (
            "icu_ingest_observations_total",
            r#"transport="mllp""#,
            "600",
        ),
        ("icu_ingest_messages_total", r#"transport="mllp""#, "60"),
        (
            "icu_mllp_connections_refused_total",
            r#"reason="per_address""#,
            "284",
        ),
        (
            "icu_mllp_connections_refused_total",
            r#"reason="max_connections""#,
            "0",
        ),
        (
            "icu_mllp_connections_timed_out_total",
            r#"reason="frame""#,
            "16",
        ),
        ("icu_mllp_peers_refused_total", "", "0"),
        ("icu_ingest_observations_total", r#"transport="mqtt""#, "7"),
        (
            "icu_ingest_observations_total",
            r#"transport="serial""#,
            "0",
        ),
        (
            "icu_ingest_duplicate_messages_total",
            r#"transport="mllp""#,
            "1",
        ),
        (
            "icu_ingest_refused_total",
            r#"reason="budget",transport="serial""#,
            "1",
        ),
        (
            "icu_outbox_unsent_records",
            r#"stream="observations""#,
            "9998",
        ),
        ("icu_outbox_unsent_records", r#"stream="alarms""#, "2"),
        ("icu_outbox_unsent_records", r#"stream="deadletter""#, "0"),
        ("icu_outbox_unsent_records", r#"stream="adt""#, "0"),
        ("icu_outbox_oldest_unsent_age_seconds", "", "6"),
        ("icu_dead_letters_stored", "", "3"),
        ("icu_store_records", "", "10000"),
        ("icu_store_bytes_per_record", "", "200"),
        ("icu_store_up", "", "1"),
        ("icu_bridge_state", r#"state="disabled""#, "1"),
        ("icu_bridge_state", r#"state="online""#, "0"),
        ("icu_bridge_forwarded_records_total", "", "0"),
        ("icu_bridge_forwarded_observations_total", "", "0"),
        ("icu_bridge_delivery_errors_total", "", "0"),
        ("icu_bridge_broker_errors_total", "", "0"),
        ("icu_bridge_outbox_errors_total", "", "0"),
        ("icu_bridge_in_flight_records", "", "0"),
        ("icu_store_refused_overload_total", "", "0"),
        ("icu_store_write_failures_total", "", "1"),
        ("icu_store_refused_budget_total", "", "1"),
        ("icu_store_pruned_sent_records_total", "", "0"),
        ("icu_store_pruned_unsent_observations_total", "", "0"),
        ("icu_store_pruned_dead_letters_total", "", "0"),
        ("icu_store_refused_dead_letters_total", "", "0"),
        ("icu_waveform_segments_not_stored_total", "", "7"),
        ("icu_waveform_rows_pruned_unsent_total", "", "3"),
        ("icu_store_disk_usage_bytes", "", "1048576"),
        ("icu_store_file_bytes", "", "1052672"),
        ("icu_store_budget_full", "", "0"),
        ("icu_store_pruning", "", "0"),
        ("icu_store_free_budget_bytes", "", "1072693248"),
        ("icu_store_disk_budget_bytes", "", "1073741824"),
    ];
    for (name, labels, want) in expected {
        assert_eq!(value(&s, name, labels), want, "{name}{{{labels}}}");
    }
    // Rates are PromQL's: no per-second gauges.
    assert!(!text.contains("_per_second"), "{text}");
    let hours: f64 = value(&s, "icu_buffer_left_seconds", "").parse().unwrap();
    assert!(hours.is_finite() && hours > 0.0, "{hours}");
}

#[test]
fn without_a_store_answer_the_store_gauges_are_absent_and_up_is_zero() {
    let mut f = figures(1, 1 << 30, 0);
    f.store = None;
    let s = parse(&render(&f));
    assert_eq!(value(&s, "icu_store_up", ""), "0");
    assert!(!s.iter().any(|(n, _, _)| n == "icu_outbox_unsent_records"));
    assert_eq!(value(&s, "icu_store_bytes_per_record", ""), "256");
}

/// The figures with exactly `rate` observations/s (all MLLP).
fn at_rate(rate: f64, budget: u64, used: u64) -> Figures {
    let mut f = figures(1, budget, used);
    for t in &mut f.ingest {
        t.observations_per_s = if t.transport == Transport::Mllp {
            rate
        } else {
            0.0
        };
    }
    f
}

#[test]
fn buffer_hours_move_with_the_ingest_rate_and_the_budget() {
    let gib = 1u64 << 30;
    let figures = |rate: u64, budget, used| at_rate(rate as f64, budget, used);
    let base = figures(100, gib, gib / 2).buffer_hours_left();
    // 512 MiB free at 100 obs/s × 200 B = 20 000 B/s.
    let expected = (gib / 2) as f64 / 20_000.0 / 3600.0;
    assert!((base - expected).abs() < 1e-9, "{base} vs {expected}");
    let faster = figures(200, gib, gib / 2).buffer_hours_left();
    assert!((faster - base / 2.0).abs() < 1e-9, "double rate halves it");
    let bigger = figures(100, 2 * gib, gib / 2).buffer_hours_left();
    assert!((bigger - base * 3.0).abs() < 1e-9, "1.5 GiB free is 3× 0.5");
    assert_eq!(figures(100, gib, gib).buffer_hours_left(), 0.0, "full");
    assert_eq!(figures(100, gib, 2 * gib).buffer_hours_left(), 0.0);

    // Forwarded records are pruned to make room: 4 000 of them at 200 B free 800 000 B.
    let mut forwarded = figures(100, gib, gib);
    forwarded.store.as_mut().unwrap().unsent = vec![(Stream::Observations, 6_000)];
    assert_eq!(forwarded.free_budget_bytes(), 800_000.0);
    let hours = forwarded.buffer_hours_left();
    assert!(
        (hours - 800_000.0 / 20_000.0 / 3600.0).abs() < 1e-9,
        "{hours}"
    );
    // But never more than the budget.
    assert_eq!(
        free_budget_bytes(1000, 0, 1_000_000, 200.0),
        1000.0,
        "capped"
    );

    // No ingest at all: +Inf, written as `+Inf`.
    let idle = figures(0, gib, 0);
    assert_eq!(idle.buffer_hours_left(), f64::INFINITY);
    let s = parse(&render(&idle));
    assert_eq!(
        value(&s, "icu_buffer_left_seconds", "").parse::<f64>(),
        Ok(f64::INFINITY)
    );
}

#[test]
fn bytes_per_record_uses_a_default_until_measurable_and_a_floor() {
    assert_eq!(bytes_per_record(1 << 20, 10), DEFAULT_BYTES_PER_RECORD);
    assert_eq!(bytes_per_record(300_000, 1000), 300.0);
    assert_eq!(bytes_per_record(1000, 1000), MIN_BYTES_PER_RECORD);
    assert_eq!(
        buffer_hours_left((1u64 << 30) as f64, 0.0, 10.0),
        (1u64 << 30) as f64 / (10.0 * MIN_BYTES_PER_RECORD) / 3600.0
    );
}

#[test]
fn the_rate_window_counts_the_last_minute_only() {
    let w = RateWindow::new(0);
    assert_eq!(w.rate_at(0), 0.0);
    // Young window: rate since the start (10 events over 2 s).
    w.add_at(500, 4);
    w.add_at(1500, 6);
    assert!((w.rate_at(2000) - 5.0).abs() < 1e-9);
    // A full minute later those are gone.
    assert_eq!(w.rate_at(62_000), 0.0);
    // 120 events spread over the last minute: 2/s.
    for s in 100..160u64 {
        w.add_at(s * 1000 + 10, 2);
    }
    assert!((w.rate_at(159_999) - 2.0).abs() < 0.05);
    // The ring reuses buckets: a minute of silence, then the rate is zero again.
    assert_eq!(w.rate_at(230_000), 0.0);
}

#[test]
fn readiness_needs_listeners_a_running_readable_store_and_room() {
    assert!(readiness_problems(true, true, None, false, 10, 100).is_empty());
    let full = readiness_problems(true, true, None, true, 95, 100);
    assert_eq!(full.len(), 1, "the writer says full: {full:?}");
    let all = readiness_problems(false, false, Some("disk I/O error"), false, 100, 100);
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all[0].contains("listeners"));
    assert!(all[1].contains("store writer"));
    assert!(all[2].contains("disk I/O error"));
    assert!(all[3].contains("disk budget"));
}

#[test]
fn serial_protocols_count_as_serial() {
    assert_eq!(Transport::of(Protocol::Medibus).as_str(), "serial");
    assert_eq!(Transport::of(Protocol::Masimo), Transport::Serial);
    assert_eq!(Transport::of(Protocol::Pcd01), Transport::Mllp);
}

#[test]
fn configured_devices_get_their_series_and_only_they() {
    let s = parse(&render(&figures(1, 1 << 30, 0)));
    let mon = r#"bed="bed-1",device="mon-1""#;
    let pump = r#"bed="bed-2",device="pump-2""#;
    assert_eq!(value(&s, "icu_device_up", mon), "1");
    assert_eq!(value(&s, "icu_device_up", pump), "0");
    assert_eq!(value(&s, "icu_device_messages_total", mon), "12");
    assert_eq!(value(&s, "icu_device_errors_total", mon), "1");
    assert_eq!(value(&s, "icu_device_errors_total", pump), "0");
    assert_eq!(
        value(&s, "icu_device_last_seen_timestamp_seconds", mon),
        "9.5"
    );
    // Never heard from: no last-seen time (0 would read as 1970).
    assert!(!s
        .iter()
        .any(|(n, l, _)| n == "icu_device_last_seen_timestamp_seconds" && l == pump));
    assert_eq!(
        s.iter().filter(|(n, _, _)| n == "icu_device_up").count(),
        2,
        "one series per configured device"
    );
}

#[test]
fn histograms_count_what_was_observed_in_base_units() {
    let mut f = figures(1, 1 << 30, 0);
    let ingest = IngestStats::new_at(0);
    ingest.ack_latency(Transport::Mllp).observe(0.003);
    ingest.ack_latency(Transport::Mllp).observe(2.0);
    f.latencies.ack = ingest.ack_latency_family();
    f.latencies.alarm_path.observe(0.012);
    let s = parse(&render(&f));
    let mllp = r#"transport="mllp""#;
    assert_eq!(value(&s, "icu_ack_latency_seconds_count", mllp), "2");
    assert_eq!(value(&s, "icu_ack_latency_seconds_sum", mllp), "2.003");
    assert_eq!(
        value(
            &s,
            "icu_ack_latency_seconds_bucket",
            r#"transport="mllp",le="1""#
        ),
        "1",
        "one of the two within 1 s"
    );
    assert_eq!(
        value(&s, "icu_ack_latency_seconds_count", r#"transport="serial""#),
        "0",
        "every transport's series is there before its first message"
    );
    assert_eq!(value(&s, "icu_alarm_path_latency_seconds_count", ""), "1");
    assert_eq!(value(&s, "icu_store_commit_latency_seconds_count", ""), "0");
    assert_eq!(
        value(
            &s,
            "icu_bridge_delivery_latency_seconds_bucket",
            r#"le="60""#
        ),
        "0"
    );
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_virtual_memory_bytes",
    ] {
        assert!(s.iter().any(|(n, _, _)| n == name), "{name} missing");
    }
}
