//! One function per route. Each parses its body, calls the engine, waits for its record to be
//! durable, and renders the answer. No handler holds a lock across an `.await`.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::dto::*;
use super::problem::Problem;
use super::{json_response, ApiState};
use crate::config::Role;
use crate::engine::types::{
    check_email, CreditKind, Currency, EngineError, Fingerprint, Missing, Outcome,
};
use crate::engine::{
    CaptureRequest, Context, CreditRequest, DebitRequest, Done, IdempotencyKey, ReservationState,
    ReserveRequest, RevokeRequest, Spend, Tenant, TenantView, UserView,
};
use crate::engine::{PackageSpec, ProfileUpdate};
use crate::metrics::DebitOutcome;

/// The most debits one batch may carry.
pub const MAX_BATCH_DEBITS: usize = 8192;

/// A request after routing and authentication.
pub struct Call<'a> {
    pub(super) state: &'a ApiState,
    pub(super) tenant: Cow<'a, Arc<Tenant>>,
    pub(super) actor: &'a str,
    pub(super) role: Role,
    pub(super) method: &'a http::Method,
    pub(super) path_and_query: &'a str,
    pub(super) idempotency_key: Option<&'a str>,
}

type Answer = Result<Response<Full<Bytes>>, Problem>;

impl Call<'_> {
    /// The request's idempotency key with the fingerprint of this body.
    fn idempotency(&self, body: &[u8]) -> Option<IdempotencyKey<'_>> {
        let key = self.idempotency_key?;
        Some(IdempotencyKey {
            key,
            fingerprint: fingerprint(&[
                self.method.as_str().as_bytes(),
                self.path_and_query.as_bytes(),
                body,
            ]),
        })
    }

    pub(super) fn context<'b>(&'b self, idempotency: Option<IdempotencyKey<'b>>) -> Context<'b> {
        Context {
            actor: self.actor,
            idempotency,
        }
    }

    /// Waits until `done` is durable, then renders it (marking replays).
    async fn durable(&self, done: &Done) -> Result<(), Problem> {
        if done.lsn > 0 {
            self.state
                .engine
                .durable(done.lsn)
                .await
                .map_err(EngineError::from)?;
        }
        Ok(())
    }

    fn topup_url(&self, user: &str) -> String {
        format!("{}/v1/billing/bootstrap/{user}", self.state.public_url)
    }

    fn low_balance(&self) -> i64 {
        self.state.limits.low_balance
    }
}

/// SHA-256 over the parts, separated, cut to 16 bytes.
fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&digest[..16]);
    fingerprint
}

fn replayed(mut response: Response<Full<Bytes>>, done: &Done) -> Response<Full<Bytes>> {
    if done.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn currency(text: Option<&Cow<'_, str>>) -> Result<Option<Currency>, Problem> {
    text.map(|code| Currency::new(code))
        .transpose()
        .map_err(Problem::from)
}

fn metadata(raw: Option<&RawValue>) -> Option<&str> {
    raw.map(RawValue::get).filter(|text| *text != "null")
}

fn spend<'a>(
    amount: Option<i64>,
    action: Option<&'a Cow<'a, str>>,
    quantity: Option<u64>,
) -> Result<Spend<'a>, Problem> {
    match (amount, action) {
        (Some(amount), None) if quantity.is_none() => Ok(Spend::Amount(amount)),
        (None, Some(action)) => Ok(Spend::Action {
            name: action,
            quantity: quantity.unwrap_or(1),
        }),
        (Some(_), None) => Err(Problem::invalid(
            "quantity goes with action, not with amount",
        )),
        _ => Err(Problem::invalid("give exactly one of amount or action")),
    }
}

/// The wallet status of API.md: `empty` at 0, `low` under the threshold, else `healthy`.
pub fn wallet_status(available: i64, low_balance: i64) -> &'static str {
    if available <= 0 {
        "empty"
    } else if available < low_balance {
        "low"
    } else {
        "healthy"
    }
}

