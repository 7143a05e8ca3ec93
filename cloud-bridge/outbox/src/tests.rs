//! The contract's unit tests: stream codes, the drain order and the in-memory model.

use super::*;

fn rec(device: &str, seq: u64) -> OutboxRecord {
    OutboxRecord {
        stream: Stream::Observations,
        device_id: device.into(),
        seq,
        bed: "b1".into(),
        record: StoredRecord {
            gateway_id: "gw".into(),
            device_id: device.into(),
            seq,
            body: None,
            traceparent: String::new(),
        },
    }
}

#[test]
fn memory_outbox_orders_limits_and_marks_ranges() {
    let outbox = MemoryOutbox::new();
    for (d, s) in [("b", 1), ("a", 2), ("a", 1), ("a", 3), ("b", 2)] {
        outbox.push(rec(d, s));
    }
    let keys: Vec<_> = outbox
        .fetch_unsent(&FetchRequest::all(4))
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.device_id, r.seq))
        .collect();
    assert_eq!(
        keys,
        [
            ("a".into(), 1),
            ("a".into(), 2),
            ("b".into(), 1),
            ("b".into(), 2)
        ],
        "a fair share each, each from its head, in (device, seq) order"
    );
    outbox.mark_sent(Stream::Observations, "a", 1, 2).unwrap();
    assert_eq!(outbox.sent_seqs("a"), [1, 2]);
    assert_eq!(outbox.unsent_len(), 3);
    outbox.set_fail_mark(true);
    assert!(outbox.mark_sent(Stream::Observations, "a", 3, 3).is_err());
    assert_eq!(outbox.unsent_len(), 3);
}

#[test]
fn stream_codes_round_trip_adt_and_audit_drain_before_observations_dead_letters_last() {
    for stream in Stream::ALL {
        assert_eq!(Stream::from_code(stream.code()), Some(stream));
    }
    assert_eq!(
        Stream::ALL.map(Stream::code),
        [2, 3, 5, 1, 6, 4],
        "codes are stored in the gateway database; never renumber"
    );
    assert_eq!(
        Stream::ALL.map(Stream::as_str),
        [
            "alarms",
            "adt",
            "audit",
            "observations",
            "waveforms",
            "deadletter"
        ]
    );
    assert_eq!(Stream::from_code(0), None);
    let mut sorted = [
        Stream::DeadLetters,
        Stream::Waveforms,
        Stream::Observations,
        Stream::Audit,
        Stream::Adt,
        Stream::Alarms,
    ];
    sorted.sort();
    assert_eq!(sorted, Stream::ALL);

    let outbox = MemoryOutbox::new();
    outbox.push(OutboxRecord {
        stream: Stream::DeadLetters,
        ..rec("a", 1)
    });
    outbox.push(rec("a", 1));
    outbox.push(OutboxRecord {
        stream: Stream::Adt,
        ..rec("adt", 1)
    });
    outbox.push(OutboxRecord {
        stream: Stream::Audit,
        ..rec(AUDIT_DEVICE, 1)
    });
    let streams: Vec<Stream> = outbox
        .fetch_unsent(&FetchRequest::all(10))
        .unwrap()
        .records
        .into_iter()
        .map(|r| r.stream)
        .collect();
    assert_eq!(
        streams,
        [
            Stream::Adt,
            Stream::Audit,
            Stream::Observations,
            Stream::DeadLetters
        ]
    );
}

/// An observation of `device` received at `received_us`.
fn obs_at(device: &str, seq: u64, received_us: i64) -> OutboxRecord {
    let mut r = rec(device, seq);
    r.record.body = Some(Body::Observation(icu_protos::v1::Observation {
        receive_time_us: received_us,
        ..Default::default()
    }));
    r
}

fn alarm_at(device: &str, seq: u64) -> OutboxRecord {
    OutboxRecord {
        stream: Stream::Alarms,
        record: StoredRecord {
            body: Some(Body::Alarm(icu_protos::v1::Alarm::default())),
            ..rec(device, seq).record
        },
        ..rec(device, seq)
    }
}

fn keys(f: &Fetched) -> Vec<(Stream, &str, u64)> {
    f.records
        .iter()
        .map(|r| (r.stream, r.device_id.as_str(), r.seq))
        .collect()
}

