//! One kube `watcher` per watched type, each feeding the source's owner
//! task through one channel. The watchers do the protocol work (paginated
//! initial list, watch from the list's resourceVersion, bookmarks, relist
//! after `410 Gone`, resume after a disconnect); backoff between failed
//! attempts is kube's default exponential backoff.

use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::Kind;

/// A custom resource type the source reads into the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomType {
    pub kind: Kind,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
}

impl CustomType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            // The core group: `v1`, not `/v1`.
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind.name()),
            self.plural,
        )
    }
}

const fn custom(
    kind: Kind,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
) -> CustomType {
    CustomType {
        kind,
        group,
        version,
        plural,
    }
}

/// Istio's storage versions since 1.22 (`v1`), the MCS API's only one, and
/// core Secrets (Gateway `credentialName`; the state keeps only TLS ones,
/// and publishes only those in namespaces that have a Gateway).
pub const CUSTOM_TYPES: [CustomType; 11] = [
    custom(
        Kind::VirtualService,
        "networking.istio.io",
        "v1",
        "virtualservices",
    ),
    custom(
        Kind::DestinationRule,
        "networking.istio.io",
        "v1",
        "destinationrules",
    ),
    custom(Kind::Gateway, "networking.istio.io", "v1", "gateways"),
    custom(
        Kind::ServiceEntry,
        "networking.istio.io",
        "v1",
        "serviceentries",
    ),
    custom(
        Kind::WorkloadEntry,
        "networking.istio.io",
        "v1",
        "workloadentries",
    ),
    custom(Kind::Sidecar, "networking.istio.io", "v1", "sidecars"),
    custom(
        Kind::PeerAuthentication,
        "security.istio.io",
        "v1",
        "peerauthentications",
    ),
    custom(
        Kind::AuthorizationPolicy,
        "security.istio.io",
        "v1",
        "authorizationpolicies",
    ),
    custom(
        Kind::RequestAuthentication,
        "security.istio.io",
        "v1",
        "requestauthentications",
    ),
    custom(
        Kind::ServiceExport,
        "multicluster.x-k8s.io",
        "v1alpha1",
        "serviceexports",
    ),
    custom(Kind::Secret, "", "v1", "secrets"),
];

/// Whether a Secret can be a Gateway credential: type `kubernetes.io/tls`,
/// or any type carrying `tls.crt`, `ca.crt` or `cacert` (Istio's generic
/// and `NAME-cacert` forms). Other Secrets never enter the store.
pub fn is_credential_secret(obj: &DynamicObject) -> bool {
    use crate::config::{CA_CERT_ALT_KEY, CA_CERT_KEY, TLS_CERT_KEY};
    if obj.data["type"].as_str() == Some("kubernetes.io/tls") {
        return true;
    }
    ["data", "stringData"].iter().any(|field| {
        [TLS_CERT_KEY, CA_CERT_KEY, CA_CERT_ALT_KEY]
            .iter()
            .any(|k| obj.data[field].get(k).is_some())
    })
}

/// Which stream an update came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    Service,
    EndpointSlice,
    Pod,
    Node,
    Namespace,
    /// Index into [`CUSTOM_TYPES`].
    Custom(usize),
}

impl Watched {
    pub fn all() -> Vec<Watched> {
        let mut out = vec![
            Watched::Service,
            Watched::EndpointSlice,
            Watched::Pod,
            Watched::Node,
            Watched::Namespace,
        ];
        out.extend((0..CUSTOM_TYPES.len()).map(Watched::Custom));
        out
    }

    /// Custom resources may legitimately be absent (CRD not installed).
    pub fn optional(self) -> bool {
        matches!(self, Watched::Custom(_))
    }

    /// Secrets may legitimately be forbidden: an operator who uses no
    /// Gateway `credentialName` may deny the control plane all Secrets.
    pub fn may_be_forbidden(self) -> bool {
        matches!(self, Watched::Custom(i) if CUSTOM_TYPES.get(i).is_some_and(|t| t.kind == Kind::Secret))
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Watched::Service => f.write_str("services"),
            Watched::EndpointSlice => f.write_str("endpointslices.discovery.k8s.io"),
            Watched::Pod => f.write_str("pods"),
            Watched::Node => f.write_str("nodes"),
            Watched::Namespace => f.write_str("namespaces"),
            Watched::Custom(i) => match CUSTOM_TYPES.get(*i) {
                Some(t) => write!(f, "{}.{}", t.plural, t.group),
                None => write!(f, "custom resource #{i}"),
            },
        }
    }
}

/// One object, typed where the source reads its fields.
#[derive(Debug, Clone)]
pub enum Obj {
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Pod(Arc<Pod>),
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
    Custom(Arc<DynamicObject>),
}

