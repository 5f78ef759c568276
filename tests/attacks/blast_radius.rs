//! Finding 10, blast radius: what a stolen controller token, a Workload
//! author outside the managed namespaces, a flooding reporter and a policy
//! with a long name can make Patchloop do.
//!
//! The controller's identity here is the chart's `watchNamespaces` RBAC:
//! the rules of its namespaced Role (`patchloop.namespacedRules`, rendered
//! as the `patchloop-controller` ClusterRole in deploy/patchloop.yaml) bound
//! by a RoleBinding in each watched namespace only, and the cluster-scoped
//! `patchloop-cluster` ClusterRole (AdvisoryFeeds, CRDs by name) bound
//! cluster-wide — exactly the bindings the chart renders with
//! `watchNamespaces` (tests/deploy.rs checks the render itself).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, ResourceQuota};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use patchloop::api::Workload;
use patchloop::api::inventory::{InventorySubject, SubjectKind};
use serde_json::{Value, json};

use crate::identity;
use crate::support;
use crate::support::executor;
use crate::support::objects::{
    OLD_GLIBC, WAIT, apply, fixture_feeds, remediating_policy, workload, workload_status,
};
use crate::support::patchloop::Patchloop;

const MANAGER: &str = "blast-radius-test";

/// The canonical Inventory of Workload `name` with `packages`.
fn workload_inventory(name: &str, packages: &[&str]) -> Value {
    let subject = InventorySubject {
        kind: SubjectKind::Workload,
        name: name.to_owned(),
        revision: None,
    };
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": subject.canonical_inventory_name()},
        "spec": {
            "subject": {"kind": "Workload", "name": name},
            "reporter": "test", "reportedAt": "2026-11-24T08:00:00Z", "format": "dpkg",
            "packages": packages,
        }
    })
}

/// Applies a cluster-scoped RBAC object (ClusterRole, ClusterRoleBinding).
async fn apply_cluster_rbac(admin: &kube::Client, kind: &str, doc: Value) {
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind),
        &format!("{}s", kind.to_lowercase()),
    );
    let api: Api<kube::api::DynamicObject> = Api::all_with(admin.clone(), &resource);
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let obj: kube::api::DynamicObject = serde_json::from_value(doc).expect("an RBAC object");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

/// The controller's ServiceAccount `sa` (in `home`) with the chart's
/// `watchNamespaces` RBAC for `watched`: its kubeconfig and a client.
async fn scoped_controller(
    home: &str,
    sa: &str,
    watched: &[&str],
) -> (std::path::PathBuf, kube::Client) {
    let env = support::env();
    let admin = env.client().await;
    let namespaced = identity::shipped_rules("patchloop-controller");
    // The Role and RoleBinding the chart renders in each watched namespace,
    // binding the ServiceAccount of the release namespace.
    for ns in watched {
        let role_name = format!("{sa}-controller");
        let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(admin.clone(), ns);
        roles
            .patch(
                &role_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": role_name, "namespace": ns},
                    "rules": namespaced,
                })),
            )
            .await
            .expect("the controller's Role");
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(admin.clone(), ns);
        bindings
            .patch(
                &role_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": role_name, "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": home}],
                })),
            )
            .await
            .expect("the controller's RoleBinding");
    }
    let cluster = format!("{home}-{sa}-cluster");
    apply_cluster_rbac(
        &admin,
        "ClusterRole",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": cluster},
               "rules": identity::shipped_rules("patchloop-cluster")}),
    )
    .await;
    apply_cluster_rbac(
        &admin,
        "ClusterRoleBinding",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": cluster},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster},
               "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": home}]}),
    )
    .await;
    // The ServiceAccount itself, with no rights in its own namespace (the
    // chart's Role there covers feed ConfigMaps and the Lease only).
    let client = identity::with_rules(
        home,
        sa,
        vec![identity::rule("", &["configmaps"], &["get"])],
    )
    .await;
    let kubeconfig = env.kubeconfig_for_service_account(home, sa).await;
    (kubeconfig, client)
}

fn a_job(name: &str) -> Job {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "busybox", "command": ["/bin/true"]}]}}},
    }))
    .expect("a Job")
}

