//! Finding 6, controller side: decoy Workloads. Whoever may create
//! Workloads in a namespace (a Workload author, or a node agent, whose Role
//! creates Workloads and Inventories) must not be able to make Patchloop
//! act on a machine from a guess (a Workload judged only by its template's
//! Inventory), nor pause a policy's whole rollout by making Jobs refuse
//! (exit code 2: a decoy borrowing another machine's address finds no host
//! key pinned for itself). Refusals are configuration errors of the decoy,
//! said on the decoy, never rollout failures.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use patchloop::api::inventory::{InventorySubject, SubjectKind};
use patchloop::api::workload::RemediationPhase;
use patchloop::api::{PatchPolicy, Workload};
use serde_json::{Value, json};

use crate::identity;
use crate::support::executor::{self, label, unfinished};
use crate::support::objects::*;
use crate::support::patchloop::Patchloop;
use crate::support::{self};

/// The passphrase in the policy's SSH Secret: it must never show up.
const SECRET_VALUE: &str = "decoy-test-passphrase-7f3a91";
/// Words that would make apt or dnf do more than upgrade a package.
const ACTION_WORDS: &[&str] = &[
    "apt-get",
    "purge",
    "autoremove",
    "--allow-remove",
    "dnf remove",
    "dnf erase",
];
const LONG_WAIT: std::time::Duration = std::time::Duration::from_secs(240);

fn decoy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload",
        "metadata": {"name": name, "labels": {"tier": "gold"}},
        "spec": spec,
    })
}

/// Creates `doc` with `client`'s identity (a create, not an apply: the
/// attacker's Role may grant nothing more).
async fn create_as(client: &kube::Client, ns: &str, doc: Value) {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let obj: kube::api::DynamicObject = serde_json::from_value(doc).expect("object");
    api_of(client, ns, &kind)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("the attacker creating {kind} {}: {e}", obj.name_any()));
}

fn status_of(w: &Workload) -> &patchloop::api::WorkloadStatus {
    w.status.as_ref().expect("a status")
}

