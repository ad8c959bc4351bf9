//! A tenant: its catalogue behind a lock, and its sharded maps of users, reservations,
//! idempotency keys and credit pools.

use compact_str::CompactString;
use parking_lot::RwLock;

use super::super::types::{Currency, CurrencySpec, EngineError, Fingerprint, Lsn, Outcome};
use super::account::Account;
use super::catalogue::Catalogue;
use super::pool::Pool;
use super::reservations::ReservationEntry;
use super::{sharded_map, ShardedMap};

/// An idempotency key's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyEntry {
    pub fingerprint: Fingerprint,
    pub state: IdempotencyState,
}

/// Whether the request behind an idempotency key has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdempotencyState {
    /// Being processed; `token` identifies the request that owns it.
    InFlight { token: u64 },
    /// Finished at `lsn` (durable once the log says so) with this answer.
    Done {
        lsn: Lsn,
        created_ms: i64,
        outcome: Outcome,
    },
}

/// A tenant: its catalogue, its users and their wallets, its reservation index and its
/// idempotency keys.
pub struct Tenant {
    pub(crate) id: CompactString,
    /// Fixed at creation, so the hot path reads it without a lock.
    pub(crate) default_currency: Currency,
    pub(crate) catalogue: RwLock<Catalogue>,
    pub(crate) users: ShardedMap<CompactString, Account>,
    pub(crate) reservations: ShardedMap<Lsn, ReservationEntry>,
    pub(crate) idempotency: ShardedMap<CompactString, IdempotencyEntry>,
    /// Credit pools, keyed apart from users: a member's spend takes its user's lock, then its
    /// pool's (see `locks`).
    pub(crate) pools: ShardedMap<CompactString, Pool>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("users", &self.users.len())
            .finish()
    }
}

impl Tenant {
    pub(crate) fn new(id: &str, catalogue: Catalogue, shards: usize) -> Tenant {
        Tenant {
            id: id.into(),
            default_currency: catalogue.default_currency,
            catalogue: RwLock::new(catalogue),
            users: sharded_map(shards),
            reservations: sharded_map(shards / 8),
            idempotency: sharded_map(shards),
            pools: sharded_map(shards / 64),
        }
    }

    /// The tenant's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Refuses a currency the tenant does not have with [`EngineError::UnknownCurrency`]. The
    /// default currency is always one of them and costs no lock; any other takes the catalogue's
    /// read lock, so this is called before a user's lock, never under one.
    pub fn check_currency(&self, currency: Currency) -> Result<(), EngineError> {
        if currency == self.default_currency || self.catalogue.read().currency(currency).is_some() {
            Ok(())
        } else {
            Err(EngineError::UnknownCurrency(currency))
        }
    }

    /// The tenant's currencies: those it defined, else its default one with no decimals.
    pub fn currencies(&self) -> Vec<CurrencySpec> {
        self.catalogue.read().currencies()
    }

    /// How many decimals `currency` has in this tenant (0 for a currency it does not have).
    pub fn decimals(&self, currency: Currency) -> u8 {
        self.catalogue
            .read()
            .currency(currency)
            .map_or(0, |defined| defined.decimals)
    }
}
