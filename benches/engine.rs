//! The engine alone: how many debits (and reservation pairs) per second the in-memory path takes,
//! across 1 M users picked uniformly at random, on one hot wallet, and by catalogue action, with one
//! and with two threads; and, with two threads, debits that a credit pool of 10 k members pays
//! (every member's wallet empty: each debit takes the user's lock, then the pool's) against plain
//! debits over 10 k funded users.
//!
//! "Alone" means without waiting for durability, but not without the log: every operation still
//! encodes its event and pushes it onto the log's queue, and the log's writer thread still takes
//! every batch and writes it to a real file with a real `write` call. The main set leaves out only
//! the `fdatasync` (`fsync = "never"`), with the data directory on tmpfs (`/dev/shm`, or
//! `$CREDITD_BENCH_TMPFS_DIR`) so that page-cache writeback to a disk neither throttles the writer
//! nor steals CPU that the engine does not itself cause. The writer thread is a third runnable
//! thread on this 2-core machine, competing with the bench threads as it would in production. We
//! chose this over an in-memory storage (whose `Vec` growth under a global mutex costs differently
//! from a `write` call) and over a discarding storage (which would hide the writer's copy).
//!
//! Never syncing has a cost of its own, though: the writer is idle again microseconds after each
//! `write`, so batches are tiny (≈ 10 records) and producers pay a futex wake for every few
//! records. So the uniform debit is measured a second time with the production setting,
//! `fsync = "always"` on the real disk (`<package>/target/bench-data` or `$CREDITD_BENCH_DIR`),
//! where each `fdatasync` lets thousands of records gather. Nobody waits for durability there
//! either; if the disk cannot keep up, the queue fills and the bench waits (the backpressure count
//! printed at the end says whether it did).
//!
//! Background snapshot and maintenance threads are off: the cost of a snapshot to debits is
//! measured by `benches/durability.rs`.
//!
//! Each measured routine runs its iterations split evenly over 1 or 2 freshly spawned threads and
//! reports the wall time of the whole, so the throughput is the total for the process. Flat
//! sampling keeps every sample long (tens of milliseconds) so the thread spawns are noise.
//!
//! Run: `CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench engine -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};

use creditd::engine::types::CreditKind;
use creditd::engine::{
    CaptureRequest, DebitRequest, Engine, PoolCreditRequest, ReserveRequest, Spend, Tenant,
};
use creditd::wal::FsyncMode;

#[allow(dead_code)]
mod common;

use common::{Random, UserId, BENCH};

/// Users set up once, before anything is measured.
const USERS: u64 = 1_000_000;
/// Members of the credit pool of `debit_pool_10k_members`, and the funded users of its plain
/// counterpart.
const POOL_MEMBERS: u64 = 10_000;
/// The catalogue action debited by `debit_action`.
const ACTION: &str = "gpt-4o-mini.tokens-1k";

/// Per bench: process CPU nanoseconds per operation (see [`Fixture::cpu_figure`]).
static CPU_FIGURES: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

struct Fixture {
    engine: Arc<Engine>,
    tenant: Arc<Tenant>,
    wal_dir: PathBuf,
    /// Distinct seeds for every thread of every sample, so no two runs replay the same users.
    seeds: AtomicU64,
    /// Operations run and process CPU seconds used by them since the last [`Fixture::cpu_figure`].
    cpu: Mutex<(u64, f64)>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(parent: &Path, fsync: FsyncMode) -> Fixture {
        let dir = common::bench_dir(parent, "creditd-engine-bench-");
        let options = common::engine_options(dir.path(), fsync);
        let wal_dir = options.wal_dir();
        let (engine, tenant) = common::open_engine(options);
        let seconds = common::add_users(&engine, &tenant, USERS, false, common::STARTING_CREDITS);
        retry_put_action(&engine, &tenant);
        eprintln!(
            "set-up: {USERS} users created and credited in {seconds:.2} s; data directory {} ({}), fsync {fsync:?}",
            dir.path().display(),
            common::file_system(dir.path())
        );
        common::trim_segments(&wal_dir);
        Fixture {
            engine,
            tenant,
            wal_dir,
            seeds: AtomicU64::new(1),
            cpu: Mutex::new((0, 0.0)),
            _dir: dir,
        }
    }

