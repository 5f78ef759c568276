//! Upstream remediation against a real Kubernetes 1.20.2 control plane:
//! Template compliance, the ChangeRequest lifecycle (approval bound to the
//! scope digest, build and test Jobs, nonce-checked results, publication),
//! the fleet view, `patchloop approve` / `reject`, and restarts at every
//! phase.
//!
//! Why simulated (`support::executor`): they report build results as Inventories and finish
//! Jobs through the status subresource, to stop at every phase (restarts) and to forge results;
//! a real rebuild needs the local registry of the image-pipeline issue.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use patchloop::api::change_request::ChangeRequestPhase;
use patchloop::api::inventory::{InventorySubject, SubjectKind};
use patchloop::api::policy::TemplateApproval;
use patchloop::api::{ChangeRequest, PatchPolicy, Template, Workload};
use patchloop::controller::jobs::contract_file;
use serde_json::{Value, json};
use support::objects::*;
use support::patchloop::Patchloop;

const OPENSSH_OLD: &str = "openssh-client 1:9.2p1-2+deb12u1 openssh";
const OPENSSH_FIXED: &str = "openssh-client 1:9.2p1-2+deb12u2 openssh";
const RSYNC_OLD: &str = "rsync 3.2.7-1";
const RSYNC_FIXED: &str = "rsync 3.2.7-1+deb12u2";
const LIBWEBP_OLD: &str = "libwebp7 1.2.4-0.2 libwebp";
const BASH: &str = "bash 5.2.15-2+b8 bash 5.2.15-2";

// ---------------------------------------------------------------- objects

/// A build result for ChangeRequest `cr`, under the one name that may
/// speak for it.
fn build_result(cr: &str, nonce: &str, image: &str, packages: &[&str]) -> Value {
    let name = InventorySubject {
        kind: SubjectKind::ChangeRequest,
        name: cr.to_owned(),
        revision: None,
    }
    .canonical_inventory_name();
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": name},
        "spec": {
            "subject": {"kind": "ChangeRequest", "name": cr},
            "reporter": "build-job", "reportedAt": "2026-11-24T08:00:00Z", "format": "dpkg",
            "packages": packages, "image": image, "nonce": nonce,
        }
    })
}

fn provisioned(name: &str, labels: Value, template: &str, revision: i64) -> Value {
    let mut w = workload(name, labels);
    w["spec"]["templateRef"] = json!({"name": template, "revision": revision});
    w
}

/// Feeds of single fixture records (so a test controls which advisories
/// exist) plus the KEV catalog.
async fn feeds_of(client: &kube::Client, label: &str, records: &[&str]) {
    for r in records {
        let name = format!("{}-{label}", r.to_lowercase());
        apply(
            client,
            "",
            feed(
                &name,
                label,
                "OSV",
                &format!("{FIXTURES}/osv/debian/{r}.json"),
            ),
        )
        .await;
    }
    apply(
        client,
        "",
        feed(
            &format!("kev-{label}"),
            label,
            "KEV",
            &format!("{FIXTURES}/kev/known_exploited_vulnerabilities.json"),
        ),
    )
    .await;
}

// ---------------------------------------------------------------- controller

/// Starts the controller with failpoints: it exits by itself (code 86) at
/// the failpoint, so readiness is not awaited.
fn start_failing(env: &support::TestEnv, ns: &str, label: &str, failpoint: &str) -> Patchloop {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_patchloop"));
    cmd.arg("run")
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(["--namespace", ns])
        .args(["--feed-selector", &format!("patchloop-test={label}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "info,patchloop=debug"])
        .env_remove("KUBECONFIG")
        .env("PATCHLOOP_FAILPOINTS", failpoint)
        .stdin(Stdio::null());
    Patchloop {
        child: support::spawn_managed("patchloop", cmd),
        port,
    }
}

async fn exits_at_failpoint(pl: &mut Patchloop) {
    let status = support::eventually(
        "the controller to stop at its failpoint",
        WAIT,
        async || pl.child.try_wait().ok().flatten(),
    )
    .await;
    assert_eq!(status.code(), Some(86), "{status:?}");
}

fn decide(env: &support::TestEnv, verb: &str, ns: &str, cr: &str, reason: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchloop"))
        .args([
            verb,
            cr,
            "--reason",
            reason,
            "--namespace",
            ns,
            "--kubeconfig",
        ])
        .arg(env.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .expect("running patchloop")
}

/// `patchloop approve --digest <digest>`: approves exactly what was reviewed.
fn approve_reviewed(env: &support::TestEnv, ns: &str, cr: &str, digest: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchloop"))
        .args(["approve", cr, "--reason", "reviewed", "--digest", digest])
        .args(["--namespace", ns, "--kubeconfig"])
        .arg(env.kubeconfig())
        .env_remove("KUBECONFIG")
        .output()
        .expect("running patchloop")
}

fn decide_ok(env: &support::TestEnv, verb: &str, ns: &str, cr: &str, reason: &str) {
    let out = decide(env, verb, ns, cr, reason);
    assert!(
        out.status.success(),
        "patchloop {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- readers

fn phase(cr: &ChangeRequest) -> Option<ChangeRequestPhase> {
    cr.status.as_ref().and_then(|s| s.phase)
}

/// Waits until the Template has exactly one ChangeRequest in `phase` (and
/// returns it).
async fn request_in(
    client: &kube::Client,
    ns: &str,
    template: &str,
    want: ChangeRequestPhase,
) -> ChangeRequest {
    support::eventually(
        &format!("a ChangeRequest of {template} in {want:?}"),
        WAIT,
        async || {
            let all = requests(client, ns, template).await;
            let matching: Vec<_> = all.into_iter().filter(|c| phase(c) == Some(want)).collect();
            assert!(
                matching.len() <= 1,
                "several requests in {want:?}: {matching:?}"
            );
            matching.into_iter().next()
        },
    )
    .await
}

async fn request_named(client: &kube::Client, ns: &str, name: &str) -> ChangeRequest {
    let api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    api.get(name).await.expect("ChangeRequest")
}

async fn wait_phase(
    client: &kube::Client,
    ns: &str,
    name: &str,
    want: ChangeRequestPhase,
) -> ChangeRequest {
    let api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("{name} to be {want:?}"), WAIT, async || {
        api.get(name).await.ok().filter(|c| phase(c) == Some(want))
    })
    .await
}

async fn template_status(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> patchloop::api::TemplateStatus {
    let api: Api<Template> = Api::namespaced(client.clone(), ns);
    api.get_status(name)
        .await
        .ok()
        .and_then(|t| t.status)
        .unwrap_or_default()
}

async fn jobs_of(client: &kube::Client, ns: &str, cr: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("patchloop.dev/change-request={cr}")))
        .await
        .expect("listing Jobs")
        .items
}

fn job_env(job: &Job, name: &str) -> Option<String> {
    job.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

async fn wait_job(client: &kube::Client, ns: &str, name: &str) -> Job {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("Job {name}"), WAIT, async || {
        api.get_opt(name).await.ok().flatten()
    })
    .await
}

/// Ends build Job `name` as a build container that reported `image` with
/// `packages` would: its Pod's termination message ends with the result
/// line, then the Job is `Complete`.
async fn finish_build(client: &kube::Client, ns: &str, name: &str, image: &str, packages: &[&str]) {
    support::executor::end_pod(client, ns, name, 0, &build_result_line(image, packages)).await;
    finish_job(client, ns, name, None).await;
}

/// Plays the Job's executor: a `Complete` or `Failed` condition through the
/// status subresource (and, for a failure, a terminated container with a
/// termination message on the Job's Pod).
async fn finish_job(client: &kube::Client, ns: &str, name: &str, failure: Option<&str>) {
    let now = jiff::Timestamp::now();
    let now = jiff::Timestamp::from_second(now.as_second())
        .expect("time")
        .to_string();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let status = match failure {
        None => json!({"status": {
            "startTime": now, "completionTime": now, "succeeded": 1,
            "conditions": [{"type": "Complete", "status": "True",
                            "lastProbeTime": now, "lastTransitionTime": now}]
        }}),
        Some(message) => {
            support::executor::end_pod(client, ns, name, 1, message).await;
            json!({"status": {
                "startTime": now, "failed": 1,
                "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                "message": "Job has reached the specified backoff limit",
                                "lastProbeTime": now, "lastTransitionTime": now}]
            }})
        }
    };
    // The 1.20 Job controller writes a whole status it computed (re-read,
    // then overwritten) and can undo a patch racing with its own sync: set
    // the outcome until it stays.
    let finished = |job: &Job| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            })
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap_or_else(|e| panic!("finishing Job {name}: {e}"));
        let mut stayed = true;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let job = jobs.get(name).await.expect("the Job");
            stayed &= finished(&job);
        }
        if stayed {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Job {name} never stayed finished"
        );
    }
}

