//! [`Extents`]: a set of byte ranges of one disk, kept sorted and merged — what re-protect
//! knows has diverged between two copies of a disk (the ranges journal records wrote, or the
//! blocks whose digests differ).

use serde::{Deserialize, Serialize};

/// A set of byte ranges `[offset, offset + len)`, sorted, non-overlapping and not touching
/// (touching ranges are merged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Extents(Vec<(u64, u64)>);

impl Extents {
    /// The empty set.
    pub fn new() -> Self {
        Extents(Vec::new())
    }

    /// Builds a set from any ranges (overlapping, unsorted, empty ones ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = ranges.into_iter().filter(|r| r.1 > 0).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (off, len) in v {
            let end = off.saturating_add(len);
            match out.last_mut() {
                Some((o, l)) if off <= *o + *l => *l = (*l).max(end - *o),
                _ => out.push((off, end - off)),
            }
        }
        Extents(out)
    }

    /// Adds one range.
    pub fn insert(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        // Appending in order is the common case (a journal read front to back is not in disk
        // order, so fall back to a rebuild otherwise).
        let end = offset.saturating_add(len);
        match self.0.last_mut() {
            None => self.0.push((offset, len)),
            Some((o, l)) if offset >= *o => {
                if offset <= *o + *l {
                    *l = (*l).max(end - *o);
                } else {
                    self.0.push((offset, len));
                }
            }
            Some(_) => {
                let mut v = std::mem::take(&mut self.0);
                v.push((offset, len));
                *self = Extents::from_ranges(v);
            }
        }
    }

    /// The union of two sets.
    pub fn union(&self, other: &Extents) -> Extents {
        Extents::from_ranges(self.0.iter().chain(other.0.iter()).copied())
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Total bytes covered.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|r| r.1).sum()
    }

    /// The set limited to `[0, size)`.
    pub fn clamp(&self, size: u64) -> Extents {
        Extents(
            self.0
                .iter()
                .filter(|r| r.0 < size)
                .map(|&(o, l)| (o, l.min(size - o)))
                .collect(),
        )
    }

    /// The set widened to whole `granule`-aligned blocks (fewer, larger ranges: a summary
    /// that must stay small may cover more, never less).
    pub fn coarsen(&self, granule: u64) -> Extents {
        let g = granule.max(1);
        Extents::from_ranges(self.0.iter().map(|&(o, l)| {
            let a = o / g * g;
            let b = (o + l).div_ceil(g).saturating_mul(g);
            (a, b - a)
        }))
    }

    /// The ranges cut into pieces of at most `max` bytes (for bounded reads and records).
    pub fn pieces(&self, max: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let max = max.max(1);
        self.0.iter().flat_map(move |&(o, l)| {
            (0..l.div_ceil(max)).map(move |i| {
                let off = o + i * max;
                (off, max.min(o + l - off))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model: the set of covered bytes of a small disk.
    fn model(ranges: &[(u64, u64)], size: u64) -> Vec<bool> {
        let mut m = vec![false; size as usize];
        for &(o, l) in ranges {
            for b in o..(o + l).min(size) {
                m[b as usize] = true;
            }
        }
        m
    }

    #[test]
    fn merges_overlapping_and_touching_ranges() {
        let e = Extents::from_ranges([(10, 5), (0, 3), (3, 2), (12, 10), (40, 0), (30, 1)]);
        assert_eq!(e.ranges(), &[(0, 5), (10, 12), (30, 1)]);
        assert_eq!(e.bytes(), 18);
    }

    #[test]
    fn insert_union_and_pieces_agree_with_a_model() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut raw = Vec::new();
            let mut e = Extents::new();
            for _ in 0..next(20) {
                let r = (next(200), next(30));
                raw.push(r);
                e.insert(r.0, r.1);
            }
            assert_eq!(e, Extents::from_ranges(raw.clone()));
            assert_eq!(model(e.ranges(), 256), model(&raw, 256));
            for w in e.ranges().windows(2) {
                assert!(w[0].0 + w[0].1 < w[1].0, "not merged: {:?}", e.ranges());
            }
            let other: Vec<(u64, u64)> = (0..next(10)).map(|_| (next(200), next(30))).collect();
            let u = e.union(&Extents::from_ranges(other.clone()));
            let all: Vec<(u64, u64)> = raw.iter().chain(other.iter()).copied().collect();
            assert_eq!(model(u.ranges(), 256), model(&all, 256));
            let pieces: Vec<(u64, u64)> = u.pieces(7).collect();
            assert!(pieces.iter().all(|p| p.1 <= 7 && p.1 > 0));
            assert_eq!(Extents::from_ranges(pieces), u);
            let c = u.coarsen(16);
            assert!(c.ranges().iter().all(|r| r.0 % 16 == 0 && r.1 % 16 == 0));
            assert_eq!(c.union(&u), c, "coarsening never covers less");
            assert_eq!(model(u.clamp(100).ranges(), 256), {
                let mut m = model(&all, 256);
                m[100..].iter_mut().for_each(|b| *b = false);
                m
            });
        }
    }
}
