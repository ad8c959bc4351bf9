//! The invariants of DESIGN.md that can be checked on a state at rest, after recovery and by tests:
//! every wallet's reserved amount equals its open reservations and is not negative, no wallet is
//! below its floor unless a chargeback took it there (and it is marked so), the reservation index
//! agrees with the users, and no entity or idempotency key refers to a record the log does not
//! have. For credit pools: a pool's balance equals its credits minus what it paid, its reserved
//! amount equals what it holds for its members' open reservations and never exceeds its balance,
//! no member is above its daily cap, and a pool's members and the users that draw on it are the
//! same. (Conservation, balance = credits − debits, is also proven record by record as replay
//! applies each event against the balance it recorded.)

use std::collections::HashMap;

use super::state::{Account, IdempotencyState, PaymentState, ReservationPhase, State, Tenant};
use super::types::{Currency, Lsn, PaymentPurpose};
use super::Engine;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant:?}, user {user:?}: {detail}")]
pub struct InvariantViolation {
    /// The tenant.
    pub tenant: String,
    /// The user (empty for tenant-level problems).
    pub user: String,
    /// What is wrong.
    pub detail: String,
}

/// What a state holds, counted while checking it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Tenants.
    pub tenants: u64,
    /// Users.
    pub users: u64,
    /// Wallets.
    pub wallets: u64,
    /// Open reservations.
    pub reservations_open: u64,
    /// Idempotency keys.
    pub idempotency_keys: u64,
    /// Payments remembered.
    pub payments: u64,
    /// Credit pools.
    pub pools: u64,
}

/// Checks every invariant on `state`, whose log continues at `next_lsn`; counts what it saw.
pub(crate) fn check(state: &State, next_lsn: Lsn) -> Result<Figures, InvariantViolation> {
    let mut figures = Figures::default();
    for tenant in state.tenant_list() {
        figures.tenants += 1;
        check_tenant(state, &tenant, next_lsn, &mut figures).map_err(|(user, detail)| {
            InvariantViolation {
                tenant: tenant.id.to_string(),
                user,
                detail,
            }
        })?;
    }
    let mut pool_payments = Vec::new();
    for entry in state.payments.iter() {
        if entry.last_lsn >= next_lsn {
            return Err(InvariantViolation {
                tenant: entry.tenant.to_string(),
                user: entry.user.to_string(),
                detail: format!(
                    "payment {} refers to LSN {} ≥ {next_lsn}",
                    entry.key(),
                    entry.last_lsn
                ),
            });
        }
        if let Some(pool) = &entry.pool {
            pool_payments.push((
                entry.key().to_string(),
                entry.tenant.to_string(),
                pool.to_string(),
                entry.user.to_string(),
            ));
        }
        figures.payments += 1;
    }
    // A pool's payment names an existing pool of its tenant, and no user. Checked after the
    // walk of the payments map: a pool's lock is taken before a payment's, never under it.
    for (reference, tenant, pool, user) in pool_payments {
        let known = state
            .tenant(&tenant)
            .is_some_and(|found| found.pools.contains_key(pool.as_str()));
        if !known || !user.is_empty() {
            return Err(InvariantViolation {
                tenant,
                user,
                detail: format!(
                    "payment {reference} is for the pool {pool}, which the tenant does not have \
                     (or it names a user too)"
                ),
            });
        }
    }
    Ok(figures)
}

/// What is wrong, and with which user of the tenant (empty for the tenant itself).
type Broken = (String, String);

