//! The node agent (`deploy/node-agent/`) on the real control plane: its
//! ServiceAccount, Role and RoleBinding applied as the kustomization lists
//! them, `patchloop inventory --create-workload` run with that
//! ServiceAccount's own token creates the node's Workload and Inventory and
//! nothing more; the DaemonSet is accepted, mounts the host read-only, and
//! its exact command line reports until SIGTERM. The Role equals the chart's
//! node-agent ClusterRole.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use patchloop::api::{Inventory, Workload};
use patchloop::engine::inventory::{InputFormat, parse};
use serde_json::{Value, json};
use support::objects::FIXTURES;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/node-agent");
const AGENT: &str = "patchloop-node-agent";

/// Every document of every resource `kustomization.yaml` lists, with the
/// kustomization's namespace.
fn manifests() -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(Path::new(DIR).join("kustomization.yaml"))
        .expect("kustomization.yaml");
    let kustomization: Value = serde_saphyr::from_str(&text).expect("kustomization parses");
    let namespace = kustomization["namespace"]
        .as_str()
        .expect("the kustomization sets a namespace")
        .to_owned();
    let mut docs = Vec::new();
    for resource in kustomization["resources"].as_array().expect("resources") {
        let file = resource.as_str().expect("a file name");
        let text = std::fs::read_to_string(Path::new(DIR).join(file)).expect(file);
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text).expect(file);
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    (namespace, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/node-agent"))
}

/// Applies the documents of these kinds into `ns`, as `kubectl apply -k`
/// with the namespace overridden would.
async fn apply(client: &kube::Client, ns: &str, docs: &[Value], kinds: &[&str]) {
    for doc in docs
        .iter()
        .filter(|d| kinds.iter().any(|k| d["kind"] == *k))
    {
        let (group, version) = match doc["apiVersion"].as_str().expect("apiVersion") {
            gv if gv.contains('/') => gv.split_once('/').expect("group/version"),
            v => ("", v),
        };
        let gvk = GroupVersionKind::gvk(group, version, doc["kind"].as_str().expect("kind"));
        let (resource, _) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .expect("a served kind");
        let mut doc = doc.clone();
        doc["metadata"]["namespace"] = json!(ns);
        let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
        let object: DynamicObject = serde_json::from_value(doc).expect("an object");
        api.patch(
            &name,
            &PatchParams::apply("node-agent-test"),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {gvk:?} {name}: {e}"));
    }
}

/// A node's root file system: this repository's Debian 12 dpkg database and
/// os-release, where the DaemonSet mounts them.
fn node_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    for (fixture, path) in [
        ("dpkg/status", "var/lib/dpkg/status"),
        ("os-release/debian-12", "etc/os-release"),
    ] {
        let target = root.path().join(path);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("dirs");
        std::fs::copy(Path::new(FIXTURES).join(fixture), &target).expect("copy");
    }
    root
}

fn fixture_package_count() -> usize {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("dpkg/status")).expect("fixture");
    parse(InputFormat::DpkgStatus, &text)
        .expect("fixture parses")
        .len()
}

fn patchloop_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchloop"));
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("PATCHLOOP_INVENTORY_EVERY");
    cmd
}

fn agent(kubeconfig: &Path, ns: &str, node: &str, root: &Path) -> Output {
    patchloop_command(&[
        "inventory",
        "--workload",
        node,
        "--create-workload",
        "--root",
        root.to_str().expect("utf-8"),
        "--namespace",
        ns,
        "--reporter",
        AGENT,
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ])
    .output()
    .expect("patchloop")
}

