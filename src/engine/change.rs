//! The ChangeRequest lifecycle, pure: what a template rebuild includes (its
//! scope and digest), whether a decision counts, whether a built image may be
//! published, and the next phase from what the controller observed.
//!
//! Phases: `AwaitingApproval → Approved → Building → Testing → Published`,
//! or `Rejected`, `Failed`, `Obsolete`. Rules (product.md, README):
//! - The scope is recomputed from the template's findings until the build
//!   starts, then frozen: advisories arriving during the build wait for the
//!   next request.
//! - A person's decision counts only while its digest equals the scope's;
//!   the policy's `templates.approval` may approve without a person
//!   (`Automatic`, or `AutomaticForEmergency` when a scoped finding is an
//!   emergency by the policy's own rule). A person's matching rejection
//!   always wins.
//! - Publication needs a successful test, a build result covering the scope
//!   (every scoped package at least its fixed version) and no finding the
//!   current revision lacks.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use super::evaluate::Evaluation;
use super::fixes::{self, Take};
use super::inventory::InstalledPackage;
use super::version::{Ecosystem, compare};
use crate::api::change_request::{
    ChangeRequestPhase as Phase, Decision, Scope, ScopeAdvisory, ScopePackage, Verdict,
};
use crate::api::common::FindingState;
use crate::api::policy::TemplateApproval;

/// True for the phases a request never leaves.
pub fn is_closed(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        Some(Phase::Published | Phase::Rejected | Phase::Failed | Phase::Obsolete)
    )
}

/// True for the phases before the build starts (the scope still moves).
pub fn before_build(phase: Option<Phase>) -> bool {
    matches!(
        phase,
        None | Some(Phase::AwaitingApproval | Phase::Approved)
    )
}

/// The scope of a rebuild: the fix set of every due fix, soaking or not (a
/// rebuild is approved and tested before anything runs it; see
/// [`fixes::fix_set`] with [`Take::AllDue`]), with the advisories it
/// addresses. `None` when nothing is left to install. The second value: a
/// scoped finding is an emergency by the driving policy's rule.
pub fn scope(evaluation: &Evaluation, family: Ecosystem) -> Option<(Scope, bool)> {
    let set = fixes::fix_set(evaluation, family, Take::AllDue)?;
    let mut advisories: Vec<ScopeAdvisory> = evaluation
        .findings
        .iter()
        .filter(|f| {
            set.advisories
                .binary_search_by(|a| (**a).cmp(&f.finding.advisory))
                .is_ok()
        })
        .map(|f| ScopeAdvisory {
            id: f.finding.advisory.to_string(),
            severity: f.finding.severity,
            known_exploited: f.finding.known_exploited,
            cves: f.finding.cves.iter().map(|c| c.to_string()).collect(),
            due: f.finding.due.clone(),
        })
        .collect();
    advisories.sort_by(|a, b| a.id.cmp(&b.id));
    advisories.dedup_by(|a, b| a.id == b.id);
    let packages: Vec<ScopePackage> = set
        .packages
        .into_iter()
        .map(|p| ScopePackage {
            name: p.name,
            fixed: p.fixed,
            source: p.source,
        })
        .collect();
    let digest = digest(&advisories, &packages);
    Some((
        Scope {
            digest,
            advisories,
            packages,
        },
        set.emergency,
    ))
}