impl Obj {
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Obj::Service(o) => &o.metadata,
            Obj::Slice(o) => &o.metadata,
            Obj::Pod(o) => &o.metadata,
            Obj::Node(o) => &o.metadata,
            Obj::Namespace(o) => &o.metadata,
            Obj::Custom(o) => &o.metadata,
        }
    }

    /// `(namespace, name)`; cluster-scoped objects have an empty namespace.
    pub fn key(&self) -> (String, String) {
        let m = self.meta();
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.meta().resource_version.as_deref()
    }
}

/// What a watcher reports.
#[derive(Debug)]
pub enum Ev {
    /// A (re)list started; objects follow as `InitApply` until `InitDone`.
    Init,
    InitApply(Obj),
    /// The relist is complete: the buffered objects are the whole set.
    InitDone,
    Apply(Obj),
    Delete(Obj),
    /// The watcher failed and will retry after a backoff.
    Failed {
        not_found: bool,
        message: String,
    },
}

#[derive(Debug)]
pub struct Update {
    pub source: Watched,
    pub event: Ev,
}

/// Starts one watcher per watched type. Dropping the handles stops nothing;
/// abort them to stop.
pub fn spawn_all(
    client: &Client,
    config: &watcher::Config,
    tx: &mpsc::Sender<Update>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        spawn_typed::<Service>(
            client,
            config,
            Watched::Service,
            |o| Obj::Service(Arc::new(o)),
            tx,
        ),
        spawn_typed::<EndpointSlice>(
            client,
            config,
            Watched::EndpointSlice,
            |o| Obj::Slice(Arc::new(o)),
            tx,
        ),
        spawn_typed::<Pod>(client, config, Watched::Pod, |o| Obj::Pod(Arc::new(o)), tx),
        spawn_typed::<Node>(
            client,
            config,
            Watched::Node,
            |o| Obj::Node(Arc::new(o)),
            tx,
        ),
        spawn_typed::<Namespace>(
            client,
            config,
            Watched::Namespace,
            |o| Obj::Namespace(Arc::new(o)),
            tx,
        ),
    ];
    for (i, t) in CUSTOM_TYPES.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &t.api_resource());
        tasks.push(tokio::spawn(run(
            api,
            config.clone(),
            Watched::Custom(i),
            |o| Obj::Custom(Arc::new(o)),
            tx.clone(),
        )));
    }
    tasks
}

fn spawn_typed<K>(
    client: &Client,
    config: &watcher::Config,
    source: Watched,
    wrap: fn(K) -> Obj,
    tx: &mpsc::Sender<Update>,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    tokio::spawn(run(api, config.clone(), source, wrap, tx.clone()))
}

async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    source: Watched,
    wrap: fn(K) -> Obj,
    tx: mpsc::Sender<Update>,
) where
    K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
{
    // Managed fields are the bulk of most objects and mean nothing here.
    let strip = move |mut o: K| {
        o.managed_fields_mut().clear();
        wrap(o)
    };
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(watcher::Event::Init) => Ev::Init,
            Ok(watcher::Event::InitApply(o)) => Ev::InitApply(strip(o)),
            Ok(watcher::Event::InitDone) => Ev::InitDone,
            Ok(watcher::Event::Apply(o)) => Ev::Apply(strip(o)),
            Ok(watcher::Event::Delete(o)) => Ev::Delete(strip(o)),
            Err(e) => {
                let forbidden = source.may_be_forbidden() && is_status(&e, 403);
                let not_found = is_status(&e, 404) || forbidden;
                if forbidden {
                    warn!(%source, error = %e, "the control plane may not read Secrets; Gateway credentialName cannot be served (grant get/list/watch on secrets to use it); retrying with backoff");
                } else if not_found && source.optional() {
                    debug!(%source, error = %e, "resource type not served by the API server (CRD not installed?); retrying with backoff");
                } else {
                    warn!(%source, error = %e, "watch failed; retrying with backoff (check the API server address and this control plane's RBAC)");
                }
                Ev::Failed {
                    not_found,
                    message: e.to_string(),
                }
            }
        };
        if tx.send(Update { source, event }).await.is_err() {
            return;
        }
    }
}

fn is_status(e: &watcher::Error, code: u16) -> bool {
    let client_error = match e {
        watcher::Error::InitialListFailed(c)
        | watcher::Error::WatchStartFailed(c)
        | watcher::Error::WatchFailed(c) => c,
        watcher::Error::WatchError(s) => return s.code == code,
        _ => return false,
    };
    matches!(client_error, kube::Error::Api(s) if s.code == code)
}
