//! The commands of the `alluvium` binary beyond `run` and `validate`, one module each.

pub mod backfill;
pub mod checkpoints;
pub mod inspect;
pub mod metrics;
pub mod progress;