/// The nonce only the build Job of request `cr` received (the tests play
/// that Job); status holds its hash only.
async fn nonce_of(client: &kube::Client, ns: &str, cr: &str) -> String {
    let job = wait_job(client, ns, &format!("{cr}-build")).await;
    job_env(&job, "PATCHLOOP_NONCE").expect("the build Job's nonce")
}

/// A digest reference to a built image named `tag`.
fn digest_image(tag: &str) -> String {
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(tag.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("registry.example/golden/{tag}@sha256:{hex}")
}

fn scope_ids(cr: &ChangeRequest) -> Vec<String> {
    cr.status
        .as_ref()
        .and_then(|s| s.scope.as_ref())
        .map(|s| s.advisories.iter().map(|a| a.id.clone()).collect())
        .unwrap_or_default()
}

fn digest_of(cr: &ChangeRequest) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.scope.as_ref())
        .map(|s| s.digest.clone())
        .expect("a scope")
}

/// The status fields a field manager owns on an object (from managedFields).
fn owned_status_fields<K: kube::Resource>(obj: &K, manager: &str) -> Vec<String> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(manager))
        .filter_map(|m| m.fields_v1.as_ref())
        .filter_map(|f| f.0.get("f:status").and_then(Value::as_object))
        .flat_map(|o| o.keys().cloned())
        .collect()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn an_approved_request_builds_tests_and_publishes_the_next_revision() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-publish").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({"tier": "gold"}), TemplateApproval::Required),
    )
    .await;
    apply(&client, &ns, template("base", json!({"tier": "gold"}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", &[OPENSSH_OLD, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;
    // A machine provisioned from revision 1, with its own fixed inventory.
    apply(
        &client,
        &ns,
        provisioned("web-01", json!({"tier": "gold"}), "base", 1),
    )
    .await;
    apply(
        &client,
        &ns,
        workload_inventory("web-01", &[OPENSSH_FIXED, BASH]),
    )
    .await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;

    // One request, waiting for a person; no Job.
    let cr = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    let name = cr.metadata.name.clone().expect("name");
    assert!(name.starts_with("base-"), "{name}");
    assert!(
        cr.metadata.owner_references.is_none(),
        "the audit trail is not owned"
    );
    let status = cr.status.clone().expect("status");
    let mut ids = scope_ids(&cr);
    ids.sort();
    assert_eq!(ids, ["CVE-2023-51385", "DSA-5586-1"]);
    let scope = status.scope.clone().expect("scope");
    assert_eq!(scope.packages.len(), 1);
    assert_eq!(
        (
            scope.packages[0].name.as_str(),
            scope.packages[0].fixed.as_str()
        ),
        ("openssh-client", "1:9.2p1-2+deb12u2")
    );
    assert!(scope.advisories.iter().all(|a| a.due.is_some()));
    assert_eq!(status.policy.as_deref(), Some("gold"));
    assert_eq!(
        (status.base_revision, status.target_revision),
        (Some(1), Some(2))
    );
    assert!(
        status
            .timestamps
            .as_ref()
            .and_then(|t| t.awaiting_approval.clone())
            .is_some()
    );
    let ts = support::eventually("the Template to name its request", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        (s.change_request.as_deref() == Some(name.as_str())).then_some(s)
    })
    .await;
    assert_eq!(condition(&ts.conditions, "Compliant"), Some("False"));
    assert_eq!(condition(&ts.conditions, "ChangeRequestOpen"), Some("True"));
    assert_eq!(condition(&ts.conditions, "Ready"), Some("True"));
    support::eventually("Events on the Template", WAIT, async || {
        let out = env.kubectl(["get", "events", "-n", &ns, "-o", "json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (text.contains("ChangeRequestOpened") && text.contains("NonCompliant")).then_some(())
    })
    .await;
    // The Template reconciled again, and through it its open request.
    let template_pass = pl.counters("template").await;
    let woken = pl.wake_and_count(&client, &ns, "gold", "change", 1).await;
    pl.reconciled_after("template", &template_pass, 1).await;
    assert_eq!(woken.jobs_created(), 0.0, "a Job before approval");
    assert!(
        jobs_of(&client, &ns, &name).await.is_empty(),
        "a Job before approval"
    );
    assert_eq!(requests(&client, &ns, "base").await.len(), 1);

    // Approve from the command line: the build Job runs with the contract.
    decide_ok(env, "approve", &ns, &name, "CHG-7: openssh fix");
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Building).await;
    let approval = cr
        .status
        .as_ref()
        .and_then(|s| s.approval.clone())
        .expect("approval");
    assert_eq!(approval.by, "Person");
    assert_eq!(
        approval.field_manager.as_deref(),
        Some(format!("patchloop-approve:{}", support::ADMIN_USER).as_str())
    );
    assert_eq!(approval.reason.as_deref(), Some("CHG-7: openssh fix"));
    assert_eq!(approval.digest.as_deref(), Some(scope.digest.as_str()));
    let build_name = cr
        .status
        .as_ref()
        .and_then(|s| s.build_job.clone())
        .expect("build job");
    let build = wait_job(&client, &ns, &build_name).await;
    // The nonce went to the build Job only: status keeps its hash.
    let nonce = job_env(&build, "PATCHLOOP_NONCE").expect("the build Job's nonce");
    assert_eq!(nonce.len(), 32, "{nonce}");
    let status_json = serde_json::to_string(&cr.status).expect("json");
    assert!(!status_json.contains(&nonce), "{status_json}");
    assert_eq!(
        cr.status.as_ref().and_then(|s| s.nonce_hash.clone()),
        Some(patchloop::engine::change::nonce_hash(&nonce))
    );
    assert_eq!(
        job_env(&build, "PATCHLOOP_BASE_IMAGE").as_deref(),
        Some("registry.example/golden/base:1")
    );
    assert_eq!(
        job_env(&build, "PATCHLOOP_TEMPLATE").as_deref(),
        Some("base")
    );
    assert_eq!(
        job_env(&build, "PATCHLOOP_CHANGE_REQUEST").as_deref(),
        Some(name.as_str())
    );
    // The contract files are in the Job's own Pod template.
    assert_eq!(
        contract_file(&build, "packages"),
        Some("openssh-client 1:9.2p1-2+deb12u2 openssh\n")
    );

    // A result with the wrong nonce is ignored, even once the build ends.
    let new_image = digest_image("base-2");
    let wrong = build_result(
        &name,
        "not-the-nonce",
        "registry.example/evil:1",
        &[OPENSSH_FIXED, BASH],
    );
    apply(&client, &ns, wrong.clone()).await;
    finish_build(
        &client,
        &ns,
        &build_name,
        &new_image,
        &[OPENSSH_FIXED, BASH],
    )
    .await;
    let woken = pl.wake_and_count(&client, &ns, "gold", "change", 1).await;
    assert_eq!(woken.jobs_created(), 0.0, "no test Job yet");
    let cr = request_named(&client, &ns, &name).await;
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::Building));
    assert!(cr.status.as_ref().and_then(|s| s.result.clone()).is_none());
    assert_eq!(
        jobs_of(&client, &ns, &name).await.len(),
        1,
        "no test Job yet"
    );

    // The real result, written once (a result is never rewritten: the
    // stray one is deleted first): the test Job runs against the new image.
    let inventories: Api<patchloop::api::Inventory> = Api::namespaced(client.clone(), &ns);
    inventories
        .delete(
            wrong["metadata"]["name"].as_str().expect("name"),
            &DeleteParams::default(),
        )
        .await
        .expect("deleting the stray result");
    apply(
        &client,
        &ns,
        build_result(&name, &nonce, &new_image, &[OPENSSH_FIXED, BASH]),
    )
    .await;
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Testing).await;
    let test_name = cr
        .status
        .as_ref()
        .and_then(|s| s.test_job.clone())
        .expect("test job");
    let test = wait_job(&client, &ns, &test_name).await;
    assert_eq!(
        job_env(&test, "PATCHLOOP_IMAGE").as_deref(),
        Some(new_image.as_str())
    );
    assert_eq!(job_env(&test, "PATCHLOOP_NONCE"), None);
    finish_job(&client, &ns, &test_name, None).await;

    // Published: revision 2, its image and history, the request closed.
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Published).await;
    let stamps = cr
        .status
        .as_ref()
        .and_then(|s| s.timestamps.clone())
        .expect("stamps");
    for (phase, at) in [
        ("awaitingApproval", &stamps.awaiting_approval),
        ("approved", &stamps.approved),
        ("building", &stamps.building),
        ("testing", &stamps.testing),
        ("published", &stamps.published),
    ] {
        assert!(at.is_some(), "no {phase} timestamp: {stamps:?}");
    }
    let ts = support::eventually(
        "the Template to be compliant on revision 2",
        WAIT,
        async || {
            let s = template_status(&client, &ns, "base").await;
            // (The request closes just after publication: the Template may
            // name it for a moment.)
            (s.revision == Some(2)
                && condition(&s.conditions, "Compliant") == Some("True")
                && s.change_request.is_none())
            .then_some(s)
        },
    )
    .await;
    assert_eq!(ts.image.as_deref(), Some(new_image.as_str()));
    let revisions: Vec<(i64, Option<&str>, Option<&str>)> = ts
        .history
        .iter()
        .map(|h| {
            (
                h.revision,
                h.inventory.as_deref(),
                h.change_request.as_deref(),
            )
        })
        .collect();
    let result = format!("changerequest-{name}");
    assert_eq!(
        revisions,
        [
            (1, Some("template-base-r1"), None),
            (2, Some(result.as_str()), Some(name.as_str()))
        ]
    );
    assert!(ts.change_request.is_none());
    assert_eq!(
        condition(&ts.conditions, "ChangeRequestOpen"),
        Some("False")
    );
    // Two writers, two field managers, neither deleting the other's fields.
    let templates: Api<Template> = Api::namespaced(client.clone(), &ns);
    let t = templates.get("base").await.expect("template");
    let change_fields = owned_status_fields(&t, "patchloop-change");
    let template_fields = owned_status_fields(&t, "patchloop-template");
    for f in ["f:revision", "f:image", "f:history"] {
        assert!(
            change_fields.iter().any(|x| x == f),
            "{f}: {change_fields:?}"
        );
        assert!(
            !template_fields.iter().any(|x| x == f),
            "{f}: {template_fields:?}"
        );
    }
    assert!(
        template_fields.iter().any(|x| x == "f:conditions"),
        "{template_fields:?}"
    );

    // The fleet view: web-01 runs revision 1 of 2.
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let web = support::eventually("web-01 to be on an old revision", WAIT, async || {
        workload_status(&workloads, "web-01")
            .await
            .filter(|s| condition(&s.conditions, "TemplateCurrent") == Some("False"))
    })
    .await;
    let tstat = web.template.expect("template status");
    assert_eq!((tstat.revision, tstat.latest), (Some(1), Some(2)));
    // New machines without inventory: judged by their revision's image.
    apply(
        &client,
        &ns,
        provisioned("web-02", json!({"tier": "gold"}), "base", 1),
    )
    .await;
    apply(
        &client,
        &ns,
        provisioned("web-03", json!({"tier": "gold"}), "base", 2),
    )
    .await;
    let old = support::eventually("web-02 non-compliant from revision 1", WAIT, async || {
        workload_status(&workloads, "web-02")
            .await
            .filter(|s| in_state(s, "Overdue"))
    })
    .await;
    assert!(old.inventory.as_ref().is_some_and(|i| i.provisional));
    assert_eq!(condition(&old.conditions, "InventoryFresh"), Some("False"));
    assert_eq!(
        condition_reason(&old.conditions, "InventoryFresh"),
        Some("Provisional")
    );
    let new = support::eventually("web-03 compliant from revision 2", WAIT, async || {
        workload_status(&workloads, "web-03")
            .await
            .filter(|s| in_state(s, "Compliant"))
    })
    .await;
    assert_eq!(
        new.inventory.as_ref().and_then(|i| i.name.as_deref()),
        Some(result.as_str())
    );
    assert_eq!(condition(&new.conditions, "TemplateCurrent"), Some("True"));
    let ts = support::eventually("two stale Workloads on the Template", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        (s.stale_workloads == 2).then_some(s)
    })
    .await;
    assert_eq!(ts.revision, Some(2));
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    let counts = support::eventually("policy template counts", WAIT, async || {
        let s = policies.get_status("gold").await.ok()?.status?;
        let (t, w) = (s.templates?, s.workloads?);
        (t.compliant == 1 && t.stale == 1 && w.stale_template == 2).then_some(t)
    })
    .await;
    assert_eq!(
        (
            counts.matched,
            counts.non_compliant,
            counts.change_requests_open
        ),
        (1, 0, 0)
    );
    // A steady state writes nothing: the Template and the closed request
    // keep their resourceVersions while the controller keeps running.
    let crs: Api<ChangeRequest> = Api::namespaced(client.clone(), &ns);
    let versions = async || {
        (
            templates
                .get("base")
                .await
                .ok()
                .and_then(|t| t.metadata.resource_version),
            crs.get(&name)
                .await
                .ok()
                .and_then(|c| c.metadata.resource_version),
        )
    };
    let before = versions().await;
    let woken = pl.wake_and_count(&client, &ns, "gold", "template", 1).await;
    assert_eq!(versions().await, before, "writes in a steady state");
    assert_eq!(woken.status_writes(), 0.0, "writes in a steady state");
    // kubectl wait works on the new kinds and on build results.
    for target in [
        "template/base".to_owned(),
        format!("changerequest/{name}"),
        "inventory/template-base-r1".to_owned(),
        format!("inventory/{result}"),
    ] {
        let out = env.kubectl([
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "--timeout=60s",
            &target,
        ]);
        assert!(
            out.status.success(),
            "{target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Closed requests take no more decisions.
    let out = decide(env, "reject", &ns, &name, "too late");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already closed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = decide(env, "approve", &ns, "no-such-request", "x");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[tokio::test]
async fn a_failed_test_leaves_the_published_image_and_fails_the_request() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-fail").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("auto", json!({}), TemplateApproval::Automatic),
    )
    .await;
    apply(&client, &ns, template("base", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", &[OPENSSH_OLD, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;

    // Automatic: straight to the build.
    let cr = request_in(&client, &ns, "base", ChangeRequestPhase::Building).await;
    let name = cr.metadata.name.clone().expect("name");
    assert_eq!(
        cr.status
            .as_ref()
            .and_then(|s| s.approval.as_ref())
            .map(|a| a.by.as_str()),
        Some("Policy")
    );
    let build_name = cr
        .status
        .as_ref()
        .and_then(|s| s.build_job.clone())
        .expect("build");
    wait_job(&client, &ns, &build_name).await;
    apply(
        &client,
        &ns,
        build_result(
            &name,
            &nonce_of(&client, &ns, &name).await,
            &digest_image("base-3"),
            &[OPENSSH_FIXED, BASH],
        ),
    )
    .await;
    finish_build(
        &client,
        &ns,
        &build_name,
        &digest_image("base-3"),
        &[OPENSSH_FIXED, BASH],
    )
    .await;
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Testing).await;
    let test_name = cr
        .status
        .as_ref()
        .and_then(|s| s.test_job.clone())
        .expect("test");
    wait_job(&client, &ns, &test_name).await;
    finish_job(
        &client,
        &ns,
        &test_name,
        Some("sshd did not start on the new image"),
    )
    .await;

    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Failed).await;
    let message = cr
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.contains("test failed"), "{message}");
    assert!(
        message.contains("sshd did not start on the new image"),
        "{message}"
    );
    assert!(message.contains("BackoffLimitExceeded"), "{message}");
    let ts = support::eventually("the Template to show the failure", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        (condition(&s.conditions, "ChangeRequestOpen") == Some("False")).then_some(s)
    })
    .await;
    assert_eq!(ts.revision, None, "revision 1 stays published");
    assert_eq!(ts.image, None);
    assert!(ts.history.is_empty());
    assert_eq!(condition(&ts.conditions, "Compliant"), Some("False"));
    // The same findings do not reopen a request by themselves.
    pl.wake_and_count(&client, &ns, "auto", "template", 1).await;
    assert_eq!(requests(&client, &ns, "base").await.len(), 1);

    // A Template whose test template is unusable is not Ready and opens
    // nothing; fixing its spec retries with a new request.
    let mut broken = template("base", json!({}));
    broken["spec"]["testJobTemplate"] = json!({"spec": {"template": {"spec": {"containers": []}}}});
    apply(&client, &ns, broken).await;
    let ts = support::eventually("the Template to be invalid", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        (condition(&s.conditions, "Ready") == Some("False")).then_some(s)
    })
    .await;
    let ready = ts
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert!(
        ready.message.contains("spec.testJobTemplate"),
        "{}",
        ready.message
    );
    pl.wake_and_count(&client, &ns, "auto", "template", 1).await;
    assert_eq!(requests(&client, &ns, "base").await.len(), 1);
    let mut fixed = template("base", json!({}));
    fixed["spec"]["testJobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"] =
        json!(["/bin/sh", "-c", "smoke-test --wait-for sshd"]);
    apply(&client, &ns, fixed).await;
    let retry = request_in(&client, &ns, "base", ChangeRequestPhase::Building).await;
    assert_ne!(retry.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(requests(&client, &ns, "base").await.len(), 2);
}

