//! Workload identity for Isthmus: SPIFFE IDs, the trust-domain CA (root,
//! per-cluster intermediates, leaf signing), Istio's plug-in CA files, the
//! `IstioCertificateService` gRPC API (server and client), the federation trust
//! bundle with rustls verifiers, and the workload certificate manager.
//!
//! Wiring, in short:
//! - CLI: `isthmus ca <CaCommand>` calls [`cli::run`].
//! - Control plane: [`files::load_authority`] on the plug-in directory, put the
//!   [`Authority`] in a `watch`, build a [`CaService`] with a
//!   [`FileAuthenticator`] ([`TokenTable::load`]) and [`CaMetrics`], get the
//!   process's own certificate from a [`CertManager`] fed by an
//!   [`AuthoritySigner`], and serve with [`service::serve_tls`] (or add
//!   `CaService::into_server()` to a tonic router whose incoming stream is
//!   [`transport::tls_incoming`], so callers' certificates reach the service).
//! - Workloads and gateways: a [`CertManager`] fed by a [`CaClient`]
//!   (bootstrap token and/or current certificate), then
//!   [`tls::server_config`] / [`tls::client_config`] with the federation
//!   [`BundleWatch`] and a [`PeerPolicy`]; rotations need no rebuild.

pub mod auth;
pub mod bundle;
pub mod ca;
pub mod ca_trust;
pub mod channel;
pub mod cli;
pub mod client;
pub mod files;
pub mod inspect;
pub mod manager;
pub mod pem;
pub mod reload;
pub mod service;
pub mod spiffe;
pub mod tls;
pub mod transport;
pub mod verify;
pub mod workload;

pub use auth::{AuthError, Authenticator, CallerContext, FileAuthenticator, TokenTable};
pub use bundle::{BundleDiff, Fingerprint, TrustBundle};
pub use ca::{Authority, CaError, CaMaterial, KeyAlgorithm, LeafPolicy};
pub use ca_trust::{control_plane_trust, follow_control_plane_trust, renew_on_bundle_change};
pub use channel::ChannelTls;
pub use cli::{run, CaCommand};
pub use client::{CaClient, CaClientConfig, ClientError};
pub use manager::{
    AuthoritySigner, CertManager, CertManagerConfig, CertWatch, CertificateSigner, ManagerError,
    RenewHandle,
};
pub use service::{CaMetrics, CaService, CaServiceConfig, RateLimit};
pub use spiffe::{
    SpiffeError, SpiffeId, CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN,
};
pub use verify::{
    follow_issued_roots, peer_identity, static_bundle, BundleWatch, PeerPolicy,
    SpiffeClientVerifier, SpiffeServerVerifier, VerifyError,
};
pub use workload::WorkloadCert;
