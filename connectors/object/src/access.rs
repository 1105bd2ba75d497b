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
//!   fetched; at most 10 redirects), and, unless `allow_private_networks`, its resolver refuses
//!   names that resolve to a non-public address when it connects, so a DNS server that answers
//!   differently the second time (DNS rebinding) cannot reach a private address either. See
//!   [`guarded_http_client`]. (Through an HTTP proxy from the environment, `HTTP_PROXY`, the proxy
//!   resolves the names: the redirect checks still hold, the address checks are the proxy's.)
//! * `s3://`, `gs://`, `az://` refs: the bucket (container) must be in `buckets` when it is given
//!   (`"*"`: any); the job file's default is the buckets it names itself, so a manifest row cannot
//!   make the job read another bucket with its credentials. See [`bucket_of`].

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

    /// Whether a ref may name `bucket` (of `scheme`, as [`bucket_of`] names it), or why not.
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
        let lower = host.to_ascii_lowercase();
        let allowed = self.http_allow_hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => lower.ends_with(&format!(".{}", domain.to_ascii_lowercase())),
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

    /// The redirect policy of our HTTP clients: each hop is checked like the first URL (scheme,
    /// `http_allow_hosts`, address literals public unless `allow_private_networks`; names are
    /// checked by the resolver when the hop connects), at most [`MAX_REDIRECTS`] hops.
    pub fn redirect_policy(&self) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` holds the first URL too (as in reqwest's own `Policy::limited`).
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
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

/// The most redirects a request follows.
pub const MAX_REDIRECTS: usize = 10;

/// The words every refusal of a hop starts with (the fetch finds them in the error chain and makes
/// the row a dead letter saying so).
pub(crate) const REFUSED: &str = "[io.access] refused";

/// The words a refused redirect's error starts with.
pub(crate) const REFUSED_REDIRECT: &str = "[io.access] refused a redirect";

/// The words a connection the resolver refused starts with.
pub(crate) const REFUSED_CONNECT: &str = "[io.access] refused to connect";

/// The bucket (S3, GCS) or container (Azure) a reference names, as `[io.access] buckets` lists it;
/// `None` for schemes without buckets. `s3://B/…`, `s3a://B/…`, `gs://B/…` → `B`; `az://C/…`,
/// `azure://C/…`, `abfss://C/…` → `C` (the account is the job's); an Azure URL that names its
/// account too, `abfs[s]://C@ACCOUNT.dfs.core.windows.net/…` → `C@ACCOUNT`, so that allowing a
/// container does not allow the container of that name in someone else's account.
pub fn bucket_of(url: &Url) -> Option<String> {
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "s3" | "s3a" | "gs" | "azure" => Some(host.to_string()),
        "az" | "abfs" | "abfss" => match url.username() {
            "" => Some(host.to_string()),
            container => Some(format!("{container}@{}", host.split('.').next().unwrap_or_default())),
        },
        _ => None,
    }
}

fn private(host: &str, ip: &IpAddr) -> String {
    format!(
        "host `{host}` resolves to {ip}, a loopback, link-local, private or other non-public address (allow_private_networks is off)"
    )
}

/// An HTTP client that keeps to `policy` on every hop: redirects are checked before they are
/// followed, and names are resolved to public addresses only (unless `allow_private_networks`).
pub fn guarded_http_client(policy: &AccessPolicy, timeout: std::time::Duration) -> reqwest::Result<reqwest::Client> {
    guarded_builder(policy).timeout(timeout).build()
}

/// A client builder with `policy`'s redirect policy and, unless `allow_private_networks`, its
/// public-only resolver; the rest is the caller's.
fn guarded_builder(policy: &AccessPolicy) -> reqwest::ClientBuilder {
    let b = reqwest::Client::builder().redirect(policy.redirect_policy());
    if policy.allow_private_networks {
        b
    } else {
        b.dns_resolver(std::sync::Arc::new(PublicOnly))
    }
}

