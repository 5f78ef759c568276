//! The controller's own lifecycle on a real Kubernetes 1.20.2 control plane:
//! it refuses to start against CRDs older than it needs, and replicas elect
//! one leader with a Lease (standbys ready but idle, SIGTERM hands over at
//! once, SIGKILL after the lease expires), a leader rides out failed lease
//! renewals until its renew deadline, and a failing reconcile backs off.
//!
//! Why simulated (`support::executor`): Jobs must finish at exact moments relative to a SIGKILL
//! and a lease expiry (no Job or ChangeRequest twice); the chart's replicas hand over as real
//! Pods in `tests/chart_pods.rs`.

mod support;

#[path = "attacks/identity.rs"]
mod identity;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use patchloop::api::{SCHEMA_VERSION, SCHEMA_VERSION_ANNOTATION, Workload};
use patchloop::controller::leader;
use serde_json::json;
use support::executor;
use support::objects::*;
use support::patchloop::{Counters, Patchloop};

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

/// The takeover bound the README documents: the lease duration, the
/// standby's retry period and cache sync (nothing: a standby's caches are
/// synced before it reports ready), plus a margin for this shared 2-core
/// machine, shared with other builds, benchmarks and control planes.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(10);

fn takeover_bound() -> Duration {
    Duration::from_secs(leader::LEASE_DURATION + leader::RETRY_PERIOD) + TAKEOVER_MARGIN
}

/// Everything a duplicate would show in: the names of Patchloop's Jobs and
/// the number of ChangeRequests of the Template.
async fn written(client: &kube::Client, ns: &str) -> (BTreeSet<String>, usize) {
    let jobs = executor::jobs(client, ns)
        .await
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    (jobs, requests(client, ns, "base").await.len())
}

/// A standby writes nothing: no status, no Job. The leader's own counters
/// prove the metric names (a misspelt one would read 0 on both).
async fn idle_while_the_other_leads(standby: &Patchloop, leader: &Patchloop) {
    for metric in [
        "patchloop_status_writes_total",
        "patchloop_jobs_created_total",
    ] {
        assert!(
            leader.metric_sum(metric).await > 0.0,
            "{metric} on the leader"
        );
        assert_eq!(
            standby.metric_sum(metric).await,
            0.0,
            "{metric} on a standby"
        );
    }
    assert_eq!(
        standby
            .metric("patchloop_reconciles_total{controller=\"workload\"}")
            .await,
        0.0,
        "a standby reconciled"
    );
    assert_eq!(standby.metric("patchloop_leader").await, 0.0);
}

/// Waits until `next` has reconciled as the leader, and returns how long
/// that took since `since` (when the old leader was stopped).
async fn takeover(next: &Patchloop, since: Instant, how: &str) -> Duration {
    support::eventually(&format!("a new leader after {how}"), WAIT, async || {
        (next.metric("patchloop_leader").await == 1.0
            && next
                .metric("patchloop_reconciles_total{controller=\"workload\"}")
                .await
                > 0.0)
            .then_some(())
    })
    .await;
    let took = since.elapsed();
    assert!(
        took <= takeover_bound(),
        "takeover after {how} took {took:?}, bound {:?}",
        takeover_bound()
    );
    took
}

