//! What a call can fail with. Every refusal of the API is an RFC 9457 problem whose `type` is a
//! stable URI, `https://creditd.dev/problems/<slug>`; [`ClientError`] has a variant per slug a
//! caller acts on, and [`ClientError::Problem`] for every other one, so that a slug this crate
//! does not know yet (a newer server) still surfaces with its status and body. A call that got no
//! answer at all is [`ClientError::Transport`] or [`ClientError::Timeout`].

use std::fmt;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

/// The prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "https://creditd.dev/problems/";

/// A problem answer: what every [`ClientError`] variant with an answer carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The HTTP status.
    pub status: u16,
    /// The full problem `type` URI (`https://creditd.dev/problems/user-not-found`).
    pub problem_type: String,
    /// The problem type's fixed summary.
    pub title: String,
    /// What went wrong this time.
    pub detail: String,
    /// The whole problem body, extension members included (`null` when it was not JSON).
    pub body: Value,
    /// The answer's `Retry-After`, when it had one in seconds.
    pub retry_after: Option<Duration>,
}

impl Problem {
    /// The last part of the `type` URI, such as `insufficient-credits`.
    pub fn slug(&self) -> &str {
        self.problem_type
            .strip_prefix(PROBLEM_TYPE_PREFIX)
            .unwrap_or(&self.problem_type)
    }

    /// The extension member `name` as text.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }

    /// The extension member `name` as an integer.
    pub fn integer(&self, name: &str) -> Option<i64> {
        self.body.get(name).and_then(Value::as_i64)
    }

    /// The problem of an answer with `status`, `headers` and `body`. A body that is not a JSON
    /// object (a proxy's error page) gives a problem with the status, an empty type and the start
    /// of the text as its detail.
    pub fn from_answer(status: StatusCode, headers: &HeaderMap, bytes: &[u8]) -> Problem {
        let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        let detail = text("detail").unwrap_or_else(|| {
            if body.is_object() {
                String::new()
            } else {
                String::from_utf8_lossy(&bytes[..bytes.len().min(500)]).into_owned()
            }
        });
        Problem {
            status: status.as_u16(),
            problem_type: text("type").unwrap_or_default(),
            title: text("title")
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned()),
            detail,
            body,
            retry_after,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.slug())?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Why a call failed. The variants with an answer carry its [`Problem`]; [`ClientError::status`],
/// [`ClientError::slug`] and [`ClientError::problem`] read it whatever the variant.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientError {
    /// 402 `insufficient-credits`: the wallet (and the pool it draws on) cannot pay. Nothing was
    /// written.
    InsufficientCredits {
        /// What the wallet holds.
        balance: i64,
        /// Balance less open reservations.
        available: i64,
        /// What the refused spend asked for.
        required: i64,
        /// Where the person can top up (the user's bootstrap URL).
        topup_url: String,
        /// What a spend may take now: available plus the overdraft limit.
        spendable: i64,
        /// The wallet's currency.
        currency: String,
        /// For a pool member: what the pool could still give it today.
        pool_available: Option<i64>,
        /// The whole answer.
        problem: Box<Problem>,
    },
    /// 422 `idempotency-key-reused`: the key went with a different request before.
    IdempotencyKeyReused(Box<Problem>),
    /// 409 `idempotency-key-in-flight`: a request with this key is still running. Retried.
    IdempotencyKeyInFlight(Box<Problem>),
    /// 404 `user-not-found`.
    UserNotFound(Box<Problem>),
    /// 409 `reservation-closed`: captured, released or expired already (`closed_as` in the body).
    ReservationClosed(Box<Problem>),
    /// 404 `reservation-not-found`.
    ReservationNotFound(Box<Problem>),
    /// 422 `unknown-action`: no such catalogue action.
    UnknownAction(Box<Problem>),
    /// 422 `unknown-currency`: the tenant has no such currency.
    UnknownCurrency(Box<Problem>),
    /// 403 `grant-cap-exceeded`: a service key's grants today would pass its daily cap.
    GrantCapExceeded(Box<Problem>),
    /// 404 `pool-not-found`.
    PoolNotFound(Box<Problem>),
    /// 404 `package-not-found`.
    PackageNotFound(Box<Problem>),
    /// 401 `unauthorized`: no key, or an unknown one.
    Unauthorized(Box<Problem>),
    /// 403 `forbidden`: the key's role may not do this.
    Forbidden(Box<Problem>),
    /// 422 `invalid-request` or 400 `malformed-request`; the body's `field` names the bad field
    /// when the server knows it.
    InvalidRequest(Box<Problem>),
    /// 503: busy, not ready, shutting down, or the log refuses writes. Retried, after the
    /// answer's `Retry-After` (in the problem) when it is longer than the backoff.
    ServerBusy(Box<Problem>),
    /// 500 `write-outcome-unknown`: the log failed after the change was queued, so it may or may
    /// not have taken effect. Retried with the same `Idempotency-Key`, which answers what happened
    /// once the server is back; this surfaces only when the retries ran out.
    WriteOutcomeUnknown(Box<Problem>),
    /// Any other problem answer, such as one whose slug this crate does not know.
    Problem(Box<Problem>),
    /// No answer: the connection was refused, reset or closed before the answer. Retried.
    Transport(String),
    /// No answer within the call's timeout (all attempts included).
    Timeout(Duration),
    /// The answer was not what the API promises, or the request could not be built.
    Decode(String),
}

