//! Fault injection (DESIGN.md invariant 7): failing writes, torn writes, failing fsyncs and a
//! failing or torn start of a new segment poison the log, and nothing is acknowledged afterwards;
//! failing renames, directory syncs and other I/O during a snapshot fail the snapshot and nothing
//! else; a writer that cannot keep up refuses appends with backpressure instead of growing memory.
//!
//! The property checked after every restart: the invariants hold (`check_invariants`, no wallet
//! below its floor); every acknowledged request is there and, re-sent with its key, answers what it
//! answered (same LSN, same outcome) without writing anything; and beyond the acknowledged effects
//! the state holds at most the one request whose durability wait failed, exactly when the restart
//! kept its bytes (stated per fault in [`LogFault`]), with its idempotency key present exactly
//! when its effect is.
//!
//! Every scenario runs twice: on the real file system (a temporary directory) and on the
//! in-memory crash-model file system, each behind [`FaultyStorage`] (or, for backpressure, behind
//! a gate of its own: that scenario needs an fsync that blocks rather than fails). "Restarting"
//! means dropping the engine and opening again on the storage without faults: the same directory
//! for the real file system (what a process crash leaves: every byte written, synced or not); for
//! the in-memory one, both extreme crash images (a power cut that loses every unsynced byte, and
//! a process crash that keeps them all; names survive only if their directory was synced).

#[path = "common/sync_gate.rs"]
mod sync_gate;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};

use creditd::engine::types::{CreditKind, Currency, EngineError, Outcome};
use creditd::engine::{
    CaptureRequest, Clock, Context, CreditRequest, DebitRequest, Done, Engine, EngineOptions,
    IdempotencyKey, ManualClock, ReserveRequest, RevokeRequest, Spend, Tenant,
};
use creditd::engine::{PackageSpec, ProfileUpdate};
use creditd::wal::memory::{FaultPoint, FaultyStorage, MemStorage};
use creditd::wal::record::HEADER_BYTES;
use creditd::wal::segment::{self, SEGMENT_HEADER_BYTES};
use creditd::wal::{AppendError, DurabilityError, FsStorage, SharedStorage, Storage};
use sync_gate::{GatedStorage, SyncGate};

const T0: i64 = 1_700_000_000_000;
const ADMIN: Context<'static> = Context {
    actor: "admin-key",
    idempotency: None,
};
const NO_PROFILE: ProfileUpdate<'static> = ProfileUpdate {
    email: None,
    name: None,
    metadata: None,
};

// ---------------------------------------------------------------------------------------------
// Disks and restarts.
// ---------------------------------------------------------------------------------------------

/// The file system a scenario runs on.
enum Disk {
    Fs(tempfile::TempDir),
    Mem(MemStorage),
}

/// What survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// The real directory as the failed engine left it.
    Fs,
    /// In memory: a power cut; only synced bytes and synced names survive.
    MemLosesUnsynced,
    /// In memory: a process crash; every byte written survives, names only if synced.
    MemKeepsUnsynced,
}

impl Restart {
    /// Whether bytes written but never synced are still there after this restart.
    fn keeps_unsynced(self) -> bool {
        self != Restart::MemLosesUnsynced
    }
}

impl Disk {
    fn both() -> Vec<Disk> {
        vec![
            Disk::Fs(tempfile::tempdir().expect("tempdir")),
            Disk::Mem(MemStorage::new()),
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Disk::Fs(_) => "fs",
            Disk::Mem(_) => "mem",
        }
    }

    fn data_dir(&self) -> PathBuf {
        match self {
            Disk::Fs(dir) => dir.path().join("data"),
            Disk::Mem(_) => PathBuf::from("/data"),
        }
    }

    /// The storage without faults.
    fn storage(&self) -> SharedStorage {
        match self {
            Disk::Fs(_) => Arc::new(FsStorage),
            Disk::Mem(memory) => Arc::new(memory.clone()),
        }
    }

    fn restarts(&self) -> Vec<Restart> {
        match self {
            Disk::Fs(_) => vec![Restart::Fs],
            Disk::Mem(_) => vec![Restart::MemLosesUnsynced, Restart::MemKeepsUnsynced],
        }
    }

    /// The storage a restarted process finds. In memory, a crash image, so one scenario can
    /// restart several ways from the same moment.
    fn after(&self, restart: Restart) -> SharedStorage {
        match (self, restart) {
            (Disk::Fs(_), Restart::Fs) => Arc::new(FsStorage),
            (Disk::Mem(memory), Restart::MemLosesUnsynced) => {
                Arc::new(memory.crash_image(|_, _| 0))
            }
            (Disk::Mem(memory), Restart::MemKeepsUnsynced) => {
                Arc::new(memory.crash_image(|_, unsynced| unsynced))
            }
            _ => unreachable!("{restart:?} on {}", self.name()),
        }
    }
}

fn options(disk: &Disk) -> EngineOptions {
    EngineOptions {
        data_dir: disk.data_dir(),
        background: false,
        shards: 8,
        ..EngineOptions::default()
    }
}

fn clock() -> Arc<dyn Clock> {
    Arc::new(ManualClock::new(T0))
}

fn open(options: &EngineOptions, storage: SharedStorage) -> Arc<Engine> {
    Engine::open(options.clone(), storage, clock()).expect("open")
}

fn snapshot_files(storage: &dyn Storage, options: &EngineOptions) -> BTreeSet<String> {
    storage
        .list(&options.snapshot_dir())
        .expect("list snapshots")
        .into_iter()
        .collect()
}

fn final_snapshots(names: &BTreeSet<String>) -> BTreeSet<String> {
    names
        .iter()
        .filter(|name| name.ends_with(".snap"))
        .cloned()
        .collect()
}

fn key(key: &str) -> Context<'_> {
    ADMIN.with_key(IdempotencyKey {
        key,
        fingerprint: [7; 16],
    })
}

fn credit(engine: &Engine, tenant: &Tenant, user: &str, amount: i64, k: &str) -> Done {
    engine
        .credit(
            tenant,
            &CreditRequest::new(user, amount, CreditKind::Grant),
            &key(k),
        )
        .expect("credit")
}

fn debit(
    engine: &Engine,
    tenant: &Tenant,
    user: &str,
    amount: i64,
    k: &str,
) -> Result<Done, EngineError> {
    engine.debit(
        tenant,
        &DebitRequest::new(user, Spend::Amount(amount)),
        &key(k),
    )
}

/// Waits for durability, as the API does before it answers.
fn acknowledge(engine: &Engine, done: Done) -> Done {
    engine.wait_durable(done.lsn).expect("durable");
    done
}

/// Polls the async durability future once; a poisoned log must answer at once.
fn poll_durable(engine: &Engine, lsn: u64) -> Poll<Result<(), DurabilityError>> {
    let mut future = engine.durable(lsn);
    let mut context = std::task::Context::from_waker(Waker::noop());
    Pin::new(&mut future).poll(&mut context)
}

/// Acknowledged history every scenario starts from: a tenant with an action and a package, two
/// users, keyed credits and a debit, and an open reservation.
struct History {
    tenant: Arc<Tenant>,
    /// (key, user, the acknowledged answer).
    acked: Vec<(&'static str, &'static str, Done)>,
    hold: u64,
}

