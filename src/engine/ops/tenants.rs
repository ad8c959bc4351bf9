//! Tenants: creating and renaming them, listing them, and where their notifications go.

use std::sync::Arc;

use crate::engine::event::{Event, Secret, TenantSettingsRecord};
use crate::engine::state::{Catalogue, Tenant};
use crate::engine::types::{
    check_id, check_text, Currency, CurrencySpec, EngineError, Invalid, Lsn, MAX_CURRENCY_DECIMALS,
    MAX_TENANT_CURRENCIES,
};
use crate::engine::{Context, Engine};

/// A tenant's settings as a request creates or changes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantSpec<'a> {
    /// Display name; replaces the stored one (none clears it).
    pub name: Option<&'a str>,
    /// The currency of new users' wallets: fixed at creation (`credits` when none is given).
    pub default_currency: Option<Currency>,
    /// The currencies the tenant has, with their decimals; none leaves them as they are. The
    /// list must hold the default currency, and every currency defined before with the same
    /// decimals: currencies are added, never removed or rescaled.
    pub currencies: Option<&'a [CurrencySpec]>,
}

impl Engine {
    /// Creates or updates a tenant's name. Its default currency is fixed at creation.
    pub fn upsert_tenant(
        &self,
        id: &str,
        name: Option<&str>,
        default_currency: Option<Currency>,
        context: &Context<'_>,
    ) -> Result<(Arc<Tenant>, bool, Lsn), EngineError> {
        let spec = TenantSpec {
            name,
            default_currency,
            currencies: None,
        };
        self.put_tenant(id, &spec, context)
    }

    /// Creates or updates a tenant: its name and the currencies it has, in one record. Returns
    /// the tenant, whether it was created, and the LSN to await (an unchanged tenant writes
    /// nothing and awaits its last change).
    pub fn put_tenant(
        &self,
        id: &str,
        spec: &TenantSpec<'_>,
        context: &Context<'_>,
    ) -> Result<(Arc<Tenant>, bool, Lsn), EngineError> {
        check_id("tenant_id", id)?;
        check_text("name", spec.name, self.options.limits.max_text_bytes)?;
        let now_ms = self.clock.now_ms();
        let mut tenants = self.state.tenants.write();
        let existing = tenants.get(id).cloned();
        let currency = match (&existing, spec.default_currency) {
            (Some(tenant), Some(currency)) if currency != tenant.default_currency => {
                return Err(EngineError::Conflict(
                    "a tenant's default currency cannot change",
                ));
            }
            (Some(tenant), _) => tenant.default_currency,
            (None, currency) => currency.unwrap_or(Currency::CREDITS),
        };
        if let Some(currencies) = spec.currencies {
            check_currencies(currencies, currency)?;
        }
        let Some(tenant) = existing else {
            let currencies = spec.currencies.map_or_else(Vec::new, <[_]>::to_vec);
            let event = Event::TenantUpserted {
                tenant: id,
                settings: TenantSettingsRecord {
                    name: spec.name,
                    default_currency: currency,
                    currencies,
                },
                meta: self.meta(context, now_ms, None),
            };
            let lsn = self.append(&event)?;
            let mut catalogue = Catalogue::new(lsn, spec.name, currency);
            if let Event::TenantUpserted { settings, .. } = event {
                catalogue.currencies = settings.currencies;
            }
            let tenant = Arc::new(Tenant::new(id, catalogue, self.state.shards));
            tenants.insert(id.into(), Arc::clone(&tenant));
            return Ok((tenant, true, lsn));
        };
        let mut catalogue = tenant.catalogue.write();
        let currencies = match spec.currencies {
            Some(currencies) => {
                let kept = catalogue
                    .currencies
                    .iter()
                    .all(|defined| currencies.contains(defined));
                if !kept {
                    return Err(EngineError::Conflict(
                        "a currency cannot be removed, nor its decimals changed, once defined",
                    ));
                }
                currencies.to_vec()
            }
            None => catalogue.currencies.clone(),
        };
        let same_currencies = currencies.len() == catalogue.currencies.len()
            && currencies.iter().all(|c| catalogue.currencies.contains(c));
        if catalogue.name.as_deref() == spec.name && same_currencies {
            return Ok((Arc::clone(&tenant), false, catalogue.last_lsn));
        }
        let event = Event::TenantUpserted {
            tenant: id,
            settings: TenantSettingsRecord {
                name: spec.name,
                default_currency: currency,
                currencies,
            },
            meta: self.meta(context, now_ms, None),
        };
        let lsn = self.append(&event)?;
        if let Err(mismatch) = catalogue.apply(lsn, &event) {
            return Err(self.internal_error(lsn, &mismatch.0));
        }
        drop(catalogue);
        Ok((tenant, false, lsn))
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

/// Checks a tenant's list of currencies: 1 to [`MAX_TENANT_CURRENCIES`] distinct codes with 0 to
/// [`MAX_CURRENCY_DECIMALS`] decimals, among them the tenant's default currency.
pub fn check_currencies(
    currencies: &[CurrencySpec],
    default_currency: Currency,
) -> Result<(), EngineError> {
    if currencies.is_empty() || currencies.len() > MAX_TENANT_CURRENCIES {
        return Err(EngineError::Invalid(Invalid::new(
            "currencies",
            "must hold 1 to 64 currencies",
        )));
    }
    if currencies
        .iter()
        .any(|c| c.decimals > MAX_CURRENCY_DECIMALS)
    {
        return Err(EngineError::Invalid(Invalid::new(
            "currencies",
            "decimals must be 0 to 18",
        )));
    }
    for (index, currency) in currencies.iter().enumerate() {
        if currencies[..index].iter().any(|c| c.code == currency.code) {
            return Err(EngineError::Invalid(Invalid::new(
                "currencies",
                "names a currency twice",
            )));
        }
    }
    if !currencies.iter().any(|c| c.code == default_currency) {
        return Err(EngineError::Invalid(Invalid::new(
            "currencies",
            "must include the tenant's default currency",
        )));
    }
    Ok(())
}
