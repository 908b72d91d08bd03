//! Planning a re-protect's resynchronization: which byte ranges of each disk must go from the
//! running VM (region B, failed over) back to the original disks (region A) so that they are
//! equal again — pure, from what each side knows.
//!
//! The two copies diverged in two ways since the recovery point the VM was recovered from:
//!
//! 1. the recovered VM wrote at B (its journal since its first boot says exactly where);
//! 2. the old source wrote at A *after* the point (records the failover left behind: they are
//!    in A's image but not in the point). They are known from the old target store's journal,
//!    which commit summarizes before deleting it (records `(point, S]`), and from A's own
//!    spool (its records `(F - 1, L]`, L its last record).
//!
//! Every other block is the point's at both sides. So when (1) is known and the records of (2)
//! are covered without a gap from the point to `L`, the plan is [`ResyncPlan::Delta`]: the
//! union, sent as journal records. When either is missing the plan is [`ResyncPlan::Digests`]:
//! hash both sides' blocks and send those that differ ([`diff_digests`]). When the original
//! disks are gone, unreadable or of another size, [`ResyncPlan::Full`]: a full copy.

use lifeboat_types::Extents;
use serde::{Deserialize, Serialize};

/// Records of one journal known to cover the positions `(after, through]`, as the ranges they
/// wrote per disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    /// The last position before the first record covered.
    pub after: u64,
    /// The last position covered.
    pub through: u64,
    /// The ranges written, per disk.
    pub disks: Vec<Extents>,
}

/// What each side knows (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncInputs {
    /// The running VM's disk sizes.
    pub sizes: Vec<u64>,
    /// The original disks at the other region: their sizes, or why they cannot be reused.
    pub original: Result<Vec<u64>, String>,
    /// What the running VM wrote since its recovery (every record up to the resync's start),
    /// per disk, or why it is not known.
    pub since_recovery: Result<Vec<Extents>, String>,
    /// The recovery point's position in the old source's journal.
    pub point_seq: u64,
    /// The old source's records after the point as summarized at commit.
    pub after_point_store: Option<Covered>,
    /// The old source's spool: its records from its first to its last.
    pub old_spool: Option<Covered>,
}

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncPlan {
    /// Exactly these ranges (per disk).
    Delta {
        /// Per disk.
        disks: Vec<Extents>,
    },
    /// Compare block digests of both sides; the reason the journals do not tell.
    Digests {
        /// Why.
        why: String,
    },
    /// Copy everything; the reason the original disks cannot be reused.
    Full {
        /// Why.
        why: String,
    },
}

/// Plans a resync from what the two sides know (see the module doc).
pub fn plan_resync(i: &ResyncInputs) -> ResyncPlan {
    let original = match &i.original {
        Ok(o) => o,
        Err(why) => return ResyncPlan::Full { why: why.clone() },
    };
    if original.len() != i.sizes.len() {
        return ResyncPlan::Full {
            why: format!(
                "the original VM has {} disks, the running VM {}",
                original.len(),
                i.sizes.len()
            ),
        };
    }
    if let Some((d, (a, b))) = original
        .iter()
        .zip(&i.sizes)
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        return ResyncPlan::Full {
            why: format!("original disk {d} has {a} bytes, the running VM's has {b}"),
        };
    }
    let ours = match &i.since_recovery {
        Ok(e) => e,
        Err(why) => {
            return ResyncPlan::Digests {
                why: format!("the running VM's writes since failover are not known: {why}"),
            }
        }
    };
    let theirs = match after_point(i) {
        Ok(e) => e,
        Err(why) => {
            return ResyncPlan::Digests {
                why: format!("the original disks' writes after the recovery point: {why}"),
            }
        }
    };
    let disks = i
        .sizes
        .iter()
        .enumerate()
        .map(|(d, &size)| {
            let a = ours.get(d).cloned().unwrap_or_default();
            let b = theirs.get(d).cloned().unwrap_or_default();
            a.union(&b).clamp(size)
        })
        .collect();
    ResyncPlan::Delta { disks }
}

/// The old source's writes after the point, when known without a gap up to its last record.
fn after_point(i: &ResyncInputs) -> Result<Vec<Extents>, String> {
    let p = i.point_seq;
    let Some(spool) = &i.old_spool else {
        return Err("the original host's journal could not be read".into());
    };
    if spool.through < p {
        return Err(format!(
            "the original host's journal ends at record {}, before the recovery point's {p}",
            spool.through
        ));
    }
    let mut disks = spool.disks.clone();
    if spool.after > p {
        // The spool lost records (p, spool.after]: the store's summary must cover them.
        match &i.after_point_store {
            Some(s) if s.after <= p && s.through >= spool.after => {
                let n = disks.len().max(s.disks.len());
                disks.resize(n, Extents::new());
                for (d, e) in s.disks.iter().enumerate() {
                    disks[d] = disks[d].union(e);
                }
            }
            Some(s) => {
                return Err(format!(
                    "records {}..={} are neither in the original host's journal (it starts \
                     after {}) nor in the summary kept at commit (records {}..={})",
                    p + 1,
                    spool.after,
                    spool.after,
                    s.after + 1,
                    s.through
                ))
            }
            None => {
                return Err(format!(
                    "records {}..={} left the original host's journal and no summary was kept \
                     at commit",
                    p + 1,
                    spool.after
                ))
            }
        }
    }
    Ok(disks)
}

