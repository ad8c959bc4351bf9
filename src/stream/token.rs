//! Signed, short-lived tokens: a browser's key to one user's balance stream (`EventSource` cannot
//! send an `Authorization` header) and the link to one user's hosted top-up page.
//!
//! A token is `v1.<purpose>.<tenant hex>.<user hex>.<expires_at seconds>.<extra hex>.<mac hex>`,
//! where the MAC is HMAC-SHA256 under the server's signing key of everything before it. Ids are
//! hex-encoded because they may hold `.`; the result is safe in a path and a query. The purpose
//! is part of what is signed, so a stream token is never a portal link and the other way round.
//! Nothing is stored: a token is valid until it expires, and the key's rotation revokes them all.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// What a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Reading one user's balance stream.
    Stream,
    /// One user's portal page, its checkout and its stream tokens.
    Portal,
}

impl Purpose {
    fn tag(self) -> &'static str {
        match self {
            Purpose::Stream => "stream",
            Purpose::Portal => "portal",
        }
    }
}

/// A token's contents, once its MAC checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The tenant.
    pub tenant: String,
    /// The user.
    pub user: String,
    /// Unix seconds after which it is refused.
    pub expires_at: i64,
    /// Purpose-specific text (the portal's return URL), empty if none.
    pub extra: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this purpose, or its MAC does not match: changed or made up.
    #[error("the token is not valid (changed, made up, or for another purpose)")]
    Invalid,
    /// Valid, but its time is over.
    #[error("the token has expired")]
    Expired,
}

/// Signs and checks tokens with one key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Signer { .. }")
    }
}

const VERSION: &str = "v1";

impl Signer {
    /// A signer with `key`.
    pub fn new(key: &[u8]) -> Signer {
        Signer { key: key.to_vec() }
    }

    fn mac(&self, signed: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(signed.as_bytes());
        mac
    }

    /// A token of `purpose` for `claims`.
    pub fn sign(&self, purpose: Purpose, claims: &Claims) -> String {
        let signed = format!(
            "{VERSION}.{}.{}.{}.{}.{}",
            purpose.tag(),
            hex(claims.tenant.as_bytes()),
            hex(claims.user.as_bytes()),
            claims.expires_at,
            hex(claims.extra.as_bytes()),
        );
        let tag = self.mac(&signed).finalize().into_bytes();
        format!("{signed}.{}", hex(&tag))
    }

    /// The claims of `token` if it is a valid token of `purpose` that has not expired at
    /// `now_seconds`. The MAC is compared in constant time, and checked before the expiry, so
    /// that a made-up token never learns whether its time would have passed.
    pub fn verify(
        &self,
        purpose: Purpose,
        token: &str,
        now_seconds: i64,
    ) -> Result<Claims, TokenError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let tag = unhex(tag).ok_or(TokenError::Invalid)?;
        self.mac(signed)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut parts = signed.split('.');
        let mut next = || parts.next().ok_or(TokenError::Invalid);
        if next()? != VERSION || next()? != purpose.tag() {
            return Err(TokenError::Invalid);
        }
        let text = |part: &str| {
            unhex(part)
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(TokenError::Invalid)
        };
        let tenant = text(next()?)?;
        let user = text(next()?)?;
        let expires_at: i64 = next()?.parse().map_err(|_| TokenError::Invalid)?;
        let extra = text(next()?)?;
        if parts.next().is_some() {
            return Err(TokenError::Invalid);
        }
        if now_seconds >= expires_at {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            tenant,
            user,
            expires_at,
            extra,
        })
    }
}

/// The signing key: `configured` if set, else the one kept in `<data_dir>/signing.key`, made
/// (32 random bytes, hex) and synced at the first start.
pub fn load_key(configured: Option<&str>, data_dir: &std::path::Path) -> std::io::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds fewer than 32 characters", path.display()),
            ))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let key = hex(&rand::random::<[u8; 32]>());
    let temporary = data_dir.join(format!("{KEY_FILE}.tmp"));
    {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(key.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(key.into_bytes())
}

/// The file in the data directory that keeps the generated signing key.
pub const KEY_FILE: &str = "signing.key";

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |byte: u8| match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: i64) -> Claims {
        Claims {
            tenant: "acme".into(),
            user: "ada.lovelace".into(),
            expires_at,
            extra: "https://app.example/back".into(),
        }
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign(Purpose::Portal, &claims(1_000));
        assert_eq!(
            signer.verify(Purpose::Portal, &token, 999),
            Ok(claims(1_000))
        );
        assert_eq!(
            signer.verify(Purpose::Portal, &token, 1_000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_changed_token_another_purpose_or_another_key_is_invalid() {
        let signer = Signer::new(b"0123456789abcdef0123456789abcdef");
        let token = signer.sign(Purpose::Stream, &claims(1_000));
        assert_eq!(
            signer.verify(Purpose::Portal, &token, 0),
            Err(TokenError::Invalid)
        );
        let other = Signer::new(b"another key, another key, another");
        assert_eq!(
            other.verify(Purpose::Stream, &token, 0),
            Err(TokenError::Invalid)
        );
        // Later expiry, same MAC: refused.
        let forged = token.replacen(".1000.", ".9999.", 1);
        assert_ne!(forged, token);
        assert_eq!(
            signer.verify(Purpose::Stream, &forged, 0),
            Err(TokenError::Invalid)
        );
        // Another user (hex of "bob"), same MAC: refused.
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[3] = "626f62";
        assert_eq!(
            signer.verify(Purpose::Stream, &parts.join("."), 0),
            Err(TokenError::Invalid)
        );
        for junk in ["", ".", "v1", "v1.stream.zz.zz.1.zz.zz"] {
            assert_eq!(
                signer.verify(Purpose::Stream, junk, 0),
                Err(TokenError::Invalid)
            );
        }
    }

    #[test]
    fn the_generated_key_is_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_key(None, dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_key(None, dir.path()).unwrap(), first);
        assert_eq!(
            load_key(Some("configured-secret"), dir.path()).unwrap(),
            b"configured-secret"
        );
    }
}
