//! The feeder's side of the audit: the record each audited event makes (its action, target,
//! before and after) and the chain it extends, inside the feeder's transaction.

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{fingerprint, hex, unhex, Canonical, Hash};
use crate::engine::event::{Event, Meta, WalletRef};
use crate::engine::types::{CreditKind, DebitKind};
use crate::history::StoreError;

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
                CreditKind::Grant => "credit.grant",
                CreditKind::Topup => "credit.topup",
                CreditKind::Refund => "credit.refund",
                CreditKind::Adjustment => "credit.adjustment",
            };
            let effect = money(lsn, &wallet, amount, balance_after, &meta);
            (wallet.tenant, meta, action, user(&wallet), effect)
        }
        Event::Debited {
            wallet,
            kind: kind @ (DebitKind::Revoke | DebitKind::Chargeback),
            amount,
            balance_after,
            meta,
            ..
        } => {
            let effect = amount
                .checked_neg()
                .ok_or(StoreError::Overflow("revoke amount"))
                .and_then(|moved| money(lsn, &wallet, moved, balance_after, &meta));
            let action = if kind == DebitKind::Chargeback {
                "wallet.chargeback"
            } else {
                "wallet.revoke"
            };
            (wallet.tenant, meta, action, user(&wallet), effect)
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
            let mut after = json!({
                "default_currency": settings.default_currency.as_str(),
                "name": settings.name,
            });
            if let (false, Some(fields)) = (settings.currencies.is_empty(), after.as_object_mut()) {
                let currencies: Vec<Value> = (settings.currencies.iter())
                    .map(|c| json!({"code": c.code.as_str(), "decimals": c.decimals}))
                    .collect();
                fields.insert("currencies".into(), Value::Array(currencies));
            }
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
        Event::TenantPortalOriginsSet {
            tenant,
            ref origins,
            meta,
        } => {
            let effect = setting(
                "portal_return_origins".into(),
                Some(json!({ "origins": origins })),
            );
            (
                tenant,
                meta,
                "tenant.portal_return_origins",
                format!("tenant:{tenant}"),
                effect,
            )
        }
        // A package an administrator bought for a pool: its credits arrive when it is paid.
        Event::PoolPaymentSucceeded {
            tenant,
            pool,
            currency,
            credits,
            balance_after,
            meta,
            ..
        } => {
            let effect = money_in(lsn, currency.as_str(), credits, balance_after, &meta);
            (
                tenant,
                meta,
                "pool.credit.payment",
                format!("pool:{pool}"),
                effect,
            )
        }
        Event::PoolPut {
            tenant,
            pool,
            name,
            currency,
            meta,
        } => {
            let after = json!({"currency": currency.as_str(), "name": name});
            let target = format!("pool:{pool}");
            let effect = setting(target.clone(), Some(after));
            (tenant, meta, "pool.put", target, effect)
        }
        Event::PoolCredited {
            tenant,
            pool,
            currency,
            kind,
            amount,
            balance_after,
            meta,
            ..
        } => {
            let action = match kind {
                CreditKind::Grant => "pool.credit.grant",
                CreditKind::Topup => "pool.credit.topup",
                CreditKind::Refund => "pool.credit.refund",
                CreditKind::Adjustment => "pool.credit.adjustment",
            };
            let effect = money_in(lsn, currency.as_str(), amount, balance_after, &meta);
            (tenant, meta, action, format!("pool:{pool}"), effect)
        }
        Event::PoolMemberSet {
            tenant,
            user,
            pool,
            daily_cap,
            meta,
        } => {
            let after = json!({"pool_id": pool, "daily_cap": daily_cap});
            let effect = setting(format!("pool_member:user:{user}"), Some(after));
            (
                tenant,
                meta,
                "pool.member.set",
                format!("user:{user}"),
                effect,
            )
        }
        Event::PoolMemberRemoved {
            tenant, user, meta, ..
        } => {
            let effect = setting(format!("pool_member:user:{user}"), None);
            (
                tenant,
                meta,
                "pool.member.delete",
                format!("user:{user}"),
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
    money_in(lsn, wallet.currency.as_str(), moved, balance_after, meta)
}

/// A movement of `moved` (signed) in `currency` that left `balance_after` (a wallet's or a
/// pool's).
fn money_in<'a>(
    lsn: u64,
    currency: &str,
    moved: i64,
    balance_after: i64,
    meta: &Meta<'_>,
) -> Result<Effect<'a>, StoreError> {
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
