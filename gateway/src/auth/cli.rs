//! `icu-gateway user ...` and `icu-gateway token ...`: the biomed engineer's account tools.
//! They work on the store file named by the config, also while the gateway runs (a disabled
//! account or a revoked token is refused at its next request). Passwords and PINs are read from
//! standard input (without echo on a terminal), never from the command line, where `ps` and the
//! shell history would show them.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use clap::Subcommand;

use super::{AccountInfo, Accounts, AuthError, Role, TokenInfo};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (the password is read from standard input, or generated and printed).
    Add {
        name: String,
        #[arg(long)]
        role: Role,
        /// Make up a strong password and print it once instead of reading one.
        #[arg(long)]
        generate_password: bool,
        /// Also read a PIN (4 to 8 digits) for quick re-login at a shared station.
        #[arg(long)]
        with_pin: bool,
    },
    /// Set a new password (read from standard input).
    Passwd { name: String },
    /// Set (read from standard input) or remove the account's PIN.
    Pin {
        name: String,
        #[arg(long)]
        remove: bool,
    },
    /// Change the account's role.
    Role {
        name: String,
        #[arg(long)]
        role: Role,
    },
    /// Disable an account: its sessions end at their next request, its logins are refused.
    Disable { name: String },
    /// Enable a disabled account again.
    Enable { name: String },
    /// List the accounts (never their hashes).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a machine; prints it once (store it in the client's secret file).
    Add {
        /// What uses it, e.g. "prometheus".
        name: String,
        #[arg(long, default_value = "service")]
        role: Role,
    },
    /// Revoke a token by its id (the part after `icu_` and before the next `_`).
    Revoke { id: String },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
}

/// What a command changed, for the audit trail (action, target, new value).
pub struct Changed {
    pub action: &'static str,
    pub target: String,
    pub detail: String,
}

fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}: ");
        let _ = std::io::stderr().flush();
    }
    let echo = if tty { EchoOff::new() } else { None };
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    drop(echo);
    if tty {
        eprintln!();
    }
    let s = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!s.is_empty(), "no {prompt} given on standard input");
    Ok(s)
}

/// Terminal echo off while a secret is typed; restored on drop.
struct EchoOff(nix::sys::termios::Termios);

impl EchoOff {
    fn new() -> Option<Self> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let fd = std::io::stdin();
        let old = tcgetattr(&fd).ok()?;
        let mut t = old.clone();
        t.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(&fd, SetArg::TCSANOW, &t).ok()?;
        Some(Self(old))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin(),
            nix::sys::termios::SetArg::TCSANOW,
            &self.0,
        );
    }
}

/// A random password of 20 characters from an unambiguous alphabet (about 115 bits).
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut raw = [0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    raw.iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A stored time (µs since the epoch) as RFC 3339 UTC, to the second.
pub fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| us.to_string())
}

fn print_accounts(list: &[AccountInfo], json: bool) -> anyhow::Result<()> {
    if json {
        for a in list {
            println!("{}", serde_json::to_string(a)?);
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<9} {:<4} changed",
        "account", "role", "state", "pin"
    );
    for a in list {
        println!(
            "{:<24} {:<10} {:<9} {:<4} {}",
            a.name,
            a.role,
            if a.disabled { "disabled" } else { "enabled" },
            if a.has_pin { "yes" } else { "no" },
            rfc3339_us(a.changed_us)
        );
    }
    Ok(())
}

fn print_tokens(list: &[TokenInfo], json: bool) -> anyhow::Result<()> {
    if json {
        for t in list {
            println!("{}", serde_json::to_string(t)?);
        }
        return Ok(());
    }
    println!(
        "{:<10} {:<24} {:<8} {:<26} revoked",
        "id", "name", "role", "created"
    );
    for t in list {
        println!(
            "{:<10} {:<24} {:<8} {:<26} {}",
            t.id,
            t.name,
            t.role,
            rfc3339_us(t.created_us),
            t.revoked_us.map(rfc3339_us).unwrap_or_default()
        );
    }
    Ok(())
}

