//! The history database: one SQLite file, its schema, the feeder's transaction and the
//! checkpoint (the first LSN not yet applied), kept in the same transaction as the rows.
//!
//! `journal_mode = WAL` lets readers run beside the feeder; `synchronous = FULL` makes a commit
//! durable before the feeder moves its retention hold past it (the log may then drop what the
//! commit holds).

use std::path::Path;

use std::collections::HashMap;

use compact_str::CompactString;
use foldhash::fast::RandomState;

use rusqlite::{params, Connection, OptionalExtension};

use super::audit::{self, Chain};
use super::entry::{self, Entry};
use super::rollup::{Rollup, ROLLUP_SCHEMA};
use crate::engine::event::Event;

/// The schema's version, kept in the database.
const SCHEMA_VERSION: i64 = 5;

/// The feeder's page cache, KiB.
const FEEDER_CACHE_KIB: i64 = 64 * 1024;

/// The checkpoint: the first LSN not yet applied.
const CHECKPOINT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS checkpoint (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    next_lsn INTEGER NOT NULL,
    schema   INTEGER NOT NULL
);
";

/// The tables, each part of the history's (the checkpoint first).
const SCHEMAS: &[&str] = &[
    CHECKPOINT_SCHEMA,
    ENTRIES_SCHEMA,
    super::payments::PAYMENTS_SCHEMA,
    super::pools::POOLS_SCHEMA,
    audit::AUDIT_SCHEMA,
    ROLLUP_SCHEMA,
];

