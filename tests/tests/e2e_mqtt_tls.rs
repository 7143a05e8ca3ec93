//! MQTT over TLS with passwords and an ACL, against a real mosquitto (issue 14, point 4): the
//! test PKI ([`icu_tests::pki`]) signs the broker's certificate; every client logs in (pumps as
//! their device id); the ACL lets each pump write only its own topics and the gateway read its
//! prefix. Pumps are the real `icu-sim pumps` (or an in-process rumqttc client with the
//! simulator's options); the gateway is the real binary.
//!
//! - readings published over TLS are each stored exactly once (the store against what the
//!   broker acknowledged to the simulator);
//! - a pump publishing on another pump's topic is dropped by the broker, and the gateway's own
//!   bed check still refuses a pump's reading under a bed that is not its own;
//! - a wrong gateway password, an untrusted broker certificate and an expired one are each a
//!   clear state in `/api/status` (`auth_failed`, `tls_failed`) naming what to fix, while MLLP
//!   readings keep being acknowledged and stored;
//! - with client certificates required (mutual TLS), the gateway connects with its own
//!   certificate, and one without is `tls_failed` naming `mqtt.client_cert_file`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use icu_drivers::mqtt::rumqttc::{AsyncClient, Event, Packet, QoS};
use icu_drivers::mqtt::{publish_observations, MqttBatch, ObsTopic, PayloadFormat};
use icu_protos::v1::Observation;
use icu_sim::icu::MqttClientOptions;
use icu_tests::mosquitto::{pump_acl, Mosquitto, TlsSetup};
use icu_tests::pki::{write_secret, CertFiles, TestPki};
use icu_tests::{bin_path, wait_for};
use support::GatewayProc;

const GW_USER: &str = "gw-test-gw";
const PUMPS: [&str; 3] = ["pump-01", "pump-02", "pump-03"];

fn password(user: &str) -> String {
    format!("pw-{user}-x7")
}

/// A TLS broker with the test users and the pump ACL, serving `server`'s certificate.
fn broker(pki: &TestPki, server: &CertFiles) -> Mosquitto {
    broker_with(pki, server, false)
}

fn broker_with(pki: &TestPki, server: &CertFiles, require_certificate: bool) -> Mosquitto {
    let mut users = vec![(GW_USER.to_owned(), password(GW_USER))];
    users.extend(PUMPS.iter().map(|p| (p.to_string(), password(p))));
    Mosquitto::start_tls(&TlsSetup {
        ca_file: pki.ca_file().to_owned(),
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        require_certificate,
        users,
        acl: pump_acl("test-gw", GW_USER, &PUMPS),
    })
    .expect("mosquitto with TLS")
}

/// A gateway with `beds` MLLP monitors (bed-NN), pump-NN at bed-NN for the first `pumps`
/// beds, subscribing over TLS trusting `ca`, logging in with `gateway_password`.
fn gateway(
    dir: &Path,
    beds: usize,
    pumps: usize,
    port: u16,
    ca: &Path,
    gateway_password: &str,
) -> GatewayProc {
    gateway_with(dir, beds, pumps, port, ca, gateway_password, None)
}

fn gateway_with(
    dir: &Path,
    beds: usize,
    pumps: usize,
    port: u16,
    ca: &Path,
    gateway_password: &str,
    client: Option<&CertFiles>,
) -> GatewayProc {
    let secret = dir.join("mqtt.pass");
    std::fs::create_dir_all(dir).unwrap();
    write_secret(&secret, &format!("{gateway_password}\n")).unwrap();
    let mut cfg = support::config_text(dir, beds, None, "");
    for p in &PUMPS[..pumps] {
        cfg.push_str(&format!(
            "[[devices]]\nid = \"{p}\"\nbed = \"bed-{}\"\nprotocol = \"mqtt\"\n\n",
            &p[5..]
        ));
    }
    cfg.push_str(&format!(
        "[mqtt]\nbroker_host = \"127.0.0.1\"\nbroker_port = {port}\nkeep_alive_s = 5\n\
         reconnect_max_backoff_ms = 1000\ntls = \"required\"\nca_file = \"{}\"\n\
         username = \"{GW_USER}\"\npassword_file = \"{}\"\n",
        ca.display(),
        secret.display()
    ));
    if let Some(c) = client {
        cfg.push_str(&format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            c.cert.display(),
            c.key.display()
        ));
    }
    GatewayProc::start(dir, &cfg)
}

fn mqtt_status(gw: &GatewayProc) -> serde_json::Value {
    gw.get_json("/api/status")["mqtt"].clone()
}

