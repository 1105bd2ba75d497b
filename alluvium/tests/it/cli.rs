//! The `alluvium` binary as a child process: exactly-once under SIGKILL, summaries, exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, dead_letters};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every batch of the files directly under `dir`, each of which must be Parquet but the hidden
/// ones (`_checkpoints`, `_staging`, …); none while `dir` does not exist.
pub(crate) fn committed_batches(dir: &Path) -> Vec<alluvium::core::arrow::array::RecordBatch> {
    let mut batches = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || name.starts_with('.') {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(e.path()).unwrap()).unwrap().build().unwrap();
        batches.extend(reader.map(Result::unwrap));
    }
    batches
}

/// Reads the `id` column of every committed Parquet file (what pyarrow/DuckDB would see).
fn committed_ids(dir: &Path) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for b in committed_batches(dir) {
        let ids = b.column_by_name("id").unwrap().as_any().downcast_ref::<arrow_ids::Int64Array>().unwrap();
        for id in ids.values() {
            *counts.entry(*id).or_insert(0) += 1;
        }
    }
    counts
}

mod arrow_ids {
    pub use alluvium::core::arrow::array::Int64Array;
}

fn job(dir: &Path, rows: u64, extra: &str) -> PathBuf {
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "kill-test"
parallelism = 2
restart_delay = "100ms"
[checkpoint]
interval = "150ms"
location = "{out}/_checkpoints"
[source]
type = "generate"
rows = {rows}
batch_size = 500
split_rows = 5000
rows_per_second = 15000
{extra}
[sink]
type = "parquet"
path = "{out}"
target_file_bytes = 100000
"#,
            out = dir.join("out").display()
        ),
    )
    .unwrap();
    path
}

/// Runs the job to completion, SIGKILLing it at random moments `kills` times first.
fn run_with_kills(job: &Path, seed: u64, kills: usize) -> std::process::Output {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..kills {
        let mut child = bin().args(["run", job.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let at = Duration::from_millis(rng.random_range(150..1500));
        let start = Instant::now();
        while start.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "final run failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    for seed in [1u64, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let rows = 60_000;
        let job = job(dir.path(), rows, "");
        run_with_kills(&job, seed, 4);
        let counts = committed_ids(&dir.path().join("out"));
        let missing = (0..rows as i64).filter(|i| !counts.contains_key(i)).count();
        let twice = counts.values().filter(|c| **c > 1).count();
        assert_eq!((missing, twice), (0, 0), "seed {seed}: {missing} rows missing, {twice} duplicated");
        assert_eq!(counts.len() as u64, rows);
        check_with_other_readers(&dir.path().join("out"), rows);
    }
}

/// Standard readers (pyarrow, DuckDB, Polars) must see exactly the committed rows.
fn check_with_other_readers(dir: &Path, rows: u64) {
    if let Some(py) = alluvium_integration::python() {
        let [pa, duck, polars] = alluvium_integration::cross_read_parquet(&py, dir, "id");
        assert_eq!(pa, (rows, rows), "pyarrow");
        assert_eq!(duck, (rows, rows), "duckdb");
        assert_eq!(polars, (rows, rows), "polars");
    }
}

#[test]
fn a_failing_lane_and_dead_letters_show_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        20_000,
        "[[stages]]\ntype = \"fault\"\ndead_letter_every = 100\nfail_subtask = 1\nfail_after_rows = 3000\n\n[dead_letters]\ntype = \"jsonl\"\npath = \"DL\"\n",
    );
    let text = std::fs::read_to_string(&job).unwrap().replace("\"DL\"", &format!("\"{}\"", dir.path().join("dl").display()));
    std::fs::write(&job, text).unwrap();
    let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rows committed  19800"), "{stdout}");
    assert!(stdout.contains("dead letters    200"), "{stdout}");
    assert!(stdout.contains("restarts        1"), "{stdout}");
    let counts = committed_ids(&dir.path().join("out"));
    assert_eq!(counts.len(), 19_800);
    assert_eq!(dead_letters(&dir.path().join("dl")).len(), 200);
}

