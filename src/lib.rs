//! creditd: a prepaid-credit wallet and metering engine.
//!
//! A tour of the modules, from the disk up:
//! - [`codec`]: the one payload encoding (bincode 2) and its format version.
//! - [`wal`]: the log. Record and batch frames, segments, the group-commit writer, the reader
//!   that hands out durable records from an LSN and the retention holds that keep them, snapshot
//!   files, and the storage trait with its real and crash-model backends. `docs/design.md` is
//!   its reference.
//! - [`engine`]: the only code that changes balances. Tenants, users, wallets per currency,
//!   reservations, the action catalogue, packages, idempotency keys; the commit path every write
//!   takes (`engine/commit.rs`), the operations by family (`engine/ops/`), the state and the
//!   `apply` functions replay shares (`engine/state/`), checkout and settlement
//!   (`engine/payments/`), snapshots and recovery. The log's schema (`engine::event`) is private
//!   to the crate.
//! - [`api`]: the HTTP API on hyper. One route table (`api/router.rs`), the request machinery
//!   every write shares (`api/call.rs`), one file per resource under `api/routes/`, problem+json,
//!   connection slots and the body budget.
//! - [`payments`]: the payment gateways (`payments/gateways/`: Paystack, Stripe, the sandbox),
//!   webhook signatures and the automatic top-up worker; the engine records what they report.
//! - [`notify`]: signed notifications to tenants' applications (low balance, depleted, top-ups),
//!   their outbox across a clean stop and their delivery.
//! - [`web`]: pages for people, embedded HTML (the sandbox checkout page).
//! - [`stream`]: live balance streams (who watches which wallet, the thread that follows the
//!   log to wake them) and the signed tokens of streams and portal links.
//! - [`server`]: the process: recovery, serving, the background workers, signals, graceful
//!   shutdown. [`config`]: the TOML file and `CREDITD_*` overrides.
//! - [`metrics`]: metric names, descriptions and the Prometheus recorder.
//! - [`inspect`]: `creditd wal verify` and `creditd wal dump`.
//! - [`client`] (the `creditd-client` crate, re-exported) and [`loadgen`]: the Rust client and
//!   the load generator built on it.
//! - [`time`]: timestamps on the wire (RFC 3339, milliseconds).
//! - `fuzzing` (feature `fuzzing`, for the fuzz crate and the tests only): the reference model of
//!   the engine, the fuzz drivers and their seed corpora.
//!
//! The path of a debit, in four files: `api/routes/users.rs` (the handler) →
//! `engine/ops/wallet.rs` (the operation) → `engine/commit.rs` (claim, append, apply) →
//! `engine/state/ledger.rs` (the state change).
#![warn(missing_docs)]

pub mod api;
pub use creditd_client as client;
pub mod codec;
pub mod config;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod history;
pub mod inspect;
pub mod loadgen;
pub mod metrics;
pub mod notify;
pub mod payments;
pub mod server;
pub mod stream;
pub mod time;
pub mod wal;
pub mod web;