/// A refusal naming what was refused, where.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>, ns: Option<&str>) {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            if let Some(ns) = ns {
                assert!(s.message.contains(ns), "{what}: {}", s.message);
            }
        }
        other => panic!("{what} was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn the_controllers_token_reaches_only_the_watched_namespaces() {
    let env = support::env();
    let home = env.namespace("blast-home").await;
    let watched = env.namespace("blast-watched").await;
    let unwatched = env.namespace("blast-unwatched").await;
    let (_, controller) = scoped_controller(&home, "patchloop", &[&watched]).await;
    identity::assert_cannot_read_secrets(&controller, &watched).await;
    identity::assert_cannot_read_secrets(&controller, "kube-system").await;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };

    // The control: in the watched namespace it can do its job.
    let jobs: Api<Job> = Api::namespaced(controller.clone(), &watched);
    jobs.create(&dry_run, &a_job("allowed"))
        .await
        .expect("a Job in the watched namespace");
    let pods: Api<Pod> = Api::namespaced(controller.clone(), &watched);
    pods.list(&ListParams::default())
        .await
        .expect("Pods of the watched namespace");

    for ns in ["kube-system", unwatched.as_str(), home.as_str(), "default"] {
        let jobs: Api<Job> = Api::namespaced(controller.clone(), ns);
        refused(
            &format!("a Job in {ns}"),
            jobs.create(&dry_run, &a_job("escape")).await,
            Some(ns),
        );
        refused(
            &format!("deleting Jobs in {ns}"),
            jobs.delete_collection(&Default::default(), &ListParams::default())
                .await,
            Some(ns),
        );
        let pods: Api<Pod> = Api::namespaced(controller.clone(), ns);
        refused(
            &format!("listing Pods in {ns}"),
            pods.list(&ListParams::default()).await,
            Some(ns),
        );
        let config_maps: Api<ConfigMap> = Api::namespaced(controller.clone(), ns);
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "escape"}})).expect("a ConfigMap");
        refused(
            &format!("a ConfigMap in {ns}"),
            config_maps.create(&dry_run, &cm).await,
            Some(ns),
        );
        let workloads: Api<Workload> = Api::namespaced(controller.clone(), ns);
        refused(
            &format!("Workload status in {ns}"),
            workloads
                .patch_status(
                    "any",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {}})),
                )
                .await,
            Some(ns),
        );
    }
    // Nothing cluster-wide.
    refused(
        "listing Pods cluster-wide",
        Api::<Pod>::all(controller.clone())
            .list(&ListParams::default())
            .await,
        None,
    );
    refused(
        "listing Jobs cluster-wide",
        Api::<Job>::all(controller.clone())
            .list(&ListParams::default())
            .await,
        None,
    );
}

