//! Bad input and store failure over a real MLLP socket to the real gateway binary: every
//! rejection is AE/AR with an ERR segment naming the problem, lands in the dead-letter table,
//! and neither the connection nor other devices stop working. A failing store never yields AA.

mod support;

use icu_drivers::mllp::encode_frame;
use support::{config_text, run_sim, GatewayProc, Sender};

fn msa(ack: &str) -> (&str, Option<&str>) {
    let code = ack
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap();
    (code, ack.split('\r').find(|s| s.starts_with("ERR|")))
}

const EUI: &str = "0012AB0000000001";

fn pcd01(control: &str, hr: &str, msg_type: &str) -> String {
    [
        format!("MSH|^~\\&|SIM_MON^{EUI}^EUI-64|ICU_SIM|ICU_GW|HOSP|20250101120000+0000||{msg_type}|{control}|P|2.6|||AL|NE"),
        "PID|||SIM0001^^^HOSP^MR".to_string(),
        "OBR|1|X|X|182777000^monitoring of patient^SCT|||20250101120000+0000".to_string(),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{EUI}^^{EUI}^EUI-64"),
        format!("OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|{hr}|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R"),
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R".to_string(),
    ]
    .join("\r")
}

fn dead_letters(db: &std::path::Path) -> Vec<(String, i64, Option<String>, String, i64)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT ack_code, error_code, location, reason, stream_offset FROM dead_letters ORDER BY id")
        .unwrap();
    st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn stored_records(db: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT COUNT(*) FROM record_seqs WHERE kind = 1", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn bad_input_gets_ae_or_ar_with_err_and_lands_in_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(
        dir.path(),
        &config_text(dir.path(), 2, None, "").replace(
            "[mllp]\nlisten = \"127.0.0.1:0\"",
            "[mllp]\nlisten = \"127.0.0.1:0\"\nmax_frame_bytes = 4096",
        ),
    );
    // Another device keeps sending on its own connection the whole time.
    let mllp = gw.endpoints.mllp;
    let other = std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        run_sim(mllp, 2, 15, 10.0, &dir.path().join("m.jsonl"))
    });

    let mut s = Sender::connect(gw.endpoints.mllp);
    // 1. garbage bytes before a frame: dead-lettered but never answered, so the first ACK is
    //    the frame's own AA (e2e_listeners.rs has the sender's view in full).
    let mut bytes = b"hello, this is not MLLP\r\n".to_vec();
    bytes.extend(encode_frame(
        pcd01("AFTER-GARBAGE", "71", "ORU^R01^ORU_R01").as_bytes(),
    ));
    let ack = s.send_raw(&bytes);
    assert_eq!(msa(&ack).0, "AA", "the frame after the garbage: {ack}");
    assert!(ack.contains("MSA|AA|AFTER-GARBAGE"), "{ack}");
    // 2. oversized frame
    let big = format!(
        "MSH|^~\\&|X|Y|||||ORU^R01^ORU_R01|BIG|P|2.6\r{}",
        "Z".repeat(10_000)
    );
    let ack = s.send(&big);
    let (code, err) = msa(&ack);
    assert_eq!(code, "AR");
    assert!(err.unwrap().contains("exceeds the 4096 byte limit"));
    // 3. a non-HL7 payload inside a valid frame
    let ack = s.send("{\"json\": \"not hl7\"}");
    let (code, err) = msa(&ack);
    assert_eq!(code, "AR", "{ack}");
    assert!(err.unwrap().contains("HL70357"));
    // 4. non-numeric NM value: AE, data type error at OBX^2^5 (the second OBX)
    let ack = s.send(&pcd01("BAD-NM", "abc", "ORU^R01^ORU_R01"));
    let (code, err) = msa(&ack);
    assert_eq!(code, "AE", "{ack}");
    let err = err.unwrap();
    assert!(err.contains("OBX^2^5") && err.contains("102^"), "{err}");
    assert!(
        ack.contains("MSA|AE|BAD-NM"),
        "MSA-2 echoes the control id: {ack}"
    );
    // 5. wrong message type
    let ack = s.send(&pcd01("WRONG-TYPE", "70", "ORM^O01^ORM_O01"));
    let (code, err) = msa(&ack);
    assert_eq!(code, "AR", "{ack}");
    assert!(err.unwrap().contains("200^"), "{ack}");
    // 6. a device that is not in the config: AR 204, never stored under a guessed device
    let ack =
        s.send(&pcd01("UNKNOWN-DEV", "70", "ORU^R01^ORU_R01").replace(EUI, "00FFFF0000000099"));
    let (code, err) = msa(&ack);
    assert_eq!(code, "AR", "{ack}");
    let err = err.unwrap();
    assert!(
        err.contains("204^") && err.contains("00FFFF0000000099"),
        "{err}"
    );
    // ... and the same connection still takes a good message.
    let ack = s.send(&pcd01("GOOD-1", "72", "ORU^R01^ORU_R01"));
    assert_eq!(msa(&ack).0, "AA", "{ack}");

    let letters = dead_letters(&gw.db_path());
    assert_eq!(letters.len(), 6, "{letters:?}");
    let codes: Vec<(&str, i64)> = letters.iter().map(|l| (l.0.as_str(), l.1)).collect();
    assert_eq!(codes[0], ("", 0), "the garbage was not answered");
    assert!(
        letters[0].3.contains("outside an MLLP frame") && letters[0].3.contains("offset 0"),
        "{letters:?}"
    );
    assert_eq!(codes[3], ("AE", 102));
    assert_eq!(codes[4], ("AR", 200));
    assert_eq!(codes[5], ("AR", 204));
    assert_eq!(letters[3].2.as_deref(), Some("OBX^2^5"));
    assert!(
        letters.iter().all(|l| !l.3.is_empty()),
        "every dead letter says why"
    );
    assert!(
        letters[1].4 > 0,
        "the oversized frame's stream offset is recorded"
    );

    let other = other.join().unwrap();
    assert!(
        other.ok,
        "the other devices were never disturbed:\n{}",
        other.stdout
    );
    // Rejected messages stored no observation: only the 2 good messages (2 values each) and the
    // sim's; each rejection is one record on the dead-letter stream instead.
    assert_eq!(
        stored_records(&gw.db_path()),
        4 + other.accepted.len() as i64
    );
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let outbox_letters: i64 = c
        .query_row("SELECT COUNT(*) FROM records WHERE kind = 4", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        outbox_letters, 6,
        "every dead letter waits for icu.deadletter"
    );

    let devices = gw.get_json("/api/devices");
    let mon1 = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "mon-01")
        .unwrap()
        .clone();
    assert!(mon1["errors"].as_u64().unwrap() >= 1, "{mon1}");
}

