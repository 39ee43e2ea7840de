//! The public keys an identity provider signs tokens with, from its JWKS document
//! (RFC 7517, e.g. `https://idp.example.com/.well-known/jwks.json`).
//!
//! The document is fetched on first use, again once the keys held are older than
//! `auth.jwt.jwks_refresh` (so a key the provider withdrew stops being accepted), and
//! again when a token names a `kid` the held keys lack (a rotation). Fetches happen at
//! most once per [`MIN_REFETCH`], one at a time, so tokens with made-up `kid`s cannot
//! flood the provider. A refresh runs behind the request that noticed it; only a request
//! no held key can answer waits for the fetch. A failed fetch keeps the keys held; with
//! none held the caller gets [`AuthError::KeysUnavailable`] (503), not a 401 that would
//! blame the token.
//!
//! Entries of other key types, of other curves or marked `"use": "enc"` are skipped,
//! as providers publish encryption keys in the same document.
//!
//! This module fetches and holds keys and checks signatures with them; it never reads
//! claims (that is `jwt`'s job).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::AuthError;
use crate::outage::OutageLog;

/// The shortest time between two fetches of the document.
pub const MIN_REFETCH: Duration = Duration::from_secs(2);
/// A provider that answers slower than this is treated as down.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A key set larger than this is refused (they are a few KiB).
const MAX_DOCUMENT: usize = 1 << 20;

