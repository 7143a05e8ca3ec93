//! Logged-in sessions, kept in memory (a restart logs everyone off; nothing to steal on disk).
//!
//! A session is a random 256-bit token in an HttpOnly, SameSite=Strict cookie. It is *active*
//! while its person uses it; after `idle_logoff_s` without activity it is *locked*: nothing can
//! be read or done with it until the same person unlocks it with their PIN (a shared station's
//! quick re-login) or logs in again. After `lock_max_s` locked, or `max_session_s` in all, it
//! ends. Background refreshes of the page (requests marked `x-icu-background: 1`) do not count
//! as activity, so a page left open locks like any other. Three wrong PINs end the session.

use std::collections::HashMap;
use std::sync::Mutex;

use super::roles::{Permission, Role};

/// Session timings, from `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimings {
    pub idle_logoff_us: i64,
    /// Idle logoff for `viewer` accounts (a wall display); 0 uses `idle_logoff_us`.
    pub viewer_idle_logoff_us: i64,
    pub lock_max_us: i64,
    pub max_session_us: i64,
    pub max_sessions: usize,
}

/// An emergency elevation in force.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BreakGlass {
    pub reason: String,
    pub since_us: i64,
    pub until_us: i64,
}

#[derive(Debug, Clone)]
struct Session {
    account: String,
    role: Role,
    source: String,
    created_us: i64,
    last_active_us: i64,
    locked: bool,
    pin_failures: u32,
    break_glass: Option<BreakGlass>,
}

/// Who a session belongs to, as a request sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SessionView {
    pub account: String,
    pub role: Role,
    pub created_us: i64,
    pub idle_logoff_at_us: i64,
    pub break_glass: Option<BreakGlass>,
}

impl SessionView {
    pub fn allows(&self, p: Permission, now_us: i64) -> bool {
        self.role.allows(p)
            || (self
                .break_glass
                .as_ref()
                .is_some_and(|b| b.until_us > now_us)
                && Role::break_glass_grants(p))
    }
}

/// What a presented token is.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Active(SessionView),
    /// Idle for too long: only a PIN unlock (or a new login) opens it again.
    Locked {
        account: String,
    },
    Unknown,
}

/// Why a session ended (for the audit trail and the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Logoff,
    TooManyPins,
}

pub struct Sessions {
    timings: SessionTimings,
    map: Mutex<HashMap<String, Session>>,
}

fn new_token() -> String {
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw)
}