/// How a build ends in [`failed_builds_and_unpublishable_images_leave_the_template_as_it_was`].
enum BuildEnd {
    /// The build succeeds and reports these packages; the test succeeds.
    Reports(&'static [&'static str]),
    /// The build Job fails with this termination message.
    Fails(&'static str),
}

#[tokio::test]
async fn failed_builds_and_unpublishable_images_leave_the_template_as_it_was() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-unpublishable").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("auto", json!({}), TemplateApproval::Automatic),
    )
    .await;
    // Three templates needing the openssh fix, rebuilt at once; each build
    // ends one way, and none may be published.
    let cases = [
        (
            // openssh-client stays below its fixed version.
            "uncovered",
            BuildEnd::Reports(&[OPENSSH_OLD, BASH]),
            "NotPublishable",
            [
                "does not cover the scope",
                "openssh-client 1:9.2p1-2+deb12u1 < 1:9.2p1-2+deb12u2",
            ],
        ),
        (
            // openssh is fixed, but an old rsync the current image lacks
            // comes along.
            "worse",
            BuildEnd::Reports(&[OPENSSH_FIXED, RSYNC_OLD, BASH]),
            "NotPublishable",
            ["findings the current revision lacks", "DSA-5843-1"],
        ),
        (
            "broken",
            BuildEnd::Fails("E: Unable to fetch openssh-client"),
            "BuildFailed",
            ["the build failed", "E: Unable to fetch openssh-client"],
        ),
    ];
    for (name, ..) in &cases {
        apply(&client, &ns, template(name, json!({}))).await;
        apply(
            &client,
            &ns,
            template_inventory(name, &[OPENSSH_OLD, BASH], "2026-11-24T08:00:00Z"),
        )
        .await;
    }
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;

    let mut open = Vec::new();
    for (name, end, ..) in &cases {
        let cr = request_in(&client, &ns, name, ChangeRequestPhase::Building).await;
        let cr_name = cr.metadata.name.clone().expect("name");
        let build = format!("{cr_name}-build");
        wait_job(&client, &ns, &build).await;
        let before = template_status(&client, &ns, name).await;
        match end {
            BuildEnd::Reports(packages) => {
                apply(
                    &client,
                    &ns,
                    build_result(
                        &cr_name,
                        &nonce_of(&client, &ns, &cr_name).await,
                        &digest_image(&format!("{name}-6")),
                        packages,
                    ),
                )
                .await;
                finish_build(
                    &client,
                    &ns,
                    &build,
                    &digest_image(&format!("{name}-6")),
                    packages,
                )
                .await;
                wait_phase(&client, &ns, &cr_name, ChangeRequestPhase::Testing).await;
                let test = format!("{cr_name}-test");
                wait_job(&client, &ns, &test).await;
                finish_job(&client, &ns, &test, None).await;
            }
            BuildEnd::Fails(message) => finish_job(&client, &ns, &build, Some(message)).await,
        }
        open.push((cr_name, before));
    }

    for ((name, _, reason, says), (cr_name, before)) in cases.iter().zip(open) {
        let cr = wait_phase(&client, &ns, &cr_name, ChangeRequestPhase::Failed).await;
        let status = cr.status.clone().unwrap_or_default();
        assert_eq!(
            condition_reason(&status.conditions, "Ready"),
            Some(*reason),
            "{name}: {status:?}"
        );
        let message = status.message.clone().unwrap_or_default();
        for part in says {
            assert!(message.contains(part), "{name}: {message}");
        }
        assert!(
            status
                .timestamps
                .as_ref()
                .is_some_and(|t| t.failed.is_some()),
            "{name}: {status:?}"
        );
        let after = support::eventually(
            &format!("{name} to show the failed request"),
            WAIT,
            async || {
                let s = template_status(&client, &ns, name).await;
                (condition(&s.conditions, "ChangeRequestOpen") == Some("False")).then_some(s)
            },
        )
        .await;
        assert_eq!(
            (&after.revision, &after.image, &after.history),
            (&before.revision, &before.image, &before.history),
            "{name}: the published revision changed"
        );
        assert_eq!(condition(&after.conditions, "Compliant"), Some("False"));
    }
}

