//! JWT bearer tokens (RFC 7519): the signature, then the claims into a [`Principal`].
//!
//! HS256 tokens are checked with `auth.jwt.secret`; RS256/RS384/RS512, PS256/PS384/PS512,
//! ES256/ES384 and EdDSA tokens with the identity provider's keys (`auth.jwt.jwks_url`,
//! see [`super::jwks`]). The `alg` a token names picks one of the two and nothing else:
//! an HS256 token is never checked against a public key (the classic confusion attack,
//! where a public key is used as an HMAC secret), an asymmetric one never against the
//! secret, and `none` is refused. HMAC signatures are compared in constant time.
//!
//! After the signature: `exp` required, `nbf` checked when present, `iss` and `aud` when
//! configured, `leeway` tolerated on both times. Claims: `sub`, `tenant` (required),
//! `tiers`, `tier`, `quota_key`, `admin`, `max_running`, `max_queued`.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::jwks::{Algorithm, Jwks};
use super::{AuthError, Principal, hmac_sha256, hmac_sha256_matches};
use crate::config::JwtConfig;

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
    kid: Option<String>,
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

/// Checks JWTs against `auth.jwt`: the HS256 secret, the provider's key set, or both.
pub struct JwtVerifier {
    config: JwtConfig,
    jwks: Option<Arc<Jwks>>,
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, AuthError> {
        let jwks = match &config.jwks_url {
            Some(url) => Some(Arc::new(Jwks::new(url, config.jwks_refresh)?)),
            None => None,
        };
        Ok(JwtVerifier {
            config: config.clone(),
            jwks,
        })
    }

    /// The principal of a valid token: signature first, then the claims.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        let (signed, header, payload, signature) = split(token)?;
        let header: JwtHeader = decode_json(header).ok_or_else(|| invalid("unreadable header"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| invalid("signature is not base64url"))?;
        if header.alg == "HS256" {
            let secret = self.config.secret.as_deref().ok_or_else(|| {
                invalid("HS256 tokens are not accepted here (no auth.jwt.secret)")
            })?;
            if !hmac_sha256_matches(secret.as_bytes(), signed.as_bytes(), &signature) {
                return Err(AuthError::BadSignature);
            }
        } else {
            let alg = Algorithm::parse(&header.alg).ok_or_else(|| {
                AuthError::InvalidToken(format!(
                    "algorithm `{}` is not accepted; use HS256, RS256, RS384, RS512, PS256, \
                     PS384, PS512, ES256, ES384 or EdDSA",
                    header.alg
                ))
            })?;
            let jwks = self.jwks.as_ref().ok_or_else(|| {
                AuthError::InvalidToken(format!(
                    "{} tokens are not accepted here (no auth.jwt.jwks_url)",
                    header.alg
                ))
            })?;
            jwks.verify(header.kid.as_deref(), alg, signed.as_bytes(), &signature)
                .await?;
        }
        principal(payload, &self.config, now)
    }
}

fn invalid(m: &str) -> AuthError {
    AuthError::InvalidToken(m.to_string())
}

/// `header.payload.signature` into the signed part (`header.payload`), the header, the
/// payload and the signature.
fn split(token: &str) -> Result<(&str, &str, &str, &str), AuthError> {
    let (signed, signature) = token.rsplit_once('.').ok_or_else(|| invalid("not a JWT"))?;
    let (header, payload) = signed.split_once('.').ok_or_else(|| invalid("not a JWT"))?;
    if payload.contains('.') {
        return Err(invalid("not a JWT"));
    }
    Ok((signed, header, payload, signature))
}

