//! The decoding fuzzers: [`record_decode`] feeds arbitrary bytes to the record frame, the segment
//! scan and the event codec; [`snapshot_decode`] to the snapshot reader and the engine's snapshot
//! loader. Each checks that what decodes re-encodes to the same bytes and that what does not is
//! refused with an error, never a panic.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, FORMAT_VERSION};
use crate::engine::event::Event;
use crate::engine::{check_snapshot_chunks, Clock, Engine, EngineOptions, ManualClock};
use crate::wal::batch;
use crate::wal::memory::MemStorage;
use crate::wal::record::{self, FrameError, HEADER_BYTES};
use crate::wal::segment::{self, Damage, Scan, ScanEnd, TailReason, SEGMENT_HEADER_BYTES};
use crate::wal::snapshot::{
    self as snapshot_file, SnapshotHeader, SnapshotReader, SnapshotWriter, SNAPSHOT_HEADER_BYTES,
};
use crate::wal::{SharedStorage, Storage};

use super::T0;

/// The record limit the fuzzers decode with: the engine's default `max_record_bytes`.
pub(super) const RECORD_LIMIT: u32 = 1024 * 1024;
/// The chunk limit snapshot files are read with; it bounds what one frame header can make the
/// reader allocate.
const CHUNK_LIMIT: u32 = 1024 * 1024;
/// Separates chunks when [`snapshot_decode`] reads its input as a list of chunk payloads.
pub const CHUNK_SEPARATOR: &[u8] = b"--chunk--";

pub(super) fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

// ---------------------------------------------------------------------------------------------
// Record decode
// ---------------------------------------------------------------------------------------------

/// Fuzzes the record frame, the segment scan and the event codec with arbitrary bytes: as one
/// record (under three limits), as an event payload, as the records of a segment behind a valid
/// header naming the first record's LSN, and as a whole segment file, header included.
pub fn record_decode(data: &[u8]) {
    for limit in [RECORD_LIMIT, 64, 1] {
        check_frame(data, limit);
    }
    check_event_round_trip(data);
    let first_lsn = data.get(8..16).map_or(1, le_u64);
    let mut segment_bytes = segment::encode_header(first_lsn, FORMAT_VERSION).to_vec();
    segment_bytes.extend_from_slice(data);
    check_scan(&segment_bytes, first_lsn);
    let named_lsn = data.get(16..24).map_or(0, le_u64);
    check_scan(data, named_lsn);
}

/// The frame layout of `wal::record`, written out independently of its decoder.
fn expected_frame(data: &[u8], limit: u32) -> Result<(u64, &[u8]), FrameError> {
    if data.len() < HEADER_BYTES {
        return Err(FrameError::Truncated {
            needed: HEADER_BYTES as u64,
            available: data.len() as u64,
        });
    }
    let len = le_u32(&data[0..4]);
    let stored = le_u32(&data[4..8]);
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    let limit = limit.min(record::MAX_RECORD_BYTES_LIMIT);
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    let end = HEADER_BYTES + len as usize;
    if data.len() < end {
        return Err(FrameError::Truncated {
            needed: end as u64,
            available: data.len() as u64,
        });
    }
    // The checksum covers the payload, then the LSN (so the payload's part can be computed before
    // the LSN is known).
    let computed = crc32c::crc32c_append(crc32c::crc32c(&data[HEADER_BYTES..end]), &data[8..16]);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok((le_u64(&data[8..16]), &data[HEADER_BYTES..end]))
}

fn check_frame(data: &[u8], limit: u32) {
    let decoded = record::decode(data, limit).map(|frame| (frame.lsn, frame.payload));
    assert_eq!(
        decoded,
        expected_frame(data, limit),
        "record::decode disagrees with the documented frame layout (limit {limit})"
    );
    if let Ok((lsn, payload)) = decoded {
        let mut again = Vec::new();
        record::encode_into(&mut again, lsn, payload);
        assert_eq!(
            again.as_slice(),
            &data[..again.len()],
            "a decoded record re-encodes to different bytes"
        );
        check_event_round_trip(payload);
    }
}

