//! Finding codes. Numbers are stable: tools and docs refer to them. The
//! table in docs/configuration.md mirrors this file.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "Info",
            Severity::Warning => "Warning",
            Severity::Error => "Error",
        })
    }
}

macro_rules! codes {
    ($($variant:ident = $code:literal, $severity:ident, $title:literal;)*) => {
        /// Every finding Isthmus reports about configuration.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// `ISM0101`-style identifier.
            pub fn id(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$severity,)* }
            }

            /// Short CamelCase name, like Istio's analyzer message names.
            pub fn name(self) -> &'static str {
                match self { $(Code::$variant => stringify!($variant),)* }
            }

            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)* }
            }
        }
    };
}

codes! {
    YamlSyntax = "ISM0001", Error, "the file is not valid YAML";
    SchemaError = "ISM0002", Error, "a field has the wrong type or a required field is missing";
    UnknownField = "ISM0003", Error, "a field the kind does not define (misspelt or mis-indented)";
    UnsupportedVersion = "ISM0004", Error, "a kind Isthmus reads, at an apiVersion it does not accept";
    MissingTypeInfo = "ISM0005", Error, "a document without apiVersion, kind or metadata.name";
    SkippedForeignGroup = "ISM0006", Info, "an API group Isthmus does not handle; the document is skipped";
    UnsupportedKind = "ISM0007", Warning, "a kind of a handled group that Isthmus does not implement; skipped";
    Unreadable = "ISM0008", Error, "a path that cannot be read";
    InvalidDuration = "ISM0101", Error, "a duration that does not parse or is out of range";
    InvalidPercentage = "ISM0102", Error, "a percentage outside 0..100";
    InvalidRegex = "ISM0103", Error, "a regular expression that does not compile";
    InvalidStringMatch = "ISM0104", Error, "a string match that sets none or several of exact, prefix, regex";
    WeightsNotHundred = "ISM0105", Error, "route destination weights that do not sum to 100";
    InvalidField = "ISM0106", Error, "a value that is out of range or malformed for its field";
    IgnoredField = "ISM0107", Warning, "a field Isthmus reads but does not carry out; it has no effect";
    ReferencedSubsetNotFound = "ISM0201", Error, "a route to a subset that no DestinationRule for the host defines";
    ReferencedHostNotFound = "ISM0202", Warning, "a destination host that matches no ServiceEntry, ServiceImport or export";
    GatewayNotFound = "ISM0203", Error, "a VirtualService bound to a Gateway that does not exist";
    GatewaySelectorMatchesNothing = "ISM0204", Warning, "a Gateway whose selector matches no gateway workload";
    DuplicateResource = "ISM0301", Error, "two documents define the same kind, namespace and name";
    ConflictingDestinationRules = "ISM0302", Warning, "several DestinationRules for one host";
    ConflictingMeshWidePeerAuthentication = "ISM0303", Error, "several mesh-wide (or namespace-wide) PeerAuthentications";
    ConflictingVirtualServiceHosts = "ISM0304", Warning, "several VirtualServices for one host on the same gateway";
    DuplicateSubset = "ISM0305", Error, "a DestinationRule that defines the same subset name twice";
    MultipleMeshConfigs = "ISM0306", Error, "more than one MeshConfig";
    AuthzAllowsNothing = "ISM0401", Warning, "an ALLOW AuthorizationPolicy whose rules can never match, so it denies everything it selects";
    AuthzMatchesEverything = "ISM0402", Warning, "an AuthorizationPolicy with an empty rule that matches every request";
    JwtRuleWithoutIssuer = "ISM0403", Error, "a RequestAuthentication JWT rule without an issuer";
    InvalidJwks = "ISM0404", Error, "an inline jwks that is not a valid JWK Set";
    JwksConflict = "ISM0405", Error, "a JWT rule that sets both jwks and jwksUri";
    JwtRuleWithoutAudiences = "ISM0406", Warning, "a JWT rule without audiences accepts tokens minted for any service of the issuer";
    JwksMissing = "ISM0407", Warning, "a JWT rule with neither jwks nor jwksUri (no OpenID discovery: every token is rejected)";
    JwtIssuerMalformed = "ISM0408", Error, "a JWT issuer with whitespace or control characters, which no token's iss can equal";
    AuthzCustomUnsupported = "ISM0420", Warning, "an AuthorizationPolicy with action CUSTOM, which Isthmus does not enforce";
    AuthzSelectsNothing = "ISM0421", Warning, "an AuthorizationPolicy whose namespace and selector match no workload";
    AuthzUnknownTrustDomain = "ISM0422", Warning, "a principal in a trust domain that is not the mesh's";
    AuthzAllowShadowedByDeny = "ISM0423", Warning, "an ALLOW rule that a DENY policy on the same workloads always overrides";
    AuthzUnsupportedCondition = "ISM0424", Warning, "an AuthorizationPolicy condition key Isthmus does not translate";
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}
