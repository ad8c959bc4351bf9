//! The credit pools routes (admin keys): a pool (`PUT`/`GET /v1/pools/{pool_id}`, `GET
//! /v1/pools`), its credits (`POST /v1/pools/{pool_id}/credit`), its members and its ledger
//! (`GET /v1/pools/{pool_id}/members`, `…/entries`), and a user's membership
//! (`PUT`/`GET`/`DELETE /v1/users/{user_id}/pool`). A member's spends draw on the pool through
//! the ordinary debit, reservation and capture routes, whose answers say `from_wallet` and
//! `from_pool`.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::entries::{catch_up, history, history_error, page_cursor, page_limit, DEFAULT_LIMIT};
use crate::api::call::{ok, Answer, Call};
use crate::api::dto::{currency, PrefixedId, ENTRY_PREFIX};
use crate::api::problem::Problem;
use crate::api::request::{parse_json, parse_json_or_empty, query_pairs, unknown_parameter};
use crate::api::response::json_response;
use crate::engine::types::{CreditKind, EngineError, Missing};
use crate::engine::{MembershipView, PoolCreditRequest, PoolView};
use crate::history::pools::PoolListed;
use crate::time::format_rfc3339_ms;

/// `PUT /v1/pools/{pool_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolBody<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
}

/// `POST /v1/pools/{pool_id}/credit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolCreditBody<'a> {
    amount: i64,
    #[serde(borrow)]
    reason: Cow<'a, str>,
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
}

/// `PUT /v1/users/{user_id}/pool`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembershipBody<'a> {
    #[serde(borrow)]
    pool_id: Cow<'a, str>,
    #[serde(default)]
    daily_cap: Option<i64>,
}

/// A pool.
#[derive(Debug, Serialize)]
struct PoolJson {
    pool_id: String,
    name: Option<String>,
    currency: String,
    balance: i64,
    reserved: i64,
    available: i64,
    /// How many users draw on it.
    members: usize,
    /// What its members drew (and hold) this UTC day.
    drawn_today: i64,
}

impl From<PoolView> for PoolJson {
    fn from(view: PoolView) -> PoolJson {
        PoolJson {
            pool_id: view.pool_id,
            name: view.name,
            currency: view.currency.to_string(),
            balance: view.balance,
            reserved: view.reserved,
            available: view.available,
            members: view.members,
            drawn_today: view.drawn_today,
        }
    }
}

/// The pool a user draws on: the wallet view's `pool`, and the membership routes' answer.
#[derive(Debug, Serialize)]
pub(super) struct MembershipJson {
    pool_id: String,
    currency: String,
    daily_cap: Option<i64>,
    drawn_today: i64,
    available_to_user: i64,
}

impl MembershipJson {
    /// What the pool adds to what the user can spend in `currency`.
    pub(super) fn spendable_in(&self, currency: &str) -> i64 {
        if self.currency == currency {
            self.available_to_user.max(0)
        } else {
            0
        }
    }
}

impl From<MembershipView> for MembershipJson {
    fn from(view: MembershipView) -> MembershipJson {
        MembershipJson {
            pool_id: view.pool_id,
            currency: view.currency.to_string(),
            daily_cap: view.daily_cap,
            drawn_today: view.drawn_today,
            available_to_user: view.available_to_user,
        }
    }
}

/// One movement of a pool's ledger.
#[derive(Debug, Serialize)]
struct PoolEntryJson<'a> {
    entry_id: PrefixedId,
    kind: &'a str,
    amount: i64,
    currency: &'a str,
    balance_after: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantity: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    actor: &'a str,
    created_at: String,
}

/// The membership of `user`, if any, as the wallet view shows it.
pub(super) fn membership_json(call: &Call<'_>, user: &str) -> Option<MembershipJson> {
    membership_json_in(&call.state.engine, &call.tenant, user)
}

/// As [`membership_json`], for a route without a [`Call`].
pub(super) fn membership_json_in(
    engine: &crate::engine::Engine,
    tenant: &crate::engine::Tenant,
    user: &str,
) -> Option<MembershipJson> {
    engine
        .membership(tenant, user)
        .ok()
        .flatten()
        .map(MembershipJson::from)
}

/// `PUT /v1/pools/{pool_id}` (admin).
pub async fn put_pool(call: &Call<'_>) -> Answer {
    let id = &*call.param;
    let body: PoolBody = parse_json_or_empty(&call.body)?;
    let currency = currency(body.currency.as_ref())?;
    let (created, lsn) = call.state.engine.put_pool(
        &call.tenant,
        id,
        body.name.as_deref(),
        currency,
        &call.context(None),
    )?;
    call.durable(lsn).await?;
    let view = call.state.engine.pool(&call.tenant, id)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &PoolJson::from(view)))
}

/// `GET /v1/pools/{pool_id}` (admin).
pub async fn get_pool(call: &Call<'_>) -> Answer {
    let view = call.state.engine.pool(&call.tenant, &call.param)?;
    ok(&PoolJson::from(view))
}

