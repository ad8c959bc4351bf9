//! Metric descriptions, bucket boundaries and the Prometheus recorder; the names themselves are
//! in [`names`]. Handles are created once and cached: nothing on a request path looks a metric up
//! by name.
//!
//! The standard `process_*` metrics (CPU time, memory, file descriptors) come from the
//! `metrics-process` crate: they are described with the rest at [`install`], and [`ProcessMetrics`] reads
//! them from the operating system when the server's upkeep task asks.
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

pub mod names;

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
                    Matcher::Full(names::GATEWAY_REQUEST_DURATION_SECONDS.into()),
                    GATEWAY_BUCKETS,
                )
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::WAL_BATCH_RECORDS.into()), BATCH_BUCKETS))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::SNAPSHOT_DURATION_SECONDS.into()), SNAPSHOT_BUCKETS)
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

/// Describes every metric, so that each family on `/metrics` has its `# HELP` line. A name that
/// is used but never described is exported without one, which `promtool check metrics` reports.
fn describe() {
    describe_counter!(
        names::DEBITS_TOTAL,
        Unit::Count,
        "Debits by outcome: ok, insufficient (402), rejected (other errors)."
    );
    describe_counter!(
        names::CREDITS_TOTAL,
        Unit::Count,
        "Credits applied, by kind (grant, topup, refund, adjustment)."
    );
    describe_histogram!(
        names::HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency from headers read to response ready, by route template, method and status."
    );
    describe_histogram!(
        names::WAL_FSYNC_DURATION_SECONDS,
        Unit::Seconds,
        "Time of each log fdatasync."
    );
    describe_histogram!(
        names::WAL_BATCH_RECORDS,
        Unit::Count,
        "Records made durable per group commit."
    );
    describe_counter!(
        names::WAL_WRITTEN_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes written to the log."
    );
    describe_counter!(
        names::WAL_LED_BATCHES_TOTAL,
        Unit::Count,
        "Group commits written and synced by a waiting request's own thread (a lone request); \
         the rest are the log writer thread's."
    );
    describe_gauge!(
        names::WALLETS,
        Unit::Count,
        "Wallets held in memory, all tenants (refreshed every 15 s)."
    );
    describe_gauge!(
        names::USERS,
        Unit::Count,
        "Users held in memory, all tenants (refreshed every 15 s)."
    );
    describe_gauge!(
        names::RESERVATIONS_OPEN,
        Unit::Count,
        "Open reservations, all tenants (refreshed every 15 s)."
    );
    describe_gauge!(
        names::IDEMPOTENCY_KEYS,
        Unit::Count,
        "Idempotency keys held, all tenants."
    );
    describe_gauge!(
        names::WAL_DURABLE_LSN,
        Unit::Count,
        "The highest LSN known to be durable."
    );
    describe_gauge!(
        names::WAL_PENDING_RECORDS,
        Unit::Count,
        "Records appended to the log and not yet durable (queued, or being written and synced)."
    );
    describe_gauge!(
        names::HISTORY_LAG_RECORDS,
        Unit::Count,
        "Durable log records the ledger history has not applied yet (0 when it is caught up)."
    );
    describe_counter!(
        names::HISTORY_ERRORS_TOTAL,
        Unit::Count,
        "History feeding steps that failed (database or log errors); each is retried after 1 s."
    );
    describe_counter!(
        names::HISTORY_ACCOUNT_LOOKUPS_TOTAL,
        Unit::Count,
        "The history feeder's account lookups, one per ledger entry, by where the account was found: memory or the database (history.account_cache too small when most are database)."
    );
    describe_gauge!(
        names::HISTORY_ACCOUNTS_REMEMBERED,
        Unit::Count,
        "Accounts the history feeder remembers (at most history.account_cache between steps)."
    );
    describe_gauge!(
        names::STREAMS_OPEN,
        Unit::Count,
        "Live balance streams open."
    );
    describe_counter!(
        names::STREAMS_CUT_TOTAL,
        Unit::Count,
        "Live balance streams the server ended: a reader too slow for its buffer, or shutdown."
    );
    describe_counter!(
        names::STREAMS_ERRORS_TOTAL,
        Unit::Count,
        "Failed reads of the log by the streams' follower; each is retried after 0.5 s."
    );
    describe_counter!(
        names::HISTORY_PURGED_ENTRIES_TOTAL,
        Unit::Count,
        "Ledger entries removed from the history because they are older than history.retention."
    );
    describe_gauge!(
        names::RECOVERY_FALLBACK_PROBLEMS,
        Unit::Count,
        "Problems recovery found in what the fallback (older) snapshot would need: damaged or missing \
         segments before the ones replayed, newer snapshots passed over. 0 when the fallback is intact."
    );
    describe_gauge!(
        names::READY,
        Unit::Count,
        "1 when the server accepts writes, 0 when not ready or poisoned."
    );
    describe_gauge!(
        names::HTTP_CONNECTIONS_OPEN,
        Unit::Count,
        "Open HTTP connections by slot: regular, or reserved for health probes and metrics (refreshed every 5 s)."
    );
    describe_counter!(
        names::HTTP_CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections the server refused or closed on its own, by reason: shed_idle, full, reserved_slot, header_too_large, body_budget."
    );
    describe_counter!(
        names::HTTP_CONNECTIONS_PLACED_TOTAL,
        Unit::Count,
        "With server.core_threads, accepted connections by where they are served: core_thread, or workers when every core thread was stuck in a sync."
    );
    describe_gauge!(
        names::HTTP_BODY_BYTES_BUFFERED,
        Unit::Bytes,
        "Bytes of request bodies claimed against server.body_budget_bytes (refreshed every 5 s)."
    );
    describe_counter!(
        names::AUTOTOPUP_TOTAL,
        Unit::Count,
        "Automatic top-up attempts by outcome."
    );
    describe_histogram!(
        names::SNAPSHOT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to write one snapshot."
    );
    describe_histogram!(
        names::GATEWAY_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time of one call to the payment gateway, by gateway and op (initialize, charge, verify)."
    );
    describe_counter!(
        names::WEBHOOKS_RECEIVED_TOTAL,
        Unit::Count,
        "Gateway webhooks handled, by gateway and outcome."
    );
    describe_counter!(
        names::EVENTS_DELIVERED_TOTAL,
        Unit::Count,
        "Events to tenants' applications, once per event, by outcome: delivered, failed, dropped, no_endpoint."
    );
    describe_counter!(
        names::EVENTS_DROPPED_TOTAL,
        Unit::Count,
        "Events the engine could not queue for delivery because the queue was full; never sent."
    );
    metrics_process::Collector::default().describe();
}

