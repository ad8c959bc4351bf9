//! Configuration: a TOML file plus `CREDITD_<SECTION>__<KEY>` environment overrides, validated at
//! start. Unknown keys, in the file or the environment, are errors. Every field has a default, so
//! an empty file is a valid configuration; the repository's `config.toml` spells them out.
//!
//! Environment values are typed by the key they override: an integer key takes an integer, a
//! string key takes the text as it is, a list (such as `auth.keys`) takes an inline TOML array.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::types::{Limits, MAX_METADATA_DEPTH};
use crate::engine::EngineOptions;
use crate::wal::FsyncMode;

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "CREDITD_";

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file or an override is not valid TOML, or does not fit the schema.
    #[error("{0}")]
    Parse(String),
    /// An environment variable names no known key.
    #[error("{variable}: no such configuration key ({key})")]
    UnknownEnvironmentKey {
        /// The variable.
        variable: String,
        /// The key it names.
        key: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP server.
    pub server: ServerConfig,
    /// The log and snapshots.
    pub storage: StorageConfig,
    /// When snapshots are taken.
    pub snapshot: SnapshotConfig,
    /// The ledger history.
    pub history: HistoryConfig,
    /// In-memory layout and background work.
    pub engine: EngineConfig,
    /// Idempotency keys.
    pub idempotency: IdempotencyConfig,
    /// Request limits.
    pub limits: Limits,
    /// Payment gateways.
    pub payments: PaymentsConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// Logging.
    pub log: LogConfig,
    /// Live balance streams, stream tokens and portal links.
    pub streams: StreamsConfig,
}

/// `[streams]`: the live balance stream (`GET /v1/users/{user_id}/wallet/stream`), the tokens a
/// browser opens it with, and the signed links of the hosted top-up page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Most streams open at once, all tenants together (default 1024); one more gets 503
    /// `streams-full`.
    pub max_open: u32,
    /// Events a stream holds for a reader that does not keep up (default 64, at least 1): when
    /// they are all waiting to be written to the connection, the stream is cut off.
    pub buffer_events: u32,
    /// Seconds between keep-alive comments on an idle stream (default 15, at least 1).
    pub keepalive_seconds: u64,
    /// How long a stream token is valid, seconds (default 300, 1 to 3600).
    pub token_ttl_seconds: u64,
    /// How long a portal link is valid, seconds (default 900, 1 to 86 400).
    pub portal_ttl_seconds: u64,
    /// Origins (`https://app.example.com`) a portal session's `return_url` may point at (default
    /// none: a session with a `return_url` is refused, 422 `invalid-return-url`).
    pub portal_return_origins: Vec<String>,
    /// The key that signs stream tokens and portal links (at least 32 characters). Default:
    /// 32 random bytes kept in `<data_dir>/signing.key`, made at the first start.
    pub signing_secret: Option<String>,
}

