//! `GET /v1/users/{user_id}/payments`: a user's checkouts and automatic top-ups, newest first,
//! and `GET /v1/pools/{pool_id}/payments` (admin): the packages bought for a credit pool, alike,
//! from the history, which keeps them after the engine has forgotten a settled payment
//! (`payments.retention`).
//!
//! Pages are cut by the LSN of the record that started each payment: `next_cursor` is
//! `pay_<lsn>` of the last payment of a page, and the next page lists the payments started before
//! it. That LSN never changes (a payment's status does), so pages are stable while payments start
//! and settle. Read your writes as for `/entries` (see [`super::entries`]).

use serde::Serialize;
use serde_json::value::RawValue;

use super::entries::{
    catch_up, history, history_error, page_cursor, page_limit, user_history, DEFAULT_LIMIT,
};
use crate::api::call::{ok, Answer, Call};
use crate::api::dto::{PrefixedId, ENTRY_PREFIX};
use crate::api::problem::Problem;
use crate::api::request::{query_pairs, unknown_parameter};
use crate::history::payments::{ListedPayment, STATUSES};
use crate::time::format_rfc3339_ms;

/// The prefix of a page cursor.
const CURSOR_PREFIX: &str = "pay_";

/// What the query asks for.
struct Query {
    status: Option<String>,
    before_lsn: Option<u64>,
    limit: u32,
}

#[derive(Serialize)]
struct Payment<'a> {
    reference: &'a str,
    package_id: &'a str,
    credits: i64,
    /// The wallet currency of the credits, as in `GET /v1/payments/{reference}`.
    currency: &'a str,
    amount_minor: i64,
    price_currency: &'a str,
    status: &'a str,
    gateway: &'a str,
    purpose: &'a str,
    metadata: Option<&'a RawValue>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    settled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_id: Option<PrefixedId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkout_url: Option<&'a str>,
}

#[derive(Serialize)]
struct Page<'a> {
    payments: Vec<Payment<'a>>,
    next_cursor: Option<PrefixedId>,
}

/// `GET /v1/users/{user_id}/payments`.
pub async fn list_payments(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let query = parse_query(call.query)?;
    let reader = user_history(call).await?;
    let tenant = call.tenant.id.to_string();
    let user = user.to_owned();
    let limit = query.limit;
    let listed = tokio::task::spawn_blocking(move || {
        reader.payments(
            &tenant,
            &user,
            query.status.as_deref(),
            query.before_lsn,
            limit,
        )
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| history_error(error.to_string()))?;
    page(&listed, limit)
}

/// `GET /v1/pools/{pool_id}/payments` (admin): the packages bought for the pool, newest first.
pub async fn list_pool_payments(call: &Call<'_>) -> Answer {
    let pool = call.param.to_string();
    let query = parse_query(call.query)?;
    let reader = history(call)?;
    // A pool of another tenant, or none: 404 as if absent.
    call.state.engine.pool(&call.tenant, &pool)?;
    catch_up(&reader, call.state.engine.wal().durable_lsn()).await;
    let tenant = call.tenant.id.to_string();
    let limit = query.limit;
    let listed = tokio::task::spawn_blocking(move || {
        reader.pool_payments(
            &tenant,
            &pool,
            query.status.as_deref(),
            query.before_lsn,
            limit,
        )
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| history_error(error.to_string()))?;
    page(&listed, limit)
}

/// A page of payments, with the cursor of the next one if this one is full.
fn page(listed: &[ListedPayment], limit: u32) -> Answer {
    let payments: Vec<Payment<'_>> = listed.iter().map(payment).collect();
    let next_cursor = (listed.len() == limit as usize)
        .then(|| {
            listed
                .last()
                .map(|last| PrefixedId(CURSOR_PREFIX, last.lsn_created))
        })
        .flatten();
    ok(&Page {
        payments,
        next_cursor,
    })
}

fn payment(listed: &ListedPayment) -> Payment<'_> {
    Payment {
        reference: &listed.reference,
        package_id: &listed.package_id,
        credits: listed.credits,
        currency: &listed.currency,
        amount_minor: listed.amount_minor,
        price_currency: &listed.price_currency,
        status: &listed.status,
        gateway: &listed.gateway,
        purpose: &listed.purpose,
        // Stored as the JSON text `initialize` was given, checked then to be an object.
        metadata: listed
            .metadata
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok()),
        created_at: format_rfc3339_ms(listed.created_ms),
        settled_at: listed.settled_ms.map(format_rfc3339_ms),
        entry_id: listed.entry_lsn.map(|lsn| PrefixedId(ENTRY_PREFIX, lsn)),
        failure_reason: listed.reason.as_deref(),
        checkout_url: listed.checkout_url.as_deref(),
    }
}

fn parse_query(query: Option<&str>) -> Result<Query, Problem> {
    let mut parsed = Query {
        status: None,
        before_lsn: None,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "limit" => {
                parsed.limit = page_limit(&value)?;
            }
            "cursor" => {
                parsed.before_lsn = Some(page_cursor(&value, CURSOR_PREFIX)?);
            }
            "status" => {
                if !STATUSES.contains(&value.as_str()) {
                    return Err(Problem::invalid(format!(
                        "status must be one of {}",
                        STATUSES.join(", ")
                    ))
                    .with("field", "status"));
                }
                parsed.status = Some(value);
            }
            _ => return Err(unknown_parameter(&name)),
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn queries_are_parsed_or_refused_naming_the_field() {
        let query = parse_query(Some("limit=2&cursor=pay_17&status=failed")).unwrap();
        assert_eq!(
            (query.limit, query.before_lsn, query.status.as_deref()),
            (2, Some(17), Some("failed"))
        );
        let default = parse_query(None).unwrap();
        assert_eq!(
            (default.limit, default.before_lsn, default.status),
            (DEFAULT_LIMIT, None, None)
        );
        for (bad, field) in [
            ("limit=0", Some("limit")),
            ("limit=1001", Some("limit")),
            ("cursor=ent_5", Some("cursor")),
            ("cursor=pay_0", Some("cursor")),
            ("cursor=pay_x", Some("cursor")),
            ("status=refunded", Some("status")),
            ("colour=blue", None),
        ] {
            let problem = parse_query(Some(bad)).err().unwrap();
            assert_eq!(problem.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
            let named = problem.extensions.get("field");
            assert_eq!(named.and_then(|v| v.as_str()), field, "{bad}");
        }
    }
}
