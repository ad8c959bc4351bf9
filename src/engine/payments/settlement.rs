//! Settlement: a gateway's verdict on a payment, applied exactly once per reference, in the same
//! record as its credit; reports for references creditd never issued are recorded, not credited.

use std::sync::Arc;

use compact_str::CompactString;

use crate::engine::event::{Event, Meta, MethodRecord, WalletRef};
use crate::engine::notify::NotificationKind;
use crate::engine::state::{Account, PaymentEntry, PaymentState, Tenant, Wallet};
use crate::engine::types::{Currency, Decline, EngineError, Lsn, Missing};
use crate::engine::Engine;

use super::{check_reference, PaymentView};

/// What a gateway said about a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Paid this much; maybe with a reusable method to save.
    Paid {
        /// Amount paid, minor units.
        paid_minor: i64,
        /// Its currency.
        paid_currency: Currency,
        /// A reusable method.
        method: Option<MethodDetails<'a>>,
    },
    /// Not paid.
    Declined {
        /// How.
        decline: Decline,
        /// The gateway's words.
        reason: &'a str,
    },
}

/// What settling a payment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Credited now.
    Credited {
        /// The payment.
        payment: PaymentView,
        /// Balance after.
        balance: i64,
        /// Available after.
        available: i64,
        /// The record to wait for.
        lsn: Lsn,
    },
    /// Settled before: this delivery changed nothing but perhaps the saved payment method.
    AlreadySettled {
        /// The payment.
        payment: PaymentView,
        /// The record to wait for: the payment's last, or the saved method's.
        lsn: Lsn,
    },
    /// Recorded as failed (declined, abandoned, or the wrong amount or currency).
    Failed {
        /// The payment.
        payment: PaymentView,
        /// How.
        decline: Decline,
        /// The record to wait for.
        lsn: Lsn,
    },
    /// The reference is not one creditd issued (or not for this gateway): recorded, not credited.
    Unmatched {
        /// The record to wait for.
        lsn: Lsn,
    },
}

/// A reusable payment method a gateway handed back after a successful charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodDetails<'a> {
    /// `sandbox`, `paystack` or `stripe`.
    pub gateway: &'a str,
    /// Paystack `authorization_code`, Stripe `pm_…`, or a sandbox card.
    pub token: &'a str,
    /// Paystack customer e-mail or Stripe `cus_…`.
    pub customer: Option<&'a str>,
    /// What to show (`visa ••4081`).
    pub label: Option<&'a str>,
}

impl<'a> From<MethodDetails<'a>> for MethodRecord<'a> {
    fn from(method: MethodDetails<'a>) -> MethodRecord<'a> {
        MethodRecord {
            gateway: method.gateway,
            token: method.token,
            customer: method.customer,
            label: method.label,
        }
    }
}

/// A payment under its user's lock, on its way to being settled: what each way of settling it
/// records about it.
struct Settling<'a> {
    tenant: &'a Tenant,
    wallet: WalletRef<'a>,
    reference: &'a str,
    meta: Meta<'a>,
}

/// A pool's payment a gateway reports on, and what to record if it turns out unknown.
struct PoolSettling<'a> {
    tenant: &'a Tenant,
    pool: &'a str,
    reference: &'a str,
    gateway: &'a str,
    detail: &'a str,
    now_ms: i64,
}

/// A gateway's report that a pending (or failed) payment was paid in its recorded terms.
struct Paid<'a> {
    entry: &'a PaymentEntry,
    paid_minor: i64,
    paid_currency: Currency,
    method: Option<MethodDetails<'a>>,
    /// Whether the payment had been recorded failed before this report.
    late_payment: bool,
}

