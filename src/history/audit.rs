//! The audit log: every change of configuration, and every movement of money made by hand, as a
//! hash chain in the history database.
//!
//! The feeder writes one record per audited event, in log order, in the same transaction as the
//! entries and the checkpoint (one call from [`Feed::apply`](super::store::Feed::apply), one
//! flush from its commit). Records are numbered by `seq`, dense from 1, in one chain across all
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
//!
//! Not audited: usage (debits, reservations and what becomes of them), payments through a
//! gateway (they are the ledger's, not a person's), user profiles and saved payment methods.
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

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::reader::Reader;
use super::StoreError;
use crate::engine::event::{Event, Meta, WalletRef};
use crate::engine::types::DebitKind;

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

fn unhex(text: &str) -> Option<Hash> {
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
fn fingerprint(secret: &str) -> String {
    let digest: Hash = Sha256::digest(secret.as_bytes()).into();
    let mut text = hex(&digest);
    text.truncate(8);
    text
}

// ------------------------------------------------------------------------------------------------
// Writing: the feeder's side.

/// The chain as the feeder's transaction extends it: the head is read at the first audited
/// event of a step and written back once, at its commit.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    head: Option<(u64, Hash)>,
    moved: bool,
    scratch: Vec<u8>,
}

impl Chain {
    /// Appends the record `event` (at `lsn`) makes, if it is audited.
    #[inline]
    pub(crate) fn apply(
        &mut self,
        transaction: &Transaction<'_>,
        lsn: u64,
        event: &Event<'_>,
    ) -> Result<(), StoreError> {
        match change(lsn, event) {
            None => Ok(()),
            Some(change) => self.append(transaction, lsn, change?),
        }
    }

    /// Writes the head, if the step moved it. Called before the checkpoint.
    pub(crate) fn flush(&mut self, transaction: &Transaction<'_>) -> Result<(), StoreError> {
        let Some((seq, hash)) = self.head.filter(|_| self.moved) else {
            return Ok(());
        };
        let seq = i64::try_from(seq).map_err(|_| StoreError::Overflow("audit seq"))?;
        transaction
            .prepare_cached("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")?
            .execute(params![seq, hex(&hash)])?;
        self.moved = false;
        Ok(())
    }

    fn head(&mut self, transaction: &Transaction<'_>) -> Result<(u64, Hash), StoreError> {
        if let Some(head) = self.head {
            return Ok(head);
        }
        let (seq, hash): (i64, String) = transaction
            .prepare_cached("SELECT seq, hash FROM audit_head WHERE id = 1")?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let seq = u64::try_from(seq).map_err(|_| StoreError::Overflow("audit seq"))?;
        let hash = unhex(&hash).ok_or(StoreError::AuditHead)?;
        self.head = Some((seq, hash));
        Ok((seq, hash))
    }

    fn append(
        &mut self,
        transaction: &Transaction<'_>,
        lsn: u64,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let (before, after) = match change.effect {
            Effect::Money { before, after } => (Some(before), Some(after)),
            Effect::Setting { subject, after } => {
                let before = swap_state(transaction, change.tenant, &subject, after.as_deref())?;
                (before, after)
            }
            Effect::Disabled { subject, reason } => {
                let before = state(transaction, change.tenant, &subject)?;
                let after = Some(disabled(before.as_deref(), reason));
                swap_state(transaction, change.tenant, &subject, after.as_deref())?;
                (before, after)
            }
        };
        let (last_seq, last_hash) = self.head(transaction)?;
        let seq = last_seq
            .checked_add(1)
            .ok_or(StoreError::Overflow("audit seq"))?;
        let record = Canonical {
            seq,
            lsn,
            at_ms: change.meta.time_ms,
            tenant: change.tenant,
            actor: change.meta.actor,
            action: change.action,
            target: &change.target,
            before: before.as_deref(),
            after: after.as_deref(),
        };
        let hash = record
            .hash(&last_hash, &mut self.scratch)
            .ok_or(StoreError::Overflow("audit record"))?;
        let seq_sql = i64::try_from(seq).map_err(|_| StoreError::Overflow("audit seq"))?;
        let lsn_sql = i64::try_from(lsn).map_err(|_| StoreError::Overflow("lsn"))?;
        transaction
            .prepare_cached(
                "INSERT INTO audit (seq, lsn, tenant, at_ms, actor, action, target, before, after,
                    hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                seq_sql,
                lsn_sql,
                record.tenant,
                record.at_ms,
                record.actor,
                record.action,
                record.target,
                record.before,
                record.after,
                hex(&hash),
            ])?;
        self.head = Some((seq, hash));
        self.moved = true;
        Ok(())
    }
}

