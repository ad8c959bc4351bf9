//! Checkout: a payment the user starts for a package, and the gateway page it is sent to.

use crate::engine::event::{Event, Meta, PaymentTerms, WalletRef};
use crate::engine::state::Tenant;
use crate::engine::types::{
    check_id, check_metadata, Currency, EngineError, Invalid, Limits, Lsn, Missing, PaymentPurpose,
};
use crate::engine::{Context, Engine};

use super::{check_reference, PaymentView};

/// Start a checkout for a package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutRequest<'a> {
    /// The paying user.
    pub user: &'a str,
    /// The package bought.
    pub package: &'a str,
    /// creditd's reference for it (see [`super::new_reference`]).
    pub reference: &'a str,
    /// The gateway that takes the payment.
    pub gateway: &'a str,
    /// The caller's metadata: a JSON object as text, within `limits.max_metadata_bytes` and
    /// `limits.max_metadata_depth`. Kept with the payment and carried in the tenant's `topup.*`
    /// notifications.
    pub metadata: Option<&'a str>,
}

/// Start a checkout for a package bought for a credit pool: its credits go to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolCheckoutRequest<'a> {
    /// The pool credited.
    pub pool: &'a str,
    /// The package bought; its credits must be in the pool's currency.
    pub package: &'a str,
    /// creditd's reference for it (see [`super::new_reference`]).
    pub reference: &'a str,
    /// The gateway that takes the payment.
    pub gateway: &'a str,
    /// The caller's metadata, as for [`CheckoutRequest::metadata`].
    pub metadata: Option<&'a str>,
}

