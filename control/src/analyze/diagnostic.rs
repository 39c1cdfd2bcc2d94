//! A finding with its code, severity and location.

use std::fmt;

use serde::Serialize;

use super::codes::{Code, Severity};
use crate::source::Location;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub severity: Severity,
    pub location: Location,
    /// `Kind namespace/name` of the resource concerned, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        code: Code,
        location: Location,
        resource: Option<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            severity: code.severity(),
            location,
            resource,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `Error [ISM0201] file:line:col (VirtualService default/x) message`,
    /// shaped like `istioctl analyze` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] {}",
            self.severity,
            self.code.id(),
            self.location
        )?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        write!(f, " {}", self.message)
    }
}
