//! The commit path: the one way every write reaches the log and memory.
//!
//! An operation (see [`super::ops`]) walks it in this order:
//!
//! 1. **Context.** The caller names itself and, optionally, an idempotency key ([`Context`]).
//!    Validation of the request happens before this point and takes no lock.
//! 2. **Idempotency claim.** [`Engine::claim`] looks the key up: a finished request answers again
//!    from its record (`Begin::Replay`); a fresh one holds a [`Claim`] that is released on every
//!    path, so a failure leaves the key free for a retry. Requests without a key touch nothing.
//! 3. **Decide.** Under the user's shard lock the operation expires due reservations, checks the
//!    wallet and builds the [`Event`], which carries its result (balances after), not the request.
//! 4. **Append.** [`Engine::append`] encodes the event into a per-thread buffer (no allocation)
//!    and queues it in the log, which assigns its LSN. Still under the lock, so a wallet's order
//!    in the log is its order in memory.
//! 5. **Apply.** [`Engine::commit`] applies the event with the same function replay uses
//!    ([`Account::apply`]), updates the reservation index and the payments map, and completes the
//!    claim with the outcome. A mismatch here poisons the log ([`Engine::internal_error`]).
//! 6. **Notify.** After a spend, [`Engine::after_spend`](super::notify) hands triggers and
//!    notifications to the payments side through bounded channels that never block.
//!
//! The functions of this path are `#[inline]`: they sat in one file with the operations before the
//! split, and the hint keeps their bodies available to the operations' codegen units as then.
//!
//! The lock is then released and the caller awaits [`Engine::durable`] for the LSN before it
//! answers. Nothing on this path does I/O or waits on anything but its own locks.

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use super::event::{Event, Meta};
use super::idempotency::{self, Begin, Claim, Done, IdempotencyKey};
use super::state::{Account, Pool, Tenant};
use super::types::{EngineError, Invalid, Lsn};
use super::Engine;
use crate::codec;
use crate::wal::DurabilityError;

/// Who is asking, and under which idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The API key's name (or `system`), recorded as the actor.
    pub actor: &'a str,
    /// The request's idempotency key, if it sent one.
    pub idempotency: Option<IdempotencyKey<'a>>,
}