    /// Records the process CPU time per operation of the bench just run (every thread, the log
    /// writer included), for the table printed at the end: on a machine shared with other work,
    /// CPU per operation varies far less than wall-clock throughput.
    fn cpu_figure(&self, bench: String) {
        let (operations, seconds) = std::mem::take(&mut *self.cpu.lock().expect("cpu figures"));
        CPU_FIGURES
            .lock()
            .expect("cpu table")
            .push((bench, seconds * 1e9 / operations.max(1) as f64));
    }

    fn report(&self) {
        let stats = self.engine.wal().stats();
        eprintln!(
            "log writer: {} records in {} batches ({:.0} records per batch)",
            stats.records,
            stats.batches,
            stats.records as f64 / stats.batches.max(1) as f64,
        );
    }

    /// Runs `operation(random)` `iterations` times in all, split over `threads` threads; returns
    /// the wall time. Rotated log segments are removed afterwards, outside the measurement.
    fn run(
        &self,
        threads: u64,
        iterations: u64,
        operation: impl Fn(&mut Random) + Sync,
    ) -> Duration {
        let seeds: Vec<u64> = (0..threads)
            .map(|_| self.seeds.fetch_add(1, Ordering::Relaxed))
            .collect();
        let operation = &operation;
        let cpu_before = common::process_cpu_seconds();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for (index, seed) in seeds.into_iter().enumerate() {
                let share = iterations / threads + u64::from((index as u64) < iterations % threads);
                scope.spawn(move || {
                    let mut random = Random::new(seed);
                    for _ in 0..share {
                        operation(&mut random);
                    }
                });
            }
        });
        let elapsed = started.elapsed();
        let cpu_seconds = common::process_cpu_seconds() - cpu_before;
        {
            let mut cpu = self.cpu.lock().expect("cpu figures");
            cpu.0 += iterations;
            cpu.1 += cpu_seconds;
        }
        common::trim_segments(&self.wal_dir);
        elapsed
    }

    fn debit(&self, user: &str, spend: Spend<'_>) {
        let request = DebitRequest::new(user, spend);
        black_box(common::retry(|| {
            self.engine.debit(&self.tenant, &request, &BENCH)
        }));
    }

    fn reserve_and_capture(&self, user: &str) {
        let reserve = ReserveRequest::new(user, Spend::Amount(1));
        let placed = common::retry(|| self.engine.reserve(&self.tenant, &reserve, &BENCH));
        let capture = CaptureRequest {
            reservation_id: placed.lsn,
            amount: None,
            description: None,
            metadata: None,
        };
        black_box(common::retry(|| {
            self.engine.capture(&self.tenant, &capture, &BENCH)
        }));
    }
}

fn retry_put_action(engine: &Engine, tenant: &Tenant) {
    common::retry(|| engine.put_action(tenant, ACTION, 3, None, None, &BENCH));
    engine.wal().flush().expect("flush the log");
}

fn threads_label(threads: u64) -> String {
    if threads == 1 {
        "1_thread".into()
    } else {
        format!("{threads}_threads")
    }
}

fn bench_uniform_debits(group: &mut Group<'_>, fixture: &Fixture, name: &str) {
    for threads in [1, 2] {
        let bench = format!("{name}/{}", threads_label(threads));
        group.bench_function(&bench, |b| {
            b.iter_custom(|iterations| {
                fixture.run(threads, iterations, |random| {
                    let user = UserId::new(random.below(USERS));
                    fixture.debit(user.as_str(), Spend::Amount(1));
                })
            })
        });
        fixture.cpu_figure(bench);
    }
}

