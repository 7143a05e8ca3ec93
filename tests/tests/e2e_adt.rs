//! ADT census end to end: admissions and transfers over MLLP decide which patient every reading
//! belongs to, by the reading's own time; readings of a bed with no admitted patient are
//! forwarded flagged unassociated; Patient and Encounter reach `icu.adt`, signed.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use icu_cloud_bridge::consume::{consume, ConsumeOptions, ConsumedRecord};
use icu_cloud_bridge::signing::load_public_key;
use icu_tests::{wait_for, Broker, TOPICS};
use support::{keygen, run_sim, GatewayProc, Sender};

fn adt(
    kind: &str,
    control: &str,
    at: chrono::DateTime<chrono::Utc>,
    loc: &str,
    prior: &str,
) -> String {
    let ts = at.format("%Y%m%d%H%M%S+0000");
    let structure = if kind == "A02" { "ADT_A02" } else { "ADT_A01" };
    [
        format!("MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|{ts}||ADT^{kind}^{structure}|{control}|P|2.5"),
        format!("EVN||{ts}"),
        "PID|1||123456^^^HOSP^MR||DOE^JOHN^Q^^^^L||19600101|M".to_string(),
        format!("PV1|1|I|{loc}|||{prior}|||||||||||||V0001^^^HOSP^VN"),
    ]
    .join("\r")
}

fn msa(ack: &str) -> &str {
    ack.split('\r')
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or("")
}

