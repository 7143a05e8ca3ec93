//! The Kafka backbone over TLS and SASL, and signing-key rotation, end to end through the real
//! binaries: `icu-sim` → `icu-gateway` → tansu behind a TLS listener → `icu-bridge consume`.
//!
//! tansu 0.6 cannot serve TLS from its command line (its `--cert` and `--key` exclude each
//! other), so TLS is the harness's terminator in front of tansu (`icu_tests::tls_proxy`); SASL
//! SCRAM-SHA-512 is tansu's own, with its users kept in SQLite storage. Both ways the central
//! cluster may require are covered: SASL_SSL with SCRAM-SHA-512, and mutual TLS.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use icu_cloud_bridge::bridge::{KafkaSecurity, SecurityProtocol};
use icu_cloud_bridge::consume::{consume_with, ConsumeOptions, ConsumeSecurity};
use icu_cloud_bridge::signing::{load_public_key, KeyRing};
use icu_tests::pki::TestPki;
use icu_tests::{bin_path, wait_for, Broker, SecureOptions, TOPICS};
use support::{config_text, keygen, run_sim, GatewayProc, Launch};

/// A gateway config forwarding to `broker`, with a `[kafka.security]` section.
fn config(dir: &Path, beds: usize, broker: &str, security: &str) -> String {
    format!(
        "{}\n[kafka.security]\n{security}\n",
        config_text(dir, beds, Some(broker), "")
    )
}

/// Waits until `/api/status` backbone is in `state`; returns the backbone.
fn wait_state(gw: &GatewayProc, state: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(30), state, || {
        let s = gw.get_json("/api/status");
        (s["backbone"]["state"] == state).then(|| s["backbone"].clone())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            gw.get_json("/api/status")["backbone"],
            gw.log_text()
        )
    })
}

/// Waits until the outbox is empty with the backbone online; returns the backbone.
fn wait_drained(gw: &GatewayProc) -> serde_json::Value {
    wait_for(Duration::from_secs(30), "outbox drained", || {
        let s = gw.get_json("/api/status");
        (s["store"]["unsent"].as_u64() == Some(0) && s["backbone"]["state"] == "online")
            .then(|| s["backbone"].clone())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()))
}

/// Reads icu.observations from `broker` with `security`, waiting at most `max_wait` (an idle
/// partition ends the read after `idle_timeout`).
fn consume_observations(
    broker: &str,
    security: &ConsumeSecurity,
    idle_timeout: Duration,
    max_wait: Duration,
) -> Result<icu_cloud_bridge::consume::ConsumeReport, icu_cloud_bridge::BridgeError> {
    consume_with(
        &ConsumeOptions {
            brokers: broker.to_owned(),
            topic: "icu.observations".into(),
            public_key: None,
            idle_timeout,
            max_wait,
        },
        security,
    )
    .map(|(report, _)| report)
}

/// The negative cases: readings are still acknowledged and stored (the outbox holds them all).
fn assert_still_stored(gw: &GatewayProc, dir: &Path) {
    let sim = run_sim(gw.endpoints.mllp, 1, 4, 20.0, &dir.join("manifest.jsonl"));
    assert!(sim.ok, "every message acknowledged AA:\n{}", sim.stdout);
    let status = gw.get_json("/api/status");
    let unsent = status["store"]["unsent"].as_u64().unwrap_or(0);
    assert!(
        unsent >= sim.accepted.len() as u64,
        "every acknowledged reading waits in the outbox ({unsent} unsent, {} acknowledged): {status}",
        sim.accepted.len()
    );
}

