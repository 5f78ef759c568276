//! The deployment artifacts against a real Kubernetes 1.20.2 control plane
//! with real Helm (the Helm library of the `helm-sdkpy` package, driven
//! through `scripts/helm.sh`): lint, the values schema, install into a
//! cluster without CRDs, `deploy/` equal to the default render, the
//! controller's RBAC proven sufficient (the real binary runs with exactly the
//! chart's ServiceAccount) and minimal (`kubectl auth can-i` on a deny list),
//! the roles users bind, `watchNamespaces`, an upgrade that changes the CRDs,
//! and an uninstall that keeps them.
//!
//! Why simulated (`support::executor`): the RBAC smoke scenario runs the binary with the
//! chart's ServiceAccount token on a control plane without a node, many times per render
//! (`watchNamespaces`, upgrades); the chart's Pods run for real in `tests/chart_pods.rs`.
//!
//! `PATCHLOOP_UPDATE_DEPLOY=1` (`make deploy`) rewrites `deploy/` from the
//! chart's default render instead of comparing.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use patchloop::api::workload::RemediationPhase;
use patchloop::api::{PatchPolicy, Workload};
use serde_json::{Value, json};
use support::executor;
use support::helm::{chart, helm, install};
use support::objects::*;
use support::patchloop::Patchloop;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE: &str = "patchloop";
const RELEASE_NS: &str = "patchloop-system";
const LONG_WAIT: Duration = Duration::from_secs(120);
/// The image digest the watchNamespaces release pins.
const SCOPED_DIGEST: &str =
    "sha256:4f7d1c2a9b3e8f6d5c4b3a291817161514131211100f0e0d0c0b0a0908070605";

// ---------------------------------------------------------------- Helm: support/helm.rs

/// The documents of a rendered manifest (Helm's `manifest`, or a file).
fn documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("cannot parse YAML: {e}\n{text}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn key(doc: &Value) -> String {
    format!(
        "{} {}/{}",
        doc["kind"].as_str().unwrap_or(""),
        doc["metadata"]["namespace"].as_str().unwrap_or(""),
        doc["metadata"]["name"].as_str().unwrap_or("")
    )
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

/// What `deploy/` holds of a render: the same objects without the two
/// labels that say Helm manages them, and the PodDisruptionBudget as
/// policy/v1 (the chart picks policy/v1beta1 only for a 1.20 cluster, like
/// the one the render comes from).
fn for_plain_manifests(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(labels) = doc
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove("helm.sh/chart");
        labels.remove("app.kubernetes.io/managed-by");
    }
    if doc["kind"] == "PodDisruptionBudget" {
        doc["apiVersion"] = json!("policy/v1");
    }
    doc
}

/// Objects by kind, namespace and name, numbers canonical (kustomize
/// writes `1.0` as `1`).
fn by_key(docs: &[Value]) -> BTreeMap<String, Value> {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
                _ => v.clone(),
            },
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
            }
            _ => v.clone(),
        }
    }
    docs.iter().map(|d| (key(d), canonical(d))).collect()
}

/// Asserts two object sets are equal, naming the first object that differs.
fn assert_same(want: &BTreeMap<String, Value>, have: &BTreeMap<String, Value>, what: &str) {
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        have.keys().collect::<Vec<_>>(),
        "{what}: other objects"
    );
    for (k, v) in want {
        assert!(
            &have[k] == v,
            "{what}: {k}\nwant {}\nhave {}",
            serde_json::to_string_pretty(v).unwrap_or_default(),
            serde_json::to_string_pretty(&have[k]).unwrap_or_default()
        );
    }
}

/// Helm's manifest, split into its `# Source:` sections, for deploy/.
fn plain_manifest_text(manifest: &str, crds: bool) -> String {
    let mut out = String::new();
    for section in manifest
        .split("\n---\n")
        .map(|s| s.trim_start_matches("---\n"))
    {
        let docs = documents(section);
        let Some(doc) = docs.first() else { continue };
        if (doc["kind"] == "CustomResourceDefinition") != crds {
            continue;
        }
        let mut text = String::new();
        for line in section.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("helm.sh/chart:")
                || trimmed.starts_with("app.kubernetes.io/managed-by:")
            {
                continue;
            }
            if doc["kind"] == "PodDisruptionBudget" && line == "apiVersion: policy/v1beta1" {
                text.push_str("apiVersion: policy/v1\n");
                continue;
            }
            text.push_str(line);
            text.push('\n');
        }
        out.push_str("---\n");
        out.push_str(&text);
    }
    out
}

const DEPLOY_HEADER: &str = "# Generated by `make deploy` from charts/patchloop with its default values\n\
# (release `patchloop` in namespace `patchloop-system`): do not edit.\n";

