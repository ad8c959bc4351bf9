//! The feeder's thread: it follows the log beside the writer and keeps the history up to date,
//! moving its retention hold on the log as its commits become durable.
//!
//! It never takes an engine lock: it reads the durable watermark (an atomic) and the segment
//! files. When it is caught up it pauses up to a second, so that a step carries many records, or
//! until a reader asks for what it has not applied yet ([`Nudge`]); a step that fails (a database
//! error, damage in the log) is retried after a pause and counted, and the hold stays where the
//! history stands, so nothing it still needs is removed meanwhile.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{FeedError, Feeder, RETENTION_HOLD};
use crate::engine::Engine;
use crate::metrics::names;
use crate::wal::follow::FollowError;

/// Records applied per transaction when the history is caught up (whole batches, so perhaps a
/// few more): a step commits (one sync) every [`IDLE`] or every this many records.
///
/// Above what a second brings at saturation on a small machine (about 50 000 debits), so that a
/// busy server commits about once a second rather than every 20 000 records: with 1 M users
/// debited uniformly, whose heads and rollup rows make nearly every page a step touches a page
/// of its own, 20 000 cost the feeder 5.6-6.2 µs of CPU per debit against 4.7-5.0 µs for this
/// (alternating 20 s runs at 64 connections, 2026-12-03), and the server answered 44-47 k
/// against 50-52 k debits/s. A read that asks for what the feeder has not applied waits for
/// all of it either way.
pub const STEP_RECORDS: u64 = 100_000;
/// Records per transaction at most when the history lags.
pub const MAX_STEP_RECORDS: u64 = 320_000;

/// The size of the step after one of `records` that applied `applied`: a full step means the
/// history lags, and the next one is twice as large, up to [`MAX_STEP_RECORDS`]; any other goes
/// back to [`STEP_RECORDS`]. Larger steps catch up for less: a counter row, an index page or a
/// page of the write-ahead file touched by many records of a step is written once per step, and
/// a commit's sync and checkpoint are paid once (one user's hour row of an action, in particular,
/// is one UPSERT per step however often the step charges it). The price is a longer transaction
/// (readers are not blocked: the database is in WAL mode) and a write-ahead file that grows to
/// the largest step's pages.
pub fn next_step_records(records: u64, applied: u64) -> u64 {
    if applied >= records {
        records.saturating_mul(2).min(MAX_STEP_RECORDS)
    } else {
        STEP_RECORDS
    }
}
/// The pause when caught up, unless a reader asks for what it has not applied ([`Nudge`]).
///
/// Long, so that a step carries many records: a step's cost is mostly pages that many records
/// share (each account's head, each user's rollup rows, the write-ahead frames and the
/// checkpoint), written once per commit however many records touch them. At 8 400 operations/s
/// over 100 000 users, steps every 100 ms cost the thread 14.6-16.1 µs of CPU per operation and
/// wrote about 3.4 KB to the disk per operation. Readers do not wait for it: a history read nudges
/// the thread when the history is behind what was durable when the read came.
const IDLE: Duration = Duration::from_secs(1);
/// The pause after a failed step.
const RETRY: Duration = Duration::from_secs(1);
/// How often the history looks for entries older than its retention.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// The running feeder thread.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    applied: Arc<AtomicU64>,
    nudge: Arc<Nudge>,
    thread: JoinHandle<Feeder>,
}

/// Ends the feeder's idle pause early: a reader that needs records the history has not applied
/// yet (read your writes) asks for a step now rather than at the end of the pause. It also
/// decides the feeder thread's scheduling policy.
///
/// **Idle unless asked.** A caught-up feeder rests at the `SCHED_IDLE` policy: from then on it
/// runs only on a core nothing else wants, and a request's thread that wakes takes the core from
/// it at once. Before, it ran at nice 10, where the scheduler gave it about a tenth of a request
/// thread's share under saturation but also let it finish its slice before a request's thread
/// that woke took the core (the pauses of [`super::YIELD_EVERY_RECORDS`] bounded that wait).
/// With batches of 100 on 8 connections, client on the same two cores, where the feeder is half
/// of the server's CPU and the core thread waits on a chain of hand-offs (the client's request,
/// its own sync, the answer), the idle policy served more batches per second
/// (`docs/design.md`, "Beside debits, not in their way"). Under saturation it then gets almost
/// nothing and lags further (the log keeps what it has not applied, behind its retention hold).
/// A reader that must see what it lags behind raises it back to nice 10 with its wake, from the
/// reader's thread (one system call, only when the feeder was resting), so a listing after one's
/// own write is not left to the idle time of a saturated machine; it rests again at its next
/// pause, caught up.
///
/// **Lock-free for the reader.** The reader runs on a request's thread, and a thread that only
/// runs when a core is idle must never hold a lock a request's thread waits for. The reader sets
/// a flag and unparks the feeder's thread; the pause parks until the flag is set or its time is
/// up. A wake before the first pause is kept in the flag.
#[derive(Debug, Default)]
pub struct Nudge {
    wanted: AtomicBool,
    feeder: OnceLock<std::thread::Thread>,
    /// The feeder thread's kernel id while it rests at `SCHED_IDLE`; 0 otherwise.
    resting: AtomicI32,
}

