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
use crate::api::inventory::{InventoryStatus, SubjectKind};
use crate::api::{ChangeRequest, Inventory};
use crate::engine::inventory::parse_compact_list;

/// The field manager of Inventory status.
pub const MANAGER: &str = "patchloop-inventory";

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
            format!(
                "spec.subject: {:?} {:?} does not exist in this namespace",
                subject.kind, subject.name
            ),
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
