//! Who is calling: bearer credentials into a [`Principal`], and signed result links.
//!
//! Two kinds of credential, told apart by shape (a JWT has three dot-separated parts):
//! - **API keys** (`sk_...`, 32 random bytes). The configuration stores only the key's
//!   sha256 with the principal it stands for; a presented key is hashed and looked up.
//!   A lookup by hash leaks nothing useful through timing: learning a prefix of a hash
//!   does not help find a key.
//! - **JWTs**, HS256 only (the `alg` header must say so: `none` and asymmetric algorithms
//!   are refused), signature compared in constant time, `exp` required, `nbf`, `iss` and
//!   `aud` checked when present or configured. Claims: `sub`, `tenant`, `tiers`, `tier`,
//!   `quota_key`, `admin`.
//!
//! Result links are `expires` plus an HMAC-SHA256 over the execution id, the result's
//! object key and `expires`, so a link is bound to one result of one attempt and cannot
//! be stretched or moved to another execution.
//!
//! This module owns credential checks only. It never reads Postgres or decides what a
//! principal may see: the API applies [`Principal::scope`] to every store call.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, JwtConfig};

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
        }
    }
}

/// Verifies credentials against the configuration.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    keys: HashMap<String, Principal>,
    jwt: Option<JwtConfig>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Authenticator {
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
        Authenticator {
            keys,
            jwt: config.jwt.clone(),
        }
    }

    /// The principal behind an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
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
            return verify_jwt(credential, jwt, unix_now());
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

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
}

/// `aud` is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    tenant: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iss: Option<String>,
    aud: Option<Audience>,
    #[serde(default)]
    tiers: Option<Vec<String>>,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    quota_key: Option<String>,
    #[serde(default)]
    admin: bool,
    /// Per-tenant caps for this principal, like an API key's `max_running`/`max_queued`.
    max_running: Option<u32>,
    max_queued: Option<u32>,
}

