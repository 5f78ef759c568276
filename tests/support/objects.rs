//! Builders for the Patchloop objects integration tests apply, the real
//! fixture feeds, and readers of the statuses they assert on.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::ListParams;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use patchloop::api::change_request::TEMPLATE_LABEL;
use patchloop::api::common::Duration as ApiDuration;
use patchloop::api::common::Severity;
use patchloop::api::feed::FeedSource;
use patchloop::api::inventory::{InventorySubject, PackageFormat, SubjectKind};
use patchloop::api::policy::{
    Deadlines, EmergencyRule, ExceptionLimits, FixApproval, MaintenanceWindow, Remediation,
    RemediationMode, TemplateApproval, TemplatePolicy,
};
use patchloop::api::{
    AdvisoryFeed, AdvisoryFeedSpec, ChangeRequest, Inventory, InventorySpec, PatchPolicy,
    PatchPolicySpec, Template, TemplateSpec, Workload, WorkloadSpec,
};
use serde_json::{Value, json};

/// The repository's test fixtures.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// How long a test waits for the controller to converge.
pub const WAIT: Duration = Duration::from_secs(60);

/// The result line a build container reporting `image` (a digest
/// reference) with `packages` ends its termination message with.
pub fn build_result_line(image: &str, packages: &[&str]) -> String {
    use patchloop::engine::change::{BuildReport, packages_digest, result_line};
    let lines: Vec<String> = packages.iter().map(|p| (*p).to_owned()).collect();
    result_line(&BuildReport {
        image: image
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .expect("a digest reference"),
        packages: packages_digest(&lines).expect("package lines"),
    })
}

/// The API of a Patchloop kind, in `ns` (AdvisoryFeeds are cluster-scoped).
pub fn api_of(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let plural = match kind {
        "PatchPolicy" => "patchpolicies".to_owned(),
        "Inventory" => "inventories".to_owned(),
        k => format!("{}s", k.to_lowercase()),
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("patchloop.dev", "v1alpha1", kind),
        &plural,
    );
    if kind == "AdvisoryFeed" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), ns, &resource)
    }
}

/// `maxDropPercent` when a feed leaves it out (`default_max_drop_percent`
/// in `src/api/feed.rs`, private there).
const DEFAULT_MAX_DROP_PERCENT: i32 = 50;

/// The manifest of a typed object, as [`apply`] takes it: the builders
/// construct the crate's own API types, so a renamed field breaks the build
/// rather than a test at run time.
fn manifest<K: serde::Serialize>(object: &K) -> Value {
    serde_json::to_value(object).expect("an API object serializes")
}