/// The ledger: one row per movement of a wallet, in log order.
///
/// `entries` is a rowid table keyed by the LSN, so the feeder only ever appends to its end. Each
/// entry names the LSN of its account's entry before it (`prev_lsn`, none for the first), and
/// `account_heads` the LSN of each account's newest: a user's listing starts at the head (or
/// its cursor) and walks back, one lookup by LSN per entry, down to the account's first entry
/// or the first one retention removed (it removes the oldest LSNs first, never one above an
/// entry it keeps). `accounts.first_lsn` is the LSN an account's first entry had when it was
/// created, and is not kept up to date. So an entry costs one insert at the end of
/// one B-tree, and a step one upsert per account it touched, in account order, into
/// `recent_heads` (see [`RECENT_HEADS_ROWS`]). Schema 3 kept an
/// index by (block of 2^16 LSNs, account) instead: its inserts, each a descent to a page of the
/// newest block chosen by the account, were a third of the feeder's CPU (`cargo bench --bench
/// history_feed`), and schema 3 files are migrated when opened ([`migrate_from_3`]).
///
/// `accounts` names the (tenant, user) an entry belongs to; the view `ledger` joins them for
/// people reading the file with SQLite tools.
const ENTRIES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id        INTEGER PRIMARY KEY,
    tenant    TEXT    NOT NULL,
    user_id   TEXT    NOT NULL,
    first_lsn INTEGER NOT NULL,
    UNIQUE (tenant, user_id)
);
CREATE TABLE IF NOT EXISTS account_heads (
    id       INTEGER PRIMARY KEY,
    last_lsn INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS recent_heads (
    id       INTEGER PRIMARY KEY,
    last_lsn INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    lsn             INTEGER PRIMARY KEY,
    account         INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    currency        TEXT    NOT NULL,
    balance_after   INTEGER,
    available_after INTEGER NOT NULL,
    action          TEXT,
    quantity        INTEGER,
    description     TEXT,
    reference       TEXT,
    metadata        TEXT,
    actor           TEXT    NOT NULL,
    created_ms      INTEGER NOT NULL,
    prev_lsn        INTEGER
);
CREATE VIEW IF NOT EXISTS ledger AS
    SELECT 'ent_' || e.lsn AS entry_id, a.tenant, a.user_id, e.kind, e.amount, e.currency,
           e.balance_after, e.action, e.quantity, e.description, e.reference, e.metadata,
           e.actor, strftime('%Y-%m-%dT%H:%M:%fZ', e.created_ms / 1000.0, 'unixepoch') AS created_at
    FROM entries e JOIN accounts a ON a.id = e.account;
";

/// Schema 3 to 4, in one transaction: each entry gets its account's entry before it, read in
/// one pass over schema 3's index (by block, then account); each account its newest entry; and
/// the index goes. About a few seconds per million entries, once.
const MIGRATE_FROM_3: &str = "
ALTER TABLE entries ADD COLUMN prev_lsn INTEGER;
CREATE TABLE account_heads (
    id       INTEGER PRIMARY KEY,
    last_lsn INTEGER NOT NULL
);
UPDATE entries SET prev_lsn = chain.prev_lsn
    FROM (SELECT lsn, lag(lsn) OVER (PARTITION BY account ORDER BY lsn) AS prev_lsn
          FROM entries) AS chain
    WHERE entries.lsn = chain.lsn AND chain.prev_lsn IS NOT NULL;
INSERT INTO account_heads (id, last_lsn) SELECT account, max(lsn) FROM entries GROUP BY account;
DROP INDEX IF EXISTS entries_by_account;
UPDATE checkpoint SET schema = 4 WHERE id = 1;
";

/// Schema 4 to 5: the heads of the accounts written since the last merge get a table of their
/// own, empty at first: every head is still in `account_heads`. Run again after a crash
/// between its two statements, it does the same.
const MIGRATE_FROM_4: &str = "
CREATE TABLE IF NOT EXISTS recent_heads (
    id       INTEGER PRIMARY KEY,
    last_lsn INTEGER NOT NULL
);
UPDATE checkpoint SET schema = 5 WHERE id = 1;
";

/// Heads held in `recent_heads` past which a commit merges them into `account_heads`.
///
/// A step upserts the head of every account it touched. With a million accounts, whose heads
/// fill about 3 500 pages, a step of 20 000 records touched nearly every page of
/// `account_heads`, and each went to the write-ahead file and back to the database at every
/// commit. `recent_heads` holds only the heads written since the last merge, so a step's
/// upserts land on a few hundred pages, and the large table takes them once every several
/// steps. A listing reads a head from `recent_heads` first and from `account_heads` when it is
/// not there; both tables change in the feeder's transaction only, so a reader's snapshot sees
/// them at one commit, before a merge or after it. Below this many accounts the heads stay in
/// `recent_heads`, and `account_heads` is not written at all.
pub const RECENT_HEADS_ROWS: u64 = 250_000;

/// Accounts the feeder remembers by default (`history.account_cache`).
pub const DEFAULT_ACCOUNT_CACHE: usize = 1_000_000;

/// The statement that writes one entry.
const INSERT_ENTRY: &str = "INSERT INTO entries (lsn, account, kind, amount, currency,
        balance_after, available_after, action, quantity, description, reference, metadata,
        actor, created_ms, prev_lsn)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// Why the database refused something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database's directory could not be created.
    #[error("{}: {source}", dir.display())]
    Dir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was written by a newer creditd.
    #[error(
        "the history database has schema {found}, this creditd knows {SCHEMA_VERSION}: move \
         history.sqlite3 aside and a new one is built from what the log still holds"
    )]
    Schema {
        /// What the file says.
        found: i64,
    },
    /// A durable record of the log does not decode.
    #[error("record LSN {0} does not decode: {1}")]
    Undecodable(u64, String),
    /// A number does not fit SQLite's signed 64 bits.
    #[error("{0} does not fit the database")]
    Overflow(&'static str),
    /// A listing's cursor is not an entry of the account listed (nor one retention removed).
    #[error("cursor is not an entry of this user")]
    Cursor,
    /// The audit record of an event could not be written.
    #[error("the audit record of LSN {0}: {1}")]
    Audit(u64, String),
    /// The audit chain's anchored head is not a hash creditd wrote.
    #[error("the audit chain's head (audit_head) is damaged; run creditd audit verify")]
    AuditHead,
    /// A stored value does not decode (see `rollup`).
    #[error("damaged {0} in the history database")]
    Damaged(&'static str),
}

/// The history database.
#[derive(Debug)]
pub struct Store {
    pub(super) connection: Connection,
    /// Account ids of the accounts the feeder met lately.
    accounts: Accounts,
    /// Heads in `recent_heads` past which a commit merges them ([`RECENT_HEADS_ROWS`]).
    recent_heads_rows: u64,
}

impl Store {
    /// Opens the database at `path`, creating it (and its schema) if it does not exist.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        // Entries land at random places of the (tenant, user) order: with SQLite's default 2 MiB
        // cache most inserts read a page back from the file, and a step's dirty pages spill to
        // the write-ahead file before its commit.
        connection.pragma_update(None, "cache_size", -FEEDER_CACHE_KIB)?;
        // Every part of the history keeps its statements prepared: more than rusqlite's 16.
        connection.set_prepared_statement_cache_capacity(64);
        // The version is checked before the tables are made: an older file's tables may lack
        // columns the newer statements name.
        connection.execute_batch(CHECKPOINT_SCHEMA)?;
        let found: Option<i64> = connection
            .query_row("SELECT schema FROM checkpoint WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?;
        match found {
            Some(3) => {
                migrate_from_3(&connection)?;
                connection.execute_batch(MIGRATE_FROM_4)?;
            }
            Some(4) => connection.execute_batch(MIGRATE_FROM_4)?,
            Some(found) if found != SCHEMA_VERSION => return Err(StoreError::Schema { found }),
            _ => {}
        }
        for schema in SCHEMAS {
            connection.execute_batch(schema)?;
        }
        connection.execute(
            "INSERT OR IGNORE INTO checkpoint (id, next_lsn, schema) VALUES (1, 1, ?1)",
            params![SCHEMA_VERSION],
        )?;
        let schema: i64 =
            connection.query_row("SELECT schema FROM checkpoint WHERE id = 1", [], |row| {
                row.get(0)
            })?;
        if schema != SCHEMA_VERSION {
            return Err(StoreError::Schema { found: schema });
        }
        Ok(Store {
            connection,
            accounts: Accounts::new(DEFAULT_ACCOUNT_CACHE),
            recent_heads_rows: RECENT_HEADS_ROWS,
        })
    }

    /// The first LSN not yet applied.
    pub fn next_lsn(&self) -> Result<u64, StoreError> {
        let next: i64 = self.connection.query_row(
            "SELECT next_lsn FROM checkpoint WHERE id = 1",
            [],
            |row| row.get(0),
        )?;
        u64::try_from(next).map_err(|_| StoreError::Overflow("next_lsn"))
    }

    /// Forgets the account ids it remembers: after a transaction that did not commit, the ids it
    /// gave new accounts may be given again.
    pub fn forget_accounts(&mut self) {
        self.accounts.clear();
    }

    /// Remembers about `capacity` accounts from now on (`history.account_cache`; the default is
    /// [`DEFAULT_ACCOUNT_CACHE`]). Any number is correct: an account met in a step is remembered
    /// until the step commits whatever the capacity, and one not remembered is read back.
    pub fn set_account_cache(&mut self, capacity: usize) {
        self.accounts.capacity = capacity;
    }

    /// Merges the heads into `account_heads` once `recent_heads` holds more than `rows`
    /// ([`RECENT_HEADS_ROWS`] unless set): tests merge often.
    #[cfg(test)]
    pub(crate) fn set_recent_heads_rows(&mut self, rows: u64) {
        self.recent_heads_rows = rows;
    }

    /// The account lookups since the last call, and how many accounts it remembers now.
    pub fn take_lookups(&mut self) -> (Lookups, usize) {
        (
            std::mem::take(&mut self.accounts.lookups),
            self.accounts.len,
        )
    }

    /// Starts the feeder's transaction.
    pub fn begin(&mut self) -> Result<Feed<'_>, StoreError> {
        // Forgotten between steps only: an account met earlier in a step has its newest entry in
        // memory alone until the step commits.
        self.accounts.trim();
        let Store {
            connection,
            accounts,
            recent_heads_rows,
        } = self;
        let connection: &Connection = connection;
        // The connection is borrowed shared, so the step's statement and its transaction can
        // live side by side; `&mut self` still rules out a second transaction meanwhile.
        let transaction = connection.unchecked_transaction()?;
        let insert = connection.prepare_cached(INSERT_ENTRY)?;
        Ok(Feed {
            transaction,
            insert,
            accounts,
            heads: Vec::new(),
            recent_heads_rows: *recent_heads_rows,
            audit: Chain::default(),
            rollup: Rollup::default(),
        })
    }

    /// How many entries the database holds.
    pub fn count(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .connection
            .query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
        u64::try_from(count).map_err(|_| StoreError::Overflow("count"))
    }
}

