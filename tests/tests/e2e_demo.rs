//! The README's demo command: `icu-gateway demo` serves the page and `/api/beds` with live values
//! for every simulated bed, and stops cleanly on Ctrl-C (SIGINT).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use icu_tests::{bin_path, free_port, wait_for};

#[test]
fn demo_serves_live_beds_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = dir.path().join("demo.log");
    let mut child = Command::new(bin_path("icu-gateway"))
        .args([
            "demo",
            "--beds",
            "3",
            "--rate",
            "5",
            "--http",
            &addr.to_string(),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("demo.err")).unwrap())
        .spawn()
        .unwrap();

    // The demo prints its accounts with new passwords: log in as its physician.
    let password = wait_for(Duration::from_secs(60), "the demo's accounts", || {
        let out = std::fs::read_to_string(&log).ok()?;
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("demo-physician"))?;
        let mut words = line.split_whitespace().skip_while(|w| *w != "password");
        words.nth(1).map(str::to_owned)
    })
    .unwrap();
    wait_for(Duration::from_secs(30), "login as demo-physician", || {
        icu_tests::http::register_account(addr, "demo-physician", &password).ok()
    })
    .unwrap();
    let beds = wait_for(Duration::from_secs(60), "live values for 3 beds", || {
        let v = support::http_get_json(addr, "/api/beds").ok()?;
        let beds = v["beds"].as_array()?.clone();
        let live = beds.iter().filter(|b| {
            b["values"].as_array().is_some_and(|vals| {
                vals.iter()
                    .any(|x| x["mdc_code"] == 147842 && x["value"].as_f64().is_some())
            })
        });
        (live.count() == 3).then_some(beds)
    })
    .unwrap();
    assert_eq!(beds[0]["id"], "bed-01");
    // The demo admits a patient to bed 1 by ADT, so the page shows a name.
    assert_eq!(beds[0]["patient"]["family"], "DEMO", "{}", beds[0]);
    assert_eq!(beds[0]["patient"]["id"], "DEMO-0001");
    let spo2 = beds[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["mdc_code"] == 150456)
        .unwrap();
    assert_eq!(spo2["unit"], "%");

    // The page itself.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).unwrap();
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.contains("/page.js")
            && page.contains("login-form"),
        "{page}"
    );

    // Ctrl-C.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_for(Duration::from_secs(20), "demo exit after SIGINT", || {
        child.try_wait().ok().flatten()
    })
    .unwrap();
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "demo exit status {status}; stdout:\n{out}"
    );
    assert!(out.contains("demo stopped:"), "{out}");
    assert!(out.contains("http://"), "{out}");
}