/// The last audited state of `subject`.
fn state(
    transaction: &Transaction<'_>,
    tenant: &str,
    subject: &str,
) -> Result<Option<String>, StoreError> {
    Ok(transaction
        .prepare_cached("SELECT after FROM audit_state WHERE tenant = ?1 AND subject = ?2")?
        .query_row(params![tenant, subject], |row| row.get(0))
        .optional()?)
}

/// Replaces the state of `subject` with `after` (none: removed) and returns the one it had.
fn swap_state(
    transaction: &Transaction<'_>,
    tenant: &str,
    subject: &str,
    after: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let before = state(transaction, tenant, subject)?;
    match after {
        Some(after) => transaction
            .prepare_cached(
                "INSERT INTO audit_state (tenant, subject, after) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant, subject) DO UPDATE SET after = excluded.after",
            )?
            .execute(params![tenant, subject, after])?,
        None => transaction
            .prepare_cached("DELETE FROM audit_state WHERE tenant = ?1 AND subject = ?2")?
            .execute(params![tenant, subject])?,
    };
    Ok(before)
}

/// A rule's state once switched off: the state it had with `enabled: false` and the reason.
fn disabled(before: Option<&str>, reason: &str) -> String {
    let mut rule = before
        .and_then(|text| serde_json::from_str::<serde_json::Map<String, Value>>(text).ok())
        .unwrap_or_default();
    rule.insert("enabled".into(), Value::Bool(false));
    rule.insert("disabled_reason".into(), Value::String(reason.into()));
    Value::Object(rule).to_string()
}

/// What an audited event records.
struct Change<'a> {
    tenant: &'a str,
    meta: Meta<'a>,
    action: &'static str,
    target: String,
    effect: Effect<'a>,
}

/// How the record's `before` and `after` come about.
enum Effect<'a> {
    /// Money moved: the event says the balance before and after.
    Money { before: String, after: String },
    /// A setting changed to `after` (none: removed); `before` is its last audited state.
    Setting {
        subject: String,
        after: Option<String>,
    },
    /// A rule was switched off: its last audited state, with `enabled: false`.
    Disabled { subject: String, reason: &'a str },
}

/// The balance before a movement of money.
#[derive(Serialize)]
struct BalanceBefore<'a> {
    balance: i64,
    currency: &'a str,
}

/// The balance after a movement of money, and the movement.
#[derive(Serialize)]
struct BalanceAfter<'a> {
    balance: i64,
    currency: &'a str,
    amount: i64,
    entry_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
}

