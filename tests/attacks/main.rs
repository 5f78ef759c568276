//! The trust boundary, attacked on a real Kubernetes 1.20.2 control plane.
//!
//! Patchloop holds root on every machine (through its remediation Jobs) and
//! on every golden image (through its build Jobs). Each test here acts as
//! the least-privileged identity that could try an attack in real life —
//! a ServiceAccount token bound to the chart's or the node agent's Role, or
//! a Role granting only Workloads, Inventories or ConfigMaps in one
//! namespace ([`identity`]) — and asserts that the attack is refused or has
//! no effect, that the status says why, and that no Secret value, no other
//! subject's data and no package-manager action word reaches a Job, a
//! ConfigMap, a status or an Event. One module per finding of the
//! trust-boundary review (README, "Threat model").
//!
//! Why simulated (`support::executor`): an attack's outcome is a Job or Pod status an attacker
//! forged or a termination message a compromised build wrote; the tests set them exactly. The
//! real SSH boundary (a machine presenting an unpinned host key) is attacked with real Pods in
//! `tests/real_remediation.rs`.

#[path = "../support/mod.rs"]
mod support;

mod identity;

use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::PostParams;

/// The attackers are who they claim: a shipped Role's ServiceAccount holds
/// its token and nothing more, so no attack below passes because the
/// attacker was accidentally powerful.
#[tokio::test]
async fn attackers_hold_only_what_their_role_grants() {
    let env = support::env();
    let ns = env.namespace("attack-identity").await;
    for role in [
        "patchloop-node-agent",
        "patchloop-reporter",
        "patchloop-approver",
    ] {
        let client = identity::shipped_role(&ns, role, role).await;
        identity::assert_cannot_read_secrets(&client, &ns).await;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "attacker"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "x", "image": "busybox"}]}}},
        }))
        .expect("a Job");
        match jobs.create(&PostParams::default(), &job).await {
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            other => panic!("{role} can create Jobs: {other:?}"),
        }
    }
}
mod blast_radius;
mod change_requests;
mod decoys;
mod feeds;
mod job_contract;
mod job_names;
mod packages;
mod reporters;
