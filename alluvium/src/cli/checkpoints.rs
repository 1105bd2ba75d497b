//! `alluvium checkpoints list|show JOB`: what a job's checkpoint location holds, read-only.
//!
//! `list` prints one line per region: its latest checkpoint, epoch (restarts), when it was taken,
//! whether the region is finished, the commits still pending and the splits still open. `show`
//! prints a region's manifest as JSON (the latest, or `--checkpoint N` while it is kept).

use super::rfc3339_ms;
use alluvium::core::checkpoint::CheckpointStore;
use alluvium::{Error, Result};

async fn meta(store: &CheckpointStore) -> Result<alluvium::core::checkpoint::PipelineMeta> {
    store.pipeline_meta().await?.ok_or_else(|| {
        Error::config(format!("no checkpoints in {}: the job has not run with this checkpoint location yet", store.display()))
    })
}

/// Prints the regions' latest checkpoints.
pub async fn list(store: &CheckpointStore) -> Result<()> {
    let meta = meta(store).await?;
    println!("checkpoints of job `{}` in {}", meta.pipeline, store.display());
    println!("  instance {}, {} region(s), topology {}", meta.instance, meta.regions, meta.topology);
    println!(
        "  {:<7} {:>11} {:>6}  {:<21} {:<9} {:>8} {:>11}  kept",
        "region", "checkpoint", "epoch", "taken", "state", "pending", "open splits"
    );
    for region in 0..meta.regions {
        let ids = store.manifest_ids(region).await?;
        let Some(m) = store.latest(&meta.pipeline, region).await? else {
            println!("  {region:<7} {:>11}", "none yet");
            continue;
        };
        let open: usize = m.readers.iter().map(|r| r.splits.len()).sum();
        let pending: usize = m.pending.iter().map(|p| p.sink.len() + p.dead_letters.len()).sum();
        let kept = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        println!(
            "  {region:<7} {:>11} {:>6}  {:<21} {:<9} {:>8} {:>11}  {kept}",
            m.checkpoint,
            m.epoch,
            rfc3339_ms(m.created_at_ms),
            if m.is_final { "finished" } else { "running" },
            pending,
            open
        );
    }
    Ok(())
}

/// Prints the manifests of `region` (all regions when `None`) at `checkpoint` (the latest when `None`).
pub async fn show(store: &CheckpointStore, region: Option<usize>, checkpoint: Option<u64>) -> Result<()> {
    let meta = meta(store).await?;
    let regions: Vec<usize> = match region {
        Some(r) if r >= meta.regions => {
            return Err(Error::config(format!("--region {r}: job `{}` has regions 0 to {}", meta.pipeline, meta.regions - 1)))
        }
        Some(r) => vec![r],
        None => (0..meta.regions).collect(),
    };
    for r in regions {
        let m = match checkpoint {
            None => store.latest(&meta.pipeline, r).await?,
            Some(c) => match store.manifest(r, c).await? {
                Some(m) => Some(m),
                None => {
                    let kept = store.manifest_ids(r).await?;
                    return Err(Error::config(format!(
                        "--checkpoint {c}: region {r} keeps checkpoints {kept:?} only (older ones are pruned)"
                    )));
                }
            },
        };
        match m {
            Some(m) => println!("{}", serde_json::to_string_pretty(&m).expect("serializable")),
            None => println!("{{\"region\": {r}, \"checkpoint\": null}}"),
        }
    }
    Ok(())
}
