//! The in-memory state and the one function that changes it: [`Account::apply`] (and its tenant-level
//! siblings), used alike by live operations, after their record is queued, and by replay.
//!
//! `apply` checks every event against the state it lands on: the balance before plus or minus the
//! amount must equal the balance the event recorded, the reservation it closes must hold what the
//! event says, and no wallet may end below its floor. Replay therefore proves conservation record by
//! record; a mismatch stops recovery instead of silently producing a different balance.
//!
//! Locking: a tenant's users live in a sharded map; each operation on a user takes that user's
//! shard lock once and holds it while it decides, queues its record and applies it. While holding
//! it, an operation may also take (in this order, never the reverse) a shard of the tenant's
//! reservation index, a shard of the tenant's idempotency table, and the log's append mutex. No
//! operation ever locks two users. The tenant registry and a tenant's catalogue are taken before
//! any user lock, never under one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use compact_str::CompactString;
use dashmap::DashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::event::{Decline, Event, Meta, Outcome, PackageRecord, PaymentPurpose, ProfileRecord};
use super::types::{ClosedAs, Currency, Fingerprint, Lsn, ReleaseReason};

/// The hasher of every sharded map: keyed per process, so clients cannot choose colliding ids.
pub(crate) type BuildHasher = foldhash::fast::RandomState;
/// A sharded concurrent map.
pub(crate) type ShardedMap<K, V> = DashMap<K, V, BuildHasher>;

/// A sharded map with `shards` rounded up to a power of two of at least 4.
pub(crate) fn sharded_map<K: Eq + std::hash::Hash, V>(shards: usize) -> ShardedMap<K, V> {
    DashMap::with_hasher_and_shard_amount(BuildHasher::default(), shards.max(4).next_power_of_two())
}

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

/// A user's profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub email: Option<Box<str>>,
    pub name: Option<Box<str>>,
    pub metadata: Option<Box<str>>,
}

impl Profile {
    fn from_record(record: &ProfileRecord<'_>) -> Profile {
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
    pub holds: Vec<Hold>,
    /// Behind a further pointer: most users with a profile never pay through creditd.
    pub billing: Option<Box<Billing>>,
}

/// A user's saved payment method and automatic top-up rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Billing {
    /// The reusable method of the last successful payment that returned one.
    pub payment_method: Option<SavedMethod>,
    /// Automatic top-up rules, at most one per currency (deleted ones kept, for their counters).
    pub rules: Vec<TopupRule>,
}

/// A reusable payment method saved from a successful charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedMethod {
    pub gateway: CompactString,
    pub token: Box<str>,
    pub customer: Option<Box<str>>,
    pub label: Option<Box<str>>,
    pub saved_ms: i64,
}

/// A wallet's automatic top-up rule and the counters that bound it. Every field changes only
/// through `apply`, so replay rebuilds the caps exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopupRule {
    pub currency: Currency,
    pub threshold: i64,
    pub package: CompactString,
    /// None: the user's saved method.
    pub payment_method: Option<Box<str>>,
    pub max_per_day: u32,
    pub enabled: bool,
    pub disabled_reason: Option<Box<str>>,
    /// The UTC day (days since 1970-01-01) `attempts_today` counts.
    pub day: i64,
    pub attempts_today: u32,
    /// Attempts ever made: numbers the next attempt's deterministic reference.
    pub attempts_total: u64,
    pub consecutive_failures: u32,
    pub last_attempt_ms: i64,
    /// Attempt times within the last hour, for the burst cap (newest last, at most 16 kept).
    pub recent_attempts_ms: Vec<i64>,
    /// The reference of the attempt in flight.
    pub pending: Option<CompactString>,
    /// Deleted through the API: kept, switched off, so its counters (the caps, the numbering of
    /// deterministic references) survive a deletion and a new rule.
    pub deleted: bool,
    /// A trigger is on its way to the top-up worker. Memory only: never written, so a recovered
    /// rule has none in flight.
    #[serde(skip)]
    pub triggered: bool,
}

/// The UTC day number of a Unix-millisecond time.
pub(crate) fn utc_day(time_ms: i64) -> i64 {
    time_ms.div_euclid(86_400_000)
}

