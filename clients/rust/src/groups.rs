//! The API by resource, as the recipe groups it: [`Client::users`], [`Client::wallets`],
//! [`Client::reservations`], [`Client::billing`], [`Client::payments`], [`Client::pools`],
//! [`Client::reports`], [`Client::audit`], [`Client::portal`], [`Client::tenants`],
//! [`Client::health`] and [`Client::me`]. Each group borrows the client; every method is one
//! route of the API.
//!
//! Writes that take an idempotency key take it as `key`; `None` makes one for the call (the same
//! on each of its retries). Bodies of the less common writes (catalogue, rules, pools, tenants)
//! are any `Serialize`, such as `serde_json::json!({…})`, in the API's own field names.

use http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::client::{encode, query, user_path, Client};
use crate::error::ClientError;
use crate::types::{
    BatchDebit, Capture, Checkout, Credit, Debit, EntriesPage, Hold, Me, Membership, Payment,
    PaymentsPage, Pool, PortalSession, Query, Receipt, Release, Reservation, StreamToken, User,
    UserProfile, UsersPage, Wallet,
};

/// `?a=b&…` of caller-given pairs.
fn pairs(filters: Query<'_>) -> String {
    let present: Vec<(&str, Option<&str>)> = filters
        .iter()
        .map(|(name, value)| (*name, Some(*value)))
        .collect();
    query(&present)
}

impl Client {
    /// Users: create, update, read, list.
    pub fn users(&self) -> Users<'_> {
        Users { client: self }
    }

    /// Wallets: balance, credit, debit, revoke, ledger, overdraft, the live stream and its
    /// tokens.
    pub fn wallets(&self) -> Wallets<'_> {
        Wallets { client: self }
    }

    /// Reservations: hold, capture, extend, release, and the guard and closure over them.
    pub fn reservations(&self) -> Reservations<'_> {
        Reservations { client: self }
    }

    /// Billing: bootstrap, the action catalogue, packages, auto top-up rules.
    pub fn billing(&self) -> Billing<'_> {
        Billing { client: self }
    }

    /// Payments: checkouts and their status.
    pub fn payments(&self) -> Payments<'_> {
        Payments { client: self }
    }

    /// Credit pools (admin).
    pub fn pools(&self) -> Pools<'_> {
        Pools { client: self }
    }

    /// Usage and revenue reports.
    pub fn reports(&self) -> Reports<'_> {
        Reports { client: self }
    }

    /// The hash-chained audit log (admin).
    pub fn audit(&self) -> Audit<'_> {
        Audit { client: self }
    }

    /// The hosted top-up page.
    pub fn portal(&self) -> Portal<'_> {
        Portal { client: self }
    }

    /// Tenants (platform keys).
    pub fn tenants(&self) -> Tenants<'_> {
        Tenants { client: self }
    }

    /// Probes and documents: liveness, readiness, metrics, the OpenAPI document.
    pub fn health(&self) -> Health<'_> {
        Health { client: self }
    }

    /// `GET /v1/me`: the calling key's name, role and tenant.
    pub async fn me(&self) -> Result<Me, ClientError> {
        self.call(Method::GET, "/v1/me", None::<&()>, None).await
    }
}

/// See [`Client::users`].
#[derive(Debug, Clone, Copy)]
pub struct Users<'a> {
    client: &'a Client,
}

