//! A whole simulated ICU over the real transports.
//!
//! Every bed has a patient monitor (PCD-01 over MLLP). Some beds also have a Masimo oximeter
//! (ASCII 1 on a pty), a Dräger ventilator (MEDIBUS on a pty, answering the gateway's polls) or
//! an infusion pump (MQTT, JSON at QoS 1). An ADT feed admits one patient per bed at the start.
//! Which bed gets what is fixed by the bed number, so the printed gateway config and the run
//! always agree. Everything the simulator counts is what the gateway acknowledged (AA, PUBACK)
//! or what went whole down a serial line, per device, so a test compares it with Kafka exactly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::serial::{run_masimo, run_medibus, SerialControl};
use crate::{beds, SimBed};

/// Observations per Masimo line (SpO2, pulse rate, PI) and per MEDIBUS measured-data answer.
pub const MASIMO_OBS_PER_LINE: u64 = 3;
pub const MEDIBUS_OBS_PER_ANSWER: u64 = 8;

/// What a bed has besides its monitor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BedDevices {
    pub bed: SimBed,
    pub oximeter: Option<String>,
    pub ventilator: Option<String>,
    pub pump: Option<String>,
}

/// The device plan of an ICU of `n` beds.
pub fn plan(n: usize) -> Vec<BedDevices> {
    beds(n)
        .into_iter()
        .map(|bed| {
            let i = bed.index;
            BedDevices {
                oximeter: (i % 5 == 1).then(|| format!("spo2-{i:02}")),
                ventilator: (i % 10 == 2).then(|| format!("vent-{i:02}")),
                pump: (i % 3 == 0).then(|| format!("pump-{i:02}")),
                bed,
            }
        })
        .collect()
}

/// ADT location of a simulated bed (PV1-3).
pub fn adt_location(bed: &SimBed) -> String {
    format!("ICU^{:03}^A", bed.index)
}

/// The gateway config blocks (`[[beds]]`, `[[devices]]`) for this ICU; serial ports live in
/// `serial_dir`. The ADT feed admits a patient to every bed at the start, discharges bed 1's
/// patient a third into the run and transfers bed 2's patient into bed 1 at two thirds.
pub fn config_blocks(plan: &[BedDevices], serial_dir: &std::path::Path) -> String {
    let mut s = String::new();
    for b in plan {
        s.push_str(&format!(
            "[[beds]]\nid = \"{}\"\nlabel = \"Bed {}\"\nadt_location = \"{}\"\n\n",
            b.bed.bed_id,
            b.bed.index,
            adt_location(&b.bed)
        ));
    }
    for b in plan {
        s.push_str(&format!(
            "[[devices]]\nid = \"{}\"\nbed = \"{}\"\nprotocol = \"pcd01\"\nmatch = \"{}\"\n\n",
            b.bed.device_id, b.bed.bed_id, b.bed.monitor_eui64
        ));
        if let Some(d) = &b.oximeter {
            s.push_str(&format!(
                "[[devices]]\nid = \"{d}\"\nbed = \"{}\"\nprotocol = \"masimo\"\n[devices.serial]\nport = \"{}\"\n\n",
                b.bed.bed_id,
                serial_dir.join(d).display()
            ));
        }
        if let Some(d) = &b.ventilator {
            s.push_str(&format!(
                "[[devices]]\nid = \"{d}\"\nbed = \"{}\"\nprotocol = \"medibus\"\n[devices.serial]\nport = \"{}\"\n\n",
                b.bed.bed_id,
                serial_dir.join(d).display()
            ));
        }
        if let Some(d) = &b.pump {
            s.push_str(&format!(
                "[[devices]]\nid = \"{d}\"\nbed = \"{}\"\nprotocol = \"mqtt\"\n\n",
                b.bed.bed_id
            ));
        }
    }
    s
}

/// How a simulated pump reaches the broker: address, TLS and credentials. In `username`,
/// `password_file`, `client_cert` and `client_key`, `{device}` stands for the pump's device id,
/// so each pump can log in as itself (as a broker ACL per pump needs).
#[derive(Debug, Clone, Default)]
pub struct MqttClientOptions {
    pub host: String,
    pub port: u16,
    /// PEM CA bundle trusting the broker: connect over TLS (rustls) when set.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS; with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert` (mode 600).
    pub client_key: Option<PathBuf>,
    pub username: Option<String>,
    /// File whose first line is the password (mode 600).
    pub password_file: Option<PathBuf>,
}

