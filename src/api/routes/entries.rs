//! `GET /v1/users/{user_id}/entries`: a user's ledger, newest first, from the history.
//!
//! Pages are cut by LSN: `next_cursor` is the `entry_id` of the last entry of a page, and the next
//! page lists the entries before it. LSNs never change, so a page is stable while writes go on:
//! new entries land before the first page, never inside a later one. A cursor must be one of the
//! user's entries (422 otherwise: another user's would make the walk look at every newer entry
//! of this one); one that retention has removed since gives an empty page.
//!
//! Read your writes: the handler first waits (up to [`CATCH_UP`]) for the history to apply every
//! record that was durable when the request came, so an entry whose write was answered is listed.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::api::call::{ok, Answer, Call};
use crate::api::dto::{PrefixedId, ENTRY_PREFIX};
use crate::api::problem::Problem;
use crate::api::request::{query_pairs, unknown_parameter};
use crate::engine::types::Currency;
use crate::history::reader::{Filter, Listed, Reader};
use crate::history::StoreError;
use crate::time::{format_rfc3339_ms, parse_rfc3339_ms};

/// Entries per page by default, and at most.
/// Items in a page of a history listing when the query gives no `limit`.
pub(crate) const DEFAULT_LIMIT: u32 = 50;
/// The most items a page of a history listing holds.
pub(crate) const MAX_LIMIT: u32 = 1000;
/// How long a request waits for the history to catch up with the log.
const CATCH_UP: Duration = Duration::from_secs(2);
/// The kinds of entry.
const KINDS: &[&str] = &[
    "grant",
    "topup",
    "refund",
    "adjustment",
    "debit",
    "revoke",
    "chargeback",
    "capture",
    "release",
    "expiry",
];

/// What the query asks for.
struct Query {
    filter: Filter,
    before_lsn: Option<u64>,
    limit: u32,
}

#[derive(Serialize)]
struct Entry<'a> {
    entry_id: PrefixedId,
    kind: &'a str,
    amount: i64,
    currency: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    balance_after: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantity: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    /// The credit pool that paid part of a spend (`amount` is the wallet's part), and its part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from_pool: Option<i64>,
    actor: &'a str,
    created_at: String,
}

#[derive(Serialize)]
struct Page<'a> {
    entries: Vec<Entry<'a>>,
    next_cursor: Option<PrefixedId>,
}

/// `GET /v1/users/{user_id}/entries`.
pub async fn list_entries(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let query = parse_query(call.query)?;
    let reader = user_history(call).await?;
    let tenant = call.tenant.id.to_string();
    let user = user.to_owned();
    let limit = query.limit;
    let listed = tokio::task::spawn_blocking(move || {
        reader.entries(&tenant, &user, &query.filter, query.before_lsn, limit)
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| match error {
        StoreError::Cursor => Problem::invalid(error.to_string()).with("field", "cursor"),
        error => history_error(error.to_string()),
    })?;
    let entries: Vec<Entry<'_>> = listed.iter().map(entry).collect();
    let next_cursor = (listed.len() == limit as usize)
        .then(|| listed.last().map(|last| PrefixedId(ENTRY_PREFIX, last.lsn)))
        .flatten();
    ok(&Page {
        entries,
        next_cursor,
    })
}

/// The history's reader; 503 when the history is off.
pub(crate) fn history(call: &Call<'_>) -> Result<std::sync::Arc<Reader>, Problem> {
    call.state.history.clone().ok_or_else(history_disabled)
}

/// The answer when the server runs without a history.
pub(crate) fn history_disabled() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history-disabled",
        "History disabled",
        "the ledger history is off on this server (history.enabled = false)",
    )
}

