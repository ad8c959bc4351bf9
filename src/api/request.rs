//! Reading what a request sends: its body, read under `server.max_body_bytes`, the read timeout
//! and the shared body budget; a JSON object parsed from it (400 for bad JSON, 422 for the wrong
//! shape); its query string as decoded pairs. Nothing here knows a route.

use std::future::Future as _;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

use super::budget::{BodyClaim, BudgetExhausted, Metered};
use super::dto;
use super::problem::Problem;
use super::ApiState;
use crate::metrics::Refusal;

/// Reads a body of at most `server.max_body_bytes` within `server.body_read_timeout_seconds`,
/// under the body budget: the declared `Content-Length` is claimed before a byte is read, a
/// chunked body chunk by chunk. Past the budget: 503 `server-busy`, and the connection is closed
/// (what is left of the body is never read). The claim is returned with the bytes and must be
/// kept as long as they are.
pub(super) async fn read_body<'s>(
    body: Incoming,
    parts: &Parts,
    state: &'s ApiState,
) -> Result<(Bytes, BodyClaim<'s>), Problem> {
    let server = &state.server;
    let limit = server.max_body_bytes;
    let mut declared = 0;
    if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
        declared = length
            .to_str()
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| Problem::malformed("bad Content-Length"))?;
        if declared > limit {
            return Err(Problem::too_large(limit));
        }
    }
    let busy = |exhausted: BudgetExhausted| {
        state.metrics.connections.refused(Refusal::BodyBudget, 1);
        Problem::busy(format!(
            "the server holds server.body_budget_bytes ({} bytes) of request bodies; retry shortly",
            exhausted.limit
        ))
    };
    let mut claim = state.body_budget.claim(declared).map_err(busy)?;
    // Bodies are JSON whatever Content-Type says (curl -d sends a form type); bad JSON gets 400.
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let seconds = server.body_read_timeout_seconds.max(1);
    let mut read = std::pin::pin!(Limited::new(Metered::new(body, &mut claim), limit).collect());
    // Most bodies come in the same segment as their head and are whole at the first look; only
    // one still on its way starts the clock. Setting up and dropping the timeout (a clock read,
    // the runtime's handle, a timer entry) was about a sixth of what reading a small body cost.
    let read = match std::future::poll_fn(|context| Poll::Ready(read.as_mut().poll(context))).await
    {
        Poll::Ready(read) => read,
        Poll::Pending => {
            let Ok(read) = tokio::time::timeout(Duration::from_secs(seconds), read).await else {
                return Err(Problem::body_timeout(seconds));
            };
            read
        }
    };
    match read {
        Ok(collected) => Ok((collected.to_bytes(), claim)),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Problem::too_large(limit as u64))
        }
        Err(error) => match error.downcast::<BudgetExhausted>() {
            Ok(exhausted) => Err(busy(*exhausted)),
            Err(error) => Err(Problem::malformed(format!(
                "could not read the body: {error}"
            ))),
        },
    }
}

/// Parses a JSON object body: 400 if it is not JSON, 422 if it is JSON of the wrong shape
/// (an array or a scalar included).
pub fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Problem> {
    let parsed = serde_json::from_slice::<dto::Object<T>>(bytes);
    parsed.map(|dto::Object(body)| body).map_err(|error| {
        // A shape error can surface before a syntax error further on; only valid JSON gets 422.
        let is_json = || serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        match error.classify() {
            serde_json::error::Category::Data if is_json() => Problem::invalid(error.to_string()),
            _ if bytes.is_empty() => Problem::malformed("a JSON body is required"),
            _ => Problem::malformed(format!("the body is not valid JSON: {error}")),
        }
    })
}

/// Like [`parse_json`], but an empty body counts as `{}`.
pub fn parse_json_or_empty<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return parse_json(b"{}");
    }
    parse_json(bytes)
}

/// The 422 for a query parameter a route does not take.
pub fn unknown_parameter(name: &str) -> Problem {
    Problem::invalid(format!("unknown query parameter {name:?}"))
}

/// `name=value` pairs of a query string, percent-decoded (`+` is a space).
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (String, String)> + '_ {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query(name), decode_query(value))
        })
}

fn decode_query(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let Some(byte) = text
                    .get(i + 1..i + 3)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    out.push(byte);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
