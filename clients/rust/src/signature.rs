//! Checks the notifications creditd sends to a tenant's endpoint (`wallet.low_balance`,
//! `wallet.depleted`, `topup.succeeded`, `topup.failed`, `autotopup.disabled`). Each carries
//! `Creditd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`, the way
//! Stripe signs its webhooks. The check runs on the raw bytes, before anything is parsed, compares
//! in constant time, and refuses a timestamp too far from now (a replayed delivery).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Creditd-Signature";

/// The default tolerance between the signature's timestamp and now: 300 s.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Longest header weighed: a timestamp and a few signatures (two while a secret is rolled).
const MAX_HEADER_BYTES: usize = 1024;
/// Most `v1` signatures weighed (one, or two while a secret is rolled).
const MAX_CANDIDATES: usize = 8;

/// A verified notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Notification {
    /// Unique per notification (`evt_<lsn>_<type>`): deliveries are at least once, so dedupe on it.
    pub id: String,
    /// The type, such as `wallet.depleted`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the change it follows from happened (RFC 3339).
    pub created_at: String,
    /// The tenant.
    pub tenant_id: String,
    /// The type's data (`user_id`, `balance`, `reference`…).
    pub data: Value,
}

/// Why a notification was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureVerificationError {
    /// No signature header.
    Missing,
    /// The header is not `t=…,v1=…`.
    Malformed,
    /// The timestamp is further from now than the tolerance.
    Stale {
        /// The signature's timestamp (unix seconds).
        timestamp: i64,
        /// Now (unix seconds).
        now: i64,
    },
    /// No `v1` signature matches the body under the secret.
    Mismatch,
    /// The signature matches but the body is not a notification.
    Body(String),
}

impl fmt::Display for SignatureVerificationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no Creditd-Signature header"),
            Self::Malformed => f.write_str("the Creditd-Signature header is not t=…,v1=…"),
            Self::Stale { timestamp, now } => write!(
                f,
                "the signature's timestamp {timestamp} is too far from now ({now})"
            ),
            Self::Mismatch => f.write_str("the signature does not match the body"),
            Self::Body(error) => write!(f, "the body is not a notification: {error}"),
        }
    }
}

impl std::error::Error for SignatureVerificationError {}

/// How [`verify_notification_with`] checks the timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// The most the timestamp may differ from `now` (default 300 s).
    pub tolerance: Duration,
    /// Now, in unix seconds (default: the system clock).
    pub now: Option<i64>,
}

impl Default for VerifyOptions {
    fn default() -> VerifyOptions {
        VerifyOptions {
            tolerance: DEFAULT_TOLERANCE,
            now: None,
        }
    }
}

/// Verifies a notification with the default options: `raw_body` exactly as received,
/// `signature_header` the `Creditd-Signature` value (`None` if absent), `secret` the tenant's
/// `webhook_secret`.
pub fn verify_notification(
    raw_body: &[u8],
    signature_header: Option<&str>,
    secret: &str,
) -> Result<Notification, SignatureVerificationError> {
    verify_notification_with(raw_body, signature_header, secret, VerifyOptions::default())
}

/// [`verify_notification`] with a tolerance and a clock of the caller's.
pub fn verify_notification_with(
    raw_body: &[u8],
    signature_header: Option<&str>,
    secret: &str,
    options: VerifyOptions,
) -> Result<Notification, SignatureVerificationError> {
    verify_signature(raw_body, signature_header, secret.as_bytes(), options)?;
    serde_json::from_slice(raw_body)
        .map_err(|error| SignatureVerificationError::Body(error.to_string()))
}

/// Only the signature check of [`verify_notification_with`], for a body of any shape.
pub fn verify_signature(
    raw_body: &[u8],
    signature_header: Option<&str>,
    secret: &[u8],
    options: VerifyOptions,
) -> Result<(), SignatureVerificationError> {
    let header = signature_header.ok_or(SignatureVerificationError::Missing)?;
    if header.len() > MAX_HEADER_BYTES {
        return Err(SignatureVerificationError::Malformed);
    }
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureVerificationError::Malformed)?;
        match name {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureVerificationError::Malformed)?,
                )
            }
            "v1" => {
                let tag = hex_decode(value).ok_or(SignatureVerificationError::Malformed)?;
                // An HMAC-SHA256 is 32 bytes; anything else can match nothing.
                if tag.len() == 32 {
                    candidates.push(tag);
                }
            }
            // Other schemes (a future v2) are skipped, as Stripe's verifiers do.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureVerificationError::Malformed)?;
    if candidates.is_empty() || candidates.len() > MAX_CANDIDATES {
        return Err(SignatureVerificationError::Malformed);
    }
    let now = options.now.unwrap_or_else(unix_now);
    let tolerance = i64::try_from(options.tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureVerificationError::Stale { timestamp, now });
    }
    let mac = mac(secret, timestamp, raw_body);
    // `verify_slice` compares in constant time.
    if candidates
        .iter()
        .any(|tag| mac.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureVerificationError::Mismatch)
    }
}

