//! The engine's vocabulary: currencies, entry kinds, identifiers, limits and errors.
//!
//! Every error here is small and `Copy` so the hot path returns it without allocating.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wal::{AppendError, DurabilityError};

/// A log sequence number. Record LSNs start at 1; a record's LSN also names what it created: the
/// ledger entry id of a credit or debit and the id of a reservation.
pub type Lsn = u64;

/// A currency code: 1 to 16 characters of `[A-Za-z0-9_]`, stored inline and compared as bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 16]);

impl Currency {
    /// The default currency of every tenant unless its settings say otherwise.
    pub const CREDITS: Currency = Currency(*b"credits\0\0\0\0\0\0\0\0\0");

    /// Validates and builds a currency code.
    pub fn new(code: &str) -> Result<Currency, EngineError> {
        let bytes = code.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 16
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
        if !valid {
            return Err(EngineError::Invalid(Invalid::new(
                "currency",
                "must be 1 to 16 characters of A-Z, a-z, 0-9 and _",
            )));
        }
        let mut code_bytes = [0u8; 16];
        code_bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(Currency(code_bytes))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(16);
        // Only ASCII is ever stored, so this cannot fail; fall back to "" rather than panic.
        std::str::from_utf8(&self.0[..len]).unwrap_or("")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Currency, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a currency code")
            }
            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                Currency::new(code).map_err(|_| E::custom("invalid currency code"))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A currency a tenant defines: its code and how many decimals its minor unit has (`usd` with 2
/// counts cents; `credits` with 0 counts whole credits). Amounts stay integers in minor units
/// everywhere; the decimals only say how to show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CurrencySpec {
    /// The currency's code.
    pub code: Currency,
    /// Digits after the decimal point when an amount is shown, 0 to [`MAX_CURRENCY_DECIMALS`].
    pub decimals: u8,
}

/// The most decimals a currency may have: 10^18 minor units still fit an `i64`.
pub const MAX_CURRENCY_DECIMALS: u8 = 18;
/// The most currencies one tenant may define.
pub const MAX_TENANT_CURRENCIES: usize = 64;

/// What a wallet can still spend: what is available plus what its overdraft still allows, never
/// below zero (a wallet taken below its floor by a chargeback can spend nothing). The one place
/// this is computed: the wallet view, every 402 and its detail use it.
pub fn spendable(available: i64, overdraft_limit: i64) -> i64 {
    available.saturating_add(overdraft_limit).max(0)
}

/// Why credits were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// Given by the operator (welcome credits, goodwill).
    Grant,
    /// Bought through a payment.
    Topup,
    /// Returned after a charge.
    Refund,
    /// A correction.
    Adjustment,
}

impl CreditKind {
    /// The name used in the API and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            CreditKind::Grant => "grant",
            CreditKind::Topup => "topup",
            CreditKind::Refund => "refund",
            CreditKind::Adjustment => "adjustment",
        }
    }
}

/// Why credits were taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DebitKind {
    /// Spent on usage.
    Usage,
    /// Taken back by an administrator.
    Revoke,
    /// Taken back by an administrator whatever the wallet holds (a payment charged back by the
    /// payer's bank): the wallet may end below its floor, and later credits repay that first.
    Chargeback,
}

/// Why a reservation ended without a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// Released by the client.
    Released,
    /// Its time ran out.
    Expired,
}

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedAs {
    /// Charged.
    Captured,
    /// Released by the client.
    Released,
    /// Released because its time ran out.
    Expired,
}

impl From<ReleaseReason> for ClosedAs {
    fn from(reason: ReleaseReason) -> ClosedAs {
        match reason {
            ReleaseReason::Released => ClosedAs::Released,
            ReleaseReason::Expired => ClosedAs::Expired,
        }
    }
}

/// A digest of an idempotent request's payload, computed by the caller; two requests with the same
/// key must have the same fingerprint to count as the same request.
pub type Fingerprint = [u8; 16];

