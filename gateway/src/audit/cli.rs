//! `icu-gateway audit verify` and `icu-gateway audit show`: the bodies of the subcommands, so
//! `main.rs` only forwards to [`run`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use icu_cloud_bridge::signing::{load_public_key, GatewayKey};

use super::chain::KeyRing;
use super::entry::{Action, AuditRecord};
use super::log::{query, Filter};
use super::verify::verify;

/// `icu-gateway audit ...`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the audit trail's chain, every signature and the signed head; print the first bad
    /// entry. Exit 0 when it verifies, 1 when it does not.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
        /// Start at this seq (the entry before it, when present, anchors the chain).
        #[arg(long)]
        from: Option<u64>,
        /// Also accept entries signed by this public key (SPKI PEM), e.g. a key rotated out;
        /// may be given more than once. The config's key (its .pub beside it, else the private
        /// key) is always accepted.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
    },
    /// Print audit entries, oldest first, as a table or as JSON lines.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        /// Entries at or after this time (RFC 3339, e.g. 2024-05-01T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Entries before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        bed: Option<String>,
        /// One action: login, login_failed, logoff, break_glass, acknowledge, silence,
        /// limit_change, user_add, user_passwd, user_disable, token_add, token_revoke,
        /// gateway_start, gateway_stop, config_reload, key_created, key_rotated, adt_applied, patient_read,
        /// store_failure, budget_refusal.
        #[arg(long)]
        action: Option<String>,
        /// From this seq on.
        #[arg(long)]
        from: Option<u64>,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an audit subcommand; returns the process exit code (1: the trail did not verify).
pub fn run(command: AuditCommand) -> anyhow::Result<i32> {
    match command {
        AuditCommand::Verify {
            config,
            from,
            public_keys,
        } => {
            let cfg = crate::config::Config::load(&config)?;
            let ring = key_ring(&cfg.key_file, &public_keys)?;
            let conn = open_store(&cfg.store.path)?;
            match verify(&conn, &ring, from) {
                Ok(summary) => {
                    println!("{summary}");
                    Ok(0)
                }
                Err(failure) => {
                    println!("{failure}");
                    Ok(1)
                }
            }
        }
        AuditCommand::Show {
            config,
            since,
            until,
            account,
            bed,
            action,
            from,
            limit,
            json,
        } => {
            let cfg = crate::config::Config::load(&config)?;
            let filter = Filter {
                since_us: since.as_deref().map(parse_time).transpose()?,
                until_us: until.as_deref().map(parse_time).transpose()?,
                account,
                bed,
                action: action
                    .as_deref()
                    .map(str::parse::<Action>)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                from_seq: from,
                limit,
            };
            let conn = open_store(&cfg.store.path)?;
            let records = query(&conn, &filter)?;
            let mut out = std::io::stdout().lock();
            if json {
                write_json_lines(&mut out, &records)?;
            } else {
                write_table(&mut out, &records)?;
            }
            Ok(0)
        }
    }
}

/// The config's public key (`<key_file>.pub`, else the private key's public half), a scheduled
/// next key's, plus `extra`.
fn key_ring(key_file: &Path, extra: &[PathBuf]) -> anyhow::Result<KeyRing> {
    let mut ring = KeyRing::new();
    let public = key_file.with_extension("pub");
    if public.exists() {
        ring.add(load_public_key(&public)?);
    } else if key_file.exists() {
        ring.add(GatewayKey::load(key_file)?.verifying_key());
    }
    // A key scheduled by `keygen --rotate --from` signs from its time: accept it too.
    let next = icu_cloud_bridge::signing::next_paths(key_file).public;
    if next.exists() {
        ring.add(load_public_key(&next)?);
    }
    for path in extra {
        ring.add(load_public_key(path)?);
    }
    if ring.is_empty() {
        anyhow::bail!(
            "no public key to verify with: neither {} nor {} exists; give --public-key FILE",
            public.display(),
            key_file.display()
        );
    }
    Ok(ring)
}

/// The store file through the store's one opener; refuses a path where no store exists.
fn open_store(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    if !path.exists() {
        anyhow::bail!("no store file at {}", path.display());
    }
    crate::store::db::open_connection(path, true)
        .with_context(|| format!("opening the store {}", path.display()))
}

/// RFC 3339 → µs since the epoch.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .with_context(|| format!("'{text}' is not an RFC 3339 time (e.g. 2024-05-01T08:00:00Z)"))
}

/// µs since the epoch → RFC 3339 UTC with milliseconds.
pub fn format_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{us} us"))
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

/// One JSON object per entry: every stored field (hashes and signature in hex) plus `time`.
pub fn write_json_lines(
    out: &mut impl std::io::Write,
    records: &[AuditRecord],
) -> anyhow::Result<()> {
    for record in records {
        let line = JsonLine {
            time: format_time(record.time_us),
            record,
        };
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    }
    Ok(())
}

/// A readable table: seq, time (`~` when the clock was not synchronised), who, action, target,
/// bed, change, outcome, reason.
pub fn write_table(out: &mut impl std::io::Write, records: &[AuditRecord]) -> anyhow::Result<()> {
    const HEAD: [&str; 9] = [
        "SEQ",
        "TIME (UTC)",
        "ACCOUNT",
        "ROLE",
        "SOURCE",
        "ACTION",
        "TARGET",
        "BED",
        "OUTCOME",
    ];
    let rows: Vec<([String; 9], String)> = records
        .iter()
        .map(|r| {
            let e = &r.entry;
            let sync = if r.clock_synced { "" } else { "~" };
            let target = if e.target.id.is_empty() {
                e.target.kind.to_string()
            } else {
                format!("{}:{}", e.target.kind, e.target.id)
            };
            let mut tail = String::new();
            if e.old_value.is_some() || e.new_value.is_some() {
                tail.push_str(&format!(
                    "{} -> {}",
                    e.old_value.as_deref().unwrap_or("-"),
                    e.new_value.as_deref().unwrap_or("-")
                ));
            }
            if let Some(reason) = &e.reason {
                if !tail.is_empty() {
                    tail.push_str("  ");
                }
                tail.push_str(&format!("reason: {reason}"));
            }
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            (
                [
                    r.seq.to_string(),
                    format!("{}{sync}", format_time(r.time_us)),
                    dash(&e.account),
                    dash(&e.role),
                    dash(&e.source),
                    e.action.to_string(),
                    target,
                    dash(e.bed.as_deref().unwrap_or("")),
                    e.outcome.to_string(),
                ],
                tail,
            )
        })
        .collect();
    let mut widths = HEAD.map(str::len);
    for (cols, _) in &rows {
        for (w, c) in widths.iter_mut().zip(cols) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn std::io::Write, cols: &[&str], tail: &str| -> std::io::Result<()> {
        let mut text = String::new();
        for (c, w) in cols.iter().zip(widths) {
            text.push_str(&format!("{c:<w$}  "));
        }
        text.push_str(tail);
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &HEAD, "CHANGE / REASON")?;
    for (cols, tail) in &rows {
        let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
        line(out, &cols, tail)?;
    }
    if records.is_empty() {
        writeln!(out, "(no entries)")?;
    }
    Ok(())
}
