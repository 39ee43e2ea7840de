//! Who is calling: bearer credentials into a [`Principal`], and signed result links.
//!
//! Two kinds of credential, told apart by shape (a JWT has three dot-separated parts):
//! - **API keys** (`sk_...`, 32 random bytes). The configuration stores only the key's
//!   sha256 with the principal it stands for; a presented key is hashed and looked up.
//!   A lookup by hash leaks nothing useful through timing: learning a prefix of a hash
//!   does not help find a key.
//! - **JWTs** ([`jwt`]): HS256 with a shared secret, or signed by an identity provider
//!   whose public keys Sluice fetches from its JWKS document ([`jwks`]).
//!
//! Result links ([`link`]) are signed URLs that download one result without a credential.
//!
//! This module owns credential checks only. It never reads Postgres or decides what a
//! principal may see: the API applies [`Principal::scope`] to every store call.

pub mod jwks;
pub mod jwt;
pub mod link;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
pub use jwt::{JwtVerifier, sign_jwt};
pub use link::{LinkError, LinkSigner};

type HmacSha256 = Hmac<Sha256>;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub tenant: String,
    /// Tiers it may use; all when `None`.
    pub tiers: Option<Vec<String>>,
    pub default_tier: Option<String>,
    pub admin: bool,
    pub quota_key: String,
    pub max_running: Option<u32>,
    pub max_queued: Option<u32>,
}

impl Principal {
    pub fn may_use(&self, tier: &str) -> bool {
        self.tiers
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == tier))
    }

    /// The tenant whose executions this principal sees; `None` (all) for admins.
    pub fn scope(&self) -> Option<&str> {
        if self.admin { None } else { Some(&self.tenant) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send `Authorization: Bearer <API key or JWT>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <API key or JWT>`")]
    Malformed,
    #[error("unknown API key")]
    UnknownKey,
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid token: bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    /// The identity provider's keys cannot be had: the token may well be valid (503).
    #[error("{0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// The `code` of the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_credentials",
            AuthError::Malformed => "malformed_credentials",
            AuthError::UnknownKey => "invalid_api_key",
            AuthError::InvalidToken(_) => "invalid_token",
            AuthError::BadSignature => "invalid_token_signature",
            AuthError::Expired => "token_expired",
            AuthError::KeysUnavailable(_) => "unavailable",
        }
    }
}

/// Verifies credentials against the configuration.
#[derive(Default)]
pub struct Authenticator {
    keys: HashMap<String, Principal>,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Authenticator, AuthError> {
        let keys = config
            .api_keys
            .iter()
            .map(|k| {
                (
                    k.sha256.to_ascii_lowercase(),
                    Principal {
                        name: k.name.clone(),
                        tenant: k.tenant.clone(),
                        tiers: k.tiers.clone(),
                        default_tier: k.default_tier.clone(),
                        admin: k.admin,
                        quota_key: k.quota_key.clone().unwrap_or_else(|| k.name.clone()),
                        max_running: k.max_running,
                        max_queued: k.max_queued,
                    },
                )
            })
            .collect();
        let jwt = config.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Authenticator { keys, jwt })
    }

    /// The principal behind an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, credential) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        let credential = credential.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
            return Err(AuthError::Malformed);
        }
        if credential.split('.').count() == 3 {
            let jwt = self
                .jwt
                .as_ref()
                .ok_or_else(|| AuthError::InvalidToken("JWTs are not accepted here".into()))?;
            return jwt.verify(credential, unix_now()).await;
        }
        self.keys
            .get(&hash_key(credential))
            .cloned()
            .ok_or(AuthError::UnknownKey)
    }
}

/// Hex sha256 of an API key: what the configuration stores.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new random API key.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!("sk_{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac_of(key, message).finalize().into_bytes().to_vec()
}

/// Whether `signature` is the HMAC-SHA256 of `message`, compared in constant time.
fn hmac_sha256_matches(key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    hmac_of(key, message).verify_slice(signature).is_ok()
}

/// Hex HMAC-SHA256 of `message` (webhook signatures).
pub fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_of(key, message).finalize().into_bytes())
}

fn hmac_of(key: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn api_keys_are_looked_up_by_hash() {
        let key = generate_key();
        assert!(key.starts_with("sk_") && key.len() > 40);
        let config = AuthConfig {
            api_keys: vec![crate::config::ApiKeyConfig {
                name: "alice".into(),
                sha256: hash_key(&key),
                tenant: "acme".into(),
                tiers: None,
                default_tier: None,
                admin: false,
                quota_key: None,
                max_running: None,
                max_queued: None,
            }],
            jwt: None,
        };
        let auth = Authenticator::new(&config).unwrap();
        let p = auth
            .authenticate(Some(&format!("Bearer {key}")))
            .await
            .unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(auth.authenticate(None).await, Err(AuthError::Missing));
        assert_eq!(
            auth.authenticate(Some(&key)).await,
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.authenticate(Some("Bearer sk_nope")).await,
            Err(AuthError::UnknownKey)
        );
    }
}