impl Default for StreamsConfig {
    fn default() -> StreamsConfig {
        StreamsConfig {
            max_open: 1024,
            buffer_events: 64,
            keepalive_seconds: 15,
            token_ttl_seconds: 300,
            portal_ttl_seconds: 900,
            portal_return_origins: Vec::new(),
            signing_secret: None,
        }
    }
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8080`). A port of 0 picks a free one and prints it.
    pub listen: SocketAddr,
    /// Largest request body in bytes (default 1 MiB); larger bodies get 413.
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers), bytes (default 16 KiB; 4 KiB to 1 MiB).
    /// A larger head gets 431 from the HTTP layer, with an empty body, and the connection is
    /// closed. It is also the most a connection buffers while it waits for a head, so that
    /// idle and half-sent connections cost little memory whatever `max_body_bytes` is.
    pub max_header_bytes: u32,
    /// Most bytes of request bodies held at once by all requests together, bytes (default
    /// 64 MiB; at least `max_body_bytes`). A request whose declared length, or whose chunked body
    /// as it arrives, would take the total past it gets 503 `server-busy` with `Retry-After`
    /// before the rest of its body is read, and its connection is closed.
    pub body_budget_bytes: u64,
    /// Time allowed to send a request's headers, seconds (default 10), counted from the
    /// connection's opening or its last answer: a connection that takes longer, or stays idle
    /// that long between requests, is closed. A streamed answer's connection waits for none.
    pub header_read_timeout_seconds: u64,
    /// Time allowed to send a request body once the headers are in, seconds (default 10); a body
    /// slower than that gets 408 and the connection is closed.
    pub body_read_timeout_seconds: u64,
    /// Most open connections for the API (default 10 000). When all are open, a new connection
    /// closes the ones that have waited longest for their next request (never one with a request
    /// in progress); see `reserved_connections` for when every one has a request in progress.
    pub max_connections: u32,
    /// Connections kept beyond `max_connections` for health probes and metrics (default 16;
    /// 1 to 1024). A connection accepted while every regular one has a request in progress takes
    /// one of these, and may ask only for `/livez`, `/readyz`, `/healthz` and `/metrics`: anything
    /// else gets 503 `server-busy` and the connection is closed.
    pub reserved_connections: u32,
    /// Time allowed for in-flight requests to finish at shutdown, seconds (default 10).
    pub shutdown_grace_seconds: u64,
    /// Base URL clients reach this server at (`https://credits.example.com`), for the links it
    /// hands out: `topup_url` in a 402, checkout pages and their callbacks. Default: from the
    /// bound address, which is only right when clients reach that very address; behind a proxy
    /// or a load balancer, or when `listen` is `0.0.0.0` or `[::]` (then a warning is logged at
    /// start), set it.
    pub public_url: Option<String>,
    /// Threads serving requests (default 0: one per core). With the clients on the same small
    /// machine, fewer threads than cores can serve more (fewer context switches).
    pub workers: u32,
    /// The kernel's send buffer of each API connection, bytes (default 0: the system's, which
    /// grows on its own up to `net.ipv4.tcp_wmem`). What a live stream's reader may leave unread
    /// before the stream's own buffer (`streams.buffer_events`) fills and it is cut off.
    pub send_buffer_bytes: u32,
    /// Most keyed API requests in progress at once (default 0: no limit). One more gets 503
    /// `server-busy` with `Retry-After: 1` at once, before its key is checked or its body read,
    /// and the connection stays open. Off by default: on the measured machine a limit below the
    /// number of busy connections lowered the throughput (smaller log batches) more than it
    /// shortened the answers' wait; see `docs/design.md`, "Overload: requests in progress".
    pub max_in_flight_requests: u32,
    /// Threads that serve the API's connections each on a single-threaded runtime of its own
    /// (default `"auto"`: one per two cores, at least one; `0`: none, connections are served by
    /// the shared `workers`). Such a thread, when it has nothing left to run, writes and syncs
    /// the log itself and then answers its waiting requests, as Redis's event loop does: no
    /// hand-off to the log thread and back, and a fraction of the context switches. The price:
    /// while its sync runs (or a disk stalls) the connections already on that thread wait; new
    /// connections go to a thread that is not stuck in a sync, or to the shared workers. See
    /// `docs/design.md`, "Core threads".
    pub core_threads: CoreThreads,
}

/// `server.core_threads`: `"auto"` or a number of threads (`0`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CoreThreads {
    /// One per two cores the process may run on, at least one.
    #[default]
    Auto,
    /// This many (0: none).
    Count(u32),
}

impl CoreThreads {
    /// The most core threads a configuration may ask for.
    pub const MAX: u32 = 256;

    /// How many threads to start on a machine with `cores` cores.
    pub fn count(self, cores: usize) -> usize {
        match self {
            CoreThreads::Auto => (cores / 2).max(1),
            CoreThreads::Count(count) => count as usize,
        }
    }
}

impl Serialize for CoreThreads {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            CoreThreads::Auto => serializer.serialize_str("auto"),
            CoreThreads::Count(count) => serializer.serialize_u32(*count),
        }
    }
}

