//! Building a pipeline: `Pipeline::builder(name).source(..).then(..).sink(..).build()?`.
//!
//! A pipeline is a chain: one source, any number of operator [`Stage`]s, one sink, plus a dead-letter
//! sink. Every stage has a parallelism (the pipeline's, unless set) and an input edge:
//!
//! * **forward** (the default): subtask *i* feeds subtask *i* of the next stage. Both stages must have
//!   the same parallelism.
//! * **rebalance** ([`Stage::rebalance`]): every upstream subtask feeds every downstream subtask,
//!   round-robin, skipping full channels first.
//!
//! **Regions** follow from the edges (as in Flink's FLIP-600): a pipeline whose edges are all forward
//! is `P` independent lanes, and each lane is its own region that checkpoints, fails and recovers on
//! its own. A rebalance edge connects every lane with every other, so the whole pipeline is one region.
//!
//! `build()` checks everything that can be checked without IO — a missing source or sink, a zero
//! parallelism, a forward edge between different parallelisms, duplicate stage names, a zero
//! checkpoint interval — and, for a local checkpoint directory, that it can be written. Every error
//! names the stage or setting and the fix. A chain cannot express a cycle, so none can be built.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::files::{FileSink, JsonLines};
use crate::operator::{AsyncOperator, Operator};
use crate::sink::Sink;
use crate::source::Source;

/// How a stage receives its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// Subtask i → subtask i.
    Forward,
    /// Every upstream subtask → every downstream subtask.
    Rebalance,
}

type OperatorFactory = Arc<dyn Fn() -> Box<dyn Operator> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum StageKind {
    Sync(OperatorFactory),
    Async { op: Arc<dyn AsyncOperator>, concurrency: usize, ordered: bool, unaligned: bool },
}

/// An operator stage with its name, parallelism and input edge.
#[derive(Clone)]
pub struct Stage {
    pub(crate) name: String,
    pub(crate) kind: StageKind,
    pub(crate) parallelism: Option<usize>,
    pub(crate) edge: Edge,
}

impl Stage {
    /// A synchronous stage; `op` is cloned for every subtask (and again on a restart).
    pub fn new(name: impl Into<String>, op: impl Operator + Clone + Sync) -> Self {
        let factory: OperatorFactory = Arc::new(move || Box::new(op.clone()));
        Self { name: name.into(), kind: StageKind::Sync(factory), parallelism: None, edge: Edge::Forward }
    }

    /// An asynchronous stage with up to 4 batches in flight per subtask, results in input order.
    pub fn new_async(name: impl Into<String>, op: impl AsyncOperator) -> Self {
        Self {
            name: name.into(),
            kind: StageKind::Async { op: Arc::new(op), concurrency: 4, ordered: true, unaligned: false },
            parallelism: None,
            edge: Edge::Forward,
        }
    }

