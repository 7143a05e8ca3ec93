//! Local accounts and API tokens in the gateway's SQLite file.
//!
//! - A person's password and PIN are kept only as argon2id PHC strings (the `argon2` crate of
//!   RustCrypto, its default parameters: 19 MiB, 2 passes, 1 lane, OWASP's minimum), each with its
//!   own random salt. An unknown account name costs the same hash as a known one, so response
//!   times do not tell which names exist.
//! - An API token is `icu_<id>_<secret>`: `id` is public (it names the token in lists and the
//!   audit trail), `secret` is 32 random bytes shown once at creation. Only SHA-256 of the secret
//!   is stored (the secret is high-entropy, so a slow hash adds nothing) and compared in constant
//!   time. Revoking a token takes effect at the next request that presents it.
//!
//! Every call here is blocking SQLite: the HTTP layer calls it through `web::block`.

use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::roles::Role;
use super::AuthError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    name          TEXT    PRIMARY KEY,
    role          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    pin_hash      TEXT,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_us    INTEGER NOT NULL,
    changed_us    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_tokens (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    secret_sha256 BLOB    NOT NULL,
    created_us    INTEGER NOT NULL,
    revoked_us    INTEGER
) WITHOUT ROWID;";

/// Shortest password accepted for a person's account.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// A PIN is 4 to 8 digits (quick re-login at a shared station, only for a locked session).
pub const PIN_DIGITS: std::ops::RangeInclusive<usize> = 4..=8;

/// An account as lists and sessions see it (never its hashes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AccountInfo {
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub has_pin: bool,
    pub created_us: i64,
    pub changed_us: i64,
}

/// A token as lists and requests see it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_us: i64,
    pub revoked_us: Option<i64>,
}

/// The account and token tables.
pub struct Accounts {
    conn: Mutex<Connection>,
}

/// A name is what the audit trail and the page show: short, printable, no spaces.
pub fn check_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "account name '{name}' is not accepted: 1 to 64 of a-z A-Z 0-9 . _ - @"
        )))
    }
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AuthError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > 1024 {
        return Err(AuthError::Invalid(
            "a password is at most 1024 bytes".into(),
        ));
    }
    Ok(())
}

fn check_pin(pin: &str) -> Result<(), AuthError> {
    if PIN_DIGITS.contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(AuthError::Invalid("a PIN is 4 to 8 digits".into()))
    }
}

fn hash_secret(secret: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("argon2: {e}")))
}

fn verify_secret(secret: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of nothing anyone knows, verified when the account does not exist so that an unknown
/// name takes as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_secret("no account has this password").unwrap_or_default())
}

fn sql(e: rusqlite::Error) -> AuthError {
    AuthError::Store(e.to_string())
}

