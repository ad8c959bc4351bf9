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
    fresh_request_id(state.request_prefix, number)
}

/// `{prefix:08x}-{number:x}`, cut from a buffer of the thread's and shared by reference count,
/// rather than a `String` formatted and copied into an allocation of the header's own: this runs
/// on every request, and that allocation and its free were about 2 % of a core thread's samples.
fn fresh_request_id(prefix: u32, number: u64) -> HeaderValue {
    let mut id = [0_u8; 25];
    let len = write_request_id(prefix, number, &mut id);
    let bytes = REQUEST_IDS.with_borrow_mut(|buffer| {
        if buffer.capacity() - buffer.len() < id.len() {
            *buffer = bytes::BytesMut::with_capacity(REQUEST_ID_BUFFER);
        }
        buffer.extend_from_slice(&id[..len]);
        buffer.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes).unwrap_or(HeaderValue::from_static("0"))
}

/// Bytes of the buffer request ids are cut from: one allocation for about 200 ids.
const REQUEST_ID_BUFFER: usize = 4096;

thread_local! {
    /// Where this thread writes the request ids it makes up.
    static REQUEST_IDS: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// Writes `{prefix:08x}-{number:x}` into `out` and returns its length (at most 8 + 1 + 16).
fn write_request_id(prefix: u32, number: u64, out: &mut [u8; 25]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (index, byte) in out[..8].iter_mut().enumerate() {
        *byte = HEX[(prefix >> (28 - 4 * index) & 0xf) as usize];
    }
    out[8] = b'-';
    let digits = (64 - number.leading_zeros()).div_ceil(4).max(1) as usize;
    for index in 0..digits {
        out[9 + index] = HEX[(number >> (4 * (digits - 1 - index)) & 0xf) as usize];
    }
    9 + digits
}

/// A 200 JSON answer.
pub(crate) fn ok<T: Serialize>(value: &T) -> Answer {
    Ok(json_response(StatusCode::OK, value))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fresh_request_id_is_the_prefix_and_the_number_in_hex() {
        for (prefix, number) in [
            (0_u32, 0_u64),
            (0x84c0_4304, 0x1e),
            (u32::MAX, u64::MAX),
            (0x0000_00ab, 1 << 60),
            (0x1234_5678, 0xf),
            (7, 0x10),
        ] {
            let mut out = [0_u8; 25];
            let len = super::write_request_id(prefix, number, &mut out);
            let written = std::str::from_utf8(&out[..len]).unwrap();
            assert_eq!(written, format!("{prefix:08x}-{number:x}"));
        }
    }

    /// Ids cut from the thread's buffer stay as written while later ones are cut and the
    /// buffer is replaced.
    #[test]
    fn request_ids_cut_from_the_buffer_stay_intact() {
        let ids: Vec<http::HeaderValue> = (0..1_000_u64)
            .map(|number| super::fresh_request_id(0xc0ffee, number))
            .collect();
        for (number, id) in ids.iter().enumerate() {
            assert_eq!(id.to_str().unwrap(), format!("00c0ffee-{number:x}"));
        }
    }
}
