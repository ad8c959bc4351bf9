//! The live balance stream (`GET /v1/users/{user_id}/wallet/stream`, server-sent events) and the
//! short-lived tokens a browser opens it with (`POST /v1/users/{user_id}/stream-tokens`).
//!
//! A stream is a task of its own: it registers with the [`Hub`](crate::stream::Hub), sends the
//! wallet view at once (or, on a resume, only if the user's wallet changed since the
//! `Last-Event-ID`), then waits for the hub's wake-ups and sends the view again, or a keep-alive
//! comment when nothing happened for `streams.keepalive_seconds`. Each event's `id:` is an LSN
//! such that the view covers every change of the user's up to it, and it is sent only once every
//! change it shows is durable. Events go through a channel of `streams.buffer_events`; a reader
//! that lets it fill is cut off (the request path never waits for a stream).
//!
//! Who may open one: a service key of the user's tenant (the route table lists the route as open,
//! and this file checks the key), or `?token=`, a stream token for that very user. A stream opened
//! with a token ends when the token expires: a last event `expired` says so, and the connection
//! closes (the reader opens a new one with a new token); a stream opened with a key does not end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::api::auth;
use crate::api::call::{ok, Answer, Call, Open};
use crate::api::problem::Problem;
use crate::api::request::{query_pairs, unknown_parameter};
use crate::api::response::empty_response;
use crate::api::routes::users::WalletReader;
use crate::api::sse::Handoff;
use crate::api::ApiState;
use crate::config::Role;
use crate::engine::types::{Currency, EngineError, Missing};
use crate::engine::{Engine, Tenant};
use crate::metrics::names;
use crate::payments::Payments;
use crate::stream::token::{Claims, Purpose, TokenError};
use crate::stream::Subscription;

/// `{"token","expires_at"}`.
#[derive(Debug, Serialize)]
struct TokenJson {
    token: String,
    expires_at: String,
}

/// `POST /v1/users/{user_id}/stream-tokens` (service): a token that opens this user's stream,
/// valid for `streams.token_ttl_seconds`.
pub async fn stream_token(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    call.tenant.user(user)?;
    let (token, expires_at) = issue_stream_token(call.state, call.tenant.id(), user);
    ok(&TokenJson { token, expires_at })
}

/// A stream token for `user` of `tenant` and when it expires (RFC 3339).
pub(crate) fn issue_stream_token(state: &ApiState, tenant: &str, user: &str) -> (String, String) {
    let expires_at = state.engine.now_ms() / 1000
        + i64::try_from(state.streams_config.token_ttl_seconds).unwrap_or(3600);
    let claims = Claims {
        tenant: tenant.to_owned(),
        user: user.to_owned(),
        expires_at,
        extra: String::new(),
    };
    let token = state.signer.sign(Purpose::Stream, &claims);
    (token, crate::time::format_rfc3339_ms(expires_at * 1000))
}

/// The problem for a refused token: 401, with a slug a page can tell apart.
pub(crate) fn token_problem(error: TokenError) -> Problem {
    let slug = match error {
        TokenError::Invalid => "invalid-token",
        TokenError::Expired => "token-expired",
    };
    Problem::new(
        StatusCode::UNAUTHORIZED,
        slug,
        "Unauthorized",
        error.to_string(),
    )
}

/// `GET /v1/users/{user_id}/wallet/stream[?currency=][&token=]`.
pub async fn wallet_stream(open: &Open<'_>) -> Answer {
    let state = open.state;
    let user = &*open.param;
    let mut token = None;
    let mut currency = None;
    for (name, value) in query_pairs(open.query) {
        match name.as_ref() {
            "token" => token = Some(value),
            "currency" => currency = Some(Currency::new(&value)?),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    // A stream opened with a token ends when the token does (Unix seconds).
    let mut expires_at = None;
    let tenant = match token {
        Some(token) => {
            let now_seconds = state.engine.now_ms() / 1000;
            let claims = state
                .signer
                .verify(Purpose::Stream, &token, now_seconds)
                .map_err(token_problem)?;
            if claims.user != user {
                return Err(Problem::forbidden("the token is for another user"));
            }
            expires_at = Some(claims.expires_at);
            state
                .engine
                .tenant(&claims.tenant)
                .ok_or(EngineError::NotFound(Missing::Tenant))?
        }
        None => {
            let key = state.keys.authenticate(open.headers)?;
            auth::require(key.role, Role::Service)?;
            auth::tenant_of(key, open.headers, &state.engine)?.into_owned()
        }
    };
    // Another tenant's user is as absent as one that never existed.
    tenant.user(user)?;
    let currency = currency.unwrap_or_else(|| tenant.default_currency());
    tenant.check_currency(currency).map_err(Problem::from)?;
    let resume = match open.headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| Problem::malformed("Last-Event-ID is not an LSN"))?,
        ),
        None => None,
    };
    let subscription = state
        .streams
        .subscribe(tenant.id(), user)
        .map_err(|full| Problem::unavailable("streams-full", format!("{full}; retry later")))?;
    let (sender, receiver) = mpsc::channel(state.streams_config.buffer_events.max(1) as usize);
    let stream = Stream {
        engine: Arc::clone(&state.engine),
        payments: Arc::clone(&state.payments),
        low_balance: state.limits.low_balance,
        tenant,
        user: user.to_owned(),
        currency,
        subscription,
        sender,
        keepalive: Duration::from_secs(state.streams_config.keepalive_seconds.max(1)),
        sent_lsn: 0,
        sent: Vec::new(),
        expires: expires_at.map(|seconds| {
            let left_ms = seconds.saturating_mul(1000) - state.engine.now_ms();
            let left = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0));
            (tokio::time::Instant::now() + left, seconds)
        }),
    };
    tokio::spawn(stream.run(resume));
    let mut response = empty_response(StatusCode::OK);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies such as nginx otherwise hold the events back to fill their buffers.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response.extensions_mut().insert(Handoff::new(receiver));
    Ok(response)
}

