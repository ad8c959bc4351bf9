//! Tenants: creating and renaming them, listing them, and where their notifications go.

use std::sync::Arc;

use crate::engine::event::{Event, Secret, TenantSettingsRecord};
use crate::engine::state::{Catalogue, Tenant};
use crate::engine::types::{check_id, check_text, Currency, EngineError, Invalid, Lsn};
use crate::engine::{Context, Engine};

impl Engine {
    /// Creates or updates a tenant. Its default currency is fixed at creation.
    pub fn upsert_tenant(
        &self,
        id: &str,
        name: Option<&str>,
        default_currency: Option<Currency>,
        context: &Context<'_>,
    ) -> Result<(Arc<Tenant>, bool, Lsn), EngineError> {
        check_id("tenant_id", id)?;
        check_text("name", name, self.options.limits.max_text_bytes)?;
        let now_ms = self.clock.now_ms();
        let mut tenants = self.state.tenants.write();
        let existing = tenants.get(id).cloned();
        let currency = match (&existing, default_currency) {
            (Some(tenant), Some(currency)) if currency != tenant.default_currency => {
                return Err(EngineError::Conflict(
                    "a tenant's default currency cannot change",
                ));
            }
            (Some(tenant), _) => tenant.default_currency,
            (None, currency) => currency.unwrap_or(Currency::CREDITS),
        };
        let settings = TenantSettingsRecord {
            name,
            default_currency: currency,
        };
        let event = Event::TenantUpserted {
            tenant: id,
            settings,
            meta: self.meta(context, now_ms, None),
        };
        if let Some(tenant) = existing {
            let mut catalogue = tenant.catalogue.write();
            if catalogue.name.as_deref() == name {
                return Ok((Arc::clone(&tenant), false, catalogue.last_lsn));
            }
            let lsn = self.append(&event)?;
            if let Err(mismatch) = catalogue.apply(lsn, &event) {
                return Err(self.internal_error(lsn, &mismatch.0));
            }
            drop(catalogue);
            return Ok((tenant, false, lsn));
        }
        let lsn = self.append(&event)?;
        let catalogue = Catalogue {
            last_lsn: lsn,
            name: name.map(Box::from),
            default_currency: currency,
            actions: Default::default(),
            packages: Default::default(),
            webhook_url: None,
            webhook_secret: None,
        };
        let tenant = Arc::new(Tenant::new(id, catalogue, self.state.shards));
        tenants.insert(id.into(), Arc::clone(&tenant));
        Ok((tenant, true, lsn))
    }

    /// Every tenant, sorted by id.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        self.state.tenant_list()
    }

    /// Sets where the tenant's application receives events and the secret that signs them.
    pub fn set_tenant_webhook(
        &self,
        tenant: &Tenant,
        url: Option<&str>,
        secret: Option<&str>,
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        check_tenant_webhook(url, secret)?;
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::TenantWebhookSet {
                tenant: &tenant.id,
                url,
                secret: secret.map(Secret),
                meta,
            },
        )
    }

    /// The tenant's event endpoint and signing secret.
    pub fn tenant_webhook(&self, tenant: &Tenant) -> Option<(String, String)> {
        let catalogue = tenant.catalogue.read();
        Some((
            catalogue.webhook_url.as_deref()?.to_owned(),
            catalogue.webhook_secret.as_deref()?.to_owned(),
        ))
    }
}

/// An absolute `http://` or `https://` URL with a host, of at most 2048 characters, in plain
/// URI characters (no spaces or controls, ASCII or not).
pub(crate) fn is_http_url(url: &str) -> bool {
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    scheme_ok && uri.host().is_some_and(|host| !host.is_empty())
}

/// The checks [`Engine::set_tenant_webhook`] makes, for a caller that must know before it changes
/// anything else.
pub fn check_tenant_webhook(url: Option<&str>, secret: Option<&str>) -> Result<(), EngineError> {
    if url.is_some_and(|url| !is_http_url(url)) {
        return Err(EngineError::Invalid(Invalid::new(
            "webhook_url",
            "must be an absolute http(s) URL with a host, at most 2048 characters, without spaces",
        )));
    }
    if secret.is_some_and(|secret| secret.len() < 16 || secret.len() > 256) {
        return Err(EngineError::Invalid(Invalid::new(
            "webhook_secret",
            "must be 16 to 256 characters",
        )));
    }
    Ok(())
}
