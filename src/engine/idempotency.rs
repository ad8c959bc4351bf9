//! Idempotency keys: (tenant, key) → the request's fingerprint and its stored outcome.
//!
//! A keyed request first claims its key (an in-flight entry, under the key's shard lock alone).
//! It then takes its user's lock, and when its record is queued it turns the claim into a finished
//! entry under that same user lock, so a snapshot that has copied the user has also seen the key.
//! The finished entry travels in the same log record as the effect, is kept in snapshots and is
//! dropped after the TTL. A claim that ends without an effect (a 402, an error) is removed, so the
//! client may retry with the same key.

use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;

use super::state::{IdempotencyEntry, IdempotencyState, Tenant};
use super::types::{check_idempotency_key, EngineError, Fingerprint, Lsn, Outcome};

/// An idempotency key and the fingerprint of the request it came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKey<'a> {
    /// The client's key.
    pub key: &'a str,
    /// A digest of the request (method, route, body) computed by the caller.
    pub fingerprint: Fingerprint,
}

/// What an operation answered: its outcome and the LSN whose durability the answer must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The record to wait for (0 for a dry run, which writes nothing).
    pub lsn: Lsn,
    /// The answer.
    pub outcome: Outcome,
    /// True when this is the stored answer of an earlier request with the same key.
    pub replayed: bool,
}

/// A claim on a key: held by one request until it completes or is dropped.
pub(crate) struct Claim<'t> {
    tenant: &'t Tenant,
    key: &'t str,
    token: u64,
    entries: &'t AtomicU64,
    completed: bool,
}

/// The result of claiming a key.
pub(crate) enum Begin<'t> {
    /// The key is new (or none was given): go ahead.
    Fresh(Option<Claim<'t>>),
    /// The key was used before with the same request: answer this again.
    Replay(Done),
}

/// Claims `key` in `tenant`, or finds its earlier outcome.
pub(crate) fn begin<'t>(
    tenant: &'t Tenant,
    key: Option<&IdempotencyKey<'t>>,
    entries: &'t AtomicU64,
    max_entries: u64,
    token: u64,
) -> Result<Begin<'t>, EngineError> {
    let Some(key) = key else {
        return Ok(Begin::Fresh(None));
    };
    check_idempotency_key(key.key)?;
    match tenant.idempotency.entry(CompactString::new(key.key)) {
        dashmap::Entry::Occupied(entry) => {
            let existing = entry.get();
            if existing.fingerprint != key.fingerprint {
                return Err(EngineError::IdempotencyKeyReused);
            }
            match existing.state {
                IdempotencyState::InFlight { .. } => Err(EngineError::IdempotencyKeyInFlight),
                IdempotencyState::Done { lsn, outcome, .. } => Ok(Begin::Replay(Done {
                    lsn,
                    outcome,
                    replayed: true,
                })),
            }
        }
        dashmap::Entry::Vacant(entry) => {
            if entries.load(Ordering::Relaxed) >= max_entries {
                return Err(EngineError::IdempotencyTableFull);
            }
            entries.fetch_add(1, Ordering::Relaxed);
            entry.insert(IdempotencyEntry {
                fingerprint: key.fingerprint,
                state: IdempotencyState::InFlight { token },
            });
            Ok(Begin::Fresh(Some(Claim {
                tenant,
                key: key.key,
                token,
                entries,
                completed: false,
            })))
        }
    }
}

impl Claim<'_> {
    /// Stores the outcome; called under the user's lock right after the record is queued.
    pub(crate) fn complete(mut self, lsn: Lsn, created_ms: i64, outcome: Outcome) {
        if let Some(mut entry) = self.tenant.idempotency.get_mut(self.key) {
            entry.state = IdempotencyState::Done {
                lsn,
                created_ms,
                outcome,
            };
            self.completed = true;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        let token = self.token;
        let removed = self.tenant.idempotency.remove_if(self.key, |_, entry| {
            matches!(entry.state, IdempotencyState::InFlight { token: owner } if owner == token)
        });
        if removed.is_some() {
            self.entries.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Drops finished entries created before `cutoff_ms`; returns how many went.
pub(crate) fn purge(tenant: &Tenant, entries: &AtomicU64, cutoff_ms: i64) -> u64 {
    let mut removed = 0u64;
    tenant.idempotency.retain(|_, entry| match entry.state {
        IdempotencyState::Done { created_ms, .. } if created_ms < cutoff_ms => {
            removed += 1;
            false
        }
        _ => true,
    });
    entries.fetch_sub(removed, Ordering::Relaxed);
    removed
}
