use std::sync::Arc;

use ed25519_dalek::Verifier as _;
use icu_cloud_bridge::signing::GatewayKey;
use tempfile::TempDir;

use super::chain::HashInput;
use super::cli::{run, write_json_lines, write_table, AuditCommand};
use super::*;

const T0: i64 = 1_700_000_000_000_000;

/// The i-th scripted entry: a mix of actions, beds, accounts and optional fields.
fn scripted(i: u64) -> AuditEntry {
    let bed = format!("bed-{:02}", i % 3 + 1);
    match i % 5 {
        0 => AuditEntry::new(Action::Login).by("nurse.jo", "nurse", "10.0.0.7:5000"),
        1 => AuditEntry::new(Action::Acknowledge)
            .by("nurse.jo", "nurse", "10.0.0.7:5000")
            .target(TargetKind::Alarm, format!("spo2-01:low:{i}"))
            .bed(bed),
        2 => AuditEntry::new(Action::LimitChange)
            .by("dr.lee", "physician", "10.0.0.9:6000")
            .target(TargetKind::Parameter, format!("{bed}/150456"))
            .bed(bed)
            .values(Some("90..100".into()), Some(format!("{}..100", 85 + i % 4))),
        3 => AuditEntry::patient_read("dr.lee", "physician", "10.0.0.9:6000", "/api/beds", "P1"),
        _ => AuditEntry::new(Action::Silence)
            .by("nurse.kim", "nurse", "10.0.0.8:5001")
            .target(TargetKind::Bed, bed)
            .outcome(Outcome::Denied)
            .reason("silence longer than the configured maximum"),
    }
}

struct Trail {
    _dir: TempDir,
    path: std::path::PathBuf,
    key: Arc<GatewayKey>,
    log: AuditLog,
}

/// A trail of `n` scripted entries, one second apart.
fn trail(n: u64) -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("gateway.db");
    let key = Arc::new(GatewayKey::generate());
    let log = AuditLog::open(&path, GatewayKey::clone(&key)).unwrap();
    for i in 1..=n {
        let rec = log
            .append_at(scripted(i), T0 + i as i64 * 1_000_000, i % 4 != 0)
            .unwrap();
        assert_eq!(rec.seq, i);
    }
    Trail {
        _dir: dir,
        path,
        key,
        log,
    }
}

