//! Findings 4 and 7: a build result that was not built, or not tested, or an
//! approval that does not cover what is built. The attackers: an Inventory
//! reporter (`patchloop-reporter`, which a build Job or a CMDB sync holds),
//! an approver (`patchloop-approver`) and a Template editor. Nothing
//! unapproved or untested is ever published, and the request says why.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use patchloop::api::change_request::ChangeRequestPhase;
use patchloop::api::inventory::{InventorySubject, SubjectKind};
use patchloop::api::policy::TemplateApproval;
use patchloop::api::{ChangeRequest, Inventory, Template};
use serde_json::{Value, json};

use crate::identity;
use crate::support;
use crate::support::objects::*;
use crate::support::patchloop::Patchloop;

const OPENSSH_OLD: &str = "openssh-client 1:9.2p1-2+deb12u1 openssh";
const OPENSSH_FIXED: &str = "openssh-client 1:9.2p1-2+deb12u2 openssh";
const BASH: &str = "bash 5.2.15-2+b8 bash 5.2.15-2";

/// An image an attacker wants published: a valid digest reference.
fn evil_image() -> String {
    format!("registry.evil.example/backdoor@sha256:{}", "e".repeat(64))
}

/// The one Inventory name that may speak for request `cr`.
fn result_name(cr: &str) -> String {
    InventorySubject {
        kind: SubjectKind::ChangeRequest,
        name: cr.to_owned(),
        revision: None,
    }
    .canonical_inventory_name()
}

fn result(cr: &str, nonce: Option<&str>, image: &str) -> Value {
    let mut doc = json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": result_name(cr)},
        "spec": {
            "subject": {"kind": "ChangeRequest", "name": cr},
            "reporter": "build-job", "reportedAt": "2026-11-24T08:00:00Z", "format": "dpkg",
            "packages": [OPENSSH_FIXED, BASH], "image": image,
        }
    });
    if let Some(nonce) = nonce {
        doc["spec"]["nonce"] = json!(nonce);
    }
    doc
}

/// Writes `doc` as `client` (server-side apply, the reporter's way).
async fn write_as(client: &kube::Client, ns: &str, doc: &Value) {
    let api: Api<Inventory> = Api::namespaced(client.clone(), ns);
    let name = doc["metadata"]["name"].as_str().expect("name");
    api.patch(
        name,
        &PatchParams::apply("attacker").force(),
        &Patch::Apply(doc),
    )
    .await
    .unwrap_or_else(|e| panic!("writing Inventory {name}: {e}"));
}

/// A namespace with a non-compliant Template whose rebuild needs a person,
/// the controller running, and its open request's name.
async fn setup(prefix: &str) -> (kube::Client, String, String, Patchloop, String) {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace(prefix).await;
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
    let pl = Patchloop::start(env, &ns, &label, &[]).await;
    let cr = wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::AwaitingApproval)
    })
    .await;
    let name = cr.metadata.name.clone().expect("name");
    (client, ns, label, pl, name)
}

fn phase(cr: &ChangeRequest) -> Option<ChangeRequestPhase> {
    cr.status.as_ref().and_then(|s| s.phase)
}

fn message(cr: &ChangeRequest) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_default()
}

fn digest(cr: &ChangeRequest) -> String {
    cr.status
        .as_ref()
        .and_then(|s| s.scope.as_ref())
        .map(|s| s.digest.clone())
        .expect("a scope")
}

/// Waits for the Template's first request to satisfy `ok`.
async fn wait_request(
    client: &kube::Client,
    ns: &str,
    ok: impl Fn(&ChangeRequest) -> bool,
) -> ChangeRequest {
    support::eventually("the ChangeRequest", WAIT, async || {
        requests(client, ns, "base").await.into_iter().find(&ok)
    })
    .await
}

async fn request(client: &kube::Client, ns: &str, name: &str) -> ChangeRequest {
    let api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    api.get(name).await.expect("the ChangeRequest")
}

/// Approves the request's current scope as `client`, the way `patchloop
/// approve` does (digest, request uid, a new decision time).
async fn approve_as(client: &kube::Client, ns: &str, cr: &ChangeRequest, decided_at: &str) {
    let name = cr.metadata.name.clone().expect("name");
    let api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    let patch = json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
        "metadata": {"name": name},
        "spec": {"decision": {
            "verdict": "Approved", "digest": digest(cr), "reason": "reviewed",
            "requestUid": cr.metadata.uid, "decidedAt": decided_at,
        }},
    });
    api.patch(
        &name,
        &PatchParams::apply("patchloop-approve:attacker").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap_or_else(|e| panic!("approving {name}: {e}"));
}

