//! How a notification is signed, the way Stripe signs its webhooks:
//! `Creditd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body" under the tenant's secret>`.
//! The scheme itself is shared with the gateways' inbound checks ([`crate::payments::signature`]);
//! this module fixes the header and what is signed, so a tenant can check it with any Stripe-style
//! verifier.

use crate::payments::signature::sign_timestamped;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Creditd-Signature";

/// The [`SIGNATURE_HEADER`] value for `body`, sent at `now_s` (unix seconds), under the tenant's
/// `secret`.
pub fn sign(secret: &[u8], now_s: i64, body: &[u8]) -> String {
    sign_timestamped(secret, now_s, body)
}
