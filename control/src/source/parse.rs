//! Turns the text of one file into typed resources, each with its location
//! and every problem found in it (schema and per-resource validation).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::position::{split_documents, PathIndex, RootKind, YamlDocument};
use super::Location;
use crate::analyze::{Code, Diagnostic};
use crate::config::{lookup, validate, Kind, Resource, ResourceKey, TypeLookup, DEFAULT_NAMESPACE};

/// One YAML document of a file and what became of it.
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// Where the document starts.
    pub location: Location,
    /// kind/namespace/name when the document names a kind Isthmus reads,
    /// even if the document is rejected (so duplicates and "last good"
    /// bookkeeping still work).
    pub key: Option<ResourceKey>,
    /// The typed resource, present only when the document has no errors.
    pub resource: Option<Arc<Resource>>,
    /// Field positions, for pointing later findings at a line.
    pub positions: Arc<PathIndex>,
    pub diagnostics: Vec<Diagnostic>,
    /// A document of an API group or kind Isthmus does not handle.
    pub skipped: bool,
}

impl ParsedDocument {
    /// Location of the field at `path`, or of its nearest existing parent.
    pub fn locate(&self, path: &str) -> Location {
        match self.positions.position(path) {
            Some((line, column)) => Location::new(self.location.file.clone(), line, column),
            None => self.location.clone(),
        }
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Reads and parses one file. I/O errors are returned; everything about the
/// content is reported in the documents' diagnostics.
pub fn parse_file(path: &Path) -> std::io::Result<Vec<ParsedDocument>> {
    let text = std::fs::read_to_string(path)?;
    Ok(parse_text(path, &text))
}

/// Parses every document of `text`, which was read from `file`.
pub fn parse_text(file: &Path, text: &str) -> Vec<ParsedDocument> {
    let file = Arc::new(PathBuf::from(file));
    split_documents(text)
        .into_iter()
        .filter_map(|doc| parse_document(&file, doc))
        .collect()
}

fn parse_document(file: &Arc<PathBuf>, doc: YamlDocument) -> Option<ParsedDocument> {
    let (line, column) = doc.start();
    let location = Location::new(file.clone(), line, column);
    let mut parsed = ParsedDocument {
        location: location.clone(),
        key: None,
        resource: None,
        positions: Arc::new(PathIndex::default()),
        diagnostics: Vec::new(),
        skipped: false,
    };
    if let Some(((line, column), why)) = &doc.syntax_error {
        parsed.diagnostics.push(Diagnostic::new(
            Code::YamlSyntax,
            Location::new(file.clone(), *line, *column),
            None,
            format!("YAML syntax error: {why}; this document is ignored"),
        ));
        return Some(parsed);
    }
    parsed.positions = Arc::new(doc.index.clone());
    match doc.index.root_kind() {
        RootKind::Empty => return None,
        RootKind::Other => {
            parsed.diagnostics.push(Diagnostic::new(
                Code::SchemaError,
                location,
                None,
                "document is not a mapping; expected a resource with apiVersion, kind, metadata and spec",
            ));
            return Some(parsed);
        }
        RootKind::Mapping => {}
    }
    let index = &doc.index;
    let (Some(api_version), Some(kind_name)) = (index.scalar("apiVersion"), index.scalar("kind"))
    else {
        parsed.diagnostics.push(Diagnostic::new(
            Code::MissingTypeInfo,
            location,
            None,
            "document has no apiVersion or kind",
        ));
        return Some(parsed);
    };
    let name = index.scalar("metadata.name").unwrap_or("").to_string();
    let namespace = index
        .scalar("metadata.namespace")
        .unwrap_or(DEFAULT_NAMESPACE)
        .to_string();
    let label = format!("{kind_name} {namespace}/{name}");
    let kind = match lookup(api_version, kind_name) {
        TypeLookup::Known(kind) => kind,
        TypeLookup::ForeignGroup { group, kind } => {
            parsed.skipped = true;
            parsed.diagnostics.push(Diagnostic::new(
                Code::SkippedForeignGroup,
                location,
                Some(label),
                format!(
                    "skipped: API group {:?} ({kind}) is not handled by Isthmus",
                    group
                ),
            ));
            return Some(parsed);
        }
        TypeLookup::UnsupportedKind { group, kind } => {
            parsed.skipped = true;
            parsed.diagnostics.push(Diagnostic::new(
                Code::UnsupportedKind,
                location,
                Some(label),
                format!("skipped: {group}/{kind} is not implemented by Isthmus; it has no effect"),
            ));
            return Some(parsed);
        }
        TypeLookup::UnsupportedVersion { kind, version } => {
            parsed.diagnostics.push(Diagnostic::new(
                Code::UnsupportedVersion,
                parsed.locate("apiVersion"),
                Some(label),
                format!(
                    "{kind} is not accepted at {}/{version}; use one of: {}",
                    kind.group(),
                    kind.versions()
                        .iter()
                        .map(|v| format!("{}/{v}", kind.group()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            return Some(parsed);
        }
    };
    parsed.key = Some(ResourceKey {
        kind,
        namespace,
        name,
    });
    match Resource::from_yaml(kind, &doc.text) {
        Ok(resource) => {
            for issue in validate::validate(&resource) {
                let at = parsed.locate(&issue.path);
                parsed.diagnostics.push(Diagnostic::new(
                    issue.code,
                    at,
                    Some(label.clone()),
                    issue.message,
                ));
            }
            if !parsed.has_errors() {
                parsed.resource = Some(Arc::new(resource));
            }
        }
        Err(err) => {
            let at = match err.location() {
                Some(l) => Location::new(
                    file.clone(),
                    doc.start_line + l.line().saturating_sub(1),
                    l.column(),
                ),
                None => location,
            };
            let mut message = clean_serde_message(&err.to_string());
            let code = classify(&message);
            if code == Code::UnknownField {
                message.push_str(" (check the spelling, and the indentation: a key indented too little lands in its parent)");
            }
            parsed
                .diagnostics
                .push(Diagnostic::new(code, at, Some(label), message));
        }
    }
    Some(parsed)
}

/// serde_yaml_ng appends " at line L column C"; the location is reported
/// separately, relative to the whole file.
pub(crate) fn clean_serde_message(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

/// Schema errors raised by our value types start with a fixed phrase.
pub(crate) fn classify(message: &str) -> Code {
    if message.contains("unknown field") {
        Code::UnknownField
    } else if message.contains("invalid duration") {
        Code::InvalidDuration
    } else if message.contains("invalid percentage") {
        Code::InvalidPercentage
    } else if message.contains("invalid regex") {
        Code::InvalidRegex
    } else {
        Code::SchemaError
    }
}

/// A document's kind is worth telling apart in tests and logs.
pub fn kind_of(doc: &ParsedDocument) -> Option<Kind> {
    doc.key.as_ref().map(|k| k.kind)
}
