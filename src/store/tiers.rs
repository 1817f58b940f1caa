//! The rollup tiers in sled: which entry a reading is added to, what a
//! range reads, what retention removes. An entry's layout is rollup.rs's;
//! readings/ calls [`Tiers::writes`] for every reading it puts into a
//! chunk, and writes the result in the same transaction as the chunk.

use super::chunk::{self, Pos, KEY_LEN};
use super::rollup::{self, Row, Tier};
use super::StoreError;
use std::collections::BTreeMap;

/// An entry to write: its tier, key and bytes.
pub(super) type Write = (Tier, [u8; KEY_LEN], Vec<u8>);

#[derive(Clone)]
pub(super) struct Tiers {
    /// `rollup_1m`, `rollup_1h`: entries by key (see rollup.rs).
    trees: [sled::Tree; 2],
}

impl Tiers {
    pub fn open(db: &sled::Db) -> Result<Tiers, StoreError> {
        Ok(Tiers {
            trees: [db.open_tree("rollup_1m")?, db.open_tree("rollup_1h")?],
        })
    }

    pub fn tree(&self, tier: Tier) -> &sled::Tree {
        &self.trees[tier.index()]
    }

    /// The trees, for a transaction over them.
    pub fn trees(&self) -> (&sled::Tree, &sled::Tree) {
        (&self.trees[0], &self.trees[1])
    }

    /// The entries to write so that topic `id`'s rollups count `adds`
    /// (readings new to its chunks, sorted by position). Each reading goes
    /// to the last entry at or before it, or starts an entry of its own when
    /// there is none, or when that one is full and the reading comes after
    /// all of it: so entries keep partitioning the topic's time. Read before
    /// the transaction: callers hold the store's writer lock.
    pub fn writes(
        &self,
        id: u32,
        ends: bool,
        adds: &[(Pos, f64)],
    ) -> Result<Vec<Write>, StoreError> {
        let mut out = Vec::new();
        let (Some(&(first, _)), Some(&(last, _))) = (adds.first(), adds.last()) else {
            return Ok(out);
        };
        for tier in Tier::ALL {
            // The stored entries any of the readings can go to, read once:
            // the last at or before the first reading, and those among them.
            let (from, to) = (chunk::key(id, first), chunk::key(id, last));
            let mut stored: Vec<[u8; KEY_LEN]> = self
                .last_at_or_before(tier, id, &from)?
                .into_iter()
                .collect();
            for k in self.tree(tier).range(from..=to).keys() {
                let k = k?;
                let k: [u8; KEY_LEN] = k.as_ref().try_into().map_err(|_| bad(&k, "bad key"))?;
                if stored.last() != Some(&k) {
                    stored.push(k);
                }
            }
            // Entries touched: key → rows (loaded, or new).
            let mut touched: BTreeMap<[u8; KEY_LEN], Vec<Row>> = BTreeMap::new();
            for &(pos, value) in adds {
                let key = chunk::key(id, pos);
                let stored = stored
                    .partition_point(|k| *k <= key)
                    .checked_sub(1)
                    .map(|i| stored[i]);
                let pending = touched.range(..=key).next_back().map(|(k, _)| *k);
                let target = match (stored, pending) {
                    (Some(s), Some(p)) => Some(s.max(p)),
                    (s, p) => s.or(p),
                };
                let target = match target {
                    Some(t) if !touched.contains_key(&t) => {
                        let rows = self.load(tier, &t)?;
                        touched.insert(t, rows);
                        Some(t)
                    }
                    t => t,
                };
                let key = match target.and_then(|t| touched.get(&t).map(|rows| (t, rows))) {
                    Some((t, rows))
                        if rows.len() < tier.cap()
                            || rows.last().is_none_or(|r| {
                                r.last.map_or(r.start + tier.width(), |l| l.0) >= pos.0
                            }) =>
                    {
                        t
                    }
                    // Full, and this reading is after all of it; or no entry yet.
                    _ => key,
                };
                rollup::add(touched.entry(key).or_default(), tier, pos.0, value);
            }
            out.extend(
                touched
                    .into_iter()
                    .map(|(k, rows)| (tier, k, rollup::encode(tier, &rows, ends))),
            );
        }
        Ok(out)
    }

