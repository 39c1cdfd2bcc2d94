//! Closed-loop UDP load generator for the DNS benchmark: CLIENTS tasks,
//! each with its own socket and one query in flight, for SECONDS; 90% of
//! the queries ask `www.bench.test A`, 10% an unknown name (NXDOMAIN).
//! Prints one JSON line: queries/s, p50/p99/max latency (ms), timeouts.
//! A query unanswered within 1 s counts as a timeout and is not timed.
//!
//! Usage: dns_load ADDR [CLIENTS=32] [SECONDS=10]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

fn query(id: u16, unknown: bool) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let name = if unknown {
        "nope.bench.test."
    } else {
        "www.bench.test."
    };
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    Ok(m.to_vec()?)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or("usage: dns_load ADDR [CLIENTS] [SECONDS]")?
        .parse()?;
    let clients: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(32);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut lat, timeouts) = rt.block_on(async move {
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..clients {
            tasks.push(tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                sock.connect(addr).await?;
                let mut lat = Vec::new();
                let mut timeouts = 0u64;
                let mut buf = [0u8; 1500];
                let mut i: u32 = 0;
                while Instant::now() < end {
                    i = i.wrapping_add(1);
                    let id = (c as u16).wrapping_mul(7919).wrapping_add(i as u16);
                    let q = query(id, i.is_multiple_of(10))
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    let t0 = Instant::now();
                    sock.send(&q).await?;
                    loop {
                        match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => {
                                lat.push(t0.elapsed());
                                break;
                            }
                            Ok(Ok(_)) => continue, // a late answer to an earlier query
                            Ok(Err(e)) => return Err(e),
                            Err(_) => {
                                timeouts += 1;
                                break;
                            }
                        }
                    }
                }
                Ok::<_, std::io::Error>((lat, timeouts))
            }));
        }
        let mut all = Vec::new();
        let mut timeouts = 0;
        for t in tasks {
            if let Ok(Ok((l, to))) = t.await {
                all.extend(l);
                timeouts += to;
            }
        }
        (all, timeouts)
    });
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i].as_secs_f64() * 1000.0
    };
    println!(
        "{{\"qps\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"max_ms\": {:.3}, \"answered\": {}, \"timeouts\": {}}}",
        lat.len() as f64 / seconds as f64,
        pct(0.5),
        pct(0.99),
        lat.last().map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0),
        lat.len(),
        timeouts
    );
    Ok(())
}
