//! hickory's `RequestHandler` over the decision: reads the current
//! (zone, view) pair, decides, and hands the response to the transport's
//! response handler. EDNS: the response advertises the client's buffer size
//! capped at [`MAX_UDP_PAYLOAD`], and echoes a Client Subnet option with the
//! scope the answer depended on (RFC 7871).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::DNSClass;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::debug;

use crate::decide::{decide, Client, Outcome};
use crate::metrics::DnsMetrics;
use crate::view::Serving;

/// Largest UDP response, whatever the client advertises: the DNS flag day
/// 2020 value, which avoids IP fragmentation on common paths.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

pub struct DnsHandler {
    serving: watch::Receiver<Arc<Serving>>,
    metrics: DnsMetrics,
    /// Drives round robin and weights: exact proportions over each cycle.
    counter: AtomicU64,
}

impl DnsHandler {
    pub fn new(serving: watch::Receiver<Arc<Serving>>, metrics: DnsMetrics) -> DnsHandler {
        DnsHandler {
            serving,
            metrics,
            counter: AtomicU64::new(0),
        }
    }

    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }
}

fn header_only(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

async fn error<R: ResponseHandler>(
    request: &Request,
    edns: Option<&Edns>,
    rcode: ResponseCode,
    mut response: R,
) -> ResponseInfo {
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(e) = edns {
        builder.edns(e);
    }
    let msg = builder.error_msg(&request.metadata, rcode);
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            debug!(error = %e, "cannot send a DNS error response");
            header_only(request, ResponseCode::ServFail)
        }
    }
}

/// The client subnet option of a request, checked: a prefix longer than
/// the address family allows is a malformed request (RFC 7871 §7.1.1).
fn client_subnet(edns: &Edns) -> Result<Option<(ClientSubnet, IpNet)>, ()> {
    match edns.option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => IpNet::new(s.addr(), s.source_prefix())
            .map(|net| Some((*s, net.trunc())))
            .map_err(|_| ()),
        _ => Ok(None),
    }
}

fn result_label(outcome: &Outcome, rcode: ResponseCode, answers: usize) -> &'static str {
    match rcode {
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::Refused => "refused",
        ResponseCode::NoError if answers > 0 => "answer",
        ResponseCode::NoError if outcome.hostname.is_some() && outcome.clusters.is_empty() => {
            "no-healthy-cluster"
        }
        ResponseCode::NoError => "nodata",
        _ => "error",
    }
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        if request.metadata.message_type == MessageType::Response {
            return header_only(request, ResponseCode::FormErr);
        }
        let mut resp_edns = None;
        let mut subnet = None;
        if let Some(req_edns) = request.edns.as_ref() {
            let mut e = Edns::new();
            e.set_max_payload(req_edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e.set_version(0);
            if req_edns.version() > 0 {
                return error(request, Some(&e), ResponseCode::BADVERS, response).await;
            }
            match client_subnet(req_edns) {
                Ok(s) => subnet = s,
                Err(()) => {
                    return error(request, Some(&e), ResponseCode::FormErr, response).await;
                }
            }
            resp_edns = Some(e);
        }
        if request.metadata.op_code != OpCode::Query {
            return error(request, resp_edns.as_ref(), ResponseCode::NotImp, response).await;
        }
        let query = match request.queries.queries() {
            [q] => q,
            _ => return error(request, resp_edns.as_ref(), ResponseCode::FormErr, response).await,
        };
        if query.query_class() != DNSClass::IN {
            return error(request, resp_edns.as_ref(), ResponseCode::Refused, response).await;
        }

        let serving = self.serving.borrow().clone();
        let client = Client {
            source: request.src().ip(),
            subnet: subnet.map(|(_, net)| net),
        };
        let seed = self.counter.fetch_add(1, Ordering::Relaxed);
        let answer = decide(
            &serving.zone,
            &serving.view,
            query.name(),
            query.query_type(),
            &client,
            seed,
        );
        if let (Some(e), Some((mut ecs, _))) = (resp_edns.as_mut(), subnet) {
            ecs.set_scope_prefix(answer.outcome.scope.min(ecs.source_prefix()));
            e.options_mut().insert(EdnsOption::Subnet(ecs));
        }
        self.metrics.query(
            &answer.outcome,
            result_label(&answer.outcome, answer.rcode, answer.answers.len()),
            serving.view.stale,
        );

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.rcode;
        metadata.authoritative = answer.rcode != ResponseCode::Refused;
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(e) = resp_edns.as_ref() {
            builder.edns(e);
        }
        let msg = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        let mut response = response;
        match response.send_response(msg).await {
            Ok(info) => info,
            Err(e) => {
                debug!(error = %e, "cannot send a DNS response");
                header_only(request, ResponseCode::ServFail)
            }
        }
    }
}
