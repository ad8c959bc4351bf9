//! Automatic top-up, engine side: the rules, their caps and delays, and the plan that records a
//! charge's intent in the log before the worker calls a gateway.

use crate::engine::event::{Event, Meta, PaymentTerms, WalletRef};
use crate::engine::notify::{NotificationKind, TopupTrigger};
use crate::engine::state::{Account, PaymentState, Tenant, TopupRule, Wallet};
use crate::engine::types::{
    check_amount, check_id, Currency, EngineError, Invalid, Lsn, Missing, PaymentPurpose,
};
use crate::engine::{Context, Engine};

use super::settlement::truncate;
use super::{topup_reference, PaymentView};

/// Set a wallet's automatic top-up rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoTopupRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// The wallet; the tenant's default currency when `None`.
    pub currency: Option<Currency>,
    /// Top up when `available` falls under this (> 0).
    pub threshold: i64,
    /// With this package (its credits must be in the wallet's currency).
    pub package: &'a str,
    /// A payment method token; the user's saved method when `None`.
    pub payment_method: Option<&'a str>,
    /// At most this many attempts per UTC day (1 to 100).
    pub max_per_day: u32,
}

/// A top-up rule as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleView {
    /// The wallet's currency.
    pub currency: Currency,
    /// The threshold.
    pub threshold: i64,
    /// The package.
    pub package: String,
    /// The explicit payment method, if any.
    pub payment_method: Option<String>,
    /// The daily cap.
    pub max_per_day: u32,
    /// Whether it runs.
    pub enabled: bool,
    /// Why it was switched off.
    pub disabled_reason: Option<String>,
    /// Attempts today.
    pub attempts_today: u32,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The attempt in flight.
    pub pending: Option<String>,
    /// Whether the rule has a payment method it can charge through the gateway asked about
    /// (its own, or the user's saved one of that gateway). Without, it waits for one.
    pub has_method: bool,
}

impl RuleView {
    /// Where the rule stands: `disabled` (switched off, by an admin or a hard decline),
    /// `needs_payment_method` (on, but nothing to charge until a card is saved), else `active`.
    pub fn state(&self) -> &'static str {
        if !self.enabled {
            "disabled"
        } else if !self.has_method {
            "needs_payment_method"
        } else {
            "active"
        }
    }
}

/// A saved payment method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodView {
    /// Its gateway.
    pub gateway: String,
    /// Its token.
    pub token: String,
    /// Its customer.
    pub customer: Option<String>,
    /// What to show.
    pub label: Option<String>,
}

/// The caps and delays of automatic top-up, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopupPolicy {
    /// At most this many attempts per wallet in any hour.
    pub max_per_hour: u32,
    /// The delay after the first soft decline; doubled after each further one.
    pub backoff_base_ms: i64,
    /// The longest delay.
    pub backoff_max_ms: i64,
}

impl Default for TopupPolicy {
    fn default() -> TopupPolicy {
        TopupPolicy {
            max_per_hour: 3,
            backoff_base_ms: 60_000,
            backoff_max_ms: 6 * 3_600_000,
        }
    }
}

/// What to charge for an automatic top-up; its intent is already in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopupCharge {
    /// The deterministic reference (also the gateway idempotency key).
    pub reference: String,
    /// The payment.
    pub payment: PaymentView,
    /// The method token to charge.
    pub token: String,
    /// The customer the method belongs to (Paystack e-mail, Stripe `cus_…`).
    pub customer: Option<String>,
    /// The intent's record: wait for it before calling the gateway.
    pub lsn: Lsn,
}

/// Why no top-up is charged now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopupSkip {
    /// The wallet has no rule.
    NoRule,
    /// The rule is switched off.
    Disabled,
    /// An attempt is in flight.
    InFlight,
    /// `available` is at or above the threshold.
    AboveThreshold,
    /// The daily cap is reached.
    DailyCap,
    /// The hourly cap is reached.
    BurstCap,
    /// Waiting after a decline, until this time.
    Backoff {
        /// Unix ms.
        until_ms: i64,
    },
    /// No payment method to charge.
    NoMethod,
    /// The package is gone, inactive or in another currency.
    PackageUnavailable,
}

/// Either a charge to make or the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopupDecision {
    /// Charge this.
    Charge(Box<TopupCharge>),
    /// Do nothing now.
    Skip(TopupSkip),
}

