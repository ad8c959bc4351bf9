//! Offline tools over a data directory: `creditd wal verify` checks every record and snapshot and
//! replays the whole state in memory; `creditd wal dump` prints one line per event. Neither changes
//! any file nor takes the directory's lock.

use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::codec;
use crate::engine::event::Event;
use crate::engine::{Engine, EngineOptions, SystemClock};
use crate::time::format_rfc3339_ms;
use crate::wal::reader;
use crate::wal::record::Frame;
use crate::wal::segment::{self, SegmentFile};
use crate::wal::snapshot::{self as snapshot_file, SnapshotReader};
use crate::wal::{FsStorage, SharedStorage};

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Segments read.
    pub segments: u64,
    /// Records read and decoded.
    pub records: u64,
    /// Snapshots read.
    pub snapshots: u64,
    /// Problems that stop the engine from starting (damage, undecodable records, gaps).
    pub damage: Vec<String>,
    /// Things recovery repairs on its own (a torn tail, an unfinished snapshot).
    pub notes: Vec<String>,
}

/// Checks every segment, every snapshot and a full in-memory recovery of `data_dir`, writing one
/// line per file and a summary to `out`.
pub fn verify(data_dir: &Path, out: &mut dyn Write) -> std::io::Result<Verification> {
    let options = EngineOptions {
        data_dir: data_dir.to_path_buf(),
        ..EngineOptions::default()
    };
    let storage: SharedStorage = Arc::new(FsStorage);
    let mut found = Verification::default();
    verify_segments(&storage, &options, out, &mut found)?;
    verify_snapshots(&storage, &options, out, &mut found)?;
    let now_ms = crate::engine::Clock::now_ms(&SystemClock);
    match Engine::verify(&options, Arc::clone(&storage), now_ms) {
        Ok(report) => {
            let figures = report.figures;
            writeln!(
                out,
                "replay: {} + {} records -> next LSN {}; {} tenants, {} users, {} wallets, {} open reservations, {} idempotency keys; invariants hold",
                report.snapshot.as_ref().map_or("no snapshot".into(), |p| format!("snapshot {}", p.display())),
                report.records_replayed,
                report.next_lsn,
                figures.tenants,
                figures.users,
                figures.wallets,
                figures.reservations_open,
                figures.idempotency_keys,
            )?;
        }
        Err(error) => {
            writeln!(out, "replay: FAILED: {error}")?;
            found.damage.push(error.to_string());
        }
    }
    writeln!(
        out,
        "summary: {} segments, {} records, {} snapshots, {} problems, {} notes",
        found.segments,
        found.records,
        found.snapshots,
        found.damage.len(),
        found.notes.len()
    )?;
    Ok(found)
}

/// Reports every segment, one line each, and every problem: the gaps between segments, damage,
/// records that do not decode, an unfinished write anywhere but at the end of the last segment.
///
/// Each segment is read on its own ([`reader::EachSegment`]), not the log in one read: the
/// reader stops at the first gap or damage, and verify goes on to report the segments after it.
fn verify_segments(
    storage: &SharedStorage,
    options: &EngineOptions,
    out: &mut dyn Write,
    found: &mut Verification,
) -> std::io::Result<()> {
    let dir = options.wal_dir();
    let segments = segment::from_listing(&dir, &storage.list(&dir)?);
    // The configured limit is for new records: ones written under a higher one still read.
    let limit = crate::wal::record::MAX_RECORD_BYTES_LIMIT;
    let mut each = reader::EachSegment::new(&**storage, &segments, codec::FORMAT_VERSION, limit);
    loop {
        let mut undecodable = None;
        let visit = |file: &SegmentFile, offset: u64, frame: Frame<'_>| -> Result<(), Infallible> {
            if undecodable.is_none() && codec::decode::<Event<'_>>(frame.payload).is_err() {
                undecodable = Some(format!(
                    "{}: record LSN {} at offset {offset} does not decode",
                    file.path.display(),
                    frame.lsn
                ));
            }
            Ok(())
        };
        let Some(segment) = each.next_segment(visit) else {
            return Ok(());
        };
        verify_segment(segment, undecodable, out, found)?;
    }
}

