//! The ledger entry a log event makes, if any: one per movement of a wallet (credit, debit,
//! revoke, chargeback, reservation capture, release and expiry, top-up). Events that move no money (a
//! profile, the catalogue, a payment still open) make none.
//!
//! A member's spend that its credit pool shares in makes the wallet's entry with what the wallet
//! paid (or freed), and a pool entry ([`pool_entry`]) with what the pool paid: the two movements
//! of the one record, each in its own ledger, so that each ledger sums to its balance.

use crate::engine::event::Event;
use crate::engine::event::{ActionUse, Meta, WalletRef};
use crate::engine::types::{CreditKind, Currency, DebitKind, ReleaseReason};

/// One ledger entry as the history stores it. Borrowed from the event it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The LSN of the event: `entry_id` is `ent_<lsn>`, as the write answered.
    pub lsn: u64,
    /// The tenant.
    pub tenant: &'a str,
    /// The user.
    pub user: &'a str,
    /// `grant`, `topup`, `refund`, `adjustment`, `debit`, `revoke`, `chargeback`, `capture`,
    /// `release`, `expiry`.
    pub kind: &'static str,
    /// How much moved: positive into the wallet, negative out; a reservation's release moves
    /// nothing out of the balance and records what it freed as a positive amount of `available`.
    pub amount: i64,
    /// The wallet's currency.
    pub currency: Currency,
    /// The balance after the entry.
    pub balance_after: Option<i64>,
    /// What `available` was after the entry.
    pub available_after: i64,
    /// The catalogue action and quantity, for a spend by action.
    pub action: Option<(&'a str, u64)>,
    /// The description given (or the revoke's reason).
    pub description: Option<&'a str>,
    /// The caller's reference.
    pub reference: Option<&'a str>,
    /// The caller's metadata (a JSON object as text).
    pub metadata: Option<&'a str>,
    /// Who wrote it: the API key's name, or `system`.
    pub actor: &'a str,
    /// When, in milliseconds since the epoch.
    pub time_ms: i64,
}

/// The entry `event` (at `lsn`) makes, or `None` if it moves no money.
pub fn of<'a>(lsn: u64, event: &Event<'a>) -> Option<Entry<'a>> {
    let entry = match *event {
        Event::Credited {
            wallet,
            kind,
            amount,
            balance_after,
            available_after,
            meta,
        } => {
            let moved = Moved::new(amount, Some(balance_after), available_after);
            entry(lsn, wallet, credit_kind(kind), moved, None, &meta)
        }
        Event::Debited {
            wallet,
            kind,
            amount,
            balance_after,
            available_after,
            action,
            pool,
            meta,
        } => {
            let kind = match kind {
                DebitKind::Usage => "debit",
                DebitKind::Revoke => "revoke",
                DebitKind::Chargeback => "chargeback",
            };
            let from_wallet = amount - pool.map_or(0, |share| share.charged);
            let moved = Moved::new(-from_wallet, Some(balance_after), available_after);
            entry(lsn, wallet, kind, moved, action, &meta)
        }
        Event::ReservationCaptured {
            wallet,
            charged,
            balance_after,
            available_after,
            action,
            pool,
            meta,
            ..
        } => {
            let from_wallet = charged - pool.map_or(0, |share| share.charged);
            let moved = Moved::new(-from_wallet, Some(balance_after), available_after);
            entry(lsn, wallet, "capture", moved, action, &meta)
        }
        Event::ReservationReleased {
            wallet,
            amount,
            reason,
            available_after,
            pool,
            meta,
            ..
        } => {
            let kind = match reason {
                ReleaseReason::Released => "release",
                ReleaseReason::Expired => "expiry",
            };
            let freed = amount - pool.map_or(0, |share| share.released);
            let moved = Moved::new(freed, None, available_after);
            entry(lsn, wallet, kind, moved, None, &meta)
        }
        Event::PaymentSucceeded {
            wallet,
            credits,
            balance_after,
            available_after,
            meta,
            ..
        } => {
            let moved = Moved::new(credits, Some(balance_after), available_after);
            entry(lsn, wallet, "topup", moved, None, &meta)
        }
        _ => return None,
    };
    Some(entry)
}

