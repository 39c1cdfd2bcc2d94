//! Named resources with content-addressed versions.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use ring::digest;

/// One generated resource: its name, the packed message, and a version that
/// changes exactly when the content changes.
///
/// The version is a hash of the encoded bytes, so it is the same on every
/// control-plane replica and survives reconnects. Protobuf map fields (such as
/// `google.protobuf.Struct`) encode in hash-map order, which differs between
/// otherwise equal messages; a generator emitting such fields should give its
/// own stable version with [`Resource::with_version`].
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
mod tests {
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
