//! Dereference: what a reconciler reads about one judged subject (a
//! Workload or a Template) before it decides, read once per reconcile, and
//! what that judgement says in the subject's status.
//!
//! - The inventory of a subject: a Workload's own is the one that speaks
//!   for [`workload_subject`] ([`Scope::inventory_for`]); a Template
//!   revision's (also a Workload's provisional one) comes from
//!   [`template_revision_inventory`].
//! - The judged inputs ([`Inputs`]): the parsed platform, the platform's
//!   advisory data state (start-up grace), the matching policies and
//!   exceptions. The engine's evaluation of an inventory against them is
//!   [`Inputs::evaluate`].
//! - What a judgement says: the Ready condition ([`ready_condition`]), the
//!   verdict ([`Verdict`]: compliance, findings, the Compliant condition)
//!   and the inventory reference ([`inventory_reference`]); the Workload and
//!   Template statuses say these the same way.
//!
//! The workload and template reconcilers read through it, the change and
//! remediation reconcilers through `template::judge` and `workload::judge`;
//! the change reconciler's start-up grace check is [`advisories_loading`],
//! and the wake graph finds a Workload's inventory by [`workload_subject`].
//! (The inventory reconciler and the wake graph parse a platform only for
//! its family or ecosystem.)

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::advisories::DataState;
use super::scope::Scope;
use crate::api::common::{ComplianceState, ComplianceSummary, Finding, InventoryReference, time};
use crate::api::conditions::{self, ConditionStatus, DesiredCondition, types};
use crate::api::inventory::{InventorySubject, SubjectKind};
use crate::api::{Inventory, PatchException, PatchPolicy, Template, Workload};
use crate::engine::evaluate::{
    self, Detail, Evaluation, ExceptionRef, Input, InventoryInput, PolicyRef, STATUS_FINDINGS_CAP,
    UnknownCause,
};
use crate::engine::inventory::{InstalledPackage, InventoryError, parse_subject_list};
use crate::engine::version::{Ecosystem, Platform, parse_platform};

/// The published revision of a Template (1 until a rebuild is published).
pub fn published_revision(t: &Template) -> i64 {
    t.status.as_ref().and_then(|s| s.revision).unwrap_or(1)
}

/// The Inventory describing one revision of a Template: the build result
/// `history` names for it, else (revision 1) the Inventory that speaks for
/// subject Template with that revision.
pub fn template_revision_inventory(
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
    scope.inventory_for(ns, &template_subject(t, revision))
}

/// A Workload's own Inventory subject (its canonical Inventory speaks for
/// it; a template revision's only provisionally).
pub fn workload_subject(wl: &Workload) -> InventorySubject {
    InventorySubject {
        kind: SubjectKind::Workload,
        name: wl.name_any(),
        revision: None,
    }
}

/// The Inventory subject of one revision of a Template.
pub fn template_subject(t: &Template, revision: i64) -> InventorySubject {
    InventorySubject {
        kind: SubjectKind::Template,
        name: t.name_any(),
        revision: Some(revision),
    }
}

/// What a subject is judged with besides its inventory, read once per
/// reconcile.
pub struct Inputs {
    /// The subject's `spec.platform`, parsed (`None`: invalid; the
    /// evaluation says why).
    pub platform: Option<Platform>,
    /// Advisory data for the platform is still loading: the start-up grace
    /// keeps the earlier verdict until then.
    pub waiting: Option<Timestamp>,
    /// The policies whose selector matches the subject.
    pub policies: Vec<Arc<PatchPolicy>>,
    /// The exceptions whose selector matches the subject.
    pub exceptions: Vec<Arc<PatchException>>,
}

/// Until when the advisory data of a (valid) `platform` is still loading at
/// start-up: nothing about it can be decided before (the start-up grace).
pub fn advisories_loading(scope: &Scope, platform: &str, now: Timestamp) -> Option<Timestamp> {
    loading(scope, &parse_platform(platform).ok()?, now)
}

fn loading(scope: &Scope, platform: &Platform, now: Timestamp) -> Option<Timestamp> {
    match scope
        .shared
        .advisories
        .data_state(platform.osv_ecosystem(), now)
    {
        DataState::Waiting(until) => Some(until),
        _ => None,
    }
}

