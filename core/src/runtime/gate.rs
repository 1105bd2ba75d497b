//! The input side of a task: one or more channels merged, with aligned barriers.
//!
//! When a task has several inputs (after a rebalance edge), a barrier from one input blocks that
//! input until the same barrier has arrived on every other open input; only then is the barrier
//! handed to the task, which snapshots and forwards it. Everything before the barrier on every input
//! is thus in the checkpoint, and nothing after it (aligned checkpoints, as in Flink and Arroyo).

use std::task::Poll;

use crate::channel::{Barrier, Message, Receiver};
use crate::error::{Error, Result};

/// What the task gets next.
#[derive(Debug)]
pub enum Event {
    /// A batch.
    Batch(arrow::record_batch::RecordBatch),
    /// A barrier that arrived on every open input.
    Barrier(Barrier),
    /// All inputs ended.
    End,
}

pub(crate) struct InputGate {
    inputs: Vec<Receiver>,
    blocked: Vec<bool>,
    closed: Vec<bool>,
    pending: Option<Barrier>,
    next: usize,
}

impl InputGate {
    pub(crate) fn new(inputs: Vec<Receiver>) -> Self {
        let n = inputs.len();
        Self { inputs, blocked: vec![false; n], closed: vec![false; n], pending: None, next: 0 }
    }

    /// The next event. Cancel-safe.
    /// Unaligned checkpoints, on a single open input with no barrier being aligned: waits for one
    /// more queued message and then looks for a barrier to overtake the batches before it
    /// ([`Receiver::overtake`]). Never ready on other gates.
    pub(crate) async fn overtake(&mut self) -> Option<(Vec<crate::channel::Held>, Barrier)> {
        if self.inputs.len() != 1 || self.closed[0] || self.pending.is_some() {
            return std::future::pending().await;
        }
        if let Some(found) = self.inputs[0].overtake() {
            return Some(found);
        }
        std::future::poll_fn(|cx| self.inputs[0].poll_look_ahead(cx)).await;
        self.inputs[0].overtake()
    }

    pub(crate) async fn next(&mut self) -> Result<Event> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn aligned(&self) -> bool {
        (0..self.inputs.len()).all(|i| self.blocked[i] || self.closed[i])
    }

    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<Event>> {
        loop {
            if let Some(b) = self.pending {
                if self.aligned() {
                    self.pending = None;
                    self.blocked.iter_mut().for_each(|x| *x = false);
                    return Poll::Ready(Ok(Event::Barrier(b)));
                }
            }
            if self.closed.iter().all(|c| *c) {
                return Poll::Ready(Ok(Event::End));
            }
            let n = self.inputs.len();
            let mut progressed = false;
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.blocked[i] || self.closed[i] {
                    continue;
                }
                match self.inputs[i].poll_recv(cx) {
                    Poll::Pending => continue,
                    Poll::Ready(None) => {
                        self.closed[i] = true;
                        progressed = true;
                        break;
                    }
                    Poll::Ready(Some(Message::Batch(b))) => {
                        self.next = (i + 1) % n;
                        return Poll::Ready(Ok(Event::Batch(b)));
                    }
                    Poll::Ready(Some(Message::Barrier(b))) => {
                        match self.pending {
                            None => self.pending = Some(b),
                            Some(p) if p.id == b.id => {}
                            Some(p) => {
                                return Poll::Ready(Err(Error::internal(format!(
                                    "barrier {} arrived while barrier {} was being aligned",
                                    b.id, p.id
                                ))))
                            }
                        }
                        self.blocked[i] = true;
                        progressed = true;
                        break;
                    }
                }
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{channel, BufferGauge};
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn batch(v: i64) -> Message {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![v]));
        Message::Batch(RecordBatch::try_from_iter([("id", a)]).unwrap())
    }
    fn value(e: Event) -> i64 {
        match e {
            Event::Batch(b) => b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_barrier_waits_for_every_input_and_blocks_the_early_one() {
        let g = Arc::new(BufferGauge::default());
        let (t0, r0) = channel(1 << 20, 16, g.clone());
        let (t1, r1) = channel(1 << 20, 16, g);
        let bar = Barrier { id: 1, kind: crate::channel::BarrierKind::Checkpoint };
        t0.send(batch(1)).await.unwrap();
        t0.send(Message::Barrier(bar)).await.unwrap();
        t0.send(batch(2)).await.unwrap(); // after the barrier on input 0: must not come before it
        t1.send(batch(10)).await.unwrap();
        t1.send(batch(11)).await.unwrap();
        t1.send(Message::Barrier(bar)).await.unwrap();
        let mut gate = InputGate::new(vec![r0, r1]);
        let mut before = Vec::new();
        loop {
            match gate.next().await.unwrap() {
                Event::Barrier(b) => {
                    assert_eq!(b, bar);
                    break;
                }
                e => before.push(value(e)),
            }
        }
        before.sort();
        assert_eq!(before, vec![1, 10, 11]);
        assert_eq!(value(gate.next().await.unwrap()), 2);
        drop((t0, t1));
        assert!(matches!(gate.next().await.unwrap(), Event::End));
    }

    #[tokio::test]
    async fn a_closed_input_does_not_hold_a_barrier_back() {
        let g = Arc::new(BufferGauge::default());
        let (t0, r0) = channel(1 << 20, 16, g.clone());
        let (t1, r1) = channel(1 << 20, 16, g);
        drop(t1);
        t0.send(Message::Barrier(Barrier { id: 3, kind: crate::channel::BarrierKind::EndOfInput })).await.unwrap();
        let mut gate = InputGate::new(vec![r0, r1]);
        assert!(matches!(gate.next().await.unwrap(), Event::Barrier(Barrier { id: 3, .. })));
    }
}
