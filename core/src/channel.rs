//! Channels between subtasks, bounded by **bytes** (and, as a backstop, by a message count).
//!
//! A sender acquires as many permits from a semaphore as the batch occupies in memory
//! (`RecordBatch::get_array_memory_size`, capped at the budget so one oversized batch can still
//! pass alone); the permits travel with the message and are released when the receiver takes it. A
//! full channel therefore blocks the sender: that is backpressure, and the time it waits is
//! recorded as the stage's backpressured time. A shared [`BufferGauge`] tracks the bytes buffered
//! now and their peak, across all channels into a stage.
//!
//! Control messages (barriers, end of input) occupy no bytes and flow in order with the data.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// A checkpoint barrier: everything before it belongs to checkpoint `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The region's checkpoint id.
    pub id: u64,
    /// What the checkpoint is for.
    pub kind: BarrierKind,
}

/// Why a checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierKind {
    /// A periodic checkpoint; the tasks go on.
    Checkpoint,
    /// The input is exhausted: operators flush (`finish`), the region is done for good.
    EndOfInput,
    /// A requested stop: the tasks stop after it; a rerun resumes from this checkpoint.
    Stop,
}

impl Barrier {
    /// Whether the tasks stop after this barrier.
    pub fn is_last(&self) -> bool {
        self.kind != BarrierKind::Checkpoint
    }
}

/// What flows on an edge.
#[derive(Debug, Clone)]
pub enum Message {
    /// Data.
    Batch(RecordBatch),
    /// A checkpoint barrier.
    Barrier(Barrier),
}

/// Bytes buffered in a set of channels: now and at peak.
#[derive(Debug, Default)]
pub struct BufferGauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl BufferGauge {
    /// Bytes buffered now.
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
    /// The most bytes ever buffered at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    fn add(&self, bytes: u64) {
        let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, bytes: u64) {
        self.now.fetch_sub(bytes, Ordering::Relaxed);
    }
}

struct Envelope {
    message: Message,
    bytes: u64,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The sending half.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::Sender<Envelope>,
    budget: Arc<Semaphore>,
    capacity: u32,
    gauge: Arc<BufferGauge>,
}

/// The receiving half.
pub struct Receiver {
    rx: mpsc::Receiver<Envelope>,
    gauge: Arc<BufferGauge>,
    /// Messages taken off the queue early to look for a barrier (see [`Receiver::overtake`]);
    /// they keep their bytes of the budget until they are received.
    ahead: std::collections::VecDeque<Envelope>,
}

/// A batch that a barrier overtook: it still holds its bytes of the channel's budget (so the
/// sender stays backpressured) until it is dropped.
pub struct Held {
    /// The batch.
    pub batch: RecordBatch,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The receiver is gone (its task ended or was aborted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Creates a channel holding at most `budget_bytes` of batches and `max_messages` messages.
pub fn channel(budget_bytes: u64, max_messages: usize, gauge: Arc<BufferGauge>) -> (Sender, Receiver) {
    let capacity = budget_bytes.clamp(1, u32::MAX as u64) as u32;
    let (tx, rx) = mpsc::channel(max_messages.max(1));
    let budget = Arc::new(Semaphore::new(capacity as usize));
    (Sender { tx, budget, capacity, gauge: gauge.clone() }, Receiver { rx, gauge, ahead: Default::default() })
}

impl Sender {
    /// Sends a message, waiting while the channel is full. Returns the time spent waiting.
    pub async fn send(&self, message: Message) -> Result<Duration, Closed> {
        let bytes = match &message {
            Message::Batch(b) => b.get_array_memory_size() as u64,
            Message::Barrier(_) => 0,
        };
        self.send_sized(message, bytes).await
    }

    /// As [`Sender::send`], for a message whose size in bytes the caller has measured already.
    pub async fn send_sized(&self, message: Message, bytes: u64) -> Result<Duration, Closed> {
        let mut waited = Duration::ZERO;
        let permit = if bytes == 0 {
            None
        } else {
            let n = bytes.min(self.capacity as u64) as u32;
            match self.budget.clone().try_acquire_many_owned(n) {
                Ok(p) => Some(p),
                Err(_) => {
                    let start = Instant::now();
                    let p = self.budget.clone().acquire_many_owned(n).await.map_err(|_| Closed)?;
                    waited = start.elapsed();
                    Some(p)
                }
            }
        };
        let envelope = Envelope { message, bytes, _permit: permit };
        // Counted before it is visible to the receiver, which subtracts it.
        self.gauge.add(bytes);
        let start = Instant::now();
        let sent = match self.tx.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
            Err(mpsc::error::TrySendError::Full(envelope)) => {
                let r = self.tx.send(envelope).await.map_err(|_| Closed);
                waited += start.elapsed();
                r
            }
        };
        if sent.is_err() {
            self.gauge.sub(bytes);
        }
        sent.map(|()| waited)
    }

    /// Whether a batch of `bytes` could be sent now without waiting.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.budget.available_permits() as u64 >= bytes.min(self.capacity as u64) && self.tx.capacity() > 0
    }
}

