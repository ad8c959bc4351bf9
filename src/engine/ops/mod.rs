//! The operations, one file per family: [`wallet`] (credit, debit, revoke), [`reservations`]
//! (reserve, capture, extend, release, expiry), [`catalogue`] (actions and packages), [`tenants`]
//! (tenants and their webhook), [`users`] (profiles and overdraft), [`pools`] (credit pools, their
//! members, and a pool's part in a member's spend). Each validates its request
//! without a lock, then walks the commit path of [`super::commit`]. This file holds the request
//! types they share.

mod catalogue;
mod checks;
mod pools;
mod reservations;
mod tenants;
mod users;
mod wallet;

use super::event::{PackageRecord, ProfileRecord};
use super::types::{CreditKind, Currency, Lsn};

pub(crate) use pools::allowance;
pub use pools::PoolCreditRequest;
pub(crate) use tenants::is_http_url;
pub use tenants::{
    check_currencies, check_portal_return_origins, check_tenant_webhook, normal_portal_origin,
    TenantSpec, MAX_PORTAL_RETURN_ORIGINS,
};

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
    /// For a grant: the most the caller may grant in this currency per UTC day, counting what
    /// it granted today (a service key's cap); `None`: no cap.
    pub grant_cap_per_day: Option<i64>,
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
            grant_cap_per_day: None,
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
    /// A chargeback: take the amount whatever the wallet holds, even below its floor (recorded
    /// as a `chargeback`, not a `revoke`); later credits repay the debt first.
    pub allow_negative: bool,
}

/// Reserve credits now, charge them later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// What to reserve.
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
    /// What to charge; everything held when `None`. Above the reservation, the excess comes from
    /// `available` if it suffices.
    pub amount: Option<i64>,
    /// Free text.
    pub description: Option<&'a str>,
    /// A JSON document, kept as text.
    pub metadata: Option<&'a str>,
}

/// One profile field as a request changes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldChange<'a> {
    /// Leave the stored value (the field was absent).
    #[default]
    Keep,
    /// Remove it (the field was `null`).
    Clear,
    /// Set it to this.
    Set(&'a str),
}

/// A change to a user's profile, field by field (see [`super::Engine::change_user`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileChange<'a> {
    /// E-mail address; checked when set.
    pub email: FieldChange<'a>,
    /// Display name.
    pub name: FieldChange<'a>,
    /// A JSON document, as text.
    pub metadata: FieldChange<'a>,
    /// Merge a set `metadata` into the stored document (RFC 7396 JSON Merge Patch) instead of
    /// replacing it.
    pub merge_metadata: bool,
}

/// A user's profile as a request sets it; every field replaces the stored one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfileUpdate<'a> {
    /// E-mail address.
    pub email: Option<&'a str>,
    /// Display name.
    pub name: Option<&'a str>,
    /// A JSON document, kept as text.
    pub metadata: Option<&'a str>,
}

impl<'a> From<ProfileUpdate<'a>> for ProfileRecord<'a> {
    fn from(update: ProfileUpdate<'a>) -> ProfileRecord<'a> {
        ProfileRecord {
            email: update.email,
            name: update.name,
            metadata: update.metadata,
        }
    }
}

/// A top-up package as a request creates or replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageSpec<'a> {
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

impl<'a> From<&PackageSpec<'a>> for PackageRecord<'a> {
    fn from(spec: &PackageSpec<'a>) -> PackageRecord<'a> {
        PackageRecord {
            name: spec.name,
            credits: spec.credits,
            currency: spec.currency,
            price_minor: spec.price_minor,
            price_currency: spec.price_currency,
            active: spec.active,
            position: spec.position,
        }
    }
}
