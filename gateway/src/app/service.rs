//! Running as a systemd service (`Type=notify` with `WatchdogSec=`, the unit in
//! `gateway/packaging/icu-gateway.service`): readiness, the watchdog and the start-up checks of
//! the limits the service runs under.
//!
//! Owns: every message `icu-gateway run` sends to `$NOTIFY_SOCKET` (sd_notify(3)). Guarantees:
//! - `READY=1` is sent once, after `app::start` returned: the store is open and the MLLP and
//!   HTTP listeners are bound, so `systemctl start` returns only when monitors can connect.
//! - With `WatchdogSec=` (`$WATCHDOG_USEC`), the store actor and the alarm actor are pinged
//!   every quarter of the interval (more often than the half that sd_watchdog_enabled(3) asks
//!   for, so that one late answer is not yet a restart), each ping a real round trip through the
//!   actor's mailbox and arbiter thread. `WATCHDOG=1` is sent only when both answered within a
//!   quarter of the interval. An actor system that stops answering (a handler that never
//!   returns, a dead arbiter, a blocked system thread that also stops this task) sends nothing,
//!   and systemd kills and restarts the gateway once the interval passed without `WATCHDOG=1`.
//! - `STOPPING=1` when a stop begins.
//! - SIGHUP (`systemctl reload`) never stops the gateway (`app::run` registers its handler
//!   before the start and reloads the config on it, `app::reload`); the outcome of a reload is
//!   the unit's `STATUS=`.
//!
//! Without `$NOTIFY_SOCKET` (a gateway started by hand or by a test) nothing is sent.

use std::net::SocketAddr;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, MailboxError, Message};
use sd_notify::NotifyState;

use crate::alarm::actor::AlarmActor;
use crate::config::Config;
use crate::store::Store;

/// A no-op message: its answer proves the actor's mailbox is read and its thread runs.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for Store {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

impl Handler<Ping> for AlarmActor {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

/// Why a pinged actor did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingFailure {
    /// No answer within the time allowed: the actor (or its thread) is busy or wedged.
    NoAnswer,
    /// Its mailbox is closed: the actor stopped.
    Stopped,
}

/// Pings `addr` and waits at most `within` for the answer.
pub async fn ping<A>(addr: &Addr<A>, within: Duration) -> Result<(), PingFailure>
where
    A: Actor + Handler<Ping>,
    A::Context: ToEnvelope<A, Ping>,
{
    match tokio::time::timeout(within, addr.send(Ping)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(MailboxError::Closed)) => Err(PingFailure::Stopped),
        Ok(Err(MailboxError::Timeout)) | Err(_) => Err(PingFailure::NoAnswer),
    }
}

/// What one round of pings means for systemd's watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every actor answered: send `WATCHDOG=1`.
    Feed,
    /// Send nothing; the text names the actors that did not answer and why.
    Withhold(String),
}

/// Feed the watchdog only when every pinged actor answered.
pub fn verdict(answers: &[(&str, Result<(), PingFailure>)]) -> Verdict {
    let failed: Vec<String> = answers
        .iter()
        .filter_map(|(name, r)| match r {
            Ok(()) => None,
            Err(PingFailure::NoAnswer) => Some(format!("{name}: no answer")),
            Err(PingFailure::Stopped) => Some(format!("{name}: stopped")),
        })
        .collect();
    if failed.is_empty() {
        Verdict::Feed
    } else {
        Verdict::Withhold(failed.join(", "))
    }
}

/// How often the actors are pinged, and how long each may take to answer, for a watchdog
/// interval of `interval` (`WatchdogSec=`): both a quarter of it, at least 1 ms.
pub fn ping_period(interval: Duration) -> Duration {
    (interval / 4).max(Duration::from_millis(1))
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process), if any.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify systemd ($NOTIFY_SOCKET)");
    }
}