fn deploy_files() -> [(&'static str, bool); 2] {
    [("crds.yaml", true), ("patchloop.yaml", false)]
}

/// Compares deploy/ with the default render, or rewrites it with
/// `PATCHLOOP_UPDATE_DEPLOY=1`; also checks that `kubectl kustomize deploy/`
/// yields the same objects.
fn check_plain_manifests(env: &support::TestEnv, manifest: &str) {
    let dir = Path::new(REPO).join("deploy");
    if std::env::var_os("PATCHLOOP_UPDATE_DEPLOY").is_some_and(|v| v == "1") {
        for (file, crds) in deploy_files() {
            let text = format!("{DEPLOY_HEADER}{}", plain_manifest_text(manifest, crds));
            std::fs::write(dir.join(file), text).expect("writing deploy/");
        }
    }
    let rendered: Vec<Value> = documents(manifest)
        .iter()
        .map(for_plain_manifests)
        .collect();
    let mut files = Vec::new();
    for (file, _) in deploy_files() {
        let text = std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("deploy/{file}: {e} (run `make deploy`)"));
        files.extend(documents(&text));
    }
    let want = by_key(&rendered);
    assert_same(
        &want,
        &by_key(&files),
        "deploy/ differs from the chart's default render: run `make deploy`",
    );
    let out = env.kubectl(["kustomize", &dir.to_string_lossy()]);
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kustomized = by_key(&documents(&String::from_utf8_lossy(&out.stdout)));
    assert_same(
        &want,
        &kustomized,
        "`kubectl kustomize deploy/` differs from the chart's default render",
    );
}

// ---------------------------------------------------------------- RBAC

