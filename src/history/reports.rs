//! The usage and revenue reports, read from the rollups ([`super::rollup`]), never from the
//! entries.
//!
//! A window is whole UTC hours `[from, to)`. Each query reads one snapshot of the database (a
//! read transaction), so the sealed watermark and the blocks it reads agree.
//!
//! - **One user** (any grouping): that user's rows of `usage_hourly`, one index seek per hour of
//!   the window (a user has at most one row per action and hour).
//! - **A tenant, by action, day or hour**: `usage_action_blocks`. The window is cut into aligned
//!   blocks, the largest sealed block that fits first (at most two per level: about ten blocks for
//!   30 days); the hours not sealed yet are one range of level 0, which is always complete. A day
//!   is cut the same way; by hour, the level-0 rows of the window are one range of the table.
//! - **A tenant, by user**: the sealed part of the window cut into user blocks, merged in one
//!   pass (each is sorted by user id), plus the hours not sealed yet from `usage_hourly`.
//! - **Revenue**: `revenue_hourly` (a few rows per hour with payments).
//!
//! Rows come sorted by key: names in byte order with the spends by amount (no action) or the
//! payments of an unknown package last, times in order; revenue rows of one key by currency.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection, OptionalExtension};

use super::reader::Reader;
use super::rollup::{self, block_hours, text, Sales, Totals, TOP_LEVEL};
use super::user_block::{UsersReader, UsersWriter};
use super::StoreError;

/// Hours in a UTC day.
pub const DAY_HOURS: i64 = 24;

/// A report window: whole hours since the Unix epoch, `[from_hour, to_hour)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first hour in the window.
    pub from_hour: i64,
    /// The first hour after it.
    pub to_hour: i64,
}

/// How usage rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGrouping {
    /// By catalogue action (spends by amount together, without a name).
    Action,
    /// By user.
    User,
    /// By UTC day.
    Day,
    /// By UTC hour.
    Hour,
}

/// How revenue rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevenueGrouping {
    /// By package (and currency).
    Package,
    /// By currency.
    Currency,
    /// By UTC day (and currency).
    Day,
}

/// What usage to report.
#[derive(Debug, Clone, Copy)]
pub struct UsageQuery<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The wallet currency; or, for what a credit pool paid for its members, the pool's scope
    /// ([`super::rollup::pool_scope`]).
    pub currency: &'a str,
    /// The window.
    pub window: Window,
    /// The grouping.
    pub group_by: UsageGrouping,
    /// Only this user's spends.
    pub user: Option<&'a str>,
}

/// What revenue to report.
#[derive(Debug, Clone, Copy)]
pub struct RevenueQuery<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The window.
    pub window: Window,
    /// The grouping.
    pub group_by: RevenueGrouping,
}

/// A row's key. Sorted names first, then the one without a name, then times.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// An action, user, package or currency.
    Name(String),
    /// Spends by amount (no action), or payments whose package the history never saw.
    Unnamed,
    /// The first hour (since the epoch) of a day or an hour.
    Hour(i64),
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// What the row counts.
    pub key: Key,
    /// Its spends.
    pub totals: Totals,
}

/// One row of a revenue report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueRow {
    /// What the row counts.
    pub key: Key,
    /// The currency paid.
    pub currency: String,
    /// Its payments.
    pub sales: Sales,
}

/// An aligned block of hours: `2^level` hours from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    level: u32,
    start: i64,
}

impl Block {
    fn end(self) -> i64 {
        self.start + block_hours(self.level)
    }
}

/// Cuts `[from, to)` into aligned blocks, from the left, each the largest that fits: at most two
/// blocks per level (one on the way up, one on the way down).
fn blocks(from: i64, to: i64) -> Vec<Block> {
    let mut cut = Vec::new();
    let mut hour = from;
    while hour < to {
        let mut block = Block {
            level: 0,
            start: hour,
        };
        while block.level < TOP_LEVEL {
            let larger = Block {
                level: block.level + 1,
                start: hour,
            };
            if hour.rem_euclid(block_hours(larger.level)) != 0 || larger.end() > to {
                break;
            }
            block = larger;
        }
        cut.push(block);
        hour = block.end();
    }
    cut
}

