//! Entry points shared by the cargo-fuzz targets under `fuzz/` and by the test that replays their
//! committed corpora on stable Rust. Each takes arbitrary bytes and must never panic.
//!
//! A panic here always means that a property of creditd failed, never that the input was odd:
//! - [`record_decode`]: the record frame decodes exactly as its documented layout says and
//!   re-encodes to the same bytes; a segment scan accounts for every byte it accepts, a torn tail
//!   it reports can be cut off and re-scanned clean, and a power cut inside valid records never
//!   reads as damage; an event that decodes encodes back to the same value.
//! - [`snapshot_decode`]: the snapshot reader refuses bad files with errors, reads valid ones back
//!   to the bytes the writer produces, and a snapshot whose chunks pass
//!   [`crate::engine::check_snapshot_chunks`] loads into an engine whose own snapshot loads back
//!   to the same state.
//! - [`engine_ops`]: a sequence of operations on an engine over the crash-model storage, checked
//!   against a reference model after every step; crashes (with torn tails) and restarts in
//!   between must keep every acknowledged write and rebuild exactly a prefix of the log.
//!
//! [`seeds`] builds the seed inputs committed under `fuzz/corpus/` (see `tests/fuzz_corpora.rs`).
//! This module is for the fuzzers and their tests only; nothing in creditd calls it.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::codec::{self, FORMAT_VERSION};
use crate::engine::event::{Event, MethodRecord, PackageRecord, ProfileRecord};
use crate::engine::payments::{AutoTopupRequest, CheckoutRequest, MethodDetails, Verdict};
use crate::engine::types::Outcome;
use crate::engine::types::{
    check_amount, check_id, check_idempotency_key, check_metadata, check_text, ClosedAs,
    CreditKind, Currency, DebitKind, EngineError, Fingerprint, Invalid, Limits, Lsn, Missing,
    Shortfall,
};
use crate::engine::{
    check_snapshot_chunks, CaptureRequest, Clock, Context, CreditRequest, DebitRequest, Done,
    Engine, EngineOptions, IdempotencyKey, ManualClock, PackageSpec, ProfileUpdate,
    ReservationState, ReservationView, ReserveRequest, RevokeRequest, Spend, Tenant, WalletView,
};
use crate::wal::batch;
use crate::wal::memory::MemStorage;
use crate::wal::record::{self, FrameError, HEADER_BYTES};
use crate::wal::segment::{self, Damage, Scan, ScanEnd, TailReason, SEGMENT_HEADER_BYTES};
use crate::wal::snapshot::{
    self as snapshot_file, SnapshotHeader, SnapshotReader, SnapshotWriter, SNAPSHOT_HEADER_BYTES,
};
use crate::wal::{SharedStorage, Storage};

/// The record limit the fuzzers decode with: the engine's default `max_record_bytes`.
const RECORD_LIMIT: u32 = 1024 * 1024;
/// The chunk limit snapshot files are read with; it bounds what one frame header can make the
/// reader allocate.
const CHUNK_LIMIT: u32 = 1024 * 1024;
/// Separates chunks when [`snapshot_decode`] reads its input as a list of chunk payloads.
pub const CHUNK_SEPARATOR: &[u8] = b"--chunk--";
/// The clock's reading when a fuzzed engine starts, Unix milliseconds.
const T0: i64 = 1_700_000_000_000;
/// Operations one [`engine_ops`] run performs at most.
const MAX_OPS: usize = 200;
/// Input bytes one [`engine_ops`] run reads at most.
const MAX_OPS_INPUT_BYTES: usize = 4096;

fn le_u32(bytes: &[u8]) -> u32 {
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

struct ReadSnapshot {
    header: SnapshotHeader,
    chunks: Vec<Vec<u8>>,
}

/// Reads `bytes` as a snapshot file. `None` when the reader refuses it; when it accepts it, checks
/// that the file is exactly what the writer makes of the same header and chunks.
fn read_snapshot(bytes: &[u8]) -> Option<ReadSnapshot> {
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
fn write_snapshot(header: SnapshotHeader, chunks: &[Vec<u8>]) -> Vec<u8> {
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
fn check_engine_loads(file: &[u8], header: SnapshotHeader, written_by_creditd: bool) {
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

/// Operation codes of [`engine_ops`] input: each operation is one byte (code modulo
/// [`op::COUNT`], high bit set to wait until the change is durable) followed by its arguments,
/// one byte each, read as indexes into small tables of values (modulo their length). Missing
/// bytes read as zero.
pub mod op {
    /// `tenant, name, currency`.
    pub const UPSERT_TENANT: u8 = 0;
    /// `tenant, user, email, name, metadata`.
    pub const UPSERT_USER: u8 = 1;
    /// `tenant, user, amount, kind, currency, description, reference, metadata, key`.
    pub const CREDIT: u8 = 2;
    /// `tenant, user, amount, currency, description, dry_run, key`.
    pub const DEBIT: u8 = 3;
    /// `tenant, user, action, quantity, currency, dry_run, key`.
    pub const DEBIT_ACTION: u8 = 4;
    /// `tenant, user, amount, reason, currency, key`.
    pub const REVOKE: u8 = 5;
    /// `tenant, user, by_action, (amount | action, quantity), currency, ttl, description, dry_run,
    /// key`.
    pub const RESERVE: u8 = 6;
    /// `tenant, reservation, amount (0 = everything held, else the amount table at byte − 1),
    /// description, key`.
    pub const CAPTURE: u8 = 7;
    /// `tenant, reservation, ttl, key`.
    pub const EXTEND: u8 = 8;
    /// `tenant, reservation, key`.
    pub const RELEASE: u8 = 9;
    /// `tenant, user, currency, limit`.
    pub const SET_OVERDRAFT: u8 = 10;
    /// `tenant, action, cost, currency, description`.
    pub const PUT_ACTION: u8 = 11;
    /// `tenant, action`.
    pub const DELETE_ACTION: u8 = 12;
    /// `tenant, package, name, credits, currency, price, active`.
    pub const PUT_PACKAGE: u8 = 13;
    /// `tenant, package`.
    pub const DELETE_PACKAGE: u8 = 14;
    /// `advance`.
    pub const CLOCK: u8 = 15;
    /// `now`.
    pub const EXPIRE: u8 = 16;
    /// No arguments: forget expired keys and closed reservations as of now.
    pub const PURGE: u8 = 17;
    /// No arguments.
    pub const SNAPSHOT: u8 = 18;
    /// `how, tear`: `how % 4` is 0 crash, 1 flush then crash, 2 crash, 3 graceful shutdown;
    /// `how / 4 % 3` keeps 0, all or half of the unsynced bytes; with none kept, `tear / 255` of
    /// what the old log wrote after the crash point is put back as a torn write.
    pub const RESTART: u8 = 19;
    /// No arguments: wait until everything is durable.
    pub const FLUSH: u8 = 20;
    /// No arguments: flush, then check the directory read-only as `creditd wal verify` does.
    pub const VERIFY: u8 = 21;
    /// How many operation codes there are.
    pub const COUNT: u8 = 22;
    /// Set on an operation byte to wait until the operation's change is durable.
    pub const WAIT: u8 = 0x80;
}

const TENANT_IDS: [&str; 3] = ["t0", "t1", "bad tenant"];
const USER_IDS: [&str; 4] = ["u0", "u1", "u2", "bad/user"];
const ACTION_IDS: [&str; 3] = ["a0", "a1", "bad action"];
const PACKAGE_IDS: [&str; 3] = ["p0", "p1", "bad/package"];
const KEYS: [&str; 4] = ["k0", "k1", "k2", "bad key"];
/// Clock advances in milliseconds; `i64::MAX` jumps to near the end of time.
const ADVANCES_MS: [i64; 16] = [
    0,
    1,
    999,
    1_000,
    4_999,
    5_000,
    10_001,
    30_001,
    60_000,
    300_000,
    300_001,
    3_600_001,
    86_400_000,
    86_400_001,
    7 * 86_400_000,
    i64::MAX,
];

fn long_text() -> &'static str {
    static LONG: OnceLock<String> = OnceLock::new();
    LONG.get_or_init(|| "x".repeat(16 * 1024 + 1))
}

/// The amount table: `index` modulo its length picks one.
fn amount_at(index: u8, max: i64) -> i64 {
    let amounts = [
        1,
        2,
        3,
        10,
        100,
        1_000,
        0,
        -1,
        i64::MIN,
        i64::MAX,
        max,
        max - 1,
        max.saturating_add(1),
        max / 2 + 1,
        999_999,
        7,
    ];
    amounts[index as usize % amounts.len()]
}

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    fn byte(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.byte() as usize % items.len()]
    }

    fn flag(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    fn amount(&mut self, max: i64) -> i64 {
        let byte = self.byte();
        amount_at(byte, max)
    }

    fn quantity(&mut self, max: u64) -> u64 {
        self.pick(&[
            1,
            2,
            3,
            10,
            0,
            max,
            max.saturating_add(1),
            u64::MAX,
            1 << 63,
        ])
    }

    fn ttl(&mut self, max: u64) -> Option<u64> {
        self.pick(&[
            None,
            Some(1),
            Some(5),
            Some(60),
            Some(300),
            Some(0),
            Some(max),
            Some(max.saturating_add(1)),
            Some(u64::MAX),
        ])
    }

    fn text(&mut self) -> Option<&'static str> {
        let long = long_text();
        self.pick(&[
            None,
            None,
            Some("note"),
            Some(&long[..9]),
            Some(&long[..1025]),
            Some(long),
        ])
    }

    fn key(&mut self) -> Option<(&'static str, Fingerprint)> {
        let byte = self.byte();
        if byte & 1 == 0 {
            return None;
        }
        let key = KEYS[(byte >> 1) as usize % KEYS.len()];
        Some((key, [(byte >> 3) & 1; 16]))
    }
}

// ---------------------------------------------------------------------------------------------
// Engine operations: the reference model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MWallet {
    currency: Currency,
    balance: i64,
    reserved: i64,
    overdraft: i64,
}

impl MWallet {
    fn empty(currency: Currency) -> MWallet {
        MWallet {
            currency,
            balance: 0,
            reserved: 0,
            overdraft: 0,
        }
    }

    fn available(&self) -> i64 {
        self.balance.saturating_sub(self.reserved)
    }

    fn view(&self) -> WalletView {
        WalletView {
            currency: self.currency,
            balance: self.balance,
            reserved: self.reserved,
            available: self.available(),
            overdraft_limit: self.overdraft,
        }
    }
}

#[derive(Debug, Clone)]
struct MHold {
    id: Lsn,
    currency: Currency,
    amount: i64,
    expires_at_ms: i64,
}

type Profile = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

#[derive(Debug, Clone)]
struct MUser {
    last_lsn: Lsn,
    profile: Profile,
    /// The wallet created with the user first, then the others in the order they appeared.
    wallets: Vec<MWallet>,
    /// In the engine's order, which decides which due reservation expires first.
    holds: Vec<MHold>,
}

impl MUser {
    fn wallet(&self, currency: Currency) -> MWallet {
        self.wallets
            .iter()
            .find(|wallet| wallet.currency == currency)
            .copied()
            .unwrap_or(MWallet::empty(currency))
    }

