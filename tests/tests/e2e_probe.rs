//! `icu-gateway check-config --probe` (issue 18, point 2) against the real things it probes: a
//! real Kafka-protocol broker (tansu) with every topic created by `topics create` and with one
//! missing, a real pseudo-terminal and a port that does not exist, a real mosquitto over TLS
//! with the right and a wrong password, an expired certificate, a listening alarm manager, and a
//! file that is not valid. The answers are the lines and exit codes an installer's script reads:
//! 0 and `<file>: valid` last only when every check passed, 1 when a probe failed, 78 for an
//! invalid file.

use std::path::{Path, PathBuf};
use std::process::Command;

use icu_tests::gateway::{keygen, GatewayProc};
use icu_tests::mosquitto::{pump_acl, Mosquitto, TlsSetup};
use icu_tests::pki::{write_secret, TestPki};
use icu_tests::{bin_path, wait_for, Broker, SecureOptions, TOPICS};

/// What `check-config` printed and how it ended.
struct Answer {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Answer {
    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }

    /// The one line starting with `prefix`.
    fn line(&self, prefix: &str) -> &str {
        let found: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect();
        assert_eq!(found.len(), 1, "one line {prefix:?} in:\n{self}");
        found[0]
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `check-config --config FILE`, with `--probe --timeout 5s` and `args` when `probe`.
fn check_config(config: &Path, probe: bool) -> Answer {
    check_config_with(config, if probe { &["--timeout", "5s"] } else { &[] })
}

/// `check-config --config FILE --probe ARGS...` (no `--probe` when `args` is empty).
fn check_config_with(config: &Path, args: &[&str]) -> Answer {
    let mut cmd = Command::new(bin_path("icu-gateway"));
    cmd.args(["check-config", "--config"]).arg(config);
    if !args.is_empty() {
        cmd.arg("--probe").args(args);
    }
    let out = cmd.output().expect("running icu-gateway check-config");
    let answer = Answer {
        code: out.status.code().expect("an exit code"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!("check-config {}:\n{answer}", config.display());
    answer
}

/// A gateway with one bed and one Masimo oximeter on `port`, then `extra` sections. Its disk
/// budget is 256 MiB unless `extra` has a `[store]`, so the free-space check passes on a test
/// machine whatever its disk.
fn write_config(dir: &Path, name: &str, port: &Path, extra: &str) -> PathBuf {
    let store = if extra.contains("[store]") {
        ""
    } else {
        "[store]\ndisk_budget_mb = 256\n"
    };
    let text = format!(
        "gateway_id = \"gw-probe\"\ndata_dir = \"{}\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{store}{extra}\n[[beds]]\nid = \"bed-01\"\n\
         [[devices]]\nid = \"spo2-01\"\nbed = \"bed-01\"\nprotocol = \"masimo\"\n\
         [devices.serial]\nport = \"{}\"\n",
        dir.display(),
        port.display()
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn all_good_on_a_real_broker_and_pty_then_a_missing_topic_is_named_with_its_fix() {
    let broker = Broker::start().expect("broker");
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path());
    let _pty = icu_sim::serial::open_pty(&dir.path().join("spo2-01")).expect("a pty pair");
    // The alarm manager: a listener whose backlog takes the probe's connection.
    let alarm_manager = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kafka = format!(
        "[kafka]\nbootstrap = \"{}\"\nmessage_timeout_ms = 5000\n\
         [alarm_manager]\nmllp = \"{}\"\n",
        broker.addr,
        alarm_manager.local_addr().unwrap()
    );
    let port = dir.path().join("spo2-01");
    let good = write_config(dir.path(), "good.toml", &port, &kafka);
    let created = Command::new(bin_path("icu-gateway"))
        .args([
            "topics",
            "create",
            "--partitions",
            "1",
            "--replication-factor",
            "1",
        ])
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "topics create: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let a = check_config(&good, true);
    assert_eq!(a.code, 0, "{a}");
    assert_eq!(a.last_line(), format!("{}: valid", good.display()), "{a}");
    assert!(!a.stdout.contains("FAIL"), "{a}");
    a.line(&format!(
        "OK   serial port {} (spo2-01, 9600 8N1)",
        port.display()
    ));
    a.line(&format!("OK   kafka brokers {} (plaintext)", broker.addr));
    for topic in TOPICS {
        a.line(&format!("OK   kafka topic {topic} ("));
    }
    a.line("OK   alarm manager 127.0.0.1:");
    a.line("OK   signing key ");
    a.line("SKIP mqtt: no [mqtt] section");
    // The settings are what the broker reports (DescribeConfigs), judged against what is
    // expected: here a retention longer than `topics create` gave.
    let a = check_config_with(&good, &["--min-retention-hours", "200"]);
    assert_eq!(a.code, 1, "{a}");
    assert_eq!(
        a.line("FAIL kafka topic icu.alarms"),
        "FAIL kafka topic icu.alarms: retention.ms is 604800000 (168 h), shorter than the 200 h \
         expected; ask the central team to change it (kafka-configs --alter --entity-type topics \
         --entity-name icu.alarms)"
    );
    assert_eq!(
        a.last_line(),
        format!("{}: {} check(s) failed", good.display(), TOPICS.len())
    );

    // TLS towards a broker that speaks plain text: the handshake waits for an answer that never
    // comes; said as such (not as an unreachable broker), naming the setting to check.
    let pki = TestPki::new(&dir.path().join("pki"), "kafka").unwrap();
    let tls = write_config(
        dir.path(),
        "tls.toml",
        &port,
        &kafka.replace(
            "message_timeout_ms = 5000\n",
            &format!(
                "message_timeout_ms = 5000\n[kafka.security]\nprotocol = \"ssl\"\nca_file = \"{}\"\n",
                pki.ca_file().display()
            ),
        ),
    );
    let a = check_config_with(&tls, &["--timeout", "2s"]);
    assert_eq!(a.code, 1, "{a}");
    let line = a.line(&format!("FAIL kafka brokers {} (ssl): ", broker.addr));
    assert!(
        line.contains(&format!(
            "{} accepts TCP connections but gave no answer over ssl within 2 s",
            broker.addr
        )) && line.contains("check [kafka.security] protocol"),
        "{a}"
    );

    // The same gateway sending its audit trail to a topic nobody created.
    let missing = write_config(
        dir.path(),
        "missing.toml",
        &port,
        &kafka.replace("[kafka]\n", "[kafka]\ntopic_audit = \"icu.audit.v2\"\n"),
    );
    for _ in 0..2 {
        // Twice: the probe itself never creates the topic it asks about.
        let a = check_config(&missing, true);
        assert_eq!(a.code, 1, "{a}");
        assert_eq!(
            a.line("FAIL kafka topic icu.audit.v2"),
            format!(
                "FAIL kafka topic icu.audit.v2: does not exist on {}; run `icu-gateway topics \
                 create --config {}` (or ask the central team to create it); until then its \
                 records stay in the outbox",
                broker.addr,
                missing.display()
            )
        );
        assert_eq!(
            a.last_line(),
            format!("{}: 1 check(s) failed", missing.display())
        );
        assert!(!a.stdout.contains("valid"), "{a}");
    }
}

#[test]
fn kafka_over_sasl_ssl_the_right_password_a_wrong_one_and_an_untrusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "hospital").unwrap();
    let other = TestPki::new(&dir.path().join("other"), "elsewhere").unwrap();
    // TLS (the hospital's CA) and one SCRAM user; no client certificates.
    let server = pki.server("kafka").unwrap();
    let ca_file = pki.ca_file().to_owned();
    let scram_users = vec![("icu-gw".into(), "gw-scram-password-1".into())];
    let (client_ca, client_cert) = (None, None);
    let mut broker = Broker::start_secure(SecureOptions {
        server,
        ca_file,
        client_ca,
        client_cert,
        scram_users,
    })
    .expect("secure broker");
    broker.create_topics(TOPICS).unwrap();
    broker
        .require_authentication()
        .expect("the broker restarts requiring SASL");
    keygen(dir.path());
    let port = dir.path().join("spo2-01");
    let _pty = icu_sim::serial::open_pty(&port).expect("a pty pair");
    let config = |name: &str, ca: &Path, password: &str| {
        let file = dir.path().join(format!("{name}.pass"));
        write_secret(&file, &format!("{password}\n")).unwrap();
        write_config(
            dir.path(),
            &format!("{name}.toml"),
            &port,
            &format!(
                "[kafka]\nbootstrap = \"{}\"\n[kafka.security]\nprotocol = \"sasl_ssl\"\n\
                 ca_file = \"{}\"\nusername = \"icu-gw\"\npassword_file = \"{}\"\n",
                broker.addr,
                ca.display(),
                file.display()
            ),
        )
    };
    let right = config("right", pki.ca_file(), "gw-scram-password-1");
    let wrong = config("wrong", pki.ca_file(), "not-the-password");
    let untrusted = config("untrusted", other.ca_file(), "gw-scram-password-1");
    let [r, w, u] = std::thread::scope(|s| {
        [&right, &wrong, &untrusted]
            .map(|c| s.spawn(move || check_config_with(c, &["--timeout", "3s"])))
            .map(|h| h.join().unwrap())
    });
    let brokers = format!(
        "kafka brokers {} (sasl_ssl SCRAM-SHA-512 as icu-gw)",
        broker.addr
    );

    assert_eq!(r.code, 0, "{r}");
    r.line(&format!("OK   {brokers}"));
    for topic in TOPICS {
        r.line(&format!("OK   kafka topic {topic} ("));
    }

    assert_eq!(w.code, 1, "{w}");
    let line = w.line(&format!("FAIL {brokers}: "));
    assert!(
        line.contains(&format!(
            "brokers {} refused the SASL login of user \"icu-gw\" (SCRAM-SHA-512): check \
             [kafka.security] username and the password in password_file",
            broker.addr
        )),
        "{w}"
    );

    assert_eq!(u.code, 1, "{u}");
    let line = u.line(&format!("FAIL {brokers}: "));
    assert!(
        line.contains(&format!(
            "TLS handshake with brokers {} failed",
            broker.addr
        )) && line.contains(&format!("ca_file {}", other.ca_file().display())),
        "{u}"
    );
}

#[test]
fn mosquitto_right_and_wrong_password_a_missing_port_and_an_expired_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(&dir.path().join("pki"), "probe").unwrap();
    let server = pki.server("broker").unwrap();
    let mosquitto = Mosquitto::start_tls(&TlsSetup {
        ca_file: pki.ca_file().to_owned(),
        cert_file: server.cert.clone(),
        key_file: server.key.clone(),
        require_certificate: false,
        users: vec![("gw".into(), "right-pw-7".into())],
        acl: pump_acl("gw-probe", "gw", &[]),
    })
    .expect("mosquitto with TLS and passwords");
    keygen(dir.path());
    let _pty = icu_sim::serial::open_pty(&dir.path().join("spo2-01")).expect("a pty pair");
    let mqtt = |password_file: &Path| {
        format!(
            "[mqtt]\nbroker_host = \"127.0.0.1\"\nbroker_port = {}\ntls = \"required\"\n\
             ca_file = \"{}\"\nusername = \"gw\"\npassword_file = \"{}\"\n",
            mosquitto.port,
            pki.ca_file().display(),
            password_file.display()
        )
    };
    let right = dir.path().join("right.pass");
    write_secret(&right, "right-pw-7\n").unwrap();
    let wrong = dir.path().join("wrong.pass");
    write_secret(&wrong, "wrong-pw\n").unwrap();
    let expired = pki.expired_server("old-gateway").unwrap();
    let good = write_config(
        dir.path(),
        "good.toml",
        &dir.path().join("spo2-01"),
        &mqtt(&right),
    );
    let no_port = dir.path().join("ttyUSB9");
    let bad = write_config(
        dir.path(),
        "bad.toml",
        &no_port,
        &format!(
            "{}[kafka]\nbootstrap = \"127.0.0.1:{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            mqtt(&wrong),
            icu_tests::free_port(),
            expired.cert.display(),
            expired.key.display()
        ),
    );
    // Independent: both probes at once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| check_config_with(&good, &["--timeout", "2s", "--json"]));
        let b = s.spawn(|| check_config_with(&bad, &["--timeout", "2s"]));
        (a.join().unwrap(), b.join().unwrap())
    });

