//! Pure planning over a VM's points: which journal-backed points to store, and which points
//! and journal records retention keeps. No I/O: [`crate::Processor`] and
//! [`crate::apply_retention`] act on these plans, and the tests here drive them with synthetic
//! points.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use lifeboat_policy::{points_to_keep, PointMeta, ReplicationPolicy};
use lifeboat_store::{PointOrigin, PointRecord};
use lifeboat_types::{CheckpointKind, Seq};

/// What the plans need to know of a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointView {
    /// Its id.
    pub id: String,
    /// Its journal position.
    pub seq: Seq,
    /// Its time.
    pub time: SystemTime,
    /// Crash- or app-consistent.
    pub kind: CheckpointKind,
    /// Journal-backed (else stored).
    pub journal_backed: bool,
    /// Why it was cut.
    pub origin: PointOrigin,
    /// A journal-backed point's recorded base.
    pub base: Option<String>,
}

impl PointView {
    /// The view of a stored record (`None` for a record of unknown kind).
    pub fn of(p: &PointRecord) -> Option<Self> {
        Some(PointView {
            id: p.id.clone(),
            seq: p.seq(),
            time: p.time(),
            kind: p.checkpoint_kind()?,
            journal_backed: p.is_journal_backed(),
            origin: p.origin,
            base: p.base.clone(),
        })
    }
}

/// The journal-backed points to store, oldest first: every point cut at a checkpoint marker
/// (the policy's crash-consistent interval, app-consistent points), and the newest "latest"
/// point once it is `interval` or more after the newest point stored or to be stored before
/// it. The other "latest" points stay journal-backed: cheap, and kept only inside the
/// continuous-data-protection window ([`plan_retention`]).
pub fn points_to_store(points: &[PointView], interval: Duration) -> Vec<String> {
    let mut sorted: Vec<&PointView> = points.iter().collect();
    sorted.sort_by_key(|p| p.seq);
    let mut out = Vec::new();
    let mut last_stored: Option<SystemTime> = None;
    let newest_latest = sorted
        .iter()
        .rev()
        .find(|p| p.journal_backed && p.origin == PointOrigin::Latest)
        .map(|p| p.seq);
    for p in sorted {
        let store_it = p.journal_backed
            && match p.origin {
                PointOrigin::Latest => {
                    Some(p.seq) == newest_latest
                        && last_stored.is_none_or(|t| {
                            p.time.duration_since(t).unwrap_or(Duration::ZERO) >= interval
                        })
                }
                _ => true,
            };
        if store_it {
            out.push(p.id.clone());
        }
        if store_it || !p.journal_backed {
            last_stored = Some(last_stored.map_or(p.time, |t| t.max(p.time)));
        }
    }
    out
}

/// What retention keeps and deletes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Ids of points kept.
    pub keep: BTreeSet<String>,
    /// Ids of points deleted, with the reason.
    pub drop: Vec<(String, String)>,
    /// Points whose time is in the future (clock skew): kept, worth a warning.
    pub future: Vec<String>,
    /// Journal segments wholly at or before this record may be deleted.
    pub segments_through: Option<Seq>,
}