#[tokio::test]
async fn automatic_for_emergency_builds_critical_fixes_and_waits_for_medium_ones() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-emergency").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({}), TemplateApproval::AutomaticForEmergency),
    )
    .await;
    apply(&client, &ns, template("medium", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory("medium", &[OPENSSH_OLD, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;
    apply(&client, &ns, template("critical", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory("critical", &[RSYNC_OLD, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;

    let critical = request_in(&client, &ns, "critical", ChangeRequestPhase::Building).await;
    let cname = critical.metadata.name.clone().expect("name");
    assert!(
        critical
            .status
            .as_ref()
            .and_then(|s| s.scope.as_ref())
            .is_some_and(|s| s
                .advisories
                .iter()
                .any(|a| a.severity.to_string() == "critical"))
    );
    wait_job(&client, &ns, &format!("{cname}-build")).await;
    let medium = request_in(&client, &ns, "medium", ChangeRequestPhase::AwaitingApproval).await;
    let message = medium
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.contains("emergency"), "{message}");
    let mname = medium.metadata.name.clone().expect("name");
    // Both open requests reconciled again, through their Templates.
    pl.wake_and_count(&client, &ns, "gold", "change", 2).await;
    assert!(jobs_of(&client, &ns, &mname).await.is_empty());
    assert_eq!(
        phase(&request_named(&client, &ns, &mname).await),
        Some(ChangeRequestPhase::AwaitingApproval)
    );
}

#[tokio::test]
async fn a_scope_change_voids_the_approval_and_late_advisories_wait_for_the_next_request() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-scope").await;
    let label = support::random_suffix();
    // Only the openssh and rsync records at first; libwebp's arrives later.
    feeds_of(
        &client,
        &label,
        &[
            "CVE-2023-51385",
            "DSA-5586-1",
            "DSA-5843-1",
            "CVE-2024-12084",
        ],
    )
    .await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({}), TemplateApproval::Required),
    )
    .await;
    apply(&client, &ns, template("base", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory(
            "base",
            &[OPENSSH_OLD, LIBWEBP_OLD, BASH],
            "2026-11-24T08:00:00Z",
        ),
    )
    .await;
    let mut pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    let name = cr.metadata.name.clone().expect("name");
    let first = digest_of(&cr);

    // Approved while the controller is down; then the scope changes (the
    // image turns out to carry an old rsync too).
    pl.child.kill().expect("SIGKILL");
    decide_ok(env, "approve", &ns, &name, "openssh only");
    apply(
        &client,
        &ns,
        template_inventory(
            "base",
            &[OPENSSH_OLD, RSYNC_OLD, LIBWEBP_OLD, BASH],
            "2026-11-24T08:00:00Z",
        ),
    )
    .await;
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = support::eventually("the scope to change", WAIT, async || {
        let c = request_named(&client, &ns, &name).await;
        (c.status.as_ref()?.scope.as_ref()?.digest != first).then_some(c)
    })
    .await;
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::AwaitingApproval));
    let message = cr
        .status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default();
    assert!(message.contains("new approval"), "{message}");
    assert!(
        cr.status
            .as_ref()
            .and_then(|s| s.approval.clone())
            .is_none()
    );
    // The person's spec is left alone.
    assert_eq!(
        cr.spec.decision.as_ref().map(|d| d.digest.as_str()),
        Some(first.as_str())
    );
    pl.wake_and_count(&client, &ns, "gold", "change", 1).await;
    assert!(jobs_of(&client, &ns, &name).await.is_empty());
    let mut ids = scope_ids(&cr);
    ids.sort();
    assert_eq!(
        ids,
        [
            "CVE-2023-51385",
            "CVE-2024-12084",
            "DSA-5586-1",
            "DSA-5843-1"
        ]
    );

    // Approving again proceeds.
    decide_ok(env, "approve", &ns, &name, "openssh and rsync");
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Building).await;
    let frozen = digest_of(&cr);
    let build_name = cr
        .status
        .as_ref()
        .and_then(|s| s.build_job.clone())
        .expect("build");
    wait_job(&client, &ns, &build_name).await;

    // An advisory arrives during the build: the scope stays frozen.
    feeds_of(&client, &label, &["DSA-5497-1"]).await;
    support::eventually("the Template to see the new advisory", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        s.findings
            .iter()
            .any(|f| &*f.advisory == "DSA-5497-1")
            .then_some(())
    })
    .await;
    let cr = request_named(&client, &ns, &name).await;
    assert_eq!(digest_of(&cr), frozen);
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::Building));

    // The build fixes the scope, not the late advisory: still publishable.
    apply(
        &client,
        &ns,
        build_result(
            &name,
            &nonce_of(&client, &ns, &name).await,
            &digest_image("base-4"),
            &[OPENSSH_FIXED, RSYNC_FIXED, LIBWEBP_OLD, BASH],
        ),
    )
    .await;
    finish_build(
        &client,
        &ns,
        &build_name,
        &digest_image("base-4"),
        &[OPENSSH_FIXED, RSYNC_FIXED, LIBWEBP_OLD, BASH],
    )
    .await;
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Testing).await;
    let test_name = cr
        .status
        .as_ref()
        .and_then(|s| s.test_job.clone())
        .expect("test");
    wait_job(&client, &ns, &test_name).await;
    finish_job(&client, &ns, &test_name, None).await;
    wait_phase(&client, &ns, &name, ChangeRequestPhase::Published).await;

    // ... and goes to the next request.
    let next = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    assert_ne!(next.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(scope_ids(&next), ["DSA-5497-1"]);
    assert_eq!(next.status.as_ref().and_then(|s| s.base_revision), Some(2));
    assert_eq!(requests(&client, &ns, "base").await.len(), 2);
}

