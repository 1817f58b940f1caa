//! The readings: each topic interned as a small id, each topic's history kept in
//! chunks (layout in `chunk.rs`).
//! It knows nothing of alerts or rejected messages (mod.rs keeps those trees) and
//! validates nothing: a reading's identity is all it judges.
//!
//! Trees: `topic_ids` (topic → id u32 BE), `topic_names` (id → topic),
//! `chunks`, `folded`; and the journal, in files of our own (`wal.rs`).
//! Ingest writes through a [`ReadingWriter`]. Readings
//! newer than anything stored for their topic (nearly all of them) are written
//! once per batch, all topics together, as one journal record (one append
//! per batch, not one chunk rewrite per topic: flash wear, issue 15). They stay
//! in memory as their topic's *tail* until it holds a chunk's worth (or has
//! waited `FOLD_AFTER`), and are then folded into a chunk in one write; a
//! log file goes once all its records' readings are folded and that is
//! flushed (one file late, see `wal.rs`). An
//! older reading (a redelivery, a late one) is looked up in the one chunk, or
//! the tail, that could hold it. Reads see chunks, then the tail; a restart
//! rebuilds the tails from the journal (`replay`). The journal record's bytes
//! are `record.rs`'s, reading back is `select.rs`'s.

mod record;
mod select;

use super::chunk::{self, Entry, Pos, CHUNK_MAX, KEY_LEN};
use super::format::Implied;
use super::rollup::{self, Row, Tier};
use super::segments::{Loc, Segments};
use super::tiers::Tiers;
use super::wal::{Damage, Loss, Position, Wal};
use super::{Inserted, Query, StoreError, StoredReading};
use crate::contract::{Reading, Timestamp};
use record::{decode_record, encode_record, record_of};
pub(super) use select::Select;
use sled::Transactional;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const FIRST: Pos = (i64::MIN, 0);
/// A tail this old is folded even if it holds less than a chunk (a slow or a
/// silent sensor must not pin its journal records for ever). Long, because
/// a chunk is written once: a sensor reporting every 14 s still fills one
/// (the journal holds its readings meanwhile).
const FOLD_AFTER: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub(super) struct Readings {
    /// `topic_ids`: topic → id (u32 BE).
    ids: sled::Tree,
    /// `topic_names`: id → topic; its last key gives the next id at open.
    names: sled::Tree,
    /// `chunks`: key of a chunk's first reading (topic id, time, seq) → where
    /// the chunk is in the segment files (see [`locator`]), or, in stores
    /// from before segments, the chunk itself.
    chunks: sled::Tree,
    /// The segment files holding the chunks.
    segments: Arc<Segments>,
    /// `segment_live`: segment number (u32 BE) → bytes of it that locators
    /// point at (u64 BE), changed with them; a segment at 0 goes.
    segment_live: sled::Tree,
    /// Segments that reached 0 live bytes, to remove once that is flushed.
    emptied: Arc<Mutex<Vec<u32>>>,
    /// Damage found by reads (the store's list, shared).
    damage: Arc<Mutex<Vec<Damage>>>,
    /// `journal`: where versions before the log files kept it (record number,
    /// u64 BE → record); replayed and emptied at open.
    old_journal: sled::Tree,
    /// `meta`: [`WAL_COMMITTED`], how far the log was synced at the last
    /// flush; [`LIVE_TOTAL`], the sum of `segment_live`, changed with it.
    meta: sled::Tree,
    /// sled's catalogue of the chunks was found to disagree with itself at
    /// open: no segment file is removed or compacted while it is so.
    catalogue_damaged: bool,
    /// The rollup tiers (tiers.rs): every reading put into a chunk is added
    /// to them in the same transaction.
    tiers: Tiers,
    /// `folded`: topic id → the newest position folded into its chunks, written
    /// with the fold (one transaction). Replay skips what is at or below it,
    /// even after retention has deleted it from the chunks.
    folded: sled::Tree,
    /// Also serializes writers (ingest, retention): appending to a chunk is a
    /// read-modify-write.
    state: Arc<Mutex<State>>,
    /// How long a tail may wait before it is folded whatever its size
    /// (`FOLD_AFTER`; tests shorten it).
    fold_after: Duration,
    /// Set by writes to chunks the journal cannot redo (`insert_old`): the
    /// store's next flush must include sled's.
    owed: Arc<AtomicBool>,
}

struct State {
    /// The journal: each batch's new readings, one record per batch.
    wal: Wal,
    /// Topics created since the last record: the next one names them, so
    /// that replay can recreate a name sled lost with its last flushes.
    new_names: Vec<(u32, String)>,
    /// The oldest record still needed as of the last flush: log files wholly
    /// below it may go.
    durable_floor: u64,
    /// The log position last written to `meta`.
    committed: Option<Position>,
    /// sled flushes completed (counted on from sled's note, or the
    /// journal's, whichever is further): each journal frame carries it.
    generation: u64,
    /// Topics written since open (read from disk on first write), so a reading newer
    /// than its topic's last needs no lookup.
    topics: HashMap<String, TopicState>,
    /// The id the next new topic gets; ids are never reused.
    next_id: u32,
    /// Per topic id: readings newer than its chunks, journaled, not yet folded.
    tails: HashMap<u32, Tail>,
    /// Journal record → how many of its readings are still in tails.
    records: BTreeMap<u64, usize>,
    /// The next journal record's number.
    next_record: u64,
    /// When each tail started, oldest first: what `FOLD_AFTER` looks at
    /// (entries of tails folded since are skipped).
    started: VecDeque<(Instant, u32)>,
}

/// One topic's readings newer than its chunks, in order, each with the
/// journal record that holds it.
struct Tail {
    /// The topic (to update its `TopicState` on folding).
    name: String,
    /// Sorted by position, no two alike.
    entries: Vec<(u64, Entry)>,
    /// When its first entry came (matches its `started` entry).
    since: Instant,
}

impl Tail {
    fn has(&self, pos: Pos) -> bool {
        self.entries
            .binary_search_by_key(&pos, |(_, e)| e.pos())
            .is_ok()
    }
}

#[derive(Clone, Copy)]
struct TopicState {
    /// Its id: the prefix of all its keys in `chunks`.
    id: u32,
    /// The newest folded position: its chunks' newest, or its fold mark if
    /// higher (retention may have deleted what the mark covers). Never
    /// below what is on disk (it may be above, after retention or a lost
    /// unflushed write: that only sends a reading down the slower exact path).
    max: Option<Pos>,
}

impl Readings {
    /// Opens the readings' trees in `db` and the log in `wal_dir`, and replays
    /// the log; returns the damage the log had (reported, never passed over).
    /// `owed` is the store's flag for sled writes the journal cannot redo;
    /// `damage` its list of damage found, which reads add to.
    pub(super) fn open(
        db: &sled::Db,
        dir: &Files<'_>,
        owed: Arc<AtomicBool>,
        damage: Arc<Mutex<Vec<Damage>>>,
    ) -> Result<(Readings, Vec<Damage>), StoreError> {
        let names = db.open_tree("topic_names")?;
        let next_id = match names.last()? {
            Some((k, _)) => id_of(&k)?
                .checked_add(1)
                .ok_or_else(|| corrupt(&k, "topic ids exhausted"))?,
            None => 0,
        };
        let meta = db.open_tree("meta")?;
        // Only a guide for judging damage: one that cannot be read is
        // said, and done without (damage is then judged by the frames).
        let committed = meta.get(WAL_COMMITTED)?.and_then(|v| {
            let pos = Position::decode(&v);
            if pos.is_none() {
                tracing::warn!(
                    "the journal's note in sled cannot be read; judging the journal by its frames"
                );
            }
            pos
        });
        // The live part of the log is minutes of readings: read it whole.
        let mut frames = Vec::new();
        let (wal, mut found) = Wal::open(dir.wal, committed, |record, body| {
            frames.push((record, body.to_vec()));
            Ok(())
        })?;
        // The journal's frames saw more sled flushes completed than sled
        // has: sled lost them (its file cut, or damaged mid-way).
        let in_sled = committed.map_or(0, |c| c.generation);
        if wal.witnessed() > in_sled {
            found.push(Damage {
                file: dir.sled_log.to_owned(),
                offset: 0,
                bytes: 0,
                what: "behind the journal",
                loss: Loss::SledWentBack(wal.witnessed() - in_sled),
            });
        }
        let generation = in_sled.max(wal.witnessed());
        let segment_live = db.open_tree("segment_live")?;
        let catalogue_damaged = match check_catalogue(&segment_live, &meta)? {
            Some(missing) => {
                found.push(Damage {
                    file: dir.sled_log.to_owned(),
                    offset: 0,
                    bytes: missing,
                    what: "its catalogue of the chunks lost entries",
                    loss: Loss::Catalogue(missing),
                });
                true
            }
            None => false,
        };
        let readings = Readings {
            ids: db.open_tree("topic_ids")?,
            names,
            chunks: db.open_tree("chunks")?,
            segments: Arc::new(Segments::open_over(dir.segments, dir.base_segments)?),
            segment_live,
            catalogue_damaged,
            emptied: Arc::default(),
            damage,
            old_journal: db.open_tree("journal")?,
            meta,
            tiers: Tiers::open(db)?,
            folded: db.open_tree("folded")?,
            state: Arc::new(Mutex::new(State {
                wal,
                new_names: Vec::new(),
                durable_floor: 0,
                committed,
                generation,
                topics: HashMap::new(),
                next_id,
                tails: HashMap::new(),
                records: BTreeMap::new(),
                next_record: 0,
                started: VecDeque::new(),
            })),
            fold_after: FOLD_AFTER,
            owed,
        };
        readings.mend_topic_maps()?;
        readings.replay(frames)?;
        readings.backfill_rollups()?;
        Ok((readings, found))
    }

