//! `icu-sim`: simulated ICU beds over real transports.
use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "icu-sim",
    about = "Simulated ICU beds and devices speaking real protocols"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send IHE PCD-01 (ORU^R01) from one simulated monitor per bed over MLLP and check every ACK.
    Pcd01 {
        /// The gateway's MLLP address.
        #[arg(long, default_value = "127.0.0.1:2575")]
        target: String,
        /// Number of beds (one monitor each).
        #[arg(long, default_value_t = 3)]
        beds: usize,
        /// Messages per second per bed.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Messages per bed, then stop.
        #[arg(long)]
        messages: Option<u64>,
        /// Seconds to run, then stop.
        #[arg(long)]
        duration_secs: Option<u64>,
        /// Seed of the simulated physiology.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write every accepted observation as JSON lines to this file.
        #[arg(long)]
        manifest: Option<std::path::PathBuf>,
        /// A scripted scenario for one bed: NAME[:BED[:AFTER_MESSAGES]] with NAME one of
        /// deterioration, desaturation, apnea, clock-skew=SECONDS, out-of-order, duplicates,
        /// garbage. E.g. `desaturation:2:10`; bed 0 is every bed (`deterioration:0`).
        #[arg(long, value_parser = icu_sim::run::Scenario::parse)]
        scenario: Option<icu_sim::run::Scenario>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// How often one message is sent before it counts as unanswered (a message whose ACK
        /// did not come is sent again, unchanged, on a new connection; pauses grow by 200 ms up
        /// to 1 s). A large value keeps a message knocking while the gateway restarts.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
        /// Speak MLLP over TLS, trusting this CA bundle (PEM).
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// With --tls-ca: each monitor presents `<DIR>/<device id>.crt` and `.key` (as
        /// `icu-gateway cert` makes them in `devices/`).
        #[arg(long)]
        tls_cert_dir: Option<std::path::PathBuf>,
        /// Every monitor presents this device's certificate instead of its own (a test of the
        /// gateway's refusal).
        #[arg(long)]
        tls_cert_as: Option<String>,
        /// Also send the curves: three ECG leads at 500 Hz, pleth and arterial pressure at
        /// 125 Hz, as PCD-01 waveform (WCM) messages, one per channel group every 800 ms.
        #[arg(long)]
        waveforms: bool,
        /// With --waveforms: leave out N consecutive samples of every M (`M:N`, sent as empty
        /// values: the gateway must keep them as gaps).
        #[arg(long, value_parser = parse_gaps)]
        wave_gaps: Option<icu_sim::waveform::GapPlan>,
    },
    /// Print the gateway config blocks ([[beds]], [[devices]]) for N simulated beds.
    Config {
        #[arg(long, default_value_t = 3)]
        beds: usize,
        /// Print the blocks for the whole ICU of `icu-sim icu` (oximeters, ventilators, pumps).
        #[arg(long)]
        icu: bool,
        /// Folder of the simulated serial ports (with --icu).
        #[arg(long, default_value = "/tmp/icu-sim-serial")]
        serial_dir: std::path::PathBuf,
    },
    /// A whole ICU: a PCD-01 monitor per bed, Masimo oximeters and Dräger ventilators on ptys,
    /// MQTT infusion pumps, and an ADT feed that admits a patient to every bed.
    Icu {
        #[arg(long, default_value_t = 30)]
        beds: usize,
        /// The gateway's MLLP address (monitors and ADT).
        #[arg(long, default_value = "127.0.0.1:2575")]
        mllp: String,
        #[command(flatten)]
        mqtt: MqttArgs,
        /// The gateway's id (part of the MQTT topics).
        #[arg(long)]
        gateway_id: String,
        /// Folder where the simulated serial ports appear (the gateway config names them).
        #[arg(long, default_value = "/tmp/icu-sim-serial")]
        serial_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 60)]
        duration_secs: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Monitor messages per second per bed.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Write the per-device counts as JSON to this file.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
        /// The monitors also send their curves (see `icu-sim pcd01 --help`).
        #[arg(long)]
        waveforms: bool,
        /// A scripted scenario for one bed's monitor (see `icu-sim pcd01 --help`).
        #[arg(long, value_parser = icu_sim::run::Scenario::parse)]
        scenario: Option<icu_sim::run::Scenario>,
        /// MLLP over TLS (monitors and ADT feed), trusting this CA bundle.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// The `devices/` folder of `icu-gateway cert`: each monitor presents its own
        /// certificate; the ADT feed presents `../clients/adt-engine.crt`.
        #[arg(long)]
        tls_cert_dir: Option<std::path::PathBuf>,
    },
    /// Infusion pumps only: `pump-NN` at `bed-NN` (NN from 01) publishing JSON readings at QoS 1,
    /// each waiting for its PUBACK; prints (and writes) the acknowledged observations per pump.
    Pumps {
        /// Number of pumps.
        #[arg(long, default_value_t = 3)]
        pumps: usize,
        #[command(flatten)]
        mqtt: MqttArgs,
        /// The gateway's id (part of the MQTT topics).
        #[arg(long)]
        gateway_id: String,
        /// Milliseconds between two readings of one pump.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Write the per-pump counts as JSON to this file.
        #[arg(long)]
        report: Option<std::path::PathBuf>,
    },
}

