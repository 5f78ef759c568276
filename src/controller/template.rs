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

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::advisories::DataState;
use super::scope::Scope;
use super::triggers;
use super::{Error, failpoint, jobs, now, observed, requeue_at, write_status};
use crate::api::change_request::{ChangeRequestPhase, TEMPLATE_LABEL, result_inventory_name};
use crate::api::common::{ComplianceState, InventoryReference, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::{InventorySubject, SubjectKind};
use crate::api::policy::{PatchPolicySpec, TemplateApproval, TemplateCounts};
use crate::api::template::DEFAULT_KEEP_CLOSED_CHANGE_REQUESTS;
use crate::api::{
    ChangeRequest, ChangeRequestSpec, Inventory, PatchPolicy, Template, TemplateStatus,
};
use crate::engine::change::{self, is_closed};
use crate::engine::evaluate::{
    self, Detail, Evaluation, ExceptionRef, Input, InventoryInput, PolicyRef, RemediationChoice,
    STATUS_FINDINGS_CAP, UnknownCause,
};
use crate::engine::inventory::{InstalledPackage, parse_subject_list};
use crate::engine::selector;
use crate::engine::version::parse_platform;

/// The field manager of Template status (all but revision, image, history).
pub const MANAGER: &str = "patchloop-template";

/// The published revision of a Template (1 until a rebuild is published).
pub fn revision(t: &Template) -> i64 {
    t.status.as_ref().and_then(|s| s.revision).unwrap_or(1)
}

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

/// The Inventory describing one revision of a Template: the build result
/// `history` names for it, else (revision 1) the newest Inventory with
/// subject Template and that revision.
pub fn revision_inventory(
    scope: &Scope,
    t: &Template,
    ns: &str,
    revision: i64,
) -> Option<Arc<Inventory>> {
    let from_history = t
        .status
        .as_ref()
        .and_then(|s| s.history.iter().find(|h| h.revision == revision))
        .and_then(|h| h.inventory.as_ref());
    if let Some(name) = from_history {
        return scope.inventories.get(&ObjectRef::new(name).within(ns));
    }
    scope.inventory_for(
        ns,
        &InventorySubject {
            kind: SubjectKind::Template,
            name: t.name_any(),
            revision: Some(revision),
        },
    )
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
    let labels = t.labels().clone();
    let policies = scope.matching_policies(ns, &labels);
    let exceptions = scope.matching_exceptions(ns, &labels);
    let policy_refs: Vec<PolicyRef<'_>> = policies.iter().map(|p| PolicyRef::of(p)).collect();
    let exception_refs: Vec<ExceptionRef<'_>> =
        exceptions.iter().map(|e| ExceptionRef::of(e)).collect();
    let db = scope.shared.advisories.db();
    let evaluation = evaluate::evaluate(&Input {
        detail: Detail::Actionable,
        platform: &t.spec.platform,
        policies: &policy_refs,
        exceptions: &exception_refs,
        inventory: packages.map(|packages| InventoryInput {
            packages,
            collected_at: now,
            ages: false,
            provisional: false,
        }),
        advisories: &db,
        now,
    });
    Judged {
        evaluation,
        policies,
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
}

/// Judges the Template's published revision.
pub fn judge_current(scope: &Scope, t: &Template, ns: &str, now: Timestamp) -> Current {
    let inventory = revision_inventory(scope, t, ns, revision(t));
    let parsed = inventory.as_ref().map(|i| {
        let platform = parse_platform(&t.spec.platform).ok().map(|p| p.family);
        parse_subject_list(platform, i.spec.format.into(), &i.spec.packages)
    });
    let packages = match &parsed {
        Some(Ok(p)) => Some(p.as_slice()),
        _ => None,
    };
    let mut judged = judge(scope, t, ns, packages, now);
    if let (Some(i), Some(Err(e))) = (&inventory, &parsed)
        && !matches!(
            judged.evaluation.unknown,
            Some(UnknownCause::UnknownPlatform(_))
        )
    {
        judged.evaluation.unknown = Some(UnknownCause::InvalidInventory(format!(
            "Inventory {}: spec.{e}",
            i.name_any()
        )));
        judged.evaluation.state = ComplianceState::Unknown;
    }
    let waiting = parse_platform(&t.spec.platform).ok().and_then(|p| {
        match scope.shared.advisories.data_state(p.osv_ecosystem(), now) {
            DataState::Waiting(until) => Some(until),
            _ => None,
        }
    });
    Current {
        judged,
        inventory,
        waiting,
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
    out.sort_by_key(|c| {
        (
            c.metadata.creation_timestamp.as_ref().map(|t| t.0),
            c.name_any(),
        )
    });
    out
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

async fn reconcile_inner(t: Arc<Template>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    let shared = &scope.shared;
    let ns = t.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = t.name_any();
    let now = now();
    let previous = t.status.clone().unwrap_or_default();
    let generation = t.metadata.generation;
    let rev = revision(&t);

    let current = judge_current(scope, &t, &ns, now);
    let evaluation = &current.judged.evaluation;
    let family = parse_platform(&t.spec.platform).ok().map(|p| p.family);
    let non_compliant = matches!(
        evaluation.state,
        ComplianceState::Pending | ComplianceState::Overdue
    );
    let base_image = image(&t);
    let needed = family
        .filter(|_| non_compliant && current.waiting.is_none())
        .and_then(|f| change::scope(evaluation, f, &build_inputs(&t, &base_image)))
        .map(|(s, _)| s);
    // A rebuild with unusable Job templates would only fail: no request
    // opens until the spec is fixed (Ready says what is wrong).
    let invalid = validate(&t);

    // The request: open one when needed and none stands.
    let mut list = change_requests_of(scope, &t, &ns);
    let mut state = requests(
        &list,
        needed.as_ref().map(|s| s.digest.as_str()),
        generation,
    );
    let mut opened = None;
    if matches!(state, Requests::None) && needed.is_some() && invalid.is_empty() {
        // The cache may lag a create (ours, or before a restart): ask the
        // apiserver before creating.
        let api: Api<ChangeRequest> = Api::namespaced(shared.client.clone(), &ns);
        let live = api
            .list(
                &ListParams::default()
                    .labels(&format!("{TEMPLATE_LABEL}={}", jobs::label_value(&name))),
            )
            .await?;
        list = live
            .items
            .into_iter()
            .filter(|c| c.spec.template == name)
            .filter(|c| bound_to(c, t.uid().as_deref()))
            .map(Arc::new)
            .collect();
        list.sort_by_key(|c| {
            (
                c.metadata.creation_timestamp.as_ref().map(|t| t.0),
                c.name_any(),
            )
        });
        state = requests(
            &list,
            needed.as_ref().map(|s| s.digest.as_str()),
            generation,
        );
        if matches!(state, Requests::None) {
            let created = create_request(&api, &t, &name).await?;
            failpoint::exit_if(failpoint::EXIT_AFTER_CHANGE_REQUEST_CREATE);
            opened = Some(created.name_any());
            state = Requests::Open(Arc::new(created));
        }
    }

    retire_closed_requests(scope, &t, &ns, &list).await?;

    // Status.
    let mut desired = vec![match &evaluation.unknown {
        Some(UnknownCause::UnknownPlatform(_)) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidPlatform",
            evaluation.reason(),
        ),
        _ if !invalid.is_empty() => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidSpec",
            invalid.join("; "),
        ),
        _ => DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Evaluated",
            format!("revision {rev} was judged; see Compliant for the verdict"),
        ),
    }];
    let keep = current.waiting.is_some();
    let (compliance, findings, truncated) = if keep {
        (
            previous.compliance.clone(),
            previous.findings.clone(),
            previous.findings_truncated,
        )
    } else {
        let (f, n) = evaluation.status_findings(STATUS_FINDINGS_CAP);
        (Some(evaluation.summary()), f, n)
    };
    let compliant = match (keep, evaluation.state) {
        (true, _) => conditions::find(&previous.conditions, types::COMPLIANT)
            .map(|c| {
                DesiredCondition::new(
                    types::COMPLIANT,
                    match c.status.as_str() {
                        "True" => ConditionStatus::True,
                        "False" => ConditionStatus::False,
                        _ => ConditionStatus::Unknown,
                    },
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .unwrap_or_else(|| {
                DesiredCondition::new(
                    types::COMPLIANT,
                    ConditionStatus::Unknown,
                    "AwaitingAdvisoryData",
                    "advisory data for this platform is still loading",
                )
            }),
        (false, ComplianceState::Compliant | ComplianceState::Exempt) => DesiredCondition::new(
            types::COMPLIANT,
            ConditionStatus::True,
            evaluation.state.to_string(),
            format!("revision {rev}: {}", evaluation.reason()),
        ),
        (false, ComplianceState::Pending) => DesiredCondition::new(
            types::COMPLIANT,
            ConditionStatus::False,
            "FixesPending",
            format!("revision {rev}: {}", evaluation.reason()),
        ),
        (false, ComplianceState::Overdue) => DesiredCondition::new(
            types::COMPLIANT,
            ConditionStatus::False,
            "FixesOverdue",
            format!("revision {rev}: {}", evaluation.reason()),
        ),
        (false, ComplianceState::Unknown) => DesiredCondition::new(
            types::COMPLIANT,
            ConditionStatus::Unknown,
            evaluation
                .unknown
                .as_ref()
                .map_or("Unknown", UnknownCause::reason),
            evaluation.reason(),
        ),
    };
    desired.push(compliant);
    let open_name = match &state {
        Requests::Open(c) => Some(c.name_any()),
        _ => None,
    };
    desired.push(match &state {
        Requests::Open(c) => DesiredCondition::new(
            types::CHANGE_REQUEST_OPEN,
            ConditionStatus::True,
            "Open",
            format!(
                "ChangeRequest {} is {}",
                c.name_any(),
                phase(c).map_or("opening".to_owned(), |p| format!("{p:?}"))
            ),
        ),
        Requests::Standing(c) => DesiredCondition::new(
            types::CHANGE_REQUEST_OPEN,
            ConditionStatus::False,
            format!("{:?}", phase(c).unwrap_or(ChangeRequestPhase::Rejected)),
            format!(
                "ChangeRequest {} was {:?} for these very findings: the Template stays non-compliant; a new request opens when the findings change (or delete {} to retry)",
                c.name_any(),
                phase(c).unwrap_or(ChangeRequestPhase::Rejected),
                c.name_any()
            ),
        ),
        Requests::None if needed.is_some() && !invalid.is_empty() => DesiredCondition::new(
            types::CHANGE_REQUEST_OPEN,
            ConditionStatus::False,
            "InvalidSpec",
            "no ChangeRequest opens until the Job templates are fixed (see Ready)",
        ),
        Requests::None if non_compliant && keep => DesiredCondition::new(
            types::CHANGE_REQUEST_OPEN,
            ConditionStatus::False,
            "AwaitingAdvisoryData",
            "advisory data for this platform is still loading",
        ),
        Requests::None if non_compliant => DesiredCondition::new(
            types::CHANGE_REQUEST_OPEN,
            ConditionStatus::False,
            "NothingToInstall",
            "no missing fix has a fixed version to build with",
        ),
        Requests::None => DesiredCondition::new(
            types::CHANGE_REQUEST_OPEN,
            ConditionStatus::False,
            "NotNeeded",
            "the current revision needs no rebuild",
        ),
    });
    let (conds, transitions) =
        conditions::merge(&previous.conditions, &desired, generation, &time(now));
    let own = TemplateStatus {
        observed_generation: generation,
        conditions: conds,
        // Written by the change reconciler at publication; never sent here.
        revision: None,
        image: None,
        history: Vec::new(),
        compliance,
        findings,
        findings_truncated: truncated,
        inventory: current.inventory.as_ref().map(|i| InventoryReference {
            name: Some(i.name_any()),
            reported_at: Some(time(i.spec.reported_at.0)),
            generation: i.metadata.generation,
            packages: i32::try_from(i.spec.packages.len()).unwrap_or(i32::MAX),
            provisional: false,
        }),
        change_request: open_name,
        stale_workloads: stale_workloads(scope, &ns, &name, rev),
    };
    let compared = TemplateStatus {
        revision: previous.revision,
        image: previous.image.clone(),
        history: previous.history.clone(),
        ..own.clone()
    };
    if compared != previous {
        let api: Api<Template> = Api::namespaced(shared.client.clone(), &ns);
        // Only this writer's fields count as dropped (never revision, image,
        // history: the change reconciler's).
        let mine = TemplateStatus {
            revision: None,
            image: None,
            history: Vec::new(),
            ..previous.clone()
        };
        write_status(shared, &api, &name, "template", MANAGER, &own, &mine).await?;
        for p in &current.judged.policies {
            let _ = scope
                .triggers
                .policies
                .unbounded_send(ObjectRef::from_obj(p.as_ref()));
        }
    }
    // Inventories naming this Template may have been waiting for it to exist.
    if t.status.is_none() {
        triggers::inventories_of(scope, &ns, SubjectKind::Template, &name);
    }
    // The open request follows the findings (its scope, until the build).
    if let Requests::Open(c) = &state {
        let _ = scope
            .triggers
            .change_requests
            .unbounded_send(ObjectRef::from_obj(c.as_ref()));
    }
    // Events on transitions only.
    if transitions.contains(&types::COMPLIANT)
        && let Some(c) = conditions::find(&own.conditions, types::COMPLIANT)
        && c.status != "Unknown"
    {
        let warning = c.status == "False";
        let reason = if warning { "NonCompliant" } else { "Compliant" };
        shared
            .event(t.as_ref(), warning, reason, c.message.clone())
            .await;
    }
    if let Some(cr) = &opened {
        shared
            .event(
                t.as_ref(),
                true,
                "ChangeRequestOpened",
                format!(
                    "revision {rev} is {}: opened ChangeRequest {cr}",
                    evaluation.state
                ),
            )
            .await;
    }
    let mut next = evaluation.next_change;
    if let Some(w) = current.waiting {
        next = Some(next.map_or(w, |n| n.min(w)));
    }
    Ok(Action::requeue(requeue_at(
        next,
        now,
        shared.settings.max_requeue,
    )))
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
    let retire = |histories: &[&TemplateStatus]| -> Vec<String> {
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
    };
    if retire(&t.status.iter().collect::<Vec<_>>()).is_empty() {
        return Ok(());
    }
    let templates: Api<Template> = Api::namespaced(scope.shared.client.clone(), ns);
    let all = templates.list(&ListParams::default()).await?.items;
    let retired = retire(
        &all.iter()
            .filter_map(|t| t.status.as_ref())
            .collect::<Vec<_>>(),
    );
    let requests: Api<ChangeRequest> = Api::namespaced(scope.shared.client.clone(), ns);
    let inventories: Api<Inventory> = Api::namespaced(scope.shared.client.clone(), ns);
    for name in retired {
        let result = result_inventory_name(&name);
        for deleted in [
            inventories
                .delete(&result, &DeleteParams::background())
                .await
                .map(|_| ()),
            requests
                .delete(&name, &DeleteParams::background())
                .await
                .map(|_| ()),
        ] {
            match deleted {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::info!(template = %t.name_any(), change_request = %name, keep, "closed ChangeRequest retired");
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
}
