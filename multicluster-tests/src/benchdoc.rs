//! Benchmarks write their numbers into `docs/benchmarks.md`, each into its
//! own `## ` section, leaving the other sections alone.

use std::path::Path;

/// Replaces the section that starts with `heading` (up to the next `## `
/// heading), or appends it when the file has none yet.
pub fn write_section(path: &Path, heading: &str, section: &str) -> std::io::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    std::fs::write(path, replace_section(&old, heading, section))
}

fn replace_section(old: &str, heading: &str, section: &str) -> String {
    match old.find(heading) {
        Some(start) => {
            let rest = &old[start + heading.len()..];
            // A section ends at the next heading or at the next HTML comment
            // line (another script's markers for the section it writes).
            let end = ["\n## ", "\n<!-- "]
                .iter()
                .filter_map(|m| rest.find(m))
                .min()
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(old.len());
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!("{}\n\n{}", old.trim_end_matches('\n'), section),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_section;

    #[test]
    fn replaces_only_its_own_section() {
        let old = "# B\n\n## A\nold a\n\n## X\nold x\n\n## C\nc\n";
        let new = replace_section(old, "## X", "## X\nnew x\n\n");
        assert_eq!(new, "# B\n\n## A\nold a\n\n## X\nnew x\n\n## C\nc\n");
    }

    #[test]
    fn keeps_the_markers_of_the_next_section() {
        let old = "## X\nold x\n\n<!-- other:start -->\n## Y\ny\n<!-- other:end -->\n";
        let new = replace_section(old, "## X", "## X\nnew x\n\n");
        assert_eq!(
            new,
            "## X\nnew x\n\n<!-- other:start -->\n## Y\ny\n<!-- other:end -->\n"
        );
    }

    #[test]
    fn appends_a_missing_section() {
        let new = replace_section("# B\n\n## A\na\n", "## X", "## X\nx\n");
        assert_eq!(new, "# B\n\n## A\na\n\n## X\nx\n");
    }

    #[test]
    fn replaces_the_last_section_to_the_end() {
        let new = replace_section("# B\n\n## X\nold\nmore\n", "## X", "## X\nnew\n");
        assert_eq!(new, "# B\n\n## X\nnew\n");
    }
}
