//! The compliance engine: pure decisions, no Kubernetes client, no clock of
//! its own (the current time is always an argument).
//!
//! - [`version`]: version ordering per ecosystem (dpkg, rpm, apk).
//! - [`advisory`]: OSV and KEV records → one model → an index by (ecosystem,
//!   package), and the diff of two indexes.

pub mod advisory;
pub mod version;