    /// Sets the stage's parallelism.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.parallelism = Some(n);
        self
    }

    /// Receives input over a rebalance edge.
    pub fn rebalance(mut self) -> Self {
        self.edge = Edge::Rebalance;
        self
    }

    /// Whether the stage is async (its calls overlap: `concurrency` and `unordered` apply).
    pub fn is_async(&self) -> bool {
        matches!(self.kind, StageKind::Async { .. })
    }

    /// For async stages: batches in flight per subtask.
    pub fn concurrency(mut self, n: usize) -> Self {
        if let StageKind::Async { concurrency, .. } = &mut self.kind {
            *concurrency = n;
        }
        self
    }

    /// For async stages: emit results as they complete instead of in input order.
    pub fn unordered(mut self) -> Self {
        if let StageKind::Async { ordered, .. } = &mut self.kind {
            *ordered = false;
        }
        self
    }

    /// For async stages: unaligned checkpoints. A barrier passes the stage at once instead of
    /// waiting for the batches in flight; those are stored in the lane's checkpoint and processed
    /// again after a restore. For slow calls (model inference), so that a checkpoint takes bounded
    /// time. The end of the input still drains them.
    pub fn unaligned(mut self) -> Self {
        if let StageKind::Async { unaligned, .. } = &mut self.kind {
            *unaligned = true;
        }
        self
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renames the stage (names key checkpoint state and label metrics and dead letters).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

/// Runtime settings with their defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Default parallelism of every stage (1).
    pub parallelism: usize,
    /// Time between the end of one region checkpoint and the trigger of the next (10 s).
    pub checkpoint_interval: Duration,
    /// Where checkpoints go (`.alluvium/<pipeline>/checkpoints`).
    pub checkpoint_location: String,
    /// Bytes buffered at most in the input channels of one subtask (64 MiB).
    pub channel_bytes: u64,
    /// Consecutive failures of a region, without a completed checkpoint in between, before the
    /// pipeline gives up (3).
    pub max_restarts: u32,
    /// Delay before the first restart of a failed region; doubles with each consecutive failure (1 s).
    pub restart_delay: Duration,
    /// A new checkpoint location starts a new job with a fresh instance id, even when the sink
    /// already holds commits of a job at that location (false): its rows are written again.
    pub start_over: bool,
    /// How long the job waits out a dependency that keeps failing (10 minutes): a commit waits
    /// for its table or catalog, and a region whose tasks fail with retryable external errors (an
    /// object store, the checkpoint store) keeps restarting, for this long before the job stops.
    /// Checkpoints stay durable: a rerun resumes, committing what is pending first.
    pub outage_timeout: Duration,
}

/// Builds a [`crate::Pipeline`]. Infallible until [`PipelineBuilder::build`].
pub struct PipelineBuilder {
    pub(crate) name: String,
    pub(crate) source: Option<(Arc<dyn Source>, Option<usize>)>,
    pub(crate) stages: Vec<Stage>,
    pub(crate) sink: Option<(Arc<dyn Sink>, Option<usize>, Edge)>,
    pub(crate) dead_letters: Option<Arc<dyn Sink>>,
    pub(crate) settings: Settings,
    checkpoint_location_set: bool,
}

