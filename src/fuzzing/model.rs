//! The reference model of the engine's documented semantics: plain maps, no locks, no log. It
//! decides every operation first and says what the engine must answer and which state it must
//! hold after it. The one model of creditd's tests: the operation fuzzer ([`super::engine_ops`],
//! also run over its corpus by `tests/fuzz_corpora.rs`) and the proptest model test
//! (`tests/model.rs`) both drive it; any limits, any tenants, and [`History`] of the state after
//! every record for the checks of recovery that need it.

use std::collections::{BTreeMap, BTreeSet};

mod pools;

pub use pools::{day_of, MAllowance, MMember, MPool};

use crate::engine::types::{
    check_amount, check_id, check_idempotency_key, check_metadata, check_text, ClosedAs, Currency,
    CurrencySpec, DebitKind, EngineError, Fingerprint, Invalid, Limits, Lsn, Shortfall,
};
use crate::engine::types::{Missing, Outcome};
use crate::engine::PackageSpec;
use crate::engine::{
    CaptureRequest, CreditRequest, DebitRequest, Done, ReserveRequest, RevokeRequest, Spend,
    WalletView,
};

/// One wallet of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MWallet {
    pub currency: Currency,
    pub balance: i64,
    pub reserved: i64,
    pub overdraft: i64,
}

impl MWallet {
    /// A wallet with nothing in it.
    pub fn empty(currency: Currency) -> MWallet {
        MWallet {
            currency,
            balance: 0,
            reserved: 0,
            overdraft: 0,
        }
    }

    /// What a decision may spend before the overdraft: the balance less what is reserved.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.reserved)
    }

    /// The wallet as `Tenant::user` shows it.
    pub fn view(&self) -> WalletView {
        WalletView {
            currency: self.currency,
            balance: self.balance,
            reserved: self.reserved,
            available: self.available(),
            overdraft_limit: self.overdraft,
            spendable: spendable(self.available(), self.overdraft),
        }
    }
}

/// An open reservation, kept with its user.
#[derive(Debug, Clone)]
pub struct MOpenReservation {
    pub id: Lsn,
    pub currency: Currency,
    pub amount: i64,
    pub expires_at_ms: i64,
    /// Of `amount`, what the user's pool holds.
    pub pool_amount: i64,
    /// The UTC day the pool's part was placed.
    pub pool_day: i64,
}

/// A user's profile: email, name, metadata.
pub type Profile = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
);

/// One user of a tenant.
#[derive(Debug, Clone)]
pub struct MUser {
    pub last_lsn: Lsn,
    pub profile: Profile,
    /// The wallet created with the user first, then the others in the order they appeared.
    pub wallets: Vec<MWallet>,
    /// In the engine's order, which decides which due reservation expires first.
    pub open_reservations: Vec<MOpenReservation>,
    /// The credit pool the user draws on.
    pub pool: Option<&'static str>,
}

impl MUser {
    /// The wallet in `currency`, or an empty one if the user has none.
    pub fn wallet(&self, currency: Currency) -> MWallet {
        self.wallets
            .iter()
            .find(|wallet| wallet.currency == currency)
            .copied()
            .unwrap_or(MWallet::empty(currency))
    }

    /// The wallet once every reservation due by `now_ms` is released: what a dry run decides on.
    pub fn wallet_as_of(&self, currency: Currency, now_ms: i64) -> MWallet {
        let mut wallet = self.wallet(currency);
        for reservation in &self.open_reservations {
            if reservation.currency == currency && reservation.expires_at_ms <= now_ms {
                wallet.reserved -= reservation.amount - reservation.pool_amount;
            }
        }
        wallet
    }

    /// The wallet in `currency`, made if the user has none.
    pub fn wallet_mut(&mut self, currency: Currency) -> &mut MWallet {
        let index = match self.wallets.iter().position(|w| w.currency == currency) {
            Some(index) => index,
            None => {
                self.wallets.push(MWallet::empty(currency));
                self.wallets.len() - 1
            }
        };
        &mut self.wallets[index]
    }
}

/// Whether the engine still knows a closed reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// It answers "closed".
    Present,
    /// Purged: it answers "not found".
    Purged,
    /// Past its retention at a restart: a snapshot leaves it out, replaying the log brings it
    /// back, so either answer is right until one is seen.
    Maybe,
}

/// A reservation as its tenant remembers it, open or closed.
#[derive(Debug, Clone, Copy)]
pub enum MReservation {
    Open {
        user: &'static str,
    },
    Closed {
        user: &'static str,
        how: ClosedAs,
        at_ms: i64,
        known: Known,
        /// What it held, shown once it is closed too.
        currency: Currency,
        amount: i64,
    },
}

/// A stored idempotency answer.
#[derive(Debug, Clone)]
pub struct MKey {
    pub fingerprint: Fingerprint,
    pub lsn: Lsn,
    pub created_ms: i64,
    pub outcome: Outcome,
}

/// A catalogue action.
#[derive(Debug, Clone)]
pub struct MAction {
    pub cost: i64,
    pub currency: Currency,
    pub description: Option<&'static str>,
}