#[test]
fn mutual_tls_forwarding_arrives_signed_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "hospital").unwrap();
    let server = pki.server("kafka").unwrap();
    let harness = pki.client("harness").unwrap();
    let gateway = pki.client("icu-gw").unwrap();
    let broker = Broker::start_secure(SecureOptions {
        server,
        ca_file: pki.ca_file().to_owned(),
        client_ca: Some(pki.ca_file().to_owned()),
        client_cert: Some(harness.clone()),
        scram_users: Vec::new(),
    })
    .expect("secure broker");
    broker.create_topics(TOPICS).unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let security = format!(
        "protocol = \"ssl\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        pki.ca_file().display(),
        gateway.cert.display(),
        gateway.key.display()
    );
    let gw = GatewayProc::start(dir.path(), &config(dir.path(), 2, &broker.addr, &security));
    let sim = run_sim(
        gw.endpoints.mllp,
        2,
        6,
        20.0,
        &dir.path().join("manifest.jsonl"),
    );
    assert!(sim.ok, "every message acknowledged AA:\n{}", sim.stdout);
    let acked = sim.accepted.len() as u64;

    let backbone = wait_drained(&gw);
    assert_eq!(backbone["security"], "ssl with a client certificate");
    assert_eq!(backbone["encrypted"], true);

    let extra = ConsumeSecurity {
        security: KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            ca_file: Some(pki.ca_file().to_owned()),
            client_cert_file: Some(harness.cert.clone()),
            client_key_file: Some(harness.key.clone()),
            verify_hostname: true,
            ..KafkaSecurity::default()
        },
        properties: Default::default(),
        keys: Some(KeyRing::single(key)),
    };
    let report = consume_observations(
        &broker.addr,
        &extra,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .expect("consuming over mutual TLS");
    let distinct: u64 = report.devices.values().map(|d| d.distinct_seqs).sum();
    assert_eq!(distinct, acked, "exactly what was acknowledged arrived");
    assert_eq!(report.signatures_ok, report.records);
    assert!(report.is_clean(), "{report:?}");

    // Without a client certificate the broker's TLS listener refuses the verifier.
    let no_cert = ConsumeSecurity {
        security: KafkaSecurity {
            client_cert_file: None,
            client_key_file: None,
            ..extra.security.clone()
        },
        ..extra.clone()
    };
    let refused = consume_observations(
        &broker.addr,
        &no_cert,
        Duration::from_millis(200),
        Duration::from_secs(3),
    );
    assert!(refused.is_err(), "a client without certificate is refused");
}

/// The gateway's SCRAM-SHA-512 user on the backbone, and the central team's verifier.
const GW_USER: (&str, &str) = ("icu-gw", "gw-scram-password-1");
const READER: (&str, &str) = ("central-reader", "reader-scram-password-1");

#[test]
fn sasl_ssl_scram_sha512_forwards_signed_records_and_a_wrong_password_is_auth_failed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "hospital").unwrap();
    let mut broker = Broker::start_secure(SecureOptions {
        server: pki.server("kafka").unwrap(),
        ca_file: pki.ca_file().to_owned(),
        client_ca: None,
        client_cert: None,
        scram_users: vec![
            (READER.0.into(), READER.1.into()),
            (GW_USER.0.into(), GW_USER.1.into()),
        ],
    })
    .expect("secure broker");
    broker.create_topics(TOPICS).unwrap();
    broker
        .require_authentication()
        .expect("the broker restarts requiring SASL");

    // The right password, from the environment (systemd-credential style files are the other
    // way, used by the wrong-password gateway below).
    let good = dir.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    let key = load_public_key(&keygen(&good)).unwrap();
    let security = format!(
        "protocol = \"sasl_ssl\"\nca_file = \"{}\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword_env = \"ICU_TEST_KAFKA_PASSWORD\"\n",
        pki.ca_file().display(),
        GW_USER.0
    );
    let gw = GatewayProc::start_with(
        &good,
        &config(&good, 2, &broker.addr, &security),
        Launch {
            env: vec![("ICU_TEST_KAFKA_PASSWORD".into(), GW_USER.1.into())],
            ..Launch::tests()
        },
    );
    let sim = run_sim(gw.endpoints.mllp, 2, 6, 20.0, &good.join("manifest.jsonl"));
    assert!(sim.ok, "every message acknowledged AA:\n{}", sim.stdout);
    let backbone = wait_drained(&gw);
    assert_eq!(backbone["security"], "sasl_ssl SCRAM-SHA-512 as icu-gw");
    assert_eq!(backbone["encrypted"], true);
    assert!(
        !gw.log_text().contains(GW_USER.1)
            && !gw.get_json("/api/status").to_string().contains(GW_USER.1),
        "the password is never logged or shown"
    );

    // The central team reads with its own SCRAM user over TLS: exactly what was acknowledged.
    let reader = ConsumeSecurity {
        security: KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            ca_file: Some(pki.ca_file().to_owned()),
            verify_hostname: true,
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            username: Some(READER.0.into()),
            password_env: Some("ICU_TEST_READER_PASSWORD".into()),
            ..KafkaSecurity::default()
        },
        properties: Default::default(),
        keys: Some(KeyRing::single(key)),
    };
    std::env::set_var("ICU_TEST_READER_PASSWORD", READER.1);
    let report = consume_observations(
        &broker.addr,
        &reader,
        Duration::from_millis(500),
        Duration::from_secs(20),
    )
    .expect("consuming over SASL_SSL");
    let distinct: u64 = report.devices.values().map(|d| d.distinct_seqs).sum();
    assert_eq!(
        distinct,
        sim.accepted.len() as u64,
        "exactly what was acknowledged arrived"
    );
    assert_eq!(report.signatures_ok, report.records);
    assert!(report.is_clean(), "{report:?}");

    // A second gateway with a wrong password (from a mode-600 file): auth_failed, readings kept.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    keygen(&bad);
    let password = bad.join("kafka.password");
    std::fs::write(&password, "not-the-password\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let security = format!(
        "protocol = \"sasl_ssl\"\nca_file = \"{}\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword_file = \"{}\"\n",
        pki.ca_file().display(),
        GW_USER.0,
        password.display()
    );
    let gw = GatewayProc::start(&bad, &config(&bad, 1, &broker.addr, &security));
    let backbone = wait_state(&gw, "auth_failed");
    let reason = backbone["reason"].as_str().unwrap();
    eprintln!("auth_failed reason: {reason}");
    assert!(reason.contains("password_file"), "{reason}");
    assert!(reason.contains("\"icu-gw\""), "{reason}");
    assert!(
        gw.log_text().contains("auth_failed"),
        "the log names the state"
    );
    assert_still_stored(&gw, &bad);
    assert_eq!(
        gw.get_json("/api/status")["backbone"]["state"],
        "auth_failed"
    );
}

