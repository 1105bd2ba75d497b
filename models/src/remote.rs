//! Remote embedding models: an OpenAI-compatible `/v1/embeddings` endpoint or a KServe v2
//! `/v2/models/{name}/infer` endpoint, called by the workers of a [`ServicePool`](alluvium_core::ServicePool) like a local model.
//!
//! ```no_run
//! # fn demo() -> alluvium_core::Result<()> {
//! use alluvium_models::{Embed, Endpoint};
//! let endpoint = Endpoint::openai("https://api.openai.com", "text-embedding-3-small")
//!     .api_key_env("OPENAI_API_KEY")
//!     .requests_per_minute(3000)
//!     .tokens_per_minute(1_000_000);
//! let stage = Embed::remote(endpoint).column("text").workers(4, 8).build("embed")?;
//! # Ok(()) }
//! ```
//!
//! * **Errors.** Whose failure it is, the endpoint's or the rows', says what the pool does:
//!   * 408, 425, 429, 500, 502, 503, 504, refused or dropped connections, timeouts and TLS errors
//!     are the *endpoint's* (transient): retried with backoff, never sooner than the server's
//!     `Retry-After` (seconds or an HTTP date) or `retry-after-ms` (believed up to the pool's
//!     `max_retry_after`, 60 s); when a call's retries are spent the endpoint is down and the stage
//!     waits for it, holding its input, up to `outage_timeout` — no row becomes a dead letter for
//!     an outage (see [`alluvium_core::service::outage`]);
//!   * 401, 403 and 404 are *fatal*: no row can succeed with a rejected key or an unknown model, so
//!     the pipeline stops with a config error saying which key to fix;
//!   * any other 4xx, and an answer that cannot be decoded, are the *rows'* (permanent): the pool
//!     splits the batch to find the rows the server rejects, and those become dead letters with the
//!     server's message.
//! * **Secrets.** Header values (an API key) come from the environment (`api_key_env`,
//!   `header_env`) or from code; they are marked sensitive, never printed by `Debug`, and never part
//!   of an error or a log line: a server that echoes them back (an `Authorization` header quoted in
//!   its error body) has them replaced by `***` in every message the stage stores or prints, dead
//!   letters included. URLs lose any `user:password@` before they appear in a message.
//! * **Rate limits.** `requests_per_minute` and `tokens_per_minute` are token buckets shared by
//!   every worker of the stage: a call waits until both allow it. A call's tokens are estimated
//!   before it (4 bytes a token, the usual rule for English) and corrected with the `usage` the
//!   server reports.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use alluvium_core::arrow::array::{Array, ArrayRef};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::service::{Service, ServiceError};
use alluvium_core::types::embedding_array;
use alluvium_core::{Error, Result};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::embed::{texts_of, wrong_column};

/// The wire protocol of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `POST {url}/v1/embeddings` with `{"model", "input": [..]}` (OpenAI, vLLM, TEI, Ollama, …).
    OpenAi,
    /// `POST {url}/v2/models/{model}/infer` with one BYTES input tensor (KServe, Triton, Seldon).
    KServe,
}

impl Protocol {
    /// `openai` or `kserve`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "openai" => Ok(Self::OpenAi),
            "kserve" | "kserve-v2" | "v2" => Ok(Self::KServe),
            other => Err(Error::config(format!("protocol `{other}` is not known; use `openai` or `kserve`"))),
        }
    }
}