impl Trail {
    fn sql(&self, sql: &str) {
        self.log
            .with_conn(|c| c.execute_batch(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// What an attacker with write access to the file does first.
    fn drop_triggers(&self) {
        self.sql(
            "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;
             DROP TRIGGER audit_log_next_seq; DROP TRIGGER audit_head_no_delete;",
        );
    }

    /// The failing seq and problem of a verification that must fail.
    fn fails(&self, from: Option<u64>) -> (u64, Problem) {
        match self.log.verify(from) {
            Ok(s) => panic!("verified though it must not: {s}"),
            Err(VerifyFailure::Bad { seq, problem }) => (seq, problem),
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn appended_entries_are_gapless_chained_signed_and_verify() {
    let t = trail(10);
    let records = t.log.read(1, 100).unwrap();
    assert_eq!(records.len(), 10);
    let mut prev = ZERO_HASH;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.prev_hash, prev, "seq {}", r.seq);
        assert_eq!(r.key_id, t.key.key_id());
        // Any ed25519 library verifies the signature over the 32 hash bytes.
        let sig = ed25519_dalek::Signature::from_bytes(&r.signature);
        t.key.verifying_key().verify(&r.hash, &sig).unwrap();
        assert_eq!(r.entry, scripted(r.seq));
        prev = r.hash;
    }
    assert!(!records[3].clock_synced && records[4].clock_synced);

    let summary = t.log.verify(None).unwrap();
    assert_eq!(summary.entries, 10);
    assert_eq!((summary.first_seq, summary.last_seq), (Some(1), Some(10)));
    assert_eq!(summary.head_seq, Some(10));
    assert_eq!(
        summary.to_string(),
        format!(
            "audit trail verified: 10 entries, seq 1..10, key {}",
            t.key.key_id()
        )
    );

    // Reopened (a gateway restart), the trail continues where it was.
    drop(t.log);
    let log = AuditLog::open(&t.path, GatewayKey::clone(&t.key)).unwrap();
    let rec = log
        .append(AuditEntry::new(Action::GatewayStop).target(TargetKind::Gateway, "icu-a"))
        .unwrap();
    assert_eq!(rec.seq, 11);
    assert_eq!(rec.prev_hash, records[9].hash);
    assert!(rec.time_us > T0);
    assert_eq!(log.last().unwrap(), Some((11, rec.hash)));
    assert_eq!(log.verify(None).unwrap().entries, 11);
}

#[test]
fn an_empty_trail_verifies() {
    let t = trail(0);
    let s = t.log.verify(None).unwrap();
    assert_eq!((s.entries, s.head_seq), (0, None));
    assert_eq!(s.to_string(), "audit trail verified: 0 entries");
    assert_eq!(t.log.last().unwrap(), None);
}

#[test]
fn triggers_refuse_update_delete_and_a_wrong_seq() {
    let t = trail(3);
    for sql in [
        "UPDATE audit_log SET new_value = 'x' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 3",
        "DELETE FROM audit_head",
        "INSERT INTO audit_log SELECT 7, time_us, clock_synced, account, role, source, action,
         target_kind, target_id, bed, old_value, new_value, outcome, reason, prev_hash, hash,
         key_id, signature FROM audit_log WHERE seq = 3",
    ] {
        let err = t.log.with_conn(|c| c.execute_batch(sql)).unwrap_err();
        assert!(
            err.to_string().contains("audit_"),
            "{sql} was not refused by a trigger: {err}"
        );
    }
    assert_eq!(t.log.verify(None).unwrap().entries, 3);
}

#[test]
fn an_edited_value_is_named() {
    let t = trail(10);
    t.drop_triggers();
    t.sql("UPDATE audit_log SET new_value = '60..100' WHERE seq = 7");
    let (seq, problem) = t.fails(None);
    assert_eq!(seq, 7);
    assert!(matches!(problem, Problem::Edited { .. }), "{problem}");
}

#[test]
fn every_column_is_covered() {
    let columns = [
        ("time_us", "time_us + 1"),
        ("clock_synced", "1 - clock_synced"),
        ("account", "'mallory'"),
        ("role", "'biomed'"),
        ("source", "'127.0.0.1:1'"),
        ("action", "'logoff'"),
        ("target_kind", "'device'"),
        ("target_id", "target_id || 'x'"),
        ("bed", "'bed-09'"),
        ("old_value", "'old'"),
        ("new_value", "''"),
        ("outcome", "'failed'"),
        ("reason", "'because'"),
        ("prev_hash", "zeroblob(32)"),
        ("hash", "zeroblob(32)"),
        ("key_id", "'0000000000000000'"),
        ("signature", "zeroblob(64)"),
        ("account", "CAST(account AS BLOB)"),
    ];
    for (column, value) in columns {
        let t = trail(5);
        t.drop_triggers();
        t.sql(&format!(
            "UPDATE audit_log SET {column} = {value} WHERE seq = 3"
        ));
        match t.log.verify(None) {
            Err(VerifyFailure::Bad { seq, problem }) => {
                assert_eq!(seq, 3, "{column} = {value}: {problem}")
            }
            other => panic!("{column} = {value}: {other:?}"),
        }
    }
}

#[test]
fn a_deleted_entry_is_named() {
    let t = trail(10);
    t.drop_triggers();
    t.sql("DELETE FROM audit_log WHERE seq = 4");
    assert_eq!(t.fails(None), (4, Problem::Missing));
    t.sql("DELETE FROM audit_log WHERE seq = 1");
    assert_eq!(t.fails(None), (1, Problem::Missing));
}

#[test]
fn swapped_entries_name_the_first() {
    let t = trail(10);
    t.drop_triggers();
    let cols = "time_us, clock_synced, account, role, source, action, target_kind, target_id, \
                bed, old_value, new_value, outcome, reason, prev_hash, hash, key_id, signature";
    t.sql(&format!(
        "CREATE TEMP TABLE swap AS SELECT * FROM audit_log WHERE seq IN (3, 6);
         UPDATE audit_log SET ({cols}) = (SELECT {cols} FROM swap WHERE swap.seq = 9 - audit_log.seq)
         WHERE seq IN (3, 6);"
    ));
    let (seq, problem) = t.fails(None);
    assert_eq!(seq, 3);
    assert_eq!(
        problem,
        Problem::OutOfOrder {
            belongs_after: Some(5)
        }
    );
    assert!(problem.to_string().contains("belongs after seq 5"));
}

#[test]
fn a_cut_tail_names_the_first_missing_seq() {
    let t = trail(10);
    t.drop_triggers();
    t.sql("DELETE FROM audit_log WHERE seq >= 8");
    assert_eq!(t.fails(None), (8, Problem::Truncated { head_seq: 10 }));
    // From the middle too.
    assert_eq!(t.fails(Some(5)), (8, Problem::Truncated { head_seq: 10 }));
    assert_eq!(t.fails(Some(9)), (8, Problem::Truncated { head_seq: 10 }));

    // Moving the head back needs the key: its signature no longer verifies.
    t.sql("UPDATE audit_head SET seq = 7, hash = (SELECT hash FROM audit_log WHERE seq = 7)");
    let (seq, problem) = t.fails(None);
    assert_eq!(seq, 7);
    assert!(
        matches!(problem, Problem::HeadBadSignature { .. }),
        "{problem}"
    );

    // Deleting the head as well is seen, and the gateway then refuses to append (an append
    // would make a new head and hide the cut).
    t.sql("DELETE FROM audit_head");
    assert_eq!(t.fails(None), (8, Problem::HeadMissing));
    let err = t.log.append(scripted(1)).unwrap_err();
    assert!(matches!(err, AuditError::Damaged { .. }), "{err}");
    assert_eq!(t.fails(None), (8, Problem::HeadMissing));
}

#[test]
fn appends_after_a_cut_tail_keep_the_gap_visible() {
    let t = trail(10);
    t.drop_triggers();
    t.sql("DELETE FROM audit_log WHERE seq >= 8");
    let rec = t.log.append(scripted(1)).unwrap();
    assert_eq!(rec.seq, 11, "the next entry follows the signed head");
    assert_eq!(t.fails(None), (8, Problem::Missing));
    // With the triggers in place, only the next seq after the head may be inserted.
    let t = trail(3);
    let err = t
        .log
        .with_conn(|c| {
            c.execute_batch(
                "INSERT INTO audit_log SELECT 3, time_us, clock_synced, account, role, source,
                 action, target_kind, target_id, bed, old_value, new_value, outcome, reason,
                 prev_hash, hash, key_id, signature FROM audit_log WHERE seq = 3",
            )
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("UNIQUE") || err.to_string().contains("next one"),
        "{err}"
    );
}

#[test]
fn a_bad_signature_is_named() {
    let t = trail(10);
    t.drop_triggers();
    // A valid signature, but of another entry's hash.
    t.sql(
        "UPDATE audit_log SET signature = (SELECT signature FROM audit_log WHERE seq = 2)
         WHERE seq = 6",
    );
    assert_eq!(t.fails(None), (6, Problem::BadSignature));
}

#[test]
fn an_edit_with_a_recomputed_hash_fails_on_the_signature() {
    let t = trail(6);
    t.drop_triggers();
    // The attacker knows the format (it is documented) but not the key.
    let rec = &t.log.read(4, 1).unwrap()[0];
    let forged_reason = "nothing happened";
    let input = HashInput {
        seq: rec.seq,
        time_us: rec.time_us,
        clock_synced: rec.clock_synced,
        account: &rec.entry.account,
        role: &rec.entry.role,
        source: &rec.entry.source,
        action: rec.entry.action.as_str(),
        target_kind: rec.entry.target.kind.as_str(),
        target_id: &rec.entry.target.id,
        bed: rec.entry.bed.as_deref(),
        old_value: rec.entry.old_value.as_deref(),
        new_value: rec.entry.new_value.as_deref(),
        outcome: rec.entry.outcome.as_str(),
        reason: Some(forged_reason),
        key_id: &rec.key_id,
        prev_hash: &rec.prev_hash,
    };
    assert_ne!(input.hash(), rec.hash);
    t.sql(&format!(
        "UPDATE audit_log SET reason = '{forged_reason}', hash = x'{}' WHERE seq = 4",
        hex(&input.hash())
    ));
    assert_eq!(t.fails(None), (4, Problem::BadSignature));
}

#[test]
fn the_recomputed_hash_matches_the_stored_one_and_the_encoding_is_unambiguous() {
    let t = trail(3);
    for rec in t.log.read(1, 10).unwrap() {
        let p = rec.to_proto();
        let prev: [u8; 32] = p.prev_hash.as_slice().try_into().unwrap();
        let input = HashInput {
            seq: p.seq,
            time_us: p.time_us,
            clock_synced: p.clock_synced,
            account: &p.account,
            role: &p.role,
            source: &p.source,
            action: &p.action,
            target_kind: &p.target_kind,
            target_id: &p.target_id,
            bed: p.bed.as_deref(),
            old_value: p.old_value.as_deref(),
            new_value: p.new_value.as_deref(),
            outcome: &p.outcome,
            reason: p.reason.as_deref(),
            key_id: &p.key_id,
            prev_hash: &prev,
        };
        assert_eq!(input.hash().as_slice(), p.hash.as_slice(), "seq {}", p.seq);
        assert_eq!(p.signature, rec.signature.to_vec());

        // Moving a byte from one field to the next, or absent vs empty, changes the hash.
        let moved = HashInput {
            account: "nurse.j",
            role: "onurse",
            ..input
        };
        let base = HashInput {
            account: "nurse.jo",
            role: "nurse",
            ..input
        };
        assert_ne!(moved.hash(), base.hash());
        assert_ne!(
            HashInput { bed: None, ..input }.hash(),
            HashInput {
                bed: Some(""),
                ..input
            }
            .hash()
        );
    }
}

#[test]
fn verify_from_the_middle() {
    let t = trail(10);
    let s = t.log.verify(Some(6)).unwrap();
    assert_eq!((s.entries, s.first_seq, s.last_seq), (5, Some(6), Some(10)));
    assert!(s.to_string().contains("5 entries, seq 6..10"), "{s}");
    // Past the end: nothing to check, the head still names the last entry.
    assert_eq!(t.log.verify(Some(50)).unwrap().entries, 0);

    t.drop_triggers();
    t.sql("UPDATE audit_log SET account = 'mallory' WHERE seq = 3");
    assert_eq!(t.fails(None).0, 3);
    assert_eq!(
        t.log.verify(Some(4)).unwrap().entries,
        7,
        "3 is before --from 4"
    );
    t.sql("UPDATE audit_log SET account = 'mallory' WHERE seq = 8");
    assert_eq!(t.fails(Some(4)).0, 8);
    assert_eq!(t.fails(Some(8)).0, 8);
}

#[test]
fn rotated_keys_verify_with_a_key_ring() {
    let t = trail(3);
    drop(t.log);
    let new_key = Arc::new(GatewayKey::generate());
    let log = AuditLog::open(&t.path, GatewayKey::clone(&new_key)).unwrap();
    let rec = log
        .append(
            AuditEntry::new(Action::KeyRotated)
                .by("biomed.al", "biomed", "")
                .target(TargetKind::Key, new_key.key_id())
                .values(Some(t.key.key_id().into()), Some(new_key.key_id().into())),
        )
        .unwrap();
    assert_eq!((rec.seq, rec.key_id.as_str()), (4, new_key.key_id()));
    for _ in 0..2 {
        log.append(scripted(1)).unwrap();
    }

    let conn = crate::store::db::open_connection(&t.path, true).unwrap();
    let mut ring = KeyRing::of(&new_key);
    // Only the new key: the entries of the old one are not accepted...
    match verify(&conn, &ring, None) {
        Err(VerifyFailure::Bad {
            seq: 1,
            problem: Problem::UnknownKey { key_id },
        }) => assert_eq!(key_id, t.key.key_id()),
        other => panic!("{other:?}"),
    }
    // ... but from the rotation on they are.
    assert_eq!(verify(&conn, &ring, Some(4)).unwrap().entries, 3);
    ring.add(t.key.verifying_key());
    let s = verify(&conn, &ring, None).unwrap();
    assert_eq!(s.entries, 6);
    let mut ids = vec![t.key.key_id().to_owned(), new_key.key_id().to_owned()];
    ids.sort();
    assert_eq!(s.key_ids, ids);
    assert!(s.to_string().contains(", keys "), "{s}");
}

#[test]
fn an_append_to_a_read_only_database_is_refused_and_writes_nothing() {
    let t = trail(4);
    let before = t.log.last().unwrap();
    t.sql("PRAGMA query_only = ON");
    let err = t.log.append(scripted(1)).unwrap_err();
    assert!(matches!(err, AuditError::Sqlite { .. }), "{err}");
    assert!(err.to_string().contains("readonly"), "{err}");
    t.sql("PRAGMA query_only = OFF");
    assert_eq!(t.log.last().unwrap(), before, "nothing was written");
    // Once writable again the trail goes on without a gap.
    assert_eq!(t.log.append(scripted(2)).unwrap().seq, 5);
    assert_eq!(t.log.verify(None).unwrap().entries, 5);
}

#[test]
fn an_append_to_a_full_disk_is_refused_and_writes_nothing() {
    let t = trail(4);
    let before = t.log.last().unwrap();
    let pages: i64 = t
        .log
        .with_conn(|c| c.query_row("PRAGMA page_count", [], |r| r.get(0)))
        .unwrap();
    t.sql(&format!("PRAGMA max_page_count = {pages}"));
    let big = AuditEntry::new(Action::StoreFailure).reason("x".repeat(64 * 1024));
    let err = t.log.append(big).unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(t.log.last().unwrap(), before);
    t.sql("PRAGMA max_page_count = 1073741823");
    assert_eq!(t.log.append(scripted(3)).unwrap().seq, 5);
    assert_eq!(t.log.verify(None).unwrap().entries, 5);
}

#[test]
fn a_store_path_that_cannot_be_created_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-folder");
    std::fs::write(&file, "x").unwrap();
    let err = AuditLog::open(&file.join("gateway.db"), GatewayKey::generate()).unwrap_err();
    assert!(matches!(err, AuditError::Open(_)), "{err}");
}

#[test]
fn concurrent_appends_stay_gapless() {
    let t = trail(0);
    let log = Arc::new(t.log);
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    log.append(scripted(n * 25 + i)).unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let s = log.verify(None).unwrap();
    assert_eq!((s.entries, s.last_seq), (100, Some(100)));
}

#[test]
fn filters_select_by_time_account_bed_and_action() {
    let t = trail(10);
    let seqs = |f: Filter| -> Vec<u64> { t.log.query(&f).unwrap().iter().map(|r| r.seq).collect() };
    assert_eq!(seqs(Filter::default()).len(), 10);
    assert_eq!(
        seqs(Filter {
            since_us: Some(T0 + 3_000_000),
            until_us: Some(T0 + 6_000_000),
            ..Filter::default()
        }),
        vec![3, 4, 5]
    );
    assert_eq!(
        seqs(Filter {
            account: Some("dr.lee".into()),
            ..Filter::default()
        }),
        vec![2, 3, 7, 8]
    );
    assert_eq!(
        seqs(Filter {
            action: Some(Action::Acknowledge),
            ..Filter::default()
        }),
        vec![1, 6]
    );
    // bed-02: entries 1 (alarm), 4 (silence of the bed, by target) and 7 (limit) are there.
    assert_eq!(
        seqs(Filter {
            bed: Some("bed-02".into()),
            ..Filter::default()
        }),
        vec![1, 4, 7]
    );
    assert_eq!(
        seqs(Filter {
            from_seq: Some(8),
            limit: Some(2),
            ..Filter::default()
        }),
        vec![8, 9]
    );
}

#[test]
fn actions_targets_and_outcomes_round_trip_their_strings() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>().unwrap(), *a);
    }
    for k in TargetKind::ALL {
        assert_eq!(k.as_str().parse::<TargetKind>().unwrap(), *k);
    }
    for o in Outcome::ALL {
        assert_eq!(o.as_str().parse::<Outcome>().unwrap(), *o);
    }
    assert_eq!(Action::ALL.len(), 25);
    let err = "reboot".parse::<Action>().unwrap_err();
    assert!(err.contains("login_failed"), "{err}");
    let start = AuditEntry::gateway_start("/etc/icu/gateway.toml", b"abc");
    assert_eq!(
        start.new_value.as_deref(),
        Some("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let adt = AuditEntry::adt_applied("HIS", "10.1.1.1:2575", "A02", "bed-03", "P7");
    assert_eq!(
        (adt.account.as_str(), adt.source.as_str()),
        ("HIS", "10.1.1.1:2575")
    );
    assert_eq!(adt.bed.as_deref(), Some("bed-03"));
}

#[test]
fn show_writes_a_table_and_json_lines() {
    let t = trail(5);
    let records = t.log.read(1, 10).unwrap();
    let mut table = Vec::new();
    write_table(&mut table, &records).unwrap();
    let table = String::from_utf8(table).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert!(lines[0].starts_with("SEQ"), "{table}");
    assert!(lines[2].contains("limit_change") && lines[2].contains("90..100 -> 87..100"));
    assert!(
        lines[4].contains("2023-11-14T22:13:24.000Z~"),
        "unsynced mark: {table}"
    );
    assert!(lines[4].contains("denied") && lines[4].contains("reason: silence longer"));

    let mut json = Vec::new();
    write_json_lines(&mut json, &records).unwrap();
    let json = String::from_utf8(json).unwrap();
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["action"], "acknowledge");
    assert_eq!(first["bed"], "bed-02");
    assert_eq!(first["time"], "2023-11-14T22:13:21.000Z");
    assert_eq!(first["prev_hash"], hex(&ZERO_HASH));
    assert_eq!(first["hash"], hex(&records[0].hash));
    assert_eq!(first["target"]["kind"], "alarm");
    assert_eq!(json.lines().count(), 5);
}

#[test]
fn the_cli_verifies_the_configured_store_with_the_configured_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        r#"
gateway_id = "icu-a"
data_dir = "data"
[mllp]
listen = "127.0.0.1:0"
[[beds]]
id = "bed-1"
[[devices]]
id = "mon-1"
bed = "bed-1"
protocol = "pcd01"
match = "0012AB00000000B2"
"#,
    )
    .unwrap();
    let cfg = crate::config::Config::load(&config).unwrap();
    let key = GatewayKey::generate();
    key.write(&cfg.key_file, &cfg.key_file.with_extension("pub"))
        .unwrap();
    let log = AuditLog::open(&cfg.store.path, GatewayKey::load(&cfg.key_file).unwrap()).unwrap();
    for i in 1..=4 {
        log.append(scripted(i)).unwrap();
    }
    let verify_cmd = || AuditCommand::Verify {
        config: config.clone(),
        from: None,
        public_keys: Vec::new(),
    };
    assert_eq!(run(verify_cmd()).unwrap(), 0);
    let show = AuditCommand::Show {
        config: config.clone(),
        since: Some("2000-01-01T00:00:00Z".into()),
        until: None,
        account: Some("dr.lee".into()),
        bed: None,
        action: Some("limit_change".into()),
        from: None,
        limit: None,
        json: true,
    };
    assert_eq!(run(show).unwrap(), 0);
    let bad_action = AuditCommand::Show {
        config: config.clone(),
        since: None,
        until: None,
        account: None,
        bed: None,
        action: Some("reboot".into()),
        from: None,
        limit: None,
        json: false,
    };
    assert!(run(bad_action).is_err());

