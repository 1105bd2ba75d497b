//! Exactly-once into Lance, Iceberg and Delta tables through the real binary: SIGKILLs at random
//! moments and aborts at the two sharp points of the commit protocol (before the table commit,
//! and after it but before the runtime knows), then a run to the end. The table must hold every
//! source row once, as another implementation reads it (pylance, pyiceberg, deltalake).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bin;
use alluvium_integration::faults::{Fault, FaultProxy};
use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug)]
enum Format {
    Delta,
    Iceberg,
    Lance,
}

/// Where a test's tables and checkpoints live: a local directory, or a bucket on a real S3 server
/// (with the Iceberg catalog, a SQLite file, on local disk); or a local directory with the Iceberg
/// table in a REST catalog (`None`: each run starts its own server on the run's warehouse).
enum Target<'a> {
    Local,
    S3 { server: &'a alluvium_integration::S3Server, bucket: String, proxy: Option<&'a FaultProxy> },
    Rest(Option<alluvium_integration::RestCatalogServer>),
}

impl Target<'_> {
    /// The root URL for the tables and checkpoints of the test in `dir`.
    fn root(&self, dir: &Path) -> String {
        match self {
            Target::Local | Target::Rest(_) => dir.join("out").display().to_string(),
            Target::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// The environment that reaches the storage directly (for the Python readers).
    fn env(&self) -> Vec<(String, String)> {
        match self {
            Target::Local | Target::Rest(None) => vec![],
            Target::S3 { server, .. } => server.env(),
            Target::Rest(Some(server)) => vec![("ALLUVIUM_CATALOG".to_string(), server.uri.clone())],
        }
    }

    /// Our binary, reaching the storage through the fault proxy when there is one.
    fn command(&self) -> Command {
        let mut c = bin();
        match self {
            Target::S3 { server, proxy: Some(proxy), .. } => c.envs(proxy.env(server)),
            _ => c.envs(self.env()),
        };
        c
    }
}

fn sink_section(format: Format, root: &str, out: &Path) -> String {
    match format {
        Format::Delta => format!("type = \"delta\"\ntable = \"{root}/table\"\ntarget_file_bytes = 100000\norphan_grace = \"0s\""),
        Format::Iceberg => format!(
            "type = \"iceberg\"\ntable = \"default.ids\"\ncatalog = \"${{ALLUVIUM_CATALOG:-{}/catalog.db}}\"\nwarehouse = \"{root}/warehouse\"\norphan_grace = \"0s\"",
            out.display()
        ),
        Format::Lance => format!("type = \"lance\"\ntable = \"{root}/table.lance\""),
    }
}

fn job(dir: &Path, format: Format, rows: u64, target: &Target, parallelism: usize) -> PathBuf {
    let path = dir.join("job.toml");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let root = target.root(dir);
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "lake-kill"
parallelism = {parallelism}
restart_delay = "100ms"
[checkpoint]
interval = "200ms"
location = "{root}/checkpoints"
[source]
type = "generate"
rows = {rows}
batch_size = 500
split_rows = 5000
rows_per_second = 12000
[sink]
{sink}
"#,
            sink = sink_section(format, &root, &out)
        ),
    )
    .unwrap();
    path
}

/// `(rows, distinct ids)` as the format's Python reader sees the table.
fn read_ids(format: Format, dir: &Path, target: &Target) -> Option<(u64, u64)> {
    let py = alluvium_integration::python()?;
    let script = r#"
import sys, json
fmt, root, out, env = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
s3 = env.get("AWS_ENDPOINT")
if fmt == "Delta":
    from deltalake import DeltaTable
    opts = {"AWS_ENDPOINT_URL": s3, "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"], "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"} if s3 else None
    ids = DeltaTable(root + "/table", storage_options=opts).to_pyarrow_table(columns=["id"]).column("id").to_pylist()
