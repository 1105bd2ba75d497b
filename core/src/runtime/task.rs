//! The tasks of a region: one per subtask of every stage. The runtime owns the control loop; the
//! user's code (readers, operators, writers) never sees a barrier.
//!
//! ```text
//!  source task ──batches/barriers──▶ operator task ──▶ … ──▶ sink task
//!      ▲  │ ack(positions)              │ ack(state, dead letters)  │ ack(committable)
//!      │  └───────────────┬─────────────┴───────────────────────────┘
//!   trigger(n)            ▼
//!              region driver (coordinator of the region)
//! ```
//!
//! **Backpressure never holds a checkpoint at a source or an unaligned stage.** A barrier that
//! reaches such a task while it waits for room to send a batch goes ahead of the batch: the
//! checkpoint records the source's position before the batch, or the stage's input as in flight,
//! and the batch is made again on restore. So a service stage waiting out an outage with every
//! channel full still checkpoints, through `fetch` too. A synchronous stage between them
//! (`decode_image`) is aligned: its checkpoint waits for the batch it is sending.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::assign::ReaderMsg;
use super::gate::{Event, InputGate};
use crate::channel::{Barrier, BarrierKind, Message, Sender};
use crate::checkpoint::{ReaderState, SplitState};
use crate::error::{Error, Result};
use crate::metrics::StageMetrics;
use crate::operator::{AsyncOperator, Operator, Output, RowFailure, TaskContext};
use crate::sink::{Committable, Sink, SinkContext, SinkWriter};
use crate::source::{Source, SplitReader};
use crate::{dead_letter, source::State};

/// What a task hands the region driver when a barrier passes it.
#[derive(Debug, Default)]
pub(crate) struct TaskSnapshot {
    pub reader: Option<ReaderState>,
    /// A reader's rows read (in this attempt of its region) before the barrier.
    pub rows_read: u64,
    pub operator: Option<(String, State)>,
    pub sink: Option<Committable>,
    pub dead_letters: Option<Committable>,
}

/// Task → region driver.
#[derive(Debug)]
pub(crate) enum TaskEvent {
    Ack { checkpoint: u64, snapshot: Box<TaskSnapshot> },
    ReaderExhausted { reader: usize },
}

pub(crate) type Events = mpsc::UnboundedSender<TaskEvent>;

/// The output side of a task: forward (one channel) or rebalance (several).
pub(crate) struct Outputs {
    senders: Vec<Sender>,
    next: usize,
    metrics: Arc<StageMetrics>,
}

impl Outputs {
    pub(crate) fn new(senders: Vec<Sender>, metrics: Arc<StageMetrics>) -> Self {
        Self { senders, next: 0, metrics }
    }

    async fn send(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        StageMetrics::add(&self.metrics.rows_out, batch.num_rows() as u64);
        StageMetrics::add(&self.metrics.bytes_out, crate::types::data_bytes(&batch));
        // The channel budget counts memory held (buffer capacities), the metrics count data.
        let bytes = batch.get_array_memory_size() as u64;
        let n = self.senders.len();
        // Rebalance: the next channel with room, else the next in turn.
        let target = (0..n).map(|k| (self.next + k) % n).find(|i| self.senders[*i].has_room(bytes)).unwrap_or(self.next % n);
        self.next = (target + 1) % n;
        let waited = self.senders[target].send_sized(Message::Batch(batch), bytes).await.map_err(|_| downstream_gone())?;
        StageMetrics::add_time(&self.metrics.backpressure_ns, waited);
        Ok(())
    }

    async fn barrier(&mut self, barrier: Barrier) -> Result<()> {
        send_barrier(&self.senders, barrier).await
    }
}

/// Sends `barrier` to every output. Barriers take no bytes of a channel's budget, so one can pass
/// a batch that waits for room: see [`send_overtaken`].
async fn send_barrier(senders: &[Sender], barrier: Barrier) -> Result<()> {
    for s in senders {
        s.send(Message::Barrier(barrier)).await.map_err(|_| downstream_gone())?;
    }
    Ok(())
}

