//! Synthetic point histories for the planners' tests (`plan`, `roll`): points at whole minutes
//! from an hour-aligned start, and random histories from a deterministic xorshift.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lifeboat_policy::ReplicationPolicy;
use lifeboat_store::PointOrigin;
use lifeboat_types::{CheckpointKind, Seq};

use crate::plan::PointView;

pub(crate) const MIN: u64 = 60;
pub(crate) const HOUR: u64 = 3600;

/// A crash-consistent marker point at `mins` minutes (an hour-aligned start), position `seq`,
/// journal-backed on the point at position `base` if `jb`.
pub(crate) fn at(seq: u64, mins: u64, jb: bool, base: Option<u64>) -> PointView {
    PointView {
        id: format!("{seq:020}-crash"),
        seq: Seq(seq),
        time: now_at(mins),
        kind: CheckpointKind::CrashConsistent,
        journal_backed: jb,
        origin: PointOrigin::Marker,
        base: base.map(|b| format!("{b:020}-crash")),
    }
}

/// The time `mins` minutes after the start.
pub(crate) fn now_at(mins: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1000 * HOUR + mins * MIN)
}

/// A deterministic xorshift.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A random history: a stored point at 0, then up to `5 + max_more` points `step` minutes apart,
/// one in `stored_one_in` stored (the base of those after it), one in `latest_one_in` a
/// "latest" point; a retention of 1 to 30 h and a CDP window of 0 or 1 h; and a time to judge
/// it at, within 10 h after its last point. Returns (points, policy, now, step).
pub(crate) fn history(
    rng: &mut Rng,
    max_more: u64,
    stored_one_in: u64,
    latest_one_in: u64,
) -> (Vec<PointView>, ReplicationPolicy, SystemTime, u64) {
    let mut pts = vec![at(0, 0, false, None)];
    let mut base = 0u64;
    let n = 5 + rng.next() % max_more;
    let step = 5 + rng.next() % 60;
    for i in 1..=n {
        let m = i * step;
        let stored = rng.next().is_multiple_of(stored_one_in);
        let mut v = at(m, m, !stored, (!stored).then_some(base));
        if rng.next().is_multiple_of(latest_one_in) {
            v.origin = PointOrigin::Latest;
        }
        if stored {
            base = m;
        }
        pts.push(v);
    }
    let policy = ReplicationPolicy {
        retention: Duration::from_secs((1 + rng.next() % 30) * HOUR),
        cdp_window: Duration::from_secs((rng.next() % 2) * HOUR),
        ..ReplicationPolicy::default()
    };
    let now = now_at(n * step + rng.next() % 600);
    (pts, policy, now, step)
}
