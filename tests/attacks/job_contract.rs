//! The Job contract (issue 14 findings 1 and 5, issue 22 point 2): a
//! Workload's author cannot make the kubelet expand the Job template's
//! environment (or a Secret behind it) into a contract value, and a
//! namespace user who may create ConfigMaps cannot decide what the next
//! Job installs, because the contract travels in the Job's own Pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use patchloop::api::workload::RemediationPhase;
use patchloop::api::{PatchPolicy, Workload, WorkloadStatus};
use patchloop::controller::jobs::{CONTRACT_ANNOTATION_PREFIX, contract_file};
use serde_json::{Value, json};

use crate::identity;
use crate::support::executor::{self, label};
use crate::support::objects::*;
use crate::support::patchloop::Patchloop;
use crate::support::{self, TestEnv};

const WORKLOAD_LABEL: &str = "patchloop.dev/workload";

/// A Workload of tier `gold` with `target`, as its author writes it.
fn workload_with(name: &str, target: Value) -> Value {
    let mut w = workload(name, json!({"tier": "gold"}));
    w["spec"]["target"] = target;
    w
}

/// The policy's secrets, as a policy author wires them into the job
/// template: one plain env value and one read from a Secret.
struct Sentinels {
    plain: String,
    secret: String,
}

impl Sentinels {
    fn new() -> Self {
        let suffix = support::random_suffix();
        Sentinels {
            plain: format!("sentinel-plain-{suffix}"),
            secret: format!("sentinel-secret-{suffix}"),
        }
    }

    fn all(&self) -> [&str; 2] {
        [&self.plain, &self.secret]
    }
}

/// The Secret and the Remediate policy `gold` whose job template defines
/// `SSH_PASSPHRASE` (plain) and `SSH_KEY_PASSPHRASE` (from the Secret)
/// before the contract variables: exactly what `$(NAME)` could reach.
async fn policy_with_secrets(
    client: &kube::Client,
    ns: &str,
    sentinels: &Sentinels,
    remediation: Value,
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "ssh"},
        "stringData": {"passphrase": sentinels.secret},
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the Secret");
    let mut r = json!({
        "jobTemplate": {"spec": {"template": {"spec": {"containers": [{
            "name": "patch", "image": "debian:12", "command": ["/scripts/patch.sh"],
            "env": [
                {"name": "SSH_PASSPHRASE", "value": sentinels.plain},
                {"name": "SSH_KEY_PASSPHRASE",
                 "valueFrom": {"secretKeyRef": {"name": "ssh", "key": "passphrase"}}},
            ],
        }]}}}},
    });
    if let (Some(r), Some(extra)) = (r.as_object_mut(), remediation.as_object()) {
        r.extend(extra.clone());
    }
    apply(client, ns, remediating_policy("gold", "gold", r)).await;
}

/// Every `$` of `value` is doubled: the kubelet expands nothing in it.
fn unexpandable(value: &str) -> bool {
    !value.replace("$$", "").contains('$')
}

/// The contract part of a Job: its `PATCHLOOP_*` env values (every
/// container) and its contract annotations.
fn contract_texts(job: &Job) -> Vec<String> {
    let spec = job.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod");
    let mut texts: Vec<String> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .filter(|e| e.name.starts_with("PATCHLOOP_"))
        .map(|e| e.value.clone().unwrap_or_default())
        .collect();
    texts.extend(
        spec.template
            .metadata
            .iter()
            .flat_map(|m| m.annotations.iter().flatten())
            .filter(|(k, _)| k.starts_with(CONTRACT_ANNOTATION_PREFIX))
            .map(|(_, v)| v.clone()),
    );
    texts
}

/// Everything in the namespace that people read or Jobs run from, as text:
/// every Job's contract (and the whole Job, except the template's own
/// `SSH_PASSPHRASE`), every ConfigMap, every Workload and policy status,
/// every Event.
async fn readable_texts(client: &kube::Client, ns: &str, plain: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for job in executor::jobs(client, ns).await {
        let name = format!("Job {}", job.name_any());
        for text in contract_texts(&job) {
            assert!(unexpandable(&text), "{name}: expandable value {text:?}");
            out.push((name.clone(), text));
        }
        // The template's own plain variable is the policy author's; any
        // other copy of it is a leak.
        let whole = serde_json::to_string(&job).expect("json");
        out.push((name, whole.replacen(plain, "", 1)));
    }
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for cm in maps
        .list(&ListParams::default())
        .await
        .expect("ConfigMaps")
        .items
    {
        let text = serde_json::to_string(&cm.data).expect("json");
        out.push((format!("ConfigMap {}", cm.name_any()), text));
    }
    let workloads: Api<Workload> = Api::namespaced(client.clone(), ns);
    for w in workloads
        .list(&ListParams::default())
        .await
        .expect("Workloads")
        .items
    {
        let text = serde_json::to_string(&w.status).expect("json");
        out.push((format!("Workload {} status", w.name_any()), text));
    }
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), ns);
    for p in policies
        .list(&ListParams::default())
        .await
        .expect("policies")
        .items
    {
        let text = serde_json::to_string(&p.status).expect("json");
        out.push((format!("PatchPolicy {} status", p.name_any()), text));
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    for e in events
        .list(&ListParams::default())
        .await
        .expect("Events")
        .items
    {
        let text = format!("{:?} {:?}", e.reason, e.message);
        out.push((format!("Event {}", e.name_any()), text));
    }
    out
}

