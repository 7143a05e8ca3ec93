//! Authentication and request hygiene of the HTTP surface.
//!
//! - [`Caller`] is who a request is: a person's session (cookie `icu_session`) or a machine's
//!   API token (`Authorization: Bearer icu_...`). Handlers take it as an argument and call
//!   [`Caller::require`] with the permission they need ([`crate::auth::roles`] has the table);
//!   no handler takes a user name from a request body. No credentials: 401; a locked session:
//!   401 with `"locked": true` and the account (the page asks for the PIN); not allowed: 403.
//! - [`hygiene`] (middleware, every request): the `Host` header must name this gateway (an IP
//!   literal, `localhost`, or a name in `auth.allowed_hosts`; anything else is DNS rebinding) and
//!   a state-changing request must come from the page's own origin (`Origin` equal to
//!   `http(s)://<Host>`, and a cookie-carrying one must send `Origin`): 403 otherwise.
//! - [`security_headers`]: CSP (`default-src 'self'`, no inline script, `frame-ancestors
//!   'none'`), `nosniff`, `no-referrer`, `no-store`.
//! - The audit trail ([`crate::audit::AuditLog`]): handlers write what happened (login, logoff,
//!   actions, reads of patient data) *before* they act, and refuse the action when it fails.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{DefaultHeaders, Next};
use actix_web::{http::Method, web, FromRequest, HttpRequest, HttpResponse};

use crate::audit::{Action, AuditEntry, AuditLog, TargetKind};
use crate::auth::{Auth, AuthError, Lookup, Permission, Role, SessionView};
use crate::clock::now_us;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "icu_session";
/// Header the page puts on its own background refreshes (they do not keep a session open).
pub const BACKGROUND_HEADER: &str = "x-icu-background";

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Person(SessionView),
    Token { id: String, name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub principal: Principal,
    pub role: Role,
    /// The peer address.
    pub source: String,
}

impl Caller {
    /// The name the audit trail, the log and alarm records use: the account, or `token:<id>`.
    pub fn name(&self) -> String {
        match &self.principal {
            Principal::Person(s) => s.account.clone(),
            Principal::Token { id, name } => format!("token:{id}:{name}"),
        }
    }

    /// The role as recorded: the account's role, `+break-glass` while elevated.
    pub fn role_label(&self) -> String {
        match &self.principal {
            Principal::Person(s) if s.break_glass.is_some() => format!("{}+break-glass", s.role),
            _ => self.role.to_string(),
        }
    }

    pub fn allows(&self, p: Permission) -> bool {
        match &self.principal {
            Principal::Person(s) => s.allows(p, now_us()),
            Principal::Token { .. } => self.role.allows(p),
        }
    }

    /// 403 unless the caller's role (or break-glass) grants `p`.
    // The error is the handler's answer itself (`caller.require(p)?` in a handler returning
    // `Result<_, HttpResponse>`), made once per refused request: its size does not matter.
    #[allow(clippy::result_large_err)]
    pub fn require(&self, p: Permission) -> Result<(), HttpResponse> {
        if self.allows(p) {
            Ok(())
        } else {
            Err(HttpResponse::Forbidden().json(serde_json::json!({
                "error": "forbidden",
                "needs": p,
                "account": self.name(),
                "role": self.role,
            })))
        }
    }

    /// An audit entry by this caller.
    pub fn event(&self, action: Action, target_kind: TargetKind, target: &str) -> AuditEntry {
        AuditEntry::new(action)
            .by(self.name(), self.role_label(), self.source.clone())
            .target(target_kind, target)
    }
}

/// The authentication state the handlers share.
pub struct AuthState {
    pub auth: Arc<Auth>,
    pub audit: Arc<AuditLog>,
    /// Whether the page is served over TLS (the cookie is then `Secure`).
    pub tls: bool,
    /// Last audited read per (caller, endpoint), for `auth.patient_read_audit_s`.
    reads: Mutex<HashMap<(String, &'static str), i64>>,
}

impl AuthState {
    pub fn new(auth: Arc<Auth>, audit: Arc<AuditLog>, tls: bool) -> Self {
        Self {
            auth,
            audit,
            tls,
            reads: Mutex::new(HashMap::new()),
        }
    }

