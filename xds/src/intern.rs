//! One shared copy of every resource name, and of every name set, that
//! streams keep.
//!
//! A thousand sidecars subscribe to the same thousand EDS names; kept as
//! `String`s per stream that is a million small allocations. Streams keep
//! `Arc<str>`s from this table instead, so each name is stored once and a
//! stream's subscription costs a pointer per name. Proxies of one shape
//! also subscribe to the very same set of names, so a finished
//! subscription is looked up by content and shared as well: a thousand
//! sidecars then hold one B-tree of a thousand names, not a thousand
//! (about 25 KiB each). A stream that changes its subscription later
//! copies the set first (`Arc::make_mut`), so sharing never changes what
//! another stream subscribed to.

use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use crate::generator::NameSet;

#[derive(Default)]
struct Table {
    names: HashSet<Arc<str>>,
    /// Size after the last sweep; the next sweep runs once the table doubled.
    swept_at: usize,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The shared copy of `name`.
pub(crate) fn intern(name: &str) -> Arc<str> {
    // A poisoned lock only means a panic between two set operations; the
    // set itself is still consistent.
    let mut t = table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = t.names.get(name) {
        return n.clone();
    }
    if t.names.len() >= 2 * t.swept_at.max(1024) {
        // Names nobody holds any more (unsubscribed, deleted services).
        t.names.retain(|n| Arc::strong_count(n) > 1);
        t.swept_at = t.names.len();
    }
    let n: Arc<str> = Arc::from(name);
    t.names.insert(n.clone());
    n
}

/// A name set compared and hashed by its names.
struct ByContent(NameSet);

impl PartialEq for ByContent {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for ByContent {}

impl Hash for ByContent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

#[derive(Default)]
struct SetTable {
    sets: HashSet<ByContent>,
    swept_at: usize,
}

fn set_table() -> &'static Mutex<SetTable> {
    static TABLE: OnceLock<Mutex<SetTable>> = OnceLock::new();
    TABLE.get_or_init(Mutex::default)
}

/// The shared copy of a set with the names of `set`.
pub(crate) fn intern_set(set: NameSet) -> NameSet {
    if set.is_empty() {
        return set;
    }
    let key = ByContent(set);
    // A poisoned lock only means a panic between two set operations.
    let mut t = set_table().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = t.sets.get(&key) {
        return shared.0.clone();
    }
    if t.sets.len() >= 2 * t.swept_at.max(64) {
        // Sets no stream holds any more.
        t.sets.retain(|s| Arc::strong_count(&s.0) > 1);
        t.swept_at = t.sets.len();
    }
    let set = key.0.clone();
    t.sets.insert(key);
    set
}

/// A set of shared names, itself shared (see the module docs).
pub(crate) fn name_set<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> NameSet {
    let set: BTreeSet<Arc<str>> = names.into_iter().map(|n| intern(n.as_ref())).collect();
    intern_set(Arc::new(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation() {
        let a = intern("outbound|80||intern-test.default.svc.cluster.local");
        let b = intern(&String::from(
            "outbound|80||intern-test.default.svc.cluster.local",
        ));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern("outbound|81||other")));
    }

    #[test]
    fn equal_name_sets_share_one_allocation() {
        let a = name_set(["set-test-a", "set-test-b"]);
        let b = name_set(["set-test-b", "set-test-a"]);
        assert!(Arc::ptr_eq(&a, &b));
        let c = name_set(["set-test-a"]);
        assert!(!Arc::ptr_eq(&a, &c));
        // A changed copy is a set of its own until shared again.
        let mut d = b.clone();
        Arc::make_mut(&mut d).remove("set-test-b");
        assert_eq!(a.len(), 2, "the shared set is unchanged");
        assert!(Arc::ptr_eq(&intern_set(d), &c));
    }
}
