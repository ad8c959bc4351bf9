//! The history's read side at scale: usage and revenue reports, and ledger pages, from a history
//! of 30 days of 10 M spends by 10 000 users over 50 catalogue actions.
//!
//! The history is built the way a server builds it: an engine (with a clock the bench moves)
//! takes the debits and writes its log to disk, then a [`Feeder`] reads that log and applies it,
//! step by step, to a fresh database (entries, rollups, checkpoint). That feeding is timed: it is
//! the history's apply rate. About one spend in 1 000 is followed by a paid checkout, for the
//! revenue reports. The database is kept in `<target>/bench-data/history-<spends>` (or under
//! `$CREDITD_BENCH_DIR`) and reused by later runs; the log is removed once applied.
//!
//! Then every report is run `CREDITD_BENCH_SAMPLES` times (default 100) on windows of one hour,
//! one day, seven days, thirty days and the longest a report allows (400 days, which holds all
//! the spends and empty hours around them), each starting at a random whole hour, and p50 and
//! p99 are printed (wall time), with the mean CPU time of a run (which leaves out the time other
//! processes held the CPU, on a shared machine): usage grouped by action, user, day and hour, for
//! the tenant and for one random user; revenue by package, currency and day. Ledger pages
//! (`Reader::entries`, 50 entries) are measured for a random user's first page and for a page
//! behind a cursor 900 entries deep.
//! Last come the database's bytes per entry, and per table when SQLite has `dbstat`.
//!
//! Run: `cargo bench --bench history` (the first run builds the database: a few minutes).
//! `CREDITD_BENCH_HISTORY_SPENDS=1000000` builds a smaller one; `CREDITD_BENCH_ONLY=group_by=user`
//! runs only the reports whose line holds that text.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd::engine::payments::{CheckoutRequest, Verdict};
use creditd::engine::types::Currency;
use creditd::engine::{DebitRequest, Engine, ManualClock, PackageSpec, Spend, Tenant};
use creditd::history::reader::{Filter, Reader};
use creditd::history::reports::{RevenueGrouping, RevenueQuery, UsageGrouping, UsageQuery, Window};
use creditd::history::rollup::HOUR_MS;
use creditd::history::Feeder;
use creditd::wal::{FsStorage, FsyncMode, Storage};

#[allow(dead_code)]
mod common;

use common::{add_users, retry, Random, UserId, BENCH, STARTING_CREDITS, TENANT};

