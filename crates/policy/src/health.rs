//! Replication health of an item, as a pure function of what is known about it at `now`.

use std::time::{Duration, SystemTime};

use crate::ReplicationPolicy;

/// An item's replication health (ASR's Healthy / Warning / Critical).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Replicating within its objectives.
    Healthy,
    /// Something needs attention; recovery is still possible.
    Warning,
    /// Recovery would lose too much, or is not possible yet.
    Critical,
}

impl Health {
    /// The stable name (`healthy`, `warning`, `critical`).
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// What is known about an item's replication at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthInputs {
    /// Now.
    pub now: SystemTime,
    /// Initial replication has finished (the first restorable point exists).
    pub synchronized: bool,
    /// The newest crash-consistent recovery point's time.
    pub newest_crash: Option<SystemTime>,
    /// The newest app-consistent recovery point's time.
    pub newest_app: Option<SystemTime>,
    /// The current RPO: how far behind the primary the secondary's data is (`None`: unknown,
    /// e.g. the primary agent does not answer).
    pub rpo: Option<Duration>,
    /// App-consistent points that failed in a row (the guest could not be frozen).
    pub app_misses: u32,
}

/// Thresholds of [`health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthThresholds {
    /// RPO above this: Warning (default 5 min: Lifeboat aims at a sub-second RPO).
    pub rpo_warning: Duration,
    /// RPO above this: Critical.
    pub rpo_critical: Duration,
    /// No crash-consistent point for this long: Critical (ASR: 60 min).
    pub no_crash_point: Duration,
    /// App-consistent points late by this many periods: Warning (ASR warns on missed ones).
    pub app_periods_late: u32,
    /// This many app-consistent points failed in a row: Warning.
    pub app_misses: u32,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            rpo_warning: Duration::from_secs(5 * 60),
            rpo_critical: Duration::from_secs(30 * 60),
            no_crash_point: Duration::from_secs(60 * 60),
            app_periods_late: 2,
            app_misses: APP_MISSES_WARNING,
        }
    }
}

fn mins(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else {
        format!("{} min", s / 60)
    }
}

/// Failed app-consistent points in a row that make an item's health Warning.
pub const APP_MISSES_WARNING: u32 = 3;

