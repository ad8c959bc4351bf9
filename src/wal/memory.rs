//! An in-memory file system with a crash model, and a fault injector that wraps any storage.
//!
//! [`MemStorage`] keeps, for every file, its contents as a reader sees them and its durable image
//! (what a crash would leave), and for every directory, which names have been made durable by
//! `sync_dir`. Writes land in the contents and mark a dirty range; `sync_data` copies that range
//! into the image. [`MemStorage::crash`] throws away everything that was not durable, optionally
//! keeping a torn prefix of the dirty range, exactly as a power cut would. Zeros written ahead by
//! `zero_fill` are durable at once, as the call promises, so the log's overwrites of them are
//! modelled like any other write. [`FaultyStorage`] fails a chosen write, sync or rename, or
//! tears a write in half, so tests can check that the log poisons itself and acknowledges nothing
//! more.
//!
//! Both exist for tests and benchmarks; production uses [`super::storage::FsStorage`].

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::storage::{Storage, StorageFile};

#[derive(Debug, Default, Clone)]
struct Inode {
    /// The contents as a reader sees them now.
    data: Vec<u8>,
    /// What a crash would leave (before any torn write).
    durable: Vec<u8>,
    /// The bytes written since the last sync, `start..end` of `data`; empty when clean.
    dirty: std::ops::Range<usize>,
}

impl Inode {
    /// Writes `bytes` at `at`, growing the file (with zeros before `at`) as needed.
    fn write_at(&mut self, at: usize, bytes: &[u8]) {
        let end = at + bytes.len();
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[at..end].copy_from_slice(bytes);
        self.dirty = if self.dirty.is_empty() {
            at..end
        } else {
            self.dirty.start.min(at)..self.dirty.end.max(end)
        };
    }

    /// Makes the contents durable.
    fn sync(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        if self.durable.len() != self.data.len() {
            self.durable.resize(self.data.len(), 0);
        }
        if !dirty.is_empty() {
            let end = dirty.end.min(self.data.len());
            let start = dirty.start.min(end);
            self.durable[start..end].copy_from_slice(&self.data[start..end]);
        }
    }

    /// Makes everything durable at once (a truncate or a test's direct edit).
    fn sync_all(&mut self) {
        self.durable.clone_from(&self.data);
        self.dirty = 0..0;
    }

    /// What a crash leaves: the durable image, with the first `keep` bytes of the dirty range
    /// written over it. Where the tear falls inside bytes the file already held (zeros written
    /// ahead), it falls on a sector boundary: a disk persists a sector whole or not at all. Past
    /// the durable end it may fall anywhere, as a file's length does.
    fn crashed(&self, keep: usize) -> Inode {
        let mut data = self.durable.clone();
        let start = self.dirty.start;
        let mut end = (start + keep).min(self.dirty.end).min(self.data.len());
        if end < self.dirty.end && end < data.len() {
            end -= end % super::batch::SECTOR_BYTES;
        }
        if start < end {
            if end > data.len() {
                data.resize(end, 0);
            }
            data[start..end].copy_from_slice(&self.data[start..end]);
        }
        Inode {
            durable: data.clone(),
            data,
            dirty: 0..0,
        }
    }
}

#[derive(Debug, Default)]
struct Tree {
    inodes: HashMap<u64, Inode>,
    /// Current directory entries: path → inode.
    names: BTreeMap<PathBuf, u64>,
    /// Entries as they would be found after a crash: per directory, name → inode.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: Vec<PathBuf>,
    next_inode: u64,
}

/// A crash-model file system held in memory. Cloning shares the same tree.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    tree: Arc<Mutex<Tree>>,
}

struct MemFile {
    tree: Arc<Mutex<Tree>>,
    inode: u64,
    /// Where the next `write_all` goes.
    position: usize,
}

impl MemFile {
    fn with_inode<T>(&self, f: impl FnOnce(&mut Inode) -> T) -> io::Result<T> {
        let mut tree = self.tree.lock();
        let inode = tree.inodes.get_mut(&self.inode).ok_or_else(not_found)?;
        Ok(f(inode))
    }
}

