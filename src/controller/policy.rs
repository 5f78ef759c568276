//! The policy reconciler (status part): validates what the 1.20 apiserver
//! cannot (cron schedules, time zones, the embedded Job template, by a
//! server-side dry-run), counts the matched Workloads, finds priority
//! conflicts and the next maintenance window.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobTemplateSpec};
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::remediation;
use super::scope::Scope;
use super::{Error, failpoint, now, observed, requeue_at, write_status};
use crate::api::common::{ComplianceState, Duration, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::policy::{
    PatchPolicySpec, PatchPolicyStatus, RESUME_ANNOTATION, Remediation, RemediationMode,
    RolloutLedger, WorkloadCounts,
};
use crate::api::workload::RemediationPhase;
use crate::api::{PatchPolicy, Workload};
use crate::engine::outcome::OutcomeSettings;
use crate::engine::rollout::WindowState;
use crate::engine::selector;
use crate::engine::window::{self, MaintenanceWindow};

/// The field manager of PatchPolicy status.
pub const MANAGER: &str = "patchloop-policy";

/// Problems in a spec that the apiserver cannot catch, each naming its field.
pub fn validate(spec: &PatchPolicySpec) -> (Vec<String>, Vec<MaintenanceWindow>) {
    let mut errors = Vec::new();
    let mut check = |field: &str, d: Option<&Duration>| {
        if let Some(d) = d
            && let Err(e) = d.parse()
        {
            errors.push(format!("{field}: {e}"));
        }
    };
    let dl = &spec.deadlines;
    check("spec.deadlines.critical", Some(&dl.critical));
    check("spec.deadlines.high", Some(&dl.high));
    check("spec.deadlines.medium", Some(&dl.medium));
    check("spec.deadlines.low", Some(&dl.low));
    check("spec.deadlines.unknown", Some(&dl.unknown));
    check("spec.knownExploited", spec.known_exploited.as_ref());
    check("spec.inventoryMaxAge", Some(&spec.inventory_max_age));
    check(
        "spec.approval.approveAfter",
        spec.approval.approve_after.as_ref(),
    );
    check(
        "spec.exceptions.maxDuration",
        spec.exceptions.max_duration.as_ref(),
    );
    let r = &spec.remediation;
    check("spec.remediation.backoff", Some(&r.backoff));
    check("spec.remediation.verifyTimeout", Some(&r.verify_timeout));
    check("spec.remediation.jobDeadline", Some(&r.job_deadline));
    let mut windows = Vec::new();
    for (i, w) in spec.maintenance_windows.iter().enumerate() {
        let duration = match w.duration.parse() {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("spec.maintenanceWindows[{i}].duration: {e}"));
                continue;
            }
        };
        match MaintenanceWindow::parse(&w.schedule, duration, &w.time_zone) {
            Ok(parsed) => windows.push(parsed),
            Err(e) => {
                let field = match e {
                    window::WindowError::Schedule { .. } => "schedule",
                    window::WindowError::TimeZone { .. }
                    | window::WindowError::NoTimeZoneDatabase { .. } => "timeZone",
                    _ => "duration",
                };
                errors.push(format!("spec.maintenanceWindows[{i}].{field}: {e}"));
            }
        }
    }
    if r.mode == RemediationMode::Remediate && r.job_template.is_none() {
        errors.push(
            "spec.remediation.jobTemplate: required when spec.remediation.mode is Remediate".into(),
        );
    }
    if let Err(e) = selector::matches(&spec.selector, &Default::default()) {
        errors.push(format!("spec.selector: {e}"));
    }
    (errors, windows)
}

/// The settings outcome tracking reads from a policy (an unparsable
/// duration, already reported on the policy, falls back to its default).
pub fn outcome_settings(r: &Remediation) -> OutcomeSettings {
    let defaults = Remediation::default();
    let parse = |d: &Duration, fallback: &Duration| {
        d.parse()
            .or_else(|_| fallback.parse())
            .unwrap_or(jiff::SignedDuration::from_mins(10))
    };
    OutcomeSettings {
        attempts: u32::try_from(r.attempts).unwrap_or(1).max(1),
        backoff: parse(&r.backoff, &defaults.backoff),
        verify_timeout: parse(&r.verify_timeout, &defaults.verify_timeout),
    }
}

