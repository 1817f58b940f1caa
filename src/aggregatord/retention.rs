//! Deletes readings older than `storage.retention`, a bounded number at a time,
//! so that a first run over a large history never stalls ingest.
//! It knows nothing of the layout and never touches alerts or rejected messages:
//! `Store::expire` picks which readings go.

use crate::contract::Timestamp;
use crate::store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Readings deleted per step; between steps ingest gets the storage back.
const STEP: usize = 1000;
const EVERY: Duration = Duration::from_secs(60);

pub async fn run(store: Store, keep: Duration, stop: CancellationToken) -> anyhow::Result<()> {
    loop {
        // Config validation bounds `keep` (at most 100 years), so this cannot overflow.
        let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let Some(cutoff) = Timestamp::now_millis()
            .0
            .checked_sub_signed(keep)
            .map(Timestamp)
        else {
            return Ok(()); // Nothing can be that old.
        };
        let mut total = 0;
        loop {
            let store = store.clone();
            let deleted = tokio::task::spawn_blocking(move || {
                let n = store.expire(cutoff, STEP)?;
                store.flush()?;
                Ok::<_, crate::store::StoreError>(n)
            })
            .await?;
            match deleted {
                Ok(n) => {
                    total += n;
                    // Fewer than asked: nothing older is left. (Whole chunks
                    // go at once, so a step may delete a few more than asked.)
                    if n < STEP {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retention: deleting old readings failed");
                    break;
                }
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            info!(deleted = total, before = %cutoff, "retention: old readings deleted");
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
