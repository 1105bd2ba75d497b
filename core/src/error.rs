//! One error type for the whole crate: a struct with a classified [`ErrorKind`], a message, a stack of
//! context lines and a retry hint (the shape of iceberg-rust's `Error`, not a god enum).
//!
//! Errors never carry secrets: anything that may hold credentials (URLs with user info, query
//! strings with signatures) goes through [`redact`] before it reaches a message.

use std::fmt;
use std::sync::Arc;

/// What went wrong, from the point of view of who can fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The pipeline or job definition is wrong; the message names the key and the fix.
    Config,
    /// One input item is bad (corrupt, too large, missing). Per-row errors of this kind become dead letters.
    Data,
    /// A service we depend on failed (object store, catalog, remote model). Often retryable.
    External,
    /// Checkpoint state is missing, corrupt or incompatible.
    Checkpoint,
    /// A bug or an invariant violation inside Alluvium.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name, as stored in dead-letter rows.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Data => "data",
            ErrorKind::External => "external",
            ErrorKind::Checkpoint => "checkpoint",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of `alluvium-core` and of the connectors built on it.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<String>,
    retryable: bool,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), context: Vec::new(), retryable: false, source: None }
    }
    /// A configuration error: say which key is wrong and what would be valid.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    /// A bad input item.
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }
    /// A failure of an external service.
    pub fn external(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::External, message)
    }
    /// Checkpoint state that cannot be used.
    pub fn checkpoint(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Checkpoint, message)
    }
    /// An internal error (a bug).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// Adds a line of context ("while committing region 1 checkpoint 4").
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.context.push(context.into());
        self
    }
    /// Marks the error retryable or not.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }
    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Whether retrying the same operation may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.message.clone();
        for c in &self.context {
            text.push_str(&format!(" ({c})"));
        }
        if let Some(source) = &self.source {
            text.push_str(&format!(": {}", redact(&source.to_string())));
        }
        f.write_str(&hide_secrets(&text))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {self}", self.kind)?;
        if self.retryable {
            write!(f, " [retryable]")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as E;
        let retryable = !matches!(
            e,
            E::NotFound { .. }
                | E::AlreadyExists { .. }
                | E::Precondition { .. }
                | E::NotSupported { .. }
                | E::InvalidPath { .. }
                | E::PermissionDenied { .. }
                | E::Unauthenticated { .. }
                | E::NotImplemented { .. }
                | E::UnknownConfigurationKey { .. }
        );
        Error::external("object store request failed").with_retryable(retryable).with_source(e)
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Error::internal("arrow operation failed").with_source(e)
    }
}

/// Whether an error text from a library (Lance, SQLite, the OS) says that a location is unusable as
/// configured: a file where a directory must be, a read-only or forbidden directory, a database
/// file that cannot be opened. No retry fixes that, so it is a configuration error, not a
/// transient one (a full disk, by contrast, may get room again).
pub fn is_misconfigured_path(text: &str) -> bool {
    const SIGNS: [&str; 11] = [
        "Not a directory",
        "Is a directory",
        "Read-only file system",
        "Permission denied",
        "Operation not permitted",
        "unable to open database file",
        "attempt to write a readonly database",
        "(os error 13)",
        "(os error 20)",
        "(os error 21)",
        "(os error 30)",
    ];
    SIGNS.iter().any(|s| text.contains(s))
}

/// Whether `e` says a dependency could not be reached or is overloaded (a refused or reset
/// connection, a timeout, a DNS failure, a 5xx or a 429), as opposed to refusing what was asked
/// of it (a full disk, a permission, a conflict): an outage, which the runtime waits out
/// (`pipeline.outage_timeout`) instead of giving up after a few restarts.
pub fn is_unreachable(e: &Error) -> bool {
    const SIGNS: [&str; 18] = [
        "connection refused",
        "error sending request",
        "timed out",
        "operation timed out",
        "deadline has elapsed",
        "connection reset",
        "connection closed before",
        "broken pipe",
        "dns error",
        "failed to lookup address",
        "tcp connect error",
        "service unavailable",
        "bad gateway",
        "gateway timeout",
        "too many requests",
        "slow down",
        "status code: 5",
        "status code: 429",
    ];
    let mut texts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        texts.push(s.to_string());
        source = s.source();
    }
    texts.iter().map(|t| t.to_lowercase()).any(|t| SIGNS.iter().any(|s| t.contains(s)))
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`), for reports that name
/// the bug instead of printing Rust's panic report.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Removes credentials from a string that may contain URLs: user info (`https://user:pass@host`),
/// the values of query parameters that look like secrets (signatures, tokens, keys), and every
/// [registered secret](register_secret) wherever it appears.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&redact_word(word));
    }
    hide_secrets(&out)
}

