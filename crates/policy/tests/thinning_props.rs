//! Properties of the thinning planner over synthetic streams of recovery points: the planner is
//! run again and again as `now` advances, its drops applied each time, as the store will do.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_policy::{
    bucket_width_for_age, points_to_keep, CheckpointKind, DropReason, KeepPlan, PointMeta,
    ReplicationPolicy, ASR_THINNING, KEEP_ALL_WINDOW,
};
use proptest::prelude::*;

/// 2024-01-01T00:00:00Z.
const BASE: u64 = 1_704_067_200;
const H: u64 = 3600;
const D: u64 = 86_400;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(BASE + secs)
}

fn age_of(p: &PointMeta, now: u64) -> Duration {
    at(now)
        .duration_since(p.time)
        .expect("no future points in a stream")
}

fn policy(retention: u64) -> ReplicationPolicy {
    ReplicationPolicy {
        retention: Duration::from_secs(retention),
        cdp_window: Duration::ZERO,
        ..Default::default()
    }
}

/// splitmix64: a small deterministic generator seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
struct Stream {
    interval: u64,
    span: u64,
    retention: u64,
    /// One point in `app_one_in` is app-consistent (0: none).
    app_one_in: u64,
    /// One point in `dup_one_in` has a twin at the same instant (0: none).
    dup_one_in: u64,
    /// Jitter of each point, below this many seconds (less than the interval).
    jitter: u64,
    /// Largest gap between two planner runs, in seconds.
    max_gap: u64,
    seed: u64,
}

/// Points in time order, every `interval` (plus jitter), starting at an odd offset.
fn points(s: &Stream) -> Vec<PointMeta> {
    let mut rng = Rng(s.seed);
    let start = 1234;
    let mut out = Vec::new();
    let mut k = 0;
    loop {
        let t = start + k * s.interval + rng.below(s.jitter);
        if t > start + s.span {
            return out;
        }
        let kind = if s.app_one_in > 0 && rng.below(s.app_one_in) == 0 {
            CheckpointKind::AppConsistent
        } else {
            CheckpointKind::CrashConsistent
        };
        out.push(PointMeta {
            id: format!("p{k:06}"),
            time: at(t),
            kind,
        });
        if s.dup_one_in > 0 && rng.below(s.dup_one_in) == 0 {
            let kind = if rng.below(2) == 0 {
                kind
            } else {
                CheckpointKind::CrashConsistent
            };
            out.push(PointMeta {
                id: format!("p{k:06}b"),
                time: at(t),
                kind,
            });
        }
        k += 1;
    }
}

/// The most points outside the keep-all window that thinning may keep for this retention: per
/// row, the buckets that intersect the row's age range.
fn thinned_bound(retention: Duration) -> usize {
    let mut lo = KEEP_ALL_WINDOW;
    let mut bound = 0;
    for tier in ASR_THINNING.iter().skip(1) {
        let hi = tier.up_to_age.min(retention);
        if hi <= lo {
            break;
        }
        let w = tier.bucket.unwrap().as_secs();
        bound += ((hi - lo).as_secs() / w) as usize + 2;
        lo = hi;
    }
    bound
}

fn bucket_key(p: &PointMeta, width: Duration) -> (u64, u64) {
    let t = p.time.duration_since(UNIX_EPOCH).unwrap().as_secs();
    (width.as_secs(), t / width.as_secs())
}

