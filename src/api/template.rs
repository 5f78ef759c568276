//! `Template`: a provisioning blueprint (golden image, VM template, base
//! container image) that is rebuilt through a ChangeRequest when it falls out
//! of policy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ComplianceSummary, Finding, InventoryReference, preserved_object};

/// Template is a provisioning blueprint with the Jobs that rebuild and test
/// it; its current revision's inventory is judged like a live machine's, but
/// never ages.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "Template",
    namespaced,
    status = "TemplateStatus",
    shortname = "tpl",
    category = "patchloop",
    doc = "Template is a provisioning blueprint (golden image, VM template) that Patchloop rebuilds, tests and publishes through a ChangeRequest when it falls out of policy.",
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platform"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(
        name = "Compliance",
        type_ = "string",
        json_path = ".status.compliance.state"
    ),
    printcolumn(
        name = "Change-Request",
        type_ = "string",
        json_path = ".status.changeRequest"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// The operating system in OSV ecosystem naming (`Debian:12`,
    /// `Ubuntu:22.04:LTS`, `AlmaLinux:9`, `Alpine:v3.20`).
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z ]*:\S.*$"))]
    pub platform: String,
    /// The image of revision 1: a registry reference, an AMI id or a VM
    /// template name. Later revisions' images are in `status.image`.
    #[schemars(length(min = 1))]
    pub image: String,
    /// A batch/v1 JobTemplateSpec that rebuilds the image with the missing
    /// fixes; the controller adds the build contract (current image, package
    /// list, nonce, where to report the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub build_job_template: Option<serde_json::Value>,
    /// A batch/v1 JobTemplateSpec that tests a rebuilt image before it is
    /// published (`PATCHLOOP_IMAGE` names the image under test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub test_job_template: Option<serde_json::Value>,
    /// How many closed ChangeRequests (Rejected, Failed, Obsolete) of this
    /// Template to keep, newest first (default 10); older ones are deleted
    /// with their build Jobs and build-result Inventories. Requests that
    /// published a revision in `status.history` are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_closed_change_requests: Option<i32>,
}

/// The default of `spec.keepClosedChangeRequests`.
pub const DEFAULT_KEEP_CLOSED_CHANGE_REQUESTS: i32 = 10;

/// Observed state of a Template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Compliant, ChangeRequestOpen.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The latest published revision (1 until a rebuild is published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
    /// The latest published image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Every published revision, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TemplateRevision>,
    /// The compliance of the current revision's inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceSummary>,
    /// Actionable findings of the current revision, capped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Actionable findings left out of `findings` by the cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub findings_truncated: i32,
    /// The inventory the evaluation used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryReference>,
    /// The open ChangeRequest, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_request: Option<String>,
    /// Workloads provisioned from an older revision than `revision`.
    #[serde(default)]
    pub stale_workloads: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// One published revision of a Template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRevision {
    /// The revision number.
    #[schemars(range(min = 1))]
    pub revision: i64,
    /// The image of this revision.
    pub image: String,
    /// The Inventory object describing this revision's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<String>,
    /// When it was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<Time>,
    /// The ChangeRequest that produced it (none for revision 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_request: Option<String>,
}
