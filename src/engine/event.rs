//! Events: the payload of every log record. An event carries its result (the balance after, the
//! reservation's expiry), never the request, so replay re-applies decisions and never re-makes them.
//! It also carries everything the ledger will show later: action, quantity, description,
//! reference, metadata, actor and time.
//!
//! Strings borrow from the request when encoding and from the segment buffer when decoding, so
//! neither the hot path nor replay allocates for them. Variants are only ever appended, never
//! reordered: the variant index is part of the on-disk format ([`crate::codec::FORMAT_VERSION`]).
//!
//! This module is the log's schema, and it is crate-private: the API and the payments side speak
//! the engine's public request types (`ProfileUpdate`, `PackageSpec`, `MethodDetails`), which the
//! operations turn into these records, so a change at the HTTP layer cannot change the log format
//! by accident. The plain value enums an event embeds (`Outcome`, `Decline`, `PaymentPurpose`)
//! are public in [`super::types`] and encoded as they are.

use serde::{Deserialize, Serialize};

use super::types::{
    CreditKind, Currency, CurrencySpec, DebitKind, Decline, Fingerprint, Lsn, Outcome,
    PaymentPurpose, ReleaseReason,
};

/// A secret carried by an event (a tenant's webhook signing key). Encoded exactly as the string
/// it wraps; its `Debug` form never shows it, so `creditd wal dump`, logs and panic messages that
/// print an event cannot leak it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<'a>(#[serde(borrow)] pub &'a str);

impl std::fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(*** {} bytes)", self.0.len())
    }
}

/// Which wallet an event changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletRef<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// User id.
    pub user: &'a str,
    /// Wallet currency.
    pub currency: Currency,
}

/// The idempotency key a change was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyTag<'a> {
    /// The client's key.
    pub key: &'a str,
    /// The digest of the request it was first used with.
    pub fingerprint: Fingerprint,
}

/// Who, when and why: shown by the ledger and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta<'a> {
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The API key's name, or `system`.
    pub actor: &'a str,
    /// Free text from the client.
    #[serde(borrow)]
    pub description: Option<&'a str>,
    /// The client's or the payment gateway's reference.
    #[serde(borrow)]
    pub reference: Option<&'a str>,
    /// A JSON document from the client, kept as text.
    #[serde(borrow)]
    pub metadata: Option<&'a str>,
    /// The idempotency key, when the request carried one.
    #[serde(borrow)]
    pub idempotency: Option<IdempotencyTag<'a>>,
}

impl<'a> Meta<'a> {
    /// Meta of a change the engine makes on its own (such as expiring a reservation).
    pub fn system(time_ms: i64) -> Meta<'a> {
        Meta {
            time_ms,
            actor: "system",
            description: None,
            reference: None,
            metadata: None,
            idempotency: None,
        }
    }
}

/// An action from the catalogue as used by one debit or reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionUse<'a> {
    /// The action's name.
    pub name: &'a str,
    /// How many units.
    pub quantity: u64,
    /// Credits per unit at the time.
    pub unit_cost: i64,
}

/// A tenant's settings as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettingsRecord<'a> {
    /// Display name.
    #[serde(borrow)]
    pub name: Option<&'a str>,
    /// The currency of wallets created for new users.
    pub default_currency: Currency,
    /// The currencies the tenant defined, with their decimals; empty if it never defined any
    /// (then its default currency, with no decimals, is its one currency).
    pub currencies: Vec<CurrencySpec>,
}

/// A user's profile as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProfileRecord<'a> {
    /// E-mail address.
    #[serde(borrow)]
    pub email: Option<&'a str>,
    /// Display name.
    #[serde(borrow)]
    pub name: Option<&'a str>,
    /// A JSON document, kept as text.
    #[serde(borrow)]
    pub metadata: Option<&'a str>,
}

/// A top-up package as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackageRecord<'a> {
    /// Display name.
    pub name: &'a str,
    /// Credits it buys.
    pub credits: i64,
    /// The wallet currency the credits go to.
    pub currency: Currency,
    /// Price in minor units (kobo, cents).
    pub price_minor: i64,
    /// Price currency (`NGN`, `USD`).
    pub price_currency: Currency,
    /// Offered for sale.
    pub active: bool,
    /// Where it is shown among the packages: lowest first, then by id.
    pub position: u32,
}

