//! The write-ahead log: each batch's new readings (one journal record, whose
//! layout `readings/record.rs` owns) appended to files of our own, every frame
//! checksummed, so that damage is found and said, never passed over. It knows
//! nothing of what a record holds, and nothing of sled.
//!
//! `<storage>/wal/<first record, 16 hex digits>.wal`: [`MAGIC`], then frames
//! `length u32 | crc32 u32 | record u64 | synced u64 | floor u64 |
//! generation u64 | body` (LE), the CRC over all after it. `synced` is how far
//! this file was synced when the frame was appended, `floor` the oldest record
//! then still needed (those below had their readings in chunks, flushed), and
//! `generation` how many sled flushes had completed: what a frame says of the
//! frames before it lets damage be judged later, and a sled that went back
//! (lost flushes it had completed) be found. [`Wal::sync`] (one `fdatasync`) is
//! the durability point of a batch. A file is closed (synced) at [`ROTATE_AT`]
//! bytes (less under a disk budget) and removed once every record in it is spent, one spent file late: if
//! sled loses its last flushes, replay still finds those readings here.
//!
//! A file is made at its full size (sparse: nothing written) and a frame
//! that would straddle a page boundary it need not starts at the next page
//! (the gap is never written). A batch's `fdatasync` then writes the one page
//! its frame is in and no file-system metadata for a new size (about half
//! the device's writes per sync: `bench/journal-sync`, BENCHMARKS.md). The zeros after the last frame
//! are the file's unused end, not damage; frames lost from below the last sync
//! known are still found (by the sync and record numbers, not the length).
//!
//! At open every frame is checked. Damage with good frames after it, or below
//! the last sync known (from the frames, or the store's note at its last
//! flush), is damage to acknowledged data: reported with file and offset, and
//! whether readings were lost (the records it can have held against the
//! floor); the frames after it are read; the file is renamed `.damaged` once
//! its readable part is safe elsewhere ([`Wal::quarantine`]). A bad end past
//! the last sync known is cut off and reported as what it is: a write torn by
//! a crash, or the last batch's readings lost, which no file can tell apart.

use super::files::{self, io_error, sync_dir};
use super::StoreError;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Each file's first bytes: the format, version 1.
const MAGIC: &[u8; 8] = b"RSWAL01\n";
/// A frame's header: length, CRC, record number, synced, floor, generation.
const HEADER: usize = 40;
/// A file past this many bytes is closed and a new one started.
pub(super) const ROTATE_AT: u64 = 4 * 1024 * 1024;
/// The page a sync writes whole: where frames start when that saves one.
const PAGE: u64 = 4096;
/// No record is this large (a batch is at most a few thousand readings): a
/// length beyond it is damage, not a frame to wait for.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The log as of a sync, as the store notes it at its flushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    /// The file appended to, by its first record.
    pub file: u64,
    /// Its length, all synced.
    pub len: u64,
    /// One past the last record written.
    pub next: u64,
    /// Records below it were spent (their readings in chunks, flushed).
    pub floor: u64,
    /// The sled flush this note is made durable by (see [`Wal::witnessed`]).
    pub generation: u64,
}

impl Position {
    pub fn encode(self) -> [u8; 40] {
        let mut v = [0u8; 40];
        for (i, n) in [self.file, self.len, self.next, self.floor, self.generation]
            .iter()
            .enumerate()
        {
            v[i * 8..(i + 1) * 8].copy_from_slice(&n.to_be_bytes());
        }
        v
    }

    /// Also the note before generations (32 bytes: generation 0).
    pub fn decode(v: &[u8]) -> Option<Position> {
        let mut full = [0u8; 40];
        match v.len() {
            32 | 40 => full[..v.len()].copy_from_slice(v),
            _ => return None,
        }
        let v = full;
        let n = |i: usize| {
            v[i * 8..(i + 1) * 8]
                .try_into()
                .ok()
                .map(u64::from_be_bytes)
        };
        Some(Position {
            file: n(0)?,
            len: n(1)?,
            next: n(2)?,
            floor: n(3)?,
            generation: n(4)?,
        })
    }
}

