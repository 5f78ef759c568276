//! Live remediation against a real Kubernetes 1.20.2 control plane: Jobs
//! rolled out by the policy reconciler (windows, emergencies, canary,
//! maxConcurrent under cache lag, maxFailures and resume), outcomes verified
//! by fresh inventory, and crashes that never duplicate a Job.
//!
//! Why simulated (`support::executor`): these tests need Jobs to end at chosen moments — between
//! a create and its record (crash tests), under a 3 s Job-watch lag, 50 Workloads and 21
//! canary loops within seconds — which real Pods cannot time. The same rollout with real Pods
//! and machines is `tests/real_remediation.rs`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use patchloop::api::workload::RemediationPhase;
use patchloop::api::{PatchPolicy, Workload, WorkloadStatus};
use patchloop::controller::jobs::{
    self, BuildError, CONTRACT_ANNOTATION_PREFIX, Created, JobRequest, MAX_ANNOTATION_BYTES,
    Purpose, contract_file,
};
use serde_json::json;
use support::executor::{self, InFlightWatch, label, unfinished};
use support::objects::*;
use support::patchloop::Patchloop;

const LONG_WAIT: Duration = Duration::from_secs(240);
const WORKLOAD_LABEL: &str = "patchloop.dev/workload";

/// Workloads `{prefix}-NN` of a tier, each with the vulnerable inventory.
async fn fleet(client: &kube::Client, ns: &str, prefix: &str, tier: &str, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i:02}");
        apply(client, ns, workload(&name, json!({"tier": tier}))).await;
        apply(client, ns, workload_inventory(&name, OLD_GLIBC)).await;
        names.push(name);
    }
    names
}

fn phase(s: &WorkloadStatus) -> Option<RemediationPhase> {
    s.remediation.as_ref().and_then(|r| r.phase)
}

/// Finishes every unfinished Job of the namespace successfully and reports
/// the fixed inventory for its Workload, as a working remediation script
/// would; returns how many it finished.
async fn succeed_all(client: &kube::Client, ns: &str) -> usize {
    succeed_older_than(client, ns, 0).await
}

/// [`succeed_all`] for the Jobs created at least `seconds` ago.
async fn succeed_older_than(client: &kube::Client, ns: &str, seconds: i64) -> usize {
    let mut n = 0;
    let now = jiff::Timestamp::now();
    for job in executor::jobs(client, ns).await {
        let age = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| (now - t.0).get_seconds());
        if unfinished(&job) && age >= seconds {
            let name = job.metadata.name.clone().unwrap_or_default();
            executor::complete(client, ns, &name, None).await;
            let w = label(&job, WORKLOAD_LABEL);
            apply(client, ns, workload_inventory(w, FIXED_GLIBC)).await;
            n += 1;
        }
    }
    n
}

async fn all_verified(api: &Api<Workload>, names: &[String]) -> bool {
    for n in names {
        let ok = workload_status(api, n).await.is_some_and(|s| {
            phase(&s) == Some(RemediationPhase::Verified) && in_state(&s, "Compliant")
        });
        if !ok {
            return false;
        }
    }
    true
}

fn jobs_by_workload(jobs: &[Job]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for j in jobs {
        out.entry(label(j, WORKLOAD_LABEL).to_owned())
            .or_default()
            .push(j.metadata.name.clone().unwrap_or_default());
    }
    out
}

async fn policy_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Option<patchloop::api::PatchPolicyStatus> {
    let api: Api<PatchPolicy> = Api::namespaced(client.clone(), ns);
    api.get_status(name).await.ok().and_then(|p| p.status)
}

