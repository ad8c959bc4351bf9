//! Fuzzy snapshots of the engine's state, and loading them back.
//!
//! A snapshot notes the next LSN `S` first, then copies tenants, then users shard by shard (each
//! shard read-locked only while its users are encoded), then credit pools, then closed
//! reservations and idempotency keys. Debits carry on meanwhile, so a user or a pool copied late
//! may already include records at or after `S`; each carries its own last LSN and replay skips,
//! for each, what it has seen (a member's spend changes both: replay applies each side to the
//! entity that has not seen it). Users and pools are copied before idempotency keys on purpose: a
//! key is finished under its user's lock (and a pool's credit under the pool's), so every record
//! before `S` that they include has its key in the table by the time the table is copied.
//!
//! Before the file is renamed into place, every record the copy may include is made durable, so a
//! snapshot never holds an effect the log could lose.
//!
//! The grant tallies (what each key granted today) are copied in the same critical section that
//! notes `S`, under their own mutex, under which every grant is also appended: the copy holds
//! exactly the grants before `S`, and replay counts those from `S` on (see `state::grants`).
//!
//! Chunk payloads: a [`ChunkHead`] followed by `count` items of the kind it names.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::state::{
    Account, AccountExtra, Catalogue, IdempotencyEntry, IdempotencyState, PaymentEntry, Pool,
    ReservationEntry, ReservationPhase, ShardedMap, State, TallyImage, Tenant, Wallet,
};
use super::types::{Fingerprint, Lsn, Outcome};
use super::Engine;
use crate::codec::{self, CodecError};
use crate::wal::snapshot::{
    self as snapshot_file, SnapshotHeader, SnapshotReader, SnapshotSummary, SnapshotWriter,
};
use crate::wal::{segment, SharedStorage};

/// Chunk payloads are cut at about this size.
const CHUNK_BYTES: usize = 256 * 1024;