/// Waits until the new leader has looked at everything (each of the
/// `workloads`, the policy, the Template and its request: the leader's
/// counters start from zero), then checks nothing was written twice. A
/// reconcile is counted once it has ended, so a duplicate it created shows.
async fn nothing_duplicated(
    client: &kube::Client,
    ns: &str,
    leader: &Patchloop,
    workloads: u32,
    before: &(BTreeSet<String>, usize),
) {
    let fresh = Counters::default();
    leader.reconciled_after("workload", &fresh, workloads).await;
    leader.reconciled_after("template", &fresh, 1).await;
    leader.reconciled_after("change", &fresh, 1).await;
    let pass = leader.reconciled_after("policy", &fresh, 1).await;
    assert_eq!(pass.jobs_created, 0.0, "a Job was duplicated");
    assert_eq!(
        &written(client, ns).await,
        before,
        "a Job or request was duplicated"
    );
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("leader").await;
    let label = support::random_suffix();
    let lease = format!("patchloop-{label}");
    fixture_feeds(&client, &label).await;
    // Remediation Jobs for the Workloads, and a build Job for the Template
    // (approved by the policy): no executor runs, so they stay in flight
    // across both takeovers, when a new leader could create them again.
    let mut gold = remediating_policy("gold", "gold", json!({"maxConcurrent": 5}));
    gold["spec"]["templates"] = json!({"approval": "Automatic"});
    apply(&client, &ns, gold).await;
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

    // Only the leader reconciles and writes.
    for w in ["web-01", "web-02"] {
        apply(&client, &ns, workload(w, json!({"tier": "gold"}))).await;
        apply(&client, &ns, workload_inventory(w, OLD_GLIBC)).await;
    }
    apply(&client, &ns, template("base", json!({"tier": "gold"}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", OLD_GLIBC, "2026-11-24T08:00:00Z"),
    )
    .await;
    let before = support::eventually("two remediation Jobs and a build Job", WAIT, async || {
        let (jobs, crs) = written(&client, &ns).await;
        let builds = jobs.iter().filter(|j| j.ends_with("-build")).count();
        (jobs.len() == 3 && builds == 1 && crs == 1).then_some((jobs, crs))
    })
    .await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    support::eventually("web-01 judged by the leader", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| in_state(s, "Overdue"))
    })
    .await;
    idle_while_the_other_leads(&second, &first).await;
    // The standby has the advisory data loaded already.
    assert!(second.metric("patchloop_feed_advisories{").await > 0.0);

    // SIGTERM releases the lease before the process exits.
    let stopped = Instant::now();
    let status = first
        .child
        .terminate(Duration::from_secs(30))
        .expect("SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_ne!(
        holder(&client, &ns, &lease).await.as_deref(),
        Some("replica-a")
    );
    let took = takeover(&second, stopped, "SIGTERM").await;
    eprintln!("takeover after SIGTERM: {took:?}");
    assert_eq!(
        holder(&client, &ns, &lease).await.as_deref(),
        Some("replica-b")
    );
    nothing_duplicated(&client, &ns, &second, 2, &before).await;
    // The new leader does the work: one Job for a new Workload, none again
    // for the others.
    apply(&client, &ns, workload("web-03", json!({"tier": "gold"}))).await;
    apply(&client, &ns, workload_inventory("web-03", OLD_GLIBC)).await;
    let after = support::eventually("web-03's Job from the new leader", WAIT, async || {
        let now = written(&client, &ns).await;
        (now.0.len() > before.0.len()).then_some(now)
    })
    .await;
    let added: Vec<&String> = after.0.difference(&before.0).collect();
    assert!(
        added.len() == 1 && added[0].starts_with("web-03-"),
        "{added:?}"
    );
    assert_eq!(after.1, before.1);

    // A SIGKILLed leader cannot release: a standby waits for the lease to expire.
    let mut third = start("replica-c").await;
    let mut second = second;
    idle_while_the_other_leads(&third, &second).await;
    let before = written(&client, &ns).await;
    let killed = Instant::now();
    second.child.kill().expect("SIGKILL");
    let took = takeover(&third, killed, "SIGKILL").await;
    eprintln!("takeover after SIGKILL: {took:?}");
    assert_eq!(
        holder(&client, &ns, &lease).await.as_deref(),
        Some("replica-c")
    );
    nothing_duplicated(&client, &ns, &third, 3, &before).await;

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

/// The shipped controller's identity, for runs that must be able to lose
/// part of it: ServiceAccount `sa` in `ns` bound cluster-wide to the rules
/// of the chart's `patchloop-controller` and `patchloop-cluster`
/// ClusterRoles (deploy/patchloop.yaml) minus `withheld` resources, and in
/// `ns` to the chart's leader-election rules for `lease`. Returns its
/// kubeconfig.
async fn controller_identity(
    ns: &str,
    sa: &str,
    lease: &str,
    withheld: &[&str],
) -> std::path::PathBuf {
    let env = support::env();
    let admin = env.client().await;
    let mut rules = identity::shipped_rules("patchloop-controller");
    rules.extend(identity::shipped_rules("patchloop-cluster"));
    for rule in &mut rules {
        if let Some(resources) = rule.resources.as_mut() {
            resources.retain(|r| !withheld.contains(&r.as_str()));
        }
    }
    rules.retain(|r| r.resources.as_ref().is_some_and(|rs| !rs.is_empty()));
    let name = format!("{ns}-{sa}");
    let subject = json!([{"kind": "ServiceAccount", "name": sa, "namespace": ns}]);
    let apply_cluster = async |kind: &str, doc: serde_json::Value| {
        let resource = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
            &format!("{}s", kind.to_lowercase()),
        );
        let api: Api<kube::api::DynamicObject> = Api::all_with(admin.clone(), &resource);
        let obj: kube::api::DynamicObject = serde_json::from_value(doc).expect("an RBAC object");
        api.patch(
            &name,
            &PatchParams::apply("lifecycle-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
    };
    apply_cluster(
        "ClusterRole",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": rules}),
    )
    .await;
    apply_cluster(
        "ClusterRoleBinding",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": subject}),
    )
    .await;
    // The chart's leader-election Role (templates/rbac.yaml), for this
    // test's Lease: create (not restrictable by name), and the rest by name.
    let mut by_name = identity::rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "update", "patch"],
    );
    by_name.resource_names = Some(vec![lease.to_owned()]);
    let lease_rules = vec![
        identity::rule("coordination.k8s.io", &["leases"], &["create"]),
        by_name,
    ];
    drop(identity::with_rules(ns, sa, lease_rules).await);
    env.kubeconfig_for_service_account(ns, sa).await
}

