//! The history database: one SQLite file, its schema, the feeder's transaction and the
//! checkpoint (the first LSN not yet applied), kept in the same transaction as the rows.
//!
//! `journal_mode = WAL` lets readers run beside the feeder; `synchronous = FULL` makes a commit
//! durable before the feeder moves its retention hold past it (the log may then drop what the
//! commit holds).

use std::path::Path;

use std::collections::HashMap;

use foldhash::fast::RandomState;

use rusqlite::{params, Connection, OptionalExtension};

use super::audit::{self, Chain};
use super::entry::{self, Entry};
use super::rollup::{Rollup, ROLLUP_SCHEMA};
use crate::engine::event::Event;

/// The schema's version, kept in the database.
const SCHEMA_VERSION: i64 = 3;

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

/// Records per block of the ledger's index; a power of two (see [`ENTRIES_SCHEMA`]).
pub const BLOCK_SHIFT: u32 = 16;

/// The ledger: one row per movement of a wallet, in log order.
///
/// `entries` is a rowid table keyed by the LSN, so the feeder only ever appends to its end. A
/// user's entries are found through `entries_by_account`, keyed by (block of 2^16 LSNs, account):
/// the entries of one step fall into the newest block or two, so a step's inserts touch that
/// block's few hundred index pages however large the history grows. (Keyed by account first,
/// every entry of a step would land on a different page of the whole index, and each commit
/// would rewrite most of it.) A user's listing walks the blocks newest first, from its cursor
/// down to the block of the account's first entry.
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
    created_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_account ON entries (lsn >> 16, account);
CREATE VIEW IF NOT EXISTS ledger AS
    SELECT 'ent_' || e.lsn AS entry_id, a.tenant, a.user_id, e.kind, e.amount, e.currency,
           e.balance_after, e.action, e.quantity, e.description, e.reference, e.metadata,
           e.actor, strftime('%Y-%m-%dT%H:%M:%fZ', e.created_ms / 1000.0, 'unixepoch') AS created_at
    FROM entries e JOIN accounts a ON a.id = e.account;
";

/// Account ids the feeder remembers, at most (then it forgets them all and asks the database).
const ACCOUNT_CACHE: usize = 100_000;

/// The statement that writes one entry.
const INSERT_ENTRY: &str = "INSERT INTO entries (lsn, account, kind, amount, currency,
        balance_after, available_after, action, quantity, description, reference, metadata,
        actor, created_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

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
        if let Some(found) = found.filter(|found| *found != SCHEMA_VERSION) {
            return Err(StoreError::Schema { found });
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
            accounts: Accounts::default(),
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

    /// Starts the feeder's transaction.
    pub fn begin(&mut self) -> Result<Feed<'_>, StoreError> {
        let Store {
            connection,
            accounts,
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
    audit: Chain,
    /// The step's usage and revenue counters, written at commit.
    rollup: Rollup,
}

/// tenant → user → account id, for at most [`ACCOUNT_CACHE`] accounts; looked up without
/// allocating.
#[derive(Debug, Default)]
struct Accounts {
    ids: HashMap<Box<str>, HashMap<Box<str>, i64, RandomState>, RandomState>,
    len: usize,
}

impl Accounts {
    fn get(&self, tenant: &str, user: &str) -> Option<i64> {
        self.ids.get(tenant)?.get(user).copied()
    }

    fn insert(&mut self, tenant: &str, user: &str, id: i64) {
        if self.len >= ACCOUNT_CACHE {
            self.clear();
        }
        self.ids
            .entry(tenant.into())
            .or_default()
            .insert(user.into(), id);
        self.len += 1;
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.len = 0;
    }
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
        let account = self.account(entry.tenant, entry.user, lsn)?;
        self.insert.execute(params![
            lsn,
            account,
            entry.kind,
            entry.amount,
            entry.currency.as_str(),
            entry.balance_after,
            entry.available_after,
            entry.action.map(|(name, _)| name),
            quantity,
            entry.description,
            entry.reference,
            entry.metadata,
            entry.actor,
            entry.time_ms,
        ])?;
        Ok(account)
    }

    /// The id of `user`'s account in `tenant`, created at `lsn` if it has none.
    fn account(&mut self, tenant: &str, user: &str, lsn: i64) -> Result<i64, StoreError> {
        if let Some(id) = self.accounts.get(tenant, user) {
            return Ok(id);
        }
        let found = self
            .transaction
            .prepare_cached("SELECT id FROM accounts WHERE tenant = ?1 AND user_id = ?2")?
            .query_row(params![tenant, user], |row| row.get::<_, i64>(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                self.transaction
                    .prepare_cached(
                        "INSERT INTO accounts (tenant, user_id, first_lsn) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![tenant, user, lsn])?;
                self.transaction.last_insert_rowid()
            }
        };
        self.accounts.insert(tenant, user, id);
        Ok(id)
    }

    /// Records `next_lsn` as the first LSN not yet applied and commits everything.
    pub fn commit(mut self, next_lsn: u64) -> Result<(), StoreError> {
        let next = i64::try_from(next_lsn).map_err(|_| StoreError::Overflow("next_lsn"))?;
        let mut audit = std::mem::take(&mut self.audit);
        audit.flush(self.transaction())?;
        // The step's counters, written once per key, before the checkpoint that covers them.
        std::mem::take(&mut self.rollup).flush(self.transaction())?;
        self.transaction.execute(
            "UPDATE checkpoint SET next_lsn = ?1 WHERE id = 1",
            params![next],
        )?;
        self.transaction.commit()?;
        Ok(())
    }
}
