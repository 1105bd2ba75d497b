//! Which references may be read: untrusted manifests must not read local secrets or reach
//! internal services.
//!
//! * `file://` refs: the path is canonicalised (resolving `..` and every symlink) and must lie
//!   inside one of `file_roots` (also canonicalised). With no roots configured, no `file://` ref is
//!   allowed.
//! * `http(s)://` refs: the host must match `http_allow_hosts` (`example.com`, or `*.example.com` for
//!   its subdomains), and every address it resolves to must be public unless
//!   `allow_private_networks` is set: loopback, link-local (cloud metadata services live there),
//!   private, unique-local and unspecified addresses are refused.
//!
//! Limitation: the address check happens when the reference is resolved; the HTTP client resolves
//! the name again when it connects, so a DNS server that answers differently the second time
//! (DNS rebinding) is not covered. Pin such hosts to addresses you trust.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

/// The access policy. The default allows no `file://` refs and no `http(s)://` refs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Directories `file://` refs must stay inside.
    #[serde(default)]
    pub file_roots: Vec<PathBuf>,
    /// Hosts `http(s)://` refs may name (`host` or `*.domain`).
    #[serde(default)]
    pub http_allow_hosts: Vec<String>,
    /// Allow addresses that are loopback, link-local or private.
    #[serde(default)]
    pub allow_private_networks: bool,
}

impl AccessPolicy {
    /// Allows `file://` refs under `root`.
    pub fn allow_file_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.file_roots.push(root.into());
        self
    }
    /// Allows `http(s)://` refs to `host`.
    pub fn allow_http_host(mut self, host: impl Into<String>) -> Self {
        self.http_allow_hosts.push(host.into());
        self
    }
    /// Allows loopback, link-local and private addresses.
    pub fn allow_private_networks(mut self, allow: bool) -> Self {
        self.allow_private_networks = allow;
        self
    }

    /// The canonical path of an allowed file, or why it is refused.
    pub fn check_file(&self, path: &Path) -> Result<PathBuf, String> {
        if self.file_roots.is_empty() {
            return Err("file:// references are not allowed: no file_roots are configured ([io.access] file_roots)".into());
        }
        let real = std::fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "object not found".to_string(),
            _ => format!("cannot resolve the path: {e}"),
        })?;
        for root in &self.file_roots {
            if let Ok(root) = std::fs::canonicalize(root) {
                if real.starts_with(&root) {
                    return Ok(real);
                }
            }
        }
        Err("the file is outside the allowed file_roots (after resolving `..` and symlinks)".into())
    }

    /// Whether an `http(s)://` URL may be fetched, or why not.
    pub async fn check_http(&self, url: &Url) -> Result<(), String> {
        let host = url.host_str().ok_or("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let allowed = self.http_allow_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => h.eq_ignore_ascii_case(host),
        });
        if !allowed {
            return Err(format!("host `{host}` is not in http_allow_hosts"));
        }
        if self.allow_private_networks {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?
                .map(|a| a.ip())
                .collect(),
        };
        if let Some(ip) = addrs.iter().find(|ip| !is_public(ip)) {
            return Err(format!(
                "host `{host}` resolves to {ip}, a loopback, link-local or private address (allow_private_networks is off)"
            ));
        }
        Ok(())
    }
}

fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let seg = v6.segments()[0];
            !(v6.is_loopback() || v6.is_unspecified() || (seg & 0xfe00) == 0xfc00 || (seg & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(&a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(&a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn hosts_must_be_allowed_and_public() {
        let p = AccessPolicy::default().allow_http_host("*.example.com").allow_http_host("127.0.0.1");
        assert!(p.check_http(&Url::parse("https://other.org/x").unwrap()).await.unwrap_err().contains("not in http_allow_hosts"));
        assert!(p.check_http(&Url::parse("https://example.com.evil.org/x").unwrap()).await.is_err());
        let e = p.check_http(&Url::parse("http://127.0.0.1:8080/x").unwrap()).await.unwrap_err();
        assert!(e.contains("loopback"), "{e}");
        assert!(p.clone().allow_private_networks(true).check_http(&Url::parse("http://127.0.0.1:8080/x").unwrap()).await.is_ok());
    }
}
