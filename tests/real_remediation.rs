//! Remediation for real: real Pods on the real node (`tests/support/node.rs`) run the reference
//! script `examples/jobs/apt-remediate.sh`, unmodified, in the runner image; it reaches real
//! test machines (`tests/support/machines.rs`) over SSH with the key and the pinned host keys
//! from a Secret, real apt upgrades the package from the machines' repository, and the script
//! reports the machine's inventory from inside the Pod. Nothing here is simulated.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use patchloop::api::Workload;
use patchloop::api::workload::{RemediationPhase, RemediationRecord};
use support::fleet::{
    all_in_state, apt_over_ssh_policy, assert_upgraded, installed_versions, machines_feed,
    own_pins, prepare,
};
use support::machines::Machine;
use support::machines::{self, PACKAGE};
use support::objects::{apply, condition, in_state, workload_status};
use support::patchloop::Patchloop;

/// Real Jobs: a Pod start, an SSH session, `apt-get update` and an install per machine.
const REMEDIATION_TIMEOUT: Duration = Duration::from_secs(180);

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
    let names = ["web-0", "web-1", "web-2"];
    let members: Vec<(&str, &Machine)> = names.into_iter().zip(&fleet).collect();
    let before = installed_versions(&fleet, client_key);
    machines_feed(&client, node, &label).await;
    prepare(env, &client, &ns, client_key, &members, &own_pins(&members)).await;
    let _controller = Patchloop::start(env, &ns, &label, &[]).await;
    // Report-only first: the real advisory makes every machine Overdue.
    all_in_state(&client, &ns, &names, "Overdue", support::objects::WAIT).await;

    let done = Arc::new(AtomicBool::new(false));
    let (most_active, pod_nodes) = watch_active_pods(client.clone(), ns.clone(), done.clone());
    apply(&client, &ns, apt_over_ssh_policy(&node.runner_image, 2)).await;
    all_in_state(&client, &ns, &names, "Compliant", REMEDIATION_TIMEOUT).await;
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
    assert_upgraded(&fleet, client_key, &before);
    // The Pods' own logs: real apt, and the script's report.
    // A Workload turns Compliant from the Inventory its Pod reports, before the Pod exits.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let list = support::eventually("every Pod Succeeded", REMEDIATION_TIMEOUT, async || {
        let list = pods.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .then_some(list)
    })
    .await;
    assert_eq!(list.items.len(), fleet.len(), "one Pod per machine");
    for pod in &list.items {
        let name = pod.metadata.name.clone().expect("a Pod name");
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
    let members = [
        ("a-lacks-fix", lacks_fix),
        ("b-impostor", impostor),
        ("c-fixable", fixable),
    ];
    let before = installed_versions(std::slice::from_ref(lacks_fix), client_key);
    machines_feed(&client, node, &label).await;
    // b-impostor's pin is another machine's key: its own machine presents a different one.
    let pins = [
        ("a-lacks-fix", lacks_fix.host_key.as_str()),
        ("b-impostor", fixable.host_key.as_str()),
        ("c-fixable", fixable.host_key.as_str()),
    ];
    prepare(env, &client, &ns, client_key, &members, &pins).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let controller = Patchloop::start(env, &ns, &label, &[]).await;
    let names: Vec<&str> = members.iter().map(|(name, _)| *name).collect();
    all_in_state(&client, &ns, &names, "Overdue", support::objects::WAIT).await;
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
        before[0],
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
