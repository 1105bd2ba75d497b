//! Commits of completed checkpoints, in checkpoint order, and what happens when the table or its
//! catalog keeps failing.
//!
//! A commit that fails with a retryable error is tried again a few times at once (0.4 s to 3.2 s
//! apart). If it still fails because the table (or its catalog) cannot be reached
//! ([`is_unreachable`](crate::error::is_unreachable): refused connections, timeouts, 5xx, 429),
//! it is taken to be **down**: the commit waits
//! and is tried again, spaced from 1 s doubling up to 30 s, for as long as
//! [`Settings::outage_timeout`](crate::pipeline::Settings::outage_timeout) (10
//! minutes). Nothing is dropped and nothing becomes a dead letter: the checkpoint is durable before
//! its commit starts, so its rows wait with it. The region's tasks go on until backpressure holds
//! them; its next checkpoint waits for the commit. The log says so when the wait starts, every
//! 30 s, and when the table answers again; `/metrics` and the progress line list the sink as
//! waiting ([`service_status`](crate::service::service_status)).
//!
//! Past the timeout, or when a stop is asked for meanwhile, the region stops with an error that
//! says what is pending; the next run commits it first (sinks' commits are idempotent by
//! checkpoint).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::region::RunContext;
use crate::checkpoint::PendingCommit;
use crate::error::{redact, Error, Result};
use crate::service::{ServiceStatus, WaitSource, Waiting};
use crate::sink::SinkContext;

/// Quick retries before the table is taken to be down.
const QUICK_RETRIES: u32 = 4;
const MAX_WAIT: Duration = Duration::from_secs(30);
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// The sink's commits that wait on its table, for [`service_status`](crate::service::service_status).
pub(crate) struct CommitWaits {
    pipeline: String,
    sink: String,
    /// Since when (wall clock, monotonic) and the last failure, while some region waits.
    waiting: Mutex<Option<(SystemTime, Instant, String)>>,
    /// The wait outlasted the timeout: commits that fail again fail at once (a region restart
    /// does not wait all over again), until one succeeds.
    gave_up: Mutex<Option<String>>,
}

impl CommitWaits {
    pub(crate) fn new(pipeline: &str, sink: &str) -> Arc<Self> {
        let me =
            Arc::new(Self { pipeline: pipeline.into(), sink: sink.into(), waiting: Mutex::new(None), gave_up: Mutex::new(None) });
        let weak: Weak<dyn WaitSource> = Arc::downgrade(&(me.clone() as Arc<dyn WaitSource>));
        crate::service::register_wait_source(weak);
        me
    }

    fn gave_up(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.gave_up.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, failure: Option<&str>) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match (failure, w.as_mut()) {
            (Some(f), Some((_, _, last))) => *last = f.to_string(),
            (Some(f), None) => *w = Some((SystemTime::now(), Instant::now(), f.to_string())),
            (None, _) => *w = None,
        }
    }
}

impl WaitSource for CommitWaits {
    fn status(&self) -> Vec<ServiceStatus> {
        let w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        vec![ServiceStatus {
            pipeline: self.pipeline.clone(),
            stage: self.sink.clone(),
            service: "table commits".into(),
            endpoint: None,
            waiting: w.as_ref().map(|(since, at, last)| Waiting {
                since: *since,
                waited: at.elapsed(),
                last_failure: last.clone(),
                probes: 0,
                gave_up: false,
            }),
        }]
    }
}

/// Commits pending committables in checkpoint order, waiting while the table fails (see the
/// module docs). `recovery`: re-commits of a restored manifest (possibly visible already) are
/// counted apart.
pub(crate) async fn commit_pending(
    run: &RunContext,
    ctx: &SinkContext,
    pending: &mut Vec<PendingCommit>,
    recovery: bool,
) -> Result<()> {
    while let Some(pc) = pending.first() {
        let start = Instant::now();
        commit_one(run, ctx, pc).await?;
        let p = &run.metrics.pipeline;
        let rows: u64 = pc.sink.iter().map(|c| c.rows).sum();
        if recovery {
            p.rows_recommitted.fetch_add(rows, Ordering::Relaxed);
        } else {
            p.commits.fetch_add(1, Ordering::Relaxed);
            p.commit_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            p.rows_committed.fetch_add(rows, Ordering::Relaxed);
            p.dead_letters_committed.fetch_add(pc.dead_letters.iter().map(|c| c.rows).sum(), Ordering::Relaxed);
        }
        pending.remove(0);
    }
    Ok(())
}