fn env_of(job: &Job) -> BTreeMap<String, String> {
    job.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| &p.containers[0])
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn the_canary_runs_alone_then_at_most_max_concurrent_and_every_fix_is_verified() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("rollout").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            json!({"maxConcurrent": 3, "canary": 1, "keepFinishedJobs": 0}),
        ),
    )
    .await;
    let names = fleet(&client, &ns, "web", "gold", 10).await;
    let watch = InFlightWatch::start(&client, &ns);
    let pl = Patchloop::start(env, &ns, &label_, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    let canary = support::eventually("the canary Job", WAIT, async || {
        executor::jobs(&client, &ns).await.into_iter().next()
    })
    .await;
    let canary_name = canary.metadata.name.clone().unwrap_or_default();
    let canary_workload = label(&canary, WORKLOAD_LABEL).to_owned();

    // The contract: deterministic name, owner, no retries of its own,
    // environment and the mounted package list with minimum fixed versions.
    let status = workload_status(&workloads, &canary_workload)
        .await
        .expect("status");
    let fix_set = status
        .installable
        .as_ref()
        .map(|i| i.fix_set.clone())
        .expect("installable fixes");
    assert_eq!(canary_name, format!("{canary_workload}-{fix_set}-1"));
    assert_eq!(label(&canary, "patchloop.dev/policy"), "gold");
    assert_eq!(label(&canary, "patchloop.dev/attempt"), "1");
    let owner = &canary.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Workload", canary_workload.as_str())
    );
    let spec = canary.spec.as_ref().expect("spec");
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(3600));
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    let vars = env_of(&canary);
    assert_eq!(vars["PATCHLOOP_WORKLOAD"], canary_workload);
    assert_eq!(vars["PATCHLOOP_NAMESPACE"], ns);
    assert_eq!(vars["PATCHLOOP_PLATFORM"], "Debian:12");
    assert_eq!(vars["PATCHLOOP_TARGET"], r#"{"address":"10.0.0.1"}"#);
    assert_eq!(vars["PATCHLOOP_ADVISORIES"], "CVE-2023-4911,DSA-5514-1");
    assert_eq!(
        vars["PATCHLOOP_PACKAGES_FILE"],
        "/var/run/patchloop/packages"
    );
    // The package list and the other contract files: annotations of the
    // Job's own Pod template (what verification reads back), mounted
    // through a downward-API volume; no ConfigMap is written.
    let packages = "libc-bin 2.36-9+deb12u3 glibc\nlibc6 2.36-9+deb12u3 glibc\n";
    assert_eq!(contract_file(&canary, "packages"), Some(packages));
    assert_eq!(
        contract_file(&canary, "target.json"),
        Some(r#"{"address":"10.0.0.1"}"#)
    );
    assert_eq!(
        contract_file(&canary, "advisories"),
        Some("CVE-2023-4911\nDSA-5514-1\n")
    );
    assert!(contract_file(&canary, "packages.json").is_some_and(|j| j.contains("libc6")));
    assert!(!canary.annotations().contains_key("patchloop.dev/packages"));
    // The 1.20.2 apiserver and Job controller take it as built: the Job's
    // Pod carries the annotations and mounts them at the contract path.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = support::eventually("the canary's Pod", WAIT, async || {
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={canary_name}")))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    assert_eq!(
        pod.annotations()
            .get("patchloop.dev/contract-packages")
            .map(String::as_str),
        Some(packages)
    );
    let volume = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.iter().find(|v| v.name == "patchloop-contract"))
        .and_then(|v| v.downward_api.as_ref())
        .expect("the contract's downward-API volume");
    let paths: Vec<&str> = volume
        .items
        .iter()
        .flatten()
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["advisories", "packages", "packages.json", "target.json"]
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert_eq!(
        config_maps
            .list(&ListParams::default())
            .await
            .expect("list ConfigMaps")
            .items
            .iter()
            .filter(|c| c.name_any() != "kube-root-ca.crt")
            .map(|c| c.name_any())
            .collect::<Vec<_>>(),
        Vec::<String>::new(),
        "the controller writes no ConfigMap"
    );

    // The canary runs alone; complete but unverified, it still holds the
    // rest back.
    let woken = pl.wake_and_count(&client, &ns, "gold", "policy", 1).await;
    assert_eq!(woken.jobs_created(), 0.0, "only the canary runs");
    assert_eq!(
        executor::jobs(&client, &ns).await.len(),
        1,
        "only the canary runs"
    );
    executor::complete(&client, &ns, &canary_name, None).await;
    support::eventually("the canary to be Verifying", WAIT, async || {
        workload_status(&workloads, &canary_workload)
            .await
            .filter(|s| phase(s) == Some(RemediationPhase::Verifying))
    })
    .await;
    let woken = pl.wake_and_count(&client, &ns, "gold", "policy", 1).await;
    assert_eq!(
        woken.jobs_created(),
        0.0,
        "an unverified canary holds the rollout"
    );
    assert_eq!(
        executor::jobs(&client, &ns).await.len(),
        1,
        "an unverified canary holds the rollout"
    );
    apply(
        &client,
        &ns,
        workload_inventory(&canary_workload, FIXED_GLIBC),
    )
    .await;

    support::eventually(
        "every Workload remediated and verified",
        LONG_WAIT,
        async || {
            succeed_all(&client, &ns).await;
            all_verified(&workloads, &names).await.then_some(())
        },
    )
    .await;
    assert_eq!(
        watch.most(),
        3,
        "never more than maxConcurrent, and it was used:\n{}",
        watch.history()
    );
    assert_eq!(watch.created(), 10, "one Job per Workload");

    let counts = support::eventually("the policy to count 10 compliant", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .and_then(|s| s.workloads)
            .filter(|c| c.compliant == 10)
    })
    .await;
    assert_eq!((counts.remediating, counts.failed), (0, 0));
    // keepFinishedJobs 0: recorded Jobs are cleaned up; the records stay
    // on the Workloads.
    support::eventually("finished Jobs cleaned up", WAIT, async || {
        executor::jobs(&client, &ns).await.is_empty().then_some(())
    })
    .await;
    // The fleet report says the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_patchloop"))
        .args(["report", "-n", &ns, "-o", "csv", "--kubeconfig"])
        .arg(env.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .expect("patchloop report");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 10, "{csv}");
    assert!(
        rows.iter()
            .all(|r| r.contains(",Compliant,") && r.contains(",Verified,")),
        "{csv}"
    );
    let status = workload_status(&workloads, &canary_workload)
        .await
        .expect("status");
    assert_eq!(
        status.remediation.as_ref().and_then(|r| r.job.as_deref()),
        Some(canary_name.as_str())
    );
}

