//! Every metric name creditd exports, declared once. The files that create handles, the
//! descriptions in [`crate::metrics`] and the bucket matchers all use these constants, so a name
//! cannot be spelled two ways, and a test checks that `docs/metrics.md` documents each name in
//! [`ALL`] and nothing else under the `creditd_` prefix.
//!
//! A leaf: this module imports nothing from the crate, so any file may use it without pulling in
//! the recorder or creating an import circle. It holds names only; types, units, labels and
//! meanings are in `docs/metrics.md`.

/// Counter, `outcome`: debit attempts that reached the engine (named in the API contract).
pub const DEBITS_TOTAL: &str = "creditd_debits_total";
/// Counter, `kind`: credits applied, counted once durable (named in the API contract).
pub const CREDITS_TOTAL: &str = "creditd_credits_total";
/// Histogram, `route`, `method`, `status`: HTTP request latency (named in the API contract).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "creditd_http_request_duration_seconds";
/// Gauge, `slot`: open HTTP connections by the slot they hold.
pub const HTTP_CONNECTIONS_OPEN: &str = "creditd_http_connections_open";
/// Counter, `reason`: connections the server refused or closed on its own.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "creditd_http_connections_refused_total";
/// Counter, `on`: accepted connections by where they are served, with core threads.
pub const HTTP_CONNECTIONS_PLACED_TOTAL: &str = "creditd_http_connections_placed_total";
/// Gauge: bytes of request bodies claimed against the body budget.
pub const HTTP_BODY_BYTES_BUFFERED: &str = "creditd_http_body_bytes_buffered";
/// Histogram: duration of each log `fdatasync` (named in the API contract).
pub const WAL_FSYNC_DURATION_SECONDS: &str = "creditd_wal_fsync_duration_seconds";
/// Histogram: records made durable per group commit (named in the API contract).
pub const WAL_BATCH_RECORDS: &str = "creditd_wal_batch_records";
/// Counter: bytes of log records written (named in the API contract).
pub const WAL_WRITTEN_BYTES_TOTAL: &str = "creditd_wal_written_bytes_total";
/// Counter: group commits a waiting request's own thread wrote and synced.
pub const WAL_LED_BATCHES_TOTAL: &str = "creditd_wal_led_batches_total";
/// Gauge: wallets held in memory (named in the API contract).
pub const WALLETS: &str = "creditd_wallets";
/// Gauge: users held in memory.
pub const USERS: &str = "creditd_users";
/// Gauge: open reservations (named in the API contract).
pub const RESERVATIONS_OPEN: &str = "creditd_reservations_open";
/// Gauge: idempotency keys held.
pub const IDEMPOTENCY_KEYS: &str = "creditd_idempotency_keys";
/// Gauge: the highest log sequence number known to be durable.
pub const WAL_DURABLE_LSN: &str = "creditd_wal_durable_lsn";
/// Gauge: records appended to the log and not yet durable.
pub const WAL_PENDING_RECORDS: &str = "creditd_wal_pending_records";
/// Gauge: problems recovery found in what the fallback snapshot would need.
pub const RECOVERY_FALLBACK_PROBLEMS: &str = "creditd_recovery_fallback_problems";
/// Gauge: durable log records the history has not applied yet.
pub const HISTORY_LAG_RECORDS: &str = "creditd_history_lag_records";
/// Counter: failed history feeding steps (each retried).
pub const HISTORY_ERRORS_TOTAL: &str = "creditd_history_errors_total";
/// Counter: ledger entries removed from the history by `history.retention`.
pub const HISTORY_PURGED_ENTRIES_TOTAL: &str = "creditd_history_purged_entries_total";
/// Counter, `from`: the history feeder's account lookups (`memory`, `database`).
pub const HISTORY_ACCOUNT_LOOKUPS_TOTAL: &str = "creditd_history_account_lookups_total";
/// Gauge: accounts the history feeder remembers (`history.account_cache` at most).
pub const HISTORY_ACCOUNTS_REMEMBERED: &str = "creditd_history_accounts_remembered";
/// Gauge: live balance streams open.
pub const STREAMS_OPEN: &str = "creditd_streams_open";
/// Counter, `reason`: live balance streams the server ended (`slow_reader`, `shutdown`).
pub const STREAMS_CUT_TOTAL: &str = "creditd_streams_cut_total";
/// Counter: failed reads of the log by the streams' follower (each retried).
pub const STREAMS_ERRORS_TOTAL: &str = "creditd_streams_errors_total";
/// Gauge: 1 when the server accepts writes, 0 when not.
pub const READY: &str = "creditd_ready";
/// Counter, `outcome`: automatic top-up decisions and charges (named in the API contract).
pub const AUTOTOPUP_TOTAL: &str = "creditd_autotopup_total";
/// Histogram, `gateway`, `op`: time of one call to the payment gateway.
pub const GATEWAY_REQUEST_DURATION_SECONDS: &str = "creditd_gateway_request_duration_seconds";
/// Counter, `gateway`, `outcome`: gateway webhooks handled.
pub const WEBHOOKS_RECEIVED_TOTAL: &str = "creditd_webhooks_received_total";
/// Counter, `outcome`: events to tenants' applications, once per event.
pub const EVENTS_DELIVERED_TOTAL: &str = "creditd_events_delivered_total";
/// Counter: events the engine could not queue for delivery.
pub const EVENTS_DROPPED_TOTAL: &str = "creditd_events_dropped_total";
/// Histogram: time to write one snapshot (named in the API contract).
pub const SNAPSHOT_DURATION_SECONDS: &str = "creditd_snapshot_duration_seconds";

