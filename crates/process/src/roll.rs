//! Rolling a VM's base forward (pure planning; [`crate::Processor::roll_bases`] acts on it).
//!
//! Journal-backed points are read from a stored base through the journal after it, so
//! retention keeps a base, and the journal from it, for as long as any kept point is read
//! through it — even after thinning dropped the base itself ([`crate::RetentionPlan`]'s
//! `bases_only`). Without rolling, that base and its journal stay until every point after it
//! is gone, or until the store rule stores a newer point (which costs every chunk touched since
//! the base, and releases nothing while older kept points still need the journal).
//!
//! A **roll** ([`Roll`]) moves the base up to the oldest point retention keeps after it:
//!
//! 1. that point, `to`, is stored (if it is journal-backed): the chunks its journal touched
//!    since the old base are written, whole;
//! 2. every kept journal-backed point after `to` whose base is the old one is **re-based** on
//!    `to`: its record is rewritten to name `to` and `to`'s roots (it reads the same bytes:
//!    `to` is the old base plus the same records);
//! 3. the next retention pass then finds the old base needed by nothing: it, the journal up to
//!    `to` and the chunks only it used are deleted.
//!
//! So the store holds one base at the start of the kept history plus the journal since (as
//! Zerto keeps its replica disk at the start of its journal), and the steady state past the
//! retention stays near the unique data written (bench/RESULTS.md, issue 3).
//!
//! A roll is planned for a base only when it is safe and useful:
//! * no reader's pin names the base (a DR drill reads through it: it stays until the pin goes);
//! * `to` is restorable (not an initial copy), not in the future, and not newer than the start
//!   of the CDP window: the window's instants are read from the newest stored point before it,
//!   so a `to` inside the window would not release the old base.
//!
//! Crash safety: step 1 replaces the record last (`commit_stored`); each re-base in step 2 is
//! one atomic overwrite of a record, whose data is the same either way; a process killed
//! between them leaves some points on the old base, which then stays kept, and the next pass
//! plans the same roll again (`to` is stored by then) and finishes it.

use std::time::SystemTime;

use lifeboat_policy::ReplicationPolicy;
use lifeboat_store::PointOrigin;
use lifeboat_types::Seq;

use crate::plan::{base_of, plan_retention_pinned, PointView};

/// One roll of a base (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roll {
    /// The base thinning dropped, kept only because later points are read through it.
    pub from: String,
    /// The oldest point kept after it: stored if journal-backed, then the new base.
    pub to: String,
    /// The kept journal-backed points after `to` whose base is `from`, oldest first.
    pub rebase: Vec<String>,
}

