//! Encrypted and authenticated MLLP and HTTPS (issue 14, points 1-3), against the real gateway
//! and simulator binaries with a test PKI from the real `icu-gateway cert`:
//! - monitors speak MLLP over TLS with their own client certificates: every acknowledged
//!   reading is stored, exactly;
//! - refused, each with its clear answer, while the other monitors go on: a monitor without a
//!   client certificate, one whose certificate names another device (AR, dead-lettered), one with
//!   an expired certificate, a plain-text client on the TLS-only listener, an ADT sender without
//!   the ADT certificate;
//! - the page and API over HTTPS with HSTS and a Secure session cookie; plain HTTP gets nothing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use icu_tests::wait_for;

use icu_tests::http::{gateway_cli, request_tls, TEST_PASSWORD};
use support::{config_text, run_sim_with, GatewayProc};

/// `icu-gateway cert` into `dir/pki` for the monitors of `beds` beds, an ADT engine and an
/// expired monitor `mon-09`.
fn pki(dir: &Path, beds: usize) -> PathBuf {
    let out = dir.join("pki");
    let mut args: Vec<String> = vec!["cert".into(), "--out".into(), out.display().to_string()];
    for b in 1..=beds.max(2) {
        args.extend(["--device".into(), format!("mon-{b:02}")]);
    }
    args.extend(
        [
            "--device",
            "mon-09",
            "--expired-device",
            "mon-09",
            "--client",
            "adt-engine",
        ]
        .map(String::from),
    );
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    gateway_cli(&a, "").unwrap();
    out
}

fn tls_config(dir: &Path, pki: &Path, beds: usize, http: &str) -> String {
    let tls = format!(
        "[tls]\ncert_file = \"{p}/gateway.crt\"\nkey_file = \"{p}/gateway.key\"\nca_file = \"{p}/ca.crt\"\nmllp = \"required\"\nmllp_client_certs = \"required\"\nhttp = \"{http}\"\n\n[adt]\ncert_names = [\"adt-engine\"]\n\n",
        p = pki.display()
    );
    config_text(dir, beds, None, "").replacen("[store]", &format!("{tls}[store]"), 1)
}

fn stored_observations(gw: &GatewayProc) -> i64 {
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    c.query_row("SELECT COUNT(*) FROM record_seqs WHERE kind = 1", [], |r| {
        r.get(0)
    })
    .unwrap()
}

