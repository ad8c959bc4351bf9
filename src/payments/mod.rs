//! Payments: the gateway trait ([`gateway`]) and the gateways ([`gateways`]: Paystack, Stripe, and
//! the sandbox that is the default), webhook verification and settlement, and the automatic top-up
//! worker. Notifications to tenants are not a payment concern: see [`crate::notify`]; the sandbox's
//! checkout page is in [`crate::web`].
//!
//! This module talks to the network and never changes state except through the engine: a payment
//! is recorded (and durable) before any gateway hears of it, and credited by the engine exactly once
//! per reference, from the terms it recorded, whatever the gateway or the number of deliveries.

pub mod gateway;
pub mod gateways;
pub mod signature;
pub mod topup;

use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use http::HeaderMap;
use metrics::{Counter, Histogram};
use sha2::{Digest, Sha256};

use crate::config::PaymentsConfig;
use crate::engine::payments::{
    new_reference, CheckoutRequest, PaymentView, PoolCheckoutRequest, Settlement, TopupPolicy,
};
use crate::engine::types::{
    check_email, check_idempotency_key, Decline, EngineError, PaymentPurpose,
};
use crate::engine::{Context, Engine, IdempotencyKey, Tenant};
use crate::metrics::names;
use gateway::{CheckoutSpec, GatewayError, Outcome, PaymentGateway, WebhookError};
use gateways::Gateway;
use signature::hex_encode;

/// Why the payments service could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The configured gateway needs a key the configuration does not give.
    #[error("payments.gateway = \"{gateway}\" needs {needs}")]
    MissingKey {
        /// The gateway's name in the configuration.
        gateway: &'static str,
        /// The settings it needs.
        needs: &'static str,
    },
    /// The HTTP client for calls to the gateway could not be built.
    #[error("{0}")]
    Http(#[source] reqwest::Error),
}

/// Why a payment request failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    /// The engine refused it.
    #[error("{0}")]
    Engine(#[from] EngineError),
    /// The gateway did not answer usefully.
    #[error("{0}")]
    Gateway(#[from] GatewayError),
    /// The same idempotency key is being processed.
    #[error("a request with this Idempotency-Key is still being processed")]
    InFlight,
    /// The idempotency key was used for another payment.
    #[error("this Idempotency-Key was used for another payment")]
    KeyReused,
    /// A field is wrong.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// This gateway is not the configured one.
    #[error("the {0} gateway is not configured")]
    NotConfigured(String),
    /// The webhook was refused.
    #[error("{0}")]
    Webhook(#[from] WebhookError),
}

/// Whose credits a payment buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentTarget<'a> {
    /// A user's wallet.
    User(&'a str),
    /// A credit pool.
    Pool(&'a str),
}

/// `POST /v1/payments/initialize`.
#[derive(Debug, Clone, Copy)]
pub struct InitializeRequest<'a> {
    /// Where the credits go: the paying user's wallet, or a credit pool.
    pub target: PaymentTarget<'a>,
    /// The package bought.
    pub package: &'a str,
    /// The payer's e-mail.
    pub email: &'a str,
    /// Where the checkout sends the payer afterwards.
    pub callback_url: Option<&'a str>,
    /// The caller's metadata, a JSON object as text: kept with the payment.
    pub metadata: Option<&'a str>,
    /// The request's Idempotency-Key.
    pub idempotency_key: Option<&'a str>,
    /// The API key's name.
    pub actor: &'a str,
}

/// A checkout ready for the payer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initialized {
    /// creditd's reference.
    pub reference: String,
    /// Where the payer pays.
    pub checkout_url: String,
    /// Whether this answers an earlier request with the same key.
    pub replayed: bool,
}

/// What a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// Credited now.
    Credited,
    /// Settled before; nothing changed.
    Duplicate,
    /// Recorded as failed (declined, abandoned, wrong amount or currency).
    Failed,
    /// An unknown reference, recorded.
    Unmatched,
    /// An event type that says nothing about a payment.
    Ignored,
}

