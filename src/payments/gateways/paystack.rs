//! Paystack: `POST /transaction/initialize` opens a checkout (its `authorization_url`),
//! `POST /transaction/charge_authorization` charges a saved `authorization_code`,
//! `GET /transaction/verify/{reference}` says what happened, and webhooks are signed with
//! `x-paystack-signature`: the hex HMAC-SHA512 of the raw body under the secret key.

use http::HeaderMap;
use serde_json::{json, Value};

use crate::engine::types::Decline;
use crate::payments::gateway::{
    read_json, transport, ChargeSpec, CheckoutSpec, GatewayError, Outcome, PaymentGateway,
    SavedToken, WebhookError, WebhookReport,
};
use crate::payments::signature::{signature_header, verify_hmac_sha512};

/// The Paystack gateway.
pub struct PaystackGateway {
    http: reqwest::Client,
    base_url: String,
    secret_key: String,
}

impl PaystackGateway {
    /// A gateway talking to `base_url` (`https://api.paystack.co`) with `secret_key`.
    pub fn new(http: reqwest::Client, base_url: &str, secret_key: &str) -> PaystackGateway {
        PaystackGateway {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret_key: secret_key.to_owned(),
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), GatewayError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.secret_key)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        read_json(response).await
    }
}

/// Sorts Paystack's `gateway_response` words: declines that no retry will fix are hard.
pub fn classify_decline(gateway_response: &str) -> Decline {
    let text = gateway_response.to_ascii_lowercase();
    const HARD: &[&str] = &[
        "expired",
        "invalid",
        "stolen",
        "lost",
        "restricted",
        "not permitted",
        "blocked",
        "closed",
        "revoked",
        "pickup",
    ];
    if HARD.iter().any(|word| text.contains(word)) {
        Decline::Hard
    } else {
        Decline::Soft
    }
}

/// What a refused `charge_authorization` request means. Only a refusal of the authorization itself
/// is a decline (a hard one: that card cannot be charged again). Anything else (our key refused,
/// rate limits, a reference Paystack already has, a 5xx) says nothing about whether money moved or
/// may move, so it is an error: the intent stays pending and the verify call settles it later.
fn refused_charge(status: u16, reason: String) -> Result<Outcome, GatewayError> {
    let text = reason.to_ascii_lowercase();
    let about_the_card = text.contains("authorization") || text.contains("card");
    let ours = matches!(status, 401 | 403 | 429) || status >= 500 || text.contains("duplicate");
    if about_the_card && !ours && (400..500).contains(&status) {
        return Ok(Outcome::Declined {
            decline: Decline::Hard,
            reason,
        });
    }
    Err(GatewayError::Http {
        status,
        detail: reason,
    })
}

/// Reads a transaction object (`data` of charge and verify answers, and of webhooks).
fn transaction_outcome(data: &Value) -> Result<Outcome, GatewayError> {
    let status = data["status"]
        .as_str()
        .ok_or_else(|| GatewayError::Protocol("transaction without status".into()))?;
    let reason = data["gateway_response"]
        .as_str()
        .unwrap_or(status)
        .to_owned();
    Ok(match status {
        "success" => Outcome::Paid {
            paid_minor: data["amount"]
                .as_i64()
                .ok_or_else(|| GatewayError::Protocol("transaction without amount".into()))?,
            paid_currency: data["currency"].as_str().unwrap_or("").to_owned(),
            method: reusable_method(data),
        },
        "failed" | "reversed" => Outcome::Declined {
            decline: classify_decline(&reason),
            reason,
        },
        "abandoned" => Outcome::Declined {
            decline: Decline::Abandoned,
            reason,
        },
        _ => Outcome::Pending,
    })
}

/// The card authorization of a transaction, if Paystack marks it reusable.
fn reusable_method(data: &Value) -> Option<SavedToken> {
    let authorization = &data["authorization"];
    if authorization["reusable"].as_bool() != Some(true) {
        return None;
    }
    let token = authorization["authorization_code"].as_str()?.to_owned();
    let brand = authorization["card_type"]
        .as_str()
        .or(authorization["brand"].as_str())
        .unwrap_or("card")
        .trim();
    let label = authorization["last4"]
        .as_str()
        .map(|last4| format!("{brand} ••{last4}"));
    let customer = data["customer"]["email"].as_str().map(str::to_owned);
    Some(SavedToken {
        gateway: "paystack",
        token,
        customer,
        label,
    })
}