/// A resolver that refuses names resolving to loopback, link-local or private addresses.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if let Some(a) = addrs.iter().find(|a| !is_public(&a.ip())) {
                return Err(format!("{REFUSED_CONNECT}: {}", private(&host, &a.ip())).into());
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
    /// [`guarded_http_client`], with what `object_store`'s own client takes from the options that
    /// matter here: HTTPS only unless `allow_http` (on every hop: reqwest refuses a redirect to
    /// `http://` then), a short connect timeout, and no transparent decompression (it would make
    /// sizes and ranges disagree with the object).
    fn connect(&self, options: &object_store::ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let allow_http = options
            .get_config_value(&object_store::ClientConfigKey::AllowHttp)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "on" | "yes" | "y"));
        let client = guarded_builder(&self.policy)
            .timeout(self.timeout)
            .connect_timeout(self.timeout.min(std::time::Duration::from_secs(5)))
            .user_agent(concat!("alluvium/", env!("CARGO_PKG_VERSION")))
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .https_only(!allow_http)
            .build()
            .map_err(|e| object_store::Error::Generic { store: "HTTP", source: Box::new(e) })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// Whether `ip` is an ordinary public address: not loopback, private, link-local (cloud metadata
/// services), unspecified, carrier-grade NAT, multicast, broadcast, reserved, benchmarking or
/// documentation space; IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4) are
/// judged by that address.
pub fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0 // 0.0.0.0/8, "this network" (0.0.0.0 reaches the host itself)
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a >= 240 // 240.0.0.0/4, reserved
                || (a == 100 && (b & 0xC0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, IETF protocol assignments
                || (a == 198 && (b & 0xFE) == 18)) // 198.18.0.0/15, benchmarking
        }
        IpAddr::V6(v6) => {
            if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() {
                return false;
            }
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded =
                |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8));
            // ::a.b.c.d (IPv4-compatible, deprecated) and 64:ff9b::a.b.c.d (NAT64).
            if s[..6] == [0u16; 6] || (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0u16; 4]) {
                return is_public(&embedded(s[6], s[7]));
            }
            // 2002:aabb:ccdd::/48, 6to4 of a.b.c.d.
            if s[0] == 0x2002 {
                return is_public(&embedded(s[1], s[2]));
            }
            !((s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local (AWS's metadata fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // 64:ff9b:1::/48, local NAT64
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // 2001:db8::/32, documentation
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
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "192.0.2.1",
            "fd00:ec2::254",
            "fec0::1",
            "ff02::1",
            "::127.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(&a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
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
        // Host names are case-insensitive, patterns too.
        let p = AccessPolicy::default().allow_http_host("*.Example.COM").allow_http_host("IMG.example.org");
        assert!(p.check_host(&Url::parse("https://cdn.example.com/x").unwrap()).is_ok());
        assert!(p.check_host(&Url::parse("https://img.EXAMPLE.org/x").unwrap()).is_ok());
        assert!(p.check_host(&Url::parse("https://example.com/x").unwrap()).is_err(), "*.domain is its subdomains only");
    }

    #[test]
    fn buckets_and_containers_are_named_with_their_account_when_the_url_has_one() {
        let b = |u: &str| bucket_of(&Url::parse(u).unwrap());
        assert_eq!(b("s3://photos/2026/a.jpg").as_deref(), Some("photos"));
        assert_eq!(b("s3a://photos/a").as_deref(), Some("photos"));
        assert_eq!(b("gs://lake/t").as_deref(), Some("lake"));
        assert_eq!(b("az://box/a").as_deref(), Some("box"));
        assert_eq!(b("azure://box/a").as_deref(), Some("box"));
        assert_eq!(b("abfss://box@acct.dfs.core.windows.net/a").as_deref(), Some("box@acct"));
        assert_eq!(b("https://host/a"), None);
        let p = AccessPolicy::default().allow_bucket("box").allow_bucket("lake@acct");
        assert!(p.check_bucket("az", "box").is_ok());
        assert!(p.check_bucket("abfss", "box@attacker").unwrap_err().contains("[io.access] buckets"));
        assert!(p.check_bucket("abfss", "lake@acct").is_ok());
        assert!(AccessPolicy::default().check_bucket("s3", "any").is_ok(), "a library's default allows any");
        let none = AccessPolicy { buckets: Some(Vec::new()), ..Default::default() };
        assert!(none.check_bucket("s3", "any").unwrap_err().contains("none listed"));
    }
}
