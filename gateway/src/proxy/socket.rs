//! Options set on both legs of every proxied TCP connection, downstream
//! (accepted) and upstream (connected).
//!
//! `TCP_NOTSENT_LOWAT` caps the bytes this proxy queues in a socket that
//! TCP has not sent yet. Without it a relay fills the whole send buffer,
//! and when the receiver's window update releases that backlog, the kernel
//! transmits it in the receiver's ACK processing, on the receiver's core:
//! a bulk download through the proxy then costs the client's core its
//! window updates plus the proxy's transmits. With a small cap the relay
//! writes as the queue drains, so its transmits run in its own `sendmsg`,
//! and less kernel memory sits in each connection's queue (Cloudflare's
//! HTTP/2 edge runs with 16 KiB for the same reason). A TLS download
//! through the passthrough listener, client and backend on one core and
//! the proxy on the other, went from a median 0.85 of a direct
//! connection's throughput to 0.95 in one hour's alternating runs, and
//! from 0.75 to 0.80 in a slower hour (docs/benchmarks.md).
//!
//! The cap does not bound the bytes in flight, so the window, and
//! throughput on long paths, are unchanged as long as the proxy refills
//! the queue before it runs dry: the kernel wakes the writer when half the
//! cap is left, 8 KiB, which a 10 Gbit/s flow sends in under 7 µs. For
//! single flows that fast, raise the cap.
//!
//! The value is per process, like the kernel's `net.ipv4.tcp_notsent_lowat`
//! that it overrides per socket (a sidecar shares the pod's network
//! namespace with the application, so the sysctl would change the
//! application's sockets too).

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::TcpStream;

/// `--tcp-notsent-lowat`'s default.
pub const DEFAULT_NOTSENT_LOWAT: u32 = 16 * 1024;

/// 0: leave the kernel's default (unbounded unless the sysctl says otherwise).
static NOTSENT_LOWAT: AtomicU32 = AtomicU32::new(DEFAULT_NOTSENT_LOWAT);

/// Sets the unsent-bytes cap for connections set up from now on; 0 leaves
/// the kernel's default.
pub fn set_notsent_lowat(bytes: u32) {
    NOTSENT_LOWAT.store(bytes, Ordering::Relaxed);
}

/// Applies this proxy's options to a connection's socket. Failures are not
/// fatal: the connection works with the kernel's defaults.
pub(crate) fn tune(stream: &TcpStream) {
    // Requests and responses are written whole; Nagle would only hold back
    // the last segment of each.
    let _ = stream.set_nodelay(true);
    let lowat = NOTSENT_LOWAT.load(Ordering::Relaxed);
    if lowat > 0 {
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(lowat) {
            tracing::debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_get_nodelay_and_the_unsent_cap() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let kernel_default = socket2::SockRef::from(&client).tcp_notsent_lowat().unwrap();
        assert_ne!(kernel_default, DEFAULT_NOTSENT_LOWAT);
        // The process-wide value is the default here; no test changes it.
        for s in [&client, &server] {
            tune(s);
            assert!(s.nodelay().unwrap());
            assert_eq!(
                socket2::SockRef::from(s).tcp_notsent_lowat().unwrap(),
                DEFAULT_NOTSENT_LOWAT
            );
        }
    }
}
