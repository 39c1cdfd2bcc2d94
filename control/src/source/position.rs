//! Splits a YAML stream into documents and records where every field of a
//! document starts, so findings can point at `file:line:column` of the
//! offending field rather than just the document.
//!
//! saphyr's event parser gives spans; serde_yaml_ng (used for the typed
//! parse) does not expose them. A syntax error ends one document only: the
//! reader resumes at the next `---` line, so later documents still load.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScanError, Span};

/// 1-based line and column.
pub type LineCol = (usize, usize);

/// Field path → position and (for scalars) value, for one document.
#[derive(Debug, Default, Clone)]
pub struct PathIndex {
    positions: HashMap<String, LineCol>,
    scalars: HashMap<String, String>,
    root_kind: RootKind,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    #[default]
    Empty,
    Mapping,
    Other,
}

impl PathIndex {
    /// Where `path` (e.g. `spec.http[0].route`) starts; for a missing path,
    /// the nearest ancestor that exists (so a finding about an absent field
    /// points at its parent).
    pub fn position(&self, path: &str) -> Option<LineCol> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
            if p.is_empty() {
                return self.positions.get("").copied();
            }
        }
    }

    /// The exact position of `path`, without falling back to ancestors.
    pub fn exact_position(&self, path: &str) -> Option<LineCol> {
        self.positions.get(path).copied()
    }

    /// The scalar text at `path` (`apiVersion`, `metadata.name`, ...).
    pub fn scalar(&self, path: &str) -> Option<&str> {
        self.scalars.get(path).map(String::as_str)
    }

    pub fn root_kind(&self) -> RootKind {
        self.root_kind
    }
}

/// One document of a YAML stream.
#[derive(Debug, Clone)]
pub struct YamlDocument {
    /// 1-based line on which `text` begins in the file.
    pub start_line: usize,
    /// The document's own text, for the typed parse.
    pub text: String,
    pub index: PathIndex,
    /// Set when the document is not well-formed YAML.
    pub syntax_error: Option<(LineCol, String)>,
}