/// The first hour of the UTC day holding `hour`.
fn day_of(hour: i64) -> i64 {
    hour - hour.rem_euclid(DAY_HOURS)
}

impl Reader {
    /// A usage report: its rows, sorted by key.
    pub fn usage(&self, query: &UsageQuery<'_>) -> Result<Vec<UsageRow>, StoreError> {
        self.with_connection(|connection| {
            // One snapshot for the watermark and the blocks.
            let snapshot = connection.unchecked_transaction()?;
            let Some(scope) = rollup::scope_of(&snapshot, query.tenant, query.currency)? else {
                // No spend ever in this tenant's currency.
                return Ok(Vec::new());
            };
            let sealed = rollup::sealed_hour(&snapshot)?;
            match (query.user, query.group_by) {
                (Some(user), _) => user_usage(&snapshot, query, scope, user),
                (None, UsageGrouping::User) => usage_by_user(&snapshot, query, scope, sealed),
                (None, _) => tenant_usage(&snapshot, query, scope, sealed),
            }
        })
    }

    /// A revenue report: its rows, sorted by key and currency.
    pub fn revenue(&self, query: &RevenueQuery<'_>) -> Result<Vec<RevenueRow>, StoreError> {
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT hour, package, currency, count, amount_minor, credits_sold
                 FROM revenue_hourly WHERE tenant = ?1 AND hour >= ?2 AND hour < ?3",
            )?;
            let mut rows = statement.query(params![
                query.tenant,
                query.window.from_hour,
                query.window.to_hour
            ])?;
            let mut grouped: BTreeMap<(Key, String), Sales> = BTreeMap::new();
            while let Some(row) = rows.next()? {
                let hour: i64 = row.get(0)?;
                let package = text(row, 1)?;
                let currency: String = row.get(2)?;
                let sales = Sales {
                    count: row.get(3)?,
                    amount_minor: row.get(4)?,
                    credits_sold: row.get(5)?,
                };
                let key = match query.group_by {
                    RevenueGrouping::Package => name_or_unnamed(package),
                    RevenueGrouping::Currency => Key::Name(currency.clone()),
                    RevenueGrouping::Day => Key::Hour(day_of(hour)),
                };
                grouped.entry((key, currency)).or_default().add(&sales)?;
            }
            Ok(grouped
                .into_iter()
                .map(|((key, currency), sales)| RevenueRow {
                    key,
                    currency,
                    sales,
                })
                .collect())
        })
    }
}

fn name_or_unnamed(name: &str) -> Key {
    if name.is_empty() {
        Key::Unnamed
    } else {
        Key::Name(name.to_owned())
    }
}

/// What a row is grouped under before names are looked up: an action number or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Action(i64),
    Hour(i64),
}

