//! A whole simulated ICU of 30 beds through every real transport (PCD-01 and ADT over MLLP,
//! Masimo and MEDIBUS over ptys, pumps over mosquitto) into the gateway and a real Kafka-protocol
//! broker: per device, what reaches Kafka is exactly what the simulator counted as acknowledged
//! — no gap, no duplicate, every signature valid. Twice: in plain text for 60 s, and with every
//! network interface on TLS for 20 s (MLLP with each monitor's client certificate and the ADT
//! engine's, HTTPS for the harness, MQTT over TLS with a password per pump and the pump ACL,
//! Kafka over SASL_SSL with SCRAM-SHA-512: tansu's own SASL behind the harness's TLS
//! terminator, see `icu_tests::SecureOptions`).

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use icu_cloud_bridge::bridge::{KafkaSecurity, SecurityProtocol};
use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::consume::{consume_with, ConsumeSecurity};
use icu_cloud_bridge::signing::load_public_key;
use icu_cloud_bridge::signing::KeyRing;
use icu_tests::mosquitto::{pump_acl, Mosquitto, TlsSetup};
use icu_tests::pki::{write_secret, TestPki};
use icu_tests::{bin_path, wait_for, Broker, SecureOptions, TOPICS};
use support::{keygen, GatewayProc};

const BEDS: usize = 30;

#[test]
fn thirty_beds_for_sixty_seconds_arrive_exactly() {
    run_icu(60, false);
}

#[test]
fn thirty_beds_with_every_interface_on_tls_arrive_exactly() {
    run_icu(20, true);
}

/// The hospital side of a secure run: its CA, the brokers' and the gateway's Kafka client
/// certificates, and the gateway's own PKI (`icu-gateway cert`) for MLLP and HTTPS.
struct Secure {
    hospital: TestPki,
    gateway_pki: std::path::PathBuf,
}