/// One tenant: its catalogue, each user, its reservation index and its idempotency keys.
fn check_tenant(
    state: &State,
    tenant: &Tenant,
    next_lsn: Lsn,
    figures: &mut Figures,
) -> Result<(), Broken> {
    let tenant_level = |detail: String| (String::new(), detail);
    if tenant.catalogue.read().last_lsn >= next_lsn {
        return Err(tenant_level(
            "catalogue changed by a record the log does not have".into(),
        ));
    }
    // Who draws on which pool, and what the pool holds for them: gathered from the users first,
    // so that no user lock is taken under a pool lock.
    let mut drawers: HashMap<String, (String, i64)> = HashMap::new();
    for entry in tenant.users.iter() {
        let (user, account) = (entry.key().as_str(), entry.value());
        figures.users += 1;
        check_account(state, tenant, user, account, next_lsn, figures)
            .map_err(|detail| (user.to_owned(), detail))?;
        let pool_held = account
            .reservations()
            .iter()
            .fold(0i64, |sum, r| sum.saturating_add(r.pool_amount));
        match account.pool() {
            Some(pool) => {
                drawers.insert(user.to_owned(), (pool.to_owned(), pool_held));
            }
            None if pool_held != 0 => {
                return Err((user.to_owned(), "a pool holds for a user of no pool".into()));
            }
            None => {}
        }
    }
    check_pools(tenant, &drawers, next_lsn, figures)?;
    let open_indexed = tenant
        .reservations
        .iter()
        .filter(|e| matches!(e.state, ReservationPhase::Open { .. }))
        .count() as u64;
    let open_in_users: u64 = tenant
        .users
        .iter()
        .map(|e| e.reservations().len() as u64)
        .sum();
    if open_indexed != open_in_users {
        return Err(tenant_level(format!(
            "{open_indexed} open reservations indexed, {open_in_users} held by users"
        )));
    }
    for entry in tenant.idempotency.iter() {
        if let IdempotencyState::Done { lsn, .. } = entry.state {
            if lsn >= next_lsn {
                return Err(tenant_level(format!(
                    "idempotency key {:?} refers to LSN {lsn} ≥ {next_lsn}",
                    entry.key()
                )));
            }
            figures.idempotency_keys += 1;
        }
    }
    Ok(())
}

/// A tenant's pools: each against what its members hold and drew, and the users that draw on
/// it (`drawers`: user → its pool and what its pool holds for it).
fn check_pools(
    tenant: &Tenant,
    drawers: &HashMap<String, (String, i64)>,
    next_lsn: Lsn,
    figures: &mut Figures,
) -> Result<(), Broken> {
    let broken = |pool: &str, detail: String| (String::new(), format!("pool {pool:?}: {detail}"));
    let mut members_seen = 0usize;
    for entry in tenant.pools.iter() {
        let (id, pool) = (entry.key().as_str(), entry.value());
        figures.pools += 1;
        if pool.last_lsn >= next_lsn {
            return Err(broken(
                id,
                format!("last change at LSN {} ≥ next LSN {next_lsn}", pool.last_lsn),
            ));
        }
        if pool.credited.checked_sub(pool.paid) != Some(pool.balance) {
            return Err(broken(
                id,
                format!(
                    "balance {} ≠ credits {} − paid {}",
                    pool.balance, pool.credited, pool.paid
                ),
            ));
        }
        if pool.reserved < 0 || pool.reserved > pool.balance {
            return Err(broken(
                id,
                format!(
                    "reserved {} outside 0..=balance {}",
                    pool.reserved, pool.balance
                ),
            ));
        }
        let mut held = 0i64;
        for (user, member) in &pool.members {
            members_seen += 1;
            let Some((drawn_on, pool_held)) = drawers.get(user.as_str()) else {
                return Err(broken(id, format!("member {user:?} draws on no pool")));
            };
            if drawn_on != id {
                return Err(broken(
                    id,
                    format!("member {user:?} draws on pool {drawn_on:?}"),
                ));
            }
            held = held.saturating_add(*pool_held);
            if member.drawn < 0 || member.daily_cap.is_some_and(|cap| member.drawn > cap) {
                return Err(broken(
                    id,
                    format!(
                        "member {user:?} drew {} on day {}, above its cap {:?}",
                        member.drawn, member.day, member.daily_cap
                    ),
                ));
            }
        }
        if held != pool.reserved {
            return Err(broken(
                id,
                format!("reserved {} ≠ held for its members {held}", pool.reserved),
            ));
        }
    }
    if members_seen != drawers.len() {
        return Err((
            String::new(),
            format!(
                "{} users draw on a pool, the pools have {members_seen} members",
                drawers.len()
            ),
        ));
    }
    Ok(())
}

