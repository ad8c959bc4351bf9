//! The payment gateways (Paystack, Stripe, and the sandbox that is the default) and [`Gateway`],
//! the one the configuration picks, through which the rest of payments calls whichever it is.
//! Each gateway speaks its provider's protocol and nothing else: what a payment buys, and whether
//! it is credited, is the engine's business (see [`super::gateway`] for the trait they share).

pub mod paystack;
pub mod sandbox;
pub mod stripe;

use http::HeaderMap;

use super::gateway::{
    ChargeSpec, CheckoutSpec, GatewayError, Outcome, PaymentGateway, WebhookError, WebhookReport,
};
use crate::config::{Gateway as GatewayKind, PaymentsConfig};
use crate::payments::SetupError;
use paystack::PaystackGateway;
use sandbox::SandboxGateway;
use stripe::StripeGateway;

/// The configured gateway.
pub enum Gateway {
    /// creditd's own checkout page.
    Sandbox(SandboxGateway),
    /// Paystack.
    Paystack(PaystackGateway),
    /// Stripe.
    Stripe(StripeGateway),
}

impl Gateway {
    /// The gateway `config` names, calling out through `http`; the sandbox's pages live under
    /// `public_url`. Paystack and Stripe need their keys.
    pub fn from_config(
        config: &PaymentsConfig,
        http: &reqwest::Client,
        public_url: &str,
    ) -> Result<Gateway, SetupError> {
        match config.gateway {
            GatewayKind::Sandbox => {
                tracing::warn!("payments.gateway = \"sandbox\": anyone who can open /sandbox/checkout pages can credit wallets for free; use paystack or stripe in production");
                Ok(Gateway::Sandbox(SandboxGateway::new(public_url)))
            }
            GatewayKind::Paystack => {
                if config.paystack.secret_key.is_empty() {
                    return Err(SetupError::MissingKey {
                        gateway: "paystack",
                        needs: "payments.paystack.secret_key",
                    });
                }
                Ok(Gateway::Paystack(PaystackGateway::new(
                    http.clone(),
                    &config.paystack.base_url,
                    &config.paystack.secret_key,
                )))
            }
            GatewayKind::Stripe => {
                if config.stripe.secret_key.is_empty() || config.stripe.webhook_secret.is_empty() {
                    return Err(SetupError::MissingKey {
                        gateway: "stripe",
                        needs: "payments.stripe.secret_key and webhook_secret",
                    });
                }
                Ok(Gateway::Stripe(StripeGateway::new(
                    http.clone(),
                    &config.stripe.base_url,
                    &config.stripe.secret_key,
                    &config.stripe.webhook_secret,
                )))
            }
        }
    }
}

impl PaymentGateway for Gateway {
    fn name(&self) -> &'static str {
        match self {
            Gateway::Sandbox(gateway) => gateway.name(),
            Gateway::Paystack(gateway) => gateway.name(),
            Gateway::Stripe(gateway) => gateway.name(),
        }
    }

    async fn initialize(&self, spec: &CheckoutSpec<'_>) -> Result<String, GatewayError> {
        match self {
            Gateway::Sandbox(gateway) => gateway.initialize(spec).await,
            Gateway::Paystack(gateway) => gateway.initialize(spec).await,
            Gateway::Stripe(gateway) => gateway.initialize(spec).await,
        }
    }

    async fn charge(&self, spec: &ChargeSpec<'_>) -> Result<Outcome, GatewayError> {
        match self {
            Gateway::Sandbox(gateway) => gateway.charge(spec).await,
            Gateway::Paystack(gateway) => gateway.charge(spec).await,
            Gateway::Stripe(gateway) => gateway.charge(spec).await,
        }
    }

    async fn verify(&self, reference: &str) -> Result<Outcome, GatewayError> {
        match self {
            Gateway::Sandbox(gateway) => gateway.verify(reference).await,
            Gateway::Paystack(gateway) => gateway.verify(reference).await,
            Gateway::Stripe(gateway) => gateway.verify(reference).await,
        }
    }

    fn webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: i64,
    ) -> Result<Option<WebhookReport>, WebhookError> {
        match self {
            Gateway::Sandbox(gateway) => gateway.webhook(headers, body, now_s),
            Gateway::Paystack(gateway) => gateway.webhook(headers, body, now_s),
            Gateway::Stripe(gateway) => gateway.webhook(headers, body, now_s),
        }
    }
}
