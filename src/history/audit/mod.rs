//! The audit log: every change of configuration, and every movement of money made by hand, as a
//! hash chain in the history database.
//!
//! The feeder writes one record per audited event, in log order, in the same transaction as the
//! entries and the checkpoint (one call from `Feed::apply`, one flush from
//! [`Feed::commit`](super::store::Feed::commit)). Records are numbered by `seq`, dense from 1, in one chain across all
//! tenants; the API lists one tenant's records, `creditd audit verify` checks the whole file.
//!
//! Audited events, and the `action` each record names:
//!
//! | event | `action` | `target` | `before` → `after` |
//! |---|---|---|---|
//! | credit of kind grant, topup, refund, adjustment | `credit.grant`, `credit.topup`, `credit.refund`, `credit.adjustment` | `user:<id>` | the balance, then the balance with the amount, description, reference, metadata and `entry_id` |
//! | revoke | `wallet.revoke` | `user:<id>` | the same, the amount negative |
//! | overdraft set | `overdraft.set` | `user:<id>` | the limit |
//! | automatic top-up rule set, deleted, switched off | `auto_topup.set`, `auto_topup.delete`, `auto_topup.disable` | `user:<id>` | the rule |
//! | catalogue action put, deleted | `action.put`, `action.delete` | `action:<name>` | the action |
//! | package put, deleted | `package.put`, `package.delete` | `package:<id>` | the package |
//! | tenant created or renamed | `tenant.upsert` | `tenant:<id>` | its settings |
//! | tenant webhook set | `tenant.webhook` | `tenant:<id>` | the URL and a fingerprint of the secret |
//! | credit pool created or renamed | `pool.put` | `pool:<id>` | its name and currency |
//! | credit to a pool | `pool.credit.grant` (and `.topup`, `.refund`, `.adjustment`) | `pool:<id>` | the pool's balance, as for a user's credit |
//! | a user made a member of a pool, or its cap changed; the membership ended | `pool.member.set`, `pool.member.delete` | `user:<id>` | the pool and the daily cap |
//!
//! Not audited: usage (debits, reservations and what becomes of them, a pool's part included),
//! payments through a gateway (they are the ledger's, not a person's), user profiles and saved
//! payment methods.
//!
//! `before` and `after` are JSON documents written by creditd (or null). For money, the event
//! says both: the balance before is the balance after minus what moved, whatever usage happened
//! in between. For a setting, the event carries only the new state, so the audit keeps the last
//! `after` of every setting (`audit_state`) and gives it as the next change's `before`; `before`
//! is null when the setting had no audited state (it is new, or it changed before the history
//! began). Secrets never enter the audit: a webhook secret or a payment method token is shown as
//! the first 8 hex digits of its SHA-256 (`*_sha256_prefix`), enough to see that it changed.
//!
//! ## The chain
//!
//! `hash = SHA-256(previous hash ‖ canonical record)`, the previous hash of seq 1 being 32 zero
//! bytes, stored as 64 lowercase hex digits. The canonical record ([`Canonical::encode`]) is a
//! fixed byte encoding of (seq, lsn, at_ms, tenant, actor, action, target, before, after): the
//! three integers as 8 bytes big-endian, each text as a 4-byte big-endian length and its UTF-8
//! bytes, `before` and `after` each prefixed by one byte, 0 for null (nothing follows) or 1. The
//! JSON texts are hashed as the bytes stored, so their key order never matters to the chain.
//!
//! The chain's head (last seq and hash) is anchored in `audit_head`, written in the same
//! transaction as the records, so removing the last records is caught as well. [`verify`] walks
//! the chain and names the first record that was changed, removed or moved. What it cannot catch:
//! someone who rewrites the file from a point on and recomputes every later hash and the head. An
//! operator who keeps the last hash `verify` printed somewhere else can see that, too.

//!
//! - `chain`: the records an event makes and the feeder's side of the chain.
//! - `verify`: walking the chain, [`verify`].
//! - here: the schema, the canonical encoding, and the listing for the API.

mod chain;
#[cfg(test)]
mod tests;
mod verify;

use rusqlite::params;
use sha2::{Digest, Sha256};

use super::reader::Reader;
use super::StoreError;
pub(crate) use chain::Chain;
pub use verify::{verify, verify_connection, Broken, Damage, Verified, VerifyError};

/// The audit's tables: the chain, the last state of every setting, and the chain's head.
pub(crate) const AUDIT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq    INTEGER PRIMARY KEY,
    lsn    INTEGER NOT NULL,
    tenant TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    before TEXT,
    after  TEXT,
    hash   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_tenant ON audit (tenant, seq);
