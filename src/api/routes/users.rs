//! The users routes: a user's profile (`PUT`/`GET /v1/users/{user_id}`), its wallet, and the
//! writes on it: credit, debit, the batch of debits, revoke (admin) and the overdraft limit
//! (admin). The wallet view here is also the one `catalogue`'s bootstrap shows.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::auth;
use crate::api::call::{fingerprint, ok, unexpected, written, Answer, Call};
use crate::api::dto::{currency, metadata, rule_json, spend, PrefixedId, ENTRY_PREFIX};
use crate::api::problem::Problem;
use crate::api::request::{parse_json, parse_json_or_empty, query_pairs, unknown_parameter};
use crate::api::response::{json_bytes_response, json_response};
use crate::config::Role;
use crate::engine::types::Outcome;
use crate::engine::types::{CreditKind, Currency, DebitKind, EngineError, Fingerprint};
use crate::engine::{
    CreditRequest, DebitRequest, Done, IdempotencyKey, RevokeRequest, Tenant, UserView, WalletView,
};
use crate::engine::{FieldChange, ProfileChange};
use crate::metrics::DebitOutcome;

/// The most debits one batch may carry.
pub const MAX_BATCH_DEBITS: usize = 8192;

/// `PUT` and `PATCH /v1/users/{user_id}`: an absent field is kept, `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    email: Option<Option<Cow<'a, str>>>,
    #[serde(borrow, default, deserialize_with = "present")]
    name: Option<Option<Cow<'a, str>>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// A field that is present, `null` or not: `Some(None)` for `null` (absent stays `None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl<'a> UserBody<'a> {
    /// The change this body asks for; `merge_metadata` for `PATCH`.
    fn change(&'a self, merge_metadata: bool) -> ProfileChange<'a> {
        let field = |value: &'a Option<Option<Cow<'a, str>>>| match value {
            None => FieldChange::Keep,
            Some(None) => FieldChange::Clear,
            Some(Some(text)) => FieldChange::Set(text),
        };
        let metadata = match self.metadata.map(RawValue::get) {
            None => FieldChange::Keep,
            Some("null") => FieldChange::Clear,
            Some(text) => FieldChange::Set(text),
        };
        ProfileChange {
            email: field(&self.email),
            name: field(&self.name),
            metadata,
            merge_metadata,
        }
    }
}

/// `POST /v1/users/{user_id}/credit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditBody<'a> {
    amount: i64,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(default)]
    kind: Option<CreditKind>,
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// `POST /v1/users/{user_id}/debit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebitBody<'a> {
    #[serde(default)]
    amount: Option<i64>,
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// `POST /v1/debits/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow, deserialize_with = "crate::api::dto::objects")]
    debits: Vec<BatchItem<'a>>,
}

/// One debit of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow, default)]
    idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// `POST /v1/users/{user_id}/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody<'a> {
    amount: i64,
    #[serde(borrow)]
    reason: Cow<'a, str>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    /// A chargeback: take the amount even below the wallet's floor.
    #[serde(default)]
    allow_negative: Option<bool>,
}

/// `PUT /v1/users/{user_id}/overdraft`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverdraftBody<'a> {
    overdraft_limit: i64,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
}

/// Answer to a credit.
#[derive(Debug, Serialize)]
struct CreditAnswer {
    entry_id: PrefixedId,
    amount: i64,
    balance: i64,
    available: i64,
}

/// The 200 of a durable credit (to a wallet or a pool): its entry, amount and balances.
pub(super) fn credit_answer(done: &Done) -> Answer {
    let Outcome::Credit {
        entry_id,
        amount,
        balance,
        available,
    } = done.outcome
    else {
        return Err(unexpected(done));
    };
    let answer = CreditAnswer {
        entry_id: PrefixedId(ENTRY_PREFIX, entry_id),
        amount,
        balance,
        available,
    };
    written(StatusCode::OK, &answer, done.replayed)
}

/// Answer to a debit (or a revoke, with `amount` instead of `charged`).
#[derive(Debug, Serialize)]
struct DebitAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    entry_id: Option<PrefixedId>,
    charged: i64,
    /// Of `charged`, what the wallet paid and what the user's credit pool paid.
    from_wallet: i64,
    from_pool: i64,
    balance: i64,
    available: i64,
    #[serde(skip_serializing_if = "crate::api::dto::is_false")]
    dry_run: bool,
}

