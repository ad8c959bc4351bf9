//! A user's account: its primary wallet inline, everything rarer behind one pointer, the LSN of
//! its last change, and [`Account::apply`], which checks a user-level event against the account
//! and hands it to the function of its family (`ledger`, `reservations`, `billing`).

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::{Event, ProfileRecord};
use super::super::types::{Currency, Lsn};
use super::billing::Billing;
use super::reservations::{Reservation, ReservationChange};
use super::{mismatch, Mismatch};

/// One wallet: a balance in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Wallet {
    pub balance: i64,
    /// Sum of open reservations, ≥ 0.
    pub reserved: i64,
    /// How far `available` may go below zero, ≥ 0.
    pub overdraft: i64,
    pub currency: Currency,
}

impl Wallet {
    pub fn empty(currency: Currency) -> Wallet {
        Wallet {
            balance: 0,
            reserved: 0,
            overdraft: 0,
            currency,
        }
    }

    /// What can be spent before the overdraft: balance − reserved. The invariants bound both terms
    /// far inside `i64`, so this cannot overflow; it saturates rather than wrap if they were broken.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.reserved)
    }

    /// The lowest `available` may go: minus the overdraft limit.
    pub fn floor(&self) -> i64 {
        -self.overdraft
    }
}

/// A user's profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub email: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub metadata: Option<Box<str>>,
}

impl Profile {
    pub(super) fn from_record(record: &ProfileRecord<'_>) -> Profile {
        Profile {
            email: record.email.map(Box::from),
            name: record.name.map(Box::from),
            metadata: record.metadata.map(Box::from),
        }
    }

    pub fn matches(&self, record: &ProfileRecord<'_>) -> bool {
        self.email.as_deref() == record.email
            && self.name.as_deref() == record.name
            && self.metadata.as_deref() == record.metadata
    }

    pub fn is_empty(&self) -> bool {
        self.email.is_none() && self.name.is_none() && self.metadata.is_none()
    }
}

/// What most users never need: a profile, wallets in further currencies, open reservations,
/// payment state. Kept behind one pointer so that a plain user costs 56 bytes plus its id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountExtra {
    pub profile: Profile,
    pub wallets: Vec<Wallet>,
    pub reservations: Vec<Reservation>,
    /// Behind a further pointer: most users with a profile never pay through creditd.
    pub billing: Option<Box<Billing>>,
    /// The currencies of wallets a chargeback took below their floor, until credits bring them
    /// back to it: the one way a wallet is ever below its floor.
    pub below_floor: Vec<Currency>,
    /// The credit pool the user draws on once its wallet in the pool's currency is spent.
    pub pool: Option<CompactString>,
}

/// A user: its wallets and reservations, and the LSN of the last record that changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// The LSN of the last record that changed the user, and in the top bit
    /// ([`PRIMARY_HAS_RULE`]) whether the primary wallet has an enabled top-up rule: the check
    /// every debit makes without leaving this struct. One word, so a table slot stays 80 bytes.
    pub(super) stamp: u64,
    pub primary: Wallet,
    pub extra: Option<Box<AccountExtra>>,
}

/// The flag bit of [`Account::stamp`]; LSNs stay below it ([`crate::wal::MAX_LSN`]).
pub(super) const PRIMARY_HAS_RULE: u64 = 1 << 63;

impl Account {
    pub fn new(currency: Currency, profile: &ProfileRecord<'_>) -> Account {
        let profile = Profile::from_record(profile);
        let extra = (!profile.is_empty()).then(|| {
            Box::new(AccountExtra {
                profile,
                ..AccountExtra::default()
            })
        });
        Account {
            stamp: 0,
            primary: Wallet::empty(currency),
            extra,
        }
    }

    /// An account as a snapshot holds it; the rule flag is derived again from the rules.
    pub fn restore(last_lsn: Lsn, primary: Wallet, extra: Option<Box<AccountExtra>>) -> Account {
        let mut account = Account {
            stamp: 0,
            primary,
            extra,
        };
        account.set_last_lsn(last_lsn);
        account.refresh_rule_flag(primary.currency);
        account
    }

    /// The LSN of the last record that changed the user.
    pub fn last_lsn(&self) -> Lsn {
        self.stamp & !PRIMARY_HAS_RULE
    }

