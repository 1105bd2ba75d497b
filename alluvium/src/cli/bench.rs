//! `alluvium bench`: the standard workloads on generated data, measured the way a user runs them.
//!
//! Each workload is a job file run by this same binary (`alluvium run`) in a child process, so a
//! figure is what a user gets: start-up, planning, checkpoints and commits included. The child's
//! peak RSS and CPU seconds come from the kernel (`wait4`'s `rusage`), its item count from the
//! summary it prints. The workloads:
//!
//! | workload | data | job |
//! |---|---|---|
//! | `images` | 5,000 photo-like 640×480 JPEGs | fetch → decode → 224×224 → JPEG → Lance |
//! | `video` | 4 H.264 720p videos of 10 s, 2 s GOPs (Debian's `ffmpeg` makes them) | 1 frame/s at 224 → Lance |
//! | `texts` | 300 documents of about 3 KB | fetch → 128-token chunks → MiniLM → Delta |
//! | `hash-2gb` | one 2 GiB object of random bytes | hash (blake3, streamed) → Parquet |
//! | `write-{parquet,delta,iceberg,lance}` | 4,000,000 generated rows of 1 KiB | → the sink, checkpoints every 1 s |
//! | `checkpoints-{none,1s}` | 100,000,000 generated rows of 64 B | → Parquet, one final checkpoint / one every second |
//! | `recovery` | an endless generated stream into Delta | SIGKILL after two checkpoints; time from the restart to every region's next checkpoint |
//!
//! `--scale` multiplies every size (0.01 for a smoke run); `--seed` changes the data. Data is
//! generated once per (workload, size, seed) under `--dir` and kept for the next run; each
//! workload's output is removed after it is measured. The table goes to stdout and the same
//! figures as JSON to `--json` (default `DIR/bench.json`). A workload this build or machine
//! cannot run (no `ffmpeg`, no MiniLM weights, a sink feature left out) is listed as skipped with
//! the reason; one that fails is listed with its error and makes the exit code 1.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alluvium::{Error, Result};
use image::ImageEncoder;

/// The command line's choices.
pub struct Options {
    /// Workload names (or prefixes: `write` picks all four writes); empty: all.
    pub only: Vec<String>,
    /// Multiplies every data size.
    pub scale: f64,
    /// Seeds the data generators.
    pub seed: u64,
    /// Data and outputs.
    pub dir: PathBuf,
    /// The JSON results (default `dir/bench.json`).
    pub json: Option<PathBuf>,
}

/// One workload's figures.
#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub workload: String,
    /// What was done, in words.
    pub what: String,
    /// Rows the job committed (frames, chunks, images, rows…); for `recovery`, 1.
    pub items: u64,
    pub unit: String,
    /// Wall-clock seconds of the job (for `recovery`, the recovery time).
    pub seconds: f64,
    pub items_per_s: f64,
    /// Input bytes (the generated data the job read) over the seconds.
    pub input_mb: f64,
    pub mb_per_s: f64,
    pub peak_rss_mib: f64,
    pub user_s: f64,
    pub sys_s: f64,
    /// Anything a reader needs to read the figures right.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Why it did not run here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// The JSON document.
#[derive(serde::Serialize)]
struct Report<'a> {
    alluvium: &'static str,
    machine: String,
    scale: f64,
    seed: u64,
    workloads: &'a [Figures],
}

const WORKLOADS: &[&str] = &[
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
    "recovery",
];

