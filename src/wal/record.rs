//! The record frame: how one event is laid out in a log segment (and how one chunk is laid out in a
//! snapshot, which reuses the frame with a sequence number in place of the LSN).
//!
//! ```text
//! offset  size  field
//! 0       4     len      u32 LE, payload length in bytes, 1 ..= max_record_bytes
//! 4       4     crc      u32 LE, CRC-32C, starting from the segment's salt instead of 0, over the
//!                        payload (bytes 16 .. 16 + len) followed by the LSN (bytes 8 .. 16): the
//!                        payload's part is computed before the LSN is known, outside the log's lock
//! 8       8     lsn      u64 LE
//! 16      len   payload
//! ```
//!
//! This module owns the byte layout and nothing else: it never interprets payloads and never does I/O.

/// Bytes before the payload: `len`, `crc` and `lsn`.
pub const HEADER_BYTES: usize = 16;

/// The largest record this build will write or read unless configured lower.
pub const MAX_RECORD_BYTES_LIMIT: u32 = 64 * 1024 * 1024;

/// Why a byte range does not hold a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a header, or than the header says the payload holds.
    #[error("record truncated: needs {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the record needs in all.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },
    /// A zero length: never written by creditd, typical of a zero-filled tail.
    #[error("record length is zero")]
    ZeroLength,
    /// A length over the configured record limit, refused before allocating anything.
    #[error("record length {len} exceeds the limit of {limit} bytes")]
    TooLong {
        /// The length the header claims.
        len: u32,
        /// The configured limit.
        limit: u32,
    },
    /// The checksum does not match the LSN and payload.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum in the header.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
}

/// A record decoded in place: the payload borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The record's log sequence number (or the chunk's sequence number in a snapshot).
    pub lsn: u64,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the record occupies on disk, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }
}

/// The checksum stored in a record header, with salt 0 (snapshot frames).
pub fn checksum(lsn: u64, payload: &[u8]) -> u32 {
    finish_checksum(payload_checksum(0, payload), lsn)
}

/// The payload's part of a record checksum, computable before the LSN is assigned. The salt (a
/// segment's random value, 0 for snapshots) starts the CRC, so that bytes a client put inside a
/// payload can never pass for a record of their own: they cannot know the salt.
pub fn payload_checksum(salt: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(salt, payload)
}

/// The record checksum from the payload's part and the LSN.
pub fn finish_checksum(payload_checksum: u32, lsn: u64) -> u32 {
    crc32c::crc32c_append(payload_checksum, &lsn.to_le_bytes())
}

/// Appends one framed record to `out`. The caller has checked the payload against its limit; an
/// empty payload is a bug because it could not be told apart from a zero-filled tail.
pub fn encode_into(out: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    encode_with_checksum(out, lsn, payload, payload_checksum(0, payload));
}

/// Like [`encode_into`], with the payload's checksum already computed.
pub fn encode_with_checksum(out: &mut Vec<u8>, lsn: u64, payload: &[u8], payload_checksum: u32) {
    assert!(!payload.is_empty(), "records never have an empty payload");
    let len = u32::try_from(payload.len()).expect("payload length is bounded by the record limit");
    out.reserve(HEADER_BYTES + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&finish_checksum(payload_checksum, lsn).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the record at the start of `bytes` with salt 0 (snapshot frames).
pub fn decode(bytes: &[u8], max_record_bytes: u32) -> Result<Frame<'_>, FrameError> {
    decode_salted(bytes, max_record_bytes, 0)
}

/// Decodes the record at the start of `bytes`, checking length and checksum before anything else.
pub fn decode_salted(
    bytes: &[u8],
    max_record_bytes: u32,
    salt: u32,
) -> Result<Frame<'_>, FrameError> {
    let header = read_header(bytes, max_record_bytes)?;
    let needed = HEADER_BYTES + header.len as usize;
    if bytes.len() < needed {
        return Err(FrameError::Truncated {
            needed: needed as u64,
            available: bytes.len() as u64,
        });
    }
    let payload = &bytes[HEADER_BYTES..needed];
    let computed = finish_checksum(payload_checksum(salt, payload), header.lsn);
    if computed != header.crc {
        return Err(FrameError::Checksum {
            stored: header.crc,
            computed,
        });
    }
    Ok(Frame {
        lsn: header.lsn,
        payload,
    })
}

/// The fixed-size fields at the start of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Payload length.
    pub len: u32,
    /// Stored checksum.
    pub crc: u32,
    /// Log sequence number.
    pub lsn: u64,
}

/// Reads and sanity-checks a header without touching the payload.
pub fn read_header(bytes: &[u8], max_record_bytes: u32) -> Result<Header, FrameError> {
    let Some(head) = bytes.get(..HEADER_BYTES) else {
        return Err(FrameError::Truncated {
            needed: HEADER_BYTES as u64,
            available: bytes.len() as u64,
        });
    };
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&head[8..16]);
    let lsn = u64::from_le_bytes(lsn_bytes);
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    let limit = max_record_bytes.min(MAX_RECORD_BYTES_LIMIT);
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    Ok(Header { len, crc, lsn })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 1 << 20;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, 42, b"a payload of some length");
        out
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let frame = decode(&bytes, LIMIT).unwrap();
        assert_eq!(frame.lsn, 42);
        assert_eq!(frame.payload, b"a payload of some length");
        assert_eq!(frame.encoded_len(), bytes.len());
    }

    #[test]
    fn every_truncation_offset_is_rejected() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut], LIMIT) {
                Err(FrameError::Truncated { available, .. }) => assert_eq!(available, cut as u64),
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = sample();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = decode(&flipped, LIMIT);
            assert!(
                result.is_err(),
                "bit {bit} flipped and the record still decoded: {result:?}"
            );
        }
    }

    #[test]
    fn zero_filled_tail_is_zero_length() {
        assert_eq!(decode(&[0u8; 64], LIMIT), Err(FrameError::ZeroLength));
    }

    #[test]
    fn absurd_length_is_refused_before_reading_the_payload() {
        let mut bytes = sample();
        bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&bytes, LIMIT),
            Err(FrameError::TooLong {
                len: u32::MAX,
                limit: LIMIT
            })
        );
    }
}
