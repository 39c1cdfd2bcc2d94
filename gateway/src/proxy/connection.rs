//! The life of one downstream connection: inspect, choose a chain,
//! optionally terminate TLS, run the network filter, log one line.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::tcp::{relay, Transferred};
use super::upstream::{self, UpstreamError};
use super::BoxIo;
use crate::config::{
    FilterChainConfig, NetworkFilter, TcpProxyConfig, TcpRoute, TransportProtocol,
};
use crate::lb::ring_hash::hash64;
use crate::listener::chain::{self, ConnectionInfo};
use crate::metrics::Metrics;
use crate::state::{ChainRuntime, ClusterTable, ListenerRuntime};
use crate::tls::{self, sni};

/// What every connection needs besides its listener.
#[derive(Clone, Debug)]
pub struct ProxyContext {
    pub clusters: watch::Receiver<Arc<ClusterTable>>,
    /// Route configurations received over RDS.
    pub routes: watch::Receiver<Arc<crate::state::RouteTables>>,
    pub metrics: Arc<Metrics>,
    /// QUIC tunnel to peer east-west gateways, when this proxy runs one.
    pub tunnel: Option<crate::tunnel::TunnelClient>,
    /// Upstream connect attempts per downstream connection when the
    /// tcp_proxy sets no `max_connect_attempts` (retries pick other hosts).
    pub connect_attempts: u32,
    /// Tracing exporters, access log writers and who this proxy is.
    pub telemetry: Arc<crate::trace::Telemetry>,
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("listener filters: {0}")]
    Inspect(std::io::Error),
    #[error("malformed TLS ClientHello: {0}")]
    BadHello(String),
    #[error("no filter chain matches (sni={sni:?}, transport={transport:?}, port={port})")]
    NoChain {
        sni: Option<String>,
        transport: TransportProtocol,
        port: u16,
    },
    #[error("TLS termination not ready: {0}")]
    TlsNotReady(String),
    #[error("downstream TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Http(#[from] crate::http::server::ServeError),
    /// Closed by `envoy.filters.network.rbac`; carries the response code details.
    #[error("RBAC: access denied ({0})")]
    RbacDenied(String),
}

/// Accounting for the access log line.
#[derive(Debug, Default)]
struct Log {
    listener: String,
    chain: String,
    sni: Option<String>,
    downstream_identity: Option<String>,
    cluster: Option<String>,
    upstream: Option<SocketAddr>,
    upstream_identity: Option<String>,
    bytes: Transferred,
    relay_error: Option<String>,
    /// The downstream as its verified certificate describes it.
    peer: Option<Arc<crate::metrics::Workload>>,
    /// The tcp_proxy's `access_log` writers (crate::accesslog).
    access: Option<Arc<[crate::accesslog::Logger]>>,
    /// The destination before an iptables REDIRECT (`ORIGINAL_DST` clusters).
    original_dst: Option<SocketAddr>,
}

/// Runs one connection. The chosen chain's config is sent on `chosen` so
/// the listener can drain the connection if that chain goes away.
/// `original_dst` is the destination before an iptables REDIRECT; it stands
/// for the local address (chain match, RBAC, logs), as Envoy restores it.
pub async fn handle(
    listener: Arc<ListenerRuntime>,
    ctx: ProxyContext,
    stream: TcpStream,
    peer: SocketAddr,
    original_dst: Option<SocketAddr>,
    chosen: oneshot::Sender<FilterChainConfig>,
) {
    let start = Instant::now();
    let wall_start = std::time::SystemTime::now();
    let name = listener.config.name.clone();
    let local = original_dst.or_else(|| stream.local_addr().ok());
    super::socket::tune(&stream);
    let mut log = Log {
        listener: name.clone(),
        original_dst,
        ..Log::default()
    };
    let result = run(&listener, &ctx, stream, peer, local, &mut log, chosen).await;
    let m = &ctx.metrics;
    m.bytes_total
        .with_label_values(&[&name, "rx"])
        .inc_by(log.bytes.downstream_to_upstream);
    m.bytes_total
        .with_label_values(&[&name, "tx"])
        .inc_by(log.bytes.upstream_to_downstream);
    let outcome = match &result {
        Ok(()) => log.relay_error.clone().unwrap_or_else(|| "ok".to_string()),
        Err(e) => e.to_string(),
    };
    tracing::debug!(
        target: "isthmus_gateway::access",
        listener = %name,
        chain = %log.chain,
        downstream = %peer,
        local = ?local,
        sni = ?log.sni,
        downstream_identity = ?log.downstream_identity,
        cluster = ?log.cluster,
        upstream = ?log.upstream,
        upstream_identity = ?log.upstream_identity,
        bytes_rx = log.bytes.downstream_to_upstream,
        bytes_tx = log.bytes.upstream_to_downstream,
        duration_ms = start.elapsed().as_millis() as u64,
        result = %outcome,
        "connection"
    );
    if let Some(loggers) = log.access.take() {
        let facts = access_facts(&log, &result, peer, local, wall_start, start, &name);
        crate::accesslog::log_tcp(&loggers, &ctx.telemetry.local, facts);
    }
}

