//! `Inventory`: what is installed on a machine or in an image, written by
//! reporters. A kind of its own so reporters get RBAC for inventories only and
//! watchers of Workloads never carry package lists.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Inventory lists the packages installed on a Workload, a Template revision
/// or a ChangeRequest's build result, in a compact one-line-per-package form.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "Inventory",
    plural = "inventories",
    namespaced,
    status = "InventoryStatus",
    shortname = "inv",
    category = "patchloop",
    doc = "Inventory lists the packages installed on a Workload, a Template revision or a build result; the controller finds it by spec.subject.",
    printcolumn(
        name = "Subject-Kind",
        type_ = "string",
        json_path = ".spec.subject.kind"
    ),
    printcolumn(name = "Subject", type_ = "string", json_path = ".spec.subject.name"),
    printcolumn(name = "Format", type_ = "string", json_path = ".spec.format"),
    printcolumn(
        name = "Packages",
        type_ = "integer",
        json_path = ".status.packageCount"
    ),
    printcolumn(name = "Reported", type_ = "date", json_path = ".spec.reportedAt"),
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
pub struct InventorySpec {
    /// What the inventory describes.
    pub subject: InventorySubject,
    /// Who reported it (e.g. `node-agent`, `cmdb-sync`, a build job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter: Option<String>,
    /// When the reporter collected it (the reporter's clock; verification of
    /// remediation uses the apiserver's write time instead).
    pub reported_at: Time,
    /// The package manager the list comes from: dpkg, rpm or apk.
    pub format: PackageFormat,
    /// One package a line: `name version [source [source-version]]`. The
    /// source fields name the source package (dpkg `Source:`, rpm
    /// `SOURCERPM`) when it differs from the binary package.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Build results only: the image the packages were read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Build results only: must equal the ChangeRequest's nonce, or the result
    /// is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// What an Inventory describes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventorySubject {
    /// Workload, Template or ChangeRequest (a build result).
    pub kind: SubjectKind,
    /// The subject's name, in the Inventory's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Template subjects: the revision the inventory describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
}

/// Kinds an Inventory can describe.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SubjectKind {
    /// A live machine.
    Workload,
    /// A published Template revision.
    Template,
    /// The build result of a ChangeRequest.
    ChangeRequest,
}

/// Package managers whose inventories Patchloop reads.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PackageFormat {
    /// Debian, Ubuntu.
    Dpkg,
    /// RHEL, AlmaLinux, Rocky, Fedora, SUSE.
    Rpm,
    /// Alpine.
    Apk,
}

/// Observed state of an Inventory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready: the format is valid and the subject exists.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Number of packages listed.
    #[serde(default)]
    pub package_count: i32,
}
