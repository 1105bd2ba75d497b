//! A model server: a local [`EmbeddingModel`] behind the two protocols the remote stages speak,
//! so that they have a real endpoint on 127.0.0.1 (`alluvium serve-model`, and the tests).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/embeddings` | OpenAI: `{"model", "input": "…" or ["…", …]}` → `{"data": [{"index", "embedding"}], "usage"}` |
//! | `GET /v1/models` | OpenAI: the model served |
//! | `POST /v2/models/{name}/infer` | KServe v2: one BYTES input tensor `[n]` → one FP32 output tensor `embedding` `[n, d]` |
//! | `GET /v2/models/{name}` | KServe v2 model metadata |
//! | `GET /v2/health/ready`, `/v2/health/live`, `/v2/models/{name}/ready` | readiness |
//! | `GET /metrics` | Prometheus text: requests, rows, rejections, peak requests in flight |
//!
//! * **Concurrency.** The model's weights load once; `workers` requests run on it at a time, each
//!   on tokio's blocking pool. At most `max_pending` requests wait or run; more are turned away
//!   with `503` and `Retry-After: 1`, which a client retries.
//! * **Errors.** A body that is not the protocol's JSON, or an empty input string, is `400` with
//!   the reason; an unknown model is `404`; a missing or wrong API key (when `api_key` is set) is
//!   `401`.
//! * **Fault injection, for testing clients.** `inject(status, every)` answers every Nth request
//!   with that status (and `Retry-After: 1` for 429 and 503) before it reaches the model.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use alluvium_core::arrow::array::StringArray;
use alluvium_core::{Error, Result};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{oneshot, Semaphore};

use crate::embed::EmbeddingModel;
use crate::remote::Tensor;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen (`127.0.0.1:8080`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The model's name in requests (by default the model's name, or its directory's name when it
    /// was given as a path).
    pub name: Option<String>,
    /// Requests computed at a time (1).
    pub workers: usize,
    /// Requests waiting or running at most; more get 503 (64).
    pub max_pending: usize,
    /// When set, requests must carry `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
    /// Answers every `.1`th request with status `.0`, for testing clients.
    pub inject: Option<(u16, u64)>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            name: None,
            workers: 1,
            max_pending: 64,
            api_key: None,
            inject: None,
        }
    }
}

impl ServeOptions {
    /// Answers every `every`th request with `status` before it reaches the model.
    pub fn inject(mut self, status: u16, every: u64) -> Self {
        self.inject = Some((status, every));
        self
    }
}

/// What the server has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Requests received (all routes that embed).
    pub requests: u64,
    /// Inputs embedded.
    pub rows: u64,
    /// Requests answered with an error (injected ones included).
    pub rejected: u64,
    /// Requests in the model now.
    pub in_flight: u64,
    /// The most requests in the model at once.
    pub peak_in_flight: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    rows: AtomicU64,
    rejected: AtomicU64,
    pending: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

struct Shared {
    model: Arc<dyn EmbeddingModel>,
    name: String,
    options: ServeOptions,
    compute: Semaphore,
    counters: Counters,
}

