//! Stripe: `POST /v1/checkout/sessions` opens a checkout (its `url`), `POST /v1/payment_intents`
//! with `off_session` and `confirm` charges a saved `pm_…` of a `cus_…`, `GET
//! /v1/payment_intents/search` finds a payment by creditd's reference, and webhooks carry
//! `Stripe-Signature: t=…,v1=…` (HMAC-SHA256 of `t.body` under the endpoint secret, five minutes of
//! tolerance, several `v1` while a secret rolls). Requests are form-encoded and carry creditd's
//! reference as `Idempotency-Key`, so a retried request never charges twice.

use http::HeaderMap;
use serde_json::Value;

use crate::engine::types::Decline;
use crate::payments::gateway::{
    read_json, transport, ChargeSpec, CheckoutSpec, GatewayError, Outcome, PaymentGateway,
    SavedToken, WebhookError, WebhookReport,
};
use crate::payments::signature::{signature_header, verify_timestamped};

/// Seconds a webhook's timestamp may be away from now.
pub const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;

/// The Stripe gateway.
pub struct StripeGateway {
    http: reqwest::Client,
    base_url: String,
    secret_key: String,
    webhook_secret: String,
}

impl StripeGateway {
    /// A gateway talking to `base_url` (`https://api.stripe.com`).
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        secret_key: &str,
        webhook_secret: &str,
    ) -> StripeGateway {
        StripeGateway {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
        }
    }

    async fn post_form(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<(u16, Value), GatewayError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.secret_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(transport)?;
        read_json(response).await
    }
}

/// Sorts Stripe's decline codes: declines that no retry will fix are hard.
pub fn classify_decline(code: &str) -> Decline {
    const HARD: &[&str] = &[
        "expired_card",
        "incorrect_number",
        "invalid_number",
        "invalid_expiry_month",
        "invalid_expiry_year",
        "invalid_account",
        "stolen_card",
        "lost_card",
        "pickup_card",
        "restricted_card",
        "card_not_supported",
        "authentication_required",
        "revocation_of_authorization",
        "revocation_of_all_authorizations",
        "transaction_not_allowed",
        "do_not_honor",
        "fraudulent",
    ];
    if HARD.contains(&code) {
        Decline::Hard
    } else {
        Decline::Soft
    }
}

/// Reads a PaymentIntent.
fn intent_outcome(intent: &Value) -> Result<Outcome, GatewayError> {
    let status = intent["status"]
        .as_str()
        .ok_or_else(|| GatewayError::Protocol("payment intent without status".into()))?;
    Ok(match status {
        "succeeded" => Outcome::Paid {
            paid_minor: intent["amount_received"]
                .as_i64()
                .or(intent["amount"].as_i64())
                .ok_or_else(|| GatewayError::Protocol("payment intent without amount".into()))?,
            paid_currency: intent["currency"].as_str().unwrap_or("").to_owned(),
            method: saved_method(intent),
        },
        "requires_payment_method" | "canceled" => declined(&intent["last_payment_error"], status),
        // Off-session, an action the customer must take will not happen: hard.
        "requires_action" => Outcome::Declined {
            decline: Decline::Hard,
            reason: "authentication required".into(),
        },
        _ => Outcome::Pending,
    })
}

fn declined(error: &Value, fallback: &str) -> Outcome {
    let code = error["decline_code"]
        .as_str()
        .or(error["code"].as_str())
        .unwrap_or(fallback);
    let reason = error["message"].as_str().unwrap_or(code).to_owned();
    Outcome::Declined {
        decline: classify_decline(code),
        reason,
    }
}

/// The intent's payment method, reusable off-session when it belongs to a customer.
fn saved_method(intent: &Value) -> Option<SavedToken> {
    let token = intent["payment_method"].as_str()?.to_owned();
    let customer = intent["customer"].as_str()?.to_owned();
    Some(SavedToken {
        gateway: "stripe",
        token,
        customer: Some(customer),
        label: None,
    })
}