impl PipelineBuilder {
    pub(crate) fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            settings: Settings {
                parallelism: 1,
                checkpoint_interval: Duration::from_secs(10),
                checkpoint_location: format!(".alluvium/{name}/checkpoints"),
                channel_bytes: 64 << 20,
                max_restarts: 3,
                restart_delay: Duration::from_secs(1),
                outage_timeout: Duration::from_secs(600),
                start_over: false,
            },
            name,
            source: None,
            stages: Vec::new(),
            sink: None,
            dead_letters: None,
            checkpoint_location_set: false,
        }
    }

    /// The source.
    pub fn source(mut self, source: impl Source) -> Self {
        self.source = Some((Arc::new(source), None));
        self
    }

    /// The source, with its own parallelism (number of readers).
    pub fn source_with_parallelism(mut self, source: impl Source, parallelism: usize) -> Self {
        self.source = Some((Arc::new(source), Some(parallelism)));
        self
    }

    /// Appends a stage.
    pub fn then(mut self, stage: impl Into<Stage>) -> Self {
        self.stages.push(stage.into());
        self
    }

    /// The sink, with the pipeline's parallelism and a forward edge.
    pub fn sink(mut self, sink: impl Sink) -> Self {
        self.sink = Some((Arc::new(sink), None, Edge::Forward));
        self
    }

    /// The sink, shared (`Arc`), with an explicit parallelism and edge.
    pub fn sink_with(mut self, sink: Arc<dyn Sink>, parallelism: Option<usize>, edge: Edge) -> Self {
        self.sink = Some((sink, parallelism, edge));
        self
    }

    /// Where dead letters go (default: JSON Lines files in `dead-letters/` beside the checkpoints).
    pub fn dead_letters(mut self, sink: impl Sink) -> Self {
        self.dead_letters = Some(Arc::new(sink));
        self
    }

    /// Where dead letters go, shared.
    pub fn dead_letters_shared(mut self, sink: Arc<dyn Sink>) -> Self {
        self.dead_letters = Some(sink);
        self
    }

    /// Default parallelism of every stage.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.settings.parallelism = n;
        self
    }

    /// Checkpoint interval of every region.
    pub fn checkpoint_every(mut self, interval: Duration) -> Self {
        self.settings.checkpoint_interval = interval;
        self
    }

    /// Checkpoint location: a local directory or an object store URL.
    pub fn checkpoint_location(mut self, location: impl Into<String>) -> Self {
        self.settings.checkpoint_location = location.into();
        self.checkpoint_location_set = true;
        self
    }

    /// Bytes buffered at most in the input channels of one subtask.
    pub fn channel_bytes(mut self, bytes: u64) -> Self {
        self.settings.channel_bytes = bytes;
        self
    }

    /// Consecutive failures of a region before the pipeline fails.
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.settings.max_restarts = n;
        self
    }

    /// Delay before restarting a failed region (doubles per consecutive failure).
    pub fn restart_delay(mut self, delay: Duration) -> Self {
        self.settings.restart_delay = delay;
        self
    }

    /// Starts a new job when the checkpoint location is new, even if the sink holds commits of a
    /// job whose checkpoints were there (deleted since): every row is written again. Without it,
    /// such a run stops with an error instead (see `runtime::guard`). Ignored when the location
    /// holds checkpoints: a run resumes from them.
    pub fn start_over(mut self, start_over: bool) -> Self {
        self.settings.start_over = start_over;
        self
    }

    /// How long the job waits out a dependency that keeps failing before it stops (10 minutes);
    /// see [`Settings::outage_timeout`].
    pub fn outage_timeout(mut self, timeout: Duration) -> Self {
        self.settings.outage_timeout = timeout;
        self
    }

    /// Validates and builds the pipeline.
    pub fn build(self) -> Result<crate::Pipeline> {
        let name = self.name.clone();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::config(format!(
                "pipeline name `{name}` is not valid; use letters, digits, `-`, `_` and `.` (it names checkpoints and files)"
            )));
        }
        let (source, source_par) = self.source.clone().ok_or_else(|| {
            Error::config(format!("pipeline `{name}` has no source; add one with `.source(...)` ([source] in a job file)"))
        })?;
        let (sink, sink_par, sink_edge) = self.sink.clone().ok_or_else(|| {
            Error::config(format!("pipeline `{name}` has no sink; add one with `.sink(...)` ([sink] in a job file)"))
        })?;
        if self.settings.parallelism == 0 {
            return Err(Error::config("pipeline parallelism is 0; set it to 1 or more"));
        }
        if self.settings.checkpoint_interval.is_zero() {
            return Err(Error::config("the checkpoint interval is 0; set it to a positive duration such as `1s`"));
        }
        if self.settings.channel_bytes == 0 {
            return Err(Error::config("channel_bytes is 0; set a buffer budget such as 64 MiB"));
        }
        source.validate().map_err(|e| e.context(format!("source `{}`", source.name())))?;
        sink.validate().map_err(|e| e.context(format!("sink `{}`", sink.name())))?;

        let p = self.settings.parallelism;
        let mut nodes = vec![Node { name: source.name(), parallelism: source_par.unwrap_or(p), edge: Edge::Forward }];
        for s in &self.stages {
            nodes.push(Node { name: s.name.clone(), parallelism: s.parallelism.unwrap_or(p), edge: s.edge });
        }
        nodes.push(Node { name: sink.name(), parallelism: sink_par.unwrap_or(p), edge: sink_edge });
        for (i, n) in nodes.iter().enumerate() {
            if n.name.is_empty() || n.name.contains(['/', '#']) {
                return Err(Error::config(format!("stage {i} has the name `{}`; give it a name without `/` or `#`", n.name)));
            }
            if nodes[..i].iter().any(|m| m.name == n.name) {
                return Err(Error::config(format!(
                    "two stages are named `{}`; stage names key checkpoint state, so give each a unique name",
                    n.name
                )));
            }
            if n.parallelism == 0 {
                return Err(Error::config(format!("stage `{}` has parallelism 0; set it to 1 or more", n.name)));
            }
            if i > 0 && n.edge == Edge::Forward && nodes[i - 1].parallelism != n.parallelism {
                return Err(Error::config(format!(
                    "stage `{}` (parallelism {}) has a forward edge from `{}` (parallelism {}); give both the same \
                     parallelism, or receive over a rebalance edge (`.rebalance()`, `edge = \"rebalance\"`)",
                    n.name,
                    n.parallelism,
                    nodes[i - 1].name,
                    nodes[i - 1].parallelism
                )));
            }
        }
        if let Some(dir) = crate::store::Location::local_dir(&self.settings.checkpoint_location) {
            check_local_dir_writable(&dir).map_err(|e| {
                e.context(if self.checkpoint_location_set { "checkpoint location" } else { "default checkpoint location" })
            })?;
        }
        let dead_letters = match &self.dead_letters {
            Some(d) => d.clone(),
            None => {
                let dir = format!("{}/dead-letters", self.settings.checkpoint_location.trim_end_matches('/'));
                Arc::new(FileSink::new(JsonLines, dir)) as Arc<dyn Sink>
            }
        };
        dead_letters.validate().map_err(|e| e.context("dead-letter sink"))?;
        let norm = |l: Option<String>| l.map(|l| l.trim_end_matches('/').trim_start_matches("file://").to_string());
        if let (Some(a), Some(b)) = (norm(sink.location()), norm(dead_letters.location())) {
            if a == b {
                return Err(Error::config(format!(
                    "the dead-letter sink writes to `{}`, the same location as the sink; give dead letters their own \
                     directory, such as `{a}/_dead_letters`",
                    crate::error::redact(&b)
                )));
            }
        }
        Ok(crate::Pipeline::new(Plan { name, source, stages: self.stages, sink, dead_letters, nodes, settings: self.settings }))
    }
}

