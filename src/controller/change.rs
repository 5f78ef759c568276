//! The change reconciler: one ChangeRequest's lifecycle. Dereference (the
//! Template, its findings now, the decision, the build and test Jobs, the
//! build result by subject and nonce) → decide ([`crate::engine::change`],
//! pure) → act (create the build or test Job under a deterministic name,
//! publish the revision) → write status.
//!
//! Restart safety: the phase, the nonce and the Job names live in status;
//! Jobs are created idempotently under names derived from the request's;
//! status is written with the read `resourceVersion` as a precondition, so
//! a reconcile working from a stale cache can never move the phase back;
//! publication writes the Template first, and a request whose Template's
//! history already names it is `Published` whatever its recorded phase.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::advisories::DataState;
use super::scope::Scope;
use super::template::{self as tpl, Current};
use super::{Error, failpoint, jobs, now, observed, requeue_at};
use crate::api::change_request::{
    ApprovalRecord, BuildResult, ChangeRequestPhase as Phase, ChangeRequestStatus, PhaseTimestamps,
    Scope as ChangeScope, TEMPLATE_LABEL, Verdict,
};
use crate::api::common::{ComplianceState, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::{InventorySubject, SubjectKind};
use crate::api::template::TemplateRevision;
use crate::api::{ChangeRequest, Inventory, Template};
use crate::engine::change::{
    self, Act, Approval, Approver, JobState, Observed, before_build, is_closed,
};
use crate::engine::inventory::parse_compact_list;
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

/// The field manager that last set `spec.decision`, from managedFields: as
/// the client asserted it (the apiserver audit log is the authoritative
/// record of who).
pub fn decision_manager(cr: &ChangeRequest) -> Option<String> {
    cr.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:decision"))
                .is_some()
        })
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
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
            let pod = jobs::termination_message(&scope.shared.client, ns, name).await?;
            let mut why = format!("Job {name}: {}", f.message.unwrap_or_default());
            if let Some(m) = pod {
                why.push_str(&format!(" ({m})"));
            }
            JobState::Failed(why)
        }
    })
}

