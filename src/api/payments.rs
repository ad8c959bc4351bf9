//! Handlers of the payment routes: `initialize`, payment status, gateway webhooks (open: they
//! carry their own signatures), the sandbox checkout page, and automatic top-up rules.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Deserialize;

use super::handlers::Call;
use super::problem::Problem;
use super::{json_response, ApiState};
use crate::engine::payments::{
    AutoTopupRequest, PaymentStatus, PaymentView, RuleView, Settlement, Verdict,
};
use crate::engine::types::{check_email, Currency, Decline, EngineError, EMAIL_RULE};
use crate::payments::gateway::WebhookError;
use crate::payments::{InitializeRequest, PaymentsError, WebhookOutcome};
use crate::time::format_rfc3339_ms;

type Answer = Result<Response<Full<Bytes>>, Problem>;

impl From<PaymentsError> for Problem {
    fn from(error: PaymentsError) -> Problem {
        match error {
            PaymentsError::Engine(error) => error.into(),
            PaymentsError::Gateway(error) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "gateway-error",
                "Payment gateway error",
                error.to_string(),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
            PaymentsError::InFlight => EngineError::IdempotencyKeyInFlight.into(),
            PaymentsError::KeyReused => EngineError::IdempotencyKeyReused.into(),
            PaymentsError::Invalid(field) => {
                Problem::invalid(format!("{field} is not valid")).with("field", field)
            }
            PaymentsError::NotConfigured(gateway) => Problem::new(
                StatusCode::NOT_FOUND,
                "gateway-not-configured",
                "Gateway not configured",
                format!("payments.gateway is not {gateway}"),
            ),
            PaymentsError::Webhook(WebhookError::BadSignature(detail)) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "bad-signature",
                "Bad signature",
                detail,
            ),
            PaymentsError::Webhook(WebhookError::Malformed(detail)) => Problem::malformed(detail),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitializeBody<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    package_id: Cow<'a, str>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    callback_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    #[allow(dead_code)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

/// `POST /v1/payments/initialize`.
pub async fn initialize(call: &Call<'_>, bytes: &[u8]) -> Answer {
    let body: InitializeBody = super::parse_json(bytes)?;
    // Without an `email`, the one on the user's profile (gateways need one to send a receipt).
    let email = match body.email {
        Some(email) => email.into_owned(),
        None => profile_email(call, &body.user_id)?,
    };
    let request = InitializeRequest {
        user: &body.user_id,
        package: &body.package_id,
        email: &email,
        callback_url: body.callback_url.as_deref(),
        idempotency_key: call.idempotency_key,
        actor: call.actor,
    };
    let initialized = call
        .state
        .payments
        .initialize(&call.tenant, &request)
        .await?;
    let mut response = json_response(
        StatusCode::OK,
        &serde_json::json!({ "checkout_url": initialized.checkout_url, "reference": initialized.reference }),
    );
    if initialized.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The e-mail on the user's profile, for an `initialize` that sent none. `PUT /v1/users` checks
/// addresses with the same [`check_email`] as `initialize`, but a profile stored before it did
/// may hold one no gateway takes; the answer then says the address comes from the profile, so
/// the caller is not blamed for a field the request did not send.
fn profile_email(call: &Call<'_>, user: &str) -> Result<String, Problem> {
    let email = call.tenant.user(user)?.email.ok_or_else(|| {
        Problem::invalid("required: the user has no e-mail on file").with("field", "email")
    })?;
    check_email(&email).map_err(|_| {
        Problem::invalid(format!(
            "the request sent no email, and the one on the user's profile is not usable (it \
             {EMAIL_RULE}); send email, or correct the profile with PUT /v1/users/{{user_id}}"
        ))
        .with("field", "email")
    })?;
    Ok(email)
}

fn payment_json(payment: &PaymentView) -> serde_json::Value {
    let (status, entry_id, reason) = match payment.status {
        PaymentStatus::Pending => ("pending", None, None),
        PaymentStatus::Succeeded { entry_id } => (
            "succeeded",
            Some(format!("{}{entry_id}", super::dto::ENTRY_PREFIX)),
            None,
        ),
        PaymentStatus::Failed { decline } => ("failed", None, Some(decline.as_str())),
    };
    serde_json::json!({
        "reference": payment.reference,
        "user_id": payment.user,
        "package_id": payment.package,
        "credits": payment.credits,
        "currency": payment.currency.as_str(),
        "amount_minor": payment.amount_minor,
        "price_currency": payment.price_currency.as_str(),
        "gateway": payment.gateway,
        "purpose": match payment.purpose {
            crate::engine::types::PaymentPurpose::Checkout => "checkout",
            crate::engine::types::PaymentPurpose::AutoTopup => "auto_topup",
        },
        "status": status,
        "entry_id": entry_id,
        "failure_reason": reason,
        "checkout_url": payment.checkout_url,
        "created_at": format_rfc3339_ms(payment.created_ms),
    })
}

/// `GET /v1/payments/{reference}`: only the tenant's own payments are visible.
pub async fn get_payment(call: &Call<'_>, reference: &str) -> Answer {
    let payment = tenant_payment(call, reference)?;
    call.state
        .engine
        .durable(payment.last_lsn)
        .await
        .map_err(EngineError::from)?;
    Ok(json_response(StatusCode::OK, &payment_json(&payment)))
}

/// A payment of the caller's tenant, or 404.
fn tenant_payment(call: &Call<'_>, reference: &str) -> Result<PaymentView, Problem> {
    call.state
        .payments
        .engine()
        .payment(reference)
        .filter(|payment| payment.tenant == call.tenant.id())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "payment-not-found",
                "Payment not found",
                "no such payment in this tenant",
            )
        })
}