impl PaymentGateway for PaystackGateway {
    fn name(&self) -> &'static str {
        "paystack"
    }

    async fn initialize(&self, spec: &CheckoutSpec<'_>) -> Result<String, GatewayError> {
        let body = json!({
            "email": spec.email,
            "amount": spec.amount_minor,
            "currency": spec.currency.as_str(),
            "reference": spec.reference,
            "callback_url": spec.callback_url,
            "metadata": { "source": "creditd", "description": spec.description },
        });
        let (status, answer) = self.post("/transaction/initialize", &body).await?;
        if status >= 300 || answer["status"].as_bool() != Some(true) {
            return Err(GatewayError::Http {
                status,
                detail: answer["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        answer["data"]["authorization_url"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                GatewayError::Protocol("initialize answered no authorization_url".into())
            })
    }

    async fn charge(&self, spec: &ChargeSpec<'_>) -> Result<Outcome, GatewayError> {
        let Some(email) = spec.customer else {
            return Ok(Outcome::Declined {
                decline: Decline::Hard,
                reason: "the saved card has no customer e-mail".into(),
            });
        };
        let body = json!({
            "authorization_code": spec.token,
            "email": email,
            "amount": spec.amount_minor,
            "currency": spec.currency.as_str(),
            "reference": spec.reference,
            "metadata": { "source": "creditd", "purpose": "auto_topup" },
        });
        let (status, answer) = self
            .post("/transaction/charge_authorization", &body)
            .await?;
        if status >= 400 || answer["status"].as_bool() != Some(true) {
            let reason = answer["message"]
                .as_str()
                .unwrap_or("charge refused")
                .to_owned();
            return refused_charge(status, reason);
        }
        transaction_outcome(&answer["data"])
    }

    async fn verify(&self, reference: &str) -> Result<Outcome, GatewayError> {
        let url = format!("{}/transaction/verify/{reference}", self.base_url);
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.secret_key)
            .send()
            .await
            .map_err(transport)?;
        let (status, answer) = read_json(response).await?;
        if status == 404
            || (status == 400
                && answer["message"]
                    .as_str()
                    .is_some_and(|m| m.to_ascii_lowercase().contains("not found")))
        {
            return Ok(Outcome::NotFound);
        }
        if status >= 300 || answer["status"].as_bool() != Some(true) {
            return Err(GatewayError::Http {
                status,
                detail: answer["message"].as_str().unwrap_or("").to_owned(),
            });
        }
        transaction_outcome(&answer["data"])
    }

    fn webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        _now_s: i64,
    ) -> Result<Option<WebhookReport>, WebhookError> {
        let signature = match signature_header(headers, "x-paystack-signature") {
            Ok(Some(signature)) => signature,
            Ok(None) => {
                return Err(WebhookError::BadSignature(
                    "missing x-paystack-signature".into(),
                ))
            }
            Err(_) => {
                return Err(WebhookError::BadSignature(
                    "malformed x-paystack-signature: not visible ASCII".into(),
                ))
            }
        };
        if !verify_hmac_sha512(self.secret_key.as_bytes(), body, signature) {
            return Err(WebhookError::BadSignature(
                "x-paystack-signature does not match".into(),
            ));
        }
        let event: Value = serde_json::from_slice(body)
            .map_err(|error| WebhookError::Malformed(error.to_string()))?;
        let kind = event["event"]
            .as_str()
            .ok_or_else(|| WebhookError::Malformed("no event type".into()))?;
        if kind != "charge.success" {
            return Ok(None);
        }
        let data = &event["data"];
        let reference = data["reference"]
            .as_str()
            .ok_or_else(|| WebhookError::Malformed("no reference".into()))?;
        let outcome = transaction_outcome(data)
            .map_err(|error| WebhookError::Malformed(error.to_string()))?;
        let detail = format!(
            "{kind} {} {}",
            data["amount"],
            data["currency"].as_str().unwrap_or("")
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
    fn declines_are_sorted() {
        assert_eq!(classify_decline("Insufficient Funds"), Decline::Soft);
        assert_eq!(classify_decline("Declined"), Decline::Soft);
        assert_eq!(classify_decline("Expired Card"), Decline::Hard);
        assert_eq!(
            classify_decline("Invalid authorization code"),
            Decline::Hard
        );
    }

    #[test]
    fn refused_charges_are_declines_only_when_about_the_card() {
        let refused = |status, message: &str| refused_charge(status, message.to_owned());
        assert!(matches!(
            refused(400, "Invalid authorization code"),
            Ok(Outcome::Declined {
                decline: Decline::Hard,
                ..
            })
        ));
        assert!(matches!(
            refused(400, "Authorization is not reusable"),
            Ok(Outcome::Declined { .. })
        ));
        // Our own problems, and ones that leave the charge's fate open: verify later.
        for (status, message) in [
            (401, "Invalid key"),
            (403, "Authorization failed for this key"),
            (429, "Too many requests"),
            (400, "Duplicate Transaction Reference"),
            (400, "Invalid amount"),
            (502, "Bad gateway"),
        ] {
            assert!(
                refused(status, message).is_err(),
                "{status} {message} is not a decline"
            );
        }
    }

    #[test]
    fn transactions_are_read() {
        let paid = json!({"status": "success", "amount": 5000, "currency": "NGN", "authorization": {"authorization_code": "AUTH_1", "reusable": true, "card_type": "visa ", "last4": "4081"}, "customer": {"email": "a@b.c"}});
        let Outcome::Paid {
            paid_minor, method, ..
        } = transaction_outcome(&paid).unwrap()
        else {
            panic!()
        };
        assert_eq!(paid_minor, 5000);
        let method = method.unwrap();
        assert_eq!(
            (
                method.token.as_str(),
                method.customer.as_deref(),
                method.label.as_deref()
            ),
            ("AUTH_1", Some("a@b.c"), Some("visa ••4081"))
        );
        let not_reusable = json!({"status": "success", "amount": 1, "currency": "NGN", "authorization": {"authorization_code": "AUTH_2", "reusable": false}});
        assert!(matches!(
            transaction_outcome(&not_reusable).unwrap(),
            Outcome::Paid { method: None, .. }
        ));
        assert_eq!(
            transaction_outcome(&json!({"status": "ongoing"})).unwrap(),
            Outcome::Pending
        );
        assert!(matches!(
            transaction_outcome(&json!({"status": "abandoned"})).unwrap(),
            Outcome::Declined {
                decline: Decline::Abandoned,
                ..
            }
        ));
        assert!(transaction_outcome(&json!({})).is_err());
    }
}