fn assert_absent(texts: &[(String, String)], needles: &[&str]) {
    for (whence, text) in texts {
        for needle in needles {
            assert!(!text.contains(needle), "{whence} holds {needle:?}: {text}");
        }
    }
}

async fn status_of(workloads: &Api<Workload>, name: &str) -> Option<WorkloadStatus> {
    workload_status(workloads, name).await
}

/// Waits for the one unfinished Job of Workload `name`.
async fn job_of(client: &kube::Client, ns: &str, name: &str) -> Job {
    support::eventually(&format!("a Job for {name}"), WAIT, async || {
        executor::jobs(client, ns)
            .await
            .into_iter()
            .find(|j| label(j, WORKLOAD_LABEL) == name && executor::unfinished(j))
    })
    .await
}

/// Completes Workload `name`'s Job and reports its fixed inventory, as a
/// working script would, and waits for the fix to be verified.
async fn remediate(client: &kube::Client, ns: &str, job: &Job, name: &str) {
    executor::complete(client, ns, &job.name_any(), None).await;
    let mut fixed = workload_inventory(name, FIXED_GLIBC);
    fixed["spec"]["reportedAt"] = json!(patchloop::controller::now().to_string());
    apply(client, ns, fixed).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("{name} Verified"), WAIT, async || {
        status_of(&workloads, name).await.filter(|s| {
            s.remediation.as_ref().and_then(|r| r.phase) == Some(RemediationPhase::Verified)
        })
    })
    .await;
}

async fn start(env: &TestEnv, prefix: &str) -> (kube::Client, String, String) {
    let client = env.client().await;
    let ns = env.namespace(prefix).await;
    let feeds = support::random_suffix();
    fixture_feeds(&client, &feeds).await;
    (client, ns, feeds)
}