/// Checks the invariants of one plan over the points in the store at `now`, and returns the
/// decision for each store point, in store order (`None`: kept). Store ids are unique.
fn check_plan<'a>(
    store: &[PointMeta],
    plan: &'a KeepPlan,
    pol: &ReplicationPolicy,
    now: u64,
) -> Vec<Option<&'a DropReason>> {
    // `keep` and `drop` are each in input order: merge them against the store.
    let (mut k, mut d) = (0, 0);
    let decisions: Vec<Option<&DropReason>> = store
        .iter()
        .map(|p| {
            if plan.keep.get(k) == Some(&p.id) {
                k += 1;
                None
            } else {
                let (id, reason) = &plan.drop[d];
                assert_eq!(id, &p.id, "keep and drop lists out of input order");
                d += 1;
                Some(reason)
            }
        })
        .collect();
    assert_eq!(
        (k, d),
        (plan.keep.len(), plan.drop.len()),
        "every id decided once"
    );
    assert!(plan.future.is_empty());

    // The newest point as `points_to_keep` ranks a tie at the same instant: app-consistent
    // first, then the greatest id.
    let newest = (0..store.len()).max_by_key(|&i| {
        (
            store[i].time,
            store[i].kind == CheckpointKind::AppConsistent,
            &store[i].id,
        )
    });
    if let Some(n) = newest {
        assert!(
            decisions[n].is_none(),
            "newest point {} dropped",
            store[n].id
        );
    }
    let newest_app = (0..store.len())
        .filter(|&i| store[i].kind == CheckpointKind::AppConsistent)
        .filter(|&i| age_of(&store[i], now) <= pol.retention)
        .max_by_key(|&i| (store[i].time, &store[i].id));
    if let Some(a) = newest_app {
        assert!(
            decisions[a].is_none(),
            "newest app point {} dropped",
            store[a].id
        );
    }

    let mut buckets: Vec<(u64, u64)> = Vec::new();
    let mut keep_all = 0;
    for (i, p) in store.iter().enumerate() {
        let age = age_of(p, now);
        let kept = decisions[i].is_none();
        if age > pol.retention {
            assert!(
                !kept || Some(i) == newest,
                "{} past retention and kept",
                p.id
            );
            continue;
        }
        if age <= KEEP_ALL_WINDOW {
            assert!(
                kept,
                "{} is {age:?} old, inside the keep-all window, and dropped",
                p.id
            );
            keep_all += 1;
            continue;
        }
        if kept && Some(i) != newest {
            buckets.push(bucket_key(p, bucket_width_for_age(age).unwrap()));
        }
    }
    buckets.sort_unstable();
    if let Some(w) = buckets.windows(2).find(|w| w[0] == w[1]) {
        panic!("bucket {:?} keeps two points at {now}", w[0]);
    }
    let bound = thinned_bound(pol.retention);
    assert!(
        buckets.len() <= bound,
        "{} thinned points kept, bound {bound}",
        buckets.len()
    );
    assert!(plan.keep.len() <= keep_all + buckets.len() + 1);
    decisions
}

/// Runs the planner with advancing `now` (from 0 to `extra` after the last point), applying its
/// drops, checking every plan and the stability property between consecutive plans; returns the
/// final store, the whole stream and the time of the last run.
fn simulate(
    s: &Stream,
    gaps: &mut dyn FnMut() -> u64,
    extra: u64,
) -> (Vec<PointMeta>, Vec<PointMeta>, u64) {
    let pol = policy(s.retention);
    let stream = points(s);
    let end = stream
        .last()
        .map_or(0, |p| p.time.duration_since(at(0)).unwrap().as_secs())
        + extra;
    let mut store: Vec<PointMeta> = Vec::new();
    let mut next = 0;
    // Bucket width in seconds (0: keep-all) of each store point at the previous run, for the
    // points that run kept (the store's first `prev_width.len()` points).
    let mut prev_width: Vec<u64> = Vec::new();
    let mut now = 0;
    let mut last_run = 0;
    while now <= end {
        last_run = now;
        while next < stream.len() && stream[next].time <= at(now) {
            store.push(stream[next].clone());
            next += 1;
        }
        let plan = points_to_keep(&store, &pol, at(now));
        let decisions = check_plan(&store, &plan, &pol, now);
        for (i, before) in prev_width.iter().enumerate() {
            let p = &store[i];
            match decisions[i] {
                None => {}
                Some(DropReason::OlderThanRetention { .. }) => {
                    assert!(age_of(p, now) > pol.retention)
                }
                Some(DropReason::Thinned { bucket, .. }) => {
                    let w = bucket_width_for_age(age_of(p, now)).unwrap();
                    assert_eq!(bucket.width, w);
                    assert!(
                        w.as_secs() > *before,
                        "{} kept in a {before}s bucket, then thinned in a {w:?} one at {now}",
                        p.id
                    );
                }
            }
        }
        let mut decided = decisions.iter();
        store.retain(|_| decided.next().unwrap().is_none());
        prev_width = store
            .iter()
            .map(|p| bucket_width_for_age(age_of(p, now)).map_or(0, |w| w.as_secs()))
            .collect();
        now += gaps().max(1);
    }
    (store, stream, last_run)
}

fn ids(v: &[PointMeta]) -> BTreeSet<String> {
    v.iter().map(|p| p.id.clone()).collect()
}