impl Nudge {
    /// Asks the feeder for a step now: a swap and, unless a step was asked already, an unpark,
    /// and a system call if the feeder was resting.
    pub fn wake(&self) {
        if !self.wanted.swap(true, Ordering::AcqRel) {
            if let Some(feeder) = self.feeder.get() {
                feeder.unpark();
            }
            self.raise();
        }
    }

    /// Pauses the calling thread (the feeder's) up to `idle`, less if woken (or if asked since
    /// the last pause). It rests at `SCHED_IDLE` from here on until a reader raises it.
    fn pause(&self, idle: Duration) {
        // The first thread to pause is the one a wake unparks: the feeder's, the only one that
        // pauses outside tests.
        self.feeder.get_or_init(std::thread::current);
        self.rest();
        let until = Instant::now() + idle;
        // An unpark left from a wake that found the flag already cleared makes one park return
        // early: the loop parks again for what is left.
        while !self.wanted.swap(false, Ordering::AcqRel) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::park_timeout(left);
        }
    }

    /// Moves the calling thread to `SCHED_IDLE` unless it rests there already.
    fn rest(&self) {
        if self.resting.load(Ordering::Acquire) != 0 {
            return;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads the parameter, which lives across the call; on Linux,
        // pid 0 names the calling thread. A failure leaves the policy as it was (nice 10).
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "history: SCHED_IDLE refused; the feeder stays at nice 10");
            return;
        }
        // SAFETY: gettid has no arguments and no memory effects.
        let tid = unsafe { libc::gettid() };
        self.resting.store(tid, Ordering::Release);
        // A wake between the policy change and the store saw no resting thread and raised
        // nothing: raise it here, unless a wake after the store did.
        if self.wanted.load(Ordering::Acquire) {
            self.raise();
        }
    }

    /// Moves a resting feeder back to `SCHED_OTHER`, at the nice value it set (10).
    fn raise(&self) {
        let tid = self.resting.swap(0, Ordering::AcqRel);
        if tid == 0 {
            return;
        }
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: as in `rest`. `tid` names the feeder's thread: it clears `resting` before it
        // ends, so an id is taken from there only while the thread runs; a wake that took it just
        // before reaches a thread that is ending, whose id the kernel hands out again only once
        // its ids wrap around. The call changes a policy, nothing in this process's memory.
        if unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "history: the feeder could not be raised");
        }
    }
}

/// Starts the thread feeding `feeder` from `engine`'s log, removing what is older than
/// `retention` (if any) as it goes.
pub fn spawn(
    feeder: Feeder,
    engine: Arc<Engine>,
    retention: Option<Duration>,
) -> std::io::Result<Worker> {
    engine.retention().hold(RETENTION_HOLD, feeder.next_lsn());
    let stop = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicU64::new(feeder.next_lsn()));
    let nudge = Arc::new(Nudge::default());
    let (stopping, publish, nudged) = (Arc::clone(&stop), Arc::clone(&applied), Arc::clone(&nudge));
    let thread = std::thread::Builder::new()
        .name("creditd-history".into())
        .spawn(move || {
            lower_priority();
            let mut purge = retention.map(Purge::new);
            let signals = Signals {
                stop: &stopping,
                published: &publish,
                nudge: &nudged,
            };
            let feeder = run(feeder, &engine, purge.as_mut(), &signals);
            // Nobody raises a thread that is gone (its id could name another one).
            nudged.resting.store(0, Ordering::Release);
            feeder
        })?;
    Ok(Worker {
        stop,
        applied,
        nudge,
        thread,
    })
}

