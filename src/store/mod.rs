//! Durable storage of readings. This is the only module that knows sled.
//!
//! Layout (one sled tree each):
//! - `readings`: key = topic, 0x00, timestamp (µs, big-endian, sign-flipped), seq
//!   (big-endian; 0 when the reading had none). So one sensor's history is a
//!   prefix range scan in time order, and a redelivered reading lands on the
//!   same key: storing is idempotent.
//! - `rejected`: the latest [`REJECTED_KEEP`] refused messages, for inspection.
//!
//! Durability: sled's background flush is switched off; [`Store::flush`] is the
//! one place data reaches the disk, and ingest acknowledges only after it.

mod codec;
mod query;

pub use query::Query;

use crate::contract::{Alert, AlertState, Reading, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How many rejected messages are kept (oldest dropped first).
pub const REJECTED_KEEP: u64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{}: the database is in use by another process (is aggregatord running?)",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: sled::Error },
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("{}: storage is being reopened", path.display())]
    Reopening { path: PathBuf },
    #[error("corrupt record under key {key:?}: {message}")]
    Corrupt { key: String, message: String },
}

/// A reading as stored: the payload's fields plus where and how it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReading {
    pub topic: String,
    #[serde(flatten)]
    pub reading: Reading,
    pub received_at: Timestamp,
    pub qos: u8,
}

/// A message that failed validation, kept as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedMessage {
    pub topic: String,
    pub reason: String,
    pub detail: String,
    pub received_at: Timestamp,
    /// The payload, lossily decoded and cut to 1 KiB: enough to see what was sent.
    pub payload: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Duplicate,
}

/// The database. Cheap to clone; all clones share one sled instance, which
/// [`Store::reopen`] can replace (sled refuses all writes after an I/O error
/// until it is opened again).
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    trees: Arc<RwLock<Option<Trees>>>,
    rejected_len: Arc<AtomicU64>,
}