impl<'de> Deserialize<'de> for CoreThreads {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CoreThreads, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = CoreThreads;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("\"auto\" or a number of threads (0 for none)")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<CoreThreads, E> {
                u32::try_from(value)
                    .map(CoreThreads::Count)
                    .map_err(|_| E::custom(format!("{value} is not a number of threads")))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<CoreThreads, E> {
                u32::try_from(value)
                    .map(CoreThreads::Count)
                    .map_err(|_| E::custom(format!("{value} is not a number of threads")))
            }
            // An environment override arrives as text, typed like the default ("auto").
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<CoreThreads, E> {
                match value.trim() {
                    "auto" => Ok(CoreThreads::Auto),
                    number => number.parse().map(CoreThreads::Count).map_err(|_| {
                        E::custom(format!(
                            "{value:?} is neither \"auto\" nor a number of threads"
                        ))
                    }),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl ServerConfig {
    /// The warning to log at start when links would be built from an address no client can
    /// use: listening on an unspecified address (`0.0.0.0`, `[::]`) without `public_url`.
    pub fn public_url_warning(&self, bound: SocketAddr) -> Option<String> {
        if self.public_url.is_some() || !bound.ip().is_unspecified() {
            return None;
        }
        Some(format!(
            "server.listen is {bound}, an unspecified address, and server.public_url is not set: \
             links this server hands out (topup_url, checkout pages) will name http://{bound}, \
             which clients cannot reach; set server.public_url (CREDITD_SERVER__PUBLIC_URL) to \
             the URL clients use"
        ))
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            body_budget_bytes: 64 * 1024 * 1024,
            header_read_timeout_seconds: 10,
            body_read_timeout_seconds: 10,
            max_connections: 10_000,
            reserved_connections: 16,
            shutdown_grace_seconds: 10,
            public_url: None,
            workers: 0,
            send_buffer_bytes: 0,
            max_in_flight_requests: 0,
            core_threads: CoreThreads::Auto,
        }
    }
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where the log and snapshots live (default `./data`).
    pub data_dir: PathBuf,
    /// `always` (default): every acknowledged write is on disk. `never`: benchmarks only.
    pub fsync: FsyncMode,
    /// Segment size before rotation, bytes (default 64 MiB; minimum 64 KiB).
    pub segment_bytes: u64,
    /// Largest record, bytes (default 1 MiB; 4 KiB to 64 MiB).
    pub max_record_bytes: u32,
    /// Bytes queued for the log writer before writes get 503 (default 64 MiB; 1 MiB to 1 GiB:
    /// what is queued is written as one batch).
    pub queue_bytes: u64,
    /// How far ahead of the log's end its segment is kept written with zeros, bytes (default
    /// 4 MiB; 0 turns it off, as on copy-on-write file systems, where overwriting gains nothing).
    /// A sync of a write into zeroed space need not commit a new file size.
    pub wal_zero_ahead_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        let engine = EngineOptions::default();
        StorageConfig {
            data_dir: engine.data_dir,
            fsync: engine.fsync,
            segment_bytes: engine.segment_bytes,
            max_record_bytes: engine.max_record_bytes,
            queue_bytes: engine.queue_bytes as u64,
            wal_zero_ahead_bytes: engine.wal_zero_ahead_bytes,
        }
    }
}

/// `[snapshot]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Take one after this many records (default 1 000 000).
    pub every_records: u64,
    /// Take one after this long if anything changed (default 300 s).
    pub every: Seconds,
    /// How many to keep (default 2; minimum 1).
    pub keep: u32,
}

impl Default for SnapshotConfig {
    fn default() -> SnapshotConfig {
        let engine = EngineOptions::default();
        SnapshotConfig {
            every_records: engine.snapshot_every_records,
            every: Seconds(engine.snapshot_every_seconds),
            keep: engine.snapshots_kept as u32,
        }
    }
}

/// `[history]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Keep the ledger history in `<data_dir>/history.sqlite3`, fed from the log (default true).
    pub enabled: bool,
    /// How long entries and payments are kept (default: forever). Report rollups and the audit
    /// chain are kept whatever this says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<Seconds>,
    /// Accounts whose ids the feeder keeps in memory (default 1 000 000, about 115 bytes each):
    /// an entry of one it does not remember costs two index lookups in the database.
    pub account_cache: u64,
}

impl Default for HistoryConfig {
    fn default() -> HistoryConfig {
        HistoryConfig {
            enabled: true,
            retention: None,
            account_cache: crate::history::store::DEFAULT_ACCOUNT_CACHE as u64,
        }
    }
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Shards per tenant's user map (default 512, a power of two ≥ 4). More shards, shorter
    /// snapshot pauses per shard.
    pub shards: u32,
    /// How often expired reservations are released (default 1000 ms).
    pub maintenance_interval_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        let engine = EngineOptions::default();
        EngineConfig {
            shards: engine.shards as u32,
            maintenance_interval_ms: engine.maintenance_interval_ms,
        }
    }
}

/// `[idempotency]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// How long keys are kept (default `24h`).
    pub ttl: Seconds,
    /// Most keys kept at once (default 5 000 000); past it, keyed writes get 503.
    pub max_entries: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> IdempotencyConfig {
        let engine = EngineOptions::default();
        IdempotencyConfig {
            ttl: Seconds(engine.idempotency_ttl_seconds),
            max_entries: engine.idempotency_max_entries,
        }
    }
}

/// `[payments]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentsConfig {
    /// `sandbox` (default), `paystack` or `stripe`.
    pub gateway: Gateway,
    /// How long settled payments are remembered so late duplicate deliveries change nothing
    /// (default `7d`; gateways retry webhooks for up to three days).
    pub retention: Seconds,
    /// Where the checkout sends the customer afterwards when `initialize` names no `callback_url`
    /// (default: the sandbox's own result page).
    pub default_callback_url: Option<String>,
    /// Time allowed for one gateway call, seconds (default 20).
    pub gateway_timeout_seconds: u64,
    /// Paystack.
    pub paystack: PaystackConfig,
    /// Stripe.
    pub stripe: StripeConfig,
    /// Automatic top-up.
    pub autotopup: AutoTopupConfig,
    /// Events sent to tenants' applications.
    pub events: EventsConfig,
}

