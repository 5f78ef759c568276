//! Remediation outcomes: (a Workload's remediation record, the Jobs it
//! owns, its freshest inventory, now) → the next record, the Events to
//! publish, and when to look again. Pure: the workload reconciler feeds it
//! what the cluster shows and writes what it returns.
//!
//! Rules (also in the README):
//! - The newest Job of the Workload is the current attempt; the record
//!   follows it (`Running`).
//! - `Complete` → `Verifying` until the Workload's canonical Inventory
//!   shows every package of the Job's fix set at least at its fixed version
//!   in a version that is both newer than the one recorded when the Job was
//!   created (a higher `metadata.generation`, or a recreated object: both
//!   set by the apiserver) and first seen by Patchloop's watch at or after
//!   the Job's `startTime` → `Verified`; past `verifyTimeout` →
//!   `Unverified`. No time a client sends (`reportedAt`, managedFields)
//!   takes part.
//! - `Failed` (or the Job deleted while running) → `BackingOff` until
//!   `finished + backoff × 2^(attempt-1)`, or `Failed` once `attempts` are
//!   used up. An unverified attempt also backs off before the next try.
//! - `Failed` with the script's refusal (exit code 2 and a `refused:`
//!   message: a configuration error on this Workload, e.g. an unpinned host
//!   key) → `Refused`: no retry until
//!   the Workload's spec changes, never a rollout failure.

use jiff::{SignedDuration, Timestamp};

use super::rollout::backoff_after;
use crate::api::common::{Duration, time};
use crate::api::policy::Remediation;
use crate::api::workload::{
    InventoryVersion, RemediationOutcome, RemediationPhase, RemediationRecord,
};

/// The Workload's canonical Inventory as the controller holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenInventory {
    /// Its uid and generation.
    pub version: InventoryVersion,
    /// When Patchloop's watch first showed this version (its own clock).
    pub first_seen: Timestamp,
}

/// A Job as the outcome tracker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// The Job's name.
    pub name: String,
    /// The policy that created it.
    pub policy: Option<String>,
    /// The short digest of the fix set it installs.
    pub fix_set: String,
    /// Its attempt number.
    pub attempt: u32,
    /// Its creation (server time).
    pub created: Timestamp,
    /// `status.startTime`, else its creation.
    pub started: Timestamp,
    /// The Workload generation it was created for.
    pub generation: Option<i64>,
    /// How it ended, if it did.
    pub end: Option<JobEnd>,
    /// The Workload's canonical Inventory when the Job was created (from
    /// the Job's labels; `None` for a Job that carries none).
    pub baseline: Option<InventoryVersion>,
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    /// `Complete` rather than `Failed`.
    pub succeeded: bool,
    /// When.
    pub at: Timestamp,
    /// Why it failed.
    pub message: Option<String>,
}

/// The policy settings outcomes depend on.
#[derive(Debug, Clone, Copy)]
pub struct OutcomeSettings {
    /// Tries per fix set.
    pub attempts: u32,
    /// The wait after the first failure; doubles each time.
    pub backoff: SignedDuration,
    /// How long a success may wait for a confirming inventory.
    pub verify_timeout: SignedDuration,
}

impl OutcomeSettings {
    /// The settings of a policy's `spec.remediation` (an unparsable
    /// duration, already reported on the policy, falls back to its
    /// default).
    pub fn of(r: &Remediation) -> Self {
        let defaults = Remediation::default();
        let parse = |d: &Duration, fallback: &Duration| {
            d.parse()
                .or_else(|_| fallback.parse())
                .unwrap_or(SignedDuration::from_mins(10))
        };
        OutcomeSettings {
            attempts: u32::try_from(r.attempts).unwrap_or(1).max(1),
            backoff: parse(&r.backoff, &defaults.backoff),
            verify_timeout: parse(&r.verify_timeout, &defaults.verify_timeout),
        }
    }
}

/// What the caller must look up before the outcome can be decided (each
/// costs a request, so only when needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Whether the Workload's inventory covers this Job's fix set.
    Coverage(String),
    /// How this failed Job's Pod ended.
    FailureMessage(String),
}

/// How a failed Job's Pod ended: the answer to [`Lookup::FailureMessage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFailure {
    /// Its termination message (empty when it left none).
    pub message: String,
    /// Its script refused to act (exit code 2 and a `refused:` message).
    pub refused: bool,
}

