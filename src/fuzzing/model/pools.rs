//! Credit pools in the reference model, stated the obvious way: a pool is a balance with a map of
//! members; a member's spend the wallet cannot cover takes what the wallet can give (down to its
//! floor) and the rest from the pool, if the pool has it and the member's draws of the UTC day
//! stay within its cap. A pool's hold counts against the cap on the day it is placed, and its
//! unused part comes back to the allowance only that same day.

use std::collections::BTreeMap;

use super::{check_texts, claim, complete, invalid, Claimed, History, Key, Model, Stop};
use crate::engine::types::{
    check_amount, check_id, check_text, Currency, EngineError, Limits, Lsn, Missing, Outcome,
};
use crate::engine::{Done, PoolCreditRequest};

/// Milliseconds in a UTC day.
const DAY_MS: i64 = 86_400_000;

/// The UTC day of `time_ms`.
pub fn day_of(time_ms: i64) -> i64 {
    time_ms.div_euclid(DAY_MS)
}

/// A member of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MMember {
    pub daily_cap: Option<i64>,
    /// The day of `drawn`.
    pub day: i64,
    pub drawn: i64,
}

impl MMember {
    /// What it drew on `day`.
    pub fn drawn_on(&self, day: i64) -> i64 {
        if self.day == day {
            self.drawn
        } else {
            0
        }
    }
}

/// A credit pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MPool {
    pub name: Option<&'static str>,
    pub currency: Currency,
    pub balance: i64,
    pub reserved: i64,
    /// Credits ever added.
    pub credited: i64,
    pub last_lsn: Lsn,
    pub members: BTreeMap<&'static str, MMember>,
}

impl MPool {
    /// Balance less reserved.
    pub fn available(&self) -> i64 {
        self.balance - self.reserved
    }
}

/// What a pool may give a member at a moment: the day, the member's draws that day, and what it
/// may still give (the pool's available credits within the cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MAllowance {
    pub day: i64,
    pub drawn: i64,
    pub available: i64,
}

impl Model {
    /// What `user`'s pool `pool` may give it at `now_ms`; with `as_of`, its reservations already
    /// due count as released (a dry run decides so).
    pub fn allowance(
        &self,
        tenant: &str,
        user: &str,
        pool: &str,
        now_ms: i64,
        as_of: bool,
    ) -> MAllowance {
        let day = day_of(now_ms);
        let model_pool = &self.tenant(tenant).pools[pool];
        let member = model_pool.members[user];
        let mut available = model_pool.available();
        let mut drawn = member.drawn_on(day);
        if as_of {
            for due in &self.tenant(tenant).users[user].open_reservations {
                if due.pool_amount > 0 && due.expires_at_ms <= now_ms {
                    available += due.pool_amount;
                    if due.pool_day == day {
                        drawn -= due.pool_amount;
                    }
                }
            }
        }
        let left = member
            .daily_cap
            .map_or(i64::MAX, |cap| (cap - drawn).max(0));
        MAllowance {
            day,
            drawn,
            available: available.max(0).min(left),
        }
    }

