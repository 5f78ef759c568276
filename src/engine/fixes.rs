//! Fix sets: what a remediation Job (or a template rebuild) must install,
//! derived from an evaluation — the packages with their **minimum** fixed
//! versions, the advisories they address, and a digest that names the set.
//!
//! The digest covers the packages and fixed versions only: a new advisory
//! fixed by a version already in the set does not change the work, so it
//! does not start a new attempt. It is the hex SHA-256 of the sorted
//! `name fixed` lines; [`FixSet::short`] is the prefix used in Job names.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::evaluate::Evaluation;
use super::inventory::InstalledPackage;
use super::version::{Ecosystem, compare};
use crate::api::common::FindingState;

/// The length of [`FixSet::short`].
pub const SHORT_DIGEST_LEN: usize = 10;

/// One package to bring to at least a version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FixPackage {
    /// The installed (binary) package name, as the package manager knows it.
    pub name: String,
    /// The minimum version that fixes every addressed advisory (of the source
    /// package when `source` is set: dpkg and rpm advisories name sources).
    pub fixed: String,
    /// The source package the advisories name, when it differs from `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The advisories this package addresses.
    pub advisories: Vec<String>,
}

/// The fixes one object needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixSet {
    /// Packages by name.
    pub packages: Vec<FixPackage>,
    /// Advisory ids addressed, sorted.
    pub advisories: Vec<String>,
    /// At least one addressed finding is an emergency by the driving policy.
    pub emergency: bool,
    /// The earliest due date among the addressed findings.
    pub due: Option<Timestamp>,
    /// Hex SHA-256 of the sorted `name fixed` lines.
    pub digest: String,
}

impl FixSet {
    /// The digest prefix used in Job names and labels.
    pub fn short(&self) -> &str {
        &self.digest[..SHORT_DIGEST_LEN.min(self.digest.len())]
    }

    /// The package file mounted into Jobs: one `name fixed [source]` line
    /// per package, sorted by name.
    pub fn package_lines(&self) -> String {
        package_lines(
            self.packages
                .iter()
                .map(|p| (p.name.as_str(), p.fixed.as_str(), p.source.as_deref())),
        )
    }
}

/// The contract's `packages` file: one `name fixed-version [source]` line
/// per package, each ending in a newline.
pub fn package_lines<'a>(
    packages: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>)>,
) -> String {
    let mut out = String::new();
    for (name, fixed, source) in packages {
        out.push_str(name);
        out.push(' ');
        out.push_str(fixed);
        if let Some(s) = source {
            out.push(' ');
            out.push_str(s);
        }
        out.push('\n');
    }
    out
}

/// Which findings a fix set takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Only fixes that may be installed now (soak over, or an emergency):
    /// live remediation.
    Installable,
    /// Every due fix, soaking or not: a template rebuild is approved and
    /// tested before anything runs it.
    AllDue,
}

/// The fix set of an evaluation: the Pending and Overdue findings (never
/// Exempt, Blocked or without a fix) that `take` admits, each package at the
/// highest minimum fixed version any of them names. `None` when nothing is
/// left to install.
pub fn fix_set(evaluation: &Evaluation, family: Ecosystem, take: Take) -> Option<FixSet> {
    let mut packages: BTreeMap<String, FixPackage> = BTreeMap::new();
    let mut advisories = Vec::new();
    let mut emergency = false;
    let mut due: Option<Timestamp> = None;
    for f in &evaluation.findings {
        if !matches!(
            f.finding.state,
            FindingState::Pending | FindingState::Overdue
        ) {
            continue;
        }
        if take == Take::Installable && !f.installable {
            continue;
        }
        let mut addressed = false;
        for p in &f.finding.packages {
            let Some(fixed) = &p.fixed else { continue };
            addressed = true;
            let entry = packages
                .entry(p.name.to_string())
                .or_insert_with(|| FixPackage {
                    name: p.name.to_string(),
                    fixed: fixed.to_string(),
                    source: p.source.as_deref().map(str::to_owned),
                    advisories: Vec::new(),
                });
            // An unparsable version never reaches a finding; if it did,
            // keeping the first is the safe choice (verification compares
            // again).
            if compare(family, fixed, &entry.fixed).is_ok_and(|o| o == Ordering::Greater) {
                entry.fixed = fixed.to_string();
            }
            if !entry.advisories.iter().any(|a| **a == *f.finding.advisory) {
                entry.advisories.push(f.finding.advisory.to_string());
            }
        }
        if !addressed {
            continue;
        }
        advisories.push(f.finding.advisory.to_string());
        emergency |= f.emergency;
        if let Some(d) = f.finding.due.as_ref().map(|t| t.0) {
            due = Some(due.map_or(d, |x| x.min(d)));
        }
    }
    if packages.is_empty() {
        return None;
    }
    advisories.sort();
    advisories.dedup();
    let mut packages: Vec<FixPackage> = packages.into_values().collect();
    for p in &mut packages {
        p.advisories.sort();
    }
    let mut hasher = Sha256::new();
    for p in &packages {
        hasher.update(p.name.as_bytes());
        hasher.update(b" ");
        hasher.update(p.fixed.as_bytes());
        hasher.update(b"\n");
    }
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(FixSet {
        packages,
        advisories,
        emergency,
        due,
        digest,
    })
}

