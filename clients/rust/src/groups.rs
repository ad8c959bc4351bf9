//! The API by resource, as the recipe groups it: the accessors of every group ([`Client::users`],
//! [`Client::wallets`], [`Client::reservations`], [`Client::billing`], [`Client::payments`],
//! [`Client::pools`], [`Client::reports`], [`Client::audit`], [`Client::portal`],
//! [`Client::tenants`], [`Client::health`]) and [`Client::me`], and the groups of an
//! application's request path: [`Users`], [`Wallets`], [`Reservations`], [`Payments`],
//! [`Portal`]. The operators' groups are in `operations.rs`. Each group borrows the client;
//! every method is one route of the API.
//!
//! Writes that take an idempotency key take it as `key`; `None` makes one for the call (the same
//! on each of its retries).

use http::Method;
use serde::Serialize;
use serde_json::Value;

use crate::client::{encode, query, user_path, Client};
use crate::error::ClientError;
use crate::operations::{Audit, Billing, Health, Pools, Reports, Tenants};
use crate::types::{
    BatchDebit, Capture, Checkout, Credit, Debit, EntriesPage, Hold, Me, Payment, PaymentsPage,
    PortalSession, Query, Receipt, Release, Reservation, StreamToken, User, UserProfile, UsersPage,
    Wallet,
};

/// `?a=b&…` of caller-given pairs.
pub(crate) fn pairs(filters: Query<'_>) -> String {
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

    /// `POST /v1/payments/initialize` with `pool_id` (admin key): a checkout of `package` for a
    /// credit pool; once paid, the package's credits go to the pool, which its members draw on.
    pub async fn initialize_for_pool(
        &self,
        pool: &str,
        package: &str,
        email: &str,
        key: Option<&str>,
    ) -> Result<Checkout, ClientError> {
        let body = serde_json::json!({ "pool_id": pool, "package_id": package, "email": email });
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
