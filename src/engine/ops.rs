//! The operations: each validates its request without a lock, takes its user's shard lock once,
//! decides, queues its event, applies it and answers with the LSN to await.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use compact_str::CompactString;

use super::event::{
    ActionUse, Event, Meta, PackageRecord, ProfileRecord, TenantSettingsRecord, WalletRef,
};
use super::idempotency::{self, Begin, Claim, Done, IdempotencyKey};
use super::payments::Spent;
use super::state::{Account, Catalogue, HoldState, Tenant, Wallet};
use super::types::{
    check_amount, check_id, check_metadata, check_text, ClosedAs, CreditKind, Currency, DebitKind,
    EngineError, Invalid, Lsn, ReleaseReason, Shortfall,
};
use super::Engine;
use crate::codec;
use crate::wal::DurabilityError;

/// Who is asking, and under which idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context<'a> {
    /// The API key's name (or `system`), recorded as the actor.
    pub actor: &'a str,
    /// The request's idempotency key, if it sent one.
    pub idempotency: Option<IdempotencyKey<'a>>,
}

impl<'a> Context<'a> {
    /// A request by `actor` without an idempotency key.
    pub fn actor(actor: &'a str) -> Context<'a> {
        Context {
            actor,
            idempotency: None,
        }
    }

    /// The same request under an idempotency key.
    pub fn with_key(self, key: IdempotencyKey<'a>) -> Context<'a> {
        Context {
            idempotency: Some(key),
            ..self
        }
    }
}

/// What a debit or reservation spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend<'a> {
    /// A number of credits.
    Amount(i64),
    /// A catalogue action, priced by the catalogue.
    Action {
        /// The action's name.
        name: &'a str,
        /// How many units.
        quantity: u64,
    },
}

/// Add credits to a user's wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// Credits to add, > 0.
    pub amount: i64,
    /// Why.
    pub kind: CreditKind,
    /// The wallet's currency; the tenant's default when `None`.
    pub currency: Option<Currency>,
    /// Free text.
    pub description: Option<&'a str>,
    /// The client's reference.
    pub reference: Option<&'a str>,
    /// A JSON document, kept as text.
    pub metadata: Option<&'a str>,
}

impl<'a> CreditRequest<'a> {
    /// A credit of `amount` of `kind` to `user`'s default wallet.
    pub fn new(user: &'a str, amount: i64, kind: CreditKind) -> CreditRequest<'a> {
        CreditRequest {
            user,
            amount,
            kind,
            currency: None,
            description: None,
            reference: None,
            metadata: None,
        }
    }
}

/// Take credits from a user's wallet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebitRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// What to spend.
    pub spend: Spend<'a>,
    /// The wallet's currency; the action's or the tenant's default when `None`.
    pub currency: Option<Currency>,
    /// Free text.
    pub description: Option<&'a str>,
    /// The client's reference.
    pub reference: Option<&'a str>,
    /// A JSON document, kept as text.
    pub metadata: Option<&'a str>,
    /// Check and answer as if it ran, change nothing.
    pub dry_run: bool,
}

impl<'a> DebitRequest<'a> {
    /// A debit of `spend` from `user`'s wallet.
    pub fn new(user: &'a str, spend: Spend<'a>) -> DebitRequest<'a> {
        DebitRequest {
            user,
            spend,
            currency: None,
            description: None,
            reference: None,
            metadata: None,
            dry_run: false,
        }
    }
}

/// Take credits back (an administrator's correction); needs a reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokeRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// Credits to take, > 0.
    pub amount: i64,
    /// The wallet's currency; the tenant's default when `None`.
    pub currency: Option<Currency>,
    /// Why; recorded as the entry's description.
    pub reason: &'a str,
}

/// Reserve credits now, charge them later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// What to hold.
    pub spend: Spend<'a>,
    /// The wallet's currency; the action's or the tenant's default when `None`.
    pub currency: Option<Currency>,
    /// Lifetime; `limits.default_reservation_ttl_seconds` when `None`.
    pub ttl_seconds: Option<u64>,
    /// Free text.
    pub description: Option<&'a str>,
    /// A JSON document, kept as text.
    pub metadata: Option<&'a str>,
    /// Check and answer as if it ran, change nothing.
    pub dry_run: bool,
}

