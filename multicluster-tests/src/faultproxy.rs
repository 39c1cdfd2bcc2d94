//! A user-space WAN emulator for TCP links (the kernel here has no netem):
//! it forwards connections from `listen` to `upstream`, adding one-way
//! latency to every chunk in both directions (pipelined, order kept),
//! dropping a share of new connections (loss shows up on TCP as failed
//! connects and resets), or cutting the link entirely.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added to every chunk in each direction.
    pub latency: Duration,
    /// Probability (0..=1) that a new connection is reset at once.
    pub loss: f64,
    /// Refuse everything (new connections are reset) and cut open ones.
    pub cut: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("fault proxy cannot listen on {addr}: {source}")]
pub struct ProxyError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    faults: watch::Sender<Faults>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> Result<FaultProxy, ProxyError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ProxyError {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ProxyError {
            addr: listen,
            source,
        })?;
        let (faults, rx) = watch::channel(Faults::default());
        let task = tokio::spawn(accept_loop(listener, upstream, rx));
        Ok(FaultProxy { addr, faults, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, f: Faults) {
        self.faults.send_replace(f);
    }

    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, faults: watch::Receiver<Faults>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((down, _)) = listener.accept().await else {
            continue;
        };
        let f = faults.borrow().clone();
        if f.cut || (f.loss > 0.0 && rand::random::<f64>() < f.loss) {
            // Dropping with SO_LINGER 0 would be a reset; a plain close is
            // what a lossy link's eventual timeout looks like to the caller.
            drop(down);
            continue;
        }
        conns.spawn(connection(down, upstream, faults.clone()));
        // Reap finished connections so the set does not grow forever.
        while conns.try_join_next().is_some() {}
    }
}

async fn connection(down: TcpStream, upstream: SocketAddr, mut faults: watch::Receiver<Faults>) {
    let Ok(up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let a = pipe(dr, uw, faults.clone());
    let b = pipe(ur, dw, faults.clone());
    let cut = async move {
        loop {
            if faults.borrow_and_update().cut {
                return;
            }
            if faults.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(a, b) } => {}
        _ = cut => {}
    }
}

/// Copies one direction, delaying each chunk by the current latency
/// without stalling the reads behind it.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + faults.borrow().latency;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Duration> {
        let mut s = TcpStream::connect(addr).await?;
        let start = Instant::now();
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(start.elapsed())
    }

    #[tokio::test]
    async fn forwards_adds_latency_and_cuts() {
        let up = echo_server().await;
        let p = FaultProxy::start("127.0.0.1:0".parse().unwrap(), up)
            .await
            .unwrap();
        round_trip(p.addr()).await.unwrap();

        p.set(Faults {
            latency: Duration::from_millis(50),
            ..Faults::default()
        });
        let rtt = round_trip(p.addr()).await.unwrap();
        // Both directions are delayed: at least twice the one-way latency.
        assert!(rtt >= Duration::from_millis(100), "{rtt:?}");

        p.set(Faults {
            cut: true,
            ..Faults::default()
        });
        assert!(round_trip(p.addr()).await.is_err());

        p.set(Faults {
            loss: 1.0,
            ..Faults::default()
        });
        assert!(round_trip(p.addr()).await.is_err());

        p.set(Faults::default());
        round_trip(p.addr()).await.unwrap();
    }
}
