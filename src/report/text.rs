//! The report as a plain-text table and as CSV.

use std::fmt::Write as _;

use super::model::{FleetReport, WorkloadRow};

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

pub(super) fn dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

pub(super) const WORKLOAD_HEADER: [&str; 9] = [
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
