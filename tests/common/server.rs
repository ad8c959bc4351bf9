//! An in-process creditd for HTTP tests: `creditd::server::run` (or `serve_engine` around an
//! engine the test opened) on 127.0.0.1:0 inside the test's runtime, on a data directory of its
//! own, with the test keys below. [`Server::stop`] shuts it down cleanly, checks that it stopped
//! without an error and hands the data directory back for a restart. Also the JSON request helper
//! and the checkout setup that several test files share. Used by `tests/api.rs`,
//! `tests/payments.rs` and `tests/browser.rs`.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditd::client::Client;
use creditd::config::{ApiKey, Config, Role};
use creditd::engine::Engine;
use creditd::server::ServerError;
use http::Method;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The service key of tenant `acme`.
pub const SERVICE: &str = "acme-service-secret-0001";
/// The admin key of tenant `acme`.
pub const ADMIN: &str = "acme-admin-secret-000001";
/// The service key of tenant `globex`.
pub const GLOBEX: &str = "globex-service-secret-01";
/// The platform key (home tenant `acme`).
pub const PLATFORM: &str = "platform-secret-00000001";

/// How long a server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// An API key of `role` for `tenant`.
pub fn key(name: &str, secret: &str, role: Role, tenant: &str) -> ApiKey {
    ApiKey {
        name: name.into(),
        secret: secret.into(),
        role,
        tenant: tenant.into(),
    }
}

/// The defaults with the data directory `dir`, a 2-second shutdown grace and the four test keys.
pub fn config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.storage.data_dir = dir.to_path_buf();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown_grace_seconds = 2;
    config.auth.keys = vec![
        key("acme-service", SERVICE, Role::Service, "acme"),
        key("acme-admin", ADMIN, Role::Admin, "acme"),
        key("globex-service", GLOBEX, Role::Service, "globex"),
        key("platform", PLATFORM, Role::Platform, "acme"),
    ];
    config
}

/// A creditd serving HTTP inside the test's runtime.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
    dir: TempDir,
}

impl Server {
    /// A server with [`config`] on a new temporary directory.
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// A server with [`config`], changed by `adjust`, on a new temporary directory.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        adjust(&mut config);
        Server::start_in(dir, config).await
    }

    /// A server with `config` on `dir` (which `config` names), such as one a stopped server
    /// handed back.
    pub async fn start_in(dir: TempDir, config: Config) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(creditd::server::run(config, listener, async {
            let _ = stopped.await;
        }));
        Server::ready(base, stop, task, dir).await
    }

    /// A server around `engine`, which the test opened on `dir`.
    pub async fn start_with_engine(config: Config, engine: Arc<Engine>, dir: TempDir) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(creditd::server::serve_engine(
            config,
            engine,
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Server::ready(base, stop, task, dir).await
    }

    /// Waits until `/readyz` answers 200; fails if the server stops first.
    async fn ready(
        base: String,
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), ServerError>>,
        dir: TempDir,
    ) -> Server {
        let server = Server {
            base,
            stop: Some(stop),
            task,
            dir,
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let status = server
                .client(SERVICE)
                .send(Method::GET, "/readyz", None, None)
                .await;
            if matches!(status, Ok((status, _, _)) if status == 200) {
                return server;
            }
            if server.task.is_finished() {
                panic!("the server stopped: {:?}", server.task.await);
            }
            assert!(Instant::now() < deadline, "server did not become ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client with `secret`.
    pub fn client(&self, secret: &str) -> Client {
        Client::new(&self.base, secret).unwrap()
    }

    /// Stops the server cleanly, checks that it ended without an error, and returns its data
    /// directory.
    pub async fn stop(self) -> TempDir {
        let (result, dir) = self.shut_down().await;
        result.unwrap();
        dir
    }

    /// Asks the server to shut down: how it ended, and its data directory.
    pub async fn shut_down(mut self) -> (Result<(), ServerError>, TempDir) {
        let _ = self.stop.take().unwrap().send(());
        let result = (&mut self.task).await.unwrap();
        (result, self.dir)
    }

    /// Sells a package `starter` (500 credits for 2,000.00 NGN) named `name` and adds user `ada`,
    /// for a checkout.
    pub async fn sell_starter_to_ada(&self, name: &str) {
        self.client(ADMIN)
            .put_package("starter", name, 500, 200_000, "NGN")
            .await
            .unwrap();
        self.client(SERVICE)
            .put_user("ada", Some("ada@example.com"))
            .await
            .unwrap();
    }

    /// Starts a checkout of `starter` for `ada`: its reference and checkout URL.
    pub async fn initialize(&self) -> (String, String) {
        let body = json!({"user_id": "ada", "package_id": "starter", "email": "ada@example.com"});
        let (status, answer) = send_json(
            &self.client(SERVICE),
            Method::POST,
            "/v1/payments/initialize",
            &body.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        (
            answer["reference"].as_str().unwrap().to_owned(),
            answer["checkout_url"].as_str().unwrap().to_owned(),
        )
    }
}

/// Sends `body` (none when empty): the status and the answer's bytes.
async fn send(client: &Client, method: Method, path: &str, body: &str) -> (u16, Vec<u8>) {
    let body = if body.is_empty() {
        None
    } else {
        Some(body.as_bytes().to_vec())
    };
    let (status, _, bytes) = client.send(method, path, body, None).await.unwrap();
    (status.as_u16(), bytes.to_vec())
}

/// Sends `body` (none when empty); the answer must be JSON.
pub async fn send_json(client: &Client, method: Method, path: &str, body: &str) -> (u16, Value) {
    let (status, bytes) = send(client, method, path, body).await;
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Sends `body` (none when empty); the answer as JSON, `null` when it is not JSON.
pub async fn raw(client: &Client, method: Method, path: &str, body: &str) -> (u16, Value) {
    let (status, bytes) = send(client, method, path, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
