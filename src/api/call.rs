//! The context a route handler works in, and the machinery every write handler shares.
//!
//! - [`Routed`]: a request after routing, its body not read yet. It becomes an [`Open`] for an
//!   open route (no key), or a [`Call`] for a keyed one: the key authenticated (401), its role
//!   checked against the route's (403), the tenant resolved (`X-Tenant`), the `Idempotency-Key`
//!   read, and only then the body, so an unauthenticated request never spends the body budget.
//! - `Call::durable`: a write's answer waits for the log's durable watermark to cover its
//!   record; a log that fails meanwhile answers with the problem that says what is known.
//! - `Call::idempotency` and `written`: the key with the fingerprint of this request, and
//!   the `Idempotent-Replayed` mark on an answer the engine gave from its idempotency table.
//! - `request_id`: the `X-Request-Id` every answer carries.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::budget::BodyClaim;
use super::problem::Problem;
use super::response::json_response;
use super::{auth, request, ApiState};
use crate::config::Role;
use crate::engine::types::{EngineError, Fingerprint};
use crate::engine::{Context, Done, Engine, IdempotencyKey, Tenant};

/// What a handler answers: a response, or a problem the pipeline renders.
pub type Answer = Result<Response<Full<Bytes>>, Problem>;

/// A request after routing, before its body is read.
pub struct Routed<'a> {
    /// The server state.
    pub state: &'a ApiState,
    /// The request head.
    pub parts: &'a Parts,
    /// The route's `{…}` parameter, decoded, or empty.
    pub param: Cow<'a, str>,
    /// The body, not read yet.
    pub body: hyper::body::Incoming,
}

impl<'a> Routed<'a> {
    /// The request of an open route: the body of a POST or PUT read, no key asked for. A webhook
    /// carries the gateway's signature, the sandbox page its reference.
    pub async fn open(self) -> Result<Open<'a>, Problem> {
        let (body, claim) = read_sent_body(self.state, self.parts, self.body).await?;
        Ok(Open {
            state: self.state,
            headers: &self.parts.headers,
            query: self.parts.uri.query(),
            param: self.param,
            body,
            _claim: claim,
        })
    }

    /// The request of a route that needs a key of at least `needed`: 401 without a known key,
    /// 403 for a lesser role or a foreign `X-Tenant`, 400 for an `Idempotency-Key` that is not
    /// visible ASCII; then the body of a POST or PUT is read.
    pub async fn call(self, needed: Role) -> Result<Call<'a>, Problem> {
        let Routed {
            state,
            parts,
            param,
            body,
        } = self;
        let key = state.keys.authenticate(&parts.headers)?;
        auth::require(key.role, needed)?;
        let tenant = auth::tenant_of(key, &parts.headers, &state.engine)?;
        let idempotency_key = match parts.headers.get("idempotency-key") {
            Some(value) => Some(
                value
                    .to_str()
                    .map_err(|_| Problem::malformed("Idempotency-Key is not visible ASCII"))?,
            ),
            None => None,
        };
        let (body, claim) = read_sent_body(state, parts, body).await?;
        Ok(Call {
            state,
            tenant,
            actor: &key.name,
            role: key.role,
            param,
            query: parts.uri.query(),
            body,
            method: &parts.method,
            path_and_query: parts.uri.path_and_query().map_or("", |p| p.as_str()),
            idempotency_key,
            _claim: claim,
        })
    }
}

/// The body of a POST, PUT or PATCH, with its claim on the body budget; nothing for other
/// methods.
async fn read_sent_body<'s>(
    state: &'s ApiState,
    parts: &Parts,
    body: hyper::body::Incoming,
) -> Result<(Bytes, Option<BodyClaim<'s>>), Problem> {
    if !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        return Ok((Bytes::new(), None));
    }
    let (bytes, claim) = request::read_body(body, parts, state).await?;
    Ok((bytes, Some(claim)))
}

/// The request of an open route.
pub struct Open<'a> {
    pub(crate) state: &'a ApiState,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: Option<&'a str>,
    pub(crate) param: Cow<'a, str>,
    pub(crate) body: Bytes,
    /// Held as long as the body: the bytes count against the body budget until the answer.
    _claim: Option<BodyClaim<'a>>,
}

