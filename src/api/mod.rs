//! The HTTP API on hyper 1: routing, authentication, problem+json errors, body limits, the
//! `Idempotency-Key` header, request ids and request metrics. Handlers live in [`handlers`].
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind `127.0.0.1:0`
//! and run many servers at once. This module must not change state except through the engine.

pub mod auth;
pub mod budget;
pub mod connections;
pub mod dto;
pub mod handlers;
pub mod payments;
pub mod problem;
pub mod router;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::config::{Role, ServerConfig};
use crate::engine::types::Limits;
use crate::engine::Engine;
use crate::metrics::{ConnectionMetrics, Metrics, Refusal};
use budget::{BodyBudget, BodyClaim, BudgetExhausted, Metered};
use connections::{Connections, Lease, SlotKind};
use handlers::Call;
use problem::Problem;
use router::{NoRoute, Route};

/// The OpenAPI document, served at `/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// Everything a request needs.
pub struct ApiState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Payments and their gateway.
    pub payments: Arc<crate::payments::Payments>,
    /// API keys.
    pub keys: auth::KeyTable,
    /// Request metrics.
    pub metrics: Metrics,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Server settings.
    pub server: ServerConfig,
    /// Request limits.
    pub limits: Limits,
    /// Base URL for links in answers (such as `topup_url`).
    pub public_url: String,
    /// False once shutdown has begun: `/readyz` answers 503.
    pub accepting: AtomicBool,
    /// The open connections and their slots.
    pub connections: Arc<Connections>,
    /// The bytes of request bodies held at once, all requests together.
    pub body_budget: BodyBudget,
    request_prefix: u32,
    requests: AtomicU64,
}

impl ApiState {
    /// Builds the state; the engine must already hold every tenant the keys name.
    pub fn new(
        engine: Arc<Engine>,
        payments: Arc<crate::payments::Payments>,
        keys: &[crate::config::ApiKey],
        server: ServerConfig,
        limits: Limits,
        public_url: String,
    ) -> Result<ApiState, String> {
        let keys = auth::KeyTable::new(keys, &engine)?;
        let metrics = Metrics::new(router::TEMPLATES);
        Ok(ApiState {
            engine,
            payments,
            keys,
            connections: Connections::new(&server, metrics.connections.clone()),
            body_budget: BodyBudget::new(server.body_budget_bytes),
            metrics,
            prometheus: crate::metrics::install(),
            server,
            limits,
            public_url: public_url.trim_end_matches('/').to_owned(),
            accepting: AtomicBool::new(true),
            request_prefix: rand::random(),
            requests: AtomicU64::new(0),
        })
    }

    /// Whether writes are accepted: recovery done, log writable, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.accepting.load(Ordering::Acquire) && self.engine.is_writable()
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to `server.shutdown_grace_seconds`) and returns. Connections get slots as
/// [`connections`] describes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ApiState>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = http1_builder(&state.server, true);
    let linger = Duration::from_secs(state.server.header_read_timeout_seconds.max(1));
    connections::accept_until(&listener, &state.connections, shutdown, |stream, lease| {
        let _ = stream.set_nodelay(true);
        let service = api_service(&state, &lease);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(connections::drive(connection, lease, linger));
    })
    .await;
    drop(listener);
    state.accepting.store(false, Ordering::Release);
    state.connections.close_all();
    let grace = Duration::from_secs(state.server.shutdown_grace_seconds);
    tokio::select! {
        () = state.connections.all_closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(seconds = grace.as_secs(), "connections still open after the grace period; closing"),
    }
}

/// The HTTP/1.1 settings every connection gets. The read buffer is sized for a request head, not a
/// body: hyper buffers at most `max(server.max_header_bytes, 8 KiB)` per connection while a head
/// is incomplete and answers 431 past `server.max_header_bytes`. Bodies are read in chunks of at
/// most that size and collected under the body budget (see [`read_body`]).
fn http1_builder(server: &ServerConfig, keep_alive: bool) -> hyper::server::conn::http1::Builder {
    let header_bytes = server.max_header_bytes as usize;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(
            server.header_read_timeout_seconds.max(1),
        ))
        .keep_alive(keep_alive)
        .max_header_size(header_bytes)
        // hyper refuses a buffer under 8 KiB.
        .max_buf_size(header_bytes.max(8 * 1024));
    builder
}