/// What the feeder's thread shares with the rest of the server.
#[derive(Clone, Copy)]
struct Signals<'a> {
    /// Set to stop once caught up.
    stop: &'a AtomicBool,
    /// The first LSN not applied, as readers see it.
    published: &'a AtomicU64,
    /// Readers asking for a step now.
    nudge: &'a Nudge,
}

impl Worker {
    /// The first LSN the history has not applied yet, as the thread publishes it.
    pub fn applied(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.applied)
    }

    /// What readers wake the thread with (see [`Nudge`]).
    pub fn nudge(&self) -> Arc<Nudge> {
        Arc::clone(&self.nudge)
    }

    /// Stops the thread after it has applied what the log holds now, and hands the feeder back.
    pub fn stop(self) -> Option<Feeder> {
        self.stop.store(true, Ordering::Release);
        self.nudge.wake();
        self.thread.join().ok()
    }
}

fn run(
    mut feeder: Feeder,
    engine: &Engine,
    mut purge: Option<&mut Purge>,
    signals: &Signals<'_>,
) -> Feeder {
    let Signals {
        stop,
        published,
        nudge,
    } = *signals;
    let lag = metrics::gauge!(names::HISTORY_LAG_RECORDS);
    let errors = metrics::counter!(names::HISTORY_ERRORS_TOTAL);
    let lookups_from = |from: &'static str| metrics::counter!(names::HISTORY_ACCOUNT_LOOKUPS_TOTAL, "from" => from);
    let (from_memory, from_database) = (lookups_from("memory"), lookups_from("database"));
    let remembered = metrics::gauge!(names::HISTORY_ACCOUNTS_REMEMBERED);
    let mut records = STEP_RECORDS;
    loop {
        // Read before the flag: a stop catches up with everything durable when it was asked.
        let stopping = stop.load(Ordering::Acquire);
        let durable = engine.wal().durable_lsn();
        match step(&mut feeder, engine, durable, records) {
            Ok(applied) => {
                let full = applied >= records;
                records = next_step_records(records, applied);
                engine.retention().hold(RETENTION_HOLD, feeder.next_lsn());
                published.store(feeder.next_lsn(), Ordering::Release);
                lag.set(durable.saturating_sub(feeder.next_lsn() - 1) as f64);
                let (lookups, accounts) = feeder.take_account_lookups();
                from_memory.increment(lookups.memory);
                from_database.increment(lookups.database);
                remembered.set(accounts as f64);
                if let Some(purge) = purge.as_deref_mut() {
                    purge.step(&mut feeder, engine.now_ms());
                }
                if !full {
                    if stopping {
                        return feeder;
                    }
                    // Caught up: let records gather, so that a commit (and its sync) carries
                    // many, unless a reader wants them now.
                    nudge.pause(IDLE);
                }
            }
            Err(error) => {
                errors.increment(1);
                tracing::error!(%error, next_lsn = feeder.next_lsn(), "history: a step failed; retrying");
                if stopping {
                    return feeder;
                }
                records = STEP_RECORDS;
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// One step. A history whose next record the log no longer holds goes on where the log starts:
/// a fresh history on an old data directory, or one that was turned off (`history.enabled =
/// false`, so no hold kept the log) while snapshots pruned past it. Waiting would not bring the
/// records back, and its hold would keep the log from ever being pruned again.
fn step(
    feeder: &mut Feeder,
    engine: &Engine,
    durable: u64,
    records: u64,
) -> Result<u64, FeedError> {
    let storage = &**engine.storage();
    match feeder.step(storage, durable, records) {
        Err(FeedError::Log(FollowError::Missing { next_lsn, oldest })) => {
            if feeder.is_fresh()? {
                tracing::warn!(
                    first_lsn = oldest,
                    "history: the log before LSN {oldest} was removed before the history \
                     existed; the history starts there"
                );
            } else {
                tracing::warn!(
                    next_lsn,
                    first_lsn = oldest,
                    "history: the log from LSN {next_lsn} to {} was removed while the history did \
                     not follow it (was history.enabled false?); the history has no entries for \
                     those records and goes on from LSN {oldest}",
                    oldest - 1
                );
            }
            feeder.start_at(oldest)?;
            feeder.step(storage, durable, records)
        }
        result => result,
    }
}

/// How much lower than the request path's the feeder thread's scheduling priority is (a nice
/// value) when it is not resting at `SCHED_IDLE` (see [`Nudge`]): catching up at a reader's
/// request, or where the scheduler refuses the idle policy.
const NICENESS: i32 = 10;

/// Lowers this thread's scheduling priority by [`NICENESS`]; its pauses then rest it at
/// `SCHED_IDLE` ([`Nudge::pause`]).
fn lower_priority() {
    // SAFETY: setpriority has no memory effects; on Linux, PRIO_PROCESS with who = 0 names the
    // calling thread. A failure (a seccomp filter, another OS) leaves the priority as it was.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS) };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "history: priority unchanged");
    }
}

/// The retention's schedule: a purge is due every [`PURGE_EVERY`], and goes on, a transaction
/// between two feeding steps, until a transaction removes nothing.
struct Purge {
    retention_ms: i64,
    /// When the last purge ended (ms); none before the first.
    ended_ms: Option<i64>,
    /// A purge is under way.
    running: bool,
}

impl Purge {
    fn new(retention: Duration) -> Purge {
        Purge {
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
            ended_ms: None,
            running: false,
        }
    }

    /// Runs one purge transaction if a purge is due or under way.
    fn step(&mut self, feeder: &mut Feeder, now_ms: i64) {
        let due = self
            .ended_ms
            .is_none_or(|ended| now_ms.saturating_sub(ended) >= PURGE_EVERY.as_millis() as i64);
        if !(self.running || due) {
            return;
        }
        let cutoff_ms = now_ms.saturating_sub(self.retention_ms);
        // Payments are purged by the first transaction of each purge: one scan of their table.
        let first = !self.running;
        match feeder.purge(cutoff_ms, super::retention::PURGE_ROWS, first) {
            Ok(purged) => {
                metrics::counter!(names::HISTORY_PURGED_ENTRIES_TOTAL).increment(purged.entries);
                self.running = purged.entries > 0;
                if !self.running {
                    self.ended_ms = Some(now_ms);
                }
            }
            Err(error) => {
                metrics::counter!(names::HISTORY_ERRORS_TOTAL).increment(1);
                tracing::error!(%error, "history: a purge failed; trying again later");
                self.running = false;
                self.ended_ms = Some(now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::entry::test_debit;
    use crate::history::Store;

    const DAY_MS: i64 = 86_400_000;

    /// Writes one debit of `user` at `lsn`, at `time_ms`, through a connection of its own.
    fn write(path: &std::path::Path, user: &str, lsn: u64, time_ms: i64) {
        let mut store = Store::open(path).unwrap();
        let mut feed = store.begin().unwrap();
        feed.insert(&test_debit(user, lsn, time_ms)).unwrap();
        feed.commit(lsn + 1).unwrap();
    }

    fn count(feeder: &Feeder) -> u64 {
        feeder.store().count().unwrap()
    }

    #[test]
    fn a_purge_runs_at_once_then_every_ten_minutes_until_nothing_is_older_than_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::history::FILE_NAME);
        let now = 100 * DAY_MS;
        let minute = 60_000;
        write(&path, "ada", 1, now - 3 * DAY_MS);
        write(&path, "bob", 2, now - 2 * DAY_MS);
        write(&path, "ada", 3, now - DAY_MS + 5 * minute);
        write(&path, "ada", 4, now - DAY_MS / 2);
        // The clock stepped back: stamped before the entries ahead of it in the log.
        write(&path, "cy", 5, now - 2 * DAY_MS);
        let mut feeder = Feeder::open(&path, dir.path(), 5, 1 << 20).unwrap();
        let mut purge = Purge::new(Duration::from_secs(86_400));

        // Due at once: the two entries older than a day go; a second transaction finds none left
        // and ends the purge.
        purge.step(&mut feeder, now);
        assert_eq!(count(&feeder), 3);
        assert!(purge.running, "a transaction that removed entries goes on");
        purge.step(&mut feeder, now + 1);
        assert!(!purge.running);
        assert_eq!(purge.ended_ms, Some(now + 1));

        // An entry that is older than the retention by now waits for the next purge.
        purge.step(&mut feeder, now + minute);
        assert_eq!(count(&feeder), 3, "not due one minute after the last purge");
        purge.step(&mut feeder, now + 1 + PURGE_EVERY.as_millis() as i64);
        assert_eq!(count(&feeder), 2, "due ten minutes after it");
        // The entry of half a day ago is kept until it is older than a day, and so is the one
        // behind it in the log, older though it is: a purge never leaves a hole in the log.
        let hour = 60 * minute;
        purge.step(&mut feeder, now + DAY_MS / 2 - hour);
        purge.step(&mut feeder, now + DAY_MS / 2 - hour + 1);
        assert_eq!(count(&feeder), 2, "kept while younger than the retention");
        purge.step(&mut feeder, now + DAY_MS / 2 + hour);
        assert_eq!(count(&feeder), 0);
    }

    /// The feeder pauses a second when caught up; a reader's nudge ends the pause, and one that
    /// came during a step ends the next pause before it starts.
    #[test]
    fn a_nudge_ends_the_feeders_pause() {
        let nudge = Arc::new(Nudge::default());
        let long = Duration::from_secs(30);
        let paused = {
            let nudge = Arc::clone(&nudge);
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                nudge.pause(long);
                started.elapsed()
            })
        };
        // Until the thread is waiting, a wake is kept for its pause: either way it ends.
        std::thread::sleep(Duration::from_millis(20));
        nudge.wake();
        assert!(paused.join().unwrap() < long, "the pause ran its course");
        // Woken before the pause: it does not wait at all, and the wake is spent.
        nudge.wake();
        let started = std::time::Instant::now();
        nudge.pause(long);
        assert!(started.elapsed() < long);
        assert!(!nudge.wanted.load(Ordering::Acquire), "the wake was spent");
    }

    /// A pause rests the feeder's thread at `SCHED_IDLE` (only it: the threads around it keep
    /// their policy); a reader's wake raises it back to nice 10 for the steps it asked for, and
    /// the next pause rests it again.
    #[test]
    fn the_feeder_rests_at_the_idle_policy_until_a_reader_raises_it() {
        // SAFETY: sched_getscheduler and getpriority only read the calling thread's settings.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = policy();
        assert_ne!(before, libc::SCHED_IDLE);
        let nudge = Arc::new(Nudge::default());
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let feeder = {
            let nudge = Arc::clone(&nudge);
            std::thread::spawn(move || {
                lower_priority();
                nudge.pause(Duration::from_millis(1));
                seen_tx.send(("rested", policy(), nice())).unwrap();
                go_rx.recv().unwrap();
                // Woken by the reader's wake, which raised it.
                nudge.pause(Duration::from_secs(30));
                seen_tx.send(("raised", policy(), nice())).unwrap();
                nudge.pause(Duration::from_millis(1));
                seen_tx.send(("rested again", policy(), nice())).unwrap();
            })
        };
        let wait = |expected: &str| {
            let (what, policy, nice) = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(what, expected);
            (policy, nice)
        };
        assert_eq!(wait("rested"), (libc::SCHED_IDLE, NICENESS));
        go_tx.send(()).unwrap();
        while nudge.resting.load(Ordering::Acquire) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20));
        nudge.wake();
        assert_eq!(wait("raised"), (libc::SCHED_OTHER, NICENESS));
        assert_eq!(wait("rested again"), (libc::SCHED_IDLE, NICENESS));
        feeder.join().unwrap();
        assert_eq!(policy(), before, "the caller's policy is its own");
    }

    /// A wake from another thread ends a pause under way at once, however many wakes and
    /// pauses came before: none is lost to an unpark spent early.
    #[test]
    fn every_wake_ends_the_pause_it_finds() {
        let nudge = Arc::new(Nudge::default());
        let long = Duration::from_secs(30);
        let (paused_tx, paused_rx) = std::sync::mpsc::channel();
        let feeder = {
            let nudge = Arc::clone(&nudge);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let started = Instant::now();
                    nudge.pause(long);
                    paused_tx.send(started.elapsed()).unwrap();
                }
            })
        };
        for round in 0..200 {
            if round % 2 == 0 {
                // Now and then the wake comes before the pause begins.
                std::thread::yield_now();
            }
            nudge.wake();
            let waited = paused_rx.recv_timeout(long).expect("the pause ended");
            assert!(waited < long / 2, "round {round}: the pause ran {waited:?}");
        }
        feeder.join().unwrap();
    }

    #[test]
    fn steps_double_while_full_and_start_over_when_caught_up() {
        let mut records = STEP_RECORDS;
        let mut sizes = vec![records];
        for _ in 0..6 {
            records = next_step_records(records, records);
            sizes.push(records);
        }
        assert_eq!(
            sizes,
            [100_000, 200_000, 320_000, 320_000, 320_000, 320_000, 320_000]
        );
        // Whole batches may take a step a little past its size: still full.
        assert_eq!(next_step_records(40_000, 40_007), 80_000);
        assert_eq!(next_step_records(320_000, 319_999), STEP_RECORDS);
        assert_eq!(next_step_records(STEP_RECORDS, 0), STEP_RECORDS);
    }
}