#[tokio::test]
async fn a_rejection_stands_until_the_findings_change_and_requests_outlive_their_template() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-reject").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    // An inventory far older than inventoryMaxAge: images do not age.
    let mut gold = template_policy("gold", json!({}), TemplateApproval::Required);
    gold["spec"]["inventoryMaxAge"] = json!("1s");
    apply(&client, &ns, gold).await;
    apply(&client, &ns, template("base", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", &[OPENSSH_OLD, BASH], "2026-11-14T08:00:00Z"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Before the controller ever saw it, a request has no scope to decide on.
    apply(
        &client,
        &ns,
        json!({"apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
               "metadata": {"name": "by-hand"}, "spec": {"template": "ghost"}}),
    )
    .await;
    let out = decide(env, "approve", &ns, "by-hand", "x");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no scope yet"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    let name = cr.metadata.name.clone().expect("name");
    let ts = template_status(&client, &ns, "base").await;
    assert_eq!(
        ts.compliance
            .as_ref()
            .and_then(|c| c.state)
            .map(|s| s.to_string())
            .as_deref(),
        Some("Overdue")
    );

    decide_ok(
        env,
        "reject",
        &ns,
        &name,
        "openssh upgrade breaks the appliance",
    );
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Rejected).await;
    let record = cr
        .status
        .as_ref()
        .and_then(|s| s.approval.clone())
        .expect("record");
    assert_eq!(format!("{:?}", record.verdict), "Rejected");
    assert!(
        cr.status
            .as_ref()
            .and_then(|s| s.timestamps.as_ref())
            .is_some_and(|t| t.awaiting_approval.is_some() && t.rejected.is_some()),
        "{:?}",
        cr.status
    );
    let ts = support::eventually("the Template to show the rejection", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "ChangeRequestOpen")?;
        (c.reason == "Rejected").then_some(s)
    })
    .await;
    assert_eq!(condition(&ts.conditions, "Compliant"), Some("False"));
    assert!(ts.change_request.is_none());
    pl.wake_and_count(&client, &ns, "gold", "template", 1).await;
    assert_eq!(
        requests(&client, &ns, "base").await.len(),
        1,
        "the rejection stands"
    );
    let out = decide(env, "approve", &ns, &name, "changed my mind");
    assert!(!out.status.success(), "a closed request takes no decision");

    // New findings: a new request.
    apply(
        &client,
        &ns,
        template_inventory(
            "base",
            &[OPENSSH_OLD, RSYNC_OLD, BASH],
            "2026-11-14T08:00:00Z",
        ),
    )
    .await;
    let next = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    let next_name = next.metadata.name.clone().expect("name");
    assert_ne!(next_name, name);
    assert_eq!(requests(&client, &ns, "base").await.len(), 2);

    // Deleting the Template leaves the audit trail; the open one fails.
    let templates: Api<Template> = Api::namespaced(client.clone(), &ns);
    templates
        .delete("base", &DeleteParams::foreground())
        .await
        .expect("deleting the Template");
    support::eventually("the Template to be gone", WAIT, async || {
        templates.get_opt("base").await.ok().filter(Option::is_none)
    })
    .await;
    let failed = wait_phase(&client, &ns, &next_name, ChangeRequestPhase::Failed).await;
    assert!(
        failed
            .status
            .as_ref()
            .and_then(|s| s.message.clone())
            .is_some_and(|m| m.contains("deleted"))
    );
    // No Template is left to wake: the failed request itself is.
    let failed_pass = pl.counters("change").await;
    wake(&client, &ns, "ChangeRequest", &next_name).await;
    pl.reconciled_after("change", &failed_pass, 1).await;
    assert_eq!(requests(&client, &ns, "base").await.len(), 2);
}