impl MqttClientOptions {
    /// Plain TCP, no credentials.
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            ..Default::default()
        }
    }

    /// The rumqttc options of `device` (client id `sim-<device>`): TLS and credentials read
    /// now, with `{device}` replaced.
    pub fn for_device(
        &self,
        device: &str,
    ) -> anyhow::Result<icu_drivers::mqtt::rumqttc::MqttOptions> {
        use icu_drivers::mqtt::rumqttc::{MqttOptions, TlsConfiguration, Transport};
        use icu_drivers::mqtt::tls;
        let sub = |p: &PathBuf| PathBuf::from(p.to_string_lossy().replace("{device}", device));
        let mut mo = MqttOptions::new(format!("sim-{device}"), self.host.clone(), self.port);
        mo.set_keep_alive(Duration::from_secs(10));
        if let Some(ca) = &self.tls_ca {
            let client = match (&self.client_cert, &self.client_key) {
                (Some(c), Some(k)) => Some((sub(c), sub(k))),
                (None, None) => None,
                _ => anyhow::bail!("--mqtt-client-cert and --mqtt-client-key go together"),
            };
            let config =
                tls::client_config(ca, client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))?;
            mo.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        if let Some(user) = &self.username {
            let password = match &self.password_file {
                Some(f) => tls::read_password_file("password_file", &sub(f))?,
                None => String::new(),
            };
            mo.set_credentials(user.replace("{device}", device), password);
        }
        Ok(mo)
    }
}

#[derive(Debug, Clone)]
pub struct IcuOptions {
    pub beds: usize,
    pub mllp: String,
    pub mqtt: MqttClientOptions,
    pub gateway_id: String,
    pub serial_dir: PathBuf,
    pub duration: Duration,
    pub seed: u64,
    /// Monitor messages per second per bed.
    pub rate_hz: f64,
    /// A scripted scenario for one bed's monitor.
    pub scenario: Option<crate::run::Scenario>,
    /// MLLP over TLS for the monitors (their own certificates) and the ADT feed (the
    /// `adt-engine` client certificate beside the devices' folder: `../clients/`).
    pub tls: Option<crate::run::SimTls>,
    /// The monitors also send their curves.
    pub waveforms: Option<crate::run::WaveOptions>,
}

/// Per device: what the gateway acknowledged (or received whole over a serial line).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IcuReport {
    pub observations: BTreeMap<String, u64>,
    pub adt_messages_acked: u64,
    pub monitor_messages: u64,
    pub monitor_rejected: u64,
}

fn adt_admit(bed: &SimBed, now: chrono::DateTime<chrono::Utc>) -> String {
    let ts = now.format("%Y%m%d%H%M%S+0000");
    [
        format!(
            "MSH|^~\\&|ADT_SIM|HOSP|ICU_GW|ICU|{ts}||ADT^A01^ADT_A01|ADT-{:04}|P|2.5",
            bed.index
        ),
        format!("EVN||{ts}"),
        format!(
            "PID|1||P{:06}^^^HOSP^MR||PATIENT^BED{}^^^^^L||19600101|F",
            bed.index, bed.index
        ),
        format!(
            "PV1|1|I|{}||||||||||||||||V{:06}^^^HOSP^VN",
            adt_location(bed),
            bed.index
        ),
    ]
    .join("\r")
}

fn adt_move(
    kind: &str,
    patient_bed: &SimBed,
    to: Option<&SimBed>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let ts = now.format("%Y%m%d%H%M%S+0000");
    let structure = match kind {
        "A02" => "ADT_A02",
        "A03" => "ADT_A03",
        _ => "ADT_A01",
    };
    let (loc, prior) = match to {
        Some(b) => (adt_location(b), adt_location(patient_bed)),
        None => (adt_location(patient_bed), String::new()),
    };
    let discharge = if kind == "A03" {
        ts.to_string()
    } else {
        String::new()
    };
    [
        format!(
            "MSH|^~\\&|ADT_SIM|HOSP|ICU_GW|ICU|{ts}||ADT^{kind}^{structure}|ADT-{kind}-{:04}|P|2.5",
            patient_bed.index
        ),
        format!("EVN||{ts}"),
        format!(
            "PID|1||P{:06}^^^HOSP^MR||PATIENT^BED{}^^^^^L||19600101|F",
            patient_bed.index, patient_bed.index
        ),
        format!(
            "PV1|1|I|{loc}|||{prior}|||||||||||||V{:06}^^^HOSP^VN||||||||||||||||||||||||||{discharge}",
            patient_bed.index
        ),
    ]
    .join("\r")
}

