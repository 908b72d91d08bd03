//! Pure planning over a VM's points: which journal-backed points to store, and which points
//! and journal records retention keeps. No I/O: [`crate::Processor`] and
//! [`crate::apply_retention`] act on these plans, and the tests here drive them with synthetic
//! points.
//!
//! ## When a point is stored ([`app_points_to_store`], [`chain_due`])
//!
//! Points are cut journal-backed. Storing one (writing every chunk the journal changed since
//! its base) costs about `touched chunks × stored chunk size`: with 4 MiB chunks and small
//! writes that is many times the bytes written, and in a steady state it duplicates what the
//! kept journal already holds. So points stay journal-backed, and the store keeps, for them,
//! the journal from their base; **the base rolls forward** instead ([`plan_rolls`]): when
//! thinning drops a base, the oldest kept point after it is stored and becomes the base, so the
//! store holds one base at the start of the retention plus the journal since, as Zerto keeps
//! its replica at the start of its journal. A point is stored besides when:
//!
//! 1. it is **app-consistent** and [`StoreRule::store_app_consistent`] is on (off by default:
//!    such a point is then read without any journal, but each one stored costs the chunks
//!    touched since the stored point before it; with an app-consistent point every 4 h the
//!    store kept 2.18× the unique data over 12 h, against 1.00× with them journal-backed,
//!    bench/RESULTS.md);
//! 2. the **index** of the journal since the base would take a quarter of what a reader may
//!    use ([`StoreRule::max_chain_index_bytes`], [`crate::INDEX_BUDGET`] / 4): reading any
//!    kept point then never runs into [`crate::ProcessError::TooFarFromBase`];
//! 3. the base is **older than** [`StoreRule::max_chain_age`] (the retention plus an hour by
//!    default): rolling keeps the base within the retention, so this fires only when rolling
//!    is held back (a reader's pin, a point in the future);
//! 4. **replaying** the journal since the base would read more than
//!    [`StoreRule::max_replay_factor`] (4) times what storing the point writes: `J ≥ 4 × S`,
//!    with `J` the stored journal bytes from the base to the point and `S` the chunks touched
//!    since the base × the store's mean stored chunk size. This bounds what reading the newest
//!    point (a failover) replays for a VM whose journal over the retention dwarfs its disk.
//!
//! Rules 3 and 4 apply only to the newest journal-backed point, and only once it is
//! [`StoreRule::min_interval`] after its base (rule 2 ignores that: memory comes first).
//!
//! Why not store more often: a stored point between the base and the newest point releases no
//! journal (the kept points before it still read the journal from the base) and costs `S` until
//! the base rolls up to it. Before rolling (up to 2026-11-28) a cost rule stored the newest
//! point when `J × min(Δt, R) / R ≥ S`; over a steady state past the retention the store then
//! kept 1.46–1.65× the unique data (bench/RESULTS.md, issue 3).
//!
//! [`points_to_store`] is the eager rule of before (every marker point, and the newest "latest"
//! point once per interval), still what [`crate::Processor::store_due`] does with a zero
//! interval ("store every point").
//!
//! ## What retention keeps ([`plan_retention`])
//!
//! Thinning decides which points are kept; a kept journal-backed point then pins its base and
//! every journal record from its base to its position, whatever its age; the journal after the
//! newest kept stored point at or before the start of the CDP window is kept too (any instant
//! of the window, and points not cut yet). Everything else goes: the stored journal may then
//! have holes, between the last kept point of a base and the next base.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use lifeboat_policy::{points_to_keep, PointMeta, ReplicationPolicy, DEFAULT_RETENTION};
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

/// When [`crate::Processor::store_due_with`] stores a journal-backed point (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRule {
    /// No point is stored by age or replay less than this after its base (default 5 min, the
    /// policy's default crash-consistent interval).
    pub min_interval: Duration,
    /// The newest journal-backed point is stored once its base is this old (default
    /// [`DEFAULT_MAX_CHAIN_AGE`]; [`StoreRule::for_policy`]: the retention plus an hour).
    pub max_chain_age: Duration,
    /// The newest journal-backed point is stored once indexing the journal since its base
    /// would take this much memory (default [`crate::INDEX_BUDGET`] / 4).
    pub max_chain_index_bytes: u64,
    /// The newest journal-backed point is stored once the journal since its base is this many
    /// times what storing it would write (default 4).
    pub max_replay_factor: u64,
    /// Store every app-consistent point (default off: they stay journal-backed and roll like
    /// the others; see the module doc).
    pub store_app_consistent: bool,
}

