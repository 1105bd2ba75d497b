//! The region driver: one per region, the region's checkpoint coordinator.
//!
//! ```text
//!  start ─▶ load latest manifest ─▶ claim epoch ─▶ recover sinks ─▶ commit pending ─▶ spawn tasks
//!    ▲                                                                                 │
//!    │ failure (backoff; only this region)          every interval: trigger(n) to sources
//!    │                                              all tasks acked n ─▶ write manifest n (durable)
//!    └──────────────────────────────────────────────              ─▶ commit committables ≤ n
//!                                                   last barrier (end of input/stop) acked ─▶ done
//! ```
//!
//! Commits wait while the table fails ([`super::commit`]). A failing task (an `Err` from user
//! code, a panic, a commit that failed for good) fails its region only: the
//! driver aborts the region's tasks, waits, and restarts the region from its last completed
//! checkpoint with a new epoch. Other regions keep running and committing. After
//! `max_restarts` consecutive failures without a completed checkpoint the pipeline fails, unless
//! the failures are a dependency's (retryable external errors: an object store or the checkpoint
//! store that is down), which are waited out, restarting at most 30 s apart, up to
//! `outage_timeout`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::assign::Assigner;
use super::commit::commit_pending;
use super::gate::InputGate;
use super::task::*;
use crate::channel::{channel, Barrier, BarrierKind};
use crate::checkpoint::{manifest, CheckpointStore, PendingCommit, ReaderState, RegionManifest};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, StageMetrics};
use crate::operator::TaskContext;
use crate::pipeline::{Edge, Plan, StageKind};
use crate::sink::{Committable, SinkContext};

/// The longest wait between restarts of a region waiting out an outage.
const MAX_OUTAGE_DELAY: Duration = Duration::from_secs(30);

/// What every region driver shares.
pub(crate) struct RunContext {
    pub plan: Arc<Plan>,
    /// The checkpoints' instance id.
    pub instance: String,
    pub store: CheckpointStore,
    pub assigner: Arc<Assigner>,
    pub metrics: Arc<Metrics>,
    /// Becomes `true` when the pipeline is asked to stop.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The sink's commits waiting on its table.
    pub commit_waits: Arc<super::commit::CommitWaits>,
}

impl RunContext {
    fn sink_ctx(&self, region: usize, epoch: u64, writer: String) -> SinkContext {
        SinkContext { pipeline: self.plan.name.clone(), instance: self.instance.clone(), region, epoch, writer }
    }
}

/// Runs one region to completion, restarting it after failures.
pub(crate) async fn drive(run: Arc<RunContext>, region: usize) -> Result<()> {
    let settings = &run.plan.settings;
    let mut failures = 0u32;
    // Since when the region has been failing without completing a checkpoint.
    let mut failing_since: Option<Instant> = None;
    loop {
        let mut progressed = false;
        match attempt(&run, region, &mut progressed).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if progressed {
                    failures = 0;
                    failing_since = None;
                }
                failures += 1;
                let since = *failing_since.get_or_insert_with(Instant::now);
                run.metrics.pipeline.restarts.fetch_add(1, Ordering::Relaxed);
                let max = settings.max_restarts;
                if e.kind() == crate::ErrorKind::Checkpoint || e.kind() == crate::ErrorKind::Config {
                    return Err(e.context(format!("region {region} failed")));
                }
                // A dependency that cannot be reached (an object store or the checkpoint store that
                // is down) is waited out past `max_restarts`, up to `outage_timeout`; other
                // failures (a full disk, a refusal) are not.
                let outage = e.kind() == crate::ErrorKind::External && e.is_retryable() && crate::error::is_unreachable(&e);
                let waiting = outage && failures > max;
                if failures > max && !(waiting && since.elapsed() < settings.outage_timeout) {
                    let why = if outage {
                        format!(
                            "region {region} failed ({failures} consecutive failures over {}, longer than \
                             `pipeline.outage_timeout` = {})",
                            humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                            humantime::format_duration(settings.outage_timeout)
                        )
                    } else {
                        format!("region {region} failed ({failures} consecutive failures, at most {max} allowed)")
                    };
                    return Err(e.context(why));
                }
                let mut delay = settings.restart_delay * 2u32.saturating_pow(failures - 1).min(64);
                if waiting {
                    let left = settings.outage_timeout.saturating_sub(since.elapsed());
                    delay = delay.min(MAX_OUTAGE_DELAY).min(left).max(Duration::from_millis(10));
                    tracing::warn!(region, error = %e, retry_in = ?delay, "region {region} keeps failing on a dependency \
                        (retryable); waiting it out for up to `pipeline.outage_timeout` = {}, restarting from its last \
                        checkpoint", humantime::format_duration(settings.outage_timeout));
                } else {
                    tracing::warn!(region, error = %e, retry_in = ?delay, "region failed; restarting it from its last checkpoint");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(run.stop.clone()) => return Ok(()),
                }
            }
        }
    }
}

