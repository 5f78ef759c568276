//! The controller's own lifecycle on a real Kubernetes 1.20.2 control plane:
//! it refuses to start against CRDs older than it needs, and replicas elect
//! one leader with a Lease (standbys ready but idle, SIGTERM hands over at
//! once, SIGKILL after the lease expires).

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use patchloop::api::{SCHEMA_VERSION, SCHEMA_VERSION_ANNOTATION, Workload};
use serde_json::json;
use support::objects::*;
use support::patchloop::Patchloop;

/// Installs the CRDs with their schema-version annotation set to `version`.
async fn install_crds(client: &kube::Client, version: &str) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in patchloop::api::crds() {
        crd.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SCHEMA_VERSION_ANNOTATION.into(), version.into());
        crd.metadata.managed_fields = None;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("test-installer").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
    }
}

#[tokio::test]
async fn the_controller_refuses_to_start_against_older_crds() {
    let env = support::env_without_crds();
    let client = env.client().await;
    let old = (SCHEMA_VERSION - 1).to_string();
    install_crds(&client, &old).await;

    let log = env
        .dir()
        .join(format!("crd-check-{}.log", support::random_suffix()));
    let file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchloop"));
    cmd.arg("run")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stderr(Stdio::from(file));
    let mut child = support::spawn_managed("patchloop", cmd);
    let status = tokio::task::spawn_blocking(move || child.wait_timeout(Duration::from_secs(60)))
        .await
        .expect("join")
        .expect("wait")
        .expect("the controller to exit by itself");
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{output}");
    let wanted = format!("has schema version {old}, this binary needs {SCHEMA_VERSION}");
    assert!(output.contains(&wanted), "{output}");
    assert!(output.contains("kubectl apply --server-side"), "{output}");

    // With this release's CRDs it starts.
    install_crds(&client, &SCHEMA_VERSION.to_string()).await;
    let ns = env.namespace("crd-check").await;
    let pl = Patchloop::start(env, &ns, "none", &[]).await;
    assert_eq!(pl.metric("patchloop_leader").await, 1.0);
}

async fn holder(client: &kube::Client, ns: &str, lease: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("leader").await;
    let label = support::random_suffix();
    let lease = format!("patchloop-{label}");
    fixture_feeds(&client, &label).await;
    apply(&client, &ns, policy("gold", json!({"tier": "gold"}), 100)).await;
    let args = |id: &'static str| {
        [
            "--leader-election",
            "--lease-namespace",
            ns.as_str(),
            "--lease-name",
            lease.as_str(),
            "--identity",
            id,
        ]
        .map(str::to_owned)
    };
    let start = async |id: &'static str| {
        let a = args(id);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        Patchloop::start(env, &ns, &label, &refs).await
    };
    // Both report ready: a standby must never block a node drain.
    let mut first = start("replica-a").await;
    let leader = support::eventually("replica-a to lead", WAIT, async || {
        holder(&client, &ns, &lease)
            .await
            .filter(|h| h == "replica-a")
    })
    .await;
    assert_eq!(leader, "replica-a");
    let second = start("replica-b").await;
    support::eventually("the leader metric on the leader", WAIT, async || {
        (first.metric("patchloop_leader").await == 1.0).then_some(())
    })
    .await;
    assert_eq!(second.metric("patchloop_leader").await, 0.0);

    // Only the leader reconciles.
    apply(&client, &ns, workload("web-01", json!({"tier": "gold"}))).await;
    apply(&client, &ns, inventory("web-01", "web-01", OLD_GLIBC)).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    support::eventually("web-01 judged by the leader", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| in_state(s, "Overdue"))
    })
    .await;
    assert_eq!(
        second
            .metric("patchloop_reconciles_total{controller=\"workload\"}")
            .await,
        0.0,
        "a standby reconciled"
    );
    // The standby has the advisory data loaded already.
    assert!(second.metric("patchloop_feed_advisories{").await > 0.0);

    // SIGTERM releases the lease before the process exits.
    let status = first
        .child
        .terminate(Duration::from_secs(30))
        .expect("SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_ne!(
        holder(&client, &ns, &lease).await.as_deref(),
        Some("replica-a")
    );
    support::eventually("replica-b to lead", WAIT, async || {
        holder(&client, &ns, &lease)
            .await
            .filter(|h| h == "replica-b")
    })
    .await;
    support::eventually("the leader metric on replica-b", WAIT, async || {
        (second.metric("patchloop_leader").await == 1.0).then_some(())
    })
    .await;
    // The new leader does the work.
    apply(&client, &ns, inventory("web-01", "web-01", FIXED_GLIBC)).await;
    support::eventually("web-01 judged by the new leader", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| in_state(s, "Compliant"))
    })
    .await;

    // A SIGKILLed leader cannot release: a standby waits for the lease to expire.
    let mut third = start("replica-c").await;
    let mut second = second;
    second.child.kill().expect("SIGKILL");
    support::eventually(
        "replica-c to lead after the lease expires",
        WAIT,
        async || {
            holder(&client, &ns, &lease)
                .await
                .filter(|h| h == "replica-c")
        },
    )
    .await;

    // A leader that finds the lease taken exits at once, to restart as a
    // standby, rather than risk two writers.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("rounding");
    leases
        .patch(
            &lease,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "holderIdentity": "intruder",
                "leaseDurationSeconds": 3600,
                "acquireTime": format!("{}", now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")),
                "renewTime": format!("{}", now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")),
            }})),
        )
        .await
        .expect("taking the lease");
    let status =
        tokio::task::spawn_blocking(move || third.child.wait_timeout(Duration::from_secs(60)))
            .await
            .expect("join")
            .expect("wait")
            .expect("the leader to exit when it loses the lease");
    assert_eq!(status.code(), Some(3));
}
