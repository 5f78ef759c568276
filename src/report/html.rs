//! The report as one self-contained HTML page (inline style, no scripts).

use std::fmt::Write as _;

use super::model::{FleetReport, WorkloadRow};
use super::text::{WORKLOAD_HEADER, dash};

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

/// The compliance states, worst first (the summary cards' order).
const STATES_WORST_FIRST: [&str; 5] = ["Overdue", "Unknown", "Pending", "Exempt", "Compliant"];

/// The compliance states, best first (the stacked bars' order).
const STATES_BEST_FIRST: [&str; 5] = ["Compliant", "Exempt", "Pending", "Overdue", "Unknown"];

/// The stacked bars' length in SVG user units: a segment is
/// `count * BAR_UNITS / total` wide.
pub const BAR_UNITS: usize = 1000;

/// The overdue chart lists at most this many Workloads.
const OVERDUE_CHART_ROWS: usize = 25;

const HTML_STYLE: &str = "\
:root{--Compliant:#2f9e44;--Exempt:#4c6ef5;--Pending:#f08c00;--Overdue:#e03131;--Unknown:#868e96;--line:#dee2e6;--muted:#495057}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:0;background:#f8f9fa;color:#212529;font-size:14px;line-height:1.4}
main{max-width:1200px;margin:0 auto;padding:24px 32px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 12px}
.meta{color:var(--muted);margin:0 0 20px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-bottom:20px}
.cards{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;background:none;border:none;padding:0}
.card{background:#fff;border:1px solid var(--line);border-top:5px solid var(--muted);border-radius:8px;padding:10px 14px}
.card .n{font-size:30px;font-weight:700;line-height:1.1}
.card .l{color:var(--muted)}
.card .p{color:var(--muted);font-size:12px}
.card.Compliant{border-top-color:var(--Compliant)}.card.Exempt{border-top-color:var(--Exempt)}.card.Pending{border-top-color:var(--Pending)}.card.Overdue{border-top-color:var(--Overdue)}.card.Unknown{border-top-color:var(--Unknown)}
svg.bar{display:block;width:100%;height:auto}
svg.bar.small{width:120px}
rect.Compliant{fill:var(--Compliant)}rect.Exempt{fill:var(--Exempt)}rect.Pending{fill:var(--Pending)}rect.Overdue{fill:var(--Overdue)}rect.Unknown{fill:var(--Unknown)}rect.empty{fill:#e9ecef}
svg.bar text{fill:#fff;font-size:15px;font-weight:600;text-anchor:middle;dominant-baseline:central}
.legend{display:flex;flex-wrap:wrap;gap:16px;margin-top:10px;color:var(--muted)}
.legend .sw{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sw.Compliant{background:var(--Compliant)}.sw.Exempt{background:var(--Exempt)}.sw.Pending{background:var(--Pending)}.sw.Overdue{background:var(--Overdue)}.sw.Unknown{background:var(--Unknown)}
.hbars{display:grid;grid-template-columns:minmax(180px,max-content) 1fr 3em;gap:6px 12px;align-items:center}
.hbars .name{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:13px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:420px}
.hbars .track{background:#f1f3f5;border-radius:3px;height:16px}
.hbars .fill{display:block;background:var(--Overdue);border-radius:3px;height:16px}
.hbars .v{font-weight:600;text-align:right}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:5px 6px;text-align:left;vertical-align:middle}
th{font-size:11px;color:var(--muted);background:#f8f9fa;white-space:nowrap}
.scroll{overflow-x:auto}
td.rollout{font-size:12px;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.hot{color:var(--Overdue);font-weight:700}
.pill{display:inline-block;border-radius:10px;padding:0 8px;color:#fff;font-size:12px;font-weight:600;background:var(--muted)}
.pill.Compliant{background:var(--Compliant)}.pill.Exempt{background:var(--Exempt)}.pill.Pending{background:var(--Pending)}.pill.Overdue{background:var(--Overdue)}.pill.Unknown{background:var(--Unknown)}
.stale{color:#c2255c;font-weight:600}
.none{color:var(--muted);margin:0}
";

/// An inline-SVG bar, one segment per state with a count (best state
/// first), each `count * BAR_UNITS / total` user units wide; a count is
/// written inside its segment when `labels` and it fits.
fn stacked_bar(out: &mut String, id: &str, small: bool, counts: &[(&str, usize)], labels: bool) {
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let height = if small { 60 } else { 44 };
    let summary = counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        out,
        "<svg class=\"bar{}\" id=\"{}\" data-total=\"{total}\" viewBox=\"0 0 {BAR_UNITS} {height}\" role=\"img\" aria-label=\"{}\">",
        if small { " small" } else { "" },
        escape(id),
        escape(if total == 0 { "none" } else { &summary }),
    );
    if total == 0 {
        let _ = write!(
            out,
            "<rect class=\"empty\" x=\"0\" y=\"0\" width=\"{BAR_UNITS}\" height=\"{height}\" rx=\"4\"/>"
        );
    }
    let mut before = 0;
    for (state, n) in counts.iter().filter(|(_, n)| *n > 0) {
        let x = (before * BAR_UNITS) as f64 / total as f64;
        let width = (n * BAR_UNITS) as f64 / total as f64;
        before += n;
        let state = escape(state);
        let _ = write!(
            out,
            "<rect class=\"{state}\" data-state=\"{state}\" data-count=\"{n}\" x=\"{x:.1}\" y=\"0\" width=\"{width:.1}\" height=\"{height}\"><title>{state}: {n}</title></rect>"
        );
        if labels && width >= 40.0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{}\">{n}</text>",
                x + width / 2.0,
                height / 2
            );
        }
    }
    out.push_str("</svg>");
}

fn num_cell(out: &mut String, n: impl std::fmt::Display, hot: bool) {
    let _ = write!(
        out,
        "<td class=\"num{}\">{n}</td>",
        if hot { " hot" } else { "" }
    );
}

fn header_row(out: &mut String, header: &[&str], numeric: &[&str]) {
    out.push_str("<tr>");
    for h in header {
        let class = if numeric.contains(h) {
            " class=\"num\""
        } else {
            ""
        };
        let _ = write!(out, "<th{class}>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
}

/// A self-contained HTML page: inline style, inline-SVG and CSS charts, no
/// scripts and no external resources; every value escaped.
pub fn render_html(report: &FleetReport) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>Patchloop fleet report</title>\n<style>",
    );
    out.push_str(HTML_STYLE);
    out.push_str("</style></head><body><main>\n");
    let total = report.workloads.len();
    let _ = writeln!(
        out,
        "<h1>Patchloop fleet report</h1><p class=\"meta\">Generated <time id=\"generated\">{}</time> · <span id=\"workload-count\">{total}</span> Workloads · {} Templates · {} PatchPolicies</p>",
        escape(&report.generated_at),
        report.templates.len(),
        report.policies.len(),
    );

    // Summary cards: every state, zeros included.
    out.push_str("<section class=\"cards\" id=\"totals\">");
    for state in STATES_WORST_FIRST {
        let n = report.totals.get(state).copied().unwrap_or(0);
        let share = (n * 100 + total / 2).checked_div(total).unwrap_or(0);
        let _ = write!(
            out,
            "<div class=\"card {state}\" id=\"total-{state}\" data-count=\"{n}\"><div class=\"n\">{n}</div><div class=\"l\">{state}</div><div class=\"p\">{share}% of Workloads</div></div>"
        );
    }
    // States the page has no card for (none today) still show up.
    for (state, n) in &report.totals {
        if !STATES_WORST_FIRST.contains(&state.as_str()) {
            let _ = write!(
                out,
                "<div class=\"card\" data-count=\"{n}\"><div class=\"n\">{n}</div><div class=\"l\">{}</div></div>",
                escape(state)
            );
        }
    }
    out.push_str("</section>\n");

    // The fleet as one stacked bar.
    out.push_str("<section><h2>Fleet compliance</h2>");
    let fleet: Vec<(&str, usize)> = STATES_BEST_FIRST
        .iter()
        .map(|s| (*s, report.totals.get(*s).copied().unwrap_or(0)))
        .collect();
    stacked_bar(&mut out, "fleet-bar", false, &fleet, true);
    out.push_str("<div class=\"legend\">");
    for (state, n) in &fleet {
        let _ = write!(
            out,
            "<span><span class=\"sw {state}\"></span>{state} {n}</span>"
        );
    }
    out.push_str("</div></section>\n");

    // Overdue findings per Workload, most first.
    let overdue: Vec<&WorkloadRow> = {
        let mut v: Vec<&WorkloadRow> = report.workloads.iter().filter(|r| r.overdue > 0).collect();
        v.sort_by(|a, b| {
            (-a.overdue, &a.namespace, &a.name).cmp(&(-b.overdue, &b.namespace, &b.name))
        });
        v
    };
    out.push_str("<section id=\"overdue\"><h2>Overdue findings per Workload</h2>");
    if overdue.is_empty() {
        out.push_str("<p class=\"none\">No Workload has an overdue finding.</p>");
    } else {
        let max = overdue[0].overdue.max(1);
        out.push_str("<div class=\"hbars\">");
        for r in overdue.iter().take(OVERDUE_CHART_ROWS) {
            let pct = f64::from(r.overdue) * 100.0 / f64::from(max);
            let name = escape(&format!("{}/{}", r.namespace, r.name));
            let _ = write!(
                out,
                "<span class=\"name\" title=\"{name}\">{name}</span><span class=\"track\"><span class=\"fill\" data-workload=\"{name}\" data-count=\"{}\" style=\"width:{pct:.1}%\"></span></span><span class=\"v\">{}</span>",
                r.overdue, r.overdue
            );
        }
        out.push_str("</div>");
        if overdue.len() > OVERDUE_CHART_ROWS {
            let _ = write!(
                out,
                "<p class=\"none\">… and {} more (see Workloads below).</p>",
                overdue.len() - OVERDUE_CHART_ROWS
            );
        }
    }
    out.push_str("</section>\n");

    // PatchPolicies, each with its matched Workloads as a bar.
    out.push_str("<section id=\"policies\"><h2>PatchPolicies</h2>");
    if report.policies.is_empty() {
        out.push_str("<p class=\"none\">No PatchPolicy.</p>");
    } else {
        out.push_str("<div class=\"scroll\"><table>");
        let header = [
            "POLICY",
            "MODE",
            "WORKLOADS",
            "MATCHED",
            "COMPLIANT",
            "PENDING",
            "OVERDUE",
            "EXEMPT",
            "UNKNOWN",
            "REMEDIATING",
            "FAILED",
            "ROLLOUT",
        ];
        header_row(&mut out, &header, &header[3..11]);
        for p in &report.policies {
            let id = escape(&format!("{}/{}", p.namespace, p.name));
            let _ = write!(
                out,
                "<tr data-policy=\"{id}\"><td>{id}</td><td>{}</td><td>",
                escape(&p.mode)
            );
            let count = |n: i32| usize::try_from(n).unwrap_or(0);
            stacked_bar(
                &mut out,
                &format!("policy-bar-{}-{}", p.namespace, p.name),
                true,
                &[
                    ("Compliant", count(p.compliant)),
                    ("Exempt", count(p.exempt)),
                    ("Pending", count(p.pending)),
                    ("Overdue", count(p.overdue)),
                    ("Unknown", count(p.unknown)),
                ],
                false,
            );
            out.push_str("</td>");
            num_cell(&mut out, p.matched, false);
            num_cell(&mut out, p.compliant, false);
            num_cell(&mut out, p.pending, false);
            num_cell(&mut out, p.overdue, p.overdue > 0);
            num_cell(&mut out, p.exempt, false);
            num_cell(&mut out, p.unknown, false);
            num_cell(&mut out, p.remediating, false);
            num_cell(&mut out, p.failed, p.failed > 0);
            let mut rollout = Vec::new();
            if p.rollout_paused {
                rollout.push("<span class=\"stale\">paused</span>".to_string());
            }
            if let Some(window) = &p.next_window {
                rollout.push(format!("next window<br><time>{}</time>", escape(window)));
            }
            let _ = writeln!(
                out,
                "<td class=\"rollout\">{}</td></tr>",
                if rollout.is_empty() {
                    "-".to_string()
                } else {
                    rollout.join("<br>")
                }
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>\n");

    // Templates.
    out.push_str("<section id=\"templates\"><h2>Templates</h2>");
    if report.templates.is_empty() {
        out.push_str("<p class=\"none\">No Template.</p>");
    } else {
        out.push_str("<div class=\"scroll\"><table>");
        let header = [
            "NAMESPACE",
            "TEMPLATE",
            "REVISION",
            "STATE",
            "CHANGE-REQUEST",
            "STALE-WORKLOADS",
        ];
        header_row(&mut out, &header, &["REVISION", "STALE-WORKLOADS"]);
        for t in &report.templates {
            let state = escape(&t.state);
            let _ = write!(
                out,
                "<tr data-template=\"{}/{}\"><td>{}</td><td>{}</td>",
                escape(&t.namespace),
                escape(&t.name),
                escape(&t.namespace),
                escape(&t.name),
            );
            num_cell(&mut out, t.revision, false);
            let _ = writeln!(
                out,
                "<td><span class=\"pill {state}\">{state}</span></td><td>{}</td><td class=\"num{}\">{}</td></tr>",
                escape(&dash(&t.change_request)),
                if t.stale_workloads > 0 { " stale" } else { "" },
                t.stale_workloads
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>\n");

    // Workloads, worst first.
    out.push_str("<section id=\"workloads\"><h2>Workloads</h2>");
    if report.workloads.is_empty() {
        out.push_str("<p class=\"none\">No Workload.</p>");
    } else {
        out.push_str("<div class=\"scroll\"><table>");
        header_row(
            &mut out,
            &WORKLOAD_HEADER,
            &["OVERDUE", "PENDING", "EXEMPT"],
        );
        for r in &report.workloads {
            let state = escape(&r.state);
            let _ = write!(
                out,
                "<tr data-workload=\"{}/{}\" data-state=\"{state}\"><td>{}</td><td>{}</td><td>{}</td><td><span class=\"pill {state}\">{state}</span></td>",
                escape(&r.namespace),
                escape(&r.name),
                escape(&r.namespace),
                escape(&r.name),
                escape(&r.platform),
            );
            num_cell(&mut out, r.overdue, r.overdue > 0);
            num_cell(&mut out, r.pending, false);
            num_cell(&mut out, r.exempt, false);
            let _ = writeln!(
                out,
                "<td>{}</td><td{}>{}</td></tr>",
                escape(&dash(&r.remediation)),
                if r.stale_template {
                    " class=\"stale\""
                } else {
                    ""
                },
                escape(&dash(&r.template))
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>\n</main></body></html>\n");
    out
}