/// What damage cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Every record it can have held was spent: its readings are in chunks.
    None,
    /// Acknowledged readings in it that were not yet in chunks are gone.
    Lost,
    /// The end of the log, past the last sync known: a write torn by a crash
    /// (never acknowledged), or the last batch's readings lost.
    Unknown,
    /// A file set aside at an earlier open, when its damage was reported.
    Reported,
    /// A chunk whose frame is damaged: this many stored readings are gone.
    Readings(usize),
    /// sled's database is behind the journal by this many completed flushes
    /// (its file cut or damaged): what the journal still held was replayed;
    /// chunks, alert changes and refused messages from them may be gone.
    SledWentBack(u64),
    /// sled's catalogue of the chunks lost entries for this many bytes of
    /// chunks: those readings are in the segment files, not served.
    Catalogue(u64),
}

/// Damage found at open.
#[derive(Debug, Clone)]
pub struct Damage {
    /// The log file.
    pub file: PathBuf,
    /// Where the damage starts, in bytes from the file's start.
    pub offset: u64,
    /// How many bytes could not be read from there.
    pub bytes: u64,
    /// What was wrong.
    pub what: &'static str,
    /// What it cost.
    pub loss: Loss,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cost = match self.loss {
            Loss::None => "its readings were all in chunks already: none lost",
            Loss::Lost => "acknowledged readings in it that were not yet in chunks are lost",
            Loss::Unknown => "past the last sync known: a write torn by a crash, never acknowledged, or the last batch's readings lost",
            Loss::Reported => "reported when it was found; remove the file once looked at",
            Loss::SledWentBack(k) => {
                return write!(
                    f,
                    "{}: sled lost its last {k} completed flushes (the journal's frames saw them): readings the journal still held were replayed; chunks, alert changes and refused messages written in those flushes may be lost",
                    self.file.display()
                )
            }
            Loss::Catalogue(bytes) => {
                return write!(
                    f,
                    "{}: {} ({bytes} bytes of chunks): acknowledged readings in the segment files are not served; no segment file is removed or compacted, and storage.max_size is not kept, while this lasts",
                    self.file.display(),
                    self.what,
                )
            }
            Loss::Readings(n) => {
                return write!(
                    f,
                    "{} at offset {}: {} ({} bytes unreadable; a chunk of {n} stored readings is lost)",
                    self.file.display(),
                    self.offset,
                    self.what,
                    self.bytes
                )
            }
        };
        write!(
            f,
            "{} at offset {}: {} ({} bytes unreadable; {cost})",
            self.file.display(),
            self.offset,
            self.what,
            self.bytes,
        )
    }
}

/// Damage found while reading, judged once the whole log has been read.
struct Found {
    damage: Damage,
    /// The first good record after it (`None`: none in its file).
    upto: Option<u64>,
    /// Past every sync known: possibly a torn, never acknowledged write.
    past_sync: bool,
}

pub(super) struct Wal {
    dir: PathBuf,
    /// Closed files: first record → one past their last record.
    closed: BTreeMap<u64, u64>,
    /// The file appended to, by its first record.
    current_first: u64,
    current: File,
    current_len: u64,
    /// How much of the current file is synced.
    synced_len: u64,
    /// The number the next record must carry (numbers only grow).
    next_record: u64,
    /// Files found damaged at open: renamed by [`Wal::quarantine`].
    damaged: Vec<u64>,
    /// The most sled flushes any frame read at open saw completed.
    witnessed: u64,
    /// [`ROTATE_AT`], or less under a disk budget.
    rotate_at: u64,
}

fn file_name(first: u64) -> String {
    format!("{first:016x}.wal")
}

/// A frame as read back.
struct Frame<'a> {
    record: u64,
    /// How far its file was synced when it was appended.
    synced: u64,
    /// Records below it were spent then.
    floor: u64,
    /// sled flushes completed then.
    generation: u64,
    body: &'a [u8],
    /// The whole frame's length in bytes.
    len: usize,
}

/// One frame's bytes.
fn frame(record: u64, synced: u64, floor: u64, generation: u64, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(HEADER + body.len());
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    for n in [record, synced, floor, generation] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v.extend_from_slice(body);
    let crc = crc32fast::hash(&v[8..]);
    v[4..8].copy_from_slice(&crc.to_le_bytes());
    v
}