async fn jobs_of(client: &kube::Client, ns: &str, cr: &str) -> Vec<String> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(&format!("patchloop.dev/change-request={cr}")))
        .await
        .expect("listing Jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    names.sort();
    names
}

/// The nonce only the build Job received (read as the admin, playing the
/// build Job itself).
async fn build_nonce(client: &kube::Client, ns: &str, cr: &str) -> String {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let job = support::eventually("the build Job", WAIT, async || {
        api.get_opt(&format!("{cr}-build")).await.ok().flatten()
    })
    .await;
    job.spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.env)
        .into_iter()
        .flatten()
        .find(|e| e.name == "PATCHLOOP_NONCE")
        .and_then(|e| e.value)
        .expect("the build Job's nonce")
}

/// Nothing the attacker wrote reached a Job, the Template, a request's
/// status or an Event, and revision 1 is still the published one.
async fn assert_nothing_leaked(client: &kube::Client, ns: &str, forbidden: &[&str]) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let templates: Api<Template> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let requests_api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    let template = templates.get("base").await.expect("the Template");
    let statuses: Vec<Value> = requests_api
        .list(&ListParams::default())
        .await
        .expect("requests")
        .items
        .into_iter()
        .map(|c| json!(c.status))
        .collect();
    let text = [
        serde_json::to_string(&jobs.list(&ListParams::default()).await.expect("jobs").items),
        serde_json::to_string(&template.status),
        serde_json::to_string(&statuses),
        serde_json::to_string(
            &events
                .list(&ListParams::default())
                .await
                .expect("events")
                .items,
        ),
    ]
    .into_iter()
    .map(|r| r.expect("json"))
    .collect::<Vec<_>>()
    .join("\n");
    for f in forbidden {
        assert!(!text.contains(f), "{f:?} reached a Job, status or Event");
    }
    let status = template.status.unwrap_or_default();
    assert_eq!(status.revision.unwrap_or(1), 1, "{:?}", status.history);
    assert!(status.history.len() <= 1, "{:?}", status.history);
}

#[tokio::test]
async fn a_reporter_cannot_forge_a_build_result_before_or_during_the_build() {
    let (client, ns, _label, _pl, name) = setup("attack-forge").await;
    let reporter = identity::shipped_role(&ns, "reporter", "patchloop-reporter").await;
    let guessed = "0".repeat(32);
    let cr = request(&client, &ns, &name).await;
    let status = serde_json::to_string(&cr.status).expect("json");
    assert!(
        !status.contains("\"nonce\""),
        "no nonce before the build: {status}"
    );

    // Forged before the build starts (the request is known, the nonce is
    // not): a guessed one.
    write_as(
        &reporter,
        &ns,
        &result(&name, Some(&guessed), &evil_image()),
    )
    .await;
    approve_as(&client, &ns, &cr, "2026-12-04T10:00:00Z").await;
    let cr = wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::Building)
    })
    .await;
    // The reporter cannot read the build Job, where the nonce is.
    let jobs: Api<Job> = Api::namespaced(reporter.clone(), &ns);
    match jobs.get(&format!("{name}-build")).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the reporter reads the build Job: {other:?}"),
    }
    // During the build: no nonce, the nonce's hash from status, a guess.
    let hash = cr
        .status
        .as_ref()
        .and_then(|s| s.nonce_hash.clone())
        .expect("a nonce hash");
    for nonce in [None, Some(hash.as_str()), Some(guessed.as_str())] {
        write_as(&reporter, &ns, &result(&name, nonce, &evil_image())).await;
    }
    support::executor::complete(&client, &ns, &format!("{name}-build"), None).await;
    // The build "succeeded" but its result is forged: after the grace for
    // a late result, the request fails saying why.
    let failed = support::eventually(
        "the request to fail on the forged result",
        Duration::from_secs(150),
        async || {
            let c = request(&client, &ns, &name).await;
            (phase(&c) == Some(ChangeRequestPhase::Failed)).then_some(c)
        },
    )
    .await;
    let why = message(&failed);
    assert!(why.contains(&result_name(&name)), "{why}");
    assert!(
        why.contains("spec.nonce") || why.contains("before the build Job"),
        "{why}"
    );
    assert_eq!(
        jobs_of(&client, &ns, &name).await,
        [format!("{name}-build")]
    );
    assert_nothing_leaked(&client, &ns, &[&evil_image(), &guessed]).await;
}

