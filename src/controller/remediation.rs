//! The rollout driver, run by the policy reconciler (the only creator of
//! remediation Jobs): reads the Workloads the policy drives, accounts their
//! finished outcomes into the fleet ledger, asks the engine's planner which
//! to start, creates their Jobs under deterministic names, and cleans up
//! finished Jobs whose outcome the Workloads have recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::{StreamExt, future, stream};
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

use super::jobs::{self, Created, JobRequest, Purpose};
use super::scope::Scope;
use super::workload::{inventory_baseline_labels, judge};
use super::{Error, failpoint};
use crate::api::policy::{PatchPolicy, RESUME_ANNOTATION, RolloutLedger};
use crate::api::workload::{RemediationPhase, Workload, check_target};
use crate::engine::evaluate::{PolicyRef, RemediationChoice, remediation_policy};
use crate::engine::rollout::{
    self, Hold, JobActivity, Need, Outcome, Plan, PlanInput, Record, RolloutSettings, Start,
    WindowState, WorkloadState,
};

/// Job creations in flight at once within a round.
const CREATES_IN_FLIGHT: usize = 16;

/// How soon a policy looks again at a Job name another owner's Job holds.
/// Only Patchloop's own Jobs are watched (by label), so the squatter's
/// deletion wakes nothing: the policy polls until the name is free.
const NAME_TAKEN_RECHECK: jiff::SignedDuration = jiff::SignedDuration::from_secs(15);

/// What a round of the rollout did.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// The ledger to record.
    pub ledger: RolloutLedger,
    /// Driven Workloads waiting for a maintenance window.
    pub waiting_for_window: i32,
    /// When to plan again.
    pub wake_at: Option<Timestamp>,
    /// Jobs this round could not create, by Workload (the reason).
    pub errors: Vec<String>,
    /// Jobs this round did not create because another owner's Job holds
    /// their name, by Workload: not attempts, so never failures.
    pub names_taken: Vec<String>,
    /// Jobs this round created (or found already created).
    pub started: usize,
}

/// The Workloads among `matched` whose remediation this policy drives (the
/// highest priority among the policies matching each; ties drive nothing).
pub fn driven(
    scope: &Scope,
    policy: &str,
    ns: &str,
    matched: &[Arc<Workload>],
) -> Vec<Arc<Workload>> {
    matched
        .iter()
        .filter(|w| {
            let policies = scope.matching_policies(ns, w.labels());
            let refs: Vec<PolicyRef<'_>> = policies.iter().map(|p| PolicyRef::of(p)).collect();
            matches!(remediation_policy(&refs), RemediationChoice::Policy(p) if p == policy)
        })
        .cloned()
        .collect()
}

/// What the caches and this process's memory show of a Workload's Jobs
/// (`owned`: its cached Jobs; `expected`: one created and not cached yet).
fn job_activity(w: &Workload, owned: &[Arc<Job>], expected: bool) -> JobActivity {
    let record = w.status.as_ref().and_then(|s| s.remediation.as_ref());
    let mut activity = JobActivity {
        expected,
        ..JobActivity::default()
    };
    for job in owned {
        let Some(end) = jobs::finished(job) else {
            activity.unfinished = true;
            continue;
        };
        let name = job.metadata.name.as_deref();
        let recorded = record.is_some_and(|r| {
            if r.job.as_deref() == name {
                r.phase.is_some_and(|p| p != RemediationPhase::Running)
            } else {
                // An older Job the record has moved past.
                let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
                r.started_at
                    .as_ref()
                    .is_some_and(|s| created.is_some_and(|c| c < s.0))
            }
        });
        if !recorded {
            let succeeded = activity.unrecorded_end.unwrap_or(true) && end.succeeded;
            activity.unrecorded_end = Some(succeeded);
        }
    }
    activity
}