/// The principal the claims of a token with a valid signature stand for.
fn principal(payload: &str, config: &JwtConfig, now: i64) -> Result<Principal, AuthError> {
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
    let signature = hmac_sha256(secret.as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn jwt_config(secret: &str) -> JwtConfig {
        JwtConfig {
            secret: Some(secret.into()),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(600),
            issuer: None,
            audience: None,
            leeway: Duration::ZERO,
        }
    }

    async fn verify_jwt(token: &str, config: &JwtConfig, now: i64) -> Result<Principal, AuthError> {
        JwtVerifier::new(config).unwrap().verify(token, now).await
    }

    #[tokio::test]
    async fn verifies_the_reference_hs256_signature() {
        // The example token of RFC 7519's reference implementations (jwt.io), with the
        // secret `your-256-bit-secret`: the signature must check out; the claims lack
        // `exp`, so it is refused after the signature check, not before.
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                     eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
                     SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let e = verify_jwt(token, &jwt_config("your-256-bit-secret"), 0)
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::InvalidToken("`exp` claim is required".into()));
        let e = verify_jwt(token, &jwt_config("another-secret-another-secret!!"), 0)
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::BadSignature);
    }

    #[tokio::test]
    async fn tokens_round_trip_and_expire() {
        let secret = "0123456789abcdef0123456789abcdef";
        let token = sign_jwt(
            &serde_json::json!({
                "sub": "svc", "tenant": "acme", "exp": 1000, "tier": "vip", "max_queued": 2,
            }),
            secret,
        );
        let p = verify_jwt(&token, &jwt_config(secret), 999).await.unwrap();
        assert_eq!((p.name.as_str(), p.tenant.as_str()), ("svc", "acme"));
        assert_eq!(p.quota_key, "svc");
        assert_eq!((p.max_queued, p.max_running), (Some(2), None));
        assert_eq!(p.default_tier.as_deref(), Some("vip"));
        assert_eq!(
            verify_jwt(&token, &jwt_config(secret), 1001).await,
            Err(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn each_algorithm_family_goes_to_its_own_key_only() {
        let claims = r#"{"sub":"x","tenant":"t","exp":99999999999}"#;
        let token = |alg: &str| {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(claims))
        };
        // Secret only: an asymmetric token is refused before any key is looked at.
        let secret_only = jwt_config("0123456789abcdef0123456789abcdef");
        let e = verify_jwt(&token("RS256"), &secret_only, 0).await;
        assert!(matches!(e, Err(AuthError::InvalidToken(m)) if m.contains("jwks_url")));
        // Key set only: HS256 (say, with the public key as its HMAC secret) is refused.
        let keys_only = JwtConfig {
            secret: None,
            jwks_url: Some("http://127.0.0.1:9/jwks.json".into()),
            ..secret_only
        };
        let e = verify_jwt(&token("HS256"), &keys_only, 0).await;
        assert!(matches!(e, Err(AuthError::InvalidToken(m)) if m.contains("secret")));
        let e = verify_jwt(&token("HS512"), &keys_only, 0).await;
        assert!(matches!(e, Err(AuthError::InvalidToken(m)) if m.contains("not accepted")));
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let secret = "0123456789abcdef0123456789abcdef";
        let config = JwtConfig {
            issuer: Some("https://idp.example".into()),
            audience: Some("sluice".into()),
            ..jwt_config(secret)
        };
        let token = |iss: serde_json::Value, aud: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "s", "tenant": "t", "exp": 1000});
            if !iss.is_null() {
                claims["iss"] = iss;
            }
            if !aud.is_null() {
                claims["aud"] = aud;
            }
            sign_jwt(&claims, secret)
        };
        let iss = || serde_json::json!("https://idp.example");
        let ok = [
            token(iss(), serde_json::json!("sluice")),
            token(iss(), serde_json::json!(["other", "sluice"])),
        ];
        for t in &ok {
            assert!(verify_jwt(t, &config, 0).await.is_ok());
        }
        let wrong = [
            (
                token(serde_json::Value::Null, serde_json::json!("sluice")),
                "wrong issuer",
            ),
            (
                token(
                    serde_json::json!("https://evil.example"),
                    serde_json::json!("sluice"),
                ),
                "wrong issuer",
            ),
            (token(iss(), serde_json::Value::Null), "wrong audience"),
            (token(iss(), serde_json::json!("other")), "wrong audience"),
            (
                token(iss(), serde_json::json!(["a", "b"])),
                "wrong audience",
            ),
        ];
        for (t, why) in &wrong {
            assert_eq!(
                verify_jwt(t, &config, 0).await.unwrap_err(),
                AuthError::InvalidToken((*why).into())
            );
        }
        // Unconfigured, neither claim is looked at.
        assert!(
            verify_jwt(&wrong[1].0, &jwt_config(secret), 0)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn quota_admin_and_cap_claims_reach_the_principal() {
        let secret = "0123456789abcdef0123456789abcdef";
        let token = sign_jwt(
            &serde_json::json!({
                "sub": "svc", "tenant": "acme", "exp": 1000, "quota_key": "team-a",
                "admin": true, "max_running": 3, "tiers": ["a", "b"],
            }),
            secret,
        );
        let p = verify_jwt(&token, &jwt_config(secret), 0).await.unwrap();
        assert_eq!(p.quota_key, "team-a");
        assert!(p.admin);
        assert_eq!(p.scope(), None, "an admin sees every tenant");
        assert_eq!(p.max_running, Some(3));
        let plain = sign_jwt(
            &serde_json::json!({"sub": "svc", "tenant": "acme", "exp": 1000}),
            secret,
        );
        let p = verify_jwt(&plain, &jwt_config(secret), 0).await.unwrap();
        assert!(!p.admin);
        assert_eq!(p.scope(), Some("acme"));
        assert_eq!(p.max_running, None);
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","tenant":"t","exp":99999999999}"#);
        let token = format!("{header}.{payload}.");
        let e = verify_jwt(&token, &jwt_config("0123456789abcdef0123456789abcdef"), 0).await;
        assert!(matches!(e, Err(AuthError::InvalidToken(m)) if m.contains("none")));
    }
}
