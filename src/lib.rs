//! Patchloop: a Kubernetes controller that keeps a fleet patched — its live
//! machines and the templates they are provisioned from.
//!
//! - [`api`]: the seven resource kinds and their shared value types.
//! - [`engine`]: the pure compliance engine (versions, advisories, evaluation).

pub mod api;
pub mod controller;
pub mod engine;
pub mod report;
