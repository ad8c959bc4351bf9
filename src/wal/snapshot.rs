//! Snapshot files: `snap/<start_lsn>.snap`, a 40-byte header, chunks framed exactly like log records
//! (with a chunk sequence number in the LSN field), and a trailer frame.
//!
//! ```text
//! header
//! offset  size  field
//! 0       8     magic           "CREDITDS"
//! 8       4     format_version  u32 LE, the payload codec's version
//! 12      4     reserved        zero
//! 16      8     start_lsn       u64 LE: replay starts here; equal to the number in the file name
//! 24      8     created_at_ms   i64 LE, Unix milliseconds
//! 32      4     crc             u32 LE, CRC-32C over bytes 0 .. 32
//! 36      4     padding         zero
//! chunks: frames with sequence numbers 1, 2, 3, … and opaque payloads
//! trailer: a frame with sequence number u64::MAX and a 16-byte payload:
//!          chunk count u64 LE, total chunk payload bytes u64 LE
//! ```
//!
//! A snapshot is written to `<name>.tmp`, synced, renamed into place and its directory synced, so a
//! crash leaves either no snapshot or a whole one. The writer runs its file I/O on a thread of its
//! own: the producer hands it chunks through a small bounded channel and never touches the disk.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::record::{self, FrameError, HEADER_BYTES};
use super::storage::{SharedStorage, StorageFile};

/// Bytes of the snapshot header.
pub const SNAPSHOT_HEADER_BYTES: usize = 40;
const MAGIC: &[u8; 8] = b"CREDITDS";
const EXTENSION: &str = ".snap";
const TMP_EXTENSION: &str = ".snap.tmp";
const TRAILER_SEQUENCE: u64 = u64::MAX;
/// Chunks in flight between producer and file thread.
const CHANNEL_CHUNKS: usize = 8;
/// Bytes of a snapshot written between two write-backs ([`StorageFile::write_back`]): the most
/// of it the page cache holds unwritten, and so the most a sync of the log can find queued
/// ahead of it at the disk.
const WRITE_BACK_BYTES: u64 = 8 << 20;

/// The file name of the snapshot that starts replay at `start_lsn`.
pub fn file_name(start_lsn: u64) -> String {
    format!("{start_lsn:020}{EXTENSION}")
}

/// Parses a snapshot file name; other names, temporary files included, give `None`.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(EXTENSION)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a name is a snapshot left unfinished by a crash.
pub fn is_temporary(name: &str) -> bool {
    name.ends_with(TMP_EXTENSION)
}

/// A snapshot file found in the snapshot directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The LSN replay starts from.
    pub start_lsn: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The snapshots in a directory listing, newest (highest start LSN) first.
pub fn from_listing(dir: &Path, names: &[String]) -> Vec<SnapshotFile> {
    let mut files: Vec<SnapshotFile> = names
        .iter()
        .filter_map(|name| {
            parse_file_name(name).map(|start_lsn| SnapshotFile {
                start_lsn,
                path: dir.join(name),
            })
        })
        .collect();
    files.sort_by_key(|file| std::cmp::Reverse(file.start_lsn));
    files
}

/// The fields of a snapshot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Replay starts at this LSN.
    pub start_lsn: u64,
    /// When the snapshot began, in Unix milliseconds.
    pub created_at_ms: i64,
}

