//! The seam to the control plane: what the server asks for resources.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::proxy::Proxy;
use crate::resource::Resource;
use crate::types::TypeUrl;

/// A set of resource names, shared rather than copied.
pub type NameSet = Arc<BTreeSet<Arc<str>>>;

/// Which resources of a type are wanted.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Names {
    /// Every resource of the type that applies to the proxy (wildcard).
    All,
    /// Only these; names that do not exist are simply left out. The set is
    /// the subscribing stream's own (a push asks for a proxy's thousand EDS
    /// names by pointer, not by copying them once per stream).
    Some(NameSet),
}

impl Names {
    /// Only the given names.
    pub fn some<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Names {
        Names::Some(Arc::new(
            names.into_iter().map(|n| Arc::from(n.as_ref())).collect(),
        ))
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Names::All => true,
            Names::Some(set) => set.contains(name),
        }
    }
}

/// A generator failed; the server keeps the proxy's last good config and
/// reports the message in status and logs.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct GenerateError {
    message: String,
}

impl GenerateError {
    pub fn new(message: impl Into<String>) -> GenerateError {
        GenerateError {
            message: message.into(),
        }
    }
}

/// Produces xDS resources for a proxy from the control plane's current input.
///
/// Calls run on tokio's blocking pool, so a generator may do CPU-heavy
/// translation. Results are cached per ([`Generator::shape_for`], type, names,
/// push), so proxies with the same shape share one call per push.
pub trait Generator: Send + Sync + 'static {
    /// The resources of `type_url` that `proxy` should see, filtered to
    /// `names`. Resources not in `names` may be returned; the server drops
    /// them.
    fn generate(
        &self,
        proxy: &Proxy,
        type_url: TypeUrl,
        names: &Names,
    ) -> Result<Vec<Resource>, GenerateError>;

    /// A key for the proxy properties this generator's output depends on.
    /// Proxies with equal keys must get equal output. The default keys on
    /// everything but the pod name, which is always safe; a generator whose
    /// output does not depend on, say, the IP can return a coarser key so more
    /// proxies share one computation.
    fn shape(&self, proxy: &Proxy) -> u64 {
        proxy.shape_key()
    }

    /// [`Generator::shape`] for one resource type: a generator whose output
    /// of some types ignores properties that others read (say, EDS never
    /// reads the proxy's IP) returns a coarser key for those types. Equal
    /// keys for a type must give equal output of that type.
    ///
    /// The key may depend on the generator's current input as well as on
    /// the proxy (a sidecar's clusters depend on its IP only through the
    /// ports the input says it serves): the server asks again after every
    /// push that may change more than endpoints, so a key only has to be
    /// right for the input it is asked for. Keys of
    /// `ClusterLoadAssignment` must not depend on the input, since
    /// endpoint-only pushes reuse them.
    fn shape_for(&self, proxy: &Proxy, type_url: TypeUrl) -> u64 {
        let _ = type_url;
        self.shape(proxy)
    }

    /// [`Generator::shape_for`] of every type, indexed like [`TypeUrl::ALL`];
    /// the server calls this once per stream and push. A generator whose
    /// keys share an expensive part computes it once here.
    fn shapes(&self, proxy: &Proxy) -> [u64; TypeUrl::ALL.len()] {
        TypeUrl::ALL.map(|t| self.shape_for(proxy, t))
    }
}
