//! The process: open the engine (recovery), make sure every tenant named by an API key exists,
//! serve until SIGINT or SIGTERM, then shut down cleanly: flush and sync the log, write a final
//! snapshot, exit.

use std::sync::Arc;

use crate::config::Config;
use crate::engine::{Context, Engine, OpenError};

/// Why the server stopped with an error.
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
        error: crate::engine::types::EngineError,
    },
    /// Waiting for signals failed.
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    /// The engine task failed.
    #[error("engine task: {0}")]
    Task(String),
    /// The final flush or snapshot failed.
    #[error("shutdown: {0}")]
    Shutdown(crate::engine::types::EngineError),
}

/// Development secrets shipped in the repository's `config.toml`.
const DEVELOPMENT_SECRET_SUFFIX: &str = "-change-me";

/// Opens the engine the configuration describes and creates the tenants its keys name.
pub async fn open_engine(config: &Config) -> Result<Arc<Engine>, ServerError> {
    let options = config.engine_options();
    let engine = tokio::task::spawn_blocking(move || Engine::open_dir(options))
        .await
        .map_err(|error| ServerError::Task(error.to_string()))??;
    for key in &config.auth.keys {
        if engine.tenant(&key.tenant).is_none() {
            let (_, _, lsn) = engine
                .upsert_tenant(&key.tenant, None, None, &Context::actor("system"))
                .map_err(|error| ServerError::Tenant { tenant: key.tenant.clone(), error })?;
            engine.durable(lsn).await.map_err(|error| ServerError::Tenant { tenant: key.tenant.clone(), error: error.into() })?;
            tracing::info!(tenant = %key.tenant, "created tenant named by an API key");
        }
        if key.secret.ends_with(DEVELOPMENT_SECRET_SUFFIX) {
            tracing::warn!(key = %key.name, "DEVELOPMENT API KEY configured: its secret is public; replace it before exposing this server");
        }
    }
    Ok(engine)
}

/// Runs the server described by `config` until SIGINT or SIGTERM.
pub async fn run_from_config(config: Config) -> Result<(), ServerError> {
    let engine = open_engine(&config).await?;
    tracing::info!(data_dir = %config.storage.data_dir.display(), "engine ready");
    shutdown_signal().await?;
    tracing::info!("shutting down: flushing the log and writing a final snapshot");
    let closing = Arc::clone(&engine);
    let summary = tokio::task::spawn_blocking(move || closing.shutdown())
        .await
        .map_err(|error| ServerError::Task(error.to_string()))?
        .map_err(ServerError::Shutdown)?;
    if let Some(summary) = summary {
        tracing::info!(snapshot = %summary.path.display(), "stopped cleanly");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> Result<(), ServerError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(ServerError::Signal)?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.map_err(ServerError::Signal),
        _ = terminate.recv() => Ok(()),
    }
}