fn succeeded(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

async fn client_from(kubeconfig: &Path) -> kube::Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

fn managers(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect()
}

#[tokio::test]
async fn the_agent_creates_its_workload_and_inventory_with_least_privilege() {
    let env = support::env_with_node();
    let admin = env.client().await;
    let ns = env.namespace("node-agent").await;
    let (_, docs) = manifests();
    apply(
        &admin,
        &ns,
        &docs,
        &["ServiceAccount", "Role", "RoleBinding"],
    )
    .await;
    // The ServiceAccount's own token: exactly its identity and RBAC.
    let sa_kubeconfig = env.kubeconfig_for_service_account(&ns, AGENT).await;
    let root = node_root();
    let node = "node-a.example.internal";

    let (stdout, _) = succeeded(&agent(&sa_kubeconfig, &ns, node, root.path()));
    assert!(
        stdout.contains(&format!("workload/{node} created: platform Debian:12")),
        "{stdout}"
    );
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    let created = workloads.get(node).await.expect("the Workload");
    assert_eq!(created.spec.platform, "Debian:12");
    assert_eq!(created.spec.target, Some(json!({"node": node})));
    assert!(!created.spec.paused);
    let labels = created.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("patchloop.dev/node").map(String::as_str),
        Some(node)
    );
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some(AGENT)
    );
    assert_eq!(managers(&created.metadata), [AGENT]);

    let inventories: Api<Inventory> = Api::namespaced(admin.clone(), &ns);
    let inv = inventories
        .get(&format!("workload-{node}"))
        .await
        .expect("the Inventory");
    assert_eq!(inv.spec.subject.name, node);
    assert_eq!(inv.spec.reporter.as_deref(), Some(AGENT));
    assert_eq!(inv.spec.packages.len(), fixture_package_count());
    assert!(
        managers(&inv.metadata)
            .iter()
            .any(|m| m == "patchloop-inventory-reporter")
    );

    // A user takes the Workload over: the next report must not touch it,
    // and says the platform it detects differs.
    let merge = json!({"spec": {"platform": "Debian:11", "paused": true},
                       "metadata": {"labels": {"team": "infra"}}});
    let edited = workloads
        .patch(node, &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .expect("the admin edits the Workload");
    let (stdout, stderr) = succeeded(&agent(&sa_kubeconfig, &ns, node, root.path()));
    assert!(
        stdout.contains(&format!("workload/{node} exists")),
        "{stdout}"
    );
    assert!(
        stderr.contains("has platform \"Debian:11\"") && stderr.contains("Debian:12"),
        "{stderr}"
    );
    let after = workloads.get(node).await.expect("the Workload");
    assert_eq!(
        after.metadata.resource_version, edited.metadata.resource_version,
        "the second run wrote the Workload"
    );
    assert_eq!(after.spec, edited.spec);

    // Least privilege, with the agent's own identity.
    let sa = client_from(&sa_kubeconfig).await;
    let sa_workloads: Api<Workload> = Api::namespaced(sa.clone(), &ns);
    forbidden(
        sa_workloads.delete(node, &DeleteParams::default()).await,
        "deleting a Workload",
    );
    forbidden(
        sa_workloads
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"paused": false}})),
            )
            .await,
        "patching a Workload",
    );
    forbidden(
        sa_workloads.list(&ListParams::default()).await,
        "listing Workloads",
    );
    let sa_inventories: Api<Inventory> = Api::namespaced(sa.clone(), &ns);
    forbidden(
        sa_inventories
            .delete(&format!("workload-{node}"), &DeleteParams::default())
            .await,
        "deleting an Inventory",
    );
    forbidden(
        sa_inventories.list(&ListParams::default()).await,
        "listing Inventories",
    );
    let sa_secrets: Api<Secret> = Api::namespaced(sa.clone(), &ns);
    forbidden(
        sa_secrets.list(&ListParams::default()).await,
        "listing Secrets",
    );
    let token_secret = Api::<Secret>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("secrets")
        .items
        .into_iter()
        .find_map(|s| s.metadata.name.filter(|n| n.starts_with(AGENT)))
        .expect("the agent's token Secret");
    forbidden(
        sa_secrets.get(&token_secret).await,
        "reading its own token Secret",
    );
    let elsewhere: Api<Workload> = Api::namespaced(sa.clone(), "default");
    let mut other = created.clone();
    other.metadata = kube::api::ObjectMeta {
        name: Some("elsewhere".into()),
        ..Default::default()
    };
    forbidden(
        elsewhere.create(&PostParams::default(), &other).await,
        "creating a Workload in another namespace",
    );
    // The documented limit: RBAC cannot restrict `create` by name, so the
    // agent can create any (new) Workload in its own namespace.
    other.metadata.name = Some("not-a-node".into());
    sa_workloads
        .create(&PostParams::default(), &other)
        .await
        .expect("create is not limited by name (README.md says so)");
}

/// Paths (JSON-pointer-like) of `want`'s leaves missing or different in
/// `have`: what the apiserver dropped or rewrote.
fn missing(want: &Value, have: &Value, path: &str, out: &mut Vec<String>) {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for (k, v) in w {
                missing(
                    v,
                    h.get(k).unwrap_or(&Value::Null),
                    &format!("{path}/{k}"),
                    out,
                );
            }
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => {
            for (i, (v, hv)) in w.iter().zip(h).enumerate() {
                missing(v, hv, &format!("{path}/{i}"), out);
            }
        }
        _ if want == have => {}
        _ => out.push(format!("{path}: want {want}, have {have}")),
    }
}

