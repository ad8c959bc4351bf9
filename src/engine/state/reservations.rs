//! Reservations: a user's open reservations (inside its account) and the tenant's index of every
//! reservation by id, open or recently closed, which finds a reservation's user without a scan.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::Event;
use super::super::types::{ClosedAs, Currency, Lsn, ReleaseReason};
use super::account::{expect_above_floor_unless_marked, expect_eq, expect_sum, Account, Wallet};
use super::tenant::Tenant;
use super::{mismatch, Mismatch};

/// The action a reservation was made for, kept to label its capture in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReservationAction {
    pub name: CompactString,
    pub quantity: u64,
    pub unit_cost: i64,
}

/// An open reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reservation {
    /// The LSN of the record that placed it.
    pub id: Lsn,
    pub currency: Currency,
    pub amount: i64,
    pub expires_at_ms: i64,
    pub action: Option<Box<ReservationAction>>,
    /// Of `amount`, what the user's credit pool holds (the wallet holds the rest).
    pub pool_amount: i64,
    /// The UTC day the pool's part was placed, which it counts against the member's cap.
    pub pool_day: i64,
}

impl Reservation {
    /// What the wallet holds of it.
    pub fn wallet_amount(&self) -> i64 {
        self.amount - self.pool_amount
    }
}

/// How applying an event changed the user's reservations, for the tenant's reservation index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReservationChange {
    None,
    Opened {
        id: Lsn,
        expires_at_ms: i64,
    },
    Extended {
        id: Lsn,
        expires_at_ms: i64,
    },
    Closed {
        id: Lsn,
        how: ClosedAs,
        currency: Currency,
        amount: i64,
    },
}

/// Where a reservation lives, and whether it is still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReservationEntry {
    pub user: CompactString,
    pub state: ReservationPhase,
}

/// The state of a reservation in the tenant's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ReservationPhase {
    Open {
        expires_at_ms: i64,
    },
    /// Closed: how and when, and what it held (still shown once it is closed).
    Closed {
        how: ClosedAs,
        at_ms: i64,
        currency: Currency,
        amount: i64,
    },
}

impl Account {
    pub fn reservations(&self) -> &[Reservation] {
        self.extra.as_ref().map_or(&[], |extra| &extra.reservations)
    }

    pub fn reservation(&self, id: Lsn) -> Option<&Reservation> {
        self.reservations()
            .iter()
            .find(|reservation| reservation.id == id)
    }

    /// The wallet in `currency` as it is once every reservation due by `now_ms` is released: what
    /// a dry run must decide on, since the real request releases them first.
    pub fn wallet_as_of(&self, currency: Currency, now_ms: i64) -> Wallet {
        let mut wallet = self
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        for reservation in self
            .reservations()
            .iter()
            .filter(|h| h.currency == currency && h.expires_at_ms <= now_ms)
        {
            wallet.reserved -= reservation.wallet_amount();
        }
        wallet
    }

    /// Reservations still open at `now_ms`.
    pub fn open_reservations_as_of(&self, now_ms: i64) -> usize {
        self.reservations()
            .iter()
            .filter(|reservation| reservation.expires_at_ms > now_ms)
            .count()
    }

    /// The first open reservation whose time ran out at `now_ms`.
    pub fn first_due_reservation(&self, now_ms: i64) -> Option<&Reservation> {
        self.reservations()
            .iter()
            .find(|reservation| reservation.expires_at_ms <= now_ms)
    }

    fn remove_reservation(&mut self, id: Lsn) -> Option<Reservation> {
        let reservations = &mut self.extra.as_mut()?.reservations;
        let index = reservations
            .iter()
            .position(|reservation| reservation.id == id)?;
        Some(reservations.swap_remove(index))
    }

