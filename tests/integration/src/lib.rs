//! Real services for tests, one call away, each with a health check, fresh namespaces per test
//! and locations overridable by environment variables.
//!
//! * [`S3Server`]: `s3s-fs` (an S3-compatible server that checks SigV4 and supports multipart,
//!   ranged GET and conditional PUT) on a free port of 127.0.0.1, with a fresh bucket per call to
//!   [`S3Server::bucket`]. The binary comes from `ALLUVIUM_S3S_FS`, or
//!   `~/.cache/alluvium/s3s/bin/s3s-fs` where `.ci/run` installs it.
//! * [`MotoS3Server`]: moto's S3 server (`moto[server]` from PyPI, in the cross-readers' venv),
//!   the second S3 implementation, for the calls s3s-fs does not implement: object versions
//!   (`ListObjectVersions`) and tags. [`MotoS3Server::bucket`] makes a fresh versioned bucket.
//! * [`AzuriteServer`]: Azurite (Microsoft's Azure Storage emulator, from npm) on a free port, with
//!   a fresh container per call to [`AzuriteServer::container`]. The binary comes from
//!   `ALLUVIUM_AZURITE`, or `~/.cache/alluvium/azurite/node_modules/.bin/azurite-blob`.
//! * [`PostgresServer`]: a real PostgreSQL (Debian's `postgresql`, `initdb` + `postgres` as the
//!   `postgres` user) in a temp dir on a free port, with a fresh database per call to
//!   [`PostgresServer::database`]. Binaries from `ALLUVIUM_PG_BIN` or `/usr/lib/postgresql/*/bin`.
//! * [`RestCatalogServer`]: an Iceberg REST catalog (`rustberg` from crates.io, its own redb
//!   store) on a free port, serving one local warehouse directory. The binary comes from
//!   `ALLUVIUM_RUSTBERG`, or `~/.cache/alluvium/rustberg/bin/rustberg`.
//! * [`python`]: a Python with pyarrow, duckdb, polars, deltalake, pyiceberg and pylance for
//!   cross-reading our output (`ALLUVIUM_PYTHON`, set by `.ci/run`); [`python_run`] runs a script.
//!
//! * [`ffmpeg`]: Debian's `ffmpeg` CLI (installed by `.ci/run`), to make test videos and audio;
//!   [`test_video`] makes an H.264 MP4 of a test pattern.
//!
//! * [`faults::FaultProxy`]: a proxy in front of an S3 server that injects throttling, server
//!   errors, connection resets, lost replies, slow and truncated bodies into a share of requests.
//!
//! When a service is missing, tests are skipped with a visible message — except under CI
//! (`CI` set), where a missing service fails the test: CI must never pass by skipping.

pub mod faults;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `None` (the test skips, saying so) when `what` is not available here; under CI (`CI` set) a
/// panic instead: CI installs everything the tests need, so a missing tool is a failure there.
pub fn missing(what: &str) -> Option<std::convert::Infallible> {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required under CI; .ci/run installs it");
    }
    eprintln!("SKIPPED: {what} is not available (see .ci/run for how to install it)");
    None
}

/// A tool's binary: `$ENV` when set, else `~/.cache/alluvium/CACHED` where `.ci/run` installs it.
fn cached_tool(env: &str, cached: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".cache/alluvium").join(cached);
    p.exists().then_some(p)
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port()
}

/// Waits until something listens on `port` of 127.0.0.1 (`what` did not start otherwise).
fn wait_listening(port: u16, what: &str, within: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "{what} did not start listening on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `s3s-fs` server, stopped on drop.
pub struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The access key id it accepts.
    pub access_key: String,
    /// The secret key it accepts.
    pub secret_key: String,
}

impl S3Server {
    fn binary() -> Option<PathBuf> {
        cached_tool("ALLUVIUM_S3S_FS", "s3s/bin/s3s-fs")
    }

    /// Starts a server, or returns `None` when the binary is missing (outside CI).
    pub fn start() -> Option<Self> {
        let Some(bin) = Self::binary() else {
            missing("the S3 server s3s-fs")?;
            unreachable!()
        };
        let root = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let access_key = format!("AK{}", rand::random::<u32>());
        let secret_key = format!("SK{:x}", rand::random::<u64>());
        let child = Self::spawn(&bin, port, &access_key, &secret_key, root.path());
        let server = Self { child, root, port, endpoint: format!("http://127.0.0.1:{port}"), access_key, secret_key };
        wait_listening(port, "s3s-fs", Duration::from_secs(20));
        Some(server)
    }

