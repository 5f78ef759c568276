//! The inventory reconciler: an Inventory is Ready when it is under its
//! subject's canonical name, its packages are in the compact format and its
//! subject exists.

use std::sync::Arc;

use jiff::Timestamp;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::scope::{Scope, speaks_for_subject};
use super::{Error, InStep, Step, now, observed, write_status};
use crate::api::common::{is_object_name, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::{InventoryStatus, InventorySubject, SubjectKind};
use crate::api::{ChangeRequest, Inventory};
use crate::engine::inventory::{InventoryError, parse_subject_list};
use crate::engine::version::{Ecosystem, parse_platform};

/// The field manager of Inventory status.
pub const MANAGER: &str = "patchloop-inventory";

/// Why the subject was not found. The name is shown only when it is a
/// Kubernetes object name: anything else is the reporter's free text, which a
/// status must not repeat.
fn subject_not_found(subject: &InventorySubject) -> String {
    if is_object_name(&subject.name) {
        format!(
            "spec.subject: {:?} {:?} does not exist in this namespace",
            subject.kind, subject.name
        )
    } else {
        NOT_AN_OBJECT_NAME.to_owned()
    }
}

/// Said instead of repeating a subject name that is no object name.
const NOT_AN_OBJECT_NAME: &str = "spec.subject.name is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253 characters)";

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
    let ns = inv
        .namespace()
        .ok_or(Error::Missing("metadata.namespace"))?;
    let subject = dereference(scope, &inv, &ns).await?;
    let status = decide(&inv, subject, now());
    update_status(scope, &inv, &ns, &status).await?;
    Ok(Action::requeue(scope.shared.settings.max_requeue))
}

/// The Inventory's subject as found: `None` when it does not exist, else
/// the family of its platform (a request's is its Template's), `None` when
/// that cannot be told.
type Subject = Option<Option<Ecosystem>>;

async fn dereference(scope: &Scope, inv: &Inventory, ns: &str) -> Result<Subject, Error> {
    let subject = &inv.spec.subject;
    let family = |platform: &str| parse_platform(platform).ok().map(|p| p.family);
    Ok(match subject.kind {
        SubjectKind::Workload => scope
            .workloads
            .get(&ObjectRef::new(&subject.name).within(ns))
            .map(|w| family(&w.spec.platform)),
        SubjectKind::Template => scope
            .templates
            .get(&ObjectRef::new(&subject.name).within(ns))
            .map(|t| family(&t.spec.platform)),
        SubjectKind::ChangeRequest => {
            let api: Api<ChangeRequest> = Api::namespaced(scope.shared.client.clone(), ns);
            api.get_opt(&subject.name)
                .await
                .step(Step::Dereference, "get subject ChangeRequest")?
                .map(|cr| {
                    scope
                        .templates
                        .get(&ObjectRef::new(&cr.spec.template).within(ns))
                        .and_then(|t| family(&t.spec.platform))
                })
        }
    })
}

/// The Inventory's status: `Ready` says whether it counts for its subject
/// (canonical name, format of the subject's family, every line in its
/// grammar, the subject exists); pure.
fn decide(inv: &Inventory, subject: Subject, now: Timestamp) -> InventoryStatus {
    let previous = inv.status.clone().unwrap_or_default();
    let about = &inv.spec.subject;
    let parsed = parse_subject_list(
        subject.flatten(),
        inv.spec.format.into(),
        &inv.spec.packages,
    );
    let ready = not_canonical(inv).unwrap_or_else(|| match (&parsed, subject.is_some()) {
        (Err(e), _) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            match e {
                InventoryError::FormatMismatch { .. } => "FormatMismatch",
                _ => "InvalidPackage",
            },
            format!("spec.{e}"),
        ),
        (Ok(_), false) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "SubjectNotFound",
            subject_not_found(about),
        ),
        (Ok(p), true) => DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Valid",
            format!("{} packages for {:?} {}", p.len(), about.kind, about.name),
        ),
    });
    let (conds, _) = conditions::merge(
        &previous.conditions,
        &[ready],
        inv.metadata.generation,
        &time(now),
    );
    InventoryStatus {
        observed_generation: inv.metadata.generation,
        conditions: conds,
        package_count: i32::try_from(inv.spec.packages.len()).unwrap_or(i32::MAX),
    }
}

async fn update_status(
    scope: &Scope,
    inv: &Inventory,
    ns: &str,
    status: &InventoryStatus,
) -> Result<(), Error> {
    let previous = inv.status.clone().unwrap_or_default();
    if *status == previous {
        return Ok(());
    }
    let shared = &scope.shared;
    let api: Api<Inventory> = Api::namespaced(shared.client.clone(), ns);
    let name = inv.name_any();
    write_status(
        shared,
        &api,
        &name,
        "inventory",
        MANAGER,
        status,
        &previous,
        None,
    )
    .await?;
    Ok(())
}

