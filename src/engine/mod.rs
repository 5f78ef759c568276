//! The compliance engine: pure decisions, no Kubernetes client, no clock of
//! its own (the current time is always an argument).
//!
//! - [`version`]: version ordering per ecosystem (dpkg, rpm, apk).
//! - [`advisory`]: OSV and KEV records → one model → an index by (ecosystem,
//!   package), and the diff of two indexes.
//! - [`inventory`]: dpkg / rpm / apk inventories → one package model and the
//!   compact line format the API stores.
//! - [`package_grammar`]: package names, architectures and versions held
//!   to each family's grammar before they can reach a Job.
//! - [`os_release`]: a machine's `os-release` file → its platform (OSV
//!   ecosystem).
//! - [`selector`]: label selectors without a cluster.
//! - [`evaluate`]: policies × inventory × advisories × exceptions × now →
//!   findings, verdict, next change.
//! - [`fixes`]: an evaluation → the packages and minimum fixed versions to
//!   install, with the digest that names the set.
//! - [`window`]: maintenance windows: cron + duration + IANA time zone →
//!   open now? when next?
//! - [`outcome`]: a Workload's remediation record × its Jobs × its freshest
//!   inventory × now → the next record (verified, failed, backing off).
//! - [`rollout`]: policy × workload states × jobs in flight × ledger × now →
//!   which remediation Jobs to start, and when to look again.
//! - [`change`]: the ChangeRequest lifecycle: scope and digest, approval,
//!   publication checks, the next phase.
//! - [`lease`]: when a leader whose lease renewals fail stops leading.
//! - [`backoff`]: per-object retry delays of failing reconciles (5 s doubling
//!   to 5 min, reset by a success).

pub mod advisory;
pub mod backoff;
pub mod change;
pub mod evaluate;
pub mod fixes;
pub mod inventory;
pub mod lease;
pub mod os_release;
pub mod outcome;
pub mod package_grammar;
pub mod rollout;
pub mod selector;
pub mod version;
pub mod window;
