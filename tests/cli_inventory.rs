//! `patchloop inventory`: this machine's packages (dpkg, apk; rpm through
//! `rpm --root`) collected under a root, or a fetched package list read from
//! a file (`--from-file`), written as an Inventory with the reporters' field
//! manager, on the real control plane; build results carry image and nonce;
//! the Workload `--create-workload` would create; the real package list of
//! the machine the tests run on; bad input refused. (The node agent as a
//! whole: tests/node_agent.rs.)

mod support;

use std::path::Path;
use std::process::{Command, Output};

use kube::Api;
use patchloop::api::Inventory;
use patchloop::engine::inventory::{InputFormat, parse, parse_compact};
use support::objects::FIXTURES;

/// A root file system holding one fixture database at `path`.
fn root_with(fixture: &str, path: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let target = root.path().join(path);
    std::fs::create_dir_all(target.parent().expect("parent")).expect("dirs");
    std::fs::copy(Path::new(FIXTURES).join(fixture), &target).expect("copy");
    root
}

/// A root holding the dpkg database and os-release of one Debian 12 machine.
fn debian_root() -> tempfile::TempDir {
    let root = root_with("dpkg/status", "var/lib/dpkg/status");
    std::fs::create_dir_all(root.path().join("etc")).expect("dirs");
    std::fs::copy(
        Path::new(FIXTURES).join("os-release/debian-12"),
        root.path().join("etc/os-release"),
    )
    .expect("copy");
    root
}

fn patchloop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_patchloop"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("PATCHLOOP_INVENTORY_EVERY")
        .output()
        .expect("patchloop")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn yaml(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML")
}

#[test]
fn a_dpkg_root_becomes_a_workload_inventory() {
    let root = root_with("dpkg/status", "var/lib/dpkg/status");
    let out = patchloop(&[
        "inventory",
        "--workload",
        "web-01",
        "-n",
        "fleet",
        "--dry-run",
        "--root",
        root.path().to_str().expect("utf-8"),
    ]);
    let inv = yaml(&out);
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("dpkg/status")).expect("fixture");
    let expected = parse(InputFormat::DpkgStatus, &text).expect("fixture parses");
    assert_eq!(inv["metadata"]["name"], "workload-web-01");
    assert_eq!(inv["metadata"]["namespace"], "fleet");
    assert_eq!(
        inv["spec"]["subject"],
        serde_json::json!({"kind": "Workload", "name": "web-01"})
    );
    assert_eq!(inv["spec"]["format"], "dpkg");
    let packages = inv["spec"]["packages"].as_array().expect("packages");
    assert_eq!(packages.len(), expected.len());
    assert_eq!(packages[0], serde_json::json!(expected[0].to_compact()));
}

#[test]
fn an_alpine_root_becomes_a_template_revision_inventory() {
    let root = root_with("apk/installed", "lib/apk/db/installed");
    let inv = yaml(&patchloop(&[
        "inventory",
        "--template",
        "alpine-base",
        "--revision",
        "3",
        "--dry-run",
        "--root",
        root.path().to_str().expect("utf-8"),
    ]));
    assert_eq!(inv["metadata"]["name"], "template-alpine-base-r3");
    assert_eq!(inv["spec"]["subject"]["revision"], 3);
    assert_eq!(inv["spec"]["format"], "apk");
    assert!(
        !inv["spec"]["packages"]
            .as_array()
            .expect("packages")
            .is_empty()
    );
}