    /// Rebuilds the tails from the journal and folds them: a record's
    /// readings newer than their topic's chunks are its tail again; those at
    /// or below were folded before the restart (a fold writes a topic's whole
    /// tail in one batch). Records kept in sled by earlier versions are
    /// replayed first, then removed.
    fn replay(&self, frames: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        let mut state = self.lock();
        let now = Instant::now();
        let mut folded: HashMap<u32, Option<Pos>> = HashMap::new();
        let mut old = Vec::new();
        for kv in &self.old_journal {
            let (k, v) = kv?;
            let record = record_of(&k)?;
            self.replay_record(&mut state, &mut folded, record, &k, &v, now)?;
            old.push(k);
        }
        for (record, body) in frames {
            self.replay_record(
                &mut state,
                &mut folded,
                record,
                &record.to_be_bytes(),
                &body,
                now,
            )?;
        }
        state.next_record = state.next_record.max(state.wal.next_record());
        // Folded now, not when they would have waited FOLD_AFTER: their
        // clocks restart at open, so in a restart loop slow sensors' tails
        // would never come due and the log would grow.
        let ids: Vec<u32> = state.tails.keys().copied().collect();
        for id in ids {
            self.fold(&mut state, id)?;
        }
        // Their readings are all in chunks now, written to this same sled
        // before the removal: a crash keeps the removal only with them
        // (sled recovers a prefix of its log).
        for k in old {
            self.old_journal.remove(k)?;
        }
        Ok(())
    }

    /// Puts one record's readings that are not yet folded back in their tails.
    fn replay_record(
        &self,
        state: &mut State,
        folded: &mut HashMap<u32, Option<Pos>>,
        record: u64,
        context: &[u8],
        body: &[u8],
        now: Instant,
    ) -> Result<(), StoreError> {
        state.next_record = state.next_record.max(record + 1);
        let decoded = decode_record(context, body)?;
        for (id, name) in decoded.names {
            self.restore_name(state, id, &name)?;
        }
        let mut left = 0;
        for (id, entries) in decoded.topics {
            let max = if let Some(max) = folded.get(&id) {
                *max
            } else {
                let max = self
                    .folded_to(id, context)?
                    .max(self.last_chunk_max(id, context)?);
                folded.insert(id, max);
                max
            };
            let name = match self.names.get(id.to_be_bytes())? {
                Some(n) => String::from_utf8_lossy(&n).into_owned(),
                None => return Err(corrupt(context, "journal names an unknown topic")),
            };
            for e in entries {
                if max.is_some_and(|max| e.pos() <= max) {
                    continue;
                }
                if add_to_tail(state, id, &name, record, e, now) {
                    left += 1;
                }
            }
        }
        if left > 0 {
            state.records.insert(record, left);
        }
        Ok(())
    }

    /// A topic the log names but sled does not know: sled lost its last
    /// flushes (a cut or damaged file). Its name comes back from the log.
    fn restore_name(&self, state: &mut State, id: u32, name: &str) -> Result<(), StoreError> {
        if self.names.get(id.to_be_bytes())?.is_some() {
            return Ok(());
        }
        tracing::warn!(
            topic = name,
            id,
            "topic restored from the log: the database had lost it"
        );
        self.names.insert(id.to_be_bytes(), name.as_bytes())?;
        self.ids.insert(name, &id.to_be_bytes())?;
        state.next_id = state.next_id.max(id.saturating_add(1));
        Ok(())
    }

    /// sled keeps each topic twice (name → id, id → name) in two trees, and
    /// has been seen to come back from a flipped byte in its file with one of
    /// them empty and the other whole: every reading of those topics was
    /// then out of reach, silently. Each is mended from the other.
    fn mend_topic_maps(&self) -> Result<(), StoreError> {
        let mut mended = 0usize;
        for kv in &self.names {
            let (id, name) = kv?;
            if self.ids.get(&name)?.is_none() {
                self.ids.insert(&name, &id)?;
                mended += 1;
            }
        }
        for kv in &self.ids {
            let (name, id) = kv?;
            if self.names.get(&id)?.is_none() {
                self.names.insert(&id, &name)?;
                mended += 1;
            }
        }
        if mended > 0 {
            tracing::warn!(
                mended,
                "topics the database had in one of its two maps only: mended from the other"
            );
        }
        Ok(())
    }

    /// Syncs the log (the batch's `fdatasync`) and notes in `meta` how far
    /// it reaches, for a sled flush to make durable. Returns what such a
    /// flush, started after this, makes safe to let go: hand it to
    /// [`Readings::made_durable`] once the flush is done.
    pub(super) fn sync(&self) -> Result<Spent, StoreError> {
        let mut state = self.lock();
        let floor = state
            .records
            .keys()
            .next()
            .copied()
            .unwrap_or(state.next_record);
        // The note is durable with the next sled flush, which completes
        // one more.
        let generation = state.generation + 1;
        let pos = state.wal.sync(floor, generation)?;
        if state.committed != Some(pos) {
            self.meta.insert(WAL_COMMITTED, &pos.encode()[..])?;
            state.committed = Some(pos);
        }
        Ok(Spent {
            floor,
            segments: std::mem::take(&mut *lock(&self.emptied)),
            generation,
        })
    }

    /// Before sled's flush: the chunks its locators point at must be on
    /// disk first.
    pub(super) fn sync_segments(&self) -> Result<(), StoreError> {
        self.segments.sync()
    }

    /// The sled flush after [`Readings::sync`] is done: log files wholly
    /// below its floor may go, and the segments it found empty.
    pub(super) fn made_durable(&self, spent: Spent) -> Result<(), StoreError> {
        {
            let mut state = self.lock();
            let floor = state.durable_floor.max(spent.floor);
            state.durable_floor = floor;
            state.generation = state.generation.max(spent.generation);
            state.wal.remove_spent(floor)?;
        }
        let active = self.segments.active();
        for segment in spent.segments {
            if segment == active {
                // Still appended to: freed once closed (if still empty then).
                lock(&self.emptied).push(segment);
            } else if !self.catalogue_damaged
                && self.segment_live.get(segment.to_be_bytes())?.is_none()
            {
                self.segments.remove(segment)?;
            }
        }
        Ok(())
    }

    /// Sealed segments less than half of which is pointed at (the rest is
    /// old frames of rewritten or deleted chunks), at least `min` bytes:
    /// worth compacting.
    pub(super) fn compactable(&self, min: u64) -> Result<Vec<u32>, StoreError> {
        let mut out = Vec::new();
        if self.catalogue_damaged {
            // Its live bytes are not to be trusted: nothing is moved or freed.
            return Ok(out);
        }
        for (segment, size) in self.segments.sealed()? {
            let live = self
                .segment_live
                .get(segment.to_be_bytes())?
                .and_then(|v| v.as_ref().try_into().ok())
                .map_or(0, u64::from_be_bytes);
            if size >= min && live < size / 2 {
                out.push(segment);
            }
        }
        Ok(out)
    }

    /// Copies the chunks still pointed at among up to `max` frames of
    /// sealed segment `segment`, from byte `from` on, to the active segment,
    /// and points at the copies (one transaction, which also moves their
    /// live bytes): once every chunk has moved, the segment has none left
    /// and goes with the next flush, as any emptied segment does. The old
    /// frames stay until then, so a crash at any point loses nothing.
    /// Returns the chunks moved and where to go on from, if anywhere.
    pub(super) fn compact(
        &self,
        segment: u32,
        from: u64,
        max: usize,
    ) -> Result<(usize, Option<u64>), StoreError> {
        // Writers wait meanwhile: no chunk may change between its read here
        // and the transaction that points at its copy.
        let _writers = self.lock();
        if segment == self.segments.active() {
            return Ok((0, None));
        }
        let (frames, next) = self.segments.frames(segment, from, max)?;
        let mut change = Change::default();
        for (offset, key, bytes) in frames {
            let pointed = self
                .chunks
                .get(key)?
                .as_deref()
                .and_then(located)
                .is_some_and(|l| l.segment == segment && l.offset == offset);
            if pointed {
                let loc = self.segments.append(&key, &bytes)?;
                change.moves.push((key, locator(&bytes, loc), loc));
            }
        }
        let moved = change.moves.len();
        if moved > 0 {
            self.apply(&change)?;
        }
        if next.is_none() && self.segment_live.get(segment.to_be_bytes())?.is_none() {
            // Nothing points into it (any more): it goes with the next flush.
            lock(&self.emptied).push(segment);
        }
        Ok((moved, next))
    }

