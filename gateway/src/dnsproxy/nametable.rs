//! The name table the control plane sends over ADS (Istio's NDS idea): every
//! hostname the proxy may call, with the addresses to answer.
//!
//! The messages are Istio's `istio.networking.nds.v1` (`NameTable`,
//! `NameInfo`), declared with prost's derive so the wire encoding is
//! prost's own:
//!
//! ```proto
//! package istio.networking.nds.v1;
//! message NameTable { map<string, NameInfo> table = 1; }
//! message NameInfo {
//!   repeated string ips = 1;
//!   string registry = 2;
//!   string shortname = 3;
//!   string namespace = 4;
//!   repeated string alt_hosts = 5;
//! }
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

/// ADS type URL of the name table.
pub const NAME_TABLE_TYPE: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";
/// The one resource name the table is sent under.
pub const NAME_TABLE_RESOURCE: &str = "nametable";

#[derive(Clone, PartialEq, prost::Message)]
pub struct NameTable {
    // Ordered, so equal tables encode to equal bytes (the server compares
    // versions by content).
    #[prost(btree_map = "string, message", tag = "1")]
    pub table: BTreeMap<String, NameInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NameInfo {
    #[prost(string, repeated, tag = "1")]
    pub ips: Vec<String>,
    /// `Kubernetes`, `External` (ServiceEntry), or `Remote` (only in other
    /// clusters).
    #[prost(string, tag = "2")]
    pub registry: String,
    #[prost(string, tag = "3")]
    pub shortname: String,
    #[prost(string, tag = "4")]
    pub namespace: String,
    /// Other names answering with the same addresses (`.clusterset.local`).
    #[prost(string, repeated, tag = "5")]
    pub alt_hosts: Vec<String>,
}

impl prost::Name for NameTable {
    const NAME: &'static str = "NameTable";
    const PACKAGE: &'static str = "istio.networking.nds.v1";
    fn type_url() -> String {
        NAME_TABLE_TYPE.to_string()
    }
}

/// The table as the DNS proxy reads it: lower-case FQDN (no trailing dot)
/// → addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct NameIndex {
    pub names: std::collections::BTreeMap<String, Vec<IpAddr>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NameTable: table[{host:?}]: {reason}")]
pub struct NameTableError {
    pub host: String,
    pub reason: String,
}

impl NameIndex {
    /// Validates and indexes a received table.
    pub fn from_table(t: &NameTable) -> Result<Self, NameTableError> {
        let mut names = std::collections::BTreeMap::new();
        for (host, info) in &t.table {
            let err = |reason: String| NameTableError {
                host: host.clone(),
                reason,
            };
            if host.is_empty() {
                return Err(err("empty hostname".into()));
            }
            let mut ips = Vec::with_capacity(info.ips.len());
            for ip in &info.ips {
                ips.push(
                    ip.parse::<IpAddr>()
                        .map_err(|_| err(format!("{ip:?} is not an IP address")))?,
                );
            }
            if ips.is_empty() {
                return Err(err("no address".into()));
            }
            for name in std::iter::once(host).chain(&info.alt_hosts) {
                names.insert(normalize(name), ips.clone());
            }
        }
        Ok(Self { names })
    }

    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.names.get(&normalize(name)).map(Vec::as_slice)
    }
}

/// Converts the resources of an NDS response (one table, or several that
/// are merged) into the index; every error names its resource.
pub fn index_resources(
    resources: &[envoy_types::pb::google::protobuf::Any],
) -> Result<NameIndex, Vec<crate::config::ConfigError>> {
    use prost::Message;
    let mut merged = NameTable::default();
    let mut errors = Vec::new();
    for (i, any) in resources.iter().enumerate() {
        let err = |field: &str, reason: String| crate::config::ConfigError {
            kind: "NameTable",
            name: format!("#{i}"),
            field: field.into(),
            reason,
        };
        if any.type_url != NAME_TABLE_TYPE {
            errors.push(err(
                "type_url",
                format!("expected {NAME_TABLE_TYPE}, got {}", any.type_url),
            ));
            continue;
        }
        match NameTable::decode(any.value.as_slice()) {
            Ok(t) => merged.table.extend(t.table),
            Err(e) => errors.push(err("(protobuf)", format!("cannot decode: {e}"))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    NameIndex::from_table(&merged).map_err(|e| {
        vec![crate::config::ConfigError {
            kind: "NameTable",
            name: NAME_TABLE_RESOURCE.into(),
            field: format!("table[{:?}]", e.host),
            reason: e.reason,
        }]
    })
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trips_and_indexes_alt_hosts_case_insensitively() {
        let mut t = NameTable::default();
        t.table.insert(
            "reviews.default.svc.cluster.local".into(),
            NameInfo {
                ips: vec!["127.0.0.1".into()],
                registry: "Remote".into(),
                alt_hosts: vec!["reviews.default.svc.clusterset.local".into()],
                ..Default::default()
            },
        );
        let decoded = NameTable::decode(t.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, t);
        let idx = NameIndex::from_table(&decoded).expect("valid");
        assert_eq!(
            idx.lookup("Reviews.default.svc.clusterset.local."),
            Some(&["127.0.0.1".parse().expect("ip")][..])
        );
        assert!(idx.lookup("ratings.default.svc.cluster.local").is_none());
    }

    #[test]
    fn bad_addresses_name_the_host() {
        let mut t = NameTable::default();
        t.table.insert(
            "x.example".into(),
            NameInfo {
                ips: vec!["not-an-ip".into()],
                ..Default::default()
            },
        );
        let e = NameIndex::from_table(&t).expect_err("bad ip");
        assert!(e.to_string().contains("x.example"), "{e}");
    }
}