/// Mid-run ADT traffic: the patient of bed 1 is discharged at a third of the run, and the
/// patient of bed 2 is transferred into bed 1 at two thirds. Returns the messages acknowledged.
async fn adt_course(opts: IcuOptions, plan: Vec<BedDevices>) -> u64 {
    if plan.len() < 2 {
        return 0;
    }
    let third = opts.duration / 3;
    let mut acked = 0;
    tokio::time::sleep(third).await;
    let msg = adt_move("A03", &plan[0].bed, None, chrono::Utc::now());
    acked += send_adt(&opts.mllp, opts.tls.as_ref(), vec![msg])
        .await
        .unwrap_or(0);
    tokio::time::sleep(third).await;
    let msg = adt_move("A02", &plan[1].bed, Some(&plan[0].bed), chrono::Utc::now());
    acked += send_adt(&opts.mllp, opts.tls.as_ref(), vec![msg])
        .await
        .unwrap_or(0);
    acked
}

async fn send_adt(
    mllp: &str,
    tls: Option<&crate::run::SimTls>,
    messages: Vec<String>,
) -> anyhow::Result<u64> {
    use futures::{SinkExt, StreamExt};
    use icu_drivers::mllp::{MllpCodec, MllpEvent};
    let stream = tokio::net::TcpStream::connect(mllp)
        .await
        .with_context(|| format!("connecting to {mllp}"))?;
    let io: Box<dyn crate::run::Io> = match tls {
        None => Box::new(stream),
        Some(t) => {
            // The ADT engine's certificate: `clients/adt-engine` beside the devices' folder.
            let adt = crate::run::SimTls {
                cert_dir: t
                    .cert_dir
                    .as_ref()
                    .and_then(|d| d.parent())
                    .map(|p| p.join("clients")),
                cert_as: Some("adt-engine".into()),
                ..t.clone()
            };
            let host = mllp.rsplit_once(':').map_or(mllp, |(h, _)| h).to_owned();
            let connector = crate::run::tls_connector(&adt, "adt-engine")?;
            let name = rustls::pki_types::ServerName::try_from(host)?;
            Box::new(
                connector
                    .connect(name, stream)
                    .await
                    .context("ADT TLS handshake")?,
            )
        }
    };
    let mut framed = tokio_util::codec::Framed::new(io, MllpCodec::new(1 << 20));
    let mut acked = 0;
    for m in messages {
        framed.send(m.as_bytes()).await?;
        match framed.next().await {
            Some(Ok(MllpEvent::Frame { payload, .. })) => {
                if crate::run::ack_code(&payload).as_deref() == Some("AA") {
                    acked += 1;
                } else {
                    tracing::warn!(ack = %String::from_utf8_lossy(&payload), "adt message not accepted");
                }
            }
            other => anyhow::bail!("no ACK for an ADT message: {other:?}"),
        }
    }
    Ok(acked)
}

/// Runs `pumps` pumps (`pump-NN` at `bed-NN`, NN from 01) publishing one reading every
/// `interval` for `duration`; returns the observations the broker acknowledged per pump.
pub async fn run_pumps(
    mqtt: MqttClientOptions,
    gateway_id: String,
    pumps: usize,
    interval: Duration,
    duration: Duration,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for bed in beds(pumps) {
        let device = format!("pump-{:02}", bed.index);
        let options = mqtt.for_device(&device)?;
        tasks.push(tokio::spawn(run_pump(
            options,
            gateway_id.clone(),
            bed.bed_id.clone(),
            device,
            interval,
            stop_rx.clone(),
        )));
    }
    tokio::time::sleep(duration).await;
    let _ = stop_tx.send(true);
    let mut report = BTreeMap::new();
    for t in tasks {
        let (device, n) = t.await?;
        report.insert(device, n);
    }
    Ok(report)
}

/// One pump: publishes a batch every `interval` and waits for each PUBACK before the next.
async fn run_pump(
    mo: icu_drivers::mqtt::rumqttc::MqttOptions,
    gateway_id: String,
    bed: String,
    device: String,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (String, u64) {
    use icu_drivers::mqtt::rumqttc::{AsyncClient, Event, Packet, QoS};
    use icu_drivers::mqtt::{encode_payload, MqttBatch, ObsTopic, PayloadFormat};
    let (client, mut eventloop) = AsyncClient::new(mo, 16);
    let Ok(topic) = ObsTopic::new(&gateway_id, &bed, &device, PayloadFormat::Json) else {
        return (device, 0);
    };
    let mut acked_obs = 0u64;
    let mut counter = 0u64;
    loop {
        if *stop.borrow() {
            break;
        }
        counter += 1;
        let rate = 5.0 + (counter % 10) as f64 * 0.5;
        let batch = MqttBatch {
            waveforms: Vec::new(),
            msg_id: format!("{device}-{counter}"),
            observations: vec![icu_protos::v1::Observation {
                mdc_code: 157784,
                value: Some(rate),
                unit_ucum: "mL/h".into(),
                ..Default::default()
            }],
        };
        let payload = encode_payload(PayloadFormat::Json, &batch);
        if client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload)
            .await
            .is_err()
        {
            break;
        }
        // Drive the event loop until this publish is acknowledged.
        let acked = loop {
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::PubAck(_))) => break true,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(%device, error = %e, "pump connection failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tokio::time::sleep(Duration::from_secs(15)) => break false,
            }
        };
        if acked {
            acked_obs += 1;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    (device, acked_obs)
}

