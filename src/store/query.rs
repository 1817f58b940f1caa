//! Selecting stored readings: by sensor, room, type and time, without reading
//! what does not match. Keys are `topic 0x00 time seq`, so each topic is one
//! contiguous run, in time order: we visit topics one by one, skip those that do
//! not match, and within a matching topic seek straight to the time window.

use super::codec::time_key;
use super::{decode_reading, StoreError, StoredReading};
use crate::contract::{topic, Timestamp};
use serde::{Deserialize, Serialize};

/// What to select. Empty fields match everything. Sent as JSON to a running
/// aggregatord by `aggregatord dump`, so it is (de)serializable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// One reading topic exactly.
    #[serde(default)]
    pub topic: Option<String>,
    /// Sensor id, the topic's last level (`temp_001`).
    pub sensor: Option<String>,
    /// Room: the level before the sensor type (`room101`).
    pub room: Option<String>,
    pub sensor_type: Option<String>,
    /// Inclusive bounds on the reading's timestamp.
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

impl Query {
    pub fn matches_topic(&self, t: &str) -> bool {
        let topic::Parsed::Reading {
            prefix,
            sensor_type,
            sensor_id,
        } = topic::parse(t)
        else {
            return false;
        };
        let room = prefix.rsplit('/').next().unwrap_or(prefix);
        self.topic.as_deref().is_none_or(|x| x == t)
            && self.sensor.as_deref().is_none_or(|s| s == sensor_id)
            && self.room.as_deref().is_none_or(|r| r == room)
            && self
                .sensor_type
                .as_deref()
                .is_none_or(|ty| ty == sensor_type)
    }
}

/// Every distinct topic in the readings tree, in order (one seek per topic).
pub(super) fn topics(tree: &sled::Tree) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> + '_ {
    let mut next: Option<Vec<u8>> = Some(Vec::new());
    std::iter::from_fn(move || {
        let start = next.take()?;
        let (key, _) = match tree.range(start..).next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
        let topic = key[..end].to_vec();
        let mut after = topic.clone();
        after.push(1);
        next = Some(after);
        Some(Ok(topic))
    })
}

pub(super) struct Select<'a> {
    tree: sled::Tree,
    query: &'a Query,
    /// Where the next topic's run starts; `None` once finished.
    next_topic: Option<Vec<u8>>,
    run: Option<sled::Iter>,
    taken: usize,
}

impl<'a> Select<'a> {
    pub(super) fn new(tree: sled::Tree, query: &'a Query) -> Self {
        Select {
            tree,
            query,
            next_topic: Some(Vec::new()),
            run: None,
            taken: 0,
        }
    }

    /// Moves to the next topic that matches; false when there is none.
    fn next_run(&mut self) -> Result<bool, StoreError> {
        loop {
            let Some(start) = self.next_topic.take() else {
                return Ok(false);
            };
            let Some(kv) = self.tree.range(start..).next() else {
                return Ok(false);
            };
            let (key, _) = kv?;
            let Some(end) = key.iter().position(|b| *b == 0) else {
                return Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    message: "reading key without separator".into(),
                });
            };
            let topic = &key[..end];
            // Every key of this topic starts `topic 0x00`; the next topic sorts
            // at or after `topic 0x01`.
            let mut after = topic.to_vec();
            after.push(1);
            self.next_topic = Some(after);
            if !self.query.matches_topic(&String::from_utf8_lossy(topic)) {
                continue;
            }
            let bound = |t: Option<Timestamp>, default: i64, bump: i64| {
                let mut k = topic.to_vec();
                k.push(0);
                k.extend_from_slice(&time_key(
                    t.map_or(default, |t| t.micros().saturating_add(bump)),
                ));
                k
            };
            let lo = bound(self.query.since, i64::MIN, 0);
            let hi = bound(self.query.until, i64::MAX, 1);
            self.run = Some(self.tree.range(lo..hi));
            return Ok(true);
        }
    }
}

impl Iterator for Select<'_> {
    type Item = Result<StoredReading, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.query.limit.is_some_and(|l| self.taken >= l) {
            return None;
        }
        loop {
            if let Some(run) = &mut self.run {
                match run.next() {
                    Some(Ok((k, v))) => {
                        self.taken += 1;
                        return Some(decode_reading(&k, &v));
                    }
                    Some(Err(e)) => return Some(Err(e.into())),
                    None => self.run = None,
                }
            }
            match self.next_run() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.next_topic = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