/// `kubectl auth can-i <verb> <resource> [-n ns] --as <user>`.
fn can_i(env: &support::TestEnv, user: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    // `resource#sub` names a subresource, `resource/name` one object.
    let (resource, sub) = resource.split_once('#').unwrap_or((resource, ""));
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if !sub.is_empty() {
        args.extend(["--subresource", sub]);
    }
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let out = env.kubectl(&args);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Asserts each (verb, resource, namespace) is allowed, or denied.
fn assert_access(
    env: &support::TestEnv,
    user: &str,
    allowed: bool,
    checks: &[(&str, &str, Option<&str>)],
) {
    let wrong: Vec<String> = checks
        .iter()
        .filter(|(verb, res, ns)| can_i(env, user, verb, res, *ns) != allowed)
        .map(|(verb, res, ns)| format!("{verb} {res} in {}", ns.unwrap_or("all namespaces")))
        .collect();
    assert!(
        wrong.is_empty(),
        "{user} should {} but {}: {wrong:#?}",
        if allowed { "be allowed" } else { "be denied" },
        if allowed { "is denied" } else { "is allowed" }
    );
}

fn sa(ns: &str, name: &str) -> String {
    format!("system:serviceaccount:{ns}:{name}")
}

fn controller_rbac_is_sufficient_and_minimal(env: &support::TestEnv, user: &str, work_ns: &str) {
    let ns = Some(work_ns);
    let rel = Some(RELEASE_NS);
    let mut allowed = vec![
        ("list", "advisoryfeeds.patchloop.dev", None),
        ("watch", "advisoryfeeds.patchloop.dev", None),
        ("patch", "advisoryfeeds.patchloop.dev#status", None),
        (
            "get",
            "customresourcedefinitions.apiextensions.k8s.io/workloads.patchloop.dev",
            None,
        ),
        ("create", "changerequests.patchloop.dev", ns),
        // Retention: closed requests and their build results.
        ("delete", "changerequests.patchloop.dev", ns),
        ("delete", "inventories.patchloop.dev", ns),
        ("create", "jobs.batch", ns),
        ("delete", "jobs.batch", ns),
        ("get", "jobs.batch", ns),
        // Feed ConfigMap sources.
        ("get", "configmaps", ns),
        ("list", "pods", ns),
        ("create", "events.events.k8s.io", ns),
        ("patch", "events.events.k8s.io", ns),
        ("create", "leases.coordination.k8s.io", rel),
        ("get", "leases.coordination.k8s.io/patchloop", rel),
        ("update", "leases.coordination.k8s.io/patchloop", rel),
    ];
    for kind in [
        "workloads",
        "patchpolicies",
        "patchexceptions",
        "inventories",
        "templates",
        "changerequests",
    ] {
        let res: &'static str = Box::leak(format!("{kind}.patchloop.dev").into_boxed_str());
        let status: &'static str = Box::leak(format!("{res}#status").into_boxed_str());
        allowed.extend([
            ("list", res, None),
            ("watch", res, None),
            ("get", res, ns),
            ("patch", status, ns),
        ]);
    }
    assert_access(env, user, true, &allowed);
    assert_access(
        env,
        user,
        false,
        &[
            // No Secrets, anywhere.
            ("get", "secrets", None),
            ("list", "secrets", None),
            ("get", "secrets", rel),
            // No cluster administration.
            ("delete", "namespaces", None),
            ("create", "namespaces", None),
            ("get", "nodes", None),
            ("create", "pods", ns),
            ("create", "pods#exec", ns),
            ("delete", "pods", ns),
            ("create", "serviceaccounts#token", ns),
            ("create", "deployments.apps", ns),
            // No RBAC writes, no escalation.
            ("create", "roles.rbac.authorization.k8s.io", ns),
            ("create", "rolebindings.rbac.authorization.k8s.io", ns),
            ("create", "clusterroles.rbac.authorization.k8s.io", None),
            (
                "create",
                "clusterrolebindings.rbac.authorization.k8s.io",
                None,
            ),
            ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
            ("bind", "clusterroles.rbac.authorization.k8s.io", None),
            // No CRD changes; only its own CRDs are readable.
            (
                "create",
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
            ),
            (
                "update",
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
            ),
            (
                "list",
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
            ),
            (
                "get",
                "customresourcedefinitions.apiextensions.k8s.io/other.example.com",
                None,
            ),
            // Users' objects: statuses only, never their specs.
            ("create", "workloads.patchloop.dev", ns),
            ("update", "workloads.patchloop.dev", ns),
            ("patch", "workloads.patchloop.dev", ns),
            ("delete", "workloads.patchloop.dev", ns),
            ("patch", "patchpolicies.patchloop.dev", ns),
            ("delete", "patchpolicies.patchloop.dev", ns),
            ("create", "patchexceptions.patchloop.dev", ns),
            ("create", "inventories.patchloop.dev", ns),
            ("patch", "templates.patchloop.dev", ns),
            ("patch", "changerequests.patchloop.dev", ns),
            ("update", "inventories.patchloop.dev", ns),
            ("patch", "inventories.patchloop.dev", ns),
            ("delete", "templates.patchloop.dev", ns),
            ("create", "advisoryfeeds.patchloop.dev", None),
            ("patch", "advisoryfeeds.patchloop.dev", None),
            ("delete", "advisoryfeeds.patchloop.dev", None),
            // Only what the Job contract needs: its files are in the Job's
            // own Pod template, so no ConfigMap is ever written.
            ("update", "jobs.batch", ns),
            ("patch", "jobs.batch", ns),
            ("create", "configmaps", ns),
            ("list", "configmaps", ns),
            ("update", "configmaps", ns),
            ("patch", "configmaps", ns),
            ("delete", "configmaps", ns),
            ("get", "pods", ns),
            ("get", "pods#log", ns),
            // Only its own Lease, only in its namespace.
            (
                "update",
                "leases.coordination.k8s.io/kube-controller-manager",
                rel,
            ),
            ("delete", "leases.coordination.k8s.io/patchloop", rel),
            ("create", "leases.coordination.k8s.io", ns),
        ],
    );
}

/// Binds the user-facing ClusterRoles in `ns` and checks each grants
/// exactly its job.
async fn user_roles_grant_exactly_their_job(env: &support::TestEnv, other_ns: &str) {
    let ns = env.namespace("team").await;
    let users = [
        ("alice", "reporter"),
        ("dave", "node-agent"),
        ("bob", "approver"),
        ("carol", "exception-owner"),
    ];
    for (user, role) in users {
        let out = env.kubectl([
            "create",
            "rolebinding",
            &format!("{user}-{role}"),
            "-n",
            &ns,
            &format!("--clusterrole={RELEASE}-{role}"),
            &format!("--user={user}"),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = Some(ns.as_str());
    let other = Some(other_ns);
    let denied_to_all = [
        ("get", "secrets", n),
        ("create", "jobs.batch", n),
        ("create", "pods", n),
        ("create", "patchpolicies.patchloop.dev", n),
        ("create", "templates.patchloop.dev", n),
        ("create", "advisoryfeeds.patchloop.dev", None),
        ("patch", "inventories.patchloop.dev#status", n),
        ("patch", "workloads.patchloop.dev#status", n),
        ("patch", "changerequests.patchloop.dev#status", n),
        ("patch", "patchexceptions.patchloop.dev#status", n),
        ("create", "inventories.patchloop.dev", other),
        ("patch", "changerequests.patchloop.dev", other),
        ("create", "patchexceptions.patchloop.dev", other),
    ];
    for (user, _) in users {
        assert_access(env, user, false, &denied_to_all);
    }
    // Reporters: inventories only.
    assert_access(
        env,
        "alice",
        true,
        &[
            ("create", "inventories.patchloop.dev", n),
            ("patch", "inventories.patchloop.dev", n),
            ("update", "inventories.patchloop.dev", n),
            ("get", "inventories.patchloop.dev", n),
        ],
    );
    assert_access(
        env,
        "alice",
        false,
        &[
            ("create", "workloads.patchloop.dev", n),
            ("get", "workloads.patchloop.dev", n),
            ("patch", "changerequests.patchloop.dev", n),
            ("create", "patchexceptions.patchloop.dev", n),
            ("delete", "inventories.patchloop.dev", n),
        ],
    );
    // The node agent: applying its Inventory, and creating its node's
    // Workload (exactly deploy/node-agent/rbac.yaml's Role).
    assert_access(
        env,
        "dave",
        true,
        &[
            ("get", "inventories.patchloop.dev", n),
            ("create", "inventories.patchloop.dev", n),
            ("patch", "inventories.patchloop.dev", n),
            ("create", "workloads.patchloop.dev", n),
            ("get", "workloads.patchloop.dev", n),
        ],
    );
    assert_access(
        env,
        "dave",
        false,
        &[
            ("list", "inventories.patchloop.dev", n),
            ("update", "inventories.patchloop.dev", n),
            ("delete", "inventories.patchloop.dev", n),
            ("list", "workloads.patchloop.dev", n),
            ("update", "workloads.patchloop.dev", n),
            ("patch", "workloads.patchloop.dev", n),
            ("delete", "workloads.patchloop.dev", n),
            ("patch", "changerequests.patchloop.dev", n),
            ("create", "patchexceptions.patchloop.dev", n),
        ],
    );
    // Approvers: changerequests only (the decision is in the spec).
    assert_access(
        env,
        "bob",
        true,
        &[
            ("get", "changerequests.patchloop.dev", n),
            ("list", "changerequests.patchloop.dev", n),
            ("patch", "changerequests.patchloop.dev", n),
        ],
    );
    assert_access(
        env,
        "bob",
        false,
        &[
            ("create", "changerequests.patchloop.dev", n),
            ("delete", "changerequests.patchloop.dev", n),
            ("create", "inventories.patchloop.dev", n),
            ("create", "patchexceptions.patchloop.dev", n),
            ("get", "workloads.patchloop.dev", n),
        ],
    );
    // Exception owners: patchexceptions only.
    assert_access(
        env,
        "carol",
        true,
        &[
            ("create", "patchexceptions.patchloop.dev", n),
            ("patch", "patchexceptions.patchloop.dev", n),
            ("delete", "patchexceptions.patchloop.dev", n),
            ("list", "patchexceptions.patchloop.dev", n),
        ],
    );
    assert_access(
        env,
        "carol",
        false,
        &[
            ("create", "inventories.patchloop.dev", n),
            ("patch", "changerequests.patchloop.dev", n),
            ("patch", "patchpolicies.patchloop.dev", n),
            ("get", "workloads.patchloop.dev", n),
        ],
    );
}

// ---------------------------------------------------------------- the controller

/// A PatchPolicy remediating `tier` in an always-open window.
fn remediating_policy(name: &str, tier: &str) -> Value {
    let mut p = policy(name, json!({"tier": tier}), 100);
    p["spec"]["maintenanceWindows"] = json!([{"schedule": "* * * * *", "duration": "2h"}]);
    p["spec"]["remediation"] = json!({
        "mode": "Remediate", "maxConcurrent": 1, "canary": 0, "maxFailures": 2, "attempts": 1,
        "keepFinishedJobs": 0,
        "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "patch", "image": "debian:12", "command": ["/scripts/patch.sh"]}]
        }}}}
    });
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_patchloop")
}

