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
    PatchPolicySpec, PatchPolicyStatus, RESUME_ANNOTATION, RemediationMode, RolloutLedger,
    TemplateCounts, WorkloadCounts,
};
use crate::api::workload::RemediationPhase;
use crate::api::{PatchPolicy, Workload};
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

/// What the server-side dry-run of a policy's Job template said.
#[derive(Debug, Clone, PartialEq)]
enum TemplateCheck {
    /// No template, or the apiserver accepted it.
    Accepted,
    /// The template is wrong: kept until the next generation.
    Refused(String),
    /// The check could not be made (not the template's fault): tried again
    /// on the next reconcile.
    Unchecked(String),
}

/// The dry-run verdict for this generation of the policy: kept from an
/// earlier reconcile, or checked now.
async fn job_template_check(scope: &Scope, policy: &PatchPolicy, ns: &str) -> TemplateCheck {
    let uid = policy.uid().unwrap_or_default();
    let generation = policy.metadata.generation.unwrap_or(0);
    if let Some(kept) = scope.template_checks.get(&uid, generation) {
        return kept.map_or_else(TemplateCheck::Refused, |()| TemplateCheck::Accepted);
    }
    let check = dry_run_job_template(scope, policy, ns).await;
    match &check {
        TemplateCheck::Accepted => scope.template_checks.set(&uid, generation, Ok(())),
        TemplateCheck::Refused(why) => {
            scope
                .template_checks
                .set(&uid, generation, Err(why.clone()))
        }
        TemplateCheck::Unchecked(_) => {}
    }
    check
}

/// Checks the embedded Job template with a server-side dry-run create, the
/// only validation a PodSpec gets on 1.20 without an inlined schema.
async fn dry_run_job_template(scope: &Scope, policy: &PatchPolicy, ns: &str) -> TemplateCheck {
    let Some(template) = &policy.spec.remediation.job_template else {
        return TemplateCheck::Accepted;
    };
    let mut spec = match serde_json::from_value::<JobTemplateSpec>(template.clone()) {
        Ok(JobTemplateSpec {
            spec: Some(spec), ..
        }) => spec,
        Ok(_) => {
            return TemplateCheck::Refused("spec.remediation.jobTemplate.spec: missing".into());
        }
        Err(e) => {
            return TemplateCheck::Refused(format!(
                "spec.remediation.jobTemplate: not a batch/v1 JobTemplateSpec: {e}"
            ));
        }
    };
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
        Ok(_) => TemplateCheck::Accepted,
        Err(kube::Error::Api(s)) => {
            TemplateCheck::Refused(format!("spec.remediation.jobTemplate: {}", s.message))
        }
        // Not the template's fault: retry later without blaming it.
        Err(e) => TemplateCheck::Unchecked(format!(
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
    let ns = policy
        .namespace()
        .ok_or(Error::Missing("metadata.namespace"))?;
    let now: Timestamp = now();
    let seen = dereference(scope, &policy, &ns).await;
    let driven = remediation::driven(scope, &policy.name_any(), &ns, &seen.matched);
    let window = WindowState {
        open_until: window::open_until(&seen.windows, now),
        next_opening: window::next_opening(&seen.windows, now),
    };
    let may_start = seen.errors.is_empty();
    let round = remediation::round(scope, &policy, &ns, &driven, window, may_start, now).await?;
    let decided = decide(&policy, &seen, &round, window, now);
    update_status(scope, &policy, &ns, &decided).await?;
    if round.started > 0 {
        failpoint::exit_if(failpoint::EXIT_AFTER_ROLLOUT_ROUND);
    }
    let max = scope.shared.settings.max_requeue;
    Ok(Action::requeue(requeue_at(decided.wake, now, max)))
}

/// What a policy's reconcile reads: the spec's problems (the Job template's
/// dry-run included), its windows, the Workloads it matches, the policies
/// tying with it on them, and the Templates it covers.
struct Seen {
    errors: Vec<String>,
    windows: Vec<MaintenanceWindow>,
    matched: Vec<Arc<Workload>>,
    rivals: Vec<String>,
    templates: TemplateCounts,
}

async fn dereference(scope: &Scope, policy: &PatchPolicy, ns: &str) -> Seen {
    let (mut errors, windows) = validate(&policy.spec);
    match job_template_check(scope, policy, ns).await {
        TemplateCheck::Accepted => {}
        TemplateCheck::Refused(why) | TemplateCheck::Unchecked(why) => errors.push(why),
    }
    let matched: Vec<Arc<Workload>> = scope
        .workloads
        .state()
        .into_iter()
        .filter(|w| w.namespace().as_deref() == Some(ns))
        .filter(|w| selector::matches(&policy.spec.selector, w.labels()).unwrap_or(false))
        .collect();
    // Another policy of the same priority matching one of these Workloads.
    let name = policy.name_any();
    let mut rivals: Vec<String> = scope
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns) && p.name_any() != name)
        .filter(|p| p.spec.priority == policy.spec.priority)
        .filter(|p| {
            matched
                .iter()
                .any(|w| selector::matches(&p.spec.selector, w.labels()).unwrap_or(false))
        })
        .map(|p| p.name_any())
        .collect();
    rivals.sort();
    let templates = super::template::counts_for_policy(scope, ns, &policy.spec);
    Seen {
        errors,
        windows,
        matched,
        rivals,
        templates,
    }
}

