//! Patchloop: a Kubernetes controller that keeps a fleet patched — its live
//! machines and the templates they are provisioned from.
//!
//! - [`api`]: the seven resource kinds and their shared value types.
//! - [`engine`]: the pure compliance engine (versions, advisories, evaluation).
//! - [`controller`]: the Kubernetes glue (`patchloop run`).
//! - [`demo`]: `patchloop demo`'s fleet loader, simulated executor and progress.
//! - [`report`]: the fleet report.

pub mod api;
pub mod controller;
pub mod demo;
pub mod engine;
pub mod report;
