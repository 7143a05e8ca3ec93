//! The MQTT broker: log in with the configured credentials and TLS, as the gateway's subscriber
//! does (`icu_drivers::mqtt::mqtt_options`), then disconnect cleanly. The probe uses its own
//! client id (`<client_id>-probe`) and a clean session, so it never takes over the gateway's
//! session nor receives a reading; it subscribes to nothing and publishes nothing.

use std::time::Duration;

use icu_drivers::mqtt::rumqttc::{AsyncClient, ConnectionError, Event, Packet};
use icu_drivers::mqtt::tls::{explain, FailureKind};
use icu_drivers::mqtt::{mqtt_options, MqttConfig};

use super::check::Check;

pub async fn probe(config: &MqttConfig, timeout: Duration) -> Check {
    let who = match &config.username {
        Some(u) => format!(", as user {u}"),
        None => String::new(),
    };
    let what = format!(
        "mqtt broker {}:{} ({}{who})",
        config.broker_host,
        config.broker_port,
        config.transport()
    );
    let mut probe_config = config.clone();
    probe_config.client_id = Some(format!("{}-probe", config.client_id()));
    let mut opts = match mqtt_options(&probe_config) {
        Ok(o) => o,
        Err(e) => {
            return Check::fail(
                what,
                e.to_string(),
                "fix that [mqtt] setting (check-config without --probe names every problem)",
            )
        }
    };
    opts.set_clean_session(true).set_manual_acks(false);
    let (client, mut events) = AsyncClient::new(opts, 4);
    let connected = tokio::time::timeout(timeout, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match connected {
        Ok(Ok(())) => {
            // A clean DISCONNECT, so the broker logs a normal goodbye, not a lost client.
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while events.poll().await.is_ok() {}
            })
            .await;
            Check::ok(what)
        }
        Ok(Err(e)) => refused(what, &e, &config.broker_host),
        Err(_) => Check::fail(
            what,
            format!("no answer within {} s", timeout.as_secs_f64()),
            "check mqtt.broker_host and mqtt.broker_port, the network, and that the broker runs",
        ),
    }
}

fn refused(what: String, e: &ConnectionError, host: &str) -> Check {
    let (kind, text) = explain(e, host);
    match kind {
        // `explain` already names what to fix.
        FailureKind::Auth | FailureKind::Refused | FailureKind::Tls => Check::fail(what, text, ""),
        FailureKind::Network => Check::fail(
            what,
            format!("unreachable: {text}"),
            "check mqtt.broker_host and mqtt.broker_port, the network, and that the broker runs",
        ),
    }
}
