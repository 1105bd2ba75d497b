//! The object-store registry: an explicit value that maps a URI to a store and a path.
//!
//! Stores are built on first use and kept per bucket, container or host (`s3://bucket`,
//! `https://host:port`), wrapped in a concurrency limit, with `object_store`'s retry policy
//! (exponential backoff with jitter on throttling, 5xx and timeouts, up to `max_retries` and
//! `retry_timeout`). S3, GCS and Azure read the usual environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), then the options of [`StoreConfig`]. Every reference is checked
//! against the [`AccessPolicy`](crate::AccessPolicy) first.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use alluvium_core::error::redact;
use alluvium_core::{Error, Result};
use object_store::limit::LimitStore;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig};
use url::Url;

use crate::config::StoreConfig;
use crate::s3::S3Api;

/// Resolves URIs to stores. Cheap to share (`Arc`).
pub struct ObjectStoreRegistry {
    config: StoreConfig,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    s3_apis: Mutex<HashMap<String, S3Api>>,
}

impl std::fmt::Debug for ObjectStoreRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStoreRegistry({} stores)", self.stores.lock().map(|s| s.len()).unwrap_or(0))
    }
}

/// Why a reference cannot be resolved: refused by the policy, or a bad/unsupported URI. Both are
/// properties of the row (dead letters), never of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl Default for ObjectStoreRegistry {
    fn default() -> Self {
        Self::new(StoreConfig::default())
    }
}

impl ObjectStoreRegistry {
    /// A registry with `config`.
    pub fn new(config: StoreConfig) -> Self {
        Self { config, stores: Mutex::new(HashMap::new()), s3_apis: Mutex::new(HashMap::new()) }
    }

