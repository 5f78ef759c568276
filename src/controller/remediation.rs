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

use super::jobs::{self, Contract, Created, JobRequest, Purpose};
use super::scope::Scope;
use super::workload::{inventory_baseline_labels, judge};
use super::{Error, InStep, Step, failpoint};
use crate::api::policy::{PatchPolicy, RESUME_ANNOTATION, RolloutLedger};
use crate::api::workload::{RemediationPhase, RemediationRecord, Workload, check_target};
use crate::engine::evaluate::{PolicyRef, RemediationChoice, remediation_policy};
use crate::engine::fixes::FixSet;
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
                superseded(r, job)
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
        max_concurrent: (&r.max_concurrent).into(),
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
    let expected = scope.expected_jobs.pending_owners(&scope.jobs);
    // One pass over the Job cache, not one per Workload.
    let owned = jobs_by_owner(scope.jobs.state(), ns);
    let states = workload_states(driven, &owned, &expected);
    let outcomes = finished_outcomes(driven, &policy.name_any());
    let plan = plan(policy, &states, &outcomes, window, now);
    tracing::debug!(
        policy = %policy.name_any(),
        start = plan.start.len(),
        in_flight = plan.in_flight,
        limit = plan.limit,
        held = ?plan.held,
        "rollout planned"
    );
    let mut round = Round::planned(&plan);
    if may_start {
        let not_started = start_planned(scope, policy, ns, driven, &plan.start, now).await;
        round.record_starts(plan.start.len(), not_started);
    } else {
        round.drop_canaries(&plan.start);
    }
    round.recheck_names_taken(now);
    clean_up(scope, policy, ns, driven, &owned).await?;
    Ok(round)
}

/// Jobs by the uid of each of their owners.
type JobsByOwner = BTreeMap<String, Vec<Arc<Job>>>;

