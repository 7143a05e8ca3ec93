//! The MQTT transport against a real mosquitto: JSON and protobuf observations at QoS 1, PUBACK
//! only after the store returned, redelivery of what was not acknowledged, reconnection with
//! resubscription, and malformed payloads rejected without stopping later messages.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use icu_drivers::mqtt::rumqttc::{AsyncClient, MqttOptions, QoS};
use icu_drivers::mqtt::{
    decode_payload, publish_observations, Delivery, Disposition, MqttBatch, MqttConfig,
    MqttCounters, MqttMessage, MqttSubscriber, ObsTopic, PayloadFormat, DEFAULT_MAX_PAYLOAD_BYTES,
};
use icu_drivers::terminology::Terminology;
use icu_protos::v1::Observation;
use icu_tests::mosquitto::Mosquitto;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const GATEWAY: &str = "gw-smoke";
const DEADLINE: Duration = Duration::from_secs(20);

fn config(port: u16, client_id: &str) -> MqttConfig {
    MqttConfig {
        broker_port: port,
        client_id: Some(client_id.into()),
        keep_alive_s: 5,
        reconnect_max_backoff_ms: 400,
        ..MqttConfig::new(GATEWAY)
    }
}

fn topic(format: PayloadFormat) -> ObsTopic {
    ObsTopic::new(GATEWAY, "bed-1", "pump-1", format).expect("valid ids")
}

fn batch(msg_id: &str, rate: f64) -> MqttBatch {
    MqttBatch {
        waveforms: Vec::new(),
        msg_id: msg_id.into(),
        observations: vec![Observation {
            mdc_code: 157784,
            value: Some(rate),
            unit_ucum: "mL/h".into(),
            ..Default::default()
        }],
    }
}

/// What the gateway does with a message, minus the disk: topic check, then decode.
fn store(msg: &MqttMessage) -> Result<MqttBatch, String> {
    let topic = ObsTopic::parse(&msg.topic, GATEWAY).map_err(|e| e.to_string())?;
    if topic.device_id != "pump-1" {
        return Err(format!("device '{}' is not configured", topic.device_id));
    }
    let now_us = chrono::Utc::now().timestamp_micros();
    decode_payload(
        topic.format,
        &msg.payload,
        DEFAULT_MAX_PAYLOAD_BYTES,
        now_us,
        &Terminology::builtin(),
    )
    .map_err(|e| e.to_string())
}

/// A plain rumqttc publisher (clean session) whose event loop runs in the background.
struct Publisher {
    client: AsyncClient,
    task: JoinHandle<()>,
}

impl Publisher {
    fn connect(port: u16, id: &str) -> Publisher {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Publisher { client, task }
    }

    async fn send(&self, format: PayloadFormat, batch: &MqttBatch) -> anyhow::Result<()> {
        publish_observations(&self.client, &topic(format), batch, QoS::AtLeastOnce)
            .await
            .context("publish")
    }