#[test]
fn drain_order_alarms_then_live_then_rate_limited_backlog_then_dead_letters() {
    let outbox = MemoryOutbox::new();
    // "old": a big backlog (head received at t=1); "new": live (head at t=1000).
    for seq in 1..=50 {
        outbox.push(obs_at("old", seq, seq as i64));
    }
    for seq in 1..=3 {
        outbox.push(obs_at("new", seq, 1000 + seq as i64));
    }
    outbox.push(alarm_at("old", 1));
    outbox.push(alarm_at("new", 1));
    outbox.push(OutboxRecord {
        stream: Stream::DeadLetters,
        ..rec("mllp", 1)
    });
    let request = FetchRequest {
        limit: 20,
        live_since_us: 1000,
        backlog_budget: 5,
        held: None,
    };
    let f = outbox.fetch_unsent(&request).unwrap();
    assert_eq!(
        keys(&f),
        [
            (Stream::Alarms, "new", 1),
            (Stream::Alarms, "old", 1),
            (Stream::Observations, "new", 1),
            (Stream::Observations, "new", 2),
            (Stream::Observations, "new", 3),
            (Stream::Observations, "old", 1),
            (Stream::Observations, "old", 2),
            (Stream::Observations, "old", 3),
            (Stream::Observations, "old", 4),
            (Stream::Observations, "old", 5),
            (Stream::DeadLetters, "mllp", 1),
        ],
        "every alarm, all of the live device, the backlog only up to its budget"
    );
    assert_eq!(f.backlog, 5);

    // A held stream (the waveform topic is missing) is left out; the others are as before.
    outbox.push(OutboxRecord {
        stream: Stream::Waveforms,
        ..rec("new", 1)
    });
    let with_curves = outbox.fetch_unsent(&request).unwrap();
    assert!(keys(&with_curves).contains(&(Stream::Waveforms, "new", 1)));
    let held = outbox
        .fetch_unsent(&FetchRequest {
            held: Some(Stream::Waveforms),
            ..request
        })
        .unwrap();
    assert_eq!(keys(&held), keys(&f), "everything but the curves");
    outbox.mark_sent(Stream::Waveforms, "new", 1, 1).unwrap();

    // A tight limit: alarms first, then live data; backlog and dead letters wait.
    let f = outbox
        .fetch_unsent(&FetchRequest {
            limit: 4,
            ..request
        })
        .unwrap();
    assert_eq!(
        keys(&f),
        [
            (Stream::Alarms, "new", 1),
            (Stream::Alarms, "old", 1),
            (Stream::Observations, "new", 1),
            (Stream::Observations, "new", 2),
        ]
    );
    assert_eq!(f.backlog, 0);

    // No budget: the backlog waits, the live device does not.
    let f = outbox
        .fetch_unsent(&FetchRequest {
            backlog_budget: 0,
            held: None,
            ..request
        })
        .unwrap();
    assert!(!keys(&f)
        .iter()
        .any(|(s, d, _)| *s == Stream::Observations && *d == "old"));
    assert_eq!(f.backlog, 0);
    assert_eq!(f.records.len(), 2 + 3 + 1, "alarms, live, dead letter");

    // Once "old" is sent up to a recent record it is live and served in full.
    outbox
        .mark_sent(Stream::Observations, "old", 1, 49)
        .unwrap();
    let f = outbox
        .fetch_unsent(&FetchRequest {
            live_since_us: 10,
            backlog_budget: 0,
            held: None,
            ..request
        })
        .unwrap();
    assert!(keys(&f).contains(&(Stream::Observations, "old", 50)));
    assert_eq!(f.backlog, 0);
}

#[test]
fn a_fetch_after_in_flight_records_starts_behind_them() {
    let outbox = MemoryOutbox::new();
    (1..=10)
        .map(|seq| obs_at("a", seq, 5))
        .chain((1..=3).map(|seq| obs_at("b", seq, 5)))
        .for_each(|r| outbox.push(r));
    let in_flight: InFlightRuns = [
        ((Stream::Observations, "a".to_owned()), 4),
        ((Stream::Observations, "b".to_owned()), 3),
    ]
    .into();
    let f = outbox
        .fetch_unsent_after(&FetchRequest::all(4), &in_flight)
        .unwrap();
    let seqs: Vec<(&str, u64)> = f
        .records
        .iter()
        .map(|r| (r.device_id.as_str(), r.seq))
        .collect();
    assert_eq!(
        seqs,
        [("a", 5), ("a", 6), ("a", 7), ("a", 8)],
        "b is all in flight; a continues behind its in-flight run, up to the limit"
    );
    assert_eq!(outbox.unsent_len(), 13, "nothing marked");
    let f = outbox
        .fetch_unsent_after(&FetchRequest::all(4), &InFlightRuns::new())
        .unwrap();
    assert_eq!(f.records[0].seq, 1);
}

#[test]
fn fair_share_is_water_filled_and_runs_start_at_the_head() {
    let outbox = MemoryOutbox::new();
    for seq in 1..=100 {
        outbox.push(obs_at("big", seq, 5));
    }
    for seq in 1..=2 {
        outbox.push(obs_at("small", seq, 5));
    }
    for seq in 1..=10 {
        outbox.push(obs_at("mid", seq, 5));
    }
    outbox
        .mark_sent(Stream::Observations, "big", 1, 10)
        .unwrap();
    outbox
        .mark_sent(Stream::Observations, "big", 5, 10)
        .unwrap();
    let f = outbox.fetch_unsent(&FetchRequest::all(30)).unwrap();
    let per = |d: &str| -> Vec<u64> {
        f.records
            .iter()
            .filter(|r| r.device_id == d)
            .map(|r| r.seq)
            .collect()
    };
    assert_eq!(per("small"), [1, 2]);
    assert_eq!(per("mid"), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        per("big"),
        (11..=28).collect::<Vec<_>>(),
        "what small and mid left over goes to big, from its head, without a hole"
    );
    assert_eq!(f.records.len(), 30);
    assert_eq!(outbox.sent_seqs_of(Stream::Observations, "big").len(), 10);
}
