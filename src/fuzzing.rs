//! Entry points shared by the cargo-fuzz targets under `fuzz/` and by the test that replays their
//! committed corpora on stable Rust. Each takes arbitrary bytes and must never panic.
