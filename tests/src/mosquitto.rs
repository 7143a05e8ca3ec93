//! A real MQTT broker (Eclipse Mosquitto) per test.
//!
//! Each [`Mosquitto`] runs `/usr/sbin/mosquitto` (or `ICU_MOSQUITTO_BIN`) with its own config
//! file in its own temporary folder, listening on 127.0.0.1 only, anonymous clients allowed, its
//! log in that folder. It is stopped (and waited for) on drop and cannot outlive the test
//! process (see [`ChildGuard::spawn_tied`]). `scripts/test` installs the Debian package and
//! stops the system service it may start; no test uses the system broker or port 1883.
//!
//! [`Mosquitto::start_tls`] runs a TLS-only listener instead ([`TlsSetup`]: the broker's
//! certificate, optionally requiring client certificates), with `allow_anonymous false`, a
//! password file made by `mosquitto_passwd -b` and an ACL file (see [`pump_acl`]).
//!
//! [`Mosquitto::start`] keeps nothing across restarts (`persistence false`), so a restart loses
//! every session: subscribers must subscribe again. [`Mosquitto::start_persistent`] saves its
//! sessions and unacknowledged messages in its folder on stop and reloads them on
//! [`Mosquitto::restart`], as a production broker would.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::free_port;
use crate::process::{log_tail, wait_for, ChildGuard};

/// Where the Debian package puts the broker.
pub const MOSQUITTO_BIN: &str = "/usr/sbin/mosquitto";

/// How long a broker may take to accept connections after being spawned.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// The broker binary: `ICU_MOSQUITTO_BIN`, else [`MOSQUITTO_BIN`].
pub fn mosquitto_bin() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("ICU_MOSQUITTO_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(MOSQUITTO_BIN));
    if !path.is_file() {
        bail!(
            "MQTT broker {} not found: run scripts/test, it installs mosquitto \
             (or `apt-get install mosquitto`, or set ICU_MOSQUITTO_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// Where the Debian package puts the password tool.
pub const MOSQUITTO_PASSWD_BIN: &str = "/usr/bin/mosquitto_passwd";

/// A TLS-only broker with passwords and an ACL.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    /// CA bundle the broker trusts for client certificates.
    pub ca_file: PathBuf,
    /// The broker's certificate and key.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Refuse clients without a certificate signed by `ca_file`.
    pub require_certificate: bool,
    /// Username and password of every client.
    pub users: Vec<(String, String)>,
    /// The ACL file's text (mosquitto's `user` / `topic read|write|readwrite` lines).
    pub acl: String,
}

/// The ACL of an ICU: user `gateway_user` reads everything under `icu/<gateway_id>/` and writes
/// its alarm topics; each pump (its username is its device id) writes only its own observation
/// topics `icu/<gateway_id>/bed/+/device/<pump>/#`. The bed level stays open: binding a device
/// to its bed is the gateway's check (its config), which the ACL does not duplicate.
pub fn pump_acl(gateway_id: &str, gateway_user: &str, pumps: &[&str]) -> String {
    let mut acl = format!(
        "user {gateway_user}
topic read icu/{gateway_id}/#
topic write icu/{gateway_id}/alarms/#
"
    );
    for p in pumps {
        acl.push_str(&format!(
            "
user {p}
topic write icu/{gateway_id}/bed/+/device/{p}/#
"
        ));
    }
    acl
}

/// A mosquitto broker on 127.0.0.1.
#[derive(Debug)]
pub struct Mosquitto {
    /// The port it listens on.
    pub port: u16,
    persistent: bool,
    child: Option<ChildGuard>,
    log: PathBuf,
    // Declared last: removed after the child is stopped.
    dir: TempDir,
}

impl Mosquitto {
    /// Start a broker without persistence on a free port and wait until it accepts
    /// connections. Retries on a fresh port if the chosen one was taken in the meantime.
    pub fn start() -> anyhow::Result<Mosquitto> {
        Self::start_retrying(false, None)
    }

    /// Start a broker without persistence whose one listener is TLS with passwords and an ACL.
    pub fn start_tls(tls: &TlsSetup) -> anyhow::Result<Mosquitto> {
        Self::start_retrying(false, Some(tls))
    }

    /// As [`Mosquitto::start`], with persistence: sessions, subscriptions and unacknowledged
    /// QoS 1 messages survive [`Mosquitto::stop`] + [`Mosquitto::restart`].
    pub fn start_persistent() -> anyhow::Result<Mosquitto> {
        Self::start_retrying(true, None)
    }

    /// Start a broker without persistence on `port` (e.g. a new broker on the address of one
    /// that was stopped) and wait until it accepts connections.
    pub fn start_on(port: u16) -> anyhow::Result<Mosquitto> {
        Self::start_in(port, false, None)
    }

    fn start_retrying(persistent: bool, tls: Option<&TlsSetup>) -> anyhow::Result<Mosquitto> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_in(free_port(), persistent, tls) {
                Ok(m) => return Ok(m),
                Err(e) if format!("{e:#}").contains("already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("three attempts were made"))
    }

    fn start_in(port: u16, persistent: bool, tls: Option<&TlsSetup>) -> anyhow::Result<Mosquitto> {
        mosquitto_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("icu-mosquitto-")
            .tempdir()
            .context("temp dir for mosquitto")?;
        let log = dir.path().join("mosquitto.log");
        let access = match tls {
            None => "allow_anonymous true\n".to_owned(),
            Some(tls) => tls_access(dir.path(), tls)?,
        };
        let mut conf = format!(
            "# written by icu-tests (tests/src/mosquitto.rs)\n\
             listener {port} 127.0.0.1\n\
             {access}\
             # stay the user the test runs as (root would otherwise switch to 'mosquitto',\n\
             # which cannot write to this folder); ignored when not started as root\n\
             user root\n\
             log_dest stderr\n\
             # every packet, so tests can see when the broker got a PUBACK\n\
             log_type all\n\
             connection_messages true\n"
        );
        if persistent {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 0\n",
                dir.path().display()
            ));
        } else {
            conf.push_str("persistence false\n");
        }
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("write {}", conf_path.display()))?;

        let mut broker = Mosquitto {
            port,
            persistent,
            child: None,
            log,
            dir,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = mosquitto_bin()?;
        // Appending: a restart keeps the earlier log above.
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(self.conf_path())
            .current_dir(self.dir.path());
        let child = ChildGuard::spawn_tied(&cmd, Stdio::from(out), Stdio::from(err))
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready()
            .with_context(|| format!("mosquitto on 127.0.0.1:{}", self.port))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let sock = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut last_error = String::from("no answer yet");
        let res = wait_for(START_DEADLINE, "mosquitto to accept connections", || {
            if let Some(status) = self.child.as_mut().and_then(ChildGuard::exited) {
                last_error = if self.log_tail(20).contains("in use") {
                    format!("port {} already in use", self.port)
                } else {
                    format!("mosquitto exited early ({status})")
                };
                return Some(false);
            }
            match TcpStream::connect_timeout(&sock, Duration::from_millis(200)) {
                Ok(_) => Some(true),
                Err(e) => {
                    last_error = format!("connect: {e}");
                    None
                }
            }
        });
        match res {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                let timeout = res.err().map(|e| format!("{e}; ")).unwrap_or_default();
                self.stop();
                bail!(
                    "{timeout}{last_error}\n--- {} (tail) ---\n{}",
                    self.log.display(),
                    self.log_tail(40)
                )
            }
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether it keeps sessions across restarts.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// Its config file.
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its whole log (every packet: `log_type all`), e.g. to check that a PUBACK arrived.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stop the broker (SIGTERM: a persistent one saves its sessions) and wait until it has
    /// exited; its port is then free. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.shutdown(Duration::from_secs(10));
        }
    }

    /// Start it again on the same port with the same config and folder (a persistent broker
    /// reloads its sessions). Stops it first if it is running.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Whether the broker process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.exited().is_none(),
            None => false,
        }
    }
}

