//! Usage and revenue rollups: counters the feeder keeps beside the entries, in the same
//! transaction, so that a report reads a few hundred rows (or a few compact blocks) instead of the
//! ledger. Nothing here scans `entries`.
//!
//! # What is counted
//!
//! *Usage* is what was spent: a `Debited` event of kind usage (a debit, by action or by amount)
//! and a `ReservationCaptured` event (what it charged). Revokes, releases and expiries are not
//! usage. Each spend adds one to `count`, its action's quantity to `quantity` (0 for a spend by
//! amount) and what it charged to `credits`, per wallet currency. A spend by amount has the action
//! `''` (no catalogue action can be empty), which the API shows as `"key": null`.
//!
//! *A pool's draws* are the part of members' spends a credit pool paid: a spend the pool paid
//! some of counts, besides its whole charge in the wallet currency, once more in the pool's own
//! scope, with what the pool paid as `credits`, under the member's account and the spend's
//! action. A pool's scope is a row of `usage_scopes` like a currency's, named `pool:<id>` in its
//! `currency` column (no currency code holds a `:`), so every table, block and seal below serves
//! it unchanged and a report per pool is exact.
//!
//! *Revenue* is what was paid: a `PaymentSucceeded` (or, for a package bought for a credit pool,
//! `PoolPaymentSucceeded`) event adds one to `count`, `paid_minor` to
//! `amount_minor` (in `paid_currency`) and its credits to `credits_sold`. The package comes from
//! the payment's terms, which only `PaymentInitialized` (`PoolPaymentInitialized`) carries: the payment history
//! ([`super::payments`]) holds them by reference. A payment whose start the history never saw
//! (or has removed under `history.retention`) has the package `''`.
//!
//! # Time
//!
//! Buckets are UTC hours, numbered from the Unix epoch (`hour = created_ms / 3_600_000`). A block
//! of level `k` covers `2^k` hours from an hour that is a multiple of `2^k`; levels go from 0 (an
//! hour) to [`TOP_LEVEL`] (16 384 hours, more than the longest report window), so any window
//! of whole hours is the union of at most two blocks per level.
//!
//! # Tables
//!
//! Strings are numbered so that the rows written on the debit path are a few small integers: a
//! tenant's wallet currency in `usage_scopes`, an action name in `usage_actions` (a spend by
//! amount has the name `''`), a user by its ledger account (`accounts`, which the entries
//! already number). The view `usage_by_hour` shows the hour rows with their names.
//!
//! | table | key | kept | answers |
//! |---|---|---|---|
//! | `usage_hourly` | scope, hour, account, action | every step | one user's usage; the hours not sealed yet |
//! | `usage_action_blocks` | scope, level, start, action | level 0 every step, the others when sealed | a tenant's usage by action, day and hour |
//! | `usage_user_blocks` | level, start, scope | when sealed | a tenant's usage by user |
//! | `usage_hours` | hour, scope | every step | which hours have spends, to seal |
//! | `usage_sealed` | (one row) | every step | how far blocks are sealed |
//! | `revenue_hourly` | tenant, hour, package, currency | every step | revenue |
//!
//! During a step the feeder adds every spend and sale to maps in memory, keyed like the rows;
//! `Rollup::flush` writes each key once (an UPSERT) when the step commits, before the
//! checkpoint, so a step of 20 000 spends by a few hundred users writes a few hundred rows.
//!
//! # Sealing
//!
//! A block is *sealed* once the history's clock (the latest event time, less
//! [`SEAL_GRACE_MS`] for events that reach the log slightly out of time order) has passed its
//! end: `usage_sealed.hour` says that every block ending at or before that hour is complete.
//! Sealing builds the blocks of every level above 0 from the two halves below, once: a level-`k`
//! block costs one pass over its two children every `2^k` hours, so sealing costs about two block
//! builds per hour in all, whatever the number of levels. A spend that arrives for an hour
//! already sealed (the clock went back) rebuilds the sealed blocks that hold its hour, so every
//! sealed block stays exact.
//!
//! Only the hour level is written on the debit path; coarser levels are written once per block.
//! That is why the user blocks can exist at all: writing every level on every step would cost
//! each step one write per user and level.
//!
//! # User blocks
//!
//! A tenant's usage by user must add, for every user, the blocks that make up the window: about
//! ten of them for 30 days, each holding every user active in it. As rows that is ~100 000 rows
//! for 10 000 users, too slow for a report (SQLite reads ~10 million rows a second); so a user
//! block is one value, the accounts in ascending order (`user_block` has its bytes), which reads
//! as one blob and merges in one pass; the report then names the accounts.
//!
//! # Measured
//!
//! `benches/history.rs` builds 30 days of 10 M spends by 10 000 users over 50 actions (every user
//! active in most hours, the worst case for rollups: nearly every spend is a key of its own) and
//! times every report on random windows of whole hours: each takes under 10 ms of CPU (mean of a
//! run), the slowest being a tenant's usage by user over 400 days.
//! The cost is on the feeder: one hour row per user, action and hour in a step, which at that
//! density is one UPSERT per spend. Keyed by strings it doubled the feeder's CPU per entry (2.5 µs
//! for the ledger alone, 5.1 µs with the rollups); keyed by numbers it adds ~1.3 µs per spend
//! (hour rows ~0.7, the maps and sealing the rest), ~20 bytes of hour rows and ~5 of user blocks.
//! Tenants whose users spend many times per step pay a small fraction of that, and so does a
//! feeder that lags: its steps grow (see `worker::next_step_records`), and a key is one UPSERT per
//! step however many spends it counts.
//!
//! Counters are integers and every sum is checked: an overflow fails the step, never wraps
//! (SQLite's `sum()` raises one; an UPSERT whose addition would leave the integers writes nothing,
//! which the feeder reports; Rust adds with `checked_add`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use foldhash::fast::RandomState;
use rusqlite::{params, OptionalExtension, Transaction};