fn message(cr: &ChangeRequest) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

/// Waits until request `name` is in `want` with a message containing `text`.
async fn wait_message(
    client: &kube::Client,
    ns: &str,
    name: &str,
    want: ChangeRequestPhase,
    text: &str,
) -> ChangeRequest {
    let api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    support::eventually(
        &format!("{name} {want:?} saying {text:?}"),
        WAIT,
        async || {
            api.get(name)
                .await
                .ok()
                .filter(|c| phase(c) == Some(want) && message(c).contains(text))
        },
    )
    .await
}

/// Sets the build Job template's container image of Template `name`.
async fn set_builder(client: &kube::Client, ns: &str, name: &str, field: &str, image: &str) {
    let templates: Api<Template> = Api::namespaced(client.clone(), ns);
    let patch = json!({"spec": {field: {"spec": {"template": {"spec": {"containers": [
        {"name": "build", "image": image, "command": ["/bin/sh", "-c", "build"]}
    ]}}}}}});
    templates
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("editing the Template");
}

#[tokio::test]
async fn an_approval_covers_the_template_as_reviewed_once_and_never_returns() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-approval").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({}), TemplateApproval::Required),
    )
    .await;
    apply(&client, &ns, template("base", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", &[OPENSSH_OLD, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;
    let mut pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    let name = cr.metadata.name.clone().expect("name");
    let reviewed = digest_of(&cr);
    assert!(
        message(&cr).contains(&format!("--digest {reviewed}")),
        "{}",
        message(&cr)
    );

    // Approved, then the build Job template is edited before the
    // controller acts on the approval: no build under the old approval.
    pl.child.kill().expect("SIGKILL");
    let out = approve_reviewed(env, &ns, &name, &reviewed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&reviewed));
    set_builder(
        &client,
        &ns,
        "base",
        "buildJobTemplate",
        "registry.example/evil:1",
    )
    .await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = wait_message(
        &client,
        &ns,
        &name,
        ChangeRequestPhase::AwaitingApproval,
        "build inputs",
    )
    .await;
    let edited = digest_of(&cr);
    assert_ne!(edited, reviewed);
    assert!(
        jobs_of(&client, &ns, &name).await.is_empty(),
        "built under a stale approval"
    );

    // A reviewer holding the old digest is refused, shown both.
    let out = approve_reviewed(env, &ns, &name, &reviewed);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&reviewed) && err.contains(&edited), "{err}");

    // A→B→A: the edit reverted, the scope is the reviewed one again, and
    // the approval of it stays void.
    set_builder(
        &client,
        &ns,
        "base",
        "buildJobTemplate",
        "registry.example/tools/image-builder:1",
    )
    .await;
    let cr = support::eventually("the scope to be A again", WAIT, async || {
        let cr = request_named(&client, &ns, &name).await;
        (digest_of(&cr) == reviewed).then_some(cr)
    })
    .await;
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::AwaitingApproval));
    assert!(
        message(&cr).contains("was voided when the Template's build inputs"),
        "{}",
        message(&cr)
    );
    assert!(
        jobs_of(&client, &ns, &name).await.is_empty(),
        "an old approval revived"
    );

    // A fresh approval of what is there now builds once, and is consumed.
    let out = approve_reviewed(env, &ns, &name, &reviewed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Building).await;
    let build_name = format!("{name}-build");
    assert_eq!(
        cr.status
            .as_ref()
            .and_then(|s| s.approval.as_ref())
            .and_then(|a| a.consumed_by.clone()),
        Some(build_name.clone())
    );
    wait_job(&client, &ns, &build_name).await;

    // The test Job template edited while building: the request fails
    // rather than testing with an unapproved template, and no test Job.
    set_builder(
        &client,
        &ns,
        "base",
        "testJobTemplate",
        "registry.example/evil:2",
    )
    .await;
    let cr = wait_phase(&client, &ns, &name, ChangeRequestPhase::Failed).await;
    let conditions = cr.status.clone().unwrap_or_default().conditions;
    assert_eq!(
        condition_reason(&conditions, "Ready"),
        Some("TemplateEdited"),
        "{}",
        message(&cr)
    );
    let names: Vec<String> = jobs_of(&client, &ns, &name)
        .await
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect();
    assert_eq!(names, [build_name]);
    // The edited Template gets a new request of its own.
    let next = support::eventually("a new request for the edited Template", WAIT, async || {
        requests(&client, &ns, "base")
            .await
            .into_iter()
            .find(|c| c.metadata.name.as_deref() != Some(name.as_str()))
    })
    .await;
    assert!(
        next.spec.decision.is_none(),
        "a decision never carries over to another request"
    );
}

