//! The ledger's changes to a wallet: credits, debits, the overdraft limit, and the profile that
//! rides along with the user. Each checks the recorded result against the balance it lands on.

use super::super::event::{Event, ProfileRecord, WalletRef};
use super::super::types::DebitKind;
use super::account::{expect_above_floor_unless_marked, expect_eq, expect_sum, Account, Profile};
use super::reservations::ReservationChange;
use super::{mismatch, Mismatch};

impl Account {
    /// A profile set or replaced; an empty one on a plain user stores nothing.
    pub(super) fn apply_profile(&mut self, profile: &ProfileRecord<'_>) -> ReservationChange {
        let profile = Profile::from_record(profile);
        if profile.is_empty() && self.extra.is_none() {
            // Nothing to store.
        } else {
            self.extra_mut().profile = profile;
        }
        ReservationChange::None
    }

    /// A new overdraft limit, refused if the wallet is already deeper in debt.
    pub(super) fn apply_overdraft(
        &mut self,
        wallet: WalletRef<'_>,
        limit: i64,
    ) -> Result<ReservationChange, Mismatch> {
        let target = self.wallet_or_insert(wallet.currency);
        if limit < 0 || target.available() < -limit {
            return Err(mismatch("overdraft limit below the wallet's current debt"));
        }
        target.overdraft = limit;
        Ok(ReservationChange::None)
    }

    /// A credit or a debit: the balance moves by the amount, to the balance recorded.
    pub(super) fn apply_ledger(
        &mut self,
        event: &Event<'_>,
    ) -> Result<ReservationChange, Mismatch> {
        match *event {
            Event::Credited {
                wallet,
                amount,
                balance_after,
                available_after,
                ..
            } => {
                let target = self.wallet_or_insert(wallet.currency);
                expect_sum(
                    target.balance,
                    amount,
                    balance_after,
                    "credit: balance + amount ≠ balance_after",
                )?;
                target.balance = balance_after;
                expect_eq(
                    target.available(),
                    available_after,
                    "credit: available_after mismatch",
                )?;
            }
            Event::Debited {
                wallet,
                kind: DebitKind::Chargeback,
                amount,
                balance_after,
                available_after,
                ..
            } => {
                // Taken whatever the wallet holds, even one it never had: below the floor is
                // allowed, and marked.
                let target = self.wallet_or_insert(wallet.currency);
                expect_sum(
                    target.balance,
                    -amount,
                    balance_after,
                    "chargeback: balance − amount ≠ balance_after",
                )?;
                target.balance = balance_after;
                expect_eq(
                    target.available(),
                    available_after,
                    "chargeback: available_after mismatch",
                )?;
                if target.available() < target.floor() {
                    self.mark_below_floor(wallet.currency);
                }
            }
            Event::Debited {
                wallet,
                amount,
                balance_after,
                available_after,
                pool,
                ..
            } => {
                // What the wallet pays: the amount, less what the user's pool pays (a wallet
                // the user never had is made for it, empty).
                let from_wallet = match pool {
                    None => amount,
                    Some(share) => {
                        if share.charged <= 0 || share.charged > amount {
                            return Err(mismatch("debit: the pool pays nothing or too much"));
                        }
                        self.wallet_or_insert(wallet.currency);
                        amount - share.charged
                    }
                };
                // A debit the pool pays whole does not lower `available`: it may leave a wallet a
                // chargeback took below its floor still below it.
                let may_stay_below = from_wallet == 0 && self.is_below_floor(wallet.currency);
                let target = self
                    .wallet_mut(wallet.currency)
                    .ok_or_else(|| mismatch("debit of a missing wallet"))?;
                expect_sum(
                    target.balance,
                    -from_wallet,
                    balance_after,
                    "debit: balance − amount ≠ balance_after",
                )?;
                target.balance = balance_after;
                expect_eq(
                    target.available(),
                    available_after,
                    "debit: available_after mismatch",
                )?;
                expect_above_floor_unless_marked(target, may_stay_below)?;
            }
            _ => return Err(mismatch("not a ledger event")),
        }
        Ok(ReservationChange::None)
    }
}
