//! Retention holds: named "keep the log from this LSN on" marks that segment removal respects,
//! besides the snapshots. A reader of the log that keeps a position of its own (the history store,
//! a stream that resumes) holds the log from the first record it has not yet durably applied, and
//! moves its hold forward as it goes, so that pruning after a snapshot never removes a segment it
//! still has to read.
//!
//! Holds live in memory. A reader that knows its position before the engine opens passes it in
//! the engine's options, so that the hold is in place before the first snapshot could prune;
//! after that it moves the hold with [`Retention::hold`].
//!
//! This module decides which segments may go; it does no I/O.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::segment::SegmentFile;

/// The named holds on the log. Cheap to consult: pruning takes the lock once per snapshot.
#[derive(Debug, Default)]
pub struct Retention {
    holds: Mutex<BTreeMap<String, u64>>,
}

impl Retention {
    /// Holds from `initial`, as (name, first LSN still needed).
    pub fn new(initial: &[(String, u64)]) -> Retention {
        Retention {
            holds: Mutex::new(initial.iter().cloned().collect()),
        }
    }

    /// Sets or moves the hold `name`: every record from `from_lsn` on stays in the log.
    pub fn hold(&self, name: &str, from_lsn: u64) {
        self.holds.lock().insert(name.to_owned(), from_lsn);
    }

    /// Removes the hold `name`; false if there was none.
    pub fn release(&self, name: &str) -> bool {
        self.holds.lock().remove(name).is_some()
    }

    /// The holds in force, by name.
    pub fn holds(&self) -> Vec<(String, u64)> {
        self.holds
            .lock()
            .iter()
            .map(|(name, lsn)| (name.clone(), *lsn))
            .collect()
    }

    /// The first LSN some hold still needs, if any hold is in force.
    pub fn keep_from(&self) -> Option<u64> {
        self.holds.lock().values().copied().min()
    }
}

/// The segments that hold no record at or after `keep_from`: each one whose successor starts at or
/// before it. The newest segment is never among them.
pub fn removable(segments: &[SegmentFile], keep_from: u64) -> Vec<&SegmentFile> {
    segments
        .windows(2)
        .filter(|pair| pair[1].first_lsn <= keep_from)
        .map(|pair| &pair[0])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::segment;
    use std::path::Path;

    #[test]
    fn the_lowest_hold_wins_and_released_holds_no_longer_count() {
        let retention = Retention::new(&[("history".to_owned(), 40)]);
        assert_eq!(retention.keep_from(), Some(40));
        retention.hold("stream", 12);
        assert_eq!(retention.keep_from(), Some(12));
        retention.hold("stream", 90);
        assert_eq!(retention.keep_from(), Some(40));
        assert!(retention.release("history"));
        assert!(!retention.release("history"));
        assert_eq!(retention.keep_from(), Some(90));
        assert!(retention.release("stream"));
        assert_eq!(retention.keep_from(), None);
    }

    #[test]
    fn only_segments_wholly_before_the_mark_may_go() {
        let names: Vec<String> = [1, 100, 200, 300].map(segment::file_name).to_vec();
        let segments = segment::from_listing(Path::new("/w"), &names);
        let firsts = |keep_from| -> Vec<u64> {
            removable(&segments, keep_from)
                .iter()
                .map(|s| s.first_lsn)
                .collect()
        };
        assert_eq!(firsts(1), Vec::<u64>::new());
        assert_eq!(firsts(150), vec![1]);
        assert_eq!(firsts(200), vec![1, 100]);
        assert_eq!(firsts(u64::MAX), vec![1, 100, 200]);
    }
}
