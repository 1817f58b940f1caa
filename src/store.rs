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

use crate::contract::{Reading, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    readings: sled::Tree,
    rejected: sled::Tree,
    rejected_len: Arc<AtomicU64>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(32 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|source| open_error(path, source))?;
        let readings = db.open_tree("readings")?;
        let rejected = db.open_tree("rejected")?;
        // Bounded by REJECTED_KEEP, so counting once at open is cheap.
        let rejected_len = Arc::new(AtomicU64::new(rejected.len() as u64));
        Ok(Store {
            db,
            readings,
            rejected,
            rejected_len,
        })
    }

    /// Stores a reading unless the same one is already there. Not durable until
    /// [`Store::flush`].
    pub fn insert_reading(&self, r: &StoredReading) -> Result<Inserted, StoreError> {
        let key = reading_key(&r.topic, r.reading.timestamp, r.reading.seq);
        let value = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
            key: r.topic.clone(),
            message: e.to_string(),
        })?;
        match self
            .readings
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))?
        {
            Ok(()) => Ok(Inserted::New),
            Err(_) => Ok(Inserted::Duplicate),
        }
    }

    pub fn insert_rejected(&self, r: &RejectedMessage) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        let value = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
            key: r.topic.clone(),
            message: e.to_string(),
        })?;
        self.rejected.insert(id.to_be_bytes(), value)?;
        let len = self.rejected_len.fetch_add(1, Ordering::AcqRel) + 1;
        if len > REJECTED_KEEP && self.rejected.pop_min()?.is_some() {
            self.rejected_len.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Writes everything inserted so far to disk (fsync). Returns bytes flushed.
    pub fn flush(&self) -> Result<usize, StoreError> {
        Ok(self.db.flush()?)
    }

    /// All readings, by topic then time.
    pub fn readings(&self) -> impl Iterator<Item = Result<StoredReading, StoreError>> + '_ {
        self.readings.iter().map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        })
    }

    /// Rejected messages, oldest first.
    pub fn rejected(&self) -> impl Iterator<Item = Result<RejectedMessage, StoreError>> + '_ {
        self.rejected.iter().map(|kv| {
            let (k, v) = kv?;
            decode(&k, &v)
        })
    }
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

fn reading_key(topic: &str, ts: Timestamp, seq: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 17);
    key.extend_from_slice(topic.as_bytes());
    // MQTT topics cannot contain U+0000, so this cannot be part of a topic.
    key.push(0);
    // Flip the sign bit so that negative times sort before positive ones.
    key.extend_from_slice(&((ts.micros() as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&seq.unwrap_or(0).to_be_bytes());
    key
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
        let all: Vec<_> = store.readings().map(|r| r.unwrap()).collect();
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
