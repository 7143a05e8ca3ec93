//! Login, logoff, PIN unlock, break-glass and the account list: the session endpoints. Every
//! outcome (also a failed or throttled login) is written to the audit trail before it is
//! answered; a login whose audit entry cannot be written is refused.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{web, HttpRequest, HttpResponse};

use super::guard::AuthState;
use super::guard::{source_ip, source_of, Caller, Principal, SESSION_COOKIE};
use super::limits::{check_lengths, MAX_NAME_CHARS, MAX_TEXT_CHARS};
use crate::audit::{Action, AuditEntry, Outcome, TargetKind};
use crate::auth::{AuthError, Permission};
use crate::clock::now_us;

#[derive(serde::Deserialize)]
pub(super) struct LoginBody {
    account: String,
    password: String,
}

/// An entry about `account` by whoever sent `req` (before or without a session).
fn anonymous(req: &HttpRequest, account: &str, role: &str, action: Action) -> AuditEntry {
    AuditEntry::new(action)
        .by(account, role, source_of(req))
        .target(TargetKind::User, account)
}

fn session_cookie(value: String, secure: bool) -> Cookie<'static> {
    let mut c = Cookie::build(SESSION_COOKIE, value)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(secure)
        .finish();
    if c.value().is_empty() {
        c.make_removal();
    }
    c
}

pub(super) async fn login(
    state: web::Data<AuthState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> HttpResponse {
    if let Some(refused) = check_lengths(&[
        ("account", &body.account, MAX_NAME_CHARS),
        ("password", &body.password, 1024),
    ]) {
        return refused;
    }
    let auth = state.auth.clone();
    if let Err(wait) = auth.throttle.attempt(&body.account, source_ip(&req)) {
        let e = anonymous(&req, &body.account, "", Action::LoginFailed)
            .outcome(Outcome::Denied)
            .reason(format!(
                "throttled: too many attempts; retry after {} s",
                wait.as_secs().max(1)
            ));
        if let Err(r) = state.audit(e).await {
            return r;
        }
        tracing::warn!(account = %body.account, source = %source_of(&req), "login throttled");
        return HttpResponse::TooManyRequests()
            .insert_header(("retry-after", wait.as_secs().max(1).to_string()))
            .json(serde_json::json!({
                "error": "throttled",
                "message": format!("too many login attempts; try again in {} s", wait.as_secs().max(1)),
            }));
    }
    let (name, password) = (body.account.clone(), body.password.clone());
    let a2 = auth.clone();
    let checked = web::block(move || a2.accounts.verify_password(&name, &password)).await;
    let account = match checked {
        Ok(Ok(a)) => a,
        Ok(Err(AuthError::Store(e))) => {
            return HttpResponse::ServiceUnavailable()
                .body(format!("account store unavailable: {e}\n"))
        }
        Err(e) => {
            return HttpResponse::ServiceUnavailable()
                .body(format!("account store unavailable: {e}\n"))
        }
        Ok(Err(why)) => {
            let e = anonymous(&req, &body.account, "", Action::LoginFailed)
                .outcome(Outcome::Failed)
                .reason(why.to_string());
            if let Err(r) = state.audit(e).await {
                return r;
            }
            tracing::warn!(account = %body.account, source = %source_of(&req), reason = %why, "login failed");
            return HttpResponse::Unauthorized().json(serde_json::json!({
                "error": "bad_credentials",
                "message": "wrong account name or password",
            }));
        }
    };
    let e = anonymous(&req, &account.name, account.role.as_str(), Action::Login);
    if let Err(r) = state.audit(e).await {
        return r;
    }
    let token = auth
        .sessions
        .create(&account.name, account.role, &source_of(&req), now_us());
    tracing::info!(account = %account.name, role = %account.role, source = %source_of(&req), "login");
    HttpResponse::Ok()
        .cookie(session_cookie(token, state.tls))
        .json(serde_json::json!({
            "account": account.name,
            "role": account.role,
            "has_pin": account.has_pin,
            "idle_logoff_s": auth.config.idle_logoff_s,
        }))
}

pub(super) async fn logout(state: web::Data<AuthState>, req: HttpRequest) -> HttpResponse {
    let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
        return HttpResponse::Ok()
            .cookie(session_cookie(String::new(), state.tls))
            .json(serde_json::json!({ "ok": true }));
    };
    if let Some((account, role)) = state.auth.sessions.end(&token) {
        let e = anonymous(&req, &account, role.as_str(), Action::Logoff);
        // The session is gone either way; a failed audit write is logged by `audit`.
        let _ = state.audit(e).await;
        tracing::info!(account = %account, "logoff");
    }
    HttpResponse::Ok()
        .cookie(session_cookie(String::new(), state.tls))
        .json(serde_json::json!({ "ok": true }))
}

#[derive(serde::Deserialize)]
pub(super) struct UnlockBody {
    pin: String,
}

