//! The workload reconciler: dereference and evaluate ([`judge`]: the
//! inventory by subject, template, and the judged inputs of
//! [`super::dereference`]) → follow the remediation Jobs
//! (`track_remediation`) → decide the status (pure: `decide`) → apply it
//! only if it changed (`update_status`) → Events on transitions → requeue
//! at the engine's next-change instant.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use k8s_openapi::api::batch::v1::Job;

use super::dereference::{
    Inputs, Verdict, inventory_reference, mark_unreadable, published_revision, ready_condition,
    template_revision_inventory, template_subject, workload_subject,
};
use super::jobs::{self, Purpose};
use super::scope::{Scope, version_of};
use super::triggers;
use super::{Error, failpoint, now, observed, requeue_at, write_status};
use crate::api::common::{ComplianceState, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::SubjectKind;
use crate::api::policy::{Remediation, RemediationMode};
use crate::api::workload::{
    InstallableFixes, InventoryVersion, RemediationPhase, RemediationRecord, TemplateStatus,
    check_target,
};
use crate::api::{Inventory, PatchPolicy, Template, Workload, WorkloadStatus};
use crate::engine::evaluate::{Evaluation, InventoryInput, RemediationChoice};
use crate::engine::fixes::{FixSet, Take, fix_set, gaps, parse_package_lines};
use crate::engine::inventory::InstalledPackage;
use crate::engine::outcome::{
    self, JobEnd, JobView, Lookup, Notice, Observation, ObserveInput, OutcomeSettings, PodFailure,
    SeenInventory,
};

/// The field manager of Workload status.
pub const MANAGER: &str = "patchloop-workload";

/// Job labels recording the Workload's canonical Inventory when the Job
/// was created (its uid, and its generation: `0` when there was none), the
/// baseline a verifying change must pass.
pub const INVENTORY_UID_LABEL: &str = "patchloop.dev/inventory-uid";
/// See [`INVENTORY_UID_LABEL`].
pub const INVENTORY_GENERATION_LABEL: &str = "patchloop.dev/inventory-generation";

/// The labels a remediation Job carries so its verification counts only
/// changes of the Workload's own Inventory made after it was created (see
/// [`INVENTORY_UID_LABEL`]).
pub fn inventory_baseline_labels(judged: &Judged) -> Vec<(String, String)> {
    let own = judged
        .chosen
        .as_ref()
        .filter(|c| !c.provisional)
        .map(|c| version_of(&c.object))
        .unwrap_or_default();
    let mut labels = vec![(
        INVENTORY_GENERATION_LABEL.to_owned(),
        own.generation.to_string(),
    )];
    labels.extend(own.uid.map(|uid| (INVENTORY_UID_LABEL.to_owned(), uid)));
    labels
}

/// The baseline a Job's labels record, if it carries one.
fn baseline_of(labels: &std::collections::BTreeMap<String, String>) -> Option<InventoryVersion> {
    let generation = labels.get(INVENTORY_GENERATION_LABEL)?.parse().ok()?;
    Some(InventoryVersion {
        uid: labels.get(INVENTORY_UID_LABEL).cloned(),
        generation,
    })
}

/// The inventory an evaluation used, read from the cluster.
pub struct ChosenInventory {
    /// The Inventory object.
    pub object: Arc<Inventory>,
    /// It describes the Workload's template revision, not the Workload.
    pub provisional: bool,
}

/// Where the Workload stands with its template.
pub fn template_status(
    wl: &Workload,
    template: Option<&Template>,
) -> Option<(TemplateStatus, DesiredCondition)> {
    let tref = wl.spec.template_ref.as_ref()?;
    let Some(template) = template else {
        let status = TemplateStatus {
            name: tref.name.clone(),
            revision: tref.revision,
            latest: None,
            current: false,
        };
        let missing = DesiredCondition::new(
            types::TEMPLATE_CURRENT,
            ConditionStatus::Unknown,
            "TemplateNotFound",
            format!(
                "spec.templateRef: Template {:?} does not exist in this namespace",
                tref.name
            ),
        );
        return Some((status, missing));
    };
    let latest = published_revision(template);
    let revision = tref.revision.unwrap_or(latest);
    let status = TemplateStatus {
        name: tref.name.clone(),
        revision: Some(revision),
        latest: Some(latest),
        current: revision >= latest,
    };
    let condition = template_current_condition(&status);
    Some((status, condition))
}

/// TemplateCurrent for a Workload whose Template exists.
fn template_current_condition(status: &TemplateStatus) -> DesiredCondition {
    let name = &status.name;
    let revision = status.revision.unwrap_or_default();
    let latest = status.latest.unwrap_or_default();
    if status.current {
        DesiredCondition::new(
            types::TEMPLATE_CURRENT,
            ConditionStatus::True,
            "LatestRevision",
            format!("runs revision {revision} of Template {name}, the latest"),
        )
    } else {
        DesiredCondition::new(
            types::TEMPLATE_CURRENT,
            ConditionStatus::False,
            "OlderRevision",
            format!(
                "runs revision {revision} of Template {name}, the latest is {latest}: reprovision it"
            ),
        )
    }
}

/// The remediation part of a Workload's status.
#[derive(Debug, Clone, Default)]
pub struct RemediationView {
    /// What a Job would install now.
    pub installable: Option<InstallableFixes>,
    /// The per-Workload record.
    pub record: Option<RemediationRecord>,
    /// Remediating, RemediationFailed, RemediationUnverified.
    pub conditions: Vec<DesiredCondition>,
}

/// Why a Workload with installable fixes has no Job running, as far as the
/// Workload itself can tell (the rollout's fleet-wide reasons — window,
/// canary, maxConcurrent — are in the driving policy's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// `spec.paused`.
    WorkloadPaused,
    /// Policies tie on priority.
    Conflict,
    /// No policy matches.
    NoPolicy,
    /// The driving policy only reports.
    ReportOnly(String),
    /// The driving policy's `remediation.paused`.
    PolicyPaused(String),
    /// Judged from its template revision's Inventory: the driving policy
    /// waits for the machine's own.
    ProvisionalInventory(String),
    /// Scheduled by the driving policy's rollout.
    Queued(String),
}