/// Default [`StoreRule::max_chain_age`]: 25 hours, the default retention plus an hour.
pub const DEFAULT_MAX_CHAIN_AGE: Duration =
    Duration::from_secs(DEFAULT_RETENTION.as_secs() + CHAIN_AGE_SLACK.as_secs());

/// What [`StoreRule::for_policy`] adds to the retention for [`StoreRule::max_chain_age`]:
/// rolling keeps the base within the retention, and the oldest kept point may be a thinning
/// bucket (an hour) older than that.
pub const CHAIN_AGE_SLACK: Duration = Duration::from_secs(3600);

impl Default for StoreRule {
    fn default() -> Self {
        StoreRule {
            min_interval: Duration::from_secs(300),
            max_chain_age: DEFAULT_MAX_CHAIN_AGE,
            max_chain_index_bytes: crate::INDEX_BUDGET / 4,
            max_replay_factor: 4,
            store_app_consistent: false,
        }
    }
}

impl StoreRule {
    /// The default rule for `policy`: the chain may reach back over the retention.
    pub fn for_policy(policy: &ReplicationPolicy) -> Self {
        StoreRule {
            max_chain_age: policy.retention.saturating_add(CHAIN_AGE_SLACK),
            ..StoreRule::default()
        }
    }
}

/// The journal from the newest stored point to the newest journal-backed point after it, as
/// the processor measures it for [`chain_due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The newest journal-backed point (the one rules 2 to 4 may store).
    pub point: String,
    /// Its time.
    pub point_time: SystemTime,
    /// Its base: the newest stored point before it.
    pub base: String,
    /// The base's time.
    pub base_time: SystemTime,
    /// Bytes of the stored segments holding the records from the base to the point (as
    /// stored: what keeping them costs).
    pub journal_bytes: u64,
    /// Chunks the records touched.
    pub touched_chunks: u64,
    /// Estimated stored (compressed) size of one chunk.
    pub chunk_bytes: u64,
    /// Estimated memory of the index a reader builds for the point.
    pub index_bytes: u64,
}

impl Chain {
    /// Time from the base to the point.
    pub fn age(&self) -> Duration {
        self.point_time
            .duration_since(self.base_time)
            .unwrap_or(Duration::ZERO)
    }

    /// Bytes storing the point would add (an estimate).
    pub fn store_bytes(&self) -> u64 {
        self.touched_chunks.saturating_mul(self.chunk_bytes)
    }
}

/// Why a point is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReason {
    /// Stored by the eager rule ([`points_to_store`]).
    Eager,
    /// An app-consistent point.
    AppConsistent,
    /// The index of the journal since the base reached the bound (bytes).
    ChainIndex(u64),
    /// The base reached the maximum age.
    ChainAge(Duration),
    /// Replaying the journal since the base would read too much: its bytes, and what
    /// storing adds.
    Replay {
        /// `J`: the stored journal bytes since the base.
        journal: u64,
        /// `S`: touched chunks × stored chunk size.
        store: u64,
    },
}

impl std::fmt::Display for StoreReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreReason::Eager => f.write_str("every point is stored"),
            StoreReason::AppConsistent => f.write_str("app-consistent"),
            StoreReason::ChainIndex(b) => {
                write!(f, "reading it would index {} MiB of journal", b >> 20)
            }
            StoreReason::ChainAge(d) => write!(f, "its base is {} s old", d.as_secs()),
            StoreReason::Replay { journal, store } => write!(
                f,
                "reading it would replay {} MiB of journal, more than 4 times what storing it \
                 writes (~{} MiB)",
                journal >> 20,
                store >> 20
            ),
        }
    }
}

