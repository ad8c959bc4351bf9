//! A running `creditd serve` for black-box tests: the real binary on 127.0.0.1:0 with the
//! repository's `config.toml` and `CREDITD_*` overrides, killed when dropped. Used by
//! `tests/process.rs` (kill and restart), `tests/payments.rs` (a kill during a top-up) and
//! `tests/hostile.rs` (floods, whose memory is read from the server's own `/proc/<pid>/status`,
//! apart from the test's).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use creditd::client::Client;

/// The development service key of the repository's `config.toml`.
pub const SERVICE: &str = "dev-service-secret-change-me";
/// The development admin key of the repository's `config.toml`.
pub const ADMIN: &str = "dev-admin-secret-change-me";

/// A running `creditd serve`, killed when dropped.
pub struct Process {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl Process {
    /// Starts the server on `data_dir` and waits until `/readyz` says it is ready.
    pub fn start(data_dir: &Path) -> Process {
        Process::start_with(data_dir, &[])
    }

    /// Like [`Process::start`], with `CREDITD_*` overrides.
    pub fn start_with(data_dir: &Path, overrides: &[(&str, &str)]) -> Process {
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
        let mut command = Command::new(env!("CARGO_BIN_EXE_creditd"));
        command
            .args(["serve", "--config", config])
            .env("CREDITD_SERVER__LISTEN", "127.0.0.1:0")
            .env("CREDITD_STORAGE__DATA_DIR", data_dir)
            .env("CREDITD_LOG__LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (name, value) in overrides {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn creditd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let base = loop {
            assert!(
                Instant::now() < deadline,
                "creditd did not print its address"
            );
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(address) = line.strip_prefix("listening on ") {
                        break address.trim().to_owned();
                    }
                }
                _ => panic!("creditd exited before listening"),
            }
        };
        let process = Process { child, base };
        process.wait_ready();
        process
    }

    /// Health checks answer during recovery; the API opens when `/readyz` says so.
    pub fn wait_ready(&self) {
        let runtime = runtime();
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = runtime
                .block_on(client.send(http::Method::GET, "/readyz", None, None))
                .map(|(status, _, _)| status);
            if matches!(status, Ok(s) if s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "creditd did not become ready: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A client with the development service key.
    pub fn client(&self) -> Client {
        self.client_with(SERVICE)
    }

    /// A client with `secret`.
    pub fn client_with(&self, secret: &str) -> Client {
        Client::new(&self.base, secret).unwrap()
    }

    /// `127.0.0.1:<port>`, for raw TCP.
    pub fn address(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// A field of `/proc/<pid>/status` in KiB, such as `VmRSS` (resident now) or `VmHWM` (the
    /// resident peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"))
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "creditd did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A runtime for blocking tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