/// The frame at the start of `bytes`, if it is whole and its CRC holds.
fn parse(bytes: &[u8]) -> Result<Frame<'_>, &'static str> {
    let Some(header) = bytes.get(..HEADER) else {
        return Err("frame header cut short");
    };
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let long = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let len = usize::try_from(word(0)).unwrap_or(usize::MAX);
    if len > MAX_BODY {
        return Err("impossible frame length");
    }
    let Some(checked) = bytes.get(8..HEADER + len) else {
        return Err("frame cut short");
    };
    if crc32fast::hash(checked) != word(4) {
        return Err("checksum mismatch");
    }
    Ok(Frame {
        record: long(8),
        synced: long(16),
        floor: long(24),
        generation: long(32),
        body: &checked[HEADER - 8..],
        len: HEADER + len,
    })
}

/// The next offset after `from` where a good frame numbered above `after`
/// starts: how reading resumes past damage.
fn resync(bytes: &[u8], from: usize, after: Option<u64>) -> Option<usize> {
    (from + 1..bytes.len().saturating_sub(HEADER - 1))
        .find(|&at| parse(&bytes[at..]).is_ok_and(|f| after.is_none_or(|a| f.record > a)))
}

/// How many pages `len` bytes at `at` touch.
fn pages(at: u64, len: u64) -> u64 {
    (at + len.max(1) - 1) / PAGE - at / PAGE + 1
}

/// Where a frame of `len` bytes goes when the file's data ends at `end`:
/// there, or at the next page if that touches fewer pages (the page at
/// `end`, partly written and synced, is written again by the next sync).
fn placed(end: u64, len: u64) -> u64 {
    let next_page = end.next_multiple_of(PAGE);
    if !end.is_multiple_of(PAGE) && pages(next_page, len) < pages(end, len) {
        next_page
    } else {
        end
    }
}

/// Where the frame after a placement gap at `at` starts: only zeros up to the
/// next page, and there a good frame numbered `expected` that is larger than
/// the gap (else it would have been written at `at`). Anything else is not a
/// gap the writer left, and is judged as damage.
fn after_gap(bytes: &[u8], at: usize, expected: u64) -> Option<usize> {
    let page = usize::try_from(PAGE).ok()?;
    let next = at.next_multiple_of(page);
    if at.is_multiple_of(page) || bytes.get(at..next)?.iter().any(|b| *b != 0) {
        return None;
    }
    let f = parse(bytes.get(next..)?).ok()?;
    (f.record == expected && f.len > next - at).then_some(next)
}

