//! `GET /v1/reports/usage` and `GET /v1/reports/revenue`: usage and revenue over a window of
//! whole UTC hours, from the history's rollups.
//!
//! Who may read what: revenue needs an admin key (the route table says so). Usage is a service
//! route, and the handler narrows it: an admin (or platform) key reads the whole tenant or one
//! user, a service key only one user (`user_id`, else 403). A `user_id` that is not a user of the
//! tenant the key acts in is 404 `user-not-found`, as everywhere else.
//!
//! Per credit pool (`pool_id`): what the pool paid for its members' spends, in the pool's
//! currency, by action, member (`group_by=user`), day or hour; with `user_id`, one member's
//! draws. A pool the tenant does not have is 404 `pool-not-found`.
//!
//! The window is `[from, to)`, both whole UTC hours (the rollups' buckets), `from` before `to`,
//! at most [`MAX_WINDOW_DAYS`] days; anything else is 422 `invalid-window`, whose detail names
//! the hour boundaries around a value that is not one. Without `to`, the window ends at the end
//! of the current hour; without `from`, it starts [`DEFAULT_WINDOW_DAYS`] days before `to`.
//!
//! Like the entries, a report first waits (up to two seconds) for the history to hold every
//! write that was durable when the request came.

use http::StatusCode;
use serde::Serialize;

use super::entries::{catch_up, history, history_error};
use crate::api::call::{ok, Answer, Call};
use crate::api::problem::Problem;
use crate::api::request::{query_pairs, unknown_parameter};
use crate::config::Role;
use crate::engine::types::Currency;
use crate::history::reader::Reader;
use crate::history::reports::{
    Key, RevenueGrouping, RevenueQuery, UsageGrouping, UsageQuery, Window, DAY_HOURS,
};
use crate::history::rollup::{pool_scope, HOUR_MS};
use crate::time::{format_rfc3339_ms, parse_rfc3339_ms};

/// The longest window.
pub const MAX_WINDOW_DAYS: i64 = 400;
/// The window's length when `from` is not given.
pub const DEFAULT_WINDOW_DAYS: i64 = 30;

#[derive(Serialize)]
struct UsageRowBody {
    key: Option<String>,
    count: i64,
    credits: i64,
    quantity: i64,
}

#[derive(Serialize)]
struct UsageBody {
    rows: Vec<UsageRowBody>,
    total_credits: i64,
    currency: String,
    from: String,
    to: String,
}

#[derive(Serialize)]
struct RevenueRowBody {
    key: Option<String>,
    count: i64,
    amount_minor: i64,
    currency: String,
    credits_sold: i64,
}

#[derive(Serialize)]
struct RevenueBody {
    rows: Vec<RevenueRowBody>,
    from: String,
    to: String,
}

/// What a query string gives, before it is checked against the key.
#[derive(Default)]
struct Params {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    user_id: Option<String>,
    currency: Option<String>,
    pool_id: Option<String>,
}