/// How the simulated pumps reach the MQTT broker. `{device}` in --mqtt-username,
/// --mqtt-password-file, --mqtt-client-cert and --mqtt-client-key stands for the pump's id.
#[derive(clap::Args)]
struct MqttArgs {
    #[arg(long, default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// Connect over TLS, trusting the CA certificates of this PEM file.
    #[arg(long)]
    mqtt_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate (mutual TLS; with --mqtt-client-key).
    #[arg(long, requires = "mqtt_tls_ca")]
    mqtt_client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --mqtt-client-cert (mode 600).
    #[arg(long, requires = "mqtt_client_cert")]
    mqtt_client_key: Option<std::path::PathBuf>,
    /// Username for the broker (e.g. `{device}`).
    #[arg(long)]
    mqtt_username: Option<String>,
    /// File whose first line is the password (mode 600).
    #[arg(long, requires = "mqtt_username")]
    mqtt_password_file: Option<std::path::PathBuf>,
}

impl MqttArgs {
    fn options(self) -> icu_sim::icu::MqttClientOptions {
        icu_sim::icu::MqttClientOptions {
            host: self.mqtt_host,
            port: self.mqtt_port,
            tls_ca: self.mqtt_tls_ca,
            client_cert: self.mqtt_client_cert,
            client_key: self.mqtt_client_key,
            username: self.mqtt_username,
            password_file: self.mqtt_password_file,
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Config {
            beds,
            icu,
            serial_dir,
        } => {
            if icu {
                print!(
                    "{}",
                    icu_sim::icu::config_blocks(&icu_sim::icu::plan(beds), &serial_dir)
                );
            } else {
                print!("{}", icu_sim::gateway_config_blocks(&icu_sim::beds(beds)));
            }
            Ok(())
        }
        Command::Icu {
            beds,
            mllp,
            mqtt,
            gateway_id,
            serial_dir,
            duration_secs,
            seed,
            rate,
            report,
            scenario,
            tls_ca,
            tls_cert_dir,
            waveforms,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(icu_sim::icu::run(icu_sim::icu::IcuOptions {
                waveforms: waveforms.then(icu_sim::run::WaveOptions::default),
                beds,
                mllp,
                mqtt: mqtt.options(),
                gateway_id,
                serial_dir,
                duration: Duration::from_secs(duration_secs),
                seed,
                rate_hz: rate,
                scenario,
                tls: tls_ca.map(|ca| icu_sim::run::SimTls {
                    ca,
                    cert_dir: tls_cert_dir,
                    cert_as: None,
                    server_name: None,
                }),
            }))?;
            let text = serde_json::to_string_pretty(&r)?;
            if let Some(path) = report {
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let total: u64 = r.observations.values().sum();
            println!("{} devices, {} observations acknowledged, {} monitor messages ({} not accepted), {} ADT messages accepted",
                r.observations.len(), total, r.monitor_messages, r.monitor_rejected, r.adt_messages_acked);
            Ok(())
        }
        Command::Pumps {
            pumps,
            mqtt,
            gateway_id,
            interval_ms,
            duration_secs,
            report,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(icu_sim::icu::run_pumps(
                mqtt.options(),
                gateway_id,
                pumps,
                Duration::from_millis(interval_ms),
                Duration::from_secs(duration_secs),
            ))?;
            let text = serde_json::to_string_pretty(&r)?;
            if let Some(path) = report {
                std::fs::write(&path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let total: u64 = r.values().sum();
            println!("{} pumps, {total} observations acknowledged", r.len());
            Ok(())
        }
        Command::Pcd01 {
            target,
            beds,
            rate,
            messages,
            duration_secs,
            seed,
            manifest,
            json,
            scenario,
            max_attempts,
            tls_ca,
            tls_cert_dir,
            tls_cert_as,
            waveforms,
            wave_gaps,
        } => {
            let messages = if messages.is_none() && duration_secs.is_none() {
                Some(10)
            } else {
                messages
            };
            let opts = icu_sim::run::RunOptions {
                target,
                beds: icu_sim::beds(beds),
                rate_hz: rate,
                messages_per_bed: messages,
                duration: duration_secs.map(Duration::from_secs),
                seed,
                scenario,
                max_attempts,
                tls: tls_ca.map(|ca| icu_sim::run::SimTls {
                    ca,
                    cert_dir: tls_cert_dir,
                    cert_as: tls_cert_as,
                    server_name: None,
                }),
                waveforms: waveforms.then(|| icu_sim::run::WaveOptions {
                    segment_ms: 0,
                    gaps: wave_gaps.unwrap_or_default(),
                }),
                ..Default::default()
            };
            let rt = tokio::runtime::Runtime::new()?;
            // SIGINT or SIGTERM ends the run early; the report and manifest are still written,
            // so a test can run the sender open-ended and stop it when it has seen enough.
            let report = rt.block_on(async {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    stop_signal().await;
                    let _ = stop_tx.send(true);
                });
                icu_sim::run::run(opts, Some(stop_rx)).await
            });
            if let Some(path) = manifest {
                let mut f = std::io::BufWriter::new(
                    std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?,
                );
                for o in &report.accepted {
                    serde_json::to_writer(&mut f, o)?;
                    f.write_all(b"\n")?;
                }
                f.flush()?;
            }
            let total = report.total();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for (d, r) in &report.devices {
                    println!(
                        "{d}: {} messages, {} AA, {} AE, {} AR, {} unanswered, {} resent, {} observations accepted",
                        r.messages, r.aa, r.ae, r.ar, r.unanswered, r.resends, r.observations_accepted
                    );
                }
                for r in &report.rejections {
                    println!("rejected:\n{r}");
                }
                println!(
                    "total: {} messages, {} AA, {} AE, {} AR, {} unanswered, {} observations accepted",
                    total.messages, total.aa, total.ae, total.ar, total.unanswered, total.observations_accepted
                );
            }
            if total.aa == total.messages {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM (never, if neither handler can be installed).
/// `M:N`: N consecutive samples of every M left out.
fn parse_gaps(s: &str) -> Result<icu_sim::waveform::GapPlan, String> {
    let (every, length) = s.split_once(':').ok_or("expected M:N, e.g. 1000:5")?;
    let every: u64 = every.parse().map_err(|e| format!("M: {e}"))?;
    let length: u64 = length.parse().map_err(|e| format!("N: {e}"))?;
    if length >= every {
        return Err("N must be less than M".into());
    }
    Ok(icu_sim::waveform::GapPlan { every, length })
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
