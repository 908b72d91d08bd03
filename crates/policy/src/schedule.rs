//! When the next crash- and app-consistent points are due.

use std::time::{Duration, SystemTime};

use lifeboat_types::CheckpointKind;

use crate::policy::ReplicationPolicy;
use crate::thinning::to_ns;

/// Which checkpoints are due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Due {
    /// A crash-consistent point is due.
    pub crash: bool,
    /// An app-consistent point is due (never when the policy has app-consistent points off).
    pub app: bool,
}

impl Due {
    /// The one checkpoint to cut now: app-consistent if due (it is crash-consistent too, so it
    /// serves both), else crash-consistent if due. If the guest freeze for an app-consistent point
    /// fails, the caller should cut a crash-consistent point instead.
    pub fn kind(self) -> Option<CheckpointKind> {
        if self.app {
            Some(CheckpointKind::AppConsistent)
        } else if self.crash {
            Some(CheckpointKind::CrashConsistent)
        } else {
            None
        }
    }
}

/// Whether `interval` has passed between `last` and `now`, either way: a `last` ahead of `now`
/// by an interval or more means the clock went back, and a point is cut rather than waiting for
/// the clock to catch up; a `last` ahead by less waits until `last + interval`.
fn elapsed(last: Option<SystemTime>, now: SystemTime, interval: Duration) -> bool {
    let Some(last) = last else { return true };
    let (last, now) = (to_ns(last), to_ns(now));
    let interval = interval.as_nanos() as i128;
    now - last >= interval || last - now >= interval
}

/// Which checkpoints are due at `now`, given the times of the newest crash-consistent and
/// app-consistent points (`None`: there is none yet).
///
/// - crash: when the crash-consistent interval has passed since the newest point of either kind
///   (an app-consistent point is crash-consistent too), or there is no point yet;
/// - app: when app-consistent points are on and their frequency has passed since the newest
///   app-consistent point, or there is none yet.
///
/// A zero interval (an unvalidated policy) means always due.
pub fn due_checkpoints(
    last_crash: Option<SystemTime>,
    last_app: Option<SystemTime>,
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> Due {
    let last_any = match (last_crash, last_app) {
        (Some(c), Some(a)) => Some(c.max(a)),
        (c, a) => c.or(a),
    };
    Due {
        crash: elapsed(last_any, now, policy.crash_consistent_interval),
        app: policy
            .app_consistent_frequency
            .is_some_and(|freq| elapsed(last_app, now, freq)),
    }
}

/// How long until the next checkpoint is due (zero if one is due now), for a scheduler's sleep.
/// Consistent with [`due_checkpoints`]: at `now + next_due_in(..)` a checkpoint is due, unless
/// the clock jumps.
pub fn next_due_in(
    last_crash: Option<SystemTime>,
    last_app: Option<SystemTime>,
    policy: &ReplicationPolicy,
    now: SystemTime,
) -> Duration {
    let wait = |last: Option<SystemTime>, interval: Duration| -> Duration {
        if elapsed(last, now, interval) {
            return Duration::ZERO;
        }
        let last = last.map_or(0, to_ns);
        let left = last + interval.as_nanos() as i128 - to_ns(now);
        Duration::from_nanos(u64::try_from(left.max(0)).unwrap_or(u64::MAX))
    };
    let last_any = match (last_crash, last_app) {
        (Some(c), Some(a)) => Some(c.max(a)),
        (c, a) => c.or(a),
    };
    let crash = wait(last_any, policy.crash_consistent_interval);
    match policy.app_consistent_frequency {
        Some(freq) => crash.min(wait(last_app, freq)),
        None => crash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const BASE: u64 = 1_704_067_200;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(BASE + secs)
    }

    fn with_app(freq_h: u64) -> ReplicationPolicy {
        ReplicationPolicy {
            app_consistent_frequency: Some(Duration::from_secs(freq_h * 3600)),
            ..Default::default()
        }
    }

    const YES_CRASH: Due = Due {
        crash: true,
        app: false,
    };
    const NONE: Due = Due {
        crash: false,
        app: false,
    };

    #[test]
    fn first_point_is_due_at_once() {
        let p = ReplicationPolicy::default();
        assert_eq!(due_checkpoints(None, None, &p, at(0)), YES_CRASH);
        let d = due_checkpoints(None, None, &with_app(1), at(0));
        assert_eq!(
            d,
            Due {
                crash: true,
                app: true
            }
        );
        assert_eq!(d.kind(), Some(CheckpointKind::AppConsistent));
        assert_eq!(next_due_in(None, None, &p, at(0)), Duration::ZERO);
    }

    #[test]
    fn crash_interval_edges() {
        let p = ReplicationPolicy::default(); // 5 min
        assert_eq!(due_checkpoints(Some(at(0)), None, &p, at(299)), NONE);
        assert_eq!(due_checkpoints(Some(at(0)), None, &p, at(300)), YES_CRASH);
        assert_eq!(
            next_due_in(Some(at(0)), None, &p, at(100)),
            Duration::from_secs(200)
        );
        assert_eq!(NONE.kind(), None);
        assert_eq!(YES_CRASH.kind(), Some(CheckpointKind::CrashConsistent));
        // Seconds work.
        let fast = ReplicationPolicy {
            crash_consistent_interval: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(due_checkpoints(Some(at(10)), None, &fast, at(10)), NONE);
        assert_eq!(
            due_checkpoints(Some(at(10)), None, &fast, at(11)),
            YES_CRASH
        );
    }

    #[test]
    fn an_app_point_resets_the_crash_interval() {
        let p = with_app(1);
        let d = due_checkpoints(Some(at(0)), Some(at(200)), &p, at(400));
        assert_eq!(d, NONE);
        let d = due_checkpoints(Some(at(0)), Some(at(200)), &p, at(500));
        assert_eq!(d, YES_CRASH);
        assert_eq!(
            next_due_in(Some(at(0)), Some(at(200)), &p, at(400)),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn app_frequency_edges_and_off() {
        let p = with_app(4);
        let h = 3600;
        let d = due_checkpoints(Some(at(4 * h - 1)), Some(at(0)), &p, at(4 * h - 1));
        assert_eq!(d, NONE);
        let d = due_checkpoints(Some(at(4 * h - 1)), Some(at(0)), &p, at(4 * h));
        assert_eq!(
            d,
            Due {
                crash: false,
                app: true
            }
        );
        assert_eq!(
            next_due_in(Some(at(4 * h - 1)), Some(at(0)), &p, at(4 * h - 1)),
            Duration::from_secs(1)
        );
        // Off: never due, whatever the last app point.
        let off = ReplicationPolicy::default();
        for last_app in [None, Some(at(0))] {
            assert!(!due_checkpoints(Some(at(100 * h)), last_app, &off, at(100 * h)).app);
        }
    }

    #[test]
    fn clock_going_back() {
        let p = ReplicationPolicy::default();
        // Last point 1 min in the future: wait until it is 5 min old.
        assert_eq!(due_checkpoints(Some(at(1060)), None, &p, at(1000)), NONE);
        assert_eq!(
            next_due_in(Some(at(1060)), None, &p, at(1000)),
            Duration::from_secs(360)
        );
        // Last point an interval or more in the future: the clock went back; cut one now.
        assert_eq!(
            due_checkpoints(Some(at(1300)), None, &p, at(1000)),
            YES_CRASH
        );
        assert_eq!(
            next_due_in(Some(at(1300)), None, &p, at(1000)),
            Duration::ZERO
        );
    }
}
