//! The workload reconciler: dereference (inventory by subject, matching
//! policies and exceptions, template) → evaluate (engine) → build the status
//! (pure) → apply it only if it changed → Events on transitions → requeue at
//! the engine's next-change instant.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::advisories::DataState;
use super::scope::{Scope, written_at};
use super::{Error, now, observed, requeue_at, write_status};
use crate::api::common::{ComplianceState, InventoryReference, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::SubjectKind;
use crate::api::workload::TemplateStatus;
use crate::api::{Inventory, PatchException, PatchPolicy, Template, Workload, WorkloadStatus};
use crate::engine::evaluate::{
    self, Detail, Evaluation, ExceptionRef, Input, InventoryInput, PolicyRef, RemediationChoice,
    STATUS_FINDINGS_CAP, UnknownCause,
};
use crate::engine::inventory::parse_compact_list;
use crate::engine::version::parse_platform;

/// The field manager of Workload status.
pub const MANAGER: &str = "patchloop-workload";

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
        return Some((
            TemplateStatus {
                name: tref.name.clone(),
                revision: tref.revision,
                latest: None,
                current: false,
            },
            DesiredCondition::new(
                types::TEMPLATE_CURRENT,
                ConditionStatus::Unknown,
                "TemplateNotFound",
                format!(
                    "spec.templateRef: Template {:?} does not exist in this namespace",
                    tref.name
                ),
            ),
        ));
    };
    let latest = template
        .status
        .as_ref()
        .and_then(|s| s.revision)
        .unwrap_or(1);
    let revision = tref.revision.unwrap_or(latest);
    let current = revision >= latest;
    let condition = if current {
        DesiredCondition::new(
            types::TEMPLATE_CURRENT,
            ConditionStatus::True,
            "LatestRevision",
            format!(
                "runs revision {revision} of Template {}, the latest",
                tref.name
            ),
        )
    } else {
        DesiredCondition::new(
            types::TEMPLATE_CURRENT,
            ConditionStatus::False,
            "OlderRevision",
            format!(
                "runs revision {revision} of Template {}, the latest is {latest}: reprovision it",
                tref.name
            ),
        )
    };
    Some((
        TemplateStatus {
            name: tref.name.clone(),
            revision: Some(revision),
            latest: Some(latest),
            current,
        },
        condition,
    ))
}

/// The Workload status the controller wants, from the evaluation; pure.
/// `keep_compliance` holds the earlier verdict (start-up grace period with
/// no advisory data for the platform yet).
pub fn desired_status(
    wl: &Workload,
    evaluation: &Evaluation,
    inventory: Option<&ChosenInventory>,
    template: Option<(TemplateStatus, DesiredCondition)>,
    policies: Vec<String>,
    keep_compliance: bool,
    now: Timestamp,
) -> WorkloadStatus {
    let previous = wl.status.clone().unwrap_or_default();
    let generation = wl.metadata.generation;
    let mut desired: Vec<DesiredCondition> = Vec::new();

    let invalid_platform = matches!(evaluation.unknown, Some(UnknownCause::UnknownPlatform(_)));
    desired.push(if invalid_platform {
        DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidPlatform",
            evaluation.reason(),
        )
    } else {
        DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Evaluated",
            "the spec was processed; see Compliant for the verdict",
        )
    });

    let (compliance, findings, truncated, compliant_condition) = if keep_compliance {
        let kept = conditions::find(&previous.conditions, types::COMPLIANT).map(|c| {
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
        });
        (
            previous.compliance.clone(),
            previous.findings.clone(),
            previous.findings_truncated,
            kept.unwrap_or_else(|| {
                DesiredCondition::new(
                    types::COMPLIANT,
                    ConditionStatus::Unknown,
                    "AwaitingAdvisoryData",
                    "advisory data for this platform is still loading",
                )
            }),
        )
    } else {
        let (findings, truncated) = evaluation.status_findings(STATUS_FINDINGS_CAP);
        let condition = match evaluation.state {
            ComplianceState::Compliant => DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::True,
                "Compliant",
                evaluation.reason(),
            ),
            ComplianceState::Exempt => DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::True,
                "Exempt",
                evaluation.reason(),
            ),
            ComplianceState::Pending => DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::False,
                "FixesPending",
                evaluation.reason(),
            ),
            ComplianceState::Overdue => DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::False,
                "FixesOverdue",
                evaluation.reason(),
            ),
            ComplianceState::Unknown => DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::Unknown,
                evaluation
                    .unknown
                    .as_ref()
                    .map_or("Unknown", UnknownCause::reason),
                evaluation.reason(),
            ),
        };
        (Some(evaluation.summary()), findings, truncated, condition)
    };
    desired.push(compliant_condition);

    desired.push(match (inventory, evaluation.inventory_fresh) {
        (None, _) => DesiredCondition::new(
            types::INVENTORY_FRESH,
            ConditionStatus::Unknown,
            "NoInventory",
            "no Inventory reports this Workload yet",
        ),
        (Some(i), _) if i.provisional => DesiredCondition::new(
            types::INVENTORY_FRESH,
            ConditionStatus::False,
            "Provisional",
            format!(
                "no Inventory of its own yet: judged provisionally by its template revision's Inventory {}",
                i.object.name_any()
            ),
        ),
        (Some(i), Some(false)) => DesiredCondition::new(
            types::INVENTORY_FRESH,
            ConditionStatus::False,
            "InventoryStale",
            format!("Inventory {} is older than inventoryMaxAge", i.object.name_any()),
        ),
        (Some(i), _) => DesiredCondition::new(
            types::INVENTORY_FRESH,
            ConditionStatus::True,
            "InventoryFresh",
            format!("Inventory {} is fresh", i.object.name_any()),
        ),
    });

    desired.push(match &evaluation.remediation {
        RemediationChoice::Conflict(names) => DesiredCondition::new(
            types::CONFLICT,
            ConditionStatus::True,
            "PriorityTie",
            format!(
                "PatchPolicies {} match with the same priority: nothing is remediated until one has a higher priority",
                names.join(", ")
            ),
        ),
        RemediationChoice::Policy(name) => DesiredCondition::new(
            types::CONFLICT,
            ConditionStatus::False,
            "SinglePolicy",
            format!("PatchPolicy {name} drives remediation"),
        ),
        RemediationChoice::None => DesiredCondition::new(
            types::CONFLICT,
            ConditionStatus::False,
            "NoPolicy",
            "no PatchPolicy matches this Workload",
        ),
    });

    let template_status = template.map(|(status, condition)| {
        desired.push(condition);
        status
    });

    let (conditions, _) = conditions::merge(&previous.conditions, &desired, generation, &time(now));
    WorkloadStatus {
        observed_generation: generation,
        conditions,
        compliance,
        findings,
        findings_truncated: truncated,
        remediation: previous.remediation,
        template: template_status,
        inventory: inventory.map(|i| InventoryReference {
            name: Some(i.object.name_any()),
            reported_at: Some(time(i.object.spec.reported_at.0)),
            written_at: written_at(i.object.as_ref()).map(time),
            packages: i32::try_from(i.object.spec.packages.len()).unwrap_or(i32::MAX),
            provisional: i.provisional,
        }),
        policies,
    }
}

