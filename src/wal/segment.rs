//! Log segments: `wal/<first_lsn>.log` files holding a 32-byte header and then framed records
//! (see [`super::record`]) with consecutive LSNs.
//!
//! ```text
//! offset  size  field
//! 0       8     magic           "CREDITDW"
//! 8       4     format_version  u32 LE, the payload codec's version
//! 12      4     salt            u32 LE, random per log writer: the starting value of every record's
//!                               CRC in this segment (0 means unsalted)
//! 16      8     first_lsn       u64 LE, equal to the number in the file name
//! 24      4     crc             u32 LE, CRC-32C over bytes 0 .. 24
//! 28      4     padding         zero
//! ```
//!
//! This module reads and names segments; it decides what is a torn tail and what is damage, but it
//! never repairs anything itself.

use std::path::{Path, PathBuf};

use super::record::{self, Frame, FrameError, HEADER_BYTES};

/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
const MAGIC: &[u8; 8] = b"CREDITDW";
const EXTENSION: &str = ".log";

/// A segment file found in the log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// The LSN of its first record, from its name.
    pub first_lsn: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The file name of the segment whose first record has `first_lsn`.
pub fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{EXTENSION}")
}

/// Parses a segment file name; other names give `None`.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `names` (a directory listing), sorted by first LSN.
pub fn from_listing(dir: &Path, names: &[String]) -> Vec<SegmentFile> {
    let mut segments: Vec<SegmentFile> = names
        .iter()
        .filter_map(|name| {
            parse_file_name(name).map(|first_lsn| SegmentFile {
                first_lsn,
                path: dir.join(name),
            })
        })
        .collect();
    segments.sort_by_key(|segment| segment.first_lsn);
    segments
}

/// The header of a new unsalted segment.
pub fn encode_header(first_lsn: u64, format_version: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    encode_salted_header(first_lsn, format_version, 0)
}

/// The header a new segment starts with; its records' CRCs start from `salt`.
pub fn encode_salted_header(
    first_lsn: u64,
    format_version: u32,
    salt: u32,
) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&format_version.to_le_bytes());
    header[12..16].copy_from_slice(&salt.to_le_bytes());
    header[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What is wrong with a segment header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file is shorter than a header.
    #[error("segment shorter than its {SEGMENT_HEADER_BYTES}-byte header ({0} bytes)")]
    Short(usize),
    /// The magic bytes or the checksum are wrong.
    #[error("segment header is not a creditd log header (bad magic or checksum)")]
    NotAHeader,
    /// Written by a codec version this build cannot read.
    #[error("segment format version {found} is not supported (this build reads {supported})")]
    Version {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The first LSN in the header differs from the one in the name.
    #[error("segment header says first LSN {header}, its name says {name}")]
    NameMismatch {
        /// From the header.
        header: u64,
        /// From the file name.
        name: u64,
    },
}

/// Checks a segment header and returns its first LSN.
pub fn decode_header(bytes: &[u8], format_version: u32) -> Result<u64, HeaderError> {
    decode_salted_header(bytes, format_version).map(|(first_lsn, _)| first_lsn)
}

/// Checks a segment header and returns its first LSN and salt.
pub fn decode_salted_header(bytes: &[u8], format_version: u32) -> Result<(u64, u32), HeaderError> {
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES) else {
        return Err(HeaderError::Short(bytes.len()));
    };
    let stored = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
    if &header[..8] != MAGIC || crc32c::crc32c(&header[..24]) != stored {
        return Err(HeaderError::NotAHeader);
    }
    let found = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if found != format_version {
        return Err(HeaderError::Version {
            found,
            supported: format_version,
        });
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&header[16..24]);
    let salt = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    Ok((u64::from_le_bytes(first), salt))
}

/// How a scan of one segment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belonged to a valid record.
    Clean,
    /// From `offset` on, the bytes hold no valid record: an unfinished write. Only acceptable in
    /// the last segment, where recovery cuts the file at `offset`.
    TornTail {
        /// Where the valid prefix ends.
        offset: u64,
        /// Why the bytes at `offset` are not a record.
        reason: TailReason,
    },
}

/// Why the tail of a segment is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailReason {
    /// The header itself was never completely written.
    Header(HeaderError),
    /// A record frame failed.
    Frame(FrameError),
}

/// Damage that is not a torn tail: valid data follows the bad bytes, or records are out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The header is wrong although the file has content after it.
    #[error("bad segment header: {0}")]
    Header(HeaderError),
    /// A bad record is followed by a valid one, so this is not an unfinished write.
    #[error(
        "bad record at offset {offset} ({reason}) followed by a valid record at offset {valid_at}"
    )]
    Corrupt {
        /// Offset of the bad record.
        offset: u64,
        /// What is wrong with it.
        reason: FrameError,
        /// Offset of the valid record found after it.
        valid_at: u64,
    },
    /// A record claims an LSN above [`super::MAX_LSN`], which is never issued.
    #[error("record at offset {offset} has an LSN above 2^63 - 1, which is never issued")]
    LsnOverflow {
        /// Offset of the record.
        offset: u64,
    },
    /// A record's LSN is not the one after its predecessor's.
    #[error("record at offset {offset} has LSN {found}, expected {expected}")]
    OutOfSequence {
        /// Offset of the record.
        offset: u64,
        /// LSN found.
        found: u64,
        /// LSN expected.
        expected: u64,
    },
}

