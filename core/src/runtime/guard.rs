//! The table guard: before any region starts, the sink's own record of this job's commits is
//! compared with the checkpoint store, so that lost checkpoint state stops the job instead of
//! silently losing or doubling rows.
//!
//! A lake sink stores, with every commit, the region's idempotency key and the checkpoint it
//! committed. A region's latest manifest is always at least as new as the checkpoint its table
//! holds (the manifest is written before the commit). When the table holds a later checkpoint
//! than the store, manifests were lost (deleted, restored from an old backup, a location made
//! anew): resuming from an older manifest would read rows again whose checkpoint ids the table
//! already knows — Delta and Iceberg would skip them as committed (loss), Lance would append them
//! again (duplicates). So the run stops with an error that names the table's commit and the
//! missing manifest. Instance ids are derived from the checkpoint location
//! ([`crate::checkpoint::instance_for`]), so a deleted and re-created location is recognised too;
//! only `start_over` gives a new job a fresh id.

use std::collections::BTreeMap;

use crate::checkpoint::CheckpointStore;
use crate::error::{Error, Result};
use crate::pipeline::Plan;
use crate::sink::SinkContext;

/// Fails when the sink holds a later checkpoint of a region than the checkpoint store.
pub(crate) async fn check(plan: &Plan, store: &CheckpointStore, instance: &str) -> Result<()> {
    let regions = plan.regions();
    let keys: Vec<String> = (0..regions)
        .map(|region| {
            SinkContext { pipeline: plan.name.clone(), instance: instance.into(), region, epoch: 0, writer: String::new() }
                .sink_key()
        })
        .collect();
    let committed: BTreeMap<String, u64> = match plan.sink.committed_checkpoints(&keys).await.map_err(|e| {
        e.context(format!("reading which checkpoints sink `{}` holds, to check them against the checkpoints", plan.sink.name()))
    })? {
        Some(c) => c,
        None => return Ok(()),
    };
    for (region, key) in keys.iter().enumerate() {
        let Some(&held) = committed.get(key) else { continue };
        let latest = store.latest(&plan.name, region).await?.map(|m| m.checkpoint);
        if latest.is_some_and(|l| l >= held) {
            continue;
        }
        let missing = match latest {
            Some(l) if l + 1 == held => format!("the manifest of checkpoint {held} (regions/{region}/chk-{held:020}.json)"),
            Some(l) => format!("the manifests of checkpoints {} to {held} (regions/{region}/)", l + 1),
            None => format!("every manifest of region {region} (regions/{region}/)"),
        };
        let store_has = match latest {
            Some(l) => format!("its newest manifest there is checkpoint {l}"),
            None => "it holds no manifest of that region".to_string(),
        };
        return Err(Error::checkpoint(format!(
            "checkpoint state was lost: sink `{}` already holds checkpoint {held} of region {region} of this job (key \
             `{key}`), but {store_has} in the checkpoint location {}; {missing} is missing. Resuming would lose or \
             double rows, so the job stops. Restore the missing manifests from a backup to resume; or, to ingest \
             everything again as a new job (the rows already committed are written again), delete the checkpoint \
             location and rerun with --start-over (`checkpoint.start_over = true`), or write to a new table",
            plan.sink.name(),
            store.display(),
        )));
    }
    Ok(())
}