    fn spawn(bin: &Path, port: u16, access_key: &str, secret_key: &str, root: &Path) -> Child {
        Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", access_key, "--secret-key", secret_key])
            .arg(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
    }

    /// Stops the server (its objects stay, for [`S3Server::restart`]): an outage.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same objects, after [`S3Server::stop`].
    pub fn restart(&mut self) {
        let bin = Self::binary().expect("s3s-fs");
        self.child = Self::spawn(&bin, self.port, &self.access_key, &self.secret_key, self.root.path());
        wait_listening(self.port, "s3s-fs", Duration::from_secs(20));
    }

    /// Creates a fresh, empty bucket and returns its name.
    pub fn bucket(&self) -> String {
        let name = format!("test-{:x}", rand::random::<u64>());
        std::fs::create_dir(self.root.path().join(&name)).expect("bucket dir");
        name
    }

    /// Where the server keeps `bucket/key` on disk (to inspect results without a client).
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.path().join(bucket).join(key)
    }

    /// The environment variables that point an AWS client (and `object_store`) at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        s3_env(&self.endpoint, &self.access_key, &self.secret_key)
    }
}

/// The environment variables that point an AWS client (and `object_store`) at an S3 server.
fn s3_env(endpoint: &str, access_key: &str, secret_key: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ACCESS_KEY_ID", access_key),
        ("AWS_SECRET_ACCESS_KEY", secret_key),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// moto's S3 server on a free port of 127.0.0.1, stopped on drop: an S3 implementation with
/// versioning, delete markers and tags, which s3s-fs lacks. It does not check signatures.
pub struct MotoS3Server {
    child: Child,
    python: String,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl MotoS3Server {
    /// Starts the server from the cross-readers' Python (`moto[server]`), or returns `None` when
    /// that Python is missing (outside CI).
    pub fn start() -> Option<Self> {
        let python = python()?;
        let port = free_port();
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto's S3 server with {python}: {e}"));
        let server = Self { child, python, endpoint: format!("http://127.0.0.1:{port}") };
        wait_listening(port, "moto's S3 server", Duration::from_secs(60));
        Some(server)
    }

    /// The environment variables that point an AWS client (and `object_store`) at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        s3_env(&self.endpoint, "testing", "testing")
    }

    /// Runs `script` with boto3 in scope as `s3`, a client of this server, and `args` as
    /// `sys.argv[1:]`; returns its standard output.
    pub fn boto3(&self, script: &str, args: &[&str]) -> String {
        let script = format!(
            "import sys, time, boto3\ns3 = boto3.client('s3', endpoint_url={:?}, aws_access_key_id='testing', \
             aws_secret_access_key='testing', region_name='us-east-1')\n{script}",
            self.endpoint
        );
        python_run(&self.python, &script, args)
    }

    /// Creates a fresh bucket with versioning enabled and returns its name.
    pub fn bucket(&self) -> String {
        let name = format!("test-{:x}", rand::random::<u64>());
        self.boto3(
            "s3.create_bucket(Bucket=sys.argv[1])\n\
             s3.put_bucket_versioning(Bucket=sys.argv[1], VersioningConfiguration={'Status': 'Enabled'})",
            &[&name],
        );
        name
    }
}

impl Drop for MotoS3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running Iceberg REST catalog (`rustberg`, from crates.io: a single-binary REST catalog with an
/// embedded redb store), serving one warehouse directory, without authentication; stopped on drop.
pub struct RestCatalogServer {
    child: Child,
    state: tempfile::TempDir,
    warehouse: PathBuf,
    port: u16,
    /// `http://127.0.0.1:PORT`.
    pub uri: String,
}

impl RestCatalogServer {
    fn binary() -> Option<PathBuf> {
        cached_tool("ALLUVIUM_RUSTBERG", "rustberg/bin/rustberg")
    }

    /// Starts a catalog whose warehouse is the local directory `warehouse` (created), or returns
    /// `None` when the binary is missing (outside CI).
    pub fn start(warehouse: &Path) -> Option<Self> {
        if Self::binary().is_none() {
            return missing("the Iceberg REST catalog rustberg").map(|never| match never {});
        }
        std::fs::create_dir_all(warehouse).expect("warehouse dir");
        let state = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Self::spawn(port, warehouse, state.path());
        let server = Self { child, state, warehouse: warehouse.to_path_buf(), port, uri: format!("http://127.0.0.1:{port}") };
        wait_listening(port, "rustberg", Duration::from_secs(20));
        Some(server)
    }

    fn spawn(port: u16, warehouse: &Path, state: &Path) -> Child {
        let bin = Self::binary().expect("rustberg");
        Command::new(&bin)
            .args(["--dev", "--insecure-http", "--no-auth", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--warehouse")
            .arg(format!("file://{}", warehouse.display()))
            .arg("--catalog-url")
            .arg(format!("file://{}", state.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
    }

    /// Stops the server (its state stays, for [`RestCatalogServer::restart`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same state, after a [`RestCatalogServer::stop`].
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.port, &self.warehouse, self.state.path());
        wait_listening(self.port, "rustberg", Duration::from_secs(20));
    }
}

impl Drop for RestCatalogServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running Azurite blob service, stopped on drop. Use it through object_store's emulator mode:
/// the `azure` option `use_emulator = "true"` and the environment of [`AzuriteServer::env`].
pub struct AzuriteServer {
    child: Child,
    _data: tempfile::TempDir,
    /// The blob endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
}

/// Creates a container with a SharedKey-signed request (Azurite refuses unsigned ones), using the
/// emulator's well-known development account.
const CREATE_CONTAINER: &str = r#"
import base64, hashlib, hmac, http.client, sys
from email.utils import formatdate
port, container = int(sys.argv[1]), sys.argv[2]
account = "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
date, version = formatdate(usegmt=True), "2021-08-06"
path = f"/{account}/{container}"
to_sign = "PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + f"/{account}{path}\nrestype:container"
sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("PUT", path + "?restype=container", headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"})
r = c.getresponse()
sys.exit(0 if r.status in (201, 409) else f"creating container {container}: HTTP {r.status} {r.read()[:300]!r}")
"#;

impl AzuriteServer {
    fn binary() -> Option<PathBuf> {
        cached_tool("ALLUVIUM_AZURITE", "azurite/node_modules/.bin/azurite-blob")
    }

    /// Starts Azurite, or returns `None` when it is not installed (outside CI).
    pub fn start() -> Option<Self> {
        let Some(bin) = Self::binary() else {
            missing("the Azure emulator Azurite")?;
            unreachable!()
        };
        let data = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--silent",
                "--skipApiVersionCheck",
                "--loose",
                "--location",
            ])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let server = Self { child, _data: data, endpoint: format!("http://127.0.0.1:{port}"), port };
        wait_listening(port, "Azurite", Duration::from_secs(30));
        Some(server)
    }

    /// Creates a fresh, empty container and returns its name.
    pub fn container(&self) -> String {
        let name = format!("test{:x}", rand::random::<u64>());
        let out =
            Command::new("python3").args(["-c", CREATE_CONTAINER, &self.port.to_string(), &name]).output().expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        name
    }

    /// The environment that points object_store's emulator mode at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("AZURITE_BLOB_STORAGE_URL".into(), self.endpoint.clone())]
    }
}

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python with pyarrow, duckdb and polars (`ALLUVIUM_PYTHON`), or `None` outside CI.
pub fn python() -> Option<String> {
    match std::env::var("ALLUVIUM_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            missing("a Python with pyarrow, duckdb and polars (ALLUVIUM_PYTHON)")?;
            unreachable!()
        }
    }
}

/// Reads a directory of Parquet files with pyarrow, DuckDB and Polars, and returns, for each, the
/// row count and the number of distinct values of `column`: `[(rows, distinct) by pyarrow, by
/// duckdb, by polars]`.
pub fn cross_read_parquet(python: &str, dir: &std::path::Path, column: &str) -> [(u64, u64); 3] {
    let script = r#"
import sys, pyarrow.dataset as ds, duckdb, polars as pl
d, col = sys.argv[1], sys.argv[2]
t = ds.dataset(d, format="parquet").to_table(columns=[col])
vals = t.column(col).to_pylist()
print(len(vals), len(set(vals)))
r = duckdb.connect().execute(f"select count(*), count(distinct {col}) from read_parquet('{d}/*.parquet')").fetchone()
print(r[0], r[1])
p = pl.scan_parquet(f"{d}/*.parquet").select(pl.len(), pl.col(col).n_unique()).collect()
print(p.item(0, 0), p.item(0, 1))
"#;
    let out = Command::new(python).args(["-c", script, dir.to_str().unwrap(), column]).output().expect("python runs");
    assert!(out.status.success(), "cross-read failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(|l| {
        let v: Vec<u64> = l.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0], v[1])
    });
    [lines.next().unwrap(), lines.next().unwrap(), lines.next().unwrap()]
}

