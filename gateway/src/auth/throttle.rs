//! Login throttling: every login (and PIN) attempt spends a token from two `governor` buckets,
//! one per account name and one per source address. An empty bucket refuses the attempt
//! (429 with `Retry-After`) before any password is checked, so guessing is slow whatever the
//! guesser varies. The defaults: 5 attempts at once per account then one a minute; 20 per
//! address then one every 6 s. Buckets of quiet keys are forgotten, so the memory a stream of
//! made-up names costs stays bounded.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Throttle settings, from `[auth]`.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    pub per_account_burst: u32,
    pub per_account_period: Duration,
    pub per_address_burst: u32,
    pub per_address_period: Duration,
}

pub struct LoginThrottle {
    accounts: DefaultKeyedRateLimiter<String>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn quota(burst: u32, period: Duration) -> Quota {
    let burst = NonZeroU32::new(burst.max(1)).expect("at least one");
    Quota::with_period(period.max(Duration::from_millis(1)))
        .expect("a non-zero period")
        .allow_burst(burst)
}

impl LoginThrottle {
    pub fn new(s: ThrottleSettings) -> Self {
        Self {
            accounts: RateLimiter::keyed(quota(s.per_account_burst, s.per_account_period)),
            addresses: RateLimiter::keyed(quota(s.per_address_burst, s.per_address_period)),
            clock: DefaultClock::default(),
        }
    }

    /// Spends one attempt for this account and address; Err says how long to wait.
    pub fn attempt(&self, account: &str, addr: IpAddr) -> Result<(), Duration> {
        if self.addresses.len() > 10_000 {
            self.addresses.retain_recent();
        }
        if self.accounts.len() > 10_000 {
            self.accounts.retain_recent();
        }
        let now = self.clock.now();
        self.addresses
            .check_key(&addr)
            .map_err(|n| n.wait_time_from(now))?;
        // Names are compared as the accounts table stores them; an over-long name is one key.
        let key: String = account.chars().take(64).collect();
        self.accounts
            .check_key(&key)
            .map_err(|n| n.wait_time_from(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_past_the_burst_are_refused_per_account_and_per_address() {
        let t = LoginThrottle::new(ThrottleSettings {
            per_account_burst: 3,
            per_account_period: Duration::from_secs(60),
            per_address_burst: 5,
            per_address_period: Duration::from_secs(60),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            t.attempt("alice", a).unwrap();
        }
        let wait = t.attempt("alice", b).unwrap_err();
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        // Another account from the first address still has address budget (5 - 3 - 0).
        t.attempt("bob", a).unwrap();
        t.attempt("carol", a).unwrap();
        // The address is now spent, whatever name it tries.
        assert!(t.attempt("dave", a).is_err());
    }
}