/// A user: its wallets and reservations, and the LSN of the last record that changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// The LSN of the last record that changed the user, and in the top bit
    /// ([`PRIMARY_HAS_RULE`]) whether the primary wallet has an enabled top-up rule: the check
    /// every debit makes without leaving this struct. One word, so a table slot stays 80 bytes.
    stamp: u64,
    pub primary: Wallet,
    pub extra: Option<Box<AccountExtra>>,
}

/// The flag bit of [`Account::stamp`]; LSNs stay below it ([`crate::wal::MAX_LSN`]).
const PRIMARY_HAS_RULE: u64 = 1 << 63;

/// A record that does not fit the state it is applied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub Cow<'static, str>);

fn mismatch(what: &'static str) -> Mismatch {
    Mismatch(Cow::Borrowed(what))
}

/// How applying an event changed the user's reservations, for the tenant's reservation index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldChange {
    None,
    Opened { id: Lsn, expires_at_ms: i64 },
    Extended { id: Lsn, expires_at_ms: i64 },
    Closed { id: Lsn, how: ClosedAs },
}

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

    fn wallet_mut(&mut self, currency: Currency) -> Option<&mut Wallet> {
        if self.primary.currency == currency {
            return Some(&mut self.primary);
        }
        self.extra
            .as_mut()?
            .wallets
            .iter_mut()
            .find(|w| w.currency == currency)
    }

    fn wallet_or_insert(&mut self, currency: Currency) -> &mut Wallet {
        if self.wallet(currency).is_none() {
            self.extra_mut().wallets.push(Wallet::empty(currency));
        }
        // Just ensured to exist.
        self.wallet_mut(currency)
            .unwrap_or_else(|| unreachable!("wallet inserted above"))
    }

    fn extra_mut(&mut self) -> &mut AccountExtra {
        self.extra.get_or_insert_with(Box::default)
    }

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

    /// Every rule of the user, deleted ones included.
    pub fn rules(&self) -> &[TopupRule] {
        self.billing()
            .map_or(&[], |billing| billing.rules.as_slice())
    }

    /// The wallet's rule, unless deleted.
    pub fn rule(&self, currency: Currency) -> Option<&TopupRule> {
        self.rules()
            .iter()
            .find(|rule| rule.currency == currency && !rule.deleted)
    }

    /// The wallet's rule, deleted or not.
    fn rule_mut(&mut self, currency: Currency) -> Option<&mut TopupRule> {
        self.extra
            .as_mut()?
            .billing
            .as_mut()?
            .rules
            .iter_mut()
            .find(|rule| rule.currency == currency)
    }

    fn billing(&self) -> Option<&Billing> {
        self.extra.as_ref()?.billing.as_deref()
    }

    fn billing_mut(&mut self) -> &mut Billing {
        self.extra_mut().billing.get_or_insert_with(Box::default)
    }

    pub fn payment_method(&self) -> Option<&SavedMethod> {
        self.billing()?.payment_method.as_ref()
    }

    /// Keeps the primary wallet's rule bit in step with the rules.
    fn refresh_rule_flag(&mut self, currency: Currency) {
        if currency != self.primary.currency {
            return;
        }
        if self.rule(currency).is_some_and(|rule| rule.enabled) {
            self.stamp |= PRIMARY_HAS_RULE;
        } else {
            self.stamp &= !PRIMARY_HAS_RULE;
        }
    }

    /// Sets or clears the memory-only trigger flag of a wallet's rule.
    pub fn set_triggered(&mut self, currency: Currency, triggered: bool) {
        if let Some(rule) = self.rule_mut(currency) {
            rule.triggered = triggered;
        }
    }

    pub fn profile(&self) -> Option<&Profile> {
        self.extra.as_ref().map(|extra| &extra.profile)
    }

    fn remove_hold(&mut self, id: Lsn) -> Option<Hold> {
        let holds = &mut self.extra.as_mut()?.holds;
        let index = holds.iter().position(|hold| hold.id == id)?;
        Some(holds.swap_remove(index))
    }

    /// Applies a user-level event recorded at `lsn`, after checking it fits.
    pub fn apply(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<HoldChange, Mismatch> {
        if lsn <= self.last_lsn() {
            return Err(mismatch("record is not newer than the user's last change"));
        }
        let change = match *event {
            Event::UserUpserted { ref profile, .. } => {
                let profile = Profile::from_record(profile);
                if profile.is_empty() && self.extra.is_none() {
                    // Nothing to store.
                } else {
                    self.extra_mut().profile = profile;
                }
                HoldChange::None
            }
            Event::OverdraftSet { wallet, limit, .. } => {
                let target = self.wallet_or_insert(wallet.currency);
                if limit < 0 || target.available() < -limit {
                    return Err(mismatch("overdraft limit below the wallet's current debt"));
                }
                target.overdraft = limit;
                HoldChange::None
            }
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
                HoldChange::None
            }
            Event::Debited {
                wallet,
                amount,
                balance_after,
                available_after,
                ..
            } => {
                let target = self
                    .wallet_mut(wallet.currency)
                    .ok_or_else(|| mismatch("debit of a missing wallet"))?;
                expect_sum(
                    target.balance,
                    -amount,
                    balance_after,
                    "debit: balance − amount ≠ balance_after",
                )?;
                target.balance = balance_after;
                expect_eq(
                    target.available(),
                    available_after,
                    "debit: available_after mismatch",
                )?;
                expect_above_floor(target)?;
                HoldChange::None
            }
            Event::HoldPlaced {
                wallet,
                amount,
                expires_at_ms,
                reserved_after,
                available_after,
                action,
                ..
            } => {
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
                HoldChange::Opened {
                    id: lsn,
                    expires_at_ms,
                }
            }
            Event::HoldCaptured {
                wallet,
                hold_id,
                held,
                charged,
                balance_after,
                reserved_after,
                available_after,
                ..
            } => {
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
                HoldChange::Closed {
                    id: hold_id,
                    how: ClosedAs::Captured,
                }
            }
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
                HoldChange::Extended {
                    id: hold_id,
                    expires_at_ms,
                }
            }
            Event::HoldReleased {
                wallet,
                hold_id,
                amount,
                reason,
                reserved_after,
                available_after,
                ..
            } => {
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
                HoldChange::Closed { id: hold_id, how }
            }
            Event::PaymentInitialized {
                wallet,
                reference,
                purpose,
                ref meta,
                ..
            } => {
                self.wallet_or_insert(wallet.currency);
                if purpose == PaymentPurpose::AutoTopup {
                    let rule = self
                        .rule_mut(wallet.currency)
                        .ok_or_else(|| mismatch("top-up without a rule"))?;
                    rule.record_attempt(reference, meta.time_ms);
                }
                HoldChange::None
            }
            Event::PaymentSucceeded {
                wallet,
                reference,
                credits,
                balance_after,
                available_after,
                method,
                ref meta,
                ..
            } => {
                let target = self.wallet_or_insert(wallet.currency);
                expect_sum(
                    target.balance,
                    credits,
                    balance_after,
                    "payment: balance + credits ≠ balance_after",
                )?;
                target.balance = balance_after;
                expect_eq(
                    target.available(),
                    available_after,
                    "payment: available_after mismatch",
                )?;
                if let Some(method) = method {
                    self.billing_mut().payment_method = Some(SavedMethod {
                        gateway: method.gateway.into(),
                        token: method.token.into(),
                        customer: method.customer.map(Box::from),
                        label: method.label.map(Box::from),
                        saved_ms: meta.time_ms,
                    });
                }
                if let Some(rule) = self
                    .rule_mut(wallet.currency)
                    .filter(|r| r.pending.as_deref() == Some(reference))
                {
                    rule.pending = None;
                    rule.consecutive_failures = 0;
                }
                HoldChange::None
            }
            Event::PaymentFailed {
                wallet,
                reference,
                decline,
                reason,
                ..
            } => {
                if let Some(rule) = self
                    .rule_mut(wallet.currency)
                    .filter(|r| r.pending.as_deref() == Some(reference))
                {
                    rule.pending = None;
                    rule.consecutive_failures = rule.consecutive_failures.saturating_add(1);
                    // A card that cannot be charged again, or a gateway that takes another amount
                    // than the package's (money taken, nothing credited): no second attempt.
                    if matches!(decline, Decline::Hard | Decline::Mismatch) {
                        rule.enabled = false;
                        rule.disabled_reason = Some(reason.into());
                    }
                }
                self.refresh_rule_flag(wallet.currency);
                HoldChange::None
            }
            Event::AutoTopupSet {
                wallet,
                threshold,
                package,
                payment_method,
                max_per_day,
                ..
            } => {
                self.wallet_or_insert(wallet.currency);
                let rules = &mut self.billing_mut().rules;
                match rules
                    .iter_mut()
                    .find(|rule| rule.currency == wallet.currency)
                {
                    // Counters carry over, so setting a rule again (even after deleting it)
                    // never resets its caps or reuses a reference.
                    Some(rule) => {
                        rule.deleted = false;
                        rule.threshold = threshold;
                        rule.package = package.into();
                        rule.payment_method = payment_method.map(Box::from);
                        rule.max_per_day = max_per_day;
                        rule.enabled = true;
                        rule.disabled_reason = None;
                        rule.consecutive_failures = 0;
                    }
                    None => rules.push(TopupRule {
                        currency: wallet.currency,
                        threshold,
                        package: package.into(),
                        payment_method: payment_method.map(Box::from),
                        max_per_day,
                        enabled: true,
                        disabled_reason: None,
                        day: 0,
                        attempts_today: 0,
                        attempts_total: 0,
                        consecutive_failures: 0,
                        last_attempt_ms: 0,
                        recent_attempts_ms: Vec::new(),
                        pending: None,
                        deleted: false,
                        triggered: false,
                    }),
                }
                self.refresh_rule_flag(wallet.currency);
                HoldChange::None
            }
            Event::AutoTopupDeleted { wallet, .. } => {
                let rule = self
                    .rule_mut(wallet.currency)
                    .filter(|rule| !rule.deleted)
                    .ok_or_else(|| mismatch("deletion of a missing top-up rule"))?;
                rule.deleted = true;
                rule.enabled = false;
                self.refresh_rule_flag(wallet.currency);
                HoldChange::None
            }
            Event::AutoTopupDisabled { wallet, reason, .. } => {
                let rule = self
                    .rule_mut(wallet.currency)
                    .filter(|rule| !rule.deleted)
                    .ok_or_else(|| mismatch("disabling a missing top-up rule"))?;
                rule.enabled = false;
                rule.disabled_reason = Some(reason.into());
                self.refresh_rule_flag(wallet.currency);
                HoldChange::None
            }
            Event::PaymentCheckoutOpened { .. } => HoldChange::None,
            Event::PaymentMethodSaved {
                method, ref meta, ..
            } => {
                self.billing_mut().payment_method = Some(SavedMethod {
                    gateway: method.gateway.into(),
                    token: method.token.into(),
                    customer: method.customer.map(Box::from),
                    label: method.label.map(Box::from),
                    saved_ms: meta.time_ms,
                });
                HoldChange::None
            }
            Event::TenantUpserted { .. }
            | Event::ActionPut { .. }
            | Event::ActionDeleted { .. }
            | Event::PackagePut { .. }
            | Event::PackageDeleted { .. }
            | Event::TenantWebhookSet { .. }
            | Event::PaymentUnmatched { .. } => {
                return Err(mismatch("tenant-level event applied to a user"))
            }
        };
        self.set_last_lsn(lsn);
        Ok(change)
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

