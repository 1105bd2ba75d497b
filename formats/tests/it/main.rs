//! Format stages on real media generated at test time.

mod images;
#[cfg(feature = "video")]
mod video;