#[tokio::test]
async fn decoy_workloads_neither_get_a_job_from_a_provisional_inventory_nor_pause_a_rollout() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-decoys").await;
    let feeds = support::random_suffix();
    fixture_feeds(&admin, &feeds).await;

    // The operator's setup: an SSH Secret the Job template reads, a policy
    // (canary 1, maxFailures 2), two real machines, a golden image whose
    // scanned Inventory is vulnerable.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "fleet-ssh"},
        "stringData": {"passphrase": SECRET_VALUE},
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("the SSH Secret");
    let mut policy = remediating_policy(
        "gold",
        "gold",
        json!({"maxConcurrent": 3, "canary": 1, "maxFailures": 2, "attempts": 3, "backoff": "1s"}),
    );
    policy["spec"]["remediation"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"] = json!([
        {"name": "SSH_PASSPHRASE", "valueFrom": {"secretKeyRef": {"name": "fleet-ssh", "key": "passphrase"}}}
    ]);
    apply(&admin, &ns, policy).await;
    let real = ["real-00", "real-01"];
    for r in real {
        apply(&admin, &ns, workload(r, json!({"tier": "gold"}))).await;
        apply(&admin, &ns, workload_inventory(r, OLD_GLIBC)).await;
    }
    apply(&admin, &ns, template("base", json!({"tier": "images"}))).await;
    let image = InventorySubject {
        kind: SubjectKind::Template,
        name: "base".into(),
        revision: Some(1),
    };
    let mut scanned = template_inventory("base", OLD_GLIBC, "2026-11-24T08:00:00Z");
    scanned["metadata"]["name"] = json!(image.canonical_inventory_name());
    apply(&admin, &ns, scanned).await;

    // The attackers: a Role granting only Workloads create/patch, and the
    // shipped node-agent Role.
    let author = identity::with_rules(
        &ns,
        "decoy-author",
        vec![identity::rule(
            "patchloop.dev",
            &["workloads"],
            &["create", "patch"],
        )],
    )
    .await;
    let agent = identity::shipped_role(&ns, "node-agent", "patchloop-node-agent").await;
    identity::assert_cannot_read_secrets(&author, &ns).await;
    identity::assert_cannot_read_secrets(&agent, &ns).await;

    // (i) Decoys with only a provisional inventory: they name the golden
    // image, with and without a revision, and never report their own.
    let ghosts = ["ghost-00", "ghost-01", "ghost-02"];
    let ghost_spec = |revision: Option<i64>| {
        let mut template_ref = json!({"name": "base"});
        if let Some(r) = revision {
            template_ref["revision"] = json!(r);
        }
        json!({"platform": "Debian:12", "target": {"address": "10.0.0.1"}, "templateRef": template_ref})
    };
    create_as(&author, &ns, decoy(ghosts[0], ghost_spec(None))).await;
    create_as(&author, &ns, decoy(ghosts[1], ghost_spec(Some(1)))).await;
    create_as(&agent, &ns, decoy(ghosts[2], ghost_spec(None))).await;

    // (ii) Decoys whose Jobs are refused: they borrow the real machine's
    // address (no host key is pinned for them), more of them than
    // maxFailures, each with a vulnerable Inventory of its own.
    let decoys = ["decoy-00", "decoy-01", "decoy-02", "decoy-03"];
    let targets = [
        json!({"address": "10.0.0.1"}),
        json!({"address": "10.0.0.1", "port": 22}),
        json!({"address": "10.0.0.1", "user": "root"}),
        json!({"address": "real-00.internal"}),
    ];
    for (i, (d, target)) in decoys.iter().zip(&targets).enumerate() {
        let doc = decoy(d, json!({"platform": "Debian:12", "target": target}));
        let creator = if i % 2 == 0 { &author } else { &agent };
        create_as(creator, &ns, doc).await;
        apply(&agent, &ns, workload_inventory(d, OLD_GLIBC)).await;
    }

    let _pl = Patchloop::start(env, &ns, &feeds, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);

    // The executor: each decoy's script refuses (exit 2) as the reference
    // scripts do for a target whose host key is not pinned; the real
    // machines' Jobs succeed and report the fix.
    support::eventually(
        "the real machines verified and every decoy refused",
        LONG_WAIT,
        async || {
            for job in executor::jobs(&admin, &ns).await {
                if !unfinished(&job) {
                    continue;
                }
                let name = job.name_any();
                let w = label(&job, "patchloop.dev/workload").to_owned();
                if w.starts_with("decoy-") {
                    let message = format!(
                        "refused: unknown target {w}: its host key is not pinned for this Workload; not connecting"
                    );
                    executor::refuse(&admin, &ns, &name, &message).await;
                } else {
                    executor::complete(&admin, &ns, &name, None).await;
                    apply(&admin, &ns, workload_inventory(&w, FIXED_GLIBC)).await;
                }
            }
            let all = workloads.list(&ListParams::default()).await.ok()?.items;
            let phase_of = |n: &str| {
                all.iter()
                    .find(|w| w.name_any() == n)
                    .and_then(|w| w.status.as_ref()?.remediation.as_ref()?.phase)
            };
            (real
                .iter()
                .all(|r| phase_of(r) == Some(RemediationPhase::Verified))
                && decoys
                    .iter()
                    .all(|d| phase_of(d) == Some(RemediationPhase::Refused)))
            .then_some(())
        },
    )
    .await;

    // The policy saw every record and did not pause: refusals are not
    // rollout failures.
    let policies: Api<PatchPolicy> = Api::namespaced(admin.clone(), &ns);
    let status = support::eventually(
        "the policy to count the real ones compliant",
        WAIT,
        async || {
            policies
                .get_status("gold")
                .await
                .ok()
                .and_then(|p| p.status)
                .filter(|s| s.workloads.as_ref().is_some_and(|c| c.compliant == 2))
        },
    )
    .await;
    assert_eq!(
        condition_reason(&status.conditions, "RolloutPaused"),
        Some("Rolling"),
        "{:?}",
        status.conditions
    );
    assert_eq!(status.rollout.as_ref().map_or(0, |r| r.failures), 0);

    // Each refused decoy says why, on itself, and is not retried.
    let jobs = executor::jobs(&admin, &ns).await;
    let jobs_of = |w: &str| {
        jobs.iter()
            .filter(|j| label(j, "patchloop.dev/workload") == w)
            .count()
    };
    for d in decoys {
        let w = workloads.get_status(d).await.expect("decoy");
        let s = status_of(&w);
        assert_eq!(
            condition(&s.conditions, "RemediationRefused"),
            Some("True"),
            "{d}: {:?}",
            s.conditions
        );
        let refused = s
            .conditions
            .iter()
            .find(|c| c.type_ == "RemediationRefused")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            refused.contains("exit code 2")
                && refused.contains("fix the Workload's spec")
                && refused.contains("a new attempt starts when it changes"),
            "{d}: {refused}"
        );
        assert_eq!(
            condition_reason(&s.conditions, "Remediating"),
            Some("Refused")
        );
        assert_eq!(jobs_of(d), 1, "{d} retried without a spec change");
    }
    for r in real {
        assert_eq!(jobs_of(r), 1, "{r}");
    }

    // A provisional inventory starts nothing, and the decoy says so.
    for g in ghosts {
        let w = workloads.get_status(g).await.expect("ghost");
        let s = status_of(&w);
        assert_eq!(
            condition_reason(&s.conditions, "InventoryFresh"),
            Some("Provisional")
        );
        assert_eq!(
            condition_reason(&s.conditions, "Remediating"),
            Some("ProvisionalInventory"),
            "{g}: {:?}",
            s.conditions
        );
        let message = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Remediating")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        assert!(
            message.contains("a Job starts once the machine reports its own Inventory"),
            "{g}: {message}"
        );
        assert_eq!(jobs_of(g), 0, "{g} got a Job from a provisional inventory");
    }

    // Nothing leaked: no Secret value, no action word in any Job,
    // ConfigMap, status or Event; a decoy's status names no other machine.
    let mut seen = String::new();
    for j in &jobs {
        seen += &serde_json::to_string(j).unwrap_or_default();
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    for cm in config_maps
        .list(&ListParams::default())
        .await
        .expect("ConfigMaps")
        .items
    {
        seen += &serde_json::to_string(&cm.data).unwrap_or_default();
    }
    for w in workloads
        .list(&ListParams::default())
        .await
        .expect("Workloads")
        .items
    {
        let status = serde_json::to_string(&w.status).unwrap_or_default();
        if !real.contains(&w.name_any().as_str()) {
            for r in real {
                assert!(!status.contains(r), "{} names {r}: {status}", w.name_any());
            }
        }
        seen += &status;
    }
    seen += &serde_json::to_string(&status).unwrap_or_default();
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    for e in events
        .list(&ListParams::default())
        .await
        .expect("Events")
        .items
    {
        seen += &e.message.unwrap_or_default();
    }
    assert!(!seen.contains(SECRET_VALUE), "the Secret's value leaked");
    for word in ACTION_WORDS {
        assert!(!seen.contains(word), "{word:?} appears");
    }

    // Only a change of the decoy's spec earns it a new attempt.
    let decoy_api: Api<Workload> = Api::namespaced(author.clone(), &ns);
    decoy_api
        .patch(
            decoys[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"target": {"address": "10.0.0.77"}}})),
        )
        .await
        .expect("the author fixes the decoy's spec");
    let retried = support::eventually("a new attempt after the spec changed", WAIT, async || {
        let jobs: Vec<Job> = executor::jobs(&admin, &ns)
            .await
            .into_iter()
            .filter(|j| label(j, "patchloop.dev/workload") == decoys[0])
            .collect();
        (jobs.len() == 2).then_some(jobs)
    })
    .await;
    assert!(
        retried
            .iter()
            .any(|j| label(j, "patchloop.dev/attempt") == "2"),
        "{:?}",
        retried
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>()
    );
    for d in &decoys[1..] {
        let n = executor::jobs(&admin, &ns)
            .await
            .iter()
            .filter(|j| label(j, "patchloop.dev/workload") == *d)
            .count();
        assert_eq!(n, 1, "{d}");
    }
}

