//! The exception reconciler: whether a PatchException is active (expiry
//! capped by the matching policies' `exceptions.maxDuration`), how many
//! Workloads and Templates it covers; an Event and a metric when it expires.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::scope::Scope;
use super::{Error, now, observed, requeue_at, write_status};
use crate::api::PatchException;
use crate::api::common::time;
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::exception::PatchExceptionStatus;
use crate::engine::evaluate::{ExceptionRef, PolicyRef, effective_expiry};
use crate::engine::selector;

/// The field manager of PatchException status.
pub const MANAGER: &str = "patchloop-exception";

/// Reconciles one PatchException's status.
pub async fn reconcile(ex: Arc<PatchException>, scope: Arc<Scope>) -> Result<Action, Error> {
    let shared = Arc::clone(&scope.shared);
    observed(
        &shared,
        "exception",
        ex.as_ref(),
        reconcile_inner(Arc::clone(&ex), &scope),
    )
    .await
}

async fn reconcile_inner(ex: Arc<PatchException>, scope: &Arc<Scope>) -> Result<Action, Error> {
    scope.caches_ready().await;
    let shared = &scope.shared;
    let ns = ex.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let name = ex.name_any();
    let now = now();
    let previous = ex.status.clone().unwrap_or_default();

    let selector_error = selector::matches(&ex.spec.selector, &Default::default()).err();
    let in_ns = |labels: &std::collections::BTreeMap<String, String>| {
        selector::matches(&ex.spec.selector, labels).unwrap_or(false)
    };
    let workloads: Vec<_> = scope
        .workloads
        .state()
        .into_iter()
        .filter(|w| w.namespace().as_deref() == Some(ns.as_str()) && in_ns(w.labels()))
        .collect();
    let templates = scope
        .templates
        .state()
        .into_iter()
        .filter(|t| t.namespace().as_deref() == Some(ns.as_str()) && in_ns(t.labels()))
        .count();
    // The policies that govern what it covers cap its duration.
    let policies: Vec<_> = scope
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| {
            workloads
                .iter()
                .any(|w| selector::matches(&p.spec.selector, w.labels()).unwrap_or(false))
        })
        .collect();
    let refs: Vec<PolicyRef<'_>> = policies.iter().map(|p| PolicyRef::of(p)).collect();
    let exception = ExceptionRef::of(&ex);
    let (expires, capped_by) = effective_expiry(&exception, &refs);
    let active = now < expires;

    let ready = match &selector_error {
        Some(e) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidSpec",
            format!("spec.selector: {e}"),
        ),
        None => DesiredCondition::new(
            types::READY,
            ConditionStatus::True,
            "Valid",
            "the exception is valid",
        ),
    };
    let active_condition = if active {
        let cap = capped_by
            .as_ref()
            .map(|p| format!(" (capped by PatchPolicy {p}'s exceptions.maxDuration)"))
            .unwrap_or_default();
        DesiredCondition::new(
            types::ACTIVE,
            ConditionStatus::True,
            "Active",
            format!("exempts its advisories until {expires}{cap}"),
        )
    } else {
        DesiredCondition::new(
            types::ACTIVE,
            ConditionStatus::False,
            "Expired",
            format!(
                "expired at {expires}: the advisories it names count again; renew it or fix them"
            ),
        )
    };
    let (conds, transitions) = conditions::merge(
        &previous.conditions,
        &[ready, active_condition],
        ex.metadata.generation,
        &time(now),
    );
    let status = PatchExceptionStatus {
        observed_generation: ex.metadata.generation,
        conditions: conds,
        matched_workloads: i32::try_from(workloads.len()).unwrap_or(i32::MAX),
        matched_templates: i32::try_from(templates).unwrap_or(i32::MAX),
        effective_expires: Some(time(expires)),
        capped_by,
    };
    if status != previous {
        let api: Api<PatchException> = Api::namespaced(shared.client.clone(), &ns);
        write_status(
            shared,
            &api,
            &name,
            "exception",
            MANAGER,
            &status,
            &previous,
        )
        .await?;
        let was_active = conditions::find(&previous.conditions, types::ACTIVE).is_some();
        if transitions.contains(&types::ACTIVE) && !active && was_active {
            shared.metrics.exception_expired();
            shared
                .event(
                    ex.as_ref(),
                    true,
                    "Expired",
                    format!("PatchException expired at {expires}"),
                )
                .await;
        }
    }
    if transitions.contains(&types::ACTIVE) {
        // The Workloads it covered are judged differently now.
        for w in &workloads {
            let _ = scope
                .triggers
                .workloads
                .unbounded_send(ObjectRef::from_obj(w.as_ref()));
        }
    }
    let next = active.then_some(expires);
    Ok(Action::requeue(requeue_at(
        next,
        now,
        shared.settings.max_requeue,
    )))
}