    /// Closes the active segment; if nothing points into it, it goes with
    /// the next flush.
    pub(super) fn seal_segment(&self) -> Result<(), StoreError> {
        let before = self.segments.active();
        self.segments.seal()?;
        if self.segments.active() != before
            && self.segment_live.get(before.to_be_bytes())?.is_none()
        {
            lock(&self.emptied).push(before);
        }
        Ok(())
    }

    /// After a clean stop's sled flush: an empty journal record, synced,
    /// that says that flush completed (no batch follows it to say so), so
    /// that a sled that later loses it is found.
    pub(super) fn witness(&self) -> Result<(), StoreError> {
        let mut state = self.lock();
        let (record, floor, generation) =
            (state.next_record, state.durable_floor, state.generation);
        state.wal.append(record, floor, generation, &[])?;
        state.next_record += 1;
        state.wal.sync(floor, generation)?;
        Ok(())
    }

    /// The sled flush after [`Readings::sync`] failed: what it would have
    /// let go waits for the next.
    pub(super) fn not_durable(&self, spent: Spent) {
        lock(&self.emptied).extend(spent.segments);
    }

    /// Sets aside the log files found damaged at open: call once what could
    /// be read of them is flushed into chunks.
    pub(super) fn quarantine(&self) -> Result<(), StoreError> {
        self.lock().wal.quarantine()
    }

    pub(super) fn segments(&self) -> &Segments {
        &self.segments
    }

    /// The oldest reading's time: the first chunk of each topic, or its tail
    /// for a topic with none yet.
    pub(super) fn oldest(&self) -> Result<Option<i64>, StoreError> {
        let mut oldest: Option<i64> = self
            .lock()
            .tails
            .values()
            .filter_map(|t| t.entries.first().map(|(_, e)| e.time))
            .min();
        for kv in &self.names {
            let id = id_of(&kv?.0)?;
            if let Some(kv) = self.chunks.scan_prefix(id.to_be_bytes()).next() {
                let (k, _) = kv?;
                let (_, (time, _)) = chunk::parse_key(&k).map_err(|e| corrupt(&k, e))?;
                oldest = Some(oldest.map_or(time, |o| o.min(time)));
            }
        }
        Ok(oldest)
    }

    /// Bytes in the journal's and the segments' files.
    pub(super) fn file_bytes(&self) -> u64 {
        self.journal_bytes() + self.segments.disk_bytes()
    }

    /// Whether sled's catalogue of the chunks was found damaged at open.
    pub(super) fn catalogue_damaged(&self) -> bool {
        self.catalogue_damaged
    }

    /// The journal's files are closed past `bytes`.
    pub(super) fn set_journal_file_size(&self, bytes: u64) {
        self.lock().wal.rotate_at(bytes);
    }

    /// Bytes in the journal's files.
    pub(super) fn journal_bytes(&self) -> u64 {
        self.lock().wal.disk_bytes()
    }

    /// The start of the oldest row of `tier`, of any topic.
    pub(super) fn oldest_rollup(&self, tier: Tier) -> Result<Option<i64>, StoreError> {
        let mut oldest = None;
        for kv in &self.names {
            let id = id_of(&kv?.0)?;
            if let Some(t) = self.tiers.oldest(id, tier)? {
                oldest = Some(oldest.map_or(t, |o: i64| o.min(t)));
            }
        }
        Ok(oldest)
    }

    /// The newest position folded into topic `id`'s chunks.
    fn folded_to(&self, id: u32, context: &[u8]) -> Result<Option<Pos>, StoreError> {
        let Some(v) = self.folded.get(id.to_be_bytes())? else {
            return Ok(None);
        };
        let v: [u8; 16] = v
            .as_ref()
            .try_into()
            .map_err(|_| corrupt(context, "bad fold mark"))?;
        let (time, seq) = v.split_at(8);
        let time = i64::from_be_bytes(time.try_into().unwrap_or_default());
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        Ok(Some((time, seq)))
    }

    /// The newest position in topic `id`'s chunks.
    fn last_chunk_max(&self, id: u32, context: &[u8]) -> Result<Option<Pos>, StoreError> {
        match self.chunks.scan_prefix(id.to_be_bytes()).next_back() {
            Some(kv) => Ok(Some(
                chunk::header(&kv?.1).map_err(|e| corrupt(context, e))?.1,
            )),
            None => Ok(None),
        }
    }

