//! Metric names, descriptions and the Prometheus recorder. Handles are created once and cached:
//! nothing on a request path looks a metric up by name.
//!
//! The recorder must be installed before the engine opens, because the log writer takes its
//! handles when its thread starts. [`install`] is idempotent, so tests that run many servers in
//! one process share one recorder.

use std::sync::OnceLock;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::types::CreditKind;

/// Seconds buckets for request latency: 50 µs to 2.5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];
/// Seconds buckets for calls to payment gateways: 10 ms to a minute.
const GATEWAY_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];
/// Records per group commit.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
/// Seconds buckets for snapshots: 1 ms to 2 min.
const SNAPSHOT_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes every metric; returns the
/// handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("creditd_gateway_request_duration_seconds".into()),
                    GATEWAY_BUCKETS,
                )
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full("creditd_wal_batch_records".into()), BATCH_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("creditd_snapshot_duration_seconds".into()), SNAPSHOT_BUCKETS)
                })
                .map(PrometheusBuilder::build_recorder);
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_err() {
                        tracing::warn!("a metrics recorder was already installed; /metrics shows only this one's");
                    }
                    describe();
                    handle
                }
                Err(error) => {
                    tracing::error!(%error, "metrics recorder could not be built; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

fn describe() {
    describe_counter!(
        "creditd_debits_total",
        Unit::Count,
        "Debits by outcome: ok, insufficient (402), rejected (other errors)."
    );
    describe_counter!(
        "creditd_credits_total",
        Unit::Count,
        "Credits applied, by kind (grant, topup, refund, adjustment)."
    );
    describe_histogram!(
        "creditd_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency from headers read to response ready, by route template, method and status."
    );
    describe_histogram!(
        "creditd_wal_fsync_duration_seconds",
        Unit::Seconds,
        "Time of each log fdatasync."
    );
    describe_histogram!(
        "creditd_wal_batch_records",
        Unit::Count,
        "Records made durable per group commit."
    );
    describe_counter!(
        "creditd_wal_written_bytes_total",
        Unit::Bytes,
        "Bytes written to the log."
    );
    describe_gauge!(
        "creditd_wallets",
        Unit::Count,
        "Wallets held in memory, all tenants (refreshed every 15 s)."
    );
    describe_gauge!(
        "creditd_users",
        Unit::Count,
        "Users held in memory, all tenants (refreshed every 15 s)."
    );
    describe_gauge!(
        "creditd_reservations_open",
        Unit::Count,
        "Open reservations, all tenants (refreshed every 15 s)."
    );
    describe_gauge!(
        "creditd_idempotency_keys",
        Unit::Count,
        "Idempotency keys held, all tenants."
    );
    describe_gauge!(
        "creditd_wal_durable_lsn",
        Unit::Count,
        "The highest LSN known to be durable."
    );
    describe_gauge!(
        "creditd_recovery_fallback_problems",
        Unit::Count,
        "Problems recovery found in what the fallback (older) snapshot would need: damaged or missing \
         segments before the ones replayed, newer snapshots passed over. 0 when the fallback is intact."
    );
    describe_gauge!(
        "creditd_ready",
        Unit::Count,
        "1 when the server accepts writes, 0 when not ready or poisoned."
    );
    describe_gauge!(
        "creditd_http_connections_open",
        Unit::Count,
        "Open HTTP connections by slot: regular, or reserved for health probes and metrics (refreshed every 5 s)."
    );
    describe_counter!(
        "creditd_http_connections_refused_total",
        Unit::Count,
        "Connections the server refused or closed on its own, by reason: shed_idle, full, reserved_slot, header_too_large, body_budget."
    );
    describe_gauge!(
        "creditd_http_body_bytes_buffered",
        Unit::Bytes,
        "Bytes of request bodies claimed against server.body_budget_bytes (refreshed every 5 s)."
    );
    describe_counter!(
        "creditd_autotopup_total",
        Unit::Count,
        "Automatic top-up attempts by outcome."
    );
    describe_histogram!(
        "creditd_snapshot_duration_seconds",
        Unit::Seconds,
        "Time to write one snapshot."
    );
}

/// Outcomes of a debit, for `creditd_debits_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebitOutcome {
    /// Applied and durable.
    Ok,
    /// Refused with 402.
    Insufficient,
    /// Refused for any other reason.
    Rejected,
}

/// Why the server refused a connection or closed one on its own, for
/// `creditd_http_connections_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An open connection waiting for its next request was closed to make room for a new one.
    ShedIdle,
    /// A new connection was closed at once: every slot, reserved ones included, had a request
    /// in progress.
    Full,
    /// A request other than a health probe or `/metrics` came on a reserved slot: 503 and close.
    ReservedSlot,
    /// The request head was over `server.max_header_bytes`: 431 and close.
    HeaderTooLarge,
    /// The body would have taken the buffered bodies past `server.body_budget_bytes`: 503 and
    /// close, the body unread.
    BodyBudget,
}

impl Refusal {
    const ALL: [Refusal; 5] = [
        Refusal::ShedIdle,
        Refusal::Full,
        Refusal::ReservedSlot,
        Refusal::HeaderTooLarge,
        Refusal::BodyBudget,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ShedIdle => "shed_idle",
            Refusal::Full => "full",
            Refusal::ReservedSlot => "reserved_slot",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::BodyBudget => "body_budget",
        }
    }
}

/// Cached handles of the connection metrics; cheap to clone (the handles are shared).
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    refused: [Counter; 5],
    open_regular: Gauge,
    open_reserved: Gauge,
}