/// The scope digest: hex SHA-256 over the sorted advisory ids and the
/// sorted `name fixed` package lines. A new advisory changes it even when
/// its fix is already in the set: the approver approved a list of reasons.
pub fn digest(advisories: &[ScopeAdvisory], packages: &[ScopePackage]) -> String {
    let ids: BTreeSet<&str> = advisories.iter().map(|a| a.id.as_str()).collect();
    let lines: BTreeSet<(&str, &str)> = packages
        .iter()
        .map(|p| (p.name.as_str(), p.fixed.as_str()))
        .collect();
    let mut h = Sha256::new();
    for id in ids {
        h.update(b"advisory ");
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    for (name, fixed) in lines {
        h.update(b"package ");
        h.update(name.as_bytes());
        h.update(b" ");
        h.update(fixed.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Who approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approver {
    /// A person, through `spec.decision`.
    Person,
    /// The policy's `templates.approval` (Automatic, or AutomaticForEmergency
    /// with an emergency in scope).
    Policy,
}

/// Where approval stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Proceed.
    Approved(Approver),
    /// A person rejected this very scope.
    Rejected,
    /// Waiting for a person; the sentence says why.
    Awaiting(String),
}

/// The approval rule in force: `None` when no single policy drives the
/// template (none matches, or a priority tie), which requires a person.
pub fn approval(
    rule: Option<TemplateApproval>,
    emergency: bool,
    decision: Option<&Decision>,
    digest: &str,
) -> Approval {
    let current = decision.filter(|d| d.digest == digest);
    match current.map(|d| d.verdict) {
        Some(Verdict::Rejected) => return Approval::Rejected,
        Some(Verdict::Approved) => return Approval::Approved(Approver::Person),
        None => {}
    }
    match rule {
        Some(TemplateApproval::Automatic) => return Approval::Approved(Approver::Policy),
        Some(TemplateApproval::AutomaticForEmergency) if emergency => {
            return Approval::Approved(Approver::Policy);
        }
        _ => {}
    }
    let why = match rule {
        Some(TemplateApproval::AutomaticForEmergency) => {
            "no scoped finding is an emergency by the policy's rule: "
        }
        Some(_) => "",
        None => "no single policy drives this template: ",
    };
    Approval::Awaiting(match decision {
        Some(d) if d.digest != digest => format!(
            "{why}the scope changed after the decision (decided on {}, scope is now {}): a new approval is needed (patchloop approve)",
            short(&d.digest),
            short(digest)
        ),
        _ => format!(
            "{why}waiting for approval of scope {} (patchloop approve)",
            short(digest)
        ),
    })
}

/// The first 12 characters of a digest, for messages.
pub fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// The installed version a scoped package is compared with: the source
/// version when the advisory named the source package.
fn installed_version<'a>(pkg: &'a InstalledPackage, scoped: &ScopePackage) -> &'a str {
    if scoped.source.is_some() {
        pkg.source_version()
    } else {
        &pkg.version
    }
}

/// The scoped packages the image does not bring to their fixed version, as
/// `name installed < fixed` sentences. A package absent from the image is
/// no gap: it cannot be vulnerable.
pub fn coverage_gaps(
    scope: &Scope,
    packages: &[InstalledPackage],
    family: Ecosystem,
) -> Vec<String> {
    let mut gaps = Vec::new();
    for s in &scope.packages {
        for p in packages
            .iter()
            .filter(|p| *p.name == *s.name || p.base_name() == s.name)
        {
            let v = installed_version(p, s);
            if !compare(family, v, &s.fixed).is_ok_and(|o| o != Ordering::Less) {
                gaps.push(format!("{} {} < {}", p.name, v, s.fixed));
            }
        }
    }
    gaps.sort();
    gaps.dedup();
    gaps
}

/// Advisories the new image has as actionable findings (Pending, Overdue,
/// Exempt) that the current revision lacks.
pub fn regressions(current: &Evaluation, candidate: &Evaluation) -> Vec<String> {
    let actionable = |e: &Evaluation| -> BTreeSet<String> {
        e.findings
            .iter()
            .filter(|f| {
                matches!(
                    f.finding.state,
                    FindingState::Pending | FindingState::Overdue | FindingState::Exempt
                )
            })
            .map(|f| f.finding.advisory.to_string())
            .collect()
    };
    let before = actionable(current);
    actionable(candidate)
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect()
}

/// A build or test Job as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Not created (or not seen yet).
    Absent,
    /// Created, not finished.
    Running,
    /// Finished successfully at this instant.
    Succeeded(Option<Timestamp>),
    /// Failed; the sentence says why (condition, pod termination message).
    Failed(String),
}

/// How long a succeeded build may wait for its result Inventory to show up
/// (the Inventory and the Job arrive through different watches).
pub const RESULT_GRACE: SignedDuration = SignedDuration::from_secs(60);