/// One open stream.
struct Stream {
    engine: Arc<Engine>,
    payments: Arc<Payments>,
    low_balance: i64,
    tenant: Arc<Tenant>,
    user: String,
    currency: Currency,
    subscription: Subscription,
    sender: mpsc::Sender<Bytes>,
    keepalive: Duration,
    /// The `id:` of the last view sent: it covers every change up to it.
    sent_lsn: u64,
    /// The JSON of the last view sent, so that a wake that changed nothing shown sends nothing.
    sent: Vec<u8>,
    /// For a stream opened with a token: when the token expires (and the Unix second it names).
    /// The stream ends then with an `expired` event; one opened with a key never expires.
    expires: Option<(tokio::time::Instant, i64)>,
}

/// Why a stream ended.
enum End {
    /// The reader went away, or the user's wallet cannot be read any more.
    Gone,
    /// The reader let `streams.buffer_events` events wait.
    Slow,
    /// The server is shutting down.
    Shutdown,
    /// The stream token it was opened with expired.
    Expired,
}

impl Stream {
    async fn run(mut self, resume: Option<u64>) {
        let end = self.serve(resume).await;
        let reason = match end {
            End::Gone => return,
            End::Slow => "slow_reader",
            End::Shutdown => "shutdown",
            End::Expired => "token_expired",
        };
        metrics::counter!(names::STREAMS_CUT_TOTAL, "reason" => reason).increment(1);
    }

    async fn serve(&mut self, resume: Option<u64>) -> End {
        let changed = match resume {
            None => true,
            // A Last-Event-ID from past the end of this log (another server's, or a data
            // directory restored from an older copy) says nothing about this one.
            Some(lsn) => {
                lsn >= self.engine.wal().next_lsn() || self.subscription_hub_changed_since(lsn)
            }
        };
        if changed {
            if let Err(end) = self.send_view(true).await {
                return end;
            }
        } else if let Some(lsn) = resume {
            self.sent_lsn = lsn;
        }
        let watch = Arc::clone(self.subscription.watch());
        // Far enough ahead to never come for a stream without a token.
        let expiry = self.expires.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400),
            |(at, _)| at,
        );
        loop {
            tokio::select! {
                biased;
                () = self.sender.closed() => return End::Gone,
                () = tokio::time::sleep_until(expiry) => return self.expire(),
                () = watch.woken() => {}
                () = tokio::time::sleep(self.keepalive) => {
                    if let Err(end) = self.offer(Bytes::from_static(b": keep-alive\n\n")) {
                        return end;
                    }
                    continue;
                }
            }
            if watch.is_closed() {
                return End::Shutdown;
            }
            if watch.lsn() <= self.sent_lsn {
                continue;
            }
            if let Err(end) = self.send_view(false).await {
                return end;
            }
        }
    }

    /// Tells the reader its token expired, in a last event, and ends the stream. A browser's
    /// `EventSource` would otherwise reconnect with the expired token and fail; the event says
    /// to get a new token first (the portal page does).
    fn expire(&self) -> End {
        let expires_at = self.expires.map_or(0, |(_, seconds)| seconds);
        let data = serde_json::json!({
            "reason": "token-expired",
            "expires_at": crate::time::format_rfc3339_ms(expires_at.saturating_mul(1000)),
            "detail": "the stream token expired: open the stream again with a new token",
        });
        let event = format!("event: expired\ndata: {data}\n\n");
        match self.offer(Bytes::from(event)) {
            Ok(()) => End::Expired,
            Err(end) => end,
        }
    }

    fn subscription_hub_changed_since(&self, lsn: u64) -> bool {
        self.subscription
            .hub()
            .changed_since(self.tenant.id(), &self.user, lsn)
    }

    /// Reads the view and sends it (unless it is the one sent last and `force` is false), once
    /// every change it shows is durable.
    async fn send_view(&mut self, force: bool) -> Result<(), End> {
        let wal = self.engine.wal();
        // Every change of the user's with an LSN up to `covered` was applied before the view is
        // read: its record was appended under the user's lock, which the read waits for.
        let covered = wal.next_lsn().saturating_sub(1);
        let view = self.tenant.user(&self.user).map_err(|_| End::Gone)?;
        let reader = WalletReader {
            engine: &self.engine,
            payments: &self.payments,
            low_balance: self.low_balance,
        };
        let json = serde_json::to_vec(&reader.json(&self.tenant, &view, self.currency))
            .map_err(|_| End::Gone)?;
        // The view may show changes appended after `covered`; all of them are at or below this.
        let shown = wal.next_lsn().saturating_sub(1);
        self.sent_lsn = self.sent_lsn.max(covered);
        if !force && json == self.sent {
            return Ok(());
        }
        if shown > 0 {
            self.engine.durable(shown).await.map_err(|_| End::Gone)?;
        }
        let mut event = Vec::with_capacity(json.len() + 48);
        event.extend_from_slice(format!("id: {covered}\nevent: wallet\ndata: ").as_bytes());
        event.extend_from_slice(&json);
        event.extend_from_slice(b"\n\n");
        self.sent = json;
        self.offer(Bytes::from(event))
    }

    /// Queues bytes for the reader without waiting: a full buffer cuts the stream off.
    fn offer(&self, bytes: Bytes) -> Result<(), End> {
        match self.sender.try_send(bytes) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(End::Slow),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::Gone),
        }
    }
}
