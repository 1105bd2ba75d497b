//! The S3 calls `object_store` does not make, through `aws-sdk-s3`: the versions of the objects
//! under a prefix (`ListObjectVersions`, for a versioned bucket read as of a time) and the tags of
//! an object (`GetObjectTagging`, for tags as columns).
//!
//! A [`S3Api`] is configured from the same settings as the registry's S3 store (`[io.s3]` over the
//! `AWS_*` environment): endpoint, region, path or virtual-hosted style, retries, the request
//! timeout, and the credentials, which come from `object_store`'s own provider (static keys,
//! session tokens, web identity, ECS or instance metadata alike), so the two clients can never
//! disagree on who is asking.
//!
//! A server that does not implement a call (many S3-compatible servers lack versions or tags)
//! answers `NotImplemented`; that is a config error naming the call and the server, never a
//! dead letter per object.

use std::sync::Arc;

use alluvium_core::error::redact;
use alluvium_core::{Error, Result};
use aws_credential_types::provider::{self, ProvideCredentials};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredentialProvider};

use crate::inventory::{choose, Row};

/// A client for one bucket. Cheap to clone.
#[derive(Clone, Debug)]
pub struct S3Api {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Where requests go, for errors (`AWS` when not set).
    server: String,
}

/// `object_store`'s credential provider, lent to the SDK.
#[derive(Debug)]
struct Credentials(AwsCredentialProvider);

impl ProvideCredentials for Credentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let c = self.0.get_credential().await.map_err(provider::error::CredentialsError::provider_error)?;
            Ok(aws_credential_types::Credentials::new(&c.key_id, &c.secret_key, c.token.clone(), None, "alluvium"))
        })
    }
}

/// The outcome of a call that failed: the server lacks it, the object is not there, or another
/// error.
enum Failed {
    Gone,
    Other(Error),
}