    /// Writes topic `id`'s tail into new chunks, with the topic's fold mark,
    /// in one sled transaction. Never into its last chunk: a chunk is written
    /// once (a rewrite would leave the old frame as garbage in its segment).
    fn fold(&self, state: &mut State, id: u32) -> Result<(), StoreError> {
        // The tail stays in memory until its readings are written: a failed
        // write leaves everything as it was (the journal still holds them).
        let Some(tail) = state.tails.get(&id) else {
            return Ok(());
        };
        let entries: Vec<Entry> = tail.entries.iter().map(|(_, e)| e.clone()).collect();
        let Some(newest) = entries.last().map(Entry::pos) else {
            return Ok(());
        };
        let mut change = Change::default();
        if self
            .last_chunk_max(id, &id.to_be_bytes())?
            .is_some_and(|last| last >= entries[0].pos())
        {
            // Retention or a reopen moved things under us: take the exact
            // path for each (idempotent, so a retry after a failure part
            // way is harmless).
            for e in &entries {
                self.insert_old(id, e.clone())?;
            }
        } else {
            for part in entries.chunks(CHUNK_MAX) {
                change.put(id, part.to_vec());
            }
            change.added(id, &entries);
        }
        change.mark = Some((id, newest));
        self.apply(&change)?;
        let Some(tail) = state.tails.remove(&id) else {
            return Ok(());
        };
        if let Some(t) = state.topics.get_mut(&tail.name) {
            t.max = t.max.max(Some(newest));
        }
        for (record, _) in &tail.entries {
            if let Some(left) = state.records.get_mut(record) {
                *left -= 1;
                if *left == 0 {
                    state.records.remove(record);
                }
            }
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every topic with readings (or that had some: ids are never reused).
    pub(super) fn topics(&self) -> Result<Vec<String>, StoreError> {
        self.ids
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub(super) fn writer(&self) -> ReadingWriter {
        ReadingWriter {
            readings: self.clone(),
            pending: HashMap::new(),
        }
    }

    /// The topic's id and newest position, creating the topic if it is new.
    fn topic(&self, state: &mut State, name: &str) -> Result<TopicState, StoreError> {
        if let Some(t) = state.topics.get(name) {
            return Ok(*t);
        }
        let t = if let Some(v) = self.ids.get(name)? {
            let id = id_of(&v)?;
            // The fold mark too: what retention deleted stays "stored" (a
            // reading at or below it takes the exact path, never the journal,
            // whose replay skips what the mark covers).
            let max = self
                .last_chunk_max(id, name.as_bytes())?
                .max(self.folded_to(id, name.as_bytes())?);
            TopicState { id, max }
        } else {
            let id = state.next_id;
            state.next_id = id
                .checked_add(1)
                .ok_or_else(|| corrupt(name, "topic ids exhausted"))?;
            // Name first: a crash may keep a name without its chunks, never
            // a chunk without its name.
            self.names.insert(id.to_be_bytes(), name.as_bytes())?;
            self.ids.insert(name, &id.to_be_bytes())?;
            state.new_names.push((id, name.to_owned()));
            TopicState { id, max: None }
        };
        state.topics.insert(name.to_owned(), t);
        Ok(t)
    }

    /// The chunk that holds `pos` if any chunk of topic `id` does: the last one
    /// starting at or before it.
    fn chunk_at(&self, id: u32, pos: Pos) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self
            .chunks
            .range(chunk::key(id, FIRST)..=chunk::key(id, pos))
            .next_back()
            .transpose()?)
    }

    /// Stores one reading behind the newest of its topic: merged into the
    /// chunk that covers its place, unless it is there already.
    fn insert_old(&self, id: u32, e: Entry) -> Result<Inserted, StoreError> {
        let inserted = self.insert_into_chunks(id, e);
        // After the write: a flush that took the flag before it leaves the
        // flag set for the next one.
        self.owed.store(true, std::sync::atomic::Ordering::Release);
        inserted
    }

    fn insert_into_chunks(&self, id: u32, e: Entry) -> Result<Inserted, StoreError> {
        let pos = e.pos();
        let mut change = Change::default();
        let Some((k, v)) = self.chunk_at(id, pos)? else {
            // Before the topic's first chunk: a chunk of its own.
            change.added(id, std::slice::from_ref(&e));
            change.put(id, vec![e]);
            self.apply(&change)?;
            return Ok(Inserted::New);
        };
        let mut entries = self.load(&k, &v)?;
        match entries.binary_search_by_key(&pos, Entry::pos) {
            Ok(i) => Ok(same_or_conflict(&entries[i], &e)),
            Err(i) => {
                // i > 0 (the chunk's first entry is at or before pos, and not
                // at it), unless the chunk was unreadable.
                change.added(id, std::slice::from_ref(&e));
                entries.insert(i, e);
                if entries.len() > CHUNK_MAX {
                    // Split, so that a stream of late readings (a replayed
                    // backlog, a clock set back) cannot grow one chunk without
                    // bound. One transaction: a crash keeps both halves or
                    // neither, never a gap.
                    let tail = entries.split_off(entries.len() / 2);
                    change.put(id, tail);
                }
                if chunk::key(id, entries[0].pos())[..] != k[..] {
                    change.removes.push(k.to_vec());
                }
                change.put(id, entries);
                self.apply(&change)?;
                Ok(Inserted::New)
            }
        }
    }

    /// Writes a [`Change`] as one sled transaction. Each new chunk goes to
    /// the active segment first: a frame nothing points at yet, garbage if
    /// the transaction fails. Then locators, removals, the fold mark and the
    /// live bytes of every segment touched, together.
    fn apply(&self, change: &Change) -> Result<(), StoreError> {
        let mut puts = Vec::with_capacity(change.puts.len() + change.moves.len());
        for (key, entries) in &change.puts {
            let bytes = chunk::encode(entries);
            let loc = self.segments.append(key, &bytes)?;
            puts.push((key, locator(&bytes, loc), loc));
        }
        for (key, value, loc) in &change.moves {
            puts.push((key, value.clone(), *loc));
        }
        let mut rollups = Vec::new();
        for (id, adds) in &change.adds {
            let name = self.names.get(id.to_be_bytes())?;
            let ends = name.is_some_and(|n| rollup::keeps_ends(&String::from_utf8_lossy(&n)));
            rollups.extend(self.tiers.writes(*id, ends, adds)?);
        }
        let mark = change.mark.map(|(id, (time, seq))| {
            let mut v = [0u8; 16];
            v[..8].copy_from_slice(&time.to_be_bytes());
            v[8..].copy_from_slice(&seq.to_be_bytes());
            (id, v)
        });
        // Sled may run the closure more than once: it starts afresh each time.
        let emptied = std::cell::RefCell::new(Vec::new());
        let (minutes, hours) = self.tiers.trees();
        (
            &self.chunks,
            &self.folded,
            &self.segment_live,
            minutes,
            hours,
            &self.meta,
        )
            .transaction(|(chunks, folded, live, minutes, hours, meta)| {
                for (tier, key, value) in &rollups {
                    let tree = match tier {
                        Tier::Minute => minutes,
                        Tier::Hour => hours,
                    };
                    tree.insert(&key[..], &value[..])?;
                }
                let mut delta: HashMap<u32, i64> = HashMap::new();
                let freed = |old: Option<sled::IVec>, delta: &mut HashMap<u32, i64>| {
                    if let Some(l) = old.as_deref().and_then(located) {
                        *delta.entry(l.segment).or_default() -= frame_bytes(l);
                    }
                };
                for (key, value, loc) in &puts {
                    *delta.entry(loc.segment).or_default() += frame_bytes(*loc);
                    freed(chunks.insert(&key[..], &value[..])?, &mut delta);
                }
                for key in &change.removes {
                    freed(chunks.remove(&key[..])?, &mut delta);
                }
                if let Some((id, v)) = &mark {
                    folded.insert(&id.to_be_bytes()[..], &v[..])?;
                }
                let mut now_empty = Vec::new();
                let total: i64 = delta.values().sum();
                if total != 0 {
                    let was = meta
                        .get(LIVE_TOTAL)?
                        .and_then(|v| v.as_ref().try_into().ok())
                        .map_or(0, u64::from_be_bytes);
                    let now = was.saturating_add_signed(total);
                    meta.insert(LIVE_TOTAL, &now.to_be_bytes()[..])?;
                }
                for (segment, d) in delta {
                    let k = segment.to_be_bytes();
                    let was = live
                        .get(k)?
                        .and_then(|v| v.as_ref().try_into().ok())
                        .map_or(0, u64::from_be_bytes);
                    let now = was.saturating_add_signed(d);
                    if now == 0 {
                        live.remove(&k[..])?;
                        now_empty.push(segment);
                    } else {
                        live.insert(&k[..], &now.to_be_bytes()[..])?;
                    }
                }
                *emptied.borrow_mut() = now_empty;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::from(e),
                sled::transaction::TransactionError::Abort(()) => {
                    corrupt("chunks", "transaction aborted")
                }
            })?;
        lock(&self.emptied).extend(emptied.into_inner());
        Ok(())
    }

    /// A chunk's entries: read from its segment (checked), or inline in sled
    /// (stores from before segments). A damaged frame is reported (once,
    /// with file and offset, counted in the store's damage) and reads as an
    /// empty chunk: the rest is served.
    fn load(&self, k: &[u8], v: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let Some(loc) = located(v) else {
            return chunk::decode(k, v).map_err(|e| corrupt(k, e));
        };
        match self.segments.read(k, loc)? {
            Ok(bytes) => chunk::decode(k, &bytes).map_err(|e| corrupt(k, e)),
            Err(bad) => {
                let count = chunk::header(v).map_or(0, |(count, _)| count);
                let mut damage = lock(&self.damage);
                if !damage
                    .iter()
                    .any(|d| d.file == bad.file && d.offset == bad.offset)
                {
                    let d = Damage {
                        file: bad.file,
                        offset: bad.offset,
                        bytes: frame_bytes(loc).cast_unsigned(),
                        what: bad.what,
                        loss: Loss::Readings(count),
                    };
                    tracing::error!(damage = %d, "STORAGE DAMAGED: stored readings lost");
                    damage.push(d);
                }
                Ok(Vec::new())
            }
        }
    }

    /// Deletes about `max` readings timestamped before `cutoff` (whole chunks,
    /// and trims the chunk that straddles it); returns how many.
    pub(super) fn expire(&self, cutoff: Timestamp, max: usize) -> Result<usize, StoreError> {
        let cutoff = cutoff.micros();
        {
            // A tail holding readings to delete goes into chunks first (in normal
            // running tails are minutes old and the cutoff days back: none).
            let mut state = self.lock();
            let old: Vec<u32> = state
                .tails
                .iter()
                .filter(|(_, t)| t.entries.first().is_some_and(|(_, e)| e.time < cutoff))
                .map(|(id, _)| *id)
                .collect();
            for id in old {
                self.fold(&mut state, id)?;
            }
        }
        let mut deleted = 0;
        for kv in &self.names {
            let id = id_of(&kv?.0)?;
            let _writers = self.lock();
            let mut change = Change::default();
            for kv in self.chunks.scan_prefix(id.to_be_bytes()) {
                if deleted >= max {
                    break;
                }
                let (k, v) = kv?;
                let (count, (last, _)) = chunk::header(&v).map_err(|e| corrupt(&k, e))?;
                if last < cutoff {
                    change.removes.push(k.to_vec());
                    deleted += count;
                    continue;
                }
                let mut entries = self.load(&k, &v)?;
                let gone = entries.partition_point(|e| e.time < cutoff);
                if gone > 0 {
                    // Re-keyed under its new first reading, in the same
                    // transaction: a crash between would lose what is kept.
                    let kept = entries.split_off(gone);
                    change.removes.push(k.to_vec());
                    if !kept.is_empty() {
                        change.put(id, kept);
                    }
                    deleted += gone;
                }
                break;
            }
            self.apply(&change)?;
            if deleted >= max {
                break;
            }
        }
        Ok(deleted)
    }

    /// Counts the chunks of a store made before rollups into them, once,
    /// topic by topic. Each topic's entries are cleared first, so a run cut
    /// short simply runs again at the next open.
    fn backfill_rollups(&self) -> Result<(), StoreError> {
        if self.meta.get(ROLLUPS_COUNTED)?.is_some() {
            return Ok(());
        }
        let _writers = self.lock();
        let mut counted = 0usize;
        for kv in &self.names {
            let id = id_of(&kv?.0)?;
            self.tiers.clear(id)?;
            for kv in self.chunks.scan_prefix(id.to_be_bytes()) {
                let (k, v) = kv?;
                let entries = self.load(&k, &v)?;
                let mut change = Change::default();
                change.added(id, &entries);
                self.apply(&change)?;
                counted += entries.len();
            }
        }
        self.meta.insert(ROLLUPS_COUNTED, &[1][..])?;
        if counted > 0 {
            tracing::info!(
                readings = counted,
                "rollups: the readings stored before them are now counted in them"
            );
        }
        Ok(())
    }

    /// Topic `topic`'s rows of `tier` for buckets meeting `[since, until]`:
    /// its chunks' (kept in the tier) with its tail's (not folded yet) added.
    pub(super) fn rollups(
        &self,
        topic: &str,
        tier: Tier,
        since: i64,
        until: i64,
    ) -> Result<Vec<Row>, StoreError> {
        let Some(id) = self.ids.get(topic)?.map(|v| id_of(&v)).transpose()? else {
            return Ok(Vec::new());
        };
        // Held across both reads: a fold between them would count its
        // readings twice, or not at all.
        let state = self.lock();
        let rows = self.tiers.range(id, tier, since, until)?;
        let mut tail_rows = Vec::new();
        for (_, e) in state.tails.get(&id).map_or(&[][..], |t| &t.entries[..]) {
            let start = tier.bucket(e.time);
            if start <= until && start.saturating_add(tier.width()) > since {
                rollup::add(&mut tail_rows, tier, e.time, e.value);
            }
        }
        if !rollup::keeps_ends(topic) {
            // As the tier's entries keep them: only a meter's.
            for r in &mut tail_rows {
                (r.first, r.last) = (None, None);
            }
        }
        Ok(rollup::merge_runs([rows, tail_rows]))
    }

    /// The time of topic `topic`'s oldest reading kept raw, and counted in
    /// each tier (finest first); `None` where none is.
    pub(super) fn oldest_kept(&self, topic: &str) -> Result<[Option<i64>; 3], StoreError> {
        let Some(id) = self.ids.get(topic)?.map(|v| id_of(&v)).transpose()? else {
            return Ok([None; 3]);
        };
        let state = self.lock();
        let in_tail = state
            .tails
            .get(&id)
            .and_then(|t| t.entries.first())
            .map(|(_, e)| e.time);
        let raw = match self.chunks.scan_prefix(id.to_be_bytes()).keys().next() {
            Some(k) => Some(
                chunk::parse_key(&k?)
                    .map_err(|e| corrupt("chunks", e))?
                    .1
                     .0,
            ),
            None => in_tail,
        };
        let tier =
            |t| -> Result<Option<i64>, StoreError> { Ok(self.tiers.oldest(id, t)?.or(in_tail)) };
        Ok([raw, tier(Tier::Minute)?, tier(Tier::Hour)?])
    }

    /// Removes rows of `tier` for buckets that end before `cutoff`, about
    /// `max` at a time; returns how many. The raw readings are not touched.
    pub(super) fn expire_rollups(
        &self,
        tier: Tier,
        cutoff: Timestamp,
        max: usize,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        for kv in &self.names {
            let id = id_of(&kv?.0)?;
            let _writers = self.lock();
            removed += self
                .tiers
                .expire(id, tier, cutoff.micros(), max.saturating_sub(removed))?;
            if removed >= max {
                break;
            }
        }
        Ok(removed)
    }

    /// Per topic, the seq of its newest stored reading (topics whose newest
    /// has one).
    pub(super) fn last_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for kv in &self.ids {
            let (name, id) = kv?;
            if let Some(seq) = self
                .before(id_of(&id)?, (i64::MAX, u64::MAX))?
                .and_then(|e| e.seq)
            {
                out.push((String::from_utf8_lossy(&name).into_owned(), seq));
            }
        }
        Ok(out)
    }

