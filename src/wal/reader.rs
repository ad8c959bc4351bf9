//! The log as a source for readers: every record from a given LSN on, across segments, in order,
//! up to a bound (for a reader beside a running writer: the durable watermark). Recovery and
//! `creditd wal dump` read through it; `creditd wal verify` reads each segment through it on its
//! own, so that it can report every damaged segment, not only the first.
//!
//! The reader checks what the log promises across segments: segments follow each other without
//! gaps or overlaps, none starts at LSN 0, damage stops the read, and an unfinished batch is
//! accepted only at the end of the last segment (reported, for recovery to cut). It hands out
//! records of whole batches only (see [`super::segment::scan`]).
//!
//! It reads; it never repairs anything.

use std::path::PathBuf;

use super::record::Frame;
use super::segment::{self, ScanEnd, SegmentFile, TailReason};
use super::storage::Storage;

/// Where to read.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    /// The first LSN handed out; records before it are read and checked, then skipped.
    pub from_lsn: u64,
    /// The last LSN handed out (inclusive): a reader beside a running writer passes the durable
    /// watermark; `u64::MAX` reads to the end.
    pub until_lsn: u64,
    /// The segment format version expected.
    pub format_version: u32,
    /// The largest record read.
    pub max_record_bytes: u32,
}

/// An unfinished batch at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    /// The segment.
    pub path: PathBuf,
    /// Where the valid data ends.
    pub offset: u64,
    /// Bytes after it.
    pub bytes: u64,
    /// Why those bytes are not a batch.
    pub reason: TailReason,
}

/// What a read went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The index in the listing of the first segment read.
    pub first: usize,
    /// Segments read.
    pub segments: u64,
    /// Records handed out.
    pub records: u64,
    /// Records read before `from_lsn`, checked and skipped.
    pub skipped: u64,
    /// The LSN after the last whole record read.
    pub next_lsn: u64,
    /// The last segment read and where its valid data ends.
    pub last: Option<(PathBuf, u64)>,
    /// The unfinished batch at the end of the log, if any.
    pub unfinished: Option<Unfinished>,
    /// Segments read that end in space zeroed ahead of the writer, with the offset where it
    /// begins (see [`ScanEnd::Unwritten`]).
    pub zeroed: Vec<(PathBuf, u64)>,
}

/// Why a read stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E> {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The oldest segment starts after `from_lsn`.
    #[error("the oldest segment starts at LSN {oldest}, the read must start at LSN {from_lsn}")]
    Missing {
        /// Where the read had to start.
        from_lsn: u64,
        /// Where the log starts.
        oldest: u64,
    },
    /// A segment does not start where the one before it ends.
    #[error("{} starts at LSN {first_lsn}, expected {expected}", path.display())]
    Gap {
        /// The segment.
        path: PathBuf,
        /// Its first LSN.
        first_lsn: u64,
        /// Where the previous segment ended.
        expected: u64,
    },
    /// Damage that is not an unfinished write at the end of the log.
    #[error("{}: damaged log: {detail}", path.display())]
    Damage {
        /// The segment.
        path: PathBuf,
        /// What and where (byte offset).
        detail: String,
    },
    /// The visitor stopped the read.
    #[error("{0}")]
    Visit(E),
}