impl Engine {
    /// Records a checkout: the reference, the user, the package's credits and price at this moment.
    /// The gateway is called after this record is durable.
    pub fn start_checkout(
        &self,
        tenant: &Tenant,
        request: &CheckoutRequest<'_>,
        context: &Context<'_>,
    ) -> Result<(PaymentView, Lsn), EngineError> {
        check_id("user_id", request.user)?;
        check_id("package_id", request.package)?;
        check_reference(request.reference)?;
        check_payment_metadata(request.metadata, &self.options.limits)?;
        let (terms, currency) = package_terms(tenant, request.package)?;
        let mut account = tenant
            .users
            .get_mut(request.user)
            .ok_or(EngineError::NotFound(Missing::User))?;
        // Claimed before the map is checked, released after the record is applied: a second
        // request for the reference (another user's, under another lock) sees one or the other.
        let _claim = self
            .claim_reference(request.reference)
            .ok_or(EngineError::Conflict(
                "this payment reference is being issued",
            ))?;
        if self.state.payments.contains_key(request.reference) {
            return Err(EngineError::Conflict(
                "this payment reference is already in use",
            ));
        }
        let event = Event::PaymentInitialized {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: request.user,
                currency,
            },
            reference: request.reference,
            terms,
            gateway: request.gateway,
            purpose: PaymentPurpose::Checkout,
            meta: Meta {
                metadata: request.metadata,
                ..self.meta(context, self.clock.now_ms(), None)
            },
        };
        let lsn = self.commit_event(tenant, &mut account, &event)?;
        drop(account);
        let view = self
            .payment(request.reference)
            .ok_or(EngineError::Conflict("payment vanished"))?;
        Ok((view, lsn))
    }

    /// Records a checkout for a pool: the reference, the pool, the package's credits and price at
    /// this moment, under the pool's lock. A package whose credits are in another currency than
    /// the pool's is refused. The gateway is called after this record is durable.
    pub fn start_pool_checkout(
        &self,
        tenant: &Tenant,
        request: &PoolCheckoutRequest<'_>,
        context: &Context<'_>,
    ) -> Result<(PaymentView, Lsn), EngineError> {
        check_id("pool_id", request.pool)?;
        check_id("package_id", request.package)?;
        check_reference(request.reference)?;
        check_payment_metadata(request.metadata, &self.options.limits)?;
        let (terms, currency) = package_terms(tenant, request.package)?;
        let mut guard = tenant
            .lock_pool(request.pool)
            .ok_or(EngineError::NotFound(Missing::Pool))?;
        let (id, pool) = guard.split();
        if pool.currency != currency {
            return Err(EngineError::Invalid(Invalid::new(
                "package_id",
                "the package's credits are in another currency than the pool's",
            )));
        }
        // As for a user's checkout: one request issues a reference at a time.
        let _claim = self
            .claim_reference(request.reference)
            .ok_or(EngineError::Conflict(
                "this payment reference is being issued",
            ))?;
        if self.state.payments.contains_key(request.reference) {
            return Err(EngineError::Conflict(
                "this payment reference is already in use",
            ));
        }
        let event = Event::PoolPaymentInitialized {
            tenant: &tenant.id,
            pool: id,
            currency,
            reference: request.reference,
            terms,
            gateway: request.gateway,
            meta: Meta {
                metadata: request.metadata,
                ..self.meta(context, self.clock.now_ms(), None)
            },
        };
        let lsn = self.commit_pool_payment(pool, &event)?;
        drop(guard);
        let view = self
            .payment(request.reference)
            .ok_or(EngineError::Conflict("payment vanished"))?;
        Ok((view, lsn))
    }

    /// Records the gateway's checkout page of a pending payment, so a replayed `initialize` answers
    /// the same page.
    pub fn open_checkout(&self, reference: &str, checkout_url: &str) -> Result<Lsn, EngineError> {
        if checkout_url.is_empty() || checkout_url.len() > 2048 {
            return Err(EngineError::Invalid(Invalid::new(
                "checkout_url",
                "must be 1 to 2048 characters",
            )));
        }
        let (tenant, user, pool, currency) = {
            let entry = self
                .state
                .payments
                .get(reference)
                .ok_or(EngineError::Conflict("unknown payment"))?;
            (
                entry.tenant.clone(),
                entry.user.clone(),
                entry.pool.clone(),
                entry.currency,
            )
        };
        let tenant = self
            .state
            .tenant(&tenant)
            .ok_or(EngineError::NotFound(Missing::Tenant))?;
        if let Some(pool) = pool {
            let mut guard = tenant
                .lock_pool(&pool)
                .ok_or(EngineError::NotFound(Missing::Pool))?;
            let (id, pool) = guard.split();
            let event = Event::PoolPaymentCheckoutOpened {
                tenant: &tenant.id,
                pool: id,
                reference,
                checkout_url,
                meta: Meta::system(self.clock.now_ms()),
            };
            return self.commit_pool_payment(pool, &event);
        }
        let mut account = tenant
            .users
            .get_mut(user.as_str())
            .ok_or(EngineError::NotFound(Missing::User))?;
        let event = Event::PaymentCheckoutOpened {
            wallet: WalletRef {
                tenant: &tenant.id,
                user: &user,
                currency,
            },
            reference,
            checkout_url,
            meta: Meta::system(self.clock.now_ms()),
        };
        self.commit_event(&tenant, &mut account, &event)
    }
}

/// What a payment for the active package `package` buys, as of now, and the currency of its
/// credits. The catalogue's lock is taken and let go here, before any user's or pool's.
fn package_terms<'a>(
    tenant: &Tenant,
    package: &'a str,
) -> Result<(PaymentTerms<'a>, Currency), EngineError> {
    let catalogue = tenant.catalogue.read();
    let found = catalogue
        .packages
        .get(package)
        .filter(|p| p.active)
        .ok_or(EngineError::NotFound(Missing::Package))?;
    let terms = PaymentTerms {
        package,
        credits: found.credits,
        amount_minor: found.price_minor,
        price_currency: found.price_currency,
    };
    Ok((terms, found.currency))
}

/// Checks a payment's metadata: what [`check_metadata`] checks of any metadata, and that it is a
/// JSON object, since it goes out as the `metadata` member of answers and notifications that
/// tenants' applications read as one.
fn check_payment_metadata(metadata: Option<&str>, limits: &Limits) -> Result<(), EngineError> {
    let Some(text) = metadata else {
        return Ok(());
    };
    check_metadata(metadata, limits)?;
    // The depth is bounded above, so parsing cannot recurse without bound.
    let object = text.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
    if object {
        Ok(())
    } else {
        Err(EngineError::Invalid(Invalid::new(
            "metadata",
            "must be a JSON object",
        )))
    }
}
