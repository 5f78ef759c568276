//! The Patchloop API, group `patchloop.dev`, version `v1alpha1`: seven kinds,
//! one file each, plus the value types they share.

// kube's derive takes one `printcolumn(...)` attribute per column; clippy reads
// the repeated `type_ = "string"` keys as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod change_request;
pub mod common;
pub mod conditions;
pub mod exception;
pub mod feed;
pub mod inventory;
pub mod policy;
pub mod template;
pub mod workload;

pub use change_request::{ChangeRequest, ChangeRequestSpec, ChangeRequestStatus};
pub use exception::{PatchException, PatchExceptionSpec, PatchExceptionStatus};
pub use feed::{AdvisoryFeed, AdvisoryFeedSpec, AdvisoryFeedStatus};
pub use inventory::{Inventory, InventorySpec, InventoryStatus};
pub use policy::{PatchPolicy, PatchPolicySpec, PatchPolicyStatus};
pub use template::{Template, TemplateSpec, TemplateStatus};
pub use workload::{Workload, WorkloadSpec, WorkloadStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// The API group of every kind.
pub const GROUP: &str = "patchloop.dev";

/// The annotation on each CRD naming the schema version it was generated
/// with; the controller refuses to start against older CRDs.
pub const SCHEMA_VERSION_ANNOTATION: &str = "patchloop.dev/schema-version";

/// Bumped whenever a CRD's schema changes in a way the controller relies on.
pub const SCHEMA_VERSION: u32 = 2;

/// Every CRD, annotated with [`SCHEMA_VERSION`], in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        AdvisoryFeed::crd(),
        ChangeRequest::crd(),
        Inventory::crd(),
        PatchException::crd(),
        PatchPolicy::crd(),
        Template::crd(),
        Workload::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                walk(schema, &mut |s| s.nullable = None);
                // Status is written whole by its one writer, so its schema
                // needs no defaults; and with them, a server-side apply that
                // drops an optional object leaves its defaulted children
                // behind, owned by nobody: an object missing its required
                // fields that every later write is refused for.
                if let Some(status) = schema.properties.as_mut().and_then(|p| p.get_mut("status")) {
                    walk(status, &mut |s| s.default = None);
                }
            }
        }
        crd.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SCHEMA_VERSION_ANNOTATION.into(), SCHEMA_VERSION.to_string());
    }
    crds
}

/// Applies `f` to every schema node.
///
/// `nullable` goes from every node: Kubernetes 1.20 publishes a nullable
/// field to OpenAPI v2 without its type and properties, which breaks
/// `kubectl explain` below it; and a CRD does not need it: structural schemas
/// prune `null` values of non-nullable fields, and Patchloop never writes null
/// (absent optional fields are omitted).
fn walk(schema: &mut JSONSchemaProps, f: &mut impl FnMut(&mut JSONSchemaProps)) {
    f(schema);
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        walk(child, f);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = schema.items.as_mut() {
        walk(item, f);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        walk(extra, f);
    }
}

/// The CRDs as one multi-document YAML stream, as checked into `crds/`.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
