//! The pieces of a real fleet that remediation tests and the chart's Pods share: the example
//! Jobs' identities, scripts and SSH Secret, the example `apt-over-ssh` policy adapted to the
//! test node, Workloads and Inventories of the test machines (`machines.rs`), and the feed of
//! their advisory.

use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use std::process::Command;

use super::machines::{self, ClientKey, Machine};
use super::node::Node;
use super::objects::{self, apply};

const JOB_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs");

pub fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Server-side applies a manifest of a core or RBAC kind (ServiceAccount, Role, RoleBinding,
/// ConfigMap, Secret) in `ns`.
pub async fn apply_core(client: &kube::Client, ns: &str, doc: Value) {
    async fn typed<K>(client: &kube::Client, ns: &str, doc: Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + serde::Serialize,
        K::DynamicType: Default,
    {
        let name = doc["metadata"]["name"].as_str().expect("a name").to_owned();
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        api.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&doc),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }
    match doc["kind"].as_str() {
        Some("ServiceAccount") => typed::<ServiceAccount>(client, ns, doc).await,
        Some("Role") => typed::<Role>(client, ns, doc).await,
        Some("RoleBinding") => typed::<RoleBinding>(client, ns, doc).await,
        Some("ConfigMap") => typed::<ConfigMap>(client, ns, doc).await,
        Some("Secret") => typed::<Secret>(client, ns, doc).await,
        other => panic!("not a kind this test applies: {other:?}"),
    }
}

/// `examples/jobs/rbac.yaml` (the Jobs' ServiceAccounts and their Inventory writer Role), bound
/// in `ns` instead of the example's `fleet`.
pub async fn job_identities(client: &kube::Client, ns: &str) {
    for mut doc in yaml_documents(&format!("{JOB_SCRIPTS}/rbac.yaml")) {
        if let Some(subjects) = doc.get_mut("subjects").and_then(Value::as_array_mut) {
            for subject in subjects {
                subject["namespace"] = json!(ns);
            }
        }
        apply_core(client, ns, doc).await;
    }
}

/// The `patchloop-job-scripts` ConfigMap of the example policy: the reference scripts as they
/// are in the repository.
pub async fn job_scripts(client: &kube::Client, ns: &str) {
    let mut data = serde_json::Map::new();
    for script in ["apt-remediate.sh", "patchloop-lib.sh"] {
        let path = format!("{JOB_SCRIPTS}/{script}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        data.insert(script.to_owned(), json!(text));
    }
    apply_core(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "patchloop-job-scripts"}, "data": data}),
    )
    .await;
}

/// The `fleet-ssh` Secret: the client key and one pinned host key per Workload, named
/// `<namespace>/<workload>` as the script looks them up.
pub async fn fleet_ssh(
    client: &kube::Client,
    ns: &str,
    client_key: &ClientKey,
    pinned: &[(&str, &str)],
) {
    let key = &client_key.private_key;
    let private_key = std::fs::read_to_string(key).expect("reading the client key");
    let known_hosts: String = pinned
        .iter()
        .map(|(workload, host_key)| format!("{ns}/{workload} {host_key}\n"))
        .collect();
    apply_core(
        client,
        ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "fleet-ssh"},
               "stringData": {"id_ed25519": private_key, "known_hosts": known_hosts}}),
    )
    .await;
}