impl<'a> ReserveRequest<'a> {
    /// A reservation of `spend` on `user`'s wallet with the default lifetime.
    pub fn new(user: &'a str, spend: Spend<'a>) -> ReserveRequest<'a> {
        ReserveRequest {
            user,
            spend,
            currency: None,
            ttl_seconds: None,
            description: None,
            metadata: None,
            dry_run: false,
        }
    }
}

/// Charge a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureRequest<'a> {
    /// The reservation.
    pub reservation_id: Lsn,
    /// What to charge; everything held when `None`. Above the hold, the excess comes from
    /// `available` if it suffices.
    pub amount: Option<i64>,
    /// Free text.
    pub description: Option<&'a str>,
    /// A JSON document, kept as text.
    pub metadata: Option<&'a str>,
}

thread_local! {
    /// Where events are encoded before they are copied into the log's buffer.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// The price of a spend: amount, wallet currency and the catalogue action, if any.
struct Price<'a> {
    amount: i64,
    currency: Currency,
    action: Option<ActionUse<'a>>,
}

impl Engine {
    /// Encodes and queues one event; returns its LSN.
    pub(super) fn append(&self, event: &Event<'_>) -> Result<Lsn, EngineError> {
        SCRATCH.with(|scratch| {
            let mut buffer = scratch.borrow_mut();
            buffer.clear();
            if codec::encode_into(event, &mut buffer).is_err() {
                return Err(EngineError::Invalid(Invalid::new(
                    "request",
                    "could not be encoded",
                )));
            }
            if buffer.len() > self.options.max_record_bytes as usize {
                return Err(EngineError::Invalid(Invalid::new(
                    "request",
                    "too large to record",
                )));
            }
            Ok(self.wal.append(&buffer)?)
        })
    }

    /// Queues a user-level event, applies it to the locked account, updates the reservation index
    /// and finishes the idempotency claim. Runs under the user's shard lock.
    fn commit(
        &self,
        tenant: &Tenant,
        account: &mut Account,
        event: &Event<'_>,
        claim: Option<Claim<'_>>,
    ) -> Result<Done, EngineError> {
        let lsn = self.commit_event(tenant, account, event)?;
        let meta = event.meta();
        let Some(outcome) = event.outcome(lsn) else {
            return Err(self.internal_error(lsn, "wallet event without an outcome"));
        };
        if let Some(claim) = claim {
            claim.complete(lsn, meta.time_ms, outcome);
        }
        Ok(Done {
            lsn,
            outcome,
            replayed: false,
        })
    }

    /// Queues a user-level event and applies it to the locked account, the reservation index and
    /// the payments map. Runs under the user's shard lock.
    pub(super) fn commit_event(
        &self,
        tenant: &Tenant,
        account: &mut Account,
        event: &Event<'_>,
    ) -> Result<Lsn, EngineError> {
        let lsn = self.append(event)?;
        let change = match account.apply(lsn, event) {
            Ok(change) => change,
            Err(mismatch) => return Err(self.internal_error(lsn, &mismatch.0)),
        };
        let meta = event.meta();
        let user = event.wallet().map_or("", |wallet| wallet.user);
        tenant.index_hold(user, change, meta.time_ms);
        if let Err(mismatch) = self.state.apply_payment(lsn, event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        Ok(lsn)
    }

    /// A decision contradicted its own state: the log now holds a record memory does not. Refuse
    /// everything from here on rather than acknowledge a state that recovery would not rebuild.
    pub(super) fn internal_error(&self, lsn: Lsn, what: &str) -> EngineError {
        debug_assert!(false, "LSN {lsn}: {what}");
        self.wal
            .poison(format!("internal error at LSN {lsn}: {what}"));
        // The record is queued and may still be written with the batch it is in.
        EngineError::Durability(DurabilityError::Poisoned)
    }

    pub(super) fn claim<'t>(
        &'t self,
        tenant: &'t Tenant,
        context: &Context<'t>,
        dry_run: bool,
    ) -> Result<Begin<'t>, EngineError> {
        if dry_run || context.idempotency.is_none() {
            // No shared counter is touched by requests without a key.
            return Ok(Begin::Fresh(None));
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        idempotency::begin(
            tenant,
            context.idempotency.as_ref(),
            &self.state.idempotency_entries,
            self.options.idempotency_max_entries,
            token,
        )
    }