/// An event that decodes must encode back to the same value. bincode accepts integers in wider
/// forms than it writes, so the bytes may come back shorter, never different at the same length
/// or longer; what the encoder writes comes back unchanged.
fn check_event_round_trip(bytes: &[u8]) {
    let Ok(event) = codec::decode::<Event<'_>>(bytes) else {
        return;
    };
    let mut encoded = Vec::new();
    codec::encode_into(&event, &mut encoded).expect("a decoded event encodes");
    assert!(
        encoded == bytes || encoded.len() < bytes.len(),
        "an event re-encodes to other bytes of the same or greater length: {event:?}"
    );
    let again: Event<'_> = codec::decode(&encoded).expect("a re-encoded event decodes");
    assert_eq!(again, event, "an event changed through encode and decode");
    let mut twice = Vec::new();
    codec::encode_into(&again, &mut twice).expect("a decoded event encodes");
    assert_eq!(twice, encoded, "the event encoding is not a fixed point");
    let _ = (
        event.tenant(),
        event.meta(),
        event.wallet(),
        event.outcome(1),
    );
}

fn scan_segment(
    bytes: &[u8],
    first_lsn: u64,
    frames: &mut Vec<(u64, usize)>,
) -> Result<Scan, Damage> {
    let scanned = segment::scan::<Infallible>(
        bytes,
        first_lsn,
        FORMAT_VERSION,
        RECORD_LIMIT,
        |offset, frame| {
            let offset = usize::try_from(offset).expect("offsets fit memory");
            assert!(
                record::decode(&bytes[offset..], RECORD_LIMIT).map(|f| f.lsn) == Ok(frame.lsn),
                "the scan handed out a record at an offset that does not hold it"
            );
            frames.push((frame.lsn, offset));
            Ok(())
        },
    );
    match scanned {
        Ok(result) => result,
        Err(never) => match never {},
    }
}

/// The end of the batch whose header is at `offset`, if its header reads (test segments use
/// salt 0).
fn claimed_end(bytes: &[u8], offset: usize) -> Option<usize> {
    batch::decode_header(bytes.get(offset..)?, 0)
        .ok()
        .map(|header| offset.saturating_add(header.batch_len()))
}

fn check_scan(bytes: &[u8], first_lsn: u64) {
    let mut frames = Vec::new();
    let result = scan_segment(bytes, first_lsn, &mut frames);
    for (index, (lsn, _)) in frames.iter().enumerate() {
        assert_eq!(
            Some(*lsn),
            first_lsn.checked_add(index as u64),
            "the scan handed out a record out of sequence"
        );
    }
    match result {
        Ok(scan) => check_scan_result(bytes, first_lsn, &frames, &scan),
        Err(Damage::Header(_)) => assert!(frames.is_empty(), "records read behind a bad header"),
        Err(Damage::Corrupt {
            offset, valid_at, ..
        }) => {
            assert!(valid_at > offset && (valid_at as usize) < bytes.len());
            assert!(
                batch::decode_header(&bytes[valid_at as usize..], 0).is_ok(),
                "damage claims a valid batch at {valid_at} that does not read"
            );
        }
        Err(Damage::Written { offset, .. }) => {
            let offset = offset as usize;
            assert!(
                !batch::unwritten(bytes, offset, claimed_end(bytes, offset)),
                "a batch called written shows unwritten bytes"
            );
        }
        Err(Damage::LsnOverflow { offset }) => {
            assert!((offset as usize) < bytes.len());
        }
        Err(Damage::OutOfSequence {
            offset,
            found,
            expected,
        }) => {
            assert!((offset as usize) < bytes.len());
            assert_ne!(found, expected);
            assert_eq!(Some(expected), first_lsn.checked_add(frames.len() as u64));
        }
    }
}