/// The same person reopens their locked session with the PIN.
pub(super) async fn unlock(
    state: web::Data<AuthState>,
    req: HttpRequest,
    body: web::Json<UnlockBody>,
) -> HttpResponse {
    let auth = state.auth.clone();
    let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
        return HttpResponse::Unauthorized().json(serde_json::json!({"error": "login_required"}));
    };
    let Some(account) = auth.sessions.locked_account(&token) else {
        return HttpResponse::BadRequest().json(
            serde_json::json!({"error": "not_locked", "message": "this session is not locked"}),
        );
    };
    if let Err(wait) = auth.throttle.attempt(&account, source_ip(&req)) {
        return HttpResponse::TooManyRequests()
            .insert_header(("retry-after", wait.as_secs().max(1).to_string()))
            .json(serde_json::json!({"error": "throttled"}));
    }
    let (a2, name, pin) = (auth.clone(), account.clone(), body.pin.clone());
    let ok = matches!(
        web::block(move || a2.accounts.verify_pin(&name, &pin)).await,
        Ok(Ok(_))
    );
    let mut e = anonymous(&req, &account, "", Action::Unlock);
    if !ok {
        e = e.outcome(Outcome::Failed).reason("wrong PIN");
    }
    if let Err(r) = state.audit(e).await {
        return r;
    }
    match auth.sessions.unlock(&token, ok, now_us()) {
        Ok(view) => HttpResponse::Ok().json(view),
        Err(crate::auth::sessions::Ended::TooManyPins) => {
            tracing::warn!(account = %account, "session ended after three wrong PINs");
            HttpResponse::Unauthorized()
                .cookie(session_cookie(String::new(), state.tls))
                .json(serde_json::json!({"error": "login_required", "message": "three wrong PINs: log in again"}))
        }
        Err(_) => HttpResponse::Unauthorized().json(serde_json::json!({
            "error": "bad_pin",
            "locked": true,
            "account": account,
            "tries_left": 3u32.saturating_sub(auth.sessions.pin_failures(&token)),
        })),
    }
}

/// Who is logged in on this page (also the page's "still here" signal).
pub(super) async fn whoami(caller: Caller) -> HttpResponse {
    match &caller.principal {
        Principal::Person(s) => HttpResponse::Ok().json(serde_json::json!({
            "account": s.account,
            "role": s.role,
            "idle_logoff_at_us": s.idle_logoff_at_us,
            "break_glass": s.break_glass,
            "may": {
                "acknowledge": caller.allows(Permission::Acknowledge),
                "silence": caller.allows(Permission::Silence),
                "change_limits": caller.allows(Permission::ChangeLimits),
                "administer": caller.allows(Permission::Administer),
            },
        })),
        Principal::Token { id, name } => HttpResponse::Ok().json(serde_json::json!({
            "token": id, "name": name, "role": caller.role,
        })),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct BreakGlassBody {
    reason: String,
    minutes: Option<u32>,
}

/// Emergency access: the person gets the physician's clinical permissions for a while. The
/// reason is mandatory; the event is audited, logged at WARN and shown in `/api/status`.
pub(super) async fn break_glass(
    state: web::Data<AuthState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Json<BreakGlassBody>,
) -> HttpResponse {
    if let Err(r) = caller.require(Permission::BreakGlass) {
        return r;
    }
    if !matches!(caller.principal, Principal::Person(_)) {
        return HttpResponse::Forbidden().json(serde_json::json!({
            "error": "forbidden",
            "message": "break-glass is for a person's login, not an API token",
        }));
    }
    if let Some(refused) = check_lengths(&[("reason", &body.reason, MAX_TEXT_CHARS)]) {
        return refused;
    }
    let reason = body.reason.trim();
    if reason.chars().count() < 10 {
        return HttpResponse::BadRequest().json(serde_json::json!({
            "error": "reason_required",
            "message": "break-glass needs a reason of at least 10 characters",
        }));
    }
    let max_s = state.auth.config.break_glass_max_s;
    let secs = (u64::from(body.minutes.unwrap_or(15)) * 60).clamp(60, max_s);
    let Some(token) = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()) else {
        return HttpResponse::BadRequest().body("break-glass needs a person's session\n");
    };
    let e = caller
        .event(Action::BreakGlass, TargetKind::User, &caller.name())
        .values(None, Some(format!("physician permissions for {secs} s")))
        .reason(reason);
    if let Err(r) = state.audit(e).await {
        return r;
    }
    match state
        .auth
        .sessions
        .break_glass(&token, reason, now_us(), secs as i64 * 1_000_000)
    {
        Some(b) => {
            tracing::warn!(account = %caller.name(), source = %caller.source, reason, seconds = secs,
                "BREAK-GLASS: emergency access granted");
            HttpResponse::Ok().json(b)
        }
        None => HttpResponse::Unauthorized().json(serde_json::json!({"error": "login_required"})),
    }
}

/// The accounts (biomed only).
pub(super) async fn users(state: web::Data<AuthState>, caller: Caller) -> HttpResponse {
    if let Err(r) = caller.require(Permission::Administer) {
        return r;
    }
    let auth = state.auth.clone();
    match web::block(move || auth.accounts.list()).await {
        Ok(Ok(list)) => HttpResponse::Ok().json(serde_json::json!({ "accounts": list })),
        Ok(Err(e)) => HttpResponse::ServiceUnavailable().body(format!("{e}\n")),
        Err(e) => HttpResponse::ServiceUnavailable().body(format!("{e}\n")),
    }
}

/// Open sessions and break-glass elevations in force, for `/api/status`.
pub(super) fn status_json(state: &AuthState) -> serde_json::Value {
    let (open, glass) = state.auth.sessions.counts(now_us());
    serde_json::json!({
        "sessions": open,
        "break_glass": glass.into_iter().map(|(account, source, b)| serde_json::json!({
            "account": account, "source": source, "reason": b.reason, "until_us": b.until_us,
        })).collect::<Vec<_>>(),
    })
}