/// One user: its last LSN, its reservations against the index, its wallets, its rules.
fn check_account(
    state: &State,
    tenant: &Tenant,
    user: &str,
    account: &Account,
    next_lsn: Lsn,
    figures: &mut Figures,
) -> Result<(), String> {
    if account.last_lsn() >= next_lsn {
        return Err(format!(
            "last change at LSN {} ≥ next LSN {next_lsn}",
            account.last_lsn()
        ));
    }
    let held = check_reservations(tenant, user, account, figures)?;
    let mut currencies = Vec::new();
    for wallet in account.wallets() {
        figures.wallets += 1;
        if currencies.contains(&wallet.currency) {
            return Err(format!("two wallets in {}", wallet.currency));
        }
        currencies.push(wallet.currency);
        let expected = held.get(&wallet.currency).copied().unwrap_or(0);
        if wallet.reserved != expected {
            return Err(format!(
                "{}: reserved {} ≠ open reservations {expected}",
                wallet.currency, wallet.reserved
            ));
        }
        // Below the floor only by a chargeback, marked so until credits bring it back.
        let below = wallet.available() < wallet.floor();
        if wallet.overdraft < 0 || below != account.is_below_floor(wallet.currency) {
            return Err(format!(
                "{}: available {} against floor {}, marked below it by a chargeback: {}",
                wallet.currency,
                wallet.available(),
                wallet.floor(),
                account.is_below_floor(wallet.currency)
            ));
        }
    }
    if held.keys().any(|currency| !currencies.contains(currency)) {
        return Err("reservation in a currency without a wallet".into());
    }
    check_rules(state, tenant, user, account)
}

/// A user's open reservations: positive, indexed as open with the same expiry; returns what they
/// hold per currency.
fn check_reservations(
    tenant: &Tenant,
    user: &str,
    account: &Account,
    figures: &mut Figures,
) -> Result<HashMap<Currency, i64>, String> {
    let mut held: HashMap<Currency, i64> = HashMap::new();
    for reservation in account.reservations() {
        if reservation.amount <= 0 {
            return Err(format!(
                "reservation {} holds {}",
                reservation.id, reservation.amount
            ));
        }
        if reservation.pool_amount < 0 || reservation.pool_amount > reservation.amount {
            return Err(format!(
                "reservation {} holds {} of which its pool {}",
                reservation.id, reservation.amount, reservation.pool_amount
            ));
        }
        // The wallet holds what the user's pool does not.
        let sum = held.entry(reservation.currency).or_default();
        *sum = sum
            .checked_add(reservation.wallet_amount())
            .ok_or_else(|| "reserved overflows".to_owned())?;
        let indexed = tenant
            .reservations
            .get(&reservation.id)
            .map(|e| (e.user.clone(), e.state));
        match indexed {
            Some((owner, ReservationPhase::Open { expires_at_ms }))
                if owner == user && expires_at_ms == reservation.expires_at_ms => {}
            other => {
                return Err(format!(
                    "reservation {} indexed as {other:?}",
                    reservation.id
                ));
            }
        }
        figures.reservations_open += 1;
    }
    Ok(held)
}

/// A user's top-up rules: the primary wallet's flag agrees, each has a wallet, and one in flight
/// has its pending payment.
fn check_rules(
    state: &State,
    tenant: &Tenant,
    user: &str,
    account: &Account,
) -> Result<(), String> {
    let primary = account.primary.currency;
    let primary_rule = account.rule(primary).is_some_and(|rule| rule.enabled);
    if account.may_have_rule(primary) != primary_rule {
        return Err(format!("{primary}: rule flag disagrees with the rule"));
    }
    for rule in account.rules() {
        if account.wallet(rule.currency).is_none() {
            return Err(format!("{}: a rule without a wallet", rule.currency));
        }
        if let Some(reference) = &rule.pending {
            let payment = state.payments.get(reference.as_str()).map(|p| p.clone());
            let consistent = payment.is_some_and(|p| {
                p.state == PaymentState::Pending
                    && p.purpose == PaymentPurpose::AutoTopup
                    && p.user == user
                    && p.tenant == tenant.id
                    && p.currency == rule.currency
            });
            if !consistent {
                return Err(format!(
                    "top-up {reference} in flight has no pending payment"
                ));
            }
        }
    }
    Ok(())
}

impl Engine {
    /// Counts tenants, users, wallets and open reservations (briefly locking each shard in turn).
    pub fn census(&self) -> Figures {
        let mut figures = Figures::default();
        for tenant in self.state.tenant_list() {
            figures.tenants += 1;
            for entry in tenant.users.iter() {
                figures.users += 1;
                figures.wallets += entry.wallets().count() as u64;
                figures.reservations_open += entry.reservations().len() as u64;
            }
            figures.pools += tenant.pools.len() as u64;
        }
        figures.idempotency_keys = self.idempotency_entries();
        figures
    }

    /// Checks the invariants on the live state (briefly locking each shard in turn). For tests and
    /// the operator; the state must be quiet for the index comparison to be exact.
    pub fn check_invariants(&self) -> Result<Figures, InvariantViolation> {
        check(&self.state, self.wal.next_lsn())
    }
}
