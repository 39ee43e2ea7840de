//! JWTs signed by an identity provider: Sluice fetches the provider's JWKS document over
//! HTTP and checks RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA tokens with its keys; rotations
//! are picked up, withdrawn keys stop working, and an unreachable provider is a 503 (the
//! token is not to blame) while keys already held keep working.
//!
//! The provider here is the test's own: real key pairs (aws-lc-rs) and a real HTTP server
//! publishing their public halves, as an IdP's `/.well-known/jwks.json` does.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// A private key of the provider and the algorithm it signs with.
enum Signer {
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding, &'static str),
    Ec(sig::EcdsaKeyPair, &'static str, &'static str),
    Ed(sig::Ed25519KeyPair),
}

impl Signer {
    fn rs256() -> Signer {
        let key = sig::RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        Signer::Rsa(key, &sig::RSA_PKCS1_SHA256, "RS256")
    }

    fn ps256() -> Signer {
        let key = sig::RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        Signer::Rsa(key, &sig::RSA_PSS_SHA256, "PS256")
    }

    /// The other RSA algorithms: PKCS#1 v1.5 and PSS with SHA-384 and SHA-512.
    fn rsa_others() -> Vec<Signer> {
        let encodings: [(&'static dyn sig::RsaEncoding, &'static str); 4] = [
            (&sig::RSA_PKCS1_SHA384, "RS384"),
            (&sig::RSA_PKCS1_SHA512, "RS512"),
            (&sig::RSA_PSS_SHA384, "PS384"),
            (&sig::RSA_PSS_SHA512, "PS512"),
        ];
        encodings
            .into_iter()
            .map(|(encoding, alg)| {
                let key = sig::RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
                Signer::Rsa(key, encoding, alg)
            })
            .collect()
    }

    fn es256() -> Signer {
        let key = sig::EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        Signer::Ec(key, "ES256", "P-256")
    }

    fn es384() -> Signer {
        let key = sig::EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        Signer::Ec(key, "ES384", "P-384")
    }

    fn eddsa() -> Signer {
        Signer::Ed(sig::Ed25519KeyPair::generate().unwrap())
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rsa(_, _, alg) | Signer::Ec(_, alg, _) => alg,
            Signer::Ed(_) => "EdDSA",
        }
    }

    /// The public half as the provider publishes it.
    fn jwk(&self, kid: &str) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self {
            Signer::Rsa(key, _, alg) => {
                let c = sig::RsaPublicKeyComponents::<Vec<u8>>::from(key.public_key());
                json!({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                       "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec(key, alg, crv) => {
                // An uncompressed point: 04 || x || y.
                let point = &key.public_key().as_ref()[1..];
                let (x, y) = point.split_at(point.len() / 2);
                json!({"kty": "EC", "kid": kid, "alg": alg, "crv": crv,
                       "x": b64(x), "y": b64(y)})
            }
            Signer::Ed(key) => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
                       "x": b64(key.public_key().as_ref())})
            }
        }
    }

    /// A token for `sub` of tenant `t`, valid for ten minutes, naming `kid`.
    fn token(&self, kid: &str, sub: &str) -> String {
        self.sign_as(self.alg(), kid, sub)
    }

    /// Like [`Signer::token`], with any `alg` in the header.
    fn sign_as(&self, alg: &str, kid: &str, sub: &str) -> String {
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string());
        let claims = json!({"sub": sub, "tenant": "t", "exp": sluice::auth::unix_now() + 600});
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Rsa(key, encoding, _) => {
                let mut s = vec![0; key.public_modulus_len()];
                key.sign(*encoding, &rng, signed.as_bytes(), &mut s)
                    .unwrap();
                s
            }
            Signer::Ec(key, _, _) => key.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Ed(key) => key.sign(signed.as_bytes()).as_ref().to_vec(),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The provider's HTTP side: serves the current document, or 503 while down, and counts
/// the fetches.
struct Provider {
    document: Arc<Mutex<Value>>,
    up: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    url: String,
}