/// The service of one connection: marks the slot busy while a request is in progress, so the
/// connection is not closed to make room meanwhile. Per request this is two stores into the
/// connection's own slot and a clock read; nothing shared is locked.
fn api_service(
    state: &Arc<ApiState>,
    lease: &Lease,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Send {
    let state = Arc::clone(state);
    let slot = Arc::clone(lease.slot());
    hyper::service::service_fn(move |request| {
        slot.begin_request();
        let state = Arc::clone(&state);
        let slot = Arc::clone(&slot);
        async move {
            let response = handle(state, request, slot.kind()).await;
            slot.end_request();
            response
        }
    })
}

/// Answers on `listener` while `recovery` runs: `/livez` 200, everything else 503 `recovering`.
/// Connections are closed after one answer, so none outlives recovery, and they get slots as
/// after recovery, so a flood cannot keep `/livez` from answering. Returns recovery's result.
pub async fn serve_while_recovering<T>(
    listener: &TcpListener,
    server: &ServerConfig,
    recovery: impl Future<Output = T>,
) -> T {
    let builder = http1_builder(server, false);
    let linger = Duration::from_secs(server.header_read_timeout_seconds.max(1));
    let connections = Connections::new(server, ConnectionMetrics::new());
    connections::accept_until(listener, &connections, recovery, |stream, lease| {
        let slot = Arc::clone(lease.slot());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            slot.begin_request();
            let response = recovering_response(request.uri().path());
            slot.end_request();
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(connections::drive(connection, lease, linger));
    })
    .await
}

fn recovering_response(path: &str) -> Response<Full<Bytes>> {
    if path == "/livez" {
        return text_response(StatusCode::OK, "text/plain; charset=utf-8", "ok\n");
    }
    Problem::unavailable("recovering", "recovery is replaying the log; retry shortly").response()
}

/// Answers one request that came on a slot of `kind`: a reserved slot serves only the health
/// probes and `/metrics`.
pub async fn handle(
    state: Arc<ApiState>,
    request: Request<Incoming>,
    kind: SlotKind,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let request_id = request_id(&state, &parts);
    let (route, result) = match router::route(&parts.method, parts.uri.path()) {
        Ok(matched) if kind == SlotKind::Reserved && !is_probe(matched.route) => {
            (matched.route, Err(reserved_slot_refusal(&state)))
        }
        Ok(matched) => (
            matched.route,
            dispatch(&state, matched.route, &matched.param, &parts, body).await,
        ),
        Err(_) if kind == SlotKind::Reserved => {
            (Route::Unmatched, Err(reserved_slot_refusal(&state)))
        }
        Err(NoRoute::NotFound) => (Route::Unmatched, Err(Problem::no_route(parts.uri.path()))),
        Err(NoRoute::MethodNotAllowed(allowed)) => {
            (Route::Unmatched, Err(Problem::method_not_allowed(allowed)))
        }
        // The detail does not quote the segment: it may hold the very bytes refused.
        Err(NoRoute::BadSegment) => (
            Route::Unmatched,
            Err(Problem::malformed(
                "a path segment is not valid percent-encoded UTF-8 or holds a control character",
            )),
        ),
    };
    let mut response = result.unwrap_or_else(|problem| problem.response());
    response.headers_mut().insert("x-request-id", request_id);
    if let Some(histogram) =
        state
            .metrics
            .http(route.index(), &parts.method, response.status().as_u16())
    {
        histogram.record(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// The answer to anything but a probe on a reserved slot; counted.
fn reserved_slot_refusal(state: &ApiState) -> Problem {
    state.metrics.connections.refused(Refusal::ReservedSlot, 1);
    Problem::busy("every connection slot is taken; this connection may only ask for /livez, /readyz, /healthz and /metrics")
}

/// The routes a reserved connection serves: what orchestrators and Prometheus ask for.
fn is_probe(route: Route) -> bool {
    matches!(
        route,
        Route::Livez | Route::Readyz | Route::Healthz | Route::Metrics
    )
}

/// The client's `X-Request-Id` if it is sane, else a fresh one.
fn request_id(state: &ApiState, parts: &Parts) -> HeaderValue {
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

async fn dispatch(
    state: &ApiState,
    route: Route,
    param: &str,
    parts: &Parts,
    body: Incoming,
) -> Result<Response<Full<Bytes>>, Problem> {
    match route {
        Route::Livez => {
            return Ok(text_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ok\n",
            ))
        }
        Route::Readyz | Route::Healthz => return readiness(state),
        Route::Metrics => {
            let text = state.prometheus.render();
            return Ok(text_response(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            ));
        }
        Route::OpenApi => {
            return Ok(text_response(
                StatusCode::OK,
                "application/yaml",
                OPENAPI_YAML,
            ))
        }
        Route::SandboxPage => return payments::sandbox_page(state, param),
        Route::Webhook | Route::SandboxAction => {
            // Open routes: a webhook carries the gateway's signature, the sandbox page its reference.
            let (bytes, _claim) = read_body(body, parts, state).await?;
            return if route == Route::Webhook {
                payments::webhook(state, param, &parts.headers, &bytes).await
            } else {
                payments::sandbox_action(state, param, &bytes).await
            };
        }
        _ => {}
    }
    let key = state.keys.authenticate(&parts.headers)?;
    auth::require(key.role, required_role(route))?;
    let tenant = auth::tenant_of(key, &parts.headers, &state.engine)?;
    let idempotency_key = match parts.headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Problem::malformed("Idempotency-Key is not visible ASCII"))?,
        ),
        None => None,
    };
    let call = Call {
        state,
        tenant,
        actor: &key.name,
        role: key.role,
        method: &parts.method,
        path_and_query: parts.uri.path_and_query().map_or("", |p| p.as_str()),
        idempotency_key,
    };
    // The claim lives as long as the bytes: handlers borrow from them until the answer is built.
    let (bytes, _claim) = if matches!(parts.method, http::Method::POST | http::Method::PUT) {
        let (bytes, claim) = read_body(body, parts, state).await?;
        (bytes, Some(claim))
    } else {
        (Bytes::new(), None)
    };
    match route {
        Route::PutUser => handlers::put_user(&call, param, &bytes).await,
        Route::GetUser => handlers::get_user(&call, param),
        Route::GetWallet => handlers::get_wallet(&call, param, parts.uri.query()),
        Route::Credit => handlers::credit(&call, param, &bytes).await,
        Route::Debit => handlers::debit(&call, param, &bytes).await,
        Route::Reserve => handlers::reserve(&call, param, &bytes).await,
        Route::Revoke => handlers::revoke(&call, param, &bytes).await,
        Route::PutOverdraft => handlers::put_overdraft(&call, param, &bytes).await,
        Route::BatchDebit => handlers::batch_debit(&call, &bytes).await,
        Route::GetReservation => handlers::get_reservation(&call, param),
        Route::Capture => handlers::capture(&call, param, &bytes).await,
        Route::Extend => handlers::extend(&call, param, &bytes).await,
        Route::Release => handlers::release(&call, param, &bytes).await,
        Route::ListActions => handlers::list_actions(&call),
        Route::GetAction => handlers::get_action(&call, param),
        Route::PutAction => handlers::put_action(&call, param, &bytes).await,
        Route::DeleteAction => handlers::delete_action(&call, param).await,
        Route::ListPackages => handlers::list_packages(&call),
        Route::GetPackage => handlers::get_package(&call, param),
        Route::PutPackage => handlers::put_package(&call, param, &bytes).await,
        Route::DeletePackage => handlers::delete_package(&call, param).await,
        Route::Bootstrap => handlers::bootstrap(&call, param),
        Route::ListTenants => handlers::list_tenants(&call),
        Route::GetTenant => handlers::get_tenant(&call, param),
        Route::PutTenant => handlers::put_tenant(&call, param, &bytes).await,
        Route::InitializePayment => payments::initialize(&call, &bytes).await,
        Route::GetPayment => payments::get_payment(&call, param).await,
        Route::AbandonPayment => payments::abandon_payment(&call, param).await,
        Route::GetAutoTopup => payments::get_auto_topup(&call, param, parts.uri.query()),
        Route::PutAutoTopup => payments::put_auto_topup(&call, param, &bytes).await,
        Route::DeleteAutoTopup => {
            payments::delete_auto_topup(&call, param, parts.uri.query()).await
        }
        Route::Livez
        | Route::Readyz
        | Route::Healthz
        | Route::Metrics
        | Route::OpenApi
        | Route::Webhook
        | Route::SandboxPage
        | Route::SandboxAction
        | Route::Unmatched => Err(Problem::no_route(parts.uri.path())),
    }
}

/// The least role each route needs.
fn required_role(route: Route) -> Role {
    match route {
        Route::Revoke
        | Route::PutOverdraft
        | Route::PutAction
        | Route::DeleteAction
        | Route::PutPackage
        | Route::DeletePackage
        | Route::PutAutoTopup
        | Route::DeleteAutoTopup
        | Route::AbandonPayment => Role::Admin,
        Route::ListTenants | Route::GetTenant | Route::PutTenant => Role::Platform,
        _ => Role::Service,
    }
}

fn readiness(state: &ApiState) -> Result<Response<Full<Bytes>>, Problem> {
    if state.is_ready() {
        // Ready, but an operator should know when the older snapshot could no longer be
        // recovered from: one line per problem recovery found.
        let problems = &state.engine.recovery_report().fallback_problems;
        let mut text = String::from("ready\n");
        for problem in problems {
            text.push_str("warning: the fallback snapshot cannot be recovered from: ");
            text.push_str(problem);
            text.push('\n');
        }
        return Ok(text_response(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            text,
        ));
    }
    let detail = match state.engine.wal().poison_reason() {
        Some(reason) => format!("the write-ahead log is poisoned: {reason}"),
        None if !state.accepting.load(Ordering::Acquire) => "shutting down".to_owned(),
        None => "the write-ahead log is closed".to_owned(),
    };
    Err(Problem::unavailable("not-ready", detail))
}

/// Reads a body of at most `server.max_body_bytes` within `server.body_read_timeout_seconds`,
/// under the body budget: the declared `Content-Length` is claimed before a byte is read, a
/// chunked body chunk by chunk. Past the budget: 503 `server-busy`, and the connection is closed
/// (what is left of the body is never read). The claim is returned with the bytes and must be
/// kept as long as they are.
async fn read_body<'s>(
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
    let read = Limited::new(Metered::new(body, &mut claim), limit).collect();
    let Ok(read) = tokio::time::timeout(Duration::from_secs(seconds), read).await else {
        return Err(Problem::body_timeout(seconds));
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

/// A JSON answer.
pub fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    value: &T,
) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            error.to_string(),
        )
        .response(),
    }
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    text: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(text.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An answer without a body.
pub fn empty_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