impl S3Api {
    /// A client configured like `builder` (the registry's S3 store for `bucket`, before it is
    /// built), with `retries` retries and `timeout` per attempt.
    pub(crate) fn new(builder: AmazonS3Builder, bucket: &str, retries: usize, timeout: std::time::Duration) -> Result<Self> {
        let value = |k| builder.get_config_value(&k).filter(|v| !v.is_empty());
        let endpoint = value(AmazonS3ConfigKey::Endpoint);
        let virtual_hosted = value(AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v == "true");
        let anonymous = value(AmazonS3ConfigKey::SkipSignature).is_some_and(|v| v == "true");
        let region = value(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let mut config = aws_sdk_s3::Config::builder()
            .region(aws_sdk_s3::config::Region::new(region))
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(retries as u32 + 1))
            .timeout_config(aws_sdk_s3::config::timeout::TimeoutConfig::builder().operation_attempt_timeout(timeout).build());
        if let Some(e) = &endpoint {
            config = config.endpoint_url(e).force_path_style(!virtual_hosted);
        }
        if anonymous {
            config = config.allow_no_auth();
        } else {
            let store = builder
                .build()
                .map_err(|e| Error::config(format!("cannot configure S3 for bucket `{bucket}`")).with_source(e))?;
            config = config.credentials_provider(Credentials(store.credentials().clone()));
        }
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: bucket.to_string(),
            server: endpoint.map(|e| redact(&e)).unwrap_or_else(|| "AWS".into()),
        })
    }

    /// Sorts a failed call: a server without it is a config error that says what needs it.
    fn failed<E, R>(&self, call: &str, needed_by: &str, err: SdkError<E, R>) -> Failed
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let code = err.code().map(str::to_string);
        match code.as_deref() {
            Some("NoSuchKey" | "NoSuchVersion") => Failed::Gone,
            Some("NotImplemented") => Failed::Other(Error::config(format!(
                "the S3 server at {} does not implement {call}, which {needed_by} needs",
                self.server
            ))),
            Some("AccessDenied") => Failed::Other(Error::config(format!(
                "S3 refused {call} on bucket `{}` (AccessDenied): {needed_by} needs the s3:{call} permission",
                self.bucket
            ))),
            _ => {
                let retryable = matches!(err, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_));
                Failed::Other(
                    Error::external(format!("S3 {call} on bucket `{}` failed: {}", self.bucket, DisplayErrorContext(&err)))
                        .with_retryable(retryable),
                )
            }
        }
    }

    /// The tags of `key` (at `version`, when given), in the order S3 returns them; `None` if the
    /// object (or that version) is gone.
    pub(crate) async fn tags(&self, key: &str, version: Option<&str>) -> Result<Option<Vec<(String, String)>>> {
        let got =
            self.client.get_object_tagging().bucket(&self.bucket).key(key).set_version_id(version.map(Into::into)).send().await;
        match got {
            Ok(out) => Ok(Some(out.tag_set().iter().map(|t| (t.key().to_string(), t.value().to_string())).collect())),
            Err(err) => match self.failed("GetObjectTagging", "objects source `tags`", err) {
                Failed::Gone => Ok(None),
                Failed::Other(e) => Err(e),
            },
        }
    }

    /// Every version and delete marker of the keys under `prefix` (after the key `after`, when
    /// given), in key order, the versions of a key newest first, a page at a time.
    pub(crate) fn versions(&self, prefix: &str, after: Option<&str>) -> BoxStream<'static, Result<Vec<Row>>> {
        let this = self.clone();
        let prefix = Arc::<str>::from(prefix);
        let start = (after.map(str::to_string), None::<String>);
        futures::stream::try_unfold(Some(start), move |markers| {
            let (this, prefix) = (this.clone(), prefix.clone());
            async move {
                let Some((key_marker, version_marker)) = markers else { return Ok(None) };
                let page = this
                    .client
                    .list_object_versions()
                    .bucket(&this.bucket)
                    .prefix(prefix.as_ref())
                    .set_key_marker(key_marker)
                    .set_version_id_marker(version_marker)
                    .send()
                    .await
                    .map_err(|err| match this.failed("ListObjectVersions", "objects source `as_of`", err) {
                        Failed::Gone => Error::config(format!("S3 bucket `{}` does not exist", this.bucket)),
                        Failed::Other(e) => e,
                    })?;
                let time = |t: Option<&aws_sdk_s3::primitives::DateTime>| t.and_then(|t| t.to_millis().ok()).map(|ms| ms * 1000);
                let mut rows: Vec<Row> = page
                    .versions()
                    .iter()
                    .map(|v| Row {
                        key: v.key().unwrap_or_default().to_string(),
                        version: v.version_id().map(str::to_string),
                        latest: v.is_latest().unwrap_or(false),
                        delete_marker: false,
                        size: v.size().unwrap_or(0).max(0) as u64,
                        modified_us: time(v.last_modified()),
                        etag: v.e_tag().map(str::to_string),
                    })
                    .chain(page.delete_markers().iter().map(|d| Row {
                        key: d.key().unwrap_or_default().to_string(),
                        version: d.version_id().map(str::to_string),
                        latest: d.is_latest().unwrap_or(false),
                        delete_marker: true,
                        size: 0,
                        modified_us: time(d.last_modified()),
                        etag: None,
                    }))
                    .collect();
                // Versions and delete markers come in two lists, each a key's newest first;
                // merged the same way (a stable sort keeps the listed order within a tick).
                rows.sort_by(|a, b| a.key.cmp(&b.key).then(b.modified_us.cmp(&a.modified_us)));
                let next = match page.is_truncated() {
                    Some(true) => {
                        let next =
                            (page.next_key_marker().map(str::to_string), page.next_version_id_marker().map(str::to_string));
                        if next.0.is_none() {
                            return Err(Error::external(format!(
                                "S3 ListObjectVersions on bucket `{}` is truncated but names no next key",
                                this.bucket
                            )));
                        }
                        Some(next)
                    }
                    _ => None,
                };
                Ok(Some((rows, next)))
            }
        })
        .boxed()
    }

    /// The objects under `prefix` (after the key `after`) as they were at `as_of_us` (µs): each
    /// key's newest version then, unless that was a delete marker, in key order. A key's versions
    /// may span pages; a key is decided once all of them were seen.
    pub(crate) fn as_of(&self, prefix: &str, after: Option<&str>, as_of_us: i64) -> BoxStream<'static, Result<Row>> {
        let pages = self.versions(prefix, after);
        futures::stream::try_unfold(Some((pages, Vec::<Row>::new())), move |state| async move {
            let Some((mut pages, mut group)) = state else { return Ok::<_, Error>(None) };
            let Some(rows) = pages.try_next().await? else {
                // The last key.
                return Ok(Some((choose(group, Some(as_of_us)).into_iter().collect(), None)));
            };
            let mut chosen = Vec::new();
            for row in rows {
                if group.first().is_some_and(|g| g.key != row.key) {
                    chosen.extend(choose(std::mem::take(&mut group), Some(as_of_us)));
                }
                group.push(row);
            }
            Ok(Some((chosen, Some((pages, group)))))
        })
        .map_ok(|rows: Vec<Row>| futures::stream::iter(rows.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }
}
