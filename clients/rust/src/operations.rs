//! The groups an operator's tools use more than an application's request path: the catalogue
//! and auto top-up rules ([`Billing`]), credit pools ([`Pools`]), reports ([`Reports`]), the audit
//! log ([`Audit`]), tenants ([`Tenants`]) and the probes ([`Health`]). Their less common bodies
//! are any `Serialize`, in the API's own field names; their answers, which this crate does not
//! model field by field, are [`serde_json::Value`] where no type of `types.rs` fits.

use http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::client::{encode, user_path, Client};
use crate::error::ClientError;
use crate::groups::pairs;
use crate::types::{Membership, PaymentsPage, Pool, Query, Receipt};

/// See [`Client::billing`].
#[derive(Debug, Clone, Copy)]
pub struct Billing<'a> {
    pub(crate) client: &'a Client,
}

impl Billing<'_> {
    /// `GET /v1/billing/bootstrap/{user}`: the wallet, active packages and actions of a user:
    /// what an application shows on its billing page.
    pub async fn bootstrap(&self, user: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/billing/bootstrap/{}", encode(user));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/actions`.
    pub async fn list_actions(&self) -> Result<Value, ClientError> {
        self.client
            .call(Method::GET, "/v1/actions", None::<&()>, None)
            .await
    }

    /// `GET /v1/actions/{action}`.
    pub async fn get_action(&self, action: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/actions/{}", encode(action));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `PUT /v1/actions/{action}` (admin): `{"cost","currency"?,"description"?}`.
    pub async fn put_action(
        &self,
        action: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<Value, ClientError> {
        let path = format!("/v1/actions/{}", encode(action));
        self.client.call(Method::PUT, &path, Some(body), None).await
    }

    /// `DELETE /v1/actions/{action}` (admin).
    pub async fn delete_action(&self, action: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/actions/{}", encode(action));
        self.client
            .call(Method::DELETE, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/packages`.
    pub async fn list_packages(&self) -> Result<Value, ClientError> {
        self.client
            .call(Method::GET, "/v1/packages", None::<&()>, None)
            .await
    }

    /// `GET /v1/packages/{id}`.
    pub async fn get_package(&self, package: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/packages/{}", encode(package));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `PUT /v1/packages/{id}` (admin): `{"name","credits","price_minor","price_currency",
    /// "active"?}`.
    pub async fn put_package(
        &self,
        package: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<Value, ClientError> {
        let path = format!("/v1/packages/{}", encode(package));
        self.client.call(Method::PUT, &path, Some(body), None).await
    }

    /// `DELETE /v1/packages/{id}` (admin).
    pub async fn delete_package(&self, package: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/packages/{}", encode(package));
        self.client
            .call(Method::DELETE, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/users/{id}/auto-topup`.
    pub async fn get_auto_topup(&self, user: &str) -> Result<Value, ClientError> {
        let path = user_path(user, "/auto-topup");
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `PUT /v1/users/{id}/auto-topup` (admin): `{"enabled","threshold","package_id",
    /// "payment_method","max_per_day"?}`.
    pub async fn put_auto_topup(
        &self,
        user: &str,
        rule: &(impl Serialize + ?Sized),
    ) -> Result<Value, ClientError> {
        let path = user_path(user, "/auto-topup");
        self.client.call(Method::PUT, &path, Some(rule), None).await
    }

    /// `DELETE /v1/users/{id}/auto-topup` (admin).
    pub async fn delete_auto_topup(&self, user: &str) -> Result<Value, ClientError> {
        let path = user_path(user, "/auto-topup");
        self.client
            .call(Method::DELETE, &path, None::<&()>, None)
            .await
    }
}

/// See [`Client::pools`].
#[derive(Debug, Clone, Copy)]
pub struct Pools<'a> {
    pub(crate) client: &'a Client,
}

impl Pools<'_> {
    /// `PUT /v1/pools/{id}`: `{"name"?,"currency"?}`.
    pub async fn put(
        &self,
        pool: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<Pool, ClientError> {
        let path = format!("/v1/pools/{}", encode(pool));
        self.client.call(Method::PUT, &path, Some(body), None).await
    }

    /// `GET /v1/pools/{id}`.
    pub async fn get(&self, pool: &str) -> Result<Pool, ClientError> {
        let path = format!("/v1/pools/{}", encode(pool));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/pools`.
    pub async fn list(&self, filters: Query<'_>) -> Result<Value, ClientError> {
        let path = format!("/v1/pools{}", pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `POST /v1/pools/{id}/credit`: adds `amount` to the pool, for `reason`.
    pub async fn credit(
        &self,
        pool: &str,
        amount: i64,
        reason: &str,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let body = serde_json::json!({ "amount": amount, "reason": reason });
        let path = format!("/v1/pools/{}/credit", encode(pool));
        let answer = self
            .client
            .request::<Receipt>(Method::POST, &path, Some(&body), key)
            .await?;
        Ok(Receipt {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `GET /v1/pools/{id}/members`.
    pub async fn members(&self, pool: &str, filters: Query<'_>) -> Result<Value, ClientError> {
        let path = format!("/v1/pools/{}/members{}", encode(pool), pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/pools/{id}/entries`: the pool's ledger.
    pub async fn entries(&self, pool: &str, filters: Query<'_>) -> Result<Value, ClientError> {
        let path = format!("/v1/pools/{}/entries{}", encode(pool), pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/pools/{id}/payments`: the packages bought for the pool, newest first. Filters:
    /// `limit`, `cursor`, `status`.
    pub async fn payments(
        &self,
        pool: &str,
        filters: Query<'_>,
    ) -> Result<PaymentsPage, ClientError> {
        let path = format!("/v1/pools/{}/payments{}", encode(pool), pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/users/{id}/pool`: the user's membership.
    pub async fn get_member(&self, user: &str) -> Result<Membership, ClientError> {
        let path = user_path(user, "/pool");
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `PUT /v1/users/{id}/pool`: the user draws on `pool` once its own wallet is spent, up to
    /// `daily_cap` per UTC day.
    pub async fn set_member(
        &self,
        user: &str,
        pool: &str,
        daily_cap: Option<i64>,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "pool_id": pool, "daily_cap": daily_cap });
        let path = user_path(user, "/pool");
        self.client
            .call(Method::PUT, &path, Some(&body), None)
            .await
    }

    /// `DELETE /v1/users/{id}/pool`.
    pub async fn remove_member(&self, user: &str) -> Result<Value, ClientError> {
        let path = user_path(user, "/pool");
        self.client
            .call(Method::DELETE, &path, None::<&()>, None)
            .await
    }
}

/// See [`Client::reports`].
#[derive(Debug, Clone, Copy)]
pub struct Reports<'a> {
    pub(crate) client: &'a Client,
}

impl Reports<'_> {
    /// `GET /v1/reports/usage`: `from`, `to` (RFC 3339), `group_by` (`action`, `user`, `day`,
    /// `hour`), `user_id`, `currency`.
    pub async fn usage(&self, filters: Query<'_>) -> Result<Value, ClientError> {
        let path = format!("/v1/reports/usage{}", pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/reports/revenue` (admin): `from`, `to`, `group_by` (`package`, `currency`,
    /// `day`).
    pub async fn revenue(&self, filters: Query<'_>) -> Result<Value, ClientError> {
        let path = format!("/v1/reports/revenue{}", pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }
}

/// See [`Client::audit`].
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    pub(crate) client: &'a Client,
}

impl Audit<'_> {
    /// `GET /v1/audit`: `from`, `to`, `limit`, `cursor`, `actor`.
    pub async fn list(&self, filters: Query<'_>) -> Result<Value, ClientError> {
        let path = format!("/v1/audit{}", pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/audit/verify`: recomputes the hash chain.
    pub async fn verify(&self) -> Result<Value, ClientError> {
        self.client
            .call(Method::GET, "/v1/audit/verify", None::<&()>, None)
            .await
    }
}

/// See [`Client::tenants`].
#[derive(Debug, Clone, Copy)]
pub struct Tenants<'a> {
    pub(crate) client: &'a Client,
}

impl Tenants<'_> {
    /// `GET /v1/tenants`.
    pub async fn list(&self) -> Result<Value, ClientError> {
        self.client
            .call(Method::GET, "/v1/tenants", None::<&()>, None)
            .await
    }

    /// `GET /v1/tenants/{id}`.
    pub async fn get(&self, tenant: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/tenants/{}", encode(tenant));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `PUT /v1/tenants/{id}`: `{"name"?,"webhook_url"?,"webhook_secret"?,…}`.
    pub async fn put(
        &self,
        tenant: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<Value, ClientError> {
        let path = format!("/v1/tenants/{}", encode(tenant));
        self.client.call(Method::PUT, &path, Some(body), None).await
    }
}

/// See [`Client::health`]. Probes are not retried: their answer is the point.
#[derive(Debug, Clone, Copy)]
pub struct Health<'a> {
    pub(crate) client: &'a Client,
}

impl Health<'_> {
    async fn text(&self, path: &str) -> Result<(u16, String), ClientError> {
        let (status, _, bytes) = self.client.send(Method::GET, path, None, None).await?;
        Ok((
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// `GET /livez`: whether the process runs.
    pub async fn live(&self) -> Result<bool, ClientError> {
        Ok(self.text("/livez").await?.0 == 200)
    }

    /// `GET /readyz`: whether recovery is done and the log is writable.
    pub async fn ready(&self) -> Result<bool, ClientError> {
        Ok(self.text("/readyz").await?.0 == 200)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.ok_text("/metrics").await
    }

    /// `GET /openapi.yaml`: the API's OpenAPI document.
    pub async fn openapi(&self) -> Result<String, ClientError> {
        self.ok_text("/openapi.yaml").await
    }

    async fn ok_text(&self, path: &str) -> Result<String, ClientError> {
        let (status, headers, bytes) = self.client.send(Method::GET, path, None, None).await?;
        if !status.is_success() {
            return Err(ClientError::from_answer(status, &headers, &bytes));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
