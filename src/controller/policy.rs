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

use super::scope::Scope;
use super::{Error, now, observed, requeue_at, write_status};
use crate::api::common::{ComplianceState, Duration, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::policy::{PatchPolicySpec, PatchPolicyStatus, WorkloadCounts};
use crate::api::{PatchPolicy, Workload};
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
    if let Err(e) = selector::matches(&spec.selector, &Default::default()) {
        errors.push(format!("spec.selector: {e}"));
    }
    (errors, windows)
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

    let mut desired = vec![if errors.is_empty() {
        DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Valid",
            "the policy is valid and applied",
        )
    } else {
        DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidSpec",
            errors.join("; "),
        )
    }];
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
    let (conds, transitions) =
        conditions::merge(&previous.conditions, &desired, generation, &time(now));

    let open_until = window::open_until(&windows, now);
    let next_window = window::next_opening(&windows, now);
    let status = PatchPolicyStatus {
        observed_generation: generation,
        conditions: conds,
        workloads: Some(counts.clone()),
        templates: Some(super::template::counts_for_policy(scope, &ns, &policy.spec)),
        rollout: previous.rollout.clone(),
        next_window: next_window.map(time),
        window_open_until: open_until.map(time),
    };
    shared.metrics.set_workload_counts(&ns, &name, &counts);
    if status != previous {
        let api: Api<PatchPolicy> = Api::namespaced(shared.client.clone(), &ns);
        write_status(shared, &api, &name, "policy", MANAGER, &status).await?;
        if transitions.contains(&types::READY) && !errors.is_empty() {
            shared
                .event(policy.as_ref(), true, "InvalidSpec", errors.join("; "))
                .await;
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
    let next = window::next_change(&windows, now);
    Ok(Action::requeue(requeue_at(
        next,
        now,
        shared.settings.max_requeue,
    )))
}