/// Completes once a stop is requested (never, if the sender is dropped without one).
pub(super) async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

struct InProgress {
    id: u64,
    kind: BarrierKind,
    started: Instant,
    acks: usize,
    /// Rows the readers read before the barrier (in this attempt).
    rows_read: u64,
    readers: Vec<ReaderState>,
    operators: BTreeMap<String, serde_json::Value>,
    sink: Vec<Committable>,
    dead_letters: Vec<Committable>,
}

async fn attempt(run: &Arc<RunContext>, region: usize, progressed: &mut bool) -> Result<()> {
    let plan = &run.plan;
    let restored = run.store.latest(&plan.name, region).await?;
    let epoch = run.store.claim_epoch(region, restored.as_ref().map(|m| m.epoch)).await?;
    let commit_ctx = run.sink_ctx(region, epoch, String::new());
    let mut pending = restored.as_ref().map(|m| m.pending.clone()).unwrap_or_default();
    let flatten = |p: &[PendingCommit], dl: bool| -> Vec<Committable> {
        p.iter().flat_map(|c| if dl { c.dead_letters.clone() } else { c.sink.clone() }).collect()
    };
    plan.sink.recover(&commit_ctx, &flatten(&pending, false)).await.map_err(|e| e.context("recovering the sink"))?;
    plan.dead_letters
        .recover(&commit_ctx, &flatten(&pending, true))
        .await
        .map_err(|e| e.context("recovering the dead-letter sink"))?;
    commit_pending(run, &commit_ctx, &mut pending, true).await?;
    if restored.as_ref().is_some_and(|m| m.is_final) {
        tracing::debug!(region, "region finished in an earlier run");
        return Ok(());
    }
    let stop_requested = *run.stop.borrow();
    if stop_requested {
        return Ok(());
    }
    match &restored {
        Some(m) => tracing::info!(region, checkpoint = m.checkpoint, epoch, "restoring region"),
        None => tracing::debug!(region, epoch, "starting region"),
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    // Rows the readers read in this attempt, and how many of them the last completed checkpoint
    // holds: on a failure, the difference is read again after the restart.
    let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut durable_read = 0u64;
    let (mut tasks, triggers, readers) = spawn_tasks(run, region, epoch, restored.as_ref(), &events_tx, &read).await?;
    drop(events_tx);
    let expected_acks = tasks.len();
    let mut next_id = restored.as_ref().map_or(1, |m| m.checkpoint + 1);
    let mut exhausted: HashSet<usize> = HashSet::new();
    let mut in_progress: Option<InProgress> = None;
    let mut want_final = false;
    let mut want_stop = false;
    let stop = stopped(run.stop.clone());
    tokio::pin!(stop);
    let interval = plan.settings.checkpoint_interval;
    let mut next_trigger = tokio::time::Instant::now() + interval;

    let result: Result<()> = async {
        loop {
            if in_progress.is_none() && (want_final || want_stop) {
                let kind = if want_final { BarrierKind::EndOfInput } else { BarrierKind::Stop };
                in_progress = Some(trigger(&triggers, next_id, kind)?);
                next_id += 1;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next_trigger), if in_progress.is_none() => {
                    in_progress = Some(trigger(&triggers, next_id, BarrierKind::Checkpoint)?);
                    next_id += 1;
                }
                _ = &mut stop, if !want_stop => {
                    tracing::info!(region, "stopping: taking a last checkpoint");
                    want_stop = true;
                }
                ev = events.recv() => match ev {
                    Some(TaskEvent::ReaderExhausted { reader }) => {
                        exhausted.insert(reader);
                        want_final = readers.iter().all(|r| exhausted.contains(r));
                    }
                    Some(TaskEvent::Ack { checkpoint, snapshot }) => {
                        let Some(cp) = in_progress.as_mut().filter(|c| c.id == checkpoint) else {
                            return Err(Error::internal(format!("ack for unknown checkpoint {checkpoint}")));
                        };
                        cp.acks += 1;
                        cp.rows_read += snapshot.rows_read;
                        cp.readers.extend(snapshot.reader);
                        cp.operators.extend(snapshot.operator);
                        cp.sink.extend(snapshot.sink);
                        cp.dead_letters.extend(snapshot.dead_letters);
                        if cp.acks == expected_acks {
                            let cp = in_progress.take().expect("in progress");
                            let rows_read = cp.rows_read;
                            let done = complete(run, region, epoch, cp, &mut pending, &commit_ctx).await?;
                            *progressed = true;
                            durable_read = rows_read;
                            if done {
                                return Ok(());
                            }
                            next_trigger = tokio::time::Instant::now() + interval;
                        }
                    }
                    None => return Err(Error::internal("all tasks of the region stopped before the final checkpoint")),
                },
                Some(joined) = tasks.join_next() => match joined {
                    Ok((_, Ok(()))) => {}
                    Ok((node, Err(e))) => {
                        StageMetrics::add(&run.metrics.stages[node].errors, 1);
                        return Err(e);
                    }
                    Err(e) => return Err(Error::internal(format!("a task of region {region} panicked: {}", panic_message(e)))),
                },
            }
        }
    }
    .await;

    if result.is_ok() {
        while let Some(joined) = tasks.join_next().await {
            joined.map_err(|e| Error::internal(panic_message(e)))?.1?;
        }
    } else {
        tasks.abort_all();
        let replayed = read.load(Ordering::Relaxed).saturating_sub(durable_read);
        run.metrics.pipeline.rows_replayed.fetch_add(replayed, Ordering::Relaxed);
        // A task that failed closes its channels as it ends, and the coordinator may see the
        // closed channel ("stopped before the final checkpoint") before the task's own error: the
        // task's error is the cause, so it replaces that symptom.
        let mut cause = None;
        while let Some(joined) = tasks.join_next().await {
            if let Ok((node, Err(e))) = joined {
                if cause.is_none() {
                    StageMetrics::add(&run.metrics.stages[node].errors, 1);
                    cause = Some(e);
                }
            }
        }
        if let Some(cp) = in_progress {
            // Best effort; `recover` on the restart deletes whatever this misses.
            let _ = plan.sink.abort(&commit_ctx, &cp.sink).await;
            let _ = plan.dead_letters.abort(&commit_ctx, &cp.dead_letters).await;
        }
        if let (Err(symptom), Some(cause)) = (&result, cause) {
            if symptom.kind() == crate::ErrorKind::Internal {
                return Err(cause);
            }
        }
    }
    result
}