impl YamlDocument {
    /// Position of the document's first node (or its first line).
    pub fn start(&self) -> LineCol {
        self.index.position("").unwrap_or((self.start_line, 1))
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

struct Builder {
    start_byte: usize,
    start_line: usize,
    index: PathIndex,
    stack: Vec<Frame>,
}

impl Builder {
    fn new(start_byte: usize, start_line: usize) -> Self {
        Self {
            start_byte,
            start_line,
            index: PathIndex::default(),
            stack: Vec::new(),
        }
    }

    /// Handles a node event: returns the node's path, or `None` when the
    /// node is a mapping key (keys are recorded, not descended into).
    fn node_path(&mut self, pos: LineCol, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => {
                self.index.positions.entry(String::new()).or_insert(pos);
                Some(String::new())
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.index.positions.entry(p.clone()).or_insert(pos);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // This node is a key. Complex keys get a placeholder so
                    // their value still pairs up.
                    let k = scalar.unwrap_or("?").to_string();
                    let p = join(path, &k);
                    self.index.positions.entry(p).or_insert(pos);
                    *key = Some(k);
                    None
                }
                Some(k) => Some(join(path, &k)),
            },
        }
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn line_col(span: &Span, line_offset: usize) -> LineCol {
    (span.start.line() + line_offset, span.start.col() + 1)
}

/// A document located in the stream, before its text is cut out:
/// (start byte, start line, field index, syntax error).
type Found = (usize, usize, PathIndex, Option<(LineCol, String)>);

/// Splits `text` into documents, recovering from syntax errors at the next
/// document separator.
pub fn split_documents(text: &str) -> Vec<YamlDocument> {
    let mut found: Vec<Found> = Vec::new();
    let mut chunk_start = 0usize;
    loop {
        let chunk = &text[chunk_start..];
        let line_offset = text[..chunk_start].matches('\n').count();
        let chars = CharToByte::new(chunk);
        let mut builder: Option<Builder> = None;
        let mut complex_key_depth = 0usize;
        let mut error: Option<ScanError> = None;
        for item in Parser::new_from_str(chunk) {
            let (event, span) = match item {
                Ok(e) => e,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            let pos = line_col(&span, line_offset);
            match event {
                Event::DocumentStart(_) => {
                    let byte = line_start(chunk, chars.byte(span.start.index()));
                    let line = span.start.line() + line_offset;
                    builder = Some(Builder::new(chunk_start + byte, line));
                }
                Event::DocumentEnd => {
                    if let Some(b) = builder.take() {
                        found.push((b.start_byte, b.start_line, b.index, None));
                    }
                }
                Event::Scalar(value, ..) => {
                    if let Some(b) = builder.as_mut() {
                        if complex_key_depth == 0 {
                            if let Some(path) = b.node_path(pos, Some(&value)) {
                                if b.stack.is_empty() {
                                    b.index.root_kind = if value.trim().is_empty()
                                        || value == "~"
                                        || value == "null"
                                    {
                                        RootKind::Empty
                                    } else {
                                        RootKind::Other
                                    };
                                }
                                b.index.scalars.insert(path, value.into_owned());
                            }
                        }
                    }
                }
                Event::Alias(_) => {
                    if let Some(b) = builder.as_mut() {
                        if complex_key_depth == 0 {
                            b.node_path(pos, Some("*"));
                        }
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let is_map = matches!(event, Event::MappingStart(..));
                    if let Some(b) = builder.as_mut() {
                        if complex_key_depth > 0 {
                            complex_key_depth += 1;
                            continue;
                        }
                        let at_root = b.stack.is_empty();
                        match b.node_path(pos, None) {
                            Some(path) => {
                                if at_root {
                                    b.index.root_kind = if is_map {
                                        RootKind::Mapping
                                    } else {
                                        RootKind::Other
                                    };
                                }
                                b.stack.push(if is_map {
                                    Frame::Map { path, key: None }
                                } else {
                                    Frame::Seq { path, next: 0 }
                                });
                            }
                            None => complex_key_depth = 1,
                        }
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if complex_key_depth > 0 {
                        complex_key_depth -= 1;
                    } else if let Some(b) = builder.as_mut() {
                        b.stack.pop();
                    }
                }
                Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
            }
        }
        let Some(err) = error else { break };
        let marker = err.marker();
        let err_pos = (marker.line() + line_offset, marker.col() + 1);
        let err_byte = chars.byte(marker.index());
        // Outside any document (e.g. a broken `---` line): the broken part
        // starts on the error's own line, after the documents already found.
        let (start_byte, start_line) = match builder.take() {
            Some(b) => (b.start_byte, b.start_line),
            None => (chunk_start + line_start(chunk, err_byte), err_pos.0),
        };
        found.push((
            start_byte,
            start_line,
            PathIndex::default(),
            Some((err_pos, err.info().to_string())),
        ));
        let search_from = chunk_start + err_byte.max(start_byte - chunk_start + 1).min(chunk.len());
        match next_separator(text, search_from) {
            Some(next) => chunk_start = next,
            None => break,
        }
    }
    let mut docs = Vec::with_capacity(found.len());
    for i in 0..found.len() {
        let end = found.get(i + 1).map_or(text.len(), |f| f.0);
        let (start_byte, start_line, index, syntax_error) = found[i].clone();
        docs.push(YamlDocument {
            start_line,
            text: text[start_byte..end.max(start_byte)].to_string(),
            index,
            syntax_error,
        });
    }
    docs
}

/// Byte offset of the start of the line containing `byte`.
fn line_start(text: &str, byte: usize) -> usize {
    text[..byte].rfind('\n').map_or(0, |i| i + 1)
}

/// The byte offset of the next line at or after `from` that starts a new
/// document (`---` followed by a space or the end of the line).
fn next_separator(text: &str, from: usize) -> Option<usize> {
    let mut at = line_start(text, from.min(text.len()));
    if at < from {
        at = text[at..].find('\n').map(|i| at + i + 1)?;
    }
    while at < text.len() {
        let line = &text[at..];
        if let Some(rest) = line.strip_prefix("---") {
            if rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']) {
                return Some(at);
            }
        }
        at = line.find('\n').map(|i| at + i + 1)?;
    }
    None
}

/// saphyr counts characters; slicing needs bytes.
struct CharToByte {
    offsets: Vec<usize>,
    len: usize,
}

impl CharToByte {
    fn new(text: &str) -> Self {
        Self {
            offsets: text.char_indices().map(|(b, _)| b).collect(),
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        self.offsets.get(char_index).copied().unwrap_or(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_DOCS: &str = "# comment\napiVersion: v1\nkind: A\nmetadata:\n  name: a\nspec:\n  list:\n  - x: 1\n  - y: 2\n---\napiVersion: v1\nkind: B\n";

    #[test]
    fn splits_documents_and_indexes_fields() {
        let docs = split_documents(TWO_DOCS);
        assert_eq!(docs.len(), 2);
        let a = &docs[0];
        assert_eq!(a.index.scalar("kind"), Some("A"));
        assert_eq!(a.index.scalar("metadata.name"), Some("a"));
        assert_eq!(a.index.exact_position("metadata.name"), Some((5, 3)));
        assert_eq!(a.index.exact_position("spec.list[1]"), Some((9, 5)));
        assert_eq!(a.index.exact_position("spec.list[1].y"), Some((9, 5)));
        // Missing fields fall back to their nearest ancestor.
        assert_eq!(a.index.position("spec.list[1].z"), Some((9, 5)));
        let b = &docs[1];
        assert_eq!(b.start_line, 10);
        assert_eq!(b.index.scalar("kind"), Some("B"));
        assert_eq!(b.index.exact_position("kind"), Some((12, 1)));
        assert!(b.text.contains("kind: B"));
    }

    #[test]
    fn syntax_error_spoils_only_its_document() {
        let text = "kind: A\n---\nkind: [unclosed\nname: x\n---\nkind: C\n";
        let docs = split_documents(text);
        assert_eq!(docs.len(), 3, "{docs:#?}");
        assert!(docs[0].syntax_error.is_none());
        let (pos, _) = docs[1]
            .syntax_error
            .clone()
            .expect("second document is broken");
        assert!(pos.0 >= 3 && pos.0 <= 5, "error line {pos:?}");
        assert!(docs[2].syntax_error.is_none());
        assert_eq!(docs[2].index.scalar("kind"), Some("C"));
        assert_eq!(docs[2].index.exact_position("kind"), Some((6, 1)));
    }

    #[test]
    fn empty_documents_are_empty() {
        let docs = split_documents("---\n---\nkind: A\n");
        assert!(docs.iter().any(|d| d.index.scalar("kind") == Some("A")));
        assert!(docs
            .iter()
            .filter(|d| d.index.scalar("kind").is_none())
            .all(|d| d.index.root_kind() == RootKind::Empty));
    }
}