/// A running server. Dropping it stops it.
pub struct ModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ModelServer {
    /// Starts serving `model`; returns once the socket listens.
    pub async fn start(model: Arc<dyn EmbeddingModel>, options: ServeOptions) -> Result<Self> {
        if options.workers == 0 || options.max_pending == 0 {
            return Err(Error::config("serve-model: `workers` and `max_pending` must be at least 1"));
        }
        if let Some((status, every)) = options.inject {
            if every == 0 || StatusCode::from_u16(status).is_err() {
                return Err(Error::config("serve-model: inject needs an HTTP status and an interval of at least 1"));
            }
        }
        // A model given as a path is served under its directory's name.
        let name = options.name.clone().unwrap_or_else(|| {
            let full = &model.info().name;
            std::path::Path::new(full).file_name().map_or(full.clone(), |n| n.to_string_lossy().into_owned())
        });
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| Error::config(format!("serve-model: cannot listen on {}: {e}", options.listen)))?;
        let addr = listener.local_addr().map_err(|e| Error::external(format!("serve-model: {e}")))?;
        let shared =
            Arc::new(Shared { model, name, compute: Semaphore::new(options.workers), options, counters: Counters::default() });
        let app = Router::new()
            .route("/v1/embeddings", post(openai))
            .route("/v1/models", get(models))
            .route("/v2/models/{name}/infer", post(kserve))
            .route("/v2/models/{name}", get(metadata))
            .route("/v2/models/{name}/ready", get(model_ready))
            .route("/v2/health/ready", get(|| async { StatusCode::OK }))
            .route("/v2/health/live", get(|| async { StatusCode::OK }))
            .route("/metrics", get(metrics))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(model = %shared.name, %addr, workers = shared.options.workers, "serving the model");
        Ok(Self { addr, shared, stop: Some(stop), task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://ADDR`, the `url` of an endpoint for it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The model's name in requests.
    pub fn model_name(&self) -> &str {
        &self.shared.name
    }
    /// What it has done so far.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            requests: c.requests.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
            peak_in_flight: c.peak_in_flight.load(Ordering::Relaxed),
        }
    }
    /// Stops taking connections, finishes the requests it has, and returns.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(r) => r.map_err(|e| Error::external(format!("serve-model: {e}"))),
            Err(e) => Err(Error::internal(format!("serve-model: {e}"))),
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An error answer: the status and the message in the protocol's shape.
struct Refusal {
    status: StatusCode,
    message: String,
    openai: bool,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = if self.openai {
            let kind = if self.status.is_server_error() { "server_error" } else { "invalid_request_error" };
            json!({"error": {"message": self.message, "type": kind}})
        } else {
            json!({"error": self.message})
        };
        let mut r = (self.status, Json(body)).into_response();
        if matches!(self.status.as_u16(), 429 | 503) {
            r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
        }
        r
    }
}

impl Shared {
    fn refuse(&self, status: StatusCode, message: impl Into<String>, openai: bool) -> Refusal {
        self.counters.rejected.fetch_add(1, Ordering::Relaxed);
        Refusal { status, message: message.into(), openai }
    }

    /// Checks the key, the injected faults and the load; then embeds `texts`, and for the OpenAI
    /// protocol counts their tokens (its `usage`), both on the blocking pool.
    async fn embed(
        &self,
        headers: &HeaderMap,
        model: &str,
        texts: Vec<String>,
        openai: bool,
    ) -> Result<(Vec<f32>, Option<usize>), Refusal> {
        let c = &self.counters;
        let n = c.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(key) = &self.options.api_key {
            let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if given != Some(key.as_str()) {
                return Err(self.refuse(StatusCode::UNAUTHORIZED, "a missing or wrong API key", openai));
            }
        }
        if model != self.name {
            return Err(self.refuse(
                StatusCode::NOT_FOUND,
                format!("no model `{model}` here; this server has `{}`", self.name),
                openai,
            ));
        }
        if let Some((status, every)) = self.options.inject {
            if n.is_multiple_of(every) {
                let status = StatusCode::from_u16(status).expect("checked at start");
                return Err(self.refuse(status, format!("injected failure (every {every}th request)"), openai));
            }
        }
        if let Some(i) = texts.iter().position(|t| t.is_empty()) {
            return Err(self.refuse(StatusCode::BAD_REQUEST, format!("input {i} is an empty string"), openai));
        }
        let pending = PendingGuard::enter(c);
        if pending.0 > self.options.max_pending as u64 {
            return Err(self.refuse(StatusCode::SERVICE_UNAVAILABLE, "the server is busy; retry", openai));
        }
        let _permit = self.compute.acquire().await.expect("never closed");
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        let rows = texts.len() as u64;
        let model = self.model.clone();
        let result = tokio::task::spawn_blocking(move || {
            let tokens = openai.then(|| model.count_tokens(&texts.iter().map(String::as_str).collect::<Vec<_>>())).flatten();
            model.embed(&StringArray::from(texts)).map(|v| (v, tokens))
        })
        .await;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok(v)) => {
                c.rows.fetch_add(rows, Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => Err(self.refuse(StatusCode::BAD_REQUEST, e.to_string(), openai)),
            Err(e) => Err(self.refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("the model panicked: {e}"), openai)),
        }
    }
}