/// Runs `script` with `args` in `python` and returns its standard output; panics with its
/// standard error when it fails.
pub fn python_run(python: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(python).arg("-c").arg(script).args(args).output().expect("python runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running PostgreSQL server, stopped on drop.
pub struct PostgresServer {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
    next_db: std::sync::atomic::AtomicU32,
    bin: PathBuf,
    data: PathBuf,
    as_root: bool,
}

impl PostgresServer {
    fn bin_dir() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("ALLUVIUM_PG_BIN") {
            return Some(PathBuf::from(p));
        }
        let mut versions: Vec<PathBuf> =
            std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.pop().filter(|p| p.join("postgres").exists())
    }

    /// Starts a server, or returns `None` when PostgreSQL is not installed (outside CI).
    pub fn start() -> Option<Self> {
        let Some(bin) = Self::bin_dir() else {
            missing("PostgreSQL (Debian package postgresql)")?;
            unreachable!()
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        // PostgreSQL refuses to run as root: run it as `postgres` when we are root.
        let as_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
        let run = |program: &Path, args: &[&str]| -> Command {
            if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program).args(args);
                c
            } else {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
        };
        if as_root {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().map(|s| s.success());
            assert!(ok.unwrap_or(false), "chown of the PostgreSQL data dir failed");
        }
        let init = run(&bin.join("initdb"), &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("initdb runs");
        assert!(init.status.success(), "initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        let port = free_port();
        let child = run(
            &bin.join("postgres"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port.to_string(),
                "-k",
                dir.path().to_str().unwrap(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
        let server = Self { child, _dir: dir, port, next_db: Default::default(), bin, data, as_root };
        let start = Instant::now();
        loop {
            let ready = Command::new(server.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "PostgreSQL did not start in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(server)
    }

    /// A fresh, empty database; returns its URL (`postgres://postgres@127.0.0.1:PORT/NAME`).
    pub fn database(&self) -> String {
        let n = self.next_db.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("test_{}_{n}", std::process::id());
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // `runuser` does not pass a kill on to the server: stop it with pg_ctl.
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data.to_string_lossy().to_string();
        let args = ["-D", data.as_str(), "stop", "-m", "immediate"];
        let _ = if self.as_root {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&pg_ctl).args(args).output()
        } else {
            Command::new(&pg_ctl).args(args).output()
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `ffmpeg` CLI with `args` (quietly, overwriting outputs), or returns `None` when it is
/// not installed (outside CI); panics with its output when it fails.
pub fn ffmpeg(args: &[&str]) -> Option<()> {
    let out = match Command::new("ffmpeg").args(["-hide_banner", "-loglevel", "error", "-y"]).args(args).output() {
        Ok(out) => out,
        Err(_) => {
            missing("the ffmpeg CLI")?;
            unreachable!()
        }
    };
    assert!(out.status.success(), "ffmpeg {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(())
}

/// Writes an H.264 (yuv420p) MP4 of FFmpeg's `testsrc` pattern to `path`: `seconds` long,
/// `width × height` at `fps`, a keyframe every `gop` frames and nowhere else.
pub fn test_video(path: &Path, seconds: u32, (width, height): (u32, u32), fps: u32, gop: u32) -> Option<()> {
    h264(path, &format!("testsrc=size={width}x{height}:rate={fps}:duration={seconds}"), gop, "ultrafast")
}

/// Encodes the lavfi `source` as H.264 (yuv420p, x264 `preset`) into `path`, with a keyframe
/// every `gop` frames and nowhere else.
pub fn h264(path: &Path, source: &str, gop: u32, preset: &str) -> Option<()> {
    let (gop, path) = (gop.to_string(), path.to_str().expect("utf-8 path"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        source,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-g",
        &gop,
        "-keyint_min",
        &gop,
        "-sc_threshold",
        "0",
        "-preset",
        preset,
        path,
    ])
}

/// This process's peak resident memory (VmHWM) in MiB, for benchmarks; 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