/// `Ready=False` (`NotCanonical`) for an Inventory that names a subject under
/// another name than the subject's canonical one: it is ignored for that
/// subject, and the message names the Inventory that would count. A subject
/// name that is no valid object name is not echoed.
fn not_canonical(inv: &Inventory) -> Option<DesiredCondition> {
    if speaks_for_subject(inv) {
        return None;
    }
    let subject = &inv.spec.subject;
    let message = if is_object_name(&subject.name) {
        format!(
            "ignored: only the Inventory named {} speaks for {:?} {}{}; rename this one (write it under that name and delete this one)",
            subject.canonical_inventory_name(),
            subject.kind,
            subject.name,
            revision_suffix(subject),
        )
    } else {
        format!("ignored: {NOT_AN_OBJECT_NAME}")
    };
    Some(DesiredCondition::new(
        types::READY,
        ConditionStatus::False,
        "NotCanonical",
        message,
    ))
}

/// ` revision N` for a Template subject.
fn revision_suffix(subject: &InventorySubject) -> String {
    match subject.kind {
        SubjectKind::Template => format!(" revision {}", subject.revision.unwrap_or(1)),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(name: &str, subject: serde_json::Value) -> Inventory {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
            "metadata": {"name": name, "namespace": "prod"},
            "spec": {"subject": subject, "reportedAt": "2026-11-24T08:00:00Z",
                     "format": "dpkg", "packages": []},
        }))
        .expect("a valid Inventory")
    }

    #[test]
    fn ready_needs_the_subject_its_family_and_valid_lines() {
        let mut inv = inventory(
            "workload-web-01",
            serde_json::json!({"kind": "Workload", "name": "web-01"}),
        );
        inv.spec.packages = vec!["libc6 2.36-9+deb12u3 glibc".into()];
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("now");
        let ready = |status: &InventoryStatus| {
            let c = conditions::find(&status.conditions, types::READY).expect("Ready");
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let valid = decide(&inv, Some(Some(Ecosystem::Dpkg)), now);
        assert_eq!(
            ready(&valid),
            (
                "True".into(),
                "Valid".into(),
                "1 packages for Workload web-01".into()
            )
        );
        assert_eq!(valid.package_count, 1);
        assert_eq!(ready(&decide(&inv, None, now)).1, "SubjectNotFound");
        // A platform that cannot be read is the Workload's finding, not this one's.
        assert_eq!(ready(&decide(&inv, Some(None), now)).1, "Valid");
        let (_, reason, message) = ready(&decide(&inv, Some(Some(Ecosystem::Rpm)), now));
        assert_eq!(reason, "FormatMismatch");
        assert!(message.starts_with("spec.format: is dpkg"), "{message}");
        inv.spec.packages = vec!["libc6- 1.0".into()];
        let (_, reason, message) = ready(&decide(&inv, Some(Some(Ecosystem::Dpkg)), now));
        assert_eq!(reason, "InvalidPackage");
        assert!(
            message.starts_with("spec.packages[0]: field 1 (name)"),
            "{message}"
        );
    }

    #[test]
    fn only_the_canonical_name_is_ready_and_others_name_it() {
        let w = serde_json::json!({"kind": "Workload", "name": "web-01"});
        assert_eq!(
            not_canonical(&inventory("workload-web-01", w.clone())),
            None
        );
        let ignored = not_canonical(&inventory("web-01", w)).expect("ignored");
        assert_eq!(
            (ignored.reason.as_str(), ignored.status),
            ("NotCanonical", ConditionStatus::False)
        );
        assert!(
            ignored.message.contains("workload-web-01"),
            "{}",
            ignored.message
        );

        let t = serde_json::json!({"kind": "Template", "name": "base", "revision": 2});
        assert_eq!(
            not_canonical(&inventory("template-base-r2", t.clone())),
            None
        );
        let wrong_revision = not_canonical(&inventory("template-base-r1", t)).expect("ignored");
        assert!(
            wrong_revision.message.contains("template-base-r2")
                && wrong_revision.message.contains("revision 2"),
            "{}",
            wrong_revision.message
        );

        let c = serde_json::json!({"kind": "ChangeRequest", "name": "base-x7k2p"});
        assert_eq!(
            not_canonical(&inventory("changerequest-base-x7k2p", c.clone())),
            None
        );
        assert!(not_canonical(&inventory("base-x7k2p-result", c)).is_some());
    }

    #[test]
    fn a_subject_name_that_is_no_object_name_is_not_echoed() {
        for name in ["$(SSH_PASSPHRASE)", "Web 01", "web_01", "-web", "a..b"] {
            let inv = inventory("web", serde_json::json!({"kind": "Workload", "name": name}));
            let c = not_canonical(&inv).expect("ignored");
            assert!(!c.message.contains(name), "{}", c.message);
            assert!(c.message.contains("spec.subject.name"), "{}", c.message);
        }
    }
}