fn verify_jwt(token: &str, config: &JwtConfig, now: i64) -> Result<Principal, AuthError> {
    let invalid = |m: &str| AuthError::InvalidToken(m.to_string());
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("not a JWT"));
    };
    let header: JwtHeader = decode_json(header).ok_or_else(|| invalid("unreadable header"))?;
    if header.alg != "HS256" {
        return Err(AuthError::InvalidToken(format!(
            "algorithm `{}` is not accepted; use HS256",
            header.alg
        )));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| invalid("signature is not base64url"))?;
    let signed_len = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    let mut mac = HmacSha256::new_from_slice(config.secret.as_bytes())
        .map_err(|_| invalid("unusable secret"))?;
    mac.update(&token.as_bytes()[..signed_len]);
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;

    let claims: Claims = decode_json(payload).ok_or_else(|| invalid("unreadable claims"))?;
    let leeway = config.leeway.as_secs() as i64;
    let exp = claims
        .exp
        .ok_or_else(|| invalid("`exp` claim is required"))?;
    if now > exp + leeway {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = claims.nbf
        && now + leeway < nbf
    {
        return Err(invalid("not valid yet (`nbf`)"));
    }
    if let Some(want) = &config.issuer
        && claims.iss.as_ref() != Some(want)
    {
        return Err(invalid("wrong issuer"));
    }
    if let Some(want) = &config.audience {
        let ok = match &claims.aud {
            Some(Audience::One(a)) => a == want,
            Some(Audience::Many(list)) => list.contains(want),
            None => false,
        };
        if !ok {
            return Err(invalid("wrong audience"));
        }
    }
    let name = claims
        .sub
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("`sub` claim is required"))?;
    let tenant = claims
        .tenant
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("`tenant` claim is required"))?;
    Ok(Principal {
        quota_key: claims.quota_key.unwrap_or_else(|| name.clone()),
        name,
        tenant,
        tiers: claims.tiers,
        default_tier: claims.tier,
        admin: claims.admin,
        max_running: claims.max_running,
        max_queued: claims.max_queued,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Signs `claims` as an HS256 JWT. Sluice only verifies tokens; this is for tests and
/// for operators who want to mint one (`sluice token`).
pub fn sign_jwt(claims: &serde_json::Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let signature = hmac(secret.as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Signs and checks result links of the local result store.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link's signature is not valid")]
    Forged,
    #[error("the link expired")]
    Expired,
}

impl LinkSigner {
    /// With the configured secret, or a random one private to this process.
    pub fn new(secret: Option<&str>) -> LinkSigner {
        let key = match secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut bytes = vec![0u8; 32];
                rand::fill(&mut bytes[..]);
                bytes
            }
        };
        LinkSigner { key }
    }

    fn message(id: &str, object_key: &str, expires: i64) -> String {
        format!("sluice-result-link\n{id}\n{object_key}\n{expires}")
    }

    pub fn sign(&self, id: &str, object_key: &str, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(hmac(
            &self.key,
            Self::message(id, object_key, expires).as_bytes(),
        ))
    }

    /// Checks the signature first (so a forged link never learns whether it expired).
    pub fn verify(
        &self,
        id: &str,
        object_key: &str,
        expires: i64,
        signature: &str,
        now: i64,
    ) -> Result<(), LinkError> {
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| LinkError::Forged)?;
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.key).map_err(|_| LinkError::Forged)?;
        mac.update(Self::message(id, object_key, expires).as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| LinkError::Forged)?;
        if now > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn jwt_config(secret: &str) -> JwtConfig {
        JwtConfig {
            secret: secret.into(),
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
        }
    }

    #[test]
    fn verifies_the_reference_hs256_signature() {
        // The example token of RFC 7519's reference implementations (jwt.io), with the
        // secret `your-256-bit-secret`: the signature must check out; the claims lack
        // `exp`, so it is refused after the signature check, not before.
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                     eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                     SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let e = verify_jwt(token, &jwt_config("your-256-bit-secret"), 0).unwrap_err();
        assert_eq!(e, AuthError::InvalidToken("`exp` claim is required".into()));
        let e = verify_jwt(token, &jwt_config("another-secret-another-secret!!"), 0).unwrap_err();
        assert_eq!(e, AuthError::BadSignature);
    }

    #[test]
    fn tokens_round_trip_and_expire() {
        let secret = "0123456789abcdef0123456789abcdef";
        let token = sign_jwt(
            &serde_json::json!({
                "sub": "svc", "tenant": "acme", "exp": 1000, "tier": "vip", "max_queued": 2,
            }),
            secret,
        );
        let p = verify_jwt(&token, &jwt_config(secret), 999).unwrap();
        assert_eq!((p.name.as_str(), p.tenant.as_str()), ("svc", "acme"));
        assert_eq!(p.quota_key, "svc");
        assert_eq!((p.max_queued, p.max_running), (Some(2), None));
        assert_eq!(p.default_tier.as_deref(), Some("vip"));
        assert_eq!(
            verify_jwt(&token, &jwt_config(secret), 1001),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","tenant":"t","exp":99999999999}"#);
        let token = format!("{header}.{payload}.");
        let e = verify_jwt(&token, &jwt_config("0123456789abcdef0123456789abcdef"), 0);
        assert!(matches!(e, Err(AuthError::InvalidToken(m)) if m.contains("none")));
    }

    #[test]
    fn api_keys_are_looked_up_by_hash() {
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
        let auth = Authenticator::new(&config);
        let p = auth.authenticate(Some(&format!("Bearer {key}"))).unwrap();
        assert_eq!(p.tenant, "acme");
        assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(Some(&key)), Err(AuthError::Malformed));
        assert_eq!(
            auth.authenticate(Some("Bearer sk_nope")),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn links_are_bound_to_their_result_and_expiry() {
        let s = LinkSigner::new(Some("k".repeat(32).as_str()));
        let sig = s.sign("id1", "results/id1/1.json", 100);
        assert_eq!(s.verify("id1", "results/id1/1.json", 100, &sig, 50), Ok(()));
        assert_eq!(
            s.verify("id1", "results/id1/1.json", 100, &sig, 101),
            Err(LinkError::Expired)
        );
        assert_eq!(
            s.verify("id1", "results/id1/1.json", 200, &sig, 50),
            Err(LinkError::Forged)
        );
        assert_eq!(
            s.verify("id2", "results/id1/1.json", 100, &sig, 50),
            Err(LinkError::Forged)
        );
    }
}
