//! Payments and automatic top-up, engine side: payment references with exactly-once settlement,
//! saved payment methods, top-up rules and the caps that bound them. Nothing here touches the
//! network: the payments module calls the gateways and reports what they said.
//!
//! Exactly once: a payment is settled under its user's lock, after checking (under that lock) that
//! it is still pending, in the same record as its credit. A second delivery finds it settled and
//! changes nothing. The credits come from the terms recorded when the payment started, never from
//! the gateway, and only if the gateway's amount and currency equal them.

use sha2::{Digest, Sha256};

use super::event::{
    Decline, Event, Meta, MethodRecord, PaymentPurpose, PaymentTerms, Secret, WalletRef,
};
use super::ops::Context;
use super::state::{Account, PaymentEntry, PaymentState, Tenant, Wallet};
use super::types::{check_amount, check_id, Currency, EngineError, Invalid, Lsn};
use super::Engine;

/// The most characters of a payment reference.
pub const MAX_REFERENCE_BYTES: usize = 64;

/// Start a checkout for a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutRequest<'a> {
    /// The paying user.
    pub user: &'a str,
    /// The package bought.
    pub package: &'a str,
    /// creditd's reference for it (see [`new_reference`]).
    pub reference: &'a str,
    /// The gateway that takes the payment.
    pub gateway: &'a str,
}

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
    /// The paying user.
    pub user: String,
    /// The wallet currency of the credits.
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
    /// The record to wait for before showing it.
    pub last_lsn: Lsn,
}

impl PaymentView {
    fn new(reference: &str, entry: &PaymentEntry) -> PaymentView {
        PaymentView {
            reference: reference.to_owned(),
            tenant: entry.tenant.to_string(),
            user: entry.user.to_string(),
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
            last_lsn: entry.last_lsn,
        }
    }
}

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
        method: Option<MethodRecord<'a>>,
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
pub enum TenantEventKind {
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
    },
    /// A payment failed.
    TopupFailed {
        /// The payment.
        reference: String,
        /// Checkout or automatic.
        purpose: PaymentPurpose,
        /// How.
        decline: Decline,
    },
    /// An automatic top-up rule was switched off.
    AutoTopupDisabled {
        /// Why.
        reason: String,
    },
}

impl TenantEventKind {
    /// The event's type name.
    pub fn name(&self) -> &'static str {
        match self {
            TenantEventKind::LowBalance { .. } => "wallet.low_balance",
            TenantEventKind::Depleted { .. } => "wallet.depleted",
            TenantEventKind::TopupSucceeded { .. } => "topup.succeeded",
            TenantEventKind::TopupFailed { .. } => "topup.failed",
            TenantEventKind::AutoTopupDisabled { .. } => "autotopup.disabled",
        }
    }
}

/// An event for a tenant's application; send it once `lsn` is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantEvent {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    /// The wallet.
    pub currency: Currency,
    /// What happened.
    pub kind: TenantEventKind,
    /// When, Unix ms.
    pub time_ms: i64,
    /// The record it follows from.
    pub lsn: Lsn,
}

/// Where the engine hands work to the payments side. Sends never block: a full channel drops the
/// message (a trigger is caught again by the sweep; an event is counted as dropped).
#[derive(Debug, Clone)]
pub struct Hooks {
    /// Wallets whose rule wants a top-up.
    pub topups: crossbeam_channel::Sender<TopupTrigger>,
    /// Events for tenants' applications.
    pub events: crossbeam_channel::Sender<TenantEvent>,
}

/// How a change moved a wallet's `available`, for [`Engine::after_spend`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Spent {
    pub currency: Currency,
    pub before: i64,
    pub after: i64,
    pub lsn: Lsn,
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

