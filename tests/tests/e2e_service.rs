//! `icu-gateway run` as systemd runs it (`Type=notify`, `WatchdogSec=`): the test plays systemd,
//! binding the Unix datagram socket the gateway finds in `$NOTIFY_SOCKET` and asking for a
//! watchdog with `$WATCHDOG_USEC`. READY=1 comes only once monitors can connect, WATCHDOG=1 keeps
//! coming while the actors answer and after a SIGHUP (`systemctl reload`), STOPPING=1 comes on
//! SIGTERM.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use icu_tests::gateway::config_text;
use icu_tests::{bin_path, ChildGuard};

/// The next notification (one datagram), or None after `within`.
fn next(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn ready_after_the_listeners_then_the_watchdog_is_fed_through_a_reload_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let data = dir.path().join("gw");
    std::fs::create_dir_all(&data).unwrap();
    let config = data.join("gateway.toml");
    std::fs::write(&config, config_text(&data, 1, None, "")).unwrap();
    let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();

    // A 2 s watchdog: the gateway pings its actors every 0.5 s.
    let watchdog = Duration::from_secs(2);
    let mut cmd = Command::new(bin_path("icu-gateway"));
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env_remove("WATCHDOG_PID");
    let mut gw = ChildGuard::spawn_tied(&cmd, Stdio::null(), log.try_clone().unwrap().into())
        .expect("starting icu-gateway");
    let log_text = || std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();

    // The first notification is READY=1, naming the MLLP listener, which accepts at that moment.
    let ready = next(&sock, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no READY=1 within 60 s; log:\n{}", log_text()));
    let received = Instant::now();
    let mut lines = ready.lines();
    assert_eq!(lines.next(), Some("READY=1"), "first notification: {ready}");
    let status = lines.next().unwrap_or_default();
    let mllp: SocketAddr = status
        .strip_prefix("STATUS=ready: mllp ")
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no STATUS with the MLLP address: {ready}"))
        .parse()
        .unwrap();
    TcpStream::connect_timeout(&mllp, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("READY=1 sent but MLLP {mllp} refuses: {e}"));
    assert!(
        data.join("endpoints.json").is_file(),
        "READY=1 before endpoints.json"
    );

    // WATCHDOG=1 every half second or so while the actors answer; never a gap of a whole
    // interval (systemd would kill it).
    let mut fed = Vec::new();
    while received.elapsed() < Duration::from_millis(2600) {
        if let Some(m) = next(&sock, watchdog) {
            assert_eq!(m.trim_end(), "WATCHDOG=1", "unexpected notification");
            fed.push(Instant::now());
        } else {
            break;
        }
    }
    assert!(
        fed.len() >= 3,
        "{} WATCHDOG=1 in 2.6 s with a 2 s watchdog; log:\n{}",
        fed.len(),
        log_text()
    );
    let longest = fed.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(longest < watchdog, "{longest:?} between two WATCHDOG=1");

    // `systemctl reload` (SIGHUP) does not stop it: the watchdog keeps being fed.
    let children = format!("/proc/{0}/task/{0}/children", gw.pid());
    let pid = std::fs::read_to_string(&children).unwrap();
    let pid = pid
        .split_whitespace()
        .next()
        .expect("the gateway under its wrapper");
    assert!(Command::new("kill")
        .args(["-HUP", pid])
        .status()
        .unwrap()
        .success());
    // The reload's outcome becomes the unit's status, and the watchdog keeps being fed.
    let mut status = None;
    let mut fed = 0;
    while fed < 3 {
        let m = next(&sock, watchdog)
            .unwrap_or_else(|| panic!("no WATCHDOG=1 after SIGHUP; log:\n{}", log_text()));
        match m.trim_end() {
            "WATCHDOG=1" => fed += 1,
            s if s.starts_with("STATUS=config reloaded: ") => status = Some(s.to_string()),
            other => panic!("unexpected notification {other}"),
        }
    }
    let status = status.expect("STATUS= with the reload's outcome");
    assert!(status.contains("devices added: none"), "{status}");
    assert!(gw.exited().is_none(), "SIGHUP stopped the gateway");

    // SIGTERM (the wrapper sends it when the guard closes its stdin): STOPPING=1, a clean exit.
    let exited = std::thread::spawn(move || gw.shutdown(Duration::from_secs(20)).unwrap());
    let mut stopping = false;
    while let Some(m) = next(&sock, Duration::from_secs(20)) {
        if m.starts_with("STOPPING=1") {
            stopping = true;
            break;
        }
        assert_eq!(m.trim_end(), "WATCHDOG=1", "unexpected notification");
    }
    assert!(stopping, "no STOPPING=1; log:\n{}", log_text());
    assert!(exited.join().unwrap().success(), "log:\n{}", log_text());
}
