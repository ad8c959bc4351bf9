//! A storage wrapper that holds every file sync while its gate is closed: for tests that need
//! the log writer stopped between writing a batch and syncing it (a crash image taken then, or
//! a queue that fills up behind a stuck fsync).

use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use creditd::wal::{SharedStorage, Storage, StorageFile};

/// Holds every `sync_data` while closed.
#[derive(Default)]
pub struct SyncGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Syncs waiting at the gate.
    waiting: u32,
}

impl SyncGate {
    pub fn close(&self) {
        self.state.lock().expect("gate lock").closed = true;
    }

    pub fn open(&self) {
        self.state.lock().expect("gate lock").closed = false;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut state = self.state.lock().expect("gate lock");
        if state.closed {
            state.waiting += 1;
            self.changed.notify_all();
            while state.closed {
                state = self.changed.wait(state).expect("gate lock");
            }
            state.waiting -= 1;
        }
    }

    /// Waits (up to 30 s) until some sync is held at the gate.
    pub fn wait_for_a_sync(&self) -> Result<(), String> {
        let state = self.state.lock().expect("gate lock");
        let (state, timeout) = self
            .changed
            .wait_timeout_while(state, Duration::from_secs(30), |state| state.waiting == 0)
            .expect("gate lock");
        if timeout.timed_out() && state.waiting == 0 {
            return Err("the log writer never tried to sync the record in flight".into());
        }
        Ok(())
    }
}

/// A storage with a [`SyncGate`] in front of every file sync.
pub struct GatedStorage {
    inner: SharedStorage,
    gate: Arc<SyncGate>,
}

impl GatedStorage {
    /// `inner` behind a new, open gate.
    pub fn new(inner: SharedStorage) -> (GatedStorage, Arc<SyncGate>) {
        let gate = Arc::new(SyncGate::default());
        let storage = GatedStorage {
            inner,
            gate: Arc::clone(&gate),
        };
        (storage, gate)
    }
}

struct GatedFile {
    inner: Box<dyn StorageFile>,
    gate: Arc<SyncGate>,
}

impl StorageFile for GatedFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.gate.pass();
        self.inner.sync_data()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.inner.truncate(len)
    }

    // Zeroing ahead is not held at the gate: the gate stands for the log's own syncs.
    fn zero_fill(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.zero_fill(offset, len)
    }

    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_back(offset, len)
    }

    fn try_clone(&self) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(GatedFile {
            inner: self.inner.try_clone()?,
            gate: Arc::clone(&self.gate),
        }))
    }
}

impl Storage for GatedStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        self.inner.open_read(path)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.inner.len(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(GatedFile {
            inner: self.inner.create(path)?,
            gate: Arc::clone(&self.gate),
        }))
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        self.inner.lock(path)
    }

    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_all(path)
    }
}