fn encode_header(header: SnapshotHeader, format_version: u32) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut bytes = [0u8; SNAPSHOT_HEADER_BYTES];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..12].copy_from_slice(&format_version.to_le_bytes());
    bytes[16..24].copy_from_slice(&header.start_lsn.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.created_at_ms.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..32]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Why a snapshot cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The header is not a snapshot header.
    #[error("not a creditd snapshot (bad magic or header checksum)")]
    BadHeader,
    /// Written by a codec version this build cannot read.
    #[error("snapshot format version {found} is not supported (this build reads {supported})")]
    Version {
        /// In the file.
        found: u32,
        /// Read by this build.
        supported: u32,
    },
    /// A chunk frame is bad.
    #[error("chunk {sequence} at offset {offset}: {reason}")]
    Frame {
        /// The chunk's expected sequence number.
        sequence: u64,
        /// Its byte offset.
        offset: u64,
        /// What is wrong.
        reason: FrameError,
    },
    /// Chunks are missing or out of order.
    #[error("chunk at offset {offset} has sequence {found}, expected {expected}")]
    Sequence {
        /// Its byte offset.
        offset: u64,
        /// Found.
        found: u64,
        /// Expected.
        expected: u64,
    },
    /// The trailer does not match what was read.
    #[error(
        "trailer counts {trailer_chunks} chunks / {trailer_bytes} bytes, read {chunks} / {bytes}"
    )]
    Trailer {
        /// Chunks the trailer counts.
        trailer_chunks: u64,
        /// Bytes the trailer counts.
        trailer_bytes: u64,
        /// Chunks read.
        chunks: u64,
        /// Bytes read.
        bytes: u64,
    },
    /// Data follows the trailer.
    #[error("{0} bytes follow the trailer")]
    TrailingBytes(u64),
}

/// What a finished snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Where it is.
    pub path: PathBuf,
    /// Replay starts here.
    pub start_lsn: u64,
    /// Chunks written.
    pub chunks: u64,
    /// File size in bytes.
    pub bytes: u64,
}

struct FileThreadResult {
    file: Box<dyn StorageFile>,
    chunks: u64,
    payload_bytes: u64,
    file_bytes: u64,
}

/// Writes one snapshot. Chunks go to a file thread through a bounded channel; nothing is visible
/// under the final name until [`SnapshotWriter::commit`] has synced it.
pub struct SnapshotWriter {
    sender: Option<Sender<Vec<u8>>>,
    thread: Option<JoinHandle<io::Result<FileThreadResult>>>,
    storage: SharedStorage,
    dir: PathBuf,
    start_lsn: u64,
    tmp_path: PathBuf,
    final_path: PathBuf,
}

impl SnapshotWriter {
    /// Creates `<dir>/<start_lsn>.snap.tmp` and writes the header.
    pub fn create(
        storage: SharedStorage,
        dir: &Path,
        header: SnapshotHeader,
        format_version: u32,
    ) -> io::Result<SnapshotWriter> {
        let final_path = dir.join(file_name(header.start_lsn));
        let tmp_path = dir.join(format!("{:020}{TMP_EXTENSION}", header.start_lsn));
        let mut file = storage.create(&tmp_path)?;
        if let Err(error) = file.write_all(&encode_header(header, format_version)) {
            let _ = storage.remove(&tmp_path);
            return Err(error);
        }
        let (sender, receiver) = crossbeam_channel::bounded(CHANNEL_CHUNKS);
        let thread = std::thread::Builder::new()
            .name("creditd-snapshot-io".into())
            .spawn(move || write_chunks(file, &receiver))?;
        Ok(SnapshotWriter {
            sender: Some(sender),
            thread: Some(thread),
            storage,
            dir: dir.to_path_buf(),
            start_lsn: header.start_lsn,
            tmp_path,
            final_path,
        })
    }

