//! The engine on real data: Debian and Ubuntu OSV records, a CISA KEV subset
//! and a real dpkg status file (tests/fixtures, see SOURCES.md there).

use std::path::PathBuf;
use std::sync::Arc;

use jiff::Timestamp;
use patchloop::api::common::{ComplianceState, FindingState, Severity};
use patchloop::api::policy::PatchPolicySpec;
use patchloop::engine::advisory::{self, AdvisoryDb, SeveritySource};
use patchloop::engine::evaluate::{self, Input, InventoryInput, PolicyRef};
use patchloop::engine::inventory::{self, InstalledPackage};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn database() -> AdvisoryDb {
    let mut records =
        patchloop::controller::feed_source::load_osv_path(&fixture("osv")).expect("fixtures load");
    assert!(records.len() >= 25, "{} records", records.len());
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let kev_bytes =
        std::fs::read(fixture("kev/known_exploited_vulnerabilities.json")).expect("kev");
    let kev = advisory::parse_kev(&kev_bytes, "kev").expect("kev parses");
    let (db, report) = AdvisoryDb::build(records, kev, &[]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.empty_packages > 0,
        "GIT-only entries exist in the fixtures and are skipped"
    );
    db
}

fn machine_packages() -> Vec<InstalledPackage> {
    let text = std::fs::read_to_string(fixture("dpkg/status")).expect("dpkg status fixture");
    inventory::parse_dpkg_status(&text).expect("dpkg status parses")
}

fn gold() -> PatchPolicySpec {
    serde_json::from_value(serde_json::json!({
        "selector": {},
        "deadlines": {"critical": "3d", "high": "7d", "medium": "30d", "low": "90d", "unknown": "30d"},
        "knownExploited": "2d",
        "inventoryMaxAge": "3650d",
    }))
    .expect("policy")
}

fn now() -> Timestamp {
    "2026-11-24T00:00:00Z".parse().expect("timestamp")
}

fn eval(db: &AdvisoryDb, platform: &str, packages: &[InstalledPackage]) -> evaluate::Evaluation {
    let policy = gold();
    evaluate::evaluate(&Input {
        detail: evaluate::Detail::All,
        platform,
        policies: &[PolicyRef {
            name: "gold",
            spec: &policy,
        }],
        exceptions: &[],
        inventory: Some(InventoryInput {
            packages,
            collected_at: now(),
            ages: true,
            provisional: false,
        }),
        advisories: db,
        now: now(),
    })
}

#[test]
fn severities_come_from_cvss_distribution_fields_or_related_cves() {
    let db = database();
    let sev = |eco: &str, pkg: &str, id: &str| {
        db.lookup(eco, pkg)
            .iter()
            .find(|e| &*e.advisory.id == id)
            .map(|e| (e.affected().severity, e.affected().severity_source))
            .unwrap_or_else(|| panic!("{id} indexed under {eco}/{pkg}"))
    };
    // CVE-2023-4911: CVSS 3.1 7.8.
    assert_eq!(
        sev("Debian:12", "glibc", "CVE-2023-4911"),
        (Severity::High, SeveritySource::Cvss)
    );
    // DSA-5514-1 carries no severity: the highest known for its related CVE.
    assert_eq!(
        sev("Debian:12", "glibc", "DSA-5514-1"),
        (Severity::High, SeveritySource::RelatedCves)
    );
    // CVE-2005-2541 (tar): no CVSS, Debian urgency "unimportant".
    assert_eq!(
        sev("Debian:12", "tar", "CVE-2005-2541"),
        (Severity::Low, SeveritySource::Distribution)
    );
    // USN-6409-1 lists UBUNTU-CVE-2023-4911 under upstream.
    assert_eq!(
        sev("Ubuntu:22.04:LTS", "glibc", "USN-6409-1"),
        (Severity::High, SeveritySource::RelatedCves)
    );
    assert!(db.has_data_for("Debian:12"));
    assert!(db.has_data_for("Ubuntu:22.04:LTS"));
    assert!(!db.has_data_for("AlmaLinux:9"));
}