impl TopupRule {
    /// Counts an attempt made at `time_ms` under `reference`.
    fn record_attempt(&mut self, reference: &str, time_ms: i64) {
        let day = utc_day(time_ms);
        if day != self.day {
            self.day = day;
            self.attempts_today = 0;
        }
        self.attempts_today = self.attempts_today.saturating_add(1);
        self.attempts_total = self.attempts_total.saturating_add(1);
        self.last_attempt_ms = time_ms;
        self.recent_attempts_ms
            .retain(|&at| at > time_ms - 3_600_000);
        self.recent_attempts_ms.push(time_ms);
        if self.recent_attempts_ms.len() > 16 {
            self.recent_attempts_ms.remove(0);
        }
        self.pending = Some(reference.into());
    }

    /// Attempts made today as of `now_ms`.
    pub fn attempts_on(&self, now_ms: i64) -> u32 {
        if utc_day(now_ms) == self.day {
            self.attempts_today
        } else {
            0
        }
    }

    /// Attempts in the hour before `now_ms`.
    pub fn attempts_in_last_hour(&self, now_ms: i64) -> usize {
        self.recent_attempts_ms
            .iter()
            .filter(|&&at| at > now_ms - 3_600_000)
            .count()
    }
}

fn expect_sum(before: i64, delta: i64, after: i64, what: &'static str) -> Result<(), Mismatch> {
    match before.checked_add(delta) {
        Some(sum) if sum == after => Ok(()),
        _ => Err(mismatch(what)),
    }
}

