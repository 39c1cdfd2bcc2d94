//! `max_request_headers_kb`, counted as Envoy counts it: the request
//! target plus every header name and value, in bytes (Envoy's HTTP/1 codec
//! adds the URL to the header map's byte size). Over the limit the request
//! gets 431 and never reaches a route.
//!
//! hyper's HTTP/1 read buffer stays the outer bound (it cannot go under
//! 8 KiB): it is sized so that any head within the limit fits, framing
//! included, and the exact count runs on the parsed head. HTTP/2 is bounded
//! by h2 itself, which advertises the limit as SETTINGS_MAX_HEADER_LIST_SIZE
//! and answers a larger header block with 431 and a reset of that stream
//! only (RFC 9113 §10.5.1); h2 counts each field as name + value + 32 as
//! the setting defines, so it refuses at or before the count here.

use http::{Request, Version};

/// hyper's smallest allowed HTTP/1 read buffer.
const HYPER_MIN_BUF: usize = 8 * 1024;
/// hyper's (and Envoy's default) cap on the number of request headers.
const MAX_HEADERS: usize = 100;
/// Bytes of a head that Envoy does not count: the method, the version and
/// the request line's spaces and CRLF, `": "` and CRLF per header, the
/// final CRLF. Generous for the method (the longest registered ones are
/// under 20 bytes).
const FRAMING: usize = 64 + MAX_HEADERS * 4 + 2;

/// hyper's HTTP/1 `max_buf_size` for `limit`: every head Envoy would
/// accept fits, so the exact check below decides.
pub fn h1_read_buffer(limit: usize) -> usize {
    limit.saturating_add(FRAMING).max(HYPER_MIN_BUF)
}

/// The request head's size as Envoy counts it.
pub fn counted_bytes<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .fold(target, usize::saturating_add)
}

/// Whether an HTTP/1 request's head is over `limit` (HTTP/2 heads were
/// checked by h2 before the request existed).
pub fn exceeded<B>(req: &Request<B>, limit: usize) -> bool {
    req.version() <= Version::HTTP_11 && counted_bytes(req) > limit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid request")
    }

    #[test]
    fn counts_the_target_and_every_name_and_value() {
        let r = request("/abc?x=1", &[("host", "svc"), ("x-a", "12345")]);
        assert_eq!(counted_bytes(&r), 8 + 4 + 3 + 3 + 5);
        let r = request("http://svc:80/p", &[]);
        assert_eq!(counted_bytes(&r), "http://svc:80/p".len());
    }

    #[test]
    fn the_limit_is_inclusive_and_http2_is_left_to_h2() {
        let r = request("/", &[("x", &"a".repeat(98))]);
        assert_eq!(counted_bytes(&r), 100);
        assert!(!exceeded(&r, 100));
        assert!(exceeded(&r, 99));
        let mut h2 = r;
        *h2.version_mut() = Version::HTTP_2;
        assert!(!exceeded(&h2, 99));
    }

    #[test]
    fn the_read_buffer_never_cuts_an_acceptable_head() {
        assert_eq!(h1_read_buffer(1024), HYPER_MIN_BUF);
        let limit = 60 * 1024;
        // 100 headers and a long target, exactly at the limit.
        let framing = "GET ".len() + " HTTP/1.1\r\n".len() + MAX_HEADERS * 4 + 2;
        assert!(limit + framing <= h1_read_buffer(limit));
    }
}
