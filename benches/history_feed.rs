//! The history's feeder alone: how many log records per second it turns into history rows, and
//! what a row costs on disk; then the same rows written to an embedded key-value store (redb), the
//! alternative the history's storage was chosen against.
//!
//! Set-up: an engine on the real disk (`<package>/target/bench-data` or `$CREDITD_BENCH_DIR`)
//! with 10 k users and 50 catalogue actions writes `$CREDITD_BENCH_RECORDS` (default 1 M) debits
//! by action to its log, uniformly over users and actions. Nothing reads the log while it is
//! written. Then a fresh history database is fed from that log, step after step, until it has
//! caught up, exactly as the server's feeder thread does it when it lags: steps of 100 000
//! records doubling up to 320 000 (`history::worker::next_step_records`), each one SQLite
//! transaction committed with `synchronous = FULL`. `CREDITD_BENCH_STEP=N` fixes the step at N
//! records instead.
//! Reported: records and entries per second (wall and process CPU), and the database's bytes per
//! entry once its write-ahead file is checkpointed into it.
//!
//! The comparison writes rows of the same content (LSN, account; kind, amount, currency, balance
//! after, action, quantity, actor, time) in transactions of the same size, with the same layout
//! (rows appended by LSN, an index by (LSN block, account, LSN): the history's layout up to schema
//! 3, when redb was weighed against SQLite), to SQLite (the history's tables and settings) and to
//! redb (a copy-on-write B-tree key-value store; the row encoded with the codec the log
//! uses), both durable at each commit, then reads a user's newest 50 rows from each.
//!
//! `CREDITD_BENCH_USERS=N` debits N users instead of 10 k, and `CREDITD_BENCH_ACCOUNT_CACHE=N`
//! sets how many accounts the feeder remembers (`history.account_cache`): with 1 M users and 2 M
//! records, the default cache against one of 100 000 shows what lookups of forgotten accounts
//! cost.
//!
//! `CREDITD_BENCH_FEED_ONLY=1` leaves the comparison out. `CREDITD_BENCH_SPEND=amount` writes
//! plain debits of one credit instead of debits by action (what `creditd loadgen` and the peers
//! comparison send: no usage rollup by action).
//!
//! Run: `CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench history_feed`

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use creditd::engine::{DebitRequest, Engine, Spend, Tenant};
use creditd::history::{worker, Feeder};
use creditd::wal::{FsStorage, FsyncMode};

#[allow(dead_code)]
mod common;

use common::{Random, UserId, BENCH};

/// Users debited.
const USERS: u64 = 10_000;
/// Catalogue actions debited.
const ACTIONS: u64 = 50;
/// Records per transaction in the comparison of stores.
const STORE_STEP_RECORDS: u64 = 20_000;