fn trigger(triggers: &[mpsc::UnboundedSender<Barrier>], id: u64, kind: BarrierKind) -> Result<InProgress> {
    for t in triggers {
        t.send(Barrier { id, kind }).map_err(|_| Error::internal("a source task stopped before the final checkpoint"))?;
    }
    Ok(InProgress {
        id,
        kind,
        started: Instant::now(),
        acks: 0,
        rows_read: 0,
        readers: Vec::new(),
        operators: BTreeMap::new(),
        sink: Vec::new(),
        dead_letters: Vec::new(),
    })
}

/// Writes the manifest, then commits. Returns whether the region's tasks stop (end of input or stop).
async fn complete(
    run: &RunContext,
    region: usize,
    epoch: u64,
    mut cp: InProgress,
    pending: &mut Vec<PendingCommit>,
    ctx: &SinkContext,
) -> Result<bool> {
    if !cp.sink.is_empty() || !cp.dead_letters.is_empty() {
        pending.push(PendingCommit { checkpoint: cp.id, sink: cp.sink, dead_letters: cp.dead_letters });
    }
    cp.readers.sort_by_key(|r| r.reader);
    let is_final = cp.kind == BarrierKind::EndOfInput;
    let m = manifest(&run.plan.name, region, cp.id, epoch, is_final, cp.readers, cp.operators, pending.clone());
    run.store.write_manifest(&m).await?;
    run.assigner.durable(&m.readers).await;
    let took = cp.started.elapsed().as_nanos() as u64;
    let p = &run.metrics.pipeline;
    p.checkpoints.fetch_add(1, Ordering::Relaxed);
    p.checkpoint_ns.fetch_add(took, Ordering::Relaxed);
    p.checkpoint_max_ns.fetch_max(took, Ordering::Relaxed);
    tracing::debug!(region, checkpoint = cp.id, ms = took / 1_000_000, "checkpoint complete");
    commit_pending(run, ctx, pending, false).await?;
    Ok(cp.kind != BarrierKind::Checkpoint)
}

