//! Reading the history for the API: a few read-only connections to the database, used one
//! request at a time, and the feeder's progress so that a reader can wait for its own writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::worker::Nudge;
use super::StoreError;

/// Connections kept open between requests.
const POOL: usize = 8;

/// What entries to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only spends of this catalogue action.
    pub action: Option<String>,
    /// Only this currency.
    pub currency: Option<String>,
    /// Only entries written at or after this time (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Only entries written before this time.
    pub to_ms: Option<i64>,
}

/// One entry as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its LSN (`entry_id` is `ent_<lsn>`).
    pub lsn: u64,
    /// The kind.
    pub kind: String,
    /// Positive into the wallet, negative out.
    pub amount: i64,
    /// The currency.
    pub currency: String,
    /// The balance after it (none for a reservation's release or expiry).
    pub balance_after: Option<i64>,
    /// The catalogue action.
    pub action: Option<String>,
    /// Its quantity.
    pub quantity: Option<i64>,
    /// The description.
    pub description: Option<String>,
    /// The caller's reference.
    pub reference: Option<String>,
    /// The caller's metadata, a JSON object as text.
    pub metadata: Option<String>,
    /// Who wrote it.
    pub actor: String,
    /// When (ms since the epoch).
    pub created_ms: i64,
    /// The credit pool that paid part of this spend, and what it paid (the entry's `amount` is
    /// the wallet's part).
    pub pool: Option<(String, i64)>,
}

/// One row of the entries query as the API lists it.
fn listed_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Listed> {
    Ok(Listed {
        lsn: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        kind: row.get(1)?,
        amount: row.get(2)?,
        currency: row.get(3)?,
        balance_after: row.get(4)?,
        action: row.get(5)?,
        quantity: row.get(6)?,
        description: row.get(7)?,
        reference: row.get(8)?,
        metadata: row.get(9)?,
        actor: row.get(10)?,
        created_ms: row.get(11)?,
        pool: match (
            row.get::<_, Option<String>>(12)?,
            row.get::<_, Option<i64>>(13)?,
        ) {
            (Some(pool), Some(paid)) => Some((pool, paid.saturating_neg())),
            _ => None,
        },
    })
}

/// The entry at LSN `?1` if it is account `?2`'s, its pool's part, the LSN of the account's entry
/// before it, and whether it passes the filter (`?3` to `?7`, each NULL for none). Subqueries,
/// not a LEFT JOIN, which SQLite would plan anew at every new set of values bound.
pub(crate) const ENTRY_AT: &str = "SELECT e.lsn, e.kind, e.amount, e.currency, e.balance_after,
         e.action, e.quantity, e.description, e.reference, e.metadata, e.actor, e.created_ms,
         (SELECT p.pool_id FROM pool_entries p WHERE p.lsn = e.lsn),
         (SELECT p.amount FROM pool_entries p WHERE p.lsn = e.lsn),
         e.prev_lsn,
         (?3 IS NULL OR e.kind = ?3) AND (?4 IS NULL OR e.action = ?4)
         AND (?5 IS NULL OR e.currency = ?5)
         AND (?6 IS NULL OR e.created_ms >= ?6) AND (?7 IS NULL OR e.created_ms < ?7)
     FROM entries e WHERE e.lsn = ?1 AND e.account = ?2";

/// Read access to the history.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    pool: Mutex<Vec<Connection>>,
    applied: Arc<AtomicU64>,
    nudge: Arc<Nudge>,
}

impl Reader {
    /// A reader of the database at `path`; `applied` is the feeder's next LSN as it publishes it.
    pub fn new(path: &Path, applied: Arc<AtomicU64>) -> Reader {
        Reader {
            path: path.to_path_buf(),
            pool: Mutex::new(Vec::new()),
            applied,
            nudge: Arc::default(),
        }
    }

    /// The same reader, asking the feeder's thread through `nudge` when it is behind.
    pub fn nudging(self, nudge: Arc<Nudge>) -> Reader {
        Reader { nudge, ..self }
    }

