//! Test-only failpoints: behaviour that integration tests must provoke
//! deterministically (a crash right after a create, a lagging watch) is
//! reached through these, enabled only by the `PATCHLOOP_FAILPOINTS`
//! environment variable (`name` or `name=value`, comma-separated), never by
//! sleeps in tests. Unset in production: every check is a map lookup on a
//! map that is empty.

use std::collections::HashMap;
use std::sync::OnceLock;

/// The environment variable that enables failpoints.
pub const ENV: &str = "PATCHLOOP_FAILPOINTS";
/// The exit code of a process stopped by a failpoint.
pub const EXIT_CODE: i32 = 86;

/// The process exits right after creating a remediation Job, before
/// anything else records it.
pub const EXIT_AFTER_JOB_CREATE: &str = "exit-after-job-create";
/// The process exits once a rollout round that created remediation Jobs
/// has written the policy's status (its ledger), before any Workload has
/// recorded the new Jobs.
pub const EXIT_AFTER_ROLLOUT_ROUND: &str = "exit-after-rollout-round";
/// The process exits right after a Workload's status first records a new
/// remediation Job (`Running`), before the policy's next round.
pub const EXIT_AFTER_REMEDIATION_RECORD: &str = "exit-after-remediation-record";
/// The process exits right after the template reconciler creates a
/// ChangeRequest, before the Template's status names it.
pub const EXIT_AFTER_CHANGE_REQUEST_CREATE: &str = "exit-after-change-request-create";
// The ChangeRequest build/test/publish sequence, one failpoint after each
// write (src/controller/change.rs lists them in order).
/// The process exits right after a ChangeRequest's status records
/// `Approved`, before the build Job is created.
pub const EXIT_AFTER_APPROVED_STATUS: &str = "exit-after-approved-status";
/// The process exits right after creating a build Job, before the request
/// records `Building` (and the nonce's hash).
pub const EXIT_AFTER_BUILD_JOB_CREATE: &str = "exit-after-build-job-create";
/// The process exits right after the request records `Building`.
pub const EXIT_AFTER_BUILDING_STATUS: &str = "exit-after-building-status";
/// The process exits right after the request pins its build result, before
/// the test Job is created.
pub const EXIT_AFTER_RESULT_PIN: &str = "exit-after-result-pin";
/// The process exits right after creating a test Job, before the request
/// records `Testing`.
pub const EXIT_AFTER_TEST_JOB_CREATE: &str = "exit-after-test-job-create";
/// The process exits right after the request records `Testing`.
pub const EXIT_AFTER_TESTING_STATUS: &str = "exit-after-testing-status";
/// The process exits right after writing a new revision to a Template,
/// before the ChangeRequest records `Published`.
pub const EXIT_AFTER_PUBLISH: &str = "exit-after-publish";
/// Job watch events reach the cache this long late (e.g. `3s`).
pub const JOB_WATCH_DELAY: &str = "job-watch-delay";

fn enabled() -> &'static HashMap<String, String> {
    static POINTS: OnceLock<HashMap<String, String>> = OnceLock::new();
    POINTS.get_or_init(|| std::env::var(ENV).map(|v| parse(&v)).unwrap_or_default())
}

fn parse(spec: &str) -> HashMap<String, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), v.trim().to_owned()),
            None => (s.to_owned(), String::new()),
        })
        .collect()
}

/// The delay a failpoint asks for (a duration like `3s`).
pub fn delay(name: &str) -> Option<std::time::Duration> {
    let value = enabled().get(name)?;
    let parsed = crate::api::common::Duration(value.clone()).parse().ok()?;
    parsed.try_into().ok()
}

/// Exits the process when the failpoint is enabled.
pub fn exit_if(name: &str) {
    if enabled().contains_key(name) {
        tracing::warn!(failpoint = name, "failpoint: exiting");
        std::process::exit(EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_values() {
        let p = parse("exit-after-job-create, job-watch-delay=3s,,");
        assert_eq!(p.get("exit-after-job-create").map(String::as_str), Some(""));
        assert_eq!(p.get("job-watch-delay").map(String::as_str), Some("3s"));
        assert_eq!(p.len(), 2);
    }
}