    /// Topic `id`'s rows of `tier` for buckets that meet `[since, until]`,
    /// in order, one per bucket.
    pub fn range(
        &self,
        id: u32,
        tier: Tier,
        since: i64,
        until: i64,
    ) -> Result<Vec<Row>, StoreError> {
        let tree = self.tree(tier);
        let from = chunk::key(id, (tier.bucket(since), 0));
        // The entry before `from` may hold rows from it on (entries partition time).
        let start = self.last_at_or_before(tier, id, &from)?.unwrap_or(from);
        let end = chunk::key(id, (until, u64::MAX));
        let mut runs = Vec::new();
        for kv in tree.range(start..=end) {
            let (k, v) = kv?;
            match decode(tier, &k, &v) {
                Ok(rows) => runs.push(rows),
                Err(e) => tracing::error!(error = %e, "a rollup entry cannot be read; skipped"),
            }
        }
        let mut rows = rollup::merge_runs(runs);
        rows.retain(|r| r.start <= until && r.start.saturating_add(tier.width()) > since);
        Ok(rows)
    }

    /// The start of topic `id`'s oldest row in `tier`.
    pub fn oldest(&self, id: u32, tier: Tier) -> Result<Option<i64>, StoreError> {
        match self.tree(tier).scan_prefix(id.to_be_bytes()).next() {
            Some(kv) => {
                let (k, v) = kv?;
                Ok(decode(tier, &k, &v)?.first().map(|r| r.start))
            }
            None => Ok(None),
        }
    }

    /// Removes topic `id`'s rows of `tier` for buckets that end before
    /// `cutoff` (at most about `max`); returns how many.
    pub fn expire(
        &self,
        id: u32,
        tier: Tier,
        cutoff: i64,
        max: usize,
    ) -> Result<usize, StoreError> {
        let tree = self.tree(tier);
        let mut removed = 0;
        for kv in tree.scan_prefix(id.to_be_bytes()) {
            if removed >= max {
                break;
            }
            let (k, v) = kv?;
            let mut rows = decode(tier, &k, &v)?;
            let gone = rows.partition_point(|r| r.start.saturating_add(tier.width()) <= cutoff);
            if gone == rows.len() {
                tree.remove(&k)?;
            } else if gone > 0 {
                // The rest stays under the same key: still at or before its rows.
                let kept = rows.split_off(gone);
                tree.insert(&k, rollup::encode(tier, &kept, true))?;
            }
            removed += gone;
            if gone < rows.len() {
                break;
            }
        }
        Ok(removed)
    }

    /// Removes every entry of topic `id` (before its rollups are rebuilt).
    pub fn clear(&self, id: u32) -> Result<(), StoreError> {
        for tree in &self.trees {
            for k in tree.scan_prefix(id.to_be_bytes()).keys() {
                tree.remove(k?)?;
            }
        }
        Ok(())
    }

    /// Bytes of keys and values in the tiers: what they keep.
    pub fn data_bytes(&self, tier: Tier) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for kv in self.tree(tier) {
            let (k, v) = kv?;
            n += (k.len() + v.len()) as u64;
        }
        Ok(n)
    }

    fn last_at_or_before(
        &self,
        tier: Tier,
        id: u32,
        key: &[u8; KEY_LEN],
    ) -> Result<Option<[u8; KEY_LEN]>, StoreError> {
        let first = chunk::key(id, (i64::MIN, 0));
        match self.tree(tier).range(first..=*key).next_back() {
            Some(kv) => {
                let (k, _) = kv?;
                Ok(Some(k.as_ref().try_into().map_err(|_| bad(&k, "bad key"))?))
            }
            None => Ok(None),
        }
    }

    /// An entry's rows, to add to. One that cannot be read is said and
    /// written afresh: sled checks its own pages, so this is a bug's mark,
    /// and a summary must not stop the readings it summarizes being stored.
    fn load(&self, tier: Tier, key: &[u8; KEY_LEN]) -> Result<Vec<Row>, StoreError> {
        match self.tree(tier).get(key)? {
            Some(v) => Ok(decode(tier, key, &v).unwrap_or_else(|e| {
                tracing::error!(error = %e, "a rollup entry cannot be read; it starts again");
                Vec::new()
            })),
            None => Ok(Vec::new()),
        }
    }
}

fn decode(tier: Tier, key: &[u8], value: &[u8]) -> Result<Vec<Row>, StoreError> {
    rollup::decode(tier, value).map_err(|e| bad(key, e))
}

fn bad(key: &[u8], message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: format!("rollup {}", String::from_utf8_lossy(key)),
        message: message.to_string(),
    }
}
