use std::time::Duration;

use super::*;

const GOOD: &str = r#"
gateway_id = "icu-a"
data_dir = "data"
[mllp]
listen = "127.0.0.1:0"
[[beds]]
id = "bed-1"
[[devices]]
id = "mon-1"
bed = "bed-1"
protocol = "pcd01"
match = "0012AB00000000B2"
"#;

#[test]
fn good_config_validates_with_defaults() {
    let c = Config::from_toml(GOOD, Path::new("/etc/icu/gateway.toml")).unwrap();
    assert_eq!(c.gateway_id, "icu-a");
    assert_eq!(c.data_dir, PathBuf::from("/etc/icu/data"));
    assert_eq!(c.store.path, PathBuf::from("/etc/icu/data/gateway.db"));
    assert!(c.store.synchronous_full);
    assert_eq!(c.beds[0].label, "bed-1");
    assert_eq!(c.devices[0].protocol, Protocol::Pcd01);
    assert!(c.kafka.is_none());
}

#[test]
fn store_budget_policy_defaults_and_validation() {
    let c = Config::from_toml(GOOD, Path::new("/etc/icu/gateway.toml")).unwrap();
    let p = c.store.budget_policy();
    assert_eq!(p.budget_bytes, 10 << 30);
    assert_eq!(
        (p.high_water_pct, p.low_water_pct, p.alarm_reserve_pct),
        (90, 80, 2)
    );
    assert_eq!(p.on_full, crate::store::OnFull::Refuse);
    let set = GOOD.replace(
        "[mllp]",
        "[store]\ndisk_budget_mb = 64\nhigh_water_pct = 95\nlow_water_pct = 70\nalarm_reserve_pct = 5\non_full = \"drop_oldest_unsent\"\n[mllp]",
    );
    let p = Config::from_toml(&set, Path::new("g.toml"))
        .unwrap()
        .store
        .budget_policy();
    assert_eq!(p.budget_bytes, 64 << 20);
    assert_eq!(
        (p.high_water_pct, p.low_water_pct, p.alarm_reserve_pct),
        (95, 70, 5)
    );
    assert_eq!(p.on_full, crate::store::OnFull::DropOldestUnsent);
    let bad = GOOD.replace(
        "[mllp]",
        "[store]\nhigh_water_pct = 80\nlow_water_pct = 85\nalarm_reserve_pct = 50\non_full = \"panic\"\n[mllp]",
    );
    let ConfigError::Invalid { problems, .. } =
        Config::from_toml(&bad, Path::new("g.toml")).unwrap_err()
    else {
        panic!("expected Invalid");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "store.low_water_pct",
            "store.alarm_reserve_pct",
            "store.on_full"
        ]
    );
    assert!(problems[2].message.contains("drop_oldest_unsent"));
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let text = r#"
gateway_id = "icu a"
data_dir = "d"
[store]
synchronous = "sometimes"
[mllp]
listen = "nowhere"
[[beds]]
id = "bed-1"
[[devices]]
id = "mon-1"
bed = "bed-9"
protocol = "medibus9"
match = "x"
[[devices]]
id = "mon-1"
bed = "bed-1"
protocol = "pcd01"
match = "x"
"#;
    let err = Config::from_toml(text, Path::new("g.toml")).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "gateway_id",
            "store.synchronous",
            "mllp.listen",
            "devices[0].bed",
            "devices[0].protocol",
            "devices[1].id",
            "devices[1].match"
        ]
    );
}

#[test]
fn serial_devices_need_a_valid_line() {
    let text = r#"
gateway_id = "icu-a"
data_dir = "d"
[[beds]]
id = "bed-1"
[[devices]]
id = "vent-1"
bed = "bed-1"
protocol = "medibus"
[devices.serial]
port = "/dev/ttyUSB0"
parity = "mark"
stop_bits = 3
[[devices]]
id = "spo2-1"
bed = "bed-1"
protocol = "masimo"
"#;
    let ConfigError::Invalid { problems, .. } =
        Config::from_toml(text, Path::new("g.toml")).unwrap_err()
    else {
        panic!("expected Invalid");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "devices[0].serial.parity",
            "devices[0].serial.stop_bits",
            "devices[1].serial"
        ]
    );
    let ok = text
        .replace("parity = \"mark\"\nstop_bits = 3\n", "")
        .replace(
            "protocol = \"masimo\"\n",
            "protocol = \"masimo\"\n[devices.serial]\nport = \"/dev/ttyUSB1\"\n",
        );
    let c = Config::from_toml(&ok, Path::new("g.toml")).unwrap();
    let vent = c.devices[0].serial.as_ref().unwrap();
    assert_eq!((vent.baud, vent.parity.as_str()), (19200, "even"));
    let spo2 = c.devices[1].serial.as_ref().unwrap();
    assert_eq!((spo2.baud, spo2.parity.as_str()), (9600, "none"));
}

