//! Log segments: `wal/<first_lsn>.log` files holding a 32-byte header and then batches (see
//! [`super::batch`]) of framed records (see [`super::record`]) with consecutive LSNs.
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

use super::batch::{self, BatchError, BATCH_HEADER_BYTES};
use super::record::Frame;

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
    /// Every byte belonged to a valid batch.
    Clean,
    /// From `offset` on, every byte is zero: space the writer zeroed ahead of its writes (see
    /// `zero_ahead.rs`), or a batch none of whose bytes reached the disk. Nothing written
    /// is lost there; recovery trims it from the last segment, and readers stop at it.
    Unwritten {
        /// Where the valid prefix ends: the first zero byte after it.
        offset: u64,
    },
    /// From `offset` on, the bytes are a batch that was never completely written. Only acceptable
    /// in the last segment, where recovery cuts the file at `offset`.
    TornTail {
        /// Where the valid prefix ends: the start of the unfinished batch.
        offset: u64,
        /// Why the bytes at `offset` are not a batch.
        reason: TailReason,
    },
}

/// Why the tail of a segment is not a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailReason {
    /// The segment header itself was never completely written.
    Header(HeaderError),
    /// The last batch was never completely written.
    Batch(BatchError),
}

impl std::fmt::Display for TailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TailReason::Header(error) => write!(f, "{error}"),
            TailReason::Batch(error) => write!(f, "{error}"),
        }
    }
}

/// Damage that is not an unfinished write: bytes that were written completely (and so, in the
/// log, acknowledged) no longer read back, or records are out of order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The header is wrong although the file has content after it.
    #[error("bad segment header: {0}")]
    Header(HeaderError),
    /// A bad batch is followed by a valid one: the writer starts a batch only after the one
    /// before it was synced, so the bad one had been acknowledged.
    #[error(
        "bad batch at offset {offset} ({reason}) followed by a valid batch at offset {valid_at}"
    )]
    Corrupt {
        /// Offset of the bad batch.
        offset: u64,
        /// What is wrong with it.
        reason: BatchError,
        /// Offset of the valid batch found after it.
        valid_at: u64,
    },
    /// The last batch is bad, yet every byte of it was written: the file reaches its end and no
    /// sector of it reads as unwritten. Its records may have been acknowledged; a flipped bit is
    /// not an unfinished write.
    #[error(
        "bad batch at offset {offset} ({reason}): it was written completely (no sector of it is \
         unwritten), so this is damage to records that may have been acknowledged, not an \
         unfinished write"
    )]
    Written {
        /// Offset of the bad batch.
        offset: u64,
        /// What is wrong with it.
        reason: BatchError,
    },
    /// A record claims an LSN above [`super::MAX_LSN`], which is never issued.
    #[error("record at offset {offset} has an LSN above 2^63 - 1, which is never issued")]
    LsnOverflow {
        /// Offset of the record.
        offset: u64,
    },
    /// A batch's or record's LSN is not the one after its predecessor's.
    #[error("record at offset {offset} has LSN {found}, expected {expected}")]
    OutOfSequence {
        /// Offset of the batch or record.
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
    /// Bytes of the valid prefix (header and whole batches).
    pub valid_len: u64,
    /// How the scan ended.
    pub end: ScanEnd,
}