    /// A reservation placed, captured, extended or released.
    pub(super) fn apply_reservation(
        &mut self,
        lsn: Lsn,
        event: &Event<'_>,
    ) -> Result<ReservationChange, Mismatch> {
        match *event {
            Event::ReservationPlaced { .. } => self.apply_placed(lsn, event),
            Event::ReservationCaptured { .. } => self.apply_captured(event),
            Event::ReservationExtended {
                reservation_id,
                expires_at_ms,
                ..
            } => {
                let reservation = self
                    .extra
                    .as_mut()
                    .and_then(|extra| {
                        extra
                            .reservations
                            .iter_mut()
                            .find(|reservation| reservation.id == reservation_id)
                    })
                    .ok_or_else(|| mismatch("extension of a reservation that is not open"))?;
                reservation.expires_at_ms = expires_at_ms;
                Ok(ReservationChange::Extended {
                    id: reservation_id,
                    expires_at_ms,
                })
            }
            Event::ReservationReleased { .. } => self.apply_released(event),
            _ => Err(mismatch("not a reservation event")),
        }
    }

    fn apply_placed(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<ReservationChange, Mismatch> {
        let Event::ReservationPlaced {
            wallet,
            amount,
            expires_at_ms,
            reserved_after,
            available_after,
            action,
            pool,
            meta,
            ..
        } = *event
        else {
            return Err(mismatch("not a reservation event"));
        };
        // What the wallet holds: the amount, less what the user's pool holds (a wallet the user
        // never had is made for it, empty).
        let pool_amount = match pool {
            None => 0,
            Some(share) => {
                if share.held <= 0 || share.held > amount || share.released != 0 {
                    return Err(mismatch("reserve: the pool holds nothing or too much"));
                }
                self.wallet_or_insert(wallet.currency);
                share.held
            }
        };
        // A hold the pool takes whole does not lower `available`: it may leave a wallet a
        // chargeback took below its floor still below it.
        let may_stay_below = pool_amount == amount && self.is_below_floor(wallet.currency);
        let target = self
            .wallet_mut(wallet.currency)
            .ok_or_else(|| mismatch("reservation on a missing wallet"))?;
        expect_sum(
            target.reserved,
            amount - pool_amount,
            reserved_after,
            "reserve: reserved + amount ≠ reserved_after",
        )?;
        target.reserved = reserved_after;
        expect_eq(
            target.available(),
            available_after,
            "reserve: available_after mismatch",
        )?;
        expect_above_floor_unless_marked(target, may_stay_below)?;
        let action = action.map(|a| {
            Box::new(ReservationAction {
                name: a.name.into(),
                quantity: a.quantity,
                unit_cost: a.unit_cost,
            })
        });
        let reservation = Reservation {
            id: lsn,
            currency: wallet.currency,
            amount,
            expires_at_ms,
            action,
            pool_amount,
            pool_day: if pool_amount > 0 {
                super::pool::utc_day(meta.time_ms)
            } else {
                0
            },
        };
        self.extra_mut().reservations.push(reservation);
        Ok(ReservationChange::Opened {
            id: lsn,
            expires_at_ms,
        })
    }

    fn apply_captured(&mut self, event: &Event<'_>) -> Result<ReservationChange, Mismatch> {
        let Event::ReservationCaptured {
            wallet,
            reservation_id,
            held,
            charged,
            balance_after,
            reserved_after,
            available_after,
            pool,
            ..
        } = *event
        else {
            return Err(mismatch("not a reservation event"));
        };
        let (pool_released, pool_charged) = match pool {
            Some(share)
                if share.held != 0
                    || share.released < 0
                    || share.charged < 0
                    || share.charged > charged =>
            {
                return Err(mismatch("capture: the pool pays more than the charge"))
            }
            Some(share) => (share.released, share.charged),
            None => (0, 0),
        };
        self.take_reservation(reservation_id, wallet.currency, held, pool_released)?;
        let below_floor = self.is_below_floor(wallet.currency);
        let target = self
            .wallet_mut(wallet.currency)
            .ok_or_else(|| mismatch("capture on a missing wallet"))?;
        let overflow = || mismatch("capture: amounts overflow");
        let wallet_held = pool_released.checked_sub(held).ok_or_else(overflow)?;
        let wallet_charged = pool_charged.checked_sub(charged).ok_or_else(overflow)?;
        // A capture whose wallet part stays within the wallet's part of the hold does not lower
        // `available`: it may leave a wallet a chargeback took below its floor still below it.
        let may_stay_below = below_floor && wallet_charged >= wallet_held;
        expect_sum(
            target.reserved,
            wallet_held,
            reserved_after,
            "capture: reserved − held ≠ reserved_after",
        )?;
        expect_sum(
            target.balance,
            wallet_charged,
            balance_after,
            "capture: balance − charged ≠ balance_after",
        )?;
        target.reserved = reserved_after;
        target.balance = balance_after;
        expect_eq(
            target.available(),
            available_after,
            "capture: available_after mismatch",
        )?;
        expect_above_floor_unless_marked(target, may_stay_below)?;
        Ok(ReservationChange::Closed {
            id: reservation_id,
            how: ClosedAs::Captured,
            currency: wallet.currency,
            amount: held,
        })
    }

    fn apply_released(&mut self, event: &Event<'_>) -> Result<ReservationChange, Mismatch> {
        let Event::ReservationReleased {
            wallet,
            reservation_id,
            amount,
            reason,
            reserved_after,
            available_after,
            pool,
            ..
        } = *event
        else {
            return Err(mismatch("not a reservation event"));
        };
        let pool_released = match pool {
            Some(share) if share.held != 0 || share.charged != 0 || share.released < 0 => {
                return Err(mismatch("release: the pool holds or pays"))
            }
            Some(share) => share.released,
            None => 0,
        };
        self.take_reservation(reservation_id, wallet.currency, amount, pool_released)?;
        let target = self
            .wallet_mut(wallet.currency)
            .ok_or_else(|| mismatch("release on a missing wallet"))?;
        let wallet_released = pool_released
            .checked_sub(amount)
            .ok_or_else(|| mismatch("release: amounts overflow"))?;
        expect_sum(
            target.reserved,
            wallet_released,
            reserved_after,
            "release: reserved − amount ≠ reserved_after",
        )?;
        target.reserved = reserved_after;
        expect_eq(
            target.available(),
            available_after,
            "release: available_after mismatch",
        )?;
        let how = match reason {
            ReleaseReason::Released => ClosedAs::Released,
            ReleaseReason::Expired => ClosedAs::Expired,
        };
        Ok(ReservationChange::Closed {
            id: reservation_id,
            how,
            currency: wallet.currency,
            amount,
        })
    }

    fn take_reservation(
        &mut self,
        id: Lsn,
        currency: Currency,
        amount: i64,
        pool_amount: i64,
    ) -> Result<(), Mismatch> {
        let reservation = self
            .reservation(id)
            .ok_or_else(|| mismatch("reservation is not open"))?;
        if reservation.currency != currency
            || reservation.amount != amount
            || reservation.pool_amount != pool_amount
        {
            return Err(mismatch("reservation holds a different amount or currency"));
        }
        self.remove_reservation(id);
        Ok(())
    }
}

impl Tenant {
    /// Records a reservation change in the index (under the user's lock, so index and account agree).
    pub(crate) fn index_reservation(&self, user: &str, change: ReservationChange, time_ms: i64) {
        match change {
            ReservationChange::None => {}
            ReservationChange::Opened { id, expires_at_ms } => {
                self.reservations.insert(
                    id,
                    ReservationEntry {
                        user: user.into(),
                        state: ReservationPhase::Open { expires_at_ms },
                    },
                );
            }
            ReservationChange::Extended { id, expires_at_ms } => {
                if let Some(mut entry) = self.reservations.get_mut(&id) {
                    entry.state = ReservationPhase::Open { expires_at_ms };
                }
            }
            ReservationChange::Closed {
                id,
                how,
                currency,
                amount,
            } => {
                self.reservations.insert(
                    id,
                    ReservationEntry {
                        user: user.into(),
                        state: ReservationPhase::Closed {
                            how,
                            at_ms: time_ms,
                            currency,
                            amount,
                        },
                    },
                );
            }
        }
    }
}
