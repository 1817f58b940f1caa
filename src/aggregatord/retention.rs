//! Deletes readings older than `storage.retention`, rollup rows older than
//! their tier's `storage.rollups`, and, past `storage.max_size`, the oldest
//! readings (never rollups: see `keep_under`); a bounded number at a time, so that
//! a first run over a large history never stalls ingest. Raw readings going
//! never takes their rollups with them: those have their own time.
//! It also compacts segment files mostly garbage (`Store::compact`).
//! It knows nothing of the layout and never touches alerts or rejected messages:
//! `Store::expire` picks which readings go, and frees segments nothing points at.

use super::metrics::Metrics;
use crate::contract::Timestamp;
use crate::daemon::RateLimit;
use crate::store::{Store, StoreError, Tier, Usage};
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
/// How often the disk budget is checked (a look at the store's file sizes).
const BUDGET_EVERY: Duration = Duration::from_secs(5);
/// Budget rounds per check, each deleting a sixteenth of the history's span.
const BUDGET_ROUNDS: usize = 64;

/// How often segments mostly garbage are looked for.
const COMPACT_EVERY: Duration = Duration::from_secs(60);
/// Frames looked at per compaction step (writers wait for one step).
const COMPACT_STEP: usize = 256;
/// Smaller segments are not worth rewriting (a budget's are an eighth of it).
const COMPACT_MIN: u64 = 256 * 1024;

/// What to delete: by age, by size, or both.
pub struct Policy {
    /// `storage.retention`.
    pub keep: Option<Duration>,
    /// `storage.max_size`, in bytes.
    pub max_bytes: Option<u64>,
    /// `storage.rollups`: the tiers not kept for ever, and for how long.
    pub tiers: Vec<(Tier, Duration)>,
}

impl Policy {}

