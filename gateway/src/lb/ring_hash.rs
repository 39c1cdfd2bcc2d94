//! Ketama-style consistent hash ring (Envoy RING_HASH).

/// 64-bit FNV-1a; stable across processes and builds, which consistent
/// hashing needs (std's hasher makes no such promise).
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV mixes the low bits poorly for short keys; finish with a
    // splitmix64 round so ring points spread evenly.
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A sorted ring of (point, host index).
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

/// Envoy's default minimum ring size.
pub const MIN_RING_SIZE: usize = 1024;
const MAX_RING_SIZE: usize = 8 * 1024 * 1024;

impl Ring {
    /// `hosts` are (key, weight); every host gets points in proportion to its weight.
    pub fn build(hosts: &[(String, u32)]) -> Self {
        let total: u64 = hosts.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
        if total == 0 {
            return Self { points: Vec::new() };
        }
        let min_w = hosts.iter().map(|(_, w)| (*w).max(1)).min().unwrap_or(1) as f64 / total as f64;
        // Enough points that the lightest host still gets at least one.
        let scale = (MIN_RING_SIZE as f64)
            .max((1.0 / min_w).ceil())
            .min(MAX_RING_SIZE as f64);
        let mut points = Vec::new();
        for (idx, (key, w)) in hosts.iter().enumerate() {
            let n = ((scale * f64::from((*w).max(1)) / total as f64).round() as usize).max(1);
            for i in 0..n {
                let k = format!("{key}_{i}");
                points.push((hash64(k.as_bytes()), idx));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Host indices starting at the first point ≥ `hash`, in ring order
    /// (callers skip unusable hosts by walking on).
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|(p, _)| *p < hash);
        let n = self.points.len();
        (0..n).map(move |i| self.points[(start + i) % n].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<(String, u32)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), 1)).collect()
    }

    #[test]
    fn same_key_same_host() {
        let r = Ring::build(&hosts(5));
        let a = r.walk(hash64(b"client-1")).next();
        let b = r.walk(hash64(b"client-1")).next();
        assert_eq!(a, b);
        assert!(a.is_some());
    }

    #[test]
    fn removing_a_host_moves_few_other_keys() {
        let five = hosts(5);
        let four: Vec<_> = five[..4].to_vec();
        let r5 = Ring::build(&five);
        let r4 = Ring::build(&four);
        let (mut moved, mut kept) = (0, 0);
        for k in 0..4000u32 {
            let h = hash64(&k.to_be_bytes());
            let a = r5.walk(h).next().expect("host");
            let b = r4.walk(h).next().expect("host");
            if a == 4 {
                continue;
            }
            if a == b {
                kept += 1;
            } else {
                moved += 1;
            }
        }
        // The ring keeps its minimum size, so survivors gain points and a
        // few of their keys shift; a modulo hash would move ~75 %.
        assert!(
            moved * 100 < (moved + kept) * 20,
            "moved {moved} of {}",
            moved + kept
        );
    }

    #[test]
    fn spreads_roughly_evenly() {
        let r = Ring::build(&hosts(4));
        let mut counts = [0usize; 4];
        for k in 0..8000u32 {
            counts[r.walk(hash64(&k.to_be_bytes())).next().expect("host")] += 1;
        }
        for c in counts {
            assert!(c > 1000 && c < 3000, "{counts:?}");
        }
    }
}
