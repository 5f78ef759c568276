//! The test harness itself, against the real Kubernetes 1.20.2 control plane it starts: the
//! version, the controllers Patchloop's tests rely on (Jobs, ServiceAccount tokens, RBAC), the
//! CRDs, and process clean-up. What Kubernetes itself does (garbage collection, kubectl) is
//! not tested here; the Patchloop tests that rely on it show it in their own terms (e.g.
//! remediation's Jobs going with their Workload).

mod support;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_success(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn apiserver_is_1_20_2_and_namespaces_get_a_default_service_account() {
    let env = support::env();
    let client = env.client().await;
    let version = client
        .apiserver_version()
        .await
        .expect("GET /version of the test apiserver");
    assert_eq!(version.git_version, "v1.20.2", "{version:?}");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "20")
    );

    let ns = env.namespace("harness").await;
    assert!(ns.starts_with("harness-"), "{ns}");
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("default")
        .await
        .expect("default ServiceAccount exists when namespace() returns");
    assert!(
        sa.secrets.is_some_and(|s| !s.is_empty()),
        "the default ServiceAccount has a token secret"
    );

    // Two namespaces with the same prefix do not collide.
    let other = env.namespace("harness").await;
    assert_ne!(ns, other);
}

#[tokio::test]
async fn job_controller_creates_the_pod_of_a_job() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("jobs").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job: Job = serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": "hello" },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "main", "image": "busybox", "command": ["true"] }],
            }},
        },
    }))
    .expect("a valid Job");
    let job = jobs
        .create(&PostParams::default(), &job)
        .await
        .expect("create Job");
    let job_uid = job.uid().expect("created Job has a uid");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = support::eventually(
        "the Job controller to create the Job's Pod",
        support::WAIT_TIMEOUT,
        async || {
            let list = pods
                .list(&ListParams::default().labels("job-name=hello"))
                .await
                .ok()?;
            list.items.into_iter().next()
        },
    )
    .await;
    assert_eq!(
        pod.labels().get("controller-uid"),
        Some(&job_uid),
        "1.20 Job pods carry controller-uid"
    );
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .expect("the Pod has a controller owner reference");
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Job", job_uid.as_str())
    );
    // No scheduler, no kubelet: the Pod stays Pending on no node.
    assert!(
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none(),
        "nobody schedules pods here"
    );

    let active = support::eventually(
        "the Job status to count the active Pod",
        support::WAIT_TIMEOUT,
        async || {
            let job = jobs.get("hello").await.ok()?;
            job.status?.active.filter(|&a| a > 0)
        },
    )
    .await;
    assert_eq!(active, 1);
}

#[tokio::test]
async fn rbac_is_enforced_for_impersonated_users_and_service_accounts() {
    let env = support::env();
    let ns = env.namespace("rbac").await;
    let admin = env.client().await;
    let user = format!("alice-{}", support::random_suffix());

    let as_alice: Api<ConfigMap> = Api::namespaced(env.client_as(&user, &[]).await, &ns);
    match as_alice.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden for {user}, got {other:?}"),
    }
    let out = env
        .kubectl_command_with(&env.kubeconfig_as(&user, &[]))
        .args(["get", "configmaps", "-n", &ns])
        .output()
        .expect("run kubectl");
    assert!(!out.status.success(), "kubectl as {user} must be forbidden");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A reader role for alice and for a ServiceAccount.
    let sa_name = "reader";
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(sa_name.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create ServiceAccount");
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &Role {
                metadata: ObjectMeta {
                    name: Some("cm-reader".into()),
                    ..Default::default()
                },
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["get".into(), "list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create Role");
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: ObjectMeta {
                    name: Some("cm-reader".into()),
                    ..Default::default()
                },
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "cm-reader".into(),
                },
                subjects: Some(vec![
                    Subject {
                        kind: "User".into(),
                        name: user.clone(),
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        ..Default::default()
                    },
                    Subject {
                        kind: "ServiceAccount".into(),
                        name: sa_name.into(),
                        namespace: Some(ns.clone()),
                        ..Default::default()
                    },
                ]),
            },
        )
        .await
        .expect("create RoleBinding");

    support::eventually(
        "alice may list ConfigMaps",
        support::WAIT_TIMEOUT,
        async || as_alice.list(&ListParams::default()).await.ok(),
    )
    .await;
    match as_alice
        .create(&PostParams::default(), &config_map("nope"))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("{user} must not create ConfigMaps, got {other:?}"),
    }

    // The ServiceAccount's real token (made by the serviceaccount-token controller).
    let sa_kubeconfig = env.kubeconfig_for_service_account(&ns, sa_name).await;
    let can = |verb: &str| {
        env.kubectl_command_with(&sa_kubeconfig)
            .args(["auth", "can-i", verb, "configmaps", "-n", &ns])
            .output()
            .expect("run kubectl")
    };
    assert_eq!(stdout(&can("list")), "yes");
    assert_eq!(stdout(&can("delete")), "no");
    let out = env
        .kubectl_command_with(&sa_kubeconfig)
        .args(["get", "configmaps", "-n", &ns, "-o", "name"])
        .output()
        .expect("run kubectl");
    assert_success(&out, "kubectl get configmaps as the ServiceAccount");
}

