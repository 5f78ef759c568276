//! The fleet report: Workloads, Templates and PatchPolicies (as their
//! statuses say) → one summary, rendered as a table, JSON, CSV or a
//! self-contained HTML page. Pure: `patchloop report` reads the objects,
//! this decides and renders.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    /// Of which overdue.
    pub overdue: i32,
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
                overdue: counts.overdue,
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

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut first = true;
        for (cell, w) in cells.zip(&widths) {
            if !first {
                out.push_str("  ");
            }
            first = false;
            let _ = write!(out, "{cell:<w$}");
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

const WORKLOAD_HEADER: [&str; 9] = [
    "NAMESPACE",
    "WORKLOAD",
    "PLATFORM",
    "STATE",
    "OVERDUE",
    "PENDING",
    "EXEMPT",
    "REMEDIATION",
    "TEMPLATE",
];

fn workload_cells(r: &WorkloadRow) -> Vec<String> {
    vec![
        r.namespace.clone(),
        r.name.clone(),
        r.platform.clone(),
        r.state.clone(),
        r.overdue.to_string(),
        r.pending.to_string(),
        r.exempt.to_string(),
        dash(&r.remediation),
        dash(&r.template),
    ]
}

/// A plain-text table for terminals.
pub fn render_table(report: &FleetReport) -> String {
    let mut out = String::new();
    let totals: Vec<String> = report
        .totals
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "Fleet report, {}: {} Workloads ({})\n",
        report.generated_at,
        report.workloads.len(),
        totals.join(", ")
    );
    let rows: Vec<Vec<String>> = report.workloads.iter().map(workload_cells).collect();
    table(&mut out, &WORKLOAD_HEADER, &rows);
    if !report.templates.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .templates
            .iter()
            .map(|t| {
                vec![
                    t.namespace.clone(),
                    t.name.clone(),
                    t.revision.to_string(),
                    t.state.clone(),
                    dash(&t.change_request),
                    t.stale_workloads.to_string(),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "NAMESPACE",
                "TEMPLATE",
                "REVISION",
                "STATE",
                "CHANGE-REQUEST",
                "STALE-WORKLOADS",
            ],
            &rows,
        );
    }
    if !report.policies.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = report
            .policies
            .iter()
            .map(|p| {
                vec![
                    p.namespace.clone(),
                    p.name.clone(),
                    p.mode.clone(),
                    format!("{}/{}", p.compliant, p.matched),
                    p.overdue.to_string(),
                    p.remediating.to_string(),
                    p.failed.to_string(),
                    if p.rollout_paused { "yes" } else { "no" }.into(),
                    dash(&p.next_window),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "NAMESPACE",
                "POLICY",
                "MODE",
                "COMPLIANT",
                "OVERDUE",
                "REMEDIATING",
                "FAILED",
                "PAUSED",
                "NEXT-WINDOW",
            ],
            &rows,
        );
    }
    out
}