#[test]
fn readings_follow_the_patient_through_admission_and_transfer() {
    let broker = Broker::start().expect("broker");
    broker.create_topics(TOPICS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = load_public_key(&keygen(dir.path())).unwrap();
    let mut cfg = support::config_text(dir.path(), 2, Some(&broker.addr), "");
    cfg = cfg.replace(
        "id = \"bed-01\"\n",
        "id = \"bed-01\"\nadt_location = \"ICU1^101^A\"\n",
    );
    cfg = cfg.replace(
        "id = \"bed-02\"\n",
        "id = \"bed-02\"\nadt_location = \"ICU2^205^B\"\n",
    );
    let gw = GatewayProc::start(dir.path(), &cfg);

    let mut accepted = Vec::new();
    let mut sim = |n: u64| {
        let m = dir.path().join(format!("m{}.jsonl", accepted.len()));
        let run = run_sim(gw.endpoints.mllp, 2, n, 20.0, &m);
        assert!(run.ok, "{}", run.stdout);
        accepted.extend(run.accepted);
    };
    let pause = || std::thread::sleep(Duration::from_millis(1100));

    sim(2); // before admission: unassociated
    pause();
    let admit = chrono::Utc::now();
    let mut feed = Sender::connect(gw.endpoints.mllp);
    let ack = feed.send(&adt("A01", "ADT1", admit, "ICU1^101^A", ""));
    assert_eq!(msa(&ack), "AA", "{ack}");
    pause();
    sim(2); // bed-01 now holds patient 123456
    pause();
    let transfer = chrono::Utc::now();
    let ack = feed.send(&adt("A02", "ADT2", transfer, "ICU2^205^B", "ICU1^101^A"));
    assert_eq!(msa(&ack), "AA", "{ack}");
    pause();
    sim(2); // the patient is in bed-02 now

    let beds = gw.get_json("/api/beds");
    assert_eq!(beds["beds"][1]["patient"]["id"], "123456", "{beds}");
    assert!(beds["beds"][0]["patient"].is_null(), "{beds}");

    // Expected patient per reading, from the times this test used (whole seconds, as sent).
    let (admit_s, transfer_s) = (
        admit.timestamp() * 1_000_000,
        transfer.timestamp() * 1_000_000,
    );
    let expected = |bed: &str, t: i64| -> Option<&str> {
        match bed {
            "bed-01" if t >= admit_s && t < transfer_s => Some("123456"),
            "bed-02" if t >= transfer_s => Some("123456"),
            _ => None,
        }
    };

    let read = |topic: &str| -> Vec<ConsumedRecord> {
        consume(&ConsumeOptions {
            brokers: broker.addr.clone(),
            topic: topic.into(),
            public_key: Some(key),
            idle_timeout: Duration::from_millis(300),
            max_wait: Duration::from_secs(20),
        })
        .expect("consume")
        .1
    };
    let records = wait_for(Duration::from_secs(60), "all readings on kafka", || {
        let recs = read("icu.observations");
        let n: u64 = recs
            .iter()
            .map(|r| r.seq_last.unwrap() - r.seq_first.unwrap() + 1)
            .sum();
        (n >= accepted.len() as u64).then_some(recs)
    })
    .unwrap();

    // Per device, in seq order, the FHIR subject is exactly the expected patient.
    // Per device: (FHIR subject patient, meta tag) of each observation, in seq order.
    type Association = (Option<String>, Option<String>);
    let mut got: BTreeMap<String, Vec<Association>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r.signature_ok, Some(true));
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        for e in v["entry"].as_array().unwrap() {
            let o = &e["resource"];
            if o.get("derivedFrom").is_some() {
                // A blood pressure panel of readings counted on their own.
                continue;
            }
            // The patient, when the subject is one (else it is the device itself).
            let subject = o["subject"]["reference"]
                .as_str()
                .and_then(|s| s.strip_prefix("Patient/"))
                .map(str::to_owned);
            let tag = o["meta"]["tag"][0]["code"].as_str().map(str::to_owned);
            got.entry(r.device_id.clone().unwrap())
                .or_default()
                .push((subject, tag));
        }
        // Never a mixed bundle: the key is the patient when associated.
        let first = &v["entry"][0]["resource"]["subject"]["reference"];
        if let Some(p) = first.as_str().filter(|s| s.starts_with("Patient/")) {
            assert_eq!(r.key.as_deref(), Some(p.trim_start_matches("Patient/")));
        }
    }
    let mut associated = [0, 0];
    for device in ["mon-01", "mon-02"] {
        let sent: Vec<_> = accepted.iter().filter(|o| o.device_id == device).collect();
        let got = &got[device];
        assert_eq!(got.len(), sent.len(), "{device}");
        for (i, (s, (subject, tag))) in sent.iter().zip(got).enumerate() {
            match expected(&s.bed_id, s.device_time_us) {
                Some(p) => {
                    assert_eq!(subject.as_deref(), Some(p), "{device} #{i}");
                    assert_eq!(
                        tag, &None,
                        "{device} #{i}: associated readings carry no unassociated tag"
                    );
                    associated[(device == "mon-02") as usize] += 1;
                }
                None => {
                    assert_eq!(subject, &None, "{device} #{i} must not be associated");
                    assert_eq!(tag.as_deref(), Some("unassociated"), "{device} #{i}");
                }
            }
        }
    }
    assert!(
        associated[0] > 0 && associated[1] > 0,
        "both beds had associated readings: {associated:?}"
    );

    // Patient and Encounter for the admission and the transfer on icu.adt.
    let adt = wait_for(Duration::from_secs(30), "two ADT records", || {
        let recs = read("icu.adt");
        (recs.len() >= 2).then_some(recs)
    })
    .unwrap();
    assert!(adt
        .iter()
        .all(|r| r.signature_ok == Some(true) && r.key.as_deref() == Some("123456")));
    let text = String::from_utf8_lossy(&adt[1].value);
    assert!(
        text.contains("\"Patient\"") && text.contains("\"Encounter\"") && text.contains("DOE"),
        "{text}"
    );

    // Each ADT event applied to the census is in the audit trail with its sender and peer.
    let shown = icu_tests::http::gateway_cli(
        &[
            "audit",
            "show",
            "--config",
            gw.config_path.to_str().unwrap(),
            "--action",
            "adt_applied",
            "--json",
        ],
        "",
    )
    .unwrap();
    let entries: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.len() >= 2, "{shown}");
    for e in &entries {
        assert_eq!(e["account"], "ADT_SYS", "{e}");
        assert!(
            e["source"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{e}"
        );
        assert_eq!(e["target"]["id"], "123456", "{e}");
    }
}