/// The rolls due for `points` under `policy` at `now`, with readers' pins `(base, seq)`, oldest
/// base first.
pub fn plan_rolls(
    points: &[PointView],
    policy: &ReplicationPolicy,
    now: SystemTime,
    pins: &[(Seq, Seq)],
) -> Vec<Roll> {
    let plan = plan_retention_pinned(points, policy, now, pins);
    let mut sorted: Vec<&PointView> = points.iter().collect();
    sorted.sort_by_key(|p| p.seq);
    let window_start = now
        .checked_sub(policy.cdp_window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut rolls = Vec::new();
    for b in sorted
        .iter()
        .filter(|b| !b.journal_backed && plan.bases_only.contains(&b.id))
    {
        if pins.iter().any(|(base, _)| *base == b.seq) {
            continue;
        }
        let Some(to) = sorted.iter().find(|p| {
            p.seq > b.seq && plan.keep.contains(&p.id) && !plan.bases_only.contains(&p.id)
        }) else {
            continue;
        };
        if to.origin == PointOrigin::InitialCopy || to.time > window_start || to.time > now {
            continue;
        }
        let rebase: Vec<String> = sorted
            .iter()
            .filter(|p| {
                p.journal_backed
                    && p.seq > to.seq
                    && plan.keep.contains(&p.id)
                    && base_of(&sorted, p).is_some_and(|x| x.id == b.id)
            })
            .map(|p| p.id.clone())
            .collect();
        if !to.journal_backed && rebase.is_empty() {
            continue;
        }
        rolls.push(Roll {
            from: b.id.clone(),
            to: to.id.clone(),
            rebase,
        });
    }
    rolls
}

/// What the store looks like after `rolls` are done: each `to` stored, each re-based point
/// naming its `to` (for the tests: the planner's own view of a finished roll).
#[cfg(test)]
fn after(points: &[PointView], rolls: &[Roll]) -> Vec<PointView> {
    let mut out = points.to_vec();
    for r in rolls {
        for p in out.iter_mut() {
            if p.id == r.to {
                p.journal_backed = false;
                p.base = None;
            }
            if r.rebase.contains(&p.id) {
                p.base = Some(r.to.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::plan::{plan_retention, plan_retention_pinned};
    use crate::synthetic::{at, history, now_at, Rng, HOUR};

    fn id(seq: u64) -> String {
        format!("{seq:020}-crash")
    }

    /// A seed at 0 and journal-backed points every 30 min on it, through `end` minutes.
    fn on_seed(end: u64) -> Vec<PointView> {
        let mut pts = vec![at(0, 0, false, None)];
        for m in (30..=end).step_by(30) {
            pts.push(at(m, m, true, Some(0)));
        }
        pts
    }

    #[test]
    fn a_dropped_base_rolls_to_the_oldest_kept_point_and_is_then_released() {
        // 6 h retention; at 600 min the points up to 240 min are past it: the seed is kept
        // only as the base of 270 .. 600.
        let policy = ReplicationPolicy {
            retention: Duration::from_secs(6 * HOUR),
            ..ReplicationPolicy::default()
        };
        let pts = on_seed(600);
        let now = now_at(600);
        let plan = plan_retention(&pts, &policy, now);
        assert!(plan.bases_only.contains(&id(0)), "{plan:?}");
        assert_eq!(plan.journal, vec![(Seq(1), crate::JOURNAL_END)]);
        let rolls = plan_rolls(&pts, &policy, now, &[]);
        let oldest_kept = pts
            .iter()
            .find(|p| p.seq.0 > 0 && plan.keep.contains(&p.id))
            .unwrap();
        assert_eq!(rolls.len(), 1, "{rolls:?}");
        assert_eq!(rolls[0].from, id(0));
        assert_eq!(rolls[0].to, oldest_kept.id);
        let expect: Vec<String> = pts
            .iter()
            .filter(|p| p.seq > oldest_kept.seq && plan.keep.contains(&p.id))
            .map(|p| p.id.clone())
            .collect();
        assert_eq!(rolls[0].rebase, expect);
        // Done, the seed and the journal up to the new base go; every kept point stays.
        let rolled = after(&pts, &rolls);
        let plan2 = plan_retention(&rolled, &policy, now);
        assert!(!plan2.keep.contains(&id(0)), "{plan2:?}");
        assert!(plan2.bases_only.is_empty(), "{plan2:?}");
        assert_eq!(
            plan2.journal,
            vec![(oldest_kept.seq.next(), crate::JOURNAL_END)]
        );
        assert_eq!(
            plan2.keep,
            plan.keep.iter().filter(|k| **k != id(0)).cloned().collect()
        );
        // Nothing more to roll.
        assert!(plan_rolls(&rolled, &policy, now, &[]).is_empty());
    }

    #[test]
    fn a_half_done_roll_is_planned_again_and_finishes() {
        let policy = ReplicationPolicy {
            retention: Duration::from_secs(6 * HOUR),
            ..ReplicationPolicy::default()
        };
        let pts = on_seed(600);
        let now = now_at(600);
        let rolls = plan_rolls(&pts, &policy, now, &[]);
        // Killed after storing `to` and re-basing one point.
        let half = vec![Roll {
            rebase: rolls[0].rebase[..1].to_vec(),
            ..rolls[0].clone()
        }];
        let mid = after(&pts, &half);
        let again = plan_rolls(&mid, &policy, now, &[]);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].to, rolls[0].to);
        assert_eq!(again[0].rebase, rolls[0].rebase[1..].to_vec());
        let done = after(&mid, &again);
        assert!(!plan_retention(&done, &policy, now).keep.contains(&id(0)));
    }

    #[test]
    fn no_roll_under_a_pin_into_the_window_or_to_an_initial_copy() {
        let policy = ReplicationPolicy {
            retention: Duration::from_secs(6 * HOUR),
            ..ReplicationPolicy::default()
        };
        let pts = on_seed(600);
        let now = now_at(600);
        // A drill reads point 300 through the seed.
        assert!(plan_rolls(&pts, &policy, now, &[(Seq(0), Seq(300))]).is_empty());
        // A CDP window as long as the retention: the oldest kept point is inside it.
        let wide = ReplicationPolicy {
            cdp_window: Duration::from_secs(6 * HOUR),
            ..policy.clone()
        };
        assert!(plan_rolls(&pts, &wide, now, &[]).is_empty());
        // Nothing to roll while thinning keeps the base for itself (alone in its hour).
        let alone: Vec<PointView> = on_seed(300).into_iter().filter(|p| p.seq.0 != 30).collect();
        assert!(plan_rolls(&alone, &policy, now_at(300), &[]).is_empty());
        // It lost its hour to the point at 30 min: that point becomes the base.
        let rolls = plan_rolls(&on_seed(300), &policy, now_at(300), &[]);
        assert_eq!(rolls.len(), 1);
        assert_eq!(rolls[0].to, id(30));
        // The oldest kept point after the base is an initial copy: not a consistent state.
        let mut pts = on_seed(600);
        let plan = plan_retention(&pts, &policy, now);
        let first = pts
            .iter()
            .position(|p| p.seq.0 > 0 && plan.keep.contains(&p.id))
            .unwrap();
        pts[first].origin = PointOrigin::InitialCopy;
        let rolls = plan_rolls(&pts, &policy, now, &[]);
        assert!(rolls.iter().all(|r| r.to != pts[first].id), "{rolls:?}");
    }

    #[test]
    fn rolling_keeps_every_kept_point_readable_over_synthetic_histories() {
        let mut rng = Rng(0x51_7cc1_b727_220a);
        let mut rolled_any = 0;
        for _ in 0..300 {
            let (pts, policy, now, step) = history(&mut rng, 80, 11, 4);
            let pins: Vec<(Seq, Seq)> = if rng.next().is_multiple_of(5) {
                vec![(Seq(0), Seq(step))]
            } else {
                Vec::new()
            };
            let plan = plan_retention_pinned(&pts, &policy, now, &pins);
            let rolls = plan_rolls(&pts, &policy, now, &pins);
            rolled_any += usize::from(!rolls.is_empty());
            let done = after(&pts, &rolls);
            let plan2 = plan_retention_pinned(&done, &policy, now, &pins);
            // Rolling never drops a point thinning keeps, and releases every rolled base.
            let kept_for_itself: BTreeSet<&String> =
                plan.keep.difference(&plan.bases_only).collect();
            for k in &kept_for_itself {
                assert!(plan2.keep.contains(*k), "{k} lost by rolling");
            }
            for r in &rolls {
                assert!(!plan2.keep.contains(&r.from), "{} not released", r.from);
                assert!(pins.iter().all(|(b, _)| id(b.0) != r.from));
            }
            // Every kept journal-backed point has its base and the journal from it.
            let sorted: Vec<&PointView> = done.iter().collect();
            for p in done
                .iter()
                .filter(|p| p.journal_backed && plan2.keep.contains(&p.id))
            {
                let b = base_of(&sorted, p).unwrap();
                assert!(
                    plan2.keep.contains(&b.id),
                    "base {} of {} dropped",
                    b.id,
                    p.id
                );
                for s in b.seq.0 + 1..=p.seq.0 {
                    assert!(
                        plan2.keeps_records(Seq(s), Seq(s)),
                        "record {s} of {}",
                        p.id
                    );
                }
            }
            // The rolled store never keeps a record it did not keep before.
            let end = pts.last().map_or(0, |p| p.seq.0);
            for s in 0..=end + 1 {
                let s = Seq(s);
                assert!(
                    !plan2.keeps_records(s, s) || plan.keeps_records(s, s),
                    "{s:?}"
                );
            }
        }
        assert!(rolled_any > 30, "only {rolled_any} histories rolled");
    }
}
