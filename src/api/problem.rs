//! RFC 9457 problem details: every error the API answers is one of these, with a stable `type`
//! URI clients can switch on.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

use crate::engine::types::{ClosedAs, Currency, EngineError, GrantCap, Missing, Shortfall};
use crate::wal::{AppendError, DurabilityError};

/// The prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "https://creditd.dev/problems/";

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// The last part of the `type` URI.
    pub slug: &'static str,
    /// A short, fixed summary of the problem type.
    pub title: &'static str,
    /// What happened this time.
    pub detail: String,
    /// Extension members.
    pub extensions: Map<String, Value>,
    /// Extra response headers.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with no extension members.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Problem {
        Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            headers: Vec::new(),
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// Adds `pool_available` (what the user's credit pool could still give) to a 402 of a pool
    /// member.
    fn with_pool_available(self, pool_available: Option<i64>) -> Problem {
        match pool_available {
            Some(credits) => self.with("pool_available", credits),
            None => self,
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// 400: the request could not be parsed.
    pub fn malformed(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-request",
            "Malformed request",
            detail,
        )
    }

    /// 422: the request parsed but a field is wrong.
    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "Invalid request",
            detail,
        )
    }

    /// 401.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 403.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404 for a path no route matches.
    pub fn no_route(path: &str) -> Problem {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no route for {path}"),
        )
    }

    /// 405.
    pub fn method_not_allowed(allowed: &'static str) -> Problem {
        Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("allowed: {allowed}"),
        )
        .with_header(header::ALLOW, HeaderValue::from_static(allowed))
    }

    /// 413.
    pub fn too_large(limit: u64) -> Problem {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the body exceeds server.max_body_bytes ({limit} bytes)"),
        )
        .with("limit_bytes", limit)
    }

    /// 408: the body did not arrive in time. The connection is closed after the answer.
    pub fn body_timeout(seconds: u64) -> Problem {
        Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            format!(
                "the body did not arrive within server.body_read_timeout_seconds ({seconds} s)"
            ),
        )
        .with_header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// 503: not ready or the log refuses writes.
    pub fn unavailable(slug: &'static str, detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            slug,
            "Service unavailable",
            detail,
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// 500: the change was queued for the log, which then failed before the change was known to
    /// be durable. It may survive the restart or not; a retry with the same `Idempotency-Key`
    /// after the restart answers with what happened (the stored answer, or a fresh execution).
    pub fn outcome_unknown() -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "write-outcome-unknown",
            "Write outcome unknown",
            "the write-ahead log failed after this change was queued: it may or may not take \
             effect; once the server has restarted, retry with the same Idempotency-Key to learn \
             which (without a key, read the wallet before retrying)",
        )
    }

    /// 503 `server-busy`: the server is at a limit it keeps to stay available (the body budget,
    /// or a reserved connection asked for more than a health probe). The request was not read
    /// on, so the connection is closed after the answer.
    pub fn busy(detail: impl Into<String>) -> Problem {
        Problem::unavailable("server-busy", detail)
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))
    }

    /// 402 `insufficient-credits`: what was required and what could be spent, in the wallet's
    /// currency shown with its `decimals`. The one construction of this problem.
    pub fn insufficient(shortfall: &Shortfall, decimals: u8) -> Problem {
        Problem::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient-credits",
            "Insufficient credits",
            insufficient_detail(shortfall, decimals),
        )
        .with("currency", shortfall.currency.as_str())
        .with("balance", shortfall.balance)
        .with("available", shortfall.available)
        .with("overdraft_limit", shortfall.overdraft_limit)
        .with("spendable", shortfall.spendable)
        .with("required", shortfall.required)
        .with_pool_available(shortfall.pool_available)
    }

    /// 403 `grant-cap-exceeded`: a service key's grants today would pass its daily cap.
    pub fn grant_cap(cap: &GrantCap, decimals: u8) -> Problem {
        let amount = |value| amount_text(value, cap.currency, decimals);
        Problem::new(
            StatusCode::FORBIDDEN,
            "grant-cap-exceeded",
            "Grant cap exceeded",
            format!(
                "a service key may grant {} per UTC day (limits.service_key_grants_per_day): \
                 {} granted today, {} asked; an admin key may grant more",
                amount(cap.cap),
                amount(cap.granted_today),
                amount(cap.requested)
            ),
        )
        .with("currency", cap.currency.as_str())
        .with("cap", cap.cap)
        .with("granted_today", cap.granted_today)
        .with("requested", cap.requested)
    }

    /// 422 `unknown-currency`: the tenant has no such currency.
    pub fn unknown_currency(currency: Currency) -> Problem {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-currency",
            "Unknown currency",
            format!(
                "this tenant has no currency {currency:?} (PUT /v1/tenants/{{id}} defines them)"
            ),
        )
        .with("currency", currency.as_str())
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            Value::String(format!("{TYPE_PREFIX}{}", self.slug)),
        );
        body.insert("title".into(), Value::String(self.title.into()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail.clone()));
        for (name, value) in &self.extensions {
            body.insert(name.clone(), value.clone());
        }
        Value::Object(body)
    }

    /// The HTTP response.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let bytes = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(bytes)));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        response
    }
}