/// The planner's view of one Workload.
fn state(w: &Workload, jobs: JobActivity) -> WorkloadState {
    let status = w.status.as_ref();
    let record = status.and_then(|s| s.remediation.as_ref());
    WorkloadState {
        name: w.name_any(),
        paused: w.spec.paused,
        conflict: false,
        // No Job can run for a target outside its grammar: nothing to plan
        // (its Ready condition says what to fix), no slot or canary taken.
        need: status
            .and_then(|s| s.installable.as_ref())
            .filter(|_| {
                w.spec
                    .target
                    .as_ref()
                    .is_none_or(|t| check_target(t).is_ok())
            })
            .map(|i| Need {
                fix_set: i.fix_set.clone(),
                emergency: i.emergency,
                due: i.due.as_ref().map(|t| t.0),
            }),
        record: record.map_or_else(Record::default, |r| Record {
            fix_set: r.fix_set.clone(),
            attempt: u32::try_from(r.attempt).unwrap_or(0),
            phase: r.phase,
            outcome: r.outcome,
            job: r.job.clone(),
            backoff_until: r.backoff_until.as_ref().map(|t| t.0),
            refused_generation: r.refused_generation,
        }),
        jobs,
        generation: w.metadata.generation,
        provisional: status
            .and_then(|s| s.inventory.as_ref())
            .is_some_and(|i| i.provisional),
    }
}

/// The planner settings of a policy.
pub fn rollout_settings(policy: &PatchPolicy) -> RolloutSettings {
    let r = &policy.spec.remediation;
    RolloutSettings {
        mode: r.mode,
        max_concurrent: r.max_concurrent.clone(),
        canary: u32::try_from(r.canary).unwrap_or(0),
        max_failures: u32::try_from(r.max_failures).unwrap_or(1),
        attempts: u32::try_from(r.attempts).unwrap_or(1),
        paused: r.paused,
    }
}

/// One round: account, plan, create, clean up. `may_start` is false when
/// the policy is invalid (nothing starts; the ledger is still kept).
pub async fn round(
    scope: &Scope,
    policy: &PatchPolicy,
    ns: &str,
    driven: &[Arc<Workload>],
    window: WindowState,
    may_start: bool,
    now: Timestamp,
) -> Result<Round, Error> {
    let name = policy.name_any();
    let previous = policy
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .unwrap_or_default();

    // One pass over the Job cache, not one per Workload.
    let expected = scope.expected_jobs.pending_owners(&scope.jobs);
    let mut owned: BTreeMap<String, Vec<Arc<Job>>> = BTreeMap::new();
    for job in scope.jobs.state() {
        if job.metadata.namespace.as_deref() != Some(ns) {
            continue;
        }
        for owner in job.owner_references() {
            owned
                .entry(owner.uid.clone())
                .or_default()
                .push(Arc::clone(&job));
        }
    }
    let states: Vec<WorkloadState> = driven
        .iter()
        .map(|w| {
            let uid = w.metadata.uid.as_deref().unwrap_or_default();
            let owned = owned.get(uid).map_or(&[][..], Vec::as_slice);
            state(w, job_activity(w, owned, expected.contains(uid)))
        })
        .collect();

    // Each finished outcome of this policy's Jobs counts once.
    let outcomes: Vec<Outcome> = driven
        .iter()
        .filter_map(|w| {
            let r = w.status.as_ref()?.remediation.as_ref()?;
            (r.policy.as_deref() == Some(jobs::label_value(&name).as_str())).then_some(())?;
            Some(Outcome {
                workload: w.name_any(),
                job: r.job.clone()?,
                outcome: r.outcome?,
                finished_at: r.finished_at.as_ref().map(|t| t.0),
            })
        })
        .collect();
    let settings = rollout_settings(policy);
    let ledger = rollout::account(&previous, &settings, &outcomes);
    let plan: Plan = rollout::plan(&PlanInput {
        settings: &settings,
        window,
        workloads: &states,
        ledger: &ledger,
        resume: policy
            .annotations()
            .get(RESUME_ANNOTATION)
            .map(String::as_str),
        now,
    });
    let mut round = Round {
        waiting_for_window: i32::try_from(
            plan.held
                .iter()
                .filter(|(_, h)| *h == Hold::WaitingForWindow)
                .count(),
        )
        .unwrap_or(i32::MAX),
        wake_at: plan.wake_at,
        ledger: plan.ledger.clone(),
        errors: Vec::new(),
        names_taken: Vec::new(),
        started: 0,
    };
    tracing::debug!(
        policy = %name,
        start = plan.start.len(),
        in_flight = plan.in_flight,
        limit = plan.limit,
        held = ?plan.held,
        "rollout planned"
    );

    if may_start {
        // The planner fixed the set; creating it concurrently keeps a large
        // rollout's slots full (each create is a request and a fresh
        // evaluation), and expectations count every create until cached.
        let by_name: BTreeMap<String, &Arc<Workload>> =
            driven.iter().map(|w| (w.name_any(), w)).collect();
        let mut creates = Vec::new();
        for start in &plan.start {
            if let Some(w) = by_name.get(&start.workload) {
                creates.push(async move {
                    let started = start_job(scope, policy, ns, w, start, now).await;
                    (!matches!(started, Ok(true))).then(|| (start.workload.clone(), started))
                });
            }
        }
        let not_started: Vec<(String, Result<bool, StartError>)> = stream::iter(creates)
            .buffer_unordered(CREATES_IN_FLIGHT)
            .filter_map(future::ready)
            .collect()
            .await;
        round.started = plan.start.len() - not_started.len();
        for (workload, result) in not_started {
            match result {
                Err(StartError::NameTaken(e)) => {
                    round.names_taken.push(format!("Workload {workload}: {e}"));
                }
                Err(e) => round.errors.push(format!("Workload {workload}: {e}")),
                Ok(_) => {}
            }
            // A Workload that did not start is not a canary.
            round.ledger.canaries.retain(|c| *c != workload);
        }
    } else {
        let started: BTreeSet<&str> = plan.start.iter().map(|s| s.workload.as_str()).collect();
        round
            .ledger
            .canaries
            .retain(|c| !started.contains(c.as_str()));
    }

    if !round.names_taken.is_empty()
        && let Ok(recheck) = now.checked_add(NAME_TAKEN_RECHECK)
    {
        round.wake_at = Some(round.wake_at.map_or(recheck, |w| w.min(recheck)));
    }
    clean_up(scope, policy, ns, driven, &owned).await?;
    Ok(round)
}

