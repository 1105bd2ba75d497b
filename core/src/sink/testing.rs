//! A conformance kit for sink authors: drive a [`Sink`] through the two-phase protocol the way the
//! runtime does (writers, `prepare` at a barrier, `commit` after the manifest, replays after a
//! crash), without a pipeline around it. Every lake sink's tests use it; so can yours.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::{Committable, Sink, SinkContext};
use crate::error::Result;

/// The context of `region`'s writer `sink-0` in `epoch`, for pipeline `pipeline` (its instance id
/// is a hash of the name, so two pipelines of a test never share file names, as in real runs).
pub fn context(pipeline: &str, region: usize, epoch: u64) -> SinkContext {
    let hash = pipeline.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    SinkContext { pipeline: pipeline.to_string(), instance: format!("{hash:016x}"), region, epoch, writer: "sink-0".into() }
}

/// Rows `ids` with columns `id: Int64` and `payload: Utf8` (`"row-ID"`).
pub fn id_batch(ids: std::ops::Range<i64>) -> RecordBatch {
    let schema = Schema::new(vec![Field::new("id", DataType::Int64, false), Field::new("payload", DataType::Utf8, true)]);
    let payload: StringArray = ids.clone().map(|i| Some(format!("row-{i}"))).collect();
    RecordBatch::try_new(Arc::new(schema), vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(payload)])
        .expect("valid batch")
}

/// Writes `batches` with a fresh writer of `ctx` (named `sink-CHECKPOINT`, so that file names stay
/// unique as they do in the runtime, where a writer lives for a whole epoch) and prepares checkpoint
/// `checkpoint`.
pub async fn prepare(sink: &dyn Sink, ctx: &SinkContext, checkpoint: u64, batches: Vec<RecordBatch>) -> Result<Vec<Committable>> {
    let ctx = SinkContext { writer: format!("sink-{checkpoint}"), ..ctx.clone() };
    let mut w = sink.writer(&ctx).await?;
    for b in batches {
        w.write(b).await?;
    }
    Ok(w.prepare(checkpoint).await?.into_iter().collect())
}

/// [`prepare`], then commits like the runtime does once the checkpoint is durable.
pub async fn write_and_commit(
    sink: &dyn Sink,
    ctx: &SinkContext,
    checkpoint: u64,
    batches: Vec<RecordBatch>,
) -> Result<Vec<Committable>> {
    let c = prepare(sink, ctx, checkpoint, batches).await?;
    let commit_ctx = SinkContext { writer: String::new(), ..ctx.clone() };
    sink.commit(&commit_ctx, checkpoint, &c).await?;
    Ok(c)
}

/// Regions `0..regions` concurrently commit checkpoints `1..=checkpoints`, each of `rows` rows with
/// ids unique over the whole run, then every commit is replayed (as after a crash between
/// commit and manifest). Returns the number of rows written: a table must hold exactly these ids.
pub async fn concurrent_regions(sink: Arc<dyn Sink>, pipeline: &str, regions: usize, checkpoints: u64, rows: i64) -> Result<i64> {
    let mut tasks = tokio::task::JoinSet::new();
    for region in 0..regions {
        let sink = sink.clone();
        let pipeline = pipeline.to_string();
        tasks.spawn(async move {
            let ctx = context(&pipeline, region, 1);
            let mut done = Vec::new();
            for cp in 1..=checkpoints {
                let first = ((region as i64) * checkpoints as i64 + cp as i64 - 1) * rows;
                done.push((cp, write_and_commit(sink.as_ref(), &ctx, cp, vec![id_batch(first..first + rows)]).await?));
            }
            let commit_ctx = SinkContext { writer: String::new(), ..ctx };
            for (cp, c) in done {
                sink.commit(&commit_ctx, cp, &c).await?;
            }
            Ok::<_, crate::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| crate::Error::internal(format!("a region task panicked: {e}")))??;
    }
    Ok(regions as i64 * checkpoints as i64 * rows)
}
