//! Translation of the configuration snapshot and the federation registry
//! into Envoy xDS v3 resources for one proxy, with Istio's naming.
//!
//! Pure functions of ([`Inputs`], [`Proxy`]): [`Inputs`] is built once per
//! input change (it indexes every service, local and imported), and
//! [`Context`] holds what one proxy sees. Each resource kind has its own
//! module; [`generator::TranslateGenerator`] plugs them into the xDS server.
//!
//! Proxyless gRPC clients (node metadata `GENERATOR: grpc`, as in Istio) get
//! the subset of the API gRPC accepts: `api_listener`s named `HOST:PORT`,
//! EDS clusters with round-robin or ring-hash, and TLS only when a
//! DestinationRule asks for it, through certificate-provider instances.

pub mod authn;
pub mod cluster;
pub mod endpoint;
pub mod generator;
pub mod listener;
pub mod locality;
pub mod nametable;
pub mod naming;
pub mod policy;
pub mod proto;
pub mod rbac;
pub mod render;
pub mod route;
pub mod scope;
pub mod secret;
pub mod services;
pub mod shape;
pub mod telemetry;
pub mod tls;
pub mod tunnel;

use std::sync::Arc;

use isthmus_federation::model::Locality;
use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{Proxy, ProxyRole};

use crate::config::{DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN};
use crate::store::ConfigSnapshot;

pub use generator::TranslateGenerator;
pub use scope::Scope;
pub use services::{Service, ServiceIndex};

/// What this control plane knows about its own cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSettings {
    pub cluster_id: String,
    pub network: String,
    pub locality: Locality,
    pub trust_domain: String,
    /// Where mesh-wide policies live.
    pub root_namespace: String,
    /// PEM roots this cluster trusts besides those in the registry (its own
    /// root, so the bundle is complete before the registry is reachable).
    pub roots_pem: Vec<String>,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings {
            cluster_id: String::new(),
            network: String::new(),
            locality: Locality::default(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_string(),
            roots_pem: Vec::new(),
        }
    }
}

impl LocalSettings {
    /// From the cluster's MeshConfig, when it has one.
    pub fn from_config(config: &ConfigSnapshot, roots_pem: Vec<String>) -> LocalSettings {
        let Some(mesh) = config.mesh_config() else {
            return LocalSettings {
                roots_pem,
                ..LocalSettings::default()
            };
        };
        let spec = &mesh.spec;
        let locality = spec
            .locality
            .as_ref()
            .map(|l| Locality {
                region: l.region.clone().unwrap_or_default(),
                zone: l.zone.clone().unwrap_or_default(),
                subzone: l.subzone.clone().unwrap_or_default(),
            })
            .unwrap_or_default();
        LocalSettings {
            cluster_id: spec.cluster_id.clone(),
            network: spec.network.clone().unwrap_or_default(),
            locality,
            trust_domain: spec.trust_domain().to_string(),
            root_namespace: spec.root_namespace().to_string(),
            roots_pem,
        }
    }
}

/// Everything translation reads, at one config version and one registry
/// revision, with the service index built once.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub config: Arc<ConfigSnapshot>,
    pub registry: Arc<RegistrySnapshot>,
    pub local: LocalSettings,
    pub services: ServiceIndex,
    /// JWK Sets fetched for RequestAuthentication `jwksUri`s (by URI).
    pub jwks: Arc<authn::ResolvedJwks>,
}

impl Inputs {
    pub fn new(
        config: Arc<ConfigSnapshot>,
        registry: Arc<RegistrySnapshot>,
        local: LocalSettings,
    ) -> Inputs {
        let services = ServiceIndex::build(&config, &registry, &local);
        Inputs {
            config,
            registry,
            local,
            services,
            jwks: Arc::default(),
        }
    }

    /// The same inputs with these fetched JWK Sets.
    pub fn with_jwks(mut self, jwks: Arc<authn::ResolvedJwks>) -> Inputs {
        self.jwks = jwks;
        self
    }
}

/// Which xDS client consumes the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyFlavor {
    /// Envoy or the Isthmus gateway: the full API.
    Envoy,
    /// gRPC's built-in xDS client.
    Grpc,
}

/// One proxy's view of the inputs.
pub struct Context<'a> {
    pub inputs: &'a Inputs,
    pub proxy: &'a Proxy,
    pub flavor: ProxyFlavor,
    pub scope: Scope<'a>,
    network: &'a str,
    locality: Locality,
}

impl<'a> Context<'a> {
    pub fn new(inputs: &'a Inputs, proxy: &'a Proxy, flavor: ProxyFlavor) -> Context<'a> {
        let locality = Locality {
            region: proxy.locality.region.clone(),
            zone: proxy.locality.zone.clone(),
            subzone: proxy.locality.sub_zone.clone(),
        };
        // A proxy that does not say where it is lives where its cluster is.
        let locality = if locality == Locality::default() {
            inputs.local.locality.clone()
        } else {
            locality
        };
        Context {
            inputs,
            proxy,
            flavor,
            scope: Scope::new(&inputs.config, proxy, &inputs.local.root_namespace),
            network: proxy.network.as_deref().unwrap_or(&inputs.local.network),
            locality,
        }
    }

    pub fn network(&self) -> &str {
        self.network
    }

    pub fn locality(&self) -> &Locality {
        &self.locality
    }

    pub fn role(&self) -> ProxyRole {
        self.proxy.role
    }

    /// The services this proxy may send to, by hostname.
    pub fn reachable_services(&self) -> impl Iterator<Item = &'a Service> + '_ {
        self.inputs
            .services
            .iter()
            .filter(|s| self.scope.reaches(s))
    }
}