/// One checkpoint's commit (the sink's, then the dead letters'), tried until it succeeds, fails
/// for good, or the table has been failing longer than the timeout.
async fn commit_one(run: &RunContext, ctx: &SinkContext, pc: &PendingCommit) -> Result<()> {
    let plan = &run.plan;
    let sink = plan.sink.name();
    let timeout = plan.settings.outage_timeout;
    let (mut attempt, mut down): (u32, Option<(SystemTime, Instant, Instant)>) = (0, None);
    loop {
        let r = async {
            if !pc.sink.is_empty() {
                crate::ops::crash_point("before-commit");
                plan.sink.commit(ctx, pc.checkpoint, &pc.sink).await?;
                crate::ops::crash_point("after-commit");
            }
            if !pc.dead_letters.is_empty() {
                plan.dead_letters.commit(ctx, pc.checkpoint, &pc.dead_letters).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        let e = match r {
            Ok(()) => {
                *run.commit_waits.gave_up() = None;
                if let Some((_, at, _)) = down {
                    run.commit_waits.set(None);
                    tracing::info!(
                        region = ctx.region,
                        checkpoint = pc.checkpoint,
                        "the table of sink `{sink}` answers \
                        again after {}: its commits go on",
                        seconds(at.elapsed())
                    );
                }
                return Ok(());
            }
            Err(e) if e.is_retryable() => e,
            Err(e) => return Err(e.context(format!("committing region {} checkpoint {}", ctx.region, pc.checkpoint))),
        };
        attempt += 1;
        // Only a table that cannot be reached is waited for; a commit it refuses (a full disk, a
        // conflict that keeps coming back) fails the region after the quick retries, as before.
        if attempt > QUICK_RETRIES && !crate::error::is_unreachable(&e) {
            return Err(e.context(format!("committing region {} checkpoint {}", ctx.region, pc.checkpoint)));
        }
        let failure = redact(&e.to_string());
        if let Some(why) = run.commit_waits.gave_up().clone() {
            return Err(Error::external(format!("{why} (and again: {failure})")).with_retryable(false));
        }
        if attempt <= QUICK_RETRIES {
            tracing::warn!(region = ctx.region, checkpoint = pc.checkpoint, error = %failure, "commit failed; retrying");
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
            continue;
        }
        let now = Instant::now();
        let (since, at, reminded) = down.get_or_insert_with(|| {
            tracing::warn!(
                region = ctx.region,
                checkpoint = pc.checkpoint,
                outage_timeout = %humantime::format_duration(timeout),
                error = %failure,
                "the commits of sink `{sink}` are waiting on its table: it keeps failing; the checkpoint is durable and \
                 nothing is dropped, and the commit is tried again until the table answers"
            );
            (SystemTime::now(), now, now)
        });
        run.commit_waits.set(Some(&failure));
        let waited = now.duration_since(*at);
        let pending_note = format!(
            "region {} checkpoint {} is durable but not committed; the next run commits it first",
            ctx.region, pc.checkpoint
        );
        if waited >= timeout {
            run.commit_waits.set(None);
            let why = format!(
                "the commits of sink `{sink}` gave up waiting for its table: it has been failing since {} ({}, longer \
                 than `pipeline.outage_timeout` = {}); last failure: {failure}. Nothing is lost: {pending_note}",
                humantime::format_rfc3339_seconds(*since),
                seconds(waited),
                humantime::format_duration(timeout),
            );
            tracing::error!(region = ctx.region, "{why}");
            *run.commit_waits.gave_up() = Some(why.clone());
            return Err(Error::external(why).with_retryable(false));
        }
        if now.duration_since(*reminded) >= REMIND_EVERY {
            *reminded = now;
            tracing::warn!(region = ctx.region, error = %failure, "the commits of sink `{sink}` are still waiting on its \
                table (for {})", seconds(waited));
        }
        let wait = Duration::from_secs(1u64 << (attempt - QUICK_RETRIES - 1).min(5)).min(MAX_WAIT).min(timeout - waited);
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            _ = super::region::stopped(run.stop.clone()) => {
                run.commit_waits.set(None);
                return Err(Error::external(format!(
                    "stopped while the commits of sink `{sink}` wait for its table (failing since {}: {failure}). \
                     Nothing is lost: {pending_note}",
                    humantime::format_rfc3339_seconds(*since),
                ))
                .with_retryable(false));
            }
        }
    }
}

fn seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}
