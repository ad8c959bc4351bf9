//! Following the log as it grows: the reader for consumers that run beside the writer (the
//! history store, streams), handing out each durable record once, in LSN order.
//!
//! [`super::reader::read`] reads whole segments from their start, which suits recovery and the
//! tools; a consumer that polls a running log would read the same bytes again at every poll. A
//! [`Follower`] remembers where it stopped (the segment, the byte offset of the next batch and its
//! salt) and reads only what was written since.
//!
//! Its promises:
//! - It hands out a record only once the caller says it is durable (`until_lsn`, the writer's
//!   durable watermark read before the poll), so it never shows a record a crash could undo.
//! - It hands out whole batches or nothing of them; a batch that reaches past `until_lsn` is left
//!   for a later poll, as is a batch the writer has not finished writing.
//! - Bytes it cannot read as a batch at a place the watermark says is durable are damage: it
//!   returns an error and stays where it was, never skipping a record.
//! - It moves to the next segment when the current one ends and the next starts at the next
//!   LSN; anything else (a missing segment, a segment that does not start where the one before
//!   ended) is an error.
//!
//! It reads; it never writes, and it takes no lock the writer takes. A consumer keeps the
//! segments it still needs with a retention hold (see [`super::retention`]).

use std::path::{Path, PathBuf};

use super::batch;
use super::record::Frame;
use super::segment::{self, SegmentFile, SEGMENT_HEADER_BYTES};
use super::storage::Storage;

/// Why a poll stopped with an error. The follower keeps its position: a later poll retries.
#[derive(Debug, thiserror::Error)]
pub enum FollowError<E> {
    /// A file could not be read or listed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The log no longer (or never did) hold the next record: the oldest segment starts after it.
    #[error("the log starts at LSN {oldest}, the next record to follow is LSN {next_lsn}")]
    Missing {
        /// The next LSN wanted.
        next_lsn: u64,
        /// Where the log starts.
        oldest: u64,
    },
    /// Bytes that should hold durable records do not.
    #[error("{}: damaged log at offset {offset}: {detail}", path.display())]
    Damage {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What.
        detail: String,
    },
    /// The visitor stopped the poll.
    #[error("{0}")]
    Visit(E),
}

/// Where a follower stands in a segment.
#[derive(Debug, Clone)]
struct Position {
    segment: SegmentFile,
    salt: u32,
    /// Byte offset of the next batch.
    offset: u64,
    /// The LSN of the next batch's first record.
    next_lsn: u64,
}

/// A reader that follows the log from a given LSN. See the module documentation.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    format_version: u32,
    max_record_bytes: u32,
    /// The next LSN handed out.
    next_lsn: u64,
    position: Option<Position>,
    /// The bytes of the last read, kept to be read into again.
    buffer: Vec<u8>,
    /// The most bytes read at a time (more when one batch is larger).
    chunk_bytes: usize,
}

/// The most bytes read from a segment at a time (more when one batch is larger).
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// The bytes of a poll's first read. A follower that is caught up finds little after its
/// position (and in the active segment, zeroed space), so it reads little; one that is behind
/// doubles its reads up to [`READ_CHUNK_BYTES`].
const FIRST_READ_BYTES: usize = 64 * 1024;

impl Follower {
    /// A follower of the log in `dir` that hands out records from `from_lsn` on.
    pub fn new(dir: &Path, from_lsn: u64, format_version: u32, max_record_bytes: u32) -> Follower {
        Follower {
            dir: dir.to_path_buf(),
            format_version,
            max_record_bytes,
            next_lsn: from_lsn.max(1),
            position: None,
            buffer: Vec::new(),
            chunk_bytes: READ_CHUNK_BYTES,
        }
    }

    /// The next LSN this follower hands out.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Goes back (or forward) to hand out records from `lsn` on: for a consumer whose own store
    /// did not keep what it was handed.
    pub fn rewind(&mut self, lsn: u64) {
        self.next_lsn = lsn.max(1);
        self.position = None;
    }