impl PaymentGateway for StripeGateway {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn initialize(&self, spec: &CheckoutSpec<'_>) -> Result<String, GatewayError> {
        let form = [
            ("mode", "payment".to_owned()),
            ("client_reference_id", spec.reference.to_owned()),
            ("customer_email", spec.email.to_owned()),
            ("customer_creation", "always".to_owned()),
            ("line_items[0][quantity]", "1".to_owned()),
            (
                "line_items[0][price_data][currency]",
                spec.currency.as_str().to_ascii_lowercase(),
            ),
            (
                "line_items[0][price_data][unit_amount]",
                spec.amount_minor.to_string(),
            ),
            (
                "line_items[0][price_data][product_data][name]",
                spec.description.to_owned(),
            ),
            ("metadata[reference]", spec.reference.to_owned()),
            (
                "payment_intent_data[metadata][reference]",
                spec.reference.to_owned(),
            ),
            (
                "payment_intent_data[setup_future_usage]",
                "off_session".to_owned(),
            ),
            ("success_url", spec.callback_url.to_owned()),
            ("cancel_url", spec.callback_url.to_owned()),
        ];
        let (status, answer) = self
            .post_form("/v1/checkout/sessions", spec.reference, &form)
            .await?;
        if status >= 300 {
            return Err(GatewayError::Http {
                status,
                detail: answer["error"]["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        answer["url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| GatewayError::Protocol("checkout session without url".into()))
    }

    async fn charge(&self, spec: &ChargeSpec<'_>) -> Result<Outcome, GatewayError> {
        let Some(customer) = spec.customer else {
            return Ok(Outcome::Declined {
                decline: Decline::Hard,
                reason: "the saved payment method has no customer".into(),
            });
        };
        let form = [
            ("amount", spec.amount_minor.to_string()),
            ("currency", spec.currency.as_str().to_ascii_lowercase()),
            ("customer", customer.to_owned()),
            ("payment_method", spec.token.to_owned()),
            ("off_session", "true".to_owned()),
            ("confirm", "true".to_owned()),
            ("metadata[reference]", spec.reference.to_owned()),
        ];
        let (status, answer) = self
            .post_form("/v1/payment_intents", spec.reference, &form)
            .await?;
        match status {
            200..=299 => intent_outcome(&answer),
            // A card error: the intent exists and failed.
            402 => Ok(declined(&answer["error"], "card_declined")),
            400..=499 if answer["error"]["type"].as_str() == Some("card_error") => {
                Ok(declined(&answer["error"], "card_declined"))
            }
            _ => Err(GatewayError::Http {
                status,
                detail: answer["error"]["message"].as_str().unwrap_or("").to_owned(),
            }),
        }
    }

    async fn verify(&self, reference: &str) -> Result<Outcome, GatewayError> {
        let query = format!("metadata['reference']:'{reference}'");
        let response = self
            .http
            .get(format!("{}/v1/payment_intents/search", self.base_url))
            .bearer_auth(&self.secret_key)
            .query(&[("query", query.as_str())])
            .send()
            .await
            .map_err(transport)?;
        let (status, answer) = read_json(response).await?;
        if status >= 300 {
            return Err(GatewayError::Http {
                status,
                detail: answer["error"]["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        let intents = answer["data"]
            .as_array()
            .ok_or_else(|| GatewayError::Protocol("search without data".into()))?;
        // A succeeded intent wins over failed attempts with the same reference.
        let mut outcome = Outcome::NotFound;
        for intent in intents {
            match intent_outcome(intent)? {
                paid @ Outcome::Paid { .. } => return Ok(paid),
                other => {
                    if outcome == Outcome::NotFound || other == Outcome::Pending {
                        outcome = other;
                    }
                }
            }
        }
        Ok(outcome)
    }

    fn webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: i64,
    ) -> Result<Option<WebhookReport>, WebhookError> {
        let header = signature_header(headers, "stripe-signature")
            .map_err(|error| WebhookError::BadSignature(error.to_string()))?;
        verify_timestamped(
            self.webhook_secret.as_bytes(),
            header,
            body,
            now_s,
            SIGNATURE_TOLERANCE_SECONDS,
        )
        .map_err(|error| WebhookError::BadSignature(error.to_string()))?;
        let event: Value = serde_json::from_slice(body)
            .map_err(|error| WebhookError::Malformed(error.to_string()))?;
        let kind = event["type"]
            .as_str()
            .ok_or_else(|| WebhookError::Malformed("no event type".into()))?;
        let object = &event["data"]["object"];
        let malformed = |error: GatewayError| WebhookError::Malformed(error.to_string());
        let (reference, outcome) = match kind {
            "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
                if object["payment_status"].as_str() != Some("paid") {
                    return Ok(None);
                }
                let reference = object["client_reference_id"]
                    .as_str()
                    .or(object["metadata"]["reference"].as_str());
                let paid_minor = object["amount_total"]
                    .as_i64()
                    .ok_or_else(|| WebhookError::Malformed("no amount_total".into()))?;
                let outcome = Outcome::Paid {
                    paid_minor,
                    paid_currency: object["currency"].as_str().unwrap_or("").to_owned(),
                    method: None,
                };
                (reference, outcome)
            }
            "checkout.session.expired" => {
                let reference = object["client_reference_id"]
                    .as_str()
                    .or(object["metadata"]["reference"].as_str());
                let reason = "checkout session expired".to_owned();
                (
                    reference,
                    Outcome::Declined {
                        decline: Decline::Abandoned,
                        reason,
                    },
                )
            }
            "payment_intent.succeeded" | "payment_intent.payment_failed" => (
                object["metadata"]["reference"].as_str(),
                intent_outcome(object).map_err(malformed)?,
            ),
            _ => return Ok(None),
        };
        let Some(reference) = reference else {
            // Not a payment creditd started (no reference of ours): nothing to do.
            return Ok(None);
        };
        if outcome == Outcome::Pending {
            return Ok(None);
        }
        let detail = format!("{kind} {}", event["id"].as_str().unwrap_or(""));
        Ok(Some(WebhookReport {
            reference: reference.to_owned(),
            outcome,
            detail,
        }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn intents_are_read() {
        let paid = json!({"status": "succeeded", "amount_received": 1500, "currency": "usd", "payment_method": "pm_1", "customer": "cus_1"});
        let Outcome::Paid {
            paid_minor,
            paid_currency,
            method,
        } = intent_outcome(&paid).unwrap()
        else {
            panic!()
        };
        assert_eq!((paid_minor, paid_currency.as_str()), (1500, "usd"));
        assert_eq!(method.unwrap().customer.as_deref(), Some("cus_1"));
        let failed = json!({"status": "requires_payment_method", "last_payment_error": {"code": "card_declined", "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}});
        assert_eq!(
            intent_outcome(&failed).unwrap(),
            Outcome::Declined {
                decline: Decline::Soft,
                reason: "Your card has insufficient funds.".into()
            }
        );
        let expired = json!({"status": "requires_payment_method", "last_payment_error": {"code": "expired_card"}});
        assert!(matches!(
            intent_outcome(&expired).unwrap(),
            Outcome::Declined {
                decline: Decline::Hard,
                ..
            }
        ));
        assert_eq!(
            intent_outcome(&json!({"status": "processing"})).unwrap(),
            Outcome::Pending
        );
    }
}