impl StorageFile for MemFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let at = self.position;
        self.with_inode(|inode| inode.write_at(at, bytes))?;
        self.position += bytes.len();
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with_inode(Inode::sync)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
        self.with_inode(|inode| {
            inode.data.truncate(len);
            inode.sync_all();
        })
    }

    fn zero_fill(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
        self.with_inode(|inode| {
            let end = at + len;
            if end > inode.data.len() {
                inode.data.resize(end, 0);
            }
            inode.data[at..end].fill(0);
            // Durable at once, as the call promises; the rest of the dirty range stays dirty.
            if end > inode.durable.len() {
                inode.durable.resize(end, 0);
            }
            inode.durable[at..end].fill(0);
        })
    }

    // Makes nothing durable, as on a real disk (where the written-back bytes may still be lost
    // with the disk's cache, and the file's length with its metadata); a range past what was
    // written is a caller's mistake.
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("write-back range out of range"))?;
        let written = self.with_inode(|inode| inode.data.len() as u64)?;
        if end > written {
            return Err(io::Error::other(format!(
                "write-back of bytes {offset}..{end} of a file of {written}"
            )));
        }
        Ok(())
    }

    fn try_clone(&self) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(MemFile {
            tree: Arc::clone(&self.tree),
            inode: self.inode,
            position: self.position,
        }))
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

impl MemStorage {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a power cut at this instant would leave on disk, as a new, independent file system:
    /// names not made durable by `sync_dir` are gone, and each file keeps its durable image with
    /// the first `keep_unsynced(path, unsynced_len)` bytes of what was written since its last
    /// sync laid over it (a torn write). Whatever still
    /// runs against `self` cannot touch the image.
    pub fn crash_image(&self, mut keep_unsynced: impl FnMut(&Path, usize) -> usize) -> MemStorage {
        let tree = self.tree.lock();
        let mut image = Tree {
            dirs: tree.dirs.clone(),
            next_inode: tree.next_inode,
            ..Tree::default()
        };
        for (path, id) in &tree.durable_names {
            if let Some(inode) = tree.inodes.get(id) {
                let unsynced = inode.dirty.len();
                let keep = keep_unsynced(path, unsynced).min(unsynced);
                image.inodes.insert(*id, inode.crashed(keep));
                image.names.insert(path.clone(), *id);
            }
        }
        image.durable_names = image.names.clone();
        MemStorage {
            tree: Arc::new(Mutex::new(image)),
        }
    }

    /// Replaces this file system's contents with [`MemStorage::crash_image`] of itself.
    pub fn crash_with(&self, keep_unsynced: impl FnMut(&Path, usize) -> usize) {
        let image = self.crash_image(keep_unsynced);
        let image_tree = std::mem::take(&mut *image.tree.lock());
        *self.tree.lock() = image_tree;
    }

    /// Simulates a power cut that loses every byte not synced.
    pub fn crash(&self) {
        self.crash_with(|_, _| 0);
    }

    /// Overwrites bytes of an existing file in place, durably, with everything else in it (for
    /// corruption tests, on a file system nothing is writing to).
    pub fn corrupt(&self, path: &Path, offset: usize, bytes: &[u8]) -> io::Result<()> {
        let mut tree = self.tree.lock();
        let id = *tree.names.get(path).ok_or_else(not_found)?;
        let inode = tree.inodes.get_mut(&id).ok_or_else(not_found)?;
        inode.write_at(offset, bytes);
        inode.sync_all();
        Ok(())
    }

    /// Appends bytes to an existing file, durably (for junk-tail tests).
    pub fn append_durably(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let len = self.len(path)? as usize;
        self.corrupt(path, len, bytes)
    }

    /// Every file path currently present, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.tree.lock().names.keys().cloned().collect()
    }
}

