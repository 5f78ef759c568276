//! The real test node leaves nothing behind: after a Pod ran on it, its teardown (what runs at
//! exit, and what the next start runs for a test binary that was killed) stops the containers
//! and shims, unmounts everything under its directory, removes its cgroups, bridge, CNI
//! results and Pod log links, the test machines (their sshd, namespaces and mounts), and restores
//! the host sysctls the kubelet and the CNI bridge plugin rewrote (`ip_forward` among them). A binary of
//! its own: no other node may change those sysctls meanwhile.

mod support;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn tearing_down_the_node_leaves_nothing_behind() {
    let env = support::env_with_node();
    let node = env.node().expect("the test node");
    let client = env.client().await;
    let ns = env.namespace("teardown").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": support::node::DEBIAN_IMAGE,
                "imagePullPolicy": "Never", "command": ["/bin/sleep", "3600"],
            }],
        },
    }))
    .expect("a valid Pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("creating the Pod");
    support::eventually("the Pod running", Duration::from_secs(120), async || {
        let status = pods.get("sleeper").await.ok()?.status?;
        (status.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let machines = support::machines::start(node, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    let before = node.teardown().leftovers();
    assert!(
        before.iter().any(|l| l.starts_with("mount "))
            && before.iter().any(|l| l.starts_with("cgroup "))
            && before.iter().any(|l| l.contains(machines[0].netns()))
            && before.iter().any(|l| l.contains("chrooted under")),
        "a running node shows up in the leftovers check (it can fail): {before:#?}"
    );

    node.teardown().run();

    let left = node.teardown().leftovers();
    assert!(left.is_empty(), "left behind: {left:#?}");
}
