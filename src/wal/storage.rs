//! The file-system surface the log and snapshots need, behind a small trait so that tests can run
//! every scenario on a crash-model file system in memory and inject I/O errors at named points.
//!
//! The contract each implementation keeps is the POSIX one the durability argument relies on:
//! - `sync_data` makes the bytes written to a file so far survive a crash;
//! - a new name (create or rename) survives a crash only after `sync_dir` on its directory;
//! - `rename` replaces the target atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// A file opened for writing.
pub trait StorageFile: Send {
    /// Writes the whole buffer at this handle's position (the end of a file just created) and
    /// moves the position past it. Bytes already there (zeros written ahead by
    /// [`StorageFile::zero_fill`]) are overwritten.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes and makes the new length durable (`ftruncate`, `fsync`).
    /// Works on a full file system: it frees space rather than taking it.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Writes `len` zero bytes from `offset`, beyond everything written to the file so far, and
    /// makes them and the file's new length durable (`pwrite`, `fdatasync`), without moving this
    /// handle's position. The log zeroes the space ahead of its writes this way, so that a
    /// batch's `fdatasync` overwrites blocks that are already allocated, written and inside the
    /// file, and waits for the data alone (see `docs/design.md`, "Zeroed ahead").
    fn zero_fill(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// A second handle on the same file, for [`StorageFile::zero_fill`] from another thread.
    fn try_clone(&self) -> io::Result<Box<dyn StorageFile>>;
    /// Writes the bytes in `offset..offset + len`, already written to the file, out to the disk
    /// and waits until they are (`sync_file_range` on Linux; nothing elsewhere). It makes
    /// nothing durable: neither the file's length nor the disk's cache is flushed, so only
    /// [`StorageFile::sync_data`] may be relied on. What it is for: a large file written in one
    /// go (a snapshot) would otherwise sit in the page cache, hundreds of megabytes of it, until
    /// its final sync pushed it all to the disk at once, and every sync of the log issued
    /// meanwhile would wait behind it. Written back a few megabytes at a time, it leaves the
    /// disk's queue short.
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()>;
}

/// The operations the log and the snapshots perform on a directory tree.
pub trait Storage: Send + Sync + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the regular files in a directory, unsorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for sequential reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;
    /// The length of a file in bytes.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Creates a file, or truncates an existing one, for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Cuts a file to `len` bytes and makes the new length durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes an existing file's contents, as they are now, durable (`fsync`): for bytes another
    /// process wrote and may not have synced.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing any file at the target.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on a file, creating it if needed, so that two processes never share
    /// a data directory. The lock lasts as long as the returned guard.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>>;

    /// Reads a whole file into memory.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open_read(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Reads at most `max_bytes` of a file from byte `offset` (nothing if it is shorter) into
    /// `into`, replacing what it held: for a reader that follows a growing segment without
    /// reading it again from the start, and without allocating for each read.
    fn read_at(
        &self,
        path: &Path,
        offset: u64,
        max_bytes: usize,
        into: &mut Vec<u8>,
    ) -> io::Result<()> {
        let bytes = self.read_all(path)?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(max_bytes).min(bytes.len());
        into.clear();
        into.extend_from_slice(&bytes[start..end]);
        Ok(())
    }
}

/// A shared storage handle.
pub type SharedStorage = Arc<dyn Storage>;

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

struct FsFile(File);

impl StorageFile for FsFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.sync_all()
    }

    fn zero_fill(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("zero fill beyond 2^64 bytes"))?;
        let mut at = offset;
        while at < end {
            let piece = (end - at).min(ZEROS.len() as u64) as usize;
            self.0.write_all_at(&ZEROS[..piece], at)?;
            at += piece as u64;
        }
        self.0.sync_data()
    }

    fn try_clone(&self) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(FsFile(self.0.try_clone()?)))
    }

    #[cfg(target_os = "linux")]
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let out_of_range = || io::Error::other("write-back range beyond 2^63 bytes");
        let offset = i64::try_from(offset).map_err(|_| out_of_range())?;
        let len = i64::try_from(len).map_err(|_| out_of_range())?;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: sync_file_range reads no memory of this process; the descriptor is this
        // file's own, open for as long as `self` lives.
        let result = unsafe { libc::sync_file_range(self.0.as_raw_fd(), offset, len, flags) };
        if result == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn write_back(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

impl Storage for FsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            File::open(path)?,
        )))
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(FsFile(file)))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is locked: another creditd process uses this data directory",
                    path.display()
                ),
            )),
            Err(fs::TryLockError::Error(error)) => Err(error),
        }
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(
        &self,
        path: &Path,
        offset: u64,
        max_bytes: usize,
        into: &mut Vec<u8>,
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = File::open(path)?;
        into.clear();
        into.resize(max_bytes, 0);
        let mut filled = 0;
        while filled < max_bytes {
            match file.read_at(&mut into[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        into.truncate(filled);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writing back leaves the bytes as written, in any ranges, and a range past the end is not
    /// an error (the kernel writes back what is there).
    #[test]
    fn write_back_keeps_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let bytes: Vec<u8> = (0..10u32 << 20).map(|i| (i % 253) as u8).collect();
        let mut file = FsStorage.create(&path).unwrap();
        file.write_all(&bytes[..6 << 20]).unwrap();
        file.write_back(0, 6 << 20).unwrap();
        file.write_all(&bytes[6 << 20..]).unwrap();
        file.write_back(6 << 20, 4 << 20).unwrap();
        file.write_back(2 << 20, 1 << 20).unwrap();
        file.write_back(9 << 20, 8 << 20).unwrap();
        file.sync_data().unwrap();
        assert_eq!(FsStorage.read_all(&path).unwrap(), bytes);
    }
}