impl Inputs {
    /// Reads the inputs of a subject of namespace `ns` with `labels` and
    /// `spec.platform` `platform`.
    pub fn read(
        scope: &Scope,
        ns: &str,
        labels: &BTreeMap<String, String>,
        platform: &str,
        now: Timestamp,
    ) -> Self {
        let platform = parse_platform(platform).ok();
        let waiting = platform.as_ref().and_then(|p| loading(scope, p, now));
        Inputs {
            platform,
            waiting,
            policies: scope.matching_policies(ns, labels),
            exceptions: scope.matching_exceptions(ns, labels),
        }
    }

    /// The version-ordering family of the platform, if it is valid.
    pub fn family(&self) -> Option<Ecosystem> {
        self.platform.as_ref().map(|p| p.family)
    }

    /// The packages of an Inventory, read in the platform's family.
    pub fn packages(&self, inventory: &Inventory) -> Result<Vec<InstalledPackage>, InventoryError> {
        parse_subject_list(
            self.family(),
            inventory.spec.format.into(),
            &inventory.spec.packages,
        )
    }

    /// The engine's evaluation of `inventory` (`None`: there is none, or it
    /// is unreadable) on `platform` (the subject's `spec.platform`).
    pub fn evaluate(
        &self,
        scope: &Scope,
        platform: &str,
        inventory: Option<InventoryInput<'_>>,
        now: Timestamp,
    ) -> Evaluation {
        let policies: Vec<PolicyRef<'_>> = self.policies.iter().map(|p| PolicyRef::of(p)).collect();
        let exceptions: Vec<ExceptionRef<'_>> = self
            .exceptions
            .iter()
            .map(|e| ExceptionRef::of(e))
            .collect();
        let db = scope.shared.advisories.db();
        evaluate::evaluate(&Input {
            detail: Detail::Actionable,
            platform,
            policies: &policies,
            exceptions: &exceptions,
            inventory,
            advisories: &db,
            now,
        })
    }
}

/// An unreadable Inventory is judged as no inventory, with its error as the
/// reason (unless the platform itself is the problem).
pub fn mark_unreadable(evaluation: &mut Evaluation, inventory: &Inventory, error: impl Display) {
    if matches!(evaluation.unknown, Some(UnknownCause::UnknownPlatform(_))) {
        return;
    }
    evaluation.unknown = Some(UnknownCause::InvalidInventory(format!(
        "Inventory {}: spec.{error}",
        inventory.name_any()
    )));
    evaluation.state = ComplianceState::Unknown;
}

/// A status's reference to the Inventory a judgement used.
pub fn inventory_reference(inventory: &Inventory, provisional: bool) -> InventoryReference {
    InventoryReference {
        name: Some(inventory.name_any()),
        reported_at: Some(time(inventory.spec.reported_at.0)),
        generation: inventory.metadata.generation,
        packages: i32::try_from(inventory.spec.packages.len()).unwrap_or(i32::MAX),
        provisional,
    }
}

/// Ready: False for an invalid platform, else for the subject's own
/// `invalid` (reason, message), else True with `evaluated` as its message.
pub fn ready_condition(
    evaluation: &Evaluation,
    invalid: Option<(&str, String)>,
    evaluated: &str,
) -> DesiredCondition {
    if matches!(evaluation.unknown, Some(UnknownCause::UnknownPlatform(_))) {
        return DesiredCondition::new(
            types::READY,
            ConditionStatus::False,
            "InvalidPlatform",
            evaluation.reason(),
        );
    }
    match invalid {
        Some((reason, message)) => {
            DesiredCondition::new(types::READY, ConditionStatus::False, reason, message)
        }
        None => DesiredCondition::new(types::READY, ConditionStatus::True, "Evaluated", evaluated),
    }
}

/// A verdict as a status says it: the compliance summary, the listed
/// findings (and how many were left out) and the Compliant condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The compliance summary.
    pub compliance: Option<ComplianceSummary>,
    /// The listed findings.
    pub findings: Vec<Finding>,
    /// How many findings were left out of the list.
    pub truncated: i32,
    /// The Compliant condition.
    pub condition: DesiredCondition,
}