/// The TCP access log line's facts, with Envoy's response flags.
fn access_facts(
    log: &Log,
    result: &Result<(), ConnError>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    wall_start: std::time::SystemTime,
    start: Instant,
    listener: &str,
) -> crate::accesslog::TcpFacts {
    let flags = match result {
        Err(ConnError::NoChain { .. }) => "NR",
        Err(ConnError::Upstream(UpstreamError::NoHost(_))) => "UH",
        Err(ConnError::Upstream(UpstreamError::UnknownCluster(_))) => "NC",
        Err(ConnError::Upstream(
            UpstreamError::Overflow { .. } | UpstreamError::PendingOverflow { .. },
        )) => "UO",
        Err(ConnError::Upstream(_)) => "UF",
        Err(ConnError::RbacDenied(_)) => "UAEX",
        _ => "",
    };
    let error = match result {
        Ok(()) => log.relay_error.clone(),
        Err(e) => Some(e.to_string()),
    };
    crate::accesslog::TcpFacts {
        start: Some(wall_start),
        duration_ms: start.elapsed().as_millis() as u64,
        downstream: Some(peer),
        local,
        sni: log.sni.clone(),
        downstream_identity: log.downstream_identity.clone(),
        cluster: log.cluster.clone(),
        upstream: log.upstream,
        upstream_identity: log.upstream_identity.clone(),
        bytes_received: log.bytes.downstream_to_upstream,
        bytes_sent: log.bytes.upstream_to_downstream,
        error,
        flags: flags.to_string(),
        reporter: if listener.starts_with("inbound") || listener.starts_with("virtualInbound") {
            "destination"
        } else {
            "source"
        },
    }
}

