//! Builds a large data directory fast, for `benches/recovery.sh`: the engine is driven directly
//! (no HTTP), from two threads, with `fsync = "never"` (the script syncs the files once at the
//! end), and no snapshot is taken, so the log holds every record and a server started on the
//! directory replays all of it.
//!
//! The directory holds, in tenant `default` (the one the development keys of `config.toml` act
//! in): `users` users `<prefix>-0` … `<prefix>-(users-1)` (the ids `creditd loadgen
//! --user-prefix <prefix>` uses), each created and granted credits (two records each), then random
//! debits of 1 credit until the log holds `records` records.
//!
//! ```text
//! cargo bench --bench recovery_data -- --data-dir D --users 10000000 --records 100000000
//! ```
//!
//! Started without `--bench` (as `cargo test --benches` does), it builds a small directory in a
//! temporary place, recovers it and checks that every user and record came back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use creditd::engine::types::CreditKind;
use creditd::engine::{CreditRequest, DebitRequest, Engine, ProfileUpdate, Spend, Tenant};
use creditd::wal::FsyncMode;

#[allow(dead_code)]
mod common;

use common::{Random, BENCH};

/// The tenant the development keys of `config.toml` act in.
const TENANT: &str = "default";

/// Records written by one thread between two waits for the log, so the queue stays bounded.
const RECORDS_PER_FLUSH: u64 = 64 * 1024;

/// What to build.
struct Plan {
    data_dir: PathBuf,
    users: u64,
    records: u64,
    prefix: String,
    threads: u64,
}

fn parse(arguments: &[String]) -> Result<Plan, String> {
    let mut plan = Plan {
        data_dir: PathBuf::new(),
        users: 0,
        records: 0,
        prefix: "rec".into(),
        threads: 2,
    };
    let mut words = arguments.iter();
    while let Some(word) = words.next() {
        if word == "--bench" {
            continue;
        }
        let value = words
            .next()
            .ok_or_else(|| format!("{word} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{word}: {e}"));
        match word.as_str() {
            "--data-dir" => plan.data_dir = PathBuf::from(value),
            "--users" => plan.users = number()?,
            "--records" => plan.records = number()?,
            "--prefix" => plan.prefix = value.clone(),
            "--threads" => plan.threads = number()?.max(1),
            _ => return Err(format!("unknown argument {word}")),
        }
    }
    if plan.data_dir.as_os_str().is_empty() || plan.users == 0 {
        return Err(
            "usage: --data-dir D --users N --records M [--prefix rec] [--threads 2]".into(),
        );
    }
    Ok(plan)
}

/// Opens (or creates) the engine on `dir`, without background threads or snapshots.
fn open(dir: &Path) -> (Arc<Engine>, Arc<Tenant>) {
    let options = common::engine_options(dir, FsyncMode::Never);
    let engine = Engine::open_dir(options).expect("open the engine");
    let tenant = match engine.tenant(TENANT) {
        Some(tenant) => tenant,
        None => {
            engine
                .upsert_tenant(TENANT, None, None, &BENCH)
                .expect("create the tenant")
                .0
        }
    };
    (engine, tenant)
}

/// Runs `work(thread, first, end)` on `threads` threads over `0..count`, split in equal ranges.
fn split(threads: u64, count: u64, work: impl Fn(u64, u64, u64) + Sync) {
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let work = &work;
            scope.spawn(move || {
                let first = count * thread / threads;
                let end = count * (thread + 1) / threads;
                work(thread, first, end);
            });
        }
    });
}

/// Builds the directory; returns the records written.
fn build(plan: &Plan) -> u64 {
    let (engine, tenant) = open(&plan.data_dir);
    let started = Instant::now();
    let written = AtomicU64::new(0);
    split(plan.threads, plan.users, |_, first, end| {
        let mut user = String::with_capacity(32);
        for index in first..end {
            user.clear();
            user.push_str(&plan.prefix);
            user.push('-');
            user.push_str(&index.to_string());
            let profile = ProfileUpdate {
                email: None,
                name: None,
                metadata: None,
            };
            common::retry(|| engine.upsert_user(&tenant, &user, profile, &BENCH));
            let credit = CreditRequest::new(&user, common::STARTING_CREDITS, CreditKind::Grant);
            common::retry(|| engine.credit(&tenant, &credit, &BENCH));
            if (index - first) % (RECORDS_PER_FLUSH / 2) == 0 {
                engine.wal().flush().expect("flush the log");
            }
        }
        written.fetch_add(2 * (end - first), Ordering::Relaxed);
    });
    engine.wal().flush().expect("flush the log");
    let users_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} users created and funded in {users_seconds:.1} s ({:.0} records/s)",
        plan.users,
        2.0 * plan.users as f64 / users_seconds
    );
    let debits = plan.records.saturating_sub(2 * plan.users + 1);
    let started = Instant::now();
    split(plan.threads, debits, |thread, first, end| {
        let mut random = Random::new(0x5eed + thread);
        let mut user = String::with_capacity(32);
        for done in 0..end - first {
            user.clear();
            user.push_str(&plan.prefix);
            user.push('-');
            user.push_str(&random.below(plan.users).to_string());
            let debit = DebitRequest::new(&user, Spend::Amount(1));
            common::retry(|| engine.debit(&tenant, &debit, &BENCH));
            if done % RECORDS_PER_FLUSH == 0 {
                engine.wal().flush().expect("flush the log");
            }
        }
        written.fetch_add(end - first, Ordering::Relaxed);
    });
    engine.wal().flush().expect("flush the log");
    let debit_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{debits} debits in {debit_seconds:.1} s ({:.0} records/s); {} waits for a full log queue",
        debits as f64 / debit_seconds,
        common::BACKPRESSURE_RETRIES.load(Ordering::Relaxed)
    );
    engine.wal().close().expect("close the log");
    written.load(Ordering::Relaxed)
}

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let real = arguments.iter().any(|word| word == "--bench");
    if !real && arguments.is_empty() {
        smoke();
        return;
    }
    let plan = match parse(&arguments) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    let written = build(&plan);
    println!(
        "built {}: {} users, {written} records (+ the tenant's)",
        plan.data_dir.display(),
        plan.users
    );
}

/// A small directory, recovered: every user is back, and every record was replayed.
fn smoke() {
    let dir = common::bench_dir(&std::env::temp_dir(), "creditd-recovery-data");
    let plan = Plan {
        data_dir: dir.path().to_path_buf(),
        users: 1000,
        records: 5000,
        prefix: "rec".into(),
        threads: 2,
    };
    let written = build(&plan);
    assert_eq!(written, 4999, "users, credits and debits written");
    let (engine, _) = open(dir.path());
    let report = engine.recovery_report();
    assert!(report.snapshot.is_none(), "no snapshot was taken");
    assert_eq!(report.figures.users, 1000, "{report:?}");
    assert_eq!(report.records_replayed, 5000, "{report:?}");
    println!("recovery_data smoke run: ok");
}
