//! Replication policy, recovery-point retention and thinning, and the checkpoint schedule.
//!
//! Pure: no I/O, no async, no clock reads. `now` is always a parameter, so every decision is a
//! function of its inputs and is tested with synthetic timestamps.
//!
//! # The policy ([`ReplicationPolicy`])
//!
//! | field                       | allowed             | default | ASR                    |
//! |-----------------------------|---------------------|---------|------------------------|
//! | `retention`                 | 1 h to 30 d         | 24 h    | 24 h default, max 15 d |
//! | `app_consistent_frequency`  | off, or 1 h to 12 h | off     | same                   |
//! | `crash_consistent_interval` | 1 s to 1 h          | 5 min   | fixed 5 min            |
//! | `cdp_window`                | 0 s to retention    | 1 h     | (none)                 |
//!
//! [`ReplicationPolicy::validate`] names the field, the value and the allowed range, e.g.
//! `app-consistent frequency 13h is out of range: use off or 1h to 12h`. In config files and API
//! bodies (serde) durations are human strings, `"90s"`, `"5m"`, `"24h"`, `"15d"`, `"1h30m"`, and
//! `"off"` for the app-consistent frequency; [`parse_duration`] / [`parse_optional_duration`]
//! parse them for the CLI too, with errors that quote the input.
//!
//! # Retention and thinning ([`points_to_keep`])
//!
//! Thinning follows ASR. By the age of a point (`now - time`):
//!
//! | age                   | keep                                       |
//! |-----------------------|--------------------------------------------|
//! | 0 to 2 h (inclusive)  | every point                                |
//! | over 2 h, up to 1 d   | one point per 1 h bucket                   |
//! | over 1 d, up to 7 d   | one point per 2 h bucket                   |
//! | over 7 d              | one point per 4 h bucket                   |
//! | over the retention    | none (dropped: [`DropReason::OlderThanRetention`]) |
//!
//! Retention wins over the table: a row applies only as far as the retention reaches (with the
//! default 24 h, only the first two rows; with a 1 h retention, even the keep-all row stops at
//! 1 h). A point exactly on a boundary belongs to the finer row; a point exactly as old as the
//! retention is kept. The table is fixed ([`ASR_THINNING`]); it is not part of the policy.
//!
//! **Buckets are absolute**: a bucket of width `w` is `[k·w, (k+1)·w)` in time since the Unix
//! epoch (UTC hour, 2-hour and 4-hour boundaries), not relative to `now`. Widths nest
//! (1 h | 2 h | 4 h), so every coarse bucket is a union of finer ones.
//!
//! **The keep rule.** A bucket keeps its *best* point: the newest app-consistent point if the
//! bucket has any, else the newest point; a tie at the same instant goes to the greatest id. The
//! best point is chosen over *every* point whose time falls in the bucket, whatever its age: also
//! those still inside the 2 h keep-all window, and those already past retention. A point in a
//! thinned row is kept if and only if it is the best point of its bucket (of that row's width);
//! otherwise it is dropped as [`DropReason::Thinned`], which names the bucket and the winner.
//!
//! **Exceptions.**
//! - The newest point of all (not counting points in the future) is never dropped, even past
//!   retention: an item always has a recovery point.
//! - The newest app-consistent point is never dropped by thinning while it is within retention.
//!   (The keep rule already guarantees it: it is the best point of any bucket that holds it.)
//! - Points in the future (clock skew) are kept and listed in [`KeepPlan::future`] so that the
//!   caller can warn.
//!
//! **Why it is stable as `now` advances.** "Best" is the maximum of a total order
//! (app-consistent, time, id), so the best point of a union of buckets is the best of their best
//! points. Points are cut at (about) `now`, and each thinned row's bucket width is smaller than
//! the row's lowest age (1 h < 2 h, 2 h < 1 d, 4 h < 7 d), so the bucket of a point in a thinned
//! row ended at least an hour before `now`: it receives no new points, and the point is judged
//! on a closed set. Hence:
//! - A point kept by thinning at `t` is the best of its bucket `B`. At `t + ε` it is either in
//!   the same row — `B` unchanged, except for points that are dropped, which were not best, so it
//!   is still best and still kept — or in a coarser row, whose bucket `B' ⊇ B` may have a better
//!   point: the only way a kept point is later thinned is by ageing into a coarser bucket where
//!   another point wins.
//! - A point dropped at `t` was not best of its bucket `B`; at any later time its bucket contains
//!   `B` and so still holds a better point: a drop is never regretted.
//! - Therefore running the planner often (applying its drops each time) keeps exactly what one run
//!   at the end would keep over all points ever cut: the result does not depend on when the
//!   planner ran. The property test `tests/thinning_props.rs` checks this, with the invariants
//!   below, over a synthetic stream of points.
//!
//! Judging a straddling bucket on its whole content is what makes this work: if the winner were
//! chosen among only the points already in the thinned row, an hour bucket half inside the 2 h
//! window would keep its older half's best point, then drop it when the newer half aged in. The
//! cost is nil: the newer point is kept in its place. At the retention edge the same rule can let
//! an expired winner take a bucket whose other points are still within retention; those points
//! had been thinned already (the winner won since the bucket aged past 2 h), so nothing is lost
//! that a regular run would have kept.
//!
//! **Bound.** Outside the keep-all window at most one point per bucket is kept (plus the newest
//! point, if replication stopped): with 5-minute points and 30 days of retention that is about
//! 25 + 22 + 72 + 138 ≈ 257 points.
//!
//! # Health ([`health`])
//!
//! An item is Healthy, Warning or Critical, with every reason, from what is known at `now`
//! ([`HealthInputs`]: synchronized or not, newest crash- and app-consistent points, current
//! RPO) and [`HealthThresholds`]: Critical when initial replication has not finished, when no
//! crash-consistent point is younger than 60 min (as ASR), or when the RPO is over 30 min;
//! Warning when the RPO is over 5 min or unknown, the newest crash-consistent point is older
//! than twice the policy's interval, or app-consistent points (when on) are two periods late.
//!
//! # Re-protect's resync plan ([`plan_resync`])
//!
//! Which ranges go back from the failed-over VM to the original disks: the union of what the
//! recovered VM wrote and what the old source wrote after the point when the journals cover it
//! without a gap, else block digests compared, else (original disks gone) a full copy. See
//! [`resync`].
//!
//! # The checkpoint schedule ([`due_checkpoints`])
//!
//! A crash-consistent point is due when the crash-consistent interval has passed since the newest
//! point of either kind (an app-consistent point is crash-consistent too); an app-consistent
//! point when app-consistent points are on and their frequency has passed since the newest one.
//! With no point yet, both are due at once. [`Due::kind`] says which one point to cut.
//! If the clock goes back by an interval or more, a point is cut at once rather than waiting for
//! the clock to catch up. [`next_due_in`] gives the time to sleep.

