//! The catalogue routes: actions and their costs, packages for sale (writes need an admin key),
//! and the billing bootstrap: what a client needs to show a wallet and a top-up page.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::users::wallet_json;
use crate::api::call::{ok, Answer, Call};
use crate::api::dto::currency;
use crate::api::problem::Problem;
use crate::api::request::{parse_json, query_pairs, unknown_parameter};
use crate::api::response::{empty_response, json_response};
use crate::engine::types::{Currency, EngineError, Missing};
use crate::engine::PackageSpec;
use crate::engine::{ActionView, PackageView};

/// `PUT /v1/actions/{action}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody<'a> {
    cost: i64,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<Cow<'a, str>>,
}

/// `PUT /v1/packages/{package_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageBody<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    credits: i64,
    price_minor: i64,
    #[serde(borrow)]
    price_currency: Cow<'a, str>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(default)]
    active: Option<bool>,
    /// Where it is shown among the packages; checked below, so that a bad one is named.
    #[serde(default)]
    position: Option<i64>,
}

/// A catalogue action.
#[derive(Debug, Serialize)]
struct ActionJson {
    action: String,
    cost: i64,
    currency: String,
    description: Option<String>,
}

impl From<ActionView> for ActionJson {
    fn from(view: ActionView) -> ActionJson {
        ActionJson {
            action: view.action,
            cost: view.cost,
            currency: view.currency.to_string(),
            description: view.description,
        }
    }
}

/// A package.
#[derive(Debug, Serialize)]
struct PackageJson {
    package_id: String,
    name: String,
    credits: i64,
    currency: String,
    price_minor: i64,
    price_currency: String,
    active: bool,
    position: u32,
}

impl From<PackageView> for PackageJson {
    fn from(view: PackageView) -> PackageJson {
        PackageJson {
            package_id: view.package_id,
            name: view.name,
            credits: view.credits,
            currency: view.currency.to_string(),
            price_minor: view.price_minor,
            price_currency: view.price_currency.to_string(),
            active: view.active,
            position: view.position,
        }
    }
}

/// `GET /v1/actions`.
pub async fn list_actions(call: &Call<'_>) -> Answer {
    let actions: Vec<ActionJson> = call
        .tenant
        .actions()
        .into_iter()
        .map(ActionJson::from)
        .collect();
    ok(&serde_json::json!({ "actions": actions }))
}

/// `GET /v1/actions/{action}`.
pub async fn get_action(call: &Call<'_>) -> Answer {
    let name = &*call.param;
    let action = call
        .tenant
        .actions()
        .into_iter()
        .find(|a| a.action == name)
        .ok_or_else(action_not_found)?;
    ok(&ActionJson::from(action))
}

fn action_not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "action-not-found",
        "Action not found",
        "no such action in this tenant's catalogue",
    )
}

/// `PUT /v1/actions/{action}` (admin).
pub async fn put_action(call: &Call<'_>) -> Answer {
    let name = &*call.param;
    let body: ActionBody = parse_json(&call.body)?;
    let existed = call.tenant.actions().iter().any(|a| a.action == name);
    let currency = currency(body.currency.as_ref())?;
    let lsn = call
        .state
        .engine
        .put_action(
            &call.tenant,
            name,
            body.cost,
            currency,
            body.description.as_deref(),
            &call.context(None),
        )
        .map_err(|error| call.problem(error))?;
    call.durable(lsn).await?;
    let action = call
        .tenant
        .actions()
        .into_iter()
        .find(|a| a.action == name)
        .ok_or_else(action_not_found)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &ActionJson::from(action)))
}

