//! Finding 3: any Inventory writer could speak for any subject (the newest
//! Inventory naming a subject won, and write times came from managedFields,
//! which a 1.20 apiserver takes from the client). Now only the Inventory
//! under the subject's canonical name speaks for it, RBAC can confine a
//! writer to names (`resourceNames`), and verification counts only a
//! server-side change (generation/uid) first seen after the Job started.
//! The attackers are a ServiceAccount with the shipped node-agent Role, one
//! with the shipped reporter Role, and one with the node-agent rules the
//! chart renders (real Helm) for `rbac.nodeAgentNodes: [node-a]`.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use patchloop::api::inventory::SubjectKind;
use patchloop::api::workload::RemediationPhase;
use patchloop::api::{Inventory, Workload, WorkloadStatus};
use serde_json::{Value, json};

use crate::identity;
use crate::support;
use crate::support::executor;
use crate::support::objects::*;
use crate::support::patchloop::Patchloop;

/// A package line only forged Inventories carry: it must never show up in
/// anything the controller writes.
const MARKER: &str = "forged-marker";

/// Forged package lists: the fixed glibc (it would make the victim look
/// Compliant), the marker, and a name apt would read as "remove sshd".
fn forged_packages() -> Vec<&'static str> {
    let mut p = FIXED_GLIBC.to_vec();
    p.extend(["forged-marker 1.0", "openssh-server- 1:9.2p1-2"]);
    p
}

/// An Inventory `name` naming `subject`, reported with the forged packages.
fn forged(name: &str, subject: Value) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": name},
        "spec": {"subject": subject, "reporter": "node-agent",
                 "reportedAt": "2026-11-24T09:00:00Z", "format": "dpkg",
                 "packages": forged_packages()},
    })
}

/// Server-side applies `doc` as `client` (the attacker's own token).
async fn apply_as(client: &kube::Client, ns: &str, doc: &Value) -> Result<(), kube::Error> {
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api_of(client, ns, "Inventory")
        .patch(
            &name,
            &PatchParams::apply("attacker").force(),
            &Patch::Apply(doc),
        )
        .await
        .map(drop)
}

fn is_forbidden(r: &Result<(), kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

/// The Ready condition (reason, message) of an Inventory, once it says
/// `NotCanonical`.
async fn not_canonical(client: &kube::Client, ns: &str, name: &str) -> String {
    let api: Api<Inventory> = Api::namespaced(client.clone(), ns);
    support::eventually(
        &format!("Inventory {name} to be marked NotCanonical"),
        WAIT,
        async || {
            let inv = api.get(name).await.ok()?;
            let ready = inv
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (ready.status == "False" && ready.reason == "NotCanonical").then_some(ready.message)
        },
    )
    .await
}

/// The Workload's status once its InventoryIgnored condition lists every
/// name of `ignored`: the controller has judged it with them all present.
async fn judged_with_ignored(
    workloads: &Api<Workload>,
    name: &str,
    ignored: &[&str],
) -> (WorkloadStatus, String) {
    support::eventually(
        &format!("{name} to list {ignored:?} as ignored"),
        WAIT,
        async || {
            let s = workload_status(workloads, name).await?;
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == "InventoryIgnored" && c.status == "True")?;
            let message = c.message.clone();
            ignored
                .iter()
                .all(|i| message.contains(i))
                .then_some((s, message))
        },
    )
    .await
}