/// Everything [`observe`] depends on.
#[derive(Debug, Clone)]
pub struct ObserveInput<'a> {
    /// The record in status.
    pub record: Option<&'a RemediationRecord>,
    /// The Workload's remediation Jobs in the cache.
    pub jobs: &'a [JobView],
    /// The Workload's canonical Inventory now, if it has one.
    pub inventory: Option<SeenInventory>,
    /// The answer to [`Lookup::Coverage`], once looked up.
    pub covered: Option<bool>,
    /// The answer to [`Lookup::FailureMessage`], once looked up.
    pub failure: Option<PodFailure>,
    /// The driving policy's settings (defaults when none drives it).
    pub settings: OutcomeSettings,
    /// Now.
    pub now: Timestamp,
}

/// An Event to publish about the Workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// A Warning rather than Normal.
    pub warning: bool,
    /// The Event reason.
    pub reason: &'static str,
    /// The note.
    pub message: String,
}

/// The result of [`observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per observation; boxing the record buys nothing"
)]
pub enum Observation {
    /// Look this up and call again.
    Lookup(Lookup),
    /// The decision.
    Decided {
        /// The record to write (`None`: the Workload never had a Job);
        /// boxed, as it is far larger than a lookup.
        record: Option<Box<RemediationRecord>>,
        /// Events for the transitions.
        notices: Vec<Notice>,
        /// When the record can change by itself (the verify timeout).
        wake_at: Option<Timestamp>,
    },
}

