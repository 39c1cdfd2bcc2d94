//! TLS inspection without termination: read the ClientHello, learn SNI and
//! ALPN, and keep every byte so it can be replayed unchanged upstream (SNI
//! passthrough) or into a local TLS server (termination).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Largest ClientHello we buffer; real ones are well under this.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// More bytes are needed to decide.
    NeedMore,
    /// Not a TLS handshake: treat as `raw_buffer`.
    NotTls,
    /// A complete TLS ClientHello.
    Tls {
        sni: Option<String>,
        alpn: Vec<String>,
    },
    /// Starts like TLS but the ClientHello is malformed.
    Invalid(String),
}

/// Inspects a buffer holding the first bytes of a connection. Pure and
/// total: any input yields an answer, never a panic.
pub fn inspect(buf: &[u8]) -> Inspection {
    let Some(&first) = buf.first() else {
        return Inspection::NeedMore;
    };
    // TLS record type 22 = handshake; anything else cannot be a ClientHello.
    if first != 0x16 {
        return Inspection::NotTls;
    }
    if buf.len() >= 3 && buf[1] != 0x03 {
        return Inspection::NotTls;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Inspection::Invalid(e.to_string()),
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello.server_name().map(|s| s.to_ascii_lowercase());
                let alpn = hello
                    .alpn()
                    .map(|it| {
                        it.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                return Inspection::Tls { sni, alpn };
            }
            Err((e, _alert)) => return Inspection::Invalid(e.to_string()),
        }
    }
    if buf.len() >= MAX_CLIENT_HELLO {
        return Inspection::Invalid(format!(
            "no complete ClientHello in the first {MAX_CLIENT_HELLO} bytes"
        ));
    }
    Inspection::NeedMore
}

/// Reads from `io` until [`inspect`] decides or the timeout passes. Returns
/// the decision and every byte read. On timeout the connection is treated
/// as plaintext (Envoy's `continue_on_listener_filters_timeout` behaviour
/// would differ; server-first protocols need a raw_buffer chain).
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    timeout: Duration,
) -> io::Result<(Inspection, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no ClientHello before listener_filters_timeout",
                ))
            }
        };
        if n == 0 {
            return match inspect(&buf) {
                Inspection::NeedMore if buf.is_empty() => Ok((Inspection::NotTls, buf)),
                Inspection::NeedMore => Ok((
                    Inspection::Invalid("connection closed inside the ClientHello".into()),
                    buf,
                )),
                other => Ok((other, buf)),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        match inspect(&buf) {
            Inspection::NeedMore => continue,
            other => return Ok((other, buf)),
        }
    }
}

/// A stream that first yields `prefix`, then reads from `inner`. Writes go
/// straight to `inner`.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The bytes not read yet from the prefix, and the stream.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        self.prefix.drain(..self.pos);
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn client_hello(sni: &str) -> Vec<u8> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        let _ = &mut roots;
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("valid name");
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn extracts_mesh_sni() {
        let sni = "outbound_.9080_._.reviews.default.svc.cluster.local";
        let hello = client_hello(sni);
        assert_eq!(
            inspect(&hello),
            Inspection::Tls {
                sni: Some(sni.to_string()),
                alpn: vec![]
            }
        );
        // Every strict prefix needs more bytes.
        for cut in 1..hello.len() {
            assert_eq!(inspect(&hello[..cut]), Inspection::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn plaintext_is_not_tls() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Inspection::NotTls);
        assert_eq!(inspect(b""), Inspection::NeedMore);
    }

    #[test]
    fn garbage_after_handshake_byte_is_invalid() {
        let mut bad = vec![0x16, 0x03, 0x01, 0x00, 0x05];
        bad.extend_from_slice(&[0xff; 5]);
        assert!(matches!(inspect(&bad), Inspection::Invalid(_)));
    }

    #[tokio::test]
    async fn rewind_replays_prefix_then_inner() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"world")
            .await
            .expect("write");
        drop(a);
        let mut r = Rewind::new(b"hello ".to_vec(), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.expect("read");
        assert_eq!(s, "hello world");
    }

    proptest! {
        #[test]
        fn inspect_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = inspect(&bytes);
        }

        #[test]
        fn inspect_never_panics_on_tls_looking_input(
            body in proptest::collection::vec(any::<u8>(), 0..1024),
            minor in 0u8..5,
        ) {
            let mut bytes = vec![0x16, 0x03, minor];
            bytes.extend_from_slice(&body);
            let _ = inspect(&bytes);
        }

        #[test]
        fn inspect_survives_mutated_client_hello(idx in 0usize..512, val in any::<u8>()) {
            let mut hello = client_hello("outbound_.80_._.a.b.svc.cluster.local");
            let i = idx % hello.len();
            hello[i] = val;
            let _ = inspect(&hello);
        }
    }
}