impl ClientError {
    /// The error for a non-2xx answer: the variant named after its slug, a 503 as
    /// [`ClientError::ServerBusy`] whatever its slug, else [`ClientError::Problem`].
    pub fn from_answer(status: StatusCode, headers: &HeaderMap, bytes: &[u8]) -> ClientError {
        let problem = Problem::from_answer(status, headers, bytes);
        if problem.slug() == "insufficient-credits" || (status == 402 && problem.body.is_object()) {
            return ClientError::InsufficientCredits {
                balance: problem.integer("balance").unwrap_or(0),
                available: problem.integer("available").unwrap_or(0),
                required: problem.integer("required").unwrap_or(0),
                topup_url: problem.text("topup_url").unwrap_or("").to_owned(),
                spendable: problem
                    .integer("spendable")
                    .or_else(|| problem.integer("available"))
                    .unwrap_or(0),
                currency: problem.text("currency").unwrap_or("").to_owned(),
                pool_available: problem.integer("pool_available"),
                problem: Box::new(problem),
            };
        }
        let boxed = Box::new(problem);
        match boxed.slug() {
            "idempotency-key-reused" => ClientError::IdempotencyKeyReused(boxed),
            "idempotency-key-in-flight" => ClientError::IdempotencyKeyInFlight(boxed),
            "user-not-found" => ClientError::UserNotFound(boxed),
            "reservation-closed" => ClientError::ReservationClosed(boxed),
            "reservation-not-found" => ClientError::ReservationNotFound(boxed),
            "unknown-action" => ClientError::UnknownAction(boxed),
            "unknown-currency" => ClientError::UnknownCurrency(boxed),
            "grant-cap-exceeded" => ClientError::GrantCapExceeded(boxed),
            "pool-not-found" => ClientError::PoolNotFound(boxed),
            "package-not-found" => ClientError::PackageNotFound(boxed),
            "unauthorized" => ClientError::Unauthorized(boxed),
            "forbidden" => ClientError::Forbidden(boxed),
            "invalid-request" | "malformed-request" => ClientError::InvalidRequest(boxed),
            "write-outcome-unknown" => ClientError::WriteOutcomeUnknown(boxed),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => ClientError::ServerBusy(boxed),
            _ => ClientError::Problem(boxed),
        }
    }

    /// The problem answer, if the server answered.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::InsufficientCredits { problem, .. }
            | ClientError::IdempotencyKeyReused(problem)
            | ClientError::IdempotencyKeyInFlight(problem)
            | ClientError::UserNotFound(problem)
            | ClientError::ReservationClosed(problem)
            | ClientError::ReservationNotFound(problem)
            | ClientError::UnknownAction(problem)
            | ClientError::UnknownCurrency(problem)
            | ClientError::GrantCapExceeded(problem)
            | ClientError::PoolNotFound(problem)
            | ClientError::PackageNotFound(problem)
            | ClientError::Unauthorized(problem)
            | ClientError::Forbidden(problem)
            | ClientError::InvalidRequest(problem)
            | ClientError::ServerBusy(problem)
            | ClientError::WriteOutcomeUnknown(problem)
            | ClientError::Problem(problem) => Some(problem),
            ClientError::Transport(_) | ClientError::Timeout(_) | ClientError::Decode(_) => None,
        }
    }

    /// The problem type's slug (`user-not-found`), if the server answered with a problem.
    pub fn slug(&self) -> Option<&str> {
        self.problem().map(Problem::slug)
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|problem| problem.status)
    }

    /// Whether the same call, with the same idempotency key, may get another answer: no answer
    /// at all, a 503, a key still in flight, or a write whose outcome is unknown.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Transport(_)
                | ClientError::ServerBusy(_)
                | ClientError::IdempotencyKeyInFlight(_)
                | ClientError::WriteOutcomeUnknown(_)
        )
    }

    /// The answer's `Retry-After`, if it had one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.problem().and_then(|problem| problem.retry_after)
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InsufficientCredits {
                available,
                required,
                ..
            } => write!(
                f,
                "insufficient credits: {available} available, {required} required"
            ),
            ClientError::Transport(message) => write!(f, "no answer: {message}"),
            ClientError::Timeout(after) => write!(f, "no answer within {after:?}"),
            ClientError::Decode(message) => write!(f, "unexpected answer: {message}"),
            other => match other.problem() {
                Some(problem) => problem.fmt(f),
                None => Ok(()),
            },
        }
    }
}