#[tokio::test]
async fn max_concurrent_holds_while_the_job_cache_lags() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("lag").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy("gold", "gold", json!({"maxConcurrent": 5})),
    )
    .await;
    let names = fleet(&client, &ns, "vm", "gold", 50).await;
    let watch = InFlightWatch::start(&client, &ns);
    let pl = Patchloop::spawn(
        env,
        &ns,
        &label_,
        &[],
        &[("PATCHLOOP_FAILPOINTS", "job-watch-delay=3s")],
    );
    pl.ready().await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    // Every success writes an inventory and a Job status at once: a burst of
    // triggers while the controller's Job cache is 3 s behind.
    support::eventually(
        "all 50 remediated under a lagging Job watch",
        LONG_WAIT,
        async || {
            succeed_older_than(&client, &ns, 2).await;
            all_verified(&workloads, &names).await.then_some(())
        },
    )
    .await;
    assert!(
        watch.most() <= 5,
        "{} Jobs in flight at once:\n{}",
        watch.most(),
        watch.history()
    );
    assert_eq!(watch.most(), 5);
    assert_eq!(watch.created(), 50);
}

#[tokio::test]
async fn jobs_start_only_in_a_window_or_as_an_emergency() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("window").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    let closed = json!([{"schedule": "0 0 1 1 *", "duration": "1m", "timeZone": "UTC"}]);
    let mut routine = remediating_policy("routine", "a", json!({"maxConcurrent": 2}));
    routine["spec"]["maintenanceWindows"] = closed.clone();
    let mut urgent = remediating_policy("urgent", "b", json!({}));
    urgent["spec"]["maintenanceWindows"] = closed;
    urgent["spec"]["emergency"] = json!({"knownExploited": true});
    apply(&client, &ns, routine.clone()).await;
    apply(&client, &ns, urgent).await;
    fleet(&client, &ns, "a", "a", 2).await;
    fleet(&client, &ns, "b", "b", 1).await;
    let _pl = Patchloop::start(env, &ns, &label_, &[]).await;

    // The known-exploited finding is an emergency: it starts in a closed window.
    support::eventually("the emergency Job", WAIT, async || {
        let jobs = executor::jobs(&client, &ns).await;
        jobs.iter()
            .any(|j| label(j, WORKLOAD_LABEL) == "b-00")
            .then_some(())
    })
    .await;
    let waiting = support::eventually("routine to wait for its window", WAIT, async || {
        policy_status(&client, &ns, "routine")
            .await
            .and_then(|s| s.workloads)
            .filter(|c| c.waiting_for_window == 2)
    })
    .await;
    assert_eq!(waiting.matched, 2);
    let jobs = executor::jobs(&client, &ns).await;
    assert!(
        jobs.iter().all(|j| label(j, WORKLOAD_LABEL) == "b-00"),
        "nothing starts outside the window: {:?}",
        jobs_by_workload(&jobs)
    );
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let b = workload_status(&workloads, "b-00").await.expect("status");
    assert!(b.installable.as_ref().is_some_and(|i| i.emergency));

    // Opening the window starts them.
    routine["spec"]["maintenanceWindows"] = json!([{"schedule": "* * * * *", "duration": "2h"}]);
    apply(&client, &ns, routine).await;
    support::eventually("the routine Jobs", WAIT, async || {
        let by = jobs_by_workload(&executor::jobs(&client, &ns).await);
        (by.contains_key("a-00") && by.contains_key("a-01")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn max_failures_pauses_the_rollout_until_the_resume_annotation_changes() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("failures").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            json!({"maxConcurrent": 1, "maxFailures": 2}),
        ),
    )
    .await;
    fleet(&client, &ns, "db", "gold", 4).await;
    let pl = Patchloop::start(env, &ns, &label_, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    // One at a time: each Job fails; after the second the rollout pauses.
    let mut first = Vec::new();
    for n in 1..=2 {
        // The unfinished one: creation timestamps have one-second
        // resolution, so "the newest" is not well defined.
        let job = support::eventually("the next Job", WAIT, async || {
            let jobs = executor::jobs(&client, &ns).await;
            (jobs.len() == n)
                .then(|| jobs.into_iter().find(executor::unfinished))
                .flatten()
        })
        .await;
        let name = job.metadata.name.clone().unwrap_or_default();
        executor::fail(
            &client,
            &ns,
            &name,
            Some("E: Unable to locate package libc6"),
        )
        .await;
        first.push(job);
    }
    let failed: Vec<String> = first
        .iter()
        .map(|j| label(j, WORKLOAD_LABEL).to_owned())
        .collect();
    let paused = support::eventually("RolloutPaused", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .filter(|s| condition(&s.conditions, "RolloutPaused") == Some("True"))
    })
    .await;
    let message = &paused
        .conditions
        .iter()
        .find(|c| c.type_ == "RolloutPaused")
        .expect("condition")
        .message;
    for w in &failed {
        assert!(message.contains(w.as_str()), "{message}");
    }
    let ledger = paused.rollout.expect("ledger");
    assert_eq!(ledger.failures, 2);
    // The failed Pod's termination message is on the Workload.
    let status = workload_status(&workloads, &failed[0])
        .await
        .expect("status");
    let record = status.remediation.as_ref().expect("record");
    assert_eq!(record.phase, Some(RemediationPhase::Failed));
    assert!(
        record
            .message
            .as_deref()
            .is_some_and(|m| m.contains("E: Unable to locate package libc6")),
        "{record:?}"
    );
    assert_eq!(
        condition(&status.conditions, "RemediationFailed"),
        Some("True")
    );
    let woken = pl.wake_and_count(&client, &ns, "gold", "policy", 1).await;
    assert_eq!(woken.jobs_created(), 0.0, "no Job starts while paused");
    assert_eq!(
        executor::jobs(&client, &ns).await.len(),
        2,
        "no Job starts while paused"
    );

    let api: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    api.patch(
        "gold",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"patchloop.dev/resume": "2026-11-24T10:00:00Z"}}}),
        ),
    )
    .await
    .expect("resume");
    support::eventually("the rollout to continue", WAIT, async || {
        (executor::jobs(&client, &ns).await.len() > 2).then_some(())
    })
    .await;
    let resumed = support::eventually("RolloutPaused=False", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .filter(|s| condition(&s.conditions, "RolloutPaused") == Some("False"))
    })
    .await;
    assert_eq!(
        resumed.rollout.and_then(|r| r.resume_seen).as_deref(),
        Some("2026-11-24T10:00:00Z")
    );
}

