//! The remote clients against the model server, over real HTTP on 127.0.0.1: both protocols give
//! the local model's vectors; pool size sets the requests in flight at the server; shrinking the
//! pool loses nothing; 429/503 are retried; a rejected row becomes a dead letter; a rejected key
//! stops the stage without showing the key; a server that goes away is waited for (no dead
//! letters) and each row is embedded once when it is back, or, gone for good, the call fails after
//! `outage_timeout` naming the endpoint; a redirect is never followed (the key would go elsewhere).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alluvium_core::arrow::array::{Array, ArrayRef, FixedSizeListArray, Float32Array, StringArray};
use alluvium_core::arrow::datatypes::{DataType, Field, Schema};
use alluvium_core::arrow::record_batch::RecordBatch;
use alluvium_core::service::{PoolSettings, ServicePool};
use alluvium_core::ErrorKind;
use alluvium_models::{Embed, Endpoint, ModelServer, ServeOptions, TextEmbedder};
use candle_core::Device;

/// One model for every test of this file (weights load once).
fn model() -> Arc<TextEmbedder> {
    static MODEL: OnceLock<Arc<TextEmbedder>> = OnceLock::new();
    MODEL.get_or_init(|| Arc::new(TextEmbedder::load(&crate::minilm(), &Device::Cpu).unwrap())).clone()
}

async fn server(options: ServeOptions) -> ModelServer {
    let options = ServeOptions { listen: "127.0.0.1:0".parse().unwrap(), ..options };
    ModelServer::start(model(), options).await.unwrap()
}

fn texts(n: usize) -> Vec<String> {
    let words = ["river", "delta", "lighthouse", "harbour", "granite", "tide", "meadow", "lantern"];
    (0..n)
        .map(|i| format!("sentence {i}: the {} near the {} at {} o'clock", words[i % 8], words[(i * 3 + 1) % 8], i % 12 + 1))
        .collect()
}

fn batch(texts: &[String]) -> RecordBatch {
    let a: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
    RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)])), vec![a]).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Each row of `values` equals the local model's vector of the same text.
fn assert_local_vectors(texts: &[String], values: &ArrayRef) {
    let v = values.as_any().downcast_ref::<FixedSizeListArray>().expect("vectors");
    assert_eq!(v.len(), texts.len());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = model().embed_texts(&refs).unwrap();
    for i in 0..texts.len() {
        let row = v.value(i);
        let got = row.as_any().downcast_ref::<Float32Array>().unwrap();
        let d = max_diff(got.values(), &want[i * 384..(i + 1) * 384]);
        assert!(d < 1e-5, "row {i} ({}) differs by {d}", texts[i]);
    }
}

fn fast_retries(pool: PoolSettings) -> PoolSettings {
    PoolSettings { backoff: Duration::from_millis(20), max_backoff: Duration::from_millis(200), ..pool }
}

