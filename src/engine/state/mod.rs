//! The in-memory state and the one function that changes it: [`Account::apply`] (and its tenant-level
//! siblings), used alike by live operations, after their record is queued, and by replay.
//!
//! `apply` checks every event against the state it lands on: the balance before plus or minus the
//! amount must equal the balance the event recorded, the reservation it closes must hold what the
//! event says, and no change may take a wallet below its floor, but a chargeback. A wallet a
//! chargeback took below its floor is marked so (`AccountExtra::below_floor`) until credits bring
//! it back; meanwhile only changes that do not lower its `available` apply. Replay therefore
//! proves conservation record by record; a mismatch stops recovery instead of silently producing
//! a different balance.
//!
//! Locking: a tenant's users live in a sharded map; each operation on a user takes that user's
//! shard lock once and holds it while it decides, queues its record and applies it. While holding
//! it, an operation may also take (in this order, never the reverse) the grant tallies' mutex (a
//! grant only), a shard of the tenant's reservation index, a shard of the tenant's idempotency
//! table, and the log's append mutex. No operation ever locks two users. The tenant registry and
//! a tenant's catalogue are taken before any user lock, never under one.
//!
//! The parts: `account` (a user's wallets and profile, and the short dispatch of
//! [`Account::apply`]), `ledger` (credits, debits, overdraft and profile changes), `reservations`
//! (a user's reservations and the tenant's index of them), `billing` (saved methods and top-up
//! rules), `payments` (the payments map), `grants` (what each key granted today), `catalogue` (a
//! tenant's settings, currencies, actions and packages), `pool` (credit pools and their members),
//! `locks` (the user-then-pool lock order) and `tenant` (a tenant's maps). This file holds the
//! registry of tenants and replay.

mod account;
mod billing;
mod catalogue;
mod grants;
mod ledger;
mod locks;
mod payments;
mod pool;
mod reservations;
mod tenant;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use compact_str::CompactString;
use dashmap::DashMap;
use parking_lot::RwLock;

use super::event::{Event, Meta};
use super::types::{CreditKind, Lsn};

pub(crate) use account::{Account, AccountExtra, Wallet};
pub(crate) use billing::{utc_day, TopupRule};
pub(crate) use catalogue::Catalogue;
pub(crate) use grants::{GrantTallies, TallyImage};
pub(crate) use locks::{PoolGuard, UserGuard};
pub(crate) use payments::{PaymentEntry, PaymentState};
pub(crate) use pool::Pool;
pub(crate) use reservations::{ReservationEntry, ReservationPhase};
pub use tenant::Tenant;
pub(crate) use tenant::{IdempotencyEntry, IdempotencyState};

/// The hasher of every sharded map: keyed per process, so clients cannot choose colliding ids.
pub(crate) type BuildHasher = foldhash::fast::RandomState;
/// A sharded concurrent map.
pub(crate) type ShardedMap<K, V> = DashMap<K, V, BuildHasher>;

/// A sharded map with `shards` rounded up to a power of two of at least 4.
pub(crate) fn sharded_map<K: Eq + std::hash::Hash, V>(shards: usize) -> ShardedMap<K, V> {
    DashMap::with_hasher_and_shard_amount(BuildHasher::default(), shards.max(4).next_power_of_two())
}

/// A record that does not fit the state it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub Cow<'static, str>);

fn mismatch(what: &'static str) -> Mismatch {
    Mismatch(Cow::Borrowed(what))
}

/// Every tenant, the payments of all of them, and the counters shared by all of them.
pub(crate) struct State {
    pub tenants: RwLock<HashMap<CompactString, Arc<Tenant>>>,
    pub shards: usize,
    /// Entries in all idempotency tables together.
    pub idempotency_entries: AtomicU64,
    /// Payments by reference. Changed under the paying user's lock (taken first).
    pub payments: ShardedMap<CompactString, PaymentEntry>,
    /// How long a settled payment (or an unpaid checkout) is remembered.
    pub payment_retention_ms: i64,
    /// What each key granted today, for the cap on a service key's grants (see `grants`).
    pub grants: parking_lot::Mutex<GrantTallies>,
}

/// Replay could not apply a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(pub String);

impl State {
    pub fn new(shards: usize, payment_retention_ms: i64) -> State {
        State {
            tenants: RwLock::new(HashMap::new()),
            shards: shards.max(1),
            idempotency_entries: AtomicU64::new(0),
            payments: sharded_map(shards / 8),
            payment_retention_ms,
            grants: parking_lot::Mutex::new(GrantTallies::default()),
        }
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().get(id).cloned()
    }

    pub fn tenant_list(&self) -> Vec<Arc<Tenant>> {
        let mut tenants: Vec<Arc<Tenant>> = self.tenants.read().values().cloned().collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        tenants
    }

