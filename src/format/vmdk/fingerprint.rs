//! A multiset fingerprint of (guest grain, host sector) pairs, to prove in
//! constant memory that the grain markers of a streamOptimized extent say
//! exactly what its grain tables say.
//!
//! QEMU reads a streamOptimized extent through its grain directory and
//! tables: guest grain `g` is the grain whose marker starts at the sector
//! `GT[g]` names, whatever LBA the marker carries. We place each grain at
//! its marker's LBA as it streams past, which needs no table at all and
//! works for VMware's layout (tables after the grains, directory at the
//! end) as well as QEMU's (tables first). Both give the same disk exactly
//! when the multiset of `(LBA / grain, marker sector)` over the markers
//! equals the multiset of `(g, GT[g])` over the allocated table entries.
//! Keeping either set would cost four bytes per grain; instead each side is
//! summed into a fingerprint, and the two are compared at the end.
//!
//! The fingerprint of a multiset `S` is `Σ R(h) · r^g (mod p)` over its
//! pairs `(g, h)`, with `p = 2^61 - 1`, `R` a hash with a per-process random
//! key and `r` a random point. Two different multisets give polynomials in
//! `r` that differ, and agree at a random point with probability at most
//! `grains / p` (below 2^-26 for the largest disk); two independent lanes
//! make it 2^-52. A table whose position in the directory is not known yet
//! (a grain table that streams past before the directory) is summed with
//! its entry index `j` in place of `g`, and shifted into place later by
//! multiplying with `r^(table · entries)`.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// The Mersenne prime 2^61 - 1.
const P: u64 = (1 << 61) - 1;

fn reduce(x: u128) -> u64 {
    let lo = (x as u64) & P;
    let hi = (x >> 61) as u64;
    let s = lo + (hi & P) + (hi >> 61);
    let s = (s & P) + (s >> 61);
    if s >= P {
        s - P
    } else {
        s
    }
}

fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P {
        s - P
    } else {
        s
    }
}

fn pow(mut base: u64, mut e: u64) -> u64 {
    let mut acc = 1u64;
    while e > 0 {
        if e & 1 == 1 {
            acc = mul(acc, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    acc
}

/// A fingerprint and the number of pairs in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sum {
    acc: [u64; 2],
    /// Pairs summed.
    pub(crate) count: u64,
}

/// The random choices shared by every sum of one decode, plus the last
/// power computed (markers usually come in guest order: one multiplication
/// each instead of a power).
pub(crate) struct Fingerprint {
    keys: [RandomState; 2],
    r: [u64; 2],
    last: Option<(u64, [u64; 2])>,
}

impl Fingerprint {
    pub(crate) fn new() -> Fingerprint {
        let keys = [RandomState::new(), RandomState::new()];
        let point = |k: &RandomState| (k.hash_one(0x5eed_u64) % (P - 2)) + 2;
        let r = [point(&keys[0]), point(&keys[1])];
        Fingerprint {
            keys,
            r,
            last: None,
        }
    }

    fn element(&self, lane: usize, host: u64) -> u64 {
        self.keys.get(lane).map_or(1, |k| k.hash_one(host) % P)
    }

    /// `r^g` for both lanes.
    fn powers(&mut self, g: u64) -> [u64; 2] {
        let p = match self.last {
            Some((lg, lp)) if lg == g => lp,
            Some((lg, lp)) if lg.checked_add(1) == Some(g) => {
                [mul(lp[0], self.r[0]), mul(lp[1], self.r[1])]
            }
            _ => [pow(self.r[0], g), pow(self.r[1], g)],
        };
        self.last = Some((g, p));
        p
    }

    /// Adds the pair (guest grain `g`, host sector `host`) to `sum`.
    pub(crate) fn add(&mut self, sum: &mut Sum, g: u64, host: u64) {
        let p = self.powers(g);
        for (lane, (a, pw)) in sum.acc.iter_mut().zip(p).enumerate() {
            *a = add(*a, mul(self.element(lane, host), pw));
        }
        sum.count += 1;
    }

    /// Adds `part` (summed with table-relative indices) to `into`, as if
    /// every index had been `shift` larger.
    pub(crate) fn add_shifted(&self, into: &mut Sum, part: &Sum, shift: u64) {
        for lane in 0..2 {
            let s = pow(self.r[lane], shift);
            if let (Some(a), Some(&b)) = (into.acc.get_mut(lane), part.acc.get(lane)) {
                *a = add(*a, mul(b, s));
            }
        }
        into.count += part.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_mod_p() {
        assert_eq!(mul(P - 1, P - 1), 1);
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(pow(3, 0), 1);
        assert_eq!(pow(2, 61), 1);
        assert_eq!(reduce(u128::from(P) * 5 + 7), 7);
    }

    #[test]
    fn equal_multisets_match_in_any_order_and_others_do_not() {
        let mut f = Fingerprint::new();
        let pairs: Vec<(u64, u64)> = (0..1000).map(|g| (g * 3, 128 + g * 129)).collect();
        let mut a = Sum::default();
        for &(g, h) in &pairs {
            f.add(&mut a, g, h);
        }
        let mut b = Sum::default();
        for &(g, h) in pairs.iter().rev() {
            f.add(&mut b, g, h);
        }
        assert_eq!(a, b);
        // One marker at another position, or with another LBA.
        let mut c = Sum::default();
        for &(g, h) in &pairs {
            f.add(&mut c, g, if g == 300 { h + 1 } else { h });
        }
        assert_ne!(a.acc, c.acc);
        let mut d = Sum::default();
        for &(g, h) in &pairs {
            f.add(&mut d, if g == 300 { 301 } else { g }, h);
        }
        assert_ne!(a.acc, d.acc);
        // Two pairs swapped between grains.
        let mut e = Sum::default();
        for &(g, h) in &pairs {
            let g = match g {
                3 => 6,
                6 => 3,
                g => g,
            };
            f.add(&mut e, g, h);
        }
        assert_ne!(a.acc, e.acc);
    }

    #[test]
    fn tables_summed_before_their_index_is_known_shift_into_place() {
        let mut f = Fingerprint::new();
        let mut direct = Sum::default();
        let mut later = Sum::default();
        for table in [2u64, 0, 5] {
            let mut part = Sum::default();
            for j in 0..512u64 {
                f.add(&mut direct, table * 512 + j, 1000 + table * 7 + j);
                f.add(&mut part, j, 1000 + table * 7 + j);
            }
            f.add_shifted(&mut later, &part, table * 512);
        }
        assert_eq!(direct, later);
    }
}
