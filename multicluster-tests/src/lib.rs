//! Process-level harness for running several Isthmus clusters on one machine,
//! with fault controls. Used by the scenario tests in `tests/` and by
//! `isthmus demo`.
#![forbid(unsafe_code)]

pub mod echo;
pub mod process;
pub mod wait;