    /// Queues one chunk (an opaque, non-empty payload) for the file thread.
    pub fn write_chunk(&mut self, payload: Vec<u8>) -> io::Result<()> {
        debug_assert!(!payload.is_empty());
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| io::Error::other("snapshot writer finished"))?;
        sender
            .send(payload)
            .map_err(|_| io::Error::other("snapshot file thread stopped"))
    }

    fn join(&mut self) -> io::Result<FileThreadResult> {
        self.sender.take();
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("snapshot writer finished"))?;
        thread
            .join()
            .map_err(|_| io::Error::other("snapshot file thread panicked"))?
    }

    /// Writes the trailer, syncs the file, renames it into place and syncs the directory.
    pub fn commit(mut self) -> io::Result<SnapshotSummary> {
        let result = self.join().and_then(|mut done| {
            let mut trailer = Vec::with_capacity(HEADER_BYTES + 16);
            let mut counts = [0u8; 16];
            counts[..8].copy_from_slice(&done.chunks.to_le_bytes());
            counts[8..].copy_from_slice(&done.payload_bytes.to_le_bytes());
            record::encode_into(&mut trailer, TRAILER_SEQUENCE, &counts);
            done.file.write_all(&trailer)?;
            done.file.sync_data()?;
            self.storage.rename(&self.tmp_path, &self.final_path)?;
            self.storage.sync_dir(&self.dir)?;
            Ok(SnapshotSummary {
                path: self.final_path.clone(),
                start_lsn: self.start_lsn,
                chunks: done.chunks,
                bytes: done.file_bytes + trailer.len() as u64,
            })
        });
        if result.is_err() {
            let _ = self.storage.remove(&self.tmp_path);
        }
        result
    }

    /// Gives up: stops the file thread and removes the temporary file.
    pub fn abort(mut self) {
        let _ = self.join();
        let _ = self.storage.remove(&self.tmp_path);
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
            let _ = self.storage.remove(&self.tmp_path);
        }
    }
}

fn write_chunks(
    mut file: Box<dyn StorageFile>,
    receiver: &Receiver<Vec<u8>>,
) -> io::Result<FileThreadResult> {
    let mut buffer = Vec::with_capacity(1 << 20);
    let mut chunks = 0u64;
    let mut payload_bytes = 0u64;
    let mut file_bytes = SNAPSHOT_HEADER_BYTES as u64;
    let mut written_back = 0u64;
    for payload in receiver {
        chunks += 1;
        payload_bytes += payload.len() as u64;
        record::encode_into(&mut buffer, chunks, &payload);
        if buffer.len() >= 1 << 20 {
            file.write_all(&buffer)?;
            file_bytes += buffer.len() as u64;
            buffer.clear();
            if file_bytes - written_back >= WRITE_BACK_BYTES {
                file.write_back(written_back, file_bytes - written_back)?;
                written_back = file_bytes;
            }
        }
    }
    file.write_all(&buffer)?;
    file_bytes += buffer.len() as u64;
    Ok(FileThreadResult {
        file,
        chunks,
        payload_bytes,
        file_bytes,
    })
}

/// Reads a snapshot chunk by chunk, checking every frame and the trailer.
pub struct SnapshotReader {
    reader: Box<dyn Read + Send>,
    header: SnapshotHeader,
    max_chunk_bytes: u32,
    offset: u64,
    chunks: u64,
    payload_bytes: u64,
    finished: bool,
}

impl SnapshotReader {
    /// Opens a snapshot and checks its header.
    pub fn open(
        storage: &SharedStorage,
        path: &Path,
        format_version: u32,
        max_chunk_bytes: u32,
    ) -> Result<SnapshotReader, SnapshotError> {
        let mut reader = storage.open_read(path)?;
        let mut bytes = [0u8; SNAPSHOT_HEADER_BYTES];
        read_exact_or_short(&mut reader, &mut bytes).map_err(|_| SnapshotError::BadHeader)?;
        let stored = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
        if &bytes[..8] != MAGIC || crc32c::crc32c(&bytes[..32]) != stored {
            return Err(SnapshotError::BadHeader);
        }
        let found = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if found != format_version {
            return Err(SnapshotError::Version {
                found,
                supported: format_version,
            });
        }
        let mut start = [0u8; 8];
        start.copy_from_slice(&bytes[16..24]);
        let mut created = [0u8; 8];
        created.copy_from_slice(&bytes[24..32]);
        let header = SnapshotHeader {
            start_lsn: u64::from_le_bytes(start),
            created_at_ms: i64::from_le_bytes(created),
        };
        Ok(SnapshotReader {
            reader,
            header,
            max_chunk_bytes,
            offset: SNAPSHOT_HEADER_BYTES as u64,
            chunks: 0,
            payload_bytes: 0,
            finished: false,
        })
    }