/// A typed value from the JSON a test wrote (a label map, a time, a format).
fn from_json<T: serde::de::DeserializeOwned>(value: Value, what: &str) -> T {
    serde_json::from_value(value).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Applies a manifest (any Patchloop kind) with the test's field manager.
pub async fn apply(client: &kube::Client, ns: &str, doc: Value) {
    let kind = doc["kind"].as_str().expect("kind").to_owned();
    let name = doc["metadata"]["name"].as_str().expect("name").to_owned();
    let api = api_of(client, ns, &kind);
    let obj: DynamicObject = serde_json::from_value(doc).expect("object");
    api.patch(
        &name,
        &PatchParams::apply("test-reporter").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"));
}

/// An AdvisoryFeed reading `path` in `format` ("OSV" or "KEV") every hour,
/// loaded by the controllers started with `feed_label` `label`.
pub fn feed(name: &str, label: &str, format: &str, path: &str) -> Value {
    let mut feed = AdvisoryFeed::new(
        name,
        AdvisoryFeedSpec {
            source: FeedSource {
                url: None,
                config_map: None,
                path: Some(path.to_owned()),
            },
            format: from_json(json!(format), "a feed format"),
            ecosystems: Vec::new(),
            interval: ApiDuration("1h".to_owned()),
            max_drop_percent: DEFAULT_MAX_DROP_PERCENT,
        },
    );
    feed.metadata.labels = Some(BTreeMap::from([(
        "patchloop-test".to_owned(),
        label.to_owned(),
    )]));
    manifest(&feed)
}

/// A dpkg Inventory of `subject` under its canonical name.
fn dpkg_inventory(
    subject: InventorySubject,
    reporter: &str,
    packages: &[&str],
    reported_at: &str,
) -> Value {
    let spec = InventorySpec {
        reporter: Some(reporter.to_owned()),
        reported_at: from_json(json!(reported_at), "an RFC 3339 time"),
        format: PackageFormat::Dpkg,
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        image: None,
        nonce: None,
        subject,
    };
    manifest(&Inventory::new(
        &spec.subject.canonical_inventory_name(),
        spec,
    ))
}

/// A Debian 12 Workload reached at 10.0.0.1, with `labels` (a JSON object of strings).
pub fn workload(name: &str, labels: Value) -> Value {
    let mut workload = Workload::new(
        name,
        WorkloadSpec {
            platform: "Debian:12".to_owned(),
            template_ref: None,
            target: Some(json!({"address": "10.0.0.1"})),
            paused: false,
        },
    );
    workload.metadata.labels = Some(from_json(labels, "labels"));
    manifest(&workload)
}

/// A PatchPolicy selecting `selector` (a JSON object of labels) with the
/// tests' deadlines (critical 3d, known-exploited 2d) and an inventory
/// max age no fixture reaches; it reports and never remediates.
pub fn policy(name: &str, selector: Value, priority: i32) -> Value {
    manifest(&typed_policy(name, selector, priority))
}

fn typed_policy(name: &str, selector: Value, priority: i32) -> PatchPolicy {
    let days = |d: &str| ApiDuration(d.to_owned());
    PatchPolicy::new(
        name,
        PatchPolicySpec {
            selector: LabelSelector {
                match_labels: Some(from_json(selector, "labels")),
                match_expressions: None,
            },
            priority,
            deadlines: Deadlines {
                critical: days("3d"),
                high: days("7d"),
                medium: days("30d"),
                low: days("90d"),
                unknown: days("30d"),
            },
            known_exploited: Some(days("2d")),
            inventory_max_age: days("3650d"),
            approval: FixApproval::default(),
            exceptions: ExceptionLimits::default(),
            maintenance_windows: Vec::new(),
            emergency: None,
            remediation: Remediation::default(),
            templates: TemplatePolicy::default(),
        },
    )
}

pub const OLD_GLIBC: &[&str] = &[
    "libc6 2.36-9+deb12u2 glibc",
    "libc-bin 2.36-9+deb12u2 glibc",
    "bash 5.2.15-2+b8 bash 5.2.15-2",
];
pub const FIXED_GLIBC: &[&str] = &[
    "libc6 2.36-9+deb12u3 glibc",
    "libc-bin 2.36-9+deb12u3 glibc",
    "bash 5.2.15-2+b8 bash 5.2.15-2",
];

/// Feeds of the real fixtures, labelled for this test only.
pub async fn fixture_feeds(client: &kube::Client, label: &str) {
    apply(
        client,
        "",
        feed(
            &format!("osv-{label}"),
            label,
            "OSV",
            &format!("{FIXTURES}/osv/debian"),
        ),
    )
    .await;
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

pub async fn workload_status(
    api: &Api<Workload>,
    name: &str,
) -> Option<patchloop::api::WorkloadStatus> {
    api.get_status(name).await.ok().and_then(|w| w.status)
}

/// True when the status's compliance state is `state`.
pub fn in_state(status: &patchloop::api::WorkloadStatus, state: &str) -> bool {
    status
        .compliance
        .as_ref()
        .and_then(|c| c.state)
        .is_some_and(|s| s.to_string() == state)
}

pub fn condition<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a str> {
    conds
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.status.as_str())
}

/// A condition's reason.
pub fn condition_reason<'a>(
    conds: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> Option<&'a str> {
    conds
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.reason.as_str())
}

/// A PatchPolicy that remediates `tier`, always inside a window, one
/// Workload at a time without canary, with `remediation` fields (a JSON
/// object in the API's spelling) merged over those settings.
pub fn remediating_policy(name: &str, tier: &str, remediation: Value) -> Value {
    let mut policy = typed_policy(name, json!({"tier": tier}), 100);
    policy.spec.maintenance_windows = vec![MaintenanceWindow {
        schedule: "* * * * *".to_owned(),
        duration: ApiDuration("2h".to_owned()),
        time_zone: "UTC".to_owned(),
    }];
    policy.spec.remediation = Remediation {
        mode: RemediationMode::Remediate,
        canary: 0,
        attempts: 1,
        job_template: Some(json!({"spec": {"template": {"spec": {
            "containers": [{"name": "patch", "image": "debian:12", "command": ["/scripts/patch.sh"]}]
        }}}})),
        ..Remediation::default()
    };
    let mut p = manifest(&policy);
    if let (Some(r), Some(extra)) = (
        p["spec"]["remediation"].as_object_mut(),
        remediation.as_object(),
    ) {
        r.extend(extra.clone());
    }
    p
}