    pub(super) fn meta<'a>(
        &self,
        context: &Context<'a>,
        now_ms: i64,
        description: Option<&'a str>,
    ) -> Meta<'a> {
        Meta {
            time_ms: now_ms,
            actor: context.actor,
            description,
            reference: None,
            metadata: None,
            idempotency: context.idempotency.map(|key| super::event::IdempotencyTag {
                key: key.key,
                fingerprint: key.fingerprint,
            }),
        }
    }

    fn check_texts(
        &self,
        description: Option<&str>,
        reference: Option<&str>,
        metadata: Option<&str>,
    ) -> Result<(), EngineError> {
        let limits = &self.options.limits;
        check_text("description", description, limits.max_text_bytes)?;
        check_text("reference", reference, limits.max_text_bytes)?;
        check_metadata(metadata, limits)
    }

    /// Prices a spend: an amount in the given or default currency, or an action × quantity.
    fn price<'a>(
        &self,
        tenant: &Tenant,
        currency: Option<Currency>,
        spend: Spend<'a>,
    ) -> Result<Price<'a>, EngineError> {
        let limits = &self.options.limits;
        match spend {
            Spend::Amount(amount) => {
                check_amount("amount", amount, limits)?;
                Ok(Price {
                    amount,
                    currency: currency.unwrap_or(tenant.default_currency),
                    action: None,
                })
            }
            Spend::Action { name, quantity } => {
                check_id("action", name)?;
                if quantity == 0 || quantity > limits.max_quantity {
                    return Err(EngineError::Invalid(Invalid::new(
                        "quantity",
                        "must be between 1 and limits.max_quantity",
                    )));
                }
                let (unit_cost, action_currency) = {
                    let catalogue = tenant.catalogue.read();
                    let action = catalogue
                        .actions
                        .get(name)
                        .ok_or(EngineError::UnknownAction)?;
                    (action.cost, action.currency)
                };
                if currency.is_some_and(|c| c != action_currency) {
                    return Err(EngineError::Invalid(Invalid::new(
                        "currency",
                        "differs from the action's currency",
                    )));
                }
                let quantity_i64 = i64::try_from(quantity).map_err(|_| EngineError::Overflow)?;
                let amount = unit_cost
                    .checked_mul(quantity_i64)
                    .ok_or(EngineError::Overflow)?;
                check_amount("amount", amount, limits)?;
                let action = Some(ActionUse {
                    name,
                    quantity,
                    unit_cost,
                });
                Ok(Price {
                    amount,
                    currency: action_currency,
                    action,
                })
            }
        }
    }

    /// Releases, through the log, every reservation of this user whose time has run out. Runs
    /// under the user's lock, before a decision that depends on `available`.
    pub(super) fn expire_due_holds(
        &self,
        tenant: &Tenant,
        user: &str,
        account: &mut Account,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        if account.extra.is_none() {
            return Ok(());
        }
        while let Some(hold) = account.first_due_hold(now_ms) {
            let (id, currency, amount) = (hold.id, hold.currency, hold.amount);
            let wallet = *account
                .wallet(currency)
                .ok_or(EngineError::Conflict("reservation on a missing wallet"))?;
            let reserved_after = checked(wallet.reserved.checked_sub(amount))?;
            let event = Event::HoldReleased {
                wallet: WalletRef {
                    tenant: &tenant.id,
                    user,
                    currency,
                },
                hold_id: id,
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

    /// Creates or updates a tenant. Its default currency is fixed at creation.
    pub fn upsert_tenant(
        &self,
        id: &str,
        name: Option<&str>,
        default_currency: Option<Currency>,
        context: &Context<'_>,
    ) -> Result<(Arc<Tenant>, bool, Lsn), EngineError> {
        check_id("tenant_id", id)?;
        check_text("name", name, self.options.limits.max_text_bytes)?;
        let now_ms = self.clock.now_ms();
        let mut tenants = self.state.tenants.write();
        let existing = tenants.get(id).cloned();
        let currency = match (&existing, default_currency) {
            (Some(tenant), Some(currency)) if currency != tenant.default_currency => {
                return Err(EngineError::Conflict(
                    "a tenant's default currency cannot change",
                ));
            }
            (Some(tenant), _) => tenant.default_currency,
            (None, currency) => currency.unwrap_or(Currency::CREDITS),
        };
        let settings = TenantSettingsRecord {
            name,
            default_currency: currency,
        };
        let event = Event::TenantUpserted {
            tenant: id,
            settings,
            meta: self.meta(context, now_ms, None),
        };
        if let Some(tenant) = existing {
            let mut catalogue = tenant.catalogue.write();
            if catalogue.name.as_deref() == name {
                return Ok((Arc::clone(&tenant), false, catalogue.last_lsn));
            }
            let lsn = self.append(&event)?;
            if let Err(mismatch) = catalogue.apply(lsn, &event) {
                return Err(self.internal_error(lsn, &mismatch.0));
            }
            drop(catalogue);
            return Ok((tenant, false, lsn));
        }
        let lsn = self.append(&event)?;
        let catalogue = Catalogue {
            last_lsn: lsn,
            name: name.map(Box::from),
            default_currency: currency,
            actions: Default::default(),
            packages: Default::default(),
            webhook_url: None,
            webhook_secret: None,
        };
        let tenant = Arc::new(Tenant::new(id, catalogue, self.state.shards));
        tenants.insert(id.into(), Arc::clone(&tenant));
        Ok((tenant, true, lsn))
    }

    /// Every tenant, sorted by id.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.state.tenant_list()
    }

    /// Creates a user (with a wallet in the tenant's default currency) or updates its profile.
    /// Returns whether it was created and the LSN to await (an unchanged profile writes nothing and
    /// awaits the user's last change).
    pub fn upsert_user(
        &self,
        tenant: &Tenant,
        user: &str,
        profile: ProfileRecord<'_>,
        context: &Context<'_>,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("user_id", user)?;
        let limits = &self.options.limits;
        check_text("email", profile.email, limits.max_text_bytes)?;
        check_text("name", profile.name, limits.max_text_bytes)?;
        check_metadata(profile.metadata, limits)?;
        let now_ms = self.clock.now_ms();
        let event = Event::UserUpserted {
            tenant: &tenant.id,
            user,
            profile,
            default_currency: tenant.default_currency,
            meta: self.meta(context, now_ms, None),
        };
        match tenant.users.entry(CompactString::new(user)) {
            dashmap::Entry::Occupied(mut entry) => {
                let account = entry.get_mut();
                let unchanged = match account.profile() {
                    Some(existing) => existing.matches(&profile),
                    None => {
                        profile.email.is_none()
                            && profile.name.is_none()
                            && profile.metadata.is_none()
                    }
                };
                if unchanged {
                    return Ok((false, account.last_lsn()));
                }
                let lsn = self.append(&event)?;
                if let Err(mismatch) = account.apply(lsn, &event) {
                    return Err(self.internal_error(lsn, &mismatch.0));
                }
                Ok((false, lsn))
            }
            dashmap::Entry::Vacant(entry) => {
                let lsn = self.append(&event)?;
                let mut account = Account::new(tenant.default_currency, &profile);
                account.set_last_lsn(lsn);
                entry.insert(account);
                Ok((true, lsn))
            }
        }
    }

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
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .users
            .get_mut(request.user)
            .ok_or(EngineError::UserNotFound)?;
        self.expire_due_holds(tenant, request.user, &mut account, now_ms)?;
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
        self.commit(tenant, &mut account, &event, claim)
    }

    /// Spends credits: by amount or by catalogue action. A spend that would take `available` below
    /// the wallet's floor is refused with [`EngineError::InsufficientCredits`] and writes nothing.
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
        self.take(
            tenant,
            request.user,
            price,
            DebitKind::Usage,
            meta,
            context,
            request.dry_run,
        )
    }

    /// Takes credits back; the reason is recorded as the entry's description.
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
        self.take(
            tenant,
            request.user,
            price,
            DebitKind::Revoke,
            meta,
            context,
            false,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn take<'a>(
        &self,
        tenant: &Tenant,
        user: &'a str,
        price: Price<'a>,
        kind: DebitKind,
        mut meta: Meta<'a>,
        context: &Context<'_>,
        dry_run: bool,
    ) -> Result<Done, EngineError> {
        let claim = match self.claim(tenant, context, dry_run)? {
            Begin::Replay(done) => return Ok(done),
            Begin::Fresh(claim) => claim,
        };
        let now_ms = self.clock.now_ms();
        meta.time_ms = now_ms;
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::UserNotFound)?;
        if !dry_run {
            self.expire_due_holds(tenant, user, &mut account, now_ms)?;
        }
        // A dry run writes nothing, so it decides as if the due reservations were released.
        let wallet = account.wallet_as_of(price.currency, now_ms);
        let available_after = spend_from(&wallet, price.amount)?;
        let event = Event::Debited {
            wallet: WalletRef {
                tenant: &tenant.id,
                user,
                currency: price.currency,
            },
            kind,
            amount: price.amount,
            balance_after: checked(wallet.balance.checked_sub(price.amount))?,
            available_after,
            action: price.action,
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
        Ok(done)
    }

    /// Holds credits until captured, released or expired. The reservation's id is the LSN.
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
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .users
            .get_mut(request.user)
            .ok_or(EngineError::UserNotFound)?;
        if !request.dry_run {
            self.expire_due_holds(tenant, request.user, &mut account, now_ms)?;
        }
        if account.open_holds_as_of(now_ms) >= limits.max_reservations_per_user as usize {
            return Err(EngineError::TooManyReservations);
        }
        let wallet = account.wallet_as_of(price.currency, now_ms);
        let available_after = spend_from(&wallet, price.amount)?;
        let mut meta = self.meta(context, now_ms, request.description);
        meta.metadata = request.metadata;
        let event = Event::HoldPlaced {
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
            .holds
            .get(&id)
            .ok_or(EngineError::ReservationNotFound)?;
        match entry.state {
            HoldState::Open { .. } => Ok(entry.user.clone()),
            HoldState::Closed { how, .. } => Err(EngineError::ReservationClosed(how)),
        }
    }

    /// Runs `decide` on an open reservation under its user's lock, after expiring it if its time
    /// has run out (then it is closed and the answer is [`EngineError::ReservationClosed`]).
    fn with_open_hold(
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
            .ok_or(EngineError::ReservationNotFound)?;
        self.expire_due_holds(tenant, &user, &mut account, now_ms)?;
        if account.hold(id).is_none() {
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
        self.with_open_hold(
            tenant,
            id,
            context,
            |engine, account, user, now_ms, claim| {
                let hold = account.hold(id).ok_or(EngineError::ReservationNotFound)?;
                let (held, currency, action) = (hold.amount, hold.currency, hold.action.clone());
                let charged = request.amount.unwrap_or(held);
                let wallet = *account
                    .wallet(currency)
                    .ok_or(EngineError::ReservationNotFound)?;
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
                let event = Event::HoldCaptured {
                    wallet: WalletRef {
                        tenant: &tenant.id,
                        user,
                        currency,
                    },
                    hold_id: id,
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
        self.with_open_hold(
            tenant,
            reservation_id,
            context,
            |engine, account, user, now_ms, claim| {
                let currency = account
                    .hold(reservation_id)
                    .ok_or(EngineError::ReservationNotFound)?
                    .currency;
                let event = Event::HoldExtended {
                    wallet: WalletRef {
                        tenant: &tenant.id,
                        user,
                        currency,
                    },
                    hold_id: reservation_id,
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
        self.with_open_hold(
            tenant,
            reservation_id,
            context,
            |engine, account, user, now_ms, claim| {
                let hold = account
                    .hold(reservation_id)
                    .ok_or(EngineError::ReservationNotFound)?;
                let (amount, currency) = (hold.amount, hold.currency);
                let wallet = *account
                    .wallet(currency)
                    .ok_or(EngineError::ReservationNotFound)?;
                let reserved_after = checked(wallet.reserved.checked_sub(amount))?;
                let event = Event::HoldReleased {
                    wallet: WalletRef {
                        tenant: &tenant.id,
                        user,
                        currency,
                    },
                    hold_id: reservation_id,
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

    /// Sets how far a wallet may go below zero. Refused if the wallet is already deeper in debt
    /// than the new limit allows.
    pub fn set_overdraft(
        &self,
        tenant: &Tenant,
        user: &str,
        currency: Option<Currency>,
        limit: i64,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("user_id", user)?;
        if limit < 0 || limit > self.options.limits.max_amount {
            return Err(EngineError::Invalid(Invalid::new(
                "overdraft_limit",
                "must be between 0 and limits.max_amount",
            )));
        }
        let currency = currency.unwrap_or(tenant.default_currency);
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .users
            .get_mut(user)
            .ok_or(EngineError::UserNotFound)?;
        self.expire_due_holds(tenant, user, &mut account, now_ms)?;
        let wallet = account
            .wallet(currency)
            .copied()
            .unwrap_or(Wallet::empty(currency));
        if wallet.available() < -limit {
            return Err(EngineError::Conflict(
                "the wallet's debt is deeper than the new overdraft limit",
            ));
        }
        let event = Event::OverdraftSet {
            wallet: WalletRef {
                tenant: &tenant.id,
                user,
                currency,
            },
            limit,
            meta: self.meta(context, now_ms, None),
        };
        let lsn = self.append(&event)?;
        match account.apply(lsn, &event) {
            Ok(_) => Ok(lsn),
            Err(mismatch) => Err(self.internal_error(lsn, &mismatch.0)),
        }
    }

    /// Creates or replaces a catalogue action.
    pub fn put_action(
        &self,
        tenant: &Tenant,
        action: &str,
        cost: i64,
        currency: Option<Currency>,
        description: Option<&str>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("action", action)?;
        check_amount("cost", cost, &self.options.limits)?;
        check_text(
            "description",
            description,
            self.options.limits.max_text_bytes,
        )?;
        let currency = currency.unwrap_or(tenant.default_currency);
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::ActionPut {
                tenant: &tenant.id,
                action,
                cost,
                currency,
                description,
                meta,
            },
        )
    }

    /// Removes a catalogue action.
    pub fn delete_action(
        &self,
        tenant: &Tenant,
        action: &str,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("action", action)?;
        if !tenant.catalogue.read().actions.contains_key(action) {
            return Err(EngineError::UnknownAction);
        }
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::ActionDeleted {
                tenant: &tenant.id,
                action,
                meta,
            },
        )
    }

    /// Creates or replaces a top-up package.
    pub fn put_package(
        &self,
        tenant: &Tenant,
        package: &str,
        terms: &PackageRecord<'_>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("package_id", package)?;
        let limits = &self.options.limits;
        check_amount("credits", terms.credits, limits)?;
        check_amount("price_minor", terms.price_minor, limits)?;
        if terms.name.trim().is_empty() {
            return Err(EngineError::Invalid(Invalid::new("name", "is required")));
        }
        check_text("name", Some(terms.name), limits.max_text_bytes)?;
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::PackagePut {
                tenant: &tenant.id,
                package,
                terms: *terms,
                meta,
            },
        )
    }

    /// Removes a top-up package.
    pub fn delete_package(
        &self,
        tenant: &Tenant,
        package: &str,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_id("package_id", package)?;
        if !tenant.catalogue.read().packages.contains_key(package) {
            return Err(EngineError::PackageNotFound);
        }
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::PackageDeleted {
                tenant: &tenant.id,
                package,
                meta,
            },
        )
    }

    pub(super) fn change_catalogue(
        &self,
        tenant: &Tenant,
        event: &Event<'_>,
    ) -> Result<Lsn, EngineError> {
        let mut catalogue = tenant.catalogue.write();
        // Check again under the write lock: a concurrent delete may have won.
        let missing = match *event {
            Event::ActionDeleted { action, .. } => {
                (!catalogue.actions.contains_key(action)).then_some(EngineError::UnknownAction)
            }
            Event::PackageDeleted { package, .. } => {
                (!catalogue.packages.contains_key(package)).then_some(EngineError::PackageNotFound)
            }
            _ => None,
        };
        if let Some(error) = missing {
            return Err(error);
        }
        let lsn = self.append(event)?;
        match catalogue.apply(lsn, event) {
            Ok(()) => Ok(lsn),
            Err(mismatch) => Err(self.internal_error(lsn, &mismatch.0)),
        }
    }

    /// Releases every reservation whose time ran out by `now_ms`; returns how many.
    pub fn expire_reservations(&self, now_ms: i64) -> Result<u64, EngineError> {
        let mut expired = 0u64;
        for tenant in self.state.tenant_list() {
            let due: Vec<(Lsn, CompactString)> = tenant
                .holds
                .iter()
                .filter_map(|entry| match entry.state {
                    HoldState::Open { expires_at_ms } if expires_at_ms <= now_ms => {
                        Some((*entry.key(), entry.user.clone()))
                    }
                    _ => None,
                })
                .collect();
            for (_, user) in due {
                let Some(mut account) = tenant.users.get_mut(user.as_str()) else {
                    continue;
                };
                let before = account.holds().len();
                self.expire_due_holds(&tenant, &user, &mut account, now_ms)?;
                expired += (before - account.holds().len()) as u64;
            }
        }
        Ok(expired)
    }

    /// Forgets idempotency keys past their TTL and closed reservations past their retention.
    pub fn purge_expired(&self, now_ms: i64) -> (u64, u64) {
        let ttl_ms = i64::try_from(self.options.idempotency_ttl_seconds.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let retention_ms = i64::try_from(
            self.options
                .limits
                .closed_reservation_retention_seconds
                .saturating_mul(1000),
        )
        .unwrap_or(i64::MAX);
        let mut keys = 0;
        let mut reservations = 0;
        for tenant in self.state.tenant_list() {
            keys += idempotency::purge(
                &tenant,
                &self.state.idempotency_entries,
                now_ms.saturating_sub(ttl_ms),
            );
            let before = tenant.holds.len();
            tenant.holds.retain(|_, entry| {
                !matches!(entry.state, HoldState::Closed { at_ms, .. } if at_ms < now_ms.saturating_sub(retention_ms))
            });
            reservations += before.saturating_sub(tenant.holds.len()) as u64;
        }
        self.purge_payments(now_ms);
        (keys, reservations)
    }

    /// How many idempotency keys are held, all tenants together.
    pub fn idempotency_entries(&self) -> u64 {
        self.state.idempotency_entries.load(Ordering::Relaxed)
    }
}

/// Turns a checked operation's `None` into [`EngineError::Overflow`].
fn checked(value: Option<i64>) -> Result<i64, EngineError> {
    value.ok_or(EngineError::Overflow)
}

/// What `available` becomes after spending `amount`, or the shortfall if it would go below the floor.
fn spend_from(wallet: &Wallet, amount: i64) -> Result<i64, EngineError> {
    let available = wallet.available();
    let shortfall = EngineError::InsufficientCredits(Shortfall {
        balance: wallet.balance,
        available,
        required: amount,
    });
    match available.checked_sub(amount) {
        Some(after) if after >= wallet.floor() => Ok(after),
        _ => Err(shortfall),
    }
}

fn dry_run_answer(event: &Event<'_>) -> Result<Done, EngineError> {
    let outcome = event.outcome(0).ok_or(EngineError::Invalid(Invalid::new(
        "dry_run",
        "not supported here",
    )))?;
    Ok(Done {
        lsn: 0,
        outcome,
        replayed: false,
    })
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
