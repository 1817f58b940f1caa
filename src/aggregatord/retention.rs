//! Deletes readings older than `storage.retention`, rollup rows older than
//! their tier's `storage.rollups`, and the oldest readings while the chunks
//! take more than `storage.max_size`, a bounded number at a time, so that a
//! first run over a large history never stalls ingest. Raw readings going
//! never takes their rollups with them: those have their own time.
//! It knows nothing of the layout and never touches alerts or rejected messages:
//! `Store::expire` picks which readings go, and frees segments nothing points at.

use super::metrics::Metrics;
use crate::contract::Timestamp;
use crate::store::{Store, StoreError, Tier};
use anyhow::Context;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Readings deleted per step; between steps ingest gets the storage back.
const STEP: usize = 1000;
/// How often readings past `storage.retention` are looked for.
const EVERY: Duration = Duration::from_secs(60);
/// How often the disk budget is checked (a look at the segment files' sizes).
const BUDGET_EVERY: Duration = Duration::from_secs(5);
/// Budget rounds per check, each deleting a sixteenth of the history's span.
const BUDGET_ROUNDS: usize = 64;

/// What to delete: by age, by size, or both.
pub struct Policy {
    /// `storage.retention`.
    pub keep: Option<Duration>,
    /// `storage.max_size`, in bytes.
    pub max_bytes: Option<u64>,
    /// `storage.rollups`: the tiers not kept for ever, and for how long.
    pub tiers: Vec<(Tier, Duration)>,
}

impl Policy {
    /// Whether there is anything to delete, ever.
    pub fn deletes(&self) -> bool {
        self.keep.is_some() || self.max_bytes.is_some() || !self.tiers.is_empty()
    }
}

pub async fn run(
    store: Store,
    policy: Policy,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut by_age = tokio::time::interval(EVERY);
    let mut by_size = tokio::time::interval(BUDGET_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = by_age.tick(), if policy.keep.is_some() || !policy.tiers.is_empty() => {
                if let Some(keep) = policy.keep {
                    expire_older_than(&store, keep, &stop).await;
                }
                for &(tier, keep) in &policy.tiers {
                    expire_tier(&store, tier, keep, &stop).await;
                }
            }
            _ = by_size.tick(), if policy.max_bytes.is_some() => {
                if let Some(max) = policy.max_bytes {
                    keep_under(&store, max, &metrics, &stop).await;
                }
            }
        }
    }
}

/// Deletes what is older than `keep`, in steps.
async fn expire_older_than(store: &Store, keep: Duration, stop: &CancellationToken) {
    let Some(cutoff) = ago(keep) else {
        return; // Nothing can be that old.
    };
    match expire(store, cutoff, stop).await {
        Ok(0) => {}
        Ok(deleted) => info!(deleted, before = %cutoff, "retention: old readings deleted"),
        Err(e) => warn!(error = %format!("{e:#}"), "retention: deleting old readings failed"),
    }
}

/// Deletes a tier's rows older than `keep`, in steps.
async fn expire_tier(store: &Store, tier: Tier, keep: Duration, stop: &CancellationToken) {
    let Some(cutoff) = ago(keep) else {
        return;
    };
    match in_steps(store, stop, move |s| s.expire_rollups(tier, cutoff, STEP)).await {
        Ok(0) => {}
        Ok(rows) => {
            info!(rows, tier = %tier, before = %cutoff, "retention: old rollup rows deleted");
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), tier = %tier, "retention: deleting old rollup rows failed");
        }
    }
}

/// The time `keep` ago, if there is one (config validation bounds `keep`
/// to 100 years).
fn ago(keep: Duration) -> Option<Timestamp> {
    let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
    Timestamp::now_millis()
        .0
        .checked_sub_signed(keep)
        .map(Timestamp)
}

/// Storage work, off the runtime's thread; a panic in it is an error too.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .context("storage task panicked")??)
}

/// Deletes everything before `cutoff`, `STEP` readings at a time; how many.
async fn expire(
    store: &Store,
    cutoff: Timestamp,
    stop: &CancellationToken,
) -> anyhow::Result<usize> {
    in_steps(store, stop, move |s| {
        let n = s.expire(cutoff, STEP)?;
        s.flush()?;
        Ok(n)
    })
    .await
}

/// Runs `step` (which deletes about `STEP` things) off the runtime's thread
/// until a step deletes fewer, or we stop; between steps ingest gets the
/// storage back. How many in all.
async fn in_steps(
    store: &Store,
    stop: &CancellationToken,
    step: impl Fn(&Store) -> Result<usize, StoreError> + Clone + Send + 'static,
) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let (s, step) = (store.clone(), step.clone());
        let n = blocking(move || step(&s)).await?;
        total += n;
        // Fewer than asked: nothing older is left. (Whole chunks and rollup
        // entries go at once, so a step may delete a few more than asked.)
        if n < STEP || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// While the chunks take more than `max` bytes: deletes the oldest
