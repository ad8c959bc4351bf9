//! Recovery: the newest valid snapshot, then every log record from its start LSN on, then the
//! invariants. A torn tail in the last segment is cut off and reported; damage anywhere else stops
//! the start with a message naming the file and offset.

use std::path::PathBuf;
use std::time::Instant;

use super::invariants::{self, Figures};
use super::snapshot;
use super::state::State;
use super::types::Lsn;
use super::EngineOptions;
use crate::codec;
use crate::wal::reader::{self, ReadError};
use crate::wal::segment::{self, SegmentFile};
use crate::wal::snapshot as snapshot_file;
use crate::wal::SharedStorage;

/// Why the engine would not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A segment is damaged somewhere other than an unfinished tail.
    #[error("{}: damaged log: {detail}", path.display())]
    Damage {
        /// The segment.
        path: PathBuf,
        /// What and where (byte offset).
        detail: String,
    },
    /// A record is intact but cannot be applied.
    #[error("{} offset {offset}: record LSN {lsn} cannot be applied: {detail}", path.display())]
    Replay {
        /// The segment.
        path: PathBuf,
        /// The record's byte offset.
        offset: u64,
        /// The record's LSN.
        lsn: Lsn,
        /// Why.
        detail: String,
    },
    /// Segments are missing: the log does not cover what the snapshot needs.
    #[error("log is incomplete: {0}")]
    Gap(String),
    /// The recovered state breaks an invariant.
    #[error("recovered state is inconsistent: {0}")]
    Invariant(#[from] invariants::InvariantViolation),
}

/// An unfinished write cut off the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment.
    pub path: PathBuf,
    /// Where the valid data ends and the file now ends.
    pub offset: u64,
    /// Bytes discarded.
    pub discarded_bytes: u64,
}

/// What recovery did.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any.
    pub snapshot: Option<PathBuf>,
    /// Its start LSN.
    pub snapshot_start_lsn: Option<Lsn>,
    /// Newer snapshots that could not be read and were passed over.
    pub snapshots_skipped: Vec<(PathBuf, String)>,
    /// Log segments read.
    pub segments: u64,
    /// Records applied from the log.
    pub records_replayed: u64,
    /// Records read but already contained in the snapshot.
    pub records_skipped: u64,
    /// The cut-off unfinished write, if there was one.
    pub torn_tail: Option<TornTail>,
    /// Why recovery could not fall back to an older snapshot if the one it loaded were lost:
    /// damage in, or gaps between, the segments only the older snapshot needs, or a newer
    /// snapshot already passed over. Empty when the fallback is intact. The start goes on; the
    /// server warns and shows these on `/readyz` and in a metric.
    pub fallback_problems: Vec<String>,
    /// The LSN the next record will get.
    pub next_lsn: Lsn,
    /// Time taken, seconds.
    pub seconds: f64,
    /// What the state holds.
    pub figures: Figures,
}

pub(crate) struct Recovered {
    pub state: State,
    pub report: RecoveryReport,
}

/// Whether recovery may change files: remove unfinished snapshots and cut a torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Opening the engine: repair what a crash leaves behind.
    Repair,
    /// Checking a data directory: read only.
    ReadOnly,
}