/// Scans the bytes of a segment named for `first_lsn`, handing each record of each valid batch
/// to `visit` with its offset in the segment. A batch is handed out only once all of it checked.
///
/// Returns `Ok` with a [`ScanEnd::Unwritten`] when the valid batches are followed by zeros alone,
/// with a [`ScanEnd::TornTail`] when the file ends in a batch that was never completely written
/// (see [`batch::unwritten`]) with nothing valid after it; returns [`Damage`]
/// when a bad batch is followed by a valid one, when a bad last batch was written completely, or
/// when LSNs do not follow each other.
pub fn scan<E>(
    bytes: &[u8],
    first_lsn: u64,
    format_version: u32,
    max_record_bytes: u32,
    mut visit: impl FnMut(u64, Frame<'_>) -> Result<(), E>,
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
    let mut frames = Vec::new();
    while offset < bytes.len() {
        let reason = match batch::check(&bytes[offset..], max_record_bytes, salt, &mut frames) {
            Ok(header) => {
                if header.first_lsn != expected {
                    return Ok(Err(Damage::OutOfSequence {
                        offset: offset as u64,
                        found: header.first_lsn,
                        expected,
                    }));
                }
                for &(at, frame) in &frames {
                    let at = (offset + at) as u64;
                    if frame.lsn > super::MAX_LSN {
                        return Ok(Err(Damage::LsnOverflow { offset: at }));
                    }
                    if frame.lsn != expected {
                        return Ok(Err(Damage::OutOfSequence {
                            offset: at,
                            found: frame.lsn,
                            expected,
                        }));
                    }
                    expected += 1;
                }
                for &(at, frame) in &frames {
                    visit((offset + at) as u64, frame)?;
                }
                records += frames.len() as u64;
                offset += header.batch_len();
                continue;
            }
            Err(reason) => reason,
        };
        if bytes[offset..].iter().all(|&byte| byte == 0) {
            return Ok(Ok(Scan {
                records,
                next_lsn: expected,
                valid_len: offset as u64,
                end: ScanEnd::Unwritten {
                    offset: offset as u64,
                },
            }));
        }
        if let Some(valid_at) = find_valid_batch(bytes, offset + 1, expected, salt) {
            return Ok(Err(Damage::Corrupt {
                offset: offset as u64,
                reason,
                valid_at: valid_at as u64,
            }));
        }
        let claimed_end = batch::decode_header(&bytes[offset..], salt)
            .ok()
            .map(|header| offset.saturating_add(header.batch_len()));
        if !batch::unwritten(bytes, offset, claimed_end) {
            return Ok(Err(Damage::Written {
                offset: offset as u64,
                reason,
            }));
        }
        let end = ScanEnd::TornTail {
            offset: offset as u64,
            reason: TailReason::Batch(reason),
        };
        return Ok(Ok(Scan {
            records,
            next_lsn: expected,
            valid_len: offset as u64,
            end,
        }));
    }
    Ok(Ok(Scan {
        records,
        next_lsn: expected,
        valid_len: offset as u64,
        end: ScanEnd::Clean,
    }))
}

/// Looks for a valid batch header with a plausible LSN (at or after `min_lsn`) anywhere from
/// `from` on. Such a header after a bad batch means the bad one is damage, not an unfinished
/// write: the writer begins a batch only once the one before it is durable.
///
/// Headers are checked with the segment's salt, which no client can know: bytes a client placed
/// inside a payload (a description, metadata) can never pass for a batch header and turn an
/// unfinished write into "damage" that stops the start.
fn find_valid_batch(bytes: &[u8], from: usize, min_lsn: u64, salt: u32) -> Option<usize> {
    let max_plausible = min_lsn.saturating_add((bytes.len() / batch::MIN_BATCH_BYTES) as u64);
    (from..bytes.len().saturating_sub(BATCH_HEADER_BYTES - 1)).find(|&at| {
        batch::decode_header(&bytes[at..], salt)
            .is_ok_and(|header| (min_lsn..=max_plausible).contains(&header.first_lsn))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::batch::SECTOR_BYTES;

    const VERSION: u32 = 1;
    const LIMIT: u32 = 1 << 20;
    const SALT: u32 = 0x0bad_5eed;

    /// A segment from `first_lsn` holding one batch per slice of payloads.
    fn segment(first_lsn: u64, batches: &[&[&[u8]]]) -> Vec<u8> {
        let mut bytes = encode_salted_header(first_lsn, VERSION, SALT).to_vec();
        let mut lsn = first_lsn;
        for payloads in batches {
            bytes.extend_from_slice(&batch::encode(lsn, payloads, SALT));
            lsn += payloads.len() as u64;
        }
        bytes
    }

    fn scan_all(bytes: &[u8], first_lsn: u64) -> (Result<Scan, Damage>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = scan::<()>(bytes, first_lsn, VERSION, LIMIT, |_, frame| {
            seen.push(frame.lsn);
            Ok(())
        })
        .unwrap();
        (result, seen)
    }

    /// Where the last batch of `bytes` starts.
    fn last_batch_offset(bytes: &[u8]) -> usize {
        let mut last = SEGMENT_HEADER_BYTES;
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut frames = Vec::new();
        while offset < bytes.len() {
            last = offset;
            let header = batch::check(&bytes[offset..], LIMIT, SALT, &mut frames).unwrap();
            offset += header.batch_len();
        }
        last
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
    fn clean_segment_scans_every_record_with_its_offset() {
        let bytes = segment(5, &[&[b"a", b"bb"], &[b"ccc"]]);
        let mut offsets = Vec::new();
        let result = scan::<()>(&bytes, 5, VERSION, LIMIT, |offset, frame| {
            offsets.push((offset, frame.lsn));
            Ok(())
        })
        .unwrap();
        let scan = result.unwrap();
        assert_eq!(scan.end, ScanEnd::Clean);
        assert_eq!(scan.records, 3);
        assert_eq!(scan.next_lsn, 8);
        assert_eq!(scan.valid_len, bytes.len() as u64);
        for (offset, lsn) in offsets {
            let frame = crate::wal::record::decode_salted(&bytes[offset as usize..], LIMIT, SALT);
            assert_eq!(frame.map(|f| f.lsn), Ok(lsn));
        }
    }

    #[test]
    fn every_truncation_of_the_last_batch_is_a_torn_tail_and_drops_the_whole_batch() {
        let full = segment(1, &[&[b"first record"], &[b"second", b"third"]]);
        let last = last_batch_offset(&full);
        for cut in last + 1..full.len() {
            let (result, seen) = scan_all(&full[..cut], 1);
            let scan = result.unwrap_or_else(|d| panic!("cut {cut}: {d}"));
            assert_eq!(seen, vec![1], "cut {cut}");
            assert_eq!(scan.valid_len, last as u64);
            assert!(matches!(scan.end, ScanEnd::TornTail { .. }));
        }
    }

    #[test]
    fn a_zeroed_tail_is_unwritten_space_and_a_batch_torn_into_it_is_torn() {
        let mut bytes = segment(1, &[&[b"one"]]);
        let valid = bytes.len();
        bytes.extend_from_slice(&[0u8; 4096]);
        let (result, seen) = scan_all(&bytes, 1);
        let scan = result.unwrap();
        assert_eq!(seen, vec![1]);
        assert_eq!(scan.valid_len, valid as u64);
        assert_eq!(
            scan.end,
            ScanEnd::Unwritten {
                offset: valid as u64
            }
        );
        // Part of the next batch reached the zeroed space (its first sectors, not its last):
        // torn, cut at the same place.
        let big = vec![0x62_u8; 3 * SECTOR_BYTES];
        let next = batch::encode(2, &[&big], SALT);
        let hole = (valid / SECTOR_BYTES + 2) * SECTOR_BYTES;
        bytes[valid..hole].copy_from_slice(&next[..hole - valid]);
        let (result, seen) = scan_all(&bytes, 1);
        let scan = result.unwrap();
        assert_eq!(seen, vec![1]);
        assert_eq!(scan.valid_len, valid as u64);
        assert!(
            matches!(scan.end, ScanEnd::TornTail { .. }),
            "{:?}",
            scan.end
        );
        assert!(valid + next.len() < bytes.len());
        // All of it did: a clean batch followed by zeroed space again.
        bytes[valid..valid + next.len()].copy_from_slice(&next);
        let (result, seen) = scan_all(&bytes, 1);
        let scan = result.unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(
            scan.end,
            ScanEnd::Unwritten {
                offset: (valid + next.len()) as u64
            }
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_last_batch_is_damage_not_a_torn_tail() {
        let bytes = segment(1, &[&[b"one"], &[b"two", b"the last record of the log"]]);
        let last = last_batch_offset(&bytes);
        for bit in last * 8..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let (result, _) = scan_all(&flipped, 1);
            assert!(
                matches!(result, Err(Damage::Written { offset, .. }) if offset == last as u64),
                "bit {bit}: {result:?}"
            );
        }
    }

    #[test]
    fn a_last_batch_with_an_unwritten_sector_is_torn_even_if_its_ends_were_written() {
        // Out-of-order persistence: the sectors holding the header and the trailer reached the
        // disk, one in the middle did not.
        let big = vec![0x61_u8; 3 * SECTOR_BYTES];
        let mut bytes = segment(1, &[&[b"one"], &[&big]]);
        let last = last_batch_offset(&bytes);
        let hole = (last / SECTOR_BYTES + 2) * SECTOR_BYTES;
        bytes[hole..hole + SECTOR_BYTES].fill(0);
        let (result, seen) = scan_all(&bytes, 1);
        let scan = result.unwrap();
        assert_eq!(seen, vec![1]);
        assert_eq!(scan.valid_len, last as u64);
        assert!(matches!(scan.end, ScanEnd::TornTail { .. }));
    }

    #[test]
    fn damage_followed_by_valid_batches_is_not_a_torn_tail() {
        let mut bytes = segment(1, &[&[b"one"], &[b"two"], &[b"three"]]);
        let second = SEGMENT_HEADER_BYTES + batch::encode(1, &[b"one"], SALT).len();
        // A run of zeros (as an unwritten sector would leave) in the middle batch: still damage,
        // because a later batch is only written once the earlier one was synced.
        bytes[second + 30..second + 34].fill(0);
        let (result, seen) = scan_all(&bytes, 1);
        assert_eq!(seen, vec![1]);
        assert!(matches!(result, Err(Damage::Corrupt { .. })), "{result:?}");
    }

    #[test]
    fn junk_after_the_last_batch_is_damage_unless_it_reads_as_unwritten() {
        let mut bytes = segment(1, &[&[b"one"]]);
        bytes.extend_from_slice(&[0x37; 80]);
        assert!(matches!(scan_all(&bytes, 1).0, Err(Damage::Written { .. })));
        let mut short = segment(1, &[&[b"one"]]);
        short.extend_from_slice(&[0x37; 23]);
        assert!(matches!(
            scan_all(&short, 1).0.unwrap().end,
            ScanEnd::TornTail { .. }
        ));
    }

    #[test]
    fn out_of_sequence_lsn_is_damage() {
        let mut bytes = encode_salted_header(1, VERSION, SALT).to_vec();
        bytes.extend_from_slice(&batch::encode(1, &[b"one"], SALT));
        bytes.extend_from_slice(&batch::encode(3, &[b"three"], SALT));
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
        let at_limit = segment(crate::wal::MAX_LSN, &[&[b"last"]]);
        assert_eq!(
            scan_all(&at_limit, crate::wal::MAX_LSN).1,
            vec![crate::wal::MAX_LSN]
        );
        let past = segment(crate::wal::MAX_LSN + 1, &[&[b"never"]]);
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
        let bytes = segment(9, &[&[b"x"]]);
        assert!(matches!(
            scan_all(&bytes, 10).0,
            Err(Damage::Header(HeaderError::NameMismatch { .. }))
        ));
    }
}
