//! `Workload`: one live machine (VM, node, instance) whose patch level is kept
//! within policy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ComplianceSummary, Finding, InventoryReference};

/// The OSV ecosystem pattern a platform must follow: a distribution, a colon
/// and a release (`Debian:12`, `Ubuntu:22.04:LTS`, `AlmaLinux:9`, `Alpine:v3.20`).
pub const PLATFORM_PATTERN: &str = r"^[A-Za-z][A-Za-z ]*:\S.*$";

/// Workload is one live machine: its platform, the template it was provisioned
/// from, and an opaque target handed to remediation Jobs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "Workload",
    namespaced,
    status = "WorkloadStatus",
    shortname = "wl",
    category = "patchloop",
    doc = "Workload is one live machine (VM, node, instance) whose patch level Patchloop keeps within policy.",
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platform"),
    printcolumn(
        name = "Compliance",
        type_ = "string",
        json_path = ".status.compliance.state"
    ),
    printcolumn(
        name = "Overdue",
        type_ = "integer",
        json_path = ".status.compliance.overdue"
    ),
    printcolumn(
        name = "Remediation",
        type_ = "string",
        json_path = ".status.remediation.phase"
    ),
    printcolumn(
        name = "Template-Current",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"TemplateCurrent\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The operating system in OSV ecosystem naming: `Debian:12`,
    /// `Ubuntu:22.04:LTS`, `AlmaLinux:9`, `Alpine:v3.20`. It selects the
    /// advisories and the version ordering (dpkg, rpm, apk).
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z ]*:\S.*$"))]
    pub platform: String,
    /// The Template (and revision) this machine was provisioned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// How remediation Jobs reach the machine. Opaque to the controller and
    /// handed to Jobs as JSON (`PATCHLOOP_TARGET`); scripts must authenticate
    /// the address against host keys pinned in the policy's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "target_schema")]
    pub target: Option<serde_json::Value>,
    /// Excludes this Workload from remediation (it is still evaluated).
    #[serde(default)]
    pub paused: bool,
}

fn target_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "How remediation Jobs reach the machine; opaque to the controller, handed to Jobs as JSON.",
        "properties": {
            "address": {
                "type": "string",
                "description": "Host name or IP address of the machine."
            }
        },
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A reference to a Template revision in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// The Template's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The published revision the machine was provisioned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
}

/// Observed state of a Workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Compliant, InventoryFresh, Conflict, Remediating,
    /// RemediationFailed, RemediationUnverified, TemplateCurrent.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The compliance verdict and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceSummary>,
    /// Actionable findings (Pending, Overdue, Exempt), one per advisory, most
    /// urgent first, capped; no-fix and blocked findings are counts only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Actionable findings left out of `findings` by the cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub findings_truncated: i32,
    /// What a remediation Job would install now: the due fixes (Pending or
    /// Overdue, not exempt, not blocked) past their soak time or emergencies.
    /// The driving policy plans its rollout from this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installable: Option<InstallableFixes>,
    /// The per-Workload remediation record; survives Job cleanup and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<RemediationRecord>,
    /// Which template revision the machine runs and which is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateStatus>,
    /// The inventory the evaluation used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryReference>,
    /// The PatchPolicies matching this Workload; the first drives remediation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Where a Workload stands with its template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    /// The Template's name.
    pub name: String,
    /// The revision the machine was provisioned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The Template's latest published revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<i64>,
    /// True when `revision` is the latest.
    #[serde(default)]
    pub current: bool,
}

/// The fixes a Workload needs that may be installed now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallableFixes {
    /// Short digest of the packages and minimum fixed versions: remediation
    /// Jobs are named after it, and a new digest starts a new attempt count.
    pub fix_set: String,
    /// How many packages.
    #[serde(default)]
    pub packages: i32,
    /// How many advisories they address.
    #[serde(default)]
    pub advisories: i32,
    /// At least one is an emergency by the driving policy (may run outside
    /// maintenance windows).
    #[serde(default)]
    pub emergency: bool,
    /// The earliest due date among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Time>,
}

/// Phase of a Workload's remediation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RemediationPhase {
    /// The Job exists and has not finished.
    Running,
    /// The Job succeeded; waiting for an inventory written after it started
    /// that shows the fixed versions.
    Verifying,
    /// A fresh inventory confirmed the fix.
    Verified,
    /// The Job failed; another attempt follows after `backoffUntil`.
    BackingOff,
    /// Every attempt failed: `RemediationFailed`.
    Failed,
    /// The Job succeeded but no fresh inventory confirmed the fix within
    /// `verifyTimeout`: `RemediationUnverified`.
    Unverified,
    /// The Job's script refused to act (exit code 2: a configuration error
    /// on this Workload, e.g. an unpinned host key or invalid input):
    /// `RemediationRefused`. No new attempt until the Workload's spec
    /// changes; never counted toward the policy's `maxFailures`.
    Refused,
}

/// The result of one finished attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RemediationOutcome {
    /// The Job succeeded and a fresh inventory confirmed the fix.
    Verified,
    /// The Job failed.
    Failed,
    /// The Job succeeded but the fix was not confirmed in time.
    Unverified,
    /// The Job's script refused to act (exit code 2): a configuration error
    /// on this Workload, not a rollout failure.
    Refused,
}

/// The per-Workload remediation ledger, written by the workload reconciler
/// from the Jobs it observes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRecord {
    /// The PatchPolicy that drives this Workload's remediation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Short hash of the set of (package, minimum fixed version) addressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix_set: Option<String>,
    /// The attempt number for this fix set, from 1.
    #[serde(default)]
    pub attempt: i32,
    /// The current or last Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Running, Verifying, Verified, BackingOff, Failed, Unverified or Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RemediationPhase>,
    /// When the current or last Job started (server time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The outcome of the last finished attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RemediationOutcome>,
    /// No new attempt starts before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<Time>,
    /// What happened, e.g. the failed pod's termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// With phase `Refused`: the Workload's `metadata.generation` the
    /// refused Job was created for; a new attempt waits for a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_generation: Option<i64>,
}
