//! The batch frame: what one group commit writes. The records of one `write` + `fdatasync` are
//! wrapped in a header that says how many there are and how long they are, and a trailer that
//! closes them, so that a reader can tell a batch that was written completely from one that never
//! was, whatever happened to the bytes in between (see `docs/design.md`, "Torn or damaged").
//!
//! ```text
//! offset          size  field
//! 0               4     magic     "CDWB"
//! 4               4     body_len  u32 LE, bytes of records between header and trailer
//! 8               8     first_lsn u64 LE, the LSN of the first record
//! 16              4     records   u32 LE, how many records the body holds, at least 1
//! 20              4     crc       u32 LE, CRC-32C starting from the segment's salt over bytes 0 .. 20
//! 24              len   body      `records` record frames (see [`super::record`]), consecutive LSNs
//! 24 + len        4     crc       the header's crc again
//! 28 + len        4     magic     "BWDC"
//! ```
//!
//! Every byte of both magics is non-zero, so the first and the last bytes of a written batch are
//! never zero: a reader that finds zeros where a batch should begin or end knows the bytes were
//! never written (see [`unwritten`]). Payloads never hold a long run of zero bytes
//! ([`has_long_zero_run`]), so no sector a batch covers is ever all zero once written.
//!
//! This module owns the byte layout and the test of unwritten bytes; it does no I/O.

use super::record::{self, Frame, FrameError, HEADER_BYTES};

/// Bytes before the first record of a batch.
pub const BATCH_HEADER_BYTES: usize = 24;
/// Bytes after the last record of a batch.
pub const BATCH_TRAILER_BYTES: usize = 8;
/// The smallest batch: one record with a one-byte payload.
pub const MIN_BATCH_BYTES: usize = BATCH_HEADER_BYTES + HEADER_BYTES + 1 + BATCH_TRAILER_BYTES;
/// The unit in which disks persist writes: a sector is either old or new after a power cut.
pub const SECTOR_BYTES: usize = 512;
/// A payload may not hold this many zero bytes at an 8-byte-aligned position of the payload (a
/// run of 71 or more zero bytes always does). With the frame fields around them, no 256 bytes of
/// a written segment are ever all zero, so every written 512-byte sector holds at least two
/// non-zero bytes, and no single flipped bit can make it look unwritten.
pub const ZERO_RUN_LIMIT_BYTES: usize = 64;

const MAGIC: [u8; 4] = *b"CDWB";
const END_MAGIC: [u8; 4] = *b"BWDC";

/// What is wrong with the batch at some offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The header is cut short by the end of the file.
    #[error("batch header truncated: {available} of {BATCH_HEADER_BYTES} bytes")]
    HeaderTruncated {
        /// Bytes there are.
        available: u64,
    },
    /// The header's magic or checksum is wrong.
    #[error("bad batch header (magic or checksum)")]
    BadHeader,
    /// The header is valid but the file ends before the batch does.
    #[error("batch truncated: needs {needed} bytes, {available} available")]
    Truncated {
        /// Bytes the batch needs, header and trailer included.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },
    /// A record inside the body is bad.
    #[error("record at offset {offset} of the batch: {error}")]
    Record {
        /// Offset of the record from the start of the batch.
        offset: u64,
        /// What is wrong with it.
        error: FrameError,
    },
    /// The records do not fill the body exactly, or their number is not the header's.
    #[error(
        "the body holds {found} records in {bytes} bytes, the header says {records} in {body_len}"
    )]
    Shape {
        /// Records found.
        found: u64,
        /// Bytes they fill.
        bytes: u64,
        /// Records the header names.
        records: u32,
        /// Body length the header names.
        body_len: u32,
    },
    /// The trailer does not close the header.
    #[error("bad batch trailer")]
    BadTrailer,
}

/// A batch header that passed its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes of records.
    pub body_len: u32,
    /// LSN of the first record.
    pub first_lsn: u64,
    /// Number of records.
    pub records: u32,
    /// The header checksum (repeated in the trailer).
    pub crc: u32,
}

impl Header {
    /// Bytes the whole batch occupies.
    pub fn batch_len(&self) -> usize {
        BATCH_HEADER_BYTES + self.body_len as usize + BATCH_TRAILER_BYTES
    }
}

/// Reserves room for a batch header at the start of an empty buffer; [`seal`] fills it in.
pub fn begin(buffer: &mut Vec<u8>) {
    debug_assert!(buffer.is_empty());
    buffer.resize(BATCH_HEADER_BYTES, 0);
}