fn expect_eq(found: i64, recorded: i64, what: &'static str) -> Result<(), Mismatch> {
    if found == recorded {
        Ok(())
    } else {
        Err(mismatch(what))
    }
}

fn expect_above_floor(wallet: &Wallet) -> Result<(), Mismatch> {
    if wallet.reserved < 0 || wallet.available() < wallet.floor() {
        Err(mismatch("wallet would end below its floor"))
    } else {
        Ok(())
    }
}

/// A catalogue action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Action {
    pub cost: i64,
    pub currency: Currency,
    pub description: Option<Box<str>>,
}

/// A top-up package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Package {
    pub name: Box<str>,
    pub credits: i64,
    pub currency: Currency,
    pub price_minor: i64,
    pub price_currency: Currency,
    pub active: bool,
}

impl Package {
    pub fn from_record(record: &PackageRecord<'_>) -> Package {
        Package {
            name: record.name.into(),
            credits: record.credits,
            currency: record.currency,
            price_minor: record.price_minor,
            price_currency: record.price_currency,
            active: record.active,
        }
    }
}

/// A tenant's settings and catalogue: small, read often, changed rarely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Catalogue {
    pub last_lsn: Lsn,
    pub name: Option<Box<str>>,
    pub default_currency: Currency,
    pub actions: BTreeMap<CompactString, Action>,
    pub packages: BTreeMap<CompactString, Package>,
    /// Where the tenant's application receives events, and the secret that signs them.
    pub webhook_url: Option<Box<str>>,
    pub webhook_secret: Option<Box<str>>,
}

