//! What the application in the pod sees through outbound capture (15001):
//! registry services over mTLS and passthrough under ALLOW_ANY, then the
//! BlackHole/block_all behaviour under REGISTRY_ONLY.

use std::net::SocketAddr;

use crate::app::{app_http_get, app_roundtrip, eventually};
use crate::NET_IP;

/// As the application in the pod (outbound capture through 15001).
pub(crate) fn outbound_and_passthrough(pod: &str, outside: SocketAddr) {
    // A registry service by any address on its port: the proxy's listener
    // for 7000 originates mTLS to the remote sidecar, which only accepts
    // the pod's identity.
    let reply = eventually("captured TCP to the echo service", || {
        app_roundtrip(pod, "10.96.0.10:7000", "hello").and_then(|r| {
            if r == "echo:hello" {
                Ok(r)
            } else {
                Err(format!("unexpected reply {r:?}"))
            }
        })
    });
    assert_eq!(reply, "echo:hello");
    // ALLOW_ANY: an unknown destination passes through to where the app
    // was going. Had the proxy's own connection been captured again, it
    // would loop back into 15001 instead of reaching the server.
    let reply = eventually("passthrough to an unknown destination", || {
        app_roundtrip(pod, &outside.to_string(), "anyone").and_then(|r| {
            if r == "outside:anyone" {
                Ok(r)
            } else {
                Err(format!("unexpected reply {r:?}"))
            }
        })
    });
    assert_eq!(reply, "outside:anyone");
    // HTTP to an unknown host on a mesh HTTP port: allow_any → PassthroughCluster.
    let resp = eventually("allow_any HTTP passthrough", || {
        app_http_get(pod, &format!("{NET_IP}:8080"), "unknown.example").and_then(|r| {
            if r.starts_with("HTTP/1.1 200") {
                Ok(r)
            } else {
                Err(format!("unexpected response {r:?}"))
            }
        })
    });
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

pub(crate) fn registry_only_checks(pod: &str, outside: SocketAddr) {
    // TCP to an unknown destination: BlackHoleCluster closes it.
    eventually("REGISTRY_ONLY closes unknown TCP", || {
        match app_roundtrip(pod, &outside.to_string(), "blocked") {
            Ok(r) if r.is_empty() => Ok(()),
            Err(_) => Ok(()),
            Ok(r) => Err(format!("reached the unknown destination: {r:?}")),
        }
    });
    // HTTP to an unknown host: block_all answers 502.
    let resp = eventually("block_all 502", || {
        app_http_get(pod, &format!("{NET_IP}:8080"), "unknown.example").and_then(|r| {
            if r.starts_with("HTTP/1.1 502") {
                Ok(r)
            } else {
                Err(format!("unexpected response {r:?}"))
            }
        })
    });
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    // Registry services still work.
    let reply = eventually("captured TCP to the echo service (REGISTRY_ONLY)", || {
        app_roundtrip(pod, "10.96.0.10:7000", "again").and_then(|r| {
            if r == "echo:again" {
                Ok(r)
            } else {
                Err(format!("unexpected reply {r:?}"))
            }
        })
    });
    assert_eq!(reply, "echo:again");
}
