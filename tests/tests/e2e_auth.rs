//! Who may touch the alarms (issue 13, part 1), against the real gateway binary over real HTTP:
//! - the role matrix: every endpoint times every role (none, viewer, nurse, physician, biomed,
//!   a service token) answers the expected 401/403/2xx;
//! - a cross-origin POST, a cookie-carrying POST without Origin and a foreign Host header are
//!   refused; the security headers are on every answer;
//! - `who` comes from the login, never from the request body;
//! - idle logoff locks a session (background refreshes do not keep it open) and the PIN
//!   reopens it; failed logins are throttled (429) even for the right password afterwards;
//!   a disabled account and a revoked token are refused at their next request.
//!
//! Accounts are made with the real `icu-gateway user add` / `token add` commands
//! (`icu_tests::http::prepare_accounts`).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use icu_tests::http::{gateway_cli, login, request, Reply, TEST_PASSWORD};
use support::{config_text, GatewayProc};

/// How a request authenticates.
#[derive(Clone)]
enum As {
    Nobody,
    Cookie(String),
    Token(String),
}

fn send(addr: SocketAddr, who: &As, method: &str, path: &str, body: Option<&str>) -> Reply {
    let origin = format!("http://{addr}");
    let mut headers: Vec<(&str, String)> = vec![("Origin", origin)];
    match who {
        As::Nobody => {}
        As::Cookie(c) => headers.push(("Cookie", format!("icu_session={c}"))),
        As::Token(t) => headers.push(("Authorization", format!("Bearer {t}"))),
    }
    let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    request(addr, method, path, &h, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn every_endpoint_answers_every_role_as_the_role_table_says() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(dir.path(), &config_text(dir.path(), 2, None, ""));
    let addr = gw.endpoints.http;
    let token = icu_tests::http::prepare_accounts(&gw.config_path).unwrap();
    let viewer_token = gateway_cli(
        &[
            "token",
            "add",
            "wall-display",
            "--role",
            "viewer",
            "--config",
            gw.config_path.to_str().unwrap(),
        ],
        "",
    )
    .unwrap()
    .trim()
    .to_owned();
    let mut roles: Vec<(&str, As)> = vec![("none", As::Nobody)];
    for (name, role) in [
        ("viewer.test", "viewer"),
        ("nurse.test", "nurse"),
        ("dr.test", "physician"),
        ("biomed.test", "biomed"),
    ] {
        roles.push((role, As::Cookie(login(addr, name, TEST_PASSWORD).unwrap())));
    }
    roles.push(("service", As::Token(token)));
    roles.push(("viewer-token", As::Token(viewer_token)));

    // (method, path, body, the status per role in the order of `roles`:
    //  none, viewer, nurse, physician, biomed, service, viewer-token).
    let unknown_alarm = "/api/alarms/bed-01/bed-01:limit:spo2:150456:0";
    let matrix: Vec<(&str, String, Option<&str>, [u16; 7])> = vec![
        ("GET", "/".into(), None, [200; 7]),
        ("GET", "/page.js".into(), None, [200; 7]),
        ("GET", "/healthz".into(), None, [200; 7]),
        (
            "GET",
            "/api/beds".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/devices".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/status".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/alarms".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/limit-changes".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/beds/bed-01/limits/150456".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/session".into(),
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/users".into(),
            None,
            [401, 403, 403, 403, 200, 403, 403],
        ),
        (
            "GET",
            "/metrics".into(),
            None,
            [401, 403, 403, 403, 200, 200, 403],
        ),
        // Allowed roles reach the engine, which does not know this alarm (400): the request
        // passed authentication and the role check.
        (
            "POST",
            format!("{unknown_alarm}/ack"),
            Some("{}"),
            [401, 403, 400, 400, 403, 403, 403],
        ),
        (
            "POST",
            format!("{unknown_alarm}/silence"),
            Some(r#"{"seconds": 60}"#),
            [401, 403, 400, 400, 403, 403, 403],
        ),
        (
            "PUT",
            "/api/beds/bed-01/limits/150456".into(),
            Some(r#"{"low": 85}"#),
            [401, 403, 403, 200, 403, 403, 403],
        ),
        (
            "POST",
            "/api/break-glass".into(),
            Some(r#"{"reason": "matrix test, no physician", "minutes": 1}"#),
            [401, 200, 200, 403, 200, 403, 403],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &matrix {
        for ((role, who), want) in roles.iter().zip(expected) {
            let r = send(addr, who, method, path, *body);
            if r.status != *want {
                wrong.push(format!(
                    "{method} {path} as {role}: {} (expected {want}) {}",
                    r.status,
                    r.body.trim()
                ));
            }
        }
    }
    // The engine refused the unknown alarm after the role check; the body names why.
    let r = send(
        addr,
        &roles[2].1,
        "POST",
        &format!("{unknown_alarm}/ack"),
        Some("{}"),
    );
    assert!(
        r.body.contains("unknown alarm") || r.body.contains("no open alarm"),
        "{}",
        r.body
    );
    // The event stream is a read too (its body never ends: only the status line is read).
    for ((role, who), want) in roles.iter().zip([401, 200, 200, 200, 200, 200, 200]) {
        let got = stream_status(addr, who);
        if got != want {
            wrong.push(format!(
                "GET /api/events as {role}: {got} (expected {want})"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Who changed the limit is the physician's login, not what the body claims.
    let r = send(
        addr,
        &roles[3].1,
        "PUT",
        "/api/beds/bed-01/limits/150456",
        Some(r#"{"low": 86, "who": "mallory"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().unwrap()["who"], "dr.test", "{}", r.body);
    let changes = send(addr, &roles[1].1, "GET", "/api/limit-changes", None)
        .json()
        .unwrap();
    assert!(
        changes
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["who"] == "dr.test"),
        "{changes}"
    );
}

#[test]
fn cross_origin_requests_foreign_hosts_and_missing_origins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(dir.path(), &config_text(dir.path(), 1, None, ""));
    let addr = gw.endpoints.http;
    let nurse = login(addr, "nurse.test", TEST_PASSWORD).unwrap();
    let cookie = format!("icu_session={nurse}");
    let path = "/api/alarms/bed-01/x/ack";

    let evil = request(
        addr,
        "POST",
        path,
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        Some("{}"),
    )
    .unwrap();
    assert_eq!(evil.status, 403, "{}", evil.body);
    assert!(evil.body.contains("cross_origin"), "{}", evil.body);

    let no_origin = request(addr, "POST", path, &[("Cookie", &cookie)], Some("{}")).unwrap();
    assert_eq!(no_origin.status, 403, "{}", no_origin.body);

    let fetch_cross = request(
        addr,
        "POST",
        path,
        &[
            ("Cookie", &cookie),
            ("Origin", &format!("http://{addr}")),
            ("Sec-Fetch-Site", "cross-site"),
        ],
        Some("{}"),
    )
    .unwrap();
    assert_eq!(fetch_cross.status, 403, "{}", fetch_cross.body);

    // DNS rebinding: a page on evil.example whose name now resolves to the gateway.
    for method in ["GET", "POST"] {
        let rebound = request(
            addr,
            method,
            if method == "GET" { "/api/beds" } else { path },
            &[
                ("Host", "evil.example:8080"),
                ("Cookie", &cookie),
                ("Origin", "http://evil.example:8080"),
            ],
            (method == "POST").then_some("{}"),
        )
        .unwrap();
        assert_eq!(rebound.status, 403, "{method}: {}", rebound.body);
        assert!(
            rebound.body.contains("host_not_allowed"),
            "{}",
            rebound.body
        );
    }

    // The same request from the page's own origin passes the checks (and reaches the engine).
    let own = request(
        addr,
        "POST",
        path,
        &[("Cookie", &cookie), ("Origin", &format!("http://{addr}"))],
        Some("{}"),
    )
    .unwrap();
    assert_eq!(own.status, 400, "{}", own.body);

    // Security headers, on the page and on the API.
    for p in ["/", "/api/session"] {
        let r = request(addr, "GET", p, &[("Cookie", &cookie)], None).unwrap();
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
            "{p}: {csp}"
        );
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff"),
            "{p}"
        );
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"), "{p}");
    }
    // The session cookie: HttpOnly and SameSite=Strict (Secure comes with TLS).
    let r = request(
        addr,
        "POST",
        "/api/login",
        &[],
        Some(&format!(
            r#"{{"account": "nurse.test", "password": "{TEST_PASSWORD}"}}"#
        )),
    )
    .unwrap();
    let set = r.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
}

#[test]
fn idle_sessions_lock_pins_reopen_them_and_guessing_is_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config_text(dir.path(), 1, None, "");
    cfg = cfg.replacen(
        "[store]",
        "[auth]\nidle_logoff_s = 10\nlogin_account_burst = 3\nlogin_account_period_s = 600\n\n[store]",
        1,
    );
    let gw = GatewayProc::start(dir.path(), &cfg);
    let addr = gw.endpoints.http;
    let c = gw.config_path.to_str().unwrap().to_owned();
    gateway_cli(&["user", "pin", "nurse.test", "--config", &c], "4321\n").unwrap();

    // Idle logoff: only background refreshes for longer than idle_logoff_s.
    let nurse = login(addr, "nurse.test", TEST_PASSWORD).unwrap();
    let cookie = format!("icu_session={nurse}");
    let origin = format!("http://{addr}");
    let bg = |path: &str| {
        request(
            addr,
            "GET",
            path,
            &[("Cookie", &cookie), ("x-icu-background", "1")],
            None,
        )
        .unwrap()
    };
    assert_eq!(bg("/api/beds").status, 200);
    // The nurse's alarm event stream, open while the session is active ...
    let mut stream = {
        use std::io::Write as _;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\nx-icu-background: 1\r\n\r\n"
        )
        .unwrap();
        s
    };
    let locked = icu_tests::wait_for(Duration::from_secs(20), "the idle session to lock", || {
        std::thread::sleep(Duration::from_millis(500));
        let r = bg("/api/beds");
        (r.status == 401).then_some(r)
    })
    .unwrap();
    let j = locked.json().unwrap();
    assert_eq!(
        (j["locked"].as_bool(), j["account"].as_str()),
        (Some(true), Some("nurse.test")),
        "{j}"
    );
    // ... ends once the session is locked (at its next event or keep-alive, within 15 s).
    {
        use std::io::Read as _;
        let started = std::time::Instant::now();
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "the stream of a locked session was not ended: {text}"
        );
    }
    // A wrong PIN, then the right one: the same session works again.
    let unlock = |pin: &str| {
        request(
            addr,
            "POST",
            "/api/unlock",
            &[("Cookie", &cookie), ("Origin", &origin)],
            Some(&format!(r#"{{"pin": "{pin}"}}"#)),
        )
        .unwrap()
    };
    let bad = unlock("0000");
    assert_eq!(bad.status, 401, "{}", bad.body);
    assert_eq!(bad.json().unwrap()["tries_left"], 2, "{}", bad.body);
    assert_eq!(unlock("4321").status, 200);
    assert_eq!(bg("/api/beds").status, 200);

    // Throttle: three wrong passwords, then even the right one waits.
    for _ in 0..3 {
        let r = request(
            addr,
            "POST",
            "/api/login",
            &[],
            Some(r#"{"account": "dr.test", "password": "guess-guess-guess"}"#),
        )
        .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let r = request(
        addr,
        "POST",
        "/api/login",
        &[],
        Some(&format!(
            r#"{{"account": "dr.test", "password": "{TEST_PASSWORD}"}}"#
        )),
    )
    .unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().unwrap() > 0));
    // Another account is not throttled by dr.test's guesses.
    assert!(login(addr, "biomed.test", TEST_PASSWORD).is_ok());

    // A disabled account's session ends at its next request; a revoked token is refused.
    gateway_cli(&["user", "disable", "nurse.test", "--config", &c], "").unwrap();
    assert_eq!(bg("/api/beds").status, 401);
    let token = gateway_cli(&["token", "add", "scraper", "--config", &c], "").unwrap();
    let token = token.trim();
    let bearer = format!("Bearer {token}");
    let metrics = |b: &str| {
        request(addr, "GET", "/metrics", &[("Authorization", b)], None)
            .unwrap()
            .status
    };
    assert_eq!(metrics(&bearer), 200);
    let id = token.split('_').nth(1).unwrap();
    gateway_cli(&["token", "revoke", id, "--config", &c], "").unwrap();
    assert_eq!(metrics(&bearer), 401);
}

/// The status code of `GET /api/events` (the stream is left after its head).
fn stream_status(addr: SocketAddr, who: &As) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = match who {
        As::Nobody => String::new(),
        As::Cookie(c) => format!("Cookie: icu_session={c}\r\n"),
        As::Token(t) => format!("Authorization: Bearer {t}\r\n"),
    };
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
