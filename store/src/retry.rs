//! The retry schedule (with its log) every etcd loop shares.

use std::{
    fmt::Display,
    hash::{BuildHasher, Hasher},
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

/// When an etcd operation that keeps failing is tried again, and what is
/// logged about it. Waits double from [`Retry::MIN`] to [`Retry::MAX`],
/// each spread by up to 25% either way so that the agents of a whole
/// fleet do not all come back to a recovering etcd in the same instant.
/// The first failure is a warning, then one warning a minute at most
/// while the failures last (the others are debug lines), and an info line
/// when the operation works again.
#[derive(Debug)]
pub struct Retry {
    what: &'static str,
    /// Retried at its own pace: only the log is this type's business.
    paced: bool,
    delay: Duration,
    failing_since: Option<Instant>,
    failures: u64,
    last_logged: Option<Instant>,
}

impl Retry {
    pub const MIN: Duration = Duration::from_millis(200);
    pub const MAX: Duration = Duration::from_secs(5);
    /// At most one warning this often while an operation keeps failing.
    pub const LOG_EVERY: Duration = Duration::from_secs(60);

    /// `what` names the operation at the start of its log lines ("etcd
    /// session", "mesh watch").
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            paced: false,
            delay: Self::MIN,
            failing_since: None,
            failures: 0,
            last_logged: None,
        }
    }

    /// A [`Retry`] for an operation repeated at its own pace (a periodic
    /// task): the same log, no waits.
    pub fn log_only(what: &'static str) -> Self {
        Self {
            paced: true,
            ..Self::new(what)
        }
    }

    /// Records a failure and logs it when due; returns how long to wait
    /// before the next attempt.
    pub fn failed(&mut self, error: &dyn Display) -> Duration {
        let now = Instant::now();
        let since = *self.failing_since.get_or_insert(now);
        self.failures += 1;
        let wait = jitter(self.delay);
        self.delay = (self.delay * 2).min(Self::MAX);
        let what = self.what;
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_EVERY);
        if !due {
            debug!("{what}: {error}; retrying in {wait:.1?}");
        } else if self.failures == 1 && self.paced {
            warn!("{what}: {error}; one warning a minute until it works");
            self.last_logged = Some(now);
        } else if self.failures == 1 {
            warn!(
                "{what}: {error}; retrying in {wait:.1?} (backing off up to {:?}, \
                 then one warning a minute until it works)",
                Self::MAX
            );
            self.last_logged = Some(now);
        } else {
            warn!(
                "{what}: still failing after {:.0?} ({} attempts): {error}",
                now.duration_since(since),
                self.failures
            );
            self.last_logged = Some(now);
        }
        wait
    }

    /// Records a success; after failures, logs how long they lasted and
    /// returns it.
    pub fn succeeded(&mut self) -> Option<Duration> {
        self.delay = Self::MIN;
        let since = self.failing_since.take()?;
        let lasted = since.elapsed();
        info!(
            "{}: working again after {lasted:.1?} ({} failed attempts)",
            self.what, self.failures
        );
        self.failures = 0;
        self.last_logged = None;
        Some(lasted)
    }

    /// The next wait is the shortest again (etcd was seen answering), the
    /// failure goes on for the log.
    pub fn hurry(&mut self) {
        self.delay = Self::MIN;
    }

    /// True while the operation is failing.
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

/// `delay` spread uniformly over 75%..125% of itself.
fn jitter(delay: Duration) -> Duration {
    let mut hasher = std::hash::RandomState::new().build_hasher();
    hasher.write_u128(delay.as_nanos());
    let unit = (hasher.finish() % 10_001) as f64 / 10_000.0;
    delay.mul_f64(0.75 + unit / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_with_jitter_up_to_the_cap_and_reset_on_success() {
        let mut retry = Retry::new("test");
        let waits: Vec<Duration> = (0..10).map(|_| retry.failed(&"down")).collect();
        let nominal = [200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000, 5000];
        for (wait, nominal) in waits.iter().zip(nominal) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *wait >= nominal.mul_f64(0.75) && *wait <= nominal.mul_f64(1.25),
                "{wait:?} is not within 25% of {nominal:?}"
            );
        }
        assert!(retry.failing());
        assert!(retry.succeeded().is_some());
        assert!(!retry.failing());
        assert_eq!(retry.succeeded(), None, "nothing to report twice");
        for _ in 0..5 {
            retry.failed(&"down");
        }
        retry.hurry();
        assert!(retry.failing(), "still failing after hurry");
        let wait = retry.failed(&"down");
        assert!(wait <= Retry::MIN.mul_f64(1.25), "{wait:?}: not hurried");
        retry.succeeded();
        let wait = retry.failed(&"down again");
        assert!(wait <= Retry::MIN.mul_f64(1.25), "{wait:?}: not reset");
    }

    #[test]
    fn jitter_spreads_equal_delays() {
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| jitter(Duration::from_secs(5))).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