impl From<EngineError> for Problem {
    fn from(error: EngineError) -> Problem {
        use StatusCode as S;
        match error {
            EngineError::NotFound(missing) => not_found(missing),
            EngineError::ReservationClosed(how) => Problem::new(
                S::CONFLICT,
                "reservation-closed",
                "Reservation closed",
                format!("the reservation was {}", closed_as(how)),
            )
            .with("closed_as", closed_as(how)),
            // Shown without decimals here; the routes that spend render them with the tenant's
            // (`Call::problem`).
            EngineError::InsufficientCredits(shortfall) => Problem::insufficient(&shortfall, 0),
            EngineError::UnknownCurrency(currency) => Problem::unknown_currency(currency),
            EngineError::GrantCapReached(cap) => Problem::grant_cap(&cap, 0),
            EngineError::Invalid(invalid) => {
                Problem::invalid(format!("{} {}", invalid.field, invalid.reason))
                    .with("field", invalid.field)
            }
            EngineError::Overflow => {
                Problem::invalid("the amount is out of range: the result would overflow")
            }
            EngineError::Conflict(detail) => {
                Problem::new(S::CONFLICT, "conflict", "Conflict", detail)
            }
            EngineError::IdempotencyKeyReused => Problem::new(
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
                "this Idempotency-Key was used with a different request",
            ),
            EngineError::IdempotencyKeyInFlight => Problem::new(
                S::CONFLICT,
                "idempotency-key-in-flight",
                "Idempotency key in flight",
                "a request with this Idempotency-Key is still being processed; retry later",
            ),
            EngineError::IdempotencyTableFull => Problem::unavailable(
                "idempotency-table-full",
                "the idempotency table is at idempotency.max_entries; retry without a key or later",
            ),
            EngineError::TooManyReservations => Problem::new(
                S::CONFLICT,
                "too-many-reservations",
                "Too many reservations",
                "the user holds limits.max_reservations_per_user open reservations",
            ),
            EngineError::Log(AppendError::Backpressure) => Problem::unavailable(
                "log-backpressure",
                "the write-ahead log is behind; retry shortly",
            ),
            EngineError::Log(AppendError::TooLarge) => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                "the change is larger than storage.max_record_bytes",
            ),
            EngineError::Log(AppendError::ZeroRun) => Problem::invalid(format!(
                "the request holds a run of {} or more NUL characters, which creditd does not store",
                crate::wal::batch::ZERO_RUN_LIMIT_BYTES
            )),
            // Refused before anything was queued: nothing was written, and a retry after the
            // restart is safe.
            EngineError::Log(AppendError::Poisoned) => Problem::unavailable(
                "log-unavailable",
                "the write-ahead log failed earlier; this request was refused and nothing was \
                 written; writes are refused until restart",
            ),
            // Queued, then the log failed: the change may be on disk or not.
            EngineError::Durability(DurabilityError::Poisoned | DurabilityError::Closed) => {
                Problem::outcome_unknown()
            }
            EngineError::Log(AppendError::Closed) => {
                Problem::unavailable("shutting-down", "the server is shutting down")
            }
        }
    }
}