/// Everything the next step depends on.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// The recorded phase.
    pub phase: Option<Phase>,
    /// The Template exists.
    pub template_exists: bool,
    /// The Template's history already names this request (publication
    /// happened; only the request's status write was lost).
    pub published: bool,
    /// The Template's published revision now, and the one the request
    /// started from.
    pub revision: (i64, Option<i64>),
    /// The scope the template needs now; `None`: nothing left to install.
    pub needed: Option<&'a Scope>,
    /// The approval for the scope in force.
    pub approval: &'a Approval,
    /// The build Job.
    pub build: &'a JobState,
    /// A build result with the right nonce was found.
    pub result: bool,
    /// The test Job.
    pub test: &'a JobState,
    /// Publication checks on the build result (coverage, no regression):
    /// the failures, empty when publishable. `None` before a result exists.
    pub checks: Option<&'a [String]>,
    /// Now.
    pub now: Timestamp,
}

/// What the controller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// Nothing but the status below.
    Nothing,
    /// Create the build Job (idempotent).
    Build,
    /// Create the test Job (idempotent).
    Test,
    /// Write the new revision to the Template, then the status below.
    Publish,
}

/// The next phase, why, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The phase to record.
    pub phase: Phase,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// A sentence saying what happens next or what went wrong.
    pub message: String,
    /// The action.
    pub act: Act,
    /// When to look again if nothing else happens.
    pub wake: Option<Timestamp>,
}

fn step(phase: Phase, reason: &'static str, message: impl Into<String>, act: Act) -> Step {
    Step {
        phase,
        reason,
        message: message.into(),
        act,
        wake: None,
    }
}