fn check_scan_result(bytes: &[u8], first_lsn: u64, frames: &[(u64, usize)], scan: &Scan) {
    assert_eq!(
        scan.records,
        frames.len() as u64,
        "records counted ≠ records visited"
    );
    assert_eq!(Some(scan.next_lsn), first_lsn.checked_add(scan.records));
    let valid_len = usize::try_from(scan.valid_len).expect("valid_len fits memory");
    assert!(
        valid_len <= bytes.len(),
        "valid_len beyond the end of the segment"
    );
    assert!(
        frames.iter().all(|(_, offset)| *offset < valid_len),
        "a record handed out beyond the valid prefix"
    );
    match &scan.end {
        ScanEnd::Clean => {
            assert_eq!(
                valid_len,
                bytes.len(),
                "a clean end before the end of the bytes"
            );
        }
        ScanEnd::Unwritten { offset } => {
            assert_eq!(
                *offset, scan.valid_len,
                "unwritten space away from valid_len"
            );
            assert!(valid_len < bytes.len(), "unwritten space of no bytes");
            assert!(
                bytes[valid_len..].iter().all(|&byte| byte == 0),
                "unwritten space that holds a non-zero byte"
            );
        }
        ScanEnd::TornTail { offset, reason } => {
            assert_eq!(
                *offset, scan.valid_len,
                "the torn tail starts away from valid_len"
            );
            if matches!(reason, TailReason::Header(_)) {
                assert!(valid_len == 0 && frames.is_empty());
            } else {
                assert!(valid_len < bytes.len());
                assert!(
                    batch::unwritten(bytes, valid_len, claimed_end(bytes, valid_len)),
                    "a torn tail that shows no unwritten bytes"
                );
            }
            // Recovery cuts a torn tail off at `valid_len`: what remains must read clean, alike.
            if valid_len > 0 {
                let mut again = Vec::new();
                let rescan = scan_segment(&bytes[..valid_len], first_lsn, &mut again)
                    .unwrap_or_else(|damage| {
                        panic!("a segment cut at its valid length is damaged: {damage}")
                    });
                assert_eq!(
                    rescan.end,
                    ScanEnd::Clean,
                    "a cut segment still has a torn tail"
                );
                assert_eq!(again, frames, "a cut segment reads other records");
            }
        }
    }
    // A crash leaves a prefix of what was written: cut inside the valid batches, a segment must
    // read as a torn tail or a clean end, never as damage that refuses to start. The exception is
    // a payload that itself holds a batch header valid under the segment's salt; the log writer's
    // salt is random and never leaves the process, so no client can build one (see `record`), but
    // these test segments use salt 0.
    let embedded = payloads_hold_batch_headers(bytes, frames);
    if valid_len > SEGMENT_HEADER_BYTES && !embedded {
        let body = valid_len - SEGMENT_HEADER_BYTES;
        for cut in [
            valid_len - 1,
            SEGMENT_HEADER_BYTES + body / 2,
            SEGMENT_HEADER_BYTES + 1,
        ] {
            let mut ignored = Vec::new();
            if let Err(damage) = scan_segment(&bytes[..cut], first_lsn, &mut ignored) {
                panic!(
                    "a valid segment cut at byte {cut} of {valid_len} reads as damage: {damage}"
                );
            }
        }
    }
}

/// Whether any valid record's payload contains, at some offset, a batch header valid under the
/// segment's salt.
fn payloads_hold_batch_headers(bytes: &[u8], frames: &[(u64, usize)]) -> bool {
    let salt = segment::decode_salted_header(bytes, FORMAT_VERSION).map_or(0, |(_, salt)| salt);
    frames.iter().any(|(_, offset)| {
        let Ok(frame) = record::decode_salted(&bytes[*offset..], RECORD_LIMIT, salt) else {
            return false;
        };
        let payload = frame.payload;
        (0..payload.len()).any(|at| batch::decode_header(&payload[at..], salt).is_ok())
    })
}

