//! Human durations for the CLI and config files: `90s`, `5m`, `24h`, `15d`, `1h30m`, and `off`
//! where a setting can be turned off.
//!
//! Grammar: one or more `<whole number><unit>` terms, units in decreasing order and each at most
//! once (`1d12h`, `1h30m`), units `d`, `h`, `m`, `s`, `ms`; spaces are allowed around and between
//! terms; case does not matter. A bare number (`300`) is refused: the unit is never guessed.
//!
//! Formatting writes the largest single unit that divides the value exactly (`90s`, `90m`,
//! `36h`, `15d`), so `parse(format(d)) == d` for every whole number of milliseconds (a sub-
//! millisecond remainder is dropped; policy durations are whole seconds in practice).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationProblem {
    /// Nothing but spaces.
    Empty,
    /// A number with no unit after it (`300`).
    MissingUnit,
    /// A unit with no number before it (`h`).
    MissingNumber,
    /// A unit other than `d`, `h`, `m`, `s`, `ms`.
    UnknownUnit(String),
    /// A unit repeated or out of order (`5m1h`, `5m5m`).
    UnitOrder(String),
    /// The value does not fit in a duration.
    TooLarge,
    /// `off` given where the setting cannot be turned off.
    OffNotAllowed,
}

impl fmt::Display for DurationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationProblem::Empty => f.write_str("it is empty"),
            DurationProblem::MissingUnit => f.write_str("a number needs a unit"),
            DurationProblem::MissingNumber => f.write_str("a unit needs a number before it"),
            DurationProblem::UnknownUnit(u) => write!(f, "unknown unit {u:?}"),
            DurationProblem::UnitOrder(u) => {
                write!(f, "unit {u:?} is repeated or out of order (largest first)")
            }
            DurationProblem::TooLarge => f.write_str("it is too large"),
            DurationProblem::OffNotAllowed => f.write_str("this setting cannot be off"),
        }
    }
}

/// A duration string that could not be parsed; names the input and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem}; write a whole number and a unit (d, h, m, s, ms), e.g. 90s, 5m, 24h, 15d, 1h30m{}", off_hint(*.off_allowed))]
pub struct DurationParseError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub problem: DurationProblem,
    off_allowed: bool,
}

fn off_hint(off_allowed: bool) -> &'static str {
    if off_allowed {
        ", or off"
    } else {
        ""
    }
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration that cannot be off (`off` is refused with [`DurationProblem::OffNotAllowed`]).
pub fn parse_duration(input: &str) -> Result<Duration, DurationParseError> {
    parse_inner(input, false)?.ok_or_else(|| DurationParseError {
        input: input.to_string(),
        problem: DurationProblem::OffNotAllowed,
        off_allowed: false,
    })
}

/// Parses a duration that may be `off` (returned as `None`).
pub fn parse_optional_duration(input: &str) -> Result<Option<Duration>, DurationParseError> {
    parse_inner(input, true)
}

fn parse_inner(input: &str, off_allowed: bool) -> Result<Option<Duration>, DurationParseError> {
    let err = |problem| DurationParseError {
        input: input.to_string(),
        problem,
        off_allowed,
    };
    let text = input.trim().to_ascii_lowercase();
    if text.is_empty() {
        return Err(err(DurationProblem::Empty));
    }
    if text == "off" {
        return Ok(None);
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    // Index into UNITS of the last unit used; the next one must come strictly after it.
    let mut last_unit: Option<usize> = None;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i == bytes.len() {
            break;
        }
        let num_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[num_start..i];
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let unit_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b' ' {
            i += 1;
        }
        let unit = &text[unit_start..i];
        if digits.is_empty() {
            return Err(err(
                if unit.is_empty() || UNITS.iter().any(|(u, _)| *u == unit) {
                    DurationProblem::MissingNumber
                } else {
                    DurationProblem::UnknownUnit(unit.to_string())
                },
            ));
        }
        if unit.is_empty() {
            return Err(err(DurationProblem::MissingUnit));
        }
        let Some(pos) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(err(DurationProblem::UnknownUnit(unit.to_string())));
        };
        if last_unit.is_some_and(|last| pos <= last) {
            return Err(err(DurationProblem::UnitOrder(unit.to_string())));
        }
        last_unit = Some(pos);
        let value: u64 = digits.parse().map_err(|_| err(DurationProblem::TooLarge))?;
        total_ms = value
            .checked_mul(UNITS[pos].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| err(DurationProblem::TooLarge))?;
    }
    Ok(Some(Duration::from_millis(total_ms)))
}

/// Formats a duration in the largest single unit that divides it exactly (`90s`, `5m`, `24h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, unit_ms) in UNITS {
        if ms.is_multiple_of(u128::from(unit_ms)) {
            return format!("{}{unit}", ms / u128::from(unit_ms));
        }
    }
    unreachable!("every value is a whole number of milliseconds")
}

/// Formats an optional duration: `None` is `off`.
pub fn format_optional_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_string(), format_duration)
}

/// `#[serde(with = "...")]` for a `Duration` written as a human string (`"5m"`).
pub mod serde_human {
    use super::*;

