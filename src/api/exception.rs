//! `PatchException`: a documented, expiring waiver, owned by the security
//! team through RBAC.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PatchException tolerates named advisories on the Workloads and Templates it
/// selects, with a reason, an owner and an expiry.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "PatchException",
    namespaced,
    status = "PatchExceptionStatus",
    shortname = "pex",
    category = "patchloop",
    doc = "PatchException is a documented, expiring waiver of named advisories for the objects it selects.",
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expires"),
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Active\")].status"
    ),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.matchedWorkloads"
    ),
    printcolumn(
        name = "Ticket",
        type_ = "string",
        priority = 1,
        json_path = ".spec.ticket"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PatchExceptionSpec {
    /// Advisory ids (DSA-5600-1) or CVE ids (CVE-2024-0001) waived; a CVE id
    /// waives every advisory that lists it.
    #[schemars(length(min = 1))]
    pub advisories: Vec<String>,
    /// Which Workloads and Templates in this namespace the waiver covers.
    pub selector: LabelSelector,
    /// Why the risk is tolerated (and how it is compensated).
    #[schemars(length(min = 1))]
    pub reason: String,
    /// A change or risk ticket reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Who accepted the risk.
    #[schemars(length(min = 1))]
    pub approved_by: String,
    /// When the waiver ends; capped by the matching policies'
    /// `exceptions.maxDuration`, counted from creation.
    pub expires: Time,
}

/// Observed state of a PatchException.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchExceptionStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Active.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Workloads the selector matches.
    #[serde(default)]
    pub matched_workloads: i32,
    /// Templates the selector matches.
    #[serde(default)]
    pub matched_templates: i32,
    /// When the waiver actually ends: `expires`, or earlier when a policy's
    /// `exceptions.maxDuration` caps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_expires: Option<Time>,
    /// The policy whose `maxDuration` capped `expires`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capped_by: Option<String>,
}