#[test]
fn listener_limits_and_allow_lists_have_defaults_and_are_validated() {
    let c = Config::from_toml(GOOD, Path::new("g.toml")).unwrap();
    assert_eq!(c.mllp.max_connections, 256);
    assert_eq!(c.mllp.max_connections_per_address, 32);
    assert_eq!(c.mllp.frame_timeout, Duration::from_secs(30));
    assert_eq!(c.mllp.idle_timeout, Duration::from_secs(300));
    assert_eq!(c.http_limits, crate::http::HttpLimits::default());
    assert!(c.adt_allow_from.is_empty() && c.devices[0].allow_from.is_empty());

    let set = GOOD
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmax_connections = 8\nmax_connections_per_address = 20\nframe_timeout_s = 2\nidle_timeout_s = 5\n[adt]\nallow_from = [\"10.20.0.0/24\"]\n[http]\nmax_event_streams = 4\nmax_body_bytes = 4096",
        )
        .replace("match = \"0012AB00000000B2\"", "match = \"0012AB00000000B2\"\nallow_from = [\"10.1.2.3\", \"::1\"]");
    let c = Config::from_toml(&set, Path::new("g.toml")).unwrap();
    assert_eq!(
        c.mllp.max_connections_per_address, 8,
        "never above the total"
    );
    assert_eq!(c.mllp.frame_timeout, Duration::from_secs(2));
    assert_eq!(c.mllp.idle_timeout, Duration::from_secs(5));
    assert!(c.adt_allow_from.allows("10.20.0.7".parse().unwrap()));
    assert!(!c.adt_allow_from.allows("10.20.1.7".parse().unwrap()));
    assert!(c.devices[0].allow_from.allows("::1".parse().unwrap()));
    assert!(!c.devices[0].allow_from.allows("10.1.2.4".parse().unwrap()));
    assert_eq!(c.http_limits.max_event_streams, 4);
    assert_eq!(c.http_limits.max_body_bytes, 4096);

    let bad = GOOD
        .replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nmax_connections_per_address = 0\nframe_timeout_s = 0\n[adt]\nallow_from = [\"10.20.0.0/40\"]",
        )
        .replace("match = \"0012AB00000000B2\"", "match = \"0012AB00000000B2\"\nallow_from = [\"10.1.2.3\", \"monitor-3\"]");
    let ConfigError::Invalid { problems, .. } =
        Config::from_toml(&bad, Path::new("g.toml")).unwrap_err()
    else {
        panic!("expected Invalid");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "mllp.max_connections_per_address",
            "mllp.frame_timeout_s",
            "adt.allow_from[0]",
            "devices[0].allow_from[1]"
        ]
    );
    assert!(problems[3]
        .message
        .contains("'monitor-3' is not an IP address"));
}

#[test]
fn unknown_fields_are_refused() {
    let text = format!("{GOOD}\n[kafka]\nbootstrap = \"h:1\"\ntopic = \"x\"\n");
    let err = Config::from_toml(&text, Path::new("g.toml")).unwrap_err();
    assert!(err.to_string().contains("unknown field `topic`"), "{err}");
}

#[test]
fn kafka_drain_knobs_have_documented_defaults_and_are_validated() {
    let parse = |extra: &str| {
        let text = format!("{GOOD}\n[kafka]\nbootstrap = \"h:1\"\n{extra}\n");
        Config::from_toml(&text, Path::new("g.toml")).map(|c| c.kafka.unwrap())
    };
    let k = parse("").unwrap();
    assert_eq!(k.fetch_limit, 5000);
    assert_eq!(k.live_window, std::time::Duration::from_secs(10));
    assert_eq!(k.backlog_rate, 100_000);
    for (line, field) in [
        ("fetch_limit = 0", "kafka.fetch_limit"),
        ("live_window_ms = 10", "kafka.live_window_ms"),
        ("backlog_rate = 0", "kafka.backlog_rate"),
    ] {
        let err = parse(line).unwrap_err();
        assert!(err.to_string().contains(field), "{line}: {err}");
    }
    let k = parse("fetch_limit = 500\nlive_window_ms = 2000\nbacklog_rate = 750").unwrap();
    assert_eq!(
        (k.fetch_limit, k.live_window.as_millis(), k.backlog_rate),
        (500, 2000, 750)
    );
}

