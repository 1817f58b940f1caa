//! Segment files: the readings' chunks, in files of our own, each chunk a
//! checksummed frame written once and never changed. sled keeps, under each
//! chunk's key, only where its frame is (a [`Loc`], behind the chunk's own
//! header); a changed chunk is a new frame, and the old one is garbage. It
//! knows nothing of what a chunk holds, and nothing of sled.
//!
//! `<storage>/segments/<number, 8 hex digits>.seg`: [`MAGIC`], then frames
//! `length u32 LE | crc32 u32 LE | key | chunk`, the CRC over key and chunk,
//! the length the chunk's. The key (the chunk's in sled) makes a frame say
//! what it is: a locator that points at the wrong frame is caught, and the
//! catalogue could be rebuilt from the files. Appends go to the newest file until
//! it passes [`ROTATE_AT`]. A segment is synced before the sled flush that
//! makes locators to it durable (`Store::flush`), and removed when none of
//! its frames is referenced any more (the store counts live bytes per segment,
//! in the same sled transaction as the locators), once that is flushed.
//!
//! A frame whose checksum fails is reported with file and offset by the
//! reader that met it; the other chunks are served.

use super::chunk::KEY_LEN;
use super::files::{self, io_error};
use super::StoreError;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Each file's first bytes: the format, version 1.
const MAGIC: &[u8; 8] = b"RSSEG01\n";
/// A frame's header: length, CRC and the chunk's key.
pub(super) const FRAME_HEADER: u64 = 8 + KEY_LEN as u64;
/// A segment past this many bytes is closed and a new one started (a frame
/// offset then fits a u32 with room to spare).
const ROTATE_AT: u64 = 64 * 1024 * 1024;

/// Where a chunk's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub segment: u32,
    /// The frame's start.
    pub offset: u32,
    /// The chunk's length (the frame is [`FRAME_HEADER`] more).
    pub len: u32,
}

impl Loc {
    /// The bytes the frame takes in its segment: what its removal frees.
    pub fn frame_bytes(self) -> u64 {
        u64::from(self.len) + FRAME_HEADER
    }
}

/// A frame as [`Segments::frames`] reads it: offset, key, chunk.
pub(super) type Frame = (u32, [u8; KEY_LEN], Vec<u8>);

/// A chunk that could not be read back as written.
#[derive(Debug, Clone)]
pub(super) struct Unreadable {
    pub file: PathBuf,
    pub offset: u64,
    pub what: &'static str,
}

pub(super) struct Segments {
    dir: PathBuf,
    /// A read-only store's own segments, read in place and never written
    /// or removed; `dir` then holds only what the open itself wrote.
    base: Option<PathBuf>,
    /// [`ROTATE_AT`]; tests make it small.
    rotate_at: std::sync::atomic::AtomicU64,
    /// The segment appended to.
    active: Mutex<Active>,
    /// Open files for reading, by number (the active one too).
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

struct Active {
    number: u32,
    file: File,
    len: u64,
    synced: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Segments {
    /// Where a segment's first frame starts (after [`MAGIC`]).
    pub const FIRST: u64 = MAGIC.len() as u64;

    /// The segments in `dir` (made if missing); appends go on in the newest.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<Segments, StoreError> {
        Self::open_over(dir, None)
    }

