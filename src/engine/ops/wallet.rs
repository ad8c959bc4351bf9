//! Credits, debits and revocations: the operations that move a balance directly.

use crate::engine::commit::dry_run_answer;
use crate::engine::event::{Event, Meta, WalletRef};
use crate::engine::idempotency::{Begin, Done};
use crate::engine::notify::Spent;
use crate::engine::state::{Tenant, Wallet};
use crate::engine::types::{
    check_amount, check_id, CreditKind, DebitKind, EngineError, GrantCap, Invalid, Missing,
};
use crate::engine::{Context, Engine};

use super::checks::{checked, spend_from, Price};
use super::pools::debit_share;
use super::{CreditRequest, DebitRequest, RevokeRequest, Spend};

/// A priced spend on its way to the wallet: what [`Engine::debit`] and [`Engine::revoke`] hand to
/// the decision they share.
struct Take<'a> {
    user: &'a str,
    price: Price<'a>,
    kind: DebitKind,
    meta: Meta<'a>,
    /// Check and answer as if it ran, change nothing.
    dry_run: bool,
}

impl Engine {
    /// Adds credits. Creates the wallet if the user has none in that currency.
    pub fn credit(
        &self,
        tenant: &Tenant,
        request: &CreditRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        check_id("user_id", request.user)?;
        check_amount("amount", request.amount, &self.options.limits)?;
        self.check_texts(request.description, request.reference, request.metadata)?;
        let currency = request.currency.unwrap_or(tenant.default_currency);
        let claim = match self.claim(tenant, context, false)? {
            Begin::Replay(done) => return Ok(done),
            Begin::Fresh(claim) => claim,
        };
        // After the stateless checks (the key's among them), before the user's lock.
        tenant.check_currency(currency)?;
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .lock_user(request.user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        self.expire_due_reservations(tenant, request.user, &mut account, now_ms)?;
        let wallet = account
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        let balance_after = wallet
            .balance
            .checked_add(request.amount)
            .ok_or(EngineError::Overflow)?;
        let mut meta = self.meta(context, now_ms, request.description);
        meta.reference = request.reference;
        meta.metadata = request.metadata;
        let event = Event::Credited {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: request.user,
                currency,
            },
            kind: request.kind,
            amount: request.amount,
            balance_after,
            available_after: balance_after
                .checked_sub(wallet.reserved)
                .ok_or(EngineError::Overflow)?,
            meta,
        };
        if request.kind != CreditKind::Grant {
            return self.commit(tenant, &mut account, &event, claim);
        }
        // A grant counts against its actor's day, checked and counted in one step with its
        // record's append, so that a snapshot sees either both or neither (see `state::grants`).
        let mut grants = self.state.grants.lock();
        let granted_today = grants.granted_on(&tenant.id, context.actor, currency, now_ms);
        if let Some(cap) = request.grant_cap_per_day {
            if granted_today.saturating_add(request.amount) > cap {
                return Err(EngineError::GrantCapReached(GrantCap {
                    currency,
                    cap,
                    granted_today,
                    requested: request.amount,
                }));
            }
        }
        let done = self.commit(tenant, &mut account, &event, claim)?;
        grants.count(&tenant.id, context.actor, currency, now_ms, request.amount);
        Ok(done)
    }

    /// Spends credits: by amount or by catalogue action. A spend that would take `available` below
    /// the wallet's floor is refused with [`EngineError::InsufficientCredits`] and writes nothing,
    /// unless the user draws on a credit pool in that currency that gives the rest (see
    /// `ops/pools.rs`): then the wallet pays what it can and the pool the rest, in one record.
    pub fn debit(
        &self,
        tenant: &Tenant,
        request: &DebitRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        check_id("user_id", request.user)?;
        self.check_texts(request.description, request.reference, request.metadata)?;
        let price = self.price(tenant, request.currency, request.spend)?;
        let mut meta = self.meta(context, 0, request.description);
        meta.reference = request.reference;
        meta.metadata = request.metadata;
        let take = Take {
            user: request.user,
            price,
            kind: DebitKind::Usage,
            meta,
            dry_run: request.dry_run,
        };
        self.take(tenant, take, context)
    }