#[test]
fn mqtt_section_is_the_transports_settings_with_its_rules_under_the_files_names() {
    let text = format!("{GOOD}\n[mqtt]\nbroker_port = 1884\n");
    let c = Config::from_toml(&text, Path::new("/etc/icu/gateway.toml")).unwrap();
    let m = c.mqtt.unwrap();
    assert_eq!(m.gateway_id, "icu-a");
    assert_eq!(m.client_id(), "icu-gateway-icu-a");
    assert_eq!((m.broker_host.as_str(), m.broker_port), ("127.0.0.1", 1884));
    assert_eq!(m.reconnect_max_backoff_ms, 5_000);
    assert_eq!(m.keep_alive_s, 30);

    let bad = format!(
        "{GOOD}\n[mqtt]\nbroker_port = 0\nkeep_alive_s = 1\npassword = \"x\"\ngateway_id = \"other\"\n"
    );
    let Err(ConfigError::Invalid { problems, .. }) =
        Config::from_toml(&bad, Path::new("/etc/icu/gateway.toml"))
    else {
        panic!("accepted")
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "mqtt.gateway_id",
            "mqtt.broker_port",
            "mqtt.keep_alive_s",
            "mqtt.password"
        ]
    );
}

#[test]
fn alarm_manager_section_is_validated_by_its_output() {
    let text = format!("{GOOD}\n[alarm_manager]\nmllp = \"nohost\"\n");
    let Err(ConfigError::Invalid { problems, .. }) =
        Config::from_toml(&text, Path::new("/etc/icu/gateway.toml"))
    else {
        panic!("accepted")
    };
    assert_eq!(problems[0].field, "alarm_manager.mllp");
    let text = format!("{GOOD}\n[alarm_manager]\nmllp = \"am:2576\"\n");
    let c = Config::from_toml(&text, Path::new("/etc/icu/gateway.toml")).unwrap();
    assert_eq!(
        c.alarm_manager.unwrap().receiving_application,
        "ALARM_MANAGER"
    );
}

#[test]
fn key_and_secret_paths_may_come_from_the_environment_systemd_style() {
    // PATH is set in every environment the tests run in; a made-up name is not.
    let dir = std::env::var("PATH").unwrap();
    let text = format!("{GOOD}\n[signing]\nkey_file = \"${{PATH}}/gateway.key\"\n");
    let c = Config::from_toml(&text, Path::new("/etc/icu/gateway.toml")).unwrap();
    assert_eq!(c.key_file, PathBuf::from(format!("{dir}/gateway.key")));
    assert_eq!(
        c.source_sha256,
        crate::audit::sha256_hex(text.as_bytes()),
        "the audit checksum is of the file as written"
    );

    let text = format!("{GOOD}\n[signing]\nkey_file = \"${{ICU_TEST_UNSET_VAR_7}}/gateway.key\"\n");
    match Config::from_toml(&text, Path::new("/etc/icu/gateway.toml")) {
        Err(ConfigError::Invalid { problems, .. }) => {
            assert_eq!(problems[0].field, "signing.key_file");
            assert!(problems[0]
                .message
                .contains("ICU_TEST_UNSET_VAR_7 is not set"));
        }
        other => panic!("expected the unset variable to be named: {other:?}"),
    }
}

#[test]
fn medibus_realtime_curves_are_named_or_coded_and_checked() {
    let text = |vent: &str, spo2: &str| {
        let serial = |n: u8| format!("serial = {{ port = \"/dev/ttyUSB{n}\" }}");
        format!(
            "gateway_id = \"icu-a\"\ndata_dir = \"d\"\nbeds = [{{ id = \"bed-1\" }}]\ndevices = [\n\
             {{ id = \"vent-1\", bed = \"bed-1\", protocol = \"medibus\", realtime = {vent}, {} }},\n\
             {{ id = \"spo2-1\", bed = \"bed-1\", protocol = \"masimo\", realtime = {spo2}, {} }},\n]\n",
            serial(0),
            serial(1)
        )
    };
    let c = Config::from_toml(
        &text(r#"["airway_pressure", "01", "Volume"]"#, "[]"),
        Path::new("g.toml"),
    )
    .unwrap();
    let curves = |i: usize| c.devices[i].serial.as_ref().unwrap().realtime.clone();
    assert_eq!(curves(0), [0x00, 0x01, 0x03]);
    assert!(curves(1).is_empty(), "off by default");
    let ConfigError::Invalid { problems, .. } = Config::from_toml(
        &text(r#"["flow", "pleth", "01"]"#, r#"["flow"]"#),
        Path::new("g.toml"),
    )
    .unwrap_err() else {
        panic!("expected Invalid");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "devices[0].realtime[1]",
            "devices[0].realtime[2]",
            "devices[1].realtime"
        ]
    );
    assert!(
        problems[0].message.contains("airway_pressure (00)"),
        "{}",
        problems[0].message
    );
}