/// The result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Valid records read.
    pub records: u64,
    /// The LSN the next record after this segment must have.
    pub next_lsn: u64,
    /// Bytes of the valid prefix (header and records).
    pub valid_len: u64,
    /// How the scan ended.
    pub end: ScanEnd,
}

/// Scans the bytes of a segment named for `first_lsn`, handing each valid record to `visit`.
///
/// Returns `Ok` with a [`ScanEnd::TornTail`] when the file ends in bytes that hold no valid record
/// anywhere after the bad one; returns [`Damage`] when a bad record is followed by valid data or
/// when LSNs do not follow each other.
pub fn scan<E>(
    bytes: &[u8],
    first_lsn: u64,
    format_version: u32,
    max_record_bytes: u32,
    mut visit: impl FnMut(Frame<'_>) -> Result<(), E>,
) -> Result<Result<Scan, Damage>, E> {
    let salt = match decode_salted_header(bytes, format_version) {
        Ok((header_lsn, _)) if header_lsn != first_lsn => {
            return Ok(Err(Damage::Header(HeaderError::NameMismatch {
                header: header_lsn,
                name: first_lsn,
            })))
        }
        Ok((_, salt)) => salt,
        Err(error) => {
            // A header that was never completely written is torn only if nothing follows it.
            if bytes.len() <= SEGMENT_HEADER_BYTES
                || bytes[SEGMENT_HEADER_BYTES..].iter().all(|&b| b == 0)
            {
                let end = ScanEnd::TornTail {
                    offset: 0,
                    reason: TailReason::Header(error),
                };
                return Ok(Ok(Scan {
                    records: 0,
                    next_lsn: first_lsn,
                    valid_len: 0,
                    end,
                }));
            }
            return Ok(Err(Damage::Header(error)));
        }
    };
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut expected = first_lsn;
    let mut records = 0u64;
    while offset < bytes.len() {
        match record::decode_salted(&bytes[offset..], max_record_bytes, salt) {
            Ok(frame) => {
                if frame.lsn > super::MAX_LSN {
                    return Ok(Err(Damage::LsnOverflow {
                        offset: offset as u64,
                    }));
                }
                if frame.lsn != expected {
                    return Ok(Err(Damage::OutOfSequence {
                        offset: offset as u64,
                        found: frame.lsn,
                        expected,
                    }));
                }
                visit(frame)?;
                offset += frame.encoded_len();
                expected += 1;
                records += 1;
            }
            Err(reason) => {
                if let Some(valid_at) =
                    find_valid_record(bytes, offset + 1, expected, max_record_bytes, salt)
                {
                    return Ok(Err(Damage::Corrupt {
                        offset: offset as u64,
                        reason,
                        valid_at: valid_at as u64,
                    }));
                }
                let end = ScanEnd::TornTail {
                    offset: offset as u64,
                    reason: TailReason::Frame(reason),
                };
                return Ok(Ok(Scan {
                    records,
                    next_lsn: expected,
                    valid_len: offset as u64,
                    end,
                }));
            }
        }
    }
    Ok(Ok(Scan {
        records,
        next_lsn: expected,
        valid_len: offset as u64,
        end: ScanEnd::Clean,
    }))
}

/// Looks for a record with a plausible LSN (at or after `min_lsn`) anywhere from `from` on. Such a
/// record after a bad one means the bad one is damage, not an unfinished write.
///
/// Records are checked with the segment's salt, which no client can know: bytes a client placed
/// inside a payload (a description, metadata) can never pass for a record and turn an unfinished
/// write into "damage" that stops the start.
fn find_valid_record(
    bytes: &[u8],
    from: usize,
    min_lsn: u64,
    max_record_bytes: u32,
    salt: u32,
) -> Option<usize> {
    let max_plausible = min_lsn.saturating_add((bytes.len() / HEADER_BYTES) as u64);
    (from..bytes.len().saturating_sub(HEADER_BYTES)).find(|&at| {
        let Ok(header) = record::read_header(&bytes[at..], max_record_bytes) else {
            return false;
        };
        (min_lsn..=max_plausible).contains(&header.lsn)
            && record::decode_salted(&bytes[at..], max_record_bytes, salt).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION: u32 = 1;
    const LIMIT: u32 = 1 << 20;

    fn segment(first_lsn: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bytes = encode_header(first_lsn, VERSION).to_vec();
        for (i, payload) in payloads.iter().enumerate() {
            record::encode_into(&mut bytes, first_lsn + i as u64, payload);
        }
        bytes
    }

    fn scan_all(bytes: &[u8], first_lsn: u64) -> (Result<Scan, Damage>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = scan::<()>(bytes, first_lsn, VERSION, LIMIT, |frame| {
            seen.push(frame.lsn);
            Ok(())
        })
        .unwrap();
        (result, seen)
    }

    #[test]
    fn names_round_trip_and_sort_numerically() {
        assert_eq!(parse_file_name(&file_name(7)), Some(7));
        assert_eq!(parse_file_name("7.log"), None);
        assert_eq!(parse_file_name("00000000000000000007.log.tmp"), None);
        let names = vec![file_name(100), file_name(9), "junk".to_owned()];
        let lsns: Vec<u64> = from_listing(Path::new("/w"), &names)
            .iter()
            .map(|s| s.first_lsn)
            .collect();
        assert_eq!(lsns, vec![9, 100]);
    }

    #[test]
    fn clean_segment_scans_every_record() {
        let bytes = segment(5, &[b"a", b"bb", b"ccc"]);
        let (result, seen) = scan_all(&bytes, 5);
        let scan = result.unwrap();
        assert_eq!(seen, vec![5, 6, 7]);
        assert_eq!(scan.end, ScanEnd::Clean);
        assert_eq!(scan.next_lsn, 8);
        assert_eq!(scan.valid_len, bytes.len() as u64);
    }

    #[test]
    fn every_truncation_of_the_last_record_is_a_torn_tail() {
        let full = segment(1, &[b"first record", b"second record"]);
        let second_starts = SEGMENT_HEADER_BYTES + HEADER_BYTES + 12;
        for cut in second_starts + 1..full.len() {
            let (result, seen) = scan_all(&full[..cut], 1);
            let scan = result.unwrap_or_else(|d| panic!("cut {cut}: {d}"));
            assert_eq!(seen, vec![1], "cut {cut}");
            assert_eq!(scan.valid_len, second_starts as u64);
            assert!(matches!(scan.end, ScanEnd::TornTail { .. }));
        }
    }

    #[test]
    fn zero_filled_tail_is_torn() {
        let mut bytes = segment(1, &[b"one"]);
        let valid = bytes.len();
        bytes.extend_from_slice(&[0u8; 4096]);
        let (result, _) = scan_all(&bytes, 1);
        let scan = result.unwrap();
        assert_eq!(scan.valid_len, valid as u64);
    }

    #[test]
    fn damage_followed_by_valid_records_is_not_a_torn_tail() {
        let mut bytes = segment(1, &[b"one", b"two", b"three"]);
        let second = SEGMENT_HEADER_BYTES + HEADER_BYTES + 3;
        bytes[second + HEADER_BYTES] ^= 0x40;
        let (result, seen) = scan_all(&bytes, 1);
        assert_eq!(seen, vec![1]);
        assert!(matches!(result, Err(Damage::Corrupt { .. })), "{result:?}");
    }

    #[test]
    fn out_of_sequence_lsn_is_damage() {
        let mut bytes = encode_header(1, VERSION).to_vec();
        record::encode_into(&mut bytes, 1, b"one");
        record::encode_into(&mut bytes, 3, b"three");
        let (result, _) = scan_all(&bytes, 1);
        assert!(matches!(
            result,
            Err(Damage::OutOfSequence {
                found: 3,
                expected: 2,
                ..
            })
        ));
    }

    #[test]
    fn lsns_above_the_highest_ever_issued_are_damage() {
        let at_limit = segment(crate::wal::MAX_LSN, &[b"last"]);
        assert_eq!(
            scan_all(&at_limit, crate::wal::MAX_LSN).1,
            vec![crate::wal::MAX_LSN]
        );
        let past = segment(crate::wal::MAX_LSN + 1, &[b"never"]);
        assert!(matches!(
            scan_all(&past, crate::wal::MAX_LSN + 1).0,
            Err(Damage::LsnOverflow { .. })
        ));
    }

    #[test]
    fn header_only_and_unwritten_header_are_torn() {
        let bytes = segment(9, &[]);
        assert_eq!(scan_all(&bytes, 9).0.unwrap().end, ScanEnd::Clean);
        let (result, _) = scan_all(&bytes[..10], 9);
        assert!(matches!(
            result.unwrap().end,
            ScanEnd::TornTail { offset: 0, .. }
        ));
        let (result, _) = scan_all(&[0u8; 100], 9);
        assert!(matches!(
            result.unwrap().end,
            ScanEnd::TornTail { offset: 0, .. }
        ));
    }

    #[test]
    fn header_naming_another_lsn_is_damage() {
        let bytes = segment(9, &[b"x"]);
        assert!(matches!(
            scan_all(&bytes, 10).0,
            Err(Damage::Header(HeaderError::NameMismatch { .. }))
        ));
    }
}
