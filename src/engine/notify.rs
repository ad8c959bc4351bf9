//! The engine's only outward edge: the hooks through which it hands work to the payments side and
//! notifications to tenants' applications. A notification is what a tenant hears about; it is not
//! a log event (the records of `engine::event`), and it is derived from committed changes only.
//!
//! Every send is a `try_send` on a bounded channel: a full channel drops the message (a top-up
//! trigger is caught again by the sweep; a dropped notification is counted), so nothing here ever
//! blocks a debit. With no hooks connected, the cost on the hot path is one check.

use super::state::{Account, Tenant};
use super::types::{Currency, Decline, Lsn, PaymentPurpose};
use super::Engine;

/// A wallet whose top-up should be considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopupTrigger {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    /// The wallet.
    pub currency: Currency,
}

/// What happened that the tenant's application hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationKind {
    /// `available` fell under the wallet's threshold (its rule's, or `limits.low_balance`).
    LowBalance {
        /// Available after.
        available: i64,
        /// The threshold crossed.
        threshold: i64,
    },
    /// `available` reached zero or less.
    Depleted {
        /// Available after.
        available: i64,
    },
    /// A payment was credited.
    TopupSucceeded {
        /// The payment.
        reference: String,
        /// Checkout or automatic.
        purpose: PaymentPurpose,
        /// Credits added.
        credits: i64,
        /// Balance after.
        balance: i64,
        /// The caller's metadata given to `initialize`, a JSON object as text.
        metadata: Option<String>,
    },
    /// A payment failed.
    TopupFailed {
        /// The payment.
        reference: String,
        /// Checkout or automatic.
        purpose: PaymentPurpose,
        /// How.
        decline: Decline,
        /// The caller's metadata given to `initialize`, a JSON object as text.
        metadata: Option<String>,
    },
    /// An automatic top-up rule was switched off.
    AutoTopupDisabled {
        /// Why.
        reason: String,
    },
}

impl NotificationKind {
    /// The event's type name.
    pub fn name(&self) -> &'static str {
        match self {
            NotificationKind::LowBalance { .. } => "wallet.low_balance",
            NotificationKind::Depleted { .. } => "wallet.depleted",
            NotificationKind::TopupSucceeded { .. } => "topup.succeeded",
            NotificationKind::TopupFailed { .. } => "topup.failed",
            NotificationKind::AutoTopupDisabled { .. } => "autotopup.disabled",
        }
    }
}

/// An event for a tenant's application; send it once `lsn` is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantNotification {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    /// The wallet.
    pub currency: Currency,
    /// What happened.
    pub kind: NotificationKind,
    /// When, Unix ms.
    pub time_ms: i64,
    /// The record it follows from.
    pub lsn: Lsn,
}

/// Where the engine hands work to the payments side. Sends never block: a full channel drops the
/// message (a trigger is caught again by the sweep; a notification is counted as dropped).
#[derive(Debug, Clone)]
pub struct Hooks {
    /// Wallets whose rule wants a top-up.
    pub topups: crossbeam_channel::Sender<TopupTrigger>,
    /// Notifications for tenants' applications.
    pub notifications: crossbeam_channel::Sender<TenantNotification>,
}

/// How a change moved a wallet's `available`, for [`Engine::after_spend`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Spent {
    pub currency: Currency,
    pub before: i64,
    pub after: i64,
    pub lsn: Lsn,
}

impl Engine {
    /// Connects the payments side; once only.
    pub fn connect_hooks(&self, hooks: Hooks) -> Result<(), Hooks> {
        self.hooks.set(hooks)
    }

    /// After a change lowered a wallet's `available` (under the user's lock): trigger its top-up
    /// rule and tell the tenant about thresholds crossed. Costs a flag check when nothing applies.
    #[inline]
    pub(super) fn after_spend(
        &self,
        tenant: &Tenant,
        user: &str,
        account: &mut Account,
        spent: &Spent,
    ) {
        let Spent {
            currency,
            before,
            after,
            lsn,
        } = *spent;
        let Some(hooks) = self.hooks.get() else {
            return;
        };
        if Engine::take_trigger(account, currency, after) {
            let trigger = TopupTrigger {
                tenant: tenant.id.to_string(),
                user: user.to_owned(),
                currency,
            };
            if hooks.topups.try_send(trigger).is_err() {
                account.set_triggered(currency, false);
            }
        }
        // The rule is looked up only when there may be one: the common debit stays in `account`.
        let threshold = account
            .may_have_rule(currency)
            .then(|| account.rule(currency).filter(|r| r.enabled))
            .flatten()
            .map_or(self.options.limits.low_balance, |r| r.threshold);
        let kind = if before > 0 && after <= 0 {
            Some(NotificationKind::Depleted { available: after })
        } else if threshold > 0 && before >= threshold && after < threshold {
            Some(NotificationKind::LowBalance {
                available: after,
                threshold,
            })
        } else {
            None
        };
        if let Some(kind) = kind {
            self.notify(tenant, user, currency, kind, lsn);
        }
    }

    /// Sends a notification about a committed change at `lsn` to the tenant's application, if
    /// the payments side is connected.
    pub(super) fn notify(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Currency,
        kind: NotificationKind,
        lsn: Lsn,
    ) {
        if let Some(hooks) = self.hooks.get() {
            let notification = TenantNotification {
                tenant: tenant.id.to_string(),
                user: user.to_owned(),
                currency,
                kind,
                time_ms: self.clock.now_ms(),
                lsn,
            };
            if hooks.notifications.try_send(notification).is_err() {
                metrics::counter!(crate::metrics::names::EVENTS_DROPPED_TOTAL).increment(1);
            }
        }
    }

    /// Marks a wallet as handed to the top-up worker, if its rule wants a top-up and none is on its
    /// way; true if the caller should send the trigger. Runs under the user's lock.
    #[inline]
    pub(super) fn take_trigger(account: &mut Account, currency: Currency, available: i64) -> bool {
        if !account.may_have_rule(currency) {
            return false;
        }
        let wanted = account.rule(currency).is_some_and(|rule| {
            rule.enabled && !rule.triggered && rule.pending.is_none() && available < rule.threshold
        });
        if wanted {
            account.set_triggered(currency, true);
        }
        wanted
    }
}
