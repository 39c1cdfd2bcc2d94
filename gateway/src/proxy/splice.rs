//! Zero-copy relay between two plain TCP sockets with splice(2): the bytes
//! move from one socket's receive queue to the other's send queue through a
//! pipe without being copied into this process. TLS passthrough (east-west
//! 15443, ingress PASSTHROUGH) and plain `tcp_proxy` take this path when
//! both peers are on other hosts (`Plain::worth_splicing`).

use std::any::Any;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;

use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::tcp::Progress;
use super::BoxIo;
use crate::tls::sni::Rewind;

/// The pipe's capacity, and so the most one splice call moves. The
/// default (16 pages) costs a syscall pair per 64 KiB; 256 KiB is within
/// the unprivileged limit (/proc/sys/fs/pipe-max-size, 1 MiB by default).
const CHUNK: usize = 256 * 1024;

/// Both ends of a connection when both are plain TCP sockets (no TLS
/// terminated or originated here, no tunnel), with the bytes this proxy
/// already read from the downstream (the ClientHello it inspected).
pub struct Plain {
    pub prefix: Vec<u8>,
    pub down: TcpStream,
    pub up: TcpStream,
}

/// Splits out the plain sockets, or gives both streams back unchanged.
pub fn plain(down: BoxIo, up: BoxIo) -> Result<Plain, (BoxIo, BoxIo)> {
    let down_plain = (&*down as &dyn Any).is::<Rewind<TcpStream>>();
    let up_plain = (&*up as &dyn Any).is::<TcpStream>();
    if !(down_plain && up_plain) {
        return Err((down, up));
    }
    let down: Box<dyn Any + Send> = down;
    let up: Box<dyn Any + Send> = up;
    match (
        down.downcast::<Rewind<TcpStream>>(),
        up.downcast::<TcpStream>(),
    ) {
        (Ok(down), Ok(up)) => {
            let (prefix, down) = down.into_parts();
            Ok(Plain {
                prefix,
                down,
                up: *up,
            })
        }
        // Checked just above.
        _ => unreachable!("stream types were checked before the downcast"),
    }
}

impl Plain {
    /// Whether splicing pays: only when neither peer is on this host.
    /// Spliced pages reach the receiver as fragments of the sender's
    /// buffers, and a local receiver (an application behind its sidecar, a
    /// client on loopback) pays more to read them than the copy saves
    /// here: on loopback the copying relay moved a TLS download about 20%
    /// faster while splice halved this process's CPU (docs/benchmarks.md).
    /// Across a NIC the device gathers the fragments instead.
    pub fn worth_splicing(&self) -> bool {
        remote(&self.down) && remote(&self.up)
    }

    /// The two streams again, for the copying relay.
    pub fn into_streams(self) -> (BoxIo, BoxIo) {
        (
            Box::new(Rewind::new(self.prefix, self.down)),
            Box::new(self.up),
        )
    }
}

/// Whether the socket's peer is on another host, as far as the socket
/// tells: not loopback, and not this socket's own address (a workload and
/// its sidecar talking over the pod IP).
fn remote(s: &TcpStream) -> bool {
    match (s.peer_addr(), s.local_addr()) {
        (Ok(peer), Ok(local)) => !peer.ip().is_loopback() && peer.ip() != local.ip(),
        _ => false,
    }
}

/// Relays `down` ⇄ `up` (after writing `prefix` to `up`) until both
/// directions reach EOF, forwarding each EOF as a write shutdown.
pub async fn relay(p: Plain, progress: &Progress) -> Result<(), (&'static str, io::Error)> {
    let Plain {
        prefix,
        down,
        mut up,
    } = p;
    if !prefix.is_empty() {
        up.write_all(&prefix)
            .await
            .map_err(|e| ("downstream→upstream", e))?;
        progress.moved(&progress.up, prefix.len());
    }
    let a = async {
        one_way(&down, &up, progress, &progress.up)
            .await
            .map_err(|e| ("downstream→upstream", e))
    };
    let b = async {
        one_way(&up, &down, progress, &progress.down)
            .await
            .map_err(|e| ("upstream→downstream", e))
    };
    let (ra, rb) = tokio::join!(a, b);
    ra.and(rb)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // Best effort: a smaller pipe only means more syscalls.
    let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
    Ok((r, w))
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    progress: &Progress,
    count: &AtomicU64,
) -> io::Result<()> {
    let (pipe_r, pipe_w) = pipe()?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        // The pipe is always empty here, so EAGAIN means "socket not ready"
        // and tokio may clear the socket's readiness.
        let n = from
            .async_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_w, None, CHUNK, flags)?)
            })
            .await?;
        if n == 0 {
            // Forward the half-close; the peer may already be gone.
            let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_r, None, to, None, left, flags)?)
                })
                .await?;
        }
        progress.moved(count, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn only_plain_sockets_are_spliced() {
        let (_c, s) = pair().await;
        let (_c2, s2) = pair().await;
        let down: BoxIo = Box::new(Rewind::new(b"hi".to_vec(), s));
        let up: BoxIo = Box::new(tokio::io::duplex(8).0);
        let (down, _up) = plain(down, up).err().expect("a duplex is not a socket");
        let up: BoxIo = Box::new(s2);
        let p = plain(down, up).ok().expect("both plain");
        assert_eq!(p.prefix, b"hi");
    }

    #[tokio::test]
    async fn loopback_peers_are_copied_not_spliced() {
        let (_c, down) = pair().await;
        let (up, _s) = pair().await;
        let p = Plain {
            prefix: Vec::new(),
            down,
            up,
        };
        assert!(!p.worth_splicing());
    }

    #[tokio::test]
    async fn moves_prefix_and_bulk_both_ways_with_half_close() {
        let (mut client, down) = pair().await;
        let (up, mut server) = pair().await;
        let progress = Progress::new(Instant::now());
        let plain = Plain {
            prefix: b"hello ".to_vec(),
            down,
            up,
        };
        let relay = tokio::spawn(async move {
            let r = relay(plain, &progress).await;
            (r.map_err(|(_, e)| e.kind()), progress.totals())
        });
        // More than the pipe and socket buffers hold, so both sides block.
        let bulk: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = bulk.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert!(got[6..] == bulk[..], "bytes changed on the way");
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"bye");
        let (r, t) = relay.await.unwrap();
        r.unwrap();
        assert_eq!(t.downstream_to_upstream, 6 + bulk.len() as u64);
        assert_eq!(t.upstream_to_downstream, 3);
    }
}
