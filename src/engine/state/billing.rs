//! A user's billing: the payment method a gateway handed back, the automatic top-up rules and
//! their caps, and the changes payment and rule events make to them.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::{Event, MethodRecord};
use super::super::types::{Currency, Decline, PaymentPurpose};
use super::account::{expect_eq, expect_sum, Account, PRIMARY_HAS_RULE};
use super::reservations::ReservationChange;
use super::{mismatch, Mismatch};

/// A user's saved payment method and automatic top-up rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Billing {
    /// The reusable method of the last successful payment that returned one.
    pub payment_method: Option<SavedMethod>,
    /// Automatic top-up rules, at most one per currency (deleted ones kept, for their counters).
    pub rules: Vec<TopupRule>,
}

/// A reusable payment method saved from a successful charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedMethod {
    pub gateway: CompactString,
    pub token: Box<str>,
    pub customer: Option<Box<str>>,
    pub label: Option<Box<str>>,
    pub saved_ms: i64,
}

/// A wallet's automatic top-up rule and the counters that bound it. Every field changes only
/// through `apply`, so replay rebuilds the caps exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopupRule {
    pub currency: Currency,
    pub threshold: i64,
    pub package: CompactString,
    /// None: the user's saved method.
    pub payment_method: Option<Box<str>>,
    pub max_per_day: u32,
    pub enabled: bool,
    pub disabled_reason: Option<Box<str>>,
    /// The UTC day (days since 1970-01-01) `attempts_today` counts.
    pub day: i64,
    pub attempts_today: u32,
    /// Attempts ever made: numbers the next attempt's deterministic reference.
    pub attempts_total: u64,
    pub consecutive_failures: u32,
    pub last_attempt_ms: i64,
    /// Attempt times within the last hour, for the burst cap (newest last, at most 16 kept).
    pub recent_attempts_ms: Vec<i64>,
    /// The reference of the attempt in flight.
    pub pending: Option<CompactString>,
    /// Deleted through the API: kept, switched off, so its counters (the caps, the numbering of
    /// deterministic references) survive a deletion and a new rule.
    pub deleted: bool,
    /// A trigger is on its way to the top-up worker. Memory only: never written, so a recovered
    /// rule has none in flight.
    #[serde(skip)]
    pub triggered: bool,
}

/// The UTC day number of a Unix-millisecond time.
pub(crate) fn utc_day(time_ms: i64) -> i64 {
    time_ms.div_euclid(86_400_000)
}

impl Account {
    pub fn rules(&self) -> &[TopupRule] {
        self.billing()
            .map_or(&[], |billing| billing.rules.as_slice())
    }

    /// The wallet's rule, unless deleted.
    pub fn rule(&self, currency: Currency) -> Option<&TopupRule> {
        self.rules()
            .iter()
            .find(|rule| rule.currency == currency && !rule.deleted)
    }

    /// The wallet's rule, deleted or not.
    fn rule_mut(&mut self, currency: Currency) -> Option<&mut TopupRule> {
        self.extra
            .as_mut()?
            .billing
            .as_mut()?
            .rules
            .iter_mut()
            .find(|rule| rule.currency == currency)
    }

    fn billing(&self) -> Option<&Billing> {
        self.extra.as_ref()?.billing.as_deref()
    }

    fn billing_mut(&mut self) -> &mut Billing {
        self.extra_mut().billing.get_or_insert_with(Box::default)
    }

    pub fn payment_method(&self) -> Option<&SavedMethod> {
        self.billing()?.payment_method.as_ref()
    }

    /// Keeps the primary wallet's rule bit in step with the rules.
    pub(super) fn refresh_rule_flag(&mut self, currency: Currency) {
        if currency != self.primary.currency {
            return;
        }
        if self.rule(currency).is_some_and(|rule| rule.enabled) {
            self.stamp |= PRIMARY_HAS_RULE;
        } else {
            self.stamp &= !PRIMARY_HAS_RULE;
        }
    }

    /// Sets or clears the memory-only trigger flag of a wallet's rule.
    pub fn set_triggered(&mut self, currency: Currency, triggered: bool) {
        if let Some(rule) = self.rule_mut(currency) {
            rule.triggered = triggered;
        }
    }

    /// A payment started, settled, sent to a checkout page, or a method saved.
    pub(super) fn apply_payment(
        &mut self,
        event: &Event<'_>,
    ) -> Result<ReservationChange, Mismatch> {
        match *event {
            Event::PaymentInitialized {
                wallet,
                reference,
                purpose,
                ref meta,
                ..
            } => {
                self.wallet_or_insert(wallet.currency);
                if purpose == PaymentPurpose::AutoTopup {
                    let rule = self
                        .rule_mut(wallet.currency)
                        .ok_or_else(|| mismatch("top-up without a rule"))?;
                    rule.record_attempt(reference, meta.time_ms);
                }
            }
            Event::PaymentSucceeded { .. } => self.apply_paid(event)?,
            Event::PaymentFailed {
                wallet,
                reference,
                decline,
                reason,
                ..
            } => {
                if let Some(rule) = self
                    .rule_mut(wallet.currency)
                    .filter(|r| r.pending.as_deref() == Some(reference))
                {
                    rule.pending = None;
                    rule.consecutive_failures = rule.consecutive_failures.saturating_add(1);
                    // A card that cannot be charged again, or a gateway that takes another amount
                    // than the package's (money taken, nothing credited): no second attempt.
                    if matches!(decline, Decline::Hard | Decline::Mismatch) {
                        rule.enabled = false;
                        rule.disabled_reason = Some(reason.into());
                    }
                }
                self.refresh_rule_flag(wallet.currency);
            }
            Event::PaymentCheckoutOpened { .. } => {}
            Event::PaymentMethodSaved {
                method, ref meta, ..
            } => self.save_method(&method, meta.time_ms),
            _ => return Err(mismatch("not a payment event")),
        }
        Ok(ReservationChange::None)
    }