/// Writes one segment's line (or its damage) and any record that does not decode.
fn verify_segment(
    segment: reader::SegmentRead<'_, Infallible>,
    undecodable: Option<String>,
    out: &mut dyn Write,
    found: &mut Verification,
) -> std::io::Result<()> {
    let file = segment.file;
    let name = file.path.display();
    if let Some(expected) = segment.gap_after {
        let problem = format!(
            "{name}: starts at LSN {}, the previous segment ends before {expected}",
            file.first_lsn
        );
        writeln!(out, "segment {problem}")?;
        found.damage.push(problem);
    }
    found.segments += 1;
    match segment.read {
        Ok(read) => {
            found.records += read.records;
            writeln!(out, "{}", segment_line(file, &read, segment.last, found))?;
        }
        Err(reader::ReadError::Io { source, .. }) => return Err(source),
        Err(reader::ReadError::Visit(never)) => match never {},
        Err(error) => {
            let problem = match error {
                reader::ReadError::Damage { detail, .. } => format!("{name}: {detail}"),
                // Not from one segment read from its first LSN; said as the reader says it.
                error => error.to_string(),
            };
            writeln!(out, "segment {problem}")?;
            found.damage.push(problem);
        }
    }
    if let Some(problem) = undecodable {
        writeln!(out, "segment {problem}")?;
        found.damage.push(problem);
    }
    Ok(())
}

/// The line of a segment read to its end: its LSNs, records and bytes, and an unfinished write at
/// its end (recovery cuts it in the last segment; anywhere else it is damage).
fn segment_line(
    file: &SegmentFile,
    read: &reader::Read,
    last: bool,
    found: &mut Verification,
) -> String {
    let name = file.path.display();
    let range = if read.records == 0 {
        "no records".to_owned()
    } else {
        format!("LSN {}..={}", file.first_lsn, read.next_lsn - 1)
    };
    let valid_bytes = read.last.as_ref().map_or(0, |(_, valid_len)| *valid_len);
    let bytes = read.unfinished.as_ref().map_or(valid_bytes, |unfinished| {
        unfinished.offset + unfinished.bytes
    });
    let mut line = format!(
        "segment {name}: {range}, {} records, {bytes} bytes",
        read.records
    );
    if let Some(unfinished) = &read.unfinished {
        let (offset, reason) = (unfinished.offset, &unfinished.reason);
        let note =
            format!("{name}: unfinished write at offset {offset} ({reason}); recovery cuts it");
        if last {
            line.push_str(&format!(
                ", torn tail at offset {offset} (recovery cuts it)"
            ));
            found.notes.push(note);
        } else {
            line.push_str(&format!(
                ", DAMAGED at offset {offset}: bad batch in a segment that is not the last"
            ));
            found.damage.push(note);
        }
    }
    line
}

fn verify_snapshots(
    storage: &SharedStorage,
    options: &EngineOptions,
    out: &mut dyn Write,
    found: &mut Verification,
) -> std::io::Result<()> {
    let dir = options.snapshot_dir();
    let names = storage.list(&dir)?;
    for name in names
        .iter()
        .filter(|name| snapshot_file::is_temporary(name))
    {
        let note = format!(
            "{}: unfinished snapshot; the next start removes it",
            dir.join(name).display()
        );
        writeln!(out, "snapshot {note}")?;
        found.notes.push(note);
    }
    for file in snapshot_file::from_listing(&dir, &names) {
        found.snapshots += 1;
        let name = file.path.display();
        match read_snapshot(storage, &file.path) {
            Ok((start_lsn, chunks, bytes)) => {
                writeln!(
                    out,
                    "snapshot {name}: start LSN {start_lsn}, {chunks} chunks, {bytes} bytes"
                )?;
            }
            Err(error) => {
                let problem = format!("{name}: {error}");
                writeln!(
                    out,
                    "snapshot {problem} (recovery falls back to an older snapshot)"
                )?;
                found.damage.push(problem);
            }
        }
    }
    Ok(())
}

fn read_snapshot(storage: &SharedStorage, path: &Path) -> Result<(u64, u64, u64), String> {
    let max_chunk = crate::wal::record::MAX_RECORD_BYTES_LIMIT;
    let mut reader = SnapshotReader::open(storage, path, codec::FORMAT_VERSION, max_chunk)
        .map_err(|e| e.to_string())?;
    let mut chunks = Vec::new();
    let mut buffer = Vec::new();
    while reader.next_chunk(&mut buffer).map_err(|e| e.to_string())? {
        chunks.push(std::mem::take(&mut buffer));
    }
    crate::engine::check_snapshot_chunks(&chunks).map_err(|e| e.to_string())?;
    let bytes = storage.len(path).map_err(|e| e.to_string())?;
    Ok((reader.header().start_lsn, chunks.len() as u64, bytes))
}

