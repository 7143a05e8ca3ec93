//! The simulator's scripted scenarios against the real gateway: clinical courses show up in the
//! live values, a monitor with a skewed clock keeps its own times, duplicates (a resend after a
//! lost ACK) are stored once, out-of-order messages are all stored, and line noise before every
//! message is answered and dead-lettered without losing a message.

mod support;

use support::{config_text, run_sim_with, GatewayProc};

fn count(gw: &GatewayProc, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn bed_value(gw: &GatewayProc, bed: usize, code: u32) -> serde_json::Value {
    let v = gw.get_json("/api/beds");
    v["beds"][bed - 1]["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["mdc_code"] == code)
        .cloned()
        .unwrap()
}

#[test]
fn scripted_scenarios_behave_as_the_gateway_promises() {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProc::start(dir.path(), &config_text(dir.path(), 5, None, ""));
    // Each run gets its own seed: two runs with one seed in the same second would send the very
    // same bytes under the same control ids, which the gateway rightly treats as resends.
    let seed = std::cell::Cell::new(100);
    let sim = |n: u64, scenario: &str| {
        let m = dir.path().join(format!("{scenario}.jsonl"));
        seed.set(seed.get() + 1);
        let s = seed.get().to_string();
        let run = run_sim_with(
            gw.endpoints.mllp,
            5,
            n,
            50.0,
            &m,
            &["--scenario", scenario, "--seed", &s],
        );
        assert!(run.ok, "{scenario}: every message AA\n{}", run.stdout);
        run
    };

    // Desaturation on bed 2: SpO2 falls to the low 80s.
    sim(30, "desaturation:2:0");
    let spo2 = bed_value(&gw, 2, 150456)["value"].as_f64().unwrap();
    assert!(spo2 <= 86.0, "bed 2 SpO2 {spo2}");
    assert!(bed_value(&gw, 1, 150456)["value"].as_f64().unwrap() >= 90.0);

    // Apnea on bed 3: respiratory rate 0.
    sim(10, "apnea:3:0");
    assert_eq!(bed_value(&gw, 3, 151562)["value"].as_f64(), Some(0.0));

    // A monitor whose clock is an hour behind: its own time is kept, apart from receive time
    // (and, being older than what the bed showed, it does not replace the live value).
    sim(2, "clock-skew=-3600:4");
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    // The newest row of mon-04: one record, or a run of them (one row per message).
    let (n, payload): (i64, Vec<u8>) = c
        .query_row(
            "SELECT n, payload FROM records WHERE kind = 1 AND device_id = 'mon-04' ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    use icu_protos::Message as _;
    let records = icu_gateway::store::db::row_records(n as usize, &payload).unwrap();
    let rec = icu_protos::v1::StoredRecord::decode(records.last().unwrap().as_slice()).unwrap();
    let Some(icu_protos::v1::stored_record::Body::Observation(o)) = rec.body else {
        panic!("not an observation")
    };
    let skew = (o.receive_time_us - o.device_time_us.unwrap()) / 1_000_000;
    assert!((3590..=3610).contains(&skew), "skew {skew} s");

    // Duplicates on bed 5: every message twice, stored once.
    let before = count(
        &gw,
        "SELECT COUNT(*) FROM record_seqs WHERE kind = 1 AND device_id = 'mon-05'",
    );
    let run = sim(6, "duplicates:5:0");
    let after = count(
        &gw,
        "SELECT COUNT(*) FROM record_seqs WHERE kind = 1 AND device_id = 'mon-05'",
    );
    let sent: usize = run
        .accepted
        .iter()
        .filter(|o| o.device_id == "mon-05")
        .count();
    assert_eq!(after - before, sent as i64, "each duplicate stored once");
    let devices = gw.get_json("/api/devices");
    let mon5 = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "mon-05")
        .unwrap()
        .clone();
    assert!(mon5["duplicates"].as_u64().unwrap() >= 3, "{mon5}");

    // Out of order on bed 1: both of every pair stored.
    let before = count(
        &gw,
        "SELECT COUNT(*) FROM record_seqs WHERE kind = 1 AND device_id = 'mon-01'",
    );
    let run = sim(6, "out-of-order:1:0");
    let after = count(
        &gw,
        "SELECT COUNT(*) FROM record_seqs WHERE kind = 1 AND device_id = 'mon-01'",
    );
    let sent = run
        .accepted
        .iter()
        .filter(|o| o.device_id == "mon-01")
        .count();
    assert_eq!(after - before, sent as i64);

    // Line noise before every message of bed 2: each noise burst is dead-lettered, no message lost.
    let letters = count(&gw, "SELECT COUNT(*) FROM dead_letters");
    let before = count(
        &gw,
        "SELECT COUNT(*) FROM record_seqs WHERE kind = 1 AND device_id = 'mon-02'",
    );
    let run = sim(4, "garbage:2:0");
    let after = count(
        &gw,
        "SELECT COUNT(*) FROM record_seqs WHERE kind = 1 AND device_id = 'mon-02'",
    );
    assert_eq!(
        after - before,
        run.accepted
            .iter()
            .filter(|o| o.device_id == "mon-02")
            .count() as i64
    );
    assert!(count(&gw, "SELECT COUNT(*) FROM dead_letters") >= letters + 4);
}
