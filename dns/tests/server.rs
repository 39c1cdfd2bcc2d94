//! The server over real sockets: hickory's own client and `dig` over UDP
//! and TCP, ECS, truncation, malformed and oversized packets, a flood.

mod common;

use std::time::Duration;

use common::*;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::net::UdpSocket;

#[tokio::test]
async fn hickory_client_over_udp_and_tcp_follows_the_policy_and_the_view() {
    let t = TestServer::start().await;
    let shop = name(&format!("shop.{ZONE}."));

    let conn = UdpClientStream::builder(t.addr, TokioRuntimeProvider::default()).build();
    let (mut udp, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
    let bg = tokio::spawn(bg);
    let r = udp
        .query(shop.clone(), DNSClass::IN, RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&r), ["198.51.100.1"], "{r:?}");
    assert!(r.metadata.authoritative);
    assert_eq!(r.answers[0].ttl, 30);

    // us-east's lease expires: failover to eu-central on the next query.
    let mut v = view();
    v.clusters.get_mut("us-east").unwrap().lease_alive = false;
    t.set_view(v);
    let r = udp
        .query(shop.clone(), DNSClass::IN, RecordType::A)
        .await
        .unwrap();
    assert_eq!(addresses(&r), ["198.51.100.2"]);

    let (stream, sender) = TcpClientStream::new(t.addr, None, None, TokioRuntimeProvider::new());
    let (mut tcp, bg2) = Client::<TokioRuntimeProvider>::new(stream.await.unwrap(), sender);
    let bg2 = tokio::spawn(bg2);
    let r = tcp
        .query(shop.clone(), DNSClass::IN, RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(addresses(&r), ["2001:db8::2"]);

    // Unknown name: NXDOMAIN with the SOA for negative caching.
    let r = tcp
        .query(name(&format!("nope.{ZONE}.")), DNSClass::IN, RecordType::A)
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities.len(), 1);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    // Outside the zone: refused, not authoritative.
    let r = udp
        .query(name("example.org."), DNSClass::IN, RecordType::A)
        .await
        .unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.authoritative);

    assert_eq!(
        t.counter(
            "isthmus_dns_answers_total",
            &[
                ("hostname", &format!("shop.{ZONE}")),
                ("policy", "failover"),
                ("cluster", "us-east")
            ]
        ),
        1
    );
    assert_eq!(
        t.counter("isthmus_dns_answers_total", &[("cluster", "eu-central")]),
        2
    );
    assert_eq!(
        t.counter(
            "isthmus_dns_queries_total",
            &[("hostname", "-"), ("result", "nxdomain")]
        ),
        1
    );
    bg.abort();
    bg2.abort();
    t.stop().await;
}

