//! Durable storage of readings. This is the only module that knows sled.
//! It knows nothing of MQTT or of alert rules: ingest validates readings, and
//! `alerts::Engine` decides alert changes, before anything reaches it.
//!
//! Layout (one sled tree each):
//! - `topic_ids`, `topic_names`, `chunks`: the readings, each topic's history in
//!   time order, many readings per sled value (`readings/`, `chunk.rs`). A
//!   reading's identity is (topic, timestamp, seq): storing is idempotent.
//! - the journal: readings not yet in chunks, one checksummed record per
//!   batch, in files of our own, `<storage>/wal/` (`wal.rs`); `folded`, each
//!   topic's fold mark, and `meta`, how far the journal was synced (`readings/`).
//! - `rejected`: the latest [`REJECTED_KEEP`] refused messages, for inspection.
//! - `alerts_*`: active alerts, their history, and the publish outbox.
//! - `readings`: the one-key-per-reading layout of earlier versions (`codec.rs`),
//!   moved into chunks when the store is opened.
//!
//! Durability: sled's background flush is switched off; [`Store::flush`] is the
//! one place data reaches the disk (the journal's `fdatasync`, then sled's),
//! and ingest acknowledges only after it.

mod chunk;
mod codec;
mod files;
mod format;
mod query;
mod readings;
mod rollup;
mod segments;
mod tiers;
mod wal;

pub use query::Query;
pub use readings::ReadingWriter;
pub use rollup::{Row, Tier};
pub use wal::{Damage, Loss};

use crate::contract::{Alert, AlertState, Reading, Timestamp};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many rejected messages are kept (oldest dropped first).
pub const REJECTED_KEEP: u64 = 1000;

/// Why a store operation failed. An I/O failure ([`StoreError::is_io`]) may
/// pass by itself (a full disk): callers wait and retry, after a
/// [`Store::reopen`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (a running aggregatord, or a dump) holds sled's lock on the folder.
    #[error(
        "{}: the database is in use by another process (is aggregatord running?)",
        path.display()
    )]
    Locked { path: PathBuf },
    /// Any other failure to open the database (a folder it may not write, damaged files).
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: sled::Error },
    /// A sled operation failed; after an I/O error sled refuses writes until [`Store::reopen`].
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// A file of our own (the journal) could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database is closed for a reopen, or the last reopen failed: try again later.
    #[error("{}: storage is being reopened", path.display())]
    Reopening { path: PathBuf },
    /// A record that cannot be decoded (or encoded); `key` is its sled key as text (the
    /// topic, or empty, when encoding failed).
    #[error("corrupt record under key {key:?}: {message}")]
    Corrupt { key: String, message: String },
}

impl StoreError {
    /// An I/O failure (a full disk, say): it may pass by itself, so the daemon
    /// waits and tries again instead of giving up.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            StoreError::Open {
                source: sled::Error::Io(_),
                ..
            } | StoreError::Sled(sled::Error::Io(_))
                | StoreError::Io { .. }
        )
    }
}

/// A reading as stored: the payload's fields plus where and how it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredReading {
    /// The topic it arrived on; with the reading's timestamp and seq, its identity in storage.
    pub topic: String,
    /// The payload as validated; flattened, so its JSON (`dump`, the old layout) is the
    /// payload plus the fields here.
    #[serde(flatten)]
    pub reading: Reading,
    /// When aggregatord received it, by its own clock (milliseconds); alert rules time by
    /// this, not by the sensor's timestamp.
    pub received_at: Timestamp,
    /// The QoS the broker delivered it at (at most the subscription's), not the node's own.
    pub qos: u8,
}

/// A message that failed validation, kept as it arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedMessage {
    /// The topic it arrived on (any topic: refusals include unrecognized ones).
    pub topic: String,
    /// The [`RejectionReason`](crate::contract::RejectionReason)'s stable `snake_case` name
    /// (`malformed`, `too_old`), for filtering and counting.
    pub reason: String,
    /// What exactly was wrong, in words (which unit was expected, how large it was).
    pub detail: String,
    /// When aggregatord received it, by its own clock.
    pub received_at: Timestamp,
    /// The payload, lossily decoded and cut to 1 KiB: enough to see what was sent.
    pub payload: String,
}

/// How far back one sensor's history reaches in each form it is kept in:
/// its oldest reading raw, and each rollup tier's oldest row. The coarser the
/// form, the longer it is kept (`storage.rollups`); `None` where it holds none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub raw: Option<Timestamp>,
    pub minute: Option<Timestamp>,
    pub hour: Option<Timestamp>,
}

impl Kept {
    /// How far back the raw readings (`tier` None) or a tier reach.
    pub fn reach(&self, tier: Option<Tier>) -> Option<Timestamp> {
        match tier {
            None => self.raw,
            Some(Tier::Minute) => self.minute,
            Some(Tier::Hour) => self.hour,
        }
    }

    /// Whether the raw readings (`tier` None) or a tier hold everything
    /// from `since` on: they reach back to it, or as far as every other form
    /// does (a tier's reach is its oldest row's start: to within its width).
    pub fn holds(&self, tier: Option<Tier>, since: Timestamp) -> bool {
        let forms = [
            (self.raw, 1),
            (self.minute, Tier::Minute.width()),
            (self.hour, Tier::Hour.width()),
        ];
        self.reach(tier).is_some_and(|r| {
            r <= since
                || forms.iter().all(|(t, width)| {
                    t.is_none_or(|t| r.micros() < t.micros().saturating_add(*width))
                })
        })
    }
}

/// See [`Store::usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The raw readings' chunks (`segments/`): freed as readings go.
    pub segments: u64,
    /// The journal (`wal/`): minutes of readings.
    pub journal: u64,
    /// sled's files: the rollups, mostly, then where each chunk is, alerts
    /// and refused messages. Its log never shrinks: space freed in it is reused.
    pub sled: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.segments + self.journal + self.sled
    }
}

/// See [`Store::footprint`].
#[derive(Debug, Clone, Copy)]
pub struct Footprint {
    /// Every key and value in every tree, in bytes.
    pub data_bytes: u64,
    /// sled's own count of its files' size.
    pub disk_bytes: u64,
}