pub(crate) fn recover(
    storage: &SharedStorage,
    options: &EngineOptions,
    now_ms: i64,
    mode: Mode,
) -> Result<Recovered, OpenError> {
    let started = Instant::now();
    let io = |path: PathBuf| move |source| OpenError::Io { path, source };
    let wal_dir = options.wal_dir();
    let idempotency_cutoff_ms =
        now_ms.saturating_sub(seconds_to_ms(options.idempotency_ttl_seconds));
    let Snapshotted {
        state,
        loaded,
        skipped,
    } = load_snapshot(storage, options, now_ms, mode)?;
    let start_lsn = loaded.as_ref().map_or(1, |(_, lsn)| *lsn);

    let segments = segment::from_listing(
        &wal_dir,
        &storage.list(&wal_dir).map_err(io(wal_dir.clone()))?,
    );
    match crate::wal::end::read(&**storage, &wal_dir) {
        Ok(Some(segment_lsn)) => {
            crate::wal::end::check(&wal_dir, &segments, segment_lsn).map_err(OpenError::Gap)?
        }
        Ok(None) => {}
        Err(error) => {
            return Err(OpenError::Damage {
                path: wal_dir.join(crate::wal::end::FILE_NAME),
                detail: error.to_string(),
            })
        }
    }
    let start = Start {
        lsn: start_lsn,
        snapshot: loaded.as_ref().map(|(path, _)| path.as_path()),
    };
    let replay = replay_log(storage, &segments, &start, &state, idempotency_cutoff_ms)?;
    let replayed_from = segments.len().min(replay.first + 1);
    let fallback_problems = check_fallback(storage, &segments[..replayed_from], &skipped);
    for problem in &fallback_problems {
        tracing::warn!(%problem, "the fallback snapshot could not be recovered from");
    }
    if mode == Mode::Repair {
        let loaded = loaded.as_ref().map(|(path, _)| path.as_path());
        repair(
            storage,
            options,
            &segments,
            replay.torn_tail.as_ref(),
            &replay.zeroed,
            loaded,
        )?;
    }
    let figures = invariants::check(&state, replay.next_lsn)?;
    let report = RecoveryReport {
        snapshot: loaded.as_ref().map(|(path, _)| path.clone()),
        snapshot_start_lsn: loaded.as_ref().map(|(_, lsn)| *lsn),
        snapshots_skipped: skipped,
        segments: replay.segments,
        records_replayed: replay.replayed,
        records_skipped: replay.skipped,
        torn_tail: replay.torn_tail,
        fallback_problems,
        next_lsn: replay.next_lsn,
        seconds: started.elapsed().as_secs_f64(),
        figures,
    };
    log_recovered(&report);
    Ok(Recovered { state, report })
}

/// A snapshot loaded, as (its path, the LSN replay starts from).
type Loaded = Option<(PathBuf, Lsn)>;

