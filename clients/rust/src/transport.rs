//! How a request leaves the client: the [`Transport`] seam (hyper's pooled HTTP/1.1 client by
//! default, anything else in a test or behind a proxy), the [`RetryPolicy`] and its backoff
//! schedule, and the idempotency keys.
//!
//! Retries follow one rule: an attempt is repeated only when its error
//! [is retryable](crate::ClientError::is_retryable) (no answer, 503, a key still in flight, a
//! write whose outcome is unknown), only while the call's timeout leaves room for the wait, and
//! always with the same `Idempotency-Key`, so that a write the server did apply is answered
//! from its stored result instead of being applied twice.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

/// A boxed future, as [`Transport::send`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A body still arriving, as [`Transport::open`] returns it.
pub type StreamingBody = BoxBody<Bytes, String>;

/// Sends one request and collects its whole answer. An `Err` means there was no answer (refused,
/// reset, closed early); any status, 5xx included, is an `Ok`.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` (its URI absolute) and returns the answer with its body.
    fn send(&self, request: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>>;

    /// Sends `request` and returns the answer once its head has arrived, the body still
    /// arriving: for the live balance stream. The default refuses; [`HyperTransport`] streams.
    fn open(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'_, Result<Response<StreamingBody>, String>> {
        drop(request);
        Box::pin(async { Err("this transport does not stream".to_owned()) })
    }
}

/// The default transport: hyper's HTTP/1.1 client, keeping connections alive (`TCP_NODELAY`).
#[derive(Clone)]
pub struct HyperTransport {
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl HyperTransport {
    /// A transport keeping up to `idle_per_host` idle connections per host.
    pub fn new(idle_per_host: usize) -> HyperTransport {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        HyperTransport { http }
    }
}

impl Default for HyperTransport {
    fn default() -> HyperTransport {
        HyperTransport::new(1024)
    }
}

impl Transport for HyperTransport {
    fn send(&self, request: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, String>> {
        Box::pin(async move {
            let response = self
                .http
                .request(request.map(Full::new))
                .await
                .map_err(|error| describe(&error))?;
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|error| describe(&error))?
                .to_bytes();
            Ok(Response::from_parts(parts, bytes))
        })
    }

    fn open(
        &self,
        request: Request<Bytes>,
    ) -> BoxFuture<'_, Result<Response<StreamingBody>, String>> {
        Box::pin(async move {
            let response = self
                .http
                .request(request.map(Full::new))
                .await
                .map_err(|error| describe(&error))?;
            Ok(response.map(|body| body.map_err(|error| describe(&error)).boxed()))
        })
    }
}

/// An error with its chain of causes, which is where hyper says what actually happened.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// When to try a call again. Defaults: 3 retries, 100 ms doubling to at most 2 s, each delay
/// jittered down by up to half, and never past the call's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (default 3; 0 turns retries off).
    pub max_retries: u32,
    /// The delay before the first retry (default 100 ms); it doubles for each further retry.
    pub base_delay: Duration,
    /// The longest delay between two attempts (default 2 s), `Retry-After` aside.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry `retry` (0 for the first): `base_delay × 2^retry`, at most
    /// `max_delay`, less a jitter of up to half of it drawn from `random`, and at least the
    /// answer's `retry_after` when it gave one.
    pub fn delay(&self, retry: u32, random: u64, retry_after: Option<Duration>) -> Duration {
        let ceiling = u64::try_from(self.max_delay.as_millis()).unwrap_or(u64::MAX);
        let base = u64::try_from(self.base_delay.as_millis()).unwrap_or(u64::MAX);
        let full = base
            .checked_shl(retry.min(63))
            .filter(|delay| delay >> retry.min(63) == base)
            .unwrap_or(u64::MAX)
            .min(ceiling);
        let half = full / 2;
        let jitter = if half == 0 { 0 } else { random % (half + 1) };
        let backoff = Duration::from_millis(full - jitter);
        match retry_after {
            Some(after) if after > backoff => after,
            _ => backoff,
        }
    }
}

/// A random 64-bit number. Idempotency keys must be unique, not secret, so the standard library's
/// per-process random hash keys, over a counter and the clock, are enough: no extra dependency.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A random UUID v4 (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), the form of the idempotency keys
/// the client makes.
pub fn new_idempotency_key() -> String {
    let high = random_u64();
    let low = random_u64();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling_with_at_most_half_jitter() {
        let policy = RetryPolicy::default();
        // No jitter (random 0): 100, 200, 400, 800, 1600, then the 2 s ceiling.
        let schedule: Vec<u128> = (0..7)
            .map(|retry| policy.delay(retry, 0, None).as_millis())
            .collect();
        assert_eq!(schedule, [100, 200, 400, 800, 1600, 2000, 2000]);
        for random in [1, 7, 49, 50, 51, 12_345, u64::MAX] {
            for retry in 0..8 {
                let full = policy.delay(retry, 0, None);
                let delay = policy.delay(retry, random, None);
                assert!(
                    delay <= full && delay >= full / 2,
                    "{retry} {random}: {delay:?}"
                );
            }
        }
        // A huge retry count neither overflows nor passes the ceiling.
        assert_eq!(policy.delay(200, 0, None), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, 0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            policy.delay(5, 0, Some(Duration::from_millis(10))),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn idempotency_keys_are_uuid_v4_and_differ() {
        let keys: std::collections::HashSet<String> =
            (0..1000).map(|_| new_idempotency_key()).collect();
        assert_eq!(keys.len(), 1000);
        for key in keys.iter().take(20) {
            assert_eq!(key.len(), 36);
            let parts: Vec<&str> = key.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(parts[2].starts_with('4'), "{key}");
            assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{key}");
        }
    }
}
