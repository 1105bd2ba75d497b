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