async fn run(
    listener: &ListenerRuntime,
    ctx: &ProxyContext,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    log: &mut Log,
    chosen: oneshot::Sender<FilterChainConfig>,
) -> Result<(), ConnError> {
    let seen = crate::listener::sniff::inspect(
        &mut stream,
        listener.config.tls_inspector,
        listener.config.http_inspector,
        listener.config.listener_filters_timeout,
    )
    .await
    .map_err(|e| match e {
        crate::listener::sniff::InspectError::BadHello(e) => ConnError::BadHello(e),
        other => ConnError::Inspect(std::io::Error::other(other.to_string())),
    })?;
    let (transport, server_name, alpn, buffered) = (
        seen.transport,
        seen.server_name,
        seen.application_protocols,
        seen.buffered,
    );
    log.sni = server_name.clone();
    let port = local.map_or(listener.config.address.port(), |a| a.port());
    let info = ConnectionInfo {
        destination_port: port,
        destination_ip: local.map(|a| a.ip()),
        server_name: server_name.as_deref(),
        transport_protocol: Some(transport),
        application_protocols: &alpn,
    };
    let chain: &ChainRuntime =
        match chain::select(listener.chains.iter().map(|c| &c.config.matcher), &info) {
            Some(i) => &listener.chains[i],
            None => match &listener.default_chain {
                Some(d) => d,
                None => {
                    ctx.metrics
                        .downstream_cx_no_chain
                        .with_label_values(&[&listener.config.name])
                        .inc();
                    return Err(ConnError::NoChain {
                        sni: server_name,
                        transport,
                        port,
                    });
                }
            },
        };
    log.chain = chain.config.name.clone();
    if let NetworkFilter::TcpProxy(tp) = &chain.config.filter {
        if !tp.access_log.is_empty() {
            log.access = Some(ctx.telemetry.access_logs.loggers(&tp.access_log));
        }
    }
    let _ = chosen.send(chain.config.clone());
    let stream = sni::Rewind::new(buffered, stream);
    let mut alpn_h2 = false;
    let downstream: BoxIo = match &chain.tls {
        None => Box::new(stream),
        Some(Err(e)) => return Err(ConnError::TlsNotReady(e.clone())),
        Some(Ok(config)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let tls = acceptor.accept(stream).await.map_err(|e| {
                ctx.metrics
                    .downstream_tls_handshake_error
                    .with_label_values(&[&listener.config.name])
                    .inc();
                ConnError::Handshake(e)
            })?;
            log.downstream_identity = tls::peer_identity(tls.get_ref().1.peer_certificates());
            log.peer = ctx
                .metrics
                .peer_from_certificates(tls.get_ref().1.peer_certificates());
            alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Box::new(tls)
        }
    };
    crate::rbac::check_connection(
        &chain.config.rbac,
        &listener.config.name,
        peer,
        local,
        log.downstream_identity.as_deref(),
        log.sni.as_deref(),
        &ctx.metrics,
    )
    .map_err(ConnError::RbacDenied)?;
    match &chain.config.filter {
        NetworkFilter::TcpProxy(tp) => tcp_proxy(tp, ctx, downstream, peer, log).await,
        NetworkFilter::Http(h) => {
            let down = crate::http::server::Downstream {
                listener: Arc::from(listener.config.name.as_str()),
                peer,
                identity: log.downstream_identity.clone(),
                tls: chain.tls.is_some(),
                alpn_h2,
                peer_workload: log.peer.clone(),
                local,
                original_dst: log.original_dst,
                sni: log.sni.clone(),
                telemetry: crate::trace::http::HttpTelemetry::for_connection(
                    &ctx.telemetry,
                    h,
                    &listener.config.name,
                    local,
                    log.sni.clone(),
                ),
            };
            crate::http::server::serve(Arc::new((**h).clone()), ctx.clone(), downstream, down)
                .await
                .map_err(ConnError::from)
        }
    }
}

/// Runs a stream that arrived through the QUIC tunnel on the listener bound
/// to `port`: its chain is chosen by the SNI the peer named, and only
/// passthrough chains (no TLS termination, `tcp_proxy`) are served.
pub(crate) async fn tunnel_stream(
    listener: Arc<ListenerRuntime>,
    ctx: ProxyContext,
    io: BoxIo,
    peer: SocketAddr,
    sni: String,
    port: u16,
) {
    let start = Instant::now();
    let mut log = Log {
        listener: listener.config.name.clone(),
        sni: Some(sni.clone()),
        ..Log::default()
    };
    let info = ConnectionInfo {
        destination_port: port,
        destination_ip: None,
        server_name: Some(&sni),
        transport_protocol: Some(TransportProtocol::Tls),
        application_protocols: &[],
    };
    let chain = chain::select(listener.chains.iter().map(|c| &c.config.matcher), &info)
        .map(|i| &listener.chains[i])
        .or(listener.default_chain.as_ref());
    let result = match chain {
        None => Err(ConnError::NoChain {
            sni: Some(sni.clone()),
            transport: TransportProtocol::Tls,
            port,
        }),
        Some(c) => {
            log.chain = c.config.name.clone();
            match (&c.tls, &c.config.filter) {
                (None, NetworkFilter::TcpProxy(tp)) => {
                    if !tp.access_log.is_empty() {
                        log.access = Some(ctx.telemetry.access_logs.loggers(&tp.access_log));
                    }
                    tcp_proxy(tp, &ctx, io, peer, &mut log).await
                }
                _ => Err(ConnError::TlsNotReady(
                    "tunnel streams are only served by passthrough tcp_proxy chains".into(),
                )),
            }
        }
    };
    let outcome = match &result {
        Ok(()) => log.relay_error.clone().unwrap_or_else(|| "ok".to_string()),
        Err(e) => e.to_string(),
    };
    tracing::debug!(
        target: "isthmus_gateway::access",
        listener = %log.listener,
        chain = %log.chain,
        downstream = %peer,
        via = "quic-tunnel",
        sni = ?log.sni,
        cluster = ?log.cluster,
        upstream = ?log.upstream,
        bytes_rx = log.bytes.downstream_to_upstream,
        bytes_tx = log.bytes.upstream_to_downstream,
        duration_ms = start.elapsed().as_millis() as u64,
        result = %outcome,
        "connection"
    );
    if let Some(loggers) = log.access.take() {
        let wall_start = std::time::SystemTime::now() - start.elapsed();
        let facts = access_facts(&log, &result, peer, None, wall_start, start, &log.listener);
        crate::accesslog::log_tcp(&loggers, &ctx.telemetry.local, facts);
    }
}