impl ConnectionMetrics {
    /// Creates the handles; every series exists from then on, at zero.
    pub fn new() -> ConnectionMetrics {
        let refused = Refusal::ALL.map(|reason| {
            let counter = metrics::counter!("creditd_http_connections_refused_total", "reason" => reason.as_str());
            counter.increment(0);
            counter
        });
        ConnectionMetrics {
            refused,
            open_regular: metrics::gauge!("creditd_http_connections_open", "slot" => "regular"),
            open_reserved: metrics::gauge!("creditd_http_connections_open", "slot" => "reserved"),
        }
    }

    /// Counts `count` connections refused or closed for `reason`.
    pub fn refused(&self, reason: Refusal, count: u64) {
        self.refused[reason as usize].increment(count);
    }

    /// Sets the open-connection gauges.
    pub fn set_open(&self, regular: u32, reserved: u32) {
        self.open_regular.set(f64::from(regular));
        self.open_reserved.set(f64::from(reserved));
    }
}

impl Default for ConnectionMetrics {
    fn default() -> ConnectionMetrics {
        ConnectionMetrics::new()
    }
}

/// Cached handles of the metrics that requests update.
pub struct Metrics {
    debits: [Counter; 3],
    credits: [Counter; 4],
    http: Box<[[[OnceLock<Histogram>; STATUS_SLOTS]; METHOD_SLOTS]]>,
    routes: &'static [&'static str],
    /// Wallets gauge.
    pub wallets: Gauge,
    /// Users gauge.
    pub users: Gauge,
    /// Open reservations gauge.
    pub reservations_open: Gauge,
    /// Idempotency keys gauge.
    pub idempotency_keys: Gauge,
    /// Durable LSN gauge.
    pub durable_lsn: Gauge,
    /// Readiness gauge.
    pub ready: Gauge,
    /// Bytes of request bodies claimed against the body budget.
    pub body_bytes_buffered: Gauge,
    /// Connection refusals and open connections.
    pub connections: ConnectionMetrics,
}

/// The statuses creditd answers with, each with its own histogram slot; others share the last.
const STATUSES: [u16; 17] = [
    200, 201, 204, 400, 401, 402, 403, 404, 405, 409, 413, 415, 422, 429, 500, 503, 0,
];
const STATUS_SLOTS: usize = STATUSES.len();

impl Metrics {
    /// Creates the handles; `routes` are the route templates used as the `route` label, indexed
    /// by the number passed to [`Metrics::http`].
    pub fn new(routes: &'static [&'static str]) -> Metrics {
        let debit =
            |outcome: &'static str| metrics::counter!("creditd_debits_total", "outcome" => outcome);
        let credit =
            |kind: CreditKind| metrics::counter!("creditd_credits_total", "kind" => kind.as_str());
        let autotopup = |outcome: &'static str| metrics::counter!("creditd_autotopup_total", "outcome" => outcome);
        // Registered at zero so dashboards see the series before the first top-up.
        for outcome in ["succeeded", "failed", "skipped"] {
            autotopup(outcome).increment(0);
        }
        Metrics {
            debits: [debit("ok"), debit("insufficient"), debit("rejected")],
            credits: [
                CreditKind::Grant,
                CreditKind::Topup,
                CreditKind::Refund,
                CreditKind::Adjustment,
            ]
            .map(credit),
            http: (0..routes.len())
                .map(|_| std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())))
                .collect(),
            routes,
            wallets: metrics::gauge!("creditd_wallets"),
            users: metrics::gauge!("creditd_users"),
            reservations_open: metrics::gauge!("creditd_reservations_open"),
            idempotency_keys: metrics::gauge!("creditd_idempotency_keys"),
            durable_lsn: metrics::gauge!("creditd_wal_durable_lsn"),
            ready: metrics::gauge!("creditd_ready"),
            body_bytes_buffered: metrics::gauge!("creditd_http_body_bytes_buffered"),
            connections: ConnectionMetrics::new(),
        }
    }

    /// Counts a debit.
    pub fn debit(&self, outcome: DebitOutcome) {
        self.debits[outcome as usize].increment(1);
    }

    /// Counts a credit.
    pub fn credit(&self, kind: CreditKind) {
        let index = match kind {
            CreditKind::Grant => 0,
            CreditKind::Topup => 1,
            CreditKind::Refund => 2,
            CreditKind::Adjustment => 3,
        };
        self.credits[index].increment(1);
    }

    /// The latency histogram of a route, method and status, created on first use.
    pub fn http(&self, route: usize, method: &http::Method, status: u16) -> Option<&Histogram> {
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUS_SLOTS - 1);
        let template = *self.routes.get(route)?;
        let (method_slot, method) = method_label(method);
        let cell = self.http.get(route)?.get(method_slot)?.get(slot)?;
        Some(cell.get_or_init(|| {
            let status = if slot == STATUS_SLOTS - 1 {
                "other".to_owned()
            } else {
                status.to_string()
            };
            metrics::histogram!(
                "creditd_http_request_duration_seconds",
                "route" => template,
                "method" => method,
                "status" => status
            )
        }))
    }
}

const METHOD_SLOTS: usize = 6;

fn method_label(method: &http::Method) -> (usize, &'static str) {
    match *method {
        http::Method::GET => (0, "GET"),
        http::Method::PUT => (1, "PUT"),
        http::Method::POST => (2, "POST"),
        http::Method::DELETE => (3, "DELETE"),
        http::Method::HEAD => (4, "HEAD"),
        _ => (5, "OTHER"),
    }
}
