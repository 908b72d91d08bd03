//! The replication policy: how often points are cut, how long they are kept, how far back
//! any-point-in-time restore reaches.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::format_duration;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Shortest retention: one hour (enough for the default CDP window).
pub const MIN_RETENTION: Duration = HOUR;
/// Longest retention: 30 days (ASR allows 15; Lifeboat goes further).
pub const MAX_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Default retention: 24 hours, as ASR's default policy.
pub const DEFAULT_RETENTION: Duration = DAY;
/// Lowest app-consistent frequency, when on: every hour.
pub const MIN_APP_CONSISTENT_FREQUENCY: Duration = HOUR;
/// Highest app-consistent frequency, when on: every 12 hours.
pub const MAX_APP_CONSISTENT_FREQUENCY: Duration = Duration::from_secs(12 * 3600);
/// Shortest crash-consistent interval: one second.
pub const MIN_CRASH_CONSISTENT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest crash-consistent interval: one hour.
pub const MAX_CRASH_CONSISTENT_INTERVAL: Duration = HOUR;
/// Default crash-consistent interval: 5 minutes, as ASR (where it is fixed).
pub const DEFAULT_CRASH_CONSISTENT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Default continuous-data-protection window: one hour.
pub const DEFAULT_CDP_WINDOW: Duration = HOUR;
/// Name of the default policy (ASR's default policy has the same name).
pub const DEFAULT_POLICY_NAME: &str = "24-hour-retention-policy";
/// Longest policy name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// A replication policy. Durations are written as human strings in serde (`"24h"`, `"5m"`,
/// `"off"`); missing fields take their defaults; unknown fields are refused.
///
/// Deserializing does not validate: call [`ReplicationPolicy::validate`] after loading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationPolicy {
    /// A name for people: 1 to 64 characters, no control characters, no surrounding spaces.
    pub name: String,
    /// How long recovery points are kept: 1 h to 30 days (default 24 h).
    #[serde(with = "crate::duration::serde_human")]
    pub retention: Duration,
    /// How often an app-consistent point is cut: `None` (off, the default) or 1 h to 12 h.
    #[serde(with = "crate::duration::serde_human_opt")]
    pub app_consistent_frequency: Option<Duration>,
    /// How often a crash-consistent point is cut: 1 s to 1 h (default 5 min).
    #[serde(with = "crate::duration::serde_human")]
    pub crash_consistent_interval: Duration,
    /// How far back any point in time can be restored, to the write: 0 s (off) up to the
    /// retention (default 1 h).
    #[serde(with = "crate::duration::serde_human")]
    pub cdp_window: Duration,
}

impl Default for ReplicationPolicy {
    fn default() -> Self {
        ReplicationPolicy {
            name: DEFAULT_POLICY_NAME.to_string(),
            retention: DEFAULT_RETENTION,
            app_consistent_frequency: None,
            crash_consistent_interval: DEFAULT_CRASH_CONSISTENT_INTERVAL,
            cdp_window: DEFAULT_CDP_WINDOW,
        }
    }
}

/// A field of [`ReplicationPolicy`], for error messages and for mapping errors to config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyField {
    /// `name`
    Name,
    /// `retention`
    Retention,
    /// `app_consistent_frequency`
    AppConsistentFrequency,
    /// `crash_consistent_interval`
    CrashConsistentInterval,
    /// `cdp_window`
    CdpWindow,
}

impl PolicyField {
    /// The key in config files and API bodies (the serde field name).
    pub fn key(self) -> &'static str {
        match self {
            PolicyField::Name => "name",
            PolicyField::Retention => "retention",
            PolicyField::AppConsistentFrequency => "app_consistent_frequency",
            PolicyField::CrashConsistentInterval => "crash_consistent_interval",
            PolicyField::CdpWindow => "cdp_window",
        }
    }
}

impl fmt::Display for PolicyField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyField::Name => "policy name",
            PolicyField::Retention => "retention",
            PolicyField::AppConsistentFrequency => "app-consistent frequency",
            PolicyField::CrashConsistentInterval => "crash-consistent interval",
            PolicyField::CdpWindow => "CDP window",
        })
    }
}

