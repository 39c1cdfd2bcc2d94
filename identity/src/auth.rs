//! Who is calling the CA. In file mode a caller proves its identity with a
//! bootstrap token (a file of `token namespace/serviceaccount` lines) or with
//! a still-valid certificate of that identity presented in the TLS handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tonic::metadata::MetadataMap;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeError, SpiffeId};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: present a workload certificate or an `authorization: Bearer <token>` header")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    BadHeader,
    #[error("unknown bootstrap token")]
    UnknownToken,
    /// The Kubernetes API server reviewed the token and did not vouch for it.
    #[error("the service-account token was rejected: {0}")]
    TokenRejected(String),
    /// The token could not be reviewed (API server unreachable, RBAC).
    #[error("cannot review the service-account token: {0} (check the control plane's access to the Kubernetes API: create tokenreviews.authentication.k8s.io)")]
    TokenReviewUnavailable(String),
    #[error("the client certificate is expired or not yet valid (valid {not_before} .. {not_after}); renew with a bootstrap token")]
    CertificateNotCurrent {
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    },
    #[error("the client certificate is unusable: {0}")]
    Certificate(String),
    #[error("client certificate identity: {0}")]
    Identity(#[from] SpiffeError),
    #[error("{got} is from trust domain `{}`, but this CA serves `{trust_domain}`", got.trust_domain())]
    ForeignTrustDomain { got: SpiffeId, trust_domain: String },
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path}, line {line}: {reason}")]
    TokenLine {
        path: String,
        line: usize,
        reason: String,
    },
}

/// What the CA knows about a call.
pub struct CallerContext<'a> {
    pub metadata: &'a MetadataMap,
    /// The client's TLS chain, already verified against the trust bundle at handshake.
    pub peer_certs: Option<&'a [CertificateDer<'static>]>,
    pub remote_addr: Option<SocketAddr>,
}

#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, ctx: &CallerContext<'_>) -> Result<SpiffeId, AuthError>;
}

/// Bootstrap tokens. Only SHA-256 digests are kept, and lookups go by digest,
/// so neither memory dumps nor lookup timing reveal a token.
#[derive(Clone, Default)]
pub struct TokenTable {
    by_digest: HashMap<[u8; 32], SpiffeId>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable")
            .field("tokens", &self.by_digest.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenTable {
    pub fn insert(&mut self, token: &str, id: SpiffeId) {
        self.by_digest.insert(digest(token), id);
    }

    pub fn lookup(&self, token: &str) -> Option<&SpiffeId> {
        self.by_digest.get(&digest(token))
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Parses `token namespace/serviceaccount` lines; `#` starts a comment.
    pub fn parse(text: &str, trust_domain: &str, source: &str) -> Result<Self, AuthError> {
        let mut table = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| AuthError::TokenLine {
                path: source.to_owned(),
                line: i + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(token), Some(who), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(
                    "expected `<token> <namespace>/<serviceaccount>`".to_owned()
                ));
            };
            if token.len() < 16 {
                return Err(bad("tokens must be at least 16 characters".to_owned()));
            }
            let (ns, sa) = who
                .split_once('/')
                .ok_or_else(|| bad(format!("`{who}` is not <namespace>/<serviceaccount>")))?;
            let id = SpiffeId::new(trust_domain, ns, sa).map_err(|e| bad(e.to_string()))?;
            table.insert(token, id);
        }
        Ok(table)
    }

    pub fn load(path: &Path, trust_domain: &str) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::TokenFile {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, trust_domain, &path.display().to_string())
    }
}

/// File mode: a valid client certificate of the trust domain, else a bootstrap token.
#[derive(Clone, Debug)]
pub struct FileAuthenticator {
    trust_domain: String,
    tokens: Arc<TokenTable>,
}

impl FileAuthenticator {
    pub fn new(trust_domain: &str, tokens: TokenTable) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            tokens: Arc::new(tokens),
        }
    }

    fn by_certificate(&self, certs: &[CertificateDer<'static>]) -> Result<SpiffeId, AuthError> {
        let leaf = certs.first().ok_or(AuthError::Missing)?;
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| AuthError::Certificate(e.to_string()))?;
        // The handshake checked validity, but an HTTP/2 connection can outlive
        // the certificate it was opened with: check again for every call.
        let now = OffsetDateTime::now_utc();
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        if now < not_before || now > not_after {
            return Err(AuthError::CertificateNotCurrent {
                not_before,
                not_after,
            });
        }
        let id = SpiffeId::from_cert(&cert)?;
        if id.trust_domain() != self.trust_domain {
            return Err(AuthError::ForeignTrustDomain {
                got: id,
                trust_domain: self.trust_domain.clone(),
            });
        }
        Ok(id)
    }

    fn by_token(&self, metadata: &MetadataMap) -> Result<SpiffeId, AuthError> {
        let header = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = header.to_str().map_err(|_| AuthError::BadHeader)?;
        let token = value
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::BadHeader)?;
        self.tokens
            .lookup(token)
            .cloned()
            .ok_or(AuthError::UnknownToken)
    }
}

#[tonic::async_trait]
impl Authenticator for FileAuthenticator {
    async fn authenticate(&self, ctx: &CallerContext<'_>) -> Result<SpiffeId, AuthError> {
        let has_token = ctx.metadata.contains_key("authorization");
        match ctx.peer_certs.filter(|c| !c.is_empty()) {
            Some(certs) => match self.by_certificate(certs) {
                Ok(id) => Ok(id),
                // A stale certificate on a long-lived connection; a token may still vouch.
                Err(_) if has_token => self.by_token(ctx.metadata),
                Err(e) => Err(e),
            },
            None => self.by_token(ctx.metadata),
        }
    }
}
