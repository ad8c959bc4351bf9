//! Reservations: reserve, capture, extend, release, and the expiry of those whose time ran out.

use compact_str::CompactString;

use crate::engine::commit::dry_run_answer;
use crate::engine::event::{ActionUse, Event, Meta, PoolShare, WalletRef};
use crate::engine::idempotency::{Begin, Claim, Done};
use crate::engine::notify::Spent;
use crate::engine::state::{ReservationPhase, Tenant, UserGuard};
use crate::engine::types::{
    check_amount, check_id, ClosedAs, EngineError, Invalid, Lsn, Missing, ReleaseReason, Shortfall,
};
use crate::engine::{Context, Engine};

use super::checks::{checked, spend_from};
use super::pools::{allowance, headroom, hold_share, short};
use super::{CaptureRequest, ReserveRequest};

/// A reservation the user's pool holds part of, whose user no longer draws on that pool: the
/// membership cannot end while the pool holds for the user, so this is never answered.
const MISSING_POOL: EngineError =
    EngineError::Conflict("the pool that holds the reservation is gone");

impl Engine {
    /// Releases, through the log, every reservation of this user whose time has run out (what the
    /// user's pool held for one goes back to the pool, under its lock). Runs under the user's lock,
    /// before a decision that depends on `available`.
    pub(super) fn expire_due_reservations(
        &self,
        tenant: &Tenant,
        user: &str,
        account: &mut UserGuard<'_>,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if account.extra.is_none() {
            return Ok(());
        }
        while let Some(reservation) = account.first_due_reservation(now_ms) {
            let id = reservation.id;
            let meta = Meta::system(now_ms);
            self.close_without_charge(
                tenant,
                user,
                account,
                id,
                ReleaseReason::Expired,
                meta,
                None,
            )?;
        }
        Ok(())
    }

    /// Releases the open reservation `id` of the locked `account`: what the wallet held goes back
    /// to `available`, what the user's pool held back to the pool.
    #[allow(clippy::too_many_arguments)]
    fn close_without_charge(
        &self,
        tenant: &Tenant,
        user: &str,
        account: &mut UserGuard<'_>,
        id: Lsn,
        reason: ReleaseReason,
        meta: Meta<'_>,
        claim: Option<Claim<'_>>,
    ) -> Result<Done, EngineError> {
        let reservation = account
            .reservation(id)
            .ok_or(EngineError::NotFound(Missing::Reservation))?;
        let (currency, amount) = (reservation.currency, reservation.amount);
        let (pool_amount, pool_day) = (reservation.pool_amount, reservation.pool_day);
        let wallet = *account
            .wallet(currency)
            .ok_or(EngineError::Conflict("reservation on a missing wallet"))?;
        let reserved_after = checked(wallet.reserved.checked_sub(amount - pool_amount))?;
        let wallet_ref = WalletRef {
            tenant: &tenant.id,
            user,
            currency,
        };
        let available_after = checked(wallet.balance.checked_sub(reserved_after))?;
        if pool_amount == 0 {
            let event = Event::ReservationReleased {
                wallet: wallet_ref,
                reservation_id: id,
                amount,
                reason,
                reserved_after,
                available_after,
                pool: None,
                meta,
            };
            return self.commit(tenant, account, &event, claim);
        }
        let mut guard = self.member_pool(tenant, account, currency, MISSING_POOL)?;
        let (pool_id, pool) = guard.split();
        // As the pool stands: the reservation released here may be due itself.
        let allowance = allowance(pool, user, None, meta.time_ms);
        // The hold comes back to the member's allowance only on the day it was placed.
        let counted = if pool_day == allowance.day {
            -pool_amount
        } else {
            0
        };
        let event = Event::ReservationReleased {
            wallet: wallet_ref,
            reservation_id: id,
            amount,
            reason,
            reserved_after,
            available_after,
            pool: Some(PoolShare {
                pool: pool_id,
                released: pool_amount,
                held: 0,
                charged: 0,
                balance_after: pool.balance,
                reserved_after: checked(pool.reserved.checked_sub(pool_amount))?,
                counted,
                drawn_after: checked(allowance.drawn.checked_add(counted))?,
            }),
            meta,
        };
        self.commit_shared(tenant, account, pool, &event, claim)
    }

    /// Reserves credits until captured, released or expired. The reservation's id is the LSN.
    pub fn reserve(
        &self,
        tenant: &Tenant,
        request: &ReserveRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        check_id("user_id", request.user)?;
        self.check_texts(request.description, None, request.metadata)?;
        let limits = &self.options.limits;
        let ttl_seconds = request
            .ttl_seconds
            .unwrap_or(limits.default_reservation_ttl_seconds);
        check_ttl(ttl_seconds, limits.max_reservation_ttl_seconds)?;
        let price = self.price(tenant, request.currency, request.spend)?;
        let claim = match self.claim(tenant, context, request.dry_run)? {
            Begin::Replay(done) => return Ok(done),
            Begin::Fresh(claim) => claim,
        };
        // After the stateless checks (the key's among them), before the user's lock.
        tenant.check_currency(price.currency)?;
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .lock_user(request.user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        if !request.dry_run {
            self.expire_due_reservations(tenant, request.user, &mut account, now_ms)?;
        }
        if account.open_reservations_as_of(now_ms) >= limits.max_reservations_per_user as usize {
            return Err(EngineError::TooManyReservations);
        }
        let wallet = account.wallet_as_of(price.currency, now_ms);
        let mut meta = self.meta(context, now_ms, request.description);
        meta.metadata = request.metadata;
        let wallet_ref = WalletRef {
            tenant: &tenant.id,
            user: request.user,
            currency: price.currency,
        };
        let refused = match spend_from(&wallet, price.amount) {
            Ok(available_after) => {
                let event = Event::ReservationPlaced {
                    wallet: wallet_ref,
                    amount: price.amount,
                    expires_at_ms: expiry(now_ms, ttl_seconds)?,
                    reserved_after: checked(wallet.reserved.checked_add(price.amount))?,
                    available_after,
                    action: price.action,
                    pool: None,
                    meta,
                };
                if request.dry_run {
                    return dry_run_answer(&event);
                }
                let done = self.commit(tenant, &mut account, &event, claim)?;
                let spent = Spent {
                    currency: price.currency,
                    before: wallet.available(),
                    after: available_after,
                    lsn: done.lsn,
                };
                self.after_spend(tenant, request.user, &mut account, &spent);
                return Ok(done);
            }
            Err(refused) => refused,
        };
        // The wallet holds what it can, the user's pool the rest.
        let (mut guard, from_pool, allowance) = self.pool_part(
            tenant,
            (request.user, &account),
            (&wallet, price.amount),
            now_ms,
            refused,
        )?;
        let from_wallet = price.amount - from_pool;
        let available_after = checked(wallet.available().checked_sub(from_wallet))?;
        let (pool_id, pool) = guard.split();
        let event = Event::ReservationPlaced {
            wallet: wallet_ref,
            amount: price.amount,
            expires_at_ms: expiry(now_ms, ttl_seconds)?,
            reserved_after: checked(wallet.reserved.checked_add(from_wallet))?,
            available_after,
            action: price.action,
            pool: Some(hold_share(pool_id, pool, &allowance, from_pool)?),
            meta,
        };
        if request.dry_run {
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
        self.after_spend(tenant, request.user, &mut account, &spent);
        Ok(done)
    }

    /// Finds an open reservation's user, or says why it cannot be used.
    fn reservation_owner(&self, tenant: &Tenant, id: Lsn) -> Result<CompactString, EngineError> {
        let entry = tenant
            .reservations
            .get(&id)
            .ok_or(EngineError::NotFound(Missing::Reservation))?;
        match entry.state {
            ReservationPhase::Open { .. } => Ok(entry.user.clone()),
            ReservationPhase::Closed { how, .. } => Err(EngineError::ReservationClosed(how)),
        }
    }

    /// Runs `decide` on an open reservation under its user's lock, after expiring it if its time
    /// has run out (then it is closed and the answer is [`EngineError::ReservationClosed`]).
    fn with_open_reservation(
        &self,
        tenant: &Tenant,
        id: Lsn,
        context: &Context<'_>,
        decide: impl FnOnce(
            &Engine,
            &mut UserGuard<'_>,
            &str,
            i64,
            Option<Claim<'_>>,
        ) -> Result<Done, EngineError>,
    ) -> Result<Done, EngineError> {
        let claim = match self.claim(tenant, context, false)? {
            Begin::Replay(done) => return Ok(done),
            Begin::Fresh(claim) => claim,
        };
        let user = self.reservation_owner(tenant, id)?;
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .lock_user(user.as_str())
            .ok_or(EngineError::NotFound(Missing::Reservation))?;
        self.expire_due_reservations(tenant, &user, &mut account, now_ms)?;
        if account.reservation(id).is_none() {
            // Closed between the index lookup and the lock, or just now by expiry.
            drop(account);
            return Err(match self.reservation_owner(tenant, id) {
                Err(error) => error,
                Ok(_) => EngineError::ReservationClosed(ClosedAs::Expired),
            });
        }
        decide(self, &mut account, &user, now_ms, claim)
    }

    /// Charges a reservation and closes it.
    pub fn capture(
        &self,
        tenant: &Tenant,
        request: &CaptureRequest<'_>,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        self.check_texts(request.description, None, request.metadata)?;
        if let Some(amount) = request.amount {
            check_amount("amount", amount, &self.options.limits)?;
        }
        let id = request.reservation_id;
        self.with_open_reservation(
            tenant,
            id,
            context,
            |engine, account, user, now_ms, claim| {
                engine.capture_open(tenant, account, user, now_ms, request, context, claim)
            },
        )
    }

    /// Captures the open reservation `request.reservation_id` of the locked `account`: the wallet
    /// pays first, from what it held and then, for a charge above the reservation, from what it
    /// can still give; the user's pool pays the rest, from what it held and then within the
    /// member's allowance.
    #[allow(clippy::too_many_arguments)]
    fn capture_open(
        &self,
        tenant: &Tenant,
        account: &mut UserGuard<'_>,
        user: &str,
        now_ms: i64,
        request: &CaptureRequest<'_>,
        context: &Context<'_>,
        claim: Option<Claim<'_>>,
    ) -> Result<Done, EngineError> {
        let id = request.reservation_id;
        let reservation = account
            .reservation(id)
            .ok_or(EngineError::NotFound(Missing::Reservation))?;
        let (held, currency, action) = (
            reservation.amount,
            reservation.currency,
            reservation.action.clone(),
        );
        let (pool_amount, pool_day) = (reservation.pool_amount, reservation.pool_day);
        let wallet_held = held - pool_amount;
        let charged = request.amount.unwrap_or(held);
        let wallet = *account
            .wallet(currency)
            .ok_or(EngineError::NotFound(Missing::Reservation))?;
        let reserved_after = checked(wallet.reserved.checked_sub(wallet_held))?;
        let mut meta = self.meta(context, now_ms, request.description);
        meta.metadata = request.metadata;
        let action = action.as_deref().map(|a| ActionUse {
            name: &a.name,
            quantity: a.quantity,
            unit_cost: a.unit_cost,
        });
        let wallet_ref = WalletRef {
            tenant: &tenant.id,
            user,
            currency,
        };
        // Without a pool hold, the wallet alone pays when it can.
        let mut refused = None;
        if pool_amount == 0 {
            let covered = if charged > held {
                spend_from(&wallet, charged - held).map(|_| ())
            } else {
                Ok(())
            };
            match covered {
                Ok(()) => {
                    let balance_after = checked(wallet.balance.checked_sub(charged))?;
                    let available_after = checked(balance_after.checked_sub(reserved_after))?;
                    let event = Event::ReservationCaptured {
                        wallet: wallet_ref,
                        reservation_id: id,
                        held,
                        charged,
                        balance_after,
                        reserved_after,
                        available_after,
                        action,
                        pool: None,
                        meta,
                    };
                    let done = self.commit(tenant, account, &event, claim)?;
                    let spent = Spent {
                        currency,
                        before: wallet.available(),
                        after: available_after,
                        lsn: done.lsn,
                    };
                    self.after_spend(tenant, user, account, &spent);
                    return Ok(done);
                }
                Err(error) => refused = Some(error),
            }
        }
        let mut guard =
            self.member_pool(tenant, account, currency, refused.unwrap_or(MISSING_POOL))?;
        let (pool_id, pool) = guard.split();
        let allowance = allowance(pool, user, Some(account), now_ms);
        let (from_wallet, from_pool, extra) = if charged <= held {
            let from_wallet = charged.min(wallet_held);
            (from_wallet, charged - from_wallet, 0)
        } else {
            let excess = charged - held;
            let from_headroom = excess.min(headroom(&wallet));
            let extra = excess - from_headroom;
            if extra > allowance.available {
                let refused = refused.unwrap_or(EngineError::InsufficientCredits(Shortfall::new(
                    wallet.currency,
                    wallet.balance,
                    wallet.available(),
                    wallet.overdraft,
                    excess,
                )));
                return Err(short(refused, allowance.available));
            }
            (wallet_held + from_headroom, pool_amount + extra, extra)
        };
        // The unused part of the pool's hold comes back to the allowance of the day it was placed.
        let returned = if pool_day == allowance.day {
            pool_amount.saturating_sub(from_pool).max(0)
        } else {
            0
        };
        let counted = extra - returned;
        let balance_after = checked(wallet.balance.checked_sub(from_wallet))?;
        let available_after = checked(balance_after.checked_sub(reserved_after))?;
        let event = Event::ReservationCaptured {
            wallet: wallet_ref,
            reservation_id: id,
            held,
            charged,
            balance_after,
            reserved_after,
            available_after,
            action,
            pool: Some(PoolShare {
                pool: pool_id,
                released: pool_amount,
                held: 0,
                charged: from_pool,
                balance_after: checked(pool.balance.checked_sub(from_pool))?,
                reserved_after: checked(pool.reserved.checked_sub(pool_amount))?,
                counted,
                drawn_after: checked(allowance.drawn.checked_add(counted))?,
            }),
            meta,
        };
        let done = self.commit_shared(tenant, account, pool, &event, claim)?;
        drop(guard);
        let spent = Spent {
            currency,
            before: wallet.available(),
            after: available_after,
            lsn: done.lsn,
        };
        self.after_spend(tenant, user, account, &spent);
        Ok(done)
    }

    /// Moves a reservation's expiry to `ttl_seconds` from now.
    pub fn extend(
        &self,
        tenant: &Tenant,
        reservation_id: Lsn,
        ttl_seconds: u64,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        check_ttl(ttl_seconds, self.options.limits.max_reservation_ttl_seconds)?;
        self.with_open_reservation(
            tenant,
            reservation_id,
            context,
            |engine, account, user, now_ms, claim| {
                let currency = account
                    .reservation(reservation_id)
                    .ok_or(EngineError::NotFound(Missing::Reservation))?
                    .currency;
                let event = Event::ReservationExtended {
                    wallet: WalletRef {
                        tenant: &tenant.id,
                        user,
                        currency,
                    },
                    reservation_id,
                    expires_at_ms: expiry(now_ms, ttl_seconds)?,
                    meta: engine.meta(context, now_ms, None),
                };
                engine.commit(tenant, account, &event, claim)
            },
        )
    }

    /// Releases a reservation without a charge.
    pub fn release(
        &self,
        tenant: &Tenant,
        reservation_id: Lsn,
        context: &Context<'_>,
    ) -> Result<Done, EngineError> {
        self.with_open_reservation(
            tenant,
            reservation_id,
            context,
            |engine, account, user, now_ms, claim| {
                let meta = engine.meta(context, now_ms, None);
                engine.close_without_charge(
                    tenant,
                    user,
                    account,
                    reservation_id,
                    ReleaseReason::Released,
                    meta,
                    claim,
                )
            },
        )
    }

    /// Releases every reservation whose time ran out by `now_ms`; returns how many.
    pub fn expire_reservations(&self, now_ms: i64) -> Result<u64, EngineError> {
        let mut expired = 0u64;
        for tenant in self.state.tenant_list() {
            let due: Vec<(Lsn, CompactString)> = tenant
                .reservations
                .iter()
                .filter_map(|entry| match entry.state {
                    ReservationPhase::Open { expires_at_ms } if expires_at_ms <= now_ms => {
                        Some((*entry.key(), entry.user.clone()))
                    }
                    _ => None,
                })
                .collect();
            for (_, user) in due {
                let Some(mut account) = tenant.lock_user(user.as_str()) else {
                    continue;
                };
                let before = account.reservations().len();
                self.expire_due_reservations(&tenant, &user, &mut account, now_ms)?;
                expired += (before - account.reservations().len()) as u64;
            }
        }
        Ok(expired)
    }
}

fn check_ttl(ttl_seconds: u64, max_seconds: u64) -> Result<(), EngineError> {
    if ttl_seconds == 0 || ttl_seconds > max_seconds {
        return Err(EngineError::Invalid(Invalid::new(
            "ttl_seconds",
            "must be between 1 and limits.max_reservation_ttl_seconds",
        )));
    }
    Ok(())
}

fn expiry(now_ms: i64, ttl_seconds: u64) -> Result<i64, EngineError> {
    let ttl_ms = i64::try_from(ttl_seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .ok_or(EngineError::Overflow)?;
    now_ms.checked_add(ttl_ms).ok_or(EngineError::Overflow)
}