/// `GET /v1/pools` (admin).
pub async fn list_pools(call: &Call<'_>) -> Answer {
    if let Some((name, _)) = query_pairs(call.query).next() {
        return Err(unknown_parameter(&name));
    }
    let pools: Vec<PoolJson> = call
        .state
        .engine
        .pools(&call.tenant)
        .into_iter()
        .map(PoolJson::from)
        .collect();
    ok(&serde_json::json!({ "pools": pools }))
}

/// `POST /v1/pools/{pool_id}/credit` (admin).
pub async fn credit_pool(call: &Call<'_>) -> Answer {
    let body: PoolCreditBody = parse_json(&call.body)?;
    if body.reason.trim().is_empty() {
        return Err(Problem::invalid("credits to a pool need a reason").with("field", "reason"));
    }
    let request = PoolCreditRequest {
        pool: &call.param,
        amount: body.amount,
        kind: CreditKind::Grant,
        reason: Some(&body.reason),
        reference: body.reference.as_deref(),
    };
    let done =
        call.state
            .engine
            .credit_pool(&call.tenant, &request, &call.context(call.idempotency()))?;
    call.durable(done.lsn).await?;
    super::users::credit_answer(&done)
}

/// `GET /v1/pools/{pool_id}/members` (admin).
pub async fn list_pool_members(call: &Call<'_>) -> Answer {
    if let Some((name, _)) = query_pairs(call.query).next() {
        return Err(unknown_parameter(&name));
    }
    let members = call.state.engine.pool_members(&call.tenant, &call.param)?;
    let members: Vec<serde_json::Value> = members
        .into_iter()
        .map(|member| {
            serde_json::json!({
                "user_id": member.user_id,
                "daily_cap": member.daily_cap,
                "drawn_today": member.drawn_today,
            })
        })
        .collect();
    ok(&serde_json::json!({ "members": members }))
}

/// `GET /v1/pools/{pool_id}/entries?limit=&cursor=&user_id=` (admin): the pool's ledger, newest
/// first, from the history.
pub async fn list_pool_entries(call: &Call<'_>) -> Answer {
    let pool = call.param.to_string();
    let (mut limit, mut before, mut user) = (DEFAULT_LIMIT, None, None);
    for (name, value) in query_pairs(call.query) {
        match name.as_str() {
            "limit" => limit = page_limit(&value)?,
            "cursor" => before = Some(page_cursor(&value, ENTRY_PREFIX)?),
            "user_id" => user = Some(value),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    let reader = history(call)?;
    // A pool of another tenant, or none: 404 as if absent.
    call.state.engine.pool(&call.tenant, &pool)?;
    catch_up(&reader, call.state.engine.wal().durable_lsn()).await;
    let tenant = call.tenant.id().to_owned();
    let listed: Vec<PoolListed> = tokio::task::spawn_blocking(move || {
        reader.pool_entries(&tenant, &pool, user.as_deref(), before, limit)
    })
    .await
    .map_err(|error| history_error(error.to_string()))?
    .map_err(|error| history_error(error.to_string()))?;
    let entries: Vec<PoolEntryJson<'_>> = listed
        .iter()
        .map(|entry| PoolEntryJson {
            entry_id: PrefixedId(ENTRY_PREFIX, entry.lsn),
            kind: &entry.kind,
            amount: entry.amount,
            currency: &entry.currency,
            balance_after: entry.balance_after,
            user_id: entry.user_id.as_deref(),
            action: entry.action.as_deref(),
            quantity: entry.quantity,
            description: entry.description.as_deref(),
            reference: entry.reference.as_deref(),
            actor: &entry.actor,
            created_at: format_rfc3339_ms(entry.created_ms),
        })
        .collect();
    let next_cursor = (listed.len() == limit as usize)
        .then(|| listed.last().map(|last| PrefixedId(ENTRY_PREFIX, last.lsn)))
        .flatten();
    ok(&serde_json::json!({ "entries": entries, "next_cursor": next_cursor }))
}

/// `PUT /v1/users/{user_id}/pool` (admin).
pub async fn put_membership(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: MembershipBody = parse_json(&call.body)?;
    let lsn = call.state.engine.set_pool_member(
        &call.tenant,
        user,
        &body.pool_id,
        body.daily_cap,
        &call.context(None),
    )?;
    call.durable(lsn).await?;
    let membership =
        membership_json(call, user).ok_or(EngineError::NotFound(Missing::PoolMember))?;
    ok(&membership)
}

/// `GET /v1/users/{user_id}/pool`.
pub async fn get_membership(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    call.tenant.user(user)?;
    let membership =
        membership_json(call, user).ok_or(EngineError::NotFound(Missing::PoolMember))?;
    ok(&membership)
}

/// `DELETE /v1/users/{user_id}/pool` (admin).
pub async fn delete_membership(call: &Call<'_>) -> Answer {
    let lsn =
        call.state
            .engine
            .remove_pool_member(&call.tenant, &call.param, &call.context(None))?;
    call.durable(lsn).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "deleted": true }),
    ))
}