/// Whether this build of `patchloop run` has leader election.
fn has_leader_election() -> bool {
    std::process::Command::new(binary())
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--leader-election"))
}

/// Starts `patchloop run` as the chart's Pod would — the Deployment's args
/// and downward-API environment — but outside the cluster, with the
/// ServiceAccount's own token, its metrics on a free local port, debug logs
/// (reconcile errors are logged at debug) to `log`, and only the feeds
/// labelled `feed_label`.
fn start_as_pod(deployment: &Value, kubeconfig: &Path, feed_label: &str, log: &Path) -> Patchloop {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let leader_election = has_leader_election();
    let port = free_port();
    let mut args: Vec<String> = Vec::new();
    for a in container["args"].as_array().expect("args") {
        let a = a.as_str().expect("string arg");
        if a.starts_with("--listen=") {
            args.push(format!("--listen=127.0.0.1:{port}"));
        } else if a.starts_with("--log-level=") {
            args.push("--log-level=info,patchloop=debug".into());
        } else if (a == "--leader-election" || a.starts_with("--lease-")) && !leader_election {
            eprintln!("note: this build has no {a}; running without it");
        } else {
            args.push(a.to_owned());
        }
    }
    assert!(
        !args.iter().any(|a| a.starts_with("--feed-selector")),
        "the default render selects no feeds"
    );
    args.push(format!("--feed-selector=patchloop-test={feed_label}"));
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let log_file = std::fs::File::create(log).expect("controller log");
    let mut cmd = std::process::Command::new(binary());
    cmd.args(&args)
        .env_remove("KUBECONFIG")
        .env_remove("PATCHLOOP_FAILPOINTS")
        .env_remove("RUST_LOG")
        .env("POD_NAME", "patchloop-7d9f8-smoke")
        .env(
            "POD_NAMESPACE",
            deployment["metadata"]["namespace"]
                .as_str()
                .expect("namespace"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    eprintln!("patchloop {args:?}");
    Patchloop {
        child: support::spawn_managed("patchloop", cmd),
        port,
    }
}

/// The lines of the controller's log where the API server refused it.
fn forbidden_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains("Forbidden") || l.contains(" 403"))
        .map(str::to_owned)
        .collect()
}