/// `POST /v1/payments/{reference}/abandon` (admin): gives up on a pending payment that no gateway
/// will settle, such as an automatic top-up made through a gateway no longer configured. It is
/// recorded failed as `abandoned`, which frees the wallet's rule; a paid report that still comes
/// later credits it, so this can never lose money. Idempotent by nature: a payment abandoned
/// already answers 200 again; one settled otherwise is 409.
pub async fn abandon_payment(call: &Call<'_>, reference: &str) -> Answer {
    let engine = call.state.payments.engine();
    let payment = tenant_payment(call, reference)?;
    if payment.status == PaymentStatus::Pending {
        let reason = format!("given up through the API by {}", call.actor);
        let verdict = Verdict::Declined {
            decline: Decline::Abandoned,
            reason: &reason,
        };
        let settlement = engine.settle_payment(reference, &payment.gateway, &verdict, &reason)?;
        let lsn = match settlement {
            Settlement::Credited { lsn, .. }
            | Settlement::AlreadySettled { lsn, .. }
            | Settlement::Failed { lsn, .. }
            | Settlement::Unmatched { lsn } => lsn,
        };
        engine.durable(lsn).await.map_err(EngineError::from)?;
    }
    let payment = tenant_payment(call, reference)?;
    engine
        .durable(payment.last_lsn)
        .await
        .map_err(EngineError::from)?;
    match payment.status {
        PaymentStatus::Failed {
            decline: Decline::Abandoned,
        } => Ok(json_response(StatusCode::OK, &payment_json(&payment))),
        _ => Err(Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "Conflict",
            "the payment was settled otherwise",
        )
        .with("payment", payment_json(&payment))),
    }
}

/// `POST /v1/webhooks/{gateway}`: open; the gateway's signature over the raw body is the check.
pub async fn webhook(state: &ApiState, gateway: &str, headers: &HeaderMap, bytes: &[u8]) -> Answer {
    let outcome = state.payments.webhook(gateway, headers, bytes).await?;
    let label = match outcome {
        WebhookOutcome::Credited => "credited",
        WebhookOutcome::Duplicate => "duplicate",
        WebhookOutcome::Failed => "failed",
        WebhookOutcome::Unmatched => "unmatched",
        WebhookOutcome::Ignored => "ignored",
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "received": true, "outcome": label }),
    ))
}

fn html(status: StatusCode, page: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(page)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        ),
    );
    response
}

fn page_not_found() -> Response<Full<Bytes>> {
    html(
        StatusCode::NOT_FOUND,
        "<!doctype html><title>Not found</title><p>No such checkout.</p>\n".into(),
    )
}

/// `GET /sandbox/checkout/{reference}`: the checkout page (and, for any gateway, a status page).
pub fn sandbox_page(state: &ApiState, reference: &str) -> Answer {
    Ok(state
        .payments
        .checkout_page(reference, None)
        .map_or_else(page_not_found, |page| html(StatusCode::OK, page)))
}