#[tokio::test]
async fn a_result_must_be_a_digest_and_cannot_be_swapped_after_it_was_pinned() {
    let (client, ns, _label, _pl, name) = setup("attack-swap").await;
    // The build Job's own identity (it holds the nonce) turned hostile.
    let reporter = identity::shipped_role(&ns, "build-job", "patchloop-reporter").await;
    let cr = request(&client, &ns, &name).await;
    approve_as(&client, &ns, &cr, "2026-12-04T10:00:00Z").await;
    let nonce = build_nonce(&client, &ns, &name).await;
    // The build Pod reports the digest it built (its termination message).
    let built = format!("registry.example/golden/base@sha256:{}", "b".repeat(64));
    support::executor::complete_build(
        &client,
        &ns,
        &format!("{name}-build"),
        &build_result_line(&built, &[OPENSSH_FIXED, BASH]),
    )
    .await;

    // Tags, which can move, are refused: the request waits saying why
    // (each refused result deleted again, by the admin: the reporter role
    // cannot delete, and a result is written once).
    let tags = [
        "registry.example/golden/base:2",
        "registry.example/golden/base:latest",
        "registry.example/golden/base@sha256:2222",
    ];
    let inventories: Api<Inventory> = Api::namespaced(client.clone(), &ns);
    for tag in tags {
        write_as(&reporter, &ns, &result(&name, Some(&nonce), tag)).await;
        let c = support::eventually("the tag to be refused", WAIT, async || {
            let c = request(&client, &ns, &name).await;
            (message(&c).contains("not a digest reference")).then_some(c)
        })
        .await;
        assert_eq!(phase(&c), Some(ChangeRequestPhase::Building));
        assert!(!message(&c).contains(tag), "{}", message(&c));
        inventories
            .delete(&result_name(&name), &Default::default())
            .await
            .expect("deleting the refused result");
    }
    assert_eq!(
        jobs_of(&client, &ns, &name).await,
        [format!("{name}-build")]
    );

    // The digest the build Pod reported: pinned and tested.
    write_as(&reporter, &ns, &result(&name, Some(&nonce), &built)).await;
    let testing = wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::Testing)
    })
    .await;
    let pinned = testing
        .status
        .as_ref()
        .and_then(|s| s.result.clone())
        .expect("a pinned result");
    assert_eq!(pinned.image, built);

    // Swapped after the pin, before the test passes: nothing published.
    write_as(&reporter, &ns, &result(&name, Some(&nonce), &evil_image())).await;
    support::executor::complete(&client, &ns, &format!("{name}-test"), None).await;
    let failed = wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::Failed)
    })
    .await;
    let conditions = failed.status.clone().unwrap_or_default().conditions;
    assert_eq!(
        condition_reason(&conditions, "Ready"),
        Some("ResultChanged"),
        "{}",
        message(&failed)
    );
    assert!(message(&failed).contains("nothing is published"));
    let mut forbidden = vec![evil_image()];
    forbidden.extend(tags.iter().map(|t| (*t).to_owned()));
    let forbidden: Vec<&str> = forbidden.iter().map(String::as_str).collect();
    assert_nothing_leaked(&client, &ns, &forbidden).await;
}

