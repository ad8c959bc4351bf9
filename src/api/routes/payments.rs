//! The payment routes: checkout (`initialize`), a payment's status and abandoning it, the
//! gateways' webhooks (open: they carry their own signatures), and automatic top-up rules.
//! The mapping of payment errors to problems is in [`crate::api::problem`].

use std::borrow::Cow;

use http::StatusCode;
use serde::Deserialize;

use crate::api::auth;
use crate::api::call::{wait_durable, written, Answer, Call, Open};
use crate::api::dto::{metadata, rule_json, ENTRY_PREFIX};
use crate::api::problem::Problem;
use crate::api::request::{parse_json, query_pairs, unknown_parameter};
use crate::api::response::json_response;
use crate::config::Role;
use crate::engine::payments::{AutoTopupRequest, PaymentStatus, PaymentView, Settlement, Verdict};
use crate::engine::types::Decline;
use crate::engine::types::{check_email, Currency, EngineError, EMAIL_RULE};
use crate::payments::{InitializeRequest, PaymentTarget, WebhookOutcome};
use crate::time::format_rfc3339_ms;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitializeBody<'a> {
    /// The user whose wallet the credits go to; or `pool_id`, not both.
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
    /// The credit pool the credits go to (admin keys); or `user_id`, not both.
    #[serde(borrow, default)]
    pool_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    package_id: Cow<'a, str>,
    #[serde(borrow, default)]
    email: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    callback_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a serde_json::value::RawValue>,
}

/// `POST /v1/payments/initialize`: a checkout for a user's wallet (`user_id`) or, with an admin
/// key, for a credit pool (`pool_id`, which has no profile: `email` is required).
pub async fn initialize(call: &Call<'_>) -> Answer {
    let body: InitializeBody = parse_json(&call.body)?;
    let target = match (body.user_id.as_deref(), body.pool_id.as_deref()) {
        (Some(user), None) => PaymentTarget::User(user),
        (None, Some(pool)) => {
            // A pool is the administrators' to manage; so is buying credits for it.
            auth::require(call.role, Role::Admin)?;
            PaymentTarget::Pool(pool)
        }
        (Some(_), Some(_)) => {
            return Err(
                Problem::invalid("send user_id or pool_id, not both").with("field", "pool_id")
            )
        }
        (None, None) => {
            return Err(Problem::invalid("required: user_id (or pool_id)").with("field", "user_id"))
        }
    };
    // Without an `email`, the one on the user's profile (gateways need one to send a receipt).
    let email = match (body.email, target) {
        (Some(email), _) => email.into_owned(),
        (None, PaymentTarget::User(user)) => profile_email(call, user)?,
        (None, PaymentTarget::Pool(_)) => {
            return Err(Problem::invalid(
                "required for a pool's payment: the payer's e-mail, for the gateway's receipt",
            )
            .with("field", "email"))
        }
    };
    let request = InitializeRequest {
        target,
        package: &body.package_id,
        email: &email,
        callback_url: body.callback_url.as_deref(),
        metadata: metadata(body.metadata),
        idempotency_key: call.idempotency_key,
        actor: call.actor,
    };
    let initialized = call
        .state
        .payments
        .initialize(&call.tenant, &request)
        .await?;
    written(
        StatusCode::OK,
        &serde_json::json!({ "checkout_url": initialized.checkout_url, "reference": initialized.reference }),
        initialized.replayed,
    )
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
        PaymentStatus::Succeeded { entry_id } => {
            ("succeeded", Some(format!("{ENTRY_PREFIX}{entry_id}")), None)
        }
        PaymentStatus::Failed { decline } => ("failed", None, Some(decline.as_str())),
    };
    let mut json = serde_json::json!({
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
        "metadata": payment_metadata(payment.metadata.as_deref()),
        "created_at": format_rfc3339_ms(payment.created_ms),
    });
    // A pool's payment names its pool instead of a user.
    if let Some(pool) = &payment.pool {
        json["user_id"] = serde_json::Value::Null;
        json["pool_id"] = serde_json::Value::from(pool.as_str());
    }
    json
}

/// A payment's metadata as the JSON object the engine checked it is, or `null`.
pub(crate) fn payment_metadata(text: Option<&str>) -> serde_json::Value {
    text.and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// `GET /v1/payments/{reference}`: only the tenant's own payments are visible.
pub async fn get_payment(call: &Call<'_>) -> Answer {
    let payment = tenant_payment(call, &call.param)?;
    call.durable(payment.last_lsn).await?;
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
pub async fn abandon_payment(call: &Call<'_>) -> Answer {
    let reference = &*call.param;
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
        wait_durable(engine, lsn).await?;
    }
    let payment = tenant_payment(call, reference)?;
    wait_durable(engine, payment.last_lsn).await?;
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
pub async fn webhook(open: &Open<'_>) -> Answer {
    let payments = &open.state.payments;
    let outcome = payments
        .webhook(&open.param, open.headers, &open.body)
        .await?;
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
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "currency" => currency = Some(Currency::new(&value)?),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    Ok(currency)
}

/// `PUT /v1/users/{user_id}/auto-topup` (admin): sets and enables the rule; `"enabled": false`
/// switches an existing rule off.
pub async fn put_auto_topup(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: AutoTopupBody = parse_json(&call.body)?;
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
    call.durable(lsn).await?;
    let rule = engine
        .auto_topup(
            &call.tenant,
            user,
            currency,
            call.state.payments.gateway_name(),
        )?
        .ok_or(EngineError::Conflict("rule vanished"))?;
    Ok(json_response(StatusCode::OK, &rule_json(&rule)))
}

/// `DELETE /v1/users/{user_id}/auto-topup[?currency=]` (admin).
pub async fn delete_auto_topup(call: &Call<'_>) -> Answer {
    let currency = currency_query(call.query)?;
    let lsn = call.state.engine.delete_auto_topup(
        &call.tenant,
        &call.param,
        currency,
        &call.context(None),
    )?;
    call.durable(lsn).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "deleted": true }),
    ))
}

/// `GET /v1/users/{user_id}/auto-topup[?currency=]`.
pub async fn get_auto_topup(call: &Call<'_>) -> Answer {
    let currency = currency_query(call.query)?;
    let rule = call.state.engine.auto_topup(
        &call.tenant,
        &call.param,
        currency,
        call.state.payments.gateway_name(),
    )?;
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
