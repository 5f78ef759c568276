//! What the demo shows while it waits: a pure snapshot of the namespace's
//! objects, the lines that say what changed between two snapshots, a
//! one-line summary, and when the scenario is over.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use crate::api::change_request::{ChangeRequestPhase, TEMPLATE_LABEL};
use crate::api::common::ComplianceState;
use crate::api::workload::RemediationPhase;
use crate::api::{ChangeRequest, PatchPolicy, Template, Workload};
use crate::controller::jobs;

/// Where one Workload stands, as the demo tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    /// Its compliance state (`None` until the controller judged it).
    pub state: Option<ComplianceState>,
    /// Its remediation phase, if a remediation ever started.
    pub phase: Option<RemediationPhase>,
    /// True when it runs an older revision than its Template's latest.
    pub stale: bool,
}

impl WorkloadView {
    /// A short word for the state: what a person watching wants to know.
    pub fn word(&self) -> &'static str {
        match (self.state, self.phase) {
            (Some(ComplianceState::Compliant), Some(RemediationPhase::Verified)) => {
                "verified compliant"
            }
            (Some(ComplianceState::Compliant), _) => "compliant",
            (Some(ComplianceState::Exempt), _) => "exempt",
            (_, Some(RemediationPhase::Running)) => "remediating",
            (_, Some(RemediationPhase::Verifying)) => "verifying",
            (_, Some(RemediationPhase::BackingOff)) => "backing off",
            (_, Some(RemediationPhase::Failed)) => "remediation failed",
            (_, Some(RemediationPhase::Unverified)) => "unverified",
            (_, Some(RemediationPhase::Refused)) => "remediation refused",
            (Some(ComplianceState::Overdue), _) => "non-compliant (overdue)",
            (Some(ComplianceState::Pending), _) => "non-compliant (pending)",
            (Some(ComplianceState::Unknown), _) => "unknown",
            (None, _) => "not judged yet",
        }
    }

    /// True once the Workload needs nothing more: compliant or exempt.
    pub fn settled(&self) -> bool {
        matches!(
            self.state,
            Some(ComplianceState::Compliant | ComplianceState::Exempt)
        )
    }
}

/// Where one Template stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateView {
    /// The latest published revision.
    pub revision: Option<i64>,
    /// Its compliance state.
    pub state: Option<ComplianceState>,
    /// The image of the latest revision.
    pub image: Option<String>,
}

/// Where one ChangeRequest stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestView {
    /// The Template it rebuilds.
    pub template: String,
    /// Its phase.
    pub phase: Option<ChangeRequestPhase>,
    /// How many advisories and packages it addresses.
    pub advisories: usize,
    /// See `advisories`.
    pub packages: usize,
    /// Its policy (whose approval rule applies).
    pub policy: Option<String>,
}

/// Where one PatchPolicy's counts stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyView {
    /// Workloads it governs.
    pub matched: i32,
    /// Of those, compliant or exempt.
    pub settled: i32,
    /// Of those, remediating now.
    pub remediating: i32,
    /// Its Templates' open ChangeRequests.
    pub open_requests: i32,
}

/// The namespace at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Workloads by name.
    pub workloads: BTreeMap<String, WorkloadView>,
    /// Templates by name.
    pub templates: BTreeMap<String, TemplateView>,
    /// ChangeRequests by name.
    pub requests: BTreeMap<String, RequestView>,
    /// PatchPolicies by name.
    pub policies: BTreeMap<String, PolicyView>,
    /// Patchloop Jobs not finished yet, by name.
    pub running_jobs: Vec<String>,
}

/// Takes a snapshot from listed objects.
pub fn snapshot(
    workloads: &[Workload],
    templates: &[Template],
    requests: &[ChangeRequest],
    policies: &[PatchPolicy],
    jobs: &[Job],
) -> Snapshot {
    Snapshot {
        workloads: workloads
            .iter()
            .map(|w| {
                let status = w.status.as_ref();
                let view = WorkloadView {
                    state: status
                        .and_then(|s| s.compliance.as_ref())
                        .and_then(|c| c.state),
                    phase: status
                        .and_then(|s| s.remediation.as_ref())
                        .and_then(|r| r.phase),
                    stale: status
                        .and_then(|s| s.template.as_ref())
                        .is_some_and(|t| !t.current),
                };
                (w.name_any(), view)
            })
            .collect(),
        templates: templates
            .iter()
            .map(|t| {
                let status = t.status.as_ref();
                let view = TemplateView {
                    revision: status.and_then(|s| s.revision),
                    state: status
                        .and_then(|s| s.compliance.as_ref())
                        .and_then(|c| c.state),
                    image: status.and_then(|s| s.image.clone()),
                };
                (t.name_any(), view)
            })
            .collect(),
        requests: requests
            .iter()
            .map(|r| {
                let status = r.status.as_ref();
                let scope = status.and_then(|s| s.scope.as_ref());
                let view = RequestView {
                    template: r.labels().get(TEMPLATE_LABEL).cloned().unwrap_or_default(),
                    phase: status.and_then(|s| s.phase),
                    advisories: scope.map_or(0, |s| s.advisories.len()),
                    packages: scope.map_or(0, |s| s.packages.len()),
                    policy: status.and_then(|s| s.policy.clone()),
                };
                (r.name_any(), view)
            })
            .collect(),
        policies: policies
            .iter()
            .map(|p| {
                let status = p.status.as_ref();
                let w = status.and_then(|s| s.workloads.clone()).unwrap_or_default();
                let view = PolicyView {
                    matched: w.matched,
                    settled: w.compliant + w.exempt,
                    remediating: w.remediating,
                    open_requests: status
                        .and_then(|s| s.templates.as_ref())
                        .map_or(0, |t| t.change_requests_open),
                };
                (p.name_any(), view)
            })
            .collect(),
        running_jobs: jobs
            .iter()
            .filter(|j| jobs::finished(j).is_none())
            .map(ResourceExt::name_any)
            .collect(),
    }
}

