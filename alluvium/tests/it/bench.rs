//! `alluvium bench` at a tiny scale: every workload runs as a job, commits exactly the items it
//! generated, and reports its figures in the table and the JSON. (The figures themselves are not
//! checked: speed targets live in the benchmark's output, not in tests.)

use serde_json::Value;

fn bench(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    crate::bin().arg("bench").args(args).arg("--dir").arg(dir).output().unwrap()
}

#[test]
fn the_bench_runs_every_workload_and_reports_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("figures.json");
    let out = bench(dir.path(), &["--scale", "0.005", "--seed", "7", "--json", json.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["seed"], 7);
    let workloads = doc["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads.iter().map(|w| w["workload"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "images",
            "video",
            "texts",
            "hash-2gb",
            "write-parquet",
            "write-delta",
            "write-iceberg",
            "write-lance",
            "checkpoints-none",
            "checkpoints-1s",
            "recovery"
        ]
    );
    // The generated sizes at scale 0.005 (each with its floor), as the bench's docs give them.
    let expected = [("images", 25), ("video", 2), ("hash-2gb", 1), ("write-delta", 20_000), ("checkpoints-1s", 500_000)];
    for w in workloads {
        let name = w["workload"].as_str().unwrap();
        assert!(w.get("failed").is_none(), "{name} failed: {}", w["failed"]);
        if let Some(why) = w.get("skipped") {
            assert!(std::env::var_os("CI").is_none(), "{name} skipped under CI: {why}");
            eprintln!("SKIPPED: bench workload {name}: {why}");
            continue;
        }
        assert!(w["items"].as_u64().unwrap() > 0, "{name}: {w}");
        assert!(w["seconds"].as_f64().unwrap() > 0.0, "{name}: {w}");
        assert!(w["peak_rss_mib"].as_f64().unwrap() > 1.0, "{name}: {w}");
        assert!(w["user_s"].as_f64().unwrap() + w["sys_s"].as_f64().unwrap() > 0.0, "{name}: {w}");
        if let Some((_, n)) = expected.iter().find(|(e, _)| *e == name) {
            assert_eq!(w["items"].as_u64(), Some(*n), "{name}: {w}");
        }
        assert!(stdout.lines().any(|l| l.starts_with(name) && !l.contains("FAILED")), "{name} not in the table:\n{stdout}");
    }
    // The texts' chunks: 2 documents of about 3 KB cut into 128-token chunks, so several each.
    if let Some(t) = workloads.iter().find(|w| w["workload"] == "texts" && w.get("skipped").is_none()) {
        assert!(t["items"].as_u64().unwrap() > 4, "{t}");
    }

    // A second run reuses the generated data and leaves no job output behind.
    let again = bench(dir.path(), &["--scale", "0.005", "--seed", "7", "--only", "images,hash"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(!stderr.contains("generating") && !stderr.contains("writing one object"), "{stderr}");
    assert!(!dir.path().join("out").exists());
    let doc: Value = serde_json::from_slice(&std::fs::read(dir.path().join("bench.json")).unwrap()).unwrap();
    assert_eq!(doc["workloads"].as_array().unwrap().len(), 2);
}

#[test]
fn bench_options_that_make_no_sense_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), &["--only", "nothing"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("names no workload") && stderr.contains("write-lance"), "{stderr}");
    let out = bench(dir.path(), &["--scale", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("0.01"));
}