/// The asymmetric JWS algorithms Sluice verifies (RFC 7518 section 3.1, RFC 8037).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm a JWS `alg` header names.
    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    fn rsa(self) -> Option<&'static sig::RsaParameters> {
        Some(match self {
            Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

/// One usable public key of the set.
#[derive(Debug)]
pub struct Jwk {
    kid: Option<String>,
    /// The one algorithm the key is for, when the document says.
    alg: Option<String>,
    key: PublicKey,
}

#[derive(Debug)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`).
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Jwk {
    /// Whether this key may check a token signed with `alg` and naming `kid`. The key
    /// type decides the algorithm family, so a token cannot pick an algorithm the key
    /// was not made for.
    fn fits(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        let kid_fits = kid.is_none_or(|k| self.kid.as_deref() == Some(k));
        let alg_fits = self.alg.as_deref().is_none_or(|a| a == alg.name());
        let type_fits = match self.key {
            PublicKey::Rsa { .. } => alg.rsa().is_some(),
            PublicKey::P256(_) => alg == Algorithm::ES256,
            PublicKey::P384(_) => alg == Algorithm::ES384,
            PublicKey::Ed25519(_) => alg == Algorithm::EdDSA,
        };
        kid_fits && alg_fits && type_fits
    }

    fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match (&self.key, alg.rsa()) {
            (PublicKey::Rsa { n, e }, Some(params)) => RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok(),
            (PublicKey::P256(point), _) => {
                UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (PublicKey::P384(point), _) => {
                UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (PublicKey::Ed25519(x), _) => UnparsedPublicKey::new(&sig::ED25519, x)
                .verify(message, signature)
                .is_ok(),
            (PublicKey::Rsa { .. }, None) => false,
        }
    }
}

/// A JWK as published; fields of other key types are absent.
#[derive(Debug, Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The usable signature keys of a JWKS document; unusable entries are skipped.
pub fn parse(document: &[u8]) -> Result<Vec<Jwk>, String> {
    let raw: RawJwks = serde_json::from_slice(document)
        .map_err(|e| format!("not a JWKS document (an object with `keys`): {e}"))?;
    Ok(raw
        .keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<RawJwk>(v).ok())
        .filter_map(usable)
        .collect())
}

fn usable(raw: RawJwk) -> Option<Jwk> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let b64 = |v: &Option<String>| URL_SAFE_NO_PAD.decode(v.as_deref()?).ok();
    let point = |x: Vec<u8>, y: Vec<u8>| [&[4u8][..], &x, &y].concat();
    let key = match (raw.kty.as_str(), raw.crv.as_deref()) {
        // RFC 7518 forbids leading zero octets in `n` and `e`; some providers send one.
        ("RSA", _) => PublicKey::Rsa {
            n: unsigned(b64(&raw.n)?),
            e: unsigned(b64(&raw.e)?),
        },
        ("EC", Some("P-256")) => PublicKey::P256(point(b64(&raw.x)?, b64(&raw.y)?)),
        ("EC", Some("P-384")) => PublicKey::P384(point(b64(&raw.x)?, b64(&raw.y)?)),
        ("OKP", Some("Ed25519")) => PublicKey::Ed25519(b64(&raw.x)?),
        _ => return None,
    };
    Some(Jwk {
        kid: raw.kid,
        alg: raw.alg,
        key,
    })
}

/// A big-endian integer without leading zero octets.
fn unsigned(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// The provider's keys, fetched from `url` and held between fetches.
pub struct Jwks {
    url: String,
    refresh: Duration,
    http: reqwest::Client,
    held: Mutex<Held>,
    /// One fetch at a time; its log reports a provider outage once per interval.
    fetching: tokio::sync::Mutex<OutageLog>,
}

#[derive(Default)]
struct Held {
    keys: Arc<Vec<Jwk>>,
    /// When the keys held were fetched; `None` before the first success.
    fetched: Option<Instant>,
    /// When the last fetch started, whether it succeeded or not.
    tried: Option<Instant>,
}

impl Jwks {
    pub fn new(url: &str, refresh: Duration) -> Result<Jwks, AuthError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| AuthError::KeysUnavailable(format!("no HTTP client: {e}")))?;
        Ok(Jwks {
            url: url.to_string(),
            refresh,
            http,
            held: Mutex::default(),
            fetching: tokio::sync::Mutex::new(OutageLog::new("fetch the JWKS key set")),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Nothing under this lock can panic half-way; a poisoned one is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `signature` over `message` with the held key(s) that fit the token's `alg`
    /// and `kid`, fetching the document first when it is due.
    pub async fn verify(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), AuthError> {
        let fits = |k: &&Jwk| k.fits(kid, alg);
        let (due, held_fits) = {
            let held = self.held();
            let stale = held.fetched.is_none_or(|t| t.elapsed() >= self.refresh);
            let may = held.tried.is_none_or(|t| t.elapsed() >= MIN_REFETCH);
            let held_fits = held.keys.iter().any(|k| fits(&k));
            (may && (stale || !held_fits), held_fits)
        };
        if due && held_fits {
            // A refresh: the keys held answer this request, so a slow provider never
            // holds it up.
            let jwks = Arc::clone(self);
            tokio::spawn(async move { jwks.fetch().await });
        } else if due {
            self.fetch().await;
        }
        let keys = {
            let held = self.held();
            if held.fetched.is_none() {
                return Err(AuthError::KeysUnavailable(format!(
                    "the signing keys at `{}` could not be fetched",
                    self.url
                )));
            }
            Arc::clone(&held.keys)
        };
        let mut fitting = keys.iter().filter(fits).peekable();
        if fitting.peek().is_none() {
            return Err(AuthError::InvalidToken(format!(
                "no key of the provider fits the token (alg `{}`, kid `{}`)",
                alg.name(),
                kid.unwrap_or("none")
            )));
        }
        if fitting.any(|k| k.verify(alg, message, signature)) {
            Ok(())
        } else {
            Err(AuthError::BadSignature)
        }
    }

    /// Fetches the document unless another request did while this one waited its turn.
    async fn fetch(&self) {
        let mut outage = self.fetching.lock().await;
        if self.held().tried.is_some_and(|t| t.elapsed() < MIN_REFETCH) {
            return;
        }
        self.held().tried = Some(Instant::now());
        match self.download().await {
            Ok(keys) => {
                outage.success();
                tracing::debug!(url = %self.url, keys = keys.len(), "JWKS key set fetched");
                let mut held = self.held();
                held.keys = Arc::new(keys);
                held.fetched = Some(Instant::now());
            }
            Err(e) => outage.failure(&format!("{}: {e}", self.url)),
        }
    }

    async fn download(&self) -> Result<Vec<Jwk>, String> {
        let response = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        if response
            .content_length()
            .is_some_and(|l| l > MAX_DOCUMENT as u64)
        {
            return Err(format!("the document is larger than {MAX_DOCUMENT} bytes"));
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_DOCUMENT {
            return Err(format!("the document is larger than {MAX_DOCUMENT} bytes"));
        }
        parse(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_entries_are_skipped_and_a_non_document_is_refused() {
        let doc = br#"{"keys": [
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "k256", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            "not an object"
        ]}"#;
        let keys = parse(doc).unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert_eq!(keys[0].kid.as_deref(), Some("ed"));
        assert!(parse(b"[]").is_err());
        assert!(parse(b"{\"issuer\": \"x\"}").is_err());
    }

    #[test]
    fn every_algorithm_parses_from_its_name_and_nothing_else_does() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
        }
        for other in ["HS256", "none", "rs256", "ES512", ""] {
            assert_eq!(Algorithm::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_key_checks_only_the_algorithms_of_its_type_and_alg() {
        let rsa = Jwk {
            kid: Some("r".into()),
            alg: Some("RS256".into()),
            key: PublicKey::Rsa {
                n: vec![1],
                e: vec![1],
            },
        };
        assert!(rsa.fits(Some("r"), Algorithm::RS256));
        assert!(rsa.fits(None, Algorithm::RS256));
        assert!(!rsa.fits(Some("other"), Algorithm::RS256));
        assert!(!rsa.fits(Some("r"), Algorithm::RS512), "alg pins it");
        let ec = Jwk {
            kid: None,
            alg: None,
            key: PublicKey::P256(vec![4]),
        };
        assert!(ec.fits(None, Algorithm::ES256));
        assert!(!ec.fits(None, Algorithm::ES384));
        assert!(!ec.fits(None, Algorithm::RS256));
        assert!(!ec.fits(Some("k"), Algorithm::ES256));
    }
}