/// `POST /sandbox/checkout/{reference}` with `action=pay` or `action=decline`: settles through the
/// webhook path, then sends the browser back to the page (303), which shows the result.
pub async fn sandbox_action(state: &ApiState, reference: &str, bytes: &[u8]) -> Answer {
    let form = String::from_utf8_lossy(bytes);
    let action = super::query_pairs(Some(&form))
        .find(|(name, _)| name == "action")
        .map(|(_, value)| value);
    let pay = match action.as_deref() {
        Some("pay") => true,
        Some("decline") => false,
        _ => return Err(Problem::invalid("action must be pay or decline")),
    };
    if state.payments.engine().payment(reference).is_none() {
        return Ok(page_not_found());
    }
    state.payments.sandbox_click(reference, pay).await?;
    let mut response = html(StatusCode::SEE_OTHER, String::new());
    let location = HeaderValue::from_str(&format!("/sandbox/checkout/{reference}"))
        .map_err(|_| Problem::malformed("bad reference"))?;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// The API's view of a rule.
pub fn rule_json(rule: &RuleView) -> serde_json::Value {
    serde_json::json!({
        "enabled": rule.enabled,
        "threshold": rule.threshold,
        "package_id": rule.package,
        "payment_method": rule.payment_method,
        "max_per_day": rule.max_per_day,
        "currency": rule.currency.as_str(),
        "disabled_reason": rule.disabled_reason,
        "attempts_today": rule.attempts_today,
        "consecutive_failures": rule.consecutive_failures,
        "pending_reference": rule.pending,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoTopupBody<'a> {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    threshold: Option<i64>,
    #[serde(borrow, default)]
    package_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payment_method: Option<Cow<'a, str>>,
    #[serde(default)]
    max_per_day: Option<u32>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
}

fn currency_query(query: Option<&str>) -> Result<Option<Currency>, Problem> {
    let mut currency = None;
    for (name, value) in super::query_pairs(query) {
        match name.as_str() {
            "currency" => currency = Some(Currency::new(&value)?),
            _ => {
                return Err(Problem::invalid(format!(
                    "unknown query parameter {name:?}"
                )))
            }
        }
    }
    Ok(currency)
}

/// `PUT /v1/users/{user_id}/auto-topup` (admin): sets and enables the rule; `"enabled": false`
/// switches an existing rule off.
pub async fn put_auto_topup(call: &Call<'_>, user: &str, bytes: &[u8]) -> Answer {
    let body: AutoTopupBody = super::parse_json(bytes)?;
    let currency = body.currency.as_deref().map(Currency::new).transpose()?;
    let engine = &call.state.engine;
    let lsn = if body.enabled == Some(false) {
        let currency = currency.unwrap_or(call.tenant.default_currency());
        engine.disable_auto_topup(
            &call.tenant,
            user,
            currency,
            "switched off through the API",
            &call.context(None),
        )?
    } else {
        let (Some(threshold), Some(package)) = (body.threshold, body.package_id.as_deref()) else {
            return Err(Problem::invalid(
                "threshold and package_id are required unless enabled is false",
            ));
        };
        let request = AutoTopupRequest {
            user,
            currency,
            threshold,
            package,
            payment_method: body.payment_method.as_deref(),
            max_per_day: body.max_per_day.unwrap_or(3),
        };
        engine.set_auto_topup(&call.tenant, &request, &call.context(None))?
    };
    engine.durable(lsn).await.map_err(EngineError::from)?;
    let rule = engine
        .auto_topup(&call.tenant, user, currency)?
        .ok_or(EngineError::Conflict("rule vanished"))?;
    Ok(json_response(StatusCode::OK, &rule_json(&rule)))
}

/// `DELETE /v1/users/{user_id}/auto-topup[?currency=]` (admin).
pub async fn delete_auto_topup(call: &Call<'_>, user: &str, query: Option<&str>) -> Answer {
    let currency = currency_query(query)?;
    let lsn =
        call.state
            .engine
            .delete_auto_topup(&call.tenant, user, currency, &call.context(None))?;
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "deleted": true }),
    ))
}

/// `GET /v1/users/{user_id}/auto-topup[?currency=]`.
pub fn get_auto_topup(call: &Call<'_>, user: &str, query: Option<&str>) -> Answer {
    let currency = currency_query(query)?;
    let rule = call.state.engine.auto_topup(&call.tenant, user, currency)?;
    let rule = rule.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "auto-topup-not-found",
            "No automatic top-up",
            "the wallet has no automatic top-up rule",
        )
    })?;
    Ok(json_response(StatusCode::OK, &rule_json(&rule)))
}
