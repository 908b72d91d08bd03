//! Retention and thinning of recovery points: which points to keep, as a pure function of
//! (points, policy, now). The design and the stability argument are in the crate doc.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_types::CheckpointKind;

use crate::duration::format_duration;
use crate::policy::ReplicationPolicy;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const NS_PER_SEC: i128 = 1_000_000_000;

/// One row of the thinning table: points up to `up_to_age` old (and older than the previous
/// row's) keep one point per `bucket` of absolute time, or all of them when `bucket` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinningTier {
    /// Upper bound of the age range, inclusive.
    pub up_to_age: Duration,
    /// Bucket width (aligned to the Unix epoch), or `None` to keep every point.
    pub bucket: Option<Duration>,
}

/// Every point at most this old is kept.
pub const KEEP_ALL_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// ASR's thinning: all points of the last 2 h, then one per hour up to 1 day old, one per 2 h
/// up to 7 days old, one per 4 h beyond (up to the retention). Each bucket width divides the
/// next, so buckets nest.
pub const ASR_THINNING: [ThinningTier; 4] = [
    ThinningTier {
        up_to_age: KEEP_ALL_WINDOW,
        bucket: None,
    },
    ThinningTier {
        up_to_age: DAY,
        bucket: Some(HOUR),
    },
    ThinningTier {
        up_to_age: Duration::from_secs(7 * 86_400),
        bucket: Some(Duration::from_secs(2 * 3600)),
    },
    ThinningTier {
        up_to_age: Duration::MAX,
        bucket: Some(Duration::from_secs(4 * 3600)),
    },
];

/// The bucket width that applies to a point of this age (`None`: every point is kept).
/// Retention is not considered here.
pub fn bucket_width_for_age(age: Duration) -> Option<Duration> {
    ASR_THINNING
        .iter()
        .find(|t| age <= t.up_to_age)
        .and_then(|t| t.bucket)
}

fn width_ns_for_age_ns(age_ns: i128) -> Option<i128> {
    ASR_THINNING
        .iter()
        .find(|t| age_ns <= t.up_to_age.as_nanos() as i128)
        .and_then(|t| t.bucket)
        .map(|w| w.as_nanos() as i128)
}

/// What the planner needs to know of a recovery point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointMeta {
    /// Opaque id; the plan lists points by it.
    pub id: String,
    /// When the point was cut (its position in time).
    pub time: SystemTime,
    /// Crash- or app-consistent.
    pub kind: CheckpointKind,
}

/// A bucket of absolute time `[start, start + width)`, `start` a multiple of `width` since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Inclusive start.
    pub start: SystemTime,
    /// Width (1 h, 2 h or 4 h with [`ASR_THINNING`]).
    pub width: Duration,
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = to_ns(self.start);
        let end = start + self.width.as_nanos() as i128;
        write!(
            f,
            "the {} bucket {} to {}",
            format_duration(self.width),
            fmt_utc(start),
            fmt_utc(end)
        )
    }
}

/// Why a point is to be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Older than the policy's retention (and not the newest point).
    OlderThanRetention {
        /// The policy's retention.
        retention: Duration,
    },
    /// Another point of the same bucket is kept instead.
    Thinned {
        /// The bucket.
        bucket: Bucket,
        /// The id of the point the bucket keeps.
        winner: String,
    },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::OlderThanRetention { retention } => {
                write!(
                    f,
                    "older than the retention ({})",
                    format_duration(*retention)
                )
            }
            DropReason::Thinned { bucket, winner } => {
                write!(f, "thinned: {bucket} keeps only {winner}")
            }
        }
    }
}

/// The result of [`points_to_keep`]. Every input id is in exactly one of `keep` and `drop`, each
/// list in input order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeepPlan {
    /// Ids to keep.
    pub keep: Vec<String>,
    /// Ids to delete, with the reason.
    pub drop: Vec<(String, DropReason)>,
    /// Ids of points whose time is after `now` (clock skew): kept, and reported here so that the
    /// caller can raise a warning. Also listed in `keep`.
    pub future: Vec<String>,
}

