//! Finding 2: package names an Inventory reporter writes reach apt and dnf
//! as root. A node agent (the shipped `patchloop-node-agent` Role) reports
//! Inventories whose package names are action words, selectors or patterns
//! for apt, dnf or apk, in each `spec.format`, for Workloads under a
//! Remediate policy with an open window. Each line claims the vulnerable
//! glibc as its source, so without the grammar check the name would enter
//! the fix set and the Job's package list.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::Api;
use kube::api::ListParams;
use patchloop::api::inventory::{InventorySubject, SubjectKind};
use patchloop::api::{Inventory, Workload};
use serde_json::{Value, json};

use crate::identity;
use crate::support;
use crate::support::executor;
use crate::support::objects::{
    OLD_GLIBC, WAIT, apply, condition, condition_reason, fixture_feeds, remediating_policy,
    workload,
};
use crate::support::patchloop::Patchloop;

/// (format, the attacking line, the action word that must never appear in
/// a Job, a ConfigMap, a status or an Event).
const ATTACKS: [(&str, &str, &str); 15] = [
    ("dpkg", "libc6- 2.36-9+deb12u2 glibc", "libc6-"),
    (
        "dpkg",
        "libc6=2.36-9+deb12u3 2.36-9+deb12u2 glibc",
        "libc6=",
    ),
    (
        "dpkg",
        "libc6/bookworm-security 2.36-9+deb12u2 glibc",
        "libc6/",
    ),
    ("dpkg", "libc6:amd64- 2.36-9+deb12u2 glibc", "amd64-"),
    ("dpkg", "--purge 2.36-9+deb12u2 glibc", "--purge"),
    ("dpkg", "?garbage 2.36-9+deb12u2 glibc", "?garbage"),
    ("dpkg", "libc6 2.36-9+deb12u2;reboot glibc", ";reboot"),
    ("rpm", "glibc* 2.36-9+deb12u2 glibc", "glibc*"),
    ("rpm", "@core 2.36-9+deb12u2 glibc", "@core"),
    ("rpm", "libc6@updates 2.36-9+deb12u2 glibc", "libc6@"),
    (
        "rpm",
        "openssh-server- 2.36-9+deb12u2 glibc",
        "openssh-server-",
    ),
    ("apk", "libc6- 2.36-r9 glibc", "libc6-"),
    ("apk", "!libc6 2.36-r9 glibc", "!libc6"),
    ("apk", "libc6=2.36 2.36-r9 glibc", "libc6="),
    ("apk", "libc6>2 2.36-r9 glibc", "libc6>"),
];

/// The Inventory a node agent reports for `workload`, under its canonical
/// name.
fn reported(workload: &str, format: &str, packages: &[&str]) -> Value {
    let subject = InventorySubject {
        kind: SubjectKind::Workload,
        name: workload.to_owned(),
        revision: None,
    };
    json!({
        "apiVersion": "patchloop.dev/v1alpha1", "kind": "Inventory",
        "metadata": {"name": subject.canonical_inventory_name()},
        "spec": {
            "subject": {"kind": "Workload", "name": workload},
            "reporter": "node-agent", "reportedAt": "2026-11-24T08:00:00Z", "format": format,
            "packages": packages,
        }
    })
}

fn status_text<K: serde::Serialize>(objects: &[K]) -> String {
    objects
        .iter()
        .map(|o| serde_json::to_value(o).map(|v| v["status"].to_string()))
        .collect::<Result<Vec<_>, _>>()
        .expect("serializable")
        .join("\n")
}