#[tokio::test]
async fn an_approval_covers_only_the_template_it_was_given_for_and_never_returns() {
    let env = support::env();
    let (client, ns, label, mut pl, name) = setup("attack-approval").await;
    let approver = identity::shipped_role(&ns, "approver", "patchloop-approver").await;
    let editor = identity::with_rules(
        &ns,
        "template-editor",
        vec![identity::rule(
            "patchloop.dev",
            &["templates"],
            &["get", "patch"],
        )],
    )
    .await;
    let templates: Api<Template> = Api::namespaced(editor.clone(), &ns);
    let job = |image: &str| {
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": "x", "image": image, "command": ["/bin/sh", "-c", "run"]}
        ]}}}})
    };
    let edits = [
        json!({"spec": {"buildJobTemplate": job("registry.evil.example/builder:1")}}),
        json!({"spec": {"testJobTemplate": job("registry.evil.example/always-pass:1")}}),
        json!({"spec": {"image": "registry.evil.example/base:1"}}),
    ];
    // Each: approved as reviewed, then edited before the controller acts
    // on it (it is down, so the order is certain): nothing is built.
    for (i, edit) in edits.iter().enumerate() {
        pl.child.kill().expect("SIGKILL");
        let cr = request(&client, &ns, &name).await;
        approve_as(&approver, &ns, &cr, &format!("2026-12-04T10:00:0{i}Z")).await;
        templates
            .patch("base", &PatchParams::default(), &Patch::Merge(edit))
            .await
            .expect("the editor edits the Template");
        pl = Patchloop::start(env, &ns, &label, &[]).await;
        let c = support::eventually("the approval to be void", WAIT, async || {
            let c = request(&client, &ns, &name).await;
            (digest(&c) != digest(&cr)).then_some(c)
        })
        .await;
        assert_eq!(phase(&c), Some(ChangeRequestPhase::AwaitingApproval));
        assert!(message(&c).contains("build inputs"), "{}", message(&c));
        assert!(jobs_of(&client, &ns, &name).await.is_empty());
    }

    // A→B→A: the Template put back as it was when approved last, and the
    // approver replaying that very decision: it stays void.
    let before_revert = request(&client, &ns, &name).await;
    let voided_on = before_revert
        .spec
        .decision
        .clone()
        .expect("the last decision");
    templates
        .patch(
            "base",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"image": "registry.example/golden/base:1"}})),
        )
        .await
        .expect("reverting");
    let reverted = support::eventually("the scope to be A again", WAIT, async || {
        let c = request(&client, &ns, &name).await;
        (digest(&c) == voided_on.digest).then_some(c)
    })
    .await;
    let requests_api: Api<ChangeRequest> = Api::namespaced(approver.clone(), &ns);
    requests_api
        .patch(
            &name,
            &PatchParams::apply("patchloop-approve:attacker").force(),
            &Patch::Apply(&json!({
                "apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
                "metadata": {"name": name},
                "spec": {"decision": voided_on},
            })),
        )
        .await
        .expect("replaying the decision");
    // A decision copied from another request (another uid) counts neither.
    let mut foreign = voided_on.clone();
    foreign.request_uid = Some("00000000-0000-0000-0000-000000000000".into());
    // Decided later than the voided decision, so only its request uid can
    // refuse it (a decision no later stays void, whatever it names).
    foreign.decided_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let c = support::eventually("the replay to be refused", WAIT, async || {
        let c = request(&client, &ns, &name).await;
        (message(&c).contains("does not revive")).then_some(c)
    })
    .await;
    assert_eq!(phase(&c), Some(ChangeRequestPhase::AwaitingApproval));
    assert_eq!(c.metadata.generation, reverted.metadata.generation);
    // Editing the voided decision (its reason: a new generation, the same
    // decision), under another field manager than the one that wrote it,
    // does not revive it either.
    let mut reworded = voided_on.clone();
    reworded.reason = Some("reviewed again, honestly".into());
    let edited = requests_api
        .patch(
            &name,
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(&json!({
                "apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
                "metadata": {"name": name},
                "spec": {"decision": reworded},
            })),
        )
        .await
        .expect("rewording the decision");
    assert!(edited.metadata.generation > reverted.metadata.generation);
    let c = support::eventually("the reworded decision to be seen", WAIT, async || {
        let c = request(&client, &ns, &name).await;
        (c.status.as_ref().and_then(|s| s.observed_generation) == edited.metadata.generation)
            .then_some(c)
    })
    .await;
    assert_eq!(phase(&c), Some(ChangeRequestPhase::AwaitingApproval));
    assert!(message(&c).contains("does not revive"), "{}", message(&c));
    assert!(jobs_of(&client, &ns, &name).await.is_empty());
    requests_api
        .patch(
            &name,
            &PatchParams::apply("patchloop-approve:attacker").force(),
            &Patch::Apply(&json!({
                "apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
                "metadata": {"name": name},
                "spec": {"decision": foreign},
            })),
        )
        .await
        .expect("a copied decision");
    let c = support::eventually("the copied decision to be refused", WAIT, async || {
        let c = request(&client, &ns, &name).await;
        (message(&c).contains("requestUid")).then_some(c)
    })
    .await;
    assert_eq!(phase(&c), Some(ChangeRequestPhase::AwaitingApproval));
    assert!(!message(&c).contains("00000000-0000"), "{}", message(&c));
    assert!(jobs_of(&client, &ns, &name).await.is_empty());
    // The approver cannot start a build any other way.
    let jobs: Api<Job> = Api::namespaced(approver.clone(), &ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-build")},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "registry.evil.example/builder:1"}]}}},
    }))
    .expect("a Job");
    match jobs.create(&PostParams::default(), &job).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("the approver creates Jobs: {other:?}"),
    }
    assert_nothing_leaked(&client, &ns, &["registry.evil.example"]).await;
}