impl WebhookOutcome {
    fn label(self) -> &'static str {
        match self {
            WebhookOutcome::Credited => "credited",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::Unmatched => "unmatched",
            WebhookOutcome::Ignored => "ignored",
        }
    }
}

struct PaymentMetrics {
    gateway_seconds: [Histogram; 3],
    webhooks: Vec<(&'static str, Counter)>,
    autotopup: Vec<(&'static str, Counter)>,
}

impl PaymentMetrics {
    fn new(gateway: &'static str) -> PaymentMetrics {
        let seconds = |op: &'static str| metrics::histogram!(names::GATEWAY_REQUEST_DURATION_SECONDS, "gateway" => gateway, "op" => op);
        // Every series is registered at zero, so dashboards see it before the first event.
        let labelled = |values: &[&'static str],
                        counter: &dyn Fn(&'static str) -> Counter|
         -> Vec<(&'static str, Counter)> {
            values
                .iter()
                .map(|&value| {
                    let counter = counter(value);
                    counter.increment(0);
                    (value, counter)
                })
                .collect()
        };
        PaymentMetrics {
            gateway_seconds: [seconds("initialize"), seconds("charge"), seconds("verify")],
            webhooks: labelled(
                &[
                    "credited",
                    "duplicate",
                    "failed",
                    "unmatched",
                    "ignored",
                    "bad_signature",
                    "malformed",
                ],
                &|outcome| metrics::counter!(names::WEBHOOKS_RECEIVED_TOTAL, "gateway" => gateway, "outcome" => outcome),
            ),
            autotopup: labelled(
                &["succeeded", "failed", "skipped", "pending", "error"],
                &|outcome| metrics::counter!(names::AUTOTOPUP_TOTAL, "outcome" => outcome),
            ),
        }
    }

    fn count(counters: &[(&'static str, Counter)], label: &str) {
        if let Some((_, counter)) = counters.iter().find(|(name, _)| *name == label) {
            counter.increment(1);
        }
    }
}

/// The gateway operations whose latency is measured.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GatewayOp {
    Initialize = 0,
    Charge = 1,
    Verify = 2,
}

/// The payments service.
pub struct Payments {
    engine: Arc<Engine>,
    gateway: Gateway,
    config: PaymentsConfig,
    policy: TopupPolicy,
    public_url: String,
    /// References whose `initialize` is talking to the gateway right now.
    initializing: DashMap<String, ()>,
    metrics: PaymentMetrics,
    http: reqwest::Client,
}

/// A checkout being opened at the gateway, unmarked when dropped.
struct Opening<'a> {
    map: &'a DashMap<String, ()>,
    reference: &'a str,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        self.map.remove(self.reference);
    }
}

impl Payments {
    /// The service for the configured gateway. Paystack and Stripe need their keys.
    pub fn new(
        engine: Arc<Engine>,
        config: &PaymentsConfig,
        public_url: &str,
    ) -> Result<Payments, SetupError> {
        let http =
            gateway::http_client(config.gateway_timeout_seconds).map_err(SetupError::Http)?;
        let gateway = Gateway::from_config(config, &http, public_url)?;
        let policy = TopupPolicy {
            max_per_hour: config.autotopup.max_per_hour,
            backoff_base_ms: seconds_to_ms(config.autotopup.backoff.0),
            backoff_max_ms: seconds_to_ms(config.autotopup.backoff_max.0),
        };
        let metrics = PaymentMetrics::new(gateway.name());
        Ok(Payments {
            engine,
            gateway,
            config: config.clone(),
            policy,
            public_url: public_url.trim_end_matches('/').to_owned(),
            initializing: DashMap::new(),
            metrics,
            http,
        })
    }

    /// The configured gateway.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The configured gateway's name (`sandbox`, `paystack`, `stripe`).
    pub fn gateway_name(&self) -> &'static str {
        self.gateway.name()
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub(crate) async fn timed<T>(
        &self,
        op: GatewayOp,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        let started = Instant::now();
        let result = call.await;
        self.metrics.gateway_seconds[op as usize].record(started.elapsed().as_secs_f64());
        result
    }

    pub(crate) fn count_autotopup(&self, outcome: &str) {
        PaymentMetrics::count(&self.metrics.autotopup, outcome);
    }

    /// Records a checkout (durably), opens it at the gateway, records the page, answers it. With an
    /// Idempotency-Key the reference derives from the key, so a retry finds the same payment.
    pub async fn initialize(
        &self,
        tenant: &Tenant,
        request: &InitializeRequest<'_>,
    ) -> Result<Initialized, PaymentsError> {
        check_email(request.email)?;
        if let Some(url) = request.callback_url {
            if !crate::engine::is_http_url(url) {
                return Err(PaymentsError::Invalid("callback_url"));
            }
        }
        let reference = match request.idempotency_key {
            Some(key) => {
                check_idempotency_key(key)?;
                keyed_reference(tenant.id(), key)
            }
            None => new_reference(),
        };
        if let Some(existing) = self.engine.payment(&reference) {
            return self.replay(tenant, request, existing).await;
        }
        let fingerprint = request_fingerprint(request);
        let context = match request.idempotency_key {
            Some(key) => {
                Context::actor(request.actor).with_key(IdempotencyKey { key, fingerprint })
            }
            None => Context::actor(request.actor),
        };
        let started = match request.target {
            PaymentTarget::User(user) => {
                let checkout = CheckoutRequest {
                    user,
                    package: request.package,
                    reference: &reference,
                    gateway: self.gateway.name(),
                    metadata: request.metadata,
                };
                self.engine.start_checkout(tenant, &checkout, &context)
            }
            PaymentTarget::Pool(pool) => {
                let checkout = PoolCheckoutRequest {
                    pool,
                    package: request.package,
                    reference: &reference,
                    gateway: self.gateway.name(),
                    metadata: request.metadata,
                };
                self.engine.start_pool_checkout(tenant, &checkout, &context)
            }
        };
        let (payment, lsn) = match started {
            Ok(started) => started,
            Err(EngineError::Conflict(_)) => {
                // A concurrent request with the same key recorded it first.
                let existing = self
                    .engine
                    .payment(&reference)
                    .ok_or(PaymentsError::InFlight)?;
                return self.replay(tenant, request, existing).await;
            }
            Err(error) => return Err(error.into()),
        };
        self.engine.durable(lsn).await.map_err(EngineError::from)?;
        self.open(tenant, &payment, request).await
    }

    /// Opens the checkout at the gateway for a recorded payment and records the page.
    async fn open(
        &self,
        tenant: &Tenant,
        payment: &PaymentView,
        request: &InitializeRequest<'_>,
    ) -> Result<Initialized, PaymentsError> {
        if self
            .initializing
            .insert(payment.reference.clone(), ())
            .is_some()
        {
            return Err(PaymentsError::InFlight);
        }
        // Removed however this ends, a client that hangs up (dropping this future) included.
        let _opening = Opening {
            map: &self.initializing,
            reference: &payment.reference,
        };
        self.open_at_gateway(tenant, payment, request).await
    }

    async fn open_at_gateway(
        &self,
        tenant: &Tenant,
        payment: &PaymentView,
        request: &InitializeRequest<'_>,
    ) -> Result<Initialized, PaymentsError> {
        let package_name = tenant
            .packages()
            .into_iter()
            .find(|p| p.package_id == payment.package)
            .map_or_else(|| payment.package.clone(), |p| p.name);
        let default_callback =
            format!("{}/sandbox/checkout/{}", self.public_url, payment.reference);
        let callback_url = request
            .callback_url
            .or(self.config.default_callback_url.as_deref())
            .unwrap_or(&default_callback);
        let spec = CheckoutSpec {
            reference: &payment.reference,
            amount_minor: payment.amount_minor,
            currency: payment.price_currency,
            email: request.email.trim(),
            description: &format!("{package_name} ({} credits)", payment.credits),
            callback_url,
        };
        let checkout_url = self
            .timed(GatewayOp::Initialize, self.gateway.initialize(&spec))
            .await?;
        let lsn = self
            .engine
            .open_checkout(&payment.reference, &checkout_url)?;
        self.engine.durable(lsn).await.map_err(EngineError::from)?;
        Ok(Initialized {
            reference: payment.reference.clone(),
            checkout_url,
            replayed: false,
        })
    }

    /// Answers a retried `initialize` from the payment its key already made.
    async fn replay(
        &self,
        tenant: &Tenant,
        request: &InitializeRequest<'_>,
        existing: PaymentView,
    ) -> Result<Initialized, PaymentsError> {
        let other_request = existing
            .fingerprint
            .is_some_and(|fingerprint| fingerprint != request_fingerprint(request));
        let same_target = match request.target {
            PaymentTarget::User(user) => existing.pool.is_none() && existing.user == user,
            PaymentTarget::Pool(pool) => existing.pool.as_deref() == Some(pool),
        };
        if existing.tenant != tenant.id()
            || !same_target
            || existing.package != request.package
            || other_request
        {
            return Err(PaymentsError::KeyReused);
        }
        if let Some(checkout_url) = existing.checkout_url.clone() {
            self.engine
                .durable(existing.last_lsn)
                .await
                .map_err(EngineError::from)?;
            return Ok(Initialized {
                reference: existing.reference,
                checkout_url,
                replayed: true,
            });
        }
        // Recorded but never opened (a crash, or a gateway error): open it now. Gateways treat the
        // reference as an idempotency key, so this cannot make a second checkout.
        self.open(tenant, &existing, request)
            .await
            .map(|opened| Initialized {
                replayed: true,
                ..opened
            })
    }

    /// Handles a gateway's webhook: the signature is checked over the raw bytes before anything is
    /// parsed, then the verdict is settled through the engine and made durable before the 200.
    pub async fn webhook(
        &self,
        gateway: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<WebhookOutcome, PaymentsError> {
        if gateway != self.gateway.name() {
            return Err(PaymentsError::NotConfigured(gateway.to_owned()));
        }
        let now_s = self.engine.now_ms() / 1000;
        let report = match self.gateway.webhook(headers, body, now_s) {
            Ok(Some(report)) => report,
            Ok(None) => {
                PaymentMetrics::count(&self.metrics.webhooks, "ignored");
                return Ok(WebhookOutcome::Ignored);
            }
            Err(error) => {
                let label = if matches!(error, WebhookError::BadSignature(_)) {
                    "bad_signature"
                } else {
                    "malformed"
                };
                PaymentMetrics::count(&self.metrics.webhooks, label);
                return Err(error.into());
            }
        };
        // A declined card during a checkout is not the end of it: the payer may try another card
        // in the same session. Only the sandbox's Decline button and an expired or abandoned
        // checkout end a checkout unpaid.
        if let Outcome::Declined { decline, .. } = &report.outcome {
            let checkout = self
                .engine
                .payment(&report.reference)
                .is_some_and(|p| p.purpose == PaymentPurpose::Checkout);
            let sandbox = matches!(self.gateway, Gateway::Sandbox(_));
            if checkout && *decline != Decline::Abandoned && !sandbox {
                PaymentMetrics::count(&self.metrics.webhooks, "ignored");
                return Ok(WebhookOutcome::Ignored);
            }
        }
        let outcome = self
            .settle(&report.reference, &report.outcome, &report.detail)
            .await?;
        PaymentMetrics::count(&self.metrics.webhooks, outcome.label());
        Ok(outcome)
    }

    /// Settles a gateway outcome (final ones only) and waits until it is durable.
    pub(crate) async fn settle(
        &self,
        reference: &str,
        outcome: &Outcome,
        detail: &str,
    ) -> Result<WebhookOutcome, PaymentsError> {
        let Some(verdict) = outcome.verdict() else {
            return Ok(WebhookOutcome::Ignored);
        };
        let settlement =
            self.engine
                .settle_payment(reference, self.gateway.name(), &verdict, detail)?;
        let (lsn, result) = match &settlement {
            Settlement::Credited { lsn, .. } => (*lsn, WebhookOutcome::Credited),
            Settlement::AlreadySettled { lsn, .. } => (*lsn, WebhookOutcome::Duplicate),
            Settlement::Failed { lsn, .. } => (*lsn, WebhookOutcome::Failed),
            Settlement::Unmatched { lsn } => (*lsn, WebhookOutcome::Unmatched),
        };
        self.engine.durable(lsn).await.map_err(EngineError::from)?;
        Ok(result)
    }

    /// A click on the sandbox checkout page: the page's signed webhook, through the same handler.
    pub async fn sandbox_click(
        &self,
        reference: &str,
        pay: bool,
    ) -> Result<PaymentView, PaymentsError> {
        let Gateway::Sandbox(sandbox) = &self.gateway else {
            return Err(PaymentsError::NotConfigured("sandbox".into()));
        };
        let payment = self
            .engine
            .payment(reference)
            .filter(|p| p.purpose == PaymentPurpose::Checkout)
            .ok_or(EngineError::Conflict("unknown checkout"))?;
        let (headers, body) = sandbox.click(&payment, pay, self.engine.now_ms() / 1000);
        self.webhook("sandbox", &headers, &body).await?;
        self.engine
            .payment(reference)
            .ok_or_else(|| EngineError::Conflict("unknown payment").into())
    }

    /// The checkout page of a payment (any gateway; Pay and Decline only in the sandbox).
    pub fn checkout_page(&self, reference: &str, notice: Option<&str>) -> Option<String> {
        // Only checkouts have a page: an automatic top-up's reference is not a page to open.
        let payment = self
            .engine
            .payment(reference)
            .filter(|p| p.purpose == PaymentPurpose::Checkout)?;
        let tenant = self.engine.tenant(&payment.tenant)?;
        let name = tenant
            .packages()
            .into_iter()
            .find(|p| p.package_id == payment.package)
            .map_or_else(|| payment.package.clone(), |p| p.name);
        let buttons = matches!(self.gateway, Gateway::Sandbox(_));
        Some(crate::web::sandbox::checkout_page(
            &payment, &name, buttons, notice,
        ))
    }

    /// The HTTP client for calls out: the gateways', shared with notifications to tenants.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The configuration.
    pub fn config(&self) -> &PaymentsConfig {
        &self.config
    }
}

/// The digest of an `initialize` request: a retry with the same key must match it. The user (or
/// pool), the
/// package and the metadata (which the payment keeps) count; a retry with another e-mail or
/// callback URL answers the first payment. Without metadata the digest is that of the user and
/// the package alone.
fn request_fingerprint(request: &InitializeRequest<'_>) -> crate::engine::types::Fingerprint {
    let mut hasher = Sha256::new();
    // A pool's payment is told apart from a user's of the same id by a part a user's lacks.
    let (pool_tag, target) = match request.target {
        PaymentTarget::User(user) => (None, user),
        PaymentTarget::Pool(pool) => (Some("pool"), pool),
    };
    for part in [
        pool_tag,
        Some(target),
        Some(request.package),
        request.metadata,
    ]
    .into_iter()
    .flatten()
    {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&hasher.finalize()[..16]);
    fingerprint
}

/// The reference a tenant's Idempotency-Key maps to.
fn keyed_reference(tenant: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [b"checkout".as_slice(), tenant.as_bytes(), key.as_bytes()] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    format!("cd_{}", hex_encode(&hasher.finalize()[..12]))
}

fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}
