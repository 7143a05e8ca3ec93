use icu_protos::v1::{Observation, ObservationStatus};
use proptest::prelude::*;
use prost::Message;

use super::*;
use crate::terminology::Terminology;

const RX: i64 = 1_714_564_800_000_000;

fn json(text: &str) -> Result<MqttBatch, MqttPayloadError> {
    decode_payload(
        PayloadFormat::Json,
        text.as_bytes(),
        DEFAULT_MAX_PAYLOAD_BYTES,
        RX,
        &Terminology::builtin(),
    )
}

fn pb(batch: &MqttBatch) -> Result<MqttBatch, MqttPayloadError> {
    decode_payload(
        PayloadFormat::Protobuf,
        &batch.encode_to_vec(),
        DEFAULT_MAX_PAYLOAD_BYTES,
        RX,
        &Terminology::builtin(),
    )
}

#[test]
fn topic_round_trips_and_is_checked() {
    let t = ObsTopic::new("gw1", "bed-3", "pump-7", PayloadFormat::Json).unwrap();
    assert_eq!(t.to_string(), "icu/gw1/bed/bed-3/device/pump-7/obs/json");
    assert_eq!(ObsTopic::parse(&t.to_string(), "gw1").unwrap(), t);
    let pb = ObsTopic::parse("icu/gw1/bed/b/device/d/obs/pb", "gw1").unwrap();
    assert_eq!(pb.format, PayloadFormat::Protobuf);
    assert_eq!(subscription_filter("gw1"), "icu/gw1/bed/+/device/+/obs/#");

    assert!(matches!(
        ObsTopic::parse("icu/gw2/bed/b/device/d/obs/json", "gw1"),
        Err(TopicError::OtherGateway { .. })
    ));
    assert!(matches!(
        ObsTopic::parse("icu/gw1/bed/b/device/d/obs/xml", "gw1"),
        Err(TopicError::UnknownFormat { .. })
    ));
    for bad in [
        "icu/gw1/bed/b/device/d/obs",
        "icu/gw1/bed//device/d/obs/json",
        "icu/gw1/room/b/device/d/obs/json",
        "icu/gw1/bed/b/device/d/obs/json/extra",
    ] {
        assert!(
            matches!(ObsTopic::parse(bad, "gw1"), Err(TopicError::Shape { .. })),
            "{bad}"
        );
    }
    assert!(ObsTopic::new("gw1", "b/1", "d", PayloadFormat::Json).is_err());
    assert!(ObsTopic::new("gw1", "b", "+", PayloadFormat::Json).is_err());
}

#[test]
fn json_full_example_is_normalised() {
    let b = json(
        r#"{ "device_time": "2024-05-01T12:00:00Z", "msg_id": "m-1",
             "observations": [
               { "mdc_code": 157784, "value": 12.5, "unit": "mL/h", "status": "valid",
                 "containment_id": "1.1.1.1", "time": "2024-05-01T12:00:00.250Z" },
               { "mdc_code": 150456, "value": 97 },
               { "mdc_code": 150456 }
             ] }"#,
    )
    .unwrap();
    assert_eq!(b.msg_id, "m-1");
    let [a, s, n] = b.observations.as_slice() else {
        panic!("three observations expected: {b:?}")
    };
    assert_eq!(a.mdc_code, 157784);
    assert_eq!(a.mdc_refid, "MDC_FLOW_FLUID_PUMP");
    assert_eq!(a.value, Some(12.5));
    assert_eq!(a.unit_ucum, "mL/h");
    assert_eq!(a.unit_mdc_code, 265266);
    assert_eq!(a.containment_id, "1.1.1.1");
    assert_eq!(a.device_time_us, Some(1_714_564_800_250_000));
    assert_eq!(a.receive_time_us, RX);
    assert_eq!(a.status, ObservationStatus::Valid as i32);
    assert_eq!(a.source_message_id, "m-1");
    assert_eq!(a.source_row, 1);

    // Default unit, batch time, LOINC from the table.
    assert_eq!(s.unit_ucum, "%");
    assert_eq!(s.unit_mdc_code, 262688);
    assert_eq!(s.loinc, "59408-5");
    assert_eq!(s.device_time_us, Some(1_714_564_800_000_000));
    assert_eq!(s.status, ObservationStatus::Valid as i32);
    assert_eq!(s.source_row, 2);

    // Missing value: not available, never zero.
    assert_eq!(n.value, None);
    assert_eq!(n.status, ObservationStatus::NotAvailable as i32);
}

