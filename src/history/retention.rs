//! Removing what `history.retention` no longer keeps: entries (the pools' too) and payments
//! written before the cutoff. Report rollups and the audit chain are kept whatever the retention: the rollups are
//! small and answer for the past; the chain cannot lose its start and still be verified.
//!
//! The feeder's thread purges between its steps, oldest entries first, a bounded number of rows
//! per transaction, so a purge never holds the database's write lock for long and the history's
//! lag stays bounded while it runs. Entries are in log order, which is time order up to the
//! clock's steps back, so each transaction looks at the oldest [`PURGE_ROWS`] entries and removes
//! those written before the cutoff; the purge ends at the first transaction that removes none.

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

/// Removes, in one transaction, the entries among the oldest `rows` written before `cutoff_ms`,
/// and (when `payments` is true) every payment started before it.
pub fn purge_step(
    store: &mut Store,
    cutoff_ms: i64,
    rows: u64,
    payments: bool,
) -> Result<Purged, StoreError> {
    let rows = i64::try_from(rows).map_err(|_| StoreError::Overflow("rows"))?;
    let transaction = store.connection.transaction()?;
    let entries = transaction.execute(
        "DELETE FROM entries
         WHERE lsn IN (SELECT lsn FROM entries ORDER BY lsn LIMIT ?1) AND created_ms < ?2",
        params![rows, cutoff_ms],
    )?;
    // The pools' ledger goes the same way, counted with the entries.
    let pool_entries = transaction.execute(
        "DELETE FROM pool_entries
         WHERE lsn IN (SELECT lsn FROM pool_entries ORDER BY lsn LIMIT ?1) AND created_ms < ?2",
        params![rows, cutoff_ms],
    )?;
    let removed_payments = if payments {
        transaction.execute(
            "DELETE FROM payments WHERE created_ms < ?1",
            params![cutoff_ms],
        )?
    } else {
        0
    };
    if entries > 0 {
        // A listing walks an account's blocks down to its first entry: not below what is left.
        transaction.execute(
            "UPDATE accounts SET first_lsn = (SELECT coalesce(min(lsn), first_lsn) FROM entries)
             WHERE first_lsn < (SELECT coalesce(min(lsn), 0) FROM entries)",
            [],
        )?;
    }
    transaction.commit()?;
    Ok(Purged {
        entries: (entries + pool_entries) as u64,
        payments: removed_payments as u64,
    })
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
}
