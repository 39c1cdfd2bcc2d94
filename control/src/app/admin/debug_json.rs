//! Structured JSON for config dumps, from the readable form
//! `translate::render` prints (prost's `{:#?}` with packed `Any`s decoded
//! and default fields left out). envoy-types has no serde support, so this
//! maps the Debug grammar instead: `Name { field: value }` becomes an
//! object, `Some(x)` becomes `x`, a oneof `Variant(x)` becomes
//! `{"Variant": x}`, lists and maps stay lists and objects, unit enum
//! values become strings. Field names are the protobuf ones (snake_case).

use serde_json::{Map, Number, Value};

/// The JSON form of rendered text; `None` if it does not parse (the caller
/// then shows the text as it is).
pub fn to_json(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Value> {
        match self.peek()? {
            b'"' => self.string().map(Value::String),
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                while !self.eat(b']') {
                    items.push(self.value()?);
                    self.eat(b',');
                }
                Some(Value::Array(items))
            }
            b'{' => {
                // A map: keys are values too (strings in what we emit).
                self.i += 1;
                let mut out = Map::new();
                while !self.eat(b'}') {
                    let key = match self.value()? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    if !self.eat(b':') {
                        return None;
                    }
                    out.insert(key, self.value()?);
                    self.eat(b',');
                }
                Some(Value::Object(out))
            }
            c if c == b'-' || c.is_ascii_digit() => self.number(),
            c if c.is_ascii_alphabetic() || c == b'_' => self.named(),
            _ => None,
        }
    }

    /// A field or type name; raw identifiers (`r#match`) lose their `r#`.
    fn ident(&mut self) -> Option<String> {
        self.ws();
        if self.s[self.i..].starts_with(b"r#") {
            self.i += 2;
        }
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// `Name { .. }`, `Name(..)`, or a bare `Name`.
    fn named(&mut self) -> Option<Value> {
        let name = self.ident()?;
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut out = Map::new();
                while !self.eat(b'}') {
                    let field = self.ident()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    out.insert(field, self.value()?);
                    self.eat(b',');
                }
                Some(Value::Object(out))
            }
            Some(b'(') => {
                self.i += 1;
                let mut items = Vec::new();
                while !self.eat(b')') {
                    items.push(self.value()?);
                    self.eat(b',');
                }
                let inner = if items.len() == 1 {
                    items.pop()?
                } else {
                    Value::Array(items)
                };
                Some(if name == "Some" {
                    inner
                } else {
                    Value::Object(Map::from_iter([(name, inner)]))
                })
            }
            _ => Some(match name.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "None" => Value::Null,
                _ => Value::String(name),
            }),
        }
    }

    fn number(&mut self) -> Option<Value> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        if let Ok(n) = text.parse::<i64>() {
            return Some(Value::Number(n.into()));
        }
        if let Ok(n) = text.parse::<u64>() {
            return Some(Value::Number(n.into()));
        }
        text.parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
    }

    /// A Rust Debug string: `"..."` with `\"`, `\\`, `\n`, `\t`, `\r`,
    /// `\0`, `\'` and `\u{..}` escapes.
    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'u' => {
                            let rest = &self.s[self.i..];
                            let close = rest.iter().position(|b| *b == b'}')?;
                            let hex = std::str::from_utf8(rest.get(1..close)?).ok()?;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            out.extend(ch.to_string().as_bytes());
                            self.i += close + 1;
                        }
                        other => out.push(other),
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_grammar_maps_to_json() {
        let text = r#"Cluster {
    name: "outbound|9080||r.default.svc.cluster.local",
    connect_timeout: Some(Duration {
        seconds: 10,
    }),
    lb_policy: RoundRobin,
    cluster_discovery_type: Some(Type(Eds)),
    weights: [
        1,
        -2,
        0.5,
    ],
    typed_extension_protocol_options: {
        "envoy.x": Any {
            type_url: "type.googleapis.com/x",
            value: X {
                quoted: "say \"hi\"\n\u{1f600}",
                on: true,
            },
        },
    },
    unit: AggregatedConfigSource,
    r#match: Some(Prefix("/")),
}"#;
        assert_eq!(
            to_json(text),
            Some(json!({
                "name": "outbound|9080||r.default.svc.cluster.local",
                "connect_timeout": {"seconds": 10},
                "lb_policy": "RoundRobin",
                "cluster_discovery_type": {"Type": "Eds"},
                "weights": [1, -2, 0.5],
                "typed_extension_protocol_options": {
                    "envoy.x": {
                        "type_url": "type.googleapis.com/x",
                        "value": {"quoted": "say \"hi\"\n\u{1f600}", "on": true},
                    }
                },
                "unit": "AggregatedConfigSource",
                "match": {"Prefix": "/"},
            }))
        );
    }

    #[test]
    fn what_does_not_parse_is_refused() {
        assert_eq!(to_json("Cluster { name: \"x\" "), None);
        assert_eq!(to_json("Cluster { name: \"x\" } trailing"), None);
        assert_eq!(to_json("Cluster { : 1 }"), None);
    }
}