    /// The pool `user` draws on in `currency`, if any.
    pub fn pool_in(&self, tenant: &str, user: &str, currency: Currency) -> Option<&'static str> {
        let pool = self.tenant(tenant).users.get(user)?.pool?;
        (self.tenant(tenant).pools[pool].currency == currency).then_some(pool)
    }

    /// Applies a member's draw: the pool pays `charged`, lets go of `released` and holds `held`;
    /// the member's draws of the day move by `counted`.
    pub fn draw(
        &mut self,
        tenant: &str,
        user: &'static str,
        pool: &str,
        (released, held, charged, counted): (i64, i64, i64, i64),
        now_ms: i64,
        lsn: Lsn,
    ) {
        let day = day_of(now_ms);
        let model_pool = self
            .tenant_mut(tenant)
            .pools
            .get_mut(pool)
            .expect("model: the member's pool");
        model_pool.balance -= charged;
        model_pool.reserved += held - released;
        assert!(
            model_pool.reserved >= 0 && model_pool.reserved <= model_pool.balance,
            "model: pool {pool} holds {} of {}",
            model_pool.reserved,
            model_pool.balance
        );
        let member = model_pool
            .members
            .get_mut(user)
            .expect("model: a member of its pool");
        let drawn = member.drawn_on(day) + counted;
        assert!(
            drawn >= 0 && member.daily_cap.is_none_or(|cap| drawn <= cap),
            "model: {user} drew {drawn}, cap {:?}",
            member.daily_cap
        );
        member.day = day;
        member.drawn = drawn;
        model_pool.last_lsn = lsn;
    }

    /// Creates a pool (in the tenant's default currency unless given) or renames it: whether it
    /// was created, and the LSN to wait for.
    pub fn put_pool(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        id: &'static str,
        (name, currency): (Option<&'static str>, Option<Currency>),
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("pool_id", id)?;
        check_text("name", name, limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        if let Some(pool) = model_tenant.pools.get_mut(id) {
            if currency.is_some_and(|c| c != pool.currency) {
                return Err(EngineError::Conflict(""));
            }
            if pool.name == name {
                return Ok((false, pool.last_lsn));
            }
            pool.name = name;
            pool.last_lsn = lsn;
            self.commit(history);
            return Ok((false, lsn));
        }
        let pool = MPool {
            name,
            currency: currency.unwrap_or(model_tenant.default_currency),
            balance: 0,
            reserved: 0,
            credited: 0,
            last_lsn: lsn,
            members: BTreeMap::new(),
        };
        model_tenant.pools.insert(id, pool);
        self.commit(history);
        Ok((true, lsn))
    }

    /// Adds credits to a pool.
    pub fn credit_pool(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &PoolCreditRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("pool_id", request.pool)?;
        check_amount("amount", request.amount, limits)?;
        check_texts(limits, request.reason, request.reference, None)?;
        let key = match claim(self.tenant(tenant), key)? {
            Claimed::Replay(done) => return Err(Stop::Replay(done)),
            Claimed::Fresh(key) => key,
        };
        let lsn = self.next_lsn;
        let pool = self
            .tenant_mut(tenant)
            .pools
            .get_mut(request.pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        let balance = pool
            .balance
            .checked_add(request.amount)
            .ok_or(EngineError::Overflow)?;
        let credited = pool
            .credited
            .checked_add(request.amount)
            .ok_or(EngineError::Overflow)?;
        let available = balance
            .checked_sub(pool.reserved)
            .ok_or(EngineError::Overflow)?;
        pool.balance = balance;
        pool.credited = credited;
        pool.last_lsn = lsn;
        let outcome = Outcome::Credit {
            entry_id: lsn,
            amount: request.amount,
            balance,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Makes `user` a member of `pool` with `daily_cap`, or changes its cap: the LSN to wait for.
    pub fn set_pool_member(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        (user, pool, daily_cap): (&'static str, &'static str, Option<i64>),
        now_ms: i64,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        check_id("pool_id", pool)?;
        if daily_cap.is_some_and(|cap| cap < 0 || cap > limits.max_amount) {
            return Err(invalid("daily_cap"));
        }
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        let account = model_tenant
            .users
            .get(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        if account.pool.is_some_and(|current| current != pool) {
            return Err(EngineError::Conflict(""));
        }
        let user_lsn = account.last_lsn;
        let model_pool = model_tenant
            .pools
            .get_mut(pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        match model_pool.members.get_mut(user) {
            Some(member) if member.daily_cap == daily_cap => {
                return Ok(model_pool.last_lsn.max(user_lsn));
            }
            Some(member) => {
                if daily_cap.is_some_and(|cap| member.drawn_on(day_of(now_ms)) > cap) {
                    return Err(EngineError::Conflict(""));
                }
                member.daily_cap = daily_cap;
            }
            None => {
                model_pool.members.insert(
                    user,
                    MMember {
                        daily_cap,
                        day: day_of(now_ms),
                        drawn: 0,
                    },
                );
            }
        }
        model_pool.last_lsn = lsn;
        let account = self.user_mut(tenant, user);
        account.pool = Some(pool);
        account.last_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Ends `user`'s membership of its pool, once its due reservations are released.
    pub fn remove_pool_member(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        user: &'static str,
        now_ms: i64,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        if !self.tenant(tenant).users.contains_key(user) {
            return Err(EngineError::NotFound(Missing::User));
        }
        self.expire_due(history, tenant, user, now_ms);
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, user);
        let pool = account
            .pool
            .ok_or(EngineError::NotFound(Missing::PoolMember))?;
        if account.open_reservations.iter().any(|r| r.pool_amount > 0) {
            return Err(EngineError::Conflict(""));
        }
        account.pool = None;
        account.last_lsn = lsn;
        let model_pool = self
            .tenant_mut(tenant)
            .pools
            .get_mut(pool)
            .expect("model: the member's pool");
        model_pool.members.remove(user);
        model_pool.last_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }
}
