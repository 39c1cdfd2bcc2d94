//! Validated scalar values shared by several kinds: durations, percentages
//! and regular expressions. Each keeps the text the user wrote so a resource
//! serializes back exactly as it was read, and rejects bad input while
//! deserializing so the YAML reader can point at the offending scalar.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Istio accepts Go-style durations ("5s", "100ms", "1h30m", "1.5s").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    raw: String,
    value: StdDuration,
}

impl Duration {
    /// Parses a Go-style duration; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = parse_go_duration(text)?;
        Ok(Self {
            raw: text.to_string(),
            value,
        })
    }

    pub fn as_std(&self) -> StdDuration {
        self.value
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn parse_go_duration(text: &str) -> Result<StdDuration, String> {
    let bad = |why: &str| {
        format!("invalid duration {text:?}: {why} (expected e.g. \"5s\", \"100ms\", \"1h30m\")")
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("negative durations are not allowed"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(StdDuration::ZERO);
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit"))?;
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("malformed number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        rest = &rest[unit_len..];
        total_nanos += number * nanos_per_unit;
    }
    // Protobuf durations stop at 315,576,000,000 seconds (10,000 years).
    if !total_nanos.is_finite() || total_nanos > 315_576_000_000.0 * 1e9 {
        return Err(bad("out of range"));
    }
    Ok(StdDuration::from_nanos(total_nanos.round() as u64))
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"5s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The value of an Istio `Percent` message: 0.0 to 100.0 inclusive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PercentValue(f64);

impl PercentValue {
    pub fn new(v: f64) -> Result<Self, String> {
        if v.is_finite() && (0.0..=100.0).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!(
                "invalid percentage {v}: must be between 0 and 100 inclusive"
            ))
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

impl Serialize for PercentValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for PercentValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        PercentValue::new(v).map_err(de::Error::custom)
    }
}

/// `percentage: {value: 12.5}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: PercentValue,
}

/// The deprecated integer `percent` fields (0..=100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntPercent(u32);

impl IntPercent {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Serialize for IntPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for IntPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        if (0..=100).contains(&v) {
            Ok(IntPercent(v as u32))
        } else {
            Err(de::Error::custom(format!(
                "invalid percentage {v}: must be between 0 and 100 inclusive"
            )))
        }
    }
}

/// A regular expression checked at load time (Istio uses RE2; the `regex`
/// crate accepts the same syntax minus nothing RE2 supports).
#[derive(Debug, Clone)]
pub struct Regex {
    raw: String,
    compiled: regex::Regex,
}

impl Regex {
    pub fn new(raw: &str) -> Result<Self, String> {
        let compiled = regex::Regex::new(raw)
            .map_err(|e| format!("invalid regex {raw:?}: {}", one_line(&e.to_string())))?;
        Ok(Self {
            raw: raw.to_string(),
            compiled,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn regex(&self) -> &regex::Regex {
        &self.compiled
    }
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Serialize for Regex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Regex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Regex::new(&raw).map_err(de::Error::custom)
    }
}

/// Istio's `StringMatch`: exactly one of exact, prefix or regex (checked by
/// validation so the finding can point at the match).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<Regex>,
}

impl StringMatch {
    /// How many of the alternatives are set; valid matches set exactly one.
    pub fn set_count(&self) -> usize {
        usize::from(self.exact.is_some())
            + usize::from(self.prefix.is_some())
            + usize::from(self.regex.is_some())
    }

    pub fn matches(&self, value: &str) -> bool {
        if let Some(e) = &self.exact {
            return e == value;
        }
        if let Some(p) = &self.prefix {
            return value.starts_with(p.as_str());
        }
        if let Some(r) = &self.regex {
            return r
                .regex()
                .find(value)
                .is_some_and(|m| m.start() == 0 && m.end() == value.len());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_go_style() {
        assert_eq!(
            Duration::parse("5s").unwrap().as_std(),
            StdDuration::from_secs(5)
        );
        assert_eq!(
            Duration::parse("100ms").unwrap().as_std(),
            StdDuration::from_millis(100)
        );
        assert_eq!(
            Duration::parse("1h30m").unwrap().as_std(),
            StdDuration::from_secs(5400)
        );
        assert_eq!(
            Duration::parse("1.5s").unwrap().as_std(),
            StdDuration::from_millis(1500)
        );
        assert_eq!(Duration::parse("0").unwrap().as_std(), StdDuration::ZERO);
        for bad in ["", "5", "5x", "-1s", "s", "1..2s", "abc"] {
            assert!(Duration::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn duration_keeps_original_text() {
        let d: Duration = serde_yaml_ng::from_str("\"7200s\"").unwrap();
        assert_eq!(serde_yaml_ng::to_string(&d).unwrap().trim(), "7200s");
    }

    #[test]
    fn percentages_are_bounded() {
        assert!(PercentValue::new(0.1).is_ok());
        assert!(PercentValue::new(100.0).is_ok());
        assert!(PercentValue::new(100.5).is_err());
        assert!(PercentValue::new(-1.0).is_err());
        assert!(serde_yaml_ng::from_str::<IntPercent>("101").is_err());
    }

    #[test]
    fn string_match_is_one_of() {
        let m: StringMatch = serde_yaml_ng::from_str("exact: jason").unwrap();
        assert!(m.matches("jason"));
        let m: StringMatch = serde_yaml_ng::from_str("regex: \"v[0-9]+\"").unwrap();
        assert!(m.matches("v12"));
        assert!(!m.matches("xv12"));
        assert!(serde_yaml_ng::from_str::<StringMatch>("regex: \"(unclosed\"").is_err());
        let two: StringMatch = serde_yaml_ng::from_str("exact: a\nprefix: b").unwrap();
        assert_eq!(two.set_count(), 2);
        assert!(serde_yaml_ng::from_str::<StringMatch>("exakt: a").is_err());
    }
}