#[tokio::test]
async fn only_an_inventory_written_after_the_job_started_verifies_it() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("verify").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            json!({"maxConcurrent": 2, "canary": 1, "maxFailures": 1, "verifyTimeout": "5s"}),
        ),
    )
    .await;
    fleet(&client, &ns, "app", "gold", 2).await;
    let pl = Patchloop::start(env, &ns, &label_, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    let canary = support::eventually("the canary Job", WAIT, async || {
        executor::jobs(&client, &ns).await.into_iter().next()
    })
    .await;
    let name = canary.metadata.name.clone().unwrap_or_default();
    let w = label(&canary, WORKLOAD_LABEL).to_owned();
    // The fixed inventory arrives before the Job (re)starts: it proves nothing.
    // Status times have whole seconds: the start below must fall in a later
    // second than the inventory's write, so this is time that has to pass.
    apply(&client, &ns, workload_inventory(&w, FIXED_GLIBC)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("rounding")
        .to_string();
    executor::complete(&client, &ns, &name, Some(&start)).await;

    let status = support::eventually("RemediationUnverified", WAIT, async || {
        workload_status(&workloads, &w)
            .await
            .filter(|s| condition(&s.conditions, "RemediationUnverified") == Some("True"))
    })
    .await;
    assert_eq!(phase(&status), Some(RemediationPhase::Unverified));
    // The unverified canary counts toward maxFailures (1): the rest never starts.
    let policy = support::eventually("RolloutPaused", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .filter(|s| condition(&s.conditions, "RolloutPaused") == Some("True"))
    })
    .await;
    assert_eq!(
        policy.rollout.map(|r| r.last_failures),
        Some(vec![w.clone()])
    );
    let woken = pl.wake_and_count(&client, &ns, "gold", "policy", 1).await;
    assert_eq!(woken.jobs_created(), 0.0, "the rest never starts");
    assert_eq!(executor::jobs(&client, &ns).await.len(), 1);
}

