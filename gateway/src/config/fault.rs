//! `envoy.filters.http.fault`: fixed delays and aborts with percentages.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, HttpFault};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use serde::Serialize;

use super::common::duration;
use super::{ConfigError, Ctx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortWith {
    Http(u16),
    /// gRPC status code, sent as a trailers-only response.
    Grpc(u32),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FaultConfig {
    /// Fixed delay and the share of requests delayed, per million.
    pub delay: Option<(Duration, u32)>,
    pub abort: Option<(AbortWith, u32)>,
}

/// A `FractionalPercent` as parts per million (capped at 100%).
pub(crate) fn per_million(
    ctx: &Ctx,
    field: &str,
    p: &FractionalPercent,
) -> Result<u32, ConfigError> {
    let scale: u64 = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => {
            return Err(ctx.err(
                format!("{field}.denominator"),
                format!("unknown denominator {}", p.denominator),
            ))
        }
    };
    Ok((u64::from(p.numerator) * scale).min(1_000_000) as u32)
}

pub fn fault_from_proto(ctx: &Ctx, f: &str, hf: &HttpFault) -> Result<FaultConfig, ConfigError> {
    let full = FractionalPercent {
        numerator: 100,
        denominator: DenominatorType::Hundred as i32,
    };
    let delay = match &hf.delay {
        None => None,
        Some(d) => {
            let fixed = match &d.fault_delay_secifier {
                Some(FaultDelaySecifier::FixedDelay(x)) => duration(
                    ctx,
                    &format!("{f}.delay.fixed_delay"),
                    Some(x),
                    Duration::ZERO,
                )?,
                Some(FaultDelaySecifier::HeaderDelay(_)) | None => {
                    return Err(ctx.err(format!("{f}.delay"), "only fixed_delay is supported"))
                }
            };
            let pct = per_million(
                ctx,
                &format!("{f}.delay.percentage"),
                d.percentage.as_ref().unwrap_or(&full),
            )?;
            Some((fixed, pct))
        }
    };
    let abort = match &hf.abort {
        None => None,
        Some(a) => {
            let with = match &a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => AbortWith::Http(
                    u16::try_from(*s)
                        .ok()
                        .filter(|s| (200..600).contains(s))
                        .ok_or_else(|| {
                            ctx.err(
                                format!("{f}.abort.http_status"),
                                format!("{s} is not an HTTP status (200-599)"),
                            )
                        })?,
                ),
                Some(fault_abort::ErrorType::GrpcStatus(s)) => AbortWith::Grpc(*s),
                _ => {
                    return Err(ctx.err(
                        format!("{f}.abort"),
                        "only http_status and grpc_status aborts are supported",
                    ))
                }
            };
            let pct = per_million(
                ctx,
                &format!("{f}.abort.percentage"),
                a.percentage.as_ref().unwrap_or(&full),
            )?;
            Some((with, pct))
        }
    };
    if hf.max_active_faults.is_some() || !hf.headers.is_empty() || !hf.downstream_nodes.is_empty() {
        return Err(ctx.err(
            f,
            "max_active_faults, headers and downstream_nodes are not supported",
        ));
    }
    Ok(FaultConfig { delay, abort })
}
