//! The template reconciler: judges a Template's current revision by its
//! inventory (images never age), writes its compliance, findings, the open
//! ChangeRequest and the count of Workloads on older revisions, and opens a
//! ChangeRequest when it is non-compliant.
//!
//! Who writes what: this reconciler writes every Template status field
//! except `revision`, `image` and `history`, which the change reconciler
//! writes at publication under its own field manager. It never sends those
//! three, so server-side apply keeps both writers' fields.
//!
//! At most one open ChangeRequest per Template, found by the
//! `patchloop.dev/template` label, never by a computed name: before creating
//! one, a live list by label covers a cache that lags its own creates and a
//! restart between the create and the next status write.
//!
//! The reconcile: dereference ([`judge_current`], the requests in the
//! cache) → open a request when one is needed (`open_request`) and retire
//! old closed ones → decide the status (pure: `decide`) → write it
//! (`update_status`) → wake what follows it → Events.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::dereference::{Inputs, Verdict, inventory_reference, mark_unreadable, ready_condition};
pub use super::dereference::{
    published_revision as revision, template_revision_inventory as revision_inventory,
};
use super::scope::Scope;
use super::triggers;
use super::{Error, failpoint, jobs, now, observed, requeue_at, write_status};
use crate::api::change_request::{ChangeRequestPhase, TEMPLATE_LABEL, result_inventory_name};
use crate::api::common::{ComplianceState, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::SubjectKind;
use crate::api::policy::{PatchPolicySpec, TemplateApproval, TemplateCounts};
use crate::api::template::DEFAULT_KEEP_CLOSED_CHANGE_REQUESTS;
use crate::api::{
    ChangeRequest, ChangeRequestSpec, Inventory, PatchPolicy, Template, TemplateStatus,
};
use crate::engine::change::{self, is_closed};
use crate::engine::evaluate::{Evaluation, InventoryInput, RemediationChoice};
use crate::engine::inventory::InstalledPackage;
use crate::engine::outcome::Notice;
use crate::engine::selector;
use crate::engine::version::Ecosystem;

/// The field manager of Template status (all but revision, image, history).
pub const MANAGER: &str = "patchloop-template";

/// The image of the published revision.
pub fn image(t: &Template) -> String {
    t.status
        .as_ref()
        .and_then(|s| s.image.clone())
        .unwrap_or_else(|| t.spec.image.clone())
}

/// What determines a rebuild of `t` besides its packages (the scope digest
/// covers it): the spec fields that make the build and test Jobs, and the
/// published revision and image the rebuild starts from (`base_image`,
/// [`image`]). Nothing else of the status counts.
pub fn build_inputs<'a>(t: &'a Template, base_image: &'a str) -> change::BuildInputs<'a> {
    change::BuildInputs {
        platform: &t.spec.platform,
        image: &t.spec.image,
        build_job_template: t.spec.build_job_template.as_ref(),
        test_job_template: t.spec.test_job_template.as_ref(),
        base_revision: revision(t),
        base_image,
    }
}

/// A Template judged: its policies and the evaluation of some packages.
pub struct Judged {
    /// The evaluation.
    pub evaluation: Evaluation,
    /// The matching policies.
    pub policies: Vec<Arc<PatchPolicy>>,
}

impl Judged {
    /// The approval rule of the policy driving remediation (`None`: no
    /// single policy drives it, a person must approve).
    pub fn approval_rule(&self) -> Option<(String, TemplateApproval)> {
        let RemediationChoice::Policy(name) = &self.evaluation.remediation else {
            return None;
        };
        self.policies
            .iter()
            .find(|p| p.name_any() == *name)
            .map(|p| (name.clone(), p.spec.templates.approval))
    }
}

/// Evaluates `packages` (an image: never ages) against the policies and
/// exceptions matching the Template. `None` packages: no inventory.
pub fn judge(
    scope: &Scope,
    t: &Template,
    ns: &str,
    packages: Option<&[InstalledPackage]>,
    now: Timestamp,
) -> Judged {
    let inputs = Inputs::read(scope, ns, t.labels(), &t.spec.platform, now);
    judge_with(scope, t, inputs, packages, now)
}

/// [`judge`] with the inputs already read.
fn judge_with(
    scope: &Scope,
    t: &Template,
    inputs: Inputs,
    packages: Option<&[InstalledPackage]>,
    now: Timestamp,
) -> Judged {
    let inventory = packages.map(|packages| InventoryInput {
        packages,
        collected_at: now,
        ages: false,
        provisional: false,
    });
    Judged {
        evaluation: inputs.evaluate(scope, &t.spec.platform, inventory, now),
        policies: inputs.policies,
    }
}

/// The current revision judged, with the Inventory it used.
pub struct Current {
    /// The judgement.
    pub judged: Judged,
    /// The Inventory of the current revision.
    pub inventory: Option<Arc<Inventory>>,
    /// Advisory data for the platform is still loading (start-up grace).
    pub waiting: Option<Timestamp>,
    /// The version-ordering family of the Template's platform, if valid.
    pub family: Option<Ecosystem>,
}

/// Judges the Template's published revision.
pub fn judge_current(scope: &Scope, t: &Template, ns: &str, now: Timestamp) -> Current {
    let inputs = Inputs::read(scope, ns, t.labels(), &t.spec.platform, now);
    let (family, waiting) = (inputs.family(), inputs.waiting);
    let inventory = revision_inventory(scope, t, ns, revision(t));
    let parsed = inventory.as_deref().map(|i| inputs.packages(i));
    let packages = match &parsed {
        Some(Ok(p)) => Some(p.as_slice()),
        _ => None,
    };
    let mut judged = judge_with(scope, t, inputs, packages, now);
    if let (Some(i), Some(Err(e))) = (&inventory, &parsed) {
        mark_unreadable(&mut judged.evaluation, i, e);
    }
    Current {
        judged,
        inventory,
        waiting,
        family,
    }
}

/// Problems with the build and test Job templates that would make every
/// rebuild fail, each naming its field (the apiserver cannot check an
/// embedded JobTemplateSpec on 1.20); pure.
pub fn validate(t: &Template) -> Vec<String> {
    let mut errors = Vec::new();
    for (field, template, purpose) in [
        (
            "spec.buildJobTemplate",
            t.spec.build_job_template.as_ref(),
            jobs::Purpose::Build,
        ),
        (
            "spec.testJobTemplate",
            t.spec.test_job_template.as_ref(),
            jobs::Purpose::Test,
        ),
    ] {
        let Some(template) = template else {
            errors.push(format!("{field}: missing: a rebuild cannot run without it"));
            continue;
        };
        let request = jobs::JobRequest {
            template,
            template_field: field,
            name: "validation".into(),
            namespace: "validation",
            labels: BTreeMap::new(),
            purpose,
            owner: Default::default(),
            deadline_seconds: 1,
            env: Vec::new(),
            files: BTreeMap::new(),
        };
        if let Err(e) = jobs::build(&request) {
            errors.push(e.to_string());
        }
    }
    errors
}

/// Whether a request belongs to the Template with `uid`: it recorded that
/// uid, or none yet (just opened). A request that recorded another
/// Template's uid (its `spec.template` repointed here, or opened for a
/// deleted namesake) is not this Template's: it neither stands for it nor
/// is retired by it.
fn bound_to(c: &ChangeRequest, uid: Option<&str>) -> bool {
    let recorded = c.status.as_ref().and_then(|s| s.template_uid.as_deref());
    change::template_seen(recorded, Some(uid)) == change::TemplateSeen::Bound
}

/// Sorts requests oldest first (by creation, then name).
fn oldest_first(list: &mut [Arc<ChangeRequest>]) {
    list.sort_by_key(|c| {
        (
            c.metadata.creation_timestamp.as_ref().map(|t| t.0),
            c.name_any(),
        )
    });
}

/// The ChangeRequests of a Template in the cache, oldest first.
pub fn change_requests_of(scope: &Scope, t: &Template, ns: &str) -> Vec<Arc<ChangeRequest>> {
    let template = t.name_any();
    let uid = t.uid();
    let label = jobs::label_value(&template);
    let mut out: Vec<Arc<ChangeRequest>> = scope
        .change_requests
        .state()
        .into_iter()
        .filter(|c| c.namespace().as_deref() == Some(ns))
        .filter(|c| c.spec.template == template)
        .filter(|c| c.labels().get(TEMPLATE_LABEL) == Some(&label))
        .filter(|c| bound_to(c, uid.as_deref()))
        .collect();
    oldest_first(&mut out);
    out
}

/// The Template's ChangeRequests as the apiserver lists them now (the
/// cache may lag a create, ours or one before a restart), oldest first.
async fn live_change_requests(
    api: &Api<ChangeRequest>,
    t: &Template,
) -> Result<Vec<Arc<ChangeRequest>>, Error> {
    let name = t.name_any();
    let uid = t.uid();
    let label = format!("{TEMPLATE_LABEL}={}", jobs::label_value(&name));
    let live = api.list(&ListParams::default().labels(&label)).await?;
    let mut list: Vec<Arc<ChangeRequest>> = live
        .items
        .into_iter()
        .filter(|c| c.spec.template == name)
        .filter(|c| bound_to(c, uid.as_deref()))
        .map(Arc::new)
        .collect();
    oldest_first(&mut list);
    Ok(list)
}

fn phase(c: &ChangeRequest) -> Option<ChangeRequestPhase> {
    c.status.as_ref().and_then(|s| s.phase)
}

fn scope_digest(c: &ChangeRequest) -> Option<&str> {
    c.status
        .as_ref()
        .and_then(|s| s.scope.as_ref())
        .map(|s| s.digest.as_str())
}

/// Workloads of the namespace provisioned from an older revision.
pub fn stale_workloads(scope: &Scope, ns: &str, template: &str, revision: i64) -> i32 {
    let n = scope
        .workloads
        .state()
        .iter()
        .filter(|w| w.namespace().as_deref() == Some(ns))
        .filter_map(|w| w.spec.template_ref.as_ref())
        .filter(|r| r.name == template && r.revision.is_some_and(|rev| rev < revision))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// PatchPolicy `status.templates`: counts over the Templates the policy
/// matches (from their statuses).
pub fn counts_for_policy(scope: &Scope, ns: &str, spec: &PatchPolicySpec) -> TemplateCounts {
    let mut c = TemplateCounts::default();
    for t in scope.templates.state() {
        if t.namespace().as_deref() != Some(ns)
            || !selector::matches(&spec.selector, t.labels()).unwrap_or(false)
        {
            continue;
        }
        c.matched += 1;
        let status = t.status.as_ref();
        match status
            .and_then(|s| s.compliance.as_ref())
            .and_then(|c| c.state)
        {
            Some(ComplianceState::Compliant | ComplianceState::Exempt) => c.compliant += 1,
            Some(ComplianceState::Pending | ComplianceState::Overdue) => c.non_compliant += 1,
            _ => {}
        }
        if status.is_some_and(|s| s.change_request.is_some()) {
            c.change_requests_open += 1;
        }
        if status.is_some_and(|s| s.stale_workloads > 0) {
            c.stale += 1;
        }
    }
    c
}

/// Reconciles one Template.
pub async fn reconcile(t: Arc<Template>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = Arc::clone(&scope.shared);
    observed(
        &shared,
        "template",
        t.as_ref(),
        reconcile_inner(Arc::clone(&t), &scope),
    )
    .await
}

/// What the Template's requests say: the open one, or the closed one whose
/// scope equals what is needed now (a rejection that stands).
enum Requests {
    Open(Arc<ChangeRequest>),
    Standing(Arc<ChangeRequest>),
    None,
}

fn requests(
    list: &[Arc<ChangeRequest>],
    needed: Option<&str>,
    generation: Option<i64>,
) -> Requests {
    if let Some(open) = list.iter().find(|c| !is_closed(phase(c))) {
        return Requests::Open(Arc::clone(open));
    }
    // The newest closed request: a rejection stands for exactly the
    // findings it was about; a failure too, until the Template's spec (its
    // Job templates) changes.
    let last = list.iter().rev().find(|c| is_closed(phase(c)));
    let stands = |c: &ChangeRequest| match phase(c) {
        Some(ChangeRequestPhase::Rejected) => true,
        Some(ChangeRequestPhase::Failed) => {
            c.status.as_ref().and_then(|s| s.template_generation) == generation
        }
        _ => false,
    };
    match (last, needed) {
        (Some(c), Some(d)) if scope_digest(c) == Some(d) && stands(c) => {
            Requests::Standing(Arc::clone(c))
        }
        _ => Requests::None,
    }
}

/// The digest of the rebuild scope the current revision needs: only when
/// it is non-compliant, judged on loaded advisory data, on a valid
/// platform, and some missing fix has a version to build with.
fn needed_digest(t: &Template, current: &Current) -> Option<String> {
    let evaluation = &current.judged.evaluation;
    let family = current
        .family
        .filter(|_| is_non_compliant(evaluation.state) && current.waiting.is_none())?;
    let base_image = image(t);
    change::scope(evaluation, family, &build_inputs(t, &base_image)).map(|(s, _)| s.digest)
}

fn is_non_compliant(state: ComplianceState) -> bool {
    matches!(state, ComplianceState::Pending | ComplianceState::Overdue)
}

async fn reconcile_inner(t: Arc<Template>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    let shared = &scope.shared;
    let ns = t.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let now = now();
    let current = judge_current(scope, &t, &ns, now);
    let needed = needed_digest(&t, &current);
    // A rebuild with unusable Job templates would only fail: no request
    // opens until the spec is fixed (Ready says what is wrong).
    let invalid = validate(&t);
    let opening = needed.as_deref().filter(|_| invalid.is_empty());
    let requested = open_request(scope, &t, &ns, needed.as_deref(), opening).await?;
    retire_closed_requests(scope, &t, &ns, &requested.list).await?;
    let facts = Facts {
        current: &current,
        requests: &requested.state,
        invalid: &invalid,
        needed: needed.is_some(),
        stale_workloads: stale_workloads(scope, &ns, &t.name_any(), revision(&t)),
    };
    let decided = decide(&t, &facts, now);
    let written = update_status(scope, &t, &ns, &decided.status).await?;
    let counted_by = if written {
        current.judged.policies.as_slice()
    } else {
        &[]
    };
    wake_followers(scope, &t, &ns, counted_by, &requested.state);
    if let Some(n) = decided.compliance_event {
        shared
            .event(t.as_ref(), n.warning, n.reason, n.message)
            .await;
    }
    if let Some(cr) = &requested.opened {
        let state = current.judged.evaluation.state;
        let message = format!(
            "revision {} is {state}: opened ChangeRequest {cr}",
            revision(&t)
        );
        shared
            .event(t.as_ref(), true, "ChangeRequestOpened", message)
            .await;
    }
    Ok(Action::requeue(requeue_at(
        decided.wake,
        now,
        shared.settings.max_requeue,
    )))
}

/// The Template's requests after [`open_request`]: all of them (oldest
/// first), what they say, and the name of the one opened now.
struct Requested {
    list: Vec<Arc<ChangeRequest>>,
    state: Requests,
    opened: Option<String>,
}

/// The Template's requests, opening one when `opening` (the digest of the
/// scope needed, when a request may open) and none stands for `needed`.
async fn open_request(
    scope: &Scope,
    t: &Template,
    ns: &str,
    needed: Option<&str>,
    opening: Option<&str>,
) -> Result<Requested, Error> {
    let generation = t.metadata.generation;
    let list = change_requests_of(scope, t, ns);
    let state = requests(&list, needed, generation);
    if !matches!(state, Requests::None) || opening.is_none() {
        return Ok(Requested {
            list,
            state,
            opened: None,
        });
    }
    // The cache may lag a create (ours, or before a restart): ask the
    // apiserver before creating.
    let api: Api<ChangeRequest> = Api::namespaced(scope.shared.client.clone(), ns);
    let list = live_change_requests(&api, t).await?;
    let state = requests(&list, needed, generation);
    if !matches!(state, Requests::None) {
        return Ok(Requested {
            list,
            state,
            opened: None,
        });
    }
    let created = create_request(&api, t, &t.name_any()).await?;
    failpoint::exit_if(failpoint::EXIT_AFTER_CHANGE_REQUEST_CREATE);
    Ok(Requested {
        list,
        opened: Some(created.name_any()),
        state: Requests::Open(Arc::new(created)),
    })
}

/// What the Template's status is decided from, besides the Template.
struct Facts<'a> {
    current: &'a Current,
    requests: &'a Requests,
    /// What is wrong with the Job templates ([`validate`]).
    invalid: &'a [String],
    /// A rebuild is needed (some missing fix has a version to build with).
    needed: bool,
    stale_workloads: i32,
}

/// What a Template's reconcile decided: its status (this writer's fields),
/// the Event for a change of its Compliant condition, and when to look
/// again.
struct Decided {
    status: TemplateStatus,
    compliance_event: Option<Notice>,
    wake: Option<Timestamp>,
}

/// The Template's status from its judgement and its requests (pure). While
/// the platform's advisory data loads the earlier verdict is kept.
fn decide(t: &Template, facts: &Facts<'_>, now: Timestamp) -> Decided {
    let previous = t.status.clone().unwrap_or_default();
    let generation = t.metadata.generation;
    let rev = revision(t);
    let current = facts.current;
    let evaluation = &current.judged.evaluation;
    let invalid = (!facts.invalid.is_empty()).then(|| ("InvalidSpec", facts.invalid.join("; ")));
    let evaluated = format!("revision {rev} was judged; see Compliant for the verdict");
    let ready = ready_condition(evaluation, invalid, &evaluated);
    let verdict = verdict(&previous, current, rev);
    let desired = [
        ready,
        verdict.condition,
        change_request_condition(facts, is_non_compliant(evaluation.state)),
    ];
    let (conditions, transitions) =
        conditions::merge(&previous.conditions, &desired, generation, &time(now));
    let compliance_event = transitions
        .contains(&types::COMPLIANT)
        .then(|| compliance_notice(&conditions))
        .flatten();
    let status = TemplateStatus {
        observed_generation: generation,
        conditions,
        // Written by the change reconciler at publication; never sent here.
        revision: None,
        image: None,
        history: Vec::new(),
        compliance: verdict.compliance,
        findings: verdict.findings,
        findings_truncated: verdict.truncated,
        inventory: current
            .inventory
            .as_deref()
            .map(|i| inventory_reference(i, false)),
        change_request: match facts.requests {
            Requests::Open(c) => Some(c.name_any()),
            _ => None,
        },
        stale_workloads: facts.stale_workloads,
    };
    let wake = [evaluation.next_change, current.waiting]
        .into_iter()
        .flatten()
        .min();
    Decided {
        status,
        compliance_event,
        wake,
    }
}

/// The verdict of revision `rev` to write: the current one, or the earlier
/// one while the platform's advisory data loads.
fn verdict(previous: &TemplateStatus, current: &Current, rev: i64) -> Verdict {
    match current.waiting {
        Some(_) => Verdict::kept(
            previous.compliance.clone(),
            previous.findings.clone(),
            previous.findings_truncated,
            &previous.conditions,
        ),
        None => Verdict::of(&current.judged.evaluation, &format!("revision {rev}: ")),
    }
}

/// The Event announcing the Compliant condition as it now is (none while it
/// is Unknown).
fn compliance_notice(conditions: &[Condition]) -> Option<Notice> {
    let c = conditions::find(conditions, types::COMPLIANT).filter(|c| c.status != "Unknown")?;
    let warning = c.status == "False";
    Some(Notice {
        warning,
        reason: if warning { "NonCompliant" } else { "Compliant" },
        message: c.message.clone(),
    })
}

/// ChangeRequestOpen: the open request, the closed one that stands, or why
/// none is open.
fn change_request_condition(facts: &Facts<'_>, non_compliant: bool) -> DesiredCondition {
    let (status, reason, message) = match facts.requests {
        Requests::Open(c) => (
            ConditionStatus::True,
            "Open".to_owned(),
            format!(
                "ChangeRequest {} is {}",
                c.name_any(),
                phase(c).map_or("opening".to_owned(), |p| format!("{p:?}"))
            ),
        ),
        Requests::Standing(c) => {
            let phase = phase(c).unwrap_or(ChangeRequestPhase::Rejected);
            let name = c.name_any();
            (
                ConditionStatus::False,
                format!("{phase:?}"),
                format!(
                    "ChangeRequest {name} was {phase:?} for these very findings: the Template stays non-compliant; a new request opens when the findings change (or delete {name} to retry)"
                ),
            )
        }
        Requests::None => {
            let (reason, message) = why_no_request(facts, non_compliant);
            (
                ConditionStatus::False,
                reason.to_owned(),
                message.to_owned(),
            )
        }
    };
    DesiredCondition::new(types::CHANGE_REQUEST_OPEN, status, reason, message)
}

/// Why no request is open or stands: (reason, message).
fn why_no_request(facts: &Facts<'_>, non_compliant: bool) -> (&'static str, &'static str) {
    if facts.needed && !facts.invalid.is_empty() {
        (
            "InvalidSpec",
            "no ChangeRequest opens until the Job templates are fixed (see Ready)",
        )
    } else if non_compliant && facts.current.waiting.is_some() {
        (
            "AwaitingAdvisoryData",
            "advisory data for this platform is still loading",
        )
    } else if non_compliant {
        (
            "NothingToInstall",
            "no missing fix has a fixed version to build with",
        )
    } else {
        ("NotNeeded", "the current revision needs no rebuild")
    }
}

/// Writes this writer's fields of the Template's status when they changed;
/// whether it wrote.
async fn update_status(
    scope: &Scope,
    t: &Template,
    ns: &str,
    own: &TemplateStatus,
) -> Result<bool, Error> {
    let previous = t.status.clone().unwrap_or_default();
    let compared = TemplateStatus {
        revision: previous.revision,
        image: previous.image.clone(),
        history: previous.history.clone(),
        ..own.clone()
    };
    if compared == previous {
        return Ok(false);
    }
    let shared = &scope.shared;
    let api: Api<Template> = Api::namespaced(shared.client.clone(), ns);
    // Only this writer's fields count as dropped (never revision, image,
    // history: the change reconciler's).
    let mine = TemplateStatus {
        revision: None,
        image: None,
        history: Vec::new(),
        ..previous
    };
    let name = t.name_any();
    write_status(shared, &api, &name, "template", MANAGER, own, &mine, None).await?;
    Ok(true)
}

/// Wakes what follows the Template: the policies counting it when its
/// status was written (`counted_by`), its open request (its scope follows
/// the findings until the build), and the Inventories naming it (they may
/// have waited for it to exist).
fn wake_followers(
    scope: &Scope,
    t: &Template,
    ns: &str,
    counted_by: &[Arc<PatchPolicy>],
    requests: &Requests,
) {
    let open = match requests {
        Requests::Open(c) => Some(c.as_ref()),
        _ => None,
    };
    triggers::template_written(scope, counted_by, open);
    if t.status.is_none() {
        triggers::inventories_of(scope, ns, SubjectKind::Template, &t.name_any());
    }
}

/// Deletes the closed requests of `t` beyond `spec.keepClosedChangeRequests`
/// (oldest first), each with its build-result Inventory (by its one name;
/// the Jobs go with the request, which owns them). Closed requests and
/// results would otherwise grow with every rebuild forever. Only requests
/// that recorded this Template's uid are retired (an approver may edit a
/// closed request's `spec.template`; that does not make it this
/// Template's), and never one that published a revision or whose result
/// any Template of the namespace names in its history (read live before
/// anything is deleted). A closed request that recorded no Template uid
/// (closed before requests recorded one) is kept.
async fn retire_closed_requests(
    scope: &Scope,
    t: &Template,
    ns: &str,
    list: &[Arc<ChangeRequest>],
) -> Result<(), Error> {
    let keep = t
        .spec
        .keep_closed_change_requests
        .unwrap_or(DEFAULT_KEEP_CLOSED_CHANGE_REQUESTS);
    let keep = usize::try_from(keep).unwrap_or(1);
    let uid = t.uid();
    let ours: Vec<&ChangeRequest> = list
        .iter()
        .map(AsRef::as_ref)
        .filter(|c| is_closed(phase(c)))
        .filter(|c| uid.is_some() && c.status.as_ref().and_then(|s| s.template_uid.clone()) == uid)
        .collect();
    if to_retire(&ours, keep, &t.status.iter().collect::<Vec<_>>()).is_empty() {
        return Ok(());
    }
    let templates: Api<Template> = Api::namespaced(scope.shared.client.clone(), ns);
    let all = templates.list(&ListParams::default()).await?.items;
    let histories: Vec<&TemplateStatus> = all.iter().filter_map(|t| t.status.as_ref()).collect();
    for name in to_retire(&ours, keep, &histories) {
        delete_request_and_result(scope, ns, &name).await?;
        tracing::info!(template = %t.name_any(), change_request = %name, keep, "closed ChangeRequest retired");
    }
    Ok(())
}

/// The closed requests (`ours`, oldest first) to retire beyond `keep`,
/// never one that published or whose result a status's history names.
fn to_retire(ours: &[&ChangeRequest], keep: usize, histories: &[&TemplateStatus]) -> Vec<String> {
    let named = |c: &ChangeRequest| {
        let name = c.metadata.name.as_deref();
        let result = name.map(result_inventory_name);
        histories.iter().flat_map(|s| &s.history).any(|h| {
            (h.change_request.is_some() && h.change_request.as_deref() == name)
                || (h.inventory.is_some() && h.inventory == result)
        })
    };
    let closed: Vec<change::Closed<'_>> = ours
        .iter()
        .map(|c| change::Closed {
            name: c.metadata.name.as_deref().unwrap_or_default(),
            published: phase(c) == Some(ChangeRequestPhase::Published) || named(c),
        })
        .collect();
    change::to_retire(&closed, keep)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Deletes a closed request's build-result Inventory, then the request (an
/// object already gone counts as deleted).
async fn delete_request_and_result(scope: &Scope, ns: &str, name: &str) -> Result<(), Error> {
    let requests: Api<ChangeRequest> = Api::namespaced(scope.shared.client.clone(), ns);
    let inventories: Api<Inventory> = Api::namespaced(scope.shared.client.clone(), ns);
    let result = result_inventory_name(name);
    for deleted in [
        inventories
            .delete(&result, &DeleteParams::background())
            .await
            .map(|_| ()),
        requests
            .delete(name, &DeleteParams::background())
            .await
            .map(|_| ()),
    ] {
        match deleted {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Creates a ChangeRequest for the Template: a generated name, linked by the
/// label, not owned by the Template (it is the audit trail).
async fn create_request(
    api: &Api<ChangeRequest>,
    t: &Template,
    name: &str,
) -> Result<ChangeRequest, Error> {
    let prefix: String = name.chars().take(57).collect();
    let cr = ChangeRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", prefix.trim_end_matches(['-', '.']))),
            namespace: t.namespace(),
            labels: Some(BTreeMap::from([
                (TEMPLATE_LABEL.to_owned(), jobs::label_value(name)),
                (
                    jobs::MANAGED_BY_LABEL.to_owned(),
                    jobs::MANAGED_BY.to_owned(),
                ),
            ])),
            ..Default::default()
        },
        spec: ChangeRequestSpec {
            template: name.to_owned(),
            decision: None,
        },
        status: None,
    };
    Ok(api.create(&PostParams::default(), &cr).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TemplateSpec;
    use serde_json::json;

    fn template(build: Option<serde_json::Value>, test: Option<serde_json::Value>) -> Template {
        Template::new(
            "base",
            TemplateSpec {
                platform: "Debian:12".into(),
                image: "registry.example/base:1".into(),
                build_job_template: build,
                test_job_template: test,
                keep_closed_change_requests: None,
            },
        )
    }

    fn request(
        name: &str,
        phase: Option<ChangeRequestPhase>,
        digest: &str,
        generation: i64,
    ) -> Arc<ChangeRequest> {
        let mut c = ChangeRequest::new(
            name,
            ChangeRequestSpec {
                template: "base".into(),
                decision: None,
            },
        );
        c.status = Some(crate::api::ChangeRequestStatus {
            phase,
            scope: Some(crate::api::change_request::Scope {
                digest: digest.into(),
                ..Default::default()
            }),
            template_generation: Some(generation),
            ..Default::default()
        });
        Arc::new(c)
    }

    #[test]
    fn the_build_inputs_follow_the_spec_and_the_published_revision_only() {
        let build = json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "builder:1"}]}}}});
        let test = json!({"spec": {"template": {"spec": {"containers": [{"name": "t", "image": "tester:1"}]}}}});
        let t = template(Some(build.clone()), Some(test.clone()));
        let digest = |t: &Template| build_inputs(t, &image(t)).digest();
        let base = digest(&t);
        // Status other than the published revision and image: no change.
        let mut judged = t.clone();
        judged.status = Some(TemplateStatus {
            observed_generation: Some(7),
            compliance: Some(Default::default()),
            change_request: Some("base-x".into()),
            stale_workloads: 4,
            findings_truncated: 2,
            ..Default::default()
        });
        judged.metadata.resource_version = Some("99".into());
        assert_eq!(digest(&judged), base);
        // Every spec field that makes the Jobs, and the published revision.
        let mut edits: Vec<Template> = Vec::new();
        let mut e = t.clone();
        e.spec.image = "registry.example/base:2".into();
        edits.push(e);
        let mut e = t.clone();
        e.spec.platform = "Debian:13".into();
        edits.push(e);
        let mut e = t.clone();
        e.spec.build_job_template = Some(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "builder:evil"}]}}}}),
        );
        edits.push(e);
        let mut e = t.clone();
        e.spec.test_job_template = None;
        edits.push(e);
        let mut e = t.clone();
        e.status = Some(TemplateStatus {
            revision: Some(2),
            image: Some("registry.example/base@sha256:22".into()),
            ..Default::default()
        });
        edits.push(e);
        for e in &edits {
            assert_ne!(digest(e), base, "{:?}", e.spec);
        }
    }

    #[test]
    fn closed_requests_stand_only_for_their_findings() {
        use ChangeRequestPhase::*;
        let name = |r: Requests| match r {
            Requests::Open(c) => format!("open {}", c.name_any()),
            Requests::Standing(c) => format!("standing {}", c.name_any()),
            Requests::None => "none".into(),
        };
        let rejected = request("a", Some(Rejected), "d1", 1);
        let open = request("b", Some(AwaitingApproval), "d2", 1);
        let fresh = request("c", None, "", 1);
        assert_eq!(
            name(requests(&[rejected.clone(), open], Some("d2"), Some(1))),
            "open b"
        );
        assert_eq!(name(requests(&[fresh], Some("d2"), Some(1))), "open c");
        assert_eq!(
            name(requests(
                std::slice::from_ref(&rejected),
                Some("d1"),
                Some(1)
            )),
            "standing a"
        );
        assert_eq!(
            name(requests(
                std::slice::from_ref(&rejected),
                Some("d2"),
                Some(1)
            )),
            "none"
        );
        // A failure stands until the Template's spec changes.
        let failed = request("f", Some(Failed), "d1", 1);
        assert_eq!(
            name(requests(std::slice::from_ref(&failed), Some("d1"), Some(1))),
            "standing f"
        );
        assert_eq!(name(requests(&[failed], Some("d1"), Some(2))), "none");
        // A later publication supersedes an old rejection.
        let published = request("p", Some(Published), "d3", 1);
        assert_eq!(
            name(requests(&[rejected, published], Some("d1"), Some(1))),
            "none"
        );
    }

    #[test]
    fn job_templates_are_validated_naming_the_field() {
        let good =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "x"}]}}}});
        assert!(validate(&template(Some(good.clone()), Some(good.clone()))).is_empty());
        let errors = validate(&template(
            None,
            Some(json!({"spec": {"template": {"spec": {"containers": []}}}})),
        ));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("spec.buildJobTemplate: missing"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("spec.testJobTemplate.spec.template.spec.containers"),
            "{errors:?}"
        );
        let errors = validate(&template(Some(json!({"spec": 3})), Some(good)));
        assert!(
            errors[0].contains("spec.buildJobTemplate: not a batch/v1 JobTemplateSpec"),
            "{errors:?}"
        );
    }

    /// The current revision of `template("Debian:12")` judged with no
    /// inventory, no policies and no advisory data.
    fn current(waiting: Option<Timestamp>) -> Current {
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("now");
        let evaluation = crate::engine::evaluate::evaluate(&crate::engine::evaluate::Input {
            detail: crate::engine::evaluate::Detail::Actionable,
            platform: "Debian:12",
            policies: &[],
            exceptions: &[],
            inventory: None,
            advisories: &crate::engine::advisory::AdvisoryDb::default(),
            now,
        });
        Current {
            judged: Judged {
                evaluation,
                policies: Vec::new(),
            },
            inventory: None,
            waiting,
            family: Some(Ecosystem::Dpkg),
        }
    }

    fn facts<'a>(current: &'a Current, requests: &'a Requests, invalid: &'a [String]) -> Facts<'a> {
        Facts {
            current,
            requests,
            invalid,
            needed: false,
            stale_workloads: 3,
        }
    }

    fn condition(status: &TemplateStatus, type_: &str) -> (String, String) {
        let c = conditions::find(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_}"));
        (c.status.clone(), c.reason.clone())
    }

    fn now() -> Timestamp {
        "2026-12-05T10:00:00Z".parse().expect("now")
    }

    #[test]
    fn a_template_without_inventory_is_unknown_and_needs_no_request() {
        let t = template(None, None);
        let current = current(None);
        let decided = decide(&t, &facts(&current, &Requests::None, &[]), now());
        let s = &decided.status;
        assert_eq!(
            condition(s, types::READY),
            ("True".into(), "Evaluated".into())
        );
        assert_eq!(
            condition(s, types::COMPLIANT),
            ("Unknown".into(), "NoInventory".into())
        );
        assert_eq!(
            condition(s, types::CHANGE_REQUEST_OPEN),
            ("False".into(), "NotNeeded".into())
        );
        assert_eq!(
            (s.stale_workloads, s.revision, s.change_request.clone()),
            (3, None, None)
        );
        assert!(decided.compliance_event.is_none(), "no Event for Unknown");
        assert_eq!(decided.wake, None);
    }

    #[test]
    fn invalid_job_templates_hold_back_a_needed_request() {
        let t = template(None, None);
        let current = current(None);
        let invalid = vec!["spec.buildJobTemplate: missing".to_owned()];
        let facts = Facts {
            needed: true,
            ..facts(&current, &Requests::None, &invalid)
        };
        let s = decide(&t, &facts, now()).status;
        assert_eq!(
            condition(&s, types::READY),
            ("False".into(), "InvalidSpec".into())
        );
        assert_eq!(
            condition(&s, types::CHANGE_REQUEST_OPEN),
            ("False".into(), "InvalidSpec".into())
        );
    }

    #[test]
    fn the_start_up_grace_keeps_the_verdict_and_wakes_when_it_ends() {
        let mut t = template(None, None);
        t.status = Some(TemplateStatus {
            compliance: Some(Default::default()),
            findings_truncated: 7,
            ..Default::default()
        });
        let end: Timestamp = "2026-12-05T10:05:00Z".parse().expect("grace end");
        let current = current(Some(end));
        let decided = decide(&t, &facts(&current, &Requests::None, &[]), now());
        assert_eq!(decided.status.compliance, Some(Default::default()));
        assert_eq!(decided.status.findings_truncated, 7);
        assert_eq!(
            condition(&decided.status, types::COMPLIANT),
            ("Unknown".into(), "AwaitingAdvisoryData".into())
        );
        assert_eq!(decided.wake, Some(end));
    }

    #[test]
    fn the_request_condition_names_the_open_or_standing_request() {
        let t = template(None, None);
        let current = current(None);
        let open = Requests::Open(request("base-x", None, "", 1));
        let s = decide(&t, &facts(&current, &open, &[]), now()).status;
        assert_eq!(s.change_request.as_deref(), Some("base-x"));
        let c = conditions::find(&s.conditions, types::CHANGE_REQUEST_OPEN).expect("condition");
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("Open", "ChangeRequest base-x is opening")
        );
        let standing = Requests::Standing(request(
            "base-y",
            Some(ChangeRequestPhase::Rejected),
            "d1",
            1,
        ));
        let s = decide(&t, &facts(&current, &standing, &[]), now()).status;
        assert_eq!(s.change_request, None);
        assert_eq!(
            condition(&s, types::CHANGE_REQUEST_OPEN),
            ("False".into(), "Rejected".into())
        );
    }

    #[test]
    fn a_compliant_transition_is_announced_once() {
        let mut t = template(None, None);
        let mut current = current(None);
        current.judged.evaluation.unknown = None;
        current.judged.evaluation.state = ComplianceState::Compliant;
        let decided = decide(&t, &facts(&current, &Requests::None, &[]), now());
        let event = decided.compliance_event.expect("an Event");
        assert_eq!((event.warning, event.reason), (false, "Compliant"));
        assert!(
            event.message.starts_with("revision 1: "),
            "{}",
            event.message
        );
        t.status = Some(decided.status);
        let again = decide(&t, &facts(&current, &Requests::None, &[]), now());
        assert!(again.compliance_event.is_none());
    }

    #[test]
    fn published_or_history_named_requests_are_never_retired() {
        use ChangeRequestPhase::*;
        let closed = [
            request("a", Some(Rejected), "d1", 1),
            request("b", Some(Published), "d2", 1),
            request("c", Some(Failed), "d3", 1),
            request("d", Some(Rejected), "d4", 1),
        ];
        let ours: Vec<&ChangeRequest> = closed.iter().map(AsRef::as_ref).collect();
        let history = TemplateStatus {
            history: vec![crate::api::template::TemplateRevision {
                revision: 2,
                image: "registry.example/base@sha256:22".into(),
                inventory: Some(result_inventory_name("c")),
                published_at: None,
                change_request: None,
            }],
            ..Default::default()
        };
        assert_eq!(to_retire(&ours, 1, &[]), vec!["a", "c"]);
        assert_eq!(to_retire(&ours, 1, &[&history]), vec!["a"]);
        assert!(to_retire(&ours, 4, &[&history]).is_empty());
    }
}