type Spawned = (JoinSet<(usize, Result<()>)>, Vec<mpsc::UnboundedSender<Barrier>>, Vec<usize>);

/// Builds the region's channels and spawns one task per subtask.
async fn spawn_tasks(
    run: &Arc<RunContext>,
    region: usize,
    epoch: u64,
    restored: Option<&RegionManifest>,
    events: &Events,
    read: &Arc<std::sync::atomic::AtomicU64>,
) -> Result<Spawned> {
    let plan = &run.plan;
    let n = plan.nodes.len();
    let budget = plan.settings.channel_bytes;
    // inputs[node][k] = receivers of the k-th subtask (in this region) of node.
    let mut inputs: Vec<Vec<Vec<crate::channel::Receiver>>> = Vec::with_capacity(n);
    let mut outputs: Vec<Vec<Vec<crate::channel::Sender>>> = Vec::with_capacity(n);
    for node in 0..n {
        let subs = plan.subtasks(node, region).len();
        inputs.push((0..subs).map(|_| Vec::new()).collect());
        outputs.push((0..subs).map(|_| Vec::new()).collect());
    }
    for node in 1..n {
        let ups = plan.subtasks(node - 1, region).len();
        let downs = plan.subtasks(node, region).len();
        let gauge = run.metrics.stages[node].input_buffer.clone();
        let pairs: Vec<(usize, usize)> = match plan.nodes[node].edge {
            Edge::Forward => (0..ups).map(|i| (i, i)).collect(),
            Edge::Rebalance => (0..ups).flat_map(|u| (0..downs).map(move |d| (u, d))).collect(),
        };
        let fan_in = if plan.nodes[node].edge == Edge::Forward { 1 } else { ups as u64 };
        for (u, d) in pairs {
            let (tx, rx) = channel((budget / fan_in).max(1), 1024, gauge.clone());
            outputs[node - 1][u].push(tx);
            inputs[node][d].push(rx);
        }
    }
    let mut tasks = JoinSet::new();
    let mut triggers = Vec::new();
    let mut readers = Vec::new();
    let mut inputs = inputs.into_iter();
    let mut outputs = outputs.into_iter();

    // Each task's dead letters, opened on its first one; `writer` names the task.
    let dead_letters =
        |writer: String| DeadLetters { sink: plan.dead_letters.clone(), ctx: run.sink_ctx(region, epoch, writer), writer: None };

    // Source readers.
    let _ = inputs.next();
    let source_outputs = outputs.next().expect("source outputs");
    for (k, outs) in source_outputs.into_iter().enumerate() {
        let reader = plan.subtasks(0, region)[k];
        let state = restored.and_then(|m| m.readers.iter().find(|r| r.reader == reader).cloned()).unwrap_or(ReaderState {
            reader,
            received_through: None,
            splits: Vec::new(),
            no_more_splits: false,
        });
        let (tx, splits_rx) = mpsc::unbounded_channel();
        let replay = run.assigner.attach(reader, state.received_through, tx).await?;
        let (ttx, trx) = mpsc::unbounded_channel();
        triggers.push(ttx);
        readers.push(reader);
        let metrics = run.metrics.stages[0].clone();
        let task = SourceTask {
            reader,
            source: plan.source.clone(),
            state,
            replay,
            splits_rx,
            backlog: run.assigner.backlog.clone(),
            triggers: trx,
            outputs: Outputs::new(outs, metrics.clone()),
            dead_letters: dead_letters(format!("source-{reader}")),
            events: events.clone(),
            metrics,
            read: read.clone(),
        };
        tasks.spawn(async move { (0, task.run().await) });
    }

    // Operators.
    for (s, stage) in plan.stages.iter().enumerate() {
        let node = s + 1;
        let ins = inputs.next().expect("stage inputs");
        let outs = outputs.next().expect("stage outputs");
        let metrics: Arc<StageMetrics> = run.metrics.stages[node].clone();
        for (k, (ins, outs)) in ins.into_iter().zip(outs).enumerate() {
            let subtask = plan.subtasks(node, region)[k];
            let ctx = TaskContext {
                pipeline: plan.name.clone(),
                stage: stage.name.clone(),
                subtask,
                parallelism: plan.nodes[node].parallelism,
                region,
                epoch,
            };
            let dead_letters = dead_letters(format!("{}-{}", stage.name, subtask));
            let io = StageIo {
                ctx,
                gate: InputGate::new(ins),
                outputs: Outputs::new(outs, metrics.clone()),
                dead_letters,
                events: events.clone(),
                metrics: metrics.clone(),
            };
            let restored = restored.and_then(|m| m.operators.get(&format!("{}#{}", stage.name, subtask)).cloned());
            match &stage.kind {
                StageKind::Sync(factory) => {
                    let task = OperatorTask { op: factory(), restored, io };
                    tasks.spawn(async move { (node, task.run().await) });
                }
                StageKind::Async { op, concurrency, ordered, unaligned } => {
                    let task = AsyncOperatorTask {
                        op: op.clone(),
                        concurrency: *concurrency,
                        ordered: *ordered,
                        unaligned: *unaligned,
                        restored,
                        io,
                    };
                    tasks.spawn(async move { (node, task.run().await) });
                }
            }
        }
    }

    // Sink writers.
    let ins = inputs.next().expect("sink inputs");
    let metrics = run.metrics.stages[n - 1].clone();
    for (k, ins) in ins.into_iter().enumerate() {
        let subtask = plan.subtasks(n - 1, region)[k];
        let ctx = run.sink_ctx(region, epoch, format!("sink-{subtask}"));
        let writer = plan.sink.writer(&ctx).await.map_err(|e| e.context("opening the sink writer"))?;
        let task = SinkTask { writer, gate: InputGate::new(ins), events: events.clone(), metrics: metrics.clone() };
        tasks.spawn(async move { (n - 1, task.run().await) });
    }
    Ok((tasks, triggers, readers))
}
