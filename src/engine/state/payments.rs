//! The payments map: every payment creditd issued a reference for, across tenants, and the
//! events that start, settle and forget them.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::{Event, Meta, PaymentTerms, WalletRef};
use super::super::types::{Currency, Decline, Fingerprint, Lsn, PaymentPurpose};
use super::{mismatch, Mismatch, State};

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PaymentState {
    Pending,
    Succeeded { entry_id: Lsn, at_ms: i64 },
    Failed { decline: Decline, at_ms: i64 },
}

/// A payment creditd issued a reference for. Kept across tenants, because gateways report payments
/// by reference alone.
///
/// A payment buys credits for a user's wallet or for a credit pool (`pool`): a user's payment
/// changes under the user's lock, a pool's under the pool's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PaymentEntry {
    pub last_lsn: Lsn,
    pub tenant: CompactString,
    /// The paying user; empty for a pool's payment.
    pub user: CompactString,
    /// The pool the credits go to, for a pool's payment.
    pub pool: Option<CompactString>,
    pub currency: Currency,
    pub package: CompactString,
    pub credits: i64,
    pub amount_minor: i64,
    pub price_currency: Currency,
    pub gateway: CompactString,
    pub purpose: PaymentPurpose,
    pub created_ms: i64,
    pub state: PaymentState,
    /// The gateway's checkout page, once it answered.
    pub checkout_url: Option<Box<str>>,
    /// The digest of the `initialize` request that made it under an Idempotency-Key.
    pub fingerprint: Option<Fingerprint>,
    /// The caller's metadata given to `initialize` (a JSON object as text); none for automatic
    /// top-ups. Shown with the payment and carried in the tenant's `topup.*` notifications.
    pub metadata: Option<Box<str>>,
}

impl PaymentEntry {
    fn new(
        lsn: Lsn,
        wallet: WalletRef<'_>,
        terms: PaymentTerms<'_>,
        gateway: &str,
        purpose: PaymentPurpose,
        meta: &Meta<'_>,
    ) -> PaymentEntry {
        PaymentEntry {
            last_lsn: lsn,
            tenant: wallet.tenant.into(),
            user: wallet.user.into(),
            pool: None,
            currency: wallet.currency,
            package: terms.package.into(),
            credits: terms.credits,
            amount_minor: terms.amount_minor,
            price_currency: terms.price_currency,
            gateway: gateway.into(),
            purpose,
            created_ms: meta.time_ms,
            state: PaymentState::Pending,
            checkout_url: None,
            fingerprint: meta.idempotency.map(|tag| tag.fingerprint),
            metadata: meta.metadata.map(Box::from),
        }
    }

    /// A pool's payment: as [`PaymentEntry::new`], with the pool as the target.
    fn for_pool(lsn: Lsn, event: &Event<'_>) -> Option<PaymentEntry> {
        let Event::PoolPaymentInitialized {
            tenant,
            pool,
            currency,
            terms,
            gateway,
            ref meta,
            ..
        } = *event
        else {
            return None;
        };
        let wallet = WalletRef {
            tenant,
            user: "",
            currency,
        };
        let entry = PaymentEntry::new(lsn, wallet, terms, gateway, PaymentPurpose::Checkout, meta);
        Some(PaymentEntry {
            pool: Some(pool.into()),
            ..entry
        })
    }

    /// Whether the payment may be forgotten at `cutoff_ms` (now minus the retention): settled
    /// before it, or a checkout nobody paid started before it. A pending automatic top-up is
    /// never forgotten: its rule waits on it.
    pub fn forgettable(&self, cutoff_ms: i64) -> bool {
        match self.state {
            PaymentState::Pending => {
                self.purpose == PaymentPurpose::Checkout && self.created_ms < cutoff_ms
            }
            PaymentState::Succeeded { at_ms, .. } | PaymentState::Failed { at_ms, .. } => {
                at_ms < cutoff_ms
            }
        }
    }
}