CREATE TABLE IF NOT EXISTS audit_state (
    tenant  TEXT NOT NULL,
    subject TEXT NOT NULL,
    after   TEXT NOT NULL,
    PRIMARY KEY (tenant, subject)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT OR IGNORE INTO audit_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
";

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The hash before the first record.
pub const GENESIS: Hash = [0; 32];

/// One record as hashed: the fields in the order [`Canonical::encode`] writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The log record the change was made by.
    pub lsn: u64,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// The tenant.
    pub tenant: &'a str,
    /// The API key's name, or `system`.
    pub actor: &'a str,
    /// What was done (`credit.grant`, `package.put`, …).
    pub action: &'a str,
    /// What it was done to (`user:ada`, `package:starter`, …).
    pub target: &'a str,
    /// The state before, a JSON document.
    pub before: Option<&'a str>,
    /// The state after, a JSON document.
    pub after: Option<&'a str>,
}

impl Canonical<'_> {
    /// Appends the canonical encoding to `out`: seq, lsn, at_ms as 8 bytes big-endian; tenant,
    /// actor, action, target as a 4-byte big-endian length and the bytes; before and after as
    /// a byte 0 (null) or a byte 1, a 4-byte big-endian length and the bytes. `None` if a text is
    /// 4 GiB or more.
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.lsn.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        for text in [self.tenant, self.actor, self.action, self.target] {
            put_text(out, text)?;
        }
        for document in [self.before, self.after] {
            match document {
                None => out.push(0),
                Some(text) => {
                    out.push(1);
                    put_text(out, text)?;
                }
            }
        }
        Some(())
    }

    /// `SHA-256(previous ‖ canonical)`, encoding into `scratch` (cleared first).
    pub fn hash(&self, previous: &Hash, scratch: &mut Vec<u8>) -> Option<Hash> {
        scratch.clear();
        self.encode(scratch)?;
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(&scratch[..]);
        Some(hasher.finalize().into())
    }
}

fn put_text(out: &mut Vec<u8>, text: &str) -> Option<()> {
    let len = u32::try_from(text.len()).ok()?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
    Some(())
}

/// Lowercase hex.
pub fn hex(hash: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for byte in hash {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

pub(crate) fn unhex(text: &str) -> Option<Hash> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        };
        hash[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(hash)
}

/// The first 8 hex digits of a secret's SHA-256: enough to see that it changed, too few to
/// stand for it.
pub(crate) fn fingerprint(secret: &str) -> String {
    let digest: Hash = Sha256::digest(secret.as_bytes()).into();
    let mut text = hex(&digest);
    text.truncate(8);
    text
}

/// What audit records to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only changes by this actor.
    pub actor: Option<String>,
    /// Only records made at or after this time (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Only records made before this time.
    pub to_ms: Option<i64>,
}

/// One audit record as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its place in the chain.
    pub seq: u64,
    /// The log record that made it.
    pub lsn: u64,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Who.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To what.
    pub target: String,
    /// The state before, a JSON document.
    pub before: Option<String>,
    /// The state after, a JSON document.
    pub after: Option<String>,
    /// The chain's hash through this record, lowercase hex.
    pub hash: String,
}

impl Reader {
    /// Checks the whole chain, as `creditd audit verify` does, in one read transaction of a
    /// pooled connection: `Ok(Err(broken))` names the first bad record.
    pub fn verify_audit(&self) -> Result<Result<Verified, Broken>, StoreError> {
        self.with_connection(|connection| match verify_connection(connection) {
            Ok(verified) => Ok(Ok(verified)),
            Err(VerifyError::Broken(broken)) => Ok(Err(broken)),
            Err(VerifyError::Unreadable(error)) => Err(StoreError::Sqlite(error)),
        })
    }

    /// `tenant`'s audit records, newest first, before `before_seq` (a cursor), at most `limit`.
    pub fn audit(
        &self,
        tenant: &str,
        filter: &Filter,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<Record>, StoreError> {
        let before = before_seq.map_or(i64::MAX, |seq| i64::try_from(seq).unwrap_or(i64::MAX));
        self.with_connection(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT seq, lsn, at_ms, actor, action, target, before, after, hash
                 FROM audit
                 WHERE tenant = ?1 AND seq < ?2 AND (?3 IS NULL OR actor = ?3)
                   AND (?4 IS NULL OR at_ms >= ?4) AND (?5 IS NULL OR at_ms < ?5)
                 ORDER BY seq DESC LIMIT ?6",
            )?;
            let rows = statement.query_map(
                params![
                    tenant,
                    before,
                    filter.actor,
                    filter.from_ms,
                    filter.to_ms,
                    limit
                ],
                |row| {
                    Ok(Record {
                        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        lsn: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                        at_ms: row.get(2)?,
                        actor: row.get(3)?,
                        action: row.get(4)?,
                        target: row.get(5)?,
                        before: row.get(6)?,
                        after: row.get(7)?,
                        hash: row.get(8)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}