/// Fills in the header of a buffer started with [`begin`] and holding `records` records from
/// `first_lsn` on, and appends the trailer.
pub fn seal(buffer: &mut Vec<u8>, first_lsn: u64, records: u32, salt: u32) {
    let body_len = u32::try_from(buffer.len() - BATCH_HEADER_BYTES)
        .expect("the queue limit keeps a batch under 4 GiB");
    let header = encode_header(body_len, first_lsn, records, salt);
    buffer[..BATCH_HEADER_BYTES].copy_from_slice(&header);
    buffer.extend_from_slice(&header[20..24]);
    buffer.extend_from_slice(&END_MAGIC);
}

/// A batch header with its checksum.
pub fn encode_header(
    body_len: u32,
    first_lsn: u64,
    records: u32,
    salt: u32,
) -> [u8; BATCH_HEADER_BYTES] {
    let mut header = [0u8; BATCH_HEADER_BYTES];
    header[..4].copy_from_slice(&MAGIC);
    header[4..8].copy_from_slice(&body_len.to_le_bytes());
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    header[16..20].copy_from_slice(&records.to_le_bytes());
    let crc = crc32c::crc32c_append(salt, &header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A whole batch of `payloads` from `first_lsn` on, as the writer lays it out (for tests and
/// tools that build segments).
pub fn encode(first_lsn: u64, payloads: &[&[u8]], salt: u32) -> Vec<u8> {
    let mut buffer = Vec::new();
    begin(&mut buffer);
    for (index, payload) in payloads.iter().enumerate() {
        let checksum = record::payload_checksum(salt, payload);
        record::encode_with_checksum(&mut buffer, first_lsn + index as u64, payload, checksum);
    }
    let records = u32::try_from(payloads.len()).expect("a test batch is small");
    seal(&mut buffer, first_lsn, records, salt);
    buffer
}

/// Reads a batch header at the start of `bytes`.
pub fn decode_header(bytes: &[u8], salt: u32) -> Result<Header, BatchError> {
    let Some(head) = bytes.get(..BATCH_HEADER_BYTES) else {
        return Err(BatchError::HeaderTruncated {
            available: bytes.len() as u64,
        });
    };
    let stored = le_u32(&head[20..24]);
    if head[..4] != MAGIC || crc32c::crc32c_append(salt, &head[..20]) != stored {
        return Err(BatchError::BadHeader);
    }
    let records = le_u32(&head[16..20]);
    let body_len = le_u32(&head[4..8]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&head[8..16]);
    Ok(Header {
        body_len,
        first_lsn: u64::from_le_bytes(first),
        records,
        crc: stored,
    })
}

/// Checks the whole batch at the start of `bytes`: header, every record and its checksum, the
/// body's shape, the trailer. On success `frames` holds every record in order, with its offset
/// from the start of the batch; LSN order is the caller's to check (it knows what to expect).
pub fn check<'a>(
    bytes: &'a [u8],
    max_record_bytes: u32,
    salt: u32,
    frames: &mut Vec<(usize, Frame<'a>)>,
) -> Result<Header, BatchError> {
    frames.clear();
    let header = decode_header(bytes, salt)?;
    let len = header.batch_len();
    if bytes.len() < len {
        return Err(BatchError::Truncated {
            needed: len as u64,
            available: bytes.len() as u64,
        });
    }
    let body_end = BATCH_HEADER_BYTES + header.body_len as usize;
    let mut at = BATCH_HEADER_BYTES;
    while at < body_end {
        let frame = record::decode_salted(&bytes[at..body_end], max_record_bytes, salt).map_err(
            |error| BatchError::Record {
                offset: at as u64,
                error,
            },
        )?;
        frames.push((at, frame));
        at += frame.encoded_len();
    }
    if frames.len() as u64 != u64::from(header.records) || frames.is_empty() {
        return Err(BatchError::Shape {
            found: frames.len() as u64,
            bytes: (at - BATCH_HEADER_BYTES) as u64,
            records: header.records,
            body_len: header.body_len,
        });
    }
    let trailer = &bytes[body_end..len];
    if le_u32(&trailer[..4]) != header.crc || trailer[4..8] != END_MAGIC {
        return Err(BatchError::BadTrailer);
    }
    Ok(header)
}

/// Whether the bytes from `start` to the batch's end (`claimed_end` if its header could be read,
/// else the end of `bytes`) show a write that never completed: the file ends before the batch
/// does, or some sector of it (each 512-byte-aligned piece, cut to the batch's range) is all zero.
///
/// A written batch never shows either: it is whole, it begins and ends with non-zero magic, and
/// its payloads hold no long run of zeros. So if this returns false, every byte of the batch
/// reached the disk, and a bad byte inside it is damage to what was written.
pub fn unwritten(bytes: &[u8], start: usize, claimed_end: Option<usize>) -> bool {
    let end = match claimed_end {
        Some(end) if end > bytes.len() => return true,
        Some(end) => end,
        None => bytes.len(),
    };
    if end.saturating_sub(start) < MIN_BATCH_BYTES {
        return true;
    }
    let mut at = start;
    while at < end {
        let piece_end = ((at / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
        if bytes[at..piece_end].iter().all(|&byte| byte == 0) {
            return true;
        }
        at = piece_end;
    }
    false
}

/// Whether `payload` holds [`ZERO_RUN_LIMIT_BYTES`] zero bytes at an 8-byte-aligned offset: the
/// log refuses such payloads (see the module doc). Reads eight bytes at a time.
pub fn has_long_zero_run(payload: &[u8]) -> bool {
    const WORDS: usize = ZERO_RUN_LIMIT_BYTES / 8;
    let mut zero_words = 0;
    for chunk in payload.chunks_exact(8) {
        if chunk == [0u8; 8] {
            zero_words += 1;
            if zero_words == WORDS {
                return true;
            }
        } else {
            zero_words = 0;
        }
    }
    false
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: u32 = 0x5eed_0001;
    const LIMIT: u32 = 1 << 20;

    #[test]
    fn a_sealed_batch_checks_and_hands_back_its_records() {
        let bytes = encode(7, &[b"one", b"two", b"three"], SALT);
        let mut frames = Vec::new();
        let header = check(&bytes, LIMIT, SALT, &mut frames).unwrap();
        assert_eq!(header.first_lsn, 7);
        assert_eq!(header.batch_len(), bytes.len());
        let lsns: Vec<u64> = frames.iter().map(|(_, f)| f.lsn).collect();
        assert_eq!(lsns, vec![7, 8, 9]);
        assert!(!unwritten(&bytes, 0, Some(bytes.len())));
    }

    #[test]
    fn every_single_bit_flip_is_detected_and_none_looks_unwritten() {
        let bytes = encode(7, &[b"one", b"two", b"a longer third payload"], SALT);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check(&flipped, LIMIT, SALT, &mut Vec::new()).is_err(),
                "bit {bit} flipped and the batch still checks"
            );
            let claimed = decode_header(&flipped, SALT)
                .ok()
                .map(|header| header.batch_len());
            assert!(
                !unwritten(&flipped, 0, claimed),
                "bit {bit} flipped and the batch reads as never written"
            );
        }
    }

    #[test]
    fn every_truncation_is_unwritten() {
        let bytes = encode(7, &[b"one", b"two"], SALT);
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            assert!(
                check(part, LIMIT, SALT, &mut Vec::new()).is_err(),
                "cut {cut}"
            );
            let claimed = decode_header(part, SALT).ok().map(|h| h.batch_len());
            assert!(unwritten(part, 0, claimed), "cut {cut}");
        }
    }

    #[test]
    fn a_zero_sector_inside_a_whole_batch_is_unwritten() {
        // A batch spanning three sectors whose middle sector never reached the disk.
        let payload = vec![0x5a_u8; 1400];
        let mut bytes = vec![0x11_u8; 100];
        let start = bytes.len();
        bytes.extend_from_slice(&encode(3, &[&payload], SALT));
        let end = bytes.len();
        assert!(!unwritten(&bytes, start, Some(end)));
        bytes[512..1024].fill(0);
        assert!(check(&bytes[start..], LIMIT, SALT, &mut Vec::new()).is_err());
        assert!(unwritten(&bytes, start, Some(end)));
        // Only the part of the first sector that belongs to the batch counts.
        let mut head_unwritten = vec![0x11_u8; 500];
        let start = head_unwritten.len();
        head_unwritten.extend_from_slice(&[0u8; 12]);
        head_unwritten.extend_from_slice(&[0x22_u8; 200]);
        assert!(unwritten(&head_unwritten, start, None));
    }

    #[test]
    fn long_zero_runs_are_found_at_any_alignment() {
        assert!(!has_long_zero_run(&[0u8; 63]));
        assert!(has_long_zero_run(&[0u8; 64]));
        for shift in 0..8 {
            let mut payload = vec![1u8; shift];
            payload.extend_from_slice(&[0u8; ZERO_RUN_LIMIT_BYTES + 7]);
            payload.push(1);
            assert!(has_long_zero_run(&payload), "shift {shift}");
        }
        let mut spaced = Vec::new();
        for _ in 0..100 {
            spaced.extend_from_slice(&[0u8; 60]);
            spaced.push(9);
        }
        assert!(!has_long_zero_run(&spaced));
    }
}