impl std::error::Error for ClientError {}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn answer(status: u16, body: &str) -> ClientError {
        ClientError::from_answer(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    fn problem(status: u16, slug: &str) -> String {
        format!(
            r#"{{"type":"{PROBLEM_TYPE_PREFIX}{slug}","title":"T","status":{status},"detail":"d"}}"#
        )
    }

    #[test]
    fn each_known_slug_has_its_variant() {
        type Case = (u16, &'static str, fn(&ClientError) -> bool);
        let cases: &[Case] = &[
            (422, "idempotency-key-reused", |e| {
                matches!(e, ClientError::IdempotencyKeyReused(_))
            }),
            (409, "idempotency-key-in-flight", |e| {
                matches!(e, ClientError::IdempotencyKeyInFlight(_))
            }),
            (404, "user-not-found", |e| {
                matches!(e, ClientError::UserNotFound(_))
            }),
            (409, "reservation-closed", |e| {
                matches!(e, ClientError::ReservationClosed(_))
            }),
            (404, "reservation-not-found", |e| {
                matches!(e, ClientError::ReservationNotFound(_))
            }),
            (422, "unknown-action", |e| {
                matches!(e, ClientError::UnknownAction(_))
            }),
            (422, "unknown-currency", |e| {
                matches!(e, ClientError::UnknownCurrency(_))
            }),
            (403, "grant-cap-exceeded", |e| {
                matches!(e, ClientError::GrantCapExceeded(_))
            }),
            (404, "pool-not-found", |e| {
                matches!(e, ClientError::PoolNotFound(_))
            }),
            (404, "package-not-found", |e| {
                matches!(e, ClientError::PackageNotFound(_))
            }),
            (401, "unauthorized", |e| {
                matches!(e, ClientError::Unauthorized(_))
            }),
            (403, "forbidden", |e| matches!(e, ClientError::Forbidden(_))),
            (422, "invalid-request", |e| {
                matches!(e, ClientError::InvalidRequest(_))
            }),
            (400, "malformed-request", |e| {
                matches!(e, ClientError::InvalidRequest(_))
            }),
            (503, "log-unavailable", |e| {
                matches!(e, ClientError::ServerBusy(_))
            }),
            (503, "server-busy", |e| {
                matches!(e, ClientError::ServerBusy(_))
            }),
            (500, "write-outcome-unknown", |e| {
                matches!(e, ClientError::WriteOutcomeUnknown(_))
            }),
            (418, "a-slug-from-the-future", |e| {
                matches!(e, ClientError::Problem(_))
            }),
        ];
        for (status, slug, is) in cases {
            let error = answer(*status, &problem(*status, slug));
            assert!(is(&error), "{slug}: {error:?}");
            assert_eq!(error.slug(), Some(*slug));
            assert_eq!(error.status(), Some(*status));
            let problem = error.problem().unwrap();
            assert_eq!(problem.problem_type, format!("{PROBLEM_TYPE_PREFIX}{slug}"));
            assert_eq!(
                (problem.title.as_str(), problem.detail.as_str()),
                ("T", "d")
            );
        }
    }

    #[test]
    fn a_402_carries_the_shortfall_and_the_topup_url() {
        let body = r#"{"type":"https://creditd.dev/problems/insufficient-credits","title":"Insufficient credits",
            "status":402,"detail":"short","currency":"CREDITS","balance":15,"available":10,"overdraft_limit":5,
            "spendable":15,"required":100,"topup_url":"http://h/v1/billing/bootstrap/u","pool_available":3}"#;
        match answer(402, body) {
            ClientError::InsufficientCredits {
                balance,
                available,
                required,
                topup_url,
                spendable,
                currency,
                pool_available,
                problem,
            } => {
                assert_eq!((balance, available, required, spendable), (15, 10, 100, 15));
                assert_eq!(topup_url, "http://h/v1/billing/bootstrap/u");
                assert_eq!(currency, "CREDITS");
                assert_eq!(pool_available, Some(3));
                assert_eq!(problem.integer("overdraft_limit"), Some(5));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_and_retryable_kinds() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        let busy = ClientError::from_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers,
            problem(503, "server-busy").as_bytes(),
        );
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(7)));
        assert!(busy.is_retryable());
        assert!(answer(409, &problem(409, "idempotency-key-in-flight")).is_retryable());
        assert!(answer(500, &problem(500, "write-outcome-unknown")).is_retryable());
        assert!(ClientError::Transport("reset".into()).is_retryable());
        for (status, slug) in [
            (402, "insufficient-credits"),
            (422, "idempotency-key-reused"),
            (409, "reservation-closed"),
            (404, "user-not-found"),
            (500, "internal"),
        ] {
            assert!(
                !answer(status, &problem(status, slug)).is_retryable(),
                "{slug}"
            );
        }
        assert!(!ClientError::Timeout(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn an_answer_that_is_not_json_is_still_a_problem() {
        let error = answer(502, "<html>bad gateway</html>");
        assert!(matches!(error, ClientError::Problem(_)), "{error:?}");
        assert_eq!(error.status(), Some(502));
        let problem = error.problem().unwrap();
        assert_eq!(problem.title, "Bad Gateway");
        assert_eq!(problem.detail, "<html>bad gateway</html>");
        assert_eq!(problem.body, Value::Null);
        let busy = answer(503, "overloaded");
        assert!(matches!(busy, ClientError::ServerBusy(_)));
    }
}