fn main() {
    // `cargo test` runs bench targets once with `--bench` absent; there is nothing to test here.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let records: u64 = env_number("CREDITD_BENCH_RECORDS").unwrap_or(1_000_000);
    eprintln!("machine: {}", common::machine());
    let dir = common::bench_dir(&common::disk_parent(), "creditd-history-bench-");
    eprintln!(
        "data directory {} ({})",
        dir.path().display(),
        common::file_system(dir.path())
    );
    let options = common::engine_options(dir.path(), FsyncMode::Never);
    let wal_dir = options.wal_dir();
    let (engine, tenant) = common::open_engine(options);
    write_log(&engine, &tenant, records);

    let durable = engine.wal().durable_lsn();
    let path = dir.path().join(creditd::history::FILE_NAME);
    let mut feeder = Feeder::open(
        &path,
        &wal_dir,
        creditd::codec::FORMAT_VERSION,
        creditd::wal::record::MAX_RECORD_BYTES_LIMIT,
    )
    .expect("open the history");
    if let Some(capacity) = env_number("CREDITD_BENCH_ACCOUNT_CACHE") {
        feeder.set_account_cache(usize::try_from(capacity).unwrap_or(usize::MAX));
    }
    // The server's policy (steps double while the history lags), unless a fixed size is asked.
    let fixed_step: Option<u64> = env_number("CREDITD_BENCH_STEP");
    let mut records_per_step = fixed_step.unwrap_or(worker::STEP_RECORDS);
    let cpu = common::process_cpu_seconds();
    let started = Instant::now();
    let mut steps = 0u64;
    while feeder.next_lsn() <= durable {
        let applied = feeder
            .step(&FsStorage, durable, records_per_step)
            .expect("a feeder step");
        if fixed_step.is_none() {
            records_per_step = worker::next_step_records(records_per_step, applied);
        }
        steps += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = common::process_cpu_seconds() - cpu;
    let entries = feeder.store().count().expect("count the entries");
    let bytes = checkpointed_bytes(&path);
    println!(
        "feeder: {durable} records ({entries} entries) in {steps} steps, {seconds:.2} s: \
         {:.0} records/s, {:.0} entries/s; {:.2} µs CPU per record; {:.0} bytes per entry on disk",
        durable as f64 / seconds,
        entries as f64 / seconds,
        cpu * 1e6 / durable as f64,
        bytes as f64 / entries.max(1) as f64,
    );
    drop(feeder);
    if std::env::var_os("CREDITD_BENCH_FEED_ONLY").is_none() {
        compare_stores(dir.path(), records.min(1_000_000));
    }
}

/// A number from the environment, if set.
fn env_number(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

/// Writes `records` debits by action, uniformly over users and actions (users and actions
/// created first), and waits for the log.
fn write_log(engine: &Arc<Engine>, tenant: &Tenant, records: u64) {
    let users = env_number("CREDITD_BENCH_USERS").unwrap_or(USERS);
    let seconds = common::add_users(engine, tenant, users, false, common::STARTING_CREDITS);
    let names: Vec<String> = (0..ACTIONS).map(|index| format!("model-{index}")).collect();
    for name in &names {
        common::retry(|| engine.put_action(tenant, name, 3, None, None, &BENCH));
    }
    let by_action = std::env::var("CREDITD_BENCH_SPEND").map_or(true, |spend| spend != "amount");
    let started = Instant::now();
    let mut random = Random::new(7);
    for index in 0..records {
        let user = UserId::new(random.below(users));
        let action = &names[random.below(ACTIONS) as usize];
        let quantity = 1 + random.below(4);
        let spend = if by_action {
            Spend::Action {
                name: action,
                quantity,
            }
        } else {
            Spend::Amount(1)
        };
        let request = DebitRequest::new(user.as_str(), spend);
        common::retry(|| engine.debit(tenant, &request, &BENCH));
        if index % 65_536 == 65_535 {
            engine.wal().flush().expect("flush the log");
        }
    }
    engine.wal().flush().expect("flush the log");
    eprintln!(
        "set-up: {users} users in {seconds:.2} s, {records} debits in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}

/// The database's size once its write-ahead file is folded into it.
fn checkpointed_bytes(path: &Path) -> u64 {
    let connection = rusqlite::Connection::open(path).expect("open the history");
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(connection);
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

/// The account id of a bench user (its number, plus one).
fn account_of(user: &UserId) -> i64 {
    user.as_str()[2..].parse::<i64>().unwrap_or(0) + 1
}

/// One row of the comparison.
#[derive(serde::Serialize, serde::Deserialize)]
struct Row<'a> {
    kind: &'a str,
    amount: i64,
    currency: &'a str,
    balance_after: i64,
    available_after: i64,
    action: &'a str,
    quantity: u64,
    actor: &'a str,
    created_ms: i64,
}

/// The same `rows` rows into SQLite and into redb, timed; then reads of a user's newest 50.
fn compare_stores(dir: &Path, rows: u64) {
    let names: Vec<String> = (0..ACTIONS).map(|index| format!("model-{index}")).collect();
    let row = |lsn: u64, random: &mut Random| {
        let user = UserId::new(random.below(USERS));
        let action = random.below(ACTIONS) as usize;
        (user, action, lsn)
    };

    // SQLite, the history's own tables and settings: rows appended by LSN, a user's found
    // through schema 3's index by (LSN block, account), the layout redb mirrors here.
    let sqlite_path = dir.join("compare.sqlite3");
    let sqlite = creditd::history::Store::open(&sqlite_path).expect("open SQLite");
    let connection = rusqlite::Connection::open(&sqlite_path).expect("open SQLite");
    connection
        .execute_batch("CREATE INDEX entries_by_account ON entries (lsn >> 16, account)")
        .expect("the index");
    connection
        .pragma_update(None, "synchronous", "FULL")
        .expect("pragma");
    connection
        .pragma_update(None, "cache_size", -64 * 1024)
        .expect("pragma");
    let mut random = Random::new(11);
    let started = Instant::now();
    let mut lsn = 1;
    while lsn <= rows {
        let transaction = connection.unchecked_transaction().expect("begin");
        {
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO entries (lsn, account, kind, amount, currency, balance_after,
                        available_after, action, quantity, actor, created_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .expect("prepare");
            for _ in 0..STORE_STEP_RECORDS.min(rows - lsn + 1) {
                let (user, action, at) = row(lsn, &mut random);
                insert
                    .execute(rusqlite::params![
                        at as i64,
                        account_of(&user),
                        "debit",
                        -3i64,
                        "credits",
                        1_000i64,
                        1_000i64,
                        names[action],
                        1i64,
                        "bench",
                        1_700_000_000_000i64 + at as i64,
                    ])
                    .expect("insert");
                lsn += 1;
            }
        }
        transaction.commit().expect("commit");
    }
    let sqlite_seconds = started.elapsed().as_secs_f64();
    let sqlite_bytes = checkpointed_bytes(&sqlite_path);
    drop(sqlite);
    let mut statement = connection
        .prepare(
            "SELECT lsn, kind, amount, action FROM entries WHERE lsn >> 16 = ?1 AND account = ?2
             ORDER BY lsn DESC LIMIT ?3",
        )
        .expect("prepare");
    let mut random = Random::new(13);
    let started = Instant::now();
    let mut read = 0usize;
    for _ in 0..10_000 {
        let user = UserId::new(random.below(USERS));
        let mut left = 50;
        let mut block = rows >> 16;
        loop {
            let found = statement
                .query_map(
                    rusqlite::params![block as i64, account_of(&user), left as i64],
                    |row| row.get::<_, i64>(0),
                )
                .expect("query")
                .count();
            left -= found;
            if left == 0 || block == 0 {
                break;
            }
            block -= 1;
        }
        read += 50 - left;
    }
    let sqlite_read = started.elapsed().as_secs_f64() * 1e6 / 10_000.0;

    // redb, the same layout: rows by LSN, and an index keyed by (LSN block, account, LSN).
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("entries");
    let index: redb::TableDefinition<(u64, i64, u64), ()> =
        redb::TableDefinition::new("entries_by_account");
    let redb_path = dir.join("compare.redb");
    let database = redb::Database::create(&redb_path).expect("create redb");
    let mut random = Random::new(11);
    let mut value = Vec::new();
    let started = Instant::now();
    let mut lsn = 1;
    while lsn <= rows {
        let transaction = database.begin_write().expect("begin");
        {
            let mut entries = transaction.open_table(table).expect("table");
            let mut by_account = transaction.open_table(index).expect("index");
            for _ in 0..STORE_STEP_RECORDS.min(rows - lsn + 1) {
                let (user, action, at) = row(lsn, &mut random);
                value.clear();
                let encoded = Row {
                    kind: "debit",
                    amount: -3,
                    currency: "credits",
                    balance_after: 1_000,
                    available_after: 1_000,
                    action: &names[action],
                    quantity: 1,
                    actor: "bench",
                    created_ms: 1_700_000_000_000 + at as i64,
                };
                creditd::codec::encode_into(&encoded, &mut value).expect("encode");
                entries.insert(at, value.as_slice()).expect("insert");
                by_account
                    .insert((at >> 16, account_of(&user), at), ())
                    .expect("insert");
                lsn += 1;
            }
        }
        transaction.commit().expect("commit");
    }
    let redb_seconds = started.elapsed().as_secs_f64();
    let redb_bytes = std::fs::metadata(&redb_path).map_or(0, |meta| meta.len());
    let mut random = Random::new(13);
    let started = Instant::now();
    let mut redb_rows = 0usize;
    for _ in 0..10_000 {
        let user = UserId::new(random.below(USERS));
        let account = account_of(&user);
        let transaction = database.begin_read().expect("begin read");
        let entries = transaction.open_table(table).expect("table");
        let by_account = transaction.open_table(index).expect("index");
        let mut left = 50;
        let mut block = rows >> 16;
        loop {
            let range = by_account
                .range((block, account, 0)..=(block, account, u64::MAX))
                .expect("range");
            for key in range.rev().take(left) {
                let (key, _) = key.expect("key");
                let (_, _, at) = key.value();
                let row = entries.get(at).expect("get").expect("row");
                std::hint::black_box(row.value().len());
                left -= 1;
            }
            if left == 0 || block == 0 {
                break;
            }
            block -= 1;
        }
        redb_rows += 50 - left;
    }
    let redb_read = started.elapsed().as_secs_f64() * 1e6 / 10_000.0;
    assert_eq!(read, redb_rows, "both stores list the same rows");

    println!("{rows} rows, transactions of {STORE_STEP_RECORDS}, durable at each commit:");
    println!(
        "  SQLite: {:.0} rows/s written, {:.0} bytes per row, newest 50 of a user in {sqlite_read:.1} µs",
        rows as f64 / sqlite_seconds,
        sqlite_bytes as f64 / rows as f64,
    );
    println!(
        "  redb:   {:.0} rows/s written, {:.0} bytes per row, newest 50 of a user in {redb_read:.1} µs",
        rows as f64 / redb_seconds,
        redb_bytes as f64 / rows as f64,
    );
}