fn parse_role(s: String) -> Result<Role, rusqlite::Error> {
    s.parse::<Role>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn now_us() -> i64 {
    crate::clock::now_us()
}

impl Accounts {
    /// Opens (and creates when missing) the tables in the store's file, with the store's opener.
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        let conn = crate::store::db::open_connection(path, true)
            .map_err(|e| AuthError::Store(e.to_string()))?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a person's account. `service` is not a person's role.
    pub fn add(
        &self,
        name: &str,
        role: Role,
        password: &str,
        pin: Option<&str>,
    ) -> Result<AccountInfo, AuthError> {
        check_name(name)?;
        if role == Role::Service {
            return Err(AuthError::Invalid(
                "'service' is for API tokens (icu-gateway token add), not for accounts".into(),
            ));
        }
        check_password(password)?;
        if let Some(p) = pin {
            check_pin(p)?;
        }
        let pw = hash_secret(password)?;
        let pin = pin.map(hash_secret).transpose()?;
        let now = now_us();
        let n = self
            .conn()
            .execute(
                "INSERT OR IGNORE INTO accounts (name, role, password_hash, pin_hash, disabled, created_us, changed_us)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5)",
                params![name, role.as_str(), pw, pin, now],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(AuthError::Invalid(format!(
                "account '{name}' already exists"
            )));
        }
        self.get(name)?.ok_or(AuthError::UnknownAccount)
    }

    /// One account, or None.
    pub fn get(&self, name: &str) -> Result<Option<AccountInfo>, AuthError> {
        self.conn()
            .query_row(
                "SELECT name, role, disabled, pin_hash IS NOT NULL, created_us, changed_us FROM accounts WHERE name = ?1",
                [name],
                |r| {
                    Ok(AccountInfo {
                        name: r.get(0)?,
                        role: parse_role(r.get(1)?)?,
                        disabled: r.get(2)?,
                        has_pin: r.get(3)?,
                        created_us: r.get(4)?,
                        changed_us: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(sql)
    }

    pub fn list(&self) -> Result<Vec<AccountInfo>, AuthError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT name FROM accounts ORDER BY name")
            .map_err(sql)?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        drop(stmt);
        drop(conn);
        let mut out = Vec::new();
        for n in names {
            if let Some(a) = self.get(&n)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// How many enabled accounts hold `role` (the installer creates the first biomed account).
    pub fn count_enabled(&self, role: Role) -> Result<u64, AuthError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM accounts WHERE role = ?1 AND disabled = 0",
                [role.as_str()],
                |r| r.get(0),
            )
            .map_err(sql)
    }

    pub fn set_password(&self, name: &str, password: &str) -> Result<(), AuthError> {
        check_password(password)?;
        let pw = hash_secret(password)?;
        self.update(
            name,
            "UPDATE accounts SET password_hash = ?2, changed_us = ?3 WHERE name = ?1",
            Some(pw),
        )
    }

    /// Sets (Some) or removes (None) the account's PIN.
    pub fn set_pin(&self, name: &str, pin: Option<&str>) -> Result<(), AuthError> {
        if let Some(p) = pin {
            check_pin(p)?;
        }
        let h = pin.map(hash_secret).transpose()?;
        self.update(
            name,
            "UPDATE accounts SET pin_hash = ?2, changed_us = ?3 WHERE name = ?1",
            h,
        )
    }

    pub fn set_role(&self, name: &str, role: Role) -> Result<(), AuthError> {
        if role == Role::Service {
            return Err(AuthError::Invalid("'service' is for API tokens".into()));
        }
        self.update(
            name,
            "UPDATE accounts SET role = ?2, changed_us = ?3 WHERE name = ?1",
            Some(role.as_str().to_owned()),
        )
    }

    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), AuthError> {
        let n = self
            .conn()
            .execute(
                "UPDATE accounts SET disabled = ?2, changed_us = ?3 WHERE name = ?1",
                params![name, disabled, now_us()],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(AuthError::UnknownAccount);
        }
        Ok(())
    }

    fn update(&self, name: &str, statement: &str, value: Option<String>) -> Result<(), AuthError> {
        let n = self
            .conn()
            .execute(statement, params![name, value, now_us()])
            .map_err(sql)?;
        if n == 0 {
            return Err(AuthError::UnknownAccount);
        }
        Ok(())
    }

    /// Checks a password. A disabled account is refused like a wrong password (`BadCredentials`
    /// either way to the caller; the log and the audit trail say which).
    pub fn verify_password(&self, name: &str, password: &str) -> Result<AccountInfo, AuthError> {
        self.verify(name, password, "password_hash")
    }

    /// Checks a PIN (for unlocking that account's own locked session only).
    pub fn verify_pin(&self, name: &str, pin: &str) -> Result<AccountInfo, AuthError> {
        self.verify(name, pin, "pin_hash")
    }

    fn verify(&self, name: &str, secret: &str, column: &str) -> Result<AccountInfo, AuthError> {
        let row: Option<(Option<String>, bool)> = self
            .conn()
            .query_row(
                &format!("SELECT {column}, disabled FROM accounts WHERE name = ?1"),
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql)?;
        // The hash is checked outside the lock: argon2 takes tens of milliseconds.
        let (phc, disabled) = match row {
            Some((Some(phc), disabled)) => (phc, disabled),
            _ => {
                let _ = verify_secret(secret, dummy_hash());
                return Err(AuthError::BadCredentials);
            }
        };
        if !verify_secret(secret, &phc) {
            return Err(AuthError::BadCredentials);
        }
        if disabled {
            return Err(AuthError::Disabled);
        }
        self.get(name)?.ok_or(AuthError::UnknownAccount)
    }

    /// Creates an API token; returns it with the secret, which is shown once and never stored.
    pub fn token_add(&self, name: &str, role: Role) -> Result<(TokenInfo, String), AuthError> {
        check_name(name)?;
        if !matches!(role, Role::Service | Role::Viewer) {
            return Err(AuthError::Invalid(format!(
                "a token may hold the role service or viewer, not {role}: clinical and admin actions need a person's login"
            )));
        }
        let mut raw = [0u8; 36];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let id: String = raw[..4].iter().map(|b| format!("{b:02x}")).collect();
        let secret =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &raw[4..]);
        let digest = Sha256::digest(secret.as_bytes()).to_vec();
        let now = now_us();
        self.conn()
            .execute(
                "INSERT INTO api_tokens (id, name, role, secret_sha256, created_us) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, name, role.as_str(), digest, now],
            )
            .map_err(sql)?;
        let info = TokenInfo {
            id: id.clone(),
            name: name.to_owned(),
            role,
            created_us: now,
            revoked_us: None,
        };
        Ok((info, format!("icu_{id}_{secret}")))
    }

    pub fn token_revoke(&self, id: &str) -> Result<(), AuthError> {
        let n = self
            .conn()
            .execute(
                "UPDATE api_tokens SET revoked_us = ?2 WHERE id = ?1 AND revoked_us IS NULL",
                params![id, now_us()],
            )
            .map_err(sql)?;
        if n == 0 {
            return Err(AuthError::Invalid(format!(
                "no active token with id '{id}'"
            )));
        }
        Ok(())
    }

    pub fn token_list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, name, role, created_us, revoked_us FROM api_tokens ORDER BY created_us",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    role: parse_role(r.get(2)?)?,
                    created_us: r.get(3)?,
                    revoked_us: r.get(4)?,
                })
            })
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql);
        rows
    }

    /// Checks a presented token (`icu_<id>_<secret>`); a revoked or unknown token is refused.
    pub fn verify_token(&self, presented: &str) -> Result<TokenInfo, AuthError> {
        let (id, secret) = presented
            .strip_prefix("icu_")
            .and_then(|rest| rest.split_once('_'))
            .ok_or(AuthError::BadCredentials)?;
        // name, role, secret digest, created, revoked.
        type TokenRow = (String, String, Vec<u8>, i64, Option<i64>);
        let row: Option<TokenRow> = self
            .conn()
            .query_row(
                "SELECT name, role, secret_sha256, created_us, revoked_us FROM api_tokens WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(sql)?;
        let Some((name, role, digest, created_us, revoked_us)) = row else {
            return Err(AuthError::BadCredentials);
        };
        let presented_digest = Sha256::digest(secret.as_bytes());
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(presented_digest.as_slice(), digest.as_slice()).into();
        if !same {
            return Err(AuthError::BadCredentials);
        }
        if revoked_us.is_some() {
            return Err(AuthError::Disabled);
        }
        Ok(TokenInfo {
            id: id.to_owned(),
            name,
            role: role.parse().map_err(AuthError::Internal)?,
            created_us,
            revoked_us,
        })
    }
}
