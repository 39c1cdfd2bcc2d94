//! The request side of a stream: xDS requests as they arrive.
//!
//! The per-type services read requests through tonic's `Streaming`, which
//! decodes into one buffer per stream that keeps the size of the largest
//! request it ever held (a `BytesMut` reserves the whole message and never
//! shrinks). On ADS the largest request is the one that subscribes to every
//! EDS cluster by name: about 50 KB at 1,000 services, kept for as long as
//! the proxy stays connected, so 64 KiB of buffer per proxy. ADS therefore
//! reads its request body here: each message is gathered in a buffer of its
//! own and the buffer is gone once prost has decoded it. prost decodes; only
//! the 5-byte gRPC prefix is read here, as [`crate::ads`] writes it on the
//! response side.

use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;

use bytes::{Buf, BytesMut};
use http_body::Body as _;
use prost::Message;
use tonic::body::Body;
use tonic::{Code, Status, Streaming};

/// Requests of one stream, from tonic or from [`Requests`].
pub(crate) enum Inbound<M> {
    Tonic(Streaming<M>),
    Own(Requests<M>),
}

impl<M: Message + Default + 'static> Inbound<M> {
    /// The next request; `Ok(None)` when the client closed its side.
    pub(crate) async fn message(&mut self) -> Result<Option<M>, Status> {
        match self {
            Inbound::Tonic(s) => s.message().await,
            Inbound::Own(r) => r.message().await,
        }
    }
}

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// Length-prefixed, uncompressed gRPC messages from an HTTP/2 request body,
/// each decoded from a buffer of its own (see the module docs).
pub(crate) struct Requests<M> {
    body: Body,
    /// Bytes of a message not complete yet (and, rarely, of the ones after
    /// it); empty, without an allocation, between messages.
    buf: BytesMut,
    max_request_bytes: usize,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Requests<M> {
    pub(crate) fn new(body: Body, max_request_bytes: usize) -> Requests<M> {
        Requests {
            body,
            buf: BytesMut::new(),
            max_request_bytes,
            _message: PhantomData,
        }
    }

    pub(crate) async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(m) = self.decode_buffered()? {
                return Ok(Some(m));
            }
            let frame = poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                Some(Ok(frame)) => {
                    // Trailers end a request stream and carry nothing an
                    // xDS server reads.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                // The client cancelled: as tonic does, the end of the stream.
                Some(Err(status)) if status.code() == Code::Cancelled => return Ok(None),
                Some(Err(status)) => return Err(status),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(Status::internal(format!(
                        "the request stream ended {} bytes into a message",
                        self.buf.len()
                    )))
                }
            }
        }
    }

    /// The first whole message in the buffer, if there is one.
    fn decode_buffered(&mut self) -> Result<Option<M>, Status> {
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            // Requests are never compressed: no grpc-encoding is accepted
            // (tonic answers the same way when it has none enabled).
            return Err(Status::internal(format!(
                "protocol error: request message with compression flag {} (this server accepts only uncompressed requests)",
                self.buf[0]
            )));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_request_bytes {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_request_bytes
            )));
        }
        if self.buf.len() < PREFIX + len {
            // Room for the rest of this message, and no more.
            self.buf.reserve(PREFIX + len - self.buf.len());
            return Ok(None);
        }
        let mut message = self.buf.split_to(PREFIX + len);
        if self.buf.is_empty() {
            // Let go of the allocation, which `message` frees after decoding.
            self.buf = BytesMut::new();
        }
        message.advance(PREFIX);
        M::decode(message.freeze())
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a request failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use http_body_util::StreamBody;

    fn framed(m: &impl Message) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut out).unwrap();
        out
    }

    fn body(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, Status>(http_body::Frame::data(Bytes::from(c))));
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn request(names: usize) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: crate::TypeUrl::ClusterLoadAssignment.as_str().into(),
            resource_names_subscribe: (0..names)
                .map(|i| format!("outbound|9080||svc{i}.default.svc.cluster.local"))
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_frames() {
        let (big, small) = (request(1000), request(1));
        // The big message in 16 KiB frames, the last one sharing its frame
        // with the whole small message.
        let mut bytes = framed(&big);
        bytes.extend(framed(&small));
        let chunks: Vec<Vec<u8>> = bytes.chunks(16 << 10).map(<[u8]>::to_vec).collect();
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body(chunks), 4 << 20);
        assert_eq!(r.message().await.unwrap(), Some(big));
        assert_eq!(r.message().await.unwrap(), Some(small));
        assert_eq!(r.message().await.unwrap(), None);
        assert_eq!(r.buf.capacity(), 0, "no buffer kept between messages");
    }

    #[tokio::test]
    async fn no_buffer_is_kept_after_a_large_request() {
        let bytes = framed(&request(1000));
        let chunks: Vec<Vec<u8>> = bytes.chunks(16 << 10).map(<[u8]>::to_vec).collect();
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body(chunks), 4 << 20);
        assert!(r.message().await.unwrap().is_some());
        assert_eq!(r.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn bad_input_fails_with_a_status() {
        let too_big = framed(&request(100));
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body(vec![too_big.clone()]), 100);
        let e = r.message().await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e}");

        let mut compressed = too_big.clone();
        compressed[0] = 1;
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body(vec![compressed]), 4 << 20);
        assert_eq!(r.message().await.unwrap_err().code(), Code::Internal);

        let truncated = too_big[..too_big.len() - 1].to_vec();
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body(vec![truncated]), 4 << 20);
        let e = r.message().await.unwrap_err();
        assert!(e.message().contains("ended"), "{e}");

        let mut junk = framed(&request(0));
        junk.extend([0, 0, 0, 0, 2, 0xff, 0xff]);
        let mut r = Requests::<DeltaDiscoveryRequest>::new(body(vec![junk]), 4 << 20);
        assert!(r.message().await.unwrap().is_some());
        assert_eq!(r.message().await.unwrap_err().code(), Code::Internal);
    }
}