impl Users<'_> {
    /// `PUT /v1/users/{id}`: creates the user, or changes the fields given (metadata is
    /// replaced as a whole).
    pub async fn put(&self, user: &str, profile: &UserProfile) -> Result<User, ClientError> {
        let path = user_path(user, "");
        self.client
            .call(Method::PUT, &path, Some(profile), None)
            .await
    }

    /// `PATCH /v1/users/{id}`: changes the fields given, merging metadata (RFC 7396); 404 if
    /// the user does not exist.
    pub async fn update(&self, user: &str, profile: &UserProfile) -> Result<User, ClientError> {
        let path = user_path(user, "");
        self.client
            .call(Method::PATCH, &path, Some(profile), None)
            .await
    }

    /// Keeps creditd's copy of a user in step with the application's: merges `profile` into
    /// the user if it exists (PATCH), creates it otherwise (PUT). Safe to call on every sign-in.
    pub async fn sync(&self, user: &str, profile: &UserProfile) -> Result<User, ClientError> {
        match self.update(user, profile).await {
            Err(ClientError::UserNotFound(_)) => self.put(user, profile).await,
            other => other,
        }
    }

    /// `GET /v1/users/{id}`.
    pub async fn get(&self, user: &str) -> Result<User, ClientError> {
        let path = user_path(user, "");
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/users?prefix=&limit=&cursor=`: users by id.
    pub async fn list(
        &self,
        prefix: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<UsersPage, ClientError> {
        let limit = limit.map(|limit| limit.to_string());
        let path = format!(
            "/v1/users{}",
            query(&[
                ("prefix", prefix),
                ("limit", limit.as_deref()),
                ("cursor", cursor)
            ])
        );
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }
}

/// See [`Client::wallets`].
#[derive(Debug, Clone, Copy)]
pub struct Wallets<'a> {
    client: &'a Client,
}

impl Wallets<'_> {
    pub(crate) fn client(&self) -> &Client {
        self.client
    }

    /// `GET /v1/users/{id}/wallet`, in the tenant's default currency or `currency`.
    pub async fn get(&self, user: &str, currency: Option<&str>) -> Result<Wallet, ClientError> {
        let path = format!(
            "{}{}",
            user_path(user, "/wallet"),
            query(&[("currency", currency)])
        );
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `POST /v1/users/{id}/credit`: adds credits (a grant; an admin key must give a reason).
    pub async fn credit(
        &self,
        user: &str,
        credit: &Credit,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let path = user_path(user, "/credit");
        let answer = self
            .client
            .request::<Receipt>(Method::POST, &path, Some(credit), key)
            .await?;
        Ok(Receipt {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `POST /v1/users/{id}/debit`: spends, or answers 402
    /// ([`ClientError::InsufficientCredits`]) and changes nothing.
    pub async fn debit(
        &self,
        user: &str,
        debit: &Debit,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let path = user_path(user, "/debit");
        let answer = self
            .client
            .request::<Receipt>(Method::POST, &path, Some(debit), key)
            .await?;
        Ok(Receipt {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `POST /v1/debits/batch`: each item succeeds or fails on its own; the results in order.
    pub async fn batch_debit(
        &self,
        debits: &[BatchDebit],
        key: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        let body = serde_json::json!({ "debits": debits });
        let answer: Value = self
            .client
            .call(Method::POST, "/v1/debits/batch", Some(&body), key)
            .await?;
        answer
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| ClientError::Decode("no results".into()))
    }

    /// `POST /v1/users/{id}/revoke` (admin): takes `amount` back, for `reason`.
    pub async fn revoke(
        &self,
        user: &str,
        amount: i64,
        reason: &str,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let body = serde_json::json!({ "amount": amount, "reason": reason });
        let path = user_path(user, "/revoke");
        let answer = self
            .client
            .request::<Receipt>(Method::POST, &path, Some(&body), key)
            .await?;
        Ok(Receipt {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `GET /v1/users/{id}/entries`: the ledger, newest first. Filters: `limit`, `cursor`,
    /// `kind`, `action`, `currency`, `from`, `to`.
    pub async fn entries(
        &self,
        user: &str,
        filters: Query<'_>,
    ) -> Result<EntriesPage, ClientError> {
        let path = format!("{}{}", user_path(user, "/entries"), pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `PUT /v1/users/{id}/overdraft` (admin): how far `available` may go below zero.
    pub async fn set_overdraft(
        &self,
        user: &str,
        overdraft_limit: i64,
        currency: Option<&str>,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "overdraft_limit": overdraft_limit, "currency": currency });
        let path = user_path(user, "/overdraft");
        self.client
            .call(Method::PUT, &path, Some(&body), None)
            .await
    }

    /// `POST /v1/users/{id}/stream-tokens`: a short-lived token for the live balance stream,
    /// for a browser's `EventSource` (which cannot send a key).
    pub async fn stream_token(&self, user: &str) -> Result<StreamToken, ClientError> {
        let path = user_path(user, "/stream-tokens");
        self.client
            .call(Method::POST, &path, None::<&()>, None)
            .await
    }

    /// The URL of the live balance stream for a browser holding `token`.
    pub fn stream_url(&self, user: &str, token: &str) -> String {
        format!(
            "{}{}{}",
            self.client.base_url(),
            user_path(user, "/wallet/stream"),
            query(&[("token", Some(token))])
        )
    }
}

/// See [`Client::reservations`].
#[derive(Debug, Clone, Copy)]
pub struct Reservations<'a> {
    pub(crate) client: &'a Client,
}

impl Reservations<'_> {
    /// `POST /v1/users/{id}/reservations`: holds credits, or answers 402 and holds nothing.
    pub async fn create(
        &self,
        user: &str,
        hold: &Hold,
        key: Option<&str>,
    ) -> Result<Reservation, ClientError> {
        let path = user_path(user, "/reservations");
        let answer = self
            .client
            .request::<Reservation>(Method::POST, &path, Some(hold), key)
            .await?;
        Ok(Reservation {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `POST /v1/reservations/{id}/capture`: charges `amount` (all that is held when `None`).
    /// More than is held is charged from the wallet if it can pay, else 402 and the hold stays.
    pub async fn capture(
        &self,
        reservation_id: &str,
        amount: Option<i64>,
        key: Option<&str>,
    ) -> Result<Capture, ClientError> {
        let body = serde_json::json!({ "amount": amount });
        let path = format!("/v1/reservations/{}/capture", encode(reservation_id));
        let answer = self
            .client
            .request::<Capture>(Method::POST, &path, Some(&body), key)
            .await?;
        Ok(Capture {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `POST /v1/reservations/{id}/extend`: a new lifetime; the new `expires_at`.
    pub async fn extend(
        &self,
        reservation_id: &str,
        ttl_seconds: u64,
        key: Option<&str>,
    ) -> Result<String, ClientError> {
        let body = serde_json::json!({ "ttl_seconds": ttl_seconds });
        let path = format!("/v1/reservations/{}/extend", encode(reservation_id));
        let answer: Value = self
            .client
            .call(Method::POST, &path, Some(&body), key)
            .await?;
        answer
            .get("expires_at")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Decode(format!("no expires_at: {answer}")))
    }

    /// `POST /v1/reservations/{id}/release`: gives the held credits back.
    pub async fn release(
        &self,
        reservation_id: &str,
        key: Option<&str>,
    ) -> Result<Release, ClientError> {
        let path = format!("/v1/reservations/{}/release", encode(reservation_id));
        self.client
            .call(Method::POST, &path, None::<&()>, key)
            .await
    }

    /// `GET /v1/reservations/{id}`.
    pub async fn get(&self, reservation_id: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/reservations/{}", encode(reservation_id));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/users/{id}/reservations`: the user's open reservations.
    pub async fn list_open(&self, user: &str) -> Result<Value, ClientError> {
        let path = user_path(user, "/reservations");
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }
}