/// Checks the embedded Job template with a server-side dry-run create, the
/// only validation a PodSpec gets on 1.20 without an inlined schema.
async fn dry_run_job_template(scope: &Scope, policy: &PatchPolicy, ns: &str) -> Result<(), String> {
    let Some(template) = &policy.spec.remediation.job_template else {
        return Ok(());
    };
    let template: JobTemplateSpec = serde_json::from_value(template.clone()).map_err(|e| {
        format!("spec.remediation.jobTemplate: not a batch/v1 JobTemplateSpec: {e}")
    })?;
    let mut spec = template
        .spec
        .ok_or("spec.remediation.jobTemplate.spec: missing")?;
    if let Some(pod) = spec.template.spec.as_mut() {
        // The controller forces these on every Job it creates.
        pod.restart_policy = Some("Never".into());
    }
    spec.backoff_limit = Some(0);
    let job = Job {
        metadata: kube::api::ObjectMeta {
            name: Some(
                format!("patchloop-dry-run-{}", policy.name_any())
                    .chars()
                    .take(63)
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let api: Api<Job> = Api::namespaced(scope.shared.client.clone(), ns);
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&pp, &job).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(format!("spec.remediation.jobTemplate: {}", s.message)),
        // Not the template's fault: retry later without blaming it.
        Err(e) => Err(format!(
            "spec.remediation.jobTemplate: could not be checked: {e}"
        )),
    }
}

/// Counts the matched Workloads by their status.
pub fn count(workloads: &[Arc<Workload>]) -> WorkloadCounts {
    let mut c = WorkloadCounts {
        matched: i32::try_from(workloads.len()).unwrap_or(i32::MAX),
        ..Default::default()
    };
    for w in workloads {
        let status = w.status.as_ref();
        match status
            .and_then(|s| s.compliance.as_ref())
            .and_then(|c| c.state)
        {
            Some(ComplianceState::Compliant) => c.compliant += 1,
            Some(ComplianceState::Pending) => c.pending += 1,
            Some(ComplianceState::Overdue) => c.overdue += 1,
            Some(ComplianceState::Exempt) => c.exempt += 1,
            Some(ComplianceState::Unknown) | None => c.unknown += 1,
        }
        if status
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| !t.current && t.latest.is_some())
        {
            c.stale_template += 1;
        }
        if w.spec.paused
            || status.is_some_and(|s| conditions::is_true(&s.conditions, types::CONFLICT))
        {
            c.skipped += 1;
        }
        match status
            .and_then(|s| s.remediation.as_ref())
            .and_then(|r| r.phase)
        {
            Some(RemediationPhase::Running | RemediationPhase::Verifying) => c.remediating += 1,
            Some(RemediationPhase::Failed | RemediationPhase::Unverified) => c.failed += 1,
            _ => {}
        }
    }
    c
}

/// Reconciles one PatchPolicy's status.
pub async fn reconcile(policy: Arc<PatchPolicy>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = Arc::clone(&scope.shared);
    observed(
        &shared,
        "policy",
        policy.as_ref(),
        reconcile_inner(Arc::clone(&policy), &scope),
    )
    .await
}