#[test]
fn a_broker_certificate_from_an_unknown_ca_is_tls_failed_and_readings_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let hospital = TestPki::new(&dir.path().join("pki"), "hospital").unwrap();
    let rogue = TestPki::new(&dir.path().join("pki"), "rogue").unwrap();
    let broker = Broker::start_secure(SecureOptions {
        server: rogue.server("kafka").unwrap(),
        ca_file: rogue.ca_file().to_owned(),
        client_ca: None,
        client_cert: None,
        scram_users: Vec::new(),
    })
    .expect("secure broker");
    keygen(dir.path());
    let security = format!(
        "protocol = \"ssl\"\nca_file = \"{}\"\n",
        hospital.ca_file().display()
    );
    let gw = GatewayProc::start(dir.path(), &config(dir.path(), 1, &broker.addr, &security));
    let backbone = wait_state(&gw, "tls_failed");
    let reason = backbone["reason"].as_str().unwrap();
    eprintln!("tls_failed reason: {reason}");
    assert!(reason.contains("ca_file"), "{reason}");
    assert!(reason.contains("certificate verify failed"), "{reason}");
    assert_still_stored(&gw, dir.path());
    assert_eq!(
        gw.get_json("/api/status")["backbone"]["state"],
        "tls_failed"
    );
}