#[tokio::test]
async fn the_daemonset_is_accepted_and_mounts_only_what_it_reads_read_only() {
    let (namespace, docs) = manifests();
    assert_eq!(namespace, "patchloop-nodes");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "Role", "RoleBinding", "DaemonSet"],
        "namespaced objects only"
    );
    for doc in &docs {
        assert!(
            doc["metadata"].get("namespace").is_none(),
            "{}: the kustomization's namespace decides",
            doc["kind"]
        );
    }
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        find(&docs, "ServiceAccount")["metadata"]["name"]
    );
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(field).is_none(), "{field}");
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(
        pod["tolerations"]
            .as_array()
            .expect("tolerations")
            .iter()
            .any(|t| t == &json!({"operator": "Exists"})),
        "tolerates every taint"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert!(c["securityContext"].get("privileged").is_none());
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][resource].is_string(),
                "{kind}.{resource}"
            );
        }
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for arg in [
        "inventory",
        "--workload=$(NODE_NAME)",
        "--create-workload",
        "--root=/host",
    ] {
        assert!(args.contains(&arg), "{arg} in {args:?}");
    }
    let env_var = |name: &str| {
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("env {name}"))
    };
    assert_eq!(
        env_var("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(env_var("PATCHLOOP_INVENTORY_EVERY")["value"], "6h");

    // Every mount read-only, each the host path of its volume under /host,
    // and exactly the package databases and os-release.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), volumes.len());
    let mut host_paths = Vec::new();
    for mount in mounts {
        assert_eq!(mount["readOnly"], true, "{mount}");
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("volume of {mount}"));
        let host = volume["hostPath"]["path"]
            .as_str()
            .expect("a hostPath volume");
        assert_eq!(mount["mountPath"], format!("/host{host}"));
        host_paths.push(host);
    }
    host_paths.sort_unstable();
    assert_eq!(
        host_paths,
        [
            "/etc/os-release",
            "/lib/apk/db",
            "/var/lib/dpkg",
            "/var/lib/rpm"
        ]
    );

    // The apiserver accepts it and keeps every field (1.20 drops unknown
    // fields silently, so compare what comes back). No kubelet: no Pods.
    let env = support::env_with_node();
    let admin = env.client().await;
    let ns = env.namespace("node-agent-ds").await;
    apply(&admin, &ns, &docs, &["ServiceAccount", "DaemonSet"]).await;
    let (resource, _) =
        kube::discovery::pinned_kind(&admin, &GroupVersionKind::gvk("apps", "v1", "DaemonSet"))
            .await
            .expect("DaemonSets");
    let api: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &resource);
    let stored = api.get(AGENT).await.expect("the DaemonSet");
    let stored = serde_json::to_value(&stored).expect("json");
    let mut wrong = Vec::new();
    missing(&ds["spec"], &stored["spec"], "/spec", &mut wrong);
    assert!(wrong.is_empty(), "the apiserver changed: {wrong:#?}");
}

/// The DaemonSet's command line, with the downward-API variables and the
/// host root replaced for a test run.
fn daemonset_args(docs: &[Value], node: &str, ns: &str, root: &Path) -> (Vec<String>, String) {
    let c = &find(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let args = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .map(|a| {
            a.replace("$(NODE_NAME)", node)
                .replace("$(POD_NAMESPACE)", ns)
                .replace("--root=/host", &format!("--root={}", root.display()))
        })
        .collect();
    let every = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "PATCHLOOP_INVENTORY_EVERY")
        .and_then(|e| e["value"].as_str())
        .expect("the interval")
        .to_owned();
    (args, every)
}