fn remote_pool(endpoint: Endpoint, batch_rows: usize, workers: usize) -> ServicePool {
    let e = Embed::remote(endpoint).batch_rows(batch_rows).workers(workers, workers);
    e.pool("embed").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_kserve_clients_get_the_local_models_vectors() {
    let server = server(ServeOptions::default()).await;
    let t = texts(9);
    let refs: Vec<&str> = t.iter().map(String::as_str).collect();
    let want = model().embed_texts(&refs).unwrap();
    for endpoint in [Endpoint::openai(server.url(), server.model_name()), Endpoint::kserve(server.url(), server.model_name())] {
        let client = endpoint.connect().unwrap();
        let (values, dims) = client.embed_texts(&refs).await.unwrap();
        assert_eq!(dims, 384);
        // f32 → JSON → f32 is exact.
        assert_eq!(max_diff(&values, &want), 0.0, "{endpoint:?}");
    }
    assert_eq!(server.stats().rows, 18);
    // The readiness and metadata routes a KServe client looks at.
    let http = reqwest::Client::new();
    let url = server.url();
    assert!(http.get(format!("{url}/v2/health/ready")).send().await.unwrap().status().is_success());
    let get = |path: String| {
        let http = http.clone();
        async move { serde_json::from_str::<serde_json::Value>(&http.get(path).send().await.unwrap().text().await.unwrap()).unwrap() }
    };
    let meta = get(format!("{url}/v2/models/{}", server.model_name())).await;
    assert_eq!(meta["outputs"][0]["shape"][1], 384);
    let listed = get(format!("{url}/v1/models")).await;
    assert_eq!(listed["data"][0]["id"], server.model_name());
    let metrics = http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("alluvium_serve_rows_total 18"), "{metrics}");
    // The OpenAI answer reports the tokens the model counted, which the client's limiter uses.
    let request = serde_json::json!({"model": server.model_name(), "input": "one two three"});
    let answer = http.post(format!("{url}/v1/embeddings")).body(request.to_string()).send().await.unwrap().text().await.unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["usage"]["total_tokens"], 5, "[CLS] one two three [SEP]");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_sets_the_requests_in_flight_at_the_server() {
    let t = texts(48);
    for workers in [1, 4] {
        let server = server(ServeOptions { workers: 4, ..Default::default() }).await;
        let pool = remote_pool(Endpoint::openai(server.url(), server.model_name()), 2, workers);
        let answer = pool.call(batch(&t)).await.unwrap();
        assert!(answer.failures.is_empty());
        assert_local_vectors(&t, &answer.values);
        let (client, at_server) = (pool.stats(), server.stats());
        assert_eq!(client.peak_in_flight, workers as u64, "{client:?}");
        assert_eq!(at_server.requests, 24);
        if workers == 1 {
            assert_eq!(at_server.peak_in_flight, 1, "{at_server:?}");
        } else {
            // Four workers each keep a call open; the server computes at least three at once.
            assert!(at_server.peak_in_flight >= 3, "{at_server:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrinking_the_pool_mid_run_loses_no_request() {
    let server = server(ServeOptions { workers: 2, ..Default::default() }).await;
    let pool = remote_pool(Endpoint::kserve(server.url(), server.model_name()), 4, 4);
    let t = texts(160);
    // Twenty callers (as lanes do), eight rows each.
    let calls: Vec<_> = t
        .chunks(8)
        .map(|c| {
            let (pool, c) = (pool.clone(), c.to_vec());
            tokio::spawn(async move { (pool.call(batch(&c)).await, c) })
        })
        .collect();
    let waiting = std::time::Instant::now();
    while pool.stats().rows < 24 {
        assert!(waiting.elapsed() < Duration::from_secs(60), "no answers: {:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pool.resize(1);
    for call in calls {
        let (answer, c) = call.await.unwrap();
        let answer = answer.unwrap();
        assert!(answer.failures.is_empty(), "{:?}", answer.failures);
        assert_local_vectors(&c, &answer.values);
    }
    let stats = pool.stats();
    assert_eq!((stats.workers, stats.rows, stats.failed_rows), (1, 160, 0), "{stats:?}");
    assert_eq!(server.stats().rows, 160, "each row embedded once: nothing lost, nothing repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_429_and_503_are_retried_after_the_servers_wait() {
    for (status, every) in [(429, 3), (503, 4)] {
        let server = server(ServeOptions::default().inject(status, every)).await;
        let settings = PoolSettings { max_batch_rows: 4, workers: 3, min_workers: 3, max_workers: 3, ..Default::default() };
        let pool = Embed::remote(Endpoint::openai(server.url(), server.model_name()))
            .settings(fast_retries(settings))
            .pool("embed")
            .unwrap();
        let t = texts(40);
        let started = std::time::Instant::now();
        let answer = pool.call(batch(&t)).await.unwrap();
        assert!(answer.failures.is_empty(), "{status}: {:?}", answer.failures);
        assert_local_vectors(&t, &answer.values);
        let at_server = server.stats();
        assert!(at_server.rejected >= 3, "{status}: {at_server:?}");
        assert_eq!(pool.stats().retries, at_server.rejected, "{status}: each refusal retried once");
        // Retry-After: 1 is honoured although the pool's own backoff is at most 200 ms.
        assert!(started.elapsed() >= Duration::from_secs(1), "{status}: {:?}", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_server_rejects_becomes_a_dead_letter_with_its_reason() {
    let server = server(ServeOptions::default()).await;
    let pool = remote_pool(Endpoint::openai(server.url(), server.model_name()), 8, 1);
    let mut t = texts(8);
    t[5] = String::new();
    let answer = pool.call(batch(&t)).await.unwrap();
    assert_eq!(answer.failures.len(), 1, "{:?}", answer.failures);
    let f = &answer.failures[0];
    assert_eq!((f.row, f.kind), (5, ErrorKind::Data));
    assert!(f.message.contains("400") && f.message.contains("empty string"), "{}", f.message);
    // The other seven rows have their vectors.
    let v = answer.values.as_any().downcast_ref::<FixedSizeListArray>().unwrap();
    assert_eq!((v.len(), v.null_count()), (8, 1));
    let good: Vec<String> = t.iter().filter(|s| !s.is_empty()).cloned().collect();
    let kept = alluvium_core::arrow::compute::filter(v, &alluvium_core::arrow::compute::is_not_null(v).unwrap()).unwrap();
    assert_local_vectors(&good, &kept);

    // A column that is not text at all is the job's mistake: the stage stops, naming the fix,
    // as it does for a local model.
    let numbers: ArrayRef = Arc::new(alluvium_core::arrow::array::Int64Array::from(vec![1, 2]));
    let bad =
        RecordBatch::try_new(Arc::new(Schema::new(vec![Field::new("text", DataType::Int64, true)])), vec![numbers]).unwrap();
    let err = pool.call(bad).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("embeds text (Utf8), not Int64; set the stage's `column`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_or_unknown_model_stops_the_stage_and_never_shows_the_key() {
    let server = server(ServeOptions { api_key: Some("right-key-1234".into()), ..Default::default() }).await;
    // SAFETY of the test: these variables are read only by this test.
    std::env::set_var("ALLUVIUM_TEST_REMOTE_WRONG_KEY", "wrong-key-5678");
    std::env::set_var("ALLUVIUM_TEST_REMOTE_RIGHT_KEY", "right-key-1234");
    let wrong =
        remote_pool(Endpoint::openai(server.url(), server.model_name()).api_key_env("ALLUVIUM_TEST_REMOTE_WRONG_KEY"), 4, 1);
    let Err(err) = wrong.call(batch(&texts(6))).await else { panic!("a config error, not dead letters") };
    let text = format!("{err} {err:?}");
    assert_eq!(err.kind(), ErrorKind::Config, "{text}");
    assert!(text.contains("401") && text.contains("ALLUVIUM_TEST_REMOTE_WRONG_KEY"), "{text}");
    assert!(!text.contains("wrong-key-5678") && !text.contains("right-key"), "{text}");
    assert_eq!(server.stats().requests, 1, "no retries, no splitting");

    let unknown =
        remote_pool(Endpoint::kserve(server.url(), "no-such-model").api_key_env("ALLUVIUM_TEST_REMOTE_RIGHT_KEY"), 4, 1);
    let err = unknown.call(batch(&texts(2))).await.err().unwrap();
    assert!(err.to_string().contains("404") && err.to_string().contains("no-such-model"), "{err}");

    let right =
        remote_pool(Endpoint::kserve(server.url(), server.model_name()).api_key_env("ALLUVIUM_TEST_REMOTE_RIGHT_KEY"), 4, 1);
    let answer = right.call(batch(&texts(6))).await.unwrap();
    assert!(answer.failures.is_empty());

    // A server that is not there: the endpoint's failure, not the rows'. The call waits for it (no
    // dead letters), and after `outage_timeout` fails, naming the endpoint and why, not the key.
    let addr = server.addr();
    server.stop().await.unwrap();
    let gone = Embed::remote(Endpoint::openai(format!("http://{addr}"), "m").api_key_env("ALLUVIUM_TEST_REMOTE_RIGHT_KEY"))
        .settings(fast_retries(PoolSettings { retries: 2, outage_timeout: Duration::from_secs(1), ..Default::default() }))
        .pool("embed")
        .unwrap();
    let started = std::time::Instant::now();
    let err = gone.call(batch(&texts(3))).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    let text = format!("{err} {err:?}");
    assert_eq!(err.kind(), ErrorKind::External, "{text}");
    assert!(text.contains(&format!("its endpoint http://{addr}/v1/embeddings")) && text.contains("outage_timeout"), "{text}");
    assert!(!text.contains("right-key"), "{text}");
    assert_eq!(gone.stats().failed_rows, 0, "no dead letters for an outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_and_comes_back_embeds_every_row_once() {
    let first = server(ServeOptions::default()).await;
    let addr = first.addr();
    let settings =
        PoolSettings { max_batch_rows: 4, outage_timeout: Duration::from_secs(120), ..fast_retries(PoolSettings::default()) };
    let pool = Embed::remote(Endpoint::openai(first.url(), first.model_name())).settings(settings).pool("embed").unwrap();
    assert!(pool.call(batch(&texts(4))).await.unwrap().failures.is_empty());
    first.stop().await.unwrap();

    // Down: the call waits, and the pool says since when and why.
    let t = texts(40);
    let call = {
        let (pool, t) = (pool.clone(), t.clone());
        tokio::spawn(async move { pool.call(batch(&t)).await })
    };
    let waiting = std::time::Instant::now();
    while pool.waiting().is_none() {
        assert!(waiting.elapsed() < Duration::from_secs(30), "never waited: {:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!call.is_finished(), "the call waits for the server");
    let w = pool.waiting().expect("still down");
    assert!(w.last_failure.contains(&addr.to_string()) && !w.gave_up, "{w:?}");
    assert!(pool.stats().waiting_since.is_some());

    // Back on the same address: every row once, nothing a dead letter.
    let options = ServeOptions { listen: addr, ..Default::default() };
    let second = ModelServer::start(model(), options).await.unwrap();
    let answer =
        tokio::time::timeout(Duration::from_secs(60), call).await.expect("answered once the server is back").unwrap().unwrap();
    assert!(answer.failures.is_empty(), "{:?}", answer.failures);
    assert_local_vectors(&t, &answer.values);
    assert_eq!(second.stats().rows, 40, "each row embedded once");
    let stats = pool.stats();
    assert_eq!((stats.failed_rows, stats.outages), (0, 1), "{stats:?}");
    assert!(pool.waiting().is_none());
    second.stop().await.unwrap();
}

/// Reads one HTTP request (headers and a `content-length` body) from `s`, so that closing the
/// connection after the answer does not reset it.
fn read_request(s: &mut std::net::TcpStream) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let Ok(n) = s.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return;
            }
        }
    }
}

/// A server on 127.0.0.1 that answers every request with `answer` (raw HTTP) and closes the
/// connection, counting the connections it accepts.
fn raw_server(answer: String) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            read_request(&mut s);
            let _ = s.write_all(answer.as_bytes());
        }
    });
    (addr, hits)
}

/// An endpoint that answers with a redirect: the client does not follow it (the API key would go
/// to an address the job file does not name), and the stage stops with an error that names the
/// endpoint and the redirect's target and says to point `url` at the final address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed_and_stops_the_stage_naming_the_endpoint() {
    let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
    let (elsewhere, elsewhere_hits) = raw_server(ok.to_string());
    let to = format!("http://{elsewhere}/v1/embeddings");
    let (addr, hits) = raw_server(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    ));
    // SAFETY of the test: this variable is read only by this test.
    std::env::set_var("ALLUVIUM_TEST_REMOTE_REDIRECT_KEY", "redirect-key-9876");
    let endpoint = Endpoint::openai(format!("http://{addr}"), "m").api_key_env("ALLUVIUM_TEST_REMOTE_REDIRECT_KEY");

    let client = endpoint.connect().unwrap();
    let err = client.embed_texts(&["hello"]).await.unwrap_err();
    let m = &err.message;
    assert!(err.fatal && !err.transient, "{err:?}");
    assert!(m.contains(&format!("http://{addr}/v1/embeddings answered 307")), "{m}");
    assert!(m.contains(&format!("a redirect to {to}")) && m.contains("point `url` at the final address"), "{m}");
    assert!(!m.contains("redirect-key-9876"), "{m}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "one request, no retries");
    assert_eq!(elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect was followed");

    // Through a pool: the stage stops with a configuration error; no row becomes a dead letter.
    let pool = remote_pool(endpoint, 4, 1);
    let Err(err) = pool.call(batch(&texts(3))).await else { panic!("a config error, not an answer") };
    let text = format!("{err} {err:?}");
    assert_eq!(err.kind(), ErrorKind::Config, "{text}");
    assert!(text.contains("point `url` at the final address") && !text.contains("redirect-key-9876"), "{text}");
    assert_eq!(elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the redirect was followed");
}
