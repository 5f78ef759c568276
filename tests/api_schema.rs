//! The API on a real Kubernetes 1.20.2 apiserver: the examples apply (kube
//! client and `kubectl apply --server-side`), invalid manifests are rejected by
//! the apiserver itself with a message naming the field, a 5,000-package
//! Inventory fits, and `kubectl get` / `kubectl explain` show columns and docs.

mod support;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

fn api_for(client: &kube::Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let plural = match kind {
        "PatchPolicy" => "patchpolicies",
        "Inventory" => "inventories",
        other => {
            return api_for_plural(
                client,
                kind,
                &format!("{}s", other.to_lowercase()),
                namespace,
            );
        }
    };
    api_for_plural(client, kind, plural, namespace)
}

fn api_for_plural(
    client: &kube::Client,
    kind: &str,
    plural: &str,
    namespace: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("patchloop.dev", "v1alpha1", kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    if kind == "AdvisoryFeed" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource)
    }
}

/// The first path at which `expected` is not contained in `actual` (objects
/// may have extra keys in `actual`; everything else must be equal).
fn missing_from(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().find_map(|(k, v)| {
            let here = format!("{path}.{k}");
            match a.get(k) {
                Some(av) => missing_from(v, av, &here),
                None => Some(here),
            }
        }),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (ev, av))| missing_from(ev, av, &format!("{path}[{i}]"))),
        _ if expected == actual => None,
        _ => Some(path.to_owned()),
    }
}

fn example_documents() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(EXAMPLES)
        .expect("examples/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable example");
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("example parses");
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            docs.into_iter().map(move |d| (file.clone(), d))
        })
        .collect()
}

#[tokio::test]
async fn every_example_applies_through_the_kube_client() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("examples-client").await;
    let suffix = support::random_suffix();
    let ssa = PatchParams::apply("patchloop-test").force();
    let mut applied = 0;
    for (file, mut doc) in example_documents() {
        let kind = doc["kind"].as_str().expect("kind").to_owned();
        if kind == "AdvisoryFeed" {
            // Cluster-scoped: keep this test's feeds apart from other tests'.
            let name = format!(
                "{}-{suffix}",
                doc["metadata"]["name"].as_str().expect("name")
            );
            doc["metadata"]["name"] = json!(name);
        }
        let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
        let api = api_for(&client, &kind, &ns);
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("dynamic object");
        let stored = api
            .patch(&name, &ssa, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("{file}: {kind}/{name} rejected: {e}"));
        // What went in comes back (nothing pruned by the schema; defaults may be added).
        if let Some(path) = missing_from(&doc["spec"], &stored.data["spec"], "spec") {
            panic!("{file}: {kind}/{name} {path} was changed or pruned by the apiserver");
        }
        applied += 1;
    }
    assert!(applied >= 7, "applied {applied} example objects");
}

#[tokio::test]
async fn every_example_applies_with_kubectl_server_side() {
    let env = support::env();
    let ns = env.namespace("examples-kubectl").await;
    let out = env.kubectl(["apply", "--server-side", "-n", &ns, "-f", EXAMPLES]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply --server-side failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "patchpolicy.patchloop.dev/gold serverside-applied",
        "workload.patchloop.dev/web-01 serverside-applied",
        "inventory.patchloop.dev/workload-web-01 serverside-applied",
        "template.patchloop.dev/debian-12-base serverside-applied",
        "changerequest.patchloop.dev/debian-12-base-x7k2p serverside-applied",
        "patchexception.patchloop.dev/erp-kernel serverside-applied",
        "advisoryfeed.patchloop.dev/osv-debian serverside-applied",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn omitted_defaults_are_filled_in_by_the_apiserver() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("defaults").await;
    let api = api_for(&client, "PatchPolicy", &ns);
    let minimal = json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "PatchPolicy",
        "metadata": {"name": "minimal"},
        "spec": {"selector": {}}
    });
    let obj: DynamicObject = serde_json::from_value(minimal).expect("object");
    let stored = api
        .create(&PostParams::default(), &obj)
        .await
        .expect("minimal policy accepted");
    let spec = &stored.data["spec"];
    // An omitted (or pruned) mode must never mean "act".
    assert_eq!(spec["remediation"]["mode"], json!("Report"));
    assert_eq!(spec["remediation"]["maxConcurrent"], json!(1));
    assert_eq!(spec["deadlines"]["critical"], json!("7d"));
    assert_eq!(spec["inventoryMaxAge"], json!("24h"));
    assert_eq!(spec["templates"]["approval"], json!("Required"));
    // The typed API reads it back.
    let typed: patchloop::api::PatchPolicy =
        serde_json::from_value(serde_json::to_value(&stored).expect("json")).expect("typed");
    assert_eq!(
        typed.spec.remediation.mode,
        patchloop::api::policy::RemediationMode::Report
    );
}