#[derive(Clone)]
struct Trees {
    db: sled::Db,
    readings: sled::Tree,
    rejected: sled::Tree,
    /// room 0x00 rule → the active (raised) alert.
    alerts_active: sled::Tree,
    /// time, id → every alert change, for `dump --alerts`.
    alerts_log: sled::Tree,
    /// id → alert changes not yet confirmed published.
    alerts_outbox: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> Result<Trees, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(32 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|source| open_error(path, source))?;
        Ok(Trees {
            readings: db.open_tree("readings")?,
            rejected: db.open_tree("rejected")?,
            alerts_active: db.open_tree("alerts_active")?,
            alerts_log: db.open_tree("alerts_log")?,
            alerts_outbox: db.open_tree("alerts_outbox")?,
            db,
        })
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let trees = Trees::open(path)?;
        // Bounded by REJECTED_KEEP, so counting once at open is cheap.
        let rejected_len = Arc::new(AtomicU64::new(trees.rejected.len() as u64));
        Ok(Store {
            path: path.to_owned(),
            trees: Arc::new(RwLock::new(Some(trees))),
            rejected_len,
        })
    }

    fn t(&self) -> Result<Trees, StoreError> {
        self.trees
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Reopening {
                path: self.path.clone(),
            })
    }

    /// Closes and opens the database again: how to get past sled's refusal of
    /// writes after an I/O error (a full disk) once the cause is gone. Fails
    /// while something else still holds the old instance (a running dump).
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut trees = self.trees.write().unwrap_or_else(|p| p.into_inner());
        // Drop ours first: sled's lock on the folder goes with the last handle.
        *trees = None;
        let fresh = Trees::open(&self.path)?;
        self.rejected_len
            .store(fresh.rejected.len() as u64, Ordering::Release);
        *trees = Some(fresh);
        Ok(())
    }

    /// Stores a reading unless the same one is already there. Not durable until
    /// [`Store::flush`].
    pub fn insert_reading(&self, r: &StoredReading) -> Result<Inserted, StoreError> {
        let key = codec::key(&r.topic, r.reading.timestamp, r.reading.seq);
        match self.t()?.readings.compare_and_swap(
            key,
            None as Option<&[u8]>,
            Some(codec::encode(r)),
        )? {
            Ok(()) => Ok(Inserted::New),
            Err(_) => Ok(Inserted::Duplicate),
        }
    }

    pub fn insert_rejected(&self, r: &RejectedMessage) -> Result<(), StoreError> {
        let t = self.t()?;
        let id = t.db.generate_id()?;
        let value = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
            key: r.topic.clone(),
            message: e.to_string(),
        })?;
        t.rejected.insert(id.to_be_bytes(), value)?;
        let len = self.rejected_len.fetch_add(1, Ordering::AcqRel) + 1;
        if len > REJECTED_KEEP && t.rejected.pop_min()?.is_some() {
            self.rejected_len.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Deletes up to `max` readings timestamped before `cutoff`; returns how many.
    pub fn expire(&self, cutoff: Timestamp, max: usize) -> Result<usize, StoreError> {
        let t = self.t()?;
        let mut deleted = 0;
        for topic in query::topics(&t.readings) {
            let mut lo = topic?;
            lo.push(0);
            let mut hi = lo.clone();
            hi.extend_from_slice(&codec::time_key(cutoff.micros()));
            lo.extend_from_slice(&codec::time_key(i64::MIN));
            for kv in t.readings.range(lo..hi) {
                if deleted == max {
                    return Ok(deleted);
                }
                t.readings.remove(kv?.0)?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Records alert changes: history, active set, and the publish outbox, all in
    /// the next flush, so a change is never stored without being queued to send.
    pub fn record_alerts(&self, changes: &[Alert]) -> Result<(), StoreError> {
        let t = self.t()?;
        for a in changes {
            let value = encode(a)?;
            let id = t.db.generate_id()?;
            let mut log_key = codec::time_key(a.time.micros()).to_vec();
            log_key.extend_from_slice(&id.to_be_bytes());
            t.alerts_log.insert(log_key, value.clone())?;
            let active_key = format!("{}\0{}", a.room, a.rule);
            match a.state {
                AlertState::Raised => t.alerts_active.insert(active_key, value.clone())?,
                AlertState::Cleared => t.alerts_active.remove(active_key)?,
            };
            t.alerts_outbox.insert(id.to_be_bytes(), value)?;
        }
        Ok(())
    }

    pub fn active_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let t = self.t()?;
        t.alerts_active
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// Every alert change, oldest first.
    pub fn alerts(&self) -> Box<dyn Iterator<Item = Result<Alert, StoreError>>> {
        self.records(|t| &t.alerts_log)
    }

    /// Every record of one tree, decoded, in key order.
    fn records<T: for<'de> Deserialize<'de> + 'static>(
        &self,
        tree: impl Fn(&Trees) -> &sled::Tree,
    ) -> Box<dyn Iterator<Item = Result<T, StoreError>>> {
        match self.t() {
            Ok(t) => Box::new(tree(&t).iter().map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Alert changes waiting to be published, in order, with their outbox ids.
    pub fn alert_outbox(&self) -> Result<Vec<(u64, Alert)>, StoreError> {
        let t = self.t()?;
        t.alerts_outbox
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let id = k
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or_default();
                Ok((id, decode(&k, &v)?))
            })
            .collect()
    }

    /// Forgets published alert changes (durable at the next flush).
    pub fn remove_from_outbox(&self, ids: &[u64]) -> Result<(), StoreError> {
        let t = self.t()?;
        for id in ids {
            t.alerts_outbox.remove(id.to_be_bytes())?;
        }
        Ok(())
    }

    /// Writes everything inserted so far to disk (fsync). Returns bytes flushed.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let t = self.t()?;
        Ok(t.db.flush()?)
    }

    /// The readings `query` selects, by topic then time.
    pub fn select<'a>(
        &self,
        query: &'a Query,
    ) -> Box<dyn Iterator<Item = Result<StoredReading, StoreError>> + 'a> {
        match self.t() {
            Ok(t) => Box::new(query::Select::new(t.readings, query)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// The stored readings just before and just after `r`'s place in its
    /// sensor's history (a reading already stored counts as "after").
    pub fn neighbours(
        &self,
        r: &StoredReading,
    ) -> Result<(Option<StoredReading>, Option<StoredReading>), StoreError> {
        let t = self.t()?;
        let key = codec::key(&r.topic, r.reading.timestamp, r.reading.seq);
        let prefix_len = r.topic.len() + 1;
        let same_topic = |k: &[u8]| k.len() > prefix_len && k[..prefix_len] == key[..prefix_len];
        let get = |kv: Option<Result<(sled::IVec, sled::IVec), sled::Error>>| -> Result<Option<StoredReading>, StoreError> {
            match kv {
                Some(kv) => {
                    let (k, v) = kv?;
                    // A record that will not decode is passed over, not fatal:
                    // otherwise one bad record would stall that meter's ingest.
                    if same_topic(&k) { Ok(decode_reading(&k, &v).ok()) } else { Ok(None) }
                }
                None => Ok(None),
            }
        };
        let before = get(t.readings.range(..key.clone()).next_back())?;
        let after = get(t.readings.range(key.clone()..).next())?;
        Ok((before, after))
    }

    /// Rejected messages, oldest first.
    pub fn rejected(&self) -> Box<dyn Iterator<Item = Result<RejectedMessage, StoreError>>> {
        self.records(|t| &t.rejected)
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        key: String::new(),
        message: e.to_string(),
    })
}

fn decode_reading(key: &[u8], value: &[u8]) -> Result<StoredReading, StoreError> {
    codec::decode(key, value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.into(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message: e.to_string(),
    })
}

fn open_error(path: &Path, source: sled::Error) -> StoreError {
    // sled reports a held lock as a plain I/O error ("could not acquire lock").
    let locked = matches!(&source, sled::Error::Io(e) if e.to_string().contains("lock"));
    if locked {
        StoreError::Locked {
            path: path.to_owned(),
        }
    } else {
        StoreError::Open {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(topic: &str, ts: &str, seq: u64) -> StoredReading {
        StoredReading {
            topic: topic.to_owned(),
            reading: Reading {
                sensor_id: "t".into(),
                sensor_type: "temperature".into(),
                value: 20.5,
                unit: "celsius".into(),
                timestamp: Timestamp::parse(ts).unwrap(),
                seq: Some(seq),
            },
            received_at: Timestamp::parse("2026-01-01T00:00:00Z").unwrap(),
            qos: 1,
        }
    }

    #[test]
    fn idempotent_and_ordered_per_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b2 = reading("b/t/t", "2026-01-01T00:00:02Z", 2);
        let b1 = reading("b/t/t", "2026-01-01T00:00:01Z", 1);
        let a9 = reading("a/t/t", "2026-01-01T00:00:09Z", 9);
        let old = reading("b/t/t", "1960-01-01T00:00:00Z", 0);
        for r in [&b2, &b1, &a9, &old] {
            assert_eq!(store.insert_reading(r).unwrap(), Inserted::New);
        }
        assert_eq!(store.insert_reading(&b1).unwrap(), Inserted::Duplicate);
        store.flush().unwrap();
        let all: Vec<_> = store
            .select(&Query::default())
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(all, vec![a9, old, b1, b2]);
    }

    #[test]
    fn rejected_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..REJECTED_KEEP + 5 {
            store
                .insert_rejected(&RejectedMessage {
                    topic: format!("t/{i}"),
                    reason: "malformed".into(),
                    detail: String::new(),
                    received_at: Timestamp::now_millis(),
                    payload: String::new(),
                })
                .unwrap();
        }
        let kept: Vec<_> = store.rejected().map(|r| r.unwrap()).collect();
        assert_eq!(kept.len() as u64, REJECTED_KEEP);
        assert_eq!(kept[0].topic, "t/5");
    }

    #[test]
    fn second_open_reports_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("expected Locked, opened twice"),
        }
    }
}