impl Provider {
    async fn start(keys: Vec<Value>) -> Provider {
        let document = Arc::new(Mutex::new(json!({ "keys": keys })));
        let up = Arc::new(AtomicBool::new(true));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, u, f) = (document.clone(), up.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (d, u, f) = (d.clone(), u.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    if !u.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(d.lock().unwrap().clone()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Provider {
            document,
            up,
            fetches,
            url,
        }
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.document.lock().unwrap() = json!({ "keys": keys });
    }
}

/// Sluice trusting `provider`, re-fetching its keys after `refresh`.
async fn harness(pool: PgPool, provider: &Provider, refresh: &str) -> Harness {
    Harness::with(
        pool,
        Setup {
            workers: vec![],
            jwt_extra: format!(
                "jwks_url = \"{}\"\njwks_refresh = \"{refresh}\"\n",
                provider.url
            ),
            ..Default::default()
        },
    )
    .await
}

/// The status and error code of `GET /v1/executions` with `token`.
async fn list_as(h: &Harness, token: &str) -> (StatusCode, String) {
    let (status, v) = h.as_principal(token).get_json("/v1/executions").await;
    let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
    (status, code)
}

#[sqlx::test]
async fn tokens_of_every_asymmetric_algorithm_check_out_against_the_providers_keys(pool: PgPool) {
    let mut signers = vec![
        Signer::rs256(),
        Signer::ps256(),
        Signer::es256(),
        Signer::es384(),
        Signer::eddsa(),
    ];
    signers.extend(Signer::rsa_others());
    let mut keys: Vec<Value> = signers
        .iter()
        .enumerate()
        .map(|(i, s)| s.jwk(&format!("k{i}")))
        .collect();
    // The RSA key again, its modulus with the leading zero octet some providers send.
    let mut padded = signers[0].jwk("padded");
    let n = URL_SAFE_NO_PAD
        .decode(padded["n"].as_str().unwrap())
        .unwrap();
    padded["n"] = json!(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()));
    keys.push(padded);
    let provider = Provider::start(keys).await;
    let h = harness(pool, &provider, "10m").await;

    for (i, s) in signers.iter().enumerate() {
        let token = s.token(&format!("k{i}"), "svc");
        let (status, v) = h
            .as_principal(&token)
            .submit(json!({"sql": format!("SELECT {i}")}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{}: {v}", s.alg());
        let (_, e) = h
            .as_principal(&token)
            .get_json(&format!(
                "/v1/executions/{}",
                v["execution"]["id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(
            e["created_by"],
            "svc",
            "{}: the claims give the principal: {e}",
            s.alg()
        );
    }
    assert_eq!(
        list_as(&h, &signers[0].token("padded", "svc")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        provider.fetches.load(Ordering::SeqCst),
        1,
        "one fetch serves every token until the refresh"
    );

    // Signed by a key the provider never published, under a published kid.
    let stranger = Signer::rs256();
    assert_eq!(
        list_as(&h, &stranger.token("k0", "svc")).await,
        (StatusCode::UNAUTHORIZED, "invalid_token_signature".into())
    );
    // A kid the provider does not know: the document is fetched again in case the keys
    // rotated, but made-up kids cannot make Sluice fetch more than once per MIN_REFETCH.
    let started = std::time::Instant::now();
    let before = provider.fetches.load(Ordering::SeqCst);
    for i in 0..20 {
        assert_eq!(
            list_as(&h, &signers[0].token(&format!("nobody-{i}"), "svc")).await,
            (StatusCode::UNAUTHORIZED, "invalid_token".into())
        );
    }
    let refetches = provider.fetches.load(Ordering::SeqCst) - before;
    // At most once per 2 s (the README's figure, sluice::auth::jwks::MIN_REFETCH).
    let allowed = 1 + (started.elapsed().as_secs_f64() / 2.0) as usize;
    assert!(
        refetches <= allowed,
        "{refetches} fetches for 20 unknown kids in {:?}",
        started.elapsed()
    );
    // An alg the key was not made for: the key's type and its `alg` decide, not the token.
    assert_eq!(
        list_as(&h, &signers[0].sign_as("RS512", "k0", "svc")).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    assert_eq!(
        list_as(&h, &signers[0].sign_as("ES256", "k0", "svc")).await,
        (StatusCode::UNAUTHORIZED, "invalid_token".into())
    );
    // HS256 still goes to the shared secret, never to a public key.
    let hs = sluice::auth::sign_jwt(
        &json!({"sub": "svc", "tenant": "t", "exp": sluice::auth::unix_now() + 600}),
        JWT_SECRET,
    );
    assert_eq!(list_as(&h, &hs).await.0, StatusCode::OK);
}

#[sqlx::test]
async fn a_rotation_is_picked_up_and_a_withdrawn_key_stops_working(pool: PgPool) {
    let (old, new) = (Signer::es256(), Signer::rs256());
    let provider = Provider::start(vec![old.jwk("old")]).await;
    let h = harness(pool, &provider, "1s").await;
    assert_eq!(
        list_as(&h, &old.token("old", "svc")).await.0,
        StatusCode::OK
    );

    // The provider rotates: the new key appears (a kid Sluice has not seen fetches the
    // document again) ...
    provider.publish(vec![old.jwk("old"), new.jwk("new")]);
    let deadline = Duration::from_secs(20);
    eventually(deadline, "a token of the new key is accepted", || async {
        list_as(&h, &new.token("new", "svc")).await.0 == StatusCode::OK
    })
    .await;
    // ... then the old one goes: no token asks for a fetch, the refresh notices.
    provider.publish(vec![new.jwk("new")]);
    eventually(
        deadline,
        "a token of the withdrawn key is refused",
        || async { list_as(&h, &old.token("old", "svc")).await.0 == StatusCode::UNAUTHORIZED },
    )
    .await;
}

#[sqlx::test]
async fn an_unreachable_provider_is_a_503_and_keys_already_held_keep_working(pool: PgPool) {
    let signer = Signer::eddsa();
    let provider = Provider::start(vec![signer.jwk("k")]).await;
    provider.up.store(false, Ordering::SeqCst);
    let h = harness(pool, &provider, "1s").await;
    let token = signer.token("k", "svc");

    let (status, v) = h.as_principal(&token).get_json("/v1/executions").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&provider.url),
        "the message names the key set: {v}"
    );

    provider.up.store(true, Ordering::SeqCst);
    let deadline = Duration::from_secs(20);
    eventually(
        deadline,
        "the token is accepted once the keys are had",
        || async { list_as(&h, &token).await.0 == StatusCode::OK },
    )
    .await;

    // Down again: once a re-fetch has failed, the keys held still check tokens.
    provider.up.store(false, Ordering::SeqCst);
    let before = provider.fetches.load(Ordering::SeqCst);
    eventually(deadline, "a re-fetch was tried and failed", || async {
        let _ = list_as(&h, &token).await;
        provider.fetches.load(Ordering::SeqCst) > before
    })
    .await;
    assert_eq!(list_as(&h, &token).await.0, StatusCode::OK);
}