#[test]
fn validate_and_run_report_config_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 10, "");
    let ok = bin().args(["validate", job.to_str().unwrap()]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    std::fs::write(dir.path().join("bad.toml"), std::fs::read_to_string(&job).unwrap().replace("batch_size", "batchsize"))
        .unwrap();
    let bad = bin().args(["validate", dir.path().join("bad.toml").to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("batchsize") && err.contains("line"), "{err}");

    std::fs::write(dir.path().join("env.toml"), "[pipeline]\nname = \"${NO_SUCH_VAR_X}\"\n").unwrap();
    let bad = bin().args(["run", dir.path().join("env.toml").to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("NO_SUCH_VAR_X"));

    let zero = bin().args(["run", job.to_str().unwrap(), "--set", "pipeline.parallelism=0"]).output().unwrap();
    assert_eq!(zero.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&zero.stderr);
    assert!(stderr.contains("`pipeline.parallelism` = `0` is out of range; give 1 to 1024"), "{stderr}");
}

#[test]
fn the_bundled_example_runs_and_a_rerun_resumes_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/generate.toml");
    let run = || {
        bin()
            .args(["run", example.to_str().unwrap()])
            .env("ALLUVIUM_ROWS", "30000")
            .env("ALLUVIUM_OUTPUT", dir.path().join("gen"))
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains("rows committed  30000"), "{stdout}");
    assert_eq!(committed_ids(&dir.path().join("gen")).len(), 30_000);
    let second = run();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("rows committed  0") && stdout.contains("already finished"), "{stdout}");
}

#[test]
fn sigterm_stops_after_a_last_checkpoint_and_a_rerun_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 60_000;
    let job = job(dir.path(), rows, "");
    let child = bin().args(["run", job.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Stop once the job is under way (a first checkpoint committed), however loaded the machine is.
    let out_dir = dir.path().join("out");
    let start = Instant::now();
    while !std::fs::read_dir(&out_dir).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".parquet"))) {
        assert!(start.elapsed() < Duration::from_secs(30), "the job committed nothing in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("stopped on request"), "{stdout}");
    let partial = committed_ids(&dir.path().join("out"));
    assert!(!partial.is_empty() && (partial.len() as u64) < rows, "{} rows after the stop", partial.len());
    // Everything read before the stop was committed by the last checkpoint: nothing to recover.
    assert!(!stdout.contains("rows recovered"), "{stdout}");

    let again = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(again.status.success());
    let counts = committed_ids(&dir.path().join("out"));
    assert_eq!(counts.len() as u64, rows);
    assert!(counts.values().all(|c| *c == 1));
}

#[test]
fn exactly_once_with_checkpoints_and_output_on_s3() {
    let Some(s3) = alluvium_integration::S3Server::start() else { return };
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000u64;
    let job = job(dir.path(), rows, "");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace(&format!("{}/_checkpoints", dir.path().join("out").display()), &format!("s3://{bucket}/out/_checkpoints"))
        .replace(&format!("path = \"{}\"", dir.path().join("out").display()), &format!("path = \"s3://{bucket}/out\""));
    assert!(text.contains("s3://") && !text.contains(&dir.path().join("out").display().to_string()), "{text}");
    std::fs::write(&job, text).unwrap();
    let with_env = |mut c: Command| {
        c.envs(s3.env());
        c
    };
    // One SIGKILL mid-run, then a run to the end.
    let mut child =
        with_env(bin()).args(["run", job.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let _ = child.kill();
    let _ = child.wait();
    let out = with_env(bin()).args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // s3s-fs stores objects as files: read the committed ones where the server keeps them.
    let counts = committed_ids(&s3.object_path(&bucket, "out"));
    assert_eq!(counts.len() as u64, rows);
    assert!(counts.values().all(|c| *c == 1));
    if let Some(py) = alluvium_integration::python() {
        let [pa, duck, polars] = alluvium_integration::cross_read_parquet(&py, &s3.object_path(&bucket, "out"), "id");
        assert_eq!(pa, (rows, rows), "pyarrow");
        assert_eq!(duck, (rows, rows), "duckdb");
        assert_eq!(polars, (rows, rows), "polars");
    }
    // The secret never reaches the output.
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&s3.secret_key));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&s3.secret_key));
}