use super::user_block::{merge_users, UsersWriter};
use super::StoreError;
use crate::engine::event::{ActionUse, Event, WalletRef};
use crate::engine::types::{Currency, DebitKind};

/// Milliseconds in an hour, the smallest bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// The highest block level: 2^14 hours (682 days).
pub const TOP_LEVEL: u32 = 14;

/// How long after an hour ends its blocks are sealed: events reach the log in LSN order, which
/// may be a little out of time order.
pub const SEAL_GRACE_MS: i64 = 60_000;

/// The tables of the rollups. Strings are numbered (`usage_scopes`, `usage_actions`, and the
/// ledger's `accounts` for users), so that the rows written on the debit path are a few small
/// integers; the view `usage_by_hour` shows the hour rows with their names.
pub(crate) const ROLLUP_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage_scopes (
    id       INTEGER PRIMARY KEY,
    tenant   TEXT    NOT NULL,
    currency TEXT    NOT NULL,
    UNIQUE (tenant, currency)
);
CREATE TABLE IF NOT EXISTS usage_actions (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS usage_hourly (
    scope    INTEGER NOT NULL,
    hour     INTEGER NOT NULL,
    account  INTEGER NOT NULL,
    action   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    credits  INTEGER NOT NULL,
    PRIMARY KEY (scope, hour, account, action)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_action_blocks (
    scope    INTEGER NOT NULL,
    level    INTEGER NOT NULL,
    start    INTEGER NOT NULL,
    action   INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    credits  INTEGER NOT NULL,
    PRIMARY KEY (scope, level, start, action)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_hours (
    hour  INTEGER NOT NULL,
    scope INTEGER NOT NULL,
    PRIMARY KEY (hour, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_user_blocks (
    level INTEGER NOT NULL,
    start INTEGER NOT NULL,
    scope INTEGER NOT NULL,
    users BLOB    NOT NULL,
    PRIMARY KEY (level, start, scope)
);
CREATE TABLE IF NOT EXISTS usage_sealed (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    hour INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS revenue_hourly (
    tenant       TEXT    NOT NULL,
    hour         INTEGER NOT NULL,
    package      TEXT    NOT NULL,
    currency     TEXT    NOT NULL,
    count        INTEGER NOT NULL,
    amount_minor INTEGER NOT NULL,
    credits_sold INTEGER NOT NULL,
    CHECK (typeof(count) = 'integer' AND typeof(amount_minor) = 'integer'
           AND typeof(credits_sold) = 'integer'),
    PRIMARY KEY (tenant, hour, package, currency)
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS usage_by_hour AS
    SELECT s.tenant, s.currency,
           strftime('%Y-%m-%dT%H:00:00Z', u.hour * 3600, 'unixepoch') AS hour,
           a.user_id, nullif(n.name, '') AS action, u.count, u.quantity, u.credits
    FROM usage_hourly u
    JOIN usage_scopes s ON s.id = u.scope
    JOIN accounts a ON a.id = u.account
    JOIN usage_actions n ON n.id = u.action;
";

/// The hour (since the Unix epoch) that holds `time_ms`.
pub fn hour_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(HOUR_MS)
}

/// The hours a block of `level` covers.
pub fn block_hours(level: u32) -> i64 {
    1 << level
}

/// Usage counters: spends, their action quantities and the credits they charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// How many spends.
    pub count: i64,
    /// The sum of their action quantities.
    pub quantity: i64,
    /// The credits they charged.
    pub credits: i64,
}

impl Totals {
    /// Adds `other`; an overflow is an error.
    pub fn add(&mut self, other: &Totals) -> Result<(), StoreError> {
        let overflow = || StoreError::Overflow("a usage total");
        self.count = self.count.checked_add(other.count).ok_or_else(overflow)?;
        self.quantity = self
            .quantity
            .checked_add(other.quantity)
            .ok_or_else(overflow)?;
        self.credits = self
            .credits
            .checked_add(other.credits)
            .ok_or_else(overflow)?;
        Ok(())
    }
}

/// Revenue counters: payments, what was paid (minor units) and the credits sold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sales {
    /// How many payments.
    pub count: i64,
    /// What they paid, in minor units of their currency.
    pub amount_minor: i64,
    /// The credits they bought.
    pub credits_sold: i64,
}

impl Sales {
    /// Adds `other`; an overflow is an error.
    pub fn add(&mut self, other: &Sales) -> Result<(), StoreError> {
        let overflow = || StoreError::Overflow("a revenue total");
        self.count = self.count.checked_add(other.count).ok_or_else(overflow)?;
        self.amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or_else(overflow)?;
        self.credits_sold = self
            .credits_sold
            .checked_add(other.credits_sold)
            .ok_or_else(overflow)?;
        Ok(())
    }
}

/// The strings of a step, each stored once: the maps key on small numbers, so an event costs a
/// few hash lookups and allocates only for a name the step has not seen.
///
/// The empty name (a spend without an action, a sale without a package) never reaches the map:
/// comparing an empty key there is a `memcmp` of length 0 from the dangling address every empty
/// string has, which glibc's AVX-512 `memcmp` answers with a masked load the processor replays
/// as a fault it suppresses: about 90 ns on this project's machines, against 4 ns for a short
/// name, once per plain debit (`perf` of the feeder, 2026-12-03: 6.6 % of its samples).
#[derive(Default)]
struct Names {
    ids: HashMap<Box<str>, u32, RandomState>,
    names: Vec<Box<str>>,
    /// The id of the empty name, once the step has met it.
    empty: Option<u32>,
}

impl Names {
    fn id(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return match self.empty {
                Some(id) => id,
                None => {
                    let id = self.names.len() as u32;
                    self.names.push(Box::default());
                    self.empty = Some(id);
                    id
                }
            };
        }
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // A step holds at most a few times `STEP_RECORDS` names, far below u32::MAX.
        let id = self.names.len() as u32;
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// A row of `usage_hourly` during a step: the tenant and action named by [`Names`], the user by
/// its ledger account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UsageKey {
    tenant: u32,
    currency: Currency,
    /// The pool whose draws the row counts ([`NO_POOL`]: the wallet currency's usage).
    pool: u32,
    hour: i64,
    account: i64,
    action: u32,
}

/// [`UsageKey::pool`] of a row that counts a wallet currency's usage, not a pool's draws.
const NO_POOL: u32 = u32::MAX;

/// The scope name of a pool's draws in `usage_scopes.currency`: `pool:<id>`, which no currency
/// code can be (codes hold no `:`).
pub fn pool_scope(pool: &str) -> String {
    format!("pool:{pool}")
}

/// A row of `revenue_hourly`, its strings named by [`Names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SaleKey {
    tenant: u32,
    hour: i64,
    package: u32,
    currency: Currency,
}

/// What a step adds to the rollups, kept in memory until the step commits.
#[derive(Default)]
pub(crate) struct Rollup {
    names: Names,
    usage: HashMap<UsageKey, Totals, RandomState>,
    sales: HashMap<SaleKey, Sales, RandomState>,
    latest_ms: Option<i64>,
}

impl Rollup {
    /// Takes what `event` adds: a spend (whose ledger entry went to `account`) or a sale. Runs
    /// after the ledger and the payment history have taken the event, so a sale finds its
    /// payment's package.
    pub(crate) fn apply(
        &mut self,
        transaction: &Transaction<'_>,
        event: &Event<'_>,
        account: Option<i64>,
    ) -> Result<(), StoreError> {
        let time_ms = event.meta().time_ms;
        self.latest_ms = Some(self.latest_ms.map_or(time_ms, |latest| latest.max(time_ms)));
        let spend = match *event {
            Event::Debited {
                wallet,
                kind: DebitKind::Usage,
                amount,
                action,
                pool,
                ..
            } => Some((wallet, amount, action, pool)),
            Event::ReservationCaptured {
                wallet,
                charged,
                action,
                pool,
                ..
            } => Some((wallet, charged, action, pool)),
            Event::PaymentSucceeded {
                wallet: crate::engine::event::WalletRef { tenant, .. },
                reference,
                credits,
                paid_minor,
                paid_currency,
                ..
            }
            | Event::PoolPaymentSucceeded {
                tenant,
                reference,
                credits,
                paid_minor,
                paid_currency,
                ..
            } => {
                let package = package_of(transaction, tenant, reference)?;
                let key = SaleKey {
                    tenant: self.names.id(tenant),
                    hour: hour_of(time_ms),
                    package: self.names.id(package.as_deref().unwrap_or("")),
                    currency: paid_currency,
                };
                let sale = Sales {
                    count: 1,
                    amount_minor: paid_minor,
                    credits_sold: credits,
                };
                return self.sales.entry(key).or_default().add(&sale);
            }
            _ => None,
        };
        let Some((wallet, credits, action, pool)) = spend else {
            return Ok(());
        };
        // Every spend makes a ledger entry (`entry::of`), so it has an account.
        let account = account.ok_or(StoreError::Damaged("a spend without a ledger entry"))?;
        self.spend(wallet, account, credits, action, NO_POOL, time_ms)?;
        // What the member's pool paid, in the pool's own scope, by the member.
        match pool {
            Some(share) if share.charged > 0 => {
                let pool = self.names.id(share.pool);
                self.spend(wallet, account, share.charged, action, pool, time_ms)
            }
            _ => Ok(()),
        }
    }

    fn spend(
        &mut self,
        wallet: WalletRef<'_>,
        account: i64,
        credits: i64,
        action: Option<ActionUse<'_>>,
        pool: u32,
        time_ms: i64,
    ) -> Result<(), StoreError> {
        let quantity = match action {
            Some(action) => {
                i64::try_from(action.quantity).map_err(|_| StoreError::Overflow("quantity"))?
            }
            None => 0,
        };
        let key = UsageKey {
            tenant: self.names.id(wallet.tenant),
            currency: wallet.currency,
            pool,
            hour: hour_of(time_ms),
            account,
            action: self.names.id(action.map_or("", |action| action.name)),
        };
        let spend = Totals {
            count: 1,
            quantity,
            credits,
        };
        self.usage.entry(key).or_default().add(&spend)
    }

    /// Writes the step's counters (each key once), rebuilds the sealed blocks a late spend
    /// changed, and seals the blocks the clock has passed. Runs before the checkpoint update, in
    /// the same transaction.
    pub(crate) fn flush(self, transaction: &Transaction<'_>) -> Result<(), StoreError> {
        let Some(latest_ms) = self.latest_ms else {
            return Ok(());
        };
        let names = &self.names;
        // The step's names as the database numbers them, looked up (or added) once each.
        let mut scopes: HashMap<(u32, Currency, u32), i64, RandomState> = HashMap::default();
        let mut actions: HashMap<u32, i64, RandomState> = HashMap::default();
        let mut usage = Vec::with_capacity(self.usage.len());
        for (key, totals) in &self.usage {
            let scope = match scopes.get(&(key.tenant, key.currency, key.pool)) {
                Some(&scope) => scope,
                None => {
                    let label = match key.pool {
                        NO_POOL => key.currency.as_str().to_owned(),
                        pool => pool_scope(names.name(pool)),
                    };
                    let scope = add_scope(transaction, names.name(key.tenant), &label)?;
                    scopes.insert((key.tenant, key.currency, key.pool), scope);
                    scope
                }
            };
            let action = match actions.get(&key.action) {
                Some(&action) => action,
                None => {
                    let action = add_action(transaction, names.name(key.action))?;
                    actions.insert(key.action, action);
                    action
                }
            };
            usage.push(((scope, key.hour, key.account, action), *totals));
        }
        // Key order: each insert lands next to the last one in the B-tree.
        usage.sort_unstable_by_key(|(key, _)| *key);
        let mut hourly = transaction.prepare_cached(
            "INSERT INTO usage_hourly (scope, hour, account, action, count, quantity, credits)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (scope, hour, account, action) DO UPDATE SET
                 count = count + excluded.count,
                 quantity = quantity + excluded.quantity,
                 credits = credits + excluded.credits
             WHERE count <= 9223372036854775807 - excluded.count
               AND quantity <= 9223372036854775807 - excluded.quantity
               AND credits <= 9223372036854775807 - excluded.credits",
        )?;
        // The tenant-wide hour rows, by (scope, hour, action).
        let mut by_action: BTreeMap<(i64, i64, i64), Totals> = BTreeMap::new();
        for &((scope, hour, account, action), totals) in &usage {
            let written = hourly.execute(params![
                scope,
                hour,
                account,
                action,
                totals.count,
                totals.quantity,
                totals.credits,
            ])?;
            // The UPSERT leaves the row alone (0 rows) when a sum would leave the integers.
            if written == 0 {
                return Err(StoreError::Overflow("a usage total"));
            }
            by_action
                .entry((scope, hour, action))
                .or_default()
                .add(&totals)?;
        }
        let mut level_zero = transaction.prepare_cached(
            "INSERT INTO usage_action_blocks
                 (scope, level, start, action, count, quantity, credits)
             VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (scope, level, start, action) DO UPDATE SET
                 count = count + excluded.count,
                 quantity = quantity + excluded.quantity,
                 credits = credits + excluded.credits
             WHERE count <= 9223372036854775807 - excluded.count
               AND quantity <= 9223372036854775807 - excluded.quantity
               AND credits <= 9223372036854775807 - excluded.credits",
        )?;
        let mut spent_hours = transaction
            .prepare_cached("INSERT OR IGNORE INTO usage_hours (hour, scope) VALUES (?1, ?2)")?;
        let mut hours: BTreeSet<(i64, i64)> = BTreeSet::new();
        for (&(scope, hour, action), totals) in &by_action {
            if hours.insert((hour, scope)) {
                spent_hours.execute(params![hour, scope])?;
            }
            let written = level_zero.execute(params![
                scope,
                hour,
                action,
                totals.count,
                totals.quantity,
                totals.credits,
            ])?;
            if written == 0 {
                return Err(StoreError::Overflow("a usage total"));
            }
        }
        let mut revenue = transaction.prepare_cached(
            "INSERT INTO revenue_hourly
                 (tenant, hour, package, currency, count, amount_minor, credits_sold)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (tenant, hour, package, currency) DO UPDATE SET
                 count = count + excluded.count,
                 amount_minor = amount_minor + excluded.amount_minor,
                 credits_sold = credits_sold + excluded.credits_sold",
        )?;
        for (key, sales) in &self.sales {
            revenue.execute(params![
                names.name(key.tenant),
                key.hour,
                names.name(key.package),
                key.currency.as_str(),
                sales.count,
                sales.amount_minor,
                sales.credits_sold,
            ])?;
        }

        let first_hour = hours.first().map(|&(hour, _)| hour);
        let sealed = match (sealed_hour(transaction)?, first_hour) {
            (Some(sealed), _) => sealed,
            // The first spends: nothing before them needs a block.
            (None, Some(first)) => first,
            (None, None) => return Ok(()),
        };
        for &(hour, scope) in hours.range(..(sealed, i64::MIN)) {
            rebuild_sealed(transaction, hour, scope, sealed)?;
        }
        let clock = hour_of(latest_ms.saturating_sub(SEAL_GRACE_MS));
        let new_sealed = sealed.max(clock);
        seal(transaction, sealed, new_sealed)?;
        transaction.execute(
            "INSERT INTO usage_sealed (id, hour) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET hour = excluded.hour",
            params![new_sealed],
        )?;
        Ok(())
    }
}

/// The number of a tenant's wallet currency (or of a pool's draws, [`pool_scope`]), added if
/// new.
fn add_scope(transaction: &Transaction<'_>, tenant: &str, label: &str) -> Result<i64, StoreError> {
    if let Some(scope) = scope_of(transaction, tenant, label)? {
        return Ok(scope);
    }
    transaction
        .prepare_cached("INSERT INTO usage_scopes (tenant, currency) VALUES (?1, ?2)")?
        .execute(params![tenant, label])?;
    Ok(transaction.last_insert_rowid())
}

/// The number of a tenant's wallet currency, if it ever had a spend.
pub(crate) fn scope_of(
    connection: &rusqlite::Connection,
    tenant: &str,
    currency: &str,
) -> Result<Option<i64>, StoreError> {
    let scope = connection
        .prepare_cached("SELECT id FROM usage_scopes WHERE tenant = ?1 AND currency = ?2")?
        .query_row(params![tenant, currency], |row| row.get(0))
        .optional()?;
    Ok(scope)
}

/// The number of an action name (`''`: a spend by amount), added if new.
fn add_action(transaction: &Transaction<'_>, name: &str) -> Result<i64, StoreError> {
    let found = transaction
        .prepare_cached("SELECT id FROM usage_actions WHERE name = ?1")?
        .query_row(params![name], |row| row.get(0))
        .optional()?;
    if let Some(action) = found {
        return Ok(action);
    }
    transaction
        .prepare_cached("INSERT INTO usage_actions (name) VALUES (?1)")?
        .execute(params![name])?;
    Ok(transaction.last_insert_rowid())
}

/// The name of action number `action`.
pub(crate) fn action_name(
    connection: &rusqlite::Connection,
    action: i64,
) -> Result<String, StoreError> {
    connection
        .prepare_cached("SELECT name FROM usage_actions WHERE id = ?1")?
        .query_row(params![action], |row| row.get(0))
        .optional()?
        .ok_or(StoreError::Damaged("action number without a name"))
}

/// Column `index` of `row` as text, borrowed (no copy).
pub(crate) fn text<'r>(row: &'r rusqlite::Row<'_>, index: usize) -> Result<&'r str, StoreError> {
    row.get_ref(index)?.as_str().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, error.into())
            .into()
    })
}

