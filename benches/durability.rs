//! Durability figures that criterion is not suited to: recovery speed, snapshot time and size,
//! how long a debit can stall while a snapshot runs, and resident memory per wallet. Prints one
//! table; every figure is measured once per run (run it twice to see the noise).
//!
//! 1. Recovery: a log of 1 M user creations, 1 M credits and 3 M debits (5 M records) is written
//!    with `fsync = "never"`, then `Engine::open` replays it (log only), first with the segments in
//!    the page cache, then after dropping them from it (`dd iflag=nocache`), so the second figure
//!    includes reading from the disk. Later, a snapshot plus a tail of 1 M debits is recovered.
//! 2. Snapshots of the same 1 M wallets: time (copy, write, fsync, rename) and file size.
//! 3. Debit stalls: one thread debits random users in a tight loop and times every call, (a) alone,
//!    (b) beside one and then two threads that only spin (the cost of sharing 2 cores, without any
//!    lock; a snapshot runs two threads, the copy and the file writer), and (c) while another
//!    thread takes snapshots back to back. The difference between (b) and (c) is what the
//!    snapshot's locks cost. Each phase also counts how often the debit thread blocked (slept on
//!    a lock) and how often it was preempted, from `/proc/thread-self/status`.
//! 4. Resident memory per wallet: a child process measures its RSS before and after creating 1 M
//!    users (default 512 shards), without and with an e-mail address in the profile. A child, so
//!    that memory freed by earlier steps cannot be reused and hide growth.
//!
//! The data directory is `<package>/target/bench-data` (a real disk) unless `$CREDITD_BENCH_DIR`
//! says otherwise.
//!
//! Run: `CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench durability`. Started without
//! `--bench` (as `cargo test --benches` does), it does a quick smoke run with 10 000 users.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd::engine::{DebitRequest, Engine, EngineOptions, Spend, Tenant};
use creditd::wal::FsyncMode;

#[allow(dead_code)]
mod common;

use common::{Random, UserId, BENCH};

/// How much work each step does.
struct Sizes {
    users: u64,
    debits: u64,
    tail_debits: u64,
    snapshots_timed: usize,
    stall_phase: Duration,
}

/// The real run (`cargo bench`).
static FULL: Sizes = Sizes {
    users: 1_000_000,
    debits: 3_000_000,
    tail_debits: 1_000_000,
    snapshots_timed: 3,
    stall_phase: Duration::from_secs(3),
};

/// A smoke run, when the program is started without `--bench` (as `cargo test --benches` does):
/// every step once, small, so that the bench is known to work without taking minutes.
static SMOKE: Sizes = Sizes {
    users: 10_000,
    debits: 30_000,
    tail_debits: 10_000,
    snapshots_timed: 1,
    stall_phase: Duration::from_millis(200),
};

static SIZES: std::sync::OnceLock<&'static Sizes> = std::sync::OnceLock::new();

fn sizes() -> &'static Sizes {
    SIZES.get_or_init(|| &FULL)
}

fn count_label(count: u64) -> String {
    let millions = count / 1_000_000;
    if millions > 0 && millions * 1_000_000 == count {
        format!("{millions} M")
    } else {
        count.to_string()
    }
}
/// Latencies recorded per stall phase at most (a phase stops recording beyond this).
const LATENCY_SLOTS: usize = 40_000_000;
const RSS_CHILD: &str = "--rss-child";

/// One line of the final table.
struct Figure {
    what: String,
    value: String,
    target: &'static str,
}

#[derive(Default)]
struct Table(Vec<Figure>);

impl Table {
    fn add(&mut self, what: impl Into<String>, value: impl Into<String>, target: &'static str) {
        let figure = Figure {
            what: what.into(),
            value: value.into(),
            target,
        };
        eprintln!("  {:<62} {}", figure.what, figure.value);
        self.0.push(figure);
    }

    fn print(&self) {
        println!("\n{:<64} {:>26}   target", "figure", "value");
        for figure in &self.0 {
            println!(
                "{:<64} {:>26}   {}",
                figure.what, figure.value, figure.target
            );
        }
    }
}

fn options(dir: &Path) -> EngineOptions {
    common::engine_options(dir, FsyncMode::Never)
}