/// A request made with a key whose role the route accepts, in the tenant it acts in.
pub struct Call<'a> {
    pub(crate) state: &'a ApiState,
    pub(crate) tenant: Cow<'a, Arc<Tenant>>,
    pub(crate) actor: &'a str,
    pub(crate) role: Role,
    pub(crate) param: Cow<'a, str>,
    pub(crate) query: Option<&'a str>,
    pub(crate) body: Bytes,
    pub(crate) idempotency_key: Option<&'a str>,
    method: &'a Method,
    path_and_query: &'a str,
    /// Held as long as the body: the bytes count against the body budget until the answer.
    _claim: Option<BodyClaim<'a>>,
}

impl Call<'_> {
    /// The request's idempotency key with the fingerprint of this method, path and body.
    pub(crate) fn idempotency(&self) -> Option<IdempotencyKey<'_>> {
        let key = self.idempotency_key?;
        Some(IdempotencyKey {
            key,
            fingerprint: fingerprint(&[
                self.method.as_str().as_bytes(),
                self.path_and_query.as_bytes(),
                &self.body,
            ]),
        })
    }

    /// The engine's context of a change made by this request.
    pub(crate) fn context<'b>(&'b self, idempotency: Option<IdempotencyKey<'b>>) -> Context<'b> {
        Context {
            actor: self.actor,
            idempotency,
        }
    }

    /// Waits until the log's durable watermark covers `lsn` (0: nothing was written).
    pub(crate) async fn durable(&self, lsn: u64) -> Result<(), Problem> {
        wait_durable(&self.state.engine, lsn).await
    }

    /// The problem for an engine error, amounts shown with the tenant's decimals for their
    /// currency, and an unknown currency answered with the currencies the tenant has.
    pub(crate) fn problem(&self, error: EngineError) -> Problem {
        match error {
            EngineError::InsufficientCredits(shortfall) => {
                Problem::insufficient(&shortfall, self.tenant.decimals(shortfall.currency))
            }
            EngineError::GrantCapReached(cap) => {
                Problem::grant_cap(&cap, self.tenant.decimals(cap.currency))
            }
            EngineError::UnknownCurrency(currency) => {
                let codes: Vec<String> = (self.tenant.currencies().iter())
                    .map(|defined| defined.code.to_string())
                    .collect();
                Problem::unknown_currency(currency).with("currencies", codes)
            }
            other => other.into(),
        }
    }

    /// The problem of a refused spend of `user`'s: as [`Call::problem`], and a 402 gets
    /// `topup_url` (the bootstrap path of `user`, in the wallet's currency).
    pub(crate) fn spend_problem(&self, user: &str, error: EngineError) -> Problem {
        let problem = self.problem(error);
        match error {
            EngineError::InsufficientCredits(shortfall) => {
                let mut url = format!("{}/v1/billing/bootstrap/{user}", self.state.public_url);
                if shortfall.currency != self.tenant.default_currency() {
                    url.push_str("?currency=");
                    url.push_str(shortfall.currency.as_str());
                }
                problem.with("topup_url", url)
            }
            _ => problem,
        }
    }
}

/// Waits until `engine`'s log is durable through `lsn`. A log that failed after the record was
/// queued answers 500 `write-outcome-unknown` (see [`Problem::outcome_unknown`]).
pub(crate) async fn wait_durable(engine: &Engine, lsn: u64) -> Result<(), Problem> {
    if lsn > 0 {
        engine.durable(lsn).await.map_err(EngineError::from)?;
    }
    Ok(())
}

/// SHA-256 over the parts, each prefixed with its length, cut to 16 bytes.
pub(crate) fn fingerprint(parts: &[&[u8]]) -> Fingerprint {
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

/// A JSON answer to a write; `Idempotent-Replayed: true` when it was `replayed` from the
/// idempotency table.
pub(crate) fn written<T: Serialize>(status: StatusCode, value: &T, replayed: bool) -> Answer {
    let mut response = json_response(status, value);
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// 500 for an engine outcome of another kind than the operation gives.
pub(crate) fn unexpected(done: &Done) -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal error",
        format!("unexpected outcome {:?}", done.outcome),
    )
}

/// The client's `X-Request-Id` if it is sane, else a fresh one.
pub(super) fn request_id(state: &ApiState, parts: &Parts) -> HeaderValue {
    if let Some(value) = parts.headers.get("x-request-id") {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return value.clone();
        }
    }
    let number = state.requests.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{:08x}-{number:x}", state.request_prefix))
        .unwrap_or(HeaderValue::from_static("0"))
}

/// A 200 JSON answer.
pub(crate) fn ok<T: Serialize>(value: &T) -> Answer {
    Ok(json_response(StatusCode::OK, value))
}
