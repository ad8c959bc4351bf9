//! Reservations: reserve, capture, extend, release, and the expiry of those whose time ran out.

use compact_str::CompactString;

use crate::engine::commit::dry_run_answer;
use crate::engine::event::{ActionUse, Event, Meta, WalletRef};
use crate::engine::idempotency::{Begin, Claim, Done};
use crate::engine::notify::Spent;
use crate::engine::state::{Account, ReservationPhase, Tenant};
use crate::engine::types::{
    check_amount, check_id, ClosedAs, EngineError, Invalid, Lsn, Missing, ReleaseReason,
};
use crate::engine::{Context, Engine};

use super::checks::{checked, spend_from};
use super::{CaptureRequest, ReserveRequest};

impl Engine {
    /// Releases, through the log, every reservation of this user whose time has run out. Runs
    /// under the user's lock, before a decision that depends on `available`.
    pub(super) fn expire_due_reservations(
        &self,
        tenant: &Tenant,
        user: &str,
        account: &mut Account,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if account.extra.is_none() {
            return Ok(());
        }
        while let Some(reservation) = account.first_due_reservation(now_ms) {
            let (id, currency, amount) = (reservation.id, reservation.currency, reservation.amount);
            let wallet = *account
                .wallet(currency)
                .ok_or(EngineError::Conflict("reservation on a missing wallet"))?;
            let reserved_after = checked(wallet.reserved.checked_sub(amount))?;
            let event = Event::ReservationReleased {
                wallet: WalletRef {
                    tenant: &tenant.id,
                    user,
                    currency,
                },
                reservation_id: id,
                amount,
                reason: ReleaseReason::Expired,
                reserved_after,
                available_after: checked(wallet.balance.checked_sub(reserved_after))?,
                meta: Meta::system(now_ms),
            };
            self.commit(tenant, account, &event, None)?;
        }
        Ok(())
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
            .users
            .get_mut(request.user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        if !request.dry_run {
            self.expire_due_reservations(tenant, request.user, &mut account, now_ms)?;
        }
        if account.open_reservations_as_of(now_ms) >= limits.max_reservations_per_user as usize {
            return Err(EngineError::TooManyReservations);
        }
        let wallet = account.wallet_as_of(price.currency, now_ms);
        let available_after = spend_from(&wallet, price.amount)?;
        let mut meta = self.meta(context, now_ms, request.description);
        meta.metadata = request.metadata;
        let event = Event::ReservationPlaced {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: request.user,
                currency: price.currency,
            },
            amount: price.amount,
            expires_at_ms: expiry(now_ms, ttl_seconds)?,
            reserved_after: checked(wallet.reserved.checked_add(price.amount))?,
            available_after,
            action: price.action,
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
            &mut Account,
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
            .users
            .get_mut(user.as_str())
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
                let reservation = account
                    .reservation(id)
                    .ok_or(EngineError::NotFound(Missing::Reservation))?;
                let (held, currency, action) = (
                    reservation.amount,
                    reservation.currency,
                    reservation.action.clone(),
                );
                let charged = request.amount.unwrap_or(held);
                let wallet = *account
                    .wallet(currency)
                    .ok_or(EngineError::NotFound(Missing::Reservation))?;
                if charged > held {
                    spend_from(&wallet, charged - held)?;
                }
                let balance_after = wallet
                    .balance
                    .checked_sub(charged)
                    .ok_or(EngineError::Overflow)?;
                let reserved_after = checked(wallet.reserved.checked_sub(held))?;
                let mut meta = engine.meta(context, now_ms, request.description);
                meta.metadata = request.metadata;
                let event = Event::ReservationCaptured {
                    wallet: WalletRef {
                        tenant: &tenant.id,
                        user,
                        currency,
                    },
                    reservation_id: id,
                    held,
                    charged,
                    balance_after,
                    reserved_after,
                    available_after: checked(balance_after.checked_sub(reserved_after))?,
                    action: action.as_deref().map(|a| ActionUse {
                        name: &a.name,
                        quantity: a.quantity,
                        unit_cost: a.unit_cost,
                    }),
                    meta,
                };
                let done = engine.commit(tenant, account, &event, claim)?;
                let after = balance_after - reserved_after;
                let spent = Spent {
                    currency,
                    before: wallet.available(),
                    after,
                    lsn: done.lsn,
                };
                engine.after_spend(tenant, user, account, &spent);
                Ok(done)
            },
        )
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
                let reservation = account
                    .reservation(reservation_id)
                    .ok_or(EngineError::NotFound(Missing::Reservation))?;
                let (amount, currency) = (reservation.amount, reservation.currency);
                let wallet = *account
                    .wallet(currency)
                    .ok_or(EngineError::NotFound(Missing::Reservation))?;
                let reserved_after = checked(wallet.reserved.checked_sub(amount))?;
                let event = Event::ReservationReleased {
                    wallet: WalletRef {
                        tenant: &tenant.id,
                        user,
                        currency,
                    },
                    reservation_id,
                    amount,
                    reason: ReleaseReason::Released,
                    reserved_after,
                    available_after: checked(wallet.balance.checked_sub(reserved_after))?,
                    meta: engine.meta(context, now_ms, None),
                };
                engine.commit(tenant, account, &event, claim)
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
                let Some(mut account) = tenant.users.get_mut(user.as_str()) else {
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