/// Limits on what one request may ask for. Every one has a default and is set in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest amount of one credit, debit or reservation (default 10^15).
    pub max_amount: i64,
    /// The largest quantity of one action debit (default 10^9).
    pub max_quantity: u64,
    /// The most open reservations one user may hold (default 1000).
    pub max_reservations_per_user: u32,
    /// Reservation lifetime when the request names none (default 300 s).
    pub default_reservation_ttl_seconds: u64,
    /// The longest reservation lifetime (default 7 days).
    pub max_reservation_ttl_seconds: u64,
    /// How long a closed reservation is remembered, so that late calls get 409 not 404 (default 1 h).
    pub closed_reservation_retention_seconds: u64,
    /// The most bytes of a description, name or e-mail (default 1024).
    pub max_text_bytes: u32,
    /// The most bytes of a metadata document (default 16 KiB).
    pub max_metadata_bytes: u32,
    /// The deepest nesting of arrays and objects in a metadata document (default 32; 1 to
    /// [`MAX_METADATA_DEPTH`]): `{}` is 1 deep, `{"a":[1]}` 2.
    pub max_metadata_depth: u32,
    /// Balance under which a wallet counts as low when it has no auto top-up rule (default 0: off).
    pub low_balance: i64,
    /// The most a service key may grant per currency per UTC day, in minor units (default
    /// 10 000; 0 forbids service keys to grant). Admin grants are not capped; they need a reason.
    pub service_key_grants_per_day: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_amount: 1_000_000_000_000_000,
            max_quantity: 1_000_000_000,
            max_reservations_per_user: 1000,
            default_reservation_ttl_seconds: 300,
            max_reservation_ttl_seconds: 7 * 24 * 3600,
            closed_reservation_retention_seconds: 3600,
            max_text_bytes: 1024,
            max_metadata_bytes: 16 * 1024,
            max_metadata_depth: 32,
            low_balance: 0,
            service_key_grants_per_day: 10_000,
        }
    }
}

/// The most bytes of an identifier (tenant, user, action, package).
pub const MAX_ID_BYTES: usize = 128;
/// The most bytes of an idempotency key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// What was wrong with a field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Invalid {
    /// Builds the description of an invalid field.
    pub const fn new(field: &'static str, reason: &'static str) -> Invalid {
        Invalid { field, reason }
    }
}

/// The numbers behind a refused spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// The wallet's currency.
    pub currency: Currency,
    /// The wallet's balance.
    pub balance: i64,
    /// Balance − reserved (below zero in an overdraft).
    pub available: i64,
    /// How far `available` may go below zero.
    pub overdraft_limit: i64,
    /// What could be spent: see [`spendable`].
    pub spendable: i64,
    /// What the request needed.
    pub required: i64,
    /// What the user's credit pool could still give it (its part of the pool's available
    /// credits within the member's daily cap), when the user draws on a pool in this currency.
    pub pool_available: Option<i64>,
}

impl Shortfall {
    /// The shortfall of a wallet asked for `required`.
    pub fn new(
        currency: Currency,
        balance: i64,
        available: i64,
        overdraft_limit: i64,
        required: i64,
    ) -> Shortfall {
        Shortfall {
            currency,
            balance,
            available,
            overdraft_limit,
            spendable: spendable(available, overdraft_limit),
            required,
            pool_available: None,
        }
    }

    /// The same shortfall of a pool member whose pool could still give it `pool_available`:
    /// that part counts in `spendable` too.
    pub fn with_pool(self, pool_available: i64) -> Shortfall {
        Shortfall {
            spendable: self.spendable.saturating_add(pool_available.max(0)),
            pool_available: Some(pool_available),
            ..self
        }
    }
}

/// The numbers behind a grant refused by a service key's daily cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantCap {
    /// The currency of the grant.
    pub currency: Currency,
    /// What the key may grant per UTC day (`limits.service_key_grants_per_day`).
    pub cap: i64,
    /// What it granted so far today.
    pub granted_today: i64,
    /// What the request asked for.
    pub requested: i64,
}

