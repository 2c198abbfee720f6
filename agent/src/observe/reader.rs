//! Takes flow events off the ring buffer (as drops arrive, and every
//! 200 ms for sampled forwards) and hands them to the agent in batches, at
//! most `per_second` a second. Events over that
//! are still read (so the ring keeps room for drops) but only counted:
//! a flood costs the agent a counter, never its loop.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use dataplane_common::FlowEvent;
use prometheus_client::metrics::counter::Counter;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use crate::datapath::EventReader;

/// Events taken off the ring per batch at most.
const BATCH: usize = 1024;
/// How often events that woke nobody are collected.
const QUIET_EVERY: Duration = Duration::from_millis(200);

pub async fn run(
    reader: EventReader,
    per_second: Arc<AtomicU32>,
    batches: mpsc::Sender<Vec<FlowEvent>>,
    rate_limited: Counter,
) {
    // SAFETY: the reader owns the ring's descriptor, and the AsyncFd owns
    // the reader: the descriptor stays open and the same while registered.
    let mut ring = match unsafe { AsyncFd::register(reader) } {
        Ok(ring) => ring,
        Err(error) => {
            let error = error.into_parts().1;
            warn!("cannot watch the flow event ring buffer ({error}); no flow events");
            return;
        }
    };
    let mut limit = Limit::new(per_second);
    loop {
        // Drops wake this task; sampled forwards do not (a wake-up costs
        // the datapath more than the event), so they are also collected
        // every QUIET_EVERY.
        match tokio::time::timeout(QUIET_EVERY, ring.readable_mut()).await {
            Ok(Ok(mut guard)) => {
                if !pass_on(guard.get_inner_mut(), &mut limit, &batches, &rate_limited) {
                    return;
                }
                guard.clear_ready();
            }
            Ok(Err(_)) => return,
            Err(_) => {
                if !pass_on(ring.get_mut(), &mut limit, &batches, &rate_limited) {
                    return;
                }
            }
        }
    }
}

/// At most `per_second` events in each one-second window (the limit can
/// change while running: a fleet revision may set it).
struct Limit {
    per_second: Arc<AtomicU32>,
    window: Instant,
    budget: usize,
}

impl Limit {
    fn new(per_second: Arc<AtomicU32>) -> Self {
        let budget = per_second.load(Ordering::Relaxed) as usize;
        Self {
            per_second,
            window: Instant::now(),
            budget,
        }
    }

    /// How many of `n` events may pass now.
    fn take(&mut self, n: usize) -> usize {
        if self.window.elapsed() >= Duration::from_secs(1) {
            self.window = Instant::now();
            self.budget = self.per_second.load(Ordering::Relaxed) as usize;
        }
        let allowed = n.min(self.budget);
        self.budget -= allowed;
        allowed
    }
}

/// Empties the ring, passing on what the limit allows and counting the
/// rest; false once the agent stopped listening.
fn pass_on(
    reader: &mut EventReader,
    limit: &mut Limit,
    batches: &mpsc::Sender<Vec<FlowEvent>>,
    rate_limited: &Counter,
) -> bool {
    loop {
        let mut events = reader.drain(BATCH);
        let drained = events.len();
        let allowed = limit.take(drained);
        rate_limited.inc_by((drained - allowed) as u64);
        events.truncate(allowed);
        if !events.is_empty() {
            let count = events.len() as u64;
            match batches.try_send(events) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    rate_limited.inc_by(count);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        if drained < BATCH {
            return true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_passes_a_second_s_worth_then_counts() {
        let mut limit = Limit::new(Arc::new(AtomicU32::new(100)));
        assert_eq!(limit.take(60), 60);
        assert_eq!(limit.take(60), 40);
        assert_eq!(limit.take(10), 0);
        limit.window -= Duration::from_secs(1);
        assert_eq!(limit.take(10), 10, "a new window");
    }
}