    /// Re-applies one record during recovery. Records an entity has already seen (its last LSN is
    /// at or past this one, because a fuzzy snapshot copied it later) are skipped. Idempotency
    /// entries older than `idempotency_cutoff_ms` are not restored.
    pub fn replay(
        &self,
        lsn: Lsn,
        event: &Event<'_>,
        idempotency_cutoff_ms: i64,
        cache: &mut Option<Arc<Tenant>>,
    ) -> Result<(), ReplayError> {
        let fail = |what: &dyn std::fmt::Display| ReplayError(format!("LSN {lsn}: {what}"));
        if let Event::TenantUpserted { .. } = event {
            return self.replay_tenant(lsn, event).map_err(|e| fail(&e));
        }
        if let Event::PaymentUnmatched { .. } = event {
            // Only a record for the operator: nothing in memory refers to it.
            return Ok(());
        }
        let Some(tenant) = self.cached_tenant(event.tenant(), cache) else {
            return Err(fail(&"record for a tenant that does not exist"));
        };
        if let Event::Credited {
            wallet,
            kind: CreditKind::Grant,
            amount,
            ref meta,
            ..
        } = *event
        {
            // Counted whether or not the user's copy in the snapshot already holds the grant:
            // the snapshot's tallies hold exactly the grants before its start (see `grants`).
            let mut grants = self.grants.lock();
            grants.count(
                wallet.tenant,
                meta.actor,
                wallet.currency,
                meta.time_ms,
                amount,
            );
        }
        match *event {
            Event::ActionPut { .. }
            | Event::ActionDeleted { .. }
            | Event::PackagePut { .. }
            | Event::PackageDeleted { .. }
            | Event::TenantWebhookSet { .. }
            | Event::TenantPortalOriginsSet { .. } => {
                let mut catalogue = tenant.catalogue.write();
                if catalogue.last_lsn < lsn {
                    catalogue.apply(lsn, event).map_err(|e| fail(&e))?;
                }
                Ok(())
            }
            Event::UserUpserted { .. } => replay_user(tenant, lsn, event).map_err(|e| fail(&e)),
            Event::PoolPut { .. } => replay_pool_put(tenant, lsn, event).map_err(|e| fail(&e)),
            Event::PoolCredited { .. } => self
                .replay_pool_credit(tenant, lsn, event, idempotency_cutoff_ms)
                .map_err(|e| fail(&e)),
            Event::PoolPaymentInitialized { .. }
            | Event::PoolPaymentCheckoutOpened { .. }
            | Event::PoolPaymentSucceeded { .. }
            | Event::PoolPaymentFailed { .. } => self
                .replay_pool_payment(tenant, lsn, event)
                .map_err(|e| fail(&e)),
            Event::PoolMemberSet { .. } | Event::PoolMemberRemoved { .. } => {
                replay_membership(tenant, lsn, event).map_err(|e| fail(&e))
            }
            _ => self
                .replay_account(tenant, lsn, event, idempotency_cutoff_ms)
                .map_err(|e| fail(&e)),
        }
    }