fn downstream_gone() -> Error {
    Error::internal("a downstream task stopped; its region is restarting").with_retryable(true)
}

fn ack(events: &Events, checkpoint: u64, snapshot: TaskSnapshot) -> Result<()> {
    events
        .send(TaskEvent::Ack { checkpoint, snapshot: Box::new(snapshot) })
        .map_err(|_| Error::internal("the region driver is gone"))
}

// ---------------------------------------------------------------- source

pub(crate) struct SourceTask {
    pub reader: usize,
    pub source: Arc<dyn Source>,
    pub state: ReaderState,
    pub replay: Vec<ReaderMsg>,
    pub splits_rx: mpsc::UnboundedReceiver<ReaderMsg>,
    /// Where this reader says how many splits it has not read yet.
    pub backlog: Arc<crate::runtime::assign::Backlog>,
    pub triggers: mpsc::UnboundedReceiver<Barrier>,
    pub outputs: Outputs,
    pub dead_letters: DeadLetters,
    pub events: Events,
    pub metrics: Arc<StageMetrics>,
    /// Rows read by every reader of the region in this attempt (see `TaskSnapshot::rows_read`).
    pub read: Arc<std::sync::atomic::AtomicU64>,
}

impl SourceTask {
    fn receive(&mut self, msg: ReaderMsg) {
        match msg {
            ReaderMsg::Assign { seq, splits } => {
                self.state.received_through = Some(seq);
                self.state.splits.extend(splits.into_iter().map(|split| SplitState { split, position: None }));
            }
            ReaderMsg::NoMoreSplits { seq } => {
                self.state.received_through = Some(seq);
                self.state.no_more_splits = true;
            }
        }
    }

    pub(crate) async fn run(mut self) -> Result<()> {
        for msg in std::mem::take(&mut self.replay) {
            self.receive(msg);
        }
        self.backlog.set(self.reader, self.state.splits.len());
        // `state.splits[0]` is the split being read, when `current` is set.
        let mut current: Option<Box<dyn SplitReader>> = None;
        let mut reported = false;
        let mut pending: VecDeque<Barrier> = VecDeque::new();
        // Rows this reader has read in this attempt.
        let mut read = 0u64;
        loop {
            if let Some(b) = pending.pop_front() {
                source_ack(self.state.clone(), read, &mut self.dead_letters, &self.events, b).await?;
                self.outputs.barrier(b).await?;
                if b.is_last() {
                    return Ok(());
                }
                continue;
            }
            if current.is_none() {
                if let Some(first) = self.state.splits.first() {
                    let reader = self.source.open(&first.split, first.position.as_ref()).await.map_err(|e| {
                        e.context(format!("opening split `{}` of source `{}`", first.split.id, self.source.name()))
                    })?;
                    current = Some(reader);
                } else if self.state.no_more_splits && !reported {
                    reported = true;
                    let _ = self.events.send(TaskEvent::ReaderExhausted { reader: self.reader });
                }
            }
            tokio::select! {
                biased;
                Some(b) = self.triggers.recv() => pending.push_back(b),
                Some(msg) = self.splits_rx.recv() => {
                    self.receive(msg);
                    self.backlog.set(self.reader, self.state.splits.len());
                }
                (next, took) = async {
                    let start = Instant::now();
                    let next = current.as_mut().expect("guarded").next_batch().await;
                    (next, start.elapsed())
                }, if current.is_some() => {
                    StageMetrics::add_time(&self.metrics.busy_ns, took);
                    match next? {
                        Some(batch) => {
                            let reader = current.as_mut().expect("reading");
                            // Where a checkpoint taken while this batch waits for room resumes.
                            let before = self.state.splits[0].position.replace(reader.position());
                            let rejected = reader.rejected();
                            let rows = batch.num_rows() as u64;
                            StageMetrics::add(&self.metrics.rows_in, rows);
                            StageMetrics::add(&self.metrics.bytes_in, crate::types::data_bytes(&batch));
                            self.read.fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
                            read += rows;
                            // Backpressure may hold the batch for long (a service stage waiting out an
                            // outage): checkpoints go on meanwhile, each recording the position before
                            // the batch, their barriers passing ahead of it.
                            let senders = self.outputs.senders.clone();
                            let send = self.outputs.send(batch);
                            tokio::pin!(send);
                            loop {
                                tokio::select! {
                                    biased;
                                    sent = &mut send => {
                                        sent?;
                                        break;
                                    }
                                    Some(b) = self.triggers.recv() => {
                                        let mut state = self.state.clone();
                                        state.splits[0].position = before.clone();
                                        source_ack(state, read - rows, &mut self.dead_letters, &self.events, b).await?;
                                        send_overtaken(&senders, b, &self.metrics).await?;
                                        if b.is_last() {
                                            // The batch comes after the last checkpoint: read again on restore.
                                            return Ok(());
                                        }
                                    }
                                }
                            }
                            // After the send, so that a checkpoint taken during it (which reads the
                            // batch again on restore) does not hold them too.
                            if let Some(r) = rejected {
                                self.dead_letters.route(&r.records, &r.failures, &self.metrics).await?;
                            }
                        }
                        None => {
                            current = None;
                            self.state.splits.remove(0);
                            self.backlog.set(self.reader, self.state.splits.len());
                        }
                    }
                }
                else => return Err(Error::internal("source task lost its region driver")),
            }
        }
    }
}

