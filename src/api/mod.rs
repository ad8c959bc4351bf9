//! The HTTP API on hyper 1. This file serves connections and runs the pipeline of one request:
//! route it, refuse what a reserved slot may not ask, call the route, stamp the request id, and
//! record the request's duration. The parts:
//!
//! - [`router`]: the one route table (method, path, who may call, handler) and matching.
//! - [`call`]: the request context handlers get (the key, the tenant, the `Idempotency-Key`, the
//!   body), the durable wait and the idempotent replay every write shares.
//! - [`routes`]: the handlers, one file per resource.
//! - [`auth`], [`request`], [`response`], [`problem`], [`dto`]: keys and roles, reading bodies
//!   and queries, building answers, problem+json errors, wire types several routes share.
//! - [`connections`], [`budget`]: connection slots and the body budget, the server's limits.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests bind `127.0.0.1:0`
//! and run many servers at once. This module must not change state except through the engine.

pub mod admission;
pub mod auth;
pub mod budget;
pub mod call;
pub mod connections;
mod cores;
pub mod dto;
pub mod problem;
pub mod request;
pub mod response;
pub mod router;
pub mod routes;
pub mod sse;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::config::ServerConfig;
use crate::engine::types::Limits;
use crate::engine::Engine;
use crate::metrics::{ConnectionMetrics, Metrics, Refusal};
use budget::BodyBudget;
use call::Routed;
use connections::{Connections, Lease, SlotKind};
use problem::Problem;
use response::text_response;
use router::{Access, NoRoute, Route};

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
    /// The keyed requests in progress, and their limit.
    pub in_flight: admission::InFlight,
    /// The ledger history, when `history.enabled`.
    pub history: Option<Arc<crate::history::reader::Reader>>,
    /// The open live balance streams.
    pub streams: Arc<crate::stream::Hub>,
    /// Their settings.
    pub streams_config: crate::config::StreamsConfig,
    /// Signs and checks stream tokens and portal links.
    pub signer: crate::stream::token::Signer,
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
    ) -> Result<ApiState, auth::UnknownTenant> {
        let keys = auth::KeyTable::new(keys, &engine)?;
        let metrics = Metrics::new(router::TEMPLATES);
        Ok(ApiState {
            engine,
            payments,
            keys,
            connections: Connections::new(&server, metrics.connections.clone()),
            body_budget: BodyBudget::new(server.body_budget_bytes),
            in_flight: admission::InFlight::new(server.max_in_flight_requests),
            metrics,
            prometheus: crate::metrics::install(),
            server,
            limits,
            public_url: public_url.trim_end_matches('/').to_owned(),
            accepting: AtomicBool::new(true),
            history: None,
            streams: crate::stream::Hub::new(usize::MAX),
            streams_config: crate::config::StreamsConfig::default(),
            signer: crate::stream::token::Signer::new(&rand::random::<[u8; 32]>()),
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
    let header_read_timeout = Duration::from_secs(state.server.header_read_timeout_seconds.max(1));
    let send_buffer_bytes = state.server.send_buffer_bytes;
    let heartbeat = tokio::spawn(keep_a_timer_pending());
    let machine_cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut cores = match state.server.core_threads.count(machine_cores) {
        0 => None,
        count => match cores::Cores::start(count, &state, &builder, header_read_timeout) {
            Ok(cores) => Some(cores),
            Err(error) => {
                tracing::error!(%error, "server.core_threads: could not start the threads; serving on the shared workers");
                None
            }
        },
    };
    connections::accept_until(
        &listener,
        &state.connections,
        header_read_timeout,
        shutdown,
        |stream, lease| {
            let _ = stream.set_nodelay(true);
            if send_buffer_bytes > 0 {
                set_send_buffer(&stream, send_buffer_bytes);
            }
            let (stream, lease) = match cores.as_mut() {
                Some(cores) => match cores.dispatch(stream, lease) {
                    Some(given_back) => given_back,
                    None => return,
                },
                None => (stream, lease),
            };
            let service = api_service(&state, &lease);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connections::drive(connection, lease, header_read_timeout));
        },
    )
    .await;
    drop(listener);
    state.accepting.store(false, Ordering::Release);
    state.streams.close_all();
    state.connections.close_all();
    let grace = Duration::from_secs(state.server.shutdown_grace_seconds);
    tokio::select! {
        () = state.connections.all_closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(seconds = grace.as_secs(), "connections still open after the grace period; closing"),
    }
    if let Some(cores) = cores {
        cores.stop().await;
    }
    heartbeat.abort();
}

/// How often [`keep_a_timer_pending`] wakes: well under the shortest header read timeout (1 s).
const TIMER_HEARTBEAT: Duration = Duration::from_millis(250);

/// Keeps a timer pending on the calling runtime at all times, each at most [`TIMER_HEARTBEAT`]
/// ahead. tokio wakes its I/O driver, with a write to an eventfd, whenever a timer is set earlier
/// than the driver's next planned wake-up, and with no other timer pending there is none. When
/// every request armed hyper's header read timer, that was a system call and a needless turn of
/// the event loop per request (`perf record -e syscalls:sys_enter_write` at 64 connections: one
/// eventfd write per request); with this timer pending, every deadline set 1 s or more ahead
/// (a body's read timeout) is later than the next wake-up, and setting it wakes nobody. On one
/// core thread at 64 connections that was 2–11 % more debits/s and 0.1–1.4 µs less CPU per debit
/// in four alternating rounds; on the shared workers no difference showed through the noise.
pub(crate) async fn keep_a_timer_pending() {
    loop {
        tokio::time::sleep(TIMER_HEARTBEAT).await;
    }
}

/// Sets the kernel's send buffer of `stream` (`server.send_buffer_bytes`); a failure leaves the
/// system's.
fn set_send_buffer(stream: &tokio::net::TcpStream, bytes: u32) {
    use std::os::fd::AsRawFd as _;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is the open socket `stream` owns, and the option's value is a
    // c_int that lives across the call, whose size is passed with it.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "server.send_buffer_bytes not applied");
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
        // `server.header_read_timeout_seconds` is kept by [`connections::accept_until`], at
        // nothing per request, where hyper's timer was armed and disarmed for each.
        .header_read_timeout(None)
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
    Response = Response<sse::ApiBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<sse::ApiBody>, Infallible>> + Send,
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
            response.map(|response| sse::into_body(response, &slot))
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
    let header_read_timeout = Duration::from_secs(server.header_read_timeout_seconds.max(1));
    let connections = Connections::new(server, ConnectionMetrics::new());
    connections::accept_until(
        listener,
        &connections,
        header_read_timeout,
        recovery,
        |stream, lease| {
            let slot = Arc::clone(lease.slot());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                slot.begin_request();
                let response = recovering_response(request.uri().path());
                slot.end_request();
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(connections::drive(connection, lease, header_read_timeout));
        },
    )
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
    let request_id = call::request_id(&state, &parts);
    let (route, result) = match router::route(&parts.method, parts.uri.path()) {
        Ok(matched) if kind == SlotKind::Reserved && matched.route.access() != Access::Probe => {
            (matched.route, Err(reserved_slot_refusal(&state)))
        }
        Ok(matched) => {
            // Keyed requests past the limit in progress are refused first, at the least cost.
            let admitted = match matched.route.access() {
                Access::Key(_) => state.in_flight.admit().map(Some),
                Access::Probe | Access::Open => Some(None),
            };
            match admitted {
                None => {
                    // Those admitted may be waiting for records that only this thread's
                    // refusals still look at (a core thread that never runs out of work).
                    state.engine.wal().hand_over_if_overdue();
                    (matched.route, Err(overload_refusal()))
                }
                Some(_admitted) => {
                    let routed = Routed {
                        state: &state,
                        parts: &parts,
                        param: matched.param,
                        body,
                    };
                    (matched.route, router::dispatch(matched.route, routed).await)
                }
            }
        }
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

/// The answer to a keyed request past `server.max_in_flight_requests`. The connection stays open.
fn overload_refusal() -> Problem {
    Problem::unavailable(
        "server-busy",
        "the server has as many requests in progress as it admits; retry shortly",
    )
}

/// The answer to anything but a probe on a reserved slot; counted.
fn reserved_slot_refusal(state: &ApiState) -> Problem {
    state.metrics.connections.refused(Refusal::ReservedSlot, 1);
    Problem::busy("every connection slot is taken; this connection may only ask for /livez, /readyz, /healthz and /metrics")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Runs `rounds` of what a request does to the timers (arm a timer a second ahead, disarm
    /// it), each after a wake-up from another thread, on a single-threaded runtime, with or
    /// without [`super::keep_a_timer_pending`]; returns how often the runtime's thread parked.
    fn parks_per_round(heartbeat: bool, rounds: usize) -> f64 {
        let parks = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&parks);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            })
            .build()
            .expect("runtime");
        let before = runtime.block_on(async {
            if heartbeat {
                tokio::spawn(super::keep_a_timer_pending());
                tokio::task::yield_now().await;
            }
            parks.load(Ordering::Relaxed)
        });
        runtime.block_on(async {
            for _ in 0..rounds {
                let (sender, receiver) = tokio::sync::oneshot::channel();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    let _ = sender.send(());
                });
                let _ = receiver.await;
                // A request's head: its read timer armed, then disarmed once the head is read.
                let mut timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
                let _ = poll_once(timer.as_mut()).await;
            }
        });
        (parks.load(Ordering::Relaxed) - before) as f64 / rounds as f64
    }

    /// Polls `future` once and returns whether it was ready.
    async fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let mut future = Some(future);
        std::future::poll_fn(move |cx| {
            let ready = future.take().expect("polled once").poll(cx).is_ready();
            std::task::Poll::Ready(ready)
        })
        .await
    }

    /// With no timer pending, arming one wakes the runtime's driver (an eventfd write), which
    /// then parks once more for nothing; with the heartbeat pending, a request's timer costs no
    /// extra park.
    #[test]
    fn with_a_timer_pending_a_request_timer_does_not_wake_the_runtime() {
        let rounds = 200;
        let without = parks_per_round(false, rounds);
        let with = parks_per_round(true, rounds);
        assert!(
            without >= 1.8,
            "{without} parks per round without the heartbeat"
        );
        assert!(with <= 1.2, "{with} parks per round with it");
    }
}