/// `$(VAR)` in every form, in every target field and in the name, from a
/// ServiceAccount that may only create and patch Workloads: the schema
/// refuses what it can see, the controller refuses the rest (fields the
/// schema keeps for it to name), no Job runs for them, the status names the
/// field without repeating the value, and the one honest Workload's Job
/// carries no expandable value and no secret.
#[tokio::test]
async fn a_workload_author_cannot_expand_the_job_templates_env_or_secrets() {
    let env = support::env();
    let (client, ns, feeds) = start(env, "attack-expand").await;
    let author = identity::with_rules(
        &ns,
        "workload-author",
        vec![identity::rule(
            "patchloop.dev",
            &["workloads"],
            &["create", "patch"],
        )],
    )
    .await;
    identity::assert_cannot_read_secrets(&author, &ns).await;
    let as_author: Api<Workload> = Api::namespaced(author.clone(), &ns);
    let create = async |doc: Value| {
        let w: Workload = serde_json::from_value(doc).expect("a Workload");
        as_author.create(&PostParams::default(), &w).await
    };

    // Refused on write: the schema's grammar for each field, and names.
    let forms = [
        "$(SSH_PASSPHRASE)",
        "$(SSH_KEY_PASSPHRASE)",
        "$(PATCHLOOP_NAMESPACE)",
        "$$(SSH_PASSPHRASE)",
        "$(SSH_PASSPHRASE",
        "$($(SSH_PASSPHRASE))",
        "10.0.0.9$(SSH_PASSPHRASE)",
    ];
    let mut refused = Vec::new();
    for (i, form) in forms.iter().enumerate() {
        for target in [
            json!({"address": form}),
            json!({"address": "10.0.0.9", "user": form}),
            json!({"address": "10.0.0.9", "port": form}),
            json!({"node": form}),
        ] {
            refused.push((format!("refused-{i}-{}", refused.len()), target));
        }
    }
    for (name, target) in &refused {
        match create(workload_with(name, target.clone())).await {
            Err(kube::Error::Api(s)) if s.code == 422 => {
                assert!(s.message.contains("spec.target"), "{}", s.message);
            }
            other => panic!("{target} was accepted: {other:?}"),
        }
    }
    for form in ["$(SSH_PASSPHRASE)", "$$(x)", "web-$(x)"] {
        match create(workload_with(form, json!({"address": "10.0.0.9"}))).await {
            Err(kube::Error::Api(s)) if s.code == 422 => {}
            other => panic!("a Workload named {form} was accepted: {other:?}"),
        }
    }

    // Kept by the schema for the controller to name: unknown fields, at
    // any depth, with any form; one added by a later patch.
    let tricked = [
        (
            "evil-extra",
            json!({"address": "10.0.0.9", "comment": "$(SSH_PASSPHRASE)"}),
        ),
        (
            "evil-nested",
            json!({"address": "10.0.0.9", "opts": {"proxy": "$(SSH_KEY_PASSPHRASE)"}}),
        ),
        (
            "evil-escaped",
            json!({"address": "10.0.0.9", "x": "$$(PATCHLOOP_NAMESPACE)"}),
        ),
        (
            "evil-key",
            json!({"address": "10.0.0.9", "$(SSH_PASSPHRASE)": "$(X"}),
        ),
    ];
    for (name, target) in &tricked {
        create(workload_with(name, target.clone()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    create(workload_with(
        "evil-patched",
        json!({"address": "10.0.0.9"}),
    ))
    .await
    .expect("evil-patched");
    as_author
        .patch(
            "evil-patched",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"target": {"login": "$(SSH_PASSPHRASE)"}}})),
        )
        .await
        .expect("the author may patch their Workload");
    let honest_target = json!({"address": "web-01.fleet.example", "user": "patch", "port": 2222});
    create(workload_with("honest", honest_target.clone()))
        .await
        .expect("honest");
    let mut evil: Vec<&str> = tricked.iter().map(|(n, _)| *n).collect();
    evil.push("evil-patched");
    for name in evil.iter().chain(["honest"].iter()) {
        apply(&client, &ns, workload_inventory(name, OLD_GLIBC)).await;
    }

    let sentinels = Sentinels::new();
    policy_with_secrets(&client, &ns, &sentinels, json!({"maxConcurrent": 10})).await;
    let _pl = Patchloop::start(env, &ns, &feeds, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);

    // Each is told what to fix, in words that do not repeat the value.
    for name in &evil {
        let status = support::eventually(&format!("{name}: InvalidTarget"), WAIT, async || {
            status_of(&workloads, name).await.filter(|s| {
                condition_reason(&s.conditions, "Ready") == Some("InvalidTarget")
                    && s.installable.is_some()
            })
        })
        .await;
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "False");
        assert!(
            ready
                .message
                .starts_with("spec.target: has a field other than"),
            "{name}: {}",
            ready.message
        );
        assert!(
            ready.message.contains("no remediation Job runs"),
            "{}",
            ready.message
        );
        assert!(!ready.message.contains('$'), "{}", ready.message);
        assert_eq!(ready.observed_generation, status.observed_generation);
    }

    // The honest Workload's Job runs (the policy does start Jobs here),
    // with its target literally and nothing expandable.
    let job = job_of(&client, &ns, "honest").await;
    let vars: BTreeMap<String, String> = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    assert_eq!(vars["PATCHLOOP_TARGET"], honest_target.to_string());
    assert_eq!(
        contract_file(&job, "target.json"),
        Some(honest_target.to_string().as_str())
    );
    remediate(&client, &ns, &job, "honest").await;

    // Many rounds later, still no Job for any of the others.
    let jobs = executor::jobs(&client, &ns).await;
    assert!(
        jobs.iter().all(|j| label(j, WORKLOAD_LABEL) == "honest"),
        "a Job for an invalid target: {:?}",
        jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
    );
    let texts = readable_texts(&client, &ns, &sentinels.plain).await;
    let mut needles: Vec<&str> = sentinels.all().to_vec();
    needles.push("$(");
    assert_absent(&texts, &needles);
}

