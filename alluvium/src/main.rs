//! The `alluvium` command line: run and validate job files.
//!
//! ```text
//! alluvium run JOB.toml [--set key=value]...    run (a rerun resumes from the job's checkpoints)
//!              [--metrics 127.0.0.1:9464]       with Prometheus metrics at /metrics
//! alluvium validate JOB.toml [--set ...]        the checks `run` makes before it starts, without running
//! alluvium checkpoints list JOB.toml            each region's latest checkpoint
//! alluvium checkpoints show JOB.toml [--region R] [--checkpoint N]   a manifest, as JSON
//! alluvium backfill JOB.toml --from T1 --to T2 [--window 1d]   window by window, each resumable
//! alluvium inspect JOB.toml                     the sink's table: rows, schema, last commits and keys
//! alluvium serve-model [--model M] [--listen 127.0.0.1:8080]   a local text model (a CLIP's text tower) over OpenAI and KServe v2
//! alluvium demo-clip DIR                        a tiny random CLIP model, for trying pipelines
//! alluvium bench [--only images,write] [--scale 0.1]   the standard workloads: items/s, MB/s, RSS, CPU
//! ```
//!
//! Exit codes: 0 success (also after a requested stop: SIGINT/SIGTERM take a last checkpoint, and a
//! rerun resumes), 1 the job failed, 2 the job file or command line is invalid.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use alluvium::job::JobFile;
use alluvium::{Error, ErrorKind};
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "alluvium", version, about = "Ingest multimodal data into data lakes, exactly-once.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a job file. Rerunning a job resumes it from its checkpoints.
    Run {
        /// The job file (TOML).
        job: PathBuf,
        /// Overrides a key of the job file: `--set pipeline.parallelism=4`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 5)]
        progress_every: u64,
        /// Serves Prometheus metrics at http://ADDR/metrics while the job runs (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Starts a new job on a new (or deleted) checkpoint location even when the table holds
        /// commits of a job that checkpointed there: every row is written again. The same as
        /// `--set checkpoint.start_over=true`.
        #[arg(long)]
        start_over: bool,
    },
    /// Checks a job file as `run` does before it starts, without running it: parses it and builds
    /// the pipeline (nothing is read or written but a local checkpoint directory, created as `run`
    /// would to check it can be written).
    Validate {
        /// The job file (TOML).
        job: PathBuf,
        /// Overrides a key of the job file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Runs a bounded job window by window over [FROM, TO); each window is resumable and a rerun
    /// skips finished ones. The job file sees the window as ${ALLUVIUM_WINDOW_START},
    /// ${ALLUVIUM_WINDOW_END}, ${ALLUVIUM_WINDOW_DATE} and ${ALLUVIUM_WINDOW}.
    Backfill {
        /// The job file (TOML).
        job: PathBuf,
        /// Start (inclusive): 2026-11-01 or 2026-11-01T06:00:00Z (UTC).
        #[arg(long)]
        from: String,
        /// End (exclusive), as --from.
        #[arg(long)]
        to: String,
        /// Window length: 1d, 6h, 30m, … (default: one window for the whole range).
        #[arg(long)]
        window: Option<String>,
        /// Overrides a key of the job file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Describes the job's sink table: version, rows, schema, last commits and their idempotency keys.
    Inspect {
        /// The job file (TOML).
        job: PathBuf,
        /// Overrides a key of the job file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Lists or shows the checkpoints of a job (read-only).
    Checkpoints {
        #[command(subcommand)]
        action: CheckpointsAction,
    },
    /// Serves a local embedding model over HTTP: OpenAI-compatible POST /v1/embeddings and KServe v2
    /// POST /v2/models/NAME/infer, for `embed` stages with `url` (and for anything else that speaks
    /// those protocols). Runs until Ctrl-C or SIGTERM.
    #[cfg(feature = "models")]
    ServeModel {
        /// The model: a path or a registry name of the model cache. A CLIP model serves its text
        /// tower (text queries in the space of its image vectors).
        #[arg(long, default_value = "all-MiniLM-L6-v2")]
        model: String,
        /// The model's name in requests (default: --model).
        #[arg(long)]
        name: Option<String>,
        /// Where to listen; port 0 picks a free port (the first line printed says which).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Requests computed at a time.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Requests waiting or running at most; more are answered 503 with Retry-After.
        #[arg(long, default_value_t = 64)]
        max_pending: usize,
        /// Requests must carry `Authorization: Bearer $VAR` (the variable's name, not the key).
        #[arg(long, value_name = "VAR")]
        api_key_env: Option<String>,
        /// For testing clients: answer every Nth request with STATUS, as STATUS:N (e.g. 503:4).
        #[arg(long, value_name = "STATUS:N")]
        inject: Option<String>,
    },
    /// Writes a tiny CLIP model with random weights into DIR (Hugging Face's layout, 16-d vectors;
    /// its text tower reads CLIP's vocabulary from the model cache), to try image and text
    /// embedding pipelines without real weights: its vectors carry no meaning. For real ones put
    /// a CLIP model there (see examples/images_to_lance_embeddings.toml).
    #[cfg(feature = "models")]
    DemoClip {
        /// The directory to write (created if missing).
        dir: PathBuf,
    },
    /// Runs the standard workloads on generated data, each as a job of this binary, and prints
    /// items/s, MB/s, peak RSS and CPU seconds (also as JSON): images → Lance, video → frames,
    /// texts → MiniLM, a 2 GiB object through hash, writes to each lake format, checkpoint
    /// overhead at 1 s, recovery time after a kill.
    Bench {
        /// Only these workloads (names or prefixes, comma-separated): images, video, texts,
        /// hash-2gb, write-parquet, write-delta, write-iceberg, write-lance, checkpoints-none,
        /// checkpoints-1s, recovery.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Multiplies every data size (0.01 for a quick smoke run).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Seeds the generated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Generated data (kept for the next run) and job outputs (removed after each workload).
        #[arg(long, default_value = "./out/bench")]
        dir: PathBuf,
        /// Where the JSON results go (default DIR/bench.json).
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CheckpointsAction {
    /// Each region's latest checkpoint: id, epoch, time, state, pending commits, open splits.
    List {
        /// The job file (TOML).
        job: PathBuf,
        /// Overrides a key of the job file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// A region's checkpoint manifest as JSON (every region's latest by default).
    Show {
        /// The job file (TOML).
        job: PathBuf,
        /// Overrides a key of the job file.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Only this region.
        #[arg(long)]
        region: Option<usize>,
        /// This checkpoint instead of the latest (while it is kept).
        #[arg(long)]
        checkpoint: Option<u64>,
    },
}

fn read_job(path: &PathBuf) -> alluvium::Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::config(format!("cannot read job file {}: {e}", path.display())))
}

fn load(path: &PathBuf, set: &[String]) -> alluvium::Result<JobFile> {
    JobFile::parse(&read_job(path)?, set).map_err(|e| e.context(format!("job file {}", path.display())))
}

/// Runs `work` on a multi-threaded runtime (the commands that do IO). The runtime waits at most
/// 5 s for its blocking threads when it shuts down: a read stuck in the kernel (a hung network
/// filesystem) must not keep a finished process from exiting.
fn block_on<F: std::future::Future>(work: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let out = runtime.block_on(work);
    runtime.shutdown_timeout(Duration::from_secs(5));
    out
}

/// Exit code 0, or the error on stderr and its exit code.
fn report(result: alluvium::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            exit_code(&e)
        }
    }
}

fn exit_code(e: &Error) -> ExitCode {
    if e.kind() == ErrorKind::Config {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// Our own crates log at `info`; libraries (the lake formats' kernels are chatty) only warnings. The Delta kernel logs at `error` every failure it
/// also returns (and "No files in log segment" each time a table is looked for before it exists):
/// the sink reports those errors itself, with the table named, so the kernel's own lines are off.
const DEFAULT_LOG: &str = "warn,buoyant_kernel=off,alluvium=info,alluvium_core=info,alluvium_object=info,alluvium_formats=info,\
                           alluvium_parquet=info,alluvium_delta=info,alluvium_iceberg=info,alluvium_lance=info,alluvium_catalog=info";

/// A panic is a bug: say so in one line, with where, instead of Rust's panic message and
/// backtrace (`RUST_BACKTRACE=1` keeps Rust's own report). A panic inside a stage is caught by the
/// runtime like any stage failure: the region restarts from its last checkpoint.
fn report_panics_as_bugs() {
    if std::env::var_os("RUST_BACKTRACE").is_some() {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let what = alluvium::core::error::panic_text(info.payload());
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!(
            "internal error (a bug in Alluvium or in a plugged-in stage; please report it): {}{at} \
             (RUST_BACKTRACE=1 for a backtrace)",
            alluvium::core::error::redact(&what)
        );
    }));
}

fn main() -> ExitCode {
    alluvium::tune_allocator();
    report_panics_as_bugs();
    alluvium::core::error::register_secrets_from_env();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ALLUVIUM_LOG").unwrap_or_else(|_| DEFAULT_LOG.into()))
        .with_writer(|| cli::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Validate { job, set } => report(block_on(async {
            // The same checks as `run` before it starts: building the pipeline.
            let file = load(&job, &set)?;
            file.build().map_err(|e| e.context(format!("job file {}", job.display())))?;
            println!("{}: valid job `{}`", job.display(), file.pipeline.name);
            Ok::<(), Error>(())
        })),
        Command::Backfill { job, from, to, window, set } => report(block_on(backfill(job, from, to, window, set))),
        Command::Inspect { job, set } => report(block_on(async {
            let sink = load(&job, &set)?.sink.build().map_err(|e| e.context("[sink]"))?;
            cli::inspect::inspect(sink.as_ref()).await
        })),
        Command::Checkpoints { action } => {
            let result = block_on(async {
                let (job, set) = match &action {
                    CheckpointsAction::List { job, set } | CheckpointsAction::Show { job, set, .. } => (job, set),
                };
                let store = load(job, set)?.build()?.checkpoint_store()?;
                match action {
                    CheckpointsAction::List { .. } => cli::checkpoints::list(&store).await,
                    CheckpointsAction::Show { region, checkpoint, .. } => {
                        cli::checkpoints::show(&store, region, checkpoint).await
                    }
                }
            });
            report(result)
        }
        Command::Run { job, mut set, progress_every, metrics, start_over } => {
            if start_over {
                set.push("checkpoint.start_over=true".into());
            }
            block_on(run(job, set, Duration::from_secs(progress_every.max(1)), metrics))
        }
        #[cfg(feature = "models")]
        Command::ServeModel { model, name, listen, workers, max_pending, api_key_env, inject } => {
            let options = alluvium::models::ServeOptions { listen, name, workers, max_pending, api_key: None, inject: None };
            report(block_on(serve_model(model, options, api_key_env, inject)))
        }
        Command::Bench { only, scale, seed, dir, json } => {
            match cli::bench::bench(&cli::bench::Options { only, scale, seed, dir, json }) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => report(Err(e)),
            }
        }
        #[cfg(feature = "models")]
        Command::DemoClip { dir } => {
            report(alluvium::models::image::write_random_clip(&dir).map(|_| {
                println!("wrote a random 16-d CLIP model (for demos: its vectors carry no meaning) in {}", dir.display())
            }))
        }
    }
}