impl Sessions {
    pub fn new(timings: SessionTimings) -> Self {
        Self {
            timings,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle_us(&self, role: Role) -> i64 {
        if role == Role::Viewer && self.timings.viewer_idle_logoff_us > 0 {
            self.timings.viewer_idle_logoff_us
        } else {
            self.timings.idle_logoff_us
        }
    }

    fn view(&self, s: &Session) -> SessionView {
        SessionView {
            account: s.account.clone(),
            role: s.role,
            created_us: s.created_us,
            idle_logoff_at_us: s.last_active_us + self.idle_us(s.role),
            break_glass: s.break_glass.clone(),
        }
    }

    /// Opens a session for a person who has just logged in; returns its token.
    pub fn create(&self, account: &str, role: Role, source: &str, now_us: i64) -> String {
        let token = new_token();
        let mut map = self.map();
        self.expire(&mut map, now_us);
        if map.len() >= self.timings.max_sessions {
            // The longest-idle session makes room: the cap bounds memory, not who may log in.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_active_us)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            token.clone(),
            Session {
                account: account.to_owned(),
                role,
                source: source.to_owned(),
                created_us: now_us,
                last_active_us: now_us,
                locked: false,
                pin_failures: 0,
                break_glass: None,
            },
        );
        token
    }

    fn expire(&self, map: &mut HashMap<String, Session>, now_us: i64) {
        let t = self.timings;
        map.retain(|_, s| {
            let idle_at = s.last_active_us + self.idle_us(s.role);
            now_us - s.created_us < t.max_session_us && now_us < idle_at + t.lock_max_us
        });
    }

    /// Looks a token up; `active` says whether this request is the person's own activity (it
    /// then moves the idle logoff on).
    pub fn lookup(&self, token: &str, now_us: i64, active: bool) -> Lookup {
        let mut map = self.map();
        let t = self.timings;
        let Some(s) = map.get_mut(token) else {
            return Lookup::Unknown;
        };
        let idle = if s.role == Role::Viewer && t.viewer_idle_logoff_us > 0 {
            t.viewer_idle_logoff_us
        } else {
            t.idle_logoff_us
        };
        if now_us - s.created_us >= t.max_session_us
            || now_us >= s.last_active_us + idle + t.lock_max_us
        {
            map.remove(token);
            return Lookup::Unknown;
        }
        if s.locked || now_us >= s.last_active_us + idle {
            s.locked = true;
            return Lookup::Locked {
                account: s.account.clone(),
            };
        }
        if active {
            s.last_active_us = now_us;
        }
        if s.break_glass.as_ref().is_some_and(|b| b.until_us <= now_us) {
            s.break_glass = None;
        }
        let s = s.clone();
        drop(map);
        Lookup::Active(self.view(&s))
    }

    /// The account a locked session belongs to (for the PIN check), or None.
    pub fn locked_account(&self, token: &str) -> Option<String> {
        self.map()
            .get(token)
            .filter(|s| s.locked)
            .map(|s| s.account.clone())
    }

    /// Unlocks after the PIN was checked; a wrong PIN counts, and the third ends the session.
    pub fn unlock(&self, token: &str, pin_ok: bool, now_us: i64) -> Result<SessionView, Ended> {
        let mut map = self.map();
        let Some(s) = map.get_mut(token) else {
            return Err(Ended::Logoff);
        };
        if !pin_ok {
            s.pin_failures += 1;
            if s.pin_failures >= 3 {
                map.remove(token);
                return Err(Ended::TooManyPins);
            }
            return Err(Ended::Logoff);
        }
        s.locked = false;
        s.pin_failures = 0;
        s.last_active_us = now_us;
        let s = s.clone();
        drop(map);
        Ok(self.view(&s))
    }

    /// Wrong PINs so far on a session (the page says how many are left).
    pub fn pin_failures(&self, token: &str) -> u32 {
        self.map().get(token).map_or(0, |s| s.pin_failures)
    }

    /// Ends a session (logoff); returns whose it was.
    pub fn end(&self, token: &str) -> Option<(String, Role)> {
        self.map().remove(token).map(|s| (s.account, s.role))
    }

    /// Ends every session of an account (disabled, password changed).
    pub fn end_account(&self, account: &str) -> usize {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, s| s.account != account);
        before - map.len()
    }

    /// Starts an emergency elevation on an active session.
    pub fn break_glass(
        &self,
        token: &str,
        reason: &str,
        now_us: i64,
        duration_us: i64,
    ) -> Option<BreakGlass> {
        let mut map = self.map();
        let s = map.get_mut(token).filter(|s| !s.locked)?;
        let b = BreakGlass {
            reason: reason.to_owned(),
            since_us: now_us,
            until_us: now_us + duration_us,
        };
        s.break_glass = Some(b.clone());
        s.last_active_us = now_us;
        Some(b)
    }

    /// Sessions now open (active or locked), and those under break-glass, for `/api/status`.
    pub fn counts(&self, now_us: i64) -> (usize, Vec<(String, String, BreakGlass)>) {
        let map = self.map();
        let glass = map
            .values()
            .filter_map(|s| {
                s.break_glass
                    .as_ref()
                    .filter(|b| b.until_us > now_us)
                    .map(|b| (s.account.clone(), s.source.clone(), b.clone()))
            })
            .collect();
        (map.len(), glass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn sessions() -> Sessions {
        Sessions::new(SessionTimings {
            idle_logoff_us: 60 * S,
            viewer_idle_logoff_us: 600 * S,
            lock_max_us: 300 * S,
            max_session_us: 3600 * S,
            max_sessions: 3,
        })
    }

    #[test]
    fn idle_sessions_lock_and_only_activity_keeps_them_open() {
        let s = sessions();
        let t = s.create("alice", Role::Nurse, "10.0.0.1", 0);
        assert!(matches!(s.lookup(&t, 30 * S, false), Lookup::Active(_)));
        // Background refreshes do not move the idle logoff.
        assert_eq!(
            s.lookup(&t, 61 * S, false),
            Lookup::Locked {
                account: "alice".into()
            }
        );
        // Once locked, activity does not reopen it: only the PIN does.
        assert!(matches!(s.lookup(&t, 62 * S, true), Lookup::Locked { .. }));
        assert!(s.unlock(&t, true, 63 * S).is_ok());
        assert!(matches!(s.lookup(&t, 100 * S, true), Lookup::Active(_)));
        assert!(matches!(s.lookup(&t, 159 * S, false), Lookup::Active(_)));
        assert!(matches!(
            s.lookup(&t, 161 * S, false),
            Lookup::Locked { .. }
        ));
        // Locked for longer than lock_max: gone.
        assert_eq!(s.lookup(&t, 161 * S + 300 * S, false), Lookup::Unknown);
    }

    #[test]
    fn three_wrong_pins_end_the_session() {
        let s = sessions();
        let t = s.create("alice", Role::Nurse, "10.0.0.1", 0);
        assert!(matches!(s.lookup(&t, 61 * S, false), Lookup::Locked { .. }));
        assert_eq!(s.unlock(&t, false, 62 * S), Err(Ended::Logoff));
        assert_eq!(s.unlock(&t, false, 63 * S), Err(Ended::Logoff));
        assert_eq!(s.unlock(&t, false, 64 * S), Err(Ended::TooManyPins));
        assert_eq!(s.lookup(&t, 65 * S, true), Lookup::Unknown);
    }

    #[test]
    fn break_glass_grants_the_clinical_permissions_until_it_runs_out() {
        let s = sessions();
        let t = s.create("vic", Role::Viewer, "10.0.0.2", 0);
        let Lookup::Active(v) = s.lookup(&t, S, true) else {
            panic!()
        };
        assert!(!v.allows(Permission::ChangeLimits, S));
        s.break_glass(&t, "code blue, no physician on the unit", S, 10 * S)
            .unwrap();
        let Lookup::Active(v) = s.lookup(&t, 2 * S, true) else {
            panic!()
        };
        assert!(v.allows(Permission::ChangeLimits, 2 * S));
        assert!(v.allows(Permission::Acknowledge, 2 * S));
        assert!(!v.allows(Permission::Administer, 2 * S));
        let Lookup::Active(v) = s.lookup(&t, 12 * S, true) else {
            panic!()
        };
        assert!(v.break_glass.is_none());
        assert!(!v.allows(Permission::ChangeLimits, 12 * S));
    }

    #[test]
    fn the_session_cap_evicts_the_longest_idle_and_logoff_ends_one() {
        let s = sessions();
        let a = s.create("a", Role::Nurse, "x", 0);
        let b = s.create("b", Role::Nurse, "x", S);
        let c = s.create("c", Role::Nurse, "x", 2 * S);
        let d = s.create("d", Role::Nurse, "x", 3 * S);
        assert_eq!(s.lookup(&a, 4 * S, true), Lookup::Unknown);
        for t in [&b, &c, &d] {
            assert!(matches!(s.lookup(t, 4 * S, true), Lookup::Active(_)));
        }
        assert_eq!(s.end(&b).map(|x| x.0), Some("b".to_string()));
        assert_eq!(s.lookup(&b, 5 * S, true), Lookup::Unknown);
        assert_eq!(s.end_account("c"), 1);
        assert_eq!(s.lookup(&c, 5 * S, true), Lookup::Unknown);
    }
}