/// One invalid manifest: its kind, spec, and the field path the apiserver's
/// message must name.
struct Invalid {
    what: &'static str,
    kind: &'static str,
    spec: Value,
    field: &'static str,
}

fn invalid_manifests() -> Vec<Invalid> {
    let policy = |remediation: Value| json!({"selector": {}, "remediation": remediation});
    vec![
        Invalid {
            what: "bad enum value for remediation.mode",
            kind: "PatchPolicy",
            spec: policy(json!({"mode": "Remediatee"})),
            field: "spec.remediation.mode",
        },
        Invalid {
            what: "negative maxConcurrent",
            kind: "PatchPolicy",
            spec: policy(json!({"maxConcurrent": -3})),
            field: "spec.remediation.maxConcurrent",
        },
        Invalid {
            what: "malformed maxConcurrent",
            kind: "PatchPolicy",
            spec: policy(json!({"maxConcurrent": "abc"})),
            field: "spec.remediation.maxConcurrent",
        },
        Invalid {
            what: "maxConcurrent above 100%",
            kind: "PatchPolicy",
            spec: policy(json!({"maxConcurrent": "150%"})),
            field: "spec.remediation.maxConcurrent",
        },
        Invalid {
            what: "negative canary",
            kind: "PatchPolicy",
            spec: policy(json!({"canary": -1})),
            field: "spec.remediation.canary",
        },
        Invalid {
            what: "zero attempts",
            kind: "PatchPolicy",
            spec: policy(json!({"attempts": 0})),
            field: "spec.remediation.attempts",
        },
        Invalid {
            what: "malformed duration in deadlines",
            kind: "PatchPolicy",
            spec: json!({"selector": {}, "deadlines": {"critical": "3 days"}}),
            field: "spec.deadlines.critical",
        },
        Invalid {
            what: "duration without unit",
            kind: "PatchPolicy",
            spec: json!({"selector": {}, "inventoryMaxAge": "24"}),
            field: "spec.inventoryMaxAge",
        },
        Invalid {
            what: "malformed window duration",
            kind: "PatchPolicy",
            spec: json!({"selector": {}, "maintenanceWindows": [{"schedule": "0 2 * * SAT", "duration": "4 hours"}]}),
            field: "spec.maintenanceWindows.duration",
        },
        Invalid {
            what: "unknown severity",
            kind: "PatchPolicy",
            spec: json!({"selector": {}, "emergency": {"severities": ["urgent"]}}),
            field: "spec.emergency.severities",
        },
        Invalid {
            what: "bad template approval",
            kind: "PatchPolicy",
            spec: json!({"selector": {}, "templates": {"approval": "Sometimes"}}),
            field: "spec.templates.approval",
        },
        Invalid {
            what: "missing selector",
            kind: "PatchPolicy",
            spec: json!({"priority": 1}),
            field: "spec.selector",
        },
        Invalid {
            what: "missing platform",
            kind: "Workload",
            spec: json!({"paused": false}),
            field: "spec.platform",
        },
        Invalid {
            what: "platform without a release",
            kind: "Workload",
            spec: json!({"platform": "debian"}),
            field: "spec.platform",
        },
        Invalid {
            what: "template revision 0",
            kind: "Workload",
            spec: json!({"platform": "Debian:12", "templateRef": {"name": "t", "revision": 0}}),
            field: "spec.templateRef.revision",
        },
        Invalid {
            what: "expiry missing on an exception",
            kind: "PatchException",
            spec: json!({"advisories": ["CVE-2024-0001"], "selector": {}, "reason": "r", "approvedBy": "sec"}),
            field: "spec.expires",
        },
        Invalid {
            what: "exception without advisories",
            kind: "PatchException",
            spec: json!({"advisories": [], "selector": {}, "reason": "r", "approvedBy": "sec", "expires": "2027-01-01T00:00:00Z"}),
            field: "spec.advisories",
        },
        Invalid {
            what: "unknown inventory format",
            kind: "Inventory",
            spec: json!({"subject": {"kind": "Workload", "name": "w"}, "reportedAt": "2026-11-24T08:00:00Z", "format": "deb", "packages": []}),
            field: "spec.format",
        },
        Invalid {
            what: "unknown subject kind",
            kind: "Inventory",
            spec: json!({"subject": {"kind": "Pod", "name": "w"}, "reportedAt": "2026-11-24T08:00:00Z", "format": "dpkg"}),
            field: "spec.subject.kind",
        },
        Invalid {
            what: "inventory without reportedAt",
            kind: "Inventory",
            spec: json!({"subject": {"kind": "Workload", "name": "w"}, "format": "dpkg"}),
            field: "spec.reportedAt",
        },
        Invalid {
            what: "bad decision verdict",
            kind: "ChangeRequest",
            spec: json!({"template": "t", "decision": {"verdict": "Maybe", "digest": "d"}}),
            field: "spec.decision.verdict",
        },
        Invalid {
            what: "template without image",
            kind: "Template",
            spec: json!({"platform": "Debian:12"}),
            field: "spec.image",
        },
        Invalid {
            what: "feed with two sources",
            kind: "AdvisoryFeed",
            spec: json!({"source": {"path": "/data", "url": {"url": "https://example.com/a.zip"}}, "format": "OSV"}),
            field: "spec.source",
        },
        Invalid {
            what: "feed without a source",
            kind: "AdvisoryFeed",
            spec: json!({"source": {}, "format": "OSV"}),
            field: "spec.source",
        },
        Invalid {
            what: "unknown feed format",
            kind: "AdvisoryFeed",
            spec: json!({"source": {"path": "/data"}, "format": "RSS"}),
            field: "spec.format",
        },
    ]
}