/// The standard `process_*` metrics (see [`names::PROCESS`]), read from the operating system on
/// each [`ProcessMetrics::collect`]; cheap to clone (the names are shared).
#[derive(Debug, Clone, Default)]
pub struct ProcessMetrics {
    collector: metrics_process::Collector,
}

impl ProcessMetrics {
    /// Reads CPU time, memory, file descriptors and threads and sets the metrics. It reads files
    /// under `/proc` (on Linux), listing every open descriptor, so call it off the async workers.
    pub fn collect(&self) {
        self.collector.collect();
    }
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
            let counter = metrics::counter!(names::HTTP_CONNECTIONS_REFUSED_TOTAL, "reason" => reason.as_str());
            counter.increment(0);
            counter
        });
        ConnectionMetrics {
            refused,
            open_regular: metrics::gauge!(names::HTTP_CONNECTIONS_OPEN, "slot" => "regular"),
            open_reserved: metrics::gauge!(names::HTTP_CONNECTIONS_OPEN, "slot" => "reserved"),
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
    /// Records appended to the log and not yet durable.
    pub wal_pending_records: Gauge,
    /// Readiness gauge.
    pub ready: Gauge,
    /// Bytes of request bodies claimed against the body budget.
    pub body_bytes_buffered: Gauge,
    /// Connection refusals and open connections.
    pub connections: ConnectionMetrics,
    /// The standard process metrics, collected by the server's upkeep task.
    pub process: ProcessMetrics,
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
            |outcome: &'static str| metrics::counter!(names::DEBITS_TOTAL, "outcome" => outcome);
        let credit =
            |kind: CreditKind| metrics::counter!(names::CREDITS_TOTAL, "kind" => kind.as_str());
        let autotopup =
            |outcome: &'static str| metrics::counter!(names::AUTOTOPUP_TOTAL, "outcome" => outcome);
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
            wallets: metrics::gauge!(names::WALLETS),
            users: metrics::gauge!(names::USERS),
            reservations_open: metrics::gauge!(names::RESERVATIONS_OPEN),
            idempotency_keys: metrics::gauge!(names::IDEMPOTENCY_KEYS),
            durable_lsn: metrics::gauge!(names::WAL_DURABLE_LSN),
            wal_pending_records: metrics::gauge!(names::WAL_PENDING_RECORDS),
            ready: metrics::gauge!(names::READY),
            body_bytes_buffered: metrics::gauge!(names::HTTP_BODY_BYTES_BUFFERED),
            connections: ConnectionMetrics::new(),
            process: ProcessMetrics::default(),
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
                names::HTTP_REQUEST_DURATION_SECONDS,
                "route" => template,
                "method" => method,
                "status" => status
            )
        }))
    }
}

const METHOD_SLOTS: usize = 7;

fn method_label(method: &http::Method) -> (usize, &'static str) {
    match *method {
        http::Method::GET => (0, "GET"),
        http::Method::PUT => (1, "PUT"),
        http::Method::POST => (2, "POST"),
        http::Method::DELETE => (3, "DELETE"),
        http::Method::HEAD => (4, "HEAD"),
        http::Method::PATCH => (5, "PATCH"),
        _ => (6, "OTHER"),
    }
}
