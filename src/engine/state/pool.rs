//! Credit pools: an organisation's balance that its members draw on once their own wallets are
//! spent, each within a daily cap. A pool is an entity of its own, in the tenant's pool map,
//! keyed apart from users (see `locks` for the order in which a member's spend takes both).
//!
//! A member's draws of a UTC day count what the pool paid for it that day and what the pool holds
//! for its reservations placed that day: a hold counts when it is placed (so that a member cannot
//! reserve past its cap), and its unused part comes back to the allowance only if it closes the
//! same day; a capture above its hold counts the excess the pool pays on the day of the capture.
//! So no member ever draws, or holds, more than its cap in a UTC day.
//!
//! [`Pool::apply`] checks every record against the pool as [`super::Account::apply`] does for a
//! wallet: the balance before minus what the pool paid must equal the balance recorded, and so on
//! for the reserved amount and the member's draws of the day. Replay so proves, record by record,
//! that a pool's balance is its credits minus what it paid, and that no member went above its cap.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::{Event, PoolShare};
use super::super::types::{Currency, Lsn};
use super::account::{expect_eq, expect_sum};
use super::{mismatch, Mismatch};

/// The UTC day (since the Unix epoch) holding `time_ms`: the period of a member's daily cap.
pub(crate) use super::billing::utc_day;

/// A member of a pool: its cap, and what it drew on the last day it drew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// The most the member may draw per UTC day; none: only the pool's balance limits it.
    pub daily_cap: Option<i64>,
    /// The UTC day of `drawn`.
    pub day: i64,
    /// What the member drew (and holds) on `day`.
    pub drawn: i64,
}

impl Member {
    /// What the member has drawn on `day`.
    pub fn drawn_on(&self, day: i64) -> i64 {
        if self.day == day {
            self.drawn
        } else {
            0
        }
    }
}

/// A credit pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pool {
    /// The LSN of the last record that changed the pool.
    pub last_lsn: Lsn,
    /// Display name.
    pub name: Option<Box<str>>,
    /// The currency of its credits, fixed when it is created; members draw on it for spends in
    /// this currency only.
    pub currency: Currency,
    /// Credits in the pool.
    pub balance: i64,
    /// Held by members' open reservations.
    pub reserved: i64,
    /// Credits ever added.
    pub credited: i64,
    /// Credits ever paid for members' spends.
    pub paid: i64,
    /// The members, by user id.
    pub members: BTreeMap<CompactString, Member>,
}

impl Pool {
    /// An empty pool.
    pub fn new(name: Option<&str>, currency: Currency) -> Pool {
        Pool {
            last_lsn: 0,
            name: name.map(Box::from),
            currency,
            balance: 0,
            reserved: 0,
            credited: 0,
            paid: 0,
            members: BTreeMap::new(),
        }
    }