impl State {
    /// Applies a payment event to the payments map (under the paying user's lock). Each entry
    /// carries its own last LSN, so a record a fuzzy snapshot already holds is skipped.
    pub fn apply_payment(&self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        match *event {
            Event::PaymentInitialized { .. } => self.open_payment(lsn, event),
            Event::PaymentSucceeded {
                reference,
                ref meta,
                ..
            } => self.settle(
                lsn,
                reference,
                PaymentState::Succeeded {
                    entry_id: lsn,
                    at_ms: meta.time_ms,
                },
            ),
            Event::PaymentFailed {
                reference,
                decline,
                ref meta,
                ..
            } => self.settle(
                lsn,
                reference,
                PaymentState::Failed {
                    decline,
                    at_ms: meta.time_ms,
                },
            ),
            Event::PoolPaymentInitialized { reference, .. } => {
                let entry = PaymentEntry::for_pool(lsn, event)
                    .ok_or_else(|| mismatch("not a payment event"))?;
                self.insert_payment(lsn, reference, entry)
            }
            Event::PoolPaymentSucceeded {
                reference,
                ref meta,
                ..
            } => self.settle(
                lsn,
                reference,
                PaymentState::Succeeded {
                    entry_id: lsn,
                    at_ms: meta.time_ms,
                },
            ),
            Event::PoolPaymentFailed {
                reference,
                decline,
                ref meta,
                ..
            } => self.settle(
                lsn,
                reference,
                PaymentState::Failed {
                    decline,
                    at_ms: meta.time_ms,
                },
            ),
            Event::PaymentCheckoutOpened {
                reference,
                checkout_url,
                ..
            }
            | Event::PoolPaymentCheckoutOpened {
                reference,
                checkout_url,
                ..
            } => {
                let mut entry = self
                    .payments
                    .get_mut(reference)
                    .ok_or_else(|| mismatch("checkout of an unknown payment"))?;
                if entry.last_lsn < lsn {
                    entry.checkout_url = Some(checkout_url.into());
                    entry.last_lsn = lsn;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A payment started: a new entry, unless the reference is still remembered.
    fn open_payment(&self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        let Event::PaymentInitialized {
            wallet,
            reference,
            terms,
            gateway,
            purpose,
            ref meta,
        } = *event
        else {
            return Err(mismatch("not a payment event"));
        };
        let entry = PaymentEntry::new(lsn, wallet, terms, gateway, purpose, meta);
        self.insert_payment(lsn, reference, entry)
    }

    /// Remembers a payment started at `lsn`, unless the reference is still remembered.
    fn insert_payment(
        &self,
        lsn: Lsn,
        reference: &str,
        payment: PaymentEntry,
    ) -> Result<(), Mismatch> {
        match self.payments.entry(reference.into()) {
            dashmap::Entry::Occupied(entry) if entry.get().last_lsn >= lsn => Ok(()),
            // A reference may be issued again once its payment is past retention: the live
            // state had forgotten it (see `forgettable`), so replay forgets it too.
            dashmap::Entry::Occupied(mut entry)
                if entry
                    .get()
                    .forgettable(payment.created_ms - self.payment_retention_ms) =>
            {
                entry.insert(payment);
                Ok(())
            }
            dashmap::Entry::Occupied(_) => Err(mismatch("a payment reference was issued twice")),
            dashmap::Entry::Vacant(entry) => {
                entry.insert(payment);
                Ok(())
            }
        }
    }

    fn settle(&self, lsn: Lsn, reference: &str, state: PaymentState) -> Result<(), Mismatch> {
        let mut entry = self
            .payments
            .get_mut(reference)
            .ok_or_else(|| mismatch("settlement of an unknown payment"))?;
        if entry.last_lsn >= lsn {
            return Ok(());
        }
        // Pending settles either way; a failed payment (not paid in another amount) may still
        // turn out paid. Nothing else moves.
        let movable = match entry.state {
            PaymentState::Pending => true,
            PaymentState::Failed { decline, .. } => {
                decline != Decline::Mismatch && matches!(state, PaymentState::Succeeded { .. })
            }
            PaymentState::Succeeded { .. } => false,
        };
        if !movable {
            return Err(mismatch("a payment was settled twice"));
        }
        entry.state = state;
        entry.last_lsn = lsn;
        Ok(())
    }
}
