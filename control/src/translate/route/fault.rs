//! Fault injection: the per-route configuration of the fault filter.

use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};

use crate::config::{HttpFaultInjection, IntPercent, Percent};

use super::super::proto::duration;

/// Istio percentages are 0..100 with decimals: per million keeps them exact
/// down to 0.0001%.
pub(super) fn fraction(p: &Percent) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.value.get() * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

pub(super) fn int_fraction(p: IntPercent) -> FractionalPercent {
    FractionalPercent {
        numerator: p.get(),
        denominator: DenominatorType::Hundred as i32,
    }
}

pub(super) fn full() -> FractionalPercent {
    FractionalPercent {
        numerator: 100,
        denominator: DenominatorType::Hundred as i32,
    }
}

/// The per-route configuration of the fault filter.
pub fn fault_config(f: &HttpFaultInjection) -> HttpFault {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = d.fixed_delay.as_ref()?;
        Some(FaultDelay {
            percentage: Some(
                d.percentage
                    .as_ref()
                    .map(fraction)
                    .or_else(|| d.percent.map(int_fraction))
                    .unwrap_or_else(full),
            ),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                fixed.as_std(),
            ))),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error = if let Some(code) = a.http_status {
            fault_abort::ErrorType::HttpStatus(u32::try_from(code).ok()?)
        } else {
            fault_abort::ErrorType::GrpcStatus(grpc_code(a.grpc_status.as_deref()?)?)
        };
        Some(FaultAbort {
            percentage: Some(a.percentage.as_ref().map(fraction).unwrap_or_else(full)),
            error_type: Some(error),
            ..Default::default()
        })
    });
    HttpFault {
        delay,
        abort,
        ..Default::default()
    }
}

/// gRPC status names (Istio takes them as strings) to codes.
pub(super) fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
        .or_else(|| name.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes() {
        assert_eq!(grpc_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_code("unauthenticated"), Some(16));
        assert_eq!(grpc_code("7"), Some(7));
        assert_eq!(grpc_code("NOPE"), None);
    }

    #[test]
    fn fault_percentages() {
        let f: HttpFaultInjection = serde_yaml_ng::from_str(
            "delay:\n  fixedDelay: 5s\n  percentage: {value: 12.5}\nabort:\n  httpStatus: 503\n",
        )
        .expect("parses");
        let cfg = fault_config(&f);
        let delay = cfg.delay.expect("delay");
        assert_eq!(delay.percentage.map(|p| p.numerator), Some(125_000));
        assert_eq!(
            cfg.abort.and_then(|a| a.percentage).map(|p| p.denominator),
            Some(DenominatorType::Hundred as i32)
        );
    }
}
