//! The real node of the test environment (`tests/support/node.rs`): a Job's Pod is scheduled,
//! runs in containerd from a locally imported image, its logs come back through the
//! apiserver from the kubelet, and a Pod reaches the apiserver with its ServiceAccount the way
//! any in-cluster client does (the `kubernetes` Service).

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, LogParams, PostParams};
use patchloop::api::Inventory;
use serde_json::json;
use std::time::Duration;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn job(name: &str, image: &str, service_account: &str, script: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never",
                "command": ["/bin/bash", "-c", script],
            }],
        }}},
    }))
    .expect("a valid Job")
}

/// Waits for Job `name` to finish; returns its Pod (panics with the Pod's status on failure).
async fn finished_pod(client: &kube::Client, ns: &str, name: &str) -> Pod {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let succeeded =
        support::eventually(&format!("Job {name} to finish"), JOB_TIMEOUT, async || {
            let status = jobs.get(name).await.ok()?.status?;
            if status.succeeded.unwrap_or(0) > 0 {
                Some(true)
            } else if status.failed.unwrap_or(0) > 0 {
                Some(false)
            } else {
                None
            }
        })
        .await;
    let pod = pods
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await
        .expect("listing the Job's Pods")
        .items
        .into_iter()
        .next()
        .expect("the Job's Pod");
    assert!(succeeded, "Job {name} failed: {:?}", pod.status);
    pod
}

async fn logs(client: &kube::Client, ns: &str, pod: &Pod) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = pod.metadata.name.as_deref().expect("a Pod name");
    pods.logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("logs of {name}: {e}"))
}

#[tokio::test]
async fn a_job_runs_to_completion_on_the_real_node_and_its_logs_come_back() {
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let client = env.client().await;
    let ns = env.namespace("node-job").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let script = "echo debian $(cat /etc/debian_version); jq --version; echo ran";
    jobs.create(
        &PostParams::default(),
        &job("hello", support::node::DEBIAN_IMAGE, "default", script),
    )
    .await
    .expect("creating the Job");

    let pod = finished_pod(&client, &ns, "hello").await;
    let spec = pod.spec.as_ref().expect("a Pod spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node.network.node_name().as_str()),
        "scheduled onto the test node"
    );
    let status = pod.status.as_ref().expect("a Pod status");
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let pod_ip: std::net::Ipv4Addr = status
        .pod_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .expect("an IPv4 Pod address");
    assert_eq!(
        pod_ip.octets()[..3],
        [198, 18, node.network.slot],
        "the Pod's address is on the node's bridge subnet"
    );
    let out = logs(&client, &ns, &pod).await;
    assert!(out.contains("debian 12."), "{out}");
    assert!(out.contains("jq-1.6"), "{out}");
    assert!(out.contains("ran"), "{out}");
}

#[tokio::test]
async fn a_pod_reaches_the_apiserver_with_its_service_account() {
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let client = env.client().await;
    let ns = env.namespace("node-api").await;
    // The Inventory reporter's rules (deploy/: ClusterRole patchloop-reporter), for a
    // ServiceAccount of this namespace.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "reporter"}})).expect("an SA"),
    )
    .await
    .expect("creating the ServiceAccount");
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "reporter"},
                "rules": [{"apiGroups": ["patchloop.dev"], "resources": ["inventories"],
                           "verbs": ["get", "list", "watch", "create", "update", "patch"]}],
            }))
            .expect("a Role"),
        )
        .await
        .expect("creating the Role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "reporter"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reporter"},
                "subjects": [{"kind": "ServiceAccount", "name": "reporter", "namespace": ns}],
            }))
            .expect("a RoleBinding"),
        )
        .await
        .expect("creating the RoleBinding");
    // ServiceAccount admission needs the token Secret before it admits the Pod.
    support::eventually("the reporter's token", support::WAIT_TIMEOUT, async || {
        let sa = sas.get("reporter").await.ok()?;
        sa.secrets.filter(|s| !s.is_empty())
    })
    .await;

    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let script = "echo \"service $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT\"; \
                  exec patchloop inventory --workload in-pod --reporter in-pod";
    jobs.create(
        &PostParams::default(),
        &job("report", &node.runner_image, "reporter", script),
    )
    .await
    .expect("creating the Job");
    let pod = finished_pod(&client, &ns, "report").await;
    let out = logs(&client, &ns, &pod).await;
    assert!(
        out.contains(&format!("service {}:443", node.network.service_ip())),
        "the Pod found the API at the kubernetes Service: {out}"
    );

    // The runner image's own dpkg database, reported through the API from inside the Pod.
    let inventories: Api<Inventory> = Api::namespaced(client.clone(), &ns);
    let inventory = inventories
        .get("workload-in-pod")
        .await
        .expect("the Inventory the Pod wrote");
    assert_eq!(inventory.spec.reporter.as_deref(), Some("in-pod"));
    let jq = inventory
        .spec
        .packages
        .iter()
        .find(|p| p.starts_with("jq "))
        .unwrap_or_else(|| panic!("jq in {:?}", inventory.spec.packages));
    assert!(jq.starts_with("jq 1.6"), "{jq}");
}