impl Engine {
    /// Applies a gateway's verdict on a payment, exactly once per reference: credits the terms on a
    /// matching payment, records a failure otherwise, records unknown references without crediting.
    pub fn settle_payment(
        &self,
        reference: &str,
        gateway: &str,
        verdict: &Verdict<'_>,
        detail: &str,
    ) -> Result<Settlement, EngineError> {
        let now_ms = self.clock.now_ms();
        let Some((tenant, user, pool)) = self.issuer(reference, gateway) else {
            return self.record_unmatched(gateway, reference, detail, now_ms);
        };
        if let Some(pool) = pool {
            let settling = PoolSettling {
                tenant: &tenant,
                pool: &pool,
                reference,
                gateway,
                detail,
                now_ms,
            };
            return self.settle_pool_payment(&settling, verdict);
        }
        let mut account = tenant
            .users
            .get_mut(user.as_str())
            .ok_or(EngineError::NotFound(Missing::User))?;
        // Check again under the user's lock: this is what makes a second delivery a no-op.
        let Some(entry) = self
            .state
            .payments
            .get(reference)
            .map(|entry| entry.clone())
        else {
            drop(account);
            return self.record_unmatched(gateway, reference, detail, now_ms);
        };
        // A payment recorded as failed (abandoned by creditd or the gateway, or declined) may
        // still be reported paid later: a gateway's search that lagged behind its charge, a
        // customer who completed an authentication after all. The money was taken, so the
        // credits go, once. Only a payment already credited, or paid in another amount, is final.
        let late_payment = paid_after_failing(&entry, verdict);
        if late_payment {
            tracing::warn!(%reference, "a payment recorded failed was reported paid: crediting it");
        }
        let settling = Settling {
            tenant: &tenant,
            wallet: WalletRef {
                tenant: &tenant.id,
                user: &user,
                currency: entry.currency,
            },
            reference,
            meta: Meta {
                reference: Some(reference),
                ..Meta::system(now_ms)
            },
        };
        if entry.state != PaymentState::Pending && !late_payment {
            return self.already_settled(&settling, &mut account, &entry, verdict);
        }
        match *verdict {
            Verdict::Paid {
                paid_minor,
                paid_currency,
                method,
            } => {
                let paid = Paid {
                    entry: &entry,
                    paid_minor,
                    paid_currency,
                    method,
                    late_payment,
                };
                self.credit_payment(&settling, account, &paid)
            }
            Verdict::Declined { decline, reason } => {
                self.fail_payment(&settling, &mut account, decline, reason)
            }
        }
    }

    /// The tenant and user (or pool) of a payment `gateway` reports on, if creditd issued its
    /// reference through that gateway; `None` makes the report one to record, not to credit.
    fn issuer(
        &self,
        reference: &str,
        gateway: &str,
    ) -> Option<(Arc<Tenant>, CompactString, Option<CompactString>)> {
        let (tenant, user, pool, issued_by) = self.state.payments.get(reference).map(|entry| {
            (
                entry.tenant.clone(),
                entry.user.clone(),
                entry.pool.clone(),
                entry.gateway.clone(),
            )
        })?;
        let tenant = self.state.tenant(&tenant)?;
        (issued_by == gateway && check_reference(reference).is_ok()).then_some((tenant, user, pool))
    }