mod duration;
mod health;
mod policy;
pub mod resync;
mod schedule;
mod thinning;

pub use duration::{
    format_duration, format_optional_duration, parse_duration, parse_optional_duration,
    serde_human, serde_human_opt, DurationParseError, DurationProblem,
};
pub use health::{health, Health, HealthInputs, HealthThresholds, APP_MISSES_WARNING};
pub use policy::{
    PolicyError, PolicyField, ReplicationPolicy, DEFAULT_CDP_WINDOW,
    DEFAULT_CRASH_CONSISTENT_INTERVAL, DEFAULT_POLICY_NAME, DEFAULT_RETENTION,
    MAX_APP_CONSISTENT_FREQUENCY, MAX_CRASH_CONSISTENT_INTERVAL, MAX_NAME_CHARS, MAX_RETENTION,
    MIN_APP_CONSISTENT_FREQUENCY, MIN_CRASH_CONSISTENT_INTERVAL, MIN_RETENTION,
};
pub use resync::{diff_digests, plan_resync, Covered, ResyncInputs, ResyncPlan};
pub use schedule::{due_checkpoints, next_due_in, Due};
pub use thinning::{
    bucket_width_for_age, format_utc, points_to_keep, Bucket, DropReason, KeepPlan, PointMeta,
    ThinningTier, ASR_THINNING, KEEP_ALL_WINDOW,
};

/// The checkpoint kind, re-exported from `lifeboat-types` for convenience.
pub use lifeboat_types::CheckpointKind;
