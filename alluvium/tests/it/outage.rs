//! An outage is not bad input: a job whose remote `embed` stage loses its endpoint (a real
//! `alluvium serve-model`, stopped mid-job, or a closed port) makes no dead letters: it holds its
//! input, checkpoints go on, `/metrics` and the log say it waits, and it goes on when the endpoint
//! is back, every row once. Down longer than `outage_timeout`, the job stops with an error naming
//! the stage and the endpoint (never the key), and a rerun finishes. Rows the endpoint rejects (a
//! 400 naming the input) are the only dead letters, without the key the endpoint echoes.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// The key the jobs send (and `serve-model` wants): it must never show in an error, a log line or a
/// dead letter.
const KEY_VAR: &str = "ALLUVIUM_TEST_OUTAGE_KEY";
const KEY: &str = "sk-outage-test-5f3a9c27e1d04b8b";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A job: `rows` generated rows (two lanes, `rate` rows/s each) → embeddings from the OpenAI
/// endpoint at `url` (model `model`) → JSON Lines under `dir/out`, dead letters under `dir/dead`.
fn job_file(dir: &Path, url: &str, model: &str, rows: u64, rate: f64, outage_timeout: &str) -> std::path::PathBuf {
    let job = format!(
        r#"[pipeline]
name = "outage"
parallelism = 2
restart_delay = "100ms"

[checkpoint]
interval = "500ms"
location = "{dir}/ckpt"

[source]
type = "generate"
rows = {rows}
batch_size = 6
payload_bytes = 24
split_rows = {split}
rows_per_second = {rate:.1}

[[stages]]
type = "embed"
url = "{url}"
model = "{model}"
column = "payload"
batch_rows = 8
workers = 2
max_workers = 2
api_key_env = "{KEY_VAR}"
outage_timeout = "{outage_timeout}"

[sink]
type = "jsonl"
path = "{dir}/out"

[dead_letters]
type = "jsonl"
path = "{dir}/dead"
"#,
        dir = dir.display(),
        split = rows / 2,
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, job).unwrap();
    path
}