/// Rule 1: the journal-backed app-consistent points to store, oldest first (none when
/// [`StoreRule::store_app_consistent`] is off). The initial copy is never among them.
pub fn app_points_to_store(points: &[PointView], rule: &StoreRule) -> Vec<String> {
    if !rule.store_app_consistent {
        return Vec::new();
    }
    let mut v: Vec<&PointView> = points
        .iter()
        .filter(|p| {
            p.journal_backed
                && p.kind == CheckpointKind::AppConsistent
                && p.origin != PointOrigin::InitialCopy
        })
        .collect();
    v.sort_by_key(|p| p.seq);
    v.into_iter().map(|p| p.id.clone()).collect()
}

/// Rules 2 to 4: whether the chain's point is to be stored, and why.
pub fn chain_due(chain: &Chain, rule: &StoreRule) -> Option<StoreReason> {
    if chain.index_bytes >= rule.max_chain_index_bytes {
        return Some(StoreReason::ChainIndex(chain.index_bytes));
    }
    let age = chain.age();
    if age < rule.min_interval {
        return None;
    }
    if age >= rule.max_chain_age {
        return Some(StoreReason::ChainAge(age));
    }
    let store = chain.store_bytes();
    let journal = chain.journal_bytes;
    (chain.touched_chunks > 0 && journal >= store.saturating_mul(rule.max_replay_factor))
        .then_some(StoreReason::Replay { journal, store })
}

/// The eager rule: every journal-backed point cut at a checkpoint marker, and the newest
/// "latest" point once it is `interval` or more after the newest point stored or to be stored
/// before it, oldest first. [`crate::Processor::store_due`] uses it with a zero interval
/// ("store every point"); the rule of the product is [`app_points_to_store`] and [`chain_due`].
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
    /// Journal records kept, as inclusive ranges `(first, last)` in order, merged; a range
    /// ending at `Seq(u64::MAX)` runs to the end of the journal. A stored segment none of whose
    /// records is in a range may be deleted ([`RetentionPlan::keeps_records`]).
    pub journal: Vec<(Seq, Seq)>,
    /// Stored points in `keep` only as a base: thinning dropped them, but a kept
    /// journal-backed point, a reader's pin or the CDP window is read through them. These are
    /// what rolling the base forward releases ([`crate::plan_rolls`]).
    pub bases_only: BTreeSet<String>,
}

impl RetentionPlan {
    /// Whether any record `first..=last` (a segment's) is kept.
    pub fn keeps_records(&self, first: Seq, last: Seq) -> bool {
        self.journal.iter().any(|(a, b)| *a <= last && first <= *b)
    }
}

/// The end of the journal, in [`RetentionPlan::journal`].
pub const JOURNAL_END: Seq = Seq(u64::MAX);