    /// Bytes of keys and values each tier keeps.
    pub(super) fn rollup_bytes(&self, tier: Tier) -> Result<u64, StoreError> {
        self.tiers.data_bytes(tier)
    }

    pub(super) fn select<'a>(&self, query: &'a Query) -> Select<'a> {
        Select::new(self.clone(), query)
    }

    /// The first reading of topic `id` at or after `pos`: in its chunks, or
    /// else in its tail (which is newer than all of them).
    fn first_from(&self, id: u32, pos: Pos) -> Result<Option<Entry>, StoreError> {
        // The tail first: a fold after this moves it into the chunks read
        // next, so the reading is found in one or the other.
        let in_tail = self.lock().tails.get(&id).and_then(|tail| {
            let i = tail.entries.partition_point(|(_, e)| e.pos() < pos);
            tail.entries.get(i).map(|(_, e)| e.clone())
        });
        match self.first_in_chunks(id, pos)? {
            Some(e) => Ok(Some(e)),
            None => Ok(in_tail),
        }
    }

    fn first_in_chunks(&self, id: u32, pos: Pos) -> Result<Option<Entry>, StoreError> {
        // At most two chunks: the one covering pos, and the one after it.
        let start = match self.chunk_at(id, pos)? {
            Some((k, _)) => k.to_vec(),
            None => chunk::key(id, pos).to_vec(),
        };
        for kv in self.chunks.range(start..).take(2) {
            let (k, v) = kv?;
            if !k.starts_with(&id.to_be_bytes()) {
                break;
            }
            let entries = self.load(&k, &v)?;
            if let Some(e) = entries.into_iter().find(|e| e.pos() >= pos) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Per topic (in name order), the last reading of every `step`-long slot
    /// (aligned to multiples of `step`) from `since` on: what a sparkline
    /// shows, read at a cost set by the number of slots, not of readings.
    pub(super) fn thinned(
        self,
        since: i64,
        step: i64,
    ) -> impl Iterator<Item = Result<StoredReading, StoreError>> {
        let step = step.max(1);
        self.ids.iter().flat_map(move |kv| {
            let per_topic = || -> Result<Vec<StoredReading>, StoreError> {
                let (name, id) = kv?;
                let (topic, id) = (String::from_utf8_lossy(&name).into_owned(), id_of(&id)?);
                let implied = Implied::of(&topic);
                let mut out = Vec::new();
                let mut from = since;
                // The next reading at or after `from` says which slot has data
                // next; the last reading before that slot's end is its point.
                while let Some(next) = self.first_from(id, (from, 0))? {
                    let slot_end = next
                        .time
                        .div_euclid(step)
                        .saturating_add(1)
                        .saturating_mul(step);
                    if let Some(last) = self.before(id, (slot_end, 0))? {
                        out.push(implied.reading(&topic, last)?);
                    }
                    if slot_end == i64::MAX {
                        break;
                    }
                    from = slot_end;
                }
                Ok(out)
            };
            match per_topic() {
                Ok(v) => v.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            }
        })
    }

    /// The last reading of topic `id` before `pos`: in its tail (newer than its
    /// chunks) if the tail has one, else in its chunks.
    fn before(&self, id: u32, pos: Pos) -> Result<Option<Entry>, StoreError> {
        {
            let state = self.lock();
            if let Some(tail) = state.tails.get(&id) {
                let i = tail.entries.partition_point(|(_, e)| e.pos() < pos);
                if let Some((_, e)) = i.checked_sub(1).and_then(|i| tail.entries.get(i)) {
                    return Ok(Some(e.clone()));
                }
            }
        }
        self.before_in_chunks(id, pos)
    }

    fn before_in_chunks(&self, id: u32, pos: Pos) -> Result<Option<Entry>, StoreError> {
        // At most two chunks: the one covering pos, and the one before it.
        for kv in self
            .chunks
            .range(chunk::key(id, FIRST)..=chunk::key(id, pos))
            .rev()
            .take(2)
        {
            let (k, v) = kv?;
            let entries = self.load(&k, &v)?;
            if let Some(e) = entries.into_iter().rev().find(|e| e.pos() < pos) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }
}

/// The folders of the readings' own files.
pub(super) struct Files<'a> {
    /// The journal (`wal.rs`).
    pub wal: &'a Path,
    /// The chunks (`segments.rs`).
    pub segments: &'a Path,
    /// A read-only open: the store's own segments, read under `segments`.
    pub base_segments: Option<&'a Path>,
    /// sled's log file: named when sled is found behind the journal.
    pub sled_log: &'a Path,
}

/// What a completed sled flush lets go (see [`Readings::sync`]).
pub(super) struct Spent {
    /// Journal records below it are in chunks, durably.
    floor: u64,
    /// Segments no locator points at any more.
    segments: Vec<u32>,
    /// The sled flush it is for.
    generation: u64,
}

/// Chunk changes written together by [`Readings::apply`].
#[derive(Default)]
struct Change {
    /// New chunks, each under its first reading's key (replacing any chunk there).
    puts: Vec<([u8; KEY_LEN], Vec<Entry>)>,
    /// Chunks removed, by key.
    removes: Vec<Vec<u8>>,
    /// A topic's new fold mark.
    mark: Option<(u32, Pos)>,
    /// Readings new to a topic's chunks: added to its rollups.
    adds: Vec<(u32, Vec<(Pos, f64)>)>,
    /// Chunks whose frame was copied (compaction): key, new locator, and
    /// where it now is.
    moves: Vec<([u8; KEY_LEN], Vec<u8>, Loc)>,
}

impl Change {
    /// `entries`: sorted, not empty.
    fn put(&mut self, id: u32, entries: Vec<Entry>) {
        self.puts.push((chunk::key(id, entries[0].pos()), entries));
    }

    /// `entries` are new to topic `id`'s chunks: they count in its rollups.
    fn added(&mut self, id: u32, entries: &[Entry]) {
        self.adds
            .push((id, entries.iter().map(|e| (e.pos(), e.value)).collect()));
    }
}

/// A chunk's value in sled once its bytes are in a segment: the chunk's own
/// header (count, newest position: what scans read without the chunk)
/// behind [`chunk::LOCATED`], then segment, offset and length (u32 LE each).
fn locator(chunk: &[u8], loc: Loc) -> Vec<u8> {
    let mut v = Vec::with_capacity(chunk::HEADER + 12);
    v.push(chunk::LOCATED);
    v.extend_from_slice(&chunk[1..chunk::HEADER]);
    for n in [loc.segment, loc.offset, loc.len] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v
}

/// Where a chunk is, if its value is a [`locator`].
fn located(v: &[u8]) -> Option<Loc> {
    if v.first() != Some(&chunk::LOCATED) || v.len() != chunk::HEADER + 12 {
        return None;
    }
    let n = |i: usize| {
        let at = chunk::HEADER + 4 * i;
        u32::from_le_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]])
    };
    Some(Loc {
        segment: n(0),
        offset: n(1),
        len: n(2),
    })
}

