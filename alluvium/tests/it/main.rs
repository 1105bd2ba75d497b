//! Tests of the `alluvium` binary, as a child process.

#[cfg(feature = "video")]
mod audio;
mod bench;
mod cli;
#[cfg(feature = "video")]
mod fuzz;
#[cfg(all(feature = "models", feature = "lance", feature = "video"))]
mod image_embeddings;
mod lake;
mod library;
#[cfg(feature = "models")]
mod outage;
#[cfg(all(feature = "delta", feature = "lance"))]
mod soak;
mod tables;
#[cfg(all(feature = "models", feature = "delta"))]
mod texts;
mod validate;
#[cfg(feature = "video")]
mod video;

/// The `alluvium` binary, logging warnings only.
fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_alluvium"));
    c.env("ALLUVIUM_LOG", "warn");
    c
}

/// `alluvium serve-model ARGS` on a free port of 127.0.0.1, its output read line by line.
#[cfg(feature = "models")]
struct ServeModel {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// The first line: "serving `NAME` (D-d) at URL".
    first: String,
    url: String,
}

#[cfg(feature = "models")]
impl ServeModel {
    fn start(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", args, &[])
    }

    /// As [`ServeModel::start`], listening on `listen` (a port a job expects it on), with `envs` set
    /// (the variable an `--api-key-env` names).
    fn start_at(listen: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = bin()
            .args(["serve-model", "--listen", listen])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a first line").unwrap();
        let url = first.split(" at ").nth(1).expect("serving `…` at URL").to_string();
        Self { child, lines, first, url }
    }

    /// Stops it with SIGTERM while its output is still read; it must exit cleanly. Returns its
    /// last line (the totals).
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert!(self.child.wait().unwrap().success());
        self.lines.map(|l| l.unwrap()).last().expect("a last line")
    }
}

/// A registry for the S3 server `s3`.
#[cfg(feature = "video")]
fn registry(s3: &alluvium_integration::S3Server) -> std::sync::Arc<alluvium::object::ObjectStoreRegistry> {
    let cfg: alluvium::object::StoreConfig = toml::from_str(&format!(
        "[s3]\nendpoint = '{}'\naccess_key_id = '{}'\nsecret_access_key = '{}'\nregion = 'us-east-1'\nallow_http = 'true'\n",
        s3.endpoint, s3.access_key, s3.secret_key
    ))
    .unwrap();
    std::sync::Arc::new(alluvium::object::ObjectStoreRegistry::new(cfg))
}

/// Runs the job `run` makes, SIGKILLs it after `after` (or once it ends), then runs it to the
/// end twice: a crash, the recovery, and a rerun that must add nothing.
#[cfg(feature = "video")]
fn killed_then_run_twice(run: impl Fn() -> std::process::Command, after: std::time::Duration) {
    use std::process::Stdio;
    let mut child = run().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < after && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    for _ in 0..2 {
        let done = run().output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
}

/// Puts `files` (key, local path) into `bucket` on `s3`.
#[cfg(feature = "video")]
fn put_files(s3: &alluvium_integration::S3Server, bucket: &str, files: &[(&str, std::path::PathBuf)]) {
    use object_store::ObjectStoreExt;
    let reg = registry(s3);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (store, _) = reg.resolve(&format!("s3://{bucket}/x")).await.unwrap().unwrap();
        for (key, path) in files {
            let bytes = object_store::PutPayload::from(std::fs::read(path).unwrap());
            store.put(&object_store::path::Path::from(*key), bytes).await.unwrap();
        }
    });
}

/// `alluvium run examples/{example}.toml` from the repository's root, reading `input` on `s3`
/// and writing under `out`.
#[cfg(feature = "video")]
fn example_on_s3(
    example: &str,
    input: &str,
    out: &std::path::Path,
    s3: &alluvium_integration::S3Server,
) -> std::process::Command {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut c = bin();
    c.current_dir(root)
        .args(["run", &format!("examples/{example}.toml")])
        .env("ALLUVIUM_INPUT", input)
        .env("ALLUVIUM_OUTPUT", out)
        .envs(s3.env());
    c
}

/// Every dead letter in the JSON Lines files directly under `dir`.
fn dead_letters(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl"))
        .flat_map(|e| {
            std::fs::read_to_string(e.path()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

/// The message of the one dead letter whose row mentions `file`.
fn dead_letter_message(letters: &[serde_json::Value], file: &str) -> String {
    let found: Vec<&serde_json::Value> = letters.iter().filter(|d| d["row"].to_string().contains(file)).collect();
    assert_eq!(found.len(), 1, "one dead letter for {file}: {letters:?}");
    found[0]["message"].as_str().unwrap().to_string()
}