/// A header value: given in code, or read from an environment variable when the stage starts.
#[derive(Clone)]
enum Value {
    Given(String),
    Env { var: String, prefix: &'static str },
}

/// A remote embedding model. See the module docs.
#[derive(Clone)]
pub struct Endpoint {
    protocol: Protocol,
    url: String,
    model: String,
    input: String,
    headers: Vec<(String, Value)>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u32>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("protocol", &self.protocol)
            .field("url", &redact_url(&self.url))
            .field("model", &self.model)
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An OpenAI-compatible endpoint at `url` (the part before `/v1/embeddings`) serving `model`.
    pub fn openai(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self::new(Protocol::OpenAi, url, model)
    }
    /// A KServe v2 endpoint at `url` (the part before `/v2/models/…`) serving `model`.
    pub fn kserve(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self::new(Protocol::KServe, url, model)
    }
    /// An endpoint speaking `protocol`.
    pub fn new(protocol: Protocol, url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            protocol,
            url: url.into().trim_end_matches('/').to_string(),
            model: model.into(),
            input: "text".into(),
            headers: Vec::new(),
            requests_per_minute: None,
            tokens_per_minute: None,
        }
    }
    /// Sends `Authorization: Bearer $VAR`, read from the environment when the stage starts.
    pub fn api_key_env(self, var: impl Into<String>) -> Self {
        self.with_header("authorization", Value::Env { var: var.into(), prefix: "Bearer " })
    }
    /// Sends header `name` with the value of the environment variable `var`.
    pub fn header_env(self, name: impl Into<String>, var: impl Into<String>) -> Self {
        self.with_header(name, Value::Env { var: var.into(), prefix: "" })
    }
    /// Sends header `name: value` (kept out of logs and errors like any header).
    pub fn header(self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_header(name, Value::Given(value.into()))
    }
    fn with_header(mut self, name: impl Into<String>, value: Value) -> Self {
        self.headers.push((name.into().to_ascii_lowercase(), value));
        self
    }
    /// The KServe input tensor's name (`text`).
    pub fn input_name(mut self, name: impl Into<String>) -> Self {
        self.input = name.into();
        self
    }
    /// Calls per minute at most, over every worker of the stage.
    pub fn requests_per_minute(mut self, n: u32) -> Self {
        self.requests_per_minute = Some(n);
        self
    }
    /// Input tokens per minute at most, over every worker of the stage.
    pub fn tokens_per_minute(mut self, n: u32) -> Self {
        self.tokens_per_minute = Some(n);
        self
    }
    /// The model's name, as sent to the endpoint.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Checks the settings and reads the secrets: the client every worker of a stage shares.
    pub fn connect(&self) -> Result<RemoteModel> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Error::config(format!("endpoint url `{}` is not an http:// or https:// URL", redact_url(&self.url))));
        }
        if self.model.is_empty() {
            return Err(Error::config("endpoint: `model` is empty; name the model the endpoint serves"));
        }
        for (key, n) in [("requests_per_minute", self.requests_per_minute), ("tokens_per_minute", self.tokens_per_minute)] {
            if n == Some(0) {
                return Err(Error::config(format!("`{key}` is 0; leave it out for no limit")));
            }
        }
        let mut headers = HeaderMap::new();
        let mut secrets: Vec<String> = Vec::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::config(format!("header name `{name}` is not a valid HTTP header name")))?;
            let text = match value {
                Value::Given(v) => v.clone(),
                Value::Env { var, prefix } => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => format!("{prefix}{v}"),
                    _ => {
                        return Err(Error::config(format!(
                            "the environment variable `{var}` (for header `{name}`) is not set; export it before the job starts"
                        )))
                    }
                },
            };
            // The value, and the key without its `Bearer ` prefix: hidden wherever a server echoes them.
            let raw = match value {
                Value::Env { prefix, .. } => text.strip_prefix(*prefix).unwrap_or(&text).to_string(),
                Value::Given(v) => v.clone(),
            };
            // Keys also go to the process's list, so that no error or log line anywhere shows them.
            let key = matches!(value, Value::Env { .. })
                || ["authorization", "key", "token", "secret"].iter().any(|k| name.contains(k));
            for secret in [text.trim().to_string(), raw.trim().to_string()] {
                if secret.len() >= MIN_SECRET_CHARS && !secrets.contains(&secret) {
                    if key {
                        alluvium_core::error::register_secret(&secret);
                    }
                    secrets.push(secret);
                }
            }
            let mut v = HeaderValue::from_str(&text)
                .map_err(|_| Error::config(format!("the value of header `{name}` has characters HTTP does not allow")))?;
            v.set_sensitive(true);
            headers.insert(header, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            // A redirect is never followed: the key would go where the job file does not say.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::config(format!("cannot make an HTTP client: {}", e.without_url())))?;
        let path = match self.protocol {
            Protocol::OpenAi => "/v1/embeddings".to_string(),
            Protocol::KServe => format!(
                "/v2/models/{}/infer",
                percent_encoding::utf8_percent_encode(&self.model, percent_encoding::NON_ALPHANUMERIC)
            ),
        };
        Ok(RemoteModel {
            endpoint: self.clone(),
            target: format!("{}{path}", self.url),
            shown: format!("{}{path}", redact_url(&self.url)),
            http,
            limit: RateLimit::new(self.requests_per_minute, self.tokens_per_minute),
            dimensions: OnceLock::new(),
            secrets: {
                // Longest first, so that a value holding another is hidden whole.
                secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
                secrets
            },
        })
    }
}

