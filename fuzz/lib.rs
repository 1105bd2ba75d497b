//! The fuzz targets' bodies ([`targets`]), for the binaries in `fuzz_targets/`.
#[path = "targets.rs"]
pub mod targets;
