//! The kill test (DESIGN.md, "Testing layers"): re-run this test binary as a child process that
//! writes with idempotency keys, kill it with SIGKILL at random moments over many rounds, recover
//! the data directory in the parent after each kill, and check invariants 1–5.
//!
//! The child (`child_workload`) runs a deterministic plan of operations numbered 0, 1, 2, …: each
//! index is a credit, a credit to the credit pool `org`, a debit, a reservation then its capture,
//! or a reservation then its release, for a user and amounts derived from the index alone (half
//! the users are members of `org`, so their spends draw on it once their wallets are spent), under idempotency keys derived from the
//! index (`op-{i}`, or `op-{i}-r` then `op-{i}-c` / `op-{i}-x`). Four threads take indices from a
//! shared counter while a fifth takes snapshots now and then (besides the engine's own background
//! snapshots), so kills land during appends, fsyncs, segment rotations, snapshots and pruning. A
//! restarted child starts a little below the highest index ever begun, so it re-sends keys that
//! may or may not have been applied, as a client retrying after a timeout would.
//!
//! The child speaks to the parent through stdout, one line per event, each written with one
//! `write` call (atomic on a pipe) *after* the fact it reports:
//! - `READY <next_lsn>` once recovery is done;
//! - `BEGIN <i>` before index `i` is sent to the engine, so the highest `BEGIN` bounds the keys
//!   that can exist;
//! - `ACK <key> <lsn> <replayed> <outcome>` after `wait_durable` returned `Ok` for that key;
//! - `REFUSED <key>` after a spend was refused for want of credits (no effect, key not kept);
//! - `SNAP-BEGIN` / `SNAP-END` around an explicit snapshot.
//!
//! The child also keeps the history (`history.sqlite3`) as the server does: it reads the
//! history's checkpoint and puts the history's retention hold on the log there before the engine
//! opens, then runs the history's feeder thread beside the writers, so kills land in the middle of
//! the history's SQLite transactions too, and segments are pruned while the history lags. In half
//! the runs the feeder starts 50–300 ms late, so that snapshots prune while only that first hold
//! keeps what the history has not read.
//!
//! What the parent checks after each kill is stated on [`verify_round`] and [`verify_history`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd::engine::types::{CreditKind, EngineError, Fingerprint, Missing, Outcome};
use creditd::engine::ProfileUpdate;
use creditd::engine::{
    CaptureRequest, Context, CreditRequest, DebitRequest, Done, Engine, EngineOptions,
    IdempotencyKey, PoolCreditRequest, ReserveRequest, Spend, Tenant,
};
use creditd::history::reports::{Key, UsageGrouping, UsageQuery, Window};
use creditd::history::{self, rollup, FeedError, Feeder};
use creditd::wal::follow::FollowError;
use creditd::wal::{segment, FsyncMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Set in the child's environment: the data directory. Without it `child_workload` does nothing.
const CHILD_DIR_ENV: &str = "CREDITD_KILL_CHILD_DIR";
/// Set in the child's environment: the first index the child sends.
const CHILD_START_ENV: &str = "CREDITD_KILL_CHILD_START";
/// Set in the child's environment: seeds the child's snapshot timing.
const CHILD_SEED_ENV: &str = "CREDITD_KILL_CHILD_SEED";
/// Set by whoever runs the test to replay the parent's random choices.
const SEED_ENV: &str = "CREDITD_KILL_SEED";

/// Kill rounds. Each takes about half a second in a debug build.
const ROUNDS: u64 = 48;
/// The child stops on its own after this long, in case nobody kills it.
const CHILD_MAX_SECONDS: u64 = 20;
/// How long the parent waits for a killed child to go away, or for a line it waits for.
const CHILD_WAIT_SECONDS: u64 = 30;
const WORKER_THREADS: usize = 4;
const TENANT: &str = "acme";
const USERS: u64 = 8;
/// A user that never exists: the probe's requests fail on it after the key check.
const PROBE_USER: &str = "kill-probe-nobody";
/// A fingerprint no planned request has (theirs start with a tag from 1 to 5).
const PROBE_FINGERPRINT: Fingerprint = [0xEE; 16];
/// Reservations outlive the test, so none expires and changes `reserved` behind the model's back.
const HOLD_TTL_SECONDS: u64 = 3600;
const ACTOR: &str = "kill-test";
/// The credit pool the first [`MEMBERS`] users draw on.
const POOL: &str = "org";
/// Users `u0` to `u{MEMBERS - 1}` are members of [`POOL`]; the first two with a daily cap.
const MEMBERS: u64 = 4;
/// The daily cap of `u0` and `u1`.
const MEMBER_CAP: i64 = 400;

fn options(data_dir: &Path, background: bool) -> EngineOptions {
    EngineOptions {
        data_dir: data_dir.to_path_buf(),
        fsync: FsyncMode::Always,
        // Small, so that snapshots, segment rotation and pruning all happen within a round, and a
        // history a few hundred records behind spans segments that pruning could remove.
        snapshot_every_records: 500,
        segment_bytes: 16 * 1024,
        shards: 16,
        background,
        ..EngineOptions::default()
    }
}

/// The history's database in the data directory.
fn history_path(data_dir: &Path) -> PathBuf {
    data_dir.join(history::FILE_NAME)
}

/// Opens the engine as the server does when the history is on: the history's retention hold is
/// put on the log at the history's checkpoint before recovery, so that no snapshot taken from
/// then on removes a segment the history has not consumed. Returns the engine and the checkpoint.
fn open_with_history(options: EngineOptions) -> Result<(Arc<Engine>, u64), String> {
    let checkpoint = history::Store::open(&history_path(&options.data_dir))
        .and_then(|store| store.next_lsn())
        .map_err(|error| format!("the history's checkpoint: {error}"))?;
    let mut options = options;
    options
        .retention_holds
        .push((history::RETENTION_HOLD.into(), checkpoint));
    let engine = Engine::open_dir(options).map_err(|error| error.to_string())?;
    Ok((engine, checkpoint))
}

/// The history's feeder on `engine`'s log, from the history's checkpoint.
fn history_feeder(engine: &Engine) -> Feeder {
    Feeder::open(
        &history_path(&engine.options().data_dir),
        &engine.options().wal_dir(),
        creditd::codec::FORMAT_VERSION,
        creditd::wal::record::MAX_RECORD_BYTES_LIMIT,
    )
    .unwrap_or_else(|error| panic!("open the history: {error}"))
}

// ---------------------------------------------------------------------------------------------
// The plan: what index `i` does, derived from `i` alone.
// ---------------------------------------------------------------------------------------------

/// One keyed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Credit(i64),
    Debit(i64),
    Reserve(i64),
    /// Capture this much of the reservation made by the same index.
    Capture(i64),
    /// Release the reservation made by the same index.
    Release,
    /// Credit the pool [`POOL`].
    PoolCredit(i64),
}

