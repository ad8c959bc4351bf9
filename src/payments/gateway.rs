//! The gateway trait and what gateways say. A gateway starts checkouts, charges saved methods,
//! answers "what happened to this reference?", and turns a signed webhook into a report. It never
//! decides how many credits a payment buys: the engine does, from the terms it recorded.
//!
//! The gateways themselves, and the choice of one by configuration, are in [`super::gateways`].

use std::future::Future;

use http::HeaderMap;

use crate::engine::payments::MethodDetails;
use crate::engine::payments::Verdict;
use crate::engine::types::{Currency, Decline};

/// A checkout to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutSpec<'a> {
    /// creditd's reference (also the gateway's idempotency key).
    pub reference: &'a str,
    /// Price in minor units.
    pub amount_minor: i64,
    /// Price currency.
    pub currency: Currency,
    /// The payer's e-mail.
    pub email: &'a str,
    /// What is bought, for the payment page.
    pub description: &'a str,
    /// Where the payer goes afterwards.
    pub callback_url: &'a str,
}

/// A charge of a saved method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeSpec<'a> {
    /// creditd's deterministic reference (also the gateway's idempotency key).
    pub reference: &'a str,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// The saved method's token.
    pub token: &'a str,
    /// Its customer (Paystack e-mail, Stripe `cus_…`).
    pub customer: Option<&'a str>,
}

/// A reusable method, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedToken {
    /// The gateway.
    pub gateway: &'static str,
    /// The token.
    pub token: String,
    /// The customer.
    pub customer: Option<String>,
    /// A label.
    pub label: Option<String>,
}

/// What a gateway says about a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Paid.
    Paid {
        /// Amount, minor units.
        paid_minor: i64,
        /// Currency as the gateway writes it.
        paid_currency: String,
        /// A reusable method to save.
        method: Option<SavedToken>,
    },
    /// Not paid.
    Declined {
        /// How.
        decline: Decline,
        /// The gateway's words.
        reason: String,
    },
    /// Not decided yet (an OTP, a bank transfer in progress).
    Pending,
    /// The gateway has no payment with this reference.
    NotFound,
}

impl Outcome {
    /// The engine's view of a final outcome; `None` for pending and not found.
    pub fn verdict(&self) -> Option<Verdict<'_>> {
        match self {
            Outcome::Paid {
                paid_minor,
                paid_currency,
                method,
            } => {
                // A report without a currency says nothing final (a later, complete one will).
                // Money taken in a currency that cannot be the package's is settled as a mismatch
                // (recorded, not credited, the rule switched off), not left pending for ever.
                if paid_currency.is_empty() {
                    return None;
                }
                let Ok(paid_currency) = Currency::new(&paid_currency.to_ascii_uppercase()) else {
                    return Some(Verdict::Declined {
                        decline: Decline::Mismatch,
                        reason: "paid in a currency that could not be read",
                    });
                };
                let method = method.as_ref().map(|m| MethodDetails {
                    gateway: m.gateway,
                    token: &m.token,
                    customer: m.customer.as_deref(),
                    label: m.label.as_deref(),
                });
                Some(Verdict::Paid {
                    paid_minor: *paid_minor,
                    paid_currency,
                    method,
                })
            }
            Outcome::Declined { decline, reason } => Some(Verdict::Declined {
                decline: *decline,
                reason,
            }),
            Outcome::Pending | Outcome::NotFound => None,
        }
    }
}

/// A gateway call that did not produce an answer. The outcome is unknown: a charge may or may not
/// have gone through, so it is verified later, never blindly retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No connection, or no answer in time.
    #[error("gateway unreachable: {0}")]
    Transport(String),
    /// An error status.
    #[error("gateway answered {status}: {detail}")]
    Http {
        /// The status.
        status: u16,
        /// What it said.
        detail: String,
    },
    /// An answer that does not follow the gateway's protocol.
    #[error("unexpected gateway answer: {0}")]
    Protocol(String),
}

/// A webhook the gateway's signature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReport {
    /// creditd's reference, as the gateway echoes it.
    pub reference: String,
    /// Paid or declined.
    pub outcome: Outcome,
    /// The event type and figures, for the record.
    pub detail: String,
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Missing, forged or stale signature: 401.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Signed, but not a body this gateway sends: 400.
    #[error("malformed webhook: {0}")]
    Malformed(String),
}

/// What a payment gateway does for creditd.
pub trait PaymentGateway: Send + Sync {
    /// `sandbox`, `paystack` or `stripe`.
    fn name(&self) -> &'static str;
    /// Opens a checkout and returns the page the payer goes to.
    fn initialize(
        &self,
        spec: &CheckoutSpec<'_>,
    ) -> impl Future<Output = Result<String, GatewayError>> + Send;
    /// Charges a saved method without the payer present.
    fn charge(
        &self,
        spec: &ChargeSpec<'_>,
    ) -> impl Future<Output = Result<Outcome, GatewayError>> + Send;
    /// Asks what happened to a reference.
    fn verify(&self, reference: &str)
        -> impl Future<Output = Result<Outcome, GatewayError>> + Send;
    /// Checks a webhook's signature over the raw body, then reads it; `Ok(None)` for event types
    /// that say nothing about a payment's outcome.
    fn webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: i64,
    ) -> Result<Option<WebhookReport>, WebhookError>;
}

/// An HTTP client for gateway calls: rustls with the web PKI roots, a timeout per call.
pub fn http_client(timeout_seconds: u64) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout_seconds.max(1)))
        .connect_timeout(std::time::Duration::from_secs(timeout_seconds.clamp(1, 10)))
        .user_agent(concat!("creditd/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Reads a JSON answer, or says what came instead.
pub(super) async fn read_json(
    response: reqwest::Response,
) -> Result<(u16, serde_json::Value), GatewayError> {
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|error| GatewayError::Transport(error.to_string()))?;
    let value = serde_json::from_slice(&bytes).map_err(|_| {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
        if status >= 500 {
            GatewayError::Http {
                status,
                detail: text,
            }
        } else {
            GatewayError::Protocol(format!("status {status}, not JSON: {text}"))
        }
    })?;
    Ok((status, value))
}

/// A transport error from reqwest.
pub(super) fn transport(error: reqwest::Error) -> GatewayError {
    GatewayError::Transport(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paid_report_in_an_unreadable_currency_settles_as_a_mismatch_and_one_without_waits() {
        let paid = |currency: &str| Outcome::Paid {
            paid_minor: 200_000,
            paid_currency: currency.to_owned(),
            method: None,
        };
        assert!(matches!(
            paid("ngn").verdict(),
            Some(Verdict::Paid { paid_currency, .. }) if paid_currency.as_str() == "NGN"
        ));
        assert!(paid("").verdict().is_none(), "no currency: not final");
        for unreadable in ["n g n", "ñgn", &"X".repeat(40)] {
            assert!(
                matches!(
                    paid(unreadable).verdict(),
                    Some(Verdict::Declined {
                        decline: Decline::Mismatch,
                        ..
                    })
                ),
                "{unreadable:?}"
            );
        }
        assert!(Outcome::Pending.verdict().is_none());
    }
}