/// What storing one reading found: identity is (topic, timestamp, seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Not stored before: stored now (on disk after `finish` and [`Store::flush`]).
    New,
    /// The same reading (value and seq) is already stored or pending: a redelivery;
    /// nothing is written.
    Duplicate,
    /// Same identity (topic, timestamp, seq) as a stored reading but not the
    /// same reading (another value, or seq where there was none): the first
    /// is kept, and the caller should say so rather than call it a duplicate.
    Conflict,
}

/// The database. Cheap to clone; all clones share one sled instance, which
/// [`Store::reopen`] can replace (sled refuses all writes after an I/O error
/// until it is opened again).
#[derive(Clone)]
pub struct Store {
    /// The database folder: [`Store::reopen`] opens it again, and errors name it.
    path: PathBuf,
    /// A read-only store's scratch copy of sled and the journal (see
    /// [`Store::open_read_only`]); removed with the last clone.
    scratch: Option<Arc<tempfile::TempDir>>,
    /// `None` from closing to reopening, or after a failed reopen: every call then fails
    /// with [`StoreError::Reopening`]. Shared by all clones.
    trees: Arc<RwLock<Option<Trees>>>,
    /// Entries in the `rejected` tree, so that inserting can trim it to [`REJECTED_KEEP`]
    /// without counting (sled's `len` scans the whole tree).
    rejected_len: Arc<AtomicU64>,
    /// Damage to acknowledged data found by every open since this one, and
    /// by reads.
    damage: Arc<Mutex<Vec<Damage>>>,
}

#[derive(Clone)]
struct Trees {
    /// The sled instance: flush, id generation, and the tree list (for the migration).
    db: sled::Db,
    /// sled holds writes the journal cannot redo (alerts, rejected messages,
    /// readings stored behind their topic's newest): the next flush must
    /// include sled's. Every sled write outside the journal's path sets it.
    owed: Arc<AtomicBool>,
    /// When sled was last flushed (see [`SLED_EVERY`]).
    sled_flushed: Arc<std::sync::Mutex<std::time::Instant>>,
    /// sled's log file, opened again by us only to fdatasync it (see [`Store::flush`]).
    log: Arc<std::fs::File>,
    /// `topic_ids`, `topic_names`, `chunks`, `folded`, `meta` and the
    /// journal's files: the readings (`readings/`).
    readings: readings::Readings,
    /// Id (big-endian, so oldest first) → [`RejectedMessage`] as JSON; at most
    /// [`REJECTED_KEEP`] entries.
    rejected: sled::Tree,
    /// room 0x00 rule → the active (raised) alert.
    alerts_active: sled::Tree,
    /// time, id → every alert change, for `dump --alerts`.
    alerts_log: sled::Tree,
    /// id → alert changes not yet confirmed published.
    alerts_outbox: sled::Tree,
}

/// sled 0.34's log, in the database folder: all our data goes through it
/// (values are far below the size sled moves to separate blob files).
const SLED_LOG: &str = "db";

/// The journal's folder, in the database folder.
const WAL_DIR: &str = "wal";
/// The chunks' segment files' folder, in the database folder.
const SEGMENTS_DIR: &str = "segments";

/// How long sled may hold only what the journal can redo (folds, topic names,
/// its note of the journal) before a flush includes sled's anyway: that is
/// what lets spent journal files go, and where replay after a crash starts.
const SLED_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The database is the building's history: readable by its owner only,
/// whatever the umask (with 022 a local user once copied and dumped it). The
/// folder's 0700 also covers files sled creates later (snapshots).
fn private_folder(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    // Tightening what exists is best effort: `dump` run by another user who
    // may read the folder must still work (the daemon, its owner, does it).
    let tighten = |p: &Path, mode: u32| {
        if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
            tracing::debug!(path = %p.display(), error = %e, "cannot restrict storage permissions");
        }
    };
    tighten(path, 0o700);
    for entry in std::fs::read_dir(path)?.flatten() {
        let dir = entry.file_type().is_ok_and(|t| t.is_dir());
        tighten(&entry.path(), if dir { 0o700 } else { 0o600 });
    }
    Ok(())
}

/// sled writes a snapshot to `snap.<lsn>.generating`, syncs it, then renames it
/// to `snap.<lsn>`; one left behind (the disk filled, the process died) is
/// unfinished by construction. sled's open nevertheless takes it as the newest
/// (it sorts last) and fails on it for ever, "Read corrupted data at file
/// offset None", until someone deletes it by hand. Removing it loses nothing:
/// sled rebuilds from the previous snapshot and its log.
fn remove_unfinished_snapshots(path: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(path)?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            tracing::warn!(file = %entry.path().display(), "removed an unfinished sled snapshot (left by a full disk or a crash)");
        }
    }
    Ok(())
}

/// Where an open store's files are.
struct Layout<'a> {
    /// The store's folder, as errors and reports name it.
    path: &'a Path,
    /// Where sled and the journal are opened: `path`, or for a read-only
    /// open, a scratch copy of them.
    work: &'a Path,
}

impl<'a> Layout<'a> {
    /// The store in `path`, worked on in place or, read-only, in `scratch`.
    fn new(path: &'a Path, scratch: Option<&'a tempfile::TempDir>) -> Layout<'a> {
        Layout {
            path,
            work: scratch.map_or(path, tempfile::TempDir::path),
        }
    }

    fn read_only(&self) -> bool {
        self.work != self.path
    }

    /// A file as the operator knows it: in the store, not in a scratch copy.
    fn shown(&self, file: &Path) -> PathBuf {
        file.strip_prefix(self.work)
            .map_or_else(|_| file.to_owned(), |rest| self.path.join(rest))
    }
}

/// Bytes of sled's files in the store's folder (its log, snapshots, blobs):
/// everything but the journal and the segments. Counted from the folder,
/// not from sled's `size_on_disk`, which leaves its snapshots out.
fn sled_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() && entry.file_name() != WAL_DIR && entry.file_name() != SEGMENTS_DIR {
            bytes += sled_bytes(&entry.path())?;
        } else if kind.is_file() {
            bytes += entry.metadata()?.len();
        }
    }
    Ok(bytes)
}