#[tokio::test]
async fn a_crash_after_creating_a_job_or_while_jobs_run_never_duplicates_one() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("crash").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            // Long enough that the retry never races the SIGKILL below.
            json!({"maxConcurrent": 2, "attempts": 2, "backoff": "15s"}),
        ),
    )
    .await;
    let names = fleet(&client, &ns, "node", "gold", 4).await;
    let watch = InFlightWatch::start(&client, &ns);
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    // The process exits right after its first create, before anything
    // records the Job.
    let mut crashing = Patchloop::spawn(
        env,
        &ns,
        &label_,
        &[],
        &[("PATCHLOOP_FAILPOINTS", "exit-after-job-create")],
    );
    let exit =
        tokio::task::spawn_blocking(move || crashing.child.wait_timeout(Duration::from_secs(90)))
            .await
            .expect("join")
            .expect("wait")
            .expect("the failpoint to stop the controller");
    assert_eq!(exit.code(), Some(86));
    // The round creates its Jobs concurrently: the other create of the same
    // round may have landed before the exit, never more than maxConcurrent.
    let created = executor::jobs(&client, &ns).await.len();
    assert!((1..=2).contains(&created), "{created} Jobs");

    let first = executor::jobs(&client, &ns).await.remove(0);
    let failing = first.metadata.name.clone().unwrap_or_default();
    let failing_workload = label(&first, WORKLOAD_LABEL).to_owned();

    // After the restart the Job is recorded, not created again.
    let mut pl = Patchloop::start(env, &ns, &label_, &[]).await;
    support::eventually("the Job recorded after the restart", WAIT, async || {
        workload_status(&workloads, &failing_workload)
            .await
            .and_then(|s| s.remediation)
            .filter(|r| r.job.as_deref() == Some(failing.as_str()))
    })
    .await;
    let by = jobs_by_workload(&executor::jobs(&client, &ns).await);
    assert!(by.values().all(|j| j.len() == 1), "{by:?}");

    // It fails; the failure is recorded; SIGKILL while other Jobs run.
    executor::fail(&client, &ns, &failing, None).await;
    support::eventually("the failure recorded", WAIT, async || {
        workload_status(&workloads, &failing_workload)
            .await
            .filter(|s| phase(s) == Some(RemediationPhase::BackingOff))
    })
    .await;
    pl.child.kill().expect("SIGKILL");
    let by = jobs_by_workload(&executor::jobs(&client, &ns).await);
    assert!(by.values().all(|j| j.len() == 1), "{by:?}");

    let _pl = Patchloop::start(env, &ns, &label_, &[]).await;
    let ledger = support::eventually("the failure counted once", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .and_then(|s| s.rollout)
            .filter(|l| l.failures == 1)
    })
    .await;
    assert_eq!(ledger.last_failures, vec![failing_workload.clone()]);
    support::eventually("every Workload verified", LONG_WAIT, async || {
        succeed_all(&client, &ns).await;
        all_verified(&workloads, &names).await.then_some(())
    })
    .await;
    let by = jobs_by_workload(&executor::jobs(&client, &ns).await);
    for w in &names {
        let expected = if *w == failing_workload { 2 } else { 1 };
        assert_eq!(by.get(w).map(Vec::len), Some(expected), "{w}: {by:?}");
    }
    assert_eq!(watch.created(), 5);
    let status = workload_status(&workloads, &failing_workload)
        .await
        .expect("status");
    assert_eq!(status.remediation.as_ref().map(|r| r.attempt), Some(2));
    let counts = support::eventually("counts", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .and_then(|s| s.workloads)
            .filter(|c| c.compliant == 4)
    })
    .await;
    assert_eq!((counts.remediating, counts.failed), (0, 0));
}

#[tokio::test]
async fn report_mode_never_creates_a_job_and_deleting_a_workload_deletes_its_jobs() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("report").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    let mut report = remediating_policy("watch-only", "watched", json!({"maxConcurrent": 5}));
    report["spec"]["remediation"]["mode"] = json!("Report");
    apply(&client, &ns, report).await;
    apply(&client, &ns, remediating_policy("gold", "gold", json!({}))).await;
    fleet(&client, &ns, "watched", "watched", 2).await;
    fleet(&client, &ns, "doomed", "gold", 1).await;
    let _pl = Patchloop::start(env, &ns, &label_, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    let job = support::eventually("the Remediate policy's Job", WAIT, async || {
        executor::jobs(&client, &ns)
            .await
            .into_iter()
            .find(|j| label(j, WORKLOAD_LABEL) == "doomed-00")
    })
    .await;
    let status = support::eventually("the Report policy's Workloads judged", WAIT, async || {
        workload_status(&workloads, "watched-00").await.filter(|s| {
            s.installable.is_some() && condition(&s.conditions, "Remediating").is_some()
        })
    })
    .await;
    let remediating = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Remediating")
        .expect("condition");
    assert_eq!(
        (remediating.status.as_str(), remediating.reason.as_str()),
        ("False", "ReportOnly")
    );
    assert!(
        executor::jobs(&client, &ns)
            .await
            .iter()
            .all(|j| label(j, WORKLOAD_LABEL) == "doomed-00"),
        "mode Report created a Job"
    );

    workloads
        .delete("doomed-00", &DeleteParams::default())
        .await
        .expect("delete");
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    support::eventually(
        "the Job garbage-collected",
        Duration::from_secs(120),
        async || jobs.get_opt(&job_name).await.ok()?.is_none().then_some(()),
    )
    .await;
    assert!(
        executor::jobs(&client, &ns).await.is_empty(),
        "mode Report created a Job"
    );
}

