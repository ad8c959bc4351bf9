//! Zeroing ahead of the writer: a thread of its own keeps the next few MiB of the active segment
//! written with zeros and durable, so that a batch's write lands inside the file, on blocks that
//! are already allocated and written, and its `fdatasync` waits for the data alone.
//!
//! Why: on ext4 (and file systems like it) an `fdatasync` after an append must also commit the
//! file's new size and its newly allocated blocks through the journal, which on the disks
//! measured costs two more waits than the data. Overwriting zeros that are already durable
//! leaves no metadata to commit. `posix_fallocate` is not enough: its blocks are "unwritten", and
//! the first write to each still commits a conversion. Measured on this project's machines
//! (`docs/design.md`, "Zeroed ahead"): 120-byte batches 128 → 83 µs per write + sync, 6 KB
//! batches 203 → 92 µs, 40 KB batches 177 → 106 µs.
//!
//! The zeros are what an unwritten sector already reads as, so recovery and the readers stop at
//! them as at the end of the file ([`super::segment::ScanEnd::Unwritten`]), and recovery trims
//! them off.
//!
//! What keeps it safe, and it is the whole protocol: the thread zeroes only from
//! `max(zeroed_to, written_to)` on, where `written_to` is where the writer has said its writes
//! end; a writer whose batch would reach past `zeroed_to` first waits for a fill in progress
//! (which may cover those bytes) and moves `written_to` past its batch before writing it. So no
//! zero ever lands on a record. A batch that fits below `zeroed_to` needs no lock: the thread
//! never writes below it. When the writer starts a new segment it detaches the old one (waiting
//! for a fill in progress) before it trims it, and attaches the new one once its header is
//! durable.
//!
//! A fill that fails (a full disk) stops the zeroing of that segment and nothing else: the writer
//! then appends past the zeroed space exactly as it would without it. Zeroing costs one extra
//! write of the log's volume; it runs only when the log syncs (`fsync = "always"`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::storage::StorageFile;

/// The most the thread zeroes with one `pwrite` + `fdatasync`.
const CHUNK_BYTES: u64 = 1 << 20;

/// The zeroer of the active segment, owned by whoever writes batches (behind the log's I/O lock).
pub(super) struct ZeroAhead {
    shared: Arc<ZeroShared>,
    thread: Option<JoinHandle<()>>,
    /// How far ahead of the writer's end the zeroed space reaches, at most.
    ahead: u64,
    /// The `zeroed_to` at which the writer last woke the thread: it wakes it once per fill.
    nudged_at: u64,
}

struct ZeroShared {
    state: Mutex<ZeroState>,
    /// The thread waits here for work; the writer, for a fill in progress.
    changed: Condvar,
    /// Where the zeroed, durable space of the active segment ends: the writer may write below it
    /// without asking (it only grows while a segment is attached).
    zeroed_to: AtomicU64,
    /// Where the writer's writes in the active segment end.
    written_to: AtomicU64,
}

struct ZeroState {
    /// A handle on the active segment; `None` while a fill runs with it, or when none is attached.
    file: Option<Box<dyn StorageFile>>,
    /// Bumped whenever a segment is attached or detached: a fill of an older one is dropped.
    generation: u64,
    /// A fill is running.
    filling: bool,
    /// Zeroing of this segment failed; the next attach tries again.
    failed: bool,
    /// The segment's size limit: nothing is zeroed past it.
    limit: u64,
    ahead: u64,
    stopping: bool,
}

