//! creditd: a prepaid-credit wallet and metering engine.
//!
//! A tour of the layout:
//! - [`codec`]: the one payload encoding (bincode 2) and its format version.
//! - [`wal`]: records, segments, the group-commit writer, snapshot files, storage backends.
//! - [`engine`]: tenants, users, wallets, holds, the catalogue and idempotency; the only code that
//!   changes balances, and recovery.
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod codec;
pub mod config;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod loadgen;
pub mod metrics;
pub mod notify;
pub mod payments;
pub mod server;
pub mod time;
pub mod wal;
pub mod web;