/// What a reconcile decided: the status, the Events its transitions
/// announce, and when to look again.
#[derive(Debug)]
struct Decided {
    status: PatchPolicyStatus,
    previous: PatchPolicyStatus,
    events: Vec<(bool, String, String)>,
    wake: Option<Timestamp>,
}

/// The policy's status after a round, and the Events of its transitions
/// (pure).
fn decide(
    policy: &PatchPolicy,
    seen: &Seen,
    round: &remediation::Round,
    window: WindowState,
    now: Timestamp,
) -> Decided {
    let previous = policy.status.clone().unwrap_or_default();
    let generation = policy.metadata.generation;
    let mut counts = count(&seen.matched);
    counts.waiting_for_window = round.waiting_for_window;
    // A Job the apiserver refused (e.g. a template the dry-run accepted but
    // the real object did not) is the spec's problem too.
    let errors: Vec<String> = seen.errors.iter().chain(&round.errors).cloned().collect();
    let ready = ready_condition(&errors, &round.names_taken);
    let ledger = &round.ledger;
    let max_failures = policy.spec.remediation.max_failures;
    let desired = [
        ready.clone(),
        conflict_condition(&seen.rivals, policy.spec.priority),
        paused_condition(ledger, max_failures),
    ];
    let (conds, transitions) =
        conditions::merge(&previous.conditions, &desired, generation, &time(now));
    let mut events = Vec::new();
    if transitions.contains(&types::READY) && ready.status == ConditionStatus::False {
        events.push((true, ready.reason.clone(), ready.message.clone()));
    }
    let was_paused = conditions::is_true(&previous.conditions, types::ROLLOUT_PAUSED);
    if transitions.contains(&types::ROLLOUT_PAUSED) {
        match ledger.paused_at {
            Some(_) => events.push((
                true,
                "RolloutPaused".into(),
                format!(
                    "{} failed or unverified outcomes: {}",
                    ledger.failures,
                    ledger.last_failures.join(", ")
                ),
            )),
            None if was_paused => events.push((
                false,
                "RolloutResumed".into(),
                format!("resumed by {RESUME_ANNOTATION}"),
            )),
            None => {}
        }
    }
    if transitions.contains(&types::CONFLICT) && !seen.rivals.is_empty() {
        events.push((
            true,
            "PriorityTie".into(),
            format!("same priority as {}", seen.rivals.join(", ")),
        ));
    }
    let status = PatchPolicyStatus {
        observed_generation: generation,
        conditions: conds,
        workloads: Some(counts),
        templates: Some(seen.templates.clone()),
        rollout: Some(ledger.clone()).filter(|l| *l != RolloutLedger::default()),
        next_window: window.next_opening.map(time),
        window_open_until: window.open_until.map(time),
    };
    let wake = [window::next_change(&seen.windows, now), round.wake_at]
        .into_iter()
        .flatten()
        .min();
    Decided {
        status,
        previous,
        events,
        wake,
    }
}

