//! The history outlives the log: the real `creditd` binary with small log segments and a snapshot
//! every few hundred records, so that snapshots prune the log again and again, restarted cleanly
//! (SIGTERM) and killed (SIGKILL).
//!
//! - With the history on, the very first entry is still listed after the segment that held it is
//!   gone and after both restarts, with the `entry_id` its write answered, and the entries are
//!   exactly the acknowledged writes, each once.
//! - With the history off, the log is pruned as before (no hold keeps it), the entries route
//!   answers 503 and no database is created; a history turned on later starts where the log then
//!   starts: every write from there on is listed, none before.
//! - A history that was on, then off while the log moved past it, then on again, also goes on
//!   from where the log starts, and from then on keeps up and lets the log be pruned.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd::client::{Client, Debit};
use http::Method;
use serde_json::Value;

#[path = "common/process.rs"]
mod process;

use process::{runtime, Process};

/// A runtime whose tasks run while the test's thread waits for something else.
fn threaded_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The smallest segment the configuration allows: a few hundred debits each.
const SEGMENT_BYTES: &str = "65536";
/// Requests in flight at once while writing, so that the log's group commit batches them.
const IN_FLIGHT: usize = 16;
/// Snapshots the first server takes before it is stopped.
const SNAPSHOTS: f64 = 8.0;
/// How long pruning may take to catch up with the writes (a snapshot is due every 250 ms).
const PRUNED_WITHIN: Duration = Duration::from_secs(20);
/// How long the first server may take to reach [`SNAPSHOTS`] snapshots.
const SNAPSHOTS_WITHIN: Duration = Duration::from_secs(60);

/// Small segments, a snapshot every 200 records, one kept; the history on or off.
fn overrides(history: bool) -> Vec<(&'static str, &'static str)> {
    vec![
        ("CREDITD_STORAGE__SEGMENT_BYTES", SEGMENT_BYTES),
        ("CREDITD_SNAPSHOT__EVERY_RECORDS", "200"),
        ("CREDITD_SNAPSHOT__KEEP", "1"),
        // The service key funds its user with one large grant.
        ("CREDITD_LIMITS__SERVICE_KEY_GRANTS_PER_DAY", "1000000000"),
        (
            "CREDITD_HISTORY__ENABLED",
            if history { "true" } else { "false" },
        ),
    ]
}

/// The LSN in an `entry_id` (`ent_<lsn>`).
fn lsn(entry_id: &str) -> u64 {
    entry_id
        .strip_prefix("ent_")
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("not an entry id: {entry_id}"))
}

/// The first LSN of each log segment in `data_dir`, oldest first.
fn segments(data_dir: &Path) -> Vec<u64> {
    let mut firsts: Vec<u64> = std::fs::read_dir(data_dir.join("wal"))
        .expect("the log directory")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            creditd::wal::segment::parse_file_name(&name)
        })
        .collect();
    firsts.sort_unstable();
    firsts
}