impl Catalogue {
    /// Applies a tenant-level event recorded at `lsn`.
    pub fn apply(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        if lsn <= self.last_lsn {
            return Err(mismatch(
                "record is not newer than the tenant's last change",
            ));
        }
        match *event {
            Event::TenantUpserted { ref settings, .. } => {
                if settings.default_currency != self.default_currency {
                    return Err(mismatch("a tenant's default currency cannot change"));
                }
                self.name = settings.name.map(Box::from);
            }
            Event::ActionPut {
                action,
                cost,
                currency,
                description,
                ..
            } => {
                self.actions.insert(
                    action.into(),
                    Action {
                        cost,
                        currency,
                        description: description.map(Box::from),
                    },
                );
            }
            Event::ActionDeleted { action, .. } => {
                self.actions
                    .remove(action)
                    .ok_or_else(|| mismatch("deletion of a missing action"))?;
            }
            Event::PackagePut {
                package, ref terms, ..
            } => {
                self.packages
                    .insert(package.into(), Package::from_record(terms));
            }
            Event::PackageDeleted { package, .. } => {
                self.packages
                    .remove(package)
                    .ok_or_else(|| mismatch("deletion of a missing package"))?;
            }
            Event::TenantWebhookSet { url, secret, .. } => {
                self.webhook_url = url.map(Box::from);
                self.webhook_secret = secret.map(|secret| Box::from(secret.0));
            }
            _ => return Err(mismatch("user-level event applied to a tenant")),
        }
        self.last_lsn = lsn;
        Ok(())
    }
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

/// An idempotency key's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyEntry {
    pub fingerprint: Fingerprint,
    pub state: IdempotencyState,
}

