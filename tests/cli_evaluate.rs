//! `patchloop evaluate` as image pipelines use it: exit status, table and
//! JSON output, one-line errors naming the bad input.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_patchloop");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/patchpolicy.yaml");

fn evaluate(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("evaluate")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("patchloop runs");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("patchloop finishes")
}

fn fixture(p: &str) -> String {
    format!("{FIXTURES}/{p}")
}

#[test]
fn a_patched_machine_is_compliant_and_exits_zero() {
    let out = evaluate(
        &[
            "--inventory",
            &fixture("dpkg/status"),
            "--advisories",
            &fixture("osv"),
            "--kev",
            &fixture("kev/known_exploited_vulnerabilities.json"),
            "--policy",
            POLICY,
            "--platform",
            "Debian:12",
            "--now",
            "2026-11-24T00:00:00Z",
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Compliant: nothing installable is missing (4 advisory(ies) without a fix"),
        "{stdout}"
    );
    assert!(stdout.contains("727 packages"), "{stdout}");
}

#[test]
fn a_missing_fix_exits_one_and_json_lists_it() {
    let inventory = "libc6 2.36-9+deb12u2 glibc\nlibc-bin 2.36-9+deb12u2 glibc\nbash 5.2.15-2+b8 bash 5.2.15-2\n";
    let out = evaluate(
        &[
            "--inventory",
            "-",
            "--advisories",
            &fixture("osv/debian"),
            "--kev",
            &fixture("kev/known_exploited_vulnerabilities.json"),
            "--policy",
            POLICY,
            "--platform",
            "Debian:12",
            "--now",
            "2026-11-24T00:00:00Z",
            "--output",
            "json",
        ],
        Some(inventory),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(doc["compliance"]["state"], "Overdue");
    assert_eq!(doc["packages"], 3);
    let dsa = doc["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["advisory"] == "DSA-5514-1"))
        .expect("DSA-5514-1 in the findings");
    assert_eq!(dsa["knownExploited"], true);
    assert_eq!(dsa["severity"], "high");
    assert_eq!(dsa["dueBy"], "gold");
    assert_eq!(dsa["packages"][0]["fixed"], "2.36-9+deb12u3");
}

#[test]
fn a_platform_without_advisory_data_is_unknown_and_exits_three() {
    let out = evaluate(
        &[
            "--inventory",
            "-",
            "--advisories",
            &fixture("osv/debian"),
            "--platform",
            "AlmaLinux:9",
        ],
        Some("openssl-libs 1:3.0.7-27.el9 openssl\n"),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no advisory data is loaded for AlmaLinux:9")
    );
}

#[test]
fn bad_input_is_a_one_line_error_naming_the_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("DSA-broken.json");
    std::fs::write(&broken, "{\"id\": \"DSA-1\", \"affected\": [").expect("write");
    let broken = broken.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--inventory",
                "-",
                "--advisories",
                &broken,
                "--platform",
                "Debian:12",
            ],
            "DSA-broken.json: not a valid OSV record",
        ),
        (
            &[
                "--inventory",
                "-",
                "--advisories",
                "/nonexistent/osv",
                "--platform",
                "Debian:12",
            ],
            "--advisories /nonexistent/osv",
        ),
        (
            &[
                "--inventory",
                "-",
                "--advisories",
                &fixture("osv"),
                "--platform",
                "Windows:11",
            ],
            "--platform \"Windows:11\"",
        ),
        (
            &[
                "--inventory",
                "/nonexistent/status",
                "--advisories",
                &fixture("osv"),
                "--platform",
                "Debian:12",
            ],
            "--inventory /nonexistent/status",
        ),
    ];
    for (args, needle) in cases {
        let out = evaluate(args, Some("bash 5.2.15-2+b8\n"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
    }
    let out = evaluate(
        &[
            "--inventory",
            "-",
            "--advisories",
            &fixture("osv"),
            "--platform",
            "Debian:12",
        ],
        Some("libssl3\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("packages[0]"));
}
