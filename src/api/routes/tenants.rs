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
use crate::engine::types::{Currency, CurrencySpec, EngineError, Missing};
use crate::engine::{
    normal_portal_origin, Tenant, TenantSpec, TenantView, MAX_PORTAL_RETURN_ORIGINS,
};

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
    /// Every currency the tenant has, with its decimals; absent leaves them as they are.
    #[serde(default, deserialize_with = "crate::api::dto::objects_option")]
    currencies: Option<Vec<CurrencyBody<'a>>>,
    /// The origins its portal sessions may return to (at most 16); `[]` gives the server's
    /// `streams.portal_return_origins` back; absent leaves them as they are.
    #[serde(borrow, default)]
    portal_return_origins: Option<Vec<Cow<'a, str>>>,
}

/// One currency of `PUT /v1/tenants/{tenant_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CurrencyBody<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
    decimals: u8,
}

/// A currency as a tenant shows it.
#[derive(Debug, Serialize)]
struct CurrencyJson {
    code: String,
    decimals: u8,
}

/// A tenant.
#[derive(Debug, Serialize)]
struct TenantJson {
    tenant_id: String,
    name: Option<String>,
    default_currency: String,
    /// Its currencies; its default one with no decimals if it never defined any.
    currencies: Vec<CurrencyJson>,
    /// Whether it defined them (`PUT` with `currencies`).
    currencies_defined: bool,
    users: usize,
    /// Where events go (the secret is never shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<String>,
    /// The origins its portal sessions may return to; empty: the server's default.
    portal_return_origins: Vec<String>,
}

impl From<TenantView> for TenantJson {
    fn from(view: TenantView) -> TenantJson {
        TenantJson {
            tenant_id: view.tenant_id,
            name: view.name,
            default_currency: view.default_currency.to_string(),
            currencies: view
                .currencies
                .iter()
                .map(|currency| CurrencyJson {
                    code: currency.code.to_string(),
                    decimals: currency.decimals,
                })
                .collect(),
            currencies_defined: view.currencies_defined,
            users: view.users,
            webhook_url: None,
            portal_return_origins: view.portal_return_origins,
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
    let origins: Option<Vec<&str>> = body
        .portal_return_origins
        .as_ref()
        .map(|list| list.iter().map(|origin| &**origin).collect());
    if let Some(origins) = &origins {
        check_origins(origins)?;
    }
    let currencies = match &body.currencies {
        Some(list) => Some(
            list.iter()
                .map(|currency| {
                    Ok(CurrencySpec {
                        code: Currency::new(&currency.code)?,
                        decimals: currency.decimals,
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?,
        ),
        None => None,
    };
    // An absent name is kept, as an absent list of currencies is.
    let existing = call.state.engine.tenant(id);
    let kept_name = existing.as_ref().and_then(|tenant| tenant.view().name);
    let spec = TenantSpec {
        name: body.name.as_deref().or(kept_name.as_deref()),
        default_currency,
        currencies: currencies.as_deref(),
    };
    // The currencies are checked before anything is written (the first write is this one).
    let (tenant, created, lsn) = call
        .state
        .engine
        .put_tenant(id, &spec, &call.context(None))?;
    let mut last = lsn;
    if let Some((url, secret)) = webhook {
        last = call
            .state
            .engine
            .set_tenant_webhook(&tenant, url, secret, &call.context(None))?;
    }
    if let Some(origins) = &origins {
        last = last.max(call.state.engine.set_tenant_portal_origins(
            &tenant,
            origins,
            &call.context(None),
        )?);
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

/// Checks `portal_return_origins` before anything is written, naming the first that is not an
/// origin (the engine checks them again, without the name).
fn check_origins(origins: &[&str]) -> Result<(), Problem> {
    if origins.len() > MAX_PORTAL_RETURN_ORIGINS {
        return Err(Problem::invalid(format!(
            "portal_return_origins holds {} origins, at most {MAX_PORTAL_RETURN_ORIGINS} are allowed",
            origins.len()
        ))
        .with("field", "portal_return_origins"));
    }
    if let Some(bad) = origins
        .iter()
        .find(|origin| normal_portal_origin(origin).is_none())
    {
        let shown: String = bad.chars().take(200).collect();
        return Err(Problem::invalid(format!(
            "portal_return_origins: {shown:?} is not an origin: each must be an absolute http or \
             https origin such as \"https://app.example.com\", with no path, query or fragment"
        ))
        .with("field", "portal_return_origins")
        .with("value", shown));
    }
    Ok(())
}
