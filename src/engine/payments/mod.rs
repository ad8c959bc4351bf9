//! Payments and automatic top-up, engine side: payment references with exactly-once settlement,
//! saved payment methods, top-up rules and the caps that bound them. Nothing here touches the
//! network: the payments module calls the gateways and reports what they said.
//!
//! Exactly once: a payment is settled under its user's lock, after checking (under that lock) that
//! it is still pending, in the same record as its credit. A second delivery finds it settled and
//! changes nothing. The credits come from the terms recorded when the payment started, never from
//! the gateway, and only if the gateway's amount and currency equal them.
//!
//! The parts: `checkout` (a payment started by the user), `settlement` (a gateway's verdict,
//! applied exactly once), `autotopup` (rules, their caps, and planning a charge). This file holds
//! payment references and the payment as the API shows it. It builds on the commit path and the
//! operations; they never call into it.

mod autotopup;
mod checkout;
mod settlement;

use sha2::{Digest, Sha256};

use super::state::{PaymentEntry, PaymentState};
use super::types::{Currency, Decline, EngineError, Invalid, Lsn, PaymentPurpose};
use super::Engine;

pub use autotopup::{
    AutoTopupRequest, MethodView, RuleView, TopupCharge, TopupDecision, TopupPolicy, TopupSkip,
};
pub use checkout::{CheckoutRequest, PoolCheckoutRequest};
pub use settlement::{MethodDetails, Settlement, Verdict};

/// The most characters of a payment reference.
pub const MAX_REFERENCE_BYTES: usize = 64;

/// Where a payment stands, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    /// Waiting for the gateway.
    Pending,
    /// Paid and credited by the ledger entry.
    Succeeded {
        /// The credit's ledger entry.
        entry_id: Lsn,
    },
    /// Not paid (or not the right amount): nothing credited.
    Failed {
        /// How.
        decline: Decline,
    },
}

/// A payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentView {
    /// creditd's reference.
    pub reference: String,
    /// The tenant.
    pub tenant: String,
    /// The paying user; empty for a pool's payment.
    pub user: String,
    /// The credit pool the credits go to, for a pool's payment.
    pub pool: Option<String>,
    /// The wallet (or pool) currency of the credits.
    pub currency: Currency,
    /// The package.
    pub package: String,
    /// Credits it adds.
    pub credits: i64,
    /// Its price, minor units.
    pub amount_minor: i64,
    /// The price currency.
    pub price_currency: Currency,
    /// The gateway.
    pub gateway: String,
    /// Checkout or automatic top-up.
    pub purpose: PaymentPurpose,
    /// When it started, Unix ms.
    pub created_ms: i64,
    /// Where it stands.
    pub status: PaymentStatus,
    /// The gateway's checkout page, once it answered.
    pub checkout_url: Option<String>,
    /// The digest of the keyed `initialize` request that made it.
    pub fingerprint: Option<super::types::Fingerprint>,
    /// The caller's metadata given to `initialize`, a JSON object as text (none for automatic
    /// top-ups).
    pub metadata: Option<String>,
    /// The record to wait for before showing it.
    pub last_lsn: Lsn,
}

impl PaymentView {
    pub(super) fn new(reference: &str, entry: &PaymentEntry) -> PaymentView {
        PaymentView {
            reference: reference.to_owned(),
            tenant: entry.tenant.to_string(),
            user: entry.user.to_string(),
            pool: entry.pool.as_ref().map(ToString::to_string),
            currency: entry.currency,
            package: entry.package.to_string(),
            credits: entry.credits,
            amount_minor: entry.amount_minor,
            price_currency: entry.price_currency,
            gateway: entry.gateway.to_string(),
            purpose: entry.purpose,
            created_ms: entry.created_ms,
            status: match entry.state {
                PaymentState::Pending => PaymentStatus::Pending,
                PaymentState::Succeeded { entry_id, .. } => PaymentStatus::Succeeded { entry_id },
                PaymentState::Failed { decline, .. } => PaymentStatus::Failed { decline },
            },
            checkout_url: entry.checkout_url.as_deref().map(str::to_owned),
            fingerprint: entry.fingerprint,
            metadata: entry.metadata.as_deref().map(str::to_owned),
            last_lsn: entry.last_lsn,
        }
    }
}