/// Header values shorter than this are not looked for in messages (hiding them would hide words).
const MIN_SECRET_CHARS: usize = 4;

/// `url` without `user:password@`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

/// A connected endpoint: a [`Service`] answering text rows with embeddings.
pub struct RemoteModel {
    endpoint: Endpoint,
    target: String,
    shown: String,
    http: reqwest::Client,
    limit: RateLimit,
    dimensions: OnceLock<usize>,
    /// The header values (API keys) sent, to hide wherever a server echoes them.
    secrets: Vec<String>,
}

#[derive(Serialize)]
struct OpenAiRequest<'a> {
    model: &'a str,
    input: &'a [&'a str],
    encoding_format: &'static str,
}

#[derive(Deserialize)]
struct OpenAiResponse {
    data: Vec<OpenAiEmbedding>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct OpenAiEmbedding {
    index: usize,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

/// A KServe v2 tensor, as sent and as answered.
#[derive(Serialize, Deserialize)]
pub(crate) struct Tensor<T> {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    pub data: Vec<T>,
}

#[derive(Serialize)]
struct KServeRequest<'a> {
    inputs: [Tensor<&'a str>; 1],
}

#[derive(Deserialize)]
struct KServeResponse {
    outputs: Vec<Tensor<f32>>,
}

impl RemoteModel {
    /// The endpoint this client calls.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Embeds `texts`: `texts.len() × dimensions` floats and the dimensions. The error's message
    /// never holds a header value sent (an API key), even when the server quotes it.
    pub async fn embed_texts(&self, texts: &[&str]) -> std::result::Result<(Vec<f32>, usize), ServiceError> {
        self.post(texts).await.map_err(|e| self.scrub(e))
    }

    /// `message` without the header values sent (each replaced by `***`), credentials in URLs, or
    /// any other registered secret ([`alluvium_core::error::redact`]).
    pub fn scrub_message(&self, message: &str) -> String {
        let mut text = message.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        alluvium_core::error::redact(&text)
    }

    fn scrub(&self, mut e: ServiceError) -> ServiceError {
        e.message = self.scrub_message(&e.message);
        e
    }

    async fn post(&self, texts: &[&str]) -> std::result::Result<(Vec<f32>, usize), ServiceError> {
        let estimate = texts.iter().map(|t| t.len().div_ceil(4).max(1) as u64).sum();
        self.limit.acquire(estimate).await;
        let body = match self.endpoint.protocol {
            Protocol::OpenAi => {
                serde_json::to_vec(&OpenAiRequest { model: &self.endpoint.model, input: texts, encoding_format: "float" })
            }
            Protocol::KServe => serde_json::to_vec(&KServeRequest {
                inputs: [Tensor {
                    name: self.endpoint.input.clone(),
                    shape: vec![texts.len() as i64],
                    datatype: "BYTES".into(),
                    data: texts.to_vec(),
                }],
            }),
        }
        .map_err(|e| ServiceError::permanent(format!("cannot encode the request: {e}")))?;
        let response = self
            .http
            .post(&self.target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| ServiceError::transient(format!("{}: {}", self.shown, e.without_url())))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes =
            response.bytes().await.map_err(|e| ServiceError::transient(format!("{}: {}", self.shown, e.without_url())))?;
        if !status.is_success() {
            return Err(status_error(&self.shown, status, &headers, &bytes, &self.endpoint));
        }
        let unreadable = |e: serde_json::Error| {
            ServiceError::permanent(format!("{} answered {status} with a body that is not the expected JSON: {e}", self.shown))
        };
        let (values, dims, used) = match self.endpoint.protocol {
            Protocol::OpenAi => {
                let mut r: OpenAiResponse = serde_json::from_slice(&bytes).map_err(unreadable)?;
                r.data.sort_by_key(|d| d.index);
                let dims = r.data.first().map_or(0, |d| d.embedding.len());
                if r.data.len() != texts.len()
                    || r.data.iter().enumerate().any(|(i, d)| d.index != i || d.embedding.len() != dims)
                {
                    return Err(ServiceError::permanent(format!(
                        "{} answered {} embeddings of mixed sizes or indices for {} inputs",
                        self.shown,
                        r.data.len(),
                        texts.len()
                    )));
                }
                let used = r.usage.and_then(|u| u.total_tokens.or(u.prompt_tokens));
                (r.data.into_iter().flat_map(|d| d.embedding).collect::<Vec<f32>>(), dims, used)
            }
            Protocol::KServe => {
                let r: KServeResponse = serde_json::from_slice(&bytes).map_err(unreadable)?;
                let Some(t) = r.outputs.into_iter().next() else {
                    return Err(ServiceError::permanent(format!("{} answered no output tensor", self.shown)));
                };
                let dims = t.shape.get(1).copied().unwrap_or(0).max(0) as usize;
                if t.datatype != "FP32" || t.shape.first() != Some(&(texts.len() as i64)) || t.data.len() != texts.len() * dims {
                    return Err(ServiceError::permanent(format!(
                        "{} answered a {} tensor of shape {:?} with {} values for {} inputs; want FP32 [{}, d]",
                        self.shown,
                        t.datatype,
                        t.shape,
                        t.data.len(),
                        texts.len(),
                        texts.len()
                    )));
                }
                (t.data, dims, None)
            }
        };
        if let Some(used) = used {
            self.limit.settle(estimate, used);
        }
        let expected = *self.dimensions.get_or_init(|| dims);
        if dims != expected || dims == 0 {
            return Err(ServiceError::permanent(format!("{} answered {dims}-d vectors after {expected}-d ones", self.shown)));
        }
        Ok((values, dims))
    }
}

#[async_trait]
impl Service for RemoteModel {
    async fn call(&self, requests: RecordBatch) -> std::result::Result<ArrayRef, ServiceError> {
        let column = requests.column(0);
        let texts = texts_of(column).ok_or_else(|| {
            wrong_column(format!(
                "model `{}` at {} embeds text (Utf8), not {}",
                self.endpoint.model,
                self.shown,
                column.data_type()
            ))
        })?;
        let (values, dims) = self.embed_texts(&texts).await?;
        let array = embedding_array(dims, values).map_err(|e| ServiceError::permanent(e.to_string()))?;
        Ok(Arc::new(array))
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.shown.clone())
    }
}

/// What an HTTP error status means for the rows of the call. See the module docs.
pub fn status_error(shown: &str, status: StatusCode, headers: &HeaderMap, body: &[u8], endpoint: &Endpoint) -> ServiceError {
    let said = server_message(body);
    let message = format!("{shown} answered {status}{said}");
    match status.as_u16() {
        408 | 425 | 429 | 500 | 502 | 503 | 504 => ServiceError::transient(message).retry_after(retry_after(headers)),
        401 | 403 => {
            let keys: Vec<String> = endpoint
                .headers
                .iter()
                .filter_map(|(_, v)| match v {
                    Value::Env { var, .. } => Some(format!("`{var}`")),
                    Value::Given(_) => None,
                })
                .collect();
            let fix = if keys.is_empty() {
                "the endpoint wants credentials: set `api_key_env` to the variable holding the key".to_string()
            } else {
                format!("check the key in {}", keys.join(", "))
            };
            ServiceError::fatal(format!("{message}: {fix}"))
        }
        404 => ServiceError::fatal(format!("{message}: check `url` and `model` (`{}`)", endpoint.model)),
        300..=399 => {
            // The target as an absolute address (a `Location` may be relative to the endpoint).
            let to = match headers.get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()) {
                Some(l) => alluvium_core::error::redact(
                    &reqwest::Url::parse(shown).and_then(|base| base.join(l)).map_or_else(|_| l.to_string(), |u| u.to_string()),
                ),
                None => "an address it does not give (no Location header)".to_string(),
            };
            ServiceError::fatal(format!(
                "{message}, a redirect to {to}: redirects are not followed (the key would go where the job file does not \
                 say); point `url` at the final address"
            ))
        }
        _ => ServiceError::permanent(message),
    }
}