/// Nothing the controller wrote in `ns` (Jobs, ConfigMaps, Workload status,
/// Events) carries forged data or an action word.
async fn assert_nothing_forged_leaked(client: &kube::Client, ns: &str) {
    let mut texts = Vec::new();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    for j in jobs.list(&ListParams::default()).await.expect("Jobs").items {
        texts.push(serde_json::to_string(&j).unwrap_or_default());
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for c in cms
        .list(&ListParams::default())
        .await
        .expect("ConfigMaps")
        .items
    {
        texts.push(serde_json::to_string(&c.data).unwrap_or_default());
    }
    let workloads: Api<Workload> = Api::namespaced(client.clone(), ns);
    for w in workloads
        .list(&ListParams::default())
        .await
        .expect("Workloads")
        .items
    {
        texts.push(serde_json::to_string(&w.status).unwrap_or_default());
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    for e in events
        .list(&ListParams::default())
        .await
        .expect("Events")
        .items
    {
        texts.push(e.message.unwrap_or_default());
    }
    for t in &texts {
        assert!(!t.contains(MARKER), "forged data leaked: {t}");
        assert!(!t.contains("openssh-server-"), "an action word leaked: {t}");
    }
}

#[tokio::test]
async fn forged_reporters_under_other_names_change_no_verdict() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-reporters").await;
    let label = support::random_suffix();
    fixture_feeds(&admin, &label).await;
    apply(&admin, &ns, policy("gold", json!({"tier": "gold"}), 100)).await;
    for w in ["web-01", "web-02"] {
        apply(&admin, &ns, workload(w, json!({"tier": "gold"}))).await;
        apply(&admin, &ns, workload_inventory(w, OLD_GLIBC)).await;
    }
    // A machine judged by its template revision's (provisional) Inventory.
    apply(&admin, &ns, template("base", json!({"tier": "gold"}))).await;
    apply(
        &admin,
        &ns,
        template_inventory("base", OLD_GLIBC, "2026-11-24T08:00:00Z"),
    )
    .await;
    let mut fresh = workload("new-01", json!({"tier": "gold"}));
    fresh["spec"]["templateRef"] = json!({"name": "base", "revision": 1});
    apply(&admin, &ns, fresh).await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    for w in ["web-01", "new-01"] {
        support::eventually(&format!("{w} Overdue"), WAIT, async || {
            workload_status(&workloads, w)
                .await
                .filter(|s| in_state(s, "Overdue"))
        })
        .await;
    }

    let agent = identity::shipped_role(&ns, "agent", "patchloop-node-agent").await;
    let reporter = identity::shipped_role(&ns, "cmdb", "patchloop-reporter").await;
    identity::assert_cannot_read_secrets(&agent, &ns).await;
    identity::assert_cannot_read_secrets(&reporter, &ns).await;
    let web_01 = json!({"kind": "Workload", "name": "web-01"});
    let attacks = [
        // A second Inventory for another node's Workload.
        (&agent, forged("node-b-report", web_01.clone())),
        // Another Workload's canonical name, naming the victim.
        (&agent, forged("workload-web-02-copy", web_01.clone())),
        // A CMDB credential speaking for a machine it does not own.
        (&reporter, forged("cmdb-web-01", web_01.clone())),
        // A Template revision's inventory under a scanner's own name.
        (
            &reporter,
            forged(
                "base-r1-scan",
                json!({"kind": "Template", "name": "base", "revision": 1}),
            ),
        ),
        // The canonical name of revision 1, claiming revision 2.
        (
            &reporter,
            forged(
                "template-base-r2-early",
                json!({"kind": "Template", "name": "base", "revision": 2}),
            ),
        ),
        // A fake build result for a ChangeRequest (the old `-result` name).
        (
            &reporter,
            forged(
                "base-x7k2p-result",
                json!({"kind": "ChangeRequest", "name": "base-x7k2p"}),
            ),
        ),
    ];
    for (attacker, doc) in &attacks {
        apply_as(attacker, &ns, doc)
            .await
            .unwrap_or_else(|e| panic!("the attacker may create Inventories: {e}"));
    }

    // Each forged Inventory says it is ignored and which name would count.
    let expected = [
        ("node-b-report", "workload-web-01"),
        ("workload-web-02-copy", "workload-web-01"),
        ("cmdb-web-01", "workload-web-01"),
        ("base-r1-scan", "template-base-r1"),
        ("template-base-r2-early", "template-base-r2"),
        ("base-x7k2p-result", "changerequest-base-x7k2p"),
    ];
    for (name, canonical) in expected {
        let message = not_canonical(&admin, &ns, name).await;
        assert!(
            message.contains(canonical) && message.contains("ignored"),
            "{name}: {message}"
        );
        assert!(!message.contains(MARKER), "{message}");
    }

    // The victim lists them, names its own Inventory, and its verdict stands.
    let (status, message) = judged_with_ignored(
        &workloads,
        "web-01",
        &["node-b-report", "workload-web-02-copy", "cmdb-web-01"],
    )
    .await;
    assert!(message.contains("workload-web-01"), "{message}");
    assert!(in_state(&status, "Overdue"), "{status:?}");
    assert_eq!(
        status.inventory.as_ref().and_then(|i| i.name.as_deref()),
        Some("workload-web-01")
    );
    assert!(!status.findings.is_empty());
    // Its neighbour is unaffected and has nothing ignored.
    let web_02 = workload_status(&workloads, "web-02")
        .await
        .expect("web-02 status");
    assert!(in_state(&web_02, "Overdue"));
    assert_eq!(condition(&web_02.conditions, "InventoryIgnored"), None);
    // The provisional machine is still judged by the canonical revision 1.
    let new_01 = workload_status(&workloads, "new-01")
        .await
        .expect("new-01 status");
    assert!(in_state(&new_01, "Overdue"));
    assert_eq!(
        new_01.inventory.as_ref().and_then(|i| i.name.as_deref()),
        Some(inventory_name(SubjectKind::Template, "base", Some(1)).as_str())
    );
    assert_nothing_forged_leaked(&admin, &ns).await;
}

/// The rules of the node-agent ClusterRole the chart renders with
/// `rbac.nodeAgentNodes: [node]`: the chart installed by real Helm
/// (`scripts/helm.sh`, CRDs left to the harness) into `ns` under a release of
/// its own, its rendered manifest read back.
async fn chart_node_agent_rules(env: &support::TestEnv, ns: &str, node: &str) -> Vec<PolicyRule> {
    let repo = env!("CARGO_MANIFEST_DIR");
    let release = format!("patchloop-{}", support::random_suffix());
    let values = json!({"crds": {"install": false}, "rbac": {"nodeAgentNodes": [node]}});
    let out = tokio::process::Command::new(format!("{repo}/scripts/helm.sh"))
        .args(["install", &release, &format!("{repo}/charts/patchloop")])
        .args([
            "--namespace",
            ns,
            "--values",
            &values.to_string(),
            "--kubeconfig",
        ])
        .arg(env.kubeconfig())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run scripts/helm.sh: {e}"));
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("helm.py prints JSON");
    let manifest = result["manifest"].as_str().expect("a rendered manifest");
    let docs: Vec<Value> = serde_saphyr::from_multiple(manifest).expect("the manifest parses");
    let role = docs
        .into_iter()
        .find(|d| {
            d["kind"] == "ClusterRole" && d["metadata"]["name"] == format!("{release}-node-agent")
        })
        .expect("the node-agent ClusterRole");
    let role: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_json::from_value(role).expect("a ClusterRole");
    role.rules.unwrap_or_default()
}

#[tokio::test]
async fn a_node_agent_limited_to_its_node_cannot_touch_another_nodes_inventory() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-node-names").await;
    let label = support::random_suffix();
    fixture_feeds(&admin, &label).await;
    apply(&admin, &ns, policy("gold", json!({"tier": "gold"}), 100)).await;
    apply(&admin, &ns, workload("node-b", json!({"tier": "gold"}))).await;
    apply(&admin, &ns, workload_inventory("node-b", OLD_GLIBC)).await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    support::eventually("node-b Overdue", WAIT, async || {
        workload_status(&workloads, "node-b")
            .await
            .filter(|s| in_state(s, "Overdue"))
    })
    .await;

    let rules = chart_node_agent_rules(env, &ns, "node-a").await;
    // What the chart renders: create namespace-wide, the rest by name.
    assert!(
        rules
            .iter()
            .any(|r| r.verbs == ["create"] && r.resource_names.is_none())
    );
    assert!(
        rules
            .iter()
            .filter(|r| r.verbs != ["create"])
            .all(|r| r.resource_names.as_ref().is_some_and(|n| !n.is_empty())),
        "{rules:?}"
    );
    let agent = identity::with_rules(&ns, "agent-a", rules).await;
    identity::assert_cannot_read_secrets(&agent, &ns).await;
    // Its own node's Inventory: allowed (created, then patched).
    let own = workload_inventory("node-a", FIXED_GLIBC);
    apply_as(&agent, &ns, &own)
        .await
        .expect("the agent creates its own node's Inventory");
    apply_as(&agent, &ns, &own)
        .await
        .expect("the agent patches its own node's Inventory");

    // Another node's canonical Inventory: every way of writing or reading it
    // is refused by RBAC.
    let victim = forged(
        "workload-node-b",
        json!({"kind": "Workload", "name": "node-b"}),
    );
    assert!(is_forbidden(&apply_as(&agent, &ns, &victim).await));
    let invs = api_of(&agent, &ns, "Inventory");
    let merge = invs
        .patch(
            "workload-node-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"packages": forged_packages()}})),
        )
        .await
        .map(drop);
    assert!(is_forbidden(&merge), "{merge:?}");
    let typed: Api<Inventory> = Api::namespaced(agent.clone(), &ns);
    assert!(is_forbidden(&typed.get("workload-node-b").await.map(drop)));
    let mut replacement: Inventory = serde_json::from_value(victim.clone()).expect("an Inventory");
    replacement.metadata.resource_version = Some("1".into());
    let replaced = typed
        .replace("workload-node-b", &PostParams::default(), &replacement)
        .await
        .map(drop);
    assert!(is_forbidden(&replaced), "{replaced:?}");

    // A server-side apply that would create another name is a patch of
    // that name, refused too; a plain create is what RBAC cannot stop.
    // Under any name but node-b's canonical one it is ignored.
    let sideways = forged(
        "workload-node-c",
        json!({"kind": "Workload", "name": "node-b"}),
    );
    assert!(is_forbidden(&apply_as(&agent, &ns, &sideways).await));
    let sideways: Inventory = serde_json::from_value(sideways).expect("an Inventory");
    typed
        .create(&PostParams::default(), &sideways)
        .await
        .expect("create cannot be limited by name");
    let message = not_canonical(&admin, &ns, "workload-node-c").await;
    assert!(message.contains("workload-node-b"), "{message}");
    let (status, _) = judged_with_ignored(&workloads, "node-b", &["workload-node-c"]).await;
    assert!(in_state(&status, "Overdue"), "{status:?}");
    assert_eq!(
        status.inventory.as_ref().and_then(|i| i.name.as_deref()),
        Some("workload-node-b")
    );
    assert_nothing_forged_leaked(&admin, &ns).await;
}

