//! The change reconciler: one ChangeRequest's lifecycle, in named steps
//! called by `reconcile_inner`: `dereference` (the Template, its findings
//! now, the build and test Jobs, the build result `changerequest-<request>`
//! read from the apiserver, the build Pod's result line, into `Facts`) →
//! `decide` (pure: [`crate::engine::change::next`], the status the step
//! records, the approval record) → `apply` (create the build or test Job
//! under a deterministic name, pin the result, publish the pinned image;
//! what a create found is the engine's to judge, [`change::created`]) →
//! `settle` (pure: phase, timestamps, conditions) → `update_status`.
//!
//! The writes, in order (a failpoint after each; tests/templates.rs kills
//! the controller at every one): status Approved → build Job created (its
//! nonce generated there and handed to it only) → status Building (the
//! build Job's uid, the nonce's hash, the approval consumed) → status with
//! the pinned result → test Job created → status Testing → Template status
//! (the new revision) → status Published.
//!
//! Restart safety: the phase, the build Job's uid, the nonce's hash, the
//! pinned result and the Job names live in status; a build Job is adopted
//! only when its uid is the recorded one, and any other Job under its name
//! (a crash between its create and the Building write, or a forgery) is
//! deleted and a fresh one, with a fresh nonce, created; Jobs are created
//! under names derived from the request's;
//! status is written with the read `resourceVersion` as a precondition, so
//! a reconcile working from a stale cache can never move the phase back;
//! publication writes the Template first, and a request whose Template's
//! history already names it is `Published` whatever its recorded phase.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::scope::Scope;
use super::template::{self as tpl, Current};
use super::triggers;
use super::{Error, InStep, dereference, failpoint, jobs, now, observed, requeue_at};
use crate::api::change_request::{
    ApprovalRecord, BuildResult, ChangeRequestPhase as Phase, ChangeRequestStatus, PhaseTimestamps,
    Scope as ChangeScope, TEMPLATE_LABEL, Verdict, VoidedDecision, result_inventory_name,
};
use crate::api::common::{ComplianceState, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::SubjectKind;
use crate::api::policy::TemplateApproval;
use crate::api::template::TemplateRevision;
use crate::api::{ChangeRequest, Inventory, Template};
use crate::engine::change::{
    self, Act, Approval, Approver, BuildOutput, BuildReport, Creation, JobState, Observed,
    PersonDecision, Pin, ResultFacts, Step, TemplateSeen, before_build, is_closed,
};
use crate::engine::fixes::package_lines;
use crate::engine::inventory::parse_subject_list;
use crate::engine::version::parse_platform;

/// The field manager of ChangeRequest status, and of Template `revision`,
/// `image` and `history` (written at publication).
pub const MANAGER: &str = "patchloop-change";
/// The label naming a build or test Job's ChangeRequest.
pub const CHANGE_REQUEST_LABEL: &str = "patchloop.dev/change-request";
/// The default `activeDeadlineSeconds` of build and test Jobs whose template
/// sets none.
pub const DEFAULT_JOB_DEADLINE: i64 = 6 * 3600;

/// Reconciles one ChangeRequest.
pub async fn reconcile(cr: Arc<ChangeRequest>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = Arc::clone(&scope.shared);
    observed(
        &shared,
        "change",
        cr.as_ref(),
        reconcile_inner(Arc::clone(&cr), &scope),
    )
    .await
}

/// The managedFields entries that own some of `spec.decision`.
fn decision_entries(cr: &ChangeRequest) -> impl Iterator<Item = &ManagedFieldsEntry> {
    cr.metadata.managed_fields.iter().flatten().filter(|m| {
        m.fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec"))
            .and_then(|s| s.get("f:decision"))
            .is_some()
    })
}

/// The field manager that last set `spec.decision`, from managedFields: as
/// the client asserted it (the apiserver audit log is the authoritative
/// record of who).
pub fn decision_manager(cr: &ChangeRequest) -> Option<String> {
    decision_entries(cr)
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

/// Every field manager owning some of `spec.decision`, sorted: recorded
/// with a void (who owned the voided decision), never compared.
fn decision_managers(cr: &ChangeRequest) -> Vec<String> {
    let managers: std::collections::BTreeSet<String> = decision_entries(cr)
        .filter_map(|m| m.manager.clone())
        .collect();
    managers.into_iter().collect()
}

/// A fresh per-request nonce: 128 random bits, hex.
fn nonce(uid: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !random {
        // No /dev/urandom: the std hasher's random keys, the time and the uid.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(uid.as_bytes());
        h.write_i128(jiff::Timestamp::now().as_nanosecond());
        let d = Sha256::new()
            .chain_update(h.finish().to_le_bytes())
            .chain_update(uid.as_bytes())
            .finalize();
        bytes.copy_from_slice(&d[..16]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A build or test Job as the cache sees it; a failed one with its pod's
/// termination message.
async fn job_state(scope: &Scope, ns: &str, name: &str) -> Result<JobState, Error> {
    let Some(job) = scope.jobs.get(&ObjectRef::<Job>::new(name).within(ns)) else {
        return Ok(JobState::Absent);
    };
    Ok(match jobs::finished(&job) {
        None => JobState::Running,
        Some(f) if f.succeeded => JobState::Succeeded(f.at),
        Some(f) => {
            let pod = jobs::failed_pod(&scope.shared.client, &job)
                .await
                .step(super::Step::Dereference, "list the failed Job's Pods")?;
            let mut why = format!("Job {name}: {}", f.message.unwrap_or_default());
            if let Some(end) = pod {
                why.push_str(&format!(" ({})", end.message));
            }
            JobState::Failed(why)
        }
    })
}

/// The build result as the apiserver has it now (not the cache: a pinned
/// result is compared with the live object before anything is tested or
/// published).
async fn live_result(scope: &Scope, ns: &str, request: &str) -> Result<Option<Inventory>, Error> {
    let api: Api<Inventory> = Api::namespaced(scope.shared.client.clone(), ns);
    api.get_opt(&result_inventory_name(request))
        .await
        .step(super::Step::Dereference, "get build result Inventory")
}

/// Whether `inventory` may be taken as this request's result; with the
/// build Job's Pod's report (read only when the result would be pinned),
/// also whether it is what that Pod reported.
fn judge_result(
    inventory: &Inventory,
    request: &str,
    nonce_hash: Option<&str>,
    build_job_created: Option<Timestamp>,
    report: Option<Result<&BuildReport, &str>>,
) -> BuildOutput {
    let name = inventory.name_any();
    let subject = &inventory.spec.subject;
    if subject.kind != SubjectKind::ChangeRequest || subject.name != request {
        return BuildOutput::Invalid(format!(
            "Inventory {name}: spec.subject does not name this ChangeRequest"
        ));
    }
    let facts = ResultFacts {
        name: &name,
        created: inventory.metadata.creation_timestamp.as_ref().map(|t| t.0),
        nonce: inventory.spec.nonce.as_deref(),
        image: inventory.spec.image.as_deref(),
        generation: inventory.metadata.generation,
        packages: &inventory.spec.packages,
    };
    if let Err(why) = change::check_result(&facts, nonce_hash, build_job_created) {
        return BuildOutput::Invalid(why);
    }
    match report.map(|r| change::check_origin(&facts, r)) {
        Some(Err(why)) => BuildOutput::NotFromBuild(why),
        _ => BuildOutput::Valid,
    }
}

/// The pinned result against the Inventory now: the very object (uid) with
/// the very spec (generation, which the apiserver moves on every spec
/// change; the resourceVersion also moves when the controller writes the
/// Inventory's own status, which changes nothing that was built).
fn pin_state(pinned: Option<&BuildResult>, now: Option<&Inventory>) -> Pin {
    let Some(pinned) = pinned.filter(|p| p.uid.is_some()) else {
        return Pin::Unpinned;
    };
    match now {
        Some(i)
            if i.metadata.uid == pinned.uid
                && i.metadata.generation == pinned.generation
                && i.spec.image.as_deref() == Some(pinned.image.as_str()) =>
        {
            Pin::Intact
        }
        _ => Pin::Changed,
    }
}

/// Publication checks on a build result: coverage of the frozen scope, and
/// no finding the current revision lacks.
fn checks(
    scope: &Scope,
    t: &Template,
    ns: &str,
    frozen: Option<&ChangeScope>,
    result: &Inventory,
    now: Timestamp,
) -> Vec<String> {
    let Ok(platform) = parse_platform(&t.spec.platform) else {
        return vec!["spec.platform of the Template is invalid".into()];
    };
    // In the Template's family only: another family's lines would pass
    // another grammar and order versions by other rules.
    let format = result.spec.format.into();
    let packages = match parse_subject_list(Some(platform.family), format, &result.spec.packages) {
        Ok(p) => p,
        Err(e) => return vec![format!("Inventory {}: spec.{e}", result.name_any())],
    };
    let mut problems = Vec::new();
    if let Some(s) = frozen {
        let gaps = change::coverage_gaps(s, &packages, platform.family);
        if !gaps.is_empty() {
            problems.push(format!("it does not cover the scope: {}", gaps.join(", ")));
        }
    }
    let candidate = tpl::judge(scope, t, ns, Some(&packages), now).evaluation;
    let current = tpl::judge_current(scope, t, ns, now).judged.evaluation;
    if candidate.state == ComplianceState::Unknown {
        problems.push(format!(
            "its compliance cannot be told: {}",
            candidate.reason()
        ));
    }
    let worse = change::regressions(&current, &candidate);
    if !worse.is_empty() {
        problems.push(format!(
            "it has findings the current revision lacks: {}",
            worse.join(", ")
        ));
    }
    problems
}

/// The environment variable (and contract file `nonce`) holding the build
/// Job's nonce.
pub const NONCE_ENV: &str = "PATCHLOOP_NONCE";

/// Which Job of a request, with what only it receives.
#[derive(Debug, Clone, Copy)]
enum Run<'a> {
    /// The build, with the nonce its result must carry.
    Build { nonce: &'a str },
    /// The test, with the pinned image under test.
    Test { image: &'a str },
}

/// The environment and files a build or test Job of `cr` receives.
fn contract(
    cr: &ChangeRequest,
    t: &Template,
    status: &ChangeRequestStatus,
    job: &str,
    run: Run<'_>,
) -> jobs::Contract {
    let ns = cr.namespace().unwrap_or_default();
    let name = cr.name_any();
    let scope = status.scope.clone().unwrap_or_default();
    let packages = package_lines(
        scope
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.fixed.as_str(), p.source.as_deref())),
    );
    let advisories: Vec<&str> = scope.advisories.iter().map(|a| a.id.as_str()).collect();
    let base_image = status.base_image.clone().unwrap_or_else(|| tpl::image(t));
    let purpose = match run {
        Run::Test { .. } => jobs::Purpose::Test,
        Run::Build { .. } => jobs::Purpose::Build,
    };
    let revision = status.target_revision.map(|r| r.to_string());
    let contract = jobs::Contract::new(purpose, &ns, &t.spec.platform, job, &advisories, packages)
        .with_env("PATCHLOOP_TEMPLATE", t.name_any())
        .with_env("PATCHLOOP_CHANGE_REQUEST", name)
        .with_env("PATCHLOOP_BASE_IMAGE", base_image)
        .with_env("PATCHLOOP_REVISION", revision.unwrap_or_default());
    match run {
        Run::Test { image } => contract.with_env("PATCHLOOP_IMAGE", image),
        Run::Build { nonce } => contract
            .with_env(NONCE_ENV, nonce)
            .with_file("nonce", nonce),
    }
}

/// The Job template a run uses, the field it comes from, the Job's purpose
/// and its name's suffix.
fn job_kind<'t>(
    t: &'t Template,
    run: Run<'_>,
) -> (
    Option<&'t serde_json::Value>,
    &'static str,
    jobs::Purpose,
    &'static str,
) {
    match run {
        Run::Build { .. } => (
            t.spec.build_job_template.as_ref(),
            "Template spec.buildJobTemplate",
            jobs::Purpose::Build,
            "build",
        ),
        Run::Test { .. } => (
            t.spec.test_job_template.as_ref(),
            "Template spec.testJobTemplate",
            jobs::Purpose::Test,
            "test",
        ),
    }
}

/// Creates the build or test Job (an existing one is left as it is); an
/// unusable template is the request's failure, returned as a sentence.
async fn create_job(
    scope: &Scope,
    cr: &ChangeRequest,
    t: &Template,
    status: &ChangeRequestStatus,
    run: Run<'_>,
) -> Result<Result<(jobs::Created, Option<String>), String>, Error> {
    let (template, field, purpose, suffix) = job_kind(t, run);
    let Some(template) = template else {
        return Ok(Err(format!("{field}: missing")));
    };
    let ns = cr.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = cr.name_any();
    let owner = cr
        .controller_owner_ref(&())
        .ok_or(Error::Missing("metadata.uid"))?;
    let deadline = template
        .pointer("/spec/activeDeadlineSeconds")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(DEFAULT_JOB_DEADLINE);
    let job_name = jobs::job_name(&name, suffix);
    let c = contract(cr, t, status, &job_name, run);
    let request = jobs::JobRequest {
        template,
        template_field: field,
        name: job_name,
        namespace: &ns,
        labels: BTreeMap::from([
            (TEMPLATE_LABEL.to_owned(), jobs::label_value(&t.name_any())),
            (CHANGE_REQUEST_LABEL.to_owned(), jobs::label_value(&name)),
        ]),
        purpose,
        owner,
        deadline_seconds: deadline,
        env: c.env,
        files: c.files,
    };
    let job = match jobs::build(&request) {
        Ok(job) => job,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let (created, uid) = match jobs::create_with_uid(&scope.shared.client, &job).await {
        Ok(created) => created,
        // The apiserver refuses the Job (an invalid pod spec): the
        // template's fault, not a transient error.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            return Ok(Err(format!("{field}: {}", s.message)));
        }
        Err(e) => return Err(e.into()),
    };
    if matches!(created, jobs::Created::New) {
        scope.shared.metrics.job_created(purpose);
        tracing::info!(change_request = %name, job = %job.metadata.name.clone().unwrap_or_default(), "{} Job created", purpose.as_str());
    }
    failpoint::exit_if(match run {
        Run::Build { .. } => failpoint::EXIT_AFTER_BUILD_JOB_CREATE,
        Run::Test { .. } => failpoint::EXIT_AFTER_TEST_JOB_CREATE,
    });
    Ok(Ok((created, uid)))
}

/// Writes the new revision to the Template's status under this
/// reconciler's field manager: `revision`, `image` and `history` only, with
/// the read resourceVersion as a precondition. `false`: the Template
/// changed meanwhile; look again.
async fn publish(
    scope: &Scope,
    t: &Template,
    cr_name: &str,
    pinned: &BuildResult,
    now: Timestamp,
) -> Result<bool, Error> {
    let ns = t.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let rev = tpl::revision(t);
    let mut history = t
        .status
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    if history.is_empty() {
        // The first revision, as it was.
        history.push(TemplateRevision {
            revision: rev,
            image: tpl::image(t),
            inventory: tpl::revision_inventory(scope, t, &ns, rev).map(|i| i.name_any()),
            published_at: None,
            change_request: None,
        });
    }
    let image = pinned.image.clone();
    history.push(TemplateRevision {
        revision: rev + 1,
        image: image.clone(),
        inventory: Some(pinned.inventory.clone()),
        published_at: Some(time(now)),
        change_request: Some(cr_name.to_owned()),
    });
    let patch = serde_json::json!({
        "apiVersion": Template::api_version(&()),
        "kind": Template::kind(&()),
        "metadata": {"resourceVersion": t.resource_version()},
        "status": {"revision": rev + 1, "image": image, "history": history},
    });
    let api: Api<Template> = Api::namespaced(scope.shared.client.clone(), &ns);
    match api
        .patch_status(
            &t.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => {
            scope.shared.metrics.status_write("change");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Applies ChangeRequest status with the read resourceVersion as a
/// precondition: `false` when the object changed since (a stale cache).
async fn write(
    scope: &Scope,
    cr: &ChangeRequest,
    previous: &ChangeRequestStatus,
    status: &ChangeRequestStatus,
) -> Result<bool, Error> {
    let ns = cr.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let api: Api<ChangeRequest> = Api::namespaced(scope.shared.client.clone(), &ns);
    super::write_status(
        &scope.shared,
        &api,
        &cr.name_any(),
        "change",
        MANAGER,
        status,
        previous,
        cr.resource_version(),
    )
    .await
}

fn set_stamp(ts: &mut PhaseTimestamps, phase: Phase, at: Time) {
    let slot = match phase {
        Phase::AwaitingApproval => &mut ts.awaiting_approval,
        Phase::Approved => &mut ts.approved,
        Phase::Building => &mut ts.building,
        Phase::Testing => &mut ts.testing,
        Phase::Published => &mut ts.published,
        Phase::Rejected => &mut ts.rejected,
        Phase::Failed => &mut ts.failed,
        Phase::Obsolete => &mut ts.obsolete,
    };
    if slot.is_none() {
        *slot = Some(at);
    }
}

/// The failpoint after the status write of `step`, in the build/test/publish
/// sequence.
fn written_failpoint(from: Option<Phase>, step: &change::Step) -> Option<&'static str> {
    match (step.phase, step.act) {
        (Phase::Approved, _) if from != Some(Phase::Approved) => {
            Some(failpoint::EXIT_AFTER_APPROVED_STATUS)
        }
        (Phase::Building, Act::Build) => Some(failpoint::EXIT_AFTER_BUILDING_STATUS),
        (Phase::Building, Act::Pin) => Some(failpoint::EXIT_AFTER_RESULT_PIN),
        (Phase::Testing, Act::Test) => Some(failpoint::EXIT_AFTER_TESTING_STATUS),
        _ => None,
    }
}

/// Soon, when a retry is due (a stale cache, a Template changing meanwhile).
const SOON: std::time::Duration = std::time::Duration::from_secs(1);

/// [`SOON`] from `now`, as a wake time.
fn soon(now: Timestamp) -> Timestamp {
    now.checked_add(SOON).unwrap_or(now)
}

async fn reconcile_inner(cr: Arc<ChangeRequest>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    let max_requeue = scope.shared.settings.max_requeue;
    let ns = cr.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let now = now();
    let previous = cr.status.clone().unwrap_or_default();
    let idle = Action::requeue(max_requeue);
    if cr.status.is_none() {
        triggers::inventories_of(scope, &ns, SubjectKind::ChangeRequest, &cr.name_any());
    }
    if is_closed(previous.phase) {
        let written = observe_closed(scope, &cr, &previous).await?;
        return Ok(if written { idle } else { Action::requeue(SOON) });
    }
    let (template, seen) = bound_template(scope, &cr, &ns, &previous);
    // Until the platform's advisory data has loaded (start-up), neither the
    // scope nor the publication checks can be decided; a feed load wakes the
    // Template, which wakes its open request.
    if let Some(t) = &template
        && let Some(until) = dereference::advisories_loading(scope, &t.spec.platform, now)
    {
        return Ok(Action::requeue(requeue_at(Some(until), now, max_requeue)));
    }
    let facts = dereference(scope, &cr, ns, previous, (template, seen), now).await?;
    let Some(mut decision) = decide(&cr, &facts) else {
        return Ok(idle);
    };
    if !apply(scope, &cr, &facts, &mut decision).await? {
        return Ok(Action::requeue(SOON));
    }
    let Decision { step, status } = decision;
    let status = settle(status, &step, cr.metadata.generation, &facts.jobs, now);
    if !update_status(scope, &cr, &facts.previous, &status, &step).await? {
        return Ok(Action::requeue(SOON));
    }
    if is_closed(Some(step.phase)) {
        return Ok(idle);
    }
    let next = [facts.needs.wake, step.wake].into_iter().flatten().min();
    Ok(Action::requeue(requeue_at(next, now, max_requeue)))
}

/// A closed request takes no more changes, but kstatus (Argo CD, Flux)
/// reads a spec edit as in progress until observedGeneration says the
/// controller has seen it. `false`: the request changed since it was read.
async fn observe_closed(
    scope: &Scope,
    cr: &ChangeRequest,
    previous: &ChangeRequestStatus,
) -> Result<bool, Error> {
    if previous.observed_generation == cr.metadata.generation {
        return Ok(true);
    }
    let mut status = previous.clone();
    status.observed_generation = cr.metadata.generation;
    for c in &mut status.conditions {
        c.observed_generation = cr.metadata.generation;
    }
    write(scope, cr, previous, &status).await
}

/// The Template by name, which counts only while it is the one this
/// request recorded (uid): a repointed `spec.template`, or a recreated
/// namesake, is not this request's to build for, judge or publish to.
fn bound_template(
    scope: &Scope,
    cr: &ChangeRequest,
    ns: &str,
    previous: &ChangeRequestStatus,
) -> (Option<Arc<Template>>, TemplateSeen) {
    let found = scope
        .templates
        .get(&ObjectRef::new(&cr.spec.template).within(ns));
    let seen = change::template_seen(
        previous.template_uid.as_deref(),
        found.as_ref().map(|t| t.metadata.uid.as_deref()),
    );
    (found.filter(|_| seen == TemplateSeen::Bound), seen)
}

/// What one pass over an open request read.
struct Facts {
    ns: String,
    name: String,
    uid: String,
    now: Timestamp,
    /// The status as read.
    previous: ChangeRequestStatus,
    /// The Template, only while it is the one the request was opened for.
    template: Option<Arc<Template>>,
    seen: TemplateSeen,
    /// The Template's published revision now.
    revision: i64,
    /// The Template's history already names this request.
    published: bool,
    needs: Needs,
    jobs: BuildJobs,
    result: ResultSeen,
}

/// What the Template needs now (before the build only: then it freezes).
struct Needs {
    /// The image the build starts from.
    base_image: String,
    /// The scope in force; `None`: nothing left to install.
    scope: Option<ChangeScope>,
    /// A scoped finding is an emergency.
    emergency: bool,
    /// The policy driving the Template and its approval rule.
    rule: Option<(String, TemplateApproval)>,
    /// When the findings change next.
    wake: Option<Timestamp>,
    /// Once the build started, the Template's build inputs are no longer
    /// the approved ones.
    inputs_changed: bool,
}

/// The build and test Jobs under the request's Job names.
struct BuildJobs {
    build_name: String,
    test_name: String,
    /// The Job under the build Job's name, as the cache has it.
    cached: Option<Arc<Job>>,
    /// That Job, when its uid is the one the request recorded.
    recorded: Option<Arc<Job>>,
    /// When that Job was created, when it is not the recorded one.
    unrecorded: Option<Timestamp>,
    build: JobState,
    test: JobState,
}

/// The build result Inventory and what is known of it.
struct ResultSeen {
    /// Read live once the build succeeded (to pin it) and while testing
    /// (to check the pin).
    inventory: Option<Inventory>,
    output: BuildOutput,
    pin: Pin,
    /// The publication checks, once the test succeeded on the pinned result.
    checks: Option<Vec<String>>,
}

/// Reads what the next step depends on.
async fn dereference(
    scope: &Scope,
    cr: &ChangeRequest,
    ns: String,
    previous: ChangeRequestStatus,
    (template, seen): (Option<Arc<Template>>, TemplateSeen),
    now: Timestamp,
) -> Result<Facts, Error> {
    let name = cr.name_any();
    let uid = cr.uid().ok_or(Error::Missing("metadata.uid"))?;
    let needs = needs(scope, &ns, template.as_deref(), &previous, now);
    let jobs = build_jobs(scope, &ns, &name, &previous).await?;
    let t = template.as_deref();
    let result = result_seen(scope, t, (&ns, &name), &previous, &jobs, now).await?;
    let published = t.and_then(|t| t.status.as_ref()).is_some_and(|s| {
        s.history
            .iter()
            .any(|h| h.change_request.as_deref() == Some(&name))
    });
    Ok(Facts {
        revision: t.map_or(0, tpl::revision),
        published,
        ns,
        name,
        uid,
        now,
        previous,
        template,
        seen,
        needs,
        jobs,
        result,
    })
}

/// What the Template needs now: the scope moves until the build starts,
/// then freezes.
fn needs(
    scope: &Scope,
    ns: &str,
    template: Option<&Template>,
    previous: &ChangeRequestStatus,
    now: Timestamp,
) -> Needs {
    let before = before_build(previous.phase);
    let base_image = template.map(tpl::image).unwrap_or_default();
    let inputs = template.map(|t| tpl::build_inputs(t, &base_image));
    let mut needs = Needs {
        base_image: String::new(),
        scope: previous.scope.clone(),
        emergency: false,
        rule: None,
        wake: None,
        // Once the build started, the Template must still be what was
        // approved.
        inputs_changed: !before
            && inputs.as_ref().is_some_and(|i| {
                previous
                    .scope
                    .as_ref()
                    .is_none_or(|s| s.build_inputs_digest != i.digest())
            }),
    };
    if before && let (Some(t), Some(inputs)) = (template, &inputs) {
        let Current { judged, family, .. } = tpl::judge_current(scope, t, ns, now);
        needs.rule = judged.approval_rule();
        needs.wake = judged.evaluation.next_change;
        // Unknown keeps the last findings (no data is not "fixed another
        // way"), bound to the Template as it is now.
        needs.scope = needs.scope.map(|s| change::rebind(&s, inputs));
        if judged.evaluation.state != ComplianceState::Unknown {
            let computed = family.and_then(|f| change::scope(&judged.evaluation, f, inputs));
            needs.emergency = computed.as_ref().is_some_and(|(_, e)| *e);
            needs.scope = computed.map(|(s, _)| s);
        }
    }
    needs.base_image = base_image;
    needs
}

/// When `job`, found under the build Job's name, was created, unless it is
/// the Job whose uid the request recorded when it created it: only that
/// one is its build Job; any other is deleted, never adopted.
fn unrecorded_since(job: &Job, recorded_uid: Option<&str>) -> Option<Timestamp> {
    let recorded = job.metadata.uid.is_some() && job.metadata.uid.as_deref() == recorded_uid;
    (!recorded).then(|| {
        job.metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
    })
}

/// The build Job (the recorded one, while Building) and the test Job
/// (while Testing).
async fn build_jobs(
    scope: &Scope,
    ns: &str,
    name: &str,
    previous: &ChangeRequestStatus,
) -> Result<BuildJobs, Error> {
    let build_name = jobs::job_name(name, "build");
    let test_name = jobs::job_name(name, "test");
    let cached = scope
        .jobs
        .get(&ObjectRef::<Job>::new(&build_name).within(ns));
    let unrecorded = cached
        .as_deref()
        .and_then(|j| unrecorded_since(j, previous.build_job_uid.as_deref()));
    let recorded = cached.clone().filter(|_| unrecorded.is_none());
    let build = match (&recorded, previous.phase) {
        (Some(_), Some(Phase::Building)) => job_state(scope, ns, &build_name).await?,
        _ => JobState::Absent,
    };
    let test = if matches!(previous.phase, Some(Phase::Testing)) {
        job_state(scope, ns, &test_name).await?
    } else {
        JobState::Absent
    };
    Ok(BuildJobs {
        build_name,
        test_name,
        cached,
        recorded,
        unrecorded,
        build,
        test,
    })
}

/// The build result, live, with the pin against it, the judgement of it
/// and, once the test succeeded, the publication checks.
async fn result_seen(
    scope: &Scope,
    template: Option<&Template>,
    (ns, name): (&str, &str),
    previous: &ChangeRequestStatus,
    jobs: &BuildJobs,
    now: Timestamp,
) -> Result<ResultSeen, Error> {
    let phase = previous.phase;
    let inventory = match (phase, &jobs.build) {
        (Some(Phase::Building), JobState::Succeeded(_)) | (Some(Phase::Testing), _) => {
            live_result(scope, ns, name).await?
        }
        _ => None,
    };
    let pin = pin_state(previous.result.as_ref(), inventory.as_ref());
    // About to be pinned: what the build Job's own Pod reported it built
    // (its termination message), which the result must be.
    let report = match (&jobs.recorded, &jobs.build, &pin, &inventory) {
        (Some(job), JobState::Succeeded(_), Pin::Unpinned, Some(_)) => {
            let messages = jobs::succeeded_pod(&scope.shared.client, job)
                .await
                .step(super::Step::Dereference, "list the build Job's Pods")?;
            Some(change::build_report(messages.as_deref()))
        }
        _ => None,
    };
    let build_created = jobs
        .recorded
        .as_ref()
        .and_then(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let output = match &inventory {
        Some(r) => judge_result(
            r,
            name,
            previous.nonce_hash.as_deref(),
            build_created,
            report.as_ref().map(|r| r.as_ref().map_err(|why| *why)),
        ),
        None => BuildOutput::Absent,
    };
    let checks = match (template, &inventory, &jobs.test, &pin) {
        (Some(t), Some(r), JobState::Succeeded(_), Pin::Intact)
            if phase == Some(Phase::Testing) =>
        {
            Some(checks(scope, t, ns, previous.scope.as_ref(), r, now))
        }
        _ => None,
    };
    Ok(ResultSeen {
        inventory,
        output,
        pin,
        checks,
    })
}

/// One pass's decision: the engine's step and the status it records (the
/// Job it starts reads it: scope, target revision).
#[derive(Debug)]
struct Decision {
    step: Step,
    status: ChangeRequestStatus,
}

/// The engine's next step on what was read, and the status it records
/// before its action; `None`: the request is closed.
fn decide(cr: &ChangeRequest, f: &Facts) -> Option<Decision> {
    let person = PersonDecision {
        decision: cr.spec.decision.as_ref(),
        request_uid: &f.uid,
        voided: f
            .previous
            .decision_voided
            .as_ref()
            .filter(|v| change::void_holds(v, cr.spec.decision.as_ref(), cr.metadata.generation))
            .map(|v| v.reason.as_str()),
        decided_scope: f.previous.scope.as_ref(),
    };
    let approval = match &f.needs.scope {
        Some(s) => change::approval(
            f.needs.rule.as_ref().map(|(_, r)| *r),
            f.needs.emergency,
            &person,
            s,
        ),
        None => Approval::Awaiting(String::new()),
    };
    let observed = Observed {
        phase: f.previous.phase,
        template: f.seen,
        published: f.published,
        revision: (f.revision, f.previous.base_revision),
        needed: f.needs.scope.as_ref(),
        approval: &approval,
        build: &f.jobs.build,
        build_unrecorded: f.jobs.unrecorded,
        output: &f.result.output,
        pin: f.result.pin.clone(),
        inputs_changed: f.needs.inputs_changed,
        test: &f.jobs.test,
        checks: f.result.checks.as_deref(),
        now: f.now,
    };
    let step = change::next(&observed)?;
    tracing::debug!(
        from = ?f.previous.phase,
        to = ?step.phase,
        act = ?step.act,
        build = ?f.jobs.build,
        test = ?f.jobs.test,
        output = ?f.result.output,
        pin = ?f.result.pin,
        "change step"
    );
    let status = recorded_status(cr, f, &person, &approval);
    Some(Decision { step, status })
}

/// The status a step records before its action: the Template's uid, and,
/// before the build, the scope, the policy, the revisions, the base image,
/// the approval and a decision the scope moved away from.
fn recorded_status(
    cr: &ChangeRequest,
    f: &Facts,
    person: &PersonDecision<'_>,
    approval: &Approval,
) -> ChangeRequestStatus {
    let mut status = f.previous.clone();
    status.observed_generation = cr.metadata.generation;
    if status.template_uid.is_none() {
        status.template_uid = f.template.as_ref().and_then(|t| t.uid());
    }
    let Some(t) = f
        .template
        .as_ref()
        .filter(|_| before_build(f.previous.phase))
    else {
        return status;
    };
    if let (Some(s), Some(d)) = (&f.needs.scope, &cr.spec.decision)
        && let Some(changed) = person.voids(s)
    {
        status.decision_voided = Some(VoidedDecision {
            generation: cr.metadata.generation,
            digest: Some(d.digest.clone()),
            decided_at: d.decided_at.clone(),
            field_managers: decision_managers(cr),
            reason: changed.to_owned(),
        });
    }
    status.scope = f.needs.scope.clone();
    status.policy = f.needs.rule.as_ref().map(|(p, _)| p.clone());
    status.base_revision = Some(f.revision);
    status.base_image = Some(f.needs.base_image.clone());
    status.template_generation = t.metadata.generation;
    status.target_revision = Some(f.revision + 1);
    status.approval = approval_record(
        approval,
        f.needs.scope.as_ref(),
        f.previous.approval.as_ref(),
        cr,
        f.needs.rule.as_ref(),
        f.now,
    );
    status
}

/// The approval record for the scope in force: who approved (a person
/// through `spec.decision`, or the policy's rule), under which field
/// manager, since when (an approval of the same scope keeps its instant);
/// a person's rejection; `None` while awaiting.
fn approval_record(
    approval: &Approval,
    scope: Option<&ChangeScope>,
    previous: Option<&ApprovalRecord>,
    cr: &ChangeRequest,
    rule: Option<&(String, TemplateApproval)>,
    now: Timestamp,
) -> Option<ApprovalRecord> {
    let scope = scope?;
    let decided_reason = || cr.spec.decision.as_ref().and_then(|d| d.reason.clone());
    let (verdict, by, field_manager, reason) = match approval {
        Approval::Approved(Approver::Person) => (
            Verdict::Approved,
            "Person",
            decision_manager(cr),
            decided_reason(),
        ),
        Approval::Approved(Approver::Policy) => (
            Verdict::Approved,
            "Policy",
            rule.map(|(p, _)| format!("PatchPolicy/{p}")),
            Some(format!(
                "templates.approval: {:?}",
                rule.map(|(_, r)| *r).unwrap_or_default()
            )),
        ),
        Approval::Rejected => (
            Verdict::Rejected,
            "Person",
            decision_manager(cr),
            decided_reason(),
        ),
        Approval::Awaiting(_) => return None,
    };
    let same = previous.filter(|a| {
        verdict == Verdict::Approved
            && a.verdict == Verdict::Approved
            && a.digest.as_deref() == Some(scope.digest.as_str())
    });
    Some(ApprovalRecord {
        verdict,
        by: by.into(),
        field_manager,
        digest: Some(scope.digest.clone()),
        reason,
        effective_at: same.map_or_else(|| time(now), |a| a.effective_at.clone()),
        consumed_by: None,
    })
}

/// Carries out the step's action. The step stays the engine's: after a Job
/// create, [`change::created`] decides it from what the create found.
/// `false`: something changed meanwhile; look again soon.
async fn apply(
    scope: &Scope,
    cr: &ChangeRequest,
    f: &Facts,
    d: &mut Decision,
) -> Result<bool, Error> {
    // The Job under the build Job's name that a discard deletes.
    let discard = match d.step.act {
        Act::Nothing => None,
        Act::DiscardBuild => f.jobs.cached.as_ref().and_then(|j| j.metadata.uid.clone()),
        Act::Build => {
            let Some(t) = &f.template else {
                return Ok(false);
            };
            start_build(scope, cr, t, f, d).await?
        }
        Act::Pin => {
            if let Some(r) = &f.result.inventory {
                d.status.result = Some(pinned(r));
            }
            None
        }
        Act::Test => {
            let (Some(t), Some(pinned)) = (&f.template, &f.previous.result) else {
                return Ok(false);
            };
            let run = Run::Test {
                image: &pinned.image,
            };
            let outcome = create_job(scope, cr, t, &d.status, run).await?;
            let creation = found(outcome, |_| Creation::Adopted);
            d.step = change::created(f.previous.phase, d.step.clone(), creation, f.now);
            None
        }
        Act::Publish => {
            let (Some(t), Some(pinned)) = (&f.template, &f.previous.result) else {
                return Ok(false);
            };
            if !publish(scope, t, &f.name, pinned, f.now).await? {
                return Ok(false);
            }
            failpoint::exit_if(failpoint::EXIT_AFTER_PUBLISH);
            None
        }
    };
    if d.step.act == Act::DiscardBuild {
        if let Some(job_uid) = discard {
            let build_name = &f.jobs.build_name;
            jobs::delete_uid(&scope.shared.client, &f.ns, build_name, &job_uid)
                .await
                .step(super::Step::Apply, "delete unrecorded build Job")?;
            tracing::warn!(change_request = %f.name, job = %build_name, uid = %job_uid, "build Job not recorded by the request deleted");
        }
        // The next pass creates a fresh one (or waits for approval).
        d.step.wake = Some(soon(f.now));
    }
    Ok(true)
}

/// Creates the build Job with a fresh nonce (the recorded Job, the cache
/// lagging its create, keeps the one it was given), records a new Job's
/// uid and the nonce's hash, and consumes the approval. Returns the uid of
/// a Job found under the name that the request did not record.
async fn start_build(
    scope: &Scope,
    cr: &ChangeRequest,
    t: &Template,
    f: &Facts,
    d: &mut Decision,
) -> Result<Option<String>, Error> {
    let fresh = nonce(&f.uid);
    let outcome = create_job(scope, cr, t, &d.status, Run::Build { nonce: &fresh }).await?;
    let mut unrecorded_uid = None;
    if let Ok((jobs::Created::New, job_uid)) = &outcome {
        d.status.nonce_hash = Some(change::nonce_hash(&fresh));
        d.status.build_job_uid.clone_from(job_uid);
    }
    // Not the recorded Job, and not in the cache (it may lag, and it holds
    // only Jobs labelled as Patchloop's): never adopted.
    let recorded_uid = f.previous.build_job_uid.as_deref();
    let creation = found(outcome, |job| match unrecorded_since(job, recorded_uid) {
        Some(at) => {
            unrecorded_uid.clone_from(&job.metadata.uid);
            Creation::Unrecorded(at)
        }
        None => Creation::Adopted,
    });
    d.step = change::created(f.previous.phase, d.step.clone(), creation, f.now);
    if d.step.phase == Phase::Building
        && d.step.act == Act::Build
        && let Some(a) = d.status.approval.as_mut()
    {
        a.consumed_by = Some(f.jobs.build_name.clone());
    }
    Ok(unrecorded_uid)
}

/// What creating a Job found, for the engine; `existing` tells what a Job
/// this request controls, found under the name, is.
fn found(
    outcome: Result<(jobs::Created, Option<String>), String>,
    existing: impl FnOnce(&Job) -> Creation,
) -> Creation {
    match outcome {
        Ok((jobs::Created::New, _)) => Creation::New,
        Ok((jobs::Created::Existed(job), _)) => existing(&job),
        Ok((jobs::Created::Taken(taken), _)) => Creation::Taken(taken.to_string()),
        Err(why) => Creation::Invalid(why),
    }
}

/// The build result as status pins it.
fn pinned(r: &Inventory) -> BuildResult {
    BuildResult {
        image: r.spec.image.clone().unwrap_or_default(),
        inventory: r.name_any(),
        uid: r.metadata.uid.clone(),
        resource_version: r.metadata.resource_version.clone(),
        generation: r.metadata.generation,
    }
}

/// The status once `step` is taken: its phase and message, the Jobs it
/// started, the phase's first instant and the conditions.
fn settle(
    mut status: ChangeRequestStatus,
    step: &Step,
    generation: Option<i64>,
    jobs: &BuildJobs,
    now: Timestamp,
) -> ChangeRequestStatus {
    status.phase = Some(step.phase);
    status.message = Some(step.message.clone());
    if matches!(
        step.phase,
        Phase::Building | Phase::Testing | Phase::Published
    ) {
        status.build_job = Some(jobs.build_name.clone());
    }
    if matches!(step.phase, Phase::Testing | Phase::Published) {
        status.test_job = Some(jobs.test_name.clone());
    }
    let mut stamps = status.timestamps.take().unwrap_or_default();
    set_stamp(&mut stamps, step.phase, time(now));
    if step.phase == Phase::Building {
        set_stamp(&mut stamps, Phase::Approved, time(now));
    }
    status.timestamps = Some(stamps);
    let desired = desired_conditions(step, status.approval.as_ref(), status.scope.as_ref());
    (status.conditions, _) =
        conditions::merge(&status.conditions, &desired, generation, &time(now));
    status
}

/// The Ready and Approved conditions after `step`.
fn desired_conditions(
    step: &Step,
    approval: Option<&ApprovalRecord>,
    scope: Option<&ChangeScope>,
) -> [DesiredCondition; 2] {
    let ready = DesiredCondition::new(
        types::READY,
        ConditionStatus::True,
        step.reason,
        step.message.clone(),
    );
    let approved = match approval.filter(|a| a.verdict == Verdict::Approved) {
        Some(a) => DesiredCondition::new(
            types::APPROVED,
            ConditionStatus::True,
            if a.by == "Policy" {
                "ApprovedByPolicy"
            } else {
                "ApprovedByPerson"
            },
            format!(
                "approved for scope {}",
                scope.map_or("", |s| change::short(&s.digest))
            ),
        ),
        None => DesiredCondition::new(
            types::APPROVED,
            ConditionStatus::False,
            if step.phase == Phase::Rejected {
                "Rejected"
            } else {
                "AwaitingApproval"
            },
            step.message.clone(),
        ),
    };
    [ready, approved]
}

/// Writes the status when it changed; on a new phase, the Event and the
/// Template's wake. `false`: the request changed since it was read.
async fn update_status(
    scope: &Arc<Scope>,
    cr: &Arc<ChangeRequest>,
    previous: &ChangeRequestStatus,
    status: &ChangeRequestStatus,
    step: &Step,
) -> Result<bool, Error> {
    if status == previous {
        return Ok(true);
    }
    if !write(scope, cr, previous, status).await? {
        return Ok(false);
    }
    if let Some(point) = written_failpoint(previous.phase, step) {
        failpoint::exit_if(point);
    }
    if previous.phase != Some(step.phase) {
        let warning = matches!(step.phase, Phase::Failed | Phase::Rejected);
        scope
            .shared
            .event(cr.as_ref(), warning, step.reason, step.message.clone())
            .await;
        // The Template shows the open request (or none), as read from the
        // request cache.
        triggers::request_moved(scope, cr, step.phase);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::change_request::{ChangeRequestSpec, Decision as SpecDecision};
    use crate::api::template::TemplateSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("timestamp")
    }

    /// A request with a person's decision on [`DIGEST`], written by
    /// `alice`.
    fn request(verdict: Verdict) -> ChangeRequest {
        let mut cr = ChangeRequest::new(
            "web-1",
            ChangeRequestSpec {
                template: "web".into(),
                decision: Some(SpecDecision {
                    verdict,
                    digest: DIGEST.into(),
                    request_uid: Some("cr-uid".into()),
                    decided_at: Some(time(at(100))),
                    reason: Some("change window".into()),
                }),
            },
        );
        cr.metadata.namespace = Some("apps".into());
        cr.metadata.uid = Some("cr-uid".into());
        cr.metadata.generation = Some(2);
        cr.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("alice".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:decision": {}}}))),
            ..ManagedFieldsEntry::default()
        }]);
        cr
    }

    fn scope_on(digest: &str) -> ChangeScope {
        ChangeScope {
            digest: digest.into(),
            ..ChangeScope::default()
        }
    }

    #[test]
    fn a_persons_approval_names_their_field_manager_and_reason() {
        let cr = request(Verdict::Approved);
        let scope = scope_on(DIGEST);
        let approved = Approval::Approved(Approver::Person);
        let record =
            approval_record(&approved, Some(&scope), None, &cr, None, at(200)).expect("record");
        assert_eq!(
            record,
            ApprovalRecord {
                verdict: Verdict::Approved,
                by: "Person".into(),
                field_manager: Some("alice".into()),
                digest: Some(DIGEST.into()),
                reason: Some("change window".into()),
                effective_at: time(at(200)),
                consumed_by: None,
            }
        );
        // The same approval of the same scope keeps its instant; of another
        // scope it starts now.
        let again = approval_record(&approved, Some(&scope), Some(&record), &cr, None, at(300))
            .expect("record");
        assert_eq!(again.effective_at, time(at(200)));
        let other = scope_on("sha256:other");
        let moved = approval_record(&approved, Some(&other), Some(&record), &cr, None, at(300))
            .expect("record");
        assert_eq!(moved.effective_at, time(at(300)));
    }

    #[test]
    fn a_policys_approval_names_the_policy_and_its_rule() {
        let cr = request(Verdict::Approved);
        let scope = scope_on(DIGEST);
        let rule = (
            "nightly".to_owned(),
            TemplateApproval::AutomaticForEmergency,
        );
        let record = approval_record(
            &Approval::Approved(Approver::Policy),
            Some(&scope),
            None,
            &cr,
            Some(&rule),
            at(200),
        )
        .expect("record");
        assert_eq!(
            (
                record.by.as_str(),
                record.field_manager.as_deref(),
                record.reason.as_deref()
            ),
            (
                "Policy",
                Some("PatchPolicy/nightly"),
                Some("templates.approval: AutomaticForEmergency")
            )
        );
    }

    #[test]
    fn a_rejection_is_recorded_and_awaiting_records_nothing() {
        let cr = request(Verdict::Rejected);
        let scope = scope_on(DIGEST);
        let approved_before = approval_record(
            &Approval::Approved(Approver::Person),
            Some(&scope),
            None,
            &cr,
            None,
            at(100),
        );
        let record = approval_record(
            &Approval::Rejected,
            Some(&scope),
            approved_before.as_ref(),
            &cr,
            None,
            at(200),
        )
        .expect("record");
        assert_eq!(
            (
                record.verdict,
                record.by.as_str(),
                record.field_manager.as_deref(),
                record.effective_at.clone()
            ),
            (Verdict::Rejected, "Person", Some("alice"), time(at(200)))
        );
        let waiting = Approval::Awaiting("waiting".into());
        assert_eq!(
            approval_record(&waiting, Some(&scope), None, &cr, None, at(200)),
            None
        );
        // No scope in force: nothing to approve.
        let approved = Approval::Approved(Approver::Person);
        assert_eq!(
            approval_record(&approved, None, None, &cr, None, at(200)),
            None
        );
    }

    fn step_of(phase: Phase, reason: &'static str, message: &str) -> Step {
        Step {
            phase,
            reason,
            message: message.into(),
            act: Act::Nothing,
            wake: None,
        }
    }

    fn shown(c: &DesiredCondition) -> (&str, ConditionStatus, &str, &str) {
        (c.type_, c.status, c.reason.as_str(), c.message.as_str())
    }

    #[test]
    fn conditions_say_who_approved_or_why_not() {
        let building = step_of(Phase::Building, "Building", "the build Job runs");
        let scope = scope_on(DIGEST);
        let mut record = ApprovalRecord {
            verdict: Verdict::Approved,
            by: "Policy".into(),
            field_manager: None,
            digest: Some(DIGEST.into()),
            reason: None,
            effective_at: time(at(0)),
            consumed_by: None,
        };
        let [ready, approved] = desired_conditions(&building, Some(&record), Some(&scope));
        assert_eq!(
            shown(&ready),
            (
                types::READY,
                ConditionStatus::True,
                "Building",
                "the build Job runs"
            )
        );
        let message = format!("approved for scope {}", change::short(DIGEST));
        assert_eq!(
            shown(&approved),
            (
                types::APPROVED,
                ConditionStatus::True,
                "ApprovedByPolicy",
                message.as_str()
            )
        );
        record.by = "Person".into();
        let [_, approved] = desired_conditions(&building, Some(&record), Some(&scope));
        assert_eq!(approved.reason, "ApprovedByPerson");

        let rejected = step_of(Phase::Rejected, "Rejected", "rejected");
        record.verdict = Verdict::Rejected;
        let [_, approved] = desired_conditions(&rejected, Some(&record), Some(&scope));
        assert_eq!(
            shown(&approved),
            (
                types::APPROVED,
                ConditionStatus::False,
                "Rejected",
                "rejected"
            )
        );
        let waiting = step_of(Phase::AwaitingApproval, "AwaitingApproval", "waiting");
        let [_, approved] = desired_conditions(&waiting, None, Some(&scope));
        assert_eq!(
            shown(&approved),
            (
                types::APPROVED,
                ConditionStatus::False,
                "AwaitingApproval",
                "waiting"
            )
        );
    }

    fn no_jobs() -> BuildJobs {
        BuildJobs {
            build_name: jobs::job_name("web-1", "build"),
            test_name: jobs::job_name("web-1", "test"),
            cached: None,
            recorded: None,
            unrecorded: None,
            build: JobState::Absent,
            test: JobState::Absent,
        }
    }

    #[test]
    fn a_settled_status_names_the_jobs_started_and_stamps_the_phase_once() {
        let jobs = no_jobs();
        let building = step_of(Phase::Building, "Building", "the build Job runs");
        let status = settle(
            ChangeRequestStatus::default(),
            &building,
            Some(2),
            &jobs,
            at(10),
        );
        assert_eq!(status.phase, Some(Phase::Building));
        assert_eq!(status.build_job.as_deref(), Some(jobs.build_name.as_str()));
        assert_eq!(status.test_job, None);
        let stamps = status.timestamps.clone().expect("stamps");
        assert_eq!(
            (stamps.building, stamps.approved),
            (Some(time(at(10))), Some(time(at(10))))
        );
        assert_eq!(status.conditions.len(), 2);
        let testing = step_of(Phase::Testing, "Testing", "the test Job runs");
        let status = settle(status, &testing, Some(2), &jobs, at(20));
        let stamps = status.timestamps.clone().expect("stamps");
        assert_eq!(
            (stamps.building, stamps.testing),
            (Some(time(at(10))), Some(time(at(20))))
        );
        assert_eq!(status.test_job.as_deref(), Some(jobs.test_name.as_str()));
    }

    #[test]
    fn only_the_recorded_build_job_is_not_unrecorded() {
        let mut job = Job::default();
        job.metadata.creation_timestamp = Some(time(at(50)));
        assert_eq!(unrecorded_since(&job, None), Some(at(50)));
        job.metadata.uid = Some("job-uid".into());
        assert_eq!(unrecorded_since(&job, None), Some(at(50)));
        assert_eq!(unrecorded_since(&job, Some("other")), Some(at(50)));
        assert_eq!(unrecorded_since(&job, Some("job-uid")), None);
    }

    fn facts(template: Option<Template>, previous: ChangeRequestStatus) -> Facts {
        let seen = if template.is_some() {
            TemplateSeen::Bound
        } else {
            TemplateSeen::Absent
        };
        Facts {
            ns: "apps".into(),
            name: "web-1".into(),
            uid: "cr-uid".into(),
            now: at(1_000),
            previous,
            template: template.map(Arc::new),
            seen,
            revision: 1,
            published: false,
            needs: Needs {
                base_image: "registry.example/web:1".into(),
                scope: Some(scope_on(DIGEST)),
                emergency: false,
                rule: None,
                wake: None,
                inputs_changed: false,
            },
            jobs: no_jobs(),
            result: ResultSeen {
                inventory: None,
                output: BuildOutput::Absent,
                pin: Pin::Unpinned,
                checks: None,
            },
        }
    }

    fn template() -> Template {
        let mut t = Template::new(
            "web",
            TemplateSpec {
                platform: "debian:12".into(),
                image: "registry.example/web:1".into(),
                build_job_template: None,
                test_job_template: None,
                keep_closed_change_requests: None,
            },
        );
        t.metadata.uid = Some("template-uid".into());
        t.metadata.generation = Some(3);
        t
    }

    #[test]
    fn a_persons_approval_is_recorded_before_the_build_is_decided() {
        let cr = request(Verdict::Approved);
        let f = facts(Some(template()), ChangeRequestStatus::default());
        let d = decide(&cr, &f).expect("decision");
        assert_eq!((d.step.phase, d.step.act), (Phase::Approved, Act::Nothing));
        assert_eq!(d.status.template_uid.as_deref(), Some("template-uid"));
        assert_eq!(
            (
                d.status.base_revision,
                d.status.target_revision,
                d.status.template_generation
            ),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(d.status.scope, Some(scope_on(DIGEST)));
        let approval = d.status.approval.as_ref().expect("approval");
        assert_eq!(
            (approval.by.as_str(), approval.field_manager.as_deref()),
            ("Person", Some("alice"))
        );

        // Approved: the engine decides the build; the scope moved away from
        // the decision voids it.
        let approved = ChangeRequestStatus {
            phase: Some(Phase::Approved),
            ..d.status.clone()
        };
        let d = decide(&cr, &facts(Some(template()), approved.clone())).expect("decision");
        assert_eq!((d.step.phase, d.step.act), (Phase::Building, Act::Build));
        let mut moved = facts(Some(template()), approved);
        moved.needs.scope = Some(scope_on("sha256:other"));
        let d = decide(&cr, &moved).expect("decision");
        assert_eq!(d.step.phase, Phase::AwaitingApproval);
        let void = d.status.decision_voided.expect("void");
        assert_eq!(
            (void.digest.as_deref(), void.field_managers),
            (Some(DIGEST), vec!["alice".to_owned()])
        );
        assert_eq!(d.status.approval, None);
    }

    #[test]
    fn a_deleted_template_fails_the_request_and_a_closed_one_is_left() {
        let cr = request(Verdict::Approved);
        let d = decide(&cr, &facts(None, ChangeRequestStatus::default())).expect("decision");
        assert_eq!(
            (d.step.phase, d.step.reason),
            (Phase::Failed, "TemplateDeleted")
        );
        let closed = ChangeRequestStatus {
            phase: Some(Phase::Published),
            ..ChangeRequestStatus::default()
        };
        assert!(decide(&cr, &facts(Some(template()), closed)).is_none());
    }

    #[test]
    fn what_a_create_found_is_told_to_the_engine() {
        let adopt = |_: &Job| Creation::Adopted;
        assert_eq!(found(Ok((jobs::Created::New, None)), adopt), Creation::New);
        let existed = jobs::Created::Existed(Box::default());
        assert_eq!(found(Ok((existed, None)), adopt), Creation::Adopted);
        assert_eq!(
            found(Err("Template spec.testJobTemplate: missing".into()), adopt),
            Creation::Invalid("Template spec.testJobTemplate: missing".into())
        );
    }
}
