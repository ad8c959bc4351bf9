//! The catalogue: actions (priced spends) and top-up packages.

use crate::engine::event::Event;
use crate::engine::state::Tenant;
use crate::engine::types::{
    check_amount, check_id, check_text, Currency, EngineError, Invalid, Lsn, Missing,
};
use crate::engine::{Context, Engine};

use super::PackageSpec;

impl Engine {
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
        tenant.check_currency(currency)?;
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
            return Err(EngineError::NotFound(Missing::Action));
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
        terms: &PackageSpec<'_>,
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
        tenant.check_currency(terms.currency)?;
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::PackagePut {
                tenant: &tenant.id,
                package,
                terms: terms.into(),
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
            return Err(EngineError::NotFound(Missing::Package));
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
            Event::ActionDeleted { action, .. } => (!catalogue.actions.contains_key(action))
                .then_some(EngineError::NotFound(Missing::Action)),
            Event::PackageDeleted { package, .. } => (!catalogue.packages.contains_key(package))
                .then_some(EngineError::NotFound(Missing::Package)),
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
}
