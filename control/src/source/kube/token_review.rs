//! The CA's authenticator in Kubernetes: a caller proves who it is with its
//! projected service-account token (`authorization: Bearer <token>`, as
//! istio-agent sends it), which the API server vouches for through the
//! TokenReview API. The identity is the token's service account, so a
//! workload can only ever get `spiffe://<td>/ns/<ns>/sa/<sa>` of its own
//! account: the CA refuses a CSR for any other identity (PERMISSION_DENIED).

use std::sync::Arc;
use std::time::Duration;

use isthmus_identity::{AuthError, Authenticator, CallerContext, SpiffeId};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use kube::Client;

/// Istio's audience for tokens meant for the CA.
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";

#[derive(Debug, Clone)]
pub struct TokenReviewConfig {
    /// A token must be meant for one of these; the default is `istio-ca`
    /// and the trust domain, as istiod accepts.
    pub audiences: Vec<String>,
    /// Upper bound on one review.
    pub timeout: Duration,
}

impl TokenReviewConfig {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            audiences: vec![ISTIO_CA_AUDIENCE.to_string(), trust_domain.to_string()],
            timeout: Duration::from_secs(10),
        }
    }
}

/// Reviews bearer tokens with the API server; calls without a token go to
/// `fallback` (a still-valid workload certificate renewing itself).
pub struct TokenReviewAuthenticator {
    client: Client,
    trust_domain: String,
    config: TokenReviewConfig,
    fallback: Arc<dyn Authenticator>,
}

impl TokenReviewAuthenticator {
    pub fn new(
        client: Client,
        trust_domain: &str,
        config: TokenReviewConfig,
        fallback: Arc<dyn Authenticator>,
    ) -> Self {
        Self {
            client,
            trust_domain: trust_domain.to_string(),
            config,
            fallback,
        }
    }

    async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(self.config.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let reviewed = tokio::time::timeout(
            self.config.timeout,
            api.create(&PostParams::default(), &request),
        )
        .await
        .map_err(|_| {
            AuthError::TokenReviewUnavailable(format!("no answer within {:?}", self.config.timeout))
        })?
        .map_err(|e| AuthError::TokenReviewUnavailable(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::TokenRejected(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        // The API server answers with the requested audiences the token is
        // valid for; none means the token was minted for someone else.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| self.config.audiences.contains(a)) {
            return Err(AuthError::TokenRejected(format!(
                "the token is not meant for this CA (audiences accepted: {})",
                self.config.audiences.join(", ")
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let (namespace, account) = service_account_of(&username).ok_or_else(|| {
            AuthError::TokenRejected(format!(
                "`{username}` is not a service account; only service-account tokens get workload certificates"
            ))
        })?;
        Ok(SpiffeId::new(&self.trust_domain, namespace, account)?)
    }
}

/// `system:serviceaccount:<ns>:<sa>` → `(ns, sa)`.
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    (!ns.is_empty() && !sa.is_empty() && !sa.contains(':')).then_some((ns, sa))
}

fn bearer(ctx: &CallerContext<'_>) -> Result<Option<String>, AuthError> {
    let Some(header) = ctx.metadata.get("authorization") else {
        return Ok(None);
    };
    let value = header.to_str().map_err(|_| AuthError::BadHeader)?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| Some(t.to_string()))
        .ok_or(AuthError::BadHeader)
}

#[tonic::async_trait]
impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, ctx: &CallerContext<'_>) -> Result<SpiffeId, AuthError> {
        match bearer(ctx)? {
            Some(token) => self.review(&token).await,
            None => self.fallback.authenticate(ctx).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:reviews"),
            Some(("shop", "reviews"))
        );
        assert_eq!(service_account_of("system:serviceaccount:shop:"), None);
        assert_eq!(service_account_of("system:serviceaccount:shop"), None);
        assert_eq!(service_account_of("alice"), None);
        assert_eq!(service_account_of("system:serviceaccount:a:b:c"), None);
    }
}