fn wallet_json(call: &Call<'_>, user: &UserView, currency: Currency) -> WalletJson {
    let low_balance = call.low_balance();
    let rule = call
        .state
        .engine
        .auto_topup(&call.tenant, &user.user_id, Some(currency))
        .ok()
        .flatten();
    let wallet = user.wallet(currency);
    // The same threshold as the low-balance event: the enabled rule's, else the tenant limit.
    let low_balance = rule
        .as_ref()
        .filter(|rule| rule.enabled)
        .map_or(low_balance, |rule| rule.threshold);
    WalletJson {
        user_id: user.user_id.clone(),
        currency: currency.to_string(),
        balance: wallet.balance,
        reserved: wallet.reserved,
        available: wallet.available,
        overdraft_limit: wallet.overdraft_limit,
        status: wallet_status(wallet.available, low_balance),
        auto_topup: rule.as_ref().map(super::payments::rule_json),
        balances: user.wallets.iter().map(BalanceJson::from).collect(),
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

fn ok<T: Serialize>(value: &T) -> Answer {
    Ok(json_response(StatusCode::OK, value))
}

/// `PUT /v1/users/{user_id}`.
pub async fn put_user(call: &Call<'_>, user: &str, body: &[u8]) -> Answer {
    let body: UserBody = super::parse_json_or_empty(body)?;
    // `initialize` falls back to this address and checks it then; checking it here with the same
    // rule refuses it while the caller is the one who sent it, and before anything is written.
    if let Some(email) = body.email.as_deref() {
        check_email(email)?;
    }
    let profile = ProfileUpdate {
        email: body.email.as_deref(),
        name: body.name.as_deref(),
        metadata: metadata(body.metadata),
    };
    let (created, lsn) =
        call.state
            .engine
            .upsert_user(&call.tenant, user, profile, &call.context(None))?;
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
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
pub fn get_user(call: &Call<'_>, user: &str) -> Answer {
    let view = call.tenant.user(user)?;
    ok(&user_json(call, &view, call.tenant.default_currency()))
}

/// `GET /v1/users/{user_id}/wallet[?currency=]`.
pub fn get_wallet(call: &Call<'_>, user: &str, query: Option<&str>) -> Answer {
    let mut currency = call.tenant.default_currency();
    for (name, value) in super::query_pairs(query) {
        match name.as_ref() {
            "currency" => currency = Currency::new(&value)?,
            _ => {
                return Err(Problem::invalid(format!(
                    "unknown query parameter {name:?}"
                )))
            }
        }
    }
    let view = call.tenant.user(user)?;
    ok(&wallet_json(call, &view, currency))
}

/// `POST /v1/users/{user_id}/credit`.
pub async fn credit(call: &Call<'_>, user: &str, bytes: &[u8]) -> Answer {
    let body: CreditBody = super::parse_json(bytes)?;
    let kind = body.kind.unwrap_or(CreditKind::Grant);
    if kind != CreditKind::Grant {
        super::auth::require(call.role, Role::Admin)?;
    }
    let reason = body.reason.as_deref().filter(|r| !r.trim().is_empty());
    if call.role >= Role::Admin && reason.is_none() {
        return Err(
            Problem::invalid("credits made with an admin key need a reason")
                .with("field", "reason"),
        );
    }
    let request = CreditRequest {
        user,
        amount: body.amount,
        kind,
        currency: currency(body.currency.as_ref())?,
        description: body.description.as_deref().or(reason),
        reference: body.reference.as_deref(),
        metadata: metadata(body.metadata),
    };
    let done = call.state.engine.credit(
        &call.tenant,
        &request,
        &call.context(call.idempotency(bytes)),
    )?;
    call.durable(&done).await?;
    if !done.replayed {
        call.state.metrics.credit(kind);
    }
    let Outcome::Credit {
        entry_id,
        amount,
        balance,
        available,
    } = done.outcome
    else {
        return Err(unexpected(&done));
    };
    Ok(replayed(
        json_response(
            StatusCode::OK,
            &CreditAnswer {
                entry_id: PrefixedId(ENTRY_PREFIX, entry_id),
                amount,
                balance,
                available,
            },
        ),
        &done,
    ))
}

fn unexpected(done: &Done) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        format!("unexpected outcome {:?}", done.outcome),
    )
}

/// Adds `topup_url` to a 402.
fn with_topup(call: &Call<'_>, user: &str, problem: Problem) -> Problem {
    if problem.status == StatusCode::PAYMENT_REQUIRED {
        problem.with("topup_url", call.topup_url(user))
    } else {
        problem
    }
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
        balance,
        available,
        dry_run,
    })
}

