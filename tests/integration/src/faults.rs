//! A fault-injecting HTTP proxy for S3: [`FaultProxy`] listens on 127.0.0.1 in front of a real S3
//! server and, for a configured share of requests (drawn from a seeded generator, so a run can be
//! repeated), injects one of the failures real object stores produce:
//!
//! | [`Fault`] | what the client sees | reached the server? |
//! |---|---|---|
//! | `SlowDown` | `503 SlowDown` (S3's throttling answer) | no |
//! | `InternalError` | `500 InternalError` | no |
//! | `Reset` | the connection closed before any answer | no |
//! | `LostReply` | the connection closed before any answer | **yes**: the request took effect |
//! | `SlowBody` | the whole answer, in 8 pieces 25 ms apart | yes |
//! | `Truncated` | the answer's headers and half its body, then the connection closed | yes |
//!
//! `LostReply` is the hard one for exactly-once: a PUT (or a conditional PUT that commits a table
//! version) succeeded, but the client cannot know and retries it.
//!
//! Everything else is forwarded unchanged, the `Host` header included, so SigV4 signatures made
//! for the proxy's address still verify at the server.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng, SeedableRng};

/// One kind of injected failure. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// `503 SlowDown`, not forwarded.
    SlowDown,
    /// `500 InternalError`, not forwarded.
    InternalError,
    /// The connection closed with no answer, not forwarded.
    Reset,
    /// Forwarded, then the connection closed with no answer.
    LostReply,
    /// Forwarded; the answer's body comes slowly.
    SlowBody,
    /// Forwarded; the answer's body is cut in half and the connection closed.
    Truncated,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 6] =
        [Fault::SlowDown, Fault::InternalError, Fault::Reset, Fault::LostReply, Fault::SlowBody, Fault::Truncated];
}

type Body = BoxBody<Bytes, std::io::Error>;

struct State {
    upstream: String,
    rate: f64,
    faults: Vec<Fault>,
    rng: Mutex<rand::rngs::StdRng>,
    requests: AtomicU64,
    injected: Mutex<BTreeMap<Fault, u64>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// The proxy, stopped on drop. See the module docs.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: point S3 clients here instead of at the server.
    pub endpoint: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`) that injects one of `faults`
    /// (chosen uniformly) into a share `rate` of requests, drawing from a generator seeded with
    /// `seed`.
    pub fn start(upstream: &str, rate: f64, faults: &[Fault], seed: u64) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("a runtime for the fault proxy");
        // Bound here, not on the runtime, so that a test on a runtime of its own can start one.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port for the fault proxy");
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            rate,
            faults: faults.to_vec(),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            requests: AtomicU64::new(0),
            injected: Mutex::new(BTreeMap::new()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let serving = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
            while let Ok((stream, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { endpoint, state, runtime: Some(runtime) }
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        self.state.injected.lock().unwrap().clone()
    }

    /// All faults injected so far.
    pub fn injected_total(&self) -> u64 {
        self.injected().values().sum()
    }

    /// The environment that points an S3 client at this proxy, with `server`'s keys.
    pub fn env(&self, server: &crate::S3Server) -> Vec<(String, String)> {
        crate::s3_env(&self.endpoint, &server.access_key, &server.secret_key)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl State {
    fn pick(&self) -> Option<Fault> {
        let mut rng = self.rng.lock().unwrap();
        if self.faults.is_empty() || !rng.random_bool(self.rate.clamp(0.0, 1.0)) {
            return None;
        }
        let fault = self.faults[rng.random_range(0..self.faults.len())];
        *self.injected.lock().unwrap().entry(fault).or_default() += 1;
        Some(fault)
    }
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// S3's XML error answer.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>");
    let mut r = Response::new(Full::new(Bytes::from(xml)).map_err(|e: Infallible| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", "application/xml".parse().unwrap());
    r
}

/// A body of `pieces`, with `pause` before each and an error after them when `cut`.
fn pieces(pieces: Vec<Bytes>, pause: Duration, cut: bool) -> Body {
    let frames = futures::stream::iter(pieces.into_iter().map(Ok).chain(cut.then(|| Err(io("injected: truncated")))));
    let slow = futures::StreamExt::then(frames, move |piece: std::io::Result<Bytes>| async move {
        tokio::time::sleep(pause).await;
        piece.map(Frame::data)
    });
    StreamBody::new(slow).boxed()
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> std::io::Result<Response<Body>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let fault = state.pick();
    match fault {
        Some(Fault::SlowDown) => {
            return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown", "Please reduce your request rate."))
        }
        Some(Fault::InternalError) => {
            return Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "We encountered an internal error."))
        }
        // An error from the service makes hyper close the connection without an answer.
        Some(Fault::Reset) => return Err(io("injected: reset")),
        _ => {}
    }
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io)?.to_bytes();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("{}{path}", state.upstream).parse().map_err(io)?;
    let answer = state.client.request(Request::from_parts(parts, Full::new(body))).await.map_err(io)?;
    let (parts, body) = answer.into_parts();
    let body: Body = match fault {
        Some(Fault::LostReply) => return Err(io("injected: reply lost")),
        Some(Fault::SlowBody) | Some(Fault::Truncated) => {
            let whole = body.collect().await.map_err(io)?.to_bytes();
            if fault == Some(Fault::SlowBody) {
                let step = whole.len().div_ceil(8).max(1);
                let chunks = (0..whole.len()).step_by(step).map(|i| whole.slice(i..(i + step).min(whole.len()))).collect();
                pieces(chunks, Duration::from_millis(25), false)
            } else if whole.len() < 2 {
                // Nothing to cut: the answer is lost instead.
                return Err(io("injected: reply lost"));
            } else {
                pieces(vec![whole.slice(..whole.len() / 2)], Duration::ZERO, true)
            }
        }
        _ => body.map_err(io).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}