/// Acknowledges barrier `b` at a reader: its `state`, the rows it read before, and its dead
/// letters so far.
async fn source_ack(
    state: ReaderState,
    rows_read: u64,
    dead_letters: &mut DeadLetters,
    events: &Events,
    b: Barrier,
) -> Result<()> {
    let snapshot =
        TaskSnapshot { reader: Some(state), rows_read, dead_letters: dead_letters.prepare(b.id).await?, ..Default::default() };
    ack(events, b.id, snapshot)
}

/// Sends barrier `b` ahead of a batch that waits for room in an output channel (its send future
/// is not polled meanwhile, so the batch is queued after the barrier): the checkpoint does not
/// hold the batch, which the task makes again on restore (see [`SourceTask`] and
/// [`AsyncOperatorTask`]).
async fn send_overtaken(senders: &[Sender], b: Barrier, metrics: &StageMetrics) -> Result<()> {
    tracing::debug!(stage = %metrics.name, checkpoint = b.id, "a checkpoint passes a batch held by backpressure");
    send_barrier(senders, b).await
}

// ---------------------------------------------------------------- dead letters

/// A task's dead-letter writer, opened on the first dead letter.
pub(crate) struct DeadLetters {
    pub sink: Arc<dyn Sink>,
    pub ctx: SinkContext,
    pub writer: Option<Box<dyn SinkWriter>>,
}

impl DeadLetters {
    async fn route(&mut self, input: &RecordBatch, failures: &[RowFailure], metrics: &StageMetrics) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        if let Some(f) = failures.iter().find(|f| f.row >= input.num_rows()) {
            return Err(Error::internal(format!(
                "stage `{}` reported a failure for row {} of a batch of {} rows",
                metrics.name,
                f.row,
                input.num_rows()
            )));
        }
        let batch = dead_letter::build(&self.ctx.pipeline, &metrics.name, input, failures)?;
        StageMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
        if self.writer.is_none() {
            self.writer = Some(self.sink.writer(&self.ctx).await?);
        }
        self.writer.as_mut().expect("opened").write(batch).await.map_err(|e| e.context("writing dead letters"))
    }

    async fn prepare(&mut self, checkpoint: u64) -> Result<Option<Committable>> {
        match &mut self.writer {
            Some(w) => w.prepare(checkpoint).await,
            None => Ok(None),
        }
    }
}

// ---------------------------------------------------------------- operators

/// What every operator task has: its place, its input and output, its dead letters.
pub(crate) struct StageIo {
    pub ctx: TaskContext,
    pub gate: InputGate,
    pub outputs: Outputs,
    pub dead_letters: DeadLetters,
    pub events: Events,
    pub metrics: Arc<StageMetrics>,
}

