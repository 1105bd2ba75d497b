//! Settings of object IO, as they appear in a job file (`[io]`), validated without IO.
//!
//! ```toml
//! [io]
//! max_concurrency = 32             # requests in flight per store (bucket or host)
//! max_retries = 5                  # per request, with exponential backoff and jitter
//! retry_timeout = "3m"
//! request_timeout = "30s"          # one request, e.g. a hung connection
//! s3 = { endpoint = "http://127.0.0.1:9000", allow_http = "true", region = "us-east-1" }
//!
//! [io.access]
//! file_roots = ["/data/images"]    # file:// refs must stay inside these
//! http_allow_hosts = ["images.example.com"]
//! allow_private_networks = false   # loopback, link-local and private addresses
//! ```
//!
//! Credentials are best left to the environment (`AWS_ACCESS_KEY_ID`, …) or to `${VAR}` references in
//! the job file; they never appear in logs or errors.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::access::AccessPolicy;

/// Settings of the registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Requests in flight per store (default 32).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Retries per request on throttling, 5xx and timeouts (default 5).
    #[serde(default = "default_retries")]
    pub max_retries: usize,
    /// Give up retrying a request after this long (default 3 minutes).
    #[serde(default = "default_retry_timeout", with = "duration")]
    pub retry_timeout: Duration,
    /// Time out one request (a hung connection) after this long (default 30 seconds).
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// `object_store` options for S3 (`endpoint`, `region`, `allow_http`, `access_key_id`, …).
    #[serde(default)]
    pub s3: BTreeMap<String, String>,
    /// Options for Google Cloud Storage (`service_account_path`, …).
    #[serde(default)]
    pub gcs: BTreeMap<String, String>,
    /// Options for Azure (`account_name`, `access_key`, …).
    #[serde(default)]
    pub azure: BTreeMap<String, String>,
    /// Which references may be read.
    #[serde(default)]
    pub access: AccessPolicy,
}

fn default_concurrency() -> usize {
    32
}
fn default_retries() -> usize {
    5
}
fn default_retry_timeout() -> Duration {
    Duration::from_secs(180)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_concurrency: default_concurrency(),
            max_retries: default_retries(),
            retry_timeout: default_retry_timeout(),
            request_timeout: default_request_timeout(),
            s3: BTreeMap::new(),
            gcs: BTreeMap::new(),
            azure: BTreeMap::new(),
            access: AccessPolicy::default(),
        }
    }
}

impl StoreConfig {
    /// Checks the settings without IO: every store option must be a key `object_store` knows.
    pub fn validate(&self) -> alluvium_core::Result<()> {
        use std::str::FromStr;
        let unknown = |section: &str, key: &str, known: &str| {
            alluvium_core::Error::config(format!("[io.{section}] has an unknown key `{key}`; valid keys include {known}"))
        };
        for k in self.s3.keys() {
            object_store::aws::AmazonS3ConfigKey::from_str(k)
                .map_err(|_| unknown("s3", k, "endpoint, region, allow_http, access_key_id, secret_access_key"))?;
        }
        for k in self.gcs.keys() {
            object_store::gcp::GoogleConfigKey::from_str(k)
                .map_err(|_| unknown("gcs", k, "service_account_path, service_account_key"))?;
        }
        for k in self.azure.keys() {
            object_store::azure::AzureConfigKey::from_str(k)
                .map_err(|_| unknown("azure", k, "account_name, access_key, use_emulator"))?;
        }
        if self.max_concurrency == 0 {
            return Err(alluvium_core::Error::config("[io] max_concurrency is 0; set it to 1 or more"));
        }
        Ok(())
    }
}

mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime_like(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a duration; write e.g. \"30s\" or \"3m\"")))
    }

    fn humantime_like(s: &str) -> Option<Duration> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
        let n: u64 = num.parse().ok()?;
        Some(match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return None,
        })
    }
}
