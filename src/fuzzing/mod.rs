//! Entry points shared by the cargo-fuzz targets under `fuzz/` and by the test that replays their
//! committed corpora on stable Rust. Each takes arbitrary bytes and must never panic.
//!
//! A panic here always means that a property of creditd failed, never that the input was odd:
//! - [`record_decode`]: the record frame decodes exactly as its documented layout says and
//!   re-encodes to the same bytes; a segment scan accounts for every byte it accepts, a torn tail
//!   it reports can be cut off and re-scanned clean, and a power cut inside valid records never
//!   reads as damage; an event that decodes encodes back to the same value.
//! - [`snapshot_decode`]: the snapshot reader refuses bad files with errors, reads valid ones back
//!   to the bytes the writer produces, and a snapshot whose chunks pass
//!   [`crate::engine::check_snapshot_chunks`] loads into an engine whose own snapshot loads back
//!   to the same state.
//! - [`engine_ops`]: a sequence of operations on an engine over the crash-model storage, checked
//!   against a reference model after every step; crashes (with torn tails) and restarts in
//!   between must keep every acknowledged write and rebuild exactly a prefix of the log.
//!
//! [`model`] is the reference model they check against, shared with `tests/model.rs`. [`seeds`]
//! builds the seed inputs committed under `fuzz/corpus/` (see `tests/fuzz_corpora.rs`).
//! This module is for the fuzzers and their tests only; nothing in creditd calls it, and only the
//! `fuzzing` feature compiles it (the fuzz crate and this package's tests turn it on).

/// The clock's reading when a fuzzed engine starts, Unix milliseconds.
const T0: i64 = 1_700_000_000_000;

mod corpus;
mod decode;
pub mod model;
mod ops;

pub use corpus::{seeds, Seed};
pub use decode::{record_decode, snapshot_decode, CHUNK_SEPARATOR};
pub use ops::{engine_ops, op};
