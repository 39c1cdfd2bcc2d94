//! Named resources with content-addressed versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use ring::digest;

use crate::types::TypeUrl;

/// One generated resource: its name, the packed message, and a version that
/// changes exactly when the content changes.
///
/// The version is a hash of the encoded bytes, so it is the same on every
/// control-plane replica and survives reconnects. Protobuf map fields (such as
/// `google.protobuf.Struct` or `typed_per_filter_config`) encode in hash-map
/// order, so equal messages may encode differently; streams therefore treat a
/// resource whose version changed but whose decoded message is equal to what
/// the client holds as unchanged (see [`same_content`]), and generators need
/// not care. Only a reconnect to another replica may then resend such a
/// resource once.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl Resource {
    /// A resource whose version is the SHA-256 of its type URL and bytes.
    pub fn new(name: impl Into<String>, body: Any) -> Resource {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(body.type_url.as_bytes());
        ctx.update(&[0]);
        ctx.update(&body.value);
        Resource {
            name: name.into(),
            version: short_hex(ctx.finish().as_ref()),
            body,
        }
    }

    /// A resource with a caller-chosen version (see the type docs).
    pub fn with_version(
        name: impl Into<String>,
        version: impl Into<String>,
        body: Any,
    ) -> Resource {
        Resource {
            name: name.into(),
            version: version.into(),
            body,
        }
    }
}

/// Whether `new` says the same as `old`, which the client already holds:
/// equal versions, or bodies of a type this server serves that decode to
/// equal messages (prost compares map fields as maps, so this is immune to
/// hash-map encoding order). Anything that does not decode counts as changed.
pub(crate) fn same_content(old: &Resource, new: &Resource) -> bool {
    if old.version == new.version {
        return true;
    }
    if old.body.type_url != new.body.type_url {
        return false;
    }
    fn eq<M: Message + Default + PartialEq>(a: &[u8], b: &[u8]) -> bool {
        match (M::decode(a), M::decode(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
    let (a, b) = (old.body.value.as_slice(), new.body.value.as_slice());
    match TypeUrl::parse(&new.body.type_url) {
        Some(TypeUrl::Cluster) => eq::<Cluster>(a, b),
        Some(TypeUrl::ClusterLoadAssignment) => eq::<ClusterLoadAssignment>(a, b),
        Some(TypeUrl::Listener) => eq::<Listener>(a, b),
        Some(TypeUrl::RouteConfiguration) => eq::<RouteConfiguration>(a, b),
        Some(TypeUrl::Secret) => eq::<Secret>(a, b),
        // Encoded from ordered maps by the generator: equal tables are
        // equal bytes.
        Some(TypeUrl::NameTable) => a == b,
        None => false,
    }
}

/// Generated resources of one type by name.
pub type ResourceMap = BTreeMap<String, Arc<Resource>>;

/// An order-independent digest of a set of (name, version) pairs: the
/// state-of-the-world `version_info`. Equal sets give equal digests on every
/// replica, which lets a reconnecting client resume without a resend, and the
/// digest is updated per entry, so a push that changes one resource out of
/// thousands costs one hash, not thousands.
///
/// It is a sum of per-entry SHA-256 prefixes: fine for telling versions
/// apart, not meant to resist deliberate collisions (versions are not a
/// security boundary; the proxies' own configs are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetDigest(u128);

impl SetDigest {
    fn entry(name: &str, version: &str) -> u128 {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(version.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&ctx.finish().as_ref()[..16]);
        u128::from_be_bytes(first)
    }

    pub fn add(&mut self, name: &str, version: &str) {
        self.0 = self.0.wrapping_add(Self::entry(name, version));
    }

    pub fn remove(&mut self, name: &str, version: &str) {
        self.0 = self.0.wrapping_sub(Self::entry(name, version));
    }

    /// The digest as a version string (32 hex digits).
    pub fn version(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// The [`SetDigest`] version of a whole set at once.
pub fn set_version<'a>(entries: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut d = SetDigest::default();
    for (name, version) in entries {
        d.add(name, version);
    }
    d.version()
}

/// 16 hex digits (64 bits) is plenty to tell versions apart and keeps
/// responses and status output short.
fn short_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(16);
    for b in bytes.iter().take(8) {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn any(v: &[u8]) -> Any {
        Any {
            type_url: "t".into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn version_follows_content() {
        assert_eq!(
            Resource::new("a", any(b"x")).version,
            Resource::new("b", any(b"x")).version
        );
        assert_ne!(
            Resource::new("a", any(b"x")).version,
            Resource::new("a", any(b"y")).version
        );
        assert_eq!(Resource::new("a", any(b"x")).version.len(), 16);
    }

    /// A route configuration whose one virtual host carries
    /// `typed_per_filter_config` entries encoded in the given order, as
    /// prost writes a hash map that iterates that way.
    pub(crate) fn route_config_with_filters_in(order: &[&str]) -> Any {
        use envoy_types::pb::envoy::config::route::v3::VirtualHost;
        // Concatenated encodings of one message merge, and map entries
        // append in order: one single-entry host encoding per key.
        let mut host = VirtualHost {
            name: "vh".into(),
            ..Default::default()
        }
        .encode_to_vec();
        for k in order {
            let mut one = VirtualHost::default();
            one.typed_per_filter_config
                .insert((*k).to_owned(), any(k.as_bytes()));
            host.extend(one.encode_to_vec());
        }
        let mut out = RouteConfiguration {
            name: "r".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 2: virtual_hosts.
        prost::encoding::bytes::encode(2, &host, &mut out);
        Any {
            type_url: TypeUrl::RouteConfiguration.as_str().into(),
            value: out,
        }
    }

    #[test]
    fn map_order_does_not_make_a_change() {
        let a = Resource::new("r", route_config_with_filters_in(&["x", "y"]));
        let b = Resource::new("r", route_config_with_filters_in(&["y", "x"]));
        assert_ne!(a.version, b.version, "the bytes differ");
        assert!(same_content(&a, &b));
        let c = Resource::new("r", route_config_with_filters_in(&["x", "z"]));
        assert!(!same_content(&a, &c));
        assert!(!same_content(&a, &Resource::new("r", any(b"junk"))));
    }

    #[test]
    fn set_version_depends_on_names_and_versions() {
        let (a, b, v1, v2) = (
            "a".to_owned(),
            "b".to_owned(),
            "1".to_owned(),
            "2".to_owned(),
        );
        let base = set_version([(&a, &v1), (&b, &v2)]);
        assert_eq!(base, set_version([(&a, &v1), (&b, &v2)]));
        assert_ne!(base, set_version([(&a, &v2), (&b, &v1)]));
        assert_ne!(base, set_version([(&a, &v1)]));
        assert_eq!(
            base,
            set_version([(&b, &v2), (&a, &v1)]),
            "order does not matter"
        );
        let mut d = SetDigest::default();
        d.add(&a, &v1);
        d.add(&b, &v1);
        d.remove(&b, &v1);
        d.add(&b, &v2);
        assert_eq!(
            d.version(),
            base,
            "incremental updates match a full computation"
        );
    }
}