#[tokio::test]
async fn a_result_swapped_between_the_report_and_the_pin_is_not_the_builds() {
    let env = support::env();
    let (client, ns, label, mut pl, name) = setup("attack-preswap").await;
    let build_job = identity::shipped_role(&ns, "build-job", "patchloop-reporter").await;
    // Another reporter (a CMDB sync) that may write every Inventory.
    let reporter = identity::shipped_role(&ns, "cmdb", "patchloop-reporter").await;
    let cr = request(&client, &ns, &name).await;
    approve_as(&client, &ns, &cr, "2026-12-04T10:00:00Z").await;
    let nonce = build_nonce(&client, &ns, &name).await;
    wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::Building)
    })
    .await;
    // The controller is down, so the swap surely lands before the pin.
    pl.child.kill().expect("SIGKILL");
    let built = format!("registry.example/golden/base@sha256:{}", "b".repeat(64));
    write_as(&build_job, &ns, &result(&name, Some(&nonce), &built)).await;
    support::executor::complete_build(
        &client,
        &ns,
        &format!("{name}-build"),
        &build_result_line(&built, &[OPENSSH_FIXED, BASH]),
    )
    .await;
    // The swap: the same object, the nonce kept, another image.
    write_as(&reporter, &ns, &result(&name, Some(&nonce), &evil_image())).await;
    let _pl = Patchloop::start(env, &ns, &label, &[]).await;
    let failed = wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::Failed)
    })
    .await;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(
        condition_reason(&status.conditions, "Ready"),
        Some("ResultNotFromBuild"),
        "{}",
        message(&failed)
    );
    assert!(
        message(&failed).contains("metadata.generation 2"),
        "{}",
        message(&failed)
    );
    assert!(
        status.result.is_none(),
        "nothing pinned: {:?}",
        status.result
    );
    assert_eq!(
        jobs_of(&client, &ns, &name).await,
        [format!("{name}-build")]
    );
    assert_nothing_leaked(&client, &ns, &[&evil_image()]).await;
}

