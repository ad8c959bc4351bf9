//! Users: creating them, their profile, and how far their wallets may go below zero.

use compact_str::CompactString;

use crate::engine::event::{Event, ProfileRecord, WalletRef};
use crate::engine::ops::ProfileUpdate;
use crate::engine::state::{Account, Tenant, Wallet};
use crate::engine::types::{
    check_id, check_metadata, check_text, Currency, EngineError, Invalid, Lsn, Missing,
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
