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

    /// Sets the origins the tenant's portal sessions may return to (see
    /// [`check_portal_return_origins`]); an empty list gives the server's default back. An
    /// unchanged list writes nothing and returns the tenant's last change.
    pub fn set_tenant_portal_origins(
        &self,
        tenant: &Tenant,
        origins: &[&str],
        context: &Context<'_>,
    ) -> Result<Lsn, EngineError> {
        let origins = check_portal_return_origins(origins)?;
        {
            let catalogue = tenant.catalogue.read();
            let same = catalogue.portal_return_origins.len() == origins.len()
                && catalogue
                    .portal_return_origins
                    .iter()
                    .zip(&origins)
                    .all(|(kept, given)| **kept == **given);
            if same {
                return Ok(catalogue.last_lsn);
            }
        }
        let meta = self.meta(context, self.clock.now_ms(), None);
        self.change_catalogue(
            tenant,
            &Event::TenantPortalOriginsSet {
                tenant: &tenant.id,
                origins: origins.iter().map(String::as_str).collect(),
                meta,
            },
        )
    }

    /// The origins the tenant's portal sessions may return to; empty: the server's default.
    pub fn tenant_portal_origins(&self, tenant: &Tenant) -> Vec<String> {
        let catalogue = tenant.catalogue.read();
        catalogue
            .portal_return_origins
            .iter()
            .map(ToString::to_string)
            .collect()
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

/// The most origins a tenant's portal sessions may return to.
pub const MAX_PORTAL_RETURN_ORIGINS: usize = 16;

/// Checks the origins a tenant's portal sessions may return to and returns them in their one
/// form (`scheme://host[:port]`, lower case, without a trailing `/`), each once, in the order
/// given: at most [`MAX_PORTAL_RETURN_ORIGINS`], each an absolute `http` or `https` origin with a
/// host and nothing after it (no path, query or fragment, no user information). The refusal
/// names the first origin that is not one.
pub fn check_portal_return_origins(origins: &[&str]) -> Result<Vec<String>, EngineError> {
    if origins.len() > MAX_PORTAL_RETURN_ORIGINS {
        return Err(EngineError::Invalid(Invalid::new(
            "portal_return_origins",
            "must hold at most 16 origins",
        )));
    }
    let mut checked: Vec<String> = Vec::with_capacity(origins.len());
    for origin in origins {
        let normal = normal_portal_origin(origin).ok_or(EngineError::Invalid(Invalid::new(
            "portal_return_origins",
            "each must be an absolute http(s) origin such as \"https://app.example.com\", with no \
             path, query or fragment",
        )))?;
        if !checked.contains(&normal) {
            checked.push(normal);
        }
    }
    Ok(checked)
}

/// `scheme://host[:port]` in lower case, if `origin` is an http(s) origin and nothing more (a
/// trailing `/` is allowed and dropped).
pub fn normal_portal_origin(origin: &str) -> Option<String> {
    let trimmed = origin.strip_suffix('/').unwrap_or(origin);
    if !is_http_url(trimmed) || trimmed.contains(['?', '#', '@']) {
        return None;
    }
    let uri = trimmed.parse::<http::Uri>().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?.as_str();
    let rest = &trimmed[scheme.len() + 3..];
    // Nothing after the authority: no path (the URI parser lets `/` through as a path).
    (rest == authority
        && uri
            .path_and_query()
            .is_none_or(|p| p.as_str().is_empty() || p.as_str() == "/"))
    .then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
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