#[test]
fn a_fetched_package_list_becomes_a_build_result() {
    // What a build Job does: the new image's `dpkg-query` output, reported
    // as the ChangeRequest's result with the image and the nonce.
    let file = Path::new(FIXTURES).join("dpkg/dpkg-query.txt");
    let from = format!("dpkg-query:{}", file.to_str().expect("utf-8"));
    let inv = yaml(&patchloop(&[
        "inventory",
        "--change-request",
        "debian-12-base-x7k2p",
        "--image",
        "registry.example.com/golden/debian-12@sha256:0123",
        "--nonce",
        "5f2c",
        "-n",
        "fleet",
        "--dry-run",
        "--from-file",
        &from,
    ]));
    let text = std::fs::read_to_string(&file).expect("fixture");
    let expected = parse(InputFormat::DpkgQuery, &text).expect("fixture parses");
    assert_eq!(
        inv["metadata"]["name"],
        "changerequest-debian-12-base-x7k2p"
    );
    assert_eq!(
        inv["spec"]["subject"],
        serde_json::json!({"kind": "ChangeRequest", "name": "debian-12-base-x7k2p"})
    );
    assert_eq!(
        inv["spec"]["image"],
        "registry.example.com/golden/debian-12@sha256:0123"
    );
    assert_eq!(inv["spec"]["nonce"], "5f2c");
    assert_eq!(inv["spec"]["format"], "dpkg");
    let packages = inv["spec"]["packages"].as_array().expect("packages");
    assert_eq!(packages.len(), expected.len());

    // rpm -qa output (the query format of RPM_QA_FORMAT) for a Workload.
    let dir = tempfile::tempdir().expect("temp dir");
    let rpm = dir.path().join("rpm-qa.txt");
    std::fs::write(
        &rpm,
        "openssl-libs\t1:3.0.7-27.el9\topenssl-3.0.7-27.el9.src.rpm\tx86_64\n\
         gpg-pubkey\t0:fd431d51-4ae0493b\t(none)\t(none)\n",
    )
    .expect("write");
    let inv = yaml(&patchloop(&[
        "inventory",
        "--workload",
        "db-01",
        "--dry-run",
        "--from-file",
        &format!("rpm-qa:{}", rpm.to_str().expect("utf-8")),
    ]));
    assert_eq!(inv["spec"]["format"], "rpm");
    assert_eq!(
        inv["spec"]["packages"],
        serde_json::json!(["openssl-libs 1:3.0.7-27.el9 openssl"])
    );
    assert!(inv["spec"].get("nonce").is_none());
}

