//! Many gateways, one backbone (issue 16, point 4), end to end through the real binaries: three
//! `icu-gateway` processes (`icu-north`, `icu-south`, `icu-east`, each with its own signing key,
//! all three with monitors named `mon-01`..`mon-03`), each fed by its own `icu-sim pcd01`,
//! forward to a backbone of TWO tansu brokers that share ONE storage (tansu 0.6 on the
//! harness's S3 emulator, one cluster id: `icu_tests::backbone`), topics of three partitions.
//! Broker 0 is stopped mid-run and started again. A consumer group of two members (one
//! bootstrapped at each broker) reads `icu.observations` throughout.
//!
//! Checked at the end:
//! - every record verifies with *its* gateway's key (the key id header names that key, and the
//!   signature verifies with that key alone), and the project's verifier
//!   (`report_with_keys` with the three public keys) finds every stream clean;
//! - no FHIR resource id collides across gateways: every `entry[].resource.id` belongs to
//!   exactly one (gateway, device, seq), is scoped as `<gateway>-<device>-<seq>`, although the
//!   unscoped (device, seq) pairs do repeat across the gateways;
//! - per (gateway, device) the seqs on the topic are exactly 1..=n with n what the gateway
//!   stored (`/api/status` `per_device_next_seq`), which is what its simulator had acknowledged;
//! - the group really is a group across the brokers: each member ends with its own partitions,
//!   together all three, and each read records; together they read every stored seq;
//! - each gateway kept forwarding while broker 0 was down (through broker 1 alone), and the
//!   restarted broker 0, asked alone, serves the whole topic (what broker 1 took meanwhile too).
//!
//! What tansu 0.6 advertises is asserted too: each broker's metadata lists only itself, under
//! the node id every tansu broker gives itself, so clients must bootstrap with every broker's
//! address (they do here). The group is not read "to the high watermark": tansu 0.6's S3 engine
//! answers ListOffsets(latest) short of the log's end (`icu_tests::backbone::latest_offsets`),
//! so the reader stops once every stored seq has arrived, and the output shows, per partition,
//! the offsets read, the batches the storage holds and that "latest" answer.
//!
//! About 20-30 s on two cores (sim rate 1 message/s per bed, 9 beds).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use icu_cloud_bridge::consume::{consume_with, report_with_keys, ConsumeOptions, ConsumeSecurity};
use icu_cloud_bridge::consume::{ConsumeReport, ConsumedRecord};
use icu_cloud_bridge::headers;
use icu_cloud_bridge::signing::{key_id_of, load_public_key, KeyRing};
use icu_tests::backbone::{latest_offsets, Backbone, GroupReader, GroupState, TANSU_NODE_ID};
use icu_tests::{wait_for, TOPICS};
use support::{config_text, keygen, GatewayProc, SimProc};

const GATEWAYS: [&str; 3] = ["icu-north", "icu-south", "icu-east"];
/// Beds per gateway: monitors `mon-01`..`mon-03` in every gateway. Unassociated readings are
/// keyed by device id; with librdkafka's default partitioner `mon-01` and `mon-02` share a
/// partition and `mon-03` has another, so the group's two members both get data.
const BEDS: usize = 3;
/// Messages per second per bed (a message carries several readings).
const RATE: f64 = 1.0;
const PARTITIONS: i32 = 3;
const OBSERVATIONS: &str = "icu.observations";
const GROUP: &str = "central-many-gateways";
/// Observations each gateway must deliver in a phase to count as forwarding in it.
const PROGRESS: u64 = 20;

/// A (gateway, device) stream.
type Stream = (String, String);

/// One ICU: its gateway, the simulator feeding it and its public key.
struct Site {
    id: &'static str,
    // Declared before the gateway: the simulator stops first.
    sim: Option<SimProc>,
    gw: GatewayProc,
    key: VerifyingKey,
    key_id: String,
}

impl Site {
    /// Gateway `id` in `root/<id>` with its own key, forwarding to `bootstrap`, and a
    /// simulator sending to it.
    fn start(root: &Path, id: &'static str, bootstrap: &str) -> Site {
        let dir = root.join(id);
        let key = load_public_key(&keygen(&dir)).unwrap();
        let default_id = "gateway_id = \"test-gw\"";
        let config = config_text(&dir, BEDS, Some(bootstrap), "");
        assert!(config.contains(default_id), "{config}");
        let config = config.replacen(default_id, &format!("gateway_id = \"{id}\""), 1);
        let gw = GatewayProc::start(&dir, &config);
        let sim = SimProc::start(
            gw.endpoints.mllp,
            BEDS,
            RATE,
            &dir.join("manifest.jsonl"),
            &[],
        );
        Site {
            id,
            sim: Some(sim),
            key_id: key_id_of(&key),
            key,
            gw,
        }
    }