/// Copies what a read-only open works on from the store in `path` to
/// `scratch`: sled's files and the journal, not the segments (read in place),
/// nor a sled snapshot left unfinished (removed by the daemon's open), nor
/// anything that is not a plain file.
fn copy_to_read(path: &Path, scratch: &Path) -> Result<(), StoreError> {
    fn copy_files(from: &Path, to: &Path, top: bool) -> Result<(), StoreError> {
        for entry in std::fs::read_dir(from).map_err(|e| files::io_error(from, e))? {
            let entry = entry.map_err(|e| files::io_error(from, e))?;
            let name = entry.file_name();
            let (source, target) = (entry.path(), to.join(&name));
            let kind = entry.file_type().map_err(|e| files::io_error(&source, e))?;
            if kind.is_dir() && top && name != SEGMENTS_DIR {
                files::private_dir(&target)?;
                copy_files(&source, &target, false)?;
            } else if kind.is_file() && !name.to_string_lossy().ends_with(".generating") {
                std::fs::copy(&source, &target).map_err(|e| {
                    let e = std::io::Error::new(
                        e.kind(),
                        format!("copying it to {} to read: {e}", target.display()),
                    );
                    files::io_error(&source, e)
                })?;
            }
        }
        Ok(())
    }
    copy_files(path, scratch, true)
}

impl Trees {
    /// Opens the database; also returns the damage its journal had. Reads
    /// add what they find to `damage`.
    fn open(
        layout: &Layout<'_>,
        damage: Arc<Mutex<Vec<Damage>>>,
    ) -> Result<(Trees, Vec<Damage>), StoreError> {
        let (path, work) = (layout.path, layout.work);
        private_folder(work).map_err(|source| open_error(path, source.into()))?;
        remove_unfinished_snapshots(work).map_err(|source| open_error(path, source.into()))?;
        let db = sled::Config::new()
            .path(work)
            .cache_capacity(32 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .map_err(|source| open_error(path, source))?;
        let log = std::fs::File::open(work.join(SLED_LOG))
            .map(Arc::new)
            .map_err(|e| open_error(path, sled::Error::Io(e)))?;
        let owed = Arc::new(AtomicBool::new(false));
        let base_segments = path.join(SEGMENTS_DIR);
        let files = readings::Files {
            wal: &work.join(WAL_DIR),
            segments: &work.join(SEGMENTS_DIR),
            sled_log: &work.join(SLED_LOG),
            base_segments: layout.read_only().then_some(base_segments.as_path()),
        };
        let (readings, mut damage) = readings::Readings::open(&db, &files, owed.clone(), damage)?;
        for d in &mut damage {
            d.file = layout.shown(&d.file);
        }
        let trees = Trees {
            owed,
            sled_flushed: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
            log,
            readings,
            rejected: db.open_tree("rejected")?,
            alerts_active: db.open_tree("alerts_active")?,
            alerts_log: db.open_tree("alerts_log")?,
            alerts_outbox: db.open_tree("alerts_outbox")?,
            db,
        };
        trees.migrate()?;
        if !damage.is_empty() {
            for d in &damage {
                match d.loss {
                    Loss::Lost | Loss::Readings(_) | Loss::SledWentBack(_) | Loss::Catalogue(_) => {
                        tracing::error!(damage = %d, "STORAGE DAMAGED: acknowledged readings lost");
                    }
                    Loss::Unknown => {
                        tracing::warn!(damage = %d, "STORAGE DAMAGED: the journal's end was cut off");
                    }
                    Loss::None | Loss::Reported => tracing::warn!(damage = %d, "STORAGE DAMAGED"),
                }
            }
            // What could be read of the damaged files is in chunks now
            // (replay folds everything): made durable, then the files set aside.
            trees.readings.sync_segments()?;
            trees.db.flush()?;
            trees.log.sync_data().map_err(sled::Error::Io)?;
            trees.readings.quarantine()?;
        }
        Ok((trees, damage))
    }

    /// Moves readings stored one per key (before chunks) into chunks, then
    /// drops the old tree. Idempotent, so a crash part way is harmless: the
    /// next open carries on, and what was moved already counts as duplicate.
    fn migrate(&self) -> Result<(), StoreError> {
        const OLD: &[u8] = b"readings";
        if !self.db.tree_names().iter().any(|n| n == OLD) {
            return Ok(());
        }
        let old = self.db.open_tree(OLD)?;
        let (mut moved, mut unreadable) = (0u64, 0u64);
        let mut writer = self.readings.writer();
        for kv in &old {
            let (k, v) = kv?;
            match codec::decode(&k, &v) {
                Ok(r) => {
                    writer.insert(&r)?;
                    moved += 1;
                    if moved % 10_000 == 0 {
                        std::mem::replace(&mut writer, self.readings.writer()).finish()?;
                    }
                }
                Err(e) => {
                    unreadable += 1;
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = e.0, "unreadable old reading left out of the migration");
                }
            }
        }
        writer.finish()?;
        self.db.flush()?;
        drop(old);
        self.db.drop_tree(OLD)?;
        self.db.flush()?;
        if moved + unreadable > 0 {
            tracing::info!(moved, unreadable, "readings moved to the chunked layout");
        }
        Ok(())
    }
}