/// A Template (platform Debian:12) with build and test Job templates.
pub fn template(name: &str, labels: Value) -> Value {
    let job = |what: &str| {
        json!({"spec": {"template": {"spec": {"containers": [
            {"name": what, "image": "registry.example/tools/image-builder:1", "command": ["/bin/sh", "-c", what]}
        ]}}}})
    };
    let mut template = Template::new(
        name,
        TemplateSpec {
            platform: "Debian:12".to_owned(),
            image: format!("registry.example/golden/{name}:1"),
            build_job_template: Some(job("build")),
            test_job_template: Some(job("smoke-test")),
            keep_closed_change_requests: None,
        },
    );
    template.metadata.labels = Some(from_json(labels, "labels"));
    manifest(&template)
}

/// The canonical Inventory name of a subject (what every reporter writes).
pub fn inventory_name(kind: SubjectKind, name: &str, revision: Option<i64>) -> String {
    InventorySubject {
        kind,
        name: name.to_owned(),
        revision,
    }
    .canonical_inventory_name()
}

/// The reported inventory of a Template's first revision (its canonical
/// name, `template-<template>-r1`).
pub fn template_inventory(template: &str, packages: &[&str], reported_at: &str) -> Value {
    let subject = InventorySubject {
        kind: SubjectKind::Template,
        name: template.to_owned(),
        revision: Some(1),
    };
    dpkg_inventory(subject, "image-scan", packages, reported_at)
}

/// A PatchPolicy that also governs templates, with `approval` for their
/// rebuilds and critical findings as its emergencies.
pub fn template_policy(name: &str, selector: Value, approval: TemplateApproval) -> Value {
    let mut policy = typed_policy(name, selector, 10);
    policy.spec.templates = TemplatePolicy { approval };
    policy.spec.emergency = Some(EmergencyRule {
        severities: vec![Severity::Critical],
        known_exploited: false,
    });
    manifest(&policy)
}

/// The ChangeRequests of a Template (found by its label), oldest first.
pub async fn requests(client: &kube::Client, ns: &str, template: &str) -> Vec<ChangeRequest> {
    let api: Api<ChangeRequest> = Api::namespaced(client.clone(), ns);
    let mut items = api
        .list(&ListParams::default().labels(&format!("{TEMPLATE_LABEL}={template}")))
        .await
        .expect("listing ChangeRequests")
        .items;
    items.sort_by_key(|c| c.metadata.creation_timestamp.clone());
    items
}

/// A Workload's own Inventory, under the one name that may speak for it
/// (`InventorySubject::canonical_inventory_name`: `workload-<workload>`).
pub fn workload_inventory(workload: &str, packages: &[&str]) -> Value {
    let subject = InventorySubject {
        kind: SubjectKind::Workload,
        name: workload.to_owned(),
        revision: None,
    };
    dpkg_inventory(subject, "test", packages, "2026-11-24T08:00:00Z")
}

/// The label and annotation the wake helpers set; nothing selects on it.
const WAKE_KEY: &str = "patchloop-test/wake";

/// Sets a label of PatchPolicy `policy` (a new value of [`WAKE_KEY`]): the
/// controller then reconciles that policy (its own watch takes any change),
/// every Workload and Template of `ns` (a policy's labels are part of what
/// wakes them, `run.rs` `policy_stream`), and through the Templates their
/// open ChangeRequests. The wake of a "nothing happened" check: once those
/// reconciles are counted ([`super::patchloop::Patchloop::reconciled_after`]),
/// they have seen everything applied before and written what they would.
pub async fn wake_namespace(client: &kube::Client, ns: &str, policy: &str) {
    let labels = json!({ WAKE_KEY: super::random_suffix() });
    patch_metadata(
        client,
        ns,
        "PatchPolicy",
        policy,
        json!({ "labels": labels }),
    )
    .await;
}

/// Sets an annotation ([`WAKE_KEY`]) of an object whose own watch takes
/// every change (a PatchPolicy, Template or ChangeRequest), so its
/// controller reconciles it again; a Template's event also wakes the
/// ChangeRequests naming it.
pub async fn wake(client: &kube::Client, ns: &str, kind: &str, name: &str) {
    let annotations = json!({ WAKE_KEY: super::random_suffix() });
    patch_metadata(
        client,
        ns,
        kind,
        name,
        json!({ "annotations": annotations }),
    )
    .await;
}

async fn patch_metadata(client: &kube::Client, ns: &str, kind: &str, name: &str, metadata: Value) {
    api_of(client, ns, kind)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "metadata": metadata })),
        )
        .await
        .unwrap_or_else(|e| panic!("waking {kind}/{name}: {e}"));
}
