//! `patchloop inventory`: collect this machine's package inventory (dpkg,
//! rpm or apk, detected under `--root`, or read from a file another machine's
//! package manager wrote) and write it as the Inventory of a Workload, a
//! Template revision or a ChangeRequest's build result, under the reporters'
//! own field manager.
//!
//! With `--create-workload` it also creates the Workload when it is missing
//! (the node agent: one Workload per node, its platform read from
//! `<root>/etc/os-release`), never changing an existing one; with `--every`
//! it reports again and again until SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use patchloop::api::Inventory;
use patchloop::api::common::Duration;
use patchloop::api::inventory::{InventorySubject, PackageFormat, SubjectKind};
use patchloop::api::workload::{Workload, WorkloadSpec};
use patchloop::engine::inventory::{
    self, APK_INSTALLED_PATH, DPKG_STATUS_PATH, InputFormat, InstalledPackage, RPM_QA_FORMAT,
};
use patchloop::engine::os_release::{self, OS_RELEASE_PATHS};
use patchloop::engine::version::{Platform, parse_platform};

/// The field manager reporters write Inventories with.
pub const MANAGER: &str = "patchloop-inventory-reporter";

/// The field manager (and `app.kubernetes.io/managed-by` label) of the
/// Workloads `--create-workload` creates.
pub const NODE_AGENT: &str = "patchloop-node-agent";

/// The label naming the node a created Workload stands for.
pub const NODE_LABEL: &str = "patchloop.dev/node";

/// The shortest `--every`: a node's packages change when it is patched, not
/// by the second, and each report rewrites a large object.
const MIN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The first retry after a failed report under `--every`; doubled on each
/// further failure, never beyond the interval itself.
const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// With `--change-request`: once the result is written (printed, with
    /// `--dry-run`), write its result line (`result image=sha256:<64 hex>
    /// packages=sha256:<64 hex>`) to PATH, the build container's
    /// termination message file (`/dev/termination-log`). The controller
    /// pins the result only if it is what that line says.
    #[arg(
        long,
        value_name = "PATH",
        requires = "change_request",
        conflicts_with = "every"
    )]
    result_line: Option<PathBuf>,
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
    /// Also create the Workload named by `--workload` when it does not exist
    /// (AlreadyExists is fine; an existing Workload is never changed), with
    /// target `{"node": NAME}` and the labels `patchloop.dev/node: NAME` and
    /// `app.kubernetes.io/managed-by: patchloop-node-agent`. For node agents,
    /// where the Workload is named after the node.
    #[arg(long, conflicts_with = "template")]
    create_workload: bool,
    /// The created Workload's platform in OSV ecosystem naming (`Debian:12`,
    /// `Ubuntu:22.04:LTS`, `AlmaLinux:9`, `Alpine:v3.20`); by default read
    /// from `<root>/etc/os-release` (else `<root>/usr/lib/os-release`).
    #[arg(long, requires = "create_workload")]
    platform: Option<String>,
    /// Report again every DURATION (e.g. `6h`, `90m`; at least `1m`) until
    /// SIGTERM instead of once. A failed first report exits (status 2); later
    /// failures are logged and retried after 30 s, doubling up to DURATION.
    #[arg(
        long,
        env = "PATCHLOOP_INVENTORY_EVERY",
        value_name = "DURATION",
        conflicts_with = "dry_run"
    )]
    every: Option<String>,
    /// Print the Inventory as YAML instead of writing it (with
    /// `--create-workload`, the Workload that would be created first).
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
    // The subject's canonical name, always: an Inventory under any other
    // name is ignored by the controller.
    let subject = match (&args.workload, &args.template, &args.change_request) {
        (Some(w), _, _) => Some(InventorySubject {
            kind: SubjectKind::Workload,
            name: w.clone(),
            revision: None,
        }),
        (None, Some(t), _) => Some(InventorySubject {
            kind: SubjectKind::Template,
            name: t.clone(),
            revision: Some(args.revision.unwrap_or(1)),
        }),
        (None, None, Some(cr)) => Some(InventorySubject {
            kind: SubjectKind::ChangeRequest,
            name: cr.clone(),
            revision: None,
        }),
        (None, None, None) => None,
    };
    let name = subject
        .as_ref()
        .map(InventorySubject::canonical_inventory_name)
        .unwrap_or_default();
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