/// Polls `check` until it returns `Some`; on a timeout, fails with what the
/// controller was refused (or the end of its log).
async fn controller_achieves<T>(
    what: &str,
    timeout: Duration,
    log: &Path,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() >= deadline {
            let forbidden = forbidden_lines(log);
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; refused:\n{}\nlog tail:\n{}",
                forbidden.join("\n"),
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The smoke scenario: with exactly the chart's RBAC the controller becomes
/// ready, evaluates a Workload, creates a remediation Job (its contract in
/// its own Pod template), verifies the fix and cleans up — and is never forbidden anything.
async fn the_controller_does_its_job_with_the_charts_identity(
    env: &support::TestEnv,
    deployment: &Value,
    ns: &str,
) -> Vec<String> {
    let client = env.client().await;
    let release_ns = deployment["metadata"]["namespace"]
        .as_str()
        .expect("namespace");
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(&client, ns, remediating_policy("gold", "gold")).await;
    apply(&client, ns, workload("web-00", json!({"tier": "gold"}))).await;
    apply(&client, ns, workload_inventory("web-00", OLD_GLIBC)).await;

    let sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let kubeconfig = env
        .kubeconfig_for_service_account(release_ns, sa_name)
        .await;
    let log = env.dir().join(format!("patchloop-smoke-{label}.log"));
    let pl = start_as_pod(deployment, &kubeconfig, &label, &log);
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while pl.get("/readyz").await.map(|(code, _)| code) != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the controller is not ready with the chart's identity:\n{}",
            tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    let lease = args
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--lease-name="))
        .filter(|_| has_leader_election());
    if let Some(lease) = lease {
        controller_achieves("the lease", WAIT, &log, async || {
            (pl.metric("patchloop_leader ").await == 1.0).then_some(())
        })
        .await;
        let out = env.kubectl(["get", "lease", "-n", release_ns, lease]);
        assert!(out.status.success(), "no Lease {release_ns}/{lease}");
    }
    // A feed from a ConfigMap: read with the controller's own identity.
    let kev = std::fs::read_to_string(format!(
        "{FIXTURES}/kev/known_exploited_vulnerabilities.json"
    ))
    .expect("KEV fixture");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    config_maps
        .create(
            &Default::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "kev"}, "data": {"catalog.json": kev}
            }))
            .expect("ConfigMap"),
        )
        .await
        .expect("create the feed's ConfigMap");
    let cm_feed = format!("kev-cm-{label}");
    apply(
        &client,
        "",
        json!({
            "apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
            "metadata": {"name": cm_feed, "labels": {"patchloop-test": label}},
            "spec": {"source": {"configMap": {"namespace": ns, "name": "kev"}},
                     "format": "KEV", "interval": "1h"}
        }),
    )
    .await;

    let workloads: Api<Workload> = Api::namespaced(client.clone(), ns);
    let job = controller_achieves("a remediation Job", LONG_WAIT, &log, async || {
        executor::jobs(&client, ns).await.into_iter().next()
    })
    .await;
    let job_name = job.metadata.name.clone().unwrap_or_default();
    // One write made the whole Job: its contract is in its Pod template,
    // and no ConfigMap is created for it.
    assert!(
        patchloop::controller::jobs::contract_file(&job, "packages")
            .is_some_and(|p| p.contains("libc6")),
        "{job:?}"
    );
    assert!(
        config_maps
            .get_opt(&job_name)
            .await
            .expect("read ConfigMaps")
            .is_none(),
        "a ConfigMap named like the Job"
    );
    let status = workload_status(&workloads, "web-00")
        .await
        .expect("a Workload status written by the controller");
    assert!(status.compliance.is_some(), "{status:?}");
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), ns);
    controller_achieves(
        "the policy Ready (its job template dry-run created)",
        WAIT,
        &log,
        async || {
            let p = policies.get_status("gold").await.ok()?.status?;
            (condition(&p.conditions, "Ready") == Some("True")).then_some(())
        },
    )
    .await;

    executor::complete(&client, ns, &job_name, None).await;
    apply(&client, ns, workload_inventory("web-00", FIXED_GLIBC)).await;
    controller_achieves("the fix verified", LONG_WAIT, &log, async || {
        let s = workload_status(&workloads, "web-00").await?;
        (s.remediation.as_ref().and_then(|r| r.phase) == Some(RemediationPhase::Verified)
            && in_state(&s, "Compliant"))
        .then_some(())
    })
    .await;
    // Cleanup runs in the policy reconciler, which a Workload recording the
    // outcome does not wake (it may have run just before): wake it.
    let nudge = env.kubectl([
        "annotate",
        "patchpolicy",
        "gold",
        "-n",
        ns,
        "--overwrite",
        "test.patchloop.dev/nudge=verified",
    ]);
    assert!(
        nudge.status.success(),
        "{}",
        String::from_utf8_lossy(&nudge.stderr)
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    controller_achieves(
        "the finished Job and its ConfigMap deleted",
        LONG_WAIT,
        &log,
        async || {
            let job_gone = jobs.get_opt(&job_name).await.ok()?.is_none();
            let cm_gone = config_maps.get_opt(&job_name).await.ok()?.is_none();
            (job_gone && cm_gone).then_some(())
        },
    )
    .await;
    // A failed Job: its Pod's termination message (a Pod list) explains it.
    apply(&client, ns, workload("web-01", json!({"tier": "gold"}))).await;
    apply(&client, ns, workload_inventory("web-01", OLD_GLIBC)).await;
    let failing = controller_achieves("a Job for web-01", LONG_WAIT, &log, async || {
        executor::jobs(&client, ns)
            .await
            .into_iter()
            .find(|j| executor::label(j, "patchloop.dev/workload") == "web-01")
    })
    .await;
    let why = "E: Unable to locate package libc6";
    let failing = failing.metadata.name.clone().unwrap_or_default();
    executor::fail(&client, ns, &failing, Some(why)).await;
    controller_achieves(
        "the termination message on web-01",
        LONG_WAIT,
        &log,
        async || {
            let s = workload_status(&workloads, "web-01").await?;
            let message = s.remediation?.message?;
            message.contains(why).then_some(())
        },
    )
    .await;
    controller_achieves("the ConfigMap feed Ready", WAIT, &log, async || {
        feed_ready(env, &cm_feed).then_some(())
    })
    .await;

    let events = env.kubectl(["get", "events.events.k8s.io", "-n", ns, "-o", "json"]);
    let events: Value = serde_json::from_slice(&events.stdout).expect("events");
    assert!(
        events["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|e| e["reportingController"] == "patchloop")),
        "no Event published by patchloop: {events}"
    );
    let forbidden = forbidden_lines(&log);
    assert!(
        forbidden.is_empty(),
        "the chart's RBAC refused the controller something:\n{}",
        forbidden.join("\n")
    );
    // Not RBAC: the feeds that existed before the controller started must
    // be Ready too (reported by the caller at the end of its test).
    let mut problems = Vec::new();
    for feed in [format!("osv-{label}"), format!("kev-{label}")] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !feed_ready(env, &feed) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !feed_ready(env, &feed) {
            problems.push(format!(
                "AdvisoryFeed {feed}, present when the controller started, loaded but got no \
                 Ready status (leader election: {}); log: {}",
                lease.is_some(),
                log.display()
            ));
        }
    }
    drop(pl);
    problems
}