    /// The settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: self.config.max_retries,
            retry_timeout: self.config.retry_timeout,
        }
    }

    /// The request timeout as a client config value (set as a key, so that the client options a
    /// builder read from the environment, such as `AWS_ALLOW_HTTP`, are kept).
    fn timeout(&self) -> String {
        format!("{}ms", self.config.request_timeout.as_millis())
    }

    fn cached(&self, key: &str, build: impl FnOnce() -> Result<Arc<dyn ObjectStore>>) -> Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.lock().expect("registry lock");
        if let Some(s) = stores.get(key) {
            return Ok(s.clone());
        }
        let store: Arc<dyn ObjectStore> = Arc::new(LimitStore::new(build()?, self.config.max_concurrency.max(1)));
        stores.insert(key.to_string(), store.clone());
        Ok(store)
    }

    /// The settings of the S3 store of `bucket`: the environment, then `[io.s3]`.
    fn s3_builder(&self, bucket: &str) -> Result<object_store::aws::AmazonS3Builder> {
        let mut b = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(self.retry())
            .with_config(object_store::aws::AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), self.timeout());
        for (k, v) in &self.config.s3 {
            let key = object_store::aws::AmazonS3ConfigKey::from_str(k).map_err(|_| {
                Error::config(format!(
                    "[io.s3] has an unknown key `{k}`; see object_store's AmazonS3ConfigKey (endpoint, region, allow_http, access_key_id, …)"
                ))
            })?;
            b = b.with_config(key, v);
        }
        Ok(b)
    }

    /// The S3 calls `object_store` does not make (versions, tags) on `bucket`, configured like
    /// its store. Built once per bucket.
    pub fn s3_api(&self, bucket: &str) -> Result<S3Api> {
        let mut apis = self.s3_apis.lock().expect("registry lock");
        if let Some(api) = apis.get(bucket) {
            return Ok(api.clone());
        }
        let api = S3Api::new(self.s3_builder(bucket)?, bucket, self.config.max_retries, self.config.request_timeout)?;
        apis.insert(bucket.to_string(), api.clone());
        Ok(api)
    }

    /// The store and path of `uri`, after the access policy allowed it. `Ok(Err(refused))` for a
    /// reference this policy or this build cannot read; `Err` for a misconfigured registry.
    pub async fn resolve(&self, uri: &str) -> Result<std::result::Result<(Arc<dyn ObjectStore>, Path), Refused>> {
        let refused = |m: String| Ok(Err(Refused(m)));
        let Ok(url) = Url::parse(uri) else { return refused(format!("`{}` is not a URI", redact(uri))) };
        let bucket = || url.host_str().unwrap_or_default().to_string();
        // The bucket (container) is checked before any store is built or request signed.
        if let Some(named) = crate::access::bucket_of(&url) {
            if let Err(m) = self.config.access.check_bucket(url.scheme(), &named) {
                return refused(m);
            }
        }
        let path = || Path::from_url_path(url.path()).map_err(|e| Refused(format!("bad path: {e}")));
        match url.scheme() {
            "file" => {
                let Ok(p) = url.to_file_path() else { return refused("not a valid file:// URI".into()) };
                let real = match self.config.access.check_file(&p) {
                    Ok(r) => r,
                    Err(m) => return refused(m),
                };
                let store = self.cached("file", || Ok(Arc::new(object_store::local::LocalFileSystem::new())))?;
                let path = match Path::from_absolute_path(&real) {
                    Ok(p) => p,
                    Err(e) => return refused(format!("bad path: {e}")),
                };
                Ok(Ok((store, path)))
            }
            "s3" | "s3a" => {
                let store =
                    self.cached(&format!("s3://{}", bucket()), || {
                        Ok(Arc::new(self.s3_builder(&bucket())?.build().map_err(|e| {
                            Error::config(format!("cannot configure S3 for bucket `{}`", bucket())).with_source(e)
                        })?))
                    })?;
                Ok(path().map(|p| (store, p)))
            }
            "gs" => {
                let store =
                    self.cached(&format!("gs://{}", bucket()), || {
                        let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                            .with_bucket_name(bucket())
                            .with_retry(self.retry())
                            .with_config(object_store::gcp::GoogleConfigKey::Client(ClientConfigKey::Timeout), self.timeout());
                        for (k, v) in &self.config.gcs {
                            let key = object_store::gcp::GoogleConfigKey::from_str(k).map_err(|_| {
                                Error::config(format!("[io.gcs] has an unknown key `{k}`; see object_store's GoogleConfigKey"))
                            })?;
                            b = b.with_config(key, v);
                        }
                        Ok(Arc::new(b.build().map_err(|e| {
                            Error::config(format!("cannot configure GCS for bucket `{}`", bucket())).with_source(e)
                        })?))
                    })?;
                Ok(path().map(|p| (store, p)))
            }
            "az" | "azure" | "abfs" | "abfss" => {
                // One store per container and account: `abfss://a@acct…` and `abfss://b@acct…` are
                // two containers (`object_store` takes the container from the URL it is built with).
                let key = match (url.scheme(), url.username()) {
                    ("az" | "abfs" | "abfss", container) if !container.is_empty() => {
                        format!("az://{container}@{}", bucket())
                    }
                    _ => format!("az://{}", bucket()),
                };
                let store = self.cached(&key, || {
                    let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(uri)
                        .with_retry(self.retry())
                        .with_config(object_store::azure::AzureConfigKey::Client(ClientConfigKey::Timeout), self.timeout());
                    for (k, v) in &self.config.azure {
                        let key = object_store::azure::AzureConfigKey::from_str(k).map_err(|_| {
                            Error::config(format!("[io.azure] has an unknown key `{k}`; see object_store's AzureConfigKey"))
                        })?;
                        b = b.with_config(key, v);
                    }
                    Ok(Arc::new(b.build().map_err(|e| Error::config("cannot configure Azure").with_source(e))?))
                })?;
                Ok(path().map(|p| (store, p)))
            }
            "http" | "https" => {
                if let Err(m) = self.config.access.check_http(&url).await {
                    return refused(m);
                }
                let base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
                let base = match url.port() {
                    Some(p) => format!("{base}:{p}"),
                    None => base,
                };
                let store = self.cached(&base, || {
                    let b = object_store::http::HttpBuilder::new()
                        .with_url(base.clone())
                        .with_retry(self.retry())
                        .with_client_options(
                            ClientOptions::new()
                                .with_allow_http(url.scheme() == "http")
                                .with_timeout(self.config.request_timeout),
                        )
                        // Every redirect hop and every resolved address is checked too.
                        .with_http_connector(crate::access::GuardedConnector {
                            policy: self.config.access.clone(),
                            timeout: self.config.request_timeout,
                        });
                    Ok(Arc::new(b.build().map_err(|e| Error::config(format!("cannot reach `{base}`")).with_source(e))?))
                })?;
                Ok(path().map(|p| (store, p)))
            }
            other => refused(format!("scheme `{other}://` is not supported; use s3, gs, az, http(s) or file")),
        }
    }
}