impl StageIo {
    fn count_in(&self, batch: &RecordBatch) {
        StageMetrics::add(&self.metrics.rows_in, batch.num_rows() as u64);
        StageMetrics::add(&self.metrics.bytes_in, crate::types::data_bytes(batch));
    }

    /// Routes the failed rows of `input` to the dead letters and sends the rest on.
    async fn emit(&mut self, input: &RecordBatch, out: Result<Output>) -> Result<()> {
        let out = out.map_err(|e| e.context(format!("stage `{}`", self.ctx.stage)))?;
        self.dead_letters.route(input, &out.failures, &self.metrics).await?;
        self.outputs.send(out.batch).await
    }

    /// Acknowledges barrier `b` with the operator's state and forwards it. Returns whether the task stops.
    async fn barrier(&mut self, b: Barrier, state: Option<State>) -> Result<bool> {
        let snapshot = TaskSnapshot {
            operator: state.map(|s| (format!("{}#{}", self.ctx.stage, self.ctx.subtask), s)),
            dead_letters: self.dead_letters.prepare(b.id).await?,
            ..Default::default()
        };
        ack(&self.events, b.id, snapshot)?;
        self.outputs.barrier(b).await?;
        Ok(b.is_last())
    }
}

pub(crate) struct OperatorTask {
    pub op: Box<dyn Operator>,
    pub restored: Option<State>,
    pub io: StageIo,
}

/// Runs `f` on the operator on tokio's blocking pool (CPU work stays off the async reactor). A
/// panic in `f` is caught and returned as its message, and the operator comes back either way.
async fn blocking_caught<T: Send + 'static>(
    op: &mut Option<Box<dyn Operator>>,
    stage: &str,
    f: impl FnOnce(&mut dyn Operator) -> T + Send + 'static,
) -> Result<std::result::Result<T, String>> {
    let mut taken = op.take().expect("operator present");
    let (back, out) = tokio::task::spawn_blocking(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(taken.as_mut())))
            .map_err(|p| crate::error::panic_text(&*p));
        (taken, out)
    })
    .await
    .map_err(|e| Error::internal(format!("stage `{stage}` panicked: {}", panic_message(e))))?;
    *op = Some(back);
    Ok(out)
}

/// [`blocking_caught`], with a panic as an internal error (for `open`, `snapshot`, `finish`).
async fn blocking<T: Send + 'static>(
    op: &mut Option<Box<dyn Operator>>,
    stage: &str,
    f: impl FnOnce(&mut dyn Operator) -> T + Send + 'static,
) -> Result<T> {
    blocking_caught(op, stage, f).await?.map_err(|p| Error::internal(format!("stage `{stage}` panicked: {p}")))
}

/// The dead letter of a row on which a stage panicked.
fn panicked_row(stage: &str, panic: &str) -> RowFailure {
    RowFailure::new(0, crate::ErrorKind::Internal, format!("stage `{stage}` panicked on this row (a bug): {panic}"))
}

/// Processes `batch` in halves, down to single rows, after the operator panicked on it: each part's
/// output is held back until the part completes, so a panic mid-part sends nothing on, and a
/// single row that panics becomes a dead letter. A panic is a bug on some row's data, and one
/// row must never stop the job (every rerun would stop on the same row).
/// `panicked`: the whole batch panicked already, so start with its halves.
async fn process_bisecting(
    op: &mut Option<Box<dyn Operator>>,
    io: &mut StageIo,
    batch: &RecordBatch,
    panicked: bool,
) -> Result<()> {
    let stage = io.ctx.stage.clone();
    // Row ranges still to do, as a stack (the first half on top, so rows keep their order).
    let n = batch.num_rows();
    let mut todo = if panicked && n > 1 { vec![(n / 2, n - n / 2), (0, n / 2)] } else { vec![(0, n)] };
    while let Some((offset, len)) = todo.pop() {
        let part = batch.slice(offset, len);
        let input = part.clone();
        let outcome = blocking_caught(op, &stage, move |op| {
            let mut outs = Vec::new();
            op.process_into(input, &mut |out| {
                outs.push(out);
                Ok(())
            })
            .map(|()| outs)
        })
        .await?;
        match outcome {
            Ok(outs) => {
                for out in outs.map_err(|e| e.context(format!("stage `{stage}`")))? {
                    io.emit(&part, Ok(out)).await?;
                }
            }
            Err(panic) if len == 1 => {
                StageMetrics::add(&io.metrics.panics, 1);
                tracing::warn!(stage = %stage, "the stage panicked on a row; the row is a dead letter: {panic}");
                io.dead_letters.route(&part, &[panicked_row(&stage, &panic)], &io.metrics).await?;
            }
            Err(_) => {
                todo.push((offset + len / 2, len - len / 2));
                todo.push((offset, len / 2));
            }
        }
    }
    Ok(())
}

