//! `icu-bridge`: the command central teams run to read and verify the gateway's Kafka topics.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use icu_cloud_bridge::consume::{self, ConsumeOptions};
use icu_cloud_bridge::signing::load_public_key;

#[derive(Debug, Parser)]
#[command(
    name = "icu-bridge",
    version,
    about = "Read and verify ICU gateway Kafka topics"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a topic from the beginning, verify every signature and account seqs per
    /// (gateway, device) stream: gaps, duplicates, and duplicates whose content differs from the
    /// first sighting (conflicts).
    ///
    /// Exits 0 when every record is signed and verifies, no stream has a seq gap and no
    /// re-delivery conflicts with its first sighting, 1 otherwise.
    Consume {
        /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT].
        #[arg(long)]
        brokers: String,
        /// Topic to read.
        #[arg(long, default_value = "icu.observations")]
        topic: String,
        /// The gateway's public key (SPKI PEM, as written by `icu-gateway keygen`).
        #[arg(long)]
        public_key: PathBuf,
        /// After reaching the end of every partition, stop when no record came for this long.
        #[arg(long, default_value_t = 5)]
        idle_timeout_secs: u64,
        /// Stop after this long in any case.
        #[arg(long, default_value_t = 300)]
        max_wait_secs: u64,
        /// Print the report as JSON instead of the human summary.
        #[arg(long)]
        json: bool,
        /// Write the verified records deduplicated on (gateway, device, seq) as JSON lines: the
        /// first record bringing each seq; a partly overlapping one whole, with the seq ranges
        /// written before in `already_written`; the exact signed bytes in `value_base64`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write the report (the `--json` document: per-stream records, observations, first and
        /// last seq, gaps, duplicates, conflicts, bad signatures; every duplicate sighting) to
        /// this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Consume {
            brokers,
            topic,
            public_key,
            idle_timeout_secs,
            max_wait_secs,
            json,
            out,
            report: report_path,
        } => {
            let key = load_public_key(&public_key)?;
            let opts = ConsumeOptions {
                brokers,
                topic: topic.clone(),
                public_key: Some(key),
                idle_timeout: Duration::from_secs(idle_timeout_secs),
                max_wait: Duration::from_secs(max_wait_secs),
            };
            let (report, records) = consume::consume(&opts)?;
            if let Some(path) = out {
                let w = consume::write_deduplicated_json_lines(&path, &records)?;
                eprintln!(
                    "wrote {} verified records to {} ({} partly overlapping written whole, {} \
                     re-deliveries and {} unverified records left out)",
                    w.written,
                    path.display(),
                    w.partial_overlaps,
                    w.skipped_duplicates,
                    w.skipped_unverified
                );
            }
            if let Some(path) = report_path {
                consume::write_report_json(&path, &report)?;
                eprintln!("wrote the report to {}", path.display());
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serialize report")?
                );
                // Conflicts are also in the JSON; say them where a person looks too.
                eprint!("{}", consume::render_conflicts(&report));
            } else {
                print!("{}", consume::render_summary(&topic, &report));
            }
            Ok(report.is_clean())
        }
    }
}