/// A frame's bytes in its segment, signed for live-byte deltas.
fn frame_bytes(loc: Loc) -> i64 {
    i64::try_from(loc.frame_bytes()).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A reading found at its own position: a redelivery (the same value and
/// seq), or another reading claiming its identity.
fn same_or_conflict(stored: &Entry, new: &Entry) -> Inserted {
    if stored.value.to_bits() == new.value.to_bits() && stored.seq == new.seq {
        Inserted::Duplicate
    } else {
        Inserted::Conflict
    }
}

/// Writes one batch of readings; nothing is durable until the store's flush.
pub struct ReadingWriter {
    /// The trees it writes to (a cheap clone).
    readings: Readings,
    /// Per topic id: the topic, and its new readings newer than anything stored,
    /// in order.
    pending: HashMap<u32, (String, Vec<Entry>)>,
}

impl ReadingWriter {
    /// Stores a reading unless the same one (topic, time, seq) is stored or
    /// pending already.
    pub fn insert(&mut self, r: &StoredReading) -> Result<Inserted, StoreError> {
        let implied = Implied::of(&r.topic);
        let e = implied.entry(r);
        let pos = e.pos();
        let mut state = self.readings.lock();
        let t = self.readings.topic(&mut state, &r.topic)?;
        if t.max.is_some_and(|max| pos <= max) {
            return self.readings.insert_old(t.id, e);
        }
        if let Some(tail) = state.tails.get(&t.id) {
            if let Ok(i) = tail.entries.binary_search_by_key(&pos, |(_, e)| e.pos()) {
                return Ok(same_or_conflict(&tail.entries[i].1, &e));
            }
        }
        drop(state);
        let (_, pending) = self
            .pending
            .entry(t.id)
            .or_insert_with(|| (r.topic.clone(), Vec::new()));
        if pending.last().is_none_or(|last| last.pos() < pos) {
            pending.push(e);
            return Ok(Inserted::New);
        }
        match pending.binary_search_by_key(&pos, Entry::pos) {
            Ok(i) => Ok(same_or_conflict(&pending[i], &e)),
            Err(i) => {
                pending.insert(i, e);
                Ok(Inserted::New)
            }
        }
    }

    /// The readings just before and just after `r`'s place in its sensor's
    /// history, stored or pending (a reading already there counts as "after").
    pub fn neighbours(
        &self,
        r: &StoredReading,
    ) -> Result<(Option<StoredReading>, Option<StoredReading>), StoreError> {
        let implied = Implied::of(&r.topic);
        let pos = implied.entry(r).pos();
        let Some(id) = self
            .readings
            .ids
            .get(&r.topic)?
            .map(|v| id_of(&v))
            .transpose()?
        else {
            return Ok((None, None));
        };
        let mut before = self.readings.before(id, pos)?;
        let mut after = self.readings.first_from(id, pos)?;
        if let Some((_, pending)) = self.pending.get(&id) {
            let i = pending.partition_point(|e| e.pos() < pos);
            if let Some(p) = i.checked_sub(1).and_then(|i| pending.get(i)) {
                if before.as_ref().is_none_or(|b| b.pos() < p.pos()) {
                    before = Some(p.clone());
                }
            }
            if let Some(p) = pending.get(i) {
                if after.as_ref().is_none_or(|a| a.pos() > p.pos()) {
                    after = Some(p.clone());
                }
            }
        }
        let convert = |e: Option<Entry>| e.map(|e| implied.reading(&r.topic, e)).transpose();
        Ok((convert(before)?, convert(after)?))
    }

    /// Writes the pending readings as one journal record and adds them to
    /// their topics' tails; folds the tails that now hold a chunk's worth, and
    /// those waiting longer than `FOLD_AFTER`.
    pub fn finish(self) -> Result<(), StoreError> {
        let readings = &self.readings;
        let mut state = readings.lock();
        let (floor, generation) = (state.durable_floor, state.generation);
        let record = state.next_record;
        let now = Instant::now();
        let mut journaled = Vec::new();
        let mut added = 0;
        for (id, (name, entries)) in self.pending {
            let max = state.topics.get(&name).and_then(|t| t.max);
            let tail = state.tails.get(&id);
            let mut new = Vec::with_capacity(entries.len());
            for e in entries {
                if max.is_some_and(|max| e.pos() <= max) {
                    // Chunks moved on under this writer (retention, another
                    // writer's fold): the exact path.
                    readings.insert_old(id, e)?;
                } else if !tail.is_some_and(|t| t.has(e.pos())) {
                    new.push(e);
                }
            }
            added += new.len();
            if !new.is_empty() {
                journaled.push((id, name, new));
            }
        }
        if added == 0 {
            return readings.fold_waiting(&mut state, now);
        }
        let body = encode_record(&state.new_names, &journaled);
        state.wal.append(record, floor, generation, &body)?;
        state.new_names.clear();
        // Only now, with the record written, do the tails hold its readings.
        state.records.insert(record, added);
        state.next_record += 1;
        let mut full = Vec::new();
        for (id, name, new) in journaled {
            for e in new {
                add_to_tail(&mut state, id, &name, record, e, now);
            }
            if state
                .tails
                .get(&id)
                .is_some_and(|t| t.entries.len() >= CHUNK_MAX)
            {
                full.push(id);
            }
        }
        for id in full {
            readings.fold(&mut state, id)?;
        }
        readings.fold_waiting(&mut state, now)
    }
}

impl Readings {
    /// Folds the tails that have waited `fold_after`.
    fn fold_waiting(&self, state: &mut State, now: Instant) -> Result<(), StoreError> {
        while let Some(&(since, id)) = state.started.front() {
            if now.duration_since(since) < self.fold_after {
                break;
            }
            if state.tails.get(&id).is_some_and(|t| t.since == since) {
                self.fold(state, id)?;
            }
            state.started.pop_front();
        }
        Ok(())
    }
}

/// Adds `e` (newer than its topic's chunks) to topic `id`'s tail, from journal
/// record `record`; false if the tail has it already.
fn add_to_tail(
    state: &mut State,
    id: u32,
    name: &str,
    record: u64,
    e: Entry,
    now: Instant,
) -> bool {
    let tail = state.tails.entry(id).or_insert_with(|| Tail {
        name: name.to_owned(),
        entries: Vec::new(),
        since: now,
    });
    let pos = e.pos();
    let Err(i) = tail.entries.binary_search_by_key(&pos, |(_, e)| e.pos()) else {
        return false;
    };
    if tail.entries.is_empty() {
        tail.since = now;
        state.started.push_back((now, id));
    }
    tail.entries.insert(i, (record, e));
    true
}

/// `meta` key: present once the chunks of a store made before rollups are
/// counted in them ([`Readings::backfill_rollups`]).
const ROLLUPS_COUNTED: &[u8] = b"rollups_counted";

/// `meta` key: the log's [`Position`] at the last flush.
const WAL_COMMITTED: &[u8] = b"wal_committed";
/// `meta` key: the sum of `segment_live` (u64 BE), changed in the same
/// transactions. sled has been seen to come back from a flipped byte in its
/// file with whole trees empty (`chunks`, `segment_live`, the topic ids) and
/// its notes current, without a word: this sum, in another tree, is how that
/// is found.
const LIVE_TOTAL: &[u8] = b"segment_live_total";

/// `None` if the sum of `segment_live` is what `meta` says it is (a store
/// from before the sum gets it now); else how many bytes of chunks sled's
/// catalogue lost.
fn check_catalogue(
    segment_live: &sled::Tree,
    meta: &sled::Tree,
) -> Result<Option<u64>, StoreError> {
    let mut sum = 0u64;
    for kv in segment_live {
        let (_, v) = kv?;
        sum = sum.saturating_add(v.as_ref().try_into().ok().map_or(0, u64::from_be_bytes));
    }
    match meta.get(LIVE_TOTAL)? {
        None => {
            meta.insert(LIVE_TOTAL, &sum.to_be_bytes()[..])?;
            Ok(None)
        }
        Some(v) => {
            let noted = v.as_ref().try_into().ok().map_or(0, u64::from_be_bytes);
            Ok((noted != sum).then(|| noted.abs_diff(sum)))
        }
    }
}

/// Readings to and from entries, by what their topic implies.
impl Implied<'_> {
    fn entry(&self, r: &StoredReading) -> Entry {
        let unless =
            |have: &str, implied: Option<&str>| (Some(have) != implied).then(|| have.to_owned());
        Entry {
            time: r.reading.timestamp.micros(),
            seq: r.reading.seq,
            value: r.reading.value,
            received_at: r.received_at.micros(),
            qos: r.qos,
            unit: unless(&r.reading.unit, self.unit),
            sensor_id: unless(&r.reading.sensor_id, self.sensor_id),
            sensor_type: unless(&r.reading.sensor_type, self.sensor_type),
        }
    }

    fn reading(&self, topic: &str, e: Entry) -> Result<StoredReading, StoreError> {
        let field = |stored: Option<String>, implied: Option<&str>| {
            stored
                .or_else(|| implied.map(str::to_owned))
                .ok_or_else(|| corrupt(topic, "field neither stored nor implied"))
        };
        let time =
            |us| Timestamp::from_micros(us).ok_or_else(|| corrupt(topic, "time out of range"));
        Ok(StoredReading {
            topic: topic.to_owned(),
            reading: Reading {
                sensor_id: field(e.sensor_id, self.sensor_id)?,
                sensor_type: field(e.sensor_type, self.sensor_type)?,
                value: e.value,
                unit: field(e.unit, self.unit)?,
                timestamp: time(e.time)?,
                seq: e.seq,
            },
            received_at: time(e.received_at)?,
            qos: e.qos,
        })
    }
}

fn id_of(bytes: &[u8]) -> Result<u32, StoreError> {
    bytes
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| corrupt(bytes, "bad topic id"))
}