impl Receiver {
    /// Receives the next message; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Message>> {
        if let Some(e) = self.ahead.pop_front() {
            self.gauge.sub(e.bytes);
            return std::task::Poll::Ready(Some(e.message));
        }
        self.rx.poll_recv(cx).map(|e| {
            e.map(|e| {
                self.gauge.sub(e.bytes);
                e.message
            })
        })
    }

    /// Waits until one more message is queued and looks ahead at it (it stays queued, in order,
    /// with its bytes). Never ready once every sender is gone.
    pub fn poll_look_ahead(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(Some(e)) => {
                self.ahead.push_back(e);
                std::task::Poll::Ready(())
            }
            _ => std::task::Poll::Pending,
        }
    }

    /// Unaligned checkpoints: if a periodic or stop barrier is queued, takes it out together with
    /// every batch queued before it (which keep their bytes of the budget until dropped). The end
    /// of the input is never overtaken: everything before it must be processed.
    pub fn overtake(&mut self) -> Option<(Vec<Held>, Barrier)> {
        while let Ok(e) = self.rx.try_recv() {
            self.ahead.push_back(e);
        }
        let at = self.ahead.iter().position(|e| matches!(e.message, Message::Barrier(b) if b.kind != BarrierKind::EndOfInput))?;
        let mut held = Vec::with_capacity(at);
        for e in self.ahead.drain(..=at) {
            self.gauge.sub(e.bytes);
            match e.message {
                Message::Batch(batch) => held.push(Held { batch, _permit: e._permit }),
                Message::Barrier(b) => return Some((held, b)),
            }
        }
        unreachable!("the barrier is within the drained range")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Messages still queued (a region torn down after a failure) give their bytes back.
        self.rx.close();
        for e in self.ahead.drain(..) {
            self.gauge.sub(e.bytes);
        }
        while let Ok(e) = self.rx.try_recv() {
            self.gauge.sub(e.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};
    use std::sync::Arc;

    fn batch(rows: i64) -> RecordBatch {
        let a: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows));
        RecordBatch::try_from_iter([("id", a)]).unwrap()
    }

    #[tokio::test]
    async fn a_full_channel_blocks_until_the_receiver_takes() {
        let b = batch(1000);
        let size = b.get_array_memory_size() as u64;
        let gauge = Arc::new(BufferGauge::default());
        let (tx, mut rx) = channel(size * 2, 100, gauge.clone());
        tx.send(Message::Batch(b.clone())).await.unwrap();
        tx.send(Message::Batch(b.clone())).await.unwrap();
        assert!(!tx.has_room(size));
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(Message::Batch(b.clone()))).await;
        assert!(blocked.is_err(), "third batch must wait for room");
        assert_eq!(gauge.now(), size * 2);
        rx.recv().await.unwrap();
        tx.send(Message::Batch(b)).await.unwrap();
        assert_eq!(gauge.peak(), size * 2);
    }

    #[tokio::test]
    async fn an_oversized_batch_passes_alone() {
        let b = batch(10_000);
        let gauge = Arc::new(BufferGauge::default());
        let (tx, mut rx) = channel(100, 10, gauge);
        tx.send(Message::Batch(b)).await.unwrap();
        assert!(matches!(rx.recv().await, Some(Message::Batch(_))));
    }

    #[tokio::test]
    async fn send_fails_once_the_receiver_is_dropped() {
        let gauge = Arc::new(BufferGauge::default());
        let (tx, rx) = channel(1 << 20, 10, gauge);
        drop(rx);
        assert_eq!(tx.send(Message::Barrier(Barrier { id: 1, kind: BarrierKind::Checkpoint })).await, Err(Closed));
    }

    #[tokio::test]
    async fn a_barrier_overtakes_the_batches_before_it_which_keep_their_bytes() {
        let b = batch(1000);
        let size = b.get_array_memory_size() as u64;
        let gauge = Arc::new(BufferGauge::default());
        let (tx, mut rx) = channel(size * 2, 100, gauge);
        let bar = |id, kind| Message::Barrier(Barrier { id, kind });
        assert!(rx.overtake().is_none(), "nothing queued");
        tx.send(Message::Batch(b.clone())).await.unwrap();
        tx.send(bar(1, BarrierKind::Checkpoint)).await.unwrap();
        tx.send(Message::Batch(b.clone())).await.unwrap();
        let (held, barrier) = rx.overtake().unwrap();
        assert_eq!((held.len(), barrier.id), (1, 1));
        // The overtaken batch still holds its bytes: the channel is full until it is dropped.
        assert!(!tx.has_room(size));
        drop(held);
        assert!(tx.has_room(size));
        // What came after the barrier is received as usual; the end of input is never overtaken.
        tx.send(bar(2, BarrierKind::EndOfInput)).await.unwrap();
        assert!(rx.overtake().is_none());
        assert!(matches!(rx.recv().await, Some(Message::Batch(_))));
        assert!(matches!(rx.recv().await, Some(Message::Barrier(Barrier { id: 2, .. }))));
    }
}
