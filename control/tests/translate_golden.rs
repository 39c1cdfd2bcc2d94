//! Golden tests of the translation: each directory under `tests/golden`
//! holds a case (`case.yaml`: local cluster, proxy, registry; `config.yaml`:
//! the Istio resources) and `expected.txt`, the rendered resources.
//! `UPDATE_GOLDEN=1 cargo test -p isthmus-control --test translate_golden`
//! rewrites the expectations; review every change by eye.

mod translate_support;

use isthmus_control::translate::render::render_resources;
use isthmus_xds::TypeUrl;

fn render(dir: &std::path::Path) -> String {
    let loaded = translate_support::load(dir);
    let all = translate_support::translate_all(&loaded);
    let mut out = String::new();
    for t in TypeUrl::ALL {
        out.push_str(&format!("=== {} ===\n", t.short()));
        out.push_str(&render_resources(&all[&t]));
    }
    out
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let dirs = translate_support::case_dirs();
    assert!(
        dirs.len() >= 8,
        "expected the golden cases under tests/golden, found {dirs:?}"
    );
    let mut failures = Vec::new();
    for dir in dirs {
        let actual = render(&dir);
        let path = dir.join("expected.txt");
        if update {
            std::fs::write(&path, &actual).expect("golden file writable");
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            let first = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
            let context: Vec<&str> = actual
                .lines()
                .skip(first.saturating_sub(3))
                .take(8)
                .collect();
            failures.push(format!(
                "{}: differs from expected.txt at line {} (UPDATE_GOLDEN=1 to rewrite); actual around there:\n{}",
                dir.display(),
                first + 1,
                context.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn translation_is_deterministic() {
    for dir in translate_support::case_dirs() {
        assert_eq!(
            render(&dir),
            render(&dir),
            "{} renders differently twice",
            dir.display()
        );
    }
}