    pub fn set_last_lsn(&mut self, lsn: Lsn) {
        debug_assert!(lsn <= crate::wal::MAX_LSN, "LSN {lsn} out of range");
        self.stamp = (self.stamp & PRIMARY_HAS_RULE) | (lsn & !PRIMARY_HAS_RULE);
    }

    /// Whether the wallet in `currency` may have an enabled top-up rule: exact for the primary
    /// wallet, from one bit; for the others, whether the user has rules at all (their wallets
    /// live behind `extra` anyway).
    pub fn may_have_rule(&self, currency: Currency) -> bool {
        if currency == self.primary.currency {
            self.stamp & PRIMARY_HAS_RULE != 0
        } else {
            !self.rules().is_empty()
        }
    }

    pub fn wallet(&self, currency: Currency) -> Option<&Wallet> {
        if self.primary.currency == currency {
            return Some(&self.primary);
        }
        self.extra
            .as_ref()?
            .wallets
            .iter()
            .find(|w| w.currency == currency)
    }

    pub fn wallets(&self) -> impl Iterator<Item = &Wallet> {
        std::iter::once(&self.primary)
            .chain(self.extra.iter().flat_map(|extra| extra.wallets.iter()))
    }

    pub(super) fn wallet_mut(&mut self, currency: Currency) -> Option<&mut Wallet> {
        if self.primary.currency == currency {
            return Some(&mut self.primary);
        }
        self.extra
            .as_mut()?
            .wallets
            .iter_mut()
            .find(|w| w.currency == currency)
    }

    pub(super) fn wallet_or_insert(&mut self, currency: Currency) -> &mut Wallet {
        if self.wallet(currency).is_none() {
            self.extra_mut().wallets.push(Wallet::empty(currency));
        }
        // Just ensured to exist.
        self.wallet_mut(currency)
            .unwrap_or_else(|| unreachable!("wallet inserted above"))
    }

    pub(super) fn extra_mut(&mut self) -> &mut AccountExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    pub fn profile(&self) -> Option<&Profile> {
        self.extra.as_ref().map(|extra| &extra.profile)
    }

    /// The credit pool the user draws on, if any.
    pub fn pool(&self) -> Option<&str> {
        self.extra.as_ref()?.pool.as_deref()
    }

    /// A membership set or ended; a user draws on one pool at most.
    fn apply_membership(&mut self, event: &Event<'_>) -> Result<ReservationChange, Mismatch> {
        match *event {
            Event::PoolMemberSet { pool, .. } => {
                if self.pool().is_some_and(|current| current != pool) {
                    return Err(mismatch("the user already draws on another pool"));
                }
                self.extra_mut().pool = Some(pool.into());
            }
            Event::PoolMemberRemoved { pool, .. } => {
                if self.pool() != Some(pool) {
                    return Err(mismatch("the user does not draw on that pool"));
                }
                if self
                    .reservations()
                    .iter()
                    .any(|reservation| reservation.pool_amount > 0)
                {
                    return Err(mismatch(
                        "the user leaves a pool that holds its reservations",
                    ));
                }
                self.extra_mut().pool = None;
            }
            _ => return Err(mismatch("not a membership event")),
        }
        Ok(ReservationChange::None)
    }

