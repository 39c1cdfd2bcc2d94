//! The aggregated discovery service (ADS), with response bodies of our own.
//!
//! tonic encodes all messages of a response stream into one buffer that it
//! keeps, at the size of the largest batch it ever encoded, until the
//! stream ends (a `BytesMut` never shrinks, and reclaims its allocation once
//! the part handed to the transport is freed). For ADS that batch is the
//! initial CDS, or one route configuration with a thousand virtual hosts:
//! measured with heaptrack at 1,000 services, 1.3 to 2 MB per connected
//! proxy, for as long as it stays connected. So here prost encodes the
//! messages, but each response message goes to hyper in a buffer of its own
//! (the gRPC length prefix and the message), freed as soon as h2 has
//! written it. Requests are read the same way, for the same reason (see
//! [`crate::inbound`]).
//!
//! The per-type services (`cds()` and so on) keep tonic's generated servers.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use futures::Stream;
use http_body::Frame;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

use crate::inbound::{Inbound, Requests};
use crate::outbound::{Plan, ResponseStream};
use crate::service::XdsService;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The ADS server to mount, from [`crate::XdsServer::ads`].
#[derive(Clone)]
pub struct AdsServer {
    service: XdsService,
    /// Serves whatever is not one of the two streaming methods (an unknown
    /// method, answered as tonic answers it).
    generated: AggregatedDiscoveryServiceServer<XdsService>,
    max_request_bytes: usize,
}

impl AdsServer {
    pub(crate) fn new(service: XdsService, max_request_bytes: usize) -> AdsServer {
        AdsServer {
            generated: AggregatedDiscoveryServiceServer::new(service.clone())
                .max_decoding_message_size(max_request_bytes),
            service,
            max_request_bytes,
        }
    }
}

impl NamedService for AdsServer {
    const NAME: &'static str = <AggregatedDiscoveryServiceServer<XdsService> as NamedService>::NAME;
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for AdsServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> ResponseFuture {
        let service = self.service.clone();
        let max = self.max_request_bytes;
        match req.uri().path() {
            SOTW_PATH => Box::pin(async move {
                let req = decode::<DiscoveryRequest>(req, max);
                Ok(respond(service.open_sotw(req).await))
            }),
            DELTA_PATH => Box::pin(async move {
                let req = decode::<DeltaDiscoveryRequest>(req, max);
                Ok(respond(service.open_delta(req).await))
            }),
            _ => {
                let mut generated = self.generated.clone();
                Box::pin(async move { generated.call(req).await })
            }
        }
    }
}

/// The request stream, read by [`Requests`] (see [`crate::inbound`]);
/// metadata and extensions (the TLS peer) are kept for the authorizer.
fn decode<M: Message + Default + Send + 'static>(
    req: http::Request<Body>,
    max_request_bytes: usize,
) -> Request<Inbound<M>> {
    let (parts, body) = req.into_parts();
    let requests = Inbound::Own(Requests::new(body, max_request_bytes));
    Request::from_http(http::Request::from_parts(parts, requests))
}

fn respond<P: Plan>(opened: Result<Response<ResponseStream<P>>, Status>) -> http::Response<Body>
where
    P::Message: Message,
{
    match opened {
        Err(status) => status.into_http(),
        Ok(response) => {
            let (metadata, stream, _) = response.into_parts();
            let mut http = http::Response::new(Body::new(GrpcBody {
                stream,
                done: false,
            }));
            *http.headers_mut() = metadata.into_headers();
            http.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            http
        }
    }
}

/// A gRPC response body: one data frame per message, then the status in
/// the trailers.
struct GrpcBody<P: Plan> {
    stream: ResponseStream<P>,
    done: bool,
}

impl<P: Plan> http_body::Body for GrpcBody<P>
where
    P::Message: Message,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let status = match ready!(Pin::new(&mut this.stream).poll_next(cx)) {
            Some(Ok(message)) => match encode(&message) {
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(status) => status,
            },
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.done = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(unsendable) = status.add_header(&mut trailers) {
            // The message cannot be a header value; the code still can.
            trailers.clear();
            let _ = Status::new(unsendable.code(), "(message not representable in a header)")
                .add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One length-prefixed gRPC message (not compressed) in a buffer of exactly
/// its size.
fn encode(message: &impl Message) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "a response of {len} bytes is larger than gRPC can frame"
        ))
    })?;
    let mut buf = Vec::with_capacity(5 + len);
    buf.push(0);
    buf.extend_from_slice(&prefix.to_be_bytes());
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("encoding a response failed: {e}")))?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;

    #[test]
    fn a_frame_is_the_prefix_and_the_message_in_an_exact_buffer() {
        let m = DiscoveryResponse {
            version_info: "v1".into(),
            nonce: "n".into(),
            ..Default::default()
        };
        let bytes = encode(&m).unwrap();
        assert_eq!(bytes.len(), 5 + m.encoded_len());
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
            m.encoded_len()
        );
        assert_eq!(DiscoveryResponse::decode(&bytes[5..]).unwrap(), m);
    }
}
