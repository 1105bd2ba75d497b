//! Cross-crate tests against real services.

mod s3;
