//! `wal/log-end`: where the log is known to reach. Each time the writer starts a segment, once
//! the segment and its directory entry are durable, it records the segment's first LSN here
//! (written to `log-end.tmp`, synced, renamed over `log-end`, directory synced). Recovery then
//! knows that this segment exists: if it is gone (deleted by hand, lost with a restored backup),
//! the start is refused instead of silently ending the log early and reissuing its LSNs.
//!
//! ```text
//! offset  size  field
//! 0       8     magic           "CREDITDE"
//! 8       8     segment_lsn     u64 LE, the first LSN of the newest segment the writer started
//! 16      4     crc             u32 LE, CRC-32C over bytes 0 .. 16
//! 20      4     padding         zero
//! ```
//!
//! A file written once per segment (at a start and at each rotation) costs nothing per batch; what
//! it cannot tell, the batch frames do (see [`super::batch`]).

use std::io;
use std::path::{Path, PathBuf};

use super::segment::{self, SegmentFile};
use super::storage::Storage;

/// The file's name inside the log directory.
pub const FILE_NAME: &str = "log-end";
const TEMPORARY_NAME: &str = "log-end.tmp";
const MAGIC: &[u8; 8] = b"CREDITDE";
const BYTES: usize = 24;

/// Why `log-end` cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EndError {
    /// Reading it failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// It is not a valid `log-end` file (it is only ever replaced whole, by a rename).
    #[error("{}: damaged (bad length, magic or checksum)", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
    },
}

/// The bytes of a `log-end` naming the segment that starts at `segment_lsn`.
pub fn encode(segment_lsn: u64) -> [u8; BYTES] {
    let mut bytes = [0u8; BYTES];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..16].copy_from_slice(&segment_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// The segment LSN a `log-end` file holds, or `None` if the bytes are not one.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != BYTES || &bytes[..8] != MAGIC || bytes[20..] != [0u8; 4] {
        return None;
    }
    let stored = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32c::crc32c(&bytes[..16]) != stored {
        return None;
    }
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&bytes[8..16]);
    Some(u64::from_le_bytes(lsn))
}

/// Durably records that the segment starting at `segment_lsn` exists in `dir`.
pub fn write(storage: &dyn Storage, dir: &Path, segment_lsn: u64) -> io::Result<()> {
    let temporary = dir.join(TEMPORARY_NAME);
    let mut file = storage.create(&temporary)?;
    file.write_all(&encode(segment_lsn))?;
    file.sync_data()?;
    drop(file);
    storage.rename(&temporary, &dir.join(FILE_NAME))?;
    storage.sync_dir(dir)
}

/// The segment LSN recorded in `dir`, or `None` when there is no `log-end` (a log that has not
/// finished starting its first segment).
pub fn read(storage: &dyn Storage, dir: &Path) -> Result<Option<u64>, EndError> {
    let path = dir.join(FILE_NAME);
    let names = storage.list(dir).map_err(|source| EndError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !names.iter().any(|name| name == FILE_NAME) {
        return Ok(None);
    }
    let bytes = storage.read_all(&path).map_err(|source| EndError::Io {
        path: path.clone(),
        source,
    })?;
    decode(&bytes).map(Some).ok_or(EndError::Damaged { path })
}

/// Checks that the segment `log-end` names is among `segments`; the message names what is
/// missing.
pub fn check(dir: &Path, segments: &[SegmentFile], segment_lsn: u64) -> Result<(), String> {
    if segments.iter().any(|file| file.first_lsn == segment_lsn) {
        return Ok(());
    }
    let newest = segments.last().map_or_else(
        || "the log directory holds no segment".to_owned(),
        |file| format!("the newest segment is {}", file.path.display()),
    );
    Err(format!(
        "{} is missing: {} records that the log reached it, and {newest}; the records from LSN \
         {segment_lsn} on are gone (a deleted or lost segment)",
        dir.join(segment::file_name(segment_lsn)).display(),
        dir.join(FILE_NAME).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::memory::MemStorage;

    #[test]
    fn round_trips_and_refuses_damage() {
        let bytes = encode(483_911);
        assert_eq!(decode(&bytes), Some(483_911));
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode(&flipped), None, "bit {bit}");
        }
        assert_eq!(decode(&bytes[..20]), None);
    }

    #[test]
    fn written_durably_and_checked_against_the_listing() {
        let storage = MemStorage::new();
        let dir = Path::new("/data/wal");
        storage.create_dir_all(dir).unwrap();
        assert_eq!(read(&storage, dir).unwrap(), None);
        write(&storage, dir, 7).unwrap();
        storage.crash();
        assert_eq!(read(&storage, dir).unwrap(), Some(7));
        let names = vec![segment::file_name(1), segment::file_name(7)];
        let segments = segment::from_listing(dir, &names);
        assert!(check(dir, &segments, 7).is_ok());
        let message = check(dir, &segments[..1], 7).unwrap_err();
        assert!(
            message.contains("00000000000000000007.log is missing"),
            "{message}"
        );
    }
}
