//! The engine: tenants, users, wallets per currency, reservations, the action catalogue, top-up
//! packages and idempotency keys. It is the only code that changes balances.
//!
//! Every change follows one path: validate (no lock), take the user's shard lock, decide, encode
//! the event and queue it in the log (which assigns its LSN), apply it with the same function
//! replay uses, release the lock. The caller then awaits [`Engine::durable`] for the returned LSN
//! before it answers. Nothing on this path does I/O or waits on anything but its own locks.
//!
//! The engine must not do I/O itself outside the log and snapshot writers, and must not know about
//! HTTP.
//!
//! Where things are: [`commit`](self) (`commit.rs`) is the one write path and walks it step by
//! step; `ops/` holds the operations, one file per family; `state/` the in-memory state and the
//! `apply` functions replay shares; `payments/` checkout, settlement and automatic top-up, built
//! on the operations and the commit path; `notify.rs` the hooks to the outside, which never block;
//! `event.rs` the log's schema (crate-private); `types.rs` the public values and errors. The path
//! of a debit: `api` handler → [`Engine::debit`] (`ops/wallet.rs`) → `commit.rs` →
//! `Account::apply` (`state/ledger.rs`).

mod clock;
mod commit;
pub(crate) mod event;
mod idempotency;
mod invariants;
mod maintenance;
pub mod notify;
mod ops;
pub mod payments;
mod recovery;
mod snapshot;
pub(crate) mod state;
pub mod types;
mod view;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

pub use clock::{Clock, ManualClock, SystemClock};
pub use commit::Context;
pub use idempotency::{Done, IdempotencyKey};
pub use invariants::{Figures, InvariantViolation};
pub(crate) use ops::is_http_url;
pub use ops::{
    check_currencies, check_portal_return_origins, check_tenant_webhook, normal_portal_origin,
    CaptureRequest, CreditRequest, DebitRequest, FieldChange, PackageSpec, PoolCreditRequest,
    ProfileChange, ProfileUpdate, ReserveRequest, RevokeRequest, Spend, TenantSpec,
    MAX_PORTAL_RETURN_ORIGINS,
};
pub use recovery::{OpenError, RecoveryReport, TornTail};
pub use snapshot::{check_chunks as check_snapshot_chunks, SnapshotError as EngineSnapshotError};
pub use state::Tenant;
pub use view::{
    ActionView, MembershipView, PackageView, PoolMemberView, PoolView, ReservationState,
    ReservationView, StateImage, TenantView, UserView, WalletView,
};

use crate::codec;
use crate::wal::snapshot::SnapshotSummary;
use crate::wal::{DurabilityError, Durable, FsStorage, FsyncMode, SharedStorage, Wal, WalOptions};
use state::State;
use types::{EngineError, Limits};

/// Everything the engine needs to know at start. Every field has a default (see [`Default`]).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where the log and snapshots live (`<data_dir>/wal`, `<data_dir>/snapshots`).
    pub data_dir: PathBuf,
    /// When the log syncs (default `always`).
    pub fsync: FsyncMode,
    /// Segment size before rotation (default 64 MiB).
    pub segment_bytes: u64,
    /// Largest record (default 1 MiB).
    pub max_record_bytes: u32,
    /// Bytes queued for the log writer before appends are refused with backpressure (default 64 MiB).
    pub queue_bytes: usize,
    /// How far ahead of its end the log's segment is kept written with zeros (default 4 MiB;
    /// 0 = off). Only while the log syncs.
    pub wal_zero_ahead_bytes: u64,
    /// Shards per tenant user map (default 512; a snapshot blocks one shard at a time).
    pub shards: usize,
    /// Take a snapshot after this many records (default 1 000 000).
    pub snapshot_every_records: u64,
    /// Take a snapshot after this many seconds if anything changed (default 300).
    pub snapshot_every_seconds: u64,
    /// Snapshots kept on disk, with the log needed to replay the oldest of them (default 2).
    pub snapshots_kept: usize,
    /// How long idempotency keys are kept (default 86 400 s).
    pub idempotency_ttl_seconds: u64,
    /// The most idempotency keys kept at once, all tenants together (default 5 000 000).
    pub idempotency_max_entries: u64,
    /// How often expired reservations are released (default 1000 ms).
    pub maintenance_interval_ms: u64,
    /// How long settled payments are remembered, so late duplicate deliveries change nothing
    /// (default 7 days; gateways retry webhooks for up to three).
    pub payment_retention_seconds: u64,
    /// Run the snapshot and maintenance threads (default true; tests turn them off to drive time).
    pub background: bool,
    /// Request limits.
    pub limits: Limits,
    /// Retention holds in place from the moment the engine opens, as (name, first LSN still
    /// needed): for readers of the log that know their position before the engine starts (see
    /// [`crate::wal::retention`]). Empty by default.
    pub retention_holds: Vec<(String, u64)>,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            data_dir: PathBuf::from("./data"),
            fsync: FsyncMode::Always,
            segment_bytes: 64 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            queue_bytes: 64 * 1024 * 1024,
            wal_zero_ahead_bytes: 4 * 1024 * 1024,
            shards: 512,
            snapshot_every_records: 1_000_000,
            snapshot_every_seconds: 300,
            snapshots_kept: 2,
            idempotency_ttl_seconds: 24 * 3600,
            idempotency_max_entries: 5_000_000,
            maintenance_interval_ms: 1000,
            payment_retention_seconds: 7 * 24 * 3600,
            background: true,
            limits: Limits::default(),
            retention_holds: Vec::new(),
        }
    }
}