/// Tells systemd the gateway is ready (the store is open, the listeners bound), and starts the
/// watchdog task when systemd asked for one. Call inside the actix `System`, after
/// `app::start` returned.
pub fn ready(store: Addr<Store>, alarms: Addr<AlarmActor>, mllp: SocketAddr, http: SocketAddr) {
    let status = format!("ready: mllp {mllp}, page http://{http}/");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    if let Some(interval) = watchdog_interval() {
        let period = ping_period(interval);
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            ping_ms = period.as_millis() as u64,
            "systemd watchdog on: the store and alarm actors are pinged"
        );
        actix::spawn(feed_watchdog(store, alarms, period));
    }
}

/// Pings the actors every `period` and sends `WATCHDOG=1` after each round they all answered.
async fn feed_watchdog(store: Addr<Store>, alarms: Addr<AlarmActor>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tick.tick().await;
        let (s, a) = tokio::join!(ping(&store, period), ping(&alarms, period));
        match verdict(&[("store", s), ("alarm engine", a)]) {
            Verdict::Feed => {
                if withheld {
                    tracing::info!("the actors answer again: systemd watchdog fed");
                    withheld = false;
                }
                notify(&[NotifyState::Watchdog]);
            }
            Verdict::Withhold(why) => {
                withheld = true;
                tracing::error!(actors = %why, "actors do not answer: the systemd watchdog is not fed and restarts the gateway if this lasts");
            }
        }
    }
}

/// Shows the outcome of a reload (`systemctl reload`, SIGHUP) in `systemctl status`.
pub fn reloaded(outcome: &Result<super::ReloadReport, super::ReloadRefused>) {
    let status = match outcome {
        Ok(report) => format!("config reloaded: {}", report.summary()),
        Err(why) => format!("config reload refused, running config kept: {why}"),
    };
    notify(&[NotifyState::Status(&status)]);
}

/// Tells systemd the gateway is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// File descriptors the gateway may need with `config`'s connection caps: every MLLP
/// connection, two connections per page session plus the event streams, one per device (a
/// serial line; MQTT and Kafka sockets fit in the rest), and 256 for SQLite, key and TLS files,
/// the runtime's own descriptors and logging. The unit's `LimitNOFILE=` is this number for the
/// packaged config, doubled.
pub fn files_needed(config: &Config) -> u64 {
    let caps = config.mllp.max_connections
        + 2 * config.auth.max_sessions
        + config.http_limits.max_event_streams
        + config.devices.len();
    caps as u64 + 256
}

/// The soft `Max open files` limit from the text of `/proc/self/limits`.
pub fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether the effective capabilities (`CapEff:` of `/proc/self/status`, hex) hold
/// CAP_NET_BIND_SERVICE (capability 10).
pub fn can_bind_service(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 10) != 0)
}

/// The configured listeners on a port below `unprivileged_start` (1024 unless the system lowered
/// it), by config field.
pub fn low_ports(config: &Config, unprivileged_start: u16) -> Vec<(&'static str, SocketAddr)> {
    [
        ("mllp.listen", config.mllp.listen),
        ("http.listen", config.http_listen),
    ]
    .into_iter()
    .filter(|(_, a)| a.port() != 0 && a.port() < unprivileged_start)
    .collect()
}