impl Default for PaymentsConfig {
    fn default() -> PaymentsConfig {
        PaymentsConfig {
            gateway: Gateway::Sandbox,
            retention: Seconds(7 * 86_400),
            default_callback_url: None,
            gateway_timeout_seconds: 20,
            paystack: PaystackConfig::default(),
            stripe: StripeConfig::default(),
            autotopup: AutoTopupConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

/// `[payments.autotopup]`: the caps and delays that keep automatic top-up from running away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoTopupConfig {
    /// At most this many attempts per wallet in any hour (default 3), besides each rule's daily cap.
    pub max_per_hour: u32,
    /// Wait after the first soft decline (default `1m`); doubled after each further one.
    pub backoff: Seconds,
    /// The longest wait between attempts (default `6h`).
    pub backoff_max: Seconds,
    /// How often wallets under their threshold are looked for, in case a trigger was missed
    /// (default `30s`).
    pub sweep_every: Seconds,
    /// Charges in flight at once (default 16).
    pub concurrency: u32,
}

impl Default for AutoTopupConfig {
    fn default() -> AutoTopupConfig {
        AutoTopupConfig {
            max_per_hour: 3,
            backoff: Seconds(60),
            backoff_max: Seconds(6 * 3600),
            sweep_every: Seconds(30),
            concurrency: 16,
        }
    }
}

/// `[payments.events]`: delivery of events to tenants' applications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events waiting for delivery before new ones are dropped (default 10 000).
    pub queue: u32,
    /// Delivery attempts per event (default 8), with growing delays.
    pub attempts: u32,
    /// The first retry delay (default `1s`); doubled after each failure.
    pub retry: Seconds,
}

impl Default for EventsConfig {
    fn default() -> EventsConfig {
        EventsConfig {
            queue: 10_000,
            attempts: 8,
            retry: Seconds(1),
        }
    }
}

/// Which payment gateway takes payments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    /// creditd's own checkout page; no account anywhere.
    #[default]
    Sandbox,
    /// Paystack.
    Paystack,
    /// Stripe.
    Stripe,
}

/// `[payments.paystack]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaystackConfig {
    /// Secret key (`sk_…`); also the webhook signing key.
    pub secret_key: String,
    /// API base URL (default `https://api.paystack.co`).
    pub base_url: String,
}

impl Default for PaystackConfig {
    fn default() -> PaystackConfig {
        PaystackConfig {
            secret_key: String::new(),
            base_url: "https://api.paystack.co".into(),
        }
    }
}

/// `[payments.stripe]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// Secret key (`sk_…`).
    pub secret_key: String,
    /// Webhook endpoint secret (`whsec_…`).
    pub webhook_secret: String,
    /// API base URL (default `https://api.stripe.com`).
    pub base_url: String,
}

impl Default for StripeConfig {
    fn default() -> StripeConfig {
        StripeConfig {
            secret_key: String::new(),
            webhook_secret: String::new(),
            base_url: "https://api.stripe.com".into(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// API keys.
    pub keys: Vec<ApiKey>,
}

/// One API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// A name, recorded as the actor of every change made with the key.
    pub name: String,
    /// The bearer secret.
    pub secret: String,
    /// What the key may do.
    pub role: Role,
    /// The tenant the key belongs to.
    pub tenant: String,
}

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An application back end: users, debits, grants, reservations, payments, reads.
    Service,
    /// Also the catalogue, auto top-up, revokes, reports and audit.
    Admin,
    /// Also tenants, and any tenant through `X-Tenant`.
    Platform,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `creditd=debug` (default `info`; `RUST_LOG` wins).
    pub level: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A duration in whole seconds, written as an integer or as text with a unit: `90`, `90s`, `15m`,
/// `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub u64);

impl Seconds {
    fn parse(text: &str) -> Option<Seconds> {
        let text = text.trim();
        let (digits, unit) = text.split_at(
            text.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len()),
        );
        let value: u64 = digits.parse().ok()?;
        let scale = match unit.trim() {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        value.checked_mul(scale).map(Seconds)
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let seconds = self.0;
        if seconds != 0 && seconds.is_multiple_of(86_400) {
            serializer.serialize_str(&format!("{}d", seconds / 86_400))
        } else if seconds != 0 && seconds.is_multiple_of(3600) {
            serializer.serialize_str(&format!("{}h", seconds / 3600))
        } else if seconds != 0 && seconds.is_multiple_of(60) {
            serializer.serialize_str(&format!("{}m", seconds / 60))
        } else {
            serializer.serialize_str(&format!("{seconds}s"))
        }
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Seconds, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(seconds) => Ok(Seconds(seconds)),
            Raw::Text(text) => Seconds::parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration such as 90s, 15m, 24h, 7d"
                ))
            }),
        }
    }
}