/// Answer to a revoke.
#[derive(Debug, Serialize)]
struct RevokeAnswer {
    entry_id: PrefixedId,
    amount: i64,
    balance: i64,
    available: i64,
    /// `chargeback` when `allow_negative` was asked for, else `revoke`.
    kind: &'static str,
}

/// One balance of a user.
#[derive(Debug, Serialize)]
pub(super) struct BalanceJson {
    currency: String,
    balance: i64,
    reserved: i64,
    available: i64,
    overdraft_limit: i64,
    spendable: i64,
}

impl From<&WalletView> for BalanceJson {
    fn from(wallet: &WalletView) -> BalanceJson {
        BalanceJson {
            currency: wallet.currency.to_string(),
            balance: wallet.balance,
            reserved: wallet.reserved,
            available: wallet.available,
            overdraft_limit: wallet.overdraft_limit,
            spendable: wallet.spendable,
        }
    }
}

/// `GET /v1/users/{user_id}/wallet`.
#[derive(Debug, Serialize)]
pub(crate) struct WalletJson {
    user_id: String,
    currency: String,
    balance: i64,
    reserved: i64,
    available: i64,
    overdraft_limit: i64,
    /// `available` plus what the overdraft still allows: what a debit may take now.
    spendable: i64,
    status: &'static str,
    auto_topup: Option<serde_json::Value>,
    balances: Vec<BalanceJson>,
    /// The credit pool the user draws on, when it is a member of one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<super::pools::MembershipJson>,
}

/// A user and its wallets.
#[derive(Debug, Serialize)]
struct UserJson {
    user_id: String,
    email: Option<String>,
    name: Option<String>,
    metadata: Option<Box<RawValue>>,
    wallet: WalletJson,
}

/// The wallet status of API.md: `empty` at 0, `low` under the threshold, else `healthy`.
fn wallet_status(available: i64, low_balance: i64) -> &'static str {
    if available <= 0 {
        "empty"
    } else if available < low_balance {
        "low"
    } else {
        "healthy"
    }
}

/// A user's wallet in `currency` as the API shows it, with its automatic top-up rule.
pub(super) fn wallet_json(call: &Call<'_>, user: &UserView, currency: Currency) -> WalletJson {
    let state = call.state;
    let reader = WalletReader {
        engine: &state.engine,
        payments: &state.payments,
        low_balance: state.limits.low_balance,
    };
    reader.json(&call.tenant, user, currency)
}

/// What a wallet view needs beside the state: for the routes that have no [`Call`] (the live
/// stream, the portal), which read it outside a request.
#[derive(Clone, Copy)]
pub(crate) struct WalletReader<'a> {
    /// The engine.
    pub engine: &'a crate::engine::Engine,
    /// The payments service (its gateway's name picks the auto top-up rule shown).
    pub payments: &'a crate::payments::Payments,
    /// `limits.low_balance`.
    pub low_balance: i64,
}

impl WalletReader<'_> {
    /// The wallet view of `user` in `tenant`, as `GET /v1/users/{user_id}/wallet` shows it.
    pub(crate) fn json(&self, tenant: &Tenant, user: &UserView, currency: Currency) -> WalletJson {
        let low_balance = self.low_balance;
        let rule = self
            .engine
            .auto_topup(
                tenant,
                &user.user_id,
                Some(currency),
                self.payments.gateway_name(),
            )
            .ok()
            .flatten();
        let wallet = user.wallet(currency);
        // The same threshold as the low-balance event: the enabled rule's, else the tenant limit.
        let low_balance = rule
            .as_ref()
            .filter(|rule| rule.enabled)
            .map_or(low_balance, |rule| rule.threshold);
        let pool = super::pools::membership_json_in(self.engine, tenant, &user.user_id);
        // What a debit may take: the wallet's part and what the pool may still give, as a 402
        // says.
        let from_pool = pool
            .as_ref()
            .map_or(0, |pool| pool.spendable_in(currency.as_str()));
        WalletJson {
            user_id: user.user_id.clone(),
            currency: currency.to_string(),
            balance: wallet.balance,
            reserved: wallet.reserved,
            available: wallet.available,
            overdraft_limit: wallet.overdraft_limit,
            spendable: wallet.spendable.saturating_add(from_pool),
            status: wallet_status(wallet.available, low_balance),
            auto_topup: rule.as_ref().map(rule_json),
            balances: user.wallets.iter().map(BalanceJson::from).collect(),
            pool,
        }
    }
}

