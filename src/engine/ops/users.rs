//! Users: creating them, their profile, and how far their wallets may go below zero.

use compact_str::CompactString;

use crate::engine::event::{Event, ProfileRecord, WalletRef};
use crate::engine::ops::{FieldChange, ProfileChange, ProfileUpdate};
use crate::engine::state::{Account, Tenant, Wallet};
use crate::engine::types::{
    check_email, check_id, check_metadata, check_text, Currency, EngineError, Invalid, Lsn, Missing,
};
use crate::engine::{Context, Engine};

impl Engine {
    /// Creates a user (with a wallet in the tenant's default currency) or updates its profile.
    /// Returns whether it was created and the LSN to await (an unchanged profile writes nothing and
    /// awaits the user's last change).
    pub fn upsert_user(
        &self,
        tenant: &Tenant,
        user: &str,
        profile: ProfileUpdate<'_>,
        context: &Context<'_>,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("user_id", user)?;
        let limits = &self.options.limits;
        check_text("email", profile.email, limits.max_text_bytes)?;
        check_text("name", profile.name, limits.max_text_bytes)?;
        check_metadata(profile.metadata, limits)?;
        let profile = ProfileRecord::from(profile);
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

    /// Changes a user's profile field by field (each kept, cleared or set; metadata perhaps merged
    /// into the stored document), creating the user if `create` says so, else 404 for a missing
    /// one. The fields are merged under the user's lock, so concurrent changes of different
    /// fields both stay. An e-mail address that is set must pass [`check_email`]. Returns whether
    /// the user was created and the LSN to await (an unchanged profile writes nothing).
    pub fn change_user(
        &self,
        tenant: &Tenant,
        user: &str,
        change: &ProfileChange<'_>,
        create: bool,
        context: &Context<'_>,
    ) -> Result<(bool, Lsn), EngineError> {
        check_id("user_id", user)?;
        let limits = &self.options.limits;
        if let FieldChange::Set(email) = change.email {
            check_text("email", Some(email), limits.max_text_bytes)?;
            check_email(email)?;
        }
        if let FieldChange::Set(name) = change.name {
            check_text("name", Some(name), limits.max_text_bytes)?;
        }
        if let FieldChange::Set(metadata) = change.metadata {
            check_metadata(Some(metadata), limits)?;
        }
        let now_ms = self.clock.now_ms();
        match tenant.users.entry(CompactString::new(user)) {
            dashmap::Entry::Occupied(mut entry) => {
                let account = entry.get_mut();
                let stored = account.profile();
                let field = |change: FieldChange<'_>, stored: Option<&str>| match change {
                    FieldChange::Keep => stored.map(str::to_owned),
                    FieldChange::Clear => None,
                    FieldChange::Set(value) => Some(value.to_owned()),
                };
                let email = field(change.email, stored.and_then(|p| p.email.as_deref()));
                let name = field(change.name, stored.and_then(|p| p.name.as_deref()));
                let stored_metadata = stored.and_then(|p| p.metadata.as_deref());
                let metadata = match (change.metadata, change.merge_metadata) {
                    (FieldChange::Set(patch), true) => {
                        Some(merge_metadata(stored_metadata, patch)?)
                    }
                    (other, _) => field(other, stored_metadata),
                };
                check_metadata(metadata.as_deref(), limits)?;
                let profile = ProfileRecord {
                    email: email.as_deref(),
                    name: name.as_deref(),
                    metadata: metadata.as_deref(),
                };
                let unchanged = match account.profile() {
                    Some(existing) => existing.matches(&profile),
                    None => email.is_none() && name.is_none() && metadata.is_none(),
                };
                if unchanged {
                    return Ok((false, account.last_lsn()));
                }
                let event = Event::UserUpserted {
                    tenant: &tenant.id,
                    user,
                    profile,
                    default_currency: tenant.default_currency,
                    meta: self.meta(context, now_ms, None),
                };
                let lsn = self.append(&event)?;
                if let Err(mismatch) = account.apply(lsn, &event) {
                    return Err(self.internal_error(lsn, &mismatch.0));
                }
                Ok((false, lsn))
            }
            dashmap::Entry::Vacant(_) if !create => Err(EngineError::NotFound(Missing::User)),
            dashmap::Entry::Vacant(entry) => {
                let set = |change: FieldChange<'_>| match change {
                    FieldChange::Set(value) => Some(value.to_owned()),
                    FieldChange::Keep | FieldChange::Clear => None,
                };
                let (email, name) = (set(change.email), set(change.name));
                let metadata = match (change.metadata, change.merge_metadata) {
                    (FieldChange::Set(patch), true) => Some(merge_metadata(None, patch)?),
                    (other, _) => set(other),
                };
                check_metadata(metadata.as_deref(), limits)?;
                let profile = ProfileRecord {
                    email: email.as_deref(),
                    name: name.as_deref(),
                    metadata: metadata.as_deref(),
                };
                let event = Event::UserUpserted {
                    tenant: &tenant.id,
                    user,
                    profile,
                    default_currency: tenant.default_currency,
                    meta: self.meta(context, now_ms, None),
                };
                let lsn = self.append(&event)?;
                let mut account = Account::new(tenant.default_currency, &profile);
                account.set_last_lsn(lsn);
                entry.insert(account);
                Ok((true, lsn))
            }
        }
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
        tenant.check_currency(currency)?;
        let now_ms = self.clock.now_ms();
        let mut account = tenant
            .lock_user(user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        self.expire_due_reservations(tenant, user, &mut account, now_ms)?;
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
}

/// The stored metadata document with `patch` merged into it as RFC 7396 (JSON Merge Patch)
/// says: members of an object patch replace (`null`: remove) those of the same name, nested
/// objects merging alike; a patch that is not an object replaces the document.
fn merge_metadata(stored: Option<&str>, patch: &str) -> Result<String, EngineError> {
    let unreadable = || EngineError::Invalid(Invalid::new("metadata", "must be JSON"));
    let patch: serde_json::Value = serde_json::from_str(patch).map_err(|_| unreadable())?;
    let mut document = match stored {
        Some(text) => serde_json::from_str(text).map_err(|_| unreadable())?,
        None => serde_json::Value::Null,
    };
    merge_patch(&mut document, &patch);
    serde_json::to_string(&document).map_err(|_| unreadable())
}

fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(members) = patch else {
        patch.clone_into(target);
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    if let serde_json::Value::Object(fields) = target {
        for (name, value) in members {
            if value.is_null() {
                fields.remove(name);
            } else {
                merge_patch(
                    fields
                        .entry(name.clone())
                        .or_insert(serde_json::Value::Null),
                    value,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::merge_metadata;

    #[test]
    fn metadata_merges_as_json_merge_patch() {
        let merged = |stored, patch| merge_metadata(stored, patch).unwrap();
        assert_eq!(
            merged(
                Some(r#"{"plan":"free","seats":2,"tags":{"a":1,"b":2}}"#),
                r#"{"plan":"pro","seats":null,"tags":{"b":3}}"#
            ),
            r#"{"plan":"pro","tags":{"a":1,"b":3}}"#
        );
        assert_eq!(
            merged(None, r#"{"a":{"b":null,"c":1}}"#),
            r#"{"a":{"c":1}}"#
        );
        assert_eq!(merged(Some(r#"{"a":1}"#), "[1,2]"), "[1,2]");
        assert_eq!(merged(Some("[1]"), r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