    /// The first LSN the history has not applied yet.
    pub fn next_lsn(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Asks the feeder's thread for a step now instead of at the end of its pause: a read that
    /// must see records the history has not applied yet.
    pub fn ask_for_step(&self) {
        self.nudge.wake();
    }

    /// `user`'s entries in `tenant`, newest first, before `before_lsn` (a cursor), at most
    /// `limit`.
    ///
    /// Walks the account's chain (see `store`): from the account's newest entry, or from the
    /// entry before the cursor, one lookup by LSN per entry, down to its first entry, or to where
    /// retention cut the chain (an entry that is gone). The cursor must be one of the account's
    /// entries, as a `next_cursor` is, or one retention removed (an empty page):
    /// [`StoreError::Cursor`] otherwise.
    pub fn entries(
        &self,
        tenant: &str,
        user: &str,
        filter: &Filter,
        before_lsn: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Listed>, StoreError> {
        let before = before_lsn.map_or(i64::MAX, |lsn| i64::try_from(lsn).unwrap_or(i64::MAX));
        self.with_connection(|connection| {
            // One read transaction for the whole walk: every lookup sees the same commit of the
            // feeder (and of retention), however many statements the page takes.
            let snapshot = connection.unchecked_transaction()?;
            let connection: &Connection = &snapshot;
            let account = connection
                .prepare_cached(super::store::ACCOUNT_AND_HEAD)?
                .query_row(params![tenant, user], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
                })
                .optional()?;
            let Some((account, head)) = account else {
                return Ok(Vec::new());
            };
            let mut next = head;
            if before_lsn.is_some() {
                let cursor: Option<(i64, Option<i64>)> = connection
                    .prepare_cached("SELECT account, prev_lsn FROM entries WHERE lsn = ?1")?
                    .query_row(params![before], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                match cursor {
                    Some((owner, prev)) if owner == account => next = prev,
                    // Another account's entry: walking this account's chain down to it would
                    // look at every newer entry of the account, for a cursor no page gave.
                    Some(_) => return Err(StoreError::Cursor),
                    None => {
                        // Retention removes the oldest entries first, and nothing after an entry
                        // it keeps: a cursor below the oldest entry left went with everything
                        // before it. Above it, no entry ever had that LSN.
                        let oldest: Option<i64> = connection
                            .prepare_cached("SELECT min(lsn) FROM entries")?
                            .query_row([], |row| row.get(0))?;
                        if oldest.is_none_or(|oldest| before < oldest) {
                            return Ok(Vec::new());
                        }
                        return Err(StoreError::Cursor);
                    }
                }
            }
            let mut statement = connection.prepare_cached(ENTRY_AT)?;
            let mut listed = Vec::new();
            while let Some(lsn) = next {
                if listed.len() >= limit as usize {
                    break;
                }
                let row = statement
                    .query_row(
                        params![
                            lsn,
                            account,
                            filter.kind,
                            filter.action,
                            filter.currency,
                            filter.from_ms,
                            filter.to_ms,
                        ],
                        |row| {
                            let wanted = row.get::<_, Option<bool>>(15)?.unwrap_or(false);
                            Ok((listed_row(row)?, row.get::<_, Option<i64>>(14)?, wanted))
                        },
                    )
                    .optional()?;
                // Gone: retention removed it, and everything before it.
                let Some((entry, prev, wanted)) = row else {
                    break;
                };
                if wanted && lsn < before {
                    listed.push(entry);
                }
                // LSNs fall along the chain; anything else ends it rather than loop.
                next = prev.filter(|prev| *prev < lsn);
            }
            Ok(listed)
        })
    }

    /// Runs `read` on a pooled read-only connection (opened if none is free).
    pub(crate) fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool.lock().pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => Connection::open_with_flags(
                &self.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?,
        };
        let result = read(&connection);
        let mut pool = self.pool.lock();
        if pool.len() < POOL {
            pool.push(connection);
        }
        result
    }
}