impl Wal {
    /// Opens the log in `dir` (made if missing), handing every good frame to
    /// `each` in order; returns the log, ready to append, and the damage found.
    /// `noted`: the log as the store last noted it (at its last flush).
    pub fn open(
        dir: &Path,
        noted: Option<Position>,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(Wal, Vec<Damage>), StoreError> {
        files::private_dir(dir)?;
        let mut files = Vec::new();
        let mut damage = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let name = entry.map_err(|e| io_error(dir, e))?.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".wal.damaged") {
                // Said at every open until someone has looked and removed it.
                let file = dir.join(&*name);
                let bytes = std::fs::metadata(&file).map_or(0, |m| m.len());
                damage.push(Damage {
                    file,
                    offset: 0,
                    bytes,
                    what: "set aside when found damaged",
                    loss: Loss::Reported,
                });
            }
            if let Some(first) = name
                .strip_suffix(".wal")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            {
                files.push(first);
            }
        }
        files.sort_unstable();
        damage.sort_by(|a, b| a.file.cmp(&b.file));
        let mut found: Vec<Found> = Vec::new();
        let mut floor = noted.map_or(0, |n| n.floor);
        let mut closed = BTreeMap::new();
        let mut damaged = Vec::new();
        let mut last_record: Option<u64> = None;
        let mut last_file = None;
        let mut witnessed = 0;
        let mut ends = BTreeMap::new();
        for (i, &first) in files.iter().enumerate() {
            let path = dir.join(file_name(first));
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
            let next_file = files.get(i + 1).copied();
            // How far this file is known to have been synced: all of it if
            // another file follows (rotation syncs first), else what the
            // store noted and what its frames say.
            let mut synced = match noted {
                _ if next_file.is_some() => u64::MAX,
                Some(n) if n.file == first => n.len,
                Some(n) if n.file > first => u64::MAX,
                _ => 0,
            };
            let mut hurt = false;
            let mut file_last = None;
            let mut at = MAGIC.len();
            if bytes.get(..MAGIC.len()) != Some(MAGIC) {
                // Written and synced with the file's creation: never torn.
                hurt = true;
                found.push(Found {
                    damage: Damage {
                        file: path.clone(),
                        offset: 0,
                        bytes: bytes.len() as u64,
                        what: "not a roomsense log file (bad header)",
                        loss: Loss::Lost,
                    },
                    upto: None,
                    past_sync: false,
                });
                at = bytes.len();
            }
            while at < bytes.len() {
                match parse(&bytes[at..]) {
                    Ok(f) if last_record.is_none_or(|l| f.record > l) => {
                        each(f.record, f.body)?;
                        last_record = Some(f.record);
                        file_last = Some(f.record);
                        synced = synced.max(f.synced);
                        floor = floor.max(f.floor);
                        witnessed = witnessed.max(f.generation);
                        at += f.len;
                    }
                    bad => {
                        let expected = file_last.map_or(first, |l| l + 1);
                        if let Some(next) = after_gap(&bytes, at, expected) {
                            at = next;
                            continue;
                        }
                        if bytes[at..].iter().all(|b| *b == 0) {
                            break; // the unused end of a file made at full size
                        }
                        let what = match bad {
                            Ok(_) => "record number out of order",
                            Err(what) => what,
                        };
                        let next = resync(&bytes, at, last_record);
                        let end = next.unwrap_or(bytes.len());
                        let past_sync = next.is_none() && (at as u64) >= synced;
                        found.push(Found {
                            damage: Damage {
                                file: path.clone(),
                                offset: at as u64,
                                bytes: (end - at) as u64,
                                what,
                                loss: Loss::Lost,
                            },
                            upto: next.and_then(|n| parse(&bytes[n..]).ok()).map(|f| f.record),
                            past_sync,
                        });
                        if past_sync {
                            // Cut off, so that appends go on behind good frames.
                            truncate(&path, at as u64)?;
                            break;
                        }
                        hurt = true;
                        at = end;
                    }
                }
            }
            // Where the frames end (before a zero end, or the file's end).
            let len = at.min(bytes.len()) as u64;
            ends.insert(first, len);
            let missing = match next_file {
                // The next file's name is the record that follows this one's last.
                Some(n) => !hurt && file_last.is_none_or(|l| l + 1 < n),
                None => synced != u64::MAX && synced > len,
            };
            if missing {
                hurt = true;
                found.push(Found {
                    damage: Damage {
                        file: path.clone(),
                        offset: len,
                        bytes: synced.saturating_sub(len).min(u64::from(u32::MAX)),
                        what: "file cut short: synced frames are missing",
                        loss: Loss::Lost,
                    },
                    upto: next_file.or(noted.map(|n| n.next)),
                    past_sync: false,
                });
            }
            if hurt {
                damaged.push(first);
            }
            let end = last_record.map_or(first, |r| r + 1);
            if next_file.is_none() && !hurt {
                last_file = Some(first);
            } else {
                closed.insert(first, end);
            }
        }
        // Judged with the newest floor any frame (or the store) gave.
        for f in found {
            let mut d = f.damage;
            d.loss = match f.upto {
                Some(upto) if upto <= floor => Loss::None,
                _ if f.past_sync => Loss::Unknown,
                _ => Loss::Lost,
            };
            damage.push(d);
        }
        let next_record = last_record
            .map_or(0, |r| r + 1)
            .max(files.last().map_or(0, |f| *f));
        // Appends go on in the last file, unless it is damaged: then in a new one.
        let current_first = last_file.unwrap_or(next_record);
        let (current, made_len) = open_log_file(dir, current_first, ROTATE_AT)?;
        let current_len = ends.get(&current_first).copied().unwrap_or(made_len);
        Ok((
            Wal {
                dir: dir.to_owned(),
                closed,
                current_first,
                current,
                current_len,
                synced_len: current_len,
                next_record,
                damaged,
                witnessed,
                rotate_at: ROTATE_AT,
            },
            damage,
        ))
    }

    /// Files are closed past `bytes` (default [`ROTATE_AT`]): smaller under
    /// a small disk budget, so that spent ones go sooner.
    pub fn rotate_at(&mut self, bytes: u64) {
        self.rotate_at = bytes;
    }

    /// The number the next record must carry.
    pub fn next_record(&self) -> u64 {
        self.next_record
    }

    /// The most sled flushes any frame read at open saw completed: a sled
    /// whose note says fewer went back.
    pub fn witnessed(&self) -> u64 {
        self.witnessed
    }

    /// Appends one record (not durable until [`Wal::sync`]); `record` must be
    /// above every record before it. `floor`: records below it are spent,
    /// durably (written into the frame for damage to be judged by).
    /// `generation`: sled flushes completed so far.
    pub fn append(
        &mut self,
        record: u64,
        floor: u64,
        generation: u64,
        body: &[u8],
    ) -> Result<(), StoreError> {
        debug_assert!(record >= self.next_record);
        if self.current_len > self.rotate_at {
            self.rotate(record)?;
        }
        let bytes = frame(record, self.synced_len, floor, generation, body);
        let path = self.dir.join(file_name(self.current_first));
        let at = placed(self.current_len, bytes.len() as u64);
        if let Err(e) = self.current.write_all_at(&bytes, at) {
            // A part may have reached the file: cut it back, so the next
            // append does not land behind a torn frame (if even that fails,
            // the next open trims it as an unsynced tail).
            let _ = self.current.set_len(self.current_len);
            return Err(io_error(&path, e));
        }
        self.current_len = at + bytes.len() as u64;
        self.next_record = record + 1;
        Ok(())
    }

    /// Closes the current file (synced) and starts one whose first record is `first`.
    fn rotate(&mut self, first: u64) -> Result<(), StoreError> {
        self.sync(0, 0)?;
        let (f, len) = open_log_file(&self.dir, first, self.rotate_at)?;
        self.closed.insert(self.current_first, first);
        self.current = f;
        self.current_first = first;
        self.current_len = len;
        self.synced_len = len;
        Ok(())
    }

    /// Makes everything appended durable (`fdatasync`): a batch's durability
    /// point. Returns where the log now ends, for the store to note; `floor`
    /// and `generation` (the sled flush the note is for) go in the note.
    pub fn sync(&mut self, floor: u64, generation: u64) -> Result<Position, StoreError> {
        if self.synced_len < self.current_len {
            self.current
                .sync_data()
                .map_err(|e| io_error(&self.dir.join(file_name(self.current_first)), e))?;
            self.synced_len = self.current_len;
        }
        Ok(Position {
            file: self.current_first,
            len: self.current_len,
            next: self.next_record,
            floor,
            generation,
        })
    }

    /// Removes closed files whose records are all below `floor` (spent, and
    /// that made durable), except the newest of them: the margin for a sled
    /// that lost its last flushes. Damaged files are never removed.
    pub fn remove_spent(&mut self, floor: u64) -> Result<(), StoreError> {
        let spent: Vec<u64> = self
            .closed
            .iter()
            .filter(|(first, end)| **end <= floor && !self.damaged.contains(first))
            .map(|(first, _)| *first)
            .collect();
        for first in spent.iter().rev().skip(1) {
            let path = self.dir.join(file_name(*first));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&path, e)),
            }
            self.closed.remove(first);
        }
        Ok(())
    }

    /// Renames the files found damaged to `<name>.damaged`, kept for
    /// inspection and never read again: call once what could be read of them
    /// is durable elsewhere.
    pub fn quarantine(&mut self) -> Result<(), StoreError> {
        for first in std::mem::take(&mut self.damaged) {
            let path = self.dir.join(file_name(first));
            let to = path.with_extension("wal.damaged");
            std::fs::rename(&path, &to).map_err(|e| io_error(&path, e))?;
            tracing::warn!(file = %to.display(), "damaged log file set aside");
            self.closed.remove(&first);
        }
        sync_dir(&self.dir)
    }

    /// Bytes in the log's files (for the footprint).
    pub fn disk_bytes(&self) -> u64 {
        let closed: u64 = self
            .closed
            .keys()
            .filter_map(|f| std::fs::metadata(self.dir.join(file_name(*f))).ok())
            .map(|m| m.len())
            .sum();
        // The current file at its full length: it is made so (sparse), and
        // will hold that much before the next one starts.
        let current = self.current.metadata().map_or(0, |m| m.len());
        closed + self.current_len.max(current)
    }
}

