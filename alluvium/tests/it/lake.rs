//! Exactly-once into Lance, Iceberg and Delta tables through the real binary: SIGKILLs at random
//! moments and aborts at the two sharp points of the commit protocol (before the table commit,
//! and after it but before the runtime knows), then a run to the end. The table must hold every
//! source row once, as another implementation reads it (pylance, pyiceberg, deltalake).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_alluvium"));
    c.env("ALLUVIUM_LOG", "warn");
    c
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Delta,
    Iceberg,
    Lance,
}

fn sink_section(format: Format, out: &Path) -> String {
    match format {
        Format::Delta => format!("type = \"delta\"\ntable = \"{}/table\"\ntarget_file_bytes = 100000\norphan_grace = \"0s\"", out.display()),
        Format::Iceberg => format!(
            "type = \"iceberg\"\ntable = \"default.ids\"\ncatalog = \"{out}/catalog.db\"\nwarehouse = \"{out}/warehouse\"\norphan_grace = \"0s\"",
            out = out.display()
        ),
        Format::Lance => format!("type = \"lance\"\ntable = \"{}/table.lance\"", out.display()),
    }
}

fn job(dir: &Path, format: Format, rows: u64) -> PathBuf {
    let path = dir.join("job.toml");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        &path,
        format!(
            r#"
[pipeline]
name = "lake-kill"
parallelism = 2
restart_delay = "100ms"
[checkpoint]
interval = "200ms"
location = "{ckpt}"
[source]
type = "generate"
rows = {rows}
batch_size = 500
split_rows = 5000
rows_per_second = 12000
[sink]
{sink}
"#,
            ckpt = dir.join("checkpoints").display(),
            sink = sink_section(format, &out)
        ),
    )
    .unwrap();
    path
}

/// `(rows, distinct ids)` as the format's Python reader sees the table.
fn read_ids(format: Format, out: &Path) -> Option<(u64, u64)> {
    let py = alluvium_integration::python()?;
    let script = r#"
import sys
fmt, out = sys.argv[1], sys.argv[2]
if fmt == "Delta":
    from deltalake import DeltaTable
    ids = DeltaTable(out + "/table").to_pyarrow_table(columns=["id"]).column("id").to_pylist()
elif fmt == "Iceberg":
    from pyiceberg.catalog.sql import SqlCatalog
    cat = SqlCatalog("alluvium", uri="sqlite:///" + out + "/catalog.db", warehouse="file://" + out + "/warehouse")
    ids = cat.load_table("default.ids").scan(selected_fields=("id",)).to_arrow().column("id").to_pylist()
else:
    import lance
    ids = lance.dataset(out + "/table.lance").to_table(columns=["id"]).column("id").to_pylist()
print(len(ids), len(set(ids)))
# deltalake 1.6.6 aborts at interpreter exit ("terminate called without an active exception")
# after its work is done: leave without the teardown.
import os; sys.stdout.flush(); os._exit(0)
"#;
    let text = alluvium_integration::python_run(&py, script, &[&format!("{format:?}"), out.to_str().unwrap()]);
    let v: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    Some((v[0], v[1]))
}

fn run_to_end(job: &Path) {
    let out = bin().args(["run", job.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "final run failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn sigkills(job: &Path, seed: u64, kills: usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..kills {
        let mut child = bin().args(["run", job.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
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
fn crash_at(job: &Path, points: &[(&str, u32)]) {
    for (point, n) in points {
        let out = bin().args(["run", job.to_str().unwrap()]).env("ALLUVIUM_CRASH_AT", format!("{point}:{n}")).output().unwrap();
        assert!(!out.status.success(), "the run was meant to abort at {point}");
    }
}

fn exactly_once(format: Format) {
    let rows = 24_000;
    for seed in [1u64, 2] {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), format, rows);
        if seed == 1 {
            crash_at(&job, &[("after-commit", 2), ("before-commit", 2), ("after-commit", 3)]);
        }
        sigkills(&job, seed, 3);
        run_to_end(&job);
        let Some(seen) = read_ids(format, &dir.path().join("out")) else { return };
        assert_eq!(seen, (rows, rows), "{format:?} seed {seed}: (rows, distinct ids) must be exactly the source rows");
    }
}

#[test]
fn delta_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Delta);
}

#[test]
fn iceberg_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Iceberg);
}

#[test]
fn lance_holds_every_row_once_after_kills_and_crashes_mid_commit() {
    exactly_once(Format::Lance);
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
