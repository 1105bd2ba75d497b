//! The access policy on every hop, beyond the first URL (`http.rs` has the redirects to another
//! host, to the metadata address and within the host): a redirect to a *name* that resolves to a
//! private address is refused when the client connects (what closes DNS rebinding too), redirect
//! loops stop after ten hops, and Azure containers are told apart by their account.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alluvium_object::access::guarded_http_client;
use alluvium_object::{AccessPolicy, ObjectStoreRegistry, StoreConfig};

/// Reads one request's head (the requests here have no body), so that closing the connection
/// after the answer does not reset it.
fn read_head(s: &mut std::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// A server on 127.0.0.1 that answers each request with `answer(request head)` and closes the
/// connection, counting the connections it accepts.
fn server(answer: impl Fn(&str) -> String + Send + 'static) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let head = read_head(&mut s);
            let _ = s.write_all(answer(&head).as_bytes());
        }
    });
    (port, hits)
}

fn redirect(to: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
}

/// Every error of `e`'s chain, outermost first.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(" <- ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An allowed host redirects to an allowed *name* that resolves to a loopback address: without
/// `allow_private_networks` the client's resolver refuses it when the hop connects (a DNS server
/// that answered a public address at the first check and a private one now, DNS rebinding, meets
/// the same check), and the server behind that name is never reached.
#[tokio::test]
async fn a_redirect_to_a_name_resolving_to_a_private_address_is_refused_when_connecting() {
    let (target, target_hits) = server(|_| "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nSECRET".to_string());
    let to = format!("http://localhost:{target}/latest/meta-data/");
    let (front, front_hits) = server(move |_| redirect(&to));
    // The first URL is an address literal (the registry checks first URLs itself; this client
    // sees only the hops), so that the test needs no public address.
    let policy = AccessPolicy::default().allow_http_host("127.0.0.1").allow_http_host("localhost");
    let client = guarded_http_client(&policy, Duration::from_secs(5)).unwrap();
    let e = client.get(format!("http://127.0.0.1:{front}/photo.jpg")).send().await.unwrap_err();
    let text = chain(&e);
    assert!(text.contains("[io.access] refused to connect") && text.contains("`localhost`"), "{text}");
    assert_eq!(front_hits.load(Ordering::SeqCst), 1);
    assert_eq!(target_hits.load(Ordering::SeqCst), 0, "the private address behind the name was reached");

    // With `allow_private_networks` the same redirect is followed (the name is allowed).
    let open = policy.allow_private_networks(true);
    let client = guarded_http_client(&open, Duration::from_secs(5)).unwrap();
    let body = client.get(format!("http://127.0.0.1:{front}/photo.jpg")).send().await.unwrap().text().await.unwrap();
    assert_eq!(body, "SECRET");
    assert_eq!(target_hits.load(Ordering::SeqCst), 1);
}

/// A server that redirects to itself forever: the client follows ten redirects (eleven requests)
/// and then fails, as reqwest's own default policy does.
#[tokio::test]
async fn a_redirect_loop_stops_after_ten_hops() {
    let (port, hits) = server(|head| {
        // `GET /hop/N HTTP/1.1` → `/hop/N+1`.
        let path = head.split_whitespace().nth(1).unwrap_or_default();
        let n: usize = path.strip_prefix("/hop/").and_then(|n| n.parse().ok()).unwrap_or(0);
        redirect(&format!("/hop/{}", n + 1))
    });
    let policy = AccessPolicy::default().allow_http_host("127.0.0.1").allow_private_networks(true);
    let client = guarded_http_client(&policy, Duration::from_secs(5)).unwrap();
    let e = client.get(format!("http://127.0.0.1:{port}/hop/0")).send().await.unwrap_err();
    let text = chain(&e);
    assert!(text.contains("more than 10 redirects"), "{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 11, "the first request and ten redirects");
}

/// `[io.access] buckets` as a job file writes it, and Azure names: a container allowed by name is
/// the container of the job's account; a reference that names another account
/// (`abfss://C@ACCOUNT.dfs.core.windows.net/…`) is `C@ACCOUNT` and needs its own entry. Two
/// containers of one account are two stores.
#[tokio::test]
async fn azure_containers_are_allowed_with_their_account_and_kept_apart() {
    let cfg: StoreConfig = toml::from_str("[access]\nbuckets = [\"box\", \"logs@acct\"]").unwrap();
    assert_eq!(cfg.access.buckets.as_deref(), Some(&["box".to_string(), "logs@acct".to_string()][..]));
    let registry = ObjectStoreRegistry::new(cfg);
    let refused = registry.resolve("abfss://box@attacker.dfs.core.windows.net/x.jpg").await.unwrap().unwrap_err();
    assert!(refused.0.contains("[io.access] buckets") && refused.0.contains("box@attacker"), "{}", refused.0);
    let refused = registry.resolve("az://logs/x.jpg").await.unwrap().unwrap_err();
    assert!(refused.0.contains("[io.access] buckets"), "{}", refused.0);
    // Allowed: not refused (whether a store can be built here without Azure settings aside).
    if let Ok(Err(refused)) = registry.resolve("abfss://logs@acct.dfs.core.windows.net/x.jpg").await {
        panic!("refused: {}", refused.0);
    }
    if let Ok(Err(refused)) = registry.resolve("az://box/x.jpg").await {
        panic!("refused: {}", refused.0);
    }

    // One store per container: the second container of an account is not read through the first's.
    let any = ObjectStoreRegistry::default();
    let (a, _) = any.resolve("abfss://first@acct.dfs.core.windows.net/x").await.unwrap().unwrap();
    let (b, _) = any.resolve("abfss://second@acct.dfs.core.windows.net/x").await.unwrap().unwrap();
    assert!(a.to_string().contains("container: first"), "{a}");
    assert!(b.to_string().contains("container: second"), "{b}");
}