/// The record an event makes, `None` if the event is not audited.
fn change<'a>(lsn: u64, event: &Event<'a>) -> Option<Result<Change<'a>, StoreError>> {
    let (tenant, meta, action, target, effect) = match *event {
        Event::Credited {
            wallet,
            kind,
            amount,
            balance_after,
            meta,
            ..
        } => {
            let action = match kind {
                crate::engine::types::CreditKind::Grant => "credit.grant",
                crate::engine::types::CreditKind::Topup => "credit.topup",
                crate::engine::types::CreditKind::Refund => "credit.refund",
                crate::engine::types::CreditKind::Adjustment => "credit.adjustment",
            };
            let effect = money(lsn, &wallet, amount, balance_after, &meta);
            (wallet.tenant, meta, action, user(&wallet), effect)
        }
        Event::Debited {
            wallet,
            kind: DebitKind::Revoke,
            amount,
            balance_after,
            meta,
            ..
        } => {
            let effect = amount
                .checked_neg()
                .ok_or(StoreError::Overflow("revoke amount"))
                .and_then(|moved| money(lsn, &wallet, moved, balance_after, &meta));
            (wallet.tenant, meta, "wallet.revoke", user(&wallet), effect)
        }
        Event::OverdraftSet {
            wallet,
            limit,
            meta,
        } => {
            let after = json!({"currency": wallet.currency.as_str(), "overdraft_limit": limit});
            let effect = setting(wallet_subject("overdraft", &wallet), Some(after));
            (wallet.tenant, meta, "overdraft.set", user(&wallet), effect)
        }
        Event::AutoTopupSet {
            wallet,
            threshold,
            package,
            payment_method,
            max_per_day,
            meta,
        } => {
            let mut after = json!({
                "currency": wallet.currency.as_str(),
                "enabled": true,
                "max_per_day": max_per_day,
                "package_id": package,
                "threshold": threshold,
            });
            if let (Some(token), Some(rule)) = (payment_method, after.as_object_mut()) {
                rule.insert(
                    "payment_method_sha256_prefix".into(),
                    fingerprint(token).into(),
                );
            }
            let effect = setting(wallet_subject("auto_topup", &wallet), Some(after));
            (wallet.tenant, meta, "auto_topup.set", user(&wallet), effect)
        }
        Event::AutoTopupDeleted { wallet, meta } => {
            let effect = setting(wallet_subject("auto_topup", &wallet), None);
            (
                wallet.tenant,
                meta,
                "auto_topup.delete",
                user(&wallet),
                effect,
            )
        }
        Event::AutoTopupDisabled {
            wallet,
            reason,
            meta,
        } => {
            let subject = wallet_subject("auto_topup", &wallet);
            let effect = Ok(Effect::Disabled { subject, reason });
            (
                wallet.tenant,
                meta,
                "auto_topup.disable",
                user(&wallet),
                effect,
            )
        }
        Event::ActionPut {
            tenant,
            action,
            cost,
            currency,
            description,
            meta,
        } => {
            let mut after = json!({"cost": cost, "currency": currency.as_str()});
            if let (Some(description), Some(fields)) = (description, after.as_object_mut()) {
                fields.insert("description".into(), description.into());
            }
            let target = format!("action:{action}");
            let effect = setting(target.clone(), Some(after));
            (tenant, meta, "action.put", target, effect)
        }
        Event::ActionDeleted {
            tenant,
            action,
            meta,
        } => {
            let target = format!("action:{action}");
            let effect = setting(target.clone(), None);
            (tenant, meta, "action.delete", target, effect)
        }
        Event::PackagePut {
            tenant,
            package,
            terms,
            meta,
        } => {
            let after = json!({
                "active": terms.active,
                "credits": terms.credits,
                "currency": terms.currency.as_str(),
                "name": terms.name,
                "price_currency": terms.price_currency.as_str(),
                "price_minor": terms.price_minor,
            });
            let target = format!("package:{package}");
            let effect = setting(target.clone(), Some(after));
            (tenant, meta, "package.put", target, effect)
        }
        Event::PackageDeleted {
            tenant,
            package,
            meta,
        } => {
            let target = format!("package:{package}");
            let effect = setting(target.clone(), None);
            (tenant, meta, "package.delete", target, effect)
        }
        Event::TenantUpserted {
            tenant,
            ref settings,
            meta,
        } => {
            let after = json!({
                "default_currency": settings.default_currency.as_str(),
                "name": settings.name,
            });
            let effect = setting("tenant".into(), Some(after));
            (
                tenant,
                meta,
                "tenant.upsert",
                format!("tenant:{tenant}"),
                effect,
            )
        }
        Event::TenantWebhookSet {
            tenant,
            url,
            secret,
            meta,
        } => {
            let mut after = json!({ "url": url });
            if let (Some(secret), Some(fields)) = (secret, after.as_object_mut()) {
                fields.insert("secret_sha256_prefix".into(), fingerprint(secret.0).into());
            }
            let effect = setting("webhook".into(), Some(after));
            (
                tenant,
                meta,
                "tenant.webhook",
                format!("tenant:{tenant}"),
                effect,
            )
        }
        _ => return None,
    };
    Some(effect.map(|effect| Change {
        tenant,
        meta,
        action,
        target,
        effect,
    }))
}

fn user(wallet: &WalletRef<'_>) -> String {
    format!("user:{}", wallet.user)
}

/// Where a wallet's setting keeps its state: `<facet>:<currency>:user:<id>` (a currency holds no
/// `:`).
fn wallet_subject(facet: &str, wallet: &WalletRef<'_>) -> String {
    format!("{facet}:{}:user:{}", wallet.currency.as_str(), wallet.user)
}

fn setting<'a>(subject: String, after: Option<Value>) -> Result<Effect<'a>, StoreError> {
    Ok(Effect::Setting {
        subject,
        after: after.map(|after| after.to_string()),
    })
}