impl<'a> Context<'a> {
    /// A request by `actor` without an idempotency key.
    pub fn actor(actor: &'a str) -> Context<'a> {
        Context {
            actor,
            idempotency: None,
        }
    }

    /// The same request under an idempotency key.
    pub fn with_key(self, key: IdempotencyKey<'a>) -> Context<'a> {
        Context {
            idempotency: Some(key),
            ..self
        }
    }
}

thread_local! {
    /// Where events are encoded before they are copied into the log's buffer.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl Engine {
    /// Encodes and queues one event; returns its LSN.
    #[inline]
    pub(super) fn append(&self, event: &Event<'_>) -> Result<Lsn, EngineError> {
        SCRATCH.with(|scratch| {
            let mut buffer = scratch.borrow_mut();
            buffer.clear();
            if codec::encode_into(event, &mut buffer).is_err() {
                return Err(EngineError::Invalid(Invalid::new(
                    "request",
                    "could not be encoded",
                )));
            }
            if buffer.len() > self.options.max_record_bytes as usize {
                return Err(EngineError::Invalid(Invalid::new(
                    "request",
                    "too large to record",
                )));
            }
            Ok(self.wal.append(&buffer)?)
        })
    }

    /// Queues a user-level event, applies it to the locked account, updates the reservation index
    /// and finishes the idempotency claim. Runs under the user's shard lock.
    #[inline]
    pub(super) fn commit(
        &self,
        tenant: &Tenant,
        account: &mut Account,
        event: &Event<'_>,
        claim: Option<Claim<'_>>,
    ) -> Result<Done, EngineError> {
        let lsn = self.commit_event(tenant, account, event)?;
        let meta = event.meta();
        let Some(outcome) = event.outcome(lsn) else {
            return Err(self.internal_error(lsn, "wallet event without an outcome"));
        };
        if let Some(claim) = claim {
            claim.complete(lsn, meta.time_ms, outcome);
        }
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Queues a member's spend that the user's pool shares in, applies it to the locked account
    /// and the locked pool, updates the reservation index and finishes the idempotency claim.
    /// Runs under the user's lock, then the pool's (the lock order of `state`), both held until
    /// the record is applied to both, so a snapshot that copies either sees all of it or none.
    #[inline]
    pub(super) fn commit_shared(
        &self,
        tenant: &Tenant,
        account: &mut Account,
        pool: &mut Pool,
        event: &Event<'_>,
        claim: Option<Claim<'_>>,
    ) -> Result<Done, EngineError> {
        let lsn = self.append(event)?;
        let change = match account.apply(lsn, event) {
            Ok(change) => change,
            Err(mismatch) => return Err(self.internal_error(lsn, &mismatch.0)),
        };
        if let Err(mismatch) = pool.apply(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        let meta = event.meta();
        let user = event.wallet().map_or("", |wallet| wallet.user);
        tenant.index_reservation(user, change, meta.time_ms);
        let Some(outcome) = event.outcome(lsn) else {
            return Err(self.internal_error(lsn, "wallet event without an outcome"));
        };
        if let Some(claim) = claim {
            claim.complete(lsn, meta.time_ms, outcome);
        }
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Queues an event of a pool alone (created, renamed, credited) and applies it to the locked
    /// pool; finishes the idempotency claim of one that has an outcome. Runs under the pool's lock.
    pub(super) fn commit_pool(
        &self,
        pool: &mut Pool,
        event: &Event<'_>,
        claim: Option<Claim<'_>>,
    ) -> Result<Lsn, EngineError> {
        let lsn = self.append(event)?;
        if let Err(mismatch) = pool.apply(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        if let (Some(claim), Some(outcome)) = (claim, event.outcome(lsn)) {
            claim.complete(lsn, event.meta().time_ms, outcome);
        }
        Ok(lsn)
    }

    /// Queues an event of a pool's payment and applies it to the locked pool and the payments map.
    /// Runs under the pool's lock, which is what orders a pool's payment events.
    pub(super) fn commit_pool_payment(
        &self,
        pool: &mut Pool,
        event: &Event<'_>,
    ) -> Result<Lsn, EngineError> {
        let lsn = self.append(event)?;
        if let Err(mismatch) = pool.apply(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        if let Err(mismatch) = self.state.apply_payment(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        Ok(lsn)
    }

    /// Queues a user-level event and applies it to the locked account, the reservation index and
    /// the payments map. Runs under the user's shard lock.
    #[inline]
    pub(super) fn commit_event(
        &self,
        tenant: &Tenant,
        account: &mut Account,
        event: &Event<'_>,
    ) -> Result<Lsn, EngineError> {
        // A pool's part would be lost here: a member's spend goes through `commit_shared`.
        debug_assert!(
            event.pool_share().is_none(),
            "a pool share without its pool"
        );
        let lsn = self.append(event)?;
        let change = match account.apply(lsn, event) {
            Ok(change) => change,
            Err(mismatch) => return Err(self.internal_error(lsn, &mismatch.0)),
        };
        let meta = event.meta();
        let user = event.wallet().map_or("", |wallet| wallet.user);
        tenant.index_reservation(user, change, meta.time_ms);
        if let Err(mismatch) = self.state.apply_payment(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        Ok(lsn)
    }

    /// A decision contradicted its own state: the log now holds a record memory does not. Refuse
    /// everything from here on rather than acknowledge a state that recovery would not rebuild.
    pub(super) fn internal_error(&self, lsn: Lsn, what: &str) -> EngineError {
        debug_assert!(false, "LSN {lsn}: {what}");
        self.wal
            .poison(format!("internal error at LSN {lsn}: {what}"));
        // The record is queued and may still be written with the batch it is in.
        EngineError::Durability(DurabilityError::Poisoned)
    }

    #[inline]
    pub(super) fn claim<'t>(
        &'t self,
        tenant: &'t Tenant,
        context: &Context<'t>,
        dry_run: bool,
    ) -> Result<Begin<'t>, EngineError> {
        if dry_run || context.idempotency.is_none() {
            // No shared counter is touched by requests without a key.
            return Ok(Begin::Fresh(None));
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        idempotency::begin(
            tenant,
            context.idempotency.as_ref(),
            &self.state.idempotency_entries,
            self.options.idempotency_max_entries,
            token,
        )
    }

    #[inline]
    pub(super) fn meta<'a>(
        &self,
        context: &Context<'a>,
        now_ms: i64,
        description: Option<&'a str>,
    ) -> Meta<'a> {
        Meta {
            time_ms: now_ms,
            actor: context.actor,
            description,
            reference: None,
            metadata: None,
            idempotency: context.idempotency.map(|key| super::event::IdempotencyTag {
                key: key.key,
                fingerprint: key.fingerprint,
            }),
        }
    }
}

pub(super) fn dry_run_answer(event: &Event<'_>) -> Result<Done, EngineError> {
    let outcome = event.outcome(0).ok_or(EngineError::Invalid(Invalid::new(
        "dry_run",
        "not supported here",
    )))?;
    Ok(Done {
        lsn: 0,
        outcome,
        replayed: false,
    })
}