impl Storage for MemStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock();
        if !tree.dirs.iter().any(|d| d == dir) {
            tree.dirs.push(dir.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let tree = self.tree.lock();
        if !tree.dirs.iter().any(|d| d == dir) {
            return Err(not_found());
        }
        Ok(tree
            .names
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(io::Cursor::new(self.read_all(path)?)))
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let tree = self.tree.lock();
        let id = tree.names.get(path).ok_or_else(not_found)?;
        Ok(tree.inodes.get(id).ok_or_else(not_found)?.data.clone())
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        let tree = self.tree.lock();
        let id = tree.names.get(path).ok_or_else(not_found)?;
        Ok(tree.inodes.get(id).ok_or_else(not_found)?.data.len() as u64)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut tree = self.tree.lock();
        let id = tree.next_inode;
        tree.next_inode += 1;
        tree.inodes.insert(id, Inode::default());
        tree.names.insert(path.to_path_buf(), id);
        Ok(Box::new(MemFile {
            tree: Arc::clone(&self.tree),
            inode: id,
            position: 0,
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut tree = self.tree.lock();
        let id = *tree.names.get(path).ok_or_else(not_found)?;
        let inode = tree.inodes.get_mut(&id).ok_or_else(not_found)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("length out of range"))?;
        inode.data.truncate(len);
        inode.sync_all();
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock();
        let id = *tree.names.get(path).ok_or_else(not_found)?;
        let inode = tree.inodes.get_mut(&id).ok_or_else(not_found)?;
        inode.sync();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock();
        let id = tree.names.remove(from).ok_or_else(not_found)?;
        tree.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock();
        tree.names.remove(path).ok_or_else(not_found)?;
        Ok(())
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        // One process: nothing to exclude.
        Ok(Box::new(()))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut tree = self.tree.lock();
        let current: Vec<(PathBuf, u64)> = tree
            .names
            .iter()
            .filter(|(path, _)| path.parent() == Some(dir))
            .map(|(path, id)| (path.clone(), *id))
            .collect();
        tree.durable_names
            .retain(|path, _| path.parent() != Some(dir));
        tree.durable_names.extend(current);
        Ok(())
    }
}

/// A storage operation that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// `StorageFile::write_all`.
    Write,
    /// `StorageFile::sync_data`.
    Sync,
    /// `Storage::rename`.
    Rename,
    /// `Storage::sync_dir`.
    SyncDir,
    /// `Storage::create`.
    Create,
    /// `StorageFile::truncate`.
    Truncate,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Per point: fail the call with this ordinal (1-based) and every call after it.
    fail_from: HashMap<FaultPointKey, u64>,
    /// A write that fails after writing only this many bytes of its buffer.
    tear_write_at: Option<(u64, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FaultPointKey(u8);

impl From<FaultPoint> for FaultPointKey {
    fn from(point: FaultPoint) -> Self {
        FaultPointKey(point as u8)
    }
}

/// Wraps a storage and fails chosen calls with an I/O error.
#[derive(Clone)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    state: Arc<Mutex<FaultState>>,
    counters: Arc<[AtomicU64; 6]>,
}

impl FaultyStorage {
    /// Wraps `inner`; nothing fails until told to.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self {
            inner,
            state: Arc::default(),
            counters: Arc::new(Default::default()),
        }
    }

    /// Makes the `nth` call (1-based, counted from now) at `point`, and every later one, fail.
    pub fn fail_from(&self, point: FaultPoint, nth: u64) {
        let already = self.counters[point as usize].load(Ordering::SeqCst);
        self.state
            .lock()
            .fail_from
            .insert(point.into(), already + nth);
    }

    /// Makes the `nth` write from now write only `keep` bytes of its buffer and then fail.
    pub fn tear_write(&self, nth: u64, keep: usize) {
        let already = self.counters[FaultPoint::Write as usize].load(Ordering::SeqCst);
        self.state.lock().tear_write_at = Some((already + nth, keep));
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        let mut state = self.state.lock();
        state.fail_from.clear();
        state.tear_write_at = None;
    }

    /// How many calls reached `point` so far.
    pub fn calls(&self, point: FaultPoint) -> u64 {
        self.counters[point as usize].load(Ordering::SeqCst)
    }

    fn check(&self, point: FaultPoint) -> io::Result<u64> {
        let ordinal = self.counters[point as usize].fetch_add(1, Ordering::SeqCst) + 1;
        match self.state.lock().fail_from.get(&point.into()) {
            Some(&from) if ordinal >= from => Err(io::Error::other(format!(
                "injected fault at {point:?} call {ordinal}"
            ))),
            _ => Ok(ordinal),
        }
    }
}

struct FaultyFile {
    inner: Box<dyn StorageFile>,
    faults: FaultyStorage,
}