impl EngineOptions {
    /// The log directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }

    /// The snapshot directory.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }

    fn wal_options(&self) -> WalOptions {
        WalOptions {
            dir: self.wal_dir(),
            fsync: self.fsync,
            segment_bytes: self.segment_bytes,
            max_record_bytes: self.max_record_bytes,
            queue_bytes: self.queue_bytes,
            zero_ahead_bytes: self.wal_zero_ahead_bytes,
            format_version: codec::FORMAT_VERSION,
        }
    }
}

struct SnapshotProgress {
    last_start_lsn: u64,
    last_finished: Instant,
}

/// The engine: in-memory state made durable by the log.
pub struct Engine {
    state: State,
    wal: Wal,
    storage: SharedStorage,
    options: EngineOptions,
    clock: Arc<dyn Clock>,
    snapshots: Mutex<SnapshotProgress>,
    /// Held while old snapshots and segments are removed; the first LSN the retention holds kept
    /// at the last removal (none before the first).
    pruning: Mutex<Option<u64>>,
    tokens: AtomicU64,
    recovery: RecoveryReport,
    background: Mutex<Option<maintenance::Background>>,
    hooks: std::sync::OnceLock<notify::Hooks>,
    /// Payment references between their check and their record: two users' locks cannot keep
    /// one reference from being issued twice, so a reference is claimed here first.
    issuing: Mutex<std::collections::HashSet<Box<str>>>,
    /// The data directory's lock: held from open until [`Engine::release_directory`].
    lock: Mutex<Option<Box<dyn std::any::Any + Send + Sync>>>,
    /// Named holds on the log that segment removal respects besides the snapshots.
    retention: crate::wal::retention::Retention,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.options.data_dir)
            .field("wal", &self.wal)
            .finish()
    }
}

impl Engine {
    /// Opens the data directory on the real file system with the system clock.
    pub fn open_dir(options: EngineOptions) -> Result<Arc<Engine>, OpenError> {
        Engine::open(options, Arc::new(FsStorage), Arc::new(SystemClock))
    }

