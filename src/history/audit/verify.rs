//! `creditd audit verify`: walks the chain from seq 1 to its anchored head and names the first
//! record that was changed, removed or moved.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{unhex, Canonical, Hash, GENESIS};

/// A chain that checks out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// How many records it holds.
    pub records: u64,
    /// The hash of the last one ([`GENESIS`] when there is none).
    pub last_hash: Hash,
}

/// What is wrong at the first bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// A field no longer gives the stored hash.
    Changed,
    /// The record is not there: a gap in seq, or the chain ends before its anchored head.
    Missing,
    /// The record sits at another place than the one it was written at (its LSN is out of order
    /// with its neighbours').
    OutOfOrder,
    /// The chain does not end at its anchored head: records past it, or another last hash.
    Unanchored,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Damage::Changed => "changed",
            Damage::Missing => "missing",
            Damage::OutOfOrder => "out of order",
            Damage::Unanchored => "not the anchored head",
        })
    }
}

/// The first bad record of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub struct Broken {
    /// Its seq.
    pub seq: u64,
    /// Its LSN, when it is there to say.
    pub lsn: Option<u64>,
    /// The LSN of the last good record before it (0 when none).
    pub previous_lsn: u64,
    /// What is wrong.
    pub damage: Damage,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.lsn {
            Some(lsn) => write!(
                f,
                "audit chain broken at seq {} (lsn {lsn}): {}",
                self.seq, self.damage
            ),
            None => write!(
                f,
                "audit chain broken at seq {} (after lsn {}): {}",
                self.seq, self.previous_lsn, self.damage
            ),
        }
    }
}

/// Why [`verify`] gave no verdict, or its verdict.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken.
    #[error("{0}")]
    Broken(#[from] Broken),
    /// The database could not be read (or holds no audit).
    #[error("{0}")]
    Unreadable(#[from] rusqlite::Error),
}

/// Opens the history database at `path` read-only and checks its audit chain from seq 1 to the
/// anchored head.
pub fn verify(path: &Path) -> Result<Verified, VerifyError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    verify_connection(&connection)
}

/// [`verify`] on an open connection, in one read transaction: a feeder writing meanwhile cannot
/// move the head between the walk and its check.
pub fn verify_connection(connection: &Connection) -> Result<Verified, VerifyError> {
    let snapshot = connection.unchecked_transaction()?;
    let verified = walk(&snapshot);
    snapshot.finish()?;
    verified
}

fn walk(connection: &Connection) -> Result<Verified, VerifyError> {
    let mut statement = connection.prepare(
        "SELECT seq, lsn, tenant, at_ms, actor, action, target, before, after, hash
         FROM audit ORDER BY seq",
    )?;
    let mut rows = statement.query([])?;
    let mut records = 0u64;
    let mut last_hash = GENESIS;
    let mut previous_lsn = 0u64;
    let mut scratch = Vec::new();
    while let Some(row) = rows.next()? {
        let expected = records + 1;
        let seq = row.get::<_, i64>(0)?;
        let broken = |seq: u64, lsn: Option<u64>, damage| Broken {
            seq,
            lsn,
            previous_lsn,
            damage,
        };
        if seq != expected as i64 {
            // Seq is the key and rows come in its order: a larger one means some are gone; a
            // smaller one (zero or negative) was never written by creditd.
            let (at, damage) = if seq > expected as i64 {
                (expected, Damage::Missing)
            } else {
                (u64::try_from(seq).unwrap_or(0), Damage::Changed)
            };
            return Err(broken(at, None, damage).into());
        }
        let Some((record, stored)) = read_record(row, expected) else {
            let lsn = integer(row.get_ref(1)?);
            return Err(broken(expected, lsn, Damage::Changed).into());
        };
        let computed = record.hash(&last_hash, &mut scratch);
        if computed.is_none() || computed != Some(stored) {
            let damage = if out_of_order(connection, &record, previous_lsn)? {
                Damage::OutOfOrder
            } else {
                Damage::Changed
            };
            return Err(broken(expected, Some(record.lsn), damage).into());
        }
        records = expected;
        last_hash = stored;
        previous_lsn = record.lsn;
    }
    check_head(connection, records, last_hash, previous_lsn)?;
    Ok(Verified { records, last_hash })
}

/// The record of `row` and its stored hash; `None` if a field has a type creditd never writes.
fn read_record<'r>(row: &'r rusqlite::Row<'_>, seq: u64) -> Option<(Canonical<'r>, Hash)> {
    let text = |index| match row.get_ref(index).ok()? {
        rusqlite::types::ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    };
    let document = |index| match row.get_ref(index).ok()? {
        rusqlite::types::ValueRef::Null => Some(None),
        rusqlite::types::ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok().map(Some),
        _ => None,
    };
    let record = Canonical {
        seq,
        lsn: integer(row.get_ref(1).ok()?)?,
        at_ms: match row.get_ref(3).ok()? {
            rusqlite::types::ValueRef::Integer(at_ms) => at_ms,
            _ => return None,
        },
        tenant: text(2)?,
        actor: text(4)?,
        action: text(5)?,
        target: text(6)?,
        before: document(7)?,
        after: document(8)?,
    };
    Some((record, unhex(text(9)?)?))
}

/// A non-negative integer column.
fn integer(value: rusqlite::types::ValueRef<'_>) -> Option<u64> {
    match value {
        rusqlite::types::ValueRef::Integer(number) => u64::try_from(number).ok(),
        _ => None,
    }
}

/// Whether a record whose hash fails sits out of LSN order with its neighbours: each event makes
/// at most one record, in log order, so LSNs rise strictly along the chain.
fn out_of_order(
    connection: &Connection,
    record: &Canonical<'_>,
    previous_lsn: u64,
) -> Result<bool, rusqlite::Error> {
    if record.lsn <= previous_lsn {
        return Ok(true);
    }
    let seq = i64::try_from(record.seq).unwrap_or(i64::MAX);
    let next: Option<i64> = connection
        .query_row(
            "SELECT lsn FROM audit WHERE seq > ?1 ORDER BY seq LIMIT 1",
            params![seq],
            |row| row.get(0),
        )
        .optional()?;
    Ok(next.is_some_and(|next| u64::try_from(next).map_or(true, |next| next <= record.lsn)))
}

/// Checks that the chain ends where `audit_head` says it does.
fn check_head(
    connection: &Connection,
    records: u64,
    last_hash: Hash,
    last_lsn: u64,
) -> Result<(), VerifyError> {
    let head: Option<(i64, String)> = connection
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let broken = |seq, lsn, damage| {
        VerifyError::Broken(Broken {
            seq,
            lsn,
            previous_lsn: last_lsn,
            damage,
        })
    };
    let Some((head_seq, head_hash)) = head else {
        return Err(broken(records.max(1), None, Damage::Unanchored));
    };
    let head_seq = u64::try_from(head_seq).unwrap_or(0);
    if head_seq > records {
        // The last records were removed.
        return Err(broken(records + 1, None, Damage::Missing));
    }
    if head_seq < records {
        let lsn: i64 = connection.query_row(
            "SELECT lsn FROM audit WHERE seq = ?1",
            params![i64::try_from(head_seq + 1).unwrap_or(i64::MAX)],
            |row| row.get(0),
        )?;
        return Err(broken(
            head_seq + 1,
            u64::try_from(lsn).ok(),
            Damage::Unanchored,
        ));
    }
    if unhex(&head_hash) != Some(last_hash) {
        let lsn = (records > 0).then_some(last_lsn);
        return Err(broken(records, lsn, Damage::Unanchored));
    }
    Ok(())
}
