//! Cross-crate tests against real services.

mod faults;
mod s3;

/// `Location::parse(uri)` with the variables `env` set. `object_store` reads the `AWS_*`
/// variables while it builds a store, and under `cargo test` the tests of this binary run on
/// threads of one process: the variables are set and read under one lock, so that no test builds
/// its store from another test's server or keys.
fn location(env: &[(String, String)], uri: &str) -> alluvium_core::store::Location {
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _only_us = ENV.lock().unwrap_or_else(|e| e.into_inner());
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    alluvium_core::store::Location::parse(uri).unwrap()
}