/// A movement of `moved` (signed) that left `balance_after`.
fn money<'a>(
    lsn: u64,
    wallet: &WalletRef<'_>,
    moved: i64,
    balance_after: i64,
    meta: &Meta<'_>,
) -> Result<Effect<'a>, StoreError> {
    let currency = wallet.currency.as_str();
    let balance_before = balance_after
        .checked_sub(moved)
        .ok_or(StoreError::Overflow("balance before"))?;
    let before = BalanceBefore {
        balance: balance_before,
        currency,
    };
    let after = BalanceAfter {
        balance: balance_after,
        currency,
        amount: moved,
        // The ledger entry the movement made (`ent_<lsn>`, as the write answered).
        entry_id: format!("ent_{lsn}"),
        description: meta.description,
        reference: meta.reference,
        // Stored as the JSON text the write was given, already checked to be JSON.
        metadata: meta
            .metadata
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok()),
    };
    Ok(Effect::Money {
        before: to_json(lsn, &before)?,
        after: to_json(lsn, &after)?,
    })
}

fn to_json(lsn: u64, document: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(document).map_err(|error| StoreError::Audit(lsn, error.to_string()))
}

// ------------------------------------------------------------------------------------------------
// Verifying: `creditd audit verify`.

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

// ------------------------------------------------------------------------------------------------
// Reading: `GET /v1/audit`.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::{PackageRecord, Secret, TenantSettingsRecord};
    use crate::engine::types::{CreditKind, Currency};
    use crate::history::Store;

    const ADA: WalletRef<'static> = WalletRef {
        tenant: "acme",
        user: "ada",
        currency: Currency::CREDITS,
    };

    fn meta(actor: &'static str, description: Option<&'static str>) -> Meta<'static> {
        Meta {
            time_ms: 1_700_000_000_000,
            actor,
            description,
            reference: None,
            metadata: None,
            idempotency: None,
        }
    }

    /// The events of a small history, in log order from LSN 1; some are not audited.
    fn events() -> Vec<Event<'static>> {
        let admin = meta("acme-admin", None);
        vec![
            Event::TenantUpserted {
                tenant: "acme",
                settings: TenantSettingsRecord {
                    name: Some("Acme"),
                    default_currency: Currency::CREDITS,
                },
                meta: meta("system", None),
            },
            Event::Credited {
                wallet: ADA,
                kind: CreditKind::Grant,
                amount: 100,
                balance_after: 100,
                available_after: 100,
                meta: Meta {
                    metadata: Some(r#"{"ticket":7}"#),
                    ..meta("acme-admin", Some("welcome"))
                },
            },
            // Usage: not audited, but it moves the balance the next record starts from.
            Event::Debited {
                wallet: ADA,
                kind: DebitKind::Usage,
                amount: 30,
                balance_after: 70,
                available_after: 70,
                action: None,
                meta: meta("acme-service", None),
            },
            Event::Debited {
                wallet: ADA,
                kind: DebitKind::Revoke,
                amount: 20,
                balance_after: 50,
                available_after: 50,
                action: None,
                meta: meta("acme-admin", Some("fraud")),
            },
            Event::ActionPut {
                tenant: "acme",
                action: "gpt",
                cost: 3,
                currency: Currency::CREDITS,
                description: None,
                meta: admin,
            },
            Event::ActionPut {
                tenant: "acme",
                action: "gpt",
                cost: 4,
                currency: Currency::CREDITS,
                description: Some("dearer"),
                meta: admin,
            },
            Event::PackagePut {
                tenant: "acme",
                package: "starter",
                terms: PackageRecord {
                    name: "Starter",
                    credits: 500,
                    currency: Currency::CREDITS,
                    price_minor: 200_000,
                    price_currency: Currency::new("NGN").unwrap(),
                    active: true,
                },
                meta: admin,
            },
            Event::AutoTopupSet {
                wallet: ADA,
                threshold: 10,
                package: "starter",
                payment_method: Some("AUTH_secret_token"),
                max_per_day: 2,
                meta: admin,
            },
            Event::AutoTopupDisabled {
                wallet: ADA,
                reason: "card declined",
                meta: meta("system", None),
            },
            Event::TenantWebhookSet {
                tenant: "acme",
                url: Some("https://acme.example/hooks"),
                secret: Some(Secret("whsec-very-secret-value")),
                meta: meta("platform", None),
            },
            Event::ActionDeleted {
                tenant: "acme",
                action: "gpt",
                meta: admin,
            },
            Event::OverdraftSet {
                wallet: WalletRef {
                    tenant: "globex",
                    ..ADA
                },
                limit: 50,
                meta: meta("globex-admin", None),
            },
        ]
    }

    /// A history at `path` fed with `events`, `per_step` records per transaction.
    fn feed(path: &Path, events: &[Event<'_>], per_step: usize) {
        let mut store = Store::open(path).unwrap();
        let mut lsn = store.next_lsn().unwrap();
        for step in events.chunks(per_step) {
            let mut feed = store.begin().unwrap();
            for event in step {
                feed.apply(lsn, event).unwrap();
                lsn += 1;
            }
            feed.commit(lsn).unwrap();
        }
    }

    fn all(path: &Path, tenant: &str) -> Vec<Record> {
        let reader = Reader::new(path, std::sync::Arc::default());
        let mut records = reader
            .audit(tenant, &Filter::default(), None, 1000)
            .unwrap();
        records.reverse();
        records
    }

    fn json(text: Option<&str>) -> Value {
        text.map_or(Value::Null, |text| serde_json::from_str(text).unwrap())
    }

    fn fed() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        feed(&path, &events(), 3);
        (dir, path)
    }

    #[test]
    fn every_change_by_hand_is_a_record_with_what_it_replaced() {
        let (_dir, path) = fed();
        let records = all(&path, "acme");
        let actions: Vec<&str> = records.iter().map(|r| r.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "tenant.upsert",
                "credit.grant",
                "wallet.revoke",
                "action.put",
                "action.put",
                "package.put",
                "auto_topup.set",
                "auto_topup.disable",
                "tenant.webhook",
                "action.delete",
            ]
        );
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>(), "dense, one chain");
        let lsns: Vec<u64> = records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, [1, 2, 4, 5, 6, 7, 8, 9, 10, 11]);

        let grant = &records[1];
        assert_eq!(
            (grant.actor.as_str(), grant.target.as_str()),
            ("acme-admin", "user:ada")
        );
        assert_eq!(
            json(grant.before.as_deref()),
            json!({"balance": 0, "currency": "credits"})
        );
        let after = json(grant.after.as_deref());
        assert_eq!(after["balance"], 100);
        assert_eq!(after["amount"], 100);
        assert_eq!(after["description"], "welcome");
        assert_eq!(after["metadata"]["ticket"], 7);
        assert_eq!(after["entry_id"], "ent_2");
        // The revoke starts from the balance usage left, not from the grant's.
        let revoke = &records[2];
        assert_eq!(json(revoke.before.as_deref())["balance"], 70);
        let after = json(revoke.after.as_deref());
        assert_eq!(
            (after["balance"].clone(), after["amount"].clone()),
            (json!(50), json!(-20))
        );
        assert_eq!(after["description"], "fraud");

        let (first, second) = (&records[3], &records[4]);
        assert_eq!(first.before, None);
        assert_eq!(first.target, "action:gpt");
        assert_eq!(second.before, first.after);
        assert_eq!(json(second.after.as_deref())["cost"], 4);
        let deleted = &records[9];
        assert_eq!(deleted.before, second.after);
        assert_eq!(deleted.after, None);

        let rule = json(records[6].after.as_deref());
        assert_eq!(rule["threshold"], 10);
        assert_eq!(rule["enabled"], true);
        let disabled = &records[7];
        assert_eq!(disabled.actor, "system");
        assert_eq!(disabled.before, records[6].after);
        let after = json(disabled.after.as_deref());
        assert_eq!(
            (after["enabled"].clone(), after["threshold"].clone()),
            (json!(false), json!(10))
        );
        assert_eq!(after["disabled_reason"], "card declined");

        // Secrets never enter the audit; their fingerprints show that they changed.
        let webhook = json(records[8].after.as_deref());
        assert_eq!(webhook["url"], "https://acme.example/hooks");
        assert_eq!(webhook["secret_sha256_prefix"].as_str().unwrap().len(), 8);
        let text = std::fs::read(&path).unwrap();
        for secret in ["whsec-very-secret-value", "AUTH_secret_token"] {
            assert!(
                !text.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is in the file"
            );
        }
        assert_eq!(
            rule["payment_method_sha256_prefix"],
            fingerprint("AUTH_secret_token")
        );

        // Another tenant's record is in the same chain, not in acme's list.
        let globex = all(&path, "globex");
        assert_eq!(globex.len(), 1);
        assert_eq!(
            (globex[0].seq, globex[0].action.as_str()),
            (11, "overdraft.set")
        );
        assert_eq!(
            json(globex[0].after.as_deref()),
            json!({"currency": "credits", "overdraft_limit": 50})
        );
        let verified = verify(&path).unwrap();
        assert_eq!(verified.records, 11);
        assert_eq!(hex(&verified.last_hash), globex[0].hash);
    }

    #[test]
    fn the_chain_is_the_same_however_the_log_is_cut_into_steps() {
        let (_dir, path) = fed();
        let other = tempfile::tempdir().unwrap();
        let whole = other.path().join("history.sqlite3");
        feed(&whole, &events(), 1000);
        let one_by_one = other.path().join("one.sqlite3");
        feed(&one_by_one, &events(), 1);
        let hashes = |path: &Path| -> Vec<String> {
            let mut records = all(path, "acme");
            records.extend(all(path, "globex"));
            records.into_iter().map(|record| record.hash).collect()
        };
        assert_eq!(hashes(&path), hashes(&whole));
        assert_eq!(hashes(&path), hashes(&one_by_one));
    }

    #[test]
    fn a_step_rolled_back_leaves_no_trace_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        let events = events();
        feed(&path, &events[..2], 10);
        {
            let mut store = Store::open(&path).unwrap();
            let mut feed = store.begin().unwrap();
            for (lsn, event) in (3..).zip(&events[2..]) {
                feed.apply(lsn, event).unwrap();
            }
            // Dropped without a commit: the transaction rolls back, head and all.
        }
        assert_eq!(verify(&path).unwrap().records, 2);
        feed(&path, &events[2..], 10);
        let (_whole_dir, whole) = fed();
        assert_eq!(verify(&path).unwrap(), verify(&whole).unwrap());
    }

    #[test]
    fn the_canonical_encoding_is_fixed() {
        let record = Canonical {
            seq: 1,
            lsn: 2,
            at_ms: -1,
            tenant: "t",
            actor: "a",
            action: "x.y",
            target: "",
            before: None,
            after: Some("{}"),
        };
        let mut bytes = Vec::new();
        record.encode(&mut bytes).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0xff; 8]);
        expected.extend_from_slice(b"\0\0\0\x01t\0\0\0\x01a\0\0\0\x03x.y\0\0\0\0");
        expected.extend_from_slice(b"\0\x01\0\0\0\x02{}");
        assert_eq!(bytes, expected);
        let hash = record.hash(&GENESIS, &mut bytes).unwrap();
        let mut direct = Sha256::new();
        direct.update([0u8; 32]);
        direct.update(&expected);
        assert_eq!(hash, <Hash>::from(direct.finalize()));
        assert_eq!(unhex(&hex(&hash)), Some(hash));
        // Null and an empty document differ.
        let empty = Canonical {
            after: Some(""),
            ..record
        };
        assert_ne!(
            empty.hash(&GENESIS, &mut bytes),
            record.hash(&GENESIS, &mut bytes)
        );
    }

    /// A copy of the fed history changed by `sql`: what `verify` says of it.
    fn tampered(sql: &str) -> Result<Verified, VerifyError> {
        let (dir, path) = fed();
        let copy = dir.path().join("copy.sqlite3");
        std::fs::copy(&path, &copy).unwrap();
        Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
        verify(&copy)
    }

    fn broken_at(sql: &str) -> Broken {
        match tampered(sql) {
            Err(VerifyError::Broken(broken)) => broken,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn a_changed_field_is_named_by_its_seq() {
        let broken = broken_at(r#"UPDATE audit SET after = '{"balance":1000000}' WHERE seq = 3"#);
        assert_eq!(
            (broken.seq, broken.lsn, broken.damage),
            (3, Some(4), Damage::Changed)
        );
        assert_eq!(
            broken.to_string(),
            "audit chain broken at seq 3 (lsn 4): changed"
        );
        for sql in [
            "UPDATE audit SET actor = 'someone-else' WHERE seq = 5",
            "UPDATE audit SET at_ms = at_ms + 1 WHERE seq = 5",
            "UPDATE audit SET tenant = 'globex' WHERE seq = 5",
            "UPDATE audit SET before = NULL WHERE seq = 5",
            "UPDATE audit SET after = 7 WHERE seq = 5",
            "UPDATE audit SET hash = 'not hex' WHERE seq = 5",
        ] {
            let broken = broken_at(sql);
            assert_eq!((broken.seq, broken.damage), (5, Damage::Changed), "{sql}");
        }
    }

    #[test]
    fn a_removed_record_is_named_whether_in_the_middle_or_at_the_end() {
        let middle = broken_at("DELETE FROM audit WHERE seq = 4");
        assert_eq!(
            (middle.seq, middle.lsn, middle.damage),
            (4, None, Damage::Missing)
        );
        assert_eq!(middle.previous_lsn, 4);
        assert_eq!(
            middle.to_string(),
            "audit chain broken at seq 4 (after lsn 4): missing"
        );
        // Removed and the later ones renumbered: the first renumbered one no longer hashes.
        let renumbered = broken_at(
            "DELETE FROM audit WHERE seq = 4; UPDATE audit SET seq = seq - 1 WHERE seq > 4",
        );
        assert_eq!((renumbered.seq, renumbered.damage), (4, Damage::Changed));
        // The last record: the anchored head still counts it.
        let last = broken_at("DELETE FROM audit WHERE seq = 11");
        assert_eq!((last.seq, last.damage), (11, Damage::Missing));
        let first = broken_at("DELETE FROM audit WHERE seq = 1");
        assert_eq!((first.seq, first.damage), (1, Damage::Missing));
    }

    #[test]
    fn a_swapped_pair_is_out_of_order() {
        // Adjacent, then apart.
        for (a, b) in [(3, 4), (2, 9)] {
            let sql = format!(
                "UPDATE audit SET seq = -1 WHERE seq = {a};
                 UPDATE audit SET seq = {a} WHERE seq = {b};
                 UPDATE audit SET seq = {b} WHERE seq = -1;"
            );
            let broken = broken_at(&sql);
            assert_eq!(
                (broken.seq, broken.damage),
                (a, Damage::OutOfOrder),
                "{a}, {b}"
            );
        }
    }

    #[test]
    fn the_head_anchors_the_chain() {
        let extra = broken_at(
            "INSERT INTO audit SELECT seq + 1, lsn + 1, tenant, at_ms, actor, action, target,
                before, after, hash FROM audit WHERE seq = 11",
        );
        // The appended copy does not hash as seq 12.
        assert_eq!((extra.seq, extra.damage), (12, Damage::Changed));
        let moved_head = broken_at("UPDATE audit_head SET seq = 10");
        assert_eq!(
            (moved_head.seq, moved_head.damage),
            (11, Damage::Unanchored)
        );
        let other_hash = broken_at(&format!("UPDATE audit_head SET hash = '{}'", hex(&[7; 32])));
        assert_eq!(
            (other_hash.seq, other_hash.damage),
            (11, Damage::Unanchored)
        );
        let gone = broken_at("DELETE FROM audit_head");
        assert_eq!(gone.damage, Damage::Unanchored);
        // The untouched copy checks out.
        assert_eq!(tampered("SELECT 1").unwrap().records, 11);
    }

    #[test]
    fn an_empty_chain_checks_out_and_a_file_without_one_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.sqlite3");
        drop(Store::open(&path).unwrap());
        assert_eq!(
            verify(&path).unwrap(),
            Verified {
                records: 0,
                last_hash: GENESIS
            }
        );
        let other = dir.path().join("other.sqlite3");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        assert!(matches!(verify(&other), Err(VerifyError::Unreadable(_))));
    }

    #[test]
    fn the_listing_filters_and_pages_by_seq() {
        let (_dir, path) = fed();
        let reader = Reader::new(&path, std::sync::Arc::default());
        let by_admin = Filter {
            actor: Some("acme-admin".into()),
            ..Filter::default()
        };
        let page = reader.audit("acme", &by_admin, None, 3).unwrap();
        let seqs: Vec<u64> = page.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [10, 7, 6]);
        let next = reader.audit("acme", &by_admin, Some(6), 3).unwrap();
        let seqs: Vec<u64> = next.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [5, 4, 3]);
        let window = Filter {
            from_ms: Some(1_700_000_000_000),
            to_ms: Some(1_700_000_000_001),
            ..Filter::default()
        };
        assert_eq!(reader.audit("acme", &window, None, 100).unwrap().len(), 10);
        let before = Filter {
            to_ms: Some(1_700_000_000_000),
            ..Filter::default()
        };
        assert!(reader.audit("acme", &before, None, 100).unwrap().is_empty());
    }
}