#[tokio::test]
async fn restarts_at_every_phase_never_duplicate_requests_or_jobs() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-restart").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({}), TemplateApproval::Required),
    )
    .await;
    apply(&client, &ns, template("base", json!({}))).await;
    apply(
        &client,
        &ns,
        template_inventory("base", &[OPENSSH_OLD, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;

    // Killed right after creating the request, before anything records it.
    let mut pl = start_failing(env, &ns, &label, "exit-after-change-request-create");
    exits_at_failpoint(&mut pl).await;
    assert_eq!(requests(&client, &ns, "base").await.len(), 1);
    let mut pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = request_in(&client, &ns, "base", ChangeRequestPhase::AwaitingApproval).await;
    let name = cr.metadata.name.clone().expect("name");
    assert_eq!(requests(&client, &ns, "base").await.len(), 1);

    // The build/test/publish sequence, killed after every write (one
    // failpoint each, in order), with SIGKILLs in between.
    pl.child.kill().expect("SIGKILL");
    decide_ok(env, "approve", &ns, &name, "go");
    let build_name = format!("{name}-build");
    let test_name = format!("{name}-test");
    let cr_now = async || request_named(&client, &ns, &name).await;
    let job_names = async || {
        let mut names: Vec<String> = jobs_of(&client, &ns, &name)
            .await
            .iter()
            .filter_map(|j| j.metadata.name.clone())
            .collect();
        names.sort();
        names
    };

    // 1. Status Approved written; no build Job yet.
    let mut pl = start_failing(env, &ns, &label, "exit-after-approved-status");
    exits_at_failpoint(&mut pl).await;
    assert_eq!(phase(&cr_now().await), Some(ChangeRequestPhase::Approved));
    assert!(job_names().await.is_empty());

    // 2. Build Job created; the Building write (its uid, the nonce's hash)
    // lost.
    let mut pl = start_failing(env, &ns, &label, "exit-after-build-job-create");
    exits_at_failpoint(&mut pl).await;
    assert_eq!(job_names().await, [build_name.as_str()]);
    assert_eq!(phase(&cr_now().await), Some(ChangeRequestPhase::Approved));
    let lost = wait_job(&client, &ns, &build_name).await;
    let lost_nonce = nonce_of(&client, &ns, &name).await;

    // 3. A Job the request did not record is never adopted: it is deleted
    // and a fresh one, with a fresh nonce, created and recorded: Building.
    let mut pl = start_failing(env, &ns, &label, "exit-after-building-status");
    exits_at_failpoint(&mut pl).await;
    let cr = cr_now().await;
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::Building));
    let build = wait_job(&client, &ns, &build_name).await;
    assert_ne!(build.metadata.uid, lost.metadata.uid, "a fresh build Job");
    assert_eq!(
        cr.status.as_ref().and_then(|s| s.build_job_uid.clone()),
        build.metadata.uid,
        "the recorded build Job"
    );
    let nonce = nonce_of(&client, &ns, &name).await;
    assert_ne!(nonce, lost_nonce, "a fresh nonce");
    assert_eq!(
        cr.status.as_ref().and_then(|s| s.nonce_hash.clone()),
        Some(patchloop::engine::change::nonce_hash(&nonce)),
        "the recorded Job's nonce"
    );
    assert_eq!(job_names().await, [build_name.as_str()]);

    // 4. The build ends while the controller is down; the result is pinned.
    apply(
        &client,
        &ns,
        build_result(
            &name,
            &nonce,
            &digest_image("base-5"),
            &[OPENSSH_FIXED, BASH],
        ),
    )
    .await;
    finish_build(
        &client,
        &ns,
        &build_name,
        &digest_image("base-5"),
        &[OPENSSH_FIXED, BASH],
    )
    .await;
    let mut pl = start_failing(env, &ns, &label, "exit-after-result-pin");
    exits_at_failpoint(&mut pl).await;
    let cr = cr_now().await;
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::Building));
    let pinned = cr
        .status
        .as_ref()
        .and_then(|s| s.result.clone())
        .expect("pinned");
    assert_eq!(pinned.image, digest_image("base-5"));
    assert_eq!(job_names().await, [build_name.as_str()]);

    // 5. Test Job created; the Testing write lost.
    let mut pl = start_failing(env, &ns, &label, "exit-after-test-job-create");
    exits_at_failpoint(&mut pl).await;
    assert_eq!(phase(&cr_now().await), Some(ChangeRequestPhase::Building));
    assert_eq!(job_names().await, [build_name.as_str(), test_name.as_str()]);

    // 6. Testing written over the existing test Job.
    let mut pl = start_failing(env, &ns, &label, "exit-after-testing-status");
    exits_at_failpoint(&mut pl).await;
    let cr = cr_now().await;
    assert_eq!(phase(&cr), Some(ChangeRequestPhase::Testing));
    assert_eq!(
        cr.status.as_ref().and_then(|s| s.result.clone()),
        Some(pinned)
    );
    let test = wait_job(&client, &ns, &test_name).await;
    assert_eq!(
        job_env(&test, "PATCHLOOP_IMAGE"),
        Some(digest_image("base-5"))
    );

    // 7. SIGKILL while testing; the test ends; killed again right after
    // publication, before the request records it.
    let mut pl = Patchloop::start(env, &ns, &label, &[]).await;
    pl.child.kill().expect("SIGKILL");
    finish_job(&client, &ns, &test_name, None).await;
    let mut pl = start_failing(env, &ns, &label, "exit-after-publish");
    exits_at_failpoint(&mut pl).await;
    let ts = template_status(&client, &ns, "base").await;
    assert_eq!(ts.revision, Some(2));
    assert_eq!(
        phase(&request_named(&client, &ns, &name).await),
        Some(ChangeRequestPhase::Testing)
    );

    // 8. The lifecycle resumes: Published, once.
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    wait_phase(&client, &ns, &name, ChangeRequestPhase::Published).await;
    let ts = support::eventually("a compliant revision 2", WAIT, async || {
        let s = template_status(&client, &ns, "base").await;
        (condition(&s.conditions, "Compliant") == Some("True")).then_some(s)
    })
    .await;
    assert_eq!(ts.revision, Some(2), "published once");
    assert_eq!(ts.history.len(), 2, "{:?}", ts.history);
    assert_eq!(ts.image, Some(digest_image("base-5")));
    assert_eq!(job_names().await, [build_name, test_name]);
    assert_eq!(requests(&client, &ns, "base").await.len(), 1);
}

