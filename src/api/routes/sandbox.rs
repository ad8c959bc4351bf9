//! The sandbox checkout page creditd serves itself (`/sandbox/checkout/{reference}`), where a
//! person pays or declines a sandbox payment; for any gateway it is also the payment's status
//! page. Open routes: the reference is the check. Paying drives the same code path as a webhook.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::api::call::{Answer, Open};
use crate::api::problem::Problem;
use crate::api::request::query_pairs;

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
pub async fn page(open: &Open<'_>) -> Answer {
    Ok(open
        .state
        .payments
        .checkout_page(&open.param, None)
        .map_or_else(page_not_found, |page| html(StatusCode::OK, page)))
}

/// `POST /sandbox/checkout/{reference}` with `action=pay` or `action=decline`: settles through the
/// webhook path, then sends the browser back to the page (303), which shows the result.
pub async fn action(open: &Open<'_>) -> Answer {
    let (state, reference) = (open.state, &*open.param);
    let form = String::from_utf8_lossy(&open.body);
    let action = query_pairs(Some(&form))
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