/// One CSV line per Workload, with a header.
pub fn render_csv(report: &FleetReport) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "namespace",
        "workload",
        "platform",
        "state",
        "overdue",
        "pending",
        "exempt",
        "blocked",
        "noFixYet",
        "nextDue",
        "remediation",
        "template",
        "staleTemplate",
    ])?;
    for r in &report.workloads {
        w.write_record([
            r.namespace.as_str(),
            &r.name,
            &r.platform,
            &r.state,
            &r.overdue.to_string(),
            &r.pending.to_string(),
            &r.exempt.to_string(),
            &r.blocked.to_string(),
            &r.no_fix_yet.to_string(),
            r.next_due.as_deref().unwrap_or(""),
            r.remediation.as_deref().unwrap_or(""),
            r.template.as_deref().unwrap_or(""),
            if r.stale_template { "true" } else { "false" },
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A self-contained HTML page (inline style, no scripts, every value
/// escaped).
pub fn render_html(report: &FleetReport) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Patchloop fleet report</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}.Overdue{background:#fdd}.Pending{background:#ffd}.Unknown{background:#eee}.Compliant,.Exempt{background:#dfd}</style></head><body>\n",
    );
    let _ = writeln!(
        out,
        "<h1>Fleet report</h1><p>Generated {}; {} Workloads: {}</p>",
        escape(&report.generated_at),
        report.workloads.len(),
        escape(
            &report
                .totals
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    );
    out.push_str("<h2>Workloads</h2><table><tr>");
    for h in WORKLOAD_HEADER {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for r in &report.workloads {
        let _ = write!(out, "<tr class=\"{}\">", escape(&r.state));
        for cell in workload_cells(r) {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n<h2>Templates</h2><table><tr><th>NAMESPACE</th><th>TEMPLATE</th><th>REVISION</th><th>STATE</th><th>CHANGE-REQUEST</th><th>STALE-WORKLOADS</th></tr>\n");
    for t in &report.templates {
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.state),
            escape(&t.namespace),
            escape(&t.name),
            t.revision,
            escape(&t.state),
            escape(&dash(&t.change_request)),
            t.stale_workloads
        );
    }
    out.push_str("</table>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workload(name: &str, state: &str, overdue: i32, template: serde_json::Value) -> Workload {
        serde_json::from_value(json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": "fleet"},
            "spec": {"platform": "Debian:12"},
            "status": {"compliance": {"state": state, "overdue": overdue, "pending": 1},
                       "template": template,
                       "remediation": {"phase": "Verifying", "attempt": 1}}
        }))
        .expect("workload")
    }

    fn report() -> FleetReport {
        let workloads = [
            workload(
                "web-02",
                "Compliant",
                0,
                json!({"name": "base", "revision": 2, "latest": 2, "current": true}),
            ),
            workload(
                "web-01",
                "Overdue",
                2,
                json!({"name": "base", "revision": 1, "latest": 2, "current": false}),
            ),
            workload("db-<1>", "Pending", 0, json!(null)),
        ];
        let template: Template = serde_json::from_value(json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "Template",
            "metadata": {"name": "base", "namespace": "fleet"},
            "spec": {"platform": "Debian:12", "image": "debian:12"},
            "status": {"revision": 2, "compliance": {"state": "Compliant"}, "staleWorkloads": 1}
        }))
        .expect("template");
        build(
            &workloads,
            &[template],
            &[],
            "2026-11-24T08:00:00Z".parse().expect("ts"),
        )
    }

    #[test]
    fn worst_first_with_totals_and_stale_templates() {
        let r = report();
        let names: Vec<&str> = r.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["web-01", "db-<1>", "web-02"]);
        assert_eq!(r.totals.get("Overdue"), Some(&1));
        assert_eq!(r.totals.get("Compliant"), Some(&1));
        assert!(r.workloads[0].stale_template);
        assert_eq!(
            r.workloads[0].template.as_deref(),
            Some("base@1 (stale, latest 2)")
        );
        assert_eq!(r.workloads[0].remediation.as_deref(), Some("Verifying"));
        assert_eq!(r.templates[0].stale_workloads, 1);
    }

    #[test]
    fn renders_table_csv_json_and_escaped_html() {
        let r = report();
        let t = render_table(&r);
        assert!(t.starts_with("Fleet report, 2026-11-24T08:00:00Z: 3 Workloads (Compliant 1, Overdue 1, Pending 1)"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("fleet      web-01") && l.contains("Overdue")),
            "{t}"
        );
        let csv = render_csv(&r).expect("csv");
        let mut lines = csv.lines();
        assert!(
            lines
                .next()
                .is_some_and(|h| h.starts_with("namespace,workload,platform,state"))
        );
        assert_eq!(
            lines.next(),
            Some(
                "fleet,web-01,Debian:12,Overdue,2,1,0,0,0,,Verifying,\"base@1 (stale, latest 2)\",true"
            )
        );
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["workloads"][0]["staleTemplate"], true);
        let html = render_html(&r);
        assert!(html.contains("db-&lt;1&gt;") && !html.contains("db-<1>"));
        assert!(html.starts_with("<!DOCTYPE html>") && !html.contains("<script"));
    }
}
