//! TCP keepalive of upstream connections: Envoy's
//! `Cluster.upstream_connection_options.tcp_keepalive`, which the control
//! plane emits for a DestinationRule's `connectionPool.tcp.tcpKeepalive`.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use serde::Serialize;

use super::{ConfigError, Ctx};

/// Keepalive probes on every upstream connection of a cluster; a field left
/// unset keeps the operating system's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpKeepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub time: Option<Duration>,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub probes: Option<u32>,
}

pub(super) fn tcp_keepalive(ctx: &Ctx, c: &Cluster) -> Result<Option<TcpKeepalive>, ConfigError> {
    let Some(k) = c
        .upstream_connection_options
        .as_ref()
        .and_then(|o| o.tcp_keepalive.as_ref())
    else {
        return Ok(None);
    };
    // The kernel refuses zero for each of them; say so instead of failing
    // every connection later.
    let positive = |field: &str, v: Option<u32>| match v {
        Some(0) => Err(ctx.err(
            format!("upstream_connection_options.tcp_keepalive.{field}"),
            "must be at least 1",
        )),
        v => Ok(v),
    };
    let secs = |v: Option<u32>| v.map(|s| Duration::from_secs(u64::from(s)));
    Ok(Some(TcpKeepalive {
        time: secs(positive(
            "keepalive_time",
            k.keepalive_time.as_ref().map(|v| v.value),
        )?),
        interval: secs(positive(
            "keepalive_interval",
            k.keepalive_interval.as_ref().map(|v| v.value),
        )?),
        probes: positive(
            "keepalive_probes",
            k.keepalive_probes.as_ref().map(|v| v.value),
        )?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::UpstreamConnectionOptions;
    use envoy_types::pb::envoy::config::core::v3::TcpKeepalive as PbKeepalive;
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn cluster(k: Option<PbKeepalive>) -> Cluster {
        Cluster {
            name: "outbound|80||a".into(),
            upstream_connection_options: k.map(|k| UpstreamConnectionOptions {
                tcp_keepalive: Some(k),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn u(v: u32) -> Option<UInt32Value> {
        Some(UInt32Value { value: v })
    }

    #[test]
    fn reads_the_three_settings_and_keeps_unset_ones_unset() {
        let ctx = Ctx::new("Cluster", "outbound|80||a");
        assert_eq!(tcp_keepalive(&ctx, &cluster(None)), Ok(None));
        let k = PbKeepalive {
            keepalive_probes: u(3),
            keepalive_time: u(30),
            keepalive_interval: None,
        };
        assert_eq!(
            tcp_keepalive(&ctx, &cluster(Some(k))),
            Ok(Some(TcpKeepalive {
                time: Some(Duration::from_secs(30)),
                interval: None,
                probes: Some(3),
            }))
        );
    }

    #[test]
    fn zero_is_refused_with_the_field_named() {
        let ctx = Ctx::new("Cluster", "outbound|80||a");
        let k = PbKeepalive {
            keepalive_interval: u(0),
            ..Default::default()
        };
        let e = tcp_keepalive(&ctx, &cluster(Some(k))).unwrap_err();
        assert_eq!(
            e.field,
            "upstream_connection_options.tcp_keepalive.keepalive_interval"
        );
    }
}