/// `count` debits of 1 credit from random users, over `threads` threads; returns debits per second.
fn debit_many(engine: &Engine, tenant: &Tenant, count: u64, threads: u64, seed: u64) -> f64 {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            scope.spawn(move || {
                let mut random = Random::new(seed + thread);
                for _ in 0..count / threads {
                    let user = UserId::new(random.below(sizes().users));
                    let request = DebitRequest::new(user.as_str(), Spend::Amount(1));
                    common::retry(|| engine.debit(tenant, &request, &BENCH));
                }
            });
        }
    });
    engine.wal().flush().expect("flush the log");
    (count / threads * threads) as f64 / started.elapsed().as_secs_f64()
}

fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .filter(|metadata| metadata.is_file())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Drops the files of `dir` from the page cache, so the next read comes from the disk.
fn drop_from_page_cache(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|entry| entry.ok()).all(|entry| {
        Command::new("dd")
            .arg(format!("if={}", entry.path().display()))
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .is_ok_and(|status| status.success())
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Opens the engine on `dir`, reports recovery; returns the engine.
fn timed_open(dir: &Path, label: &str, table: &mut Table) -> Arc<Engine> {
    let started = Instant::now();
    let (engine, _) = common::open_engine(options(dir));
    let wall = started.elapsed().as_secs_f64();
    let report = engine.recovery_report();
    let rate = report.records_replayed as f64 / report.seconds;
    table.add(
        format!("recovery {label}: records replayed"),
        format!("{}", report.records_replayed),
        "",
    );
    table.add(
        format!("recovery {label}: recover() time (open: {wall:.2} s)"),
        format!("{:.2} s", report.seconds),
        "",
    );
    if label.starts_with("log only") {
        table.add(
            format!("recovery {label}: replay rate"),
            format!("{:.2} M records/s", rate / 1e6),
            "≥ 2 M records/s",
        );
    }
    engine
}

fn recovery_and_snapshots(dir: &Path, table: &mut Table) {
    let sizes = sizes();
    let (users, debits) = (sizes.users, sizes.debits);
    let records = 2 * users + debits;
    eprintln!("building the log: {users} users, {users} credits, {debits} debits (fsync never)");
    {
        let (engine, tenant) = common::open_engine(options(dir));
        let seconds = common::add_users(&engine, &tenant, users, false, common::STARTING_CREDITS);
        eprintln!("  users created and credited in {seconds:.2} s");
        let rate = debit_many(&engine, &tenant, debits, 2, 1);
        eprintln!("  {debits} debits at {:.2} M/s", rate / 1e6);
    }
    let wal_dir = dir.join("wal");
    table.add(
        format!("log size ({} records)", count_label(records)),
        mib(directory_bytes(&wal_dir)),
        "",
    );
    drop(timed_open(dir, "log only, page cache warm", table));
    if !drop_from_page_cache(&wal_dir) {
        eprintln!("  could not drop the log from the page cache; the next figure is warm too");
    }
    let engine = timed_open(dir, "log only, page cache dropped", table);
    let tenant = engine.tenant(common::TENANT).expect("tenant");

    let wallets = count_label(users);
    eprintln!("snapshots of {wallets} wallets:");
    let mut seconds = Vec::new();
    let mut bytes = 0;
    for _ in 0..sizes.snapshots_timed {
        let started = Instant::now();
        let summary = engine.snapshot().expect("snapshot");
        seconds.push(started.elapsed().as_secs_f64());
        bytes = summary.bytes;
    }
    table.add(
        format!("snapshot of {wallets} wallets: file size"),
        format!(
            "{} ({:.0} B/wallet)",
            mib(bytes),
            bytes as f64 / users as f64
        ),
        "",
    );
    let text: Vec<String> = seconds.iter().map(|s| format!("{s:.2}")).collect();
    table.add(
        format!("snapshot of {wallets} wallets: time, each run"),
        format!("{} s", text.join(" / ")),
        "",
    );

    stalls(&engine, &tenant, table);

    engine.snapshot().expect("snapshot before the tail");
    drop(tenant);
    drop(engine);
    let engine = timed_open(dir, "snapshot only, warm", table);
    let snapshot_seconds = engine.recovery_report().seconds;
    let tenant = engine.tenant(common::TENANT).expect("tenant");
    debit_many(&engine, &tenant, sizes.tail_debits, 2, 99);
    drop(tenant);
    drop(engine);
    let tail = count_label(sizes.tail_debits);
    let engine = timed_open(dir, &format!("snapshot + {tail}-record tail, warm"), table);
    let tail_seconds = engine.recovery_report().seconds - snapshot_seconds;
    table.add(
        "recovery: the tail alone (difference of the two above)",
        format!(
            "{:.2} M records/s",
            sizes.tail_debits as f64 / tail_seconds / 1e6
        ),
        "≥ 2 M records/s",
    );
}

/// Latencies of one stall phase, nanoseconds, sorted, and how often the debit thread left the
/// CPU: voluntarily (it blocked, on a lock) or not (the scheduler preempted it).
struct Latencies {
    sorted: Vec<u32>,
    seconds: f64,
    switches: ContextSwitches,
}

/// The calling thread's context switches so far, from `/proc/thread-self/status`.
#[derive(Debug, Clone, Copy, Default)]
struct ContextSwitches {
    voluntary: u64,
    involuntary: u64,
}

impl ContextSwitches {
    fn now() -> ContextSwitches {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim_start_matches(':').trim().parse().ok())
                .unwrap_or(0)
        };
        ContextSwitches {
            voluntary: field("voluntary_ctxt_switches"),
            involuntary: field("nonvoluntary_ctxt_switches"),
        }
    }

    fn since(self, before: ContextSwitches) -> ContextSwitches {
        ContextSwitches {
            voluntary: self.voluntary - before.voluntary,
            involuntary: self.involuntary - before.involuntary,
        }
    }
}