#[test]
fn the_thumbnails_example_makes_thumbnails_and_dead_letters_bad_images() {
    use alluvium::core::arrow::array::{Array, BinaryArray, StringArray, StructArray, UInt32Array};
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("nested")).unwrap();
    for i in 0..6u32 {
        let img =
            image::RgbImage::from_fn(320 + 40 * i, 240, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, (i * 40) as u8]));
        img.save(input.join(format!("nested/photo-{i}.jpg"))).unwrap();
    }
    std::fs::copy(repo_root().join("examples/data/images/broken.jpg"), input.join("broken.jpg")).unwrap();
    std::fs::write(input.join("fake.png"), b"not a png at all").unwrap();
    std::fs::write(input.join("notes.txt"), b"skipped: not an image extension").unwrap();
    let output = dir.path().join("out");
    let out = bin()
        .args(["run", repo_root().join("examples/thumbnails.toml").to_str().unwrap()])
        .env("ALLUVIUM_INPUT", &input)
        .env("ALLUVIUM_OUTPUT", &output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rows read       8"), "{stdout}");
    assert!(stdout.contains("rows committed  6"), "{stdout}");
    assert!(stdout.contains("dead letters    2"), "{stdout}");

    let mut thumbs = 0;
    for e in std::fs::read_dir(&output).unwrap().flatten() {
        if !e.file_name().to_string_lossy().ends_with(".parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(e.path()).unwrap()).unwrap().build().unwrap();
        for b in reader {
            let b = b.unwrap();
            let t = b.column_by_name("thumbnail").unwrap().as_any().downcast_ref::<StructArray>().unwrap();
            let data = t.column(0).as_any().downcast_ref::<BinaryArray>().unwrap();
            let widths = b.column_by_name("width").unwrap().as_any().downcast_ref::<UInt32Array>().unwrap();
            let hashes = b.column_by_name("content_hash").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
            for i in 0..b.num_rows() {
                let img = image::load_from_memory(data.value(i)).unwrap();
                assert_eq!((img.width(), img.height()), (224, 224));
                assert!(widths.value(i) >= 320, "the original width is kept");
                assert_eq!(hashes.value(i).len(), 64, "a blake3 hex digest");
                thumbs += 1;
            }
        }
    }
    assert_eq!(thumbs, 6);
    let dead = dead_letters(&output.join("_dead_letters"));
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d["stage"], "decode_image");
        assert!(d["ref"].as_str().unwrap().starts_with("file:///"), "{d}");
    }
}

#[test]
fn the_thumbnails_example_runs_on_its_bundled_images() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(repo_root())
        .args(["run", "examples/thumbnails.toml"])
        .env("ALLUVIUM_OUTPUT", dir.path().join("out"))
        .env_remove("ALLUVIUM_INPUT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rows committed  3") && stdout.contains("dead letters    3"), "{stdout}");
    let dead = dead_letters(&dir.path().join("out/_dead_letters"));
    let reason = |file: &str| {
        let d = dead.iter().find(|d| d["ref"].as_str().unwrap().ends_with(file)).unwrap_or_else(|| panic!("{file}: {dead:?}"));
        d["message"].as_str().unwrap().to_string()
    };
    assert!(reason("broken.jpg").contains("truncated"), "{}", reason("broken.jpg"));
    assert!(reason("corrupt.jpg").contains("corrupt"), "{}", reason("corrupt.jpg"));
    assert!(reason("oversized.png").contains("over max_pixels"), "{}", reason("oversized.png"));
}