fn wait_mqtt_state(gw: &GatewayProc, state: &str) -> serde_json::Value {
    wait_for(
        Duration::from_secs(20),
        &format!("mqtt state {state}"),
        || {
            let m = mqtt_status(gw);
            (m["state"] == state).then_some(m)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", mqtt_status(gw), gw.log_text()))
}

/// Observations stored per device (one row per seq in `record_seqs`).
fn stored(gw: &GatewayProc) -> BTreeMap<String, u64> {
    let c = rusqlite::Connection::open_with_flags(
        gw.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut q = c
        .prepare("SELECT device_id, count(*) FROM record_seqs WHERE kind = 1 GROUP BY device_id")
        .unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn pump_options(port: u16, pki: &TestPki, dir: &Path) -> MqttClientOptions {
    for p in PUMPS {
        write_secret(&dir.join(format!("{p}.pass")), &password(p)).unwrap();
    }
    MqttClientOptions {
        tls_ca: Some(pki.ca_file().to_owned()),
        username: Some("{device}".into()),
        password_file: Some(dir.join("{device}.pass")),
        ..MqttClientOptions::plain("127.0.0.1", port)
    }
}

#[test]
fn pumps_over_tls_with_passwords_are_each_stored_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "site").unwrap();
    let mosquitto = broker(&pki, &pki.server("broker").unwrap());
    let gw = gateway(
        &dir.path().join("gw"),
        3,
        3,
        mosquitto.port,
        pki.ca_file(),
        &password(GW_USER),
    );
    let m = wait_mqtt_state(&gw, "connected");
    assert_eq!(m["transport"], "tls", "{m}");
    wait_for(
        Duration::from_secs(20),
        "the gateway's subscription",
        || (mqtt_status(&gw)["subscribed"].as_u64() >= Some(1)).then_some(()),
    )
    .unwrap();

    pump_options(mosquitto.port, &pki, dir.path());
    let report = dir.path().join("pumps.json");
    let out = Command::new(bin_path("icu-sim"))
        .args(["pumps", "--pumps", "3", "--gateway-id", "test-gw"])
        .args(["--mqtt-port", &mosquitto.port.to_string()])
        .arg("--mqtt-tls-ca")
        .arg(pki.ca_file())
        .args(["--mqtt-username", "{device}", "--mqtt-password-file"])
        .arg(dir.path().join("{device}.pass"))
        .args(["--interval-ms", "100", "--duration-secs", "3", "--report"])
        .arg(&report)
        .env("RUST_LOG", "warn")
        .output()
        .expect("icu-sim pumps");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    let acked: BTreeMap<String, u64> =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(acked.len(), 3, "{acked:?}");
    assert!(acked.values().all(|n| *n >= 10), "{acked:?}\n{said}");

    // Everything the broker acknowledged reaches the store, once.
    let got = wait_for(Duration::from_secs(20), "every pump reading stored", || {
        let s = stored(&gw);
        PUMPS
            .iter()
            .all(|p| s.get(*p) >= acked.get(*p))
            .then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} vs {acked:?}\n{}", stored(&gw), gw.log_text()));
    for p in PUMPS {
        assert_eq!(got.get(p), acked.get(p), "{p}: stored vs acknowledged");
    }
    let m = mqtt_status(&gw);
    assert_eq!(
        (
            m["state"].as_str(),
            m["tls_failures"].as_u64(),
            m["auth_failures"].as_u64()
        ),
        (Some("connected"), Some(0), Some(0)),
        "{m}"
    );
}

/// Publishes one reading as `device` on `bed`'s topic of `as_device`, waiting for the PUBACK.
async fn publish_as(opts: &MqttClientOptions, device: &str, bed: &str, as_device: &str, v: f64) {
    let (client, mut eventloop) = AsyncClient::new(opts.for_device(device).unwrap(), 8);
    let topic = ObsTopic::new("test-gw", bed, as_device, PayloadFormat::Json).unwrap();
    let batch = MqttBatch {
        waveforms: Vec::new(),
        msg_id: format!("{device}-{v}"),
        observations: vec![Observation {
            mdc_code: 157784,
            value: Some(v),
            unit_ucum: "mL/h".into(),
            ..Default::default()
        }],
    };
    publish_observations(&client, &topic, &batch, QoS::AtLeastOnce)
        .await
        .unwrap();
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("{device}: {e}"),
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "{device}: no PUBACK");
    let _ = client.disconnect().await;
}

#[test]
fn a_pump_cannot_publish_on_another_pumps_topic_and_the_bed_check_stays() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "site").unwrap();
    let mosquitto = broker(&pki, &pki.server("broker").unwrap());
    let gw = gateway(
        &dir.path().join("gw"),
        2,
        2,
        mosquitto.port,
        pki.ca_file(),
        &password(GW_USER),
    );
    wait_for(
        Duration::from_secs(20),
        "the gateway's subscription",
        || (mqtt_status(&gw)["subscribed"].as_u64() >= Some(1)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    let opts = pump_options(mosquitto.port, &pki, dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // pump-02 writes on pump-01's topic: the broker acknowledges (MQTT 3.1.1) and drops it.
        publish_as(&opts, "pump-02", "bed-01", "pump-01", 999.0).await;
        // pump-01 on its own device under bed-02: the ACL allows it, the gateway refuses it.
        publish_as(&opts, "pump-01", "bed-02", "pump-01", 2.0).await;
        // And a good one.
        publish_as(&opts, "pump-01", "bed-01", "pump-01", 1.0).await;
    });
    wait_for(Duration::from_secs(20), "pump-01's good reading", || {
        (stored(&gw).get("pump-01") == Some(&1)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", stored(&gw), gw.log_text()));
    let m = mqtt_status(&gw);
    assert_eq!(
        (m["messages"].as_u64(), m["rejected"].as_u64()),
        (Some(2), Some(1)),
        "pump-02's publish never reached the gateway: {m}"
    );
    assert!(
        mosquitto.log().contains("Denied PUBLISH from sim-pump-02"),
        "{}",
        mosquitto.log_tail(30)
    );
    let s = stored(&gw);
    assert_eq!(s.get("pump-02"), None, "{s:?}");
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let letters: Vec<(Option<String>, String)> = c
        .prepare("SELECT device_id, reason FROM dead_letters WHERE transport = 'mqtt'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0.as_deref(), Some("pump-01"));
    assert!(letters[0].1.contains("wrong bed"), "{letters:?}");
}

#[test]
fn a_wrong_gateway_password_is_auth_failed_and_mllp_readings_are_still_stored() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "site").unwrap();
    let mosquitto = broker(&pki, &pki.server("broker").unwrap());
    let gw = gateway(
        &dir.path().join("gw"),
        2,
        1,
        mosquitto.port,
        pki.ca_file(),
        "not-the-password",
    );
    let m = wait_mqtt_state(&gw, "auth_failed");
    let error = m["last_error"].as_str().unwrap_or_default().to_owned();
    println!("wrong password: {error}");
    assert!(
        error.contains("BadUserNamePassword") || error.contains("NotAuthorized"),
        "{m}"
    );
    assert!(error.contains("mqtt.password_file"), "{m}");
    assert!(m["auth_failures"].as_u64() >= Some(1), "{m}");
    assert_eq!(m["transport"], "tls");

    let run = support::run_sim(
        gw.endpoints.mllp,
        2,
        5,
        20.0,
        &dir.path().join("mllp.jsonl"),
    );
    assert!(run.ok, "{}", run.stdout);
    assert!(!run.accepted.is_empty());
    let expected = run.accepted.len() as u64;
    wait_for(Duration::from_secs(20), "MLLP readings stored", || {
        (stored(&gw).values().sum::<u64>() == expected).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} vs {expected}", stored(&gw)));
    assert_eq!(mqtt_status(&gw)["state"], "auth_failed");
}

fn assert_tls_failed(server: impl FnOnce(&TestPki, &Path) -> CertFiles, expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "site").unwrap();
    let cert = server(&pki, &dir.path().join("pki"));
    let mosquitto = broker(&pki, &cert);
    let gw = gateway(
        &dir.path().join("gw"),
        1,
        1,
        mosquitto.port,
        pki.ca_file(),
        &password(GW_USER),
    );
    let m = wait_mqtt_state(&gw, "tls_failed");
    let error = m["last_error"].as_str().unwrap_or_default();
    println!("tls: {error}");
    for want in expect {
        assert!(error.contains(want), "{want} missing: {m}");
    }
    assert!(m["tls_failures"].as_u64() >= Some(1), "{m}");
    assert_eq!(m["subscribed"], 0, "{m}");
}

#[test]
fn a_broker_certificate_from_an_unknown_ca_is_tls_failed() {
    assert_tls_failed(
        |_, dir| {
            TestPki::new(dir, "rogue")
                .unwrap()
                .server("broker")
                .unwrap()
        },
        &["unknown issuer", "mqtt.ca_file"],
    );
}

#[test]
fn an_expired_broker_certificate_is_tls_failed() {
    assert_tls_failed(
        |pki, _| pki.expired_server("broker").unwrap(),
        &["expired", "broker's certificate"],
    );
}

#[test]
fn with_client_certificates_required_the_gateway_connects_with_its_own_and_not_without() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "site").unwrap();
    let mosquitto = broker_with(&pki, &pki.server("broker").unwrap(), true);
    let client = pki.client(GW_USER).unwrap();
    let gw = gateway_with(
        &dir.path().join("gw"),
        1,
        1,
        mosquitto.port,
        pki.ca_file(),
        &password(GW_USER),
        Some(&client),
    );
    let without = gateway(
        &dir.path().join("gw2"),
        1,
        1,
        mosquitto.port,
        pki.ca_file(),
        &password(GW_USER),
    );
    let m = wait_mqtt_state(&gw, "connected");
    assert_eq!(m["transport"], "tls", "{m}");
    let m = wait_mqtt_state(&without, "tls_failed");
    let error = m["last_error"].as_str().unwrap_or_default();
    println!("no client certificate: {error}");
    assert!(error.contains("mqtt.client_cert_file"), "{m}");
}
