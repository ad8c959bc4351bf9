//! The [`Client`]: where the server is, which key it uses, how long a call may take and how it is
//! retried; [`Client::request`], the one way a call leaves; and the flat methods of the first
//! version of this client, kept as they were (the groups of `groups.rs` are the full
//! surface).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::ClientError;
use crate::transport::{new_idempotency_key, random_u64, HyperTransport, RetryPolicy, Transport};
use crate::types::{BatchDebit, Capture, Debit, Receipt, Reservation, User, Wallet};

/// The default time a call may take, every retry included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A successful answer and what came with it.
#[derive(Debug, Clone)]
pub struct Answered<T> {
    /// The body.
    pub value: T,
    /// The HTTP status.
    pub status: u16,
    /// Whether the server answered from the stored result of an earlier request with the same
    /// idempotency key (`Idempotent-Replayed: true`): the write took effect once, before.
    pub replayed: bool,
    /// The `Idempotency-Key` the attempts carried, if any.
    pub idempotency_key: Option<String>,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// The answer's headers.
    pub headers: HeaderMap,
}

/// A client of one creditd server with one API key. Cheap to clone (the connection pool is
/// shared); [`Client::in_tenant`], [`Client::with_timeout`] and [`Client::with_retry`] give
/// variants of it.
#[derive(Clone)]
pub struct Client {
    pub(crate) transport: Arc<dyn Transport>,
    base_url: Arc<str>,
    authorization: HeaderValue,
    tenant: Option<HeaderValue>,
    pub(crate) timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("tenant", &self.tenant)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Client`] with more than [`Client::new`] sets.
pub struct ClientBuilder {
    base_url: String,
    api_key: String,
    tenant: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
    transport: Option<Arc<dyn Transport>>,
}

impl ClientBuilder {
    /// The tenant to act in (`X-Tenant`), for a platform key.
    pub fn tenant(mut self, tenant: &str) -> ClientBuilder {
        self.tenant = Some(tenant.to_owned());
        self
    }

    /// The time one call may take, every retry included (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// When to retry (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> ClientBuilder {
        self.retry = retry;
        self
    }

    /// Sends through `transport` instead of the default [`HyperTransport`].
    pub fn transport(mut self, transport: impl Transport) -> ClientBuilder {
        self.transport = Some(Arc::new(transport));
        self
    }

    /// The client; fails if the key or the tenant cannot be a header value.
    pub fn build(self) -> Result<Client, ClientError> {
        let authorization = HeaderValue::from_str(&format!("Bearer {}", self.api_key))
            .map_err(|_| ClientError::Decode("the API key is not a valid header value".into()))?;
        let tenant = self
            .tenant
            .map(|tenant| {
                HeaderValue::from_str(&tenant)
                    .map_err(|_| ClientError::Decode("bad tenant id".into()))
            })
            .transpose()?;
        Ok(Client {
            transport: self
                .transport
                .unwrap_or_else(|| Arc::new(HyperTransport::default())),
            base_url: self.base_url.trim_end_matches('/').into(),
            authorization,
            tenant,
            timeout: self.timeout,
            retry: self.retry,
        })
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:8080`) using the key `secret`,
    /// with the default timeout and retries.
    pub fn new(base_url: &str, secret: &str) -> Result<Client, ClientError> {
        Client::builder(base_url, secret).build()
    }

    /// A builder, for a tenant, a timeout, a retry policy or a transport of one's own.
    pub fn builder(base_url: &str, secret: &str) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.to_owned(),
            api_key: secret.to_owned(),
            tenant: None,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            transport: None,
        }
    }

    /// The same client acting in `tenant` (platform keys only).
    pub fn in_tenant(&self, tenant: &str) -> Result<Client, ClientError> {
        let tenant = HeaderValue::from_str(tenant)
            .map_err(|_| ClientError::Decode("bad tenant id".into()))?;
        Ok(Client {
            tenant: Some(tenant),
            ..self.clone()
        })
    }

    /// The same client with another timeout per call.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            timeout,
            ..self.clone()
        }
    }

    /// The same client with another retry policy.
    pub fn with_retry(&self, retry: RetryPolicy) -> Client {
        Client {
            retry,
            ..self.clone()
        }
    }

    /// The server's base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub(crate) fn build_request(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        idempotency_key: Option<&str>,
    ) -> Result<Request<Bytes>, ClientError> {
        let mut builder = Request::builder()
            .method(method.clone())
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
        builder
            .body(Bytes::copy_from_slice(body.unwrap_or_default()))
            .map_err(|error| ClientError::Decode(format!("bad request: {error}")))
    }

    /// Sends one request, once (no retry, no idempotency key of its own), and returns status,
    /// headers and body whatever the status: for routes and tests this crate does not model.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ClientError> {
        let request = self.build_request(&method, path, body.as_deref(), idempotency_key)?;
        let sent = self.transport.send(request);
        let response = match tokio::time::timeout(self.timeout, sent).await {
            Err(_) => return Err(ClientError::Timeout(self.timeout)),
            Ok(answer) => answer.map_err(ClientError::Transport)?,
        };
        let (parts, bytes) = response.into_parts();
        Ok((parts.status, parts.headers, bytes))
    }

    /// Calls the API: `body` as JSON, a 2xx answer read as `T`, any other answer as a
    /// [`ClientError`]. A POST carries `idempotency_key`, or one made for this call; every retry
    /// carries the same one. Retries follow the client's [`RetryPolicy`], within its timeout.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        idempotency_key: Option<&str>,
    ) -> Result<Answered<T>, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|error| ClientError::Decode(error.to_string()))?;
        let key = match idempotency_key {
            Some(key) => Some(key.to_owned()),
            None if method == Method::POST => Some(new_idempotency_key()),
            None => None,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let request = self.build_request(&method, path, body.as_deref(), key.as_deref())?;
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let error = match tokio::time::timeout(remaining, self.transport.send(request)).await {
                Err(_) => return Err(ClientError::Timeout(self.timeout)),
                Ok(Err(message)) => ClientError::Transport(message),
                Ok(Ok(response)) if response.status().is_success() => {
                    let (parts, bytes) = response.into_parts();
                    return Ok(Answered {
                        value: decode(&bytes)?,
                        status: parts.status.as_u16(),
                        replayed: parts
                            .headers
                            .get("idempotent-replayed")
                            .is_some_and(|value| value == "true"),
                        idempotency_key: key,
                        attempts,
                        headers: parts.headers,
                    });
                }
                Ok(Ok(response)) => {
                    let (parts, bytes) = response.into_parts();
                    ClientError::from_answer(parts.status, &parts.headers, &bytes)
                }
            };
            if !error.is_retryable() || attempts > self.retry.max_retries {
                return Err(error);
            }
            let delay = self
                .retry
                .delay(attempts - 1, random_u64(), error.retry_after());
            if tokio::time::Instant::now() + delay >= deadline {
                return Err(error);
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// [`Client::request`] for its body alone.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        idempotency_key: Option<&str>,
    ) -> Result<T, ClientError> {
        Ok(self
            .request(method, path, body, idempotency_key)
            .await?
            .value)
    }

    /// Creates or updates a user (its e-mail; name and metadata cleared).
    pub async fn put_user(&self, user: &str, email: Option<&str>) -> Result<User, ClientError> {
        let body = serde_json::json!({ "email": email });
        self.call(Method::PUT, &user_path(user, ""), Some(&body), None)
            .await
    }

    /// A user's wallet, in the tenant's default currency or `currency`.
    pub async fn wallet(&self, user: &str, currency: Option<&str>) -> Result<Wallet, ClientError> {
        self.wallets().get(user, currency).await
    }

    /// Adds credits (kind `grant`); admin keys must give a reason.
    pub async fn credit(
        &self,
        user: &str,
        amount: i64,
        reason: Option<&str>,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        let mut credit = crate::types::Credit::amount(amount);
        credit.reason = reason.map(str::to_owned);
        self.wallets().credit(user, &credit, key).await
    }

    /// Spends credits.
    pub async fn debit(
        &self,
        user: &str,
        debit: &Debit,
        key: Option<&str>,
    ) -> Result<Receipt, ClientError> {
        self.wallets().debit(user, debit, key).await
    }

    /// Spends for several users at once; each item succeeds or fails on its own.
    pub async fn batch_debit(
        &self,
        debits: &[BatchDebit],
        key: Option<&str>,
    ) -> Result<Vec<Value>, ClientError> {
        self.wallets().batch_debit(debits, key).await
    }

    /// Reserves credits.
    pub async fn reserve(
        &self,
        user: &str,
        amount: i64,
        ttl_seconds: Option<u64>,
        key: Option<&str>,
    ) -> Result<Reservation, ClientError> {
        let mut hold = crate::types::Hold::amount(amount);
        hold.ttl_seconds = ttl_seconds;
        self.reservations().create(user, &hold, key).await
    }

    /// Charges a reservation (all of it when `amount` is `None`).
    pub async fn capture(
        &self,
        reservation_id: &str,
        amount: Option<i64>,
        key: Option<&str>,
    ) -> Result<Capture, ClientError> {
        self.reservations()
            .capture(reservation_id, amount, key)
            .await
    }

    /// Moves a reservation's expiry.
    pub async fn extend(
        &self,
        reservation_id: &str,
        ttl_seconds: u64,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "ttl_seconds": ttl_seconds });
        self.call(
            Method::POST,
            &format!("/v1/reservations/{}/extend", encode(reservation_id)),
            Some(&body),
            None,
        )
        .await
    }

    /// Releases a reservation.
    pub async fn release(&self, reservation_id: &str) -> Result<Value, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/reservations/{}/release", encode(reservation_id)),
            None::<&()>,
            None,
        )
        .await
    }

    /// Creates or replaces a catalogue action (admin).
    pub async fn put_action(&self, action: &str, cost: i64) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "cost": cost });
        self.billing().put_action(action, &body).await
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
        self.billing().put_package(package, &body).await
    }

    /// Creates or updates a tenant (platform).
    pub async fn put_tenant(&self, tenant: &str, name: Option<&str>) -> Result<Value, ClientError> {
        let body = serde_json::json!({ "name": name });
        self.tenants().put(tenant, &body).await
    }

    /// The wallet, active packages and actions of a user.
    pub async fn bootstrap(&self, user: &str) -> Result<Value, ClientError> {
        self.billing().bootstrap(user).await
    }
}