pub(crate) fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => crate::error::panic_text(&*p),
        Err(e) => e.to_string(),
    }
}

impl OperatorTask {
    pub(crate) async fn run(self) -> Result<()> {
        let OperatorTask { op, restored, mut io } = self;
        let stage = io.ctx.stage.clone();
        let ctx = io.ctx.clone();
        let mut op = Some(op);
        blocking(&mut op, &stage, move |op| {
            op.open(&ctx)?;
            restored.map_or(Ok(()), |s| op.restore(s))
        })
        .await??;
        loop {
            match io.gate.next().await? {
                Event::Batch(batch) => {
                    io.count_in(&batch);
                    let start = Instant::now();
                    if io.metrics.panics.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                        // Once the stage has panicked in this run, a batch that panics is bisected
                        // before any of its output goes on (see below).
                        process_bisecting(&mut op, &mut io, &batch, false).await?;
                        StageMetrics::add_time(&io.metrics.busy_ns, start.elapsed());
                        continue;
                    }
                    let input = batch.clone();
                    // The operator emits its output piece by piece from the blocking pool; each
                    // piece is sent on before the next is made (one in hand at a time). When the
                    // sending fails, the receiver is gone and the operator's next `emit` fails.
                    let (tx, rx) = mpsc::channel::<Output>(1);
                    let work = blocking_caught(&mut op, &stage, move |op| {
                        op.process_into(batch, &mut |out| tx.blocking_send(out).map_err(|_| downstream_gone()))
                    });
                    let mut sent_pieces = 0usize;
                    let send = async {
                        // Owned here, so a failed send drops it and releases the operator.
                        let mut rx = rx;
                        while let Some(out) = rx.recv().await {
                            sent_pieces += 1;
                            io.emit(&input, Ok(out)).await?;
                        }
                        Ok::<_, Error>(())
                    };
                    let (done, sent) = tokio::join!(work, send);
                    sent?;
                    match done? {
                        Ok(done) => done.map_err(|e| e.context(format!("stage `{stage}`")))?,
                        Err(panic) if sent_pieces > 0 => {
                            // Part of the batch's output has gone on already: bisecting now would
                            // send it twice. The region restarts from its last checkpoint (that
                            // output is never committed), and from then on this stage bisects a
                            // batch that panics before any of its output goes on.
                            StageMetrics::add(&io.metrics.panics, 1);
                            return Err(Error::internal(format!(
                                "stage `{stage}` panicked after sending part of a batch on: {panic}; the region \
                                 restarts and the stage holds each batch's output back until the batch is done"
                            )));
                        }
                        Err(panic) => {
                            StageMetrics::add(&io.metrics.panics, 1);
                            tracing::warn!(stage = %stage, rows = input.num_rows(), "the stage panicked; processing \
                                the batch in halves to find the rows that panic: {panic}");
                            process_bisecting(&mut op, &mut io, &input, true).await?;
                        }
                    }
                    StageMetrics::add_time(&io.metrics.busy_ns, start.elapsed());
                }
                Event::Barrier(b) => {
                    let end_of_input = b.kind == BarrierKind::EndOfInput;
                    let (rest, state) = blocking(&mut op, &stage, move |op| -> Result<_> {
                        let rest = if end_of_input { op.finish()? } else { None };
                        Ok((rest, op.snapshot()?))
                    })
                    .await??;
                    if let Some(rest) = rest {
                        io.outputs.send(rest).await?;
                    }
                    if io.barrier(b, state).await? {
                        return Ok(());
                    }
                }
                Event::End => return Ok(()),
            }
        }
    }
}

