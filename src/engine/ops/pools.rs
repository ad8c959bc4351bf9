//! Credit pools: creating and crediting them, who draws on them, and the pool's part in a
//! member's spend.
//!
//! A member's debit, reservation or capture takes what the user's own wallet can give (down to
//! its floor), then the rest from the pool, within the member's daily cap: all of it, in one
//! record that changes both, or nothing. The wallet path is untouched when the wallet suffices;
//! only a spend it cannot cover looks at the user's pool, under the pool's lock taken after the
//! user's (see `state::locks`).

use crate::engine::event::{Event, PoolShare};
use crate::engine::idempotency::{Begin, Done};
use crate::engine::state::{utc_day, Account, Pool, PoolGuard, Tenant, UserGuard, Wallet};
use crate::engine::types::{
    check_amount, check_id, check_text, CreditKind, Currency, EngineError, Invalid, Lsn, Missing,
};
use crate::engine::{Context, Engine};

use super::checks::checked;

/// Add credits to a pool (an administrator's act, or a package bought for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCreditRequest<'a> {
    /// The pool.
    pub pool: &'a str,
    /// Credits to add, > 0.
    pub amount: i64,
    /// Why (`grant` by an administrator).
    pub kind: CreditKind,
    /// Why, in words: recorded as the entry's description.
    pub reason: Option<&'a str>,
    /// The caller's reference.
    pub reference: Option<&'a str>,
}

/// What a member's pool may give a spend, as of a moment: the pool's available credits within
/// what the member may still draw that UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allowance {
    /// The UTC day.
    pub day: i64,
    /// What the member drew (and holds) that day.
    pub drawn: i64,
    /// What the pool may give now.
    pub available: i64,
}

/// The member `user`'s allowance in `pool` at `now_ms`, counting the reservations of `account`
/// already due as released (a dry run decides so; a real request has released them first).
/// Without an account, as the pool stands (for the record that releases a due reservation).
pub(crate) fn allowance(
    pool: &Pool,
    user: &str,
    account: Option<&Account>,
    now_ms: i64,
) -> Allowance {
    let day = utc_day(now_ms);
    let Some(member) = pool.members.get(user) else {
        return Allowance {
            day,
            drawn: 0,
            available: 0,
        };
    };
    let mut available = pool.available();
    let mut drawn = member.drawn_on(day);
    let reservations = account.map_or(&[][..], |account| account.reservations());
    for due in reservations
        .iter()
        .filter(|r| r.pool_amount > 0 && r.expires_at_ms <= now_ms)
    {
        available = available.saturating_add(due.pool_amount);
        if due.pool_day == day {
            drawn = drawn.saturating_sub(due.pool_amount);
        }
    }
    let cap_left = member
        .daily_cap
        .map_or(i64::MAX, |cap| cap.saturating_sub(drawn).max(0));
    Allowance {
        day,
        drawn,
        available: available.max(0).min(cap_left),
    }
}

/// What a wallet can give a spend: everything down to its floor.
#[inline]
pub(super) fn headroom(wallet: &Wallet) -> i64 {
    wallet.available().saturating_sub(wallet.floor()).max(0)
}

/// The refusal of a spend, with what the pool could still give it.
pub(super) fn short(refused: EngineError, pool_available: i64) -> EngineError {
    match refused {
        EngineError::InsufficientCredits(shortfall) => {
            EngineError::InsufficientCredits(shortfall.with_pool(pool_available))
        }
        other => other,
    }
}

