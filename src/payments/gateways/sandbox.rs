//! The sandbox gateway, the default: creditd serves the checkout page itself
//! (`/sandbox/checkout/{reference}`, with Pay and Decline; the page is [`crate::web::sandbox`]),
//! and the page's buttons produce a signed
//! webhook that goes through the very same handler as Paystack's and Stripe's. Saved "cards" are
//! tokens whose name says what a charge does, so automatic top-up can be tried without an account
//! anywhere. Nothing here moves money: never use it in production.

use dashmap::DashMap;
use http::HeaderMap;
use serde_json::{json, Value};

use crate::engine::payments::PaymentView;
use crate::engine::types::Decline;
use crate::payments::gateway::{
    ChargeSpec, CheckoutSpec, GatewayError, Outcome, PaymentGateway, SavedToken, WebhookError,
    WebhookReport,
};
use crate::payments::signature::{sign_timestamped, signature_header, verify_timestamped};

/// A card that always pays.
pub const CARD_OK: &str = "sandbox_card_ok";
/// A card that is always short of funds (a soft decline).
pub const CARD_INSUFFICIENT_FUNDS: &str = "sandbox_card_insufficient_funds";
/// A card that has expired (a hard decline).
pub const CARD_EXPIRED: &str = "sandbox_card_expired";
/// The header the sandbox signs its webhooks with (`t=…,v1=…`).
pub const SIGNATURE_HEADER: &str = "x-sandbox-signature";

/// The sandbox gateway.
pub struct SandboxGateway {
    public_url: String,
    secret: [u8; 32],
    charges: DashMap<String, Outcome>,
}

impl SandboxGateway {
    /// A sandbox whose pages live under `public_url`; its signing secret is fresh each start.
    pub fn new(public_url: &str) -> SandboxGateway {
        SandboxGateway {
            public_url: public_url.trim_end_matches('/').to_owned(),
            secret: rand::random(),
            charges: DashMap::new(),
        }
    }

    /// The signed webhook a click on the checkout page produces.
    pub fn click(&self, payment: &PaymentView, pay: bool, now_s: i64) -> (HeaderMap, Vec<u8>) {
        let body = json!({
            "event": if pay { "charge.success" } else { "charge.failed" },
            "reference": payment.reference,
            "amount": payment.amount_minor,
            "currency": payment.price_currency.as_str(),
            "card": if pay { CARD_OK } else { CARD_INSUFFICIENT_FUNDS },
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let mut headers = HeaderMap::new();
        if let Ok(value) = sign_timestamped(&self.secret, now_s, &body).parse() {
            headers.insert(SIGNATURE_HEADER, value);
        }
        (headers, body)
    }

    fn card_outcome(token: &str, amount_minor: i64, currency: &str) -> Outcome {
        match token {
            CARD_OK => Outcome::Paid {
                paid_minor: amount_minor,
                paid_currency: currency.to_owned(),
                method: None,
            },
            CARD_INSUFFICIENT_FUNDS => Outcome::Declined {
                decline: Decline::Soft,
                reason: "Insufficient funds (sandbox card)".into(),
            },
            CARD_EXPIRED => Outcome::Declined {
                decline: Decline::Hard,
                reason: "Expired card (sandbox card)".into(),
            },
            _ => Outcome::Declined {
                decline: Decline::Hard,
                reason: "Unknown sandbox card".into(),
            },
        }
    }
}

impl PaymentGateway for SandboxGateway {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    async fn initialize(&self, spec: &CheckoutSpec<'_>) -> Result<String, GatewayError> {
        Ok(format!(
            "{}/sandbox/checkout/{}",
            self.public_url, spec.reference
        ))
    }

    async fn charge(&self, spec: &ChargeSpec<'_>) -> Result<Outcome, GatewayError> {
        let outcome =
            SandboxGateway::card_outcome(spec.token, spec.amount_minor, spec.currency.as_str());
        self.charges
            .insert(spec.reference.to_owned(), outcome.clone());
        Ok(outcome)
    }

    async fn verify(&self, reference: &str) -> Result<Outcome, GatewayError> {
        Ok(self
            .charges
            .get(reference)
            .map_or(Outcome::NotFound, |outcome| outcome.clone()))
    }

    fn webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: i64,
    ) -> Result<Option<WebhookReport>, WebhookError> {
        let header = signature_header(headers, SIGNATURE_HEADER)
            .map_err(|error| WebhookError::BadSignature(error.to_string()))?;
        verify_timestamped(&self.secret, header, body, now_s, 300)
            .map_err(|error| WebhookError::BadSignature(error.to_string()))?;
        let event: Value = serde_json::from_slice(body)
            .map_err(|error| WebhookError::Malformed(error.to_string()))?;
        let reference = event["reference"]
            .as_str()
            .ok_or_else(|| WebhookError::Malformed("no reference".into()))?;
        let amount = event["amount"]
            .as_i64()
            .ok_or_else(|| WebhookError::Malformed("no amount".into()))?;
        let currency = event["currency"].as_str().unwrap_or("");
        let card = event["card"].as_str().unwrap_or("");
        let outcome = match event["event"].as_str() {
            Some("charge.success") => Outcome::Paid {
                paid_minor: amount,
                paid_currency: currency.to_owned(),
                method: Some(SavedToken {
                    gateway: "sandbox",
                    token: card.to_owned(),
                    customer: None,
                    label: Some("sandbox card".into()),
                }),
            },
            Some("charge.failed") => SandboxGateway::card_outcome(card, amount, currency),
            _ => return Ok(None),
        };
        self.charges.insert(reference.to_owned(), outcome.clone());
        let detail = format!(
            "sandbox {} {amount} {currency}",
            event["event"].as_str().unwrap_or("")
        );
        Ok(Some(WebhookReport {
            reference: reference.to_owned(),
            outcome,
            detail,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clicks_verify_and_forgeries_do_not() {
        let sandbox = SandboxGateway::new("http://localhost");
        let payment = crate::web::sandbox::tests::pending_checkout();
        let (headers, body) = sandbox.click(&payment, true, 1000);
        let report = sandbox.webhook(&headers, &body, 1000).unwrap().unwrap();
        assert!(matches!(
            report.outcome,
            Outcome::Paid {
                paid_minor: 100,
                ..
            }
        ));
        let other = SandboxGateway::new("http://localhost");
        assert!(matches!(
            other.webhook(&headers, &body, 1000),
            Err(WebhookError::BadSignature(_))
        ));
    }
}