/// An async call: its sequence number, its input and its result.
type Call = futures::future::BoxFuture<'static, (u64, RecordBatch, Result<Output>)>;

enum InFlight {
    Ordered(FuturesOrdered<Call>),
    Unordered(FuturesUnordered<Call>),
}

impl InFlight {
    fn push(&mut self, c: Call) {
        match self {
            InFlight::Ordered(f) => f.push_back(c),
            InFlight::Unordered(f) => f.push(c),
        }
    }
    fn len(&self) -> usize {
        match self {
            InFlight::Ordered(f) => f.len(),
            InFlight::Unordered(f) => f.len(),
        }
    }
    async fn next(&mut self) -> Option<(u64, RecordBatch, Result<Output>)> {
        match self {
            InFlight::Ordered(f) => f.next().await,
            InFlight::Unordered(f) => f.next().await,
        }
    }
}

pub(crate) struct AsyncOperatorTask {
    pub op: Arc<dyn AsyncOperator>,
    pub concurrency: usize,
    pub ordered: bool,
    /// Barriers pass at once; the inputs in flight go into the checkpoint (see `Stage::unaligned`).
    pub unaligned: bool,
    /// The inputs that were in flight at the restored checkpoint: issued again first.
    pub restored: Option<State>,
    pub io: StageIo,
}

/// The inputs of an async subtask not yet answered, by sequence number, for unaligned checkpoints:
/// those in flight and those a barrier overtook that wait for a free slot.
#[derive(Default)]
struct Pending {
    next: u64,
    inputs: std::collections::BTreeMap<u64, RecordBatch>,
    waiting: VecDeque<(u64, Option<crate::channel::Held>)>,
}

impl Pending {
    fn admit(&mut self, batch: RecordBatch, held: Option<crate::channel::Held>) {
        let seq = self.next;
        self.next += 1;
        self.inputs.insert(seq, batch);
        self.waiting.push_back((seq, held));
    }

    /// Issues waiting inputs into free slots, in order.
    fn issue(&mut self, inflight: &mut InFlight, limit: usize, op: &Arc<dyn AsyncOperator>, io: &StageIo) {
        while inflight.len() < limit {
            let Some((seq, held)) = self.waiting.pop_front() else { return };
            let batch = self.inputs[&seq].clone();
            let (op, ctx, metrics) = (op.clone(), io.ctx.clone(), io.metrics.clone());
            inflight.push(Box::pin(async move {
                let start = Instant::now();
                let out = process_async(&op, &batch, &ctx, &metrics).await;
                StageMetrics::add_time(&metrics.busy_ns, start.elapsed());
                drop(held);
                (seq, batch, out)
            }));
        }
    }
}

/// `op.process` with its panics caught: after a panic the batch is processed again in halves, down
/// to the rows that panic, which become failed rows of the output (dead letters), as for sync
/// operators. An async operator returns its output whole, so nothing has gone on yet.
async fn process_async(
    op: &Arc<dyn AsyncOperator>,
    batch: &RecordBatch,
    ctx: &TaskContext,
    metrics: &StageMetrics,
) -> Result<Output> {
    use futures::FutureExt;
    let caught = |part: RecordBatch| std::panic::AssertUnwindSafe(op.process(part, ctx)).catch_unwind();
    let panic = match caught(batch.clone()).await {
        Ok(out) => return out,
        Err(p) => crate::error::panic_text(&*p),
    };
    StageMetrics::add(&metrics.panics, 1);
    tracing::warn!(stage = %ctx.stage, rows = batch.num_rows(), "the stage panicked; processing the batch in halves \
        to find the rows that panic: {panic}");
    let (mut batches, mut failures) = (Vec::new(), Vec::new());
    let mut todo = vec![(0, batch.num_rows())];
    while let Some((offset, len)) = todo.pop() {
        match caught(batch.slice(offset, len)).await {
            Ok(out) => {
                let out = out?;
                batches.push(out.batch);
                failures.extend(out.failures.into_iter().map(|f| RowFailure { row: f.row + offset, ..f }));
            }
            Err(p) if len == 1 => {
                StageMetrics::add(&metrics.panics, 1);
                let panic = crate::error::panic_text(&*p);
                failures.push(RowFailure { row: offset, ..panicked_row(&ctx.stage, &panic) });
            }
            Err(_) => {
                todo.push((offset + len / 2, len - len / 2));
                todo.push((offset, len / 2));
            }
        }
    }
    let schema = batches.first().map_or_else(|| batch.schema(), |b| b.schema());
    Ok(Output { batch: arrow::compute::concat_batches(&schema, &batches)?, failures })
}