/// `alluvium run JOB [--metrics 127.0.0.1:PORT]`, its stdout and stderr into files under `dir`.
fn run_job(dir: &Path, job: &Path, metrics: Option<u16>, log: &str) -> Child {
    let mut c = crate::bin();
    c.args(["run", job.to_str().unwrap()]).env(KEY_VAR, KEY);
    if let Some(port) = metrics {
        c.args(["--metrics", &format!("127.0.0.1:{port}")]);
    }
    let out = std::fs::File::create(dir.join(format!("{log}.stdout"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{log}.stderr"))).unwrap();
    c.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().unwrap()
}

/// Waits for `child` to end, at most `limit`.
fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the job did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET /metrics` of the job's metrics endpoint (`None` while it is not listening yet).
fn metrics(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the sample `series` (name and labels) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' '))).and_then(|v| v.trim().parse().ok())
}

const WAITING: &str = "alluvium_service_waiting{pipeline=\"outage\",stage=\"embed\"}";
const SINCE: &str = "alluvium_service_waiting_since_timestamp_seconds{pipeline=\"outage\",stage=\"embed\"}";
const CHECKPOINTS: &str = "alluvium_checkpoints_total{pipeline=\"outage\"}";
const COMMITTED: &str = "alluvium_rows_committed_total{pipeline=\"outage\"}";

/// Polls the metrics until `ok` holds for them, at most `limit`.
fn metrics_until(port: u16, limit: Duration, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Some(text) = metrics(port) {
            if ok(&text) {
                return text;
            }
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every committed JSON Lines row directly under `dir` (none when it does not exist).
fn jsonl(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut rows = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || name.starts_with('.') || !name.ends_with(".jsonl") {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            rows.push(serde_json::from_str(line).unwrap());
        }
    }
    rows
}

/// Each id of `0..rows` is either in `dir/out` once with a `dims`-float embedding, or a dead
/// letter once; returns the dead letters.
fn assert_each_row_once(dir: &Path, rows: u64, dims: usize) -> Vec<serde_json::Value> {
    let out = jsonl(&dir.join("out"));
    let dead = jsonl(&dir.join("dead"));
    let mut seen = vec![0usize; rows as usize];
    for r in &out {
        seen[r["id"].as_u64().unwrap() as usize] += 1;
        assert_eq!(r["embedding"].as_array().map(Vec::len), Some(dims), "{r}");
    }
    for d in &dead {
        let row: serde_json::Value = serde_json::from_str(d["row"].as_str().unwrap()).unwrap();
        seen[row["id"].as_u64().unwrap() as usize] += 1;
    }
    let wrong: Vec<(usize, usize)> = seen.iter().copied().enumerate().filter(|&(_, n)| n != 1).collect();
    assert!(wrong.is_empty(), "ids not there exactly once (id, times): {wrong:?}");
    dead
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_default()
}

/// `serve-model` stopped mid-job for several seconds, then started again on the same port: the
/// job waits (its metrics say so, and its checkpoints go on), then embeds every row exactly once,
/// with no dead letters.
#[test]
fn a_model_server_that_goes_down_mid_job_is_waited_for_and_every_row_is_embedded_once() {
    let envs = [(KEY_VAR, KEY)];
    let server = crate::ServeModel::start_at("127.0.0.1:0", &["--api-key-env", KEY_VAR], &envs);
    let url = server.url.clone();
    let listen = url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    // About 20 s of input (2 lanes × 12 rows/s), so that the outage falls in the middle of it.
    let rows = 480;
    let job = job_file(dir.path(), &url, "all-MiniLM-L6-v2", rows, 12.0, "10m");
    let port = free_port();
    let mut child = run_job(dir.path(), &job, Some(port), "run");

    // Rows flow, then the server goes away.
    metrics_until(port, Duration::from_secs(60), "rows committed", |t| sample(t, COMMITTED).is_some_and(|v| v > 0.0));
    let served = server.stop();
    assert!(served.starts_with("served "), "{served}");
    let down = Instant::now();

    // The job waits on its endpoint, says since when, and keeps checkpointing.
    let text = metrics_until(port, Duration::from_secs(20), "waiting on the endpoint", |t| sample(t, WAITING) == Some(1.0));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let since = sample(&text, SINCE).expect("since");
    assert!(since > now - 30.0 && since <= now + 1.0, "since {since}, now {now}");
    let before = sample(&text, CHECKPOINTS).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let text = metrics(port).expect("metrics");
    assert_eq!(sample(&text, WAITING), Some(1.0), "{text}");
    assert!(sample(&text, CHECKPOINTS).unwrap() >= before + 2.0, "checkpoints go on while waiting:\n{text}");
    assert_eq!(sample(&text, "alluvium_dead_letters_committed_total{pipeline=\"outage\"}"), Some(0.0), "{text}");
    assert!(child.try_wait().unwrap().is_none(), "the job waits for its endpoint");

    // Back on the same port: the job finishes, every row embedded once, nothing a dead letter.
    let server = crate::ServeModel::start_at(&listen, &["--api-key-env", KEY_VAR], &envs);
    let outage = down.elapsed();
    let status = wait(&mut child, Duration::from_secs(120));
    let stderr = read(dir.path(), "run.stderr");
    assert!(status.success(), "{status}: {stderr}");
    let dead = assert_each_row_once(dir.path(), rows, 384);
    assert!(dead.is_empty(), "an outage ({outage:?}) makes no dead letters: {dead:?}");
    assert!(stderr.contains("stage `embed` is waiting on its endpoint"), "the log says so: {stderr}");
    assert!(!stderr.contains(KEY) && !read(dir.path(), "run.stdout").contains(KEY), "{stderr}");
    let summary = read(dir.path(), "run.stdout");
    assert!(summary.contains("dead letters    0"), "{summary}");
    let served = server.stop();
    assert!(served.starts_with("served "), "{served}");
}

/// No server on the port for longer than `outage_timeout`: the job stops with exit code 1 and an
/// error naming the stage and the endpoint, not the key, and no dead letters. Once a server
/// listens there, a rerun finishes, every row once.
#[test]
fn an_endpoint_down_longer_than_outage_timeout_stops_the_job_and_a_rerun_finishes() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let rows = 120;
    let job = job_file(dir.path(), &url, "all-MiniLM-L6-v2", rows, 20.0, "3s");
    let started = Instant::now();
    let mut child = run_job(dir.path(), &job, None, "down");
    let status = wait(&mut child, Duration::from_secs(90));
    let stderr = read(dir.path(), "down.stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(
        stderr.contains(&format!("stage `embed` gave up waiting for its endpoint {url}/v1/embeddings")),
        "names the stage and the endpoint: {stderr}"
    );
    assert!(stderr.contains("`outage_timeout` = 3s") && stderr.contains("last failure"), "{stderr}");
    assert!(stderr.contains("rerun"), "{stderr}");
    assert!(!stderr.contains(KEY), "{stderr}");
    assert!(jsonl(&dir.path().join("dead")).is_empty(), "an outage makes no dead letters");

    let envs = [(KEY_VAR, KEY)];
    let server = crate::ServeModel::start_at(&format!("127.0.0.1:{port}"), &["--api-key-env", KEY_VAR], &envs);
    let mut child = run_job(dir.path(), &job, None, "rerun");
    let status = wait(&mut child, Duration::from_secs(120));
    assert!(status.success(), "{status}: {}", read(dir.path(), "rerun.stderr"));
    let dead = assert_each_row_once(dir.path(), rows, 384);
    assert!(dead.is_empty(), "{dead:?}");
    server.stop();
}

/// A tiny OpenAI-compatible endpoint: 4-d vectors, except that a request with an input starting
/// with `0` is answered 400 naming that input, and quoting the request's `Authorization` header
/// back (as some servers do). Runs until the test process ends.
fn rejecting_endpoint() -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                let (mut length, mut auth) = (0usize, String::new());
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = l.split_once(':') {
                        match name.trim().to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "authorization" => auth = value.trim().to_string(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let inputs: Vec<String> = match &request["input"] {
                    serde_json::Value::Array(a) => a.iter().map(|v| v.as_str().unwrap_or("").to_string()).collect(),
                    v => vec![v.as_str().unwrap_or("").to_string()],
                };
                let (status, answer) = match inputs.iter().find(|t| t.starts_with('0')) {
                    Some(bad) => (
                        "400 Bad Request",
                        serde_json::json!({"error": {
                            "message": format!("input `{bad}` is not accepted (request had authorization: {auth})"),
                            "type": "invalid_request_error"
                        }}),
                    ),
                    None => {
                        let data: Vec<serde_json::Value> = inputs
                            .iter()
                            .enumerate()
                            .map(|(i, t)| serde_json::json!({"index": i, "embedding": [t.len() as f32, 1.0, 2.0, 3.0]}))
                            .collect();
                        ("200 OK", serde_json::json!({"data": data}))
                    }
                };
                let body = answer.to_string();
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(body.as_bytes()));
            });
        }
    });
    url
}

/// The endpoint rejects some inputs with a 400: exactly those rows are dead letters, with its
/// words, and the API key it quotes back is `***` in them and in the log.
#[test]
fn rows_the_endpoint_rejects_are_the_only_dead_letters_and_the_key_it_echoes_is_hidden() {
    let url = rejecting_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let rows = 160;
    let job = job_file(dir.path(), &url, "tiny", rows, 1000.0, "1m");
    let mut child = run_job(dir.path(), &job, None, "run");
    let status = wait(&mut child, Duration::from_secs(60));
    let stderr = read(dir.path(), "run.stderr");
    assert!(status.success(), "{status}: {stderr}");
    let dead = assert_each_row_once(dir.path(), rows, 4);
    // The rows the endpoint rejects, and only those.
    let rejected = |payload: &str| payload.starts_with('0');
    for r in jsonl(&dir.path().join("out")) {
        assert!(!rejected(r["payload"].as_str().unwrap()), "{r}");
    }
    assert!(!dead.is_empty(), "some payloads start with 0 among {rows}");
    for d in &dead {
        let row: serde_json::Value = serde_json::from_str(d["row"].as_str().unwrap()).unwrap();
        assert!(rejected(row["payload"].as_str().unwrap()), "{d}");
        assert_eq!((d["stage"].as_str(), d["kind"].as_str()), (Some("embed"), Some("data")), "{d}");
        let message = d["message"].as_str().unwrap();
        assert!(message.contains("400") && message.contains("is not accepted"), "{message}");
        assert!(message.contains("***") && !message.contains(KEY), "the key is hidden: {message}");
    }
    assert!(!stderr.contains(KEY), "{stderr}");
}
