//! Wire types and conversions more than one route file uses. Requests borrow their strings from
//! the body bytes, reject unknown fields, so a misspelt field (`"ammount"`) is an error, not a
//! silent default, and must be JSON objects ([`Object`]): serde alone would also fill a struct
//! from an array, by position. The bodies and answers of one route live in its file under
//! `routes/`. Field docs live in `docs/openapi.yaml`.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::problem::Problem;
use crate::engine::payments::RuleView;
use crate::engine::types::Currency;
use crate::engine::Spend;
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
pub(crate) fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    let items = Vec::<Object<T>>::deserialize(deserializer)?;
    Ok(items.into_iter().map(|Object(item)| item).collect())
}

/// An optional list of [`Object`]s.
pub(crate) fn objects_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Vec<T>>, D::Error> {
    let items = Option::<Vec<Object<T>>>::deserialize(deserializer)?;
    Ok(items.map(|items| items.into_iter().map(|Object(item)| item).collect()))
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

/// A timestamp rendered as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_rfc3339_ms(self.0))
    }
}

/// Whether a flag is off, for `skip_serializing_if`.
pub(crate) fn is_false(value: &bool) -> bool {
    !*value
}

/// An optional currency code of a body, checked.
pub(crate) fn currency(text: Option<&Cow<'_, str>>) -> Result<Option<Currency>, Problem> {
    text.map(|code| Currency::new(code))
        .transpose()
        .map_err(Problem::from)
}

/// A body's `metadata` as JSON text; `null` counts as absent.
pub(crate) fn metadata(raw: Option<&RawValue>) -> Option<&str> {
    raw.map(RawValue::get).filter(|text| *text != "null")
}

/// What a debit or reservation spends: exactly one of an amount or an action (with a quantity).
pub(crate) fn spend<'a>(
    amount: Option<i64>,
    action: Option<&'a Cow<'a, str>>,
    quantity: Option<u64>,
) -> Result<Spend<'a>, Problem> {
    match (amount, action) {
        (Some(amount), None) if quantity.is_none() => Ok(Spend::Amount(amount)),
        (None, Some(action)) => Ok(Spend::Action {
            name: action,
            quantity: quantity.unwrap_or(1),
        }),
        (Some(_), None) => Err(Problem::invalid(
            "quantity goes with action, not with amount",
        )),
        _ => Err(Problem::invalid("give exactly one of amount or action")),
    }
}

/// The API's view of a rule.
pub fn rule_json(rule: &RuleView) -> serde_json::Value {
    serde_json::json!({
        "state": rule.state(),
        "enabled": rule.enabled,
        "threshold": rule.threshold,
        "package_id": rule.package,
        "payment_method": rule.payment_method,
        "max_per_day": rule.max_per_day,
        "currency": rule.currency.as_str(),
        "disabled_reason": rule.disabled_reason,
        "attempts_today": rule.attempts_today,
        "consecutive_failures": rule.consecutive_failures,
        "pending_reference": rule.pending,
    })
}