/// Waits until the history has applied everything up to `durable_lsn`, or [`CATCH_UP`] passed;
/// asks the feeder for a step at once if it has not.
pub(crate) async fn catch_up(reader: &Reader, durable_lsn: u64) {
    if reader.next_lsn() > durable_lsn {
        return;
    }
    reader.ask_for_step();
    let deadline = Instant::now() + CATCH_UP;
    while reader.next_lsn() <= durable_lsn && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn entry(listed: &Listed) -> Entry<'_> {
    Entry {
        entry_id: PrefixedId(ENTRY_PREFIX, listed.lsn),
        kind: &listed.kind,
        amount: listed.amount,
        currency: &listed.currency,
        balance_after: listed.balance_after,
        action: listed.action.as_deref(),
        quantity: listed.quantity,
        description: listed.description.as_deref(),
        reference: listed.reference.as_deref(),
        // Stored as the JSON text the write was given, already checked to be an object.
        metadata: listed
            .metadata
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok()),
        pool_id: listed.pool.as_ref().map(|(pool, _)| pool.as_str()),
        from_pool: listed.pool.as_ref().map(|&(_, paid)| paid),
        actor: &listed.actor,
        created_at: format_rfc3339_ms(listed.created_ms),
    }
}

/// A `from`–`to` filter must not start after it ends.
pub(crate) fn in_order(from_ms: Option<i64>, to_ms: Option<i64>) -> Result<(), Problem> {
    match (from_ms, to_ms) {
        (Some(from), Some(to)) if from > to => {
            Err(Problem::invalid("from is after to").with("field", "from"))
        }
        _ => Ok(()),
    }
}

/// A user's history, once the history has caught up with what was durable when the request
/// came: 503 when the history is off, 404 for a user of another tenant (as if absent).
pub(crate) async fn user_history(call: &Call<'_>) -> Result<std::sync::Arc<Reader>, Problem> {
    let reader = history(call)?;
    call.tenant.user(&call.param)?;
    catch_up(&reader, call.state.engine.wal().durable_lsn()).await;
    Ok(reader)
}

/// A page's `limit`: 1 to [`MAX_LIMIT`].
pub(crate) fn page_limit(value: &str) -> Result<u32, Problem> {
    value
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| {
            Problem::invalid(format!("limit must be between 1 and {MAX_LIMIT}"))
                .with("field", "limit")
        })
}

/// A page's `cursor` as this server gives them: `prefix` and a number above 0 that fits the
/// database's signed 64 bits.
pub(crate) fn page_cursor(value: &str, prefix: &str) -> Result<u64, Problem> {
    value
        .strip_prefix(prefix)
        .and_then(|digits| digits.parse::<u64>().ok())
        .filter(|&number| number > 0 && i64::try_from(number).is_ok())
        .ok_or_else(|| {
            Problem::invalid("cursor is not one this server gave").with("field", "cursor")
        })
}

fn parse_query(query: Option<&str>) -> Result<Query, Problem> {
    let mut parsed = Query {
        filter: Filter::default(),
        before_lsn: None,
        limit: DEFAULT_LIMIT,
    };
    for (name, value) in query_pairs(query) {
        match name.as_str() {
            "limit" => {
                parsed.limit = page_limit(&value)?;
            }
            "cursor" => {
                parsed.before_lsn = Some(page_cursor(&value, ENTRY_PREFIX)?);
            }
            "kind" => {
                if !KINDS.contains(&value.as_str()) {
                    return Err(Problem::invalid(format!(
                        "kind must be one of {}",
                        KINDS.join(", ")
                    ))
                    .with("field", "kind"));
                }
                parsed.filter.kind = Some(value);
            }
            "action" => parsed.filter.action = Some(value),
            "currency" => parsed.filter.currency = Some(Currency::new(&value)?.as_str().to_owned()),
            "from" => parsed.filter.from_ms = Some(time(&value, "from")?),
            "to" => parsed.filter.to_ms = Some(time(&value, "to")?),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    in_order(parsed.filter.from_ms, parsed.filter.to_ms)?;
    Ok(parsed)
}

/// `value` as ms since the epoch, or a 422 naming `field`.
pub(crate) fn time(value: &str, field: &'static str) -> Result<i64, Problem> {
    parse_rfc3339_ms(value).ok_or_else(|| {
        Problem::invalid(format!("{field} must be an RFC 3339 timestamp")).with("field", field)
    })
}

/// A history that could not be read: 503, the cause logged.
pub(crate) fn history_error(detail: String) -> Problem {
    tracing::error!(%detail, "history read failed");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history-unavailable",
        "History unavailable",
        "the ledger history could not be read; try again",
    )
}
