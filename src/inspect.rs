//! Offline tools over a data directory: `creditd wal verify` checks every record and snapshot and
//! replays the whole state in memory; `creditd wal dump` prints one line per event. Neither changes
//! any file nor takes the directory's lock.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::codec;
use crate::engine::event::Event;
use crate::engine::{Engine, EngineOptions, SystemClock};
use crate::time::format_rfc3339_ms;
use crate::wal::reader;
use crate::wal::record::Frame;
use crate::wal::segment::{self, ScanEnd};
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

fn verify_segments(
    storage: &SharedStorage,
    options: &EngineOptions,
    out: &mut dyn Write,
    found: &mut Verification,
) -> std::io::Result<()> {
    let dir = options.wal_dir();
    let segments = segment::from_listing(&dir, &storage.list(&dir)?);
    let mut expected: Option<u64> = None;
    for (index, file) in segments.iter().enumerate() {
        let name = file.path.display();
        if let Some(expected) = expected.filter(|&lsn| lsn != file.first_lsn) {
            let problem = format!(
                "{name}: starts at LSN {}, the previous segment ends before {expected}",
                file.first_lsn
            );
            writeln!(out, "segment {problem}")?;
            found.damage.push(problem);
        }
        let bytes = storage.read_all(&file.path)?;
        let mut undecodable = None;
        let visit = |offset: u64, frame: Frame<'_>| -> Result<(), ()> {
            if undecodable.is_none() && codec::decode::<Event<'_>>(frame.payload).is_err() {
                undecodable = Some(format!(
                    "{name}: record LSN {} at offset {offset} does not decode",
                    frame.lsn
                ));
            }
            Ok(())
        };
        let scan = segment::scan(
            &bytes,
            file.first_lsn,
            codec::FORMAT_VERSION,
            // The configured limit is for new records: ones written under a higher one still read.
            crate::wal::record::MAX_RECORD_BYTES_LIMIT,
            visit,
        );
        found.segments += 1;
        match scan {
            Ok(Ok(scan)) => {
                found.records += scan.records;
                let range = if scan.records == 0 {
                    "no records".to_owned()
                } else {
                    format!("LSN {}..={}", file.first_lsn, scan.next_lsn - 1)
                };
                let mut line = format!(
                    "segment {name}: {range}, {} records, {} bytes",
                    scan.records,
                    bytes.len()
                );
                if let ScanEnd::TornTail { offset, reason } = &scan.end {
                    let note = format!(
                        "{name}: unfinished write at offset {offset} ({reason}); recovery cuts it"
                    );
                    if index + 1 == segments.len() {
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
                writeln!(out, "{line}")?;
                expected = Some(scan.next_lsn);
            }
            Ok(Err(damage)) => {
                let problem = format!("{name}: {damage}");
                writeln!(out, "segment {problem}")?;
                found.damage.push(problem);
                expected = None;
            }
            Err(()) => unreachable!("the visitor never fails"),
        }
        if let Some(problem) = undecodable {
            writeln!(out, "segment {problem}")?;
            found.damage.push(problem);
        }
    }
    Ok(())
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
    let visit = |_: &segment::SegmentFile, _: u64, frame: Frame<'_>| -> std::io::Result<()> {
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