async fn tcp_proxy(
    tp: &TcpProxyConfig,
    ctx: &ProxyContext,
    downstream: BoxIo,
    peer: SocketAddr,
    log: &mut Log,
) -> Result<(), ConnError> {
    let cluster_name = choose_cluster(&tp.route, rand::rng().random::<f64>());
    log.cluster = Some(cluster_name.to_string());
    let cluster = ctx
        .clusters
        .borrow()
        .get(cluster_name)
        .ok_or_else(|| UpstreamError::UnknownCluster(cluster_name.to_string()))?;
    // tcp_proxy's hash policy: the downstream source IP.
    let hash = Some(hash64(peer.ip().to_string().as_bytes()));
    let mut tunnel_fallback = false;
    if cluster.config.tunnel {
        if let (Some(tunnel), Some(sni)) = (&ctx.tunnel, log.sni.clone()) {
            if let Some(host) = cluster.lb.pick(hash, &[]) {
                match tunnel
                    .open(
                        host.addr,
                        &sni,
                        host.addr.port(),
                        cluster.config.connect_timeout,
                    )
                    .await
                {
                    Ok(io) => {
                        ctx.metrics
                            .tunnel_connections_total
                            .with_label_values(&[cluster_name, "quic"])
                            .inc();
                        log.upstream = Some(host.addr);
                        log.upstream_identity = Some("quic-tunnel".into());
                        let labels = istio_labels(ctx, log, None);
                        ctx.metrics.record_tcp_open(&labels, "-");
                        let (bytes, result) = relay(downstream, io, tp.idle_timeout).await;
                        log.bytes = bytes;
                        ctx.metrics.record_tcp_close(
                            &labels,
                            "-",
                            bytes.downstream_to_upstream,
                            bytes.upstream_to_downstream,
                        );
                        if let Err(e) = result {
                            log.relay_error = Some(e.to_string());
                        }
                        return Ok(());
                    }
                    Err(e) => {
                        // The tunnel client logs state changes once; this
                        // is per connection.
                        tracing::debug!(cluster = %cluster_name, peer = %host.addr, error = %e, "QUIC tunnel unavailable; falling back to TCP");
                        tunnel_fallback = true;
                    }
                }
            }
        }
    }
    let connected = if cluster.config.discovery == crate::config::Discovery::OriginalDst {
        match log.original_dst {
            Some(dst) => {
                let host = crate::listener::original_dst::host(dst);
                upstream::connect_host(&cluster, &host, &ctx.metrics).await
            }
            // Not redirected: connecting to "the original destination"
            // would connect back to this listener.
            None => Err(UpstreamError::NoHost(cluster_name.to_string())),
        }
    } else {
        upstream::connect(
            &cluster,
            hash,
            tp.max_connect_attempts.unwrap_or(ctx.connect_attempts),
            &ctx.metrics,
        )
        .await
    };
    let up = match connected {
        Ok(up) => up,
        Err(e) => {
            let labels = istio_labels(ctx, log, None);
            let flag = response_flag(&e);
            ctx.metrics.record_tcp_open(&labels, flag);
            ctx.metrics.record_tcp_close(&labels, flag, 0, 0);
            return Err(e.into());
        }
    };
    if tunnel_fallback {
        ctx.metrics
            .tunnel_connections_total
            .with_label_values(&[cluster_name, "tcp"])
            .inc();
    }
    log.upstream = Some(up.addr);
    log.upstream_identity = up.peer_identity.clone();
    let labels = istio_labels(ctx, log, up.peer_identity.as_deref());
    ctx.metrics.record_tcp_open(&labels, "-");
    let _guard = up.guard;
    ctx.metrics
        .tcp_connections_opened
        .with_label_values(&[
            log.listener.as_str(),
            log.downstream_identity.as_deref().unwrap_or("unknown"),
            log.upstream_identity.as_deref().unwrap_or("unknown"),
        ])
        .inc();
    let (bytes, result) = relay(downstream, up.io, tp.idle_timeout).await;
    log.bytes = bytes;
    ctx.metrics.record_tcp_close(
        &labels,
        "-",
        bytes.downstream_to_upstream,
        bytes.upstream_to_downstream,
    );
    if let Err(e) = result {
        log.relay_error = Some(e.to_string());
    }
    Ok(())
}