/// Whether the request behind an idempotency key has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdempotencyState {
    /// Being processed; `token` identifies the request that owns it.
    InFlight { token: u64 },
    /// Finished at `lsn` (durable once the log says so) with this answer.
    Done {
        lsn: Lsn,
        created_ms: i64,
        outcome: Outcome,
    },
}

/// A tenant: its catalogue, its users and their wallets, its reservation index and its
/// idempotency keys.
pub struct Tenant {
    pub(crate) id: CompactString,
    /// Fixed at creation, so the hot path reads it without a lock.
    pub(crate) default_currency: Currency,
    pub(crate) catalogue: RwLock<Catalogue>,
    pub(crate) users: ShardedMap<CompactString, Account>,
    pub(crate) holds: ShardedMap<Lsn, HoldEntry>,
    pub(crate) idempotency: ShardedMap<CompactString, IdempotencyEntry>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("users", &self.users.len())
            .finish()
    }
}

impl Tenant {
    pub(crate) fn new(id: &str, catalogue: Catalogue, shards: usize) -> Tenant {
        Tenant {
            id: id.into(),
            default_currency: catalogue.default_currency,
            catalogue: RwLock::new(catalogue),
            users: sharded_map(shards),
            holds: sharded_map(shards / 8),
            idempotency: sharded_map(shards),
        }
    }

    /// The tenant's id.
    pub fn id(&self) -> &str {
        &self.id
    }

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

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PaymentState {
    Pending,
    Succeeded { entry_id: Lsn, at_ms: i64 },
    Failed { decline: Decline, at_ms: i64 },
}

/// A payment creditd issued a reference for. Kept across tenants, because gateways report payments
/// by reference alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PaymentEntry {
    pub last_lsn: Lsn,
    pub tenant: CompactString,
    pub user: CompactString,
    pub currency: Currency,
    pub package: CompactString,
    pub credits: i64,
    pub amount_minor: i64,
    pub price_currency: Currency,
    pub gateway: CompactString,
    pub purpose: PaymentPurpose,
    pub created_ms: i64,
    pub state: PaymentState,
    /// The gateway's checkout page, once it answered.
    pub checkout_url: Option<Box<str>>,
    /// The digest of the `initialize` request that made it under an Idempotency-Key.
    pub fingerprint: Option<Fingerprint>,
}

impl PaymentEntry {
    fn new(
        lsn: Lsn,
        wallet: super::event::WalletRef<'_>,
        terms: super::event::PaymentTerms<'_>,
        gateway: &str,
        purpose: PaymentPurpose,
        meta: &Meta<'_>,
    ) -> PaymentEntry {
        PaymentEntry {
            last_lsn: lsn,
            tenant: wallet.tenant.into(),
            user: wallet.user.into(),
            currency: wallet.currency,
            package: terms.package.into(),
            credits: terms.credits,
            amount_minor: terms.amount_minor,
            price_currency: terms.price_currency,
            gateway: gateway.into(),
            purpose,
            created_ms: meta.time_ms,
            state: PaymentState::Pending,
            checkout_url: None,
            fingerprint: meta.idempotency.map(|tag| tag.fingerprint),
        }
    }

    /// Whether the payment may be forgotten at `cutoff_ms` (now minus the retention): settled
    /// before it, or a checkout nobody paid started before it. A pending automatic top-up is
    /// never forgotten: its rule waits on it.
    pub fn forgettable(&self, cutoff_ms: i64) -> bool {
        match self.state {
            PaymentState::Pending => {
                self.purpose == PaymentPurpose::Checkout && self.created_ms < cutoff_ms
            }
            PaymentState::Succeeded { at_ms, .. } | PaymentState::Failed { at_ms, .. } => {
                at_ms < cutoff_ms
            }
        }
    }
}

/// Every tenant, the payments of all of them, and the counters shared by all of them.
pub(crate) struct State {
    pub tenants: RwLock<HashMap<CompactString, Arc<Tenant>>>,
    pub shards: usize,
    /// Entries in all idempotency tables together.
    pub idempotency_entries: AtomicU64,
    /// Payments by reference. Changed under the paying user's lock (taken first).
    pub payments: ShardedMap<CompactString, PaymentEntry>,
    /// How long a settled payment (or an unpaid checkout) is remembered.
    pub payment_retention_ms: i64,
}