#[test]
fn kev_matches_through_related_and_upstream_cves() {
    let db = database();
    for (eco, pkg, id) in [
        ("Debian:12", "glibc", "DSA-5514-1"),
        ("Debian:12", "libwebp", "DSA-5497-1"),
        ("Ubuntu:22.04:LTS", "glibc", "USN-6409-1"),
    ] {
        let entry = db
            .lookup(eco, pkg)
            .iter()
            .find(|e| &*e.advisory.id == id)
            .expect("indexed");
        let kev = db
            .known_exploited(&entry.advisory)
            .unwrap_or_else(|| panic!("{id} known exploited"));
        assert!(entry.advisory.cves.iter().any(|c| **c == kev.cve));
    }
    let tar = db.lookup("Debian:12", "tar");
    assert!(
        tar.iter()
            .all(|e| db.known_exploited(&e.advisory).is_none())
    );
}

#[test]
fn the_machines_own_dpkg_status_yields_exactly_the_unfixed_cves() {
    let db = database();
    let packages = machine_packages();
    let e = eval(&db, "Debian:12", &packages);
    let mut found: Vec<(String, FindingState, Vec<String>)> = e
        .findings
        .iter()
        .map(|f| {
            (
                f.finding.advisory.to_string(),
                f.finding.state,
                f.finding
                    .packages
                    .iter()
                    .map(|p| p.name.to_string())
                    .collect(),
            )
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    // Expected binaries: every installed package whose dpkg Source is the
    // advisory's source package (checked with awk over the fixture).
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            (
                "CVE-2005-2541".into(),
                FindingState::NoFixYet,
                names(&["tar"])
            ),
            (
                "CVE-2023-31437".into(),
                FindingState::NoFixYet,
                names(&[
                    "libnss-systemd",
                    "libpam-systemd",
                    "libsystemd-shared",
                    "libsystemd0",
                    "libudev1",
                    "systemd",
                    "systemd-sysv",
                    "systemd-timesyncd"
                ])
            ),
            (
                "CVE-2023-50495".into(),
                FindingState::NoFixYet,
                names(&[
                    "libncurses-dev",
                    "libncurses5-dev",
                    "libncurses6",
                    "libncursesw5-dev",
                    "libncursesw6",
                    "libtinfo6",
                    "ncurses-base",
                    "ncurses-bin"
                ])
            ),
            (
                "CVE-2024-12133".into(),
                FindingState::NoFixYet,
                names(&["libtasn1-6", "libtasn1-6-dev", "libtasn1-doc"])
            ),
        ],
        "installed fixed versions (glibc, openssh, rsync, libwebp at or above the fix) produce no finding"
    );
    assert_eq!(
        e.state,
        ComplianceState::Compliant,
        "no-fix findings do not make a machine non-compliant"
    );
    assert_eq!(e.counts.no_fix_yet, 4);
}