/// Runs the chosen workloads; `Err` only when the options are wrong or the directory cannot be
/// used. Returns whether every workload that ran succeeded.
pub fn bench(opts: &Options) -> Result<bool> {
    if !(opts.scale > 0.0 && opts.scale.is_finite()) {
        return Err(Error::config(format!("--scale {} must be a positive number; 0.01 makes a smoke run", opts.scale)));
    }
    let chosen: Vec<&str> = WORKLOADS
        .iter()
        .copied()
        .filter(|w| opts.only.is_empty() || opts.only.iter().any(|o| w.starts_with(o.as_str())))
        .collect();
    if chosen.is_empty() {
        return Err(Error::config(format!("--only {:?} names no workload; pick from {}", opts.only, WORKLOADS.join(", "))));
    }
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| Error::config(format!("--dir {}: cannot create it ({e})", opts.dir.display())))?;
    let dir = opts.dir.canonicalize().map_err(|e| Error::external(format!("--dir {}: {e}", opts.dir.display())))?;
    let bench = Bench { dir, scale: opts.scale, seed: opts.seed };
    let mut all = Vec::new();
    for name in chosen {
        eprintln!("bench: {name} …");
        let started = Instant::now();
        let figures = match bench.workload(name) {
            Ok(f) => f,
            Err(e) => Figures { workload: name.into(), failed: Some(e.to_string()), ..Default::default() },
        };
        eprintln!("bench: {name} done in {:.1?}", started.elapsed());
        let _ = std::fs::remove_dir_all(bench.dir.join("out"));
        all.push(figures);
    }
    compare_checkpoints(&mut all);
    print!("{}", table(&all, opts));
    let json = opts.json.clone().unwrap_or_else(|| bench.dir.join("bench.json"));
    let doc =
        Report { alluvium: env!("CARGO_PKG_VERSION"), machine: cpu_model(), scale: opts.scale, seed: opts.seed, workloads: &all };
    std::fs::write(&json, serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
        .map_err(|e| Error::external(format!("cannot write {}: {e}", json.display())))?;
    println!("results as JSON in {}", json.display());
    Ok(all.iter().all(|f| f.failed.is_none()))
}

/// The throughput cost of checkpoints every second, against none, as the 1 s run's note.
fn compare_checkpoints(all: &mut [Figures]) {
    let rate = |all: &[Figures], name: &str| {
        all.iter().find(|f| f.workload == name && f.skipped.is_none() && f.failed.is_none()).map(|f| f.items_per_s)
    };
    if let (Some(none), Some(every)) = (rate(all, "checkpoints-none"), rate(all, "checkpoints-1s")) {
        if let Some(f) = all.iter_mut().find(|f| f.workload == "checkpoints-1s") {
            f.note = format!("{}; throughput {:+.1}% against checkpoints-none", f.note, (every / none - 1.0) * 100.0);
        }
    }
}

/// The table the command prints (and the README quotes).
fn table(all: &[Figures], opts: &Options) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "\nalluvium bench (scale {}, seed {}; {})", opts.scale, opts.seed, cpu_model());
    let _ = writeln!(
        t,
        "{:<18} {:>10} {:<8} {:>9} {:>10} {:>9} {:>10} {:>8}",
        "workload", "items", "unit", "seconds", "items/s", "MB/s", "peak RSS", "CPU s"
    );
    for f in all {
        if let Some(why) =
            f.skipped.as_ref().map(|w| format!("skipped: {w}")).or(f.failed.as_ref().map(|e| format!("FAILED: {e}")))
        {
            let _ = writeln!(t, "{:<18} {why}", f.workload);
            continue;
        }
        let _ = writeln!(
            t,
            "{:<18} {:>10} {:<8} {:>9.2} {:>10.1} {:>9.2} {:>6.0} MiB {:>8.1}",
            f.workload,
            f.items,
            f.unit,
            f.seconds,
            f.items_per_s,
            f.mb_per_s,
            f.peak_rss_mib,
            f.user_s + f.sys_s
        );
    }
    for f in all.iter().filter(|f| !f.note.is_empty() && f.skipped.is_none() && f.failed.is_none()) {
        let _ = writeln!(t, "  {}: {}", f.workload, f.note);
    }
    t
}

struct Bench {
    dir: PathBuf,
    scale: f64,
    seed: u64,
}

/// A child process's end, as the kernel counted it.
struct Measured {
    seconds: f64,
    peak_rss_mib: f64,
    user_s: f64,
    sys_s: f64,
    stdout: String,
    stderr: String,
    /// The exit code; `None` after a signal.
    code: Option<i32>,
}

impl Bench {
    /// `n` scaled, at least `min`.
    fn n(&self, n: u64, min: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(min)
    }

    /// Where a data set lives (`what` names its size), and whether it is already whole (a marker
    /// file says so); if not, the directory is emptied for the generator.
    fn data(&self, what: &str) -> (PathBuf, bool) {
        let dir = self.dir.join("data").join(format!("{what}-seed{}", self.seed));
        let done = dir.join(".complete").exists();
        if !done {
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::create_dir_all(&dir);
        }
        (dir, done)
    }