fn secrets() -> &'static std::sync::RwLock<Vec<String>> {
    static SECRETS: std::sync::OnceLock<std::sync::RwLock<Vec<String>>> = std::sync::OnceLock::new();
    SECRETS.get_or_init(Default::default)
}

/// Values shorter than this are not registered as secrets: hiding them would hide ordinary text.
const MIN_SECRET_LEN: usize = 6;

/// Registers a secret value (an API key, a password read from the environment): from now on
/// [`redact`] and every [`Error`]'s message replace it with `***`, so a server that echoes it back
/// (an `Authorization` header in an error body) cannot put it into a log line, an error or a dead
/// letter. Values shorter than 6 characters are ignored.
pub fn register_secret(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut s = secrets().write().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|v| v == value) {
        s.push(value.to_string());
        // Longest first, so a secret that contains another is hidden whole.
        s.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// Registers the values of the environment variables whose names say they hold secrets
/// (`*SECRET*`, `*TOKEN*`, `*PASSWORD*`, `*API_KEY*`, `*APIKEY*`, `*PRIVATE_KEY*`,
/// `*SAS*`, `*CREDENTIAL*`, `AWS_SESSION_TOKEN`, …). Called once at startup by the CLI.
pub fn register_secrets_from_env() {
    for (name, value) in std::env::vars() {
        let n = name.to_ascii_uppercase();
        let secret = ["SECRET", "TOKEN", "PASSWORD", "PASSWD", "API_KEY", "APIKEY", "PRIVATE_KEY", "_SAS", "CREDENTIAL"]
            .iter()
            .any(|s| n.contains(s));
        if secret {
            register_secret(&value);
        }
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn hide_secrets(text: &str) -> String {
    let s = secrets().read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in s.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

fn redact_word(word: &str) -> String {
    let Some(scheme_end) = word.find("://") else { return word.to_string() };
    let mut s = word.to_string();
    let rest = scheme_end + 3;
    let host_end = s[rest..].find(['/', '?', '#']).map_or(s.len(), |i| rest + i);
    if let Some(at) = s[rest..host_end].rfind('@') {
        s.replace_range(rest..rest + at, "***");
    }
    if let Some(q) = s.find('?') {
        let (base, query) = s.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        s = format!("{base}{}", redacted.join("&"));
    }
    s
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["sig", "signature", "token", "secret", "password", "key", "credential", "sv"].iter().any(|s| k.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_never_reach_a_message() {
        register_secret("sk-live-0123456789abcdef");
        register_secret("abc");
        let echoed = "401: {\"error\": \"bad key\", \"headers\": {\"authorization\": \"Bearer sk-live-0123456789abcdef\"}}";
        assert!(!redact(echoed).contains("0123456789abcdef"), "{}", redact(echoed));
        assert!(redact(echoed).contains("Bearer ***"));
        let e = Error::external(format!("remote endpoint said {echoed}")).context("stage `embed`");
        assert!(!e.to_string().contains("sk-live") && e.to_string().contains("stage `embed`"), "{e}");
        assert!(!format!("{e:?}").contains("sk-live"));
        // Too short to hide without hiding ordinary words.
        assert_eq!(redact("abc def"), "abc def");
    }

    #[test]
    fn redacts_user_info_and_signed_query() {
        let r = redact("GET https://AKIA:supersecret@host:9000/b/k?X-Amz-Signature=abc&part=1 failed");
        assert!(!r.contains("supersecret"), "{r}");
        assert!(!r.contains("abc"), "{r}");
        assert!(r.contains("part=1"), "{r}");
        assert!(r.contains("host:9000/b/k"), "{r}");
    }

    #[test]
    fn display_lists_context_innermost_first() {
        let e = Error::external("put failed").context("writing manifest").context("region 1");
        assert_eq!(e.to_string(), "put failed (writing manifest) (region 1)");
    }
}
