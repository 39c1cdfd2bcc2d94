//! Generated resources shared between proxies of the same shape.
//!
//! One entry per (push, shape, type, names). The first connection to ask
//! computes it on the blocking pool; the others wait for the same result. The
//! map lock is only held to find or insert an entry, never while generating.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::generator::{Generator, Names};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::resource::{Resource, ResourceMap};
use crate::types::TypeUrl;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    seq: u64,
    shape: u64,
    type_url: TypeUrl,
    names: Names,
}

type Slot = Arc<OnceCell<Result<Arc<ResourceMap>, Arc<str>>>>;

#[derive(Default)]
struct Entries {
    newest_seq: u64,
    map: HashMap<Key, Slot>,
}

pub(crate) struct Cache {
    generator: Arc<dyn Generator>,
    entries: Mutex<Entries>,
    metrics: Metrics,
}

impl Cache {
    pub(crate) fn new(generator: Arc<dyn Generator>, metrics: Metrics) -> Cache {
        Cache {
            generator,
            entries: Mutex::new(Entries::default()),
            metrics,
        }
    }

    /// The proxy's shape key per resource type (streams ask once per push).
    pub(crate) fn shapes(&self, proxy: &Proxy) -> [u64; TypeUrl::ALL.len()] {
        self.generator.shapes(proxy)
    }

    /// The resources of `type_url` named by `names` for proxies of `shape`
    /// as of push `seq`. Errors are the generator's message.
    pub(crate) async fn get(
        &self,
        proxy: &Arc<Proxy>,
        shape: u64,
        seq: u64,
        type_url: TypeUrl,
        names: &Names,
    ) -> Result<Arc<ResourceMap>, Arc<str>> {
        let key = Key {
            seq,
            shape,
            type_url,
            names: names.clone(),
        };
        let slot = self.slot(key);
        slot.get_or_init(|| self.generate(proxy.clone(), type_url, names.clone()))
            .await
            .clone()
    }

    fn slot(&self, key: Key) -> Slot {
        // A poisoned lock only means another task panicked between two map
        // operations; the map itself is still consistent.
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if key.seq > entries.newest_seq {
            // Keep the previous push's entries for connections still catching up.
            let keep_from = key.seq.saturating_sub(1);
            entries.newest_seq = key.seq;
            entries.map.retain(|k, _| k.seq >= keep_from);
        }
        entries.map.entry(key).or_default().clone()
    }

    async fn generate(
        &self,
        proxy: Arc<Proxy>,
        type_url: TypeUrl,
        names: Names,
    ) -> Result<Arc<ResourceMap>, Arc<str>> {
        self.metrics.generated(type_url);
        let generator = self.generator.clone();
        let task = tokio::task::spawn_blocking(move || {
            generator
                .generate(&proxy, type_url, &names)
                .map(|resources| into_map(resources, &names))
        });
        match task.await {
            Ok(Ok(map)) => Ok(Arc::new(map)),
            Ok(Err(e)) => Err(Arc::from(e.to_string())),
            Err(e) => Err(Arc::from(format!("generator panicked: {e}"))),
        }
    }
}

fn into_map(resources: Vec<Resource>, names: &Names) -> ResourceMap {
    resources
        .into_iter()
        .filter(|r| names.contains(&r.name))
        .map(|r| (r.name.clone(), Arc::new(r)))
        .collect()
}
