//! Istio's HTTP peer metadata exchange: each sidecar sends its own node
//! metadata in `x-envoy-peer-metadata` (base64 of a serialized
//! `google.protobuf.Struct`) and its node id in `x-envoy-peer-metadata-id`,
//! on requests (client → server) and on responses (server → client). Using
//! Istio's header names and encoding lets Isthmus and Envoy sidecars label
//! each other's calls in a mixed mesh. The headers are removed before the
//! request reaches the application or the response reaches the caller.

use base64::Engine as _;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;
use serde_json::{Map, Value as Json};

use std::sync::Arc;

use super::workload::Workload;
use super::Metrics;

pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
pub const PEER_METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// Peer metadata keys Istio exchanges; everything else in the node
/// metadata (addresses, interception settings) stays private.
const EXCHANGED: [&str; 7] = [
    "NAME",
    "NAMESPACE",
    "CLUSTER_ID",
    "LABELS",
    "WORKLOAD_NAME",
    "SERVICE_ACCOUNT",
    "MESH_ID",
];

/// Largest header value accepted from a peer (Istio's are a few hundred bytes).
const MAX_HEADER: usize = 8 * 1024;

/// This proxy's two header values, computed once.
#[derive(Debug, Clone)]
pub struct OwnHeaders {
    id: HeaderValue,
    metadata: HeaderValue,
}

impl OwnHeaders {
    /// From the node id and metadata the proxy sends to its control plane.
    /// `None` when a value cannot be a header (never for sane metadata).
    pub fn new(node_id: &str, meta: &Map<String, Json>, pod: &str) -> Option<OwnHeaders> {
        let mut fields = std::collections::BTreeMap::new();
        for k in EXCHANGED {
            if let Some(v) = meta.get(k) {
                fields.insert(k.to_string(), to_proto(v));
            }
        }
        if !fields.contains_key("NAME") && !pod.is_empty() {
            fields.insert("NAME".to_string(), to_proto(&Json::String(pod.to_string())));
        }
        let bytes = Struct {
            fields: fields.into_iter().collect(),
        }
        .encode_to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        Some(OwnHeaders {
            id: HeaderValue::from_str(node_id).ok()?,
            metadata: HeaderValue::from_str(&b64).ok()?,
        })
    }

    /// Adds (replacing any the application set) this proxy's headers.
    pub fn insert(&self, h: &mut HeaderMap) {
        h.insert(PEER_METADATA_ID, self.id.clone());
        h.insert(PEER_METADATA, self.metadata.clone());
    }
}

/// Whether either exchange header is present. Most messages carry neither,
/// and one pass comparing the names present is cheaper than hashing both
/// names for two lookups that find nothing.
fn carries_exchange(h: &HeaderMap) -> bool {
    h.keys()
        .any(|k| k == PEER_METADATA || k == PEER_METADATA_ID)
}

fn remove_exchange(h: &mut HeaderMap) {
    if carries_exchange(h) {
        h.remove(PEER_METADATA);
        h.remove(PEER_METADATA_ID);
    }
}

/// Removes the exchange headers and returns what the peer said about
/// itself; `None` when absent or malformed (a malformed header is dropped,
/// never forwarded).
pub fn take(h: &mut HeaderMap) -> Option<Workload> {
    if !carries_exchange(h) {
        return None;
    }
    let id = h.remove(PEER_METADATA_ID);
    let raw = h.remove(PEER_METADATA)?;
    if raw.len() > MAX_HEADER {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.as_bytes())
        .ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    let meta = struct_to_json(&s);
    let id = id.as_ref().and_then(|v| v.to_str().ok());
    Some(Workload::from_metadata(&meta, id))
}

/// The metadata exchange of one HTTP request, between the request and
/// its response.
#[derive(Debug, Default)]
pub struct Exchange {
    destination: bool,
    /// The peer answered (or asked) with exchange headers.
    spoke: bool,
}

impl Exchange {
    /// On the request: a destination (inbound) proxy learns the caller from
    /// its headers, merged with what its certificate says (`verified`);
    /// the headers never reach the application.
    pub fn on_request(
        metrics: &Metrics,
        reporter: &str,
        verified: Option<&Workload>,
        h: &mut HeaderMap,
    ) -> (Exchange, Option<Arc<Workload>>) {
        let destination = reporter == "destination";
        if !destination {
            // The application's own copy is not ours to forward; the
            // router adds this proxy's headers towards mesh upstreams.
            remove_exchange(h);
            return (Exchange::default(), None);
        }
        let said = take(h);
        let spoke = said.is_some();
        let peer = match (said, verified) {
            (Some(mut w), Some(v)) => {
                // The certificate is authoritative for identity and cluster.
                w.principal.clone_from(&v.principal);
                w.namespace.clone_from(&v.namespace);
                w.service_account.clone_from(&v.service_account);
                if !v.cluster.is_empty() {
                    w.cluster.clone_from(&v.cluster);
                }
                metrics.intern_peer(w)
            }
            (Some(w), None) => metrics.intern_peer(w),
            (None, Some(v)) => metrics.intern_peer(v.clone()),
            (None, None) => None,
        };
        (Exchange { destination, spoke }, peer)
    }

    /// On the response: a destination proxy answers a peer that spoke with
    /// its own headers; a source proxy learns the callee from the
    /// response's headers and removes them before the caller sees them.
    pub fn on_response(&self, metrics: &Metrics, h: &mut HeaderMap) -> Option<Arc<Workload>> {
        if self.destination {
            remove_exchange(h);
            if self.spoke {
                if let Some(own) = metrics.local().exchange_headers() {
                    own.insert(h);
                }
            }
            return None;
        }
        take(h).and_then(|w| metrics.intern_peer(w))
    }
}

fn to_proto(v: &Json) -> Value {
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_proto).collect(),
        }),
        Json::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn struct_to_json(s: &Struct) -> Map<String, Json> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto(v)))
        .collect()
}

fn from_proto(v: &Value) -> Json {
    match &v.kind {
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StructValue(s)) => Json::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(from_proto).collect()),
        Some(Kind::NullValue(_)) | None => Json::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_through_headers_and_removed() {
        let meta = json!({
            "NAMESPACE": "default",
            "CLUSTER_ID": "us-east",
            "LABELS": {"app": "reviews", "version": "v1"},
            "SERVICE_ACCOUNT": "bookinfo-reviews",
            "ISTHMUS_APP_ADDRESS": "10.0.0.1",
        });
        let own = OwnHeaders::new(
            "sidecar~10.0.0.1~reviews-v1.default~default.svc.cluster.local",
            meta.as_object().expect("object"),
            "reviews-v1",
        )
        .expect("headers");
        let mut h = HeaderMap::new();
        own.insert(&mut h);
        let w = take(&mut h).expect("decoded");
        assert!(h.is_empty(), "exchange headers never travel further");
        assert_eq!(w.name, "reviews-v1");
        assert_eq!(w.namespace, "default");
        assert_eq!(w.cluster, "us-east");
        assert_eq!(w.app, "reviews");
        assert_eq!(w.version, "v1");
        assert_eq!(w.service_account, "bookinfo-reviews");
    }

    #[test]
    fn malformed_header_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert(PEER_METADATA, HeaderValue::from_static("%%% not base64"));
        assert!(take(&mut h).is_none());
        assert!(h.get(PEER_METADATA).is_none());
    }
}
