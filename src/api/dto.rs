//! Request and response bodies. Requests borrow their strings from the body bytes, reject
//! unknown fields, so a misspelt field (`"ammount"`) is an error, not a silent default, and must
//! be JSON objects ([`Object`]): serde alone would also fill a struct from an array, by position.
//! Field docs live in `docs/openapi.yaml`.
#![allow(missing_docs)]

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::engine::types::CreditKind;
use crate::engine::{ActionView, PackageView, TenantView, WalletView};
use crate::time::format_rfc3339_ms;

/// A request struct read from a JSON object only; an array (which serde would map onto the
/// fields by position) or any other value is a shape error.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

/// A list of [`Object`]s.
fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let items = Vec::<Object<T>>::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Object(item)| item).collect())
}

/// `PUT /v1/users/{user_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody<'a> {
    #[serde(borrow, default)]
    pub email: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
}

/// `POST /v1/users/{user_id}/credit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditBody<'a> {
    pub amount: i64,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
    #[serde(default)]
    pub kind: Option<CreditKind>,
    #[serde(borrow, default)]
    pub reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
}

/// `POST /v1/users/{user_id}/debit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebitBody<'a> {
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(borrow, default)]
    pub action: Option<Cow<'a, str>>,
    #[serde(default)]
    pub quantity: Option<u64>,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// `POST /v1/debits/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody<'a> {
    #[serde(borrow, deserialize_with = "objects")]
    pub debits: Vec<BatchItem<'a>>,
}

/// One debit of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem<'a> {
    #[serde(borrow)]
    pub user_id: Cow<'a, str>,
    #[serde(borrow, default)]
    pub idempotency_key: Option<Cow<'a, str>>,
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(borrow, default)]
    pub action: Option<Cow<'a, str>>,
    #[serde(default)]
    pub quantity: Option<u64>,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub reference: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
}

/// `POST /v1/users/{user_id}/reservations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody<'a> {
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(borrow, default)]
    pub action: Option<Cow<'a, str>>,
    #[serde(default)]
    pub quantity: Option<u64>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// `POST /v1/reservations/{id}/capture`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody<'a> {
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub metadata: Option<&'a RawValue>,
}

/// `POST /v1/reservations/{id}/extend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    pub ttl_seconds: u64,
}

/// `POST /v1/reservations/{id}/release`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {}

/// `POST /v1/users/{user_id}/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody<'a> {
    pub amount: i64,
    #[serde(borrow)]
    pub reason: Cow<'a, str>,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
}

/// `PUT /v1/users/{user_id}/overdraft`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverdraftBody<'a> {
    pub overdraft_limit: i64,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
}

/// `PUT /v1/actions/{action}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody<'a> {
    pub cost: i64,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub description: Option<Cow<'a, str>>,
}

/// `PUT /v1/packages/{package_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageBody<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    pub credits: i64,
    pub price_minor: i64,
    #[serde(borrow)]
    pub price_currency: Cow<'a, str>,
    #[serde(borrow, default)]
    pub currency: Option<Cow<'a, str>>,
    #[serde(default)]
    pub active: Option<bool>,
}

/// `PUT /v1/tenants/{tenant_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantBody<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub default_currency: Option<Cow<'a, str>>,
    /// Where the tenant's application receives events; `""` stops them.
    #[serde(borrow, default)]
    pub webhook_url: Option<Cow<'a, str>>,
    /// The secret events are signed with (16 to 256 characters).
    #[serde(borrow, default)]
    pub webhook_secret: Option<Cow<'a, str>>,
}

/// An id rendered with a type prefix (`ent_42`, `rsv_42`) without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixedId(pub &'static str, pub u64);

impl Serialize for PrefixedId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}{}", self.0, self.1))
    }
}

/// Ledger entry ids.
pub const ENTRY_PREFIX: &str = "ent_";
/// Reservation ids.
pub const RESERVATION_PREFIX: &str = "rsv_";

/// Parses `rsv_<n>`.
pub fn parse_reservation_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix(RESERVATION_PREFIX)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A timestamp rendered as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_rfc3339_ms(self.0))
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Answer to a credit.
#[derive(Debug, Serialize)]
pub struct CreditAnswer {
    pub entry_id: PrefixedId,
    pub amount: i64,
    pub balance: i64,
    pub available: i64,
}