/// Whether an AdvisoryFeed's status says `Ready=True`.
fn feed_ready(env: &support::TestEnv, name: &str) -> bool {
    let out = env.kubectl(["get", "advisoryfeed", name, "-o", "json"]);
    let Ok(feed) = serde_json::from_slice::<Value>(&out.stdout) else {
        return false;
    };
    serde_json::from_value::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>(
        feed["status"]["conditions"].clone(),
    )
    .is_ok_and(|c| condition(&c, "Ready") == Some("True"))
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn the_chart_lints_without_warnings() {
    let result = helm(&["lint", &chart().to_string_lossy()], None)
        .await
        .unwrap_or_else(|e| panic!("helm lint failed: {e}"));
    assert!(result["Errors"].is_null(), "lint errors: {result}");
    // Severity: 1 info, 2 warning, 4 error.
    let serious: Vec<&Value> = result["Messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["Severity"].as_i64() >= Some(2))
                .collect()
        })
        .unwrap_or_default();
    assert!(serious.is_empty(), "lint warnings: {serious:?}");
}

#[tokio::test]
async fn the_values_schema_rejects_wrong_values() {
    let env = support::env_without_crds();
    let cases = [
        ("a string replica count", json!({"replicaCount": "two"})),
        ("an unknown log format", json!({"log": {"format": "xml"}})),
        (
            "an unknown pull policy",
            json!({"image": {"pullPolicy": "Sometimes"}}),
        ),
        ("a misspelt key", json!({"replicas": 3})),
        (
            "a non-boolean crds.install",
            json!({"crds": {"install": "yes"}}),
        ),
        (
            "a required value removed",
            json!({"crds": {"install": null}}),
        ),
        (
            "an invalid namespace",
            json!({"watchNamespaces": ["Not_A_Namespace"]}),
        ),
        ("a bad duration", json!({"gracePeriod": "five minutes"})),
        (
            "a feed without a format",
            json!({"feeds": [{"name": "osv", "spec": {"source": {"url": {"url": "https://x"}}}}]}),
        ),
        ("an out-of-range port", json!({"port": 70000})),
    ];
    for (i, (what, values)) in cases.iter().enumerate() {
        let release = format!("bad-values-{i}");
        let err = install(env, &release, &chart(), "default", values)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} ({values}) was accepted"));
        assert!(
            err.contains("schema") || err.contains("values don't meet"),
            "{what}: refused, but not by the schema: {err}"
        );
        let releases = env.kubectl([
            "get",
            "secrets",
            "-n",
            "default",
            "-l",
            &format!("owner=helm,name={release}"),
            "-o",
            "name",
        ]);
        assert!(
            String::from_utf8_lossy(&releases.stdout).trim().is_empty(),
            "{what}: a release was recorded"
        );
    }
}