/// An amount of `currency` in words, with its decimals: `1 credit`, `50 credits`, `-11 credits`,
/// `0.50 usd`. A code ending in `s` (`credits`, `tokens`) loses it for exactly one whole unit.
pub fn amount_text(amount: i64, currency: Currency, decimals: u8) -> String {
    let code = currency.as_str();
    let magnitude = amount.unsigned_abs();
    let sign = if amount < 0 { "-" } else { "" };
    if decimals == 0 {
        let unit = match code.strip_suffix('s') {
            Some(singular) if magnitude == 1 && !singular.is_empty() => singular,
            _ => code,
        };
        return format!("{amount} {unit}");
    }
    let width = usize::from(decimals);
    let scale = 10u128.pow(u32::from(decimals));
    let (whole, fraction) = (u128::from(magnitude) / scale, u128::from(magnitude) % scale);
    format!("{sign}{whole}.{fraction:0width$} {code}")
}

/// The detail of a 402: `50 credits are required but only 9 can be spent (-11 available, with
/// an overdraft limit of 20)`; `1 credit is required but nothing can be spent`.
fn insufficient_detail(shortfall: &Shortfall, decimals: u8) -> String {
    let required = amount_text(shortfall.required, shortfall.currency, decimals);
    let verb = if decimals == 0 && shortfall.required != 1 {
        "are"
    } else {
        "is"
    };
    let number = |amount: i64| {
        let text = amount_text(amount, shortfall.currency, decimals);
        // The unit was said once already.
        text.rsplit_once(' ')
            .map_or(text.clone(), |(number, _)| number.to_owned())
    };
    let can = if shortfall.spendable <= 0 {
        "but nothing can be spent".to_owned()
    } else {
        format!("but only {} can be spent", number(shortfall.spendable))
    };
    let mut detail = format!("{required} {verb} required {can}");
    if shortfall.overdraft_limit > 0 {
        detail.push_str(&format!(
            " ({} available, with an overdraft limit of {})",
            number(shortfall.available),
            number(shortfall.overdraft_limit)
        ));
    } else if shortfall.available < 0 {
        detail.push_str(&format!(" ({} available)", number(shortfall.available)));
    }
    if let Some(pool) = shortfall.pool_available {
        detail.push_str(&format!(
            "; {} of that from the credit pool",
            number(pool.max(0))
        ));
    }
    detail
}

/// The problem for a thing not found: each kind keeps its own type, title and detail.
fn not_found(missing: Missing) -> Problem {
    use StatusCode as S;
    match missing {
        Missing::Tenant => Problem::new(
            S::NOT_FOUND,
            "tenant-not-found",
            "Tenant not found",
            missing.message(),
        ),
        Missing::User => Problem::new(
            S::NOT_FOUND,
            "user-not-found",
            "User not found",
            missing.message(),
        ),
        Missing::Action => Problem::new(
            S::UNPROCESSABLE_ENTITY,
            "unknown-action",
            "Unknown action",
            "the action is not in this tenant's catalogue",
        ),
        Missing::Package => Problem::new(
            S::NOT_FOUND,
            "package-not-found",
            "Package not found",
            missing.message(),
        ),
        Missing::Reservation => Problem::new(
            S::NOT_FOUND,
            "reservation-not-found",
            "Reservation not found",
            missing.message(),
        ),
        Missing::AutoTopup => Problem::new(
            S::NOT_FOUND,
            "auto-topup-not-found",
            "No automatic top-up",
            "the wallet has no automatic top-up rule",
        ),
        Missing::Pool => Problem::new(
            S::NOT_FOUND,
            "pool-not-found",
            "Pool not found",
            "no such credit pool in this tenant",
        ),
        Missing::PoolMember => Problem::new(
            S::NOT_FOUND,
            "pool-member-not-found",
            "Not a pool member",
            "the user draws on no credit pool",
        ),
    }
}