fn run_icu(seconds: u64, secure: bool) {
    let dir = tempfile::tempdir().unwrap();
    let plan = icu_sim::icu::plan(BEDS);
    let pumps: Vec<String> = plan.iter().filter_map(|b| b.pump.clone()).collect();
    let sec = secure.then(|| {
        let hospital = TestPki::new(&dir.path().join("hospital"), "hospital").unwrap();
        let gateway_pki = dir.path().join("pki");
        let mut args = vec![
            "cert".to_string(),
            "--out".into(),
            gateway_pki.display().to_string(),
        ];
        for b in &plan {
            args.extend(["--device".into(), b.bed.device_id.clone()]);
        }
        args.extend(["--client".into(), "adt-engine".into()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        icu_tests::http::gateway_cli(&a, "").unwrap();
        Secure {
            hospital,
            gateway_pki,
        }
    });
    const KAFKA_USERS: [(&str, &str); 2] = [
        ("central-reader", "reader-scram-icu-1"),
        ("icu-gw", "gw-scram-icu-1"),
    ];
    let mut broker = match &sec {
        None => Broker::start().expect("kafka broker"),
        Some(s) => Broker::start_secure(SecureOptions {
            server: s.hospital.server("kafka").unwrap(),
            ca_file: s.hospital.ca_file().to_owned(),
            client_ca: None,
            client_cert: None,
            scram_users: KAFKA_USERS
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        })
        .expect("kafka broker over TLS"),
    };
    broker.create_topics(TOPICS).unwrap();
    if sec.is_some() {
        broker
            .require_authentication()
            .expect("the broker requires SASL SCRAM-SHA-512");
    }
    let gw_user = "gw-icu-gw";
    let mqtt_password = |user: &str| format!("pw-{user}-icu");
    let mosquitto = match &sec {
        None => Mosquitto::start().expect("mosquitto"),
        Some(s) => {
            let mut users = vec![(gw_user.to_owned(), mqtt_password(gw_user))];
            users.extend(pumps.iter().map(|p| (p.clone(), mqtt_password(p))));
            let names: Vec<&str> = pumps.iter().map(String::as_str).collect();
            let server = s.hospital.server("mqtt").unwrap();
            Mosquitto::start_tls(&TlsSetup {
                ca_file: s.hospital.ca_file().to_owned(),
                cert_file: server.cert,
                key_file: server.key,
                require_certificate: false,
                users,
                acl: pump_acl("icu-gw", gw_user, &names),
            })
            .expect("mosquitto with TLS")
        }
    };
    let serial_dir = dir.path().join("serial");
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let mut security = String::new();
    if let Some(s) = &sec {
        write_secret(&dir.path().join("kafka.pass"), KAFKA_USERS[1].1).unwrap();
        write_secret(&dir.path().join("reader.pass"), KAFKA_USERS[0].1).unwrap();
        let secret = dir.path().join("mqtt.pass");
        write_secret(&secret, &format!("{}\n", mqtt_password(gw_user))).unwrap();
        for p in &pumps {
            write_secret(&dir.path().join(format!("{p}.pass")), &mqtt_password(p)).unwrap();
        }
        security = format!(
            "[kafka.security]\nprotocol = \"sasl_ssl\"\nca_file = \"{ca}\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword_file = \"{}\"\n\
             [tls]\ncert_file = \"{p}/gateway.crt\"\nkey_file = \"{p}/gateway.key\"\nca_file = \"{p}/ca.crt\"\n\
             mllp = \"required\"\nmllp_client_certs = \"required\"\nhttp = \"required\"\n\
             [adt]\ncert_names = [\"adt-engine\"]\n",
            KAFKA_USERS[1].0,
            dir.path().join("kafka.pass").display(),
            ca = s.hospital.ca_file().display(),
            p = s.gateway_pki.display(),
        );
    }
    let mqtt = match &sec {
        None => format!("[mqtt]\nbroker_port = {}\n", mosquitto.port),
        Some(s) => format!(
            "[mqtt]\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\ntls = \"required\"\nca_file = \"{}\"\nusername = \"{gw_user}\"\npassword_file = \"{}\"\n",
            mosquitto.port,
            s.hospital.ca_file().display(),
            dir.path().join("mqtt.pass").display()
        ),
    };
    let cfg = format!(
        "gateway_id = \"icu-gw\"\ndata_dir = \"{}\"\nclock = \"synced\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nsynchronous = \"normal\"\n[kafka]\nbootstrap = \"{}\"\nmessage_timeout_ms = 10000\n{security}{mqtt}\n{}",
        dir.path().display(),
        broker.addr,
        icu_sim::icu::config_blocks(&plan, &serial_dir)
    );
    let gw = GatewayProc::start(dir.path(), &cfg);
    if let Some(s) = &sec {
        icu_tests::http::use_tls(gw.endpoints.http, &s.gateway_pki.join("ca.crt"));
    }
    wait_for(Duration::from_secs(30), "mqtt subscription", || {
        (gw.get_json("/api/status")["mqtt"]["subscribed"].as_u64() >= Some(1)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", gw.log_text()));
    if sec.is_some() {
        let status = gw.get_json("/api/status");
        assert_eq!(status["transport"]["mllp"], "tls", "{status}");
        assert_eq!(status["transport"]["http"], "tls", "{status}");
        assert_eq!(status["mqtt"]["transport"], "tls", "{status}");
    }

    let report_path = dir.path().join("sim-report.json");
    let mut sim = Command::new(bin_path("icu-sim"));
    sim.args([
        "icu",
        "--beds",
        &BEDS.to_string(),
        "--duration-secs",
        &seconds.to_string(),
    ])
    .args([
        "--mllp",
        &gw.endpoints.mllp.to_string(),
        "--gateway-id",
        "icu-gw",
    ])
    .args(["--mqtt-port", &mosquitto.port.to_string(), "--serial-dir"])
    .arg(&serial_dir)
    .arg("--report")
    .arg(&report_path);
    if let Some(s) = &sec {
        sim.arg("--tls-ca")
            .arg(s.gateway_pki.join("ca.crt"))
            .arg("--tls-cert-dir")
            .arg(s.gateway_pki.join("devices"))
            .arg("--mqtt-tls-ca")
            .arg(s.hospital.ca_file())
            .args(["--mqtt-username", "{device}", "--mqtt-password-file"])
            .arg(dir.path().join("{device}.pass"));
    }
    let out = sim.output().expect("icu-sim icu");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(
        report["adt_messages_acked"],
        BEDS as u64 + 2,
        "admissions, a discharge and a transfer: {stdout}"
    );
    assert_eq!(report["monitor_rejected"], 0, "{stdout}");
    let expected: BTreeMap<String, u64> = report["observations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(
        expected.len(),
        30 + 6 + 3 + 10,
        "monitors, oximeters, ventilators, pumps: {expected:?}"
    );
    assert!(
        expected.values().all(|n| *n > 0),
        "every device sent something: {expected:?}"
    );

    let total: u64 = expected.values().sum();
    let got = wait_for(
        Duration::from_secs(120),
        "every acknowledged observation on kafka",
        || {
            let opts = ConsumeOptions {
                brokers: broker.addr.clone(),
                topic: "icu.observations".into(),
                public_key: Some(key),
                idle_timeout: Duration::from_millis(500),
                max_wait: Duration::from_secs(60),
            };
            let (r, records) = match &sec {
                None => consume(&opts),
                Some(s) => consume_with(
                    &opts,
                    &ConsumeSecurity {
                        security: KafkaSecurity {
                            protocol: SecurityProtocol::SaslSsl,
                            ca_file: Some(s.hospital.ca_file().to_owned()),
                            verify_hostname: true,
                            sasl_mechanism: Some("SCRAM-SHA-512".into()),
                            username: Some(KAFKA_USERS[0].0.into()),
                            password_file: Some(dir.path().join("reader.pass")),
                            ..KafkaSecurity::default()
                        },
                        properties: Default::default(),
                        keys: Some(KeyRing::single(key)),
                    },
                ),
            }
            .ok()?;
            let n: u64 = r.devices.values().map(|d| d.distinct_seqs).sum();
            (n >= total).then_some((r, records))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; status {}", gw.get_json("/api/status")));
    let (got, records) = got;
    // Every reference of the readings resolves: each `device` (a DeviceMetric) and each
    // unassociated `subject` (the MDS Device) is on icu.devices.
    let mut referenced = std::collections::BTreeSet::new();
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        for e in v["entry"].as_array().unwrap() {
            for field in ["device", "subject"] {
                if let Some(reference) = e["resource"][field]["reference"].as_str() {
                    if !reference.starts_with("Patient/") {
                        referenced.insert(reference.to_owned());
                    }
                }
            }
        }
    }
    let devices = if sec.is_none() {
        let devices = wait_for(
            Duration::from_secs(60),
            "every referenced Device and DeviceMetric on icu.devices",
            || {
                let (_, recs) = consume(&ConsumeOptions {
                    brokers: broker.addr.clone(),
                    topic: "icu.devices".into(),
                    public_key: Some(key),
                    idle_timeout: Duration::from_millis(500),
                    max_wait: Duration::from_secs(30),
                })
                .ok()?;
                let mut have = std::collections::BTreeSet::new();
                for r in &recs {
                    assert_eq!(r.signature_ok, Some(true), "icu.devices records are signed");
                    let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                    for e in v["entry"].as_array().unwrap() {
                        let res = &e["resource"];
                        have.insert(format!(
                            "{}/{}",
                            res["resourceType"].as_str().unwrap(),
                            res["id"].as_str().unwrap()
                        ));
                    }
                }
                referenced.is_subset(&have).then_some(recs)
            },
        )
        .unwrap_or_else(|e| panic!("{e}: {} references", referenced.len()));
        assert!(referenced.iter().any(|r| r.starts_with("DeviceMetric/")));
        devices
    } else {
        Vec::new()
    };
    // Every FHIR value of the run passes the outside validator (FHIR R4 and the profiles).
    validate_fhir(
        dir.path(),
        &[records.as_slice(), devices.as_slice()].concat(),
    );
    assert_eq!(got.signatures_bad, 0);
    let mut mismatches = Vec::new();
    for (device, n) in &expected {
        let d = got.devices.get(device);
        let (distinct, dups, gaps) = d.map_or((0, 0, 0), |d| {
            (d.distinct_seqs, d.duplicate_seqs, d.gaps.len())
        });
        if distinct != *n || dups != 0 || gaps != 0 {
            mismatches.push(format!(
                "{device}: simulator {n}, kafka {distinct} ({dups} duplicate seqs, {gaps} gaps)"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "per-device counts differ:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(
        got.devices.len(),
        expected.len(),
        "no device on kafka that the simulator did not run"
    );
    if sec.is_some() {
        let backbone = &gw.get_json("/api/status")["backbone"];
        assert_eq!(backbone["security"], "sasl_ssl SCRAM-SHA-512 as icu-gw");
        assert_eq!(backbone["encrypted"], true);
    }
}

/// Runs `scripts/fhir_validate.py` (fhir.resources, FHIR R4, plus the profile rules) over the
/// values of `records`; skipped without `ICU_FHIR_PYTHON` outside CI.
fn validate_fhir(dir: &std::path::Path, records: &[icu_cloud_bridge::consume::ConsumedRecord]) {
    let Some(python) = std::env::var_os("ICU_FHIR_PYTHON").filter(|p| !p.is_empty()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ICU_FHIR_PYTHON is not set under CI: run the suite through scripts/test"
        );
        eprintln!("ICU_FHIR_PYTHON not set: FHIR validation of the run skipped");
        return;
    };
    let path = dir.join("values.jsonl");
    let mut text = String::new();
    for r in records {
        text.push_str(std::str::from_utf8(&r.value).expect("FHIR JSON is UTF-8"));
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(python)
        .arg(icu_tests::script("fhir_validate.py"))
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": 0 errors"),
        "the outside validator refused values of the run:\n{}\n{}",
        stdout.lines().take(40).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
}