#[tokio::test]
async fn dig_over_udp_and_tcp() {
    if !dig_available() {
        return;
    }
    let t = TestServer::start().await;
    let shop = format!("shop.{ZONE}");
    for transport in ["+notcp", "+tcp"] {
        let out = dig(t.addr, &[transport, "+short", &shop, "A"]).await;
        assert_eq!(out.trim(), "198.51.100.1", "{transport}: {out}");
        let out = dig(t.addr, &[transport, &format!("nope.{ZONE}"), "A"]).await;
        assert!(out.contains("status: NXDOMAIN"), "{out}");
        assert!(out.contains("flags: qr aa"), "{out}");
        assert!(out.contains("IN\tSOA\tns1.global.isthmus.test."), "{out}");
        let out = dig(t.addr, &[transport, "+short", ZONE, "NS"]).await;
        assert_eq!(out.trim(), "ns1.global.isthmus.test.", "{out}");
    }
    // Round robin: both small clusters and the big one take turns.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let out = dig(t.addr, &["+short", &format!("rr.{ZONE}"), "A"]).await;
        seen.insert(out.lines().next().unwrap_or("").to_string());
    }
    assert!(
        seen.contains("198.51.100.1") && seen.contains("198.51.100.2"),
        "{seen:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn ecs_maps_clients_of_two_regions_to_their_clusters() {
    let t = TestServer::start().await;
    let geo = format!("geo.{ZONE}.");
    for (subnet, want, scope) in [
        ("10.1.20.0/24", "198.51.100.1", 16),
        ("10.2.20.0/24", "198.51.100.2", 16),
        // Not in the table: the fallback (us-east); the scope is the whole
        // client network, since another /24 may map elsewhere.
        ("192.168.5.0/24", "198.51.100.1", 24),
    ] {
        let m = udp(
            t.addr,
            &query(&geo, RecordType::A, Some(1232), Some(subnet)),
        )
        .await;
        assert_eq!(addresses(&m), [want], "{subnet}");
        let e = m.edns.as_ref().expect("EDNS echoed");
        match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => {
                assert_eq!(s.scope_prefix(), scope, "{subnet}");
                assert_eq!(s.source_prefix(), 24);
            }
            other => panic!("no ECS option echoed: {other:?}"),
        }
    }
    // The same over TCP, and with dig's +subnet.
    let m = tcp(
        t.addr,
        &query(&geo, RecordType::A, Some(1232), Some("10.2.9.0/24")),
    )
    .await;
    assert_eq!(addresses(&m), ["198.51.100.2"]);
    if dig_available() {
        let out = dig(t.addr, &["+short", "+subnet=10.2.77.0/24", &geo, "A"]).await;
        assert_eq!(out.trim(), "198.51.100.2", "{out}");
        let out = dig(t.addr, &["+short", "+subnet=10.1.77.0/24", &geo, "A"]).await;
        assert_eq!(out.trim(), "198.51.100.1", "{out}");
    }
    // A prefix longer than the family allows is malformed.
    let mut bad = query(&geo, RecordType::A, Some(1232), Some("10.2.9.0/24"));
    // The ECS option ends the packet: FAMILY(2) SOURCE(1) SCOPE(1) ADDR(3).
    let src = bad.len() - 5;
    bad[src] = 40;
    let m = udp(t.addr, &bad).await;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    t.stop().await;
}

#[tokio::test]
async fn large_answers_are_truncated_on_udp_and_complete_on_tcp() {
    let t = TestServer::start().await;
    let big = format!("big.{ZONE}.");
    // Without EDNS: 512 bytes at most, TC set.
    let q = query(&big, RecordType::A, None, None);
    let raw = udp_raw(t.addr, &q, WAIT).await.unwrap();
    assert!(raw.len() <= 512, "{} bytes", raw.len());
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert!(m.metadata.truncation);
    // EDNS asking for 4096: capped at 1232.
    let q = query(&big, RecordType::A, Some(4096), None);
    let raw = udp_raw(t.addr, &q, WAIT).await.unwrap();
    assert!(raw.len() <= 1232, "{} bytes", raw.len());
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert!(m.metadata.truncation);
    // TCP: everything.
    let m = tcp(t.addr, &query(&big, RecordType::A, None, None)).await;
    assert!(!m.metadata.truncation);
    assert_eq!(addresses(&m).len(), 80);
    assert!(t.counter("isthmus_dns_truncated_total", &[]) >= 2);
    if dig_available() {
        // dig retries over TCP on TC and gets all 80.
        let out = dig(t.addr, &["+short", "+noedns", &big, "A"]).await;
        assert_eq!(out.lines().count(), 80, "{out}");
    }
    t.stop().await;
}