/// `POST /v1/users/{user_id}/debit`.
pub async fn debit(call: &Call<'_>, user: &str, bytes: &[u8]) -> Answer {
    let body: DebitBody = super::parse_json(bytes)?;
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
    let done = match call.state.engine.debit(
        &call.tenant,
        &request,
        &call.context(call.idempotency(bytes)),
    ) {
        Ok(done) => done,
        Err(error) => {
            if !request.dry_run {
                metrics.debit(debit_outcome(&error));
            }
            return Err(with_topup(call, user, error.into()));
        }
    };
    call.durable(&done).await?;
    if !request.dry_run && !done.replayed {
        metrics.debit(DebitOutcome::Ok);
    }
    Ok(replayed(
        json_response(StatusCode::OK, &debit_answer(&done, request.dry_run)?),
        &done,
    ))
}

/// `POST /v1/debits/batch`: each debit is applied on its own; one wait covers them all.
pub async fn batch_debit(call: &Call<'_>, bytes: &[u8]) -> Answer {
    let body: BatchBody = super::parse_json(bytes)?;
    if body.debits.is_empty() || body.debits.len() > MAX_BATCH_DEBITS {
        return Err(Problem::invalid(format!(
            "debits must hold 1 to {MAX_BATCH_DEBITS} items"
        )));
    }
    let batch_fingerprint = call
        .idempotency_key
        .map(|_| fingerprint(&[b"batch", bytes]));
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
        call.state
            .engine
            .durable(last_lsn)
            .await
            .map_err(EngineError::from)?;
    }
    ok(&serde_json::json!({ "results": results }))
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

fn batch_result(
    call: &Call<'_>,
    item: &BatchItem<'_>,
    outcome: Result<Done, EngineError>,
) -> serde_json::Value {
    match outcome {
        Ok(done) => match debit_answer(&done, false) {
            Ok(answer) => serde_json::json!({
                "status": 200,
                "user_id": item.user_id,
                "entry_id": answer.entry_id,
                "charged": answer.charged,
                "balance": answer.balance,
                "available": answer.available,
                "replayed": done.replayed,
            }),
            Err(problem) => problem.body(),
        },
        Err(error) => {
            let problem = with_topup(call, &item.user_id, error.into());
            let mut body = problem.body();
            if let Some(object) = body.as_object_mut() {
                object.insert(
                    "user_id".into(),
                    serde_json::Value::String(item.user_id.to_string()),
                );
            }
            body
        }
    }
}

/// `POST /v1/users/{user_id}/reservations`.
pub async fn reserve(call: &Call<'_>, user: &str, bytes: &[u8]) -> Answer {
    let body: ReserveBody = super::parse_json(bytes)?;
    let request = ReserveRequest {
        user,
        spend: spend(body.amount, body.action.as_ref(), body.quantity)?,
        currency: currency(body.currency.as_ref())?,
        ttl_seconds: body.ttl_seconds,
        description: body.description.as_deref(),
        metadata: metadata(body.metadata),
        dry_run: body.dry_run.unwrap_or(false),
    };
    let done = call
        .state
        .engine
        .reserve(
            &call.tenant,
            &request,
            &call.context(call.idempotency(bytes)),
        )
        .map_err(|error| with_topup(call, user, error.into()))?;
    call.durable(&done).await?;
    let Outcome::Reserve {
        reservation_id,
        amount,
        expires_at_ms,
        available,
    } = done.outcome
    else {
        return Err(unexpected(&done));
    };
    let answer = ReserveAnswer {
        reservation_id: (!request.dry_run)
            .then_some(PrefixedId(RESERVATION_PREFIX, reservation_id)),
        amount,
        expires_at: Timestamp(expires_at_ms),
        available,
        dry_run: request.dry_run,
    };
    let status = if request.dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(replayed(json_response(status, &answer), &done))
}

fn reservation_id(text: &str) -> Result<u64, Problem> {
    parse_reservation_id(text).ok_or_else(|| EngineError::NotFound(Missing::Reservation).into())
}