/// Rows from a map of totals, with action numbers named, sorted by key.
fn named(
    connection: &Connection,
    grouped: HashMap<Group, Totals>,
) -> Result<Vec<UsageRow>, StoreError> {
    let mut rows = Vec::with_capacity(grouped.len());
    for (group, totals) in grouped {
        let key = match group {
            Group::Action(action) => name_or_unnamed(&rollup::action_name(connection, action)?),
            Group::Hour(hour) => Key::Hour(hour),
        };
        rows.push(UsageRow { key, totals });
    }
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

/// One user's usage: `usage_hourly`, one seek per hour.
fn user_usage(
    connection: &Connection,
    query: &UsageQuery<'_>,
    scope: i64,
    user: &str,
) -> Result<Vec<UsageRow>, StoreError> {
    let account = connection
        .prepare_cached("SELECT id FROM accounts WHERE tenant = ?1 AND user_id = ?2")?
        .query_row(params![query.tenant, user], |row| row.get::<_, i64>(0))
        .optional()?;
    let Some(account) = account else {
        // No entry ever: no spend.
        return Ok(Vec::new());
    };
    let mut statement = connection.prepare_cached(
        "WITH RECURSIVE hours(hour) AS (
             SELECT ?2 WHERE ?2 < ?3 UNION ALL SELECT hour + 1 FROM hours WHERE hour + 1 < ?3
         )
         SELECT usage.hour, usage.action, usage.count, usage.quantity, usage.credits
         FROM hours CROSS JOIN usage_hourly AS usage
         WHERE usage.scope = ?1 AND usage.hour = hours.hour AND usage.account = ?4",
    )?;
    let mut rows = statement.query(params![
        scope,
        query.window.from_hour,
        query.window.to_hour,
        account
    ])?;
    let mut grouped: HashMap<Group, Totals> = HashMap::new();
    let mut total = Totals::default();
    while let Some(row) = rows.next()? {
        let hour: i64 = row.get(0)?;
        let totals = Totals {
            count: row.get(2)?,
            quantity: row.get(3)?,
            credits: row.get(4)?,
        };
        let group = match query.group_by {
            UsageGrouping::Action => Group::Action(row.get(1)?),
            UsageGrouping::User => {
                total.add(&totals)?;
                continue;
            }
            UsageGrouping::Day => Group::Hour(day_of(hour)),
            UsageGrouping::Hour => Group::Hour(hour),
        };
        grouped.entry(group).or_default().add(&totals)?;
    }
    if query.group_by == UsageGrouping::User {
        return Ok(if total.count == 0 {
            Vec::new()
        } else {
            vec![UsageRow {
                key: Key::Name(user.to_owned()),
                totals: total,
            }]
        });
    }
    named(connection, grouped)
}

/// A tenant's usage by action, day or hour: action blocks.
fn tenant_usage(
    connection: &Connection,
    query: &UsageQuery<'_>,
    scope: i64,
    sealed: Option<i64>,
) -> Result<Vec<UsageRow>, StoreError> {
    let Window { from_hour, to_hour } = query.window;
    // Blocks cover [from, sealed_to); the hours after it are read at level 0, in one range (only
    // the hours with spends are there).
    let sealed_to = sealed.unwrap_or(from_hour).clamp(from_hour, to_hour);
    let mut grouped: HashMap<Group, Totals> = HashMap::new();
    match query.group_by {
        UsageGrouping::Action => {
            for block in blocks(from_hour, sealed_to) {
                action_block(connection, scope, block, |action, totals| {
                    grouped
                        .entry(Group::Action(action))
                        .or_default()
                        .add(totals)
                })?;
            }
            hour_rows(
                connection,
                scope,
                sealed_to,
                to_hour,
                |_, action, totals| {
                    grouped
                        .entry(Group::Action(action))
                        .or_default()
                        .add(totals)
                },
            )?;
        }
        UsageGrouping::Day => {
            let mut day = day_of(from_hour);
            while day < sealed_to {
                let (from, to) = (day.max(from_hour), (day + DAY_HOURS).min(sealed_to));
                for block in blocks(from, to) {
                    action_block(connection, scope, block, |_, totals| {
                        grouped.entry(Group::Hour(day)).or_default().add(totals)
                    })?;
                }
                day += DAY_HOURS;
            }
            hour_rows(connection, scope, sealed_to, to_hour, |hour, _, totals| {
                grouped
                    .entry(Group::Hour(day_of(hour)))
                    .or_default()
                    .add(totals)
            })?;
        }
        UsageGrouping::Hour | UsageGrouping::User => {
            // Level 0 is every hour, and holds each in key order: one range, summed by SQLite.
            let mut statement = connection.prepare_cached(
                "SELECT start, sum(count), sum(quantity), sum(credits) FROM usage_action_blocks
                 WHERE scope = ?1 AND level = 0 AND start >= ?2 AND start < ?3
                 GROUP BY start",
            )?;
            let mut rows = statement.query(params![scope, from_hour, to_hour])?;
            while let Some(row) = rows.next()? {
                let totals = Totals {
                    count: row.get(1)?,
                    quantity: row.get(2)?,
                    credits: row.get(3)?,
                };
                grouped.insert(Group::Hour(row.get(0)?), totals);
            }
        }
    }
    named(connection, grouped)
}