/// Remediating, RemediationFailed and RemediationUnverified from the record;
/// pure. Absent until the Workload has something to install or a record.
pub fn remediation_conditions(
    record: Option<&RemediationRecord>,
    installable: Option<&InstallableFixes>,
    standing: &Standing,
) -> Vec<DesiredCondition> {
    if record.is_none() && installable.is_none() {
        return Vec::new();
    }
    let remediating = match record.and_then(|r| phase_condition(r, installable.is_some())) {
        Some(c) => c,
        None if installable.is_none() => DesiredCondition::new(
            types::REMEDIATING,
            ConditionStatus::False,
            "NothingToInstall",
            "no installable fix is missing",
        ),
        None => {
            let (reason, message) = why_not_remediating(standing);
            DesiredCondition::new(types::REMEDIATING, ConditionStatus::False, reason, message)
        }
    };
    let mut conditions = vec![remediating];
    conditions.extend(outcome_conditions(record));
    conditions
}

/// Remediating as the record's phase says it, if it says it: a running or
/// verifying Job whatever is installable, else (with something installable)
/// a back-off, a give-up or a refusal.
fn phase_condition(record: &RemediationRecord, installable: bool) -> Option<DesiredCondition> {
    let job = record.job.as_deref().unwrap_or_default();
    let attempt = record.attempt;
    let when = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.map_or_else(|| "-".to_owned(), |t| t.0.to_string())
    };
    let (status, reason, message) = match (record.phase?, installable) {
        (RemediationPhase::Running, _) => (
            ConditionStatus::True,
            "JobRunning",
            format!("Job {job} (attempt {attempt}) is running"),
        ),
        (RemediationPhase::Verifying, _) => (
            ConditionStatus::True,
            "Verifying",
            format!(
                "Job {job} succeeded; waiting for an Inventory written after {} that shows the fixed versions",
                when(record.started_at.as_ref())
            ),
        ),
        (RemediationPhase::BackingOff, true) => (
            ConditionStatus::False,
            "BackingOff",
            format!(
                "attempt {attempt} failed; the next starts after {}",
                when(record.backoff_until.as_ref())
            ),
        ),
        (RemediationPhase::Failed, true) => (
            ConditionStatus::False,
            "GaveUp",
            "every attempt for this fix set failed: see RemediationFailed".to_owned(),
        ),
        (RemediationPhase::Refused, true) => (
            ConditionStatus::False,
            "Refused",
            format!(
                "Job {job} refused to act (a configuration error on this Workload): see RemediationRefused; a new attempt starts when the Workload's spec changes"
            ),
        ),
        _ => return None,
    };
    Some(DesiredCondition::new(
        types::REMEDIATING,
        status,
        reason,
        message,
    ))
}

/// Why a Workload with something installable has no Job: (reason, message).
fn why_not_remediating(standing: &Standing) -> (&'static str, String) {
    match standing {
        Standing::WorkloadPaused => ("WorkloadPaused", "skipped: spec.paused is true".to_owned()),
        Standing::Conflict => (
            "Conflict",
            "skipped: several PatchPolicies match with the same priority".to_owned(),
        ),
        Standing::NoPolicy => ("NoPolicy", "no PatchPolicy matches".to_owned()),
        Standing::ReportOnly(p) => (
            "ReportOnly",
            format!("PatchPolicy {p} only reports (spec.remediation.mode: Report)"),
        ),
        Standing::PolicyPaused(p) => (
            "PolicyPaused",
            format!("PatchPolicy {p} has spec.remediation.paused: true"),
        ),
        Standing::ProvisionalInventory(p) => (
            "ProvisionalInventory",
            format!(
                "PatchPolicy {p} does not remediate from a provisional inventory (its template revision's): a Job starts once the machine reports its own Inventory"
            ),
        ),
        Standing::Queued(p) => (
            "Queued",
            format!(
                "waiting for PatchPolicy {p}'s rollout (maintenance window, canary, maxConcurrent, rollout pause): see its status"
            ),
        ),
    }
}

/// RemediationFailed, RemediationUnverified and RemediationRefused: True in
/// the record's phase of that name.
fn outcome_conditions(record: Option<&RemediationRecord>) -> [DesiredCondition; 3] {
    let phase = record.and_then(|r| r.phase);
    let attempt = record.map_or(0, |r| r.attempt);
    let message = record.and_then(|r| r.message.clone()).unwrap_or_default();
    let fix_set = record
        .and_then(|r| r.fix_set.as_deref())
        .unwrap_or_default();
    let condition = |type_, true_in: RemediationPhase, yes: (&str, String), no: (&str, &str)| {
        if phase == Some(true_in) {
            DesiredCondition::new(type_, ConditionStatus::True, yes.0, yes.1)
        } else {
            DesiredCondition::new(type_, ConditionStatus::False, no.0, no.1)
        }
    };
    [
        condition(
            types::REMEDIATION_FAILED,
            RemediationPhase::Failed,
            (
                "AttemptsExhausted",
                format!(
                    "attempt {attempt} of fix set {fix_set} failed, the last allowed: {message}"
                ),
            ),
            ("NotFailed", "remediation has not given up"),
        ),
        condition(
            types::REMEDIATION_UNVERIFIED,
            RemediationPhase::Unverified,
            ("NoFreshInventory", message.clone()),
            (
                "NotUnverified",
                "no remediation is waiting past its verifyTimeout",
            ),
        ),
        condition(
            types::REMEDIATION_REFUSED,
            RemediationPhase::Refused,
            (
                "ConfigurationError",
                format!(
                    "{message}; fix the Workload's spec (e.g. spec.target, or pin the machine's host key for this Workload): a new attempt starts when it changes"
                ),
            ),
            (
                "NotRefused",
                "the last remediation Job did not refuse to act",
            ),
        ),
    ]
}