/// Exit code 2 alone is no refusal: bash's own usage errors and many tools
/// exit 2. A decoy whose container merely crashes with 2 (no `refused:`
/// mark) has used an attempt and counts toward `maxFailures`, so a broken
/// script cannot pass its crashes off as "configuration errors" that are
/// never counted and never retried.
#[tokio::test]
async fn an_exit_code_2_without_the_refusal_mark_is_a_failure() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-exit2").await;
    let feeds = support::random_suffix();
    fixture_feeds(&admin, &feeds).await;
    apply(
        &admin,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            json!({"maxFailures": 5, "attempts": 2, "backoff": "1s"}),
        ),
    )
    .await;
    apply(&admin, &ns, workload("crashy", json!({"tier": "gold"}))).await;
    apply(&admin, &ns, workload_inventory("crashy", OLD_GLIBC)).await;
    let _pl = Patchloop::start(env, &ns, &feeds, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);

    // Every Job of the Workload crashes with 2 and bash's own words.
    let crash = "/scripts/patch.sh: line 3: syntax error near unexpected token `('";
    let record = support::eventually("both attempts used and failed", LONG_WAIT, async || {
        for job in executor::jobs(&admin, &ns).await {
            if unfinished(&job) {
                executor::fail_with_exit_code(&admin, &ns, &job.name_any(), Some(crash), 2).await;
            }
        }
        let w = workloads.get_status("crashy").await.ok()?;
        let r = w.status?.remediation?;
        (r.phase == Some(RemediationPhase::Failed)).then_some(r)
    })
    .await;
    assert_eq!(record.attempt, 2, "{record:?}");
    assert!(
        record
            .message
            .as_deref()
            .is_some_and(|m| m.contains("syntax error")),
        "{record:?}"
    );
    let w = workloads.get_status("crashy").await.expect("crashy");
    let s = status_of(&w);
    assert_eq!(
        condition(&s.conditions, "RemediationRefused"),
        Some("False")
    );
    assert_eq!(condition(&s.conditions, "RemediationFailed"), Some("True"));
    let jobs = executor::jobs(&admin, &ns).await;
    assert_eq!(jobs.len(), 2, "one Job per attempt");
    // The policy counted them as rollout failures.
    let policies: Api<PatchPolicy> = Api::namespaced(admin.clone(), &ns);
    support::eventually("the policy to count the failure", WAIT, async || {
        let status = policies.get_status("gold").await.ok()?.status?;
        (status.rollout.as_ref().map_or(0, |r| r.failures) >= 1).then_some(())
    })
    .await;
}
