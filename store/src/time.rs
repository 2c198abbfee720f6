//! Wall-clock times as Unix seconds, as records, documents and reports
//! carry them.

use std::time::{SystemTime, UNIX_EPOCH};

/// `time` in seconds since the Unix epoch (0 before it).
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    unix_seconds(SystemTime::now())
}