/// See [`Client::billing`].
#[derive(Debug, Clone, Copy)]
pub struct Billing<'a> {
    client: &'a Client,
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

/// See [`Client::payments`].
#[derive(Debug, Clone, Copy)]
pub struct Payments<'a> {
    client: &'a Client,
}

impl Payments<'_> {
    /// `POST /v1/payments/initialize`: a checkout of `package` for `user`; send the person to
    /// its `checkout_url`. `body` may add `callback_url` and `metadata`.
    pub async fn initialize(
        &self,
        user: &str,
        package: &str,
        email: &str,
        key: Option<&str>,
    ) -> Result<Checkout, ClientError> {
        let body = serde_json::json!({ "user_id": user, "package_id": package, "email": email });
        self.initialize_with(&body, key).await
    }

    /// [`Payments::initialize`] with a body of the caller's (`callback_url`, `metadata`).
    pub async fn initialize_with(
        &self,
        body: &(impl Serialize + ?Sized),
        key: Option<&str>,
    ) -> Result<Checkout, ClientError> {
        let answer = self
            .client
            .request::<Checkout>(Method::POST, "/v1/payments/initialize", Some(body), key)
            .await?;
        Ok(Checkout {
            replayed: answer.replayed,
            ..answer.value
        })
    }

    /// `GET /v1/payments/{reference}`: the payment's status.
    pub async fn get(&self, reference: &str) -> Result<Payment, ClientError> {
        let path = format!("/v1/payments/{}", encode(reference));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `GET /v1/users/{id}/payments`: a user's payments, newest first. Filters: `limit`,
    /// `cursor`, `status`.
    pub async fn list(&self, user: &str, filters: Query<'_>) -> Result<PaymentsPage, ClientError> {
        let path = format!("{}{}", user_path(user, "/payments"), pairs(filters));
        self.client
            .call(Method::GET, &path, None::<&()>, None)
            .await
    }

    /// `POST /v1/payments/{reference}/abandon` (admin): gives up on a pending checkout.
    pub async fn abandon(&self, reference: &str) -> Result<Value, ClientError> {
        let path = format!("/v1/payments/{}/abandon", encode(reference));
        self.client
            .call(Method::POST, &path, None::<&()>, None)
            .await
    }
}

/// See [`Client::pools`].
#[derive(Debug, Clone, Copy)]
pub struct Pools<'a> {
    client: &'a Client,
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
    client: &'a Client,
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
    client: &'a Client,
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

/// See [`Client::portal`].
#[derive(Debug, Clone, Copy)]
pub struct Portal<'a> {
    client: &'a Client,
}

impl Portal<'_> {
    /// `POST /v1/users/{id}/portal-sessions`: a signed link, valid for minutes, to creditd's
    /// page for this one user (balance, activity, packages to buy). Send the person to its
    /// `url` on a 402; `return_url` is where its back link leads.
    pub async fn create_session(
        &self,
        user: &str,
        return_url: Option<&str>,
    ) -> Result<PortalSession, ClientError> {
        let body = serde_json::json!({ "return_url": return_url });
        let path = user_path(user, "/portal-sessions");
        self.client
            .call(Method::POST, &path, Some(&body), None)
            .await
    }
}

/// See [`Client::tenants`].
#[derive(Debug, Clone, Copy)]
pub struct Tenants<'a> {
    client: &'a Client,
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
    client: &'a Client,
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
