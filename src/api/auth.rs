//! Bearer-key authentication and role checks. Each key belongs to one tenant; a platform key may
//! act in another tenant by naming it in `X-Tenant`. A key never reaches another tenant's users:
//! lookups happen inside the resolved tenant only, so a foreign id is simply absent (404).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use super::problem::Problem;
use crate::config::{ApiKey, Role};
use crate::engine::{Engine, Tenant};

/// A configured key names a tenant the engine does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant:?} of key {key:?} does not exist")]
pub struct UnknownTenant {
    /// The tenant named.
    pub tenant: String,
    /// The key's name.
    pub key: String,
}

/// A configured key, resolved.
#[derive(Debug, Clone)]
pub struct Key {
    /// Its name: the actor recorded on every change made with it.
    pub name: Arc<str>,
    /// What it may do.
    pub role: Role,
    /// Its own tenant.
    pub tenant: Arc<Tenant>,
}

/// Keys by secret.
#[derive(Debug, Default)]
pub struct KeyTable {
    keys: HashMap<Box<str>, Key, foldhash::fast::RandomState>,
}

impl KeyTable {
    /// Resolves the configured keys against the engine's tenants (which must exist).
    pub fn new(keys: &[ApiKey], engine: &Engine) -> Result<KeyTable, UnknownTenant> {
        let mut table = KeyTable::default();
        for key in keys {
            let tenant = engine.tenant(&key.tenant).ok_or_else(|| UnknownTenant {
                tenant: key.tenant.clone(),
                key: key.name.clone(),
            })?;
            let resolved = Key {
                name: Arc::from(key.name.as_str()),
                role: key.role,
                tenant,
            };
            table.keys.insert(key.secret.as_str().into(), resolved);
        }
        Ok(table)
    }

    /// The key a request authenticates with, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&Key, Problem> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("send Authorization: Bearer <secret>"))?;
        let secret = value
            .to_str()
            .ok()
            .and_then(|text| {
                text.strip_prefix("Bearer ")
                    .or_else(|| text.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be Bearer <secret>")
            })?;
        self.keys
            .get(secret)
            .ok_or_else(|| Problem::unauthorized("unknown API key"))
    }
}

/// The tenant a request acts in: the key's own, or for a platform key the one named in
/// `X-Tenant`. Another role naming a foreign tenant gets 403.
/// The key's own tenant is borrowed, not cloned: no shared reference count is touched per request.
pub fn tenant_of<'k>(
    key: &'k Key,
    headers: &HeaderMap,
    engine: &Engine,
) -> Result<Cow<'k, Arc<Tenant>>, Problem> {
    let Some(value) = headers.get("x-tenant") else {
        return Ok(Cow::Borrowed(&key.tenant));
    };
    let requested = value
        .to_str()
        .map_err(|_| Problem::malformed("X-Tenant is not valid text"))?;
    if requested == key.tenant.id() {
        return Ok(Cow::Borrowed(&key.tenant));
    }
    if key.role != Role::Platform {
        return Err(Problem::forbidden(
            "only platform keys may act in another tenant (X-Tenant)",
        ));
    }
    let tenant = engine
        .tenant(requested)
        .ok_or(crate::engine::types::EngineError::NotFound(
            crate::engine::types::Missing::Tenant,
        ))?;
    Ok(Cow::Owned(tenant))
}

/// 403 unless `role` is at least `needed`.
pub fn require(role: Role, needed: Role) -> Result<(), Problem> {
    if role >= needed {
        Ok(())
    } else {
        Err(Problem::forbidden(format!(
            "this needs a key with role {}",
            role_name(needed)
        )))
    }
}

/// The config name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Service => "service",
        Role::Admin => "admin",
        Role::Platform => "platform",
    }
}