    /// Applies a gateway's verdict on a pool's payment, exactly once per reference: under the
    /// pool's lock, which every change of a pool's payment takes, so a second delivery finds it
    /// settled. Credits the pool the terms' credits if the amount and currency match them.
    fn settle_pool_payment(
        &self,
        settling: &PoolSettling<'_>,
        verdict: &Verdict<'_>,
    ) -> Result<Settlement, EngineError> {
        let (tenant, reference) = (settling.tenant, settling.reference);
        let mut guard = tenant
            .lock_pool(settling.pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        let Some(entry) = self
            .state
            .payments
            .get(reference)
            .map(|entry| entry.clone())
            .filter(|entry| entry.pool.as_deref() == Some(settling.pool))
        else {
            drop(guard);
            let (gateway, detail) = (settling.gateway, settling.detail);
            return self.record_unmatched(gateway, reference, detail, settling.now_ms);
        };
        let late_payment = paid_after_failing(&entry, verdict);
        if late_payment {
            tracing::warn!(%reference, "a pool's payment recorded failed was reported paid: crediting it");
        }
        if entry.state != PaymentState::Pending && !late_payment {
            return Ok(Settlement::AlreadySettled {
                payment: PaymentView::new(reference, &entry),
                lsn: entry.last_lsn,
            });
        }
        let (id, pool) = guard.split();
        let meta = Meta {
            reference: Some(reference),
            ..Meta::system(settling.now_ms)
        };
        // What failed, and why, if it did; the reason of a mismatch is made here.
        let mismatch_reason;
        let failure = match *verdict {
            Verdict::Paid {
                paid_minor,
                paid_currency,
                ..
            } => {
                let same_currency = paid_currency
                    .as_str()
                    .eq_ignore_ascii_case(entry.price_currency.as_str());
                if paid_minor == entry.amount_minor && same_currency {
                    None
                } else {
                    mismatch_reason = format!(
                        "paid {paid_minor} {paid_currency}, the package costs {} {}",
                        entry.amount_minor, entry.price_currency
                    );
                    Some((Decline::Mismatch, mismatch_reason.as_str()))
                }
            }
            Verdict::Declined { decline, reason } => Some((decline, reason)),
        };
        let event = match (failure, *verdict) {
            (Some((decline, reason)), _) => Event::PoolPaymentFailed {
                tenant: &tenant.id,
                pool: id,
                reference,
                decline,
                reason: truncate(reason, 256),
                meta,
            },
            (
                None,
                Verdict::Paid {
                    paid_minor,
                    paid_currency,
                    ..
                },
            ) => {
                let balance_after = pool
                    .balance
                    .checked_add(entry.credits)
                    .ok_or(EngineError::Overflow)?;
                Event::PoolPaymentSucceeded {
                    tenant: &tenant.id,
                    pool: id,
                    currency: pool.currency,
                    reference,
                    credits: entry.credits,
                    paid_minor,
                    paid_currency,
                    balance_after,
                    available_after: balance_after
                        .checked_sub(pool.reserved)
                        .ok_or(EngineError::Overflow)?,
                    meta,
                }
            }
            (None, Verdict::Declined { .. }) => {
                return Err(EngineError::Conflict("a decline without a failure"))
            }
        };
        let decline = failure.map(|(decline, _)| decline);
        let lsn = self.commit_pool_payment(pool, &event)?;
        let (balance, available) = (pool.balance, pool.available());
        drop(guard);
        let payment = self
            .payment(reference)
            .ok_or(EngineError::Conflict("payment vanished"))?;
        Ok(match decline {
            Some(decline) => Settlement::Failed {
                payment,
                decline,
                lsn,
            },
            None => Settlement::Credited {
                payment,
                balance,
                available,
                lsn,
            },
        })
    }

    /// A report on a payment already settled changes nothing, but may still carry the reusable
    /// method (Stripe sends it on its own event).
    fn already_settled(
        &self,
        settling: &Settling<'_>,
        account: &mut Account,
        entry: &PaymentEntry,
        verdict: &Verdict<'_>,
    ) -> Result<Settlement, EngineError> {
        let reference = settling.reference;
        let (
            PaymentState::Succeeded { at_ms, .. },
            Verdict::Paid {
                method: Some(method),
                ..
            },
        ) = (entry.state, verdict)
        else {
            return Ok(Settlement::AlreadySettled {
                payment: PaymentView::new(reference, entry),
                lsn: entry.last_lsn,
            });
        };
        let saved = account.payment_method();
        let mut lsn = entry.last_lsn;
        let usable = !method.token.is_empty() && method.token.len() <= 256;
        // Only if nothing newer was saved since this payment settled: a late or replayed
        // report of an old payment must not bring back a card the user has replaced.
        let newer_saved = saved.is_some_and(|saved| saved.saved_ms > at_ms);
        let same = saved
            .is_some_and(|saved| &*saved.token == method.token && saved.gateway == method.gateway);
        if usable && !newer_saved && !same {
            let event = Event::PaymentMethodSaved {
                wallet: settling.wallet,
                method: MethodRecord::from(*method),
                meta: settling.meta,
            };
            lsn = self.commit_event(settling.tenant, account, &event)?;
            self.trigger_waiting_rules(settling.tenant, settling.wallet.user, account);
        }
        Ok(Settlement::AlreadySettled {
            payment: PaymentView::new(reference, entry),
            lsn,
        })
    }

    /// Credits a payment paid in its recorded amount and currency, and tells the tenant.
    fn credit_payment(
        &self,
        settling: &Settling<'_>,
        mut account: dashmap::mapref::one::RefMut<'_, CompactString, Account>,
        paid: &Paid<'_>,
    ) -> Result<Settlement, EngineError> {
        let (entry, reference) = (paid.entry, settling.reference);
        // Currency codes compare without case: gateways report `ngn` for `NGN`.
        let same_currency = paid
            .paid_currency
            .as_str()
            .eq_ignore_ascii_case(entry.price_currency.as_str());
        if paid.paid_minor != entry.amount_minor || !same_currency {
            let reason = format!(
                "paid {} {}, the package costs {} {}",
                paid.paid_minor, paid.paid_currency, entry.amount_minor, entry.price_currency
            );
            return self.fail_payment(settling, &mut account, Decline::Mismatch, &reason);
        }
        let wallet = account
            .wallet(entry.currency)
            .copied()
            .unwrap_or(Wallet::empty(entry.currency));
        let balance_after = wallet
            .balance
            .checked_add(entry.credits)
            .ok_or(EngineError::Overflow)?;
        let available_after = balance_after
            .checked_sub(wallet.reserved)
            .ok_or(EngineError::Overflow)?;
        // A late success must not bring back a card saved over since the payment began.
        let replaced = paid.late_payment
            && account
                .payment_method()
                .is_some_and(|saved| saved.saved_ms > entry.created_ms);
        let method = paid
            .method
            .filter(|m| !m.token.is_empty() && m.token.len() <= 256)
            .filter(|_| !replaced)
            .map(MethodRecord::from);
        let event = Event::PaymentSucceeded {
            wallet: settling.wallet,
            reference,
            credits: entry.credits,
            paid_minor: paid.paid_minor,
            paid_currency: paid.paid_currency,
            balance_after,
            available_after,
            method,
            meta: settling.meta,
        };
        let lsn = self.commit_event(settling.tenant, &mut account, &event)?;
        if method.is_some() {
            self.trigger_waiting_rules(settling.tenant, settling.wallet.user, &mut account);
        }
        drop(account);
        let payment = self
            .payment(reference)
            .ok_or(EngineError::Conflict("payment vanished"))?;
        let kind = NotificationKind::TopupSucceeded {
            reference: reference.to_owned(),
            purpose: payment.purpose,
            credits: payment.credits,
            balance: balance_after,
            metadata: payment.metadata.clone(),
        };
        let user = settling.wallet.user;
        self.notify(settling.tenant, user, payment.currency, kind, lsn);
        Ok(Settlement::Credited {
            payment,
            balance: balance_after,
            available: available_after,
            lsn,
        })
    }

    fn fail_payment(
        &self,
        settling: &Settling<'_>,
        account: &mut Account,
        decline: Decline,
        reason: &str,
    ) -> Result<Settlement, EngineError> {
        let (tenant, wallet, reference) = (settling.tenant, settling.wallet, settling.reference);
        let reason = truncate(reason, 256);
        let was_enabled = account
            .rule(wallet.currency)
            .is_some_and(|rule| rule.enabled);
        let event = Event::PaymentFailed {
            wallet,
            reference,
            decline,
            reason,
            meta: settling.meta,
        };
        let lsn = self.commit_event(tenant, account, &event)?;
        let payment = self
            .state
            .payments
            .get(reference)
            .map(|entry| PaymentView::new(reference, &entry));
        let payment = payment.ok_or(EngineError::Conflict("payment vanished"))?;
        let kind = NotificationKind::TopupFailed {
            reference: reference.to_owned(),
            purpose: payment.purpose,
            decline,
            metadata: payment.metadata.clone(),
        };
        self.notify(tenant, wallet.user, wallet.currency, kind, lsn);
        if was_enabled
            && !account
                .rule(wallet.currency)
                .is_some_and(|rule| rule.enabled)
        {
            let kind = NotificationKind::AutoTopupDisabled {
                reason: reason.to_owned(),
            };
            self.notify(tenant, wallet.user, wallet.currency, kind, lsn);
        }
        Ok(Settlement::Failed {
            payment,
            decline,
            lsn,
        })
    }

    fn record_unmatched(
        &self,
        gateway: &str,
        reference: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<Settlement, EngineError> {
        let event = Event::PaymentUnmatched {
            gateway: truncate(gateway, 32),
            reference: truncate(reference, 256),
            detail: truncate(detail, 512),
            meta: Meta::system(now_ms),
        };
        let lsn = self.append(&event)?;
        tracing::warn!(
            gateway,
            reference,
            "payment report for a reference creditd did not issue; recorded, not credited"
        );
        Ok(Settlement::Unmatched { lsn })
    }
}

/// At most `max` bytes, cut at a character boundary.
pub(super) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a report turns a payment recorded failed into a paid one: it failed for any reason but
/// a mismatch, and the report says it was paid in the recorded amount and currency.
fn paid_after_failing(entry: &PaymentEntry, verdict: &Verdict<'_>) -> bool {
    let failed = match entry.state {
        PaymentState::Failed { decline, .. } => decline != Decline::Mismatch,
        PaymentState::Pending | PaymentState::Succeeded { .. } => false,
    };
    let paid_as_recorded = match *verdict {
        Verdict::Paid {
            paid_minor,
            paid_currency,
            ..
        } => {
            paid_minor == entry.amount_minor
                && paid_currency
                    .as_str()
                    .eq_ignore_ascii_case(entry.price_currency.as_str())
        }
        Verdict::Declined { .. } => false,
    };
    failed && paid_as_recorded
}