/// Decides the next record.
pub fn observe(input: &ObserveInput<'_>) -> Observation {
    let mut record = input.record.cloned();
    let mut notices = Vec::new();
    let mut wake_at = None;
    let started_of = |r: &RemediationRecord| r.started_at.as_ref().map(|t| t.0);

    // The newest Job is the current attempt; an older one kept for
    // inspection never replaces the record of a newer one.
    let newest = input
        .jobs
        .iter()
        .max_by(|a, b| (a.created, a.attempt, &a.name).cmp(&(b.created, b.attempt, &b.name)));
    if let Some(job) = newest {
        let is_new = match &record {
            None => true,
            Some(r) => {
                r.job.as_deref() != Some(job.name.as_str())
                    && started_of(r).is_none_or(|s| job.created >= s)
            }
        };
        if is_new {
            record = Some(RemediationRecord {
                policy: job.policy.clone(),
                fix_set: Some(job.fix_set.clone()),
                attempt: i32::try_from(job.attempt).unwrap_or(i32::MAX),
                job: Some(job.name.clone()),
                phase: Some(RemediationPhase::Running),
                started_at: Some(time(job.started)),
                finished_at: None,
                outcome: None,
                backoff_until: None,
                message: None,
                inventory_baseline: job.baseline.clone(),
                refused_generation: None,
            });
            notices.push(Notice {
                warning: false,
                reason: "RemediationStarted",
                message: format!(
                    "Job {} started: attempt {} of fix set {}",
                    job.name, job.attempt, job.fix_set
                ),
            });
        }
    }
    let Some(mut r) = record else {
        return Observation::Decided {
            record: None,
            notices,
            wake_at,
        };
    };
    let current = r
        .job
        .as_deref()
        .and_then(|name| input.jobs.iter().find(|j| j.name == name));
    let attempt = u32::try_from(r.attempt).unwrap_or(0);
    let give_up = attempt >= input.settings.attempts.max(1);
    let backoff_from = |at: Timestamp| at + backoff_after(input.settings.backoff, attempt);

    let mut just_succeeded = false;
    if r.phase == Some(RemediationPhase::Running) {
        match current {
            Some(job) => {
                // startTime arrives after creation: verification counts
                // from the real start.
                r.started_at = Some(time(job.started));
                match &job.end {
                    None => {}
                    Some(end) if end.succeeded => {
                        r.phase = Some(RemediationPhase::Verifying);
                        r.finished_at = Some(time(end.at));
                        just_succeeded = true;
                    }
                    Some(end) => {
                        let Some(pod) = &input.failure else {
                            return Observation::Lookup(Lookup::FailureMessage(job.name.clone()));
                        };
                        let message = if pod.message.is_empty() {
                            end.message
                                .clone()
                                .unwrap_or_else(|| "the Job failed".into())
                        } else {
                            pod.message.clone()
                        };
                        if pod.refused {
                            refuse(&mut r, end.at, message, job.generation, &mut notices);
                        } else {
                            fail(
                                &mut r,
                                end.at,
                                message,
                                give_up,
                                backoff_from(end.at),
                                &mut notices,
                            );
                        }
                    }
                }
            }
            None => {
                // The record names a Job the cache no longer has: it was
                // deleted before it finished. It is not silently re-run:
                // the attempt counts as failed.
                let name = r.job.clone().unwrap_or_default();
                fail(
                    &mut r,
                    input.now,
                    format!("Job {name} was deleted before it finished"),
                    give_up,
                    backoff_from(input.now),
                    &mut notices,
                );
            }
        }
    }
    // A Job that just succeeded is verified at once when its Inventory is
    // already there (a job reports it before it exits); otherwise its record
    // waits in Verifying.
    if r.phase == Some(RemediationPhase::Verifying) {
        // A record without a baseline (its Job carried none): the Inventory
        // as seen now is the baseline, so only a later change verifies.
        let baseline = r
            .inventory_baseline
            .get_or_insert_with(|| {
                input
                    .inventory
                    .as_ref()
                    .map(|i| i.version.clone())
                    .unwrap_or_default()
            })
            .clone();
        let started = started_of(&r).unwrap_or(input.now);
        let fresh = input
            .inventory
            .as_ref()
            .is_some_and(|i| i.version.is_newer_than(&baseline) && i.first_seen >= started);
        let deadline =
            r.finished_at.as_ref().map_or(input.now, |t| t.0) + input.settings.verify_timeout;
        let verified = if fresh {
            match input.covered {
                None => {
                    let job = r.job.clone().unwrap_or_default();
                    return Observation::Lookup(Lookup::Coverage(job));
                }
                Some(c) => c,
            }
        } else {
            false
        };
        if verified {
            r.phase = Some(RemediationPhase::Verified);
            r.outcome = Some(RemediationOutcome::Verified);
            r.message = Some("a fresh Inventory shows the fixed versions".into());
            notices.push(Notice {
                warning: false,
                reason: "RemediationVerified",
                message: format!(
                    "Job {}: a fresh Inventory shows every fixed version",
                    r.job.as_deref().unwrap_or_default()
                ),
            });
        } else if input.now >= deadline {
            r.phase = Some(RemediationPhase::Unverified);
            r.outcome = Some(RemediationOutcome::Unverified);
            if !give_up {
                r.backoff_until = Some(time(backoff_from(input.now)));
            }
            r.message = Some(format!(
                "Job {} succeeded but no change of the Workload's Inventory seen since the Job started showed the fixed versions within verifyTimeout",
                r.job.as_deref().unwrap_or_default()
            ));
            notices.push(Notice {
                warning: true,
                reason: "RemediationUnverified",
                message: r.message.clone().unwrap_or_default(),
            });
        } else {
            wake_at = Some(deadline);
            if just_succeeded {
                notices.push(Notice {
                    warning: false,
                    reason: "RemediationSucceeded",
                    message: format!(
                        "Job {} completed; waiting for a change of the Workload's Inventory, seen after the Job started, that shows the fixed versions",
                        r.job.as_deref().unwrap_or_default()
                    ),
                });
            }
        }
    }
    Observation::Decided {
        record: Some(Box::new(r)),
        notices,
        wake_at,
    }
}

fn refuse(
    r: &mut RemediationRecord,
    at: Timestamp,
    message: String,
    generation: Option<i64>,
    notices: &mut Vec<Notice>,
) {
    r.finished_at = Some(time(at));
    r.phase = Some(RemediationPhase::Refused);
    r.outcome = Some(RemediationOutcome::Refused);
    r.backoff_until = None;
    r.refused_generation = generation;
    let job = r.job.clone().unwrap_or_default();
    r.message = Some(format!(
        "Job {job} refused to act (exit code 2, a configuration error on this Workload): {message}"
    ));
    notices.push(Notice {
        warning: true,
        reason: "RemediationRefused",
        message: format!(
            "Job {job} refused to act ({message}); fix the Workload's spec: a new attempt starts when it changes"
        ),
    });
}

