//! Result links of the local result store: `expires` plus an HMAC-SHA256 over the
//! execution id, the result's object key and `expires`, so a link is bound to one result
//! of one attempt and cannot be stretched or moved to another execution.

use super::{hmac_sha256, hmac_sha256_matches};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
        URL_SAFE_NO_PAD.encode(hmac_sha256(
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
        let message = Self::message(id, object_key, expires);
        if !hmac_sha256_matches(&self.key, message.as_bytes(), &signature) {
            return Err(LinkError::Forged);
        }
        if now > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
