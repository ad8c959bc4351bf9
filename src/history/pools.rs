//! The ledger of credit pools: one row per movement of a pool's balance, in a table of its own
//! (`pool_entries`), written by the feeder from the log in the same transaction as the rest.
//!
//! A pool's movements are its credits (an administrator's, kind `grant` and the like) and what
//! it paid for a member's debit or capture (kind `draw`, with the member and the action). A
//! member's spend that the pool shares in is one record with two movements: the member's entry
//! in `entries` (what the wallet paid) and the pool's here (what the pool paid), both under the
//! record's LSN, so each ledger sums to its own balance. A hold or a release moves no pool
//! balance and makes no row. The key is the LSN (one record moves at most one pool); the index
//! `(tenant, pool_id, lsn)` lists a pool's ledger newest first, and a user's listing finds the
//! pool's part of each of its entries by LSN.
//!
//! Kept under `history.retention` like the entries (see [`super::retention`]).

use rusqlite::{params, Transaction};

use super::entry::PoolEntry;
use super::reader::Reader;
use super::StoreError;

/// The pool ledger and the index a pool's listing walks.
pub(crate) const POOLS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pool_entries (
    lsn           INTEGER PRIMARY KEY,
    tenant        TEXT    NOT NULL,
    pool_id       TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    amount        INTEGER NOT NULL,
    currency      TEXT    NOT NULL,
    balance_after INTEGER NOT NULL,
    user_id       TEXT,
    action        TEXT,
    quantity      INTEGER,
    description   TEXT,
    reference     TEXT,
    actor         TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pool_entries_by_pool ON pool_entries (tenant, pool_id, lsn);
";

/// Inserts the pool's movement, if the event at its LSN moved a pool's balance.
pub(crate) fn insert(
    transaction: &Transaction<'_>,
    entry: &PoolEntry<'_>,
) -> Result<(), StoreError> {
    let lsn = i64::try_from(entry.lsn).map_err(|_| StoreError::Overflow("lsn"))?;
    let quantity = entry
        .action
        .map(|(_, quantity)| i64::try_from(quantity))
        .transpose()
        .map_err(|_| StoreError::Overflow("quantity"))?;
    transaction
        .prepare_cached(
            "INSERT INTO pool_entries (lsn, tenant, pool_id, kind, amount, currency,
                balance_after, user_id, action, quantity, description, reference, actor,
                created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?
        .execute(params![
            lsn,
            entry.tenant,
            entry.pool,
            entry.kind,
            entry.amount,
            entry.currency.as_str(),
            entry.balance_after,
            entry.user,
            entry.action.map(|(name, _)| name),
            quantity,
            entry.description,
            entry.reference,
            entry.actor,
            entry.time_ms,
        ])?;
    Ok(())
}

/// One movement of a pool as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolListed {
    /// Its LSN (`entry_id` is `ent_<lsn>`, shared with the member's entry of a draw).
    pub lsn: u64,
    /// `grant`, `topup`, `refund`, `adjustment` or `draw`.
    pub kind: String,
    /// Positive into the pool, negative out.
    pub amount: i64,
    /// The pool's currency.
    pub currency: String,
    /// The pool's balance after it.
    pub balance_after: i64,
    /// The member, for a draw.
    pub user_id: Option<String>,
    /// The catalogue action of a member's spend.
    pub action: Option<String>,
    /// Its quantity.
    pub quantity: Option<i64>,
    /// The description (a credit's reason).
    pub description: Option<String>,
    /// The caller's reference.
    pub reference: Option<String>,
    /// Who wrote it.
    pub actor: String,
    /// When (ms since the epoch).
    pub created_ms: i64,
}

impl Reader {
    /// The movements of `pool` in `tenant`, newest first, before `before_lsn` (a cursor), at
    /// most `limit`; only those of `user` when given.
    pub fn pool_entries(
        &self,
        tenant: &str,
        pool: &str,
        user: Option<&str>,
        before_lsn: Option<u64>,
        limit: u32,
    ) -> Result<Vec<PoolListed>, StoreError> {
        let before = before_lsn.map_or(i64::MAX, |lsn| i64::try_from(lsn).unwrap_or(i64::MAX));
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT lsn, kind, amount, currency, balance_after, user_id, action, quantity,
                        description, reference, actor, created_ms
                 FROM pool_entries
                 WHERE tenant = ?1 AND pool_id = ?2 AND lsn < ?3
                   AND (?4 IS NULL OR user_id = ?4)
                 ORDER BY lsn DESC LIMIT ?5",
            )?;
            let rows = statement.query_map(
                params![tenant, pool, before, user, i64::from(limit)],
                |row| {
                    Ok(PoolListed {
                        lsn: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        kind: row.get(1)?,
                        amount: row.get(2)?,
                        currency: row.get(3)?,
                        balance_after: row.get(4)?,
                        user_id: row.get(5)?,
                        action: row.get(6)?,
                        quantity: row.get(7)?,
                        description: row.get(8)?,
                        reference: row.get(9)?,
                        actor: row.get(10)?,
                        created_ms: row.get(11)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