#[tokio::test]
async fn a_workload_author_outside_the_watched_namespaces_gets_no_job() {
    let env = support::env();
    let admin = env.client().await;
    let home = env.namespace("blast-ctl").await;
    let watched = env.namespace("blast-managed").await;
    let outside = env.namespace("blast-outside").await;
    let label = support::random_suffix();
    fixture_feeds(&admin, &label).await;
    let (kubeconfig, _) = scoped_controller(&home, "patchloop", &[&watched]).await;

    // The author holds Workloads, Inventories and PatchPolicies in their
    // own namespace, which the controller does not manage.
    let author = identity::with_rules(
        &outside,
        "author",
        vec![identity::rule(
            "patchloop.dev",
            &["workloads", "inventories", "patchpolicies"],
            &["get", "list", "create", "patch"],
        )],
    )
    .await;
    identity::assert_cannot_read_secrets(&author, &outside).await;
    let marker = format!("outside-{label}.example");
    // Variants: a remediating policy with a canary, one without, and a
    // policy that asks for immediate, unlimited remediation.
    for (i, extra) in [
        json!({"maxConcurrent": 1}),
        json!({"maxConcurrent": 10, "canary": 1}),
        json!({"maxConcurrent": 100, "maxFailures": 100, "attempts": 5}),
    ]
    .into_iter()
    .enumerate()
    {
        let tier = format!("t{i}");
        apply(
            &author,
            &outside,
            remediating_policy(&format!("p{i}"), &tier, extra),
        )
        .await;
        let name = format!("web-{i}");
        let mut w = workload(&name, json!({"tier": tier}));
        w["spec"]["target"]["address"] = json!(marker);
        apply(&author, &outside, w).await;
        apply(&author, &outside, workload_inventory(&name, OLD_GLIBC)).await;
    }
    // The author cannot create a Job there either.
    let own_jobs: Api<Job> = Api::namespaced(author.clone(), &outside);
    refused(
        "the author's own Job",
        own_jobs
            .create(&PostParams::default(), &a_job("direct"))
            .await,
        Some(&outside),
    );

    // The control: the controller runs with the scoped identity and
    // remediates in the namespace it manages.
    let pl = Patchloop::spawn_as(&kubeconfig, &watched, &label, &[], &[]);
    pl.ready().await;
    apply(
        &admin,
        &watched,
        remediating_policy("gold", "gold", json!({})),
    )
    .await;
    apply(
        &admin,
        &watched,
        workload("web-01", json!({"tier": "gold"})),
    )
    .await;
    apply(&admin, &watched, workload_inventory("web-01", OLD_GLIBC)).await;
    support::eventually("a Job in the managed namespace", WAIT, async || {
        (!executor::jobs(&admin, &watched).await.is_empty()).then_some(())
    })
    .await;

    // Nothing happened outside: no Job, no ConfigMap of Patchloop's, no
    // verdict, no Event — and the marker is nowhere.
    assert!(executor::jobs(&admin, &outside).await.is_empty());
    let all_jobs = Api::<Job>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("Jobs");
    for job in &all_jobs.items {
        let text = serde_json::to_string(job).unwrap_or_default();
        assert!(
            !text.contains(&marker),
            "Job {} carries the outside Workload's target",
            job.name_any()
        );
    }
    let config_maps = Api::<ConfigMap>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .expect("ConfigMaps");
    assert!(
        config_maps.items.iter().all(|c| !serde_json::to_string(c)
            .unwrap_or_default()
            .contains(&marker)),
        "a ConfigMap carries the outside Workload's target"
    );
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &outside);
    for i in 0..3 {
        assert!(
            workload_status(&workloads, &format!("web-{i}"))
                .await
                .is_none(),
            "an unmanaged Workload was judged"
        );
    }
    let events: Api<Event> = Api::namespaced(admin.clone(), &outside);
    let from_patchloop: Vec<_> = events
        .list(&ListParams::default())
        .await
        .expect("Events")
        .items
        .into_iter()
        .filter(|e| e.reporting_component.as_deref() == Some("patchloop"))
        .collect();
    assert!(from_patchloop.is_empty(), "{from_patchloop:?}");
    assert_eq!(
        pl.metric("patchloop_reconcile_errors_total{controller=\"workload\"}")
            .await,
        0.0,
        "the scoped identity lacked a right the controller needs"
    );
}

/// Waits until the quota controller has computed `quota`'s usage: until
/// then the apiserver's admission cannot count against it.
async fn quota_counted(admin: &kube::Client, ns: &str, quota: &str, resource: &str) {
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), ns);
    support::eventually("the quota's usage", WAIT, async || {
        let q = quotas.get(quota).await.ok()?;
        q.status?.used?.contains_key(resource).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_object_count_quota_stops_a_flooding_reporter() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("blast-quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), &ns);
    // The README's quota, smaller.
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "patchloop-objects"},
        "spec": {"hard": {
            "count/inventories.patchloop.dev": "3",
            "count/workloads.patchloop.dev": "2",
        }},
    }))
    .expect("a ResourceQuota");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("the quota");
    for resource in [
        "count/inventories.patchloop.dev",
        "count/workloads.patchloop.dev",
    ] {
        quota_counted(&admin, &ns, "patchloop-objects", resource).await;
    }

    // The node agent's shipped Role: Inventories and Workloads, created by
    // server-side apply as the agent does.
    let agent = identity::shipped_role(&ns, "node-agent", "patchloop-node-agent").await;
    identity::assert_cannot_read_secrets(&agent, &ns).await;
    let inventories = support::objects::api_of(&agent, &ns, "Inventory");
    let flood = |i: usize| workload_inventory(&format!("node-{i}"), OLD_GLIBC);
    let apply_as = async |api: &Api<kube::api::DynamicObject>, doc: Value| {
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let obj: kube::api::DynamicObject = serde_json::from_value(doc).expect("an object");
        api.patch(
            &name,
            &PatchParams::apply("node-agent"),
            &Patch::Apply(&obj),
        )
        .await
    };
    for i in 0..3 {
        apply_as(&inventories, flood(i))
            .await
            .unwrap_or_else(|e| panic!("Inventory {i} within the quota: {e}"));
    }
    // Variants past the quota: apply, create, another name.
    for (i, how) in [(3, "apply"), (4, "create"), (99, "apply")] {
        let result = match how {
            "apply" => apply_as(&inventories, flood(i)).await,
            _ => {
                let obj: kube::api::DynamicObject =
                    serde_json::from_value(flood(i)).expect("an object");
                inventories.create(&PostParams::default(), &obj).await
            }
        };
        match result {
            Err(kube::Error::Api(s)) if s.code == 403 => assert!(
                s.message.contains("exceeded quota")
                    && s.message.contains("count/inventories.patchloop.dev"),
                "{}",
                s.message
            ),
            other => panic!("Inventory {i} ({how}) past the quota: {other:?}"),
        }
    }
    // An existing Inventory can still be updated: the quota bounds the
    // count, not the reports.
    let mut again = flood(0);
    again["spec"]["reportedAt"] = json!("2026-11-25T08:00:00Z");
    apply_as(&inventories, again)
        .await
        .expect("updating an Inventory at the quota");

    // Workloads: the agent creates its node's (its Role has no patch).
    let workloads = support::objects::api_of(&agent, &ns, "Workload");
    let create = async |name: &str| {
        let obj: kube::api::DynamicObject =
            serde_json::from_value(workload(name, json!({}))).expect("a Workload");
        workloads.create(&PostParams::default(), &obj).await
    };
    for i in 0..2 {
        create(&format!("node-{i}"))
            .await
            .unwrap_or_else(|e| panic!("Workload {i} within the quota: {e}"));
    }
    match create("node-2").await {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert!(s.message.contains("exceeded quota"), "{}", s.message);
        }
        other => panic!("a third Workload past the quota: {other:?}"),
    }
}