    /// With `base`: a read-only store's segments, read where they are, under
    /// new ones in `dir` for what its open writes (a replay's folds), numbered
    /// after base's newest so that no base file is ever appended to.
    pub fn open_over(dir: &Path, base: Option<&Path>) -> Result<Segments, StoreError> {
        files::private_dir(dir)?;
        let number = match base {
            None => newest(dir)?.unwrap_or(0),
            Some(base) => newest(base)?
                .max(newest(dir)?)
                .map_or(Some(0), |n| n.checked_add(1))
                .ok_or_else(|| StoreError::Corrupt {
                    key: base.display().to_string(),
                    message: "segment numbers exhausted".into(),
                })?,
        };
        let (file, len) = open_for_append(dir, number)?;
        Ok(Segments {
            dir: dir.to_owned(),
            base: base.map(Path::to_owned),
            rotate_at: ROTATE_AT.into(),
            active: Mutex::new(Active {
                number,
                file,
                len,
                synced: len,
            }),
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Segments are closed past `bytes` (default [`ROTATE_AT`]): smaller
    /// under a small disk budget, which frees whole segments.
    pub fn rotate_at(&self, bytes: u64) {
        self.rotate_at
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Closes the active segment now (if it holds any frame), so that what
    /// it holds can be freed once nothing points at it.
    pub fn seal(&self) -> Result<(), StoreError> {
        let mut a = lock(&self.active);
        if a.len > MAGIC.len() as u64 {
            self.rotate(&mut a)?;
        }
        Ok(())
    }

    pub fn path(&self, number: u32) -> PathBuf {
        self.dir.join(format!("{number:08x}.seg"))
    }

    /// Where segment `number` is read from: `dir`, or else the base.
    fn read_path(&self, number: u32) -> PathBuf {
        let own = self.path(number);
        match &self.base {
            Some(base) if !own.exists() => base.join(format!("{number:08x}.seg")),
            _ => own,
        }
    }

    /// The segment appended to now (never removed).
    pub fn active(&self) -> u32 {
        lock(&self.active).number
    }

    /// Appends one chunk, stored under `key`, as a frame; durable after
    /// [`Segments::sync`].
    pub fn append(&self, key: &[u8; KEY_LEN], chunk: &[u8]) -> Result<Loc, StoreError> {
        let mut a = lock(&self.active);
        if a.len > self.rotate_at.load(std::sync::atomic::Ordering::Relaxed) {
            self.rotate(&mut a)?;
        }
        let len = u32::try_from(chunk.len()).map_err(|_| StoreError::Corrupt {
            key: String::new(),
            message: "chunk too large".into(),
        })?;
        let mut frame = Vec::with_capacity(chunk.len() + 8 + KEY_LEN);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(key);
        frame.extend_from_slice(chunk);
        let crc = crc32fast::hash(&frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let path = self.path(a.number);
        if let Err(e) = a.file.write_all(&frame) {
            // Cut back what part reached the file: the next frame's offset
            // must be where the file ends.
            let _ = a.file.set_len(a.len);
            return Err(io_error(&path, e));
        }
        let offset = u32::try_from(a.len).map_err(|_| StoreError::Corrupt {
            key: path.display().to_string(),
            message: "segment past 4 GiB".into(),
        })?;
        a.len += frame.len() as u64;
        Ok(Loc {
            segment: a.number,
            offset,
            len,
        })
    }

    fn rotate(&self, a: &mut Active) -> Result<(), StoreError> {
        Self::sync_active(&self.dir, a)?;
        let number = a.number.checked_add(1).ok_or_else(|| StoreError::Corrupt {
            key: self.dir.display().to_string(),
            message: "segment numbers exhausted".into(),
        })?;
        let (file, len) = open_for_append(&self.dir, number)?;
        *a = Active {
            number,
            file,
            len,
            synced: len,
        };
        Ok(())
    }

    fn sync_active(dir: &Path, a: &mut Active) -> Result<(), StoreError> {
        if a.synced < a.len {
            a.file
                .sync_data()
                .map_err(|e| io_error(&dir.join(format!("{:08x}.seg", a.number)), e))?;
            a.synced = a.len;
        }
        Ok(())
    }

    /// Makes every frame appended so far durable: before the sled flush that
    /// makes locators to them durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        Self::sync_active(&self.dir, &mut lock(&self.active))
    }

    /// The chunk stored under `key` at `loc`, checked: `Ok(Err(_))` when its
    /// frame is damaged or is another chunk's.
    pub fn read(&self, key: &[u8], loc: Loc) -> Result<Result<Vec<u8>, Unreadable>, StoreError> {
        let path = self.read_path(loc.segment);
        let file = {
            let mut readers = lock(&self.readers);
            if let Some(f) = readers.get(&loc.segment) {
                f.clone()
            } else {
                let f = match File::open(&path) {
                    Ok(f) => Arc::new(f),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Ok(Err(Unreadable {
                            file: path,
                            offset: u64::from(loc.offset),
                            what: "segment file missing",
                        }))
                    }
                    Err(e) => return Err(io_error(&path, e)),
                };
                readers.insert(loc.segment, f.clone());
                f
            }
        };
        let mut frame = vec![0u8; usize::try_from(loc.frame_bytes()).unwrap_or(usize::MAX)];
        let unreadable = |what| {
            Ok(Err(Unreadable {
                file: path.clone(),
                offset: u64::from(loc.offset),
                what,
            }))
        };
        match file.read_exact_at(&mut frame, u64::from(loc.offset)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return unreadable("segment cut short");
            }
            Err(e) => return Err(io_error(&path, e)),
        }
        let word =
            |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
        if word(0) != loc.len {
            return unreadable("frame length does not match its locator");
        }
        if crc32fast::hash(&frame[8..]) != word(4) {
            return unreadable("checksum mismatch");
        }
        if frame[8..8 + KEY_LEN] != *key {
            return unreadable("the frame is another chunk's");
        }
        Ok(Ok(frame.split_off(8 + KEY_LEN)))
    }

    /// Up to `max` frames of segment `number` from byte `from` on (the
    /// first frame is at [`Segments::FIRST`]): each one's offset, key and
    /// chunk, checked; and where the next starts, if it is not the end. A
    /// frame that fails its checksum ends the walk (what follows cannot be
    /// trusted to start where its length says): its chunk, if still
    /// pointed at, stays where it is, and so does the segment.
    pub fn frames(
        &self,
        number: u32,
        from: u64,
        max: usize,
    ) -> Result<(Vec<Frame>, Option<u64>), StoreError> {
        use std::io::{BufReader, Read, Seek, SeekFrom};
        let path = self.read_path(number);
        let mut file = BufReader::new(File::open(&path).map_err(|e| io_error(&path, e))?);
        file.seek(SeekFrom::Start(from))
            .map_err(|e| io_error(&path, e))?;
        let (mut out, mut at) = (Vec::new(), from);
        while out.len() < max {
            let mut head = [0u8; 8 + KEY_LEN];
            match file.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok((out, None)),
                Err(e) => return Err(io_error(&path, e)),
            }
            let word =
                |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
            let mut chunk = vec![0u8; usize::try_from(word(0)).unwrap_or(usize::MAX).min(1 << 30)];
            match file.read_exact(&mut chunk) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok((out, None)),
                Err(e) => return Err(io_error(&path, e)),
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&head[8..]);
            hasher.update(&chunk);
            if hasher.finalize() != word(4) {
                return Ok((out, None));
            }
            let Ok(offset) = u32::try_from(at) else {
                return Ok((out, None));
            };
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(&head[8..]);
            at += (head.len() + chunk.len()) as u64;
            out.push((offset, key, chunk));
        }
        Ok((out, Some(at)))
    }

