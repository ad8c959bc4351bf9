//! Reservations: a user's open reservations (inside its account) and the tenant's index of every
//! reservation by id, open or recently closed, which finds a reservation's user without a scan.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::Event;
use super::super::types::{ClosedAs, Currency, Lsn, ReleaseReason};
use super::account::{expect_above_floor, expect_eq, expect_sum, Account, Wallet};
use super::tenant::Tenant;
use super::{mismatch, Mismatch};

/// The action a reservation was made for, kept to label its capture in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HoldAction {
    pub name: CompactString,
    pub quantity: u64,
    pub unit_cost: i64,
}

/// An open reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hold {
    /// The LSN of the record that placed it.
    pub id: Lsn,
    pub currency: Currency,
    pub amount: i64,
    pub expires_at_ms: i64,
    pub action: Option<Box<HoldAction>>,
}

/// How applying an event changed the user's reservations, for the tenant's reservation index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldChange {
    None,
    Opened { id: Lsn, expires_at_ms: i64 },
    Extended { id: Lsn, expires_at_ms: i64 },
    Closed { id: Lsn, how: ClosedAs },
}

/// Where a reservation lives, and whether it is still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HoldEntry {
    pub user: CompactString,
    pub state: HoldState,
}

/// The state of a reservation in the tenant's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HoldState {
    Open { expires_at_ms: i64 },
    Closed { how: ClosedAs, at_ms: i64 },
}

impl Account {
    pub fn holds(&self) -> &[Hold] {
        self.extra.as_ref().map_or(&[], |extra| &extra.holds)
    }

    pub fn hold(&self, id: Lsn) -> Option<&Hold> {
        self.holds().iter().find(|hold| hold.id == id)
    }

    /// The wallet in `currency` as it is once every reservation due by `now_ms` is released: what
    /// a dry run must decide on, since the real request releases them first.
    pub fn wallet_as_of(&self, currency: Currency, now_ms: i64) -> Wallet {
        let mut wallet = self
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        for hold in self
            .holds()
            .iter()
            .filter(|h| h.currency == currency && h.expires_at_ms <= now_ms)
        {
            wallet.reserved -= hold.amount;
        }
        wallet
    }

    /// Reservations still open at `now_ms`.
    pub fn open_holds_as_of(&self, now_ms: i64) -> usize {
        self.holds()
            .iter()
            .filter(|hold| hold.expires_at_ms > now_ms)
            .count()
    }

    /// The first open reservation whose time ran out at `now_ms`.
    pub fn first_due_hold(&self, now_ms: i64) -> Option<&Hold> {
        self.holds()
            .iter()
            .find(|hold| hold.expires_at_ms <= now_ms)
    }

    fn remove_hold(&mut self, id: Lsn) -> Option<Hold> {
        let holds = &mut self.extra.as_mut()?.holds;
        let index = holds.iter().position(|hold| hold.id == id)?;
        Some(holds.swap_remove(index))
    }

    /// A reservation placed, captured, extended or released.
    pub(super) fn apply_reservation(
        &mut self,
        lsn: Lsn,
        event: &Event<'_>,
    ) -> Result<HoldChange, Mismatch> {
        match *event {
            Event::HoldPlaced { .. } => self.apply_placed(lsn, event),
            Event::HoldCaptured { .. } => self.apply_captured(event),
            Event::HoldExtended {
                hold_id,
                expires_at_ms,
                ..
            } => {
                let hold = self
                    .extra
                    .as_mut()
                    .and_then(|extra| extra.holds.iter_mut().find(|hold| hold.id == hold_id))
                    .ok_or_else(|| mismatch("extension of a reservation that is not open"))?;
                hold.expires_at_ms = expires_at_ms;
                Ok(HoldChange::Extended {
                    id: hold_id,
                    expires_at_ms,
                })
            }
            Event::HoldReleased { .. } => self.apply_released(event),
            _ => Err(mismatch("not a reservation event")),
        }
    }

