//! Split assignment: the coordinator's enumerator loop and the durable assignment log.
//!
//! The enumerator discovers splits; each batch of splits is assigned to source readers (the reader
//! with the fewest splits so far gets the next one), **appended to the log durably, and only then**
//! sent to the readers. A region that restarts gets back its unfinished splits from its manifest
//! plus every split assigned to its readers after that manifest (replayed from the log), so every
//! split is read by exactly one reader and none is lost in between.
//!
//! The log is compacted as regions checkpoint: once every reader's latest durable manifest has
//! received an assignment, no restore can replay it, and it is dropped from memory and deleted
//! from the store (oldest first, so the stored log is always a contiguous run; the newest record
//! stays, with the enumerator's state). A continuous source's log therefore stays as long as the
//! readers' distance between checkpoints, not as long as the job has run.
//!
//! Discovery is backpressured: while the readers hold [`QUEUED_PER_READER`] unread splits each
//! (on average), the enumerator waits. A huge or endless source (a trillion generated rows, a
//! bucket of millions of objects) is therefore enumerated as fast as it is read, and the splits
//! a reader holds, which its checkpoints carry, stay few.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

use crate::checkpoint::{AssignmentRecord, CheckpointStore, ReaderState};
use crate::error::Result;
use crate::source::{Discovery, Source, Split};

/// Sent to a reader.
#[derive(Debug)]
pub(crate) enum ReaderMsg {
    /// New splits, from assignment `seq`.
    Assign { seq: u64, splits: Vec<Split> },
    /// No split will follow, as of assignment `seq`.
    NoMoreSplits { seq: u64 },
}

struct State {
    /// The records a restore may still need, in order (the newest always).
    log: Vec<AssignmentRecord>,
    next_seq: u64,
    readers: Vec<Option<mpsc::UnboundedSender<ReaderMsg>>>,
    assigned: Vec<usize>,
    /// Each reader's `received_through` in its region's latest durable manifest, this run.
    durable: Vec<Option<u64>>,
}

/// The log is compacted in steps of at least this many records.
const COMPACT_EVERY: u64 = 32;

/// Unread splits a reader may hold, on average, before discovery waits.
pub(crate) const QUEUED_PER_READER: usize = 64;

/// The unread splits of each reader: set by the reader whenever its queue changes, and raised by
/// the assigner when it sends more (until the reader has taken them).
pub(crate) struct Backlog(Vec<AtomicUsize>);

