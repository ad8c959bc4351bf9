//! Portal sessions: a signed link to a page creditd serves for one user (balance, gauge, status,
//! auto top-up rule, recent activity, packages to buy), the top-up redirect an app performs on a
//! 402.
//!
//! - `POST /v1/users/{user_id}/portal-sessions` (service key) signs a portal token for the user
//!   (its own purpose tag, so neither a stream token nor a portal token passes for the other) and
//!   answers `{"url","expires_at"}`.
//! - `GET /portal/{token}`: the page (embedded, no framework, no CDN), or an error page: 403 for a
//!   changed token, 410 for an expired one.
//! - `GET /portal/{token}/data`: what the page shows, and a stream token for its live balance.
//! - `POST /portal/{token}/checkout` `{"package_id"}`: a checkout for that user through the same
//!   code as `POST /v1/payments/initialize`, returning to the session's `return_url`.
//!
//! The token is the only credential of these routes: it grants that one user's page, checkout and
//! stream, and nothing else.

use http::{header, HeaderValue, StatusCode};
use serde::Deserialize;

use crate::api::call::{ok, Answer, Call, Open};
use crate::api::problem::Problem;
use crate::api::request::parse_json;
use crate::api::response::text_response;
use crate::api::routes::users::WalletReader;
use crate::api::ApiState;
use crate::engine::Tenant;
use crate::payments::{InitializeRequest, PaymentTarget};
use crate::stream::token::{Claims, Purpose, TokenError};

/// The page, embedded.
const PAGE: &str = include_str!("../../web/portal.html");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    return_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    package_id: String,
}

/// `POST /v1/users/{user_id}/portal-sessions` (service).
pub async fn create_session(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: SessionBody = if call.body.is_empty() {
        SessionBody { return_url: None }
    } else {
        parse_json(&call.body)?
    };
    call.tenant.user(user)?;
    let return_url = body.return_url.unwrap_or_default();
    if !return_url.is_empty() {
        // The tenant's own origins when it set some; else the server's default.
        let tenant_origins = call.state.engine.tenant_portal_origins(&call.tenant);
        let (origins, setting) = if tenant_origins.is_empty() {
            (
                &call.state.streams_config.portal_return_origins,
                "streams.portal_return_origins",
            )
        } else {
            (&tenant_origins, "the tenant's portal_return_origins")
        };
        check_return_url(&return_url, origins, setting)?;
    }
    let state = call.state;
    let expires_at = state.engine.now_ms() / 1000
        + i64::try_from(state.streams_config.portal_ttl_seconds).unwrap_or(86_400);
    let claims = Claims {
        tenant: call.tenant.id().to_owned(),
        user: user.to_owned(),
        expires_at,
        extra: return_url,
    };
    let token = state.signer.sign(Purpose::Portal, &claims);
    ok(&serde_json::json!({
        "url": format!("{}/portal/{token}", state.public_url),
        "expires_at": crate::time::format_rfc3339_ms(expires_at * 1000),
    }))
}

/// A `return_url` must be an absolute http(s) URL on an allowed origin (of `origins`, which
/// `setting` names): no open redirects.
fn check_return_url(url: &str, origins: &[String], setting: &str) -> Result<(), Problem> {
    let refused = |detail: String| {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-return-url",
            "Invalid return URL",
            detail,
        )
        .with("field", "return_url")
    };
    if !crate::engine::is_http_url(url) {
        return Err(refused(
            "return_url must be an absolute http or https URL".into(),
        ));
    }
    let origin = origin_of(url).unwrap_or_default();
    if !origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(&origin))
    {
        return Err(refused(format!(
            "return_url's origin {origin} is not one {setting} allows"
        )));
    }
    Ok(())
}

/// `scheme://host[:port]` of an absolute URL.
fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?.as_str();
    // No user information in an origin.
    let host = authority.rsplit('@').next()?;
    Some(format!("{scheme}://{host}").to_ascii_lowercase())
}

/// The session a portal token names, or why not.
fn session(state: &ApiState, token: &str) -> Result<(Claims, std::sync::Arc<Tenant>), TokenError> {
    let claims = state
        .signer
        .verify(Purpose::Portal, token, state.engine.now_ms() / 1000)?;
    let tenant = state
        .engine
        .tenant(&claims.tenant)
        .ok_or(TokenError::Invalid)?;
    Ok((claims, tenant))
}

fn session_problem(error: TokenError) -> Problem {
    match error {
        TokenError::Invalid => Problem::forbidden("this portal link is not valid"),
        TokenError::Expired => Problem::new(
            StatusCode::GONE,
            "portal-link-expired",
            "Gone",
            "this portal link has expired; ask the app for a new one",
        ),
    }
}