/// Spends in the history, unless `CREDITD_BENCH_HISTORY_SPENDS` says otherwise.
const SPENDS: u64 = 10_000_000;
/// Users spending.
const USERS: u64 = 10_000;
/// Catalogue actions.
const ACTIONS: u64 = 50;
/// The days the spends spread over.
const DAYS: i64 = 30;
/// 2026-01-01T00:00:00Z, when the first spend is made.
const START_MS: i64 = 1_767_225_600_000;
/// A paid checkout after every this many spends.
const SPENDS_PER_PAYMENT: u64 = 1_000;
/// Records per feeding step, as the server's feeder takes them.
const STEP_RECORDS: u64 = 20_000;
/// The packages sold: id, credits, price, price currency.
const PACKAGES: [(&str, i64, i64, &str); 3] = [
    ("starter", 500, 200_000, "NGN"),
    ("pro", 5_000, 1_500_000, "NGN"),
    ("team", 20_000, 9_900, "USD"),
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test` runs bench targets once with `--bench` absent: build nothing then.
    if !std::env::args().any(|argument| argument == "--bench") {
        return;
    }
    let spends = env_number("CREDITD_BENCH_HISTORY_SPENDS", SPENDS);
    let samples = env_number("CREDITD_BENCH_SAMPLES", 100).max(1) as usize;
    let dir = common::disk_parent().join(format!("history-{spends}"));
    let database = dir.join(creditd::history::FILE_NAME);
    let built = dir.join("built.txt");
    println!("machine: {}", common::machine());
    println!(
        "history: {spends} spends by {USERS} users over {ACTIONS} actions in {DAYS} days, at {}",
        dir.display()
    );
    if !built.exists() {
        let summary = build(&dir, spends);
        std::fs::write(&built, &summary).expect("write the build summary");
    } else {
        // Built by an older creditd, perhaps: opened as the server opens it, which migrates
        // an older schema before anything reads it.
        let started = Instant::now();
        drop(creditd::history::Store::open(&database).expect("open the history"));
        println!(
            "opened the history in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
    print!(
        "{}",
        std::fs::read_to_string(&built).expect("read the build summary")
    );
    measure(&database, spends, samples);
}

/// Builds the history in `dir`: the log through an engine, then the database through a feeder.
/// Returns what to print about it.
fn build(dir: &Path, spends: u64) -> String {
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("remove a half-built history");
    }
    let engine_dir = dir.join("engine");
    std::fs::create_dir_all(&engine_dir).expect("create the bench directory");
    let clock = Arc::new(ManualClock::new(START_MS - HOUR_MS));
    let options = common::engine_options(&engine_dir, FsyncMode::Never);
    let engine =
        Engine::open(options, Arc::new(FsStorage), clock.clone()).expect("open the engine");
    let tenant = engine
        .upsert_tenant(TENANT, Some("Acme"), None, &BENCH)
        .expect("create the tenant")
        .0;
    let actions: Vec<String> = (0..ACTIONS)
        .map(|index| format!("act-{index:02}"))
        .collect();
    for (index, action) in actions.iter().enumerate() {
        let cost = (index % 10 + 1) as i64;
        retry(|| engine.put_action(&tenant, action, cost, None, None, &BENCH));
    }
    for (package, credits, price_minor, price_currency) in PACKAGES {
        let spec = PackageSpec {
            name: package,
            credits,
            currency: Currency::CREDITS,
            price_minor,
            price_currency: Currency::new(price_currency).unwrap(),
            active: true,
            position: 0,
        };
        retry(|| engine.put_package(&tenant, package, &spec, &BENCH));
    }
    add_users(&engine, &tenant, USERS, false, STARTING_CREDITS);

    let started = Instant::now();
    let written = write_spends(&engine, &tenant, &clock, spends);
    engine.wal().flush().expect("flush the log");
    let log_seconds = started.elapsed().as_secs_f64();
    let durable = engine.wal().durable_lsn();

    let database = dir.join(creditd::history::FILE_NAME);
    let wal_dir = engine.options().wal_dir();
    let mut feeder = Feeder::open(
        &database,
        &wal_dir,
        creditd::codec::FORMAT_VERSION,
        creditd::wal::record::MAX_RECORD_BYTES_LIMIT,
    )
    .expect("open the history");
    let storage: &dyn Storage = &FsStorage;
    let started = Instant::now();
    let cpu_before = common::process_cpu_seconds();
    let mut steps = 0u64;
    while feeder.next_lsn() <= durable {
        feeder
            .step(storage, durable, STEP_RECORDS)
            .expect("apply a step");
        steps += 1;
    }
    let feed_seconds = started.elapsed().as_secs_f64();
    let feed_cpu_seconds = common::process_cpu_seconds() - cpu_before;
    let entries = feeder.store().count().expect("count the entries");
    drop(feeder);
    drop(engine);
    std::fs::remove_dir_all(&engine_dir).expect("remove the log");
    format!(
        "built: {written} records written to the log in {log_seconds:.1} s; {durable} records \
         applied in {steps} steps of {STEP_RECORDS} in {feed_seconds:.1} s: {:.0} records/s, \
         {:.0} entries/s ({entries} entries); CPU {feed_cpu_seconds:.1} s, {:.2} us per entry \
         (load average {})\n",
        durable as f64 / feed_seconds,
        entries as f64 / feed_seconds,
        feed_cpu_seconds * 1e6 / entries as f64,
        common::load(),
    )
}

/// Writes `spends` debits spread evenly over [`DAYS`] days (98 % by action, 2 % by amount) and a
/// paid checkout after every [`SPENDS_PER_PAYMENT`]. Returns the records written.
fn write_spends(engine: &Engine, tenant: &Tenant, clock: &ManualClock, spends: u64) -> u64 {
    let actions: Vec<String> = (0..ACTIONS)
        .map(|index| format!("act-{index:02}"))
        .collect();
    let span_ms = DAYS * 24 * HOUR_MS;
    let mut random = Random::new(42);
    let mut records = 0;
    for index in 0..spends {
        clock.set_ms(
            START_MS + (i128::from(span_ms) * i128::from(index) / i128::from(spends)) as i64,
        );
        let user = UserId::new(random.below(USERS));
        let spend = if random.below(50) == 0 {
            Spend::Amount(1 + random.below(100) as i64)
        } else {
            Spend::Action {
                name: &actions[random.below(ACTIONS) as usize],
                quantity: 1 + random.below(4),
            }
        };
        let request = DebitRequest::new(user.as_str(), spend);
        retry(|| engine.debit(tenant, &request, &BENCH));
        records += 1;
        if index % SPENDS_PER_PAYMENT == SPENDS_PER_PAYMENT - 1 {
            records += pay(engine, tenant, user.as_str(), index / SPENDS_PER_PAYMENT);
        }
    }
    records
}

/// A checkout of a package by `user`, paid at its price: two records.
fn pay(engine: &Engine, tenant: &Tenant, user: &str, number: u64) -> u64 {
    let (package, _, price_minor, price_currency) = PACKAGES[(number % 3) as usize];
    let reference = format!("cd_bench_{number}");
    let checkout = CheckoutRequest {
        user,
        package,
        reference: &reference,
        gateway: "sandbox",
        metadata: None,
    };
    retry(|| engine.start_checkout(tenant, &checkout, &BENCH));
    let verdict = Verdict::Paid {
        paid_minor: price_minor,
        paid_currency: Currency::new(price_currency).unwrap(),
        method: None,
    };
    retry(|| engine.settle_payment(&reference, "sandbox", &verdict, "bench"));
    2
}

/// Latencies of one report (wall time, in order), and the CPU time of the measuring thread per
/// run.
struct Timings {
    wall: Vec<Duration>,
    cpu_mean: Duration,
}

impl Timings {
    /// The `fraction` percentile of the wall times, in milliseconds.
    fn percentile(&self, fraction: f64) -> f64 {
        let count = self.wall.len();
        let index = ((count as f64 * fraction).ceil() as usize).clamp(1, count) - 1;
        self.wall[index].as_secs_f64() * 1000.0
    }

    /// The mean CPU time of a run, in milliseconds.
    fn cpu_ms(&self) -> f64 {
        self.cpu_mean.as_secs_f64() * 1000.0
    }
}

/// The CPU time this thread has run, from `/proc/thread-self/schedstat` (nanoseconds on a CPU,
/// updated at each scheduler tick, so only a mean over many runs is exact): unlike wall time, it
/// does not count the time other processes held the CPU.
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|field| field.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}

/// Runs `report` `samples` times, each on a fresh random input; the sorted latencies and the
/// largest number of rows an answer had.
fn time(samples: usize, mut report: impl FnMut(&mut Random) -> usize) -> (Timings, usize) {
    let mut random = Random::new(7);
    let mut wall = Vec::with_capacity(samples);
    let mut most_rows = 0;
    // One run first, so that the first sample does not pay for cold statements alone.
    report(&mut random);
    let cpu_before = thread_cpu();
    for _ in 0..samples {
        let started = Instant::now();
        let rows = report(&mut random);
        wall.push(started.elapsed());
        most_rows = most_rows.max(rows);
    }
    let cpu_mean = thread_cpu().saturating_sub(cpu_before) / samples as u32;
    wall.sort_unstable();
    (Timings { wall, cpu_mean }, most_rows)
}

/// A random window of `hours` whole hours over the spends (a little before and after too).
fn window(random: &mut Random, hours: i64) -> Window {
    let first = START_MS / HOUR_MS - 24;
    let last = (START_MS / HOUR_MS + DAYS * 24 - hours).max(first) + 24;
    let from_hour = first + random.below((last - first) as u64 + 1) as i64;
    Window {
        from_hour,
        to_hour: from_hour + hours,
    }
}

fn measure(database: &Path, spends: u64, samples: usize) {
    let reader = Reader::new(database, Arc::new(AtomicU64::new(u64::MAX)));
    let windows = [
        ("1 h", 1),
        ("1 day", 24),
        ("7 days", 168),
        ("30 days", 720),
        ("400 days", 9600),
    ];
    let (mut worst, mut worst_cpu): (f64, f64) = (0.0, 0.0);
    println!();
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "report", "window", "p50 ms", "p99 ms", "CPU ms", "rows"
    );
    let groupings = [
        ("action", UsageGrouping::Action),
        ("user", UsageGrouping::User),
        ("day", UsageGrouping::Day),
        ("hour", UsageGrouping::Hour),
    ];
    for with_user in [false, true] {
        for (name, group_by) in groupings {
            for (label, hours) in windows {
                let report = if with_user {
                    format!("usage group_by={name} user_id=<random>")
                } else {
                    format!("usage group_by={name}")
                };
                if !wanted(&report, label) {
                    continue;
                }
                let (timings, rows) = time(samples, |random| {
                    let user = UserId::new(random.below(USERS));
                    let query = UsageQuery {
                        tenant: TENANT,
                        currency: "credits",
                        window: window(random, hours),
                        group_by,
                        user: with_user.then_some(user.as_str()),
                    };
                    reader.usage(&query).expect("a usage report").len()
                });
                worst = worst.max(timings.percentile(0.99));
                worst_cpu = worst_cpu.max(timings.cpu_ms());
                worst_cpu = worst_cpu.max(timings.cpu_ms());
                print_row(&report, label, &timings, rows);
            }
        }
    }
    for (name, group_by) in [
        ("package", RevenueGrouping::Package),
        ("currency", RevenueGrouping::Currency),
        ("day", RevenueGrouping::Day),
    ] {
        for (label, hours) in windows {
            let report = format!("revenue group_by={name}");
            if !wanted(&report, label) {
                continue;
            }
            let (timings, rows) = time(samples, |random| {
                let query = RevenueQuery {
                    tenant: TENANT,
                    window: window(random, hours),
                    group_by,
                };
                reader.revenue(&query).expect("a revenue report").len()
            });
            worst = worst.max(timings.percentile(0.99));
            worst_cpu = worst_cpu.max(timings.cpu_ms());
            print_row(&report, label, &timings, rows);
        }
    }
    println!("slowest report: p99 {worst:.2} ms; most CPU per run {worst_cpu:.2} ms");
    if std::env::var_os("CREDITD_BENCH_ONLY").is_some() {
        return;
    }
    println!();
    entry_pages(&reader, samples);
    println!();
    sizes(database, spends);
}

/// Whether to run `report` over `window`: `CREDITD_BENCH_ONLY` (a part of the printed line, such
/// as `group_by=user`) picks some.
fn wanted(report: &str, window: &str) -> bool {
    std::env::var("CREDITD_BENCH_ONLY")
        .map_or(true, |only| format!("{report} {window}").contains(&only))
}

fn print_row(report: &str, window: &str, timings: &Timings, rows: usize) {
    println!(
        "{report:<44} {window:>9} {:>9.2} {:>9.2} {:>9.2} {rows:>8}",
        timings.percentile(0.5),
        timings.percentile(0.99),
        timings.cpu_ms(),
    );
}

/// Ledger pages of 50: a random user's first page, and the page behind a cursor 900 entries
/// deep (the user's entries are about 1 000).
fn entry_pages(reader: &Reader, samples: usize) {
    let filter = Filter::default();
    let (first, _) = time(samples, |random| {
        let user = UserId::new(random.below(USERS));
        reader
            .entries(TENANT, user.as_str(), &filter, None, 50)
            .expect("a page")
            .len()
    });
    print_row("entries limit=50, first page", "-", &first, 50);
    // The cursors: for each sampled user, the LSN of its 900th newest entry.
    let mut cursors = Random::new(7);
    let deep_cursor = |random: &mut Random| {
        let user = UserId::new(random.below(USERS));
        let page = reader
            .entries(TENANT, user.as_str(), &filter, None, 900)
            .expect("a long page");
        (user, page.last().map(|entry| entry.lsn))
    };
    let mut prepared: Vec<(UserId, Option<u64>)> = (0..samples + 1)
        .map(|_| deep_cursor(&mut cursors))
        .collect();
    prepared.reverse();
    let (deep, rows) = time(samples, |_| {
        let (user, cursor) = prepared.pop().expect("a prepared cursor");
        reader
            .entries(TENANT, user.as_str(), &filter, cursor, 50)
            .expect("a deep page")
            .len()
    });
    print_row("entries limit=50, cursor 900 deep", "-", &deep, rows);
}

/// The database's size per entry, in all and per table.
fn sizes(database: &Path, spends: u64) {
    let connection = rusqlite::Connection::open(database).expect("open the database");
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint the database");
    let entries: i64 = connection
        .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
        .expect("count the entries");
    let bytes = file_bytes(database);
    println!(
        "database: {bytes} bytes, {entries} entries ({spends} spends): {:.1} bytes per entry",
        bytes as f64 / entries as f64
    );
    let per_table = connection
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY sum(pgsize) DESC");
    match per_table {
        Ok(mut statement) => {
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .expect("read dbstat");
            for row in rows {
                let (name, bytes) = row.expect("a dbstat row");
                println!(
                    "  {name:<40} {bytes:>14} bytes {:>8.1} per entry",
                    bytes as f64 / entries as f64
                );
            }
        }
        Err(error) => println!("  (no per-table sizes: {error})"),
    }
}

fn file_bytes(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path.to_path_buf(), wal]
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .sum()
}