#[tokio::test]
async fn crds_from_the_repository_are_established() {
    let env = support::env();
    let manifests = support::crd_manifests();
    let mut installed = env.installed_crds().to_vec();
    installed.sort();
    let mut expected: Vec<String> = manifests
        .iter()
        .map(|m| {
            m.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .expect("CRD manifest has metadata.name")
                .to_string()
        })
        .collect();
    expected.sort();
    assert_eq!(installed, expected);
    if expected.is_empty() {
        eprintln!("note: crds/ holds no CRD yet; nothing to check");
    }
    let crds: Api<CustomResourceDefinition> = Api::all(env.client().await);
    for name in &expected {
        let crd = crds.get(name).await.expect("installed CRD exists");
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name}: {conditions:?}"
        );
    }
}

/// The mode for Helm tests: a second, separate control plane without pre-installed CRDs.
#[tokio::test]
async fn control_plane_without_crds_installs_them_on_request() {
    let env = support::env_without_crds();
    assert!(env.installed_crds().is_empty());
    assert_ne!(env.server_url(), support::env().server_url());
    let expected: Vec<String> = support::crd_manifests()
        .iter()
        .map(|m| {
            m.pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .expect("CRD manifest has metadata.name")
                .to_string()
        })
        .collect();
    let crds: Api<CustomResourceDefinition> = Api::all(env.client().await);
    let present: Vec<String> = crds
        .list(&ListParams::default())
        .await
        .expect("list CRDs")
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(
        expected.iter().all(|name| !present.contains(name)),
        "no repository CRD is installed: {present:?}"
    );
    let mut installed = env.install_crds().await;
    installed.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(installed, expected);
}

/// What later tests do with the controller binary: a long-running subprocess using the
/// kubeconfig, killed when its handle is dropped.
#[tokio::test]
async fn managed_subprocess_watches_the_cluster_and_dies_on_drop() {
    let env = support::env();
    let ns = env.namespace("subprocess").await;
    let out_file = env.dir().join(format!("{ns}-watch.out"));
    let mut cmd = env.kubectl_command();
    cmd.args(["get", "configmaps", "-n", &ns, "--watch", "-o", "name"])
        .stdout(std::fs::File::create(&out_file).expect("create watch output file"));
    let mut watch = support::spawn_managed("kubectl --watch", cmd);
    let pid = watch.id();

    let cms: Api<ConfigMap> = Api::namespaced(env.client().await, &ns);
    cms.create(&PostParams::default(), &config_map("watched"))
        .await
        .expect("create ConfigMap");
    support::eventually(
        "kubectl --watch to print the new ConfigMap",
        support::WAIT_TIMEOUT,
        async || {
            let text = std::fs::read_to_string(&out_file).ok()?;
            text.lines().any(|l| l == "configmap/watched").then_some(())
        },
    )
    .await;
    assert!(
        watch.try_wait().expect("try_wait").is_none(),
        "still watching"
    );

    drop(watch);
    // SAFETY: signal 0 only checks whether the pid exists.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!exists, "the subprocess {pid} is gone after drop");
}