    fn workload(&self, name: &str) -> Result<Figures> {
        match name {
            "images" => self.images(),
            "video" => self.video(),
            "texts" => self.texts(),
            "hash-2gb" => self.hash(),
            "checkpoints-none" => self.checkpoints(name, "1h"),
            "checkpoints-1s" => self.checkpoints(name, "1s"),
            "recovery" => self.recovery(),
            w => self.write(w.trim_start_matches("write-"), name),
        }
    }

    fn images(&self) -> Result<Figures> {
        let n = self.n(5000, 4);
        let (data, done) = self.data(&format!("images-{n}"));
        if !done {
            eprintln!("bench: generating {n} 640×480 JPEGs");
            let mut rng = Rng::new(self.seed);
            for i in 0..n {
                std::fs::write(data.join(format!("{i:06}.jpg")), photo(&mut rng, 640, 480)?).or_io("writing the bench images")?;
            }
            mark_complete(&data)?;
        }
        let job = format!(
            "{}\n[[stages]]\ntype = \"fetch\"\n\n[[stages]]\ntype = \"decode_image\"\ntarget = [224, 224]\n\n\
             [[stages]]\ntype = \"resize\"\nwidth = 224\nheight = 224\nfit = \"fill\"\n\n\
             [[stages]]\ntype = \"encode_image\"\nformat = \"jpeg\"\nquality = 85\n\n\
             [sink]\ntype = \"lance\"\ntable = \"{}\"\n",
            self.objects_job("images", &data, &["jpg"], "2s"),
            self.out("images.lance")
        );
        let m = self.run_job("images", &job)?;
        self.figures("images", "640×480 JPEG → decode → 224×224 fill → JPEG q85 → Lance", "images", &m, du(&data), Some(n))
    }