elif fmt == "Iceberg":
    opts = {"s3.endpoint": s3, "s3.access-key-id": env["AWS_ACCESS_KEY_ID"], "s3.secret-access-key": env["AWS_SECRET_ACCESS_KEY"], "s3.region": "us-east-1"} if s3 else {}
    warehouse = root + "/warehouse" if s3 else "file://" + root + "/warehouse"
    if env.get("ALLUVIUM_CATALOG", "").startswith("http"):
        from pyiceberg.catalog.rest import RestCatalog
        cat = RestCatalog("alluvium", uri=env["ALLUVIUM_CATALOG"], warehouse=warehouse)
    else:
        from pyiceberg.catalog.sql import SqlCatalog
        cat = SqlCatalog("alluvium", uri="sqlite:///" + out + "/catalog.db", warehouse=warehouse, **opts)
    ids = cat.load_table("default.ids").scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()
else:
    import lance
    opts = {"endpoint": s3, "access_key_id": env["AWS_ACCESS_KEY_ID"], "secret_access_key": env["AWS_SECRET_ACCESS_KEY"], "region": "us-east-1", "allow_http": "true"} if s3 else None
    ids = lance.dataset(root + "/table.lance", storage_options=opts).to_table(columns=["id"]).column("id").to_pylist()
print(len(ids), len(set(ids)))
# deltalake 1.6.6 aborts at interpreter exit ("terminate called without an active exception")
# after its work is done: leave without the teardown.
import os; sys.stdout.flush(); os._exit(0)
"#;
    let env: std::collections::HashMap<_, _> = target.env().into_iter().collect();
    let (root, out) = (target.root(dir), dir.join("out"));
    let args = [&format!("{format:?}"), root.as_str(), out.to_str().unwrap(), &serde_json::to_string(&env).unwrap()];
    let text = alluvium_integration::python_run(&py, script, &args.map(|a| a as &str));
    let v: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Some((v[0], v[1]))
}

