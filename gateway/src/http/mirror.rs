//! Request mirroring: fire-and-forget copies to the mirror clusters, never
//! waited for and never affecting the response.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use rand::Rng;

use super::forward::{one_attempt, Forwarding, Head, ReqBody};
use super::pool::Wire;
use crate::config::UpstreamProtocol;
use crate::proxy::connection::ProxyContext;

/// Fire-and-forget copies to mirror clusters (Istio: authority gets `-shadow`).
pub(super) fn mirror(
    ctx: &ProxyContext,
    f: &Forwarding<'_>,
    parts: &http::request::Parts,
    authority: &str,
    body: &Bytes,
) {
    for m in &f.action.mirrors {
        if m.per_million < 1_000_000 && rand::rng().random_range(0..1_000_000) >= m.per_million {
            continue;
        }
        let Some(cluster) = ctx.clusters.borrow().get(&m.cluster) else {
            continue;
        };
        let host = strip_port_of(authority);
        let shadow = match authority.get(host.len()..) {
            Some(port) => format!("{host}-shadow{port}"),
            None => format!("{host}-shadow"),
        };
        let (parts, mut body) = (parts.clone(), ReqBody::Buffered(body.clone()));
        let (ctx, path) = (ctx.clone(), f.path.to_string());
        tokio::spawn(async move {
            let wire = match cluster.http_pool.options().protocol {
                UpstreamProtocol::Http2 => Wire::Http2,
                _ => Wire::Http1,
            };
            let (_, r) = one_attempt(
                &ctx,
                &cluster,
                wire,
                None,
                &[],
                None,
                Head::Owned(parts),
                &mut body,
                &path,
                &shadow,
                Some(Duration::from_secs(10)),
            )
            .await;
            if let Ok(resp) = r {
                // Drain so the pooled connection becomes reusable.
                let _ = resp.into_body().collect().await;
            }
        });
    }
}

fn strip_port_of(a: &str) -> &str {
    match a.rsplit_once(':') {
        Some((h, p))
            if !h.ends_with(']') && !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        Some((h, p)) if h.ends_with(']') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => a,
    }
}