#[test]
fn store_over_budget_answers_ar_never_aa_and_stores_nothing_half() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(
        dir.path(),
        &config_text(dir.path(), 1, None, "disk_budget_mb = 1"),
    );
    let mut s = Sender::connect(gw.endpoints.mllp);
    let mut aa = Vec::new();
    let mut refused = 0;
    for i in 0..3000 {
        let control = format!("FILL-{i}");
        let ack = s.send(&pcd01(&control, "72", "ORU^R01^ORU_R01"));
        let (code, err) = msa(&ack);
        match code {
            "AA" => {
                assert_eq!(refused, 0, "no AA once the store refused: {ack}");
                aa.push(control)
            }
            "AR" | "AE" => {
                let err = err.expect("ERR segment");
                assert!(err.contains("disk budget"), "{err}");
                assert!(err.contains("207^"), "{err}");
                refused += 1;
                if refused >= 5 {
                    break;
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        refused >= 5,
        "the 1 MiB budget was reached ({} stored)",
        aa.len()
    );
    // Exactly the acknowledged messages are stored, whole: 2 values each.
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let records: i64 = c
        .query_row("SELECT COUNT(*) FROM record_seqs WHERE kind = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(records, 2 * aa.len() as i64);
    // Each stored message is recognisable as a retry: its control id is on its rows.
    let messages: i64 = c
        .query_row(
            "SELECT COUNT(DISTINCT control_id) FROM records WHERE kind = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(messages, aa.len() as i64);
}