fn fail(
    r: &mut RemediationRecord,
    at: Timestamp,
    message: String,
    give_up: bool,
    backoff_until: Timestamp,
    notices: &mut Vec<Notice>,
) {
    r.finished_at = Some(time(at));
    r.outcome = Some(RemediationOutcome::Failed);
    r.message = Some(message.clone());
    let job = r.job.clone().unwrap_or_default();
    if give_up {
        r.phase = Some(RemediationPhase::Failed);
        r.backoff_until = None;
        notices.push(Notice {
            warning: true,
            reason: "RemediationGaveUp",
            message: format!(
                "Job {job} failed ({message}); attempt {} was the last for this fix set",
                r.attempt
            ),
        });
    } else {
        r.phase = Some(RemediationPhase::BackingOff);
        let until = backoff_until;
        r.backoff_until = Some(time(backoff_until));
        notices.push(Notice {
            warning: true,
            reason: "RemediationFailed",
            message: format!(
                "Job {job} failed ({message}); attempt {} retries after {until}",
                r.attempt + 1
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp literal")
    }

    const SETTINGS: OutcomeSettings = OutcomeSettings {
        attempts: 2,
        backoff: SignedDuration::from_mins(10),
        verify_timeout: SignedDuration::from_hours(2),
    };

    /// An Inventory version: `uid` at `generation`.
    fn version(uid: &str, generation: i64) -> InventoryVersion {
        InventoryVersion {
            uid: Some(uid.into()),
            generation,
        }
    }

    /// `uid` at `generation`, first seen at `at`.
    fn seen(uid: &str, generation: i64, at: &str) -> Option<SeenInventory> {
        Some(SeenInventory {
            version: version(uid, generation),
            first_seen: ts(at),
        })
    }

    /// A Job created while the Workload's Inventory was `inv-1` at generation 3.
    fn job(name: &str, attempt: u32, created: &str, end: Option<JobEnd>) -> JobView {
        JobView {
            name: name.into(),
            policy: Some("gold".into()),
            fix_set: "abc".into(),
            attempt,
            created: ts(created),
            started: ts(created),
            generation: Some(1),
            end,
            baseline: Some(version("inv-1", 3)),
        }
    }

    fn input<'a>(
        record: Option<&'a RemediationRecord>,
        jobs: &'a [JobView],
        now: &str,
    ) -> ObserveInput<'a> {
        ObserveInput {
            record,
            jobs,
            inventory: None,
            covered: None,
            failure: None,
            settings: SETTINGS,
            now: ts(now),
        }
    }

    fn decided(o: Observation) -> (RemediationRecord, Vec<&'static str>, Option<Timestamp>) {
        match o {
            Observation::Decided {
                record,
                notices,
                wake_at,
            } => (
                *record.expect("a record"),
                notices.iter().map(|n| n.reason).collect(),
                wake_at,
            ),
            Observation::Lookup(l) => panic!("unexpected lookup {l:?}"),
        }
    }

    #[test]
    fn a_new_job_starts_the_record_and_success_verifies_with_a_fresh_inventory() {
        let running = [job("web-abc-1", 1, "2026-11-24T08:00:00Z", None)];
        let (r, n, _) = decided(observe(&input(None, &running, "2026-11-24T08:00:01Z")));
        assert_eq!(r.phase, Some(RemediationPhase::Running));
        assert_eq!((r.attempt, r.job.as_deref()), (1, Some("web-abc-1")));
        assert_eq!(n, ["RemediationStarted"]);

        let done = [job(
            "web-abc-1",
            1,
            "2026-11-24T08:00:00Z",
            Some(JobEnd {
                succeeded: true,
                at: ts("2026-11-24T08:05:00Z"),
                message: None,
            }),
        )];
        let (r, n, wake) = decided(observe(&input(Some(&r), &done, "2026-11-24T08:05:01Z")));
        assert_eq!(r.phase, Some(RemediationPhase::Verifying));
        assert_eq!(n, ["RemediationSucceeded"]);
        assert_eq!(wake, Some(ts("2026-11-24T10:05:00Z")), "the verify timeout");

        assert_eq!(r.inventory_baseline, Some(version("inv-1", 3)));

        // The Inventory as it was when the Job was created proves nothing,
        // whatever times its writers claim.
        let mut i = input(Some(&r), &done, "2026-11-24T08:06:00Z");
        i.inventory = seen("inv-1", 3, "2026-11-24T08:04:00Z");
        let (still, n, wake) = decided(observe(&i));
        assert_eq!(still.phase, Some(RemediationPhase::Verifying));
        assert!(n.is_empty());
        assert_eq!(wake, Some(ts("2026-11-24T10:05:00Z")));

        // A spec change since, seen before the Job started, proves nothing
        // either.
        i.inventory = seen("inv-1", 4, "2026-11-24T07:59:59Z");
        assert_eq!(
            decided(observe(&i)).0.phase,
            Some(RemediationPhase::Verifying)
        );
        // Seen after it started: it must be checked, then covers the fix set.
        i.inventory = seen("inv-1", 4, "2026-11-24T08:04:00Z");
        assert_eq!(
            observe(&i),
            Observation::Lookup(Lookup::Coverage("web-abc-1".into()))
        );
        i.covered = Some(false);
        assert_eq!(
            decided(observe(&i)).0.phase,
            Some(RemediationPhase::Verifying)
        );
        i.covered = Some(true);
        let (r, n, _) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::Verified));
        assert_eq!(r.outcome, Some(RemediationOutcome::Verified));
        assert_eq!(n, ["RemediationVerified"]);
    }

    #[test]
    fn a_job_that_reported_before_it_exited_is_verified_when_its_success_is_seen() {
        let running = RemediationRecord {
            job: Some("web-abc-1".into()),
            attempt: 1,
            fix_set: Some("abc".into()),
            phase: Some(RemediationPhase::Running),
            started_at: Some(time(ts("2026-11-24T08:00:00Z"))),
            inventory_baseline: Some(version("inv-1", 3)),
            ..Default::default()
        };
        let done = [job(
            "web-abc-1",
            1,
            "2026-11-24T08:00:00Z",
            Some(JobEnd {
                succeeded: true,
                at: ts("2026-11-24T08:05:00Z"),
                message: None,
            }),
        )];
        let mut i = input(Some(&running), &done, "2026-11-24T08:05:01Z");
        i.inventory = seen("inv-1", 4, "2026-11-24T08:04:30Z");
        assert_eq!(
            observe(&i),
            Observation::Lookup(Lookup::Coverage("web-abc-1".into()))
        );
        i.covered = Some(true);
        let (r, n, wake) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::Verified));
        assert_eq!(r.finished_at.map(|t| t.0), Some(ts("2026-11-24T08:05:00Z")));
        assert_eq!(
            n,
            ["RemediationVerified"],
            "one Event, not Succeeded then Verified"
        );
        assert_eq!(wake, None);

        // Not covered: it waits in Verifying, and says the Job succeeded.
        i.covered = Some(false);
        let (r, n, _) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::Verifying));
        assert_eq!(n, ["RemediationSucceeded"]);
    }

    #[test]
    fn no_confirmation_within_the_timeout_is_unverified() {
        let done = [job(
            "web-abc-1",
            1,
            "2026-11-24T08:00:00Z",
            Some(JobEnd {
                succeeded: true,
                at: ts("2026-11-24T08:05:00Z"),
                message: None,
            }),
        )];
        let verifying = RemediationRecord {
            job: Some("web-abc-1".into()),
            attempt: 1,
            fix_set: Some("abc".into()),
            phase: Some(RemediationPhase::Verifying),
            started_at: Some(time(ts("2026-11-24T08:00:00Z"))),
            finished_at: Some(time(ts("2026-11-24T08:05:00Z"))),
            ..Default::default()
        };
        let (r, n, _) = decided(observe(&input(
            Some(&verifying),
            &done,
            "2026-11-24T10:05:00Z",
        )));
        assert_eq!(r.phase, Some(RemediationPhase::Unverified));
        assert_eq!(r.outcome, Some(RemediationOutcome::Unverified));
        assert_eq!(
            r.backoff_until.as_ref().map(|t| t.0),
            Some(ts("2026-11-24T10:15:00Z"))
        );
        assert_eq!(n, ["RemediationUnverified"]);
    }

    #[test]
    fn failures_back_off_then_give_up_with_the_pod_message() {
        let failed = |name: &str, attempt, created: &str, at: &str| {
            job(
                name,
                attempt,
                created,
                Some(JobEnd {
                    succeeded: false,
                    at: ts(at),
                    message: Some("BackoffLimitExceeded".into()),
                }),
            )
        };
        let jobs = [failed(
            "web-abc-1",
            1,
            "2026-11-24T08:00:00Z",
            "2026-11-24T08:01:00Z",
        )];
        let (first, _, _) = decided(observe(&input(
            None,
            &[job("web-abc-1", 1, "2026-11-24T08:00:00Z", None)],
            "2026-11-24T08:00:00Z",
        )));
        let i = input(Some(&first), &jobs, "2026-11-24T08:01:05Z");
        assert_eq!(
            observe(&i),
            Observation::Lookup(Lookup::FailureMessage("web-abc-1".into()))
        );
        let mut i = i;
        i.failure = Some(PodFailure {
            message: "container patch: E: broken dpkg".into(),
            refused: false,
        });
        let (r, n, _) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::BackingOff));
        assert_eq!(
            r.message.as_deref(),
            Some("container patch: E: broken dpkg")
        );
        assert_eq!(
            r.backoff_until.as_ref().map(|t| t.0),
            Some(ts("2026-11-24T08:11:00Z"))
        );
        assert_eq!(n, ["RemediationFailed"]);

        // Without a pod message, the Job's own reason.
        let mut i = input(Some(&first), &jobs, "2026-11-24T08:01:05Z");
        i.failure = Some(PodFailure {
            message: String::new(),
            refused: false,
        });
        assert_eq!(
            decided(observe(&i)).0.message.as_deref(),
            Some("BackoffLimitExceeded")
        );

        // The second (last) attempt gives up.
        let jobs2 = [
            jobs[0].clone(),
            failed(
                "web-abc-2",
                2,
                "2026-11-24T08:12:00Z",
                "2026-11-24T08:13:00Z",
            ),
        ];
        let (second, n, _) = decided(observe(&input(
            Some(&r),
            &[
                jobs2[0].clone(),
                job("web-abc-2", 2, "2026-11-24T08:12:00Z", None),
            ],
            "2026-11-24T08:12:01Z",
        )));
        assert_eq!(
            (second.attempt, second.phase),
            (2, Some(RemediationPhase::Running))
        );
        assert_eq!(n, ["RemediationStarted"]);
        let mut i = input(Some(&second), &jobs2, "2026-11-24T08:13:01Z");
        i.failure = Some(PodFailure {
            message: String::new(),
            refused: false,
        });
        let (r, n, _) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::Failed));
        assert_eq!(r.backoff_until, None);
        assert_eq!(n, ["RemediationGaveUp"]);
    }

    #[test]
    fn a_job_deleted_while_running_counts_as_failed_and_old_jobs_never_replace_the_record() {
        let (running, _, _) = decided(observe(&input(
            None,
            &[job("web-abc-2", 2, "2026-11-24T09:00:00Z", None)],
            "2026-11-24T09:00:00Z",
        )));
        // Only an older, kept Job remains.
        let old = [job(
            "web-abc-1",
            1,
            "2026-11-24T08:00:00Z",
            Some(JobEnd {
                succeeded: false,
                at: ts("2026-11-24T08:01:00Z"),
                message: None,
            }),
        )];
        let (r, n, _) = decided(observe(&input(
            Some(&running),
            &old,
            "2026-11-24T09:01:00Z",
        )));
        assert_eq!(r.job.as_deref(), Some("web-abc-2"));
        assert_eq!(r.phase, Some(RemediationPhase::Failed));
        assert_eq!(
            r.message.as_deref(),
            Some("Job web-abc-2 was deleted before it finished")
        );
        assert_eq!(n, ["RemediationGaveUp"]);
        // Later observations change nothing.
        let (again, n, _) = decided(observe(&input(Some(&r), &old, "2026-11-24T10:00:00Z")));
        assert_eq!(again, r);
        assert!(n.is_empty());
    }

    #[test]
    fn the_start_time_replaces_the_creation_once_known() {
        let mut j = job("web-abc-1", 1, "2026-11-24T08:00:00Z", None);
        let (r, _, _) = decided(observe(&input(
            None,
            std::slice::from_ref(&j),
            "2026-11-24T08:00:00Z",
        )));
        j.started = ts("2026-11-24T08:00:30Z");
        let (r, n, _) = decided(observe(&input(Some(&r), &[j], "2026-11-24T08:01:00Z")));
        assert_eq!(
            r.started_at.as_ref().map(|t| t.0),
            Some(ts("2026-11-24T08:00:30Z"))
        );
        assert!(n.is_empty());
    }

    fn verifying(baseline: Option<InventoryVersion>) -> RemediationRecord {
        RemediationRecord {
            job: Some("web-abc-1".into()),
            attempt: 1,
            fix_set: Some("abc".into()),
            phase: Some(RemediationPhase::Verifying),
            started_at: Some(time(ts("2026-11-24T08:00:00Z"))),
            finished_at: Some(time(ts("2026-11-24T08:05:00Z"))),
            inventory_baseline: baseline,
            ..Default::default()
        }
    }

    /// Whether `now` (seen after the Job started) counts as fresh.
    fn is_fresh(record: &RemediationRecord, now: Option<InventoryVersion>) -> bool {
        let mut i = input(Some(record), &[], "2026-11-24T08:06:00Z");
        i.inventory = now.map(|version| SeenInventory {
            version,
            first_seen: ts("2026-11-24T08:04:00Z"),
        });
        matches!(observe(&i), Observation::Lookup(Lookup::Coverage(_)))
    }

    #[test]
    fn only_a_server_side_change_since_the_job_was_created_is_fresh() {
        let r = verifying(Some(version("inv-1", 3)));
        assert!(!is_fresh(&r, None), "no Inventory");
        assert!(!is_fresh(&r, Some(version("inv-1", 3))), "unchanged");
        assert!(is_fresh(&r, Some(version("inv-1", 4))), "a spec change");
        assert!(
            is_fresh(&r, Some(version("inv-2", 1))),
            "deleted and recreated: a new object"
        );
        // No Inventory when the Job was created: any Inventory since is new.
        let none_before = verifying(Some(InventoryVersion::default()));
        assert!(!is_fresh(&none_before, None));
        assert!(is_fresh(&none_before, Some(version("inv-1", 1))));
    }

    #[test]
    fn a_record_without_a_baseline_takes_the_inventory_seen_now_and_waits_for_a_change() {
        let legacy = verifying(None);
        let mut i = input(Some(&legacy), &[], "2026-11-24T08:06:00Z");
        i.inventory = seen("inv-1", 7, "2026-11-24T08:04:00Z");
        let (r, n, _) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::Verifying));
        assert_eq!(r.inventory_baseline, Some(version("inv-1", 7)));
        assert!(n.is_empty());
        assert!(is_fresh(&r, Some(version("inv-1", 8))));
    }

    #[test]
    fn a_refusal_is_recorded_for_its_generation_without_backoff_or_attempts() {
        let (running, _, _) = decided(observe(&input(
            None,
            &[job("decoy-abc-1", 1, "2026-11-24T08:00:00Z", None)],
            "2026-11-24T08:00:00Z",
        )));
        let mut refused = job(
            "decoy-abc-1",
            1,
            "2026-11-24T08:00:00Z",
            Some(JobEnd {
                succeeded: false,
                at: ts("2026-11-24T08:00:10Z"),
                message: Some("BackoffLimitExceeded".into()),
            }),
        );
        refused.generation = Some(7);
        let mut i = input(
            Some(&running),
            std::slice::from_ref(&refused),
            "2026-11-24T08:00:11Z",
        );
        i.failure = Some(PodFailure {
            message: "container patch: refused: no pinned host key for this Workload".into(),
            refused: true,
        });
        let (r, n, _) = decided(observe(&i));
        assert_eq!(r.phase, Some(RemediationPhase::Refused));
        assert_eq!(r.outcome, Some(RemediationOutcome::Refused));
        assert_eq!(r.refused_generation, Some(7));
        assert_eq!(r.backoff_until, None);
        assert!(
            r.message
                .as_deref()
                .is_some_and(|m| m.contains("exit code 2") && m.contains("no pinned host key")),
            "{:?}",
            r.message
        );
        assert_eq!(n, ["RemediationRefused"]);
        // Observed again: nothing changes, no new Event.
        let mut again = input(
            Some(&r),
            std::slice::from_ref(&refused),
            "2026-11-24T09:00:00Z",
        );
        again.failure = i.failure.clone();
        let (same, n, _) = decided(observe(&again));
        assert_eq!(same, r);
        assert!(n.is_empty());
    }
}