    // For scripts: one JSON object.
    assert_eq!(a.code, 0, "{a}");
    let json: serde_json::Value = serde_json::from_str(&a.stdout).expect("one JSON object");
    assert_eq!(json["valid"], true, "{a}");
    assert_eq!(json["failed"], 0, "{a}");
    let checks = json["checks"].as_array().unwrap();
    let mqtt_check = checks
        .iter()
        .find(|c| c["what"].as_str().unwrap().starts_with("mqtt broker"))
        .expect("an mqtt check");
    assert_eq!(mqtt_check["status"], "ok", "{a}");
    assert_eq!(
        mqtt_check["what"],
        format!("mqtt broker 127.0.0.1:{} (tls, as user gw)", mosquitto.port)
    );

    assert_eq!(b.code, 1, "{b}");
    let login = b.line("FAIL mqtt broker 127.0.0.1:");
    assert!(
        login.contains("refused the credentials") && login.contains("mqtt.password_file"),
        "{b}"
    );
    assert_eq!(
        b.line("FAIL serial port"),
        format!(
            "FAIL serial port {} (spo2-01, 9600 8N1): does not exist; check the cable or USB \
             adapter and devices[0].serial.port (ls -l /dev/serial/by-id/ lists the adapters \
             plugged in)",
            no_port.display()
        )
    );
    let cert = b.line("FAIL certificate ");
    assert!(
        cert.contains("(tls.cert_file): expired") && cert.contains("renew it"),
        "{b}"
    );
    let kafka = b.line("FAIL kafka brokers 127.0.0.1:");
    assert!(
        kafka.contains("unreachable: 127.0.0.1:")
            && kafka.contains("Connection refused")
            && kafka.contains("[kafka] bootstrap"),
        "{b}"
    );
    assert_eq!(
        b.last_line(),
        format!("{}: 4 check(s) failed", bad.display())
    );
    assert!(!b.stdout.contains("valid"), "{b}");
    // The broker saw the probe log in and leave cleanly, under its own client id.
    let log = mosquitto.log();
    assert!(
        log.contains("as icu-gateway-gw-probe-probe (")
            && log.contains("Client icu-gateway-gw-probe-probe disconnected."),
        "{log}"
    );
}