/// sixteenth of the history's span, and frees what nothing points at.
async fn keep_under(store: &Store, max: u64, metrics: &Metrics, stop: &CancellationToken) {
    let (mut deleted, mut before) = (0, None);
    let result = shrink(store, max, stop, &mut deleted, &mut before).await;
    if deleted > 0 {
        metrics
            .budget_deleted
            .fetch_add(u64::try_from(deleted).unwrap_or(u64::MAX), Relaxed);
        if let Some(before) = before {
            warn!(deleted, before = %before, max_size = %bytesize::ByteSize::b(max), "storage.max_size reached: the oldest readings deleted");
        }
    }
    if let Err(e) = result {
        warn!(error = %format!("{e:#}"), "storage.max_size: deleting the oldest readings failed");
    }
}

/// [`keep_under`]'s rounds; `deleted` and `before` say how far they got,
/// failed or not.
async fn shrink(
    store: &Store,
    max: u64,
    stop: &CancellationToken,
    deleted: &mut usize,
    before: &mut Option<Timestamp>,
) -> anyhow::Result<()> {
    // Segments of an eighth of the budget: freed whole, so the budget is
    // kept to within that. Set at each check: a reopened store forgets it.
    let segment = (max / 8).clamp(16 * 1024, 64 * 1024 * 1024);
    for _ in 0..BUDGET_ROUNDS {
        if stop.is_cancelled() {
            break;
        }
        let s = store.clone();
        let over = blocking(move || {
            s.set_segment_size(segment)?;
            let size = s.chunk_bytes()?;
            if size <= max {
                return Ok(None);
            }
            let Some(oldest) = s.oldest()? else {
                return Ok(None);
            };
            let span = Timestamp::now_millis()
                .micros()
                .saturating_sub(oldest.micros());
            let cutoff = Timestamp::from_micros(oldest.micros().saturating_add(span / 16 + 1))
                .unwrap_or(oldest);
            Ok(Some((size, cutoff)))
        })
        .await?;
        let Some((size, cutoff)) = over else {
            break;
        };
        *deleted += expire(store, cutoff, stop).await?;
        *before = Some(cutoff);
        // Make the deletions durable, which frees emptied segments; if that
        // freed nothing, the oldest are in the segment still appended to:
        // close it, so the next round can free it.
        let s = store.clone();
        blocking(move || {
            s.checkpoint()?;
            if s.chunk_bytes()? >= size {
                s.seal_segment()?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Reading;
    use crate::store::{Query, StoredReading};

    /// 100,000 readings over the past day, a budget well below what they
    /// take: the oldest go, the chunks end within a segment of the budget,
    /// every reading kept is newer than every one deleted, and the count
    /// deleted is the metric's.
    #[tokio::test]
    async fn the_oldest_go_until_the_chunks_are_under_the_budget() {
        const N: i64 = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // As a store that ran under this budget has them (see keep_under).
        store.set_segment_size(16 * 1024).unwrap();
        let now = Timestamp::now_millis().micros();
        let mut w = store.reading_writer().unwrap();
        for i in 0..N {
            let topic = format!("building/floor1/room101/temperature/t{}", i % 10);
            let ts = Timestamp::from_micros(now - 86_400_000_000 + i * 860_000).unwrap();
            w.insert(&StoredReading {
                topic: topic.clone(),
                reading: Reading {
                    sensor_id: topic.rsplit('/').next().unwrap().to_owned(),
                    sensor_type: "temperature".into(),
                    value: 20.0 + (i % 97) as f64 / 10.0,
                    unit: "celsius".into(),
                    timestamp: ts,
                    seq: Some(i.cast_unsigned()),
                },
                received_at: ts,
                qos: 1,
            })
            .unwrap();
            // Batches as ingest writes them: chunks are sealed in time order.
            if i % 100 == 99 {
                std::mem::replace(&mut w, store.reading_writer().unwrap())
                    .finish()
                    .unwrap();
            }
        }
        w.finish().unwrap();
        store.checkpoint().unwrap();
        let max = 128 * 1024;
        assert!(store.chunk_bytes().unwrap() > 2 * max);
        let metrics = Metrics::default();
        keep_under(&store, max, &metrics, &CancellationToken::new()).await;
        let size = store.chunk_bytes().unwrap();
        assert!(size <= max, "{size} bytes of chunks for a budget of {max}");
        let kept: Vec<i64> = store
            .select(&Query::default())
            .map(|r| r.unwrap().reading.seq.unwrap().cast_signed())
            .collect();
        let deleted = N - i64::try_from(kept.len()).unwrap();
        assert!(deleted > 0);
        assert_eq!(
            metrics.budget_deleted.load(Relaxed),
            deleted.cast_unsigned()
        );
        // Seq follows time here: what is kept is the newest.
        assert_eq!(kept.iter().min(), Some(&deleted));
        assert!(kept.contains(&(N - 1)));
    }
}
