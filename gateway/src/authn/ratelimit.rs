//! `envoy.filters.http.local_ratelimit`: a token bucket per listener (the
//! filter's own config) or per virtual host / route (`typed_per_filter_config`,
//! which replaces the listener's), answering 429 with `x-ratelimit-*`
//! headers once the bucket is empty.
//!
//! The bucket is one atomic word (fill count, tokens) updated with
//! compare-and-swap, so admission never waits on a lock or a task. A bucket
//! lives as long as its config: a changed route configuration starts full
//! buckets, as in Envoy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, RuntimeFractionalPercent};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::google::protobuf::Any;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::common::{duration, unpack};
use crate::config::fault::per_million;
use crate::config::{ConfigError, Ctx};
use crate::http::respond::{grpc_status, local};
use crate::http::{Body, Flags};

pub const LOCAL_RATELIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// Envoy refuses fill intervals below 50 ms.
const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

pub fn type_url() -> &'static str {
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RateLimitConfig {
    pub stat_prefix: String,
    /// Status of the local reply (429 unless `status` says otherwise).
    pub status: u16,
    pub bucket: Option<BucketConfig>,
    /// Share of requests the filter looks at (`filter_enabled`), per million.
    pub enabled_per_million: u32,
    /// Share of limited requests actually refused (`filter_enforced`).
    pub enforced_per_million: u32,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    pub x_ratelimit_headers: bool,
    /// Added to the 429 reply.
    pub response_headers: Vec<(String, String)>,
    /// Added to a limited request that is let through (not enforced).
    pub request_headers_when_not_enforced: Vec<(String, String)>,
    /// Limited gRPC requests get RESOURCE_EXHAUSTED instead of UNAVAILABLE.
    pub resource_exhausted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BucketConfig {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    #[serde(serialize_with = "ser_millis")]
    pub fill_interval: Duration,
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// A parsed filter config with its bucket.
#[derive(Debug, Default)]
pub struct RateLimiter {
    pub config: RateLimitConfig,
    bucket: Option<TokenBucket>,
}

impl PartialEq for RateLimiter {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Eq for RateLimiter {}

impl Serialize for RateLimiter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.config.serialize(s)
    }
}

/// The `x-ratelimit-*` values for a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the next refill (rounded up).
    pub reset_secs: u64,
}

impl RateHeaders {
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
    }
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        let bucket = config.bucket.map(TokenBucket::new);
        Self { config, bucket }
    }

    /// Admits or refuses one request. `Ok` may carry headers for the
    /// response; `Err` is the local reply.
    pub fn admit<B>(
        &self,
        req: &mut Request<B>,
    ) -> Result<Option<RateHeaders>, Box<Response<Body>>> {
        let Some(bucket) = &self.bucket else {
            return Ok(None);
        };
        if !roll(self.config.enabled_per_million) {
            return Ok(None);
        }
        let take = bucket.take(Instant::now());
        let headers = self.config.x_ratelimit_headers.then_some(RateHeaders {
            limit: bucket.cfg.max_tokens,
            remaining: take.remaining,
            reset_secs: take.reset.as_secs() + u64::from(take.reset.subsec_nanos() > 0),
        });
        if take.allowed {
            return Ok(headers);
        }
        if !roll(self.config.enforced_per_million) {
            for (k, v) in &self.config.request_headers_when_not_enforced {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    req.headers_mut().append(k, v);
                }
            }
            return Ok(headers);
        }
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let mut resp = if grpc {
            // RESOURCE_EXHAUSTED (8) or UNAVAILABLE (14), as Envoy maps 429.
            grpc_status(
                if self.config.resource_exhausted {
                    8
                } else {
                    14
                },
                "local_rate_limited",
            )
        } else {
            let mut flags = Flags::default();
            flags.add("RL");
            local(
                StatusCode::from_u16(self.config.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                "local_rate_limited",
                &flags,
            )
        };
        for (k, v) in &self.config.response_headers {
            if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                resp.headers_mut().append(k, v);
            }
        }
        if let Some(h) = headers {
            h.apply(resp.headers_mut());
        }
        Err(Box::new(resp))
    }
}

fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000
        || (per_million > 0 && rand::rng().random_range(0..1_000_000) < per_million)
}

#[derive(Debug)]
struct TokenBucket {
    cfg: BucketConfig,
    start: Instant,
    /// High 32 bits: fill intervals elapsed since `start` at the last
    /// update; low 32 bits: tokens left.
    state: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Take {
    allowed: bool,
    remaining: u32,
    reset: Duration,
}

impl TokenBucket {
    fn new(cfg: BucketConfig) -> Self {
        Self {
            cfg,
            start: Instant::now(),
            state: AtomicU64::new(u64::from(cfg.max_tokens)),
        }
    }