#[tokio::test]
async fn action_words_in_an_inventory_never_reach_a_job() {
    let env = support::env();
    let admin = env.client().await;
    let ns = env.namespace("attack-packages").await;
    let feeds = support::random_suffix();
    fixture_feeds(&admin, &feeds).await;
    apply(
        &admin,
        &ns,
        remediating_policy("gold", "gold", json!({"maxConcurrent": 50, "canary": 0})),
    )
    .await;
    let agent = identity::shipped_role(&ns, "node-agent", "patchloop-node-agent").await;
    identity::assert_cannot_read_secrets(&agent, &ns).await;
    // No grace period: the rpm and apk machines have no advisory feed here,
    // and their verdict must not wait five minutes for one to load.
    let _pl = Patchloop::start(env, &ns, &feeds, &["--grace-period=0s"]).await;

    // The attacker registers its Workloads and reports one bad line among
    // the real vulnerable glibc lines; several bad lines in one list too.
    // (apk versions have their own grammar: the companions follow it.)
    let apk_glibc = [
        "libc6 2.36-r2 glibc",
        "libc-bin 2.36-r2 glibc",
        "bash 5.2.15-r2",
    ];
    let mut attacked = Vec::new();
    for (i, (format, line, _)) in ATTACKS.iter().enumerate() {
        let name = format!("attacked-{i:02}");
        // Each on a platform of its Inventory's family (another family is
        // FormatMismatch, below).
        let mut machine = workload(&name, json!({"tier": "gold"}));
        machine["spec"]["platform"] = json!(match *format {
            "rpm" => "AlmaLinux:9",
            "apk" => "Alpine:v3.20",
            _ => "Debian:12",
        });
        apply(&admin, &ns, machine).await;
        let mut packages = if *format == "apk" {
            apk_glibc.to_vec()
        } else {
            OLD_GLIBC.to_vec()
        };
        packages.insert(i % 3, line);
        apply(&agent, &ns, reported(&name, format, &packages)).await;
        attacked.push((name, i % 3));
    }
    let all_dpkg: Vec<&str> = ATTACKS
        .iter()
        .filter(|(f, _, _)| *f == "dpkg")
        .map(|(_, l, _)| *l)
        .chain(OLD_GLIBC.iter().copied())
        .collect();
    apply(
        &admin,
        &ns,
        workload("attacked-all", json!({"tier": "gold"})),
    )
    .await;
    apply(&agent, &ns, reported("attacked-all", "dpkg", &all_dpkg)).await;
    attacked.push(("attacked-all".into(), 0));

    // Each Inventory is Ready=False, naming the entry and the rule; each
    // Workload says which Inventory cannot be read.
    let inventories: Api<Inventory> = Api::namespaced(admin.clone(), &ns);
    let workloads: Api<Workload> = Api::namespaced(admin.clone(), &ns);
    for (name, index) in &attacked {
        let inv_name = format!("workload-{name}");
        let message = support::eventually(&format!("{inv_name} refused"), WAIT, async || {
            let status = inventories.get_status(&inv_name).await.ok()?.status?;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "False" && ready.reason == "InvalidPackage")
                .then(|| ready.message.clone())
        })
        .await;
        assert!(
            message.starts_with(&format!("spec.packages[{index}]: field ")),
            "{inv_name}: {message}"
        );
        let why = support::eventually(&format!("{name} judged"), WAIT, async || {
            let status = workloads.get_status(name).await.ok()?.status?;
            (condition(&status.conditions, "Compliant") == Some("Unknown")
                && condition_reason(&status.conditions, "Compliant") == Some("InvalidInventory"))
            .then(|| {
                status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Compliant")
                    .map(|c| c.message.clone())
                    .unwrap_or_default()
            })
        })
        .await;
        assert!(
            why.contains(&format!("Inventory {inv_name}: spec.packages[{index}]")),
            "{name}: {why}"
        );
    }

    // A list in another family than the machine's platform is read for
    // nothing: these Debian lines, declared rpm, would be held to rpm's
    // grammar and ordered by rpm's rules.
    apply(&admin, &ns, workload("mismatched", json!({"tier": "gold"}))).await;
    apply(&agent, &ns, reported("mismatched", "rpm", OLD_GLIBC)).await;
    let message = support::eventually("the rpm Inventory refused", WAIT, async || {
        let status = inventories
            .get_status("workload-mismatched")
            .await
            .ok()?
            .status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.reason == "FormatMismatch").then(|| ready.message.clone())
    })
    .await;
    assert_eq!(
        message,
        "spec.format: is rpm, but the subject's platform is of the dpkg family; nothing from this Inventory is read"
    );
    support::eventually("mismatched judged without it", WAIT, async || {
        let status = workloads.get_status("mismatched").await.ok()?.status?;
        (condition(&status.conditions, "Compliant") == Some("Unknown")
            && condition_reason(&status.conditions, "Compliant") == Some("InvalidInventory"))
        .then_some(())
    })
    .await;
    attacked.push(("mismatched".into(), 0));

    // A subject that is no object name is refused without repeating it.
    let mut stray = reported("x", "dpkg", OLD_GLIBC);
    stray["metadata"]["name"] = json!("stray");
    stray["spec"]["subject"]["name"] = json!("web-01;apt-get remove openssh-server");
    apply(&agent, &ns, stray).await;
    let message = support::eventually("the stray Inventory refused", WAIT, async || {
        let status = inventories.get_status("stray").await.ok()?.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.reason == "NotCanonical").then(|| ready.message.clone())
    })
    .await;
    assert_eq!(
        message,
        "ignored: spec.subject.name is not a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253 characters)"
    );

    // The policy is live: a Workload with an honest inventory of the same
    // packages gets its Job (so the attacked ones were not spared by a
    // closed window or a limit).
    apply(&admin, &ns, workload("honest", json!({"tier": "gold"}))).await;
    apply(&agent, &ns, reported("honest", "dpkg", OLD_GLIBC)).await;
    support::eventually("the honest Workload's Job", WAIT, async || {
        executor::jobs(&admin, &ns)
            .await
            .into_iter()
            .find(|j| executor::label(j, "patchloop.dev/workload") == "honest")
    })
    .await;

    // Nothing of the attack reached a Job, a ConfigMap, a status or an
    // Event.
    let jobs = executor::jobs(&admin, &ns).await;
    for job in &jobs {
        let w = executor::label(job, "patchloop.dev/workload");
        assert!(!attacked.iter().any(|(a, _)| *a == w), "a Job for {w}");
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns);
    let configmaps = configmaps
        .list(&ListParams::default())
        .await
        .expect("ConfigMaps")
        .items;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let events = events
        .list(&ListParams::default())
        .await
        .expect("Events")
        .items;
    let jobs_text: Vec<String> = jobs
        .iter()
        .map(|j: &Job| {
            let env = serde_json::to_string(
                &j.spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .map(|p| &p.containers),
            );
            let annotations = serde_json::to_string(&j.metadata.annotations);
            // The contract files travel as the Pod template's annotations.
            let contract = serde_json::to_string(
                &j.spec
                    .as_ref()
                    .and_then(|s| s.template.metadata.as_ref())
                    .map(|m| &m.annotations),
            );
            format!("{env:?} {annotations:?} {contract:?}")
        })
        .collect();
    let seen = [
        jobs_text.join("\n"),
        serde_json::to_string(&configmaps.iter().map(|c| &c.data).collect::<Vec<_>>())
            .expect("json"),
        events
            .iter()
            .map(|e| format!("{:?} {:?}", e.reason, e.message))
            .collect::<Vec<_>>()
            .join("\n"),
        status_text(
            &workloads
                .list(&ListParams::default())
                .await
                .expect("list")
                .items,
        ),
        status_text(
            &inventories
                .list(&ListParams::default())
                .await
                .expect("list")
                .items,
        ),
    ];
    assert!(
        jobs_text.iter().any(|t| t.contains("libc6")),
        "the honest Job's package list is there to scan: {jobs_text:?}"
    );
    for word in ATTACKS
        .iter()
        .map(|(_, _, word)| *word)
        .chain(["apt-get remove"])
    {
        for (what, text) in [
            "Jobs",
            "ConfigMaps",
            "Events",
            "Workload status",
            "Inventory status",
        ]
        .iter()
        .zip(&seen)
        {
            assert!(!text.contains(word), "{word:?} reached {what}: {text}");
        }
    }
}