// ---------------------------------------------------------------------------------------------
// Snapshot decode
// ---------------------------------------------------------------------------------------------

/// Fuzzes snapshot files and their chunk contents. The bytes are read three ways: as a snapshot
/// file; as one chunk payload; and as chunk payloads separated by [`CHUNK_SEPARATOR`], which lets
/// the fuzzer reach the content checks without forging checksums. Content that passes
/// [`check_snapshot_chunks`] is written into a real snapshot file and loaded by an engine.
pub fn snapshot_decode(data: &[u8]) {
    if let Some(read) = read_snapshot(data) {
        if check_snapshot_chunks(&read.chunks).is_ok() {
            check_engine_loads(data, read.header, false);
        }
    }
    let _ = check_snapshot_chunks(&[data.to_vec()]);
    let chunks = split_chunks(data);
    let readable = chunks
        .iter()
        .all(|chunk| chunk.len() <= CHUNK_LIMIT as usize);
    if chunks.len() > 1 && readable && check_snapshot_chunks(&chunks).is_ok() {
        let header = SnapshotHeader {
            start_lsn: 1,
            created_at_ms: T0,
        };
        let file = write_snapshot(header, &chunks);
        let read = read_snapshot(&file).expect("a snapshot written by SnapshotWriter reads back");
        assert_eq!(read.header, header);
        assert_eq!(
            read.chunks, chunks,
            "a snapshot reads back other chunks than were written"
        );
        check_engine_loads(&file, header, false);
    }
}

/// Splits `data` at every [`CHUNK_SEPARATOR`].
fn split_chunks(data: &[u8]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut rest = data;
    while let Some(at) = rest
        .windows(CHUNK_SEPARATOR.len())
        .position(|window| window == CHUNK_SEPARATOR)
    {
        chunks.push(rest[..at].to_vec());
        rest = &rest[at + CHUNK_SEPARATOR.len()..];
    }
    chunks.push(rest.to_vec());
    chunks
}

pub(super) struct ReadSnapshot {
    pub(super) header: SnapshotHeader,
    pub(super) chunks: Vec<Vec<u8>>,
}

/// Reads `bytes` as a snapshot file. `None` when the reader refuses it; when it accepts it, checks
/// that the file is exactly what the writer makes of the same header and chunks.
pub(super) fn read_snapshot(bytes: &[u8]) -> Option<ReadSnapshot> {
    let storage = MemStorage::new();
    let dir = Path::new("/snapshots");
    let path = dir.join(snapshot_file::file_name(1));
    storage.create_dir_all(dir).expect("memory storage");
    storage
        .create(&path)
        .and_then(|mut file| file.write_all(bytes))
        .expect("memory storage");
    let shared: SharedStorage = Arc::new(storage);
    let mut reader = SnapshotReader::open(&shared, &path, FORMAT_VERSION, CHUNK_LIMIT).ok()?;
    let mut chunks = Vec::new();
    let mut buffer = Vec::new();
    loop {
        match reader.next_chunk(&mut buffer) {
            Ok(true) => {
                chunks.push(buffer.clone());
                assert!(
                    chunks.len() * (HEADER_BYTES + 1) <= bytes.len(),
                    "the reader returned more chunks than the file can hold"
                );
            }
            Ok(false) => break,
            Err(_) => {
                // What was read before the error still must not crash the content checks.
                let _ = check_snapshot_chunks(&chunks);
                return None;
            }
        }
    }
    assert!(
        matches!(reader.next_chunk(&mut buffer), Ok(false)),
        "a finished snapshot reader reads on"
    );
    let frames: usize = chunks.iter().map(|chunk| HEADER_BYTES + chunk.len()).sum();
    assert_eq!(
        SNAPSHOT_HEADER_BYTES + frames + HEADER_BYTES + 16,
        bytes.len(),
        "an accepted snapshot has bytes the reader did not account for"
    );
    let header = reader.header();
    // The reader does not check the header's reserved and padding bytes; the writer zeroes them.
    let mut canonical = bytes.to_vec();
    canonical[12..16].fill(0);
    canonical[36..40].fill(0);
    assert!(
        write_snapshot(header, &chunks) == canonical,
        "an accepted snapshot differs from what the writer makes of its header and chunks"
    );
    Some(ReadSnapshot { header, chunks })
}