/// What a payment buys, fixed from the package when the payment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentTerms<'a> {
    /// The package.
    pub package: &'a str,
    /// Credits it adds.
    pub credits: i64,
    /// What it costs, in minor units.
    pub amount_minor: i64,
    /// In which currency.
    pub price_currency: Currency,
}

/// A reusable payment method a gateway handed back after a successful charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MethodRecord<'a> {
    /// `sandbox`, `paystack` or `stripe`.
    pub gateway: &'a str,
    /// Paystack `authorization_code`, Stripe `pm_…`, or a sandbox card.
    pub token: &'a str,
    /// Paystack customer e-mail or Stripe `cus_…`.
    #[serde(borrow)]
    pub customer: Option<&'a str>,
    /// What to show (`visa ••4081`).
    #[serde(borrow)]
    pub label: Option<&'a str>,
}

/// A credit pool's part in a spend by one of its members: the pool's side of the one record that
/// changes both the member's wallet and the pool (see [`crate::engine::state`] on the lock order).
/// Which fields move depends on the event: a debit pays (`charged`), a reservation holds
/// (`held`), a capture lets go of its hold and pays (`released`, `charged`), a release lets go
/// (`released`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolShare<'a> {
    /// The pool's id.
    pub pool: &'a str,
    /// What the pool held for the reservation this record closes (captures, releases).
    pub released: i64,
    /// What the pool holds from now on for the reservation this record places.
    pub held: i64,
    /// What the pool pays now (debits, captures).
    pub charged: i64,
    /// The pool's balance after.
    pub balance_after: i64,
    /// The pool's reserved after.
    pub reserved_after: i64,
    /// How the member's draws of the record's UTC day moved: up by what the pool holds or pays
    /// beyond an earlier hold, down by the unused part of a hold placed the same day.
    pub counted: i64,
    /// The member's draws of that day after.
    pub drawn_after: i64,
}

