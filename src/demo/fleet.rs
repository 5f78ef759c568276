//! The demo's example fleet: manifests read from a directory (the repo's
//! `examples/demo/`), stamped with the current time where a real reporter
//! or approver would have, and real advisory records loaded into ConfigMaps
//! that two AdvisoryFeeds read.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, Resource};
use serde_json::{Value, json};

use crate::api::{AdvisoryFeed, Inventory, PatchException, PatchPolicy, Template, Workload};

/// The field manager the demo applies its fleet with.
pub const MANAGER: &str = "patchloop-demo";
/// How long the demo's PatchExceptions last from when it runs.
const EXCEPTION_DAYS: i64 = 30;

/// One manifest of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Its kind.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The whole document.
    pub doc: Value,
}

/// Reads every document of the `*.yaml` files in `dir` (in file-name
/// order), skipping empty ones; a document without a kind or name is an
/// error naming the file.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the fleet directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .map_err(|e| anyhow::anyhow!("{}: not YAML: {e}", file.display()))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let field = |f: &str| doc.pointer(f).and_then(Value::as_str).map(str::to_owned);
            let (Some(kind), Some(name)) = (field("/kind"), field("/metadata/name")) else {
                bail!(
                    "{}: a document without kind or metadata.name",
                    file.display()
                );
            };
            out.push(Manifest { kind, name, doc });
        }
    }
    if out.is_empty() {
        bail!("{}: no manifests", dir.display());
    }
    Ok(out)
}

/// Stamps the times a real fleet's writers would set: an Inventory's
/// `reportedAt` (now, as its reporter just collected it) and a
/// PatchException's `expires` (30 days ahead, within the policy's
/// `maxDuration`), so the demo behaves the same whenever it runs.
pub fn stamp(manifests: &mut [Manifest], now: jiff::Timestamp) -> anyhow::Result<()> {
    let expires = now
        .checked_add(jiff::SignedDuration::from_hours(24 * EXCEPTION_DAYS))
        .context("the exception expiry overflows")?;
    for m in manifests {
        let (field, value) = match m.kind.as_str() {
            "Inventory" => ("reportedAt", now.to_string()),
            "PatchException" => ("expires", expires.to_string()),
            _ => continue,
        };
        if let Some(spec) = m.doc.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert(field.to_owned(), Value::String(value));
        }
    }
    Ok(())
}

/// The API resource of a fleet kind.
fn resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "PatchPolicy" => ApiResource::erase::<PatchPolicy>(&()),
        "PatchException" => ApiResource::erase::<PatchException>(&()),
        "Workload" => ApiResource::erase::<Workload>(&()),
        "Inventory" => ApiResource::erase::<Inventory>(&()),
        "Template" => ApiResource::erase::<Template>(&()),
        _ => return None,
    })
}

/// Creates the namespace if needed and applies every manifest into it.
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    manifests: &[Manifest],
) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            namespace,
            &PatchParams::apply(MANAGER),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
            ),
        )
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;
    for m in manifests {
        let ar = resource(&m.kind).with_context(|| {
            format!(
                "{} {}: the demo applies only Patchloop's namespaced kinds",
                m.kind, m.name
            )
        })?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
        api.patch(
            &m.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&m.doc),
        )
        .await
        .with_context(|| format!("applying {} {}", m.kind, m.name))?;
    }
    Ok(())
}

/// The advisory data the demo loads: OSV records and the KEV catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advisories {
    /// OSV records by file name.
    pub osv: BTreeMap<String, String>,
    /// The KEV catalog, if the directory has one.
    pub kev: Option<String>,
}

/// Reads `dir/osv/**/*.json` and `dir/kev/known_exploited_vulnerabilities.json`.
pub fn load_advisories(dir: &Path) -> anyhow::Result<Advisories> {
    let mut osv = BTreeMap::new();
    let osv_dir = dir.join("osv");
    let mut stack = vec![osv_dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json")
                && let Some(name) = path.file_name().and_then(|n| n.to_str())
            {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                if osv.insert(name.to_owned(), text).is_some() {
                    bail!("{}: two OSV records named {name}", osv_dir.display());
                }
            }
        }
    }
    if osv.is_empty() {
        bail!("{}: no OSV records (*.json)", osv_dir.display());
    }
    let kev_path = dir.join("kev/known_exploited_vulnerabilities.json");
    let kev = kev_path
        .is_file()
        .then(|| std::fs::read_to_string(&kev_path))
        .transpose()
        .with_context(|| format!("reading {}", kev_path.display()))?;
    Ok(Advisories { osv, kev })
}

