//! [`same_content`] answers shared by every stream of a push.
//!
//! When a push regenerates resources whose bytes changed but whose messages
//! did not (protobuf maps encode in hash-map order), every stream holding
//! them asks whether its client is current: the same (held, new) pair of
//! shared resources, decoded twice per stream. A thousand streams holding a
//! thousand clusters made that a minute of CPU per full push. The first
//! stream to ask decodes; the others read the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::resource::{same_content, Resource};

/// The answers of the current push, by the two resources' addresses. The
/// entries hold both resources, so an address cannot be reused while its
/// answer is remembered.
#[derive(Default)]
pub(crate) struct SameContent {
    memo: Mutex<Memo>,
}

#[derive(Default)]
struct Memo {
    seq: u64,
    answers: HashMap<(usize, usize), Answer>,
}

struct Answer {
    _old: Arc<Resource>,
    _new: Arc<Resource>,
    same: bool,
}

impl SameContent {
    /// [`same_content`] of `old` and `new`, computed once per push `seq`.
    pub(crate) fn check(&self, seq: u64, old: &Arc<Resource>, new: &Arc<Resource>) -> bool {
        if Arc::ptr_eq(old, new) || old.version == new.version {
            return true;
        }
        let key = (Arc::as_ptr(old) as usize, Arc::as_ptr(new) as usize);
        {
            let mut memo = self.lock();
            if seq > memo.seq {
                // A new push: the previous one's pairs are not asked again.
                memo.seq = seq;
                memo.answers.clear();
            }
            if let Some(a) = memo.answers.get(&key) {
                return a.same;
            }
        }
        // Decoded outside the lock; two streams racing both decode once.
        let same = same_content(old, new);
        let mut memo = self.lock();
        if memo.seq == seq {
            memo.answers.insert(
                key,
                Answer {
                    _old: old.clone(),
                    _new: new.clone(),
                    same,
                },
            );
        }
        same
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        // A poisoned lock only means a panic between two map operations.
        self.memo.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::tests::route_config_with_filters_in;

    #[test]
    fn answers_are_shared_within_a_push_and_forgotten_after() {
        let a = Arc::new(Resource::new(
            "r",
            route_config_with_filters_in(&["x", "y"]),
        ));
        let b = Arc::new(Resource::new(
            "r",
            route_config_with_filters_in(&["y", "x"]),
        ));
        let c = Arc::new(Resource::new(
            "r",
            route_config_with_filters_in(&["x", "z"]),
        ));
        let same = SameContent::default();
        assert!(same.check(1, &a, &b));
        assert!(!same.check(1, &a, &c));
        assert_eq!(same.lock().answers.len(), 2);
        assert!(same.check(1, &a, &b), "answered from the memo");
        assert_eq!(same.lock().answers.len(), 2);
        assert!(same.check(2, &a, &b));
        assert_eq!(same.lock().answers.len(), 1, "a new push starts over");
    }
}
