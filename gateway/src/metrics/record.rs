//! Recording Istio's standard metrics: who this proxy is ([`LocalProxy`]),
//! what a finished HTTP request or TCP connection looked like, and how both
//! sides of the call become labels.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use super::http_handles::{HttpHandles, HttpInputs};
use super::istio::{CallLabels, ServiceName};
use super::peer::OwnHeaders;
use super::workload::{spiffe_ns_sa, spiffe_trust_domain, Workload};
use super::{Metrics, MetricsError};
use crate::tls::CertReceiver;
use crate::NodeIdentity;

/// What the HTTP layer knows when a request ends.
#[derive(Debug, Clone, Default)]
pub struct HttpCall<'a> {
    /// `source` or `destination`.
    pub reporter: &'a str,
    /// The verified SPIFFE ID of the downstream (inbound mTLS).
    pub downstream_principal: Option<&'a str>,
    /// The other side, from peer metadata (request headers inbound,
    /// response headers outbound) and certificates.
    pub peer: Option<&'a Arc<Workload>>,
    /// The upstream cluster the request was sent to.
    pub cluster: Option<&'a str>,
    pub grpc: bool,
    pub status: u16,
    pub grpc_status: Option<&'a str>,
    pub flags: &'a str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_ms: f64,
}

/// This proxy's own side of every call.
#[derive(Debug, Clone, Default)]
pub struct LocalProxy {
    workload: Workload,
    /// An east-west gateway forwards only to its own cluster's endpoints.
    eastwest: bool,
    cert: Option<CertReceiver>,
    headers: Option<OwnHeaders>,
}

impl LocalProxy {
    pub fn new(node: &NodeIdentity, cert: Option<CertReceiver>) -> LocalProxy {
        let mut meta = node.metadata.clone();
        if !meta.contains_key("CLUSTER_ID") && !node.cluster.is_empty() {
            meta.insert("CLUSTER_ID".into(), node.cluster.clone().into());
        }
        let workload = Workload::from_metadata(&meta, Some(&node.id));
        let headers = OwnHeaders::new(&node.id, &meta, &workload.name);
        let eastwest = meta.get("ISTHMUS_ROLE").and_then(|v| v.as_str()) == Some("east-west");
        LocalProxy {
            workload,
            eastwest,
            cert,
            headers,
        }
    }

    /// The proxy's workload with its current principal.
    pub fn workload(&self) -> Workload {
        let mut w = self.workload.clone();
        if let Some(c) = &self.cert {
            if let Some(id) = c.borrow().spiffe_id() {
                w.principal = id.to_string();
            }
        }
        w
    }

    pub fn trust_domain(&self) -> Option<String> {
        let c = self.cert.as_ref()?.borrow();
        spiffe_trust_domain(c.spiffe_id()?).map(str::to_string)
    }

    /// Istio's peer metadata headers describing this proxy.
    pub fn exchange_headers(&self) -> Option<&OwnHeaders> {
        self.headers.as_ref()
    }
}

impl Metrics {
    /// Metrics of a proxy with this node identity; `cert` is its workload
    /// certificate (its SPIFFE ID is the proxy's principal).
    pub fn for_node(
        node: &NodeIdentity,
        cert: Option<CertReceiver>,
    ) -> Result<Metrics, MetricsError> {
        let mut m = Metrics::new()?;
        m.local = LocalProxy::new(node, cert);
        Ok(m)
    }

    /// The proxy's own side of calls.
    pub fn local(&self) -> &LocalProxy {
        &self.local
    }

    /// The peer described by a verified certificate chain (leaf first), if
    /// it carries a SPIFFE ID.
    pub fn peer_from_certificates(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
    ) -> Option<Arc<Workload>> {
        let leaf = certs?.first()?;
        let id = crate::tls::verify::spiffe_uri(leaf)?;
        self.peers
            .intern(Workload::from_certificate(leaf.as_ref(), &id))
    }

    /// A peer description from untrusted input (peer metadata headers),
    /// deduplicated and bounded: `None` past the bound.
    pub fn intern_peer(&self, w: Workload) -> Option<Arc<Workload>> {
        self.peers.intern(w)
    }