/// Istio labels of a proxied TCP connection.
fn istio_labels(
    ctx: &ProxyContext,
    log: &Log,
    upstream_principal: Option<&str>,
) -> crate::metrics::CallLabels {
    let reporter = crate::metrics::reporter_of(&log.listener);
    let cluster = log.cluster.as_deref().unwrap_or("");
    let upstream_workload;
    let (peer, principal) = if reporter == "destination" {
        (log.peer.as_deref(), log.downstream_identity.as_deref())
    } else {
        // A TCP callee never describes itself: what EDS said about the
        // chosen endpoint is all the caller knows.
        upstream_workload = log
            .upstream
            .and_then(|addr| endpoint_workload(ctx, cluster, addr));
        (upstream_workload.as_deref(), upstream_principal)
    };
    ctx.metrics
        .call_labels(reporter, peer, principal, cluster, "tcp")
}

/// For an HTTP call whose callee sent no peer metadata: the workload EDS
/// describes at the upstream host the request went to.
pub fn upstream_workload_of(
    ctx: &ProxyContext,
    log: &crate::http::respond::RequestLog,
) -> Option<Arc<crate::metrics::Workload>> {
    endpoint_workload(ctx, log.cluster.as_deref()?, log.upstream_host?)
}

/// The workload EDS describes at `addr` in `cluster` (Istio's
/// `istio.workload` endpoint metadata), if any.
pub fn endpoint_workload(
    ctx: &ProxyContext,
    cluster: &str,
    addr: SocketAddr,
) -> Option<Arc<crate::metrics::Workload>> {
    let table = ctx.clusters.borrow();
    table.get(cluster)?.assignment.as_ref()?.workload_of(addr)
}

/// Envoy's response flag for a connection that never reached a host.
fn response_flag(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Overflow { .. } | UpstreamError::PendingOverflow { .. } => "UO",
        UpstreamError::NoHost(_) => "UH",
        UpstreamError::UnknownCluster(_) => "NC",
        UpstreamError::TlsNotReady { .. } | UpstreamError::ConnectFailed { .. } => "UF",
    }
}

/// Picks a cluster from a route; `r` in `[0, 1)`.
pub fn choose_cluster(route: &TcpRoute, r: f64) -> &str {
    match route {
        TcpRoute::Cluster(c) => c,
        TcpRoute::Weighted(w) => {
            let weights: Vec<f64> = w.iter().map(|(_, x)| f64::from(*x)).collect();
            let i = crate::lb::priority::pick_weighted(&weights, r).unwrap_or(0);
            &w[i].0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_route_choice() {
        let r = TcpRoute::Weighted(vec![("a".into(), 1), ("b".into(), 3)]);
        assert_eq!(choose_cluster(&r, 0.1), "a");
        assert_eq!(choose_cluster(&r, 0.5), "b");
        assert_eq!(choose_cluster(&TcpRoute::Cluster("x".into()), 0.9), "x");
    }
}