    /// The segments there are, but the one appended to, each with its size.
    pub fn sealed(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let active = self.active();
        let mut out = listed(&self.dir)?;
        out.retain(|(n, _)| *n != active);
        Ok(out)
    }

    /// Deletes segment `number`: none of its frames is referenced any more,
    /// durably. A base segment stays (the store is only read).
    pub fn remove(&self, number: u32) -> Result<(), StoreError> {
        lock(&self.readers).remove(&number);
        let path = self.path(number);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e)),
        }
    }

    /// Bytes in the segment files.
    pub fn disk_bytes(&self) -> u64 {
        std::iter::once(&self.dir)
            .chain(&self.base)
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(std::iter::Iterator::flatten)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The highest segment number in `dir`.
fn newest(dir: &Path) -> Result<Option<u32>, StoreError> {
    Ok(listed(dir)?.last().map(|(n, _)| *n))
}

/// The segment files in `dir`, by number, each with its size.
fn listed(dir: &Path) -> Result<Vec<(u32, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let number = entry
            .file_name()
            .to_string_lossy()
            .strip_suffix(".seg")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok());
        if let Some(n) = number {
            out.push((n, entry.metadata().map_err(|e| io_error(dir, e))?.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Segment `number`, opened to append, and its length.
fn open_for_append(dir: &Path, number: u32) -> Result<(File, u64), StoreError> {
    files::open_for_append(dir, &dir.join(format!("{number:08x}.seg")), MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_back_checked_and_a_flipped_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path()).unwrap();
        let (ka, kb) = ([1; KEY_LEN], [2; KEY_LEN]);
        let a = segments.append(&ka, b"first chunk").unwrap();
        let b = segments.append(&kb, b"second").unwrap();
        segments.sync().unwrap();
        assert_eq!(segments.read(&ka, a).unwrap().unwrap(), b"first chunk");
        assert_eq!(segments.read(&kb, b).unwrap().unwrap(), b"second");
        let wrong = segments.read(&ka, b).unwrap().unwrap_err();
        assert_eq!(wrong.what, "the frame is another chunk's");
        let path = segments.path(0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[usize::try_from(b.offset).unwrap() + 30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let again = Segments::open(dir.path()).unwrap();
        assert_eq!(again.read(&ka, a).unwrap().unwrap(), b"first chunk");
        let bad = again.read(&kb, b).unwrap().unwrap_err();
        assert_eq!(
            (bad.offset, bad.what),
            (u64::from(b.offset), "checksum mismatch")
        );
        // Appends go on after what is there.
        let c = again.append(&ka, b"third").unwrap();
        assert!(c.offset > b.offset);
        assert_eq!(again.read(&ka, c).unwrap().unwrap(), b"third");
    }
}