/// Plans retention of `points` under `policy` at `now`:
///
/// 1. journal-backed "latest" points older than the CDP window are dropped (they are cut every
///    processing pass; beyond the window only marker points and stored points are kept), and
///    take no part in thinning;
/// 2. ASR's thinning and the policy's retention ([`points_to_keep`]) over the others;
/// 3. the base of every kept journal-backed point (the one its record names, else the newest
///    stored point before it) is kept (pinned), whatever step 2 said: the point is read
///    through it;
/// 4. journal records are kept from its base to its position for every kept journal-backed
///    point, and from the newest kept stored point at or before the start of the CDP window to
///    the end (so any time inside the window can be rebuilt, and points not cut yet can be); if
///    thinning kept no stored point that old, the newest stored point that old is pinned; with
///    none at all, the whole journal is kept.
pub fn plan_retention(
    points: &[PointView],
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> RetentionPlan {
    plan_retention_pinned(points, policy, now, &[])
}

/// [`plan_retention`], also keeping what each pin `(base, seq)` needs (a reader holding a
/// point open, e.g. a DR drill: `lifeboat_store::PinRecord`): the stored point at `base` and
/// the journal records `base + 1 ..= seq`.
pub fn plan_retention_pinned(
    points: &[PointView],
    policy: &ReplicationPolicy,
    now: SystemTime,
    pins: &[(Seq, Seq)],
) -> RetentionPlan {
    let mut sorted: Vec<&PointView> = points.iter().collect();
    sorted.sort_by_key(|p| p.seq);
    let window_start = now
        .checked_sub(policy.cdp_window)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut drop: Vec<(String, String)> = Vec::new();
    let mut metas: Vec<PointMeta> = Vec::new();
    for p in &sorted {
        if p.journal_backed && p.origin == PointOrigin::Latest && p.time < window_start {
            drop.push((
                p.id.clone(),
                "journal-backed \"latest\" point older than the continuous-data-protection window"
                    .to_string(),
            ));
        } else {
            metas.push(PointMeta {
                id: p.id.clone(),
                time: p.time,
                kind: p.kind,
            });
        }
    }
    let thin = points_to_keep(&metas, policy, now);
    let mut keep: BTreeSet<String> = thin.keep.iter().cloned().collect();
    let mut bases_only: BTreeSet<String> = BTreeSet::new();
    drop.extend(thin.drop.iter().map(|(id, r)| (id.clone(), r.to_string())));
    let base_of = |p: &PointView| base_of(&sorted, p).map(|b| (b.id.clone(), b.seq));
    let mut journal: Vec<(Seq, Seq)> = Vec::new();
    let kept_jb: Vec<&PointView> = sorted
        .iter()
        .copied()
        .filter(|p| p.journal_backed && keep.contains(&p.id))
        .collect();
    for p in kept_jb {
        match base_of(p) {
            Some((id, seq)) => {
                journal.push((seq.next(), p.seq));
                if keep.insert(id.clone()) {
                    drop.retain(|(d, _)| *d != id);
                    bases_only.insert(id);
                }
            }
            // Unreadable without a base; keep what it might need.
            None => journal.push((Seq(0), p.seq)),
        }
    }
    for &(base, seq) in pins {
        journal.push((base.next(), seq));
        if let Some(b) = sorted.iter().find(|b| !b.journal_backed && b.seq == base) {
            if keep.insert(b.id.clone()) {
                drop.retain(|(d, _)| *d != b.id);
                bases_only.insert(b.id.clone());
            }
        }
    }
    // The window is read from the newest kept stored point at or before its start; if thinning
    // kept none, the newest stored point there is pinned.
    let stored_before_window = |kept_only: bool| {
        sorted.iter().rev().find(|p| {
            !p.journal_backed && p.time <= window_start && (!kept_only || keep.contains(&p.id))
        })
    };
    let window_base = match stored_before_window(true).or_else(|| stored_before_window(false)) {
        Some(b) => {
            let (id, seq) = (b.id.clone(), b.seq);
            if keep.insert(id.clone()) {
                drop.retain(|(d, _)| *d != id);
                bases_only.insert(id);
            }
            seq.next()
        }
        None => Seq(0),
    };
    journal.push((window_base, JOURNAL_END));
    drop.sort();
    RetentionPlan {
        keep,
        drop,
        future: thin.future,
        journal: merge_ranges(journal),
        bases_only,
    }
}

/// The base of journal-backed point `p` among `sorted` (by position): the one its record names
/// (readers may use a newer stored point, but the record must stay true), else the newest
/// stored one before it.
pub(crate) fn base_of<'a>(sorted: &[&'a PointView], p: &PointView) -> Option<&'a PointView> {
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
        .copied()
}