#[test]
fn an_older_glibc_is_overdue_with_the_kev_deadline_and_binary_packages() {
    let db = database();
    // The machine as it was before DSA-5514-1: glibc 2.36-9+deb12u2 (listed
    // in the DSA's own versions), every glibc binary at that version.
    let packages: Vec<InstalledPackage> = machine_packages()
        .into_iter()
        .map(|mut p| {
            if p.source_name() == "glibc" {
                p.version = "2.36-9+deb12u2".into();
                p.source_version = None;
            }
            p
        })
        .collect();
    let glibc_binaries: Vec<String> = packages
        .iter()
        .filter(|p| p.source_name() == "glibc")
        .map(|p| p.name.to_string())
        .collect();
    assert!(glibc_binaries.len() >= 5);
    let e = eval(&db, "Debian:12", &packages);
    assert_eq!(e.state, ComplianceState::Overdue);
    let dsa = e
        .findings
        .iter()
        .find(|f| &*f.finding.advisory == "DSA-5514-1")
        .expect("DSA-5514-1 finding")
        .finding
        .clone();
    assert_eq!(dsa.state, FindingState::Overdue);
    assert_eq!(dsa.severity, Severity::High);
    assert!(dsa.known_exploited);
    assert_eq!(*dsa.cves, [Arc::from("CVE-2023-4911")]);
    let mut names: Vec<String> = dsa.packages.iter().map(|p| p.name.to_string()).collect();
    names.sort();
    let mut expected = glibc_binaries.clone();
    expected.sort();
    assert_eq!(names, expected, "every installed binary of source glibc");
    for p in &dsa.packages {
        assert_eq!(p.fixed.as_deref(), Some("2.36-9+deb12u3"));
        assert_eq!(&*p.installed, "2.36-9+deb12u2");
        if &*p.name != "glibc" {
            assert_eq!(p.source.as_deref(), Some("glibc"));
        }
    }
    // published 2023-10-03 + high 7d = 10-10; KEV dateAdded 2023-11-21 + 2d is later.
    assert_eq!(
        dsa.due.map(|t| t.0.to_string()).as_deref(),
        Some("2023-10-10T00:00:00Z")
    );
    assert_eq!(dsa.due_by.as_deref(), Some("gold"));
    // The Debian CVE record for the same vulnerability is a second finding.
    assert!(e.findings.iter().any(
        |f| &*f.finding.advisory == "CVE-2023-4911" && f.finding.state == FindingState::Overdue
    ));
}

#[test]
fn ubuntu_usn_records_match_source_packages_with_kev_through_upstream() {
    let db = database();
    let packages: Vec<InstalledPackage> = [
        "libc6 2.35-0ubuntu3.1 glibc",
        "libc-bin 2.35-0ubuntu3.1 glibc",
        "locales 2.35-0ubuntu3.1 glibc",
        "bash 5.1-6ubuntu1",
    ]
    .iter()
    .map(|l| inventory::parse_compact(l).expect("line"))
    .collect();
    let e = eval(&db, "Ubuntu:22.04:LTS", &packages);
    let usn = e
        .findings
        .iter()
        .find(|f| &*f.finding.advisory == "USN-6409-1")
        .expect("USN-6409-1")
        .finding
        .clone();
    assert!(usn.known_exploited);
    assert_eq!(usn.packages.len(), 3);
    assert!(
        usn.packages
            .iter()
            .all(|p| p.fixed.as_deref() == Some("2.35-0ubuntu3.4"))
    );
    assert_eq!(e.state, ComplianceState::Overdue);
}

#[test]
fn osv_zip_archives_load_like_directories_and_truncation_is_an_error() {
    use std::io::Write;
    let dir = fixture("osv/debian");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(Result::ok)
            .collect();
        files.sort_by_key(|f| f.file_name());
        for f in files {
            let name = f.file_name().to_string_lossy().into_owned();
            zip.start_file(name, opts).expect("start");
            zip.write_all(&std::fs::read(f.path()).expect("read"))
                .expect("write");
        }
        zip.finish().expect("finish");
    }
    let bytes = buf.into_inner();
    let from_zip = advisory::parse_osv_bytes(&bytes, "Debian.zip").expect("zip parses");
    let from_dir = patchloop::controller::feed_source::load_osv_path(&dir).expect("dir parses");
    let ids = |v: &[advisory::OsvRecord]| {
        let mut ids: Vec<String> = v.iter().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&from_zip), ids(&from_dir));
    let truncated = &bytes[..bytes.len() / 2];
    let err = advisory::parse_osv_bytes(truncated, "Debian.zip").expect_err("truncated archive");
    assert!(err.to_string().starts_with("Debian.zip: "), "{err}");
    let err = advisory::parse_osv_bytes(b"{\"id\": ", "broken.json").expect_err("truncated JSON");
    assert!(err.to_string().contains("broken.json"), "{err}");
}