/// The contract's size budget is the apiserver's own: a Job whose Pod
/// template annotations hold exactly 256 KiB of contract is created (and
/// its Pod with it), one byte more is what the builder refuses and what the
/// apiserver would refuse too.
#[tokio::test]
async fn the_contract_budget_is_the_apiservers_annotation_limit() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("contract-size").await;
    apply(&client, &ns, workload("owner", json!({}))).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let owner = workloads.get("owner").await.expect("the owner Workload");
    let template = json!({"spec": {"template": {"spec": {
        "containers": [{"name": "patch", "image": "debian:12"}]}}}});
    let key = format!("{CONTRACT_ANNOTATION_PREFIX}{}", "packages").len();
    let request = |name: &str, bytes: usize| JobRequest {
        template: &template,
        template_field: "spec.remediation.jobTemplate",
        name: name.to_owned(),
        namespace: &ns,
        labels: BTreeMap::new(),
        purpose: Purpose::Remediation,
        owner: OwnerReference {
            api_version: "patchloop.dev/v1alpha1".into(),
            kind: "Workload".into(),
            name: "owner".into(),
            uid: owner.uid().expect("uid"),
            controller: Some(true),
            block_owner_deletion: None,
        },
        deadline_seconds: 60,
        env: Vec::new(),
        files: BTreeMap::from([("packages".to_owned(), "p".repeat(bytes))]),
    };

    let at_limit = jobs::build(&request("at-limit", MAX_ANNOTATION_BYTES - key))
        .expect("a contract of exactly the limit");
    assert_eq!(
        jobs::create(&client, &at_limit).await.expect("created"),
        Created::New
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = support::eventually("the Pod of the largest Job", WAIT, async || {
        let list = pods
            .list(&ListParams::default().labels("job-name=at-limit"))
            .await
            .ok()?;
        list.items.into_iter().next()
    })
    .await;
    assert_eq!(
        pod.annotations()
            .get("patchloop.dev/contract-packages")
            .map(String::len),
        Some(MAX_ANNOTATION_BYTES - key),
        "the Pod carries the whole list, uncut"
    );

    match jobs::build(&request("over", MAX_ANNOTATION_BYTES - key + 1)) {
        Err(BuildError::ContractTooLarge { bytes, limit, .. }) => {
            assert_eq!((bytes, limit), (MAX_ANNOTATION_BYTES + 1, 262_144));
        }
        other => panic!("a contract over the limit must build no Job: {other:?}"),
    }
    // The apiserver agrees: the same Job with one byte more is refused.
    let mut over = at_limit.clone();
    over.metadata.name = Some("over".into());
    if let Some(a) = over
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.annotations.as_mut())
        .and_then(|a| a.get_mut("patchloop.dev/contract-packages"))
    {
        a.push('p');
    }
    match jobs::create(&client, &over).await {
        Err(kube::Error::Api(s)) if s.code == 422 => {
            assert!(s.message.contains("262144"), "{}", s.message);
        }
        other => panic!("the apiserver took annotations over its limit: {other:?}"),
    }
}

/// What etcd wrote, in its order (resourceVersion): each remediation Job's
/// creation and each Workload's first `Verified` record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Write {
    JobCreated(String),
    Verified(String),
}