/// Runs the whole ICU for `opts.duration`, then stops every device and returns the counts.
pub async fn run(opts: IcuOptions) -> anyhow::Result<IcuReport> {
    let plan = plan(opts.beds);
    std::fs::create_dir_all(&opts.serial_dir)?;
    let mut report = IcuReport::default();

    // ADT first: a patient in every bed.
    let now = chrono::Utc::now();
    report.adt_messages_acked = send_adt(
        &opts.mllp,
        opts.tls.as_ref(),
        plan.iter().map(|b| adt_admit(&b.bed, now)).collect(),
    )
    .await?;

    // Serial devices.
    let mut serial = Vec::new();
    for b in &plan {
        if let Some(d) = &b.oximeter {
            let control = Arc::new(SerialControl::default());
            let h = run_masimo(
                opts.serial_dir.join(d),
                format!("{:010}", b.bed.index),
                opts.seed + b.bed.index as u64,
                Duration::from_secs(1),
                control.clone(),
            )?;
            serial.push((d.clone(), control, h, MASIMO_OBS_PER_LINE));
        }
        if let Some(d) = &b.ventilator {
            let control = Arc::new(SerialControl::default());
            let h = run_medibus(
                opts.serial_dir.join(d),
                opts.seed + b.bed.index as u64,
                Duration::from_secs(1),
                control.clone(),
            )?;
            serial.push((d.clone(), control, h, MEDIBUS_OBS_PER_ANSWER));
        }
    }

    let adt = tokio::spawn(adt_course(opts.clone(), plan.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut pumps = Vec::new();
    for b in &plan {
        if let Some(d) = &b.pump {
            pumps.push(tokio::spawn(run_pump(
                opts.mqtt.for_device(d)?,
                opts.gateway_id.clone(),
                b.bed.bed_id.clone(),
                d.clone(),
                Duration::from_secs(1),
                stop_rx.clone(),
            )));
        }
    }
    let monitors = crate::run::run(
        crate::run::RunOptions {
            target: opts.mllp.clone(),
            beds: plan.iter().map(|b| b.bed.clone()).collect(),
            rate_hz: opts.rate_hz,
            messages_per_bed: None,
            duration: Some(opts.duration),
            seed: opts.seed,
            ack_timeout: Duration::from_secs(10),
            max_attempts: 5,
            scenario: opts.scenario,
            tls: opts.tls.clone(),
            waveforms: opts.waveforms,
        },
        None,
    )
    .await;
    let _ = stop_tx.send(true);
    report.adt_messages_acked += adt.await.unwrap_or(0);
    for (device, control, handle, per) in serial {
        control.stop.store(true, Ordering::Relaxed);
        let _ = handle.join();
        report
            .observations
            .insert(device, control.records.load(Ordering::Relaxed) * per);
    }
    for p in pumps {
        if let Ok((device, n)) = p.await {
            report.observations.insert(device, n);
        }
    }
    for (device, r) in &monitors.devices {
        report
            .observations
            .insert(device.clone(), r.observations_accepted);
        report.monitor_messages += r.messages;
        report.monitor_rejected += r.ae + r.ar + r.unanswered;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adt_feed_messages_decode_as_the_census_needs_them() {
        let plan = plan(3);
        let now = chrono::Utc::now();
        let admit = icu_drivers::hl7::decode_adt(adt_admit(&plan[0].bed, now).as_bytes()).unwrap();
        assert_eq!(admit.patient.id, "P000001");
        assert_eq!(admit.location.unwrap().key(), "ICU^001^A");
        let discharge =
            icu_drivers::hl7::decode_adt(adt_move("A03", &plan[0].bed, None, now).as_bytes())
                .unwrap();
        assert!(discharge.discharge_time_us.is_some());
        let transfer = icu_drivers::hl7::decode_adt(
            adt_move("A02", &plan[1].bed, Some(&plan[0].bed), now).as_bytes(),
        )
        .unwrap();
        assert_eq!(transfer.location.unwrap().key(), "ICU^001^A");
        assert_eq!(transfer.prior_location.unwrap().key(), "ICU^002^A");
        assert_eq!(plan.iter().filter(|b| b.oximeter.is_some()).count(), 1);
    }
}