/// A policy that [`ReplicationPolicy::validate`] refused: names the field, the value and what is
/// allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A duration outside its allowed range.
    #[error("{field} {value} is out of range: use {allowed}")]
    OutOfRange {
        /// The field.
        field: PolicyField,
        /// The value as a human string.
        value: String,
        /// The allowed values, as a human string.
        allowed: String,
    },
    /// A name that is empty, too long, or has control characters or surrounding spaces.
    #[error("policy name {name:?} is invalid: {problem}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl PolicyError {
    /// The field the error is about.
    pub fn field(&self) -> PolicyField {
        match self {
            PolicyError::OutOfRange { field, .. } => *field,
            PolicyError::InvalidName { .. } => PolicyField::Name,
        }
    }
}

fn range(
    field: PolicyField,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), PolicyError> {
    if value < min || value > max {
        return Err(PolicyError::OutOfRange {
            field,
            value: format_duration(value),
            allowed: format!("{} to {}", format_duration(min), format_duration(max)),
        });
    }
    Ok(())
}

impl ReplicationPolicy {
    /// Checks every field; the first field out of range is reported (in declaration order).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let name_problem = if self.name.is_empty() {
            Some("it is empty")
        } else if self.name.chars().count() > MAX_NAME_CHARS {
            Some("it is longer than 64 characters")
        } else if self.name.chars().any(char::is_control) {
            Some("it has control characters")
        } else if self.name.trim() != self.name {
            Some("it starts or ends with spaces")
        } else {
            None
        };
        if let Some(problem) = name_problem {
            return Err(PolicyError::InvalidName {
                name: self.name.clone(),
                problem,
            });
        }
        range(
            PolicyField::Retention,
            self.retention,
            MIN_RETENTION,
            MAX_RETENTION,
        )?;
        if let Some(freq) = self.app_consistent_frequency {
            if !(MIN_APP_CONSISTENT_FREQUENCY..=MAX_APP_CONSISTENT_FREQUENCY).contains(&freq) {
                return Err(PolicyError::OutOfRange {
                    field: PolicyField::AppConsistentFrequency,
                    value: format_duration(freq),
                    allowed: format!(
                        "off or {} to {}",
                        format_duration(MIN_APP_CONSISTENT_FREQUENCY),
                        format_duration(MAX_APP_CONSISTENT_FREQUENCY)
                    ),
                });
            }
        }
        range(
            PolicyField::CrashConsistentInterval,
            self.crash_consistent_interval,
            MIN_CRASH_CONSISTENT_INTERVAL,
            MAX_CRASH_CONSISTENT_INTERVAL,
        )?;
        if self.cdp_window > self.retention {
            return Err(PolicyError::OutOfRange {
                field: PolicyField::CdpWindow,
                value: format_duration(self.cdp_window),
                allowed: format!("0s to the retention ({})", format_duration(self.retention)),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn default_is_asr_default_and_valid() {
        let p = ReplicationPolicy::default();
        assert_eq!(p.retention, 24 * HOUR);
        assert_eq!(p.app_consistent_frequency, None);
        assert_eq!(p.crash_consistent_interval, 5 * MINUTE);
        assert_eq!(p.cdp_window, HOUR);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn app_consistent_frequency_message_matches_the_spec() {
        let p = ReplicationPolicy {
            app_consistent_frequency: Some(13 * HOUR),
            ..Default::default()
        };
        let e = p.validate().unwrap_err();
        assert_eq!(e.field(), PolicyField::AppConsistentFrequency);
        assert_eq!(
            e.to_string(),
            "app-consistent frequency 13h is out of range: use off or 1h to 12h"
        );
    }

    #[test]
    fn range_edges() {
        let ok = |p: ReplicationPolicy| assert_eq!(p.validate(), Ok(()), "{p:?}");
        let bad = |p: ReplicationPolicy, field: PolicyField, msg: &str| {
            let e = p.validate().unwrap_err();
            assert_eq!(e.field(), field);
            assert_eq!(e.to_string(), msg);
        };
        let base = ReplicationPolicy::default;
        ok(ReplicationPolicy {
            retention: 30 * DAY,
            ..base()
        });
        ok(ReplicationPolicy {
            retention: HOUR,
            ..base()
        });
        bad(
            ReplicationPolicy {
                retention: 31 * DAY,
                ..base()
            },
            PolicyField::Retention,
            "retention 31d is out of range: use 1h to 30d",
        );
        bad(
            ReplicationPolicy {
                retention: 30 * DAY + secs(1),
                ..base()
            },
            PolicyField::Retention,
            "retention 2592001s is out of range: use 1h to 30d",
        );
        bad(
            ReplicationPolicy {
                retention: 59 * MINUTE,
                cdp_window: secs(0),
                ..base()
            },
            PolicyField::Retention,
            "retention 59m is out of range: use 1h to 30d",
        );
        ok(ReplicationPolicy {
            app_consistent_frequency: Some(HOUR),
            ..base()
        });
        ok(ReplicationPolicy {
            app_consistent_frequency: Some(12 * HOUR),
            ..base()
        });
        bad(
            ReplicationPolicy {
                app_consistent_frequency: Some(59 * MINUTE),
                ..base()
            },
            PolicyField::AppConsistentFrequency,
            "app-consistent frequency 59m is out of range: use off or 1h to 12h",
        );
        ok(ReplicationPolicy {
            crash_consistent_interval: secs(1),
            ..base()
        });
        ok(ReplicationPolicy {
            crash_consistent_interval: HOUR,
            ..base()
        });
        bad(
            ReplicationPolicy {
                crash_consistent_interval: Duration::from_millis(999),
                ..base()
            },
            PolicyField::CrashConsistentInterval,
            "crash-consistent interval 999ms is out of range: use 1s to 1h",
        );
        bad(
            ReplicationPolicy {
                crash_consistent_interval: 2 * HOUR,
                ..base()
            },
            PolicyField::CrashConsistentInterval,
            "crash-consistent interval 2h is out of range: use 1s to 1h",
        );
        ok(ReplicationPolicy {
            cdp_window: secs(0),
            ..base()
        });
        ok(ReplicationPolicy {
            cdp_window: 24 * HOUR,
            ..base()
        });
        bad(
            ReplicationPolicy {
                cdp_window: 25 * HOUR,
                ..base()
            },
            PolicyField::CdpWindow,
            "CDP window 25h is out of range: use 0s to the retention (1d)",
        );
    }

    #[test]
    fn names() {
        let named = |name: &str| ReplicationPolicy {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(named("prod-eu").validate(), Ok(()));
        assert_eq!(named(&"é".repeat(64)).validate(), Ok(()));
        for (name, problem) in [
            ("", "it is empty"),
            (" x", "it starts or ends with spaces"),
            ("a\nb", "it has control characters"),
        ] {
            let e = named(name).validate().unwrap_err();
            assert_eq!(
                e,
                PolicyError::InvalidName {
                    name: name.into(),
                    problem
                }
            );
            assert!(e.to_string().contains(&format!("{name:?}")));
        }
        assert_eq!(
            named(&"x".repeat(65)).validate().unwrap_err().field(),
            PolicyField::Name
        );
    }

    #[test]
    fn serde_uses_human_durations_and_defaults() {
        let p = ReplicationPolicy {
            name: "gold".into(),
            retention: 15 * DAY,
            app_consistent_frequency: Some(4 * HOUR),
            crash_consistent_interval: secs(30),
            cdp_window: 2 * HOUR,
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"name":"gold","retention":"15d","app_consistent_frequency":"4h","crash_consistent_interval":"30s","cdp_window":"2h"}"#
        );
        assert_eq!(serde_json::from_str::<ReplicationPolicy>(&json).unwrap(), p);
        let d: ReplicationPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(d, ReplicationPolicy::default());
        let d: ReplicationPolicy =
            serde_json::from_str(r#"{"app_consistent_frequency":"off","retention":"3d"}"#).unwrap();
        assert_eq!(d.app_consistent_frequency, None);
        assert_eq!(d.retention, 3 * DAY);
        let e =
            serde_json::from_str::<ReplicationPolicy>(r#"{"retention":"3 weeks"}"#).unwrap_err();
        assert!(e.to_string().contains("\"3 weeks\""), "{e}");
        let e = serde_json::from_str::<ReplicationPolicy>(r#"{"retension":"3d"}"#).unwrap_err();
        assert!(e.to_string().contains("retension"), "{e}");
        // Loading does not validate; validate() does.
        let p: ReplicationPolicy = serde_json::from_str(r#"{"retention":"60d"}"#).unwrap();
        assert_eq!(p.validate().unwrap_err().field(), PolicyField::Retention);
    }
}
