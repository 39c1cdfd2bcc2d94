//! What one client holds of one type, kept as small as possible.
//!
//! A thousand sidecars hold the same few thousand resources. Each entry
//! here is one pointer to the resource the generator made, shared with the
//! cache and every other stream, ordered by the resource's own name, so a
//! stream stores neither names nor versions of its own.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use crate::resource::{Resource, ResourceMap};

/// One resource the client holds.
#[derive(Clone, Debug)]
pub(crate) struct Held(pub(crate) Arc<Resource>);

impl Held {
    /// A resource the client says it holds (`initial_resource_versions` on
    /// a reconnect) that this stream never sent: a version and no body.
    pub(crate) fn announced(name: String, version: String) -> Held {
        Held(Arc::new(Resource::with_version(
            name,
            version,
            Any::default(),
        )))
    }

    /// Whether this stream sent the body (as opposed to [`Held::announced`]).
    pub(crate) fn sent(&self) -> bool {
        !self.0.body.type_url.is_empty()
    }

    pub(crate) fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn version(&self) -> &str {
        &self.0.version
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.name.cmp(&other.0.name)
    }
}

/// Lookups by name: `set.get("outbound|80||a")`. Consistent with `Ord`,
/// which compares names as `str` does.
impl Borrow<str> for Held {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

/// The resources a client holds, by name.
pub(crate) type HeldSet = BTreeSet<Held>;

/// The bodies this stream sent (config dump).
pub(crate) fn sent_map(set: &HeldSet) -> ResourceMap {
    set.iter()
        .filter(|h| h.sent())
        .map(|h| (h.0.name.clone(), h.0.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_held_resources_is_a_map_by_name() {
        let body = Any {
            type_url: "t".into(),
            value: b"x".to_vec(),
        };
        let mut set = HeldSet::new();
        set.insert(Held(Arc::new(Resource::new("b", body.clone()))));
        set.insert(Held::announced("a".into(), "v1".into()));
        assert_eq!(set.get("a").map(Held::version), Some("v1"));
        assert!(!set.get("a").is_some_and(Held::sent));
        assert!(set.get("b").is_some_and(Held::sent));
        // Replacing keeps one entry per name.
        set.replace(Held(Arc::new(Resource::new("a", body))));
        assert_eq!(set.len(), 2);
        assert!(set.get("a").is_some_and(Held::sent));
        assert_eq!(sent_map(&set).len(), 2);
        set.remove("b");
        assert_eq!(
            sent_map(&set).keys().cloned().collect::<Vec<_>>(),
            vec!["a".to_string()]
        );
    }
}
