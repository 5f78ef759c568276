//! The exception reconciler: whether a PatchException is active (expiry
//! capped by the matching policies' `exceptions.maxDuration`), how many
//! Workloads and Templates it covers; an Event and a metric when it expires.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::scope::Scope;
use super::triggers;
use super::{Error, now, observed, requeue_at, write_status};
use crate::api::common::time;
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::exception::PatchExceptionStatus;
use crate::api::{PatchException, PatchPolicy, Workload};
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
    let ns = ex.namespace().ok_or(Error::Missing("metadata.namespace"))?;
    let now = now();
    let seen = dereference(scope, &ex, &ns);
    let decided = decide(&ex, &seen, now);
    update_status(scope, &ex, &ns, &decided).await?;
    if decided.active_changed {
        // The Workloads it covers are judged differently now.
        triggers::exception_flipped(scope, &seen.workloads);
    }
    let max = scope.shared.settings.max_requeue;
    Ok(Action::requeue(requeue_at(decided.wake, now, max)))
}

/// What an exception's reconcile reads: the Workloads it covers, how many
/// Templates, and the policies governing those Workloads (which cap its
/// duration).
struct Seen {
    workloads: Vec<Arc<Workload>>,
    templates: usize,
    policies: Vec<Arc<PatchPolicy>>,
}

fn dereference(scope: &Scope, ex: &PatchException, ns: &str) -> Seen {
    let covers = |namespace: Option<String>, labels: &BTreeMap<String, String>| {
        namespace.as_deref() == Some(ns)
            && selector::matches(&ex.spec.selector, labels).unwrap_or(false)
    };
    let workloads: Vec<_> = scope
        .workloads
        .state()
        .into_iter()
        .filter(|w| covers(w.namespace(), w.labels()))
        .collect();
    let templates = scope
        .templates
        .state()
        .into_iter()
        .filter(|t| covers(t.namespace(), t.labels()))
        .count();
    let policies = scope
        .policies
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| {
            workloads
                .iter()
                .any(|w| selector::matches(&p.spec.selector, w.labels()).unwrap_or(false))
        })
        .collect();
    Seen {
        workloads,
        templates,
        policies,
    }
}

/// What an exception's reconcile decided.
#[derive(Debug)]
struct Decided {
    status: PatchExceptionStatus,
    /// `Active` flipped (the Workloads it covers must be judged again).
    active_changed: bool,
    /// It has just expired: an Event and the metric.
    expired_now: bool,
    /// When it expires, while active.
    wake: Option<Timestamp>,
}

/// The exception's status: its effective expiry (capped by the policies'
/// `exceptions.maxDuration`), `Ready` and `Active` (pure).
fn decide(ex: &PatchException, seen: &Seen, now: Timestamp) -> Decided {
    let previous = ex.status.clone().unwrap_or_default();
    let refs: Vec<PolicyRef<'_>> = seen.policies.iter().map(|p| PolicyRef::of(p)).collect();
    let (expires, capped_by) = effective_expiry(&ExceptionRef::of(ex), &refs);
    let active = now < expires;
    let ready = match selector::matches(&ex.spec.selector, &Default::default()) {
        Err(e) => DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidSpec",
            format!("spec.selector: {e}"),
        ),
        Ok(_) => DesiredCondition::new(
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
    let active_changed = transitions.contains(&types::ACTIVE);
    let was_judged = conditions::find(&previous.conditions, types::ACTIVE).is_some();
    Decided {
        status: PatchExceptionStatus {
            observed_generation: ex.metadata.generation,
            conditions: conds,
            matched_workloads: i32::try_from(seen.workloads.len()).unwrap_or(i32::MAX),
            matched_templates: i32::try_from(seen.templates).unwrap_or(i32::MAX),
            effective_expires: Some(time(expires)),
            capped_by,
        },
        active_changed,
        expired_now: active_changed && !active && was_judged,
        wake: active.then_some(expires),
    }
}

/// Writes the status when it changed; an expiry is an Event and a metric.
async fn update_status(
    scope: &Scope,
    ex: &PatchException,
    ns: &str,
    decided: &Decided,
) -> Result<(), Error> {
    let previous = ex.status.clone().unwrap_or_default();
    if decided.status == previous {
        return Ok(());
    }
    let shared = &scope.shared;
    let api: Api<PatchException> = Api::namespaced(shared.client.clone(), ns);
    let name = ex.name_any();
    write_status(
        shared,
        &api,
        &name,
        "exception",
        MANAGER,
        &decided.status,
        &previous,
        None,
    )
    .await?;
    if decided.expired_now {
        shared.metrics.exception_expired();
        let at = decided
            .status
            .effective_expires
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let note = format!("PatchException expired at {at}");
        shared.event(ex, true, "Expired", note).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(selector: serde_json::Value) -> PatchException {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchException",
            "metadata": {"name": "erp-kernel", "namespace": "fleet", "generation": 1,
                         "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"advisories": ["CVE-2024-0001"], "selector": selector,
                     "reason": "vendor forbids kernel updates", "approvedBy": "security-team",
                     "expires": "2027-01-31T00:00:00Z"}
        }))
        .expect("an exception")
    }

    fn nothing_seen() -> Seen {
        Seen {
            workloads: Vec::new(),
            templates: 0,
            policies: Vec::new(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    fn condition<'a>(d: &'a Decided, type_: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&d.status.conditions, type_).expect("the condition");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn an_exception_is_active_until_it_expires_and_announces_the_expiry_once() {
        let mut ex = exception(serde_json::json!({"matchLabels": {"app": "legacy-erp"}}));
        let active = decide(&ex, &nothing_seen(), at("2026-12-05T10:00:00Z"));
        assert_eq!(condition(&active, types::READY), ("True", "Valid"));
        assert_eq!(condition(&active, types::ACTIVE), ("True", "Active"));
        assert_eq!(active.wake, Some(at("2027-01-31T00:00:00Z")));
        assert!(!active.expired_now);

        ex.status = Some(active.status);
        let expired = decide(&ex, &nothing_seen(), at("2027-02-01T00:00:00Z"));
        assert_eq!(condition(&expired, types::ACTIVE), ("False", "Expired"));
        assert!(expired.active_changed && expired.expired_now);
        assert_eq!(expired.wake, None);

        ex.status = Some(expired.status);
        let again = decide(&ex, &nothing_seen(), at("2027-02-02T00:00:00Z"));
        assert!(!again.active_changed && !again.expired_now);
    }

    #[test]
    fn an_exception_first_seen_expired_is_no_expiry_event_and_a_bad_selector_is_named() {
        let ex = exception(serde_json::json!({"matchExpressions": [
            {"key": "app", "operator": "Sideways", "values": ["x"]}]}));
        let d = decide(&ex, &nothing_seen(), at("2027-02-01T00:00:00Z"));
        assert_eq!(condition(&d, types::ACTIVE), ("False", "Expired"));
        assert!(!d.expired_now, "it never was active for this controller");
        let ready = conditions::find(&d.status.conditions, types::READY).expect("Ready");
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(
            ready.message.starts_with("spec.selector: "),
            "{}",
            ready.message
        );
    }
}
