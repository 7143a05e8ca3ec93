//! Bad waveform input on every transport (issue 19, "Bad input"), against one gateway with a
//! PCD-01 monitor on real MLLP/TCP, a Dräger ventilator with realtime curves on a real pty and
//! a wearable on a real mosquitto. Each bad input gets its clear answer and its dead letter,
//! and a later numerics message of the same device is stored:
//! - MLLP: an NA field with a non-numeric sample, a sample rate of zero, a segment longer than
//!   the bound (15,000 positions): AE with an ERR segment naming the location;
//! - serial: a malformed MEDIBUS realtime frame (realtime frames have no checksum; a frame that
//!   is not "sync, commands, one sample per stream" is what stands for a bad checksum): a dead
//!   letter and a log line with the device and the sync byte's stream offset, the slow protocol
//!   polls on;
//! - MQTT: a protobuf payload whose waveform has a sample rate of zero: a dead letter naming
//!   `waveforms[0].sample_rate_hz`.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use icu_drivers::mqtt::rumqttc::{AsyncClient, MqttOptions, QoS};
use icu_drivers::mqtt::{publish_observations, MqttBatch, ObsTopic, PayloadFormat};
use icu_protos::v1::{Observation, WaveformSegment};
use icu_tests::mllp::msa_code;
use icu_tests::mosquitto::Mosquitto;
use icu_tests::ventilator::{device_toml, run_ventilator, VentControl};
use icu_tests::wait_for;
use support::{config_text, GatewayProc, Sender};

/// Bed 01 with the monitor mon-01 (PCD-01, EUI-64 0012AB0000000001), the ventilator vent-01
/// on `port` and the wearable wear-01 on the broker at `mqtt_port`.
fn config(dir: &std::path::Path, port: &std::path::Path, mqtt_port: u16) -> String {
    let wearable = "[[devices]]\nid = \"wear-01\"\nbed = \"bed-01\"\nprotocol = \"mqtt\"\n\n";
    config_text(dir, 1, None, "")
        + wearable
        + &device_toml(port)
        + &format!("[mqtt]\nbroker_port = {mqtt_port}\n")
}

/// A PCD-01 message of mon-01: a heart rate and, when `samples` is set, one ECG lead as an NA
/// field with its sample-rate attribute row (`OBX|3`).
fn pcd01(control: &str, samples: Option<&str>, rate: &str) -> String {
    let ts = chrono::Utc::now().format("%Y%m%d%H%M%S+0000");
    let mut rows = vec![
        format!("MSH|^~\\&|MON^0012AB0000000001^EUI-64|ICU|GW|HOSP|{ts}||ORU^R01^ORU_R01|{control}|P|2.6|||AL|NE"),
        "PID|||123456^^^HOSP^MR".to_owned(),
        format!("OBR|1|||182777000^monitoring of patient^SCT|||{ts}"),
        format!("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R|||{ts}"),
    ];
    if let Some(samples) = samples {
        rows.push(format!("OBR|2|||69121^MDC_OBS_WAVE_CTS^MDC|||{ts}"));
        rows.push(format!("OBX|2|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.1.1.100|{samples}|266418^MDC_DIM_MILLI_VOLT^MDC|||||R|||{ts}"));
        rows.push(format!(
            "OBX|3|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.100.1|{rate}|264608^MDC_DIM_PER_SEC^MDC|||||R"
        ));
    }
    rows.join("\r")
}

/// `(transport, device, stream offset, location, reason)` of every dead letter, oldest first.
type Letter = (String, Option<String>, i64, Option<String>, String, i64);

