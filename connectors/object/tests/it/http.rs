//! `http(s)://` references: an allow-list of hosts, and no private addresses unless allowed.
//! The positive case uses a real HTTP server on 127.0.0.1 (Python's http.server).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alluvium_core::types::ObjectRef;
use alluvium_object::{AccessPolicy, Fetch, ObjectStoreRegistry, StoreConfig};

use crate::common::*;

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn http_refs_need_an_allowed_public_host() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cat.txt"), b"meow").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = Server(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "http.server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("http://127.0.0.1:{port}/cat.txt");

    let default = Fetch::new(Arc::new(ObjectStoreRegistry::default()));
    let out = fetch(&default, vec![ObjectRef::new(uri.clone())]).await;
    assert!(failure(&out, 0).contains("not in http_allow_hosts"), "{}", failure(&out, 0));

    let allowed_host = StoreConfig { access: AccessPolicy::default().allow_http_host("127.0.0.1"), ..Default::default() };
    let out = fetch(&Fetch::new(Arc::new(ObjectStoreRegistry::new(allowed_host))), vec![ObjectRef::new(uri.clone())]).await;
    assert!(failure(&out, 0).contains("loopback"), "{}", failure(&out, 0));

    let private_ok = StoreConfig {
        access: AccessPolicy::default().allow_http_host("127.0.0.1").allow_private_networks(true),
        ..Default::default()
    };
    let out = fetch(&Fetch::new(Arc::new(ObjectStoreRegistry::new(private_ok))), vec![ObjectRef::new(uri)]).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(bytes_of(&out), vec![b"meow".to_vec()]);
}

/// A server on `port` (0: any) of 127.0.0.1 that answers requests for `x.jpg` with 503, or accepts
/// them and never answers (`hang`), "meow" for other `.jpg`s and 404 for anything else (so the
/// store answers); counts the requests for `x.jpg`.
fn faulty_server(port: u16, hang: bool) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(200) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            if path.ends_with("/x.jpg") {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if hang {
                    held.push(s); // keep the connection open, say nothing
                } else {
                    let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                }
            } else if path.ends_with(".jpg") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nmeow");
            } else {
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        }
    });
    (port, hits)
}

fn fast_giving_up() -> StoreConfig {
    let mut cfg: StoreConfig = toml::from_str("max_retries = 2\nretry_timeout = \"3s\"\nrequest_timeout = \"300ms\"").unwrap();
    cfg.access = AccessPolicy::default().allow_http_host("127.0.0.1").allow_private_networks(true);
    cfg
}

/// The store answers (a 404 for an absent path), but not for this object: its 5xx, once the
/// retries are spent, is the object's dead letter.
#[tokio::test]
async fn server_errors_for_one_object_beyond_the_retry_budget_are_its_dead_letter() {
    let (port, hits) = faulty_server(0, false);
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::new(fast_giving_up())));
    let start = Instant::now();
    let refs =
        vec![ObjectRef::new(format!("http://127.0.0.1:{port}/x.jpg")), ObjectRef::new(format!("http://127.0.0.1:{port}/y.jpg"))];
    let out = fetch(&f, refs).await;
    let msg = failure(&out, 0);
    assert!(msg.contains("read failed after retries") && msg.contains("503"), "{msg}");
    assert!(msg.contains("the store answers other requests"), "{msg}");
    assert_eq!(bytes_of(&out), vec![b"meow".to_vec()]);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3, "one try and two retries");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_server_that_hangs_on_one_object_times_out_into_its_dead_letter() {
    let (port, _) = faulty_server(0, true);
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::new(fast_giving_up())));
    let start = Instant::now();
    let out = fetch(&f, vec![ObjectRef::new(format!("http://127.0.0.1:{port}/x.jpg"))]).await;
    let msg = failure(&out, 0);
    assert!(msg.contains("read failed after retries"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(10), "bounded by the timeouts: {:?}", start.elapsed());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// No server on the port for 2 s, then one: the reads wait for it (nothing is a dead letter, and
/// `service_status` lists the stage as waiting on the store meanwhile), then every object arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_is_down_is_waited_for_and_its_objects_arrive_when_it_is_back() {
    let port = free_port();
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::new(fast_giving_up()))).outage_timeout(Duration::from_secs(60));
    let refs: Vec<ObjectRef> = (0..3).map(|i| ObjectRef::new(format!("http://127.0.0.1:{port}/{i}.jpg"))).collect();
    let start = Instant::now();
    let task = tokio::spawn(async move { fetch(&f, refs).await });
    let store = format!("http://127.0.0.1:{port}");
    let waiting = loop {
        let status = alluvium_core::service::service_status();
        if let Some(s) = status.iter().find(|s| s.endpoint.as_deref() == Some(store.as_str()) && s.waiting.is_some()) {
            break s.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the stage never said it waits: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((waiting.pipeline.as_str(), waiting.stage.as_str(), waiting.service.as_str()), ("t", "fetch", "object store"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "the reads wait for the store");
    let _server = faulty_server(port, false);
    let out = tokio::time::timeout(Duration::from_secs(60), task).await.expect("the reads go on").unwrap();
    assert!(out.failures.is_empty(), "an outage makes no dead letters: {:?}", out.failures);
    assert_eq!(bytes_of(&out), vec![b"meow".to_vec(); 3]);
    let status = alluvium_core::service::service_status();
    assert!(status.iter().filter(|s| s.endpoint.as_deref() == Some(store.as_str())).all(|s| s.waiting.is_none()), "{status:?}");
}

/// Down longer than `outage_timeout`: the stage fails with an error naming it, the store and the
/// last failure (not retried by a region restart), and no dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_past_outage_timeout_fails_the_stage_naming_the_store() {
    let port = free_port();
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::new(fast_giving_up()))).outage_timeout(Duration::from_secs(2));
    let ctx = alluvium_core::TaskContext {
        pipeline: "t".into(),
        stage: "images".into(),
        subtask: 0,
        parallelism: 1,
        region: 0,
        epoch: 0,
    };
    let start = Instant::now();
    let err =
        alluvium_core::AsyncOperator::process(&f, batch(vec![ObjectRef::new(format!("http://127.0.0.1:{port}/a.jpg"))]), &ctx)
            .await
            .expect_err("the stage gives up");
    assert!(start.elapsed() >= Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(err.kind(), alluvium_core::ErrorKind::External);
    assert!(!err.is_retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("stage `images` gave up waiting for the object store http://127.0.0.1:{port}")), "{text}");
    assert!(text.contains("`outage_timeout` = 2s") && text.contains("last failure") && text.contains("rerun"), "{text}");
}

