//! `patchloop inventory`: collect this machine's package inventory (dpkg,
//! rpm or apk, detected under `--root`, or read from a file another machine's
//! package manager wrote) and write it as the Inventory of a Workload, a
//! Template revision or a ChangeRequest's build result, under the reporters'
//! own field manager.

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
#[command(group(
    clap::ArgGroup::new("subject")
        .required(true)
        .args(["workload", "template", "change_request"])
))]
pub struct InventoryArgs {
    /// Report for this Workload.
    #[arg(long)]
    workload: Option<String>,
    /// Report for this Template's revision (`--revision`).
    #[arg(long)]
    template: Option<String>,
    /// The Template revision the image is (with `--template`; default 1).
    #[arg(long, conflicts_with_all = ["workload", "change_request"], value_parser = clap::value_parser!(i64).range(1..))]
    revision: Option<i64>,
    /// Report this ChangeRequest's build result (with `--image` and
    /// `--nonce`): what a build Job writes.
    #[arg(long, requires_all = ["image", "nonce"])]
    change_request: Option<String>,
    /// The built image, preferably by digest (with `--change-request`).
    #[arg(long, requires = "change_request")]
    image: Option<String>,
    /// The request's nonce, `$PATCHLOOP_NONCE` (with `--change-request`).
    #[arg(long, requires = "change_request")]
    nonce: Option<String>,
    /// The Inventory's name; by default `workload-NAME`,
    /// `template-NAME-rREVISION` or `NAME-result` (a ChangeRequest's).
    #[arg(long)]
    name: Option<String>,
    /// The namespace; by default the kubeconfig context's.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// The file system to inspect (e.g. `/host` in a node agent).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Read the packages from a file instead of a database under `--root`:
    /// `FORMAT:PATH`, FORMAT one of dpkg-status, dpkg-query, rpm-qa,
    /// apk-installed (e.g. what a remediation Job fetched from a machine).
    #[arg(long, value_name = "FORMAT:PATH", conflicts_with = "root", value_parser = parse_from_file)]
    from_file: Option<FromFile>,
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

/// A package list in a file, in one of the input formats.
#[derive(Debug, Clone)]
pub struct FromFile {
    format: InputFormat,
    path: PathBuf,
}

fn parse_from_file(s: &str) -> Result<FromFile, String> {
    let (format, path) = s
        .split_once(':')
        .ok_or_else(|| format!("expected FORMAT:PATH, got {s:?}"))?;
    let format = format.parse::<InputFormat>().map_err(|e| e.to_string())?;
    if path.is_empty() {
        return Err(format!("expected FORMAT:PATH, got {s:?} (no path)"));
    }
    Ok(FromFile {
        format,
        path: path.into(),
    })
}

/// Reads a package list file in the given input format.
pub fn read_file(from: &FromFile) -> anyhow::Result<(PackageFormat, Vec<InstalledPackage>)> {
    let path = &from.path;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let packages = inventory::parse(from.format, &text)
        .with_context(|| format!("parsing {} as {}", path.display(), from.format))?;
    let format = match from.format {
        InputFormat::DpkgStatus | InputFormat::DpkgQuery => PackageFormat::Dpkg,
        InputFormat::RpmQa => PackageFormat::Rpm,
        InputFormat::ApkInstalled => PackageFormat::Apk,
    };
    Ok((format, packages))
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
    let (subject, default_name) = match (&args.workload, &args.template, &args.change_request) {
        (Some(w), _, _) => (
            serde_json::json!({"kind": "Workload", "name": w}),
            format!("workload-{w}"),
        ),
        (None, Some(t), _) => {
            let revision = args.revision.unwrap_or(1);
            (
                serde_json::json!({"kind": "Template", "name": t, "revision": revision}),
                format!("template-{t}-r{revision}"),
            )
        }
        (None, None, Some(cr)) => (
            serde_json::json!({"kind": "ChangeRequest", "name": cr}),
            format!("{cr}-result"),
        ),
        (None, None, None) => (serde_json::Value::Null, String::new()),
    };
    let name: String = args
        .name
        .clone()
        .unwrap_or(default_name)
        .chars()
        .take(253)
        .collect();
    let mut object = serde_json::json!({
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
    });
    // A build result: the controller takes it only with an image and the
    // request's nonce.
    if let (Some(image), Some(nonce)) = (&args.image, &args.nonce) {
        object["spec"]["image"] = serde_json::json!(image);
        object["spec"]["nonce"] = serde_json::json!(nonce);
    }
    object
}

/// Collects and writes (or prints) the Inventory.
pub fn run(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let (format, packages) = match &args.from_file {
        Some(from) => read_file(from)?,
        None => collect(&args.root)?,
    };
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