impl Config {
    /// Reads `path`, applies the `CREDITD_*` variables of this process and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_parts(&text, std::env::vars())
    }

    /// Builds a configuration from TOML text and environment variables (those without the prefix
    /// are ignored), then validates it.
    pub fn from_parts(
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table =
            toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))?;
        // The defaults say which keys exist and what type each has.
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|error| ConfigError::Parse(error.to_string()))?;
        // `CREDITD_<SECTION>__<KEY>` names a key; other `CREDITD_*` variables (a test switch, a
        // deployment's own) are not configuration, unless they name a section by mistake.
        let overrides: BTreeMap<String, String> = environment
            .into_iter()
            .filter(|(name, _)| {
                name.strip_prefix(ENV_PREFIX).is_some_and(|rest| {
                    rest.contains("__") || defaults.contains_key(&rest.to_ascii_lowercase())
                })
            })
            .collect();
        for (variable, value) in &overrides {
            apply_override(&mut tree, &defaults, variable, value)?;
        }
        let config: Config = toml::Value::Table(tree)
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Parse(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        let streams = &self.streams;
        if streams.buffer_events == 0 || streams.keepalive_seconds == 0 {
            return invalid(
                "streams.buffer_events and streams.keepalive_seconds must be at least 1".into(),
            );
        }
        if !(1..=3600).contains(&streams.token_ttl_seconds)
            || !(1..=86_400).contains(&streams.portal_ttl_seconds)
        {
            return invalid("streams.token_ttl_seconds must be 1 to 3600 and streams.portal_ttl_seconds 1 to 86400".into());
        }
        if streams
            .signing_secret
            .as_ref()
            .is_some_and(|secret| secret.len() < 32)
        {
            return invalid("streams.signing_secret must be at least 32 characters".into());
        }
        let storage = &self.storage;
        if storage.segment_bytes < 64 * 1024 {
            return invalid("storage.segment_bytes must be at least 65536".into());
        }
        if storage.wal_zero_ahead_bytes > 1 << 30 {
            return invalid("storage.wal_zero_ahead_bytes must be at most 1073741824".into());
        }
        if !(4096..=64 * 1024 * 1024).contains(&storage.max_record_bytes) {
            return invalid("storage.max_record_bytes must be between 4096 and 67108864".into());
        }
        if storage.queue_bytes < 1024 * 1024
            || storage.queue_bytes < u64::from(storage.max_record_bytes) * 2
            || storage.queue_bytes > 1 << 30
        {
            return invalid(
                "storage.queue_bytes must be at least 1 MiB and twice storage.max_record_bytes, \
                 and at most 1 GiB (one batch of the log)"
                    .into(),
            );
        }
        if self.snapshot.keep == 0 || self.snapshot.every_records == 0 || self.snapshot.every.0 == 0
        {
            return invalid(
                "snapshot.keep, snapshot.every_records and snapshot.every must be positive".into(),
            );
        }
        if self.engine.shards < 4
            || !self.engine.shards.is_power_of_two()
            || self.engine.shards > 65_536
        {
            return invalid("engine.shards must be a power of two between 4 and 65536".into());
        }
        if self.idempotency.ttl.0 == 0 || self.idempotency.max_entries == 0 {
            return invalid("idempotency.ttl and idempotency.max_entries must be positive".into());
        }
        let limits = &self.limits;
        if limits.max_amount <= 0
            || limits.max_quantity == 0
            || limits.max_reservation_ttl_seconds == 0
        {
            return invalid("limits.max_amount, limits.max_quantity and limits.max_reservation_ttl_seconds must be positive".into());
        }
        if limits.default_reservation_ttl_seconds == 0
            || limits.default_reservation_ttl_seconds > limits.max_reservation_ttl_seconds
        {
            return invalid("limits.default_reservation_ttl_seconds must be between 1 and limits.max_reservation_ttl_seconds".into());
        }
        if let CoreThreads::Count(count) = self.server.core_threads {
            if count > CoreThreads::MAX {
                return invalid(format!(
                    "server.core_threads must be \"auto\" or at most {} (0 means none)",
                    CoreThreads::MAX
                ));
            }
        }
        if self.server.workers > 1024 {
            return invalid("server.workers must be at most 1024 (0 means one per core)".into());
        }
        let server = &self.server;
        if server.max_body_bytes == 0 || server.max_connections == 0 {
            return invalid(
                "server.max_body_bytes and server.max_connections must be positive".into(),
            );
        }
        if !(4096..=1024 * 1024).contains(&server.max_header_bytes) {
            return invalid("server.max_header_bytes must be between 4096 and 1048576".into());
        }
        if server.body_budget_bytes < server.max_body_bytes {
            // Otherwise a body of the largest allowed size could never be read.
            return invalid(
                "server.body_budget_bytes must be at least server.max_body_bytes".into(),
            );
        }
        if !(1..=1024).contains(&server.reserved_connections) {
            return invalid("server.reserved_connections must be 1 to 1024".into());
        }
        if limits.service_key_grants_per_day < 0 {
            return invalid(
                "limits.service_key_grants_per_day must be 0 (service keys may not grant) or more"
                    .into(),
            );
        }
        if !(1..=MAX_METADATA_DEPTH).contains(&limits.max_metadata_depth) {
            return invalid(format!(
                "limits.max_metadata_depth must be 1 to {MAX_METADATA_DEPTH}"
            ));
        }
        let autotopup = &self.payments.autotopup;
        if !(1..=16).contains(&autotopup.max_per_hour) || autotopup.concurrency == 0 {
            return invalid(
                "payments.autotopup.max_per_hour must be 1 to 16 and concurrency positive".into(),
            );
        }
        if autotopup.sweep_every.0 == 0
            || self.payments.events.attempts == 0
            || self.payments.events.queue == 0
        {
            return invalid("payments.autotopup.sweep_every, payments.events.attempts and queue must be positive".into());
        }
        if self
            .history
            .retention
            .is_some_and(|retention| retention.0 < 86_400)
        {
            return invalid("history.retention must be at least 1d (or absent: forever)".into());
        }
        if self.payments.retention.0 < 3 * 86_400 {
            // Gateways retry webhooks for up to about three days; a payment forgotten sooner
            // would turn a late delivery into an unmatched report, or let its reference be reused.
            return invalid("payments.retention must be at least 3d".into());
        }
        if !(1..=120).contains(&self.payments.gateway_timeout_seconds) {
            return invalid("payments.gateway_timeout_seconds must be 1 to 120".into());
        }
        let mut secrets = std::collections::HashSet::new();
        for key in &self.auth.keys {
            if key.secret.len() < 16 {
                return invalid(format!(
                    "auth.keys {:?}: the secret must be at least 16 characters",
                    key.name
                ));
            }
            if !secrets.insert(&key.secret) {
                return invalid(format!("auth.keys {:?}: two keys share a secret", key.name));
            }
            crate::engine::types::check_id("auth.keys.tenant", &key.tenant).map_err(|_| {
                ConfigError::Invalid(format!(
                    "auth.keys {:?}: bad tenant id {:?}",
                    key.name, key.tenant
                ))
            })?;
        }
        Ok(())
    }

    /// The engine's options.
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            data_dir: self.storage.data_dir.clone(),
            fsync: self.storage.fsync,
            segment_bytes: self.storage.segment_bytes,
            max_record_bytes: self.storage.max_record_bytes,
            queue_bytes: usize::try_from(self.storage.queue_bytes).unwrap_or(usize::MAX),
            wal_zero_ahead_bytes: self.storage.wal_zero_ahead_bytes,
            shards: self.engine.shards as usize,
            snapshot_every_records: self.snapshot.every_records,
            snapshot_every_seconds: self.snapshot.every.0,
            snapshots_kept: self.snapshot.keep as usize,
            idempotency_ttl_seconds: self.idempotency.ttl.0,
            idempotency_max_entries: self.idempotency.max_entries,
            maintenance_interval_ms: self.engine.maintenance_interval_ms,
            payment_retention_seconds: self.payments.retention.0,
            background: true,
            limits: self.limits.clone(),
            // Holds come from the log's readers, not from the configuration.
            retention_holds: Vec::new(),
        }
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        let mask = |secret: &mut String| {
            if !secret.is_empty() {
                *secret = "********".into();
            }
        };
        mask(&mut shown.payments.paystack.secret_key);
        mask(&mut shown.payments.stripe.secret_key);
        mask(&mut shown.payments.stripe.webhook_secret);
        if let Some(secret) = shown.streams.signing_secret.as_mut() {
            mask(secret);
        }
        for key in &mut shown.auth.keys {
            mask(&mut key.secret);
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|error| format!("# could not render: {error}"))
    }
}

