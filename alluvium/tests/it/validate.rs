//! `alluvium validate` makes the checks `alluvium run` makes before it starts (sizes and counts in
//! range, zeros refused, local output directories not files), each error naming the key; and a
//! value from the environment stays a value: it adds no key and reaches no message.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::bin;

/// A small valid job in `dir`, its text changed by `edit`.
fn job(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = format!(
        r#"[pipeline]
name = "checks"
parallelism = 2
[checkpoint]
interval = "1s"
location = "{out}/_checkpoints"
[source]
type = "generate"
rows = 100
batch_size = 10
[sink]
type = "parquet"
path = "{out}/data"
"#,
        out = dir.display()
    );
    let path = dir.join("job.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn command(what: &str, job: &Path, envs: &[(&str, &str)]) -> Output {
    bin().arg(what).arg(job).envs(envs.iter().copied()).output().unwrap()
}

/// Exit code 2 (a config error), and stderr saying `says`; returns stderr.
fn refused(out: &Output, says: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{stderr}{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains(says), "expected `{says}` in: {stderr}");
    stderr
}

#[test]
fn validate_refuses_what_run_refuses_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ok = command("validate", &job(dir.path(), |t| t), &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid job `checks`"));

    let mut cases = vec![
        ("parallelism = 2", "parallelism = 0", "`pipeline.parallelism` = `0` is out of range; give 1 to 1024"),
        ("parallelism = 2", "parallelism = 100000", "`pipeline.parallelism` = `100000` is out of range; give 1 to 1024"),
        ("parallelism = 2", "parallelism = 2\nchannel_bytes = 0", "`pipeline.channel_bytes` = `0` is out of range"),
        ("interval = \"1s\"", "interval = \"0s\"", "`checkpoint.interval` is 0"),
        ("batch_size = 10", "batch_size = 0", "`source.batch_size` = `0` is out of range"),
        (
            "batch_size = 10",
            "batch_size = 10\npayload_bytes = 1000000000000",
            "`source.payload_bytes` = `1000000000000` is out of range; give 0 to 67108864 (64 MiB)",
        ),
        ("[sink]", "[[stages]]\ntype = \"fault\"\ndead_letter_every = 0\n[sink]", "`stages.1.dead_letter_every` = `0`"),
        ("path = ", "row_group_bytes = 0\npath = ", "`sink.row_group_bytes` = `0` is out of range"),
    ];
    if cfg!(feature = "object") {
        cases.push(("[sink]", "[[stages]]\ntype = \"fetch\"\nmax_object_bytes = 0\n[sink]", "`stages.1.max_object_bytes` = `0`"));
    }
    if cfg!(feature = "formats") {
        cases.push((
            "[sink]",
            "[[stages]]\ntype = \"decode_image\"\nmax_batch_bytes = 3000000000\n[sink]",
            "`stages.1.max_batch_bytes` = `3000000000` is out of range",
        ));
    }
    if cfg!(feature = "video") {
        cases.push((
            "[sink]",
            "[[stages]]\ntype = \"audio_windows\"\nsample_rate = 1\n[sink]",
            "`stages.1.sample_rate` = `1` is out of range; give 1000 to 768000",
        ));
        cases.push((
            "[sink]",
            "[[stages]]\ntype = \"extract_frames\"\nmax_outputs_per_input = 0\n[sink]",
            "`stages.1.max_outputs_per_input` = `0` is out of range",
        ));
    }
    for (from, to, says) in cases {
        let case = tempfile::tempdir().unwrap();
        let path = job(case.path(), |t| t.replace(from, to));
        refused(&command("validate", &path, &[]), says);
        refused(&command("run", &path, &[]), says);
        assert!(!case.path().join("data").exists(), "{to}: nothing written");
    }
}

#[cfg(feature = "formats")]
#[test]
fn an_image_quality_out_of_range_names_the_key_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    for (quality, says) in [
        ("0", "`stages.2.quality` = `0` is out of range; give 1 to 100"),
        ("300", "`stages.2.quality` = `300` is out of range; give 1 to 100"),
    ] {
        let path = job(dir.path(), |t| {
            t.replace(
                "[sink]",
                &format!("[[stages]]\ntype = \"fault\"\n[[stages]]\ntype = \"encode_image\"\nquality = {quality}\n[sink]"),
            )
        });
        refused(&command("validate", &path, &[]), says);
    }
}

