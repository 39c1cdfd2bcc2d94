//! Traffic capture for `interceptionMode: REDIRECT`: the iptables (nat
//! table) rules the init container loads with `iptables-restore`, built from
//! Istio's pod annotations. Inbound TCP goes to 15006, outbound TCP to
//! 15001; never captured: the proxy's own traffic (UID/GID 1337), loopback
//! destinations, inbound ports 15000-15099 (the proxy's own), and whatever
//! the annotations exclude.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::InjectError;
use crate::install::proxy::PROXY_UID;

pub const INBOUND_CAPTURE_PORT: u16 = 15006;
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;

pub const ANN_INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
pub const ANN_INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const ANN_EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
pub const ANN_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
pub const ANN_INCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
pub const ANN_EXCLUDE_OUTBOUND_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";

/// How the application's traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// No capture: the proxy binds explicit listeners (outbound on
    /// 127.0.0.1, inbound on the pod IP; the app listens on 127.0.0.1).
    None,
    /// iptables REDIRECT to 15001/15006.
    Redirect,
}

impl Interception {
    pub fn parse(value: &str) -> Result<Self, InjectError> {
        match value {
            "NONE" => Ok(Self::None),
            "REDIRECT" => Ok(Self::Redirect),
            other => Err(InjectError::Annotation {
                key: ANN_INTERCEPTION_MODE,
                value: other.to_string(),
                reason: "supported modes are NONE and REDIRECT (TPROXY is not)".into(),
            }),
        }
    }
}

/// `*` or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<T> {
    All,
    Only(Vec<T>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureRules {
    pub include_inbound_ports: Selection<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub include_outbound_ranges: Selection<String>,
    pub exclude_outbound_ranges: Vec<String>,
}

fn split(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(key: &'static str, value: &str) -> Result<Vec<u16>, InjectError> {
    split(value)
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(InjectError::Annotation {
                key,
                value: value.to_string(),
                reason: format!("{p:?} is not a port (1-65535)"),
            }),
        })
        .collect()
}