/// What an operation looked for and did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No such tenant.
    Tenant,
    /// No such user in this tenant.
    User,
    /// No such action in this tenant's catalogue.
    Action,
    /// No such package in this tenant.
    Package,
    /// No such reservation in this tenant.
    Reservation,
    /// The wallet has no automatic top-up rule.
    AutoTopup,
    /// No such credit pool in this tenant.
    Pool,
    /// The user draws on no credit pool.
    PoolMember,
}

impl Missing {
    /// What [`EngineError::NotFound`] says for this kind.
    pub fn message(self) -> &'static str {
        match self {
            Missing::Tenant => "tenant not found",
            Missing::User => "user not found",
            Missing::Action => "unknown action",
            Missing::Package => "package not found",
            Missing::Reservation => "reservation not found",
            Missing::AutoTopup => "no automatic top-up rule",
            Missing::Pool => "pool not found",
            Missing::PoolMember => "the user draws on no pool",
        }
    }
}

/// Why an operation was refused. Nothing was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No such thing: which kind says what was looked for.
    #[error("{}", .0.message())]
    NotFound(Missing),
    /// The reservation was captured, released or has expired.
    #[error("reservation is closed ({0:?})")]
    ReservationClosed(ClosedAs),
    /// The wallet cannot cover the spend.
    #[error("insufficient credits: {} can be spent, {} required", .0.spendable, .0.required)]
    InsufficientCredits(Shortfall),
    /// The tenant has no such currency.
    #[error("unknown currency {0}")]
    UnknownCurrency(Currency),
    /// A service key's grants today would pass its daily cap.
    #[error("grant cap reached: {} of {} granted today", .0.granted_today, .0.cap)]
    GrantCapReached(GrantCap),
    /// A field is missing, malformed or out of range.
    #[error("invalid {}: {}", .0.field, .0.reason)]
    Invalid(Invalid),
    /// The result would not fit in a 64-bit balance.
    #[error("amount out of range: the result would overflow")]
    Overflow,
    /// The change would leave the wallet's state inconsistent (such as an overdraft limit below the
    /// current debt).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// The idempotency key was used before with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    /// The idempotency key belongs to a request still being processed.
    #[error("idempotency key in flight")]
    IdempotencyKeyInFlight,
    /// The idempotency table is at its size limit.
    #[error("idempotency table full")]
    IdempotencyTableFull,
    /// The user holds the most open reservations allowed.
    #[error("too many open reservations")]
    TooManyReservations,
    /// The log refused the record.
    #[error("log unavailable: {0}")]
    Log(#[from] AppendError),
    /// The record was queued but will never be durable.
    #[error("log failure: {0}")]
    Durability(#[from] DurabilityError),
}

/// Checks an identifier: 1 to 128 bytes of `[A-Za-z0-9._:@+-]`.
pub fn check_id(field: &'static str, id: &str) -> Result<(), EngineError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'+' | b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(EngineError::Invalid(Invalid::new(
            field,
            "must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ + -",
        )))
    }
}

/// Checks an idempotency key: 1 to 255 bytes of visible ASCII.
pub fn check_idempotency_key(key: &str) -> Result<(), EngineError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES
        && key.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(EngineError::Invalid(Invalid::new(
            "idempotency_key",
            "must be 1 to 255 visible ASCII characters",
        )))
    }
}

/// What [`check_email`] asks of an address, as the API states it.
pub const EMAIL_RULE: &str =
    "must be an e-mail address: 3 to 254 characters with an @, no spaces or control characters";

/// Checks an e-mail address the way every payment gateway will need it: 3 to 254 characters
/// with an `@` and no whitespace or control characters, once surrounding whitespace is trimmed
/// (the trimmed address is what a gateway is sent). This is the one check: the profile
/// (`PUT /v1/users`) and `POST /v1/payments/initialize` both use it, so an address one accepts
/// the other cannot refuse.
pub fn check_email(email: &str) -> Result<(), EngineError> {
    let email = email.trim();
    let valid = (3..=254).contains(&email.len())
        && email.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(EngineError::Invalid(Invalid::new("email", EMAIL_RULE)))
    }
}