#[derive(Debug, Clone)]
struct Request {
    index: u64,
    key: String,
    user: String,
    action: Action,
}

impl Request {
    /// The same request always has the same fingerprint; the first byte tells the action apart.
    /// (A capture's or release's fingerprint leaves out the reservation id: the id is the same on
    /// every attempt that can matter, because a capture is only ever sent after its reservation is
    /// durable, and the log is replayed as a prefix.)
    fn fingerprint(&self) -> Fingerprint {
        let (tag, amount) = match self.action {
            Action::Credit(a) => (1u8, a),
            Action::Debit(a) => (2, a),
            Action::Reserve(a) => (3, a),
            Action::Capture(a) => (4, a),
            Action::Release => (5, 0),
            Action::PoolCredit(a) => (6, a),
        };
        let mut fingerprint = [0u8; 16];
        fingerprint[0] = tag;
        fingerprint[4..12].copy_from_slice(&self.index.to_le_bytes());
        fingerprint[12..16].copy_from_slice(&(amount as u32).to_le_bytes());
        fingerprint
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a fixed, well-spread function of the index.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn user_name(n: u64) -> String {
    format!("u{n}")
}

/// The requests of index `i`, in the order they are sent. A reservation's follow-up is sent only
/// if the reservation succeeded.
fn plan(index: u64) -> Vec<Request> {
    let h = mix(index);
    let user = user_name(h % USERS);
    let request = |suffix: &str, action| Request {
        index,
        key: format!("op-{index}{suffix}"),
        user: user.clone(),
        action,
    };
    let amount = |modulus: u64| 1 + ((h >> 8) % modulus) as i64;
    match (h >> 32) % 10 {
        0..=2 => vec![request("", Action::Credit(amount(40)))],
        3 => vec![request("-p", Action::PoolCredit(amount(120)))],
        4..=6 => vec![request("", Action::Debit(amount(90)))],
        7 | 8 => {
            let held = amount(30);
            let charged = 1 + ((h >> 48) % held as u64) as i64;
            vec![
                request("-r", Action::Reserve(held)),
                request("-c", Action::Capture(charged)),
            ]
        }
        _ => vec![
            request("-r", Action::Reserve(amount(30))),
            request("-x", Action::Release),
        ],
    }
}

/// Sends one planned request. `reservation` is the id from the same index's reservation.
fn send(
    engine: &Engine,
    tenant: &Tenant,
    request: &Request,
    reservation: Option<u64>,
) -> Result<Done, EngineError> {
    let key = IdempotencyKey {
        key: &request.key,
        fingerprint: request.fingerprint(),
    };
    let context = Context::actor(ACTOR).with_key(key);
    let user = request.user.as_str();
    match request.action {
        Action::Credit(amount) => engine.credit(
            tenant,
            &CreditRequest::new(user, amount, CreditKind::Topup),
            &context,
        ),
        Action::Debit(amount) => engine.debit(
            tenant,
            &DebitRequest::new(user, Spend::Amount(amount)),
            &context,
        ),
        Action::Reserve(amount) => {
            let mut reserve = ReserveRequest::new(user, Spend::Amount(amount));
            reserve.ttl_seconds = Some(HOLD_TTL_SECONDS);
            engine.reserve(tenant, &reserve, &context)
        }
        Action::Capture(amount) => engine.capture(
            tenant,
            &CaptureRequest {
                reservation_id: reservation.expect("a capture follows its reservation"),
                amount: Some(amount),
                description: None,
                metadata: None,
            },
            &context,
        ),
        Action::Release => engine.release(
            tenant,
            reservation.expect("a release follows its reservation"),
            &context,
        ),
        Action::PoolCredit(amount) => engine.credit_pool(
            tenant,
            &PoolCreditRequest {
                pool: POOL,
                amount,
                kind: CreditKind::Grant,
                reason: Some("kill test"),
                reference: None,
            },
            &context,
        ),
    }
}

/// What the user's pool paid (or holds) of a spend, from its answer.
fn from_pool(outcome: &Outcome) -> i64 {
    match *outcome {
        Outcome::Debit { from_pool, .. }
        | Outcome::Reserve { from_pool, .. }
        | Outcome::Capture { from_pool, .. } => from_pool,
        other => panic!("not a spend: {other:?}"),
    }
}

fn reservation_of(outcome: &Outcome) -> u64 {
    match *outcome {
        Outcome::Reserve { reservation_id, .. } => reservation_id,
        other => panic!("a reservation answered {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------------

/// Writes one line to the real stdout (not the test harness's capture) and flushes it, so the
/// line is in the pipe before the child does anything else.
fn emit(line: &str) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // A line is short and written with one call, which a pipe keeps whole.
    out.write_all(format!("{line}\n").as_bytes())
        .expect("stdout");
    out.flush().expect("stdout");
}

/// The child's entry point, not a test: it returns at once unless the parent set
/// `CREDITD_KILL_CHILD_DIR`, so in an ordinary `cargo test` run it passes without doing anything.
#[test]
fn child_workload() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let start: u64 = std::env::var(CHILD_START_ENV)
        .expect("start index")
        .parse()
        .expect("start index is a number");
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    run_child(Path::new(&dir), start, seed);
}

fn run_child(dir: &Path, start: u64, seed: u64) {
    // The test harness has written `test child_workload ... ` without a newline; end that line so
    // the first report starts a line of its own.
    emit("");
    let deadline = Instant::now() + Duration::from_secs(CHILD_MAX_SECONDS);
    let (engine, _) = open_with_history(options(dir, true)).expect("child: open");
    let tenant = engine
        .tenant(TENANT)
        .expect("child: the parent created the tenant");
    emit(&format!("READY {}", engine.wal().next_lsn()));
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // In half the runs the history starts late, as a slow one would: meanwhile only the
            // hold put in place before the engine opened keeps the segments it has yet to read.
            let late = mix(seed);
            let delay_ms = if late.is_multiple_of(2) {
                0
            } else {
                50 + (late >> 8) % 250
            };
            std::thread::sleep(Duration::from_millis(delay_ms));
            // The worker's thread runs on until the child is killed. No retention: the parent
            // checks every entry ever written.
            history::worker::spawn(history_feeder(&engine), Arc::clone(&engine), None)
                .expect("child: the history's thread");
        });
        scope.spawn(|| {
            let mut rng = StdRng::seed_from_u64(seed);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(rng.random_range(10..80)));
                emit("SNAP-BEGIN");
                let result = engine.snapshot();
                emit(&format!("SNAP-END {}", result.is_ok()));
            }
        });
        let workers: Vec<_> = (0..WORKER_THREADS)
            .map(|_| scope.spawn(|| child_worker(&engine, &tenant, &next, deadline)))
            .collect();
        for worker in workers {
            worker.join().expect("child worker");
        }
        stop.store(true, Ordering::Relaxed);
    });
    emit("DONE");
}