/// The feeder's transaction: entries and audit records, then the checkpoint, committed together.
pub struct Feed<'c> {
    transaction: rusqlite::Transaction<'c>,
    /// The entry insert, looked up in the statement cache once per step rather than per entry
    /// (the lookup hashes the statement's text).
    insert: rusqlite::CachedStatement<'c>,
    accounts: &'c mut Accounts,
    /// (account, LSN) of every entry of the step: the accounts' new heads, written at commit.
    heads: Vec<(i64, i64)>,
    /// Heads in `recent_heads` past which the commit merges them.
    recent_heads_rows: u64,
    audit: Chain,
    /// The step's usage and revenue counters, written at commit.
    rollup: Rollup,
}

/// The id of the account of (`?1` tenant, `?2` user) and the LSN of its newest entry (NULL when
/// it has none): from `recent_heads` if written since the last merge, else from `account_heads`.
///
/// A subquery, not a LEFT JOIN: SQLite plans that join anew for each new pair of values bound
/// (its statement expires at every rebinding and is prepared again on its next step, which took
/// a quarter of the feeder's CPU with 100 000 users), the subquery once.
pub(crate) const ACCOUNT_AND_HEAD: &str = "SELECT a.id,
         coalesce((SELECT r.last_lsn FROM recent_heads r WHERE r.id = a.id),
                  (SELECT h.last_lsn FROM account_heads h WHERE h.id = a.id))
     FROM accounts a WHERE a.tenant = ?1 AND a.user_id = ?2";