/// The example's `apt-over-ssh` policy as a user adapts it to this cluster: the runner image
/// built here (never pulled), root on the machines, a window that is always open, one machine
/// at a time after one canary.
pub fn apt_over_ssh_policy(runner_image: &str, max_failures: i64) -> Value {
    let mut policy = yaml_documents(&format!("{JOB_SCRIPTS}/remediation.yaml"))
        .into_iter()
        .find(|d| d["metadata"]["name"] == "apt-over-ssh")
        .expect("the apt-over-ssh example policy");
    let spec = &mut policy["spec"];
    spec["maintenanceWindows"] = json!([{"schedule": "* * * * *", "duration": "2h"}]);
    let remediation = &mut spec["remediation"];
    remediation["maxConcurrent"] = json!(1);
    remediation["canary"] = json!(1);
    remediation["attempts"] = json!(1);
    remediation["maxFailures"] = json!(max_failures);
    let container = &mut remediation["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!(runner_image);
    container["imagePullPolicy"] = json!("Never");
    container["env"] = json!([
        {"name": "PATCHLOOP_SSH_DIR", "value": "/etc/patchloop/ssh"},
        {"name": "PATCHLOOP_SSH_USER", "value": "root"},
    ]);
    policy
}

/// The machine's inventory as an operator's collector reports it: the dpkg status file read
/// over SSH, written with `patchloop inventory --from-file`.
pub fn report_inventory(env: &super::TestEnv, ns: &str, workload: &str, machine: &Machine) {
    let client_key = machines::client_key(env.node().expect("the node"));
    let status = machine
        .ssh(client_key, "cat /var/lib/dpkg/status")
        .unwrap_or_else(|e| panic!("{e}"));
    let file = env.dir().join(format!("{ns}-{workload}.status"));
    std::fs::write(&file, status).expect("writing the status file");
    let out = Command::new(env!("CARGO_BIN_EXE_patchloop"))
        .args(["inventory", "--workload", workload, "--namespace", ns])
        .args(["--reporter", "ssh-collector"])
        .arg("--from-file")
        .arg(format!("dpkg-status:{}", file.display()))
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .expect("running patchloop inventory");
    assert!(
        out.status.success(),
        "patchloop inventory: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn workload_of(name: &str, machine: &Machine) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "labels": {"patch-via": "apt-ssh"}},
        "spec": {"platform": "Debian:12", "target": {"address": machine.address.to_string()}},
    })
}

/// The feed of the machines' real advisory (`scripts/node-images.sh`: Debian's changelog of
/// the fixed package), loaded by the controllers started with `label`.
pub async fn machines_feed(client: &kube::Client, node: &Node, label: &str) {
    let path = node.images.join("advisory-fixed.json");
    assert!(path.is_file(), "{} is missing", path.display());
    apply(
        client,
        "",
        objects::feed(
            &format!("machines-{label}"),
            label,
            "OSV",
            &path.display().to_string(),
        ),
    )
    .await;
}

/// Waits (up to `timeout`) until every Workload of `names` in `ns` is in compliance `state`.
pub async fn all_in_state(
    client: &kube::Client,
    ns: &str,
    names: &[&str],
    state: &str,
    timeout: std::time::Duration,
) {
    let workloads: Api<patchloop::api::Workload> = Api::namespaced(client.clone(), ns);
    for name in names {
        super::eventually(&format!("{name} {state}"), timeout, async || {
            let status = objects::workload_status(&workloads, name).await?;
            objects::in_state(&status, state).then_some(())
        })
        .await;
    }
}

/// What a remediation scenario sets up before its policy: the Jobs' identities and scripts,
/// the SSH Secret pinning `pins` (Workload → the host key pinned for it), and for each
/// (Workload, machine) of `members` the Workload and its Inventory read from the machine.
pub async fn prepare(
    env: &super::TestEnv,
    client: &kube::Client,
    ns: &str,
    client_key: &ClientKey,
    members: &[(&str, &Machine)],
    pins: &[(&str, &str)],
) {
    job_identities(client, ns).await;
    job_scripts(client, ns).await;
    fleet_ssh(client, ns, client_key, pins).await;
    for (name, machine) in members {
        apply(client, ns, workload_of(name, machine)).await;
        report_inventory(env, ns, name, machine);
    }
}

/// Each Workload pinned to its own machine's host key.
pub fn own_pins<'a>(members: &[(&'a str, &'a Machine)]) -> Vec<(&'a str, &'a str)> {
    members
        .iter()
        .map(|(name, machine)| (*name, machine.host_key.as_str()))
        .collect()
}

/// The installed version of [`machines::PACKAGE`] on each machine (`dpkg-query` over SSH).
pub fn installed_versions(fleet: &[Machine], client_key: &ClientKey) -> Vec<String> {
    fleet
        .iter()
        .map(|m| {
            m.installed_version(client_key, machines::PACKAGE)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

/// Asserts that `dpkg-query` over SSH shows [`machines::PACKAGE`] on each machine newer than
/// the version it had (`before`, in the same order).
pub fn assert_upgraded(fleet: &[Machine], client_key: &ClientKey, before: &[String]) {
    for (machine, old) in fleet.iter().zip(before) {
        let now = machine
            .installed_version(client_key, machines::PACKAGE)
            .unwrap_or_else(|e| panic!("{e}"));
        let upgraded = Command::new("dpkg")
            .args(["--compare-versions", &now, "gt", old])
            .status()
            .expect("running dpkg");
        assert!(upgraded.success(), "{}: {old} -> {now}", machine.name);
    }
}
