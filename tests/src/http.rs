//! A minimal HTTP/1.1 client over real TCP for the gateway's page and API, and the test
//! accounts it logs in with.
//!
//! The API needs a login (issue 13): [`prepare_accounts`] creates, with the real
//! `icu-gateway user add` and `token add` commands, a physician `dr.test`, a nurse `nurse.test`,
//! a biomed `biomed.test` and a viewer `viewer.test` (password [`TEST_PASSWORD`]) and a service
//! token; [`register`] tells the client which gateway address uses which config. Requests made
//! through [`authed`] then carry the session cookie of `dr.test` (logging in on first use and
//! again after a gateway restart), `/metrics` the service token, and state-changing requests the
//! page's own `Origin`.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::bin_path;

/// Password of every test account.
pub const TEST_PASSWORD: &str = "test-password-123";
/// The account authed requests use (a physician may acknowledge, silence and change limits).
pub const DEFAULT_ACCOUNT: &str = "dr.test";
/// The test accounts and their roles.
pub const TEST_ACCOUNTS: &[(&str, &str)] = &[
    ("dr.test", "physician"),
    ("nurse.test", "nurse"),
    ("biomed.test", "biomed"),
    ("viewer.test", "viewer"),
];

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    /// Body (de-chunked).
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.body)?)
    }

    /// A header's value (first one, case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The `icu_session` cookie a login set.
    pub fn session_cookie(&self) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            if !n.trim().eq_ignore_ascii_case("set-cookie") {
                return None;
            }
            let first = v.trim().split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k == "icu_session" && !val.is_empty()).then(|| val.to_owned())
        })
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The text of one HTTP/1.1 request with `headers` (plus `Host: host` unless they carry one,
/// `Connection: close`, and a JSON body's type and length).
fn request_text(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    req
}

/// One request with exactly the headers given (plus Host, Connection and Content-Length).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let req = request_text(&addr.to_string(), method, path, headers, body);
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_reply(&buf)
}