/// The accounts the feeder met lately, tenant → user → account, looked up without allocating.
///
/// When it holds more than its capacity (checked between steps only, [`Accounts::trim`]) it
/// keeps at most half of it, only accounts met since the trim before, and forgets the rest: the
/// accounts in use stay remembered, which a cache forgotten whole when full did not do, and
/// memory stays bounded: 123 MiB more RSS for the default million (ids of 15 bytes, measured)
/// when keys were boxed, 15 MiB less with keys held inline (two alternating pairs), so about 115
/// bytes an account. A hit costs a flag set.
///
/// With 1 M users debited uniformly at saturation, the lookups of the accounts it did not
/// remember (a cache of 100 000 then) were two fifths of the feeder's CPU (`perf`, 2026-12-03): a
/// descent of the `(tenant, user_id)` index and one of `account_heads`, most pages read back from
/// the file.
#[derive(Debug)]
struct Accounts {
    /// Keys of up to 24 bytes (most user ids) are held in the entry itself: with a million
    /// accounts each lookup is a cache miss, and a key behind a pointer would be one more.
    ids: HashMap<CompactString, HashMap<CompactString, Account, RandomState>, RandomState>,
    len: usize,
    /// Accounts remembered at most between steps.
    capacity: usize,
    /// Lookups found in memory and read from the database, since [`Store::take_lookups`].
    lookups: Lookups,
}

/// The feeder's account lookups, by where each account was found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lookups {
    /// Found in memory.
    pub memory: u64,
    /// Read from the database (or created there).
    pub database: u64,
}

/// An account the feeder met.
#[derive(Debug, Clone, Copy)]
struct Account {
    id: i64,
    /// Its newest entry's LSN, as of the feeder's transaction.
    last_lsn: Option<i64>,
    /// Met since the last trim.
    recent: bool,
}

impl Accounts {
    fn new(capacity: usize) -> Accounts {
        Accounts {
            ids: HashMap::default(),
            len: 0,
            capacity,
            lookups: Lookups::default(),
        }
    }

    /// The account, if remembered: counted as found in memory.
    fn get(&mut self, tenant: &str, user: &str) -> Option<&mut Account> {
        let account = self.ids.get_mut(tenant)?.get_mut(user)?;
        account.recent = true;
        self.lookups.memory += 1;
        Some(account)
    }

    fn insert(&mut self, tenant: &str, user: &str, account: Account) {
        let users = match self.ids.get_mut(tenant) {
            Some(users) => users,
            None => self.ids.entry(CompactString::new(tenant)).or_default(),
        };
        if users.insert(CompactString::new(user), account).is_none() {
            self.len += 1;
        }
    }

    /// Past the capacity, keeps at most half of it, of the accounts met since the last trim.
    fn trim(&mut self) {
        if self.len <= self.capacity {
            return;
        }
        let mut room = self.capacity / 2;
        for users in self.ids.values_mut() {
            users.retain(|_, account| {
                let keep = account.recent && room > 0;
                room -= usize::from(keep);
                account.recent = false;
                keep
            });
        }
        self.ids.retain(|_, users| !users.is_empty());
        self.len = self.ids.values().map(HashMap::len).sum();
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.len = 0;
    }
}

/// Migrates a schema 3 database (see [`MIGRATE_FROM_3`]).
fn migrate_from_3(connection: &Connection) -> Result<(), StoreError> {
    let entries: i64 =
        connection.query_row("SELECT count(*) FROM entries", [], |row| row.get(0))?;
    tracing::info!(entries, "migrating the history database from schema 3 to 4");
    let started = std::time::Instant::now();
    let transaction = connection.unchecked_transaction()?;
    transaction.execute_batch(MIGRATE_FROM_3)?;
    transaction.commit()?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "the history database is at schema 4"
    );
    Ok(())
}