/// What the input side of an async subtask gives: the next event, or a barrier that overtook the
/// queued batches (unaligned, when every slot is busy).
enum Input {
    Event(Result<Event>),
    Overtaken(Option<(Vec<crate::channel::Held>, Barrier)>),
}

async fn read(gate: &mut InputGate, room: bool) -> Input {
    if room {
        Input::Event(gate.next().await)
    } else {
        Input::Overtaken(gate.overtake().await)
    }
}

impl AsyncOperatorTask {
    pub(crate) async fn run(self) -> Result<()> {
        let AsyncOperatorTask { op, concurrency, ordered, unaligned, restored, mut io } = self;
        let mut inflight = if ordered { InFlight::Ordered(Default::default()) } else { InFlight::Unordered(Default::default()) };
        let limit = concurrency.max(1);
        let mut pending = Pending::default();
        // Inputs recorded in flight by the restored checkpoint go first (their rows were counted in
        // by the run that recorded them).
        for batch in restored.map(in_flight_inputs).transpose()?.unwrap_or_default() {
            pending.admit(batch, None);
        }
        loop {
            // Waiting inputs take free slots before anything new is read.
            pending.issue(&mut inflight, limit, &op, &io);
            let room = inflight.len() < limit;
            let barrier = tokio::select! {
                input = read(&mut io.gate, room), if room || unaligned => match input {
                    Input::Event(ev) => match ev? {
                        Event::Batch(batch) => {
                            io.count_in(&batch);
                            pending.admit(batch, None);
                            None
                        }
                        Event::Barrier(b) => Some(b),
                        Event::End => return Ok(()),
                    },
                    // Every slot is busy: a barrier overtakes the batches queued before it.
                    Input::Overtaken(found) => found.map(|(held, b)| {
                        for h in held {
                            io.count_in(&h.batch);
                            pending.admit(h.batch.clone(), Some(h));
                        }
                        b
                    }),
                },
                Some((seq, input, out)) = inflight.next(), if inflight.len() > 0 => {
                    if unaligned {
                        if emit_unaligned(&mut io, &mut pending, &input, out).await? {
                            return Ok(());
                        }
                    } else {
                        io.emit(&input, out).await?;
                    }
                    pending.inputs.remove(&seq);
                    None
                }
            };
            let Some(b) = barrier else { continue };
            let state = if unaligned && b.kind != BarrierKind::EndOfInput {
                // Unaligned: what is in flight or waiting is recorded, not waited for.
                Some(in_flight_state(pending.inputs.values())?)
            } else {
                // Aligned (and at the end of the input): drain everything first.
                while !pending.inputs.is_empty() {
                    pending.issue(&mut inflight, limit, &op, &io);
                    let (seq, input, out) = inflight.next().await.expect("an input is pending");
                    pending.inputs.remove(&seq);
                    io.emit(&input, out).await?;
                }
                None
            };
            if io.barrier(b, state).await? {
                return Ok(());
            }
        }
    }
}