fn cidrs(key: &'static str, value: &str) -> Result<Vec<String>, InjectError> {
    split(value)
        .map(|c| {
            let bad = |why: &str| InjectError::Annotation {
                key,
                value: value.to_string(),
                reason: format!("{c:?} is not a CIDR: {why}"),
            };
            let (addr, len) = c.split_once('/').unwrap_or((c, ""));
            let ip: IpAddr = addr.parse().map_err(|_| bad("bad address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len: u8 = if len.is_empty() {
                max
            } else {
                len.parse().map_err(|_| bad("bad prefix length"))?
            };
            if len > max {
                return Err(bad("prefix length too long"));
            }
            if ip.is_ipv6() {
                return Err(bad("IPv6 ranges are not captured (IPv4 rules only)"));
            }
            Ok(format!("{ip}/{len}"))
        })
        .collect()
}

impl CaptureRules {
    /// From the pod's annotations; a malformed one is an error naming it.
    pub fn from_annotations(ann: &BTreeMap<String, String>) -> Result<Self, InjectError> {
        let get = |k: &str| ann.get(k).map(String::as_str);
        let include_inbound_ports = match get(ANN_INCLUDE_INBOUND_PORTS).map(str::trim) {
            None | Some("*") => Selection::All,
            Some(v) => Selection::Only(ports(ANN_INCLUDE_INBOUND_PORTS, v)?),
        };
        let include_outbound_ranges = match get(ANN_INCLUDE_OUTBOUND_RANGES).map(str::trim) {
            None | Some("*") => Selection::All,
            Some(v) => Selection::Only(cidrs(ANN_INCLUDE_OUTBOUND_RANGES, v)?),
        };
        Ok(Self {
            include_inbound_ports,
            exclude_inbound_ports: ports(
                ANN_EXCLUDE_INBOUND_PORTS,
                get(ANN_EXCLUDE_INBOUND_PORTS).unwrap_or(""),
            )?,
            exclude_outbound_ports: ports(
                ANN_EXCLUDE_OUTBOUND_PORTS,
                get(ANN_EXCLUDE_OUTBOUND_PORTS).unwrap_or(""),
            )?,
            include_outbound_ranges,
            exclude_outbound_ranges: cidrs(
                ANN_EXCLUDE_OUTBOUND_RANGES,
                get(ANN_EXCLUDE_OUTBOUND_RANGES).unwrap_or(""),
            )?,
        })
    }

    /// `iptables-restore` input (nat table), deterministic.
    pub fn iptables_restore(&self) -> String {
        let mut r = vec![
            "*nat".to_string(),
            ":ISTHMUS_INBOUND - [0:0]".into(),
            ":ISTHMUS_IN_REDIRECT - [0:0]".into(),
            ":ISTHMUS_OUTPUT - [0:0]".into(),
            ":ISTHMUS_REDIRECT - [0:0]".into(),
            format!("-A ISTHMUS_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}"),
            format!("-A ISTHMUS_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}"),
            "-A PREROUTING -p tcp -j ISTHMUS_INBOUND".into(),
            // The proxy's own ports (admin, capture) are never redirected.
            "-A ISTHMUS_INBOUND -p tcp --dport 15000:15099 -j RETURN".into(),
        ];
        for p in &self.exclude_inbound_ports {
            r.push(format!("-A ISTHMUS_INBOUND -p tcp --dport {p} -j RETURN"));
        }
        match &self.include_inbound_ports {
            Selection::All => r.push("-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT".into()),
            Selection::Only(ports) => {
                for p in ports {
                    r.push(format!(
                        "-A ISTHMUS_INBOUND -p tcp --dport {p} -j ISTHMUS_IN_REDIRECT"
                    ));
                }
            }
        }
        r.push("-A OUTPUT -p tcp -j ISTHMUS_OUTPUT".into());
        r.push(format!(
            "-A ISTHMUS_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN"
        ));
        r.push(format!(
            "-A ISTHMUS_OUTPUT -m owner --gid-owner {PROXY_UID} -j RETURN"
        ));
        r.push("-A ISTHMUS_OUTPUT -d 127.0.0.1/32 -j RETURN".into());
        for p in &self.exclude_outbound_ports {
            r.push(format!("-A ISTHMUS_OUTPUT -p tcp --dport {p} -j RETURN"));
        }
        for c in &self.exclude_outbound_ranges {
            r.push(format!("-A ISTHMUS_OUTPUT -d {c} -j RETURN"));
        }
        match &self.include_outbound_ranges {
            Selection::All => r.push("-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT".into()),
            Selection::Only(ranges) => {
                for c in ranges {
                    r.push(format!("-A ISTHMUS_OUTPUT -d {c} -j ISTHMUS_REDIRECT"));
                }
            }
        }
        r.push("COMMIT".into());
        let mut out = r.join("\n");
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_capture_everything_but_the_proxy() {
        let rules = CaptureRules::from_annotations(&BTreeMap::new())
            .unwrap()
            .iptables_restore();
        assert!(rules.contains("-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT"));
        assert!(rules.contains("--uid-owner 1337 -j RETURN"));
        assert!(rules.contains("--dport 15000:15099 -j RETURN"));
        assert!(rules.contains("REDIRECT --to-ports 15006"));
        assert!(rules.contains("REDIRECT --to-ports 15001"));
        assert!(rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn annotations_narrow_capture() {
        let rules = CaptureRules::from_annotations(&ann(&[
            (ANN_INCLUDE_INBOUND_PORTS, "9080, 9443"),
            (ANN_EXCLUDE_OUTBOUND_PORTS, "5432"),
            (ANN_EXCLUDE_OUTBOUND_RANGES, "10.96.0.1/32,169.254.169.254"),
        ]))
        .unwrap()
        .iptables_restore();
        assert!(rules.contains("--dport 9080 -j ISTHMUS_IN_REDIRECT"));
        assert!(!rules.contains("-A ISTHMUS_INBOUND -p tcp -j ISTHMUS_IN_REDIRECT"));
        assert!(rules.contains("-A ISTHMUS_OUTPUT -p tcp --dport 5432 -j RETURN"));
        assert!(rules.contains("-A ISTHMUS_OUTPUT -d 169.254.169.254/32 -j RETURN"));
        // Exclusions come before the catch-all jump.
        let excl = rules.find("--dport 5432").unwrap();
        let jump = rules.find("-A ISTHMUS_OUTPUT -j ISTHMUS_REDIRECT").unwrap();
        assert!(excl < jump);
    }

    #[test]
    fn malformed_annotations_name_the_key() {
        for (k, v) in [
            (ANN_EXCLUDE_INBOUND_PORTS, "80,http"),
            (ANN_EXCLUDE_OUTBOUND_PORTS, "0"),
            (ANN_EXCLUDE_OUTBOUND_RANGES, "10.0.0.0/33"),
            (ANN_INCLUDE_OUTBOUND_RANGES, "not-an-ip"),
        ] {
            let e = CaptureRules::from_annotations(&ann(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
        assert!(Interception::parse("TPROXY").is_err());
    }
}