/// `GET /v1/reservations/{id}`.
pub fn get_reservation(call: &Call<'_>, id: &str) -> Answer {
    let view = call.tenant.reservation(reservation_id(id)?)?;
    let (state, expires_at) = match view.state {
        ReservationState::Open { expires_at_ms } => ("open", Some(Timestamp(expires_at_ms))),
        ReservationState::Closed(how) => (super::problem::closed_as(how), None),
    };
    ok(&serde_json::json!({
        "reservation_id": PrefixedId(RESERVATION_PREFIX, view.reservation_id),
        "user_id": view.user_id,
        "state": state,
        "amount": view.amount,
        "currency": view.currency.map(|c| c.to_string()),
        "expires_at": expires_at,
    }))
}

/// `POST /v1/reservations/{id}/capture`.
pub async fn capture(call: &Call<'_>, id: &str, bytes: &[u8]) -> Answer {
    let body: CaptureBody = super::parse_json_or_empty(bytes)?;
    let id = reservation_id(id)?;
    let request = CaptureRequest {
        reservation_id: id,
        amount: body.amount,
        description: body.description.as_deref(),
        metadata: metadata(body.metadata),
    };
    let result = call.state.engine.capture(
        &call.tenant,
        &request,
        &call.context(call.idempotency(bytes)),
    );
    let done = match result {
        Ok(done) => done,
        Err(error @ EngineError::InsufficientCredits(_)) => {
            let owner = call
                .tenant
                .reservation(id)
                .map(|view| view.user_id)
                .unwrap_or_default();
            return Err(with_topup(call, &owner, error.into()));
        }
        Err(error) => return Err(error.into()),
    };
    call.durable(&done).await?;
    let Outcome::Capture {
        entry_id,
        charged,
        released,
        balance,
        available,
    } = done.outcome
    else {
        return Err(unexpected(&done));
    };
    let answer = CaptureAnswer {
        reservation_id: PrefixedId(RESERVATION_PREFIX, id),
        entry_id: PrefixedId(ENTRY_PREFIX, entry_id),
        charged,
        released,
        balance,
        available,
    };
    Ok(replayed(json_response(StatusCode::OK, &answer), &done))
}

/// `POST /v1/reservations/{id}/extend`.
pub async fn extend(call: &Call<'_>, id: &str, bytes: &[u8]) -> Answer {
    let body: ExtendBody = super::parse_json(bytes)?;
    let id = reservation_id(id)?;
    let done = call.state.engine.extend(
        &call.tenant,
        id,
        body.ttl_seconds,
        &call.context(call.idempotency(bytes)),
    )?;
    call.durable(&done).await?;
    let Outcome::Extend {
        reservation_id,
        expires_at_ms,
    } = done.outcome
    else {
        return Err(unexpected(&done));
    };
    let answer = ExtendAnswer {
        reservation_id: PrefixedId(RESERVATION_PREFIX, reservation_id),
        expires_at: Timestamp(expires_at_ms),
    };
    Ok(replayed(json_response(StatusCode::OK, &answer), &done))
}

/// `POST /v1/reservations/{id}/release`.
pub async fn release(call: &Call<'_>, id: &str, bytes: &[u8]) -> Answer {
    let _: ReleaseBody = super::parse_json_or_empty(bytes)?;
    let id = reservation_id(id)?;
    let done =
        call.state
            .engine
            .release(&call.tenant, id, &call.context(call.idempotency(bytes)))?;
    call.durable(&done).await?;
    let Outcome::Release {
        reservation_id,
        released,
        available,
    } = done.outcome
    else {
        return Err(unexpected(&done));
    };
    let answer = ReleaseAnswer {
        reservation_id: PrefixedId(RESERVATION_PREFIX, reservation_id),
        released,
        available,
    };
    Ok(replayed(json_response(StatusCode::OK, &answer), &done))
}

