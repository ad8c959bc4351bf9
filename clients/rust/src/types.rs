//! The bodies the client sends and the answers it reads. Answers ignore members they do not
//! know, so a newer server never breaks them; answers this crate does not model field by field
//! (reports, audit records, tenants, the catalogue) come back as [`serde_json::Value`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A wallet, in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Wallet {
    /// The user.
    pub user_id: String,
    /// The currency shown.
    pub currency: String,
    /// Balance.
    pub balance: i64,
    /// Held by open reservations.
    pub reserved: i64,
    /// Balance minus reserved.
    pub available: i64,
    /// How far available may go below zero.
    pub overdraft_limit: i64,
    /// What a spend may take now: available plus the overdraft limit.
    #[serde(default)]
    pub spendable: i64,
    /// `healthy`, `low` or `empty`.
    pub status: String,
    /// The auto top-up rule, if any.
    #[serde(default)]
    pub auto_topup: Option<Value>,
    /// Every currency the user holds.
    #[serde(default)]
    pub balances: Vec<Balance>,
    /// The pool the user draws on, if a member.
    #[serde(default)]
    pub pool: Option<Membership>,
}

/// One currency of a wallet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Balance {
    /// The currency.
    pub currency: String,
    /// Balance.
    pub balance: i64,
    /// Held by open reservations.
    pub reserved: i64,
    /// Balance minus reserved.
    pub available: i64,
    /// How far available may go below zero.
    #[serde(default)]
    pub overdraft_limit: i64,
    /// Available plus the overdraft limit.
    #[serde(default)]
    pub spendable: i64,
}

/// A user's membership of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Membership {
    /// The pool.
    pub pool_id: String,
    /// Its currency.
    #[serde(default)]
    pub currency: String,
    /// Credits the user may draw per UTC day (`None`: no cap).
    pub daily_cap: Option<i64>,
    /// Drawn today.
    pub drawn_today: i64,
    /// What the pool may still give this user today.
    pub available_to_user: i64,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    /// Its id.
    pub user_id: String,
    /// E-mail.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Metadata.
    pub metadata: Option<Value>,
    /// Its wallet in the tenant's default currency.
    pub wallet: Wallet,
}

/// A user's profile, for [`Users::put`](crate::Users::put), [`Users::update`](crate::Users::update)
/// and [`Users::sync`](crate::Users::sync). `None` leaves a field out of the body, and a field
/// left out is kept as it was.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UserProfile {
    /// E-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// A page of users.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UsersPage {
    /// The users, by id.
    pub users: Vec<User>,
    /// Where the next page starts, if there is one.
    pub next_cursor: Option<String>,
}

/// The answer to a credit, a debit or a revoke.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    /// The ledger entry (absent for dry runs).
    pub entry_id: Option<String>,
    /// Credits added (credits) or taken (revokes).
    #[serde(default)]
    pub amount: i64,
    /// Credits taken (debits).
    #[serde(default)]
    pub charged: i64,
    /// Of `charged`, what the user's own wallet gave.
    #[serde(default)]
    pub from_wallet: i64,
    /// Of `charged`, what the user's pool gave.
    #[serde(default)]
    pub from_pool: i64,
    /// Balance after.
    pub balance: i64,
    /// Available after.
    pub available: i64,
    /// Whether it was a dry run (nothing written).
    #[serde(default)]
    pub dry_run: bool,
    /// Whether this is the stored answer of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reservation {
    /// Its id (absent for dry runs).
    pub reservation_id: Option<String>,
    /// Credits held.
    pub amount: i64,
    /// Of `amount`, what the user's own wallet holds.
    #[serde(default)]
    pub from_wallet: i64,
    /// Of `amount`, what the user's pool holds.
    #[serde(default)]
    pub from_pool: i64,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Available after.
    pub available: i64,
    /// Whether it was a dry run (nothing held).
    #[serde(default)]
    pub dry_run: bool,
    /// Whether this is the stored answer of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// The answer to a capture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Capture {
    /// The reservation.
    #[serde(default)]
    pub reservation_id: String,
    /// The ledger entry.
    pub entry_id: String,
    /// Credits charged.
    pub charged: i64,
    /// Of `charged`, what the user's own wallet gave.
    #[serde(default)]
    pub from_wallet: i64,
    /// Of `charged`, what the user's pool gave.
    #[serde(default)]
    pub from_pool: i64,
    /// Credits returned to available.
    pub released: i64,
    /// Balance after.
    pub balance: i64,
    /// Available after.
    pub available: i64,
    /// Whether this is the stored answer of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// The answer to a release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Release {
    /// The reservation.
    pub reservation_id: String,
    /// Credits returned to available.
    pub released: i64,
    /// Available after.
    pub available: i64,
}

/// What to spend: an amount or a catalogue action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Debit {
    /// Credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Catalogue action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Units of the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The wallet's currency (default: the tenant's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The caller's own reference, kept on the entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Any JSON object, kept on the entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Check only: answer as if it ran, change nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Debit {
    /// A debit of `amount` credits.
    pub fn amount(amount: i64) -> Debit {
        Debit {
            amount: Some(amount),
            action: None,
            quantity: None,
            description: None,
            currency: None,
            reference: None,
            metadata: None,
            dry_run: false,
        }
    }

    /// A debit of `quantity` units of `action`.
    pub fn action(action: &str, quantity: u64) -> Debit {
        Debit {
            amount: None,
            action: Some(action.into()),
            quantity: Some(quantity),
            ..Debit::amount(0)
        }
    }

    /// The same debit as a dry run.
    pub fn dry_run(self) -> Debit {
        Debit {
            dry_run: true,
            ..self
        }
    }

    /// The same debit with a description.
    pub fn describe(self, description: &str) -> Debit {
        Debit {
            description: Some(description.into()),
            ..self
        }
    }
}