#[tokio::test]
async fn malformed_and_oversized_packets_get_formerr_or_nothing_and_never_more_than_they_sent() {
    let t = TestServer::start().await;
    let short = Duration::from_millis(300);
    // Shorter than a header: dropped.
    assert!(udp_raw(t.addr, &[1, 2, 3], short).await.is_none());
    // A response (QR set): dropped, so it cannot be used to bounce traffic.
    let mut resp = query(&format!("shop.{ZONE}."), RecordType::A, None, None);
    resp[2] |= 0x80;
    assert!(udp_raw(t.addr, &resp, short).await.is_none());
    // A header that promises a question that is not there: FORMERR, 12 bytes.
    let mut cut = query(&format!("shop.{ZONE}."), RecordType::A, None, None);
    cut.truncate(17);
    let raw = udp_raw(t.addr, &cut, WAIT).await.expect("FORMERR");
    assert!(raw.len() <= cut.len());
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, 0x1234);
    // A name with a compression pointer loop.
    let mut looped = cut[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let raw = udp_raw(t.addr, &looped, WAIT).await.expect("FORMERR");
    let m = hickory_proto::op::Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Oversized: a 9000-byte datagram of garbage after a valid header.
    let mut huge = query(&format!("shop.{ZONE}."), RecordType::A, None, None);
    huge.resize(9000, 0xff);
    if let Some(raw) = udp_raw(t.addr, &huge, WAIT).await {
        assert!(raw.len() <= 512, "{} bytes", raw.len());
    }
    // Two questions: FORMERR.
    let mut m = hickory_proto::op::Message::query();
    m.add_query(hickory_proto::op::Query::query(
        name(&format!("shop.{ZONE}.")),
        RecordType::A,
    ));
    m.add_query(hickory_proto::op::Query::query(
        name(&format!("rr.{ZONE}.")),
        RecordType::A,
    ));
    let r = udp(t.addr, &m.to_vec().unwrap()).await;
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // TCP: a frame of garbage, then the connection still works for the
    // next client.
    let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0, 3, 1, 2, 3])
        .await
        .unwrap();
    // Still healthy.
    let m = udp(
        t.addr,
        &query(&format!("shop.{ZONE}."), RecordType::A, None, None),
    )
    .await;
    assert_eq!(addresses(&m), ["198.51.100.1"]);
    assert!(t.counter("isthmus_dns_dropped_total", &[("reason", "short")]) >= 1);
    assert!(t.counter("isthmus_dns_dropped_total", &[("reason", "response")]) >= 1);
    t.stop().await;
}

#[tokio::test]
async fn a_flood_of_random_names_is_answered_without_amplification_and_the_server_stays_up() {
    let t = TestServer::start().await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sent = 20_000usize;
    let mut max_query = 0;
    let recv = {
        let sock = std::sync::Arc::new(sock);
        let r = sock.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            let mut got = 0usize;
            let mut largest = 0usize;
            while let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(500), r.recv_from(&mut buf)).await
            {
                got += 1;
                largest = largest.max(n);
            }
            (got, largest)
        });
        for i in 0..sent {
            let q = query(&format!("x{i}.{ZONE}."), RecordType::A, None, None);
            max_query = max_query.max(q.len());
            let _ = sock.send_to(&q, t.addr).await;
            if i % 1000 == 0 {
                tokio::task::yield_now().await;
            }
        }
        reader.await.unwrap()
    };
    let (got, largest) = recv;
    eprintln!("flood: {sent} sent, {got} answered, largest answer {largest} bytes");
    assert!(got > 0);
    // NXDOMAIN with the SOA: bounded, and within the 512 bytes the
    // queries allowed (no EDNS).
    assert!(largest <= 512, "{largest}");
    // Still answering, and the metric label set did not grow per name.
    let m = udp(
        t.addr,
        &query(&format!("shop.{ZONE}."), RecordType::A, None, None),
    )
    .await;
    assert_eq!(addresses(&m), ["198.51.100.1"]);
    let series = t
        .registry
        .gather()
        .iter()
        .filter(|mf| mf.name() == "isthmus_dns_queries_total")
        .map(|mf| mf.get_metric().len())
        .sum::<usize>();
    assert!(series <= 4, "{series} series");
    t.stop().await;
}

#[tokio::test]
async fn stale_view_still_answers_and_is_counted() {
    let t = TestServer::start().await;
    let mut v = view();
    v.stale = true;
    t.set_view(v);
    let m = udp(
        t.addr,
        &query(&format!("shop.{ZONE}."), RecordType::A, None, None),
    )
    .await;
    assert_eq!(addresses(&m), ["198.51.100.1"]);
    assert_eq!(t.counter("isthmus_dns_stale_answers_total", &[]), 1);
    t.stop().await;
}