fn friendly(e: AuthError, name: &str) -> anyhow::Error {
    match e {
        AuthError::UnknownAccount => anyhow::anyhow!("no account named '{name}'"),
        other => anyhow::anyhow!("{other}"),
    }
}

/// Runs a `user` command against the store file; returns what changed (None for a listing).
pub fn run_user(store: &Path, cmd: UserCommand) -> anyhow::Result<Option<Changed>> {
    let accounts = Accounts::open(store)?;
    Ok(match cmd {
        UserCommand::Add {
            name,
            role,
            generate_password: generate,
            with_pin,
        } => {
            let password = if generate {
                generate_password()
            } else {
                read_secret("password")?
            };
            let pin = if with_pin {
                Some(read_secret("PIN")?)
            } else {
                None
            };
            let a = accounts
                .add(&name, role, &password, pin.as_deref())
                .map_err(|e| friendly(e, &name))?;
            println!("account {} created with role {}", a.name, a.role);
            if generate {
                println!("password: {password}");
            }
            Some(Changed {
                action: "user_add",
                target: name,
                detail: format!("role={role}"),
            })
        }
        UserCommand::Passwd { name } => {
            let password = read_secret("new password")?;
            accounts
                .set_password(&name, &password)
                .map_err(|e| friendly(e, &name))?;
            println!("password of {name} changed");
            Some(Changed {
                action: "user_passwd",
                target: name,
                detail: String::new(),
            })
        }
        UserCommand::Pin { name, remove } => {
            let pin = if remove {
                None
            } else {
                Some(read_secret("PIN")?)
            };
            accounts
                .set_pin(&name, pin.as_deref())
                .map_err(|e| friendly(e, &name))?;
            println!("PIN of {name} {}", if remove { "removed" } else { "set" });
            Some(Changed {
                action: "user_pin",
                target: name,
                detail: if remove { "removed" } else { "set" }.into(),
            })
        }
        UserCommand::Role { name, role } => {
            accounts
                .set_role(&name, role)
                .map_err(|e| friendly(e, &name))?;
            println!("{name} now has role {role}");
            Some(Changed {
                action: "user_role",
                target: name,
                detail: format!("role={role}"),
            })
        }
        UserCommand::Disable { name } => {
            accounts
                .set_disabled(&name, true)
                .map_err(|e| friendly(e, &name))?;
            println!("{name} disabled");
            Some(Changed {
                action: "user_disable",
                target: name,
                detail: String::new(),
            })
        }
        UserCommand::Enable { name } => {
            accounts
                .set_disabled(&name, false)
                .map_err(|e| friendly(e, &name))?;
            println!("{name} enabled");
            Some(Changed {
                action: "user_enable",
                target: name,
                detail: String::new(),
            })
        }
        UserCommand::List { json } => {
            print_accounts(&accounts.list()?, json)?;
            None
        }
    })
}

/// Runs a `token` command against the store file; returns what changed (None for a listing).
pub fn run_token(store: &Path, cmd: TokenCommand) -> anyhow::Result<Option<Changed>> {
    let accounts = Accounts::open(store)?;
    Ok(match cmd {
        TokenCommand::Add { name, role } => {
            let (info, secret) = accounts.token_add(&name, role)?;
            eprintln!(
                "token {} for {} with role {} (shown once; give it to the client as `Authorization: Bearer <token>`):",
                info.id, info.name, info.role
            );
            println!("{secret}");
            Some(Changed {
                action: "token_add",
                target: info.id,
                detail: format!("name={name} role={role}"),
            })
        }
        TokenCommand::Revoke { id } => {
            accounts.token_revoke(&id)?;
            println!("token {id} revoked");
            Some(Changed {
                action: "token_revoke",
                target: id,
                detail: String::new(),
            })
        }
        TokenCommand::List { json } => {
            print_tokens(&accounts.token_list()?, json)?;
            None
        }
    })
}