/// The API's name for how a reservation ended.
pub fn closed_as(how: ClosedAs) -> &'static str {
    match how {
        ClosedAs::Captured => "captured",
        ClosedAs::Released => "released",
        ClosedAs::Expired => "expired",
    }
}

/// A payments error as the payment routes and the sandbox page answer it.
impl From<crate::payments::PaymentsError> for Problem {
    fn from(error: crate::payments::PaymentsError) -> Problem {
        use crate::payments::gateway::WebhookError;
        use crate::payments::PaymentsError;
        match error {
            PaymentsError::Engine(error) => error.into(),
            PaymentsError::Gateway(error) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "gateway-error",
                "Payment gateway error",
                error.to_string(),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("5")),
            PaymentsError::InFlight => EngineError::IdempotencyKeyInFlight.into(),
            PaymentsError::KeyReused => EngineError::IdempotencyKeyReused.into(),
            PaymentsError::Invalid(field) => {
                Problem::invalid(format!("{field} is not valid")).with("field", field)
            }
            PaymentsError::NotConfigured(gateway) => Problem::new(
                StatusCode::NOT_FOUND,
                "gateway-not-configured",
                "Gateway not configured",
                format!("payments.gateway is not {gateway}"),
            ),
            PaymentsError::Webhook(WebhookError::BadSignature(detail)) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "bad-signature",
                "Bad signature",
                detail,
            ),
            PaymentsError::Webhook(WebhookError::Malformed(detail)) => Problem::malformed(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shortfall(available: i64, overdraft_limit: i64, required: i64) -> Shortfall {
        Shortfall::new(
            Currency::CREDITS,
            available,
            available,
            overdraft_limit,
            required,
        )
    }

    #[test]
    fn amounts_read_right_in_the_singular_and_with_decimals() {
        let credits = Currency::CREDITS;
        let usd = Currency::new("usd").unwrap();
        assert_eq!(amount_text(1, credits, 0), "1 credit");
        assert_eq!(amount_text(-1, credits, 0), "-1 credit");
        assert_eq!(amount_text(0, credits, 0), "0 credits");
        assert_eq!(amount_text(50, credits, 0), "50 credits");
        assert_eq!(amount_text(50, usd, 2), "0.50 usd");
        assert_eq!(amount_text(-1234, usd, 2), "-12.34 usd");
        assert_eq!(amount_text(100, usd, 0), "100 usd");
        assert_eq!(amount_text(i64::MIN, usd, 18), "-9.223372036854775808 usd");
    }

    #[test]
    fn a_402_says_what_can_be_spent() {
        let detail = |s: Shortfall, decimals| insufficient_detail(&s, decimals);
        assert_eq!(
            detail(shortfall(0, 0, 1), 0),
            "1 credit is required but nothing can be spent"
        );
        assert_eq!(
            detail(shortfall(1, 0, 2), 0),
            "2 credits are required but only 1 can be spent"
        );
        // The overdraft: 9 more can be spent though available is below zero.
        assert_eq!(
            detail(shortfall(-11, 20, 50), 0),
            "50 credits are required but only 9 can be spent (-11 available, with an overdraft \
             limit of 20)"
        );
        // Below the floor after a chargeback: nothing can be spent.
        assert_eq!(
            detail(shortfall(-30, 0, 5), 0),
            "5 credits are required but nothing can be spent (-30 available)"
        );
        let usd = Shortfall::new(Currency::new("usd").unwrap(), 9, 9, 0, 50);
        assert_eq!(
            insufficient_detail(&usd, 2),
            "0.50 usd is required but only 0.09 can be spent"
        );
        let problem = Problem::insufficient(&usd, 2);
        assert_eq!(problem.status, StatusCode::PAYMENT_REQUIRED);
        let body = problem.body();
        assert_eq!(body["currency"], "usd");
        assert_eq!(body["spendable"], 9);
        assert_eq!(body["required"], 50);
    }
}