/// The names of the demo's feeds and ConfigMaps.
pub const OSV_FEED: &str = "patchloop-demo-osv";
/// See [`OSV_FEED`].
pub const KEV_FEED: &str = "patchloop-demo-kev";

/// Puts the advisories into ConfigMaps in `namespace` and applies the two
/// cluster-scoped AdvisoryFeeds that read them.
pub async fn load_feeds(
    client: &kube::Client,
    namespace: &str,
    advisories: &Advisories,
) -> anyhow::Result<()> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let feeds: Api<AdvisoryFeed> = Api::all(client.clone());
    let mut sources = vec![(OSV_FEED, "OSV", json!(advisories.osv))];
    if let Some(kev) = &advisories.kev {
        sources.push((
            KEV_FEED,
            "KEV",
            json!({"known_exploited_vulnerabilities.json": kev}),
        ));
    }
    for (name, format, data) in sources {
        let map = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name}, "data": data,
        });
        maps.patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&map),
        )
        .await
        .with_context(|| format!("applying ConfigMap {name}"))?;
        let feed = json!({
            "apiVersion": AdvisoryFeed::api_version(&()), "kind": AdvisoryFeed::kind(&()),
            "metadata": {"name": name},
            "spec": {
                "source": {"configMap": {"namespace": namespace, "name": name}},
                "format": format,
                "interval": "1h",
            },
        });
        feeds
            .patch(
                name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&feed),
            )
            .await
            .with_context(|| format!("applying AdvisoryFeed {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo");
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

    #[test]
    fn the_shipped_fleet_loads_and_is_stamped() {
        let mut fleet = load_dir(Path::new(EXAMPLES)).expect("fleet");
        let count = |kind: &str| fleet.iter().filter(|m| m.kind == kind).count();
        assert_eq!(count("PatchPolicy"), 2);
        assert_eq!(count("PatchException"), 1);
        assert_eq!(count("Template"), 2);
        assert!(count("Workload") >= 24, "a few dozen Workloads");
        assert_eq!(count("Inventory"), count("Workload") + count("Template"));
        assert!(fleet.iter().all(|m| resource(&m.kind).is_some()));

        let now: jiff::Timestamp = "2030-05-01T12:00:00Z".parse().expect("time");
        stamp(&mut fleet, now).expect("stamp");
        for m in &fleet {
            match m.kind.as_str() {
                "Inventory" => assert_eq!(m.doc["spec"]["reportedAt"], "2030-05-01T12:00:00Z"),
                "PatchException" => assert_eq!(m.doc["spec"]["expires"], "2030-05-31T12:00:00Z"),
                _ => {}
            }
        }
        // Every document is a valid object of its kind.
        for m in fleet.iter().filter(|m| m.kind == "Workload") {
            serde_json::from_value::<Workload>(m.doc.clone()).expect("a valid Workload");
        }
        for m in fleet.iter().filter(|m| m.kind == "Inventory") {
            let inv: Inventory = serde_json::from_value(m.doc.clone()).expect("a valid Inventory");
            crate::engine::inventory::parse_compact_list(
                inv.spec.format.into(),
                &inv.spec.packages,
            )
            .expect("compact package lines");
        }
    }

    #[test]
    fn bad_fleet_directories_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_dir(dir.path()).expect_err("empty").to_string();
        assert!(err.contains("no manifests"), "{err}");
        std::fs::write(dir.path().join("a.yaml"), "kind: Workload\nspec: {}\n").expect("write");
        let err = load_dir(dir.path()).expect_err("no name").to_string();
        assert!(
            err.contains("a.yaml") && err.contains("metadata.name"),
            "{err}"
        );
    }

    #[test]
    fn the_real_advisories_load() {
        let a = load_advisories(Path::new(FIXTURES)).expect("advisories");
        assert!(a.osv.contains_key("DSA-5514-1.json"));
        assert!(a.osv.contains_key("USN-6409-1.json"));
        assert!(
            a.kev
                .as_deref()
                .is_some_and(|k| k.contains("CVE-2023-4911"))
        );
    }
}