fn mllp_stat(gw: &GatewayProc, name: &str) -> u64 {
    gw.get_json("/api/status")["mllp"][name]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn monitors_with_their_certificates_are_stored_exactly_and_impostors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), 3);
    let gw = GatewayProc::start(dir.path(), &tls_config(dir.path(), &pki, 3, "off"));
    let ca = pki.join("ca.crt").display().to_string();
    let certs = pki.join("devices").display().to_string();
    let status = gw.get_json("/api/status");
    assert_eq!(status["transport"]["mllp"], "tls", "{status}");
    assert_eq!(
        status["transport"]["mllp_client_certs"], "required",
        "{status}"
    );
    assert_eq!(status["transport"]["http"], "plain", "{status}");

    // Three monitors, each with its own certificate.
    let good = run_sim_with(
        gw.endpoints.mllp,
        3,
        5,
        20.0,
        &dir.path().join("good.jsonl"),
        &["--tls-ca", &ca, "--tls-cert-dir", &certs],
    );
    assert!(good.ok, "{}", good.stdout);
    assert!(!good.accepted.is_empty());
    assert_eq!(stored_observations(&gw) as usize, good.accepted.len());
    assert!(mllp_stat(&gw, "tls_connections") >= 3);

    // No client certificate: the handshake is refused.
    let none = run_sim_with(
        gw.endpoints.mllp,
        1,
        1,
        20.0,
        &dir.path().join("none.jsonl"),
        &["--tls-ca", &ca, "--max-attempts", "1"],
    );
    assert!(!none.ok && none.accepted.is_empty(), "{}", none.stdout);
    assert!(mllp_stat(&gw, "tls_handshake_failures") >= 1);

    // An expired certificate: refused the same way.
    let before = mllp_stat(&gw, "tls_handshake_failures");
    let expired = run_sim_with(
        gw.endpoints.mllp,
        1,
        1,
        20.0,
        &dir.path().join("expired.jsonl"),
        &[
            "--tls-ca",
            &ca,
            "--tls-cert-dir",
            &certs,
            "--tls-cert-as",
            "mon-09",
            "--max-attempts",
            "1",
        ],
    );
    assert!(
        !expired.ok && expired.accepted.is_empty(),
        "{}",
        expired.stdout
    );
    assert!(mllp_stat(&gw, "tls_handshake_failures") > before);

    // mon-01's messages under mon-02's certificate: AR, dead-lettered, nothing stored.
    let stored = stored_observations(&gw);
    let impostor = run_sim_with(
        gw.endpoints.mllp,
        1,
        1,
        20.0,
        &dir.path().join("impostor.jsonl"),
        &[
            "--tls-ca",
            &ca,
            "--tls-cert-dir",
            &certs,
            "--tls-cert-as",
            "mon-02",
            "--max-attempts",
            "1",
        ],
    );
    assert!(impostor.accepted.is_empty(), "{}", impostor.stdout);
    assert!(impostor.stdout.contains("AR"), "{}", impostor.stdout);
    assert_eq!(stored_observations(&gw), stored);
    assert!(mllp_stat(&gw, "identity_refused") >= 1);
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let reason: String = c
        .query_row(
            "SELECT reason FROM dead_letters WHERE device_id = 'mon-01' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(reason.contains("certificate names mon-02"), "{reason}");

    // Plain text on the TLS-only listener: closed without an answer.
    let before = mllp_stat(&gw, "tls_plaintext_refused");
    {
        use std::io::{Read as _, Write as _};
        let mut plain = std::net::TcpStream::connect(gw.endpoints.mllp).unwrap();
        plain
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        plain
            .write_all(b"\x0bMSH|^~\\&|X|Y|Z|W|20260101000000||ORU^R01|1|P|2.6\r\x1c\r")
            .unwrap();
        let mut got = Vec::new();
        let _ = plain.read_to_end(&mut got);
        assert!(got.is_empty(), "a plain-text client got an answer: {got:?}");
    }
    assert_eq!(mllp_stat(&gw, "tls_plaintext_refused"), before + 1);

    // The good monitors still work afterwards.
    let again = run_sim_with(
        gw.endpoints.mllp,
        3,
        2,
        20.0,
        &dir.path().join("again.jsonl"),
        &["--tls-ca", &ca, "--tls-cert-dir", &certs],
    );
    assert!(again.ok, "{}", again.stdout);
}

#[test]
fn the_page_and_api_are_served_over_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), 1);
    let gw = GatewayProc::start(dir.path(), &tls_config(dir.path(), &pki, 1, "required"));
    let addr = gw.endpoints.http;
    let ca = pki.join("ca.crt");
    let r = request_tls(addr, &ca, "localhost", "GET", "/", &[], None).unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.header("strict-transport-security")
            .is_some_and(|h| h.contains("max-age")),
        "{}",
        r.head
    );
    let body = format!(r#"{{"account": "dr.test", "password": "{TEST_PASSWORD}"}}"#);
    let login = request_tls(
        addr,
        &ca,
        "localhost",
        "POST",
        "/api/login",
        &[],
        Some(&body),
    )
    .unwrap();
    assert_eq!(login.status, 200, "{}", login.body);
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let session = login.session_cookie().unwrap();
    let status = request_tls(
        addr,
        &ca,
        "localhost",
        "GET",
        "/api/status",
        &[("Cookie", &format!("icu_session={session}"))],
        None,
    )
    .unwrap();
    assert_eq!(status.status, 200, "{}", status.body);
    assert_eq!(status.json().unwrap()["transport"]["http"], "tls");
    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = icu_tests::http::request(addr, "GET", "/api/status", &[], None);
    assert!(
        plain.is_err() || plain.as_ref().unwrap().status != 200,
        "{plain:?}"
    );
    // A client that does not trust the test CA refuses the gateway.
    let other = tempfile::tempdir().unwrap();
    let other_pki = pki_other(other.path());
    assert!(request_tls(addr, &other_pki, "localhost", "GET", "/", &[], None).is_err());

    // A new certificate (here from another CA, so the change is visible) is served after
    // SIGHUP without a restart: the old CA no longer verifies the page, the new one does.
    for f in ["gateway.crt", "gateway.key"] {
        std::fs::copy(other.path().join("pki").join(f), pki.join(f)).unwrap();
    }
    let pid = gw.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(
        Duration::from_secs(15),
        "the page serves the new certificate",
        || {
            request_tls(addr, &other_pki, "localhost", "GET", "/healthz", &[], None)
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert!(request_tls(addr, &ca, "localhost", "GET", "/", &[], None).is_err());
    assert_eq!(gw.pid().to_string(), pid, "the same process");
    assert!(
        gw.log_text().contains("TLS certificate files reloaded"),
        "the reload is logged"
    );
}

fn pki_other(dir: &Path) -> PathBuf {
    let out = dir.join("pki");
    gateway_cli(&["cert", "--out", out.to_str().unwrap()], "").unwrap();
    out.join("ca.crt")
}

#[test]
fn an_expiring_certificate_raises_the_technical_alarm_and_shows_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    gateway_cli(
        &[
            "cert",
            "--out",
            out.to_str().unwrap(),
            "--days",
            "10",
            "--device",
            "mon-01",
        ],
        "",
    )
    .unwrap();
    let gw = GatewayProc::start(dir.path(), &tls_config(dir.path(), &out, 1, "off"));
    let alarm = icu_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the certificate expiry alarm",
        || {
            gw.get_json("/api/alarms")["active"]
                .as_array()?
                .iter()
                .find(|a| a["source"] == "gateway:tls-cert-expiry")
                .cloned()
        },
    )
    .unwrap();
    let text = alarm["text"].as_str().unwrap();
    assert!(
        text.contains("expires in 9 days") || text.contains("expires in 10 days"),
        "{text}"
    );
    assert_eq!(alarm["priority"], "PL", "{alarm}");
    let metrics = icu_tests::http::authed(gw.endpoints.http, "GET", "/metrics", None).unwrap();
    let line = metrics
        .body
        .lines()
        .find(|l| l.starts_with("icu_tls_certificate_expiry_seconds{cert=\"gateway\"}"))
        .unwrap_or_else(|| panic!("{}", metrics.body));
    let secs: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((9 * 86_400..=10 * 86_400).contains(&secs), "{line}");
}

