//! Where configuration comes from. In non-Kubernetes mode that is a
//! directory of YAML files (`file`), read document by document (`parse`)
//! with field positions (`position`); in Kubernetes the API server
//! (`kube`), merged with that directory.

pub mod file;
pub mod kube;
pub mod parse;
pub mod position;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Serialize, Serializer};

pub use file::{FileSource, FileSourceError};
pub use parse::{parse_file, parse_text, ParsedDocument};

/// `file:line:column` (1-based) of a document or field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub file: Arc<PathBuf>,
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub fn new(file: Arc<PathBuf>, line: usize, column: usize) -> Self {
        Self { file, line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

impl Serialize for Location {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Location", 3)?;
        st.serialize_field("file", &self.file.display().to_string())?;
        st.serialize_field("line", &self.line)?;
        st.serialize_field("column", &self.column)?;
        st.end()
    }
}
