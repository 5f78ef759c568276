//! Remediation for real: real Pods on the real node (`tests/support/node.rs`) run the reference
//! script `examples/jobs/apt-remediate.sh`, unmodified, in the runner image; it reaches real
//! test machines (`tests/support/machines.rs`) over SSH with the key and the pinned host keys
//! from a Secret, real apt upgrades the package from the machines' repository, and the script
//! reports the machine's inventory from inside the Pod. Nothing here is simulated.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use patchloop::api::Workload;
use patchloop::api::workload::{RemediationPhase, RemediationRecord};
use serde_json::{Value, json};
use support::machines::{self, Machine, PACKAGE};
use support::objects::{apply, condition, in_state, workload_status};
use support::patchloop::Patchloop;

/// Real Jobs: a Pod start, an SSH session, `apt-get update` and an install per machine.
const REMEDIATION_TIMEOUT: Duration = Duration::from_secs(90);
const JOB_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs");

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

/// Server-side applies a manifest of a core or RBAC kind (ServiceAccount, Role, RoleBinding,
/// ConfigMap, Secret) in `ns`.
async fn apply_core(client: &kube::Client, ns: &str, doc: Value) {
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
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
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
async fn job_identities(client: &kube::Client, ns: &str) {
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
async fn job_scripts(client: &kube::Client, ns: &str) {
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
async fn fleet_ssh(client: &kube::Client, ns: &str, pinned: &[(&str, &str)]) {
    let key = &machines::client_key(support::env_with_node().node().expect("the node")).private_key;
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
fn apt_over_ssh_policy(runner_image: &str, max_failures: i64) -> Value {
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
fn report_inventory(env: &support::TestEnv, ns: &str, workload: &str, machine: &Machine) {
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

fn workload_of(name: &str, machine: &Machine) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "labels": {"patch-via": "apt-ssh"}},
        "spec": {"platform": "Debian:12", "target": {"address": machine.address.to_string()}},
    })
}

/// The feed of the machines' real advisory (`scripts/node-images.sh`: Debian's changelog of
/// the fixed package), loaded by the controllers started with `label`.
async fn machines_feed(client: &kube::Client, label: &str) {
    let path = machines::images_dir().join("advisory-fixed.json");
    assert!(path.is_file(), "{} is missing", path.display());
    apply(
        client,
        "",
        support::objects::feed(
            &format!("machines-{label}"),
            label,
            "OSV",
            &path.display().to_string(),
        ),
    )
    .await;
}

/// Counts the remediation Pods of `ns` that are neither Succeeded nor Failed, and keeps the
/// highest count seen and every Pod's node, until `done`.
fn watch_active_pods(
    client: kube::Client,
    ns: String,
    done: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<BTreeSet<String>>) {
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    let task = tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let mut nodes = BTreeSet::new();
        while !done.load(Ordering::Relaxed) {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                let active = list
                    .items
                    .iter()
                    .filter(|p| {
                        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                        !matches!(phase, Some("Succeeded") | Some("Failed"))
                    })
                    .count();
                seen.fetch_max(active, Ordering::Relaxed);
                for pod in &list.items {
                    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
                        nodes.insert(node);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        nodes
    });
    (most, task)
}

#[tokio::test]
async fn real_jobs_upgrade_real_machines_canary_first_one_at_a_time() {
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let client = env.client().await;
    let ns = env.namespace("real-remediation").await;
    let label = format!("real-{}", support::random_suffix());
    let fleet = machines::start(node, 3, 0).unwrap_or_else(|e| panic!("{e}"));
    let client_key = machines::client_key(node);
    let names: Vec<String> = (0..fleet.len()).map(|i| format!("web-{i}")).collect();
    let before: Vec<String> = fleet
        .iter()
        .map(|m| {
            m.installed_version(client_key, PACKAGE)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();

    machines_feed(&client, &label).await;
    job_identities(&client, &ns).await;
    job_scripts(&client, &ns).await;
    let pinned: Vec<(&str, &str)> = names
        .iter()
        .zip(&fleet)
        .map(|(name, m)| (name.as_str(), m.host_key.as_str()))
        .collect();
    fleet_ssh(&client, &ns, &pinned).await;
    for (name, machine) in names.iter().zip(&fleet) {
        apply(&client, &ns, workload_of(name, machine)).await;
        report_inventory(env, &ns, name, machine);
    }
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let _controller = Patchloop::start(env, &ns, &label, &[]).await;
    // Report-only first: the real advisory makes every machine Overdue.
    for name in &names {
        support::eventually(
            &format!("{name} Overdue"),
            support::objects::WAIT,
            async || {
                let status = workload_status(&workloads, name).await?;
                in_state(&status, "Overdue").then_some(())
            },
        )
        .await;
    }

    let done = Arc::new(AtomicBool::new(false));
    let (most_active, pod_nodes) = watch_active_pods(client.clone(), ns.clone(), done.clone());
    apply(&client, &ns, apt_over_ssh_policy(&node.runner_image, 2)).await;
    for name in &names {
        support::eventually(
            &format!("{name} Compliant"),
            REMEDIATION_TIMEOUT,
            async || {
                let status = workload_status(&workloads, name).await?;
                in_state(&status, "Compliant").then_some(())
            },
        )
        .await;
    }
    done.store(true, Ordering::Relaxed);
    let nodes = pod_nodes.await.expect("the Pod watcher");

    assert_eq!(
        most_active.load(Ordering::Relaxed),
        1,
        "maxConcurrent 1: never more than one remediation Pod at a time"
    );
    assert_eq!(
        nodes,
        BTreeSet::from([node.network.node_name()]),
        "the Pods ran on the real node"
    );
    for (machine, old) in fleet.iter().zip(&before) {
        let now = machine
            .installed_version(client_key, PACKAGE)
            .unwrap_or_else(|e| panic!("{e}"));
        let upgraded = Command::new("dpkg")
            .args(["--compare-versions", &now, "gt", old])
            .status()
            .expect("running dpkg");
        assert!(upgraded.success(), "{}: {old} -> {now}", machine.name);
    }
    // The Pods' own logs: real apt, and the script's report.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default())
        .await
        .expect("listing the Pods");
    assert_eq!(list.items.len(), fleet.len(), "one Pod per machine");
    for pod in &list.items {
        let name = pod.metadata.name.clone().expect("a Pod name");
        assert_eq!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded"),
            "{name}"
        );
        let log = pods
            .logs(&name, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("logs of {name}: {e}"));
        assert!(
            log.contains(&format!("Unpacking {PACKAGE}:amd64")),
            "{name} ran apt: {log}"
        );
    }
}

/// What one remediation attempt of `name` ended as, once it ended.
async fn failed_remediation(workloads: &Api<Workload>, name: &str) -> RemediationRecord {
    support::eventually(
        &format!("{name}'s Job Failed"),
        REMEDIATION_TIMEOUT,
        async || {
            let record = workload_status(workloads, name).await?.remediation?;
            (record.phase == Some(RemediationPhase::Failed)).then_some(record)
        },
    )
    .await
}

/// Two real failures pause the rollout (`maxFailures: 2`): a machine whose repository lacks
/// the fix (apt runs, the version stays below the fix, the script says so), then a machine that
/// presents a host key other than the one pinned for its Workload (ssh stops at the key
/// exchange, before the client key is offered: the machine's sshd sees no authentication
/// attempt). The third Workload, whose machine could be fixed, never gets a Job.
#[tokio::test]
async fn real_failures_pause_the_rollout_and_an_unpinned_host_key_is_refused_before_authentication()
{
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let client = env.client().await;
    let ns = env.namespace("real-failures").await;
    let label = format!("fail-{}", support::random_suffix());
    // [fixed, fixed, empty]: the empty one lacks the fix.
    let fleet = machines::start(node, 3, 1).unwrap_or_else(|e| panic!("{e}"));
    let client_key = machines::client_key(node);
    let (fixable, impostor, lacks_fix) = (&fleet[0], &fleet[1], &fleet[2]);
    // Rollout order is by name when due dates tie: a-..., then b-..., then c-....
    let workloads_and_machines = [
        ("a-lacks-fix", lacks_fix),
        ("b-impostor", impostor),
        ("c-fixable", fixable),
    ];
    let before = lacks_fix
        .installed_version(client_key, PACKAGE)
        .unwrap_or_else(|e| panic!("{e}"));

    machines_feed(&client, &label).await;
    job_identities(&client, &ns).await;
    job_scripts(&client, &ns).await;
    // b-impostor's pin is another machine's key: its own machine presents a different one.
    fleet_ssh(
        &client,
        &ns,
        &[
            ("a-lacks-fix", lacks_fix.host_key.as_str()),
            ("b-impostor", fixable.host_key.as_str()),
            ("c-fixable", fixable.host_key.as_str()),
        ],
    )
    .await;
    for (name, machine) in workloads_and_machines {
        apply(&client, &ns, workload_of(name, machine)).await;
        report_inventory(env, &ns, name, machine);
    }
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let controller = Patchloop::start(env, &ns, &label, &[]).await;
    for (name, _) in workloads_and_machines {
        support::eventually(
            &format!("{name} Overdue"),
            support::objects::WAIT,
            async || {
                let status = workload_status(&workloads, name).await?;
                in_state(&status, "Overdue").then_some(())
            },
        )
        .await;
    }
    // What the impostor logs from here on is the Jobs' doing (the harness's own collection
    // logged in before).
    let impostor_log_mark = impostor.sshd_log().len();
    apply(&client, &ns, apt_over_ssh_policy(&node.runner_image, 2)).await;

    let lacking = failed_remediation(&workloads, "a-lacks-fix").await;
    let message = lacking.message.unwrap_or_default();
    assert!(
        message.contains(PACKAGE),
        "the script names the package still below its fix: {message}"
    );
    assert_eq!(
        lacks_fix
            .installed_version(client_key, PACKAGE)
            .unwrap_or_else(|e| panic!("{e}")),
        before,
        "nothing newer was there to install"
    );

    let refused = failed_remediation(&workloads, "b-impostor").await;
    let message = refused.message.unwrap_or_default();
    assert!(
        message.contains("host key mismatch"),
        "ssh stopped at the host key: {message}"
    );
    let sshd_log = impostor.sshd_log()[impostor_log_mark..].to_owned();
    assert!(
        sshd_log.contains("[preauth]") && !sshd_log.contains("Accepted publickey"),
        "the impostor saw a connection that never authenticated: {sshd_log}"
    );
    assert!(
        !sshd_log.contains("authenticating user"),
        "no credential was offered to the impostor: {sshd_log}"
    );

    let policies: Api<patchloop::api::PatchPolicy> = Api::namespaced(client.clone(), &ns);
    support::eventually("RolloutPaused", support::objects::WAIT, async || {
        let status = policies.get_status("apt-over-ssh").await.ok()?.status?;
        (condition(&status.conditions, "RolloutPaused") == Some("True")).then_some(())
    })
    .await;
    let woken = controller
        .wake_and_count(&client, &ns, "apt-over-ssh", "policy", 1)
        .await;
    assert_eq!(woken.jobs_created(), 0.0, "no Job starts while paused");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
    let created: BTreeSet<String> = jobs
        .list(&ListParams::default())
        .await
        .expect("listing Jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.labels?.get("patchloop.dev/workload").cloned())
        .collect();
    assert_eq!(
        created,
        BTreeSet::from(["a-lacks-fix".to_owned(), "b-impostor".to_owned()]),
        "c-fixable never got a Job"
    );
    assert!(in_state(
        &workload_status(&workloads, "c-fixable")
            .await
            .expect("a status"),
        "Overdue"
    ));
}