/// A server on `ip` that answers every request with `302 Location: location` (`None`: 200 with
/// "meow"), counting the connections it accepts.
fn redirecting_server(ip: &str, location: Option<String>) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(50) {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            let answer = match &location {
                // A redirect to another path of the same host is followed.
                Some(_) if request.starts_with("GET /final") => {
                    "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nmeow".to_string()
                }
                Some(to) => format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
                None => "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nSECRETROLE".to_string(),
            };
            let _ = s.write_all(answer.as_bytes());
        }
    });
    (port, hits)
}

/// The access policy holds on every redirect hop: an allowed host that redirects to a host that is
/// not allowed (127.0.0.2) or to the cloud metadata address is refused as a dead letter naming
/// `[io.access]`, and the second server is never reached; a redirect within the allowed host is
/// followed.
#[tokio::test]
async fn redirects_are_checked_against_the_access_policy_on_every_hop() {
    let (other, other_hits) = redirecting_server("127.0.0.2", None);
    let to_other = format!("http://127.0.0.2:{other}/latest/meta-data/iam/security-credentials/role");
    let (port, _) = redirecting_server("127.0.0.1", Some(to_other));
    let policy = AccessPolicy::default().allow_http_host("127.0.0.1").allow_private_networks(true);
    let f = Fetch::new(Arc::new(ObjectStoreRegistry::new(StoreConfig { access: policy.clone(), ..Default::default() })));
    let out = fetch(&f, vec![ObjectRef::new(format!("http://127.0.0.1:{port}/photo.jpg"))]).await;
    let msg = failure(&out, 0);
    assert!(msg.contains("[io.access] refused a redirect") && msg.contains("127.0.0.2"), "{msg}");
    assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the host that is not allowed was reached");

    // The metadata address is refused even when its host is listed: its address is link-local.
    // (The client is ours without `allow_private_networks`; its first hop is an address literal,
    // which the resolver does not see, so only the redirect check stands between it and 169.254.)
    let (port, _) = redirecting_server("127.0.0.1", Some("http://169.254.169.254/latest/meta-data/".into()));
    let strict = AccessPolicy::default().allow_http_host("127.0.0.1").allow_http_host("169.254.169.254");
    let client = alluvium_object::access::guarded_http_client(&strict, Duration::from_secs(5)).unwrap();
    let e = client.get(format!("http://127.0.0.1:{port}/x")).send().await.unwrap_err();
    let chain = format!("{e:?}");
    assert!(chain.contains("[io.access] refused a redirect") && chain.contains("169.254.169.254"), "{chain}");

    // Same host, another path: followed.
    let (port, _) = redirecting_server("127.0.0.1", Some("/final".into()));
    let out = fetch(&f, vec![ObjectRef::new(format!("http://127.0.0.1:{port}/start"))]).await;
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(bytes_of(&out), vec![b"meow".to_vec()]);
}

/// A ref to a bucket outside `[io.access] buckets` is refused before any request is signed with
/// the job's credentials; `"*"` (and a library's default) allows any.
#[tokio::test]
async fn refs_to_buckets_outside_the_allow_list_are_refused() {
    let only_lake =
        ObjectStoreRegistry::new(StoreConfig { access: AccessPolicy::default().allow_bucket("lake"), ..Default::default() });
    let refused = only_lake.resolve("s3://another-bucket/x.jpg").await.unwrap().unwrap_err();
    assert!(refused.0.contains("[io.access] buckets") && refused.0.contains("another-bucket"), "{}", refused.0);
    assert!(only_lake.resolve("gs://another-bucket/x.jpg").await.unwrap().is_err());
    assert!(only_lake.resolve("s3://lake/x.jpg").await.unwrap().is_ok());
    let any = ObjectStoreRegistry::new(StoreConfig { access: AccessPolicy::default().allow_bucket("*"), ..Default::default() });
    assert!(any.resolve("s3://another-bucket/x.jpg").await.unwrap().is_ok());
    assert!(ObjectStoreRegistry::default().resolve("s3://another-bucket/x.jpg").await.unwrap().is_ok());
}