/// What to hold: an amount or a catalogue action, for how long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hold {
    /// Credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Catalogue action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Units of the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    /// The hold's lifetime in seconds (server default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// The wallet's currency (default: the tenant's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Any JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Check only: answer as if it held, hold nothing.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Hold {
    /// A hold of `amount` credits.
    pub fn amount(amount: i64) -> Hold {
        Hold {
            amount: Some(amount),
            action: None,
            quantity: None,
            ttl_seconds: None,
            currency: None,
            description: None,
            metadata: None,
            dry_run: false,
        }
    }

    /// A hold of `quantity` units of `action`.
    pub fn action(action: &str, quantity: u64) -> Hold {
        Hold {
            amount: None,
            action: Some(action.into()),
            quantity: Some(quantity),
            ..Hold::amount(0)
        }
    }

    /// The same hold with a lifetime of `seconds`.
    pub fn ttl_seconds(self, seconds: u64) -> Hold {
        Hold {
            ttl_seconds: Some(seconds),
            ..self
        }
    }
}

/// One item of a batch debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchDebit {
    /// The user.
    pub user_id: String,
    /// Credits.
    pub amount: i64,
    /// The item's own idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A credit: an amount, and what the ledger should say about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Credit {
    /// Credits to add.
    pub amount: i64,
    /// Why (admin keys must give one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The wallet's currency (default: the tenant's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The caller's own reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Any JSON object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

impl Credit {
    /// A credit of `amount`.
    pub fn amount(amount: i64) -> Credit {
        Credit {
            amount,
            reason: None,
            description: None,
            currency: None,
            reference: None,
            metadata: None,
        }
    }

    /// The same credit with a reason.
    pub fn reason(self, reason: &str) -> Credit {
        Credit {
            reason: Some(reason.into()),
            ..self
        }
    }
}

/// A page of ledger entries, newest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EntriesPage {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Where the next page starts, if there is one.
    pub next_cursor: Option<String>,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Entry {
    /// The id the write answered with.
    pub entry_id: String,
    /// `credit`, `debit`, `capture`, `revoke`, `topup`…
    pub kind: String,
    /// Credits, signed as the entry moved them.
    pub amount: i64,
    /// The currency.
    #[serde(default)]
    pub currency: String,
    /// The balance after the entry.
    pub balance_after: i64,
    /// The catalogue action, if any.
    #[serde(default)]
    pub action: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// The reference, if any.
    #[serde(default)]
    pub reference: Option<String>,
    /// The key's name, or the system.
    pub actor: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Filters of [`Wallets::entries`](crate::Wallets::entries) and the other listings: each pair
/// is a query parameter (`limit`, `cursor`, `kind`, `from`, …).
pub type Query<'a> = &'a [(&'a str, &'a str)];

/// The answer to `payments.initialize`: where to send the person to pay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Checkout {
    /// The gateway's (or the sandbox's) checkout page.
    pub checkout_url: String,
    /// The payment's reference.
    pub reference: String,
    /// Whether this is the stored answer of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// A payment, as `payments.get` and `payments.list` show it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Payment {
    /// Its reference.
    pub reference: String,
    /// The user it tops up; `None` when it was bought for a credit pool.
    #[serde(default)]
    pub user_id: Option<String>,
    /// The credit pool it tops up, when it was bought for one.
    #[serde(default)]
    pub pool_id: Option<String>,
    /// The package bought.
    #[serde(default)]
    pub package_id: Option<String>,
    /// Credits it gives.
    #[serde(default)]
    pub credits: i64,
    /// The price in minor units.
    #[serde(default)]
    pub amount_minor: i64,
    /// The price's currency.
    #[serde(default)]
    pub currency: String,
    /// `pending`, `succeeded`, `failed`, `abandoned`…
    pub status: String,
    /// The gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// The metadata given to `initialize`.
    #[serde(default)]
    pub metadata: Option<Value>,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it settled.
    #[serde(default)]
    pub settled_at: Option<String>,
    /// The credit's ledger entry, once paid.
    #[serde(default)]
    pub entry_id: Option<String>,
}

/// A page of a user's or a pool's payments, newest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaymentsPage {
    /// The payments.
    pub payments: Vec<Payment>,
    /// Where the next page starts, if there is one.
    pub next_cursor: Option<String>,
}

/// A signed, short-lived link to creditd's hosted page for one user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortalSession {
    /// Where to send the person.
    pub url: String,
    /// When the link stops working (RFC 3339).
    pub expires_at: String,
}

/// A short-lived token for `GET /v1/users/{id}/wallet/stream?token=…`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StreamToken {
    /// The token.
    pub token: String,
    /// When it stops working (RFC 3339).
    pub expires_at: String,
}

/// A credit pool.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pool {
    /// Its id.
    pub pool_id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its currency.
    pub currency: String,
    /// Balance.
    pub balance: i64,
    /// Held by members' open reservations.
    #[serde(default)]
    pub reserved: i64,
    /// Balance less reserved.
    #[serde(default)]
    pub available: i64,
    /// How many users draw on it.
    #[serde(default)]
    pub members: u64,
    /// Drawn today (UTC).
    #[serde(default)]
    pub drawn_today: i64,
}

/// Who the calling key is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Me {
    /// The key's name.
    pub name: String,
    /// `service`, `admin` or `platform`.
    pub role: String,
    /// The tenant it acts in.
    pub tenant: String,
}