/// The Jobs of namespace `ns`, by owner uid.
fn jobs_by_owner(jobs: Vec<Arc<Job>>, ns: &str) -> JobsByOwner {
    let mut owned = JobsByOwner::new();
    for job in jobs {
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
    owned
}

/// The planner's view of the driven Workloads (`expected`: owners of Jobs
/// created and not cached yet).
fn workload_states(
    driven: &[Arc<Workload>],
    owned: &JobsByOwner,
    expected: &BTreeSet<String>,
) -> Vec<WorkloadState> {
    driven
        .iter()
        .map(|w| {
            let uid = w.metadata.uid.as_deref().unwrap_or_default();
            let owned = owned.get(uid).map_or(&[][..], Vec::as_slice);
            state(w, job_activity(w, owned, expected.contains(uid)))
        })
        .collect()
}

/// The finished outcomes of the policy's Jobs the Workloads recorded (each
/// counts once in the ledger).
fn finished_outcomes(driven: &[Arc<Workload>], policy: &str) -> Vec<Outcome> {
    let label = jobs::label_value(policy);
    driven
        .iter()
        .filter_map(|w| {
            let r = w.status.as_ref()?.remediation.as_ref()?;
            (r.policy.as_deref() == Some(label.as_str())).then_some(())?;
            Some(Outcome {
                workload: w.name_any(),
                job: r.job.clone()?,
                outcome: r.outcome?,
                finished_at: r.finished_at.as_ref().map(|t| t.0),
            })
        })
        .collect()
}

/// The engine's plan for this round: the ledger brought up to date with
/// the outcomes, then which Workloads start (pure).
fn plan(
    policy: &PatchPolicy,
    states: &[WorkloadState],
    outcomes: &[Outcome],
    window: WindowState,
    now: Timestamp,
) -> Plan {
    let previous = policy
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .unwrap_or_default();
    let settings = rollout_settings(policy);
    let ledger = rollout::account(&previous, &settings, outcomes);
    rollout::plan(&PlanInput {
        settings: &settings,
        window,
        workloads: states,
        ledger: &ledger,
        resume: policy
            .annotations()
            .get(RESUME_ANNOTATION)
            .map(String::as_str),
        now,
    })
}

impl Round {
    /// The round as planned, before any Job is created.
    fn planned(plan: &Plan) -> Round {
        let waiting = plan
            .held
            .iter()
            .filter(|(_, h)| *h == Hold::WaitingForWindow)
            .count();
        Round {
            waiting_for_window: i32::try_from(waiting).unwrap_or(i32::MAX),
            wake_at: plan.wake_at,
            ledger: plan.ledger.clone(),
            ..Round::default()
        }
    }

    /// Counts the `planned` starts but those that did not start, and says
    /// why they did not (`None`: a fresh evaluation left nothing to start).
    fn record_starts(&mut self, planned: usize, not_started: Vec<(String, Option<StartError>)>) {
        self.started = planned - not_started.len();
        for (workload, error) in not_started {
            match error {
                Some(StartError::NameTaken(e)) => {
                    self.names_taken.push(format!("Workload {workload}: {e}"));
                }
                Some(e) => self.errors.push(format!("Workload {workload}: {e}")),
                None => {}
            }
            // A Workload that did not start is not a canary.
            self.ledger.canaries.retain(|c| *c != workload);
        }
    }

    /// Nothing started: none of the planned starts is a canary.
    fn drop_canaries(&mut self, planned: &[Start]) {
        let started: BTreeSet<&str> = planned.iter().map(|s| s.workload.as_str()).collect();
        self.ledger
            .canaries
            .retain(|c| !started.contains(c.as_str()));
    }

    /// A name another owner's Job holds frees without waking the policy:
    /// it looks again soon.
    fn recheck_names_taken(&mut self, now: Timestamp) {
        if !self.names_taken.is_empty()
            && let Ok(recheck) = now.checked_add(NAME_TAKEN_RECHECK)
        {
            self.wake_at = Some(self.wake_at.map_or(recheck, |w| w.min(recheck)));
        }
    }
}

/// Creates the planned starts' Jobs; returns the Workloads that did not
/// start, and why. The planner fixed the set; creating it concurrently
/// keeps a large rollout's slots full (each create is a request and a
/// fresh evaluation), and expectations count every create until cached.
async fn start_planned(
    scope: &Scope,
    policy: &PatchPolicy,
    ns: &str,
    driven: &[Arc<Workload>],
    planned: &[Start],
    now: Timestamp,
) -> Vec<(String, Option<StartError>)> {
    let by_name: BTreeMap<String, &Workload> =
        driven.iter().map(|w| (w.name_any(), w.as_ref())).collect();
    // Collected first: a lazy iterator of futures borrowing `by_name` is
    // not `Send` for every lifetime the reconcile future needs.
    let mut creates = Vec::new();
    for start in planned {
        if let Some(&w) = by_name.get(&start.workload) {
            creates.push(async move {
                let started = start_job(scope, policy, ns, w, start, now).await;
                (!matches!(started, Ok(true))).then(|| (start.workload.clone(), started.err()))
            });
        }
    }
    stream::iter(creates)
        .buffer_unordered(CREATES_IN_FLIGHT)
        .filter_map(future::ready)
        .collect()
        .await
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
    let Some(uid) = w.metadata.uid.clone() else {
        return Ok(false);
    };
    let judged = judge(scope, w, ns, now);
    // Only the machine's own Inventory says what to install on it (the
    // status the planner read may predate a deleted one).
    if judged.chosen.as_ref().is_none_or(|c| c.provisional) {
        return Ok(false);
    }
    let Some(fixes) = judged.installable_now() else {
        // Compliant since the status was written: nothing to do.
        return Ok(false);
    };
    let remediation = Remediation {
        policy,
        ns,
        workload: w,
        uid,
        attempt: attempt(w, start, fixes.short()),
        fixes,
        baseline: inventory_baseline_labels(&judged),
    };
    let job = jobs::build(&remediation.request(template)?)?;
    let created = jobs::create(&scope.shared.client, &job).await?;
    if let Created::Taken(taken) = created {
        return Err(StartError::NameTaken(taken));
    }
    let job_name = job.name_any();
    scope.expected_jobs.created(ns, &job_name, &remediation.uid);
    if matches!(created, Created::New) {
        failpoint::exit_if(failpoint::EXIT_AFTER_JOB_CREATE);
        scope.shared.metrics.job_created(Purpose::Remediation);
        tracing::info!(workload = %w.name_any(), job = %job_name, attempt = remediation.attempt, canary = start.canary, "remediation Job created");
    }
    Ok(true)
}

/// The attempt a start is: the planner counted attempts for the fix set in
/// status; a fresher one starts its own count.
fn attempt(w: &Workload, start: &Start, fix_set: &str) -> u32 {
    let record = w.status.as_ref().and_then(|s| s.remediation.as_ref());
    if fix_set == start.fix_set {
        start.attempt
    } else if let Some(r) = record.filter(|r| r.fix_set.as_deref() == Some(fix_set)) {
        u32::try_from(r.attempt).unwrap_or(0) + 1
    } else {
        1
    }
}

/// One remediation Job to create: which fixes, on which Workload, which
/// attempt.
struct Remediation<'a> {
    policy: &'a PatchPolicy,
    ns: &'a str,
    workload: &'a Workload,
    uid: String,
    fixes: FixSet,
    attempt: u32,
    /// The labels naming the Inventory the fixes were judged from.
    baseline: Vec<(String, String)>,
}