fn user_json(call: &Call<'_>, user: &UserView, currency: Currency) -> UserJson {
    UserJson {
        user_id: user.user_id.clone(),
        email: user.email.clone(),
        name: user.name.clone(),
        metadata: user
            .metadata
            .as_ref()
            .and_then(|text| RawValue::from_string(text.clone()).ok()),
        wallet: wallet_json(call, user, currency),
    }
}

/// `PUT /v1/users/{user_id}`: creates the user, or changes the fields the body gives (an
/// absent field is kept, `null` clears it), so that a sync at each login never wipes a name
/// or metadata it does not send. `metadata` replaces the stored document.
pub async fn put_user(call: &Call<'_>) -> Answer {
    change_user(call, true).await
}

/// `PATCH /v1/users/{user_id}`: as `PUT` for an existing user (404 for a missing one), and
/// `metadata` is merged into the stored document (RFC 7396 JSON Merge Patch).
pub async fn patch_user(call: &Call<'_>) -> Answer {
    change_user(call, false).await
}

async fn change_user(call: &Call<'_>, put: bool) -> Answer {
    let user = &*call.param;
    let body: UserBody = parse_json_or_empty(&call.body)?;
    let (created, lsn) = call.state.engine.change_user(
        &call.tenant,
        user,
        &body.change(!put),
        put,
        &call.context(None),
    )?;
    call.durable(lsn).await?;
    let view = call.tenant.user(user)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &user_json(call, &view, call.tenant.default_currency()),
    ))
}

/// `GET /v1/users/{user_id}`.
pub async fn get_user(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let view = call.tenant.user(user)?;
    ok(&user_json(call, &view, call.tenant.default_currency()))
}

/// The page size of `GET /v1/users` when the query names none.
const USERS_DEFAULT_LIMIT: u32 = 50;

/// A page of `GET /v1/users`.
#[derive(Debug, Serialize)]
struct UsersPage {
    users: Vec<UserJson>,
    next_cursor: Option<String>,
}