    log.with_conn(|c| {
        c.execute_batch(
            "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET outcome = 'denied' WHERE seq = 2",
        )
    })
    .unwrap();
    assert_eq!(run(verify_cmd()).unwrap(), 1);
}

#[test]
fn a_forwarded_entry_verifies_from_its_fhir_audit_event_alone() {
    use base64::Engine as _;
    let t = trail(3);
    let rec = &t.log.read(2, 1).unwrap()[0];
    let bytes = icu_cloud_bridge::fhir::audit_event(
        &icu_cloud_bridge::fhir::FhirContext::with_default_base("icu-a"),
        &rec.to_proto(),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["resourceType"], "AuditEvent");
    let chain = v["entity"].as_array().unwrap().last().unwrap().clone();
    let detail = |kind: &str| -> Vec<u8> {
        let d = chain["detail"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["type"] == kind)
            .unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(d["valueBase64Binary"].as_str().unwrap())
            .unwrap()
    };
    // What a central team does: the signature over the hash, with the public key only.
    let hash = detail("hash");
    assert_eq!(hash, rec.hash.to_vec());
    assert_eq!(detail("prev-hash"), rec.prev_hash.to_vec());
    let sig = ed25519_dalek::Signature::from_slice(&detail("signature")).unwrap();
    t.key.verifying_key().verify_strict(&hash, &sig).unwrap();
}