/// Watches Jobs and Workloads of `ns` and logs [`Write`]s with their
/// resourceVersions (one etcd revision sequence orders both kinds).
struct WriteOrder {
    log: std::sync::Arc<std::sync::Mutex<Vec<(u64, Write)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteOrder {
    fn start(client: &kube::Client, ns: &str) -> WriteOrder {
        use futures::StreamExt;
        use kube::runtime::watcher::{self, Event};
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let push = |log: &std::sync::Arc<std::sync::Mutex<Vec<(u64, Write)>>>,
                    rv: Option<&String>,
                    write: Write| {
            let rv = rv.and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
            if let Ok(mut l) = log.lock()
                && !l.iter().any(|(_, w)| *w == write)
            {
                l.push((rv, write));
            }
        };
        let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
        let job_log = std::sync::Arc::clone(&log);
        let job_task = tokio::spawn(async move {
            let config = watcher::Config::default().labels(executor::OURS);
            let mut stream = watcher::watcher(jobs, config).boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(Event::Apply(j) | Event::InitApply(j)) = ev {
                    let w = label(&j, WORKLOAD_LABEL).to_owned();
                    push(
                        &job_log,
                        j.metadata.resource_version.as_ref(),
                        Write::JobCreated(w),
                    );
                }
            }
        });
        let workloads: Api<Workload> = Api::namespaced(client.clone(), ns);
        let wl_log = std::sync::Arc::clone(&log);
        let wl_task = tokio::spawn(async move {
            let mut stream = watcher::watcher(workloads, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                if let Ok(Event::Apply(w) | Event::InitApply(w)) = ev
                    && w.status.as_ref().and_then(phase) == Some(RemediationPhase::Verified)
                {
                    push(
                        &wl_log,
                        w.metadata.resource_version.as_ref(),
                        Write::Verified(w.name_any()),
                    );
                }
            }
        });
        WriteOrder {
            log,
            tasks: vec![job_task, wl_task],
        }
    }

    /// The writes so far, in etcd's order.
    fn ordered(&self) -> Vec<(u64, Write)> {
        let mut l = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_by_key(|(rv, _)| *rv);
        l
    }
}

impl Drop for WriteOrder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One run of issue 22's canary scenario: a Remediate policy in an open
/// window, canary 1, maxConcurrent 2, six non-compliant Workloads, Jobs
/// completed (and the fix reported) by the executor as soon as they
/// appear. Fails when a second Job was created before the canary's
/// Verified record, or more than 2 Jobs ran at once.
async fn canary_scenario(run: usize, failpoints: &str) {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace(&format!("canary{run}")).await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            json!({"maxConcurrent": 2, "canary": 1, "maxFailures": 6}),
        ),
    )
    .await;
    let names = fleet(&client, &ns, "vm", "gold", 6).await;
    let order = WriteOrder::start(&client, &ns);
    let watch = InFlightWatch::start(&client, &ns);
    let mut pl = Patchloop::spawn(
        env,
        &ns,
        &label_,
        &[],
        &[("PATCHLOOP_FAILPOINTS", failpoints)],
    );
    if failpoints.starts_with("exit-") {
        // The controller dies the moment its first Job exists, before its
        // ledger names the canary; the next one starts from the caches.
        let exit =
            tokio::task::spawn_blocking(move || pl.child.wait_timeout(Duration::from_secs(90)))
                .await
                .expect("join")
                .expect("wait")
                .unwrap_or_else(|| panic!("run {run}: {failpoints} to stop the controller"));
        assert_eq!(exit.code(), Some(86), "run {run}");
        pl = Patchloop::spawn(env, &ns, &label_, &[], &[]);
    }
    pl.ready().await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    support::eventually("all six remediated and verified", LONG_WAIT, async || {
        succeed_all(&client, &ns).await;
        all_verified(&workloads, &names).await.then_some(())
    })
    .await;
    // The watches deliver the last writes a little after the reads above.
    let writes = support::eventually("every write seen", WAIT, async || {
        let w = order.ordered();
        let verified = w
            .iter()
            .filter(|(_, w)| matches!(w, Write::Verified(_)))
            .count();
        (verified == 6).then_some(w)
    })
    .await;
    let Some((_, Write::JobCreated(canary))) = writes.first() else {
        panic!("run {run}: the first write is not a Job: {writes:?}");
    };
    let before_outcome: Vec<&Write> = writes
        .iter()
        .map(|(_, w)| w)
        .take_while(|w| **w != Write::Verified(canary.clone()))
        .collect();
    assert_eq!(
        before_outcome,
        [&Write::JobCreated(canary.clone())],
        "run {run} ({failpoints}): a second Job before the canary's outcome: {writes:?}"
    );
    assert!(
        watch.most() <= 2,
        "run {run}: {} in flight:\n{}",
        watch.most(),
        watch.history()
    );
    assert_eq!(watch.created(), 6, "run {run}: one Job per Workload");
}

/// Issue 22, point 1: twenty-one runs of the canary scenario, a third of
/// them with the Job watch 1 s behind and a third with the controller killed
/// the moment the canary's Job exists (its ledger never written); the
/// canary runs alone in every one.
#[tokio::test]
async fn the_canary_runs_alone_in_twenty_one_runs_with_cache_lag_and_crashes() {
    for run in 0..21 {
        let failpoints = ["", "job-watch-delay=1s", "exit-after-job-create"][run % 3];
        canary_scenario(run, failpoints).await;
    }
}