/// The server's own words from an error body: `error.message`, `error` or the text, in at most 300
/// characters.
fn server_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => v
            .pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("detail"))
            .map(|m| m.as_str().map(str::to_string).unwrap_or_else(|| m.to_string()))
            .unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    };
    if text.is_empty() {
        return String::new();
    }
    let cut: String = text.chars().take(300).collect();
    format!(": {cut}{}", if cut.len() < text.len() { "…" } else { "" })
}

/// The wait a server asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).filter(|ms| ms.is_finite() && *ms >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = get("retry-after")?;
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(3600.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default().min(Duration::from_secs(3600)))
}

/// Requests and tokens per minute, as token buckets shared by the workers of a stage. Each bucket
/// holds up to a tenth of a minute's allowance; a call may overdraw the token bucket (one long
/// input must still go), and the next waits until it is paid back.
pub struct RateLimit {
    requests: Option<f64>,
    tokens: Option<f64>,
    state: Mutex<Buckets>,
}

struct Buckets {
    requests: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// Buckets for these limits per minute (`None`: no limit).
    pub fn new(requests_per_minute: Option<u32>, tokens_per_minute: Option<u32>) -> Self {
        let requests = requests_per_minute.map(|n| n as f64 / 60.0);
        let tokens = tokens_per_minute.map(|n| n as f64 / 60.0);
        let state = Buckets {
            requests: requests.map_or(0.0, |r| Self::capacity(r).max(1.0)),
            tokens: tokens.map_or(0.0, Self::capacity),
            at: Instant::now(),
        };
        Self { requests, tokens, state: Mutex::new(state) }
    }

