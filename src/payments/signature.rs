//! Webhook signatures: Paystack's hex HMAC-SHA512 of the raw body, and the `t=…,v1=…` scheme
//! (HMAC-SHA256 of `timestamp.body`) that Stripe uses and creditd uses for its own outbound events.
//! Every check compares in constant time and runs on the raw bytes, before anything is parsed.

use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::{Sha256, Sha512};

/// Lowercase hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
    out
}

/// Decodes hex (either case); `None` if it is not hex.
pub fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hex HMAC-SHA512 of `body` under `key` (Paystack's `x-paystack-signature`).
pub fn hmac_sha512_hex(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(body);
    hex_encode(&mac.finalize().into_bytes())
}

/// Whether `signature` (hex) is the HMAC-SHA512 of `body` under `key`, compared in constant time.
pub fn verify_hmac_sha512(key: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(tag) = hex_decode(signature) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha512> as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

fn sha256_mac(key: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value `t=<timestamp>,v1=<hex HMAC-SHA256 of "timestamp.body">`.
pub fn sign_timestamped(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = sha256_mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex_encode(&tag))
}

/// Why a timestamped signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("missing signature")]
    Missing,
    /// The header is not `t=…,v1=…`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is too far from now (a replay, or a skewed clock).
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` signature matches.
    #[error("signature does not match")]
    Mismatch,
}

/// The text of the signature header `name`: `Ok(None)` when it is absent, and
/// [`SignatureError::Malformed`] when it is present but not visible ASCII. A signature is hex and
/// punctuation, so such a value can be no signature; it is still one that was sent, and calling
/// it missing would send whoever reads the answer looking for a header that is there.
pub fn signature_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
) -> Result<Option<&'h str>, SignatureError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| SignatureError::Malformed),
    }
}

/// Checks a `t=…,v1=…[,v1=…]` header against `body`: the timestamp must be within `tolerance_s`
/// of `now_s`, and any one `v1` must match (several appear while a secret is being rolled). The
/// header and the number of signatures weighed are bounded, and the body is hashed once. The
/// check itself is the client crate's (`creditd_client::verify_signature`), which receivers of
/// creditd's own notifications run: one implementation of the scheme for both directions.
pub fn verify_timestamped(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    use creditd_client::{verify_signature, SignatureVerificationError as Refused, VerifyOptions};
    let options = VerifyOptions {
        tolerance: std::time::Duration::from_secs(tolerance_s.unsigned_abs()),
        now: Some(now_s),
    };
    verify_signature(body, header, secret, options).map_err(|refused| match refused {
        Refused::Missing => SignatureError::Missing,
        Refused::Stale { .. } => SignatureError::Stale,
        Refused::Mismatch => SignatureError::Mismatch,
        Refused::Malformed | Refused::Body(_) => SignatureError::Malformed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex_encode(&[0, 15, 255]), "000fff");
        assert_eq!(hex_decode("000FFF"), Some(vec![0, 15, 255]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn hmac_sha512_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let expected = "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737";
        assert_eq!(
            hmac_sha512_hex(b"Jefe", b"what do ya want for nothing?"),
            expected
        );
        assert!(verify_hmac_sha512(
            b"Jefe",
            b"what do ya want for nothing?",
            expected
        ));
        assert!(!verify_hmac_sha512(
            b"Jefe",
            b"what do ya want for nothing!",
            expected
        ));
        assert!(!verify_hmac_sha512(
            b"Jefe",
            b"what do ya want for nothing?",
            "not hex"
        ));
    }

    #[test]
    fn a_signature_header_that_is_not_visible_ascii_is_malformed_not_missing() {
        let mut headers = HeaderMap::new();
        assert_eq!(signature_header(&headers, "x-signature"), Ok(None));
        headers.insert("x-signature", http::HeaderValue::from_static("t=1,v1=ab"));
        assert_eq!(
            signature_header(&headers, "x-signature"),
            Ok(Some("t=1,v1=ab"))
        );
        for opaque in [&b"\xc3\xa9"[..], b"ab\x80cd", b"caf\xc3\xa9"] {
            let value = http::HeaderValue::from_bytes(opaque).unwrap();
            headers.insert("x-signature", value);
            assert_eq!(
                signature_header(&headers, "x-signature"),
                Err(SignatureError::Malformed),
                "{opaque:?}"
            );
        }
    }

    #[test]
    fn timestamped_signatures() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign_timestamped(b"whsec_test", 1_700_000_000, body);
        assert!(verify_timestamped(b"whsec_test", Some(&header), body, 1_700_000_100, 300).is_ok());
        assert_eq!(
            verify_timestamped(b"whsec_test", Some(&header), body, 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_timestamped(b"whsec_other", Some(&header), body, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_timestamped(b"whsec_test", Some(&header), b"{}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_timestamped(b"whsec_test", None, body, 1_700_000_000, 300),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_timestamped(b"whsec_test", Some("garbage"), body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        // Several v1 signatures: any one may match.
        let (_, good) = header.split_once(",v1=").unwrap();
        let rolled = format!("t=1700000000,v1={},v1={good}", "00".repeat(32));
        assert!(verify_timestamped(b"whsec_test", Some(&rolled), body, 1_700_000_000, 300).is_ok());
        // Bounded work: a flood of signatures, or only empty ones, is refused before any hashing.
        let flood = format!("t=1700000000{},v1={good}", ",v1=".repeat(100_000));
        assert_eq!(
            verify_timestamped(b"whsec_test", Some(&flood), body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        let many = format!("t=1700000000{},v1={good}", format!(",v1={good}").repeat(8));
        assert_eq!(
            verify_timestamped(b"whsec_test", Some(&many), body, 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_timestamped(b"whsec_test", Some("t=1,v1="), body, 1, 300),
            Err(SignatureError::Malformed)
        );
        // Timestamps at the ends of the range are stale, not an overflow.
        for t in [i64::MIN, i64::MAX] {
            let header = format!("t={t},v1={good}");
            assert_eq!(
                verify_timestamped(b"whsec_test", Some(&header), body, 1_700_000_000, 300),
                Err(SignatureError::Stale)
            );
        }
    }
}
