//! Client of `IstioCertificateService`: sends a CSR, returns the chain.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::channel::ChannelTls;
use crate::manager::CertificateSigner;
use crate::service::pb;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid CA address `{0}`: expected host:port")]
    BadAddress(String),
    #[error("cannot connect to the CA at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("the CA refused the request: {} ({:?})", .0.message(), .0.code())]
    Status(#[from] tonic::Status),
    #[error("the bootstrap token contains characters not allowed in a header")]
    BadToken,
    #[error("the CA returned an empty certificate chain")]
    EmptyChain,
    #[error("the local CA refused: {0}")]
    Authority(#[from] crate::ca::CaError),
}

#[derive(Clone, Debug)]
pub struct CaClientConfig {
    /// `host:port` of the CA.
    pub addr: String,
    /// `None` means plaintext (only for tests and loopback).
    pub tls: Option<ChannelTls>,
    /// Bootstrap token sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    pub timeout: Duration,
}

impl CaClientConfig {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            tls: None,
            token: None,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CaClient {
    config: CaClientConfig,
}

impl CaClient {
    pub fn new(config: CaClientConfig) -> Self {
        Self { config }
    }

    /// A fresh connection per request: CSRs are rare, and a new handshake
    /// presents the certificate that is current now rather than the one a
    /// pooled connection was opened with.
    async fn connect(&self) -> Result<Channel, ClientError> {
        let addr = self.config.addr.clone();
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| ClientError::BadAddress(addr.clone()))?
            .connect_timeout(self.config.timeout)
            .timeout(self.config.timeout);
        crate::channel::connect(&endpoint, self.config.tls.clone())
            .await
            .map_err(|source| ClientError::Connect { addr, source })
    }

    /// Sends `csr_pem`; returns the PEM chain, leaf first.
    pub async fn create_certificate(
        &self,
        csr_pem: String,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, ClientError> {
        let channel = self.connect().await?;
        let mut client =
            pb::istio_certificate_service_client::IstioCertificateServiceClient::new(channel);
        let mut request = tonic::Request::new(pb::IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: lifetime
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            metadata: None,
        });
        if let Some(token) = &self.config.token {
            let value: MetadataValue<_> = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::BadToken)?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = client.create_certificate(request).await?.into_inner();
        if response.cert_chain.is_empty() {
            return Err(ClientError::EmptyChain);
        }
        Ok(response.cert_chain)
    }
}

#[tonic::async_trait]
impl CertificateSigner for CaClient {
    async fn sign(
        &self,
        csr_pem: String,
        lifetime: Option<Duration>,
    ) -> Result<Vec<String>, ClientError> {
        self.create_certificate(csr_pem, lifetime).await
    }
}