/// A fresh random reference for a checkout: `cd_` and 24 hex digits.
pub fn new_reference() -> String {
    let bytes: [u8; 12] = rand::random();
    format!("cd_{}", hex(&bytes))
}

/// The deterministic reference of a wallet's `attempt`-th automatic top-up.
pub fn topup_reference(tenant: &str, user: &str, currency: Currency, attempt: u64) -> String {
    let mut hasher = Sha256::new();
    for part in [
        tenant.as_bytes(),
        user.as_bytes(),
        currency.as_str().as_bytes(),
        &attempt.to_le_bytes(),
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    format!("cd_at_{}", hex(&hasher.finalize()[..12]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a payment reference: 1 to 64 characters of `[A-Za-z0-9_.=-]` (what gateways accept).
pub fn check_reference(reference: &str) -> Result<(), EngineError> {
    let valid = !reference.is_empty()
        && reference.len() <= MAX_REFERENCE_BYTES
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'='));
    if valid {
        Ok(())
    } else {
        Err(EngineError::Invalid(Invalid::new(
            "reference",
            "must be 1 to 64 characters of A-Z a-z 0-9 _ - . =",
        )))
    }
}

/// A reference claimed by [`Engine::claim_reference`], released when dropped.
struct ReferenceClaim<'e> {
    engine: &'e Engine,
    reference: Box<str>,
}

impl Drop for ReferenceClaim<'_> {
    fn drop(&mut self) {
        self.engine.issuing.lock().remove(&self.reference);
    }
}

impl Engine {
    /// Claims a reference about to be issued; `None` if another request holds it.
    fn claim_reference<'e>(&'e self, reference: &str) -> Option<ReferenceClaim<'e>> {
        self.issuing
            .lock()
            .insert(Box::from(reference))
            .then(|| ReferenceClaim {
                engine: self,
                reference: Box::from(reference),
            })
    }

    /// A payment by reference, in any tenant.
    pub fn payment(&self, reference: &str) -> Option<PaymentView> {
        self.state
            .payments
            .get(reference)
            .map(|entry| PaymentView::new(reference, &entry))
    }

    /// Forgets payments past retention (see `PaymentEntry::forgettable`). Each goes under its
    /// user's lock, the lock settlements take, so a settlement never loses its payment midway.
    pub(in crate::engine) fn purge_payments(&self, now_ms: i64) -> u64 {
        let cutoff_ms = now_ms.saturating_sub(self.state.payment_retention_ms);
        let candidates: Vec<(String, String, String, Option<String>)> = self
            .state
            .payments
            .iter()
            .filter(|entry| entry.forgettable(cutoff_ms))
            .map(|entry| {
                (
                    entry.key().to_string(),
                    entry.tenant.to_string(),
                    entry.user.to_string(),
                    entry.pool.as_ref().map(ToString::to_string),
                )
            })
            .collect();
        let mut purged = 0;
        for (reference, tenant, user, pool) in candidates {
            let Some(tenant) = self.state.tenant(&tenant) else {
                continue;
            };
            // A pool's payment changes under the pool's lock, a user's under the user's.
            let (user_lock, pool_lock) = match &pool {
                Some(pool) => (None, tenant.lock_pool(pool)),
                None => (tenant.users.get_mut(user.as_str()), None),
            };
            if user_lock.is_none() && pool_lock.is_none() {
                continue;
            }
            if self
                .state
                .payments
                .remove_if(reference.as_str(), |_, entry| entry.forgettable(cutoff_ms))
                .is_some()
            {
                purged += 1;
            }
        }
        purged
    }
}
