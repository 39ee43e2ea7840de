//! The [`Principal`] extractor: every `/v1` handler that takes a `Principal` argument
//! answers 401 (with the JSON error body and `WWW-Authenticate: Bearer`) unless the
//! request carries a valid API key or JWT. Health, readiness, metrics, the OpenAPI
//! document and signed result links take no principal and stay open.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::ApiContext;
use super::error::ApiError;
use crate::auth::{AuthError, Principal};

impl FromRequestParts<ApiContext> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &ApiContext,
    ) -> Result<Principal, ApiError> {
        let header = match parts.headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| ApiError::Unauthorized(AuthError::Malformed))?,
            ),
        };
        ctx.auth.authenticate(header).await.map_err(|e| match e {
            // Not the caller's fault: the token may be fine once the keys can be had.
            AuthError::KeysUnavailable(m) => ApiError::Unavailable(m),
            e => {
                tracing::info!(code = e.code(), "authentication failed");
                ApiError::Unauthorized(e)
            }
        })
    }
}

/// 403 unless `principal` may use `tier`.
pub fn check_tier(principal: &Principal, tier: &str) -> Result<(), ApiError> {
    if principal.may_use(tier) {
        Ok(())
    } else {
        Err(ApiError::Forbidden {
            code: "tier_forbidden",
            message: format!(
                "principal `{}` may not use tier `{tier}`; allowed: {}",
                principal.name,
                principal.tiers.as_deref().unwrap_or_default().join(", ")
            ),
        })
    }
}