/// Checks an optional text field against a byte limit.
pub fn check_text(
    field: &'static str,
    text: Option<&str>,
    max_bytes: u32,
) -> Result<(), EngineError> {
    match text {
        Some(text) if text.len() > max_bytes as usize => {
            Err(EngineError::Invalid(Invalid::new(field, "too long")))
        }
        _ => Ok(()),
    }
}

/// The highest `limits.max_metadata_depth` the configuration accepts. Metadata goes back out
/// inside answers and events a few levels deep, and common JSON parsers stop at 128 levels
/// (serde_json) or not far above; 100 leaves room for the envelope.
pub const MAX_METADATA_DEPTH: u32 = 100;

/// Checks a metadata document: at most `limits.max_metadata_bytes` long and nested at most
/// `limits.max_metadata_depth` deep. The API takes metadata as raw JSON without building it
/// (serde_json's own depth limit does not apply to raw values), so 5 000 nested arrays would
/// otherwise be stored and handed to every client that reads the user or the entry.
pub fn check_metadata(metadata: Option<&str>, limits: &Limits) -> Result<(), EngineError> {
    check_text("metadata", metadata, limits.max_metadata_bytes)?;
    match metadata {
        Some(text) if nests_deeper_than(text, limits.max_metadata_depth) => {
            Err(EngineError::Invalid(Invalid::new(
                "metadata",
                "nests deeper than limits.max_metadata_depth",
            )))
        }
        _ => Ok(()),
    }
}