#[test]
fn the_thumbnails_example_reads_an_s3_prefix() {
    let Some(s3) = alluvium_integration::S3Server::start() else { return };
    let bucket = s3.bucket();
    let photos = s3.object_path(&bucket, "photos");
    std::fs::create_dir_all(&photos).unwrap();
    for name in ["sunset.jpg", "portrait.jpg", "wide.png", "broken.jpg"] {
        std::fs::copy(repo_root().join("examples/data/images").join(name), photos.join(name)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", repo_root().join("examples/thumbnails.toml").to_str().unwrap()])
        .env("ALLUVIUM_INPUT", format!("s3://{bucket}/photos/"))
        .env("ALLUVIUM_OUTPUT", dir.path().join("out"))
        .envs(s3.env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("rows committed  3") && stdout.contains("dead letters    1"), "{stdout}");
    assert!(!stdout.contains(&s3.secret_key));
}

/// GET `url` (`http://host:port/path`) with a plain socket; returns the body of a 200 response.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    // In pieces, as a client may send it: the server must read the whole request line.
    for piece in ["GET ", path, " HTTP/1.1\r\n", &format!("Host: {addr}\r\n\r\n")] {
        conn.write_all(piece.as_bytes()).ok()?;
        conn.flush().ok()?;
    }
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// `--metrics` serves Prometheus text while the job runs; `checkpoints list|show` then read what
/// the checkpoint location holds (and say plainly when it holds nothing, or a region is unknown).
#[test]
fn metrics_endpoint_and_checkpoint_listing() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), 45_000, "");
    let job = job.to_str().unwrap();
    let none = bin().args(["checkpoints", "list", job]).output().unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("has not run"), "{}", String::from_utf8_lossy(&none.stderr));

    let mut child = bin()
        .args(["run", job, "--metrics", "127.0.0.1:0"])
        .env("ALLUVIUM_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut addr = None;
    let mut line = String::new();
    while addr.is_none() && stderr.read_line(&mut line).unwrap() > 0 {
        addr = line.split("http://").nth(1).and_then(|r| r.split('/').next()).map(str::to_string);
        line.clear();
    }
    let addr = addr.expect("the binary logs where its metrics are");
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let start = Instant::now();
    let text = loop {
        let text = http_get(&addr, "/metrics").expect("metrics served while the job runs");
        if text.contains("alluvium_checkpoints_total{pipeline=\"kill-test\"} ")
            && !text.contains("checkpoints_total{pipeline=\"kill-test\"} 0\n")
        {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no checkpoint in 30 s:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("alluvium_stage_rows_out_total{pipeline=\"kill-test\",stage=\"generate\"}"), "{text}");
    assert!(text.contains("# TYPE alluvium_commits_total counter"), "{text}");
    assert!(http_get(&addr, "/other").is_none(), "only /metrics is served");
    assert!(child.wait().unwrap().success());

    let list = bin().args(["checkpoints", "list", job]).output().unwrap();
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    assert!(stdout.contains("checkpoints of job `kill-test`") && stdout.contains("2 region(s)"), "{stdout}");
    assert_eq!(stdout.matches("finished").count(), 2, "both regions finished:\n{stdout}");
    let show = bin().args(["checkpoints", "show", job, "--region", "1"]).output().unwrap();
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!((manifest["region"].as_u64(), manifest["is_final"].as_bool()), (Some(1), Some(true)));
    let wrong = bin().args(["checkpoints", "show", job, "--region", "9"]).output().unwrap();
    assert_eq!(wrong.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("regions 0 to 1"));
}

/// The object file names committed as Parquet under `dir` (from `ref.uri`), sorted.
fn committed_uris(dir: &Path) -> Vec<String> {
    committed_refs(dir).into_iter().map(|(name, _)| name).collect()
}

/// `backfill` runs one window per day over objects selected by modification time, each into its
/// own `dt=` partition; a rerun skips every finished window and commits nothing again; a reversed
/// range is a config error (exit code 2).
#[test]
fn backfill_runs_each_window_once_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).unwrap();
    let day = |d: u64| std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600 + d * 86_400 + 3600); // 2026-01-0(1+d) 01:00 UTC
    for (name, d) in [("a1.bin", 0), ("a2.bin", 0), ("b1.bin", 1), ("c1.bin", 2), ("c2.bin", 2), ("c3.bin", 2), ("late.bin", 4)] {
        let path = input.join(name);
        std::fs::write(&path, name).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(day(d)).unwrap();
    }
    let out = dir.path().join("out");
    let job = dir.path().join("backfill.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[pipeline]
name = "daily"
[checkpoint]
location = "{out}/_checkpoints"
[io.access]
file_roots = ["{input}"]
[source]
type = "objects"
uri = "{input}"
modified_since = "${{ALLUVIUM_WINDOW_START:-}}"
modified_before = "${{ALLUVIUM_WINDOW_END:-}}"
[sink]
type = "parquet"
path = "{out}/dt=${{ALLUVIUM_WINDOW_DATE:-all}}"
"#,
            out = out.display(),
            input = input.display()
        ),
    )
    .unwrap();
    let backfill = || {
        bin()
            .args(["backfill", job.to_str().unwrap(), "--from", "2026-01-01", "--to", "2026-01-04", "--window", "1d"])
            .output()
            .unwrap()
    };
    let first = backfill();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{stdout}{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains("window 1/3 [2026-01-01T00:00:00Z .. 2026-01-02T00:00:00Z): 2 rows read, 2 committed"), "{stdout}");
    assert!(stdout.contains("window 3/3 [2026-01-03T00:00:00Z .. 2026-01-04T00:00:00Z): 3 rows read, 3 committed"), "{stdout}");
    assert_eq!(committed_uris(&out.join("dt=2026-01-01")), ["a1.bin", "a2.bin"]);
    assert_eq!(committed_uris(&out.join("dt=2026-01-02")), ["b1.bin"]);
    assert_eq!(committed_uris(&out.join("dt=2026-01-03")), ["c1.bin", "c2.bin", "c3.bin"]);
    assert!(!out.join("dt=2026-01-05").exists(), "nothing outside the range");

    let second = backfill();
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(second.status.success(), "{stdout}{}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(stdout.matches("finished by an earlier run, skipped").count(), 3, "{stdout}");
    assert_eq!(committed_uris(&out.join("dt=2026-01-03")), ["c1.bin", "c2.bin", "c3.bin"]);

    let reversed =
        bin().args(["backfill", job.to_str().unwrap(), "--from", "2026-01-04", "--to", "2026-01-01"]).output().unwrap();
    assert_eq!(reversed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&reversed.stderr).contains("is not after --from"));
}