fn run_to_end(job: &Path, target: &Target) {
    let out = target.command().args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "final run failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn sigkills(job: &Path, target: &Target, seed: u64, kills: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..kills {
        let mut child =
            target.command().args(["run", job.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let at = Duration::from_millis(rng.random_range(300..2500));
        let start = Instant::now();
        while start.elapsed() < at && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Aborts at `point` (the `n`th time it is reached), then at the next point, then runs to the end.
fn crash_at(job: &Path, target: &Target, points: &[(&str, u32)]) {
    for (point, n) in points {
        let out = target
            .command()
            .args(["run", job.to_str().unwrap()])
            .env("ALLUVIUM_CRASH_AT", format!("{point}:{n}"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "the run was meant to abort at {point}");
    }
}

fn exactly_once(format: Format, target: &Target, parallelism: usize, seeds: &[u64]) {
    let rows = 24_000;
    for &seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        let target = match target {
            Target::Local => Target::Local,
            // A fresh bucket per seed.
            Target::S3 { server, proxy, .. } => Target::S3 { server, bucket: server.bucket(), proxy: *proxy },
            Target::Rest(_) => {
                let Some(server) = alluvium_integration::RestCatalogServer::start(&dir.path().join("out/warehouse")) else {
                    return;
                };
                Target::Rest(Some(server))
            }
        };
        let job = job(dir.path(), format, rows, &target, parallelism);
        if seed == 1 {
            crash_at(&job, &target, &[("after-commit", 2), ("before-commit", 2), ("after-commit", 3)]);
        }
        sigkills(&job, &target, seed, 3);
        run_to_end(&job, &target);
        let Some(seen) = read_ids(format, dir.path(), &target) else { return };
        assert_eq!(seen, (rows, rows), "{format:?} seed {seed}: (rows, distinct ids) must be exactly the source rows");
    }
}

/// The same on a real S3 server (s3s-fs): tables, checkpoints and the Iceberg warehouse in a
/// bucket. One region: s3s-fs checks `If-None-Match: *` before it stores the body, not atomically
/// with it (s3s-fs 0.14.1 `put_object`), so two regions racing for the same Delta log entry or
/// Lance manifest could both "win" there, which AWS S3 and MinIO never allow. Concurrent regions
/// are proven on local disk above, where the put-if-absent is atomic.
fn exactly_once_on_s3(format: Format) {
    let Some(server) = alluvium_integration::S3Server::start() else { return };
    exactly_once(format, &Target::S3 { server: &server, bucket: String::new(), proxy: None }, 1, &[1]);
}

/// The kill trials: seeds 1..=`ALLUVIUM_KILL_TRIALS` (default `default`), each a run of SIGKILLs
/// at random moments and a run to the end. CI runs a handful; set hundreds for a long trial.
fn trials(default: u64) -> Vec<u64> {
    let n = std::env::var("ALLUVIUM_KILL_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(default);
    (1..=n).collect()
}

/// A job on S3 behind the fault proxy, which fails 10 % of requests with every kind of fault it
/// has (throttling, 500s, resets, lost replies, slow and truncated bodies): each run completes with
/// exactly the source's rows, and the faults cost a bounded number of extra requests next to a
/// clean run of the same job through a proxy that injects nothing. One clean run, then one run per
/// seed of `ALLUVIUM_FAULT_TRIALS` (default 2).
fn exactly_once_under_faults(format: Format) {
    let Some(server) = alluvium_integration::S3Server::start() else { return };
    let rows = 36_000;
    let runs = std::env::var("ALLUVIUM_FAULT_TRIALS").ok().and_then(|n| n.parse().ok()).unwrap_or(2u64);
    let mut clean = 0;
    for seed in 0..=runs {
        let rate = if seed == 0 { 0.0 } else { 0.1 };
        let proxy = FaultProxy::start(&server.endpoint, rate, &Fault::ALL, seed);
        let dir = tempfile::tempdir().unwrap();
        let target = Target::S3 { server: &server, bucket: server.bucket(), proxy: Some(&proxy) };
        let job = job(dir.path(), format, rows, &target, 1);
        let out = target.command().args(["run", job.to_str().unwrap()]).output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{format:?} seed {seed}: {}\n{shown}", String::from_utf8_lossy(&out.stderr));
        let (requests, faults) = (proxy.requests(), proxy.injected_total());
        eprintln!("{format:?} seed {seed}, fault rate {rate}: {requests} requests, faults {:?}", proxy.injected());
        let Some(seen) = read_ids(format, dir.path(), &target) else { return };
        assert_eq!(seen, (rows, rows), "{format:?} seed {seed}: (rows, distinct ids) must be exactly the source rows");
        if seed == 0 {
            clean = requests;
        } else {
            assert!(faults > 0, "faults were injected");
            assert!(requests <= 2 * clean + 4 * faults, "{format:?}: {requests} requests with {faults} faults, {clean} without");
        }
    }
}

#[test]
fn delta_on_s3_holds_every_row_once_under_a_ten_percent_fault_rate() {
    exactly_once_under_faults(Format::Delta);
}

#[test]
fn iceberg_on_s3_holds_every_row_once_under_a_ten_percent_fault_rate() {
    exactly_once_under_faults(Format::Iceberg);
}

#[test]
fn lance_on_s3_holds_every_row_once_under_a_ten_percent_fault_rate() {
    exactly_once_under_faults(Format::Lance);
}

#[test]
fn delta_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Delta, &Target::Local, 2, &trials(2));
}

#[test]
fn delta_on_s3_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once_on_s3(Format::Delta);
}

#[test]
fn iceberg_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Iceberg, &Target::Local, 2, &trials(2));
}

#[test]
fn iceberg_on_s3_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once_on_s3(Format::Iceberg);
}

/// The same with the table in an Iceberg REST catalog (rustberg), read back by pyiceberg's REST
/// client: the REST catalog's commit (`POST …/tables/{table}` with requirements) is what fences
/// the two regions' concurrent commits here.
#[test]
fn iceberg_in_a_rest_catalog_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Iceberg, &Target::Rest(None), 2, &[1]);
}

#[test]
fn lance_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Lance, &Target::Local, 2, &trials(2));
}

#[test]
fn lance_on_s3_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once_on_s3(Format::Lance);
}

