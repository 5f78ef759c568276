//! The controller as Pods from its own chart, installed with real Helm on a cluster with a real
//! node: the image is the runner image built here (the project's binary with the project
//! image's entrypoint, never pulled), two replicas elect a leader through the Lease, the probes
//! pass, the real remediation scenario (`tests/real_remediation.rs`) runs through the chart's
//! identity with nothing forbidden, and deleting the leader's Pod hands the Lease to the other
//! replica within the documented bound.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use patchloop::controller::leader;
use serde_json::json;
use support::fleet::{
    all_in_state, apply_core, apt_over_ssh_policy, assert_upgraded, installed_versions, own_pins,
    prepare,
};
use support::machines::{self, Machine};
use support::objects::apply;

const RELEASE: &str = "patchloop";
const RELEASE_NS: &str = "patchloop-system";
/// Two Pods start, sync their caches and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const REMEDIATION_TIMEOUT: Duration = Duration::from_secs(180);
/// The README's takeover bound (lease duration + retry period) plus the time a deleted Pod
/// takes to stop and a margin for this 2-core machine, as `tests/lifecycle.rs` allows.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(10);

fn takeover_bound() -> Duration {
    Duration::from_secs(leader::LEASE_DURATION + leader::RETRY_PERIOD) + TAKEOVER_MARGIN
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(RELEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn the_charts_pods_elect_a_leader_remediate_for_real_and_hand_over() {
    let env = support::env_with_node_without_crds();
    let node = env.node().expect("the test node");
    let client = env.client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": RELEASE_NS}})).expect("a ns"),
        )
        .await
        .expect("creating the release namespace");
    let label = format!("pods-{}", support::random_suffix());
    let (repository, tag) = node
        .runner_image
        .rsplit_once(':')
        .expect("the runner image has a tag");
    let values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "feedSelector": format!("patchloop-test={label}"),
    });
    support::helm::install(env, RELEASE, &support::helm::chart(), RELEASE_NS, &values)
        .await
        .unwrap_or_else(|e| panic!("helm install: {e}"));

    // Both replicas ready: the readiness probe (/readyz) passes on each.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
    support::eventually("both replicas ready", READY_TIMEOUT, async || {
        let status = deployments.get(RELEASE).await.ok()?.status?;
        (status.ready_replicas == Some(2)).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NS);
    let replicas: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=patchloop"))
        .await
        .expect("listing the controller's Pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    let leader = support::eventually("a leader", READY_TIMEOUT, async || {
        lease_holder(&leases).await
    })
    .await;
    assert!(
        replicas.contains(&leader),
        "the Lease names a replica: {leader} of {replicas:?}"
    );

    // The real remediation scenario through the chart's Pods and RBAC.
    let ns = env.namespace("chart-fleet").await;
    let fleet = machines::start(node, 2, 0).unwrap_or_else(|e| panic!("{e}"));
    let client_key = machines::client_key(node);
    let before = installed_versions(&fleet, client_key);
    let advisory = std::fs::read_to_string(node.images.join("advisory-fixed.json"))
        .expect("the machines' advisory");
    apply_core(
        &client,
        RELEASE_NS,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "machines-advisory"},
               "data": {"advisories.json": advisory}}),
    )
    .await;
    apply(
        &client,
        "",
        json!({"apiVersion": "patchloop.dev/v1alpha1", "kind": "AdvisoryFeed",
               "metadata": {"name": format!("machines-{label}"), "labels": {"patchloop-test": label}},
               "spec": {"format": "OSV", "interval": "1h",
                        "source": {"configMap": {"namespace": RELEASE_NS, "name": "machines-advisory",
                                                 "key": "advisories.json"}}}}),
    )
    .await;
    let names = ["app-0", "app-1"];
    let members: Vec<(&str, &Machine)> = names.into_iter().zip(&fleet).collect();
    prepare(env, &client, &ns, client_key, &members, &own_pins(&members)).await;
    apply(&client, &ns, apt_over_ssh_policy(&node.runner_image, 2)).await;
    all_in_state(&client, &ns, &names, "Compliant", REMEDIATION_TIMEOUT).await;
    assert_upgraded(&fleet, client_key, &before);
    for replica in &replicas {
        let log = pods
            .logs(replica, &LogParams::default())
            .await
            .unwrap_or_else(|e| panic!("logs of {replica}: {e}"));
        let forbidden: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
            .collect();
        assert!(
            forbidden.is_empty(),
            "{replica} was refused something with the chart's RBAC: {forbidden:#?}"
        );
    }

    // The leader's Pod goes: the other replica takes the Lease within the bound.
    let deleted_at = Instant::now();
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("deleting the leader's Pod");
    let new_leader = support::eventually("a new leader", takeover_bound(), async || {
        lease_holder(&leases).await.filter(|h| *h != leader)
    })
    .await;
    let took = deleted_at.elapsed();
    // The standby, or the Pod the ReplicaSet started instead of the deleted one: a standby
    // reads the Lease again only when the lease it last read expires, and a new Pod reads it
    // at its start, so either may win a lease the old leader released on SIGTERM.
    let current: BTreeSet<String> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=patchloop"))
        .await
        .expect("listing the controller's Pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        current.contains(&new_leader),
        "the new leader {new_leader} is a live replica: {current:?}"
    );
    eprintln!("takeover by {new_leader} after deleting the leader's Pod: {took:?}");
}
