use std::net::IpAddr;

use super::*;

#[test]
fn accept_backoff_grows_from_10_ms_to_1_s_and_logs_once_per_burst() {
    let mut b = AcceptBackoff::default();
    assert_eq!(b.succeeded(), None, "no burst yet");
    let burst: Vec<(u128, bool)> = (0..10)
        .map(|_| {
            let (pause, first) = b.failed();
            (pause.as_millis(), first)
        })
        .collect();
    assert_eq!(
        burst,
        [
            (10, true),
            (20, false),
            (40, false),
            (80, false),
            (160, false),
            (320, false),
            (640, false),
            (1000, false),
            (1000, false),
            (1000, false)
        ]
    );
    // Never a busy loop, however long the burst.
    for _ in 0..100 {
        assert_eq!(b.failed().0, AcceptBackoff::MAX);
    }
    assert_eq!(b.succeeded(), Some(110));
    assert_eq!(b.succeeded(), None);
    assert_eq!(
        b.failed(),
        (AcceptBackoff::MIN, true),
        "a new burst starts over"
    );
}

#[test]
fn per_address_cap_frees_slots_on_drop() {
    let table = PerAddress::new(2);
    let a: IpAddr = "10.0.0.1".parse().unwrap();
    let b: IpAddr = "10.0.0.2".parse().unwrap();
    let a1 = table.try_open(a).unwrap();
    let a2 = table.try_open(a).unwrap();
    assert!(table.try_open(a).is_none(), "third from the same address");
    let b1 = table.try_open(b).expect("another address is not affected");
    // An IPv4 peer seen through an IPv6 socket is the same address.
    assert!(table.try_open("::ffff:10.0.0.1".parse().unwrap()).is_none());
    drop(a1);
    assert_eq!(table.open_from(a), 1);
    let _a3 = table.try_open(a).expect("a freed slot is reused");
    drop((a2, b1));
    assert_eq!(table.open_from(b), 0);
    assert_eq!(
        table.open.lock().unwrap().len(),
        1,
        "empty entries are removed"
    );
}

#[test]
fn throttle_writes_one_line_per_second_with_the_suppressed_count() {
    let mut t = Throttle::default();
    let t0 = Instant::now();
    assert_eq!(t.ready(t0), Some(0));
    assert_eq!(t.ready(t0 + Duration::from_millis(10)), None);
    assert_eq!(t.ready(t0 + Duration::from_millis(900)), None);
    assert_eq!(t.ready(t0 + Duration::from_millis(1000)), Some(2));
    assert_eq!(t.ready(t0 + Duration::from_millis(1500)), None);
}