impl Latencies {
    fn percentile(&self, fraction: f64) -> u32 {
        let index = ((self.sorted.len() as f64 * fraction) as usize).min(self.sorted.len() - 1);
        self.sorted[index]
    }

    fn over(&self, nanos: u32) -> usize {
        self.sorted.len() - self.sorted.partition_point(|&value| value <= nanos)
    }
}

/// Debits random users in a tight loop until `keep_going` turns false (or the slots run out),
/// timing every call.
fn timed_debits(
    engine: &Engine,
    tenant: &Tenant,
    slots: &mut [u32],
    keep_going: &AtomicBool,
    seed: u64,
) -> Latencies {
    let mut random = Random::new(seed);
    let mut recorded = 0;
    let switches = ContextSwitches::now();
    let started = Instant::now();
    while keep_going.load(Ordering::Relaxed) && recorded < slots.len() {
        let user = UserId::new(random.below(sizes().users));
        let request = DebitRequest::new(user.as_str(), Spend::Amount(1));
        let before = Instant::now();
        common::retry(|| engine.debit(tenant, &request, &BENCH));
        let nanos = before.elapsed().as_nanos();
        slots[recorded] = u32::try_from(nanos).unwrap_or(u32::MAX);
        recorded += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let switches = ContextSwitches::now().since(switches);
    let mut sorted = slots[..recorded].to_vec();
    sorted.sort_unstable();
    Latencies {
        sorted,
        seconds,
        switches,
    }
}

fn report_latencies(label: &str, latencies: &Latencies, table: &mut Table) {
    let micros = |nanos: u32| f64::from(nanos) / 1000.0;
    table.add(
        format!("debit stall, {label}: debits timed, rate"),
        format!(
            "{} at {:.2} M/s",
            latencies.sorted.len(),
            latencies.sorted.len() as f64 / latencies.seconds / 1e6
        ),
        "",
    );
    table.add(
        format!("debit stall, {label}: p50 / p99 / p99.9 / p99.99"),
        format!(
            "{:.1} / {:.1} / {:.1} / {:.0} µs",
            micros(latencies.percentile(0.5)),
            micros(latencies.percentile(0.99)),
            micros(latencies.percentile(0.999)),
            micros(latencies.percentile(0.9999)),
        ),
        "",
    );
    table.add(
        format!("debit stall, {label}: max; debits over 1 ms"),
        format!(
            "{:.2} ms; {}",
            micros(latencies.percentile(1.0)) / 1000.0,
            latencies.over(1_000_000)
        ),
        if label.contains("snapshot") {
            "none > 1 ms"
        } else {
            ""
        },
    );
    table.add(
        format!("debit stall, {label}: thread blocked / preempted"),
        format!(
            "{} / {} times",
            latencies.switches.voluntary, latencies.switches.involuntary
        ),
        "",
    );
}

fn stalls(engine: &Engine, tenant: &Tenant, table: &mut Table) {
    eprintln!("debit latency alone, beside a spinning thread, during snapshots:");
    // Written once so that no page fault lands inside a timed debit.
    let mut slots = vec![1u32; LATENCY_SLOTS];
    let keep_going = AtomicBool::new(true);

    let alone = std::thread::scope(|scope| {
        let timer = scope.spawn(|| {
            std::thread::sleep(sizes().stall_phase);
            keep_going.store(false, Ordering::Relaxed);
        });
        let latencies = timed_debits(engine, tenant, &mut slots, &keep_going, 7);
        timer.join().expect("timer");
        latencies
    });
    report_latencies("alone", &alone, table);

    // A snapshot runs two threads (the copy and the file writer), so the control for "sharing
    // the CPU without sharing a lock" is measured with one and with two spinning threads.
    for spinners in [1u64, 2] {
        keep_going.store(true, Ordering::Relaxed);
        let spins = AtomicU64::new(0);
        let beside_spinners = std::thread::scope(|scope| {
            for _ in 0..spinners {
                scope.spawn(|| {
                    let started = Instant::now();
                    while started.elapsed() < sizes().stall_phase {
                        spins.fetch_add(1, Ordering::Relaxed);
                    }
                    keep_going.store(false, Ordering::Relaxed);
                });
            }
            timed_debits(engine, tenant, &mut slots, &keep_going, 8 + spinners)
        });
        let label = format!("beside {spinners} spinning thread(s)");
        report_latencies(&label, &beside_spinners, table);
    }

    keep_going.store(true, Ordering::Relaxed);
    let during_snapshots = std::thread::scope(|scope| {
        scope.spawn(|| {
            let started = Instant::now();
            let mut taken = 0;
            while taken < 2 || started.elapsed() < sizes().stall_phase {
                engine.snapshot().expect("snapshot");
                taken += 1;
            }
            keep_going.store(false, Ordering::Relaxed);
            eprintln!(
                "  {taken} snapshots in {:.2} s during the timed debits",
                started.elapsed().as_secs_f64()
            );
        });
        timed_debits(engine, tenant, &mut slots, &keep_going, 11)
    });
    report_latencies("during snapshots", &during_snapshots, table);
}

/// In a child process: RSS before and after creating the users. Prints `rss <before> <after>`.
fn rss_child(with_email: bool) {
    let dir = common::bench_dir(&common::disk_parent(), "creditd-rss-");
    let (engine, tenant) = common::open_engine(options(dir.path()));
    engine.wal().flush().expect("flush");
    let before = common::resident_bytes();
    common::add_users(
        &engine,
        &tenant,
        sizes().users,
        with_email,
        common::STARTING_CREDITS,
    );
    let after = common::resident_bytes();
    println!("rss {before} {after}");
}

fn resident_memory(table: &mut Table) {
    for (with_email, label) in [(false, "plain"), (true, "with e-mail")] {
        let mut command = Command::new(std::env::current_exe().expect("this program"));
        command.arg(RSS_CHILD);
        if std::ptr::eq(sizes(), &FULL) {
            command.arg("--bench");
        }
        if with_email {
            command.arg("email");
        }
        let output = command.output().expect("run the RSS child");
        let text = String::from_utf8_lossy(&output.stdout);
        let figures: Vec<u64> = text
            .lines()
            .find_map(|line| line.strip_prefix("rss "))
            .map(|rest| rest.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default();
        let [before, after] = figures[..] else {
            eprintln!(
                "RSS child failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            continue;
        };
        table.add(
            format!(
                "resident memory per wallet, {} users, {label}",
                count_label(sizes().users)
            ),
            format!(
                "{:.0} B ({} → {})",
                after.saturating_sub(before) as f64 / sizes().users as f64,
                mib(before),
                mib(after)
            ),
            if with_email { "" } else { "≤ 200 B/wallet" },
        );
    }
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let full = arguments.iter().any(|a| a == "--bench");
    SIZES.get_or_init(|| if full { &FULL } else { &SMOKE });
    if arguments.iter().any(|a| a == RSS_CHILD) {
        rss_child(arguments.iter().any(|a| a == "email"));
        return;
    }
    if arguments.iter().any(|a| a == "--list") {
        // `cargo bench -- --list` asks every bench for its names; this one has no criterion names.
        println!("durability: bench");
        return;
    }
    let parent = common::disk_parent();
    std::fs::create_dir_all(&parent).expect("create the data directory");
    eprintln!("machine: {}", common::machine());
    eprintln!(
        "data directory: {} ({})",
        parent.display(),
        common::file_system(&parent)
    );
    eprintln!("command: CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench durability");
    if !full {
        eprintln!("smoke run (no --bench argument): small sizes, figures are not meaningful");
    }
    let mut table = Table::default();
    resident_memory(&mut table);
    let dir = common::bench_dir(&parent, "creditd-durability-");
    recovery_and_snapshots(dir.path(), &mut table);
    table.print();
    println!("load average after: {}", common::load());
}