fn check_local_dir_writable(dir: &std::path::Path) -> Result<()> {
    let shown = dir.display();
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::config(format!("cannot create `{shown}`: {e}; choose a writable directory")))?;
    let probe = dir.join(format!(".alluvium-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| Error::config(format!("cannot write in `{shown}`: {e}; choose a writable directory")))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// One stage of the topology, source and sink included.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    pub parallelism: usize,
    pub edge: Edge,
}

/// A validated pipeline: what the runtime executes.
pub(crate) struct Plan {
    pub name: String,
    pub source: Arc<dyn Source>,
    pub stages: Vec<Stage>,
    pub sink: Arc<dyn Sink>,
    pub dead_letters: Arc<dyn Sink>,
    /// Source, stages, sink.
    pub nodes: Vec<Node>,
    pub settings: Settings,
}

impl Plan {
    /// All edges forward: one region per lane. Otherwise one region.
    pub fn regions(&self) -> usize {
        if self.nodes.iter().skip(1).all(|n| n.edge == Edge::Forward) {
            self.nodes[0].parallelism
        } else {
            1
        }
    }

    /// The subtasks of `node` that belong to `region`.
    pub fn subtasks(&self, node: usize, region: usize) -> Vec<usize> {
        if self.regions() == 1 {
            (0..self.nodes[node].parallelism).collect()
        } else {
            vec![region]
        }
    }

    /// A one-line description of the topology; a restore needs the same one.
    pub fn topology(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                s.push_str(if n.edge == Edge::Forward { " -> " } else { " => " });
            }
            s.push_str(&format!("{}[{}]", n.name, n.parallelism));
        }
        s
    }
}