/// The history's checkpoint: the first LSN it has not applied.
fn history_checkpoint(data_dir: &Path) -> u64 {
    let connection = rusqlite::Connection::open_with_flags(
        data_dir.join(creditd::history::FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the history database");
    let next: i64 = connection
        .query_row("SELECT next_lsn FROM checkpoint", [], |row| row.get(0))
        .expect("the checkpoint");
    u64::try_from(next).expect("a positive LSN")
}

/// Waits until the log no longer holds `lsn` (its segment was removed); the log's first LSN then.
fn wait_pruned_past(data_dir: &Path, lsn: u64) -> u64 {
    let deadline = Instant::now() + PRUNED_WITHIN;
    loop {
        let firsts = segments(data_dir);
        let oldest = firsts.first().copied().unwrap_or(0);
        if oldest > lsn {
            return oldest;
        }
        assert!(
            Instant::now() < deadline,
            "the log still starts at LSN {oldest} (segments {firsts:?}), not past {lsn}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debits `count` × 1 credit from `user`, [`IN_FLIGHT`] at a time; the LSN of each.
async fn debit_many(client: &Client, user: &str, count: usize) -> Vec<u64> {
    let mut lsns = Vec::with_capacity(count);
    let mut running = tokio::task::JoinSet::new();
    for n in 0..count {
        if running.len() == IN_FLIGHT {
            lsns.push(running.join_next().await.unwrap().unwrap());
        }
        let (client, user) = (client.clone(), user.to_owned());
        running.spawn(async move {
            let receipt = client
                .debit(&user, &Debit::amount(1), None)
                .await
                .unwrap_or_else(|error| panic!("debit {n}: {error}"));
            lsn(receipt.entry_id.as_deref().expect("a debit's entry id"))
        });
    }
    while let Some(done) = running.join_next().await {
        lsns.push(done.unwrap());
    }
    lsns
}

/// Debits `count` × 1 credit from `user` under the keys `key-0`, `key-1`, …, [`IN_FLIGHT`] at a
/// time, counting the answers in `answered`: each key with the LSN it answered, or `None` if the
/// request failed (the server went away).
async fn debit_keyed(
    client: &Client,
    user: &str,
    count: usize,
    answered: &Arc<AtomicUsize>,
) -> Vec<(String, Option<u64>)> {
    let mut results = Vec::with_capacity(count);
    let mut running = tokio::task::JoinSet::new();
    for n in 0..count {
        if running.len() == IN_FLIGHT {
            results.push(running.join_next().await.unwrap().unwrap());
        }
        let (client, user, answered) = (client.clone(), user.to_owned(), Arc::clone(answered));
        running.spawn(async move {
            let key = format!("key-{n}");
            let receipt = client.debit(&user, &Debit::amount(1), Some(&key)).await;
            let lsn = receipt
                .ok()
                .map(|receipt| lsn(receipt.entry_id.as_deref().expect("a debit's entry id")));
            if lsn.is_some() {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            (key, lsn)
        });
    }
    while let Some(done) = running.join_next().await {
        results.push(done.unwrap());
    }
    results
}

/// The value of the sample `name` (without labels) on the server's `/metrics`; 0 before it has
/// one.
async fn metric(client: &Client, name: &str) -> f64 {
    let (status, _, body) = client
        .send(Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| {
            value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {value}"))
        })
}

/// Every entry of `user`, newest first, page by page: (entry ids, the oldest entry).
async fn all_entries(client: &Client, user: &str) -> (Vec<String>, Option<Value>) {
    let mut ids = Vec::new();
    let mut oldest = None;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/users/{user}/entries?limit=1000&cursor={cursor}"),
            None => format!("/v1/users/{user}/entries?limit=1000"),
        };
        let (status, _, body) = client.send(Method::GET, &path, None, None).await.unwrap();
        let page: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{path}: {page}");
        for entry in page["entries"].as_array().unwrap() {
            ids.push(entry["entry_id"].as_str().unwrap().to_owned());
            oldest = Some(entry.clone());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (ids, oldest),
        }
    }
}

/// Asserts that `user`'s entries are exactly the writes at `lsns`, newest first, each once.
async fn assert_listed_exactly(client: &Client, user: &str, lsns: &BTreeSet<u64>) {
    let (ids, _) = all_entries(client, user).await;
    let listed: Vec<u64> = ids.iter().map(|id| lsn(id)).collect();
    let newest_first: Vec<u64> = lsns.iter().rev().copied().collect();
    if listed != newest_first {
        let listed_set: BTreeSet<u64> = listed.iter().copied().collect();
        let missing: Vec<_> = lsns.difference(&listed_set).take(10).collect();
        let extra: Vec<_> = listed_set.difference(lsns).take(10).collect();
        panic!(
            "{} entries listed, {} writes expected; missing (first 10) {missing:?}, not written \
             (first 10) {extra:?}",
            listed.len(),
            lsns.len()
        );
    }
}

#[test]
fn the_first_entry_outlives_pruned_segments_a_clean_restart_and_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let runtime = threaded_runtime();
    let mut written = BTreeSet::new();

    let first = Process::start_with(data, &overrides(true));
    let client = first.client();
    let credit = runtime.block_on(async {
        client.put_user("ada", None).await.unwrap();
        client.credit("ada", 1_000_000, None, None).await.unwrap()
    });
    let credit_id = credit.entry_id.expect("the credit's entry id");
    written.insert(lsn(&credit_id));
    // Writes until the server has taken many snapshots, each pruning the log. The snapshot
    // thread looks every 250 ms, so that takes a time, however many writes it brings: a release
    // build writes 20 000 in under two seconds.
    let started = Instant::now();
    let snapshots = runtime.block_on(async {
        loop {
            written.extend(debit_many(&client, "ada", 300).await);
            let taken = metric(&client, "creditd_snapshot_duration_seconds_count").await;
            if taken >= SNAPSHOTS {
                return taken;
            }
            assert!(
                started.elapsed() < SNAPSHOTS_WITHIN,
                "{taken} snapshots after {} writes",
                written.len()
            );
        }
    });
    let log_start = wait_pruned_past(data, lsn(&credit_id));
    eprintln!(
        "{snapshots} snapshots; the log starts at LSN {log_start} after {} writes",
        written.len()
    );
    let status = first.terminate();
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    // Killed in the middle of keyed writes: some answered, some in flight (applied or not), the
    // history most likely behind the log and perhaps inside a transaction.
    let second = Process::start_with(data, &overrides(true));
    let client = second.client();
    let answered = Arc::new(AtomicUsize::new(0));
    let writes = {
        let (client, answered) = (client.clone(), Arc::clone(&answered));
        runtime.spawn(async move { debit_keyed(&client, "ada", 2000, &answered).await })
    };
    let deadline = Instant::now() + PRUNED_WITHIN;
    while answered.load(Ordering::Relaxed) < 600 {
        assert!(Instant::now() < deadline, "the writes stalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    second.kill_9();
    let keyed = runtime.block_on(writes).unwrap();
    let unanswered: Vec<&String> = keyed
        .iter()
        .filter(|(_, lsn)| lsn.is_none())
        .map(|(key, _)| key)
        .collect();
    eprintln!(
        "killed with {} of {} keyed writes unanswered",
        unanswered.len(),
        keyed.len()
    );
    assert!(!unanswered.is_empty(), "the kill came after the last write");
    written.extend(keyed.iter().filter_map(|(_, lsn)| *lsn));
    let checkpoint = history_checkpoint(data);
    let log_start = segments(data)[0];
    eprintln!(
        "the history stopped at LSN {checkpoint}, the last answered write is LSN {}, the log \
         starts at {log_start}",
        written.last().unwrap()
    );
    assert!(
        log_start <= checkpoint,
        "the log lost records the history had not read"
    );

    let third = Process::start_with(data, &overrides(true));
    let client = third.client();
    // The client retries what was not answered: each key is applied once, now or before the kill.
    runtime.block_on(async {
        for key in unanswered {
            let receipt = client
                .debit("ada", &Debit::amount(1), Some(key))
                .await
                .unwrap_or_else(|error| panic!("retrying {key}: {error}"));
            written.insert(lsn(receipt.entry_id.as_deref().expect("entry id")));
        }
    });
    written.extend(runtime.block_on(debit_many(&client, "ada", 100)));
    runtime.block_on(async {
        let (ids, oldest) = all_entries(&client, "ada").await;
        let oldest = oldest.expect("entries");
        assert_eq!(oldest["entry_id"], credit_id.as_str(), "{oldest}");
        assert_eq!(oldest["kind"], "grant");
        assert_eq!(oldest["amount"], 1_000_000);
        assert_eq!(oldest["balance_after"], 1_000_000);
        assert_eq!(ids.len(), written.len(), "one entry per acknowledged write");
        assert_listed_exactly(&client, "ada", &written).await;
        let wallet = client.wallet("ada", None).await.unwrap();
        assert_eq!(wallet.balance, 1_000_000 - (written.len() as i64 - 1));
    });
    // The history caught up lets the log be pruned again.
    let last = *written.iter().max().unwrap();
    written.extend(runtime.block_on(debit_many(&client, "ada", 1500)));
    wait_pruned_past(data, last);
}

#[test]
fn without_the_history_the_log_is_pruned_and_a_history_turned_on_later_starts_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let runtime = runtime();

    let off = Process::start_with(data, &overrides(false));
    let client = off.client();
    let credit = runtime.block_on(async {
        client.put_user("ada", None).await.unwrap();
        client.credit("ada", 1_000_000, None, None).await.unwrap()
    });
    let credit_lsn = lsn(credit.entry_id.as_deref().expect("entry id"));
    let mut written: Vec<u64> = vec![credit_lsn];
    written.extend(runtime.block_on(debit_many(&client, "ada", 1500)));
    wait_pruned_past(data, credit_lsn);
    runtime.block_on(async {
        let (status, _, body) = client
            .send(Method::GET, "/v1/users/ada/entries", None, None)
            .await
            .unwrap();
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 503, "{problem}");
        assert_eq!(
            problem["type"],
            "https://creditd.dev/problems/history-disabled"
        );
    });
    assert!(
        !data.join(creditd::history::FILE_NAME).exists(),
        "a server without the history created its database"
    );
    assert!(off.terminate().success());
    // The clean stop's snapshot may have pruned more: the log starts here now.
    let log_start = segments(data)[0];
    assert!(log_start > credit_lsn);

    let on = Process::start_with(data, &overrides(true));
    let client = on.client();
    written.extend(runtime.block_on(debit_many(&client, "ada", 50)));
    let expected: BTreeSet<u64> = written
        .iter()
        .copied()
        .filter(|&lsn| lsn >= log_start)
        .collect();
    assert!(expected.len() > 50, "the log kept some writes of before");
    runtime.block_on(assert_listed_exactly(&client, "ada", &expected));
    drop(on);
}

#[test]
fn a_history_turned_off_for_a_while_goes_on_from_where_the_log_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let runtime = runtime();

    let on = Process::start_with(data, &overrides(true));
    let client = on.client();
    let credit = runtime.block_on(async {
        client.put_user("ada", None).await.unwrap();
        client.credit("ada", 1_000_000, None, None).await.unwrap()
    });
    let credit_lsn = lsn(credit.entry_id.as_deref().expect("entry id"));
    let mut written: Vec<u64> = vec![credit_lsn];
    written.extend(runtime.block_on(debit_many(&client, "ada", 20)));
    let before_off = written.clone();
    assert!(on.terminate().success());

    // Off: the history's database stays as it was, and its checkpoint holds nothing back.
    let off = Process::start_with(data, &overrides(false));
    let client = off.client();
    let during_off = runtime.block_on(debit_many(&client, "ada", 1500));
    let last_before_off = *before_off.iter().max().unwrap();
    wait_pruned_past(data, last_before_off);
    written.extend(&during_off);
    assert!(off.terminate().success());
    let log_start = segments(data)[0];

    let on = Process::start_with(data, &overrides(true));
    let client = on.client();
    let after = runtime.block_on(debit_many(&client, "ada", 50));
    written.extend(&after);
    // What the history had, then everything the log still holds.
    let expected: BTreeSet<u64> = written
        .iter()
        .copied()
        .filter(|&lsn| before_off.contains(&lsn) || lsn >= log_start)
        .collect();
    runtime.block_on(assert_listed_exactly(&client, "ada", &expected));
    // Caught up, the history lets the log be pruned again.
    let more = runtime.block_on(debit_many(&client, "ada", 1500));
    wait_pruned_past(data, *after.iter().max().unwrap());
    drop(more);
    drop(on);
}