/// Answer to a debit (or a revoke, with `amount` instead of `charged`).
#[derive(Debug, Serialize)]
pub struct DebitAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_id: Option<PrefixedId>,
    pub charged: i64,
    pub balance: i64,
    pub available: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

/// Answer to a revoke.
#[derive(Debug, Serialize)]
pub struct RevokeAnswer {
    pub entry_id: PrefixedId,
    pub amount: i64,
    pub balance: i64,
    pub available: i64,
}

/// Answer to a reservation.
#[derive(Debug, Serialize)]
pub struct ReserveAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<PrefixedId>,
    pub amount: i64,
    pub expires_at: Timestamp,
    pub available: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

/// Answer to a capture.
#[derive(Debug, Serialize)]
pub struct CaptureAnswer {
    pub reservation_id: PrefixedId,
    pub entry_id: PrefixedId,
    pub charged: i64,
    pub released: i64,
    pub balance: i64,
    pub available: i64,
}

/// Answer to an extension.
#[derive(Debug, Serialize)]
pub struct ExtendAnswer {
    pub reservation_id: PrefixedId,
    pub expires_at: Timestamp,
}

/// Answer to a release.
#[derive(Debug, Serialize)]
pub struct ReleaseAnswer {
    pub reservation_id: PrefixedId,
    pub released: i64,
    pub available: i64,
}

/// One balance of a user.
#[derive(Debug, Serialize)]
pub struct BalanceJson {
    pub currency: String,
    pub balance: i64,
    pub reserved: i64,
    pub available: i64,
    pub overdraft_limit: i64,
}

impl From<&WalletView> for BalanceJson {
    fn from(wallet: &WalletView) -> BalanceJson {
        BalanceJson {
            currency: wallet.currency.to_string(),
            balance: wallet.balance,
            reserved: wallet.reserved,
            available: wallet.available,
            overdraft_limit: wallet.overdraft_limit,
        }
    }
}

/// `GET /v1/users/{user_id}/wallet`.
#[derive(Debug, Serialize)]
pub struct WalletJson {
    pub user_id: String,
    pub currency: String,
    pub balance: i64,
    pub reserved: i64,
    pub available: i64,
    pub overdraft_limit: i64,
    pub status: &'static str,
    pub auto_topup: Option<serde_json::Value>,
    pub balances: Vec<BalanceJson>,
}

/// A user and its wallets.
#[derive(Debug, Serialize)]
pub struct UserJson {
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub metadata: Option<Box<RawValue>>,
    pub wallet: WalletJson,
}

/// A catalogue action.
#[derive(Debug, Serialize)]
pub struct ActionJson {
    pub action: String,
    pub cost: i64,
    pub currency: String,
    pub description: Option<String>,
}

impl From<ActionView> for ActionJson {
    fn from(view: ActionView) -> ActionJson {
        ActionJson {
            action: view.action,
            cost: view.cost,
            currency: view.currency.to_string(),
            description: view.description,
        }
    }
}

/// A package.
#[derive(Debug, Serialize)]
pub struct PackageJson {
    pub package_id: String,
    pub name: String,
    pub credits: i64,
    pub currency: String,
    pub price_minor: i64,
    pub price_currency: String,
    pub active: bool,
}

impl From<PackageView> for PackageJson {
    fn from(view: PackageView) -> PackageJson {
        PackageJson {
            package_id: view.package_id,
            name: view.name,
            credits: view.credits,
            currency: view.currency.to_string(),
            price_minor: view.price_minor,
            price_currency: view.price_currency.to_string(),
            active: view.active,
        }
    }
}

/// A tenant.
#[derive(Debug, Serialize)]
pub struct TenantJson {
    pub tenant_id: String,
    pub name: Option<String>,
    pub default_currency: String,
    pub users: usize,
    /// Where events go (the secret is never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
}

impl From<TenantView> for TenantJson {
    fn from(view: TenantView) -> TenantJson {
        TenantJson {
            tenant_id: view.tenant_id,
            name: view.name,
            default_currency: view.default_currency.to_string(),
            users: view.users,
            webhook_url: None,
        }
    }
}
