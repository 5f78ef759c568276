//! Rollout planning: (a policy's remediation settings, the states of the
//! Workloads it drives, the Jobs in flight, the fleet ledger, now) → which
//! Workloads to start now and when to look again.
//!
//! Rules (written down in the README as well):
//! - `mode: Report` and `paused: true` start nothing; running Jobs finish.
//! - Outside a maintenance window only emergencies start (one definition:
//!   [`crate::engine::evaluate::is_emergency`]); with no window at all, only
//!   emergencies ever start.
//! - Never more than `maxConcurrent` in flight: an integer, or a percentage of
//!   the matched Workloads rounded **up** (so `10%` of 5 Workloads is 1, never
//!   0); `0` and `0%` mean none.
//! - Canary: a rollout starts with `canary` Workloads; the rest wait until that
//!   many are **verified** (a succeeded but unverified canary holds them back).
//!   A rollout ends when the policy has nothing left to do; the next one starts
//!   with canaries again.
//! - Failed and unverified outcomes count toward `maxFailures`; reaching it
//!   pauses the rollout until the `patchloop.dev/resume` annotation gets a new
//!   value, which also resets the count.
//! - Each Workload gets `attempts` tries per fix set; after a failure the next
//!   try waits `backoff × 2^(attempt-1)`.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::policy::{RemediationMode, RolloutLedger};
use crate::api::workload::{RemediationOutcome, RemediationPhase};

/// How many recent failures the ledger names.
pub const LAST_FAILURES_KEPT: usize = 5;

/// The policy settings the planner needs (already parsed and validated).
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// Report or Remediate.
    pub mode: RemediationMode,
    /// `maxConcurrent` as written.
    pub max_concurrent: IntOrString,
    /// `canary`.
    pub canary: u32,
    /// `maxFailures`.
    pub max_failures: u32,
    /// `attempts`.
    pub attempts: u32,
    /// `paused`.
    pub paused: bool,
}

/// Whether a maintenance window is open, from [`crate::engine::window`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowState {
    /// The open window closes at this instant.
    pub open_until: Option<Timestamp>,
    /// The next window opens at this instant.
    pub next_opening: Option<Timestamp>,
}

/// The work a Workload needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    /// Short hash of the fix set (packages and minimum fixed versions).
    pub fix_set: String,
    /// At least one finding is an emergency.
    pub emergency: bool,
    /// The earliest due date (most urgent first).
    pub due: Option<Timestamp>,
}

/// The remediation record a Workload's status carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The fix set of the current or last attempt.
    pub fix_set: Option<String>,
    /// Its attempt number.
    pub attempt: u32,
    /// Its phase.
    pub phase: Option<RemediationPhase>,
    /// The last finished attempt's outcome.
    pub outcome: Option<RemediationOutcome>,
    /// The current or last Job.
    pub job: Option<String>,
    /// No new attempt before this instant.
    pub backoff_until: Option<Timestamp>,
}

/// One Workload as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadState {
    /// The Workload's name.
    pub name: String,
    /// `spec.paused`.
    pub paused: bool,
    /// Several policies tie on priority for it.
    pub conflict: bool,
    /// Installable work, if any (none when compliant, exempt, unknown, in soak).
    pub need: Option<Need>,
    /// Its remediation record.
    pub record: Record,
    /// A Job of it has neither `Complete` nor `Failed` (cached, or created and
    /// not cached yet).
    pub job_in_flight: bool,
}

/// Why a Workload was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hold {
    /// The policy only reports.
    ReportOnly,
    /// `remediation.paused`.
    PolicyPaused,
    /// The rollout paused itself after `maxFailures`.
    RolloutPaused,
    /// `spec.paused` on the Workload.
    WorkloadPaused,
    /// Policies tie on priority.
    Conflict,
    /// Its Job is running or being verified.
    InProgress,
    /// Waiting for the backoff after a failed attempt.
    BackingOff,
    /// Every attempt for this fix set failed.
    GaveUp,
    /// No maintenance window is open and nothing is an emergency.
    WaitingForWindow,
    /// The canaries are not verified yet.
    WaitingForCanary,
    /// `maxConcurrent` reached.
    ConcurrencyLimit,
}

/// A Job to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The Workload.
    pub workload: String,
    /// The fix set.
    pub fix_set: String,
    /// The attempt number (from 1).
    pub attempt: u32,
    /// Started as a canary.
    pub canary: bool,
}