#[cfg(feature = "models")]
async fn serve_model(
    model: String,
    mut options: alluvium::models::ServeOptions,
    api_key_env: Option<String>,
    inject: Option<String>,
) -> alluvium::Result<()> {
    use alluvium::models::{ClipTextEmbedder, Device, EmbeddingModel, ModelServer, TextEmbedder};
    if let Some(var) = api_key_env {
        let key = std::env::var(&var).ok().filter(|k| !k.is_empty());
        options.api_key = Some(key.ok_or_else(|| {
            Error::config(format!("--api-key-env: the environment variable `{var}` is not set; export the key in it"))
        })?);
    }
    if let Some(spec) = inject {
        let parsed = spec.split_once(':').and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)));
        let (status, every) = parsed
            .ok_or_else(|| Error::config(format!("--inject `{spec}` is not STATUS:N; write 503:4 for every 4th request")))?;
        options = options.inject(status, every);
    }
    // A CLIP model serves its text tower: queries for searching the images it embedded.
    let loaded = tokio::task::spawn_blocking(move || -> alluvium::Result<std::sync::Arc<dyn EmbeddingModel>> {
        Ok(if alluvium::models::embed::is_clip(&model) {
            std::sync::Arc::new(ClipTextEmbedder::load(&model, &Device::Cpu)?)
        } else {
            std::sync::Arc::new(TextEmbedder::load(&model, &Device::Cpu)?)
        })
    })
    .await
    .map_err(|e| Error::internal(format!("loading the model panicked: {e}")))??;
    let dims = loaded.info().dimensions;
    let server = ModelServer::start(loaded, options).await?;
    let (url, name) = (server.url(), server.model_name().to_string());
    // A server keeps serving when whoever started it stops reading its output (no panic on a
    // closed pipe, as println! would).
    use std::io::Write;
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|_| out.flush());
    };
    say(format!("serving `{name}` ({dims}-d) at {url}"));
    say(format!("  OpenAI   POST {url}/v1/embeddings  {{\"model\": \"{name}\", \"input\": [...]}}"));
    say(format!("  KServe   POST {url}/v2/models/{name}/infer"));
    say(format!("  metrics  GET  {url}/metrics"));
    wait_for_signal().await;
    eprintln!("stopping: finishing the requests in hand");
    let stats = server.stats();
    server.stop().await?;
    say(format!("served {} requests, {} inputs ({} refused)", stats.requests, stats.rows, stats.rejected));
    Ok(())
}