/// Decides which recovery points to keep (see the crate doc for the rules).
///
/// Pure and deterministic: the result depends on the set of points, not their order, and is
/// stable as `now` advances. The policy is used for its retention only; it need not have been
/// validated. An id that appears more than once is decided once: kept if any entry is kept.
pub fn points_to_keep(
    points: &[PointMeta],
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> KeepPlan {
    let now_ns = to_ns(now);
    let retention_ns = policy.retention.as_nanos() as i128;
    let ts: Vec<i128> = points.iter().map(|p| to_ns(p.time)).collect();
    let is_app = |i: usize| points[i].kind == CheckpointKind::AppConsistent;
    // The keep rule: in a bucket, the newest app-consistent point if any, else the newest point;
    // ties (same instant) go to the greatest id.
    let rank = |i: usize| (is_app(i), ts[i], points[i].id.as_str());

    let past = || (0..points.len()).filter(|&i| ts[i] <= now_ns);
    let newest = past().max_by_key(|&i| (ts[i], is_app(i), points[i].id.as_str()));
    let newest_app = past()
        .filter(|&i| is_app(i))
        .max_by_key(|&i| (ts[i], points[i].id.as_str()));

    // Winners of every bucket of every width, over all points (any age): a bucket is judged on
    // its whole content, so its winner does not change as its points age (crate doc).
    // `winner[k][i]` is the winner of the bucket of width `widths[k]` that holds point `i`.
    let widths: Vec<i128> = ASR_THINNING
        .iter()
        .filter_map(|t| t.bucket)
        .map(|w| w.as_nanos() as i128)
        .collect();
    let mut by_time: Vec<usize> = (0..points.len()).collect();
    by_time.sort_by_key(|&i| ts[i]);
    let mut winner = vec![vec![0; points.len()]; widths.len()];
    for (k, &w) in widths.iter().enumerate() {
        // Sorted by time, the points of a bucket are contiguous.
        for run in by_time.chunk_by(|&a, &b| ts[a].div_euclid(w) == ts[b].div_euclid(w)) {
            let best = run
                .iter()
                .copied()
                .max_by_key(|&i| rank(i))
                .unwrap_or(run[0]);
            for &i in run {
                winner[k][i] = best;
            }
        }
    }

    let mut plan = KeepPlan::default();
    for (i, p) in points.iter().enumerate() {
        let age = now_ns - ts[i];
        if age < 0 {
            plan.keep.push(p.id.clone());
            plan.future.push(p.id.clone());
            continue;
        }
        if Some(i) == newest {
            plan.keep.push(p.id.clone());
            continue;
        }
        if age > retention_ns {
            plan.drop.push((
                p.id.clone(),
                DropReason::OlderThanRetention {
                    retention: policy.retention,
                },
            ));
            continue;
        }
        let Some(w) = width_ns_for_age_ns(age) else {
            plan.keep.push(p.id.clone());
            continue;
        };
        let k = widths.iter().position(|&x| x == w).unwrap_or(0);
        let winner = winner[k][i];
        // The newest app-consistent point always wins its bucket under the keep rule; the
        // explicit check keeps that promise even if the rule changes.
        if winner == i || Some(i) == newest_app {
            plan.keep.push(p.id.clone());
        } else {
            let start = ts[i].div_euclid(w) * w;
            plan.drop.push((
                p.id.clone(),
                DropReason::Thinned {
                    bucket: Bucket {
                        start: from_ns(start).unwrap_or(p.time),
                        width: Duration::from_nanos(w as u64),
                    },
                    winner: points[winner].id.clone(),
                },
            ));
        }
    }
    dedupe_ids(&mut plan);
    plan
}

/// An id listed more than once is decided once: kept if any of its entries is kept.
fn dedupe_ids(plan: &mut KeepPlan) {
    let mut ids: Vec<&str> = plan.keep.iter().map(String::as_str).collect();
    ids.extend(plan.drop.iter().map(|(id, _)| id.as_str()));
    ids.sort_unstable();
    if !ids.windows(2).any(|w| w[0] == w[1]) {
        return;
    }
    let mut seen = HashSet::new();
    plan.keep.retain(|id| seen.insert(id.clone()));
    let mut seen_future = HashSet::new();
    plan.future.retain(|id| seen_future.insert(id.clone()));
    plan.drop.retain(|(id, _)| seen.insert(id.clone()));
}

/// Nanoseconds since the Unix epoch, negative before it.
pub(crate) fn to_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn from_ns(ns: i128) -> Option<SystemTime> {
    let mag = ns.unsigned_abs();
    let secs = u64::try_from(mag / NS_PER_SEC as u128).ok()?;
    let d = Duration::new(secs, (mag % NS_PER_SEC as u128) as u32);
    if ns >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, seconds truncated toward the past).
/// A time as UTC text, `YYYY-MM-DDTHH:MM:SSZ` (what the CLI and the logs print).
pub fn format_utc(t: SystemTime) -> String {
    fmt_utc(to_ns(t))
}

fn fmt_utc(ns: i128) -> String {
    let secs = ns.div_euclid(NS_PER_SEC);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckpointKind::{AppConsistent as A, CrashConsistent as C};

    /// 2024-01-01T00:00:00Z: a multiple of 1 day (so of 1 h, 2 h and 4 h) since the epoch.
    const BASE: u64 = 1_704_067_200;
    const H: i64 = 3600;
    const M: i64 = 60;
    const D: i64 = 86_400;

    fn at(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(BASE + secs as u64)
        } else {
            UNIX_EPOCH + Duration::from_secs(BASE - secs.unsigned_abs())
        }
    }

    fn pt(id: &str, secs: i64, kind: CheckpointKind) -> PointMeta {
        PointMeta {
            id: id.into(),
            time: at(secs),
            kind,
        }
    }

    fn policy(retention_secs: i64) -> ReplicationPolicy {
        ReplicationPolicy {
            retention: Duration::from_secs(retention_secs as u64),
            cdp_window: Duration::ZERO,
            ..Default::default()
        }
    }

    fn kept(plan: &KeepPlan) -> Vec<&str> {
        let mut v: Vec<&str> = plan.keep.iter().map(String::as_str).collect();
        v.sort();
        v
    }

    fn reason<'a>(plan: &'a KeepPlan, id: &str) -> &'a DropReason {
        &plan.drop.iter().find(|(i, _)| i == id).expect(id).1
    }

    #[test]
    fn empty_input_gives_an_empty_plan() {
        assert_eq!(points_to_keep(&[], &policy(D), at(0)), KeepPlan::default());
    }

    #[test]
    fn the_last_two_hours_are_kept_whole_and_exactly_two_hours_is_inside() {
        let now = 10 * H + 7 * M; // not on a bucket edge
        let pts: Vec<_> = (0..=24)
            .map(|k| pt(&format!("p{k:02}"), now - 2 * H + k * 5 * M, C))
            .collect();
        let plan = points_to_keep(&pts, &policy(D), at(now));
        assert_eq!(plan.keep.len(), 25);
        assert!(plan.drop.is_empty());
        // One second more and p00 (2 h + 1 s old) is thinned: its hour bucket [8:00, 9:00) has a
        // newer point (p10 at 8:57) that wins even though p11 is still in the keep-all window.
        let plan = points_to_keep(&pts, &policy(D), at(now + 1));
        assert_eq!(plan.keep.len(), 24);
        let DropReason::Thinned { bucket, winner } = reason(&plan, "p00") else {
            panic!("{plan:?}")
        };
        assert_eq!((bucket.start, bucket.width), (at(8 * H), HOUR));
        assert_eq!(winner, "p10");
    }

    #[test]
    fn one_per_hour_newest_wins_app_consistent_preferred() {
        // Hour bucket [2:00, 3:00) with crash points; [3:00, 4:00) with an app point in the middle.
        let pts = vec![
            pt("a", 2 * H, C),
            pt("b", 2 * H + 30 * M, C),
            pt("c", 3 * H - 1, C),
            pt("d", 3 * H, C),
            pt("e", 3 * H + 20 * M, A),
            pt("f", 3 * H + 40 * M, C),
            pt("now", 10 * H, C),
        ];
        let plan = points_to_keep(&pts, &policy(D), at(10 * H));
        assert_eq!(kept(&plan), ["c", "e", "now"]);
        assert_eq!(
            reason(&plan, "a"),
            &DropReason::Thinned {
                bucket: Bucket {
                    start: at(2 * H),
                    width: HOUR
                },
                winner: "c".into()
            }
        );
        assert_eq!(
            reason(&plan, "f").to_string(),
            "thinned: the 1h bucket 2024-01-01T03:00:00Z to 2024-01-01T04:00:00Z keeps only e"
        );
    }

    #[test]
    fn exactly_one_day_is_hourly_and_a_second_more_is_two_hourly() {
        let now = 2 * D;
        // Two points in the 2 h bucket [0:00, 2:00) of day 1, one per hour bucket.
        let pts = vec![pt("x", D, C), pt("y", D + H, C), pt("now", now, C)];
        let plan = points_to_keep(&pts, &policy(3 * D), at(now));
        assert_eq!(
            kept(&plan),
            ["now", "x", "y"],
            "x is exactly 1 day old: hourly"
        );
        let plan = points_to_keep(&pts, &policy(3 * D), at(now + 1));
        assert_eq!(
            kept(&plan),
            ["now", "y"],
            "x is 1 day + 1 s old: one per 2 h"
        );
        let DropReason::Thinned { bucket, winner } = reason(&plan, "x") else {
            panic!()
        };
        assert_eq!(
            (bucket.start, bucket.width, winner.as_str()),
            (at(D), 2 * HOUR, "y")
        );
    }

    #[test]
    fn seven_days_and_beyond_is_four_hourly() {
        let now = 10 * D;
        let pts = vec![
            pt("u", 3 * D, C),
            pt("v", 3 * D + 2 * H, C),
            pt("now", now, C),
        ];
        let plan = points_to_keep(&pts, &policy(30 * D), at(now));
        assert_eq!(
            kept(&plan),
            ["now", "u", "v"],
            "u is exactly 7 days old: one per 2 h"
        );
        let plan = points_to_keep(&pts, &policy(30 * D), at(now + 1));
        assert_eq!(kept(&plan), ["now", "v"]);
        let DropReason::Thinned { bucket, .. } = reason(&plan, "u") else {
            panic!()
        };
        assert_eq!(bucket.width, 4 * HOUR);
    }

    #[test]
    fn exactly_retention_old_is_kept_a_second_more_is_dropped() {
        let pts = vec![pt("old", 0, C), pt("now", D, C)];
        let plan = points_to_keep(&pts, &policy(D), at(D));
        assert_eq!(kept(&plan), ["now", "old"]);
        let plan = points_to_keep(&pts, &policy(D), at(D + 1));
        assert_eq!(kept(&plan), ["now"]);
        assert_eq!(
            reason(&plan, "old").to_string(),
            "older than the retention (1d)"
        );
    }

    #[test]
    fn the_newest_point_is_never_dropped() {
        // Replication stopped 40 days ago: everything is past retention, the newest point stays.
        let pts = vec![pt("a", 0, C), pt("b", 5 * M, A), pt("c", 10 * M, C)];
        let plan = points_to_keep(&pts, &policy(D), at(40 * D));
        assert_eq!(kept(&plan), ["c"]);
        assert_eq!(plan.drop.len(), 2);
        // Stopped 5 h ago: c shares its hour bucket with the app point b, which wins the bucket,
        // but c is the newest point and is kept too.
        let plan = points_to_keep(&pts, &policy(D), at(5 * H));
        assert_eq!(kept(&plan), ["b", "c"]);
    }

    #[test]
    fn the_newest_app_consistent_point_survives_thinning_but_not_retention() {
        let mut pts: Vec<_> = (0..12)
            .map(|k| pt(&format!("c{k:02}"), k * 5 * M, C))
            .collect();
        pts.push(pt("app", 7 * M, A));
        pts.push(pt("now", 10 * H, C));
        let plan = points_to_keep(&pts, &policy(D), at(10 * H));
        assert_eq!(kept(&plan), ["app", "now"]);
        assert!(
            matches!(reason(&plan, "c11"), DropReason::Thinned { winner, .. } if winner == "app")
        );
        let plan = points_to_keep(&pts, &policy(D), at(D + 8 * M));
        assert_eq!(kept(&plan), ["now"]);
        assert!(matches!(
            reason(&plan, "app"),
            DropReason::OlderThanRetention { .. }
        ));
    }

    #[test]
    fn future_points_are_kept_and_reported() {
        let pts = vec![pt("f1", 5 * H, C), pt("f2", 6 * H, A)];
        let plan = points_to_keep(&pts, &policy(D), at(0));
        assert_eq!(kept(&plan), ["f1", "f2"]);
        assert_eq!(plan.future, ["f1", "f2"]);
        assert!(plan.drop.is_empty());
        // With a future point present, the newest past point is still protected.
        let pts = vec![pt("old", 0, C), pt("older", -H, A), pt("f", 50 * D, C)];
        let plan = points_to_keep(&pts, &policy(D), at(40 * D));
        assert_eq!(kept(&plan), ["f", "old"]);
        assert_eq!(plan.future, ["f"]);
    }

    #[test]
    fn duplicates_at_the_same_instant() {
        let t = 3 * H + 10 * M;
        let now = 10 * H;
        let pts = vec![
            pt("b", t, C),
            pt("a", t, C),
            pt("n1", now, C),
            pt("n2", now, C),
        ];
        let plan = points_to_keep(&pts, &policy(D), at(now));
        assert_eq!(
            kept(&plan),
            ["b", "n1", "n2"],
            "greatest id wins a tie; keep-all keeps both"
        );
        let mut with_app = pts.clone();
        with_app.push(pt("0app", t, A));
        let plan = points_to_keep(&with_app, &policy(D), at(now));
        assert_eq!(
            kept(&plan),
            ["0app", "n1", "n2"],
            "app-consistent wins a tie"
        );
        // The same id twice is decided once.
        let twice = vec![pt("x", t, C), pt("x", t + M, C), pt("now", now, C)];
        let plan = points_to_keep(&twice, &policy(D), at(now));
        assert_eq!(kept(&plan), ["now", "x"]);
        assert!(plan.drop.is_empty(), "{plan:?}");
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let pts: Vec<_> = (0..200)
            .map(|k| pt(&format!("p{k}"), k * 17 * M, if k % 7 == 0 { A } else { C }))
            .collect();
        let now = at(200 * 17 * M);
        let a = points_to_keep(&pts, &policy(2 * D), now);
        let mut rev = pts.clone();
        rev.reverse();
        let b = points_to_keep(&rev, &policy(2 * D), now);
        assert_eq!(kept(&a), kept(&b));
        let mut da: Vec<_> = a.drop.clone();
        let mut db: Vec<_> = b.drop.clone();
        da.sort_by(|x, y| x.0.cmp(&y.0));
        db.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(da, db);
    }

    #[test]
    fn times_before_the_epoch_do_not_panic() {
        let e = |s: u64| UNIX_EPOCH - Duration::from_secs(s);
        let pts = vec![
            PointMeta {
                id: "a".into(),
                time: e(10 * 3600 + 1),
                kind: C,
            },
            PointMeta {
                id: "b".into(),
                time: e(10 * 3600 + 2),
                kind: C,
            },
            PointMeta {
                id: "c".into(),
                time: e(0),
                kind: C,
            },
        ];
        let plan = points_to_keep(&pts, &policy(D), UNIX_EPOCH);
        assert_eq!(kept(&plan), ["a", "c"]);
        let DropReason::Thinned { bucket, .. } = reason(&plan, "b") else {
            panic!()
        };
        assert_eq!(bucket.start, e(11 * 3600));
        assert!(bucket
            .to_string()
            .contains("1969-12-31T13:00:00Z to 1969-12-31T14:00:00Z"));
    }

    #[test]
    fn the_table_nests_and_matches_asr() {
        let widths: Vec<Duration> = ASR_THINNING.iter().filter_map(|t| t.bucket).collect();
        assert_eq!(widths, [HOUR, 2 * HOUR, 4 * HOUR]);
        for w in widths.windows(2) {
            assert_eq!(w[1].as_secs() % w[0].as_secs(), 0);
        }
        let age = |s: i64| Duration::from_secs(s as u64);
        assert_eq!(bucket_width_for_age(age(0)), None);
        assert_eq!(bucket_width_for_age(age(2 * H)), None);
        assert_eq!(bucket_width_for_age(age(2 * H + 1)), Some(HOUR));
        assert_eq!(bucket_width_for_age(age(D)), Some(HOUR));
        assert_eq!(bucket_width_for_age(age(D + 1)), Some(2 * HOUR));
        assert_eq!(bucket_width_for_age(age(7 * D)), Some(2 * HOUR));
        assert_eq!(bucket_width_for_age(age(7 * D + 1)), Some(4 * HOUR));
        assert_eq!(bucket_width_for_age(Duration::MAX), Some(4 * HOUR));
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_utc(BASE as i128 * NS_PER_SEC), "2024-01-01T00:00:00Z");
        assert_eq!(
            fmt_utc((BASE as i128 + 59 * D as i128 + 3661) * NS_PER_SEC),
            "2024-02-29T01:01:01Z"
        );
        assert_eq!(fmt_utc(-NS_PER_SEC), "1969-12-31T23:59:59Z");
    }
}