/// The header value creditd would send for `raw_body` at `timestamp`: for tests of a receiver.
pub fn sign(raw_body: &[u8], secret: &[u8], timestamp: i64) -> String {
    let tag = mac(secret, timestamp, raw_body).finalize().into_bytes();
    let hex: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_0123456789abcdef";
    const BODY: &[u8] = br#"{"id":"evt_7_wallet_depleted","type":"wallet.depleted","created_at":"2026-01-01T00:00:00.000Z","tenant_id":"acme","data":{"user_id":"ada","balance":0}}"#;
    const AT: i64 = 1_767_225_600;

    fn at(now: i64) -> VerifyOptions {
        VerifyOptions {
            now: Some(now),
            ..VerifyOptions::default()
        }
    }

    #[test]
    fn a_signed_notification_verifies_and_parses() {
        let header = sign(BODY, SECRET.as_bytes(), AT);
        let notification =
            verify_notification_with(BODY, Some(&header), SECRET, at(AT + 10)).unwrap();
        assert_eq!(notification.kind, "wallet.depleted");
        assert_eq!(notification.data["user_id"], "ada");
        // A second signature under a rolled secret: either one may match.
        let rolled = format!("{header},v1={}", "ab".repeat(32));
        verify_notification_with(BODY, Some(&rolled), SECRET, at(AT)).unwrap();
    }

    #[test]
    fn a_known_vector_of_the_server_scheme() {
        // HMAC-SHA256 under "secret" of "1.{}", computed apart (Python's hmac module).
        assert_eq!(
            sign(b"{}", b"secret", 1),
            "t=1,v1=1122767b193110cfec322b6f199b599edbf608ed087f2d27afb0b97d99523908"
        );
    }

    #[test]
    fn tampering_staleness_and_bad_headers_are_refused() {
        let header = sign(BODY, SECRET.as_bytes(), AT);
        let mut tampered = BODY.to_vec();
        tampered[60] ^= 1;
        assert_eq!(
            verify_notification_with(&tampered, Some(&header), SECRET, at(AT)),
            Err(SignatureVerificationError::Mismatch)
        );
        assert_eq!(
            verify_notification_with(BODY, Some(&header), "another-secret", at(AT)),
            Err(SignatureVerificationError::Mismatch)
        );
        assert_eq!(
            verify_notification_with(BODY, Some(&header), SECRET, at(AT + 301)),
            Err(SignatureVerificationError::Stale {
                timestamp: AT,
                now: AT + 301
            })
        );
        assert_eq!(
            verify_notification_with(BODY, Some(&header), SECRET, at(AT - 301)),
            Err(SignatureVerificationError::Stale {
                timestamp: AT,
                now: AT - 301
            })
        );
        verify_notification_with(BODY, Some(&header), SECRET, at(AT + 300)).unwrap();
        let wide = VerifyOptions {
            tolerance: Duration::from_secs(3600),
            now: Some(AT + 3000),
        };
        verify_notification_with(BODY, Some(&header), SECRET, wide).unwrap();
        assert_eq!(
            verify_notification_with(BODY, None, SECRET, at(AT)),
            Err(SignatureVerificationError::Missing)
        );
        for bad in [
            "",
            "v1=00",
            &format!("t=x,v1={}", "00".repeat(32)),
            "t=1,v1=zz",
            &"t=1,".repeat(300),
        ] {
            assert_eq!(
                verify_notification_with(BODY, Some(bad), SECRET, at(AT)),
                Err(SignatureVerificationError::Malformed),
                "{bad}"
            );
        }
        // A signature of the wrong length can match nothing: with no other, the header is
        // malformed, as it is with more signatures than a sender ever sends (bounded work).
        assert_eq!(
            verify_notification_with(BODY, Some(&format!("t={AT},v1=00ff")), SECRET, at(AT)),
            Err(SignatureVerificationError::Malformed)
        );
        let good = sign(BODY, SECRET.as_bytes(), AT);
        let (_, tag) = good.split_once(",v1=").unwrap();
        let many = format!("t={AT}{}", format!(",v1={tag}").repeat(MAX_CANDIDATES + 1));
        assert_eq!(
            verify_notification_with(BODY, Some(&many), SECRET, at(AT)),
            Err(SignatureVerificationError::Malformed)
        );
        let rolled = format!("t={AT},v1={},v1={tag}", "00".repeat(32));
        assert!(verify_notification_with(BODY, Some(&rolled), SECRET, at(AT)).is_ok());
        let signed_garbage = sign(b"not json", SECRET.as_bytes(), AT);
        assert!(matches!(
            verify_notification_with(b"not json", Some(&signed_garbage), SECRET, at(AT)),
            Err(SignatureVerificationError::Body(_))
        ));
    }
}
