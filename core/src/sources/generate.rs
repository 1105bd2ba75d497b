//! `generate`: a deterministic synthetic source (ids and payloads) for tests, benchmarks and demos.
//!
//! Rows `0..rows` are cut into splits of `split_rows` ids; each row has an `id` (Int64) and a
//! `payload` (Utf8) that depends only on the id and the seed, so any run can be checked against
//! any other, row by row. An optional rate limit (rows per second per reader) makes it behave
//! like a live feed.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::{Discovery, Source, Split, SplitEnumerator, SplitReader, State};

/// The generate source. See the module docs.
#[derive(Debug, Clone)]
pub struct Generate {
    rows: u64,
    batch_size: usize,
    payload_bytes: usize,
    split_rows: u64,
    rows_per_second: Option<f64>,
    seed: u64,
    splits_per_discovery: usize,
}

impl Generate {
    /// `rows` rows, in batches of 8192, 32-byte payloads, splits of 100,000 rows, no rate limit.
    pub fn new(rows: u64) -> Self {
        Self {
            rows,
            batch_size: 8192,
            payload_bytes: 32,
            split_rows: 100_000,
            rows_per_second: None,
            seed: 0,
            splits_per_discovery: 1000,
        }
    }
    /// Splits found per discovery (1000); fewer make more, smaller split assignments, as a
    /// source that finds its input bit by bit does.
    pub fn splits_per_discovery(mut self, n: usize) -> Self {
        self.splits_per_discovery = n.max(1);
        self
    }
    /// Rows per batch.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Bytes of payload per row.
    pub fn payload_bytes(mut self, n: usize) -> Self {
        self.payload_bytes = n;
        self
    }
    /// Rows per split.
    pub fn split_rows(mut self, n: u64) -> Self {
        self.split_rows = n;
        self
    }
    /// Limits each reader to this many rows per second.
    pub fn rows_per_second(mut self, rate: f64) -> Self {
        self.rows_per_second = Some(rate);
        self
    }
    /// Changes the payloads.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The payload of row `id`, as this source generates it.
    pub fn payload(&self, id: u64) -> String {
        payload(self.seed, id, self.payload_bytes)
    }

    fn batch(&self, from: u64, to: u64) -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values((from..to).map(|i| i as i64)));
        let mut p = StringBuilder::with_capacity((to - from) as usize, (to - from) as usize * self.payload_bytes);
        let mut buf = String::with_capacity(self.payload_bytes);
        for id in from..to {
            buf.clear();
            write_payload(&mut buf, self.seed, id, self.payload_bytes);
            p.append_value(&buf);
        }
        RecordBatch::try_new(self.schema(), vec![ids, Arc::new(p.finish())]).expect("schema matches")
    }
}

fn write_payload(buf: &mut String, seed: u64, id: u64, len: usize) {
    use std::fmt::Write;
    let mut x = seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = write!(buf, "{x:016x}");
    }
    buf.truncate(len);
}

fn payload(seed: u64, id: u64, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    write_payload(&mut s, seed, id, len);
    s
}

#[derive(Serialize, Deserialize)]
struct Range {
    start: u64,
    end: u64,
}

#[async_trait]
impl Source for Generate {
    fn name(&self) -> String {
        "generate".into()
    }

    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("payload", DataType::Utf8, false)]))
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::config("generate: `batch_size` is 0; set it to 1 or more (8192 is a good default)"));
        }
        if self.split_rows == 0 {
            return Err(Error::config("generate: `split_rows` is 0; set it to 1 or more"));
        }
        if let Some(r) = self.rows_per_second {
            if r.is_nan() || r <= 0.0 {
                return Err(Error::config(format!("generate: `rows_per_second` is {r}; set a positive rate or remove it")));
            }
        }
        Ok(())
    }

    async fn enumerator(&self, restored: Option<State>) -> Result<Box<dyn SplitEnumerator>> {
        let next = restored.and_then(|s| s.get("next").and_then(|v| v.as_u64())).unwrap_or(0);
        Ok(Box::new(GenerateEnumerator {
            next,
            rows: self.rows,
            split_rows: self.split_rows,
            per_discovery: self.splits_per_discovery,
        }))
    }

    async fn open(&self, split: &Split, position: Option<&State>) -> Result<Box<dyn SplitReader>> {
        let range: Range = serde_json::from_value(split.payload.clone())
            .map_err(|e| Error::checkpoint(format!("generate: split `{}` is malformed: {e}", split.id)))?;
        let next = position.and_then(|p| p.get("next").and_then(|v| v.as_u64())).unwrap_or(range.start);
        Ok(Box::new(GenerateReader { source: self.clone(), next, end: range.end, ready_at: None }))
    }
}

struct GenerateEnumerator {
    next: u64,
    rows: u64,
    split_rows: u64,
    per_discovery: usize,
}

#[async_trait]
impl SplitEnumerator for GenerateEnumerator {
    async fn discover(&mut self) -> Result<Discovery> {
        if self.next >= self.rows {
            return Ok(Discovery::Exhausted);
        }
        let mut splits = Vec::new();
        while self.next < self.rows && splits.len() < self.per_discovery {
            let end = (self.next + self.split_rows).min(self.rows);
            splits.push(Split {
                id: format!("ids-{}-{end}", self.next),
                payload: serde_json::json!({"start": self.next, "end": end}),
            });
            self.next = end;
        }
        Ok(Discovery::Splits(splits))
    }

    fn snapshot(&self) -> State {
        serde_json::json!({ "next": self.next })
    }
}

struct GenerateReader {
    source: Generate,
    next: u64,
    end: u64,
    ready_at: Option<tokio::time::Instant>,
}

#[async_trait]
impl SplitReader for GenerateReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.next >= self.end {
            return Ok(None);
        }
        if let Some(at) = self.ready_at {
            tokio::time::sleep_until(at).await;
        }
        let to = (self.next + self.source.batch_size as u64).min(self.end);
        let batch = self.source.batch(self.next, to);
        if let Some(rate) = self.source.rows_per_second {
            let base =
                self.ready_at.unwrap_or_else(tokio::time::Instant::now).max(tokio::time::Instant::now() - Duration::from_secs(1));
            self.ready_at = Some(base + Duration::from_secs_f64((to - self.next) as f64 / rate));
        }
        self.next = to;
        Ok(Some(batch))
    }

    fn position(&self) -> State {
        serde_json::json!({ "next": self.next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_cover_every_id_once_and_resume_mid_split() {
        let g = Generate::new(25).batch_size(4).split_rows(10);
        let mut e = g.enumerator(None).await.unwrap();
        let Discovery::Splits(splits) = e.discover().await.unwrap() else { panic!() };
        assert_eq!(splits.len(), 3);
        assert!(matches!(e.discover().await.unwrap(), Discovery::Exhausted));
        let mut ids = Vec::new();
        for s in &splits {
            let mut r = g.open(s, None).await.unwrap();
            let first = r.next_batch().await.unwrap().unwrap();
            ids.extend(first.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().iter().copied());
            // Resume the rest from the position, as after a restore.
            let mut r = g.open(s, Some(&r.position())).await.unwrap();
            while let Some(b) = r.next_batch().await.unwrap() {
                ids.extend(b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().iter().copied());
            }
        }
        assert_eq!(ids, (0..25).collect::<Vec<i64>>());
        assert_eq!(g.payload(7), payload(0, 7, 32));
        assert_ne!(g.payload(7), g.payload(8));
    }
}