/// The ranges of a disk of `size` bytes whose `block`-sized digests differ (a missing digest
/// on either side differs).
pub fn diff_digests<D: PartialEq>(a: &[D], b: &[D], block: u64, size: u64) -> Extents {
    let n = size.div_ceil(block.max(1)) as usize;
    let mut e = Extents::new();
    for k in 0..n {
        if a.get(k).is_none() || a.get(k) != b.get(k) {
            e.insert(k as u64 * block, block);
        }
    }
    e.clamp(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(r: &[(u64, u64)]) -> Extents {
        Extents::from_ranges(r.iter().copied())
    }

    fn inputs() -> ResyncInputs {
        ResyncInputs {
            sizes: vec![1 << 20],
            original: Ok(vec![1 << 20]),
            since_recovery: Ok(vec![ext(&[(0, 4096)])]),
            point_seq: 100,
            after_point_store: Some(Covered {
                after: 100,
                through: 150,
                disks: vec![ext(&[(8192, 4096)])],
            }),
            old_spool: Some(Covered {
                after: 140,
                through: 160,
                disks: vec![ext(&[(65536, 512)])],
            }),
        }
    }

    #[test]
    fn delta_is_the_union_of_both_sides_when_the_journals_cover_everything() {
        let plan = plan_resync(&inputs());
        assert_eq!(
            plan,
            ResyncPlan::Delta {
                disks: vec![ext(&[(0, 4096), (8192, 4096), (65536, 512)])]
            }
        );
        // The spool alone covers from the point: the store's summary is not needed.
        let mut i = inputs();
        i.after_point_store = None;
        i.old_spool.as_mut().unwrap().after = 90;
        assert!(matches!(plan_resync(&i), ResyncPlan::Delta { .. }));
    }

    #[test]
    fn a_gap_in_the_old_sources_records_means_digests() {
        let mut i = inputs();
        i.old_spool.as_mut().unwrap().after = 151; // record 151 is nowhere
        let ResyncPlan::Digests { why } = plan_resync(&i) else {
            panic!("expected digests")
        };
        assert!(why.contains("101..=151"), "{why}");
        let mut i = inputs();
        i.after_point_store = None;
        assert!(matches!(plan_resync(&i), ResyncPlan::Digests { .. }));
        let mut i = inputs();
        i.old_spool = None;
        assert!(matches!(plan_resync(&i), ResyncPlan::Digests { .. }));
        let mut i = inputs();
        i.since_recovery = Err("journal pruned".into());
        let ResyncPlan::Digests { why } = plan_resync(&i) else {
            panic!("expected digests")
        };
        assert!(why.contains("journal pruned"), "{why}");
        let mut i = inputs();
        i.old_spool.as_mut().unwrap().through = 99;
        assert!(matches!(plan_resync(&i), ResyncPlan::Digests { .. }));
    }

    #[test]
    fn missing_or_different_original_disks_mean_a_full_copy() {
        let mut i = inputs();
        i.original = Err("disk0.img is gone".into());
        assert_eq!(
            plan_resync(&i),
            ResyncPlan::Full {
                why: "disk0.img is gone".into()
            }
        );
        let mut i = inputs();
        i.original = Ok(vec![2 << 20]);
        assert!(matches!(plan_resync(&i), ResyncPlan::Full { .. }));
        let mut i = inputs();
        i.original = Ok(vec![1 << 20, 1 << 20]);
        assert!(matches!(plan_resync(&i), ResyncPlan::Full { .. }));
    }

    #[test]
    fn delta_is_clamped_to_the_disk() {
        let mut i = inputs();
        i.since_recovery = Ok(vec![ext(&[((1 << 20) - 100, 4096)])]);
        let ResyncPlan::Delta { disks } = plan_resync(&i) else {
            panic!("expected delta")
        };
        assert_eq!(disks[0].ranges().last(), Some(&((1 << 20) - 100, 100)));
    }

    #[test]
    fn digest_differences_are_whole_blocks_and_clamped() {
        let a = [1u8, 2, 3, 4];
        let b = [1u8, 9, 3];
        let e = diff_digests(&a, &b, 4096, 4 * 4096 - 10);
        assert_eq!(e.ranges(), &[(4096, 4096), (3 * 4096, 4096 - 10)]);
        assert!(diff_digests(&a, &a, 4096, 4 * 4096).is_empty());
    }
}