/// The Workload status the controller wants, from its judgement; pure.
/// `keep_compliance` holds the earlier verdict (start-up grace period with
/// no advisory data for the platform yet).
pub fn desired_status(
    wl: &Workload,
    judged: &Judged,
    keep_compliance: bool,
    remediation: RemediationView,
    now: Timestamp,
) -> WorkloadStatus {
    let previous = wl.status.clone().unwrap_or_default();
    let evaluation = &judged.evaluation;
    let inventory = judged.chosen.as_ref();
    let canonical = workload_subject(wl).canonical_inventory_name();
    let verdict = if keep_compliance {
        Verdict::kept(
            previous.compliance.clone(),
            previous.findings.clone(),
            previous.findings_truncated,
            &previous.conditions,
        )
    } else {
        Verdict::of(evaluation, "")
    };
    let template = template_status(wl, judged.template.as_deref());
    let mut desired = vec![
        ready_condition(
            evaluation,
            target_problem(wl),
            "the spec was processed; see Compliant for the verdict",
        ),
        verdict.condition,
        inventory_fresh_condition(&canonical, inventory, evaluation.inventory_fresh),
        conflict_condition(&evaluation.remediation),
    ];
    desired.extend(template.as_ref().map(|(_, condition)| condition.clone()));
    desired.extend(remediation.conditions);
    desired.extend(ignored_condition(&canonical, &judged.ignored_inventories));
    let generation = wl.metadata.generation;
    let (conditions, _) = conditions::merge(&previous.conditions, &desired, generation, &time(now));
    WorkloadStatus {
        observed_generation: generation,
        conditions,
        compliance: verdict.compliance,
        findings: verdict.findings,
        findings_truncated: verdict.truncated,
        installable: remediation.installable,
        remediation: remediation.record,
        template: template.map(|(status, _)| status),
        inventory: inventory.map(|i| inventory_reference(&i.object, i.provisional)),
        policies: judged
            .inputs
            .policies
            .iter()
            .map(|p| p.name_any())
            .collect(),
    }
}

/// What is wrong with `spec.target`, as Ready says it: no remediation Job
/// runs until it is fixed.
fn target_problem(wl: &Workload) -> Option<(&'static str, String)> {
    let e = check_target(wl.spec.target.as_ref()?).err()?;
    let message = format!("{e}; no remediation Job runs for this Workload until it is fixed");
    Some(("InvalidTarget", message))
}

/// InventoryFresh: whether the inventory judged is the Workload's own and
/// fresh enough for the policies (`fresh`, as the evaluation found it).
fn inventory_fresh_condition(
    canonical: &str,
    inventory: Option<&ChosenInventory>,
    fresh: Option<bool>,
) -> DesiredCondition {
    let (status, reason, message) = match (inventory, fresh) {
        (None, _) => (
            ConditionStatus::Unknown,
            "NoInventory",
            format!("no Inventory named {canonical} reports this Workload yet"),
        ),
        (Some(i), _) if i.provisional => (
            ConditionStatus::False,
            "Provisional",
            format!(
                "no Inventory of its own yet: judged provisionally by its template revision's Inventory {}",
                i.object.name_any()
            ),
        ),
        (Some(i), Some(false)) => (
            ConditionStatus::False,
            "InventoryStale",
            format!(
                "Inventory {} is older than inventoryMaxAge",
                i.object.name_any()
            ),
        ),
        (Some(i), _) => (
            ConditionStatus::True,
            "InventoryFresh",
            format!("Inventory {} is fresh", i.object.name_any()),
        ),
    };
    DesiredCondition::new(types::INVENTORY_FRESH, status, reason, message)
}

/// Conflict: whether matching policies tie on priority.
fn conflict_condition(choice: &RemediationChoice) -> DesiredCondition {
    let (status, reason, message) = match choice {
        RemediationChoice::Conflict(names) => (
            ConditionStatus::True,
            "PriorityTie",
            format!(
                "PatchPolicies {} match with the same priority: nothing is remediated until one has a higher priority",
                names.join(", ")
            ),
        ),
        RemediationChoice::Policy(name) => (
            ConditionStatus::False,
            "SinglePolicy",
            format!("PatchPolicy {name} drives remediation"),
        ),
        RemediationChoice::None => (
            ConditionStatus::False,
            "NoPolicy",
            "no PatchPolicy matches this Workload".to_owned(),
        ),
    };
    DesiredCondition::new(types::CONFLICT, status, reason, message)
}

/// How many ignored Inventory names a status lists.
const IGNORED_LISTED: usize = 5;