/// Logs in; returns the session cookie's value.
pub fn login(addr: SocketAddr, account: &str, password: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({ "account": account, "password": password }).to_string();
    let origin = match tls_of(addr) {
        Some(_) => format!("https://localhost:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    let r = send_any(
        addr,
        "POST",
        "/api/login",
        &[("Origin", &origin)],
        Some(&body),
    )?;
    anyhow::ensure!(r.status == 200, "login as {account}: {} {}", r.head, r.body);
    r.session_cookie()
        .ok_or_else(|| anyhow::anyhow!("login set no session cookie: {}", r.head))
}

/// Runs `icu-gateway <args>` with `stdin` fed; returns stdout.
pub fn gateway_cli(args: &[&str], stdin: &str) -> anyhow::Result<String> {
    gateway_cli_with(&bin_path("icu-gateway"), args, stdin)
}

/// As [`gateway_cli`], with the binary `bin` (e.g. a release build).
pub fn gateway_cli_with(bin: &Path, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "icu-gateway {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the test accounts and a service token in the store of `config` (once per data
/// folder: the token is kept in `service-token.txt` beside the config). Returns the token.
pub fn prepare_accounts(config: &Path) -> anyhow::Result<String> {
    prepare_accounts_with(&bin_path("icu-gateway"), config)
}

/// As [`prepare_accounts`], with the `icu-gateway` binary `bin`.
pub fn prepare_accounts_with(bin: &Path, config: &Path) -> anyhow::Result<String> {
    let saved = config.with_file_name("service-token.txt");
    if let Ok(t) = std::fs::read_to_string(&saved) {
        return Ok(t.trim().to_owned());
    }
    let c = config.to_str().expect("utf-8 path");
    for (name, role) in TEST_ACCOUNTS {
        gateway_cli_with(
            bin,
            &["user", "add", name, "--role", role, "--config", c],
            &format!("{TEST_PASSWORD}\n"),
        )?;
    }
    let token = gateway_cli_with(
        bin,
        &["token", "add", "tests", "--role", "service", "--config", c],
        "",
    )?
    .trim()
    .to_owned();
    std::fs::write(&saved, &token)?;
    Ok(token)
}

/// The same accounts and token as [`prepare_accounts`], made in this process through
/// `icu_gateway::auth::Accounts` in the store file `store` (for a gateway started in-process,
/// whose config is not on disk). Returns the token.
pub fn prepare_accounts_in_process(store: &Path) -> anyhow::Result<String> {
    let accounts = icu_gateway::auth::Accounts::open(store)?;
    for (name, role) in TEST_ACCOUNTS {
        accounts.add(
            name,
            role.parse().map_err(anyhow::Error::msg)?,
            TEST_PASSWORD,
            None,
        )?;
    }
    let (_, token) = accounts.token_add("tests", icu_gateway::auth::Role::Service)?;
    Ok(token)
}

struct Creds {
    token: String,
    cookie: Option<String>,
    /// The page is served over HTTPS: the CA bundle to trust (as `localhost`).
    tls_ca: Option<PathBuf>,
}

static CREDS: Mutex<Option<HashMap<SocketAddr, Creds>>> = Mutex::new(None);

/// Tells [`authed`] the gateway at `addr` runs with `config` (accounts made if missing).
pub fn register(addr: SocketAddr, config: &Path) -> anyhow::Result<()> {
    register_token(addr, prepare_accounts(config)?);
    Ok(())
}

/// Tells [`authed`] the gateway at `addr` has the test accounts and the service token `token`.
pub fn register_token(addr: SocketAddr, token: String) {
    CREDS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(
            addr,
            Creds {
                token,
                cookie: None,
                tls_ca: None,
            },
        );
}

fn creds_of(addr: SocketAddr) -> Option<(String, Option<String>)> {
    CREDS
        .lock()
        .unwrap()
        .as_ref()?
        .get(&addr)
        .map(|c| (c.token.clone(), c.cookie.clone()))
}

fn tls_of(addr: SocketAddr) -> Option<PathBuf> {
    CREDS
        .lock()
        .unwrap()
        .as_ref()?
        .get(&addr)
        .and_then(|c| c.tls_ca.clone())
}

/// The gateway at `addr` serves its page over HTTPS with a certificate from `ca` for
/// `localhost`: [`authed`] and [`login`] speak TLS to it from now on.
pub fn use_tls(addr: SocketAddr, ca: &Path) {
    if let Some(c) = CREDS
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|m| m.get_mut(&addr))
    {
        c.tls_ca = Some(ca.to_owned());
    }
}

/// A request over TLS when the gateway was marked with [`use_tls`], else plain.
fn send_any(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    match tls_of(addr) {
        Some(ca) => request_tls(addr, &ca, "localhost", method, path, headers, body),
        None => request(addr, method, path, headers, body),
    }
}

fn set_cookie(addr: SocketAddr, cookie: Option<String>) {
    if let Some(c) = CREDS
        .lock()
        .unwrap()
        .as_mut()
        .and_then(|m| m.get_mut(&addr))
    {
        c.cookie = cookie;
    }
}

/// A request as the test account `dr.test` (or with the service token for `/metrics`): logs
/// in when needed, and once more when the answer is 401 (a restarted gateway forgets sessions).
/// A gateway nobody registered gets the request without credentials.
pub fn authed(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    let Some((token, cookie)) = creds_of(addr) else {
        return request(addr, method, path, &[], body);
    };
    let origin = match tls_of(addr) {
        Some(_) => format!("https://localhost:{}", addr.port()),
        None => format!("http://{addr}"),
    };
    if path.starts_with("/metrics") {
        let bearer = format!("Bearer {token}");
        return send_any(addr, method, path, &[("Authorization", &bearer)], body);
    }
    let send = |cookie: &str| {
        let c = format!("icu_session={cookie}");
        send_any(
            addr,
            method,
            path,
            &[("Cookie", &c), ("Origin", &origin)],
            body,
        )
    };
    if let Some(c) = cookie {
        let r = send(&c)?;
        if r.status != 401 {
            return Ok(r);
        }
    }
    let c = login(addr, DEFAULT_ACCOUNT, TEST_PASSWORD)?;
    set_cookie(addr, Some(c.clone()));
    send(&c)
}

/// The config file of a registered gateway's folder, for tests that add accounts.
pub fn config_of(dir: &Path) -> PathBuf {
    dir.join("gateway.toml")
}

/// Header lines (`Cookie` and `Origin`, each ending in CRLF) for a hand-written request to a
/// registered gateway as `dr.test`, logging in when needed; empty for an unknown gateway.
pub fn auth_header_lines(addr: SocketAddr) -> String {
    let Some((_, cookie)) = creds_of(addr) else {
        return String::new();
    };
    let cookie = match cookie {
        Some(c) => c,
        None => {
            let c = login(addr, DEFAULT_ACCOUNT, TEST_PASSWORD).expect("login as dr.test");
            set_cookie(addr, Some(c.clone()));
            c
        }
    };
    format!("Cookie: icu_session={cookie}\r\nOrigin: http://{addr}\r\n")
}

/// `Authorization` header line for `/metrics` on a registered gateway (the service token).
pub fn token_header_line(addr: SocketAddr) -> String {
    creds_of(addr)
        .map(|(t, _)| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default()
}

/// Registers a gateway whose accounts are not the test accounts (the demo's): requests through
/// [`authed`] log in as `account`.
pub fn register_account(addr: SocketAddr, account: &str, password: &str) -> anyhow::Result<()> {
    let cookie = login(addr, account, password)?;
    CREDS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(
            addr,
            Creds {
                token: String::new(),
                cookie: Some(cookie),
                tls_ca: None,
            },
        );
    Ok(())
}

/// One request over HTTPS, trusting only the CA bundle `ca` (PEM), to `host` (the name the
/// gateway's certificate must carry) at `addr`.
pub fn request_tls(
    addr: SocketAddr,
    ca: &Path,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<Reply> {
    use rustls::pki_types::pem::PemObject as _;
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = request_text(
        &format!("{host}:{}", addr.port()),
        method,
        path,
        headers,
        body,
    );
    tls.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    // A server that closes without close_notify ends the read with an error after the body.
    let _ = tls.read_to_end(&mut buf);
    parse_reply(&buf)
}

/// The `--ignore-certificate-errors-spki-list` value that makes Chromium trust exactly this
/// certificate (base64 of the SHA-256 of its SubjectPublicKeyInfo): the browser test's way of
/// trusting the test PKI without touching the machine's trust store.
pub fn spki_pin(cert_pem: &Path) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    use sha2::Digest as _;
    let der = rustls::pki_types::CertificateDer::from_pem_file(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: {e}", cert_pem.display()))?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        digest,
    ))
}

/// GET a JSON document (status 200 only) as the test physician `dr.test`, or with the service
/// token for `/metrics` (see above).
pub fn http_get_json(addr: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let r = authed(addr, "GET", path, None)?;
    anyhow::ensure!(r.status == 200, "status: {}\n{}", r.head, r.body);
    r.json()
}

/// A request with a JSON body as `dr.test`; returns the JSON answer (status 200 only).
pub fn http_send_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    let r = authed(addr, method, path, Some(body))?;
    anyhow::ensure!(r.status == 200, "status: {}\n{}", r.head, r.body);
    r.json()
}

pub fn http_post_json(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    http_send_json(addr, "POST", path, body)
}

pub fn http_put_json(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> anyhow::Result<serde_json::Value> {
    http_send_json(addr, "PUT", path, body)
}

/// Status line, headers and (de-chunked) body of one HTTP/1.1 answer.
fn parse_reply(buf: &[u8]) -> anyhow::Result<Reply> {
    let text = String::from_utf8_lossy(buf);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok(Reply {
        status,
        head: head.to_owned(),
        body,
    })
}