    fn status(&self) -> serde_json::Value {
        self.gw.get_json("/api/status")
    }

    fn forwarded(&self) -> u64 {
        self.status()["backbone"]["forwarded_observations"]
            .as_u64()
            .unwrap_or(0)
    }
}

/// Waits until every site has delivered `PROGRESS` more observations than `since`.
fn wait_forwarding(sites: &[Site], since: &[u64], what: &str, backbone: &Backbone) {
    wait_for(Duration::from_secs(40), what, || {
        sites
            .iter()
            .zip(since)
            .all(|(s, before)| s.forwarded() >= before + PROGRESS)
            .then_some(())
    })
    .unwrap_or_else(|e| {
        let states: Vec<String> = sites
            .iter()
            .map(|s| format!("{}: {}", s.id, s.status()["backbone"]))
            .collect();
        panic!(
            "{e}\n{}\nbroker errors:\n{}\n--- {} log (tail) ---\n{}",
            states.join("\n"),
            backbone.error_lines().join("\n"),
            sites[0].id,
            sites[0].gw.log_tail(30)
        )
    });
}

/// Whether the group has formed: every member holds partitions, no partition twice, all of
/// them held.
fn group_formed(state: &GroupState) -> bool {
    let current = state.current();
    let all: BTreeSet<i32> = current.iter().flatten().copied().collect();
    current.iter().all(|a| !a.is_empty())
        && all.len() == current.iter().map(Vec::len).sum::<usize>()
        && all == (0..PARTITIONS).collect()
}

/// Who a FHIR resource of an observation bundle belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Owner {
    gateway: String,
    device: String,
    seq: u64,
    /// `reading` (an Observation with its own seq), `panel` (a blood pressure panel, named
    /// after its first reading) or `other` (a resource of neither kind, seq 0).
    role: &'static str,
}

/// The trailing `-<n>` of a reference or id.
fn trailing_seq(s: &str) -> Option<u64> {
    s.rsplit('-').next()?.parse().ok()
}

/// Every resource of the bundle `value` of a record from (`gateway`, `device`), with its id
/// and owner.
fn resources_of(value: &[u8], gateway: &str, device: &str, at: &str) -> Vec<(String, Owner)> {
    let bundle: serde_json::Value =
        serde_json::from_slice(value).unwrap_or_else(|e| panic!("{at}: not JSON: {e}"));
    let entries = bundle["entry"]
        .as_array()
        .unwrap_or_else(|| panic!("{at}: a bundle without entries"));
    entries
        .iter()
        .map(|e| {
            let r = &e["resource"];
            let id = r["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: a resource without id: {r}"))
                .to_owned();
            let seq_ext = r["extension"].as_array().and_then(|exts| {
                exts.iter()
                    .find(|x| {
                        x["url"]
                            .as_str()
                            .is_some_and(|u| u.ends_with("/StructureDefinition/seq"))
                    })
                    .and_then(|x| x["valueString"].as_str()?.parse::<u64>().ok())
            });
            let derived_from = r["derivedFrom"][0]["reference"]
                .as_str()
                .and_then(trailing_seq);
            let (seq, role) = match (seq_ext, derived_from) {
                (Some(seq), _) => (seq, "reading"),
                (None, Some(first)) => (first, "panel"),
                (None, None) => (0, "other"),
            };
            let owner = Owner {
                gateway: gateway.to_owned(),
                device: device.to_owned(),
                seq,
                role,
            };
            (id, owner)
        })
        .collect()
}