/// `InventoryIgnored=True` while Inventories under other names than the
/// Workload's canonical one name it (absent otherwise): whoever named one
/// wrong learns that it does not count and what name would.
fn ignored_condition(canonical: &str, ignored: &[String]) -> Option<DesiredCondition> {
    if ignored.is_empty() {
        return None;
    }
    let mut listed = ignored
        .iter()
        .take(IGNORED_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ignored.len() > IGNORED_LISTED {
        listed.push_str(&format!(" and {} more", ignored.len() - IGNORED_LISTED));
    }
    Some(DesiredCondition::new(
        types::INVENTORY_IGNORED,
        ConditionStatus::True,
        "NotCanonical",
        format!(
            "ignored Inventories naming this Workload: {listed}; only the Inventory named {canonical} speaks for it"
        ),
    ))
}

/// The Workload's own (canonical) Inventory, else its template revision's
/// (provisional).
fn choose_inventory(
    scope: &Scope,
    wl: &Workload,
    ns: &str,
    template: Option<&Template>,
) -> Option<ChosenInventory> {
    if let Some(object) = scope.inventory_for(ns, &workload_subject(wl)) {
        return Some(ChosenInventory {
            object,
            provisional: false,
        });
    }
    let pinned = wl.spec.template_ref.as_ref()?.revision;
    let template = template?;
    let revision = pinned.unwrap_or_else(|| published_revision(template));
    // A build result that history names but the cache does not hold: the
    // revision's canonical Inventory stands in for it here.
    let object = template_revision_inventory(scope, template, ns, revision)
        .or_else(|| scope.inventory_for(ns, &template_subject(template, revision)))?;
    Some(ChosenInventory {
        object,
        provisional: true,
    })
}

/// A Workload judged against what the caches hold.
pub struct Judged {
    /// The engine's verdict.
    pub evaluation: Evaluation,
    /// The inventory it used.
    pub chosen: Option<ChosenInventory>,
    /// Inventories naming the Workload under other names (never used).
    pub ignored_inventories: Vec<String>,
    /// The parsed packages of that inventory, when readable.
    pub packages: Option<Vec<InstalledPackage>>,
    /// The Template its `templateRef` names, if it exists.
    pub template: Option<Arc<Template>>,
    /// What it was judged with: the parsed platform, the data state, the
    /// matching policies and exceptions.
    pub inputs: Inputs,
}

impl Judged {
    /// The policy that drives remediation, if exactly one does.
    pub fn driving_policy(&self) -> Option<&Arc<PatchPolicy>> {
        match &self.evaluation.remediation {
            RemediationChoice::Policy(name) => self
                .inputs
                .policies
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name.as_str())),
            _ => None,
        }
    }

    /// What a remediation Job would install now.
    pub fn installable_now(&self) -> Option<FixSet> {
        fix_set(&self.evaluation, self.inputs.family()?, Take::Installable)
    }
}

/// Dereferences and evaluates a Workload (the first half of its reconcile,
/// shared with the policy reconciler, which needs the full fix set of the
/// Workloads it starts).
pub fn judge(scope: &Scope, wl: &Workload, ns: &str, now: Timestamp) -> Judged {
    let inputs = Inputs::read(scope, ns, wl.labels(), &wl.spec.platform, now);
    let template = wl
        .spec
        .template_ref
        .as_ref()
        .and_then(|t| scope.templates.get(&ObjectRef::new(&t.name).within(ns)));
    let chosen = choose_inventory(scope, wl, ns, template.as_deref());
    let ignored_inventories = scope
        .subjects
        .read()
        .map(|s| s.ignored(&(ns.to_owned(), SubjectKind::Workload, wl.name_any())))
        .unwrap_or_default();
    let parsed = chosen.as_ref().map(|c| inputs.packages(&c.object));
    let inventory = match (&chosen, &parsed) {
        (Some(c), Some(Ok(packages))) => Some(InventoryInput {
            packages,
            // The reporter's claim: it only ages the verdict (staleness);
            // verification never relies on it.
            collected_at: c.object.spec.reported_at.0,
            ages: !c.provisional,
            provisional: c.provisional,
        }),
        _ => None,
    };
    let mut evaluation = inputs.evaluate(scope, &wl.spec.platform, inventory, now);
    if let (Some(c), Some(Err(e))) = (&chosen, &parsed) {
        mark_unreadable(&mut evaluation, &c.object, e);
    }
    Judged {
        evaluation,
        chosen,
        ignored_inventories,
        packages: parsed.and_then(Result::ok),
        template,
        inputs,
    }
}

/// Reconciles one Workload.
pub async fn reconcile(wl: Arc<Workload>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = Arc::clone(&scope.shared);
    observed(
        &shared,
        "workload",
        wl.as_ref(),
        reconcile_inner(Arc::clone(&wl), &scope),
    )
    .await
}

async fn reconcile_inner(wl: Arc<Workload>, scope: &Arc<Scope>) -> Result<Action, Error> {
    let _judging = scope.shared.verdicts_first.judging();
    scope.caches_ready().await;
    let ns = wl.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let now = now();
    let judged = judge(scope, &wl, &ns, now);
    // Until the platform's advisory data (and every feed present at start)
    // has loaded, the earlier verdict is kept.
    let grace = judged.inputs.waiting;
    let tracked = track_remediation(scope, &wl, &ns, &judged, now).await?;
    let decided = decide(&wl, &judged, tracked, grace, now);
    update_status(scope, &wl, &ns, &judged, decided.status, decided.notices).await?;
    if wl.status.is_none() {
        triggers::inventories_of(scope, &ns, SubjectKind::Workload, &wl.name_any());
    }
    let max = scope.shared.settings.max_requeue;
    Ok(Action::requeue(requeue_at(decided.wake, now, max)))
}

