//! Reading the history back: the [`Select`] iterator behind `Store::select`
//! (`dump`, `/api/history`), chunk by chunk, then the topic's tail.

use super::{id_of, Readings};
use crate::contract::Timestamp;
use crate::store::chunk::{self, Entry, Pos};
use crate::store::format::Implied;
use crate::store::{Query, StoreError, StoredReading};

/// Readings selected by a [`Query`], by topic then time.
pub(in crate::store) struct Select<'a> {
    /// The trees it reads (a cheap clone).
    readings: Readings,
    /// What to select.
    query: &'a Query,
    /// Topics still to visit, in name order; `None` once finished.
    topics: Option<sled::Iter>,
    /// The topic being read; `None` between topics.
    run: Option<Run>,
    /// The current chunk's selected readings not yet returned.
    buf: std::vec::IntoIter<StoredReading>,
    /// Readings returned so far, for `query.limit`.
    taken: usize,
}

/// One topic's chunks within the query's time window.
struct Run {
    /// Its name, for the readings it yields (and what the topic implies).
    topic: String,
    /// Its chunks, from the one covering `since` to the last starting at or before `until`.
    chunks: sled::Iter,
    /// The query's window, microseconds (an open side is `i64::MIN` or `i64::MAX`); a
    /// chunk can straddle either end, so its entries are filtered too.
    since: i64,
    /// The window's end, inclusive.
    until: i64,
    /// Its tail (within the window) as the run started, read after the
    /// chunks. A fold during the run may put those readings in a chunk too:
    /// chunks give only what lies below `tail_first`, the tail the rest.
    tail: Option<Vec<Entry>>,
    /// The first position of the tail as the run started (window or not).
    tail_first: Option<Pos>,
}

impl<'a> Select<'a> {
    pub(super) fn new(readings: Readings, query: &'a Query) -> Select<'a> {
        let topics = Some(readings.ids.iter());
        Select {
            readings,
            query,
            topics,
            run: None,
            buf: Vec::new().into_iter(),
            taken: 0,
        }
    }

    fn start_run(&mut self, name: &[u8], id: &[u8]) -> Result<bool, StoreError> {
        let topic = String::from_utf8_lossy(name).into_owned();
        if !self.query.matches_topic(&topic) {
            return Ok(false);
        }
        let id = id_of(id)?;
        let since = self.query.since.map_or(i64::MIN, Timestamp::micros);
        let until = self.query.until.map_or(i64::MAX, Timestamp::micros);
        let start = match self.readings.chunk_at(id, (since, 0))? {
            Some((k, _)) => k.to_vec(),
            None => chunk::key(id, (since, 0)).to_vec(),
        };
        let end = chunk::key(id, (until, u64::MAX));
        let (tail, tail_first) = match self.readings.lock().tails.get(&id) {
            Some(t) => (
                Some(
                    t.entries
                        .iter()
                        .filter(|(_, e)| (since..=until).contains(&e.time))
                        .map(|(_, e)| e.clone())
                        .collect(),
                ),
                t.entries.first().map(|(_, e)| e.pos()),
            ),
            None => (None, None),
        };
        self.run = Some(Run {
            topic,
            chunks: self.readings.chunks.range(start..=end.to_vec()),
            since,
            until,
            tail,
            tail_first,
        });
        Ok(true)
    }

    /// Fills `buf` from the next chunk; false when there are no more.
    fn refill(&mut self) -> Result<bool, StoreError> {
        loop {
            if let Some(run) = &mut self.run {
                match run.chunks.next() {
                    Some(kv) => {
                        let (k, v) = kv?;
                        let entries = self.readings.load(&k, &v)?;
                        let implied = Implied::of(&run.topic);
                        let first = run.tail_first;
                        let entries: Vec<Entry> = entries
                            .into_iter()
                            .filter(|e| (run.since..=run.until).contains(&e.time))
                            .filter(|e| first.is_none_or(|first| e.pos() < first))
                            .collect();
                        let readings = entries
                            .into_iter()
                            .map(|e| implied.reading(&run.topic, e))
                            .collect::<Result<Vec<_>, _>>()?;
                        self.buf = readings.into_iter();
                        return Ok(true);
                    }
                    None => match run.tail.take() {
                        Some(tail) => {
                            let implied = Implied::of(&run.topic);
                            let readings = tail
                                .into_iter()
                                .map(|e| implied.reading(&run.topic, e))
                                .collect::<Result<Vec<_>, _>>()?;
                            self.buf = readings.into_iter();
                            return Ok(true);
                        }
                        None => self.run = None,
                    },
                }
            }
            let Some(topics) = &mut self.topics else {
                return Ok(false);
            };
            if let Some(kv) = topics.next() {
                let (name, id) = kv?;
                self.start_run(&name, &id)?;
            } else {
                self.topics = None;
                return Ok(false);
            }
        }
    }
}

impl Iterator for Select<'_> {
    type Item = Result<StoredReading, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.query.limit.is_some_and(|l| self.taken >= l) {
                return None;
            }
            if let Some(r) = self.buf.next() {
                self.taken += 1;
                return Some(Ok(r));
            }
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    // One error ends the selection: do not loop on it.
                    self.topics = None;
                    self.run = None;
                    return Some(Err(e));
                }
            }
        }
    }
}