/// The body as `T`; an empty body (a 204) reads as `null`.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    let bytes = if bytes.is_empty() { b"null" } else { bytes };
    serde_json::from_slice(bytes).map_err(|error| {
        ClientError::Decode(format!("{error}: {}", String::from_utf8_lossy(bytes)))
    })
}

/// `/v1/users/{user}{suffix}`, the user id percent-encoded.
pub(crate) fn user_path(user: &str, suffix: &str) -> String {
    format!("/v1/users/{}{suffix}", encode(user))
}

/// Percent-encodes everything but unreserved characters: a path segment or a query value.
pub(crate) fn encode(segment: &str) -> String {
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

/// `?name=value&…` of the pairs whose value is present, values percent-encoded; empty if none.
pub(crate) fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if let Some(value) = value {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(name);
            out.push('=');
            out.push_str(&encode(value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::BoxFuture;
    use http::Response;
    use std::sync::Mutex;

    /// One scripted answer: status, body and headers, or no answer at all.
    type Step = Result<(u16, &'static str, Vec<(&'static str, &'static str)>), String>;
    type Script = Vec<Step>;

    /// Answers from a script, and records every request.
    struct Scripted {
        answers: Mutex<Script>,
        seen: Arc<Mutex<Vec<Request<Bytes>>>>,
    }

    impl Transport for Scripted {
        fn send(&self, request: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>> {
            self.seen.lock().unwrap().push(request);
            let next = self.answers.lock().unwrap().remove(0);
            Box::pin(async move {
                let (status, body, headers) = next?;
                let mut response = Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                Ok(response.body(Bytes::from_static(body.as_bytes())).unwrap())
            })
        }
    }

    fn scripted(script: Script) -> (Client, Arc<Mutex<Vec<Request<Bytes>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let transport = Scripted {
            answers: Mutex::new(script),
            seen: Arc::clone(&seen),
        };
        let client = Client::builder("http://creditd.test/", "k")
            .retry(RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(4),
            })
            .transport(transport)
            .build()
            .unwrap();
        (client, seen)
    }

    const RECEIPT: &str = r#"{"entry_id":"ent_1","charged":5,"balance":10,"available":10}"#;
    const IN_FLIGHT: &str =
        r#"{"type":"https://creditd.dev/problems/idempotency-key-in-flight","status":409}"#;
    const UNKNOWN: &str =
        r#"{"type":"https://creditd.dev/problems/write-outcome-unknown","status":500}"#;
    const BUSY: &str = r#"{"type":"https://creditd.dev/problems/server-busy","status":503}"#;
    const REUSED: &str =
        r#"{"type":"https://creditd.dev/problems/idempotency-key-reused","status":422}"#;

    fn key_of(request: &Request<Bytes>) -> Option<String> {
        request
            .headers()
            .get("idempotency-key")
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn a_write_is_retried_with_one_key_until_it_is_answered() {
        let (client, seen) = scripted(vec![
            Err("connection reset".into()),
            Ok((409, IN_FLIGHT, vec![])),
            Ok((500, UNKNOWN, vec![])),
            Ok((200, RECEIPT, vec![("idempotent-replayed", "true")])),
        ]);
        let receipt = client.debit("a b", &Debit::amount(5), None).await.unwrap();
        assert!(receipt.replayed);
        assert_eq!((receipt.charged, receipt.balance), (5, 10));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4);
        let key = key_of(&seen[0]).expect("a POST gets a key");
        for request in seen.iter() {
            assert_eq!(key_of(request).as_deref(), Some(key.as_str()));
            assert_eq!(request.uri(), "http://creditd.test/v1/users/a%20b/debit");
            assert_eq!(request.headers()["authorization"], "Bearer k");
            assert_eq!(request.body().as_ref(), br#"{"amount":5}"#);
        }
    }

    #[tokio::test]
    async fn the_caller_key_is_kept_and_other_4xx_are_not_retried() {
        let (client, seen) = scripted(vec![Ok((422, REUSED, vec![]))]);
        let error = client
            .debit("u", &Debit::amount(5), Some("order-1"))
            .await
            .unwrap_err();
        assert!(matches!(error, ClientError::IdempotencyKeyReused(_)));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(key_of(&seen[0]).as_deref(), Some("order-1"));
    }

    #[tokio::test]
    async fn retries_run_out_with_the_last_error() {
        let (client, seen) = scripted(vec![
            Ok((503, BUSY, vec![])),
            Ok((503, BUSY, vec![])),
            Ok((503, BUSY, vec![])),
            Ok((503, BUSY, vec![])),
        ]);
        let error = client.wallet("u", None).await.unwrap_err();
        assert!(matches!(error, ClientError::ServerBusy(_)), "{error:?}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "one attempt and three retries");
        assert!(key_of(&seen[0]).is_none(), "a GET carries no key");
    }

    #[tokio::test]
    async fn a_retry_after_past_the_timeout_ends_the_call() {
        let (client, seen) = scripted(vec![Ok((503, BUSY, vec![("retry-after", "30")]))]);
        let client = client.with_timeout(Duration::from_secs(1));
        let started = std::time::Instant::now();
        let error = client.wallet("u", None).await.unwrap_err();
        assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_transport_that_never_answers_times_out() {
        struct Silent;
        impl Transport for Silent {
            fn send(&self, _: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>> {
                Box::pin(std::future::pending())
            }
        }
        let client = Client::builder("http://creditd.test", "k")
            .timeout(Duration::from_millis(50))
            .transport(Silent)
            .build()
            .unwrap();
        let error = client.wallet("u", None).await.unwrap_err();
        assert_eq!(error, ClientError::Timeout(Duration::from_millis(50)));
    }

    #[test]
    fn paths_and_queries_are_encoded() {
        assert_eq!(
            user_path("ada@x.io/1", "/wallet"),
            "/v1/users/ada%40x.io%2F1/wallet"
        );
        assert_eq!(
            query(&[
                ("from", Some("2026-01-01T00:00:00+01:00")),
                ("to", None),
                ("limit", Some("5"))
            ]),
            "?from=2026-01-01T00%3A00%3A00%2B01%3A00&limit=5"
        );
        assert_eq!(query(&[("to", None)]), "");
    }
}
