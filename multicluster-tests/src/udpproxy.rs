//! A user-space link for UDP (the federation's QUIC): datagrams from any
//! client to `listen` go to `upstream` from a socket per client, answers go
//! back, like a NAT. Faults: one-way latency, random loss, or a cut link
//! (everything dropped) — a real network partition for one peer link,
//! while both ends keep running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::faultproxy::{Faults, ProxyError};

pub struct UdpFaultProxy {
    addr: SocketAddr,
    faults: watch::Sender<Faults>,
    tasks: JoinSet<()>,
}

impl UdpFaultProxy {
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<UdpFaultProxy, ProxyError> {
        let socket = UdpSocket::bind(listen).await.map_err(|source| ProxyError {
            addr: listen,
            source,
        })?;
        let addr = socket.local_addr().map_err(|source| ProxyError {
            addr: listen,
            source,
        })?;
        let (faults, rx) = watch::channel(Faults::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(relay(Arc::new(socket), upstream, rx));
        Ok(UdpFaultProxy {
            addr,
            faults,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, f: Faults) {
        self.faults.send_replace(f);
    }
}

impl Drop for UdpFaultProxy {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn dropped(f: &Faults) -> bool {
    f.cut || (f.loss > 0.0 && rand::random::<f64>() < f.loss)
}

/// Sends after the current latency without holding up the next datagram.
async fn send_later(socket: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>, f: &Faults) {
    if f.latency.is_zero() {
        let _ = socket.send_to(&data, to).await;
        return;
    }
    let delay = f.latency;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = socket.send_to(&data, to).await;
    });
}

async fn relay(listen: Arc<UdpSocket>, upstream: SocketAddr, faults: watch::Receiver<Faults>) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = listen.recv_from(&mut buf).await else {
            continue;
        };
        while tasks.try_join_next().is_some() {}
        let f = faults.borrow().clone();
        if dropped(&f) {
            continue;
        }
        let up = match clients.get(&from) {
            Some(s) => s.clone(),
            None => {
                let bind = SocketAddr::new(
                    listen.local_addr().map(|a| a.ip()).unwrap_or(upstream.ip()),
                    0,
                );
                let Ok(s) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let s = Arc::new(s);
                clients.insert(from, s.clone());
                tasks.spawn(answers(s.clone(), listen.clone(), from, faults.clone()));
                s
            }
        };
        send_later(up, upstream, buf[..n].to_vec(), &f).await;
    }
}

/// Upstream's answers to one client.
async fn answers(
    up: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    faults: watch::Receiver<Faults>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        // An ICMP "port unreachable" (the peer was not up yet) surfaces as
        // one failed recv; the link must outlive it.
        let Ok(n) = up.recv(&mut buf).await else {
            continue;
        };
        let f = faults.borrow().clone();
        if dropped(&f) {
            continue;
        }
        send_later(listen.clone(), client, buf[..n].to_vec(), &f).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ask(client: &UdpSocket, proxy: SocketAddr) -> bool {
        client.send_to(b"hi", proxy).await.unwrap();
        let mut b = [0u8; 100];
        matches!(
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut b)).await,
            Ok(Ok(2))
        )
    }

    #[tokio::test]
    async fn relays_both_ways_and_cuts() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 100];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        let p = UdpFaultProxy::start("127.0.0.1:0".parse().unwrap(), server_addr)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(ask(&client, p.addr()).await);
        p.set(Faults {
            cut: true,
            ..Faults::default()
        });
        assert!(!ask(&client, p.addr()).await, "a cut link delivers nothing");
        p.set(Faults::default());
        assert!(ask(&client, p.addr()).await);
    }
}
