//! SCRATCH: not to be committed. Needs a running broker: BROKER=127.0.0.1:PORT TOPIC=...
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Actor;
use icu_cloud_bridge::consume::{consume, ConsumeOptions};
use icu_cloud_bridge::*;
use icu_protos::v1::{stored_record::Body, Alarm, Observation, StoredRecord};

fn rec(device: &str, seq: u64, alarm: bool) -> OutboxRecord {
    let body = if alarm {
        Body::Alarm(Alarm::default())
    } else {
        Body::Observation(Observation {
            mdc_code: 150456,
            value: Some(90.0 + (seq % 10) as f64),
            unit_ucum: "%".into(),
            receive_time_us: 1_700_000_000_000_000 + seq as i64,
            ..Default::default()
        })
    };
    OutboxRecord {
        device_id: device.into(),
        seq,
        bed: "bed-1".into(),
        record: StoredRecord {
            gateway_id: "gw".into(),
            device_id: device.into(),
            seq,
            body: Some(body),
        },
    }
}

#[test]
#[ignore]
fn against_broker() {
    let brokers = std::env::var("BROKER").unwrap();
    let topic = std::env::var("TOPIC").unwrap();
    let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    let outbox = Arc::new(MemoryOutbox::new());
    for s in 1..=250 {
        outbox.push(rec("mon-1", s, s == 120));
    }
    for s in 1..=30 {
        outbox.push(rec("pump-1", s, false));
    }
    let key = GatewayKey::generate();
    let vk = key.verifying_key();
    let stats = BridgeStats::new();
    let missing_stats = BridgeStats::new();
    let config = BridgeConfig {
        gateway_id: "gw".into(),
        brokers: brokers.clone(),
        topic_observations: topic.clone(),
        message_timeout_ms: 10_000,
        ..Default::default()
    };
    let t0 = Instant::now();
    actix::System::new().block_on({
        let (outbox, stats, missing_stats, config) = (
            outbox.clone(),
            stats.clone(),
            missing_stats.clone(),
            config.clone(),
        );
        async move {
            BridgeActor::new(
                config.clone(),
                outbox.clone(),
                key,
                icu_drivers::terminology::Terminology::builtin(),
                stats.clone(),
            )
            .unwrap()
            .start();
            let missing = BridgeConfig {
                topic_observations: "does.not.exist".into(),
                ..config
            };
            BridgeActor::new(
                missing,
                Arc::new(MemoryOutbox::new()),
                GatewayKey::generate(),
                icu_drivers::terminology::Terminology::builtin(),
                missing_stats.clone(),
            )
            .unwrap()
            .start();
            loop {
                if outbox.unsent_len() == 1
                    && stats.state() == BridgeState::Online
                    && matches!(missing_stats.state(), BridgeState::TopicMissing { .. })
                {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{} {:?} {:?}",
                    outbox.unsent_len(),
                    stats.snapshot(),
                    missing_stats.state()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    println!("forwarded in {:?}: {}", t0.elapsed(), stats.snapshot());
    println!("missing: {}", missing_stats.snapshot());
    let (report, records) = consume(&ConsumeOptions {
        brokers,
        topic,
        public_key: Some(vk),
        idle_timeout: Duration::from_secs(1),
        max_wait: Duration::from_secs(30),
    })
    .unwrap();
    println!("{}", serde_json::to_string(&report).unwrap());
    println!(
        "{}",
        icu_cloud_bridge::consume::render_summary("t", &report)
    );
    assert_eq!(report.signatures_ok, records.len() as u64);
    assert_eq!(report.devices["mon-1"].gaps, [(120, 120)]);
    assert_eq!(report.devices["mon-1"].observations, 249);
    assert_eq!(report.devices["pump-1"].observations, 30);
}

#[test]
#[ignore]
fn recovers_when_broker_appears() {
    let tansu = std::env::var("TANSU").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let brokers = format!("127.0.0.1:{port}");
    let _ = tracing_subscriber::fmt().with_env_filter("info").try_init();
    let outbox = Arc::new(MemoryOutbox::new());
    for s in 1..=20 {
        outbox.push(rec("mon-1", s, false));
    }
    let stats = BridgeStats::new();
    let config = BridgeConfig {
        gateway_id: "gw".into(),
        brokers: brokers.clone(),
        message_timeout_ms: 3_000,
        max_backoff: Duration::from_secs(1),
        ..Default::default()
    };
    let url = format!("tcp://{brokers}");
    let mut child = None;
    actix::System::new().block_on({
        let (outbox, stats) = (outbox.clone(), stats.clone());
        let child = &mut child;
        async move {
            BridgeActor::new(config, outbox.clone(), GatewayKey::generate(), icu_drivers::terminology::Terminology::builtin(), stats.clone()).unwrap().start();
            let t0 = Instant::now();
            while !matches!(stats.state(), BridgeState::Offline { .. }) {
                assert!(t0.elapsed() < Duration::from_secs(30));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("offline: {:?}", stats.state());
            *child = Some(std::process::Command::new(&tansu).args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"]).spawn().unwrap());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let st = std::process::Command::new(&tansu).args(["topic", "create", "icu.observations", "--broker", &url]).status().unwrap();
            assert!(st.success());
            let t1 = Instant::now();
            while outbox.unsent_len() > 0 || stats.state() != BridgeState::Online {
                assert!(t1.elapsed() < Duration::from_secs(60), "{}", stats.snapshot());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("recovered in {:?}: {}", t1.elapsed(), stats.snapshot());
        }
    });
    child.unwrap().kill().unwrap();
}

#[test]
#[ignore]
fn broker_dies_and_comes_back() {
    let tansu = std::env::var("TANSU").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let brokers = format!("127.0.0.1:{port}");
    let _ = tracing_subscriber::fmt().with_env_filter("info,rdkafka=warn").try_init();
    let url = format!("tcp://{brokers}");
    let start_broker = || {
        let c = std::process::Command::new(&tansu).args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(800));
        assert!(std::process::Command::new(&tansu).args(["topic", "create", "icu.observations", "--broker", &url]).status().unwrap().success());
        c
    };
    let mut child = start_broker();
    let outbox = Arc::new(MemoryOutbox::new());
    for s in 1..=10 {
        outbox.push(rec("mon-1", s, false));
    }
    let stats = BridgeStats::new();
    let config = BridgeConfig { gateway_id: "gw".into(), brokers: brokers.clone(), message_timeout_ms: 3_000, max_backoff: Duration::from_secs(1), ..Default::default() };
    actix::System::new().block_on({
        let (outbox, stats) = (outbox.clone(), stats.clone());
        let child = &mut child;
        async move {
            BridgeActor::new(config, outbox.clone(), GatewayKey::generate(), icu_drivers::terminology::Terminology::builtin(), stats.clone()).unwrap().start();
            let t0 = Instant::now();
            while outbox.unsent_len() > 0 { assert!(t0.elapsed() < Duration::from_secs(30)); tokio::time::sleep(Duration::from_millis(50)).await; }
            println!("phase1 ok: {}", stats.snapshot());
            child.kill().unwrap(); child.wait().unwrap();
            for s in 11..=30 { outbox.push(rec("mon-1", s, false)); }
            while !matches!(stats.state(), BridgeState::Offline { .. }) { assert!(t0.elapsed() < Duration::from_secs(60)); tokio::time::sleep(Duration::from_millis(50)).await; }
            println!("offline: {}", stats.snapshot());
            assert_eq!(outbox.unsent_len(), 20);
            *child = start_broker();
            let t1 = Instant::now();
            while outbox.unsent_len() > 0 || stats.state() != BridgeState::Online {
                assert!(t1.elapsed() < Duration::from_secs(60), "{}", stats.snapshot());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("recovered in {:?}: {}", t1.elapsed(), stats.snapshot());
        }
    });
    let (report, _) = consume(&ConsumeOptions { brokers, topic: "icu.observations".into(), public_key: None, idle_timeout: Duration::from_secs(1), max_wait: Duration::from_secs(20) }).unwrap();
    println!("{}", serde_json::to_string(&report).unwrap());
    child.kill().unwrap();
}