/// Replay could not apply a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(pub String);

impl State {
    pub fn new(shards: usize, payment_retention_ms: i64) -> State {
        State {
            tenants: RwLock::new(HashMap::new()),
            shards: shards.max(1),
            idempotency_entries: AtomicU64::new(0),
            payments: sharded_map(shards / 8),
            payment_retention_ms,
        }
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        self.tenants.read().get(id).cloned()
    }

    pub fn tenant_list(&self) -> Vec<Arc<Tenant>> {
        let mut tenants: Vec<Arc<Tenant>> = self.tenants.read().values().cloned().collect();
        tenants.sort_by(|a, b| a.id.cmp(&b.id));
        tenants
    }

    /// Re-applies one record during recovery. Records an entity has already seen (its last LSN is
    /// at or past this one, because a fuzzy snapshot copied it later) are skipped. Idempotency
    /// entries older than `idempotency_cutoff_ms` are not restored.
    pub fn replay(
        &self,
        lsn: Lsn,
        event: &Event<'_>,
        idempotency_cutoff_ms: i64,
        cache: &mut Option<Arc<Tenant>>,
    ) -> Result<(), ReplayError> {
        let fail = |what: &dyn std::fmt::Display| ReplayError(format!("LSN {lsn}: {what}"));
        if let Event::TenantUpserted {
            tenant,
            ref settings,
            ..
        } = *event
        {
            let mut tenants = self.tenants.write();
            if let Some(existing) = tenants.get(tenant) {
                let mut catalogue = existing.catalogue.write();
                if catalogue.last_lsn < lsn {
                    catalogue.apply(lsn, event).map_err(|e| fail(&e))?;
                }
            } else {
                let catalogue = Catalogue {
                    last_lsn: lsn,
                    name: settings.name.map(Box::from),
                    default_currency: settings.default_currency,
                    actions: BTreeMap::new(),
                    packages: BTreeMap::new(),
                    webhook_url: None,
                    webhook_secret: None,
                };
                tenants.insert(
                    tenant.into(),
                    Arc::new(Tenant::new(tenant, catalogue, self.shards)),
                );
            }
            return Ok(());
        }
        if let Event::PaymentUnmatched { .. } = event {
            // Only a record for the operator: nothing in memory refers to it.
            return Ok(());
        }
        // Most logs are one tenant's: keep its handle instead of a registry lookup per record.
        if cache
            .as_ref()
            .is_none_or(|tenant| tenant.id != event.tenant())
        {
            let tenant = self
                .tenant(event.tenant())
                .ok_or_else(|| fail(&"record for a tenant that does not exist"))?;
            *cache = Some(tenant);
        }
        let Some(tenant) = cache.as_deref() else {
            return Err(fail(&"record for a tenant that does not exist"));
        };
        match *event {
            Event::ActionPut { .. }
            | Event::ActionDeleted { .. }
            | Event::PackagePut { .. }
            | Event::PackageDeleted { .. }
            | Event::TenantWebhookSet { .. } => {
                let mut catalogue = tenant.catalogue.write();
                if catalogue.last_lsn < lsn {
                    catalogue.apply(lsn, event).map_err(|e| fail(&e))?;
                }
                Ok(())
            }
            Event::UserUpserted {
                user,
                ref profile,
                default_currency,
                ..
            } => {
                match tenant.users.entry(user.into()) {
                    dashmap::Entry::Occupied(mut entry) => {
                        if entry.get().last_lsn() < lsn {
                            entry.get_mut().apply(lsn, event).map_err(|e| fail(&e))?;
                        }
                    }
                    dashmap::Entry::Vacant(entry) => {
                        let mut account = Account::new(default_currency, profile);
                        account.set_last_lsn(lsn);
                        entry.insert(account);
                    }
                }
                Ok(())
            }
            _ => {
                let wallet = event.wallet().ok_or_else(|| fail(&"unexpected event"))?;
                let mut account = tenant
                    .users
                    .get_mut(wallet.user)
                    .ok_or_else(|| fail(&"record for a user that does not exist"))?;
                if account.last_lsn() >= lsn {
                    return Ok(());
                }
                let change = account.apply(lsn, event).map_err(|e| fail(&e))?;
                let meta = event.meta();
                tenant.index_hold(wallet.user, change, meta.time_ms);
                self.apply_payment(lsn, event).map_err(|e| fail(&e))?;
                self.restore_idempotency(tenant, lsn, event, meta, idempotency_cutoff_ms);
                Ok(())
            }
        }
    }