    fn take(&self, now: Instant) -> Take {
        let elapsed = now.saturating_duration_since(self.start);
        let interval = self.cfg.fill_interval.as_nanos().max(1);
        // u32 fills of at least 50 ms last over six years; saturate beyond.
        let fills_now = u32::try_from(elapsed.as_nanos() / interval).unwrap_or(u32::MAX);
        let into_interval = elapsed.as_nanos() % interval;
        let reset = Duration::from_nanos(u64::try_from(interval - into_interval).unwrap_or(0));
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let (fills, tokens) = ((cur >> 32) as u32, cur as u32);
            let refilled = if fills_now > fills {
                let add = u64::from(fills_now - fills) * u64::from(self.cfg.tokens_per_fill);
                (u64::from(tokens) + add).min(u64::from(self.cfg.max_tokens)) as u32
            } else {
                tokens
            };
            let (allowed, left) = match refilled.checked_sub(1) {
                Some(left) => (true, left),
                None => (false, 0),
            };
            let next = (u64::from(fills_now.max(fills)) << 32) | u64::from(left);
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Take {
                        allowed,
                        remaining: left,
                        reset,
                    }
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

pub(crate) fn from_any(ctx: &Ctx, f: &str, any: &Any) -> Result<RateLimiter, ConfigError> {
    let pb: LocalRateLimit = unpack(ctx, f, any)?;
    from_proto(ctx, f, &pb)
}

pub(crate) fn from_proto(
    ctx: &Ctx,
    f: &str,
    pb: &LocalRateLimit,
) -> Result<RateLimiter, ConfigError> {
    let unsupported = |field: &str| {
        ctx.err(
            format!("{f}.{field}"),
            format!("{field} is not supported by the local rate limiter"),
        )
    };
    if !pb.descriptors.is_empty() {
        return Err(unsupported("descriptors"));
    }
    if !pb.rate_limits.is_empty() {
        return Err(unsupported("rate_limits"));
    }
    if pb.local_rate_limit_per_downstream_connection {
        return Err(unsupported("local_rate_limit_per_downstream_connection"));
    }
    if pb.local_cluster_rate_limit.is_some() {
        return Err(unsupported("local_cluster_rate_limit"));
    }
    let bucket = match &pb.token_bucket {
        None => None,
        Some(tb) => {
            if tb.max_tokens == 0 {
                return Err(ctx.err(format!("{f}.token_bucket.max_tokens"), "must be at least 1"));
            }
            let tokens_per_fill = tb.tokens_per_fill.as_ref().map_or(1, |v| v.value);
            if tokens_per_fill == 0 {
                return Err(ctx.err(
                    format!("{f}.token_bucket.tokens_per_fill"),
                    "must be at least 1",
                ));
            }
            let fill_interval = duration(
                ctx,
                &format!("{f}.token_bucket.fill_interval"),
                tb.fill_interval.as_ref(),
                Duration::ZERO,
            )?;
            if fill_interval < MIN_FILL_INTERVAL {
                return Err(ctx.err(
                    format!("{f}.token_bucket.fill_interval"),
                    format!(
                        "{fill_interval:?} is shorter than the minimum of {MIN_FILL_INTERVAL:?} (or missing)"
                    ),
                ));
            }
            Some(BucketConfig {
                max_tokens: tb.max_tokens,
                tokens_per_fill,
                fill_interval,
            })
        }
    };
    let fraction =
        |field: &str, v: &Option<RuntimeFractionalPercent>| -> Result<u32, ConfigError> {
            // Envoy: an absent fraction means 0% (the filter does nothing).
            match v.as_ref().and_then(|r| r.default_value.as_ref()) {
                None => Ok(0),
                Some(p) => per_million(ctx, &format!("{f}.{field}.default_value"), p),
            }
        };
    let status = match pb.status.as_ref().map(|s| s.code) {
        None | Some(0) => 429,
        Some(code) => u16::try_from(code)
            .ok()
            .filter(|c| (400..600).contains(c))
            .ok_or_else(|| {
                ctx.err(
                    format!("{f}.status.code"),
                    format!("{code} is not an HTTP error status (400-599)"),
                )
            })?,
    };
    let headers =
        |field: &str, v: &[HeaderValueOption]| -> Result<Vec<(String, String)>, ConfigError> {
            v.iter()
                .enumerate()
                .map(|(i, o)| {
                    let h = o
                        .header
                        .as_ref()
                        .ok_or_else(|| ctx.err(format!("{f}.{field}[{i}].header"), "missing"))?;
                    let value = if h.value.is_empty() {
                        String::from_utf8_lossy(&h.raw_value).into_owned()
                    } else {
                        h.value.clone()
                    };
                    if HeaderName::try_from(h.key.to_ascii_lowercase()).is_err()
                        || HeaderValue::try_from(value.as_str()).is_err()
                    {
                        return Err(ctx.err(
                            format!("{f}.{field}[{i}].header"),
                            format!("{:?}: {value:?} is not a valid header", h.key),
                        ));
                    }
                    Ok((h.key.to_ascii_lowercase(), value))
                })
                .collect()
        };
    Ok(RateLimiter::new(RateLimitConfig {
        stat_prefix: pb.stat_prefix.clone(),
        status,
        bucket,
        enabled_per_million: fraction("filter_enabled", &pb.filter_enabled)?,
        enforced_per_million: fraction("filter_enforced", &pb.filter_enforced)?,
        x_ratelimit_headers: pb.enable_x_ratelimit_headers == 1,
        response_headers: headers("response_headers_to_add", &pb.response_headers_to_add)?,
        request_headers_when_not_enforced: headers(
            "request_headers_to_add_when_not_enforced",
            &pb.request_headers_to_add_when_not_enforced,
        )?,
        resource_exhausted: pb.rate_limited_as_resource_exhausted,
    }))
}

/// The limiter for a request on `route`: per-route config, else the
/// virtual host's, else the filter's own — only when the filter is in the
/// chain at all (`filter`), as in Envoy.
pub fn admit_route<B>(
    filter: Option<&RateLimiter>,
    vhost: &crate::config::VirtualHost,
    route: &crate::config::Route,
    req: &mut Request<B>,
) -> Result<Option<RateHeaders>, Box<Response<Body>>> {
    let Some(filter) = filter else {
        return Ok(None);
    };
    let limiter = route
        .ratelimit
        .as_deref()
        .or(vhost.ratelimit.as_deref())
        .unwrap_or(filter);
    limiter.admit(req)
}

/// `typed_per_filter_config` entry of this filter (by name or type URL).
pub(crate) fn is_per_route(name: &str, any: &Any) -> bool {
    name == LOCAL_RATELIMIT_FILTER || any.type_url == type_url()
}

/// The per-route (or per-virtual-host) limiter, if configured; it replaces
/// the listener-level config for requests on that route.
pub(crate) fn per_route(
    ctx: &Ctx,
    f: &str,
    m: &std::collections::HashMap<String, Any>,
) -> Result<Option<std::sync::Arc<RateLimiter>>, ConfigError> {
    for (name, any) in m {
        if is_per_route(name, any) {
            let field = format!("{f}.typed_per_filter_config[{name:?}]");
            return Ok(Some(std::sync::Arc::new(from_any(ctx, &field, any)?)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(max: u32, per_fill: u32, ms: u64) -> TokenBucket {
        TokenBucket::new(BucketConfig {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(ms),
        })
    }

    #[test]
    fn bucket_empties_and_refills_by_interval() {
        let b = bucket(3, 2, 1000);
        let t0 = b.start;
        let takes: Vec<_> = (0..4).map(|_| b.take(t0).allowed).collect();
        assert_eq!(takes, [true, true, true, false]);
        let t = b.take(t0 + Duration::from_millis(400));
        assert!(!t.allowed);
        assert_eq!(t.reset, Duration::from_millis(600));
        // One interval adds two tokens, capped by max_tokens.
        let t1 = t0 + Duration::from_millis(1000);
        assert!(b.take(t1).allowed);
        let t = b.take(t1);
        assert!(t.allowed);
        assert_eq!(t.remaining, 0);
        assert!(!b.take(t1).allowed);
        // A long pause refills only up to max_tokens.
        let later = t0 + Duration::from_secs(60);
        let n = (0..10).filter(|_| b.take(later).allowed).count();
        assert_eq!(n, 3);
    }

    #[test]
    fn concurrent_takes_never_exceed_the_bucket() {
        let b = std::sync::Arc::new(bucket(1000, 1, 3_600_000));
        let now = b.start;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..500).filter(|_| b.take(now).allowed).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn config_is_checked() {
        use envoy_types::pb::envoy::r#type::v3::TokenBucket as PbBucket;
        let ctx = Ctx::new("Listener", "l");
        let mut pb = LocalRateLimit {
            token_bucket: Some(PbBucket {
                max_tokens: 5,
                tokens_per_fill: None,
                fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 0,
                    nanos: 10_000_000,
                }),
            }),
            ..Default::default()
        };
        let e = from_proto(&ctx, "f", &pb).expect_err("10ms interval");
        assert_eq!(e.field, "f.token_bucket.fill_interval");
        pb.token_bucket = Some(PbBucket {
            max_tokens: 5,
            tokens_per_fill: None,
            fill_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
        });
        let rl = from_proto(&ctx, "f", &pb).expect("valid");
        assert_eq!(rl.config.status, 429);
        // No filter_enabled: Envoy's default of 0% leaves requests alone.
        assert_eq!(rl.config.enabled_per_million, 0);
        let mut req = Request::new(());
        for _ in 0..10 {
            assert!(rl.admit(&mut req).is_ok());
        }
    }
}
