//! The two locks a spend by a pool member takes, and their order: the user's shard lock first,
//! then the pool's shard lock; never the other way round, never two pools at once, and never a
//! pool lock in a change that is not a member's unless no user lock is held.
//!
//! A user lock is a shard of the tenant's user map, a pool lock a shard of its pool map (the two
//! maps are apart, so a user and a pool never share a lock). Every operation that can reach a pool
//! takes its user through [`Tenant::lock_user`] and the pool through [`Tenant::lock_pool_of`] (a
//! member's change, which needs the user's guard to call it) or [`Tenant::lock_pool`] (a change of
//! the pool alone: no user lock may be held). Debug builds count, per thread, the user and pool
//! guards alive and assert the order each time one is taken; release builds count nothing.
//!
//! Replay takes the same order (a record's user part, then its pool part) on one thread.

use std::ops::{Deref, DerefMut};

use compact_str::CompactString;
use dashmap::mapref::one::RefMut;

use super::account::Account;
use super::pool::Pool;
use super::tenant::Tenant;

#[cfg(debug_assertions)]
mod held {
    use std::cell::Cell;

    thread_local! {
        /// (user guards, pool guards) alive on this thread.
        static HELD: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    }

    pub(super) fn user_taken() {
        HELD.with(|held| {
            let (users, pools) = held.get();
            assert!(
                pools == 0,
                "lock order: a user lock taken while this thread holds a pool lock (the order is \
                 user, then pool)"
            );
            held.set((users + 1, pools));
        });
    }

    pub(super) fn pool_taken(by_member: bool) {
        HELD.with(|held| {
            let (users, pools) = held.get();
            assert!(pools == 0, "lock order: two pool locks on one thread");
            if by_member {
                assert!(
                    users > 0,
                    "lock order: a member's pool lock taken without its user's lock"
                );
            } else {
                assert!(
                    users == 0,
                    "lock order: a pool's own lock taken while this thread holds a user lock"
                );
            }
            held.set((users, pools + 1));
        });
    }

    pub(super) fn user_released() {
        HELD.with(|held| {
            let (users, pools) = held.get();
            held.set((users.saturating_sub(1), pools));
        });
    }

    pub(super) fn pool_released() {
        HELD.with(|held| {
            let (users, pools) = held.get();
            held.set((users, pools.saturating_sub(1)));
        });
    }
}

/// A user's account under its shard lock.
pub(crate) struct UserGuard<'t> {
    guard: RefMut<'t, CompactString, Account>,
}

impl Drop for UserGuard<'_> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::user_released();
    }
}

impl Deref for UserGuard<'_> {
    type Target = Account;
    fn deref(&self) -> &Account {
        &self.guard
    }
}

impl DerefMut for UserGuard<'_> {
    fn deref_mut(&mut self) -> &mut Account {
        &mut self.guard
    }
}

/// A pool under its shard lock.
pub(crate) struct PoolGuard<'t> {
    guard: RefMut<'t, CompactString, Pool>,
}

impl PoolGuard<'_> {
    /// The pool's id (borrowed from the map's key) and the pool, apart: a record can name the
    /// pool while the pool changes.
    pub(crate) fn split(&mut self) -> (&str, &mut Pool) {
        let (id, pool) = self.guard.pair_mut();
        (id.as_str(), pool)
    }
}

impl Drop for PoolGuard<'_> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::pool_released();
    }
}

impl Deref for PoolGuard<'_> {
    type Target = Pool;
    fn deref(&self) -> &Pool {
        &self.guard
    }
}

impl DerefMut for PoolGuard<'_> {
    fn deref_mut(&mut self) -> &mut Pool {
        &mut self.guard
    }
}