/// Calls `visit` with every level-0 row (hour, action, totals) of `scope` in the hours
/// `[from, to)`.
fn hour_rows(
    connection: &Connection,
    scope: i64,
    from: i64,
    to: i64,
    mut visit: impl FnMut(i64, i64, &Totals) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if from >= to {
        return Ok(());
    }
    let mut statement = connection.prepare_cached(
        "SELECT start, action, count, quantity, credits FROM usage_action_blocks
         WHERE scope = ?1 AND level = 0 AND start >= ?2 AND start < ?3",
    )?;
    let mut rows = statement.query(params![scope, from, to])?;
    while let Some(row) = rows.next()? {
        let totals = Totals {
            count: row.get(2)?,
            quantity: row.get(3)?,
            credits: row.get(4)?,
        };
        visit(row.get(0)?, row.get(1)?, &totals)?;
    }
    Ok(())
}

/// Calls `visit` with every action row of an action block of `scope`.
fn action_block(
    connection: &Connection,
    scope: i64,
    block: Block,
    mut visit: impl FnMut(i64, &Totals) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT action, count, quantity, credits FROM usage_action_blocks
         WHERE scope = ?1 AND level = ?2 AND start = ?3",
    )?;
    let mut rows = statement.query(params![scope, block.level, block.start])?;
    while let Some(row) = rows.next()? {
        let totals = Totals {
            count: row.get(1)?,
            quantity: row.get(2)?,
            credits: row.get(3)?,
        };
        visit(row.get(0)?, &totals)?;
    }
    Ok(())
}

/// A tenant's usage by user: the sealed part from user blocks, the rest from `usage_hourly`.
fn usage_by_user(
    connection: &Connection,
    query: &UsageQuery<'_>,
    scope: i64,
    sealed: Option<i64>,
) -> Result<Vec<UsageRow>, StoreError> {
    let Window { from_hour, to_hour } = query.window;
    let sealed_to = sealed.unwrap_or(from_hour).clamp(from_hour, to_hour);
    let mut parts = Vec::new();
    // Every block of [from, sealed_to) ends by the watermark.
    for block in blocks(from_hour, sealed_to) {
        parts.extend(rollup::user_block(
            connection,
            block.level,
            block.start,
            scope,
        )?);
    }
    if sealed_to < to_hour {
        parts.extend(open_hours_by_user(connection, scope, sealed_to, to_hour)?);
    }
    let summed = merge_users(&parts)?;
    let names = user_names(connection, &summed)?;
    let mut rows: Vec<UsageRow> = names
        .into_iter()
        .zip(summed)
        .map(|(user, (_, totals))| UsageRow {
            key: Key::Name(user),
            totals,
        })
        .collect();
    rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(rows)
}

/// Every account of `blocks` with its totals summed over them, in account order. Each block is
/// sorted by account and is merged, as it is decoded, into the running sum (two buffers, used in
/// turn): when most users are in most blocks, as over a long window, that is about one
/// comparison per user and block.
fn merge_users(blocks: &[Vec<u8>]) -> Result<Vec<(i64, Totals)>, StoreError> {
    let mut sum: Vec<(i64, Totals)> = Vec::new();
    let mut next: Vec<(i64, Totals)> = Vec::new();
    for block in blocks {
        let mut users = UsersReader::new(block)?;
        next.clear();
        next.reserve(sum.len());
        let mut summed = sum.iter().copied().peekable();
        let mut incoming = users.next_user()?;
        loop {
            match (summed.peek().copied(), incoming) {
                (Some((account, totals)), Some((new_account, new_totals))) => {
                    match account.cmp(&new_account) {
                        std::cmp::Ordering::Less => {
                            next.push((account, totals));
                            summed.next();
                        }
                        std::cmp::Ordering::Greater => {
                            next.push((new_account, new_totals));
                            incoming = users.next_user()?;
                        }
                        std::cmp::Ordering::Equal => {
                            let mut total = totals;
                            total.add(&new_totals)?;
                            next.push((account, total));
                            summed.next();
                            incoming = users.next_user()?;
                        }
                    }
                }
                (Some(_), None) => {
                    next.extend(summed);
                    break;
                }
                (None, Some(new)) => {
                    next.push(new);
                    incoming = users.next_user()?;
                }
                (None, None) => break,
            }
        }
        std::mem::swap(&mut sum, &mut next);
    }
    Ok(sum)
}