/// Publishes the counts, writes the status when it changed, then its
/// Events.
async fn update_status(
    scope: &Scope,
    policy: &PatchPolicy,
    ns: &str,
    decided: &Decided,
) -> Result<(), Error> {
    let shared = &scope.shared;
    let name = policy.name_any();
    let status = &decided.status;
    if let Some(counts) = &status.workloads {
        shared.metrics.set_workload_counts(ns, &name, counts);
    }
    if let Some(counts) = &status.templates {
        shared.metrics.set_template_counts(ns, &name, counts);
    }
    if *status == decided.previous {
        return Ok(());
    }
    let api: Api<PatchPolicy> = Api::namespaced(shared.client.clone(), ns);
    write_status(
        shared,
        &api,
        &name,
        "policy",
        MANAGER,
        status,
        &decided.previous,
        None,
    )
    .await?;
    for (warning, reason, message) in &decided.events {
        shared
            .event(policy, *warning, reason, message.clone())
            .await;
    }
    Ok(())
}

/// `Conflict`: another policy of the same priority matches some of the same
/// Workloads, so neither remediates them.
fn conflict_condition(rivals: &[String], priority: i32) -> DesiredCondition {
    if rivals.is_empty() {
        return DesiredCondition::new(
            types::CONFLICT,
            ConditionStatus::False,
            "NoConflict",
            "no other policy with the same priority matches these Workloads",
        );
    }
    DesiredCondition::new(
        types::CONFLICT,
        ConditionStatus::True,
        "PriorityTie",
        format!(
            "PatchPolicies {} have the same priority ({priority}) and match the same Workloads: nothing they share is remediated",
            rivals.join(", "),
        ),
    )
}