#[test]
fn json_status_words_and_missing_values() {
    let b = json(
        r#"{"observations":[
            {"mdc_code":150456,"value":90,"status":"test"},
            {"mdc_code":150456,"status":"valid"},
            {"mdc_code":150456,"value":null,"status":"invalid"},
            {"mdc_code":150456,"value":91,"status":"corrected"}]}"#,
    )
    .unwrap();
    let statuses: Vec<i32> = b.observations.iter().map(|o| o.status).collect();
    assert_eq!(
        statuses,
        [
            ObservationStatus::Test as i32,
            ObservationStatus::NotAvailable as i32,
            ObservationStatus::Invalid as i32,
            ObservationStatus::Corrected as i32,
        ]
    );
    assert_eq!(b.observations[2].value, None);
    assert!(json(r#"{"observations":[]}"#)
        .unwrap()
        .observations
        .is_empty());
}

#[test]
fn json_errors_name_the_place() {
    let e = json("{\n  \"observations\": [\n    {\"mdc_code\": 150456, \"vlaue\": 1}\n  ]\n}")
        .unwrap_err();
    let MqttPayloadError::Json {
        line,
        column,
        offset,
        reason,
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(*line, 3);
    assert!(reason.contains("vlaue"), "{reason}");
    assert!(*offset > 0 && *column > 0);
    assert!(e.to_string().contains("line 3"), "{e}");

    let e = json(r#"{"observations":[{"mdc_code":150456},{"mdc_code":999999999}]}"#).unwrap_err();
    assert_eq!(
        e,
        MqttPayloadError::UnknownMdc {
            path: "observations[1].mdc_code".into(),
            code: 999_999_999
        }
    );
    assert!(e.to_string().contains("999999999"));

    let e = json(r#"{"observations":[{"mdc_code":150456,"status":"ok"}]}"#).unwrap_err();
    assert!(e.to_string().starts_with("observations[0].status"), "{e}");
    let e = json(r#"{"observations":[{"mdc_code":150456,"time":"yesterday"}]}"#).unwrap_err();
    assert!(e.to_string().starts_with("observations[0].time"), "{e}");
    let e = json(r#"{"device_time":"12:00","observations":[]}"#).unwrap_err();
    assert!(e.to_string().starts_with("device_time"), "{e}");
    // Out-of-range numbers (infinity) and non-numbers are refused by the parser.
    assert!(matches!(
        json(r#"{"observations":[{"mdc_code":150456,"value":1e999}]}"#),
        Err(MqttPayloadError::Json { .. })
    ));
    assert!(matches!(
        json(r#"{"observations":[{"mdc_code":150456,"value":"12"}]}"#),
        Err(MqttPayloadError::Json { .. })
    ));
    assert!(matches!(json(""), Err(MqttPayloadError::Json { .. })));
    assert!(matches!(
        json(r#"{"observations":[{"mdc_code":-1}]}"#),
        Err(MqttPayloadError::Json { .. })
    ));
    let long = format!(r#"{{"msg_id":"{}","observations":[]}}"#, "x".repeat(300));
    assert!(json(&long).unwrap_err().to_string().starts_with("msg_id"));
}

#[test]
fn size_bound_is_checked_before_parsing() {
    let e = decode_payload(
        PayloadFormat::Json,
        &[b' '; 2048],
        1024,
        RX,
        &Terminology::builtin(),
    )
    .unwrap_err();
    assert_eq!(
        e,
        MqttPayloadError::TooLarge {
            size: 2048,
            limit: 1024
        }
    );
}

#[test]
fn protobuf_is_normalised_and_identity_cleared() {
    let batch = MqttBatch {
        waveforms: Vec::new(),
        msg_id: "pb-1".into(),
        observations: vec![
            Observation {
                device_id: "spoofed".into(),
                bed: "other-bed".into(),
                seq: 99,
                clock_synced: true,
                mdc_code: 157784,
                value: Some(5.0),
                device_time_us: Some(7),
                ..Default::default()
            },
            Observation {
                mdc_code: 150456,
                ..Default::default()
            },
        ],
    };
    let b = pb(&batch).unwrap();
    assert_eq!(b.msg_id, "pb-1");
    let o = &b.observations[0];
    assert_eq!(
        (o.device_id.as_str(), o.bed.as_str(), o.seq, o.clock_synced),
        ("", "", 0, false)
    );
    assert_eq!(o.unit_ucum, "mL/h");
    assert_eq!(o.status, ObservationStatus::Valid as i32);
    assert_eq!(o.device_time_us, Some(7));
    assert_eq!(o.receive_time_us, RX);
    assert_eq!(b.observations[1].value, None);
    assert_eq!(
        b.observations[1].status,
        ObservationStatus::NotAvailable as i32
    );
}

#[test]
fn protobuf_errors() {
    let bad = |o: Observation| {
        pb(&MqttBatch {
            waveforms: Vec::new(),
            observations: vec![o],
            msg_id: String::new(),
        })
        .unwrap_err()
        .to_string()
    };
    let e = bad(Observation {
        mdc_code: 150456,
        value: Some(f64::NAN),
        ..Default::default()
    });
    assert!(e.starts_with("observations[0].value"), "{e}");
    let e = bad(Observation {
        mdc_code: 150456,
        value: Some(1.0),
        limit_high: Some(f64::INFINITY),
        ..Default::default()
    });
    assert!(e.starts_with("observations[0].limit_high"), "{e}");
    let e = bad(Observation {
        mdc_code: 150456,
        value: Some(1.0),
        status: 42,
        ..Default::default()
    });
    assert!(e.contains("status"), "{e}");
    let e = bad(Observation::default());
    assert!(e.contains("MDC code 0"), "{e}");
    let e = decode_payload(
        PayloadFormat::Protobuf,
        &[0x0a, 0xff],
        DEFAULT_MAX_PAYLOAD_BYTES,
        RX,
        &Terminology::builtin(),
    )
    .unwrap_err();
    assert!(matches!(e, MqttPayloadError::Protobuf { .. }), "{e:?}");
}

#[test]
fn encode_then_decode_keeps_what_each_format_carries() {
    let batch = MqttBatch {
        waveforms: Vec::new(),
        msg_id: "m".into(),
        observations: vec![Observation {
            mdc_code: 157784,
            value: Some(3.25),
            unit_ucum: "mL/h".into(),
            containment_id: "1.2.1.1".into(),
            device_time_us: Some(1_714_564_800_123_456),
            status: ObservationStatus::Corrected as i32,
            ..Default::default()
        }],
    };
    for format in [PayloadFormat::Json, PayloadFormat::Protobuf] {
        let bytes = encode_payload(format, &batch);
        let b = decode_payload(
            format,
            &bytes,
            DEFAULT_MAX_PAYLOAD_BYTES,
            RX,
            &Terminology::builtin(),
        )
        .unwrap();
        let o = &b.observations[0];
        assert_eq!(b.msg_id, "m", "{format}");
        assert_eq!(o.value, Some(3.25), "{format}");
        assert_eq!(o.containment_id, "1.2.1.1", "{format}");
        assert_eq!(o.device_time_us, Some(1_714_564_800_123_456), "{format}");
        assert_eq!(o.status, ObservationStatus::Corrected as i32, "{format}");
    }
}

#[test]
fn config_defaults_and_validation() {
    let c: MqttConfig = serde_json::from_str(r#"{"gateway_id":"gw1"}"#).unwrap();
    assert_eq!(c, MqttConfig::new("gw1"));
    assert_eq!(c.max_payload_bytes, 256 * 1024);
    c.validate().unwrap();
    assert!(serde_json::from_str::<MqttConfig>(r#"{"gateway_id":"gw1","port":1}"#).is_err());

    let bad = MqttConfig {
        broker_port: 0,
        gateway_id: "a/b".into(),
        keep_alive_s: 1,
        password: Some("x".into()),
        ..MqttConfig::new("gw1")
    };
    let e = bad.validate().unwrap_err();
    let fields: Vec<&str> = e
        .problems
        .iter()
        .map(|p| p.split(':').next().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "mqtt.broker_port",
            "mqtt.gateway_id",
            "mqtt.keep_alive_s",
            "mqtt.password"
        ]
    );
}

fn fields(c: &MqttConfig) -> Vec<(&'static str, String)> {
    c.problems()
}

#[test]
fn tls_settings_are_checked_under_their_names() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, "secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let ca = file("ca.pem", 0o644);
    let key = file("client.key", 0o600);
    let open_secret = file("open.pass", 0o640);

    // tls required without ca_file; a cert without its key.
    let c = MqttConfig {
        tls: MqttTls::Required,
        client_cert_file: Some(ca.clone()),
        ..MqttConfig::new("gw1")
    };
    let names: Vec<_> = fields(&c).into_iter().map(|(f, _)| f).collect();
    assert_eq!(names, ["ca_file", "client_key_file"]);
    assert_eq!(c.transport(), "tls");

    // Files that do not exist; a secret group or others may read, with the fix.
    let c = MqttConfig {
        tls: MqttTls::Required,
        ca_file: Some(dir.path().join("missing.pem")),
        client_cert_file: Some(ca.clone()),
        client_key_file: Some(key.clone()),
        username: Some("gw".into()),
        password_file: Some(open_secret.clone()),
        ..MqttConfig::new("gw1")
    };
    let p = fields(&c);
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].0, "ca_file");
    assert!(p[0].1.contains("missing.pem"), "{p:?}");
    assert_eq!(p[1].0, "password_file");
    assert!(
        p[1].1
            .contains(&format!("chmod 600 {}", open_secret.display())),
        "{p:?}"
    );

    // TLS files while tls is off; both password sources; a password source without username;
    // an inline password.
    let c = MqttConfig {
        ca_file: Some(ca.clone()),
        password_file: Some(key.clone()),
        password_env: Some("MQTT_PW".into()),
        password: Some("x".into()),
        ..MqttConfig::new("gw1")
    };
    let names: Vec<_> = fields(&c).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        names,
        [
            "ca_file",
            "password",
            "password_env",
            "password_file",
            "password_env"
        ]
    );
    assert_eq!(c.transport(), "tcp");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("\"x\""), "{dbg}");

    // The config file's form.
    let c: MqttConfig = serde_json::from_str(
        r#"{"gateway_id":"gw1","tls":"required","ca_file":"/x/ca.pem","username":"u","password_env":"PW"}"#,
    )
    .unwrap();
    assert_eq!(c.tls, MqttTls::Required);
    assert!(serde_json::from_str::<MqttConfig>(r#"{"tls":"optional"}"#).is_err());
}

#[test]
fn credentials_and_tls_are_read_when_the_connection_starts() {
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "s3cret\nignored\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(
        tls::read_password_file("password_file", &pass).unwrap(),
        "s3cret"
    );
    let e = tls::read_password_env("password_env", "ICU_TEST_SURELY_UNSET_VAR").unwrap_err();
    assert_eq!(e.field, "password_env");
    assert!(e.to_string().starts_with("mqtt.password_env: "), "{e}");

    // A CA file without a certificate is refused, naming the setting.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a pem\n").unwrap();
    let c = MqttConfig {
        tls: MqttTls::Required,
        ca_file: Some(ca),
        username: Some("u".into()),
        password_file: Some(pass),
        ..MqttConfig::new("gw1")
    };
    let e = mqtt_options(&c).unwrap_err();
    assert_eq!(e.field, "ca_file", "{e}");
    assert!(e.message.contains("no PEM certificate"), "{e}");
}

#[test]
fn connection_errors_name_the_setting_to_fix() {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    let (kind, msg) = tls::explain(
        &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
        "broker",
    );
    assert_eq!(kind.state(), "auth_failed");
    assert!(msg.contains("mqtt.password_file"), "{msg}");
    let handshake = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
    );
    let (kind, msg) = tls::explain(&ConnectionError::Io(handshake), "mqtt.icu.example");
    assert_eq!(kind.state(), "tls_failed");
    assert!(msg.contains("mqtt.broker_host"), "{msg}");
    assert!(msg.contains("mqtt.icu.example"), "{msg}");
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    let (kind, _) = tls::explain(&ConnectionError::Io(refused), "broker");
    assert_eq!(kind.state(), "disconnected");
}

proptest! {
    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let t = Terminology::builtin();
        for format in [PayloadFormat::Json, PayloadFormat::Protobuf] {
            if let Ok(b) = decode_payload(format, &bytes, DEFAULT_MAX_PAYLOAD_BYTES, RX, &t) {
                for o in &b.observations {
                    prop_assert!(o.value.is_none_or(f64::is_finite));
                    prop_assert!(t.by_mdc(o.mdc_code).is_some());
                }
            }
        }
    }
}

fn ecg(samples: Vec<i32>) -> icu_protos::v1::WaveformSegment {
    icu_protos::v1::WaveformSegment {
        mdc_code: 131_330,
        sample_rate_hz: 250.0,
        unit_mdc_code: 266_418,
        scale: 0.005,
        samples,
        ..Default::default()
    }
}

fn pb_waves(
    waveforms: Vec<icu_protos::v1::WaveformSegment>,
) -> Result<MqttBatch, MqttPayloadError> {
    pb(&MqttBatch {
        waveforms,
        msg_id: "w-1".into(),
        observations: Vec::new(),
    })
}

#[test]
fn protobuf_waveforms_are_checked_and_stamped() {
    use icu_protos::v1::SampleRun;
    let mut w = ecg(vec![10, -3, 7, 8]);
    w.gaps = vec![SampleRun { start: 1, count: 2 }];
    w.sample_count = 6;
    w.device_id = "spoofed".into();
    w.patient_id = "someone".into();
    w.first_sample_time_us = Some(RX - 24_000);
    let batch = pb_waves(vec![w]).unwrap();
    let got = &batch.waveforms[0];
    assert_eq!(got.samples, [10, -3, 7, 8], "samples kept exactly");
    assert_eq!(
        got.gaps,
        [SampleRun { start: 1, count: 2 }],
        "gaps stay gaps"
    );
    assert_eq!(
        got.sample_period_us, 4000.0,
        "period filled in from the rate"
    );
    assert_eq!(got.unit_ucum, "mV", "unit from the MDC unit code");
    assert_eq!(
        got.mdc_refid, "",
        "no refid invented for a code the table lacks"
    );
    assert_eq!(
        (got.receive_time_us, got.first_sample_time_us),
        (RX, Some(RX - 24_000))
    );
    assert!(
        got.device_id.is_empty() && got.patient_id.is_empty(),
        "identity is the gateway's"
    );
    assert_eq!((got.source_message_id.as_str(), got.source_row), ("w-1", 1));
    assert_eq!(got.status, ObservationStatus::Valid as i32);
    // sample_count 0 means "count them".
    let batch = pb_waves(vec![ecg(vec![1, 2, 3])]).unwrap();
    assert_eq!(batch.waveforms[0].sample_count, 3);
}

#[test]
fn bad_protobuf_waveforms_are_refused_naming_the_field() {
    use icu_protos::v1::SampleRun;
    let refused = |w: icu_protos::v1::WaveformSegment| {
        pb_waves(vec![ecg(vec![1]), w]).unwrap_err().to_string()
    };
    let mut zero_rate = ecg(vec![1, 2]);
    zero_rate.sample_rate_hz = 0.0;
    assert!(refused(zero_rate).starts_with("waveforms[1].sample_rate_hz: is 0"));
    let mut fast = ecg(vec![1, 2]);
    fast.sample_rate_hz = 20_000.0;
    assert!(refused(fast).starts_with("waveforms[1].sample_rate_hz: 20000 is not"));
    let mut disagree = ecg(vec![1, 2]);
    disagree.sample_period_us = 2000.0;
    assert!(refused(disagree).starts_with("waveforms[1].sample_period_us"));
    let mut count = ecg(vec![1, 2]);
    count.sample_count = 3;
    assert!(refused(count).contains("sample_count: 3 does not equal the 2 samples plus the 0 gap"));
    let long = ecg(vec![0; 15_001]);
    assert!(refused(long).contains("exceed the bound of 15000"));
    let mut outside = ecg(vec![1, 2]);
    outside.gaps = vec![SampleRun { start: 2, count: 1 }];
    outside.sample_count = 3;
    outside.above_range = vec![SampleRun { start: 3, count: 1 }];
    assert!(refused(outside).contains("above_range[0]: ends at 4"));
    let mut overlap = ecg(vec![1]);
    overlap.gaps = vec![
        SampleRun { start: 0, count: 2 },
        SampleRun { start: 1, count: 1 },
    ];
    assert!(refused(overlap).contains("gaps[1]: starts at 1"));
    assert!(refused(ecg(vec![])).starts_with("waveforms[1].sample_count: the segment has no"));
    let mut no_code = ecg(vec![1]);
    no_code.mdc_code = 0;
    assert!(refused(no_code).starts_with("waveforms[1].mdc_code"));
    let mut nan = ecg(vec![1]);
    nan.offset = f64::NAN;
    assert!(refused(nan).starts_with("waveforms[1].offset"));
    let mut packed = ecg(vec![1]);
    packed.packed_samples = vec![1, 2];
    assert!(refused(packed).starts_with("waveforms[1].packed_samples"));
    // JSON carries no curves: a "waveforms" field is an unknown field.
    assert!(json(r#"{"observations": [], "waveforms": []}"#).is_err());
}