/// Every `creditd_` metric name above, in the order of the table in `docs/metrics.md`.
pub const ALL: &[&str] = &[
    DEBITS_TOTAL,
    CREDITS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_CONNECTIONS_OPEN,
    HTTP_CONNECTIONS_REFUSED_TOTAL,
    HTTP_CONNECTIONS_PLACED_TOTAL,
    HTTP_BODY_BYTES_BUFFERED,
    WAL_FSYNC_DURATION_SECONDS,
    WAL_BATCH_RECORDS,
    WAL_WRITTEN_BYTES_TOTAL,
    WAL_LED_BATCHES_TOTAL,
    WALLETS,
    USERS,
    RESERVATIONS_OPEN,
    IDEMPOTENCY_KEYS,
    WAL_DURABLE_LSN,
    WAL_PENDING_RECORDS,
    RECOVERY_FALLBACK_PROBLEMS,
    HISTORY_LAG_RECORDS,
    HISTORY_ERRORS_TOTAL,
    HISTORY_PURGED_ENTRIES_TOTAL,
    HISTORY_ACCOUNT_LOOKUPS_TOTAL,
    HISTORY_ACCOUNTS_REMEMBERED,
    STREAMS_OPEN,
    STREAMS_CUT_TOTAL,
    STREAMS_ERRORS_TOTAL,
    READY,
    AUTOTOPUP_TOTAL,
    GATEWAY_REQUEST_DURATION_SECONDS,
    WEBHOOKS_RECEIVED_TOTAL,
    EVENTS_DELIVERED_TOTAL,
    EVENTS_DROPPED_TOTAL,
    SNAPSHOT_DURATION_SECONDS,
];

/// The standard Prometheus process metrics, named by the `metrics-process` crate that exports
/// them rather than here; listed so that the documentation test and the black-box test can check
/// them. `process_threads` and the virtual-memory pair are Linux and other Unix only.
pub const PROCESS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
];

#[cfg(test)]
mod tests {
    use super::{ALL, PROCESS};
    use std::collections::BTreeSet;

    const DOC: &str = include_str!("../../docs/metrics.md");

    /// The names in the first column of the table under "## The metrics".
    fn documented() -> BTreeSet<&'static str> {
        let section = DOC
            .split("\n## ")
            .find(|section| section.starts_with("The metrics"))
            .expect("docs/metrics.md has a section \"The metrics\"");
        section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn every_name_is_documented_and_every_documented_name_is_declared() {
        let documented = documented();
        let declared: BTreeSet<&str> = ALL.iter().chain(PROCESS).copied().collect();
        assert_eq!(
            declared.len(),
            ALL.len() + PROCESS.len(),
            "a name is listed twice"
        );
        let undocumented: Vec<_> = declared.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "not in the table of docs/metrics.md: {undocumented:?}"
        );
        let undeclared: Vec<_> = documented.difference(&declared).collect();
        assert!(
            undeclared.is_empty(),
            "documented in docs/metrics.md but not in names::ALL or names::PROCESS: {undeclared:?}"
        );
    }

    #[test]
    fn names_are_prometheus_names_with_the_right_prefix() {
        for name in ALL {
            assert!(name.starts_with("creditd_"), "{name}");
        }
        for name in PROCESS {
            assert!(name.starts_with("process_"), "{name}");
        }
        for name in ALL.iter().chain(PROCESS) {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
        }
    }
}