/// The lines that tell what changed from `before` to `after`: each
/// Workload's new state, each request's new phase, each Template's new
/// revision, and how many Workloads became stale (one line, not one each).
pub fn changes(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    // First verdicts are counted in one line; later moves get one each.
    let mut judged: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, view) in &after.workloads {
        let Some(old) = before.workloads.get(name) else {
            continue;
        };
        if old.word() == view.word() {
            continue;
        }
        if old.state.is_none() {
            *judged.entry(view.word()).or_default() += 1;
        } else {
            lines.push(format!("workload {name}: {} → {}", old.word(), view.word()));
        }
    }
    if !judged.is_empty() {
        let counts: Vec<String> = judged.iter().map(|(w, n)| format!("{n} {w}")).collect();
        lines.insert(
            0,
            format!(
                "{} workload(s) judged against the advisories: {}",
                judged.values().sum::<usize>(),
                counts.join(", ")
            ),
        );
    }
    let newly_stale = after
        .workloads
        .iter()
        .filter(|(name, v)| v.stale && !before.workloads.get(*name).is_some_and(|o| o.stale))
        .count();
    if newly_stale > 0 {
        lines.push(format!(
            "{newly_stale} workload(s) now flagged as running a stale template revision \
             (rebuild them from the new revision)"
        ));
    }
    for (name, view) in &after.requests {
        let old = before.requests.get(name).and_then(|r| r.phase);
        if old != view.phase
            && let Some(phase) = view.phase
        {
            lines.push(format!(
                "changerequest {name} (template {}): {phase:?}",
                view.template
            ));
        }
    }
    for (name, view) in &after.templates {
        let old = before.templates.get(name).and_then(|t| t.revision);
        if old.is_some() && old != view.revision {
            lines.push(format!(
                "template {name}: published revision {} ({})",
                view.revision.unwrap_or_default(),
                view.image.as_deref().unwrap_or("no image")
            ));
        }
    }
    lines
}

/// One line: how many Workloads stand where, the Templates, running Jobs.
pub fn summary(s: &Snapshot) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for view in s.workloads.values() {
        *counts.entry(view.word()).or_default() += 1;
    }
    let mut line = format!("{} workloads:", s.workloads.len());
    for (i, (word, n)) in counts.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        let _ = write!(line, "{sep}{n} {word}");
    }
    let stale = s.workloads.values().filter(|v| v.stale).count();
    if stale > 0 {
        let _ = write!(line, " ({stale} on a stale template)");
    }
    let published = s
        .templates
        .values()
        .filter(|t| t.revision.is_some_and(|r| r > 1))
        .count();
    let _ = write!(
        line,
        " | templates: {published}/{} rebuilt | jobs running: {}",
        s.templates.len(),
        s.running_jobs.len()
    );
    line
}

/// ChangeRequests waiting for a person.
pub fn awaiting_approval(s: &Snapshot) -> Vec<(&str, &RequestView)> {
    s.requests
        .iter()
        .filter(|(_, r)| r.phase == Some(ChangeRequestPhase::AwaitingApproval))
        .map(|(n, r)| (n.as_str(), r))
        .collect()
}