/// The packages: read from `--from-file`, else collected under `--root`.
fn gather(args: &InventoryArgs) -> anyhow::Result<(PackageFormat, Vec<InstalledPackage>)> {
    match &args.from_file {
        Some(from) => read_file(from),
        None => collect(&args.root),
    }
}

/// Reads `<root>/etc/os-release` (else `<root>/usr/lib/os-release`): the
/// path it read and the text. An absolute symbolic link is followed inside
/// `root` (a mounted image's `/etc/os-release -> /usr/lib/os-release` must not
/// reach this machine's own file).
fn read_os_release(root: &Path) -> anyhow::Result<(PathBuf, String)> {
    let mut tried = Vec::new();
    for candidate in OS_RELEASE_PATHS {
        let mut path = under(root, candidate);
        if let Ok(target) = std::fs::read_link(&path)
            && target.is_absolute()
        {
            path = under(root, &target.to_string_lossy());
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => return Ok((path, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => tried.push(path),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    bail!(
        "no os-release file: looked for {}",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    )
}

/// The platform `root`'s os-release file describes.
pub fn detect_platform(root: &Path) -> anyhow::Result<Platform> {
    let (path, text) = read_os_release(root)?;
    os_release::platform_from_os_release(&text)
        .with_context(|| format!("detecting the platform from {}", path.display()))
}

/// The Workload `--create-workload` creates for `name`; pure.
pub fn workload_object(name: &str, namespace: &str, platform: &Platform) -> Workload {
    let labels = [
        (
            "app.kubernetes.io/managed-by".to_owned(),
            NODE_AGENT.to_owned(),
        ),
        (
            NODE_LABEL.to_owned(),
            patchloop::controller::jobs::label_value(name),
        ),
    ];
    Workload {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.into_iter().collect()),
            ..ObjectMeta::default()
        },
        spec: WorkloadSpec {
            platform: platform.ecosystem_name.clone(),
            template_ref: None,
            target: Some(serde_json::json!({ "node": name })),
            paused: false,
        },
        status: None,
    }
}

/// How long to wait before the next report under `--every`: the interval
/// after a success; after `failures` failures in a row 30 s, 60 s, 120 s...
/// never more than the interval.
pub fn next_delay(every: std::time::Duration, failures: u32) -> std::time::Duration {
    if failures == 0 {
        return every;
    }
    FIRST_RETRY
        .checked_mul(1_u32 << (failures - 1).min(20))
        .map_or(every, |d| d.min(every))
}

/// The `--every` interval, validated.
fn every(args: &InventoryArgs) -> anyhow::Result<Option<std::time::Duration>> {
    let Some(text) = &args.every else {
        return Ok(None);
    };
    let parsed = Duration(text.clone()).parse().context("--every")?;
    let every = std::time::Duration::from_secs(u64::try_from(parsed.as_secs()).unwrap_or(0));
    if every < MIN_EVERY {
        bail!("--every {text}: must be at least 1m");
    }
    Ok(Some(every))
}

/// What happened to the Workload in one report.
enum WorkloadOutcome {
    Created(String),
    Exists,
}

/// Creates the Workload unless it exists; never changes an existing one
/// (only warns when its platform differs from what os-release says now).
async fn ensure_workload(
    client: &kube::Client,
    args: &InventoryArgs,
    namespace: &str,
    name: &str,
    platform: Option<&Platform>,
) -> anyhow::Result<WorkloadOutcome> {
    let api: Api<Workload> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Workload {namespace}/{name}"))?
    {
        if args.platform.is_none()
            && let Ok(detected) = detect_platform(&args.root)
            && parse_platform(&existing.spec.platform).ok().as_ref() != Some(&detected)
        {
            eprintln!(
                "patchloop: warning: workload/{name} has platform {:?} but {} is {detected}; the Workload is left unchanged",
                existing.spec.platform,
                args.root.display()
            );
        }
        return Ok(WorkloadOutcome::Exists);
    }
    let platform = match platform {
        Some(p) => p.clone(),
        None => detect_platform(&args.root)
            .context("the Workload does not exist and its platform is unknown: pass --platform")?,
    };
    let object = workload_object(name, namespace, &platform);
    let params = PostParams {
        field_manager: Some(NODE_AGENT.to_owned()),
        ..PostParams::default()
    };
    match api.create(&params, &object).await {
        Ok(_) => Ok(WorkloadOutcome::Created(platform.ecosystem_name)),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(WorkloadOutcome::Exists),
        Err(e) => Err(e).with_context(|| format!("creating Workload {namespace}/{name}")),
    }
}

/// One report: collect, create the Workload if asked and missing, write the
/// Inventory.
async fn report(
    client: &kube::Client,
    args: &InventoryArgs,
    namespace: &str,
    platform: Option<&Platform>,
) -> anyhow::Result<()> {
    let (format, packages) = gather(args)?;
    let now = jiff::Timestamp::now().round(jiff::Unit::Second)?;
    if args.create_workload
        && let Some(name) = &args.workload
    {
        match ensure_workload(client, args, namespace, name, platform).await? {
            WorkloadOutcome::Created(platform) => {
                println!("workload/{name} created: platform {platform} in namespace {namespace}");
            }
            WorkloadOutcome::Exists => {
                println!("workload/{name} exists in namespace {namespace}: left unchanged");
            }
        }
    }
    let object = inventory_object(args, namespace, format, &packages, now);
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api: Api<Inventory> = Api::namespaced(client.clone(), namespace);
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
    write_result_line(args, &object)
}

/// Writes the build's result line for the Inventory `object` (its image's
/// digest and its package lines' digest, as the controller recomputes them)
/// to `--result-line`.
fn write_result_line(args: &InventoryArgs, object: &serde_json::Value) -> anyhow::Result<()> {
    use patchloop::engine::change::{
        BuildReport, is_digest_reference, packages_digest, result_line,
    };
    let Some(path) = &args.result_line else {
        return Ok(());
    };
    let image = object["spec"]["image"].as_str().unwrap_or_default();
    let digest = image
        .rsplit_once('@')
        .filter(|_| is_digest_reference(image))
        .map(|(_, d)| d.to_owned())
        .context(
            "--result-line: --image must be a digest reference (registry/name@sha256:<64 hex>)",
        )?;
    let packages: Vec<String> = serde_json::from_value(object["spec"]["packages"].clone())
        .context("--result-line: the package lines")?;
    let report = BuildReport {
        image: digest,
        packages: packages_digest(&packages)
            .context("--result-line: a package line holds a line break")?,
    };
    std::fs::write(path, format!("{}\n", result_line(&report)))
        .with_context(|| format!("--result-line: writing {}", path.display()))
}

/// Prints what would be written.
fn dry_run(args: &InventoryArgs, platform: Option<&Platform>) -> anyhow::Result<()> {
    let (format, packages) = gather(args)?;
    let now = jiff::Timestamp::now().round(jiff::Unit::Second)?;
    let namespace = args.namespace.clone().unwrap_or_else(|| "default".into());
    if args.create_workload
        && let Some(name) = &args.workload
    {
        let platform = match platform {
            Some(p) => p.clone(),
            None => detect_platform(&args.root).context("pass --platform")?,
        };
        let workload = workload_object(name, &namespace, &platform);
        println!("{}---", serde_saphyr::to_string(&workload)?);
    }
    let object = inventory_object(args, &namespace, format, &packages, now);
    print!("{}", serde_saphyr::to_string(&object)?);
    write_result_line(args, &object)
}

/// Collects and writes (or prints) the Inventory, once or `--every` interval.
pub fn run(args: &InventoryArgs) -> anyhow::Result<ExitCode> {
    let platform = args
        .platform
        .as_deref()
        .map(parse_platform)
        .transpose()
        .context("--platform")?;
    let every = every(args)?;
    if args.dry_run {
        dry_run(args, platform.as_ref())?;
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let conn = super::connect::connect(args.kubeconfig.as_deref()).await?;
        let namespace = args.namespace.clone().unwrap_or(conn.namespace);
        let Some(every) = every else {
            return report(&conn.client, args, &namespace, platform.as_ref()).await;
        };
        let shutdown = super::run::shutdown_signal();
        tokio::pin!(shutdown);
        let mut failures: u32 = 0;
        let mut first = true;
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                result = report(&conn.client, args, &namespace, platform.as_ref()) => match result {
                    Ok(()) => failures = 0,
                    // A report that never worked is a configuration error:
                    // exit, so the Pod shows it (CrashLoopBackOff).
                    Err(e) if first => return Err(e),
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        eprintln!(
                            "patchloop: {e:#} (failure {failures}; retrying in {}s)",
                            next_delay(every, failures).as_secs()
                        );
                    }
                },
            }
            first = false;
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(next_delay(every, failures)) => {}
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(s: &str) -> Platform {
        parse_platform(s).expect("a valid platform")
    }

    #[test]
    fn the_created_workload_names_its_node() {
        let w = workload_object("node-a.example.com", "nodes", &platform("Ubuntu:22.04"));
        let value = serde_json::to_value(&w).expect("serialises");
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "patchloop.dev/v1alpha1",
                "kind": "Workload",
                "metadata": {
                    "name": "node-a.example.com",
                    "namespace": "nodes",
                    "labels": {
                        "app.kubernetes.io/managed-by": "patchloop-node-agent",
                        "patchloop.dev/node": "node-a.example.com",
                    },
                },
                "spec": {
                    "platform": "Ubuntu:22.04:LTS",
                    "target": {"node": "node-a.example.com"},
                    "paused": false,
                },
            })
        );
    }

    #[test]
    fn a_long_node_name_gets_a_valid_label_value() {
        let name = format!("{}.compute.internal", "ip-10-0-0-1".repeat(6));
        assert!(name.len() > 63);
        let w = workload_object(&name, "nodes", &platform("Debian:12"));
        let labels = w.metadata.labels.expect("labels");
        let value = &labels[NODE_LABEL];
        assert!(value.len() <= 63, "{value}");
        assert!(value.starts_with("ip-10-0-0-1"));
        assert_eq!(w.metadata.name.as_deref(), Some(name.as_str()));
    }

    #[test]
    fn the_platform_is_read_under_the_root() {
        let root = tempfile::tempdir().expect("temp dir");
        assert!(
            detect_platform(root.path())
                .expect_err("no file")
                .to_string()
                .contains("no os-release file")
        );
        // /usr/lib/os-release alone, and an absolute link to it from /etc:
        // both are read inside the root.
        let usr_lib = root.path().join("usr/lib");
        std::fs::create_dir_all(&usr_lib).expect("dirs");
        std::fs::write(usr_lib.join("os-release"), "ID=alpine\nVERSION_ID=3.20.3\n")
            .expect("write");
        assert_eq!(
            detect_platform(root.path()).map(|p| p.ecosystem_name).ok(),
            Some("Alpine:v3.20".to_owned())
        );
        std::fs::create_dir_all(root.path().join("etc")).expect("dirs");
        std::os::unix::fs::symlink("/usr/lib/os-release", root.path().join("etc/os-release"))
            .expect("symlink");
        assert_eq!(
            detect_platform(root.path()).map(|p| p.ecosystem_name).ok(),
            Some("Alpine:v3.20".to_owned())
        );
        std::fs::write(usr_lib.join("os-release"), "ID=gentoo\n").expect("write");
        let err = format!("{:#}", detect_platform(root.path()).expect_err("unknown"));
        assert!(err.contains("\"gentoo\""), "{err}");
    }

    #[test]
    fn retries_back_off_up_to_the_interval() {
        let hour = std::time::Duration::from_secs(3600);
        let secs = |failures| next_delay(hour, failures).as_secs();
        assert_eq!(secs(0), 3600);
        assert_eq!(secs(1), 30);
        assert_eq!(secs(2), 60);
        assert_eq!(secs(3), 120);
        assert_eq!(secs(7), 1920);
        assert_eq!(secs(8), 3600);
        assert_eq!(secs(u32::MAX), 3600);
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(next_delay(minute, 5), minute);
    }
}