async fn run(path: PathBuf, set: Vec<String>, progress_every: Duration, metrics_addr: Option<String>) -> ExitCode {
    let job = match load(&path, &set) {
        Ok(j) => j,
        Err(e) => return report(Err(e)),
    };
    let pipeline = match job.build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e} (job file {})", path.display());
            return exit_code(&e);
        }
    };
    tracing::info!(pipeline = pipeline.name(), topology = %pipeline.topology(), regions = pipeline.regions(), "starting");
    let metrics = pipeline.metrics();
    if let Some(addr) = metrics_addr {
        match cli::metrics::serve(&addr, pipeline.name().to_string(), metrics.clone()).await {
            Ok(bound) => tracing::info!("metrics at http://{bound}/metrics"),
            Err(e) => return report(Err(e)),
        }
    }
    let total_rows = match &job.source {
        alluvium::job::SourceConfig::Generate { rows, .. } => Some(*rows),
        #[allow(unreachable_patterns)]
        _ => None,
    };
    let progress = cli::progress::spawn(metrics, total_rows, progress_every);
    let trim = tokio::spawn(async {
        loop {
            tokio::time::sleep(alluvium::TRIM_EVERY).await;
            let _ = tokio::task::spawn_blocking(alluvium::release_freed_memory).await;
        }
    });
    let result = pipeline.run_until(shutdown_signal()).await;
    trim.abort();
    progress.abort();
    cli::progress::finish();
    match result {
        Ok(s) => {
            println!("alluvium: job `{}` finished in {:.2?}", s.pipeline, s.elapsed);
            println!("  rows read       {}", s.rows_read);
            println!("  rows committed  {}  (to {})", s.rows_committed, job.sink.path());
            if s.metrics.rows_recommitted > 0 {
                println!(
                    "  rows recovered  {}  (pending commits of the restored checkpoints, re-committed)",
                    s.metrics.rows_recommitted
                );
            }
            println!(
                "  dead letters    {}  (to {})",
                s.dead_letters,
                job.dead_letters.as_ref().map_or("the checkpoint location's dead-letters/", |d| d.path())
            );
            println!("  commits         {}", s.commits);
            println!(
                "  checkpoints     {}  (avg {:.1} ms, max {:.1} ms)",
                s.checkpoints, s.metrics.checkpoint_avg_ms, s.metrics.checkpoint_max_ms
            );
            println!("  restarts        {}", s.restarts);
            println!(
                "  {:<12} {:>12} {:>12} {:>10} {:>10} {:>14} {:>8} {:>12}",
                "stage", "rows in", "rows out", "busy s", "waited s", "peak buffer", "errors", "dead letters"
            );
            for st in &s.metrics.stages {
                println!(
                    "  {:<12} {:>12} {:>12} {:>10.1} {:>10.1} {:>14} {:>8} {:>12}",
                    st.name,
                    st.rows_in,
                    st.rows_out,
                    st.busy_ms as f64 / 1e3,
                    st.backpressure_ms as f64 / 1e3,
                    format!("{:.1} MiB", st.peak_buffered_bytes as f64 / (1 << 20) as f64),
                    st.errors,
                    st.dead_letters
                );
            }
            if s.stopped {
                println!("  (stopped on request after a last checkpoint; rerun the same command to resume)");
            } else if s.rows_read == 0 && s.commits == 0 {
                println!(
                    "  (nothing to do: the job had already finished; to ingest everything again as a new job, which \
                     writes every row again, delete the checkpoint location and rerun with --start-over)"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: job `{}` failed: {e}", job.pipeline.name);
            eprintln!("rerun the same command to resume from the last checkpoint");
            exit_code(&e)
        }
    }
}

async fn backfill(path: PathBuf, from: String, to: String, window: Option<String>, set: Vec<String>) -> alluvium::Result<()> {
    let time = |key: &str, v: &str| {
        alluvium::job::parse_time(key, v)?.ok_or_else(|| Error::config(format!("{key} is empty; give a time such as 2026-11-01")))
    };
    let (from, to) = (time("--from", &from)?, time("--to", &to)?);
    let step = match window {
        Some(w) => humantime::parse_duration(&w)
            .map_err(|e| Error::config(format!("--window `{w}` is not a duration ({e}); write 1d, 6h or 30m")))?,
        None => to.duration_since(from).unwrap_or_default(),
    };
    let windows = cli::backfill::windows(from, to, step)?;
    let text = read_job(&path)?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    cli::backfill::backfill(&path, &text, &set, &windows, stop).await
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM; a second one exits at once (a rerun resumes
/// from the last completed checkpoint either way).
async fn shutdown_signal() {
    wait_for_signal().await;
    eprintln!("stopping: taking a last checkpoint (press Ctrl-C again to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("exiting without a last checkpoint; a rerun resumes from the previous one");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