impl Store {
    /// Opens the store in `path` (made if missing) for the daemon: it takes
    /// sled's lock, and recovers (replays the journal, sets damaged files
    /// aside) in place.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_in(path, None)
    }

    /// Opens a stopped store only to read it (`dump`): nothing in `path` is
    /// written, and no lock is taken there, so a daemon can start meanwhile.
    /// sled has no read-only open, and it and the journal's replay write as
    /// they recover, so both work on a copy in a scratch folder (in
    /// `$TMPDIR`, removed with the last clone); the segments, the bulk of
    /// the history, are read where they are. The copy is of sled's files
    /// (a few MiB a sensor a year, mostly rollups) and the journal (minutes).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.join(SLED_LOG).is_file() {
            return Err(StoreError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no store here"),
            });
        }
        let scratch = tempfile::Builder::new()
            .prefix("aggregatord-read-")
            .tempdir()
            .map_err(|e| files::io_error(&std::env::temp_dir(), e))?;
        copy_to_read(path, scratch.path())?;
        Self::open_in(path, Some(Arc::new(scratch)))
    }

    fn open_in(path: &Path, scratch: Option<Arc<tempfile::TempDir>>) -> Result<Store, StoreError> {
        let damage = Arc::new(Mutex::new(Vec::new()));
        let layout = Layout::new(path, scratch.as_deref());
        let (trees, found) = Trees::open(&layout, damage.clone())?;
        damage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(found);
        // Bounded by REJECTED_KEEP, so counting once at open is cheap.
        let rejected_len = Arc::new(AtomicU64::new(trees.rejected.len() as u64));
        Ok(Store {
            path: path.to_owned(),
            scratch,
            trees: Arc::new(RwLock::new(Some(trees))),
            rejected_len,
            damage,
        })
    }

    /// Damage to acknowledged data that the opens of this store found (each
    /// is also logged, with file and offset, when found).
    pub fn damage(&self) -> Vec<Damage> {
        self.damage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn trees(&self) -> Result<Trees, StoreError> {
        self.trees
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Reopening {
                path: self.path.clone(),
            })
    }

    /// Closes and opens the database again: how to get past sled's refusal of
    /// writes after an I/O error (a full disk) once the cause is gone. Fails
    /// while something else still holds the old instance (a running dump).
    pub fn reopen(&self) -> Result<(), StoreError> {
        let mut trees = self
            .trees
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Drop ours first: sled's lock on the folder goes with the last handle.
        *trees = None;
        let layout = Layout::new(&self.path, self.scratch.as_deref());
        let (fresh, found) = Trees::open(&layout, self.damage.clone())?;
        self.damage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(found);
        self.rejected_len
            .store(fresh.rejected.len() as u64, Ordering::Release);
        *trees = Some(fresh);
        Ok(())
    }

    /// Every reading topic in storage.
    pub fn topics(&self) -> Result<Vec<String>, StoreError> {
        self.trees()?.readings.topics()
    }

    /// Stores a batch of readings: [`ReadingWriter::insert`] each, then
    /// [`ReadingWriter::finish`]. Not durable until [`Store::flush`].
    pub fn reading_writer(&self) -> Result<ReadingWriter, StoreError> {
        Ok(self.trees()?.readings.writer())
    }

    /// Stores one reading unless the same one is already there (a batch of one):
    /// for tests; ingest writes batches through a [`ReadingWriter`].
    #[cfg(test)]
    pub(crate) fn insert_reading(&self, r: &StoredReading) -> Result<Inserted, StoreError> {
        let mut w = self.reading_writer()?;
        let inserted = w.insert(r)?;
        w.finish()?;
        Ok(inserted)
    }

    pub fn insert_rejected(&self, r: &RejectedMessage) -> Result<(), StoreError> {
        let t = self.trees()?;
        let id = t.db.generate_id()?;
        let value = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt {
            key: r.topic.clone(),
            message: e.to_string(),
        })?;
        t.rejected.insert(id.to_be_bytes(), value)?;
        t.owed.store(true, Ordering::Release);
        let len = self.rejected_len.fetch_add(1, Ordering::AcqRel) + 1;
        if len > REJECTED_KEEP && t.rejected.pop_min()?.is_some() {
            self.rejected_len.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Bytes the stored readings' chunks take on disk (their segment files).
    pub fn chunk_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.trees()?.readings.segments().disk_bytes())
    }

    /// What the store's folder takes on disk, by part: what
    /// `storage.max_size` bounds.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let t = self.trees()?;
        Ok(Usage {
            segments: t.readings.segments().disk_bytes(),
            journal: t.readings.journal_bytes(),
            sled: sled_bytes(&self.path).map_err(|e| files::io_error(&self.path, e))?,
        })
    }

    /// Whether sled's catalogue of the chunks was found damaged at open (said
    /// as damage): then no segment file is freed, so deleting readings for
    /// a disk budget would only lose them.
    pub fn catalogue_damaged(&self) -> Result<bool, StoreError> {
        Ok(self.trees()?.readings.catalogue_damaged())
    }

    /// The start of the oldest row of `tier`, of any sensor.
    pub fn oldest_rollup(&self, tier: Tier) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .trees()?
            .readings
            .oldest_rollup(tier)?
            .and_then(Timestamp::from_micros))
    }

    /// The oldest stored reading's timestamp.
    pub fn oldest(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .trees()?
            .readings
            .oldest()?
            .and_then(Timestamp::from_micros))
    }

    /// Segment files are closed past `segment` bytes, journal files past
    /// `journal`: a disk budget frees whole ones.
    pub fn set_file_sizes(&self, segment: u64, journal: u64) -> Result<(), StoreError> {
        let t = self.trees()?;
        t.readings.segments().rotate_at(segment);
        t.readings.set_journal_file_size(journal);
        Ok(())
    }

    /// Closes the segment being appended to, so that retention can free it.
    pub fn seal_segment(&self) -> Result<(), StoreError> {
        self.trees()?.readings.seal_segment()
    }

    /// Sealed segment files less than half of which holds chunks still
    /// pointed at, and at least `min` bytes: see [`Store::compact`].
    pub fn compactable(&self, min: u64) -> Result<Vec<u32>, StoreError> {
        self.trees()?.readings.compactable(min)
    }

    /// Moves the live chunks among up to `max` frames of `segment`, from
    /// byte `from` on (`None`: its first), to the segment appended to;
    /// returns how many moved and where to go on from, if anywhere. Once
    /// all have moved the file goes with the next flush. Without this, a
    /// segment whose chunks were mostly rewritten (late readings) or trimmed
    /// stays as long as its last live chunk.
    pub fn compact(
        &self,
        segment: u32,
        from: Option<u64>,
        max: usize,
    ) -> Result<(usize, Option<u64>), StoreError> {
        self.trees()?
            .readings
            .compact(segment, from.unwrap_or(segments::Segments::FIRST), max)
    }

    /// Deletes about `max` readings timestamped before `cutoff`; returns how many.
    pub fn expire(&self, cutoff: Timestamp, max: usize) -> Result<usize, StoreError> {
        self.trees()?.readings.expire(cutoff, max)
    }

    /// Rows of `tier` for one sensor's buckets that meet `[since, until]`,
    /// oldest first: what a long range is read from (see rollup.rs).
    pub fn rollups(
        &self,
        topic: &str,
        tier: Tier,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<Row>, StoreError> {
        self.trees()?
            .readings
            .rollups(topic, tier, since.micros(), until.micros())
    }

    /// How far back one sensor's history reaches in each form it is kept in.
    pub fn kept(&self, topic: &str) -> Result<Kept, StoreError> {
        let [raw, minute, hour] = self.trees()?.readings.oldest_kept(topic)?;
        let at = |t: Option<i64>| t.and_then(Timestamp::from_micros);
        Ok(Kept {
            raw: at(raw),
            minute: at(minute),
            hour: at(hour),
        })
    }

    /// Removes rows of `tier` for buckets that ended before `cutoff`, about
    /// `max` at a time; returns how many. Raw readings are not touched.
    pub fn expire_rollups(
        &self,
        tier: Tier,
        cutoff: Timestamp,
        max: usize,
    ) -> Result<usize, StoreError> {
        self.trees()?.readings.expire_rollups(tier, cutoff, max)
    }

    /// Per sensor, the seq of its newest stored reading: where counting
    /// holes resumes after a restart.
    pub fn last_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.trees()?.readings.last_seqs()
    }

    /// Bytes of keys and values a tier keeps (for the storage benchmarks).
    pub fn rollup_bytes(&self, tier: Tier) -> Result<u64, StoreError> {
        self.trees()?.readings.rollup_bytes(tier)
    }

    /// Records alert changes: history, active set, and the publish outbox, all in
    /// the next flush, so a change is never stored without being queued to send.
    pub fn record_alerts(&self, changes: &[Alert]) -> Result<(), StoreError> {
        let t = self.trees()?;
        for a in changes {
            let value = encode(a)?;
            let id = t.db.generate_id()?;
            let mut log_key = format::time_key(a.time.micros()).to_vec();
            log_key.extend_from_slice(&id.to_be_bytes());
            t.alerts_log.insert(log_key, value.clone())?;
            let active_key = format!("{}\0{}", a.room, a.rule);
            match a.state {
                AlertState::Raised => t.alerts_active.insert(active_key, value.clone())?,
                AlertState::Cleared => t.alerts_active.remove(active_key)?,
            };
            t.alerts_outbox.insert(id.to_be_bytes(), value)?;
            t.owed.store(true, Ordering::Release);
        }
        Ok(())
    }

    pub fn active_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let t = self.trees()?;
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
        match self.trees() {
            Ok(t) => Box::new(tree(&t).iter().map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Alert changes waiting to be published, in order, with their outbox ids.
    pub fn alert_outbox(&self) -> Result<Vec<(u64, Alert)>, StoreError> {
        let t = self.trees()?;
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
        let t = self.trees()?;
        for id in ids {
            t.alerts_outbox.remove(id.to_be_bytes())?;
        }
        Ok(())
    }

    /// Makes everything stored so far durable: a batch's acknowledgements
    /// wait for it. The journal's `fdatasync` always (new readings are there);
    /// sled's flush only when sled holds something the journal cannot redo,
    /// or has not been flushed for [`SLED_EVERY`]: one sync per batch in
    /// steady running, not two. Returns the bytes sled flushed (its log).
    ///
    /// sled's own flush ends in `sync_file_range`, which neither empties the
    /// drive's volatile write cache nor commits the file's new size
    /// (spacejam/sled#1452, #1351): it survives a crash of this process, not a
    /// power cut. The `fdatasync` of its log file after it is what lets what
    /// sled holds survive losing power (tests/system/durability.rs watches
    /// both syncs).
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.flush_with(false)
    }

    /// [`Store::flush`] with sled's flush in any case: at a clean stop, so
    /// that the next start has nothing to replay.
    pub fn checkpoint(&self) -> Result<usize, StoreError> {
        let bytes = self.flush_with(true)?;
        self.trees()?.readings.witness()?;
        Ok(bytes)
    }

    fn flush_with(&self, sled_too: bool) -> Result<usize, StoreError> {
        let t = self.trees()?;
        // The journal first: sled's note of how far it reaches must never
        // be ahead of it.
        let spent = t.readings.sync()?;
        let mut last = t
            .sled_flushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Taken before sled's flush: a write after this sets it again.
        let owed = t.owed.swap(false, Ordering::AcqRel);
        if !(sled_too || owed || last.elapsed() >= SLED_EVERY) {
            t.readings.not_durable(spent);
            return Ok(0);
        }
        // The chunks before sled's locators to them.
        let flushed = t.readings.sync_segments().and_then(|()| {
            let bytes = t.db.flush()?;
            t.log.sync_data().map_err(sled::Error::Io)?;
            Ok(bytes)
        });
        match flushed {
            Ok(bytes) => {
                *last = std::time::Instant::now();
                t.readings.made_durable(spent)?;
                Ok(bytes)
            }
            Err(e) => {
                if owed {
                    t.owed.store(true, Ordering::Release);
                }
                t.readings.not_durable(spent);
                Err(e)
            }
        }
    }

    /// What the database holds (every tree's keys and values) against what
    /// sled's files take on disk: sled's space amplification, for the
    /// storage benchmarks. Reads everything: not for the ingest path.
    pub fn footprint(&self) -> Result<Footprint, StoreError> {
        let t = self.trees()?;
        let mut data_bytes = 0u64;
        for name in t.db.tree_names() {
            for kv in &t.db.open_tree(name)? {
                let (k, v) = kv?;
                data_bytes += (k.len() + v.len()) as u64;
            }
        }
        Ok(Footprint {
            data_bytes,
            disk_bytes: t.db.size_on_disk()? + t.readings.file_bytes(),
        })
    }

    /// The readings `query` selects, by topic then time.
    pub fn select<'a>(
        &self,
        query: &'a Query,
    ) -> Box<dyn Iterator<Item = Result<StoredReading, StoreError>> + 'a> {
        match self.trees() {
            Ok(t) => Box::new(t.readings.select(query)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// Per topic, the last reading of each `step`-long slot since `since` (by
    /// topic, then time): a sparkline's worth, however fast the sensors are.
    pub fn thinned(
        &self,
        since: Timestamp,
        step: std::time::Duration,
    ) -> Box<dyn Iterator<Item = Result<StoredReading, StoreError>>> {
        let step = i64::try_from(step.as_micros()).unwrap_or(i64::MAX);
        match self.trees() {
            Ok(t) => Box::new(t.readings.thinned(since.micros(), step)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
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
    fn moves_the_old_one_key_per_reading_layout_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let t = "building/floor1/room101/temperature/temp_001";
        let old: Vec<_> = (1..=150)
            .map(|i| {
                let mut r = reading(t, "2026-01-01T00:00:00Z", i);
                r.reading.sensor_id = "temp_001".into();
                r.reading.timestamp =
                    Timestamp::from_micros(1_767_225_600_000_000 + i.cast_signed() * 1000).unwrap();
                r
            })
            .collect();
        {
            // No background flusher: its thread can keep the file lock for a
            // moment after the drop, and the Store::open below then says Locked
            // (seen once in a full run).
            let db = sled::Config::new()
                .path(dir.path())
                .flush_every_ms(None)
                .open()
                .unwrap();
            let tree = db.open_tree("readings").unwrap();
            for (i, r) in old.iter().enumerate() {
                let k = codec::key(&r.topic, r.reading.timestamp, r.reading.seq);
                // The oldest versions stored JSON.
                let v = if i % 2 == 0 {
                    codec::encode(r)
                } else {
                    serde_json::to_vec(r).unwrap()
                };
                tree.insert(k, v).unwrap();
            }
            tree.insert("garbage", "x").unwrap();
            db.flush().unwrap();
        }
        // Even without the flusher, sled's I/O threads can hold the lock a moment
        // longer (seen again in a full run): wait for it, as model::reopen does.
        let store = super::model::reopen(dir.path());
        let all: Vec<_> = store
            .select(&Query::default())
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(all, old);
        let names = store.trees().unwrap().db.tree_names();
        assert!(!names.iter().any(|n| n == b"readings"));
        assert_eq!(store.insert_reading(&old[9]).unwrap(), Inserted::Duplicate);
        drop(store);
        let again = super::model::reopen(dir.path());
        assert_eq!(again.select(&Query::default()).count(), old.len());
    }

    #[test]
    fn late_readings_split_chunks_instead_of_growing_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t = "building/floor1/room101/temperature/temp_001";
        let at = |i: i64| {
            let mut r = reading(t, "2026-01-01T00:00:00Z", i.cast_unsigned());
            r.reading.timestamp = Timestamp::from_micros(1_767_225_600_000_000 + i).unwrap();
            r
        };
        // Even positions arrive first; then a backlog of the odd ones, late.
        let mut w = store.reading_writer().unwrap();
        for i in (0..400).step_by(2) {
            w.insert(&at(i)).unwrap();
        }
        w.finish().unwrap();
        for i in (1..400).step_by(2) {
            assert_eq!(store.insert_reading(&at(i)).unwrap(), Inserted::New);
        }
        assert_eq!(store.insert_reading(&at(201)).unwrap(), Inserted::Duplicate);
        let all: Vec<_> = store
            .select(&Query::default())
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(all, (0..400).map(at).collect::<Vec<_>>());
        let chunks = store.trees().unwrap().db.open_tree("chunks").unwrap();
        for kv in &chunks {
            let (_, v) = kv.unwrap();
            let (count, _) = chunk::header(&v).unwrap();
            assert!(count <= chunk::CHUNK_MAX, "a chunk of {count}");
        }
    }

    #[test]
    fn an_unfinished_snapshot_does_not_block_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let r = reading("b/t/t", "2026-01-01T00:00:02Z", 2);
        {
            let store = Store::open(dir.path()).unwrap();
            store.insert_reading(&r).unwrap();
            store.flush().unwrap();
        }
        // What a full disk leaves: sled created the file, then could not write it.
        std::fs::write(dir.path().join("snap.7FFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let store = super::model::reopen(dir.path());
        let all: Vec<_> = store
            .select(&Query::default())
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(all, vec![r]);
    }

    fn seg_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(SEGMENTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    fn at(i: i64) -> StoredReading {
        let t = "building/floor1/room101/temperature/temp_001";
        let mut r = reading(t, "2026-01-01T00:00:00Z", i.cast_unsigned());
        r.reading.timestamp = Timestamp::from_micros(1_767_225_600_000_000 + i).unwrap();
        r
    }

    /// A flipped byte in a segment costs the one chunk it hits: said with
    /// file, offset and how many readings, and the rest is served.
    #[test]
    fn a_damaged_chunk_is_reported_and_the_rest_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut w = store.reading_writer().unwrap();
            for i in 0..i64::try_from(3 * chunk::CHUNK_MAX + 8).unwrap() {
                w.insert(&at(i)).unwrap();
            }
            w.finish().unwrap();
            store.checkpoint().unwrap();
        }
        let seg = seg_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&seg, bytes).unwrap();
        let store = super::model::reopen(dir.path());
        let all: Vec<_> = store
            .select(&Query::default())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            all.len(),
            2 * chunk::CHUNK_MAX + 8,
            "one chunk lost, the others read"
        );
        let damage = store.damage();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].file, seg);
        assert_eq!(damage[0].loss, Loss::Readings(chunk::CHUNK_MAX));
        assert!(damage[0].offset < middle as u64);
    }

    /// Retention leaves segments nothing points at: they go, once that is
    /// flushed; the newest (appended to) stays.
    #[test]
    fn segments_nothing_points_at_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.trees().unwrap().readings.segments().rotate_at(1024);
        let mut w = store.reading_writer().unwrap();
        for i in 0..2000 {
            w.insert(&at(i)).unwrap();
        }
        w.finish().unwrap();
        store.checkpoint().unwrap();
        let before = seg_files(dir.path()).len();
        assert!(before > 4, "{before} segments");
        while store.expire(at(1900).reading.timestamp, 500).unwrap() > 0 {}
        store.checkpoint().unwrap();
        let after = seg_files(dir.path()).len();
        assert!(
            after < 3,
            "{before} segments before retention, {after} after"
        );
        drop(store);
        let store = super::model::reopen(dir.path());
        let kept: Vec<_> = store
            .select(&Query::default())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, (1900..2000).map(at).collect::<Vec<_>>());
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

    /// Every file under `dir`, with its bytes.
    fn files_in(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                out.extend(files_in(&path));
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
        out
    }

    /// `dump` of a stopped store: everything is served (chunks and the
    /// journal's tail), not one byte of the store changes (sled's open and
    /// the journal's replay would write), and a daemon's open meanwhile is
    /// not kept out by a lock.
    #[test]
    fn a_read_only_open_serves_all_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap().micros();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut w = store.reading_writer().unwrap();
            for i in 0..600 {
                let mut r = reading("a/t/t", "2026-01-01T00:00:00Z", i);
                r.reading.timestamp =
                    Timestamp::from_micros(t0 + i64::try_from(i).unwrap() * 1_000_000).unwrap();
                w.insert(&r).unwrap();
            }
            w.finish().unwrap();
            store.flush().unwrap();
            // Dropped without a clean stop: the journal is replayed at open.
        }
        assert!(
            files_in(&dir.path().join(SEGMENTS_DIR))
                .values()
                .any(|b| b.len() > 1024),
            "some readings are in chunks"
        );
        let before = files_in(dir.path());
        let read = Store::open_read_only(dir.path()).unwrap();
        let seqs: Vec<u64> = read
            .select(&Query::default())
            .map(|r| r.unwrap().reading.seq.unwrap())
            .collect();
        assert_eq!(seqs, (0..600).collect::<Vec<_>>());
        assert!(files_in(dir.path()) == before, "a read changed the store");
        let daemon = Store::open(dir.path()).expect("the daemon opens while a dump reads");
        drop(daemon);
        let scratch = read.scratch.as_ref().unwrap().path().to_owned();
        drop(read);
        assert!(!scratch.exists(), "the scratch copy is removed");
    }

    #[test]
    fn a_read_only_open_of_no_store_says_so_and_makes_none() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("storage");
        let e = Store::open_read_only(&missing).err().unwrap();
        assert!(e.to_string().contains("no store here"), "{e}");
        assert!(!missing.exists());
    }

    /// Late readings rewrite the chunks they land in, leaving the old
    /// frames as garbage: compaction moves what is still pointed at out of
    /// a segment mostly garbage, which then goes; every reading reads back
    /// the same, also after a reopen.
    #[test]
    fn compaction_moves_live_chunks_out_and_the_segment_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let t0 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap().micros();
        let at = |i: i64, seq: u64| {
            let mut r = reading("a/t/t", "2026-01-01T00:00:00Z", seq);
            r.reading.timestamp = Timestamp::from_micros(t0 + i * 1_000_000).unwrap();
            r
        };
        let mut w = store.reading_writer().unwrap();
        for i in 0..2048 {
            w.insert(&at(2 * i, 0)).unwrap();
        }
        w.finish().unwrap();
        store.checkpoint().unwrap();
        store.seal_segment().unwrap();
        // One late reading into each chunk but the last: each is written
        // again, elsewhere; the last stays pointed at in segment 0.
        let mut w = store.reading_writer().unwrap();
        for i in (0..2048 - 256).step_by(256) {
            w.insert(&at(2 * i + 1, 1)).unwrap();
        }
        w.finish().unwrap();
        store.checkpoint().unwrap();
        let before: Vec<_> = store
            .select(&Query::default())
            .map(Result::unwrap)
            .collect();
        assert_eq!(before.len(), 2048 + 7);
        let first = store.trees().unwrap().readings.segments().path(0);
        assert!(first.exists());
        let candidates = store.compactable(0).unwrap();
        assert_eq!(candidates, [0], "segment 0 is 7/8 garbage now");
        let mut from = None;
        let mut moved = 0;
        loop {
            let (n, next) = store.compact(0, from, 3).unwrap();
            moved += n;
            match next {
                Some(at) => from = Some(at),
                None => break,
            }
        }
        store.checkpoint().unwrap();
        assert_eq!(moved, 1, "the one chunk still pointed at");
        assert!(!first.exists(), "the segment went");
        assert_eq!(store.compactable(0).unwrap(), Vec::<u32>::new());
        let after: Vec<_> = store
            .select(&Query::default())
            .map(Result::unwrap)
            .collect();
        assert_eq!(after, before);
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        let reopened: Vec<_> = again
            .select(&Query::default())
            .map(Result::unwrap)
            .collect();
        assert_eq!(reopened, before);
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