/// Reads `segments` (a sorted listing, see [`segment::from_listing`]) from `range.from_lsn` on,
/// handing each record up to `range.until_lsn` to `visit` with its segment and byte offset.
pub fn read<E>(
    storage: &dyn Storage,
    segments: &[SegmentFile],
    range: Range,
    mut visit: impl FnMut(&SegmentFile, u64, Frame<'_>) -> Result<(), E>,
) -> Result<Read, ReadError<E>> {
    let mut read = Read {
        first: 0,
        segments: 0,
        records: 0,
        skipped: 0,
        next_lsn: range.from_lsn,
        last: None,
        unfinished: None,
        zeroed: Vec::new(),
    };
    if segments.is_empty() {
        return Ok(read);
    }
    if let Some(zero) = segments.iter().find(|segment| segment.first_lsn == 0) {
        return Err(ReadError::Damage {
            path: zero.path.clone(),
            detail: "a segment cannot start at LSN 0 (LSNs start at 1)".into(),
        });
    }
    let Some(first) = segments.iter().rposition(|s| s.first_lsn <= range.from_lsn) else {
        return Err(ReadError::Missing {
            from_lsn: range.from_lsn,
            oldest: segments[0].first_lsn,
        });
    };
    read.first = first;
    let mut expected = segments[first].first_lsn;
    let last_index = segments.len() - 1;
    for (index, file) in segments.iter().enumerate().skip(first) {
        if expected > range.until_lsn {
            break;
        }
        if file.first_lsn != expected {
            return Err(ReadError::Gap {
                path: file.path.clone(),
                first_lsn: file.first_lsn,
                expected,
            });
        }
        let bytes = storage
            .read_all(&file.path)
            .map_err(|source| ReadError::Io {
                path: file.path.clone(),
                source,
            })?;
        let scan = segment::scan(
            &bytes,
            file.first_lsn,
            range.format_version,
            range.max_record_bytes,
            |offset, frame| {
                if frame.lsn < range.from_lsn {
                    read.skipped += 1;
                    return Ok(());
                }
                if frame.lsn > range.until_lsn {
                    return Ok(());
                }
                read.records += 1;
                visit(file, offset, frame)
            },
        )
        .map_err(ReadError::Visit)?
        .map_err(|damage| ReadError::Damage {
            path: file.path.clone(),
            detail: damage.to_string(),
        })?;
        read.segments += 1;
        if let ScanEnd::Unwritten { offset } = scan.end {
            read.zeroed.push((file.path.clone(), offset));
        }
        if let ScanEnd::TornTail { offset, reason } = &scan.end {
            if index != last_index {
                return Err(ReadError::Damage {
                    path: file.path.clone(),
                    detail: format!(
                        "bad batch at offset {offset} ({reason}) in a segment that is not the last"
                    ),
                });
            }
            read.unfinished = Some(Unfinished {
                path: file.path.clone(),
                offset: *offset,
                // What the unfinished write left, not the zeroed space after it.
                bytes: bytes[*offset as usize..]
                    .iter()
                    .rposition(|&byte| byte != 0)
                    .map_or(0, |last| last as u64 + 1),
                reason: reason.clone(),
            });
        }
        expected = scan.next_lsn;
        read.last = Some((file.path.clone(), scan.valid_len));
    }
    read.next_lsn = expected.min(range.until_lsn.saturating_add(1));
    Ok(read)
}

/// One segment read on its own by [`EachSegment`].
#[derive(Debug)]
pub struct SegmentRead<'a, E> {
    /// The segment.
    pub file: &'a SegmentFile,
    /// Whether it is the last of the listing (where an unfinished batch is a torn tail, not
    /// damage).
    pub last: bool,
    /// Where the segment before it ended, when that is not where this one starts: a gap.
    pub gap_after: Option<u64>,
    /// The read of this segment alone, from its first LSN. An unfinished batch at its end comes
    /// back in `Ok(read.unfinished)` whether or not the segment is the last: the caller says
    /// which it is.
    pub read: Result<Read, ReadError<E>>,
}

/// Reads a listing one segment at a time, each from its own first LSN, for the checks that report
/// every segment instead of stopping at the first gap or damage: `creditd wal verify` and
/// recovery's check of the segments an older snapshot would replay. [`read`] is the reader for
/// everything that uses the records.
pub struct EachSegment<'a> {
    storage: &'a dyn Storage,
    segments: &'a [SegmentFile],
    next: usize,
    expected: Option<u64>,
    format_version: u32,
    max_record_bytes: u32,
}

