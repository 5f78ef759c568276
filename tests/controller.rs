//! `patchloop run` against a real Kubernetes 1.20.2 control plane: feeds,
//! inventories, Workload compliance, PatchPolicy and PatchException status.

mod support;

use std::time::Duration;

use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use patchloop::api::{PatchException, PatchPolicy, Workload};
use serde_json::{Value, json};
use support::patchloop::Patchloop;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const WAIT: Duration = Duration::from_secs(60);

/// Applies a manifest (any Patchloop kind) with the test's field manager.
async fn apply(client: &kube::Client, ns: &str, doc: Value) {
    let kind = doc["kind"].as_str().expect("kind").to_owned();
    let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
    let plural = match kind.as_str() {
        "PatchPolicy" => "patchpolicies".to_owned(),
        "Inventory" => "inventories".to_owned(),
        k => format!("{}s", k.to_lowercase()),
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("patchloop.dev", "v1alpha1", &kind),
        &plural,
    );
    let api: Api<DynamicObject> = if kind == "AdvisoryFeed" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), ns, &resource)
    };
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    api.patch(
        &name,
        &PatchParams::apply("test-reporter").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"));
}

fn feed(name: &str, label: &str, format: &str, path: &str) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
        "metadata": {"name": name, "labels": {"patchloop-test": label}},
        "spec": {"source": {"path": path}, "format": format, "interval": "1h"}
    })
}

fn inventory(name: &str, workload: &str, packages: &[&str]) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": name},
        "spec": {
            "subject": {"kind": "Workload", "name": workload},
            "reporter": "test", "reportedAt": "2026-11-24T08:00:00Z", "format": "dpkg",
            "packages": packages,
        }
    })
}

fn workload(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "labels": labels},
        "spec": {"platform": "Debian:12", "target": {"address": "10.0.0.1"}}
    })
}

fn policy(name: &str, selector: Value, priority: i32) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": selector}, "priority": priority,
                 "deadlines": {"critical": "3d", "high": "7d", "medium": "30d", "low": "90d", "unknown": "30d"},
                 "knownExploited": "2d", "inventoryMaxAge": "3650d"}
    })
}

const OLD_GLIBC: &[&str] = &[
    "libc6 2.36-9+deb12u2 glibc",
    "libc-bin 2.36-9+deb12u2 glibc",
    "bash 5.2.15-2+b8 bash 5.2.15-2",
];
const FIXED_GLIBC: &[&str] = &[
    "libc6 2.36-9+deb12u3 glibc",
    "libc-bin 2.36-9+deb12u3 glibc",
    "bash 5.2.15-2+b8 bash 5.2.15-2",
];

/// Feeds of the real fixtures, labelled for this test only.
async fn fixture_feeds(client: &kube::Client, label: &str) {
    apply(
        client,
        "",
        feed(
            &format!("osv-{label}"),
            label,
            "OSV",
            &format!("{FIXTURES}/osv/debian"),
        ),
    )
    .await;
    apply(
        client,
        "",
        feed(
            &format!("kev-{label}"),
            label,
            "KEV",
            &format!("{FIXTURES}/kev/known_exploited_vulnerabilities.json"),
        ),
    )
    .await;
}

async fn workload_status(
    api: &Api<Workload>,
    name: &str,
) -> Option<patchloop::api::WorkloadStatus> {
    api.get_status(name).await.ok().and_then(|w| w.status)
}

fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a str> {
    conds
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.as_str())
}