#[tokio::test]
async fn closed_requests_beyond_the_retention_go_with_their_results() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("tpl-retention").await;
    let label = support::random_suffix();
    fixture_feeds(&client, &label).await;
    apply(
        &client,
        &ns,
        template_policy("gold", json!({}), TemplateApproval::Required),
    )
    .await;
    let mut t = template("base", json!({}));
    t["spec"]["keepClosedChangeRequests"] = json!(2);
    apply(&client, &ns, t).await;
    apply(
        &client,
        &ns,
        template_inventory("base", &[OPENSSH_FIXED, BASH], "2026-11-24T08:00:00Z"),
    )
    .await;
    // Another Template, whose history names a result of one of base's
    // requests (base-old-0's), and one of whose closed requests an
    // approver repointed at base (spec.template edited, status.templateUid
    // still the other's).
    apply(&client, &ns, template("other", json!({}))).await;
    let templates: Api<Template> = Api::namespaced(client.clone(), &ns);
    let uid_of = async |name: &str| {
        templates
            .get(name)
            .await
            .expect("the Template")
            .metadata
            .uid
            .expect("a uid")
    };
    let (base_uid, other_uid) = (uid_of("base").await, uid_of("other").await);
    // Closed requests, oldest first; base-old-1 published revision 2.
    let requests_api: Api<ChangeRequest> = Api::namespaced(client.clone(), &ns);
    let closed = [
        ("other-old-1", "Rejected", &other_uid),
        ("base-old-0", "Failed", &base_uid),
        ("base-old-1", "Published", &base_uid),
        ("base-old-2", "Rejected", &base_uid),
        ("base-old-3", "Failed", &base_uid),
        ("base-old-4", "Obsolete", &base_uid),
        ("base-old-5", "Failed", &base_uid),
    ];
    for (name, phase, template_uid) in closed {
        let owner = if template_uid == &base_uid {
            "base"
        } else {
            "other"
        };
        apply(
            &client,
            &ns,
            json!({
                "apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
                "metadata": {"name": name, "labels": {"patchloop.dev/template": "base"}},
                "spec": {"template": owner},
            }),
        )
        .await;
        requests_api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"phase": phase, "templateUid": template_uid}})),
            )
            .await
            .expect("closing the request");
        if owner == "other" {
            // The approver's edit of a closed request.
            requests_api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"template": "base"}})),
                )
                .await
                .expect("repointing the request");
        }
        apply(
            &client,
            &ns,
            build_result(name, "n", &digest_image(name), &[OPENSSH_FIXED, BASH]),
        )
        .await;
    }
    templates
        .patch_status(
            "base",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"revision": 2, "image": digest_image("base-old-1"),
                "history": [
                    {"revision": 1, "image": "registry.example/golden/base:1", "inventory": "base-r1"},
                    {"revision": 2, "image": digest_image("base-old-1"),
                     "inventory": "changerequest-base-old-1", "changeRequest": "base-old-1"},
                ]}})),
        )
        .await
        .expect("the Template's history");
    templates
        .patch_status(
            "other",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"revision": 2, "image": digest_image("base-old-0"),
                "history": [
                    {"revision": 1, "image": "registry.example/golden/other:1", "inventory": "other-r1"},
                    {"revision": 2, "image": digest_image("base-old-0"),
                     "inventory": "changerequest-base-old-0"},
                ]}})),
        )
        .await
        .expect("the other Template's history");

    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let names = async || {
        let mut n: Vec<String> = requests(&client, &ns, "base")
            .await
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        n.sort();
        n
    };
    let kept = [
        "base-old-0",
        "base-old-1",
        "base-old-4",
        "base-old-5",
        "other-old-1",
    ];
    support::eventually("two closed requests retired", WAIT, async || {
        (names().await == kept).then_some(())
    })
    .await;
    let inventories: Api<patchloop::api::Inventory> = Api::namespaced(client.clone(), &ns);
    support::eventually("their results deleted", WAIT, async || {
        let mut left: Vec<String> = inventories
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter_map(|i| i.metadata.name)
            .filter(|n| n.starts_with("changerequest-"))
            .collect();
        left.sort();
        (left
            == kept
                .iter()
                .map(|n| format!("changerequest-{n}"))
                .collect::<Vec<_>>())
        .then_some(())
    })
    .await;
    // Steady: nothing more goes, both Templates reconciled again.
    pl.wake_and_count(&client, &ns, "gold", "template", 2).await;
    assert_eq!(names().await, kept);
}