impl Remediation<'_> {
    /// The Job request from the policy's `template` (pure); never one for a
    /// target outside its grammar (the Workload's Ready condition says
    /// which field).
    fn request<'t>(
        &'t self,
        template: &'t serde_json::Value,
    ) -> Result<JobRequest<'t>, StartError> {
        let wname = self.workload.name_any();
        let name = jobs::job_name(&wname, &format!("{}-{}", self.fixes.short(), self.attempt));
        let target = self.workload.spec.contract_target()?;
        let contract = self.contract(&name, target);
        Ok(JobRequest {
            template,
            template_field: "spec.remediation.jobTemplate",
            labels: self.labels(),
            purpose: Purpose::Remediation,
            owner: OwnerReference {
                api_version: "patchloop.dev/v1alpha1".into(),
                kind: "Workload".into(),
                name: wname,
                uid: self.uid.clone(),
                controller: Some(true),
                block_owner_deletion: None,
            },
            deadline_seconds: self
                .policy
                .spec
                .remediation
                .job_deadline
                .parse()
                .map_or(3600, |d| d.as_secs().max(1)),
            name,
            namespace: self.ns,
            env: contract.env,
            files: contract.files,
        })
    }

    /// The Job's labels: policy, Workload, attempt, fix set, the Workload
    /// generation and the Inventory it was judged from.
    fn labels(&self) -> BTreeMap<String, String> {
        let generation = self.workload.metadata.generation.unwrap_or_default();
        let mut labels = BTreeMap::from([
            (
                jobs::POLICY_LABEL.to_owned(),
                jobs::label_value(&self.policy.name_any()),
            ),
            (
                jobs::WORKLOAD_LABEL.to_owned(),
                jobs::label_value(&self.workload.name_any()),
            ),
            (jobs::ATTEMPT_LABEL.to_owned(), self.attempt.to_string()),
            (
                jobs::FIX_SET_LABEL.to_owned(),
                self.fixes.short().to_owned(),
            ),
            (
                jobs::WORKLOAD_GENERATION_LABEL.to_owned(),
                generation.to_string(),
            ),
        ]);
        labels.extend(self.baseline.iter().cloned());
        labels
    }

    /// The job contract of a remediation Job `job` (README, "The job
    /// contract"); `target` is the Workload's target as JSON.
    fn contract(&self, job: &str, target: String) -> Contract {
        let fixes = &self.fixes;
        let packages = serde_json::to_string_pretty(&fixes.packages).unwrap_or_default();
        Contract::new(
            Purpose::Remediation,
            self.ns,
            &self.workload.spec.platform,
            job,
            &fixes.advisories,
            fixes.package_lines(),
        )
        .with_env("PATCHLOOP_WORKLOAD", self.workload.name_any())
        .with_env("PATCHLOOP_TARGET", target.clone())
        .with_env("PATCHLOOP_POLICY", self.policy.name_any())
        .with_env("PATCHLOOP_FIX_SET", fixes.short())
        .with_env("PATCHLOOP_ATTEMPT", self.attempt.to_string())
        .with_file("packages.json", packages)
        .with_file("target.json", target)
    }
}

/// Whether a Workload's record has moved past `job`: it records a newer
/// Job, started after `job` was created.
fn superseded(record: &RemediationRecord, job: &Job) -> bool {
    let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
    record
        .started_at
        .as_ref()
        .is_some_and(|s| created.is_some_and(|c| c < s.0))
}

/// Deletes finished Jobs beyond the newest `keepFinishedJobs` of each
/// Workload, once the Workload's record shows their outcome (its current
/// Job finished and recorded, or a newer Job recorded since).
async fn clean_up(
    scope: &Scope,
    policy: &PatchPolicy,
    ns: &str,
    driven: &[Arc<Workload>],
    owned: &JobsByOwner,
) -> Result<(), Error> {
    let keep = usize::try_from(policy.spec.remediation.keep_finished_jobs).unwrap_or(0);
    for w in driven {
        let Some(jobs_of) = w.metadata.uid.as_ref().and_then(|uid| owned.get(uid)) else {
            continue;
        };
        let record = w.status.as_ref().and_then(|s| s.remediation.as_ref());
        for job in finished_beyond(jobs_of, keep) {
            let name = job.name_any();
            let recorded = record.is_some_and(|r| {
                if r.job.as_deref() == Some(name.as_str()) {
                    r.outcome.is_some()
                } else {
                    superseded(r, job)
                }
            });
            if recorded {
                jobs::delete(&scope.shared.client, ns, &name)
                    .await
                    .step(Step::Apply, "delete finished remediation Job")?;
                tracing::debug!(job = %name, "finished remediation Job cleaned up");
            }
        }
    }
    Ok(())
}