/// Kills the controller at `failpoint` (a point between two writes of a
/// remediation start), restarts it, and checks the rollout finishes: every
/// Workload Verified, one Job per Workload, nothing left in flight.
async fn crash_between_writes(failpoint: &str) {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("between").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    apply(
        &client,
        &ns,
        remediating_policy(
            "gold",
            "gold",
            json!({"maxConcurrent": 2, "canary": 1, "maxFailures": 4}),
        ),
    )
    .await;
    let names = fleet(&client, &ns, "host", "gold", 4).await;
    let watch = InFlightWatch::start(&client, &ns);
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    let mut crashing = Patchloop::spawn(
        env,
        &ns,
        &label_,
        &[],
        &[("PATCHLOOP_FAILPOINTS", failpoint)],
    );
    let exit =
        tokio::task::spawn_blocking(move || crashing.child.wait_timeout(Duration::from_secs(90)))
            .await
            .expect("join")
            .expect("wait")
            .unwrap_or_else(|| panic!("the failpoint {failpoint} to stop the controller"));
    assert_eq!(exit.code(), Some(86), "{failpoint}");
    let jobs = executor::jobs(&client, &ns).await;
    assert_eq!(
        jobs.len(),
        1,
        "{failpoint}: only the canary before the crash"
    );

    let _pl = Patchloop::start(env, &ns, &label_, &[]).await;
    support::eventually("every Workload verified", LONG_WAIT, async || {
        succeed_all(&client, &ns).await;
        all_verified(&workloads, &names).await.then_some(())
    })
    .await;
    let by = jobs_by_workload(&executor::jobs(&client, &ns).await);
    assert!(
        names.iter().all(|w| by.get(w).map(Vec::len) == Some(1)),
        "{failpoint}: {by:?}"
    );
    assert_eq!(watch.created(), 4, "{failpoint}:\n{}", watch.history());
    let ledger = support::eventually("the rollout to end", WAIT, async || {
        policy_status(&client, &ns, "gold")
            .await
            .and_then(|s| s.workloads)
            .filter(|c| c.compliant == 4 && c.remediating == 0)
    })
    .await;
    assert_eq!(ledger.failed, 0, "{failpoint}");
    assert!(
        executor::jobs(&client, &ns)
            .await
            .iter()
            .all(|j| !unfinished(j)),
        "{failpoint}: a Job left in flight"
    );
}

#[tokio::test]
async fn a_crash_after_the_rollout_round_wrote_its_ledger_never_duplicates_a_job() {
    crash_between_writes("exit-after-rollout-round").await;
}

#[tokio::test]
async fn a_crash_after_the_workload_recorded_its_job_never_duplicates_a_job() {
    crash_between_writes("exit-after-remediation-record").await;
}

/// A Job template the apiserver refuses keeps the policy from remediating
/// and says why on `Ready`, naming the field; the verdict holds for that
/// generation (no Job is created), and the corrected template is checked
/// again and accepted.
#[tokio::test]
async fn a_job_template_the_apiserver_refuses_is_named_on_ready_until_corrected() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("dry-run").await;
    let label_ = support::random_suffix();
    fixture_feeds(&client, &label_).await;
    let mut policy = remediating_policy("gold", "gold", json!({}));
    // A container name must be a DNS label: the dry-run create refuses it.
    policy["spec"]["remediation"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["name"] =
        json!("Not_A_Label");
    apply(&client, &ns, policy.clone()).await;
    fleet(&client, &ns, "web", "gold", 1).await;
    let _pl = Patchloop::start(env, &ns, &label_, &[]).await;
    let refused = support::eventually("Ready False naming the Job template", WAIT, async || {
        let status = policy_status(&client, &ns, "gold").await?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False"
            && ready.reason == "InvalidSpec"
            && ready.message.contains(
                "spec.remediation.jobTemplate: Job.batch \"patchloop-dry-run-gold\" is invalid",
            ))
        .then(|| ready.message.clone())
    })
    .await;
    assert!(refused.contains("Not_A_Label"), "{refused}");
    assert!(
        executor::jobs(&client, &ns).await.is_empty(),
        "a refused template created a Job"
    );

    policy["spec"]["remediation"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["name"] =
        json!("patch");
    apply(&client, &ns, policy).await;
    support::eventually("Ready True once corrected", WAIT, async || {
        let status = policy_status(&client, &ns, "gold").await?;
        (condition(&status.conditions, "Ready") == Some("True")).then_some(())
    })
    .await;
    support::eventually(
        "the remediation Job of the corrected policy",
        WAIT,
        async || executor::jobs(&client, &ns).await.into_iter().next(),
    )
    .await;
}