    /// Records one finished HTTP request in Istio's metrics.
    pub fn record_http(&self, c: &HttpCall<'_>) {
        // The Arc is cloned out so the watch is not borrowed while the
        // labels are built (which borrows it again).
        let cert = self.local.cert.as_ref().map(|r| r.borrow().clone());
        let inputs = HttpInputs {
            reporter: c.reporter,
            peer: c.peer,
            downstream_principal: c.downstream_principal,
            cluster: c.cluster.unwrap_or(""),
            grpc: c.grpc,
            status: c.status,
            grpc_status: c.grpc_status,
            flags: c.flags,
            local_id: cert.as_ref().and_then(|w| w.spiffe_id()),
        };
        self.istio.http_handles.record(
            &inputs,
            || self.http_handles(c),
            c.duration_ms,
            c.request_bytes,
            c.response_bytes,
        );
    }

    /// The four HTTP metrics of the label set `c` maps to.
    fn http_handles(&self, c: &HttpCall<'_>) -> HttpHandles {
        let labels = self.call_labels(
            c.reporter,
            c.peer.map(|p| &**p),
            c.downstream_principal,
            c.cluster.unwrap_or(""),
            if c.grpc { "grpc" } else { "http" },
        );
        let code = c.status.to_string();
        let values = labels.http(c.flags, &code, c.grpc_status.unwrap_or(""));
        let i = &self.istio;
        HttpHandles {
            requests: i.requests_total.with_label_values(&values),
            duration: i.request_duration.with_label_values(&values),
            request_bytes: i.request_bytes.with_label_values(&values),
            response_bytes: i.response_bytes.with_label_values(&values),
        }
    }

    /// A TCP connection was proxied (or refused, with `flags` saying why).
    pub fn record_tcp_open(&self, labels: &CallLabels, flags: &str) {
        self.istio
            .tcp_opened
            .with_label_values(&labels.tcp(flags))
            .inc();
    }

    /// A TCP connection ended; bytes as seen from the downstream side.
    pub fn record_tcp_close(&self, labels: &CallLabels, flags: &str, received: u64, sent: u64) {
        let v = labels.tcp(flags);
        let i = &self.istio;
        i.tcp_closed.with_label_values(&v).inc();
        i.tcp_received.with_label_values(&v).inc_by(received);
        i.tcp_sent.with_label_values(&v).inc_by(sent);
    }

    /// Labels of one call as this proxy reports it. `peer` is the other
    /// side as far as it is known; `peer_principal` the verified identity
    /// of the downstream (destination reporter) or upstream (source).
    pub fn call_labels(
        &self,
        reporter: &str,
        peer: Option<&Workload>,
        peer_principal: Option<&str>,
        cluster: &str,
        protocol: &str,
    ) -> CallLabels {
        let me = self.local.workload();
        let mut other = peer.cloned().unwrap_or_default();
        if let Some(p) = peer_principal.filter(|p| p.starts_with("spiffe://")) {
            // The certificate beats whatever the peer said about itself.
            other.principal = p.to_string();
            if let Some((ns, sa)) = spiffe_ns_sa(p) {
                other.namespace = ns.to_string();
                other.service_account = sa.to_string();
            }
        }
        if reporter == "destination" {
            let security = if other.principal.is_empty() {
                "none"
            } else {
                "mutual_tls"
            };
            let svc = ServiceName::of_workload(&me);
            CallLabels::new(reporter, &other, &me, &svc, protocol, security)
        } else {
            if other.principal.is_empty() && !other.service_account.is_empty() {
                // A peer that answered the metadata exchange is a mesh
                // workload reached over verified mTLS in our trust domain.
                if let Some(td) = self.local.trust_domain() {
                    other.principal = format!(
                        "spiffe://{td}/ns/{}/sa/{}",
                        other.namespace, other.service_account
                    );
                }
            }
            if self.local.eastwest && other.cluster.is_empty() {
                other.cluster.clone_from(&me.cluster);
            }
            let svc = ServiceName::from_cluster(cluster);
            CallLabels::new(reporter, &me, &other, &svc, protocol, "unknown")
        }
    }
}
