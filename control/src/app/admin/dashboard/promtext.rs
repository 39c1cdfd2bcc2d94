//! Reading samples out of the Prometheus text exposition format (version
//! 0.0.4), as the proxies' admin `/metrics` serves it.
//!
//! Only sample lines are read (`name{label="value",...} value [timestamp]`);
//! `# HELP` / `# TYPE` comments are skipped. The grammar is small and fixed,
//! and the workspace's `prometheus` crate only encodes, so this reads it
//! directly instead of pulling a parser crate for three rules. A malformed
//! line is reported with its line number and the rest still count.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The label's value, or `""` when absent (Prometheus treats both alike).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

/// The samples of every metric whose name `wanted` accepts, and an error
/// per line that did not parse.
pub fn parse(text: &str, wanted: impl Fn(&str) -> bool) -> (Vec<Sample>, Vec<ParseError>) {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        if !wanted(&line[..name_end]) {
            continue;
        }
        match parse_line(line, name_end) {
            Ok(s) => samples.push(s),
            Err(reason) => errors.push(ParseError {
                line: i + 1,
                reason,
            }),
        }
    }
    (samples, errors)
}

fn parse_line(line: &str, name_end: usize) -> Result<Sample, String> {
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value =
        parse_value(value).ok_or_else(|| format!("{name}: value {value:?} is not a number"))?;
    // An optional timestamp may follow; anything after it is malformed.
    if fields.nth(1).is_some() {
        return Err(format!("{name}: unexpected text after the value"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

/// `name="value",...}`; returns what follows the closing brace.
fn parse_labels<'a>(mut s: &'a str, out: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        s = s[eq + 1..].trim_start();
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {key}: value is not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {key}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label {key}: unterminated escape")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.insert(key.to_string(), value);
        s = s[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(format!("label {key}: expected `,` or `}}` after the value"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_labels_escapes_and_timestamps() {
        let text = "# HELP istio_requests_total HTTP requests\n\
            # TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"source\",destination_service=\"a\\\"b\\\\c\\nd\",response_code=\"200\",} 42\n\
            istio_requests_total{reporter=\"destination\"} 7 1700000000000\n\
            other_total 3\n\
            istio_requests_total 1.5e3\n";
        let (samples, errors) = parse(text, |n| n == "istio_requests_total");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[0].label("destination_service"), "a\"b\\c\nd");
        assert_eq!(samples[0].label("response_code"), "200");
        assert_eq!(samples[0].label("absent"), "");
        assert_eq!(samples[1].label("reporter"), "destination");
        assert_eq!(samples[1].value, 7.0);
        assert!(samples[2].labels.is_empty());
        assert_eq!(samples[2].value, 1500.0);
    }

    #[test]
    fn malformed_lines_are_reported_by_number_and_the_rest_count() {
        let text = "m{a=\"1\"} 1\nm{a=1} 2\nm{a=\"x} 3\nm{a=\"1\"} many\nm 1 2 3\nm{a=\"2\"} 5\n";
        let (samples, errors) = parse(text, |_| true);
        assert_eq!(samples.len(), 2);
        assert_eq!(
            errors.iter().map(|e| e.line).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert!(
            errors[0].to_string().contains("not quoted"),
            "{}",
            errors[0]
        );
    }
}
