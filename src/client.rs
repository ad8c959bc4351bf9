//! A typed client for the HTTP API, used by the tests and the load generator. It keeps HTTP/1.1
//! connections alive and maps problem+json answers to [`ClientError`]; a 402 becomes
//! [`ClientError::InsufficientCredits`] with the balance and the top-up URL.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// 402: the wallet cannot cover the spend.
    #[error("insufficient credits: {available} available, {required} required")]
    InsufficientCredits {
        /// The balance.
        balance: i64,
        /// What could be spent.
        available: i64,
        /// What the request needed.
        required: i64,
        /// Where the user can top up.
        topup_url: String,
    },
    /// Any other problem+json answer.
    #[error("{status}: {problem_type}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem `type` URI.
        problem_type: String,
        /// Its detail.
        detail: String,
        /// The whole body.
        body: Value,
    },
    /// The request did not get an answer.
    #[error("transport: {0}")]
    Transport(String),
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ClientError {
    /// The problem type's slug (`user-not-found`), if this is a problem answer.
    pub fn slug(&self) -> Option<&str> {
        match self {
            ClientError::InsufficientCredits { .. } => Some("insufficient-credits"),
            ClientError::Problem { problem_type, .. } => problem_type.rsplit('/').next(),
            _ => None,
        }
    }

    /// The HTTP status, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::InsufficientCredits { .. } => Some(402),
            ClientError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A wallet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Wallet {
    /// The user.
    pub user_id: String,
    /// The currency shown.
    pub currency: String,
    /// Balance.
    pub balance: i64,
    /// Held by open reservations.
    pub reserved: i64,
    /// Balance minus reserved.
    pub available: i64,
    /// How far available may go below zero.
    pub overdraft_limit: i64,
    /// `healthy`, `low` or `empty`.
    pub status: String,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct User {
    /// Its id.
    pub user_id: String,
    /// E-mail.
    pub email: Option<String>,
    /// Name.
    pub name: Option<String>,
    /// Metadata.
    pub metadata: Option<Value>,
    /// Its wallet in the tenant's default currency.
    pub wallet: Wallet,
}

/// The answer to a credit or a debit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    /// The ledger entry (absent for dry runs).
    pub entry_id: Option<String>,
    /// Credits added (credits).
    #[serde(default)]
    pub amount: i64,
    /// Credits taken (debits).
    #[serde(default)]
    pub charged: i64,
    /// Balance after.
    pub balance: i64,
    /// Available after.
    pub available: i64,
    /// Whether this is the stored answer of an earlier request with the same key.
    #[serde(skip)]
    pub replayed: bool,
}

/// The answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reservation {
    /// Its id (absent for dry runs).
    pub reservation_id: Option<String>,
    /// Credits held.
    pub amount: i64,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Available after.
    pub available: i64,
}

/// The answer to a capture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Capture {
    /// The ledger entry.
    pub entry_id: String,
    /// Credits charged.
    pub charged: i64,
    /// Credits returned to available.
    pub released: i64,
    /// Balance after.
    pub balance: i64,
    /// Available after.
    pub available: i64,
}

/// What to spend: an amount or a catalogue action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Debit {
    /// Credits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Catalogue action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Units of the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Check only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

impl Debit {
    /// A debit of `amount` credits.
    pub fn amount(amount: i64) -> Debit {
        Debit {
            amount: Some(amount),
            action: None,
            quantity: None,
            description: None,
            dry_run: false,
        }
    }

    /// A debit of `quantity` units of `action`.
    pub fn action(action: &str, quantity: u64) -> Debit {
        Debit {
            amount: None,
            action: Some(action.into()),
            quantity: Some(quantity),
            description: None,
            dry_run: false,
        }
    }
}

/// One item of a batch debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchDebit {
    /// The user.
    pub user_id: String,
    /// Credits.
    pub amount: i64,
    /// The item's own idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The API client.