/// The token a rule charges through `gateway` (its own, else the user's saved method of that
/// gateway) and the payer: the method's customer, else the profile's e-mail (Paystack needs one).
fn charge_method(
    account: &Account,
    rule: &TopupRule,
    gateway: &str,
) -> Option<(String, Option<String>)> {
    let saved = account.payment_method().filter(|m| m.gateway == gateway);
    let (token, customer) = match (&rule.payment_method, saved) {
        (Some(token), saved) => (
            token.to_string(),
            saved.and_then(|m| m.customer.as_deref().map(str::to_owned)),
        ),
        (None, Some(saved)) => (
            saved.token.to_string(),
            saved.customer.as_deref().map(str::to_owned),
        ),
        (None, None) => return None,
    };
    let profile_email = account
        .profile()
        .and_then(|p| p.email.as_deref())
        .map(str::to_owned);
    Some((token, customer.or(profile_email)))
}

impl Engine {
    /// Sets (and enables) a wallet's automatic top-up rule.
    pub fn set_auto_topup(
        &self,
        tenant: &Tenant,
        request: &AutoTopupRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", request.user)?;
        check_id("package_id", request.package)?;
        check_amount("threshold", request.threshold, &self.options.limits)?;
        if !(1..=100).contains(&request.max_per_day) {
            return Err(EngineError::Invalid(Invalid::new(
                "max_per_day",
                "must be between 1 and 100",
            )));
        }
        if let Some(token) = request.payment_method {
            if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(EngineError::Invalid(Invalid::new(
                    "payment_method",
                    "must be 1 to 256 visible ASCII characters",
                )));
            }
        }
        let currency = request.currency.unwrap_or(tenant.default_currency);
        tenant.check_currency(currency)?;
        {
            let catalogue = tenant.catalogue.read();
            let package = catalogue
                .packages
                .get(request.package)
                .ok_or(EngineError::NotFound(Missing::Package))?;
            if package.currency != currency {
                return Err(EngineError::Invalid(Invalid::new(
                    "package_id",
                    "the package's credits are in another currency",
                )));
            }
        }
        let mut account = tenant
            .users
            .get_mut(request.user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let event = Event::AutoTopupSet {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: request.user,
                currency,
            },
            threshold: request.threshold,
            package: request.package,
            payment_method: request.payment_method,
            max_per_day: request.max_per_day,
            meta: self.meta(context, self.clock.now_ms(), None),
        };
        self.commit_event(tenant, &mut account, &event)
    }

    /// Removes a wallet's automatic top-up rule.
    pub fn delete_auto_topup(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Option<Currency>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        let currency = currency.unwrap_or(tenant.default_currency);
        tenant.check_currency(currency)?;
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        if account.rule(currency).is_none() {
            return Err(EngineError::NotFound(Missing::AutoTopup));
        }
        let event = Event::AutoTopupDeleted {
            wallet: WalletRef {
                tenant: &tenant.id,
                user,
                currency,
            },
            meta: self.meta(context, self.clock.now_ms(), None),
        };
        self.commit_event(tenant, &mut account, &event)
    }

    /// A wallet's rule, and whether it can charge through `gateway` (the configured one).
    pub fn auto_topup(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Option<Currency>,
        gateway: &str,
    ) -> Result<Option<RuleView>, EngineError> {
        let currency = currency.unwrap_or(tenant.default_currency);
        let account = tenant
            .users
            .get(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let now_ms = self.clock.now_ms();
        Ok(account.rule(currency).map(|rule| RuleView {
            currency,
            threshold: rule.threshold,
            package: rule.package.to_string(),
            payment_method: rule.payment_method.as_deref().map(str::to_owned),
            max_per_day: rule.max_per_day,
            enabled: rule.enabled,
            disabled_reason: rule.disabled_reason.as_deref().map(str::to_owned),
            attempts_today: rule.attempts_on(now_ms),
            consecutive_failures: rule.consecutive_failures,
            pending: rule.pending.as_deref().map(str::to_owned),
            has_method: charge_method(&account, rule, gateway).is_some(),
        }))
    }

    /// What the wallet's rule would charge through `gateway` now: `None` if the rule is deleted,
    /// switched off, or has no method for that gateway. Reconciliation sends an intent again only
    /// with this, so it charges what planning would.
    pub fn topup_method(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Currency,
        gateway: &str,
    ) -> Result<Option<(String, Option<String>)>, EngineError> {
        let account = tenant
            .users
            .get(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        Ok(account
            .rule(currency)
            .filter(|rule| rule.enabled)
            .and_then(|rule| charge_method(&account, rule, gateway)))
    }

    /// The user's saved payment method.
    pub fn saved_method(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Option<MethodView>, EngineError> {
        let account = tenant
            .users
            .get(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        Ok(account.payment_method().map(|method| MethodView {
            gateway: method.gateway.to_string(),
            token: method.token.to_string(),
            customer: method.customer.as_deref().map(str::to_owned),
            label: method.label.as_deref().map(str::to_owned),
        }))
    }

    /// Decides whether a wallet's rule charges now and, if so, records the intent (with its
    /// deterministic reference) before anything is sent to a gateway.
    pub fn plan_auto_topup(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Currency,
        gateway: &str,
        policy: &TopupPolicy,
    ) -> Result<TopupDecision, EngineError> {
        // The catalogue is read before the user's lock, never under it.
        let account = tenant
            .users
            .get(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let Some(package_id) = account.rule(currency).map(|rule| rule.package.clone()) else {
            return Ok(TopupDecision::Skip(TopupSkip::NoRule));
        };
        drop(account);
        let package = tenant
            .catalogue
            .read()
            .packages
            .get(package_id.as_str())
            .cloned();
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        let Some(rule) = account.rule(currency) else {
            return Ok(TopupDecision::Skip(TopupSkip::NoRule));
        };
        let wallet = account
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        if let Some(skip) = skip_reason(rule, &wallet, now_ms, policy) {
            return Ok(TopupDecision::Skip(skip));
        }
        let Some(package) =
            package.filter(|p| p.active && p.currency == currency && rule.package == package_id)
        else {
            return Ok(TopupDecision::Skip(TopupSkip::PackageUnavailable));
        };
        let Some((token, customer)) = charge_method(&account, rule, gateway) else {
            return Ok(TopupDecision::Skip(TopupSkip::NoMethod));
        };
        let reference = topup_reference(&tenant.id, user, currency, rule.attempts_total + 1);
        let terms = PaymentTerms {
            package: &package_id,
            credits: package.credits,
            amount_minor: package.price_minor,
            price_currency: package.price_currency,
        };
        let event = Event::PaymentInitialized {
            wallet: WalletRef {
                tenant: &tenant.id,
                user,
                currency,
            },
            reference: &reference,
            terms,
            gateway,
            purpose: PaymentPurpose::AutoTopup,
            meta: Meta::system(now_ms),
        };
        let lsn = self.commit_event(tenant, &mut account, &event)?;
        drop(account);
        let payment = self
            .payment(&reference)
            .ok_or(EngineError::Conflict("payment vanished"))?;
        Ok(TopupDecision::Charge(Box::new(TopupCharge {
            reference,
            payment,
            token,
            customer,
            lsn,
        })))
    }

    /// Switches a wallet's rule off and says why (a hard decline, say).
    pub fn disable_auto_topup(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Currency,
        reason: &str,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        tenant.check_currency(currency)?;
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        match account.rule(currency) {
            None => return Err(EngineError::NotFound(Missing::AutoTopup)),
            // Already off: nothing to record; the caller waits for the user's last change.
            Some(rule) if !rule.enabled => return Ok(account.last_lsn()),
            Some(_) => {}
        }
        let event = Event::AutoTopupDisabled {
            wallet: WalletRef {
                tenant: &tenant.id,
                user,
                currency,
            },
            reason: truncate(reason, 256),
            meta: self.meta(context, self.clock.now_ms(), None),
        };
        let lsn = self.commit_event(tenant, &mut account, &event)?;
        self.notify(
            tenant,
            user,
            currency,
            NotificationKind::AutoTopupDisabled {
                reason: reason.to_owned(),
            },
            lsn,
        );
        Ok(lsn)
    }

    /// After a payment method was saved (under the user's lock): every enabled rule of the
    /// user's that waited for one and wants a top-up now is triggered, so that a rule accepted
    /// as `needs_payment_method` starts by itself once a card is saved.
    pub(super) fn trigger_waiting_rules(&self, tenant: &Tenant, user: &str, account: &mut Account) {
        let Some(hooks) = self.hooks.get() else {
            return;
        };
        let currencies: Vec<Currency> = account
            .rules()
            .iter()
            .filter(|rule| rule.enabled && !rule.deleted)
            .map(|rule| rule.currency)
            .collect();
        for currency in currencies {
            let available = account
                .wallet(currency)
                .map_or(0, |wallet| wallet.available());
            if Engine::take_trigger(account, currency, available) {
                let trigger = TopupTrigger {
                    tenant: tenant.id.to_string(),
                    user: user.to_owned(),
                    currency,
                };
                if hooks.topups.try_send(trigger).is_err() {
                    // The sweep finds it again.
                    account.set_triggered(currency, false);
                }
            }
        }
    }

    /// Lets a wallet be triggered again (the worker is done with it).
    pub fn clear_topup_trigger(&self, tenant: &Tenant, user: &str, currency: Currency) {
        if let Some(mut account) = tenant.users.get_mut(user) {
            account.set_triggered(currency, false);
        }
    }

    /// Automatic top-ups whose intent is recorded but whose outcome is not: to reconcile with the
    /// gateway at start.
    pub fn unfinished_topups(&self) -> Vec<PaymentView> {
        let mut views: Vec<PaymentView> = self
            .state
            .payments
            .iter()
            .filter(|entry| {
                entry.purpose == PaymentPurpose::AutoTopup && entry.state == PaymentState::Pending
            })
            .map(|entry| PaymentView::new(entry.key(), entry.value()))
            .collect();
        views.sort_by_key(|view| view.created_ms);
        views
    }

    /// Every wallet with an enabled rule, under its threshold, with nothing in flight and no
    /// trigger out: the sweep's catch for triggers that were lost or deferred. Each is claimed (its
    /// trigger flag set, as a debit would) so that a slow gateway cannot make sweeps pile up
    /// triggers for one wallet; whoever handles the trigger clears the flag.
    pub fn wallets_wanting_topup(&self, gateway: &str) -> Vec<TopupTrigger> {
        let mut candidates = self.topup_candidates(gateway);
        candidates.retain(|trigger| {
            let Some(tenant) = self.state.tenant(&trigger.tenant) else {
                return false;
            };
            let Some(mut account) = tenant.users.get_mut(trigger.user.as_str()) else {
                return false;
            };
            let available = account
                .wallet(trigger.currency)
                .map_or(0, |wallet| wallet.available());
            Engine::take_trigger(&mut account, trigger.currency, available)
        });
        candidates
    }

    /// Rules that want a top-up and can charge through `gateway`: one waiting for a payment
    /// method is left alone until a card is saved (which triggers it, see `settlement`).
    fn topup_candidates(&self, gateway: &str) -> Vec<TopupTrigger> {
        let mut triggers = Vec::new();
        for tenant in self.state.tenant_list() {
            for entry in tenant.users.iter() {
                for rule in entry.rules().iter().filter(|rule| {
                    rule.enabled
                        && !rule.deleted
                        && !rule.triggered
                        && rule.pending.is_none()
                        && charge_method(entry.value(), rule, gateway).is_some()
                }) {
                    let wallet = entry
                        .wallet(rule.currency)
                        .copied()
                        .unwrap_or(Wallet::empty(rule.currency));
                    if wallet.available() < rule.threshold {
                        triggers.push(TopupTrigger {
                            tenant: tenant.id.to_string(),
                            user: entry.key().to_string(),
                            currency: rule.currency,
                        });
                    }
                }
            }
        }
        triggers
    }
}

/// Why a rule charges nothing now, if it does not: switched off, a charge in flight, the wallet
/// above its threshold, a cap reached, or a back-off after declines.
fn skip_reason(
    rule: &TopupRule,
    wallet: &Wallet,
    now_ms: i64,
    policy: &TopupPolicy,
) -> Option<TopupSkip> {
    if !rule.enabled {
        Some(TopupSkip::Disabled)
    } else if rule.pending.is_some() {
        Some(TopupSkip::InFlight)
    } else if wallet.available() >= rule.threshold {
        Some(TopupSkip::AboveThreshold)
    } else if rule.attempts_on(now_ms) >= rule.max_per_day {
        Some(TopupSkip::DailyCap)
    } else if rule.attempts_in_last_hour(now_ms) >= policy.max_per_hour as usize {
        Some(TopupSkip::BurstCap)
    } else {
        backoff_until(rule.consecutive_failures, rule.last_attempt_ms, policy)
            .filter(|&until| now_ms < until)
            .map(|until_ms| TopupSkip::Backoff { until_ms })
    }
}

/// When the next attempt may run after `failures` consecutive declines, if any wait applies.
fn backoff_until(failures: u32, last_attempt_ms: i64, policy: &TopupPolicy) -> Option<i64> {
    if failures == 0 {
        return None;
    }
    let shift = (failures - 1).min(20);
    let delay = policy
        .backoff_base_ms
        .saturating_mul(1i64 << shift)
        .min(policy.backoff_max_ms);
    Some(last_attempt_ms.saturating_add(delay))
}