async fn reconcile_inner(policy: Arc<PatchPolicy>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    let shared = &scope.shared;
    let ns = policy
        .namespace()
        .ok_or(Error::Missing("metadata.namespace"))?;
    let name = policy.name_any();
    let now: Timestamp = now();
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;

    let (mut errors, windows) = validate(&policy.spec);
    // The dry-run costs a request: once per generation.
    let previous_template_error = conditions::find(&previous.conditions, types::READY)
        .filter(|c| c.reason == "InvalidSpec" && c.message.contains("spec.remediation.jobTemplate"))
        .map(|c| c.message.clone());
    if previous.observed_generation != generation || previous.conditions.is_empty() {
        if let Err(e) = dry_run_job_template(scope, &policy, &ns).await {
            errors.push(e);
        }
    } else if let Some(m) = previous_template_error {
        errors.extend(
            m.split("; ")
                .filter(|e| e.starts_with("spec.remediation.jobTemplate"))
                .map(str::to_owned),
        );
    }

    let matched: Vec<Arc<Workload>> = scope
        .workloads
        .state()
        .into_iter()
        .filter(|w| w.namespace().as_deref() == Some(ns.as_str()))
        .filter(|w| selector::matches(&policy.spec.selector, w.labels()).unwrap_or(false))
        .collect();
    let counts = count(&matched);

    // Another policy of the same priority matching one of our Workloads.
    let mut rivals: Vec<String> = scope
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.name_any() != name)
        .filter(|p| p.spec.priority == policy.spec.priority)
        .filter(|p| {
            matched
                .iter()
                .any(|w| selector::matches(&p.spec.selector, w.labels()).unwrap_or(false))
        })
        .map(|p| p.name_any())
        .collect();
    rivals.sort();

    let open_until = window::open_until(&windows, now);
    let next_window = window::next_opening(&windows, now);
    let driven = remediation::driven(scope, &name, &ns, &matched);
    let round = remediation::round(
        scope,
        &policy,
        &ns,
        &driven,
        WindowState {
            open_until,
            next_opening: next_window,
        },
        errors.is_empty(),
        now,
    )
    .await?;
    let mut counts = counts;
    counts.waiting_for_window = round.waiting_for_window;
    // A Job the apiserver refused (e.g. a template the dry-run accepted but
    // the real object did not) is the spec's problem too.
    errors.extend(round.errors.iter().cloned());

    let ready = ready_condition(&errors, &round.names_taken);
    let mut desired = vec![ready.clone()];
    desired.push(if rivals.is_empty() {
        DesiredCondition::new(types::CONFLICT, ConditionStatus::False, "NoConflict", "no other policy with the same priority matches these Workloads")
    } else {
        DesiredCondition::new(
            types::CONFLICT,
            ConditionStatus::True,
            "PriorityTie",
            format!(
                "PatchPolicies {} have the same priority ({}) and match the same Workloads: nothing they share is remediated",
                rivals.join(", "),
                policy.spec.priority
            ),
        )
    });
    let ledger = &round.ledger;
    desired.push(match ledger.paused_at.as_ref() {
        Some(at) => DesiredCondition::new(
            types::ROLLOUT_PAUSED,
            ConditionStatus::True,
            "MaxFailuresReached",
            format!(
                "paused at {} after {} failed or unverified outcomes (maxFailures {}), last: {}; set the {RESUME_ANNOTATION} annotation to a new value to resume",
                at.0,
                ledger.failures,
                policy.spec.remediation.max_failures,
                ledger.last_failures.join(", ")
            ),
        ),
        None => DesiredCondition::new(
            types::ROLLOUT_PAUSED,
            ConditionStatus::False,
            "Rolling",
            format!(
                "{} failed or unverified outcomes of maxFailures {}",
                ledger.failures, policy.spec.remediation.max_failures
            ),
        ),
    });
    let (conds, transitions) =
        conditions::merge(&previous.conditions, &desired, generation, &time(now));

    let template_counts = super::template::counts_for_policy(scope, &ns, &policy.spec);
    let status = PatchPolicyStatus {
        observed_generation: generation,
        conditions: conds,
        workloads: Some(counts.clone()),
        templates: Some(template_counts.clone()),
        rollout: Some(round.ledger.clone()).filter(|l| *l != RolloutLedger::default()),
        next_window: next_window.map(time),
        window_open_until: open_until.map(time),
    };
    shared.metrics.set_workload_counts(&ns, &name, &counts);
    shared
        .metrics
        .set_template_counts(&ns, &name, &template_counts);
    if status != previous {
        let api: Api<PatchPolicy> = Api::namespaced(shared.client.clone(), &ns);
        write_status(shared, &api, &name, "policy", MANAGER, &status, &previous).await?;
        if transitions.contains(&types::READY) && ready.status == ConditionStatus::False {
            shared
                .event(policy.as_ref(), true, &ready.reason, ready.message.clone())
                .await;
        }
        if transitions.contains(&types::ROLLOUT_PAUSED) {
            match ledger.paused_at {
                Some(_) => {
                    shared
                        .event(
                            policy.as_ref(),
                            true,
                            "RolloutPaused",
                            format!(
                                "{} failed or unverified outcomes: {}",
                                ledger.failures,
                                ledger.last_failures.join(", ")
                            ),
                        )
                        .await;
                }
                None if previous
                    .conditions
                    .iter()
                    .any(|c| c.type_ == types::ROLLOUT_PAUSED && c.status == "True") =>
                {
                    shared
                        .event(
                            policy.as_ref(),
                            false,
                            "RolloutResumed",
                            format!("resumed by {RESUME_ANNOTATION}"),
                        )
                        .await;
                }
                None => {}
            }
        }
        if transitions.contains(&types::CONFLICT) && !rivals.is_empty() {
            shared
                .event(
                    policy.as_ref(),
                    true,
                    "PriorityTie",
                    format!("same priority as {}", rivals.join(", ")),
                )
                .await;
        }
    }
    if round.started > 0 {
        failpoint::exit_if(failpoint::EXIT_AFTER_ROLLOUT_ROUND);
    }
    let next = match (window::next_change(&windows, now), round.wake_at) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(Action::requeue(requeue_at(
        next,
        now,
        shared.settings.max_requeue,
    )))
}

/// The policy's `Ready` condition: the spec's errors (a Job the apiserver
/// refused included) first; else Workloads whose next Job name another
/// owner's Job holds (nothing the spec can fix: someone must delete that Job).
fn ready_condition(errors: &[String], names_taken: &[String]) -> DesiredCondition {
    match (errors.is_empty(), names_taken.is_empty()) {
        (true, true) => DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Valid",
            "the policy is valid and applied",
        ),
        (false, _) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidSpec",
            errors
                .iter()
                .chain(names_taken)
                .cloned()
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (true, false) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "JobNameTaken",
            names_taken.join("; "),
        ),
    }
}