/// Sets the key a `CREDITD_SECTION__KEY` variable names, typed like the default it overrides.
fn apply_override(
    tree: &mut toml::Table,
    defaults: &toml::Table,
    variable: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let path: Vec<String> = variable[ENV_PREFIX.len()..]
        .split("__")
        .map(|part| part.to_ascii_lowercase())
        .collect();
    let key = path.join(".");
    let unknown = || ConfigError::UnknownEnvironmentKey {
        variable: variable.to_owned(),
        key: key.clone(),
    };
    if path.iter().any(String::is_empty) {
        return Err(unknown());
    }
    let mut default_table = defaults;
    let mut table = tree;
    for (depth, part) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        if last {
            // Optional keys have no default; accept them as text if the schema names them.
            let typed = match default_table.get(part) {
                Some(default) => typed_value(default, value).ok_or_else(|| {
                    ConfigError::Parse(format!(
                        "{variable}: {value:?} is not a valid value for {key}"
                    ))
                })?,
                None if OPTIONAL_KEYS.contains(&key.as_str()) => {
                    toml::Value::String(value.to_owned())
                }
                None => return Err(unknown()),
            };
            table.insert(part.clone(), typed);
            return Ok(());
        }
        let Some(toml::Value::Table(next_default)) = default_table.get(part) else {
            return Err(unknown());
        };
        default_table = next_default;
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(next) = entry else {
            return Err(ConfigError::Parse(format!(
                "{variable}: {key} is not a table in the file"
            )));
        };
        table = next;
    }
    Err(unknown())
}

/// Keys without a default value that may still be set.
const OPTIONAL_KEYS: &[&str] = &[
    "server.public_url",
    "payments.default_callback_url",
    "streams.signing_secret",
];

