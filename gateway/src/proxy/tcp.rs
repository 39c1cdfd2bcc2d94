//! Byte relay between two streams with half-close and an idle timeout.
//! Two plain TCP sockets are spliced in the kernel (`super::splice`);
//! anything else (TLS, the QUIC tunnel) is copied through a buffer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{splice, BoxIo};

/// Bytes moved in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub downstream_to_upstream: u64,
    pub upstream_to_downstream: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("idle for longer than {0:?}")]
    Idle(Duration),
    #[error("{direction}: {source}")]
    Io {
        direction: &'static str,
        source: io::Error,
    },
}

/// What both directions of a relay report: byte counts, and when bytes
/// last moved (for the idle timeout), as milliseconds since `origin`.
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    last: AtomicU64,
    pub(super) up: AtomicU64,
    pub(super) down: AtomicU64,
}

impl Progress {
    pub(super) fn new(origin: Instant) -> Self {
        Self {
            origin,
            last: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
        }
    }

    pub(super) fn moved(&self, count: &AtomicU64, n: usize) {
        count.fetch_add(n as u64, Ordering::Relaxed);
        self.last
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(super) fn totals(&self) -> Transferred {
        Transferred {
            downstream_to_upstream: self.up.load(Ordering::Relaxed),
            upstream_to_downstream: self.down.load(Ordering::Relaxed),
        }
    }

    /// Resolves once nothing moved for `idle`.
    async fn idle(&self, idle: Duration) -> RelayError {
        loop {
            let last_ms = self.last.load(Ordering::Relaxed);
            let deadline = self.origin + Duration::from_millis(last_ms) + idle;
            if Instant::now() >= deadline {
                return RelayError::Idle(idle);
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Copies `down` ⇄ `up` until both directions reach EOF. An EOF in one
/// direction is forwarded as a write shutdown (half-close). Returns the byte
/// counts even on error.
pub async fn relay(
    down: BoxIo,
    up: BoxIo,
    idle: Option<Duration>,
) -> (Transferred, Result<(), RelayError>) {
    let progress = Progress::new(Instant::now());
    let both = async {
        let r = match splice::plain(down, up) {
            Ok(plain) if plain.worth_splicing() => splice::relay(plain, &progress).await,
            Ok(plain) => {
                let (down, up) = plain.into_streams();
                copy_both(down, up, &progress).await
            }
            Err((down, up)) => copy_both(down, up, &progress).await,
        };
        r.map_err(|(direction, source)| RelayError::Io { direction, source })
    };
    let watchdog = async {
        match idle {
            Some(idle) => progress.idle(idle).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = both => r,
        e = watchdog => Err(e),
    };
    (progress.totals(), result)
}

async fn copy_both(
    down: BoxIo,
    up: BoxIo,
    progress: &Progress,
) -> Result<(), (&'static str, io::Error)> {
    let (mut dr, mut dw) = tokio::io::split(down);
    let (mut ur, mut uw) = tokio::io::split(up);
    let a = async {
        copy_one(&mut dr, &mut uw, progress, &progress.up)
            .await
            .map_err(|e| ("downstream→upstream", e))
    };
    let b = async {
        copy_one(&mut ur, &mut dw, progress, &progress.down)
            .await
            .map_err(|e| ("upstream→downstream", e))
    };
    let (ra, rb) = tokio::join!(a, b);
    ra.and(rb)
}

async fn copy_one<R, W>(
    r: &mut R,
    w: &mut W,
    progress: &Progress,
    count: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // 64 KiB: a bulk transfer costs a quarter of the syscalls of 16 KiB
    // (passthrough throughput is bounded by them, not by copying).
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Forward the half-close; the peer may already be gone.
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        progress.moved(count, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut client, down) = tokio::io::duplex(1024);
        let (up, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(Box::new(down), Box::new(up), None));
        client.write_all(b"ping").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ping");
        server.write_all(b"pong!").await.expect("write");
        server.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"pong!");
        let (t, r) = task.await.expect("join");
        r.expect("relay ok");
        assert_eq!(t.downstream_to_upstream, 4);
        assert_eq!(t.upstream_to_downstream, 5);
    }

    #[tokio::test]
    async fn idle_timeout_closes() {
        let (_client, down) = tokio::io::duplex(1024);
        let (up, _server) = tokio::io::duplex(1024);
        let (_, r) = relay(
            Box::new(down),
            Box::new(up),
            Some(Duration::from_millis(100)),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Idle(_))));
    }
}
