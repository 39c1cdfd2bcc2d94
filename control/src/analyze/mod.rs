//! `isthmus analyze`: schema errors with positions plus semantic checks
//! across resources, reported with `ISM`-codes, severity and location.

mod checks;
mod codes;
mod diagnostic;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

pub use codes::{Code, Severity};
pub use diagnostic::Diagnostic;

use crate::source::file::collect_yaml_files;
use crate::source::{parse_text, Location, ParsedDocument};

/// The result of analyzing a set of files.
#[derive(Debug, Clone, Serialize)]
pub struct AnalysisReport {
    /// Sorted by file, line, column.
    pub diagnostics: Vec<Diagnostic>,
    pub files: usize,
    pub documents: usize,
    /// Documents accepted as resources.
    pub resources: usize,
    /// Documents of groups or kinds Isthmus does not handle.
    pub skipped: usize,
}

impl AnalysisReport {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == severity)
            .count()
    }

    /// Diagnostics carrying `code`.
    pub fn with_code(&self, code: Code) -> impl Iterator<Item = &Diagnostic> + '_ {
        self.diagnostics.iter().filter(move |d| d.code == code)
    }

    /// One line per finding, then a summary line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&d.to_string());
            out.push('\n');
        }
        out.push_str(&format!(
            "Analyzed {} file(s), {} document(s): {} resource(s) accepted, {} skipped; {} error(s), {} warning(s), {} info.\n",
            self.files,
            self.documents,
            self.resources,
            self.skipped,
            self.count(Severity::Error),
            self.count(Severity::Warning),
            self.count(Severity::Info),
        ));
        out
    }

    /// The whole report as pretty JSON (`-o json`).
    pub fn render_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Analyzes files and directories (recursively, `*.yaml`/`*.yml`).
pub fn analyze_paths(paths: &[PathBuf]) -> AnalysisReport {
    let (files, unreadable) = collect_yaml_files(paths);
    let mut diagnostics: Vec<Diagnostic> = unreadable
        .into_iter()
        .map(|(path, e)| {
            Diagnostic::new(
                Code::Unreadable,
                Location::new(Arc::new(path), 1, 1),
                None,
                format!("cannot read: {e}"),
            )
        })
        .collect();
    let mut docs = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => docs.extend(parse_text(file, &text)),
            Err(e) => diagnostics.push(Diagnostic::new(
                Code::Unreadable,
                Location::new(Arc::new(file.clone()), 1, 1),
                None,
                format!("cannot read: {e}"),
            )),
        }
    }
    let mut report = analyze_documents(&docs);
    report.files = files.len();
    report.diagnostics.extend(diagnostics);
    sort(&mut report.diagnostics);
    report
}

/// Analyzes YAML held in memory (`name` is only used in locations).
pub fn analyze_text(name: &Path, text: &str) -> AnalysisReport {
    let docs = parse_text(name, text);
    let mut report = analyze_documents(&docs);
    report.files = 1;
    report
}

/// Runs the cross-resource checks over already parsed documents.
pub fn analyze_documents(docs: &[ParsedDocument]) -> AnalysisReport {
    let mut diagnostics: Vec<Diagnostic> = docs
        .iter()
        .flat_map(|d| d.diagnostics.iter().cloned())
        .collect();
    diagnostics.extend(checks::run(docs));
    sort(&mut diagnostics);
    AnalysisReport {
        diagnostics,
        files: 0,
        documents: docs.len(),
        resources: docs.iter().filter(|d| d.resource.is_some()).count(),
        skipped: docs.iter().filter(|d| d.skipped).count(),
    }
}

fn sort(diagnostics: &mut [Diagnostic]) {
    diagnostics
        .sort_by(|a, b| (&a.location, a.code, &a.message).cmp(&(&b.location, b.code, &b.message)));
}