impl<'a> EachSegment<'a> {
    /// A walk over `segments` (a sorted listing, see [`segment::from_listing`]).
    pub fn new(
        storage: &'a dyn Storage,
        segments: &'a [SegmentFile],
        format_version: u32,
        max_record_bytes: u32,
    ) -> EachSegment<'a> {
        EachSegment {
            storage,
            segments,
            next: 0,
            expected: None,
            format_version,
            max_record_bytes,
        }
    }

    /// Where the next segment must start: where the last one read ended, or `None` at the start
    /// and after a segment that could not be read to its end.
    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Reads the next segment, handing its records to `visit`; `None` after the last.
    pub fn next_segment<E>(
        &mut self,
        visit: impl FnMut(&SegmentFile, u64, Frame<'_>) -> Result<(), E>,
    ) -> Option<SegmentRead<'a, E>> {
        let file = self.segments.get(self.next)?;
        self.next += 1;
        let range = Range {
            from_lsn: file.first_lsn,
            until_lsn: u64::MAX,
            format_version: self.format_version,
            max_record_bytes: self.max_record_bytes,
        };
        let gap_after = self.expected.filter(|&lsn| lsn != file.first_lsn);
        let read = read(self.storage, std::slice::from_ref(file), range, visit);
        self.expected = read.as_ref().ok().map(|read| read.next_lsn);
        Some(SegmentRead {
            file,
            last: self.next == self.segments.len(),
            gap_after,
            read,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::batch;
    use crate::wal::memory::MemStorage;
    use std::path::Path;

    const VERSION: u32 = 9;

    /// A log of three segments holding LSNs 1..=9, three batches of one record per segment.
    fn log() -> (MemStorage, Vec<SegmentFile>) {
        let storage = MemStorage::new();
        let dir = Path::new("/wal");
        storage.create_dir_all(dir).unwrap();
        for first in [1u64, 4, 7] {
            let mut bytes = segment::encode_salted_header(first, VERSION, 5).to_vec();
            for lsn in first..first + 3 {
                bytes.extend_from_slice(&batch::encode(lsn, &[format!("r{lsn}").as_bytes()], 5));
            }
            let mut file = storage
                .create(&dir.join(segment::file_name(first)))
                .unwrap();
            file.write_all(&bytes).unwrap();
        }
        let listing = segment::from_listing(dir, &storage.list(dir).unwrap());
        (storage, listing)
    }

    fn range(from_lsn: u64, until_lsn: u64) -> Range {
        Range {
            from_lsn,
            until_lsn,
            format_version: VERSION,
            max_record_bytes: 1 << 20,
        }
    }

    fn lsns(storage: &MemStorage, segments: &[SegmentFile], range: Range) -> (Vec<u64>, Read) {
        let mut seen = Vec::new();
        let done = read::<()>(storage, segments, range, |_, _, frame| {
            seen.push(frame.lsn);
            Ok(())
        })
        .unwrap();
        (seen, done)
    }

    #[test]
    fn reads_across_segments_from_an_lsn_up_to_a_bound() {
        let (storage, segments) = log();
        let (seen, done) = lsns(&storage, &segments, range(1, u64::MAX));
        assert_eq!(seen, (1..=9).collect::<Vec<_>>());
        assert_eq!((done.next_lsn, done.segments, done.first), (10, 3, 0));
        let (seen, done) = lsns(&storage, &segments, range(5, 7));
        assert_eq!(seen, vec![5, 6, 7]);
        assert_eq!((done.first, done.skipped, done.next_lsn), (1, 1, 8));
    }

    #[test]
    fn a_missing_middle_segment_or_start_is_refused() {
        let (storage, mut segments) = log();
        let middle = segments.remove(1);
        let error =
            read::<()>(&storage, &segments, range(1, u64::MAX), |_, _, _| Ok(())).unwrap_err();
        assert!(
            matches!(&error, ReadError::Gap { path, first_lsn: 7, expected: 4 } if path != &middle.path),
            "{error:?}"
        );
        let error = read::<()>(&storage, &segments[1..], range(2, u64::MAX), |_, _, _| {
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(
                error,
                ReadError::Missing {
                    from_lsn: 2,
                    oldest: 7
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn an_unfinished_batch_is_accepted_only_at_the_end_of_the_last_segment() {
        let (storage, segments) = log();
        storage
            .append_durably(&segments[2].path, &[0x42; 20])
            .unwrap();
        let (seen, done) = lsns(&storage, &segments, range(1, u64::MAX));
        assert_eq!(seen.len(), 9);
        let unfinished = done.unfinished.expect("the unfinished batch is reported");
        assert_eq!(unfinished.bytes, 20);
        assert!(
            matches!(unfinished.reason, TailReason::Batch(_)),
            "{:?}",
            unfinished.reason
        );
        storage
            .append_durably(&segments[1].path, &[0x42; 20])
            .unwrap();
        let error =
            read::<()>(&storage, &segments, range(1, u64::MAX), |_, _, _| Ok(())).unwrap_err();
        assert!(matches!(error, ReadError::Damage { .. }), "{error:?}");
    }

    #[test]
    fn each_segment_goes_past_a_gap_and_an_unfinished_batch_to_report_every_segment() {
        let (storage, segments) = log();
        storage
            .append_durably(&segments[0].path, &[0x42; 20])
            .unwrap();
        // The middle segment is missing from the listing: a gap between the first and the last.
        let listing = [segments[0].clone(), segments[2].clone()];
        let mut each = EachSegment::new(&storage, &listing, VERSION, 1 << 20);
        let mut lsns = Vec::new();
        let first = each
            .next_segment::<()>(|_, _, frame| {
                lsns.push(frame.lsn);
                Ok(())
            })
            .unwrap();
        assert!(!first.last);
        assert_eq!(first.gap_after, None);
        let read = first.read.unwrap();
        assert_eq!(read.unfinished.map(|unfinished| unfinished.bytes), Some(20));
        assert_eq!(each.expected(), Some(4));
        let second = each
            .next_segment::<()>(|_, _, frame| {
                lsns.push(frame.lsn);
                Ok(())
            })
            .unwrap();
        assert!(second.last);
        assert_eq!(second.gap_after, Some(4));
        assert_eq!(second.read.unwrap().next_lsn, 10);
        assert_eq!(lsns, [1, 2, 3, 7, 8, 9]);
        assert!(each.next_segment::<()>(|_, _, _| Ok(())).is_none());
    }
}