/// What a Workload's reconcile decided: its status, the Events its
/// remediation record announces, and when to look again.
struct Decided {
    status: WorkloadStatus,
    notices: Vec<Notice>,
    wake: Option<Timestamp>,
}

/// The Workload's status from its judgement and remediation record (pure).
/// Within the start-up `grace` the earlier verdict and fix set are kept.
fn decide(
    wl: &Workload,
    judged: &Judged,
    tracked: Tracked,
    grace: Option<Timestamp>,
    now: Timestamp,
) -> Decided {
    let previous = wl.status.clone().unwrap_or_default();
    let installable = match grace {
        Some(_) => previous.installable.clone(),
        None => judged.installable_now().map(|f| InstallableFixes {
            fix_set: f.short().to_owned(),
            packages: i32::try_from(f.packages.len()).unwrap_or(i32::MAX),
            advisories: i32::try_from(f.advisories.len()).unwrap_or(i32::MAX),
            emergency: f.emergency,
            due: f.due.map(time),
        }),
    };
    let standing = standing(wl, judged);
    let remediation = RemediationView {
        conditions: remediation_conditions(
            tracked.record.as_ref(),
            installable.as_ref(),
            &standing,
        ),
        installable,
        record: tracked.record,
    };
    let status = desired_status(wl, judged, grace.is_some(), remediation, now);
    let mut notices: Vec<Notice> = compliance_notice(&previous, &status).into_iter().collect();
    notices.extend(tracked.notices);
    let wake = [judged.evaluation.next_change, grace, tracked.wake_at]
        .into_iter()
        .flatten()
        .min();
    Decided {
        status,
        notices,
        wake,
    }
}

/// Writes the status when it changed, then its Events (in the background)
/// and the objects that count this Workload.
async fn update_status(
    scope: &Arc<Scope>,
    wl: &Workload,
    ns: &str,
    judged: &Judged,
    status: WorkloadStatus,
    notices: Vec<Notice>,
) -> Result<(), Error> {
    let previous = wl.status.clone().unwrap_or_default();
    if status == previous {
        return Ok(());
    }
    let shared = &scope.shared;
    let api: Api<Workload> = Api::namespaced(shared.client.clone(), ns);
    let name = wl.name_any();
    write_status(
        shared, &api, &name, "workload", MANAGER, &status, &previous, None,
    )
    .await?;
    let job_of = |s: &WorkloadStatus| s.remediation.as_ref().and_then(|r| r.job.clone());
    if job_of(&status).is_some() && job_of(&status) != job_of(&previous) {
        failpoint::exit_if(failpoint::EXIT_AFTER_REMEDIATION_RECORD);
    }
    shared.events_later(wl, notices);
    let policies = previous
        .policies
        .iter()
        .chain(&status.policies)
        .cloned()
        .collect::<Vec<_>>();
    triggers::workload_written(scope, wl, status, policies, &judged.inputs.exceptions);
    Ok(())
}

/// Where the Workload stands with remediation, as far as it can tell.
fn standing(wl: &Workload, judged: &Judged) -> Standing {
    if wl.spec.paused {
        return Standing::WorkloadPaused;
    }
    match &judged.evaluation.remediation {
        RemediationChoice::Conflict(_) => Standing::Conflict,
        RemediationChoice::None => Standing::NoPolicy,
        RemediationChoice::Policy(name) => match judged.driving_policy() {
            Some(p) if p.spec.remediation.mode == RemediationMode::Report => {
                Standing::ReportOnly(name.clone())
            }
            Some(p) if p.spec.remediation.paused => Standing::PolicyPaused(name.clone()),
            _ if judged.chosen.as_ref().is_some_and(|c| c.provisional) => {
                Standing::ProvisionalInventory(name.clone())
            }
            _ => Standing::Queued(name.clone()),
        },
    }
}

/// The Workload's remediation Jobs as the outcome tracker sees them.
pub fn job_views(jobs: &[Arc<Job>]) -> Vec<JobView> {
    jobs.iter()
        .filter(|j| {
            j.labels().get(jobs::PURPOSE_LABEL).map(String::as_str)
                == Some(Purpose::Remediation.as_str())
        })
        .filter_map(|j| {
            let labels = j.labels();
            let created = j.metadata.creation_timestamp.as_ref()?.0;
            Some(JobView {
                name: j.name_any(),
                policy: labels.get(jobs::POLICY_LABEL).cloned(),
                fix_set: labels.get(jobs::FIX_SET_LABEL).cloned().unwrap_or_default(),
                attempt: labels
                    .get(jobs::ATTEMPT_LABEL)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(1),
                created,
                started: jobs::started_at(j).unwrap_or(created),
                generation: labels
                    .get(jobs::WORKLOAD_GENERATION_LABEL)
                    .and_then(|g| g.parse().ok()),
                end: jobs::finished(j).map(|f| JobEnd {
                    succeeded: f.succeeded,
                    at: f.at.unwrap_or(created),
                    message: f.message,
                }),
                baseline: baseline_of(labels),
            })
        })
        .collect()
}

/// The Workload's remediation record as its Jobs left it, the Events of
/// its transitions, and when it must be looked at again.
#[derive(Default)]
struct Tracked {
    record: Option<RemediationRecord>,
    notices: Vec<Notice>,
    wake_at: Option<Timestamp>,
}

