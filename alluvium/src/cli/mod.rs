//! The commands of the `alluvium` binary beyond `run` and `validate`, one module each.

pub mod backfill;
pub mod bench;
pub mod checkpoints;
pub mod inspect;
pub mod metrics;
pub mod progress;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-01T06:00:00Z`: how the commands print a time.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A time given in ms since the Unix epoch (as checkpoints and tables record it), as [`rfc3339`].
pub fn rfc3339_ms(ms: i64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}