    /// The header.
    pub fn header(&self) -> SnapshotHeader {
        self.header
    }

    /// Reads the next chunk into `buffer`; `Ok(false)` once the trailer has been read and checked.
    pub fn next_chunk(&mut self, buffer: &mut Vec<u8>) -> Result<bool, SnapshotError> {
        if self.finished {
            return Ok(false);
        }
        let sequence = self.chunks + 1;
        let frame_error = |offset, reason| SnapshotError::Frame {
            sequence,
            offset,
            reason,
        };
        let mut head = [0u8; HEADER_BYTES];
        let got = read_exact_or_short(&mut self.reader, &mut head)?;
        if got < HEADER_BYTES {
            let reason = FrameError::Truncated {
                needed: HEADER_BYTES as u64,
                available: got as u64,
            };
            return Err(frame_error(self.offset, reason));
        }
        let header = record::read_header(&head, self.max_chunk_bytes)
            .map_err(|e| frame_error(self.offset, e))?;
        buffer.clear();
        buffer.extend_from_slice(&head);
        buffer.resize(HEADER_BYTES + header.len as usize, 0);
        let got = read_exact_or_short(&mut self.reader, &mut buffer[HEADER_BYTES..])?;
        if got < header.len as usize {
            let needed = HEADER_BYTES as u64 + u64::from(header.len);
            let reason = FrameError::Truncated {
                needed,
                available: (HEADER_BYTES + got) as u64,
            };
            return Err(frame_error(self.offset, reason));
        }
        let frame = record::decode(buffer, self.max_chunk_bytes)
            .map_err(|e| frame_error(self.offset, e))?;
        let frame_offset = self.offset;
        self.offset += frame.encoded_len() as u64;
        if frame.lsn == TRAILER_SEQUENCE {
            return self.finish(frame.payload).map(|()| false);
        }
        if frame.lsn != sequence {
            return Err(SnapshotError::Sequence {
                offset: frame_offset,
                found: frame.lsn,
                expected: sequence,
            });
        }
        self.chunks = sequence;
        self.payload_bytes += frame.payload.len() as u64;
        buffer.drain(..HEADER_BYTES);
        Ok(true)
    }

    fn finish(&mut self, payload: &[u8]) -> Result<(), SnapshotError> {
        let mut counts = [0u64; 2];
        if payload.len() == 16 {
            for (i, count) in counts.iter_mut().enumerate() {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&payload[i * 8..i * 8 + 8]);
                *count = u64::from_le_bytes(bytes);
            }
        }
        if payload.len() != 16 || counts != [self.chunks, self.payload_bytes] {
            return Err(SnapshotError::Trailer {
                trailer_chunks: counts[0],
                trailer_bytes: counts[1],
                chunks: self.chunks,
                bytes: self.payload_bytes,
            });
        }
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        if !rest.is_empty() {
            return Err(SnapshotError::TrailingBytes(rest.len() as u64));
        }
        self.finished = true;
        Ok(())
    }
}