/// Before start: says in the log when the limits the gateway runs under do not fit its config
/// (too few file descriptors for the connection caps; a port below 1024 without the capability
/// to bind it), each with the fix.
pub fn check_limits(config: &Config) {
    let needed = files_needed(config);
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| open_files_limit(&t));
    if let Some(limit) = limit.filter(|l| *l < needed) {
        tracing::warn!(limit, needed, "the open-files limit is below what the connection caps need (mllp.max_connections, auth.max_sessions, http.max_event_streams, devices): raise LimitNOFILE= in a drop-in (systemctl edit icu-gateway) or lower the caps");
    }
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(1024);
    let capable = std::fs::read_to_string("/proc/self/status")
        .map(|s| can_bind_service(&s))
        .unwrap_or(false);
    if !capable {
        for (field, addr) in low_ports(config, start) {
            tracing::warn!(field, %addr, "a port below 1024 needs CAP_NET_BIND_SERVICE, which this process does not have: install the drop-in /usr/share/doc/icu-gateway/examples/low-port.conf (README, \"Install on a hospital machine\")");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use actix::{Arbiter, Context};

    use super::*;

    #[test]
    fn the_watchdog_is_fed_only_when_every_actor_answered() {
        assert_eq!(
            verdict(&[("store", Ok(())), ("alarm engine", Ok(()))]),
            Verdict::Feed
        );
        assert_eq!(
            verdict(&[
                ("store", Ok(())),
                ("alarm engine", Err(PingFailure::NoAnswer))
            ]),
            Verdict::Withhold("alarm engine: no answer".into())
        );
        assert_eq!(
            verdict(&[
                ("store", Err(PingFailure::Stopped)),
                ("alarm engine", Err(PingFailure::NoAnswer))
            ]),
            Verdict::Withhold("store: stopped, alarm engine: no answer".into())
        );
    }

    #[test]
    fn pings_come_four_times_per_interval() {
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_millis(7500)
        );
        assert_eq!(
            ping_period(Duration::from_micros(2)),
            Duration::from_millis(1)
        );
    }

    /// An actor whose handler blocks its thread until told to go on: a wedged actor.
    struct Wedged(mpsc::Receiver<()>);

    impl Actor for Wedged {
        type Context = Context<Self>;
    }

    impl Handler<Ping> for Wedged {
        type Result = ();

        fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Block;

    impl Handler<Block> for Wedged {
        type Result = ();

        fn handle(&mut self, _: Block, _: &mut Self::Context) {
            let _ = self.0.recv();
        }
    }

    #[actix::test]
    async fn a_wedged_actor_gets_no_watchdog_and_a_live_one_does() {
        let (go_on, wait) = mpsc::channel();
        let arbiter = Arbiter::new();
        let addr = Wedged::start_in_arbiter(&arbiter.handle(), move |_| Wedged(wait));
        let within = Duration::from_millis(200);
        assert_eq!(ping(&addr, within).await, Ok(()));

        addr.do_send(Block);
        let answer = ping(&addr, within).await;
        assert_eq!(answer, Err(PingFailure::NoAnswer));
        assert!(matches!(
            verdict(&[("alarm engine", answer)]),
            Verdict::Withhold(_)
        ));

        go_on.send(()).unwrap();
        assert_eq!(ping(&addr, Duration::from_secs(5)).await, Ok(()));

        arbiter.stop();
        arbiter.join().unwrap();
        assert_eq!(ping(&addr, within).await, Err(PingFailure::Stopped));
    }

    #[test]
    fn limits_and_capabilities_are_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95524                95524                processes \n\
                      Max open files            2048                 524288               files     \n";
        assert_eq!(open_files_limit(limits), Some(2048));
        assert_eq!(open_files_limit("Max processes 1 1 processes"), None);
        assert!(can_bind_service(
            "Name:\ticu-gateway\nCapEff:\t0000000000000400\n"
        ));
        assert!(!can_bind_service("CapEff:\t0000000000000000\n"));
        assert!(can_bind_service("CapEff:\t000001ffffffffff\n"));
    }

    #[test]
    fn the_packaged_config_fits_the_units_file_limit() {
        let text = include_str!("../../packaging/gateway.toml");
        let config = Config::from_toml(text, std::path::Path::new("/etc/icu-gateway/gateway.toml"))
            .expect("the packaged gateway.toml is valid");
        let unit = include_str!("../../packaging/icu-gateway.service");
        let limit: u64 = unit
            .lines()
            .find_map(|l| l.strip_prefix("LimitNOFILE="))
            .expect("the unit sets LimitNOFILE")
            .trim()
            .parse()
            .unwrap();
        // The unit's comment counts 64 devices.
        let needed = files_needed(&config) - config.devices.len() as u64 + 64;
        assert_eq!(needed, 1120, "the sum in the unit's comment");
        assert!(needed <= limit, "{needed} > LimitNOFILE={limit}");
        assert!(low_ports(&config, 1024).is_empty());
        assert_eq!(
            config.data_dir,
            std::path::Path::new("/var/lib/icu-gateway")
        );
    }
}