impl Backlog {
    /// Reader `reader` holds `n` unread splits.
    pub(crate) fn set(&self, reader: usize, n: usize) {
        self.0[reader].store(n, Ordering::Relaxed);
    }
    fn add(&self, reader: usize, n: usize) {
        self.0[reader].fetch_add(n, Ordering::Relaxed);
    }
    fn total(&self) -> usize {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// Shared by the enumerator loop and the region drivers.
pub(crate) struct Assigner {
    store: CheckpointStore,
    state: Mutex<State>,
    /// The oldest stored record not yet deleted; held while deleting, so deletions go in order.
    compacted: Mutex<u64>,
    /// Shared with the source tasks.
    pub(crate) backlog: Arc<Backlog>,
}

impl Assigner {
    pub(crate) async fn open(store: CheckpointStore, readers: usize) -> Result<Arc<Self>> {
        let log = store.assignments().await?;
        let mut assigned = vec![0; readers];
        for r in &log {
            for (reader, _) in &r.splits {
                if *reader >= readers {
                    return Err(crate::Error::checkpoint(format!(
                        "the assignment log names reader {reader}, but the source has {readers}; \
                         restore the old parallelism to resume (a fresh checkpoint location would be a new job \
                         that writes every row again)"
                    )));
                }
                assigned[*reader] += 1;
            }
        }
        let backlog = Arc::new(Backlog((0..readers).map(|_| AtomicUsize::new(0)).collect()));
        let first = log.first().map_or(0, |r| r.seq);
        let next_seq = log.last().map_or(0, |r| r.seq + 1);
        let state = Mutex::new(State {
            log,
            next_seq,
            readers: (0..readers).map(|_| None).collect(),
            assigned,
            durable: vec![None; readers],
        });
        Ok(Arc::new(Self { store, state, compacted: Mutex::new(first), backlog }))
    }

    /// A region's manifest naming `readers` is durable: assignments every reader has received in
    /// a durable manifest are compacted away (see the module docs).
    pub(crate) async fn durable(&self, readers: &[ReaderState]) {
        let through = {
            let mut st = self.state.lock().await;
            for r in readers {
                if let (Some(seq), Some(d)) = (r.received_through, st.durable.get_mut(r.reader)) {
                    *d = Some(d.map_or(seq, |d| d.max(seq)));
                }
            }
            let floor = st.durable.iter().copied().collect::<Option<Vec<u64>>>().and_then(|d| d.into_iter().min());
            let (Some(floor), Some(first), Some(last)) = (floor, st.log.first(), st.log.last()) else { return };
            // The newest record stays: it carries the enumerator's state and the next sequence number.
            let through = floor.min(last.seq.saturating_sub(1));
            if last.seq == 0 || through < first.seq || through + 1 - first.seq < COMPACT_EVERY {
                return;
            }
            st.log.retain(|r| r.seq > through);
            through
        };
        let mut next = self.compacted.lock().await;
        while *next <= through {
            if let Err(e) = self.store.delete_assignment(*next).await {
                tracing::warn!(error = %e, "could not delete a compacted split assignment; the next compaction retries");
                return;
            }
            *next += 1;
        }
    }

    /// Registers a (re)started reader and returns what it must replay: assignments after
    /// `received_through`. Later assignments are sent to `tx`. An error when those were compacted
    /// away (the reader's manifest is older than every region's latest: restored by hand).
    pub(crate) async fn attach(
        &self,
        reader: usize,
        received_through: Option<u64>,
        tx: mpsc::UnboundedSender<ReaderMsg>,
    ) -> Result<Vec<ReaderMsg>> {
        let mut st = self.state.lock().await;
        let from = received_through.map_or(0, |s| s + 1);
        if let Some(first) = st.log.first().filter(|r| r.seq > from) {
            return Err(crate::Error::checkpoint(format!(
                "reader {reader} resumes after split assignment {received_through:?}, but the assignment log starts at \
                 {}: its checkpoint is older than the log; restore the latest checkpoints or use a fresh checkpoint \
                 location",
                first.seq
            )));
        }
        let mut replay = Vec::new();
        for r in st.log.iter().filter(|r| r.seq >= from) {
            let splits: Vec<Split> = r.splits.iter().filter(|(i, _)| *i == reader).map(|(_, s)| s.clone()).collect();
            if !splits.is_empty() {
                replay.push(ReaderMsg::Assign { seq: r.seq, splits });
            }
            if r.exhausted {
                replay.push(ReaderMsg::NoMoreSplits { seq: r.seq });
            }
        }
        st.readers[reader] = Some(tx);
        Ok(replay)
    }

    fn exhausted(st: &State) -> bool {
        st.log.last().is_some_and(|r| r.exhausted)
    }

    /// Runs the enumerator until it is exhausted (bounded sources) or forever (unbounded).
    pub(crate) async fn run(self: Arc<Self>, source: Arc<dyn Source>) -> Result<()> {
        let restored = {
            let st = self.state.lock().await;
            if Self::exhausted(&st) {
                return Ok(());
            }
            st.log.last().map(|r| r.enumerator.clone())
        };
        let mut enumerator = source.enumerator(restored).await?;
        let limit = QUEUED_PER_READER * self.backlog.0.len().max(1);
        loop {
            while self.backlog.total() >= limit {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let discovery = enumerator.discover().await?;
            let (splits, exhausted) = match discovery {
                Discovery::Splits(s) if s.is_empty() => continue,
                Discovery::Splits(s) => (s, false),
                Discovery::Idle(d) => {
                    tokio::time::sleep(d).await;
                    continue;
                }
                Discovery::Exhausted => (Vec::new(), true),
            };
            let mut st = self.state.lock().await;
            let mut pairs = Vec::with_capacity(splits.len());
            for split in splits {
                let reader = (0..st.assigned.len()).min_by_key(|i| st.assigned[*i]).unwrap_or(0);
                st.assigned[reader] += 1;
                pairs.push((reader, split));
            }
            let record = AssignmentRecord { seq: st.next_seq, splits: pairs, enumerator: enumerator.snapshot(), exhausted };
            self.store.append_assignment(&record).await?;
            for (reader, tx) in st.readers.iter().enumerate() {
                let Some(tx) = tx else { continue };
                let splits: Vec<Split> = record.splits.iter().filter(|(i, _)| *i == reader).map(|(_, s)| s.clone()).collect();
                // A send fails only while the reader's region restarts; it replays from the log.
                if !splits.is_empty() {
                    self.backlog.add(reader, splits.len());
                    let _ = tx.send(ReaderMsg::Assign { seq: record.seq, splits });
                }
                if exhausted {
                    let _ = tx.send(ReaderMsg::NoMoreSplits { seq: record.seq });
                }
            }
            st.log.push(record);
            st.next_seq += 1;
            if exhausted {
                return Ok(());
            }
        }
    }
}