    /// Hands every record from [`Follower::next_lsn`] up to `until_lsn` (inclusive) that is
    /// written to `visit`, in order, stopping at the first batch boundary after `max_records`;
    /// returns how many it handed out. Records are handed out batch by batch: if `visit` fails,
    /// the follower resumes at the start of the batch it was in.
    pub fn poll<E>(
        &mut self,
        storage: &dyn Storage,
        until_lsn: u64,
        max_records: u64,
        mut visit: impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<u64, FollowError<E>> {
        let mut handed = 0;
        while self.next_lsn <= until_lsn && handed < max_records {
            let mut position = match self.position.take() {
                Some(position) => position,
                None => match self.locate(storage)? {
                    Some(position) => position,
                    None => return Ok(handed),
                },
            };
            let limit = Limit {
                until_lsn,
                records: max_records - handed,
            };
            let step = self.advance(storage, &mut position, limit, &mut visit);
            self.position = Some(position);
            let step = step?;
            handed += step.records;
            match step.next {
                Next::Stop => return Ok(handed),
                Next::Segment(next) => self.position = Some(next),
            }
        }
        Ok(handed)
    }

    /// Finds the segment that holds `next_lsn`, at its first batch; `None` if the log is empty.
    fn locate<E>(&self, storage: &dyn Storage) -> Result<Option<Position>, FollowError<E>> {
        let segments = self.list(storage)?;
        let Some(oldest) = segments.first() else {
            return Ok(None);
        };
        let Some(segment) = segments.iter().rev().find(|s| s.first_lsn <= self.next_lsn) else {
            return Err(FollowError::Missing {
                next_lsn: self.next_lsn,
                oldest: oldest.first_lsn,
            });
        };
        self.open(storage, segment.clone()).map(Some)
    }

    fn list<E>(&self, storage: &dyn Storage) -> Result<Vec<SegmentFile>, FollowError<E>> {
        let names = storage.list(&self.dir).map_err(|source| FollowError::Io {
            path: self.dir.clone(),
            source,
        })?;
        Ok(segment::from_listing(&self.dir, &names))
    }

    /// Reads a segment's header: the position of its first batch.
    fn open<E>(
        &self,
        storage: &dyn Storage,
        segment: SegmentFile,
    ) -> Result<Position, FollowError<E>> {
        let mut bytes = Vec::with_capacity(SEGMENT_HEADER_BYTES);
        read_at(storage, &segment.path, 0, SEGMENT_HEADER_BYTES, &mut bytes)?;
        let header = &bytes[..];
        let (first_lsn, salt) = segment::decode_salted_header(header, self.format_version)
            .map_err(|error| damage(&segment.path, 0, error.to_string()))?;
        if first_lsn != segment.first_lsn {
            let detail = format!(
                "the header says LSN {first_lsn}, the name {}",
                segment.first_lsn
            );
            return Err(damage(&segment.path, 0, detail));
        }
        Ok(Position {
            salt,
            offset: SEGMENT_HEADER_BYTES as u64,
            next_lsn: segment.first_lsn,
            segment,
        })
    }

    /// Reads the batches written in `position`'s segment since the last poll, moving `position`
    /// past each whole batch handed out (also when a later one fails), and says what comes next.
    /// The segment is read [`FIRST_READ_BYTES`] first, then in reads doubling up to
    /// [`READ_CHUNK_BYTES`]; a batch cut by the end of a read is read again from its start (with
    /// a larger read if it alone is larger).
    fn advance<E>(
        &mut self,
        storage: &dyn Storage,
        position: &mut Position,
        limit: Limit,
        visit: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<Step, FollowError<E>> {
        let mut bytes = std::mem::take(&mut self.buffer);
        let mut chunk = self.chunk_bytes.min(FIRST_READ_BYTES);
        let mut records = 0;
        let read = loop {
            let read = match read_at(
                storage,
                &position.segment.path,
                position.offset,
                chunk,
                &mut bytes,
            ) {
                // Removed since the last poll: snapshots and retention holds let a segment go
                // only once its successor starts at or before every reader's next LSN, so what
                // it held was all handed out. `next_segment` checks that the next one starts
                // where this one stopped (a segment removed too early is damage, not a skip).
                Err(FollowError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(Read::Ended)
                }
                read => read.and_then(|()| {
                    let cut = bytes.len() == chunk;
                    self.read_batches(&bytes, cut, position, limit, &mut records, visit)
                }),
            };
            match read {
                Ok(Read::Cut { at_start }) => {
                    chunk = if at_start {
                        chunk.saturating_mul(2)
                    } else {
                        chunk.saturating_mul(2).min(self.chunk_bytes.max(chunk))
                    };
                }
                other => break other,
            }
        };
        self.buffer = bytes;
        let stopped = match read? {
            Read::Stopped => true,
            Read::Ended | Read::Cut { .. } => false,
        };
        let next = if stopped || position.next_lsn > limit.until_lsn {
            Next::Stop
        } else {
            // The segment is read to its end, yet durable records remain: they are in the next.
            match self.next_segment(storage, position)? {
                Some(next) => Next::Segment(next),
                None => Next::Stop,
            }
        };
        Ok(Step { records, next })
    }

    /// Hands out the whole batches of `bytes` (read at `position`), moving `position` past each.
    /// `cut` says the read may have ended before the file did.
    fn read_batches<E>(
        &mut self,
        bytes: &[u8],
        cut: bool,
        position: &mut Position,
        limit: Limit,
        records: &mut u64,
        visit: &mut impl FnMut(Frame<'_>) -> Result<(), E>,
    ) -> Result<Read, FollowError<E>> {
        let mut at = 0;
        let mut frames = Vec::new();
        while at < bytes.len() {
            if *records >= limit.records {
                return Ok(Read::Stopped);
            }
            let offset = position.offset;
            let checked = batch::check(
                &bytes[at..],
                self.max_record_bytes,
                position.salt,
                &mut frames,
            );
            let header = match checked {
                Ok(header) => header,
                // Zeros where a batch would begin: the space the writer zeroed ahead of itself
                // (a batch always begins with its non-zero magic), which ends what is written.
                Err(_) if bytes[at..bytes.len().min(at + 4)].iter().all(|&b| b == 0) => {
                    return Ok(Read::Ended);
                }
                // The read ended inside this batch: read again from it.
                Err(_) if cut => return Ok(Read::Cut { at_start: at == 0 }),
                // Durable records must read: anything else is a batch still being written.
                Err(error) if position.next_lsn <= limit.until_lsn => {
                    return Err(damage_at(position, offset, error.to_string()));
                }
                Err(_) => return Ok(Read::Stopped),
            };
            if header.first_lsn != position.next_lsn {
                let detail = format!(
                    "batch of LSN {}, expected {}",
                    header.first_lsn, position.next_lsn
                );
                return Err(damage_at(position, offset, detail));
            }
            let last_lsn = header.first_lsn + u64::from(header.records) - 1;
            if last_lsn > limit.until_lsn {
                // Not durable as a whole yet.
                return Ok(Read::Stopped);
            }
            for (index, &(_, frame)) in frames.iter().enumerate() {
                if frame.lsn != header.first_lsn + index as u64 {
                    let detail = format!(
                        "record LSN {} in a batch from LSN {}",
                        frame.lsn, header.first_lsn
                    );
                    return Err(damage_at(position, offset, detail));
                }
                if frame.lsn >= self.next_lsn {
                    visit(frame).map_err(FollowError::Visit)?;
                    *records += 1;
                }
            }
            at += header.batch_len();
            position.offset += header.batch_len() as u64;
            position.next_lsn = last_lsn + 1;
            self.next_lsn = self.next_lsn.max(position.next_lsn);
        }
        if cut {
            Ok(Read::Cut { at_start: false })
        } else {
            Ok(Read::Ended)
        }
    }

    /// The segment after `position`'s, which must start where it ended.
    fn next_segment<E>(
        &self,
        storage: &dyn Storage,
        position: &Position,
    ) -> Result<Option<Position>, FollowError<E>> {
        let segments = self.list(storage)?;
        let next = segments
            .iter()
            .find(|segment| segment.first_lsn > position.segment.first_lsn);
        match next {
            Some(next) if next.first_lsn == position.next_lsn => {
                self.open(storage, next.clone()).map(Some)
            }
            Some(next) => Err(FollowError::Damage {
                path: next.path.clone(),
                offset: 0,
                detail: format!(
                    "starts at LSN {}, the segment before it ends before LSN {}",
                    next.first_lsn, position.next_lsn
                ),
            }),
            // The watermark is past what this segment holds and no segment follows: the writer
            // has not rotated yet as far as this listing shows; wait for it.
            None => Ok(None),
        }
    }
}

/// How far a poll may go.
#[derive(Debug, Clone, Copy)]
struct Limit {
    /// The last durable LSN.
    until_lsn: u64,
    /// Records still to hand out (checked between batches).
    records: u64,
}

/// What reading a segment found: records handed out, and what comes next.
struct Step {
    records: u64,
    next: Next,
}

/// How a read of a segment ended.
enum Read {
    /// At the end of what is written: the end of the file, or the zeroed space after it.
    Ended,
    /// At the end of the read, which may not be the end of the file: read on.
    Cut {
        /// Not one batch fitted: read more at a time.
        at_start: bool,
    },
    /// At the limit, at a batch not yet durable, or at one still being written.
    Stopped,
}

enum Next {
    /// The poll is over: caught up, at the limit, or waiting for the writer.
    Stop,
    /// The segment is finished: go on in this one.
    Segment(Position),
}

fn read_at<E>(
    storage: &dyn Storage,
    path: &Path,
    offset: u64,
    max_bytes: usize,
    into: &mut Vec<u8>,
) -> Result<(), FollowError<E>> {
    storage
        .read_at(path, offset, max_bytes, into)
        .map_err(|source| FollowError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn damage<E>(path: &Path, offset: u64, detail: String) -> FollowError<E> {
    FollowError::Damage {
        path: path.to_path_buf(),
        offset,
        detail,
    }
}

fn damage_at<E>(position: &Position, offset: u64, detail: String) -> FollowError<E> {
    damage(&position.segment.path, offset, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::memory::MemStorage;
    use crate::wal::Storage;

    const VERSION: u32 = 9;
    const SALT: u32 = 5;

    fn dir() -> &'static Path {
        Path::new("/wal")
    }

    /// Starts a segment at `first` holding one batch per given LSN range.
    fn segment(storage: &MemStorage, first: u64) {
        let mut file = storage
            .create(&dir().join(segment::file_name(first)))
            .unwrap();
        file.write_all(&segment::encode_salted_header(first, VERSION, SALT))
            .unwrap();
    }

    /// Appends one batch of records `first..=last` to the segment starting at `segment_first`.
    fn batch(storage: &MemStorage, segment_first: u64, first: u64, last: u64) {
        let payloads: Vec<Vec<u8>> = (first..=last)
            .map(|lsn| format!("r{lsn}").into_bytes())
            .collect();
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        storage
            .append_durably(
                &dir().join(segment::file_name(segment_first)),
                &batch::encode(first, &payloads, SALT),
            )
            .unwrap();
    }

    fn storage() -> MemStorage {
        let storage = MemStorage::new();
        storage.create_dir_all(dir()).unwrap();
        storage
    }

    fn poll(follower: &mut Follower, storage: &MemStorage, until: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        follower
            .poll::<()>(storage, until, u64::MAX, |frame| {
                assert_eq!(frame.payload, format!("r{}", frame.lsn).as_bytes());
                seen.push(frame.lsn);
                Ok(())
            })
            .unwrap();
        seen
    }

    #[test]
    fn reads_in_chunks_smaller_than_a_batch_or_cutting_batches_and_hands_out_the_same() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 40);
        for first in 41..60 {
            batch(&storage, 1, first, first);
        }
        segment(&storage, 60);
        batch(&storage, 60, 60, 99);
        let all: Vec<u64> = (1..=99).collect();
        for chunk in [1, 7, 64, 100, 1 << 20] {
            let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
            follower.chunk_bytes = chunk;
            assert_eq!(
                poll(&mut follower, &storage, 99),
                all,
                "chunk of {chunk} bytes"
            );
            // And stepwise, a few records at a time, from the middle of a batch on.
            let mut follower = Follower::new(dir(), 20, VERSION, 1 << 20);
            follower.chunk_bytes = chunk;
            let mut seen = Vec::new();
            while follower.next_lsn() <= 99 {
                follower
                    .poll::<()>(&storage, 99, 3, |frame| {
                        seen.push(frame.lsn);
                        Ok(())
                    })
                    .unwrap();
            }
            assert_eq!(seen, all[19..], "chunk of {chunk} bytes, stepwise");
        }
    }

    #[test]
    fn hands_out_each_durable_record_once_as_the_log_grows_and_rotates() {
        let storage = storage();
        let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
        assert!(poll(&mut follower, &storage, 10).is_empty(), "an empty log");
        segment(&storage, 1);
        batch(&storage, 1, 1, 3);
        batch(&storage, 1, 4, 4);
        assert_eq!(poll(&mut follower, &storage, 4), [1, 2, 3, 4]);
        assert!(poll(&mut follower, &storage, 4).is_empty(), "nothing new");
        // Written but not yet durable: left for a later poll.
        batch(&storage, 1, 5, 6);
        assert!(poll(&mut follower, &storage, 4).is_empty());
        assert_eq!(poll(&mut follower, &storage, 6), [5, 6]);
        // The writer rotates: the rest is in the next segment.
        segment(&storage, 7);
        batch(&storage, 7, 7, 8);
        segment(&storage, 9);
        batch(&storage, 9, 9, 9);
        assert_eq!(poll(&mut follower, &storage, 9), [7, 8, 9]);
        assert_eq!(follower.next_lsn(), 10);
    }

    #[test]
    fn starts_in_the_middle_of_a_segment_and_waits_for_an_unfinished_batch() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 3);
        batch(&storage, 1, 4, 6);
        let mut follower = Follower::new(dir(), 5, VERSION, 1 << 20);
        assert_eq!(poll(&mut follower, &storage, 6), [5, 6]);
        // Half a batch: the writer is still writing it (its LSNs are beyond the watermark).
        let half = batch::encode(7, &[b"r7"], SALT);
        storage
            .append_durably(&dir().join(segment::file_name(1)), &half[..half.len() / 2])
            .unwrap();
        assert!(poll(&mut follower, &storage, 6).is_empty());
        storage
            .append_durably(&dir().join(segment::file_name(1)), &half[half.len() / 2..])
            .unwrap();
        assert_eq!(poll(&mut follower, &storage, 7), [7]);
    }

    #[test]
    fn damage_where_the_watermark_says_records_are_durable_is_an_error_and_keeps_the_place() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 2);
        storage
            .append_durably(&dir().join(segment::file_name(1)), &[0x42; 40])
            .unwrap();
        let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
        let error = follower
            .poll::<()>(&storage, 3, u64::MAX, |_| Ok(()))
            .unwrap_err();
        assert!(matches!(error, FollowError::Damage { .. }), "{error:?}");
        // What came before the damage was handed out; the next poll starts at the damage again.
        assert_eq!(follower.next_lsn(), 3);
        let again = follower
            .poll::<()>(&storage, 3, u64::MAX, |_| Ok(()))
            .unwrap_err();
        assert!(matches!(again, FollowError::Damage { .. }), "{again:?}");
    }

    #[test]
    fn a_segment_removed_after_it_was_read_to_its_end_is_left_for_the_next() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 4);
        let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
        assert_eq!(poll(&mut follower, &storage, 4), [1, 2, 3, 4]);
        // The writer rotates, and the old segment goes once every reader is past it.
        segment(&storage, 5);
        batch(&storage, 5, 5, 6);
        storage.remove(&dir().join(segment::file_name(1))).unwrap();
        assert_eq!(poll(&mut follower, &storage, 6), [5, 6]);
        // Removed before its records were handed out: damage, not a skip.
        batch(&storage, 5, 7, 7);
        batch(&storage, 5, 8, 8);
        assert_eq!(poll(&mut follower, &storage, 7), [7]);
        segment(&storage, 9);
        batch(&storage, 9, 9, 9);
        storage.remove(&dir().join(segment::file_name(5))).unwrap();
        let error = follower
            .poll::<()>(&storage, 9, u64::MAX, |_| Ok(()))
            .unwrap_err();
        assert!(matches!(error, FollowError::Damage { .. }), "{error:?}");
        assert_eq!(follower.next_lsn(), 8);
    }

    #[test]
    fn a_gap_between_segments_and_a_removed_start_are_errors() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 2);
        segment(&storage, 5);
        batch(&storage, 5, 5, 5);
        let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
        let error = follower
            .poll::<()>(&storage, 5, u64::MAX, |_| Ok(()))
            .unwrap_err();
        assert!(matches!(error, FollowError::Damage { .. }), "{error:?}");
        assert_eq!(follower.next_lsn(), 3);
        storage.remove(&dir().join(segment::file_name(1))).unwrap();
        let mut late = Follower::new(dir(), 2, VERSION, 1 << 20);
        let error = late
            .poll::<()>(&storage, 5, u64::MAX, |_| Ok(()))
            .unwrap_err();
        assert!(
            matches!(
                error,
                FollowError::Missing {
                    next_lsn: 2,
                    oldest: 5
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_failing_visitor_gets_the_unfinished_batch_again() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 2);
        batch(&storage, 1, 3, 4);
        let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
        let error = follower
            .poll(&storage, 4, u64::MAX, |frame| {
                if frame.lsn == 4 {
                    Err("full")
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(matches!(error, FollowError::Visit("full")), "{error:?}");
        assert_eq!(follower.next_lsn(), 3);
        assert_eq!(poll(&mut follower, &storage, 4), [3, 4]);
    }

    #[test]
    fn follows_a_running_writer_through_rotations_without_gaps_or_repeats() {
        use crate::wal::{FsyncMode, Wal, WalOptions};
        use std::sync::Arc;
        let storage = Arc::new(storage());
        let options = WalOptions {
            dir: dir().to_path_buf(),
            fsync: FsyncMode::Always,
            segment_bytes: 4096,
            max_record_bytes: 1024,
            queue_bytes: 1 << 20,
            zero_ahead_bytes: 1024,
            format_version: VERSION,
        };
        let wal = Arc::new(Wal::start(storage.clone(), options, 1).unwrap());
        const RECORDS: u64 = 5_000;
        let producer = {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 1..=RECORDS {
                    let lsn = wal.append(format!("record {i}").as_bytes()).unwrap();
                    assert_eq!(lsn, i);
                    if i % 64 == 0 {
                        wal.flush().unwrap();
                    }
                }
                wal.flush().unwrap();
            })
        };
        let mut follower = Follower::new(dir(), 1, VERSION, 1024);
        let mut seen = 0u64;
        while seen < RECORDS {
            let until = wal.durable_lsn();
            follower
                .poll::<()>(&*storage, until, u64::MAX, |frame| {
                    seen += 1;
                    assert_eq!(frame.lsn, seen, "in order, each once");
                    assert!(frame.lsn <= until, "only durable records");
                    assert_eq!(frame.payload, format!("record {seen}").as_bytes());
                    Ok(())
                })
                .unwrap();
        }
        producer.join().unwrap();
        assert_eq!(follower.next_lsn(), RECORDS + 1);
        assert!(wal.stats().rotations > 3, "the log rotated while followed");
    }

    #[test]
    fn a_batch_past_the_watermark_waits_and_max_records_stops_at_a_batch_boundary() {
        let storage = storage();
        segment(&storage, 1);
        batch(&storage, 1, 1, 2);
        batch(&storage, 1, 3, 6);
        segment(&storage, 7);
        batch(&storage, 7, 7, 7);
        let mut follower = Follower::new(dir(), 1, VERSION, 1 << 20);
        // The watermark inside the second batch: it waits, although a later segment exists.
        assert_eq!(poll(&mut follower, &storage, 4), [1, 2]);
        let mut seen = Vec::new();
        let handed = follower
            .poll::<()>(&storage, 7, 1, |frame| {
                seen.push(frame.lsn);
                Ok(())
            })
            .unwrap();
        assert_eq!((handed, seen), (4, vec![3, 4, 5, 6]), "one whole batch");
        assert_eq!(poll(&mut follower, &storage, 7), [7]);
    }
}