/// One movement of a credit pool's balance as the history stores it: a credit, or what the pool
/// paid for a member's spend. Borrowed from the event it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry<'a> {
    /// The LSN of the event (a member's draw shares it with the member's own entry).
    pub lsn: u64,
    /// The tenant.
    pub tenant: &'a str,
    /// The pool.
    pub pool: &'a str,
    /// `grant`, `topup`, `refund`, `adjustment` (credits), `draw` (a member's debit or capture).
    pub kind: &'static str,
    /// Positive into the pool, negative out.
    pub amount: i64,
    /// The pool's currency.
    pub currency: Currency,
    /// The pool's balance after.
    pub balance_after: i64,
    /// The member, for a draw.
    pub user: Option<&'a str>,
    /// The catalogue action and quantity of a member's spend by action.
    pub action: Option<(&'a str, u64)>,
    /// The description given (a credit's reason).
    pub description: Option<&'a str>,
    /// The caller's reference.
    pub reference: Option<&'a str>,
    /// Who wrote it.
    pub actor: &'a str,
    /// When, in milliseconds since the epoch.
    pub time_ms: i64,
}

/// The pool entry `event` (at `lsn`) makes: a credit to a pool (by hand, or a package bought for
/// it), or what a pool paid for a
/// member's debit or capture; `None` otherwise (holds and releases move no pool balance).
pub fn pool_entry<'a>(lsn: u64, event: &Event<'a>) -> Option<PoolEntry<'a>> {
    let (tenant, pool, kind, amount, currency, balance_after, user, action, meta) = match *event {
        Event::PoolCredited {
            tenant,
            pool,
            currency,
            kind,
            amount,
            balance_after,
            meta,
            ..
        } => (
            tenant,
            pool,
            credit_kind(kind),
            amount,
            currency,
            balance_after,
            None,
            None,
            meta,
        ),
        // A package bought for the pool: its credits, with the payment's reference.
        Event::PoolPaymentSucceeded {
            tenant,
            pool,
            currency,
            credits,
            balance_after,
            meta,
            ..
        } => (
            tenant,
            pool,
            CreditKind::Topup.as_str(),
            credits,
            currency,
            balance_after,
            None,
            None,
            meta,
        ),
        Event::Debited {
            wallet,
            pool: Some(share),
            action,
            meta,
            ..
        }
        | Event::ReservationCaptured {
            wallet,
            pool: Some(share),
            action,
            meta,
            ..
        } if share.charged > 0 => (
            wallet.tenant,
            share.pool,
            "draw",
            -share.charged,
            wallet.currency,
            share.balance_after,
            Some(wallet.user),
            action,
            meta,
        ),
        _ => return None,
    };
    Some(PoolEntry {
        lsn,
        tenant,
        pool,
        kind,
        amount,
        currency,
        balance_after,
        user,
        action: action.map(|action| (action.name, action.quantity)),
        description: meta.description,
        reference: meta.reference,
        actor: meta.actor,
        time_ms: meta.time_ms,
    })
}

/// What an entry moved, and the wallet after it.
struct Moved {
    amount: i64,
    balance_after: Option<i64>,
    available_after: i64,
}

impl Moved {
    fn new(amount: i64, balance_after: Option<i64>, available_after: i64) -> Moved {
        Moved {
            amount,
            balance_after,
            available_after,
        }
    }
}

fn entry<'a>(
    lsn: u64,
    wallet: WalletRef<'a>,
    kind: &'static str,
    moved: Moved,
    action: Option<ActionUse<'a>>,
    meta: &Meta<'a>,
) -> Entry<'a> {
    Entry {
        lsn,
        tenant: wallet.tenant,
        user: wallet.user,
        kind,
        amount: moved.amount,
        currency: wallet.currency,
        balance_after: moved.balance_after,
        available_after: moved.available_after,
        action: action.map(|action| (action.name, action.quantity)),
        description: meta.description,
        reference: meta.reference,
        metadata: meta.metadata,
        actor: meta.actor,
        time_ms: meta.time_ms,
    }
}

fn credit_kind(kind: CreditKind) -> &'static str {
    kind.as_str()
}

/// A debit of one credit by `user` of the tenant `acme` at `lsn`, written at `time_ms`: the entry
/// the history's unit tests write.
#[cfg(test)]
pub(crate) fn test_debit(user: &str, lsn: u64, time_ms: i64) -> Entry<'_> {
    Entry {
        lsn,
        tenant: "acme",
        user,
        kind: "debit",
        amount: -1,
        currency: crate::engine::types::Currency::CREDITS,
        balance_after: Some(0),
        available_after: 0,
        action: None,
        description: None,
        reference: None,
        metadata: None,
        actor: "app",
        time_ms,
    }
}
