//! A directory shaped like what users bring (Istio samples, operator and
//! monitoring manifests mixed in): every mistake is reported precisely and
//! everything else is accepted or skipped.

use std::path::Path;

use isthmus_control::analyze::{analyze_paths, Code};

#[test]
fn reports_exactly_the_mistakes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seedlike");
    let report = analyze_paths(&[dir]);
    let got: Vec<(String, usize, usize, Code)> = report
        .diagnostics
        .iter()
        .map(|d| {
            let file = d
                .location
                .file
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (file, d.location.line, d.location.column, d.code)
        })
        .collect();
    let want: Vec<(String, usize, usize, Code)> = [
        // The mis-indented header name, at the key itself.
        ("01-vs-ratings-by-user.yaml", 13, 7, Code::UnknownField),
        // The seed's JWT rule names no audiences (a warning, as in the issue).
        ("04-ra-jwt.yaml", 11, 5, Code::JwtRuleWithoutAudiences),
        ("06-servicemonitor.yaml", 1, 1, Code::SkippedForeignGroup),
        // No service defines `frontend` (reported once per VirtualService).
        (
            "07-vs-frontend-canary.yaml",
            12,
            9,
            Code::ReferencedHostNotFound,
        ),
        (
            "07-vs-frontend-canary.yaml",
            13,
            9,
            Code::ReferencedSubsetNotFound,
        ),
        (
            "07-vs-frontend-canary.yaml",
            17,
            9,
            Code::ReferencedSubsetNotFound,
        ),
        // Same name as 01 (which is itself rejected).
        ("09-vs-ratings-delay.yaml", 5, 3, Code::DuplicateResource),
        (
            "09-vs-ratings-delay.yaml",
            17,
            9,
            Code::ReferencedHostNotFound,
        ),
        ("10-istiooperator.yaml", 2, 1, Code::SkippedForeignGroup),
    ]
    .into_iter()
    .map(|(f, l, c, code)| (f.to_string(), l, c, code))
    .collect();
    assert_eq!(got, want, "\n{}", report.render_text());
    assert!(report.has_errors());
    assert_eq!(report.files, 10);
    assert_eq!(report.skipped, 2);
    // 02, 03, 04, 05, 07, 08, 09 are accepted; 01 is rejected.
    assert_eq!(report.resources, 7);
    let unknown = report.with_code(Code::UnknownField).next().unwrap();
    assert!(unknown.message.contains("`x-user`"), "{}", unknown.message);
    assert!(
        unknown.message.contains("indentation"),
        "{}",
        unknown.message
    );
}
