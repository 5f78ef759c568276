//! The repository's CRDs (`<repo>/crds/*.yaml`): reading, server-side apply, and waiting until
//! they are `Established`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};

pub const FIELD_MANAGER: &str = "patchloop-testenv";
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

pub fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")
}

/// Every document of every `*.yaml` / `*.yml` file in `crds/` (sorted by file name); empty or
/// missing directory: none.
pub fn manifests() -> Result<Vec<serde_json::Value>, String> {
    let dir = crds_dir();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let parsed: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| format!("cannot parse {} as YAML: {e}", file.display()))?;
        for doc in parsed.into_iter().filter(|d| !d.is_null()) {
            let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if kind != "CustomResourceDefinition" {
                return Err(format!(
                    "{}: expected only CustomResourceDefinition documents, found kind {kind:?}",
                    file.display()
                ));
            }
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Server-side applies the CRDs and waits until each is `Established`; returns their names.
pub async fn install(
    client: &kube::Client,
    manifests: &[serde_json::Value],
) -> Result<Vec<String>, String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for doc in manifests {
        let name = doc
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| "a CRD manifest without metadata.name".to_string())?;
        api.patch(name, &params, &Patch::Apply(doc))
            .await
            .map_err(|e| format!("server-side apply of CRD {name} failed: {e}"))?;
        names.push(name.to_string());
    }
    let deadline = Instant::now() + ESTABLISHED_TIMEOUT;
    for name in &names {
        loop {
            let crd = api
                .get(name)
                .await
                .map_err(|e| format!("cannot read CRD {name}: {e}"))?;
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "CRD {name} not Established within {ESTABLISHED_TIMEOUT:?}: {:?}",
                    crd.status
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(names)
}
