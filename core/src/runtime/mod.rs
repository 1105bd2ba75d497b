//! The runtime: runs a built [`Pipeline`] to completion (bounded sources) or until stopped.
//!
//! `run()` opens the checkpoint store, checks that its checkpoints belong to this pipeline and
//! topology, starts the split enumerator (assignments are logged durably before readers see them),
//! then drives every region on its own (the region driver, `runtime/region.rs`): each region checkpoints, commits, fails and
//! recovers independently. A rerun after the process died resumes every region from its own latest
//! checkpoint; a rerun after the pipeline finished does nothing and says so.

mod assign;
mod commit;
mod gate;
mod guard;
mod region;
mod task;

pub use gate::Event;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::checkpoint::{CheckpointStore, PipelineMeta, FORMAT, VERSION};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, MetricsSnapshot, StageMetrics};
use crate::pipeline::{PipelineBuilder, Plan};
use crate::store::Location;

/// A validated pipeline, ready to run.
pub struct Pipeline {
    plan: Arc<Plan>,
    metrics: Arc<Metrics>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The pipeline's name.
    pub pipeline: String,
    /// Rows read by the source in this run (rows replayed after a restore count again).
    pub rows_read: u64,
    /// Rows made visible in the sink by this run's commits.
    pub rows_committed: u64,
    /// Dead letters made visible by this run's commits.
    pub dead_letters: u64,
    /// Commits made.
    pub commits: u64,
    /// Region checkpoints completed.
    pub checkpoints: u64,
    /// Region restarts after failures.
    pub restarts: u64,
    /// The run was stopped on request before its input was exhausted; a rerun resumes it.
    pub stopped: bool,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// All metrics at the end.
    pub metrics: MetricsSnapshot,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pipeline({}: {})", self.plan.name, self.plan.topology())
    }
}

impl Pipeline {
    /// Starts building a pipeline named `name` (the name keys its checkpoints and files).
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        PipelineBuilder::new(name)
    }

    pub(crate) fn new(plan: Plan) -> Self {
        let stages = plan.nodes.iter().map(|n| Arc::new(StageMetrics::new(&n.name))).collect();
        Self { plan: Arc::new(plan), metrics: Arc::new(Metrics { stages, ..Default::default() }) }
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// Number of regions (independently checkpointed and restarted parts).
    pub fn regions(&self) -> usize {
        self.plan.regions()
    }

    /// A one-line description of stages, parallelism and edges (`->` forward, `=>` rebalance).
    pub fn topology(&self) -> String {
        self.plan.topology()
    }

    /// Live metrics, for progress displays.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The pipeline's checkpoint store (for tools that list or show checkpoints; reads nothing yet).
    pub fn checkpoint_store(&self) -> Result<CheckpointStore> {
        let location = Location::parse(&self.plan.settings.checkpoint_location).map_err(|e| e.context("checkpoint location"))?;
        Ok(CheckpointStore::new(location))
    }

    /// Where dead letters go.
    pub fn dead_letter_sink(&self) -> String {
        self.plan.dead_letters.name()
    }

    /// Runs until every region is finished (bounded sources) or a region fails for good.
    pub async fn run(&self) -> Result<Summary> {
        self.run_until(std::future::pending::<()>()).await
    }

    /// Runs like [`Pipeline::run`], and stops cleanly when `shutdown` completes: every region takes
    /// a last checkpoint, commits it and stops; a later run resumes from there.
    pub async fn run_until(&self, shutdown: impl std::future::Future<Output = ()>) -> Result<Summary> {
        let start = Instant::now();
        let plan = self.plan.clone();
        let store = self.checkpoint_store()?;
        store.probe().await?;
        let regions = plan.regions();
        let start_over = plan.settings.start_over;
        let proposed = PipelineMeta {
            format: FORMAT.into(),
            version: VERSION,
            pipeline: plan.name.clone(),
            topology: plan.topology(),
            regions,
            instance: if start_over {
                crate::checkpoint::new_instance_id()
            } else {
                crate::checkpoint::instance_for(store.location())
            },
        };
        let fresh = store.pipeline_meta().await?.is_none();
        if fresh {
            // Checked before `pipeline.json` is written, so a run that stops here leaves the
            // location as it found it (and `--start-over` still finds it new).
            guard::check(&plan, &store, &proposed.instance).await?;
        }
        let (meta, created) = store.open_pipeline(&proposed).await?;
        if start_over && !created {
            tracing::info!("start_over applies to a new checkpoint location only: resuming from the checkpoints there");
        }
        if !fresh || meta.instance != proposed.instance {
            guard::check(&plan, &store, &meta.instance).await?;
        }
        let assigner = assign::Assigner::open(store.clone(), plan.nodes[0].parallelism).await?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let run = Arc::new(region::RunContext {
            plan: plan.clone(),
            instance: meta.instance,
            store,
            assigner: assigner.clone(),
            metrics: self.metrics.clone(),
            stop,
            commit_waits: commit::CommitWaits::new(&plan.name, &plan.sink.name()),
        });
        tokio::pin!(shutdown);
        let mut stopped = false;

        let mut enumerator = tokio::spawn(assigner.run(plan.source.clone()));
        let mut enumerator_done = false;
        let mut drivers = JoinSet::new();
        for r in 0..regions {
            drivers.spawn(region::drive(run.clone(), r));
        }
        let outcome: Result<()> = loop {
            tokio::select! {
                _ = &mut shutdown, if !stopped => {
                    tracing::info!("stop requested: every region takes a last checkpoint");
                    stopped = true;
                    let _ = stop_tx.send(true);
                }
                joined = &mut enumerator, if !enumerator_done => {
                    enumerator_done = true;
                    match joined {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break Err(e.context(format!("split enumerator of source `{}`", plan.source.name()))),
                        Err(e) => break Err(Error::internal(format!("the split enumerator panicked: {}", task::panic_message(e)))),
                    }
                }
                joined = drivers.join_next() => match joined {
                    None => break Ok(()),
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(e)) => break Err(Error::internal(format!("a region driver panicked: {}", task::panic_message(e)))),
                },
            }
        };
        enumerator.abort();
        drivers.abort_all();
        outcome?;
        let metrics = self.metrics.snapshot();
        Ok(Summary {
            pipeline: plan.name.clone(),
            // Each source row once: the rows read again after a restart are not counted twice.
            rows_read: metrics.stages[0].rows_in.saturating_sub(metrics.rows_replayed),
            rows_committed: metrics.rows_committed,
            dead_letters: metrics.dead_letters_committed,
            commits: metrics.commits,
            checkpoints: metrics.checkpoints,
            restarts: metrics.restarts,
            stopped,
            elapsed: start.elapsed(),
            metrics,
        })
    }
}