#[tokio::test]
async fn a_policy_with_a_100_character_name_is_woken_by_its_jobs() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("blast-long").await;
    let label = support::random_suffix();
    fixture_feeds(&admin, &label).await;
    let name = format!("long-{}", "p".repeat(95));
    assert_eq!(name.len(), 100);
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    apply(
        &admin,
        &ns,
        remediating_policy(&name, "gold", json!({"maxConcurrent": 1})),
    )
    .await;
    for w in ["web-01", "web-02"] {
        apply(&admin, &ns, workload(w, json!({"tier": "gold"}))).await;
        apply(&admin, &ns, workload_inventory(w, OLD_GLIBC)).await;
    }
    // One at a time: the second Job starts only once the policy has seen the
    // first one finish.
    let first = support::eventually("the first Job", WAIT, async || {
        let jobs = executor::jobs(&admin, &ns).await;
        (jobs.len() == 1).then(|| jobs.into_iter().next()).flatten()
    })
    .await;
    let policy_label = executor::label(&first, "patchloop.dev/policy").to_owned();
    assert!(
        policy_label.len() <= 63 && policy_label != name,
        "{policy_label}"
    );
    executor::complete(&admin, &ns, &first.name_any(), None).await;
    let second = support::eventually(
        "the second Job after the first completed",
        Duration::from_secs(60),
        async || {
            executor::jobs(&admin, &ns)
                .await
                .into_iter()
                .find(|j| j.name_any() != first.name_any())
        },
    )
    .await;
    assert_eq!(
        executor::label(&second, "patchloop.dev/policy"),
        policy_label
    );

    // The wake itself, alone: a change of the Job that changes nothing of
    // its Workload's status (so the Workload wakes no policy) must still
    // wake the policy that created it, found from the cut label.
    let reconciles = async || {
        pl.metric("patchloop_reconciles_total{controller=\"policy\"}")
            .await
    };
    // Settled: two reads 2 s apart agree (its rollout's own wakes are over).
    let mut last = reconciles().await;
    support::eventually("the policy to settle", WAIT, async || {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = reconciles().await;
        let settled = now == last;
        last = now;
        settled.then_some(())
    })
    .await;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    jobs.patch(
        &second.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": "1"}}})),
    )
    .await
    .expect("touching the Job");
    support::eventually(
        "the policy woken by its Job",
        Duration::from_secs(20),
        async || (reconciles().await > last).then_some(()),
    )
    .await;
    assert_eq!(
        pl.metric("patchloop_reconcile_errors_total{controller=\"policy\"}")
            .await,
        0.0
    );
}
