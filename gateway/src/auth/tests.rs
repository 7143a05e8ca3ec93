use super::*;

fn open() -> (tempfile::TempDir, Accounts) {
    let dir = tempfile::tempdir().unwrap();
    let a = Accounts::open(&dir.path().join("store.db")).unwrap();
    (dir, a)
}

#[test]
fn a_password_is_checked_against_its_argon2id_hash_only() {
    let (dir, a) = open();
    a.add("alice", Role::Nurse, "correct horse battery", Some("4321"))
        .unwrap();
    let got = a.verify_password("alice", "correct horse battery").unwrap();
    assert_eq!(
        (got.name.as_str(), got.role, got.has_pin),
        ("alice", Role::Nurse, true)
    );
    assert_eq!(
        a.verify_password("alice", "wrong password!"),
        Err(AuthError::BadCredentials)
    );
    assert_eq!(
        a.verify_password("mallory", "correct horse battery"),
        Err(AuthError::BadCredentials)
    );
    assert!(a.verify_pin("alice", "4321").is_ok());
    assert_eq!(
        a.verify_pin("alice", "1234"),
        Err(AuthError::BadCredentials)
    );
    // What is on disk is a PHC argon2id string, not the password.
    let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    let stored: String = conn
        .query_row(
            "SELECT password_hash FROM accounts WHERE name='alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("horse"));
}

#[test]
fn disabled_accounts_and_bad_inputs_are_refused() {
    let (_dir, a) = open();
    a.add("bob", Role::Physician, "a long enough pw", None)
        .unwrap();
    assert!(matches!(
        a.add("bob", Role::Viewer, "another long pw", None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        a.add("eve", Role::Nurse, "short", None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        a.add("has space", Role::Nurse, "a long enough pw", None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        a.add("svc", Role::Service, "a long enough pw", None),
        Err(AuthError::Invalid(_))
    ));
    assert!(matches!(
        a.add("pinny", Role::Nurse, "a long enough pw", Some("12ab")),
        Err(AuthError::Invalid(_))
    ));
    a.set_disabled("bob", true).unwrap();
    assert_eq!(
        a.verify_password("bob", "a long enough pw"),
        Err(AuthError::Disabled)
    );
    a.set_disabled("bob", false).unwrap();
    a.set_password("bob", "a new long password").unwrap();
    assert!(a.verify_password("bob", "a long enough pw").is_err());
    assert!(a.verify_password("bob", "a new long password").is_ok());
    assert_eq!(a.count_enabled(Role::Physician).unwrap(), 1);
    assert_eq!(
        a.set_disabled("nobody", true),
        Err(AuthError::UnknownAccount)
    );
}

#[test]
fn tokens_are_shown_once_stored_hashed_and_revocable() {
    let (dir, a) = open();
    let (info, secret) = a.token_add("prometheus", Role::Service).unwrap();
    assert!(secret.starts_with(&format!("icu_{}_", info.id)));
    assert_eq!(a.verify_token(&secret).unwrap().role, Role::Service);
    let mut forged = secret.clone();
    // Another last character (pushing a fixed 'A' left the secret unchanged 1 time in 64).
    let last = forged.pop();
    forged.push(if last == Some('A') { 'B' } else { 'A' });
    assert!(a.verify_token(&forged).is_err());
    assert!(a.verify_token("Bearer nonsense").is_err());
    assert!(matches!(
        a.token_add("robot", Role::Nurse),
        Err(AuthError::Invalid(_))
    ));
    let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM api_tokens WHERE instr(CAST(secret_sha256 AS TEXT), ?1) > 0",
            [&secret[secret.len() - 20..]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "the secret is not stored");
    a.token_revoke(&info.id).unwrap();
    assert_eq!(a.verify_token(&secret), Err(AuthError::Disabled));
    assert!(a.token_revoke(&info.id).is_err());
    assert!(a.token_list().unwrap()[0].revoked_us.is_some());
}

#[test]
fn the_auth_section_is_checked_under_the_files_names() {
    assert!(AuthConfig::default().problems().is_empty());
    let bad = AuthConfig {
        idle_logoff_s: 1,
        login_account_period_s: 0,
        allowed_hosts: vec!["http://x/".into()],
        ..AuthConfig::default()
    };
    let fields: Vec<String> = bad.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        [
            "auth.idle_logoff_s",
            "auth.login_account_period_s",
            "auth.allowed_hosts"
        ]
    );
}
