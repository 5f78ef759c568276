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
//! - One definition of "in flight" ([`JobActivity::in_flight`]): a Job the
//!   controller created that its cache does not show yet, a cached Job that
//!   has not finished, or a finished one whose outcome the Workload's record
//!   does not show yet. `maxConcurrent` and the canary gate both count it, so
//!   both hold under the same cache lag.
//! - Canary: a rollout starts with `canary` Workloads; the rest wait until that
//!   many are **verified**: while fewer are, a Workload starts only if fewer
//!   than `canary` are verified or in progress (in flight, or succeeded and
//!   being verified). A rollout ends when the policy has nothing left to do;
//!   the next one starts with canaries again.
//! - Failed and unverified outcomes count toward `maxFailures`; reaching it
//!   pauses the rollout until the `patchloop.dev/resume` annotation gets a new
//!   value, which also resets the count. A refused run (the script exited 2:
//!   a configuration error on that Workload) never counts; that Workload
//!   waits until its spec changes.
//! - Nothing starts from a provisional inventory (the template revision's):
//!   only the machine's own Inventory says what to install.
//! - Each Workload gets `attempts` tries per fix set; after a failure the next
//!   try waits `backoff × 2^(attempt-1)`.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use crate::api::common::time;
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
    pub max_concurrent: MaxConcurrent,
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
    /// With phase `Refused`: the Workload generation the refused Job was for.
    pub refused_generation: Option<i64>,
}

/// What the controller knows of a Workload's Jobs, from its Job cache, its
/// Workload cache and its own memory of what it created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobActivity {
    /// The controller created a Job its Job cache does not show yet.
    pub expected: bool,
    /// A cached Job has neither `Complete` nor `Failed`.
    pub unfinished: bool,
    /// A cached Job finished (`Some(succeeded)`) but the Workload's record,
    /// as cached, does not show its outcome yet.
    pub unrecorded_end: Option<bool>,
}

impl JobActivity {
    /// The one definition of "in flight", for `maxConcurrent` and the
    /// canary gate alike.
    pub fn in_flight(&self) -> bool {
        self.expected || self.unfinished || self.unrecorded_end.is_some()
    }
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
    /// Its Jobs.
    pub jobs: JobActivity,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Judged from its template revision's Inventory, not its own.
    pub provisional: bool,
}

impl WorkloadState {
    /// Started and not yet finished-and-recorded, or succeeded and waiting
    /// for verification.
    fn in_progress(&self) -> bool {
        self.jobs.in_flight()
            || matches!(
                self.record.phase,
                Some(RemediationPhase::Running | RemediationPhase::Verifying)
            )
    }

    /// Its last Job was refused and its spec has not changed since.
    fn refused(&self) -> bool {
        self.record.phase == Some(RemediationPhase::Refused)
            && self.record.refused_generation == self.generation
    }
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
    /// Its last Job refused to act (a configuration error on the Workload);
    /// waits for a change of its spec.
    Refused,
    /// Judged from its template revision's Inventory: no Job until the
    /// machine reports its own.
    ProvisionalInventory,
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
    /// Now.
    pub now: Timestamp,
}

/// `maxConcurrent` as written: a count, or text such as `"10%"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaxConcurrent {
    /// A number of Workloads.
    Count(i32),
    /// A percentage of the matched Workloads (anything else is unreadable).
    Text(String),
}

