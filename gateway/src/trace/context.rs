//! Trace context propagation: W3C Trace Context (`traceparent`,
//! `tracestate`) and Zipkin B3 (multi-header `x-b3-*` and single `b3`).
//!
//! Parsing never fails loudly: a malformed header is ignored, as the W3C
//! specification asks, and the request starts a new trace.

use http::{HeaderMap, HeaderValue};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const B3: &str = "b3";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_FLAGS: &str = "x-b3-flags";

/// How the caller propagated its context; the same style is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    W3c,
    B3Multi,
    B3Single,
}

/// The context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: [u8; 16],
    /// The caller's span; ours becomes its child.
    pub span_id: [u8; 8],
    /// The caller's sampling decision; `None` leaves it to this proxy.
    pub sampled: Option<bool>,
    pub tracestate: Option<String>,
    pub style: Style,
    /// B3 with a 64-bit trace id: sent on in the same width.
    pub b3_64bit: bool,
}

/// What a request carried, after looking at every supported header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extracted {
    pub context: Option<Incoming>,
    /// A sampling decision without a context (`b3: 0`, `x-b3-sampled` alone).
    pub sampled_only: Option<bool>,
    /// Some header was present but malformed (and ignored).
    pub malformed: bool,
    /// The B3 form the caller also sent (and whether its trace id was
    /// 64-bit), so the next hop gets B3 too even when W3C won.
    pub b3: Option<(Style, bool)>,
}

/// This proxy's span: what is sent downstream of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
    pub tracestate: Option<String>,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Lower-case hex of exactly `N` bytes (W3C forbids upper case).
fn unhex_lower<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(b[2 * i])? << 4) | digit(b[2 * i + 1])?;
    }
    Some(out)
}

/// B3 ids are case-insensitive in practice; trace ids are 64 or 128 bits.
fn b3_trace_id(s: &str) -> Option<([u8; 16], bool)> {
    let s = s.to_ascii_lowercase();
    match s.len() {
        32 => unhex_lower::<16>(&s).map(|t| (t, false)),
        16 => unhex_lower::<8>(&s).map(|t| {
            let mut full = [0u8; 16];
            full[8..].copy_from_slice(&t);
            (full, true)
        }),
        _ => None,
    }
    .filter(|(t, _)| *t != [0u8; 16])
}

fn b3_span_id(s: &str) -> Option<[u8; 8]> {
    unhex_lower::<8>(&s.to_ascii_lowercase()).filter(|s| *s != [0u8; 8])
}

fn b3_sampled(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

fn text<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// `00-<trace id>-<parent id>-<flags>`; later versions may append fields.
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.split('-');
    let version = unhex_lower::<1>(parts.next()?)?[0];
    if version == 0xff {
        return None;
    }
    let trace = unhex_lower::<16>(parts.next()?)?;
    let span = unhex_lower::<8>(parts.next()?)?;
    let flags = unhex_lower::<1>(parts.next()?)?[0];
    if version == 0 && parts.next().is_some() {
        return None;
    }
    if trace == [0u8; 16] || span == [0u8; 8] {
        return None;
    }
    Some((trace, span, flags & 1 == 1))
}

/// Reads the caller's context. W3C wins over B3 when both are present and valid.
pub fn extract(h: &HeaderMap) -> Extracted {
    let mut out = Extracted {
        // Present but not visible ASCII: as malformed as a bad value.
        malformed: [TRACEPARENT, B3, B3_TRACE_ID, B3_SPAN_ID]
            .iter()
            .any(|n| h.get(*n).is_some_and(|v| v.to_str().is_err())),
        ..Extracted::default()
    };
    if let Some(single) = text(h, B3) {
        let narrow = single.split('-').next().is_some_and(|t| t.len() == 16);
        out.b3 = Some((Style::B3Single, narrow));
    } else if let Some(t) = text(h, B3_TRACE_ID) {
        out.b3 = Some((Style::B3Multi, t.len() == 16));
    } else if h.contains_key(B3_SAMPLED) || h.contains_key(B3_FLAGS) {
        out.b3 = Some((Style::B3Multi, false));
    }
    if let Some(tp) = text(h, TRACEPARENT) {
        match parse_traceparent(tp) {
            Some((trace_id, span_id, sampled)) => {
                out.context = Some(Incoming {
                    trace_id,
                    span_id,
                    sampled: Some(sampled),
                    tracestate: text(h, TRACESTATE)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    style: Style::W3c,
                    b3_64bit: false,
                });
                return out;
            }
            None => out.malformed = true,
        }
    }
    if let Some(single) = text(h, B3) {
        let fields: Vec<&str> = single.split('-').collect();
        match fields.as_slice() {
            [decision] => match b3_sampled(decision) {
                Some(s) => out.sampled_only = Some(s),
                None => out.malformed = true,
            },
            [t, s, rest @ ..] if rest.len() <= 2 => {
                let sampled = match rest.first() {
                    Some(d) => b3_sampled(d).map(Some),
                    None => Some(None),
                };
                match (b3_trace_id(t), b3_span_id(s), sampled) {
                    (Some((trace_id, b3_64bit)), Some(span_id), Some(sampled)) => {
                        out.context = Some(Incoming {
                            trace_id,
                            span_id,
                            sampled,
                            tracestate: None,
                            style: Style::B3Single,
                            b3_64bit,
                        });
                        return out;
                    }
                    _ => out.malformed = true,
                }
            }
            _ => out.malformed = true,
        }
    }
    let debug = text(h, B3_FLAGS) == Some("1");
    let sampled = if debug {
        Some(true)
    } else {
        text(h, B3_SAMPLED).and_then(b3_sampled)
    };
    match (text(h, B3_TRACE_ID), text(h, B3_SPAN_ID)) {
        (Some(t), Some(s)) => match (b3_trace_id(t), b3_span_id(s)) {
            (Some((trace_id, b3_64bit)), Some(span_id)) => {
                out.context = Some(Incoming {
                    trace_id,
                    span_id,
                    sampled,
                    tracestate: None,
                    style: Style::B3Multi,
                    b3_64bit,
                });
            }
            _ => out.malformed = true,
        },
        (None, None) => {
            if out.sampled_only.is_none() {
                out.sampled_only = sampled;
            }
        }
        _ => out.malformed = true,
    }
    out
}