/// `POST /v1/users/{user_id}/revoke` (admin).
pub async fn revoke(call: &Call<'_>, user: &str, bytes: &[u8]) -> Answer {
    let body: RevokeBody = super::parse_json(bytes)?;
    let request = RevokeRequest {
        user,
        amount: body.amount,
        currency: currency(body.currency.as_ref())?,
        reason: &body.reason,
    };
    let done = call.state.engine.revoke(
        &call.tenant,
        &request,
        &call.context(call.idempotency(bytes)),
    )?;
    call.durable(&done).await?;
    let Outcome::Debit {
        entry_id,
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
    };
    Ok(replayed(json_response(StatusCode::OK, &answer), &done))
}

/// `PUT /v1/users/{user_id}/overdraft` (admin).
pub async fn put_overdraft(call: &Call<'_>, user: &str, bytes: &[u8]) -> Answer {
    let body: OverdraftBody = super::parse_json(bytes)?;
    let currency = currency(body.currency.as_ref())?;
    let lsn = call.state.engine.set_overdraft(
        &call.tenant,
        user,
        currency,
        body.overdraft_limit,
        &call.context(None),
    )?;
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
    let view = call.tenant.user(user)?;
    ok(&wallet_json(
        call,
        &view,
        currency.unwrap_or(call.tenant.default_currency()),
    ))
}

/// `GET /v1/actions`.
pub fn list_actions(call: &Call<'_>) -> Answer {
    let actions: Vec<ActionJson> = call
        .tenant
        .actions()
        .into_iter()
        .map(ActionJson::from)
        .collect();
    ok(&serde_json::json!({ "actions": actions }))
}

/// `GET /v1/actions/{action}`.
pub fn get_action(call: &Call<'_>, name: &str) -> Answer {
    let action = call
        .tenant
        .actions()
        .into_iter()
        .find(|a| a.action == name)
        .ok_or_else(action_not_found)?;
    ok(&ActionJson::from(action))
}

fn action_not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "action-not-found",
        "Action not found",
        "no such action in this tenant's catalogue",
    )
}

/// `PUT /v1/actions/{action}` (admin).
pub async fn put_action(call: &Call<'_>, name: &str, bytes: &[u8]) -> Answer {
    let body: ActionBody = super::parse_json(bytes)?;
    let existed = call.tenant.actions().iter().any(|a| a.action == name);
    let currency = currency(body.currency.as_ref())?;
    let lsn = call.state.engine.put_action(
        &call.tenant,
        name,
        body.cost,
        currency,
        body.description.as_deref(),
        &call.context(None),
    )?;
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
    let action = call
        .tenant
        .actions()
        .into_iter()
        .find(|a| a.action == name)
        .ok_or_else(action_not_found)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &ActionJson::from(action)))
}

/// `DELETE /v1/actions/{action}` (admin).
pub async fn delete_action(call: &Call<'_>, name: &str) -> Answer {
    let lsn = match call
        .state
        .engine
        .delete_action(&call.tenant, name, &call.context(None))
    {
        Err(EngineError::NotFound(Missing::Action)) => return Err(action_not_found()),
        other => other?,
    };
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
    Ok(super::empty_response(StatusCode::NO_CONTENT))
}

/// `GET /v1/packages`.
pub fn list_packages(call: &Call<'_>) -> Answer {
    let packages: Vec<PackageJson> = call
        .tenant
        .packages()
        .into_iter()
        .map(PackageJson::from)
        .collect();
    ok(&serde_json::json!({ "packages": packages }))
}

/// `GET /v1/packages/{package_id}`.
pub fn get_package(call: &Call<'_>, id: &str) -> Answer {
    let package = call
        .tenant
        .packages()
        .into_iter()
        .find(|p| p.package_id == id)
        .ok_or(EngineError::NotFound(Missing::Package))?;
    ok(&PackageJson::from(package))
}

/// `PUT /v1/packages/{package_id}` (admin).
pub async fn put_package(call: &Call<'_>, id: &str, bytes: &[u8]) -> Answer {
    let body: PackageBody = super::parse_json(bytes)?;
    let existed = call.tenant.packages().iter().any(|p| p.package_id == id);
    let terms = PackageSpec {
        name: &body.name,
        credits: body.credits,
        currency: currency(body.currency.as_ref())?.unwrap_or(call.tenant.default_currency()),
        price_minor: body.price_minor,
        price_currency: Currency::new(&body.price_currency)?,
        active: body.active.unwrap_or(true),
    };
    let lsn = call
        .state
        .engine
        .put_package(&call.tenant, id, &terms, &call.context(None))?;
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
    let package = call
        .tenant
        .packages()
        .into_iter()
        .find(|p| p.package_id == id)
        .ok_or(EngineError::NotFound(Missing::Package))?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &PackageJson::from(package)))
}

