//! The reservations routes: holding credits for work whose cost is known only at the end
//! (`POST /v1/users/{user_id}/reservations`), listing a user's open ones (`GET` there), then
//! reading, capturing, extending or releasing the reservation (`/v1/reservations/{reservation_id}/…`).

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::call::{ok, unexpected, written, Answer, Call};
use crate::api::dto::{
    currency, metadata, spend, PrefixedId, Timestamp, ENTRY_PREFIX, RESERVATION_PREFIX,
};
use crate::api::problem::{closed_as, Problem};
use crate::api::request::{parse_json, parse_json_or_empty, query_pairs, unknown_parameter};
use crate::engine::types::Outcome;
use crate::engine::types::{EngineError, Missing};
use crate::engine::{CaptureRequest, ReservationState, ReservationView, ReserveRequest};

/// `POST /v1/users/{user_id}/reservations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveBody<'a> {
    #[serde(default)]
    amount: Option<i64>,
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(default)]
    quantity: Option<u64>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// `POST /v1/reservations/{id}/capture`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptureBody<'a> {
    #[serde(default)]
    amount: Option<i64>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// `POST /v1/reservations/{id}/extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    ttl_seconds: u64,
}

/// `POST /v1/reservations/{id}/release`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {}

/// Answer to a reservation.
#[derive(Debug, Serialize)]
struct ReserveAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation_id: Option<PrefixedId>,
    amount: i64,
    /// Of `amount`, what the wallet holds and what the user's credit pool holds.
    from_wallet: i64,
    from_pool: i64,
    expires_at: Timestamp,
    available: i64,
    #[serde(skip_serializing_if = "crate::api::dto::is_false")]
    dry_run: bool,
}

/// Answer to a capture.
#[derive(Debug, Serialize)]
struct CaptureAnswer {
    reservation_id: PrefixedId,
    entry_id: PrefixedId,
    charged: i64,
    /// Of `charged`, what the wallet paid and what the user's credit pool paid.
    from_wallet: i64,
    from_pool: i64,
    released: i64,
    balance: i64,
    available: i64,
}

/// Answer to an extension.
#[derive(Debug, Serialize)]
struct ExtendAnswer {
    reservation_id: PrefixedId,
    expires_at: Timestamp,
}

/// Answer to a release.
#[derive(Debug, Serialize)]
struct ReleaseAnswer {
    reservation_id: PrefixedId,
    released: i64,
    available: i64,
}

/// Parses `rsv_<n>`.
fn parse_reservation_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix(RESERVATION_PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `POST /v1/users/{user_id}/reservations`.
pub async fn reserve(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let body: ReserveBody = parse_json(&call.body)?;
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
        .reserve(&call.tenant, &request, &call.context(call.idempotency()))
        .map_err(|error| call.spend_problem(user, error))?;
    call.durable(done.lsn).await?;
    let Outcome::Reserve {
        reservation_id,
        amount,
        from_pool,
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
        from_wallet: amount - from_pool,
        from_pool,
        expires_at: Timestamp(expires_at_ms),
        available,
        dry_run: request.dry_run,
    };
    let status = if request.dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    written(status, &answer, done.replayed)
}

/// The id of `rsv_<n>`; 404 for anything else, as for an id no reservation has.
fn reservation_id(text: &str) -> Result<u64, Problem> {
    parse_reservation_id(text).ok_or_else(|| EngineError::NotFound(Missing::Reservation).into())
}

/// A reservation as the API shows it, open or closed (a closed one still says what it held).
fn reservation_json(view: &ReservationView) -> serde_json::Value {
    let (state, expires_at) = match view.state {
        ReservationState::Open { expires_at_ms } => ("open", Some(Timestamp(expires_at_ms))),
        ReservationState::Closed(how) => (closed_as(how), None),
    };
    serde_json::json!({
        "reservation_id": PrefixedId(RESERVATION_PREFIX, view.reservation_id),
        "user_id": view.user_id,
        "state": state,
        "amount": view.amount,
        "currency": view.currency.map(|c| c.to_string()),
        "expires_at": expires_at,
    })
}

/// `GET /v1/reservations/{id}`.
pub async fn get_reservation(call: &Call<'_>) -> Answer {
    let view = call.tenant.reservation(reservation_id(&call.param)?)?;
    ok(&reservation_json(&view))
}

/// `GET /v1/users/{user_id}/reservations`: the user's open reservations, oldest first.
pub async fn list_reservations(call: &Call<'_>) -> Answer {
    if let Some((name, _)) = query_pairs(call.query).next() {
        return Err(unknown_parameter(&name));
    }
    let now_ms = call.state.engine.now_ms();
    let views = call.tenant.open_reservations(&call.param, now_ms)?;
    let reservations: Vec<serde_json::Value> = views.iter().map(reservation_json).collect();
    ok(&serde_json::json!({ "reservations": reservations }))
}

/// `POST /v1/reservations/{id}/capture`.
pub async fn capture(call: &Call<'_>) -> Answer {
    let body: CaptureBody = parse_json_or_empty(&call.body)?;
    let id = reservation_id(&call.param)?;
    let request = CaptureRequest {
        reservation_id: id,
        amount: body.amount,
        description: body.description.as_deref(),
        metadata: metadata(body.metadata),
    };
    let result =
        call.state
            .engine
            .capture(&call.tenant, &request, &call.context(call.idempotency()));
    let done = match result {
        Ok(done) => done,
        Err(error @ EngineError::InsufficientCredits(_)) => {
            let owner = call
                .tenant
                .reservation(id)
                .map(|view| view.user_id)
                .unwrap_or_default();
            return Err(call.spend_problem(&owner, error));
        }
        Err(error) => return Err(error.into()),
    };
    call.durable(done.lsn).await?;
    let Outcome::Capture {
        entry_id,
        charged,
        from_pool,
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
        from_wallet: charged - from_pool,
        from_pool,
        released,
        balance,
        available,
    };
    written(StatusCode::OK, &answer, done.replayed)
}

/// `POST /v1/reservations/{id}/extend`.
pub async fn extend(call: &Call<'_>) -> Answer {
    let body: ExtendBody = parse_json(&call.body)?;
    let id = reservation_id(&call.param)?;
    let done = call.state.engine.extend(
        &call.tenant,
        id,
        body.ttl_seconds,
        &call.context(call.idempotency()),
    )?;
    call.durable(done.lsn).await?;
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
    written(StatusCode::OK, &answer, done.replayed)
}

/// `POST /v1/reservations/{id}/release`.
pub async fn release(call: &Call<'_>) -> Answer {
    let _: ReleaseBody = parse_json_or_empty(&call.body)?;
    let id = reservation_id(&call.param)?;
    let done = call
        .state
        .engine
        .release(&call.tenant, id, &call.context(call.idempotency()))?;
    call.durable(done.lsn).await?;
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
    written(StatusCode::OK, &answer, done.replayed)
}