    async fn send_raw(&self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .context("publish")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Poll `cond` until true, for at most [`DEADLINE`]; never a fixed sleep as synchronisation.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > DEADLINE {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn next(rx: &mut mpsc::Receiver<Delivery>) -> anyhow::Result<Delivery> {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .context("no delivery within the deadline")?
        .context("the subscriber stopped")
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Whether the broker's log shows a PUBACK from `client` for packet id `pkid`.
fn broker_got_puback(broker: &Mosquitto, client: &str, pkid: u16) -> bool {
    broker
        .log()
        .contains(&format!("Received PUBACK from {client} (Mid: {pkid},"))
}

/// Blocking broker control inside the async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_protobuf_are_acked_only_after_the_store_returned() -> anyhow::Result<()> {
    let broker = blocking(Mosquitto::start)?;
    let client_id = "icu-sub-order";
    let (subscriber, mut rx) = MqttSubscriber::start(&config(broker.port, client_id), 8)?;
    let counters: Arc<MqttCounters> = subscriber.counters();
    wait_until("the subscription", || count(&counters.subscribed) >= 1).await?;

    let publisher = Publisher::connect(broker.port, "icu-pub-order");
    publisher
        .send(PayloadFormat::Json, &batch("j1", 12.5))
        .await?;
    publisher
        .send(PayloadFormat::Protobuf, &batch("p1", 7.0))
        .await?;
    let json_topic = topic(PayloadFormat::Json).to_string();
    publisher
        .send_raw(
            &json_topic,
            b"{\"observations\": [ {\"mdc_code\": 157784,, } ]}",
        )
        .await?;
    publisher
        .send_raw(
            &json_topic,
            br#"{"observations":[{"mdc_code":999999999,"value":1}]}"#,
        )
        .await?;
    publisher
        .send_raw(
            &format!("icu/{GATEWAY}/bed/bed-1/device/pump-unknown/obs/json"),
            br#"{"observations":[]}"#,
        )
        .await?;
    publisher
        .send(PayloadFormat::Json, &batch("j2", 13.0))
        .await?;

    let mut stored = Vec::new();
    let mut rejected = Vec::new();
    for i in 0..6u64 {
        let Delivery { message, ack } = next(&mut rx).await?;
        assert!(!message.dup, "first delivery of {message:?}");
        // Every earlier message is acknowledged before this one is handed over...
        wait_until("the earlier acks", || count(&counters.acked) == i).await?;
        // ...and this one is not, however long the store takes.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(count(&counters.acked), i, "acked before the store returned");
        assert!(!broker_got_puback(&broker, client_id, message.pkid));
        match store(&message) {
            Ok(b) => {
                assert_eq!(b.observations.len(), 1);
                assert_eq!(b.observations[0].unit_ucum, "mL/h");
                stored.push(b.msg_id);
                ack.complete(Disposition::Stored);
            }
            Err(reason) => {
                rejected.push(reason.clone());
                ack.complete(Disposition::Rejected(reason));
            }
        }
        wait_until("the ack", || count(&counters.acked) == i + 1).await?;
        wait_until("the broker to receive the PUBACK", || {
            broker_got_puback(&broker, client_id, message.pkid)
        })
        .await?;
    }
    assert_eq!(stored, ["j1", "p1", "j2"]);
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert!(rejected[0].contains("line 1"), "{}", rejected[0]);
    assert!(rejected[1].contains("999999999"), "{}", rejected[1]);
    assert!(rejected[2].contains("pump-unknown"), "{}", rejected[2]);
    let c = counters.snapshot();
    assert_eq!(
        (
            c.messages,
            c.acked,
            c.rejected,
            c.store_failures,
            c.reconnects
        ),
        (6, 6, 3, 0, 0),
        "{c:?}"
    );
    subscriber.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_message_is_redelivered_after_reconnect() -> anyhow::Result<()> {
    let mut broker = blocking(Mosquitto::start_persistent)?;
    let client_id = "icu-sub-redeliver";
    let (subscriber, mut rx) = MqttSubscriber::start(&config(broker.port, client_id), 8)?;
    let counters = subscriber.counters();
    wait_until("the subscription", || count(&counters.subscribed) >= 1).await?;

    let publisher = Publisher::connect(broker.port, "icu-pub-redeliver-1");
    publisher
        .send(PayloadFormat::Json, &batch("r1", 5.0))
        .await?;
    let first = next(&mut rx).await?;
    assert!(!first.message.dup);

    // The store has not returned: no PUBACK, whatever happens to the connection.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(count(&counters.acked), 0);
    assert!(!broker_got_puback(&broker, client_id, first.message.pkid));
    drop(publisher);
    blocking(|| broker.restart())?;
    wait_until("the reconnection", || count(&counters.reconnects) >= 1).await?;

    // The broker resends the unacknowledged message on the new connection.
    let again = next(&mut rx).await?;
    assert!(
        again.message.dup,
        "redelivery has DUP set: {:?}",
        again.message
    );
    assert_eq!(again.message.payload, first.message.payload);

    // The first copy's ack belongs to the old connection: skipped, not sent.
    first.ack.complete(Disposition::Stored);
    wait_until("the stale ack", || count(&counters.stale_acks) == 1).await?;
    assert_eq!(count(&counters.acked), 0);
    // The redelivered copy is stored (the store deduplicates by msg_id) and acknowledged.
    assert_eq!(
        store(&again.message).map_err(anyhow::Error::msg)?.msg_id,
        "r1"
    );
    again.ack.complete(Disposition::Stored);
    wait_until("the ack", || count(&counters.acked) == 1).await?;
    wait_until("the broker to receive the PUBACK", || {
        broker_got_puback(&broker, client_id, again.message.pkid)
    })
    .await?;

    // Acknowledged means gone: after another restart only new messages arrive.
    blocking(|| broker.restart())?;
    wait_until("the second reconnection", || {
        count(&counters.reconnects) >= 2 && subscriber.is_connected()
    })
    .await?;
    let publisher = Publisher::connect(broker.port, "icu-pub-redeliver-2");
    publisher
        .send(PayloadFormat::Protobuf, &batch("r2", 6.0))
        .await?;
    let d = next(&mut rx).await?;
    assert_eq!(store(&d.message).map_err(anyhow::Error::msg)?.msg_id, "r2");
    assert!(!d.message.dup);
    d.ack.complete(Disposition::Stored);
    wait_until("the ack", || count(&counters.acked) == 2).await?;
    let c = counters.snapshot();
    assert_eq!((c.messages, c.stale_acks, c.reconnects), (3, 1, 2), "{c:?}");
    subscriber.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_by_itself_after_the_broker_comes_back() -> anyhow::Result<()> {
    let mut broker = blocking(Mosquitto::start)?;
    let port = broker.port;
    let stored = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = stored.clone();
    let subscriber =
        MqttSubscriber::start_with_handler(&config(port, "icu-sub-reconnect"), move |msg| {
            let sink = sink.clone();
            async move {
                match store(&msg) {
                    Ok(b) => {
                        sink.lock().unwrap().push(b.msg_id);
                        Disposition::Stored
                    }
                    Err(reason) => Disposition::Rejected(reason),
                }
            }
        })?;
    let counters = subscriber.counters();
    let has = |id: &str| stored.lock().unwrap().iter().any(|m| m == id);
    wait_until("the subscription", || count(&counters.subscribed) >= 1).await?;

    let publisher = Publisher::connect(port, "icu-pub-reconnect-1");
    publisher
        .send(PayloadFormat::Json, &batch("a1", 1.0))
        .await?;
    wait_until("a1 stored", || has("a1")).await?;

    // The broker goes away; a new one (no persistence: the session is lost) takes its port.
    drop(publisher);
    blocking(|| broker.stop());
    wait_until("the disconnection", || {
        !subscriber.is_connected() && count(&counters.connection_errors) >= 1
    })
    .await?;
    let broker = blocking(|| Mosquitto::start_on(port))?;
    wait_until("the resubscription", || {
        count(&counters.reconnects) >= 1 && count(&counters.subscribed) >= 2
    })
    .await?;

    let publisher = Publisher::connect(broker.port, "icu-pub-reconnect-2");
    publisher
        .send_raw(&topic(PayloadFormat::Protobuf).to_string(), b"\xff\xff\xff")
        .await?;
    publisher
        .send(PayloadFormat::Protobuf, &batch("a2", 2.0))
        .await?;
    wait_until("a2 stored", || has("a2")).await?;
    wait_until("all acked", || count(&counters.acked) == 3).await?;
    let c = counters.snapshot();
    assert_eq!((c.messages, c.rejected, c.reconnects), (3, 1, 1), "{c:?}");
    assert_eq!(*stored.lock().unwrap(), ["a1", "a2"]);
    subscriber.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_handler_overlaps_messages_and_acks_them_in_arrival_order() -> anyhow::Result<()>
{
    let broker = blocking(Mosquitto::start)?;
    let client_id = "icu-sub-pipelined";
    // Stage 1 records the arrival order and parks each message's stage 2 until the test
    // releases it: the commits finish in the reverse order of arrival.
    let arrived = Arc::new(Mutex::new(Vec::<(String, u16)>::new()));
    let releases = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let finished = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (log, parked, done) = (arrived.clone(), releases.clone(), finished.clone());
    let subscriber =
        MqttSubscriber::start_pipelined(&config(broker.port, client_id), 8, move |msg| {
            let (release, released) = tokio::sync::oneshot::channel::<()>();
            let decoded = store(&msg);
            if let Ok(b) = &decoded {
                log.lock().unwrap().push((b.msg_id.clone(), msg.pkid));
                parked.lock().unwrap().insert(b.msg_id.clone(), release);
            }
            let done = done.clone();
            // Stage 1 is done (recorded above); stage 2 waits for the release.
            std::future::ready(async move {
                let disposition = match decoded {
                    Ok(_) => {
                        let _ = released.await;
                        Disposition::Stored
                    }
                    Err(reason) => Disposition::Rejected(reason),
                };
                done.fetch_add(1, Ordering::SeqCst);
                disposition
            })
        })?;
    let counters = subscriber.counters();
    wait_until("the subscription", || count(&counters.subscribed) >= 1).await?;

    let publisher = Publisher::connect(broker.port, "icu-pub-pipelined");
    let ids = ["p1", "p2", "p3", "p4", "p5"];
    for (i, id) in ids.iter().enumerate() {
        publisher
            .send(PayloadFormat::Json, &batch(id, i as f64))
            .await?;
    }
    // All five are in flight at once (none finished): the handler did not wait for a commit.
    wait_until("every message in stage 1", || {
        arrived.lock().unwrap().len() == 5
    })
    .await?;
    let arrived: Vec<(String, u16)> = arrived.lock().unwrap().clone();
    assert_eq!(
        arrived
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ids,
        "stage 1 runs in arrival order"
    );
    assert_eq!(finished.load(Ordering::SeqCst), 0);

    // The later four commit first: nothing may be acknowledged while p1 is not stored.
    for id in ids[1..].iter().rev() {
        let release = releases.lock().unwrap().remove(*id).context("parked")?;
        let _ = release.send(());
    }
    wait_until("p2..p5 done", || finished.load(Ordering::SeqCst) == 4).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(count(&counters.acked), 0, "p1 not stored: no PUBACK at all");

    let release = releases.lock().unwrap().remove("p1").context("parked")?;
    let _ = release.send(());
    wait_until("every ack", || count(&counters.acked) == 5).await?;
    wait_until("the broker to receive the PUBACKs", || {
        arrived
            .iter()
            .all(|(_, pkid)| broker_got_puback(&broker, client_id, *pkid))
    })
    .await?;
    // The PUBACKs reached the broker in arrival order.
    let log = broker.log();
    let at: Vec<usize> = arrived
        .iter()
        .map(|(_, pkid)| {
            log.find(&format!("Received PUBACK from {client_id} (Mid: {pkid},"))
                .unwrap_or(usize::MAX)
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "PUBACK order: {at:?}");
    subscriber.shutdown().await;
    Ok(())
}