impl Verdict {
    /// The verdict of `evaluation`; `about` starts the Compliant message of
    /// a definite verdict (e.g. the revision judged).
    pub fn of(evaluation: &Evaluation, about: &str) -> Self {
        let (findings, truncated) = evaluation.status_findings(STATUS_FINDINGS_CAP);
        let message = format!("{about}{}", evaluation.reason());
        let (status, reason) = match evaluation.state {
            ComplianceState::Compliant | ComplianceState::Exempt => {
                (ConditionStatus::True, evaluation.state.to_string())
            }
            ComplianceState::Pending => (ConditionStatus::False, "FixesPending".to_owned()),
            ComplianceState::Overdue => (ConditionStatus::False, "FixesOverdue".to_owned()),
            ComplianceState::Unknown => (
                ConditionStatus::Unknown,
                evaluation
                    .unknown
                    .as_ref()
                    .map_or("Unknown", UnknownCause::reason)
                    .to_owned(),
            ),
        };
        let message = match evaluation.state {
            ComplianceState::Unknown => evaluation.reason(),
            _ => message,
        };
        Verdict {
            compliance: Some(evaluation.summary()),
            findings,
            truncated,
            condition: DesiredCondition::new(types::COMPLIANT, status, reason, message),
        }
    }

    /// The earlier verdict, kept while the platform's advisory data loads
    /// (start-up grace): the previous status's fields and Compliant
    /// condition (Unknown, awaiting the data, when there was none).
    pub fn kept(
        compliance: Option<ComplianceSummary>,
        findings: Vec<Finding>,
        truncated: i32,
        previous: &[Condition],
    ) -> Self {
        let condition = conditions::find(previous, types::COMPLIANT).map_or_else(
            || {
                DesiredCondition::new(
                    types::COMPLIANT,
                    ConditionStatus::Unknown,
                    "AwaitingAdvisoryData",
                    "advisory data for this platform is still loading",
                )
            },
            |c| {
                let status = match c.status.as_str() {
                    "True" => ConditionStatus::True,
                    "False" => ConditionStatus::False,
                    _ => ConditionStatus::Unknown,
                };
                DesiredCondition::new(
                    types::COMPLIANT,
                    status,
                    c.reason.clone(),
                    c.message.clone(),
                )
            },
        );
        Verdict {
            compliance,
            findings,
            truncated,
            condition,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::advisory::AdvisoryDb;

    /// The evaluation of `inventory` on `platform` with no policies and no
    /// advisory data.
    fn evaluation(platform: &str, inventory: Option<InventoryInput<'_>>) -> Evaluation {
        let now: Timestamp = "2026-12-05T10:00:00Z".parse().expect("now");
        evaluate::evaluate(&Input {
            detail: Detail::Actionable,
            platform,
            policies: &[],
            exceptions: &[],
            inventory,
            advisories: &AdvisoryDb::default(),
            now,
        })
    }

    fn inventory(lines: &[&str]) -> Inventory {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
            "metadata": {"name": "workload-web-01", "namespace": "fleet", "generation": 3},
            "spec": {
                "subject": {"kind": "Workload", "name": "web-01"},
                "reportedAt": "2026-12-05T09:00:00Z",
                "format": "dpkg",
                "packages": lines,
            }
        }))
        .expect("an Inventory")
    }

    #[test]
    fn a_verdict_names_its_state_and_prefixes_definite_messages() {
        let mut e = evaluation("Debian:12", None);
        let unknown = Verdict::of(&e, "revision 2: ");
        assert_eq!(unknown.condition.status, ConditionStatus::Unknown);
        assert_eq!(unknown.condition.reason, "NoInventory");
        assert_eq!(
            unknown.condition.message,
            e.reason(),
            "no prefix when Unknown"
        );
        e.unknown = None;
        for (state, status, reason) in [
            (
                ComplianceState::Compliant,
                ConditionStatus::True,
                "Compliant",
            ),
            (ComplianceState::Exempt, ConditionStatus::True, "Exempt"),
            (
                ComplianceState::Pending,
                ConditionStatus::False,
                "FixesPending",
            ),
            (
                ComplianceState::Overdue,
                ConditionStatus::False,
                "FixesOverdue",
            ),
        ] {
            e.state = state;
            let v = Verdict::of(&e, "revision 2: ");
            assert_eq!(
                (v.condition.status, v.condition.reason.as_str()),
                (status, reason)
            );
            assert_eq!(v.condition.message, format!("revision 2: {}", e.reason()));
            assert_eq!(v.compliance.and_then(|c| c.state), Some(state));
        }
    }

    #[test]
    fn a_kept_verdict_repeats_the_previous_compliant_condition() {
        let fresh = Verdict::kept(None, Vec::new(), 0, &[]);
        assert_eq!(
            (fresh.condition.status, fresh.condition.reason.as_str()),
            (ConditionStatus::Unknown, "AwaitingAdvisoryData")
        );
        let (previous, _) = conditions::merge(
            &[],
            &[DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::False,
                "FixesPending",
                "2 fixes pending",
            )],
            Some(1),
            &time("2026-12-05T10:00:00Z".parse().expect("now")),
        );
        let kept = Verdict::kept(None, Vec::new(), 4, &previous);
        assert_eq!(
            kept.condition,
            DesiredCondition::new(
                types::COMPLIANT,
                ConditionStatus::False,
                "FixesPending",
                "2 fixes pending"
            )
        );
        assert_eq!(kept.truncated, 4);
    }

    #[test]
    fn ready_says_an_invalid_platform_first() {
        let invalid = evaluation("Plan9:4", None);
        let spec = Some(("InvalidSpec", "spec.x: missing".to_owned()));
        let c = ready_condition(&invalid, spec.clone(), "judged");
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "InvalidPlatform")
        );
        let valid = evaluation("Debian:12", None);
        let c = ready_condition(&valid, spec, "judged");
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("InvalidSpec", "spec.x: missing")
        );
        let c = ready_condition(&valid, None, "judged");
        assert_eq!(
            (c.status, c.message.as_str()),
            (ConditionStatus::True, "judged")
        );
    }

    #[test]
    fn an_unreadable_inventory_is_the_reason_unless_the_platform_is() {
        let inv = inventory(&["not a package line with too many fields here"]);
        let mut e = evaluation("Debian:12", None);
        mark_unreadable(&mut e, &inv, "packages[0]: bad");
        assert_eq!(
            e.unknown,
            Some(UnknownCause::InvalidInventory(
                "Inventory workload-web-01: spec.packages[0]: bad".into()
            ))
        );
        assert_eq!(e.state, ComplianceState::Unknown);
        let mut e = evaluation("Plan9:4", None);
        mark_unreadable(&mut e, &inv, "packages[0]: bad");
        assert!(matches!(e.unknown, Some(UnknownCause::UnknownPlatform(_))));
    }

    #[test]
    fn the_inventory_reference_counts_lines_and_keeps_the_generation() {
        let inv = inventory(&["openssl 3.0.15-1~deb12u1", "bash 5.2.15-2+b7"]);
        let r = inventory_reference(&inv, true);
        assert_eq!(r.name.as_deref(), Some("workload-web-01"));
        assert_eq!(
            (r.packages, r.generation, r.provisional),
            (2, Some(3), true)
        );
        assert_eq!(r.reported_at, Some(inv.spec.reported_at.clone()));
    }

    #[test]
    fn a_template_revision_has_its_own_subject() {
        let t = Template::new(
            "base",
            crate::api::TemplateSpec {
                platform: "Debian:12".into(),
                image: "registry.example/base:1".into(),
                build_job_template: None,
                test_job_template: None,
                keep_closed_change_requests: None,
            },
        );
        assert_eq!(published_revision(&t), 1, "1 until a rebuild is published");
        let s = template_subject(&t, 2);
        assert_eq!(
            (s.kind, s.name.as_str(), s.revision),
            (SubjectKind::Template, "base", Some(2))
        );
    }
}