#[tokio::test]
async fn verification_takes_no_forged_reporter_and_no_client_sent_write_time() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-verify").await;
    let label = support::random_suffix();
    fixture_feeds(&admin, &label).await;
    apply(
        &admin,
        &ns,
        remediating_policy("gold", "gold", json!({"verifyTimeout": "5s"})),
    )
    .await;
    apply(&admin, &ns, workload("web-01", json!({"tier": "gold"}))).await;
    apply(&admin, &ns, workload_inventory("web-01", OLD_GLIBC)).await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    let job = support::eventually("the remediation Job", WAIT, async || {
        executor::jobs(&admin, &ns).await.into_iter().next()
    })
    .await;
    let job_name = job.name_any();
    // The Job records the Inventory it was created from.
    let canonical: Api<Inventory> = Api::namespaced(admin.clone(), &ns);
    let before = canonical
        .get("workload-web-01")
        .await
        .expect("the Inventory");
    assert_eq!(
        job.labels().get("patchloop.dev/inventory-generation"),
        before.metadata.generation.map(|g| g.to_string()).as_ref()
    );
    assert_eq!(
        job.labels().get("patchloop.dev/inventory-uid"),
        before.metadata.uid.as_ref()
    );

    // A reporter that may write the machine's Inventory writes the fixed
    // versions before the Job starts, with a write time from the future in
    // managedFields (a 1.20 apiserver keeps what an update sends).
    let reporter = identity::shipped_role(&ns, "cmdb", "patchloop-reporter").await;
    let typed: Api<Inventory> = Api::namespaced(reporter.clone(), &ns);
    let mut early = typed
        .get("workload-web-01")
        .await
        .expect("the reporter reads it");
    early.spec.packages = FIXED_GLIBC.iter().map(|p| (*p).to_owned()).collect();
    let future = json!([{"manager": "node-agent", "operation": "Update",
        "apiVersion": "patchloop.dev/v1alpha1", "time": "2099-01-01T00:00:00Z",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:format": {}}}}]);
    early.metadata.managed_fields = Some(serde_json::from_value(future).expect("managedFields"));
    let written = typed
        .replace("workload-web-01", &PostParams::default(), &early)
        .await
        .expect("the reporter may update the canonical Inventory");
    assert!(
        written.metadata.managed_fields.iter().flatten().any(|m| m
            .time
            .as_ref()
            .is_some_and(|t| t.0.to_string().starts_with("2099"))),
        "the apiserver kept the client's time"
    );
    let generation = written.metadata.generation;
    support::eventually("the controller to see the early write", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| s.inventory.as_ref().and_then(|i| i.generation) == generation)
    })
    .await;
    // The Job starts only now, and succeeds.
    let start = (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2))
        .round(jiff::Unit::Second)
        .expect("rounding")
        .to_string();
    executor::complete(&admin, &ns, &job_name, Some(&start)).await;
    // After it started, only forged reporters under other names report.
    apply_as(
        &reporter,
        &ns,
        &forged("cmdb-web-01", json!({"kind": "Workload", "name": "web-01"})),
    )
    .await
    .expect("the reporter creates an Inventory");

    let status = support::eventually("RemediationUnverified", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| condition(&s.conditions, "RemediationUnverified") == Some("True"))
    })
    .await;
    let record = status.remediation.as_ref().expect("a remediation record");
    assert_eq!(record.phase, Some(RemediationPhase::Unverified));
    assert_eq!(
        record.inventory_baseline.as_ref().map(|b| b.generation),
        before.metadata.generation
    );
    let message = record.message.clone().unwrap_or_default();
    assert!(
        message.contains("no change of the Workload's Inventory seen since the Job started"),
        "{message}"
    );
    let (_, ignored) = judged_with_ignored(&workloads, "web-01", &["cmdb-web-01"]).await;
    assert!(ignored.contains("workload-web-01"), "{ignored}");
    assert_nothing_forged_leaked(&admin, &ns).await;
}
