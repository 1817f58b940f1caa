//! What the store's own files (the journal, the segments) share: a private
//! folder, a file made durably with its header, errors that name the file.

use super::StoreError;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

pub(super) fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `dir`, made if missing, readable by its owner only (the building's history).
pub(super) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))
}

/// Makes a rename, a creation or a removal in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// The file at `path` in `dir`, opened to append, and its length; made if
/// new, with `magic` written and file and folder synced (rare, and it makes a
/// torn header impossible).
pub(super) fn open_for_append(
    dir: &Path,
    path: &Path,
    magic: &[u8],
) -> Result<(File, u64), StoreError> {
    open_to_write(dir, path, magic, None)
}

/// [`open_for_append`], or (`size` given) opened for writes at offsets the
/// caller keeps, and if new made `size` bytes long (sparse) after `magic`:
/// then the length returned is where the data ends, `magic`'s.
pub(super) fn open_to_write(
    dir: &Path,
    path: &Path,
    magic: &[u8],
    size: Option<u64>,
) -> Result<(File, u64), StoreError> {
    let mut f = OpenOptions::new()
        .append(size.is_none())
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    let len = f.metadata().map_err(|e| io_error(path, e))?.len();
    let start = magic.len() as u64;
    if len == 0 {
        f.write_all(magic).map_err(|e| io_error(path, e))?;
        if let Some(size) = size.filter(|s| *s > start) {
            // Only a saving: under a file-size limit the file grows as written.
            if let Err(e) = f.set_len(size) {
                tracing::debug!(file = %path.display(), error = %e, "not made at full size");
            }
        }
        f.sync_all().map_err(|e| io_error(path, e))?;
        sync_dir(dir)?;
        return Ok((f, start));
    }
    Ok((f, len.max(start)))
}