/// Whether the arrays and objects of a JSON text nest more than `max_depth` deep. Brackets in
/// strings do not count; the text is not otherwise checked (the API has parsed it already).
pub fn nests_deeper_than(json: &str, max_depth: u32) -> bool {
    let mut depth = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json.as_bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Checks an amount: `0 < amount <= max_amount`.
pub fn check_amount(field: &'static str, amount: i64, limits: &Limits) -> Result<(), EngineError> {
    if amount <= 0 {
        return Err(EngineError::Invalid(Invalid::new(
            field,
            "must be greater than zero",
        )));
    }
    if amount > limits.max_amount {
        return Err(EngineError::Invalid(Invalid::new(
            field,
            "exceeds limits.max_amount",
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_depth_counts_arrays_and_objects_outside_strings() {
        for (json, depth) in [
            ("1", 0),
            ("\"[[[\"", 0),
            ("{}", 1),
            ("[]", 1),
            ("{\"a\":[1,{\"b\":null}]}", 3),
            ("[\"]\",[\"\\\"[\"]]", 2),
            ("{\"k\\\\\":[[1]]}", 3),
        ] {
            assert!(!nests_deeper_than(json, depth), "{json} is {depth} deep");
            if depth > 0 {
                assert!(nests_deeper_than(json, depth - 1), "{json} is {depth} deep");
            }
        }
    }

    #[test]
    fn metadata_past_the_depth_limit_is_refused_naming_the_field() {
        let limits = Limits::default();
        let at_limit = format!("{}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(check_metadata(Some(&at_limit), &limits), Ok(()));
        // What a hostile client sent: 5 000 nested arrays, 10 000 bytes, under the size limit.
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert!(deep.len() < limits.max_metadata_bytes as usize);
        let refused = check_metadata(Some(&deep), &limits).unwrap_err();
        assert_eq!(
            refused,
            EngineError::Invalid(Invalid::new(
                "metadata",
                "nests deeper than limits.max_metadata_depth"
            ))
        );
        let one_too_deep = format!("{{\"a\":{at_limit}}}");
        assert!(check_metadata(Some(&one_too_deep), &limits).is_err());
        assert_eq!(check_metadata(None, &limits), Ok(()));
    }

    #[test]
    fn currency_codes() {
        assert_eq!(Currency::new("credits").unwrap(), Currency::CREDITS);
        assert_eq!(Currency::CREDITS.as_str(), "credits");
        assert_eq!(Currency::new("NGN").unwrap().as_str(), "NGN");
        assert_eq!(
            Currency::new("sixteen_chars_ok").unwrap().as_str(),
            "sixteen_chars_ok"
        );
        for bad in ["", "seventeen_chars_x", "with space", "naïve", "a-b"] {
            assert!(Currency::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn identifiers() {
        assert!(check_id("user_id", "user-42@example.com").is_ok());
        assert!(check_id("user_id", "").is_err());
        assert!(check_id("user_id", &"x".repeat(129)).is_err());
        assert!(check_id("user_id", "a/b").is_err());
        assert!(check_idempotency_key("9b2f-…").is_err());
        assert!(check_idempotency_key("9b2f-1").is_ok());
    }

    #[test]
    fn email_addresses() {
        for good in [
            "a@b",
            "ada@example.com",
            " ada@example.com\t",
            "ädä@exämple.com",
        ] {
            assert!(check_email(good).is_ok(), "{good:?} refused");
        }
        let long = format!("{}@example.com", "x".repeat(250));
        for bad in [
            "",
            "@",
            "ab",
            "not an address",
            "no-at-sign",
            "ada@exa mple.com",
            "ada@example.com\u{0}",
            "ada\u{7f}@example.com",
            "ada\u{85}@example.com",
            &long,
        ] {
            assert_eq!(
                check_email(bad),
                Err(EngineError::Invalid(Invalid::new("email", EMAIL_RULE))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn amounts() {
        let limits = Limits::default();
        assert!(check_amount("amount", 1, &limits).is_ok());
        assert!(check_amount("amount", 0, &limits).is_err());
        assert!(check_amount("amount", -5, &limits).is_err());
        assert!(check_amount("amount", limits.max_amount + 1, &limits).is_err());
    }
}

/// Why a payment was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaymentPurpose {
    /// A checkout the user started.
    Checkout,
    /// An automatic top-up charged to a saved payment method.
    AutoTopup,
}

/// How a payment failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decline {
    /// Worth retrying later (insufficient funds, the gateway unavailable).
    Soft,
    /// Not worth retrying (card expired, authorization invalid): disables an automatic top-up rule.
    Hard,
    /// Paid, but not the package's amount or currency: nothing is credited.
    Mismatch,
    /// The customer left the checkout without paying.
    Abandoned,
}

impl Decline {
    /// The name used in the API and in events to the tenant's application.
    pub fn as_str(self) -> &'static str {
        match self {
            Decline::Soft => "soft_decline",
            Decline::Hard => "hard_decline",
            Decline::Mismatch => "amount_mismatch",
            Decline::Abandoned => "abandoned",
        }
    }
}

/// What a change answered. Stored with its idempotency key and answered again on replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Credits added.
    Credit {
        /// Ledger entry id.
        entry_id: Lsn,
        /// Credits added.
        amount: i64,
        /// Balance after.
        balance: i64,
        /// Available after.
        available: i64,
    },
    /// Credits taken.
    Debit {
        /// Ledger entry id.
        entry_id: Lsn,
        /// Usage or revoke.
        kind: DebitKind,
        /// Credits taken.
        charged: i64,
        /// Of which the user's credit pool paid.
        from_pool: i64,
        /// Balance after.
        balance: i64,
        /// Available after.
        available: i64,
    },
    /// Credits reserved.
    Reserve {
        /// The reservation's id.
        reservation_id: Lsn,
        /// Credits held.
        amount: i64,
        /// Of which the user's credit pool holds.
        from_pool: i64,
        /// When it lapses, Unix milliseconds.
        expires_at_ms: i64,
        /// Available after.
        available: i64,
    },
    /// A reservation charged.
    Capture {
        /// Ledger entry id.
        entry_id: Lsn,
        /// Credits charged.
        charged: i64,
        /// Of which the user's credit pool paid.
        from_pool: i64,
        /// Credits returned to available.
        released: i64,
        /// Balance after.
        balance: i64,
        /// Available after.
        available: i64,
    },
    /// A reservation's expiry moved.
    Extend {
        /// The reservation's id.
        reservation_id: Lsn,
        /// The new expiry.
        expires_at_ms: i64,
    },
    /// A reservation released.
    Release {
        /// The reservation's id.
        reservation_id: Lsn,
        /// Credits returned to available.
        released: i64,
        /// Available after.
        available: i64,
    },
}
