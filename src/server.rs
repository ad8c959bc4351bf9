//! The process: install metrics, open the engine (recovery), make sure every tenant named by an
//! API key exists, serve HTTP until SIGINT or SIGTERM, then shut down cleanly: stop accepting,
//! drain in-flight requests, flush and sync the log, write a final snapshot, keep the events not
//! yet delivered for the next start, exit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::api::auth::UnknownTenant;
use crate::api::ApiState;
use crate::config::Config;
use crate::engine::notify::{TenantNotification, TopupTrigger};
use crate::engine::types::EngineError;
use crate::engine::{Context, Engine, OpenError};

/// Why the server stopped with an error. Each variant keeps the error it stems from as its
/// [`source`](std::error::Error::source); the message names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Recovery refused to start.
    #[error("could not open the data directory: {0}")]
    Open(#[from] OpenError),
    /// A tenant named by an API key could not be created.
    #[error("could not create tenant {tenant:?}: {error}")]
    Tenant {
        /// The tenant.
        tenant: String,
        /// Why.
        #[source]
        error: EngineError,
    },
    /// The listen address could not be bound.
    #[error("could not listen: {0}")]
    Bind(#[source] std::io::Error),
    /// The payment gateway is not configured correctly.
    #[error("payments: {0}")]
    Payments(#[from] crate::payments::SetupError),
    /// The engine's hooks were connected already: it is served by another server.
    #[error("payments: the engine is already served")]
    AlreadyServed,
    /// An API key names a tenant that could not be resolved.
    #[error("API keys: {0}")]
    Keys(#[from] UnknownTenant),
    /// Waiting for signals failed.
    #[error("signal handling: {0}")]
    Signal(#[source] std::io::Error),
    /// The blocking task that opens or shuts down the engine panicked or was cancelled.
    #[error("engine task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The final flush or snapshot failed.
    #[error("shutdown: {0}")]
    Shutdown(#[source] EngineError),
    /// The history database could not be opened.
    #[error("history: {0}")]
    History(#[from] crate::history::StoreError),
    /// A thread could not be started.
    #[error("could not start a thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The key that signs stream tokens and portal links could not be read or made.
    #[error("signing key: {0}")]
    SigningKey(#[source] std::io::Error),
}

/// Development secrets shipped in the repository's `config.toml`.
const DEVELOPMENT_SECRET_SUFFIX: &str = "-change-me";

/// Opens (recovers) the engine the configuration describes.
pub async fn open_engine(config: &Config) -> Result<Arc<Engine>, ServerError> {
    let mut options = config.engine_options();
    let history = config.history.enabled.then(|| history_path(config));
    let engine = tokio::task::spawn_blocking(move || {
        if let Some(path) = history {
            // In place before recovery's snapshot can remove a segment the history still needs.
            let next_lsn = crate::history::Store::open(&path)?.next_lsn()?;
            options
                .retention_holds
                .push((crate::history::RETENTION_HOLD.into(), next_lsn));
        }
        Engine::open_dir(options).map_err(ServerError::from)
    })
    .await??;
    Ok(engine)
}

/// Where the history database lives.
fn history_path(config: &Config) -> std::path::PathBuf {
    config.storage.data_dir.join(crate::history::FILE_NAME)
}

/// Starts the history's feeder thread, if the history is enabled.
fn start_history(
    config: &Config,
    engine: &Arc<Engine>,
) -> Result<Option<crate::history::worker::Worker>, ServerError> {
    if !config.history.enabled {
        return Ok(None);
    }
    let mut feeder = crate::history::Feeder::open(
        &history_path(config),
        &engine.options().wal_dir(),
        crate::codec::FORMAT_VERSION,
        crate::wal::record::MAX_RECORD_BYTES_LIMIT,
    )?;
    feeder.set_account_cache(usize::try_from(config.history.account_cache).unwrap_or(usize::MAX));
    let retention = config
        .history
        .retention
        .map(|retention| std::time::Duration::from_secs(retention.0));
    let worker = crate::history::worker::spawn(feeder, Arc::clone(engine), retention)
        .map_err(ServerError::Thread)?;
    Ok(Some(worker))
}

/// Creates every tenant an API key names that does not exist yet, and warns about development keys.
pub async fn ensure_tenants(config: &Config, engine: &Engine) -> Result<(), ServerError> {
    for key in &config.auth.keys {
        if engine.tenant(&key.tenant).is_none() {
            let (_, _, lsn) = engine
                .upsert_tenant(&key.tenant, None, None, &Context::actor("system"))
                .map_err(|error| ServerError::Tenant {
                    tenant: key.tenant.clone(),
                    error,
                })?;
            engine
                .durable(lsn)
                .await
                .map_err(|error| ServerError::Tenant {
                    tenant: key.tenant.clone(),
                    error: error.into(),
                })?;
            tracing::info!(tenant = %key.tenant, "created tenant named by an API key");
        }
        if key.secret.ends_with(DEVELOPMENT_SECRET_SUFFIX) {
            tracing::warn!(key = %key.name, "DEVELOPMENT API KEY configured: its secret is public; replace it before exposing this server");
        }
    }
    Ok(())
}

/// Runs the server described by `config` until SIGINT or SIGTERM.
pub async fn run_from_config(config: Config) -> Result<(), ServerError> {
    // Registered first, so a signal that arrives during recovery is not lost.
    let signals = Signals::register().map_err(ServerError::Signal)?;
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(ServerError::Bind)?;
    run(config, listener, signals.received()).await
}

/// Runs the server on an already-bound listener until `shutdown` resolves. The address is printed
/// and health checks are answered at once; the API opens when recovery is done.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    // The recorder goes first: the log writer takes its metric handles when it starts.
    crate::metrics::install();
    let address = listener.local_addr().map_err(ServerError::Bind)?;
    // The contract: a test or a supervisor binding port 0 reads the address from stdout.
    println!("listening on http://{address}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let engine =
        crate::api::serve_while_recovering(&listener, &config.server, open_engine(&config)).await?;
    serve_engine(config, engine, listener, shutdown).await
}

/// Serves an engine that is already open (tests pass engines on fault-injecting storage), then
/// shuts it down as [`run`] does.
pub async fn serve_engine(
    config: Config,
    engine: Arc<Engine>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    crate::metrics::install();
    let fallback_problems = &engine.recovery_report().fallback_problems;
    metrics::gauge!(crate::metrics::names::RECOVERY_FALLBACK_PROBLEMS)
        .set(fallback_problems.len() as f64);
    ensure_tenants(&config, &engine).await?;
    let address = listener.local_addr().map_err(ServerError::Bind)?;
    if let Some(warning) = config.server.public_url_warning(address) {
        tracing::warn!("{warning}");
    }
    let public_url = config
        .server
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));
    let payments = Arc::new(crate::payments::Payments::new(
        Arc::clone(&engine),
        &config.payments,
        &public_url,
    )?);
    // Hooks before the first request: a debit may trigger a top-up from the start.
    let (topups, events) = connect_hooks(&config, &engine)?;
    let history = start_history(&config, &engine)?;
    let mut state = ApiState::new(
        Arc::clone(&engine),
        Arc::clone(&payments),
        &config.auth.keys,
        config.server.clone(),
        config.limits.clone(),
        public_url,
    )?;
    state.history = history.as_ref().map(|worker| {
        let reader = crate::history::reader::Reader::new(&history_path(&config), worker.applied())
            .nudging(worker.nudge());
        Arc::new(reader)
    });
    state.streams = crate::stream::Hub::new(config.streams.max_open as usize);
    state.streams_config = config.streams.clone();
    let signing_key = crate::stream::token::load_key(
        config.streams.signing_secret.as_deref(),
        &config.storage.data_dir,
    )
    .map_err(ServerError::SigningKey)?;
    state.signer = crate::stream::token::Signer::new(&signing_key);
    let streams = crate::stream::spawn(Arc::clone(&state.streams), Arc::clone(&engine))
        .map_err(ServerError::Thread)?;
    let state = Arc::new(state);
    // After the last step that can fail: restoring removes the file of kept events.
    let worker = crate::payments::topup::TopupWorker::new(Arc::clone(&payments)).spawn(topups);
    let pending_events = config.storage.data_dir.join(crate::notify::PENDING_FILE);
    let notifier = crate::notify::Notifier::new(
        Arc::clone(&engine),
        payments.http().clone(),
        &config.payments.events,
    );
    let outbox = crate::notify::spawn(notifier, events, crate::notify::restore(&pending_events));
    if config.auth.keys.is_empty() {
        tracing::warn!("no API keys are configured: every /v1 request will get 401");
    }
    tracing::info!(%address, data_dir = %config.storage.data_dir.display(), "serving");
    let upkeep = tokio::spawn(upkeep(Arc::clone(&state)));
    crate::api::serve(listener, Arc::clone(&state), shutdown).await;
    upkeep.abort();
    worker.abort();
    tokio::task::spawn_blocking(move || streams.stop()).await?;
    if let Some(history) = history {
        // It catches up with what is durable now; the rest waits for the next start.
        tokio::task::spawn_blocking(move || history.stop()).await?;
    }
    shut_down(&engine, &outbox, &pending_events).await
}

/// Connects the engine's top-up and notification hooks and returns their receiving ends.
fn connect_hooks(
    config: &Config,
    engine: &Engine,
) -> Result<
    (
        crossbeam_channel::Receiver<TopupTrigger>,
        crossbeam_channel::Receiver<TenantNotification>,
    ),
    ServerError,
> {
    let (topup_sender, topups) = crossbeam_channel::bounded(4096);
    let (event_sender, events) =
        crossbeam_channel::bounded(config.payments.events.queue.max(1) as usize);
    let hooks = crate::engine::notify::Hooks {
        topups: topup_sender,
        notifications: event_sender,
    };
    if engine.connect_hooks(hooks).is_err() {
        return Err(ServerError::AlreadyServed);
    }
    Ok((topups, events))
}

/// Flushes the log and writes the final snapshot, keeps undelivered events, releases the directory.
async fn shut_down(
    engine: &Arc<Engine>,
    outbox: &crate::notify::Outbox,
    pending_events: &std::path::Path,
) -> Result<(), ServerError> {
    tracing::info!("shutting down: flushing the log and writing a final snapshot");
    let closing = Arc::clone(engine);
    let summary = tokio::task::spawn_blocking(move || closing.shutdown()).await?;
    // After the log's last flush, so every event whose record made it to disk is kept.
    match outbox.stop_and_save(pending_events, engine.wal().durable_lsn()) {
        Ok(0) => {}
        Ok(kept) => {
            tracing::info!(events = kept, file = %pending_events.display(), "undelivered events kept for the next start")
        }
        Err(error) => {
            tracing::error!(%error, file = %pending_events.display(), "undelivered events could not be kept")
        }
    }
    engine.release_directory();
    let summary = summary.map_err(ServerError::Shutdown)?;
    if let Some(summary) = summary {
        tracing::info!(snapshot = %summary.path.display(), "stopped cleanly");
    }
    Ok(())
}

/// Every few seconds: exporter upkeep, the gauges that are counted, not tracked, and the process
/// metrics.
async fn upkeep(state: Arc<ApiState>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    let mut round = 0u64;
    loop {
        ticks.tick().await;
        state.prometheus.run_upkeep();
        let metrics = &state.metrics;
        let wal = state.engine.wal();
        // Read the durable LSN after the next one, so the difference is never negative.
        let next_lsn = wal.next_lsn();
        let durable_lsn = wal.durable_lsn();
        metrics.durable_lsn.set(durable_lsn as f64);
        metrics
            .wal_pending_records
            .set(next_lsn.saturating_sub(1).saturating_sub(durable_lsn) as f64);
        metrics.ready.set(if state.is_ready() { 1.0 } else { 0.0 });
        let (regular, reserved) = state.connections.open();
        metrics.connections.set_open(regular, reserved);
        metrics
            .body_bytes_buffered
            .set(state.body_budget.in_use() as f64);
        metrics
            .idempotency_keys
            .set(state.engine.idempotency_entries() as f64);
        // Off the async workers: it reads files under /proc and lists every open descriptor,
        // which under a flood of connections is thousands of entries.
        let process = metrics.process.clone();
        let _ = tokio::task::spawn_blocking(move || process.collect()).await;
        if round.is_multiple_of(3) {
            let engine = Arc::clone(&state.engine);
            if let Ok(figures) = tokio::task::spawn_blocking(move || engine.census()).await {
                metrics.users.set(figures.users as f64);
                metrics.wallets.set(figures.wallets as f64);
                metrics
                    .reservations_open
                    .set(figures.reservations_open as f64);
            }
        }
        round += 1;
    }
}

/// SIGINT and SIGTERM, listened for from the moment they are registered.
pub struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening.
    pub fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first of them (at once if one already arrived).
    pub async fn received(mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
    }
}
