//! The controller checks its CRDs at start: against CRDs older than the
//! binary needs (the `patchloop.dev/schema-version` annotation), every
//! status write would fail or lose fields the API server prunes, so it
//! refuses to start with a message saying what to apply.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, ResourceExt};

use crate::api::{SCHEMA_VERSION, SCHEMA_VERSION_ANNOTATION, crds};

/// Why the installed CRDs cannot serve this binary.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD is missing.
    #[error(
        "CRD {0} is not installed: apply this release's CRDs (`patchloop crds | kubectl apply --server-side -f -`, or `helm upgrade` with crds.install=true)"
    )]
    Missing(String),
    /// A CRD is older than this binary.
    #[error(
        "CRD {name} has schema version {found}, this binary needs {SCHEMA_VERSION}: apply this release's CRDs (`patchloop crds | kubectl apply --server-side -f -`, or `helm upgrade` with crds.install=true) before starting it"
    )]
    Outdated {
        /// The CRD.
        name: String,
        /// Its annotation, or "none".
        found: String,
    },
    /// The API server could not be asked.
    #[error("reading CRD {name}: {source}")]
    Kube {
        /// The CRD.
        name: String,
        /// The error.
        source: kube::Error,
    },
}

/// The schema version a CRD declares, if readable.
pub fn schema_version(crd: &CustomResourceDefinition) -> Option<u32> {
    crd.annotations()
        .get(SCHEMA_VERSION_ANNOTATION)
        .and_then(|v| v.parse().ok())
}

/// Checks that every Patchloop CRD is installed with at least this
/// binary's schema version (newer is fine: the schema only grows).
pub async fn check(client: &Client) -> Result<(), CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for wanted in crds() {
        let name = wanted.name_any();
        let installed = api
            .get_opt(&name)
            .await
            .map_err(|source| CrdError::Kube {
                name: name.clone(),
                source,
            })?
            .ok_or_else(|| CrdError::Missing(name.clone()))?;
        match schema_version(&installed) {
            Some(v) if v >= SCHEMA_VERSION => {}
            found => {
                return Err(CrdError::Outdated {
                    name,
                    found: found.map_or_else(|| "none".to_owned(), |v| v.to_string()),
                });
            }
        }
    }
    Ok(())
}
