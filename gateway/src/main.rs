//! `icu-gateway`: thin command-line front of the `icu_gateway` library.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: the ingest path allocates and frees many small
/// strings per message (decoding, protobuf records, actor messages), and glibc malloc/free was
/// about a fifth of the gateway's CPU in the ingest benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "icu-gateway",
    version,
    about = "ICU edge gateway: bedside devices to a durable store, local page and signed FHIR on Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log line format: `text`, `json` (one object per line) or `journald` (priority prefix, no
    /// timestamp). Default: `ICU_LOG_FORMAT`, else the config's `[tracing] log_format`, else
    /// journald when stderr is the journal, else text.
    #[arg(long, global = true, value_parser = parse_log_format)]
    log_format: Option<icu_gateway::telemetry::LogFormat>,
}

fn parse_log_format(s: &str) -> Result<icu_gateway::telemetry::LogFormat, String> {
    icu_gateway::telemetry::LogFormat::parse(s)
        .ok_or_else(|| format!("'{s}' is not text, json or journald"))
}

/// Sets up logging (and, for `run`, tracing when the config or environment asks for it).
fn telemetry(
    flag: Option<icu_gateway::telemetry::LogFormat>,
    config: Option<&icu_gateway::config::Config>,
) -> anyhow::Result<icu_gateway::telemetry::Telemetry> {
    use icu_gateway::telemetry::{init, traces_url, LogFormat, OtlpSetup};
    let settings = config.map(|c| &c.tracing);
    let format = LogFormat::choose(
        flag,
        std::env::var("ICU_LOG_FORMAT").ok().as_deref(),
        settings.and_then(|s| s.log_format),
        std::env::var_os("JOURNAL_STREAM").is_some(),
    );
    let otlp = config.and_then(|c| {
        let endpoint = c
            .tracing
            .endpoint(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().as_deref())?;
        Some(OtlpSetup {
            url: traces_url(&endpoint),
            service_name: c.tracing.service_name.clone(),
            instance_id: c.gateway_id.clone(),
            sample_ratio: c.tracing.sample_ratio,
        })
    });
    Ok(init(format, otlp.as_ref())?)
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the embedded demo: simulated monitors over loopback MLLP, a local store and page
    /// (only in a build with the `demo` feature, the default).
    Demo {
        /// Number of simulated beds.
        #[arg(long, default_value_t = 4)]
        beds: usize,
        /// Address of the local page.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: String,
        /// Folder for the demo's store and key.
        #[arg(long, default_value = "icu-demo-data")]
        data_dir: PathBuf,
        /// Kafka bootstrap address; without it readings are buffered in the store.
        #[arg(long)]
        kafka: Option<String>,
        /// Messages per second per simulated monitor.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// A scripted scenario (`icu-sim pcd01 --help`: NAME[:BED[:AFTER_MESSAGES]]), by default
        /// a desaturation on bed 2 after 20 messages, so an alarm shows within a minute; `none`
        /// for none.
        #[arg(long, default_value = "desaturation:2:20")]
        scenario: String,
        /// Print the demo's config file and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Create the gateway's ed25519 signing key (PKCS#8 PEM) and its public key (.pub, SPKI PEM).
    Keygen {
        /// Private key file to create; the public key goes beside it with extension .pub.
        #[arg(long, default_value = "gateway.key")]
        out: PathBuf,
        /// Replace the key pair at --out with a new one: every public key is kept (never
        /// deleted) in the key directory, the old private key moved there as `.key.retired`.
        /// A running gateway signs with the new key from --from on, without a restart.
        #[arg(long)]
        rotate: bool,
        /// When the new key starts signing: `now` (default), `+30s` / `+15m` / `+2h`, or an
        /// RFC 3339 time. A later time writes the key as `--out`.next (with `.next.pub` and
        /// `.next.from`) until then; the next --rotate promotes it.
        #[arg(long, requires = "rotate")]
        from: Option<String>,
        /// The key directory for --rotate (default: `keys/` beside --out); give it to
        /// `icu-bridge consume --key-dir`.
        #[arg(long, requires = "rotate")]
        key_dir: Option<PathBuf>,
    },
    /// Make a small test PKI (a CA, the gateway's certificate, device and client certificates)
    /// for demos and tests; production sites bring their hospital's certificates.
    Cert {
        /// Folder to write into (ca.crt, gateway.crt/.key, devices/ID.crt/.key, clients/...).
        #[arg(long)]
        out: PathBuf,
        /// Another host name or address of the gateway (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// A device id to make a client certificate for (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Another client (an ADT engine, a broker client; repeatable).
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: i64,
        /// A device whose certificate is made already expired (for tests; repeatable).
        #[arg(long = "expired-device")]
        expired_devices: Vec<String>,
    },
    /// Validate a config file and print what it declares; with --probe also check what it names
    /// (serial ports, brokers and topics, MQTT login, key and certificates, disk, alarm manager),
    /// one OK/FAIL line each. Exit 0: all good; 1: a probe (or the signing key) failed; 78: the
    /// file is not valid (EX_CONFIG).
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        /// Also open, connect to and log in to everything the file names (sends no patient
        /// data, creates no topic).
        #[arg(long)]
        probe: bool,
        /// Each probe's bound, e.g. 5s, 500ms.
        #[arg(long, default_value = "5s", value_parser = icu_gateway::probe::parse_duration, requires = "probe")]
        timeout: std::time::Duration,
        /// The shortest retention a Kafka topic may have, in hours (as `topics create` sets).
        #[arg(long, default_value_t = 168, requires = "probe")]
        min_retention_hours: u64,
        /// The probe's answers as one JSON object (for scripts).
        #[arg(long, requires = "probe")]
        json: bool,
    },
    /// Accounts of the page and API: add, passwd, pin, role, disable, enable, list.
    User {
        #[command(subcommand)]
        command: icu_gateway::auth::cli::UserCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// API tokens for machines (`/metrics`, the read-only API): add, revoke, list.
    Token {
        #[command(subcommand)]
        command: icu_gateway::auth::cli::TokenCommand,
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// The tamper-evident audit trail: `verify` its chain and signatures, `show` its entries.
    Audit {
        #[command(subcommand)]
        command: icu_gateway::audit::cli::AuditCommand,
    },
    /// The gateway's Kafka topics: `create` them on the backbone of the config's `[kafka]`.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create every topic the config names (observations, alarms, ADT, audit, dead letters)
    /// with the documented settings; a topic that exists is left as it is. Exit 1 if one failed.
    Create {
        #[arg(long, short)]
        config: PathBuf,
        /// Partitions per topic.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replicas per partition (1 for a single test broker).
        #[arg(long, default_value_t = 3)]
        replication_factor: i32,
        /// How long the backbone keeps records, in hours (`retention.ms`).
        #[arg(long, default_value_t = 168)]
        retention_hours: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // `run` reads its config first: its `[tracing]` section sets the log format and the trace
    // exporter (reading the file logs nothing).
    if let Command::Run { config } = &cli.command {
        let cfg = icu_gateway::config::Config::load(config)?;
        let telemetry = telemetry(cli.log_format, Some(&cfg))?;
        let result = icu_gateway::app::run(cfg);
        // The spans still queued (the last messages, their deliveries) are exported now.
        telemetry.shutdown();
        return result;
    }
    let _telemetry = telemetry(cli.log_format, None)?;
    match cli.command {
        Command::Cert {
            out,
            names,
            devices,
            clients,
            days,
            expired_devices,
        } => {
            let files = icu_gateway::tls::pki::make(
                &out,
                &icu_gateway::tls::pki::PkiRequest {
                    gateway_names: names,
                    devices,
                    clients,
                    days,
                    expired_devices,
                },
            )?;
            println!(
                "test CA:      {} (trust this in clients; not for patient data)",
                files.ca_cert.display()
            );
            println!("gateway cert: {}", files.gateway_cert.display());
            println!("gateway key:  {} (mode 0600)", files.gateway_key.display());
            println!(
                "devices and clients: {}/devices, {}/clients",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::User { command, config } => {
            let cfg = load_for_admin(config)?;
            let changed = icu_gateway::auth::cli::run_user(&cfg.store.path, command)?;
            audit_admin(&cfg, changed)
        }
        Command::Token { command, config } => {
            let cfg = load_for_admin(config)?;
            let changed = icu_gateway::auth::cli::run_token(&cfg.store.path, command)?;
            audit_admin(&cfg, changed)
        }
        Command::Audit { command } => match icu_gateway::audit::cli::run(command)? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Command::Run { .. } => unreachable!("handled above"),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => anyhow::bail!(
            "this icu-gateway was built without the demo (cargo feature `demo`, which links the \
             simulator); use `icu-gateway run --config FILE`, or build with default features"
        ),
        #[cfg(feature = "demo")]
        Command::Demo {
            beds,
            http,
            data_dir,
            kafka,
            rate,
            scenario,
            print_config,
        } => {
            let scenario = match scenario.as_str() {
                "none" | "" => None,
                s => Some(
                    icu_sim::run::Scenario::parse(s)
                        .map_err(|e| anyhow::anyhow!("--scenario {s}: {e}"))?,
                ),
            };
            let opts = icu_gateway::demo::DemoOptions {
                beds,
                http,
                data_dir,
                kafka,
                rate_hz: rate,
                scenario,
            };
            if print_config {
                print!("{}", icu_gateway::demo::demo_config_text(&opts));
                return Ok(());
            }
            icu_gateway::demo::run(opts)
        }
        Command::Keygen {
            out,
            rotate: true,
            key_dir,
            from,
        } => {
            let public = icu_gateway::app::public_key_path(&out);
            let dir = key_dir.unwrap_or_else(|| {
                out.parent()
                    .unwrap_or_else(|| std::path::Path::new("."))
                    .join("keys")
            });
            let now = std::time::SystemTime::now();
            let from = from
                .map(|f| icu_cloud_bridge::signing::parse_from(&f, now))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--from {e}"))?;
            let r = icu_cloud_bridge::signing::rotate(&out, &public, &dir, from, now)
                .with_context(|| format!("rotating {}", out.display()))?;
            if let Some(id) = &r.promoted {
                println!("promoted:    {id} (the key scheduled earlier, whose time had passed)");
            }
            println!(
                "old key id:  {} (public key kept in {})",
                r.old_key_id,
                r.old_public.display()
            );
            if let Some(old) = &r.old_private {
                println!(
                    "old private: {} (delete it once no record needs re-signing)",
                    old.display()
                );
            }
            println!(
                "new key id:  {} ({})",
                r.new_key_id,
                r.new_private.display()
            );
            println!(
                "key dir:     {} (give it to the central data team: icu-bridge consume --key-dir)",
                dir.display()
            );
            if r.scheduled {
                println!(
                    "signs from:  {} (a running gateway switches then, without a restart; audit: key_rotated)",
                    r.from_text()
                );
            } else {
                println!("signs from:  now (a running gateway switches within seconds; audit: key_rotated)");
            }
            Ok(())
        }
        Command::Keygen { out, .. } => {
            let key = icu_cloud_bridge::signing::GatewayKey::generate();
            let public = icu_gateway::app::public_key_path(&out);
            key.write(&out, &public)
                .with_context(|| format!("writing {} and {}", out.display(), public.display()))?;
            println!(
                "private key: {} (keep it on this gateway, mode 0600)",
                out.display()
            );
            println!(
                "public key:  {} (give it to the central data team)",
                public.display()
            );
            println!("key id:      {}", key.key_id());
            Ok(())
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    config,
                    partitions,
                    replication_factor,
                    retention_hours,
                },
        } => {
            let cfg = icu_gateway::config::Config::load(&config)?;
            let kafka = cfg.kafka.as_ref().with_context(|| {
                format!(
                    "{} has no [kafka] section to create topics on",
                    config.display()
                )
            })?;
            let spec = icu_cloud_bridge::bridge::topics::TopicSpec {
                partitions,
                replication: replication_factor,
                retention: std::time::Duration::from_secs(retention_hours.saturating_mul(3600)),
            };
            let settings = |topic: &str| -> String {
                let all: Vec<String> = spec
                    .settings_for(kafka, topic)
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                all.join(", ")
            };
            let answers = icu_cloud_bridge::bridge::topics::create_topics(kafka, &spec)
                .with_context(|| format!("creating topics on {}", kafka.brokers))?;
            let mut failed = 0;
            for (topic, outcome) in answers {
                use icu_cloud_bridge::bridge::topics::TopicOutcome;
                match outcome {
                    TopicOutcome::Created => println!(
                        "{topic}: created ({partitions} partitions, replication {replication_factor}, {})",
                        settings(&topic)
                    ),
                    TopicOutcome::Exists => println!("{topic}: exists (left as it is)"),
                    TopicOutcome::Failed(reason) => {
                        failed += 1;
                        println!("{topic}: FAILED: {reason}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!(
                    "{failed} topic(s) could not be created on {}",
                    kafka.brokers
                );
            }
            Ok(())
        }
        Command::CheckConfig {
            config,
            probe,
            timeout,
            min_retention_hours,
            json,
        } => {
            let loaded = icu_gateway::config::Config::load(&config);
            if probe {
                let opts = icu_gateway::probe::ProbeOptions {
                    timeout,
                    min_retention: std::time::Duration::from_secs(
                        min_retention_hours.saturating_mul(3600),
                    ),
                    ..icu_gateway::probe::ProbeOptions::new(&config)
                };
                std::process::exit(icu_gateway::probe::command(loaded, &opts, json));
            }
            let cfg = loaded.unwrap_or_else(|e| {
                eprintln!("Error: {e}");
                std::process::exit(icu_gateway::probe::EX_CONFIG)
            });
            println!("{}: valid", config.display());
            println!("  gateway_id: {}", cfg.gateway_id);
            println!(
                "  store:      {} (budget {} MiB, synchronous {})",
                cfg.store.path.display(),
                cfg.store.disk_budget_bytes >> 20,
                if cfg.store.synchronous_full {
                    "full"
                } else {
                    "normal"
                }
            );
            println!("  mllp:       {}", cfg.mllp.listen);
            println!("  http:       {}", cfg.http_listen);
            match &cfg.kafka {
                Some(k) => println!("  kafka:      {} topic {}", k.brokers, k.topic_observations),
                None => println!("  kafka:      none (store only)"),
            }
            println!("  beds:       {}", cfg.beds.len());
            for d in &cfg.devices {
                let how = match (&d.match_id, &d.serial) {
                    (Some(m), _) => format!("match {m}"),
                    (None, Some(s)) => format!("port {} {}", s.port.display(), s.line_text()),
                    (None, None) => String::new(),
                };
                println!("  device {} at {} ({:?}, {how})", d.id, d.bed, d.protocol);
            }
            if cfg.kafka.is_some() && !cfg.key_file.exists() {
                anyhow::bail!(
                    "signing key {} does not exist; run `icu-gateway keygen --out {}`",
                    cfg.key_file.display(),
                    cfg.key_file.display()
                );
            }
            Ok(())
        }
    }
}

/// The config an admin command works on (`--config`, or `ICU_GATEWAY_CONFIG`).
fn load_for_admin(config: Option<PathBuf>) -> anyhow::Result<icu_gateway::config::Config> {
    let path = config
        .or_else(|| std::env::var_os("ICU_GATEWAY_CONFIG").map(PathBuf::from))
        .context("which gateway? pass --config FILE (or set ICU_GATEWAY_CONFIG)")?;
    Ok(icu_gateway::config::Config::load(&path)?)
}

/// Writes an account or token change to the audit trail, as the local operating-system user.
fn audit_admin(
    cfg: &icu_gateway::config::Config,
    changed: Option<icu_gateway::auth::cli::Changed>,
) -> anyhow::Result<()> {
    use icu_gateway::audit::{Action, AuditEntry, AuditLog, TargetKind};
    let Some(c) = changed else {
        return Ok(());
    };
    let (key, created) = icu_gateway::app::load_or_create_key(&cfg.key_file)?;
    let log = AuditLog::open(&cfg.store.path, key.clone())?;
    if created {
        log.append(
            AuditEntry::new(Action::KeyCreated)
                .target(TargetKind::Key, key.key_id())
                .values(None, Some(cfg.key_file.display().to_string())),
        )?;
    }
    let action: Action = c.action.parse().map_err(anyhow::Error::msg)?;
    let kind = if c.action.starts_with("token") {
        TargetKind::Token
    } else {
        TargetKind::User
    };
    let who = format!(
        "local:{}",
        std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into())
    );
    let mut e = AuditEntry::new(action)
        .by(who, "biomed", "cli")
        .target(kind, c.target);
    if !c.detail.is_empty() {
        e = e.values(None, Some(c.detail));
    }
    log.append(e).context(
        "the change is made but the audit trail could not record it; check the store file",
    )?;
    Ok(())
}