    fn apply_placed(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<HoldChange, Mismatch> {
        let Event::HoldPlaced {
            wallet,
            amount,
            expires_at_ms,
            reserved_after,
            available_after,
            action,
            ..
        } = *event
        else {
            return Err(mismatch("not a reservation event"));
        };
        let target = self
            .wallet_mut(wallet.currency)
            .ok_or_else(|| mismatch("reservation on a missing wallet"))?;
        expect_sum(
            target.reserved,
            amount,
            reserved_after,
            "reserve: reserved + amount ≠ reserved_after",
        )?;
        target.reserved = reserved_after;
        expect_eq(
            target.available(),
            available_after,
            "reserve: available_after mismatch",
        )?;
        expect_above_floor(target)?;
        let action = action.map(|a| {
            Box::new(HoldAction {
                name: a.name.into(),
                quantity: a.quantity,
                unit_cost: a.unit_cost,
            })
        });
        let hold = Hold {
            id: lsn,
            currency: wallet.currency,
            amount,
            expires_at_ms,
            action,
        };
        self.extra_mut().holds.push(hold);
        Ok(HoldChange::Opened {
            id: lsn,
            expires_at_ms,
        })
    }

    fn apply_captured(&mut self, event: &Event<'_>) -> Result<HoldChange, Mismatch> {
        let Event::HoldCaptured {
            wallet,
            hold_id,
            held,
            charged,
            balance_after,
            reserved_after,
            available_after,
            ..
        } = *event
        else {
            return Err(mismatch("not a reservation event"));
        };
        self.take_hold(hold_id, wallet.currency, held)?;
        let target = self
            .wallet_mut(wallet.currency)
            .ok_or_else(|| mismatch("capture on a missing wallet"))?;
        expect_sum(
            target.reserved,
            -held,
            reserved_after,
            "capture: reserved − held ≠ reserved_after",
        )?;
        expect_sum(
            target.balance,
            -charged,
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
        expect_above_floor(target)?;
        Ok(HoldChange::Closed {
            id: hold_id,
            how: ClosedAs::Captured,
        })
    }

    fn apply_released(&mut self, event: &Event<'_>) -> Result<HoldChange, Mismatch> {
        let Event::HoldReleased {
            wallet,
            hold_id,
            amount,
            reason,
            reserved_after,
            available_after,
            ..
        } = *event
        else {
            return Err(mismatch("not a reservation event"));
        };
        self.take_hold(hold_id, wallet.currency, amount)?;
        let target = self
            .wallet_mut(wallet.currency)
            .ok_or_else(|| mismatch("release on a missing wallet"))?;
        expect_sum(
            target.reserved,
            -amount,
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
        Ok(HoldChange::Closed { id: hold_id, how })
    }

    fn take_hold(&mut self, id: Lsn, currency: Currency, amount: i64) -> Result<(), Mismatch> {
        let hold = self
            .hold(id)
            .ok_or_else(|| mismatch("reservation is not open"))?;
        if hold.currency != currency || hold.amount != amount {
            return Err(mismatch("reservation holds a different amount or currency"));
        }
        self.remove_hold(id);
        Ok(())
    }
}

impl Tenant {
    /// Records a reservation change in the index (under the user's lock, so index and account agree).
    pub(crate) fn index_hold(&self, user: &str, change: HoldChange, time_ms: i64) {
        match change {
            HoldChange::None => {}
            HoldChange::Opened { id, expires_at_ms } => {
                self.holds.insert(
                    id,
                    HoldEntry {
                        user: user.into(),
                        state: HoldState::Open { expires_at_ms },
                    },
                );
            }
            HoldChange::Extended { id, expires_at_ms } => {
                if let Some(mut entry) = self.holds.get_mut(&id) {
                    entry.state = HoldState::Open { expires_at_ms };
                }
            }
            HoldChange::Closed { id, how } => {
                self.holds.insert(
                    id,
                    HoldEntry {
                        user: user.into(),
                        state: HoldState::Closed {
                            how,
                            at_ms: time_ms,
                        },
                    },
                );
            }
        }
    }
}