/// One tenant: its settings, catalogue, users, reservations and idempotency keys.
#[derive(Debug, Clone)]
pub struct MTenant {
    pub default_currency: Currency,
    /// The currencies it defined; none: its default currency alone.
    pub currencies: Vec<CurrencySpec>,
    pub name: Option<&'static str>,
    pub catalogue_lsn: Lsn,
    pub actions: BTreeMap<&'static str, MAction>,
    pub packages: BTreeSet<&'static str>,
    pub users: BTreeMap<&'static str, MUser>,
    pub reservations: BTreeMap<Lsn, MReservation>,
    pub keys: BTreeMap<&'static str, MKey>,
    pub pools: BTreeMap<&'static str, MPool>,
}

/// What the engine state should be: built from the same decisions the engine documents, written
/// independently of its code.
#[derive(Debug, Clone)]
pub struct Model {
    pub next_lsn: Lsn,
    pub tenants: BTreeMap<&'static str, MTenant>,
}

impl Default for Model {
    fn default() -> Model {
        Model::new()
    }
}

/// The model after each record, by LSN: recovery must rebuild exactly one of these.
pub type History = Vec<(Lsn, Model)>;

/// A request's idempotency key and fingerprint, if it has one.
pub type Key = Option<(&'static str, Fingerprint)>;

/// Why the model stops an operation.
#[derive(Debug)]
pub enum Stop {
    /// The engine refuses it with this error.
    Refused(EngineError),
    /// The key was used before with the same request: this answer again.
    Replay(Done),
    /// The reservation is closed and past its retention: "closed" or "not found".
    ClosedOrGone(ClosedAs),
}

impl From<EngineError> for Stop {
    fn from(error: EngineError) -> Stop {
        Stop::Refused(error)
    }
}

pub(crate) fn invalid(field: &'static str) -> EngineError {
    EngineError::Invalid(Invalid::new(field, ""))
}

/// Checks arithmetic that the engine does without a check: if it overflows, the engine would
/// panic (debug) or record a wrapped balance (release).
fn unchecked(what: &str, value: Option<i64>) -> i64 {
    value.unwrap_or_else(|| {
        panic!("creditd computes {what} without an overflow check, and it overflows")
    })
}

fn seconds_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

pub(crate) fn check_texts(
    limits: &Limits,
    description: Option<&str>,
    reference: Option<&str>,
    metadata: Option<&str>,
) -> Result<(), EngineError> {
    check_text("description", description, limits.max_text_bytes)?;
    check_text("reference", reference, limits.max_text_bytes)?;
    check_metadata(metadata, limits)
}

fn check_ttl(ttl_seconds: u64, limits: &Limits) -> Result<(), EngineError> {
    if ttl_seconds == 0 || ttl_seconds > limits.max_reservation_ttl_seconds {
        return Err(invalid("ttl_seconds"));
    }
    Ok(())
}

fn expiry(now_ms: i64, ttl_seconds: u64) -> Result<i64, EngineError> {
    i64::try_from(ttl_seconds)
        .ok()
        .and_then(|seconds| seconds.checked_mul(1000))
        .and_then(|ms| now_ms.checked_add(ms))
        .ok_or(EngineError::Overflow)
}

fn spend_from(wallet: &MWallet, amount: i64) -> Result<i64, EngineError> {
    let available = wallet.available();
    match available.checked_sub(amount) {
        Some(after) if after >= -wallet.overdraft => Ok(after),
        _ => Err(EngineError::InsufficientCredits(Shortfall {
            currency: wallet.currency,
            balance: wallet.balance,
            available,
            overdraft_limit: wallet.overdraft,
            spendable: spendable(available, wallet.overdraft),
            required: amount,
            pool_available: None,
        })),
    }
}

/// What can be spent: available and the overdraft's headroom, never below zero (nor above the
/// largest balance).
fn spendable(available: i64, overdraft: i64) -> i64 {
    (i128::from(available) + i128::from(overdraft)).clamp(0, i128::from(i64::MAX)) as i64
}

impl MTenant {
    /// Whether the tenant has `currency`: its default one, or one it defined.
    pub fn has_currency(&self, currency: Currency) -> bool {
        currency == self.default_currency || self.currencies.iter().any(|c| c.code == currency)
    }

    /// Refuses a currency the tenant does not have.
    pub fn check_currency(&self, currency: Currency) -> Result<(), EngineError> {
        if self.has_currency(currency) {
            Ok(())
        } else {
            Err(EngineError::UnknownCurrency(currency))
        }
    }
}

/// A refusal for want of credits, with what the user's pool could still give (which it can
/// spend too).
fn with_pool(refused: EngineError, pool_available: i64) -> EngineError {
    match refused {
        EngineError::InsufficientCredits(shortfall) => {
            EngineError::InsufficientCredits(Shortfall {
                pool_available: Some(pool_available),
                spendable: (i128::from(shortfall.spendable) + i128::from(pool_available.max(0)))
                    .clamp(0, i128::from(i64::MAX)) as i64,
                ..shortfall
            })
        }
        other => other,
    }
}

/// Errors are compared by variant and by the details a client sees: the numbers of a shortfall,
/// how a reservation closed, the field of an invalid request (not the wording of its reason).
pub fn same_error(got: &EngineError, want: &EngineError) -> bool {
    match (got, want) {
        (EngineError::Invalid(a), EngineError::Invalid(b)) => a.field == b.field,
        (EngineError::Conflict(_), EngineError::Conflict(_)) => true,
        _ => got == want,
    }
}

/// A priced debit or revocation of `user`'s `currency` wallet, for [`Model::take`].
pub struct Take {
    pub user: &'static str,
    pub amount: i64,
    pub currency: Currency,
    pub kind: DebitKind,
    pub key: Key,
    pub dry_run: bool,
}

/// A change of `user`'s overdraft limit, for [`Model::set_overdraft`].
pub struct Overdraft {
    pub user: &'static str,
    pub currency: Option<Currency>,
    pub limit: i64,
    /// Release the user's due reservations through the log first, as creditd does. Without, the
    /// decision sees them as released and leaves the release to the next operation, which the
    /// documentation allows too (`tests/model.rs` accepts either).
    pub release_expired: bool,
}

pub(crate) enum Claimed {
    Fresh(Key),
    Replay(Done),
}

pub(crate) fn claim(tenant: &MTenant, key: Key) -> Result<Claimed, EngineError> {
    let Some((name, fingerprint)) = key else {
        return Ok(Claimed::Fresh(None));
    };
    check_idempotency_key(name)?;
    match tenant.keys.get(name) {
        Some(entry) if entry.fingerprint != fingerprint => Err(EngineError::IdempotencyKeyReused),
        Some(entry) => Ok(Claimed::Replay(Done {
            lsn: entry.lsn,
            outcome: entry.outcome,
            replayed: true,
        })),
        None => Ok(Claimed::Fresh(key)),
    }
}

pub(crate) fn complete(tenant: &mut MTenant, key: Key, lsn: Lsn, now_ms: i64, outcome: Outcome) {
    if let Some((name, fingerprint)) = key {
        let entry = MKey {
            fingerprint,
            lsn,
            created_ms: now_ms,
            outcome,
        };
        tenant.keys.insert(name, entry);
    }
}

impl Model {
    /// No tenants; the next record is LSN 1.
    pub fn new() -> Model {
        Model {
            next_lsn: 1,
            tenants: BTreeMap::new(),
        }
    }

    /// The idempotency table as `Engine::state_image` prints it: one line a key, sorted.
    pub fn key_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (tenant, model) in &self.tenants {
            for (key, entry) in &model.keys {
                lines.push(format!(
                    "key {tenant}/{key} fp={:?} lsn={} {:?}",
                    entry.fingerprint, entry.lsn, entry.outcome
                ));
            }
        }
        lines.sort();
        lines
    }

    /// Tenant `id`, which must exist.
    pub fn tenant(&self, id: &str) -> &MTenant {
        &self.tenants[id]
    }

    /// Tenant `id`, which must exist.
    pub fn tenant_mut(&mut self, id: &str) -> &mut MTenant {
        self.tenants.get_mut(id).expect("tenant in the model")
    }

    /// `user` of `tenant`, which must exist.
    pub fn user_mut(&mut self, tenant: &str, user: &str) -> &mut MUser {
        self.tenant_mut(tenant)
            .users
            .get_mut(user)
            .expect("user in the model")
    }

    /// Closes the record whose LSN was `self.next_lsn`, after its change was applied.
    pub fn commit(&mut self, history: &mut History) {
        self.next_lsn += 1;
        history.push((self.next_lsn - 1, self.clone()));
    }

    /// Releases, one record each, the user's reservations due at `now_ms`, first due first.
    pub fn expire_due(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        user: &'static str,
        now_ms: i64,
    ) -> u64 {
        let mut expired = 0;
        loop {
            let lsn = self.next_lsn;
            let account = self.user_mut(tenant, user);
            let Some(index) = account
                .open_reservations
                .iter()
                .position(|h| h.expires_at_ms <= now_ms)
            else {
                return expired;
            };
            let reservation = account.open_reservations.swap_remove(index);
            let wallet = account.wallet_mut(reservation.currency);
            wallet.reserved -= reservation.amount - reservation.pool_amount;
            unchecked(
                "a released reservation's available_after",
                wallet.balance.checked_sub(wallet.reserved),
            );
            account.last_lsn = lsn;
            let pool = account.pool;
            self.release_pool_hold(tenant, user, pool, &reservation, now_ms, lsn);
            let closed = MReservation::Closed {
                user,
                how: ClosedAs::Expired,
                at_ms: now_ms,
                known: Known::Present,
                currency: reservation.currency,
                amount: reservation.amount,
            };
            self.tenant_mut(tenant)
                .reservations
                .insert(reservation.id, closed);
            self.commit(history);
            expired += 1;
        }
    }

    /// Creates or renames a tenant: whether it was created, and the LSN of its settings.
    pub fn upsert_tenant(
        &mut self,
        history: &mut History,
        limits: &Limits,
        id: &'static str,
        name: Option<&'static str>,
        currency: Option<Currency>,
    ) -> Result<(bool, Lsn), EngineError> {
        self.put_tenant(history, limits, id, (name, currency), None)
    }

    /// Creates or changes a tenant: its name and, if given, the currencies it has (which only
    /// ever grow). Whether it was created, and the LSN of its settings.
    pub fn put_tenant(
        &mut self,
        history: &mut History,
        limits: &Limits,
        id: &'static str,
        (name, currency): (Option<&'static str>, Option<Currency>),
        currencies: Option<&[CurrencySpec]>,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("tenant_id", id)?;
        check_text("name", name, limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        let default_currency = match self.tenants.get(id) {
            Some(tenant) if currency.is_some_and(|c| c != tenant.default_currency) => {
                return Err(EngineError::Conflict(""));
            }
            Some(tenant) => tenant.default_currency,
            None => currency.unwrap_or(Currency::CREDITS),
        };
        if let Some(list) = currencies {
            let distinct = list
                .iter()
                .enumerate()
                .all(|(i, c)| list[..i].iter().all(|d| d.code != c.code));
            if list.is_empty()
                || list.len() > 64
                || list.iter().any(|c| c.decimals > 18)
                || !distinct
                || !list.iter().any(|c| c.code == default_currency)
            {
                return Err(invalid("currencies"));
            }
        }
        if let Some(tenant) = self.tenants.get_mut(id) {
            let new_currencies = match currencies {
                Some(list) => {
                    if !tenant.currencies.iter().all(|c| list.contains(c)) {
                        return Err(EngineError::Conflict(""));
                    }
                    list.to_vec()
                }
                None => tenant.currencies.clone(),
            };
            let same = new_currencies.len() == tenant.currencies.len()
                && new_currencies.iter().all(|c| tenant.currencies.contains(c));
            if tenant.name == name && same {
                return Ok((false, tenant.catalogue_lsn));
            }
            tenant.name = name;
            tenant.currencies = new_currencies;
            tenant.catalogue_lsn = lsn;
            self.commit(history);
            return Ok((false, lsn));
        }
        let tenant = MTenant {
            default_currency,
            currencies: currencies.map_or_else(Vec::new, <[_]>::to_vec),
            name,
            catalogue_lsn: lsn,
            actions: BTreeMap::new(),
            packages: BTreeSet::new(),
            users: BTreeMap::new(),
            reservations: BTreeMap::new(),
            keys: BTreeMap::new(),
            pools: BTreeMap::new(),
        };
        self.tenants.insert(id, tenant);
        self.commit(history);
        Ok((true, lsn))
    }

    /// Creates a user or changes its profile: whether it was created, and its last LSN.
    pub fn upsert_user(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        user: &'static str,
        profile: Profile,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("user_id", user)?;
        check_text("email", profile.0, limits.max_text_bytes)?;
        check_text("name", profile.1, limits.max_text_bytes)?;
        check_metadata(profile.2, limits)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        let default_currency = model_tenant.default_currency;
        if let Some(account) = model_tenant.users.get_mut(user) {
            if account.profile == profile {
                return Ok((false, account.last_lsn));
            }
            account.profile = profile;
            account.last_lsn = lsn;
            self.commit(history);
            return Ok((false, lsn));
        }
        let account = MUser {
            last_lsn: lsn,
            profile,
            wallets: vec![MWallet::empty(default_currency)],
            open_reservations: Vec::new(),
            pool: None,
        };
        model_tenant.users.insert(user, account);
        self.commit(history);
        Ok((true, lsn))
    }

    /// A credit of any kind: the kind is recorded, but changes nothing in the answer.
    pub fn credit(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &CreditRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        check_amount("amount", request.amount, limits)?;
        check_texts(
            limits,
            request.description,
            request.reference,
            request.metadata,
        )?;
        let model_tenant = self.tenant(tenant);
        let currency = request.currency.unwrap_or(model_tenant.default_currency);
        let key = match claim(model_tenant, key)? {
            Claimed::Replay(done) => return Err(Stop::Replay(done)),
            Claimed::Fresh(key) => key,
        };
        model_tenant.check_currency(currency)?;
        if !model_tenant.users.contains_key(request.user) {
            return Err(EngineError::NotFound(Missing::User).into());
        }
        self.expire_due(history, tenant, request.user, now_ms);
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, request.user);
        let wallet = account.wallet(currency);
        let balance = wallet
            .balance
            .checked_add(request.amount)
            .ok_or(EngineError::Overflow)?;
        let available = balance
            .checked_sub(wallet.reserved)
            .ok_or(EngineError::Overflow)?;
        account.wallet_mut(currency).balance = balance;
        account.last_lsn = lsn;
        let outcome = Outcome::Credit {
            entry_id: lsn,
            amount: request.amount,
            balance,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// What a spend costs, and in which currency.
    pub fn price(
        &self,
        limits: &Limits,
        tenant: &str,
        currency: Option<Currency>,
        spend: Spend<'_>,
    ) -> Result<(i64, Currency), EngineError> {
        let model_tenant = self.tenant(tenant);
        match spend {
            Spend::Amount(amount) => {
                check_amount("amount", amount, limits)?;
                Ok((amount, currency.unwrap_or(model_tenant.default_currency)))
            }
            Spend::Action { name, quantity } => {
                check_id("action", name)?;
                if quantity == 0 || quantity > limits.max_quantity {
                    return Err(invalid("quantity"));
                }
                let action = model_tenant
                    .actions
                    .get(name)
                    .ok_or(EngineError::NotFound(Missing::Action))?;
                if let Some(currency) = currency {
                    model_tenant.check_currency(currency)?;
                }
                if currency.is_some_and(|c| c != action.currency) {
                    return Err(invalid("currency"));
                }
                let quantity = i64::try_from(quantity).map_err(|_| EngineError::Overflow)?;
                let amount = action
                    .cost
                    .checked_mul(quantity)
                    .ok_or(EngineError::Overflow)?;
                check_amount("amount", amount, limits)?;
                Ok((amount, action.currency))
            }
        }
    }

    /// A debit of an amount or of an action's price.
    pub fn debit(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &DebitRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        check_texts(
            limits,
            request.description,
            request.reference,
            request.metadata,
        )?;
        let (amount, currency) = self.price(limits, tenant, request.currency, request.spend)?;
        let take = Take {
            user: request.user,
            amount,
            currency,
            kind: DebitKind::Usage,
            key,
            dry_run: request.dry_run,
        };
        self.take(history, tenant, take, now_ms)
    }

    /// A revocation of credits granted by mistake.
    pub fn revoke(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &RevokeRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        if request.reason.trim().is_empty() {
            return Err(invalid("reason").into());
        }
        check_texts(limits, Some(request.reason), None, None)?;
        let (amount, currency) = self.price(
            limits,
            tenant,
            request.currency,
            Spend::Amount(request.amount),
        )?;
        let kind = if request.allow_negative {
            DebitKind::Chargeback
        } else {
            DebitKind::Revoke
        };
        let take = Take {
            user: request.user,
            amount,
            currency,
            kind,
            key,
            dry_run: false,
        };
        self.take(history, tenant, take, now_ms)
    }

    /// A debit or a revocation, once priced.
    pub fn take(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        take: Take,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        let Take {
            user,
            amount,
            currency,
            kind,
            key,
            dry_run,
        } = take;
        let model_tenant = self.tenant(tenant);
        let key = if dry_run {
            None
        } else {
            match claim(model_tenant, key)? {
                Claimed::Replay(done) => return Err(Stop::Replay(done)),
                Claimed::Fresh(key) => key,
            }
        };
        model_tenant.check_currency(currency)?;
        if !model_tenant.users.contains_key(user) {
            return Err(EngineError::NotFound(Missing::User).into());
        }
        if !dry_run {
            self.expire_due(history, tenant, user, now_ms);
        }
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, user);
        let wallet = account.wallet_as_of(currency, now_ms);
        // The wallet pays what it can; a member's pool in that currency the rest (a usage
        // debit only). A chargeback takes what it is asked for from the wallet, whatever the
        // floor.
        let (from_pool, pool) = if kind == DebitKind::Chargeback {
            wallet
                .available()
                .checked_sub(amount)
                .ok_or(EngineError::Overflow)?;
            (0, None)
        } else {
            match spend_from(&wallet, amount) {
                Ok(_) => (0, None),
                Err(refused) => match self.pool_in(tenant, user, currency) {
                    Some(pool) if kind == DebitKind::Usage => {
                        let need = amount - (wallet.available() + wallet.overdraft).max(0);
                        let allowance = self.allowance(tenant, user, pool, now_ms, true);
                        if need > allowance.available {
                            return Err(with_pool(refused, allowance.available).into());
                        }
                        (need, Some(pool))
                    }
                    _ => return Err(refused.into()),
                },
            }
        };
        let from_wallet = amount - from_pool;
        let available = wallet.available() - from_wallet;
        let balance = unchecked(
            "a debit's balance_after",
            wallet.balance.checked_sub(from_wallet),
        );
        let outcome = Outcome::Debit {
            entry_id: if dry_run { 0 } else { lsn },
            kind,
            charged: amount,
            from_pool,
            balance,
            available,
        };
        if dry_run {
            return Ok(Done {
                lsn: 0,
                outcome,
                replayed: false,
            });
        }
        let account = self.user_mut(tenant, user);
        account.wallet_mut(currency).balance = balance;
        account.last_lsn = lsn;
        if let Some(pool) = pool {
            self.draw(
                tenant,
                user,
                pool,
                (0, 0, from_pool, from_pool),
                now_ms,
                lsn,
            );
        }
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// A reservation of an amount or of an action's price.
    pub fn reserve(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &ReserveRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_id("user_id", request.user)?;
        check_texts(limits, request.description, None, request.metadata)?;
        let ttl = request
            .ttl_seconds
            .unwrap_or(limits.default_reservation_ttl_seconds);
        check_ttl(ttl, limits)?;
        let (amount, currency) = self.price(limits, tenant, request.currency, request.spend)?;
        let model_tenant = self.tenant(tenant);
        let key = if request.dry_run {
            None
        } else {
            match claim(model_tenant, key)? {
                Claimed::Replay(done) => return Err(Stop::Replay(done)),
                Claimed::Fresh(key) => key,
            }
        };
        model_tenant.check_currency(currency)?;
        if !model_tenant.users.contains_key(request.user) {
            return Err(EngineError::NotFound(Missing::User).into());
        }
        if !request.dry_run {
            self.expire_due(history, tenant, request.user, now_ms);
        }
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, request.user);
        let open = account
            .open_reservations
            .iter()
            .filter(|h| h.expires_at_ms > now_ms)
            .count();
        if open >= limits.max_reservations_per_user as usize {
            return Err(EngineError::TooManyReservations.into());
        }
        let wallet = account.wallet_as_of(currency, now_ms);
        let (from_pool, pool) = match spend_from(&wallet, amount) {
            Ok(_) => (0, None),
            Err(refused) => match self.pool_in(tenant, request.user, currency) {
                Some(pool) => {
                    let need = amount - (wallet.available() + wallet.overdraft).max(0);
                    let allowance = self.allowance(tenant, request.user, pool, now_ms, true);
                    if need > allowance.available {
                        return Err(with_pool(refused, allowance.available).into());
                    }
                    (need, Some(pool))
                }
                None => return Err(refused.into()),
            },
        };
        let from_wallet = amount - from_pool;
        let available = wallet.available() - from_wallet;
        let expires_at_ms = expiry(now_ms, ttl)?;
        let reserved = wallet
            .reserved
            .checked_add(from_wallet)
            .ok_or(EngineError::Overflow)?;
        let outcome = Outcome::Reserve {
            reservation_id: if request.dry_run { 0 } else { lsn },
            amount,
            from_pool,
            expires_at_ms,
            available,
        };
        if request.dry_run {
            return Ok(Done {
                lsn: 0,
                outcome,
                replayed: false,
            });
        }
        let account = self.user_mut(tenant, request.user);
        account.wallet_mut(currency).reserved = reserved;
        account.open_reservations.push(MOpenReservation {
            id: lsn,
            currency,
            amount,
            expires_at_ms,
            pool_amount: from_pool,
            pool_day: if from_pool > 0 { day_of(now_ms) } else { 0 },
        });
        account.last_lsn = lsn;
        if let Some(pool) = pool {
            self.draw(
                tenant,
                request.user,
                pool,
                (0, from_pool, 0, from_pool),
                now_ms,
                lsn,
            );
        }
        let model_tenant = self.tenant_mut(tenant);
        let open = MReservation::Open { user: request.user };
        model_tenant.reservations.insert(lsn, open);
        complete(model_tenant, key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// The user of the open reservation `id`, or why it cannot be used.
    pub fn reservation_owner(&self, tenant: &str, id: Lsn) -> Result<&'static str, Stop> {
        match self.tenant(tenant).reservations.get(&id) {
            None => Err(EngineError::NotFound(Missing::Reservation).into()),
            Some(MReservation::Open { user }) => Ok(user),
            Some(MReservation::Closed { how, known, .. }) => match known {
                Known::Present => Err(EngineError::ReservationClosed(*how).into()),
                Known::Purged => Err(EngineError::NotFound(Missing::Reservation).into()),
                Known::Maybe => Err(Stop::ClosedOrGone(*how)),
            },
        }
    }

    /// Claims the key, finds the open reservation's user and expires that user's due
    /// reservations, as the engine does before any change to a reservation.
    pub fn open_reservation(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        id: Lsn,
        key: Key,
        now_ms: i64,
    ) -> Result<(&'static str, Key), Stop> {
        let key = match claim(self.tenant(tenant), key)? {
            Claimed::Replay(done) => return Err(Stop::Replay(done)),
            Claimed::Fresh(key) => key,
        };
        let user = self.reservation_owner(tenant, id)?;
        self.expire_due(history, tenant, user, now_ms);
        if !self.tenant(tenant).users[user]
            .open_reservations
            .iter()
            .any(|h| h.id == id)
        {
            return Err(match self.reservation_owner(tenant, id) {
                Err(stop) => stop,
                Ok(_) => EngineError::ReservationClosed(ClosedAs::Expired).into(),
            });
        }
        Ok((user, key))
    }

    /// Closes `user`'s open reservation `id` as `how`; returns what it held.
    pub fn close_reservation(
        &mut self,
        tenant: &'static str,
        user: &'static str,
        id: Lsn,
        how: ClosedAs,
        now_ms: i64,
    ) -> MOpenReservation {
        let account = self.user_mut(tenant, user);
        let index = account
            .open_reservations
            .iter()
            .position(|h| h.id == id)
            .expect("open reservation");
        let reservation = account.open_reservations.swap_remove(index);
        let closed = MReservation::Closed {
            user,
            how,
            at_ms: now_ms,
            known: Known::Present,
            currency: reservation.currency,
            amount: reservation.amount,
        };
        self.tenant_mut(tenant).reservations.insert(id, closed);
        reservation
    }

    /// Charges a reservation, by default what it holds, and closes it.
    pub fn capture(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        request: &CaptureRequest<'static>,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_texts(limits, request.description, None, request.metadata)?;
        if let Some(amount) = request.amount {
            check_amount("amount", amount, limits)?;
        }
        let id = request.reservation_id;
        let (user, key) = self.open_reservation(history, tenant, id, key, now_ms)?;
        let lsn = self.next_lsn;
        let account = &self.tenant(tenant).users[user];
        let reservation = account
            .open_reservations
            .iter()
            .find(|h| h.id == id)
            .expect("open reservation");
        let (held, currency) = (reservation.amount, reservation.currency);
        let (pool_held, pool_day) = (reservation.pool_amount, reservation.pool_day);
        let wallet_held = held - pool_held;
        let charged = request.amount.unwrap_or(held);
        let wallet = account.wallet(currency);
        // The wallet pays first (what it held, then what it can give); the pool the rest.
        let (from_wallet, from_pool, extra) = if charged <= held {
            let from_wallet = charged.min(wallet_held);
            (from_wallet, charged - from_wallet, 0)
        } else {
            let excess = charged - held;
            let refused = spend_from(&wallet, excess).err();
            match (refused, self.pool_in(tenant, user, currency)) {
                (None, _) => (wallet_held + excess, pool_held, 0),
                (Some(refused), None) => return Err(refused.into()),
                (Some(refused), Some(pool)) => {
                    let from_headroom = excess.min((wallet.available() + wallet.overdraft).max(0));
                    let extra = excess - from_headroom;
                    let allowance = self.allowance(tenant, user, pool, now_ms, false);
                    if extra > allowance.available {
                        return Err(with_pool(refused, allowance.available).into());
                    }
                    (wallet_held + from_headroom, pool_held + extra, extra)
                }
            }
        };
        let balance = wallet
            .balance
            .checked_sub(from_wallet)
            .ok_or(EngineError::Overflow)?;
        let reserved = wallet.reserved - wallet_held;
        let available = unchecked("a capture's available_after", balance.checked_sub(reserved));
        self.close_reservation(tenant, user, id, ClosedAs::Captured, now_ms);
        let account = self.user_mut(tenant, user);
        let target = account.wallet_mut(currency);
        target.balance = balance;
        target.reserved = reserved;
        account.last_lsn = lsn;
        if pool_held > 0 || from_pool > 0 {
            let pool = account.pool.expect("model: a pool for the pool's part");
            let returned = if pool_day == day_of(now_ms) {
                (pool_held - from_pool).max(0)
            } else {
                0
            };
            let share = (pool_held, 0, from_pool, extra - returned);
            self.draw(tenant, user, pool, share, now_ms, lsn);
        }
        let outcome = Outcome::Capture {
            entry_id: lsn,
            charged,
            from_pool,
            released: held.saturating_sub(charged).max(0),
            balance,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Moves an open reservation's expiry to `ttl_seconds` from now.
    pub fn extend(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        (id, ttl_seconds): (Lsn, u64),
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        check_ttl(ttl_seconds, limits)?;
        let (user, key) = self.open_reservation(history, tenant, id, key, now_ms)?;
        let lsn = self.next_lsn;
        let expires_at_ms = expiry(now_ms, ttl_seconds)?;
        let account = self.user_mut(tenant, user);
        let reservation = account
            .open_reservations
            .iter_mut()
            .find(|h| h.id == id)
            .expect("open reservation");
        reservation.expires_at_ms = expires_at_ms;
        account.last_lsn = lsn;
        let outcome = Outcome::Extend {
            reservation_id: id,
            expires_at_ms,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Closes a reservation without charging it.
    pub fn release(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        id: Lsn,
        key: Key,
        now_ms: i64,
    ) -> Result<Done, Stop> {
        let (user, key) = self.open_reservation(history, tenant, id, key, now_ms)?;
        let lsn = self.next_lsn;
        let reservation = self.close_reservation(tenant, user, id, ClosedAs::Released, now_ms);
        let account = self.user_mut(tenant, user);
        let wallet = account.wallet_mut(reservation.currency);
        wallet.reserved -= reservation.amount - reservation.pool_amount;
        let available = unchecked(
            "a release's available_after",
            wallet.balance.checked_sub(wallet.reserved),
        );
        account.last_lsn = lsn;
        let pool = account.pool;
        self.release_pool_hold(tenant, user, pool, &reservation, now_ms, lsn);
        let outcome = Outcome::Release {
            reservation_id: id,
            released: reservation.amount,
            available,
        };
        complete(self.tenant_mut(tenant), key, lsn, now_ms, outcome);
        self.commit(history);
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Gives the pool's part of a reservation released without a charge back to the pool, and to
    /// the member's allowance if it was placed the same UTC day.
    fn release_pool_hold(
        &mut self,
        tenant: &'static str,
        user: &'static str,
        pool: Option<&'static str>,
        reservation: &MOpenReservation,
        now_ms: i64,
        lsn: Lsn,
    ) {
        if reservation.pool_amount == 0 {
            return;
        }
        let pool = pool.expect("model: a pool holds for a member");
        let returned = if reservation.pool_day == day_of(now_ms) {
            reservation.pool_amount
        } else {
            0
        };
        let share = (reservation.pool_amount, 0, 0, -returned);
        self.draw(tenant, user, pool, share, now_ms, lsn);
    }

    /// Changes a wallet's overdraft limit: the LSN of the change.
    pub fn set_overdraft(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        change: Overdraft,
        now_ms: i64,
    ) -> Result<Lsn, EngineError> {
        let Overdraft {
            user,
            currency,
            limit,
            release_expired,
        } = change;
        check_id("user_id", user)?;
        if limit < 0 || limit > limits.max_amount {
            return Err(invalid("overdraft_limit"));
        }
        let model_tenant = self.tenant(tenant);
        let currency = currency.unwrap_or(model_tenant.default_currency);
        model_tenant.check_currency(currency)?;
        if !model_tenant.users.contains_key(user) {
            return Err(EngineError::NotFound(Missing::User));
        }
        // The decision depends on `available`, so expired reservations count as released, as for
        // every other decision (an expired reservation no longer holds anything).
        if release_expired {
            self.expire_due(history, tenant, user, now_ms);
        }
        let lsn = self.next_lsn;
        let account = self.user_mut(tenant, user);
        if account.wallet_as_of(currency, now_ms).available() < -limit {
            return Err(EngineError::Conflict(""));
        }
        account.wallet_mut(currency).overdraft = limit;
        account.last_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Adds or replaces a catalogue action: `(cost, currency, description)`.
    pub fn put_action(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        name: &'static str,
        (cost, currency, description): (i64, Option<Currency>, Option<&'static str>),
    ) -> Result<Lsn, EngineError> {
        check_id("action", name)?;
        check_amount("cost", cost, limits)?;
        check_text("description", description, limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        let currency = currency.unwrap_or(model_tenant.default_currency);
        model_tenant.check_currency(currency)?;
        let action = MAction {
            cost,
            currency,
            description,
        };
        model_tenant.actions.insert(name, action);
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Removes a catalogue action.
    pub fn delete_action(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        name: &'static str,
    ) -> Result<Lsn, EngineError> {
        check_id("action", name)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        model_tenant
            .actions
            .remove(name)
            .ok_or(EngineError::NotFound(Missing::Action))?;
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Adds or replaces a top-up package.
    pub fn put_package(
        &mut self,
        history: &mut History,
        limits: &Limits,
        tenant: &'static str,
        package: &'static str,
        terms: &PackageSpec<'static>,
    ) -> Result<Lsn, EngineError> {
        check_id("package_id", package)?;
        check_amount("credits", terms.credits, limits)?;
        check_amount("price_minor", terms.price_minor, limits)?;
        if terms.name.trim().is_empty() {
            return Err(invalid("name"));
        }
        check_text("name", Some(terms.name), limits.max_text_bytes)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        model_tenant.check_currency(terms.currency)?;
        model_tenant.packages.insert(package);
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Removes a top-up package.
    pub fn delete_package(
        &mut self,
        history: &mut History,
        tenant: &'static str,
        package: &'static str,
    ) -> Result<Lsn, EngineError> {
        check_id("package_id", package)?;
        let lsn = self.next_lsn;
        let model_tenant = self.tenant_mut(tenant);
        if !model_tenant.packages.remove(package) {
            return Err(EngineError::NotFound(Missing::Package));
        }
        model_tenant.catalogue_lsn = lsn;
        self.commit(history);
        Ok(lsn)
    }

    /// Forgets keys and closed reservations as `Engine::purge_expired` does; returns the keys
    /// forgotten and the bounds of the reservations forgotten.
    pub fn purge(
        &mut self,
        idempotency_ttl_seconds: u64,
        limits: &Limits,
        now_ms: i64,
    ) -> (u64, u64, u64) {
        let key_cutoff = now_ms.saturating_sub(seconds_to_ms(idempotency_ttl_seconds));
        let closed_cutoff =
            now_ms.saturating_sub(seconds_to_ms(limits.closed_reservation_retention_seconds));
        let (mut keys, mut certain, mut possible) = (0, 0, 0);
        for tenant in self.tenants.values_mut() {
            let before = tenant.keys.len();
            tenant.keys.retain(|_, key| key.created_ms >= key_cutoff);
            keys += (before - tenant.keys.len()) as u64;
            for reservation in tenant.reservations.values_mut() {
                if let MReservation::Closed { at_ms, known, .. } = reservation {
                    if *at_ms < closed_cutoff {
                        match known {
                            Known::Present => certain += 1,
                            Known::Maybe => possible += 1,
                            Known::Purged => {}
                        }
                        *known = Known::Purged;
                    }
                }
            }
        }
        (keys, certain, certain + possible)
    }

    /// What a restart at `now_ms` forgets: keys past their TTL; closed reservations past their
    /// retention may or may not come back (see [`Known::Maybe`]).
    pub fn after_restart(&mut self, idempotency_ttl_seconds: u64, limits: &Limits, now_ms: i64) {
        let key_cutoff = now_ms.saturating_sub(seconds_to_ms(idempotency_ttl_seconds));
        let closed_cutoff =
            now_ms.saturating_sub(seconds_to_ms(limits.closed_reservation_retention_seconds));
        for tenant in self.tenants.values_mut() {
            tenant.keys.retain(|_, key| key.created_ms >= key_cutoff);
            for reservation in tenant.reservations.values_mut() {
                if let MReservation::Closed { at_ms, known, .. } = reservation {
                    if *at_ms < closed_cutoff || *known == Known::Purged {
                        *known = Known::Maybe;
                    }
                }
            }
        }
    }
}
