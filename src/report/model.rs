//! The report's model: one row per Workload, Template and PatchPolicy, as
//! their statuses say, worst first.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::common::ComplianceState;
use crate::api::{PatchPolicy, Template, Workload};

/// One Workload's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.platform`.
    pub platform: String,
    /// Compliance state (`Unknown` until judged).
    pub state: String,
    /// Findings by state.
    pub pending: i32,
    /// Overdue findings.
    pub overdue: i32,
    /// Exempt findings.
    pub exempt: i32,
    /// Findings whose fix the policy rejects.
    pub blocked: i32,
    /// Findings with no fix yet.
    pub no_fix_yet: i32,
    /// The earliest due date of a pending finding.
    pub next_due: Option<String>,
    /// The remediation phase, if any.
    pub remediation: Option<String>,
    /// `name@revision`, with `(stale, latest N)` when an older revision.
    pub template: Option<String>,
    /// The template revision is older than the latest.
    pub stale_template: bool,
}

/// One Template's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The published revision.
    pub revision: i64,
    /// Compliance state of that revision.
    pub state: String,
    /// The open ChangeRequest.
    pub change_request: Option<String>,
    /// Workloads running an older revision.
    pub stale_workloads: i32,
}

/// One PatchPolicy's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `Report` or `Remediate`.
    pub mode: String,
    /// Matched Workloads.
    pub matched: i32,
    /// Of which compliant.
    pub compliant: i32,
    /// Of which pending (a fix due, not late yet).
    pub pending: i32,
    /// Of which overdue.
    pub overdue: i32,
    /// Of which exempt.
    pub exempt: i32,
    /// Of which unknown.
    pub unknown: i32,
    /// Being remediated.
    pub remediating: i32,
    /// Remediation failed or unverified.
    pub failed: i32,
    /// The rollout paused itself.
    pub rollout_paused: bool,
    /// The next maintenance window.
    pub next_window: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetReport {
    /// When it was made.
    pub generated_at: String,
    /// Workloads per compliance state.
    pub totals: BTreeMap<String, usize>,
    /// Workloads, worst first.
    pub workloads: Vec<WorkloadRow>,
    /// Templates.
    pub templates: Vec<TemplateRow>,
    /// Policies.
    pub policies: Vec<PolicyRow>,
}

fn rank(state: &str) -> u8 {
    match state {
        "Overdue" => 0,
        "Unknown" => 1,
        "Pending" => 2,
        "Exempt" => 3,
        _ => 4,
    }
}

/// What the report says for scripts, as `patchloop evaluate` does for one
/// inventory: 0 when every Workload is compliant or exempt, 1 when a fix is
/// pending or overdue anywhere, 3 when nothing is but some compliance is
/// unknown (no advisory data, stale inventory, not judged yet).
pub fn exit_code(report: &FleetReport) -> u8 {
    let has = |state: &str| report.totals.get(state).is_some_and(|n| *n > 0);
    if has("Overdue") || has("Pending") {
        1
    } else if report
        .totals
        .keys()
        .any(|s| s != "Compliant" && s != "Exempt")
    {
        3
    } else {
        0
    }
}

/// Builds the report from the objects' statuses.
pub fn build(
    workloads: &[Workload],
    templates: &[Template],
    policies: &[PatchPolicy],
    now: Timestamp,
) -> FleetReport {
    let mut rows: Vec<WorkloadRow> = workloads
        .iter()
        .map(|w| {
            let status = w.status.clone().unwrap_or_default();
            let c = status.compliance.unwrap_or_default();
            let template = status.template.as_ref();
            let stale = template.is_some_and(|t| !t.current && t.latest.is_some());
            WorkloadRow {
                namespace: w.metadata.namespace.clone().unwrap_or_default(),
                name: w.metadata.name.clone().unwrap_or_default(),
                platform: w.spec.platform.clone(),
                state: c.state.unwrap_or(ComplianceState::Unknown).to_string(),
                pending: c.pending,
                overdue: c.overdue,
                exempt: c.exempt,
                blocked: c.blocked,
                no_fix_yet: c.no_fix_yet,
                next_due: c.next_due.map(|t| t.0.to_string()),
                remediation: status
                    .remediation
                    .and_then(|r| r.phase)
                    .map(|p| format!("{p:?}")),
                template: template.map(|t| {
                    let at = t.revision.map_or_else(String::new, |r| format!("@{r}"));
                    if stale {
                        format!(
                            "{}{at} (stale, latest {})",
                            t.name,
                            t.latest.unwrap_or_default()
                        )
                    } else {
                        format!("{}{at}", t.name)
                    }
                }),
                stale_template: stale,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (rank(&a.state), -a.overdue, &a.namespace, &a.name).cmp(&(
            rank(&b.state),
            -b.overdue,
            &b.namespace,
            &b.name,
        ))
    });
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        *totals.entry(r.state.clone()).or_default() += 1;
    }
    let templates = templates
        .iter()
        .map(|t| {
            let status = t.status.clone().unwrap_or_default();
            TemplateRow {
                namespace: t.metadata.namespace.clone().unwrap_or_default(),
                name: t.metadata.name.clone().unwrap_or_default(),
                revision: status.revision.unwrap_or(1),
                state: status
                    .compliance
                    .and_then(|c| c.state)
                    .unwrap_or(ComplianceState::Unknown)
                    .to_string(),
                change_request: status.change_request,
                stale_workloads: status.stale_workloads,
            }
        })
        .collect();
    let policies = policies
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let counts = status.workloads.unwrap_or_default();
            PolicyRow {
                namespace: p.metadata.namespace.clone().unwrap_or_default(),
                name: p.metadata.name.clone().unwrap_or_default(),
                mode: format!("{:?}", p.spec.remediation.mode),
                matched: counts.matched,
                compliant: counts.compliant,
                pending: counts.pending,
                overdue: counts.overdue,
                exempt: counts.exempt,
                unknown: counts.unknown,
                remediating: counts.remediating,
                failed: counts.failed,
                rollout_paused: status.rollout.is_some_and(|r| r.paused_at.is_some()),
                next_window: status.next_window.map(|t| t.0.to_string()),
            }
        })
        .collect();
    FleetReport {
        generated_at: now.to_string(),
        totals,
        workloads: rows,
        templates,
        policies,
    }
}
