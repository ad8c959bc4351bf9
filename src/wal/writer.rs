//! The group-commit writer: producers append framed records to a shared buffer under a short mutex;
//! whoever syncs next takes the whole buffer, closes it into one batch frame (see
//! [`super::batch`]), writes it with one call, makes it durable with one `fdatasync`, and publishes
//! the durable-LSN watermark that waiters await.
//!
//! Who syncs: a lone waiter (no sign of other appenders) that finds records queued and no sync in
//! progress leads the batch on its own thread ([`Shared::lead`]; on a tokio worker inside
//! `block_in_place`, so that the worker's other tasks move to another thread first), and costs no
//! hand-off to another thread and back. While others append, waiters ask the writer thread to
//! sync and wake it; it batches them and keeps writing while they keep asking. A core thread
//! (`server.core_threads`) syncs before it parks ([`Wal::sync_before_park`]), after the sync in
//! progress if there is one, unless [`HAND_OVER_RECORDS`] or more are queued: those it hands to
//! the writer thread, and serves what comes meanwhile. An append wakes the writer thread only
//! when it sleeps (after a quiet spell); while records flow it looks at the queue every
//! [`WRITER_DEADLINE`] and takes, unasked, the records that waited a whole look, which bounds how
//! long a record nobody waits for stays unwritten.
//!
//! Guarantees:
//! - LSNs are assigned in the order records enter the buffer, so the log is in LSN order and a caller
//!   that appends while holding its own lock gets its own order into the log.
//! - The buffer is bounded: past `queue_bytes` an append fails with [`AppendError::Backpressure`]
//!   instead of growing memory.
//! - After any write or sync error the log is poisoned: appends fail, every waiter whose record was
//!   not durable gets an error, and the writer stops. Nothing is retried (a failed fsync may have
//!   dropped dirty pages, so a retry that succeeds proves nothing).
//! - The failed batch is cut off the segment again (truncate and sync), so that a record whose
//!   writer was told of the failure does not come back at the next start; where the file system
//!   refuses even that, recovery may still find it, which is why such a record's outcome is
//!   reported as unknown, never as refused ([`DurabilityError`]).
//! - Each segment the writer starts is recorded in `log-end` (see [`super::end`]) before any
//!   record goes into it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::metrics::names;

use super::batch;
use super::record::{self, HEADER_BYTES};
use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::storage::{SharedStorage, StorageFile};
use super::zero_ahead::ZeroAhead;

/// When the writer calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// After every batch, before any record in it is acknowledged. The default.
    Always,
    /// Never: records are acknowledged once written to the OS. For benchmarks only; a power cut
    /// loses acknowledged writes.
    Never,
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The directory holding the segments.
    pub dir: PathBuf,
    /// When to sync.
    pub fsync: FsyncMode,
    /// A segment is closed and a new one started once it holds at least this many bytes.
    pub segment_bytes: u64,
    /// The largest payload accepted.
    pub max_record_bytes: u32,
    /// The most bytes waiting for the writer before appends are refused.
    pub queue_bytes: usize,
    /// How far ahead of its writes the active segment is kept written with zeros, so that a
    /// sync need not commit a new file size (see `zero_ahead.rs`); 0 turns it off. Only with
    /// [`FsyncMode::Always`].
    pub zero_ahead_bytes: u64,
    /// The payload codec version written in segment headers.
    pub format_version: u32,
}

/// Why an append was refused. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// An earlier write or sync failed; the log accepts nothing more until restarted.
    #[error("the write-ahead log is poisoned by an earlier I/O error")]
    Poisoned,
    /// The writer is behind by more than the queue limit.
    #[error("the write-ahead log queue is full")]
    Backpressure,
    /// The log has been shut down.
    #[error("the write-ahead log is closed")]
    Closed,
    /// The payload exceeds the record limit.
    #[error("the record is larger than the limit")]
    TooLarge,
    /// The payload holds a long run of zero bytes, which the log never writes: on disk it could
    /// not be told from a sector that was never written (see [`super::batch`]).
    #[error(
        "the record holds a run of {} or more zero bytes",
        batch::ZERO_RUN_LIMIT_BYTES
    )]
    ZeroRun,
}

/// Why a record that was queued is not known to be durable. Its outcome is unknown, not refused:
/// the record may have reached the disk in full before the failure (a write that stored it and
/// then failed, an `fdatasync` that failed after the write), and a restart that finds it keeps
/// it. The writer cuts a failed batch off the segment again where the file system allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurabilityError {
    /// The log was poisoned before the record was known to be synced.
    #[error("the write-ahead log is poisoned: the record is not known to be durable")]
    Poisoned,
    /// The log was closed before the record was synced (only if the writer died).
    #[error("the write-ahead log closed before the record was made durable")]
    Closed,
}

/// Counters of the writer's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable.
    pub records: u64,
    /// Batches written (each one write and, in `always` mode, one sync).
    pub batches: u64,
    /// Bytes written, headers included.
    pub bytes: u64,
    /// Segments started by rotation.
    pub rotations: u64,
    /// Batches a waiter wrote and synced on its own thread (see [`Shared::lone`]).
    pub led: u64,
    /// Times a waiter took on a sync (on a tokio worker, each a hand-over of the worker's tasks
    /// to another thread), whether or not it found a batch to write.
    pub leads: u64,
}

struct Queue {
    buffer: Vec<u8>,
    records: u64,
    next_lsn: u64,
    /// The writer thread waits for work (see [`run_writer`]).
    writer_idle: bool,
    /// The writer thread waits without a deadline: only a wake-up brings it back.
    writer_asleep: bool,
    /// A batch is being written and synced, by the writer thread or by a waiter leading it (see
    /// [`Shared::lead`]); whoever set it holds [`Shared::io`] until it clears it.
    syncing: bool,
    /// A waiter asked the writer thread to sync what is queued ([`Shared::hand_to_writer`]).
    /// Without it the writer thread takes only records that waited a whole deadline (see
    /// [`run_writer`]): those are the core threads' to sync, or nobody waits for them.
    wanted: bool,
    /// Core threads blocked in [`Wal::sync_before_park`] until the sync in progress ends.
    parked_leaders: u32,
    closing: bool,
}