/// `DELETE /v1/packages/{package_id}` (admin).
pub async fn delete_package(call: &Call<'_>, id: &str) -> Answer {
    let lsn = call
        .state
        .engine
        .delete_package(&call.tenant, id, &call.context(None))?;
    call.state
        .engine
        .durable(lsn)
        .await
        .map_err(EngineError::from)?;
    Ok(super::empty_response(StatusCode::NO_CONTENT))
}

/// `GET /v1/billing/bootstrap/{user_id}`: what a client needs to show a wallet and a top-up page.
pub fn bootstrap(call: &Call<'_>, user: &str) -> Answer {
    let view = call.tenant.user(user)?;
    let packages: Vec<PackageJson> = call
        .tenant
        .packages()
        .into_iter()
        .filter(|p| p.active)
        .map(PackageJson::from)
        .collect();
    let actions: Vec<ActionJson> = call
        .tenant
        .actions()
        .into_iter()
        .map(ActionJson::from)
        .collect();
    ok(&serde_json::json!({
        "wallet": wallet_json(call, &view, call.tenant.default_currency()),
        "available_packages": packages,
        "actions": actions,
    }))
}

/// `GET /v1/tenants` (platform).
pub fn list_tenants(call: &Call<'_>) -> Answer {
    let tenants: Vec<TenantJson> = call
        .state
        .engine
        .tenant_views()
        .into_iter()
        .map(|view| {
            let tenant = call.state.engine.tenant(&view.tenant_id);
            tenant_json(call, view, tenant.as_deref())
        })
        .collect();
    ok(&serde_json::json!({ "tenants": tenants }))
}

/// `GET /v1/tenants/{tenant_id}` (platform).
pub fn get_tenant(call: &Call<'_>, id: &str) -> Answer {
    let tenant = call
        .state
        .engine
        .tenant(id)
        .ok_or(EngineError::NotFound(Missing::Tenant))?;
    ok(&tenant_json(call, tenant.view(), Some(&tenant)))
}

/// A tenant as the API shows it: its view and where its events go.
fn tenant_json(call: &Call<'_>, view: TenantView, tenant: Option<&Tenant>) -> TenantJson {
    let mut json = TenantJson::from(view);
    json.webhook_url = tenant
        .and_then(|tenant| call.state.engine.tenant_webhook(tenant))
        .map(|(url, _)| url);
    json
}

/// `PUT /v1/tenants/{tenant_id}` (platform).
pub async fn put_tenant(call: &Call<'_>, id: &str, bytes: &[u8]) -> Answer {
    let body: TenantBody = super::parse_json_or_empty(bytes)?;
    let default_currency = currency(body.default_currency.as_ref())?;
    // Every check before the first change: a refused request changes nothing.
    let webhook = match (body.webhook_url.as_deref(), body.webhook_secret.as_deref()) {
        (None, None) => None,
        (Some(""), _) => Some((None, None)),
        (Some(url), Some(secret)) => {
            crate::engine::check_tenant_webhook(Some(url), Some(secret))?;
            Some((Some(url), Some(secret)))
        }
        _ => {
            return Err(
                Problem::invalid("webhook_url and webhook_secret go together")
                    .with("field", "webhook_secret"),
            )
        }
    };
    let (tenant, created, lsn) = call.state.engine.upsert_tenant(
        id,
        body.name.as_deref(),
        default_currency,
        &call.context(None),
    )?;
    let mut last = lsn;
    if let Some((url, secret)) = webhook {
        last = call
            .state
            .engine
            .set_tenant_webhook(&tenant, url, secret, &call.context(None))?;
    }
    call.state
        .engine
        .durable(last.max(lsn))
        .await
        .map_err(EngineError::from)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let json = tenant_json(call, tenant.view(), Some(&tenant));
    Ok(json_response(status, &json))
}