#[test]
fn a_build_result_needs_its_image_and_nonce_and_a_known_file_format() {
    let out = patchloop(&[
        "inventory",
        "--change-request",
        "cr",
        "--nonce",
        "n",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--image"));
    let out = patchloop(&["inventory", "--workload", "w", "--nonce", "n", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "--nonce needs --change-request");
    let out = patchloop(&[
        "inventory",
        "--workload",
        "w",
        "--dry-run",
        "--from-file",
        "rpm:/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown inventory input format"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = patchloop(&[
        "inventory",
        "--workload",
        "w",
        "--dry-run",
        "--root",
        "/",
        "--from-file",
        "rpm-qa:/tmp/x",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--root and --from-file conflict"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    let empty = tempfile::tempdir().expect("temp dir");
    let out = patchloop(&[
        "inventory",
        "--workload",
        "web-01",
        "--dry-run",
        "--root",
        empty.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no package database under"));
    let out = patchloop(&["inventory", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workload"));
    let out = patchloop(&[
        "inventory",
        "--workload",
        "a",
        "--revision",
        "2",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "--revision needs --template");
}

#[test]
fn create_workload_dry_run_prints_the_detected_workload_first() {
    let root = debian_root();
    let root_arg = root.path().to_str().expect("utf-8");
    let out = patchloop(&[
        "inventory",
        "--workload",
        "node-7",
        "--create-workload",
        "-n",
        "nodes",
        "--dry-run",
        "--root",
        root_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0],
        serde_json::json!({
            "apiVersion": "patchloop.dev/v1alpha1",
            "kind": "Workload",
            "metadata": {
                "name": "node-7",
                "namespace": "nodes",
                "labels": {
                    "app.kubernetes.io/managed-by": "patchloop-node-agent",
                    "patchloop.dev/node": "node-7",
                },
            },
            "spec": {"platform": "Debian:12", "target": {"node": "node-7"}, "paused": false},
        })
    );
    assert_eq!(docs[1]["kind"], "Inventory");
    assert_eq!(docs[1]["metadata"]["name"], "workload-node-7");
    // --platform wins over os-release, normalised.
    let out = patchloop(&[
        "inventory",
        "--workload",
        "node-7",
        "--create-workload",
        "--platform",
        "ubuntu:22.04",
        "--dry-run",
        "--root",
        root_arg,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    assert_eq!(docs[0]["spec"]["platform"], "Ubuntu:22.04:LTS");
}

#[test]
fn bad_node_agent_flags_are_refused_with_a_clear_error() {
    let root = debian_root();
    let root_arg = root.path().to_str().expect("utf-8");
    let run = |extra: &[&str]| {
        let mut args = vec!["inventory", "--root", root_arg];
        args.extend_from_slice(extra);
        patchloop(&args)
    };
    let out = run(&["--workload", "n", "--platform", "Debian:12", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--create-workload"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--template", "t", "--create-workload", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--create-workload needs --workload"
    );
    let out = run(&[
        "--workload",
        "n",
        "--create-workload",
        "--platform",
        "Debian:sid",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--platform"), "{}", stderr(&out));
    let out = run(&["--workload", "n", "--every", "30s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("at least 1m"), "{}", stderr(&out));
    let out = run(&["--workload", "n", "--every", "six hours"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid duration"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--workload", "n", "--every", "6h", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "--every and --dry-run conflict");
    // No os-release and no --platform: say what to do.
    let bare = root_with("dpkg/status", "var/lib/dpkg/status");
    let out = patchloop(&[
        "inventory",
        "--workload",
        "n",
        "--create-workload",
        "--dry-run",
        "--root",
        bare.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("pass --platform") && err.contains("no os-release file"),
        "{err}"
    );
}

/// The issue's check: on this machine (Debian, as CI), `--dry-run` with the
/// default root `/` lists exactly the binary packages dpkg has installed,
/// with their versions. Patchloop counts a package when its dpkg *state* is
/// `installed` (the second letter of the status abbreviation: `ii`, and also
/// `hi` for held packages); `install ok installed` packages are all of them
/// unless something is on hold. Multi-arch duplicates carry `:ARCH` in
/// Patchloop's name, so names are compared without it; the source
/// name/version Patchloop may add are not compared (dpkg-query's `Package`
/// and `Version` are the binary's).
#[test]
fn a_dry_run_on_this_machine_lists_its_installed_dpkg_packages() {
    let query = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\n"])
        .output()
        .expect("dpkg-query (this test needs a dpkg-based machine)");
    assert!(query.status.success(), "{}", stderr(&query));
    let mut installed = Vec::new();
    let mut install_ok_installed = 0;
    for line in String::from_utf8_lossy(&query.stdout).lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let [abbrev, name, version] = fields[..] else {
            panic!("unexpected dpkg-query line {line:?}");
        };
        if abbrev.as_bytes().get(1) == Some(&b'i') {
            installed.push((name.to_owned(), version.to_owned()));
        }
        if abbrev == "ii " {
            install_ok_installed += 1;
        }
    }
    installed.sort();
    assert!(
        install_ok_installed > 0,
        "no installed package on this machine?"
    );

    let inv = yaml(&patchloop(&["inventory", "--dry-run", "--workload", "x"]));
    assert_eq!(inv["spec"]["format"], "dpkg");
    let mut reported: Vec<(String, String)> = inv["spec"]["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|line| {
            let p = parse_compact(line.as_str().expect("a string")).expect("a compact line");
            (p.base_name().to_owned(), p.version.to_string())
        })
        .collect();
    reported.sort();
    assert_eq!(reported.len(), installed.len());
    let only_dpkg: Vec<_> = installed.iter().filter(|p| !reported.contains(p)).collect();
    let only_patchloop: Vec<_> = reported.iter().filter(|p| !installed.contains(p)).collect();
    assert!(
        only_dpkg.is_empty() && only_patchloop.is_empty(),
        "dpkg-query only: {only_dpkg:?}\npatchloop only: {only_patchloop:?}"
    );
}

#[tokio::test]
async fn the_inventory_is_written_with_the_reporters_field_manager() {
    let env = support::env();
    let client = env.client().await;
    let ns = env.namespace("reporter").await;
    let root = root_with("dpkg/status", "var/lib/dpkg/status");
    let kubeconfig = env.kubeconfig().to_str().expect("utf-8").to_owned();
    let out = patchloop(&[
        "inventory",
        "--template",
        "debian-12-base",
        "--revision",
        "2",
        "-n",
        &ns,
        "--kubeconfig",
        &kubeconfig,
        "--root",
        root.path().to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api: Api<Inventory> = Api::namespaced(client, &ns);
    let inv = api
        .get("template-debian-12-base-r2")
        .await
        .expect("the Inventory");
    assert_eq!(inv.spec.subject.revision, Some(2));
    assert!(!inv.spec.packages.is_empty());
    let managers: Vec<String> = inv
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "patchloop-inventory-reporter"),
        "{managers:?}"
    );
}