/// The log file starting at record `first`, opened for writes at offsets
/// (see [`placed`]), and where its data ends if it is new; a new file is
/// made `size` bytes long, sparse (see the module's comment).
fn open_log_file(dir: &Path, first: u64, size: u64) -> Result<(File, u64), StoreError> {
    files::open_to_write(dir, &dir.join(file_name(first)), MAGIC, Some(size))
}

fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        })
        .map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Frames = Vec<(u64, Vec<u8>)>;

    fn open(dir: &Path, committed: Option<Position>) -> (Wal, Frames, Vec<Damage>) {
        let mut seen = Vec::new();
        let (wal, damage) = Wal::open(dir, committed, |r, b| {
            seen.push((r, b.to_vec()));
            Ok(())
        })
        .unwrap();
        (wal, seen, damage)
    }

    fn body(i: u64) -> Vec<u8> {
        format!("record {i} ")
            .repeat(usize::try_from(i % 7).unwrap() + 1)
            .into_bytes()
    }

    fn write(dir: &Path, n: u64) -> Position {
        let (mut wal, _, _) = open(dir, None);
        for i in 0..n {
            wal.append(i, 0, 0, &body(i)).unwrap();
        }
        wal.sync(0, 0).unwrap()
    }

    fn only_file(dir: &Path) -> PathBuf {
        dir.join(file_name(0))
    }

    #[test]
    fn the_note_reads_back_and_one_from_before_generations_too() {
        let p = Position {
            file: 1,
            len: 2,
            next: 3,
            floor: 4,
            generation: 5,
        };
        assert_eq!(Position::decode(&p.encode()), Some(p));
        let before = Position::decode(&p.encode()[..32]).unwrap();
        assert_eq!((before.floor, before.generation), (4, 0));
        assert_eq!(Position::decode(&[0; 16]), None);
    }

    #[test]
    fn reads_back_what_was_appended_and_carries_on_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let committed = write(dir.path(), 10);
        let (mut wal, seen, damage) = open(dir.path(), Some(committed));
        assert!(damage.is_empty());
        assert_eq!(seen, (0..10).map(|i| (i, body(i))).collect::<Vec<_>>());
        assert_eq!(wal.next_record(), 10);
        wal.append(10, 0, 0, b"x").unwrap();
        wal.sync(0, 0).unwrap();
        drop(wal);
        let (_, seen, _) = open(dir.path(), None);
        assert_eq!(seen.len(), 11);
    }

    #[test]
    fn a_torn_tail_past_the_last_sync_is_cut_off_and_said_to_be_that() {
        let dir = tempfile::tempdir().unwrap();
        let committed = write(dir.path(), 5);
        // A sixth frame, half written, never synced.
        let f = OpenOptions::new()
            .write(true)
            .open(only_file(dir.path()))
            .unwrap();
        f.write_all_at(&frame(5, 0, 0, 0, &body(5))[..9], committed.len)
            .unwrap();
        let (_, seen, damage) = open(dir.path(), Some(committed));
        assert_eq!(seen.len(), 5);
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].loss, Loss::Unknown);
        assert_eq!(damage[0].offset, committed.len);
        assert_eq!(
            std::fs::metadata(only_file(dir.path())).unwrap().len(),
            committed.len
        );
    }

    /// Three batches, each synced before the next; the last two are then
    /// cut into. What the frames say proves only what was synced before the
    /// last good one; the store's note, when it is that recent, proves more.
    #[test]
    fn the_frames_and_the_note_tell_a_torn_end_from_lost_data() {
        let cut_into_b = |noted: bool| {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _, _) = open(dir.path(), None);
            let mut starts = Vec::new();
            let mut last = None;
            for i in 0..3 {
                starts.push(wal.current_len);
                wal.append(i, 0, 0, &body(i)).unwrap();
                last = Some(wal.sync(0, 0).unwrap());
            }
            drop(wal);
            let f = OpenOptions::new()
                .write(true)
                .open(only_file(dir.path()))
                .unwrap();
            f.set_len(starts[1] + 5).unwrap();
            let (_, seen, damage) = open(dir.path(), last.filter(|_| noted));
            assert_eq!(seen.len(), 1);
            assert!(damage.iter().all(|d| d.offset >= starts[1]), "{damage:?}");
            (damage[0].loss, dir.path().join(file_name(0)).exists())
        };
        assert_eq!(
            cut_into_b(false),
            (Loss::Unknown, true),
            "cut off, kept appending"
        );
        assert_eq!(cut_into_b(true).0, Loss::Lost);
    }

    #[test]
    fn acknowledged_frames_cut_off_are_reported_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let committed = write(dir.path(), 5);
        let f = OpenOptions::new()
            .write(true)
            .open(only_file(dir.path()))
            .unwrap();
        f.set_len(committed.len - 3).unwrap();
        let (_, seen, damage) = open(dir.path(), Some(committed));
        assert_eq!(seen.len(), 4);
        assert!(!damage.is_empty());
        assert!(damage.iter().all(|d| d.file == only_file(dir.path())));
        assert!(
            damage.iter().any(|d| d.what.contains("cut short")),
            "{damage:?}"
        );
    }

    #[test]
    fn a_flipped_byte_loses_one_frame_the_rest_is_read_and_the_file_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let committed = write(dir.path(), 20);
        let path = only_file(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = usize::try_from(committed.len / 2).unwrap();
        bytes[middle] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (mut wal, seen, damage) = open(dir.path(), Some(committed));
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(seen.len(), 19, "one frame lost, the others read");
        let d = &damage[0];
        assert!(d.offset <= middle as u64 && middle as u64 - d.offset < 100);
        // Appends go to a new file; the damaged one is kept, under another name.
        wal.append(wal.next_record(), 0, 0, b"after").unwrap();
        wal.sync(0, 0).unwrap();
        wal.quarantine().unwrap();
        assert!(!path.exists());
        assert!(path.with_extension("wal.damaged").exists());
        drop(wal);
        let (_, seen, damage) = open(dir.path(), None);
        assert_eq!(damage.len(), 1, "said again at every open: {damage:?}");
        assert_eq!(damage[0].loss, Loss::Reported);
        assert_eq!(seen.last().map(|(_, b)| b.as_slice()), Some(&b"after"[..]));
    }

    /// Batches of about a kilobyte, each synced, as at 300 readings a
    /// second: where each frame went, and the log's last position.
    fn kilobyte_batches(dir: &Path) -> (Vec<(u64, u64)>, Position) {
        let (mut wal, _, _) = open(dir, None);
        let mut frames = Vec::new();
        let mut last = None;
        for i in 0..40 {
            let body = vec![
                u8::try_from(i % 200).unwrap() + 1;
                700 + 37 * usize::try_from(i % 11).unwrap()
            ];
            let before = wal.current_len;
            wal.append(i, 0, 0, &body).unwrap();
            let len = (HEADER + body.len()) as u64;
            frames.push((wal.current_len - len, len));
            assert!(wal.current_len - len >= before);
            last = Some(wal.sync(0, 0).unwrap());
        }
        (frames, last.unwrap())
    }

    /// A file is made at its full size: the zeros after its frames are not
    /// damage, and appends go on after the frames; but synced frames that
    /// read back as zeros are missing, and said.
    #[test]
    fn the_unused_end_of_a_file_is_not_damage_but_synced_frames_lost_are() {
        let dir = tempfile::tempdir().unwrap();
        let committed = write(dir.path(), 10);
        let path = only_file(dir.path());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ROTATE_AT);
        let (mut wal, seen, damage) = open(dir.path(), Some(committed));
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(seen.len(), 10);
        wal.append(10, 0, 0, b"more").unwrap();
        let again = wal.sync(0, 0).unwrap();
        assert!(again.len < 4096, "appended after the frames: {}", again.len);
        drop(wal);
        let (_, seen, damage) = open(dir.path(), Some(again));
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(seen.len(), 11);
        // The last frame, synced and noted, reads back as zeros.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let from = committed.len;
        f.write_all_at(&vec![0; usize::try_from(again.len - from).unwrap()], from)
            .unwrap();
        let (_, seen, damage) = open(dir.path(), Some(again));
        assert_eq!(seen.len(), 10);
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].loss, Loss::Lost);
        assert!(
            damage[0].what.contains("synced frames are missing"),
            "{damage:?}"
        );
    }

    #[test]
    fn a_frame_starts_at_the_next_page_when_that_saves_a_page_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (frames, committed) = kilobyte_batches(dir.path());
        let mut gaps = 0;
        for (at, len) in &frames {
            // Each sync writes only the pages its frame touches, and never
            // more than a frame of that size needs.
            assert_eq!(pages(*at, *len), len.div_ceil(PAGE), "frame at {at}");
        }
        for w in frames.windows(2) {
            gaps += u64::from(w[0].0 + w[0].1 != w[1].0);
        }
        assert!(gaps > 5, "{gaps} gaps: the sizes were meant to cross pages");
        let (_, seen, damage) = open(dir.path(), Some(committed));
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(seen.len(), frames.len());
        // Without the placement, these frames touch a quarter more pages.
        let packed: u64 = frames
            .iter()
            .scan(MAGIC.len() as u64, |end, (_, len)| {
                let p = pages(*end, *len);
                *end += len;
                Some(p)
            })
            .sum();
        let placed_pages: u64 = frames.iter().map(|(at, len)| pages(*at, *len)).sum();
        assert!(
            placed_pages < packed,
            "{placed_pages} pages, {packed} packed"
        );
    }

    #[test]
    fn zeros_that_are_not_a_placement_gap_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (frames, committed) = kilobyte_batches(dir.path());
        let path = only_file(dir.path());
        let original = std::fs::read(&path).unwrap();
        // A frame that starts mid-page, blanked from its start to the end of
        // its page: it looks like a gap, but the frame after it is not the
        // next record.
        let (at, _) = *frames
            .iter()
            .find(|(at, len)| {
                at % PAGE != 0 && (at + len) % PAGE != 0 && at / PAGE == (at + len) / PAGE
            })
            .expect("a frame inside a page");
        let mut bytes = original.clone();
        let end = usize::try_from(at.next_multiple_of(PAGE)).unwrap();
        bytes[usize::try_from(at).unwrap()..end].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let (_, seen, damage) = open(dir.path(), Some(committed));
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].offset, at);
        assert!(seen.len() < frames.len());
        // A byte in a gap the writer left: damage too, and every frame read.
        let (gap_at, _) = frames
            .windows(2)
            .find(|w| w[0].0 + w[0].1 != w[1].0)
            .map(|w| (w[0].0 + w[0].1, w[1].0))
            .unwrap();
        let mut bytes = original;
        bytes[usize::try_from(gap_at).unwrap()] = 1;
        std::fs::write(&path, &bytes).unwrap();
        let (_, seen, damage) = open(dir.path(), Some(committed));
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].offset, gap_at);
        assert_eq!(seen.len(), frames.len());
    }

    #[test]
    fn spent_files_go_one_late_and_never_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _, _) = open(dir.path(), None);
        let big = vec![7u8; usize::try_from(ROTATE_AT).unwrap()];
        for i in 0..4 {
            wal.append(i, 0, 0, &big).unwrap();
        }
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), 4);
        wal.remove_spent(2).unwrap();
        // Files 0 and 1 are spent; 1 is kept as the margin.
        assert_eq!(files(), 3);
        assert!(!dir.path().join(file_name(0)).exists());
        wal.remove_spent(u64::MAX).unwrap();
        assert_eq!(
            files(),
            2,
            "the newest spent closed file and the current one"
        );
    }
}
