//! `envoy.config.rbac.v3.RBAC` protos → [`RbacFilter`]. Anything the data
//! plane cannot evaluate exactly as Envoy would is refused with the field
//! path, so it becomes a precise NACK instead of a silently weaker policy.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action as PbAction, Permission as PbPermission,
    Principal as PbPrincipal, Rbac as PbRbac,
};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, path_matcher, value_matcher,
    MetadataMatcher, PathMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::{
    Cidr, MetadataMatch, Permission, Policy, Principal, RbacAction, RbacFilter, Rules, ValueMatch,
};
use crate::config::route_match::{header_match, string_match as string};
use crate::config::{ConfigError, Ctx, HeaderMatch, StringMatchCase};

/// Deep trees are refused rather than risking stack exhaustion while
/// evaluating; Istio's output is a handful of levels deep.
const MAX_DEPTH: usize = 32;

fn decode<T: Message + Default + prost::Name>(
    ctx: &Ctx,
    field: &str,
    any: &Any,
) -> Result<T, ConfigError> {
    if any.type_url != T::type_url() {
        return Err(ctx.err(
            field,
            format!("expected {}, got {}", T::type_url(), any.type_url),
        ));
    }
    T::decode(any.value.as_slice()).map_err(|e| ctx.err(field, format!("undecodable: {e}")))
}

/// The typed config of an `envoy.filters.http.rbac` filter.
pub(crate) fn http_rbac_from_proto(
    ctx: &Ctx,
    field: &str,
    name: &str,
    any: &Any,
) -> Result<RbacFilter, ConfigError> {
    let pb: HttpRbac = decode(ctx, field, any)?;
    if pb.matcher.is_some() {
        return Err(ctx.err(
            format!("{field}.matcher"),
            "the matcher API is not supported; use rules",
        ));
    }
    // Shadow rules only produce stats in Envoy; nothing to enforce.
    let rules = match &pb.rules {
        Some(r) => Some(rules(ctx, &format!("{field}.rules"), r)?),
        None => None,
    };
    Ok(RbacFilter {
        name: name.to_string(),
        stat_prefix: pb.rules_stat_prefix,
        rules,
    })
}

/// The typed config of an `envoy.filters.network.rbac` filter.
pub(crate) fn network_rbac_from_proto(
    ctx: &Ctx,
    field: &str,
    name: &str,
    any: &Any,
) -> Result<RbacFilter, ConfigError> {
    let pb: NetworkRbac = decode(ctx, field, any)?;
    if pb.matcher.is_some() {
        return Err(ctx.err(
            format!("{field}.matcher"),
            "the matcher API is not supported; use rules",
        ));
    }
    if pb.enforcement_type != 0 {
        return Err(ctx.err(
            format!("{field}.enforcement_type"),
            "only ONE_TIME_ON_FIRST_BYTE is supported",
        ));
    }
    if pb.delay_deny.is_some() {
        return Err(ctx.err(format!("{field}.delay_deny"), "not supported"));
    }
    let rules = match &pb.rules {
        Some(r) => Some(rules(ctx, &format!("{field}.rules"), r)?),
        None => None,
    };
    Ok(RbacFilter {
        name: name.to_string(),
        stat_prefix: pb.stat_prefix,
        rules,
    })
}

fn rules(ctx: &Ctx, f: &str, pb: &PbRbac) -> Result<Rules, ConfigError> {
    let action = match PbAction::try_from(pb.action) {
        Ok(PbAction::Allow) => RbacAction::Allow,
        Ok(PbAction::Deny) => RbacAction::Deny,
        Ok(PbAction::Log) => RbacAction::Log,
        Err(_) => {
            return Err(ctx.err(
                format!("{f}.action"),
                format!("unknown action {}", pb.action),
            ))
        }
    };
    if pb.audit_logging_options.is_some() {
        tracing::debug!("RBAC audit_logging_options ignored; decisions are logged by the proxy");
    }
    let mut names: Vec<&String> = pb.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        let p = &pb.policies[name];
        let pf = format!("{f}.policies[{name:?}]");
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(ctx.err(
                format!("{pf}.condition"),
                "CEL conditions are not supported",
            ));
        }
        if p.permissions.is_empty() || p.principals.is_empty() {
            return Err(ctx.err(
                &pf,
                "a policy needs at least one permission and one principal",
            ));
        }
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(ctx, &format!("{pf}.permissions[{i}]"), x, 0))
            .collect::<Result<_, _>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal_of(ctx, &format!("{pf}.principals[{i}]"), x, 0))
            .collect::<Result<_, _>>()?;
        policies.push((
            name.clone(),
            Policy {
                permissions,
                principals,
            },
        ));
    }
    Ok(Rules { action, policies })
}