#[tokio::test]
async fn the_apiserver_rejects_invalid_manifests_naming_the_field() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("invalid").await;
    let cases = invalid_manifests();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("invalid-{i}-{}", support::random_suffix());
        let doc = json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": case.kind,
            "metadata": {"name": name}, "spec": case.spec,
        });
        let obj: DynamicObject = serde_json::from_value(doc).expect("object");
        let api = api_for(&client, case.kind, &ns);
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(case.field) {
                    failures.push(format!(
                        "{}: expected 422 naming {}, got {} {}",
                        case.what, case.field, status.code, status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("{}: {other}", case.what)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn kubectl_apply_without_client_validation_is_rejected_by_the_server() {
    let env = support::env();
    let ns = env.namespace("invalid-kubectl").await;
    let manifest = r#"
apiVersion: patchloop.dev/v1alpha1
kind: PatchPolicy
metadata: {name: typo}
spec:
  selector: {}
  remediation: {mode: remediate, maxConcurrent: -3}
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, manifest).expect("write manifest");
    let file = file.to_string_lossy().into_owned();
    let out = env.kubectl(["apply", "--validate=false", "-n", &ns, "-f", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "kubectl apply accepted an invalid policy"
    );
    assert!(stderr.contains("spec.remediation.mode"), "{stderr}");
    assert!(
        stderr.contains("spec.remediation.maxConcurrent"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_inventory_of_5000_packages_is_accepted() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("big-inventory").await;
    // Realistic lines: binary name, Debian version, source name and version.
    let packages: Vec<String> = (0..5000)
        .map(|i| {
            format!(
                "lib{name}-{i}t64 1:{major}.{minor}.{i}-{rev}+deb12u{u} {name}-source-{i} {major}.{minor}.{i}-{rev}",
                name = ["gnome-settings", "python3-cryptography", "texlive-latex", "kernel-headers"][i % 4],
                major = i % 7 + 1,
                minor = i % 13,
                rev = i % 5 + 1,
                u = i % 9 + 1,
            )
        })
        .collect();
    let doc = json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": "big"},
        "spec": {
            "subject": {"kind": "Workload", "name": "huge-host"},
            "reportedAt": "2026-11-24T08:00:00Z",
            "format": "dpkg",
            "packages": packages,
        }
    });
    let size = serde_json::to_vec(&doc).expect("json").len();
    println!(
        "a 5,000-package Inventory is {size} bytes of JSON ({:.1}% of the 1.5 MiB limit)",
        size as f64 * 100.0 / (1.5 * 1024.0 * 1024.0)
    );
    assert!(size < 1536 * 1024);
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    let api = api_for(&client, "Inventory", &ns);
    api.create(&PostParams::default(), &obj)
        .await
        .expect("5,000-package inventory accepted");
    let typed: Api<patchloop::api::Inventory> = Api::namespaced(client, &ns);
    let back = typed.get("big").await.expect("read back");
    assert_eq!(back.spec.packages.len(), 5000);
}

#[tokio::test]
async fn status_conditions_apply_and_show_in_kubectl_get() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use patchloop::api::common::{ComplianceState, ComplianceSummary};
    use patchloop::api::conditions::{self, ConditionStatus, DesiredCondition, types};
    use patchloop::api::{Workload, WorkloadSpec, WorkloadStatus};

    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("columns").await;
    let workloads: Api<Workload> = Api::namespaced(client, &ns);
    let mut wl = Workload::new(
        "web-07",
        WorkloadSpec {
            platform: "Debian:12".into(),
            template_ref: None,
            target: None,
            paused: false,
        },
    );
    wl.metadata.labels = Some([("tier".to_string(), "gold".to_string())].into());
    let created = workloads
        .create(&PostParams::default(), &wl)
        .await
        .expect("create workload");
    let now = Time(jiff::Timestamp::now());
    let (conds, _) = conditions::merge(
        &[],
        &[
            DesiredCondition::new(
                types::READY,
                ConditionStatus::True,
                "Evaluated",
                "inputs are valid",
            ),
            DesiredCondition::new(
                types::TEMPLATE_CURRENT,
                ConditionStatus::False,
                "OlderRevision",
                "runs revision 6 of 7",
            ),
        ],
        created.metadata.generation,
        &now,
    );
    let status = WorkloadStatus {
        observed_generation: created.metadata.generation,
        conditions: conds,
        compliance: Some(ComplianceSummary {
            state: Some(ComplianceState::Overdue),
            overdue: 2,
            pending: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let patch =
        json!({"apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload", "status": status});
    workloads
        .patch_status(
            "web-07",
            &PatchParams::apply("patchloop-test").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("status applied");
    let back = workloads.get_status("web-07").await.expect("read status");
    assert_eq!(back.status.as_ref().map(|s| s.conditions.len()), Some(2));

    let out = env.kubectl(["get", "workloads", "-n", &ns]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PLATFORM",
            "COMPLIANCE",
            "OVERDUE",
            "REMEDIATION",
            "TEMPLATE-CURRENT",
            "AGE"
        ]
    );
    assert_eq!(cell(&table, "web-07", "COMPLIANCE"), "Overdue", "{table}");
    assert_eq!(cell(&table, "web-07", "OVERDUE"), "2", "{table}");
    assert_eq!(cell(&table, "web-07", "REMEDIATION"), "", "{table}");
    assert_eq!(
        cell(&table, "web-07", "TEMPLATE-CURRENT"),
        "False",
        "{table}"
    );

    // The category lists every kind at once.
    let out = env.kubectl(["get", "patchloop", "-n", &ns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("workload.patchloop.dev/web-07"));

    // Short name.
    let out = env.kubectl(["get", "wl", "web-07", "-n", &ns, "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "workload.patchloop.dev/web-07"
    );
}

/// The text of `column` in the row of `name` of a `kubectl get` table
/// (columns are aligned under their headers; empty cells are empty strings).
fn cell(table: &str, name: &str, column: &str) -> String {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let start = header
        .find(column)
        .unwrap_or_else(|| panic!("no column {column} in {header}"));
    let end = header[start..]
        .find(char::is_whitespace)
        .and_then(|w| {
            header[start + w..]
                .find(|c: char| !c.is_whitespace())
                .map(|n| start + w + n)
        })
        .unwrap_or(usize::MAX);
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in {table}"));
    row.get(start..end.min(row.len()))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn kubectl_get_shows_printer_columns_for_every_kind() {
    let env = support::env();
    let ns = env.namespace("get-columns").await;
    let out = env.kubectl(["apply", "--server-side", "-n", &ns, "-f", EXAMPLES]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: [(&str, &[&str]); 7] = [
        (
            "patchpolicies",
            &[
                "MODE",
                "MATCHED",
                "COMPLIANT",
                "OVERDUE",
                "NEXT-WINDOW",
                "READY",
            ],
        ),
        (
            "workloads",
            &["PLATFORM", "COMPLIANCE", "OVERDUE", "TEMPLATE-CURRENT"],
        ),
        (
            "templates",
            &[
                "PLATFORM",
                "REVISION",
                "COMPLIANCE",
                "CHANGE-REQUEST",
                "READY",
            ],
        ),
        (
            "inventories",
            &["SUBJECT-KIND", "SUBJECT", "FORMAT", "PACKAGES", "REPORTED"],
        ),
        ("changerequests", &["TEMPLATE", "PHASE", "REVISION"]),
        ("patchexceptions", &["EXPIRES", "ACTIVE", "MATCHED"]),
        (
            "advisoryfeeds",
            &["FORMAT", "ADVISORIES", "LAST-SYNC", "READY", "DEGRADED"],
        ),
    ];
    for (resource, columns) in expected {
        let out = env.kubectl(["get", resource, "-n", &ns]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{resource}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header = text.lines().next().unwrap_or_default();
        for column in columns {
            assert!(
                header.contains(column),
                "{resource}: no {column} column in {header:?}"
            );
        }
        assert!(header.contains("AGE"), "{resource}: {header}");
    }
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() {
    let env = support::env();
    let cases = [
        (
            "workload.spec.target",
            "How remediation Jobs reach the machine",
        ),
        ("workload.spec.platform", "OSV ecosystem naming"),
        ("patchpolicy.spec.remediation.mode", "never creates a Job"),
        (
            "patchpolicy.spec.remediation.maxConcurrent",
            "percentage of matched Workloads",
        ),
        ("changerequest.spec.decision.digest", "status.scope.digest"),
        ("patchexception.spec.expires", "maxDuration"),
        (
            "inventory.spec.packages",
            "name version [source [source-version]]",
        ),
        ("advisoryfeed.spec.source", "exactly one of"),
        ("template.status.history", "published revision"),
    ];
    for (field, needle) in cases {
        // The apiserver publishes CRD schemas to its OpenAPI document a few
        // seconds after they are established.
        let text = support::eventually(
            &format!("kubectl explain {field}"),
            std::time::Duration::from_secs(60),
            async || {
                let out = env.kubectl(["explain", field]);
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
            },
        )
        .await;
        assert!(
            text.contains(needle),
            "kubectl explain {field} lacks {needle:?}:\n{text}"
        );
    }
}