    fn video(&self) -> Result<Figures> {
        if Command::new("ffmpeg").arg("-version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Ok(skipped("video", "the ffmpeg CLI makes the videos; install ffmpeg"));
        }
        let (count, seconds) = (self.n(4, 1), self.n(10, 2));
        let (data, done) = self.data(&format!("video-{count}x{seconds}s"));
        if !done {
            eprintln!("bench: generating {count} H.264 videos of {seconds} s (1280×720, 30 fps, 2 s GOPs)");
            for i in 0..count {
                let src = format!(
                    "testsrc2=size=1280x720:rate=30:duration={seconds},noise=alls=20:allf=t:all_seed={}",
                    self.seed.wrapping_add(i) % (1 << 31)
                );
                let path = data.join(format!("{i:03}.mp4"));
                let status = Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &src])
                    .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", "60", "-threads", "2"])
                    .arg(&path)
                    .status()
                    .or_io("running ffmpeg")?;
                if !status.success() {
                    return Err(Error::external(format!("ffmpeg could not make {} ({status})", path.display())));
                }
            }
            mark_complete(&data)?;
        }
        let job = format!(
            "{}\n[[stages]]\ntype = \"extract_frames\"\nfps = 1\nshort_side = 224\nformat = \"jpeg\"\nquality = 90\n\n\
             [sink]\ntype = \"lance\"\ntable = \"{}\"\n",
            self.objects_job("video", &data, &["mp4"], "2s")
                .replace("[source]\n", "[source]\nsplit_objects = 1\nbatch_size = 1\n"),
            self.out("frames.lance")
        );
        let m = self.run_job("video", &job)?;
        let mut f = self.figures(
            "video",
            "H.264 720p → 1 frame/s → 224 short side → JPEG → Lance",
            "frames",
            &m,
            du(&data),
            Some(count * seconds),
        )?;
        f.note = format!(
            "{:.1} video-seconds/s ({count} videos of {seconds} s; every frame is decoded to sample one a second)",
            (count * seconds) as f64 / f.seconds
        );
        Ok(f)
    }

    fn texts(&self) -> Result<Figures> {
        let n = self.n(300, 2);
        let (data, done) = self.data(&format!("texts-{n}"));
        if !done {
            eprintln!("bench: generating {n} text documents");
            let mut rng = Rng::new(self.seed);
            for i in 0..n {
                std::fs::write(data.join(format!("{i:05}.txt")), document(&mut rng, 3000)).or_io("writing the bench texts")?;
            }
            mark_complete(&data)?;
        }
        let model = std::env::var("ALLUVIUM_MODEL_DIR").unwrap_or_else(|_| "all-MiniLM-L6-v2".into());
        let job = format!(
            "{}\n[[stages]]\ntype = \"fetch\"\n\n[[stages]]\ntype = \"chunk_text\"\nmodel = \"{model}\"\ncolumn = \"bytes\"\n\
             max_tokens = 128\noverlap = 16\n\n[[stages]]\ntype = \"embed\"\nmodel = \"{model}\"\ncolumn = \"text\"\n\
             output = \"embedding\"\nbatch_rows = 32\nworkers = 1\nmax_workers = 2\n\n\
             [sink]\ntype = \"delta\"\ntable = \"{}\"\n",
            self.objects_job("texts", &data, &["txt"], "2s"),
            self.out("text_embeddings")
        );
        let m = self.run_job("texts", &job)?;
        self.figures("texts", "3 KB documents → 128-token chunks → MiniLM (CPU) → Delta", "chunks", &m, du(&data), None)
    }

    fn hash(&self) -> Result<Figures> {
        let bytes = self.n(2 << 30, 1 << 20);
        let (data, done) = self.data(&format!("object-{bytes}"));
        if !done {
            eprintln!("bench: writing one object of {} MiB", bytes >> 20);
            let mut rng = Rng::new(self.seed);
            let mut file = std::io::BufWriter::with_capacity(
                8 << 20,
                std::fs::File::create(data.join("big.bin")).or_io("creating the bench object")?,
            );
            let mut left = bytes;
            let mut chunk = vec![0u8; 1 << 20];
            while left > 0 {
                for w in chunk.chunks_exact_mut(8) {
                    w.copy_from_slice(&rng.next().to_le_bytes());
                }
                let take = left.min(chunk.len() as u64) as usize;
                std::io::Write::write_all(&mut file, &chunk[..take]).or_io("writing the bench object")?;
                left -= take as u64;
            }
            std::io::Write::flush(&mut file).or_io("writing the bench object")?;
            mark_complete(&data)?;
        }
        let job = format!(
            "{}\n[[stages]]\ntype = \"hash\"\n\n[sink]\ntype = \"parquet\"\npath = \"{}\"\n",
            self.objects_job("hash", &data, &["bin"], "2s"),
            self.out("hashes")
        );
        let m = self.run_job("hash", &job)?;
        let mut f = self.figures("hash-2gb", "one object, streamed through blake3 → Parquet", "objects", &m, bytes, Some(1))?;
        f.note = format!("{:.1}% of the object's size in peak RSS", 100.0 * f.peak_rss_mib * 1048576.0 / bytes as f64);
        Ok(f)
    }

    fn write(&self, format: &str, name: &str) -> Result<Figures> {
        let rows = self.n(4_000_000, 1000);
        let sink = self.sink(format)?;
        let job = self.generate_job(name, rows, 1024, "1s", &sink);
        let m = self.run_job(name, &job)?;
        let mut f =
            self.figures(name, "generated rows of 1 KiB → the sink, checkpoints every 1 s", "rows", &m, rows * 1036, Some(rows))?;
        f.note = "MB are the rows' Arrow bytes (id, 1 KiB payload)".into();
        Ok(f)
    }

    fn checkpoints(&self, name: &str, interval: &str) -> Result<Figures> {
        let rows = self.n(100_000_000, 10_000);
        let sink = format!("type = \"parquet\"\npath = \"{}\"\n", self.out("rows"));
        let job = self.generate_job(name, rows, 64, interval, &sink);
        let m = self.run_job(name, &job)?;
        let what = format!("generated rows of 64 B → Parquet, checkpoint interval {interval}");
        let mut f = self.figures(name, &what, "rows", &m, rows * 76, Some(rows))?;
        f.note = checkpoint_note(&m.stdout);
        Ok(f)
    }

    /// SIGKILL a streaming job after its second checkpoint, restart it, and time until every
    /// region has checkpointed again: restore, re-commit of the pending commits, first progress.
    fn recovery(&self) -> Result<Figures> {
        let sink = format!("type = \"delta\"\ntable = \"{}\"\n", self.out("stream"));
        let job = self.generate_job("recovery", u64::MAX / 4, 256, "1s", &sink);
        let path = self.job_file("recovery", &job)?;
        let checkpoints = PathBuf::from(self.out("recovery/_checkpoints")).join("regions");
        let mut first = self.spawn(&path)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while latest_checkpoints(&checkpoints).iter().copied().min().unwrap_or(0) < 2 {
            if Instant::now() > deadline || first.try_wait().or_io("watching the job")?.is_some() {
                let _ = first.kill();
                return Err(Error::internal("the streaming job made no two checkpoints in 120 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(500));
        first.kill().or_io("killing the job")?;
        first.wait().or_io("killing the job")?;
        let before = latest_checkpoints(&checkpoints);
        let start = Instant::now();
        let second = self.spawn(&path)?;
        let deadline = start + Duration::from_secs(120);
        let recovered = loop {
            let now = latest_checkpoints(&checkpoints);
            if now.len() >= before.len() && now.iter().zip(&before).all(|(n, b)| n > b) {
                break Some(start.elapsed());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // SAFETY: a plain signal to our own child, not yet reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(second.id() as i32, libc::SIGTERM)
        };
        let m = wait(second, start)?;
        let Some(recovered) = recovered else {
            return Err(Error::internal(format!("no checkpoint in 120 s after the restart: {}", last_line(&m.stderr))));
        };
        Ok(Figures {
            workload: "recovery".into(),
            what: "SIGKILL of a streaming job → restart → every region checkpointed again".into(),
            items: 1,
            unit: "restart".into(),
            seconds: recovered.as_secs_f64(),
            items_per_s: 1.0 / recovered.as_secs_f64(),
            peak_rss_mib: m.peak_rss_mib,
            user_s: m.user_s,
            sys_s: m.sys_s,
            note: format!(
                "{} regions, 1 s checkpoint interval, Delta sink; the time includes process start and up to one interval",
                before.len()
            ),
            ..Default::default()
        })
    }

    /// `[pipeline]`, `[checkpoint]`, `[io.access]` and an `objects` source over `data`.
    fn objects_job(&self, name: &str, data: &Path, extensions: &[&str], interval: &str) -> String {
        let exts: Vec<String> = extensions.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "{}[io.access]\nfile_roots = [\"{}\"]\n\n[source]\ntype = \"objects\"\nuri = \"{}\"\nextensions = [{}]\n",
            self.head(name, interval),
            data.display(),
            data.display(),
            exts.join(", ")
        )
    }

    fn generate_job(&self, name: &str, rows: u64, payload: usize, interval: &str, sink: &str) -> String {
        format!(
            "{}[source]\ntype = \"generate\"\nrows = {rows}\nbatch_size = 8192\npayload_bytes = {payload}\n\
             split_rows = 250000\nseed = {}\n\n[sink]\n{sink}",
            self.head(name, interval),
            self.seed
        )
    }

    fn head(&self, name: &str, interval: &str) -> String {
        format!(
            "[pipeline]\nname = \"bench-{name}\"\nparallelism = 2\n\n[checkpoint]\ninterval = \"{interval}\"\n\
             location = \"{}\"\n\n[dead_letters]\ntype = \"jsonl\"\npath = \"{}\"\n\n",
            self.out(&format!("{name}/_checkpoints")),
            self.out(&format!("{name}/_dead_letters"))
        )
    }

    fn sink(&self, format: &str) -> Result<String> {
        Ok(match format {
            "parquet" => format!("type = \"parquet\"\npath = \"{}\"\n", self.out("parquet")),
            "delta" => format!("type = \"delta\"\ntable = \"{}\"\n", self.out("delta")),
            "lance" => format!("type = \"lance\"\ntable = \"{}\"\n", self.out("rows.lance")),
            "iceberg" => format!(
                "type = \"iceberg\"\ntable = \"bench.rows\"\ncatalog = \"{}\"\nwarehouse = \"{}\"\n",
                self.out("warehouse/catalog.db"),
                self.out("warehouse")
            ),
            other => return Err(Error::internal(format!("no sink {other}"))),
        })
    }

    fn out(&self, rel: &str) -> String {
        self.dir.join("out").join(rel).display().to_string()
    }

    fn job_file(&self, name: &str, job: &str) -> Result<PathBuf> {
        let jobs = self.dir.join("jobs");
        std::fs::create_dir_all(&jobs).or_io("creating the jobs directory")?;
        let path = jobs.join(format!("{name}.toml"));
        std::fs::write(&path, job).or_io("writing a job file")?;
        Ok(path)
    }

    /// `alluvium run JOB` with warnings only; stdout and stderr to files beside the job.
    fn spawn(&self, job: &Path) -> Result<Child> {
        let log = |ext: &str| std::fs::File::create(job.with_extension(ext)).or_io("creating a log file");
        Command::new(std::env::current_exe().or_io("finding this binary")?)
            .args(["run", "--progress-every", "3600"])
            .arg(job)
            .env("ALLUVIUM_LOG", std::env::var("ALLUVIUM_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(log("stdout")?)
            .stderr(log("stderr")?)
            .spawn()
            .or_io("starting the job")
    }

    /// Runs a job to its end. A job file this build cannot run (exit 2) is `Ok` with `code` 2.
    fn run_job(&self, name: &str, job: &str) -> Result<Measured> {
        let _ = std::fs::remove_dir_all(self.dir.join("out"));
        let path = self.job_file(name, job)?;
        let start = Instant::now();
        let child = self.spawn(&path)?;
        let mut m = wait(child, start)?;
        m.stdout = std::fs::read_to_string(path.with_extension("stdout")).unwrap_or_default();
        m.stderr = std::fs::read_to_string(path.with_extension("stderr")).unwrap_or_default();
        match m.code {
            Some(0) | Some(2) => Ok(m),
            _ => Err(Error::internal(format!("the job failed ({}): {}", path.display(), last_line(&m.stderr)))),
        }
    }

    /// Figures from a finished job; `expected` items, when known, must be what it committed.
    fn figures(&self, name: &str, what: &str, unit: &str, m: &Measured, input: u64, expected: Option<u64>) -> Result<Figures> {
        if m.code == Some(2) {
            return Ok(skipped(name, &last_line(&m.stderr)));
        }
        let committed = summary_number(&m.stdout, "rows committed")
            .ok_or_else(|| Error::internal(format!("no `rows committed` line in the job's output: {}", last_line(&m.stdout))))?;
        let dead = summary_number(&m.stdout, "dead letters").unwrap_or(0);
        if dead > 0 {
            return Err(Error::internal(format!("{dead} rows of generated data became dead letters")));
        }
        if let Some(e) = expected.filter(|e| *e != committed) {
            return Err(Error::internal(format!("expected {e} {unit}, the job committed {committed}")));
        }
        Ok(Figures {
            workload: name.into(),
            what: what.into(),
            items: committed,
            unit: unit.into(),
            seconds: m.seconds,
            items_per_s: committed as f64 / m.seconds,
            input_mb: input as f64 / 1e6,
            mb_per_s: input as f64 / 1e6 / m.seconds,
            peak_rss_mib: m.peak_rss_mib,
            user_s: m.user_s,
            sys_s: m.sys_s,
            ..Default::default()
        })
    }
}

/// `?` for IO, with what was being done.
trait OrIo<T> {
    fn or_io(self, doing: &str) -> Result<T>;
}

impl<T> OrIo<T> for std::io::Result<T> {
    fn or_io(self, doing: &str) -> Result<T> {
        self.map_err(|e| Error::external(format!("{doing}: {e}")))
    }
}

fn skipped(name: &str, why: &str) -> Figures {
    Figures { workload: name.into(), skipped: Some(why.to_string()), ..Default::default() }
}

/// Reaps `child` with `wait4`, which also gives its peak RSS and CPU time.
#[allow(unsafe_code)]
fn wait(child: Child, start: Instant) -> Result<Measured> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        return Err(Error::external(format!("waiting for the job process: {}", std::io::Error::last_os_error())));
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured {
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        user_s: secs(usage.ru_utime),
        sys_s: secs(usage.ru_stime),
        stdout: String::new(),
        stderr: String::new(),
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
    })
}

/// `N` from the summary line `  LABEL   N  (…)`.
fn summary_number(stdout: &str, label: &str) -> Option<u64> {
    stdout.lines().find_map(|l| l.trim_start().strip_prefix(label)?.split_whitespace().next()?.parse().ok())
}

/// The checkpoint line of the summary, as a note.
fn checkpoint_note(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("checkpoints"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn last_line(text: &str) -> String {
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no output)").trim().to_string()
}

/// Each region's newest checkpoint id under `regions/` (`chk-N.json`), by region.
fn latest_checkpoints(regions: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(regions) else { return Vec::new() };
    let mut by_region: Vec<(u64, u64)> = entries
        .flatten()
        .filter_map(|region| {
            let id: u64 = region.file_name().to_str()?.parse().ok()?;
            let newest = std::fs::read_dir(region.path())
                .ok()?
                .flatten()
                .filter_map(|f| f.file_name().to_str()?.strip_prefix("chk-")?.strip_suffix(".json")?.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            Some((id, newest))
        })
        .collect();
    by_region.sort();
    by_region.into_iter().map(|(_, n)| n).collect()
}

fn mark_complete(dir: &Path) -> Result<()> {
    std::fs::write(dir.join(".complete"), b"").or_io("marking bench data complete")
}

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|es| es.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cores} cores, {}", model.unwrap_or_else(|| "unknown CPU".into()))
}

/// xorshift64*: fast and deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A photo-like JPEG: smooth gradients with a few shapes and sensor noise, so the codec works as
/// hard as on a photo (flat test patterns compress to nothing and decode too fast).
fn photo(rng: &mut Rng, w: u32, h: u32) -> Result<Vec<u8>> {
    let (a, b, c) = (rng.below(256) as u32, rng.below(256) as u32, rng.below(7) as u32 + 1);
    let (cx, cy, r) = (rng.below(w as u64) as i64, rng.below(h as u64) as i64, rng.below(h as u64 / 2) as i64 + 20);
    let mut noise = Rng(rng.next() | 1);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let inside = (x as i64 - cx).pow(2) + (y as i64 - cy).pow(2) < r * r;
        let n = (noise.next() >> 60) as u32;
        let base = [(x * 255 / w + a) % 256, (y * 255 / h + b) % 256, ((x + y) * c / 4) % 256];
        let px = |v: u32| (if inside { 255 - v } else { v }).saturating_add(n).min(255) as u8;
        image::Rgb([px(base[0]), px(base[1]), px(base[2])])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::internal(format!("encoding a bench image: {e}")))?;
    Ok(out)
}

const WORDS: &str = "river delta silt flood plain channel current bank levee tide estuary meander water sand gravel \
                     clay stream valley basin marsh reed heron ferry bridge mill harbour sediment terrace oxbow \
                     spring confluence rapids weir lock towpath willow alder kingfisher otter";

/// About `bytes` of sentences from [`WORDS`].
fn document(rng: &mut Rng, bytes: usize) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut doc = String::with_capacity(bytes + 64);
    while doc.len() < bytes {
        let n = 6 + rng.below(20) as usize;
        for k in 0..n {
            let w = words[rng.below(words.len() as u64) as usize];
            if k == 0 {
                doc.push_str(&w[..1].to_uppercase());
                doc.push_str(&w[1..]);
            } else {
                doc.push(' ');
                doc.push_str(w);
            }
        }
        doc.push_str(". ");
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_numbers_are_read_from_the_run_summary() {
        let out = "alluvium: job `x` finished in 1s\n  rows read       12\n  rows committed  10  (to /t)\n  dead letters    2  (to /d)\n";
        assert_eq!(summary_number(out, "rows committed"), Some(10));
        assert_eq!(summary_number(out, "dead letters"), Some(2));
        assert_eq!(summary_number(out, "restarts"), None);
    }

    #[test]
    fn generated_data_is_deterministic_per_seed() {
        let (mut a, mut b, mut c) = (Rng::new(7), Rng::new(7), Rng::new(8));
        assert_eq!(document(&mut a, 500), document(&mut b, 500));
        assert_ne!(document(&mut a, 500), document(&mut c, 500));
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        assert_eq!(photo(&mut a, 64, 48).unwrap(), photo(&mut b, 64, 48).unwrap());
    }

    #[test]
    fn latest_checkpoints_reads_each_regions_newest_manifest() {
        let dir = tempfile::tempdir().unwrap();
        for (region, ids) in [("0", &[1u64, 2, 10][..]), ("1", &[3][..])] {
            std::fs::create_dir_all(dir.path().join(region).join("epochs")).unwrap();
            for id in ids {
                std::fs::write(dir.path().join(region).join(format!("chk-{id:020}.json")), b"{}").unwrap();
            }
        }
        assert_eq!(latest_checkpoints(dir.path()), vec![10, 3]);
        assert!(latest_checkpoints(&dir.path().join("missing")).is_empty());
    }
}