fn bench_others(group: &mut Group<'_>, fixture: &Fixture) {
    for threads in [1, 2] {
        let bench = format!("debit_one_hot_wallet/{}", threads_label(threads));
        let hot = UserId::new(0);
        group.bench_function(&bench, |b| {
            b.iter_custom(|iterations| {
                fixture.run(threads, iterations, |_| {
                    fixture.debit(hot.as_str(), Spend::Amount(1));
                })
            })
        });
        fixture.cpu_figure(bench);
    }
    for threads in [1, 2] {
        let bench = format!("debit_action_1M_users/{}", threads_label(threads));
        group.bench_function(&bench, |b| {
            b.iter_custom(|iterations| {
                fixture.run(threads, iterations, |random| {
                    let user = UserId::new(random.below(USERS));
                    let spend = Spend::Action {
                        name: ACTION,
                        quantity: 2,
                    };
                    fixture.debit(user.as_str(), spend);
                })
            })
        });
        fixture.cpu_figure(bench);
    }
    // One element is one pair: a reservation and its capture, two log records.
    for threads in [1, 2] {
        let bench = format!("reserve_capture_pair_1M_users/{}", threads_label(threads));
        group.bench_function(&bench, |b| {
            b.iter_custom(|iterations| {
                fixture.run(threads, iterations, |random| {
                    let user = UserId::new(random.below(USERS));
                    fixture.reserve_and_capture(user.as_str());
                })
            })
        });
        fixture.cpu_figure(bench);
    }
}

/// A tenant whose [`POOL_MEMBERS`] users have empty wallets and draw on one pool with far more
/// than a run spends.
fn pool_tenant(engine: &Engine) -> Arc<Tenant> {
    let (tenant, _, _) = common::retry(|| engine.upsert_tenant("pooled", None, None, &BENCH));
    common::add_users(engine, &tenant, POOL_MEMBERS, false, 0);
    common::retry(|| engine.put_pool(&tenant, "org", None, None, &BENCH));
    let funds = PoolCreditRequest {
        pool: "org",
        amount: 1_000_000_000_000_000,
        kind: CreditKind::Grant,
        reason: Some("bench"),
        reference: None,
    };
    common::retry(|| engine.credit_pool(&tenant, &funds, &BENCH));
    for index in 0..POOL_MEMBERS {
        let user = UserId::new(index);
        common::retry(|| engine.set_pool_member(&tenant, user.as_str(), "org", None, &BENCH));
    }
    engine.wal().flush().expect("flush the log");
    tenant
}

/// Debits of 10 k members that one pool pays, against plain debits of 10 k funded users; two
/// threads each.
fn bench_pool(group: &mut Group<'_>, fixture: &Fixture) {
    let pooled = pool_tenant(&fixture.engine);
    let threads = 2;
    let bench = format!("debit_plain_10k_users/{}", threads_label(threads));
    group.bench_function(&bench, |b| {
        b.iter_custom(|iterations| {
            fixture.run(threads, iterations, |random| {
                let user = UserId::new(random.below(POOL_MEMBERS));
                fixture.debit(user.as_str(), Spend::Amount(1));
            })
        })
    });
    fixture.cpu_figure(bench);
    let bench = format!("debit_pool_10k_members/{}", threads_label(threads));
    group.bench_function(&bench, |b| {
        b.iter_custom(|iterations| {
            fixture.run(threads, iterations, |random| {
                let user = UserId::new(random.below(POOL_MEMBERS));
                let request = DebitRequest::new(user.as_str(), Spend::Amount(1));
                black_box(common::retry(|| {
                    fixture.engine.debit(&pooled, &request, &BENCH)
                }));
            })
        })
    });
    fixture.cpu_figure(bench);
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn main() {
    eprintln!("machine: {}", common::machine());
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("engine");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(30);
    group.throughput(Throughput::Elements(1));

    let fixture = Fixture::new(&common::tmpfs_parent(), FsyncMode::Never);
    bench_uniform_debits(&mut group, &fixture, "debit_uniform_1M_users");
    bench_others(&mut group, &fixture);
    bench_pool(&mut group, &fixture);
    fixture.report();
    drop(fixture);

    let fixture = Fixture::new(&common::disk_parent(), FsyncMode::Always);
    bench_uniform_debits(
        &mut group,
        &fixture,
        "debit_uniform_1M_users_disk_fsync_always",
    );
    fixture.report();
    drop(fixture);

    group.finish();
    eprintln!("\nprocess CPU per operation (all threads, log writer included; warm-up included):");
    for (bench, nanos) in CPU_FIGURES.lock().expect("cpu table").iter() {
        eprintln!(
            "  {bench:<58} {nanos:>8.0} ns  (≈ {:.2} M/s if 2 cores were free)",
            2e3 / nanos
        );
    }
    eprintln!(
        "backpressure waits: {}; load average after: {}",
        common::BACKPRESSURE_RETRIES.load(Ordering::Relaxed),
        common::load()
    );
    criterion.final_summary();
}
