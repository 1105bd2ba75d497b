//! `alluvium run --metrics ADDR`: serves the job's metrics to Prometheus at `http://ADDR/metrics`.
//!
//! A minimal HTTP/1.1 responder on the job's runtime (one request per connection, `GET` only):
//! enough for a Prometheus scraper or `curl`, with nothing to configure and no extra dependency.

use std::net::SocketAddr;
use std::sync::Arc;

use alluvium::core::metrics::Metrics;
use alluvium::{Error, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Binds `addr` (so that a taken port is an error before the job starts) and serves in the background.
pub async fn serve(addr: &str, pipeline: String, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::config(format!("--metrics {addr}: cannot listen there ({e}); give a free HOST:PORT such as 127.0.0.1:9464"))
    })?;
    let bound = listener.local_addr().map_err(|e| Error::internal("metrics listener has no address").with_source(e))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let (pipeline, metrics) = (pipeline.clone(), metrics.clone());
            tokio::spawn(async move {
                // The request line may arrive in pieces: read until its end (or 1 KiB).
                let mut request = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                while !request.windows(2).any(|w| w == b"\r\n") && request.len() < 1024 {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if line.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                    ("200 OK", metrics.prometheus(&pipeline))
                } else {
                    ("404 Not Found", "metrics are at /metrics\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(bound)
}