/// The scenario is over: every Workload compliant or exempt, every Template
/// rebuilt (a revision after the first) and compliant, no request open, the
/// Workloads still on an older revision flagged as stale, no Job running,
/// and every policy's counts saying so too.
pub fn finished(s: &Snapshot) -> bool {
    !s.workloads.is_empty()
        && s.workloads.values().all(WorkloadView::settled)
        && !s.templates.is_empty()
        && s.templates.values().all(|t| {
            t.revision.is_some_and(|r| r > 1) && t.state == Some(ComplianceState::Compliant)
        })
        && s.requests.values().all(|r| {
            matches!(
                r.phase,
                Some(
                    ChangeRequestPhase::Published
                        | ChangeRequestPhase::Rejected
                        | ChangeRequestPhase::Failed
                        | ChangeRequestPhase::Obsolete
                )
            )
        })
        && s.workloads.values().any(|w| w.stale)
        && s.running_jobs.is_empty()
        // The policies' counts caught up (the report shows them).
        && s.policies.values().all(|p| {
            p.settled == p.matched && p.remediating == 0 && p.open_requests == 0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(
        state: ComplianceState,
        phase: Option<RemediationPhase>,
        stale: bool,
    ) -> WorkloadView {
        WorkloadView {
            state: Some(state),
            phase,
            stale,
        }
    }

    fn snap(
        workloads: &[(&str, WorkloadView)],
        revision: i64,
        phase: ChangeRequestPhase,
    ) -> Snapshot {
        Snapshot {
            workloads: workloads
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            templates: [(
                "base".to_owned(),
                TemplateView {
                    revision: Some(revision),
                    state: Some(if revision > 1 {
                        ComplianceState::Compliant
                    } else {
                        ComplianceState::Overdue
                    }),
                    image: Some(format!("img:r{revision}")),
                },
            )]
            .into(),
            requests: [(
                "base-abc".to_owned(),
                RequestView {
                    template: "base".to_owned(),
                    phase: Some(phase),
                    advisories: 3,
                    packages: 2,
                    policy: Some("critical".to_owned()),
                },
            )]
            .into(),
            policies: [(
                "critical".to_owned(),
                PolicyView {
                    matched: workloads.len() as i32,
                    settled: workloads.iter().filter(|(_, v)| v.settled()).count() as i32,
                    remediating: 0,
                    open_requests: 0,
                },
            )]
            .into(),
            running_jobs: Vec::new(),
        }
    }

    #[test]
    fn tells_each_transition_once_and_stale_workloads_in_one_line() {
        let before = snap(
            &[
                (
                    "web-01",
                    workload(
                        ComplianceState::Overdue,
                        Some(RemediationPhase::Running),
                        false,
                    ),
                ),
                ("web-02", workload(ComplianceState::Overdue, None, false)),
                ("web-03", workload(ComplianceState::Compliant, None, false)),
            ],
            1,
            ChangeRequestPhase::Testing,
        );
        let after = snap(
            &[
                (
                    "web-01",
                    workload(
                        ComplianceState::Compliant,
                        Some(RemediationPhase::Verified),
                        true,
                    ),
                ),
                ("web-02", workload(ComplianceState::Overdue, None, true)),
                ("web-03", workload(ComplianceState::Compliant, None, true)),
            ],
            2,
            ChangeRequestPhase::Published,
        );
        assert_eq!(
            changes(&before, &after),
            [
                "workload web-01: remediating → verified compliant",
                "3 workload(s) now flagged as running a stale template revision (rebuild them from the new revision)",
                "changerequest base-abc (template base): Published",
                "template base: published revision 2 (img:r2)",
            ]
        );
        assert!(changes(&after, &after).is_empty());
        // First verdicts: one line counting them.
        let unjudged = snap(
            &[
                (
                    "web-01",
                    WorkloadView {
                        state: None,
                        phase: None,
                        stale: false,
                    },
                ),
                (
                    "web-02",
                    WorkloadView {
                        state: None,
                        phase: None,
                        stale: false,
                    },
                ),
                (
                    "web-03",
                    WorkloadView {
                        state: None,
                        phase: None,
                        stale: false,
                    },
                ),
            ],
            1,
            ChangeRequestPhase::Testing,
        );
        assert_eq!(
            changes(&unjudged, &before),
            [
                "3 workload(s) judged against the advisories: 1 compliant, 1 non-compliant (overdue), 1 remediating"
            ]
        );
        assert_eq!(
            summary(&after),
            "3 workloads: 1 compliant, 1 non-compliant (overdue), 1 verified compliant \
             (3 on a stale template) | templates: 1/1 rebuilt | jobs running: 0"
        );
    }

    #[test]
    fn finished_only_when_everything_settled_and_rebuilt() {
        let settled = [
            (
                "a",
                workload(
                    ComplianceState::Compliant,
                    Some(RemediationPhase::Verified),
                    true,
                ),
            ),
            ("b", workload(ComplianceState::Exempt, None, true)),
        ];
        assert!(finished(&snap(&settled, 2, ChangeRequestPhase::Published)));
        // The template still waits for its rebuild.
        assert!(!finished(&snap(
            &settled,
            1,
            ChangeRequestPhase::AwaitingApproval
        )));
        // A Workload still remediating.
        let busy = [
            (
                "a",
                workload(
                    ComplianceState::Overdue,
                    Some(RemediationPhase::Verifying),
                    true,
                ),
            ),
            ("b", workload(ComplianceState::Exempt, None, true)),
        ];
        assert!(!finished(&snap(&busy, 2, ChangeRequestPhase::Published)));
        // A Job still running.
        let mut running = snap(&settled, 2, ChangeRequestPhase::Published);
        running.running_jobs.push("a-123-1".to_owned());
        assert!(!finished(&running));
        // The policy's counts lag behind.
        let mut lagging = snap(&settled, 2, ChangeRequestPhase::Published);
        if let Some(p) = lagging.policies.get_mut("critical") {
            p.remediating = 1;
        }
        assert!(!finished(&lagging));
        assert_eq!(
            awaiting_approval(&snap(&settled, 1, ChangeRequestPhase::AwaitingApproval)).len(),
            1
        );
    }
}
