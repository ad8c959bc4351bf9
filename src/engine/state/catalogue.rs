//! A tenant's settings and catalogue (actions and top-up packages) and the tenant-level events
//! that change them.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use super::super::event::{Event, PackageRecord};
use super::super::types::{Currency, CurrencySpec, Lsn};
use super::{mismatch, Mismatch};

/// A catalogue action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Action {
    pub cost: i64,
    pub currency: Currency,
    pub description: Option<Box<str>>,
}

/// A top-up package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Package {
    pub name: Box<str>,
    pub credits: i64,
    pub currency: Currency,
    pub price_minor: i64,
    pub price_currency: Currency,
    pub active: bool,
    pub position: u32,
}

impl Package {
    pub fn from_record(record: &PackageRecord<'_>) -> Package {
        Package {
            name: record.name.into(),
            credits: record.credits,
            currency: record.currency,
            price_minor: record.price_minor,
            price_currency: record.price_currency,
            active: record.active,
            position: record.position,
        }
    }
}

/// A tenant's settings and catalogue: small, read often, changed rarely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Catalogue {
    pub last_lsn: Lsn,
    pub name: Option<Box<str>>,
    pub default_currency: Currency,
    /// The currencies the tenant defined; empty: only `default_currency`, with no decimals.
    pub currencies: Vec<CurrencySpec>,
    pub actions: BTreeMap<CompactString, Action>,
    pub packages: BTreeMap<CompactString, Package>,
    /// Where the tenant's application receives events, and the secret that signs them.
    pub webhook_url: Option<Box<str>>,
    pub webhook_secret: Option<Box<str>>,
    /// The origins the tenant's portal sessions may return to; empty: the server's default.
    pub portal_return_origins: Vec<Box<str>>,
}

impl Catalogue {
    /// A new tenant's catalogue, as its first settings record makes it.
    pub fn new(lsn: Lsn, name: Option<&str>, default_currency: Currency) -> Catalogue {
        Catalogue {
            last_lsn: lsn,
            name: name.map(Box::from),
            default_currency,
            currencies: Vec::new(),
            actions: BTreeMap::new(),
            packages: BTreeMap::new(),
            webhook_url: None,
            webhook_secret: None,
            portal_return_origins: Vec::new(),
        }
    }

    /// The tenant's currencies: those it defined, else its default one with no decimals.
    pub fn currencies(&self) -> Vec<CurrencySpec> {
        if self.currencies.is_empty() {
            vec![CurrencySpec {
                code: self.default_currency,
                decimals: 0,
            }]
        } else {
            self.currencies.clone()
        }
    }

    /// The tenant's definition of `currency`, if it has that currency.
    pub fn currency(&self, currency: Currency) -> Option<CurrencySpec> {
        if self.currencies.is_empty() {
            return (currency == self.default_currency).then_some(CurrencySpec {
                code: currency,
                decimals: 0,
            });
        }
        self.currencies
            .iter()
            .find(|defined| defined.code == currency)
            .copied()
    }

    /// Applies a tenant-level event recorded at `lsn`.
    pub fn apply(&mut self, lsn: Lsn, event: &Event<'_>) -> Result<(), Mismatch> {
        if lsn <= self.last_lsn {
            return Err(mismatch(
                "record is not newer than the tenant's last change",
            ));
        }
        match *event {
            Event::TenantUpserted { ref settings, .. } => {
                if settings.default_currency != self.default_currency {
                    return Err(mismatch("a tenant's default currency cannot change"));
                }
                let kept = self
                    .currencies
                    .iter()
                    .all(|defined| settings.currencies.contains(defined));
                if !kept {
                    return Err(mismatch("a tenant's currency was removed or changed"));
                }
                self.name = settings.name.map(Box::from);
                self.currencies.clone_from(&settings.currencies);
            }
            Event::ActionPut {
                action,
                cost,
                currency,
                description,
                ..
            } => {
                self.actions.insert(
                    action.into(),
                    Action {
                        cost,
                        currency,
                        description: description.map(Box::from),
                    },
                );
            }
            Event::ActionDeleted { action, .. } => {
                self.actions
                    .remove(action)
                    .ok_or_else(|| mismatch("deletion of a missing action"))?;
            }
            Event::PackagePut {
                package, ref terms, ..
            } => {
                self.packages
                    .insert(package.into(), Package::from_record(terms));
            }
            Event::PackageDeleted { package, .. } => {
                self.packages
                    .remove(package)
                    .ok_or_else(|| mismatch("deletion of a missing package"))?;
            }
            Event::TenantWebhookSet { url, secret, .. } => {
                self.webhook_url = url.map(Box::from);
                self.webhook_secret = secret.map(|secret| Box::from(secret.0));
            }
            Event::TenantPortalOriginsSet { ref origins, .. } => {
                self.portal_return_origins =
                    origins.iter().map(|origin| Box::from(*origin)).collect();
            }
            _ => return Err(mismatch("user-level event applied to a tenant")),
        }
        self.last_lsn = lsn;
        Ok(())
    }
}