/// Why a Job could not be started.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Build(#[from] jobs::BuildError),
    #[error("{0}")]
    Target(#[from] crate::api::workload::TargetError),
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("spec.remediation.jobTemplate is not set")]
    NoTemplate,
    #[error(transparent)]
    NameTaken(jobs::NameTaken),
}

/// Creates the Job for one planned start, from a fresh evaluation (the
/// full fix set; the Workload's status carries only its digest); false when
/// the fresh evaluation leaves nothing to start.
async fn start_job(
    scope: &Scope,
    policy: &PatchPolicy,
    ns: &str,
    w: &Workload,
    start: &Start,
    now: Timestamp,
) -> Result<bool, StartError> {
    let template = policy
        .spec
        .remediation
        .job_template
        .as_ref()
        .ok_or(StartError::NoTemplate)?;
    let (Some(uid), wname) = (w.metadata.uid.clone(), w.name_any()) else {
        return Ok(false);
    };
    let judged = judge(scope, w, ns, now);
    // Only the machine's own Inventory says what to install on it (the
    // status the planner read may predate a deleted one).
    if judged.chosen.as_ref().is_none_or(|c| c.provisional) {
        return Ok(false);
    }
    let Some(fixes) = judged.installable(&w.spec.platform) else {
        // Compliant since the status was written: nothing to do.
        return Ok(false);
    };
    // The planner counted attempts for the fix set in status; a fresher
    // one starts its own count.
    let attempt = if fixes.short() == start.fix_set {
        start.attempt
    } else if w
        .status
        .as_ref()
        .and_then(|s| s.remediation.as_ref())
        .and_then(|r| r.fix_set.as_deref())
        == Some(fixes.short())
    {
        w.status
            .as_ref()
            .and_then(|s| s.remediation.as_ref())
            .map_or(1, |r| u32::try_from(r.attempt).unwrap_or(0) + 1)
    } else {
        1
    };
    let policy_name = policy.name_any();
    let job_name = jobs::job_name(&wname, &format!("{}-{attempt}", fixes.short()));
    // Never a Job for a target outside its grammar (the Workload's Ready
    // condition says which field).
    let target = w.spec.contract_target()?;
    let deadline = policy
        .spec
        .remediation
        .job_deadline
        .parse()
        .map_or(3600, |d| d.as_secs().max(1));
    let mut labels = BTreeMap::from([
        (
            jobs::POLICY_LABEL.to_owned(),
            jobs::label_value(&policy_name),
        ),
        (jobs::WORKLOAD_LABEL.to_owned(), jobs::label_value(&wname)),
        (jobs::ATTEMPT_LABEL.to_owned(), attempt.to_string()),
        (jobs::FIX_SET_LABEL.to_owned(), fixes.short().to_owned()),
        (
            jobs::WORKLOAD_GENERATION_LABEL.to_owned(),
            w.metadata.generation.unwrap_or_default().to_string(),
        ),
    ]);
    labels.extend(inventory_baseline_labels(&judged));
    let env = vec![
        (
            "PATCHLOOP_PURPOSE".to_owned(),
            Purpose::Remediation.as_str().to_owned(),
        ),
        ("PATCHLOOP_WORKLOAD".to_owned(), wname.clone()),
        ("PATCHLOOP_NAMESPACE".to_owned(), ns.to_owned()),
        ("PATCHLOOP_PLATFORM".to_owned(), w.spec.platform.clone()),
        ("PATCHLOOP_TARGET".to_owned(), target.clone()),
        (
            "PATCHLOOP_ADVISORIES".to_owned(),
            fixes.advisories.join(","),
        ),
        ("PATCHLOOP_POLICY".to_owned(), policy_name.clone()),
        ("PATCHLOOP_FIX_SET".to_owned(), fixes.short().to_owned()),
        ("PATCHLOOP_ATTEMPT".to_owned(), attempt.to_string()),
        ("PATCHLOOP_JOB".to_owned(), job_name.clone()),
        (
            "PATCHLOOP_PACKAGES_FILE".to_owned(),
            format!("{}/{}", jobs::CONTRACT_DIR, jobs::PACKAGES_FILE),
        ),
    ];
    let files = BTreeMap::from([
        (jobs::PACKAGES_FILE.to_owned(), fixes.package_lines()),
        (
            "packages.json".to_owned(),
            serde_json::to_string_pretty(&fixes.packages).unwrap_or_default(),
        ),
        ("target.json".to_owned(), target),
        ("advisories".to_owned(), fixes.advisories.join("\n") + "\n"),
    ]);
    let request = JobRequest {
        template,
        template_field: "spec.remediation.jobTemplate",
        name: job_name.clone(),
        namespace: ns,
        labels,
        purpose: Purpose::Remediation,
        owner: OwnerReference {
            api_version: "patchloop.dev/v1alpha1".into(),
            kind: "Workload".into(),
            name: wname.clone(),
            uid: uid.clone(),
            controller: Some(true),
            block_owner_deletion: None,
        },
        deadline_seconds: deadline,
        env,
        files,
    };
    let job = jobs::build(&request)?;
    let created = jobs::create(&scope.shared.client, &job).await?;
    if let Created::Taken(taken) = created {
        return Err(StartError::NameTaken(taken));
    }
    scope.expected_jobs.created(ns, &job_name, &uid);
    if matches!(created, Created::New) {
        failpoint::exit_if(failpoint::EXIT_AFTER_JOB_CREATE);
        scope.shared.metrics.job_created(Purpose::Remediation);
        tracing::info!(workload = %wname, job = %job_name, attempt, canary = start.canary, "remediation Job created");
    }
    Ok(true)
}

