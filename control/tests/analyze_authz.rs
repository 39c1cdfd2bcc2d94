//! The AuthorizationPolicy findings of `isthmus analyze`: each fires on
//! its failing fixture at the field it is about, and stays silent on the
//! corrected twin.

use std::path::{Path, PathBuf};

use isthmus_control::analyze::{analyze_paths, Code, Severity};

fn case(name: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/security/analyze")
        .join(name)
        .join(file)
}

/// The 1-based line of the first line containing `needle`.
fn line_of(path: &Path, needle: &str) -> usize {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in {}", path.display()))
}

/// (fixture, code, text on the line the finding must point at)
const CASES: &[(&str, Code, &str)] = &[
    ("custom", Code::AuthzCustomUnsupported, "action: CUSTOM"),
    ("selects-nothing", Code::AuthzSelectsNothing, "selector:"),
    (
        "unknown-trust-domain",
        Code::AuthzUnknownTrustDomain,
        "principals:",
    ),
    ("allow-shadowed", Code::AuthzAllowShadowedByDeny, "- from:"),
    (
        "unsupported-condition",
        Code::AuthzUnsupportedCondition,
        "key: experimental",
    ),
];

#[test]
fn each_authz_finding_fires_on_bad_and_not_on_good() {
    for (name, code, needle) in CASES {
        let bad = case(name, "bad.yaml");
        let report = analyze_paths(std::slice::from_ref(&bad));
        let found: Vec<_> = report.with_code(*code).collect();
        assert_eq!(found.len(), 1, "{name}: {}", report.render_text());
        assert_eq!(found[0].severity, Severity::Warning);
        let mut expected_line = line_of(&bad, needle);
        if *name == "allow-shadowed" {
            // The ALLOW policy's rule, the second `- from:` in the file.
            let text = std::fs::read_to_string(&bad).expect("fixture");
            expected_line = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains(needle))
                .nth(1)
                .map(|(i, _)| i + 1)
                .expect("second rule");
        }
        assert_eq!(
            found[0].location.line,
            expected_line,
            "{name}: {}",
            report.render_text()
        );
        let good = analyze_paths(&[case(name, "good.yaml")]);
        assert_eq!(
            good.with_code(*code).count(),
            0,
            "{name} good: {}",
            good.render_text()
        );
        assert!(!good.has_errors(), "{name} good: {}", good.render_text());
    }
}