pub async fn run(
    store: Store,
    policy: Policy,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut by_age = tokio::time::interval(EVERY);
    let mut by_size = tokio::time::interval(BUDGET_EVERY);
    let mut budget = Budget::default();
    let mut compaction = tokio::time::interval(COMPACT_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = compaction.tick() => compact(&store, &stop).await,
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
                    keep_under(&store, max, &metrics, &stop, &mut budget).await;
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

/// Rewrites the chunks still pointed at in segments mostly garbage (old
/// frames of chunks rewritten by late readings, or trimmed by retention)
/// into the segment appended to, a step at a time; each such segment then
/// goes with the checkpoint. Without it a segment stays as long as its
/// last live chunk (raw retention frees whole segments by age, but a store
/// kept for ever never would).
async fn compact(store: &Store, stop: &CancellationToken) {
    let s = store.clone();
    let segments = match blocking(move || s.compactable(COMPACT_MIN)).await {
        Ok(segments) => segments,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "compaction: listing segments failed");
            return;
        }
    };
    for segment in segments {
        let (mut from, mut moved) = (None, 0);
        let result = loop {
            if stop.is_cancelled() {
                return;
            }
            let s = store.clone();
            match blocking(move || s.compact(segment, from, COMPACT_STEP)).await {
                Ok((n, Some(next))) => {
                    moved += n;
                    from = Some(next);
                }
                Ok((n, None)) => {
                    moved += n;
                    let s = store.clone();
                    break blocking(move || s.checkpoint()).await;
                }
                Err(e) => break Err(e),
            }
            tokio::task::yield_now().await;
        };
        match result {
            Ok(_) => info!(
                segment,
                chunks_moved = moved,
                "compaction: a segment mostly garbage rewritten"
            ),
            Err(e) => {
                warn!(error = %format!("{e:#}"), segment, "compaction failed (the segment stays as it is)");
                return;
            }
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

/// What the budget remembers from one check to the next.
struct Budget {
    /// The warning that the rest of the store alone passes the budget.
    over: RateLimit<()>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            over: RateLimit::new(Duration::from_secs(3600)),
        }
    }
}

/// Keeps the store's folder under `max` bytes by deleting the oldest raw
/// readings: the segments get what the rest of the store (sled's file, the
/// journal) leaves them. Rollups are never deleted for the budget (they are
/// bounded by `storage.rollups`): sled's file never shrinks, since space
/// freed in it is reused, and it grows mostly by rewriting, not by what it
/// holds, so deleting rows cannot bring it down (measured: deleting the
/// oldest minute rows at each growth, 575,080 of them, the file still grew
/// from 12 to 32 MB). When it alone passes the budget that is said, hourly.
async fn keep_under(
    store: &Store,
    max: u64,
    metrics: &Metrics,
    stop: &CancellationToken,
    budget: &mut Budget,
) {
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
    match result {
        Ok(Some(usage)) => {
            if let Some(suppressed) = budget.over.allow(()) {
                warn!(
                    max_size = %bytesize::ByteSize::b(max),
                    sled = %bytesize::ByteSize::b(usage.sled),
                    journal = %bytesize::ByteSize::b(usage.journal),
                    suppressed,
                    "storage.max_size is smaller than the store without raw readings (sled's file: the rollups, mostly): every raw reading goes; raise max_size, or shorten storage.rollups"
                );
            }
        }
        Ok(None) => {}
        Err(e) => {
            warn!(error = %format!("{e:#}"), "storage.max_size: deleting the oldest readings failed");
        }
    }
}

/// [`keep_under`]'s rounds: while the segments take more than the rest of
/// the store leaves them, deletes the oldest sixteenth of the history's
/// span, and frees what nothing points at. `deleted` and `before` say how
/// far they got, failed or not. The store's usage if it is still over `max`
/// with no raw reading left.
async fn shrink(
    store: &Store,
    max: u64,
    stop: &CancellationToken,
    deleted: &mut usize,
    before: &mut Option<Timestamp>,
) -> anyhow::Result<Option<Usage>> {
    // Segments of an eighth of the budget: freed whole, so the budget is
    // kept to within that; journal files of a sixteenth, so that spent ones
    // go soon (the journal keeps one spent file, and the one appended to).
    // Set at each check: a reopened store forgets them.
    let segment = (max / 8).clamp(16 * 1024, 64 * 1024 * 1024);
    let journal = (max / 16).clamp(16 * 1024, 4 * 1024 * 1024);
    for _ in 0..BUDGET_ROUNDS {
        if stop.is_cancelled() {
            break;
        }
        let s = store.clone();
        let over = blocking(move || {
            s.set_file_sizes(segment, journal)?;
            let usage = s.usage()?;
            if usage.total() <= max || s.catalogue_damaged()? {
                // Damaged: freeing nothing, deleting would only lose readings
                // (said as damage at open, and in /readyz).
                return Ok(Over::No);
            }
            Ok(match s.oldest()? {
                Some(oldest) => Over::Delete(usage.segments, sixteenth_after(oldest)),
                None => Over::NoRawLeft(usage),
            })
        })
        .await?;
        let (size, cutoff) = match over {
            Over::No => break,
            Over::NoRawLeft(usage) => return Ok(Some(usage)),
            Over::Delete(size, cutoff) => (size, cutoff),
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
    Ok(None)
}

/// What a budget round finds.
enum Over {
    No,
    /// Delete before this time; the segments' size now.
    Delete(u64, Timestamp),
    NoRawLeft(Usage),
}

/// A sixteenth of the way from `oldest` to now: what one budget round deletes.
fn sixteenth_after(oldest: Timestamp) -> Timestamp {
    let span = Timestamp::now_millis()
        .micros()
        .saturating_sub(oldest.micros());
    Timestamp::from_micros(oldest.micros().saturating_add(span / 16 + 1)).unwrap_or(oldest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Reading;
    use crate::store::{Query, StoredReading, Tier};

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
        store.set_file_sizes(16 * 1024, 16 * 1024).unwrap();
        let now = Timestamp::now_millis().micros();
        let mut w = store.reading_writer().unwrap();
        for i in 0..N {
            let ts = Timestamp::from_micros(now - 86_400_000_000 + i * 860_000).unwrap();
            w.insert(&reading(i % 10, ts, i)).unwrap();
            // Batches as ingest writes them: chunks are sealed in time order.
            if i % 100 == 99 {
                std::mem::replace(&mut w, store.reading_writer().unwrap())
                    .finish()
                    .unwrap();
            }
        }
        w.finish().unwrap();
        store.checkpoint().unwrap();
        // The rest of the store, and 128 KiB for the readings.
        let usage = store.usage().unwrap();
        let max = usage.sled + usage.journal + 128 * 1024;
        assert!(usage.segments > 2 * 128 * 1024);
        let metrics = Metrics::default();
        let stop = CancellationToken::new();
        keep_under(&store, max, &metrics, &stop, &mut Budget::default()).await;
        let usage = store.usage().unwrap();
        assert!(usage.total() <= max, "{usage:?} for a budget of {max}");
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

    /// Sensor `t{t}`'s reading number `i`, at `ts`.
    fn reading(t: i64, ts: Timestamp, i: i64) -> StoredReading {
        StoredReading {
            topic: format!("building/floor1/room101/temperature/t{t}"),
            reading: Reading {
                sensor_id: format!("t{t}"),
                sensor_type: "temperature".into(),
                value: 20.0 + (i % 97) as f64 / 10.0,
                unit: "celsius".into(),
                timestamp: ts,
                seq: Some(i.cast_unsigned()),
            },
            received_at: ts,
            qos: 1,
        }
    }

    /// Readings of `topics` sensors, one a minute (so a minute row each),
    /// for the `days` after `from` (µs).
    fn one_a_minute(store: &Store, topics: i64, from: i64, days: i64) {
        let mut w = store.reading_writer().unwrap();
        for m in 0..days * 1440 {
            let ts = Timestamp::from_micros(from + m * 60_000_000).unwrap();
            for t in 0..topics {
                w.insert(&reading(t, ts, m)).unwrap();
            }
            if m % 60 == 59 {
                std::mem::replace(&mut w, store.reading_writer().unwrap())
                    .finish()
                    .unwrap();
            }
        }
        w.finish().unwrap();
        store.checkpoint().unwrap();
    }

    /// A budget the rollups alone pass: every raw reading goes, and the
    /// rollups stay (the budget never deletes them: see `keep_under`).
    #[tokio::test]
    async fn past_a_budget_the_rollups_alone_pass_raw_goes_and_rollups_stay() {
        const DAY: i64 = 86_400_000_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (metrics, stop) = (Metrics::default(), CancellationToken::new());
        let start = Timestamp::now_millis().micros() - 10 * DAY;
        one_a_minute(&store, 10, start, 2);
        let max = 64 * 1024;
        assert!(store.usage().unwrap().sled > max);
        keep_under(&store, max, &metrics, &stop, &mut Budget::default()).await;
        assert_eq!(store.select(&Query::default()).count(), 0, "raw first");
        assert_eq!(metrics.budget_deleted.load(Relaxed), 10 * 2 * 1440);
        for tier in Tier::ALL {
            let rows = store
                .rollups(
                    "building/floor1/room101/temperature/t3",
                    tier,
                    Timestamp::from_micros(start).unwrap(),
                    Timestamp::now_millis(),
                )
                .unwrap();
            let n: u64 = rows.iter().map(|r| r.n).sum();
            assert_eq!(n, 2 * 1440, "{tier}: every reading still counted");
        }
    }
}