/// Why a snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// File I/O failed.
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The file's frames are bad.
    #[error("snapshot file: {0}")]
    File(#[from] snapshot_file::SnapshotError),
    /// A chunk's payload is not what this build writes.
    #[error("snapshot content: {0}")]
    Codec(#[from] CodecError),
    /// The content contradicts itself.
    #[error("snapshot content: {0}")]
    Content(String),
    /// The log failed while the snapshot waited for durability.
    #[error("the log failed during the snapshot: {0}")]
    Log(#[from] crate::wal::DurabilityError),
}

#[derive(Debug, Serialize, Deserialize)]
enum ChunkHead<'a> {
    Tenant {
        id: &'a str,
        #[serde(borrow)]
        catalogue: Cow<'a, Catalogue>,
    },
    Users {
        tenant: &'a str,
        count: u32,
    },
    ClosedReservations {
        tenant: &'a str,
        count: u32,
    },
    IdempotencyKeys {
        tenant: &'a str,
        count: u32,
    },
    End(Totals),
    Payments {
        count: u32,
    },
    GrantTallies {
        count: u32,
    },
    Pools {
        tenant: &'a str,
        count: u32,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Totals {
    tenants: u64,
    users: u64,
    closed_reservations: u64,
    idempotency_keys: u64,
    payments: u64,
    grant_tallies: u64,
    pools: u64,
}

impl Totals {
    /// Both counts added (saturating: a count that large fails the end chunk's check anyway).
    fn plus(&self, other: &Totals) -> Totals {
        Totals {
            tenants: self.tenants.saturating_add(other.tenants),
            users: self.users.saturating_add(other.users),
            closed_reservations: self
                .closed_reservations
                .saturating_add(other.closed_reservations),
            idempotency_keys: self.idempotency_keys.saturating_add(other.idempotency_keys),
            payments: self.payments.saturating_add(other.payments),
            grant_tallies: self.grant_tallies.saturating_add(other.grant_tallies),
            pools: self.pools.saturating_add(other.pools),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct UserImage<'a> {
    user: &'a str,
    last_lsn: Lsn,
    primary: Wallet,
    #[serde(borrow)]
    extra: Option<Cow<'a, AccountExtra>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClosedReservationImage<'a> {
    id: Lsn,
    #[serde(borrow)]
    entry: Cow<'a, ReservationEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PaymentImage<'a> {
    reference: &'a str,
    #[serde(borrow)]
    entry: Cow<'a, PaymentEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PoolImage<'a> {
    id: &'a str,
    #[serde(borrow)]
    pool: Cow<'a, Pool>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdempotencyImage<'a> {
    key: &'a str,
    fingerprint: Fingerprint,
    lsn: Lsn,
    created_ms: i64,
    outcome: Outcome,
}

/// Gathers items of one kind into chunks.
struct Chunker<'w> {
    writer: &'w mut SnapshotWriter,
    body: Vec<u8>,
    count: u32,
}

impl Chunker<'_> {
    fn item<T: Serialize>(&mut self, item: &T) -> Result<(), SnapshotError> {
        codec::encode_into(item, &mut self.body)?;
        self.count += 1;
        Ok(())
    }

    fn full(&self) -> bool {
        self.body.len() >= CHUNK_BYTES
    }

    fn flush(&mut self, head: &ChunkHead<'_>) -> Result<(), SnapshotError> {
        if self.count == 0 {
            return Ok(());
        }
        let mut chunk = Vec::with_capacity(self.body.len() + 64);
        codec::encode_into(head, &mut chunk)?;
        chunk.extend_from_slice(&self.body);
        self.writer.write_chunk(chunk)?;
        self.body.clear();
        self.count = 0;
        Ok(())
    }

    fn single(&mut self, head: &ChunkHead<'_>) -> Result<(), SnapshotError> {
        let mut chunk = Vec::new();
        codec::encode_into(head, &mut chunk)?;
        self.writer.write_chunk(chunk)?;
        Ok(())
    }
}

impl Engine {
    /// Takes a snapshot now (one at a time), then removes snapshots beyond `snapshots_kept` and the
    /// log segments no kept snapshot needs.
    pub fn snapshot(&self) -> Result<SnapshotSummary, SnapshotError> {
        let mut progress = self.snapshots.lock();
        let started = Instant::now();
        // The start LSN and the grant tallies in one critical section: see the module doc.
        let (start_lsn, tallies) = {
            let grants = self.state.grants.lock();
            let yesterday = super::state::utc_day(self.clock.now_ms()) - 1;
            (self.wal.next_lsn(), grants.images(yesterday))
        };
        let header = SnapshotHeader {
            start_lsn,
            created_at_ms: self.clock.now_ms(),
        };
        let dir = self.options.snapshot_dir();
        let mut writer = SnapshotWriter::create(
            Arc::clone(&self.storage),
            &dir,
            header,
            codec::FORMAT_VERSION,
        )?;
        if let Err(error) = self.copy_state(&mut writer, &tallies) {
            writer.abort();
            return Err(error);
        }
        // The copy may include any record queued so far; none of them may be lost once the
        // snapshot exists.
        let last_copied = self.wal.next_lsn() - 1;
        if let Err(error) = self.wal.wait_durable(last_copied) {
            writer.abort();
            return Err(error.into());
        }
        let summary = writer.commit()?;
        progress.last_start_lsn = start_lsn;
        progress.last_finished = Instant::now();
        drop(progress);
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!(crate::metrics::names::SNAPSHOT_DURATION_SECONDS).record(seconds);
        tracing::info!(
            path = %summary.path.display(),
            start_lsn,
            bytes = summary.bytes,
            seconds = format!("{seconds:.3}"),
            "snapshot written"
        );
        if let Err(error) = self.prune() {
            tracing::warn!(%error, "removing old snapshots and log segments failed; will retry after the next snapshot");
        }
        Ok(summary)
    }

    /// Writes every chunk of the snapshot: tenants, users, pools, closed reservations, keys,
    /// payments, grant tallies (copied when the snapshot started), end.
    fn copy_state(
        &self,
        writer: &mut SnapshotWriter,
        tallies: &[TallyImage],
    ) -> Result<(), SnapshotError> {
        let tenants = self.state.tenant_list();
        let mut totals = Totals::default();
        let mut chunker = Chunker {
            writer,
            body: Vec::with_capacity(CHUNK_BYTES + 4096),
            count: 0,
        };
        for tenant in &tenants {
            let catalogue = tenant.catalogue.read().clone();
            chunker.single(&ChunkHead::Tenant {
                id: &tenant.id,
                catalogue: Cow::Owned(catalogue),
            })?;
            totals.tenants += 1;
        }
        for tenant in &tenants {
            totals.users += copy_users(&mut chunker, tenant)?;
        }
        for tenant in &tenants {
            totals.pools += copy_pools(&mut chunker, tenant)?;
        }
        for tenant in &tenants {
            totals.closed_reservations += copy_closed_reservations(&mut chunker, tenant)?;
        }
        for tenant in &tenants {
            totals.idempotency_keys += copy_idempotency_keys(&mut chunker, tenant)?;
        }
        // Payments change under their user's lock, so like keys they are copied after the users.
        totals.payments = self.copy_payments(&mut chunker)?;
        for tally in tallies {
            chunker.item(tally)?;
            totals.grant_tallies += 1;
            if chunker.full() {
                chunker.flush(&ChunkHead::GrantTallies {
                    count: chunker.count,
                })?;
            }
        }
        chunker.flush(&ChunkHead::GrantTallies {
            count: chunker.count,
        })?;
        chunker.single(&ChunkHead::End(totals))
    }

    /// Writes every payment in `Payments` chunks and returns how many there were.
    fn copy_payments(&self, chunker: &mut Chunker<'_>) -> Result<u64, SnapshotError> {
        let head = |count| ChunkHead::Payments { count };
        let mut copied = 0;
        for (reference, entry) in copy_shards(&self.state.payments).flatten() {
            chunker.item(&PaymentImage {
                reference: &reference,
                entry: Cow::Borrowed(&entry),
            })?;
            copied += 1;
            if chunker.full() {
                chunker.flush(&head(chunker.count))?;
            }
        }
        chunker.flush(&head(chunker.count))?;
        Ok(copied)
    }

    /// Whether a snapshot is due by record count or by time.
    pub(crate) fn snapshot_due(&self) -> bool {
        let progress = self.snapshots.lock();
        let next = self.wal.next_lsn();
        let records = next.saturating_sub(progress.last_start_lsn.max(1));
        records >= self.options.snapshot_every_records
            || (records > 0
                && progress.last_finished.elapsed().as_secs()
                    >= self.options.snapshot_every_seconds)
    }

    /// Removes the segments a retention hold kept at the last removal and no longer needs: a
    /// reader of the log (the history) that was behind when the last snapshot pruned has moved on
    /// since, and no new record may come to trigger another snapshot. Called by the snapshot
    /// thread between snapshots; costs a lock and a comparison when no hold moved.
    pub fn prune_if_holds_moved(&self) {
        let held = self.retention.keep_from();
        let moved = self
            .pruning
            .try_lock()
            .is_some_and(|last| last.is_some_and(|last| held.is_none_or(|held| held > last)));
        if moved {
            if let Err(error) = self.prune() {
                tracing::warn!(%error, "removing log segments a retention hold let go failed");
            }
        }
    }

    /// Keeps the newest `snapshots_kept` snapshots and the segments the oldest of them, or any
    /// retention hold, needs.
    fn prune(&self) -> std::io::Result<()> {
        let mut pruning = self.pruning.lock();
        *pruning = self.retention.keep_from();
        let storage = &self.storage;
        let snapshot_dir = self.options.snapshot_dir();
        let snapshots = snapshot_file::from_listing(&snapshot_dir, &storage.list(&snapshot_dir)?);
        let kept = self.options.snapshots_kept.max(1);
        let Some(oldest_kept) = snapshots
            .get(..kept.min(snapshots.len()))
            .and_then(|k| k.last())
        else {
            return Ok(());
        };
        let keep_from = match self.retention.keep_from() {
            Some(held) => held.min(oldest_kept.start_lsn),
            None => oldest_kept.start_lsn,
        };
        for old in snapshots.iter().skip(kept) {
            storage.remove(&old.path)?;
        }
        if snapshots.len() > kept {
            storage.sync_dir(&snapshot_dir)?;
        }
        let wal_dir = self.options.wal_dir();
        let segments = segment::from_listing(&wal_dir, &storage.list(&wal_dir)?);
        let removable = crate::wal::retention::removable(&segments, keep_from);
        for segment in &removable {
            storage.remove(&segment.path)?;
        }
        let removed = removable.len();
        if removed > 0 {
            storage.sync_dir(&wal_dir)?;
        }
        if removed > 0 {
            tracing::debug!(
                removed,
                keep_from,
                "removed log segments older than the oldest kept snapshot and every retention hold"
            );
        }
        Ok(())
    }
}

/// Copies a sharded map one shard at a time. Each shard's read lock is held only while its entries
/// are cloned (tens of microseconds for a few thousand users); encoding, and handing chunks to the
/// file thread, happen after the lock is released, so a snapshot never makes a debit wait on
/// anything but a copy.
fn copy_shards<K: Clone + Eq + std::hash::Hash, V: Clone>(
    map: &ShardedMap<K, V>,
) -> impl Iterator<Item = Vec<(K, V)>> + '_ {
    map.shards().iter().map(|shard| {
        let table = shard.read();
        // SAFETY: the raw iterator and the bucket references it yields are used only inside this
        // block, while `table` holds the shard's read lock: the table can neither change nor be
        // freed meanwhile, and only clones of its entries leave the block.
        unsafe {
            table
                .iter()
                .map(|bucket| {
                    let (key, value) = bucket.as_ref();
                    (key.clone(), value.get().clone())
                })
                .collect()
        }
    })
}

/// Writes a tenant's users in `Users` chunks and returns how many there were.
fn copy_users(chunker: &mut Chunker<'_>, tenant: &Tenant) -> Result<u64, SnapshotError> {
    let head = |count| ChunkHead::Users {
        tenant: &tenant.id,
        count,
    };
    let mut copied = 0;
    for shard in copy_shards(&tenant.users) {
        for (user, account) in &shard {
            chunker.item(&UserImage {
                user,
                last_lsn: account.last_lsn(),
                primary: account.primary,
                extra: account.extra.as_deref().map(Cow::Borrowed),
            })?;
            copied += 1;
            if chunker.full() {
                chunker.flush(&head(chunker.count))?;
            }
        }
    }
    chunker.flush(&head(chunker.count))?;
    Ok(copied)
}

/// Writes a tenant's credit pools in `Pools` chunks and returns how many there were.
fn copy_pools(chunker: &mut Chunker<'_>, tenant: &Tenant) -> Result<u64, SnapshotError> {
    let head = |count| ChunkHead::Pools {
        tenant: &tenant.id,
        count,
    };
    let mut copied = 0;
    for (id, pool) in copy_shards(&tenant.pools).flatten() {
        chunker.item(&PoolImage {
            id: &id,
            pool: Cow::Borrowed(&pool),
        })?;
        copied += 1;
        if chunker.full() {
            chunker.flush(&head(chunker.count))?;
        }
    }
    chunker.flush(&head(chunker.count))?;
    Ok(copied)
}

/// Writes a tenant's closed reservations in `ClosedReservations` chunks and returns how many.
fn copy_closed_reservations(
    chunker: &mut Chunker<'_>,
    tenant: &Tenant,
) -> Result<u64, SnapshotError> {
    let head = |count| ChunkHead::ClosedReservations {
        tenant: &tenant.id,
        count,
    };
    let mut copied = 0;
    for (id, entry) in copy_shards(&tenant.reservations).flatten() {
        if matches!(entry.state, ReservationPhase::Closed { .. }) {
            chunker.item(&ClosedReservationImage {
                id,
                entry: Cow::Borrowed(&entry),
            })?;
            copied += 1;
            if chunker.full() {
                chunker.flush(&head(chunker.count))?;
            }
        }
    }
    chunker.flush(&head(chunker.count))?;
    Ok(copied)
}

/// Writes a tenant's finished idempotency keys in `IdempotencyKeys` chunks and returns how many.
fn copy_idempotency_keys(chunker: &mut Chunker<'_>, tenant: &Tenant) -> Result<u64, SnapshotError> {
    let head = |count| ChunkHead::IdempotencyKeys {
        tenant: &tenant.id,
        count,
    };
    let mut copied = 0;
    for (key, entry) in copy_shards(&tenant.idempotency).flatten() {
        if let IdempotencyState::Done {
            lsn,
            created_ms,
            outcome,
        } = entry.state
        {
            let image = IdempotencyImage {
                key: &key,
                fingerprint: entry.fingerprint,
                lsn,
                created_ms,
                outcome,
            };
            chunker.item(&image)?;
            copied += 1;
            if chunker.full() {
                chunker.flush(&head(chunker.count))?;
            }
        }
    }
    chunker.flush(&head(chunker.count))?;
    Ok(copied)
}

/// Loads a snapshot into an empty state. Idempotency keys created before `idempotency_cutoff_ms`
/// and closed reservations closed before `reservation_cutoff_ms` are left out.
pub(crate) fn load(
    storage: &SharedStorage,
    file: &snapshot_file::SnapshotFile,
    state: &State,
    max_chunk_bytes: u32,
    idempotency_cutoff_ms: i64,
    reservation_cutoff_ms: i64,
) -> Result<Lsn, SnapshotError> {
    let mut reader =
        SnapshotReader::open(storage, &file.path, codec::FORMAT_VERSION, max_chunk_bytes)?;
    let start_lsn = reader.header().start_lsn;
    if start_lsn == 0 {
        return Err(SnapshotError::Content(
            "start LSN 0: LSNs start at 1".into(),
        ));
    }
    if start_lsn != file.start_lsn {
        return Err(SnapshotError::Content(format!(
            "header says start LSN {start_lsn}, name says {}",
            file.start_lsn
        )));
    }
    load_chunks(
        &mut reader,
        state,
        loader_threads(),
        idempotency_cutoff_ms,
        reservation_cutoff_ms,
    )?;
    Ok(start_lsn)
}

/// Threads that load a snapshot's chunks: one per core, at most four (past that the table's
/// shard locks and the memory bus, not the CPU, bound the load).
fn loader_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| cores.get().clamp(1, 4))
}

/// Loads every chunk `reader` holds into `state`, and checks that the end chunk came and counts
/// what the others held.
///
/// The calling thread reads and checks the chunks in file order and applies tenant chunks and
/// the end chunk itself; every other chunk (users, pools, reservations, keys, payments, tallies)
/// goes to one of `threads` loaders. Those only insert into the tenants' concurrent maps, each
/// item under its own shard's lock, in no particular order; none needs another chunk of its
/// kind, and every chunk names only tenants that came before it in the file, whose chunks the
/// reading thread applied before passing it on. A user twice is still found: the second insert
/// returns the first. Inserting into a table of millions of users is a cache miss or two per
/// item, which `threads` loaders overlap: at 3 M wallets on 2 cores, 2.5 s of loading went to
/// about 1.5 s.
fn load_chunks(
    reader: &mut crate::wal::snapshot::SnapshotReader,
    state: &State,
    threads: usize,
    idempotency_cutoff_ms: i64,
    reservation_cutoff_ms: i64,
) -> Result<(), SnapshotError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (chunks, inbox) = crossbeam_channel::bounded::<Vec<u8>>(threads * 2);
        let (spent, buffers) = crossbeam_channel::unbounded::<Vec<u8>>();
        let loaders: Vec<_> = (0..threads)
            .map(|_| {
                let inbox = inbox.clone();
                let spent = spent.clone();
                let failed = &failed;
                scope.spawn(move || -> Result<Totals, SnapshotError> {
                    let mut counted = Totals::default();
                    for chunk in inbox {
                        if failed.load(Ordering::Relaxed) {
                            continue;
                        }
                        let loaded = load_chunk(
                            &chunk,
                            state,
                            &mut counted,
                            idempotency_cutoff_ms,
                            reservation_cutoff_ms,
                        );
                        if let Err(error) = loaded {
                            failed.store(true, Ordering::Relaxed);
                            return Err(error);
                        }
                        let _ = spent.send(chunk);
                    }
                    Ok(counted)
                })
            })
            .collect();
        drop((inbox, spent));
        let mut counted = Totals::default();
        let mut ended = None;
        let read = (|| {
            loop {
                let mut buffer = buffers.try_recv().unwrap_or_default();
                if !reader.next_chunk(&mut buffer)? {
                    return Ok(());
                }
                if ended.is_some() {
                    return Err(SnapshotError::Content("chunks after the end chunk".into()));
                }
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let (head, _) = codec::decode_prefix::<ChunkHead<'_>>(&buffer)?;
                // Checked here, in file order, so that a chunk before its tenant's is refused
                // whenever a loader gets to it.
                if let ChunkHead::Users { tenant, .. }
                | ChunkHead::Pools { tenant, .. }
                | ChunkHead::ClosedReservations { tenant, .. }
                | ChunkHead::IdempotencyKeys { tenant, .. } = head
                {
                    if state.tenant(tenant).is_none() {
                        return Err(SnapshotError::Content(format!(
                            "items for tenant {tenant:?} before its tenant chunk"
                        )));
                    }
                }
                if matches!(head, ChunkHead::Tenant { .. } | ChunkHead::End(_)) {
                    ended = load_chunk(
                        &buffer,
                        state,
                        &mut counted,
                        idempotency_cutoff_ms,
                        reservation_cutoff_ms,
                    )?;
                } else if chunks.send(buffer).is_err() {
                    // Every loader stopped: one failed, and says why below.
                    return Ok(());
                }
            }
        })();
        drop(chunks);
        let mut first_error = read.err();
        for loader in loaders {
            match loader.join() {
                Ok(Ok(theirs)) => counted = counted.plus(&theirs),
                Ok(Err(error)) => {
                    first_error.get_or_insert(error);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        if let Some(error) = first_error {
            return Err(error);
        }
        match ended {
            Some(totals) if totals == counted => Ok(()),
            Some(totals) => Err(SnapshotError::Content(format!(
                "end chunk counts {totals:?}, read {counted:?}"
            ))),
            None => Err(SnapshotError::Content("no end chunk".into())),
        }
    })
}

/// Loads one chunk into `state`, counting its items; returns the totals if it is the end chunk.
fn load_chunk(
    chunk: &[u8],
    state: &State,
    counted: &mut Totals,
    idempotency_cutoff_ms: i64,
    reservation_cutoff_ms: i64,
) -> Result<Option<Totals>, SnapshotError> {
    let (head, used) = codec::decode_prefix::<ChunkHead<'_>>(chunk)?;
    let mut rest = &chunk[used..];
    let tenant_of = |id: &str| {
        state.tenant(id).ok_or_else(|| {
            SnapshotError::Content(format!("items for tenant {id:?} before its tenant chunk"))
        })
    };
    match head {
        ChunkHead::Tenant { id, catalogue } => {
            load_tenant(state, id, catalogue)?;
            counted.tenants += 1;
        }
        ChunkHead::Users { tenant, count } => {
            let tenant = tenant_of(tenant)?;
            load_users(&mut rest, &tenant, count)?;
            counted.users += u64::from(count);
        }
        ChunkHead::Pools { tenant, count } => {
            let tenant = tenant_of(tenant)?;
            load_pools(&mut rest, &tenant, count)?;
            counted.pools += u64::from(count);
        }
        ChunkHead::ClosedReservations { tenant, count } => {
            let tenant = tenant_of(tenant)?;
            load_closed_reservations(&mut rest, &tenant, count, reservation_cutoff_ms)?;
            counted.closed_reservations += u64::from(count);
        }
        ChunkHead::IdempotencyKeys { tenant, count } => {
            let tenant = tenant_of(tenant)?;
            load_idempotency_keys(&mut rest, state, &tenant, count, idempotency_cutoff_ms)?;
            counted.idempotency_keys += u64::from(count);
        }
        ChunkHead::Payments { count } => {
            for _ in 0..count {
                let image: PaymentImage<'_> = next_item(&mut rest)?;
                state.payments.insert(
                    CompactString::new(image.reference),
                    image.entry.into_owned(),
                );
            }
            counted.payments += u64::from(count);
        }
        ChunkHead::GrantTallies { count } => {
            let mut grants = state.grants.lock();
            for _ in 0..count {
                grants.restore(next_item(&mut rest)?);
            }
            counted.grant_tallies += u64::from(count);
        }
        ChunkHead::End(totals) => {
            if !rest.is_empty() {
                return Err(SnapshotError::Content(
                    "bytes after the end chunk's head".into(),
                ));
            }
            return Ok(Some(totals));
        }
    }
    if !rest.is_empty() {
        return Err(SnapshotError::Content(format!(
            "{} bytes after a chunk's last item",
            rest.len()
        )));
    }
    Ok(None)
}

/// Adds a tenant with its catalogue; a tenant that appears twice is an error.
fn load_tenant(
    state: &State,
    id: &str,
    catalogue: Cow<'_, Catalogue>,
) -> Result<(), SnapshotError> {
    let tenant = Tenant::new(id, catalogue.into_owned(), state.shards);
    if state
        .tenants
        .write()
        .insert(CompactString::new(id), Arc::new(tenant))
        .is_some()
    {
        return Err(SnapshotError::Content(format!(
            "tenant {id:?} appears twice"
        )));
    }
    Ok(())
}

/// Restores `count` users, and the open reservations their accounts hold, into `tenant`.
fn load_users(rest: &mut &[u8], tenant: &Tenant, count: u32) -> Result<(), SnapshotError> {
    for _ in 0..count {
        let image: UserImage<'_> = next_item(rest)?;
        if image.last_lsn > crate::wal::MAX_LSN {
            return Err(SnapshotError::Content(format!(
                "user {:?} changed at LSN {}, above the highest ever issued",
                image.user, image.last_lsn
            )));
        }
        // Rules come back without a trigger in flight (that flag is never written).
        let account = Account::restore(
            image.last_lsn,
            image.primary,
            image.extra.map(|e| Box::new(e.into_owned())),
        );
        for reservation in account.reservations() {
            let open = ReservationEntry {
                user: image.user.into(),
                state: ReservationPhase::Open {
                    expires_at_ms: reservation.expires_at_ms,
                },
            };
            // A hold copied open with its user may have closed before the closed holds were
            // copied: the closed entry wins, whichever loader comes first (a sequential load
            // meets the users first).
            tenant.reservations.entry(reservation.id).or_insert(open);
        }
        if tenant
            .users
            .insert(CompactString::new(image.user), account)
            .is_some()
        {
            return Err(SnapshotError::Content(format!(
                "user {:?} appears twice",
                image.user
            )));
        }
    }
    Ok(())
}

/// Restores `count` credit pools into `tenant`.
fn load_pools(rest: &mut &[u8], tenant: &Tenant, count: u32) -> Result<(), SnapshotError> {
    for _ in 0..count {
        let image: PoolImage<'_> = next_item(rest)?;
        if image.pool.last_lsn > crate::wal::MAX_LSN {
            return Err(SnapshotError::Content(format!(
                "pool {:?} changed at LSN {}, above the highest ever issued",
                image.id, image.pool.last_lsn
            )));
        }
        if tenant
            .pools
            .insert(CompactString::new(image.id), image.pool.into_owned())
            .is_some()
        {
            return Err(SnapshotError::Content(format!(
                "pool {:?} appears twice",
                image.id
            )));
        }
    }
    Ok(())
}

/// Restores `count` closed reservations into `tenant`, leaving out those closed before the cutoff.
fn load_closed_reservations(
    rest: &mut &[u8],
    tenant: &Tenant,
    count: u32,
    reservation_cutoff_ms: i64,
) -> Result<(), SnapshotError> {
    for _ in 0..count {
        let image: ClosedReservationImage<'_> = next_item(rest)?;
        let entry = image.entry.into_owned();
        if matches!(entry.state, ReservationPhase::Closed { at_ms, .. } if at_ms >= reservation_cutoff_ms)
        {
            tenant.reservations.insert(image.id, entry);
        }
    }
    Ok(())
}

/// Restores `count` finished idempotency keys into `tenant`, leaving out those created before the
/// cutoff, and counts the new ones in `state`.
fn load_idempotency_keys(
    rest: &mut &[u8],
    state: &State,
    tenant: &Tenant,
    count: u32,
    idempotency_cutoff_ms: i64,
) -> Result<(), SnapshotError> {
    for _ in 0..count {
        let image: IdempotencyImage<'_> = next_item(rest)?;
        if image.created_ms < idempotency_cutoff_ms {
            continue;
        }
        let state_done = IdempotencyState::Done {
            lsn: image.lsn,
            created_ms: image.created_ms,
            outcome: image.outcome,
        };
        let entry = IdempotencyEntry {
            fingerprint: image.fingerprint,
            state: state_done,
        };
        if tenant
            .idempotency
            .insert(CompactString::new(image.key), entry)
            .is_none()
        {
            state
                .idempotency_entries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    Ok(())
}

fn next_item<'a, T: Deserialize<'a>>(rest: &mut &'a [u8]) -> Result<T, SnapshotError> {
    let (item, used) = codec::decode_prefix::<T>(rest)?;
    *rest = &rest[used..];
    Ok(item)
}

/// Decodes a snapshot's chunks without building state: for `creditd wal verify` and the fuzzers.
pub fn check_chunks(chunks: &[Vec<u8>]) -> Result<(), SnapshotError> {
    let state = State::new(4, i64::MAX);
    let mut counted = Totals::default();
    let mut ended = None;
    for chunk in chunks {
        if ended.is_some() {
            return Err(SnapshotError::Content("chunks after the end chunk".into()));
        }
        ended = load_chunk(chunk, &state, &mut counted, i64::MIN, i64::MIN)?;
    }
    match ended {
        Some(totals) if totals == counted => Ok(()),
        _ => Err(SnapshotError::Content("missing or wrong end chunk".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::{load_chunks, ChunkHead, ReservationPhase, SnapshotError, State, Tenant};
    use crate::codec;
    use crate::engine::clock::{Clock, ManualClock};
    use crate::engine::types::CreditKind;
    use crate::engine::{
        CaptureRequest, Context, CreditRequest, Engine, EngineOptions, ProfileUpdate,
        ReserveRequest, Spend,
    };
    use crate::wal::memory::MemStorage;
    use crate::wal::snapshot::{SnapshotHeader, SnapshotReader, SnapshotWriter};
    use crate::wal::SharedStorage;

    const ADMIN: Context<'static> = Context {
        actor: "admin-key",
        idempotency: None,
    };

    /// Users enough for several users chunks (about 7 000 fit in one).
    const USERS: usize = 20_000;

    /// An engine on `storage` without background threads, and its tenant "acme".
    fn engine_with_tenant(storage: &MemStorage) -> (Arc<Engine>, Arc<Tenant>) {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let options = EngineOptions {
            data_dir: "/data".into(),
            background: false,
            shards: 8,
            ..EngineOptions::default()
        };
        let engine = Engine::open(options, Arc::new(storage.clone()), clock as Arc<dyn Clock>)
            .expect("open");
        let (tenant, _, _) = engine.upsert_tenant("acme", None, None, &ADMIN).unwrap();
        (engine, tenant)
    }

    /// Creates `user` in `tenant` with `credits`.
    fn funded_user(engine: &Engine, tenant: &Tenant, user: &str, credits: i64) {
        let profile = ProfileUpdate {
            email: None,
            name: None,
            metadata: None,
        };
        engine.upsert_user(tenant, user, profile, &ADMIN).unwrap();
        let request = CreditRequest::new(user, credits, CreditKind::Grant);
        engine.credit(tenant, &request, &ADMIN).unwrap();
    }

    /// An engine whose tenant holds [`USERS`] users with credits, snapshotted: the snapshot's
    /// chunks, in file order.
    fn snapshot_chunks(storage: &MemStorage) -> Vec<Vec<u8>> {
        let (engine, tenant) = engine_with_tenant(storage);
        for index in 0..USERS {
            funded_user(&engine, &tenant, &format!("user-{index}"), 1 + index as i64);
        }
        snapshot_now(storage, &engine)
    }

    /// Takes a snapshot of `engine`: its chunks, in file order.
    fn snapshot_now(storage: &MemStorage, engine: &Engine) -> Vec<Vec<u8>> {
        let path = engine.snapshot().unwrap().path;
        let storage: SharedStorage = Arc::new(storage.clone());
        let mut reader =
            SnapshotReader::open(&storage, &path, codec::FORMAT_VERSION, 1 << 24).unwrap();
        let mut chunks = Vec::new();
        let mut chunk = Vec::new();
        while reader.next_chunk(&mut chunk).unwrap() {
            chunks.push(std::mem::take(&mut chunk));
        }
        chunks
    }

    fn head(chunk: &[u8]) -> ChunkHead<'_> {
        codec::decode_prefix::<ChunkHead<'_>>(chunk).unwrap().0
    }

    /// Writes `chunks` as a snapshot file of its own; returns its path.
    fn write(storage: &MemStorage, name: &str, chunks: &[Vec<u8>]) -> PathBuf {
        let storage: SharedStorage = Arc::new(storage.clone());
        let dir = Path::new("/crafted").join(name);
        storage.create_dir_all(&dir).unwrap();
        let header = SnapshotHeader {
            start_lsn: 1,
            created_at_ms: 0,
        };
        let mut writer =
            SnapshotWriter::create(Arc::clone(&storage), &dir, header, codec::FORMAT_VERSION)
                .unwrap();
        for chunk in chunks {
            writer.write_chunk(chunk.clone()).unwrap();
        }
        writer.commit().unwrap().path
    }

    /// Loads the file with `threads` loaders into a new state.
    fn load_state(
        storage: &MemStorage,
        path: &Path,
        threads: usize,
    ) -> Result<State, SnapshotError> {
        let storage: SharedStorage = Arc::new(storage.clone());
        let mut reader = SnapshotReader::open(&storage, path, codec::FORMAT_VERSION, 1 << 24)?;
        let state = State::new(8, 0);
        load_chunks(&mut reader, &state, threads, 0, 0)?;
        Ok(state)
    }

    /// Loads the file with `threads` loaders: the users' states, sorted.
    fn load(
        storage: &MemStorage,
        path: &Path,
        threads: usize,
    ) -> Result<Vec<String>, SnapshotError> {
        let state = load_state(storage, path, threads)?;
        let mut users: Vec<String> = state
            .tenant_list()
            .iter()
            .flat_map(|tenant| {
                tenant
                    .users
                    .iter()
                    .map(|entry| format!("{} {:?}", entry.key(), entry.value()))
                    .collect::<Vec<_>>()
            })
            .collect();
        users.sort();
        Ok(users)
    }

    #[test]
    fn chunks_loaded_by_several_threads_give_the_state_one_thread_gives() {
        let storage = MemStorage::new();
        let chunks = snapshot_chunks(&storage);
        let users_chunks = chunks
            .iter()
            .filter(|chunk| matches!(head(chunk), ChunkHead::Users { .. }))
            .count();
        assert!(users_chunks >= 3, "{users_chunks} users chunks");
        let path = write(&storage, "whole", &chunks);
        let one = load(&storage, &path, 1).unwrap();
        assert_eq!(one.len(), USERS);
        assert!(one.iter().any(|user| user.contains("balance: 20000,")));
        for threads in [2, 4] {
            let several = load(&storage, &path, threads).unwrap();
            assert!(several == one, "{threads} threads load another state");
        }
    }

    #[test]
    fn a_damaged_snapshot_is_refused_whichever_thread_meets_the_damage() {
        let storage = MemStorage::new();
        let chunks = snapshot_chunks(&storage);
        let tenant = chunks
            .iter()
            .position(|chunk| matches!(head(chunk), ChunkHead::Tenant { .. }))
            .unwrap();
        let users = chunks
            .iter()
            .position(|chunk| matches!(head(chunk), ChunkHead::Users { .. }))
            .unwrap();
        let end = chunks.len() - 1;
        assert!(matches!(head(&chunks[end]), ChunkHead::End(_)));

        // A users chunk twice: each of its users appears twice.
        let mut twice = chunks.clone();
        twice.insert(users + 1, chunks[users].clone());
        // Users before their tenant.
        let mut early = chunks.clone();
        let moved = early.remove(users);
        early.insert(tenant, moved);
        // A users chunk missing: the end chunk's count says otherwise.
        let mut short = chunks.clone();
        short.remove(users);
        // A chunk after the end.
        let mut after = chunks.clone();
        after.push(chunks[users].clone());
        for (name, damaged, expected) in [
            ("twice", &twice, "appears twice"),
            ("early", &early, "before its tenant chunk"),
            ("short", &short, "end chunk counts"),
            ("after", &after, "chunks after the end chunk"),
        ] {
            let path = write(&storage, name, damaged);
            for threads in [1, 2, 4] {
                match load(&storage, &path, threads) {
                    Ok(users) => panic!("{name}, {threads} threads: loaded {} users", users.len()),
                    Err(error) => assert!(
                        error.to_string().contains(expected),
                        "{name}, {threads} threads: {error}"
                    ),
                }
            }
        }
    }

    /// A snapshot is copied while writes go on: a hold can be copied open with its user and
    /// closed by the time the closed holds are copied. The closed entry wins, whichever of the
    /// two chunks is loaded first.
    #[test]
    fn a_hold_copied_open_and_then_closed_loads_closed_whichever_chunk_comes_first() {
        let storage = MemStorage::new();
        let (engine, tenant) = engine_with_tenant(&storage);
        funded_user(&engine, &tenant, "ada", 100);
        let reserve = ReserveRequest::new("ada", Spend::Amount(30));
        let hold = engine.reserve(&tenant, &reserve, &ADMIN).unwrap().lsn;
        let while_open = snapshot_now(&storage, &engine);
        let capture = CaptureRequest {
            reservation_id: hold,
            amount: None,
            description: None,
            metadata: None,
        };
        engine.capture(&tenant, &capture, &ADMIN).unwrap();
        let after = snapshot_now(&storage, &engine);

        // The later snapshot, with its users as the earlier one copied them.
        let is = |kind: fn(&ChunkHead<'_>) -> bool| move |chunk: &&Vec<u8>| kind(&head(chunk));
        let open_users: Vec<Vec<u8>> = while_open
            .iter()
            .filter(is(|head| matches!(head, ChunkHead::Users { .. })))
            .cloned()
            .collect();
        let closed = after
            .iter()
            .find(is(|head| {
                matches!(head, ChunkHead::ClosedReservations { count: 1, .. })
            }))
            .expect("a closed hold")
            .clone();
        let mut users_first = Vec::new();
        let mut closed_first = Vec::new();
        for chunk in &after {
            match head(chunk) {
                ChunkHead::Users { .. } => users_first.extend(open_users.iter().cloned()),
                ChunkHead::ClosedReservations { .. } => users_first.push(closed.clone()),
                ChunkHead::Tenant { .. } => {
                    users_first.push(chunk.clone());
                    // Right after its tenant, before the users.
                    closed_first.push(chunk.clone());
                    closed_first.push(closed.clone());
                    closed_first.extend(open_users.iter().cloned());
                    continue;
                }
                _ => users_first.push(chunk.clone()),
            }
            if !matches!(
                head(chunk),
                ChunkHead::Users { .. } | ChunkHead::ClosedReservations { .. }
            ) {
                closed_first.push(chunk.clone());
            }
        }
        for (name, chunks) in [
            ("users-first", &users_first),
            ("closed-first", &closed_first),
        ] {
            let path = write(&storage, name, chunks);
            for threads in [1, 2] {
                let state = load_state(&storage, &path, threads).unwrap();
                let tenant = &state.tenant_list()[0];
                let entry = tenant.reservations.get(&hold).expect("the hold");
                assert!(
                    matches!(entry.state, ReservationPhase::Closed { .. }),
                    "{name}, {threads} threads: {:?}",
                    entry.state
                );
            }
        }
    }
}