/// Counts a request as pending while it lives.
struct PendingGuard<'a>(u64, &'a Counters);

impl<'a> PendingGuard<'a> {
    fn enter(c: &'a Counters) -> Self {
        Self(c.pending.fetch_add(1, Ordering::Relaxed) + 1, c)
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.1.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Deserialize)]
struct OpenAiRequest {
    model: String,
    input: OneOrMany,
    #[serde(default)]
    encoding_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn parse<T: serde::de::DeserializeOwned>(shared: &Shared, body: &[u8], openai: bool) -> Result<T, Refusal> {
    serde_json::from_slice(body)
        .map_err(|e| shared.refuse(StatusCode::BAD_REQUEST, format!("the body is not a valid request: {e}"), openai))
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Response, Refusal> {
    let r: OpenAiRequest = parse(&shared, &body, true)?;
    if r.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(shared.refuse(StatusCode::BAD_REQUEST, "only `encoding_format: \"float\"` is served", true));
    }
    let texts = match r.input {
        OneOrMany::One(t) => vec![t],
        OneOrMany::Many(v) => v,
    };
    let n = texts.len();
    let (values, tokens) = shared.embed(&headers, &r.model, texts, true).await?;
    let dims = shared.model.info().dimensions;
    let data: Vec<serde_json::Value> =
        (0..n).map(|i| json!({"object": "embedding", "index": i, "embedding": &values[i * dims..(i + 1) * dims]})).collect();
    let mut body = json!({"object": "list", "data": data, "model": shared.name});
    if let Some(t) = tokens {
        body["usage"] = json!({"prompt_tokens": t, "total_tokens": t});
    }
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct KServeRequest {
    #[serde(default)]
    id: Option<String>,
    inputs: Vec<Tensor<String>>,
}

async fn kserve(
    State(shared): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    let r: KServeRequest = parse(&shared, &body, false)?;
    let [input] = <[Tensor<String>; 1]>::try_from(r.inputs)
        .map_err(|v| shared.refuse(StatusCode::BAD_REQUEST, format!("want one input tensor, got {}", v.len()), false))?;
    if input.datatype != "BYTES" || input.shape.len() != 1 || input.shape[0] != input.data.len() as i64 {
        return Err(shared.refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "want a BYTES tensor of shape [n] with n strings, got {} {:?} with {}",
                input.datatype,
                input.shape,
                input.data.len()
            ),
            false,
        ));
    }
    let n = input.data.len();
    let (values, _) = shared.embed(&headers, &model, input.data, false).await?;
    let dims = shared.model.info().dimensions;
    let mut body = json!({
        "model_name": shared.name,
        "outputs": [{"name": "embedding", "shape": [n, dims], "datatype": "FP32", "data": values}],
    });
    if let Some(id) = r.id {
        body["id"] = json!(id);
    }
    Ok(Json(body).into_response())
}

async fn models(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [{"id": shared.name, "object": "model", "owned_by": "alluvium"}]}))
}

async fn metadata(State(shared): State<Arc<Shared>>, Path(model): Path<String>) -> Result<Json<serde_json::Value>, StatusCode> {
    if model != shared.name {
        return Err(StatusCode::NOT_FOUND);
    }
    let dims = shared.model.info().dimensions;
    Ok(Json(json!({
        "name": shared.name,
        "platform": "alluvium",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dims]}],
    })))
}

async fn model_ready(State(shared): State<Arc<Shared>>, Path(model): Path<String>) -> StatusCode {
    if model == shared.name {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> String {
    let c = &shared.counters;
    let mut out = String::new();
    for (name, help, v) in [
        ("requests_total", "Embedding requests received.", &c.requests),
        ("rows_total", "Inputs embedded.", &c.rows),
        ("rejected_total", "Requests answered with an error.", &c.rejected),
        ("in_flight", "Requests in the model now.", &c.in_flight),
        ("in_flight_peak", "The most requests in the model at once.", &c.peak_in_flight),
    ] {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        out.push_str(&format!(
            "# HELP alluvium_serve_{name} {help}\n# TYPE alluvium_serve_{name} {kind}\nalluvium_serve_{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    out
}
