//! Store failures and budget refusals in the audit trail. The store counts them (it sits below
//! the gateway and knows nothing of the trail); this task reads its counters every second and
//! writes one entry when refusals or failures start, one per minute while they go on (with the
//! counts), and one when they stop, so a disk-full hour is a handful of entries, not millions.
//! The entries go through the same trail (its rows are small and the budget's reserve leaves it
//! room); an entry that cannot be written is logged.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Action, AuditEntry, AuditLog, Outcome, TargetKind};
use crate::store::StoreStats;

/// One kind of trouble being watched.
struct Episode {
    action: Action,
    last_count: u64,
    open: bool,
    last_written: Option<std::time::Instant>,
}

impl Episode {
    fn new(action: Action, count: u64) -> Self {
        Self {
            action,
            last_count: count,
            open: false,
            last_written: None,
        }
    }

    /// What to write, given the counter now.
    fn step(&mut self, count: u64, now: std::time::Instant, detail: &str) -> Option<AuditEntry> {
        let new = count.saturating_sub(self.last_count);
        self.last_count = count;
        let entry = |outcome: Outcome, reason: String| {
            Some(
                AuditEntry::new(self.action)
                    .target(TargetKind::Store, "")
                    .values(None, Some(format!("{count} in all")))
                    .outcome(outcome)
                    .reason(reason),
            )
        };
        if new > 0 && !self.open {
            self.open = true;
            self.last_written = Some(now);
            return entry(
                Outcome::Failed,
                format!("started: {new} refused in the last second; {detail}"),
            );
        }
        if new > 0
            && self
                .last_written
                .is_some_and(|t| now - t >= Duration::from_secs(60))
        {
            self.last_written = Some(now);
            return entry(
                Outcome::Failed,
                format!("going on: {new} in the last second; {detail}"),
            );
        }
        if new == 0 && self.open {
            self.open = false;
            return entry(Outcome::Success, "stopped: none in the last second".into());
        }
        None
    }
}

/// Watches the store's counters for as long as the actor system runs.
pub(super) fn start(stats: Arc<StoreStats>, audit: Arc<AuditLog>) {
    actix::spawn(async move {
        let budget = stats.requests_refused_budget.load(Relaxed);
        let failed = stats.requests_failed.load(Relaxed);
        let mut refusals = Episode::new(Action::BudgetRefusal, budget);
        let mut failures = Episode::new(Action::StoreFailure, failed.saturating_sub(budget));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = std::time::Instant::now();
            let budget = stats.requests_refused_budget.load(Relaxed);
            let other = stats.requests_failed.load(Relaxed).saturating_sub(budget);
            let used = stats.used_bytes.load(Relaxed);
            let of = stats.budget_bytes.load(Relaxed);
            let detail = format!("{used} of {of} bytes in use");
            let entries: Vec<AuditEntry> = [
                refusals.step(budget, now, &detail),
                failures.step(other, now, "the store could not write"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if entries.is_empty() {
                continue;
            }
            let log = audit.clone();
            let written = tokio::task::spawn_blocking(move || {
                entries
                    .into_iter()
                    .try_for_each(|e| log.append(e).map(|_| ()))
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::error!(
                    "the audit trail could not record a store failure or budget refusal"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_is_written_when_it_starts_each_minute_and_when_it_stops() {
        let t0 = std::time::Instant::now();
        let mut e = Episode::new(Action::BudgetRefusal, 5);
        assert!(e.step(5, t0, "").is_none());
        let start = e.step(90, t0 + Duration::from_secs(1), "x").unwrap();
        assert_eq!(start.outcome, Outcome::Failed);
        assert!(start.reason.unwrap().contains("started: 85"));
        for s in 2..60 {
            assert!(e.step(90 + s, t0 + Duration::from_secs(s), "x").is_none());
        }
        let going = e.step(200, t0 + Duration::from_secs(61), "x").unwrap();
        assert!(going.reason.unwrap().starts_with("going on"));
        let stop = e.step(200, t0 + Duration::from_secs(62), "x").unwrap();
        assert_eq!(stop.outcome, Outcome::Success);
        assert!(e.step(200, t0 + Duration::from_secs(63), "x").is_none());
    }
}