/// What loading the newest readable snapshot gave.
struct Snapshotted {
    /// The snapshot's state, or an empty one.
    state: State,
    /// Which snapshot that was.
    loaded: Loaded,
    /// Snapshots skipped on the way, with why.
    skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest snapshot that loads (or starts empty). In repair mode, removes unfinished
/// snapshot files first.
fn load_snapshot(
    storage: &SharedStorage,
    options: &EngineOptions,
    now_ms: i64,
    mode: Mode,
) -> Result<Snapshotted, OpenError> {
    let io = |path: PathBuf| move |source| OpenError::Io { path, source };
    let snapshot_dir = options.snapshot_dir();
    let idempotency_cutoff_ms =
        now_ms.saturating_sub(seconds_to_ms(options.idempotency_ttl_seconds));
    let reservation_cutoff_ms = now_ms.saturating_sub(seconds_to_ms(
        options.limits.closed_reservation_retention_seconds,
    ));
    let snapshot_names = storage
        .list(&snapshot_dir)
        .map_err(io(snapshot_dir.clone()))?;
    for name in snapshot_names
        .iter()
        .filter(|name| mode == Mode::Repair && snapshot_file::is_temporary(name))
    {
        let path = snapshot_dir.join(name);
        storage.remove(&path).map_err(io(path))?;
    }
    let empty = || {
        State::new(
            options.shards,
            seconds_to_ms(options.payment_retention_seconds),
        )
    };
    let mut state = empty();
    let mut skipped = Vec::new();
    for candidate in snapshot_file::from_listing(&snapshot_dir, &snapshot_names) {
        match snapshot::load(
            storage,
            &candidate,
            &state,
            crate::wal::record::MAX_RECORD_BYTES_LIMIT,
            idempotency_cutoff_ms,
            reservation_cutoff_ms,
        ) {
            Ok(start_lsn) => {
                return Ok(Snapshotted {
                    state,
                    loaded: Some((candidate.path, start_lsn)),
                    skipped,
                })
            }
            Err(error) => {
                tracing::warn!(path = %candidate.path.display(), %error, "snapshot unreadable; trying an older one");
                skipped.push((candidate.path, error.to_string()));
                state = empty();
            }
        }
    }
    Ok(Snapshotted {
        state,
        loaded: None,
        skipped,
    })
}

/// Cuts a torn tail off the log and makes durable what recovery built on.
fn repair(
    storage: &SharedStorage,
    options: &EngineOptions,
    segments: &[SegmentFile],
    torn: Option<&TornTail>,
    zeroed: &[(PathBuf, u64)],
    loaded: Option<&std::path::Path>,
) -> Result<(), OpenError> {
    let io = |path: PathBuf| move |source| OpenError::Io { path, source };
    let wal_dir = options.wal_dir();
    if let Some(torn) = torn {
        // A segment whose header itself is torn holds no record: it is named for the next LSN,
        // and the log's first act is to create that segment again over it. It is not removed:
        // a crash between a removal and that creation could leave a log directory without the
        // segment a snapshot needs (refused at the next start).
        if torn.offset > 0 {
            storage
                .truncate(&torn.path, torn.offset)
                .map_err(io(torn.path.clone()))?;
        }
        tracing::warn!(
            path = %torn.path.display(),
            offset = torn.offset,
            discarded_bytes = torn.discarded_bytes,
            "cut an unfinished write off the end of the log"
        );
    }
    // Space the writer zeroed ahead of itself holds nothing: trimmed, so that every segment but
    // the one being written ends at its last batch, and the disk space is given back.
    for (path, offset) in zeroed {
        if torn.is_some_and(|torn| &torn.path == path) {
            continue;
        }
        storage.truncate(path, *offset).map_err(io(path.clone()))?;
    }
    // What was replayed may be bytes the previous process wrote but never synced (it died
    // between write and fdatasync): the page cache serves them all the same. This process
    // builds on them and acknowledges retries from them, so they are made durable first.
    for file in segments {
        storage
            .sync_file(&file.path)
            .map_err(io(file.path.clone()))?;
    }
    storage.sync_dir(&wal_dir).map_err(io(wal_dir.clone()))?;
    if let Some(path) = loaded {
        storage.sync_file(path).map_err(io(path.to_path_buf()))?;
        let dir = options.snapshot_dir();
        storage.sync_dir(&dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Says what recovery found and how fast it replayed.
fn log_recovered(report: &RecoveryReport) {
    let seconds = report.seconds;
    let rate = if seconds > 0.0 {
        report.records_replayed as f64 / seconds
    } else {
        0.0
    };
    let figures = report.figures;
    tracing::info!(
        snapshot = ?report.snapshot,
        records = report.records_replayed,
        seconds = format!("{seconds:.3}"),
        records_per_second = format!("{rate:.0}"),
        next_lsn = report.next_lsn,
        tenants = figures.tenants,
        users = figures.users,
        wallets = figures.wallets,
        reservations = figures.reservations_open,
        pools = figures.pools,
        "recovered"
    );
}

struct Replay {
    segments: u64,
    replayed: u64,
    skipped: u64,
    next_lsn: Lsn,
    torn_tail: Option<TornTail>,
    /// Segments ending in zeroed space, and where it begins.
    zeroed: Vec<(PathBuf, u64)>,
    /// The index of the first segment replay read: those before it are only the fallback's.
    first: usize,
}

/// The snapshot replay starts from, for messages.
struct Start<'a> {
    lsn: Lsn,
    snapshot: Option<&'a std::path::Path>,
}

fn replay_log(
    storage: &SharedStorage,
    segments: &[SegmentFile],
    start: &Start<'_>,
    state: &State,
    idempotency_cutoff_ms: i64,
) -> Result<Replay, OpenError> {
    let start_lsn = start.lsn;
    if segments.is_empty() {
        if let Some(snapshot) = start.snapshot {
            return Err(OpenError::Gap(format!(
                "{} starts at LSN {start_lsn} but the log directory is empty",
                snapshot.display()
            )));
        }
    }
    let range = reader::Range {
        from_lsn: start_lsn,
        until_lsn: u64::MAX,
        format_version: codec::FORMAT_VERSION,
        // The configured limit is for new records: ones written under a higher one still read.
        max_record_bytes: crate::wal::record::MAX_RECORD_BYTES_LIMIT,
    };
    let mut tenant_cache = None;
    let visit = |file: &SegmentFile, offset: u64, frame: crate::wal::record::Frame<'_>| {
        let fail = |detail: String| OpenError::Replay {
            path: file.path.clone(),
            offset,
            lsn: frame.lsn,
            detail,
        };
        let event = codec::decode(frame.payload).map_err(|e| fail(e.to_string()))?;
        state
            .replay(frame.lsn, &event, idempotency_cutoff_ms, &mut tenant_cache)
            .map_err(|e| fail(e.to_string()))
    };
    let read = reader::read(&**storage, segments, range, visit).map_err(|error| match error {
        ReadError::Io { path, source } => OpenError::Io { path, source },
        ReadError::Damage { path, detail } => OpenError::Damage { path, detail },
        ReadError::Visit(error) => error,
        gap @ (ReadError::Missing { .. } | ReadError::Gap { .. }) => {
            OpenError::Gap(gap.to_string())
        }
    })?;
    if read.next_lsn < start_lsn {
        let snapshot = start.snapshot.map_or_else(
            || "the snapshot".to_owned(),
            |path| path.display().to_string(),
        );
        let (last, valid_end) = read.last.unwrap_or_default();
        return Err(OpenError::Gap(format!(
            "the log ends at LSN {} ({} ends at offset {valid_end}) before {snapshot} starts at \
             LSN {start_lsn}: the segment was cut or its end is lost",
            read.next_lsn.saturating_sub(1),
            last.display(),
        )));
    }
    Ok(Replay {
        segments: read.segments,
        replayed: read.records,
        skipped: read.skipped,
        next_lsn: read.next_lsn,
        torn_tail: read.unfinished.map(|unfinished| TornTail {
            path: unfinished.path,
            offset: unfinished.offset,
            discarded_bytes: unfinished.bytes,
        }),
        zeroed: read.zeroed,
        first: read.first,
    })
}

/// Reads the segments before the first one replay needed (what an older snapshot would replay)
/// and says what would stop a recovery from it: damage, or a gap up to `upto`, the first segment
/// replay read. Only reads; never fails the start.
fn check_fallback(
    storage: &SharedStorage,
    upto: &[SegmentFile],
    skipped_snapshots: &[(PathBuf, String)],
) -> Vec<String> {
    let Some((replayed, older)) = upto.split_last() else {
        return Vec::new();
    };
    let mut problems: Vec<String> = skipped_snapshots
        .iter()
        .map(|(path, error)| {
            format!(
                "{} is unreadable ({error}): recovery already uses the older snapshot",
                path.display()
            )
        })
        .collect();
    // The configured limit is for new records: ones written under a higher one still read.
    let limit = crate::wal::record::MAX_RECORD_BYTES_LIMIT;
    let mut each = reader::EachSegment::new(&**storage, older, codec::FORMAT_VERSION, limit);
    while let Some(segment) = each.next_segment(|_, _, _| Ok::<(), std::convert::Infallible>(())) {
        let path = segment.file.path.display();
        if let Some(expected) = segment.gap_after {
            problems.push(gap_problem(segment.file, expected));
        }
        match segment.read {
            // Not the last segment of the log: replay read at least one after it.
            Ok(read) => problems.extend(read.unfinished.map(|unfinished| {
                format!(
                    "{path}: bad batch at offset {} ({}) in a segment that is not the last",
                    unfinished.offset, unfinished.reason
                )
            })),
            Err(reader::ReadError::Io { source, .. }) => problems.push(format!("{path}: {source}")),
            Err(reader::ReadError::Damage { detail, .. }) => {
                problems.push(format!("{path}: {detail}"))
            }
            Err(reader::ReadError::Visit(never)) => match never {},
            Err(error) => problems.push(error.to_string()),
        }
    }
    if let Some(expected) = each.expected().filter(|&lsn| lsn != replayed.first_lsn) {
        problems.push(gap_problem(replayed, expected));
    }
    problems
}

fn gap_problem(file: &SegmentFile, expected: Lsn) -> String {
    format!(
        "{} starts at LSN {}, the segment before it ends before LSN {expected}: a segment is \
         missing",
        file.path.display(),
        file.first_lsn
    )
}

fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}