    /// Applies a user-level event recorded at `lsn`, after checking it fits.
    pub fn apply(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<ReservationChange, Mismatch> {
        if lsn <= self.last_lsn() {
            return Err(mismatch("record is not newer than the user's last change"));
        }
        let change = match *event {
            Event::UserUpserted { ref profile, .. } => self.apply_profile(profile),
            Event::OverdraftSet { wallet, limit, .. } => self.apply_overdraft(wallet, limit)?,
            Event::Credited { .. } | Event::Debited { .. } => self.apply_ledger(event)?,
            Event::ReservationPlaced { .. }
            | Event::ReservationCaptured { .. }
            | Event::ReservationExtended { .. }
            | Event::ReservationReleased { .. } => self.apply_reservation(lsn, event)?,
            Event::PaymentInitialized { .. }
            | Event::PaymentSucceeded { .. }
            | Event::PaymentFailed { .. }
            | Event::PaymentCheckoutOpened { .. }
            | Event::PaymentMethodSaved { .. } => self.apply_payment(event)?,
            Event::AutoTopupSet { .. }
            | Event::AutoTopupDeleted { .. }
            | Event::AutoTopupDisabled { .. } => self.apply_rule(event)?,
            Event::PoolMemberSet { .. } | Event::PoolMemberRemoved { .. } => {
                self.apply_membership(event)?
            }
            Event::TenantUpserted { .. }
            | Event::PoolPut { .. }
            | Event::PoolCredited { .. }
            | Event::ActionPut { .. }
            | Event::ActionDeleted { .. }
            | Event::PackagePut { .. }
            | Event::PackageDeleted { .. }
            | Event::TenantWebhookSet { .. }
            | Event::TenantPortalOriginsSet { .. }
            | Event::PoolPaymentInitialized { .. }
            | Event::PoolPaymentCheckoutOpened { .. }
            | Event::PoolPaymentSucceeded { .. }
            | Event::PoolPaymentFailed { .. }
            | Event::PaymentUnmatched { .. } => {
                return Err(mismatch("tenant-level event applied to a user"))
            }
        };
        if let Some(wallet) = event.wallet() {
            self.refresh_floor_mark(wallet.currency);
        }
        self.set_last_lsn(lsn);
        Ok(change)
    }

    /// Whether a chargeback took the wallet in `currency` below its floor, and it is not back.
    pub fn is_below_floor(&self, currency: Currency) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|extra| extra.below_floor.contains(&currency))
    }

    /// Marks the wallet in `currency` as taken below its floor by a chargeback.
    pub(super) fn mark_below_floor(&mut self, currency: Currency) {
        let extra = self.extra_mut();
        if !extra.below_floor.contains(&currency) {
            extra.below_floor.push(currency);
        }
    }

    /// Unmarks a marked wallet once it is back at or above its floor. Costs one check on an
    /// account without marks (every account but those in a chargeback's debt).
    fn refresh_floor_mark(&mut self, currency: Currency) {
        let marked = self
            .extra
            .as_ref()
            .is_some_and(|extra| !extra.below_floor.is_empty());
        if !marked {
            return;
        }
        let back = self
            .wallet(currency)
            .is_none_or(|wallet| wallet.available() >= wallet.floor());
        if let (true, Some(extra)) = (back, self.extra.as_mut()) {
            extra.below_floor.retain(|&marked| marked != currency);
        }
    }
}

pub(super) fn expect_sum(
    before: i64,
    delta: i64,
    after: i64,
    what: &'static str,
) -> Result<(), Mismatch> {
    match before.checked_add(delta) {
        Some(sum) if sum == after => Ok(()),
        _ => Err(mismatch(what)),
    }
}

pub(super) fn expect_eq(found: i64, recorded: i64, what: &'static str) -> Result<(), Mismatch> {
    if found == recorded {
        Ok(())
    } else {
        Err(mismatch(what))
    }
}

pub(super) fn expect_above_floor(wallet: &Wallet) -> Result<(), Mismatch> {
    if wallet.reserved < 0 || wallet.available() < wallet.floor() {
        Err(mismatch("wallet would end below its floor"))
    } else {
        Ok(())
    }
}

/// After a change that did not lower `available`: a wallet a chargeback left below its floor
/// (`marked`) may still be below it; any other must be at or above it.
pub(super) fn expect_above_floor_unless_marked(
    wallet: &Wallet,
    marked: bool,
) -> Result<(), Mismatch> {
    if marked && wallet.reserved >= 0 {
        Ok(())
    } else {
        expect_above_floor(wallet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compact_str::CompactString;

    #[test]
    fn a_user_fits_in_an_80_byte_table_slot() {
        // The memory budget per wallet rests on these: the id (24) and the account (56).
        assert_eq!(std::mem::size_of::<Wallet>(), 40);
        assert_eq!(std::mem::size_of::<Account>(), 56);
        assert_eq!(std::mem::size_of::<(CompactString, Account)>(), 80);
    }

    #[test]
    fn the_rule_bit_leaves_the_lsn_alone() {
        let profile = ProfileRecord {
            email: None,
            name: None,
            metadata: None,
        };
        let mut account = Account::new(Currency::CREDITS, &profile);
        account.set_last_lsn(crate::wal::MAX_LSN);
        account.stamp |= PRIMARY_HAS_RULE;
        assert_eq!(account.last_lsn(), crate::wal::MAX_LSN);
        account.set_last_lsn(7);
        assert_eq!(account.last_lsn(), 7);
        assert!(account.may_have_rule(Currency::CREDITS));
    }
}