/// Follows the Workload's remediation Jobs into its record (the engine
/// decides; this looks up what it asks for: a failed Pod's termination
/// message, whether the fresh inventory covers the Job's fix set).
async fn track_remediation(
    scope: &Scope,
    wl: &Workload,
    ns: &str,
    judged: &Judged,
    now: Timestamp,
) -> Result<Tracked, Error> {
    let previous = wl.status.as_ref().and_then(|s| s.remediation.as_ref());
    let views = owned_job_views(scope, wl, ns);
    if previous.is_none() && views.is_empty() {
        return Ok(Tracked::default());
    }
    let remediation = remediation_settings(scope, ns, previous, judged);
    let mut input = ObserveInput {
        record: previous,
        jobs: &views,
        inventory: seen_inventory(scope, judged),
        covered: None,
        failure: None,
        settings: OutcomeSettings::of(&remediation),
        now,
    };
    loop {
        match outcome::observe(&input) {
            Observation::Decided {
                record,
                notices,
                wake_at,
            } => {
                return Ok(Tracked {
                    record: record.map(|r| *r),
                    notices,
                    wake_at,
                });
            }
            Observation::Lookup(Lookup::FailureMessage(job)) => {
                // The Job is in the cache: the observation saw it there.
                let failure = match scope.jobs.get(&ObjectRef::<Job>::new(&job).within(ns)) {
                    Some(job) => pod_failure(&scope.shared.client, &job).await?,
                    None => PodFailure::default(),
                };
                input.failure = Some(failure);
            }
            Observation::Lookup(Lookup::Coverage(job)) => {
                input.covered = Some(covers(scope, ns, &job, judged));
            }
        }
    }
}

/// The remediation Jobs the Workload owns, as the outcome tracker sees
/// them.
fn owned_job_views(scope: &Scope, wl: &Workload, ns: &str) -> Vec<JobView> {
    let owned = wl
        .metadata
        .uid
        .as_deref()
        .map(|uid| scope.jobs_owned_by(ns, uid))
        .unwrap_or_default();
    let mut views = job_views(&owned);
    // A Job created before Jobs carried their Workload generation stands
    // for the current one (a refusal then waits for the next spec change).
    for v in &mut views {
        v.generation = v.generation.or(wl.metadata.generation);
    }
    views
}

/// The remediation settings of the policy that drives the Workload, else of
/// the one that created its current Job, else the defaults.
fn remediation_settings(
    scope: &Scope,
    ns: &str,
    previous: Option<&RemediationRecord>,
    judged: &Judged,
) -> Remediation {
    let recorded_policy = previous
        .and_then(|r| r.policy.as_deref())
        .and_then(|p| scope.policies.get(&ObjectRef::new(p).within(ns)));
    judged
        .driving_policy()
        .or(recorded_policy.as_ref())
        .map(|p| p.spec.remediation.clone())
        .unwrap_or_default()
}

/// The Workload's own inventory as verification sees it (a template's
/// never verifies a fix): its version and when the controller first saw it.
fn seen_inventory(scope: &Scope, judged: &Judged) -> Option<SeenInventory> {
    let own = judged.chosen.as_ref().filter(|c| !c.provisional)?;
    let first_seen = scope.subjects.read().ok()?.first_seen(&own.object)?;
    Some(SeenInventory {
        version: version_of(&own.object),
        first_seen,
    })
}

/// How a failed Job's Pod ended (the newest Pod the Job controls with a
/// failed container), and whether its script refused to act
/// ([`jobs::is_refusal`]).
async fn pod_failure(client: &kube::Client, job: &Job) -> Result<PodFailure, kube::Error> {
    Ok(jobs::failed_pod(client, job)
        .await?
        .map(|end| PodFailure {
            refused: end.refused,
            message: end.message,
        })
        .unwrap_or_default())
}

/// Whether the Workload's inventory has every package of the Job's fix set
/// (its `packages` contract file, from the Job cache) at least at its fixed
/// version. A Job without one (made by a Patchloop that kept the list in a
/// ConfigMap, which anyone who may write ConfigMaps could have replaced)
/// counts as covered only when the evaluation shows no installable fix left.
fn covers(scope: &Scope, ns: &str, job: &str, judged: &Judged) -> bool {
    let job = scope.jobs.get(&ObjectRef::<Job>::new(job).within(ns));
    let Some(lines) = job
        .as_deref()
        .and_then(|j| jobs::contract_file(j, jobs::PACKAGES_FILE))
    else {
        return judged.installable_now().is_none();
    };
    let wanted = parse_package_lines(lines);
    let (Some(packages), Some(family)) = (&judged.packages, judged.inputs.family()) else {
        return false;
    };
    gaps(&wanted, packages, family, false).is_empty()
}

