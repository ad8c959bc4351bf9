//! Removing what `history.retention` no longer keeps: entries (the pools' too) and payments
//! written before the cutoff. Report rollups and the audit chain are kept whatever the retention: the rollups are
//! small and answer for the past; the chain cannot lose its start and still be verified.
//!
//! The feeder's thread purges between its steps, oldest entries first, a bounded number of rows
//! per transaction, so a purge never holds the database's write lock for long and the history's
//! lag stays bounded while it runs. Each transaction looks at the oldest [`PURGE_ROWS`] entries
//! and removes those before the first one written at or after the cutoff: a prefix of the LSNs,
//! never an entry above one it keeps. Entries are in log order, which is time order up to the
//! clock's steps back; an entry stamped earlier than one before it stays until that one goes.
//! A listing follows an account's entries down to the first one missing (`reader`), so a hole
//! above a kept entry would hide it. The purge ends at the first transaction that removes none.

use rusqlite::params;

use super::store::Store;
use super::StoreError;

/// Entries looked at per purge transaction.
pub const PURGE_ROWS: u64 = 50_000;

/// What one purge transaction removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Entries removed, the pools' included.
    pub entries: u64,
    /// Payments removed.
    pub payments: u64,
}

/// Removes, in one transaction, the oldest entries (at most `rows`) up to the first one written
/// at or after `cutoff_ms`, the pools' likewise, and (when `payments` is true) every payment
/// started before it.
pub fn purge_step(
    store: &mut Store,
    cutoff_ms: i64,
    rows: u64,
    payments: bool,
) -> Result<Purged, StoreError> {
    let rows = i64::try_from(rows).map_err(|_| StoreError::Overflow("rows"))?;
    let transaction = store.connection.transaction()?;
    let entries = transaction.execute(&prefix_before("entries"), params![rows, cutoff_ms])?;
    // The pools' ledger goes the same way, counted with the entries.
    let pool_entries =
        transaction.execute(&prefix_before("pool_entries"), params![rows, cutoff_ms])?;
    let removed_payments = if payments {
        transaction.execute(
            "DELETE FROM payments WHERE created_ms < ?1",
            params![cutoff_ms],
        )?
    } else {
        0
    };
    transaction.commit()?;
    Ok(Purged {
        entries: (entries + pool_entries) as u64,
        payments: removed_payments as u64,
    })
}

/// The statement removing the oldest rows of `table` (at most `?1` of them) below the first one
/// written at or after `?2`: all `?1` when none of them was.
fn prefix_before(table: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE lsn < coalesce(
             (SELECT min(lsn) FROM (SELECT lsn, created_ms FROM {table} ORDER BY lsn LIMIT ?1)
              WHERE created_ms >= ?2),
             (SELECT max(lsn) + 1 FROM (SELECT lsn FROM {table} ORDER BY lsn LIMIT ?1)),
             0)"
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;
    use crate::history::entry::test_debit;
    use crate::history::reader::{Filter, Reader};

    fn lsns(reader: &Reader, user: &str, before: Option<u64>, limit: u32) -> Vec<u64> {
        reader
            .entries("acme", user, &Filter::default(), before, limit)
            .unwrap()
            .iter()
            .map(|listed| listed.lsn)
            .collect()
    }

    #[test]
    fn listings_cross_index_blocks_and_a_purge_removes_only_what_is_older_than_the_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        let mut store = Store::open(&path).unwrap();
        // ada's entries lie in blocks 0, 1, 3 and 40 of the index; bob's in between.
        let ada = [3u64, 70_000, 200_000, 200_001, 2_621_440];
        let bob = [4u64, 70_001, 2_621_441];
        let mut feed = store.begin().unwrap();
        let mut all: Vec<(&str, u64)> = ada.iter().map(|&lsn| ("ada", lsn)).collect();
        all.extend(bob.iter().map(|&lsn| ("bob", lsn)));
        all.sort_by_key(|&(_, lsn)| lsn);
        for &(user, lsn) in &all {
            feed.insert(&test_debit(user, lsn, lsn as i64)).unwrap();
        }
        feed.commit(2_621_442).unwrap();
        let reader = Reader::new(&path, Arc::new(AtomicU64::new(2_621_442)));
        let newest_first: Vec<u64> = ada.iter().rev().copied().collect();
        assert_eq!(lsns(&reader, "ada", None, 50), newest_first);
        assert_eq!(lsns(&reader, "ada", None, 2), [2_621_440, 200_001]);
        assert_eq!(lsns(&reader, "ada", Some(200_001), 2), [200_000, 70_000]);
        assert_eq!(lsns(&reader, "ada", Some(70_000), 50), [3]);
        assert_eq!(lsns(&reader, "bob", None, 50), [2_621_441, 70_001, 4]);
        assert!(lsns(&reader, "cy", None, 50).is_empty(), "no such account");

        // Entries written before time 70 001 go, in transactions looking at 2 entries each.
        let mut removed = 0;
        loop {
            let purged = purge_step(&mut store, 70_001, 2, true).unwrap();
            if purged.entries == 0 {
                break;
            }
            removed += purged.entries;
        }
        assert_eq!(removed, 3, "3, 4 and 70 000");
        assert_eq!(
            lsns(&reader, "ada", None, 50),
            [2_621_440, 200_001, 200_000]
        );
        assert_eq!(lsns(&reader, "bob", None, 50), [2_621_441, 70_001]);
        // Nothing older is left: a second purge removes nothing.
        assert_eq!(
            purge_step(&mut store, 70_001, 100, true).unwrap(),
            Purged::default()
        );
    }

    #[test]
    fn a_purge_never_removes_an_entry_above_one_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        let mut store = Store::open(&path).unwrap();
        // The clock stepped back between LSN 11 and 12: 12 is stamped before 11.
        let mut feed = store.begin().unwrap();
        for (lsn, created_ms) in [(10, 900), (11, 1_001), (12, 1_000), (13, 1_002)] {
            feed.insert(&test_debit("ada", lsn, created_ms)).unwrap();
        }
        feed.commit(14).unwrap();
        let reader = Reader::new(&path, Arc::new(AtomicU64::new(14)));

        // 12 is older than the cutoff but comes after 11, which is not: it stays, since a
        // listing's walk stops at a hole and would not reach 11.
        let purged = purge_step(&mut store, 1_001, 100, false).unwrap();
        assert_eq!(purged.entries, 1, "10 alone");
        assert_eq!(lsns(&reader, "ada", None, 50), [13, 12, 11]);
        // A cursor retention removed gives an empty page; one that never was an entry does not.
        assert!(lsns(&reader, "ada", Some(10), 50).is_empty());
        assert_eq!(lsns(&reader, "ada", Some(12), 50), [11]);
        let never = reader.entries("acme", "ada", &Filter::default(), Some(20), 50);
        assert!(matches!(never, Err(StoreError::Cursor)), "{never:?}");

        // Once 11 is past the cutoff, 11 and 12 go together; 13 stays.
        assert_eq!(
            purge_step(&mut store, 1_002, 100, false).unwrap().entries,
            2
        );
        assert_eq!(lsns(&reader, "ada", None, 50), [13]);
        // Looking at one row per transaction takes the same prefix, a row at a time.
        assert_eq!(purge_step(&mut store, 1_002, 1, false).unwrap().entries, 0);
        assert_eq!(purge_step(&mut store, 1_003, 1, false).unwrap().entries, 1);
        assert!(lsns(&reader, "ada", None, 50).is_empty());
    }
}