/// The planner's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Jobs to create now, in order.
    pub start: Vec<Start>,
    /// Workloads with work that were not started, and why.
    pub held: Vec<(String, Hold)>,
    /// The ledger to record (resume, pause, rollout end applied).
    pub ledger: RolloutLedger,
    /// The resolved `maxConcurrent`.
    pub limit: usize,
    /// Jobs in flight before this plan.
    pub in_flight: usize,
    /// When to plan again even if nothing else changes.
    pub wake_at: Option<Timestamp>,
}

/// Everything the planner depends on.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The policy's settings.
    pub settings: &'a RolloutSettings,
    /// Maintenance windows now.
    pub window: WindowState,
    /// The matched Workloads this policy drives.
    pub workloads: &'a [WorkloadState],
    /// The ledger in status.
    pub ledger: &'a RolloutLedger,
    /// The `patchloop.dev/resume` annotation's value.
    pub resume: Option<&'a str>,
    /// Jobs that failed but whose Workload has not recorded the outcome
    /// yet: they hold new starts when they would reach `maxFailures`, so a
    /// failure is never outrun by the record that counts it.
    pub unrecorded_failures: u32,
    /// Now.
    pub now: Timestamp,
}

/// `maxConcurrent` for a fleet of `matched`: integers as they are,
/// percentages rounded up; an unreadable value allows one at a time.
pub fn resolve_max_concurrent(value: &IntOrString, matched: usize) -> usize {
    match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(0),
        IntOrString::String(s) => {
            let Some(percent) = s.strip_suffix('%').and_then(|p| p.parse::<usize>().ok()) else {
                return 1;
            };
            (matched * percent.min(100)).div_ceil(100)
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): `base × 2^(attempt-1)`,
/// capped at 64 × base.
pub fn backoff_after(base: SignedDuration, attempt: u32) -> SignedDuration {
    let factor = 1i32 << attempt.saturating_sub(1).min(6);
    base.checked_mul(factor).unwrap_or(base)
}

/// Counts finished outcomes into the ledger exactly once each: `outcomes`
/// are the current records `(workload, job, outcome)` of the driven
/// Workloads; jobs already in `ledger.counted` are skipped, and `counted`
/// keeps only jobs still current, so it stays as small as the fleet.
pub fn account(
    ledger: &RolloutLedger,
    outcomes: &[(String, String, RemediationOutcome)],
) -> RolloutLedger {
    let mut next = ledger.clone();
    let already: BTreeSet<&str> = ledger.counted.iter().map(String::as_str).collect();
    let mut counted = Vec::new();
    for (workload, job, outcome) in outcomes {
        counted.push(job.clone());
        if already.contains(job.as_str()) {
            continue;
        }
        match outcome {
            RemediationOutcome::Verified => next.verified += 1,
            RemediationOutcome::Failed | RemediationOutcome::Unverified => {
                next.failures += 1;
                next.last_failures.push(workload.clone());
                let excess = next.last_failures.len().saturating_sub(LAST_FAILURES_KEPT);
                next.last_failures.drain(..excess);
            }
        }
    }
    counted.sort();
    counted.dedup();
    next.counted = counted;
    next
}

/// Plans one round.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let s = input.settings;
    let now = input.now;
    let mut ledger = input.ledger.clone();

    // A new resume value clears a self-imposed pause and the failure count.
    if let Some(value) = input.resume
        && ledger.resume_seen.as_deref() != Some(value)
    {
        ledger.resume_seen = Some(value.to_owned());
        ledger.paused_at = None;
        ledger.failures = 0;
        ledger.last_failures.clear();
        ledger.verified = 0;
        ledger.canaries.clear();
    }
    if s.max_failures > 0 && ledger.failures >= i32::try_from(s.max_failures).unwrap_or(i32::MAX) {
        ledger
            .paused_at
            .get_or_insert(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    }

    let limit = resolve_max_concurrent(&s.max_concurrent, input.workloads.len());
    let in_flight = input.workloads.iter().filter(|w| w.job_in_flight).count();
    let mut plan = Plan {
        start: Vec::new(),
        held: Vec::new(),
        ledger,
        limit,
        in_flight,
        wake_at: None,
    };
    let wake = |t: Timestamp, wake_at: &mut Option<Timestamp>| {
        if t > now && wake_at.is_none_or(|w| t < w) {
            *wake_at = Some(t);
        }
    };

    let window_open = input.window.open_until.is_some_and(|t| t > now);
    let mut candidates: Vec<(&WorkloadState, &Need, u32)> = Vec::new();
    let mut busy = 0usize; // workloads with work in progress or pending
    for w in input.workloads {
        let in_progress = w.job_in_flight
            || matches!(
                w.record.phase,
                Some(RemediationPhase::Running | RemediationPhase::Verifying)
            );
        if in_progress {
            busy += 1;
        }
        let Some(need) = &w.need else { continue };
        busy += usize::from(!in_progress);
        let hold = if w.paused {
            Some(Hold::WorkloadPaused)
        } else if w.conflict {
            Some(Hold::Conflict)
        } else if in_progress {
            Some(Hold::InProgress)
        } else {
            None
        };
        if let Some(h) = hold {
            plan.held.push((w.name.clone(), h));
            continue;
        }
        let same_fix_set = w.record.fix_set.as_deref() == Some(need.fix_set.as_str());
        let attempt = if same_fix_set {
            w.record.attempt + 1
        } else {
            1
        };
        if same_fix_set && w.record.attempt >= s.attempts.max(1) {
            plan.held.push((w.name.clone(), Hold::GaveUp));
            continue;
        }
        if let Some(until) = w.record.backoff_until.filter(|u| *u > now && same_fix_set) {
            wake(until, &mut plan.wake_at);
            plan.held.push((w.name.clone(), Hold::BackingOff));
            continue;
        }
        candidates.push((w, need, attempt));
    }

    // A rollout ends when nothing is left to do: the next one canaries again.
    if busy == 0 && plan.ledger.paused_at.is_none() {
        plan.ledger.verified = 0;
        plan.ledger.canaries.clear();
        plan.ledger.failures = 0;
        plan.ledger.last_failures.clear();
    }

    let failures = u32::try_from(plan.ledger.failures).unwrap_or(0);
    let about_to_pause =
        s.max_failures > 0 && failures.saturating_add(input.unrecorded_failures) >= s.max_failures;
    let fleet_hold = match (
        s.mode,
        s.paused,
        plan.ledger.paused_at.is_some() || about_to_pause,
    ) {
        (RemediationMode::Report, _, _) => Some(Hold::ReportOnly),
        (_, true, _) => Some(Hold::PolicyPaused),
        (_, _, true) => Some(Hold::RolloutPaused),
        _ => None,
    };
    if let Some(h) = fleet_hold {
        plan.held
            .extend(candidates.iter().map(|(w, _, _)| (w.name.clone(), h)));
        plan.held.sort();
        return plan;
    }

    // Most urgent first: emergencies, then the earliest due date, then name.
    candidates.sort_by(|(a, na, _), (b, nb, _)| {
        nb.emergency
            .cmp(&na.emergency)
            .then_with(|| na.due.is_none().cmp(&nb.due.is_none()))
            .then_with(|| na.due.cmp(&nb.due))
            .then_with(|| a.name.cmp(&b.name))
    });

    let canary_target = s.canary as usize;
    let verified = usize::try_from(plan.ledger.verified).unwrap_or(0);
    let canaries_pending = plan
        .ledger
        .canaries
        .iter()
        .filter(|c| {
            input.workloads.iter().any(|w| {
                &w.name == *c
                    && (w.job_in_flight
                        || matches!(
                            w.record.phase,
                            Some(RemediationPhase::Running | RemediationPhase::Verifying)
                        ))
            })
        })
        .count();
    let in_canary_phase = verified < canary_target;
    let mut canary_slots = if in_canary_phase {
        canary_target.saturating_sub(verified + canaries_pending)
    } else {
        usize::MAX
    };
    let mut slots = limit.saturating_sub(in_flight);

    for (w, need, attempt) in candidates {
        if !window_open && !need.emergency {
            plan.held.push((w.name.clone(), Hold::WaitingForWindow));
            continue;
        }
        if canary_slots == 0 {
            plan.held.push((w.name.clone(), Hold::WaitingForCanary));
            continue;
        }
        if slots == 0 {
            plan.held.push((w.name.clone(), Hold::ConcurrencyLimit));
            continue;
        }
        slots -= 1;
        if in_canary_phase {
            canary_slots -= 1;
            plan.ledger.canaries.push(w.name.clone());
        }
        plan.start.push(Start {
            workload: w.name.clone(),
            fix_set: need.fix_set.clone(),
            attempt,
            canary: in_canary_phase,
        });
    }
    if plan.held.iter().any(|(_, h)| *h == Hold::WaitingForWindow)
        && let Some(t) = input.window.next_opening
    {
        wake(t, &mut plan.wake_at);
    }
    if let Some(t) = input.window.open_until {
        wake(t, &mut plan.wake_at);
    }
    plan.ledger.canaries.sort();
    plan.ledger.canaries.dedup();
    plan.held.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp literal")
    }

    fn settings(max: IntOrString, canary: u32) -> RolloutSettings {
        RolloutSettings {
            mode: RemediationMode::Remediate,
            max_concurrent: max,
            canary,
            max_failures: 2,
            attempts: 3,
            paused: false,
        }
    }

    fn needy(name: &str) -> WorkloadState {
        WorkloadState {
            name: name.into(),
            paused: false,
            conflict: false,
            need: Some(Need {
                fix_set: "f1".into(),
                emergency: false,
                due: None,
            }),
            record: Record::default(),
            job_in_flight: false,
        }
    }

    fn open() -> WindowState {
        WindowState {
            open_until: Some(ts("2026-11-28T05:00:00Z")),
            next_opening: None,
        }
    }

    fn run(
        s: &RolloutSettings,
        window: WindowState,
        workloads: &[WorkloadState],
        ledger: &RolloutLedger,
    ) -> Plan {
        plan(&PlanInput {
            settings: s,
            window,
            workloads,
            ledger,
            resume: None,
            unrecorded_failures: 0,
            now: ts("2026-11-28T02:00:00Z"),
        })
    }

    #[test]
    fn a_failure_not_recorded_yet_holds_new_starts_at_the_threshold() {
        let s = settings(IntOrString::Int(5), 0);
        let fleet = [needy("a"), needy("b")];
        let ledger = RolloutLedger {
            failures: 1,
            ..Default::default()
        };
        let input = |unrecorded| PlanInput {
            settings: &s,
            window: open(),
            workloads: &fleet,
            ledger: &ledger,
            resume: None,
            unrecorded_failures: unrecorded,
            now: ts("2026-11-28T02:00:00Z"),
        };
        assert_eq!(plan(&input(0)).start.len(), 2);
        let held = plan(&input(1));
        assert!(held.start.is_empty());
        assert!(held.held.iter().all(|(_, h)| *h == Hold::RolloutPaused));
        // Not paused yet: the record will count it.
        assert_eq!(held.ledger.paused_at, None);
    }

    fn started(p: &Plan) -> Vec<&str> {
        p.start.iter().map(|s| s.workload.as_str()).collect()
    }

    #[test]
    fn max_concurrent_rounds_percentages_up_and_never_to_zero() {
        assert_eq!(
            resolve_max_concurrent(&IntOrString::String("10%".into()), 5),
            1
        );
        assert_eq!(
            resolve_max_concurrent(&IntOrString::String("10%".into()), 1000),
            100
        );
        assert_eq!(
            resolve_max_concurrent(&IntOrString::String("33%".into()), 10),
            4
        );
        assert_eq!(
            resolve_max_concurrent(&IntOrString::String("0%".into()), 10),
            0
        );
        assert_eq!(
            resolve_max_concurrent(&IntOrString::String("100%".into()), 7),
            7
        );
        assert_eq!(resolve_max_concurrent(&IntOrString::Int(3), 100), 3);
        assert_eq!(resolve_max_concurrent(&IntOrString::Int(-3), 100), 0);
        assert_eq!(
            resolve_max_concurrent(&IntOrString::String("abc".into()), 100),
            1
        );
    }

    #[test]
    fn the_canary_runs_alone_and_the_rest_wait_for_verification() {
        let s = settings(IntOrString::Int(3), 1);
        let fleet: Vec<_> = (0..10).map(|i| needy(&format!("w{i:02}"))).collect();
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert_eq!(started(&p), ["w00"]);
        assert!(p.start[0].canary);
        assert_eq!(p.ledger.canaries, ["w00"]);
        assert_eq!(
            p.held
                .iter()
                .filter(|(_, h)| *h == Hold::WaitingForCanary)
                .count(),
            9
        );

        // The canary succeeded but is not verified yet: the rest still wait.
        let mut fleet2 = fleet.clone();
        fleet2[0].record = Record {
            fix_set: Some("f1".into()),
            attempt: 1,
            phase: Some(RemediationPhase::Verifying),
            ..Default::default()
        };
        let p2 = run(&s, open(), &fleet2, &p.ledger);
        assert!(
            p2.start.is_empty(),
            "a complete but unverified canary holds the rest back"
        );

        // Verified: up to maxConcurrent start.
        fleet2[0].need = None;
        fleet2[0].record.phase = Some(RemediationPhase::Verified);
        fleet2[0].record.outcome = Some(RemediationOutcome::Verified);
        let ledger = account(
            &p2.ledger,
            &[(
                "w00".into(),
                "w00-f1-1".into(),
                RemediationOutcome::Verified,
            )],
        );
        let p3 = run(&s, open(), &fleet2, &ledger);
        assert_eq!(started(&p3), ["w01", "w02", "w03"]);
        assert!(p3.start.iter().all(|s| !s.canary));
    }

    #[test]
    fn never_more_than_max_concurrent_in_flight() {
        let s = settings(IntOrString::Int(3), 0);
        let mut fleet: Vec<_> = (0..10).map(|i| needy(&format!("w{i:02}"))).collect();
        fleet[5].job_in_flight = true;
        fleet[6].job_in_flight = true;
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert_eq!(p.in_flight, 2);
        assert_eq!(started(&p), ["w00"]);
        assert_eq!(
            p.held
                .iter()
                .filter(|(_, h)| *h == Hold::ConcurrencyLimit)
                .count(),
            7
        );
    }

    #[test]
    fn outside_a_window_only_emergencies_start() {
        let s = settings(IntOrString::Int(5), 0);
        let mut fleet = vec![needy("a"), needy("b")];
        if let Some(n) = fleet[1].need.as_mut() {
            n.emergency = true;
        }
        let closed = WindowState {
            open_until: None,
            next_opening: Some(ts("2026-11-29T01:00:00Z")),
        };
        let p = run(&s, closed, &fleet, &RolloutLedger::default());
        assert_eq!(started(&p), ["b"]);
        assert_eq!(p.held, vec![("a".to_string(), Hold::WaitingForWindow)]);
        assert_eq!(p.wake_at, Some(ts("2026-11-29T01:00:00Z")));
    }

    #[test]
    fn max_failures_pauses_until_a_new_resume_value() {
        let s = settings(IntOrString::Int(5), 0);
        let fleet = vec![needy("a"), needy("b")];
        let ledger = account(
            &RolloutLedger::default(),
            &[
                ("x".into(), "x-f1-1".into(), RemediationOutcome::Failed),
                ("y".into(), "y-f1-1".into(), RemediationOutcome::Unverified),
            ],
        );
        assert_eq!(ledger.failures, 2);
        assert_eq!(ledger.last_failures, ["x", "y"]);
        let p = run(&s, open(), &fleet, &ledger);
        assert!(p.start.is_empty());
        assert!(p.ledger.paused_at.is_some());
        assert!(p.held.iter().all(|(_, h)| *h == Hold::RolloutPaused));

        // Counting again changes nothing: each outcome counts once.
        let again = account(
            &p.ledger,
            &[
                ("x".into(), "x-f1-1".into(), RemediationOutcome::Failed),
                ("y".into(), "y-f1-1".into(), RemediationOutcome::Unverified),
            ],
        );
        assert_eq!(again.failures, 2);

        let resumed = plan(&PlanInput {
            settings: &s,
            window: open(),
            workloads: &fleet,
            ledger: &again,
            resume: Some("2026-11-28T09:00:00Z"),
            unrecorded_failures: 0,
            now: ts("2026-11-28T02:00:00Z"),
        });
        assert_eq!(started(&resumed), ["a", "b"]);
        assert_eq!(resumed.ledger.failures, 0);
        assert_eq!(resumed.ledger.paused_at, None);
        assert_eq!(
            resumed.ledger.resume_seen.as_deref(),
            Some("2026-11-28T09:00:00Z")
        );
        // The same value again does not unpause a later pause.
        let mut later = resumed.ledger.clone();
        later.failures = 2;
        let p = plan(&PlanInput {
            settings: &s,
            window: open(),
            workloads: &fleet,
            ledger: &later,
            resume: Some("2026-11-28T09:00:00Z"),
            unrecorded_failures: 0,
            now: ts("2026-11-28T02:00:00Z"),
        });
        assert!(p.start.is_empty());
    }

    #[test]
    fn attempts_back_off_exponentially_then_give_up() {
        assert_eq!(
            backoff_after(SignedDuration::from_mins(10), 1),
            SignedDuration::from_mins(10)
        );
        assert_eq!(
            backoff_after(SignedDuration::from_mins(10), 3),
            SignedDuration::from_mins(40)
        );
        assert_eq!(
            backoff_after(SignedDuration::from_mins(10), 50),
            SignedDuration::from_mins(640)
        );

        let s = settings(IntOrString::Int(5), 0);
        let mut w = needy("a");
        w.record = Record {
            fix_set: Some("f1".into()),
            attempt: 1,
            phase: Some(RemediationPhase::BackingOff),
            outcome: Some(RemediationOutcome::Failed),
            job: Some("a-f1-1".into()),
            backoff_until: Some(ts("2026-11-28T02:10:00Z")),
        };
        let p = run(
            &s,
            open(),
            std::slice::from_ref(&w),
            &RolloutLedger::default(),
        );
        assert_eq!(p.held, vec![("a".to_string(), Hold::BackingOff)]);
        assert_eq!(p.wake_at, Some(ts("2026-11-28T02:10:00Z")));

        w.record.backoff_until = Some(ts("2026-11-28T01:00:00Z"));
        let p = run(
            &s,
            open(),
            std::slice::from_ref(&w),
            &RolloutLedger::default(),
        );
        assert_eq!(
            p.start,
            vec![Start {
                workload: "a".into(),
                fix_set: "f1".into(),
                attempt: 2,
                canary: false
            }]
        );

        w.record.attempt = 3;
        let p = run(
            &s,
            open(),
            std::slice::from_ref(&w),
            &RolloutLedger::default(),
        );
        assert_eq!(p.held, vec![("a".to_string(), Hold::GaveUp)]);

        // A new fix set starts again at attempt 1.
        if let Some(n) = w.need.as_mut() {
            n.fix_set = "f2".into();
        }
        let p = run(
            &s,
            open(),
            std::slice::from_ref(&w),
            &RolloutLedger::default(),
        );
        assert_eq!(p.start[0].attempt, 1);
    }

    #[test]
    fn report_mode_paused_policy_and_paused_workloads_start_nothing() {
        let mut s = settings(IntOrString::Int(5), 0);
        let mut fleet = vec![needy("a"), needy("b"), needy("c")];
        fleet[0].paused = true;
        fleet[1].conflict = true;
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert_eq!(started(&p), ["c"]);
        assert!(p.held.contains(&("a".to_string(), Hold::WorkloadPaused)));
        assert!(p.held.contains(&("b".to_string(), Hold::Conflict)));

        s.mode = RemediationMode::Report;
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert!(p.start.is_empty());
        assert!(p.held.contains(&("c".to_string(), Hold::ReportOnly)));

        s.mode = RemediationMode::Remediate;
        s.paused = true;
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert!(p.start.is_empty());
        assert!(p.held.contains(&("c".to_string(), Hold::PolicyPaused)));
    }

    #[test]
    fn an_idle_fleet_ends_the_rollout_and_the_next_one_canaries_again() {
        let s = settings(IntOrString::Int(5), 1);
        let ledger = RolloutLedger {
            verified: 3,
            canaries: vec!["old".into()],
            failures: 1,
            ..Default::default()
        };
        let mut done = needy("a");
        done.need = None;
        let p = run(&s, open(), &[done], &ledger);
        assert_eq!((p.ledger.verified, p.ledger.failures), (0, 0));
        assert!(p.ledger.canaries.is_empty());
        let p = run(&s, open(), &[needy("a"), needy("b")], &p.ledger);
        assert_eq!(started(&p), ["a"]);
        assert!(p.start[0].canary);
    }

    #[test]
    fn emergencies_and_earlier_due_dates_go_first() {
        let s = settings(IntOrString::Int(2), 0);
        let mut fleet = vec![needy("a"), needy("b"), needy("c")];
        if let Some(n) = fleet[2].need.as_mut() {
            n.emergency = true;
        }
        if let Some(n) = fleet[1].need.as_mut() {
            n.due = Some(ts("2026-11-30T00:00:00Z"));
        }
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert_eq!(started(&p), ["c", "b"]);
    }
}