/// One change to the engine's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event<'a> {
    /// A tenant was created or its settings changed.
    TenantUpserted {
        /// Tenant id.
        tenant: &'a str,
        /// New settings.
        #[serde(borrow)]
        settings: TenantSettingsRecord<'a>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A user was created (with a wallet in the tenant's default currency) or its profile changed.
    UserUpserted {
        /// Tenant id.
        tenant: &'a str,
        /// User id.
        user: &'a str,
        /// New profile.
        #[serde(borrow)]
        profile: ProfileRecord<'a>,
        /// The currency of the wallet created with the user.
        default_currency: Currency,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A wallet's overdraft limit changed (its floor is minus this).
    OverdraftSet {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The new limit, ≥ 0.
        limit: i64,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// Credits were added.
    Credited {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// Why.
        kind: CreditKind,
        /// How many, > 0.
        amount: i64,
        /// Balance after.
        balance_after: i64,
        /// Available after.
        available_after: i64,
        /// Who, when, why.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// Credits were taken.
    Debited {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// Why.
        kind: DebitKind,
        /// How many, > 0.
        amount: i64,
        /// Balance after.
        balance_after: i64,
        /// Available after.
        available_after: i64,
        /// The catalogue action, for debits by action.
        #[serde(borrow)]
        action: Option<ActionUse<'a>>,
        /// The user's credit pool's part, when the pool pays or holds some of it.
        #[serde(borrow)]
        pool: Option<PoolShare<'a>>,
        /// Who, when, why.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// Credits were reserved; the reservation's id is this record's LSN.
    ReservationPlaced {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// How many, > 0.
        amount: i64,
        /// When it lapses, Unix milliseconds.
        expires_at_ms: i64,
        /// Reserved after.
        reserved_after: i64,
        /// Available after.
        available_after: i64,
        /// The catalogue action, for reservations by action.
        #[serde(borrow)]
        action: Option<ActionUse<'a>>,
        /// The user's credit pool's part, when the pool pays or holds some of it.
        #[serde(borrow)]
        pool: Option<PoolShare<'a>>,
        /// Who, when, why.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A reservation was charged (`charged` may be below or above `held`) and closed.
    ReservationCaptured {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The reservation.
        reservation_id: Lsn,
        /// What it held.
        held: i64,
        /// What was charged.
        charged: i64,
        /// Balance after.
        balance_after: i64,
        /// Reserved after.
        reserved_after: i64,
        /// Available after.
        available_after: i64,
        /// The catalogue action the reservation was made for.
        #[serde(borrow)]
        action: Option<ActionUse<'a>>,
        /// The user's credit pool's part, when the pool pays or holds some of it.
        #[serde(borrow)]
        pool: Option<PoolShare<'a>>,
        /// Who, when, why.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A reservation's expiry moved.
    ReservationExtended {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The reservation.
        reservation_id: Lsn,
        /// The new expiry, Unix milliseconds.
        expires_at_ms: i64,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A reservation was released (by the client or by expiry) without a charge.
    ReservationReleased {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The reservation.
        reservation_id: Lsn,
        /// What it held.
        amount: i64,
        /// Why.
        reason: ReleaseReason,
        /// Reserved after.
        reserved_after: i64,
        /// Available after.
        available_after: i64,
        /// The user's credit pool's part, when the pool pays or holds some of it.
        #[serde(borrow)]
        pool: Option<PoolShare<'a>>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A catalogue action was created or changed.
    ActionPut {
        /// Tenant id.
        tenant: &'a str,
        /// Action name.
        action: &'a str,
        /// Credits per unit, > 0.
        cost: i64,
        /// The wallet currency it charges.
        currency: Currency,
        /// Free text.
        #[serde(borrow)]
        description: Option<&'a str>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A catalogue action was removed.
    ActionDeleted {
        /// Tenant id.
        tenant: &'a str,
        /// Action name.
        action: &'a str,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A package was created or changed.
    PackagePut {
        /// Tenant id.
        tenant: &'a str,
        /// Package id.
        package: &'a str,
        /// Its terms.
        #[serde(borrow)]
        terms: PackageRecord<'a>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A package was removed.
    PackageDeleted {
        /// Tenant id.
        tenant: &'a str,
        /// Package id.
        package: &'a str,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A payment started with a reference of creditd's; its credits follow only on success.
    PaymentInitialized {
        /// The wallet the credits go to.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// creditd's reference, unique across tenants.
        reference: &'a str,
        /// What it buys.
        #[serde(borrow)]
        terms: PaymentTerms<'a>,
        /// `sandbox`, `paystack` or `stripe`.
        gateway: &'a str,
        /// Checkout or automatic top-up.
        purpose: PaymentPurpose,
        /// Who and when; `metadata` is the caller's, given to `initialize` (a JSON object).
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A payment succeeded and its credits were added: once per reference, whatever the number of
    /// deliveries.
    PaymentSucceeded {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The payment.
        reference: &'a str,
        /// Credits added, from the terms.
        credits: i64,
        /// What the gateway says was paid.
        paid_minor: i64,
        /// In which currency.
        paid_currency: Currency,
        /// Balance after.
        balance_after: i64,
        /// Available after.
        available_after: i64,
        /// A reusable method to save on the user.
        #[serde(borrow)]
        method: Option<MethodRecord<'a>>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A payment failed; nothing was credited.
    PaymentFailed {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The payment.
        reference: &'a str,
        /// How.
        decline: Decline,
        /// The gateway's words.
        reason: &'a str,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A gateway reported a payment with a reference creditd never issued; recorded, not credited.
    PaymentUnmatched {
        /// The gateway.
        gateway: &'a str,
        /// The reference it sent.
        reference: &'a str,
        /// What it said (event type, amount, currency).
        detail: &'a str,
        /// When.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A wallet's automatic top-up rule was set (enabled).
    AutoTopupSet {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// Top up when `available` falls under this.
        threshold: i64,
        /// With this package.
        package: &'a str,
        /// Charged to this payment method token; the user's saved one when absent.
        #[serde(borrow)]
        payment_method: Option<&'a str>,
        /// At most this many attempts per UTC day.
        max_per_day: u32,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A wallet's automatic top-up rule was removed.
    AutoTopupDeleted {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A wallet's automatic top-up rule was switched off: by creditd after a hard decline, or by an
    /// admin through the API.
    AutoTopupDisabled {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// Why.
        reason: &'a str,
        /// When.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// Where a tenant's application receives creditd's events, and the key that signs them.
    TenantWebhookSet {
        /// Tenant id.
        tenant: &'a str,
        /// HTTPS (or HTTP) endpoint; none to stop sending.
        #[serde(borrow)]
        url: Option<&'a str>,
        /// The HMAC-SHA256 signing secret.
        #[serde(borrow)]
        secret: Option<Secret<'a>>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// The gateway's checkout page for a payment.
    PaymentCheckoutOpened {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The payment.
        reference: &'a str,
        /// Where the customer pays.
        checkout_url: &'a str,
        /// When.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A reusable payment method reported after its payment was settled.
    PaymentMethodSaved {
        /// The wallet.
        #[serde(borrow)]
        wallet: WalletRef<'a>,
        /// The method.
        #[serde(borrow)]
        method: MethodRecord<'a>,
        /// When.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A credit pool was created or renamed.
    PoolPut {
        /// Tenant id.
        tenant: &'a str,
        /// Pool id.
        pool: &'a str,
        /// Display name.
        #[serde(borrow)]
        name: Option<&'a str>,
        /// The pool's currency, fixed when it is created.
        currency: Currency,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// Credits were added to a credit pool.
    PoolCredited {
        /// Tenant id.
        tenant: &'a str,
        /// Pool id.
        pool: &'a str,
        /// The pool's currency.
        currency: Currency,
        /// Why.
        kind: CreditKind,
        /// How many, > 0.
        amount: i64,
        /// The pool's balance after.
        balance_after: i64,
        /// The pool's available after.
        available_after: i64,
        /// Who, when, why.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A user draws on a credit pool from now on, or its daily cap changed.
    PoolMemberSet {
        /// Tenant id.
        tenant: &'a str,
        /// The user.
        user: &'a str,
        /// Pool id.
        pool: &'a str,
        /// The most the user may draw from the pool per UTC day; none: no cap.
        daily_cap: Option<i64>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A user no longer draws on its credit pool.
    PoolMemberRemoved {
        /// Tenant id.
        tenant: &'a str,
        /// The user.
        user: &'a str,
        /// Pool id.
        pool: &'a str,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A payment for a package bought for a credit pool started, with a reference of creditd's;
    /// its credits go to the pool, only on success.
    PoolPaymentInitialized {
        /// Tenant id.
        tenant: &'a str,
        /// Pool id: where the credits go.
        pool: &'a str,
        /// The pool's currency, which is the package's credits' currency.
        currency: Currency,
        /// creditd's reference, unique across tenants.
        reference: &'a str,
        /// What it buys.
        #[serde(borrow)]
        terms: PaymentTerms<'a>,
        /// `sandbox`, `paystack` or `stripe`.
        gateway: &'a str,
        /// Who and when; `metadata` is the caller's, given to `initialize` (a JSON object).
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// The gateway's checkout page for a pool's payment.
    PoolPaymentCheckoutOpened {
        /// Tenant id.
        tenant: &'a str,
        /// Pool id.
        pool: &'a str,
        /// The payment.
        reference: &'a str,
        /// Where the customer pays.
        checkout_url: &'a str,
        /// When.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A pool's payment succeeded and its credits were added to the pool: once per reference,
    /// whatever the number of deliveries.
    PoolPaymentSucceeded {
        /// Tenant id.
        tenant: &'a str,
        /// Pool id.
        pool: &'a str,
        /// The pool's currency.
        currency: Currency,
        /// The payment.
        reference: &'a str,
        /// Credits added, from the terms.
        credits: i64,
        /// What the gateway says was paid.
        paid_minor: i64,
        /// In which currency.
        paid_currency: Currency,
        /// The pool's balance after.
        balance_after: i64,
        /// The pool's available after.
        available_after: i64,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// A pool's payment failed; nothing was credited.
    PoolPaymentFailed {
        /// Tenant id.
        tenant: &'a str,
        /// Pool id.
        pool: &'a str,
        /// The payment.
        reference: &'a str,
        /// How.
        decline: Decline,
        /// The gateway's words.
        reason: &'a str,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
    /// The origins a tenant's portal sessions may return to (`return_url`); empty: the server's
    /// `streams.portal_return_origins`.
    TenantPortalOriginsSet {
        /// Tenant id.
        tenant: &'a str,
        /// Absolute `http(s)://host[:port]` origins, without a path.
        #[serde(borrow)]
        origins: Vec<&'a str>,
        /// Who and when.
        #[serde(borrow)]
        meta: Meta<'a>,
    },
}

impl<'a> Event<'a> {
    /// The tenant the event belongs to.
    pub fn tenant(&self) -> &'a str {
        match self {
            Event::TenantUpserted { tenant, .. }
            | Event::UserUpserted { tenant, .. }
            | Event::ActionPut { tenant, .. }
            | Event::ActionDeleted { tenant, .. }
            | Event::PackagePut { tenant, .. }
            | Event::PackageDeleted { tenant, .. }
            | Event::TenantWebhookSet { tenant, .. }
            | Event::PoolPut { tenant, .. }
            | Event::PoolCredited { tenant, .. }
            | Event::PoolMemberSet { tenant, .. }
            | Event::PoolMemberRemoved { tenant, .. }
            | Event::PoolPaymentInitialized { tenant, .. }
            | Event::PoolPaymentCheckoutOpened { tenant, .. }
            | Event::PoolPaymentSucceeded { tenant, .. }
            | Event::PoolPaymentFailed { tenant, .. }
            | Event::TenantPortalOriginsSet { tenant, .. } => tenant,
            Event::PaymentUnmatched { .. } => "",
            Event::OverdraftSet { wallet, .. }
            | Event::Credited { wallet, .. }
            | Event::Debited { wallet, .. }
            | Event::ReservationPlaced { wallet, .. }
            | Event::ReservationCaptured { wallet, .. }
            | Event::ReservationExtended { wallet, .. }
            | Event::ReservationReleased { wallet, .. }
            | Event::PaymentInitialized { wallet, .. }
            | Event::PaymentSucceeded { wallet, .. }
            | Event::PaymentFailed { wallet, .. }
            | Event::AutoTopupSet { wallet, .. }
            | Event::AutoTopupDeleted { wallet, .. }
            | Event::AutoTopupDisabled { wallet, .. }
            | Event::PaymentCheckoutOpened { wallet, .. }
            | Event::PaymentMethodSaved { wallet, .. } => wallet.tenant,
        }
    }

    /// Who, when and why.
    pub fn meta(&self) -> &Meta<'a> {
        match self {
            Event::TenantUpserted { meta, .. }
            | Event::UserUpserted { meta, .. }
            | Event::OverdraftSet { meta, .. }
            | Event::Credited { meta, .. }
            | Event::Debited { meta, .. }
            | Event::ReservationPlaced { meta, .. }
            | Event::ReservationCaptured { meta, .. }
            | Event::ReservationExtended { meta, .. }
            | Event::ReservationReleased { meta, .. }
            | Event::ActionPut { meta, .. }
            | Event::ActionDeleted { meta, .. }
            | Event::PackagePut { meta, .. }
            | Event::PackageDeleted { meta, .. }
            | Event::PaymentInitialized { meta, .. }
            | Event::PaymentSucceeded { meta, .. }
            | Event::PaymentFailed { meta, .. }
            | Event::PaymentUnmatched { meta, .. }
            | Event::AutoTopupSet { meta, .. }
            | Event::AutoTopupDeleted { meta, .. }
            | Event::AutoTopupDisabled { meta, .. }
            | Event::TenantWebhookSet { meta, .. }
            | Event::PaymentCheckoutOpened { meta, .. }
            | Event::PaymentMethodSaved { meta, .. }
            | Event::PoolPut { meta, .. }
            | Event::PoolCredited { meta, .. }
            | Event::PoolMemberSet { meta, .. }
            | Event::PoolMemberRemoved { meta, .. }
            | Event::PoolPaymentInitialized { meta, .. }
            | Event::PoolPaymentCheckoutOpened { meta, .. }
            | Event::PoolPaymentSucceeded { meta, .. }
            | Event::PoolPaymentFailed { meta, .. }
            | Event::TenantPortalOriginsSet { meta, .. } => meta,
        }
    }

    /// The wallet the event changes, for wallet events.
    pub fn wallet(&self) -> Option<&WalletRef<'a>> {
        match self {
            Event::OverdraftSet { wallet, .. }
            | Event::Credited { wallet, .. }
            | Event::Debited { wallet, .. }
            | Event::ReservationPlaced { wallet, .. }
            | Event::ReservationCaptured { wallet, .. }
            | Event::ReservationExtended { wallet, .. }
            | Event::ReservationReleased { wallet, .. }
            | Event::PaymentInitialized { wallet, .. }
            | Event::PaymentSucceeded { wallet, .. }
            | Event::PaymentFailed { wallet, .. }
            | Event::AutoTopupSet { wallet, .. }
            | Event::AutoTopupDeleted { wallet, .. }
            | Event::AutoTopupDisabled { wallet, .. }
            | Event::PaymentCheckoutOpened { wallet, .. }
            | Event::PaymentMethodSaved { wallet, .. } => Some(wallet),
            _ => None,
        }
    }

    /// The answer an idempotent request that made this event gets again on replay.
    pub fn outcome(&self, lsn: Lsn) -> Option<Outcome> {
        Some(match *self {
            Event::Credited {
                amount,
                balance_after,
                available_after,
                ..
            } => Outcome::Credit {
                entry_id: lsn,
                amount,
                balance: balance_after,
                available: available_after,
            },
            Event::Debited {
                kind,
                amount,
                balance_after,
                available_after,
                pool,
                ..
            } => Outcome::Debit {
                entry_id: lsn,
                kind,
                charged: amount,
                from_pool: pool.map_or(0, |pool| pool.charged),
                balance: balance_after,
                available: available_after,
            },
            Event::ReservationPlaced {
                amount,
                expires_at_ms,
                available_after,
                pool,
                ..
            } => Outcome::Reserve {
                reservation_id: lsn,
                amount,
                from_pool: pool.map_or(0, |pool| pool.held),
                expires_at_ms,
                available: available_after,
            },
            Event::ReservationCaptured {
                held,
                charged,
                balance_after,
                available_after,
                pool,
                ..
            } => Outcome::Capture {
                entry_id: lsn,
                charged,
                from_pool: pool.map_or(0, |pool| pool.charged),
                released: held.saturating_sub(charged).max(0),
                balance: balance_after,
                available: available_after,
            },
            Event::ReservationExtended {
                reservation_id,
                expires_at_ms,
                ..
            } => Outcome::Extend {
                reservation_id,
                expires_at_ms,
            },
            Event::ReservationReleased {
                reservation_id,
                amount,
                available_after,
                ..
            } => Outcome::Release {
                reservation_id,
                released: amount,
                available: available_after,
            },
            Event::PoolCredited {
                amount,
                balance_after,
                available_after,
                ..
            } => Outcome::Credit {
                entry_id: lsn,
                amount,
                balance: balance_after,
                available: available_after,
            },
            _ => return None,
        })
    }

    /// The pool a member's spend draws on, with the pool's part of it.
    pub fn pool_share(&self) -> Option<&PoolShare<'a>> {
        match self {
            Event::Debited { pool, .. }
            | Event::ReservationPlaced { pool, .. }
            | Event::ReservationCaptured { pool, .. }
            | Event::ReservationReleased { pool, .. } => pool.as_ref(),
            _ => None,
        }
    }

    /// The pool the event changes, if any: a pool's own events, a membership, a member's spend
    /// with a pool part.
    pub fn pool(&self) -> Option<&'a str> {
        match *self {
            Event::PoolPut { pool, .. }
            | Event::PoolCredited { pool, .. }
            | Event::PoolMemberSet { pool, .. }
            | Event::PoolMemberRemoved { pool, .. }
            | Event::PoolPaymentInitialized { pool, .. }
            | Event::PoolPaymentCheckoutOpened { pool, .. }
            | Event::PoolPaymentSucceeded { pool, .. }
            | Event::PoolPaymentFailed { pool, .. } => Some(pool),
            _ => self.pool_share().map(|share| share.pool),
        }
    }

    /// The user a membership event changes.
    pub fn member(&self) -> Option<&'a str> {
        match *self {
            Event::PoolMemberSet { user, .. } | Event::PoolMemberRemoved { user, .. } => Some(user),
            _ => None,
        }
    }
}