/// `DELETE /v1/actions/{action}` (admin).
pub async fn delete_action(call: &Call<'_>) -> Answer {
    let name = &*call.param;
    let lsn = match call
        .state
        .engine
        .delete_action(&call.tenant, name, &call.context(None))
    {
        Err(EngineError::NotFound(Missing::Action)) => return Err(action_not_found()),
        other => other?,
    };
    call.durable(lsn).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// `GET /v1/packages`.
pub async fn list_packages(call: &Call<'_>) -> Answer {
    let packages: Vec<PackageJson> = call
        .tenant
        .packages()
        .into_iter()
        .map(PackageJson::from)
        .collect();
    ok(&serde_json::json!({ "packages": packages }))
}

/// `GET /v1/packages/{package_id}`.
pub async fn get_package(call: &Call<'_>) -> Answer {
    let id = &*call.param;
    let package = call
        .tenant
        .packages()
        .into_iter()
        .find(|p| p.package_id == id)
        .ok_or(EngineError::NotFound(Missing::Package))?;
    ok(&PackageJson::from(package))
}

/// `PUT /v1/packages/{package_id}` (admin).
pub async fn put_package(call: &Call<'_>) -> Answer {
    let id = &*call.param;
    let body: PackageBody = parse_json(&call.body)?;
    let position = match body.position {
        None => 0,
        Some(position) => u32::try_from(position).map_err(|_| {
            Problem::invalid(format!(
                "position must be a whole number from 0 to {}, not {position}",
                u32::MAX
            ))
            .with("field", "position")
        })?,
    };
    let existed = call.tenant.packages().iter().any(|p| p.package_id == id);
    let terms = PackageSpec {
        name: &body.name,
        credits: body.credits,
        currency: currency(body.currency.as_ref())?.unwrap_or(call.tenant.default_currency()),
        price_minor: body.price_minor,
        price_currency: Currency::new(&body.price_currency)?,
        active: body.active.unwrap_or(true),
        position,
    };
    let lsn = call
        .state
        .engine
        .put_package(&call.tenant, id, &terms, &call.context(None))
        .map_err(|error| call.problem(error))?;
    call.durable(lsn).await?;
    let package = call
        .tenant
        .packages()
        .into_iter()
        .find(|p| p.package_id == id)
        .ok_or(EngineError::NotFound(Missing::Package))?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(status, &PackageJson::from(package)))
}

/// `DELETE /v1/packages/{package_id}` (admin).
pub async fn delete_package(call: &Call<'_>) -> Answer {
    let id = &*call.param;
    let lsn = call
        .state
        .engine
        .delete_package(&call.tenant, id, &call.context(None))?;
    call.durable(lsn).await?;
    Ok(empty_response(StatusCode::NO_CONTENT))
}

/// `GET /v1/billing/bootstrap/{user_id}[?currency=]`: what a client needs to show a wallet and a
/// top-up page. With `currency`, the wallet in that currency and only the packages and actions in
/// it; without, the default wallet and every active package and action. Packages come in
/// display order (`position`, then id).
pub async fn bootstrap(call: &Call<'_>) -> Answer {
    let user = &*call.param;
    let mut wanted = None;
    for (name, value) in query_pairs(call.query) {
        match name.as_ref() {
            "currency" => wanted = Some(Currency::new(&value)?),
            _ => return Err(unknown_parameter(&name)),
        }
    }
    if let Some(currency) = wanted {
        call.tenant
            .check_currency(currency)
            .map_err(|error| call.problem(error))?;
    }
    let view = call.tenant.user(user)?;
    let in_wanted = |currency: Currency| wanted.is_none_or(|wanted| wanted == currency);
    let packages: Vec<PackageJson> = call
        .tenant
        .packages()
        .into_iter()
        .filter(|p| p.active && in_wanted(p.currency))
        .map(PackageJson::from)
        .collect();
    let actions: Vec<ActionJson> = call
        .tenant
        .actions()
        .into_iter()
        .filter(|a| in_wanted(a.currency))
        .map(ActionJson::from)
        .collect();
    let currency = wanted.unwrap_or(call.tenant.default_currency());
    ok(&serde_json::json!({
        "wallet": wallet_json(call, &view, currency),
        "available_packages": packages,
        "actions": actions,
    }))
}