fn corrupt(key: impl AsRef<[u8]>, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key.as_ref()).into_owned(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::record::{RECORD_V1, RECORD_V2};
    use super::*;

    fn open(db: &sled::Db, dir: &Path) -> Readings {
        open_found(db, dir).0
    }

    /// [`open`], with the damage the open found.
    fn open_found(db: &sled::Db, dir: &Path) -> (Readings, Vec<Damage>) {
        let files = Files {
            wal: &dir.join("wal"),
            segments: &dir.join("segments"),
            sled_log: &dir.join("db"),
            base_segments: None,
        };
        Readings::open(db, &files, Arc::default(), Arc::default()).unwrap()
    }

    fn reading(seq: u64) -> StoredReading {
        StoredReading {
            topic: "building/floor1/room101/temperature/temp_001".into(),
            reading: Reading {
                sensor_id: "temp_001".into(),
                sensor_type: "temperature".into(),
                value: 20.0 + seq as f64 / 100.0,
                unit: "celsius".into(),
                timestamp: Timestamp::from_micros(
                    1_790_000_000_000_000 + seq.cast_signed() * 1_000_000,
                )
                .unwrap(),
                seq: Some(seq),
            },
            received_at: Timestamp::from_micros(1_790_000_000_000_000).unwrap(),
            qos: 1,
        }
    }

    /// A store from before rollups (no tiers, no mark in `meta`) has its
    /// chunks counted into them at its first open, once: what a fold would
    /// have written, and the same again after another open.
    #[test]
    fn the_chunks_of_a_store_from_before_rollups_are_counted_in_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let readings = open(&db, dir.path());
        let mut writer = readings.writer();
        for seq in 1..=3 * CHUNK_MAX as u64 {
            writer.insert(&reading(seq)).unwrap();
        }
        writer.finish().unwrap();
        let topic = reading(1).topic;
        let all = |r: &Readings| {
            Tier::ALL.map(|tier| {
                r.rollups(&topic, tier, i64::MIN / 2, i64::MAX / 2)
                    .unwrap()
                    .iter()
                    .map(|r| (r.start, r.n, r.min, r.max, r.first, r.last))
                    .collect::<Vec<_>>()
            })
        };
        let by_folds = all(&readings);
        assert_eq!(
            by_folds[0].iter().map(|r| r.1).sum::<u64>(),
            3 * CHUNK_MAX as u64
        );
        // What the previous release left: chunks, and neither tiers nor mark.
        readings.meta.remove(ROLLUPS_COUNTED).unwrap();
        readings.tiers.clear(0).unwrap();
        assert!(all(&readings).iter().all(Vec::is_empty));
        drop(readings);
        let readings = open(&db, dir.path());
        assert_eq!(all(&readings), by_folds);
        drop(readings);
        let readings = open(&db, dir.path());
        assert_eq!(all(&readings), by_folds, "counted in twice");
    }

    /// Live ingest writes small batches; the chunks they are folded into
    /// never grow past `CHUNK_MAX`.
    #[test]
    fn batches_fill_chunks_of_at_most_chunk_max() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let readings = open(&db, dir.path());
        let mut seq = 0;
        for batch in [1, 64, 3, 7, 50, 1, 130, 2] {
            let mut writer = readings.writer();
            for _ in 0..batch {
                seq += 1;
                assert_eq!(writer.insert(&reading(seq)).unwrap(), Inserted::New);
            }
            writer.finish().unwrap();
        }
        let mut stored = 0;
        for kv in &readings.chunks {
            let (k, v) = kv.unwrap();
            let (count, _) = chunk::header(&v).unwrap();
            assert!(count <= CHUNK_MAX, "chunk {k:?} holds {count}");
            stored += count;
        }
        // The rest waits in the tail, journaled, for a chunk's worth.
        let tail: usize = readings
            .lock()
            .tails
            .values()
            .map(|t| t.entries.len())
            .sum();
        assert!(tail < CHUNK_MAX, "{tail} readings left unfolded");
        assert_eq!((stored + tail) as u64, seq);
    }

    /// A tail that waits `fold_after` is folded however small it is, and the
    /// journal record it pinned is no longer needed; a restart then finds the
    /// readings in chunks, once.
    #[test]
    fn a_small_tail_is_folded_after_a_while_and_its_record_goes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let mut readings = open(&db, dir.path());
        readings.fold_after = Duration::ZERO;
        let mut writer = readings.writer();
        for seq in 1..=3 {
            writer.insert(&reading(seq)).unwrap();
        }
        writer.finish().unwrap();
        assert!(readings.lock().tails.is_empty(), "folded at once");
        assert_eq!(readings.chunks.len(), 1);
        assert!(readings.lock().records.is_empty());
        drop(readings);
        let again = open(&db, dir.path());
        assert!(again.lock().tails.is_empty());
        let seqs: Vec<u64> = again
            .select(&Query::default())
            .map(|r| r.unwrap().reading.seq.unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }

    /// Readings in a tail are journaled: a restart (here: reopening the trees
    /// without any fold) finds them, in order, and dedups against them. It
    /// folds them at once, so the records go with the next batch (a restart
    /// loop cannot pin them: each open would restart `FOLD_AFTER`).
    #[test]
    fn a_restart_rebuilds_tails_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let readings = open(&db, dir.path());
        let mut writer = readings.writer();
        for seq in [2, 1, 3] {
            writer.insert(&reading(seq)).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(readings.chunks.len(), 0, "nothing folded yet");
        drop(readings);
        let again = open(&db, dir.path());
        assert!(again.lock().tails.is_empty(), "folded at open");
        let mut writer = again.writer();
        assert_eq!(writer.insert(&reading(2)).unwrap(), Inserted::Duplicate);
        assert_eq!(writer.insert(&reading(4)).unwrap(), Inserted::New);
        writer.finish().unwrap();
        assert_eq!(
            again.lock().records.len(),
            1,
            "only reading 4's record is needed"
        );
        let seqs: Vec<u64> = again
            .select(&Query::default())
            .map(|r| r.unwrap().reading.seq.unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
    }

    /// Reading `seq` stored, through the journal.
    fn stored(seq: u64) -> (tempfile::TempDir, sled::Db, Readings) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let readings = open(&db, dir.path());
        let mut writer = readings.writer();
        writer.insert(&reading(seq)).unwrap();
        writer.finish().unwrap();
        (dir, db, readings)
    }

    /// The release before segments kept chunks inline in sled: they are read
    /// as they are, and a chunk that changes is written to a segment.
    #[test]
    fn a_chunk_kept_inline_by_the_previous_release_is_read_then_moved_when_it_changes() {
        let (dir, db, readings) = stored(100);
        let id = readings.lock().topics[&reading(100).topic].id;
        let topic = reading(10).topic;
        let implied = Implied::of(&topic);
        let entries: Vec<Entry> = (10..=20).map(|s| implied.entry(&reading(s))).collect();
        let key = chunk::key(id, entries[0].pos());
        readings
            .chunks
            .insert(key, chunk::encode(&entries))
            .unwrap();
        drop(readings);
        let again = open(&db, dir.path());
        let seqs = |r: &Readings| -> Vec<u64> {
            r.select(&Query::default())
                .map(|r| r.unwrap().reading.seq.unwrap())
                .collect()
        };
        let mut want: Vec<u64> = (10..=20).chain([100]).collect();
        assert_eq!(seqs(&again), want);
        // A late reading merged into it: the chunk moves to a segment.
        let mut writer = again.writer();
        assert_eq!(writer.insert(&reading(25)).unwrap(), Inserted::New);
        writer.finish().unwrap();
        let value = again.chunks.get(key).unwrap().unwrap();
        assert!(located(&value).is_some(), "rewritten as a locator");
        want.insert(11, 25);
        assert_eq!(seqs(&again), want);
    }

    /// Readings 2 and 3 as one record of an older layout (`encode` makes it
    /// from topic id, topic and entries), kept in sled as the versions before
    /// the journal files did: replayed at open, with reading 1, then removed.
    fn replays_from_sled(encode: impl FnOnce(u32, &str, Vec<Entry>) -> Vec<u8>) {
        let (dir, db, readings) = stored(1);
        let id = readings.lock().topics[&reading(1).topic].id;
        let topic = reading(2).topic;
        let implied = Implied::of(&topic);
        let entries = vec![implied.entry(&reading(2)), implied.entry(&reading(3))];
        let record = encode(id, &topic, entries);
        readings
            .old_journal
            .insert(1000u64.to_be_bytes(), record)
            .unwrap();
        drop(readings);
        let again = open(&db, dir.path());
        let seqs: Vec<u64> = again
            .select(&Query::default())
            .map(|r| r.unwrap().reading.seq.unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(again.old_journal.is_empty(), "replayed, then removed");
    }

    /// The first layout: per topic, chunk key, u32 length, version 2 chunk.
    #[test]
    fn a_first_layout_journal_record_is_replayed() {
        replays_from_sled(|id, _, entries| {
            let chunk = chunk::encode_v2(&entries);
            let mut old = chunk::key(id, entries[0].pos()).to_vec();
            old.extend_from_slice(&u32::try_from(chunk.len()).unwrap().to_le_bytes());
            old.extend_from_slice(&chunk);
            old
        });
    }

    /// Version 1, what the release before the journal files wrote.
    #[test]
    fn a_version_1_journal_record_in_sled_is_replayed() {
        replays_from_sled(|id, topic, entries| {
            // Version 2 without names is version 1 with a zero count after the base.
            let mut v1 = encode_record(&[], &[(id, topic.to_owned(), entries)]);
            assert_eq!((v1[0], v1[9]), (RECORD_V2, 0));
            v1.remove(9);
            v1[0] = RECORD_V1;
            v1
        });
    }

    /// sled went back (lost a flush it had completed, which a later journal
    /// frame saw): said at open, naming sled's file; said again at every
    /// open until sled has caught up.
    #[test]
    fn a_sled_behind_the_journal_is_found() {
        let (dir, db, readings) = stored(1);
        let spent = readings.sync().unwrap();
        readings.made_durable(spent).unwrap();
        // A batch after that flush: its frame says one flush completed.
        let mut writer = readings.writer();
        writer.insert(&reading(2)).unwrap();
        writer.finish().unwrap();
        readings.sync().unwrap();
        drop(readings);
        let reopen = || open_found(&db, dir.path());
        let (again, found) = reopen();
        assert!(found.is_empty(), "sled as flushed: {found:?}");
        drop(again);
        // sled loses that flush: its note is gone with it.
        db.open_tree("meta").unwrap().remove(WAL_COMMITTED).unwrap();
        let (again, found) = reopen();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].loss, Loss::SledWentBack(1));
        assert_eq!(found[0].file, dir.path().join("db"));
        let seqs: Vec<u64> = again
            .select(&Query::default())
            .map(|r| r.unwrap().reading.seq.unwrap())
            .collect();
        assert_eq!(seqs, vec![1, 2], "the journal's readings replayed");
    }

    /// sled came back with its catalogue of the chunks empty and its notes
    /// current (seen with one byte flipped in its file, tests/system/damage.rs):
    /// said at open, naming sled's file; nothing is compacted, and no
    /// segment file is removed, however empty sled thinks it is.
    #[test]
    fn a_catalogue_sled_lost_is_said_and_its_segments_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let readings = open(&db, dir.path());
        let mut writer = readings.writer();
        for seq in 1..=600 {
            writer.insert(&reading(seq)).unwrap();
        }
        writer.finish().unwrap();
        readings.seal_segment().unwrap();
        let spent = readings.sync().unwrap();
        readings.made_durable(spent).unwrap();
        assert!(!readings.segment_live.is_empty(), "chunks in a segment");
        drop(readings);
        let reopen = || open_found(&db, dir.path());
        let (again, found) = reopen();
        assert!(found.is_empty(), "{found:?}");
        drop(again);
        let segments = || -> std::collections::BTreeSet<std::path::PathBuf> {
            std::fs::read_dir(dir.path().join("segments"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        };
        let before = segments();
        db.open_tree("chunks").unwrap().clear().unwrap();
        db.open_tree("segment_live").unwrap().clear().unwrap();
        let (again, found) = reopen();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            matches!(found[0].loss, Loss::Catalogue(b) if b > 0),
            "{found:?}"
        );
        assert_eq!(found[0].file, dir.path().join("db"));
        assert!(again.compactable(0).unwrap().is_empty());
        // Compacted all the same (as a list made before would): its frames
        // are pointed at by nothing sled still has, so it would go.
        for segment in again.segments.sealed().unwrap() {
            again.compact(segment.0, 0, 10_000).unwrap();
        }
        again.seal_segment().unwrap();
        let spent = again.sync().unwrap();
        again.made_durable(spent).unwrap();
        assert!(segments().is_superset(&before), "none removed");
    }

    /// One of sled's two maps of the topics lost an entry the other has
    /// (seen with a byte flipped in its file): mended at open from the other,
    /// whether or not the journal still names the topic.
    #[test]
    fn a_topic_in_one_map_only_is_mended_from_the_other() {
        let (dir, db, readings) = stored(1);
        drop(readings);
        let topic = reading(1).topic;
        let id = db
            .open_tree("topic_ids")
            .unwrap()
            .remove(&topic)
            .unwrap()
            .unwrap();
        let again = open(&db, dir.path());
        assert_eq!(again.ids.get(&topic).unwrap(), Some(id.clone()));
        drop(again);
        db.open_tree("topic_names").unwrap().remove(&id).unwrap();
        let again = open(&db, dir.path());
        assert!(again.names.get(&id).unwrap().is_some());
        // Mended before the journal is replayed: not by it.
        drop(again);
        db.open_tree("topic_ids").unwrap().remove(&topic).unwrap();
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        let again = open(&db, dir.path());
        assert_eq!(again.ids.get(&topic).unwrap(), Some(id));
    }

    /// sled lost its last flushes (a cut file) with a new topic's name in
    /// them: the log names it, and its readings come back under it.
    #[test]
    fn a_topic_sled_lost_comes_back_from_the_log() {
        let (dir, db, readings) = stored(1);
        let spent = readings.sync().unwrap();
        readings.made_durable(spent).unwrap();
        drop(readings);
        db.open_tree("topic_names").unwrap().clear().unwrap();
        db.open_tree("topic_ids").unwrap().clear().unwrap();
        let again = open(&db, dir.path());
        let stored: Vec<StoredReading> = again
            .select(&Query::default())
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(stored, vec![reading(1)]);
    }

    /// When the newest chunk moved on under a writer (here: another writer
    /// stored newer readings first; in aggregatord, retention or a reopen),
    /// its readings take the exact path and land in time order, not appended
    /// after newer ones.
    #[test]
    fn a_writer_overtaken_on_disk_still_stores_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let readings = open(&db, dir.path());
        let mut first = readings.writer();
        first.insert(&reading(1)).unwrap();
        first.finish().unwrap();
        let mut slow = readings.writer();
        slow.insert(&reading(2)).unwrap();
        slow.insert(&reading(3)).unwrap();
        let mut fast = readings.writer();
        fast.insert(&reading(4)).unwrap();
        fast.finish().unwrap();
        slow.finish().unwrap();
        let query = Query::default();
        let seqs: Vec<u64> = readings
            .select(&query)
            .map(|r| r.unwrap().reading.seq.unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }
}