/// The token a rule charges through `gateway` (its own, else the user's saved method of that
/// gateway) and the payer: the method's customer, else the profile's e-mail (Paystack needs one).
fn charge_method(
    account: &Account,
    rule: &super::state::TopupRule,
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
    /// Connects the payments side; once only.
    pub fn connect_hooks(&self, hooks: Hooks) -> Result<(), Hooks> {
        self.hooks.set(hooks)
    }

    /// After a change lowered a wallet's `available` (under the user's lock): trigger its top-up
    /// rule and tell the tenant about thresholds crossed. Costs a flag check when nothing applies.
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
            Some(TenantEventKind::Depleted { available: after })
        } else if threshold > 0 && before >= threshold && after < threshold {
            Some(TenantEventKind::LowBalance {
                available: after,
                threshold,
            })
        } else {
            None
        };
        if let Some(kind) = kind {
            self.emit(tenant, user, currency, kind, lsn);
        }
    }

    pub(super) fn emit(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Currency,
        kind: TenantEventKind,
        lsn: Lsn,
    ) {
        if let Some(hooks) = self.hooks.get() {
            let event = TenantEvent {
                tenant: tenant.id.to_string(),
                user: user.to_owned(),
                currency,
                kind,
                time_ms: self.clock.now_ms(),
                lsn,
            };
            if hooks.events.try_send(event).is_err() {
                metrics::counter!(crate::metrics::names::EVENTS_DROPPED_TOTAL).increment(1);
            }
        }
    }

    /// Records a checkout: the reference, the user, the package's credits and price at this moment.
    /// The gateway is called after this record is durable.
    pub fn start_checkout(
        &self,
        tenant: &Tenant,
        request: &CheckoutRequest<'_>,
        context: &Context<'_>,
    ) -> Result<(PaymentView, Lsn), EngineError> {
        check_id("user_id", request.user)?;
        check_id("package_id", request.package)?;
        check_reference(request.reference)?;
        let (credits, currency, amount_minor, price_currency) = {
            let catalogue = tenant.catalogue.read();
            let package = catalogue
                .packages
                .get(request.package)
                .filter(|p| p.active)
                .ok_or(EngineError::PackageNotFound)?;
            (
                package.credits,
                package.currency,
                package.price_minor,
                package.price_currency,
            )
        };
        let terms = PaymentTerms {
            package: request.package,
            credits,
            amount_minor,
            price_currency,
        };
        let mut account = tenant
            .users
            .get_mut(request.user)
            .ok_or(EngineError::UserNotFound)?;
        // Claimed before the map is checked, released after the record is applied: a second
        // request for the reference (another user's, under another lock) sees one or the other.
        let _claim = self
            .claim_reference(request.reference)
            .ok_or(EngineError::Conflict(
                "this payment reference is being issued",
            ))?;
        if self.state.payments.contains_key(request.reference) {
            return Err(EngineError::Conflict(
                "this payment reference is already in use",
            ));
        }
        let event = Event::PaymentInitialized {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: request.user,
                currency,
            },
            reference: request.reference,
            terms,
            gateway: request.gateway,
            purpose: PaymentPurpose::Checkout,
            meta: self.meta(context, self.clock.now_ms(), None),
        };
        let lsn = self.commit_event(tenant, &mut account, &event)?;
        drop(account);
        let view = self
            .payment(request.reference)
            .ok_or(EngineError::Conflict("payment vanished"))?;
        Ok((view, lsn))
    }

    /// Records the gateway's checkout page of a pending payment, so a replayed `initialize` answers
    /// the same page.
    pub fn open_checkout(&self, reference: &str, checkout_url: &str) -> Result<Lsn, EngineError> {
        if checkout_url.is_empty() || checkout_url.len() > 2048 {
            return Err(EngineError::Invalid(Invalid::new(
                "checkout_url",
                "must be 1 to 2048 characters",
            )));
        }
        let (tenant, user, currency) = {
            let entry = self
                .state
                .payments
                .get(reference)
                .ok_or(EngineError::Conflict("unknown payment"))?;
            (entry.tenant.clone(), entry.user.clone(), entry.currency)
        };
        let tenant = self
            .state
            .tenant(&tenant)
            .ok_or(EngineError::TenantNotFound)?;
        let mut account = tenant
            .users
            .get_mut(user.as_str())
            .ok_or(EngineError::UserNotFound)?;
        let event = Event::PaymentCheckoutOpened {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: &user,
                currency,
            },
            reference,
            checkout_url,
            meta: Meta::system(self.clock.now_ms()),
        };
        self.commit_event(&tenant, &mut account, &event)
    }

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
        let known = self.state.payments.get(reference).map(|entry| {
            (
                entry.tenant.clone(),
                entry.user.clone(),
                entry.gateway.clone(),
            )
        });
        let tenant = known
            .as_ref()
            .and_then(|(tenant, _, _)| self.state.tenant(tenant));
        let (Some((_, user, issued_by)), Some(tenant)) = (known, tenant) else {
            return self.record_unmatched(gateway, reference, detail, now_ms);
        };
        if issued_by != gateway || check_reference(reference).is_err() {
            return self.record_unmatched(gateway, reference, detail, now_ms);
        }
        let mut account = tenant
            .users
            .get_mut(user.as_str())
            .ok_or(EngineError::UserNotFound)?;
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
        if entry.state != PaymentState::Pending && !late_payment {
            // A later report may still carry the reusable method (Stripe sends it on its own event).
            if let (
                PaymentState::Succeeded { at_ms, .. },
                Verdict::Paid {
                    method: Some(method),
                    ..
                },
            ) = (entry.state, verdict)
            {
                let saved = account.payment_method();
                let mut lsn = entry.last_lsn;
                let usable = !method.token.is_empty() && method.token.len() <= 256;
                // Only if nothing newer was saved since this payment settled: a late or replayed
                // report of an old payment must not bring back a card the user has replaced.
                let newer_saved = saved.is_some_and(|saved| saved.saved_ms > at_ms);
                let same = saved.is_some_and(|saved| {
                    &*saved.token == method.token && saved.gateway == method.gateway
                });
                if usable && !newer_saved && !same {
                    let event = Event::PaymentMethodSaved {
                        wallet: WalletRef {
                            tenant: &tenant.id,
                            user: &user,
                            currency: entry.currency,
                        },
                        method: *method,
                        meta: Meta {
                            reference: Some(reference),
                            ..Meta::system(now_ms)
                        },
                    };
                    lsn = self.commit_event(&tenant, &mut account, &event)?;
                }
                return Ok(Settlement::AlreadySettled {
                    payment: PaymentView::new(reference, &entry),
                    lsn,
                });
            }
            return Ok(Settlement::AlreadySettled {
                payment: PaymentView::new(reference, &entry),
                lsn: entry.last_lsn,
            });
        }
        let wallet_ref = WalletRef {
            tenant: &tenant.id,
            user: &user,
            currency: entry.currency,
        };
        let meta = Meta {
            reference: Some(reference),
            ..Meta::system(now_ms)
        };
        match *verdict {
            Verdict::Paid {
                paid_minor,
                paid_currency,
                method,
            } => {
                // Currency codes compare without case: gateways report `ngn` for `NGN`.
                let same_currency = paid_currency
                    .as_str()
                    .eq_ignore_ascii_case(entry.price_currency.as_str());
                if paid_minor != entry.amount_minor || !same_currency {
                    let reason = format!(
                        "paid {paid_minor} {paid_currency}, the package costs {} {}",
                        entry.amount_minor, entry.price_currency
                    );
                    return self.fail_payment(
                        &tenant,
                        &mut account,
                        wallet_ref,
                        reference,
                        Decline::Mismatch,
                        &reason,
                        meta,
                    );
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
                let replaced = late_payment
                    && account
                        .payment_method()
                        .is_some_and(|saved| saved.saved_ms > entry.created_ms);
                let method = method
                    .filter(|m| !m.token.is_empty() && m.token.len() <= 256)
                    .filter(|_| !replaced);
                let event = Event::PaymentSucceeded {
                    wallet: wallet_ref,
                    reference,
                    credits: entry.credits,
                    paid_minor,
                    paid_currency,
                    balance_after,
                    available_after,
                    method,
                    meta,
                };
                let lsn = self.commit_event(&tenant, &mut account, &event)?;
                drop(account);
                let payment = self
                    .payment(reference)
                    .ok_or(EngineError::Conflict("payment vanished"))?;
                let kind = TenantEventKind::TopupSucceeded {
                    reference: reference.to_owned(),
                    purpose: payment.purpose,
                    credits: payment.credits,
                    balance: balance_after,
                };
                self.emit(&tenant, &user, payment.currency, kind, lsn);
                Ok(Settlement::Credited {
                    payment,
                    balance: balance_after,
                    available: available_after,
                    lsn,
                })
            }
            Verdict::Declined { decline, reason } => self.fail_payment(
                &tenant,
                &mut account,
                wallet_ref,
                reference,
                decline,
                reason,
                meta,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fail_payment(
        &self,
        tenant: &Tenant,
        account: &mut Account,
        wallet: WalletRef<'_>,
        reference: &str,
        decline: Decline,
        reason: &str,
        meta: Meta<'_>,
    ) -> Result<Settlement, EngineError> {
        let reason = truncate(reason, 256);
        let was_enabled = account
            .rule(wallet.currency)
            .is_some_and(|rule| rule.enabled);
        let event = Event::PaymentFailed {
            wallet,
            reference,
            decline,
            reason,
            meta,
        };
        let lsn = self.commit_event(tenant, account, &event)?;
        let payment = self
            .state
            .payments
            .get(reference)
            .map(|entry| PaymentView::new(reference, &entry));
        let payment = payment.ok_or(EngineError::Conflict("payment vanished"))?;
        let kind = TenantEventKind::TopupFailed {
            reference: reference.to_owned(),
            purpose: payment.purpose,
            decline,
        };
        self.emit(tenant, wallet.user, wallet.currency, kind, lsn);
        if was_enabled
            && !account
                .rule(wallet.currency)
                .is_some_and(|rule| rule.enabled)
        {
            let kind = TenantEventKind::AutoTopupDisabled {
                reason: reason.to_owned(),
            };
            self.emit(tenant, wallet.user, wallet.currency, kind, lsn);
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
        {
            let catalogue = tenant.catalogue.read();
            let package = catalogue
                .packages
                .get(request.package)
                .ok_or(EngineError::PackageNotFound)?;
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
            .ok_or(EngineError::UserNotFound)?;
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
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::UserNotFound)?;
        if account.rule(currency).is_none() {
            return Err(EngineError::AutoTopupNotFound);
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

    /// A wallet's rule.
    pub fn auto_topup(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Option<Currency>,
    ) -> Result<Option<RuleView>, EngineError> {
        let currency = currency.unwrap_or(tenant.default_currency);
        let account = tenant.users.get(user).ok_or(EngineError::UserNotFound)?;
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
        let account = tenant.users.get(user).ok_or(EngineError::UserNotFound)?;
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
        let account = tenant.users.get(user).ok_or(EngineError::UserNotFound)?;
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
        let package_id = match tenant
            .users
            .get(user)
            .ok_or(EngineError::UserNotFound)?
            .rule(currency)
        {
            Some(rule) => rule.package.clone(),
            None => return Ok(TopupDecision::Skip(TopupSkip::NoRule)),
        };
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
            .ok_or(EngineError::UserNotFound)?;
        let Some(rule) = account.rule(currency) else {
            return Ok(TopupDecision::Skip(TopupSkip::NoRule));
        };
        let wallet = account
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        let skip = if !rule.enabled {
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
        };
        if let Some(skip) = skip {
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
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::UserNotFound)?;
        match account.rule(currency) {
            None => return Err(EngineError::AutoTopupNotFound),
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
        self.emit(
            tenant,
            user,
            currency,
            TenantEventKind::AutoTopupDisabled {
                reason: reason.to_owned(),
            },
            lsn,
        );
        Ok(lsn)
    }

    /// Marks a wallet as handed to the top-up worker, if its rule wants a top-up and none is on its
    /// way; true if the caller should send the trigger. Runs under the user's lock.
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
    pub fn wallets_wanting_topup(&self) -> Vec<TopupTrigger> {
        let mut candidates = self.topup_candidates();
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

    fn topup_candidates(&self) -> Vec<TopupTrigger> {
        let mut triggers = Vec::new();
        for tenant in self.state.tenant_list() {
            for entry in tenant.users.iter() {
                for rule in entry.rules().iter().filter(|rule| {
                    rule.enabled && !rule.deleted && !rule.triggered && rule.pending.is_none()
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

    /// Sets where the tenant's application receives events and the secret that signs them.
    pub fn set_tenant_webhook(
        &self,
        tenant: &Tenant,
        url: Option<&str>,
        secret: Option<&str>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_tenant_webhook(url, secret)?;
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::TenantWebhookSet {
                tenant: &tenant.id,
                url,
                secret: secret.map(Secret),
                meta,
            },
        )
    }

    /// Forgets payments past retention (see `PaymentEntry::forgettable`). Each goes under its
    /// user's lock, the lock settlements take, so a settlement never loses its payment midway.
    pub(super) fn purge_payments(&self, now_ms: i64) -> u64 {
        let cutoff_ms = now_ms.saturating_sub(self.state.payment_retention_ms);
        let candidates: Vec<(String, String, String)> = self
            .state
            .payments
            .iter()
            .filter(|entry| entry.forgettable(cutoff_ms))
            .map(|entry| {
                (
                    entry.key().to_string(),
                    entry.tenant.to_string(),
                    entry.user.to_string(),
                )
            })
            .collect();
        let mut purged = 0;
        for (reference, tenant, user) in candidates {
            let Some(tenant) = self.state.tenant(&tenant) else {
                continue;
            };
            let Some(_user_lock) = tenant.users.get_mut(user.as_str()) else {
                continue;
            };
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

    /// The tenant's event endpoint and signing secret.
    pub fn tenant_webhook(&self, tenant: &Tenant) -> Option<(String, String)> {
        let catalogue = tenant.catalogue.read();
        Some((
            catalogue.webhook_url.as_deref()?.to_owned(),
            catalogue.webhook_secret.as_deref()?.to_owned(),
        ))
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

/// At most `max` bytes, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
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

/// An absolute `http://` or `https://` URL with a host, of at most 2048 characters, in plain
/// URI characters (no spaces or controls, ASCII or not).
pub(crate) fn is_http_url(url: &str) -> bool {
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    scheme_ok && uri.host().is_some_and(|host| !host.is_empty())
}

/// The checks [`Engine::set_tenant_webhook`] makes, for a caller that must know before it changes
/// anything else.
pub fn check_tenant_webhook(url: Option<&str>, secret: Option<&str>) -> Result<(), EngineError> {
    if url.is_some_and(|url| !is_http_url(url)) {
        return Err(EngineError::Invalid(Invalid::new(
            "webhook_url",
            "must be an absolute http(s) URL with a host, at most 2048 characters, without spaces",
        )));
    }
    if secret.is_some_and(|secret| secret.len() < 16 || secret.len() > 256) {
        return Err(EngineError::Invalid(Invalid::new(
            "webhook_secret",
            "must be 16 to 256 characters",
        )));
    }
    Ok(())
}
