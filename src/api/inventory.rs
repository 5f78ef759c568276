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

/// The longest object name Kubernetes accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

impl InventorySubject {
    /// The one Inventory name that may speak for this subject:
    /// `workload-<name>`, `template-<name>-r<revision>` (revision 1 when
    /// absent) or `changerequest-<name>` (a build result). Being a name, the
    /// binding is checkable by RBAC (`resourceNames`); Inventories under any
    /// other name are ignored for the subject. A name that would exceed 253
    /// characters is cut and ends in a hash of the whole, so two long
    /// subjects never share an Inventory.
    pub fn canonical_inventory_name(&self) -> String {
        let full = match self.kind {
            SubjectKind::Workload => format!("workload-{}", self.name),
            SubjectKind::Template => {
                format!("template-{}-r{}", self.name, self.revision.unwrap_or(1))
            }
            SubjectKind::ChangeRequest => format!("changerequest-{}", self.name),
        };
        if full.len() <= MAX_NAME {
            return full;
        }
        use sha2::Digest;
        let hash: String = sha2::Sha256::digest(full.as_bytes())
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect();
        // A subject name is whatever a reporter wrote (the schema does not
        // hold it to the object-name grammar), so cut on a character
        // boundary: a byte cut inside a multi-byte character would panic.
        let mut end = MAX_NAME - hash.len() - 1;
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        let cut = full[..end].trim_end_matches(['-', '.']);
        format!("{cut}-{hash}")
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(kind: SubjectKind, name: &str, revision: Option<i64>) -> InventorySubject {
        InventorySubject {
            kind,
            name: name.into(),
            revision,
        }
    }

    #[test]
    fn each_kind_has_its_own_prefix() {
        let w = subject(SubjectKind::Workload, "web-01", None);
        let t = subject(SubjectKind::Template, "web-01", Some(3));
        let c = subject(SubjectKind::ChangeRequest, "web-01", None);
        assert_eq!(w.canonical_inventory_name(), "workload-web-01");
        assert_eq!(t.canonical_inventory_name(), "template-web-01-r3");
        assert_eq!(c.canonical_inventory_name(), "changerequest-web-01");
        let t1 = subject(SubjectKind::Template, "base", None);
        assert_eq!(t1.canonical_inventory_name(), "template-base-r1");
    }

    #[test]
    fn long_names_stay_valid_and_distinct() {
        let a = "a".repeat(253);
        let b = format!("{}b", "a".repeat(252));
        let na = subject(SubjectKind::Workload, &a, None).canonical_inventory_name();
        let nb = subject(SubjectKind::Workload, &b, None).canonical_inventory_name();
        assert!(na.len() <= MAX_NAME && nb.len() <= MAX_NAME);
        assert_ne!(na, nb);
        assert!(na.starts_with("workload-aaa"));
        // The cut lands on the dot: it is trimmed so the name stays a
        // valid DNS subdomain (no `.-`).
        let dotted = format!("{}.-{}", "a".repeat(232), "x".repeat(10));
        let nd = subject(SubjectKind::Template, &dotted, Some(12)).canonical_inventory_name();
        assert!(nd.len() <= MAX_NAME, "{nd}");
        assert!(
            nd.starts_with(&format!("template-{}-", "a".repeat(232))),
            "{nd}"
        );
        // A reporter's non-ASCII name never panics (the cut falls inside
        // a two-byte character here) and is never a valid name anyway.
        let wide = "é".repeat(123);
        let nw = subject(SubjectKind::Workload, &wide, None).canonical_inventory_name();
        assert!(nw.len() <= MAX_NAME, "{nw}");
    }
}
