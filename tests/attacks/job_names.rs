//! Job names are deterministic (a restart finds the Job it made instead of
//! making a second), so they can be predicted: a Workload's next Job is
//! `<workload>-<fixSet>-<attempt>`, and `status.installable.fixSet` says the
//! fix set. Whoever may create Jobs in the namespace can take that name
//! first. Such a Job is not the Workload's: Patchloop neither adopts it
//! (its outcome would be read as the remediation's) nor counts it as an
//! attempt or a failure; the policy says which name is taken and by whom,
//! and the remediation goes on once the squatter is gone. Names too long
//! for a Job end in a 64-bit hash of the whole name, so no one can search
//! for a Workload name of their own whose Jobs take another's names (see
//! `controller::jobs` unit tests).

use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use patchloop::api::{PatchPolicy, Workload};
use patchloop::controller::jobs;
use serde_json::json;

use crate::identity;
use crate::support::objects::*;
use crate::support::patchloop::Patchloop;
use crate::support::{self};

#[tokio::test]
async fn a_squatted_job_name_is_neither_adopted_nor_counted() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-job-names").await;
    let feeds = support::random_suffix();
    fixture_feeds(&admin, &feeds).await;
    // Names long enough that their Job names are cut and hashed, and one
    // that is not.
    let victims = [
        format!("{}-victim", "db-primary-eu-west-".repeat(3)),
        "web-01".to_owned(),
    ];
    for v in &victims {
        apply(&admin, &ns, workload(v, json!({"tier": "gold"}))).await;
        apply(&admin, &ns, workload_inventory(v, OLD_GLIBC)).await;
    }
    // Report mode first: the fix set is published before any Job exists.
    let mut policy = remediating_policy(
        "gold",
        "gold",
        json!({"maxConcurrent": 2, "maxFailures": 1}),
    );
    policy["spec"]["remediation"]["mode"] = json!("Report");
    apply(&admin, &ns, policy.clone()).await;
    let _pl = Patchloop::start(env, &ns, &feeds, &[]).await;

    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    let mut names = Vec::new();
    for v in &victims {
        let fix_set = support::eventually("the victim's fix set", WAIT, async || {
            workloads
                .get_status(v)
                .await
                .ok()?
                .status?
                .installable
                .map(|i| i.fix_set)
        })
        .await;
        names.push(jobs::job_name(v, &format!("{fix_set}-1")));
    }
    assert!(names[0].len() <= jobs::MAX_JOB_NAME && !names[0].starts_with(&victims[0]));

    // The attacker may create and read Jobs in the namespace, nothing more:
    // it takes the names of the victims' first Jobs, one claiming the
    // Workload as a non-controlling owner, one as controlled by another
    // Workload. (A stale uid would do too, until the garbage collector
    // removes a Job whose owner is gone.)
    let squatter = identity::with_rules(
        &ns,
        "job-squatter",
        vec![identity::rule("batch", &["jobs"], &["create", "get"])],
    )
    .await;
    identity::assert_cannot_read_secrets(&squatter, &ns).await;
    let uid_of = async |v: &str| {
        workloads
            .get(v)
            .await
            .expect("the victim")
            .uid()
            .expect("a uid")
    };
    let first_uid = uid_of(&victims[0]).await;
    let owners = [
        (victims[0].clone(), first_uid.clone(), false),
        (victims[0].clone(), first_uid.clone(), true),
    ];
    for (name, (owner, uid, controller)) in names.iter().zip(&owners) {
        let squat: Job = serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": [{
                "apiVersion": "patchloop.dev/v1alpha1", "kind": "Workload", "name": owner,
                "uid": uid, "controller": controller}]},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "x", "image": "busybox", "command": ["true"]}]}}},
        }))
        .expect("a Job");
        Api::<Job>::namespaced(squatter.clone(), &ns)
            .create(&PostParams::default(), &squat)
            .await
            .expect("the attacker may create Jobs");
    }

    // Remediation starts: both names are taken, and the policy says so.
    policy["spec"]["remediation"]["mode"] = json!("Remediate");
    apply(&admin, &ns, policy).await;
    let policies: Api<PatchPolicy> = Api::namespaced(admin.clone(), &ns);
    let taken = |s: &patchloop::api::PatchPolicyStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.reason == "JobNameTaken")
            .map(|c| c.message.clone())
    };
    let message = support::eventually("the policy to report both taken names", WAIT, async || {
        let status = policies.get_status("gold").await.ok()?.status?;
        taken(&status).filter(|m| names.iter().all(|n| m.contains(n.as_str())))
    })
    .await;
    for (v, n) in victims.iter().zip(&names) {
        assert!(
            message.contains(&format!("Workload {v}: a Job named {n} already exists")),
            "{message}"
        );
    }
    assert!(
        message.contains("controlled by no object")
            && message.contains(&format!(
                "controlled by Workload {} (uid {first_uid})",
                victims[0]
            ))
            && message.contains("delete that Job"),
        "{message}"
    );
    // Not adopted, not an attempt, not a failure.
    let status = policies
        .get_status("gold")
        .await
        .expect("the policy")
        .status
        .expect("a status");
    assert_eq!(status.rollout.as_ref().map_or(0, |r| r.failures), 0);
    let all_jobs: Api<Job> = Api::namespaced(admin.clone(), &ns);
    let listed = all_jobs
        .list(&ListParams::default())
        .await
        .expect("Jobs")
        .items;
    assert_eq!(listed.len(), 2, "only the squatter's Jobs exist");
    assert!(
        listed
            .iter()
            .all(|j| !j.labels().contains_key(jobs::MANAGED_BY_LABEL)),
        "Patchloop did not touch the squatter's Jobs"
    );
    for v in &victims {
        let w = workloads.get_status(v).await.expect("the victim");
        let record = w.status.and_then(|s| s.remediation);
        assert!(
            record.as_ref().is_none_or(|r| r.job.is_none()),
            "no attempt is recorded: {record:?}"
        );
    }

    // The squatters' Jobs are deleted: each Workload's own Job takes the name.
    for n in &names {
        all_jobs
            .delete(n, &kube::api::DeleteParams::foreground())
            .await
            .expect("deleting the squatter's Job");
    }
    for (v, n) in victims.iter().zip(&names) {
        let uid = uid_of(v).await;
        let ours = support::eventually("the victim's own Job", WAIT, async || {
            all_jobs.get_opt(n).await.ok().flatten().filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.uid == uid)
            })
        })
        .await;
        assert_eq!(
            ours.labels()
                .get(jobs::MANAGED_BY_LABEL)
                .map(String::as_str),
            Some(jobs::MANAGED_BY)
        );
    }
    support::eventually("the policy Ready again", WAIT, async || {
        policies
            .get_status("gold")
            .await
            .ok()?
            .status
            .filter(|s| condition_reason(&s.conditions, "Ready") == Some("Valid"))
    })
    .await;
}