    /// Writes an audit event on the blocking pool; Err is the refusal to send.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), HttpResponse> {
        let log = self.audit.clone();
        let what = entry.action.as_str();
        match web::block(move || log.append(entry)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(refused(what, &e.to_string())),
            Err(e) => Err(refused(what, &e.to_string())),
        }
    }

    /// Audits a read of patient data: the first by this caller on this endpoint, then at most
    /// one per `auth.patient_read_audit_s`. Err refuses the read.
    pub async fn audit_read(
        &self,
        caller: &Caller,
        endpoint: &'static str,
        what: &str,
    ) -> Result<(), HttpResponse> {
        let now = now_us();
        let every = (self.auth.config.patient_read_audit_s as i64).saturating_mul(1_000_000);
        let key = (caller.name(), endpoint);
        {
            let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
            if reads.get(&key).is_some_and(|last| now - last < every) {
                return Ok(());
            }
            if reads.len() > 10_000 {
                reads.retain(|_, last| now - *last < every);
            }
            reads.insert(key.clone(), now);
        }
        let e = AuditEntry::patient_read(
            &caller.name(),
            &caller.role_label(),
            &caller.source,
            &format!("{endpoint}: {what}"),
            "*",
        );
        let r = self.audit(e).await;
        if r.is_err() {
            // Not written: the next read tries again.
            self.reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        r
    }
}

fn refused(what: &str, why: &str) -> HttpResponse {
    tracing::error!(
        action = what,
        error = why,
        "refused: the audit trail could not be written"
    );
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "error": "audit_unavailable",
        "message": format!("refused: the audit trail could not record this {what} ({why}); nothing was done"),
    }))
}

fn unauthorized(body: serde_json::Value) -> actix_web::Error {
    actix_web::error::InternalError::from_response(
        "unauthorized",
        HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "Bearer realm=\"icu-gateway\""))
            .json(body),
    )
    .into()
}

/// The source address of a request (the peer; no proxy headers are trusted).
pub fn source_of(req: &HttpRequest) -> String {
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn source_ip(req: &HttpRequest) -> IpAddr {
    req.peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<super::HttpState>>().cloned();
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_owned());
        let cookie = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let active = req.headers().get(BACKGROUND_HEADER).is_none();
        let source = source_of(req);
        Box::pin(async move {
            let Some(state) = state else {
                return Err(actix_web::error::ErrorInternalServerError("no state"));
            };
            let auth = state.auth.auth.clone();
            if let Some(token) = bearer {
                let checked = web::block(move || auth.accounts.verify_token(&token))
                    .await
                    .map_err(actix_web::error::ErrorInternalServerError)?;
                return match checked {
                    Ok(t) => Ok(Caller {
                        principal: Principal::Token {
                            id: t.id,
                            name: t.name,
                        },
                        role: t.role,
                        source,
                    }),
                    Err(AuthError::Store(e)) => Err(actix_web::error::ErrorServiceUnavailable(e)),
                    Err(_) => Err(unauthorized(serde_json::json!({
                        "error": "invalid_token",
                        "message": "the API token is unknown or revoked",
                    }))),
                };
            }
            let Some(token) = cookie else {
                return Err(unauthorized(serde_json::json!({
                    "error": "login_required",
                    "message": "log in first",
                })));
            };
            match auth.sessions.lookup(&token, now_us(), active) {
                Lookup::Active(view) => {
                    // A disabled account or a changed role ends or follows at once.
                    let name = view.account.clone();
                    let a2 = auth.clone();
                    let current = web::block(move || a2.accounts.get(&name))
                        .await
                        .map_err(actix_web::error::ErrorInternalServerError)?;
                    match current {
                        Ok(Some(a)) if !a.disabled => Ok(Caller {
                            role: a.role,
                            principal: Principal::Person(SessionView {
                                role: a.role,
                                ..view
                            }),
                            source,
                        }),
                        Ok(_) => {
                            auth.sessions.end(&token);
                            Err(unauthorized(serde_json::json!({
                                "error": "login_required",
                                "message": "the account is disabled",
                            })))
                        }
                        Err(e) => Err(actix_web::error::ErrorServiceUnavailable(e.to_string())),
                    }
                }
                Lookup::Locked { account } => Err(unauthorized(serde_json::json!({
                    "error": "locked",
                    "locked": true,
                    "account": account,
                    "message": "the session was locked after inactivity; enter the PIN or log in again",
                }))),
                Lookup::Unknown => Err(unauthorized(serde_json::json!({
                    "error": "login_required",
                    "message": "the session has ended; log in again",
                }))),
            }
        })
    }
}