    /// The wallet once every reservation due by `now_ms` is released: what a dry run decides on.
    fn wallet_as_of(&self, currency: Currency, now_ms: i64) -> MWallet {
        let mut wallet = self.wallet(currency);
        for hold in &self.holds {
            if hold.currency == currency && hold.expires_at_ms <= now_ms {
                wallet.reserved -= hold.amount;
            }
        }
        wallet
    }

    fn wallet_mut(&mut self, currency: Currency) -> &mut MWallet {
        let index = match self.wallets.iter().position(|w| w.currency == currency) {
            Some(index) => index,
            None => {
                self.wallets.push(MWallet::empty(currency));
                self.wallets.len() - 1
            }
        };
        &mut self.wallets[index]
    }
}

/// Whether the engine still knows a closed reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// It answers "closed".
    Present,
    /// Purged: it answers "not found".
    Purged,
    /// Past its retention at a restart: a snapshot leaves it out, replaying the log brings it
    /// back, so either answer is right until one is seen.
    Maybe,
}

#[derive(Debug, Clone, Copy)]
enum MReservation {
    Open {
        user: &'static str,
    },
    Closed {
        user: &'static str,
        how: ClosedAs,
        at_ms: i64,
        known: Known,
    },
}

#[derive(Debug, Clone)]
struct MKey {
    fingerprint: Fingerprint,
    lsn: Lsn,
    created_ms: i64,
    outcome: Outcome,
}

#[derive(Debug, Clone)]
struct MAction {
    cost: i64,
    currency: Currency,
    description: Option<&'static str>,
}

#[derive(Debug, Clone)]
struct MTenant {
    default_currency: Currency,
    name: Option<&'static str>,
    catalogue_lsn: Lsn,
    actions: BTreeMap<&'static str, MAction>,
    packages: BTreeSet<&'static str>,
    users: BTreeMap<&'static str, MUser>,
    reservations: BTreeMap<Lsn, MReservation>,
    keys: BTreeMap<&'static str, MKey>,
}

/// What the engine state should be: built from the same decisions the engine documents, written
/// independently of its code.
#[derive(Debug, Clone)]
struct Model {
    next_lsn: Lsn,
    tenants: BTreeMap<&'static str, MTenant>,
}

/// The model after each record, by LSN: recovery must rebuild exactly one of these.
type History = Vec<(Lsn, Model)>;

