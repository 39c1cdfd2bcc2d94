//! Joins the configuration snapshot and the registry replica into
//! translation inputs, and tells the xDS server what to push.

use std::sync::Arc;

use isthmus_federation::RegistrySnapshot;
use isthmus_xds::{PushScope, Pusher};
use tokio::sync::watch;
use tracing::debug;

use crate::store::ConfigSnapshot;
use crate::translate::{Inputs, LocalSettings};

pub fn build(config: &Arc<ConfigSnapshot>, registry: &Arc<RegistrySnapshot>, root_pem: &str) -> Inputs {
    let local = LocalSettings::from_config(config, vec![root_pem.to_string()]);
    Inputs::new(config.clone(), registry.clone(), local)
}

/// Rebuilds the inputs whenever either side changes. The push version is a
/// counter of rebuilds, so every proxy can tell which inputs it has seen.
pub async fn run(
    mut config: watch::Receiver<Arc<ConfigSnapshot>>,
    mut registry: watch::Receiver<Arc<RegistrySnapshot>>,
    root_pem: String,
    inputs: watch::Sender<Arc<Inputs>>,
    pusher: Pusher,
) {
    let mut version = 1u64;
    pusher.push(version, PushScope::Full);
    loop {
        let scope = tokio::select! {
            r = config.changed() => {
                if r.is_err() { return; }
                PushScope::Full
            }
            r = registry.changed() => {
                if r.is_err() { return; }
                PushScope::Full
            }
        };
        let c = config.borrow_and_update().clone();
        let r = registry.borrow_and_update().clone();
        let next = build(&c, &r, &root_pem);
        inputs.send_replace(Arc::new(next));
        version += 1;
        debug!(version, config = c.version(), registry = r.revision, "translation inputs changed");
        pusher.push(version, scope);
    }
}
