//! The sandbox checkout page (`/sandbox/checkout/{reference}`): what is bought, its status, and,
//! while the payment is pending and the sandbox is the gateway, the Pay and Decline buttons whose
//! form the API turns into the sandbox gateway's signed webhook. The HTML is `sandbox.html` (the
//! page) and `sandbox_form.html` (the buttons).

use super::{escape, fill};
use crate::engine::payments::{PaymentStatus, PaymentView};

/// The page, with `{{reference}}`, `{{package}}`, `{{credits}}`, `{{for}}` (the credit pool a
/// pool's payment credits), `{{price}}`, `{{status}}`, `{{notice}}` and `{{actions}}`.
const PAGE: &str = include_str!("sandbox.html");
/// The Pay and Decline form, with `{{reference}}` and `{{pay_price}}`.
const FORM: &str = include_str!("sandbox_form.html");

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
    let price = price(payment.amount_minor, payment.price_currency.as_str());
    let status = match payment.status {
        PaymentStatus::Pending => "Waiting for payment".to_owned(),
        PaymentStatus::Succeeded { .. } => format!("Paid — {} credits added", payment.credits),
        PaymentStatus::Failed { decline } => {
            format!("Not paid ({})", decline.as_str().replace('_', " "))
        }
    };
    let actions = if buttons && payment.status == PaymentStatus::Pending {
        // The file's final newline is not part of the form: the page puts one after it.
        let form = FORM.strip_suffix('\n').unwrap_or(FORM);
        fill(form, &[("reference", &reference), ("pay_price", &price)])
    } else {
        String::new()
    };
    let notice = notice
        .map(|text| format!(r#"<p class="notice" id="notice">{}</p>"#, escape(text)))
        .unwrap_or_default();
    // A pool's payment says which pool; a user's page is as before.
    let target = payment
        .pool
        .as_deref()
        .map(|pool| {
            format!(
                r#"<dt>For the credit pool</dt><dd id="pool"><code>{}</code></dd>"#,
                escape(pool)
            )
        })
        .unwrap_or_default();
    fill(
        PAGE,
        &[
            ("reference", &reference),
            ("package", &escape(package_name)),
            ("credits", &payment.credits.to_string()),
            ("for", &target),
            ("price", &price),
            ("status", &escape(&status)),
            ("notice", &notice),
            ("actions", &actions),
        ],
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pending sandbox checkout of 5 credits for 1.00 NGN (for the sandbox gateway's tests too).
    pub(crate) fn pending_checkout() -> PaymentView {
        PaymentView {
            reference: "cd_1".into(),
            tenant: "t".into(),
            user: "u".into(),
            pool: None,
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
            metadata: None,
            last_lsn: 1,
        }
    }

    #[test]
    fn prices() {
        assert_eq!(price(200_000, "NGN"), "2,000.00 NGN");
        assert_eq!(price(5, "USD"), "0.05 USD");
        assert_eq!(price(123_456_789, "USD"), "1,234,567.89 USD");
    }

    #[test]
    fn the_page_escapes_what_it_shows_and_fills_every_placeholder() {
        let payment = pending_checkout();
        let page = checkout_page(&payment, "Starter <b>", true, Some("{{status}}"));
        assert!(page.contains("Starter &lt;b&gt;") && page.contains(r#"value="pay""#));
        assert!(page.contains(r#"<p class="notice" id="notice">{{status}}</p>"#));
        assert_eq!(page.matches("{{").count(), 1, "only the notice's own text");
    }
}