    /// Applies a payment event to the payments map (under the paying user's lock). Each entry
    /// carries its own last LSN, so a record a fuzzy snapshot already holds is skipped.
    pub fn apply_payment(&self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        match *event {
            Event::PaymentInitialized {
                wallet,
                reference,
                terms,
                gateway,
                purpose,
                ref meta,
            } => match self.payments.entry(reference.into()) {
                dashmap::Entry::Occupied(entry) if entry.get().last_lsn >= lsn => Ok(()),
                // A reference may be issued again once its payment is past retention: the live
                // state had forgotten it (see `forgettable`), so replay forgets it too.
                dashmap::Entry::Occupied(mut entry)
                    if entry
                        .get()
                        .forgettable(meta.time_ms - self.payment_retention_ms) =>
                {
                    entry.insert(PaymentEntry::new(
                        lsn, wallet, terms, gateway, purpose, meta,
                    ));
                    Ok(())
                }
                dashmap::Entry::Occupied(_) => {
                    Err(mismatch("a payment reference was issued twice"))
                }
                dashmap::Entry::Vacant(entry) => {
                    entry.insert(PaymentEntry::new(
                        lsn, wallet, terms, gateway, purpose, meta,
                    ));
                    Ok(())
                }
            },
            Event::PaymentSucceeded {
                reference,
                ref meta,
                ..
            } => self.settle(
                lsn,
                reference,
                PaymentState::Succeeded {
                    entry_id: lsn,
                    at_ms: meta.time_ms,
                },
            ),
            Event::PaymentFailed {
                reference,
                decline,
                ref meta,
                ..
            } => self.settle(
                lsn,
                reference,
                PaymentState::Failed {
                    decline,
                    at_ms: meta.time_ms,
                },
            ),
            Event::PaymentCheckoutOpened {
                reference,
                checkout_url,
                ..
            } => {
                let mut entry = self
                    .payments
                    .get_mut(reference)
                    .ok_or_else(|| mismatch("checkout of an unknown payment"))?;
                if entry.last_lsn < lsn {
                    entry.checkout_url = Some(checkout_url.into());
                    entry.last_lsn = lsn;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn settle(&self, lsn: Lsn, reference: &str, state: PaymentState) -> Result<(), Mismatch> {
        let mut entry = self
            .payments
            .get_mut(reference)
            .ok_or_else(|| mismatch("settlement of an unknown payment"))?;
        if entry.last_lsn >= lsn {
            return Ok(());
        }
        // Pending settles either way; a failed payment (not paid in another amount) may still
        // turn out paid. Nothing else moves.
        let movable = match entry.state {
            PaymentState::Pending => true,
            PaymentState::Failed { decline, .. } => {
                decline != Decline::Mismatch && matches!(state, PaymentState::Succeeded { .. })
            }
            PaymentState::Succeeded { .. } => false,
        };
        if !movable {
            return Err(mismatch("a payment was settled twice"));
        }
        entry.state = state;
        entry.last_lsn = lsn;
        Ok(())
    }

    fn restore_idempotency(
        &self,
        tenant: &Tenant,
        lsn: Lsn,
        event: &Event<'_>,
        meta: &Meta<'_>,
        cutoff_ms: i64,
    ) {
        let (Some(tag), Some(outcome)) = (meta.idempotency, event.outcome(lsn)) else {
            return;
        };
        if meta.time_ms < cutoff_ms {
            return;
        }
        let state = IdempotencyState::Done {
            lsn,
            created_ms: meta.time_ms,
            outcome,
        };
        let entry = IdempotencyEntry {
            fingerprint: tag.fingerprint,
            state,
        };
        if tenant.idempotency.insert(tag.key.into(), entry).is_none() {
            self.idempotency_entries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