/// The test machines (`tests/support/machines.rs`): sshd with a host key of its own in a
/// network namespace on the node's bridge, the package at bookworm's own version, and an apt
/// repository with the fix (or, for the second machine, without it). A Pod in the runner image
/// reaches both over SSH with the client key and the pinned host keys from a Secret, as a
/// remediation Job does.
#[tokio::test]
async fn a_pod_reaches_the_test_machines_over_ssh_with_pinned_host_keys() {
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let machines = support::machines::start(node, 2, 1).unwrap_or_else(|e| panic!("{e}"));
    let client_key = support::machines::client_key(node);
    let package = support::machines::PACKAGE;
    let old: Vec<String> = machines
        .iter()
        .map(|m| {
            m.installed_version(client_key, package)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    assert!(old[0].starts_with("2.5.0-1+deb12u"), "{old:?}");
    assert_eq!(old[0], old[1], "both machines start at bookworm's version");

    let client = env.client().await;
    let ns = env.namespace("node-ssh").await;
    let known_hosts: String = machines
        .iter()
        .map(|m| format!("{}\n", m.known_hosts_line))
        .collect();
    let private_key =
        std::fs::read_to_string(&client_key.private_key).expect("reading the client key");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "ssh"},
                "stringData": {"id_ed25519": private_key, "known_hosts": known_hosts},
            }))
            .expect("a Secret"),
        )
        .await
        .expect("creating the Secret");
    let mut probe = job(
        "probe",
        &node.runner_image,
        "default",
        &format!(
            "for m in {} {}; do \
               echo \"== $m\"; \
               ssh -i /ssh/id_ed25519 -o UserKnownHostsFile=/ssh/known_hosts \
                   -o StrictHostKeyChecking=yes -o BatchMode=yes root@$m \
                   'dpkg-query -W {package}; apt-get -qq update; apt-cache policy {package} | grep Candidate'; \
             done",
            machines[0].address, machines[1].address
        ),
    );
    let pod = probe
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .expect("a Pod template");
    pod.volumes = Some(vec![
        serde_json::from_value(json!({
            "name": "ssh", "secret": {"secretName": "ssh", "defaultMode": 0o400},
        }))
        .expect("a volume"),
    ]);
    pod.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(json!({"name": "ssh", "mountPath": "/ssh", "readOnly": true}))
            .expect("a volume mount"),
    ]);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &probe)
        .await
        .expect("creating the Job");
    let pod = finished_pod(&client, &ns, "probe").await;
    let out = logs(&client, &ns, &pod).await;
    let fixed_repository = out
        .split("== ")
        .find(|part| part.starts_with(&machines[0].address.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    let empty_repository = out
        .split("== ")
        .find(|part| part.starts_with(&machines[1].address.to_string()))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        fixed_repository.contains(&format!("{package}:amd64\t{}", old[0])),
        "{fixed_repository}"
    );
    let candidate = fixed_repository
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .unwrap_or_else(|| panic!("{fixed_repository}"));
    let newer = std::process::Command::new("dpkg")
        .args(["--compare-versions", candidate, "gt", &old[0]])
        .status()
        .expect("running dpkg");
    assert!(
        newer.success(),
        "the fixed repository offers {candidate} over {}",
        old[0]
    );
    assert!(
        empty_repository.contains(&format!("Candidate: {}", old[1])),
        "the empty repository offers nothing newer: {empty_repository}"
    );
}