/// `icu-bridge consume` of icu.observations with `key_args`; (exit success, stdout).
fn bridge_consume(broker: &str, key_args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("icu-bridge"))
        .args([
            "consume",
            "--brokers",
            broker,
            "--topic",
            "icu.observations",
        ])
        .args(["--idle-timeout-secs", "1", "--max-wait-secs", "20"])
        .args(key_args)
        .output()
        .expect("running icu-bridge");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_rotation_mid_run_verifies_with_the_key_directory() {
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = keygen(dir.path());
    let old_id = icu_cloud_bridge::signing::key_id_of(&load_public_key(&public).unwrap());
    // Two beds; the first run drives bed 1 only, the run after the rotation both (the simulator
    // numbers its messages from 1 again: bed 1's are recognised repeats, bed 2's are new).
    let gw = GatewayProc::start(
        dir.path(),
        &config_text(dir.path(), 2, Some(&broker.addr), ""),
    );
    let drained = |gw: &GatewayProc, n: u64| {
        wait_for(Duration::from_secs(30), "outbox drained", || {
            let s = gw.get_json("/api/status");
            (s["store"]["unsent"].as_u64() == Some(0)
                && s["backbone"]["forwarded_observations"].as_u64() >= Some(n))
            .then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    };
    let first = run_sim(gw.endpoints.mllp, 1, 4, 20.0, &dir.path().join("m1.jsonl"));
    assert!(first.ok, "{}", first.stdout);
    drained(&gw, first.accepted.len() as u64);

    // Rotate while the gateway runs, the new key scheduled a few seconds ahead: no restart.
    let key = dir.path().join("gateway.key");
    let out = Command::new(bin_path("icu-gateway"))
        .args(["keygen", "--rotate", "--from", "+3s", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next_public = dir.path().join("gateway.key.next.pub");
    let new_id = icu_cloud_bridge::signing::key_id_of(&load_public_key(&next_public).unwrap());
    assert_ne!(new_id, old_id);
    assert!(
        text.contains(&old_id) && text.contains(&new_id) && text.contains("signs from:"),
        "{text}"
    );
    let keys = dir.path().join("keys");
    assert!(keys.join(format!("gateway.{old_id}.pub")).exists());
    assert!(keys.join(format!("gateway.{new_id}.pub")).exists());
    wait_for(
        Duration::from_secs(20),
        "the running gateway switches key",
        || {
            gw.log_text()
                .contains("signing with the new key from now on")
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));

    let second = run_sim(gw.endpoints.mllp, 2, 4, 20.0, &dir.path().join("m2.jsonl"));
    assert!(second.ok, "{}", second.stdout);
    let new_device = second
        .accepted
        .iter()
        .filter(|o| o.device_id != first.accepted[0].device_id)
        .count() as u64;
    assert!(new_device > 0);
    drained(&gw, first.accepted.len() as u64 + new_device);

    // The switch is in the audit trail, signed, and the trail verifies across it.
    let trail = Command::new(bin_path("icu-gateway"))
        .args(["audit", "show", "--action", "key_rotated", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let trail_text = String::from_utf8_lossy(&trail.stdout).into_owned();
    assert!(
        trail.status.success() && trail_text.contains(&old_id) && trail_text.contains(&new_id),
        "audit key_rotated names both keys:\n{trail_text}{}",
        String::from_utf8_lossy(&trail.stderr)
    );
    let verify = Command::new(bin_path("icu-gateway"))
        .args(["audit", "verify", "--config"])
        .arg(&gw.config_path)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "the trail verifies across the switch (old key and the scheduled one):\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let (ok, report) = bridge_consume(&broker.addr, &["--keys", keys.to_str().unwrap()]);
    assert!(
        ok,
        "every record verifies with the key directory:\n{report}"
    );
    assert!(report.contains("bad 0"), "{report}");
    assert!(!report.contains("unknown key id"), "{report}");
    // The stock client verifies the same way with the same directory.
    if let Some(python) = icu_tests::python() {
        let stock = |key_args: &[&str]| {
            let out = Command::new(&python)
                .arg(icu_tests::script("kafka_consume.py"))
                .args(["--brokers", &broker.addr, "--topic", "icu.observations"])
                .args(key_args)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (ok, stdout) = stock(&["--keys", keys.to_str().unwrap()]);
        assert!(
            ok && stdout.contains(" 0 bad"),
            "stock client with --keys:\n{stdout}"
        );
        let (ok, stdout) = stock(&["--public-key", public.to_str().unwrap()]);
        assert!(
            !ok,
            "the old key alone does not verify the new key's records"
        );
        assert!(
            stdout.contains(&format!("unknown key id {new_id}"))
                || stdout.contains("signature=BAD"),
            "{stdout}"
        );
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "ICU_PYTHON must be set under CI"
        );
    }

    // The key file still holds the old key (the new one waits as .next until the next
    // rotation promotes it): verifying with it alone reports the new key's records by key id.
    let (ok, report) = bridge_consume(&broker.addr, &["--public-key", public.to_str().unwrap()]);
    assert!(
        !ok,
        "records of the new key are not verified by the old key alone"
    );
    assert!(
        report.contains(&format!("unknown key id {new_id}")),
        "the new key's records are reported by key id:\n{report}"
    );
    eprintln!("{report}");
}