#[test]
fn a_port_another_program_holds_is_busy_and_free_again_once_it_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("spo2-01");
    let _pty = icu_sim::serial::open_pty(&port).expect("a pty pair");
    let cfg = write_config(dir.path(), "gw.toml", &port, "");
    // Another program (a terminal emulator, a second gateway) holds the line exclusively.
    let other = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&port)
        .unwrap();
    let held = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .expect("an exclusive lock on the pty");
    let a = check_config_with(&cfg, &["--timeout", "2s"]);
    assert_eq!(a.code, 1, "{a}");
    let line = a.line("FAIL serial port");
    assert!(
        line.starts_with(&format!(
            "FAIL serial port {} (spo2-01, 9600 8N1): is busy: another program holds it",
            port.display()
        )) && line.contains("fuser -v"),
        "{a}"
    );
    drop(held);
    let a = check_config_with(&cfg, &["--timeout", "2s"]);
    assert_eq!(a.code, 0, "{a}");
    a.line(&format!("OK   serial port {}", port.display()));
}

/// Readings of `device` the gateway has stored.
fn stored(db: &Path, device: &str) -> i64 {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    c.query_row(
        "SELECT count(*) FROM record_seqs WHERE kind = 1 AND device_id = ?1",
        [device],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn beside_a_running_gateway_the_probe_finds_its_port_and_the_readings_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("spo2-01");
    let control = std::sync::Arc::new(icu_sim::serial::SerialControl::default());
    let _oximeter = icu_sim::serial::run_masimo(
        port.clone(),
        "0000012345".into(),
        7,
        std::time::Duration::from_millis(100),
        control.clone(),
    )
    .expect("simulated oximeter on a pty");
    let text = std::fs::read_to_string(write_config(dir.path(), "gw.toml", &port, "")).unwrap();
    let gw = GatewayProc::start(dir.path(), &text);
    let before = wait_for(
        std::time::Duration::from_secs(30),
        "readings stored",
        || {
            let n = stored(&gw.db_path(), "spo2-01");
            (n >= 3).then_some(n)
        },
    )
    .unwrap();

    let a = check_config_with(&gw.config_path, &["--timeout", "2s"]);
    assert_eq!(a.code, 0, "{a}");
    a.line(&format!(
        "OK   serial port {} (spo2-01, 9600 8N1)",
        port.display()
    ));
    assert_eq!(
        a.last_line(),
        format!("{}: valid", gw.config_path.display()),
        "{a}"
    );
    // The gateway's line was not disturbed: its readings keep arriving, on the same port.
    wait_for(
        std::time::Duration::from_secs(20),
        "readings after the probe",
        || (stored(&gw.db_path(), "spo2-01") >= before + 10).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(40)));
    control
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn an_invalid_file_exits_78_and_never_says_valid() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_config(
        dir.path(),
        "bad.toml",
        &dir.path().join("tty"),
        "[store]\ndisk_budget_mb = 0\n",
    );
    for probe in [true, false] {
        let a = check_config(&bad, probe);
        assert_eq!(a.code, 78, "{a}");
        assert!(a.stderr.contains("store.disk_budget_mb"), "{a}");
        assert!(!a.stdout.contains("valid\n"), "{a}");
        if probe {
            assert_eq!(
                a.last_line(),
                format!("{}: 1 check(s) failed", bad.display()),
                "{a}"
            );
            a.line(&format!("FAIL config file {}: not valid", bad.display()));
        }
    }
}
