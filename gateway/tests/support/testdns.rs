//! A small authoritative DNS server for tests (UDP and TCP on one loopback
//! port): A/AAAA records with TTLs that a test changes while it runs, a
//! switch that makes it answer SERVFAIL, and a query counter.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

#[derive(Default)]
struct State {
    records: Mutex<HashMap<String, (Vec<IpAddr>, u32)>>,
    fail: AtomicBool,
    queries: AtomicU64,
    /// Names asked, lower case without the trailing dot.
    asked: Mutex<Vec<String>>,
}

pub struct TestDns {
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: JoinSet<()>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
            let port = udp.local_addr().expect("addr");
            if let Ok(tcp) = TcpListener::bind(port).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let mut tasks = JoinSet::new();
        let s = state.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Some(resp) = answer(&s, &buf[..n]) {
                    let _ = udp.send_to(&resp, peer).await;
                }
            }
        });
        let s = state.clone();
        tasks.spawn(async move {
            while let Ok((mut c, _)) = tcp.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    while let Ok(len) = c.read_u16().await {
                        let mut q = vec![0u8; usize::from(len)];
                        if c.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        let Some(resp) = answer(&s, &q) else { return };
                        let _ = c.write_u16(resp.len() as u16).await;
                        let _ = c.write_all(&resp).await;
                    }
                });
            }
        });
        TestDns { addr, state, tasks }
    }

    /// Sets the addresses of `name` (both families) with `ttl` seconds.
    pub fn set(&self, name: &str, ips: &[IpAddr], ttl: u32) {
        self.state
            .records
            .lock()
            .expect("lock")
            .insert(norm(name), (ips.to_vec(), ttl));
    }

    /// While on, every query gets SERVFAIL.
    pub fn fail(&self, on: bool) {
        self.state.fail.store(on, Ordering::SeqCst);
    }

    pub fn queries(&self) -> u64 {
        self.state.queries.load(Ordering::SeqCst)
    }

    pub fn asked(&self) -> Vec<String> {
        self.state.asked.lock().expect("lock").clone()
    }
}

fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn answer(s: &State, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    s.queries.fetch_add(1, Ordering::SeqCst);
    let mut resp = Message::response(q.metadata.id, OpCode::Query);
    resp.metadata.recursion_desired = q.metadata.recursion_desired;
    resp.metadata.authoritative = true;
    resp.queries = q.queries.clone();
    let Some(question) = q.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    let name = norm(&question.name().to_ascii());
    s.asked.lock().expect("lock").push(name.clone());
    if s.fail.load(Ordering::SeqCst) {
        resp.metadata.response_code = ResponseCode::ServFail;
        return resp.to_vec().ok();
    }
    match s.records.lock().expect("lock").get(&name) {
        None => resp.metadata.response_code = ResponseCode::NXDomain,
        Some((ips, ttl)) => {
            for ip in ips {
                let rdata = match (question.query_type(), ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(*v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                resp.answers
                    .push(Record::from_rdata(question.name().clone(), *ttl, rdata));
            }
        }
    }
    resp.to_vec().ok()
}
