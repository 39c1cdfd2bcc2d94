//! Each analyzer finding fires on its failing fixture, at the field it is
//! about, and stays silent on the corrected twin.

use std::path::{Path, PathBuf};

use isthmus_control::analyze::{analyze_paths, Code, Severity};

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/analyze")
        .join(case)
}

/// The 1-based line of the `nth` (0-based) line containing `needle`.
fn line_of(path: &Path, needle: &str, nth: usize) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} #{nth} not in {}", path.display()))
}

/// (fixture directory, expected code, text on the line it must point at,
/// which occurrence of that text)
const CASES: &[(&str, Code, &str, usize)] = &[
    ("unknown-field", Code::UnknownField, "end-user:", 0),
    (
        "subset-not-found",
        Code::ReferencedSubsetNotFound,
        "subset: v3",
        0,
    ),
    (
        "subset-without-rule",
        Code::ReferencedSubsetNotFound,
        "subset: v1",
        0,
    ),
    ("weights", Code::WeightsNotHundred, "route:", 0),
    (
        "host-not-found",
        Code::ReferencedHostNotFound,
        "host: reviewz",
        0,
    ),
    (
        "duplicate-resource",
        Code::DuplicateResource,
        "name: reviews",
        2,
    ),
    (
        "conflicting-destination-rules",
        Code::ConflictingDestinationRules,
        "host: reviews.shop",
        0,
    ),
    (
        "mesh-wide-peer-authentication",
        Code::ConflictingMeshWidePeerAuthentication,
        "name: permissive",
        0,
    ),
    (
        "gateway-selector",
        Code::GatewaySelectorMatchesNothing,
        "selector:",
        0,
    ),
    ("gateway-not-found", Code::GatewayNotFound, "- public", 0),
    ("authz-empty-rule", Code::AuthzMatchesEverything, "- {}", 0),
    (
        "authz-allows-nothing",
        Code::AuthzAllowsNothing,
        "rules: []",
        0,
    ),
    (
        "invalid-duration",
        Code::InvalidDuration,
        "connectTimeout",
        0,
    ),
    (
        "invalid-percentage",
        Code::InvalidPercentage,
        "value: 150",
        0,
    ),
    (
        "retry-budget-percentage",
        Code::InvalidPercentage,
        "percent: 150",
        0,
    ),
    ("ignored-field", Code::IgnoredField, "tunnel:", 0),
    ("invalid-regex", Code::InvalidRegex, "regex:", 0),
    (
        "jwt-without-issuer",
        Code::JwtRuleWithoutIssuer,
        "- jwksUri",
        0,
    ),
    ("invalid-jwks", Code::InvalidJwks, "jwks:", 0),
    (
        "jwt-without-audiences",
        Code::JwtRuleWithoutAudiences,
        "- issuer",
        0,
    ),
    ("jwks-missing", Code::JwksMissing, "- issuer", 0),
    (
        "jwt-issuer-malformed",
        Code::JwtIssuerMalformed,
        "issuer:",
        0,
    ),
    ("yaml-syntax", Code::YamlSyntax, "---", 0),
    (
        "unsupported-version",
        Code::UnsupportedVersion,
        "apiVersion",
        0,
    ),
    (
        "conflicting-virtual-services",
        Code::ConflictingVirtualServiceHosts,
        "- reviews.shop.svc",
        1,
    ),
    ("string-match", Code::InvalidStringMatch, "uri:", 0),
    ("duplicate-subset", Code::DuplicateSubset, "- name: v1", 1),
];

#[test]
fn every_finding_fires_on_its_bad_fixture_at_the_right_line() {
    let mut codes = std::collections::BTreeSet::new();
    for (case, code, needle, nth) in CASES {
        let bad = case_dir(case).join("bad.yaml");
        let report = analyze_paths(std::slice::from_ref(&bad));
        let found: Vec<_> = report.with_code(*code).collect();
        assert!(
            !found.is_empty(),
            "{case}: expected {code:?}, got:\n{}",
            report.render_text()
        );
        let want_line = line_of(&bad, needle, *nth);
        assert!(
            found.iter().any(|d| d.location.line == want_line),
            "{case}: {code:?} should point at line {want_line} ({needle:?}), got:\n{}",
            report.render_text()
        );
        assert_eq!(found[0].severity, code.severity());
        assert_eq!(
            report.has_errors(),
            report
                .diagnostics
                .iter()
                .any(|d| d.severity == Severity::Error),
        );
        codes.insert(*code);
    }
    assert!(
        codes.len() >= 12,
        "only {} distinct findings covered",
        codes.len()
    );
}

#[test]
fn corrected_fixtures_are_clean() {
    for (case, ..) in CASES {
        let good = case_dir(case).join("good.yaml");
        let report = analyze_paths(std::slice::from_ref(&good));
        assert!(
            report.diagnostics.is_empty(),
            "{case}: corrected fixture should have no findings:\n{}",
            report.render_text()
        );
        assert!(!report.has_errors());
        assert!(report.resources > 0, "{case}");
    }
}

#[test]
fn yaml_syntax_error_spoils_only_its_document() {
    let report = analyze_paths(&[case_dir("yaml-syntax").join("bad.yaml")]);
    assert_eq!(report.documents, 2);
    assert_eq!(report.resources, 1, "{}", report.render_text());
}

#[test]
fn foreign_groups_are_skipped_not_failures() {
    let report = analyze_paths(&[case_dir("foreign-group").join("good.yaml")]);
    assert!(!report.has_errors(), "{}", report.render_text());
    assert_eq!(report.skipped, 2);
    let skipped: Vec<_> = report.with_code(Code::SkippedForeignGroup).collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.iter().all(|d| d.severity == Severity::Info));
    assert!(skipped[0].message.contains("monitoring.coreos.com"));
}

#[test]
fn json_output_carries_code_severity_and_location() {
    let report = analyze_paths(&[case_dir("subset-not-found").join("bad.yaml")]);
    let json: serde_json::Value = serde_json::from_str(&report.render_json()).unwrap();
    let first = &json["diagnostics"][0];
    assert_eq!(first["code"], "ISM0201");
    assert_eq!(first["severity"], "error");
    assert!(first["location"]["file"]
        .as_str()
        .unwrap()
        .ends_with("bad.yaml"));
    assert!(first["location"]["line"].as_u64().unwrap() > 0);
    assert!(first["location"]["column"].as_u64().unwrap() > 0);
    assert_eq!(first["resource"], "VirtualService shop/reviews");
    assert!(report.has_errors());
}

#[test]
fn directories_are_read_recursively_and_missing_paths_are_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/roundtrip");
    let report = analyze_paths(&[root]);
    assert_eq!(report.files, 13);
    assert!(!report.has_errors(), "{}", report.render_text());
    let missing = analyze_paths(&[PathBuf::from("/nonexistent/isthmus-config")]);
    assert!(missing.has_errors());
    assert_eq!(missing.diagnostics[0].code, Code::Unreadable);
}

#[test]
fn every_code_has_a_row_in_the_docs() {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    for code in Code::ALL {
        assert!(
            doc.contains(code.id()),
            "{} ({}) missing from docs/configuration.md",
            code.id(),
            code.name()
        );
    }
}