/// ConfigMaps named like the next Jobs, from a ServiceAccount that may only
/// create ConfigMaps: the Jobs read their own contract (the Pod template's
/// annotations), never a ConfigMap; the controller neither adopts, changes
/// nor reads them; verification uses the Job's own package list; and a
/// failed Job's termination message reaches status as one printable line.
#[tokio::test]
async fn a_config_map_named_like_the_next_job_changes_nothing() {
    let env = support::env();
    let (client, ns, feeds) = start(env, "attack-configmap").await;
    let writer = identity::with_rules(
        &ns,
        "configmap-writer",
        vec![identity::rule("", &["configmaps"], &["create"])],
    )
    .await;
    identity::assert_cannot_read_secrets(&writer, &ns).await;
    apply(&client, &ns, workload("web-01", json!({"tier": "gold"}))).await;
    apply(&client, &ns, workload_inventory("web-01", OLD_GLIBC)).await;
    let sentinels = Sentinels::new();
    policy_with_secrets(
        &client,
        &ns,
        &sentinels,
        // Long enough a backoff to read the failed attempt's record.
        json!({"paused": true, "attempts": 3, "backoff": "10s", "maxFailures": 5}),
    )
    .await;
    let _pl = Patchloop::start(env, &ns, &feeds, &[]).await;
    let workloads: Api<Workload> = Api::namespaced(client.clone(), &ns);
    let fix_set = support::eventually("web-01's fix set", WAIT, async || {
        status_of(&workloads, "web-01")
            .await
            .and_then(|s| s.installable)
            .map(|i| i.fix_set)
    })
    .await;

    // The attacker's lists: package-manager actions and another machine,
    // under each name the next attempts will use, dressed as Patchloop's.
    let as_writer: Api<ConfigMap> = Api::namespaced(writer.clone(), &ns);
    let forged = [
        ("packages", "openssh-server- 1:0\nsudo+ 0\nlibc6=2.0 0\n"),
        (
            "packages.json",
            r#"[{"name":"openssh-server-","fixed":"1:0"}]"#,
        ),
        ("target.json", r#"{"address":"attacker.example"}"#),
        ("advisories", "FORGED-1\n"),
        ("nonce", "forged-nonce"),
    ];
    let mut planted = BTreeMap::new();
    for attempt in 1..=3 {
        let name = format!("web-01-{fix_set}-{attempt}");
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                "app.kubernetes.io/managed-by": "patchloop",
                "patchloop.dev/purpose": "remediation"}},
            "data": BTreeMap::from(forged),
        }))
        .expect("a ConfigMap");
        let made = as_writer
            .create(&PostParams::default(), &cm)
            .await
            .unwrap_or_else(|e| panic!("the writer may create ConfigMaps: {e}"));
        planted.insert(name, made.resource_version());
    }
    let policies: Api<PatchPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .patch(
            "gold",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"remediation": {"paused": false}}})),
        )
        .await
        .expect("resume the policy");

    // Attempt 1 fails with a message built to forge a status line.
    let first = job_of(&client, &ns, "web-01").await;
    assert_eq!(first.name_any(), format!("web-01-{fix_set}-1"));
    executor::fail(
        &client,
        &ns,
        &first.name_any(),
        Some("refused: bad input\n\u{1b}[2K\rReady: True\u{202e}\tall fixed\u{7}"),
    )
    .await;
    let failed = support::eventually("attempt 1 recorded as failed", WAIT, async || {
        status_of(&workloads, "web-01").await.filter(|s| {
            s.remediation
                .as_ref()
                .is_some_and(|r| r.attempt == 1 && r.phase == Some(RemediationPhase::BackingOff))
        })
    })
    .await;
    let message = failed
        .remediation
        .and_then(|r| r.message)
        .unwrap_or_default();
    assert!(
        message.contains("refused: bad input [2K Ready: True all fixed"),
        "{message:?}"
    );
    assert!(
        !message.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{message:?}"
    );

    // Attempt 2 runs from its own contract and is verified by it.
    let second = job_of(&client, &ns, "web-01").await;
    assert_eq!(second.name_any(), format!("web-01-{fix_set}-2"));
    for job in [&first, &second] {
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        assert!(
            pod.volumes.iter().flatten().all(|v| v.config_map.is_none()),
            "{}: mounts a ConfigMap",
            job.name_any()
        );
        assert_eq!(
            contract_file(job, "packages"),
            Some("libc-bin 2.36-9+deb12u3 glibc\nlibc6 2.36-9+deb12u3 glibc\n")
        );
        assert_eq!(
            contract_file(job, "target.json"),
            Some(r#"{"address":"10.0.0.1"}"#)
        );
    }
    remediate(&client, &ns, &second, "web-01").await;

    // The planted ConfigMaps are as the attacker left them: not adopted,
    // not rewritten.
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for (name, version) in &planted {
        let cm = maps.get(name).await.expect("still there");
        assert_eq!(&cm.resource_version(), version, "{name} was written");
        assert!(cm.metadata.owner_references.is_none(), "{name} adopted");
    }
    let jobs: Vec<String> = executor::jobs(&client, &ns)
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(
        jobs,
        [format!("web-01-{fix_set}-1"), format!("web-01-{fix_set}-2")]
    );
    // Nothing of the forgery reaches a Job, a status or an Event (the
    // planted ConfigMaps themselves aside).
    let texts: Vec<(String, String)> = readable_texts(&client, &ns, &sentinels.plain)
        .await
        .into_iter()
        .filter(|(whence, _)| !whence.starts_with("ConfigMap web-01-"))
        .collect();
    let mut needles = sentinels.all().to_vec();
    needles.extend([
        "openssh-server-",
        "sudo+",
        "libc6=",
        "attacker.example",
        "FORGED-1",
        "forged-nonce",
    ]);
    assert_absent(&texts, &needles);
}
