//! The tenants routes (platform keys): list, read, create or update a tenant, with where its
//! notifications go.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::api::call::{ok, Answer, Call};
use crate::api::dto::currency;
use crate::api::problem::Problem;
use crate::api::request::parse_json_or_empty;
use crate::api::response::json_response;
use crate::engine::types::{EngineError, Missing};
use crate::engine::{Tenant, TenantView};

/// `PUT /v1/tenants/{tenant_id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    default_currency: Option<Cow<'a, str>>,
    /// Where the tenant's application receives events; `""` stops them.
    #[serde(borrow, default)]
    webhook_url: Option<Cow<'a, str>>,
    /// The secret events are signed with (16 to 256 characters).
    #[serde(borrow, default)]
    webhook_secret: Option<Cow<'a, str>>,
}

/// A tenant.
#[derive(Debug, Serialize)]
struct TenantJson {
    tenant_id: String,
    name: Option<String>,
    default_currency: String,
    users: usize,
    /// Where events go (the secret is never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
}

impl From<TenantView> for TenantJson {
    fn from(view: TenantView) -> TenantJson {
        TenantJson {
            tenant_id: view.tenant_id,
            name: view.name,
            default_currency: view.default_currency.to_string(),
            users: view.users,
            webhook_url: None,
        }
    }
}

/// `GET /v1/tenants` (platform).
pub async fn list_tenants(call: &Call<'_>) -> Answer {
    let tenants: Vec<TenantJson> = call
        .state
        .engine
        .tenant_views()
        .into_iter()
        .map(|view| {
            let tenant = call.state.engine.tenant(&view.tenant_id);
            tenant_json(call, view, tenant.as_deref())
        })
        .collect();
    ok(&serde_json::json!({ "tenants": tenants }))
}

/// `GET /v1/tenants/{tenant_id}` (platform).
pub async fn get_tenant(call: &Call<'_>) -> Answer {
    let id = &*call.param;
    let tenant = call
        .state
        .engine
        .tenant(id)
        .ok_or(EngineError::NotFound(Missing::Tenant))?;
    ok(&tenant_json(call, tenant.view(), Some(&tenant)))
}

/// A tenant as the API shows it: its view and where its events go.
fn tenant_json(call: &Call<'_>, view: TenantView, tenant: Option<&Tenant>) -> TenantJson {
    let mut json = TenantJson::from(view);
    json.webhook_url = tenant
        .and_then(|tenant| call.state.engine.tenant_webhook(tenant))
        .map(|(url, _)| url);
    json
}

/// `PUT /v1/tenants/{tenant_id}` (platform).
pub async fn put_tenant(call: &Call<'_>) -> Answer {
    let id = &*call.param;
    let body: TenantBody = parse_json_or_empty(&call.body)?;
    let default_currency = currency(body.default_currency.as_ref())?;
    // Every check before the first change: a refused request changes nothing.
    let webhook = match (body.webhook_url.as_deref(), body.webhook_secret.as_deref()) {
        (None, None) => None,
        (Some(""), _) => Some((None, None)),
        (Some(url), Some(secret)) => {
            crate::engine::check_tenant_webhook(Some(url), Some(secret))?;
            Some((Some(url), Some(secret)))
        }
        _ => {
            return Err(
                Problem::invalid("webhook_url and webhook_secret go together")
                    .with("field", "webhook_secret"),
            )
        }
    };
    let (tenant, created, lsn) = call.state.engine.upsert_tenant(
        id,
        body.name.as_deref(),
        default_currency,
        &call.context(None),
    )?;
    let mut last = lsn;
    if let Some((url, secret)) = webhook {
        last = call
            .state
            .engine
            .set_tenant_webhook(&tenant, url, secret, &call.context(None))?;
    }
    call.durable(last.max(lsn)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let json = tenant_json(call, tenant.view(), Some(&tenant));
    Ok(json_response(status, &json))
}