/// Every block ending at or before the hour this returns is complete (none: no spend yet).
pub(crate) fn sealed_hour(connection: &rusqlite::Connection) -> Result<Option<i64>, StoreError> {
    let hour = connection
        .prepare_cached("SELECT hour FROM usage_sealed WHERE id = 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(hour)
}

/// The package of the payment `reference` of `tenant`, from the payment history (which the
/// feeder wrote from its `PaymentInitialized`, earlier in this transaction or before).
fn package_of(
    transaction: &Transaction<'_>,
    tenant: &str,
    reference: &str,
) -> Result<Option<String>, StoreError> {
    let package = transaction
        .prepare_cached(
            "SELECT package_id FROM payments WHERE reference = ?1 AND tenant = ?2
             ORDER BY lsn_created DESC LIMIT 1",
        )?
        .query_row(params![reference, tenant], |row| row.get(0))
        .optional()?;
    Ok(package)
}

/// Builds every block that ends after `from` and at or before `to` (hours), level by level, each
/// from the blocks below it, for every tenant and currency with spends in it.
fn seal(transaction: &Transaction<'_>, from: i64, to: i64) -> Result<(), StoreError> {
    if to <= from {
        return Ok(());
    }
    // Level 0: the user block of every hour with spends.
    let spent: Vec<(i64, i64)> = {
        let mut statement = transaction
            .prepare_cached("SELECT hour, scope FROM usage_hours WHERE hour >= ?1 AND hour < ?2")?;
        let rows = statement.query_map(params![from, to], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (hour, scope) in spent {
        build_user_hour(transaction, hour, scope)?;
    }
    for level in 1..=TOP_LEVEL {
        let size = block_hours(level);
        // The blocks of this level that end in (from, to] start in [low, high).
        let (low, high) = (from.div_euclid(size) * size, to.div_euclid(size) * size);
        if low >= high {
            continue;
        }
        let parents: BTreeSet<(i64, i64)> = {
            // A block has a user block exactly when it has spends.
            let mut statement = transaction.prepare_cached(
                "SELECT start, scope FROM usage_user_blocks
                 WHERE level = ?1 AND start >= ?2 AND start < ?3",
            )?;
            let rows = statement.query_map(params![level - 1, low, high], |row| {
                let start: i64 = row.get(0)?;
                Ok((start - start.rem_euclid(size), row.get(1)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for &(start, scope) in &parents {
            build_action_block(transaction, level, start, scope)?;
            build_user_block(transaction, level, start, scope)?;
        }
    }
    Ok(())
}

/// Rebuilds the sealed blocks (ending at or before `sealed`) that hold `hour`, after spends
/// arrived for it late.
fn rebuild_sealed(
    transaction: &Transaction<'_>,
    hour: i64,
    scope: i64,
    sealed: i64,
) -> Result<(), StoreError> {
    build_user_hour(transaction, hour, scope)?;
    for level in 1..=TOP_LEVEL {
        let size = block_hours(level);
        let start = hour - hour.rem_euclid(size);
        if start + size > sealed {
            // A block of a higher level ends later still.
            break;
        }
        build_action_block(transaction, level, start, scope)?;
        build_user_block(transaction, level, start, scope)?;
    }
    Ok(())
}

/// Writes the action block (`level` ≥ 1, `start`) from its two halves.
fn build_action_block(
    transaction: &Transaction<'_>,
    level: u32,
    start: i64,
    scope: i64,
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "DELETE FROM usage_action_blocks WHERE scope = ?1 AND level = ?2 AND start = ?3",
        )?
        .execute(params![scope, level, start])?;
    // sum() fails on an integer overflow.
    transaction
        .prepare_cached(
            "INSERT INTO usage_action_blocks (scope, level, start, action, count, quantity, credits)
             SELECT ?1, ?2, ?3, action, sum(count), sum(quantity), sum(credits)
             FROM usage_action_blocks
             WHERE scope = ?1 AND level = ?2 - 1 AND start IN (?3, ?3 + ?4)
             GROUP BY action",
        )?
        .execute(params![scope, level, start, block_hours(level) / 2])?;
    Ok(())
}

/// Writes the user block of `hour` from `usage_hourly`.
fn build_user_hour(transaction: &Transaction<'_>, hour: i64, scope: i64) -> Result<(), StoreError> {
    let mut statement = transaction.prepare_cached(
        "SELECT account, sum(count), sum(quantity), sum(credits) FROM usage_hourly
         WHERE scope = ?1 AND hour = ?2 GROUP BY account ORDER BY account",
    )?;
    let mut rows = statement.query(params![scope, hour])?;
    let mut users = UsersWriter::new();
    while let Some(row) = rows.next()? {
        let totals = Totals {
            count: row.get(1)?,
            quantity: row.get(2)?,
            credits: row.get(3)?,
        };
        users.add(row.get(0)?, &totals)?;
    }
    put_user_block(transaction, 0, hour, scope, &users.finish())
}

/// Writes the user block (`level` ≥ 1, `start`) from its two halves.
fn build_user_block(
    transaction: &Transaction<'_>,
    level: u32,
    start: i64,
    scope: i64,
) -> Result<(), StoreError> {
    let half = block_hours(level) / 2;
    let first = user_block(transaction, level - 1, start, scope)?;
    let second = user_block(transaction, level - 1, start + half, scope)?;
    let merged = merge_users(
        first.as_deref().unwrap_or_default(),
        second.as_deref().unwrap_or_default(),
    )?;
    put_user_block(transaction, level, start, scope, &merged)
}

/// The user block (`level`, `start`) of a tenant's wallet currency, if it has spends.
pub(crate) fn user_block(
    connection: &rusqlite::Connection,
    level: u32,
    start: i64,
    scope: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let block = connection
        .prepare_cached(
            "SELECT users FROM usage_user_blocks WHERE level = ?1 AND start = ?2 AND scope = ?3",
        )?
        .query_row(params![level, start, scope], |row| row.get(0))
        .optional()?;
    Ok(block)
}

fn put_user_block(
    transaction: &Transaction<'_>,
    level: u32,
    start: i64,
    scope: i64,
    users: &[u8],
) -> Result<(), StoreError> {
    transaction
        .prepare_cached(
            "INSERT OR REPLACE INTO usage_user_blocks (level, start, scope, users)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![level, start, scope, users])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::event::{Meta, PaymentTerms};
    use crate::engine::types::{PaymentPurpose, ReleaseReason};
    use crate::history::reader::Reader;
    use crate::history::reports::{
        Key, RevenueGrouping, RevenueQuery, UsageGrouping, UsageQuery, Window,
    };
    use crate::history::Store;

    const TENANTS: [&str; 2] = ["acme", "globex"];
    const USERS: [&str; 7] = ["ada", "bob", "cy", "dee", "eve", "fay", "gus"];
    const ACTIONS: [&str; 4] = ["gpt", "image", "search", "tts"];
    const START_MS: i64 = 1_700_000_000_000;

    #[test]
    fn names_number_each_string_once_the_empty_one_too() {
        let mut names = Names::default();
        let acme = names.id("acme");
        let empty = names.id("");
        let gpt = names.id("gpt");
        assert_eq!(names.id(&String::from("acme")), acme);
        assert_eq!(names.id(""), empty);
        assert_eq!(
            names.id(&String::from("acme")[4..]),
            empty,
            "any empty string, wherever it points"
        );
        assert_eq!(names.id("gpt"), gpt);
        let mut ids = vec![acme, empty, gpt];
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three names, three ids");
        // The empty name is numbered beside the map, never looked up in it: comparing an empty
        // key there costs a slow `memcmp` (see `Names`).
        assert_eq!(
            names.ids.len(),
            2,
            "only the two non-empty names are in the map"
        );
        assert_eq!(
            (names.name(acme), names.name(empty), names.name(gpt)),
            ("acme", "", "gpt")
        );
    }

    /// A spend as the brute force counts it.
    #[derive(Debug, Clone)]
    struct Spend {
        tenant: &'static str,
        currency: &'static str,
        user: &'static str,
        action: Option<&'static str>,
        quantity: i64,
        credits: i64,
        hour: i64,
    }

    /// A sale as the brute force counts it.
    #[derive(Debug, Clone)]
    struct Sale {
        tenant: &'static str,
        package: Option<&'static str>,
        currency: &'static str,
        amount_minor: i64,
        credits: i64,
        hour: i64,
    }

    fn meta(time_ms: i64) -> Meta<'static> {
        Meta {
            time_ms,
            actor: "test",
            description: None,
            reference: None,
            metadata: None,
            idempotency: None,
        }
    }

    fn wallet(tenant: &'static str, user: &'static str, currency: &str) -> WalletRef<'static> {
        WalletRef {
            tenant,
            user,
            currency: Currency::new(currency).unwrap(),
        }
    }

    /// A random history: spends (debits and captures, by action and by amount), movements that
    /// are not usage, and payments, over `hours` hours; the clock mostly moves forward, and now
    /// and then an event comes hours or days late.
    struct Generator {
        random: StdRng,
        time_ms: i64,
        spends: Vec<Spend>,
        sales: Vec<Sale>,
        /// The payments started: reference, tenant, user, wallet currency and package.
        payments: Vec<(
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        )>,
    }

    impl Generator {
        fn new(seed: u64) -> Generator {
            Generator {
                random: StdRng::seed_from_u64(seed),
                time_ms: START_MS,
                spends: Vec::new(),
                sales: Vec::new(),
                payments: Vec::new(),
            }
        }

        /// The next event, recording what it adds.
        fn next(&mut self) -> Event<'static> {
            let random = &mut self.random;
            self.time_ms += random.random_range(0..HOUR_MS / 8);
            let late = random.random_bool(0.02);
            let time_ms = if late {
                self.time_ms - random.random_range(0..HOUR_MS * 60)
            } else {
                self.time_ms
            };
            let tenant = TENANTS[random.random_range(0..TENANTS.len())];
            let currency = if random.random_bool(0.8) {
                "credits"
            } else {
                "usd"
            };
            let user = USERS[random.random_range(0..USERS.len())];
            let action = random
                .random_bool(0.8)
                .then(|| ACTIONS[random.random_range(0..ACTIONS.len())]);
            let quantity = random.random_range(1..5u64);
            let credits = random.random_range(0..1000i64);
            let wallet = wallet(tenant, user, currency);
            let action_use = action.map(|name| ActionUse {
                name,
                quantity,
                unit_cost: 1,
            });
            let spend = Spend {
                tenant,
                currency,
                user,
                action,
                quantity: action.map_or(0, |_| quantity as i64),
                credits,
                hour: hour_of(time_ms),
            };
            match random.random_range(0..20) {
                0..=11 => {
                    self.spends.push(spend);
                    Event::Debited {
                        wallet,
                        kind: DebitKind::Usage,
                        amount: credits,
                        balance_after: 0,
                        available_after: 0,
                        action: action_use,
                        pool: None,
                        meta: meta(time_ms),
                    }
                }
                12..=14 => {
                    self.spends.push(spend);
                    Event::ReservationCaptured {
                        wallet,
                        reservation_id: 1,
                        held: credits,
                        charged: credits,
                        balance_after: 0,
                        reserved_after: 0,
                        available_after: 0,
                        action: action_use,
                        pool: None,
                        meta: meta(time_ms),
                    }
                }
                15 => Event::Debited {
                    wallet,
                    kind: DebitKind::Revoke,
                    amount: credits,
                    balance_after: 0,
                    available_after: 0,
                    action: None,
                    pool: None,
                    meta: meta(time_ms),
                },
                16 => Event::ReservationReleased {
                    wallet,
                    reservation_id: 1,
                    amount: credits,
                    reason: ReleaseReason::Expired,
                    reserved_after: 0,
                    available_after: 0,
                    pool: None,
                    meta: meta(time_ms),
                },
                17 | 18 => {
                    // A payment starts; its success may come later (or never).
                    let reference: &'static str =
                        Box::leak(format!("pay_{}", self.payments.len()).into_boxed_str());
                    let package = ["starter", "pro"][random.random_range(0..2)];
                    self.payments
                        .push((reference, tenant, user, currency, package));
                    let price_currency = ["NGN", "USD"][random.random_range(0..2)];
                    Event::PaymentInitialized {
                        wallet,
                        reference,
                        terms: PaymentTerms {
                            package,
                            credits: 500,
                            amount_minor: 200_000,
                            price_currency: Currency::new(price_currency).unwrap(),
                        },
                        gateway: "sandbox",
                        purpose: PaymentPurpose::Checkout,
                        meta: meta(time_ms),
                    }
                }
                _ => {
                    // A success for a payment started earlier, or for one the history never saw.
                    let started = (!self.payments.is_empty() && random.random_bool(0.9))
                        .then(|| self.payments[random.random_range(0..self.payments.len())]);
                    let (reference, tenant, wallet, package) = match started {
                        Some((reference, tenant, user, currency, package)) => (
                            reference,
                            tenant,
                            self::wallet(tenant, user, currency),
                            Some(package),
                        ),
                        None => ("pay_unknown", tenant, wallet, None),
                    };
                    let paid_currency = ["NGN", "USD"][random.random_range(0..2)];
                    let amount_minor = random.random_range(1..300_000);
                    self.sales.push(Sale {
                        tenant,
                        package,
                        currency: paid_currency,
                        amount_minor,
                        credits,
                        hour: hour_of(time_ms),
                    });
                    Event::PaymentSucceeded {
                        wallet,
                        reference,
                        credits,
                        paid_minor: amount_minor,
                        paid_currency: Currency::new(paid_currency).unwrap(),
                        balance_after: 0,
                        available_after: 0,
                        method: None,
                        meta: meta(time_ms),
                    }
                }
            }
        }
    }

    fn reader(path: &Path) -> Reader {
        Reader::new(path, Arc::new(AtomicU64::new(0)))
    }

    /// The brute-force usage report.
    fn expected_usage(spends: &[Spend], query: &UsageQuery<'_>) -> Vec<(Key, Totals)> {
        let mut grouped: std::collections::BTreeMap<Key, Totals> = Default::default();
        for spend in spends {
            let window = query.window;
            if spend.tenant != query.tenant
                || spend.currency != query.currency
                || spend.hour < window.from_hour
                || spend.hour >= window.to_hour
                || query.user.is_some_and(|user| user != spend.user)
            {
                continue;
            }
            let key = match query.group_by {
                UsageGrouping::Action => spend
                    .action
                    .map_or(Key::Unnamed, |action| Key::Name(action.into())),
                UsageGrouping::User => Key::Name(spend.user.into()),
                UsageGrouping::Day => Key::Hour(spend.hour - spend.hour.rem_euclid(24)),
                UsageGrouping::Hour => Key::Hour(spend.hour),
            };
            let totals = Totals {
                count: 1,
                quantity: spend.quantity,
                credits: spend.credits,
            };
            grouped.entry(key).or_default().add(&totals).unwrap();
        }
        grouped.into_iter().collect()
    }

    /// Compares every grouping of usage, with and without a user, and revenue, over windows of
    /// one hour to the whole history, against the brute force.
    fn compare(path: &Path, generator: &Generator, random: &mut StdRng) {
        let reader = reader(path);
        let first = hour_of(START_MS) - 70;
        let last = hour_of(generator.time_ms) + 3;
        let mut windows = vec![(first, last + 1), (first + 1, last)];
        for length in [1, 5, 24, 100, 300] {
            let from = random.random_range(first..last);
            windows.push((from, from + length));
        }
        let groupings = [
            UsageGrouping::Action,
            UsageGrouping::User,
            UsageGrouping::Day,
            UsageGrouping::Hour,
        ];
        for (from_hour, to_hour) in windows {
            let window = Window { from_hour, to_hour };
            for tenant in TENANTS {
                for currency in ["credits", "usd"] {
                    for group_by in groupings {
                        for user in [None, Some("ada"), Some("gus"), Some("nobody")] {
                            let query = UsageQuery {
                                tenant,
                                currency,
                                window,
                                group_by,
                                user,
                            };
                            let report: Vec<(Key, Totals)> = reader
                                .usage(&query)
                                .unwrap()
                                .into_iter()
                                .map(|row| (row.key, row.totals))
                                .collect();
                            assert_eq!(
                                report,
                                expected_usage(&generator.spends, &query),
                                "{query:?}"
                            );
                        }
                    }
                }
                compare_revenue(&reader, generator, tenant, window);
            }
        }
    }

    fn compare_revenue(reader: &Reader, generator: &Generator, tenant: &str, window: Window) {
        for group_by in [
            RevenueGrouping::Package,
            RevenueGrouping::Currency,
            RevenueGrouping::Day,
        ] {
            let query = RevenueQuery {
                tenant,
                window,
                group_by,
            };
            let report: Vec<(Key, String, Sales)> = reader
                .revenue(&query)
                .unwrap()
                .into_iter()
                .map(|row| (row.key, row.currency, row.sales))
                .collect();
            let mut expected: std::collections::BTreeMap<(Key, String), Sales> = Default::default();
            for sale in &generator.sales {
                if sale.tenant != tenant
                    || sale.hour < window.from_hour
                    || sale.hour >= window.to_hour
                {
                    continue;
                }
                let key = match group_by {
                    RevenueGrouping::Package => sale
                        .package
                        .map_or(Key::Unnamed, |package| Key::Name(package.into())),
                    RevenueGrouping::Currency => Key::Name(sale.currency.into()),
                    RevenueGrouping::Day => Key::Hour(sale.hour - sale.hour.rem_euclid(24)),
                };
                let sales = Sales {
                    count: 1,
                    amount_minor: sale.amount_minor,
                    credits_sold: sale.credits,
                };
                expected
                    .entry((key, sale.currency.into()))
                    .or_default()
                    .add(&sales)
                    .unwrap();
            }
            let expected: Vec<(Key, String, Sales)> = expected
                .into_iter()
                .map(|((key, currency), sales)| (key, currency, sales))
                .collect();
            assert_eq!(report, expected, "{query:?}");
        }
    }

    #[test]
    fn every_report_matches_a_brute_force_sum_of_the_spends_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        let mut store = Store::open(&path).unwrap();
        let mut generator = Generator::new(7);
        let mut random = StdRng::seed_from_u64(11);
        let mut lsn = 0;
        for step in 0..60 {
            let mut feed = store.begin().unwrap();
            for _ in 0..random.random_range(1..120) {
                lsn += 1;
                let event = generator.next();
                feed.apply(lsn, &event).unwrap();
            }
            feed.commit(lsn + 1).unwrap();
            if step % 20 == 19 {
                compare(&path, &generator, &mut random);
            }
        }
        let sealed = sealed_hour(&store.connection).unwrap().unwrap();
        assert!(
            sealed > hour_of(START_MS) + 24 * 10,
            "sealed through hour {sealed}: the history spans weeks"
        );
        let blocks: i64 = store
            .connection
            .query_row(
                "SELECT count(*) FROM usage_user_blocks WHERE level >= 8",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(blocks > 0, "blocks of 256 hours were sealed");
    }

    #[test]
    fn a_total_that_would_overflow_fails_the_step_and_keeps_nothing_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("history.sqlite3")).unwrap();
        let debit = |amount| Event::Debited {
            wallet: wallet("acme", "ada", "credits"),
            kind: DebitKind::Usage,
            amount,
            balance_after: 0,
            available_after: 0,
            action: None,
            pool: None,
            meta: meta(START_MS),
        };
        let mut feed = store.begin().unwrap();
        feed.apply(1, &debit(i64::MAX - 1)).unwrap();
        feed.commit(2).unwrap();
        // Across steps: the UPSERT would leave the integers, so it writes nothing and says so.
        let mut feed = store.begin().unwrap();
        feed.apply(2, &debit(2)).unwrap();
        let error = feed.commit(3).unwrap_err();
        assert!(matches!(error, StoreError::Overflow(_)), "{error}");
        // Within a step: the sum in memory is checked.
        let mut feed = store.begin().unwrap();
        feed.apply(2, &debit(1)).unwrap();
        assert!(matches!(
            feed.apply(3, &debit(i64::MAX)),
            Err(StoreError::Overflow(_))
        ));
        drop(feed);
        let credits: i64 = store
            .connection
            .query_row("SELECT credits FROM usage_hourly", [], |row| row.get(0))
            .unwrap();
        assert_eq!(credits, i64::MAX - 1);
        assert_eq!(store.next_lsn().unwrap(), 2);
    }
}
