//! The fleet report: Workloads, Templates and PatchPolicies (as their
//! statuses say) → one summary, rendered as a table, JSON, CSV or a
//! self-contained HTML page. Pure: `patchloop report` reads the objects,
//! this decides and renders.
//!
//! `model.rs` builds the [`FleetReport`] from the objects; `text.rs` renders
//! it as a table or CSV, `html.rs` as the HTML page (JSON is the model's own
//! serde form).

mod html;
mod model;
mod text;

pub use html::{BAR_UNITS, render_html};
pub use model::{FleetReport, PolicyRow, TemplateRow, WorkloadRow, build, exit_code};
pub use text::{render_csv, render_table};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Template, Workload};
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
    fn the_exit_code_says_the_worst_for_scripts() {
        let mut r = report();
        let with = |r: &mut FleetReport, totals: &[(&str, usize)]| {
            r.totals = totals.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect();
            exit_code(r)
        };
        assert_eq!(with(&mut r, &[("Compliant", 3), ("Exempt", 1)]), 0);
        assert_eq!(with(&mut r, &[]), 0);
        assert_eq!(with(&mut r, &[("Compliant", 3), ("Unknown", 1)]), 3);
        assert_eq!(with(&mut r, &[("Unknown", 1), ("Pending", 1)]), 1);
        assert_eq!(with(&mut r, &[("Overdue", 2)]), 1);
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

    #[test]
    fn an_empty_fleet_renders_empty_charts() {
        let r = build(&[], &[], &[], "2026-11-24T08:00:00Z".parse().expect("ts"));
        let html = render_html(&r);
        assert!(
            html.contains("id=\"total-Overdue\" data-count=\"0\""),
            "{html}"
        );
        assert!(html.contains("data-total=\"0\""), "{html}");
        assert!(html.contains("<rect class=\"empty\""), "{html}");
        assert!(!html.contains("\"NaN") && !html.contains("\"inf"), "{html}");
        assert!(html.contains("No Workload has an overdue finding."));
        assert!(html.contains("No PatchPolicy.") && html.contains("No Template."));
    }
}