fn stream_strategy() -> impl Strategy<Value = (Stream, u64)> {
    let shape = prop_oneof![
        // 3 days of frequent points (2 to 10 min).
        (Just(3 * D), 120u64..=600),
        // 10 days of sparser points, to reach the 4 h row.
        (Just(10 * D), 900u64..=3600),
    ];
    let retention = prop_oneof![
        Just(H),
        Just(3 * H),
        Just(D),
        Just(2 * D),
        Just(3 * D),
        Just(8 * D),
        Just(30 * D),
    ];
    (
        shape,
        retention,
        prop_oneof![Just(0u64), 2u64..=20],
        prop_oneof![Just(0u64), 2u64..=10],
        any::<bool>(),
        prop_oneof![Just(600u64), Just(2 * H)],
        any::<u64>(),
    )
        .prop_map(
            |((span, interval), retention, app, dup, jitter, max_gap, seed)| {
                let s = Stream {
                    interval,
                    span,
                    retention,
                    app_one_in: app,
                    dup_one_in: dup,
                    jitter: if jitter { interval - 1 } else { 0 },
                    max_gap,
                    seed,
                };
                (s, seed ^ 0x5555)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Invariants at every run, stability between runs, and independence from when the planner
    /// ran: the store after many runs equals one run over every point ever cut.
    #[test]
    fn repeated_runs_are_stable_and_path_independent((s, gap_seed) in stream_strategy()) {
        // Gaps between runs: a quarter of them tiny (1 to 10 s: "t + epsilon"), the rest up to
        // the stream's largest gap.
        let mut rng = Rng(gap_seed);
        let mut gaps = || {
            if rng.below(4) == 0 {
                1 + rng.below(10)
            } else {
                1 + rng.below(s.max_gap)
            }
        };
        let (store, stream, last_run) =
            simulate(&s, &mut gaps, s.retention.min(2 * H));
        let cut: Vec<PointMeta> = stream.into_iter().filter(|p| p.time <= at(last_run)).collect();
        let once = points_to_keep(&cut, &policy(s.retention), at(last_run));
        prop_assert_eq!(ids(&store), once.keep.iter().cloned().collect::<BTreeSet<_>>());
    }
}

/// The brief's scenario, deterministic: a point every 5 minutes for 3 days (one in 12
/// app-consistent), the planner run every 5 minutes, with the default retention and with 30 days.
/// The last run is at 3 d 00:20:00 and sees 864 points, the newest at 3 d 00:15:34.
#[test]
fn five_minute_points_for_three_days() {
    // 24 points in the last 2 h; 22 hourly buckets (2 d 00:00 to 2 d 22:00; the 22:00 one is
    // won by a point still in the keep-all window); with 30 days, 24 two-hourly buckets too
    // (day 0 00:00 to day 1 22:00; the 2 d 00:00 bucket is won by a point of the hourly row).
    for (retention, expected) in [(D, 24 + 22), (30 * D, 24 + 22 + 24)] {
        let s = Stream {
            interval: 300,
            span: 3 * D,
            retention,
            app_one_in: 12,
            dup_one_in: 0,
            jitter: 0,
            max_gap: 300,
            seed: 7,
        };
        let (store, stream, last_run) = simulate(&s, &mut || 300, 0);
        assert_eq!(stream.len(), 3 * 288 + 1);
        assert_eq!(last_run, 3 * D + 20 * 60);
        assert_eq!(store.len(), expected, "retention {retention}");
        assert!(store.len() <= 25 + thinned_bound(Duration::from_secs(retention)));
    }
}

/// Arbitrary point sets (not streams): future and past points, duplicates, any order.
fn arbitrary_points() -> impl Strategy<Value = Vec<PointMeta>> {
    prop::collection::vec((0u64..40 * D, any::<bool>(), 0u8..50), 0..120).prop_map(|v| {
        v.into_iter()
            .map(|(t, app, id)| PointMeta {
                id: format!("x{id}"),
                time: at(t),
                kind: if app {
                    CheckpointKind::AppConsistent
                } else {
                    CheckpointKind::CrashConsistent
                },
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_input_is_partitioned_and_order_free(
        pts in arbitrary_points(),
        now in 0u64..45 * D,
        retention in prop_oneof![Just(H), Just(D), Just(15 * D), Just(30 * D)],
    ) {
        let pol = policy(retention);
        let plan = points_to_keep(&pts, &pol, at(now));
        let keep: BTreeSet<&str> = plan.keep.iter().map(String::as_str).collect();
        let drop: BTreeSet<&str> = plan.drop.iter().map(|(i, _)| i.as_str()).collect();
        let all: BTreeSet<&str> = pts.iter().map(|p| p.id.as_str()).collect();
        prop_assert!(keep.is_disjoint(&drop));
        prop_assert_eq!(keep.union(&drop).copied().collect::<BTreeSet<_>>(), all);
        for p in &pts {
            if p.time > at(now) {
                prop_assert!(plan.future.contains(&p.id));
                prop_assert!(keep.contains(p.id.as_str()));
            } else if age_of(p, now) <= KEEP_ALL_WINDOW.min(pol.retention) {
                // Every point of the last 2 h is kept, unless retention is shorter than that.
                prop_assert!(keep.contains(p.id.as_str()));
            }
        }
        if let Some(n) = pts.iter().filter(|p| p.time <= at(now)).max_by_key(|p| p.time) {
            // Some point at the newest instant is kept (ties go to one of them).
            prop_assert!(pts.iter().any(|q| q.time == n.time && keep.contains(q.id.as_str())));
        }
        let mut rev = pts.clone();
        rev.reverse();
        let plan2 = points_to_keep(&rev, &pol, at(now));
        prop_assert_eq!(keep, plan2.keep.iter().map(String::as_str).collect::<BTreeSet<_>>());
        for (_, reason) in &plan.drop {
            prop_assert!(!reason.to_string().is_empty());
        }
    }
}
