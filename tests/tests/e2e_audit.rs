//! The audit trail end to end (issue 13, acceptance "the audit trail test"), with the real
//! gateway binary, its CLI and a real Kafka-protocol broker (tansu):
//! - a scripted set of actions over real HTTP (logins, one failed; a limit change; an
//!   acknowledge attempt; a break-glass by a nurse; a logoff; reads of patient data), then the
//!   gateway stops and `icu-gateway audit verify` passes;
//! - on copies of the SQLite file (triggers dropped first), an edited value, a deleted entry,
//!   two swapped entries and a cut tail each make `audit verify` fail (exit 1) naming the
//!   first bad seq;
//! - every entry reached `icu.audit` through the outbox, in order, and verifies there: with the
//!   gateway's own consumer (`icu_cloud_bridge::consume`) and with a stock client (Python
//!   `confluent-kafka` + `cryptography`, `scripts/kafka_consume.py --audit`): each record's
//!   signature and each entry's own ed25519 signature over its hash, and the chain.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions, ConsumeReport};
use icu_cloud_bridge::signing::load_public_key;
use icu_tests::http::{login, request, Reply, TEST_PASSWORD};
use icu_tests::{bin_path, wait_for, Broker, TOPICS};
use rusqlite::Connection;
use support::{config_text, keygen, GatewayProc};

const TOPIC: &str = "icu.audit";
const GATEWAY: &str = "test-gw";