/// What writing a batch needs, owned by whoever syncs (one at a time: see [`Queue::syncing`]).
struct Io {
    storage: SharedStorage,
    segment: ActiveSegment,
    /// Keeps the space ahead of the segment's end zeroed, when the log syncs.
    zero: Option<ZeroAhead>,
    /// The buffer the queue gets back when it hands over a batch.
    spare: Vec<u8>,
    fsync_seconds: metrics::Histogram,
    batch_records: metrics::Histogram,
    written_bytes: metrics::Counter,
    led_batches: metrics::Counter,
}

/// Everyone waiting for an LSN, async tasks and blocked threads alike: each is woken only when its
/// own record is durable (or never will be), never all at once.
struct Waiters {
    wakers: Vec<(u64, Waker)>,
}

/// Wakes a thread parked in [`Wal::wait_durable`].
struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

struct Shared {
    queue: Mutex<Queue>,
    writer_wakeup: Condvar,
    /// Signalled at the end of each sync for the core threads waiting to lead the next one.
    sync_ended: Condvar,
    durable_lsn: AtomicU64,
    poisoned: AtomicBool,
    closed: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    waiters: Mutex<Waiters>,
    io: Mutex<Io>,
    options: WalOptions,
    /// Starts every record CRC this writer frames.
    salt: u32,
    /// When the writer started: the zero of `last_sync_end_nanos` and `first_queued_nanos`.
    origin: Instant,
    /// When the oldest record queued was appended (since `origin`, plus one); 0 when the queue
    /// is empty. Set and cleared under the queue's lock, read without it (see
    /// [`Shared::overdue`]).
    first_queued_nanos: AtomicU64,
    /// Records in the last batch written, and when its sync ended (see [`Shared::concurrent`]).
    last_batch_records: AtomicU64,
    last_sync_end_nanos: AtomicU64,
    records: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    rotations: AtomicU64,
    led: AtomicU64,
    leads: AtomicU64,
}

/// The write-ahead log's append side and its writer thread.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("durable_lsn", &self.durable_lsn())
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

struct ActiveSegment {
    file: Box<dyn StorageFile>,
    len: u64,
    records: u64,
}

