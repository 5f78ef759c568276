//! The demo scenario end to end on the real control plane: `patchloop demo`
//! runs non-interactively, the test gives the approval by running the
//! command the demo prints, and the final state is checked against what the
//! policies say, the report against the objects' status.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;
use patchloop::api::change_request::ChangeRequestPhase;
use patchloop::api::{ChangeRequest, PatchPolicy, Template, Workload};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_patchloop");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[tokio::test]
async fn the_demo_runs_the_whole_loop_and_the_report_matches_the_objects() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("demo").await;
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8").to_owned();
    let logs = tempfile::tempdir().expect("tempdir");
    let controller_log = logs.path().join("controller.log");

    let mut demo = tokio::process::Command::new(BIN)
        .current_dir(ROOT)
        .args(["demo", "--namespace", &ns, "--kubeconfig", &kubeconfig])
        .args(["--job-seconds", "1", "--timeout", "240"])
        .arg("--controller-log")
        .arg(&controller_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting patchloop demo");
    let stdout = demo.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let mut approvals = 0;
    let status = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(line) = lines.next_line().await.expect("reading the demo's output") {
            println!("{line}");
            // The demo prints the approval command and waits: run it as a
            // person would, from another terminal.
            if let Some(command) = line.trim().strip_prefix("patchloop approve ") {
                let args = shell_words(command);
                let out = tokio::process::Command::new(BIN)
                    .arg("approve")
                    .args(&args)
                    .output()
                    .await
                    .expect("running the printed approve command");
                assert!(
                    out.status.success(),
                    "the printed command failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                approvals += 1;
            }
            printed.push(line);
        }
        demo.wait().await.expect("the demo's exit status")
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the demo did not finish in 300 s; controller log:\n{}",
            std::fs::read_to_string(&controller_log).unwrap_or_default()
        )
    });
    assert!(
        status.success(),
        "the demo failed ({status}); controller log:\n{}",
        std::fs::read_to_string(&controller_log).unwrap_or_default()
    );
    let output = printed.join("\n");
    // Exactly one template (the critical tier's) needed a person.
    assert_eq!(approvals, 1, "{output}");
    assert!(output.contains("SIMULATION"), "labelled as a simulation");
    assert!(output.contains("waits for a person"), "{output}");
    assert!(output.contains("→ remediating"), "{output}");
    assert!(output.contains("→ verified compliant"), "{output}");
    assert!(output.contains("Fleet report"), "ends with the report");

    // Live workloads: compliant, or exempt where the PatchException says.
    let workloads = Api::<Workload>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("workloads")
        .items;
    assert_eq!(workloads.len(), 24);
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for w in &workloads {
        let name = w.metadata.name.as_deref().unwrap_or_default();
        let status = w.status.as_ref().expect("status");
        let state = status
            .compliance
            .as_ref()
            .and_then(|c| c.state)
            .expect("a compliance state")
            .to_string();
        let expected = if name.starts_with("report-") {
            "Exempt"
        } else {
            "Compliant"
        };
        assert_eq!(state, expected, "{name}");
        *states.entry(state).or_default() += 1;
        // Every one was provisioned from revision 1: now stale.
        let template = status.template.as_ref().expect("template status");
        assert_eq!((template.revision, template.latest), (Some(1), Some(2)));
        assert!(!template.current, "{name} is flagged as stale");
    }
    // Both templates rebuilt, published at revision 2, their requests closed.
    let templates = Api::<Template>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("templates")
        .items;
    assert_eq!(templates.len(), 2);
    for t in &templates {
        let status = t.status.as_ref().expect("status");
        assert_eq!(status.revision, Some(2));
        assert!(
            status
                .image
                .as_deref()
                .is_some_and(|i| i.contains("@sha256:"))
        );
        assert_eq!(
            status
                .compliance
                .as_ref()
                .and_then(|c| c.state)
                .map(|s| s.to_string())
                .as_deref(),
            Some("Compliant")
        );
    }
    let requests = Api::<ChangeRequest>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("requests")
        .items;
    assert_eq!(requests.len(), 2);
    for r in &requests {
        let status = r.status.as_ref().expect("status");
        assert_eq!(status.phase, Some(ChangeRequestPhase::Published));
    }
    let approved_by_a_person = requests
        .iter()
        .filter_map(|r| r.status.as_ref()?.approval.as_ref())
        .filter(|a| {
            a.field_manager
                .as_deref()
                .is_some_and(|m| m.starts_with("patchloop-approve:"))
        })
        .count();
    assert_eq!(approved_by_a_person, 1);

    // The report's counts equal the objects' status.
    let out = std::process::Command::new(BIN)
        .args([
            "report",
            "-n",
            &ns,
            "-o",
            "json",
            "--kubeconfig",
            &kubeconfig,
        ])
        .output()
        .expect("patchloop report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let totals: BTreeMap<String, usize> =
        serde_json::from_value(report["totals"].clone()).expect("totals");
    assert_eq!(totals, states);
    let policies = Api::<PatchPolicy>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("policies")
        .items;
    for p in &policies {
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let counts = p
            .status
            .as_ref()
            .and_then(|s| s.workloads.clone())
            .expect("policy counts");
        let row = report["policies"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .expect("a report row per policy");
        assert_eq!(row["matched"], counts.matched, "{name}");
        assert_eq!(row["compliant"], counts.compliant, "{name}");
        assert_eq!(row["overdue"], 0, "{name}");
        assert_eq!(row["remediating"], 0, "{name}");
        let matching = workloads
            .iter()
            .filter(|w| {
                w.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("tier"))
                    .map(String::as_str)
                    == Some(name)
            })
            .count();
        assert_eq!(counts.matched as usize, matching, "{name}");
    }
    for t in &templates {
        let name = t.metadata.name.as_deref().unwrap_or_default();
        let row = report["templates"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name))
            .expect("a report row per template");
        assert_eq!(row["revision"], 2);
        assert_eq!(
            row["staleWorkloads"]
                .as_i64()
                .or(row["stale_workloads"].as_i64()),
            t.status.as_ref().map(|s| i64::from(s.stale_workloads))
        );
    }
}

/// Splits the printed command's arguments (words, and single-quoted words
/// as the demo quotes them).
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            ' ' if !quoted => {
                if any {
                    words.push(std::mem::take(&mut current));
                    any = false;
                }
            }
            _ => {
                current.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(current);
    }
    words
}