#[test]
fn three_gateways_with_the_same_device_ids_forward_to_two_brokers_on_one_storage() {
    let started = Instant::now();
    let mut backbone = Backbone::start(2).expect("two tansu brokers on one S3 bucket");
    backbone
        .create_topics(TOPICS, PARTITIONS)
        .expect("topics created through broker 0, listed by both");
    // What tansu 0.6 advertises: each broker itself only, under the one node id every tansu
    // broker has; so every client below bootstraps with both addresses.
    for i in 0..backbone.len() {
        let md = backbone.metadata_at(i).unwrap();
        let listed: Vec<(i32, String)> = md
            .brokers()
            .iter()
            .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
            .collect();
        assert_eq!(
            listed,
            vec![(TANSU_NODE_ID, backbone.addr(i))],
            "broker {i}'s metadata names itself alone"
        );
    }

    let reader = GroupReader::start(
        &[backbone.bootstrap_from(0), backbone.bootstrap_from(1)],
        GROUP,
        OBSERVATIONS,
    )
    .expect("the consumer group");
    let root = tempfile::tempdir().unwrap();
    let mut sites: Vec<Site> = GATEWAYS
        .iter()
        .enumerate()
        .map(|(i, id)| Site::start(root.path(), id, &backbone.bootstrap_from(i % 2)))
        .collect();
    println!(
        "backbone, group and 3 gateways up after {:.1?}",
        started.elapsed()
    );

    // Both brokers up: every gateway forwards, and the group forms across the two brokers.
    let zero = vec![0; sites.len()];
    wait_forwarding(&sites, &zero, "every gateway forwarding", &backbone);
    wait_for(Duration::from_secs(40), "the group to form", || {
        group_formed(&reader.snapshot()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", reader.snapshot().assignments));
    println!(
        "forwarding, group formed {:?} after {:.1?}",
        reader.snapshot().current(),
        started.elapsed()
    );

    // Broker 0 down: the gateways go on through broker 1 alone.
    backbone.stop(0);
    let stopped_at = Instant::now();
    let before: Vec<u64> = sites.iter().map(Site::forwarded).collect();
    wait_forwarding(
        &sites,
        &before,
        "every gateway forwarding with broker 0 down",
        &backbone,
    );
    println!(
        "every gateway forwarded {PROGRESS}+ observations through broker 1 alone within {:.1?}",
        stopped_at.elapsed()
    );
    backbone.restart(0).expect("broker 0 restarts");
    let before: Vec<u64> = sites.iter().map(Site::forwarded).collect();
    wait_forwarding(
        &sites,
        &before,
        "every gateway forwarding after broker 0's restart",
        &backbone,
    );

    // The end of the run: what each simulator had acknowledged, all of it forwarded.
    let mut acknowledged: BTreeMap<Stream, u64> = BTreeMap::new();
    for site in &mut sites {
        let run = site.sim.take().expect("running").stop();
        assert!(!run.accepted.is_empty(), "{}: {}", site.id, run.stdout);
        for o in &run.accepted {
            *acknowledged
                .entry((site.id.to_owned(), o.device_id.clone()))
                .or_default() += 1;
        }
    }
    let mut stored: BTreeMap<Stream, u64> = BTreeMap::new();
    for site in &sites {
        let status = wait_for(Duration::from_secs(40), "the outbox to drain", || {
            let s = site.status();
            (s["backbone"]["state"] == "online" && s["store"]["unsent"].as_u64() == Some(0))
                .then_some(s)
        })
        .unwrap_or_else(|e| panic!("{}: {e}: {}", site.id, site.status()));
        let next = status["store"]["per_device_next_seq"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: no per_device_next_seq: {status}", site.id));
        for (device, next_seq) in next {
            let n = next_seq.as_u64().unwrap().saturating_sub(1);
            stored.insert((site.id.to_owned(), device.clone()), n);
        }
    }
    assert_eq!(
        stored.len(),
        GATEWAYS.len() * BEDS,
        "every gateway stored observations of each of its {BEDS} monitors: {stored:?}"
    );
    assert_eq!(
        stored, acknowledged,
        "each gateway stored exactly what its simulator had acknowledged"
    );
    println!("stored per (gateway, device): {stored:?}");

    // The group reads until every stored seq has arrived. (Not until the "latest" offsets:
    // tansu 0.6's S3 engine answers those short of the log's end, see
    // `icu_tests::backbone::latest_offsets`.)
    let (group, _) = reader.finish(Duration::from_secs(40), |g| {
        group_formed(g) && covers(g.records.iter().map(|(_, r)| r), &stored)
    });
    let complete = covers(group.records.iter().map(|(_, r)| r), &stored);
    let mut records: Vec<ConsumedRecord> = Vec::new();
    let mut seen: BTreeSet<(i32, i64)> = BTreeSet::new();
    for (_, r) in &group.records {
        if seen.insert((r.partition, r.offset)) {
            records.push(r.clone());
        }
    }
    let partitions = partitions_diagnosis(&backbone, &records);
    println!("{partitions}");
    assert!(
        complete,
        "the group did not read every stored seq within 40 s; assignments {:?}, errors {:?}\n{partitions}",
        group.assignments, group.errors
    );
    let final_assignments = group.current();
    assert!(
        group_formed(&group),
        "at the end each member holds its own partitions, all three together: {:?}",
        group.assignments
    );
    let per_member = group.records_per_member();
    assert!(
        per_member.iter().all(|n| *n > 0),
        "both members read records: {per_member:?} (assignments {:?})",
        group.assignments
    );
    let mut records: Vec<ConsumedRecord> = Vec::new();
    let mut seen: BTreeSet<(i32, i64)> = BTreeSet::new();
    for (_, r) in &group.records {
        if seen.insert((r.partition, r.offset)) {
            records.push(r.clone());
        }
    }
    let sightings = group.records.len();
    println!(
        "group: {} records ({sightings} sightings, per member {per_member:?}), final \
         assignments {final_assignments:?}, assignment history {:?}",
        records.len(),
        group.assignments
    );

    // Every record verifies with its own gateway's key.
    let by_id: BTreeMap<&str, &Site> = sites.iter().map(|s| (s.id, s)).collect();
    for r in &records {
        let at = format!("partition {} offset {}", r.partition, r.offset);
        let gateway = r
            .gateway_id
            .as_deref()
            .unwrap_or_else(|| panic!("{at}: no gateway"));
        let site = by_id
            .get(gateway)
            .unwrap_or_else(|| panic!("{at}: unknown gateway {gateway}"));
        assert_eq!(
            r.headers.get(headers::KEY_ID),
            Some(&site.key_id),
            "{at}: the record names {gateway}'s key"
        );
        let alone = ConsumedRecord::with_keys(
            r.partition,
            r.offset,
            r.key.clone(),
            r.headers.clone(),
            r.value.clone(),
            Some(&KeyRing::single(site.key)),
        );
        assert_eq!(
            alone.signature_ok,
            Some(true),
            "{at}: verifies with {gateway}'s key alone"
        );
    }
    let mut ring = KeyRing::default();
    for s in &sites {
        ring.insert(s.key);
    }
    let report = report_with_keys(&records, Some(&ring));
    check_report(
        "the group's read",
        &report,
        records.len() as u64,
        &stored,
        &partitions,
    );

    // FHIR ids: each belongs to one (gateway, device, seq), scoped by the gateway.
    let mut owners: BTreeMap<String, Owner> = BTreeMap::new();
    let mut seqs: BTreeMap<Stream, BTreeSet<u64>> = BTreeMap::new();
    for r in &records {
        let at = format!("partition {} offset {}", r.partition, r.offset);
        let gateway = r.gateway_id.clone().unwrap();
        let device = r
            .device_id
            .clone()
            .unwrap_or_else(|| panic!("{at}: no device"));
        for (id, owner) in resources_of(&r.value, &gateway, &device, &at) {
            let scope = match owner.role {
                "other" => format!("{gateway}-"),
                _ => format!("{gateway}-{device}-"),
            };
            assert!(
                id.starts_with(&scope),
                "{at}: id {id} is not scoped as {scope}…"
            );
            if owner.role == "reading" {
                assert_eq!(id, format!("{gateway}-{device}-{}", owner.seq), "{at}");
                seqs.entry((gateway.clone(), device.clone()))
                    .or_default()
                    .insert(owner.seq);
            }
            if let Some(before) = owners.get(&id) {
                assert_eq!(
                    *before, owner,
                    "{at}: FHIR id {id} names two different resources"
                );
            } else {
                owners.insert(id, owner);
            }
        }
    }
    let mut unscoped: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    for o in owners.values().filter(|o| o.role == "reading") {
        unscoped
            .entry((o.device.clone(), o.seq))
            .or_default()
            .insert(o.gateway.clone());
    }
    let shared = unscoped
        .values()
        .filter(|g| g.len() == GATEWAYS.len())
        .count();
    assert!(
        shared > 0,
        "the gateways' (device, seq) pairs overlap, so unscoped ids would collide"
    );
    let panels = owners.values().filter(|o| o.role == "panel").count();
    println!(
        "{} distinct FHIR resource ids ({panels} blood pressure panels), one owner each; {shared} \
         (device, seq) pairs exist in all three gateways",
        owners.len()
    );

    // Per (gateway, device): seqs 1..=n, n what the gateway stored.
    assert_eq!(
        seqs.keys().collect::<Vec<_>>(),
        stored.keys().collect::<Vec<_>>(),
        "the streams on the topic are the stored ones"
    );
    for (stream, got) in &seqs {
        let n = stored[stream];
        let expected: BTreeSet<u64> = (1..=n).collect();
        let missing: Vec<u64> = expected.difference(got).copied().collect();
        let extra: Vec<u64> = got.difference(&expected).copied().collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{stream:?}: stored 1..={n}; missing on the topic {missing:?}, not stored {extra:?}"
        );
    }

    // The restarted broker, asked alone, serves the whole topic, including what broker 1 took
    // while it was down.
    let (report, alone) = consume_with(
        &ConsumeOptions {
            brokers: backbone.addr(0),
            topic: OBSERVATIONS.into(),
            public_key: None,
            idle_timeout: Duration::from_secs(2),
            max_wait: Duration::from_secs(30),
        },
        &ConsumeSecurity {
            keys: Some(ring.clone()),
            ..ConsumeSecurity::default()
        },
    )
    .expect("reading icu.observations from the restarted broker alone");
    let distinct: BTreeSet<(i32, i64)> = alone.iter().map(|r| (r.partition, r.offset)).collect();
    assert_eq!(
        distinct, seen,
        "broker 0 alone serves exactly the records the group read"
    );
    check_report(
        "broker 0 alone",
        &report,
        alone.len() as u64,
        &stored,
        &partitions,
    );

    drop(sites);
    let errors = backbone.error_lines();
    println!(
        "{} ERROR lines in the brokers' logs{}",
        errors.len(),
        errors
            .iter()
            .take(5)
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    println!("wall time {:.1?}", started.elapsed());
}

/// The project's verifier over `records` (`what`): every signature good with the three keys,
/// nothing unknown, and per (gateway, device) the seqs 1..=n with n what the gateway stored.
fn check_report(
    what: &str,
    report: &ConsumeReport,
    records: u64,
    stored: &BTreeMap<Stream, u64>,
    diagnosis: &str,
) {
    assert!(report.is_clean(), "{what}: {report:?}\n{diagnosis}");
    assert_eq!(report.signatures_ok, records, "{what}: signatures");
    assert_eq!(report.unknown_key_records, 0, "{what}: unknown keys");
    // (distinct seqs, first seq, last seq) per stream.
    type Extent = (u64, Option<u64>, Option<u64>);
    let streams: BTreeMap<Stream, Extent> = report
        .streams()
        .map(|(g, d, r)| {
            (
                (g.to_owned(), d.to_owned()),
                (r.distinct_seqs, r.first_seq, r.last_seq),
            )
        })
        .collect();
    let expected: BTreeMap<Stream, Extent> = stored
        .iter()
        .map(|(k, n)| (k.clone(), (*n, Some(1), Some(*n))))
        .collect();
    assert_eq!(
        streams, expected,
        "{what}: per (gateway, device) stream, (distinct seqs, first, last)\n{diagnosis}"
    );
}

/// Whether `records` bring every seq 1..=n of each (gateway, device) stream of `stored` (by
/// their seq headers).
fn covers<'a>(
    records: impl Iterator<Item = &'a ConsumedRecord>,
    stored: &BTreeMap<Stream, u64>,
) -> bool {
    let mut got: BTreeMap<Stream, BTreeSet<u64>> = BTreeMap::new();
    for r in records {
        if let (Some(g), Some(d), Some(first), Some(last)) =
            (&r.gateway_id, &r.device_id, r.seq_first, r.seq_last)
        {
            got.entry((g.clone(), d.clone()))
                .or_default()
                .extend(first..=last);
        }
    }
    stored.iter().all(|(stream, n)| {
        got.get(stream)
            .is_some_and(|seqs| (1..=*n).all(|s| seqs.contains(&s)))
    })
}

/// Per partition of `icu.observations`: the offsets read (how many, the highest, the holes
/// below it), the record batches the storage holds (their base offsets) and the "latest"
/// offset broker 0 answers, for the output and failure messages.
fn partitions_diagnosis(backbone: &Backbone, records: &[ConsumedRecord]) -> String {
    let latest = latest_offsets(&backbone.addr(0), OBSERVATIONS)
        .map_err(|e| format!("{e:#}"))
        .map(|l| format!("{l:?}"));
    let mut out = format!(
        "per partition of icu.observations (broker 0's \"latest\" offsets: {}):",
        latest.unwrap_or_else(|e| e)
    );
    for p in 0..PARTITIONS {
        let read: BTreeSet<i64> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        let top = read.iter().next_back().map_or(0, |o| o + 1);
        let holes: Vec<i64> = (0..top).filter(|o| !read.contains(o)).collect();
        let batches = match backbone.stored_batches(OBSERVATIONS, p) {
            Ok(b) => format!("{} batches stored, base offsets {b:?}", b.len()),
            Err(e) => format!("batches unknown: {e:#}"),
        };
        out.push_str(&format!(
            "\n  partition {p}: {} offsets read, up to {top}, holes {holes:?}; {batches}",
            read.len()
        ));
    }
    out
}