impl StorageFile for FaultyFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let ordinal = self.faults.check(FaultPoint::Write)?;
        let tear = self.faults.state.lock().tear_write_at;
        if let Some((at, keep)) = tear {
            if at == ordinal {
                self.inner.write_all(&bytes[..keep.min(bytes.len())])?;
                return Err(io::Error::other("injected torn write"));
            }
        }
        self.inner.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.faults.check(FaultPoint::Sync)?;
        self.inner.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.faults.check(FaultPoint::Truncate)?;
        self.inner.truncate(len)
    }

    // Zeroing ahead is not a fault point: its failure costs speed, never a record (the log
    // writes past the zeroed space as it would without it), and its calls come from a thread of
    // their own, which would make the counts of the other points depend on timing.
    fn zero_fill(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.zero_fill(offset, len)
    }

    // Not a fault point either: it makes nothing durable, and a failure would fail the final
    // sync anyway.
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_back(offset, len)
    }

    fn try_clone(&self) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(FaultyFile {
            inner: self.inner.try_clone()?,
            faults: self.faults.clone(),
        }))
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        self.inner.open_read(path)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.inner.len(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.check(FaultPoint::Create)?;
        Ok(Box::new(FaultyFile {
            inner: self.inner.create(path)?,
            faults: self.clone(),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.check(FaultPoint::Sync)?;
        self.inner.sync_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(FaultPoint::Rename)?;
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check(FaultPoint::SyncDir)?;
        self.inner.sync_dir(dir)
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_all(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_bytes_and_durable_names() {
        let storage = MemStorage::new();
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let mut file = storage.create(&dir.join("a")).unwrap();
        file.write_all(b"hello").unwrap();
        file.sync_data().unwrap();
        storage.sync_dir(dir).unwrap();
        file.write_all(b" world").unwrap();
        let mut lost = storage.create(&dir.join("b")).unwrap();
        lost.write_all(b"never named durably").unwrap();
        lost.sync_data().unwrap();
        storage.crash();
        assert_eq!(storage.read_all(&dir.join("a")).unwrap(), b"hello");
        assert!(storage.read_all(&dir.join("b")).is_err());
    }

    #[test]
    fn rename_is_durable_only_after_sync_dir() {
        let storage = MemStorage::new();
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let mut file = storage.create(&dir.join("tmp")).unwrap();
        file.write_all(b"x").unwrap();
        file.sync_data().unwrap();
        storage.sync_dir(dir).unwrap();
        storage
            .rename(&dir.join("tmp"), &dir.join("final"))
            .unwrap();
        storage.crash();
        assert_eq!(storage.list(dir).unwrap(), vec!["tmp".to_owned()]);
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_the_unsynced_tail() {
        let storage = MemStorage::new();
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let mut file = storage.create(&dir.join("a")).unwrap();
        storage.sync_dir(dir).unwrap();
        file.write_all(b"0123456789").unwrap();
        storage.crash_with(|_, unsynced| unsynced / 2);
        assert_eq!(storage.read_all(&dir.join("a")).unwrap(), b"01234");
    }

    #[test]
    fn a_torn_overwrite_of_zeroed_space_keeps_whole_sectors_and_sync_keeps_all() {
        let storage = MemStorage::new();
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("a");
        let mut file = storage.create(&path).unwrap();
        storage.sync_dir(dir).unwrap();
        file.write_all(&[1u8; 100]).unwrap();
        file.sync_data().unwrap();
        file.try_clone().unwrap().zero_fill(100, 2000).unwrap();
        file.write_all(&[2u8; 1000]).unwrap();
        // Zeros written ahead are durable at once; the overwrite is not.
        let lost = storage.crash_image(|_, _| 0).read_all(&path).unwrap();
        assert_eq!(lost.len(), 2100);
        assert!(lost[..100].iter().all(|&b| b == 1) && lost[100..].iter().all(|&b| b == 0));
        // Torn after 600 of the 1000 bytes (at offset 700): the sector holding offset 700 is
        // old, so 412 new bytes survive (up to offset 512).
        let torn = storage
            .crash_image(|_, unsynced| {
                assert_eq!(unsynced, 1000);
                600
            })
            .read_all(&path)
            .unwrap();
        assert!(torn[100..512].iter().all(|&b| b == 2));
        assert!(torn[512..].iter().all(|&b| b == 0));
        file.sync_data().unwrap();
        let kept = storage.crash_image(|_, _| 0).read_all(&path).unwrap();
        assert!(kept[100..1100].iter().all(|&b| b == 2) && kept[1100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn faults_fire_from_the_chosen_call_on() {
        let faulty = FaultyStorage::new(Arc::new(MemStorage::new()));
        let dir = Path::new("/d");
        faulty.create_dir_all(dir).unwrap();
        let mut file = faulty.create(&dir.join("a")).unwrap();
        faulty.fail_from(FaultPoint::Sync, 2);
        file.sync_data().unwrap();
        assert!(file.sync_data().is_err());
        assert!(file.sync_data().is_err());
        faulty.heal();
        file.sync_data().unwrap();
    }
}