/// The Event for a change of compliance state, if it deserves one.
fn compliance_notice(previous: &WorkloadStatus, desired: &WorkloadStatus) -> Option<Notice> {
    let state = |s: &WorkloadStatus| s.compliance.as_ref().and_then(|c| c.state);
    let (before, after) = (state(previous), state(desired));
    if before == after {
        return None;
    }
    let (warning, reason) = match after? {
        ComplianceState::Overdue => (true, "Overdue"),
        ComplianceState::Pending if before != Some(ComplianceState::Overdue) => {
            (true, "NonCompliant")
        }
        ComplianceState::Compliant | ComplianceState::Exempt
            if matches!(
                before,
                Some(ComplianceState::Pending | ComplianceState::Overdue)
            ) =>
        {
            (false, "Compliant")
        }
        ComplianceState::Unknown if before.is_some() => (true, "ComplianceUnknown"),
        _ => return None,
    };
    let message = desired
        .compliance
        .as_ref()
        .and_then(|c| c.reason.clone())
        .unwrap_or_default();
    Some(Notice {
        warning,
        reason,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::evaluate::{self, Detail, Input};

    fn reason(conds: &[DesiredCondition], kind: &str) -> (String, String) {
        let c = conds
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind}"));
        (format!("{:?}", c.status), c.reason.clone())
    }

    fn fixes() -> InstallableFixes {
        InstallableFixes {
            fix_set: "8e72485c01".into(),
            packages: 2,
            advisories: 2,
            emergency: false,
            due: None,
        }
    }

    /// A Debian Workload without an inventory, judged with no advisories.
    fn judged_without_inventory(wl: &Workload, now: Timestamp) -> Judged {
        let db = crate::engine::advisory::AdvisoryDb::default();
        let evaluation = evaluate::evaluate(&Input {
            detail: Detail::Actionable,
            platform: &wl.spec.platform,
            policies: &[],
            exceptions: &[],
            inventory: None,
            advisories: &db,
            now,
        });
        Judged {
            evaluation,
            chosen: None,
            ignored_inventories: Vec::new(),
            packages: None,
            template: None,
            inputs: Inputs {
                platform: crate::engine::version::parse_platform(&wl.spec.platform).ok(),
                waiting: None,
                policies: Vec::new(),
                exceptions: Vec::new(),
            },
        }
    }

    #[test]
    fn the_start_up_grace_keeps_the_fix_set_and_wakes_when_it_ends() {
        let mut wl: Workload = serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "web-01", "namespace": "fleet", "generation": 2},
            "spec": {"platform": "Debian:12", "target": {"address": "10.0.3.17"}}
        }))
        .expect("a Workload");
        wl.status = Some(WorkloadStatus {
            installable: Some(fixes()),
            ..Default::default()
        });
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("now");
        let end: Timestamp = "2026-12-05T10:05:00Z".parse().expect("grace end");
        let tracked_wake: Timestamp = "2026-12-05T10:01:00Z".parse().expect("wake");
        let judged = judged_without_inventory(&wl, now);
        let tracked = || Tracked {
            wake_at: Some(tracked_wake),
            ..Default::default()
        };
        let waiting = decide(&wl, &judged, Tracked::default(), Some(end), now);
        assert_eq!(waiting.status.installable, Some(fixes()));
        assert_eq!(waiting.wake, Some(end));
        assert_eq!(
            decide(&wl, &judged, tracked(), Some(end), now).wake,
            Some(tracked_wake),
            "the earliest of the grace end and the record's wake"
        );
        // After the grace: judged afresh, nothing installable without an
        // inventory.
        let judged_now = decide(&wl, &judged, Tracked::default(), None, now);
        assert_eq!(judged_now.status.installable, None);
        assert_eq!(judged_now.status.observed_generation, Some(2));
    }

    #[test]
    fn nothing_ever_installable_has_no_remediation_conditions() {
        assert!(remediation_conditions(None, None, &Standing::NoPolicy).is_empty());
    }

    #[test]
    fn a_waiting_workload_says_why_it_is_not_remediated() {
        let f = fixes();
        let cases = [
            (Standing::WorkloadPaused, "WorkloadPaused"),
            (Standing::Conflict, "Conflict"),
            (Standing::NoPolicy, "NoPolicy"),
            (Standing::ReportOnly("gold".into()), "ReportOnly"),
            (Standing::PolicyPaused("gold".into()), "PolicyPaused"),
            (Standing::Queued("gold".into()), "Queued"),
        ];
        for (standing, expected) in cases {
            let conds = remediation_conditions(None, Some(&f), &standing);
            assert_eq!(
                reason(&conds, types::REMEDIATING),
                ("False".into(), expected.into())
            );
            assert_eq!(reason(&conds, types::REMEDIATION_FAILED).0, "False");
            assert_eq!(reason(&conds, types::REMEDIATION_UNVERIFIED).0, "False");
        }
    }

    #[test]
    fn the_record_phase_drives_the_conditions() {
        let record = |phase| RemediationRecord {
            phase: Some(phase),
            job: Some("web-01-8e72485c01-1".into()),
            attempt: 1,
            ..Default::default()
        };
        let f = fixes();
        let q = Standing::Queued("gold".into());
        let running =
            remediation_conditions(Some(&record(RemediationPhase::Running)), Some(&f), &q);
        assert_eq!(
            reason(&running, types::REMEDIATING),
            ("True".into(), "JobRunning".into())
        );
        let verifying =
            remediation_conditions(Some(&record(RemediationPhase::Verifying)), None, &q);
        assert_eq!(
            reason(&verifying, types::REMEDIATING),
            ("True".into(), "Verifying".into())
        );
        let failed = remediation_conditions(Some(&record(RemediationPhase::Failed)), Some(&f), &q);
        assert_eq!(reason(&failed, types::REMEDIATING).1, "GaveUp");
        assert_eq!(
            reason(&failed, types::REMEDIATION_FAILED),
            ("True".into(), "AttemptsExhausted".into())
        );
        let unverified =
            remediation_conditions(Some(&record(RemediationPhase::Unverified)), None, &q);
        assert_eq!(reason(&unverified, types::REMEDIATION_UNVERIFIED).0, "True");
        assert_eq!(
            reason(&unverified, types::REMEDIATING).1,
            "NothingToInstall"
        );
        let backing_off =
            remediation_conditions(Some(&record(RemediationPhase::BackingOff)), Some(&f), &q);
        assert_eq!(reason(&backing_off, types::REMEDIATING).1, "BackingOff");
    }

    #[test]
    fn ignored_inventories_are_listed_with_the_name_that_would_count() {
        assert_eq!(ignored_condition("workload-web-01", &[]), None);
        let names: Vec<String> = (1..=7).map(|i| format!("cmdb-{i}")).collect();
        let c = ignored_condition("workload-web-01", &names).expect("a condition");
        assert_eq!(
            (c.type_, c.status),
            (types::INVENTORY_IGNORED, ConditionStatus::True)
        );
        assert_eq!(c.reason, "NotCanonical");
        assert!(
            c.message
                .contains("cmdb-1, cmdb-2, cmdb-3, cmdb-4, cmdb-5 and 2 more"),
            "{}",
            c.message
        );
        assert!(
            c.message
                .contains("only the Inventory named workload-web-01"),
            "{}",
            c.message
        );
    }

    fn workload(spec: serde_json::Value) -> Workload {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "web-01", "namespace": "fleet", "generation": 2},
            "spec": spec
        }))
        .expect("a Workload")
    }

    #[test]
    fn the_template_revision_is_compared_with_the_published_one() {
        let wl = workload(serde_json::json!({
            "platform": "Debian:12", "templateRef": {"name": "base", "revision": 1}
        }));
        let (status, c) = template_status(&wl, None).expect("a templateRef");
        assert_eq!((status.latest, status.current), (None, false));
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::Unknown, "TemplateNotFound")
        );
        let mut t: Template = serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Template",
            "metadata": {"name": "base", "namespace": "fleet"},
            "spec": {"platform": "Debian:12", "image": "registry.example/base:1"}
        }))
        .expect("a Template");
        let (status, c) = template_status(&wl, Some(&t)).expect("a templateRef");
        assert_eq!(
            (status.revision, status.latest, status.current),
            (Some(1), Some(1), true)
        );
        assert_eq!(c.reason, "LatestRevision");
        t.status = Some(crate::api::TemplateStatus {
            revision: Some(3),
            ..Default::default()
        });
        let (status, c) = template_status(&wl, Some(&t)).expect("a templateRef");
        assert_eq!((status.latest, status.current), (Some(3), false));
        assert_eq!(c.reason, "OlderRevision");
        assert!(c.message.contains("the latest is 3"), "{}", c.message);
        let unpinned = workload(serde_json::json!({
            "platform": "Debian:12", "templateRef": {"name": "base"}
        }));
        let (status, _) = template_status(&unpinned, Some(&t)).expect("a templateRef");
        assert_eq!((status.revision, status.current), (Some(3), true));
        assert!(
            template_status(
                &workload(serde_json::json!({"platform": "Debian:12"})),
                None
            )
            .is_none()
        );
    }

    #[test]
    fn inventory_freshness_and_policy_conflicts_are_named() {
        let inv: Inventory = serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
            "metadata": {"name": "template-base-1", "namespace": "fleet"},
            "spec": {"subject": {"kind": "Template", "name": "base", "revision": 1},
                     "reportedAt": "2026-12-05T09:00:00Z", "format": "dpkg"}
        }))
        .expect("an Inventory");
        let chosen = |provisional| ChosenInventory {
            object: Arc::new(inv.clone()),
            provisional,
        };
        let reason = |i: Option<&ChosenInventory>, fresh| {
            inventory_fresh_condition("workload-web-01", i, fresh).reason
        };
        assert_eq!(reason(None, None), "NoInventory");
        assert_eq!(reason(Some(&chosen(true)), Some(true)), "Provisional");
        assert_eq!(reason(Some(&chosen(false)), Some(false)), "InventoryStale");
        assert_eq!(reason(Some(&chosen(false)), Some(true)), "InventoryFresh");
        let tie = RemediationChoice::Conflict(vec!["gold".into(), "silver".into()]);
        let c = conflict_condition(&tie);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::True, "PriorityTie")
        );
        assert!(c.message.contains("gold, silver"), "{}", c.message);
        assert_eq!(
            conflict_condition(&RemediationChoice::Policy("gold".into())).reason,
            "SinglePolicy"
        );
        assert_eq!(
            conflict_condition(&RemediationChoice::None).reason,
            "NoPolicy"
        );
    }

    #[test]
    fn a_refusal_is_a_configuration_error_until_the_spec_changes() {
        let record = RemediationRecord {
            phase: Some(RemediationPhase::Refused),
            job: Some("web-01-8e72485c01-1".into()),
            attempt: 1,
            message: Some("host key mismatch".into()),
            ..Default::default()
        };
        let conds = remediation_conditions(Some(&record), Some(&fixes()), &Standing::NoPolicy);
        assert_eq!(
            reason(&conds, types::REMEDIATING),
            ("False".into(), "Refused".into())
        );
        assert_eq!(
            reason(&conds, types::REMEDIATION_REFUSED),
            ("True".into(), "ConfigurationError".into())
        );
        // Nothing left to install: the refusal no longer drives Remediating.
        let conds = remediation_conditions(Some(&record), None, &Standing::NoPolicy);
        assert_eq!(reason(&conds, types::REMEDIATING).1, "NothingToInstall");
        assert_eq!(reason(&conds, types::REMEDIATION_REFUSED).0, "True");
    }

    #[test]
    fn an_invalid_target_makes_the_workload_not_ready() {
        let wl = workload(serde_json::json!({
            "platform": "Debian:12", "target": {"address": "not an address!"}
        }));
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("now");
        let judged = judged_without_inventory(&wl, now);
        let status = desired_status(&wl, &judged, false, RemediationView::default(), now);
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidTarget")
        );
        let types_in_order: Vec<&str> =
            status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types_in_order,
            [
                types::READY,
                types::COMPLIANT,
                types::INVENTORY_FRESH,
                types::CONFLICT
            ]
        );
        assert_eq!(status.inventory, None);
        assert!(status.policies.is_empty());
    }
}