/// The health of an item and every reason for it (empty when Healthy), worst first:
/// * Critical: initial replication not finished; no crash-consistent point for
///   `no_crash_point` (ASR's 60 min); RPO above `rpo_critical`.
/// * Warning: RPO above `rpo_warning` or unknown; the newest crash-consistent point older than
///   twice the policy's interval; app-consistent points on but none for `app_periods_late`
///   periods.
pub fn health(
    i: &HealthInputs,
    policy: &ReplicationPolicy,
    t: &HealthThresholds,
) -> (Health, Vec<String>) {
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    let age = |p: SystemTime| i.now.duration_since(p).unwrap_or(Duration::ZERO);
    if !i.synchronized {
        critical.push("initial replication has not finished: no recovery point yet".to_string());
    } else {
        match i.newest_crash.map(age) {
            None => critical.push("no crash-consistent recovery point".to_string()),
            Some(a) if a > t.no_crash_point => critical.push(format!(
                "no crash-consistent recovery point for {} (limit {})",
                mins(a),
                mins(t.no_crash_point)
            )),
            Some(a) if a > policy.crash_consistent_interval * 2 => warning.push(format!(
                "the newest crash-consistent point is {} old (interval {})",
                mins(a),
                mins(policy.crash_consistent_interval)
            )),
            Some(_) => {}
        }
        if let Some(freq) = policy.app_consistent_frequency {
            let late = freq * t.app_periods_late;
            match i.newest_app.map(age) {
                Some(a) if a <= late => {}
                Some(a) => warning.push(format!(
                    "the newest app-consistent point is {} old (every {})",
                    mins(a),
                    mins(freq)
                )),
                None => warning.push(format!(
                    "no app-consistent point yet (every {})",
                    mins(freq)
                )),
            }
        }
    }
    if i.app_misses >= t.app_misses {
        warning.push(format!(
            "the last {} app-consistent points failed (the guest's filesystems could not be \
             frozen; they are crash-consistent): see `lifeboat events`",
            i.app_misses
        ));
    }
    match i.rpo {
        Some(r) if r > t.rpo_critical => critical.push(format!(
            "RPO is {} (critical above {})",
            mins(r),
            mins(t.rpo_critical)
        )),
        Some(r) if r > t.rpo_warning => warning.push(format!(
            "RPO is {} (warning above {})",
            mins(r),
            mins(t.rpo_warning)
        )),
        Some(_) => {}
        None => warning.push("RPO unknown: the primary region's agent does not report".into()),
    }
    let h = if !critical.is_empty() {
        Health::Critical
    } else if !warning.is_empty() {
        Health::Warning
    } else {
        Health::Healthy
    };
    critical.extend(warning);
    (h, critical)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn ok_inputs() -> HealthInputs {
        HealthInputs {
            now: at(100_000),
            synchronized: true,
            newest_crash: Some(at(100_000 - 60)),
            newest_app: None,
            rpo: Some(Duration::from_millis(600)),
            app_misses: 0,
        }
    }

    #[test]
    fn repeated_freeze_failures_warn() {
        let p = ReplicationPolicy::default();
        let t = HealthThresholds::default();
        let two = HealthInputs {
            app_misses: APP_MISSES_WARNING - 1,
            ..ok_inputs()
        };
        assert_eq!(health(&two, &p, &t).0, Health::Healthy);
        let three = HealthInputs {
            app_misses: APP_MISSES_WARNING,
            ..ok_inputs()
        };
        let (h, why) = health(&three, &p, &t);
        assert_eq!(h, Health::Warning);
        assert!(why[0].contains("could not be frozen"), "{why:?}");
    }

    #[test]
    fn healthy_warning_critical_with_reasons() {
        let p = ReplicationPolicy::default(); // 5 min interval, app-consistent off
        let t = HealthThresholds::default();
        assert_eq!(health(&ok_inputs(), &p, &t), (Health::Healthy, vec![]));

        let late = HealthInputs {
            newest_crash: Some(at(100_000 - 11 * 60)),
            ..ok_inputs()
        };
        let (h, r) = health(&late, &p, &t);
        assert_eq!(h, Health::Warning);
        assert_eq!(
            r,
            ["the newest crash-consistent point is 11 min old (interval 5 min)"]
        );

        // ASR: Critical when no crash-consistent point in 60 min.
        let none = HealthInputs {
            newest_crash: Some(at(100_000 - 61 * 60)),
            ..ok_inputs()
        };
        assert_eq!(health(&none, &p, &t).0, Health::Critical);
        assert_eq!(
            health(
                &HealthInputs {
                    synchronized: false,
                    ..ok_inputs()
                },
                &p,
                &t
            ),
            (
                Health::Critical,
                vec!["initial replication has not finished: no recovery point yet".into()]
            )
        );
        // RPO.
        let slow = HealthInputs {
            rpo: Some(Duration::from_secs(6 * 60)),
            ..ok_inputs()
        };
        assert_eq!(health(&slow, &p, &t).0, Health::Warning);
        let stuck = HealthInputs {
            rpo: Some(Duration::from_secs(31 * 60)),
            ..ok_inputs()
        };
        let (h, r) = health(&stuck, &p, &t);
        assert_eq!(h, Health::Critical);
        assert_eq!(r, ["RPO is 31 min (critical above 30 min)"]);
        let unknown = HealthInputs {
            rpo: None,
            ..ok_inputs()
        };
        assert_eq!(health(&unknown, &p, &t).0, Health::Warning);
        // Critical reasons come before warnings.
        let both = HealthInputs {
            rpo: Some(Duration::from_secs(31 * 60)),
            newest_crash: Some(at(100_000 - 11 * 60)),
            ..ok_inputs()
        };
        let (h, r) = health(&both, &p, &t);
        assert_eq!(h, Health::Critical);
        assert!(
            r[0].starts_with("RPO is 31 min") && r[1].contains("11 min old"),
            "{r:?}"
        );
    }

    #[test]
    fn app_consistent_points_count_when_on() {
        let p = ReplicationPolicy {
            app_consistent_frequency: Some(Duration::from_secs(3600)),
            ..ReplicationPolicy::default()
        };
        let t = HealthThresholds::default();
        let (h, r) = health(&ok_inputs(), &p, &t);
        assert_eq!(h, Health::Warning);
        assert_eq!(r, ["no app-consistent point yet (every 60 min)"]);
        let fresh = HealthInputs {
            newest_app: Some(at(100_000 - 3000)),
            ..ok_inputs()
        };
        assert_eq!(health(&fresh, &p, &t).0, Health::Healthy);
        let stale = HealthInputs {
            newest_app: Some(at(100_000 - 3 * 3600)),
            ..ok_inputs()
        };
        let (h, r) = health(&stale, &p, &t);
        assert_eq!(h, Health::Warning);
        assert_eq!(
            r,
            ["the newest app-consistent point is 180 min old (every 60 min)"]
        );
    }
}