fn dead_letters(gw: &GatewayProc) -> Vec<Letter> {
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    let mut q = c
        .prepare("SELECT transport, device_id, stream_offset, location, reason, received_us FROM dead_letters ORDER BY id")
        .unwrap();
    q.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Numerics rows of `device` received after `after_us`.
fn numerics_after(gw: &GatewayProc, device: &str, after_us: i64) -> i64 {
    let c = rusqlite::Connection::open(gw.db_path()).unwrap();
    c.query_row(
        "SELECT count(*) FROM records WHERE kind = 1 AND device_id = ?1 AND received_us > ?2",
        rusqlite::params![device, after_us],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn bad_waveforms_are_answered_and_dead_lettered_and_the_numerics_keep_flowing() {
    let mosquitto = Mosquitto::start().expect("mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("vent-01");
    let vent = Arc::new(VentControl::default());
    let _vent = run_ventilator(port.clone(), vent.clone()).expect("ventilator on a pty");
    let gw = GatewayProc::start(dir.path(), &config(dir.path(), &port, mosquitto.port));

    // MLLP: three bad waveforms, each an AE with its ERR location and a dead letter.
    let mut mllp = Sender::connect(gw.endpoints.mllp);
    let long = vec!["1"; 15_001].join("^");
    let cases = [
        ("W-TEXT", "1^2^x^4", "500", "OBX^2^5"),
        ("W-ZERO", "1^2^3", "0", "OBX^3^5"),
        ("W-LONG", long.as_str(), "500", "OBX^2^5"),
    ];
    for (control, samples, rate, location) in cases {
        let ack = mllp.send(&pcd01(control, Some(samples), rate));
        assert_eq!(msa_code(&ack), "AE", "{control}: {ack}");
        let err = ack
            .split('\r')
            .find(|s| s.starts_with("ERR|"))
            .unwrap_or_else(|| panic!("{control}: no ERR segment in {ack}"));
        assert!(
            err.contains(location),
            "{control}: ERR names {location}: {err}"
        );
    }
    let letters = dead_letters(&gw);
    let mllp_letters: Vec<&Letter> = letters.iter().filter(|l| l.0 == "mllp").collect();
    assert_eq!(mllp_letters.len(), 3, "{letters:#?}");
    for (l, (control, ..)) in mllp_letters.iter().zip(&cases) {
        assert_eq!(l.1.as_deref(), Some("mon-01"), "{control}: {l:?}");
        assert!(
            l.3.is_some(),
            "{control}: the dead letter keeps the location: {l:?}"
        );
    }
    assert!(mllp_letters[0].4.contains("x"), "{:?}", mllp_letters[0]);
    assert!(mllp_letters[2].4.contains("15000"), "{:?}", mllp_letters[2]);
    // The monitor's next message (numerics and a good curve) is stored: AA after the commit.
    let ack = mllp.send(&pcd01("W-GOOD", Some("1^2^3"), "500"));
    assert_eq!(msa_code(&ack), "AA", "{ack}");
    assert!(numerics_after(&gw, "mon-01", 0) >= 1);

    // MQTT: a waveform with a sample rate of zero refuses the payload; the next is stored.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut opts = MqttOptions::new("test-wearable", "127.0.0.1", mosquitto.port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        wait_for(
            Duration::from_secs(20),
            "the gateway's subscription",
            || (gw.get_json("/api/status")["mqtt"]["subscribed"].as_u64() >= Some(1)).then_some(()),
        )
        .unwrap();
        let topic = ObsTopic::new("test-gw", "bed-01", "wear-01", PayloadFormat::Protobuf).unwrap();
        let batch = |msg_id: &str, rate: f64| MqttBatch {
            msg_id: msg_id.into(),
            observations: vec![Observation {
                mdc_code: 147842,
                value: Some(80.0),
                ..Default::default()
            }],
            waveforms: vec![WaveformSegment {
                mdc_code: 131_330,
                sample_rate_hz: rate,
                samples: vec![3, 4, 5, 4],
                ..Default::default()
            }],
        };
        for (id, rate) in [("bad-1", 0.0), ("ok-1", 250.0)] {
            publish_observations(&client, &topic, &batch(id, rate), QoS::AtLeastOnce)
                .await
                .unwrap();
        }
    });
    wait_for(
        Duration::from_secs(20),
        "the wearable's next message stored",
        || (numerics_after(&gw, "wear-01", 0) >= 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    let letters = dead_letters(&gw);
    let mqtt: Vec<&Letter> = letters.iter().filter(|l| l.0 == "mqtt").collect();
    assert_eq!(mqtt.len(), 1, "{letters:#?}");
    assert_eq!(mqtt[0].1.as_deref(), Some("wear-01"));
    assert!(
        mqtt[0].4.contains("waveforms[0].sample_rate_hz"),
        "{:?}",
        mqtt[0]
    );

    // Serial: once the curves stream, one malformed realtime frame.
    wait_for(Duration::from_secs(30), "realtime curves streaming", || {
        (vent.sent.lock().unwrap().len() >= 50).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    let k = vent.sent.lock().unwrap().len() as u64 + 25;
    vent.corrupt_frame.store(k, Ordering::Relaxed);
    let letter = wait_for(Duration::from_secs(20), "the realtime dead letter", || {
        dead_letters(&gw)
            .into_iter()
            .find(|l| l.0 == "serial:medibus")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    let offset = vent.corrupt_offset.load(Ordering::Relaxed);
    assert_eq!(letter.1.as_deref(), Some("vent-01"));
    assert_eq!(
        letter.2 as u64, offset,
        "the sync byte's stream offset: {letter:?}"
    );
    assert!(
        letter
            .4
            .contains(&format!("bad MEDIBUS realtime frame at byte {offset}")),
        "{letter:?}"
    );
    assert!(
        gw.log_text()
            .lines()
            .any(|l| l.contains("serial input rejected") && l.contains("realtime frame")),
        "a log line names it"
    );
    // The slow protocol polls on: numerics of the ventilator stored after the bad frame.
    wait_for(
        Duration::from_secs(20),
        "ventilator numerics after the bad frame",
        || (numerics_after(&gw, "vent-01", letter.5) >= 1).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_tail(30)));
    assert_eq!(
        vent.stream_starts.load(Ordering::Relaxed),
        1,
        "the bad frame neither restarted the curves nor the link"
    );
    vent.stop.store(true, Ordering::Relaxed);
}
