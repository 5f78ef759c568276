//! The change reconciler: one ChangeRequest's lifecycle. Dereference (the
//! Template, its findings now, the decision, the build and test Jobs, the
//! build result `changerequest-<request>` read from the apiserver) → decide
//! ([`crate::engine::change`], pure) → act (create the build or test Job
//! under a deterministic name, pin the result, publish the pinned image) →
//! write status.
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::advisories::DataState;
use super::scope::{self, Scope};
use super::template::{self as tpl, Current};
use super::triggers;
use super::{Error, failpoint, jobs, now, observed, requeue_at};
use crate::api::change_request::{
    ApprovalRecord, BuildResult, ChangeRequestPhase as Phase, ChangeRequestStatus, PhaseTimestamps,
    Scope as ChangeScope, TEMPLATE_LABEL, Verdict, VoidedDecision, result_inventory_name,
};
use crate::api::common::{ComplianceState, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::SubjectKind;
use crate::api::template::TemplateRevision;
use crate::api::{ChangeRequest, Inventory, Template};
use crate::engine::change::{
    self, Act, Approval, Approver, BuildOutput, BuildReport, JobState, Observed, PersonDecision,
    Pin, ResultFacts, TemplateSeen, before_build, is_closed,
};
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
            let pod = jobs::failed_pod(&scope.shared.client, &job).await?;
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
    Ok(api.get_opt(&result_inventory_name(request)).await?)
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

/// Everything a build or test Job gets beyond its template.
struct Contract {
    env: Vec<(String, String)>,
    files: BTreeMap<String, String>,
}

fn contract(
    cr: &ChangeRequest,
    t: &Template,
    status: &ChangeRequestStatus,
    job: &str,
    run: Run<'_>,
) -> Contract {
    let ns = cr.namespace().unwrap_or_default();
    let name = cr.name_any();
    let scope = status.scope.clone().unwrap_or_default();
    let mut packages = String::new();
    for p in &scope.packages {
        packages.push_str(&p.name);
        packages.push(' ');
        packages.push_str(&p.fixed);
        if let Some(s) = &p.source {
            packages.push(' ');
            packages.push_str(s);
        }
        packages.push('\n');
    }
    let advisories: Vec<&str> = scope.advisories.iter().map(|a| a.id.as_str()).collect();
    let base_image = status.base_image.clone().unwrap_or_else(|| tpl::image(t));
    let purpose = match run {
        Run::Test { .. } => jobs::Purpose::Test,
        Run::Build { .. } => jobs::Purpose::Build,
    };
    let mut env = vec![
        ("PATCHLOOP_PURPOSE".to_owned(), purpose.as_str().to_owned()),
        ("PATCHLOOP_NAMESPACE".to_owned(), ns),
        ("PATCHLOOP_TEMPLATE".to_owned(), t.name_any()),
        ("PATCHLOOP_PLATFORM".to_owned(), t.spec.platform.clone()),
        ("PATCHLOOP_CHANGE_REQUEST".to_owned(), name),
        ("PATCHLOOP_BASE_IMAGE".to_owned(), base_image),
        (
            "PATCHLOOP_REVISION".to_owned(),
            status
                .target_revision
                .map(|r| r.to_string())
                .unwrap_or_default(),
        ),
        ("PATCHLOOP_ADVISORIES".to_owned(), advisories.join(",")),
        ("PATCHLOOP_JOB".to_owned(), job.to_owned()),
        (
            "PATCHLOOP_PACKAGES_FILE".to_owned(),
            format!("{}/{}", jobs::CONTRACT_DIR, jobs::PACKAGES_FILE),
        ),
    ];
    let mut files = BTreeMap::from([
        (jobs::PACKAGES_FILE.to_owned(), packages),
        ("advisories".to_owned(), advisories.join("\n") + "\n"),
    ]);
    match run {
        Run::Test { image } => env.push(("PATCHLOOP_IMAGE".to_owned(), image.to_owned())),
        Run::Build { nonce } => {
            env.push((NONCE_ENV.to_owned(), nonce.to_owned()));
            files.insert("nonce".to_owned(), nonce.to_owned());
        }
    }
    Contract { env, files }
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
    let (template, field, purpose, suffix) = match run {
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
    };
    let Some(template) = template else {
        return Ok(Err(format!("{field}: missing")));
    };
    let ns = cr.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = cr.name_any();
    let uid = cr.uid().ok_or(Error::Missing("metadata.uid"))?;
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
        owner: OwnerReference {
            api_version: ChangeRequest::api_version(&()).into_owned(),
            kind: ChangeRequest::kind(&()).into_owned(),
            name: name.clone(),
            uid,
            controller: Some(true),
            block_owner_deletion: None,
        },
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
    super::write_status_if_unchanged(
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
    let shared = &scope.shared;
    let ns = cr.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = cr.name_any();
    let now = now();
    let previous = cr.status.clone().unwrap_or_default();
    let idle = Action::requeue(shared.settings.max_requeue);
    if cr.status.is_none() {
        triggers::inventories_of(scope, &ns, SubjectKind::ChangeRequest, &name);
    }
    if is_closed(previous.phase) {
        // A closed request takes no more changes, but kstatus (Argo CD,
        // Flux) reads a spec edit as in progress until observedGeneration
        // says the controller has seen it.
        if previous.observed_generation != cr.metadata.generation {
            let mut status = previous.clone();
            status.observed_generation = cr.metadata.generation;
            for c in &mut status.conditions {
                c.observed_generation = cr.metadata.generation;
            }
            if !write(scope, &cr, &previous, &status).await? {
                return Ok(Action::requeue(SOON));
            }
        }
        return Ok(idle);
    }
    // The Template by name counts only while it is the one this request
    // recorded (uid): a repointed `spec.template`, or a recreated namesake,
    // is not this request's to build for, judge or publish to.
    let found = scope
        .templates
        .get(&ObjectRef::new(&cr.spec.template).within(&ns));
    let seen = change::template_seen(
        previous.template_uid.as_deref(),
        found.as_ref().map(|t| t.metadata.uid.as_deref()),
    );
    let template = found.filter(|_| seen == TemplateSeen::Bound);
    let before = before_build(previous.phase);
    // Until the platform's advisory data has loaded (start-up), neither the
    // scope nor the publication checks can be decided; a feed load wakes the
    // Template, which wakes its open request.
    if let Some(t) = &template
        && let Ok(platform) = parse_platform(&t.spec.platform)
        && let DataState::Waiting(until) =
            shared.advisories.data_state(platform.osv_ecosystem(), now)
    {
        return Ok(Action::requeue(requeue_at(
            Some(until),
            now,
            shared.settings.max_requeue,
        )));
    }

    // What the Template needs now (before the build only: then it freezes).
    let uid = cr.uid().ok_or(Error::Missing("metadata.uid"))?;
    let mut needed: Option<ChangeScope> = previous.scope.clone();
    let mut emergency = false;
    let mut rule = None;
    let mut wake: Option<Timestamp> = None;
    let base_image = template.as_deref().map(tpl::image).unwrap_or_default();
    let inputs = template
        .as_deref()
        .map(|t| tpl::build_inputs(t, &base_image));
    if before && let (Some(t), Some(inputs)) = (&template, &inputs) {
        let Current { judged, .. } = tpl::judge_current(scope, t, &ns, now);
        rule = judged.approval_rule();
        wake = judged.evaluation.next_change;
        // Unknown keeps the last findings (no data is not "fixed another
        // way"), bound to the Template as it is now.
        needed = needed.map(|s| change::rebind(&s, inputs));
        if judged.evaluation.state != ComplianceState::Unknown {
            let family = parse_platform(&t.spec.platform).ok().map(|p| p.family);
            let computed = family.and_then(|f| change::scope(&judged.evaluation, f, inputs));
            emergency = computed.as_ref().is_some_and(|(_, e)| *e);
            needed = computed.map(|(s, _)| s);
        }
    }
    let person = PersonDecision {
        decision: cr.spec.decision.as_ref(),
        request_uid: &uid,
        voided: previous
            .decision_voided
            .as_ref()
            .filter(|v| change::void_holds(v, cr.spec.decision.as_ref(), cr.metadata.generation))
            .map(|v| v.reason.as_str()),
        decided_scope: previous.scope.as_ref(),
    };
    let approval = match &needed {
        Some(s) => change::approval(rule.as_ref().map(|(_, r)| *r), emergency, &person, s),
        None => Approval::Awaiting(String::new()),
    };
    // Once the build started, the Template must still be what was approved.
    let inputs_changed = !before
        && inputs.is_some_and(|i| {
            previous
                .scope
                .as_ref()
                .is_none_or(|s| s.build_inputs_digest != i.digest())
        });

    let build_name = jobs::job_name(&name, "build");
    let test_name = jobs::job_name(&name, "test");
    let phase = previous.phase;
    // Only the Job whose uid the request recorded when it created it is its
    // build Job; any other under the name is deleted, never adopted.
    let cached_build = scope
        .jobs
        .get(&ObjectRef::<Job>::new(&build_name).within(&ns));
    let (recorded_build, build_unrecorded) = match &cached_build {
        Some(j) if j.metadata.uid.is_some() && j.metadata.uid == previous.build_job_uid => {
            (Some(Arc::clone(j)), None)
        }
        Some(j) => (
            None,
            Some(
                j.metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            ),
        ),
        None => (None, None),
    };
    let build = match (&recorded_build, phase) {
        (Some(_), Some(Phase::Building)) => job_state(scope, &ns, &build_name).await?,
        _ => JobState::Absent,
    };
    let test = if matches!(phase, Some(Phase::Testing)) {
        job_state(scope, &ns, &test_name).await?
    } else {
        JobState::Absent
    };
    // The result, live, once the build has succeeded (to pin it) and while
    // testing (to check the pin).
    let result = match (phase, &build) {
        (Some(Phase::Building), JobState::Succeeded(_)) | (Some(Phase::Testing), _) => {
            live_result(scope, &ns, &name).await?
        }
        _ => None,
    };
    let build_created = recorded_build
        .as_ref()
        .and_then(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let pin = pin_state(previous.result.as_ref(), result.as_ref());
    // About to be pinned: what the build Job's own Pod reported it built
    // (its termination message), which the result must be.
    let report = match (&recorded_build, &build, &pin, &result) {
        (Some(job), JobState::Succeeded(_), Pin::Unpinned, Some(_)) => {
            let messages = jobs::succeeded_pod(&scope.shared.client, job).await?;
            Some(change::build_report(messages.as_deref()))
        }
        _ => None,
    };
    let output = match &result {
        Some(r) => judge_result(
            r,
            &name,
            previous.nonce_hash.as_deref(),
            build_created,
            report.as_ref().map(|r| r.as_ref().map_err(|why| *why)),
        ),
        None => BuildOutput::Absent,
    };
    let problems = match (&template, &result, &test, &pin) {
        (Some(t), Some(r), JobState::Succeeded(_), Pin::Intact)
            if phase == Some(Phase::Testing) =>
        {
            Some(checks(scope, t, &ns, previous.scope.as_ref(), r, now))
        }
        _ => None,
    };
    let rev = template.as_deref().map_or(0, tpl::revision);
    let published = template.as_ref().is_some_and(|t| {
        t.status.as_ref().is_some_and(|s| {
            s.history
                .iter()
                .any(|h| h.change_request.as_deref() == Some(&name))
        })
    });
    let observed = Observed {
        phase,
        template: seen,
        published,
        revision: (rev, previous.base_revision),
        needed: needed.as_ref(),
        approval: &approval,
        build: &build,
        build_unrecorded,
        output: &output,
        pin: pin.clone(),
        inputs_changed,
        test: &test,
        checks: problems.as_deref(),
        now,
    };
    let Some(mut step) = change::next(&observed) else {
        return Ok(idle);
    };
    tracing::debug!(
        from = ?phase,
        to = ?step.phase,
        act = ?step.act,
        build = ?build,
        test = ?test,
        output = ?output,
        pin = ?pin,
        "change step"
    );

    // The status this step records (the Job it starts reads it: scope,
    // target revision).
    let mut status = previous.clone();
    status.observed_generation = cr.metadata.generation;
    if status.template_uid.is_none() {
        status.template_uid = template.as_ref().and_then(|t| t.uid());
    }
    if before && let Some(t) = &template {
        if let (Some(s), Some(d)) = (&needed, &cr.spec.decision)
            && let Some(changed) = person.voids(s)
        {
            status.decision_voided = Some(VoidedDecision {
                generation: cr.metadata.generation,
                digest: Some(d.digest.clone()),
                decided_at: d.decided_at.clone(),
                field_managers: decision_managers(&cr),
                reason: changed.to_owned(),
            });
        }
        status.scope = needed.clone();
        status.policy = rule.as_ref().map(|(p, _)| p.clone());
        status.base_revision = Some(rev);
        status.base_image = Some(base_image.clone());
        status.template_generation = t.metadata.generation;
        status.target_revision = Some(rev + 1);
        status.approval = match (&approval, needed.as_ref()) {
            (Approval::Approved(by), Some(s)) => {
                let same = previous.approval.as_ref().filter(|a| {
                    a.verdict == Verdict::Approved && a.digest.as_deref() == Some(s.digest.as_str())
                });
                Some(ApprovalRecord {
                    verdict: Verdict::Approved,
                    by: match by {
                        Approver::Person => "Person".into(),
                        Approver::Policy => "Policy".into(),
                    },
                    field_manager: match by {
                        Approver::Person => decision_manager(&cr),
                        Approver::Policy => {
                            status.policy.clone().map(|p| format!("PatchPolicy/{p}"))
                        }
                    },
                    digest: Some(s.digest.clone()),
                    reason: match by {
                        Approver::Person => {
                            cr.spec.decision.as_ref().and_then(|d| d.reason.clone())
                        }
                        Approver::Policy => Some(format!(
                            "templates.approval: {:?}",
                            rule.as_ref().map(|(_, r)| *r).unwrap_or_default()
                        )),
                    },
                    effective_at: same.map_or_else(|| time(now), |a| a.effective_at.clone()),
                    consumed_by: None,
                })
            }
            (Approval::Rejected, Some(s)) => Some(ApprovalRecord {
                verdict: Verdict::Rejected,
                by: "Person".into(),
                field_manager: decision_manager(&cr),
                digest: Some(s.digest.clone()),
                reason: cr.spec.decision.as_ref().and_then(|d| d.reason.clone()),
                effective_at: time(now),
                consumed_by: None,
            }),
            _ => None,
        };
    }

    // Act.
    match step.act {
        Act::Nothing => {}
        Act::Build => {
            let Some(t) = &template else {
                return Ok(Action::requeue(SOON));
            };
            // A fresh nonce for a Job this pass creates; the recorded Job
            // (the cache lagging its create) keeps the one it was given.
            let fresh = nonce(&uid);
            match create_job(scope, &cr, t, &status, Run::Build { nonce: &fresh }).await? {
                Ok((jobs::Created::New, job_uid)) => {
                    status.nonce_hash = Some(change::nonce_hash(&fresh));
                    status.build_job_uid = job_uid;
                }
                Ok((jobs::Created::Taken(taken), _)) => {
                    step.phase = Phase::Failed;
                    step.reason = "BuildJobConflict";
                    step.message = taken.to_string();
                }
                Ok((jobs::Created::Existed(job), _)) => {
                    if job.metadata.uid.is_none() || job.metadata.uid != previous.build_job_uid {
                        // Not the recorded Job, and not in the cache (it may
                        // lag, and it holds only Jobs labelled as
                        // Patchloop's): handled here like any unrecorded one.
                        let created = job
                            .metadata
                            .creation_timestamp
                            .as_ref()
                            .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
                        step = change::unrecorded_build(
                            phase.unwrap_or(Phase::AwaitingApproval),
                            created,
                            now,
                        );
                        if step.act == Act::DiscardBuild
                            && let Some(job_uid) = &job.metadata.uid
                        {
                            jobs::delete_uid(&shared.client, &ns, &build_name, job_uid).await?;
                            step.wake = Some(soon(now));
                        }
                    }
                }
                Err(why) => {
                    step.phase = Phase::Failed;
                    step.reason = "InvalidJobTemplate";
                    step.message = why;
                }
            }
            if step.phase == Phase::Building
                && step.act == Act::Build
                && let Some(a) = status.approval.as_mut()
            {
                a.consumed_by = Some(build_name.clone());
            }
        }
        Act::DiscardBuild => {
            if let Some(job_uid) = cached_build
                .as_ref()
                .and_then(|j| j.metadata.uid.as_deref())
            {
                jobs::delete_uid(&shared.client, &ns, &build_name, job_uid).await?;
                tracing::warn!(change_request = %name, job = %build_name, uid = %job_uid, "build Job not recorded by the request deleted");
            }
            // The next pass creates a fresh one (or waits for approval).
            step.wake = Some(soon(now));
        }
        Act::Pin => {
            if let Some(r) = &result {
                status.result = Some(BuildResult {
                    image: r.spec.image.clone().unwrap_or_default(),
                    inventory: r.name_any(),
                    uid: r.metadata.uid.clone(),
                    resource_version: r.metadata.resource_version.clone(),
                    generation: r.metadata.generation,
                });
            }
        }
        Act::Test => {
            let (Some(t), Some(pinned)) = (&template, &previous.result) else {
                return Ok(Action::requeue(SOON));
            };
            let run = Run::Test {
                image: &pinned.image,
            };
            match create_job(scope, &cr, t, &status, run).await? {
                Ok((jobs::Created::New | jobs::Created::Existed(_), _)) => {}
                Ok((jobs::Created::Taken(taken), _)) => {
                    step.phase = Phase::Failed;
                    step.reason = "TestJobConflict";
                    step.message = taken.to_string();
                }
                Err(why) => {
                    step.phase = Phase::Failed;
                    step.reason = "InvalidJobTemplate";
                    step.message = why;
                }
            }
        }
        Act::Publish => {
            let (Some(t), Some(pinned)) = (&template, &previous.result) else {
                return Ok(Action::requeue(SOON));
            };
            if !publish(scope, t, &name, pinned, now).await? {
                return Ok(Action::requeue(SOON));
            }
            failpoint::exit_if(failpoint::EXIT_AFTER_PUBLISH);
        }
    }

    status.phase = Some(step.phase);
    status.message = Some(step.message.clone());
    if matches!(
        step.phase,
        Phase::Building | Phase::Testing | Phase::Published
    ) {
        status.build_job = Some(build_name);
    }
    if matches!(step.phase, Phase::Testing | Phase::Published) {
        status.test_job = Some(test_name);
    }
    let mut stamps = status.timestamps.clone().unwrap_or_default();
    set_stamp(&mut stamps, step.phase, time(now));
    if step.phase == Phase::Building {
        set_stamp(&mut stamps, Phase::Approved, time(now));
    }
    status.timestamps = Some(stamps);
    let approved = status
        .approval
        .as_ref()
        .is_some_and(|a| a.verdict == Verdict::Approved);
    let desired = [
        DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            step.reason,
            step.message.clone(),
        ),
        if approved {
            DesiredCondition::new(
                types::APPROVED,
                ConditionStatus::True,
                status.approval.as_ref().map_or("Approved", |a| {
                    if a.by == "Policy" {
                        "ApprovedByPolicy"
                    } else {
                        "ApprovedByPerson"
                    }
                }),
                format!(
                    "approved for scope {}",
                    status
                        .scope
                        .as_ref()
                        .map_or("", |s| change::short(&s.digest))
                ),
            )
        } else {
            DesiredCondition::new(
                types::APPROVED,
                ConditionStatus::False,
                if step.phase == Phase::Rejected {
                    "Rejected"
                } else {
                    "AwaitingApproval"
                },
                step.message.clone(),
            )
        },
    ];
    let (conds, _) = conditions::merge(
        &previous.conditions,
        &desired,
        cr.metadata.generation,
        &time(now),
    );
    status.conditions = conds;

    if status != previous {
        if !write(scope, &cr, &previous, &status).await? {
            return Ok(Action::requeue(SOON));
        }
        if let Some(point) = written_failpoint(previous.phase, &step) {
            failpoint::exit_if(point);
        }
        if previous.phase != Some(step.phase) {
            let warning = matches!(step.phase, Phase::Failed | Phase::Rejected);
            shared
                .event(cr.as_ref(), warning, step.reason, step.message.clone())
                .await;
            // The Template shows the open request (or none), as read from
            // the request cache: wake it once that shows the new phase, or it
            // reads the old one and nothing wakes it again.
            let phase = step.phase;
            let me = ObjectRef::from_obj(cr.as_ref());
            let template = ObjectRef::new(&cr.spec.template).within(&ns);
            let scope = Arc::clone(scope);
            tokio::spawn(async move {
                scope::cache_shows(&scope.change_requests, &me, |c| {
                    c.status.as_ref().and_then(|s| s.phase) == Some(phase)
                })
                .await;
                let _ = scope.triggers.templates.unbounded_send(template);
            });
        }
    }
    if is_closed(Some(step.phase)) {
        return Ok(idle);
    }
    let next = [wake, step.wake].into_iter().flatten().min();
    Ok(Action::requeue(requeue_at(
        next,
        now,
        shared.settings.max_requeue,
    )))
}