/// The finished remediation Jobs among `owned` but the newest `keep`.
fn finished_beyond(owned: &[Arc<Job>], keep: usize) -> Vec<&Arc<Job>> {
    let mut finished: Vec<&Arc<Job>> = owned
        .iter()
        .filter(|j| jobs::finished(j).is_some())
        .filter(|j| {
            j.labels().get(jobs::PURPOSE_LABEL).map(String::as_str)
                == Some(Purpose::Remediation.as_str())
        })
        .collect();
    finished
        .sort_by_key(|j| std::cmp::Reverse(j.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    finished.into_iter().skip(keep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixes::FixPackage;
    use serde_json::json;

    fn workload(status: serde_json::Value) -> Workload {
        serde_json::from_value(json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "web-01", "namespace": "fleet", "uid": "w-1", "generation": 4},
            "spec": {"platform": "Debian:12", "target": {"address": "10.0.3.17"}},
            "status": status,
        }))
        .expect("a Workload")
    }

    fn policy() -> PatchPolicy {
        serde_json::from_value(json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
            "metadata": {"name": "gold", "namespace": "fleet"},
            "spec": {"selector": {}, "remediation": {"jobDeadline": "10m"}}
        }))
        .expect("a policy")
    }

    fn start(fix_set: &str, attempt: u32) -> Start {
        Start {
            workload: "web-01".into(),
            fix_set: fix_set.into(),
            attempt,
            canary: false,
        }
    }

    #[test]
    fn a_fresher_fix_set_starts_its_own_count_of_attempts() {
        let w = workload(json!({"remediation": {"fixSet": "bbb", "attempt": 2}}));
        assert_eq!(attempt(&w, &start("aaa", 3), "aaa"), 3, "as planned");
        assert_eq!(
            attempt(&w, &start("aaa", 3), "bbb"),
            3,
            "the recorded one's next"
        );
        assert_eq!(attempt(&w, &start("aaa", 3), "ccc"), 1, "a new one");
    }

    #[test]
    fn starts_that_did_not_happen_are_no_canaries_and_a_taken_name_is_rechecked() {
        let mut round = Round::default();
        round.ledger.canaries = vec!["web-01".into(), "web-02".into(), "web-03".into()];
        let taken = jobs::NameTaken {
            job: "web-02-abc-1".into(),
            holder: "controlled by no object".into(),
            kind: "Workload".into(),
            owner: "web-02".into(),
        };
        round.record_starts(
            3,
            vec![
                ("web-02".into(), Some(StartError::NameTaken(taken))),
                ("web-03".into(), None),
            ],
        );
        assert_eq!(round.started, 1);
        assert_eq!(round.ledger.canaries, ["web-01"]);
        assert_eq!(round.names_taken.len(), 1);
        assert!(round.errors.is_empty());
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("a timestamp");
        round.recheck_names_taken(now);
        assert_eq!(round.wake_at, now.checked_add(NAME_TAKEN_RECHECK).ok());
    }

    #[test]
    fn a_remediation_job_carries_the_contract_labels_and_deadline() {
        let policy = policy();
        let w = workload(json!({}));
        let remediation = Remediation {
            policy: &policy,
            ns: "fleet",
            workload: &w,
            uid: "w-1".into(),
            fixes: FixSet {
                packages: vec![FixPackage {
                    name: "libc6".into(),
                    fixed: "2.36-9+deb12u3".into(),
                    source: Some("glibc".into()),
                    advisories: vec!["DSA-5514-1".into()],
                }],
                advisories: vec!["CVE-2023-4911".into(), "DSA-5514-1".into()],
                emergency: false,
                due: None,
                digest: "abcdef0123456789".into(),
            },
            attempt: 2,
            baseline: vec![("patchloop.dev/inventory-generation".into(), "7".into())],
        };
        let template = json!({});
        let req = remediation.request(&template).expect("a request");
        assert_eq!(req.deadline_seconds, 600);
        assert_eq!(req.owner.uid, "w-1");
        assert!(req.name.starts_with("web-01-") && req.name.ends_with("-2"));
        let env: BTreeMap<&str, &str> = req
            .env
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(env["PATCHLOOP_PURPOSE"], "remediation");
        assert_eq!(env["PATCHLOOP_TARGET"], r#"{"address":"10.0.3.17"}"#);
        assert_eq!(env["PATCHLOOP_ADVISORIES"], "CVE-2023-4911,DSA-5514-1");
        assert_eq!(env["PATCHLOOP_ATTEMPT"], "2");
        assert_eq!(env["PATCHLOOP_JOB"], req.name);
        assert_eq!(env.len(), 11);
        assert_eq!(req.files["packages"], "libc6 2.36-9+deb12u3 glibc\n");
        assert_eq!(req.files["target.json"], r#"{"address":"10.0.3.17"}"#);
        assert_eq!(req.labels[jobs::ATTEMPT_LABEL], "2");
        assert_eq!(req.labels["patchloop.dev/inventory-generation"], "7");
    }
}