    /// Writes the duration as a human string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads a human string; a bare number is refused with a hint to add a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(HumanVisitor { off_allowed: false })?
            .ok_or_else(|| de::Error::custom("unreachable: off refused by the parser"))
    }
}

/// `#[serde(with = "...")]` for an `Option<Duration>` written as a human string or `"off"`.
pub mod serde_human_opt {
    use super::*;

    /// Writes the duration as a human string, `None` as `"off"`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_optional_duration(*d))
    }

    /// Reads a human string or `"off"` (a JSON `null` is also off).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(HumanVisitor { off_allowed: true })
    }
}

struct HumanVisitor {
    off_allowed: bool,
}

impl<'de> Visitor<'de> for HumanVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a duration string such as \"90s\", \"5m\", \"24h\", \"15d\"{}",
            off_hint(self.off_allowed)
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.off_allowed {
            parse_optional_duration(v).map_err(E::custom)
        } else {
            parse_duration(v).map(Some).map_err(E::custom)
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Err(E::custom(format_args!(
            "invalid duration {v}: a bare number has no unit; write it as a string such as \"{v}s\" or \"{v}m\""
        )))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(E::custom(format_args!(
            "invalid duration {v}: write it as a string such as \"5m\""
        )))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        if self.off_allowed {
            Ok(None)
        } else {
            Err(E::custom("a duration is required here; it cannot be off"))
        }
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1;
    const M: u64 = 60;
    const H: u64 = 3600;
    const D: u64 = 86_400;

    #[test]
    fn parses_the_examples() {
        for (text, secs) in [
            ("90s", 90 * S),
            ("5m", 5 * M),
            ("24h", 24 * H),
            ("15d", 15 * D),
            ("0s", 0),
            ("1h30m", H + 30 * M),
            ("1d 12h", D + 12 * H),
            (" 5 m ", 5 * M),
            ("24H", 24 * H),
            ("1m30s", 90),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn off_only_where_allowed() {
        assert_eq!(parse_optional_duration("off"), Ok(None));
        assert_eq!(parse_optional_duration("OFF"), Ok(None));
        assert_eq!(
            parse_optional_duration("2h"),
            Ok(Some(Duration::from_secs(2 * H)))
        );
        let e = parse_duration("off").unwrap_err();
        assert_eq!(e.problem, DurationProblem::OffNotAllowed);
        assert!(e.to_string().contains("\"off\""), "{e}");
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        for (text, problem) in [
            ("", DurationProblem::Empty),
            ("   ", DurationProblem::Empty),
            ("300", DurationProblem::MissingUnit),
            ("h", DurationProblem::MissingNumber),
            ("5x", DurationProblem::UnknownUnit("x".into())),
            ("5 weeks", DurationProblem::UnknownUnit("weeks".into())),
            ("-5m", DurationProblem::UnknownUnit("-".into())),
            ("1.5h", DurationProblem::UnknownUnit(".".into())),
            ("5m1h", DurationProblem::UnitOrder("h".into())),
            ("5m5m", DurationProblem::UnitOrder("m".into())),
            ("99999999999999999999s", DurationProblem::TooLarge),
            ("999999999999999999d", DurationProblem::TooLarge),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert_eq!(e.problem, problem, "{text:?}");
            assert_eq!(e.input, text);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg}");
            assert!(msg.contains("e.g. 90s"), "{msg}");
        }
        let e = parse_optional_duration("nope").unwrap_err();
        assert!(e.to_string().ends_with("or off"), "{e}");
    }

    #[test]
    fn formats_in_the_largest_exact_unit_and_round_trips() {
        for (secs, text) in [
            (0, "0s"),
            (90, "90s"),
            (5 * M, "5m"),
            (90 * M, "90m"),
            (24 * H, "1d"),
            (36 * H, "36h"),
            (15 * D, "15d"),
            (13 * H, "13h"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_optional_duration(None), "off");
        for ms in [
            1u64,
            999,
            1000,
            59_999,
            3_600_000,
            86_400_001,
            7 * 86_400_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
    }

    #[test]
    fn serde_strings_and_helpful_errors() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct T {
            #[serde(with = "serde_human")]
            a: Duration,
            #[serde(with = "serde_human_opt")]
            b: Option<Duration>,
        }
        let t = T {
            a: Duration::from_secs(300),
            b: None,
        };
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"a":"5m","b":"off"}"#);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        let t2: T = serde_json::from_str(r#"{"a":"90s","b":null}"#).unwrap();
        assert_eq!(t2.b, None);
        let e = serde_json::from_str::<T>(r#"{"a":300,"b":"off"}"#).unwrap_err();
        assert!(e.to_string().contains("\"300s\""), "{e}");
        let e = serde_json::from_str::<T>(r#"{"a":"5q","b":"off"}"#).unwrap_err();
        assert!(e.to_string().contains("\"5q\""), "{e}");
        let e = serde_json::from_str::<T>(r#"{"a":"off","b":"off"}"#).unwrap_err();
        assert!(e.to_string().contains("cannot be off"), "{e}");
    }
}
