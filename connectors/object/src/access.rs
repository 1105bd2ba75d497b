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
//! * **Every hop**: the HTTP client checks each redirect's target against the same rules before it
//!   follows it (an allowed host answering `302 Location: http://169.254.169.254/…` is refused, not
//!   fetched), and, unless `allow_private_networks`, its resolver refuses names that resolve to a
//!   non-public address when it connects, so a DNS server that answers differently the second time
//!   (DNS rebinding) cannot reach a private address either. See [`guarded_http_client`].

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
    /// Buckets (S3, GCS) and containers (Azure) refs may name, read with the job's credentials;
    /// `"*"` allows any. `None` (a library default) allows any; a job file's default is the
    /// buckets the job file itself names.
    #[serde(default)]
    pub buckets: Option<Vec<String>>,
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

    /// Allows refs to `bucket` (and makes the bucket list explicit: only listed buckets).
    pub fn allow_bucket(mut self, bucket: impl Into<String>) -> Self {
        self.buckets.get_or_insert_with(Vec::new).push(bucket.into());
        self
    }

    /// Whether a ref may name `bucket` (of `scheme`), or why not.
    pub fn check_bucket(&self, scheme: &str, bucket: &str) -> Result<(), String> {
        match &self.buckets {
            Some(list) if !list.iter().any(|b| b == "*" || b == bucket) => Err(format!(
                "bucket `{scheme}://{bucket}` is not in [io.access] buckets ({}); add it there to read it with the job's credentials",
                if list.is_empty() { "none listed".to_string() } else { list.join(", ") }
            )),
            _ => Ok(()),
        }
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

    /// The host of an `http(s)://` URL, when `http_allow_hosts` allows it and, for an address
    /// literal, the address is public (or `allow_private_networks`). No DNS: names are checked
    /// when they are resolved.
    fn check_host<'u>(&self, url: &'u Url) -> Result<&'u str, String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme `{}` is not http(s)", url.scheme()));
        }
        let host = url.host_str().ok_or("the URL has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let allowed = self.http_allow_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => h.eq_ignore_ascii_case(host),
        });
        if !allowed {
            return Err(format!("host `{host}` is not in http_allow_hosts"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !self.allow_private_networks && !is_public(&ip) {
                return Err(private(host, &ip));
            }
        }
        Ok(host)
    }

    /// Whether an `http(s)://` URL may be fetched, or why not.
    pub async fn check_http(&self, url: &Url) -> Result<(), String> {
        let host = self.check_host(url)?;
        if self.allow_private_networks || host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| format!("cannot resolve host `{host}`: {e}"))?;
        for a in addrs {
            if !is_public(&a.ip()) {
                return Err(private(host, &a.ip()));
            }
        }
        Ok(())
    }

    /// The redirect policy of our HTTP clients: each hop is checked like the first URL (at most 10).
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("more than 10 redirects");
            }
            match policy.check_host(attempt.url()) {
                Ok(_) => attempt.follow(),
                Err(why) => {
                    let to = alluvium_core::error::redact(attempt.url().as_str());
                    attempt.error(format!("{REFUSED_REDIRECT} to {to}: {why}"))
                }
            }
        })
    }
}

/// The words a refused redirect's error starts with (the fetch finds them in the error chain).
pub(crate) const REFUSED_REDIRECT: &str = "[io.access] refused a redirect";

fn private(host: &str, ip: &IpAddr) -> String {
    format!("host `{host}` resolves to {ip}, a loopback, link-local or private address (allow_private_networks is off)")
}

/// An HTTP client that keeps to `policy` on every hop: redirects are checked before they are
/// followed, and names are resolved to public addresses only (unless `allow_private_networks`).
pub fn guarded_http_client(policy: &AccessPolicy, timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout).redirect(policy.redirect_policy());
    if !policy.allow_private_networks {
        b = b.dns_resolver(std::sync::Arc::new(PublicOnly));
    }
    b.build()
}

/// A resolver that refuses names resolving to loopback, link-local or private addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(a) = addrs.iter().find(|a| !is_public(&a.ip())) {
                return Err(format!("{REFUSED_REDIRECT} or request: {}", private(&host, &a.ip())).into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`object_store`] connector of HTTP stores: [`guarded_http_client`].
#[derive(Debug)]
pub(crate) struct GuardedConnector {
    pub policy: AccessPolicy,
    pub timeout: std::time::Duration,
}

impl object_store::client::HttpConnector for GuardedConnector {
    fn connect(&self, _options: &object_store::ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let client = guarded_http_client(&self.policy, self.timeout)
            .map_err(|e| object_store::Error::Generic { store: "HTTP", source: Box::new(e) })?;
        Ok(object_store::client::HttpClient::new(client))
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