/// `maxConcurrent` for a fleet of `matched`: integers as they are,
/// percentages rounded up; an unreadable value allows one at a time.
pub fn resolve_max_concurrent(value: &MaxConcurrent, matched: usize) -> usize {
    match value {
        MaxConcurrent::Count(n) => usize::try_from(*n).unwrap_or(0),
        MaxConcurrent::Text(s) => {
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

/// A finished attempt as a Workload's current record shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The Workload.
    pub workload: String,
    /// The Job.
    pub job: String,
    /// Its outcome.
    pub outcome: RemediationOutcome,
    /// When the Job finished.
    pub finished_at: Option<Timestamp>,
}

/// Counts finished outcomes into the ledger exactly once each: `outcomes`
/// are the current records of the driven Workloads. An outcome counts when
/// its Job finished after `counting_since`, is not in `counted` yet, and its
/// tally is still below the number that matters (`canary` verified, or
/// `maxFailures` failures: past that, the canary phase is over or the
/// rollout pauses, and only a reset, which moves `counting_since`, starts a
/// new count). `counted` keeps only counted outcomes that are still current,
/// so it never holds more than `canary + maxFailures` names.
pub fn account(
    ledger: &RolloutLedger,
    settings: &RolloutSettings,
    outcomes: &[Outcome],
) -> RolloutLedger {
    let mut next = ledger.clone();
    let since = ledger.counting_since.as_ref().map(|t| t.0);
    let current: BTreeSet<&str> = outcomes.iter().map(|o| o.job.as_str()).collect();
    next.counted.retain(|job| current.contains(job.as_str()));
    let already: BTreeSet<String> = next.counted.iter().cloned().collect();
    let verified_cap = i32::try_from(settings.canary).unwrap_or(i32::MAX);
    let failures_cap = i32::try_from(settings.max_failures).unwrap_or(i32::MAX);
    let mut fresh: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !already.contains(&o.job))
        .filter(|o| since.is_none_or(|s| o.finished_at.is_none_or(|f| f >= s)))
        .collect();
    // Oldest first, so the last failures are named in order.
    fresh.sort_by(|a, b| (a.finished_at, &a.job).cmp(&(b.finished_at, &b.job)));
    for o in fresh {
        match o.outcome {
            RemediationOutcome::Verified if next.verified < verified_cap => next.verified += 1,
            RemediationOutcome::Failed | RemediationOutcome::Unverified
                if next.failures < failures_cap =>
            {
                next.failures += 1;
                next.last_failures.push(o.workload.clone());
                let excess = next.last_failures.len().saturating_sub(LAST_FAILURES_KEPT);
                next.last_failures.drain(..excess);
            }
            _ => continue,
        }
        next.counted.push(o.job.clone());
    }
    next.counted.sort();
    next.counted.dedup();
    next
}

/// The ledger of a new count (after a resume, or when a rollout ends):
/// nothing counted, outcomes of Jobs finished before `now` never counted.
fn new_count(ledger: &RolloutLedger, now: Timestamp) -> RolloutLedger {
    RolloutLedger {
        counting_since: Some(time(now)),
        paused_at: None,
        resume_seen: ledger.resume_seen.clone(),
        ..RolloutLedger::default()
    }
}

/// Plans one round.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let s = input.settings;
    let now = input.now;
    let mut ledger = input.ledger.clone();

    // A new resume value clears a self-imposed pause and starts a new count.
    if let Some(value) = input.resume
        && ledger.resume_seen.as_deref() != Some(value)
    {
        ledger = new_count(&ledger, now);
        ledger.resume_seen = Some(value.to_owned());
    }
    if s.max_failures > 0 && ledger.failures >= i32::try_from(s.max_failures).unwrap_or(i32::MAX) {
        ledger.paused_at.get_or_insert(time(now));
    }

    let limit = resolve_max_concurrent(&s.max_concurrent, input.workloads.len());
    let in_flight = input
        .workloads
        .iter()
        .filter(|w| w.jobs.in_flight())
        .count();
    // Failures whose record is not written yet hold new starts when they
    // would reach `maxFailures`, so a failure is never outrun by the record
    // that counts it.
    let unrecorded_failures = input
        .workloads
        .iter()
        .filter(|w| w.jobs.unrecorded_end == Some(false))
        .count();
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
    let mut in_progress_count = 0usize;
    for w in input.workloads {
        let in_progress = w.in_progress();
        if in_progress {
            busy += 1;
            in_progress_count += 1;
        }
        let Some(need) = &w.need else { continue };
        busy += usize::from(!in_progress);
        let hold = if w.paused {
            Some(Hold::WorkloadPaused)
        } else if w.conflict {
            Some(Hold::Conflict)
        } else if in_progress {
            Some(Hold::InProgress)
        } else if w.refused() {
            Some(Hold::Refused)
        } else if w.provisional {
            Some(Hold::ProvisionalInventory)
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
        // A refusal is the Workload's configuration error, not a used attempt.
        let refused_last = w.record.outcome == Some(RemediationOutcome::Refused);
        if same_fix_set && !refused_last && w.record.attempt >= s.attempts.max(1) {
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

    // A rollout ends when nothing is left to do: the next one canaries again
    // (and a new count starts, once: an idle ledger is not rewritten).
    if busy == 0 && plan.ledger.paused_at.is_none() {
        let reset = new_count(&plan.ledger, now);
        let unchanged = RolloutLedger {
            counting_since: plan.ledger.counting_since.clone(),
            ..reset.clone()
        };
        if plan.ledger != unchanged {
            plan.ledger = reset;
        }
    }

    let failures = u32::try_from(plan.ledger.failures).unwrap_or(0);
    let unrecorded_failures = u32::try_from(unrecorded_failures).unwrap_or(u32::MAX);
    let about_to_pause =
        s.max_failures > 0 && failures.saturating_add(unrecorded_failures) >= s.max_failures;
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

    // The canary gate counts every Workload in progress, not the canaries
    // the ledger names: the ledger is read from the policy's cached status,
    // which can lag the Jobs this process just created.
    let canary_target = s.canary as usize;
    let verified = usize::try_from(plan.ledger.verified).unwrap_or(0);
    let in_canary_phase = verified < canary_target;
    let mut canary_slots = if in_canary_phase {
        canary_target.saturating_sub(verified + in_progress_count)
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

    fn settings(max: MaxConcurrent, canary: u32) -> RolloutSettings {
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
            jobs: JobActivity::default(),
            generation: Some(1),
            provisional: false,
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
            now: ts("2026-11-28T02:00:00Z"),
        })
    }

    fn outcome(workload: &str, job: &str, outcome: RemediationOutcome) -> Outcome {
        Outcome {
            workload: workload.into(),
            job: job.into(),
            outcome,
            finished_at: Some(ts("2026-11-28T01:00:00Z")),
        }
    }

    #[test]
    fn a_failure_not_recorded_yet_holds_new_starts_at_the_threshold() {
        let s = settings(MaxConcurrent::Count(5), 0);
        let mut fleet = vec![needy("a"), needy("b"), needy("c")];
        fleet[2].need = None;
        let ledger = RolloutLedger {
            failures: 1,
            ..Default::default()
        };
        assert_eq!(run(&s, open(), &fleet, &ledger).start.len(), 2);
        // c's Job failed; its record does not say so yet.
        fleet[2].jobs.unrecorded_end = Some(false);
        let held = run(&s, open(), &fleet, &ledger);
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
            resolve_max_concurrent(&MaxConcurrent::Text("10%".into()), 5),
            1
        );
        assert_eq!(
            resolve_max_concurrent(&MaxConcurrent::Text("10%".into()), 1000),
            100
        );
        assert_eq!(
            resolve_max_concurrent(&MaxConcurrent::Text("33%".into()), 10),
            4
        );
        assert_eq!(
            resolve_max_concurrent(&MaxConcurrent::Text("0%".into()), 10),
            0
        );
        assert_eq!(
            resolve_max_concurrent(&MaxConcurrent::Text("100%".into()), 7),
            7
        );
        assert_eq!(resolve_max_concurrent(&MaxConcurrent::Count(3), 100), 3);
        assert_eq!(resolve_max_concurrent(&MaxConcurrent::Count(-3), 100), 0);
        assert_eq!(
            resolve_max_concurrent(&MaxConcurrent::Text("abc".into()), 100),
            1
        );
    }

    #[test]
    fn the_canary_runs_alone_and_the_rest_wait_for_verification() {
        let s = settings(MaxConcurrent::Count(3), 1);
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
            &s,
            &[outcome("w00", "w00-f1-1", RemediationOutcome::Verified)],
        );
        let p3 = run(&s, open(), &fleet2, &ledger);
        assert_eq!(started(&p3), ["w01", "w02", "w03"]);
        assert!(p3.start.iter().all(|s| !s.canary));
    }

    #[test]
    fn never_more_than_max_concurrent_in_flight() {
        let s = settings(MaxConcurrent::Count(3), 0);
        let mut fleet: Vec<_> = (0..10).map(|i| needy(&format!("w{i:02}"))).collect();
        fleet[5].jobs.expected = true;
        fleet[6].jobs.unfinished = true;
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
        let s = settings(MaxConcurrent::Count(5), 0);
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
        let s = settings(MaxConcurrent::Count(5), 0);
        let fleet = vec![needy("a"), needy("b")];
        let seen = [
            outcome("x", "x-f1-1", RemediationOutcome::Failed),
            outcome("y", "y-f1-1", RemediationOutcome::Unverified),
        ];
        let ledger = account(&RolloutLedger::default(), &s, &seen);
        assert_eq!(ledger.failures, 2);
        assert_eq!(ledger.last_failures, ["x", "y"]);
        let p = run(&s, open(), &fleet, &ledger);
        assert!(p.start.is_empty());
        assert!(p.ledger.paused_at.is_some());
        assert!(p.held.iter().all(|(_, h)| *h == Hold::RolloutPaused));

        // Counting again changes nothing: each outcome counts once.
        let again = account(&p.ledger, &s, &seen);
        assert_eq!(again.failures, 2);

        let resumed = plan(&PlanInput {
            settings: &s,
            window: open(),
            workloads: &fleet,
            ledger: &again,
            resume: Some("2026-11-28T09:00:00Z"),
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

        let s = settings(MaxConcurrent::Count(5), 0);
        let mut w = needy("a");
        w.record = Record {
            fix_set: Some("f1".into()),
            attempt: 1,
            phase: Some(RemediationPhase::BackingOff),
            outcome: Some(RemediationOutcome::Failed),
            job: Some("a-f1-1".into()),
            backoff_until: Some(ts("2026-11-28T02:10:00Z")),
            refused_generation: None,
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
        let mut s = settings(MaxConcurrent::Count(5), 0);
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
        let s = settings(MaxConcurrent::Count(5), 1);
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
        let s = settings(MaxConcurrent::Count(2), 0);
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

    #[test]
    fn the_canary_gate_holds_when_the_ledger_lags_the_jobs() {
        let s = settings(MaxConcurrent::Count(2), 1);
        let mut fleet: Vec<_> = (0..6).map(|i| needy(&format!("w{i}"))).collect();
        // The ledger naming w0 as the canary is not cached yet; each way
        // the caches can show w0's Job holds the rest.
        let lags = [
            JobActivity {
                expected: true,
                ..Default::default()
            },
            JobActivity {
                unfinished: true,
                ..Default::default()
            },
            JobActivity {
                unrecorded_end: Some(true),
                ..Default::default()
            },
        ];
        for lag in lags {
            fleet[0].jobs = lag;
            let p = run(&s, open(), &fleet, &RolloutLedger::default());
            assert!(p.start.is_empty(), "{lag:?} started {:?}", started(&p));
            assert_eq!(
                p.held
                    .iter()
                    .filter(|(_, h)| *h == Hold::WaitingForCanary)
                    .count(),
                5
            );
        }
    }

    #[test]
    fn a_refusal_waits_for_a_spec_change_and_never_counts_as_a_failure() {
        let s = settings(MaxConcurrent::Count(5), 0);
        let mut w = needy("decoy");
        w.record = Record {
            fix_set: Some("f1".into()),
            attempt: 3,
            phase: Some(RemediationPhase::Refused),
            outcome: Some(RemediationOutcome::Refused),
            job: Some("decoy-f1-3".into()),
            backoff_until: None,
            refused_generation: Some(1),
        };
        let p = run(
            &s,
            open(),
            std::slice::from_ref(&w),
            &RolloutLedger::default(),
        );
        assert_eq!(p.held, vec![("decoy".to_string(), Hold::Refused)]);

        // The author fixed the spec: a new attempt, though 3 were "used".
        w.generation = Some(2);
        let p = run(
            &s,
            open(),
            std::slice::from_ref(&w),
            &RolloutLedger::default(),
        );
        assert_eq!(started(&p), ["decoy"]);
        assert_eq!(p.start[0].attempt, 4);

        let refusals: Vec<Outcome> = (0..10)
            .map(|i| {
                outcome(
                    &format!("d{i}"),
                    &format!("d{i}-f1-1"),
                    RemediationOutcome::Refused,
                )
            })
            .collect();
        let ledger = account(&RolloutLedger::default(), &s, &refusals);
        assert_eq!(ledger.failures, 0);
        assert!(ledger.counted.is_empty());
        let p = run(&s, open(), &[needy("real")], &ledger);
        assert_eq!(started(&p), ["real"], "refusals never pause a rollout");
    }

    #[test]
    fn nothing_starts_from_a_provisional_inventory() {
        let s = settings(MaxConcurrent::Count(5), 0);
        let mut fleet = vec![needy("a"), needy("b")];
        fleet[0].provisional = true;
        let p = run(&s, open(), &fleet, &RolloutLedger::default());
        assert_eq!(started(&p), ["b"]);
        assert_eq!(p.held, vec![("a".to_string(), Hold::ProvisionalInventory)]);
    }

    #[test]
    fn the_ledger_stays_small_for_a_fleet_of_100000() {
        let mut s = settings(MaxConcurrent::Text("10%".into()), 5);
        s.max_failures = 50;
        let outcomes: Vec<Outcome> = (0..100_000)
            .map(|i| {
                let kind = match i % 10 {
                    0 => RemediationOutcome::Failed,
                    1 => RemediationOutcome::Unverified,
                    2 => RemediationOutcome::Refused,
                    _ => RemediationOutcome::Verified,
                };
                outcome(&format!("w{i:06}"), &format!("w{i:06}-0123456789-1"), kind)
            })
            .collect();
        let mut ledger = RolloutLedger::default();
        // Outcomes arrive in batches over many rounds, as caches catch up.
        for end in (10_000..=100_000).step_by(10_000) {
            ledger = account(&ledger, &s, &outcomes[..end]);
            assert!(ledger.counted.len() <= 5 + 50);
        }
        assert_eq!((ledger.verified, ledger.failures), (5, 50));
        let bytes = serde_json::to_vec(&ledger)
            .map(|b| b.len())
            .unwrap_or(usize::MAX);
        assert!(bytes < 4096, "{bytes} bytes");
    }

    #[test]
    fn a_new_count_ignores_outcomes_finished_before_it() {
        let s = settings(MaxConcurrent::Count(5), 1);
        let ledger = RolloutLedger {
            counting_since: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(
                "2026-11-28T01:30:00Z",
            ))),
            ..Default::default()
        };
        let mut late = outcome("b", "b-f1-1", RemediationOutcome::Failed);
        late.finished_at = Some(ts("2026-11-28T01:45:00Z"));
        let next = account(
            &ledger,
            &s,
            &[outcome("a", "a-f1-1", RemediationOutcome::Failed), late],
        );
        assert_eq!(next.failures, 1);
        assert_eq!(next.counted, ["b-f1-1"]);

        // An idle fleet starts a new count once, then the ledger is stable.
        let mut done = needy("a");
        done.need = None;
        let p = run(&s, open(), std::slice::from_ref(&done), &next);
        assert_eq!(p.ledger.failures, 0);
        assert!(p.ledger.counted.is_empty());
        let since = p.ledger.counting_since.clone();
        assert!(since.is_some());
        let again = plan(&PlanInput {
            settings: &s,
            window: open(),
            workloads: std::slice::from_ref(&done),
            ledger: &p.ledger,
            resume: None,
            now: ts("2026-11-28T03:00:00Z"),
        });
        assert_eq!(again.ledger, p.ledger, "an idle ledger is not rewritten");
    }

    mod lag {
        //! The rollout against a model of the controller's caches: every
        //! cache (Jobs, Workloads, the policy's own status) lags the truth
        //! by a random amount, in a random order of events.

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Phase {
            Running,
            Verified,
        }

        #[derive(Debug, Clone, Default)]
        struct Machine {
            created: bool,
            finished: bool,
            record: Option<Phase>,
            cached_job: Option<bool>,
            cached_record: Option<Phase>,
        }

        struct World {
            settings: RolloutSettings,
            /// Each Workload's due date: the planner's order of urgency.
            due: Vec<Timestamp>,
            machines: Vec<Machine>,
            expected: BTreeSet<usize>,
            ledger: RolloutLedger,
            cached_ledger: RolloutLedger,
            jobs_created: usize,
        }

        impl World {
            fn new(n: usize, canary: u32, max: i32, urgency: &[i64]) -> World {
                World {
                    due: (0..n)
                        .map(|i| {
                            let days = urgency.get(i).copied().unwrap_or(0);
                            Timestamp::UNIX_EPOCH + SignedDuration::from_hours(24 * days)
                        })
                        .collect(),
                    settings: RolloutSettings {
                        mode: RemediationMode::Remediate,
                        max_concurrent: MaxConcurrent::Count(max),
                        canary,
                        max_failures: 1,
                        attempts: 3,
                        paused: false,
                    },
                    machines: vec![Machine::default(); n],
                    expected: BTreeSet::new(),
                    ledger: RolloutLedger::default(),
                    cached_ledger: RolloutLedger::default(),
                    jobs_created: 0,
                }
            }

            fn name(i: usize) -> String {
                format!("w{i}")
            }

            /// The policy reconciler: plans from the caches and its memory.
            fn reconcile_policy(&mut self) {
                let states: Vec<WorkloadState> = self
                    .machines
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let verified = m.cached_record == Some(Phase::Verified);
                        WorkloadState {
                            name: World::name(i),
                            paused: false,
                            conflict: false,
                            need: (!verified).then(|| Need {
                                fix_set: "f".into(),
                                emergency: false,
                                due: Some(self.due[i]),
                            }),
                            record: Record {
                                fix_set: m.cached_record.map(|_| "f".into()),
                                attempt: u32::from(m.cached_record.is_some()),
                                phase: m.cached_record.map(|p| match p {
                                    Phase::Running => RemediationPhase::Running,
                                    Phase::Verified => RemediationPhase::Verified,
                                }),
                                outcome: verified.then_some(RemediationOutcome::Verified),
                                job: m.cached_record.map(|_| World::name(i)),
                                ..Default::default()
                            },
                            jobs: JobActivity {
                                expected: self.expected.contains(&i),
                                unfinished: m.cached_job == Some(false),
                                unrecorded_end: (m.cached_job == Some(true) && !verified)
                                    .then_some(true),
                            },
                            generation: Some(1),
                            provisional: false,
                        }
                    })
                    .collect();
                let outcomes: Vec<Outcome> = states
                    .iter()
                    .filter(|w| w.record.outcome.is_some())
                    .map(|w| Outcome {
                        workload: w.name.clone(),
                        job: w.name.clone(),
                        outcome: RemediationOutcome::Verified,
                        finished_at: None,
                    })
                    .collect();
                let ledger = account(&self.cached_ledger, &self.settings, &outcomes);
                let p = plan(&PlanInput {
                    settings: &self.settings,
                    window: WindowState {
                        open_until: Some(Timestamp::MAX),
                        next_opening: None,
                    },
                    workloads: &states,
                    ledger: &ledger,
                    resume: None,
                    now: Timestamp::UNIX_EPOCH,
                });
                for start in &p.start {
                    let i: usize = start.workload[1..].parse().unwrap_or(usize::MAX);
                    let m = &mut self.machines[i];
                    if !m.created {
                        m.created = true;
                        self.jobs_created += 1;
                    }
                    self.expected.insert(i);
                }
                self.ledger = p.ledger;
            }

            fn step(&mut self, event: u8, i: usize) {
                let i = i % self.machines.len();
                let m = &mut self.machines[i];
                match event % 6 {
                    0 => self.reconcile_policy(),
                    // The Job watch delivers the Job's current state.
                    1 => {
                        if m.created {
                            m.cached_job = Some(m.finished);
                            self.expected.remove(&i);
                        }
                    }
                    // The executor finishes the Job and reports the fix.
                    2 => m.finished |= m.created,
                    // The workload reconciler records what its Job cache shows.
                    3 => match m.cached_job {
                        Some(false) => m.record = m.record.or(Some(Phase::Running)),
                        Some(true) => m.record = Some(Phase::Verified),
                        None => {}
                    },
                    4 => m.cached_record = m.record,
                    _ => self.cached_ledger = self.ledger.clone(),
                }
            }

            fn check(&self) -> Result<(), TestCaseError> {
                let running = self
                    .machines
                    .iter()
                    .filter(|m| m.created && !m.finished)
                    .count();
                let limit =
                    resolve_max_concurrent(&self.settings.max_concurrent, self.machines.len());
                prop_assert!(running <= limit, "{running} Jobs running, limit {limit}");
                let verified = self
                    .machines
                    .iter()
                    .filter(|m| m.record == Some(Phase::Verified))
                    .count();
                if verified < self.settings.canary as usize {
                    prop_assert!(
                        self.jobs_created <= self.settings.canary as usize,
                        "{} Jobs created with {verified} of {} canaries verified",
                        self.jobs_created,
                        self.settings.canary
                    );
                }
                Ok(())
            }
        }

        proptest! {
            #[test]
            fn canaries_run_alone_and_max_concurrent_holds_under_any_cache_lag(
                n in 2usize..8,
                canary in 1u32..3,
                max in 1i32..4,
                urgency in proptest::collection::vec(0i64..10, 8),
                events in proptest::collection::vec((0u8..6, 0usize..8), 1..300),
            ) {
                let mut world = World::new(n, canary, max, &urgency);
                for (event, i) in events {
                    world.step(event, i);
                    world.check()?;
                }
                // Once the caches catch up, every machine gets remediated.
                for _ in 0..4 * n {
                    for event in [0, 1, 2, 1, 3, 4, 5] {
                        for i in 0..n {
                            world.step(event, i);
                            world.check()?;
                        }
                    }
                }
                prop_assert!(world.machines.iter().all(|m| m.record == Some(Phase::Verified)));
                prop_assert_eq!(world.jobs_created, n);
            }

            #[test]
            fn no_outcome_is_counted_twice_across_restarts_and_stale_reads(
                max_failures in 1u32..20,
                // Per round: which Workloads have moved to a newer attempt
                // (failing again), and which earlier ledger the round reads.
                rounds in proptest::collection::vec(
                    (proptest::collection::vec(any::<bool>(), 6), 0usize..4),
                    1..40,
                ),
            ) {
                let mut s = settings(MaxConcurrent::Count(5), 0);
                s.max_failures = max_failures;
                let mut attempts = [1u32; 6];
                // Each ledger version with the failed Jobs its lineage saw.
                let mut versions: Vec<(RolloutLedger, BTreeSet<String>)> =
                    vec![(RolloutLedger::default(), BTreeSet::new())];
                for (advance, stale) in rounds {
                    for (a, step) in attempts.iter_mut().zip(advance) {
                        *a += u32::from(step);
                    }
                    let view: Vec<Outcome> = attempts
                        .iter()
                        .enumerate()
                        .map(|(w, a)| outcome(&format!("w{w}"), &format!("w{w}-f-{a}"), RemediationOutcome::Failed))
                        .collect();
                    let base = versions.len().saturating_sub(1 + stale);
                    let (ledger, seen) = versions[base].clone();
                    let next = account(&ledger, &s, &view);
                    let mut seen = seen;
                    seen.extend(view.iter().map(|o| o.job.clone()));
                    let expected = seen.len().min(max_failures as usize);
                    prop_assert_eq!(usize::try_from(next.failures).unwrap_or(0), expected);
                    prop_assert!(next.counted.len() <= max_failures as usize);
                    versions.push((next, seen));
                }
            }
        }
    }
}
