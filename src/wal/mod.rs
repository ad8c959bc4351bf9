//! The write-ahead log: record and batch framing, segments and `log-end`, the group-commit
//! writer, the reader that hands out records from an LSN across segments, the follower that reads
//! what a running writer adds, retention holds, and
//! snapshot files.
//!
//! This module moves opaque payloads to and from disk and knows nothing of what they mean; the
//! engine encodes and applies them through [`crate::codec`]. All I/O goes through the
//! [`storage::Storage`] trait so that tests can crash and fail the disk at will.

/// The highest LSN ever issued: the top bit of the 64 stays clear (the engine keeps a flag there,
/// beside a user's last LSN). At ten million records a second it lasts 29 000 years.
pub const MAX_LSN: u64 = (1 << 63) - 1;

pub mod batch;
pub mod end;
pub mod follow;
pub mod memory;
pub mod reader;
pub mod record;
pub mod retention;
pub mod segment;
pub mod snapshot;
pub mod storage;
pub mod writer;
mod zero_ahead;

pub use storage::{FsStorage, SharedStorage, Storage, StorageFile};
pub use writer::{AppendError, DurabilityError, Durable, FsyncMode, Wal, WalOptions, WalStats};