    /// Most logs are one tenant's: the handle in `cache` saves a registry lookup per record.
    fn cached_tenant<'c>(
        &self,
        id: &str,
        cache: &'c mut Option<Arc<Tenant>>,
    ) -> Option<&'c Tenant> {
        if cache.as_ref().is_none_or(|tenant| tenant.id != id) {
            *cache = Some(self.tenant(id)?);
        }
        cache.as_deref()
    }

    /// A tenant created, or its settings changed.
    fn replay_tenant(&self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        let Event::TenantUpserted {
            tenant,
            ref settings,
            ..
        } = *event
        else {
            return Err(mismatch("not a tenant event"));
        };
        let mut tenants = self.tenants.write();
        if let Some(existing) = tenants.get(tenant) {
            let mut catalogue = existing.catalogue.write();
            if catalogue.last_lsn < lsn {
                catalogue.apply(lsn, event)?;
            }
        } else {
            let mut catalogue = Catalogue::new(lsn, settings.name, settings.default_currency);
            catalogue.currencies.clone_from(&settings.currencies);
            tenants.insert(
                tenant.into(),
                Arc::new(Tenant::new(tenant, catalogue, self.shards)),
            );
        }
        Ok(())
    }

    /// A change to one user's account: applied, indexed, and its payment and idempotency key
    /// restored.
    fn replay_account(
        &self,
        tenant: &Tenant,
        lsn: Lsn,
        event: &Event<'_>,
        idempotency_cutoff_ms: i64,
    ) -> Result<(), Mismatch> {
        let wallet = event.wallet().ok_or_else(|| mismatch("unexpected event"))?;
        let mut account = tenant
            .users
            .get_mut(wallet.user)
            .ok_or_else(|| mismatch("record for a user that does not exist"))?;
        // A member's spend changes its pool too; each side skips what a fuzzy snapshot already
        // copied of it (user first, then pool: the lock order).
        if let Some(share) = event.pool_share() {
            let mut pool = tenant
                .pools
                .get_mut(share.pool)
                .ok_or_else(|| mismatch("record for a pool that does not exist"))?;
            if pool.last_lsn < lsn {
                pool.apply(lsn, event)?;
            }
        }
        if account.last_lsn() >= lsn {
            return Ok(());
        }
        let change = account.apply(lsn, event)?;
        let meta = event.meta();
        tenant.index_reservation(wallet.user, change, meta.time_ms);
        self.apply_payment(lsn, event)?;
        self.restore_idempotency(tenant, lsn, event, meta, idempotency_cutoff_ms);
        Ok(())
    }

    /// Credits added to a pool, and the idempotency key they were made under.
    fn replay_pool_credit(
        &self,
        tenant: &Tenant,
        lsn: Lsn,
        event: &Event<'_>,
        idempotency_cutoff_ms: i64,
    ) -> Result<(), Mismatch> {
        let id = event.pool().ok_or_else(|| mismatch("not a pool event"))?;
        let mut pool = tenant
            .pools
            .get_mut(id)
            .ok_or_else(|| mismatch("record for a pool that does not exist"))?;
        if pool.last_lsn >= lsn {
            return Ok(());
        }
        pool.apply(lsn, event)?;
        self.restore_idempotency(tenant, lsn, event, event.meta(), idempotency_cutoff_ms);
        Ok(())
    }

    /// A pool's payment: applied to the pool, then to the payments map. The payments are copied
    /// into a snapshot after the pools, so a record the pool's copy holds is in the payment's too.
    fn replay_pool_payment(
        &self,
        tenant: &Tenant,
        lsn: Lsn,
        event: &Event<'_>,
    ) -> Result<(), Mismatch> {
        let id = event.pool().ok_or_else(|| mismatch("not a pool event"))?;
        let mut pool = tenant
            .pools
            .get_mut(id)
            .ok_or_else(|| mismatch("record for a pool that does not exist"))?;
        if pool.last_lsn >= lsn {
            return Ok(());
        }
        pool.apply(lsn, event)?;
        self.apply_payment(lsn, event)
    }

    fn restore_idempotency(
        &self,
        tenant: &Tenant,
        lsn: Lsn,
        event: &Event<'_>,
        meta: &Meta<'_>,
        cutoff_ms: i64,
    ) {
        let (Some(tag), Some(outcome)) = (meta.idempotency, event.outcome(lsn)) else {
            return;
        };
        if meta.time_ms < cutoff_ms {
            return;
        }
        let state = IdempotencyState::Done {
            lsn,
            created_ms: meta.time_ms,
            outcome,
        };
        let entry = IdempotencyEntry {
            fingerprint: tag.fingerprint,
            state,
        };
        if tenant.idempotency.insert(tag.key.into(), entry).is_none() {
            self.idempotency_entries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A pool created or renamed.
fn replay_pool_put(tenant: &Tenant, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
    let Event::PoolPut {
        pool,
        name,
        currency,
        ..
    } = *event
    else {
        return Err(mismatch("not a pool event"));
    };
    let mut entry = tenant
        .pools
        .entry(pool.into())
        .or_insert_with(|| Pool::new(name, currency));
    if entry.last_lsn < lsn {
        entry.apply(lsn, event)?;
    }
    Ok(())
}

/// A user joined or left a pool: the user's side, then the pool's, each skipping what a fuzzy
/// snapshot already copied of it.
fn replay_membership(tenant: &Tenant, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
    let (Some(user), Some(pool)) = (event.member(), event.pool()) else {
        return Err(mismatch("not a membership event"));
    };
    let mut account = tenant
        .users
        .get_mut(user)
        .ok_or_else(|| mismatch("record for a user that does not exist"))?;
    let mut pool = tenant
        .pools
        .get_mut(pool)
        .ok_or_else(|| mismatch("record for a pool that does not exist"))?;
    if account.last_lsn() < lsn {
        account.apply(lsn, event)?;
    }
    if pool.last_lsn < lsn {
        pool.apply(lsn, event)?;
    }
    Ok(())
}

/// A user created, or its profile changed.
fn replay_user(tenant: &Tenant, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
    let Event::UserUpserted {
        user,
        ref profile,
        default_currency,
        ..
    } = *event
    else {
        return Err(mismatch("not a user event"));
    };
    match tenant.users.entry(user.into()) {
        dashmap::Entry::Occupied(mut entry) => {
            if entry.get().last_lsn() < lsn {
                entry.get_mut().apply(lsn, event)?;
            }
        }
        dashmap::Entry::Vacant(entry) => {
            let mut account = Account::new(default_currency, profile);
            account.set_last_lsn(lsn);
            entry.insert(account);
        }
    }
    Ok(())
}