/// Revokes (deletes) or restores ServiceAccount `sa`'s RoleBinding in `ns`
/// (its leader-election rights, see [`controller_identity`]).
async fn lease_rights(client: &kube::Client, ns: &str, sa: &str, granted: bool) {
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    if granted {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": sa, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
        }))
        .expect("a RoleBinding");
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .expect("restoring the lease rights");
    } else {
        bindings
            .delete(sa, &DeleteParams::default())
            .await
            .expect("revoking the lease rights");
    }
}

async fn renewed_at(client: &kube::Client, ns: &str, lease: &str) -> Option<jiff::Timestamp> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .map(|t| t.0)
}

#[tokio::test]
async fn a_leader_rides_out_failed_renewals_and_steps_down_after_the_renew_deadline() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("renewals").await;
    let label = support::random_suffix();
    let lease = format!("patchloop-{label}");
    fixture_feeds(&client, &label).await;
    let args = |id: &str| {
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
    let kubeconfig = controller_identity(&ns, "leader", &lease, &[]).await;
    let a_args = args("replica-a");
    let refs: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let mut first = Patchloop::spawn_as(&kubeconfig, &ns, &label, &refs, &[]);
    first.ready().await;
    support::eventually("replica-a to lead", WAIT, async || {
        holder(&client, &ns, &lease)
            .await
            .filter(|h| h == "replica-a")
    })
    .await;
    // A standby with every right: it would take the lease the moment it
    // expired.
    let b_args = args("replica-b");
    let refs: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let second = Patchloop::start(env, &ns, &label, &refs).await;
    apply(&client, &ns, workload("web-01", json!({"tier": "gold"}))).await;

    // Renewals fail for a moment: the leader retries and keeps leading.
    let failures = "patchloop_lease_renewal_failures_total";
    lease_rights(&client, &ns, "leader", false).await;
    support::eventually("a failed renewal", WAIT, async || {
        (first.metric(failures).await >= 1.0).then_some(())
    })
    .await;
    let restored = jiff::Timestamp::now();
    lease_rights(&client, &ns, "leader", true).await;
    support::eventually("a renewal after the rights came back", WAIT, async || {
        assert_eq!(
            holder(&client, &ns, &lease).await.as_deref(),
            Some("replica-a"),
            "a second leader"
        );
        renewed_at(&client, &ns, &lease)
            .await
            .filter(|t| *t >= restored)
    })
    .await;
    assert!(
        first.child.try_wait().expect("waiting").is_none(),
        "the leader exited on a transient renewal failure"
    );
    assert_eq!(first.metric("patchloop_leader").await, 1.0);
    assert_eq!(second.metric("patchloop_leader").await, 0.0);
    // It still does the work.
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    apply(&client, &ns, workload("web-02", json!({"tier": "gold"}))).await;
    support::eventually("web-02 judged by the same leader", WAIT, async || {
        workload_status(&workloads, "web-02").await.map(drop)
    })
    .await;
    assert_eq!(
        holder(&client, &ns, &lease).await.as_deref(),
        Some("replica-a")
    );

    // Renewals fail past the renew deadline: the leader steps down (exit 3)
    // before its lease expires, so the standby never leads beside it.
    lease_rights(&client, &ns, "leader", false).await;
    support::eventually("the standby to take over", WAIT, async || {
        let taken = holder(&client, &ns, &lease).await.as_deref() == Some("replica-b");
        if taken {
            assert!(
                first.child.try_wait().expect("waiting").is_some(),
                "the standby took the lease while the old leader still ran"
            );
        }
        taken.then_some(())
    })
    .await;
    let status = first.child.try_wait().expect("waiting").expect("exited");
    assert_eq!(status.code(), Some(leader::LOST_LEASE_EXIT_CODE));
    support::eventually("the new leader's work", WAIT, async || {
        (second.metric("patchloop_leader").await == 1.0).then_some(())
    })
    .await;
}

