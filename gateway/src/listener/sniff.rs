//! Listener filters that decide by the first bytes of a connection:
//! `tls_inspector` (SNI and ALPN of a ClientHello, crate::tls::sni) and
//! `http_inspector` (an HTTP/1.x request line or the HTTP/2 prior-knowledge
//! preface). Their findings feed filter chain matching; every byte read is
//! kept and replayed to the chosen chain.
//!
//! Istio sends unnamed ports through both, with one chain per detected
//! application protocol and a TCP fallback. A client that waits for the
//! server to speak first (MySQL, SMTP) sends nothing: when the HTTP
//! inspector runs, the listener filter timeout then ends the wait and the
//! connection goes on as plain TCP, as Envoy does with
//! `continue_on_listener_filters_timeout`.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::TransportProtocol;
use crate::tls::sni::{self, Inspection, MAX_CLIENT_HELLO};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not worth waiting for.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest method we accept while the line is incomplete.
const MAX_METHOD: usize = 24;

/// What the HTTP inspector concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDetect {
    NeedMore,
    NotHttp,
    /// The application protocol name Envoy uses: `http/1.0`, `http/1.1`, `h2c`.
    Http(&'static str),
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies the first bytes of a plaintext connection. Pure and total.
pub fn detect_http(buf: &[u8]) -> HttpDetect {
    if buf.is_empty() {
        return HttpDetect::NeedMore;
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return HttpDetect::NeedMore;
    }
    if buf.starts_with(H2_PREFACE) {
        return HttpDetect::Http("h2c");
    }
    let method_len = buf.iter().take_while(|b| is_token(**b)).count();
    if method_len == 0 {
        return HttpDetect::NotHttp;
    }
    if method_len == buf.len() {
        return if method_len > MAX_METHOD {
            HttpDetect::NotHttp
        } else {
            HttpDetect::NeedMore
        };
    }
    if buf[method_len] != b' ' || method_len > MAX_METHOD {
        return HttpDetect::NotHttp;
    }
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        if buf.len() > MAX_REQUEST_LINE {
            return HttpDetect::NotHttp;
        }
        // Control bytes inside the request line: not HTTP.
        if buf.iter().any(|b| b.is_ascii_control() && *b != b'\r') {
            return HttpDetect::NotHttp;
        }
        return HttpDetect::NeedMore;
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(_method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return HttpDetect::NotHttp;
    };
    if target.is_empty() || target.iter().any(|b| b.is_ascii_control()) {
        return HttpDetect::NotHttp;
    }
    match version {
        b"HTTP/1.1" => HttpDetect::Http("http/1.1"),
        b"HTTP/1.0" => HttpDetect::Http("http/1.0"),
        _ => HttpDetect::NotHttp,
    }
}

/// What the listener filters learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub transport: TransportProtocol,
    pub server_name: Option<String>,
    /// ALPN of a ClientHello, or the protocol the HTTP inspector found.
    pub application_protocols: Vec<String>,
    /// Every byte read; replay it before the rest of the stream.
    pub buffered: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading the first bytes: {0}")]
    Io(std::io::Error),
    #[error("no ClientHello before listener_filters_timeout ({0:?})")]
    Timeout(Duration),
    #[error("malformed TLS ClientHello: {0}")]
    BadHello(String),
}

