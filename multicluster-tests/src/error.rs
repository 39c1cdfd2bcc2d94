//! The harness's errors; each names the file, process or step to look at.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Binary(#[from] crate::binary::BinaryError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`isthmus {step}` failed: {output}")]
    Ca { step: String, output: String },
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error(transparent)]
    Proxy(#[from] crate::faultproxy::ProxyError),
    #[error("no {what} named {name:?} in this federation")]
    NoSuch { what: &'static str, name: String },
    #[error(
        "no free loopback block of {0} consecutive 127.N.0.0/16 ranges (all of 127.20-250 in use?)"
    )]
    NoFreeBlock(usize),
    #[error("invalid federation spec: {0}")]
    Spec(String),
    #[error("{timeout}\n{logs}")]
    NotReady {
        timeout: crate::wait::Timeout,
        /// Tails of the logs of the processes involved.
        logs: String,
    },
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> HarnessError {
    let path = path.into();
    move |source| HarnessError::Io { what, path, source }
}