/// Counts the Events of `reason` about Workload `name`.
async fn events_about(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_reconcile_that_keeps_failing_is_retried_with_exponential_backoff() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("backoff").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    // The controller may not write Workload status: every Workload
    // reconcile fails at its status step.
    let kubeconfig = controller_identity(&ns, "no-status", "unused", &["workloads/status"]).await;
    let pl = Patchloop::spawn_as(&kubeconfig, &ns, &label, &[], &[]);
    pl.ready().await;
    apply(&client, &ns, workload("web-01", json!({"tier": "gold"}))).await;
    let errors = async || {
        pl.metric("patchloop_reconcile_errors_total{controller=\"workload\"}")
            .await
    };
    support::eventually("a first failed reconcile", WAIT, async || {
        (errors().await >= 1.0).then_some(())
    })
    .await;
    let first = Instant::now();
    // Retries after 5, 10 and 20 s (less at most a tenth): the fourth
    // failure comes at least 31.5 s after the first, where a fixed 5 s
    // cadence would reach it after 15 s. Only a lower bound is asserted: a
    // slow machine makes the wait longer, never shorter.
    support::eventually(
        "a fourth failed reconcile",
        Duration::from_secs(120),
        async || (errors().await >= 4.0).then_some(()),
    )
    .await;
    let took = first.elapsed();
    assert!(
        took >= Duration::from_secs(28),
        "4 failures within {took:?}: not backing off"
    );
    assert!(errors().await < 6.0, "{} failures", errors().await);
    // The failure is an Event once (a transition), naming the step and the
    // call, without the apiserver's message.
    let notes = events_about(&client, &ns, "web-01", "ReconcileFailed").await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains(
            "step status: patch Workload/status failed: the apiserver answered 403 Forbidden"
        ),
        "{notes:?}"
    );
    assert!(!notes[0].contains("system:serviceaccount"), "{notes:?}");

    // The right comes back: the next retry succeeds and nothing was lost.
    let name = format!("{ns}-no-status");
    let roles: Api<k8s_openapi::api::rbac::v1::ClusterRole> = Api::all(client.clone());
    let mut role = roles.get(&name).await.expect("the test ClusterRole");
    role.metadata.managed_fields = None;
    role.rules.get_or_insert_with(Vec::new).push(identity::rule(
        "patchloop.dev",
        &["workloads/status"],
        &["patch"],
    ));
    roles
        .replace(&name, &PostParams::default(), &role)
        .await
        .expect("granting workloads/status");
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    support::eventually(
        "web-01's status after the retry",
        Duration::from_secs(120),
        async || workload_status(&workloads, "web-01").await,
    )
    .await;
}
