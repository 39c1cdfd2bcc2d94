//! Maglev consistent hashing (Eisenbud et al. 2016), weighted as in Envoy.

use super::ring_hash::hash64;

/// Envoy's default table size (a prime).
pub const TABLE_SIZE: usize = 65537;

#[derive(Debug, Clone)]
pub struct Maglev {
    table: Vec<usize>,
}

impl Maglev {
    /// `hosts` are (key, weight). Builds a lookup table of `size` (prime) entries.
    pub fn build(hosts: &[(String, u32)], size: usize) -> Self {
        if hosts.is_empty() || size == 0 {
            return Self { table: Vec::new() };
        }
        let m = size as u64;
        let perms: Vec<(u64, u64)> = hosts
            .iter()
            .map(|(k, _)| {
                let offset = hash64(format!("{k}#offset").as_bytes()) % m;
                let skip = hash64(format!("{k}#skip").as_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_w = hosts.iter().map(|(_, w)| (*w).max(1)).max().unwrap_or(1) as f64;
        let mut next = vec![0u64; hosts.len()];
        let mut credit = vec![0f64; hosts.len()];
        let mut table = vec![usize::MAX; size];
        let mut filled = 0;
        // Weighted Maglev: each round a host earns weight/max_weight of a
        // turn and claims a slot whenever it has a whole turn.
        'outer: loop {
            for (i, (_, w)) in hosts.iter().enumerate() {
                credit[i] += f64::from((*w).max(1)) / max_w;
                if credit[i] < 1.0 {
                    continue;
                }
                credit[i] -= 1.0;
                let (offset, skip) = perms[i];
                loop {
                    let c = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[c] == usize::MAX {
                        table[c] = i;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break 'outer;
                }
            }
        }
        Self { table }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Host indices for `hash`: the table entry, then successive entries
    /// (callers skip unusable hosts by walking on).
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let n = self.table.len();
        let start = if n == 0 {
            0
        } else {
            (hash % n as u64) as usize
        };
        (0..n).map(move |i| self.table[(start + i) % n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_full_and_balanced() {
        let hosts: Vec<_> = (0..3).map(|i| (format!("h{i}"), 1)).collect();
        let m = Maglev::build(&hosts, 1009);
        let mut counts = [0usize; 3];
        for i in m.walk(0).take(1009) {
            counts[i] += 1;
        }
        for c in counts {
            assert!((300..=373).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn weights_shift_share() {
        let hosts = vec![("a".to_string(), 3), ("b".to_string(), 1)];
        let m = Maglev::build(&hosts, 1009);
        let a = m.walk(0).take(1009).filter(|i| *i == 0).count();
        assert!(a > 650 && a < 850, "a got {a} of 1009");
    }

    #[test]
    fn stable_lookup() {
        let hosts: Vec<_> = (0..5).map(|i| (format!("h{i}"), 1)).collect();
        let m1 = Maglev::build(&hosts, TABLE_SIZE);
        let m2 = Maglev::build(&hosts, TABLE_SIZE);
        for k in 0..100u64 {
            assert_eq!(
                m1.walk(hash64(&k.to_be_bytes())).next(),
                m2.walk(hash64(&k.to_be_bytes())).next()
            );
        }
    }
}
