//! Cross-crate tests against real services.

mod faults;
mod s3;
