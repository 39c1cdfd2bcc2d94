//! One shared copy of every resource name that streams keep.
//!
//! A thousand sidecars subscribe to the same thousand EDS names; kept as
//! `String`s per stream that is a million small allocations. Streams keep
//! `Arc<str>`s from this table instead, so each name is stored once and a
//! stream's subscription costs a pointer per name.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

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
}