/// Plans retention of `points` under `policy` at `now`:
///
/// 1. ASR's thinning and the policy's retention ([`points_to_keep`]);
/// 2. journal-backed "latest" points older than the CDP window are dropped (beyond the window
///    only stored points are kept: the journal that backs them is released);
/// 3. the stored base of every kept journal-backed point is kept (pinned), whatever step 1
///    said, since the point is read through it;
/// 4. journal records are kept after the newest kept stored point older than the window (so
///    any time inside the window can be rebuilt), after the newest kept stored point, and
///    after the base of every kept journal-backed point: segments wholly at or before the
///    smallest of these may go.
pub fn plan_retention(
    points: &[PointView],
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> RetentionPlan {
    let mut sorted: Vec<&PointView> = points.iter().collect();
    sorted.sort_by_key(|p| p.seq);
    let metas: Vec<PointMeta> = sorted
        .iter()
        .map(|p| PointMeta {
            id: p.id.clone(),
            time: p.time,
            kind: p.kind,
        })
        .collect();
    let thin = points_to_keep(&metas, policy, now);
    let window_start = now
        .checked_sub(policy.cdp_window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut keep: BTreeSet<String> = thin.keep.iter().cloned().collect();
    let mut drop: Vec<(String, String)> = thin
        .drop
        .iter()
        .map(|(id, r)| (id.clone(), r.to_string()))
        .collect();
    for p in &sorted {
        if p.journal_backed
            && p.origin == PointOrigin::Latest
            && p.time < window_start
            && keep.remove(&p.id)
        {
            drop.push((
                p.id.clone(),
                "journal-backed point older than the continuous-data-protection window".to_string(),
            ));
        }
    }
    // Pin the base of every kept journal-backed point: the one its record names (readers may
    // use a newer stored point, but the record must stay true), else the newest stored one.
    let base_of = |p: &PointView| {
        let recorded = p
            .base
            .as_ref()
            .and_then(|b| sorted.iter().find(|x| &x.id == b && !x.journal_backed));
        recorded
            .or_else(|| {
                sorted
                    .iter()
                    .rev()
                    .find(|b| !b.journal_backed && b.seq <= p.seq)
            })
            .map(|b| (b.id.clone(), b.seq))
    };
    let mut bases = Vec::new();
    for p in sorted
        .iter()
        .filter(|p| p.journal_backed && keep.contains(&p.id))
    {
        if let Some(b) = base_of(p) {
            bases.push(b);
        }
    }
    for (id, _) in &bases {
        if keep.insert(id.clone()) {
            drop.retain(|(d, _)| d != id);
        }
    }
    let kept_stored = || {
        sorted
            .iter()
            .filter(|p| !p.journal_backed && keep.contains(&p.id))
    };
    let newest_stored = kept_stored().map(|p| p.seq).max();
    let before_window = kept_stored()
        .filter(|p| p.time <= window_start)
        .map(|p| p.seq)
        .max();
    let oldest_base = bases.iter().map(|(_, s)| *s).min();
    let segments_through = match (before_window, newest_stored) {
        (Some(b), Some(n)) => Some(
            [Some(b), Some(n), oldest_base]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(b),
        ),
        _ => None,
    };
    drop.sort();
    RetentionPlan {
        keep,
        drop,
        future: thin.future,
        segments_through,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const MIN: u64 = 60;

    fn p(seq: u64, secs: u64, journal_backed: bool, origin: PointOrigin) -> PointView {
        PointView {
            id: format!("{seq:020}-crash"),
            seq: Seq(seq),
            time: UNIX_EPOCH + Duration::from_secs(1_000_000 + secs),
            kind: CheckpointKind::CrashConsistent,
            journal_backed,
            origin,
            base: None,
        }
    }

    fn ids(v: &[u64]) -> Vec<String> {
        v.iter().map(|s| format!("{s:020}-crash")).collect()
    }

    #[test]
    fn markers_are_always_stored_and_latest_at_the_interval() {
        use PointOrigin::*;
        let five = Duration::from_secs(5 * MIN);
        // A stored seed, then "latest" points every second, then a marker.
        let mut pts = vec![p(1, 0, false, Marker)];
        for s in 2..=10 {
            pts.push(p(s, s, true, Latest));
        }
        // Nothing is 5 min after the seed yet.
        assert!(points_to_store(&pts, five).is_empty());
        pts.push(p(11, 5 * MIN + 1, true, Latest));
        assert_eq!(points_to_store(&pts, five), ids(&[11]));
        // A marker in between is stored, and moves the interval's start.
        let pts = vec![
            p(1, 0, false, Marker),
            p(6, 4 * MIN, true, Marker),
            p(11, 5 * MIN + 1, true, Latest),
        ];
        assert_eq!(points_to_store(&pts, five), ids(&[6]));
        // Only the newest "latest" point is ever stored.
        let pts = vec![
            p(1, 0, false, Marker),
            p(2, 6 * MIN, true, Latest),
            p(3, 7 * MIN, true, Latest),
        ];
        assert_eq!(points_to_store(&pts, five), ids(&[3]));
        // Stored points are not stored again; the initial copy counts as stored.
        let pts = vec![p(1, 0, false, InitialCopy), p(2, 10 * MIN, false, Marker)];
        assert!(points_to_store(&pts, five).is_empty());
    }

    #[test]
    fn retention_drops_old_latest_points_pins_bases_and_keeps_the_journal_they_need() {
        use PointOrigin::*;
        let policy = ReplicationPolicy::default(); // CDP window 1 h, all points of 2 h kept
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000 + 200 * MIN);
        let pts = vec![
            p(10, 0, false, Marker),         // 200 min old, stored
            p(20, 30 * MIN, true, Latest),   // 170 min old: beyond the window
            p(30, 100 * MIN, false, Marker), // 100 min old, stored
            p(40, 120 * MIN, true, Latest),  // 80 min old: beyond the 60 min window
            p(50, 150 * MIN, false, Marker), // 50 min old
            p(60, 190 * MIN, true, Latest),  // 10 min old: kept, based on 50
            p(70, 195 * MIN, true, Marker),  // a marker not yet stored: kept
        ];
        let plan = plan_retention(&pts, &policy, now);
        let dropped: Vec<&str> = plan.drop.iter().map(|(id, _)| id.as_str()).collect();
        assert!(dropped.contains(&ids(&[40])[0].as_str()), "{plan:?}");
        assert!(plan.keep.contains(&ids(&[60])[0]));
        assert!(plan.keep.contains(&ids(&[70])[0]));
        assert!(plan.keep.contains(&ids(&[50])[0]));
        assert!(!plan.keep.contains(&ids(&[40])[0]));
        // Journal: after 30 (the newest stored point older than the window).
        assert_eq!(plan.segments_through, Some(Seq(30)));
        for (id, _) in &plan.drop {
            assert!(!plan.keep.contains(id));
        }

        // A base that thinning would drop is pinned by a kept journal-backed point.
        let policy = ReplicationPolicy {
            retention: Duration::from_secs(2 * 3600),
            ..ReplicationPolicy::default()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000 + 24 * 60 * MIN);
        let pts = vec![
            p(10, 0, false, Marker),                // a day old: past retention
            p(20, 24 * 60 * MIN - 5, true, Marker), // 5 s old, journal-backed on 10
        ];
        let plan = plan_retention(&pts, &policy, now);
        assert!(plan.keep.contains(&ids(&[10])[0]), "{plan:?}");
        assert!(plan.drop.is_empty(), "{plan:?}");
        // The journal after the base stays.
        assert_eq!(plan.segments_through, Some(Seq(10)));

        // The base a record names is the one pinned, even with a newer stored point before it.
        let mut jb = p(30, 24 * 60 * MIN - 5, true, Marker);
        jb.base = Some(ids(&[10])[0].clone());
        let pts = vec![p(10, 0, false, Marker), p(20, 60, false, Marker), jb];
        let plan = plan_retention(&pts, &policy, now);
        assert!(plan.keep.contains(&ids(&[10])[0]), "{plan:?}");
        assert_eq!(plan.drop.len(), 1, "{plan:?}");
        assert_eq!(plan.drop[0].0, ids(&[20])[0]);
        assert_eq!(plan.segments_through, Some(Seq(10)));
    }

    #[test]
    fn nothing_is_released_without_a_stored_point_older_than_the_window() {
        use PointOrigin::*;
        let policy = ReplicationPolicy::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000 + 30 * MIN);
        let pts = vec![p(10, 0, false, InitialCopy), p(20, 10 * MIN, true, Latest)];
        let plan = plan_retention(&pts, &policy, now);
        assert_eq!(plan.segments_through, None);
        assert_eq!(plan.keep.len(), 2);
    }
}