fn typed_value(default: &toml::Value, text: &str) -> Option<toml::Value> {
    Some(match default {
        toml::Value::String(_) => toml::Value::String(text.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(text.trim().parse().ok()?),
        toml::Value::Boolean(_) => toml::Value::Boolean(text.trim().parse().ok()?),
        toml::Value::Float(_) => toml::Value::Float(text.trim().parse().ok()?),
        toml::Value::Array(_) | toml::Value::Table(_) | toml::Value::Datetime(_) => {
            let wrapper: toml::Table = toml::from_str(&format!("value = {text}")).ok()?;
            wrapper.get("value")?.clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn listening_everywhere_without_a_public_url_warns() {
        let bound = |text: &str| text.parse::<SocketAddr>().unwrap();
        let mut server = ServerConfig::default();
        let warning = server.public_url_warning(bound("0.0.0.0:8080")).unwrap();
        assert!(warning.contains("server.public_url"), "{warning}");
        assert!(server.public_url_warning(bound("[::]:8080")).is_some());
        assert_eq!(server.public_url_warning(bound("127.0.0.1:8080")), None);
        assert_eq!(server.public_url_warning(bound("10.0.0.5:8080")), None);
        server.public_url = Some("https://credits.example.com".into());
        assert_eq!(server.public_url_warning(bound("0.0.0.0:8080")), None);
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::from_parts("", env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn the_repository_config_is_valid() {
        let text = include_str!("../config.toml");
        let config = Config::from_parts(text, env(&[])).unwrap();
        assert_eq!(config.payments.gateway, Gateway::Sandbox);
        assert!(!config.auth.keys.is_empty());
    }

    #[test]
    fn core_threads_are_auto_or_a_count_in_the_file_and_the_environment() {
        let core_threads = |text: &str, variables: &[(&str, &str)]| {
            Config::from_parts(text, env(variables)).map(|config| config.server.core_threads)
        };
        assert_eq!(core_threads("", &[]).unwrap(), CoreThreads::Auto);
        let file = |value: &str| format!("[server]\ncore_threads = {value}");
        assert_eq!(
            core_threads(&file("\"auto\""), &[]).unwrap(),
            CoreThreads::Auto
        );
        assert_eq!(
            core_threads(&file("0"), &[]).unwrap(),
            CoreThreads::Count(0)
        );
        assert_eq!(
            core_threads(&file("3"), &[]).unwrap(),
            CoreThreads::Count(3)
        );
        for (value, expected) in [
            ("auto", CoreThreads::Auto),
            ("0", CoreThreads::Count(0)),
            (" 2 ", CoreThreads::Count(2)),
        ] {
            let variables = [("CREDITD_SERVER__CORE_THREADS", value)];
            assert_eq!(core_threads(&file("3"), &variables).unwrap(), expected);
        }
        for bad in ["\"most\"", "-1", "257", "true"] {
            assert!(core_threads(&file(bad), &[]).is_err(), "{bad}");
        }
        for bad in ["most", "-1", "257", ""] {
            let variables = [("CREDITD_SERVER__CORE_THREADS", bad)];
            assert!(core_threads("", &variables).is_err(), "{bad:?}");
        }
        assert_eq!(CoreThreads::Auto.count(1), 1);
        assert_eq!(CoreThreads::Auto.count(2), 1);
        assert_eq!(CoreThreads::Auto.count(3), 1);
        assert_eq!(CoreThreads::Auto.count(16), 8);
        assert_eq!(CoreThreads::Count(0).count(16), 0);
        assert_eq!(CoreThreads::Count(5).count(2), 5);
    }

    #[test]
    fn unknown_keys_are_errors_in_the_file_and_the_environment() {
        assert!(matches!(
            Config::from_parts("[server]\nlisten_on = \"x\"", env(&[])),
            Err(ConfigError::Parse(_))
        ));
        assert!(matches!(
            Config::from_parts("[nope]\n", env(&[])),
            Err(ConfigError::Parse(_))
        ));
        let error = Config::from_parts("", env(&[("CREDITD_SERVER__LISTEN_ON", "x")])).unwrap_err();
        assert!(
            matches!(error, ConfigError::UnknownEnvironmentKey { .. }),
            "{error}"
        );
        assert!(Config::from_parts("", env(&[("CREDITD_SERVER", "x")])).is_err());
        // Not configuration: no section separator and no section of that name.
        assert!(Config::from_parts("", env(&[("CREDITD_BROWSER_TESTS", "1")])).is_ok());
        assert!(Config::from_parts("", env(&[("CREDITD___LISTEN", "x")])).is_err());
    }

    #[test]
    fn environment_overrides_are_typed_by_their_key() {
        let config = Config::from_parts(
            "[server]\nlisten = \"0.0.0.0:1\"\n",
            env(&[
                ("CREDITD_SERVER__LISTEN", "127.0.0.1:0"),
                ("CREDITD_STORAGE__DATA_DIR", "/var/lib/creditd"),
                ("CREDITD_STORAGE__FSYNC", "never"),
                ("CREDITD_SNAPSHOT__EVERY", "15m"),
                ("CREDITD_LIMITS__MAX_AMOUNT", "5000"),
                ("CREDITD_PAYMENTS__PAYSTACK__SECRET_KEY", "12345"),
                ("CREDITD_SERVER__PUBLIC_URL", "https://credits.example.com"),
                ("CREDITD_AUTH__KEYS", r#"[{name = "ci", secret = "0123456789abcdef", role = "platform", tenant = "t1"}]"#),
                ("OTHER_VARIABLE", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.storage.data_dir, PathBuf::from("/var/lib/creditd"));
        assert_eq!(config.storage.fsync, FsyncMode::Never);
        assert_eq!(config.snapshot.every, Seconds(900));
        assert_eq!(config.limits.max_amount, 5000);
        assert_eq!(config.payments.paystack.secret_key, "12345");
        assert_eq!(
            config.server.public_url.as_deref(),
            Some("https://credits.example.com")
        );
        assert_eq!(config.auth.keys[0].role, Role::Platform);
        assert!(Config::from_parts("", env(&[("CREDITD_LIMITS__MAX_AMOUNT", "lots")])).is_err());
    }

    #[test]
    fn limits_that_keep_the_server_available_are_validated() {
        let defaults = Config::default();
        assert_eq!(defaults.server.max_header_bytes, 16 * 1024);
        assert_eq!(defaults.server.body_budget_bytes, 64 * 1024 * 1024);
        assert_eq!(defaults.server.reserved_connections, 16);
        assert_eq!(defaults.limits.max_metadata_depth, 32);
        for refused in [
            "[server]\nmax_header_bytes = 4095",
            "[server]\nmax_header_bytes = 1048577",
            "[server]\nmax_body_bytes = 2048\nbody_budget_bytes = 2047",
            "[server]\nreserved_connections = 0",
            "[limits]\nmax_metadata_depth = 0",
            "[limits]\nmax_metadata_depth = 101",
        ] {
            assert!(
                matches!(
                    Config::from_parts(refused, env(&[])),
                    Err(ConfigError::Invalid(_))
                ),
                "{refused}"
            );
        }
        let config = Config::from_parts(
            "[server]\nmax_header_bytes = 4096\nmax_body_bytes = 2048\nbody_budget_bytes = 2048\n",
            env(&[("CREDITD_LIMITS__MAX_METADATA_DEPTH", "100")]),
        )
        .unwrap();
        assert_eq!(config.server.body_budget_bytes, 2048);
        assert_eq!(config.limits.max_metadata_depth, 100);
    }

    #[test]
    fn durations_and_validation() {
        assert_eq!(Seconds::parse("24h"), Some(Seconds(86_400)));
        assert_eq!(Seconds::parse("90"), Some(Seconds(90)));
        assert_eq!(Seconds::parse("7d"), Some(Seconds(604_800)));
        assert_eq!(Seconds::parse("soon"), None);
        assert!(Config::from_parts("[engine]\nshards = 100\n", env(&[])).is_err());
        assert!(Config::from_parts("[storage]\nsegment_bytes = 10\n", env(&[])).is_err());
        // What is queued is written as one batch, whose length the frame holds in 32 bits.
        assert!(Config::from_parts("[storage]\nqueue_bytes = 1073741824\n", env(&[])).is_ok());
        assert!(Config::from_parts("[storage]\nqueue_bytes = 1073741825\n", env(&[])).is_err());
        for payments in [
            "retention = \"2d\"",
            "gateway_timeout_seconds = 0",
            "[payments.autotopup]\nmax_per_hour = 17",
        ] {
            assert!(
                matches!(
                    Config::from_parts(&format!("[payments]\n{payments}\n"), env(&[])),
                    Err(ConfigError::Invalid(_))
                ),
                "{payments}"
            );
        }
        assert!(Config::from_parts("[payments]\nretention = \"3d\"\n", env(&[])).is_ok());
        assert!(Config::from_parts("[history]\nretention = \"12h\"\n", env(&[])).is_err());
        let config = Config::from_parts("[history]\nretention = \"400d\"\n", env(&[])).unwrap();
        assert_eq!(config.history.retention, Some(Seconds(400 * 86_400)));
        assert_eq!(
            Config::default().history.retention,
            None,
            "forever by default"
        );
        let short_secret =
            "[[auth.keys]]\nname = \"k\"\nsecret = \"short\"\nrole = \"admin\"\ntenant = \"t\"\n";
        assert!(matches!(
            Config::from_parts(short_secret, env(&[])),
            Err(ConfigError::Invalid(_))
        ));
        let rendered = Config::default().to_toml_masked();
        assert_eq!(
            Config::from_parts(&rendered, env(&[])).unwrap(),
            Config::default()
        );
    }
}