// Envoy deprecated `metadata` and `source_ip` in favour of newer fields,
// but Istio still emits them; both are evaluated exactly.
#[allow(deprecated)]
fn permission(
    ctx: &Ctx,
    f: &str,
    p: &PbPermission,
    depth: usize,
) -> Result<Permission, ConfigError> {
    use permission::Rule;
    if depth > MAX_DEPTH {
        return Err(ctx.err(f, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let set = |rules: &[PbPermission], what: &str| -> Result<Vec<Permission>, ConfigError> {
        if rules.is_empty() {
            return Err(ctx.err(format!("{f}.{what}"), "empty rule set"));
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(ctx, &format!("{f}.{what}.rules[{i}]"), r, depth + 1))
            .collect()
    };
    Ok(match &p.rule {
        None => return Err(ctx.err(f, "permission has no rule")),
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) => return Err(ctx.err(format!("{f}.any"), "must be true")),
        Some(Rule::AndRules(s)) => Permission::And(set(&s.rules, "and_rules")?),
        Some(Rule::OrRules(s)) => Permission::Or(set(&s.rules, "or_rules")?),
        Some(Rule::NotRule(n)) => Permission::Not(Box::new(permission(
            ctx,
            &format!("{f}.not_rule"),
            n,
            depth + 1,
        )?)),
        Some(Rule::Header(h)) => Permission::Header(header(ctx, &format!("{f}.header"), h)?),
        Some(Rule::UrlPath(m)) => Permission::UrlPath(path(ctx, &format!("{f}.url_path"), m)?),
        Some(Rule::DestinationIp(c)) => {
            Permission::DestinationIp(cidr(ctx, &format!("{f}.destination_ip"), c)?)
        }
        Some(Rule::DestinationPort(port)) => {
            Permission::DestinationPort(u16::try_from(*port).map_err(|_| {
                ctx.err(
                    format!("{f}.destination_port"),
                    format!("{port} is not a TCP port"),
                )
            })?)
        }
        Some(Rule::DestinationPortRange(r)) => {
            if r.start > r.end {
                return Err(ctx.err(
                    format!("{f}.destination_port_range"),
                    format!("start {} is after end {}", r.start, r.end),
                ));
            }
            Permission::DestinationPortRange(i64::from(r.start), i64::from(r.end))
        }
        Some(Rule::Metadata(m)) => {
            Permission::Metadata(metadata(ctx, &format!("{f}.metadata"), m)?)
        }
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(string(ctx, &format!("{f}.requested_server_name"), m)?)
        }
        Some(Rule::Matcher(_)) | Some(Rule::UriTemplate(_)) | Some(Rule::SourcedMetadata(_)) => {
            return Err(ctx.err(
                f,
                "matcher, uri_template and sourced_metadata permissions are not supported",
            ))
        }
    })
}

#[allow(deprecated)]
fn principal_of(
    ctx: &Ctx,
    f: &str,
    p: &PbPrincipal,
    depth: usize,
) -> Result<Principal, ConfigError> {
    use principal::Identifier;
    if depth > MAX_DEPTH {
        return Err(ctx.err(f, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    let set = |ids: &[PbPrincipal], what: &str| -> Result<Vec<Principal>, ConfigError> {
        if ids.is_empty() {
            return Err(ctx.err(format!("{f}.{what}"), "empty id set"));
        }
        ids.iter()
            .enumerate()
            .map(|(i, r)| principal_of(ctx, &format!("{f}.{what}.ids[{i}]"), r, depth + 1))
            .collect()
    };
    Ok(match &p.identifier {
        None => return Err(ctx.err(f, "principal has no identifier")),
        Some(Identifier::Any(true)) => Principal::Any,
        Some(Identifier::Any(false)) => return Err(ctx.err(format!("{f}.any"), "must be true")),
        Some(Identifier::AndIds(s)) => Principal::And(set(&s.ids, "and_ids")?),
        Some(Identifier::OrIds(s)) => Principal::Or(set(&s.ids, "or_ids")?),
        Some(Identifier::NotId(n)) => Principal::Not(Box::new(principal_of(
            ctx,
            &format!("{f}.not_id"),
            n,
            depth + 1,
        )?)),
        Some(Identifier::Authenticated(a)) => Principal::Authenticated(match &a.principal_name {
            Some(m) => Some(string(
                ctx,
                &format!("{f}.authenticated.principal_name"),
                m,
            )?),
            None => None,
        }),
        Some(Identifier::SourceIp(c)) => {
            Principal::SourceIp(cidr(ctx, &format!("{f}.source_ip"), c)?)
        }
        Some(Identifier::DirectRemoteIp(c)) => {
            Principal::DirectRemoteIp(cidr(ctx, &format!("{f}.direct_remote_ip"), c)?)
        }
        Some(Identifier::RemoteIp(c)) => {
            Principal::RemoteIp(cidr(ctx, &format!("{f}.remote_ip"), c)?)
        }
        Some(Identifier::Header(h)) => Principal::Header(header(ctx, &format!("{f}.header"), h)?),
        Some(Identifier::UrlPath(m)) => Principal::UrlPath(path(ctx, &format!("{f}.url_path"), m)?),
        Some(Identifier::Metadata(m)) => {
            Principal::Metadata(metadata(ctx, &format!("{f}.metadata"), m)?)
        }
        Some(Identifier::FilterState(_))
        | Some(Identifier::SourcedMetadata(_))
        | Some(Identifier::Custom(_)) => {
            return Err(ctx.err(
                f,
                "filter_state, sourced_metadata and custom principals are not supported",
            ))
        }
    })
}

fn path(ctx: &Ctx, f: &str, m: &PathMatcher) -> Result<StringMatchCase, ConfigError> {
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => string(ctx, &format!("{f}.path"), s),
        None => Err(ctx.err(f, "path matcher has no rule")),
    }
}

fn header(ctx: &Ctx, f: &str, h: &HeaderMatcher) -> Result<HeaderMatch, ConfigError> {
    if h.treat_missing_header_as_empty {
        return Err(ctx.err(
            format!("{f}.treat_missing_header_as_empty"),
            "not supported",
        ));
    }
    header_match(ctx, f, h)
}

fn cidr(ctx: &Ctx, f: &str, c: &CidrRange) -> Result<Cidr, ConfigError> {
    let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
        ctx.err(
            format!("{f}.address_prefix"),
            format!("{:?} is not an IP address", c.address_prefix),
        )
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = c.prefix_len.as_ref().map_or(0, |v| v.value);
    if len > max {
        return Err(ctx.err(
            format!("{f}.prefix_len"),
            format!("{len} is longer than the address ({max} bits)"),
        ));
    }
    // Checked above: len <= 128.
    let len = len as u8;
    Ok(Cidr { addr, len })
}

fn metadata(ctx: &Ctx, f: &str, m: &MetadataMatcher) -> Result<MetadataMatch, ConfigError> {
    if m.filter.is_empty() {
        return Err(ctx.err(format!("{f}.filter"), "empty"));
    }
    let mut path = Vec::with_capacity(m.path.len());
    for (i, seg) in m.path.iter().enumerate() {
        match &seg.segment {
            Some(Segment::Key(k)) => path.push(k.clone()),
            None => return Err(ctx.err(format!("{f}.path[{i}]"), "segment has no key")),
        }
    }
    if path.is_empty() {
        return Err(ctx.err(format!("{f}.path"), "at least one key is required"));
    }
    let value = match &m.value {
        Some(v) => value(ctx, &format!("{f}.value"), v, 0)?,
        None => return Err(ctx.err(format!("{f}.value"), "required")),
    };
    Ok(MetadataMatch {
        filter: m.filter.clone(),
        path,
        value,
        invert: m.invert,
    })
}

fn value(ctx: &Ctx, f: &str, v: &ValueMatcher, depth: usize) -> Result<ValueMatch, ConfigError> {
    use value_matcher::MatchPattern;
    if depth > MAX_DEPTH {
        return Err(ctx.err(f, format!("nested deeper than {MAX_DEPTH} levels")));
    }
    Ok(match &v.match_pattern {
        None => return Err(ctx.err(f, "value matcher has no pattern")),
        Some(MatchPattern::NullMatch(_)) => ValueMatch::Null,
        Some(MatchPattern::StringMatch(s)) => {
            ValueMatch::String(string(ctx, &format!("{f}.string_match"), s)?)
        }
        Some(MatchPattern::BoolMatch(b)) => ValueMatch::Bool(*b),
        Some(MatchPattern::PresentMatch(b)) => ValueMatch::Present(*b),
        Some(MatchPattern::DoubleMatch(d)) => {
            use envoy_types::pb::envoy::r#type::matcher::v3::double_matcher::MatchPattern as D;
            match &d.match_pattern {
                Some(D::Exact(x)) => ValueMatch::DoubleExact(x.to_bits()),
                Some(D::Range(r)) => ValueMatch::DoubleRange(r.start.to_bits(), r.end.to_bits()),
                None => return Err(ctx.err(format!("{f}.double_match"), "no pattern")),
            }
        }
        Some(MatchPattern::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(inner)) => ValueMatch::ListOneOf(Box::new(
                value(ctx, &format!("{f}.list_match.one_of"), inner, depth + 1)?,
            )),
            None => return Err(ctx.err(format!("{f}.list_match"), "no pattern")),
        },
        Some(MatchPattern::OrMatch(o)) => ValueMatch::Or(
            o.value_matchers
                .iter()
                .enumerate()
                .map(|(i, x)| value(ctx, &format!("{f}.or_match[{i}]"), x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
    })
}