/// The listener's TLS lines and the access lines (password and ACL files written into `dir`).
fn tls_access(dir: &Path, tls: &TlsSetup) -> anyhow::Result<String> {
    let passwd = dir.join("passwd");
    for (i, (user, password)) in tls.users.iter().enumerate() {
        let mut cmd = Command::new(mosquitto_passwd_bin()?);
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg(&passwd)
            .arg(user)
            .arg(password)
            .output()
            .context("run mosquitto_passwd")?;
        if !out.status.success() {
            bail!(
                "mosquitto_passwd for {user}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    crate::pki::write_secret(&passwd, &std::fs::read_to_string(&passwd)?)?;
    let acl = dir.join("acl");
    std::fs::write(&acl, &tls.acl).with_context(|| format!("write {}", acl.display()))?;
    Ok(format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n\
         allow_anonymous false\npassword_file {}\nacl_file {}\n",
        tls.ca_file.display(),
        tls.cert_file.display(),
        tls.key_file.display(),
        tls.require_certificate,
        passwd.display(),
        acl.display()
    ))
}

/// The password tool: `ICU_MOSQUITTO_PASSWD_BIN`, else [`MOSQUITTO_PASSWD_BIN`].
pub fn mosquitto_passwd_bin() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("ICU_MOSQUITTO_PASSWD_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(MOSQUITTO_PASSWD_BIN));
    if !path.is_file() {
        bail!(
            "{} not found: run scripts/test, it installs mosquitto (Debian's package has it)",
            path.display()
        );
    }
    Ok(path)
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
/// Collects every message on the gateway's MQTT alarm topics.
pub fn mqtt_alarms(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use icu_drivers::mqtt::rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    let (client, mut connection) =
        Client::new(MqttOptions::new("nurse-call", "127.0.0.1", port), 16);
    client
        .subscribe("icu/test-gw/alarms/#", QoS::AtLeastOnce)
        .unwrap();
    std::thread::spawn(move || {
        let _client = client;
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let text = format!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                    keep.lock().unwrap().push(text);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    got
}