fn history(engine: &Engine) -> History {
    let (tenant, _, lsn) = engine
        .upsert_tenant("acme", Some("Acme"), None, &ADMIN)
        .expect("tenant");
    engine.wait_durable(lsn).expect("durable");
    for user in ["alice", "bob"] {
        let (_, lsn) = engine
            .upsert_user(&tenant, user, NO_PROFILE, &ADMIN)
            .expect("user");
        engine.wait_durable(lsn).expect("durable");
    }
    let lsn = engine
        .put_action(&tenant, "search", 2, None, None, &ADMIN)
        .expect("action");
    engine.wait_durable(lsn).expect("durable");
    let mut acked = Vec::new();
    let grant = acknowledge(engine, credit(engine, &tenant, "alice", 100, "grant-1"));
    acked.push(("grant-1", "alice", grant));
    let grant = acknowledge(engine, credit(engine, &tenant, "bob", 50, "grant-2"));
    acked.push(("grant-2", "bob", grant));
    let spend = acknowledge(
        engine,
        debit(engine, &tenant, "alice", 30, "spend-1").expect("debit"),
    );
    acked.push(("spend-1", "alice", spend));
    let hold = engine
        .reserve(
            &tenant,
            &ReserveRequest::new("bob", Spend::Amount(10)),
            &key("hold-1"),
        )
        .expect("reserve");
    let hold = acknowledge(engine, hold);
    acked.push(("hold-1", "bob", hold));
    let Outcome::Reserve { reservation_id, .. } = hold.outcome else {
        panic!("{:?}", hold.outcome)
    };
    History {
        tenant,
        acked,
        hold: reservation_id,
    }
}

/// Alice's and Bob's acknowledged balances after [`history`], and Bob's reserved amount.
const ALICE: i64 = 70;
const BOB: i64 = 50;
const BOB_RESERVED: i64 = 10;

/// Every kind of change a client or operator can ask for, on a poisoned engine: each must be
/// refused with `Log(Poisoned)` and leave the state exactly as it was.
fn assert_every_change_is_refused(engine: &Engine, tenant: &Tenant, hold: u64, label: &str) {
    let poisoned = Err(EngineError::Log(AppendError::Poisoned));
    let before = engine.state_image();
    let next_lsn = engine.wal().next_lsn();
    let attempts: Vec<(&str, Result<(), EngineError>)> = vec![
        (
            "credit",
            engine
                .credit(
                    tenant,
                    &CreditRequest::new("alice", 5, CreditKind::Grant),
                    &ADMIN,
                )
                .map(drop),
        ),
        (
            "keyed credit",
            engine
                .credit(
                    tenant,
                    &CreditRequest::new("alice", 5, CreditKind::Grant),
                    &key("after-poison"),
                )
                .map(drop),
        ),
        (
            "the same key again (its claim must be gone, not in flight)",
            engine
                .credit(
                    tenant,
                    &CreditRequest::new("alice", 5, CreditKind::Grant),
                    &key("after-poison"),
                )
                .map(drop),
        ),
        (
            "debit",
            debit(engine, tenant, "alice", 1, "after-poison-2").map(drop),
        ),
        (
            "revoke",
            engine
                .revoke(
                    tenant,
                    &RevokeRequest {
                        user: "alice",
                        amount: 1,
                        currency: None,
                        reason: "correction",
                        allow_negative: false,
                    },
                    &ADMIN,
                )
                .map(drop),
        ),
        (
            "reserve",
            engine
                .reserve(
                    tenant,
                    &ReserveRequest::new("alice", Spend::Amount(1)),
                    &ADMIN,
                )
                .map(drop),
        ),
        (
            "capture",
            engine
                .capture(
                    tenant,
                    &CaptureRequest {
                        reservation_id: hold,
                        amount: None,
                        description: None,
                        metadata: None,
                    },
                    &ADMIN,
                )
                .map(drop),
        ),
        ("extend", engine.extend(tenant, hold, 600, &ADMIN).map(drop)),
        ("release", engine.release(tenant, hold, &ADMIN).map(drop)),
        (
            "set overdraft",
            engine
                .set_overdraft(tenant, "alice", None, 10, &ADMIN)
                .map(drop),
        ),
        (
            "new user",
            engine
                .upsert_user(tenant, "carol", NO_PROFILE, &ADMIN)
                .map(drop),
        ),
        (
            "profile change",
            engine
                .upsert_user(
                    tenant,
                    "alice",
                    ProfileUpdate {
                        email: Some("alice@example.com"),
                        ..NO_PROFILE
                    },
                    &ADMIN,
                )
                .map(drop),
        ),
        (
            "new tenant",
            engine.upsert_tenant("globex", None, None, &ADMIN).map(drop),
        ),
        (
            "tenant rename",
            engine
                .upsert_tenant("acme", Some("Acme Corp"), None, &ADMIN)
                .map(drop),
        ),
        (
            "put action",
            engine
                .put_action(tenant, "chat", 3, None, None, &ADMIN)
                .map(drop),
        ),
        (
            "delete action",
            engine.delete_action(tenant, "search", &ADMIN).map(drop),
        ),
        (
            "put package",
            engine
                .put_package(
                    tenant,
                    "starter",
                    &PackageSpec {
                        name: "Starter",
                        credits: 500,
                        currency: Currency::CREDITS,
                        price_minor: 200_000,
                        price_currency: Currency::new("NGN").expect("currency"),
                        active: true,
                        position: 0,
                    },
                    &ADMIN,
                )
                .map(drop),
        ),
    ];
    for (what, result) in attempts {
        assert_eq!(result, poisoned, "{label}: {what} on a poisoned engine");
    }
    assert_eq!(
        engine.state_image(),
        before,
        "{label}: a refused change changed the state"
    );
    assert_eq!(
        engine.wal().next_lsn(),
        next_lsn,
        "{label}: a refused change took an LSN"
    );
    assert!(engine.tenant("globex").is_none());
}