/// The store against a model (a sorted map) under random batches of new,
/// late, redelivered and expired readings, and reopens: what is stored, what
/// counts as a duplicate, and what the meter check sees as neighbours must all
/// agree.
#[cfg(test)]
mod model {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const TOPICS: [&str; 3] = [
        "building/floor1/room101/temperature/temp_001",
        "building/floor1/room101/energy/meter_1",
        "odd/x/y",
    ];
    const T0: i64 = 1_790_000_000_000_000;
    const SECOND: i64 = 1_000_000;

    #[derive(Debug, Clone)]
    enum Op {
        /// One reading into the current batch's writer.
        Insert {
            /// Index into `TOPICS`.
            topic: usize,
            /// Seconds after `T0`; ascending, except those drawn as multiples of 5 (see `ops`),
            /// which keep their random time and so arrive late or early.
            time: i64,
            /// The reading's seq; `None` one time in ten (a client that sends none).
            seq: Option<u64>,
            /// A unit other than the type's (one in twenty), which a chunk stores as a string.
            odd_unit: bool,
        },
        /// Finish the writer and start another: a batch boundary.
        EndBatch,
        /// Expire readings older than `T0` plus this many seconds, in steps as retention does.
        Expire(i64),
        /// Finish, flush, close and open the store again.
        Reopen,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let insert = (
            0..TOPICS.len(),
            0i64..400,
            prop::option::weighted(0.9, 0u64..3),
            prop::bool::weighted(0.05),
        )
            .prop_map(|(topic, time, seq, odd_unit)| Op::Insert {
                topic,
                time,
                seq,
                odd_unit,
            });
        let op = prop_oneof![
            40 => insert,
            4 => Just(Op::EndBatch),
            1 => (0i64..200).prop_map(Op::Expire),
            1 => Just(Op::Reopen),
        ];
        // Mostly ascending times, as readings arrive, with late ones mixed in.
        proptest::collection::vec(op, 1..600).prop_map(|mut ops| {
            let mut clock = 0;
            for op in &mut ops {
                if let Op::Insert { time, .. } = op {
                    if *time % 5 != 0 {
                        clock += 1;
                        *time = clock;
                    }
                }
            }
            ops
        })
    }