/// The user id of every account of `accounts` (in ascending account order), in the same order.
/// Accounts are numbered as the ledger meets users, so a tenant's are mostly close together: a
/// range of the table is read when it is not much wider than the list, else one lookup each.
fn user_names(
    connection: &Connection,
    accounts: &[(i64, Totals)],
) -> Result<Vec<String>, StoreError> {
    let (Some(&(first, _)), Some(&(last, _))) = (accounts.first(), accounts.last()) else {
        return Ok(Vec::new());
    };
    let unnamed = || StoreError::Damaged("an account without a user");
    let mut names = Vec::with_capacity(accounts.len());
    let span = usize::try_from(last - first).unwrap_or(usize::MAX);
    if span <= accounts.len().saturating_mul(4).saturating_add(4096) {
        let mut statement = connection
            .prepare_cached("SELECT id, user_id FROM accounts WHERE id >= ?1 AND id <= ?2")?;
        let mut rows = statement.query(params![first, last])?;
        let mut wanted = accounts.iter().map(|&(account, _)| account).peekable();
        while let (Some(&account), Some(row)) = (wanted.peek(), rows.next()?) {
            if row.get::<_, i64>(0)? == account {
                names.push(text(row, 1)?.to_owned());
                wanted.next();
            }
        }
        if wanted.next().is_some() {
            return Err(unnamed());
        }
    } else {
        let mut statement =
            connection.prepare_cached("SELECT user_id FROM accounts WHERE id = ?1")?;
        for &(account, _) in accounts {
            let name = statement
                .query_row(params![account], |row| row.get::<_, String>(0))
                .optional()?
                .ok_or_else(unnamed)?;
            names.push(name);
        }
    }
    Ok(names)
}

/// The user blocks of the hours with spends in `[from, to)` (hours not sealed yet), from
/// `usage_hourly`: one hour at a time, so that SQLite sums each in index order without sorting.
fn open_hours_by_user(
    connection: &Connection,
    scope: i64,
    from: i64,
    to: i64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let hours: Vec<i64> = {
        let mut statement = connection.prepare_cached(
            "SELECT hour FROM usage_hours WHERE hour >= ?1 AND hour < ?2 AND scope = ?3",
        )?;
        let rows = statement.query_map(params![from, to, scope], |row| row.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut statement = connection.prepare_cached(
        "SELECT account, sum(count), sum(quantity), sum(credits) FROM usage_hourly
         WHERE scope = ?1 AND hour = ?2 GROUP BY account",
    )?;
    let mut blocks = Vec::with_capacity(hours.len());
    for hour in hours {
        let mut rows = statement.query(params![scope, hour])?;
        let mut block = UsersWriter::new();
        while let Some(row) = rows.next()? {
            let totals = Totals {
                count: row.get(1)?,
                quantity: row.get(2)?,
                credits: row.get(3)?,
            };
            block.add(row.get(0)?, &totals)?;
        }
        blocks.push(block.finish());
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_cut_into_at_most_two_aligned_blocks_per_level() {
        assert_eq!(
            blocks(4, 12),
            [Block { level: 2, start: 4 }, Block { level: 2, start: 8 }]
        );
        assert_eq!(blocks(5, 6), [Block { level: 0, start: 5 }]);
        assert_eq!(blocks(7, 7), []);
        for (from, length) in [(5, 720), (490_001, 9600), (3, 24), (0, 16_384 * 3)] {
            let cut = blocks(from, from + length);
            let mut hour = from;
            for block in &cut {
                assert_eq!(block.start, hour, "contiguous");
                assert_eq!(block.start % block_hours(block.level), 0, "aligned");
                hour = block.end();
            }
            assert_eq!(hour, from + length, "covers the window");
            for level in 0..=TOP_LEVEL {
                let at_level = cut.iter().filter(|block| block.level == level).count();
                let most = if level == TOP_LEVEL { usize::MAX } else { 2 };
                assert!(at_level <= most, "{from} {length}: {cut:?}");
            }
        }
    }
}