#[tokio::test]
async fn the_daemonsets_command_reports_and_stops_on_sigterm() {
    let env = support::env_with_node();
    let admin = env.client().await;
    let ns = env.namespace("node-agent-loop").await;
    let (_, docs) = manifests();
    apply(
        &admin,
        &ns,
        &docs,
        &["ServiceAccount", "Role", "RoleBinding"],
    )
    .await;
    let sa_kubeconfig: PathBuf = env.kubeconfig_for_service_account(&ns, AGENT).await;
    let root = node_root();
    let node = "node-b";
    let (args, every) = daemonset_args(&docs, node, &ns, root.path());
    let mut cmd = patchloop_command(&[]);
    cmd.args(&args)
        .arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .env("PATCHLOOP_INVENTORY_EVERY", &every)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = support::spawn_managed("node agent", cmd);
    let inventories: Api<Inventory> = Api::namespaced(admin.clone(), &ns);
    let inv = support::eventually("the agent's Inventory", support::WAIT_TIMEOUT, async || {
        inventories
            .get_opt(&format!("workload-{node}"))
            .await
            .ok()?
    })
    .await;
    assert_eq!(inv.spec.packages.len(), fixture_package_count());
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    assert!(workloads.get_opt(node).await.expect("get").is_some());
    // Still running (waiting 6h), and a SIGTERM ends it at once, cleanly.
    assert!(
        child.try_wait().expect("wait").is_none(),
        "it keeps running"
    );
    child.signal(libc::SIGTERM).expect("SIGTERM");
    let status = child
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("exits promptly on SIGTERM");
    assert!(status.success(), "{status:?}");

    // A first report that fails is a configuration error: exit (the Pod
    // shows CrashLoopBackOff) instead of retrying quietly.
    let empty = tempfile::tempdir().expect("temp dir");
    let (args, every) = daemonset_args(&docs, node, &ns, empty.path());
    let out = patchloop_command(&[])
        .args(&args)
        .arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .env("PATCHLOOP_INVENTORY_EVERY", &every)
        .output()
        .expect("patchloop");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no package database under"));
}

#[test]
fn the_role_is_the_charts_node_agent_role() {
    let (_, docs) = manifests();
    let role = find(&docs, "Role");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/patchloop.yaml"
    ))
    .expect("deploy/patchloop.yaml");
    let rendered: Vec<Value> = serde_saphyr::from_multiple(&text).expect("parses");
    let chart_role = rendered
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "patchloop-node-agent")
        .expect("the chart's node-agent ClusterRole");
    assert_eq!(role["rules"], chart_role["rules"]);
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["patchloop.dev"], "resources": ["inventories"], "verbs": ["get", "create", "patch"]},
            {"apiGroups": ["patchloop.dev"], "resources": ["workloads"], "verbs": ["get", "create"]},
        ])
    );
}

/// The DaemonSet for real, on the real node: its Pod runs (the project's binary in the runner
/// image, which has the image's entrypoint), reads the node's own dpkg database through the
/// read-only host mounts, and writes the node's Workload and Inventory with its
/// ServiceAccount. Only the image is changed, as a user's kustomize overlay would.
#[tokio::test]
async fn the_daemonset_runs_on_the_real_node_and_reports_the_nodes_packages() {
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let admin = env.client().await;
    let ns = env.namespace("node-agent-ds").await;
    let (_, mut docs) = manifests();
    for doc in docs.iter_mut().filter(|d| d["kind"] == "DaemonSet") {
        let container = &mut doc["spec"]["template"]["spec"]["containers"][0];
        container["image"] = json!(node.runner_image);
        container["imagePullPolicy"] = json!("Never");
    }
    // The token Secret must exist before the Pod is admitted.
    apply(
        &admin,
        &ns,
        &docs,
        &["ServiceAccount", "Role", "RoleBinding"],
    )
    .await;
    env.kubeconfig_for_service_account(&ns, AGENT).await;
    apply(&admin, &ns, &docs, &["DaemonSet"]).await;

    let node_name = node.network.node_name();
    let inventories: Api<Inventory> = Api::namespaced(admin.clone(), &ns);
    let inventory = support::eventually(
        "the node's Inventory from the DaemonSet's Pod",
        Duration::from_secs(120),
        async || {
            inventories
                .get_opt(&format!("workload-{node_name}"))
                .await
                .ok()?
        },
    )
    .await;
    assert_eq!(
        inventory.spec.reporter.as_deref(),
        Some(AGENT),
        "written by the agent"
    );
    // The host's own packages: what dpkg-query says on this machine.
    let host = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\\n"])
        .output()
        .expect("dpkg-query");
    let host_packages = String::from_utf8_lossy(&host.stdout);
    let containerd = host_packages
        .lines()
        .find(|l| l.starts_with("containerd "))
        .expect("containerd is installed on the node");
    let version = containerd.split(' ').nth(1).expect("a version");
    assert!(
        inventory
            .spec
            .packages
            .iter()
            .any(|p| p.starts_with(&format!("containerd {version}"))),
        "the node's containerd {version} is in the Inventory"
    );
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    let workload = workloads
        .get(&node_name)
        .await
        .expect("the node's Workload");
    assert_eq!(workload.spec.target, Some(json!({"node": node_name})));
    assert_eq!(workload.spec.platform, "Debian:12");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), &ns);
    let running = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=patchloop-node-agent"))
        .await
        .expect("listing the agent's Pods")
        .items;
    assert_eq!(running.len(), 1, "one agent on the one node");
    assert_eq!(
        running[0]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref()),
        Some(node_name.as_str())
    );
}