/// Reads until `buffer` is full or the input ends; returns how many bytes were read.
fn read_exact_or_short(reader: &mut dyn Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::wal::memory::MemStorage;
    use crate::wal::storage::Storage;

    const VERSION: u32 = 1;

    /// A writer in `/snap` that has been handed `chunks`, not committed.
    fn writing(storage: &MemStorage, chunks: &[&[u8]]) -> SnapshotWriter {
        let shared: SharedStorage = Arc::new(storage.clone());
        let dir = Path::new("/snap");
        storage.create_dir_all(dir).unwrap();
        let header = SnapshotHeader {
            start_lsn: 77,
            created_at_ms: 1_700_000_000_000,
        };
        let mut writer = SnapshotWriter::create(shared, dir, header, VERSION).unwrap();
        for chunk in chunks {
            writer.write_chunk(chunk.to_vec()).unwrap();
        }
        writer
    }

    fn write(storage: &MemStorage, chunks: &[&[u8]]) -> SnapshotSummary {
        writing(storage, chunks).commit().unwrap()
    }

    fn read_all(storage: &MemStorage, path: &Path) -> Result<Vec<Vec<u8>>, SnapshotError> {
        let shared: SharedStorage = Arc::new(storage.clone());
        let mut reader = SnapshotReader::open(&shared, path, VERSION, 1 << 20)?;
        assert_eq!(reader.header().start_lsn, 77);
        let mut chunks = Vec::new();
        let mut buffer = Vec::new();
        while reader.next_chunk(&mut buffer)? {
            chunks.push(buffer.clone());
        }
        Ok(chunks)
    }

    #[test]
    fn round_trip_survives_a_crash_once_committed() {
        let storage = MemStorage::new();
        let summary = write(&storage, &[b"one", b"two", b"three"]);
        storage.crash();
        assert_eq!(summary.bytes, storage.len(&summary.path).unwrap());
        let chunks = read_all(&storage, &summary.path).unwrap();
        assert_eq!(
            chunks,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(
            storage.list(Path::new("/snap")).unwrap(),
            vec![file_name(77)]
        );
    }

    /// 24 MiB of chunks: written back at every 8 MiB as they go (a range past what was written
    /// is an error in the in-memory storage), read back whole once committed, and not one byte
    /// of the file durable before the commit's sync.
    #[test]
    fn a_large_snapshot_is_written_back_as_it_goes_and_durable_only_once_committed() {
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let chunks: Vec<&[u8]> = (0..24).map(|_| &chunk[..]).collect();
        let storage = MemStorage::new();
        let summary = write(&storage, &chunks);
        let read = read_all(&storage, &summary.path).unwrap();
        assert_eq!(read.len(), 24);
        assert!(read.iter().all(|read| read == &chunk));

        let storage = MemStorage::new();
        let mut writer = writing(&storage, &chunks);
        let written = writer.join().unwrap();
        assert!(written.file_bytes > 3 * WRITE_BACK_BYTES);
        storage.sync_dir(Path::new("/snap")).unwrap();
        let tmp = writer.tmp_path.clone();
        assert_eq!(storage.len(&tmp).unwrap(), written.file_bytes);
        let image = storage.crash_image(|_, _| 0);
        assert_eq!(image.len(&tmp).unwrap(), 0, "written back is not durable");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let storage = MemStorage::new();
        let summary = write(&storage, &[b"alpha", b"beta"]);
        let bytes = storage.read_all(&summary.path).unwrap();
        for cut in 0..bytes.len() {
            let damaged = MemStorage::new();
            damaged.create_dir_all(Path::new("/snap")).unwrap();
            damaged
                .create(&summary.path)
                .unwrap()
                .write_all(&bytes[..cut])
                .unwrap();
            assert!(
                read_all(&damaged, &summary.path).is_err(),
                "truncated at {cut} and still read"
            );
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let damaged = MemStorage::new();
            damaged.create_dir_all(Path::new("/snap")).unwrap();
            damaged
                .create(&summary.path)
                .unwrap()
                .write_all(&flipped)
                .unwrap();
            // Padding and reserved header bytes are not covered; everything else is.
            let in_unchecked_header_bytes =
                (12..16).contains(&(bit / 8)) || (36..40).contains(&(bit / 8));
            if !in_unchecked_header_bytes {
                assert!(
                    read_all(&damaged, &summary.path).is_err(),
                    "bit {bit} flipped and still read"
                );
            }
        }
    }

    #[test]
    fn names_parse_and_temporary_files_are_not_snapshots() {
        assert_eq!(parse_file_name(&file_name(5)), Some(5));
        assert!(is_temporary("00000000000000000005.snap.tmp"));
        assert_eq!(parse_file_name("00000000000000000005.snap.tmp"), None);
        let listing = vec![file_name(5), file_name(50), "x.snap".into()];
        let newest: Vec<u64> = from_listing(Path::new("/s"), &listing)
            .iter()
            .map(|s| s.start_lsn)
            .collect();
        assert_eq!(newest, vec![50, 5]);
    }
}