/// `GET /portal/{token}`: the page, or a page that says why not.
pub async fn page(open: &Open<'_>) -> Answer {
    let (status, body) = match session(open.state, &open.param) {
        Ok(_) => (StatusCode::OK, PAGE.to_owned()),
        Err(TokenError::Invalid) => (
            StatusCode::FORBIDDEN,
            error_page("This link is not valid", "It may have been changed or cut short. Go back to the app and open the top-up page again."),
        ),
        Err(TokenError::Expired) => (
            StatusCode::GONE,
            error_page("This link has expired", "Top-up links are valid for a few minutes. Go back to the app and open the top-up page again."),
        ),
    };
    let mut response = text_response(status, "text/html; charset=utf-8", body);
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'",
        ),
    );
    Ok(response)
}

fn error_page(title: &str, detail: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width,initial-scale=1\"><title>{title}</title><style>body{{font:16px/1.5 \
         system-ui,sans-serif;background:#f4f5f7;color:#1b1f24;display:grid;place-items:center;\
         min-height:100vh;margin:0}}main{{background:#fff;border-radius:12px;padding:2rem;max-width:28rem;\
         box-shadow:0 1px 3px #0002}}h1{{font-size:1.4rem;margin:0 0 .5rem}}</style></head><body>\
         <main role=\"alert\"><h1>{title}</h1><p>{detail}</p></main></body></html>",
        title = crate::web::escape(title),
        detail = crate::web::escape(detail),
    )
}

/// `GET /portal/{token}/data`: the wallet view, the active packages, recent entries, the last
/// top-up, and a stream token for the page's live balance.
pub async fn data(open: &Open<'_>) -> Answer {
    let state = open.state;
    let (claims, tenant) = session(state, &open.param).map_err(session_problem)?;
    let user = tenant.user(&claims.user)?;
    let currency = tenant.default_currency();
    let reader = WalletReader {
        engine: &state.engine,
        payments: &state.payments,
        low_balance: state.limits.low_balance,
    };
    let wallet = reader.json(&tenant, &user, currency);
    let packages: Vec<_> = tenant
        .packages()
        .into_iter()
        .filter(|package| package.active && package.currency == currency)
        .map(|package| {
            serde_json::json!({
                "package_id": package.package_id,
                "name": package.name,
                "credits": package.credits,
                "price_minor": package.price_minor,
                "price_currency": package.price_currency.as_str(),
            })
        })
        .collect();
    let entries = recent_entries(state, tenant.id(), &claims.user).await;
    let (stream_token, _) = super::stream::issue_stream_token(state, tenant.id(), &claims.user);
    ok(&serde_json::json!({
        "user_id": claims.user,
        "name": user.name,
        "tenant": tenant.view().name,
        "wallet": wallet,
        "packages": packages,
        "entries": entries,
        "stream_token": stream_token,
        "return_url": (!claims.extra.is_empty()).then_some(&claims.extra),
        "expires_at": crate::time::format_rfc3339_ms(claims.expires_at * 1000),
    }))
}

/// The user's last ten entries, newest first; none without a history.
async fn recent_entries(state: &ApiState, tenant: &str, user: &str) -> Vec<serde_json::Value> {
    let Some(history) = state.history.clone() else {
        return Vec::new();
    };
    // A user back from paying sees the top-up that was durable when the page was asked for.
    super::entries::catch_up(&history, state.engine.wal().durable_lsn()).await;
    let (tenant, user) = (tenant.to_owned(), user.to_owned());
    let listed = tokio::task::spawn_blocking(move || {
        history.entries(
            &tenant,
            &user,
            &crate::history::reader::Filter::default(),
            None,
            10,
        )
    })
    .await;
    let Ok(Ok(listed)) = listed else {
        return Vec::new();
    };
    listed
        .into_iter()
        .map(|entry| {
            serde_json::json!({
                "kind": entry.kind,
                "amount": entry.amount,
                "balance_after": entry.balance_after,
                "action": entry.action,
                "description": entry.description,
                "created_at": crate::time::format_rfc3339_ms(entry.created_ms),
            })
        })
        .collect()
}

/// `POST /portal/{token}/checkout` `{"package_id"}`: `{"checkout_url","reference"}`.
pub async fn checkout(open: &Open<'_>) -> Answer {
    let state = open.state;
    let (claims, tenant) = session(state, &open.param).map_err(session_problem)?;
    let body: CheckoutBody = parse_json(&open.body)?;
    let user = tenant.user(&claims.user)?;
    let email = user.email.ok_or_else(|| {
        Problem::invalid("the user has no e-mail on file, which the gateway needs")
            .with("field", "email")
    })?;
    let request = InitializeRequest {
        target: PaymentTarget::User(&claims.user),
        package: &body.package_id,
        email: &email,
        callback_url: (!claims.extra.is_empty()).then_some(claims.extra.as_str()),
        metadata: Some(r#"{"source":"portal"}"#),
        idempotency_key: None,
        actor: "portal",
    };
    let initialized = state.payments.initialize(&tenant, &request).await?;
    ok(&serde_json::json!({
        "checkout_url": initialized.checkout_url,
        "reference": initialized.reference,
    }))
}