#[tokio::test]
async fn a_real_advisory_yields_exact_findings_and_a_fixed_inventory_clears_them() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("compliance").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({"tier": "gold"}), 100)).await;
    apply(&client, &ns, workload("web-01", json!({"tier": "gold"}))).await;
    apply(&client, &ns, inventory("web-01", "web-01", OLD_GLIBC)).await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;

    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let status = support::eventually("web-01 to be Overdue", WAIT, async || {
        workload_status(&workloads, "web-01").await.filter(|s| {
            s.compliance
                .as_ref()
                .and_then(|c| c.state)
                .map(|s| s.to_string())
                .as_deref()
                == Some("Overdue")
        })
    })
    .await;
    let ids: Vec<&str> = status
        .findings
        .iter()
        .map(|f| f.advisory.as_str())
        .collect();
    // Both the DSA and the Debian CVE record, earliest due first (the DSA
    // was published hours before the CVE record).
    assert_eq!(ids, ["DSA-5514-1", "CVE-2023-4911"]);
    let dsa = &status.findings[0];
    assert!(dsa.known_exploited);
    assert_eq!(dsa.due_by.as_deref(), Some("gold"));
    let packages: Vec<(&str, Option<&str>)> = dsa
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.fixed.as_deref()))
        .collect();
    assert_eq!(
        packages,
        [
            ("libc-bin", Some("2.36-9+deb12u3")),
            ("libc6", Some("2.36-9+deb12u3"))
        ]
    );
    assert_eq!(condition(&status.conditions, "Compliant"), Some("False"));
    assert_eq!(condition(&status.conditions, "Ready"), Some("True"));
    assert_eq!(
        condition(&status.conditions, "InventoryFresh"),
        Some("True")
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.policies, ["gold"]);

    apply(&client, &ns, inventory("web-01", "web-01", FIXED_GLIBC)).await;
    let status = support::eventually("web-01 to be Compliant", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| condition(&s.conditions, "Compliant") == Some("True"))
    })
    .await;
    assert!(status.findings.is_empty());

    // kubectl wait works on every kind this controller reconciles.
    for target in ["workload/web-01", "patchpolicy/gold", "inventory/web-01"] {
        let out = env.kubectl([
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "--timeout=60s",
            target,
        ]);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.kubectl([
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        &format!("advisoryfeed/osv-{label}"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let feeds: Api<patchloop::api::AdvisoryFeed> = Api::all(client.clone());
    let feed = feeds.get(&format!("osv-{label}")).await.expect("feed");
    let fs = feed.status.expect("feed status");
    assert_eq!(fs.advisories, 19);
    assert!(
        fs.ecosystems
            .iter()
            .any(|e| e.name == "Debian:12" && e.advisories > 5),
        "{:?}",
        fs.ecosystems
    );
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    let gold = support::eventually("policy counts", WAIT, async || {
        policies
            .get_status("gold")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.workloads)
            .filter(|w| w.compliant == 1)
    })
    .await;
    assert_eq!((gold.matched, gold.compliant, gold.overdue), (1, 1, 0));
    drop(pl);
}

#[tokio::test]
async fn equal_priorities_conflict_on_both_policies_and_the_workload() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("conflict").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("alpha", json!({"app": "shop"}), 10)).await;
    apply(&client, &ns, policy("beta", json!({"tier": "gold"}), 10)).await;
    apply(
        &client,
        &ns,
        workload("web-02", json!({"app": "shop", "tier": "gold"})),
    )
    .await;
    apply(&client, &ns, inventory("web-02", "web-02", FIXED_GLIBC)).await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;

    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let status = support::eventually("Conflict on web-02", WAIT, async || {
        workload_status(&workloads, "web-02")
            .await
            .filter(|s| condition(&s.conditions, "Conflict") == Some("True"))
    })
    .await;
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Conflict")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("alpha, beta"), "{message}");
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    for (name, rival) in [("alpha", "beta"), ("beta", "alpha")] {
        let st = support::eventually(&format!("Conflict on {name}"), WAIT, async || {
            policies
                .get_status(name)
                .await
                .ok()
                .and_then(|p| p.status)
                .filter(|s| condition(&s.conditions, "Conflict") == Some("True"))
        })
        .await;
        let msg = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Conflict")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(msg.contains(rival), "{msg}");
    }
}

#[tokio::test]
async fn an_exception_stops_exempting_when_it_expires() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("expiry").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({"tier": "gold"}), 1)).await;
    apply(
        &client,
        &ns,
        workload("erp-01", json!({"tier": "gold", "app": "erp"})),
    )
    .await;
    apply(&client, &ns, inventory("erp-01", "erp-01", OLD_GLIBC)).await;
    let expires = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(20))
        .expect("time");
    let expires = jiff::Timestamp::from_second(expires.as_second()).expect("time");
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchException",
            "metadata": {"name": "erp-glibc"},
            "spec": {"advisories": ["CVE-2023-4911"], "selector": {"matchLabels": {"app": "erp"}},
                     "reason": "vendor certification pending", "approvedBy": "security-team",
                     "expires": expires.to_string()}
        }),
    )
    .await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let status = support::eventually("erp-01 Exempt", WAIT, async || {
        workload_status(&workloads, "erp-01").await.filter(|s| {
            s.compliance
                .as_ref()
                .and_then(|c| c.state)
                .map(|s| s.to_string())
                .as_deref()
                == Some("Exempt")
        })
    })
    .await;
    assert!(
        status
            .findings
            .iter()
            .all(|f| f.exempted_by.as_deref() == Some("erp-glibc"))
    );
    let exceptions: Api<PatchException> = Api::namespaced(client.clone(), &ns);
    let ex = exceptions
        .get_status("erp-glibc")
        .await
        .expect("exception")
        .status
        .expect("status");
    assert_eq!(condition(&ex.conditions, "Active"), Some("True"));
    assert_eq!(ex.matched_workloads, 1);

    // After the expiry (no polling: the controller requeued at that instant).
    let status = support::eventually(
        "erp-01 Overdue after the expiry",
        Duration::from_secs(90),
        async || {
            workload_status(&workloads, "erp-01").await.filter(|s| {
                s.compliance
                    .as_ref()
                    .and_then(|c| c.state)
                    .map(|s| s.to_string())
                    .as_deref()
                    == Some("Overdue")
            })
        },
    )
    .await;
    assert!(jiff::Timestamp::now() >= expires);
    assert!(status.findings.iter().all(|f| f.exempted_by.is_none()));
    let ex = support::eventually("the exception to say Expired", WAIT, async || {
        exceptions
            .get_status("erp-glibc")
            .await
            .ok()
            .and_then(|e| e.status)
            .filter(|s| condition(&s.conditions, "Active") == Some("False"))
    })
    .await;
    assert_eq!(
        ex.conditions
            .iter()
            .find(|c| c.type_ == "Active")
            .map(|c| c.reason.as_str()),
        Some("Expired")
    );
}