#[test]
fn a_sink_path_that_is_a_file_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data"), b"a file, not a directory").unwrap();
    let path = job(dir.path(), |t| t);
    let says = format!("`sink.path` = `{}/data` is an existing file, not a directory", dir.path().display());
    refused(&command("validate", &path, &[]), &says);
    // `run` says so at once (not after its region restarts), and writes nothing.
    let start = std::time::Instant::now();
    refused(&command("run", &path, &[]), &says);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert!(!dir.path().join("_checkpoints/regions").exists());
    // Dead letters too.
    let path = job(dir.path(), |t| {
        t.replace(&format!("{}/data", dir.path().display()), &format!("{}/out", dir.path().display()))
            + &format!("[dead_letters]\ntype = \"jsonl\"\npath = \"{}/data/dl\"\n", dir.path().display())
    });
    refused(&command("validate", &path, &[]), "`dead_letters.path`");
}

#[test]
fn values_from_the_environment_add_no_key_and_reach_no_message() {
    let dir = tempfile::tempdir().unwrap();
    // A quote and newlines: before, this made `name = "x"`, then `channel_bytes = 0`, then a comment.
    let evil = "x\"\nchannel_bytes = 0\n#";
    let path = job(dir.path(), |t| t.replace("name = \"checks\"", "name = \"${ALLUVIUM_TEST_JOBNAME}\""));
    let stderr = refused(&command("validate", &path, &[("ALLUVIUM_TEST_JOBNAME", evil)]), "${ALLUVIUM_TEST_JOBNAME}");
    assert!(stderr.contains("pipeline name") && !stderr.contains("channel_bytes"), "{stderr}");

    // A value with a quote is not printed: not by parsing (the value is never in the text parsed),
    // not by typing, not by building.
    let label = "pa\"ss-w0rd-1234";
    for (from, to) in [
        ("name = \"checks\"", "name = \"${ALLUVIUM_TEST_LABEL}\""),
        ("name = \"checks\"", "name = \"${ALLUVIUM_TEST_LABEL}\" trailing"),
        ("rows = 100", "rows = \"${ALLUVIUM_TEST_LABEL}\""),
        ("interval = \"1s\"", "interval = \"${ALLUVIUM_TEST_LABEL}\""),
    ] {
        let path = job(dir.path(), |t| t.replace(from, to));
        let stderr = refused(&command("validate", &path, &[("ALLUVIUM_TEST_LABEL", label)]), "${ALLUVIUM_TEST_LABEL}");
        assert!(!stderr.contains("w0rd"), "{to}: {stderr}");
    }

    // Outside quotes a `${…}` is a whole value, a number or a boolean, and nothing more.
    let path = job(dir.path(), |t| t.replace("parallelism = 2", "parallelism = ${ALLUVIUM_TEST_LANES}"));
    let ok = command("validate", &path, &[("ALLUVIUM_TEST_LANES", "3")]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stderr =
        refused(&command("validate", &path, &[("ALLUVIUM_TEST_LANES", "3\nchannel_bytes = 0")]), "not a number or true/false");
    assert!(stderr.contains("`pipeline.parallelism` = ${ALLUVIUM_TEST_LANES}") && !stderr.contains("channel_bytes"), "{stderr}");
}

/// Lance names its own data files, so the sink cannot delete a failed attempt's files:
/// `orphan_grace` on a Lance sink is refused, saying why and what deletes them instead.
#[cfg(feature = "lance")]
#[test]
fn orphan_grace_on_a_lance_sink_is_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = job(dir.path(), |t| t.replace("type = \"parquet\"\npath = ", "type = \"lance\"\norphan_grace = \"1h\"\ntable = "));
    let stderr = refused(&command("validate", &path, &[]), "`orphan_grace` does not apply to Lance");
    assert!(stderr.contains("cleanup_old_versions") && stderr.contains("Remove the key"), "{stderr}");
    let without = job(dir.path(), |t| t.replace("type = \"parquet\"\npath = ", "type = \"lance\"\ntable = "));
    let ok = command("validate", &without, &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
