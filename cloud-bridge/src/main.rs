//! `icu-bridge`: the command central teams run to read and verify the gateway's Kafka topics.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use icu_cloud_bridge::bridge::{KafkaSecurity, SecurityProtocol};
use icu_cloud_bridge::consume::{self, ConsumeOptions, ConsumeSecurity};
use icu_cloud_bridge::signing::{load_public_key, KeyRing};

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
        #[arg(long, required_unless_present = "key_dir", conflicts_with = "key_dir")]
        public_key: Option<PathBuf>,
        /// A directory of public keys (`*.pub`, as kept by `icu-gateway keygen --rotate`): each
        /// record is verified with the key its `icu-key-id` header names; records naming a key
        /// not in the directory are reported (count and first offsets). One directory can hold
        /// the keys of many gateways and their rotations (`--keys` is the same option).
        #[arg(long, alias = "keys")]
        key_dir: Option<PathBuf>,
        #[command(flatten)]
        security: SecurityArgs,
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

/// How to reach a secured cluster: the same settings as the gateway's `[kafka.security]`.
#[derive(Debug, clap::Args)]
struct SecurityArgs {
    /// plaintext (default), ssl, sasl_ssl or sasl_plaintext.
    #[arg(long, default_value = "plaintext", value_parser = parse_protocol)]
    security_protocol: SecurityProtocol,
    /// CA bundle (PEM) that signed the brokers' certificates (with ssl / sasl_ssl).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, requires = "client_key_file")]
    client_cert_file: Option<PathBuf>,
    /// Its private key (PEM, mode 600).
    #[arg(long, requires = "client_cert_file")]
    client_key_file: Option<PathBuf>,
    /// Do not check that the broker's certificate names the host connected to.
    #[arg(long)]
    no_verify_hostname: bool,
    /// SCRAM-SHA-512 (default), SCRAM-SHA-256 or PLAIN (sasl_ssl only).
    #[arg(long)]
    sasl_mechanism: Option<String>,
    /// SASL user name.
    #[arg(long)]
    sasl_username: Option<String>,
    /// File holding the SASL password (mode 600).
    #[arg(long, conflicts_with = "sasl_password_env")]
    sasl_password_file: Option<PathBuf>,
    /// Environment variable holding the SASL password.
    #[arg(long)]
    sasl_password_env: Option<String>,
}

fn parse_protocol(text: &str) -> Result<SecurityProtocol, String> {
    SecurityProtocol::parse(text)
        .ok_or_else(|| format!("{text:?}: use plaintext, ssl, sasl_ssl or sasl_plaintext"))
}

impl SecurityArgs {
    fn settings(self) -> KafkaSecurity {
        KafkaSecurity {
            protocol: self.security_protocol,
            ca_file: self.ca_file,
            client_cert_file: self.client_cert_file,
            client_key_file: self.client_key_file,
            verify_hostname: !self.no_verify_hostname,
            sasl_mechanism: self.sasl_mechanism,
            username: self.sasl_username,
            password_file: self.sasl_password_file,
            password_env: self.sasl_password_env,
        }
    }
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
            key_dir,
            security,
            idle_timeout_secs,
            max_wait_secs,
            json,
            out,
            report: report_path,
        } => {
            let keys = match (&public_key, &key_dir) {
                (_, Some(dir)) => KeyRing::load_dir(dir)?,
                (Some(file), None) => KeyRing::single(load_public_key(file)?),
                (None, None) => anyhow::bail!("give --public-key or --key-dir"),
            };
            let opts = ConsumeOptions {
                brokers,
                topic: topic.clone(),
                public_key: None,
                idle_timeout: Duration::from_secs(idle_timeout_secs),
                max_wait: Duration::from_secs(max_wait_secs),
            };
            let extra = ConsumeSecurity {
                security: security.settings(),
                properties: Default::default(),
                keys: Some(keys),
            };
            let (report, records) = consume::consume_with(&opts, &extra)?;
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