/// After a restart: the invariants hold, every acknowledged key answers what it answered, and
/// the wallets are the acknowledged ones plus, if `doomed_survived`, the unacknowledged debit.
fn assert_recovered(
    engine: &Engine,
    history: &History,
    doomed: Option<(&str, i64, bool)>,
    label: &str,
) {
    engine
        .check_invariants()
        .unwrap_or_else(|violation| panic!("{label}: {violation}"));
    assert!(
        engine.is_writable(),
        "{label}: a restarted engine is writable"
    );
    let tenant = engine.tenant("acme").expect("tenant");
    let (doomed_amount, doomed_survived) = match doomed {
        Some((_, amount, survived)) => (amount, survived),
        None => (0, false),
    };
    let alice = tenant.wallet("alice", None).expect("alice");
    let expected_alice = ALICE - if doomed_survived { doomed_amount } else { 0 };
    assert_eq!(alice.balance, expected_alice, "{label}: alice");
    let bob = tenant.wallet("bob", None).expect("bob");
    assert_eq!(
        (bob.balance, bob.reserved),
        (BOB, BOB_RESERVED),
        "{label}: bob"
    );
    for wallet in [alice, bob] {
        assert!(wallet.available >= 0, "{label}: below the floor");
    }
    let next_lsn = engine.wal().next_lsn();
    for &(k, user, acked) in &history.acked {
        // Re-sending an acknowledged request answers the acknowledged outcome and writes nothing.
        let again = match acked.outcome {
            Outcome::Credit { amount, .. } => credit(engine, &tenant, user, amount, k),
            Outcome::Debit { charged, .. } => {
                debit(engine, &tenant, user, charged, k).expect("debit replay")
            }
            Outcome::Reserve { amount, .. } => engine
                .reserve(
                    &tenant,
                    &ReserveRequest::new(user, Spend::Amount(amount)),
                    &key(k),
                )
                .expect("reserve replay"),
            other => panic!("{other:?}"),
        };
        assert!(again.replayed, "{label}: {k} ran again after the restart");
        assert_eq!(
            (again.lsn, again.outcome),
            (acked.lsn, acked.outcome),
            "{label}: {k}"
        );
    }
    assert_eq!(engine.wal().next_lsn(), next_lsn, "{label}: replays wrote");
    if let Some((k, amount, survived)) = doomed {
        // The unacknowledged request's key is there exactly when its effect is: a retry either
        // replays it or runs it now, never twice.
        let retry = debit(engine, &tenant, "alice", amount, k).expect("retry");
        assert_eq!(retry.replayed, survived, "{label}: retry of {k}");
        engine.wait_durable(retry.lsn).expect("durable");
        assert_eq!(
            tenant.wallet("alice", None).expect("alice").balance,
            ALICE - amount,
            "{label}: after the retry"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Write and fsync failures poison the log.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum LogFault {
    /// The write fails before writing anything.
    Write,
    /// The write writes this many bytes of the batch (a single record, longer than any `keep`
    /// used here except [`WHOLE`]), then fails: a full disk stores a prefix and says `ENOSPC`.
    Tear(usize),
    /// The write succeeds, the fsync fails.
    Sync,
}

/// A torn write that writes the whole batch and still reports an error.
const WHOLE: usize = usize::MAX;

/// Whether the writer's cut of the failed batch (truncate and sync) works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The file system allows it: the failed batch never comes back.
    Works,
    /// The truncate fails too: what reached the file stays there.
    Refused,
}

impl LogFault {
    /// Whether the failed batch's record is whole on disk after `restart`.
    fn record_survives(self, cut: Cut, restart: Restart) -> bool {
        if cut == Cut::Works {
            return false;
        }
        match self {
            LogFault::Write => false,
            LogFault::Tear(keep) => keep == WHOLE && restart.keeps_unsynced(),
            LogFault::Sync => restart.keeps_unsynced(),
        }
    }

    /// The bytes recovery must cut off the end of the log after `restart`.
    fn torn_bytes(self, cut: Cut, restart: Restart) -> Option<u64> {
        match self {
            LogFault::Tear(keep)
                if cut == Cut::Refused && keep > 0 && keep != WHOLE && restart.keeps_unsynced() =>
            {
                Some(keep as u64)
            }
            _ => None,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            LogFault::Write | LogFault::Tear(_) => "writing LSNs",
            LogFault::Sync => "syncing LSNs",
        }
    }
}

fn poisoned_by(fault: LogFault, cut: Cut, disk: &Disk) {
    let label = format!("{fault:?}, cut {cut:?}, on {}", disk.name());
    let options = options(disk);
    let faulty = FaultyStorage::new(disk.storage());
    let engine = open(&options, Arc::new(faulty.clone()));
    let history = history(&engine);
    let snapshots_before = snapshot_files(&*disk.storage(), &options);
    let bytes_before = engine.wal().stats().bytes;

    match fault {
        LogFault::Write => faulty.fail_from(FaultPoint::Write, 1),
        LogFault::Tear(keep) => faulty.tear_write(1, keep),
        LogFault::Sync => faulty.fail_from(FaultPoint::Sync, 1),
    }
    if cut == Cut::Refused {
        faulty.fail_from(FaultPoint::Truncate, 1);
    }
    let doomed = debit(&engine, &history.tenant, "alice", 7, "doomed").expect("queued");
    assert!(!doomed.replayed);
    assert_eq!(
        engine.wait_durable(doomed.lsn),
        Err(DurabilityError::Poisoned),
        "{label}: the failed record is not acknowledged"
    );
    assert_eq!(
        poll_durable(&engine, doomed.lsn),
        Poll::Ready(Err(DurabilityError::Poisoned)),
        "{label}: the async wait fails too"
    );
    assert!(!engine.is_writable(), "{label}");
    assert!(engine.wal().is_poisoned(), "{label}");
    assert!(engine.wal().durable_lsn() < doomed.lsn, "{label}");
    let reason = engine.wal().poison_reason().expect("a reason");
    assert!(
        reason.contains("injected") && reason.contains(fault.reason()),
        "{label}: the reason names the failure: {reason}"
    );
    assert!(
        reason.contains(&doomed.lsn.to_string()),
        "{label}: the reason names the LSNs: {reason}"
    );
    let says = match cut {
        Cut::Works => "the batch was cut off the segment",
        Cut::Refused => "failed too",
    };
    assert!(
        reason.contains(says),
        "{label}: the reason says {says:?}: {reason}"
    );
    // Healing the disk changes nothing: a failed write or fsync is never retried.
    faulty.heal();
    assert_every_change_is_refused(&engine, &history.tenant, history.hold, &label);
    // A retry of the unacknowledged request finds its key, but its record is not durable, so
    // waiting for it fails: the answer is still not acknowledged.
    let retry = debit(&engine, &history.tenant, "alice", 7, "doomed").expect("replay");
    assert!(retry.replayed && retry.lsn == doomed.lsn, "{label}");
    assert_eq!(
        engine.wait_durable(retry.lsn),
        Err(DurabilityError::Poisoned),
        "{label}: a replayed answer whose record is not durable is not acknowledged"
    );
    // A retry of an acknowledged request is still answered: its record is durable.
    let (grant_key, grant_user, grant) = history.acked[0];
    let again = credit(&engine, &history.tenant, grant_user, 100, grant_key);
    assert!(again.replayed && again.lsn == grant.lsn, "{label}");
    engine
        .wait_durable(again.lsn)
        .expect("durable before the fault");
    assert!(
        engine.snapshot().is_err(),
        "{label}: no snapshot may hold an effect the log lost"
    );
    assert!(
        matches!(
            engine.shutdown(),
            Err(EngineError::Durability(DurabilityError::Poisoned))
        ),
        "{label}: shutdown reports the poison"
    );
    assert_eq!(
        snapshot_files(&*disk.storage(), &options),
        snapshots_before,
        "{label}: no snapshot written after the poison"
    );
    assert_eq!(
        engine.wal().stats().bytes,
        bytes_before,
        "{label}: the failed batch is not counted as written"
    );
    drop(engine);

    for restart in disk.restarts() {
        let label = format!("{label}, restart {restart:?}");
        let engine = open(&options, disk.after(restart));
        let survived = fault.record_survives(cut, restart);
        let torn = engine
            .recovery_report()
            .torn_tail
            .as_ref()
            .map(|torn| torn.discarded_bytes);
        match (torn, fault.torn_bytes(cut, restart)) {
            // Where the space after the torn prefix was zeroed ahead, the prefix's own trailing
            // zero bytes (its length field's high bytes) read the same as that space: the count
            // stops at its last non-zero byte, at least the batch magic.
            (Some(torn), Some(kept)) => assert!(
                (kept.min(4)..=kept).contains(&torn),
                "{label}: torn tail of {torn} bytes, {kept} were written"
            ),
            (torn, expected) => assert_eq!(torn, expected, "{label}: torn tail"),
        }
        assert_recovered(&engine, &history, Some(("doomed", 7, survived)), &label);
        drop(engine);
    }
}

#[test]
fn failing_write_poisons_the_log_and_nothing_more_is_acknowledged() {
    for cut in [Cut::Works, Cut::Refused] {
        for disk in Disk::both() {
            poisoned_by(LogFault::Write, cut, &disk);
        }
    }
}

/// A write that stores part of the batch (or all of it) and then fails, as a full disk does: the
/// writer cuts it off again, so a record whose client was told of the failure never comes back
/// (it used to, complete, after a restart). Only where the cut fails too may recovery find it.
#[test]
fn a_write_that_stores_a_prefix_and_fails_is_cut_off_and_never_comes_back() {
    // Nothing, part of the header, part of the payload, and the whole record (the write reports
    // an error although every byte reached the file).
    for keep in [0, 7, HEADER_BYTES + 5, WHOLE] {
        for cut in [Cut::Works, Cut::Refused] {
            for disk in Disk::both() {
                poisoned_by(LogFault::Tear(keep), cut, &disk);
            }
        }
    }
}

/// An fsync that fails after the write succeeded: the bytes are in the page cache, and a restart
/// would replay them; the writer cuts them off the segment first.
#[test]
fn a_sync_that_fails_after_the_write_is_cut_off_and_never_comes_back() {
    for cut in [Cut::Works, Cut::Refused] {
        for disk in Disk::both() {
            poisoned_by(LogFault::Sync, cut, &disk);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A segment that cannot be started poisons the log.
// ---------------------------------------------------------------------------------------------

fn poisoned_by_rotation(point: FaultPoint, disk: &Disk) {
    let label = format!("{point:?} at rotation on {}", disk.name());
    let options = EngineOptions {
        segment_bytes: 4096,
        ..options(disk)
    };
    let faulty = FaultyStorage::new(disk.storage());
    let engine = open(&options, Arc::new(faulty.clone()));
    let history = history(&engine);
    let (_, lsn) = engine
        .upsert_user(&history.tenant, "dave", NO_PROFILE, &ADMIN)
        .expect("dave");
    engine.wait_durable(lsn).expect("durable");
    faulty.fail_from(point, 1);
    let mut acknowledged = 0i64;
    let failed = loop {
        assert!(acknowledged < 10_000, "{label}: the segment never rotated");
        let k = format!("fill-{acknowledged}");
        let done = credit(&engine, &history.tenant, "dave", 1, &k);
        match engine.wait_durable(done.lsn) {
            Ok(()) => acknowledged += 1,
            Err(error) => break (done, error),
        }
    };
    assert_eq!(failed.1, DurabilityError::Poisoned, "{label}");
    assert!(
        acknowledged > 0,
        "{label}: some credits fit before the rotation"
    );
    assert_eq!(engine.wal().stats().rotations, 0, "{label}");
    let reason = engine.wal().poison_reason().expect("reason");
    assert!(
        reason.contains("starting segment") && reason.contains("injected"),
        "{label}: {reason}"
    );
    faulty.heal();
    assert_every_change_is_refused(&engine, &history.tenant, history.hold, &label);
    drop(engine);
    for restart in disk.restarts() {
        let label = format!("{label}, restart {restart:?}");
        let engine = open(&options, disk.after(restart));
        // The failed batch was never written: rotation failed before the write.
        let tenant = engine.tenant("acme").expect("tenant");
        assert_eq!(
            tenant.wallet("dave", None).expect("dave").balance,
            acknowledged,
            "{label}: exactly the acknowledged credits"
        );
        assert!(engine.recovery_report().torn_tail.is_none(), "{label}");
        assert_recovered(&engine, &history, None, &label);
        drop(engine);
    }
}

#[test]
fn failing_segment_creation_at_rotation_poisons_the_log() {
    for point in [FaultPoint::Create, FaultPoint::SyncDir] {
        for disk in Disk::both() {
            poisoned_by_rotation(point, &disk);
        }
    }
}

/// Fills "dave" with acknowledged one-credit grants (keys `fill-0`, `fill-1`, …) until `stop`
/// says so or a grant is not acknowledged; returns how many were acknowledged and the error.
fn fill(
    engine: &Engine,
    tenant: &Tenant,
    mut stop: impl FnMut(&Engine) -> bool,
) -> (i64, Option<DurabilityError>) {
    let mut acknowledged = 0i64;
    while !stop(engine) {
        assert!(acknowledged < 10_000, "the segment never rotated");
        let k = format!("fill-{acknowledged}");
        let done = credit(engine, tenant, "dave", 1, &k);
        if let Err(error) = engine.wait_durable(done.lsn) {
            return (acknowledged, Some(error));
        }
        acknowledged += 1;
    }
    (acknowledged, None)
}

/// The write of a new segment's header is torn (nothing, part of it, or all of it written and
/// still reported as failed): the log is poisoned, and a restart on the real file system finds
/// the new segment with a bad or header-only content as the last one, which recovery must treat
/// as an unfinished write, not as damage.
fn torn_segment_header(keep: usize, disk: &Disk) {
    let label = format!("segment header torn at {keep} bytes on {}", disk.name());
    let options = EngineOptions {
        segment_bytes: 4096,
        ..options(disk)
    };
    // A rehearsal on a scratch disk counts the writes before the first rotation: the same
    // requests on the same state write the same bytes, so the real run rotates at the same write.
    let header_write = {
        let scratch = Disk::Mem(MemStorage::new());
        let faulty = FaultyStorage::new(scratch.storage());
        let engine = open(&options, Arc::new(faulty.clone()));
        let history = history(&engine);
        let (_, lsn) = engine
            .upsert_user(&history.tenant, "dave", NO_PROFILE, &ADMIN)
            .expect("dave");
        engine.wait_durable(lsn).expect("durable");
        let start = faulty.calls(FaultPoint::Write);
        let mut before_rotation = start;
        let (_, error) = fill(&engine, &history.tenant, |engine| {
            if engine.wal().stats().rotations > 0 {
                return true;
            }
            before_rotation = faulty.calls(FaultPoint::Write);
            false
        });
        assert_eq!(error, None);
        // The rotating batch first writes the new segment's header.
        before_rotation - start + 1
    };

    let faulty = FaultyStorage::new(disk.storage());
    let engine = open(&options, Arc::new(faulty.clone()));
    let history = history(&engine);
    let (_, lsn) = engine
        .upsert_user(&history.tenant, "dave", NO_PROFILE, &ADMIN)
        .expect("dave");
    engine.wait_durable(lsn).expect("durable");
    faulty.tear_write(header_write, keep);
    let (acknowledged, error) = fill(&engine, &history.tenant, |_| false);
    assert_eq!(error, Some(DurabilityError::Poisoned), "{label}");
    assert!(acknowledged > 0, "{label}");
    let reason = engine.wal().poison_reason().expect("reason");
    assert!(
        reason.contains("starting segment") && reason.contains("torn"),
        "{label}: the header write failed, not a record write: {reason}"
    );
    faulty.heal();
    assert_every_change_is_refused(&engine, &history.tenant, history.hold, &label);
    drop(engine);
    for restart in disk.restarts() {
        let label = format!("{label}, restart {restart:?}");
        let storage = disk.after(restart);
        let engine = Engine::open(options.clone(), Arc::clone(&storage), clock())
            .unwrap_or_else(|error| panic!("{label}: recovery refused to start: {error}"));
        // Only the real file system keeps the new segment's name (in memory it was never made
        // durable by a directory sync). A partial header is cut off whole; a whole header with no
        // record after it is a valid, empty segment.
        let torn = engine
            .recovery_report()
            .torn_tail
            .as_ref()
            .map(|torn| (torn.offset, torn.discarded_bytes));
        let expected =
            (restart == Restart::Fs && keep < SEGMENT_HEADER_BYTES).then_some((0, keep as u64));
        assert_eq!(torn, expected, "{label}: torn tail");
        let tenant = engine.tenant("acme").expect("tenant");
        assert_eq!(
            tenant.wallet("dave", None).expect("dave").balance,
            acknowledged,
            "{label}: exactly the acknowledged credits"
        );
        assert_recovered(&engine, &history, None, &label);
        let done = credit(&engine, &tenant, "dave", 1, "after-restart");
        engine.wait_durable(done.lsn).expect("durable");
        drop(engine);
        // And once more, now that the log goes on past the cut segment.
        let engine = open(&options, storage);
        let tenant = engine.tenant("acme").expect("tenant");
        assert_eq!(
            tenant.wallet("dave", None).expect("dave").balance,
            acknowledged + 1,
            "{label}: after a second restart"
        );
        drop(engine);
    }
}

#[test]
fn torn_segment_header_at_rotation_poisons_the_log_and_recovery_cuts_it() {
    for keep in [0, 5, SEGMENT_HEADER_BYTES] {
        for disk in Disk::both() {
            torn_segment_header(keep, &disk);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A failed snapshot fails alone.
// ---------------------------------------------------------------------------------------------

fn failed_snapshot(point: FaultPoint, disk: &Disk) {
    let label = format!("{point:?} during a snapshot on {}", disk.name());
    let options = options(disk);
    let faulty = FaultyStorage::new(disk.storage());
    let engine = open(&options, Arc::new(faulty.clone()));
    let history = history(&engine);
    let first = engine.snapshot().expect("a snapshot without faults");
    let more = acknowledge(
        &engine,
        credit(&engine, &history.tenant, "bob", 1, "between-snapshots"),
    );
    let before_names = snapshot_files(&*disk.storage(), &options);
    let start_lsn = engine.wal().next_lsn();
    let failed_name = format!("{start_lsn:020}.snap");

    faulty.fail_from(point, 1);
    let error = engine
        .snapshot()
        .expect_err("the snapshot must report the failure");
    assert!(error.to_string().contains("injected"), "{label}: {error}");
    // A failed snapshot does not poison the log: writes go on (before the disk heals, too, as
    // long as the log itself does not touch the failing call).
    assert!(
        engine.is_writable(),
        "{label}: a failed snapshot poisoned the log"
    );
    assert!(engine.wal().poison_reason().is_none(), "{label}");
    if point != FaultPoint::Write && point != FaultPoint::Sync {
        let done = credit(&engine, &history.tenant, "bob", 1, "during-fault");
        engine
            .wait_durable(done.lsn)
            .unwrap_or_else(|error| panic!("{label}: a write after the failed snapshot: {error}"));
    }
    faulty.heal();
    let names = snapshot_files(&*disk.storage(), &options);
    let finals = final_snapshots(&names);
    if point == FaultPoint::SyncDir {
        // The rename happened before the directory sync failed: the file under the final name is
        // whole (it was synced before the rename), and recovery may use it.
        assert!(finals.contains(&failed_name), "{label}: {names:?}");
    } else {
        assert_eq!(
            finals,
            final_snapshots(&before_names),
            "{label}: nothing new under a final name: {names:?}"
        );
    }
    let done = credit(&engine, &history.tenant, "bob", 1, "after-heal");
    engine
        .wait_durable(done.lsn)
        .expect("durable after the failed snapshot");
    engine.wal().flush().expect("flush");
    let image = engine.state_image();
    let bob = history.tenant.wallet("bob", None).expect("bob").balance;
    drop(engine);

    for restart in disk.restarts() {
        let label = format!("{label}, restart {restart:?}");
        let engine = open(&options, disk.after(restart));
        let report = engine.recovery_report();
        assert!(
            report.snapshots_skipped.is_empty(),
            "{label}: a damaged snapshot was found: {:?}",
            report.snapshots_skipped
        );
        // The failed snapshot is used only where its name survived: after a failed directory
        // sync on the real file system, where the rename itself went through.
        let expected = if point == FaultPoint::SyncDir && restart == Restart::Fs {
            options.snapshot_dir().join(&failed_name)
        } else {
            first.path.clone()
        };
        assert_eq!(
            report.snapshot.as_ref(),
            Some(&expected),
            "{label}: recovery starts from the newest whole snapshot"
        );
        assert_eq!(engine.state_image(), image, "{label}: the same state");
        let storage = disk.after(restart);
        let leftovers: Vec<String> = snapshot_files(&*storage, &options)
            .into_iter()
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{label}: open removes {leftovers:?}");
        let tenant = engine.tenant("acme").expect("tenant");
        assert_eq!(tenant.wallet("bob", None).expect("bob").balance, bob);
        let replay = credit(&engine, &tenant, "bob", 1, "between-snapshots");
        assert!(replay.replayed && replay.lsn == more.lsn, "{label}");
        engine.check_invariants().expect("invariants");
        engine.snapshot().expect("snapshots work again");
        drop(engine);
    }
}

#[test]
fn failing_rename_during_a_snapshot_fails_the_snapshot_only() {
    for disk in Disk::both() {
        failed_snapshot(FaultPoint::Rename, &disk);
    }
}

#[test]
fn failing_directory_sync_during_a_snapshot_fails_the_snapshot_only() {
    for disk in Disk::both() {
        failed_snapshot(FaultPoint::SyncDir, &disk);
    }
}

#[test]
fn failing_create_write_or_fsync_during_a_snapshot_fails_the_snapshot_only() {
    for point in [FaultPoint::Create, FaultPoint::Write, FaultPoint::Sync] {
        for disk in Disk::both() {
            failed_snapshot(point, &disk);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backpressure: a writer stuck in fsync makes appends fail fast.
// ---------------------------------------------------------------------------------------------

/// Opens the gate when dropped, so a failing test does not hang joining a held writer.
struct OpenOnDrop(Arc<SyncGate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

fn backpressure(disk: &Disk) {
    let label = format!("backpressure on {}", disk.name());
    const QUEUE_BYTES: usize = 2048;
    let options = EngineOptions {
        queue_bytes: QUEUE_BYTES,
        ..options(disk)
    };
    let (storage, gate) = GatedStorage::new(disk.storage());
    let engine = open(&options, Arc::new(storage));
    let _open_on_drop = OpenOnDrop(Arc::clone(&gate));
    let history = history(&engine);
    let tenant = &history.tenant;

    gate.close();
    // The writer takes this record alone and then sits in its fsync.
    let first = debit(&engine, tenant, "alice", 1, "bp-0").expect("queued");
    gate.wait_for_a_sync()
        .expect("the writer sits in its fsync");
    let mut accepted = Vec::new();
    let refused_key = loop {
        let k = format!("bp-{}", accepted.len() + 1);
        match debit(&engine, tenant, "alice", 1, &k) {
            Ok(done) => accepted.push(done),
            Err(EngineError::Log(AppendError::Backpressure)) => break k,
            Err(other) => panic!("{label}: {other}"),
        }
        assert!(accepted.len() < 10_000, "{label}: the queue never filled");
    };
    assert!(!accepted.is_empty(), "{label}: the queue held nothing");
    assert!(
        accepted.len() * HEADER_BYTES <= QUEUE_BYTES,
        "{label}: {} records queued past the limit",
        accepted.len()
    );
    // Refused, not queued: the state holds only the accepted debits, nothing is durable yet, the
    // log is not poisoned, and the refused key is free for a retry.
    let queued = 1 + accepted.len() as i64;
    let alice = tenant.wallet("alice", None).expect("alice");
    assert_eq!(alice.balance, ALICE - queued, "{label}");
    assert!(engine.wal().durable_lsn() < first.lsn, "{label}");
    assert!(
        engine.is_writable(),
        "{label}: backpressure is not a failure"
    );
    assert_eq!(
        debit(&engine, tenant, "alice", 1, &refused_key),
        Err(EngineError::Log(AppendError::Backpressure)),
        "{label}: the refused key left no claim behind"
    );

    gate.open();
    for done in std::iter::once(first).chain(accepted.iter().copied()) {
        engine
            .wait_durable(done.lsn)
            .expect("durable once the fsync returns");
    }
    let retried = acknowledge(
        &engine,
        debit(&engine, tenant, "alice", 1, &refused_key).expect("accepted now"),
    );
    assert!(
        !retried.replayed,
        "{label}: the refused request had no effect"
    );
    let image = engine.state_image();
    drop(engine);
    for restart in disk.restarts() {
        let label = format!("{label}, restart {restart:?}");
        let engine = open(&options, disk.after(restart));
        assert_eq!(
            engine.state_image(),
            image,
            "{label}: every acknowledged debit"
        );
        let balance = engine
            .tenant("acme")
            .expect("tenant")
            .wallet("alice", None)
            .expect("alice")
            .balance;
        assert_eq!(balance, ALICE - queued - 1, "{label}");
        engine.check_invariants().expect("invariants");
    }
}

#[test]
fn a_writer_stuck_in_fsync_makes_appends_fail_with_backpressure() {
    for disk in Disk::both() {
        backpressure(&disk);
    }
}

// ---------------------------------------------------------------------------------------------
// What a restart builds on.
// ---------------------------------------------------------------------------------------------

/// Tenant `acme` with `alice` holding a million credits, all durable: room for many debits.
fn funded_alice(engine: &Engine) -> Arc<Tenant> {
    let tenant = acme_with_alice(engine);
    acknowledge(engine, credit(engine, &tenant, "alice", 1_000_000, "grant"));
    tenant
}

/// Tenant `acme` with the user `alice`, both durable.
fn acme_with_alice(engine: &Engine) -> Arc<Tenant> {
    let (tenant, _, lsn) = engine.upsert_tenant("acme", None, None, &ADMIN).unwrap();
    engine.wait_durable(lsn).unwrap();
    let (_, lsn) = engine
        .upsert_user(&tenant, "alice", NO_PROFILE, &ADMIN)
        .unwrap();
    engine.wait_durable(lsn).unwrap();
    tenant
}

/// A process dies between `write` and `fdatasync` (here: the fsync fails), the next process
/// recovers the written bytes from the page cache and acknowledges a retry from them, then the
/// power goes. Recovery must have made those bytes durable before building on them.
#[test]
fn recovery_makes_what_it_replays_durable_before_building_on_it() {
    let memory = MemStorage::new();
    let disk = Disk::Mem(memory.clone());
    let options = options(&disk);
    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    let first = open(&options, Arc::new(faulty.clone()));
    let tenant = acme_with_alice(&first);
    acknowledge(&first, credit(&first, &tenant, "alice", 100, "grant"));
    // A process killed between write and fdatasync leaves the batch in the page cache; here the
    // fsync fails and so does the writer's cut of the batch, which leaves the same bytes.
    faulty.fail_from(FaultPoint::Sync, 1);
    faulty.fail_from(FaultPoint::Truncate, 1);
    let lost = debit(&first, &tenant, "alice", 30, "spend-x").unwrap();
    assert!(first.wait_durable(lost.lsn).is_err(), "never acknowledged");
    drop(tenant);
    drop(first);

    // A process crash: the bytes are still in the page cache.
    let second = open(&options, Arc::new(memory.clone()));
    let tenant = second.tenant("acme").unwrap();
    let retry = acknowledge(
        &second,
        debit(&second, &tenant, "alice", 30, "spend-x").unwrap(),
    );
    assert_eq!(retry.lsn, lost.lsn, "answered from the recovered record");
    let next = acknowledge(
        &second,
        debit(&second, &tenant, "alice", 10, "spend-y").unwrap(),
    );
    drop(tenant);
    drop(second);

    // A power cut: only synced bytes survive, and everything acknowledged is among them.
    memory.crash();
    let third = open(&options, Arc::new(memory.clone()));
    let tenant = third.tenant("acme").unwrap();
    assert_eq!(tenant.wallet("alice", None).unwrap().balance, 60);
    for (k, amount, done) in [("spend-x", 30, &retry), ("spend-y", 10, &next)] {
        let again = debit(&third, &tenant, "alice", amount, k).unwrap();
        assert_eq!(
            (again.lsn, &again.outcome),
            (done.lsn, &done.outcome),
            "{k}"
        );
    }
}

/// Lowering `storage.max_record_bytes` limits new records only: an acknowledged record written
/// under the old limit still reads, at the end of the log as anywhere else.
#[test]
fn a_lower_record_limit_still_reads_the_records_written_before() {
    for disk in [
        Disk::Mem(MemStorage::new()),
        Disk::Fs(tempfile::tempdir().unwrap()),
    ] {
        let options = options(&disk);
        let engine = open(&options, disk.storage());
        let tenant = acme_with_alice(&engine);
        let metadata = format!("{{\"note\":\"{}\"}}", "a".repeat(10_000));
        let mut big = CreditRequest::new("alice", 100, CreditKind::Grant);
        big.metadata = Some(&metadata);
        let done = acknowledge(&engine, engine.credit(&tenant, &big, &key("big")).unwrap());
        drop(tenant);
        drop(engine);
        if let Disk::Mem(memory) = &disk {
            memory.crash();
        }
        let lowered = EngineOptions {
            max_record_bytes: 8192,
            ..options.clone()
        };
        let engine = open(&lowered, disk.storage());
        assert!(engine.recovery_report().torn_tail.is_none());
        assert_eq!(engine.recovery_report().next_lsn, done.lsn + 1);
        let tenant = engine.tenant("acme").unwrap();
        assert_eq!(tenant.wallet("alice", None).unwrap().balance, 100);
    }
}

/// The only segment, named for the snapshot's start, has a torn header (a crash while the log
/// was created again over it), and the next start fails just after recovery: the segment must
/// still be there, or the start after that would find a snapshot and no log.
#[test]
fn a_segment_with_a_torn_header_is_overwritten_not_removed() {
    let memory = MemStorage::new();
    let disk = Disk::Mem(memory.clone());
    let options = options(&disk);
    let engine = open(&options, Arc::new(memory.clone()));
    let tenant = acme_with_alice(&engine);
    acknowledge(&engine, credit(&engine, &tenant, "alice", 100, "grant"));
    engine.shutdown().unwrap();
    drop(tenant);
    drop(engine);
    // A second clean stop with nothing new: its snapshot lets the first segment go.
    let again = open(&options, Arc::new(memory.clone()));
    again.shutdown().unwrap();
    drop(again);
    let mut segments = memory.list(&options.wal_dir()).unwrap();
    segments.retain(|name| name.ends_with(".log"));
    assert_eq!(
        segments.len(),
        1,
        "the snapshot covers every record: {segments:?}"
    );
    let segment = options.wal_dir().join(&segments[0]);
    memory
        .corrupt(&segment, 0, &[0; SEGMENT_HEADER_BYTES])
        .unwrap();

    let faulty = FaultyStorage::new(Arc::new(memory.clone()));
    faulty.fail_from(FaultPoint::Create, 1);
    assert!(Engine::open(options.clone(), Arc::new(faulty), clock()).is_err());
    memory.crash();
    let engine = open(&options, Arc::new(memory.clone()));
    let tenant = engine.tenant("acme").unwrap();
    assert_eq!(tenant.wallet("alice", None).unwrap().balance, 100);
}

// ---------------------------------------------------------------------------------------------
// Damage that used to pass for an unfinished write.
// ---------------------------------------------------------------------------------------------

/// The last segment of `storage`'s log and the offset, in it, of the payload of its last record.
fn last_record(storage: &dyn Storage, options: &EngineOptions) -> (PathBuf, usize, usize) {
    let dir = options.wal_dir();
    let last = segment::from_listing(&dir, &storage.list(&dir).unwrap())
        .pop()
        .expect("a segment");
    let bytes = storage.read_all(&last.path).unwrap();
    let mut found = None;
    segment::scan::<()>(
        &bytes,
        last.first_lsn,
        creditd::codec::FORMAT_VERSION,
        1 << 20,
        |offset, frame| {
            found = Some((offset as usize + HEADER_BYTES, frame.payload.len()));
            Ok(())
        },
    )
    .unwrap()
    .expect("the log reads clean before the damage");
    let (payload_at, payload_len) = found.expect("the last segment holds a record");
    (last.path, payload_at, payload_len)
}

/// Flips bit 0 of one byte of a real file, as the disk would.
fn flip_bit_on_disk(path: &std::path::Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 1;
    std::fs::write(path, &bytes).unwrap();
}

/// A debit is acknowledged, the process is killed, and one bit of the payload of the last record
/// of the last segment flips. Recovery used to call it a torn tail, cut it, give the credits back
/// and reuse its LSN; the batch around it was written completely, so it is damage to an
/// acknowledged record and the start is refused, naming the file and the offset.
#[test]
fn a_flipped_bit_in_the_last_acknowledged_record_refuses_to_start() {
    for disk in Disk::both() {
        let label = disk.name();
        let options = options(&disk);
        let engine = open(&options, disk.storage());
        let tenant = acme_with_alice(&engine);
        acknowledge(&engine, credit(&engine, &tenant, "alice", 100, "grant"));
        acknowledge(
            &engine,
            debit(&engine, &tenant, "alice", 30, "spend").unwrap(),
        );
        drop(tenant);
        drop(engine);
        for restart in disk.restarts() {
            let storage = disk.after(restart);
            let (path, payload_at, payload_len) = last_record(&*storage, &options);
            let offset = payload_at + payload_len / 2;
            let storage: SharedStorage = match &disk {
                Disk::Fs(_) => {
                    flip_bit_on_disk(&path, offset);
                    storage
                }
                Disk::Mem(memory) => {
                    let image = memory.crash_image(|_, unsynced| unsynced);
                    let byte = image.read_all(&path).unwrap()[offset] ^ 1;
                    image.corrupt(&path, offset, &[byte]).unwrap();
                    Arc::new(image)
                }
            };
            let error = Engine::open(options.clone(), storage, clock())
                .err()
                .unwrap_or_else(|| panic!("{label}: a damaged acknowledged record was accepted"));
            let message = error.to_string();
            assert!(
                matches!(error, creditd::engine::OpenError::Damage { .. }),
                "{label} {restart:?}: {message}"
            );
            assert!(
                message.contains(&path.display().to_string()) && message.contains("offset"),
                "{label} {restart:?}: the message names the file and the offset: {message}"
            );
            assert!(
                message.contains("written completely"),
                "{label} {restart:?}: {message}"
            );
            if let Disk::Fs(_) = disk {
                // `creditd wal verify` used to exit 0 here.
                let found = creditd::inspect::verify(&disk.data_dir(), &mut Vec::new()).unwrap();
                assert!(
                    found
                        .damage
                        .iter()
                        .any(|d| d.contains("written completely")),
                    "{label}: wal verify reports the damage: {found:?}"
                );
            }
        }
    }
}

/// The newest segment is deleted: the log would end early and reissue its LSNs. `log-end` says
/// the segment existed, so the start is refused and the message names it.
#[test]
fn a_removed_last_segment_refuses_to_start() {
    for disk in Disk::both() {
        let label = disk.name();
        let options = EngineOptions {
            segment_bytes: 4096,
            ..options(&disk)
        };
        let engine = open(&options, disk.storage());
        let tenant = funded_alice(&engine);
        for n in 0..200 {
            acknowledge(
                &engine,
                debit(&engine, &tenant, "alice", 1, &format!("d{n}")).unwrap(),
            );
        }
        assert!(engine.wal().stats().rotations > 0, "{label}: rotated");
        drop(tenant);
        drop(engine);
        let storage = match &disk {
            Disk::Fs(_) => disk.storage(),
            Disk::Mem(memory) => Arc::new(memory.crash_image(|_, _| 0)) as SharedStorage,
        };
        let dir = options.wal_dir();
        let newest = segment::from_listing(&dir, &storage.list(&dir).unwrap())
            .pop()
            .unwrap();
        storage.remove(&newest.path).unwrap();
        storage.sync_dir(&dir).unwrap();
        let error = Engine::open(options.clone(), Arc::clone(&storage), clock())
            .err()
            .unwrap_or_else(|| panic!("{label}: a log without its last segment was accepted"));
        let message = error.to_string();
        assert!(
            message.contains(&newest.path.display().to_string()) && message.contains("missing"),
            "{label}: the message names the missing segment: {message}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What recovery says about the fallback and about a log cut short.
// ---------------------------------------------------------------------------------------------

/// Two snapshots with several segments between them: the older snapshot is the fallback, and the
/// segments before the newer one's start are only its.
fn two_snapshots_over_rotated_segments(disk: &Disk) -> (EngineOptions, Vec<segment::SegmentFile>) {
    let options = EngineOptions {
        segment_bytes: 2048,
        ..options(disk)
    };
    let engine = open(&options, disk.storage());
    let tenant = funded_alice(&engine);
    for round in 0..2 {
        for n in 0..60 {
            let key = format!("r{round}-{n}");
            acknowledge(&engine, debit(&engine, &tenant, "alice", 1, &key).unwrap());
        }
        engine.snapshot().expect("snapshot");
    }
    for n in 0..10 {
        acknowledge(
            &engine,
            debit(&engine, &tenant, "alice", 1, &format!("after-{n}")).unwrap(),
        );
    }
    drop(tenant);
    drop(engine);
    let dir = options.wal_dir();
    let segments = segment::from_listing(&dir, &disk.storage().list(&dir).unwrap());
    (options, segments)
}

/// Damage only the fallback snapshot would need (the oldest segment, a missing middle segment) does
/// not stop the start, but recovery reports it, so an operator learns the fallback is gone.
#[test]
fn damage_only_the_fallback_needs_is_reported_without_stopping_the_start() {
    let disk = Disk::Fs(tempfile::tempdir().expect("tempdir"));
    let (options, segments) = two_snapshots_over_rotated_segments(&disk);
    let snapshots = snapshot_files(&*disk.storage(), &options);
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let newest_start = snapshots
        .iter()
        .filter_map(|name| name.strip_suffix(".snap")?.parse::<u64>().ok())
        .max()
        .unwrap();
    let only_fallback: Vec<_> = segments
        .windows(2)
        .filter(|pair| pair[1].first_lsn <= newest_start)
        .map(|pair| pair[0].clone())
        .collect();
    assert!(
        only_fallback.len() >= 2,
        "the scenario keeps segments only the fallback needs: {segments:?}"
    );

    // A flipped bit in the oldest segment.
    let oldest = &only_fallback[0].path;
    let len = std::fs::metadata(oldest).unwrap().len() as usize;
    flip_bit_on_disk(oldest, len - 40);
    let engine = open(&options, disk.storage());
    let problems = engine.recovery_report().fallback_problems.clone();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&oldest.display().to_string())),
        "the damaged oldest segment is reported: {problems:?}"
    );
    assert_eq!(
        engine
            .tenant("acme")
            .unwrap()
            .wallet("alice", None)
            .unwrap()
            .balance,
        1_000_000 - 130
    );
    drop(engine);
    flip_bit_on_disk(oldest, len - 40);

    // A missing middle segment.
    let middle = &only_fallback[1].path;
    std::fs::remove_file(middle).unwrap();
    let engine = open(&options, disk.storage());
    let problems = engine.recovery_report().fallback_problems.clone();
    assert!(
        problems.iter().any(|p| p.contains("a segment is missing")),
        "the missing segment is reported: {problems:?}"
    );
}

/// A last segment cut below the snapshot's start: the message names the segment, where its last
/// whole batch ends, and the snapshot.
#[test]
fn a_log_cut_below_the_snapshot_names_the_segment_the_offset_and_the_snapshot() {
    let disk = Disk::Fs(tempfile::tempdir().expect("tempdir"));
    let options = options(&disk);
    let engine = open(&options, disk.storage());
    let tenant = acme_with_alice(&engine);
    acknowledge(&engine, credit(&engine, &tenant, "alice", 100, "grant"));
    for n in 0..5 {
        acknowledge(
            &engine,
            debit(&engine, &tenant, "alice", 1, &format!("d{n}")).unwrap(),
        );
    }
    let summary = engine.snapshot().expect("snapshot");
    drop(tenant);
    drop(engine);
    let dir = options.wal_dir();
    let storage = disk.storage();
    let segments = segment::from_listing(&dir, &storage.list(&dir).unwrap());
    // The segment before the one the snapshot starts in, cut to its header; the later ones gone.
    let (kept, later) = segments.split_first().unwrap();
    for file in later {
        std::fs::remove_file(&file.path).unwrap();
    }
    std::fs::remove_file(dir.join("log-end")).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&kept.path)
        .unwrap();
    file.set_len(SEGMENT_HEADER_BYTES as u64).unwrap();
    drop(file);
    let Err(error) = Engine::open(options.clone(), storage, clock()) else {
        panic!("a log that ends before the snapshot is refused");
    };
    let message = error.to_string();
    let snapshot = summary.path;
    for part in [
        kept.path.display().to_string(),
        format!("ends at offset {SEGMENT_HEADER_BYTES}"),
        snapshot.display().to_string(),
    ] {
        assert!(message.contains(&part), "{message:?} names {part:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Retention holds.
// ---------------------------------------------------------------------------------------------

/// A hold at LSN 1 keeps every segment through any number of snapshots; moving it lets what it no
/// longer needs go at once, releasing it at the next snapshot. A hold given in the options is in force from the moment the engine opens.
#[test]
fn a_retention_hold_keeps_every_segment_it_needs_through_snapshots_until_released() {
    for disk in Disk::both() {
        let label = disk.name();
        let options = EngineOptions {
            segment_bytes: 2048,
            retention_holds: vec![("reader".to_owned(), 1)],
            ..options(&disk)
        };
        let engine = open(&options, disk.storage());
        let tenant = funded_alice(&engine);
        let segment_names = || {
            let dir = options.wal_dir();
            segment::from_listing(&dir, &disk.storage().list(&dir).unwrap())
                .into_iter()
                .map(|file| file.first_lsn)
                .collect::<Vec<u64>>()
        };
        let mut seen = Vec::new();
        for round in 0..5 {
            for n in 0..40 {
                let key = format!("r{round}-{n}");
                acknowledge(&engine, debit(&engine, &tenant, "alice", 1, &key).unwrap());
            }
            engine.snapshot().expect("snapshot");
            let now = segment_names();
            assert_eq!(now.first(), Some(&1), "{label}: the first segment is kept");
            assert!(
                seen.iter().all(|lsn| now.contains(lsn)),
                "{label} round {round}: a held segment was removed: {seen:?} → {now:?}"
            );
            seen = now;
        }
        assert!(seen.len() > 4, "{label}: the log rotated: {seen:?}");
        // Moved forward, the hold keeps only what it still needs, without waiting for another
        // snapshot (no record may come to call for one); released, only the snapshots count.
        let middle = seen[seen.len() / 2];
        engine.prune_if_holds_moved();
        assert_eq!(segment_names(), seen, "{label}: the hold has not moved");
        engine.retention().hold("reader", middle);
        engine.prune_if_holds_moved();
        let now = segment_names();
        assert_eq!(now.first(), Some(&middle), "{label}: {now:?}");
        engine.snapshot().expect("snapshot");
        assert_eq!(segment_names().first(), Some(&middle), "{label}");
        assert!(engine.retention().release("reader"));
        acknowledge(
            &engine,
            debit(&engine, &tenant, "alice", 1, "last").unwrap(),
        );
        engine.snapshot().expect("snapshot");
        let now = segment_names();
        assert!(now.first() > Some(&middle), "{label}: released: {now:?}");
        drop(tenant);
        drop(engine);
    }
}

// ---------------------------------------------------------------------------------------------
// What the offline tools print.
// ---------------------------------------------------------------------------------------------

/// `creditd wal dump` prints every event, but never a tenant's webhook signing secret (it used to
/// print it in clear); the secret still comes back from the log intact.
#[test]
fn wal_dump_masks_the_webhook_secret_and_the_log_still_holds_it() {
    let disk = Disk::Fs(tempfile::tempdir().expect("tempdir"));
    let options = options(&disk);
    let engine = open(&options, disk.storage());
    let tenant = acme_with_alice(&engine);
    const SECRET: &str = "whsec-do-not-print-me-0123456789";
    let lsn = engine
        .set_tenant_webhook(
            &tenant,
            Some("https://app.example.com/hooks"),
            Some(SECRET),
            &ADMIN,
        )
        .unwrap();
    engine.wait_durable(lsn).unwrap();
    drop(tenant);
    drop(engine);
    let mut out = Vec::new();
    let printed = creditd::inspect::dump(&disk.data_dir(), 1, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(printed >= 3, "{text}");
    assert!(text.contains("TenantWebhookSet"), "{text}");
    assert!(!text.contains(SECRET), "the secret is printed: {text}");
    assert!(text.contains("Secret(***"), "{text}");
    let engine = open(&options, disk.storage());
    let (_, secret) = engine
        .tenant_webhook(&engine.tenant("acme").unwrap())
        .expect("the webhook survives the restart");
    assert_eq!(secret, SECRET);
}