impl Wal {
    /// Starts a new segment whose first record will be `next_lsn`, and the writer thread. Every
    /// record before `next_lsn` is taken as durable.
    pub fn start(
        storage: SharedStorage,
        options: WalOptions,
        next_lsn: u64,
    ) -> std::io::Result<Wal> {
        if next_lsn == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "LSNs start at 1",
            ));
        }
        // A batch's body length is a u32 (see `batch`); the queue bounds the batch.
        if options.queue_bytes > (u32::MAX as usize) / 2 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the log queue is limited to 2 GiB",
            ));
        }
        // A fresh, never-zero salt for every record this writer frames (see `record`).
        let salt = rand::random::<u32>() | 1;
        if options.fsync == FsyncMode::Never {
            tracing::warn!(
                "fsync = \"never\": acknowledged writes are NOT durable; use only for benchmarks"
            );
        }
        let segment = create_segment(&storage, &options, next_lsn, salt)?;
        let zero = start_zero_ahead(&options, &segment)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                buffer: Vec::with_capacity(1 << 20),
                records: 0,
                next_lsn,
                writer_idle: false,
                writer_asleep: false,
                syncing: false,
                wanted: false,
                parked_leaders: 0,
                closing: false,
            }),
            writer_wakeup: Condvar::new(),
            sync_ended: Condvar::new(),
            durable_lsn: AtomicU64::new(next_lsn - 1),
            poisoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            waiters: Mutex::new(Waiters { wakers: Vec::new() }),
            io: Mutex::new(Io {
                storage,
                segment,
                zero,
                spare: Vec::with_capacity(1 << 20),
                fsync_seconds: metrics::histogram!(names::WAL_FSYNC_DURATION_SECONDS),
                batch_records: metrics::histogram!(names::WAL_BATCH_RECORDS),
                written_bytes: metrics::counter!(names::WAL_WRITTEN_BYTES_TOTAL),
                led_batches: metrics::counter!(names::WAL_LED_BATCHES_TOTAL),
            }),
            options,
            salt,
            origin: Instant::now(),
            last_batch_records: AtomicU64::new(0),
            last_sync_end_nanos: AtomicU64::new(0),
            first_queued_nanos: AtomicU64::new(0),
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            led: AtomicU64::new(0),
            leads: AtomicU64::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("creditd-wal".into())
            .spawn(move || run_writer(&thread_shared))?;
        Ok(Wal {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queues one record and returns its LSN. Cheap: a mutex, a bounds check, a CRC and a copy.
    pub fn append(&self, payload: &[u8]) -> Result<u64, AppendError> {
        let shared = &*self.shared;
        if payload.is_empty() || payload.len() > shared.options.max_record_bytes as usize {
            return Err(AppendError::TooLarge);
        }
        if batch::has_long_zero_run(payload) {
            return Err(AppendError::ZeroRun);
        }
        // The payload's checksum needs no LSN, so it is computed before taking the lock.
        let payload_checksum = record::payload_checksum(shared.salt, payload);
        let mut queue = shared.queue.lock();
        if shared.poisoned.load(Ordering::Acquire) {
            return Err(AppendError::Poisoned);
        }
        // Past the highest LSN (centuries away at any rate) the log is as good as closed.
        if queue.closing || queue.next_lsn > super::MAX_LSN {
            return Err(AppendError::Closed);
        }
        if queue.buffer.len() + HEADER_BYTES + payload.len() > shared.options.queue_bytes {
            return Err(AppendError::Backpressure);
        }
        if queue.buffer.is_empty() {
            batch::begin(&mut queue.buffer);
            // One clock read per batch, not per record.
            let now = shared.origin.elapsed().as_nanos() as u64 + 1;
            shared.first_queued_nanos.store(now, Ordering::Relaxed);
        }
        let lsn = queue.next_lsn;
        queue.next_lsn += 1;
        queue.records += 1;
        record::encode_with_checksum(&mut queue.buffer, lsn, payload, payload_checksum);
        // A writer that is asleep is woken; one that waits with a deadline is not: the record's
        // waiter leads its sync (see `Shared::lead`), and a record nobody waits for is taken
        // when the deadline passes.
        let wake = std::mem::replace(&mut queue.writer_asleep, false);
        if wake {
            queue.writer_idle = false;
        }
        drop(queue);
        // The wake-up (a system call) happens after the lock is released. The writer cannot
        // miss it: it went to sleep inside `wait`, which queued it before releasing the lock,
        // and a wake that finds it busy costs one more look at the queue.
        if wake {
            shared.writer_wakeup.notify_one();
        }
        Ok(lsn)
    }

    /// The LSN the next append will get.
    pub fn next_lsn(&self) -> u64 {
        self.shared.queue.lock().next_lsn
    }

    /// Every record at or below this LSN is durable.
    pub fn durable_lsn(&self) -> u64 {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// Whether an I/O error has poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Whether the log has been closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Poisons the log from outside: for a failure the caller found (such as a record that could
    /// not be applied). Appends fail and pending waiters get an error from here on.
    pub fn poison(&self, reason: String) {
        self.shared.poison(reason);
    }

    /// The I/O error that poisoned the log, if any.
    pub fn poison_reason(&self) -> Option<String> {
        self.shared.poison_reason.lock().clone()
    }

    /// Counters of the writer's work so far.
    pub fn stats(&self) -> WalStats {
        let shared = &self.shared;
        WalStats {
            records: shared.records.load(Ordering::Relaxed),
            batches: shared.batches.load(Ordering::Relaxed),
            bytes: shared.bytes.load(Ordering::Relaxed),
            rotations: shared.rotations.load(Ordering::Relaxed),
            led: shared.led.load(Ordering::Relaxed),
            leads: shared.leads.load(Ordering::Relaxed),
        }
    }

    /// Writes and syncs what is queued, on the calling thread: the park hook of a core thread
    /// (`server.core_threads`), which runs when the thread has nothing left to do, its requests
    /// waiting for their records. Its waiters are woken on the spot, onto the thread's own run
    /// queue. If another thread is syncing, it waits for that sync to end and then syncs what
    /// queued meanwhile (unless someone else took it first): the thread has nothing else to do,
    /// and so the records of one core thread that queue during another's sync are synced by a
    /// core thread as soon as the disk is free, not handed to the writer thread. It waits at most
    /// [`PARKED_LEADER_PATIENCE`]; past that it asks the writer thread to sync them after the
    /// sync in progress and goes back to its connections, so that a stalled disk holds the thread
    /// that syncs, not every core thread.
    ///
    /// A queue of [`HAND_OVER_RECORDS`] or more goes to the writer thread instead, and the thread
    /// parks at once, ready for the requests that come during the sync.
    pub fn sync_before_park(&self) {
        let shared = &*self.shared;
        let mut queue = shared.queue.lock();
        loop {
            if queue.buffer.is_empty() || queue.closing || shared.poisoned.load(Ordering::Acquire) {
                return;
            }
            if queue.records >= HAND_OVER_RECORDS {
                drop(queue);
                shared.hand_to_writer();
                return;
            }
            if !queue.syncing {
                break;
            }
            queue.parked_leaders += 1;
            let waited = shared
                .sync_ended
                .wait_for(&mut queue, PARKED_LEADER_PATIENCE);
            queue.parked_leaders -= 1;
            if waited.timed_out() && queue.syncing {
                queue.wanted = true;
                return;
            }
        }
        drop(queue);
        shared.lead();
    }

    /// On a core thread, asks the writer thread to sync once the oldest queued record has waited
    /// [`CORE_SYNC_AFTER`], as a waiting request does (see [`Durable`]). For work that queues
    /// nothing and waits for nothing, refusing a request under overload: a core thread that only
    /// refuses never parks and polls none of its waiting requests, which would leave their records
    /// to the writer thread's deadline. Costs a load (and a clock read once something is queued).
    pub fn hand_over_if_overdue(&self) {
        if SYNCS_BEFORE_PARK.with(std::cell::Cell::get) && self.shared.overdue() {
            self.shared.hand_to_writer();
        }
    }

    /// Blocks the calling thread until `lsn` is durable.
    pub fn wait_durable(&self, lsn: u64) -> Result<(), DurabilityError> {
        let shared = &*self.shared;
        if shared.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        shared.lead();
        if shared.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        // Someone else is syncing: its end hands what queued meanwhile to the writer thread.
        shared.hand_to_writer();
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        loop {
            {
                let mut waiters = shared.waiters.lock();
                if shared.durable_lsn.load(Ordering::Acquire) >= lsn {
                    return Ok(());
                }
                if let Some(error) = shared.failure() {
                    return Err(error);
                }
                waiters.wakers.push((lsn, waker.clone()));
            }
            // An unpark that came before this park makes it return at once; a spurious return
            // just checks again.
            std::thread::park();
        }
    }

    /// A future that resolves once `lsn` is durable; holds no lock while pending.
    pub fn durable(&self, lsn: u64) -> Durable<'_> {
        Durable {
            shared: &self.shared,
            lsn,
        }
    }

    /// Blocks until everything appended so far is durable.
    pub fn flush(&self) -> Result<(), DurabilityError> {
        let last = self.next_lsn() - 1;
        self.wait_durable(last)
    }

    /// Stops accepting appends, writes and syncs everything queued, and stops the writer thread.
    /// Returns the error that poisoned the log, if one did.
    pub fn close(&self) -> Result<(), DurabilityError> {
        {
            let mut queue = self.shared.queue.lock();
            queue.closing = true;
            self.shared.writer_wakeup.notify_one();
        }
        if let Some(writer) = self.writer.lock().take() {
            if writer.join().is_err() {
                self.shared.poison("the log writer thread panicked".into());
            }
        }
        // Stops the zeroing thread (the writer's last batch is written: nothing needs it).
        drop(self.shared.io.lock().zero.take());
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake_all();
        if self.is_poisoned() {
            Err(DurabilityError::Poisoned)
        } else {
            Ok(())
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

std::thread_local! {
    /// Set on a core thread, whose park hook syncs the log (see [`Wal::sync_before_park`]).
    static SYNCS_BEFORE_PARK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one that syncs the log itself before it parks (a core thread,
/// `server.core_threads`): its waiters neither lead a sync nor wake the writer thread.
pub fn mark_syncs_before_park() {
    SYNCS_BEFORE_PARK.with(|flag| flag.set(true));
}

/// Resolves when its LSN is durable, or with an error if it never will be.
pub struct Durable<'a> {
    shared: &'a Shared,
    lsn: u64,
}

impl Future for Durable<'_> {
    type Output = Result<(), DurabilityError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let shared = this.shared;
        if shared.durable_lsn.load(Ordering::Acquire) >= this.lsn {
            return Poll::Ready(Ok(()));
        }
        // A log that failed answers at once: there is nothing to wait or yield for.
        if let Some(error) = shared.failure() {
            return Poll::Ready(Err(error));
        }
        // Who syncs. While others append too (the last batch held more than one record, or a
        // sync ended just now), the writer thread does: it batches them all, and no worker
        // thread stops serving requests for a sync. A lone request syncs its record itself: this
        // thread is awake already, which spares it the hand-off to the writer thread and back.
        // On a tokio worker that sync runs in `block_in_place`, which first hands the worker's
        // queued tasks to another thread: a sync that takes long (a stalled disk) must not
        // strand the other requests and probes queued behind it. A single-threaded runtime has
        // no other thread to hand them to, so there the writer thread syncs instead.
        use tokio::runtime::{Handle, RuntimeFlavor};
        if SYNCS_BEFORE_PARK.with(std::cell::Cell::get) {
            // A core thread: it syncs when it runs out of work (`Wal::sync_before_park`). Work
            // that never runs out (requests arriving faster than it answers them) would leave the
            // queue to the writer thread's deadline, up to two of them; once the oldest record
            // has waited `CORE_SYNC_AFTER`, the writer thread syncs now. This is checked when a
            // request starts waiting; a thread that only refuses requests checks in its refusals
            // (`Wal::hand_over_if_overdue`).
            if shared.overdue() {
                shared.hand_to_writer();
            }
        } else if !shared.lone() {
            shared.hand_to_writer();
        } else {
            shared.leads.fetch_add(1, Ordering::Relaxed);
            match Handle::try_current().map(|handle| handle.runtime_flavor()) {
                Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| shared.lead()),
                Ok(_) => shared.hand_to_writer(),
                Err(_) => shared.lead(),
            }
        }
        if shared.durable_lsn.load(Ordering::Acquire) >= this.lsn {
            return Poll::Ready(Ok(()));
        }
        let mut waiters = shared.waiters.lock();
        // Check again under the lock: the writer publishes before it takes the lock to wake.
        if shared.durable_lsn.load(Ordering::Acquire) >= this.lsn {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = shared.failure() {
            return Poll::Ready(Err(error));
        }
        waiters.wakers.push((this.lsn, cx.waker().clone()));
        Poll::Pending
    }
}

impl Shared {
    fn failure(&self) -> Option<DurabilityError> {
        if self.poisoned.load(Ordering::Acquire) {
            Some(DurabilityError::Poisoned)
        } else if self.closed.load(Ordering::Acquire) {
            Some(DurabilityError::Closed)
        } else {
            None
        }
    }

    fn publish(&self, lsn: u64) {
        self.durable_lsn.store(lsn, Ordering::Release);
        let mut waiters = self.waiters.lock();
        waiters.wakers.retain(|(waiting_for, waker)| {
            if *waiting_for <= lsn {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
    }

    fn wake_all(&self) {
        let mut waiters = self.waiters.lock();
        for (_, waker) in waiters.wakers.drain(..) {
            waker.wake();
        }
    }

    fn poison(&self, reason: String) {
        tracing::error!(%reason, "write-ahead log poisoned; refusing all writes until restart");
        self.poison_reason.lock().get_or_insert(reason);
        self.poisoned.store(true, Ordering::Release);
        self.wake_all();
    }
}

fn create_segment(
    storage: &SharedStorage,
    options: &WalOptions,
    first_lsn: u64,
    salt: u32,
) -> std::io::Result<ActiveSegment> {
    let path = options.dir.join(segment::file_name(first_lsn));
    let mut file = storage.create(&path)?;
    file.write_all(&segment::encode_salted_header(
        first_lsn,
        options.format_version,
        salt,
    ))?;
    file.sync_data()?;
    storage.sync_dir(&options.dir)?;
    super::end::write(&**storage, &options.dir, first_lsn)?;
    Ok(ActiveSegment {
        file,
        len: SEGMENT_HEADER_BYTES as u64,
        records: 0,
    })
}

/// The zeroing thread, attached to the first segment, when the log syncs and zeroing is wanted.
fn start_zero_ahead(
    options: &WalOptions,
    segment: &ActiveSegment,
) -> std::io::Result<Option<ZeroAhead>> {
    if options.fsync != FsyncMode::Always || options.zero_ahead_bytes == 0 {
        return Ok(None);
    }
    let mut zero = ZeroAhead::start(options.segment_bytes, options.zero_ahead_bytes)?;
    zero.attach(segment.file.try_clone()?, segment.len);
    Ok(Some(zero))
}

/// Starts the segment for `first_lsn` after `segment`, moving the zeroing over: the old segment
/// is detached and trimmed to its last batch first (what a reader of a finished segment expects
/// to find), then the new one is attached once its header is durable.
fn rotate(io: &mut Io, options: &WalOptions, first_lsn: u64, salt: u32) -> std::io::Result<()> {
    if let Some(zero) = &mut io.zero {
        zero.detach();
        if let Err(error) = io.segment.file.truncate(io.segment.len) {
            // The zeros stay; readers and recovery stop at them, and recovery trims them.
            tracing::warn!(%error, "could not trim the zeroed space off a finished log segment");
        }
    }
    io.segment = create_segment(&io.storage, options, first_lsn, salt)?;
    if let Some(zero) = &mut io.zero {
        zero.attach(io.segment.file.try_clone()?, io.segment.len);
    }
    Ok(())
}

struct Batch {
    bytes: Vec<u8>,
    records: u64,
    last_lsn: u64,
}

/// Hands the queued records over as a batch and marks a sync in progress. The queue must hold
/// records and nobody else may be syncing.
fn take_locked(shared: &Shared, queue: &mut Queue, spare: Vec<u8>) -> Batch {
    debug_assert!(!queue.syncing && !queue.buffer.is_empty());
    queue.syncing = true;
    shared.first_queued_nanos.store(0, Ordering::Relaxed);
    let bytes = std::mem::replace(&mut queue.buffer, spare);
    let records = std::mem::take(&mut queue.records);
    queue.wanted = false;
    Batch {
        bytes,
        records,
        last_lsn: queue.next_lsn - 1,
    }
}

/// How long the oldest queued record may wait while a core thread keeps finding work, before
/// the writer thread is asked to sync it (see [`Durable`]): several times what a core thread's
/// turn over 64 busy connections takes (about 1 ms here), so that a turn's records still share
/// one sync, and a fraction of [`WRITER_DEADLINE`].
const CORE_SYNC_AFTER: Duration = Duration::from_millis(2);

/// A sync that ended less than this long before a waiter comes to lead the next one counts as a
/// sign of requests arriving back to back (see [`Shared::concurrent`]).
const BACK_TO_BACK: Duration = Duration::from_micros(20);

impl Shared {
    /// Whether others are likely to append soon: the last batch held more than one record, or
    /// it ended only just now (one thread serving many connections, one after another).
    fn concurrent(&self) -> bool {
        if self.last_batch_records.load(Ordering::Relaxed) > 1 {
            return true;
        }
        let ended = self.last_sync_end_nanos.load(Ordering::Relaxed);
        let now = self.origin.elapsed().as_nanos() as u64;
        now.saturating_sub(ended) < BACK_TO_BACK.as_nanos() as u64
    }

    /// Whether the oldest queued record has waited [`CORE_SYNC_AFTER`] and no sync is under
    /// way to take it: a core thread that has not run out of work since (see [`Durable`]).
    fn overdue(&self) -> bool {
        let since = self.first_queued_nanos.load(Ordering::Relaxed);
        if since == 0 {
            return false;
        }
        let now = self.origin.elapsed().as_nanos() as u64 + 1;
        now.saturating_sub(since) >= CORE_SYNC_AFTER.as_nanos() as u64
    }

    /// Whether a waiter looks alone, and so should sync its record itself: nothing suggests that
    /// others append ([`Shared::concurrent`]), nobody is syncing, its record is the only one
    /// queued, and no other waiter is waiting. Checked before leading, because the hand-over
    /// of a tokio worker's tasks that a lead costs (`block_in_place`) is dear: with the last
    /// test alone, under 64 connections a quarter of the requests took on a sync (most finding one
    /// running), and the runtime grew to 150 threads.
    fn lone(&self) -> bool {
        if self.concurrent() {
            return false;
        }
        {
            let queue = self.queue.lock();
            if queue.syncing || queue.closing || queue.records != 1 {
                return false;
            }
        }
        self.waiters.lock().wakers.is_empty()
    }

    /// Writes and syncs what is queued on the calling thread, if there is something and nobody
    /// is syncing already: the group commit's leader is whoever asks first. Afterwards it hands
    /// anything queued meanwhile to the writer thread, so a caller leads at most one batch and
    /// then goes back to its own work.
    fn lead(&self) {
        let mut queue = self.queue.lock();
        if queue.syncing
            || queue.buffer.is_empty()
            || queue.closing
            || self.poisoned.load(Ordering::Acquire)
        {
            return;
        }
        let mut io = self.io.lock();
        let spare = std::mem::take(&mut io.spare);
        let batch = take_locked(self, &mut queue, spare);
        drop(queue);
        if write_batch(self, &mut io, batch).is_ok() {
            self.led.fetch_add(1, Ordering::Relaxed);
            io.led_batches.increment(1);
        }
        drop(io);
        self.end_sync();
    }

    /// Asks the writer thread to sync what is queued, and wakes it unless a sync is in progress
    /// (its end wakes the writer for what queued meanwhile).
    fn hand_to_writer(&self) {
        let mut queue = self.queue.lock();
        queue.wanted = true;
        let wake = !queue.syncing && !queue.buffer.is_empty() && queue.writer_idle;
        if wake {
            queue.writer_idle = false;
            queue.writer_asleep = false;
        }
        drop(queue);
        if wake {
            self.writer_wakeup.notify_one();
        }
    }

    /// Clears the sync in progress. Core threads waiting to lead are let go; the writer thread
    /// is woken if a waiter asked it to sync what came meanwhile (or the log is closing), since
    /// nobody else is bound to sync them.
    fn end_sync(&self) {
        let mut queue = self.queue.lock();
        queue.syncing = false;
        let leaders = queue.parked_leaders > 0;
        let wake =
            queue.writer_idle && ((queue.wanted && !queue.buffer.is_empty()) || queue.closing);
        if wake {
            queue.writer_idle = false;
            queue.writer_asleep = false;
        }
        drop(queue);
        if leaders {
            self.sync_ended.notify_all();
        }
        if wake {
            self.writer_wakeup.notify_one();
        }
    }
}

/// Cuts what a failed write or sync may have left of the batch off the segment, and says in the
/// poison reason whether that worked. Cutting is not a retry of the failed call: it removes the
/// bytes instead of vouching for them, and a successful truncate-and-sync makes the file's
/// length durable whatever became of its pages. If it fails too, the batch may come back at the
/// next start, complete or torn; its waiters were told the outcome is unknown either way. The
/// zeroing thread is stopped first, so that nothing writes to the segment after the cut.
fn cut_failed_batch(io: &mut Io, what: String) -> String {
    if let Some(zero) = &mut io.zero {
        zero.detach();
    }
    let segment = &mut io.segment;
    match segment.file.truncate(segment.len) {
        Ok(()) => format!("{what}; the batch was cut off the segment"),
        Err(error) => format!(
            "{what}; cutting the batch off the segment at offset {} failed too ({error}): \
             the next start may find it",
            segment.len
        ),
    }
}

/// How long the writer thread waits for work before it looks at the queue anyway, while records
/// are being appended: a record whose appender does not wait for it is written within this time.
const WRITER_DEADLINE: Duration = Duration::from_millis(5);
/// Records queued from which a core thread about to park hands the sync to the writer thread
/// rather than doing it itself ([`Wal::sync_before_park`]).
///
/// A core thread that syncs serves nothing during the sync; with the writer thread syncing, it
/// reads and runs the requests that arrive meanwhile, and their records go into the next sync.
/// The price is the writer thread's wake and its wakes of the waiting requests across threads,
/// per request, and more syncs, each with its fixed cost (about 55 µs of CPU on the development
/// VM). Large batched requests pay it back: few requests carry many records, and the core
/// thread has much to do between syncs. Many single debits do not: a sync of 57 records, 57
/// cross-thread wakes.
///
/// Measured with a threshold of 200 against none, history on, one core thread, 2 cores shared
/// with the client (`creditd loadgen`, alternating 6 s runs, 2026-12-04): batches of 100 on 8
/// connections 4–12 % more batches per second at 1–4 % more CPU per batch (three pairs; the
/// build as committed against the one before: 2–11 % more, CPU −1 to +5 %, p90 1.14–1.18
/// against 1.01–1.12 ms, three more pairs). Single debits unchanged within the noise at 160 and
/// 512 connections (the rate −3 to +4 %, CPU per debit −7 to 0 %), and not reached at 64 (at
/// most 64 records queued). A threshold of 100 made single debits at 160 connections up to 5 %
/// slower; at 32, single debits at 64 connections lost 7 % (83 k against 89.5 k/s, +1 µs of CPU
/// per debit).
const HAND_OVER_RECORDS: u64 = 200;

/// How long a core thread waits for another's sync before it leaves its records to the writer
/// thread (see [`Wal::sync_before_park`]): about 20 times a sync on a healthy disk.
const PARKED_LEADER_PATIENCE: Duration = Duration::from_millis(2);
/// Waits without an append after which the writer thread sleeps until an append wakes it.
const WRITER_QUIET_ROUNDS: u32 = 4;

/// The writer thread. It syncs what is queued when a waiter asks it to
/// ([`Shared::hand_to_writer`]), when the log closes, and otherwise once the oldest queued record
/// has waited a whole [`WRITER_DEADLINE`]: such records are left to their waiters (a lone request
/// leads its own sync, a core thread syncs before it parks) or nobody waits for them, and a record
/// nobody waits for is written within two deadlines. While records keep coming it looks at the
/// queue every deadline and appends do not wake it; after [`WRITER_QUIET_ROUNDS`] looks that saw
/// no append it sleeps until the next append wakes it.
fn run_writer(shared: &Shared) {
    let mut quiet_rounds = 0;
    // `next_lsn` at the last look, and at the one before: records below the latter have waited
    // at least a deadline.
    let mut seen_lsn = 0;
    let mut aged_below = 0;
    loop {
        let mut queue = shared.queue.lock();
        loop {
            if queue.closing && queue.buffer.is_empty() && !queue.syncing {
                return;
            }
            let oldest = queue.next_lsn - queue.records;
            let take = !queue.buffer.is_empty()
                && !queue.syncing
                && (queue.wanted || queue.closing || oldest < aged_below);
            if take {
                break;
            }
            queue.writer_idle = true;
            if quiet_rounds >= WRITER_QUIET_ROUNDS {
                queue.writer_asleep = true;
                shared.writer_wakeup.wait(&mut queue);
            } else {
                let _ = shared.writer_wakeup.wait_for(&mut queue, WRITER_DEADLINE);
            }
            queue.writer_idle = false;
            queue.writer_asleep = false;
            aged_below = seen_lsn;
            if queue.next_lsn == seen_lsn {
                quiet_rounds += 1;
            } else {
                quiet_rounds = 0;
                seen_lsn = queue.next_lsn;
            }
        }
        // Free: whoever syncs releases it before clearing `syncing`.
        let mut io = shared.io.lock();
        let spare = std::mem::take(&mut io.spare);
        let batch = take_locked(shared, &mut queue, spare);
        drop(queue);
        let written = write_batch(shared, &mut io, batch);
        drop(io);
        shared.end_sync();
        if written.is_err() {
            return;
        }
    }
}

/// Writes one batch (starting a new segment first if the batch would overfill this one), syncs
/// it, and publishes its last LSN as durable. On failure the log is poisoned and the batch cut
/// off the segment again where possible.
fn write_batch(shared: &Shared, io: &mut Io, batch: Batch) -> Result<(), ()> {
    if shared.poisoned.load(Ordering::Acquire) {
        // Poisoned from outside (the engine found a record it could not apply): write nothing
        // more, that record least of all.
        return Err(());
    }
    let options = &shared.options;
    let first_lsn = batch.last_lsn + 1 - batch.records;
    let mut bytes = batch.bytes;
    // The queue bounds a batch far below 2^32 records (each takes at least 17 bytes).
    let records = u32::try_from(batch.records).unwrap_or(u32::MAX);
    batch::seal(&mut bytes, first_lsn, records, shared.salt);
    if io.segment.records > 0 && io.segment.len + bytes.len() as u64 > options.segment_bytes {
        if let Err(error) = rotate(io, options, first_lsn, shared.salt) {
            shared.poison(format!("starting segment {first_lsn}: {error}"));
            return Err(());
        }
        shared.rotations.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(zero) = &mut io.zero {
        zero.before_write(io.segment.len + bytes.len() as u64);
    }
    if let Err(error) = io.segment.file.write_all(&bytes) {
        let what = format!("writing LSNs {first_lsn}..={}: {error}", batch.last_lsn);
        shared.poison(cut_failed_batch(io, what));
        return Err(());
    }
    if options.fsync == FsyncMode::Always {
        let started = Instant::now();
        if let Err(error) = io.segment.file.sync_data() {
            let what = format!("syncing LSNs {first_lsn}..={}: {error}", batch.last_lsn);
            shared.poison(cut_failed_batch(io, what));
            return Err(());
        }
        io.fsync_seconds.record(started.elapsed().as_secs_f64());
    }
    io.segment.len += bytes.len() as u64;
    io.segment.records += batch.records;
    shared.records.fetch_add(batch.records, Ordering::Relaxed);
    shared.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    io.batch_records.record(batch.records as f64);
    shared
        .last_batch_records
        .store(batch.records, Ordering::Relaxed);
    let ended = shared.origin.elapsed().as_nanos() as u64;
    shared.last_sync_end_nanos.store(ended, Ordering::Relaxed);
    io.written_bytes.increment(bytes.len() as u64);
    shared.publish(batch.last_lsn);
    bytes.clear();
    io.spare = bytes;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::FsStorage;

    /// A log on the real disk: who syncs depends on how long a sync takes.
    fn start(dir: &std::path::Path) -> Arc<Wal> {
        let options = WalOptions {
            dir: dir.to_path_buf(),
            fsync: FsyncMode::Always,
            segment_bytes: 64 << 20,
            max_record_bytes: 1 << 20,
            queue_bytes: 64 << 20,
            zero_ahead_bytes: 4 << 20,
            format_version: 1,
        };
        Arc::new(Wal::start(Arc::new(FsStorage), options, 1).expect("start the log"))
    }

    /// `tasks` tasks, each appending `each` records one after another and awaiting each, with
    /// `pause` between them (a client's round trip).
    async fn append_and_await(wal: &Arc<Wal>, tasks: usize, each: usize, pause: Duration) {
        let mut handles = Vec::new();
        for task in 0..tasks {
            let wal = Arc::clone(wal);
            handles.push(tokio::spawn(async move {
                for record in 0..each {
                    let payload = format!("task {task} record {record}");
                    let lsn = wal.append(payload.as_bytes()).expect("append");
                    wal.durable(lsn).await.expect("durable");
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.expect("task");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_waiter_leads_its_sync_and_concurrent_waiters_leave_it_to_the_writer() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        // A request after a pause: a sync that ended just now would be a sign of back-to-back
        // appends (one thread serving connections one after another), which the writer takes.
        append_and_await(&wal, 1, 100, Duration::from_millis(1)).await;
        let alone = wal.stats();
        assert_eq!(alone.records, 100);
        assert!(
            alone.led * 10 >= alone.batches * 9,
            "one request at a time: {} of {} batches led by their waiter",
            alone.led,
            alone.batches
        );
        // Under concurrency a lead costs the hand-over of a worker's tasks (`block_in_place`)
        // and makes a batch of one: the writer thread batches them instead. The test before
        // `lone` let about a quarter of the records lead here.
        append_and_await(&wal, 64, 40, Duration::ZERO).await;
        let after = wal.stats();
        let (records, led) = (after.records - alone.records, after.led - alone.led);
        assert_eq!(records, 64 * 40);
        assert!(
            led * 20 <= records,
            "64 tasks at once: {led} of {records} records led a batch of their own"
        );
    }

    /// Polls (up to 10 s) until `done` holds.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < until, "never: {what}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Pretends that another thread's sync is in progress and queues a record behind it; returns
    /// the record's LSN. The test must end the pretended sync (`end_sync`), or closing the log
    /// would wait for it.
    fn queue_behind_a_sync(wal: &Wal) -> u64 {
        wal.shared.queue.lock().syncing = true;
        wal.append(b"queued during a sync").expect("append")
    }

    /// A core thread that runs out of work: it syncs before it parks, then runs `after`.
    fn core_thread_parks(wal: &Arc<Wal>, after: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        let wal = Arc::clone(wal);
        std::thread::spawn(move || {
            mark_syncs_before_park();
            wal.sync_before_park();
            after();
        })
    }

    /// A core thread that keeps finding work (requests arriving faster than it answers them)
    /// never parks, so it never syncs: once its oldest record has waited `CORE_SYNC_AFTER`, the
    /// request waiting for it asks the writer thread, which syncs it then, not at its deadline.
    #[test]
    fn a_core_thread_that_never_runs_out_of_work_hands_an_overdue_record_to_the_writer() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        let core = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                mark_syncs_before_park();
                let mut cx = Context::from_waker(Waker::noop());
                let lsn = wal.append(b"a request's record").expect("append");
                let mut durable = std::pin::pin!(wal.durable(lsn));
                // Just queued: the thread syncs it when it parks; nobody else is asked.
                let pending = durable.as_mut().poll(&mut cx).is_pending();
                let asked_at_once = wal.shared.queue.lock().wanted;
                // As if queued when the log started, `CORE_SYNC_AFTER` ago or more.
                std::thread::sleep(CORE_SYNC_AFTER);
                wal.shared.first_queued_nanos.store(1, Ordering::Relaxed);
                let _ = durable.as_mut().poll(&mut cx);
                let asked_when_overdue = {
                    let queue = wal.shared.queue.lock();
                    queue.wanted || queue.syncing || wal.durable_lsn() >= lsn
                };
                (lsn, pending, asked_at_once, asked_when_overdue)
            })
        };
        let (lsn, pending, asked_at_once, asked_when_overdue) = core.join().expect("core thread");
        assert!(pending, "the record was durable before anyone synced it");
        assert!(
            !asked_at_once,
            "a fresh record was handed to the writer thread"
        );
        assert!(
            asked_when_overdue,
            "an overdue record was left to the writer's deadline"
        );
        eventually("the writer thread syncs the record", || {
            wal.durable_lsn() >= lsn
        });
        assert_eq!(wal.shared.first_queued_nanos.load(Ordering::Relaxed), 0);
    }

    /// A core thread that only refuses requests (overload) polls none of those waiting: its
    /// refusals hand an overdue record to the writer thread, and leave a fresh one alone.
    #[test]
    fn a_core_thread_that_only_refuses_hands_an_overdue_record_to_the_writer() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        // The log's clock must have run `CORE_SYNC_AFTER` for a record to be that old.
        std::thread::sleep(CORE_SYNC_AFTER);
        let lsn = wal.append(b"a waiting request's record").expect("append");
        let overdue = || wal.shared.first_queued_nanos.store(1, Ordering::Relaxed);
        // Not a core thread: nothing happens, however long the record waited.
        overdue();
        wal.hand_over_if_overdue();
        let asked_elsewhere = wal.shared.queue.lock().wanted;
        let (asked_at_once, asked_when_overdue) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    mark_syncs_before_park();
                    // Fresh: left to the thread's own sync when it parks.
                    let now = wal.shared.origin.elapsed().as_nanos() as u64;
                    wal.shared.first_queued_nanos.store(now, Ordering::Relaxed);
                    wal.hand_over_if_overdue();
                    let asked_at_once = wal.shared.queue.lock().wanted;
                    overdue();
                    wal.hand_over_if_overdue();
                    let queue = wal.shared.queue.lock();
                    (
                        asked_at_once,
                        queue.wanted || queue.syncing || wal.durable_lsn() >= lsn,
                    )
                })
                .join()
                .expect("core thread")
        });
        assert!(!asked_elsewhere, "a thread that is not a core thread asked");
        assert!(!asked_at_once, "a fresh record was handed to the writer");
        assert!(
            asked_when_overdue,
            "an overdue record was left to the deadline"
        );
        eventually("the writer thread syncs the record", || {
            wal.durable_lsn() >= lsn
        });
    }

    /// A core thread that runs out of work while another thread syncs waits for that sync to
    /// end, then syncs what queued meanwhile, instead of parking with its records unsynced.
    #[test]
    fn a_core_thread_waits_for_the_sync_in_progress_and_then_syncs_its_records() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        let lsn = queue_behind_a_sync(&wal);
        let core = core_thread_parks(&wal, || {});
        let until = Instant::now() + Duration::from_secs(10);
        let mut waited = false;
        while !waited && Instant::now() < until {
            std::thread::sleep(Duration::from_micros(100));
            let queue = wal.shared.queue.lock();
            // Waiting, or past its patience already (a slow machine): it asked the writer.
            waited = queue.parked_leaders == 1 || queue.wanted;
        }
        let synced_meanwhile = wal.durable_lsn() >= lsn;
        wal.shared.end_sync();
        core.join().expect("core thread");
        assert!(waited, "the core thread did not wait for the sync to end");
        assert!(!synced_meanwhile, "nothing is synced during another sync");
        eventually("the record is durable", || wal.durable_lsn() >= lsn);
        assert_eq!(wal.stats().records, 1);
    }

    /// A sync that stalls holds the thread that syncs, not the core threads that wait for it: past
    /// its patience a waiting core thread goes back to its work, and the writer thread syncs its
    /// records once the stalled sync ends.
    #[test]
    fn a_core_thread_does_not_wait_for_a_stalled_sync_past_its_patience() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        let lsn = queue_behind_a_sync(&wal);
        let (returned, waiting) = std::sync::mpsc::channel();
        let core = core_thread_parks(&wal, move || {
            let _ = returned.send(());
        });
        let came_back = waiting.recv_timeout(Duration::from_secs(10)).is_ok();
        let wanted = wal.shared.queue.lock().wanted;
        wal.shared.end_sync();
        core.join().expect("core thread");
        assert!(
            came_back,
            "the core thread waited on while the sync stalled"
        );
        assert!(wanted, "it asked the writer thread to sync its records");
        eventually("the writer thread syncs the record", || {
            wal.durable_lsn() >= lsn
        });
        assert_eq!((wal.stats().batches, wal.stats().led), (1, 0));
    }

    /// A core thread that runs out of work syncs a queue below [`HAND_OVER_RECORDS`] itself
    /// before it parks, and hands a larger one to the writer thread instead.
    #[test]
    fn a_core_thread_hands_a_large_queue_to_the_writer_thread_and_syncs_a_small_one_itself() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        let park_with = |records: u64| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                mark_syncs_before_park();
                let mut last = 0;
                for _ in 0..records {
                    last = wal.append(b"a batched debit's record").expect("append");
                }
                let led = wal.stats().led;
                wal.sync_before_park();
                (last, wal.durable_lsn() >= last, wal.stats().led - led)
            })
            .join()
            .expect("core thread")
        };
        let (small, durable_on_return, _) = park_with(HAND_OVER_RECORDS - 1);
        assert!(
            durable_on_return,
            "a small queue was left unsynced at the park"
        );
        let batches = wal.stats().batches;
        let (large, _, led) = park_with(HAND_OVER_RECORDS);
        assert_eq!(led, 0, "the core thread synced a large queue itself");
        eventually("the writer thread syncs the large queue", || {
            wal.durable_lsn() >= large
        });
        assert!(large > small);
        assert_eq!(wal.stats().batches, batches + 1);
    }

    /// A record nobody waits for is written by the writer thread within two deadlines.
    #[test]
    fn a_record_nobody_waits_for_is_written_by_the_writer_thread() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let wal = start(dir.path());
        let lsn = wal.append(b"fire and forget").expect("append");
        eventually("the record is durable", || wal.durable_lsn() >= lsn);
        let stats = wal.stats();
        assert_eq!((stats.batches, stats.led), (1, 0));
    }
}