/// Deletes finished Jobs beyond the newest `keepFinishedJobs` of each
/// Workload, once the Workload's record shows their outcome (its current
/// Job finished and recorded, or a newer Job recorded since).
async fn clean_up(
    scope: &Scope,
    policy: &PatchPolicy,
    ns: &str,
    driven: &[Arc<Workload>],
    owned: &BTreeMap<String, Vec<Arc<Job>>>,
) -> Result<(), Error> {
    let keep = usize::try_from(policy.spec.remediation.keep_finished_jobs).unwrap_or(0);
    for w in driven {
        let Some(jobs_of) = w.metadata.uid.as_ref().and_then(|uid| owned.get(uid)) else {
            continue;
        };
        let record = w.status.as_ref().and_then(|s| s.remediation.as_ref());
        let mut finished: Vec<&Arc<Job>> = jobs_of
            .iter()
            .filter(|j| jobs::finished(j).is_some())
            .filter(|j| {
                j.labels().get(jobs::PURPOSE_LABEL).map(String::as_str)
                    == Some(Purpose::Remediation.as_str())
            })
            .collect();
        finished.sort_by_key(|j| {
            std::cmp::Reverse(j.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        for job in finished.into_iter().skip(keep) {
            let name = job.name_any();
            let recorded = record.is_some_and(|r| {
                if r.job.as_deref() == Some(name.as_str()) {
                    r.outcome.is_some()
                } else {
                    let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
                    r.started_at
                        .as_ref()
                        .is_some_and(|s| created.is_some_and(|c| c < s.0))
                }
            });
            if recorded {
                jobs::delete(&scope.shared.client, ns, &name).await?;
                tracing::debug!(job = %name, "finished remediation Job cleaned up");
            }
        }
    }
    Ok(())
}
