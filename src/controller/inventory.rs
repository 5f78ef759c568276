//! The inventory reconciler: an Inventory is Ready when its packages are in
//! the compact format and its subject exists.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::scope::Scope;
use super::{Error, now, observed, write_status};
use crate::api::common::time;
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::{InventoryStatus, InventorySubject, SubjectKind};
use crate::api::{ChangeRequest, Inventory};
use crate::engine::inventory::parse_compact_list;

/// The field manager of Inventory status.
pub const MANAGER: &str = "patchloop-inventory";

/// Why the subject was not found. The name is shown only when it is a
/// Kubernetes object name: anything else is the reporter's free text, which a
/// status must not repeat.
fn subject_not_found(subject: &InventorySubject) -> String {
    let is_object_name = subject.name.len() <= 253
        && subject
            .name
            .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && subject
            .name
            .ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && subject
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if is_object_name {
        format!(
            "spec.subject: {:?} {:?} does not exist in this namespace",
            subject.kind, subject.name
        )
    } else {
        "spec.subject.name is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253 characters)".into()
    }
}

/// Reconciles one Inventory's status.
pub async fn reconcile(inv: Arc<Inventory>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = Arc::clone(&scope.shared);
    observed(
        &shared,
        "inventory",
        inv.as_ref(),
        reconcile_inner(Arc::clone(&inv), &scope),
    )
    .await
}

async fn reconcile_inner(inv: Arc<Inventory>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    // Workload verdicts go first; this status is bookkeeping.
    let _slot = scope.shared.verdicts_first.bookkeeping().await;
    let shared = &scope.shared;
    let ns = inv
        .namespace()
        .ok_or(Error::Missing("metadata.namespace"))?;
    let name = inv.name_any();
    let previous = inv.status.clone().unwrap_or_default();
    let subject = &inv.spec.subject;

    let exists = match subject.kind {
        SubjectKind::Workload => scope
            .workloads
            .get(&ObjectRef::new(&subject.name).within(&ns))
            .is_some(),
        SubjectKind::Template => scope
            .templates
            .get(&ObjectRef::new(&subject.name).within(&ns))
            .is_some(),
        SubjectKind::ChangeRequest => {
            let api: Api<ChangeRequest> = Api::namespaced(shared.client.clone(), &ns);
            api.get_opt(&subject.name).await?.is_some()
        }
    };
    let parsed = parse_compact_list(inv.spec.format.into(), &inv.spec.packages);
    let ready = match (&parsed, exists) {
        (Err(e), _) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidPackage",
            format!("spec.{e}"),
        ),
        (Ok(_), false) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "SubjectNotFound",
            subject_not_found(subject),
        ),
        (Ok(p), true) => DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Valid",
            format!(
                "{} packages for {:?} {}",
                p.len(),
                subject.kind,
                subject.name
            ),
        ),
    };
    let (conds, _) = conditions::merge(
        &previous.conditions,
        &[ready],
        inv.metadata.generation,
        &time(now()),
    );
    let status = InventoryStatus {
        observed_generation: inv.metadata.generation,
        conditions: conds,
        package_count: i32::try_from(inv.spec.packages.len()).unwrap_or(i32::MAX),
    };
    if status != previous {
        let api: Api<Inventory> = Api::namespaced(shared.client.clone(), &ns);
        write_status(
            shared,
            &api,
            &name,
            "inventory",
            MANAGER,
            &status,
            &previous,
        )
        .await?;
    }
    Ok(Action::requeue(shared.settings.max_requeue))
}
