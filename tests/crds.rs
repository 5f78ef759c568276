//! Properties of the generated CRDs that need no cluster: drift against
//! `crds/`, size limits, 1.20 compatibility, documentation of every field, and
//! the examples parse into the typed API.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use patchloop::api;

const CRDS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/crds.yaml");

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let generated = api::crds_yaml().expect("CRDs serialize");
    let checked_in = std::fs::read_to_string(CRDS_FILE).expect("crds/crds.yaml exists");
    assert!(
        generated == checked_in,
        "crds/crds.yaml is stale: run `make crds` (cargo run -- crds > crds/crds.yaml)"
    );
}

#[test]
fn every_crd_stays_far_below_the_client_side_apply_limit() {
    // kubectl (and Argo CD without server-side apply) stores the whole object
    // as JSON in the last-applied-configuration annotation, limited to 256 KiB.
    const LIMIT: usize = 256 * 1024;
    for crd in api::crds() {
        let json = serde_json::to_vec(&crd).expect("CRD serializes");
        println!(
            "{}: {} bytes of JSON",
            crd.metadata.name.as_deref().unwrap_or("?"),
            json.len()
        );
        assert!(
            json.len() < LIMIT / 4,
            "{:?} is {} bytes, more than a quarter of the 256 KiB annotation limit",
            crd.metadata.name,
            json.len()
        );
    }
}

#[test]
fn crds_use_nothing_kubernetes_1_20_lacks() {
    let yaml = api::crds_yaml().expect("CRDs serialize");
    for forbidden in [
        "x-kubernetes-validations",
        "selectableFields",
        "messageExpression",
    ] {
        assert!(
            !yaml.contains(forbidden),
            "CRDs contain {forbidden}, unknown to Kubernetes 1.20"
        );
    }
}

#[test]
fn every_crd_is_annotated_categorised_and_has_status_and_columns() {
    let crds = api::crds();
    assert_eq!(crds.len(), 7);
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let annotations = crd.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get(api::SCHEMA_VERSION_ANNOTATION)
                .map(String::as_str),
            Some(api::SCHEMA_VERSION.to_string().as_str()),
            "{name}: schema-version annotation"
        );
        assert_eq!(crd.spec.group, api::GROUP);
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["patchloop".to_string()][..]),
            "{name}: category"
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{name}: short names"
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
        let columns = version
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(columns.len() >= 3, "{name}: printer columns");
        assert!(
            columns.iter().any(|c| c.name == "Age"),
            "{name}: Age column"
        );
    }
    let scopes: Vec<(String, String)> = crds
        .iter()
        .map(|c| (c.spec.names.kind.clone(), c.spec.scope.clone()))
        .collect();
    for (kind, scope) in scopes {
        let expected = if kind == "AdvisoryFeed" {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(scope, expected, "{kind} scope");
    }
}

fn undocumented(path: &str, schema: &JSONSchemaProps, out: &mut Vec<String>) {
    if let Some(props) = &schema.properties {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            // metadata is Kubernetes' own; apiVersion/kind are documented by the apiserver.
            if path.is_empty() && matches!(name.as_str(), "metadata" | "apiVersion" | "kind") {
                continue;
            }
            if prop.description.as_deref().is_none_or(str::is_empty) {
                out.push(here.clone());
            }
            undocumented(&here, prop, out);
        }
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
        undocumented(&format!("{path}[]"), item, out);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    let mut missing = Vec::new();
    for crd in api::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema");
        // Condition is metav1.Condition, documented by k8s-openapi itself.
        undocumented(&kind, schema, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

#[test]
fn the_generated_file_parses_back_into_crds() {
    let text = std::fs::read_to_string(CRDS_FILE).expect("crds/crds.yaml exists");
    let parsed: Vec<CustomResourceDefinition> =
        serde_saphyr::from_multiple(&text).expect("crds/crds.yaml parses");
    assert_eq!(parsed, api::crds());
}

/// Every example parses into the kind it declares, so the examples cannot
/// drift from the types (the integration tests also apply them to a server).
#[test]
fn every_example_parses_into_its_type() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut kinds = std::collections::BTreeSet::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("examples/ exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable example");
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        for doc in docs {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let result = match kind.as_str() {
                "PatchPolicy" => serde_json::from_value::<api::PatchPolicy>(doc).map(drop),
                "Workload" => serde_json::from_value::<api::Workload>(doc).map(drop),
                "Template" => serde_json::from_value::<api::Template>(doc).map(drop),
                "Inventory" => serde_json::from_value::<api::Inventory>(doc).map(drop),
                "ChangeRequest" => serde_json::from_value::<api::ChangeRequest>(doc).map(drop),
                "PatchException" => serde_json::from_value::<api::PatchException>(doc).map(drop),
                "AdvisoryFeed" => serde_json::from_value::<api::AdvisoryFeed>(doc).map(drop),
                other => panic!("{path:?}: unexpected kind {other:?}"),
            };
            result.unwrap_or_else(|e| panic!("{path:?} ({kind}): {e}"));
            kinds.insert(kind);
        }
    }
    assert_eq!(kinds.len(), 7, "one example per kind at least: {kinds:?}");
}