/// `RolloutPaused`: the ledger reached `maxFailures`.
fn paused_condition(ledger: &RolloutLedger, max_failures: i32) -> DesiredCondition {
    match ledger.paused_at.as_ref() {
        Some(at) => DesiredCondition::new(
            types::ROLLOUT_PAUSED,
            ConditionStatus::True,
            "MaxFailuresReached",
            format!(
                "paused at {} after {} failed or unverified outcomes (maxFailures {max_failures}), last: {}; set the {RESUME_ANNOTATION} annotation to a new value to resume",
                at.0,
                ledger.failures,
                ledger.last_failures.join(", ")
            ),
        ),
        None => DesiredCondition::new(
            types::ROLLOUT_PAUSED,
            ConditionStatus::False,
            "Rolling",
            format!(
                "{} failed or unverified outcomes of maxFailures {max_failures}",
                ledger.failures
            ),
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn policy(status: Option<PatchPolicyStatus>) -> PatchPolicy {
        let mut p: PatchPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
            "metadata": {"name": "gold", "namespace": "fleet", "generation": 3},
            "spec": {"selector": {"matchLabels": {"tier": "gold"}}, "priority": 100,
                     "deadlines": {"critical": "3d", "high": "7d", "medium": "30d", "low": "90d", "unknown": "30d"},
                     "inventoryMaxAge": "7d",
                     "maintenanceWindows": [{"schedule": "0 2 * * *", "duration": "2h"}]}
        }))
        .expect("a policy");
        p.status = status;
        p
    }

    fn seen(p: &PatchPolicy, rivals: &[&str]) -> Seen {
        let (errors, windows) = validate(&p.spec);
        Seen {
            errors,
            windows,
            matched: Vec::new(),
            rivals: rivals.iter().map(|r| (*r).to_owned()).collect(),
            templates: TemplateCounts::default(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    const NOW: &str = "2026-12-05T10:00:00Z";

    fn reason<'a>(d: &'a Decided, type_: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&d.status.conditions, type_).expect("the condition");
        (c.status.as_str(), c.reason.as_str())
    }

    fn event_reasons(d: &Decided) -> Vec<&str> {
        d.events.iter().map(|(_, r, _)| r.as_str()).collect()
    }

    #[test]
    fn a_valid_policy_is_ready_and_wakes_at_its_next_window_change() {
        let p = policy(None);
        let seen = seen(&p, &[]);
        let window = WindowState {
            open_until: None,
            next_opening: window::next_opening(&seen.windows, at(NOW)),
        };
        let d = decide(&p, &seen, &remediation::Round::default(), window, at(NOW));
        assert_eq!(reason(&d, types::READY), ("True", "Valid"));
        assert_eq!(reason(&d, types::CONFLICT), ("False", "NoConflict"));
        assert_eq!(reason(&d, types::ROLLOUT_PAUSED), ("False", "Rolling"));
        assert_eq!(d.status.observed_generation, Some(3));
        assert_eq!(d.status.rollout, None, "an empty ledger is not written");
        assert_eq!(
            d.status.next_window.as_ref().map(|t| t.0),
            Some(at("2026-12-06T02:00:00Z"))
        );
        assert_eq!(d.wake, Some(at("2026-12-06T02:00:00Z")));
        assert!(d.events.is_empty(), "{:?}", d.events);
        // A round that must look again sooner wins.
        let round = remediation::Round {
            wake_at: Some(at("2026-12-05T10:00:15Z")),
            ..Default::default()
        };
        let d = decide(&p, &seen, &round, window, at(NOW));
        assert_eq!(d.wake, Some(at("2026-12-05T10:00:15Z")));
    }

    #[test]
    fn spec_errors_come_before_taken_names_and_each_transition_is_announced_once() {
        let p = policy(None);
        let mut seen = seen(&p, &[]);
        seen.errors.push("spec.remediation.jobTemplate: bad".into());
        let round = remediation::Round {
            errors: vec!["Workload a: refused by the apiserver".into()],
            names_taken: vec!["Workload b: a Job named b-1 already exists".into()],
            ..Default::default()
        };
        let window = WindowState::default();
        let d = decide(&p, &seen, &round, window, at(NOW));
        let ready = conditions::find(&d.status.conditions, types::READY).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(
            ready.message,
            "spec.remediation.jobTemplate: bad; Workload a: refused by the apiserver; Workload b: a Job named b-1 already exists"
        );
        assert_eq!(event_reasons(&d), ["InvalidSpec"]);
        // Only the taken name left: JobNameTaken. Ready stays False, which
        // is no transition: the status says it, no second Event.
        seen.errors.clear();
        let round = remediation::Round {
            names_taken: round.names_taken,
            ..Default::default()
        };
        let again = decide(&policy(Some(d.status)), &seen, &round, window, at(NOW));
        assert_eq!(reason(&again, types::READY), ("False", "JobNameTaken"));
        assert!(again.events.is_empty(), "{:?}", again.events);
        // From Ready, the taken name is a transition, announced once.
        let ready = decide(&p, &seen, &remediation::Round::default(), window, at(NOW));
        let taken = decide(&policy(Some(ready.status)), &seen, &round, window, at(NOW));
        assert_eq!(event_reasons(&taken), ["JobNameTaken"]);
        let same = decide(&policy(Some(taken.status)), &seen, &round, window, at(NOW));
        assert!(same.events.is_empty(), "{:?}", same.events);
    }

    #[test]
    fn a_tie_a_pause_and_a_resume_are_conditions_and_events() {
        let p = policy(None);
        let tied = seen(&p, &["silver", "bronze"]);
        let paused = remediation::Round {
            ledger: RolloutLedger {
                failures: 2,
                last_failures: vec!["web-1".into(), "web-2".into()],
                paused_at: Some(Time(at("2026-12-05T09:59:00Z"))),
                ..Default::default()
            },
            ..Default::default()
        };
        let window = WindowState::default();
        let d = decide(&p, &tied, &paused, window, at(NOW));
        assert_eq!(reason(&d, types::CONFLICT), ("True", "PriorityTie"));
        assert_eq!(
            reason(&d, types::ROLLOUT_PAUSED),
            ("True", "MaxFailuresReached")
        );
        assert_eq!(event_reasons(&d), ["RolloutPaused", "PriorityTie"]);
        assert!(d.events.iter().all(|(warning, _, _)| *warning));
        // Resumed: one Normal Event; the tie is not announced again.
        let resumed = decide(
            &policy(Some(d.status)),
            &tied,
            &remediation::Round::default(),
            window,
            at(NOW),
        );
        assert_eq!(
            reason(&resumed, types::ROLLOUT_PAUSED),
            ("False", "Rolling")
        );
        assert_eq!(
            resumed.events,
            [(
                false,
                "RolloutResumed".to_owned(),
                format!("resumed by {RESUME_ANNOTATION}")
            )]
        );
    }
}
