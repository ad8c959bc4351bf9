//! The one place that knows how payloads are encoded: bincode 2 (pinned at `=2.0.1`; the 3.x line
//! is not usable) in its standard configuration (little-endian, variable-length integers), with a
//! decode limit so that a corrupt length can never make the decoder allocate without bound.
//!
//! [`FORMAT_VERSION`] is written into every segment and snapshot header. Any change to the layout of
//! an encoded type must bump it, and readers refuse versions they do not know.

use serde::{Deserialize, Serialize};

/// The version of the payload encoding written by this build.
pub const FORMAT_VERSION: u32 = 7;

/// The most bytes one decode may claim for its containers; far above any valid record or chunk.
const DECODE_LIMIT_BYTES: usize = 64 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded.
    #[error("encode failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The value ended before the bytes did.
    #[error("{0} unexpected bytes after the value")]
    Trailing(usize),
}

/// Appends the encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|error| CodecError::Encode(error.to_string()))
}

/// Decodes one value that must fill `bytes` exactly; strings may borrow from `bytes`.
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, CodecError> {
    let (value, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Decodes one value from the start of `bytes`; returns it and the number of bytes it used.
pub fn decode_prefix<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<(T, usize), CodecError> {
    bincode::serde::borrow_decode_from_slice(bytes, config())
        .map_err(|error| CodecError::Decode(error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
        amount: i64,
        tags: Vec<u32>,
    }

    #[test]
    fn round_trip_borrows_strings() {
        let value = Sample {
            name: Cow::Borrowed("alice"),
            amount: -5,
            tags: vec![1, 2],
        };
        let mut bytes = Vec::new();
        encode_into(&value, &mut bytes).unwrap();
        let back: Sample<'_> = decode(&bytes).unwrap();
        assert_eq!(back, value);
        assert!(matches!(back.name, Cow::Borrowed(_)));
    }

    #[test]
    fn trailing_bytes_and_truncation_are_errors() {
        let mut bytes = Vec::new();
        encode_into(
            &Sample {
                name: "bob".into(),
                amount: 1,
                tags: vec![],
            },
            &mut bytes,
        )
        .unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<Sample<'_>>(&longer), Err(CodecError::Trailing(1)));
        for cut in 0..bytes.len() {
            assert!(decode::<Sample<'_>>(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn huge_claimed_lengths_do_not_allocate() {
        // A vector length prefix of u64::MAX: must fail fast, not try to reserve memory.
        let bytes = [
            3u8, b'a', b'b', b'c', 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(decode::<Sample<'_>>(&bytes).is_err());
    }
}
