use std::time::Duration;

use super::*;

#[test]
fn lines_say_ok_fail_skip_and_valid_comes_last_only_when_nothing_failed() {
    let mut report = Report {
        config: "gw.toml".into(),
        checks: vec![
            Check::ok("serial port /dev/ttyS0 (spo2-01, 9600 8N1)"),
            Check::ok_note("data directory /var/lib/icu", "9.1 GiB free"),
            Check::skip("mqtt", "no [mqtt] section"),
        ],
    };
    assert_eq!(
        report.render(),
        "OK   serial port /dev/ttyS0 (spo2-01, 9600 8N1)\n\
         OK   data directory /var/lib/icu (9.1 GiB free)\n\
         SKIP mqtt: no [mqtt] section\n\
         gw.toml: valid\n"
    );
    report.checks.push(Check::fail(
        "kafka topic icu.audit",
        "does not exist",
        "run it",
    ));
    let text = report.render();
    assert!(text.contains("FAIL kafka topic icu.audit: does not exist; run it\n"));
    assert!(text.ends_with("gw.toml: 1 check(s) failed\n"), "{text}");
    assert!(!text.contains("valid"), "{text}");
    let json = report.json();
    assert_eq!(json["valid"], false);
    assert_eq!(json["failed"], 1);
    assert_eq!(json["checks"][3]["status"], "fail");
    assert_eq!(json["checks"][3]["fix"], "run it");
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("5h").is_err());
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("0s").is_err());
}

fn config(dir: &std::path::Path, extra: &str) -> Config {
    let text = format!(
        "gateway_id = \"gw\"\ndata_dir = \"{}\"\n[mllp]\nlisten = \"127.0.0.1:0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{extra}\n[[beds]]\nid = \"bed-1\"\n\
         [[devices]]\nid = \"spo2-01\"\nbed = \"bed-1\"\nprotocol = \"masimo\"\n\
         [devices.serial]\nport = \"{}\"\n",
        dir.join("data").display(),
        dir.join("no-such-tty").display()
    );
    Config::from_toml(&text, &dir.join("gw.toml")).unwrap()
}

#[test]
fn a_missing_port_and_a_budget_larger_than_the_disk_fail_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[store]\ndisk_budget_mb = 1073741824\n");
    let opts = ProbeOptions {
        timeout: Duration::from_secs(2),
        ..ProbeOptions::new(&dir.path().join("gw.toml"))
    };
    let report = run(&cfg, &opts).unwrap();
    let text = report.render();
    let port = dir.path().join("no-such-tty");
    assert!(
        text.contains(&format!(
            "FAIL serial port {} (spo2-01, 9600 8N1): does not exist; check the cable",
            port.display()
        )),
        "{text}"
    );
    assert!(text.contains("devices[0].serial.port"), "{text}");
    assert!(
        text.contains("lower store.disk_budget_mb to at most"),
        "{text}"
    );
    assert!(text.contains("SKIP kafka: no [kafka] section"), "{text}");
    assert!(
        text.contains("(does not exist yet: the gateway makes it at its first start)"),
        "a store-only gateway makes its key: {text}"
    );
    assert_eq!(report.failed(), 2, "{text}");
    assert!(text.lines().last().unwrap().ends_with("2 check(s) failed"));
}

#[test]
fn a_certificate_near_expiry_is_ok_with_a_note_and_a_key_of_another_fails() {
    let dir = tempfile::tempdir().unwrap();
    let pki = |name: &str, days| {
        crate::tls::pki::make(
            &dir.path().join(name),
            &crate::tls::pki::PkiRequest {
                days,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let soon = pki("soon", 10);
    let other = pki("other", 825);
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let checks = |extra: &str| {
        let cfg = config(dir.path(), extra);
        files::certificates(&cfg)
    };

    let near = checks(&tls(&soon.gateway_cert, &soon.gateway_key));
    assert_eq!(near.len(), 1, "{near:?}");
    assert_eq!(near[0].status, Status::Ok, "{near:?}");
    assert!(
        near[0].line().contains("(tls.cert_file) (expires in ")
            && near[0]
                .line()
                .ends_with("day(s), within tls.expiry_warning_days: renew it soon)"),
        "{}",
        near[0].line()
    );

    let mismatched = checks(&tls(&soon.gateway_cert, &other.gateway_key));
    assert_eq!(mismatched[0].status, Status::Fail, "{mismatched:?}");
    let line = mismatched[0].line();
    assert!(
        line.contains(&format!(
            "its private key {} does not fit",
            other.gateway_key.display()
        )) && line.ends_with("give the private key of this certificate in tls.key_file"),
        "{line}"
    );
}