/// The lifecycle's transition function.
pub fn next(o: &Observed<'_>) -> Option<Step> {
    if is_closed(o.phase) {
        return None;
    }
    if o.published {
        return Some(step(
            Phase::Published,
            "Published",
            format!("revision {} is published", o.revision.0),
            Act::Nothing,
        ));
    }
    if !o.template_exists {
        return Some(step(
            Phase::Failed,
            "TemplateDeleted",
            "the Template was deleted before publication",
            Act::Nothing,
        ));
    }
    if let Some(base) = o.revision.1
        && o.revision.0 != base
    {
        return Some(step(
            Phase::Obsolete,
            "TemplateChanged",
            format!(
                "the Template moved from revision {base} to {} another way",
                o.revision.0
            ),
            Act::Nothing,
        ));
    }
    let phase = o.phase.unwrap_or(Phase::AwaitingApproval);
    match phase {
        Phase::AwaitingApproval | Phase::Approved => {
            let Some(_) = o.needed else {
                return Some(step(
                    Phase::Obsolete,
                    "TemplateCompliant",
                    "the Template no longer needs a rebuild",
                    Act::Nothing,
                ));
            };
            Some(match o.approval {
                Approval::Rejected => step(
                    Phase::Rejected,
                    "Rejected",
                    "rejected; a new request opens only when the findings change",
                    Act::Nothing,
                ),
                Approval::Awaiting(why) => step(
                    Phase::AwaitingApproval,
                    "AwaitingApproval",
                    why,
                    Act::Nothing,
                ),
                Approval::Approved(by) if phase == Phase::AwaitingApproval => step(
                    Phase::Approved,
                    "Approved",
                    match by {
                        Approver::Person => "approved; the build starts",
                        Approver::Policy => "approved by the policy; the build starts",
                    },
                    Act::Nothing,
                ),
                Approval::Approved(_) => step(
                    Phase::Building,
                    "Building",
                    "the build Job runs; its result must carry this request's nonce",
                    Act::Build,
                ),
            })
        }
        Phase::Building => Some(match (o.build, o.result) {
            (JobState::Failed(why), _) => step(
                Phase::Failed,
                "BuildFailed",
                format!("the build failed: {why}"),
                Act::Nothing,
            ),
            (JobState::Succeeded(_), true) => step(
                Phase::Testing,
                "Testing",
                "the test Job runs against the built image",
                Act::Test,
            ),
            (JobState::Succeeded(at), false) => {
                let deadline = at.and_then(|t| t.checked_add(RESULT_GRACE).ok());
                if deadline.is_some_and(|d| d <= o.now) {
                    step(
                        Phase::Failed,
                        "NoBuildResult",
                        "the build succeeded but reported no Inventory with this request's nonce and an image",
                        Act::Nothing,
                    )
                } else {
                    Step {
                        wake: deadline,
                        ..step(
                            Phase::Building,
                            "AwaitingBuildResult",
                            "the build succeeded; waiting for its Inventory (subject: this request, with its nonce)",
                            Act::Nothing,
                        )
                    }
                }
            }
            (JobState::Absent, _) => step(
                Phase::Building,
                "Building",
                "the build Job runs; its result must carry this request's nonce",
                Act::Build,
            ),
            (JobState::Running, _) => step(
                Phase::Building,
                "Building",
                "the build Job runs; its result must carry this request's nonce",
                Act::Nothing,
            ),
        }),
        Phase::Testing if !o.result => Some(step(
            Phase::Failed,
            "NoBuildResult",
            "the build result disappeared before publication",
            Act::Nothing,
        )),
        Phase::Testing => Some(match o.test {
            JobState::Failed(why) => step(
                Phase::Failed,
                "TestFailed",
                format!("the test failed: {why}"),
                Act::Nothing,
            ),
            JobState::Absent => step(
                Phase::Testing,
                "Testing",
                "the test Job runs against the built image",
                Act::Test,
            ),
            JobState::Running => step(
                Phase::Testing,
                "Testing",
                "the test Job runs against the built image",
                Act::Nothing,
            ),
            JobState::Succeeded(_) => match o.checks {
                Some([]) => step(
                    Phase::Published,
                    "Published",
                    format!("revision {} is published", o.revision.0 + 1),
                    Act::Publish,
                ),
                Some(problems) => step(
                    Phase::Failed,
                    "NotPublishable",
                    format!(
                        "the built image cannot be published: {}",
                        problems.join("; ")
                    ),
                    Act::Nothing,
                ),
                None => step(
                    Phase::Failed,
                    "NoBuildResult",
                    "the build result disappeared before publication",
                    Act::Nothing,
                ),
            },
        }),
        // Closed phases returned above.
        Phase::Published | Phase::Rejected | Phase::Failed | Phase::Obsolete => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Severity;

    fn scope_of(pkgs: &[(&str, &str)], ids: &[&str]) -> Scope {
        let packages: Vec<ScopePackage> = pkgs
            .iter()
            .map(|(n, f)| ScopePackage {
                name: (*n).into(),
                fixed: (*f).into(),
                source: None,
            })
            .collect();
        let advisories: Vec<ScopeAdvisory> = ids
            .iter()
            .map(|id| ScopeAdvisory {
                id: (*id).into(),
                severity: Severity::High,
                known_exploited: false,
                cves: vec![],
                due: None,
            })
            .collect();
        Scope {
            digest: digest(&advisories, &packages),
            advisories,
            packages,
        }
    }

    fn decision(verdict: Verdict, digest: &str) -> Decision {
        Decision {
            verdict,
            digest: digest.into(),
            reason: None,
        }
    }

    #[test]
    fn digest_is_order_independent_and_sees_advisories_and_versions() {
        let a = scope_of(
            &[("libc6", "2.36-9+deb12u3"), ("bash", "5.2")],
            &["DSA-1", "CVE-2"],
        );
        let b = scope_of(
            &[("bash", "5.2"), ("libc6", "2.36-9+deb12u3")],
            &["CVE-2", "DSA-1"],
        );
        assert_eq!(a.digest, b.digest);
        let c = scope_of(
            &[("bash", "5.2"), ("libc6", "2.36-9+deb12u4")],
            &["CVE-2", "DSA-1"],
        );
        assert_ne!(a.digest, c.digest);
        let d = scope_of(
            &[("bash", "5.2"), ("libc6", "2.36-9+deb12u3")],
            &["CVE-2", "DSA-1", "DSA-3"],
        );
        assert_ne!(a.digest, d.digest);
        assert_eq!(a.digest.len(), 64);
    }

    #[test]
    fn a_decision_counts_only_for_its_digest() {
        let d = decision(Verdict::Approved, "aaa");
        assert_eq!(
            approval(Some(TemplateApproval::Required), false, Some(&d), "aaa"),
            Approval::Approved(Approver::Person)
        );
        let stale = approval(Some(TemplateApproval::Required), false, Some(&d), "bbb");
        let Approval::Awaiting(why) = stale else {
            panic!("{stale:?}")
        };
        assert!(why.contains("scope changed"), "{why}");
        assert!(why.contains("new approval"), "{why}");
        let r = decision(Verdict::Rejected, "aaa");
        assert_eq!(
            approval(Some(TemplateApproval::Automatic), true, Some(&r), "aaa"),
            Approval::Rejected
        );
        // A stale rejection does not count either: the policy decides.
        assert_eq!(
            approval(Some(TemplateApproval::Automatic), false, Some(&r), "bbb"),
            Approval::Approved(Approver::Policy)
        );
    }

    #[test]
    fn policy_rules_approve_without_a_person() {
        assert_eq!(
            approval(Some(TemplateApproval::Automatic), false, None, "x"),
            Approval::Approved(Approver::Policy)
        );
        assert_eq!(
            approval(
                Some(TemplateApproval::AutomaticForEmergency),
                true,
                None,
                "x"
            ),
            Approval::Approved(Approver::Policy)
        );
        assert!(matches!(
            approval(Some(TemplateApproval::AutomaticForEmergency), false, None, "x"),
            Approval::Awaiting(w) if w.contains("emergency")
        ));
        assert!(matches!(
            approval(Some(TemplateApproval::Required), true, None, "x"),
            Approval::Awaiting(_)
        ));
        assert!(matches!(
            approval(None, true, None, "x"),
            Approval::Awaiting(w) if w.contains("no single policy")
        ));
    }

    #[test]
    fn coverage_compares_source_versions_when_the_advisory_names_a_source() {
        let mut s = scope_of(&[("libc6", "2.36-9+deb12u3")], &["DSA-5514-1"]);
        s.packages[0].source = Some("glibc".into());
        let old = vec![InstalledPackage::new(
            "libc6",
            "2.36-9+deb12u2",
            Some("glibc".into()),
            None,
        )];
        let new = vec![InstalledPackage::new(
            "libc6",
            "2.36-9+deb12u4",
            Some("glibc".into()),
            None,
        )];
        assert_eq!(
            coverage_gaps(&s, &old, Ecosystem::Dpkg),
            ["libc6 2.36-9+deb12u2 < 2.36-9+deb12u3"]
        );
        assert!(coverage_gaps(&s, &new, Ecosystem::Dpkg).is_empty());
        // Removed from the image: nothing left to be vulnerable.
        assert!(coverage_gaps(&s, &[], Ecosystem::Dpkg).is_empty());
        // A binNMU-style binary version with the fixed source version.
        let binnmu = vec![InstalledPackage::new(
            "libc6",
            "2.36-9+deb12u3+b1",
            Some("glibc".into()),
            Some("2.36-9+deb12u3".into()),
        )];
        assert!(coverage_gaps(&s, &binnmu, Ecosystem::Dpkg).is_empty());
    }

    /// Debian's real OSV records for openssh, rsync and tar (no fix), as
    /// the feeds serve them.
    fn fixture_db() -> crate::engine::advisory::AdvisoryDb {
        use crate::engine::advisory::{AdvisoryDb, KevCatalog, OsvRecord};
        let records: Vec<OsvRecord> = [
            include_str!("../../tests/fixtures/osv/debian/DSA-5586-1.json"),
            include_str!("../../tests/fixtures/osv/debian/CVE-2023-51385.json"),
            include_str!("../../tests/fixtures/osv/debian/DSA-5843-1.json"),
            include_str!("../../tests/fixtures/osv/debian/CVE-2024-12084.json"),
            include_str!("../../tests/fixtures/osv/debian/CVE-2005-2541.json"),
        ]
        .iter()
        .map(|r| serde_json::from_str(r).expect("an OSV record"))
        .collect();
        AdvisoryDb::build(records, KevCatalog::default(), &[]).0
    }

    /// An image's evaluation (inventories of images never age) under one
    /// policy, from `dpkg` compact lines.
    fn image(db: &crate::engine::advisory::AdvisoryDb, lines: &[&str]) -> Evaluation {
        use crate::engine::evaluate::{Detail, Input, InventoryInput, PolicyRef, evaluate};
        let spec: crate::api::policy::PatchPolicySpec = serde_json::from_value(serde_json::json!({
            "selector": {},
            "deadlines": {"critical": "3d", "high": "7d", "medium": "30d", "low": "90d", "unknown": "30d"},
        }))
        .expect("policy spec");
        let packages: Vec<InstalledPackage> = lines
            .iter()
            .map(|l| crate::engine::inventory::parse_compact(l).expect("compact line"))
            .collect();
        let now: Timestamp = "2026-11-24T08:00:00Z".parse().expect("timestamp");
        evaluate(&Input {
            detail: Detail::All,
            platform: "Debian:12",
            policies: &[PolicyRef {
                name: "gold",
                spec: &spec,
            }],
            exceptions: &[],
            inventory: Some(InventoryInput {
                packages: &packages,
                collected_at: now,
                ages: false,
                provisional: false,
            }),
            advisories: db,
            now,
        })
    }

    #[test]
    fn regressions_are_actionable_findings_the_current_image_lacks() {
        let db = fixture_db();
        const OPENSSH_OLD: &str = "openssh-client 1:9.2p1-2+deb12u1 openssh";
        const OPENSSH_FIXED: &str = "openssh-client 1:9.2p1-2+deb12u2 openssh";
        const RSYNC_OLD: &str = "rsync 3.2.7-1";
        const TAR: &str = "tar 1.34+dfsg-1.2+deb12u1";
        let current = image(&db, &[OPENSSH_OLD, TAR]);
        assert!(
            current
                .findings
                .iter()
                .any(|f| &*f.finding.advisory == "DSA-5586-1"),
            "{:?}",
            current.findings
        );
        // The same image, or one fixing what the current one has: no worse.
        assert!(regressions(&current, &current).is_empty());
        let fixed = image(&db, &[OPENSSH_FIXED, TAR]);
        assert!(regressions(&current, &fixed).is_empty());
        // A fix that brings an old rsync along: rsync's advisories are new.
        let worse = image(&db, &[OPENSSH_FIXED, RSYNC_OLD, TAR]);
        assert_eq!(
            regressions(&current, &worse),
            ["CVE-2024-12084", "DSA-5843-1"]
        );
        // A finding without a fix is no regression: nothing could install it.
        let bare = image(&db, &[OPENSSH_OLD]);
        assert!(
            current
                .findings
                .iter()
                .any(|f| &*f.finding.advisory == "CVE-2005-2541"
                    && f.finding.state == FindingState::NoFixYet),
            "{:?}",
            current.findings
        );
        assert!(regressions(&bare, &current).is_empty());
    }

    fn observed<'a>(
        phase: Option<Phase>,
        scope: Option<&'a Scope>,
        approval: &'a Approval,
        build: &'a JobState,
        test: &'a JobState,
    ) -> Observed<'a> {
        Observed {
            phase,
            template_exists: true,
            published: false,
            revision: (1, Some(1)),
            needed: scope,
            approval,
            build,
            result: false,
            test,
            checks: None,
            now: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_happy_path_walks_every_phase() {
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let waiting = Approval::Awaiting("waiting".into());
        let approved = Approval::Approved(Approver::Person);
        let (absent, running) = (JobState::Absent, JobState::Running);
        let done = JobState::Succeeded(Some(Timestamp::UNIX_EPOCH));

        let o = observed(None, Some(&s), &waiting, &absent, &absent);
        assert_eq!(next(&o).map(|s| s.phase), Some(Phase::AwaitingApproval));

        let o = observed(
            Some(Phase::AwaitingApproval),
            Some(&s),
            &approved,
            &absent,
            &absent,
        );
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Approved, Act::Nothing));

        let o = observed(Some(Phase::Approved), Some(&s), &approved, &absent, &absent);
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Building, Act::Build));

        let o = observed(Some(Phase::Building), None, &waiting, &running, &absent);
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Building, Act::Nothing));

        let mut o = observed(Some(Phase::Building), None, &waiting, &done, &absent);
        o.result = true;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Testing, Act::Test));

        let mut o = observed(Some(Phase::Testing), None, &waiting, &done, &done);
        o.result = true;
        o.checks = Some(&[]);
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Published, Act::Publish));
        assert!(st.message.contains("revision 2"), "{}", st.message);

        let o = observed(Some(Phase::Published), None, &waiting, &done, &done);
        assert_eq!(next(&o), None);
    }

    #[test]
    fn approval_lost_before_the_build_goes_back_to_waiting() {
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let waiting = Approval::Awaiting("the scope changed".into());
        let absent = JobState::Absent;
        let o = observed(Some(Phase::Approved), Some(&s), &waiting, &absent, &absent);
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::AwaitingApproval, Act::Nothing));
    }

    #[test]
    fn once_building_the_scope_no_longer_matters() {
        // The template needs nothing (or something else) now: the build goes on.
        let waiting = Approval::Awaiting("x".into());
        let running = JobState::Running;
        let absent = JobState::Absent;
        let o = observed(Some(Phase::Building), None, &waiting, &running, &absent);
        assert_eq!(next(&o).map(|s| s.phase), Some(Phase::Building));
    }

    #[test]
    fn failures_close_the_request_with_the_reason() {
        let waiting = Approval::Awaiting("x".into());
        let failed = JobState::Failed("container build: apt-get failed".into());
        let absent = JobState::Absent;
        let o = observed(Some(Phase::Building), None, &waiting, &failed, &absent);
        let st = next(&o).expect("step");
        assert_eq!(st.phase, Phase::Failed);
        assert!(st.message.contains("apt-get failed"));

        let done = JobState::Succeeded(Some(Timestamp::UNIX_EPOCH));
        let mut o = observed(Some(Phase::Testing), None, &waiting, &done, &failed);
        o.result = true;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.reason), (Phase::Failed, "TestFailed"));

        let problems = ["libc6 2.36-9+deb12u2 < 2.36-9+deb12u3".to_owned()];
        let mut o = observed(Some(Phase::Testing), None, &waiting, &done, &done);
        o.result = true;
        o.checks = Some(&problems);
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.reason), (Phase::Failed, "NotPublishable"));

        // The result Inventory deleted while testing: nothing to publish.
        let running = JobState::Running;
        let o = observed(Some(Phase::Testing), None, &waiting, &done, &running);
        assert_eq!(next(&o).map(|s| s.reason), Some("NoBuildResult"));
    }

    #[test]
    fn a_build_without_a_result_waits_then_fails() {
        let waiting = Approval::Awaiting("x".into());
        let at = Timestamp::from_second(1_000).expect("ts");
        let done = JobState::Succeeded(Some(at));
        let absent = JobState::Absent;
        let mut o = observed(Some(Phase::Building), None, &waiting, &done, &absent);
        o.now = at;
        let st = next(&o).expect("step");
        assert_eq!(st.phase, Phase::Building);
        assert_eq!(st.wake, at.checked_add(RESULT_GRACE).ok());
        o.now = at.checked_add(RESULT_GRACE).expect("ts");
        assert_eq!(next(&o).map(|s| s.reason), Some("NoBuildResult"));
    }

    #[test]
    fn rejection_obsolescence_and_resumed_publication() {
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let rejected = Approval::Rejected;
        let absent = JobState::Absent;
        let o = observed(
            Some(Phase::AwaitingApproval),
            Some(&s),
            &rejected,
            &absent,
            &absent,
        );
        assert_eq!(next(&o).map(|s| s.phase), Some(Phase::Rejected));
        let o = observed(
            Some(Phase::AwaitingApproval),
            None,
            &rejected,
            &absent,
            &absent,
        );
        assert_eq!(next(&o).map(|s| s.phase), Some(Phase::Obsolete));
        let mut o = observed(Some(Phase::Testing), None, &rejected, &absent, &absent);
        o.published = true;
        o.revision = (2, Some(1));
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Published, Act::Nothing));
        let mut o = observed(Some(Phase::Building), None, &rejected, &absent, &absent);
        o.template_exists = false;
        assert_eq!(next(&o).map(|s| s.reason), Some("TemplateDeleted"));
    }
}