#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls_on_a_cluster_without_crds() {
    let env = support::env_without_crds();
    let client = env.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("workloads.patchloop.dev")
            .await
            .expect("CRD lookup")
            .is_none(),
        "this control plane must start without Patchloop's CRDs"
    );
    let out = env.kubectl(["create", "namespace", RELEASE_NS]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Install with default values: the CRDs come from the chart, kept.
    let release = install(env, RELEASE, &chart(), RELEASE_NS, &json!({}))
        .await
        .unwrap_or_else(|e| panic!("helm install: {e}"));
    let manifest = release["manifest"].as_str().expect("manifest").to_owned();
    let docs = documents(&manifest);
    let source = support::crd_manifests();
    assert_eq!(source.len(), 7);
    for want in &source {
        let name = want["metadata"]["name"].as_str().expect("name");
        let crd = support::eventually(&format!("CRD {name} Established"), WAIT, async || {
            let crd = crds.get_opt(name).await.ok()??;
            let established = crd
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(crd)
        })
        .await;
        let annotations = crd.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep"),
            "{name}"
        );
        assert_eq!(
            annotations
                .get("meta.helm.sh/release-name")
                .map(String::as_str),
            Some(RELEASE)
        );
        // The template is the CRD of crds/ plus the keep annotation.
        let mut rendered = find(&docs, "CustomResourceDefinition", name).clone();
        rendered["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations")
            .remove("helm.sh/resource-policy");
        assert_eq!(
            &rendered, want,
            "the chart's CRD {name} differs from crds/: run `make chart-crds`"
        );
    }

    // The Deployment as the issue asks.
    let deployment = find(&docs, "Deployment", RELEASE).clone();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--leader-election"), "{args:?}");
    assert!(args.contains(&"--lease-name=patchloop"), "{args:?}");
    assert!(args.contains(&"--log-format=json"), "{args:?}");
    assert!(args.contains(&"--log-level=info"), "{args:?}");
    // The default image is the chart's appVersion.
    let chart_meta = std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml");
    let app_version = chart_meta
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"'))
        .expect("appVersion");
    assert_eq!(
        container["image"],
        format!("ghcr.io/patchloop/patchloop:{app_version}")
    );
    let env_names: Vec<&str> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(env_names, ["POD_NAME", "POD_NAMESPACE"]);
    let pdb = find(&docs, "PodDisruptionBudget", RELEASE);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    find(&docs, "Service", "patchloop-metrics");
    find(&docs, "ServiceAccount", RELEASE);

    check_plain_manifests(env, &manifest);

    // RBAC: sufficient (the real binary with exactly this identity) and minimal.
    let controller = sa(RELEASE_NS, RELEASE);
    let work_ns = env.namespace("rbac").await;
    let smoke_ns = env.namespace("smoke").await;
    let mut problems =
        the_controller_does_its_job_with_the_charts_identity(env, &deployment, &smoke_ns).await;
    controller_rbac_is_sufficient_and_minimal(env, &controller, &work_ns);
    user_roles_grant_exactly_their_job(env, &work_ns).await;

    // A second release watching one namespace (the CRDs belong to the first).
    let watched = env.namespace("watched").await;
    let other = env.namespace("unwatched").await;
    let scoped_ns = env.namespace("scoped-system").await;
    // The optional ServiceMonitor needs the Prometheus Operator's CRD: a
    // stand-in that accepts any spec.
    let mut apply_crd = env.kubectl_command();
    apply_crd
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = apply_crd.spawn().expect("kubectl");
    {
        use std::io::Write;
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                     "names": {"kind": "ServiceMonitor", "plural": "servicemonitors",
                               "singular": "servicemonitor", "listKind": "ServiceMonitorList"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                       "x-kubernetes-preserve-unknown-fields": true}}}]}
        });
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(crd.to_string().as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.kubectl([
        "wait",
        "--for=condition=Established",
        "crd/servicemonitors.monitoring.coreos.com",
        "--timeout=60s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scoped = install(
        env,
        "scoped",
        &chart(),
        &scoped_ns,
        &json!({"crds": {"install": false}, "watchNamespaces": [watched], "replicaCount": 1,
                "leaderElection": {"enabled": false}, "rbac": {"userRoles": false},
                "log": {"format": "text", "level": "debug"},
                "image": {"repository": "registry.example/mirror/patchloop", "digest": SCOPED_DIGEST},
                "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
                "networkPolicy": {"enabled": true,
                                  "metricsFrom": [{"namespaceSelector": {"matchLabels": {"monitoring": "true"}}}],
                                  "egress": [{"ports": [{"port": 443, "protocol": "TCP"}]}]},
                "feeds": [{"name": "scoped-kev", "labels": {"patchloop-test": "scoped"},
                           "spec": {"format": "KEV", "source": {"path": "/nonexistent"}}}]}),
    )
    .await
    .unwrap_or_else(|e| panic!("helm install with watchNamespaces: {e}"));
    let scoped_docs = documents(scoped["manifest"].as_str().expect("manifest"));
    assert!(
        !scoped_docs
            .iter()
            .any(|d| d["kind"] == "CustomResourceDefinition" || d["kind"] == "PodDisruptionBudget"),
        "crds.install=false renders no CRD, one replica no PDB"
    );
    let scoped_container = scoped_docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| d["spec"]["template"]["spec"]["containers"][0].clone())
        .expect("a Deployment");
    let scoped_args = &scoped_container["args"];
    for arg in [
        format!("--namespace={watched}"),
        "--log-format=text".to_owned(),
        "--log-level=debug".to_owned(),
    ] {
        assert!(
            scoped_args
                .as_array()
                .is_some_and(|a| a.contains(&json!(arg))),
            "{arg}: {scoped_args}"
        );
    }
    // A digest wins over the tag.
    assert_eq!(
        scoped_container["image"],
        format!("registry.example/mirror/patchloop@{SCOPED_DIGEST}")
    );
    for (kind, name) in [
        ("servicemonitor", "scoped-patchloop"),
        ("networkpolicy", "scoped-patchloop"),
        ("service", "scoped-patchloop-metrics"),
    ] {
        let out = env.kubectl(["get", kind, name, "-n", &scoped_ns, "-o", "name"]);
        assert!(out.status.success(), "no {kind} {name} from the values");
    }
    let policy = find(&scoped_docs, "NetworkPolicy", "scoped-patchloop");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let feed = env.kubectl(["get", "advisoryfeed", "scoped-kev", "-o", "name"]);
    assert!(
        feed.status.success(),
        "the AdvisoryFeed from values was not created"
    );
    let scoped_sa = sa(&scoped_ns, "scoped-patchloop");
    let (w, o) = (Some(watched.as_str()), Some(other.as_str()));
    assert_access(
        env,
        &scoped_sa,
        true,
        &[
            ("list", "workloads.patchloop.dev", w),
            ("create", "jobs.batch", w),
            ("patch", "workloads.patchloop.dev#status", w),
            ("list", "advisoryfeeds.patchloop.dev", None),
            ("get", "configmaps", Some(&scoped_ns)),
            // Events about AdvisoryFeeds (cluster-scoped) go to `default`.
            ("create", "events.events.k8s.io", Some("default")),
            ("patch", "events.events.k8s.io", Some("default")),
            ("create", "events.events.k8s.io", w),
        ],
    );
    assert_access(
        env,
        &scoped_sa,
        false,
        &[
            ("list", "workloads.patchloop.dev", o),
            ("list", "workloads.patchloop.dev", None),
            ("create", "jobs.batch", o),
            ("get", "configmaps", o),
            // Blast radius: nothing namespaced outside the watched
            // namespaces, kube-system above all.
            ("create", "jobs.batch", Some("kube-system")),
            ("create", "jobs.batch", None),
            ("list", "pods", Some("kube-system")),
            ("list", "pods", o),
            ("list", "pods", None),
            ("create", "configmaps", Some("kube-system")),
            ("create", "configmaps", o),
            ("get", "configmaps", Some("kube-system")),
            ("create", "leases.coordination.k8s.io", Some(&scoped_ns)),
            ("create", "events.events.k8s.io", o),
            ("get", "configmaps", Some("default")),
        ],
    );
    // ... and that Role-only RBAC is enough for the controller, too.
    let scoped_deployment = scoped_docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment")
        .clone();
    problems.extend(
        the_controller_does_its_job_with_the_charts_identity(env, &scoped_deployment, &watched)
            .await,
    );
    helm(
        &["uninstall", "scoped", "--namespace", &scoped_ns],
        Some(env.kubeconfig()),
    )
    .await
    .unwrap_or_else(|e| panic!("helm uninstall scoped: {e}"));

    // Upgrade to a chart whose CRDs changed: Helm upgrades CRD templates.
    let v2 = env.dir().join("chart-v2");
    copy_dir(&chart(), &v2);
    let crds_template = v2.join("templates/crds.yaml");
    let text = std::fs::read_to_string(&crds_template).expect("crds template");
    let changed = text
        .replace(
            "    helm.sh/resource-policy: keep\n",
            "    helm.sh/resource-policy: keep\n    patchloop.dev/upgrade-test: \"2\"\n",
        )
        .replace(
            "  - additionalPrinterColumns:\n",
            "  - additionalPrinterColumns:\n    - jsonPath: .metadata.generation\n      name: Generation\n      type: integer\n",
        );
    assert_ne!(changed, text);
    std::fs::write(&crds_template, changed).expect("write");
    let chart_yaml = v2.join("Chart.yaml");
    let meta = std::fs::read_to_string(&chart_yaml).expect("Chart.yaml");
    std::fs::write(
        &chart_yaml,
        meta.replace("\nversion: 0.1.0\n", "\nversion: 0.1.1-test\n"),
    )
    .expect("write");
    helm(
        &[
            "upgrade",
            RELEASE,
            &v2.to_string_lossy(),
            "--namespace",
            RELEASE_NS,
        ],
        Some(env.kubeconfig()),
    )
    .await
    .unwrap_or_else(|e| panic!("helm upgrade: {e}"));
    for want in &source {
        let name = want["metadata"]["name"].as_str().expect("name");
        let crd = crds.get(name).await.expect("CRD");
        assert_eq!(
            crd.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("patchloop.dev/upgrade-test"))
                .map(String::as_str),
            Some("2"),
            "{name} not upgraded"
        );
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(
            columns.iter().any(|c| c.name == "Generation"),
            "{name}: the new printer column is missing"
        );
    }

    // Uninstall: the release's objects go, the CRDs (and the objects) stay.
    let kept = env.namespace("kept").await;
    apply(
        &client,
        &kept,
        workload("survivor", json!({"tier": "none"})),
    )
    .await;
    helm(
        &["uninstall", RELEASE, "--namespace", RELEASE_NS],
        Some(env.kubeconfig()),
    )
    .await
    .unwrap_or_else(|e| panic!("helm uninstall: {e}"));
    let gone = env.kubectl(["get", "deployment", RELEASE, "-n", RELEASE_NS]);
    assert!(
        !gone.status.success(),
        "the Deployment outlived the release"
    );
    let gone = env.kubectl(["get", "clusterrole", "patchloop-controller"]);
    assert!(
        !gone.status.success(),
        "the ClusterRole outlived the release"
    );
    for want in &source {
        let name = want["metadata"]["name"].as_str().expect("name");
        assert!(
            crds.get_opt(name).await.expect("CRD lookup").is_some(),
            "uninstall deleted CRD {name}"
        );
    }
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &kept);
    assert!(workloads.get_opt("survivor").await.expect("get").is_some());
    assert!(problems.is_empty(), "{problems:#?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy");
        }
    }
}
