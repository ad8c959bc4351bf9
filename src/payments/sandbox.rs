//! The sandbox gateway, the default: creditd serves the checkout page itself
//! (`/sandbox/checkout/{reference}`, with Pay and Decline), and the page's buttons produce a signed
//! webhook that goes through the very same handler as Paystack's and Stripe's. Saved "cards" are
//! tokens whose name says what a charge does, so automatic top-up can be tried without an account
//! anywhere. Nothing here moves money: never use it in production.

use dashmap::DashMap;
use http::HeaderMap;
use serde_json::{json, Value};

use super::gateway::{
    ChargeSpec, CheckoutSpec, GatewayError, Outcome, PaymentGateway, SavedToken, WebhookError,
    WebhookReport,
};
use super::signature::{sign_timestamped, signature_header, verify_timestamped};
use crate::engine::payments::{PaymentStatus, PaymentView};
use crate::engine::types::Decline;

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

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Minor units as a decimal price (`200000 NGN` → `2,000.00 NGN`).
pub fn price(amount_minor: i64, currency: &str) -> String {
    let units = amount_minor / 100;
    let cents = (amount_minor % 100).abs();
    let digits = units.abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if amount_minor < 0 { "-" } else { "" };
    format!("{sign}{grouped}.{cents:02} {}", escape(currency))
}

/// The checkout page: what is bought, and (while pending, in the sandbox) Pay and Decline.
pub fn checkout_page(
    payment: &PaymentView,
    package_name: &str,
    buttons: bool,
    notice: Option<&str>,
) -> String {
    let reference = escape(&payment.reference);
    let status = match payment.status {
        PaymentStatus::Pending => "Waiting for payment".to_owned(),
        PaymentStatus::Succeeded { .. } => format!("Paid — {} credits added", payment.credits),
        PaymentStatus::Failed { decline } => {
            format!("Not paid ({})", decline.as_str().replace('_', " "))
        }
    };
    let actions = if buttons && payment.status == PaymentStatus::Pending {
        format!(
            r#"<form method="post" action="/sandbox/checkout/{reference}">
  <button type="submit" name="action" value="pay" id="pay">Pay {}</button>
  <button type="submit" name="action" value="decline" id="decline" class="secondary">Decline</button>
</form>"#,
            price(payment.amount_minor, payment.price_currency.as_str())
        )
    } else {
        String::new()
    };
    let notice = notice
        .map(|text| format!(r#"<p class="notice" id="notice">{}</p>"#, escape(text)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Checkout {reference}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 28rem; margin: 3rem auto; padding: 0 1rem; color: #1d1d1f; }}
.card {{ border: 1px solid #ddd; border-radius: 12px; padding: 1.5rem; }}
h1 {{ font-size: 1.3rem; margin-top: 0; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: .4rem 1rem; }}
dt {{ color: #666; }}
button {{ font-size: 1rem; padding: .7rem 1.2rem; border-radius: 8px; border: 0; background: #0a7d4f; color: white; cursor: pointer; }}
button.secondary {{ background: #eee; color: #333; margin-left: .5rem; }}
.sandbox {{ font-size: .85rem; color: #8a5a00; background: #fff4dc; padding: .5rem .8rem; border-radius: 8px; }}
.notice {{ font-weight: 600; }}
</style>
</head>
<body>
<div class="card">
<p class="sandbox">Sandbox checkout: no money moves. Pay and Decline drive the same code path as a real gateway's webhook.</p>
<h1>{package}</h1>
<dl>
<dt>Credits</dt><dd id="credits">{credits}</dd>
<dt>Price</dt><dd id="price">{price}</dd>
<dt>Reference</dt><dd><code>{reference}</code></dd>
<dt>Status</dt><dd id="status">{status}</dd>
</dl>
{notice}
{actions}
</div>
</body>
</html>
"#,
        package = escape(package_name),
        credits = payment.credits,
        price = price(payment.amount_minor, payment.price_currency.as_str()),
        status = escape(&status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_and_escaping() {
        assert_eq!(price(200_000, "NGN"), "2,000.00 NGN");
        assert_eq!(price(5, "USD"), "0.05 USD");
        assert_eq!(price(123_456_789, "USD"), "1,234,567.89 USD");
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn clicks_verify_and_forgeries_do_not() {
        let sandbox = SandboxGateway::new("http://localhost");
        let payment = PaymentView {
            reference: "cd_1".into(),
            tenant: "t".into(),
            user: "u".into(),
            currency: crate::engine::types::Currency::CREDITS,
            package: "p".into(),
            credits: 5,
            amount_minor: 100,
            price_currency: crate::engine::types::Currency::new("NGN").unwrap(),
            gateway: "sandbox".into(),
            purpose: crate::engine::types::PaymentPurpose::Checkout,
            created_ms: 0,
            status: PaymentStatus::Pending,
            checkout_url: None,
            fingerprint: None,
            last_lsn: 1,
        };
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
        let page = checkout_page(&payment, "Starter <b>", true, None);
        assert!(page.contains("Starter &lt;b&gt;") && page.contains(r#"value="pay""#));
    }
}
