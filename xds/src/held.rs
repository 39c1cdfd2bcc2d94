//! What one client holds of one type, kept as small as possible.
//!
//! A thousand sidecars hold the same few thousand resources. Each entry
//! here is one pointer to the resource the generator made, shared with the
//! cache and every other stream, ordered by the resource's own name, so a
//! stream stores neither names nor versions of its own. Proxies of one
//! shape end up holding the very same resources, so after each update a
//! stream looks its set up by content ([`share`]) and keeps the one copy
//! all such streams share: a B-tree of a thousand pointers is about 17 KiB,
//! and a sidecar holds two (clusters and endpoints). The next update copies
//! the shared set first (`Arc::make_mut`), so sharing never changes what
//! another stream holds.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

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

/// A held set compared and hashed by which resources it holds (the
/// resources' addresses: equal sets hold the very same shared resources).
struct SameResources(Arc<HeldSet>);

impl PartialEq for SameResources {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.len() == other.0.len()
                && self
                    .0
                    .iter()
                    .zip(other.0.iter())
                    .all(|(a, b)| Arc::ptr_eq(&a.0, &b.0)))
    }
}

impl Eq for SameResources {}

impl Hash for SameResources {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.len().hash(state);
        for h in self.0.iter() {
            Arc::as_ptr(&h.0).hash(state);
        }
    }
}

#[derive(Default)]
struct Table {
    sets: HashSet<SameResources>,
    /// Size after the last sweep; the next sweep runs once the table doubled.
    swept_at: usize,
}

/// Replaces `set` with the shared set holding the same resources, if some
/// stream has one (see the module docs).
pub(crate) fn share(set: &mut Arc<HeldSet>) {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    if set.is_empty() {
        return;
    }
    let key = SameResources(std::mem::take(set));
    // A poisoned lock only means a panic between two set operations.
    let mut t = TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = t.sets.get(&key) {
        *set = shared.0.clone();
        return;
    }
    if t.sets.len() >= 2 * t.swept_at.max(64) {
        // Sets no stream holds any more (each update leaves one behind).
        t.sets.retain(|s| Arc::strong_count(&s.0) > 1);
        t.swept_at = t.sets.len();
    }
    *set = key.0.clone();
    t.sets.insert(key);
}

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

    #[test]
    fn sets_of_the_same_resources_are_shared() {
        let body = Any {
            type_url: "t".into(),
            value: b"x".to_vec(),
        };
        let (a, b) = (
            Arc::new(Resource::new("share-a", body.clone())),
            Arc::new(Resource::new("share-b", body.clone())),
        );
        let held = |rs: &[&Arc<Resource>]| -> Arc<HeldSet> {
            Arc::new(rs.iter().map(|r| Held((*r).clone())).collect())
        };
        let (mut one, mut two) = (held(&[&a, &b]), held(&[&b, &a]));
        share(&mut one);
        share(&mut two);
        assert!(Arc::ptr_eq(&one, &two));
        // Equal names and versions but another resource: not the same.
        let mut other = held(&[&a, &Arc::new(Resource::new("share-b", body))]);
        share(&mut other);
        assert!(!Arc::ptr_eq(&one, &other));
        // An update copies first; the shared set does not change.
        Arc::make_mut(&mut two).remove("share-a");
        assert_eq!(one.len(), 2);
        assert_eq!(two.len(), 1);
    }
}