/// The images_to_* examples write their bundled images (3 good, 3 dead letters) to each format;
/// a second run (as after a kill) adds nothing.
#[test]
fn the_images_to_lake_examples_write_each_format_once() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let Some(py) = alluvium_integration::python() else { return };
    for (example, format) in [("images_to_delta", "delta"), ("images_to_iceberg", "iceberg"), ("images_to_lance", "lance")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("lake");
        for _ in 0..2 {
            let run = bin()
                .current_dir(&root)
                .args(["run", &format!("examples/{example}.toml")])
                .env("ALLUVIUM_OUTPUT", &out)
                .env_remove("ALLUVIUM_INPUT")
                .env_remove("ALLUVIUM_CATALOG")
                .output()
                .unwrap();
            assert!(run.status.success(), "{example}: {}", String::from_utf8_lossy(&run.stderr));
        }
        // `inspect` sees the one commit that landed, with the region's idempotency key.
        let inspect = bin()
            .current_dir(&root)
            .args(["inspect", &format!("examples/{example}.toml")])
            .env("ALLUVIUM_OUTPUT", &out)
            .env_remove("ALLUVIUM_CATALOG")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&inspect.stdout);
        assert!(inspect.status.success(), "{example}: {}", String::from_utf8_lossy(&inspect.stderr));
        assert!(shown.contains(", 3 rows in "), "{example}:\n{shown}");
        let key = format!("alluvium/{}/", example.replace('_', "-"));
        assert_eq!(shown.lines().filter(|l| l.contains(&key) && l.contains("@ checkpoint")).count(), 1, "{example}:\n{shown}");
        assert!(shown.contains("thumbnail: struct<data: "), "{example}:\n{shown}");
        let script = r#"
import sys, os
fmt, out = sys.argv[1], sys.argv[2]
if fmt == "delta":
    from deltalake import DeltaTable
    t = DeltaTable(out + "/images").to_pyarrow_table()
elif fmt == "iceberg":
    from pyiceberg.catalog.sql import SqlCatalog
    cat = SqlCatalog("alluvium", uri="sqlite:///" + out + "/warehouse/catalog.db", warehouse="file://" + out + "/warehouse")
    t = cat.load_table("default.images").scan().to_arrow()
else:
    import lance
    t = lance.dataset(out + "/images.lance").to_table()
print(t.num_rows, len(set(r["uri"] for r in t.column("ref").to_pylist())))
sys.stdout.flush(); os._exit(0)
"#;
        let seen = alluvium_integration::python_run(&py, script, &[format, out.to_str().unwrap()]);
        assert_eq!(seen.trim(), "3 3", "{example}: three thumbnails, each once");
    }
}