/// Whether a `Host` header names this gateway: an IP literal (a DNS-rebinding page cannot make
/// the browser send one of ours), `localhost`, or a configured name; each with any port.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    if host.is_empty() {
        return false;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, port)) if port.parse::<u16>().is_ok() => n,
            _ => host.as_str(),
        }
    };
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            a == host || a == name
        })
}

/// The refusal of a request whose `Host` or `Origin` is not this gateway's.
fn hygiene_refusal(req: &ServiceRequest, allowed: &[String]) -> Option<HttpResponse> {
    let headers = req.headers();
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !host_allowed(host, allowed) {
        tracing::warn!(host, peer = ?req.peer_addr(), "request refused: Host is not this gateway (auth.allowed_hosts)");
        return Some(HttpResponse::Forbidden().json(serde_json::json!({
            "error": "host_not_allowed",
            "message": format!("Host '{host}' is not this gateway; add it to auth.allowed_hosts if it is"),
        })));
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !changes {
        return None;
    }
    let origin = headers.get("origin").and_then(|h| h.to_str().ok());
    let cross_site = headers
        .get("sec-fetch-site")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|v| v == "cross-site" || v == "same-site");
    let has_cookie = req.cookie(SESSION_COOKIE).is_some();
    let bad = match origin {
        Some(o) => {
            let o = o.to_ascii_lowercase();
            let h = host.to_ascii_lowercase();
            o != format!("http://{h}") && o != format!("https://{h}")
        }
        // A browser always sends Origin on a cross-site POST; without one, a request that
        // carries the session cookie is refused (old browsers, forms from elsewhere).
        None => has_cookie,
    } || cross_site;
    bad.then(|| {
        tracing::warn!(origin = origin.unwrap_or(""), host, peer = ?req.peer_addr(), path = req.path(), "request refused: cross-origin state change");
        HttpResponse::Forbidden().json(serde_json::json!({
            "error": "cross_origin",
            "message": "a state-changing request must come from this gateway's own page",
        }))
    })
}

/// Middleware: Host and Origin checks on every request.
pub async fn hygiene(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let allowed = req
        .app_data::<web::Data<super::HttpState>>()
        .map(|s| s.auth.auth.config.allowed_hosts.clone())
        .unwrap_or_default();
    if let Some(refusal) = hygiene_refusal(&req, &allowed) {
        return Ok(req.into_response(refusal).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// The security headers on every answer.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ))
        .add(("x-content-type-options", "nosniff"))
        .add(("x-frame-options", "DENY"))
        .add(("referrer-policy", "no-referrer"))
        .add(("cache-control", "no-store"))
        .add((
            "permissions-policy",
            "camera=(), microphone=(), geolocation=()",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_gateways_names_are_accepted_as_host() {
        let allowed = vec!["icu3-gw.hospital.local".to_string()];
        for ok in [
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "localhost:8080",
            "ICU3-GW.hospital.local:8080",
            "icu3-gw.hospital.local",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example:8080",
            "",
            "icu3-gw.hospital.local.evil.example",
            "[nope]:1",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }
}
