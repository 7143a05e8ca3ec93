//! `icu-gateway demo`: the embedded default.
//!
//! Starts a real gateway (real MLLP listener on loopback, real SQLite store, the local page)
//! configured for N simulated beds, and the simulator's monitors sending PCD-01 to it over
//! loopback TCP. Forwards to Kafka only when a bootstrap address is given; otherwise readings
//! wait in the store's outbox and the page says so.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use icu_cloud_bridge::signing::GatewayKey;

use crate::app::{self, public_key_path};
use crate::config::{Config, RawConfig};

pub struct DemoOptions {
    pub beds: usize,
    pub http: String,
    pub data_dir: PathBuf,
    pub kafka: Option<String>,
    pub rate_hz: f64,
    /// A scripted scenario of the simulator (by default a desaturation on bed 2).
    pub scenario: Option<icu_sim::run::Scenario>,
}

/// The config the demo runs with (printed with `--print-config` for engineers to start from).
pub fn demo_config_text(opts: &DemoOptions) -> String {
    let mut s = format!(
        "gateway_id = \"demo-gw\"\ndata_dir = \"{}\"\nclock = \"auto\"\n\n[mllp]\nlisten = \"127.0.0.1:0\"\n# every simulated monitor connects from 127.0.0.1\nmax_connections_per_address = 256\n\n[http]\nlisten = \"{}\"\n\n[store]\nsynchronous = \"normal\"\ndisk_budget_mb = 1024\n\n",
        opts.data_dir.display(),
        opts.http
    );
    if let Some(k) = &opts.kafka {
        s.push_str(&format!("[kafka]\nbootstrap = \"{k}\"\n\n"));
    }
    s.push_str(&icu_sim::gateway_config_blocks(&icu_sim::beds(opts.beds)));
    s
}

pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let data_dir = opts.data_dir.canonicalize()?;
    let opts = DemoOptions { data_dir, ..opts };
    let text = demo_config_text(&opts);
    let raw: RawConfig = toml::from_str(&text).context("demo config")?;
    let config: Config = raw
        .validate(&opts.data_dir)
        .map_err(|p| anyhow::anyhow!("demo config invalid: {p:?}"))?;

    let key = if config.key_file.exists() {
        app::load_key(&config.key_file)?
    } else {
        let k = GatewayKey::generate();
        k.write(&config.key_file, &public_key_path(&config.key_file))?;
        k
    };
    let key_id = key.key_id().to_owned();
    let accounts = demo_accounts(&config.store.path)?;
    let beds = icu_sim::beds(opts.beds);
    let system = actix::System::new();
    system.block_on(async move {
        let running = app::start(config.clone(), Some(key)).await?;
        let ep = running.endpoints.clone();
        println!("ICU gateway demo ({} simulated beds, PCD-01 over loopback MLLP)", opts.beds);
        println!("  page:       http://{}/", ep.http);
        println!("  beds API:   http://{}/api/beds", ep.http);
        println!("  devices:    http://{}/api/devices", ep.http);
        println!("  mllp:       {}", ep.mllp);
        println!("  store:      {}", config.store.path.display());
        println!("  public key: {} (key id {key_id})", public_key_path(&config.key_file).display());
        match &opts.kafka {
            Some(k) => println!("  kafka:      forwarding to {k}, topic icu.observations"),
            None => println!("  kafka:      none given: readings are buffered in the store's outbox (pass --kafka HOST:PORT to forward)"),
        }
        println!("  accounts (new passwords each run; log in on the page):");
        for (name, role, password) in &accounts {
            println!("    {name:<16} {role:<10} password {password}  (PIN 1234)");
        }
        println!("Press Ctrl-C to stop.");

        // A patient in bed 1, admitted by ADT like a hospital's feed does, so the page shows a
        // name; and the scenario, so a newcomer sees an alarm within a minute.
        match admit_demo_patient(ep.mllp).await {
            Ok(()) => println!("  patient:    DEMO, JANE (MRN DEMO-0001) admitted to bed-01 by an ADT^A01"),
            Err(e) => println!("  patient:    none admitted ({e})"),
        }
        if let Some(s) = &opts.scenario {
            println!("  scenario:   {:?} on bed {} after {} messages", s.kind, s.bed, s.after_messages);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sim = tokio::spawn(icu_sim::run::run(
            icu_sim::run::RunOptions {
                target: ep.mllp.to_string(),
                beds,
                rate_hz: opts.rate_hz,
                messages_per_bed: None,
                duration: None,
                seed: 42,
                ack_timeout: Duration::from_secs(10),
                max_attempts: 3,
                scenario: opts.scenario,
                tls: None,
                // The monitors also send their curves (ECG, pleth, arterial pressure).
                waveforms: Some(icu_sim::run::WaveOptions::default()),
            },
            Some(stop_rx),
        ));
        app::wait_for_signal().await;
        println!("stopping: simulator, listeners, store");
        let _ = stop_tx.send(true);
        let report = sim.await.unwrap_or_default();
        running.shutdown().await;
        let t = report.total();
        let counts = running_counts(&config);
        println!(
            "demo stopped: {} messages sent, {} acknowledged (AA), {} observations stored{}",
            t.messages, t.aa, t.observations_accepted, counts
        );
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Sends an ADT^A01 admitting the demo patient to bed-01 over MLLP and checks the AA.
async fn admit_demo_patient(mllp: std::net::SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ts = chrono::Utc::now().format("%Y%m%d%H%M%S+0000");
    let msg = [
        format!("MSH|^~\\&|DEMO_ADT|HOSP|ICU_GW|ICU|{ts}||ADT^A01^ADT_A01|DEMO-ADT-1|P|2.5"),
        format!("EVN||{ts}"),
        "PID|1||DEMO-0001^^^HOSP^MR||DEMO^JANE||19700101|F".to_owned(),
        "PV1|1|I|ICU^1^bed-01|||||||||||||||||DEMO-V1^^^HOSP^VN".to_owned(),
    ]
    .join("\r");
    let mut stream = tokio::net::TcpStream::connect(mllp).await?;
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg.as_bytes());
    frame.extend_from_slice(&[0x1c, 0x0d]);
    stream.write_all(&frame).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await??;
    let ack = String::from_utf8_lossy(&buf[..n]);
    anyhow::ensure!(ack.contains("MSA|AA"), "the gateway answered {ack:?}");
    Ok(())
}

fn running_counts(config: &Config) -> String {
    match crate::store::ReaderDb::open(&config.store.path, false).and_then(|r| r.counts()) {
        Ok(c) => format!(
            ", {} records in the store, {} waiting to be forwarded",
            c.records, c.unsent
        ),
        Err(_) => String::new(),
    }
}

/// The demo's accounts, one per clinical and technical role, each with a new random password
/// printed at start (a demo store is not a hospital's; a real gateway's first account is made
/// with `icu-gateway user add`).
fn demo_accounts(store: &std::path::Path) -> anyhow::Result<Vec<(String, String, String)>> {
    use crate::auth::{Accounts, AuthError, Role};
    let accounts = Accounts::open(store)?;
    let mut out = Vec::new();
    for (name, role) in [
        ("demo-nurse", Role::Nurse),
        ("demo-physician", Role::Physician),
        ("demo-biomed", Role::Biomed),
    ] {
        let password = crate::auth::cli::generate_password();
        match accounts.add(name, role, &password, Some("1234")) {
            Ok(_) => {}
            Err(AuthError::Invalid(m)) if m.contains("already exists") => {
                accounts.set_password(name, &password)?;
                accounts.set_disabled(name, false)?;
            }
            Err(e) => return Err(e.into()),
        }
        out.push((name.to_owned(), role.to_string(), password));
    }
    Ok(out)
}