/// On a terminal (a pseudo-terminal from `script`), `run` draws a bar per stage with rows/s and,
/// for a source of known size, an ETA; the summary follows. Off a terminal (every other test), the
/// output has no bars.
#[test]
fn a_terminal_gets_progress_bars() {
    if Command::new("script").arg("--version").output().is_err()
        && alluvium_integration::missing("`script` (util-linux's bsdutils) to make a terminal").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Three seconds at the rate limit: rates are shown once a second has passed.
    let job = job(dir.path(), 90_000, "");
    let command = format!("{} run {}", env!("CARGO_BIN_EXE_alluvium"), job.display());
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).env("ALLUVIUM_LOG", "warn").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("generate [") && text.contains("% eta "), "a bar with an ETA for the source:\n{text}");
    assert!(text.contains(" rows/s, ") && text.contains("parquet "), "a line per stage with rates:\n{text}");
    assert!(text.contains("rows committed  90000"), "{text}");
}

/// A stage that panics (a bug) is one line naming the bug, not Rust's panic report; the runtime
/// restarts the region like after any failure and the output still holds every row once.
#[test]
fn a_panicking_stage_is_reported_in_one_line_and_the_job_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 20_000;
    let fault = "[[stages]]\ntype = \"fault\"\nfail_subtask = 1\nfail_after_rows = 1000\nfail_times = 2\nfail_with_panic = true";
    let job = job(dir.path(), rows, fault);
    let out = bin().args(["run", job.to_str().unwrap()]).env_remove("RUST_BACKTRACE").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("internal error (a bug in Alluvium").count(), 2, "{stderr}");
    assert!(stderr.contains("injected panic 1 of 2 in subtask 1 at "), "{stderr}");
    assert!(!stderr.contains("panicked at") && !stderr.contains("stack backtrace"), "{stderr}");
    let ids = committed_ids(&dir.path().join("out"));
    assert!(ids.len() == rows as usize && ids.values().all(|n| *n == 1), "every row once");
}