#[test]
fn a_signing_key_others_can_read_stops_the_start_with_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    support::keygen(dir.path());
    let key = dir.path().join("gateway.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        config_text(dir.path(), 1, None, ""),
    )
    .unwrap();
    let out = std::process::Command::new(icu_tests::bin_path("icu-gateway"))
        .args(["run", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("chmod 600") && err.contains("gateway.key"),
        "{err}"
    );
}

/// One MLLP message over TLS with a client certificate (`dir/NAME.crt`/`.key`); its ACK.
fn mllp_tls(addr: std::net::SocketAddr, pki: &Path, folder: &str, name: &str, msg: &str) -> String {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read as _, Write as _};
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.join(folder).join(format!("{name}.crt")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_file(pki.join(folder).join(format!("{name}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&icu_drivers::mllp::encode_frame(msg.as_bytes()))
        .unwrap();
    let mut ack = Vec::new();
    let mut b = [0u8; 1024];
    while !ack.ends_with(b"\x1c\r") {
        let n = tls.read(&mut b).unwrap();
        assert!(n > 0, "closed without an ACK");
        ack.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&ack).into_owned()
}

#[test]
fn only_the_adt_engines_certificate_may_change_the_census() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), 1);
    let gw = GatewayProc::start(dir.path(), &tls_config(dir.path(), &pki, 1, "off"));
    let adt = |control: &str| {
        let ts = chrono::Utc::now().format("%Y%m%d%H%M%S+0000");
        [
            format!("MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|{ts}||ADT^A01^ADT_A01|{control}|P|2.5"),
            format!("EVN||{ts}"),
            "PID|1||123456^^^HOSP^MR||DOE^JOHN^Q^^^^L||19600101|M".to_string(),
            "PV1|1|I|ICU^1^bed-01|||||||||||||||||V0001^^^HOSP^VN".to_string(),
        ]
        .join("\r")
    };
    // A monitor's certificate: refused, nothing admitted.
    let ack = mllp_tls(gw.endpoints.mllp, &pki, "devices", "mon-01", &adt("ADT-1"));
    assert!(ack.contains("MSA|AR|ADT-1"), "{ack}");
    assert!(ack.contains("adt.cert_names"), "{ack}");
    let beds = gw.get_json("/api/beds");
    assert!(beds["beds"][0]["patient"].is_null(), "{beds}");
    // The ADT engine's certificate: applied.
    let ack = mllp_tls(
        gw.endpoints.mllp,
        &pki,
        "clients",
        "adt-engine",
        &adt("ADT-2"),
    );
    assert!(ack.contains("MSA|AA|ADT-2"), "{ack}");
    let beds = gw.get_json("/api/beds");
    assert_eq!(beds["beds"][0]["patient"]["id"], "123456", "{beds}");
}