/// The Workload's own Inventory, else its template revision's (provisional).
fn choose_inventory(
    scope: &Scope,
    wl: &Workload,
    ns: &str,
    template: Option<&Template>,
) -> Option<ChosenInventory> {
    let own = scope.inventory_for(&(ns.to_owned(), SubjectKind::Workload, wl.name_any()));
    if let Some(object) = own {
        return Some(ChosenInventory {
            object,
            provisional: false,
        });
    }
    let tref = wl.spec.template_ref.as_ref()?;
    let template = template?;
    let revision = tref.revision.unwrap_or_else(|| {
        template
            .status
            .as_ref()
            .and_then(|s| s.revision)
            .unwrap_or(1)
    });
    // A published rebuild records its inventory in history; revision 1's is
    // reported with subject Template and that revision.
    let from_history = template
        .status
        .as_ref()
        .and_then(|s| s.history.iter().find(|h| h.revision == revision))
        .and_then(|h| h.inventory.as_ref())
        .and_then(|name| scope.inventories.get(&ObjectRef::new(name).within(ns)));
    let object = from_history.or_else(|| {
        let names = scope.subjects.read().ok()?.inventories(&(
            ns.to_owned(),
            SubjectKind::Template,
            tref.name.clone(),
        ));
        names
            .iter()
            .filter_map(|n| scope.inventories.get(&ObjectRef::new(n).within(ns)))
            .filter(|i| i.spec.subject.revision.unwrap_or(1) == revision)
            .max_by_key(|i| written_at(i.as_ref()))
    })?;
    Some(ChosenInventory {
        object,
        provisional: true,
    })
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
    scope.caches_ready().await;
    let shared = &scope.shared;
    let ns = wl.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = wl.name_any();
    let now = now();
    let labels = wl.labels().clone();

    // Dereference.
    let policies: Vec<Arc<PatchPolicy>> = scope.matching_policies(&ns, &labels);
    let exceptions: Vec<Arc<PatchException>> = scope.matching_exceptions(&ns, &labels);
    let template = wl
        .spec
        .template_ref
        .as_ref()
        .and_then(|t| scope.templates.get(&ObjectRef::new(&t.name).within(&ns)));
    let chosen = choose_inventory(scope, &wl, &ns, template.as_deref());

    // Evaluate.
    let policy_refs: Vec<PolicyRef<'_>> = policies
        .iter()
        .map(|p| PolicyRef {
            name: p.metadata.name.as_deref().unwrap_or_default(),
            spec: &p.spec,
        })
        .collect();
    let exception_refs: Vec<ExceptionRef<'_>> = exceptions
        .iter()
        .map(|e| ExceptionRef {
            name: e.metadata.name.as_deref().unwrap_or_default(),
            spec: &e.spec,
            created: e.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
        .collect();
    let db = shared.advisories.db();
    let parsed = chosen
        .as_ref()
        .map(|c| parse_compact_list(&c.object.spec.packages));
    // An unreadable Inventory is judged as no inventory, with its error as
    // the reason (unless the platform itself is the problem).
    let inventory = match (&chosen, &parsed) {
        (Some(c), Some(Ok(packages))) => Some(InventoryInput {
            packages,
            collected_at: written_at(c.object.as_ref()).unwrap_or(c.object.spec.reported_at.0),
            ages: !c.provisional,
            provisional: c.provisional,
        }),
        _ => None,
    };
    let mut evaluation = evaluate::evaluate(&Input {
        detail: Detail::Actionable,
        platform: &wl.spec.platform,
        policies: &policy_refs,
        exceptions: &exception_refs,
        inventory,
        advisories: &db,
        now,
    });
    if let (Some(c), Some(Err(e))) = (&chosen, &parsed)
        && !matches!(evaluation.unknown, Some(UnknownCause::UnknownPlatform(_)))
    {
        evaluation.unknown = Some(UnknownCause::InvalidInventory(format!(
            "Inventory {}: spec.{e}",
            c.object.name_any()
        )));
    }

    // Start-up grace: until the platform's data (and every feed present at
    // start) has loaded, keep the earlier verdict.
    let mut next = evaluation.next_change;
    let keep = match parse_platform(&wl.spec.platform) {
        Ok(platform) => match shared.advisories.data_state(platform.osv_ecosystem(), now) {
            DataState::Waiting(until) => {
                next = Some(next.map_or(until, |n| n.min(until)));
                true
            }
            _ => false,
        },
        Err(_) => false,
    };

    let policy_names: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
    let template_info = template_status(&wl, template.as_deref());
    let desired = desired_status(
        &wl,
        &evaluation,
        chosen.as_ref(),
        template_info,
        policy_names.clone(),
        keep,
        now,
    );
    let previous = wl.status.clone().unwrap_or_default();

    if desired != previous {
        let api: Api<Workload> = Api::namespaced(shared.client.clone(), &ns);
        write_status(shared, &api, &name, "workload", MANAGER, &desired).await?;
        events(scope, &wl, &previous, &desired).await;
        // Policies and exceptions count their Workloads: wake the ones this
        // Workload matched before and matches now.
        for p in previous.policies.iter().chain(&policy_names) {
            let _ = scope
                .triggers
                .policies
                .unbounded_send(ObjectRef::new(p).within(&ns));
        }
        for e in &exceptions {
            let _ = scope
                .triggers
                .exceptions
                .unbounded_send(ObjectRef::from_obj(e.as_ref()));
        }
        // Its Template counts the Workloads on older revisions.
        if let Some(t) = &wl.spec.template_ref {
            let _ = scope
                .triggers
                .templates
                .unbounded_send(ObjectRef::new(&t.name).within(&ns));
        }
    }
    // Inventories naming this Workload may have been waiting for it to exist.
    if wl.status.is_none() {
        let names = scope
            .subjects
            .read()
            .map(|s| s.inventories(&(ns.clone(), SubjectKind::Workload, name.clone())))
            .unwrap_or_default();
        for n in names {
            let _ = scope
                .triggers
                .inventories
                .unbounded_send(ObjectRef::new(&n).within(&ns));
        }
    }
    Ok(Action::requeue(requeue_at(
        next,
        now,
        shared.settings.max_requeue,
    )))
}

async fn events(scope: &Scope, wl: &Workload, previous: &WorkloadStatus, desired: &WorkloadStatus) {
    let state = |s: &WorkloadStatus| s.compliance.as_ref().and_then(|c| c.state);
    let (before, after) = (state(previous), state(desired));
    if before == after {
        return;
    }
    let reason = desired
        .compliance
        .as_ref()
        .and_then(|c| c.reason.clone())
        .unwrap_or_default();
    let shared = &scope.shared;
    match after {
        Some(ComplianceState::Overdue) => shared.event(wl, true, "Overdue", reason).await,
        Some(ComplianceState::Pending) if before != Some(ComplianceState::Overdue) => {
            shared.event(wl, true, "NonCompliant", reason).await
        }
        Some(ComplianceState::Compliant | ComplianceState::Exempt)
            if matches!(
                before,
                Some(ComplianceState::Pending | ComplianceState::Overdue)
            ) =>
        {
            shared.event(wl, false, "Compliant", reason).await
        }
        Some(ComplianceState::Unknown) if before.is_some() => {
            shared.event(wl, true, "ComplianceUnknown", reason).await
        }
        _ => {}
    }
}