/// `(file name, last_modified µs)` of every object committed as Parquet under `dir`, sorted.
fn committed_refs(dir: &Path) -> Vec<(String, i64)> {
    use alluvium::core::arrow::array::AsArray;
    use alluvium::core::arrow::datatypes::TimestampMicrosecondType;
    let mut refs = Vec::new();
    for b in committed_batches(dir) {
        let uri = b.column_by_name("ref").unwrap().as_struct().column_by_name("uri").unwrap().as_string::<i32>().clone();
        let modified = b.column_by_name("last_modified").unwrap().as_primitive::<TimestampMicrosecondType>().clone();
        refs.extend((0..b.num_rows()).map(|i| (uri.value(i).rsplit('/').next().unwrap().to_string(), modified.value(i))));
    }
    refs.sort();
    refs
}

/// A continuous listing of an S3 prefix: objects added while the job runs, while it is down
/// (after a SIGKILL) and overwritten are each committed once per version; a SIGTERM stops it.
#[test]
fn continuous_listing_emits_each_new_or_overwritten_object_once_across_a_kill() {
    use object_store::{ObjectStoreExt, PutPayload};
    let Some(s3) = alluvium_integration::S3Server::start() else { return };
    let bucket = s3.bucket();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_bucket_name(&bucket)
        .with_access_key_id(&s3.access_key)
        .with_secret_access_key(&s3.secret_key)
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    let put = |key: &str, body: &str| {
        rt.block_on(store.put(&object_store::path::Path::from(format!("in/{key}")), PutPayload::from(body.to_string()))).unwrap();
    };
    let job = dir.path().join("tail.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[pipeline]
name = "tail"
parallelism = 2
restart_delay = "100ms"
[checkpoint]
interval = "200ms"
location = "{out}/_checkpoints"
[source]
type = "objects"
uri = "s3://{bucket}/in/"
continuous = true
poll_interval = "200ms"
max_lateness = "1m"
split_objects = 2
[sink]
type = "parquet"
path = "{out}"
"#,
            out = out.display()
        ),
    )
    .unwrap();
    let start = || {
        bin().args(["run", job.to_str().unwrap()]).envs(s3.env()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let wait_for = |n: usize| {
        let t = Instant::now();
        while committed_refs(&out).len() < n {
            assert!(t.elapsed() < Duration::from_secs(30), "{n} objects not committed after 30 s: {:?}", committed_refs(&out));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for k in ["a1", "a2", "a3"] {
        put(k, k);
    }
    let mut child = start();
    wait_for(3);
    put("b1", "b1");
    put("b2", "b2");
    wait_for(5);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    put("c1", "c1");
    put("a1", "a1, overwritten");
    let child = start();
    wait_for(7);
    put("d1", "d1");
    wait_for(8);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let stopped = child.wait_with_output().unwrap();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let refs = committed_refs(&out);
    let names: Vec<&str> = refs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a1", "a1", "a2", "a3", "b1", "b2", "c1", "d1"], "each object once per version: {refs:?}");
    assert_ne!(refs[0].1, refs[1].1, "the overwrite is a new version");
}

/// A CSV manifest with malformed lines, read by two readers in small splits and killed several
/// times: every good line is committed once, every bad one is a dead letter once, with its line.
#[test]
fn a_manifest_with_bad_lines_is_ingested_once_across_kills() {
    use alluvium::core::arrow::array::AsArray;
    use alluvium::core::arrow::datatypes::Int64Type;
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000u64;
    let mut text = String::from("uri,label\n");
    let mut bad = BTreeMap::new();
    for k in 0..rows {
        let line = k + 2;
        if k % 1000 == 7 {
            text.push_str(&format!("img/{k}.jpg,not-a-number\n"));
            bad.insert(line, k);
        } else {
            text.push_str(&format!("img/{k}.jpg,{k}\n"));
        }
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("index.csv"), text).unwrap();
    let out = dir.path().join("out");
    let job = dir.path().join("manifest.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[pipeline]
name = "manifest"
parallelism = 2
restart_delay = "100ms"
[checkpoint]
interval = "150ms"
location = "{out}/_checkpoints"
[io.access]
file_roots = ["{data}"]
[source]
type = "manifest"
paths = ["{data}/index.csv"]
columns = ["label: int64"]
split_bytes = 40000
batch_size = 250
[[stages]]
type = "fault"
delay_per_batch = "25ms"
[sink]
type = "parquet"
path = "{out}"
[dead_letters]
type = "jsonl"
path = "{out}/_dead_letters"
"#,
            out = out.display(),
            data = data.display()
        ),
    )
    .unwrap();
    let run = run_with_kills(&job, 7, 4);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let mut labels = BTreeMap::new();
    for b in committed_batches(&out) {
        let uri = b.column_by_name("ref").unwrap().as_struct().column_by_name("uri").unwrap().as_string::<i32>().clone();
        let label = b.column_by_name("label").unwrap().as_primitive::<Int64Type>().clone();
        for i in 0..b.num_rows() {
            *labels.entry(label.value(i)).or_insert(0) += 1;
            assert_eq!(uri.value(i), format!("file://{}/img/{}.jpg", data.display(), label.value(i)));
        }
    }
    assert_eq!(labels.len() as u64 + bad.len() as u64, rows, "{stdout}");
    assert!(labels.values().all(|n| *n == 1), "a row committed twice");
    let dead = dead_letters(&out.join("_dead_letters"));
    let mut lines: Vec<u64> = dead
        .iter()
        .map(|d| {
            assert_eq!(d["stage"], "manifest");
            let line = d["row"].as_str().map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["line"].as_u64().unwrap());
            let line = line.unwrap();
            let message = d["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("line {line}: ")) && message.contains("'not-a-number'"), "{message}");
            line
        })
        .collect();
    lines.sort();
    assert_eq!(lines, bad.keys().copied().collect::<Vec<_>>(), "each bad line is a dead letter once");
}

/// An object copied in with an old modification time (older than the newest one seen minus
/// `max_lateness`) is picked up, with a warning, not dropped silently.
#[test]
fn continuous_listing_picks_up_an_object_that_arrives_late() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let job = dir.path().join("tail.toml");
    std::fs::write(
        &job,
        format!(
            r#"
[pipeline]
name = "late"
[checkpoint]
interval = "200ms"
location = "{out}/_checkpoints"
[source]
type = "objects"
uri = "file://{input}/"
continuous = true
poll_interval = "200ms"
max_lateness = "1s"
[sink]
type = "parquet"
path = "{out}"
[io.access]
file_roots = ["{input}"]
"#,
            out = out.display(),
            input = input.display()
        ),
    )
    .unwrap();
    let wait_for = |n: usize| {
        let t = Instant::now();
        while committed_refs(&out).len() < n {
            assert!(t.elapsed() < Duration::from_secs(30), "{n} objects not committed after 30 s: {:?}", committed_refs(&out));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::fs::write(input.join("a1"), "a1").unwrap();
    let child = bin().args(["run", job.to_str().unwrap()]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for(1);
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(input.join("b1"), "b1").unwrap();
    wait_for(2);
    // Copied in keeping its modification time of an hour ago: far below the floor.
    std::fs::write(input.join("old"), "old").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(input.join("old")).unwrap().set_modified(hour_ago).unwrap();
    wait_for(3);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let stopped = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(stopped.status.success(), "{stderr}");
    let names: Vec<String> = committed_refs(&out).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a1", "b1", "old"], "each object once");
    assert!(stderr.contains("showed up modified longer than `max_lateness`"), "the log says so: {stderr}");
}