/// The build result: the request's canonical Inventory
/// (`changerequest-<name>`), when it carries the right nonce and an image.
/// Others are ignored.
fn build_result(
    scope: &Scope,
    ns: &str,
    name: &str,
    nonce: Option<&str>,
) -> Option<Arc<Inventory>> {
    let nonce = nonce?;
    let subject = InventorySubject {
        kind: SubjectKind::ChangeRequest,
        name: name.to_owned(),
        revision: None,
    };
    scope
        .inventory_for(ns, &subject)
        .filter(|i| i.spec.nonce.as_deref() == Some(nonce))
        .filter(|i| i.spec.image.as_deref().is_some_and(|s| !s.is_empty()))
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
    let packages = match parse_compact_list(result.spec.format.into(), &result.spec.packages) {
        Ok(p) => p,
        Err(e) => return vec![format!("Inventory {}: spec.{e}", result.name_any())],
    };
    let Ok(platform) = parse_platform(&t.spec.platform) else {
        return vec!["spec.platform of the Template is invalid".into()];
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
    test_image: Option<&str>,
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
    let purpose = match test_image {
        Some(_) => jobs::Purpose::Test,
        None => jobs::Purpose::Build,
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
    match test_image {
        Some(image) => env.push(("PATCHLOOP_IMAGE".to_owned(), image.to_owned())),
        None => {
            let nonce = status.nonce.clone().unwrap_or_default();
            env.push(("PATCHLOOP_NONCE".to_owned(), nonce.clone()));
            files.insert("nonce".to_owned(), nonce);
        }
    }
    Contract { env, files }
}

/// Creates the build (`test_image` None) or test Job; an unusable template
/// is the request's failure, returned as a sentence.
async fn create_job(
    scope: &Scope,
    cr: &ChangeRequest,
    t: &Template,
    status: &ChangeRequestStatus,
    test_image: Option<&str>,
) -> Result<Result<(), String>, Error> {
    let (template, field, purpose, suffix) = match test_image {
        None => (
            t.spec.build_job_template.as_ref(),
            "Template spec.buildJobTemplate",
            jobs::Purpose::Build,
            "build",
        ),
        Some(_) => (
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
    let c = contract(cr, t, status, &job_name, test_image);
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
    match jobs::create(&scope.shared.client, &job).await {
        Ok(jobs::Created::New) => {
            scope.shared.metrics.job_created(purpose);
            tracing::info!(change_request = %name, job = %job.metadata.name.clone().unwrap_or_default(), "{} Job created", purpose.as_str());
        }
        Ok(jobs::Created::Existed) => {}
        // The apiserver refuses the Job (an invalid pod spec): the
        // template's fault, not a transient error.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            return Ok(Err(format!("{field}: {}", s.message)));
        }
        Err(e) => return Err(e.into()),
    }
    if test_image.is_none() {
        failpoint::exit_if(failpoint::EXIT_AFTER_BUILD_JOB_CREATE);
    }
    Ok(Ok(()))
}

/// Writes the new revision to the Template's status under this
/// reconciler's field manager: `revision`, `image` and `history` only, with
/// the read resourceVersion as a precondition. `false`: the Template
/// changed meanwhile; look again.
async fn publish(
    scope: &Scope,
    t: &Template,
    cr_name: &str,
    result: &Inventory,
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
    let image = result.spec.image.clone().unwrap_or_default();
    history.push(TemplateRevision {
        revision: rev + 1,
        image: image.clone(),
        inventory: Some(result.name_any()),
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

/// Soon, when a retry is due (a stale cache, a Template changing meanwhile).
const SOON: std::time::Duration = std::time::Duration::from_secs(1);

async fn reconcile_inner(cr: Arc<ChangeRequest>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    let shared = &scope.shared;
    let ns = cr.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = cr.name_any();
    let now = now();
    let previous = cr.status.clone().unwrap_or_default();
    let idle = Action::requeue(shared.settings.max_requeue);
    if cr.status.is_none() {
        tpl::wake_inventories_of(scope, &ns, SubjectKind::ChangeRequest, &name);
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
    let template = scope
        .templates
        .get(&ObjectRef::new(&cr.spec.template).within(&ns));
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
    let mut needed: Option<ChangeScope> = previous.scope.clone();
    let mut emergency = false;
    let mut rule = None;
    let mut wake: Option<Timestamp> = None;
    if before && let Some(t) = &template {
        let Current { judged, .. } = tpl::judge_current(scope, t, &ns, now);
        rule = judged.approval_rule();
        wake = judged.evaluation.next_change;
        // Unknown keeps the last scope: no data is not "fixed another way".
        if judged.evaluation.state != ComplianceState::Unknown {
            let family = parse_platform(&t.spec.platform).ok().map(|p| p.family);
            let computed = family.and_then(|f| change::scope(&judged.evaluation, f));
            emergency = computed.as_ref().is_some_and(|(_, e)| *e);
            needed = computed.map(|(s, _)| s);
        }
    }
    let approval = match &needed {
        Some(s) => change::approval(
            rule.as_ref().map(|(_, r)| *r),
            emergency,
            cr.spec.decision.as_ref(),
            &s.digest,
        ),
        None => Approval::Awaiting(String::new()),
    };

    let build_name = jobs::job_name(&name, "build");
    let test_name = jobs::job_name(&name, "test");
    let phase = previous.phase;
    let build = if matches!(phase, Some(Phase::Building)) {
        job_state(scope, &ns, &build_name).await?
    } else {
        JobState::Absent
    };
    let test = if matches!(phase, Some(Phase::Testing)) {
        job_state(scope, &ns, &test_name).await?
    } else {
        JobState::Absent
    };
    let result = if matches!(phase, Some(Phase::Building | Phase::Testing)) {
        build_result(scope, &ns, &name, previous.nonce.as_deref())
    } else {
        None
    };
    let problems = match (&template, &result, &test) {
        (Some(t), Some(r), JobState::Succeeded(_)) if phase == Some(Phase::Testing) => {
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
        template_exists: template.is_some(),
        published,
        revision: (rev, previous.base_revision),
        needed: needed.as_ref(),
        approval: &approval,
        build: &build,
        result: result.is_some(),
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
        result = result.is_some(),
        "change step"
    );

    // The status this step records (the Job it starts reads it: nonce,
    // scope, target revision).
    let mut status = previous.clone();
    status.observed_generation = cr.metadata.generation;
    if status.nonce.is_none() {
        status.nonce = Some(nonce(cr.uid().as_deref().unwrap_or(&name)));
    }
    if before && let Some(t) = &template {
        status.scope = needed.clone();
        status.policy = rule.as_ref().map(|(p, _)| p.clone());
        status.base_revision = Some(rev);
        status.base_image = Some(tpl::image(t));
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
                })
            }
            (Approval::Rejected, Some(s)) => Some(ApprovalRecord {
                verdict: Verdict::Rejected,
                by: "Person".into(),
                field_manager: decision_manager(&cr),
                digest: Some(s.digest.clone()),
                reason: cr.spec.decision.as_ref().and_then(|d| d.reason.clone()),
                effective_at: time(now),
            }),
            _ => None,
        };
    }

    // Act.
    match step.act {
        Act::Nothing => {}
        Act::Build | Act::Test => {
            let test_image = match step.act {
                Act::Test => result.as_ref().and_then(|r| r.spec.image.clone()),
                _ => None,
            };
            let Some(t) = &template else {
                return Ok(Action::requeue(SOON));
            };
            if step.act == Act::Build && previous.phase != Some(Phase::Building) {
                // The Job is built from the recorded scope and nonce: record
                // them first, then create it on the next pass.
                step.act = Act::Nothing;
            } else if step.act == Act::Test && test_image.is_none() {
                step.phase = Phase::Failed;
                step.reason = "NoBuildResult";
                step.message = "the build result disappeared before the test".into();
                step.act = Act::Nothing;
            } else {
                let mut for_job = status.clone();
                if step.act == Act::Test {
                    // The scope is frozen; the test needs no nonce.
                    for_job.scope = previous.scope.clone();
                }
                match create_job(scope, &cr, t, &for_job, test_image.as_deref()).await? {
                    Ok(()) => {}
                    Err(why) => {
                        step.phase = Phase::Failed;
                        step.reason = "InvalidJobTemplate";
                        step.message = why;
                    }
                }
            }
        }
        Act::Publish => {
            let (Some(t), Some(r)) = (&template, &result) else {
                return Ok(Action::requeue(SOON));
            };
            if !publish(scope, t, &name, r, now).await? {
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
    if let Some(r) = &result {
        status.result = Some(BuildResult {
            image: r.spec.image.clone().unwrap_or_default(),
            inventory: r.name_any(),
        });
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
        if previous.phase != Some(step.phase) {
            let warning = matches!(step.phase, Phase::Failed | Phase::Rejected);
            shared
                .event(cr.as_ref(), warning, step.reason, step.message.clone())
                .await;
            // The Template shows the open request (or none).
            let _ = scope
                .triggers
                .templates
                .unbounded_send(ObjectRef::new(&cr.spec.template).within(&ns));
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