    /// Takes credits back; the reason is recorded as the entry's description. With
    /// `allow_negative` (a chargeback) the wallet may end below its floor.
    pub fn revoke(
        &self,
        tenant: &Tenant,
        request: &RevokeRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        check_id("user_id", request.user)?;
        if request.reason.trim().is_empty() {
            return Err(EngineError::Invalid(Invalid::new("reason", "is required")));
        }
        self.check_texts(Some(request.reason), None, None)?;
        let price = self.price(tenant, request.currency, Spend::Amount(request.amount))?;
        let meta = self.meta(context, 0, Some(request.reason));
        let kind = if request.allow_negative {
            DebitKind::Chargeback
        } else {
            DebitKind::Revoke
        };
        let take = Take {
            user: request.user,
            price,
            kind,
            meta,
            dry_run: false,
        };
        self.take(tenant, take, context)
    }

    /// Debits or revokes: the decision and commit both share once their request is priced.
    fn take(
        &self,
        tenant: &Tenant,
        take: Take<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        let Take {
            user,
            price,
            kind,
            mut meta,
            dry_run,
        } = take;
        let claim = match self.claim(tenant, context, dry_run)? {
            Begin::Replay(done) => return Ok(done),
            Begin::Fresh(claim) => claim,
        };
        // After the stateless checks (the key's among them), before the user's lock.
        tenant.check_currency(price.currency)?;
        let now_ms = self.clock.now_ms();
        meta.time_ms = now_ms;
        let mut account = tenant
            .lock_user(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        if !dry_run {
            self.expire_due_reservations(tenant, user, &mut account, now_ms)?;
        }
        // A dry run writes nothing, so it decides as if the due reservations were released.
        let wallet = account.wallet_as_of(price.currency, now_ms);
        let wallet_ref = WalletRef {
            tenant: &tenant.id,
            user,
            currency: price.currency,
        };
        let alone = if kind == DebitKind::Chargeback {
            // Taken whatever the wallet holds: the floor does not apply.
            Ok(checked(wallet.available().checked_sub(price.amount))?)
        } else {
            spend_from(&wallet, price.amount)
        };
        let refused = match alone {
            Ok(available_after) => {
                let event = Event::Debited {
                    wallet: wallet_ref,
                    kind,
                    amount: price.amount,
                    balance_after: checked(wallet.balance.checked_sub(price.amount))?,
                    available_after,
                    action: price.action,
                    pool: None,
                    meta,
                };
                if dry_run {
                    return dry_run_answer(&event);
                }
                let done = self.commit(tenant, &mut account, &event, claim)?;
                let spent = Spent {
                    currency: price.currency,
                    before: wallet.available(),
                    after: available_after,
                    lsn: done.lsn,
                };
                self.after_spend(tenant, user, &mut account, &spent);
                return Ok(done);
            }
            // A revoke takes from the wallet alone; a usage debit may go on to the user's pool.
            Err(refused) if kind != DebitKind::Usage => return Err(refused),
            Err(refused) => refused,
        };
        let (mut guard, from_pool, allowance) = self.pool_part(
            tenant,
            (user, &account),
            (&wallet, price.amount),
            now_ms,
            refused,
        )?;
        let from_wallet = price.amount - from_pool;
        let available_after = checked(wallet.available().checked_sub(from_wallet))?;
        let (id, pool) = guard.split();
        let event = Event::Debited {
            wallet: wallet_ref,
            kind,
            amount: price.amount,
            balance_after: checked(wallet.balance.checked_sub(from_wallet))?,
            available_after,
            action: price.action,
            pool: Some(debit_share(id, pool, &allowance, from_pool)?),
            meta,
        };
        if dry_run {
            return dry_run_answer(&event);
        }
        let done = self.commit_shared(tenant, &mut account, pool, &event, claim)?;
        drop(guard);
        let spent = Spent {
            currency: price.currency,
            before: wallet.available(),
            after: available_after,
            lsn: done.lsn,
        };
        self.after_spend(tenant, user, &mut account, &spent);
        Ok(done)
    }
}