    fn capacity(per_second: f64) -> f64 {
        per_second * 6.0
    }

    /// Waits until one more call of `tokens` tokens is allowed, and takes it.
    pub async fn acquire(&self, tokens: u64) {
        loop {
            let wait = {
                let mut b = self.state.lock().expect("rate limit");
                let now = Instant::now();
                let dt = now.duration_since(b.at).as_secs_f64();
                b.at = now;
                if let Some(r) = self.requests {
                    b.requests = (b.requests + r * dt).min(Self::capacity(r).max(1.0));
                }
                if let Some(t) = self.tokens {
                    b.tokens = (b.tokens + t * dt).min(Self::capacity(t));
                }
                let need_requests = self.requests.map_or(0.0, |r| ((1.0 - b.requests) / r).max(0.0));
                let need_tokens = self.tokens.map_or(0.0, |t| (-b.tokens / t).max(0.0));
                let wait = need_requests.max(need_tokens);
                if wait <= 0.0 {
                    b.requests -= 1.0;
                    b.tokens -= tokens as f64;
                    return;
                }
                wait
            };
            tokio::time::sleep(Duration::from_secs_f64(wait).max(Duration::from_millis(1))).await;
        }
    }

    /// Corrects the token bucket once the server says how many tokens a call used.
    pub fn settle(&self, estimated: u64, used: u64) {
        if self.tokens.is_some() {
            self.state.lock().expect("rate limit").tokens += estimated as f64 - used as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_ms_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert("retry-after", HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        h.remove("retry-after-ms");
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_transient_permanent_or_fatal() {
        let e = Endpoint::openai("http://u:p@h:1", "m").api_key_env("MY_KEY");
        let h = HeaderMap::new();
        for s in [408, 429, 500, 502, 503, 504] {
            let err = status_error("x", StatusCode::from_u16(s).unwrap(), &h, b"", &e);
            assert!(err.transient && !err.fatal, "{s}");
        }
        let err = status_error("x", StatusCode::UNAUTHORIZED, &h, br#"{"error":{"message":"bad key"}}"#, &e);
        assert!(err.fatal && err.message.contains("`MY_KEY`") && err.message.contains("bad key"), "{}", err.message);
        assert!(status_error("x", StatusCode::NOT_FOUND, &h, b"", &e).fatal);
        let mut moved = HeaderMap::new();
        moved.insert(reqwest::header::LOCATION, "http://169.254.169.254/latest/meta-data/".parse().unwrap());
        let err = status_error("x", StatusCode::FOUND, &moved, b"", &e);
        assert!(err.fatal && err.message.contains("169.254.169.254") && err.message.contains("point `url`"), "{err:?}");
        // A relative Location is shown as the address it leads to; one with credentials without them.
        moved.insert(reqwest::header::LOCATION, "/v2/embeddings".parse().unwrap());
        let err = status_error("http://h:1/v1/embeddings", StatusCode::PERMANENT_REDIRECT, &moved, b"", &e);
        assert!(err.fatal && err.message.contains("a redirect to http://h:1/v2/embeddings:"), "{err:?}");
        moved.insert(reqwest::header::LOCATION, "https://user:hunter22@other.example/v1".parse().unwrap());
        let err = status_error("x", StatusCode::MOVED_PERMANENTLY, &moved, b"", &e);
        assert!(err.fatal && !err.message.contains("hunter22") && err.message.contains("other.example"), "{err:?}");
        let err = status_error("x", StatusCode::BAD_REQUEST, &h, "é".repeat(400).as_bytes(), &e);
        assert!(!err.transient && !err.fatal && err.message.ends_with('…'), "{}", err.message);
        assert_eq!(redact_url("http://user:secret@host:8/a/b"), "http://host:8/a/b");
        assert!(!format!("{e:?}").contains(":p@"), "{e:?}");
    }

    #[test]
    fn settings_are_checked_and_secrets_come_from_the_environment() {
        let missing = Endpoint::openai("http://127.0.0.1:1", "m").api_key_env("ALLUVIUM_TEST_UNSET_KEY").connect().err().unwrap();
        assert!(missing.to_string().contains("`ALLUVIUM_TEST_UNSET_KEY`"), "{missing}");
        let bad = Endpoint::openai("ftp://x", "m").connect().err().unwrap();
        assert!(bad.to_string().contains("http://"), "{bad}");
        let zero = Endpoint::kserve("http://x", "m").tokens_per_minute(0).connect().err().unwrap();
        assert!(zero.to_string().contains("tokens_per_minute"), "{zero}");
        let bad_value = Endpoint::openai("http://x", "m").header("x-key", "secret\nvalue").connect().err().unwrap();
        assert!(!bad_value.to_string().contains("secret"), "{bad_value}");
    }

    #[test]
    fn header_values_sent_are_hidden_in_every_message() {
        std::env::set_var("ALLUVIUM_TEST_SCRUB_KEY", "sk-scrub-0123456789");
        let model = Endpoint::openai("http://u:pw@127.0.0.1:1", "m")
            .api_key_env("ALLUVIUM_TEST_SCRUB_KEY")
            .header("x-team", "t1")
            .connect()
            .unwrap();
        let echoed = r#"answered 400: {"headers": {"authorization": "Bearer sk-scrub-0123456789"}} from http://u:pw@h/x"#;
        let shown = model.scrub_message(echoed);
        assert!(!shown.contains("sk-scrub") && shown.contains("***"), "{shown}");
        assert!(!shown.contains(":pw@"), "{shown}");
        // Too short to hide without hiding words.
        assert_eq!(model.scrub_message("t1 is fine"), "t1 is fine");
        assert_eq!(Service::endpoint(&model).unwrap(), "http://127.0.0.1:1/v1/embeddings");
    }

    #[tokio::test(start_paused = true)]
    async fn request_limit_spaces_calls_after_a_burst() {
        // 600 a minute: 10 a second, 60 at once.
        let limit = RateLimit::new(Some(600), None);
        let start = Instant::now();
        for _ in 0..100 {
            limit.acquire(1).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((3.9..4.2).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn token_limit_lets_a_long_call_overdraw_then_waits_and_settles() {
        // 6000 tokens a minute: 100 a second, 600 at once.
        let limit = RateLimit::new(None, Some(6000));
        let start = Instant::now();
        for _ in 0..10 {
            limit.acquire(200).await;
        }
        // 4 calls go at once (600, 400, 200, 0 left), then one every 2 s.
        let took = start.elapsed().as_secs_f64();
        assert!((11.9..12.2).contains(&took), "{took}");
        // The server says the last call used 400 tokens, not 200: the next waits 2 s more.
        limit.settle(200, 400);
        let before = Instant::now();
        limit.acquire(1).await;
        let waited = before.elapsed().as_secs_f64();
        assert!((3.9..4.2).contains(&waited), "{waited}");
    }
}