/// Every header this module reads or writes; removed before injecting so a
/// stale or malformed value is never forwarded next to ours.
const ALL: [&str; 7] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_PARENT_SPAN_ID,
    B3_SAMPLED,
];

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The B3 form to send on: the caller's, or multi-header when this proxy
/// starts the trace (many applications forward only B3); none after a
/// W3C-only caller.
pub fn b3_out(e: &Extracted) -> Option<(Style, bool)> {
    match (&e.context, e.b3) {
        (_, Some(b3)) => Some(b3),
        (None, None) => Some((Style::B3Multi, false)),
        (Some(_), None) => None,
    }
}

/// Writes `span` as the parent of the next hop: always W3C, plus B3 in
/// the form [`b3_out`] chose.
pub fn inject(h: &mut HeaderMap, span: &SpanContext, b3: Option<(Style, bool)>) {
    let flags_b3 = h.get(B3_FLAGS).cloned();
    for n in ALL {
        h.remove(n);
    }
    let trace = hex(&span.trace_id);
    let span_id = hex(&span.span_id);
    set(
        h,
        TRACEPARENT,
        &format!(
            "00-{trace}-{span_id}-{}",
            if span.sampled { "01" } else { "00" }
        ),
    );
    if let Some(ts) = &span.tracestate {
        set(h, TRACESTATE, ts);
    }
    let Some((style, b3_64bit)) = b3 else {
        return;
    };
    let b3_trace = if b3_64bit {
        hex(&span.trace_id[8..])
    } else {
        trace
    };
    let sampled = if span.sampled { "1" } else { "0" };
    match style {
        Style::B3Single => {
            let mut v = format!("{b3_trace}-{span_id}-{sampled}");
            if let Some(p) = &span.parent_span_id {
                v.push('-');
                v.push_str(&hex(p));
            }
            set(h, B3, &v);
        }
        Style::W3c | Style::B3Multi => {
            set(h, B3_TRACE_ID, &b3_trace);
            set(h, B3_SPAN_ID, &span_id);
            if let Some(p) = &span.parent_span_id {
                set(h, B3_PARENT_SPAN_ID, &hex(p));
            }
            set(h, B3_SAMPLED, sampled);
            if let Some(f) = flags_b3 {
                h.insert(B3_FLAGS, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid header"));
        }
        h
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_parsed() {
        let e = extract(&headers(&[
            (TRACEPARENT, TP),
            (TRACESTATE, "congo=t61rcWkgMzE"),
        ]));
        let c = e.context.expect("context");
        assert_eq!(hex(&c.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&c.span_id), "00f067aa0ba902b7");
        assert_eq!(c.sampled, Some(true));
        assert_eq!(c.style, Style::W3c);
        assert_eq!(c.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        assert!(!e.malformed);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let e = extract(&headers(&[(TRACEPARENT, bad)]));
            assert!(e.context.is_none(), "{bad:?} accepted");
            assert!(e.malformed, "{bad:?} not flagged");
        }
        // A future version may append fields.
        let e = extract(&headers(&[(
            TRACEPARENT,
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-ever",
        )]));
        assert_eq!(e.context.expect("v01").sampled, Some(false));
    }

    #[test]
    fn b3_multi_and_single() {
        let e = extract(&headers(&[
            (B3_TRACE_ID, "463ac35c9f6413ad"),
            (B3_SPAN_ID, "a2fb4a1d1a96d312"),
            (B3_SAMPLED, "1"),
        ]));
        let c = e.context.expect("multi");
        assert!(c.b3_64bit);
        assert_eq!(hex(&c.trace_id), "0000000000000000463ac35c9f6413ad");
        assert_eq!(c.style, Style::B3Multi);
        assert_eq!(c.sampled, Some(true));

        let e = extract(&headers(&[(
            B3,
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0-05e3ac9a4f6e3b90",
        )]));
        let c = e.context.expect("single");
        assert_eq!(c.style, Style::B3Single);
        assert_eq!(c.sampled, Some(false));
        assert!(!c.b3_64bit);

        let e = extract(&headers(&[(B3, "0")]));
        assert!(e.context.is_none());
        assert_eq!(e.sampled_only, Some(false));

        let e = extract(&headers(&[(B3_FLAGS, "1"), (B3_SAMPLED, "0")]));
        assert_eq!(e.sampled_only, Some(true), "debug forces sampling");

        for bad in [
            "x",
            "abc-def",
            "463ac35c9f6413ad-zzfb4a1d1a96d312",
            "1-2-3-4-5",
        ] {
            let e = extract(&headers(&[(B3, bad)]));
            assert!(e.context.is_none() && e.malformed, "{bad:?}");
        }
        let e = extract(&headers(&[(B3_TRACE_ID, "463ac35c9f6413ad")]));
        assert!(e.context.is_none() && e.malformed, "span id missing");
    }

    #[test]
    fn b3_is_sent_on_when_the_caller_sent_it_or_nobody_did() {
        assert_eq!(b3_out(&Extracted::default()), Some((Style::B3Multi, false)));
        let w3c_only = extract(&headers(&[(TRACEPARENT, TP)]));
        assert_eq!(b3_out(&w3c_only), None);
        let both = extract(&headers(&[
            (TRACEPARENT, TP),
            (B3, "463ac35c9f6413ad-a2fb4a1d1a96d312-1"),
        ]));
        assert_eq!(b3_out(&both), Some((Style::B3Single, true)));
    }

    #[test]
    fn w3c_wins_and_bad_w3c_falls_back_to_b3() {
        let both = headers(&[
            (TRACEPARENT, TP),
            (B3_TRACE_ID, "463ac35c9f6413ad"),
            (B3_SPAN_ID, "a2fb4a1d1a96d312"),
        ]);
        assert_eq!(extract(&both).context.expect("ctx").style, Style::W3c);
        let bad_w3c = headers(&[
            (TRACEPARENT, "nonsense"),
            (B3_TRACE_ID, "463ac35c9f6413ad"),
            (B3_SPAN_ID, "a2fb4a1d1a96d312"),
        ]);
        let e = extract(&bad_w3c);
        assert_eq!(e.context.expect("b3").style, Style::B3Multi);
        assert!(e.malformed);
    }

    fn span(sampled: bool) -> SpanContext {
        SpanContext {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            parent_span_id: Some([0x33; 8]),
            sampled,
            tracestate: Some("a=b".into()),
        }
    }

    #[test]
    fn inject_writes_the_callers_style() {
        let mut h = headers(&[(TRACEPARENT, "junk"), (B3, "junk")]);
        inject(&mut h, &span(true), None);
        assert_eq!(
            text(&h, TRACEPARENT),
            Some("00-11111111111111111111111111111111-2222222222222222-01")
        );
        assert_eq!(text(&h, TRACESTATE), Some("a=b"));
        assert!(h.get(B3).is_none() && h.get(B3_TRACE_ID).is_none());

        let mut h = HeaderMap::new();
        inject(&mut h, &span(false), Some((Style::B3Single, true)));
        assert_eq!(
            text(&h, B3),
            Some("1111111111111111-2222222222222222-0-3333333333333333")
        );

        let mut h = headers(&[(B3_FLAGS, "1")]);
        inject(&mut h, &span(true), Some((Style::B3Multi, false)));
        assert_eq!(
            text(&h, B3_TRACE_ID),
            Some("11111111111111111111111111111111")
        );
        assert_eq!(text(&h, B3_SPAN_ID), Some("2222222222222222"));
        assert_eq!(text(&h, B3_PARENT_SPAN_ID), Some("3333333333333333"));
        assert_eq!(text(&h, B3_SAMPLED), Some("1"));
        assert_eq!(text(&h, B3_FLAGS), Some("1"));
        // What was injected reads back as the same context.
        let back = extract(&h).context.expect("round trip");
        assert_eq!(back.span_id, [0x22; 8]);
    }
}