/// A small tmpfs mounted at `path` (root only; `None` elsewhere), unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path.to_str().unwrap()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return alluvium_integration::missing("mounting a tmpfs (root, as in CI) for a disk that fills up")
                .map(|n| match n {});
        }
        Some(Self(path.to_path_buf()))
    }

    fn grow(&self, size: &str) {
        let s = Command::new("mount").args(["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()]).status().unwrap();
        assert!(s.success(), "remount failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn table_name(format: Format) -> &'static str {
    match format {
        Format::Delta => "Delta table",
        Format::Iceberg => "Iceberg table `default.ids`",
        Format::Lance => "Lance dataset",
    }
}

/// The disk that holds the table (and the checkpoints) fills up: the regions fail and retry with
/// backoff, the job stops with an error naming what it could not write (the table or the checkpoint
/// location, whichever hit the full disk first) and the cause, and what the table holds
/// meanwhile is whole commits (every row once). With room again, a rerun finishes exactly once.
fn a_full_disk_stops_then_resumes(format: Format) {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("out"), "1m") else { return };
    let rows = 60_000;
    let job = job(dir.path(), format, rows, &Target::Local, 2);
    // About 1.5 MB of table for these rows: the disk fills some way through.
    let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{format:?}: the disk was meant to fill up");
    let last = stderr.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_default();
    // Whichever write hit the full disk first, the table's or a checkpoint's, is the one named.
    let named = last.contains(table_name(format)) || last.contains("in checkpoint location");
    assert!(named && last.contains("No space left on device"), "{format:?}: {last}");
    assert!(stderr.contains("retry_in"), "{format:?}: the regions retry before the job gives up: {stderr}");
    if let Some((seen, distinct)) = read_ids(format, dir.path(), &Target::Local) {
        assert!(seen == distinct && seen < rows, "{format:?}: a partial table holds whole commits: {seen} rows, {distinct} ids");
    }
    disk.grow("64m");
    run_to_end(&job, &Target::Local);
    let Some(seen) = read_ids(format, dir.path(), &Target::Local) else { return };
    assert_eq!(seen, (rows, rows), "{format:?}: every row once after the rerun");
}

#[test]
fn delta_on_a_full_disk_stops_naming_the_table_and_resumes_exactly_once() {
    a_full_disk_stops_then_resumes(Format::Delta);
}

#[test]
fn iceberg_on_a_full_disk_stops_naming_the_table_and_resumes_exactly_once() {
    a_full_disk_stops_then_resumes(Format::Iceberg);
}

#[test]
fn lance_on_a_full_disk_stops_naming_the_table_and_resumes_exactly_once() {
    a_full_disk_stops_then_resumes(Format::Lance);
}

/// Credentials the S3 server refuses (a permission error): the job stops with an error that names
/// the table and the refusal and never shows the secret; with the right credentials a rerun writes
/// every row once. Checkpoints stay on local disk, so it is the table that is refused.
#[test]
fn a_refused_s3_table_stops_each_sink_with_the_table_named_and_no_secret() {
    let Some(server) = alluvium_integration::S3Server::start() else { return };
    for format in [Format::Delta, Format::Iceberg, Format::Lance] {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::S3 { server: &server, bucket: server.bucket(), proxy: None };
        let rows = 6_000;
        // One region, as in the other tests on s3s-fs: its `If-None-Match` is not atomic, so two
        // regions committing the same Lance or Delta version at once could both "win" there (it
        // happened: one region's rows were overwritten), which a real S3 never allows.
        let job = job(dir.path(), format, rows, &target, 1);
        let local = format!("checkpoint.location={}", dir.path().join("checkpoints").display());
        let wrong = format!("WRONG{:x}", rand::random::<u64>());
        let out = target
            .command()
            .args(["run", job.to_str().unwrap(), "--set", &local])
            .env("AWS_SECRET_ACCESS_KEY", &wrong)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{format:?}: the server was meant to refuse the request");
        let last = stderr.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(last.contains(table_name(format)), "{format:?}: {last}");
        assert!(
            last.contains("403") || last.contains("Forbidden") || last.contains("SignatureDoesNotMatch"),
            "{format:?}: {last}"
        );
        assert!(!stderr.contains(&wrong) && !stderr.contains(&server.secret_key), "{format:?}: a secret in the output: {stderr}");
        let out = target.command().args(["run", job.to_str().unwrap(), "--set", &local]).output().unwrap();
        assert!(out.status.success(), "{format:?}: {}", String::from_utf8_lossy(&out.stderr));
        let Some(seen) = read_ids(format, dir.path(), &target) else { return };
        assert_eq!(seen, (rows, rows), "{format:?}: every row once after the rerun");
    }
}

/// The continuous example: every object of the watched directory, then one added while it runs,
/// lands in the Iceberg table once (as `inspect` and pyiceberg see it); SIGTERM stops it cleanly.
#[test]
fn the_prefix_to_iceberg_example_follows_a_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir_all(&input).unwrap();
    for e in std::fs::read_dir(root.join("examples/data/images")).unwrap().flatten() {
        std::fs::copy(e.path(), input.join(e.file_name())).unwrap();
    }
    let files = std::fs::read_dir(&input).unwrap().count();
    let env =
        [("ALLUVIUM_INPUT", input.to_str().unwrap()), ("ALLUVIUM_OUTPUT", out.to_str().unwrap()), ("ALLUVIUM_POLL", "200ms")];
    let rows = || {
        let o = bin()
            .current_dir(&root)
            .args(["inspect", "examples/prefix_to_iceberg.toml"])
            .envs(env)
            .env_remove("ALLUVIUM_CATALOG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        // "  version 7, 6 rows in 1 data files"
        text.split(", ").nth(1).and_then(|r| r.split(" rows").next()?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let wait_for = |n: u64| {
        let t = Instant::now();
        while rows() < n {
            assert!(t.elapsed() < Duration::from_secs(60), "the table did not reach {n} rows");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let child = bin()
        .current_dir(&root)
        .args(["run", "examples/prefix_to_iceberg.toml"])
        .envs(env)
        .env_remove("ALLUVIUM_CATALOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(files as u64);
    std::fs::write(input.join("new.bin"), b"arrived while running").unwrap();
    wait_for(files as u64 + 1);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let stopped = child.wait_with_output().unwrap();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let Some(py) = alluvium_integration::python() else { return };
    let script = r#"
import sys, os
from pyiceberg.catalog.sql import SqlCatalog
out = sys.argv[1]
cat = SqlCatalog("alluvium", uri="sqlite:///" + out + "/warehouse/catalog.db", warehouse="file://" + out + "/warehouse")
t = cat.load_table("default.objects").scan().to_arrow()
uris = [r["uri"] for r in t.column("ref").to_pylist()]
print(len(uris), len(set(uris)), sum(1 for h in t.column("content_hash").to_pylist() if h))
sys.stdout.flush(); os._exit(0)
"#;
    let seen = alluvium_integration::python_run(&py, script, &[out.to_str().unwrap()]);
    let n = files + 1;
    assert_eq!(seen.trim(), format!("{n} {n} {n}"), "every object once, hashed");
}

/// Checkpoint state lost after the table took a commit: the newest manifest of a region deleted,
/// then the whole checkpoint location deleted. Each rerun stops with an error that names the
/// table's commit and the missing manifest (no row lost or doubled: the table is as before), and
/// only `--start-over` ingests everything again, as a new job.
fn lost_checkpoints_stop_the_job(format: Format) {
    let dir = tempfile::tempdir().unwrap();
    let rows = 24_000;
    let job = job(dir.path(), format, rows, &Target::Local, 1);
    // Abort right after the 4th table commit: region 0's newest manifest is in the table.
    crash_at(&job, &Target::Local, &[("after-commit", 4)]);
    let before = read_ids(format, dir.path(), &Target::Local);
    if let Some((seen, distinct)) = before {
        assert!(seen == distinct && seen > 0 && seen < rows, "{format:?}: {seen} rows, {distinct} ids");
    }
    let region = dir.path().join("out/checkpoints/regions/0");
    let mut manifests: Vec<_> = std::fs::read_dir(&region)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("chk-"))
        .collect();
    manifests.sort();
    let newest = manifests.pop().expect("a manifest");
    std::fs::remove_file(&newest).unwrap();
    let stopped = |what: &str| {
        let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{format:?} {what}: the run must stop: {stderr}");
        assert!(stderr.contains("checkpoint state was lost") && stderr.contains("region 0"), "{format:?} {what}: {stderr}");
        assert!(stderr.contains("--start-over") && !stderr.contains("delete it"), "{format:?} {what}: {stderr}");
        assert_eq!(read_ids(format, dir.path(), &Target::Local), before, "{format:?} {what}: the table is untouched");
        stderr.to_string()
    };
    let stderr = stopped("newest manifest deleted");
    let name = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(stderr.contains(&name), "{format:?}: the missing manifest {name} is named: {stderr}");
    std::fs::remove_dir_all(dir.path().join("out/checkpoints")).unwrap();
    stopped("checkpoint location deleted");
    // Starting over is explicit, and writes every row again as a new job.
    let out = bin().args(["run", job.to_str().unwrap(), "--start-over"]).output().unwrap();
    assert!(out.status.success(), "{format:?}: {}", String::from_utf8_lossy(&out.stderr));
    if let (Some((seen, distinct)), Some((before, _))) = (read_ids(format, dir.path(), &Target::Local), before) {
        assert_eq!((seen, distinct), (before + rows, rows), "{format:?}: a new job writes every row again");
    }
}

#[test]
fn delta_stops_when_checkpoint_state_behind_its_table_was_lost() {
    lost_checkpoints_stop_the_job(Format::Delta);
}

#[test]
fn iceberg_stops_when_checkpoint_state_behind_its_table_was_lost() {
    lost_checkpoints_stop_the_job(Format::Iceberg);
}

#[test]
fn lance_stops_when_checkpoint_state_behind_its_table_was_lost() {
    lost_checkpoints_stop_the_job(Format::Lance);
}

/// A table on a read-only filesystem is a configuration error: the job stops at once naming the
/// table and what to check, without restarting its regions in the hope that it heals (no retry
/// makes a read-only directory writable). Root ignores permission bits, so the test mounts a
/// read-only tmpfs.
#[test]
fn a_table_on_a_read_only_filesystem_stops_at_once_as_a_configuration_error() {
    for format in [Format::Lance, Format::Delta] {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), format, 2_000, &Target::Local, 1);
        let ro = dir.path().join("out/table");
        let Some(disk) = SmallDisk::mount(&ro, "1m") else { return };
        let table = if matches!(format, Format::Lance) { "table.lance" } else { "table" };
        let text = std::fs::read_to_string(&job).unwrap().replace(&format!("/{table}\""), "/table/t\"");
        std::fs::write(&job, text).unwrap();
        disk.grow("1m,ro");
        let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{format:?}: {stderr}");
        let last = stderr.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(last.contains("Read-only file system") || last.contains("os error 30"), "{format:?}: {last}");
        assert!(!stderr.contains("retry_in"), "{format:?}: a configuration error is not retried: {stderr}");
    }
}

/// Waits for the job `child` to end, at most `limit` after its dependency came back.
fn finishes(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < limit, "the job did not finish within {limit:?} after its dependency came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The REST catalog stops for 10 s in the middle of a job and comes back on the same port: the
/// commits wait for it (the log says so), no region restarts, and the job finishes on its own with
/// every row once, as pyiceberg reads the table.
#[test]
fn iceberg_commits_wait_for_a_rest_catalog_that_is_down_and_the_job_finishes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = alluvium_integration::RestCatalogServer::start(&dir.path().join("out/warehouse")) else { return };
    let rows = 150_000;
    let job = job(dir.path(), Format::Iceberg, rows, &Target::Local, 2);
    let log = |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap());
    let mut child = bin()
        .args(["run", job.to_str().unwrap()])
        .env("ALLUVIUM_CATALOG", &server.uri)
        .stdout(log("run.stdout"))
        .stderr(log("run.stderr"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the job runs");
    server.stop();
    std::thread::sleep(Duration::from_secs(10));
    assert!(child.try_wait().unwrap().is_none(), "the job waits for its catalog");
    server.restart();
    let status = finishes(&mut child, Duration::from_secs(120));
    let stderr = std::fs::read_to_string(dir.path().join("run.stderr")).unwrap();
    let stdout = std::fs::read_to_string(dir.path().join("run.stdout")).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("are waiting on its table"), "the log says the commits wait: {stderr}");
    assert!(stderr.contains("waiting on its service `table commits`"), "the progress line says so: {stderr}");
    assert!(!stderr.contains("region failed"), "no region restarted: {stderr}");
    assert!(stdout.contains("dead letters    0"), "{stdout}");
    let target = Target::Rest(Some(server));
    let Some(seen) = read_ids(Format::Iceberg, dir.path(), &target) else { return };
    assert_eq!(seen, (rows, rows), "(rows, distinct ids) must be exactly the source rows");
}

/// The S3 server holding a Delta table and the job's checkpoints stops for 8 s in the middle of
/// the job and comes back with the same objects: the job waits it out (its requests retry, its
/// commits wait, its region restarts past `max_restarts`) and finishes on its own, every row once
/// as deltalake reads the table.
#[test]
fn a_job_on_s3_waits_out_the_store_going_down_and_finishes_exactly_once() {
    let Some(mut server) = alluvium_integration::S3Server::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bucket = server.bucket();
    let rows = 150_000;
    let job = job(dir.path(), Format::Delta, rows, &Target::S3 { server: &server, bucket: bucket.clone(), proxy: None }, 1);
    let log = |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).unwrap());
    let mut child = bin()
        .args(["run", job.to_str().unwrap()])
        .envs(server.env())
        .stdout(log("run.stdout"))
        .stderr(log("run.stderr"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the job runs");
    server.stop();
    std::thread::sleep(Duration::from_secs(8));
    assert!(child.try_wait().unwrap().is_none(), "the job waits for its store");
    server.restart();
    let status = finishes(&mut child, Duration::from_secs(180));
    let stderr = std::fs::read_to_string(dir.path().join("run.stderr")).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    let target = Target::S3 { server: &server, bucket, proxy: None };
    let Some(seen) = read_ids(Format::Delta, dir.path(), &target) else { return };
    assert_eq!(seen, (rows, rows), "(rows, distinct ids) must be exactly the source rows");
}