#[derive(Clone)]
pub struct Client {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    base_url: String,
    authorization: HeaderValue,
    tenant: Option<HeaderValue>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .finish()
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:8080`) using the key `secret`.
    pub fn new(base_url: &str, secret: &str) -> Result<Client, ClientError> {
        let authorization = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| ClientError::Transport("the secret is not a valid header value".into()))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        Ok(Client {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            authorization,
            tenant: None,
        })
    }

    /// The same client acting in `tenant` (platform keys only).
    pub fn in_tenant(&self, tenant: &str) -> Result<Client, ClientError> {
        let tenant = HeaderValue::from_str(tenant)
            .map_err(|_| ClientError::Transport("bad tenant id".into()))?;
        Ok(Client {
            tenant: Some(tenant),
            ..self.clone()
        })
    }

    /// Sends one request and returns status, headers and body, whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_url))
            .header(header::AUTHORIZATION, self.authorization.clone());
        if let Some(tenant) = &self.tenant {
            builder = builder.header("x-tenant", tenant.clone());
        }
        if let Some(key) = idempotency_key {
            builder = builder.header("idempotency-key", key);
        }
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| ClientError::Transport(error.to_string()))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|error| ClientError::Transport(error.to_string()))?;
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|error| ClientError::Transport(error.to_string()))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        idempotency_key: Option<&str>,
    ) -> Result<(T, bool), ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| ClientError::Decode(error.to_string()))?;
        let (status, headers, bytes) = self.send(method, path, body, idempotency_key).await?;
        if !status.is_success() {
            return Err(problem(status, &bytes));
        }
        let replayed = headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let value = serde_json::from_slice(&bytes).map_err(|error| {
            ClientError::Decode(format!("{error}: {}", String::from_utf8_lossy(&bytes)))
        })?;
        Ok((value, replayed))
    }

    /// Creates or updates a user.
    pub async fn put_user(&self, user: &str, email: Option<&str>) -> Result<User, ClientError> {
        let body = serde_json::json!({ "email": email });
        Ok(self
            .call(Method::PUT, &user_path(user, ""), Some(&body), None)
            .await?
            .0)
    }

    /// A user's wallet, in the tenant's default currency or `currency`.
    pub async fn wallet(&self, user: &str, currency: Option<&str>) -> Result<Wallet, ClientError> {
        let query = currency
            .map(|c| format!("?currency={c}"))
            .unwrap_or_default();
        let path = format!("{}{query}", user_path(user, "/wallet"));
        Ok(self.call(Method::GET, &path, None::<&()>, None).await?.0)
    }

    /// Adds credits (kind `grant`); admin keys must give a reason.
    pub async fn credit(
        &self,
        user: &str,
        amount: i64,
        reason: Option<&str>,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let body = serde_json::json!({ "amount": amount, "reason": reason });
        let (mut receipt, replayed): (Receipt, bool) = self
            .call(Method::POST, &user_path(user, "/credit"), Some(&body), key)
            .await?;
        receipt.replayed = replayed;
        Ok(receipt)
    }

    /// Spends credits.
    pub async fn debit(
        &self,
        user: &str,
        debit: &Debit,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let (mut receipt, replayed): (Receipt, bool) = self
            .call(Method::POST, &user_path(user, "/debit"), Some(debit), key)
            .await?;
        receipt.replayed = replayed;
        Ok(receipt)
    }

    /// Spends for several users at once; each item succeeds or fails on its own.
    pub async fn batch_debit(
        &self,
        debits: &[BatchDebit],
        key: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        let body = serde_json::json!({ "debits": debits });
        let (answer, _): (Value, bool) = self
            .call(Method::POST, "/v1/debits/batch", Some(&body), key)
            .await?;
        answer
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| ClientError::Decode("no results".into()))
    }

    /// Reserves credits.
    pub async fn reserve(
        &self,
        user: &str,
        amount: i64,
        ttl_seconds: Option<u64>,
        key: Option<&str>,
    ) -> Result<Reservation, ClientError> {
        let body = serde_json::json!({ "amount": amount, "ttl_seconds": ttl_seconds });
        Ok(self
            .call(
                Method::POST,
                &user_path(user, "/reservations"),
                Some(&body),
                key,
            )
            .await?
            .0)
    }

    /// Charges a reservation (all of it when `amount` is `None`).
    pub async fn capture(
        &self,
        reservation_id: &str,
        amount: Option<i64>,
        key: Option<&str>,
    ) -> Result<Capture, ClientError> {
        let body = serde_json::json!({ "amount": amount });
        Ok(self
            .call(
                Method::POST,
                &format!("/v1/reservations/{reservation_id}/capture"),
                Some(&body),
                key,
            )
            .await?
            .0)
    }

    /// Moves a reservation's expiry.
    pub async fn extend(
        &self,
        reservation_id: &str,
        ttl_seconds: u64,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "ttl_seconds": ttl_seconds });
        Ok(self
            .call(
                Method::POST,
                &format!("/v1/reservations/{reservation_id}/extend"),
                Some(&body),
                None,
            )
            .await?
            .0)
    }

    /// Releases a reservation.
    pub async fn release(&self, reservation_id: &str) -> Result<Value, ClientError> {
        Ok(self
            .call(
                Method::POST,
                &format!("/v1/reservations/{reservation_id}/release"),
                None::<&()>,
                None,
            )
            .await?
            .0)
    }

    /// Creates or replaces a catalogue action (admin).
    pub async fn put_action(&self, action: &str, cost: i64) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "cost": cost });
        Ok(self
            .call(
                Method::PUT,
                &format!("/v1/actions/{action}"),
                Some(&body),
                None,
            )
            .await?
            .0)
    }

    /// Creates or replaces a package (admin).
    pub async fn put_package(
        &self,
        package: &str,
        name: &str,
        credits: i64,
        price_minor: i64,
        price_currency: &str,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "name": name, "credits": credits, "price_minor": price_minor, "price_currency": price_currency });
        Ok(self
            .call(
                Method::PUT,
                &format!("/v1/packages/{package}"),
                Some(&body),
                None,
            )
            .await?
            .0)
    }

    /// Creates or updates a tenant (platform).
    pub async fn put_tenant(&self, tenant: &str, name: Option<&str>) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "name": name });
        Ok(self
            .call(
                Method::PUT,
                &format!("/v1/tenants/{tenant}"),
                Some(&body),
                None,
            )
            .await?
            .0)
    }

    /// The wallet, active packages and actions of a user.
    pub async fn bootstrap(&self, user: &str) -> Result<Value, ClientError> {
        Ok(self
            .call(
                Method::GET,
                &format!("/v1/billing/bootstrap/{}", encode(user)),
                None::<&()>,
                None,
            )
            .await?
            .0)
    }
}

fn user_path(user: &str, suffix: &str) -> String {
    format!("/v1/users/{}{suffix}", encode(user))
}

/// Percent-encodes everything but unreserved characters.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn problem(status: StatusCode, bytes: &[u8]) -> ClientError {
    let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let number = |name: &str| body.get(name).and_then(Value::as_i64).unwrap_or(0);
    if status == StatusCode::PAYMENT_REQUIRED {
        return ClientError::InsufficientCredits {
            balance: number("balance"),
            available: number("available"),
            required: number("required"),
            topup_url: text("topup_url"),
        };
    }
    ClientError::Problem {
        status: status.as_u16(),
        problem_type: text("type"),
        detail: text("detail"),
        body,
    }
}