    /// A payment credited: the balance moves by the package's credits.
    fn apply_paid(&mut self, event: &Event<'_>) -> Result<(), Mismatch> {
        let Event::PaymentSucceeded {
            wallet,
            reference,
            credits,
            balance_after,
            available_after,
            method,
            ref meta,
            ..
        } = *event
        else {
            return Err(mismatch("not a payment event"));
        };
        let target = self.wallet_or_insert(wallet.currency);
        expect_sum(
            target.balance,
            credits,
            balance_after,
            "payment: balance + credits ≠ balance_after",
        )?;
        target.balance = balance_after;
        expect_eq(
            target.available(),
            available_after,
            "payment: available_after mismatch",
        )?;
        if let Some(method) = method {
            self.save_method(&method, meta.time_ms);
        }
        if let Some(rule) = self
            .rule_mut(wallet.currency)
            .filter(|r| r.pending.as_deref() == Some(reference))
        {
            rule.pending = None;
            rule.consecutive_failures = 0;
        }
        Ok(())
    }

    fn save_method(&mut self, method: &MethodRecord<'_>, time_ms: i64) {
        self.billing_mut().payment_method = Some(SavedMethod {
            gateway: method.gateway.into(),
            token: method.token.into(),
            customer: method.customer.map(Box::from),
            label: method.label.map(Box::from),
            saved_ms: time_ms,
        });
    }

    /// A top-up rule set, deleted or disabled.
    pub(super) fn apply_rule(&mut self, event: &Event<'_>) -> Result<ReservationChange, Mismatch> {
        match *event {
            Event::AutoTopupSet { .. } => self.apply_rule_set(event),
            Event::AutoTopupDeleted { wallet, .. } => {
                let rule = self
                    .rule_mut(wallet.currency)
                    .filter(|rule| !rule.deleted)
                    .ok_or_else(|| mismatch("deletion of a missing top-up rule"))?;
                rule.deleted = true;
                rule.enabled = false;
                self.refresh_rule_flag(wallet.currency);
            }
            Event::AutoTopupDisabled { wallet, reason, .. } => {
                let rule = self
                    .rule_mut(wallet.currency)
                    .filter(|rule| !rule.deleted)
                    .ok_or_else(|| mismatch("disabling a missing top-up rule"))?;
                rule.enabled = false;
                rule.disabled_reason = Some(reason.into());
                self.refresh_rule_flag(wallet.currency);
            }
            _ => return Err(mismatch("not a top-up rule event")),
        }
        Ok(ReservationChange::None)
    }

    fn apply_rule_set(&mut self, event: &Event<'_>) {
        let Event::AutoTopupSet {
            wallet,
            threshold,
            package,
            payment_method,
            max_per_day,
            ..
        } = *event
        else {
            return;
        };
        self.wallet_or_insert(wallet.currency);
        let rules = &mut self.billing_mut().rules;
        match rules
            .iter_mut()
            .find(|rule| rule.currency == wallet.currency)
        {
            // Counters carry over, so setting a rule again (even after deleting it)
            // never resets its caps or reuses a reference.
            Some(rule) => {
                rule.deleted = false;
                rule.threshold = threshold;
                rule.package = package.into();
                rule.payment_method = payment_method.map(Box::from);
                rule.max_per_day = max_per_day;
                rule.enabled = true;
                rule.disabled_reason = None;
                rule.consecutive_failures = 0;
            }
            None => rules.push(TopupRule {
                currency: wallet.currency,
                threshold,
                package: package.into(),
                payment_method: payment_method.map(Box::from),
                max_per_day,
                enabled: true,
                disabled_reason: None,
                day: 0,
                attempts_today: 0,
                attempts_total: 0,
                consecutive_failures: 0,
                last_attempt_ms: 0,
                recent_attempts_ms: Vec::new(),
                pending: None,
                deleted: false,
                triggered: false,
            }),
        }
        self.refresh_rule_flag(wallet.currency);
    }
}

impl TopupRule {
    /// Counts an attempt made at `time_ms` under `reference`.
    fn record_attempt(&mut self, reference: &str, time_ms: i64) {
        let day = utc_day(time_ms);
        if day != self.day {
            self.day = day;
            self.attempts_today = 0;
        }
        self.attempts_today = self.attempts_today.saturating_add(1);
        self.attempts_total = self.attempts_total.saturating_add(1);
        self.last_attempt_ms = time_ms;
        self.recent_attempts_ms
            .retain(|&at| at > time_ms - 3_600_000);
        self.recent_attempts_ms.push(time_ms);
        if self.recent_attempts_ms.len() > 16 {
            self.recent_attempts_ms.remove(0);
        }
        self.pending = Some(reference.into());
    }

    /// Attempts made today as of `now_ms`.
    pub fn attempts_on(&self, now_ms: i64) -> u32 {
        if utc_day(now_ms) == self.day {
            self.attempts_today
        } else {
            0
        }
    }

    /// Attempts in the hour before `now_ms`.
    pub fn attempts_in_last_hour(&self, now_ms: i64) -> usize {
        self.recent_attempts_ms
            .iter()
            .filter(|&&at| at > now_ms - 3_600_000)
            .count()
    }
}