/// `GET /v1/users?prefix=&limit=&cursor=`: the tenant's users whose id starts with `prefix`, in
/// id order, each with its wallet in the tenant's default currency. `next_cursor` is the last
/// id of a full page; the next page lists the ids after it.
pub async fn list_users(call: &Call<'_>) -> Answer {
    let (mut prefix, mut cursor, mut limit) = (String::new(), None, USERS_DEFAULT_LIMIT);
    for (name, value) in query_pairs(call.query) {
        match name.as_ref() {
            "prefix" => prefix = value,
            "limit" => limit = super::entries::page_limit(&value)?,
            "cursor" if value.is_empty() => {
                return Err(Problem::invalid("cursor is empty").with("field", "cursor"))
            }
            "cursor" => cursor = Some(value),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    // Off the runtime's threads: the scan's time grows with the tenant's users.
    let tenant = std::sync::Arc::clone(&call.tenant);
    let ids = tokio::task::spawn_blocking(move || {
        tenant.user_ids(&prefix, cursor.as_deref(), limit as usize)
    })
    .await
    .map_err(|_| {
        Problem::unavailable("server-busy", "the user listing was interrupted; try again")
    })?;
    let currency = call.tenant.default_currency();
    // A user deleted between the scan and its read is left out of the page.
    let users: Vec<UserJson> = (ids.iter())
        .filter_map(|id| call.tenant.user(id).ok())
        .map(|view| user_json(call, &view, currency))
        .collect();
    let next_cursor = (ids.len() == limit as usize)
        .then(|| ids.last().cloned())
        .flatten();
    ok(&UsersPage { users, next_cursor })
}

/// `GET /v1/me`: the calling key's name, role and the tenant it acts in (a platform key's
/// `X-Tenant`, else its own).
pub async fn me(call: &Call<'_>) -> Answer {
    ok(&serde_json::json!({
        "name": call.actor,
        "role": call.role,
        "tenant": call.tenant.id.as_str(),
    }))
}

/// `GET /v1/users/{user_id}/wallet[?currency=]`.
pub async fn get_wallet(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let mut currency = call.tenant.default_currency();
    for (name, value) in query_pairs(call.query) {
        match name.as_ref() {
            "currency" => currency = Currency::new(&value)?,
            _ => return Err(unknown_parameter(&name)),
        }
    }
    let view = call.tenant.user(user)?;
    // A currency the tenant does not have is a mistake to say, not an empty wallet to show.
    call.tenant
        .check_currency(currency)
        .map_err(|error| call.problem(error))?;
    ok(&wallet_json(call, &view, currency))
}

/// `POST /v1/users/{user_id}/credit`.
pub async fn credit(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: CreditBody = parse_json(&call.body)?;
    let kind = body.kind.unwrap_or(CreditKind::Grant);
    if kind != CreditKind::Grant {
        auth::require(call.role, Role::Admin)?;
    }
    let reason = body.reason.as_deref().filter(|r| !r.trim().is_empty());
    if call.role >= Role::Admin && reason.is_none() {
        return Err(
            Problem::invalid("credits made with an admin key need a reason")
                .with("field", "reason"),
        );
    }
    // A service key's grants are capped per day; an admin's need a reason instead.
    let grant_cap_per_day = (call.role == Role::Service && kind == CreditKind::Grant)
        .then_some(call.state.limits.service_key_grants_per_day);
    let request = CreditRequest {
        user,
        amount: body.amount,
        kind,
        currency: currency(body.currency.as_ref())?,
        description: body.description.as_deref().or(reason),
        reference: body.reference.as_deref(),
        metadata: metadata(body.metadata),
        grant_cap_per_day,
    };
    let done = call
        .state
        .engine
        .credit(&call.tenant, &request, &call.context(call.idempotency()))
        .map_err(|error| call.problem(error))?;
    call.durable(done.lsn).await?;
    if !done.replayed {
        call.state.metrics.credit(kind);
    }
    credit_answer(&done)
}

fn debit_outcome(error: &EngineError) -> DebitOutcome {
    if matches!(error, EngineError::InsufficientCredits(_)) {
        DebitOutcome::Insufficient
    } else {
        DebitOutcome::Rejected
    }
}

fn debit_answer(done: &Done, dry_run: bool) -> Result<DebitAnswer, Problem> {
    let Outcome::Debit {
        entry_id,
        charged,
        from_pool,
        balance,
        available,
        ..
    } = done.outcome
    else {
        return Err(unexpected(done));
    };
    let entry_id = (!dry_run).then_some(PrefixedId(ENTRY_PREFIX, entry_id));
    Ok(DebitAnswer {
        entry_id,
        charged,
        from_wallet: charged - from_pool,
        from_pool,
        balance,
        available,
        dry_run,
    })
}

/// `POST /v1/users/{user_id}/debit`.
pub async fn debit(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: DebitBody = parse_json(&call.body)?;
    let request = DebitRequest {
        user,
        spend: spend(body.amount, body.action.as_ref(), body.quantity)?,
        currency: currency(body.currency.as_ref())?,
        description: body.description.as_deref(),
        reference: body.reference.as_deref(),
        metadata: metadata(body.metadata),
        dry_run: body.dry_run.unwrap_or(false),
    };
    let metrics = &call.state.metrics;
    let done =
        match call
            .state
            .engine
            .debit(&call.tenant, &request, &call.context(call.idempotency()))
        {
            Ok(done) => done,
            Err(error) => {
                if !request.dry_run {
                    metrics.debit(debit_outcome(&error));
                }
                return Err(call.spend_problem(user, error));
            }
        };
    call.durable(done.lsn).await?;
    if !request.dry_run && !done.replayed {
        metrics.debit(DebitOutcome::Ok);
    }
    let answer = debit_answer(&done, request.dry_run)?;
    written(StatusCode::OK, &answer, done.replayed)
}

/// `POST /v1/debits/batch`: each debit is applied on its own; one wait covers them all.
pub async fn batch_debit(call: &Call<'_>) -> Answer {
    let body: BatchBody = parse_json(&call.body)?;
    if body.debits.is_empty() || body.debits.len() > MAX_BATCH_DEBITS {
        return Err(Problem::invalid(format!(
            "debits must hold 1 to {MAX_BATCH_DEBITS} items"
        )));
    }
    let batch_fingerprint = call
        .idempotency_key
        .map(|_| fingerprint(&[b"batch", &call.body]));
    let mut results = Vec::with_capacity(body.debits.len());
    let mut last_lsn = 0;
    let metrics = &call.state.metrics;
    for (index, item) in body.debits.iter().enumerate() {
        if index % 256 == 255 {
            // Let other requests on this worker run between slices of a large batch.
            tokio::task::yield_now().await;
        }
        let derived_key;
        let key = match (
            &item.idempotency_key,
            call.idempotency_key,
            batch_fingerprint,
        ) {
            (Some(key), _, _) => Some(IdempotencyKey {
                key,
                fingerprint: item_fingerprint(item),
            }),
            (None, Some(request_key), Some(batch)) => {
                derived_key = format!("{request_key}#{index}");
                Some(IdempotencyKey {
                    key: &derived_key,
                    fingerprint: batch,
                })
            }
            _ => None,
        };
        let outcome = batch_one(call, item, key);
        match &outcome {
            Ok(done) => {
                last_lsn = last_lsn.max(done.lsn);
                if !done.replayed {
                    metrics.debit(DebitOutcome::Ok);
                }
            }
            Err(error) => metrics.debit(debit_outcome(error)),
        }
        results.push(batch_result(call, item, outcome));
    }
    if last_lsn > 0 {
        call.durable(last_lsn).await?;
    }
    Ok(json_bytes_response(StatusCode::OK, batch_answer(&results)))
}

/// One item's result: what it debited, or its problem (with its `user_id`).
enum BatchResult<'a> {
    Debited(BatchDebited<'a>),
    Problem(serde_json::Value),
}

/// Bytes a debited item's result takes, about (a `user_id` of ten characters): what the answer's
/// buffer is sized for, so that it is not grown (and copied) eight times on the way to 16 KB.
const BATCH_RESULT_BYTES: usize = 168;

/// The answer to a batch of debits, `{"results":[…]}`: one result per item, in order.
///
/// A debited item is written field by field (constant keys, numbers by `itoa`): through serde,
/// each of its nine keys was escaped anew and the buffer grew by doubling, which took about a
/// sixth of a core thread's time on batches of 100 (`perf record`). A problem is written by
/// serde_json. The bytes are those serde_json writes (a test holds them equal).
fn batch_answer(results: &[BatchResult<'_>]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(16 + results.len() * BATCH_RESULT_BYTES);
    out.extend_from_slice(b"{\"results\":[");
    for (index, result) in results.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        match result {
            BatchResult::Debited(item) => item.write_json(&mut out)?,
            BatchResult::Problem(body) => serde_json::to_writer(&mut out, body)?,
        }
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// A debited item. Written straight from the struct (see [`batch_answer`]): each item built as a
/// `serde_json::Value` was a map of nine allocated keys, which with its drop took about a third
/// of the server's CPU on batches of 100 (`perf record`: allocation, B-tree inserts, `Value`
/// serialization). The fields are in the order that map wrote them (by name), so the bytes are
/// unchanged.
struct BatchDebited<'a> {
    available: i64,
    balance: i64,
    charged: i64,
    entry_id: Option<PrefixedId>,
    from_pool: i64,
    from_wallet: i64,
    replayed: bool,
    status: u16,
    user_id: &'a str,
}

impl BatchDebited<'_> {
    /// Appends the item as a JSON object, keys in order.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"available\":");
        out.extend_from_slice(number.format(self.available).as_bytes());
        out.extend_from_slice(b",\"balance\":");
        out.extend_from_slice(number.format(self.balance).as_bytes());
        out.extend_from_slice(b",\"charged\":");
        out.extend_from_slice(number.format(self.charged).as_bytes());
        out.extend_from_slice(b",\"entry_id\":");
        match &self.entry_id {
            // The prefix is one of creditd's own, letters and `_`: nothing to escape.
            Some(PrefixedId(prefix, id)) => {
                out.push(b'"');
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(number.format(*id).as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"from_pool\":");
        out.extend_from_slice(number.format(self.from_pool).as_bytes());
        out.extend_from_slice(b",\"from_wallet\":");
        out.extend_from_slice(number.format(self.from_wallet).as_bytes());
        out.extend_from_slice(if self.replayed {
            b",\"replayed\":true"
        } else {
            b",\"replayed\":false"
        });
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(number.format(self.status).as_bytes());
        out.extend_from_slice(b",\"user_id\":");
        // The caller's text: escaped as serde_json escapes any string.
        serde_json::to_writer(&mut *out, self.user_id)?;
        out.push(b'}');
        Ok(())
    }
}

fn batch_one(
    call: &Call<'_>,
    item: &BatchItem<'_>,
    key: Option<IdempotencyKey<'_>>,
) -> Result<Done, EngineError> {
    let spend = match spend(item.amount, item.action.as_ref(), item.quantity) {
        Ok(spend) => spend,
        Err(_) => {
            return Err(EngineError::Invalid(crate::engine::types::Invalid::new(
                "debit",
                "give exactly one of amount or action",
            )))
        }
    };
    let currency = item.currency.as_deref().map(Currency::new).transpose()?;
    let request = DebitRequest {
        user: &item.user_id,
        spend,
        currency,
        description: item.description.as_deref(),
        reference: item.reference.as_deref(),
        metadata: metadata(item.metadata),
        dry_run: false,
    };
    call.state
        .engine
        .debit(&call.tenant, &request, &call.context(key))
}

fn item_fingerprint(item: &BatchItem<'_>) -> Fingerprint {
    let amount = item.amount.map(|a| a.to_le_bytes()).unwrap_or_default();
    let quantity = item.quantity.map(|q| q.to_le_bytes()).unwrap_or_default();
    let text =
        |field: &Option<Cow<'_, str>>| field.as_deref().unwrap_or("\u{0}").as_bytes().to_vec();
    fingerprint(&[
        b"batch-item",
        item.user_id.as_bytes(),
        &amount,
        &text(&item.action),
        &quantity,
        &text(&item.currency),
        &text(&item.description),
        &text(&item.reference),
        metadata(item.metadata).unwrap_or("\u{0}").as_bytes(),
    ])
}

fn batch_result<'a>(
    call: &Call<'_>,
    item: &'a BatchItem<'_>,
    outcome: Result<Done, EngineError>,
) -> BatchResult<'a> {
    let body = match outcome {
        Ok(done) => match debit_answer(&done, false) {
            Ok(answer) => {
                return BatchResult::Debited(BatchDebited {
                    available: answer.available,
                    balance: answer.balance,
                    charged: answer.charged,
                    entry_id: answer.entry_id,
                    from_pool: answer.from_pool,
                    from_wallet: answer.from_wallet,
                    replayed: done.replayed,
                    status: 200,
                    user_id: &item.user_id,
                })
            }
            Err(problem) => problem.body(),
        },
        Err(error) => {
            let problem = call.spend_problem(&item.user_id, error);
            let mut body = problem.body();
            if let Some(object) = body.as_object_mut() {
                object.insert(
                    "user_id".into(),
                    serde_json::Value::String(item.user_id.to_string()),
                );
            }
            body
        }
    };
    BatchResult::Problem(body)
}

/// `POST /v1/users/{user_id}/revoke` (admin).
pub async fn revoke(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: RevokeBody = parse_json(&call.body)?;
    let request = RevokeRequest {
        user,
        amount: body.amount,
        currency: currency(body.currency.as_ref())?,
        reason: &body.reason,
        allow_negative: body.allow_negative.unwrap_or(false),
    };
    let done = call
        .state
        .engine
        .revoke(&call.tenant, &request, &call.context(call.idempotency()))
        .map_err(|error| call.problem(error))?;
    call.durable(done.lsn).await?;
    let Outcome::Debit {
        entry_id,
        kind,
        charged,
        balance,
        available,
        ..
    } = done.outcome
    else {
        return Err(unexpected(&done));
    };
    let answer = RevokeAnswer {
        entry_id: PrefixedId(ENTRY_PREFIX, entry_id),
        amount: charged,
        balance,
        available,
        kind: if kind == DebitKind::Chargeback {
            "chargeback"
        } else {
            "revoke"
        },
    };
    written(StatusCode::OK, &answer, done.replayed)
}

/// `PUT /v1/users/{user_id}/overdraft` (admin).
pub async fn put_overdraft(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: OverdraftBody = parse_json(&call.body)?;
    let currency = currency(body.currency.as_ref())?;
    let lsn = call.state.engine.set_overdraft(
        &call.tenant,
        user,
        currency,
        body.overdraft_limit,
        &call.context(None),
    )?;
    call.durable(lsn).await?;
    let view = call.tenant.user(user)?;
    ok(&wallet_json(
        call,
        &view,
        currency.unwrap_or(call.tenant.default_currency()),
    ))
}

#[cfg(test)]
mod tests {
    use super::{batch_answer, BatchDebited, BatchResult, PrefixedId, ENTRY_PREFIX};

    /// The answer as serde_json writes the same values (a map, keys in order).
    fn by_serde(items: &[(&BatchDebited<'_>, Option<&serde_json::Value>)]) -> Vec<u8> {
        let results: Vec<serde_json::Value> = items
            .iter()
            .map(|(item, problem)| match problem {
                Some(problem) => (*problem).clone(),
                None => serde_json::json!({
                    "available": item.available,
                    "balance": item.balance,
                    "charged": item.charged,
                    "entry_id": item.entry_id.as_ref().map(|PrefixedId(prefix, id)| format!("{prefix}{id}")),
                    "from_pool": item.from_pool,
                    "from_wallet": item.from_wallet,
                    "replayed": item.replayed,
                    "status": item.status,
                    "user_id": item.user_id,
                }),
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "results": results })).unwrap()
    }

    fn debited(user_id: &str, entry: Option<u64>, replayed: bool) -> BatchDebited<'_> {
        BatchDebited {
            available: -17,
            balance: i64::MAX,
            charged: 0,
            entry_id: entry.map(|lsn| PrefixedId(ENTRY_PREFIX, lsn)),
            from_pool: 3,
            from_wallet: i64::MIN,
            replayed,
            status: 200,
            user_id,
        }
    }

    #[test]
    fn a_batch_answer_is_the_bytes_serde_json_writes() {
        let users = [
            "alice",
            "",
            "quote\"back\\slash",
            "tab\tnew\nline\u{1}\u{1f}",
            "é→😀",
            "</script>",
        ];
        let problem = serde_json::json!({
            "type": "https://creditd.dev/problems/insufficient-credits",
            "status": 402,
            "detail": "5 credits are required \"but\" only 1",
            "user_id": "bob\u{7f}",
        });
        let mut items = Vec::new();
        for (index, user) in users.iter().enumerate() {
            let entry = (index % 2 == 0).then_some(u64::MAX - index as u64);
            items.push(debited(user, entry, index % 3 == 0));
        }
        let mut results: Vec<BatchResult<'_>> = Vec::new();
        let mut expected: Vec<(&BatchDebited<'_>, Option<&serde_json::Value>)> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            results.push(BatchResult::Debited(debited(
                item.user_id,
                item.entry_id.as_ref().map(|id| id.1),
                item.replayed,
            )));
            expected.push((item, None));
            if index == 2 {
                results.push(BatchResult::Problem(problem.clone()));
                expected.push((item, Some(&problem)));
            }
        }
        let written = batch_answer(&results).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            String::from_utf8(by_serde(&expected)).unwrap()
        );
        // One item alone, and a problem alone.
        let one = [BatchResult::Debited(debited("u-1", Some(1), false))];
        assert_eq!(
            batch_answer(&one).unwrap(),
            by_serde(&[(&debited("u-1", Some(1), false), None)])
        );
        let only_problem = [BatchResult::Problem(problem.clone())];
        assert_eq!(
            batch_answer(&only_problem).unwrap(),
            by_serde(&[(&debited("x", None, false), Some(&problem))])
        );
    }
}