#[tokio::test]
async fn a_forged_build_job_is_never_adopted() {
    let (client, ns, _label, _pl, name) = setup("attack-forged-job").await;
    let cr = request(&client, &ns, &name).await;
    let uid = cr.metadata.uid.clone().expect("a uid");
    // A Job creator, and nothing more (no Pod or Job read).
    let creator = identity::with_rules(
        &ns,
        "job-creator",
        vec![identity::rule("batch", &["jobs"], &["create"])],
    )
    .await;
    // The request's build Job, forged: its name, labels and a controller
    // owner reference naming the request (the uid copied from it), and a
    // nonce the attacker chose, which its result would carry.
    let forged_nonce = "f0".repeat(16);
    let job: Job = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{name}-build"),
            "labels": {"app.kubernetes.io/managed-by": "patchloop", "patchloop.dev/purpose": "build",
                       "patchloop.dev/template": "base", "patchloop.dev/change-request": name},
            "ownerReferences": [{"apiVersion": "patchloop.dev/v1alpha1", "kind": "ChangeRequest",
                                 "name": name, "uid": uid, "controller": true}],
        },
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "build", "image": "registry.evil.example/builder:1",
                            "env": [{"name": "PATCHLOOP_NONCE", "value": forged_nonce}]}]}}},
    }))
    .expect("a Job");
    let forged = Api::<Job>::namespaced(creator.clone(), &ns)
        .create(&PostParams::default(), &job)
        .await
        .expect("the Job creator creates the forged Job");
    let forged_uid = forged.metadata.uid.clone().expect("a uid");
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    // Deleted before anyone approved anything, the request saying why.
    support::eventually("the forged Job to be deleted", WAIT, async || {
        let j = jobs.get_opt(&format!("{name}-build")).await.ok()?;
        j.is_none_or(|j| j.metadata.uid.as_deref() != Some(forged_uid.as_str()))
            .then_some(())
    })
    .await;
    let c = request(&client, &ns, &name).await;
    assert_eq!(phase(&c), Some(ChangeRequestPhase::AwaitingApproval));
    assert!(jobs_of(&client, &ns, &name).await.is_empty());

    // Approved: a fresh build Job, recorded, with a nonce of its own.
    approve_as(&client, &ns, &cr, "2026-12-04T10:00:00Z").await;
    let building = wait_request(&client, &ns, |c| {
        phase(c) == Some(ChangeRequestPhase::Building)
    })
    .await;
    let status = building.status.clone().unwrap_or_default();
    let build = jobs
        .get(&format!("{name}-build"))
        .await
        .expect("the build Job");
    assert_ne!(build.metadata.uid.as_deref(), Some(forged_uid.as_str()));
    assert_eq!(status.build_job_uid, build.metadata.uid);
    let nonce = build_nonce(&client, &ns, &name).await;
    assert_ne!(nonce, forged_nonce);
    assert_eq!(
        status.nonce_hash,
        Some(patchloop::engine::change::nonce_hash(&nonce))
    );
    // A result carrying the forged Job's nonce is refused.
    let reporter = identity::shipped_role(&ns, "reporter", "patchloop-reporter").await;
    write_as(
        &reporter,
        &ns,
        &result(&name, Some(&forged_nonce), &evil_image()),
    )
    .await;
    support::executor::complete(&client, &ns, &format!("{name}-build"), None).await;
    let c = support::eventually("the forged result to be refused", WAIT, async || {
        let c = request(&client, &ns, &name).await;
        message(&c).contains("spec.nonce").then_some(c)
    })
    .await;
    assert!(
        c.status.as_ref().and_then(|s| s.result.clone()).is_none(),
        "nothing pinned"
    );
    assert_eq!(
        jobs_of(&client, &ns, &name).await,
        [format!("{name}-build")]
    );
    assert_nothing_leaked(&client, &ns, &[&evil_image(), &forged_nonce]).await;
}

#[tokio::test]
async fn an_approver_cannot_repoint_a_request_at_another_template() {
    let (client, ns, _label, _pl, name) = setup("attack-repoint").await;
    let approver = identity::shipped_role(&ns, "approver", "patchloop-approver").await;
    apply(&client, &ns, template("other", json!({}))).await;
    let templates: Api<Template> = Api::namespaced(client.clone(), &ns);
    let base_uid = templates.get("base").await.expect("base").metadata.uid;
    let cr = request(&client, &ns, &name).await;
    assert_eq!(
        cr.status.as_ref().and_then(|s| s.template_uid.clone()),
        base_uid,
        "the request recorded its Template's uid"
    );
    // The approver edits spec.template (what retention and publication
    // follow), then approves.
    let requests_api: Api<ChangeRequest> = Api::namespaced(approver.clone(), &ns);
    requests_api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"template": "other"}})),
        )
        .await
        .expect("the approver may patch requests");
    approve_as(&approver, &ns, &cr, "2026-12-04T10:00:00Z").await;
    let failed = wait_request(&client, &ns, |c| {
        c.metadata.name.as_deref() == Some(name.as_str())
            && phase(c) == Some(ChangeRequestPhase::Failed)
    })
    .await;
    let status = failed.status.clone().unwrap_or_default();
    assert_eq!(
        condition_reason(&status.conditions, "Ready"),
        Some("TemplateMismatch"),
        "{}",
        message(&failed)
    );
    assert!(
        message(&failed).contains("spec.template"),
        "{}",
        message(&failed)
    );
    assert_eq!(status.template_uid, base_uid, "the record stays");
    assert!(jobs_of(&client, &ns, &name).await.is_empty());
    assert_nothing_leaked(&client, &ns, &[]).await;
}