/// Unaligned: sends the output of `input` on while barriers that reach the input meanwhile pass it
/// (backpressure may hold it for long: a service stage downstream waiting out an outage). Each
/// such checkpoint records `input` among the inputs in flight (it leaves `pending` only once its
/// output is sent), so the output goes after its
/// barrier and is made again on restore; the failed rows go to the dead letters after the send for
/// the same reason. Returns whether a last barrier passed (the task stops).
async fn emit_unaligned(io: &mut StageIo, pending: &mut Pending, input: &RecordBatch, out: Result<Output>) -> Result<bool> {
    let out = out.map_err(|e| e.context(format!("stage `{}`", io.ctx.stage)))?;
    let senders = io.outputs.senders.clone();
    let send = io.outputs.send(out.batch);
    tokio::pin!(send);
    loop {
        tokio::select! {
            biased;
            sent = &mut send => {
                sent?;
                break;
            }
            found = io.gate.overtake() => {
                // `None`: one more batch queued, no barrier among them yet.
                let Some((held, b)) = found else { continue };
                for h in held {
                    StageMetrics::add(&io.metrics.rows_in, h.batch.num_rows() as u64);
                    StageMetrics::add(&io.metrics.bytes_in, crate::types::data_bytes(&h.batch));
                    pending.admit(h.batch.clone(), Some(h));
                }
                let snapshot = TaskSnapshot {
                    operator: Some((format!("{}#{}", io.ctx.stage, io.ctx.subtask), in_flight_state(pending.inputs.values())?)),
                    dead_letters: io.dead_letters.prepare(b.id).await?,
                    ..Default::default()
                };
                ack(&io.events, b.id, snapshot)?;
                send_overtaken(&senders, b, &io.metrics).await?;
                if b.is_last() {
                    return Ok(true);
                }
            }
        }
    }
    io.dead_letters.route(input, &out.failures, &io.metrics).await?;
    Ok(false)
}

/// Checkpoint state of the inputs in flight: each batch as a base64 Arrow IPC stream, in order.
fn in_flight_state<'a>(inputs: impl Iterator<Item = &'a RecordBatch>) -> Result<State> {
    use base64::Engine;
    let mut encoded = Vec::new();
    for batch in inputs {
        let mut buf = Vec::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
        drop(w);
        encoded.push(serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(buf)));
    }
    Ok(serde_json::json!({ "in_flight": encoded }))
}

fn in_flight_inputs(state: State) -> Result<Vec<RecordBatch>> {
    use base64::Engine;
    let bad = |why: String| Error::checkpoint(format!("the checkpoint's in-flight inputs cannot be read: {why}"));
    let list = state.get("in_flight").and_then(|v| v.as_array()).ok_or_else(|| bad("no `in_flight` list".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().ok_or_else(|| bad("an entry is not a string".into()))?)
            .map_err(|e| bad(e.to_string()))?;
        for batch in arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)? {
            out.push(batch?);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- sink

pub(crate) struct SinkTask {
    pub writer: Box<dyn SinkWriter>,
    pub gate: InputGate,
    pub events: Events,
    pub metrics: Arc<StageMetrics>,
}

impl SinkTask {
    pub(crate) async fn run(mut self) -> Result<()> {
        loop {
            match self.gate.next().await? {
                Event::Batch(batch) => {
                    let rows = batch.num_rows() as u64;
                    StageMetrics::add(&self.metrics.rows_in, rows);
                    StageMetrics::add(&self.metrics.bytes_in, crate::types::data_bytes(&batch));
                    let start = Instant::now();
                    self.writer.write(batch).await.map_err(|e| e.context(format!("sink `{}`", self.metrics.name)))?;
                    StageMetrics::add_time(&self.metrics.busy_ns, start.elapsed());
                    StageMetrics::add(&self.metrics.rows_out, rows);
                }
                Event::Barrier(b) => {
                    let sink = self
                        .writer
                        .prepare(b.id)
                        .await
                        .map_err(|e| e.context(format!("sink `{}` prepare", self.metrics.name)))?;
                    ack(&self.events, b.id, TaskSnapshot { sink, ..Default::default() })?;
                    if b.is_last() {
                        return Ok(());
                    }
                }
                Event::End => return Ok(()),
            }
        }
    }
}
