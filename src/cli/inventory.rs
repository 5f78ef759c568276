//! `patchloop inventory`: collect this machine's package inventory (dpkg,
//! rpm or apk, detected under `--root`) and write it as the Inventory of a
//! Workload or a Template revision, under the reporters' own field manager.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::Api;
use kube::api::{Patch, PatchParams};
use patchloop::api::Inventory;
use patchloop::api::inventory::PackageFormat;
use patchloop::engine::inventory::{
    self, APK_INSTALLED_PATH, DPKG_STATUS_PATH, InputFormat, InstalledPackage, RPM_QA_FORMAT,
};

/// The field manager reporters write Inventories with.
pub const MANAGER: &str = "patchloop-inventory-reporter";

/// Arguments of `patchloop inventory`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["workload", "template"])))]
pub struct InventoryArgs {
    /// Report for this Workload.
    #[arg(long)]
    workload: Option<String>,
    /// Report for this Template's revision (`--revision`).
    #[arg(long)]
    template: Option<String>,
    /// The Template revision the image is (with `--template`; default 1).
    #[arg(long, conflicts_with = "workload", value_parser = clap::value_parser!(i64).range(1..))]
    revision: Option<i64>,
    /// The Inventory's name; by default `workload-NAME` or
    /// `template-NAME-rREVISION`.
    #[arg(long)]
    name: Option<String>,
    /// The namespace; by default the kubeconfig context's.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The file system to inspect (e.g. `/host` in a node agent).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Who reports, recorded in `spec.reporter`.
    #[arg(long, default_value = "patchloop-inventory")]
    reporter: String,
    /// Print the Inventory as YAML instead of writing it.
    #[arg(long)]
    dry_run: bool,
    /// The kubeconfig to use; by default $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster ServiceAccount.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// Reads the package database found under `root`: dpkg's status file,
/// Alpine's installed database, or the rpm database (through `rpm --root`).
pub fn collect(root: &Path) -> anyhow::Result<(PackageFormat, Vec<InstalledPackage>)> {
    let dpkg = under(root, DPKG_STATUS_PATH);
    if dpkg.is_file() {
        let text = std::fs::read_to_string(&dpkg)
            .with_context(|| format!("reading {}", dpkg.display()))?;
        let packages = inventory::parse(InputFormat::DpkgStatus, &text)
            .with_context(|| format!("parsing {}", dpkg.display()))?;
        return Ok((PackageFormat::Dpkg, packages));
    }
    let apk = under(root, APK_INSTALLED_PATH);
    if apk.is_file() {
        let text =
            std::fs::read_to_string(&apk).with_context(|| format!("reading {}", apk.display()))?;
        let packages = inventory::parse(InputFormat::ApkInstalled, &text)
            .with_context(|| format!("parsing {}", apk.display()))?;
        return Ok((PackageFormat::Apk, packages));
    }
    if under(root, "/var/lib/rpm").is_dir() || under(root, "/usr/lib/sysimage/rpm").is_dir() {
        let out = std::process::Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(["-qa", "--queryformat", RPM_QA_FORMAT])
            .output()
            .context("running rpm -qa (is rpm installed?)")?;
        if !out.status.success() {
            bail!(
                "rpm -qa failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let packages = inventory::parse(InputFormat::RpmQa, &String::from_utf8_lossy(&out.stdout))
            .context("parsing rpm -qa")?;
        return Ok((PackageFormat::Rpm, packages));
    }
    bail!(
        "no package database under {}: looked for {DPKG_STATUS_PATH}, {APK_INSTALLED_PATH} and /var/lib/rpm",
        root.display()
    )
}

/// The Inventory object for the collected packages; pure.
pub fn inventory_object(
    args: &InventoryArgs,
    namespace: &str,
    format: PackageFormat,
    packages: &[InstalledPackage],
    now: jiff::Timestamp,
) -> serde_json::Value {
    let (subject, default_name) = match (&args.workload, &args.template) {
        (Some(w), _) => (
            serde_json::json!({"kind": "Workload", "name": w}),
            format!("workload-{w}"),
        ),
        (None, Some(t)) => {
            let revision = args.revision.unwrap_or(1);
            (
                serde_json::json!({"kind": "Template", "name": t, "revision": revision}),
                format!("template-{t}-r{revision}"),
            )
        }
        (None, None) => (serde_json::Value::Null, String::new()),
    };
    let name: String = args
        .name
        .clone()
        .unwrap_or(default_name)
        .chars()
        .take(253)
        .collect();
    serde_json::json!({
        "apiVersion": "patchloop.dev/v1alpha1",
        "kind": "Inventory",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "subject": subject,
            "reporter": args.reporter,
            "reportedAt": now.to_string(),
            "format": format,
            "packages": inventory::to_compact_list(packages),
        }
    })
}

/// Collects and writes (or prints) the Inventory.
pub fn run(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let (format, packages) = collect(&args.root)?;
    let now = jiff::Timestamp::now().round(jiff::Unit::Second)?;
    if args.dry_run {
        let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
        let object = inventory_object(args, &namespace, format, &packages, now);
        print!("{}", serde_saphyr::to_string(&object)?);
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let conn = super::connect::connect(args.kubeconfig.as_deref()).await?;
        let namespace = args.namespace.clone().unwrap_or(conn.namespace);
        let object = inventory_object(args, &namespace, format, &packages, now);
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let api: Api<Inventory> = Api::namespaced(conn.client, &namespace);
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("writing Inventory {namespace}/{name}"))?;
        println!(
            "inventory/{name} written: {} {format:?} packages in namespace {namespace}",
            packages.len()
        );
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