fn send(
    addr: SocketAddr,
    cookie: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let origin = format!("http://{addr}");
    let mut headers: Vec<(&str, String)> = vec![("Origin", origin)];
    if let Some(c) = cookie {
        headers.push(("Cookie", format!("icu_session={c}")));
    }
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    request(addr, method, path, &h, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// `icu-gateway audit verify --config <config>`: (exit code, stdout).
fn audit_verify(config: &Path) -> (i32, String) {
    let out = Command::new(bin_path("icu-gateway"))
        .args(["audit", "verify", "--config"])
        .arg(config)
        .output()
        .expect("run icu-gateway audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "audit verify --config {}: exit {:?}\n{stdout}{}",
        config.display(),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

/// `(seq, action, account, outcome)` of every entry, in seq order.
fn entries(db: &Path) -> Vec<(u64, String, String, String)> {
    let conn = Connection::open(db).unwrap();
    let mut st = conn
        .prepare("SELECT seq, action, account, outcome FROM audit_log ORDER BY seq")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A standalone copy of the store file (`VACUUM INTO`: the write-ahead log folded in), with the
/// append-only triggers dropped and `tamper` applied; returns a config whose store is the copy.
fn tampered_copy(dir: &Path, db: &Path, name: &str, tamper: &str) -> PathBuf {
    let copy = dir.join(format!("{name}.db"));
    Connection::open(db)
        .unwrap()
        .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let conn = Connection::open(&copy).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;
         DROP TRIGGER audit_log_next_seq;",
    )
    .unwrap();
    conn.execute_batch(tamper).unwrap();
    drop(conn);
    let config = dir.join(format!("{name}.toml"));
    let text = config_text(dir, 2, None, &format!("file = \"{}\"", copy.display()));
    std::fs::write(&config, text).unwrap();
    config
}

/// The first bad seq `audit verify` names ("first bad entry seq N: ...").
fn first_bad_seq(stdout: &str) -> Option<u64> {
    let rest = stdout.split("first bad entry seq ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn read_audit(broker: &str, key: &ed25519_dalek::VerifyingKey) -> ConsumeReport {
    consume(&ConsumeOptions {
        brokers: broker.to_owned(),
        topic: TOPIC.to_owned(),
        public_key: Some(*key),
        idle_timeout: Duration::from_millis(500),
        max_wait: Duration::from_secs(20),
    })
    .expect("consuming icu.audit")
    .0
}

/// Waits until `icu.audit` holds entries 1..=last.
fn wait_for_entries(broker: &str, key: &ed25519_dalek::VerifyingKey, last: u64) -> ConsumeReport {
    wait_for(
        Duration::from_secs(60),
        "audit entries on icu.audit",
        || {
            let report = read_audit(broker, key);
            let upto = report
                .stream(GATEWAY, "audit")
                .and_then(|d| d.last_seq)
                .unwrap_or(0);
            (upto >= last).then_some(report)
        },
    )
    .expect("the audit entries reached kafka")
}

#[test]
fn the_audit_trail_verifies_detects_tampering_and_reaches_icu_audit_signed() {
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let public = keygen(dir.path());
    let key = load_public_key(&public).unwrap();
    let mut gw = GatewayProc::start(
        dir.path(),
        &config_text(dir.path(), 2, Some(&broker.addr), ""),
    );
    // The test accounts and the service token were made (audited) by the real CLI before the
    // gateway started (`GatewayProc::start`, `prepare_accounts`).
    let addr = gw.endpoints.http;

    // The scripted actions.
    let wrong = serde_json::json!({"account": "nurse.test", "password": "not-the-password"});
    let r = send(addr, None, "POST", "/api/login", Some(&wrong.to_string()));
    assert_eq!(r.status, 401, "a wrong password is refused: {}", r.body);
    let dr = login(addr, "dr.test", TEST_PASSWORD).unwrap();
    let nurse = login(addr, "nurse.test", TEST_PASSWORD).unwrap();
    let r = send(addr, Some(&dr), "GET", "/api/beds", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(
        addr,
        Some(&dr),
        "PUT",
        "/api/beds/bed-01/limits/150456",
        Some(r#"{"low": 88}"#),
    );
    assert_eq!(r.status, 200, "limit change: {}", r.body);
    let r = send(
        addr,
        Some(&nurse),
        "POST",
        "/api/alarms/bed-01/bed-01:limit:spo2:150456:0/ack",
        Some("{}"),
    );
    assert_eq!(
        r.status, 400,
        "no such alarm, but the nurse may try: {}",
        r.body
    );
    let r = send(
        addr,
        Some(&nurse),
        "POST",
        "/api/break-glass",
        Some(r#"{"reason": "audit test: no physician on the floor", "minutes": 1}"#),
    );
    assert_eq!(r.status, 200, "break-glass: {}", r.body);
    let r = send(addr, Some(&nurse), "POST", "/api/logout", Some("{}"));
    assert!(r.status < 300, "logoff: {} {}", r.status, r.body);

    let db = gw.db_path();
    let running = entries(&db);
    let actions: Vec<&str> = running.iter().map(|e| e.1.as_str()).collect();
    eprintln!("audit trail while running: {running:?}");
    for wanted in [
        "gateway_start",
        "user_add",
        "token_add",
        "login_failed",
        "login",
        "patient_read",
        "limit_change",
        "acknowledge",
        "break_glass",
        "logoff",
    ] {
        assert!(actions.contains(&wanted), "{wanted} in {actions:?}");
    }
    let seqs: Vec<u64> = running.iter().map(|e| e.0).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "gapless");
    let failed = running.iter().find(|e| e.1 == "login_failed").unwrap();
    assert_eq!(
        (failed.2.as_str(), failed.3.as_str()),
        ("nurse.test", "failed")
    );
    let glass = running.iter().find(|e| e.1 == "break_glass").unwrap();
    assert_eq!(glass.2, "nurse.test");

    // Forwarded while the gateway runs, through the outbox.
    let before_stop = seqs.len() as u64;
    wait_for_entries(&broker.addr, &key, before_stop);

    // Stop: the trail verifies with the CLI.
    gw.stop();
    let n = entries(&db).len() as u64;
    assert!(n > before_stop, "gateway_stop is appended at the stop");
    let (code, out) = audit_verify(&gw.config_path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit trail verified"), "{out}");
    assert!(out.contains(&format!("{n} entries, seq 1..{n}")), "{out}");

    // Tampering, each on its own copy: verify fails naming the first bad seq.
    let limit_seq = running.iter().find(|e| e.1 == "limit_change").unwrap().0;
    let cases: Vec<(&str, String, u64)> = vec![
        (
            "edited",
            format!("UPDATE audit_log SET new_value = 'low 60' WHERE seq = {limit_seq}"),
            limit_seq,
        ),
        ("deleted", "DELETE FROM audit_log WHERE seq = 4".into(), 4),
        (
            "swapped",
            "UPDATE audit_log SET seq = -1 WHERE seq = 3;
             UPDATE audit_log SET seq = 3 WHERE seq = 6;
             UPDATE audit_log SET seq = 6 WHERE seq = -1;"
                .into(),
            3,
        ),
        (
            "cut",
            format!("DELETE FROM audit_log WHERE seq > {}", n - 3),
            n - 2,
        ),
    ];
    for (name, sql, bad) in &cases {
        let config = tampered_copy(dir.path(), &db, name, sql);
        let (code, out) = audit_verify(&config);
        println!("tamper case {name}: exit {code}: {}", out.trim());
        assert_eq!(code, 1, "{name}: verify must fail:\n{out}");
        assert!(out.contains("audit trail NOT verified"), "{name}: {out}");
        assert_eq!(
            first_bad_seq(&out),
            Some(*bad),
            "{name}: the first bad seq is named:\n{out}"
        );
    }
    // The original is untouched and still verifies.
    assert_eq!(audit_verify(&gw.config_path).0, 0);

    // Start again: the gateway_stop entry and the new start reach Kafka too.
    gw.restart();
    let last = wait_for(
        Duration::from_secs(30),
        "the restart's audit entries",
        || {
            let e = entries(&db);
            e.iter()
                .rev()
                .any(|e| e.1 == "gateway_start" && e.0 > n)
                .then_some(e.len() as u64)
        },
    )
    .unwrap();
    let report = wait_for_entries(&broker.addr, &key, last);
    gw.stop();

    // The gateway's own consumer: every record signed, entries 1..=last (and any appended
    // since), no gap, every entry's signature and the chain verified.
    let d = report.stream(GATEWAY, "audit").expect("the audit stream");
    println!(
        "{}",
        icu_cloud_bridge::consume::render_summary(TOPIC, &report)
    );
    assert!(report.is_clean(), "{report:?}");
    let on_kafka = d.last_seq.unwrap();
    assert!(on_kafka >= last);
    assert_eq!(d.first_seq, Some(1));
    assert_eq!(d.distinct_seqs, on_kafka, "every seq 1..={on_kafka}");
    assert!(d.gaps.is_empty() && d.audit_chain_breaks.is_empty() && d.audit_entries_bad.is_empty());
    assert_eq!(
        (report.signatures_bad, report.unsigned, report.unparseable),
        (0, 0, 0)
    );
    assert!(
        entries(&db).len() as u64 >= on_kafka,
        "nothing on the topic the trail does not hold"
    );

    // A stock client: confluent-kafka reads the topic, `cryptography` verifies each record's
    // signature and each entry's own signature over its hash with the gateway's public key.
    if let Some(python) = icu_tests::python() {
        let out = Command::new(python)
            .arg(icu_tests::script("kafka_consume.py"))
            .args([
                "--brokers",
                &broker.addr,
                "--topic",
                TOPIC,
                "--audit",
                "--public-key",
            ])
            .arg(&public)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("kafka_consume.py --audit:\n{stdout}");
        assert!(
            out.status.success(),
            "stock consumer failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let records = report.records;
        assert!(
            stdout.contains(&format!(
                "{records} records, {records} signatures ok, 0 bad"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "audit: {records} entries, seq 1..{on_kafka}, {records} entry signatures ok, 0 bad, \
                 0 chain breaks, 0 gaps, 0 out of order"
            )),
            "{stdout}"
        );
        // In order: the record lines name seq 1, 2, ... (identical re-deliveries aside).
        let seqs: Vec<u64> = stdout
            .lines()
            .filter(|l| !l.contains("duplicate of an entry already seen"))
            .filter_map(|l| l.split(" audit seq=").nth(1))
            .filter_map(|s| s.split(' ').next()?.parse().ok())
            .collect();
        assert_eq!(seqs, (1..=on_kafka).collect::<Vec<_>>(), "{stdout}");
    } else {
        eprintln!("ICU_PYTHON not set: stock-client check skipped (scripts/test sets it)");
    }
}