    /// Recovers the state from the newest valid snapshot and the log, checks the invariants,
    /// starts a new log segment and (if `options.background`) the snapshot and maintenance threads.
    pub fn open(
        options: EngineOptions,
        storage: SharedStorage,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Engine>, OpenError> {
        let io = |path: PathBuf| move |source| OpenError::Io { path, source };
        // The data directory and those of its ancestors that do not exist yet.
        let missing: Vec<PathBuf> = options
            .data_dir
            .ancestors()
            .filter(|dir| !dir.as_os_str().is_empty())
            .take_while(|dir| storage.list(dir).is_err())
            .map(Path::to_path_buf)
            .collect();
        storage
            .create_dir_all(&options.wal_dir())
            .map_err(io(options.wal_dir()))?;
        storage
            .create_dir_all(&options.snapshot_dir())
            .map_err(io(options.snapshot_dir()))?;
        // New directories are entries of their parents: those must be durable before a file in
        // them counts as durable.
        let data_dir = &options.data_dir;
        storage.sync_dir(data_dir).map_err(io(data_dir.clone()))?;
        for created in &missing {
            let parent = match created.parent() {
                Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
                Some(parent) => parent,
                None => continue,
            };
            storage.sync_dir(parent).map_err(io(parent.to_path_buf()))?;
        }
        let lock_path = options.data_dir.join("LOCK");
        let lock = storage.lock(&lock_path).map_err(io(lock_path))?;
        let recovered =
            recovery::recover(&storage, &options, clock.now_ms(), recovery::Mode::Repair)?;
        let wal = Wal::start(
            Arc::clone(&storage),
            options.wal_options(),
            recovered.report.next_lsn,
        )
        .map_err(io(options.wal_dir()))?;
        let engine = Arc::new(Engine {
            state: recovered.state,
            wal,
            storage,
            clock,
            snapshots: Mutex::new(SnapshotProgress {
                last_start_lsn: recovered.report.snapshot_start_lsn.unwrap_or(0),
                last_finished: Instant::now(),
            }),
            pruning: Mutex::new(None),
            tokens: AtomicU64::new(1),
            recovery: recovered.report,
            background: Mutex::new(None),
            hooks: std::sync::OnceLock::new(),
            issuing: Mutex::new(std::collections::HashSet::new()),
            retention: crate::wal::retention::Retention::new(&options.retention_holds),
            lock: Mutex::new(Some(lock)),
            options,
        });
        if engine.options.background {
            *engine.background.lock() = Some(maintenance::Background::start(&engine));
        }
        Ok(engine)
    }

    /// Recovers a data directory's state in memory without changing any file, checks the
    /// invariants and reports what it found: the heart of `creditd wal verify`. Takes no lock, so
    /// a directory in use may show a torn tail that is only a write in progress.
    pub fn verify(
        options: &EngineOptions,
        storage: SharedStorage,
        now_ms: i64,
    ) -> Result<RecoveryReport, OpenError> {
        recovery::recover(&storage, options, now_ms, recovery::Mode::ReadOnly)
            .map(|recovered| recovered.report)
    }

    /// Stops the background threads, makes everything queued durable, takes a final snapshot and
    /// closes the log. Appends fail from here on. The data directory stays locked until
    /// [`Engine::release_directory`] (or the engine is dropped).
    pub fn shutdown(&self) -> Result<Option<SnapshotSummary>, EngineError> {
        if let Some(background) = self.background.lock().take() {
            background.stop();
        }
        self.wal.flush()?;
        let summary = match self.snapshot() {
            Ok(summary) => Some(summary),
            Err(error) => {
                tracing::error!(%error, "final snapshot failed; the log alone will recover the state");
                None
            }
        };
        self.wal.close()?;
        Ok(summary)
    }

    /// Lets go of the data directory's lock, for another engine to open it; call it after
    /// [`Engine::shutdown`] and after whatever else the stopping process writes there.
    pub fn release_directory(&self) {
        self.lock.lock().take();
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The storage the log and snapshots live on (for readers of the log beside the engine).
    pub fn storage(&self) -> &SharedStorage {
        &self.storage
    }

    /// The log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// What recovery found when the engine opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The named holds on the log: a reader of the log holds it from the first record it still
    /// needs, and segment removal after a snapshot keeps every segment from there on.
    pub fn retention(&self) -> &crate::wal::retention::Retention {
        &self.retention
    }

    /// Whether writes can be acknowledged: recovery is done (it is, once `open` returned) and the
    /// log is neither poisoned nor closed.
    pub fn is_writable(&self) -> bool {
        !self.wal.is_poisoned() && !self.wal.is_closed()
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.state.tenant(id)
    }

    /// Blocks until the record at `lsn` is durable.
    pub fn wait_durable(&self, lsn: u64) -> Result<(), DurabilityError> {
        self.wal.wait_durable(lsn)
    }

    /// Resolves once the record at `lsn` is durable.
    pub fn durable(&self, lsn: u64) -> Durable<'_> {
        self.wal.durable(lsn)
    }

    /// The clock's reading, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
#[cfg(test)]
mod tests;
