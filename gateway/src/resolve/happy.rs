//! Happy eyeballs (RFC 8305) for hosts with addresses in both families:
//! addresses are interleaved by family (IPv6 first), a new connection
//! attempt starts every [`ATTEMPT_DELAY`] or as soon as the previous one
//! fails, and the first established connection wins; the others are
//! dropped (closed).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;

/// RFC 8305 §5 recommends 250 ms between connection attempts.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Interleaves two address lists, `first` family leading (RFC 8305 §4).
pub fn interleave(first: &[IpAddr], second: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut a, mut b) = (first.iter(), second.iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => {
                out.extend(x.copied());
                out.extend(y.copied());
            }
        }
    }
}

/// Connects to the first of `addrs` that answers, racing them as RFC 8305
/// describes. `addrs` is in preference order and must not be empty.
pub async fn connect(addrs: &[SocketAddr], delay: Duration) -> std::io::Result<TcpStream> {
    let Some((&first, rest)) = addrs.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no address to connect to",
        ));
    };
    if rest.is_empty() {
        return TcpStream::connect(first).await;
    }
    let mut pending = rest.iter().copied();
    let mut running = FuturesUnordered::new();
    let attempt = |a: SocketAddr| async move { (a, TcpStream::connect(a).await) };
    running.push(attempt(first));
    let mut last_err: Option<std::io::Error> = None;
    loop {
        let next_start = tokio::time::sleep(delay);
        tokio::pin!(next_start);
        tokio::select! {
            done = running.next() => match done {
                Some((_, Ok(stream))) => return Ok(stream),
                Some((addr, Err(e))) => {
                    tracing::debug!(%addr, error = %e, "happy eyeballs: attempt failed");
                    last_err = Some(e);
                    // A failure starts the next attempt at once (§5).
                    match pending.next() {
                        Some(a) => running.push(attempt(a)),
                        None if running.is_empty() => break,
                        None => {}
                    }
                }
                None => match pending.next() {
                    Some(a) => running.push(attempt(a)),
                    None => break,
                },
            },
            () = &mut next_start, if pending.len() > 0 => {
                if let Some(a) = pending.next() {
                    running.push(attempt(a));
                }
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "every address failed",
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn interleaves_families_v6_first() {
        let v6: Vec<IpAddr> = vec!["::1".parse().unwrap(), "::2".parse().unwrap()];
        let v4: Vec<IpAddr> = vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))];
        let got = interleave(&v6, &v4);
        assert_eq!(got, vec![v6[0], v4[0], v6[1]]);
        assert_eq!(interleave(&[], &v4), v4);
    }

    #[tokio::test]
    async fn a_blackholed_first_address_falls_back_after_the_delay() {
        // 192.0.2.1 (TEST-NET-1) is not routed here: the connect hangs, or
        // fails at once when there is no route; both must fall back.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        let dead = SocketAddr::new("192.0.2.1".parse().unwrap(), good.port());
        let accept = tokio::spawn(async move { listener.accept().await.map(|(_, a)| a) });
        let stream = tokio::time::timeout(
            Duration::from_secs(10),
            connect(&[dead, good], Duration::from_millis(50)),
        )
        .await
        .expect("does not hang on the dead address")
        .expect("connects to the second address");
        assert_eq!(stream.peer_addr().unwrap(), good);
        accept.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_refused_first_address_falls_back_and_all_refused_is_an_error() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // A long delay: only the failure of the first may start the second.
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            connect(&[refused, good], Duration::from_secs(30)),
        )
        .await
        .expect("failure starts the next attempt at once")
        .expect("connects");
        assert_eq!(stream.peer_addr().unwrap(), good);
        let err = connect(&[refused, refused], Duration::from_millis(10))
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