    /// What members may still draw: balance − reserved.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.reserved)
    }

    /// What all members drew on `day`.
    pub fn drawn_on(&self, day: i64) -> i64 {
        self.members
            .values()
            .fold(0i64, |sum, member| sum.saturating_add(member.drawn_on(day)))
    }

    /// Applies a record that changes the pool, at `lsn`, after checking it fits.
    pub fn apply(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        if lsn <= self.last_lsn {
            return Err(mismatch("record is not newer than the pool's last change"));
        }
        match *event {
            Event::PoolPut { name, currency, .. } => {
                if currency != self.currency {
                    return Err(mismatch("a pool's currency cannot change"));
                }
                self.name = name.map(Box::from);
            }
            Event::PoolCredited {
                currency,
                amount,
                balance_after,
                available_after,
                ..
            } => {
                if currency != self.currency {
                    return Err(mismatch("pool credit in another currency"));
                }
                if amount <= 0 {
                    return Err(mismatch("pool credit of nothing"));
                }
                expect_sum(
                    self.balance,
                    amount,
                    balance_after,
                    "pool credit: balance + amount ≠ balance_after",
                )?;
                self.credited = self
                    .credited
                    .checked_add(amount)
                    .ok_or_else(|| mismatch("pool credits overflow"))?;
                self.balance = balance_after;
                expect_eq(
                    self.available(),
                    available_after,
                    "pool credit: available_after mismatch",
                )?;
            }
            Event::PoolPaymentSucceeded {
                currency,
                credits,
                balance_after,
                available_after,
                ..
            } => {
                if currency != self.currency {
                    return Err(mismatch("pool payment in another currency"));
                }
                if credits <= 0 {
                    return Err(mismatch("pool payment of nothing"));
                }
                expect_sum(
                    self.balance,
                    credits,
                    balance_after,
                    "pool payment: balance + credits ≠ balance_after",
                )?;
                self.credited = self
                    .credited
                    .checked_add(credits)
                    .ok_or_else(|| mismatch("pool credits overflow"))?;
                self.balance = balance_after;
                expect_eq(
                    self.available(),
                    available_after,
                    "pool payment: available_after mismatch",
                )?;
            }
            Event::PoolPaymentInitialized { currency, .. } => {
                if currency != self.currency {
                    return Err(mismatch("pool payment in another currency"));
                }
            }
            // The payments map holds what these change; the pool only sees them pass.
            Event::PoolPaymentCheckoutOpened { .. } | Event::PoolPaymentFailed { .. } => {}
            Event::PoolMemberSet {
                user,
                daily_cap,
                meta,
                ..
            } => {
                let day = utc_day(meta.time_ms);
                let drawn = self
                    .members
                    .get(user)
                    .map_or(0, |member| member.drawn_on(day));
                if daily_cap.is_some_and(|cap| cap < 0 || drawn > cap) {
                    return Err(mismatch("daily cap below what the member drew today"));
                }
                self.members
                    .entry(user.into())
                    .and_modify(|member| {
                        // Draws of an earlier day are spent history: the new cap counts from
                        // today's (the refusal above looked at today's draws only).
                        if member.day != day {
                            member.day = day;
                            member.drawn = 0;
                        }
                        member.daily_cap = daily_cap;
                    })
                    .or_insert(Member {
                        daily_cap,
                        day,
                        drawn: 0,
                    });
            }
            Event::PoolMemberRemoved { user, .. } => {
                if self.members.remove(user).is_none() {
                    return Err(mismatch("removal of a user who is not a member"));
                }
            }
            _ => {
                let (Some(share), Some(wallet)) = (event.pool_share(), event.wallet()) else {
                    return Err(mismatch("not a pool event"));
                };
                self.apply_share(wallet.user, share, event.meta().time_ms)?;
            }
        }
        self.last_lsn = lsn;
        Ok(())
    }

    /// A member's spend: what the pool pays, holds or lets go of, and the member's draws.
    fn apply_share(
        &mut self,
        user: &str,
        share: &PoolShare<'_>,
        time_ms: i64,
    ) -> Result<(), Mismatch> {
        if share.released < 0 || share.held < 0 || share.charged < 0 {
            return Err(mismatch("pool share with a negative part"));
        }
        let held = share
            .held
            .checked_sub(share.released)
            .ok_or_else(|| mismatch("pool share overflows"))?;
        expect_sum(
            self.reserved,
            held,
            share.reserved_after,
            "pool: reserved + held − released ≠ reserved_after",
        )?;
        let paid = share
            .charged
            .checked_neg()
            .ok_or_else(|| mismatch("pool share overflows"))?;
        expect_sum(
            self.balance,
            paid,
            share.balance_after,
            "pool: balance − charged ≠ balance_after",
        )?;
        if share.reserved_after < 0 || share.balance_after < share.reserved_after {
            return Err(mismatch("pool would hold more than its balance"));
        }
        let day = utc_day(time_ms);
        let member = self
            .members
            .get_mut(user)
            .ok_or_else(|| mismatch("pool share of a user who is not a member"))?;
        expect_sum(
            member.drawn_on(day),
            share.counted,
            share.drawn_after,
            "pool: member's draws + counted ≠ drawn_after",
        )?;
        if share.drawn_after < 0 || member.daily_cap.is_some_and(|cap| share.drawn_after > cap) {
            return Err(mismatch("member above its daily cap"));
        }
        let paid = self
            .paid
            .checked_add(share.charged)
            .ok_or_else(|| mismatch("pool payments overflow"))?;
        member.day = day;
        member.drawn = share.drawn_after;
        self.paid = paid;
        self.balance = share.balance_after;
        self.reserved = share.reserved_after;
        Ok(())
    }
}