    fn reading(topic: usize, time: i64, seq: Option<u64>, odd_unit: bool) -> StoredReading {
        let t = TOPICS[topic];
        let mut levels = t.rsplit('/');
        let (id, ty) = (levels.next().unwrap(), levels.next().unwrap());
        let unit = match ty {
            _ if odd_unit => "odd",
            "temperature" => "celsius",
            "energy" => "kWh",
            _ => "u",
        };
        StoredReading {
            topic: t.to_owned(),
            reading: Reading {
                sensor_id: id.to_owned(),
                sensor_type: ty.to_owned(),
                value: time as f64 + seq.unwrap_or(7) as f64 / 10.0,
                unit: unit.to_owned(),
                timestamp: Timestamp::from_micros(T0 + time * SECOND).unwrap(),
                seq,
            },
            received_at: Timestamp::from_micros(T0 + time * SECOND + 1234).unwrap(),
            qos: u8::try_from(time.rem_euclid(3)).unwrap_or(0),
        }
    }

    type Key = (String, i64, u64);

    /// sled's I/O threads may hold the folder's lock for a moment after the
    /// last handle is dropped.
    pub(super) fn reopen(path: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(path) {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                other => return other.unwrap(),
            }
        }
    }

    fn key(r: &StoredReading) -> Key {
        (
            r.topic.clone(),
            r.reading.timestamp.micros(),
            r.reading.seq.unwrap_or(0),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn agrees_with_a_sorted_map(ops in ops()) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::open(dir.path()).unwrap();
            let mut model = BTreeMap::<Key, StoredReading>::new();
            // Every reading stored, whatever retention did since: the rollups
            // count them all (one retention deleted and that came again is
            // stored, and counted, again: ingest's max_age refuses it first).
            let mut ever = Vec::<(Key, f64)>::new();
            let mut writer = store.reading_writer().unwrap();
            for op in ops {
                match op {
                    Op::Insert { topic, time, seq, odd_unit } => {
                        let r = reading(topic, time, seq, odd_unit);
                        let k = key(&r);
                        let same_topic = |e: Option<(&Key, &StoredReading)>| {
                            e.filter(|(mk, _)| mk.0 == k.0).map(|(_, v)| v.clone())
                        };
                        let (before, after) = writer.neighbours(&r).unwrap();
                        prop_assert_eq!(before, same_topic(model.range(..k.clone()).next_back()));
                        prop_assert_eq!(after, same_topic(model.range(k.clone()..).next()));
                        let want = match model.get(&k) {
                            None => Inserted::New,
                            Some(m) if m.reading.value.to_bits() == r.reading.value.to_bits()
                                && m.reading.seq == r.reading.seq => Inserted::Duplicate,
                            Some(_) => Inserted::Conflict,
                        };
                        prop_assert_eq!(writer.insert(&r).unwrap(), want);
                        if want == Inserted::New {
                            ever.push((k.clone(), r.reading.value));
                        }
                        model.entry(k).or_insert(r);
                    }
                    Op::EndBatch => {
                        std::mem::replace(&mut writer, store.reading_writer().unwrap()).finish().unwrap();
                    }
                    Op::Expire(before) => {
                        writer.finish().unwrap();
                        let cutoff = Timestamp::from_micros(T0 + before * SECOND).unwrap();
                        // As retention does it: in steps, until a step deletes
                        // fewer than asked.
                        let (step, mut n) = (7, 0);
                        loop {
                            let deleted = store.expire(cutoff, step).unwrap();
                            n += deleted;
                            if deleted < step {
                                break;
                            }
                        }
                        let len = model.len();
                        model.retain(|k, _| k.1 >= cutoff.micros());
                        prop_assert_eq!(n, len - model.len());
                        writer = store.reading_writer().unwrap();
                    }
                    Op::Reopen => {
                        writer.finish().unwrap();
                        store.flush().unwrap();
                        drop(store);
                        store = reopen(dir.path());
                        writer = store.reading_writer().unwrap();
                    }
                }
            }
            writer.finish().unwrap();
            let stored: Vec<_> = store.select(&Query::default()).map(|r| r.unwrap()).collect();
            let want: Vec<_> = model.values().cloned().collect();
            prop_assert_eq!(stored, want);
            // A time window selects what filtering the model does.
            let q = Query {
                since: Some(Timestamp::from_micros(T0 + 100 * SECOND).unwrap()),
                until: Some(Timestamp::from_micros(T0 + 250 * SECOND).unwrap()),
                ..Query::default()
            };
            let window: Vec<_> = store.select(&q).map(|r| r.unwrap()).collect();
            let want: Vec<_> = model
                .values()
                .filter(|r| (T0 + 100 * SECOND..=T0 + 250 * SECOND).contains(&r.reading.timestamp.micros()))
                .cloned()
                .collect();
            prop_assert_eq!(window, want);
            // Thinned: per topic, the last reading of each 7-second slot since T0 + 50 s.
            let since = T0 + 50 * SECOND;
            let thinned: Vec<_> = store
                .thinned(Timestamp::from_micros(since).unwrap(), std::time::Duration::from_secs(7))
                .map(|r| r.unwrap())
                .collect();
            let mut want: Vec<StoredReading> = Vec::new();
            for r in model.values().filter(|r| r.reading.timestamp.micros() >= since) {
                let slot = |r: &StoredReading| (r.topic.clone(), r.reading.timestamp.micros().div_euclid(7 * SECOND));
                match want.last_mut() {
                    Some(last) if slot(last) == slot(r) => *last = r.clone(),
                    _ => want.push(r.clone()),
                }
            }
            prop_assert_eq!(thinned, want);
            // Each tier: one row per bucket of every reading ever stored, retention or not.
            let (from, to) = (Timestamp::from_micros(T0 - 3_600 * SECOND).unwrap(), Timestamp::from_micros(T0 + 3_600 * SECOND).unwrap());
            for topic in TOPICS {
                for tier in Tier::ALL {
                    let mut want = Vec::new();
                    ever.sort_by(|a, b| a.0.cmp(&b.0));
                    for ((_, time, _), value) in ever.iter().filter(|(k, _)| k.0 == topic) {
                        rollup::add(&mut want, tier, *time, *value);
                    }
                    if !rollup::keeps_ends(topic) {
                        for w in &mut want {
                            (w.first, w.last) = (None, None);
                        }
                    }
                    let rows = store.rollups(topic, tier, from, to).unwrap();
                    let strip = |rows: &[Row]| rows.iter().map(|r| (r.start, r.n, r.min, r.max, r.first, r.last)).collect::<Vec<_>>();
                    prop_assert_eq!(strip(&rows), strip(&want), "{} {}", topic, tier);
                    for (r, w) in rows.iter().zip(&want) {
                        prop_assert!((r.sum - w.sum).abs() < 1e-6, "sum {} against {}", r.sum, w.sum);
                    }
                }
            }
        }
    }
}