/// Prints every record from `from_lsn` on, one line each: LSN, time, and the event. Secrets in
/// events print masked (see `engine::event::Secret`). A damaged log ends the listing with a
/// `#` line that says where and why; an unfinished write at the end gets a `#` line too.
pub fn dump(data_dir: &Path, from_lsn: u64, out: &mut dyn Write) -> std::io::Result<u64> {
    let options = EngineOptions {
        data_dir: data_dir.to_path_buf(),
        ..EngineOptions::default()
    };
    let storage: SharedStorage = Arc::new(FsStorage);
    let dir = options.wal_dir();
    let segments = segment::from_listing(&dir, &storage.list(&dir)?);
    // Where the listing starts: the segment holding `from_lsn`, or the oldest if it is later.
    let from_lsn = from_lsn.max(segments.first().map_or(1, |file| file.first_lsn));
    let range = reader::Range {
        from_lsn,
        until_lsn: u64::MAX,
        format_version: codec::FORMAT_VERSION,
        // The configured limit is for new records: ones written under a higher one still read.
        max_record_bytes: crate::wal::record::MAX_RECORD_BYTES_LIMIT,
    };
    let mut printed = 0u64;
    let visit = |_: &SegmentFile, _: u64, frame: Frame<'_>| -> std::io::Result<()> {
        let line = match codec::decode::<Event<'_>>(frame.payload) {
            Ok(event) => format!(
                "{} {} {event:?}",
                frame.lsn,
                format_rfc3339_ms(event.meta().time_ms)
            ),
            Err(error) => format!("{} UNDECODABLE {error}", frame.lsn),
        };
        printed += 1;
        writeln!(out, "{line}")
    };
    match reader::read(&*storage, &segments, range, visit) {
        Ok(read) => {
            if let Some(unfinished) = read.unfinished {
                writeln!(
                    out,
                    "# {}: unfinished write at offset {}",
                    unfinished.path.display(),
                    unfinished.offset
                )?;
            }
        }
        Err(reader::ReadError::Visit(error)) => return Err(error),
        Err(error) => writeln!(out, "# {error}")?,
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::batch;
    use crate::wal::memory::MemStorage;
    use crate::wal::storage::Storage;

    /// A log whose segments start at LSNs 1, 4, 7 and 12 (a gap: 10 and 11 are missing), of one
    /// record a batch: the second segment is damaged, the third ends in an unfinished write, and so
    /// does the last. No payload decodes.
    fn damaged_log() -> (SharedStorage, EngineOptions) {
        let options = EngineOptions {
            data_dir: "/data".into(),
            ..EngineOptions::default()
        };
        let memory = Arc::new(MemStorage::new());
        let dir = options.wal_dir();
        memory.create_dir_all(&dir).unwrap();
        for (first, count) in [(1u64, 3u64), (4, 3), (7, 3), (12, 1)] {
            let mut bytes = segment::encode_salted_header(first, codec::FORMAT_VERSION, 5).to_vec();
            for lsn in first..first + count {
                let payload = format!("not an event {lsn}");
                bytes.extend_from_slice(&batch::encode(lsn, &[payload.as_bytes()], 5));
            }
            let path = dir.join(segment::file_name(first));
            let mut file = memory.create(&path).unwrap();
            file.write_all(&bytes).unwrap();
            if first == 4 {
                let offset = bytes.len() / 3;
                memory.corrupt(&path, offset, &[bytes[offset] ^ 1]).unwrap();
            }
            if first >= 7 {
                memory.append_durably(&path, &[0x42; 20]).unwrap();
            }
        }
        (memory, options)
    }

    #[test]
    fn every_segment_is_reported_past_the_first_damage() {
        let (storage, options) = damaged_log();
        let mut out = Vec::new();
        let mut found = Verification::default();
        verify_segments(&storage, &options, &mut out, &mut found).unwrap();
        let out = String::from_utf8(out).unwrap();
        let segment = |first: u64| format!("segment /data/wal/{}", segment::file_name(first));
        let expected = [
            format!("{}: LSN 1..=3, 3 records, 218 bytes", segment(1)),
            format!("{}: record LSN 1 at offset 56 does not decode", segment(1)),
            format!(
                "{}: bad batch at offset 32 (record at offset 24 of the batch: record checksum \
                 mismatch: stored 0x33688a17, computed 0x6f7d64a3) followed by a valid batch at \
                 offset 94",
                segment(4)
            ),
            format!(
                "{}: LSN 7..=9, 3 records, 238 bytes, DAMAGED at offset 218: bad batch in a \
                 segment that is not the last",
                segment(7)
            ),
            format!("{}: record LSN 7 at offset 56 does not decode", segment(7)),
            format!(
                "{}: starts at LSN 12, the previous segment ends before 10",
                segment(12)
            ),
            format!(
                "{}: LSN 12..=12, 1 records, 115 bytes, torn tail at offset 95 (recovery cuts it)",
                segment(12)
            ),
            format!(
                "{}: record LSN 12 at offset 56 does not decode",
                segment(12)
            ),
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
        assert_eq!((found.segments, found.records), (4, 7));
        assert_eq!(found.damage.len(), 6, "{:?}", found.damage);
        assert_eq!(
            found.notes,
            vec![
                "/data/wal/00000000000000000012.log: unfinished write at offset 95 (batch header \
                 truncated: 20 of 24 bytes); recovery cuts it"
            ]
        );
    }
}