impl Tenant {
    /// Takes `user`'s lock, for an operation that may go on to its pool.
    #[inline]
    pub(crate) fn lock_user(&self, user: &str) -> Option<UserGuard<'_>> {
        // Counted (and checked) before the wait, so that a wrong order fails here rather than
        // deadlocks.
        #[cfg(debug_assertions)]
        held::user_taken();
        let guard = self.users.get_mut(user);
        if guard.is_none() {
            #[cfg(debug_assertions)]
            held::user_released();
        }
        guard.map(|guard| UserGuard { guard })
    }

    /// Takes the lock of the pool `id` for a change by a member whose lock the caller holds: the
    /// guard it passes is the proof, and debug builds check that no other pool is held.
    #[inline]
    pub(crate) fn lock_pool_of<'t>(
        &'t self,
        _member: &UserGuard<'_>,
        id: &str,
    ) -> Option<PoolGuard<'t>> {
        #[cfg(debug_assertions)]
        held::pool_taken(true);
        let guard = self.pools.get_mut(id);
        if guard.is_none() {
            #[cfg(debug_assertions)]
            held::pool_released();
        }
        guard.map(|guard| PoolGuard { guard })
    }

    /// Runs `change` on the entry of the pool `id` (there or not) under the pool's lock, for a
    /// change of the pool alone: no user lock may be held.
    pub(crate) fn with_pool_entry<T>(
        &self,
        id: &str,
        change: impl FnOnce(dashmap::Entry<'_, CompactString, Pool>) -> T,
    ) -> T {
        #[cfg(debug_assertions)]
        held::pool_taken(false);
        let result = change(self.pools.entry(CompactString::new(id)));
        #[cfg(debug_assertions)]
        held::pool_released();
        result
    }

    /// Takes the lock of the pool `id` for a change of the pool alone; debug builds check that
    /// this thread holds no user lock (which would have to come first) and no other pool.
    #[inline]
    pub(crate) fn lock_pool(&self, id: &str) -> Option<PoolGuard<'_>> {
        #[cfg(debug_assertions)]
        held::pool_taken(false);
        let guard = self.pools.get_mut(id);
        if guard.is_none() {
            #[cfg(debug_assertions)]
            held::pool_released();
        }
        guard.map(|guard| PoolGuard { guard })
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;
    use crate::engine::event::ProfileRecord;
    use crate::engine::state::Catalogue;
    use crate::engine::types::Currency;

    fn tenant() -> Tenant {
        let catalogue = Catalogue {
            last_lsn: 0,
            name: None,
            default_currency: Currency::CREDITS,
            currencies: Default::default(),
            actions: Default::default(),
            packages: Default::default(),
            webhook_url: None,
            webhook_secret: None,
            portal_return_origins: Vec::new(),
        };
        let tenant = Tenant::new("acme", catalogue, 4);
        let profile = ProfileRecord {
            email: None,
            name: None,
            metadata: None,
        };
        tenant
            .users
            .insert("ada".into(), Account::new(Currency::CREDITS, &profile));
        tenant
            .pools
            .insert("org".into(), Pool::new(None, Currency::CREDITS));
        tenant
    }

    #[test]
    fn user_then_pool_is_the_order() {
        let tenant = tenant();
        let user = tenant.lock_user("ada").unwrap();
        let pool = tenant.lock_pool_of(&user, "org").unwrap();
        drop(pool);
        drop(user);
        // Alone, the pool's own lock.
        drop(tenant.lock_pool("org").unwrap());
        // A missing pool leaves nothing counted.
        assert!(tenant.lock_pool("nope").is_none());
        drop(tenant.lock_pool("org").unwrap());
    }

    #[test]
    #[should_panic(expected = "lock order: a user lock taken while this thread holds a pool lock")]
    fn a_user_under_a_pool_is_refused() {
        let tenant = tenant();
        let _pool = tenant.lock_pool("org").unwrap();
        let _user = tenant.lock_user("ada");
    }

    #[test]
    #[should_panic(expected = "lock order: a pool's own lock taken while this thread holds a user")]
    fn a_pool_alone_under_a_user_is_refused() {
        let tenant = tenant();
        let _user = tenant.lock_user("ada").unwrap();
        let _pool = tenant.lock_pool("org");
    }
}