impl ZeroAhead {
    /// Starts the thread, with no segment attached. It keeps up to `ahead` bytes zeroed past the
    /// writer's end, never past `limit` (the segment size).
    pub(super) fn start(limit: u64, ahead: u64) -> std::io::Result<ZeroAhead> {
        let shared = Arc::new(ZeroShared {
            state: Mutex::new(ZeroState {
                file: None,
                generation: 0,
                filling: false,
                failed: false,
                limit,
                ahead,
                stopping: false,
            }),
            changed: Condvar::new(),
            zeroed_to: AtomicU64::new(0),
            written_to: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("creditd-wal-zero".into())
            .spawn(move || run(&thread_shared))?;
        Ok(ZeroAhead {
            shared,
            thread: Some(thread),
            ahead,
            nudged_at: u64::MAX,
        })
    }

    /// Zeroes ahead in `file` (a handle on the new active segment), whose written bytes end at
    /// `end` (its header).
    pub(super) fn attach(&mut self, file: Box<dyn StorageFile>, end: u64) {
        let mut state = settled(&self.shared);
        state.file = Some(file);
        state.generation += 1;
        state.failed = false;
        self.shared.written_to.store(end, Ordering::Release);
        self.shared.zeroed_to.store(end, Ordering::Release);
        self.nudged_at = end;
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Stops zeroing the active segment, once a fill in progress has ended: after this returns,
    /// nothing writes to it but the writer.
    pub(super) fn detach(&mut self) {
        let mut state = settled(&self.shared);
        state.file = None;
        state.generation += 1;
        self.shared.zeroed_to.store(0, Ordering::Release);
    }

    /// Called before the writer writes `start..end` of the active segment (`start` being where
    /// its last write ended): makes sure no zero will land there, and wakes the thread when the
    /// zeroed space ahead runs short.
    pub(super) fn before_write(&mut self, end: u64) {
        let shared = &*self.shared;
        let zeroed_to = shared.zeroed_to.load(Ordering::Acquire);
        if end <= zeroed_to {
            // The thread writes only at or past `zeroed_to`: nothing to wait for.
            shared.written_to.store(end, Ordering::Release);
            if zeroed_to - end < self.ahead / 2 && self.nudged_at != zeroed_to {
                // Once per fill. Taking the lock orders this after the thread's last look at
                // `written_to`: it is either waiting (and woken) or about to look again.
                self.nudged_at = zeroed_to;
                drop(shared.state.lock());
                shared.changed.notify_all();
            }
            return;
        }
        // Past the zeroed space: a fill in progress may cover these bytes. Wait for it, then
        // move the writer's end forward, so that the next fill starts past this batch.
        let state = settled(&self.shared);
        shared.written_to.store(end, Ordering::Release);
        drop(state);
        shared.changed.notify_all();
    }

    /// Where the zeroed space of the active segment ends now (for tests and metrics).
    #[cfg(test)]
    pub(super) fn zeroed_to(&self) -> u64 {
        self.shared.zeroed_to.load(Ordering::Acquire)
    }
}

impl Drop for ZeroAhead {
    fn drop(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The state, once no fill is in progress.
fn settled(shared: &ZeroShared) -> parking_lot::MutexGuard<'_, ZeroState> {
    let mut state = shared.state.lock();
    while state.filling {
        shared.changed.wait(&mut state);
    }
    state
}

fn run(shared: &ZeroShared) {
    let mut state = shared.state.lock();
    loop {
        if state.stopping {
            return;
        }
        let zeroed = shared.zeroed_to.load(Ordering::Acquire);
        let written = shared.written_to.load(Ordering::Acquire);
        let start = zeroed.max(written);
        let wanted = !state.failed
            && state.file.is_some()
            && start < state.limit
            && zeroed < written.saturating_add(state.ahead);
        if !wanted {
            shared.changed.wait(&mut state);
            continue;
        }
        let end = start.saturating_add(CHUNK_BYTES).min(state.limit);
        let generation = state.generation;
        let Some(mut file) = state.file.take() else {
            continue;
        };
        state.filling = true;
        let filled =
            parking_lot::MutexGuard::unlocked(&mut state, || file.zero_fill(start, end - start));
        state.filling = false;
        if state.generation == generation {
            state.file = Some(file);
            match filled {
                Ok(()) => shared.zeroed_to.store(end, Ordering::Release),
                Err(error) => {
                    state.failed = true;
                    tracing::warn!(
                        %error,
                        offset = start,
                        "could not zero the log segment ahead of the writer; appending instead"
                    );
                }
            }
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::wal::memory::MemStorage;
    use crate::wal::storage::Storage;

    fn wait_for(zero: &ZeroAhead, at_least: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while zero.zeroed_to() < at_least {
            assert!(
                std::time::Instant::now() < deadline,
                "zeroing never got there"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn zeroes_ahead_of_the_writer_never_over_its_bytes_and_never_past_the_limit() {
        let storage = MemStorage::new();
        let dir = Path::new("/z");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("segment");
        let mut file = storage.create(&path).unwrap();
        file.write_all(&[7u8; 32]).unwrap();
        file.sync_data().unwrap();
        let limit = 5 * CHUNK_BYTES / 2;
        let mut zero = ZeroAhead::start(limit, CHUNK_BYTES).unwrap();
        zero.attach(file.try_clone().unwrap(), 32);
        wait_for(&zero, 32 + CHUNK_BYTES);
        let mut written = 32u64;
        // Writes that reach past the zeroed space (and batches that overtake a fill) must keep
        // every byte the writer wrote.
        for round in 0..200u64 {
            let len = 1000 + (round * 7919) % 30_000;
            let end = (written + len).min(limit);
            if end == written {
                break;
            }
            zero.before_write(end);
            file.write_all(&vec![0x5a; (end - written) as usize])
                .unwrap();
            file.sync_data().unwrap();
            written = end;
        }
        drop(zero);
        let bytes = storage.read_all(&path).unwrap();
        assert!(bytes.len() as u64 <= limit, "zeroed past the limit");
        assert!(bytes[..32].iter().all(|&b| b == 7));
        let written = written as usize;
        assert!(
            bytes[32..written].iter().all(|&b| b == 0x5a),
            "a zero landed on the writer's bytes"
        );
        assert!(bytes[written..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_detached_segment_is_left_alone_and_a_crash_keeps_the_zeros() {
        let storage = MemStorage::new();
        let dir = Path::new("/z");
        storage.create_dir_all(dir).unwrap();
        let path = dir.join("segment");
        let mut file = storage.create(&path).unwrap();
        storage.sync_dir(dir).unwrap();
        file.write_all(b"header").unwrap();
        file.sync_data().unwrap();
        let mut zero = ZeroAhead::start(1 << 30, 3 * CHUNK_BYTES).unwrap();
        zero.attach(file.try_clone().unwrap(), 6);
        wait_for(&zero, 6 + 3 * CHUNK_BYTES);
        zero.before_write(10);
        file.write_all(b"abcd").unwrap();
        // Unsynced: a crash loses it but keeps the durable zeros around it.
        let image = storage.crash_image(|_, _| 0);
        let crashed = image.read_all(&path).unwrap();
        assert_eq!(&crashed[..6], b"header");
        assert!(crashed[6..].iter().all(|&b| b == 0));
        assert!(crashed.len() as u64 >= 6 + 3 * CHUNK_BYTES);
        zero.detach();
        let len = storage.len(&path).unwrap();
        file.truncate(10).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            storage.len(&path).unwrap(),
            10,
            "zeroed after detach (was {len})"
        );
        assert_eq!(storage.read_all(&path).unwrap(), b"headerabcd");
    }
}