/// The packages of `set` that `installed` does not bring to their fixed
/// version: each is compared on its source version when the advisories
/// name a source package, else on its own version. A package no longer
/// installed is a gap only when `missing_is_gap` (a machine that removed a
/// package no longer needs its fix; an image must still carry it).
pub fn gaps<'a>(
    set: &'a [FixPackage],
    installed: &[InstalledPackage],
    family: Ecosystem,
    missing_is_gap: bool,
) -> Vec<&'a FixPackage> {
    let by_name: BTreeMap<&str, &InstalledPackage> = installed
        .iter()
        .flat_map(|p| [(&*p.name, p), (p.base_name(), p)])
        .collect();
    set.iter()
        .filter(|want| match by_name.get(want.name.as_str()) {
            None => missing_is_gap,
            Some(have) => {
                let version = if want.source.is_some() {
                    have.source_version()
                } else {
                    &have.version
                };
                !compare(family, version, &want.fixed).is_ok_and(|o| o != Ordering::Less)
            }
        })
        .collect()
}

/// Reads a package file written by [`FixSet::package_lines`].
pub fn parse_package_lines(text: &str) -> Vec<FixPackage> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?;
            let fixed = fields.next()?;
            Some(FixPackage {
                name: name.to_owned(),
                fixed: fixed.to_owned(),
                source: fields.next().map(str::to_owned),
                advisories: Vec::new(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::common::{AffectedPackage, Finding, Severity, time};
    use crate::engine::advisory::Advisory;
    use crate::engine::evaluate::{EvaluatedFinding, RemediationChoice};
    use crate::engine::inventory::parse_compact_list;

    fn finding(
        id: &str,
        state: FindingState,
        packages: &[(&str, Option<&str>)],
        installable: bool,
        due: &str,
    ) -> EvaluatedFinding {
        EvaluatedFinding {
            finding: Finding {
                advisory: id.into(),
                cves: Arc::from([]),
                severity: Severity::High,
                known_exploited: false,
                packages: packages
                    .iter()
                    .map(|(n, f)| AffectedPackage {
                        name: (*n).into(),
                        installed: "1.0-1".into(),
                        fixed: f.map(Arc::from),
                        source: Some("src".into()),
                    })
                    .collect(),
                published: None,
                due: Some(time(due.parse().expect("timestamp"))),
                due_by: None,
                installable_after: None,
                exempted_by: None,
                state,
            },
            advisory: Arc::new(Advisory {
                id: id.into(),
                summary: None,
                cves: Arc::from([]),
                published: None,
                modified: None,
                severity: Severity::High,
                affected: vec![],
                known_exploited: None,
            }),
            emergency: id.starts_with("E"),
            installable,
        }
    }

    fn evaluation(findings: Vec<EvaluatedFinding>) -> Evaluation {
        Evaluation {
            state: crate::api::common::ComplianceState::Pending,
            unknown: None,
            findings,
            counts: Default::default(),
            next_due: None,
            next_change: None,
            remediation: RemediationChoice::None,
            exceptions: vec![],
            inventory_fresh: Some(true),
        }
    }

    #[test]
    fn takes_due_installable_findings_at_their_highest_fixed_version() {
        let e = evaluation(vec![
            finding(
                "DSA-1",
                FindingState::Overdue,
                &[
                    ("libssl3", Some("3.0.11-1~deb12u2")),
                    ("openssl", Some("3.0.11-1~deb12u2")),
                ],
                true,
                "2026-11-20T00:00:00Z",
            ),
            finding(
                "DSA-2",
                FindingState::Pending,
                &[("libssl3", Some("3.0.13-1~deb12u1"))],
                true,
                "2026-12-01T00:00:00Z",
            ),
            finding(
                "DSA-3",
                FindingState::Exempt,
                &[("zlib1g", Some("1:1.2.13"))],
                true,
                "2026-11-01T00:00:00Z",
            ),
            finding(
                "DSA-4",
                FindingState::Blocked,
                &[("curl", Some("7.88"))],
                true,
                "2026-11-01T00:00:00Z",
            ),
            finding(
                "DSA-5",
                FindingState::Pending,
                &[("bash", None)],
                true,
                "2026-11-01T00:00:00Z",
            ),
            finding(
                "DSA-6",
                FindingState::Pending,
                &[("tar", Some("1.35"))],
                false,
                "2026-11-02T00:00:00Z",
            ),
        ]);
        let set = fix_set(&e, Ecosystem::Dpkg, Take::Installable).expect("a fix set");
        let lines: Vec<(&str, &str)> = set
            .packages
            .iter()
            .map(|p| (p.name.as_str(), p.fixed.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                ("libssl3", "3.0.13-1~deb12u1"),
                ("openssl", "3.0.11-1~deb12u2")
            ]
        );
        assert_eq!(set.advisories, ["DSA-1", "DSA-2"]);
        assert_eq!(set.packages[0].advisories, ["DSA-1", "DSA-2"]);
        assert_eq!(set.due, Some("2026-11-20T00:00:00Z".parse().expect("ts")));
        assert!(!set.emergency);
        assert_eq!(set.digest.len(), 64);
        assert_eq!(set.short().len(), SHORT_DIGEST_LEN);
        assert_eq!(
            set.package_lines(),
            "libssl3 3.0.13-1~deb12u1 src\nopenssl 3.0.11-1~deb12u2 src\n"
        );

        // A soaking fix joins a template rebuild's scope, not a live Job.
        let all = fix_set(&e, Ecosystem::Dpkg, Take::AllDue).expect("a fix set");
        assert!(all.packages.iter().any(|p| p.name == "tar"));
        assert_ne!(all.digest, set.digest);
    }

    #[test]
    fn the_digest_names_packages_and_versions_not_advisories() {
        let one = evaluation(vec![finding(
            "DSA-1",
            FindingState::Overdue,
            &[("libc6", Some("2.36-9+deb12u3"))],
            true,
            "2026-11-20T00:00:00Z",
        )]);
        let two = evaluation(vec![
            finding(
                "DSA-1",
                FindingState::Overdue,
                &[("libc6", Some("2.36-9+deb12u3"))],
                true,
                "2026-11-20T00:00:00Z",
            ),
            finding(
                "CVE-2023-4911",
                FindingState::Pending,
                &[("libc6", Some("2.36-9+deb12u3"))],
                true,
                "2026-11-21T00:00:00Z",
            ),
        ]);
        let a = fix_set(&one, Ecosystem::Dpkg, Take::Installable).expect("set");
        let b = fix_set(&two, Ecosystem::Dpkg, Take::Installable).expect("set");
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.advisories, b.advisories);
        let three = evaluation(vec![finding(
            "DSA-1",
            FindingState::Overdue,
            &[("libc6", Some("2.36-9+deb12u4"))],
            true,
            "2026-11-20T00:00:00Z",
        )]);
        let c = fix_set(&three, Ecosystem::Dpkg, Take::Installable).expect("set");
        assert_ne!(a.digest, c.digest);
    }

    #[test]
    fn nothing_to_install_is_no_fix_set() {
        let e = evaluation(vec![
            finding(
                "DSA-5",
                FindingState::Pending,
                &[("bash", None)],
                true,
                "2026-11-01T00:00:00Z",
            ),
            finding(
                "E-1",
                FindingState::Exempt,
                &[("bash", Some("5.2"))],
                true,
                "2026-11-01T00:00:00Z",
            ),
        ]);
        assert_eq!(fix_set(&e, Ecosystem::Dpkg, Take::AllDue), None);
    }

    #[test]
    fn an_emergency_finding_marks_the_set() {
        let e = evaluation(vec![finding(
            "E-1",
            FindingState::Pending,
            &[("bash", Some("5.2.15-2+deb12u1"))],
            true,
            "2026-11-01T00:00:00Z",
        )]);
        assert!(fix_set(&e, Ecosystem::Dpkg, Take::Installable).is_some_and(|s| s.emergency));
    }

    #[test]
    fn gaps_are_packages_below_their_fixed_version_on_source_versions() {
        let e = evaluation(vec![finding(
            "DSA-1",
            FindingState::Overdue,
            &[
                ("libc6", Some("2.36-9+deb12u3")),
                ("libc-bin", Some("2.36-9+deb12u3")),
            ],
            true,
            "2026-11-20T00:00:00Z",
        )]);
        let set = fix_set(&e, Ecosystem::Dpkg, Take::Installable).expect("set");
        assert_eq!(
            parse_package_lines(&set.package_lines()),
            set.packages
                .iter()
                .map(|p| FixPackage {
                    advisories: vec![],
                    ..p.clone()
                })
                .collect::<Vec<_>>()
        );
        let inv = |lines: &[&str]| {
            parse_compact_list(
                crate::engine::version::Ecosystem::Dpkg,
                &lines.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>(),
            )
            .expect("inventory")
        };
        // Binary versions with a binNMU suffix: the source version decides.
        let newer = inv(&[
            "libc6:amd64 2.36-9+deb12u4+b1 src 2.36-9+deb12u4",
            "libc-bin 2.36-9+deb12u3 src",
        ]);
        assert!(gaps(&set.packages, &newer, Ecosystem::Dpkg, true).is_empty());
        let older = inv(&["libc6 2.36-9+deb12u2 src", "libc-bin 2.36-9+deb12u3 src"]);
        let g: Vec<&str> = gaps(&set.packages, &older, Ecosystem::Dpkg, true)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(g, ["libc6"]);
        let removed = inv(&["libc6 2.36-9+deb12u3 src"]);
        assert!(gaps(&set.packages, &removed, Ecosystem::Dpkg, false).is_empty());
        assert_eq!(
            gaps(&set.packages, &removed, Ecosystem::Dpkg, true).len(),
            1
        );
    }
}