/// Runs the enabled inspectors over the first bytes of `io`.
pub async fn inspect<R: AsyncRead + Unpin>(
    io: &mut R,
    tls: bool,
    http: bool,
    timeout: Duration,
) -> Result<Inspected, InspectError> {
    let mut out = Inspected {
        transport: TransportProtocol::RawBuffer,
        server_name: None,
        application_protocols: Vec::new(),
        buffered: Vec::new(),
    };
    if !tls && !http {
        return Ok(out);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    // Whether the TLS question is still open.
    let mut tls_open = tls;
    let mut eof = false;
    loop {
        if tls_open {
            match sni::inspect(&out.buffered) {
                Inspection::Tls { sni, alpn } => {
                    out.transport = TransportProtocol::Tls;
                    out.server_name = sni;
                    out.application_protocols = alpn;
                    return Ok(out);
                }
                Inspection::Invalid(e) => return Err(InspectError::BadHello(e)),
                Inspection::NotTls => tls_open = false,
                Inspection::NeedMore if eof && !out.buffered.is_empty() => {
                    return Err(InspectError::BadHello(
                        "connection closed inside the ClientHello".into(),
                    ))
                }
                Inspection::NeedMore => {}
            }
        }
        if !tls_open {
            if !http {
                return Ok(out);
            }
            match detect_http(&out.buffered) {
                HttpDetect::Http(p) => {
                    out.application_protocols = vec![p.to_string()];
                    return Ok(out);
                }
                HttpDetect::NotHttp => return Ok(out),
                HttpDetect::NeedMore => {}
            }
        }
        if eof {
            return Ok(out);
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) => eof = true,
            Ok(Ok(n)) => out.buffered.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(InspectError::Io(e)),
            // With the HTTP inspector, silence means a server-first
            // protocol: go on as TCP with what was read.
            Err(_) if http && (!tls_open || out.buffered.is_empty()) => return Ok(out),
            Err(_) => return Err(InspectError::Timeout(timeout)),
        }
        if out.buffered.len() > MAX_CLIENT_HELLO {
            if tls_open {
                return Err(InspectError::BadHello(format!(
                    "no complete ClientHello in the first {MAX_CLIENT_HELLO} bytes"
                )));
            }
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn detects_http_versions_and_h2c() {
        assert_eq!(
            detect_http(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            HttpDetect::Http("http/1.1")
        );
        assert_eq!(
            detect_http(b"POST /x?y=1 HTTP/1.0\r\n"),
            HttpDetect::Http("http/1.0")
        );
        assert_eq!(detect_http(H2_PREFACE), HttpDetect::Http("h2c"));
        assert_eq!(detect_http(&H2_PREFACE[..10]), HttpDetect::NeedMore);
        assert_eq!(detect_http(b"GE"), HttpDetect::NeedMore);
        assert_eq!(detect_http(b"GET /long/pa"), HttpDetect::NeedMore);
    }

    #[test]
    fn rejects_non_http() {
        assert_eq!(detect_http(b"\x16\x03\x01\x00"), HttpDetect::NotHttp);
        assert_eq!(detect_http(b"hello world\n"), HttpDetect::NotHttp);
        assert_eq!(detect_http(b"GET / SPDY/3\r\n"), HttpDetect::NotHttp);
        assert_eq!(detect_http(b"PING\x00"), HttpDetect::NotHttp);
        assert_eq!(detect_http(b"GET /\x01"), HttpDetect::NotHttp);
        assert_eq!(detect_http(&[b'A'; 64]), HttpDetect::NotHttp);
    }

    #[tokio::test]
    async fn silence_continues_as_tcp_only_with_the_http_inspector() {
        let (_client, mut server) = tokio::io::duplex(64);
        let got = inspect(&mut server, true, true, Duration::from_millis(20))
            .await
            .expect("continues");
        assert_eq!(got.transport, TransportProtocol::RawBuffer);
        assert!(got.application_protocols.is_empty());
        let err = inspect(&mut server, true, false, Duration::from_millis(20))
            .await
            .expect_err("tls only: times out");
        assert!(matches!(err, InspectError::Timeout(_)));
    }

    #[tokio::test]
    async fn request_split_over_writes_is_detected_and_kept() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for part in [&b"GE"[..], b"T /a HT", b"TP/1.1\r\n\r\n"] {
                client.write_all(part).await.expect("write");
                tokio::task::yield_now().await;
            }
            client
        });
        let got = inspect(&mut server, true, true, Duration::from_secs(5))
            .await
            .expect("detected");
        assert_eq!(got.application_protocols, vec!["http/1.1".to_string()]);
        assert!(got.buffered.starts_with(b"GET /a"));
        drop(writer.await);
    }

    proptest! {
        #[test]
        fn detect_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = detect_http(&bytes);
        }
    }
}