/// The bytes `SnapshotWriter` produces for this header and these (non-empty) chunks.
pub(super) fn write_snapshot(header: SnapshotHeader, chunks: &[Vec<u8>]) -> Vec<u8> {
    let storage = MemStorage::new();
    let dir = Path::new("/snapshots");
    storage.create_dir_all(dir).expect("memory storage");
    let shared: SharedStorage = Arc::new(storage.clone());
    let mut writer =
        SnapshotWriter::create(shared, dir, header, FORMAT_VERSION).expect("snapshot writer");
    for chunk in chunks {
        writer.write_chunk(chunk.clone()).expect("snapshot chunk");
    }
    let summary = writer.commit().expect("snapshot commit");
    storage.read_all(&summary.path).expect("memory storage")
}

/// Opens an engine on a data directory holding this snapshot (and an empty log segment where the
/// snapshot says replay starts). Recovery may refuse fuzzed content that breaks an invariant, never
/// a snapshot creditd wrote; once open, the state must pass the live checks and survive its own
/// snapshot and a reopen unchanged.
pub(super) fn check_engine_loads(file: &[u8], header: SnapshotHeader, written_by_creditd: bool) {
    let storage = MemStorage::new();
    let options = EngineOptions {
        data_dir: PathBuf::from("/data"),
        background: false,
        shards: 4,
        ..EngineOptions::default()
    };
    let (snapshot_dir, wal_dir) = (options.snapshot_dir(), options.wal_dir());
    let start = header.start_lsn;
    put_durably(
        &storage,
        &snapshot_dir,
        &snapshot_file::file_name(start),
        file,
    );
    let segment_header = segment::encode_header(start, FORMAT_VERSION);
    put_durably(
        &storage,
        &wal_dir,
        &segment::file_name(start),
        &segment_header,
    );
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(header.created_at_ms));
    let engine = match Engine::open(
        options.clone(),
        Arc::new(storage.clone()),
        Arc::clone(&clock),
    ) {
        Ok(engine) => engine,
        Err(error) if written_by_creditd => {
            panic!("a snapshot creditd wrote does not load: {error}")
        }
        Err(_) => return,
    };
    if let Err(violation) = engine.check_invariants() {
        panic!("a state recovery accepted breaks the live invariants: {violation}");
    }
    let before = engine.state_image();
    engine.snapshot().expect("a loaded state takes a snapshot");
    let _ = engine.wal().close();
    drop(engine);
    let image = storage.crash_image(|_, _| 0);
    let reopened = Engine::open(options, Arc::new(image), clock)
        .unwrap_or_else(|error| panic!("an engine cannot reopen on its own snapshot: {error}"));
    assert_eq!(
        reopened.state_image(),
        before,
        "loading a snapshot, writing it again and loading that changed the state"
    );
}

fn put_durably(storage: &MemStorage, dir: &Path, name: &str, bytes: &[u8]) {
    storage.create_dir_all(dir).expect("memory storage");
    let mut file = storage.create(&dir.join(name)).expect("memory storage");
    file.write_all(bytes).expect("memory storage");
    file.sync_data().expect("memory storage");
    storage.sync_dir(dir).expect("memory storage");
}

// ---------------------------------------------------------------------------------------------
// Engine operations: input decoding
// ---------------------------------------------------------------------------------------------