impl Engine {
    /// The pool of `account`'s user, locked after the user's lock, if the user draws on one in
    /// `currency`; otherwise `refused` (the wallet's refusal) as it is.
    pub(super) fn member_pool<'t>(
        &self,
        tenant: &'t Tenant,
        account: &UserGuard<'_>,
        currency: Currency,
        refused: EngineError,
    ) -> Result<PoolGuard<'t>, EngineError> {
        let Some(id) = account.pool() else {
            return Err(refused);
        };
        match tenant.lock_pool_of(account, id) {
            Some(pool) if pool.currency == currency => Ok(pool),
            _ => Err(refused),
        }
    }

    /// For a spend of `amount` that `wallet` cannot cover (`spend`): the member's pool, locked,
    /// and what it pays (the rest of what the wallet can give). Refused, with what the pool could
    /// give, when the user draws on no pool in that currency or the pool cannot give enough.
    pub(super) fn pool_part<'t>(
        &self,
        tenant: &'t Tenant,
        (user, account): (&str, &UserGuard<'_>),
        (wallet, amount): (&Wallet, i64),
        now_ms: i64,
        refused: EngineError,
    ) -> Result<(PoolGuard<'t>, i64, Allowance), EngineError> {
        let pool = self.member_pool(tenant, account, wallet.currency, refused)?;
        let allowance = allowance(&pool, user, Some(account), now_ms);
        let need = checked(amount.checked_sub(headroom(wallet)))?;
        if need <= 0 || need > allowance.available {
            return Err(short(refused, allowance.available));
        }
        Ok((pool, need, allowance))
    }

    /// Creates a pool (in `currency`, the tenant's default when `None`) or renames it. Returns
    /// whether it was created and the LSN to await (an unchanged pool writes nothing). A pool's
    /// currency is fixed when it is created.
    pub fn put_pool(
        &self,
        tenant: &Tenant,
        id: &str,
        name: Option<&str>,
        currency: Option<Currency>,
        context: &Context<'_>,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("pool_id", id)?;
        check_text("name", name, self.options.limits.max_text_bytes)?;
        let now_ms = self.clock.now_ms();
        tenant.with_pool_entry(id, |entry| match entry {
            dashmap::Entry::Occupied(mut entry) => {
                let pool = entry.get_mut();
                if currency.is_some_and(|currency| currency != pool.currency) {
                    return Err(EngineError::Conflict("a pool's currency cannot change"));
                }
                if pool.name.as_deref() == name {
                    return Ok((false, pool.last_lsn));
                }
                let event = Event::PoolPut {
                    tenant: &tenant.id,
                    pool: id,
                    name,
                    currency: pool.currency,
                    meta: self.meta(context, now_ms, None),
                };
                Ok((false, self.commit_pool(pool, &event, None)?))
            }
            dashmap::Entry::Vacant(entry) => {
                let currency = currency.unwrap_or(tenant.default_currency);
                let event = Event::PoolPut {
                    tenant: &tenant.id,
                    pool: id,
                    name,
                    currency,
                    meta: self.meta(context, now_ms, None),
                };
                let mut pool = Pool::new(None, currency);
                let lsn = self.commit_pool(&mut pool, &event, None)?;
                entry.insert(pool);
                Ok((true, lsn))
            }
        })
    }

    /// Adds credits to a pool.
    pub fn credit_pool(
        &self,
        tenant: &Tenant,
        request: &PoolCreditRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        check_id("pool_id", request.pool)?;
        check_amount("amount", request.amount, &self.options.limits)?;
        self.check_texts(request.reason, request.reference, None)?;
        let claim = match self.claim(tenant, context, false)? {
            Begin::Replay(done) => return Ok(done),
            Begin::Fresh(claim) => claim,
        };
        let now_ms = self.clock.now_ms();
        let mut guard = tenant
            .lock_pool(request.pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        let (id, pool) = guard.split();
        let balance_after = checked(pool.balance.checked_add(request.amount))?;
        checked(pool.credited.checked_add(request.amount))?;
        let mut meta = self.meta(context, now_ms, request.reason);
        meta.reference = request.reference;
        let event = Event::PoolCredited {
            tenant: &tenant.id,
            pool: id,
            currency: pool.currency,
            kind: request.kind,
            amount: request.amount,
            balance_after,
            available_after: checked(balance_after.checked_sub(pool.reserved))?,
            meta,
        };
        let lsn = self.commit_pool(pool, &event, claim)?;
        let outcome = event
            .outcome(lsn)
            .ok_or(EngineError::Conflict("pool credit without an outcome"))?;
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Makes `user` draw on the pool `pool` once its own wallet in the pool's currency is spent,
    /// at most `daily_cap` credits per UTC day (none: no cap), or changes its cap. A user draws on
    /// one pool at most: a member of another is refused until it leaves that one. A cap below
    /// what the member drew today is refused. Returns the LSN to await (an unchanged membership
    /// writes nothing).
    pub fn set_pool_member(
        &self,
        tenant: &Tenant,
        user: &str,
        pool: &str,
        daily_cap: Option<i64>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        check_id("pool_id", pool)?;
        if daily_cap.is_some_and(|cap| cap < 0 || cap > self.options.limits.max_amount) {
            return Err(EngineError::Invalid(Invalid::new(
                "daily_cap",
                "must be between 0 and limits.max_amount",
            )));
        }
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .lock_user(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        if account.pool().is_some_and(|current| current != pool) {
            return Err(EngineError::Conflict(
                "the user draws on another pool: remove it from that one first",
            ));
        }
        let mut guard = tenant
            .lock_pool_of(&account, pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        let (id, target) = guard.split();
        if let Some(member) = target.members.get(user) {
            if member.daily_cap == daily_cap {
                return Ok(target.last_lsn.max(account.last_lsn()));
            }
            if daily_cap.is_some_and(|cap| member.drawn_on(utc_day(now_ms)) > cap) {
                return Err(EngineError::Conflict(
                    "the member drew more today than the new daily cap",
                ));
            }
        }
        let event = Event::PoolMemberSet {
            tenant: &tenant.id,
            user,
            pool: id,
            daily_cap,
            meta: self.meta(context, now_ms, None),
        };
        self.commit_membership(&mut account, target, &event)
    }

    /// Ends `user`'s membership of its pool. Refused while the pool holds credits for one of the
    /// user's open reservations (capture or release it first).
    pub fn remove_pool_member(
        &self,
        tenant: &Tenant,
        user: &str,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .lock_user(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        self.expire_due_reservations(tenant, user, &mut account, now_ms)?;
        if account.pool().is_none() {
            return Err(EngineError::NotFound(Missing::PoolMember));
        }
        if account.reservations().iter().any(|r| r.pool_amount > 0) {
            return Err(EngineError::Conflict(
                "the pool holds credits for an open reservation of the user: capture or release \
                 it first",
            ));
        }
        let Some(pool) = account.pool() else {
            return Err(EngineError::NotFound(Missing::PoolMember));
        };
        let mut guard = tenant
            .lock_pool_of(&account, pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        let (id, target) = guard.split();
        let event = Event::PoolMemberRemoved {
            tenant: &tenant.id,
            user,
            pool: id,
            meta: self.meta(context, now_ms, None),
        };
        self.commit_membership(&mut account, target, &event)
    }

    /// Queues a membership change and applies it to the user, then the pool (both locked).
    fn commit_membership(
        &self,
        account: &mut Account,
        pool: &mut Pool,
        event: &Event<'_>,
    ) -> Result<Lsn, EngineError> {
        let lsn = self.append(event)?;
        if let Err(mismatch) = account.apply(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        if let Err(mismatch) = pool.apply(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        Ok(lsn)
    }
}

/// The pool's share in a member's debit of `charged` credits.
pub(super) fn debit_share<'a>(
    id: &'a str,
    pool: &Pool,
    allowance: &Allowance,
    charged: i64,
) -> Result<PoolShare<'a>, EngineError> {
    Ok(PoolShare {
        pool: id,
        released: 0,
        held: 0,
        charged,
        balance_after: checked(pool.balance.checked_sub(charged))?,
        reserved_after: pool.reserved,
        counted: charged,
        drawn_after: checked(allowance.drawn.checked_add(charged))?,
    })
}

/// The pool's share in a member's reservation that the pool holds `held` credits of.
pub(super) fn hold_share<'a>(
    id: &'a str,
    pool: &Pool,
    allowance: &Allowance,
    held: i64,
) -> Result<PoolShare<'a>, EngineError> {
    Ok(PoolShare {
        pool: id,
        released: 0,
        held,
        charged: 0,
        balance_after: pool.balance,
        reserved_after: checked(pool.reserved.checked_add(held))?,
        counted: held,
        drawn_after: checked(allowance.drawn.checked_add(held))?,
    })
}