/// Sorts inclusive ranges and merges those that overlap or touch.
fn merge_ranges(mut v: Vec<(Seq, Seq)>) -> Vec<(Seq, Seq)> {
    v.retain(|(a, b)| a <= b);
    v.sort();
    let mut out: Vec<(Seq, Seq)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a.0 <= last.1 .0.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod pin_tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_pin_keeps_its_base_and_journal_whatever_the_policy() {
        let day = 86_400u64;
        let now = UNIX_EPOCH + Duration::from_secs(10 * day);
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let view = |seq: u64, t: SystemTime, jb: bool| PointView {
            id: format!("{seq:020}-crash"),
            seq: Seq(seq),
            time: t,
            kind: CheckpointKind::CrashConsistent,
            journal_backed: jb,
            origin: PointOrigin::Marker,
            base: None,
        };
        // An old stored point (past the 24 h retention), then recent ones.
        let points = vec![
            view(100, at(day), false),
            view(200, at(9 * day), false),
            view(300, now, true),
        ];
        let policy = ReplicationPolicy::default();
        let plain = plan_retention(&points, &policy, now);
        assert!(!plain.keep.contains(&points[0].id), "{plain:?}");
        assert!(!plain.keeps_records(Seq(101), Seq(150)));
        let pinned = plan_retention_pinned(&points, &policy, now, &[(Seq(100), Seq(150))]);
        assert!(pinned.keep.contains(&points[0].id), "{pinned:?}");
        assert!(!pinned.drop.iter().any(|(d, _)| *d == points[0].id));
        assert!(pinned.keeps_records(Seq(101), Seq(150)));
        assert!(pinned.keeps_records(Seq(150), Seq(160)));
        assert!(!pinned.keeps_records(Seq(151), Seq(160)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{at, history, now_at, Rng, HOUR, MIN};
    use std::time::UNIX_EPOCH;

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
        assert_eq!(plan.journal, vec![(Seq(31), JOURNAL_END)]);
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
        assert_eq!(plan.journal, vec![(Seq(11), JOURNAL_END)]);

        // The base a record names is the one pinned, even with a newer stored point before it.
        let mut jb = p(30, 24 * 60 * MIN - 5, true, Marker);
        jb.base = Some(ids(&[10])[0].clone());
        let pts = vec![p(10, 0, false, Marker), p(20, 60, false, Marker), jb];
        let plan = plan_retention(&pts, &policy, now);
        assert!(plan.keep.contains(&ids(&[10])[0]), "{plan:?}");
        assert_eq!(plan.drop.len(), 1, "{plan:?}");
        assert_eq!(plan.drop[0].0, ids(&[20])[0]);
        assert_eq!(plan.journal, vec![(Seq(11), JOURNAL_END)]);
    }

    #[test]
    fn nothing_is_released_without_a_stored_point_older_than_the_window() {
        use PointOrigin::*;
        let policy = ReplicationPolicy::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000 + 30 * MIN);
        let pts = vec![p(10, 0, false, InitialCopy), p(20, 10 * MIN, true, Latest)];
        let plan = plan_retention(&pts, &policy, now);
        assert_eq!(plan.journal, vec![(Seq(0), JOURNAL_END)]);
        assert!(plan.keeps_records(Seq(0), Seq(5)));
        assert_eq!(plan.keep.len(), 2);
    }

    const MIB: u64 = 1 << 20;

    fn chain(age_secs: u64, journal: u64, touched: u64, index: u64) -> Chain {
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        Chain {
            point: "p".into(),
            point_time: t + Duration::from_secs(age_secs),
            base: "b".into(),
            base_time: t,
            journal_bytes: journal,
            touched_chunks: touched,
            chunk_bytes: 2 * MIB,
            index_bytes: index,
        }
    }

    #[test]
    fn a_chain_is_stored_when_replaying_it_would_read_four_times_what_storing_writes() {
        // 5 min .. 25 h, replay factor 4; 10 chunks of 2 MiB: storing writes 20 MiB.
        let rule = StoreRule::default();
        assert_eq!(
            chain_due(&chain(6 * HOUR, 80 * MIB, 10, 0), &rule),
            Some(StoreReason::Replay {
                journal: 80 * MIB,
                store: 20 * MIB
            })
        );
        assert_eq!(
            chain_due(&chain(6 * HOUR, 80 * MIB - 1, 10, 0), &rule),
            None
        );
        // However long ago the base is (within the maximum age) and however little was written.
        assert!(chain_due(&chain(24 * HOUR, 80 * MIB, 10, 0), &rule).is_some());
        assert_eq!(chain_due(&chain(24 * HOUR, 79 * MIB, 10, 0), &rule), None);
        // Nothing touched: nothing to gain by storing.
        assert_eq!(chain_due(&chain(6 * HOUR, 100 * MIB, 0, 0), &rule), None);
        // The factor is the rule's.
        let r1 = StoreRule {
            max_replay_factor: 1,
            ..rule.clone()
        };
        assert!(chain_due(&chain(600, 20 * MIB, 10, 0), &r1).is_some());
        assert_eq!(chain_due(&chain(600, 19 * MIB, 10, 0), &r1), None);
    }

    #[test]
    fn age_and_index_bound_the_chain_and_the_minimum_interval_holds_replay_and_age() {
        let rule = StoreRule::default();
        // Replay-due, but younger than the minimum interval.
        assert_eq!(chain_due(&chain(299, 10_000 * MIB, 1, 0), &rule), None);
        // Expensive to store, but the base is 25 h old.
        assert_eq!(
            chain_due(&chain(25 * HOUR, MIB, 1000, 0), &rule),
            Some(StoreReason::ChainAge(Duration::from_secs(25 * HOUR)))
        );
        assert_eq!(chain_due(&chain(25 * HOUR - 1, MIB, 1000, 0), &rule), None);
        // The index bound wins even inside the minimum interval.
        let big = rule.max_chain_index_bytes;
        assert_eq!(
            chain_due(&chain(1, MIB, 1000, big), &rule),
            Some(StoreReason::ChainIndex(big))
        );
        assert_eq!(chain_due(&chain(1, MIB, 1000, big - 1), &rule), None);
        // A policy's retention sets the maximum age: the retention plus an hour.
        let short = ReplicationPolicy {
            retention: Duration::from_secs(2 * HOUR),
            ..ReplicationPolicy::default()
        };
        let r = StoreRule::for_policy(&short);
        assert_eq!(r.max_chain_age, Duration::from_secs(3 * HOUR));
        assert!(chain_due(&chain(3 * HOUR, MIB, 1000, 0), &r).is_some());
        assert!(chain_due(&chain(3 * HOUR, MIB, 1000, 0), &rule).is_none());
        assert_eq!(
            StoreRule::for_policy(&ReplicationPolicy::default()).max_chain_age,
            DEFAULT_MAX_CHAIN_AGE
        );
    }

    #[test]
    fn app_consistent_journal_backed_points_are_stored_when_the_rule_says_so() {
        use PointOrigin::*;
        let mut a = p(20, 60, true, Marker);
        a.kind = CheckpointKind::AppConsistent;
        a.id = "00000000000000000020-app".into();
        let mut stored_app = p(10, 0, false, Marker);
        stored_app.kind = CheckpointKind::AppConsistent;
        let pts = vec![
            stored_app,
            p(15, 30, true, Marker),
            a.clone(),
            p(25, 90, true, Latest),
        ];
        let on = StoreRule {
            store_app_consistent: true,
            ..StoreRule::default()
        };
        assert_eq!(app_points_to_store(&pts, &on), vec![a.id]);
        // Off by default: they roll like the others.
        assert!(app_points_to_store(&pts, &StoreRule::default()).is_empty());
    }

    /// Stored points at 0 and 330 min; journal-backed marker points every 30 min on the newest
    /// stored point before them (position = minutes).
    fn two_bases() -> Vec<PointView> {
        let mut pts = vec![at(0, 0, false, None), at(330, 330, false, None)];
        for m in (30..=600).step_by(30) {
            if m != 330 {
                pts.push(at(m, m, true, Some(if m < 330 { 0 } else { 330 })));
            }
        }
        pts
    }

    #[test]
    fn kept_journal_backed_points_keep_exactly_the_journal_from_their_base() {
        let pts = two_bases();
        let policy = ReplicationPolicy::default(); // 24 h, CDP 1 h, every point of 2 h
        let plan = plan_retention(&pts, &policy, now_at(600));
        // Older than 2 h (before 480 min): one point per hour, the newest of its hour.
        let kept: Vec<u64> = pts
            .iter()
            .filter(|p| plan.keep.contains(&p.id))
            .map(|p| p.seq.0)
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        assert_eq!(
            kept,
            vec![0, 30, 90, 150, 210, 270, 330, 390, 450, 480, 510, 540, 570, 600]
        );
        // 0 lost its hour to 30, but 30 .. 270 are read through it: pinned.
        assert!(
            !plan.drop.iter().any(|(id, _)| id == &ids(&[0])[0]),
            "{plan:?}"
        );
        // Records 1..=270 for the points on 0; 331.. for those on 330 and the window.
        assert_eq!(
            plan.journal,
            vec![(Seq(1), Seq(270)), (Seq(331), JOURNAL_END)]
        );
        assert!(plan.keeps_records(Seq(260), Seq(280)));
        assert!(!plan.keeps_records(Seq(271), Seq(330)));
        assert!(plan.keeps_records(Seq(300), Seq(331)));
        assert!(!plan.keeps_records(Seq(0), Seq(0)));
        for (id, _) in &plan.drop {
            assert!(!plan.keep.contains(id));
        }
    }

    #[test]
    fn dropping_the_points_of_a_base_releases_their_journal_and_the_base() {
        let pts = two_bases();
        let policy = ReplicationPolicy {
            retention: Duration::from_secs(6 * HOUR),
            ..ReplicationPolicy::default()
        };
        // At 600 min: 270 (330 min old) still needs 0 and records 1..=270.
        let plan = plan_retention(&pts, &policy, now_at(600));
        assert!(plan.keep.contains(&ids(&[0])[0]));
        assert_eq!(plan.journal[0], (Seq(1), Seq(270)));
        // At 660 min every point on 0 is past the retention or thinned: 0 and its journal go.
        let plan = plan_retention(&pts, &policy, now_at(660));
        assert!(!plan.keep.contains(&ids(&[0])[0]), "{plan:?}");
        assert!(plan.drop.iter().any(|(id, _)| id == &ids(&[0])[0]));
        assert_eq!(plan.journal, vec![(Seq(331), JOURNAL_END)]);
        assert!(!plan.keeps_records(Seq(1), Seq(330)));
        // A CDP window reaching back before 330 pins 0 and keeps the journal after it whole.
        let wide = ReplicationPolicy {
            cdp_window: Duration::from_secs(6 * HOUR),
            ..policy
        };
        let plan = plan_retention(&pts, &wide, now_at(660));
        assert!(plan.keep.contains(&ids(&[0])[0]), "{plan:?}");
        assert_eq!(plan.journal, vec![(Seq(1), JOURNAL_END)]);
    }

    #[test]
    fn old_latest_points_do_not_take_a_bucket_from_a_marker() {
        use PointOrigin::*;
        let policy = ReplicationPolicy::default();
        // Hour 0: a marker at 10 min and a "latest" point at 50 min, both journal-backed on a
        // stored point; judged at 5 h: the latest point is dropped and the marker keeps the hour.
        let mut pts = vec![at(0, 0, false, None), at(10, 10, true, Some(0))];
        let mut l = at(50, 50, true, Some(0));
        l.origin = Latest;
        pts.push(l);
        pts.push(at(300, 300, true, Some(0)));
        let plan = plan_retention(&pts, &policy, now_at(300));
        assert!(plan.keep.contains(&ids(&[10])[0]), "{plan:?}");
        assert!(!plan.keep.contains(&ids(&[50])[0]));
        assert_eq!(plan.journal, vec![(Seq(1), JOURNAL_END)]);
    }

    #[test]
    fn retention_invariants_over_synthetic_histories() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..300 {
            let (pts, policy, now, _) = history(&mut rng, 60, 7, 3);
            let plan = plan_retention(&pts, &policy, now);
            for p in &pts {
                let kept = plan.keep.contains(&p.id);
                assert_ne!(kept, plan.drop.iter().any(|(d, _)| d == &p.id), "{p:?}");
                if kept && p.journal_backed {
                    let b = p.base.as_ref().unwrap();
                    assert!(plan.keep.contains(b), "base {b} of {} dropped", p.id);
                    let bseq = pts.iter().find(|x| &x.id == b).unwrap().seq;
                    for s in bseq.0 + 1..=p.seq.0 {
                        assert!(plan.keeps_records(Seq(s), Seq(s)), "record {s} of {}", p.id);
                    }
                }
            }
            // Records after the newest kept stored point are always kept.
            let newest = pts
                .iter()
                .filter(|p| !p.journal_backed && plan.keep.contains(&p.id))
                .map(|p| p.seq)
                .max()
                .unwrap();
            assert!(plan.keeps_records(newest.next(), newest.next()));
            assert_eq!(plan.journal.last().unwrap().1, JOURNAL_END);
        }
    }
}
