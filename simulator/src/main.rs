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
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the gateway config blocks ([[beds]], [[devices]]) for N simulated beds.
    Config {
        #[arg(long, default_value_t = 3)]
        beds: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Config { beds } => {
            print!("{}", icu_sim::gateway_config_blocks(&icu_sim::beds(beds)));
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
                ..Default::default()
            };
            let rt = tokio::runtime::Runtime::new()?;
            let report = rt.block_on(icu_sim::run::run(opts, None));
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