fn child_worker(engine: &Engine, tenant: &Tenant, next: &AtomicU64, deadline: Instant) {
    while Instant::now() < deadline {
        let index = next.fetch_add(1, Ordering::Relaxed);
        emit(&format!("BEGIN {index}"));
        let mut reservation = None;
        for request in plan(index) {
            match send(engine, tenant, &request, reservation) {
                Ok(done) => {
                    if let Err(error) = engine.wait_durable(done.lsn) {
                        panic!("child: {} not durable: {error}", request.key);
                    }
                    if let Action::Reserve(_) = request.action {
                        reservation = Some(reservation_of(&done.outcome));
                    }
                    emit(&format!(
                        "ACK {} {} {} {:?}",
                        request.key, done.lsn, done.replayed, done.outcome
                    ));
                }
                Err(EngineError::InsufficientCredits(_)) => {
                    emit(&format!("REFUSED {}", request.key));
                    break;
                }
                Err(error) => panic!("child: {}: {error}", request.key),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------------------

/// Kills the child if the parent panics (or returns) while it still runs.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// When to kill the child.
#[derive(Debug, Clone, Copy)]
enum KillPlan {
    /// This long after spawning it, perhaps in the middle of recovery.
    AfterSpawn(Duration),
    /// This long after it said `READY`.
    AfterReady(Duration),
    /// This long after its `nth` explicit snapshot began.
    DuringSnapshot { nth: u32, delay: Duration },
}

fn choose_kill(rng: &mut StdRng, round: u64) -> KillPlan {
    let millis = |rng: &mut StdRng, range: std::ops::Range<u64>| {
        Duration::from_millis(rng.random_range(range))
    };
    match round % 8 {
        0 => KillPlan::AfterSpawn(millis(rng, 0..60)),
        1 | 4 => KillPlan::DuringSnapshot {
            nth: rng.random_range(1..4),
            delay: Duration::from_micros(rng.random_range(0..3000)),
        },
        2 | 5 => KillPlan::AfterReady(millis(rng, 0..10)),
        3 | 6 => KillPlan::AfterReady(millis(rng, 10..100)),
        _ => KillPlan::AfterReady(millis(rng, 100..400)),
    }
}

/// What the child reported before it died.
#[derive(Debug, Default)]
struct ChildRun {
    ready: bool,
    /// The highest index it began.
    max_begun: Option<u64>,
    /// Key → (LSN, replayed, outcome), for each acknowledged key.
    acked: BTreeMap<String, (u64, bool, String)>,
    refused: HashSet<String>,
    snapshots_begun: u32,
    finished_by_itself: bool,
}

impl ChildRun {
    fn take(&mut self, line: &str) {
        let mut words = line.splitn(5, ' ');
        match words.next() {
            Some("READY") => self.ready = true,
            Some("BEGIN") => {
                let index: u64 = words.next().expect("index").parse().expect("index");
                self.max_begun = Some(self.max_begun.map_or(index, |m| m.max(index)));
            }
            Some("ACK") => {
                let key = words.next().expect("key").to_owned();
                let lsn = words.next().expect("lsn").parse().expect("lsn");
                let replayed = words.next().expect("replayed") == "true";
                let outcome = words.next().expect("outcome").to_owned();
                let previous = self.acked.insert(key.clone(), (lsn, replayed, outcome));
                assert!(previous.is_none(), "the child acknowledged {key} twice");
            }
            Some("REFUSED") => {
                self.refused.insert(words.next().expect("key").to_owned());
            }
            Some("SNAP-BEGIN") => self.snapshots_begun += 1,
            Some("DONE") => self.finished_by_itself = true,
            // The test harness's own lines, `SNAP-END`, …
            _ => {}
        }
    }
}

/// Spawns the child, kills it as planned, and returns what it reported.
fn run_child_round(dir: &Path, start: u64, seed: u64, kill: KillPlan) -> ChildRun {
    let stderr_path = dir.with_extension("child-stderr");
    let stderr = File::create(&stderr_path).expect("stderr file");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_workload",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_START_ENV, start.to_string())
        .env(CHILD_SEED_ENV, seed.to_string())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn the child");
    let spawned = Instant::now();
    let mut guard = ChildGuard(Some(child));
    let stdout = guard.child().stdout.take().expect("child stdout");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                // A line without its newline was cut by the kill: it reports nothing.
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    if lines_tx.send(line.trim_end().to_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut run = ChildRun::default();
    let give_up = spawned + Duration::from_secs(CHILD_WAIT_SECONDS);
    // Reads lines until `until` is true or `deadline` passes; false if the child's stdout ended.
    let read_until = |run: &mut ChildRun, deadline: Instant, until: &dyn Fn(&ChildRun) -> bool| loop {
        if until(run) {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        match lines.recv_timeout(deadline - now) {
            Ok(line) => run.take(&line),
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    };
    let alive = match kill {
        KillPlan::AfterSpawn(delay) => read_until(&mut run, spawned + delay, &|_| false),
        KillPlan::AfterReady(delay) => {
            read_until(&mut run, give_up, &|run| run.ready)
                && run.ready
                && read_until(&mut run, Instant::now() + delay, &|_| false)
        }
        KillPlan::DuringSnapshot { nth, delay } => {
            let alive = read_until(&mut run, give_up, &|run| run.snapshots_begun >= nth)
                && run.snapshots_begun >= nth;
            std::thread::sleep(delay);
            alive
        }
    };
    if !alive || guard.child().try_wait().expect("try_wait").is_some() {
        let _ = guard.child().kill();
        let status = guard.child().wait().expect("wait");
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        panic!(
            "the child exited or stalled before it was killed ({status}, {:.1} s after spawn, \
             ready {}, snapshots begun {}):\n{stderr}",
            spawned.elapsed().as_secs_f64(),
            run.ready,
            run.snapshots_begun
        );
    }
    guard.child().kill().expect("kill the child");
    // The child is gone once its stdout ends; collect every line it wrote before.
    while read_until(&mut run, give_up, &|_| false) {
        assert!(
            Instant::now() < give_up,
            "the killed child's stdout did not end"
        );
    }
    reader.join().expect("reader thread");
    let mut child = guard.0.take().expect("child");
    let status = child.wait().expect("wait for the killed child");
    assert!(!status.success(), "the child was killed, not finished");
    assert!(!run.finished_by_itself, "the child ran out of time");
    run
}

/// Whether a key is in the idempotency table, without changing anything: a credit to a user that
/// does not exist, under the key with a fingerprint no real request has. The engine checks the
/// key before the user, so it answers `IdempotencyKeyReused` if the key is there and
/// `NotFound(Missing::User)` otherwise; in both cases nothing is written and no claim is left behind.
fn key_present(engine: &Engine, tenant: &Tenant, key: &str) -> bool {
    let context = Context::actor(ACTOR).with_key(IdempotencyKey {
        key,
        fingerprint: PROBE_FINGERPRINT,
    });
    match engine.credit(
        tenant,
        &CreditRequest::new(PROBE_USER, 1, CreditKind::Grant),
        &context,
    ) {
        Err(EngineError::IdempotencyKeyReused) => true,
        Err(EngineError::NotFound(Missing::User)) => false,
        other => panic!("probing {key}: {other:?}"),
    }
}

/// What the parent knows across rounds.
#[derive(Debug, Default)]
struct Model {
    /// The highest index any child began.
    max_begun: Option<u64>,
    /// Key → (LSN, outcome) of every key ever acknowledged or found applied. A key in here must
    /// be present, with this answer, after every later kill.
    known: HashMap<String, (u64, String)>,
    acked_total: u64,
    /// What the pool had paid for its members at the last check.
    pool_paid: i64,
}

/// Expected figures of one wallet.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Expected {
    balance: i64,
    reserved: i64,
}

/// The history entry a present key's record must have made: (user, kind, amount).
type ExpectedEntry = (String, &'static str, i64);

/// The pool ledger's row a present key's record must have made: (kind, amount, member).
type ExpectedPoolEntry = (&'static str, i64, Option<String>);

/// One row of the history's `entries`, with its account's tenant and user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HistoryRow {
    lsn: u64,
    tenant: String,
    user: String,
    kind: String,
    amount: i64,
    balance_after: Option<i64>,
}

/// What [`verify_history`] saw, for the round's report line.
struct HistoryReport {
    checkpoint: u64,
    oldest_segment: u64,
    caught_up_records: u64,
    entries: usize,
}

/// Recovers the data directory after a kill and checks invariants 1–5:
///
/// 1. Every key the child acknowledged (after `wait_durable` returned `Ok`) is present after
///    recovery, and replaying it answers exactly what was acknowledged (same LSN, same outcome).
///    Keys found applied in an earlier round stay present with the same answer.
/// 2. The recovered state is the effect of exactly the keys present, each once. The set of
///    applied keys is found without changing anything: every key of every index up to the
///    highest begun is probed (see [`key_present`]); a present key is re-sent with its own
///    fingerprint, which must answer `replayed: true` and gives the reservation id a capture or
///    release needs. From that set alone the model computes each wallet's balance (credits −
///    debits − captured charges) and reserved amount (reservations whose capture or release is
///    not present) and compares them with the engine; likewise the pool's balance (its credits
///    less what it paid) and reserved amount, the pool's part of each spend being the one its
///    answer states, and, from the plan's amounts alone, that wallets and pool together hold what
///    came in less what was charged. A change applied twice, or applied without its key, or a key
///    without its change, breaks the equation. The engine must hold no other
///    keys (`idempotency_entries` equals the present count) and the probes and replays must
///    write nothing (`next_lsn` unchanged).
/// 3. `check_invariants` passes (no wallet below its floor; reserved = open holds; the pool's
///    balance is its credits less what it paid; no member above its daily cap) and every
///    wallet's `available` is at least 0 (no overdraft is ever set here).
/// 4. Conservation: the balance equation of 2.
/// 5. A key refused in this round is absent (its claim was dropped), and no key answered two
///    different outcomes (acknowledged answers agree with each other and with the replay).
///
/// Then the history, on [`verify_history`].
fn verify_round(
    dir: &Path,
    model: &mut Model,
    run: &ChildRun,
    round: u64,
    clean_close: bool,
    history_db: &rusqlite::Connection,
) {
    let started = Instant::now();
    // One snapshot kept: the parent's own snapshot (in rounds that close cleanly) removes every
    // segment that no retention hold keeps.
    let options = EngineOptions {
        snapshots_kept: 1,
        ..options(dir, false)
    };
    let (engine, checkpoint) = open_with_history(options)
        .unwrap_or_else(|error| panic!("round {round}: recovery after the kill failed: {error}"));
    let report = engine.recovery_report().clone();
    engine
        .check_invariants()
        .unwrap_or_else(|violation| panic!("round {round}: {violation}"));
    let tenant = engine.tenant(TENANT).expect("the tenant survives");
    let next_lsn = engine.wal().next_lsn();

    let mut replayed_in_run = 0;
    for (key, (lsn, replayed, outcome)) in &run.acked {
        replayed_in_run += u64::from(*replayed);
        if let Some((known_lsn, known_outcome)) = model.known.get(key) {
            assert_eq!(
                (known_lsn, known_outcome),
                (lsn, outcome),
                "round {round}: {key} answered differently than before"
            );
            assert!(*replayed, "round {round}: {key} was applied again");
        }
    }
    model.max_begun = model.max_begun.max(run.max_begun);
    model.acked_total += run.acked.len() as u64;

    let mut expected: BTreeMap<String, Expected> = (0..USERS)
        .map(|n| (user_name(n), Expected::default()))
        .collect();
    let mut present = 0u64;
    let mut entries: BTreeMap<u64, ExpectedEntry> = BTreeMap::new();
    let mut pool_entries: BTreeMap<u64, ExpectedPoolEntry> = BTreeMap::new();
    let mut pool = Expected::default();
    // Conservation across wallets and the pool, from the plan's amounts alone: what came in
    // (credits to users and to the pool) less what was charged.
    let mut conserved = 0i64;
    let last_index = model.max_begun.map_or(0, |m| m + 1);
    for index in 0..last_index {
        // The reservation of this index: (id, held, of which the pool holds).
        let mut reservation: Option<(u64, i64, i64)> = None;
        for request in plan(index) {
            let key = request.key.as_str();
            if !key_present(&engine, &tenant, key) {
                assert!(
                    !run.acked.contains_key(key),
                    "round {round}: acknowledged key {key} is missing after recovery"
                );
                assert!(
                    !model.known.contains_key(key),
                    "round {round}: key {key}, applied before, is missing after recovery"
                );
                continue;
            }
            present += 1;
            assert!(
                !run.refused.contains(key),
                "round {round}: refused key {key} is present"
            );
            let done = send(&engine, &tenant, &request, reservation.map(|(id, _, _)| id))
                .unwrap_or_else(|error| panic!("round {round}: replaying {key}: {error}"));
            assert!(
                done.replayed,
                "round {round}: {key} was present but ran again"
            );
            let answer = (done.lsn, format!("{:?}", done.outcome));
            if let Some((lsn, _, outcome)) = run.acked.get(key) {
                assert_eq!(
                    (&answer.0, &answer.1),
                    (lsn, outcome),
                    "round {round}: {key} replays a different answer than it acknowledged"
                );
            }
            if let Some(known) = model.known.get(key) {
                assert_eq!(known, &answer, "round {round}: {key} changed its answer");
            }
            model.known.insert(key.to_owned(), answer);
            let wallet = expected.get_mut(&request.user).expect("planned user");
            let member = Some(request.user.clone());
            // The pool's part comes from the answer; the sums below check it adds up.
            let (entry, pool_entry) = match request.action {
                Action::Credit(amount) => {
                    wallet.balance += amount;
                    conserved += amount;
                    (Some(("topup", amount)), None)
                }
                Action::PoolCredit(amount) => {
                    pool.balance += amount;
                    conserved += amount;
                    (None, Some(("grant", amount, None)))
                }
                Action::Debit(amount) => {
                    let paid = from_pool(&done.outcome);
                    wallet.balance -= amount - paid;
                    pool.balance -= paid;
                    conserved -= amount;
                    let draw = (paid > 0).then_some(("draw", -paid, member));
                    (Some(("debit", paid - amount)), draw)
                }
                Action::Reserve(amount) => {
                    let held = from_pool(&done.outcome);
                    wallet.reserved += amount - held;
                    pool.reserved += held;
                    reservation = Some((reservation_of(&done.outcome), amount, held));
                    (None, None)
                }
                Action::Capture(charged) => {
                    let (_, held, pool_held) =
                        reservation.expect("a captured reservation is present");
                    let paid = from_pool(&done.outcome);
                    wallet.balance -= charged - paid;
                    wallet.reserved -= held - pool_held;
                    pool.balance -= paid;
                    pool.reserved -= pool_held;
                    conserved -= charged;
                    let draw = (paid > 0).then_some(("draw", -paid, member));
                    (Some(("capture", paid - charged)), draw)
                }
                Action::Release => {
                    let (_, held, pool_held) =
                        reservation.expect("a released reservation is present");
                    wallet.reserved -= held - pool_held;
                    pool.reserved -= pool_held;
                    // A release frees what the wallet held: a positive amount of `available`.
                    (Some(("release", held - pool_held)), None)
                }
            };
            if let Some(pool_entry) = pool_entry {
                pool_entries.insert(done.lsn, pool_entry);
            }
            if let Some((kind, amount)) = entry {
                let previous = entries.insert(done.lsn, (request.user.clone(), kind, amount));
                assert!(
                    previous.is_none(),
                    "round {round}: two keys answered LSN {}",
                    done.lsn
                );
            }
        }
    }
    assert_eq!(
        engine.idempotency_entries(),
        present,
        "round {round}: the engine holds keys no planned request made"
    );
    assert_eq!(
        engine.wal().next_lsn(),
        next_lsn,
        "round {round}: probing and replaying wrote to the log"
    );
    for (user, wallet) in &expected {
        let actual = tenant.wallet(user, None).expect("user");
        assert_eq!(
            (actual.balance, actual.reserved),
            (wallet.balance, wallet.reserved),
            "round {round}: {user}'s wallet is not the sum of the applied keys"
        );
        assert!(
            actual.available >= 0,
            "round {round}: {user} below its floor"
        );
    }
    let actual_pool = engine.pool(&tenant, POOL).expect("the pool");
    assert_eq!(
        (actual_pool.balance, actual_pool.reserved),
        (pool.balance, pool.reserved),
        "round {round}: the pool is not its credits less what the applied keys drew"
    );
    assert_eq!(
        actual_pool.credited - actual_pool.paid,
        actual_pool.balance,
        "round {round}: the pool's balance is not its credits less what it paid"
    );
    model.pool_paid = actual_pool.paid;
    let wallets: i64 = expected.values().map(|wallet| wallet.balance).sum();
    assert_eq!(
        wallets + pool.balance,
        conserved,
        "round {round}: wallets and pool do not add up to what came in less what was charged"
    );
    for member in engine.pool_members(&tenant, POOL).expect("members") {
        assert!(
            member.daily_cap.is_none_or(|cap| member.drawn_today <= cap),
            "round {round}: {member:?} above its cap"
        );
    }
    engine
        .check_invariants()
        .unwrap_or_else(|violation| panic!("round {round}: {violation}"));
    let history = verify_history(
        &engine,
        history_db,
        round,
        checkpoint,
        (&entries, &pool_entries),
        (&expected, pool.balance),
        clean_close,
    );
    eprintln!(
        "round {round:2}: acked {:4} (replayed {:4}), refused {:3}, snapshots begun {}, \
         keys present {present}, next LSN {next_lsn}, recovered from {} + {} records over {} \
         segments (skipped {}), torn tail {:?}, history from {} (log from {}) caught up {} \
         records to {} entries, checked in {} ms",
        run.acked.len(),
        replayed_in_run,
        run.refused.len(),
        run.snapshots_begun,
        report
            .snapshot
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or("no snapshot".into(), |n| n.to_string_lossy().into_owned()),
        report.records_replayed,
        report.segments,
        report.records_skipped,
        report
            .torn_tail
            .as_ref()
            .map(|t| (t.offset, t.discarded_bytes)),
        history.checkpoint,
        history.oldest_segment,
        history.caught_up_records,
        history.entries,
        started.elapsed().as_millis()
    );
    if clean_close {
        engine.shutdown().expect("clean shutdown");
    }
    drop(tenant);
    drop(engine);
}

/// Checks the history the killed child kept, then catches it up with the recovered log:
///
/// 1. Its checkpoint (the first LSN it has not applied, committed with its rows) is at most the
///    recovered durable LSN + 1: it never applied a record that the log then lost.
/// 2. The log still holds every record from the checkpoint on: the oldest segment starts at or
///    before it, and following the log from it never meets `FollowError::Missing` (nor anything
///    else). In rounds that close cleanly a snapshot comes first, keeping only itself, so every
///    segment before the history's is removed unless the hold put in place at recovery keeps it.
/// 3. Caught up (a feeder stepping until it passes the durable LSN), the history holds one entry
///    per money-moving record of the log and nothing else: the entries' LSNs are exactly those of
///    the present credit, debit, capture and release keys (`expected_entries`), so every
///    acknowledged one is there, none twice, none other, each with its tenant, user, kind and
///    amount.
/// 4. Per user in LSN order, each `balance_after` is the previous one plus the entry's amount
///    (from 0); a release has none; the last one is the wallet's balance (`wallets`).
/// 5. The usage report by user (from the rollups, which the same transactions keep) counts, for
///    every user, exactly its acknowledged debits and captures and the credits they charged,
///    its wallet's part and its pool's together.
/// 6. The pool's ledger holds exactly its credits and what it paid for present spends, each
///    once under its record's LSN, and its balance chain ends at the pool's balance.
fn verify_history(
    engine: &Arc<Engine>,
    history_db: &rusqlite::Connection,
    round: u64,
    checkpoint: u64,
    (expected_entries, expected_pool): (
        &BTreeMap<u64, ExpectedEntry>,
        &BTreeMap<u64, ExpectedPoolEntry>,
    ),
    (wallets, pool_balance): (&BTreeMap<String, Expected>, i64),
    clean_close: bool,
) -> HistoryReport {
    let durable = engine.wal().durable_lsn();
    assert_eq!(
        durable + 1,
        engine.wal().next_lsn(),
        "round {round}: recovery left records that are not durable"
    );
    assert!(
        checkpoint <= durable + 1,
        "round {round}: the history applied up to LSN {} but the log holds up to {durable}",
        checkpoint - 1
    );
    if clean_close {
        engine
            .snapshot()
            .unwrap_or_else(|error| panic!("round {round}: snapshot: {error}"));
    }
    let wal_dir = engine.options().wal_dir();
    let names: Vec<String> = std::fs::read_dir(&wal_dir)
        .expect("wal directory")
        .map(|entry| {
            entry
                .expect("wal entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let segments = segment::from_listing(&wal_dir, &names);
    let oldest_segment = segments.first().map_or(0, |first| first.first_lsn);
    assert!(
        oldest_segment <= checkpoint,
        "round {round}: the log starts at LSN {oldest_segment}, after the history's checkpoint \
         {checkpoint}: the retention hold did not keep it"
    );

    let mut feeder = history_feeder(engine);
    assert_eq!(
        feeder.next_lsn(),
        checkpoint,
        "round {round}: the feeder's start"
    );
    let storage = &**engine.storage();
    let mut caught_up_records = 0;
    while feeder.next_lsn() <= durable {
        let before = feeder.next_lsn();
        match feeder.step(storage, durable, 20_000) {
            Ok(applied) => caught_up_records += applied,
            Err(FeedError::Log(FollowError::Missing { next_lsn, oldest })) => panic!(
                "round {round}: the history needs LSN {next_lsn} but the log starts at {oldest}"
            ),
            Err(error) => panic!("round {round}: catching the history up: {error}"),
        }
        assert!(
            feeder.next_lsn() > before,
            "round {round}: the history stopped at LSN {before}, the log is durable to {durable}"
        );
    }
    assert_eq!(feeder.next_lsn(), durable + 1, "round {round}: caught up");
    let committed = feeder.store().next_lsn().expect("checkpoint");
    assert_eq!(
        committed,
        durable + 1,
        "round {round}: the committed checkpoint"
    );
    engine
        .retention()
        .hold(history::RETENTION_HOLD, feeder.next_lsn());
    drop(feeder);
    let rows = history_rows(history_db);
    let listed: BTreeMap<u64, ExpectedEntry> = rows
        .iter()
        .map(|row| {
            assert_eq!(row.tenant, TENANT, "round {round}: {row:?}");
            let kind = ["topup", "debit", "capture", "release"]
                .into_iter()
                .find(|kind| *kind == row.kind)
                .unwrap_or_else(|| panic!("round {round}: an entry of no planned kind: {row:?}"));
            (row.lsn, (row.user.clone(), kind, row.amount))
        })
        .collect();
    if &listed != expected_entries {
        let missing: Vec<_> = expected_entries
            .iter()
            .filter(|(lsn, entry)| listed.get(lsn) != Some(entry))
            .take(5)
            .collect();
        let extra: Vec<_> = listed
            .iter()
            .filter(|(lsn, entry)| expected_entries.get(lsn) != Some(entry))
            .take(5)
            .collect();
        panic!(
            "round {round}: the history's entries are not the log's movements ({} listed, {} \
             expected); expected but not listed (first 5): {missing:?}; listed but not expected \
             (first 5): {extra:?}",
            listed.len(),
            expected_entries.len()
        );
    }
    let mut balances: BTreeMap<&str, i64> = BTreeMap::new();
    for row in &rows {
        let balance = balances.entry(row.user.as_str()).or_default();
        match (row.kind.as_str(), row.balance_after) {
            ("release", None) => {}
            ("release", Some(_)) => panic!("round {round}: a release with a balance: {row:?}"),
            (_, Some(after)) => {
                assert_eq!(
                    Some(after),
                    balance.checked_add(row.amount),
                    "round {round}: the balance chain breaks at {row:?}"
                );
                *balance = after;
            }
            (_, None) => panic!("round {round}: a movement without a balance: {row:?}"),
        }
    }
    for (user, wallet) in wallets {
        assert_eq!(
            balances.get(user.as_str()).copied().unwrap_or(0),
            wallet.balance,
            "round {round}: {user}'s last balance_after is not the wallet's balance"
        );
    }
    verify_usage(engine, round, expected_entries, expected_pool);
    // The pool's ledger: exactly its credits and the draws of the present keys, each once, its
    // balance chain from 0 ending at the pool's balance.
    let pool_rows = pool_rows(history_db);
    let listed: BTreeMap<u64, ExpectedPoolEntry> = pool_rows
        .iter()
        .map(|(lsn, kind, amount, user, _)| {
            let kind = ["grant", "draw"]
                .into_iter()
                .find(|known| known == kind)
                .unwrap_or_else(|| panic!("round {round}: a pool entry of no planned kind"));
            (*lsn, (kind, *amount, user.clone()))
        })
        .collect();
    assert_eq!(
        &listed, expected_pool,
        "round {round}: the pool's ledger is not the log's movements of the pool"
    );
    let mut balance = 0i64;
    for (lsn, _, amount, _, after) in &pool_rows {
        assert_eq!(
            balance.checked_add(*amount),
            Some(*after),
            "round {round}: the pool's balance chain breaks at LSN {lsn}"
        );
        balance = *after;
    }
    assert_eq!(
        balance, pool_balance,
        "round {round}: the pool's last balance_after"
    );
    HistoryReport {
        checkpoint,
        oldest_segment,
        caught_up_records,
        entries: rows.len(),
    }
}

/// Point 5 of [`verify_history`]: the usage report by user over the days around now equals the
/// spends among `expected_entries` (debits and captures, whose amounts are negative: the
/// wallet's part), each with the pool's part under the same LSN in `expected_pool`, if any.
fn verify_usage(
    engine: &Engine,
    round: u64,
    expected_entries: &BTreeMap<u64, ExpectedEntry>,
    expected_pool: &BTreeMap<u64, ExpectedPoolEntry>,
) {
    let mut expected: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
    for (lsn, (user, kind, amount)) in expected_entries {
        if matches!(*kind, "debit" | "capture") {
            let from_pool = match expected_pool.get(lsn) {
                Some(("draw", drawn, _)) => -drawn,
                _ => 0,
            };
            let totals = expected.entry(Key::Name(user.clone())).or_default();
            totals.0 += 1;
            totals.1 -= amount;
            totals.1 += from_pool;
        }
    }
    let applied = Arc::new(AtomicU64::new(engine.wal().durable_lsn() + 1));
    let reader = history::reader::Reader::new(&history_path(&engine.options().data_dir), applied);
    let now_hour = engine.now_ms().div_euclid(rollup::HOUR_MS);
    let query = UsageQuery {
        tenant: TENANT,
        currency: "credits",
        window: Window {
            from_hour: now_hour - 24 * 7,
            to_hour: now_hour + 24,
        },
        group_by: UsageGrouping::User,
        user: None,
    };
    let reported: BTreeMap<Key, (i64, i64)> = reader
        .usage(&query)
        .unwrap_or_else(|error| panic!("round {round}: the usage report: {error}"))
        .into_iter()
        .map(|row| (row.key, (row.totals.count, row.totals.credits)))
        .collect();
    assert_eq!(
        reported, expected,
        "round {round}: the usage report by user is not the acknowledged spends"
    );
}

/// A read-only connection to the history, as any SQLite tool would open. The parent keeps one
/// open throughout, which also spares each feeder it closes SQLite's checkpoint on the last close.
fn history_connection(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        history_path(data_dir),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the history read-only")
}

/// Every entry of the history, in LSN order.
fn history_rows(connection: &rusqlite::Connection) -> Vec<HistoryRow> {
    let mut statement = connection
        .prepare_cached(
            "SELECT e.lsn, a.tenant, a.user_id, e.kind, e.amount, e.balance_after
             FROM entries e JOIN accounts a ON a.id = e.account ORDER BY e.lsn",
        )
        .expect("the entries query");
    let rows = statement
        .query_map([], |row| {
            Ok(HistoryRow {
                lsn: u64::try_from(row.get::<_, i64>(0)?).expect("a positive LSN"),
                tenant: row.get(1)?,
                user: row.get(2)?,
                kind: row.get(3)?,
                amount: row.get(4)?,
                balance_after: row.get(5)?,
            })
        })
        .expect("the entries")
        .collect::<Result<Vec<_>, _>>()
        .expect("an entry");
    rows
}

/// Every row of the pools' ledger, in LSN order: (lsn, kind, amount, member, balance after).
fn pool_rows(connection: &rusqlite::Connection) -> Vec<(u64, String, i64, Option<String>, i64)> {
    let mut statement = connection
        .prepare_cached(
            "SELECT lsn, kind, amount, user_id, balance_after FROM pool_entries
             WHERE tenant = ?1 AND pool_id = ?2 ORDER BY lsn",
        )
        .expect("the pool entries query");
    let rows = statement
        .query_map([TENANT, POOL], |row| {
            Ok((
                u64::try_from(row.get::<_, i64>(0)?).expect("a positive LSN"),
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .expect("the pool entries")
        .collect::<Result<Vec<_>, _>>()
        .expect("a pool entry");
    rows
}

/// Creates the tenant and users once, durably, so every round starts from a known population.
fn set_up(dir: &Path) {
    let (engine, _) = open_with_history(options(dir, false)).expect("open");
    let context = Context::actor(ACTOR);
    let (tenant, _, _) = engine
        .upsert_tenant(TENANT, Some("Acme"), None, &context)
        .expect("tenant");
    let profile = ProfileUpdate {
        email: None,
        name: None,
        metadata: None,
    };
    for n in 0..USERS {
        engine
            .upsert_user(&tenant, &user_name(n), profile, &context)
            .expect("user");
    }
    engine
        .put_pool(&tenant, POOL, Some("Acme org"), None, &context)
        .expect("pool");
    for n in 0..MEMBERS {
        let cap = (n < 2).then_some(MEMBER_CAP);
        engine
            .set_pool_member(&tenant, &user_name(n), POOL, cap, &context)
            .expect("member");
    }
    engine.shutdown().expect("shutdown");
}

#[test]
fn killed_at_random_moments_recovers_every_acknowledged_effect_once() {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("kill test seed {seed} (set {SEED_ENV}={seed} to repeat these choices)");
    let mut rng = StdRng::seed_from_u64(seed);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = temp.path().join("data");
    set_up(&dir);
    let history_db = history_connection(&dir);
    let mut model = Model::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let start = match (round % 6, model.max_begun) {
            (_, None) => 0,
            // Now and then a client retries everything it ever sent.
            (5, _) => 0,
            (_, Some(max)) => (max + 1).saturating_sub(rng.random_range(0..=60)),
        };
        let kill = choose_kill(&mut rng, round);
        eprintln!("round {round:2}: start at {start}, kill {kill:?}");
        let run = run_child_round(&dir, start, rng.random(), kill);
        verify_round(
            &dir,
            &mut model,
            &run,
            round,
            rng.random_bool(0.5),
            &history_db,
        );
    }
    eprintln!(
        "{ROUNDS} rounds in {:.1} s: {} acknowledgements, {} keys applied, up to index {:?}, \
         the pool paid {}",
        started.elapsed().as_secs_f64(),
        model.acked_total,
        model.known.len(),
        model.max_begun,
        model.pool_paid
    );
    assert!(
        model.acked_total > 100,
        "the children acknowledged too little for the test to mean much"
    );
    assert!(
        model.pool_paid > 0,
        "the pool never paid for a member: the pool's side went untested"
    );
}

// ---------------------------------------------------------------------------------------------
// A full disk.
// ---------------------------------------------------------------------------------------------

/// Set in the full-disk child's environment: its data directory.
const FULL_DISK_CHILD_ENV: &str = "CREDITD_FULL_DISK_CHILD_DIR";
/// Credits the full-disk child starts with; every debit takes 1.
const FULL_DISK_CREDITS: i64 = 1_000_000;
/// Threads debiting in the full-disk child.
const FULL_DISK_THREADS: usize = 8;

/// The full-disk child's entry point, not a test: it returns at once unless the parent set
/// `CREDITD_FULL_DISK_CHILD_DIR`. It debits 1 credit at a time under keys `t{thread}-{round}-{n}`
/// from [`FULL_DISK_THREADS`] threads, sixteen before waiting, until the log refuses, reporting each outcome (`ACK`, `UNKNOWN` for a record queued
/// when the log failed, `REFUSED` for one refused before it was queued), then `DONE`, and waits
/// to be killed.
#[test]
fn full_disk_child() {
    let Some(dir) = std::env::var_os(FULL_DISK_CHILD_ENV) else {
        return;
    };
    emit("");
    // One segment for the whole volume: the disk fills up inside a batch's write, not when a
    // new segment is created (which fails before anything of the batch is written).
    let options = EngineOptions {
        segment_bytes: 64 * 1024 * 1024,
        ..options(Path::new(&dir), false)
    };
    let engine = Engine::open_dir(options).expect("open");
    let context = Context::actor(ACTOR);
    let (tenant, _, lsn) = engine
        .upsert_tenant(TENANT, None, None, &context)
        .expect("tenant");
    engine.wait_durable(lsn).expect("durable");
    let profile = ProfileUpdate {
        email: None,
        name: None,
        metadata: None,
    };
    let (_, lsn) = engine
        .upsert_user(&tenant, "filler", profile, &context)
        .expect("user");
    engine.wait_durable(lsn).expect("durable");
    let done = engine
        .credit(
            &tenant,
            &CreditRequest::new("filler", FULL_DISK_CREDITS, CreditKind::Grant),
            &context,
        )
        .expect("credit");
    engine.wait_durable(done.lsn).expect("durable");
    emit("READY");
    std::thread::scope(|scope| {
        for thread in 0..FULL_DISK_THREADS {
            let (engine, tenant) = (&engine, &tenant);
            scope.spawn(move || {
                // Sixteen debits sent before waiting for any: batches of many records, so the
                // batch the full disk cuts short holds complete records in its stored part.
                for round in 0.. {
                    let mut sent = Vec::new();
                    let mut refused = false;
                    for n in 0..16 {
                        let key = format!("t{thread}-{round}-{n}");
                        let context = Context::actor(ACTOR).with_key(IdempotencyKey {
                            key: &key,
                            fingerprint: [7; 16],
                        });
                        let request = DebitRequest::new("filler", Spend::Amount(1));
                        match engine.debit(tenant, &request, &context) {
                            Ok(done) => sent.push((key, Ok(done.lsn))),
                            Err(EngineError::Log(_)) => {
                                emit(&format!("REFUSED {key}"));
                                refused = true;
                                break;
                            }
                            Err(error @ EngineError::Durability(_)) => sent.push((key, Err(error))),
                            Err(other) => panic!("{key}: {other:?}"),
                        }
                    }
                    for (key, lsn) in sent {
                        match lsn.map(|lsn| engine.wait_durable(lsn)) {
                            Ok(Ok(())) => emit(&format!("ACK {key}")),
                            _ => emit(&format!("UNKNOWN {key}")),
                        }
                    }
                    if refused {
                        return;
                    }
                }
            });
        }
    });
    let reason = engine.wal().poison_reason().unwrap_or_default();
    emit(&format!("POISONED {reason}"));
    emit("DONE");
    std::thread::sleep(Duration::from_secs(CHILD_MAX_SECONDS));
}

/// Unmounts a test file system when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Mounts a tmpfs of `size` at `dir`; `Err` says why not (not root, no `mount`, not allowed).
fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("cannot run id: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not running as root".into());
    }
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !status.success() {
        return Err(format!("mount -t tmpfs failed ({status})"));
    }
    Ok(Mount(dir.to_path_buf()))
}

/// The 1 MiB volume of the hostile test, filled by keyed debits from a child process until the log
/// fails with `ENOSPC`, then the child is killed (`SIGKILL`), the volume grown (an operator frees
/// space), and the directory recovered. Every acknowledged debit is there, once; none answered
/// "outcome unknown" or "refused" is (the writer cut the failed batch off the log); a retry of those
/// keys executes them afresh, and the balance adds up. Runs only as root (it mounts a tmpfs);
/// elsewhere it says why it did not run.
///
/// Whether the write the full disk cuts short stored a complete record depends on where the
/// page boundary falls, so the scenario runs several times on fresh volumes: before the writer
/// cut failed batches, about half the runs brought back a record its client was told had failed.
#[test]
fn a_full_disk_refuses_writes_and_never_applies_what_it_did_not_acknowledge() {
    for round in 0..FULL_DISK_ROUNDS {
        eprintln!("full disk, round {round}");
        if !fill_a_disk_kill_and_recover() {
            return;
        }
    }
}

/// Volumes filled by [`a_full_disk_refuses_writes_and_never_applies_what_it_did_not_acknowledge`].
const FULL_DISK_ROUNDS: usize = 4;

/// One round of the full-disk scenario; false if it could not run here (and said why).
fn fill_a_disk_kill_and_recover() -> bool {
    let temp = tempfile::tempdir().expect("tempdir");
    let volume = temp.path().join("volume");
    std::fs::create_dir_all(&volume).expect("mount point");
    let mount = match mount_tmpfs(&volume, "1m") {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_refuses_writes…: needs a 1 MiB tmpfs: {why}");
            return false;
        }
    };
    let dir = volume.join("data");
    let stderr = File::create(temp.path().join("child-stderr")).expect("stderr file");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "full_disk_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FULL_DISK_CHILD_ENV, &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn the child");
    let mut guard = ChildGuard(Some(child));
    let stdout = guard.child().stdout.take().expect("child stdout");
    let (mut acked, mut unknown, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    let mut finished = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        match line.split_once(' ') {
            Some(("ACK", key)) => acked.push(key.to_owned()),
            Some(("UNKNOWN", key)) => unknown.push(key.to_owned()),
            Some(("REFUSED", key)) => refused.push(key.to_owned()),
            Some(("POISONED", reason)) => eprintln!("full disk: the log said: {reason}"),
            _ if line == "DONE" => {
                finished = true;
                break;
            }
            _ => {}
        }
    }
    assert!(finished, "the child stopped before the disk was full");
    guard.child().kill().expect("kill the child");
    guard.child().wait().expect("reap the child");
    let status = Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(&volume)
        .status()
        .expect("mount");
    assert!(status.success(), "growing the volume failed");

    let engine = Engine::open_dir(options(&dir, false)).expect("recover after the full disk");
    let tenant = engine.tenant(TENANT).expect("tenant");
    let balance = tenant.wallet("filler", None).expect("wallet").balance;
    eprintln!(
        "full disk: {} acknowledged, {} outcome unknown, {} refused; balance after recovery {balance}",
        acked.len(),
        unknown.len(),
        refused.len()
    );
    assert!(
        acked.len() > 100,
        "the volume held too few debits to mean much"
    );
    assert!(!refused.is_empty(), "the log never refused a write");
    assert_eq!(
        balance,
        FULL_DISK_CREDITS - acked.len() as i64,
        "exactly the acknowledged debits were applied"
    );
    let retry = |key: &str| {
        let context = Context::actor(ACTOR).with_key(IdempotencyKey {
            key,
            fingerprint: [7; 16],
        });
        let request = DebitRequest::new("filler", Spend::Amount(1));
        let done = engine.debit(&tenant, &request, &context).expect("retry");
        engine.wait_durable(done.lsn).expect("durable");
        done.replayed
    };
    for key in &acked {
        assert!(retry(key), "{key}: acknowledged, so its retry is a replay");
    }
    for key in unknown.iter().chain(&refused) {
        assert!(
            !retry(key),
            "{key}: not acknowledged and cut, so its retry executes"
        );
    }
    let after = tenant.wallet("filler", None).expect("wallet").balance;
    assert_eq!(
        after,
        balance - (unknown.len() + refused.len()) as i64,
        "each retried key charged once"
    );
    drop(tenant);
    engine.shutdown().expect("shutdown");
    drop(mount);
    true
}