/// `GET /v1/reports/usage`.
pub async fn usage(call: &Call<'_>) -> Answer {
    let params = parse(
        call.query,
        &["from", "to", "group_by", "user_id", "currency", "pool_id"],
    )?;
    let window = window(&params, call.state.engine.now_ms())?;
    let group_by = match params.group_by.as_deref().unwrap_or("action") {
        "action" => UsageGrouping::Action,
        "user" => UsageGrouping::User,
        "day" => UsageGrouping::Day,
        "hour" => UsageGrouping::Hour,
        _ => return Err(unknown_grouping("action, user, day, hour")),
    };
    let mut currency = match &params.currency {
        Some(code) => Currency::new(code)?,
        None => call.tenant.default_currency(),
    };
    // Per pool: what the pool paid for its members' spends, in the pool's currency.
    let scope = match &params.pool_id {
        Some(pool_id) => {
            let pool = call.state.engine.pool(&call.tenant, pool_id)?;
            if params.currency.is_some() && currency != pool.currency {
                return Err(Problem::invalid(format!(
                    "the pool's currency is {}, not {currency}",
                    pool.currency
                ))
                .with("field", "currency"));
            }
            currency = pool.currency;
            Some(pool_scope(pool_id))
        }
        None => None,
    };
    if call.role < Role::Admin && params.user_id.is_none() {
        return Err(Problem::forbidden(
            "a service key reads the usage of one user: add user_id (the whole tenant needs an \
             admin key)",
        ));
    }
    if let Some(user) = &params.user_id {
        // A user of another tenant, or none: 404 as if absent.
        call.tenant.user(user)?;
    }
    let reader = reader(call).await?;
    let tenant = call.tenant.id().to_owned();
    let currency_code = currency.as_str().to_owned();
    let (user, code) = (
        params.user_id.clone(),
        scope.unwrap_or_else(|| currency_code.clone()),
    );
    let rows = tokio::task::spawn_blocking(move || {
        reader.usage(&UsageQuery {
            tenant: &tenant,
            currency: &code,
            window,
            group_by,
            user: user.as_deref(),
        })
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| history_error(error.to_string()))?;
    let mut total_credits: i64 = 0;
    for row in &rows {
        total_credits = total_credits
            .checked_add(row.totals.credits)
            .ok_or_else(|| history_error("the total overflows".into()))?;
    }
    ok(&UsageBody {
        rows: rows
            .into_iter()
            .map(|row| UsageRowBody {
                key: key_text(row.key),
                count: row.totals.count,
                credits: row.totals.credits,
                quantity: row.totals.quantity,
            })
            .collect(),
        total_credits,
        currency: currency_code,
        from: format_rfc3339_ms(window.from_hour * HOUR_MS),
        to: format_rfc3339_ms(window.to_hour * HOUR_MS),
    })
}

/// `GET /v1/reports/revenue`.
pub async fn revenue(call: &Call<'_>) -> Answer {
    let params = parse(call.query, &["from", "to", "group_by"])?;
    let window = window(&params, call.state.engine.now_ms())?;
    let group_by = match params.group_by.as_deref().unwrap_or("package") {
        "package" => RevenueGrouping::Package,
        "currency" => RevenueGrouping::Currency,
        "day" => RevenueGrouping::Day,
        _ => return Err(unknown_grouping("package, currency, day")),
    };
    let reader = reader(call).await?;
    let tenant = call.tenant.id().to_owned();
    let rows = tokio::task::spawn_blocking(move || {
        reader.revenue(&RevenueQuery {
            tenant: &tenant,
            window,
            group_by,
        })
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| history_error(error.to_string()))?;
    ok(&RevenueBody {
        rows: rows
            .into_iter()
            .map(|row| RevenueRowBody {
                key: key_text(row.key),
                count: row.sales.count,
                amount_minor: row.sales.amount_minor,
                currency: row.currency,
                credits_sold: row.sales.credits_sold,
            })
            .collect(),
        from: format_rfc3339_ms(window.from_hour * HOUR_MS),
        to: format_rfc3339_ms(window.to_hour * HOUR_MS),
    })
}

/// The history's reader, once it holds every write durable when the request came; 503 when the
/// history is off.
async fn reader(call: &Call<'_>) -> Result<std::sync::Arc<Reader>, Problem> {
    let reader = history(call)?;
    catch_up(&reader, call.state.engine.wal().durable_lsn()).await;
    Ok(reader)
}

/// A day or hour as its first instant; a name as itself; no name as null.
fn key_text(key: Key) -> Option<String> {
    match key {
        Key::Name(name) => Some(name),
        Key::Unnamed => None,
        Key::Hour(hour) => Some(format_rfc3339_ms(hour * HOUR_MS)),
    }
}

fn parse(query: Option<&str>, known: &[&str]) -> Result<Params, Problem> {
    let mut params = Params::default();
    for (name, value) in query_pairs(query) {
        if !known.contains(&name.as_str()) {
            return Err(unknown_parameter(&name));
        }
        let slot = match name.as_str() {
            "from" => &mut params.from,
            "to" => &mut params.to,
            "group_by" => &mut params.group_by,
            "user_id" => &mut params.user_id,
            "pool_id" => &mut params.pool_id,
            // The last name `known` may hold.
            _ => &mut params.currency,
        };
        *slot = Some(value);
    }
    Ok(params)
}

fn unknown_grouping(allowed: &str) -> Problem {
    Problem::invalid(format!("group_by must be one of {allowed}")).with("field", "group_by")
}

/// The window the query asks for, in hours; `now_ms` places the default one.
fn window(params: &Params, now_ms: i64) -> Result<Window, Problem> {
    let to_hour = match &params.to {
        Some(text) => whole_hour(text, "to")?,
        // The end of the current hour: the window holds everything spent so far.
        None => now_ms.div_euclid(HOUR_MS) + 1,
    };
    let from_hour = match &params.from {
        Some(text) => whole_hour(text, "from")?,
        None => to_hour - DEFAULT_WINDOW_DAYS * DAY_HOURS,
    };
    if from_hour >= to_hour {
        return Err(invalid_window("from must be before to", "from"));
    }
    if to_hour - from_hour > MAX_WINDOW_DAYS * DAY_HOURS {
        return Err(invalid_window(
            &format!("the window is longer than {MAX_WINDOW_DAYS} days"),
            "to",
        ));
    }
    Ok(Window { from_hour, to_hour })
}

/// The hour `text` names, if it is an RFC 3339 timestamp on a whole UTC hour.
fn whole_hour(text: &str, field: &'static str) -> Result<i64, Problem> {
    let time_ms = parse_rfc3339_ms(text).ok_or_else(|| {
        Problem::invalid(format!("{field} must be an RFC 3339 timestamp")).with("field", field)
    })?;
    let hour = time_ms.div_euclid(HOUR_MS);
    if time_ms.rem_euclid(HOUR_MS) != 0 {
        let (before, after) = (hour * HOUR_MS, (hour + 1) * HOUR_MS);
        return Err(invalid_window(
            &format!(
                "{field} must be a whole UTC hour (reports count by the hour): {text} lies \
                 between {} and {}",
                format_rfc3339_ms(before),
                format_rfc3339_ms(after)
            ),
            field,
        ));
    }
    Ok(hour)
}

fn invalid_window(detail: &str, field: &'static str) -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-window",
        "Invalid window",
        detail,
    )
    .with("field", field)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(from: Option<&str>, to: Option<&str>) -> Params {
        Params {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            ..Params::default()
        }
    }

    #[test]
    fn a_window_is_whole_hours_in_order_and_at_most_400_days() {
        let now = parse_rfc3339_ms("2026-03-01T10:20:00Z").unwrap();
        let hour = |text| parse_rfc3339_ms(text).unwrap() / HOUR_MS;
        let window = window(&params(None, None), now).unwrap();
        assert_eq!(window.to_hour, hour("2026-03-01T11:00:00Z"));
        assert_eq!(window.from_hour, hour("2026-01-30T11:00:00Z"));
        let given = super::window(
            &params(
                Some("2026-02-01T00:00:00Z"),
                Some("2026-02-01T05:00:00+02:00"),
            ),
            now,
        )
        .unwrap();
        assert_eq!(
            (given.from_hour, given.to_hour),
            (hour("2026-02-01T00:00:00Z"), hour("2026-02-01T03:00:00Z"))
        );
        let problem = super::window(&params(Some("2026-02-01T00:30:00Z"), None), now).unwrap_err();
        assert_eq!(problem.slug, "invalid-window");
        assert!(
            problem.detail.contains("2026-02-01T00:00:00.000Z")
                && problem.detail.contains("2026-02-01T01:00:00.000Z"),
            "{}",
            problem.detail
        );
        for (from, to) in [
            ("2026-02-01T05:00:00Z", "2026-02-01T05:00:00Z"),
            ("2026-02-02T00:00:00Z", "2026-02-01T00:00:00Z"),
            ("2016-02-01T00:00:00Z", "2026-02-01T00:00:00Z"),
        ] {
            let problem = super::window(&params(Some(from), Some(to)), now).unwrap_err();
            assert_eq!(problem.slug, "invalid-window", "{from} {to}");
        }
        let exactly_400_days = super::window(
            &params(Some("2025-01-01T00:00:00Z"), Some("2026-02-05T00:00:00Z")),
            now,
        );
        assert!(exactly_400_days.is_ok());
        let problem = super::window(&params(Some("yesterday"), None), now).unwrap_err();
        assert_eq!(problem.slug, "invalid-request");
    }
}