impl Feed<'_> {
    /// Applies the event at `lsn`: every part of the history takes what it keeps from it.
    pub(crate) fn apply(&mut self, lsn: u64, event: &Event<'_>) -> Result<(), StoreError> {
        let account = match entry::of(lsn, event) {
            Some(entry) => Some(self.insert(&entry)?),
            None => None,
        };
        if let Some(pool_entry) = entry::pool_entry(lsn, event) {
            super::pools::insert(self.transaction(), &pool_entry)?;
        }
        super::payments::apply(self.transaction(), lsn, event)?;
        self.audit.apply(&self.transaction, lsn, event)?;
        self.rollup.apply(&self.transaction, event, account)?;
        Ok(())
    }

    /// The transaction, for the parts of the history that keep tables of their own.
    pub(crate) fn transaction(&self) -> &rusqlite::Transaction<'_> {
        &self.transaction
    }

    /// Inserts one entry and returns its account's id. An entry already there is an error: the
    /// checkpoint rules it out.
    pub(crate) fn insert(&mut self, entry: &Entry<'_>) -> Result<i64, StoreError> {
        let lsn = i64::try_from(entry.lsn).map_err(|_| StoreError::Overflow("lsn"))?;
        let quantity = entry
            .action
            .map(|(_, quantity)| i64::try_from(quantity))
            .transpose()
            .map_err(|_| StoreError::Overflow("quantity"))?;
        let (account, prev_lsn) = self.account(entry.tenant, entry.user, lsn)?;
        self.heads.push((account, lsn));
        // Bound one by one with their own types rather than as a slice of `&dyn ToSql`: binding
        // was an eighth of the feeder's CPU on plain debits (`perf`, SQLite's own bind calls
        // included), and typed binding took about 4 % off a record (alternating bench runs).
        // Every one of the fifteen is bound at each call, so none keeps an earlier entry's value.
        let insert = &mut self.insert;
        insert.raw_bind_parameter(1, lsn)?;
        insert.raw_bind_parameter(2, account)?;
        insert.raw_bind_parameter(3, entry.kind)?;
        insert.raw_bind_parameter(4, entry.amount)?;
        insert.raw_bind_parameter(5, entry.currency.as_str())?;
        insert.raw_bind_parameter(6, entry.balance_after)?;
        insert.raw_bind_parameter(7, entry.available_after)?;
        insert.raw_bind_parameter(8, entry.action.map(|(name, _)| name))?;
        insert.raw_bind_parameter(9, quantity)?;
        insert.raw_bind_parameter(10, entry.description)?;
        insert.raw_bind_parameter(11, entry.reference)?;
        insert.raw_bind_parameter(12, entry.metadata)?;
        insert.raw_bind_parameter(13, entry.actor)?;
        insert.raw_bind_parameter(14, entry.time_ms)?;
        insert.raw_bind_parameter(15, prev_lsn)?;
        insert.raw_execute()?;
        Ok(account)
    }

    /// The id of `user`'s account in `tenant` (created at `lsn` if it has none) and the LSN of
    /// its newest entry before `lsn`, which from now on is `lsn`.
    fn account(
        &mut self,
        tenant: &str,
        user: &str,
        lsn: i64,
    ) -> Result<(i64, Option<i64>), StoreError> {
        if let Some(account) = self.accounts.get(tenant, user) {
            let prev = account.last_lsn.replace(lsn);
            // Entries come in LSN order; a head at or past `lsn` is not this log's (the
            // database was changed by hand) and chains nothing.
            return Ok((account.id, prev.filter(|prev| *prev < lsn)));
        }
        self.accounts.lookups.database += 1;
        let found = self
            .transaction
            .prepare_cached(ACCOUNT_AND_HEAD)?
            .query_row(params![tenant, user], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Option<i64>>(1)?))
            })
            .optional()?;
        let (id, prev) = match found {
            Some((id, prev)) => (id, prev.filter(|prev| *prev < lsn)),
            None => {
                self.transaction
                    .prepare_cached(
                        "INSERT INTO accounts (tenant, user_id, first_lsn) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![tenant, user, lsn])?;
                (self.transaction.last_insert_rowid(), None)
            }
        };
        let account = Account {
            id,
            last_lsn: Some(lsn),
            recent: true,
        };
        self.accounts.insert(tenant, user, account);
        Ok((id, prev))
    }

    /// Moves the heads of `recent_heads` into `account_heads` when it holds more than
    /// [`RECENT_HEADS_ROWS`]: one pass over the large table in id order, then the small one
    /// emptied, in the step's transaction. The count reads the small table's pages, which the
    /// step's upserts just touched.
    fn merge_heads_if_many(&self) -> Result<(), StoreError> {
        let rows: i64 = self
            .transaction
            .prepare_cached("SELECT count(*) FROM recent_heads")?
            .query_row([], |row| row.get(0))?;
        if u64::try_from(rows).unwrap_or(0) <= self.recent_heads_rows {
            return Ok(());
        }
        // `WHERE true`: an upsert from a SELECT needs a clause between the two (SQLite's
        // grammar would read ON as a join's).
        self.transaction
            .prepare_cached(
                "INSERT INTO account_heads (id, last_lsn)
                 SELECT id, last_lsn FROM recent_heads WHERE true
                 ON CONFLICT (id) DO UPDATE SET last_lsn = excluded.last_lsn",
            )?
            .execute([])?;
        self.transaction
            .prepare_cached("DELETE FROM recent_heads")?
            .execute([])?;
        Ok(())
    }

    /// Records `next_lsn` as the first LSN not yet applied and commits everything.
    pub fn commit(mut self, next_lsn: u64) -> Result<(), StoreError> {
        let next = i64::try_from(next_lsn).map_err(|_| StoreError::Overflow("next_lsn"))?;
        let mut audit = std::mem::take(&mut self.audit);
        audit.flush(self.transaction())?;
        // The step's counters, written once per key, before the checkpoint that covers them.
        std::mem::take(&mut self.rollup).flush(self.transaction())?;
        // Each account's newest entry, once per account, in account order; the sort is stable,
        // so an account's last pair is its newest entry.
        let mut heads = std::mem::take(&mut self.heads);
        heads.sort_by_key(|(account, _)| *account);
        let mut upsert = self.transaction.prepare_cached(
            "INSERT INTO recent_heads (id, last_lsn) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET last_lsn = excluded.last_lsn",
        )?;
        for (index, (account, lsn)) in heads.iter().enumerate() {
            if heads.get(index + 1).is_some_and(|next| next.0 == *account) {
                continue;
            }
            upsert.execute(params![account, lsn])?;
        }
        drop(upsert);
        if !heads.is_empty() {
            self.merge_heads_if_many()?;
        }
        self.transaction.execute(
            "UPDATE checkpoint SET next_lsn = ?1 WHERE id = 1",
            params![next],
        )?;
        self.transaction.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use rusqlite::{params, Connection, OptionalExtension};

    use super::super::entry::test_debit;
    use super::super::reader::{Filter, Reader};
    use super::{Store, SCHEMA_VERSION};

    /// The ledger of schema 3, as creditd wrote it: entries found through an index by (block,
    /// account), no chain.
    const SCHEMA_3: &str = "
        CREATE TABLE checkpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1), next_lsn INTEGER NOT NULL,
            schema INTEGER NOT NULL);
        CREATE TABLE accounts (
            id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, user_id TEXT NOT NULL,
            first_lsn INTEGER NOT NULL, UNIQUE (tenant, user_id));
        CREATE TABLE entries (
            lsn INTEGER PRIMARY KEY, account INTEGER NOT NULL, kind TEXT NOT NULL,
            amount INTEGER NOT NULL, currency TEXT NOT NULL, balance_after INTEGER,
            available_after INTEGER NOT NULL, action TEXT, quantity INTEGER, description TEXT,
            reference TEXT, metadata TEXT, actor TEXT NOT NULL, created_ms INTEGER NOT NULL);
        CREATE INDEX entries_by_account ON entries (lsn >> 16, account);
        INSERT INTO checkpoint VALUES (1, 200000, 3);
        INSERT INTO accounts VALUES (1, 'acme', 'ada', 1), (2, 'acme', 'bob', 2);
    ";

    fn listed(reader: &Reader, user: &str, before: Option<u64>) -> Vec<u64> {
        let filter = Filter::default();
        let entries = reader.entries("acme", user, &filter, before, 1000).unwrap();
        entries.into_iter().map(|entry| entry.lsn).collect()
    }

    /// The account lookup (a cache miss of the feeder's, and every listing) and a listing's
    /// lookup of each entry are planned once, not at every new set of values bound.
    #[test]
    fn the_account_lookup_is_prepared_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("history.sqlite3")).unwrap();
        for index in 0..10 {
            let mut lookup = store
                .connection
                .prepare_cached(super::ACCOUNT_AND_HEAD)
                .unwrap();
            let user = format!("user-{index}");
            let found = lookup
                .query_row(params!["acme", user], |row| row.get::<_, i64>(0))
                .optional()
                .unwrap();
            assert_eq!(found, None);
            let prepared_again = lookup.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(prepared_again, 0, "prepared again after {index} rebindings");
            let mut entry = store
                .connection
                .prepare_cached(super::super::reader::ENTRY_AT)
                .unwrap();
            let none: Option<i64> = None;
            let found = entry
                .query_row(params![index, 1, "debit", none, none, index, none], |row| {
                    row.get::<_, i64>(0)
                })
                .optional()
                .unwrap();
            assert_eq!(found, None);
            let prepared_again = entry.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(
                prepared_again, 0,
                "a listing's lookup prepared again ({index})"
            );
        }
    }

    #[test]
    fn a_trim_keeps_the_accounts_met_since_the_last_one() {
        let account = |id| super::Account {
            id,
            last_lsn: Some(id * 10),
            recent: true,
        };
        let held = |accounts: &super::Accounts| -> Vec<String> {
            let mut held: Vec<String> = (accounts.ids.iter())
                .flat_map(|(tenant, users)| {
                    users.keys().map(move |user| format!("{tenant}/{user}"))
                })
                .collect();
            held.sort();
            held
        };
        let mut accounts = super::Accounts::new(4);
        for (id, user) in [(1, "ada"), (2, "bob"), (3, "cyd"), (4, "dan")] {
            accounts.insert("acme", user, account(id));
        }
        accounts.trim();
        assert_eq!(accounts.len, 4, "at the capacity, nothing is forgotten");
        accounts.insert("beta", "eve", account(5));
        accounts.trim();
        let first = held(&accounts);
        assert_eq!((first.len(), accounts.len), (2, 2), "past it, half is kept");
        // Of the two kept (which two is the maps' order), one is met again, the other not.
        let (met, not_met) = (first[0].clone(), first[1].clone());
        let (tenant, user) = met.split_once('/').unwrap();
        accounts.get(tenant, user).unwrap().last_lsn = Some(99);
        for (id, user) in [(6, "fay"), (7, "gus"), (8, "hal")] {
            accounts.insert("acme", user, account(id));
        }
        accounts.trim();
        let second = held(&accounts);
        assert_eq!((second.len(), accounts.len), (2, 2));
        assert!(
            !second.contains(&not_met),
            "{not_met}, not met since the trim, is forgotten"
        );
        if second.contains(&met) {
            let kept = accounts.get(tenant, user).unwrap();
            assert_eq!(kept.last_lsn, Some(99), "kept with its newest entry");
        }
        assert!(
            accounts.ids.values().all(|users| !users.is_empty()),
            "no empty tenant left"
        );
    }

    /// Whatever the capacity, even none, each entry names its account's entry before it: an
    /// account met earlier in a step is remembered until the step commits, and one forgotten is
    /// read back with its head.
    #[test]
    fn entries_chain_the_same_with_any_account_cache() {
        for capacity in [0, 2, 3, 1_000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("history.sqlite3");
            let mut store = Store::open(&path).unwrap();
            store.set_account_cache(capacity);
            let users = ["ada", "bob", "cyd", "dan", "eve"];
            let mut expected: std::collections::HashMap<&str, Vec<u64>> = Default::default();
            let mut lsn = 1_u64;
            for step in 0..12_usize {
                let mut feed = store.begin().unwrap();
                // Each step meets some users twice and skips others.
                for turn in 0..4 {
                    let user = users[(step * 3 + turn * (step % 2 + 1)) % users.len()];
                    feed.insert(&test_debit(user, lsn, 0)).unwrap();
                    expected.entry(user).or_default().insert(0, lsn);
                    lsn += 1;
                }
                feed.commit(lsn).unwrap();
            }
            let reader = Reader::new(&path, Arc::new(AtomicU64::new(0)));
            for user in users {
                let want = expected.get(user).cloned().unwrap_or_default();
                assert!(!want.is_empty());
                assert_eq!(
                    listed(&reader, user, None),
                    want,
                    "{user}, capacity {capacity}"
                );
            }
            let accounts: i64 = store
                .connection
                .query_row("SELECT count(*) FROM accounts", [], |row| row.get(0))
                .unwrap();
            assert_eq!(accounts, 5, "one account each, capacity {capacity}");
            let (lookups, remembered) = store.take_lookups();
            assert_eq!(lookups.memory + lookups.database, 48, "one per entry");
            if capacity == 1_000 {
                assert_eq!((lookups.database, remembered), (5, 5), "each read once");
            } else {
                assert!(
                    lookups.database > 5,
                    "forgotten ones read again: {lookups:?}"
                );
                assert!(remembered <= capacity.max(5), "{remembered} of {capacity}");
            }
            assert_eq!(store.take_lookups().0, super::Lookups::default(), "taken");
        }
    }

    fn count(store: &Store, table: &str) -> i64 {
        store
            .connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
    }

    /// Whenever `recent_heads` is merged into `account_heads`, before or after, with the
    /// accounts remembered or read back (capacity 0), and across a reopening, each listing
    /// starts at its account's newest entry and follows the chain to its first.
    #[test]
    fn heads_read_the_same_before_and_after_a_merge() {
        let users = ["ada", "bob", "cyd", "dan", "eve", "fay", "gus"];
        for (limit, capacity) in [(0, 0), (2, 0), (3, 1_000), (5, 0), (1_000, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("history.sqlite3");
            let reader = Reader::new(&path, Arc::new(AtomicU64::new(0)));
            let mut expected: std::collections::HashMap<&str, Vec<u64>> = Default::default();
            let mut lsn = 1_u64;
            let mut merges = 0;
            for round in 0..2 {
                let mut store = Store::open(&path).unwrap();
                store.set_recent_heads_rows(limit);
                store.set_account_cache(capacity);
                for step in 0..10_usize {
                    let recent_before = count(&store, "recent_heads");
                    let mut feed = store.begin().unwrap();
                    for turn in 0..3 {
                        let user = users[(round * 5 + step * 2 + turn * (step % 3 + 1)) % 7];
                        feed.insert(&test_debit(user, lsn, 0)).unwrap();
                        expected.entry(user).or_default().insert(0, lsn);
                        lsn += 1;
                    }
                    feed.commit(lsn).unwrap();
                    // A step with entries leaves at least one head unless it merged.
                    let recent = count(&store, "recent_heads");
                    merges += usize::from(recent == 0);
                    assert!(recent as u64 <= limit, "{recent} heads left, limit {limit}");
                    assert!(
                        recent == 0 || recent >= recent_before,
                        "shrank without a merge"
                    );
                    for user in users {
                        let want = expected.get(user).cloned().unwrap_or_default();
                        assert_eq!(
                            listed(&reader, user, None),
                            want,
                            "{user}, limit {limit}, capacity {capacity}, round {round}, step {step}"
                        );
                    }
                }
            }
            let heads = count(&Store::open(&path).unwrap(), "account_heads");
            if limit < users.len() as u64 {
                assert!(merges > 2, "limit {limit}: {merges} merges");
                assert!(heads > 0, "merged heads are kept");
            } else {
                assert_eq!((merges, heads), (0, 0), "below the limit nothing is merged");
            }
        }
    }

    /// Opens the file at `path`, which migrates it, and checks it is now at [`SCHEMA_VERSION`].
    fn opened_at_this_schema(path: &Path) -> Store {
        let store = Store::open(path).unwrap();
        let schema: i64 = store
            .connection
            .query_row("SELECT schema FROM checkpoint", [], |row| row.get(0))
            .unwrap();
        assert_eq!(schema, SCHEMA_VERSION);
        store
    }

    /// A schema 4 file (every head in `account_heads`, no `recent_heads`) is opened as schema
    /// 5 and its chains go on.
    #[test]
    fn a_schema_4_ledger_is_opened_and_grows_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        {
            let mut store = Store::open(&path).unwrap();
            // Merged at every commit: what schema 4 wrote.
            store.set_recent_heads_rows(0);
            let mut feed = store.begin().unwrap();
            for (lsn, user) in [(1, "ada"), (2, "bob"), (3, "ada")] {
                feed.insert(&test_debit(user, lsn, 0)).unwrap();
            }
            feed.commit(4).unwrap();
            assert_eq!(count(&store, "recent_heads"), 0);
            store
                .connection
                .execute_batch("DROP TABLE recent_heads; UPDATE checkpoint SET schema = 4")
                .unwrap();
        }
        let mut store = opened_at_this_schema(&path);
        let reader = Reader::new(&path, Arc::new(AtomicU64::new(0)));
        assert_eq!(listed(&reader, "ada", None), [3, 1]);
        let mut feed = store.begin().unwrap();
        feed.insert(&test_debit("ada", 4, 0)).unwrap();
        feed.insert(&test_debit("cyd", 5, 0)).unwrap();
        feed.commit(6).unwrap();
        assert_eq!(listed(&reader, "ada", None), [4, 3, 1]);
        assert_eq!(listed(&reader, "bob", None), [2]);
        assert_eq!(listed(&reader, "cyd", None), [5]);
    }

    #[test]
    fn a_schema_3_ledger_is_chained_when_opened_and_grows_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        // ada and bob interleaved, across three blocks of the old index.
        let ada = [1_i64, 3, 70_000, 140_001];
        let bob = [2_i64, 70_001];
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(SCHEMA_3).unwrap();
            for (account, lsns) in [(1, &ada[..]), (2, &bob[..])] {
                for lsn in lsns {
                    connection
                        .execute(
                            "INSERT INTO entries (lsn, account, kind, amount, currency,
                                 balance_after, available_after, actor, created_ms)
                             VALUES (?1, ?2, 'debit', -1, 'credits', 0, 0, 'app', ?1)",
                            params![lsn, account],
                        )
                        .unwrap();
                }
            }
        }
        let mut store = opened_at_this_schema(&path);
        let index: i64 = store
            .connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'entries_by_account'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(index, 0, "the old index is gone");
        assert_eq!(store.next_lsn().unwrap(), 200_000, "the checkpoint is kept");

        let reader = Reader::new(&path, Arc::new(AtomicU64::new(0)));
        assert_eq!(listed(&reader, "ada", None), [140_001, 70_000, 3, 1]);
        assert_eq!(listed(&reader, "bob", None), [70_001, 2]);
        // A cursor of ada's own: the entries before it; one of bob's is refused.
        assert_eq!(listed(&reader, "ada", Some(70_000)), [3, 1]);
        assert_eq!(listed(&reader, "ada", Some(1)), Vec::<u64>::new());
        let foreign = reader.entries("acme", "ada", &Filter::default(), Some(70_001), 10);
        assert!(
            matches!(foreign, Err(super::StoreError::Cursor)),
            "{foreign:?}"
        );

        // The feeder goes on from the migrated heads.
        let mut feed = store.begin().unwrap();
        feed.insert(&test_debit("ada", 200_000, 0)).unwrap();
        feed.insert(&test_debit("cyd", 200_001, 0)).unwrap();
        feed.insert(&test_debit("ada", 200_002, 0)).unwrap();
        feed.commit(200_003).unwrap();
        assert_eq!(
            listed(&reader, "ada", None),
            [200_002, 200_000, 140_001, 70_000, 3, 1]
        );
        assert_eq!(listed(&reader, "cyd", None), [200_001]);
        assert_eq!(listed(&reader, "bob", None), [70_001, 2]);
        drop(store);

        // Opened again (schema 5 now): nothing to migrate, and the heads come from the file.
        let mut store = Store::open(&path).unwrap();
        let mut feed = store.begin().unwrap();
        feed.insert(&test_debit("bob", 200_003, 0)).unwrap();
        feed.commit(200_004).unwrap();
        assert_eq!(listed(&reader, "bob", None), [200_003, 70_001, 2]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(SCHEMA_3).unwrap();
            connection
                .execute("UPDATE checkpoint SET schema = ?1", [SCHEMA_VERSION + 1])
                .unwrap();
        }
        let error = Store::open(&path).unwrap_err();
        let newer = format!("schema {}", SCHEMA_VERSION + 1);
        assert!(error.to_string().contains(&newer), "{error}");
    }
}
