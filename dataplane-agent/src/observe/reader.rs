//! Takes flow events off the ring buffer as they arrive and hands them to
//! the agent in batches, at most `per_second` a second. Events over that
//! are still read (so the ring keeps room for drops) but only counted:
//! a flood costs the agent a counter, never its loop.

use std::time::{Duration, Instant};

use dataplane_common::FlowEvent;
use prometheus_client::metrics::counter::Counter;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::warn;

use crate::datapath::EventReader;

/// Events taken off the ring per wake-up at most.
const BATCH: usize = 1024;

pub async fn run(
    reader: EventReader,
    per_second: u32,
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
    let mut window = Instant::now();
    let mut budget = per_second as usize;
    loop {
        let Ok(mut guard) = ring.readable_mut().await else {
            return;
        };
        loop {
            let mut events = guard.get_inner_mut().drain(BATCH);
            let drained = events.len();
            if window.elapsed() >= Duration::from_secs(1) {
                window = Instant::now();
                budget = per_second as usize;
            }
            if events.len() > budget {
                rate_limited.inc_by((events.len() - budget) as u64);
                events.truncate(budget);
            }
            budget -= events.len();
            if !events.is_empty() {
                let count = events.len() as u64;
                match batches.try_send(events) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        rate_limited.inc_by(count);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            if drained < BATCH {
                break;
            }
        }
        guard.clear_ready();
    }
}