type Key = Option<(&'static str, Fingerprint)>;

/// Why the model stops an operation.
#[derive(Debug)]
enum Stop {
    /// The engine refuses it with this error.
    Refused(EngineError),
    /// The key was used before with the same request: this answer again.
    Replay(Done),
    /// The reservation is closed and past its retention: "closed" or "not found".
    ClosedOrGone(ClosedAs),
}

impl From<EngineError> for Stop {
    fn from(error: EngineError) -> Stop {
        Stop::Refused(error)
    }
}

fn invalid(field: &'static str) -> EngineError {
    EngineError::Invalid(Invalid::new(field, ""))
}

/// Checks arithmetic that the engine does without a check: if it overflows, the engine would
/// panic (debug) or record a wrapped balance (release).
fn unchecked(what: &str, value: Option<i64>) -> i64 {
    value.unwrap_or_else(|| {
        panic!("creditd computes {what} without an overflow check, and it overflows")
    })
}

fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn check_texts(
    limits: &Limits,
    description: Option<&str>,
    reference: Option<&str>,
    metadata: Option<&str>,
) -> Result<(), EngineError> {
    check_text("description", description, limits.max_text_bytes)?;
    check_text("reference", reference, limits.max_text_bytes)?;
    check_metadata(metadata, limits)
}

fn check_ttl(ttl_seconds: u64, limits: &Limits) -> Result<(), EngineError> {
    if ttl_seconds == 0 || ttl_seconds > limits.max_reservation_ttl_seconds {
        return Err(invalid("ttl_seconds"));
    }
    Ok(())
}

fn expiry(now_ms: i64, ttl_seconds: u64) -> Result<i64, EngineError> {
    i64::try_from(ttl_seconds)
        .ok()
        .and_then(|seconds| seconds.checked_mul(1000))
        .and_then(|ms| now_ms.checked_add(ms))
        .ok_or(EngineError::Overflow)
}

fn spend_from(wallet: &MWallet, amount: i64) -> Result<i64, EngineError> {
    let available = wallet.available();
    match available.checked_sub(amount) {
        Some(after) if after >= -wallet.overdraft => Ok(after),
        _ => Err(EngineError::InsufficientCredits(Shortfall {
            balance: wallet.balance,
            available,
            required: amount,
        })),
    }
}

enum Claimed {
    Fresh(Key),
    Replay(Done),
}

fn claim(tenant: &MTenant, key: Key) -> Result<Claimed, EngineError> {
    let Some((name, fingerprint)) = key else {
        return Ok(Claimed::Fresh(None));
    };
    check_idempotency_key(name)?;
    match tenant.keys.get(name) {
        Some(entry) if entry.fingerprint != fingerprint => Err(EngineError::IdempotencyKeyReused),
        Some(entry) => Ok(Claimed::Replay(Done {
            lsn: entry.lsn,
            outcome: entry.outcome,
            replayed: true,
        })),
        None => Ok(Claimed::Fresh(key)),
    }
}

fn complete(tenant: &mut MTenant, key: Key, lsn: Lsn, now_ms: i64, outcome: Outcome) {
    if let Some((name, fingerprint)) = key {
        let entry = MKey {
            fingerprint,
            lsn,
            created_ms: now_ms,
            outcome,
        };
        tenant.keys.insert(name, entry);
    }
}

impl Model {
    fn new() -> Model {
        Model {
            next_lsn: 1,
            tenants: BTreeMap::new(),
        }
    }

    fn tenant(&self, id: &str) -> &MTenant {
        &self.tenants[id]
    }

    fn tenant_mut(&mut self, id: &str) -> &mut MTenant {
        self.tenants.get_mut(id).expect("tenant in the model")
    }

    fn user_mut(&mut self, tenant: &str, user: &str) -> &mut MUser {
        self.tenant_mut(tenant)
            .users
            .get_mut(user)
            .expect("user in the model")
    }

    /// Closes the record whose LSN was `self.next_lsn`, after its change was applied.
    fn commit(&mut self, history: &mut History) {
        self.next_lsn += 1;
        history.push((self.next_lsn - 1, self.clone()));
    }

    /// Releases, one record each, the user's reservations due at `now_ms`, first due first.
    fn expire_due(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        user: &'static str,
        now_ms: i64,
    ) -> u64 {
        let mut expired = 0;
        loop {
            let lsn = self.next_lsn;
            let account = self.user_mut(tenant, user);
            let Some(index) = account.holds.iter().position(|h| h.expires_at_ms <= now_ms) else {
                return expired;
            };
            let hold = account.holds.swap_remove(index);
            let wallet = account.wallet_mut(hold.currency);
            wallet.reserved -= hold.amount;
            unchecked(
                "a released reservation's available_after",
                wallet.balance.checked_sub(wallet.reserved),
            );
            account.last_lsn = lsn;
            let closed = MReservation::Closed {
                user,
                how: ClosedAs::Expired,
                at_ms: now_ms,
                known: Known::Present,
            };
            self.tenant_mut(tenant).reservations.insert(hold.id, closed);
            self.commit(history);
            expired += 1;
        }
    }

    fn upsert_tenant(
        &mut self,
        history: &mut History,
        limits: &Limits,
        id: &'static str,
        name: Option<&'static str>,
        currency: Option<Currency>,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("tenant_id", id)?;
        check_text("name", name, limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        if let Some(tenant) = self.tenants.get_mut(id) {
            if currency.is_some_and(|c| c != tenant.default_currency) {
                return Err(EngineError::Conflict(""));
            }
            if tenant.name == name {
                return Ok((false, tenant.catalogue_lsn));
            }
            tenant.name = name;
            tenant.catalogue_lsn = lsn;
            self.commit(history);
            return Ok((false, lsn));
        }
        let tenant = MTenant {
            default_currency: currency.unwrap_or(Currency::CREDITS),
            name,
            catalogue_lsn: lsn,
            actions: BTreeMap::new(),
            packages: BTreeSet::new(),
            users: BTreeMap::new(),
            reservations: BTreeMap::new(),
            keys: BTreeMap::new(),
        };
        self.tenants.insert(id, tenant);
        self.commit(history);
        Ok((true, lsn))
    }

    fn upsert_user(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        user: &'static str,
        profile: Profile,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("user_id", user)?;
        check_text("email", profile.0, limits.max_text_bytes)?;
        check_text("name", profile.1, limits.max_text_bytes)?;
        check_metadata(profile.2, limits)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        let default_currency = model_tenant.default_currency;
        if let Some(account) = model_tenant.users.get_mut(user) {
            if account.profile == profile {
                return Ok((false, account.last_lsn));
            }
            account.profile = profile;
            account.last_lsn = lsn;
            self.commit(history);
            return Ok((false, lsn));
        }
        let account = MUser {
            last_lsn: lsn,
            profile,
            wallets: vec![MWallet::empty(default_currency)],
            holds: Vec::new(),
        };
        model_tenant.users.insert(user, account);
        self.commit(history);
        Ok((true, lsn))
    }

    fn credit(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &CreditRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        check_amount("amount", request.amount, limits)?;
        check_texts(
            limits,
            request.description,
            request.reference,
            request.metadata,
        )?;
        let model_tenant = self.tenant(tenant);
        let currency = request.currency.unwrap_or(model_tenant.default_currency);
        let key = match claim(model_tenant, key)? {
            Claimed::Replay(done) => return Err(Stop::Replay(done)),
            Claimed::Fresh(key) => key,
        };
        if !model_tenant.users.contains_key(request.user) {
            return Err(EngineError::NotFound(Missing::User).into());
        }
        self.expire_due(history, tenant, request.user, now_ms);
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, request.user);
        let wallet = account.wallet(currency);
        let balance = wallet
            .balance
            .checked_add(request.amount)
            .ok_or(EngineError::Overflow)?;
        let available = balance
            .checked_sub(wallet.reserved)
            .ok_or(EngineError::Overflow)?;
        account.wallet_mut(currency).balance = balance;
        account.last_lsn = lsn;
        let outcome = Outcome::Credit {
            entry_id: lsn,
            amount: request.amount,
            balance,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    fn price(
        &self,
        limits: &Limits,
        tenant: &str,
        currency: Option<Currency>,
        spend: Spend<'_>,
    ) -> Result<(i64, Currency), EngineError> {
        let model_tenant = self.tenant(tenant);
        match spend {
            Spend::Amount(amount) => {
                check_amount("amount", amount, limits)?;
                Ok((amount, currency.unwrap_or(model_tenant.default_currency)))
            }
            Spend::Action { name, quantity } => {
                check_id("action", name)?;
                if quantity == 0 || quantity > limits.max_quantity {
                    return Err(invalid("quantity"));
                }
                let action = model_tenant
                    .actions
                    .get(name)
                    .ok_or(EngineError::NotFound(Missing::Action))?;
                if currency.is_some_and(|c| c != action.currency) {
                    return Err(invalid("currency"));
                }
                let quantity = i64::try_from(quantity).map_err(|_| EngineError::Overflow)?;
                let amount = action
                    .cost
                    .checked_mul(quantity)
                    .ok_or(EngineError::Overflow)?;
                check_amount("amount", amount, limits)?;
                Ok((amount, action.currency))
            }
        }
    }

    fn debit(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &DebitRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        check_texts(
            limits,
            request.description,
            request.reference,
            request.metadata,
        )?;
        let (amount, currency) = self.price(limits, tenant, request.currency, request.spend)?;
        let spend = (amount, currency, DebitKind::Usage);
        self.take(
            history,
            tenant,
            request.user,
            spend,
            key,
            request.dry_run,
            now_ms,
        )
    }

    fn revoke(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &RevokeRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        if request.reason.trim().is_empty() {
            return Err(invalid("reason").into());
        }
        check_texts(limits, Some(request.reason), None, None)?;
        let (amount, currency) = self.price(
            limits,
            tenant,
            request.currency,
            Spend::Amount(request.amount),
        )?;
        let spend = (amount, currency, DebitKind::Revoke);
        self.take(history, tenant, request.user, spend, key, false, now_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        user: &'static str,
        (amount, currency, kind): (i64, Currency, DebitKind),
        key: Key,
        dry_run: bool,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        let model_tenant = self.tenant(tenant);
        let key = if dry_run {
            None
        } else {
            match claim(model_tenant, key)? {
                Claimed::Replay(done) => return Err(Stop::Replay(done)),
                Claimed::Fresh(key) => key,
            }
        };
        if !model_tenant.users.contains_key(user) {
            return Err(EngineError::NotFound(Missing::User).into());
        }
        if !dry_run {
            self.expire_due(history, tenant, user, now_ms);
        }
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, user);
        let wallet = account.wallet_as_of(currency, now_ms);
        let available = spend_from(&wallet, amount)?;
        let balance = unchecked(
            "a debit's balance_after",
            wallet.balance.checked_sub(amount),
        );
        let outcome = Outcome::Debit {
            entry_id: if dry_run { 0 } else { lsn },
            kind,
            charged: amount,
            balance,
            available,
        };
        if dry_run {
            return Ok(Done {
                lsn: 0,
                outcome,
                replayed: false,
            });
        }
        account.wallet_mut(currency).balance = balance;
        account.last_lsn = lsn;
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    fn reserve(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &ReserveRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        check_texts(limits, request.description, None, request.metadata)?;
        let ttl = request
            .ttl_seconds
            .unwrap_or(limits.default_reservation_ttl_seconds);
        check_ttl(ttl, limits)?;
        let (amount, currency) = self.price(limits, tenant, request.currency, request.spend)?;
        let model_tenant = self.tenant(tenant);
        let key = if request.dry_run {
            None
        } else {
            match claim(model_tenant, key)? {
                Claimed::Replay(done) => return Err(Stop::Replay(done)),
                Claimed::Fresh(key) => key,
            }
        };
        if !model_tenant.users.contains_key(request.user) {
            return Err(EngineError::NotFound(Missing::User).into());
        }
        if !request.dry_run {
            self.expire_due(history, tenant, request.user, now_ms);
        }
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, request.user);
        let open = account
            .holds
            .iter()
            .filter(|h| h.expires_at_ms > now_ms)
            .count();
        if open >= limits.max_reservations_per_user as usize {
            return Err(EngineError::TooManyReservations.into());
        }
        let wallet = account.wallet_as_of(currency, now_ms);
        let available = spend_from(&wallet, amount)?;
        let expires_at_ms = expiry(now_ms, ttl)?;
        let reserved = wallet
            .reserved
            .checked_add(amount)
            .ok_or(EngineError::Overflow)?;
        let outcome = Outcome::Reserve {
            reservation_id: if request.dry_run { 0 } else { lsn },
            amount,
            expires_at_ms,
            available,
        };
        if request.dry_run {
            return Ok(Done {
                lsn: 0,
                outcome,
                replayed: false,
            });
        }
        account.wallet_mut(currency).reserved = reserved;
        account.holds.push(MHold {
            id: lsn,
            currency,
            amount,
            expires_at_ms,
        });
        account.last_lsn = lsn;
        let model_tenant = self.tenant_mut(tenant);
        let open = MReservation::Open { user: request.user };
        model_tenant.reservations.insert(lsn, open);
        complete(model_tenant, key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    fn reservation_owner(&self, tenant: &str, id: Lsn) -> Result<&'static str, Stop> {
        match self.tenant(tenant).reservations.get(&id) {
            None => Err(EngineError::NotFound(Missing::Reservation).into()),
            Some(MReservation::Open { user }) => Ok(user),
            Some(MReservation::Closed { how, known, .. }) => match known {
                Known::Present => Err(EngineError::ReservationClosed(*how).into()),
                Known::Purged => Err(EngineError::NotFound(Missing::Reservation).into()),
                Known::Maybe => Err(Stop::ClosedOrGone(*how)),
            },
        }
    }

    /// Claims the key, finds the open reservation's user and expires that user's due
    /// reservations, as the engine does before any change to a reservation.
    fn open_hold(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        id: Lsn,
        key: Key,
        now_ms: i64,
    ) -> Result<(&'static str, Key), Stop> {
        let key = match claim(self.tenant(tenant), key)? {
            Claimed::Replay(done) => return Err(Stop::Replay(done)),
            Claimed::Fresh(key) => key,
        };
        let user = self.reservation_owner(tenant, id)?;
        self.expire_due(history, tenant, user, now_ms);
        if !self.tenant(tenant).users[user]
            .holds
            .iter()
            .any(|h| h.id == id)
        {
            return Err(match self.reservation_owner(tenant, id) {
                Err(stop) => stop,
                Ok(_) => EngineError::ReservationClosed(ClosedAs::Expired).into(),
            });
        }
        Ok((user, key))
    }

    fn close_hold(
        &mut self,
        tenant: &'static str,
        user: &'static str,
        id: Lsn,
        how: ClosedAs,
        now_ms: i64,
    ) -> MHold {
        let account = self.user_mut(tenant, user);
        let index = account
            .holds
            .iter()
            .position(|h| h.id == id)
            .expect("open hold");
        let hold = account.holds.swap_remove(index);
        let closed = MReservation::Closed {
            user,
            how,
            at_ms: now_ms,
            known: Known::Present,
        };
        self.tenant_mut(tenant).reservations.insert(id, closed);
        hold
    }

    fn capture(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &CaptureRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_texts(limits, request.description, None, request.metadata)?;
        if let Some(amount) = request.amount {
            check_amount("amount", amount, limits)?;
        }
        let id = request.reservation_id;
        let (user, key) = self.open_hold(history, tenant, id, key, now_ms)?;
        let lsn = self.next_lsn;
        let account = &self.tenant(tenant).users[user];
        let hold = account
            .holds
            .iter()
            .find(|h| h.id == id)
            .expect("open hold");
        let (held, currency) = (hold.amount, hold.currency);
        let charged = request.amount.unwrap_or(held);
        let wallet = account.wallet(currency);
        if charged > held {
            spend_from(&wallet, charged - held)?;
        }
        let balance = wallet
            .balance
            .checked_sub(charged)
            .ok_or(EngineError::Overflow)?;
        let reserved = wallet.reserved - held;
        let available = unchecked("a capture's available_after", balance.checked_sub(reserved));
        self.close_hold(tenant, user, id, ClosedAs::Captured, now_ms);
        let account = self.user_mut(tenant, user);
        let target = account.wallet_mut(currency);
        target.balance = balance;
        target.reserved = reserved;
        account.last_lsn = lsn;
        let outcome = Outcome::Capture {
            entry_id: lsn,
            charged,
            released: held.saturating_sub(charged).max(0),
            balance,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn extend(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        id: Lsn,
        ttl_seconds: u64,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_ttl(ttl_seconds, limits)?;
        let (user, key) = self.open_hold(history, tenant, id, key, now_ms)?;
        let lsn = self.next_lsn;
        let expires_at_ms = expiry(now_ms, ttl_seconds)?;
        let account = self.user_mut(tenant, user);
        let hold = account
            .holds
            .iter_mut()
            .find(|h| h.id == id)
            .expect("open hold");
        hold.expires_at_ms = expires_at_ms;
        account.last_lsn = lsn;
        let outcome = Outcome::Extend {
            reservation_id: id,
            expires_at_ms,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    fn release(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        id: Lsn,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        let (user, key) = self.open_hold(history, tenant, id, key, now_ms)?;
        let lsn = self.next_lsn;
        let hold = self.close_hold(tenant, user, id, ClosedAs::Released, now_ms);
        let account = self.user_mut(tenant, user);
        let wallet = account.wallet_mut(hold.currency);
        wallet.reserved -= hold.amount;
        let available = unchecked(
            "a release's available_after",
            wallet.balance.checked_sub(wallet.reserved),
        );
        account.last_lsn = lsn;
        let outcome = Outcome::Release {
            reservation_id: id,
            released: hold.amount,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    fn set_overdraft(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        user: &'static str,
        (currency, limit): (Option<Currency>, i64),
        now_ms: i64,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        if limit < 0 || limit > limits.max_amount {
            return Err(invalid("overdraft_limit"));
        }
        let model_tenant = self.tenant(tenant);
        let currency = currency.unwrap_or(model_tenant.default_currency);
        if !model_tenant.users.contains_key(user) {
            return Err(EngineError::NotFound(Missing::User));
        }
        self.expire_due(history, tenant, user, now_ms);
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, user);
        if account.wallet(currency).available() < -limit {
            return Err(EngineError::Conflict(""));
        }
        account.wallet_mut(currency).overdraft = limit;
        account.last_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    fn put_action(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        name: &'static str,
        (cost, currency, description): (i64, Option<Currency>, Option<&'static str>),
    ) -> Result<Lsn, EngineError> {
        check_id("action", name)?;
        check_amount("cost", cost, limits)?;
        check_text("description", description, limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        let action = MAction {
            cost,
            currency: currency.unwrap_or(model_tenant.default_currency),
            description,
        };
        model_tenant.actions.insert(name, action);
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    fn delete_action(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        name: &'static str,
    ) -> Result<Lsn, EngineError> {
        check_id("action", name)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        model_tenant
            .actions
            .remove(name)
            .ok_or(EngineError::NotFound(Missing::Action))?;
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    fn put_package(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        package: &'static str,
        terms: &PackageSpec<'static>,
    ) -> Result<Lsn, EngineError> {
        check_id("package_id", package)?;
        check_amount("credits", terms.credits, limits)?;
        check_amount("price_minor", terms.price_minor, limits)?;
        if terms.name.trim().is_empty() {
            return Err(invalid("name"));
        }
        check_text("name", Some(terms.name), limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        model_tenant.packages.insert(package);
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    fn delete_package(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        package: &'static str,
    ) -> Result<Lsn, EngineError> {
        check_id("package_id", package)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        if !model_tenant.packages.remove(package) {
            return Err(EngineError::NotFound(Missing::Package));
        }
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Forgets keys and closed reservations as `Engine::purge_expired` does; returns the keys
    /// forgotten and the bounds of the reservations forgotten.
    fn purge(
        &mut self,
        idempotency_ttl_seconds: u64,
        limits: &Limits,
        now_ms: i64,
    ) -> (u64, u64, u64) {
        let key_cutoff = now_ms.saturating_sub(seconds_to_ms(idempotency_ttl_seconds));
        let closed_cutoff =
            now_ms.saturating_sub(seconds_to_ms(limits.closed_reservation_retention_seconds));
        let (mut keys, mut certain, mut possible) = (0, 0, 0);
        for tenant in self.tenants.values_mut() {
            let before = tenant.keys.len();
            tenant.keys.retain(|_, key| key.created_ms >= key_cutoff);
            keys += (before - tenant.keys.len()) as u64;
            for reservation in tenant.reservations.values_mut() {
                if let MReservation::Closed { at_ms, known, .. } = reservation {
                    if *at_ms < closed_cutoff {
                        match known {
                            Known::Present => certain += 1,
                            Known::Maybe => possible += 1,
                            Known::Purged => {}
                        }
                        *known = Known::Purged;
                    }
                }
            }
        }
        (keys, certain, certain + possible)
    }

    /// What a restart at `now_ms` forgets: keys past their TTL; closed reservations past their
    /// retention may or may not come back (see [`Known::Maybe`]).
    fn after_restart(&mut self, idempotency_ttl_seconds: u64, limits: &Limits, now_ms: i64) {
        let key_cutoff = now_ms.saturating_sub(seconds_to_ms(idempotency_ttl_seconds));
        let closed_cutoff =
            now_ms.saturating_sub(seconds_to_ms(limits.closed_reservation_retention_seconds));
        for tenant in self.tenants.values_mut() {
            tenant.keys.retain(|_, key| key.created_ms >= key_cutoff);
            for reservation in tenant.reservations.values_mut() {
                if let MReservation::Closed { at_ms, known, .. } = reservation {
                    if *at_ms < closed_cutoff || *known == Known::Purged {
                        *known = Known::Maybe;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Engine operations: the run
// ---------------------------------------------------------------------------------------------

fn same_error(got: &EngineError, want: &EngineError) -> bool {
    match (got, want) {
        (EngineError::Invalid(a), EngineError::Invalid(b)) => a.field == b.field,
        (EngineError::Conflict(_), EngineError::Conflict(_)) => true,
        _ => got == want,
    }
}

fn expect_same<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: &Result<T, EngineError>,
    want: &Result<T, EngineError>,
) {
    let same = match (got, want) {
        (Ok(got), Ok(want)) => got == want,
        (Err(got), Err(want)) => same_error(got, want),
        _ => false,
    };
    assert!(
        same,
        "{what}: creditd answered {got:?}, the reference model expects {want:?}"
    );
}

fn context(key: Key) -> Context<'static> {
    Context {
        actor: "fuzz",
        idempotency: key.map(|(key, fingerprint)| IdempotencyKey { key, fingerprint }),
    }
}

fn limits_profile(choice: u8) -> (Limits, u64) {
    match choice % 3 {
        0 => (Limits::default(), 24 * 3600),
        1 => {
            let tight = Limits {
                max_amount: 1_000,
                max_quantity: 10,
                max_reservations_per_user: 3,
                default_reservation_ttl_seconds: 5,
                max_reservation_ttl_seconds: 60,
                closed_reservation_retention_seconds: 10,
                max_text_bytes: 8,
                max_metadata_bytes: 16,
                max_metadata_depth: 2,
                low_balance: 0,
            };
            (tight, 30)
        }
        _ => {
            // The widest limits the configuration accepts.
            let wide = Limits {
                max_amount: i64::MAX,
                max_quantity: u64::MAX,
                ..Limits::default()
            };
            (wide, 24 * 3600)
        }
    }
}

struct Run {
    options: EngineOptions,
    idempotency_ttl_seconds: u64,
    clock: Arc<ManualClock>,
    storage: MemStorage,
    engine: Arc<Engine>,
    model: Model,
    history: History,
    /// Every record at or below this LSN was acknowledged as durable.
    acked: Lsn,
    currencies: [Option<Currency>; 4],
}

/// Runs a sequence of operations, read from `data` as described in [`op`], on an engine over the
/// crash-model storage, and checks every answer and the whole state against a reference model.
/// The first byte picks the limits: the defaults, tight ones, or the widest the config allows.
pub fn engine_ops(data: &[u8]) {
    let data = &data[..data.len().min(MAX_OPS_INPUT_BYTES)];
    let mut input = Input { data, at: 0 };
    let mut run = Run::start(input.byte());
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        run.step(&mut input);
        ops += 1;
    }
    // A last power cut: whatever was acknowledged must come back.
    run.restart(0, 0);
    if let Err(violation) = run.engine.check_invariants() {
        panic!("invariant broken at the end of the run: {violation}");
    }
}

impl Run {
    fn start(profile: u8) -> Run {
        let (limits, idempotency_ttl_seconds) = limits_profile(profile);
        let options = EngineOptions {
            data_dir: PathBuf::from("/data"),
            background: false,
            shards: 4,
            segment_bytes: 4096,
            idempotency_ttl_seconds,
            limits,
            ..EngineOptions::default()
        };
        let storage = MemStorage::new();
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::open(
            options.clone(),
            Arc::new(storage.clone()),
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .expect("an empty engine opens");
        let currency = |code| Currency::new(code).expect("valid currency");
        let model = Model::new();
        let mut run = Run {
            options,
            idempotency_ttl_seconds,
            clock,
            storage,
            engine,
            history: vec![(0, model.clone())],
            model,
            acked: 0,
            currencies: [
                None,
                Some(Currency::CREDITS),
                Some(currency("NGN")),
                Some(currency("USD")),
            ],
        };
        run.upsert_tenant("t0", None, None, true);
        run.upsert_user("t0", "u0", (None, None, None), true);
        run.upsert_user("t0", "u1", (None, None, None), true);
        run
    }

    fn limits(&self) -> Limits {
        self.options.limits.clone()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The tenant's engine handle, if the model says it exists (and the engine agrees).
    fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        let handle = self.engine.tenant(id);
        assert_eq!(
            handle.is_some(),
            self.model.tenants.contains_key(id),
            "tenant {id:?} exists in one of engine and model only"
        );
        handle
    }

    /// Waits for `lsn` to be durable if asked to: from then on it is acknowledged.
    fn acknowledge(&mut self, wait: bool, lsn: Option<Lsn>) {
        if let (true, Some(lsn)) = (wait, lsn) {
            if let Err(error) = self.engine.wait_durable(lsn) {
                panic!("waiting for LSN {lsn} failed on a healthy disk: {error}");
            }
            self.acked = self.acked.max(lsn);
        }
    }

    fn reservation(&self, input: &mut Input<'_>, tenant: &str) -> Lsn {
        let byte = input.byte();
        let known: Vec<Lsn> = self.model.tenants[tenant]
            .reservations
            .keys()
            .copied()
            .collect();
        let next = self.model.next_lsn;
        if byte % 4 == 3 || known.is_empty() {
            [0, u64::MAX, next, next - 1][(byte / 4) as usize % 4]
        } else {
            known[(byte / 4) as usize % known.len()]
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let code = input.byte();
        let wait = code & op::WAIT != 0;
        let limits = self.limits();
        match (code & !op::WAIT) % op::COUNT {
            op::UPSERT_TENANT => {
                let id = input.pick(&TENANT_IDS);
                let name =
                    input.pick(&[None, Some("Acme"), Some("Beta"), Some(&long_text()[..1025])]);
                let currency = input.pick(&[None, Some(Currency::CREDITS), self.currencies[3]]);
                self.upsert_tenant(id, name, currency, wait);
            }
            op::UPSERT_USER => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let profile = (input.text(), input.text(), input.text());
                if self.tenant(tenant).is_some() {
                    self.upsert_user(tenant, user, profile, wait);
                }
            }
            op::CREDIT => {
                let tenant = input.pick(&TENANT_IDS);
                let request = CreditRequest {
                    user: input.pick(&USER_IDS),
                    amount: input.amount(limits.max_amount),
                    kind: input.pick(&[
                        CreditKind::Grant,
                        CreditKind::Topup,
                        CreditKind::Refund,
                        CreditKind::Adjustment,
                    ]),
                    currency: input.pick(&self.currencies),
                    description: input.text(),
                    reference: input.text(),
                    metadata: input.text(),
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.credit(&handle, &request, &context(key));
                let want =
                    self.model
                        .credit(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("credit", wait, &got, want);
            }
            op::DEBIT | op::DEBIT_ACTION => {
                let by_action = (code & !op::WAIT) % op::COUNT == op::DEBIT_ACTION;
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let spend = if by_action {
                    Spend::Action {
                        name: input.pick(&ACTION_IDS),
                        quantity: input.quantity(limits.max_quantity),
                    }
                } else {
                    Spend::Amount(input.amount(limits.max_amount))
                };
                let currency = input.pick(&self.currencies);
                let description = if by_action { None } else { input.text() };
                let request = DebitRequest {
                    currency,
                    description,
                    dry_run: input.flag(),
                    ..DebitRequest::new(user, spend)
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.debit(&handle, &request, &context(key));
                let want = self
                    .model
                    .debit(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("debit", wait, &got, want);
            }
            op::REVOKE => {
                let tenant = input.pick(&TENANT_IDS);
                let request = RevokeRequest {
                    user: input.pick(&USER_IDS),
                    amount: input.amount(limits.max_amount),
                    reason: input.pick(&["correction", "", "   ", &long_text()[..1025]]),
                    currency: input.pick(&self.currencies),
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.revoke(&handle, &request, &context(key));
                let want =
                    self.model
                        .revoke(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("revoke", wait, &got, want);
            }
            op::RESERVE => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let spend = if input.flag() {
                    Spend::Action {
                        name: input.pick(&ACTION_IDS),
                        quantity: input.quantity(limits.max_quantity),
                    }
                } else {
                    Spend::Amount(input.amount(limits.max_amount))
                };
                let request = ReserveRequest {
                    currency: input.pick(&self.currencies),
                    ttl_seconds: input.ttl(limits.max_reservation_ttl_seconds),
                    description: input.text(),
                    dry_run: input.flag(),
                    ..ReserveRequest::new(user, spend)
                };
                let key = input.key();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self.engine.reserve(&handle, &request, &context(key));
                let want =
                    self.model
                        .reserve(&mut self.history, &limits, tenant, &request, key, now);
                self.settle("reserve", wait, &got, want);
            }
            op::CAPTURE => {
                let tenant = input.pick(&TENANT_IDS);
                if self.tenant(tenant).is_none() {
                    return;
                }
                let reservation_id = self.reservation(input, tenant);
                let byte = input.byte();
                let amount = (byte != 0).then(|| amount_at(byte - 1, limits.max_amount));
                let request = CaptureRequest {
                    reservation_id,
                    amount,
                    description: input.text(),
                    metadata: None,
                };
                let key = input.key();
                let handle = self.tenant(tenant).expect("tenant");
                let now = self.now();
                let got = self.engine.capture(&handle, &request, &context(key));
                let want =
                    self.model
                        .capture(&mut self.history, &limits, tenant, &request, key, now);
                self.settle_hold("capture", wait, tenant, reservation_id, &got, want);
            }
            op::EXTEND => {
                let tenant = input.pick(&TENANT_IDS);
                if self.tenant(tenant).is_none() {
                    return;
                }
                let id = self.reservation(input, tenant);
                let ttl = input.ttl(limits.max_reservation_ttl_seconds).unwrap_or(0);
                let key = input.key();
                let handle = self.tenant(tenant).expect("tenant");
                let now = self.now();
                let got = self.engine.extend(&handle, id, ttl, &context(key));
                let want = self
                    .model
                    .extend(&mut self.history, &limits, tenant, id, ttl, key, now);
                self.settle_hold("extend", wait, tenant, id, &got, want);
            }
            op::RELEASE => {
                let tenant = input.pick(&TENANT_IDS);
                if self.tenant(tenant).is_none() {
                    return;
                }
                let id = self.reservation(input, tenant);
                let key = input.key();
                let handle = self.tenant(tenant).expect("tenant");
                let now = self.now();
                let got = self.engine.release(&handle, id, &context(key));
                let want = self.model.release(&mut self.history, tenant, id, key, now);
                self.settle_hold("release", wait, tenant, id, &got, want);
            }
            op::SET_OVERDRAFT => {
                let tenant = input.pick(&TENANT_IDS);
                let user = input.pick(&USER_IDS);
                let currency = input.pick(&self.currencies);
                let limit = input.amount(limits.max_amount);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let now = self.now();
                let got = self
                    .engine
                    .set_overdraft(&handle, user, currency, limit, &context(None));
                let change = (currency, limit);
                let want =
                    self.model
                        .set_overdraft(&mut self.history, &limits, tenant, user, change, now);
                expect_same("set_overdraft", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::PUT_ACTION => {
                let tenant = input.pick(&TENANT_IDS);
                let name = input.pick(&ACTION_IDS);
                let cost = input.amount(limits.max_amount);
                let currency = input.pick(&self.currencies);
                let description = input.text();
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self.engine.put_action(
                    &handle,
                    name,
                    cost,
                    currency,
                    description,
                    &context(None),
                );
                let terms = (cost, currency, description);
                let want = self
                    .model
                    .put_action(&mut self.history, &limits, tenant, name, terms);
                expect_same("put_action", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::DELETE_ACTION => {
                let tenant = input.pick(&TENANT_IDS);
                let name = input.pick(&ACTION_IDS);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self.engine.delete_action(&handle, name, &context(None));
                let want = self.model.delete_action(&mut self.history, tenant, name);
                expect_same("delete_action", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::PUT_PACKAGE => {
                let tenant = input.pick(&TENANT_IDS);
                let package = input.pick(&PACKAGE_IDS);
                let terms = PackageSpec {
                    name: input.pick(&["Starter", "", " ", &long_text()[..1025]]),
                    credits: input.amount(limits.max_amount),
                    currency: self.currencies[input.byte() as usize % 3 + 1].expect("currency"),
                    price_minor: input.amount(limits.max_amount),
                    price_currency: self.currencies[2].expect("currency"),
                    active: input.flag(),
                };
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self
                    .engine
                    .put_package(&handle, package, &terms, &context(None));
                let want =
                    self.model
                        .put_package(&mut self.history, &limits, tenant, package, &terms);
                expect_same("put_package", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::DELETE_PACKAGE => {
                let tenant = input.pick(&TENANT_IDS);
                let package = input.pick(&PACKAGE_IDS);
                let Some(handle) = self.tenant(tenant) else {
                    return;
                };
                let got = self.engine.delete_package(&handle, package, &context(None));
                let want = self
                    .model
                    .delete_package(&mut self.history, tenant, package);
                expect_same("delete_package", &got, &want);
                self.acknowledge(wait, got.ok());
            }
            op::CLOCK => {
                let now = self.now();
                match input.pick(&ADVANCES_MS) {
                    i64::MAX => self.clock.set_ms(now.max(i64::MAX - 10_000)),
                    advance => self.clock.set_ms(now.saturating_add(advance)),
                }
            }
            op::EXPIRE => {
                let now = self.now();
                let at = input.pick(&[
                    now,
                    now.saturating_add(5_000),
                    now.saturating_add(300_000),
                    i64::MAX,
                    i64::MIN,
                ]);
                self.expire(at);
            }
            op::PURGE => {
                let now = self.now();
                let (keys, reservations) = self.engine.purge_expired(now);
                let (want_keys, at_least, at_most) =
                    self.model.purge(self.idempotency_ttl_seconds, &limits, now);
                assert_eq!(
                    keys, want_keys,
                    "purge_expired forgot another number of keys"
                );
                assert!(
                    (at_least..=at_most).contains(&reservations),
                    "purge_expired forgot {reservations} reservations, expected {at_least}..={at_most}"
                );
            }
            op::SNAPSHOT => self.snapshot(),
            op::RESTART => {
                let how = input.byte();
                let tear = input.byte();
                self.restart(how, tear);
            }
            op::FLUSH => self.flush(),
            op::VERIFY => {
                self.flush();
                let storage: SharedStorage = Arc::new(self.storage.clone());
                let report =
                    Engine::verify(&self.options, storage, self.now()).unwrap_or_else(|error| {
                        panic!("verify fails on a live, flushed directory: {error}")
                    });
                assert_eq!(
                    report.next_lsn, self.model.next_lsn,
                    "verify sees another log end"
                );
                assert!(
                    report.torn_tail.is_none(),
                    "verify sees a torn tail after a flush"
                );
            }
            _ => unreachable!("operation codes are taken modulo op::COUNT"),
        }
        self.compare();
    }

    fn settle(
        &mut self,
        what: &str,
        wait: bool,
        got: &Result<Done, EngineError>,
        want: Result<Done, Stop>,
    ) {
        let want = match want {
            Ok(done) | Err(Stop::Replay(done)) => Ok(done),
            Err(Stop::Refused(error)) => Err(error),
            Err(Stop::ClosedOrGone(_)) => {
                unreachable!("only reservation operations meet closed reservations")
            }
        };
        expect_same(what, got, &want);
        self.acknowledge(wait, got.as_ref().ok().map(|done| done.lsn));
    }

    /// Like [`Run::settle`], for operations on a reservation that may be past its retention.
    fn settle_hold(
        &mut self,
        what: &str,
        wait: bool,
        tenant: &str,
        id: Lsn,
        got: &Result<Done, EngineError>,
        want: Result<Done, Stop>,
    ) {
        if let Err(Stop::ClosedOrGone(how)) = want {
            let known = match got {
                Err(EngineError::ReservationClosed(closed)) if *closed == how => Known::Present,
                Err(EngineError::NotFound(Missing::Reservation)) => Known::Purged,
                other => panic!(
                    "{what} on reservation {id} closed as {how:?}: creditd answered {other:?}"
                ),
            };
            self.settle_known(tenant, id, known);
            return;
        }
        self.settle(what, wait, got, want);
    }

    fn settle_known(&mut self, tenant: &str, id: Lsn, seen: Known) {
        if let Some(MReservation::Closed { known, .. }) =
            self.model.tenant_mut(tenant).reservations.get_mut(&id)
        {
            *known = seen;
        }
    }

    fn upsert_tenant(
        &mut self,
        id: &'static str,
        name: Option<&'static str>,
        currency: Option<Currency>,
        wait: bool,
    ) {
        let limits = self.limits();
        let got = self
            .engine
            .upsert_tenant(id, name, currency, &context(None))
            .map(|(_, created, lsn)| (created, lsn));
        let want = self
            .model
            .upsert_tenant(&mut self.history, &limits, id, name, currency);
        expect_same("upsert_tenant", &got, &want);
        self.acknowledge(wait, got.ok().map(|(_, lsn)| lsn));
    }

    fn upsert_user(
        &mut self,
        tenant: &'static str,
        user: &'static str,
        profile: Profile,
        wait: bool,
    ) {
        let limits = self.limits();
        let handle = self.tenant(tenant).expect("tenant");
        let record = ProfileUpdate {
            email: profile.0,
            name: profile.1,
            metadata: profile.2,
        };
        let got = self
            .engine
            .upsert_user(&handle, user, record, &context(None));
        let want = self
            .model
            .upsert_user(&mut self.history, &limits, tenant, user, profile);
        expect_same("upsert_user", &got, &want);
        self.acknowledge(wait, got.ok().map(|(_, lsn)| lsn));
    }

    /// `Engine::expire_reservations`. It visits users in hash order, each user's due reservations
    /// one after the other; the users' last LSNs afterwards give that order to the model.
    fn expire(&mut self, at: i64) {
        let got = self.engine.expire_reservations(at);
        let mut expired = 0;
        let tenants: Vec<&'static str> = self.model.tenants.keys().copied().collect();
        for tenant in tenants {
            let handle = self.tenant(tenant).expect("tenant");
            let mut due: Vec<(Lsn, &'static str)> = self.model.tenants[tenant]
                .users
                .iter()
                .filter(|(_, user)| user.holds.iter().any(|h| h.expires_at_ms <= at))
                .map(|(id, _)| {
                    let view = handle.user(id).unwrap_or_else(|e| panic!("user {id}: {e}"));
                    (view.last_lsn, *id)
                })
                .collect();
            due.sort_unstable();
            for (_, user) in due {
                expired += self.model.expire_due(&mut self.history, tenant, user, at);
            }
        }
        expect_same("expire_reservations", &got, &Ok(expired));
    }

    fn flush(&mut self) {
        if let Err(error) = self.engine.wal().flush() {
            panic!("flush failed on a healthy disk: {error}");
        }
        self.acked = self.model.next_lsn - 1;
    }

    fn snapshot(&mut self) {
        let summary = self
            .engine
            .snapshot()
            .unwrap_or_else(|error| panic!("snapshot failed on a healthy disk: {error}"));
        assert_eq!(
            summary.start_lsn, self.model.next_lsn,
            "a quiet snapshot starts elsewhere"
        );
        let bytes = self
            .storage
            .read_all(&summary.path)
            .expect("the snapshot file exists");
        let read = read_snapshot(&bytes).expect("the engine's snapshot reads back");
        if let Err(error) = check_snapshot_chunks(&read.chunks) {
            panic!("the engine's own snapshot fails check_chunks: {error}");
        }
        assert_eq!(read.header.start_lsn, summary.start_lsn);
        check_engine_loads(&bytes, read.header, true);
    }

    /// A crash (or a graceful shutdown) and a restart; see [`op::RESTART`].
    fn restart(&mut self, how: u8, tear: u8) {
        let keep = (how / 4) % 3;
        match how % 4 {
            1 => self.flush(),
            3 => {
                let summary = self
                    .engine
                    .shutdown()
                    .unwrap_or_else(|error| panic!("shutdown failed on a healthy disk: {error}"));
                assert!(summary.is_some(), "a graceful shutdown took no snapshot");
                self.acked = self.model.next_lsn - 1;
            }
            _ => {}
        }
        self.acked = self.acked.max(self.engine.wal().durable_lsn());
        let image = self.storage.crash_image(|_, unsynced| match keep {
            0 => 0,
            1 => unsynced,
            _ => unsynced / 2,
        });
        // Let the old log finish writing: what it wrote after the crash point is a torn write.
        let _ = self.engine.wal().close();
        let torn = (keep == 0).then(|| self.tear(&image, tear));
        let now = self.now();
        let files_before = files(&image);
        let verified = Engine::verify(&self.options, Arc::new(image.clone()), now);
        assert!(
            files(&image) == files_before,
            "verify changed the data directory"
        );
        let engine = Engine::open(
            self.options.clone(),
            Arc::new(image.clone()),
            Arc::clone(&self.clock) as Arc<dyn Clock>,
        )
        .unwrap_or_else(|error| panic!("creditd cannot recover after a crash: {error}"));
        let report = engine.recovery_report().clone();
        match verified {
            Ok(verified) => assert_eq!(
                verified.next_lsn, report.next_lsn,
                "verify and open disagree"
            ),
            Err(error) => panic!("verify refuses a directory that opens: {error}"),
        }
        if let Some(partial) = torn {
            let discarded = report.torn_tail.as_ref().map(|torn| torn.discarded_bytes);
            assert_eq!(
                discarded,
                (partial > 0).then_some(partial),
                "the torn tail was not cut as written"
            );
        }
        let recovered = engine.wal().next_lsn() - 1;
        assert!(
            recovered >= self.acked,
            "acknowledged records were lost: durable through LSN {}, recovered through {recovered}",
            self.acked
        );
        assert!(
            recovered < self.model.next_lsn,
            "recovery found records never written"
        );
        let index = self
            .history
            .iter()
            .rposition(|(lsn, _)| *lsn == recovered)
            .expect("the history holds every LSN since the last restart");
        self.history.truncate(index + 1);
        self.model = self.history[index].1.clone();
        self.model
            .after_restart(self.idempotency_ttl_seconds, &self.options.limits, now);
        self.storage = image;
        self.engine = engine;
        self.acked = recovered;
        if let Err(violation) = self.engine.check_invariants() {
            panic!("invariant broken after recovery: {violation}");
        }
        self.compare();
        self.compare_keys();
    }

    /// Puts back `tear / 255` of what the old log wrote to its last segment after the crash point,
    /// as a write torn by the power cut; returns the bytes of the last, incomplete batch in it.
    fn tear(&self, image: &MemStorage, tear: u8) -> u64 {
        let wal_dir = self.options.wal_dir();
        let names = image.list(&wal_dir).expect("the log directory survives");
        let Some(last) = segment::from_listing(&wal_dir, &names).pop() else {
            return 0;
        };
        let durable = image.read_all(&last.path).expect("listed segment");
        let Ok(written) = self.storage.read_all(&last.path) else {
            return 0;
        };
        assert!(
            written.starts_with(&durable),
            "the log changed bytes it had synced"
        );
        let after = &written[durable.len()..];
        let torn = &after[..after.len() * tear as usize / 255];
        if torn.is_empty() {
            return 0;
        }
        image
            .append_durably(&last.path, torn)
            .expect("memory storage");
        let mut at = 0;
        while at + batch::BATCH_HEADER_BYTES <= torn.len() {
            let body_len = le_u32(&torn[at + 4..]) as usize;
            let end = at + batch::BATCH_HEADER_BYTES + body_len + batch::BATCH_TRAILER_BYTES;
            if end > torn.len() {
                break;
            }
            at = end;
        }
        (torn.len() - at) as u64
    }

    /// Compares the whole engine state with the model.
    fn compare(&mut self) {
        assert_eq!(
            self.engine.wal().next_lsn(),
            self.model.next_lsn,
            "creditd wrote another number of records than the model"
        );
        let ids: Vec<String> = self
            .engine
            .tenants()
            .iter()
            .map(|t| t.id().to_owned())
            .collect();
        let expected: Vec<&str> = self.model.tenants.keys().copied().collect();
        assert_eq!(ids, expected, "tenants differ");
        let mut keys = 0;
        let mut seen = Vec::new();
        for (id, model) in &self.model.tenants {
            let handle = self.engine.tenant(id).expect("tenant");
            compare_tenant(&handle, model);
            keys += model.keys.len() as u64;
            for (reservation, entry) in &model.reservations {
                if let MReservation::Closed {
                    user, how, known, ..
                } = *entry
                {
                    let closed = ReservationView {
                        reservation_id: *reservation,
                        user_id: user.to_owned(),
                        currency: None,
                        amount: None,
                        state: ReservationState::Closed(how),
                    };
                    let got = handle.reservation(*reservation);
                    let now_known = match (&got, known) {
                        (Ok(view), Known::Present | Known::Maybe) if *view == closed => Known::Present,
                        (Err(EngineError::NotFound(Missing::Reservation)), Known::Purged | Known::Maybe) => Known::Purged,
                        _ => panic!("reservation {reservation} should be {known:?} {closed:?}, creditd has {got:?}"),
                    };
                    seen.push((*id, *reservation, now_known));
                }
            }
        }
        for (tenant, reservation, known) in seen {
            self.settle_known(tenant, reservation, known);
        }
        assert_eq!(
            self.engine.idempotency_entries(),
            keys,
            "idempotency key count differs"
        );
    }

    /// Compares the stored idempotency answers with the model, through the state image.
    fn compare_keys(&self) {
        let got: Vec<String> = self
            .engine
            .state_image()
            .lines
            .into_iter()
            .filter(|line| line.starts_with("key "))
            .collect();
        let mut expected: Vec<String> = Vec::new();
        for (tenant, model) in &self.model.tenants {
            for (key, entry) in &model.keys {
                expected.push(format!(
                    "key {tenant}/{key} fp={:?} lsn={} {:?}",
                    entry.fingerprint, entry.lsn, entry.outcome
                ));
            }
        }
        expected.sort();
        assert_eq!(got, expected, "stored idempotency answers differ");
    }
}

fn files(storage: &MemStorage) -> Vec<(PathBuf, Vec<u8>)> {
    storage
        .paths()
        .into_iter()
        .map(|path| {
            let bytes = storage.read_all(&path).unwrap_or_default();
            (path, bytes)
        })
        .collect()
}

fn compare_tenant(handle: &Tenant, model: &MTenant) {
    let view = handle.view();
    let id = &view.tenant_id;
    assert_eq!(view.name.as_deref(), model.name, "tenant {id}: name");
    assert_eq!(
        view.default_currency, model.default_currency,
        "tenant {id}: currency"
    );
    assert_eq!(view.users, model.users.len(), "tenant {id}: user count");
    let actions: Vec<(String, i64, Currency, Option<String>)> = handle
        .actions()
        .into_iter()
        .map(|a| (a.action, a.cost, a.currency, a.description))
        .collect();
    let expected: Vec<(String, i64, Currency, Option<String>)> = model
        .actions
        .iter()
        .map(|(name, a)| {
            (
                name.to_string(),
                a.cost,
                a.currency,
                a.description.map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(actions, expected, "tenant {id}: actions");
    let packages: Vec<String> = handle
        .packages()
        .into_iter()
        .map(|p| p.package_id)
        .collect();
    let expected: Vec<String> = model.packages.iter().map(|p| p.to_string()).collect();
    assert_eq!(packages, expected, "tenant {id}: packages");
    for (user, account) in &model.users {
        let got = handle
            .user(user)
            .unwrap_or_else(|error| panic!("tenant {id}, user {user}: {error}"));
        let wallets: Vec<WalletView> = account.wallets.iter().map(MWallet::view).collect();
        assert_eq!(got.wallets, wallets, "tenant {id}, user {user}: wallets");
        assert_eq!(
            got.reservations_open,
            account.holds.len(),
            "tenant {id}, user {user}: open reservations"
        );
        assert_eq!(
            got.last_lsn, account.last_lsn,
            "tenant {id}, user {user}: last LSN"
        );
        let profile = (
            got.email.as_deref(),
            got.name.as_deref(),
            got.metadata.as_deref(),
        );
        assert_eq!(
            profile, account.profile,
            "tenant {id}, user {user}: profile"
        );
        for hold in &account.holds {
            let expected = ReservationView {
                reservation_id: hold.id,
                user_id: user.to_string(),
                currency: Some(hold.currency),
                amount: Some(hold.amount),
                state: ReservationState::Open {
                    expires_at_ms: hold.expires_at_ms,
                },
            };
            assert_eq!(
                handle.reservation(hold.id),
                Ok(expected),
                "tenant {id}: reservation {}",
                hold.id
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

/// One generated input of a fuzz target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// For an input that reproduces a bug the fuzzers found: what it shows (it names the file).
    pub finding: Option<&'static str>,
    /// The input.
    pub bytes: Vec<u8>,
}

impl Seed {
    fn plain(bytes: Vec<u8>) -> Seed {
        Seed {
            finding: None,
            bytes,
        }
    }

    fn finding(finding: &'static str, bytes: Vec<u8>) -> Seed {
        Seed {
            finding: Some(finding),
            bytes,
        }
    }
}

/// The generated inputs committed under `fuzz/corpus/<target>/`: seeds built from real records,
/// snapshots and operation sequences, and the reproducers of bugs the fuzzers found, built with
/// the current formats so that a format change cannot turn them into inputs that test nothing.
/// `tests/fuzz_corpora.rs` runs them, and writes them when `CREDITD_WRITE_CORPUS=1`.
pub mod seeds {
    use super::Seed;

    /// Inputs of [`super::record_decode`].
    pub fn record_decode() -> Vec<Seed> {
        super::seed_record_decode()
    }

    /// Inputs of [`super::snapshot_decode`].
    pub fn snapshot_decode() -> Vec<Seed> {
        super::seed_snapshot_decode()
    }

    /// Inputs of [`super::engine_ops`].
    pub fn engine_ops() -> Vec<Seed> {
        super::seed_engine_ops()
    }
}

fn sample_events() -> Vec<Vec<u8>> {
    use crate::engine::event::{
        ActionUse, IdempotencyTag, Meta, PaymentTerms, TenantSettingsRecord, WalletRef,
    };
    use crate::engine::types::ReleaseReason;
    use crate::engine::types::{Decline, PaymentPurpose};
    let ngn = Currency::new("NGN").expect("currency");
    let wallet = WalletRef {
        tenant: "acme",
        user: "alice",
        currency: Currency::CREDITS,
    };
    let meta = Meta {
        time_ms: T0,
        actor: "admin-key",
        description: Some("a description"),
        reference: Some("ref-1"),
        metadata: Some("{\"k\":1}"),
        idempotency: Some(IdempotencyTag {
            key: "9b2f-1",
            fingerprint: [7; 16],
        }),
    };
    let action = Some(ActionUse {
        name: "gpt-call",
        quantity: 3,
        unit_cost: 5,
    });
    let events = [
        Event::TenantUpserted {
            tenant: "acme",
            settings: TenantSettingsRecord {
                name: Some("Acme"),
                default_currency: Currency::CREDITS,
            },
            meta: Meta::system(T0),
        },
        Event::UserUpserted {
            tenant: "acme",
            user: "alice",
            profile: ProfileRecord {
                email: Some("a@example.com"),
                name: Some("Alice"),
                metadata: None,
            },
            default_currency: Currency::CREDITS,
            meta,
        },
        Event::OverdraftSet {
            wallet,
            limit: 100,
            meta: Meta::system(T0),
        },
        Event::Credited {
            wallet,
            kind: CreditKind::Topup,
            amount: 1_000,
            balance_after: 1_000,
            available_after: 1_000,
            meta,
        },
        Event::Debited {
            wallet,
            kind: DebitKind::Usage,
            amount: 15,
            balance_after: 985,
            available_after: 985,
            action,
            meta,
        },
        Event::ReservationPlaced {
            wallet,
            amount: i64::MAX,
            expires_at_ms: i64::MAX,
            reserved_after: i64::MAX,
            available_after: i64::MIN,
            action: None,
            meta: Meta::system(i64::MIN),
        },
        Event::ReservationCaptured {
            wallet,
            reservation_id: 4,
            held: 10,
            charged: 12,
            balance_after: 973,
            reserved_after: 0,
            available_after: 973,
            action,
            meta,
        },
        Event::ReservationExtended {
            wallet,
            reservation_id: 4,
            expires_at_ms: T0 + 300_000,
            meta,
        },
        Event::ReservationReleased {
            wallet: WalletRef {
                currency: ngn,
                ..wallet
            },
            reservation_id: u64::MAX,
            amount: 1,
            reason: ReleaseReason::Expired,
            reserved_after: 0,
            available_after: 0,
            meta: Meta::system(T0),
        },
        Event::ActionPut {
            tenant: "acme",
            action: "gpt-call",
            cost: 5,
            currency: ngn,
            description: Some("one call"),
            meta,
        },
        Event::ActionDeleted {
            tenant: "acme",
            action: "gpt-call",
            meta,
        },
        Event::PackagePut {
            tenant: "acme",
            package: "starter",
            terms: PackageRecord {
                name: "Starter",
                credits: 500,
                currency: Currency::CREDITS,
                price_minor: 250_000,
                price_currency: ngn,
                active: true,
            },
            meta,
        },
        Event::PackageDeleted {
            tenant: "acme",
            package: "starter",
            meta,
        },
        Event::PaymentInitialized {
            wallet,
            reference: "cd_01HZX",
            terms: PaymentTerms {
                package: "starter",
                credits: 500,
                amount_minor: 250_000,
                price_currency: ngn,
            },
            gateway: "paystack",
            purpose: PaymentPurpose::Checkout,
            meta,
        },
        Event::PaymentCheckoutOpened {
            wallet,
            reference: "cd_01HZX",
            checkout_url: "https://checkout.paystack.com/0peioxfhpn",
            meta: Meta::system(T0),
        },
        Event::PaymentSucceeded {
            wallet,
            reference: "cd_01HZX",
            credits: 500,
            paid_minor: 250_000,
            paid_currency: ngn,
            balance_after: 1_473,
            available_after: 1_473,
            method: Some(MethodRecord {
                gateway: "paystack",
                token: "AUTH_72btv547",
                customer: Some("a@example.com"),
                label: Some("visa 4081"),
            }),
            meta: Meta::system(T0),
        },
        Event::PaymentFailed {
            wallet,
            reference: "at_acme_alice_CREDITS_2",
            decline: Decline::Hard,
            reason: "Expired Card",
            meta: Meta::system(T0),
        },
        Event::PaymentUnmatched {
            gateway: "stripe",
            reference: "cd_unknown",
            detail: "checkout.session.completed evt_1",
            meta: Meta::system(T0),
        },
        Event::PaymentMethodSaved {
            wallet,
            method: MethodRecord {
                gateway: "stripe",
                token: "pm_card_visa",
                customer: Some("cus_1"),
                label: None,
            },
            meta: Meta::system(T0),
        },
        Event::AutoTopupSet {
            wallet,
            threshold: 100,
            package: "starter",
            payment_method: None,
            max_per_day: 3,
            meta,
        },
        Event::AutoTopupDisabled {
            wallet,
            reason: "Expired Card",
            meta: Meta::system(T0),
        },
        Event::AutoTopupDeleted { wallet, meta },
        Event::TenantWebhookSet {
            tenant: "acme",
            url: Some("https://app.example.com/hooks"),
            secret: Some(crate::engine::event::Secret("0123456789abcdef")),
            meta,
        },
    ];
    events
        .iter()
        .map(|event| {
            let mut payload = Vec::new();
            codec::encode_into(event, &mut payload).expect("sample events encode");
            payload
        })
        .collect()
}

fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    record::encode_into(&mut bytes, lsn, payload);
    bytes
}

/// Seeds for [`record_decode`]: real event records, a run of consecutive records, a whole
/// segment, and damaged variants (truncations, bit flips, zero tails, absurd lengths).
fn seed_record_decode() -> Vec<Seed> {
    let events = sample_events();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for (index, payload) in events.iter().enumerate() {
        seeds.push(frame(index as u64 + 1, payload));
    }
    let payloads: Vec<&[u8]> = events.iter().take(5).map(Vec::as_slice).collect();
    let mut run = batch::encode(100, &payloads[..3], 0);
    run.extend_from_slice(&batch::encode(103, &payloads[3..], 0));
    seeds.push(run.clone());
    let mut whole_segment = segment::encode_header(100, FORMAT_VERSION).to_vec();
    whole_segment.extend_from_slice(&run);
    seeds.push(whole_segment.clone());
    let sample = frame(42, &events[4]);
    for cut in [0, 1, 15, 16, 17, sample.len() / 2, sample.len() - 1] {
        seeds.push(sample[..cut].to_vec());
    }
    seeds.push(run[..run.len() - 7].to_vec());
    seeds.push(whole_segment[..whole_segment.len() - 3].to_vec());
    for bit in [0, 37, 70, 130, sample.len() * 8 - 1] {
        let mut flipped = sample.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        seeds.push(flipped);
    }
    let mut damaged_middle = run.clone();
    damaged_middle[sample.len() + 20] ^= 0x10;
    seeds.push(damaged_middle);
    let mut zero_tail = sample.clone();
    zero_tail.extend_from_slice(&[0u8; 64]);
    seeds.push(zero_tail);
    seeds.push(vec![0u8; 48]);
    for len in [u32::MAX, RECORD_LIMIT + 1, 65] {
        let mut absurd = sample.clone();
        absurd[..4].copy_from_slice(&len.to_le_bytes());
        seeds.push(absurd);
    }
    let mut out_of_sequence = batch::encode(7, &[&events[0]], 0);
    out_of_sequence.extend_from_slice(&batch::encode(9, &[&events[1]], 0));
    seeds.push(out_of_sequence);
    seeds.extend(events.iter().take(3).cloned());
    let mut seeds: Vec<Seed> = seeds.into_iter().map(Seed::plain).collect();
    // Recovery's scan adds one to the LSN of each record it reads, unchecked.
    seeds.push(Seed::finding(
        "segment-scan-lsn-overflow",
        frame(u64::MAX, b"x"),
    ));
    seeds.push(Seed::plain(frame(crate::wal::MAX_LSN + 1, b"x")));
    seeds.push(Seed::plain(batch::encode(u64::MAX, &[b"x"], 0)));
    seeds.push(Seed::plain(batch::encode(
        crate::wal::MAX_LSN + 1,
        &[b"x"],
        0,
    )));
    seeds.push(Seed::finding(
        "torn-record-with-embedded-frame-reads-as-damage",
        record_with_embedded_frame(),
    ));
    seeds
}

/// A credit whose description holds the bytes of a complete, valid record claiming a later LSN,
/// as any client may send (JSON escapes give any byte). Cut by a power cut after the embedded
/// record, the segment's tail reads as damage rather than as a torn write.
fn record_with_embedded_frame() -> Vec<u8> {
    use crate::engine::event::{Meta, WalletRef};
    let embedded = (0u32..)
        .find_map(|tweak| String::from_utf8(frame(0x41, format!("p{tweak}").as_bytes())).ok())
        .expect("some payload makes the embedded record valid UTF-8");
    let description = format!("{embedded} and some text after it");
    let event = Event::Credited {
        wallet: WalletRef {
            tenant: "acme",
            user: "mallory",
            currency: Currency::CREDITS,
        },
        kind: CreditKind::Grant,
        amount: 1,
        balance_after: 1,
        available_after: 1,
        meta: Meta {
            description: Some(&description),
            ..Meta::system(T0)
        },
    };
    let mut payload = Vec::new();
    codec::encode_into(&event, &mut payload).expect("the event encodes");
    frame(0x3c, &payload)
}

/// An empty engine on the crash-model storage.
fn open_engine() -> (MemStorage, Arc<Engine>) {
    let storage = MemStorage::new();
    let options = EngineOptions {
        data_dir: PathBuf::from("/data"),
        background: false,
        shards: 4,
        ..EngineOptions::default()
    };
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::open(options, Arc::new(storage.clone()), clock).expect("engine opens");
    (storage, engine)
}

/// An engine with some state of every kind on the crash-model storage.
fn busy_engine(users: usize) -> (MemStorage, Arc<Engine>) {
    let (storage, engine) = open_engine();
    let ngn = Currency::new("NGN").expect("currency");
    let admin = Context::actor("admin");
    let (tenant, _, _) = engine
        .upsert_tenant("acme", Some("Acme"), None, &admin)
        .expect("tenant");
    engine
        .put_action(&tenant, "gpt-call", 5, None, Some("one call"), &admin)
        .expect("action");
    let terms = PackageSpec {
        name: "Starter",
        credits: 500,
        currency: Currency::CREDITS,
        price_minor: 250_000,
        price_currency: ngn,
        active: true,
    };
    engine
        .put_package(&tenant, "starter", &terms, &admin)
        .expect("package");
    for index in 0..users {
        let user = format!("user-{index}");
        let user = user.as_str();
        let key = format!("credit-{index}");
        let profile = ProfileUpdate {
            email: (index % 2 == 0).then_some("someone@example.com"),
            name: None,
            metadata: None,
        };
        engine
            .upsert_user(&tenant, user, profile, &admin)
            .expect("user");
        let keyed = admin.with_key(IdempotencyKey {
            key: &key,
            fingerprint: [index as u8; 16],
        });
        engine
            .credit(
                &tenant,
                &CreditRequest::new(user, 1_000, CreditKind::Grant),
                &keyed,
            )
            .expect("credit");
        let mut foreign = CreditRequest::new(user, 50, CreditKind::Topup);
        foreign.currency = Some(ngn);
        engine.credit(&tenant, &foreign, &admin).expect("credit");
        let spend = Spend::Action {
            name: "gpt-call",
            quantity: 2,
        };
        engine
            .debit(&tenant, &DebitRequest::new(user, spend), &admin)
            .expect("debit");
        let held = engine
            .reserve(
                &tenant,
                &ReserveRequest::new(user, Spend::Amount(30)),
                &admin,
            )
            .expect("reserve");
        engine
            .reserve(
                &tenant,
                &ReserveRequest::new(user, Spend::Amount(20)),
                &admin,
            )
            .expect("reserve");
        let capture = CaptureRequest {
            reservation_id: held.lsn,
            amount: Some(25),
            description: None,
            metadata: None,
        };
        engine.capture(&tenant, &capture, &admin).expect("capture");
        engine
            .set_overdraft(&tenant, user, None, 10, &admin)
            .expect("overdraft");
        // Payments: one settled with a saved card, one pending, and a rule that uses the card.
        for (suffix, settle) in [("paid", true), ("open", false)] {
            let reference = format!("cd_{index}_{suffix}");
            let request = CheckoutRequest {
                user,
                package: "starter",
                reference: &reference,
                gateway: "sandbox",
            };
            engine
                .start_checkout(&tenant, &request, &admin)
                .expect("checkout");
            if settle {
                let verdict = Verdict::Paid {
                    paid_minor: 250_000,
                    paid_currency: ngn,
                    method: Some(MethodDetails {
                        gateway: "sandbox",
                        token: "card_ok",
                        customer: Some("someone@example.com"),
                        label: Some("visa 4081"),
                    }),
                };
                engine
                    .settle_payment(&reference, "sandbox", &verdict, "")
                    .expect("settle");
            }
        }
        let rule = AutoTopupRequest {
            user,
            currency: None,
            threshold: 100,
            package: "starter",
            payment_method: None,
            max_per_day: 3,
        };
        engine.set_auto_topup(&tenant, &rule, &admin).expect("rule");
    }
    if users > 0 {
        engine
            .set_tenant_webhook(
                &tenant,
                Some("https://app.example.com/hooks"),
                Some("0123456789abcdef"),
                &admin,
            )
            .expect("webhook");
    }
    engine
        .upsert_tenant("beta", None, Some(ngn), &admin)
        .expect("tenant");
    engine.wal().flush().expect("flush");
    (storage, engine)
}

/// Seeds for [`snapshot_decode`]: real snapshot files of engines with state, damaged variants of
/// them, and their chunks joined by [`CHUNK_SEPARATOR`].
fn seed_snapshot_decode() -> Vec<Seed> {
    let mut seeds = Vec::new();
    for users in [0, 1, 3] {
        let (storage, engine) = busy_engine(users);
        let summary = engine.snapshot().expect("snapshot");
        let file = storage.read_all(&summary.path).expect("snapshot file");
        let read = read_snapshot(&file).expect("the snapshot reads back");
        check_engine_loads(&file, read.header, true);
        seeds.push(read.chunks.join(CHUNK_SEPARATOR));
        if users == 1 {
            for cut in [
                0,
                39,
                40,
                56,
                file.len() / 2,
                file.len() - 33,
                file.len() - 1,
            ] {
                seeds.push(file[..cut].to_vec());
            }
            for byte in [0, 9, 20, 44, 60, file.len() - 20, file.len() - 1] {
                let mut flipped = file.clone();
                flipped[byte] ^= 0x04;
                seeds.push(flipped);
            }
            let mut trailing = file.clone();
            trailing.extend_from_slice(b"junk");
            seeds.push(trailing);
            let mut absurd = file.clone();
            absurd[SNAPSHOT_HEADER_BYTES..SNAPSHOT_HEADER_BYTES + 4]
                .copy_from_slice(&u32::MAX.to_le_bytes());
            seeds.push(absurd);
            for chunk in &read.chunks {
                seeds.push(chunk.clone());
            }
            let mut reordered = read.chunks.clone();
            reordered.rotate_left(1);
            seeds.push(reordered.join(CHUNK_SEPARATOR));
            let mut short = read.chunks.clone();
            short.pop();
            seeds.push(short.join(CHUNK_SEPARATOR));
        }
        seeds.push(file);
    }
    let mut seeds: Vec<Seed> = seeds.into_iter().map(Seed::plain).collect();
    // An engine with no state, its snapshot rewritten to say replay starts at LSN 0.
    let (storage, engine) = open_engine();
    let summary = engine.snapshot().expect("snapshot");
    let file = storage.read_all(&summary.path).expect("snapshot file");
    let read = read_snapshot(&file).expect("the snapshot reads back");
    let header = SnapshotHeader {
        start_lsn: 0,
        created_at_ms: T0,
    };
    seeds.push(Seed::finding(
        "snapshot-start-lsn-zero",
        write_snapshot(header, &read.chunks),
    ));
    seeds
}

/// Builds [`engine_ops`] inputs: a limits profile byte, then operations.
struct Script(Vec<u8>);

impl Script {
    fn new(profile: u8) -> Script {
        Script(vec![profile])
    }

    fn op(mut self, code: u8, args: &[u8]) -> Script {
        self.0.push(code);
        self.0.extend_from_slice(args);
        self
    }

    fn wait(self, code: u8, args: &[u8]) -> Script {
        self.op(code | op::WAIT, args)
    }
}

/// Seeds for [`engine_ops`]: scenarios that reach each operation under each limits profile, and
/// some longer pseudo-random sequences.
fn seed_engine_ops() -> Vec<Seed> {
    // Argument bytes index the tables in `Input`: amount 4 is 100, 5 is 1000, 9 is i64::MAX,
    // 10 is limits.max_amount; user 0..2 are u0..u2; key byte 1 is k0 with fingerprint 0.
    let mut seeds = Vec::new();
    for profile in 0..3u8 {
        let basics = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 2, 0, 0, 0])
            .wait(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 5, 0, 0, 1, 0])
            .op(op::DEBIT, &[0, 1, 4, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 9, 1, 2, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 10, 1, 0, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 10, 1, 0, 0, 0, 0, 0])
            .wait(op::REVOKE, &[0, 0, 2, 0, 0, 0])
            .op(op::REVOKE, &[0, 0, 2, 1, 0, 0]);
        seeds.push(basics.0);
        let reservations = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .wait(op::RESERVE, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 3, 0, 1, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 2, 0, 2, 0, 1, 0])
            .wait(op::CAPTURE, &[0, 0, 3, 0, 0])
            .op(op::EXTEND, &[0, 4, 3, 0])
            .op(op::RELEASE, &[0, 4, 0])
            .op(op::CAPTURE, &[0, 0, 0, 0, 0])
            .op(op::CLOCK, &[10])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 5, 0, 0, 0, 0, 0])
            .op(op::CLOCK, &[13])
            .op(op::EXPIRE, &[0])
            .op(op::CAPTURE, &[0, 8, 0, 0, 0])
            .op(op::PURGE, &[])
            .op(op::RELEASE, &[0, 0, 0]);
        seeds.push(reservations.0);
        let keys = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 1])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 1])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 9])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 3])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 3])
            .op(op::DEBIT, &[0, 0, 6, 0, 0, 0, 5])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 7])
            .op(op::RESTART, &[0, 0])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 3])
            .op(op::CLOCK, &[13])
            .op(op::PURGE, &[])
            .op(op::RESTART, &[1, 0])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 1]);
        seeds.push(keys.0);
        let overdraft = Script::new(profile)
            .wait(op::SET_OVERDRAFT, &[0, 0, 0, 4])
            .op(op::DEBIT, &[0, 0, 3, 0, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 4, 0, 0, 0, 0])
            .op(op::SET_OVERDRAFT, &[0, 0, 0, 0])
            .op(op::SET_OVERDRAFT, &[0, 0, 0, 7])
            .op(op::SET_OVERDRAFT, &[0, 1, 2, 10])
            .op(op::RESERVE, &[0, 1, 0, 4, 2, 0, 0, 0, 0])
            .op(op::SET_OVERDRAFT, &[0, 2, 0, 4]);
        seeds.push(overdraft.0);
        let catalogue = Script::new(profile)
            .wait(op::PUT_ACTION, &[0, 0, 2, 0, 2])
            .op(op::PUT_ACTION, &[0, 1, 10, 2, 0])
            .op(op::PUT_ACTION, &[0, 2, 2, 0, 0])
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 2, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 5, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 1, 0, 0, 0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 7, 0, 1, 0])
            .op(op::RESERVE, &[0, 0, 1, 0, 1, 0, 0, 0, 0, 0])
            .op(op::DELETE_ACTION, &[0, 0])
            .op(op::DELETE_ACTION, &[0, 0])
            .op(op::DEBIT_ACTION, &[0, 0, 0, 0, 0, 0, 0])
            .op(op::PUT_PACKAGE, &[0, 0, 0, 4, 0, 4, 1])
            .op(op::PUT_PACKAGE, &[0, 1, 1, 4, 0, 4, 1])
            .op(op::DELETE_PACKAGE, &[0, 0])
            .op(op::DELETE_PACKAGE, &[0, 0]);
        seeds.push(catalogue.0);
        let tenants = Script::new(profile)
            .wait(op::UPSERT_TENANT, &[1, 1, 2])
            .op(op::UPSERT_TENANT, &[1, 1, 0])
            .op(op::UPSERT_TENANT, &[1, 2, 1])
            .op(op::UPSERT_TENANT, &[0, 3, 0])
            .op(op::UPSERT_TENANT, &[2, 0, 0])
            .wait(op::UPSERT_USER, &[1, 0, 2, 0, 0])
            .op(op::UPSERT_USER, &[1, 0, 2, 0, 0])
            .op(op::UPSERT_USER, &[1, 0, 0, 2, 5])
            .op(op::UPSERT_USER, &[0, 3, 0, 0, 0])
            .op(op::CREDIT, &[1, 0, 4, 0, 0, 0, 0, 0, 0])
            .op(op::CREDIT, &[1, 0, 4, 0, 2, 0, 0, 0, 0])
            .op(op::DEBIT, &[1, 0, 3, 3, 0, 0, 0])
            .op(op::SNAPSHOT, &[])
            .op(op::RESTART, &[2, 0]);
        seeds.push(tenants.0);
        let crashes = Script::new(profile)
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .op(op::CREDIT, &[0, 1, 5, 0, 0, 5, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .op(op::RESTART, &[0, 128])
            .op(op::CREDIT, &[0, 0, 5, 0, 0, 5, 0, 0, 0])
            .op(op::DEBIT, &[0, 0, 3, 0, 0, 0, 0])
            .op(op::RESTART, &[0, 255])
            .op(op::CREDIT, &[0, 0, 4, 0, 0, 0, 0, 5, 0])
            .op(op::RESTART, &[4, 0])
            .op(op::CREDIT, &[0, 0, 4, 0, 0, 0, 0, 0, 0])
            .op(op::RESTART, &[8, 0])
            .op(op::SNAPSHOT, &[])
            .op(op::CREDIT, &[0, 1, 4, 0, 0, 0, 0, 0, 0])
            .op(op::RESTART, &[3, 0])
            .op(op::VERIFY, &[])
            .op(op::FLUSH, &[]);
        seeds.push(crashes.0);
        let time = Script::new(profile)
            .wait(op::CREDIT, &[0, 0, 5, 0, 0, 0, 0, 0, 0])
            .op(op::RESERVE, &[0, 0, 0, 4, 0, 6, 0, 0, 1])
            .op(op::CLOCK, &[15])
            .op(op::RESERVE, &[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .op(op::EXTEND, &[0, 0, 6, 0])
            .op(op::EXPIRE, &[3])
            .op(op::PURGE, &[])
            .op(op::RESTART, &[0, 0])
            .op(op::EXPIRE, &[4]);
        seeds.push(time.0);
    }
    // Longer sequences from a fixed pseudo-random stream, mostly valid arguments.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for length in [200, 400, 800, 1200, 1600, 2400, 3200, 4000] {
        let mut bytes = Vec::with_capacity(length);
        for _ in 0..length {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push((state >> 24) as u8 & if bytes.len() % 5 == 0 { 0xff } else { 0x07 });
        }
        seeds.push(bytes);
    }
    let mut seeds: Vec<Seed> = seeds.into_iter().map(Seed::plain).collect();
    // The widest limits the config accepts: a balance of i64::MAX with an overdraft of i64::MAX
    // can reserve i64::MAX, then 1 more: `reserved + amount` overflows.
    let overflow = Script::new(2)
        .wait(op::CREDIT, &[0, 0, 9, 0, 0, 0, 0, 0, 0])
        .wait(op::SET_OVERDRAFT, &[0, 0, 0, 9])
        .wait(op::RESERVE, &[0, 0, 0, 9, 0, 0, 0, 0, 0])
        .op(op::RESERVE, &[0, 0, 0, 0, 0, 0, 0, 0, 0]);
    seeds.push(Seed::finding("reserve-reserved-after-overflow", overflow.0));
    seeds
}
