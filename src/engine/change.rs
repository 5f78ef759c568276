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
//! - A build result is pinned only if it is the one the build Pod reported
//!   (its termination message's result line: image and package digests)
//!   and was never changed since its creation; only the build Job whose
//!   uid the request recorded is adopted, any other is deleted.
//! - A request is bound to the Template uid it recorded; another Template
//!   under `spec.template` fails it.
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
    VoidedDecision,
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

/// The Template `spec.template` names, against the one the request was
/// opened for (`status.templateUid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSeen {
    /// It exists and is the recorded one (or none is recorded yet).
    Bound,
    /// There is none by that name.
    Absent,
    /// There is one by that name with another uid: not this request's.
    Other,
}

/// Which Template a request sees: `recorded` its `status.templateUid`,
/// `found` the uid of the Template under `spec.template` (`None`: there is
/// none; `Some(None)`: one without a uid, which matches no record).
pub fn template_seen(recorded: Option<&str>, found: Option<Option<&str>>) -> TemplateSeen {
    match (recorded, found) {
        (_, None) => TemplateSeen::Absent,
        (None, Some(_)) => TemplateSeen::Bound,
        (Some(r), Some(f)) if f == Some(r) => TemplateSeen::Bound,
        (Some(_), Some(_)) => TemplateSeen::Other,
    }
}

/// What determines a build besides its package list, from the Template:
/// an edit to any of these after approval is not covered by it.
#[derive(Debug, Clone, Copy)]
pub struct BuildInputs<'a> {
    /// `spec.platform`.
    pub platform: &'a str,
    /// `spec.image` (revision 1's image).
    pub image: &'a str,
    /// `spec.buildJobTemplate`.
    pub build_job_template: Option<&'a serde_json::Value>,
    /// `spec.testJobTemplate`.
    pub test_job_template: Option<&'a serde_json::Value>,
    /// The published revision the rebuild starts from.
    pub base_revision: i64,
    /// That revision's image.
    pub base_image: &'a str,
}

impl BuildInputs<'_> {
    /// Hex SHA-256 over the fields, each labelled, the Job templates in a
    /// canonical JSON form (object keys sorted) so that key order in the
    /// stored object never changes the digest.
    pub fn digest(&self) -> String {
        let mut text = String::new();
        for (label, value) in [
            ("platform", Some(self.platform.to_owned())),
            ("image", Some(self.image.to_owned())),
            ("build", self.build_job_template.map(canonical_json)),
            ("test", self.test_job_template.map(canonical_json)),
            ("base-revision", Some(self.base_revision.to_string())),
            ("base-image", Some(self.base_image.to_owned())),
        ] {
            text.push_str(label);
            match value {
                // Length-prefixed: no value can imitate the next label.
                Some(v) => text.push_str(&format!(" {} {v}\n", v.len())),
                None => text.push_str(" -\n"),
            }
        }
        hex(&Sha256::digest(text.as_bytes()))
    }
}

/// JSON with object keys sorted at every level.
fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical_json(&map[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The scope of a rebuild: the fix set of every due fix, soaking or not (a
/// rebuild is approved and tested before anything runs it; see
/// [`fixes::fix_set`] with [`Take::AllDue`]), with the advisories it
/// addresses, bound to the build inputs. `None` when nothing is left to
/// install. The second value: a scoped finding is an emergency by the
/// driving policy's rule.
pub fn scope(
    evaluation: &Evaluation,
    family: Ecosystem,
    inputs: &BuildInputs<'_>,
) -> Option<(Scope, bool)> {
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
    let build_inputs_digest = inputs.digest();
    let digest = digest(&advisories, &packages, &build_inputs_digest);
    Some((
        Scope {
            digest,
            build_inputs_digest,
            advisories,
            packages,
        },
        set.emergency,
    ))
}

/// The scope digest: hex SHA-256 over the sorted advisory ids, the sorted
/// `name fixed` package lines and the build inputs' digest. A new advisory
/// changes it even when its fix is already in the set: the approver
/// approved a list of reasons and a recipe.
pub fn digest(
    advisories: &[ScopeAdvisory],
    packages: &[ScopePackage],
    build_inputs_digest: &str,
) -> String {
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
    h.update(b"inputs ");
    h.update(build_inputs_digest.as_bytes());
    h.update(b"\n");
    hex(&h.finalize())
}

/// A kept scope (the findings cannot be told right now) bound to the build
/// inputs as they are now: the advisories and packages stay, the digest
/// follows the Template, so an edit is never approved under an old digest.
pub fn rebind(scope: &Scope, inputs: &BuildInputs<'_>) -> Scope {
    let build_inputs_digest = inputs.digest();
    Scope {
        digest: digest(&scope.advisories, &scope.packages, &build_inputs_digest),
        build_inputs_digest,
        ..scope.clone()
    }
}

/// What moved between the scope a decision was made on and the scope now,
/// for the sentence asking for a new approval.
pub fn what_changed(decided: &Scope, now: &Scope) -> &'static str {
    if decided.build_inputs_digest != now.build_inputs_digest {
        "the Template's build inputs (platform, image, build or test Job template, or base revision) changed"
    } else {
        "the advisories or packages to fix changed"
    }
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

/// A person's decision as the request holds it.
#[derive(Debug, Clone, Copy)]
pub struct PersonDecision<'a> {
    /// `spec.decision`.
    pub decision: Option<&'a Decision>,
    /// The request's `metadata.uid`: a decision counts only if it names it.
    pub request_uid: &'a str,
    /// What changed when the scope moved away from this very decision
    /// ([`void_holds`]): it stays void even if the scope comes back
    /// (A→B→A).
    pub voided: Option<&'a str>,
    /// The scope the decision was made on, when the request recorded it
    /// (to say what changed).
    pub decided_scope: Option<&'a Scope>,
}

impl PersonDecision<'_> {
    /// The decision counts for the scope with `digest`.
    fn counts(&self, digest: &str) -> Option<Verdict> {
        self.decision
            .filter(|d| d.digest == digest)
            .filter(|d| d.request_uid.as_deref() == Some(self.request_uid))
            .filter(|_| self.voided.is_none())
            .map(|d| d.verdict)
    }

    /// What changed, when the decision names another scope than `scope`
    /// and is not void yet: recorded so that it never counts again, even
    /// if the scope returns to it.
    pub fn voids(&self, scope: &Scope) -> Option<&'static str> {
        let d = self.decision.filter(|d| d.digest != scope.digest)?;
        if self.voided.is_some() {
            return None;
        }
        Some(
            self.decided_scope
                .filter(|s| s.digest == d.digest)
                .map_or("the scope changed", |s| what_changed(s, scope)),
        )
    }
}

/// Whether a recorded void holds for the decision `spec.decision` holds
/// now: every decision not decided later than the voided one stays void —
/// the voided decision edited (its reason, by any writer, under any field
/// manager), replayed, or an older decision put back after it. Only a
/// decision with a later `decidedAt` (which `patchloop approve` always
/// writes) counts on its own. A void recorded before voids named their
/// decision holds for its generation.
pub fn void_holds(
    voided: &VoidedDecision,
    decision: Option<&Decision>,
    generation: Option<i64>,
) -> bool {
    match (&voided.digest, decision) {
        (Some(_), Some(d)) => {
            let decided = d.decided_at.as_ref().map(|t| t.0);
            decided <= voided.decided_at.as_ref().map(|t| t.0)
        }
        (Some(_), None) => false,
        (None, _) => voided.generation.is_some() && voided.generation == generation,
    }
}

/// The approval rule in force: `None` when no single policy drives the
/// template (none matches, or a priority tie), which requires a person.
pub fn approval(
    rule: Option<TemplateApproval>,
    emergency: bool,
    person: &PersonDecision<'_>,
    scope: &Scope,
) -> Approval {
    let digest = scope.digest.as_str();
    match person.counts(digest) {
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
    let renew = format!(
        "a new approval of scope {} is needed (patchloop approve --digest {digest})",
        short(digest)
    );
    Approval::Awaiting(match (person.decision, person.voided) {
        (Some(d), voided) if d.digest != digest => format!(
            "{why}{} after the decision (decided on {}, scope is now {}){}: {renew}",
            voided
                .or(person.voids(scope))
                .unwrap_or("the scope changed"),
            shown_digest(&d.digest),
            short(digest),
            if voided.is_some() {
                "; a voided decision does not revive if the scope returns"
            } else {
                ""
            }
        ),
        (Some(_), Some(changed)) => format!(
            "{why}the decision was voided when {changed}; a voided decision does not revive when the scope returns to it: {renew}"
        ),
        (Some(d), None) if d.request_uid.as_deref() != Some(person.request_uid) => format!(
            "{why}spec.decision does not name this request's uid (requestUid): a decision made for another request does not count; {renew}"
        ),
        _ => format!(
            "{why}waiting for approval of scope {} (patchloop approve --digest {digest})",
            short(digest)
        ),
    })
}

/// A digest from `spec.decision` as messages show it: its first 12
/// characters when it is a hex digest, else nothing of it (user data that
/// is not a digest is not echoed).
fn shown_digest(digest: &str) -> &str {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        short(digest)
    } else {
        "a value that is not a scope digest"
    }
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

/// A closed request as retention sees it.
#[derive(Debug, Clone, Copy)]
pub struct Closed<'a> {
    /// Its name.
    pub name: &'a str,
    /// It published a revision the Template's history names (its result
    /// Inventory describes that revision): never retired.
    pub published: bool,
}

/// The closed requests to delete, given all of a Template's closed requests
/// oldest first: all but the newest `keep` that published nothing. The
/// newest closed request is always among those kept (a rejection stands
/// through it), as `keep` is at least 1.
pub fn to_retire<'a>(closed: &[Closed<'a>], keep: usize) -> Vec<&'a str> {
    let retirable: Vec<&str> = closed
        .iter()
        .filter(|c| !c.published)
        .map(|c| c.name)
        .collect();
    let excess = retirable.len().saturating_sub(keep.max(1));
    retirable.into_iter().take(excess).collect()
}

/// A digest reference to an OCI image by the distribution reference
/// grammar (`[domain[:port]/]path-component(/path-component)*[:tag]@sha256:<64 hex>`,
/// the name at most 255 characters): the digest pins the bytes, so what is
/// tested is what is published. A reference without a sha256 digest (a
/// bare tag) is refused.
pub fn is_digest_reference(reference: &str) -> bool {
    use std::sync::LazyLock;
    static GRAMMAR: LazyLock<regex::Regex> = LazyLock::new(|| {
        let alphanumeric = "[a-z0-9]+";
        let separator = "(?:[._]|__|[-]+)";
        let path_component = format!("{alphanumeric}(?:{separator}{alphanumeric})*");
        let domain_component = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])");
        let domain = format!("{host}(?::[0-9]+)?");
        let name = format!("(?:{domain}/)?{path_component}(?:/{path_component})*");
        let tag = r"[\w][\w.-]{0,127}";
        regex::Regex::new(&format!("^({name})(?::{tag})?@sha256:[a-f0-9]{{64}}$"))
            .expect("the reference grammar is a valid regex")
    });
    GRAMMAR
        .captures(reference)
        .and_then(|c| c.get(1))
        .is_some_and(|name| name.as_str().len() <= 255)
}

/// Hex SHA-256 of a nonce: what status keeps, so that reading the request
/// never reveals the nonce.
pub fn nonce_hash(nonce: &str) -> String {
    hex(&Sha256::digest(nonce.as_bytes()))
}

/// A build result Inventory as the controller read it (server-set times).
#[derive(Debug, Clone, Copy)]
pub struct ResultFacts<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its `metadata.creationTimestamp` (set by the apiserver).
    pub created: Option<Timestamp>,
    /// `spec.nonce`.
    pub nonce: Option<&'a str>,
    /// `spec.image`.
    pub image: Option<&'a str>,
    /// Its `metadata.generation` (set by the apiserver; 1 until its spec is
    /// changed after creation).
    pub generation: Option<i64>,
    /// `spec.packages`, as written.
    pub packages: &'a [String],
}

/// How a build Pod's result line begins. The build Job's container ends its
/// termination message with `result image=sha256:<64 hex>
/// packages=sha256:<64 hex>` (see [`result_line`]).
pub const RESULT_LINE: &str = "result";

/// What the build Pod reported it built: the image's digest and the digest
/// of its package lines ([`packages_digest`]), each `sha256:<64 hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// The image's digest.
    pub image: String,
    /// The package lines' digest.
    pub packages: String,
}

/// The line a build Job's container ends its termination message with.
pub fn result_line(report: &BuildReport) -> String {
    format!(
        "{RESULT_LINE} image={} packages={}",
        report.image, report.packages
    )
}

fn is_sha256(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The canonical digest of an Inventory's package lines, which the build
/// reports and the controller recomputes from `spec.packages`: SHA-256 over
/// the entries exactly as written, sorted by their bytes (as `LC_ALL=C
/// sort` sorts), each followed by a newline (`printf '%s\n' … | LC_ALL=C
/// sort | sha256sum`), as `sha256:<64 hex>`. `None` when an entry holds a
/// line break: it would not be one line.
pub fn packages_digest(packages: &[String]) -> Option<String> {
    if packages.iter().any(|p| p.contains('\n')) {
        return None;
    }
    let mut lines: Vec<&[u8]> = packages.iter().map(|p| p.as_bytes()).collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for line in lines {
        h.update(line);
        h.update(b"\n");
    }
    Some(format!("sha256:{}", hex(&h.finalize())))
}

/// The build Pod's report from its containers' termination messages (each
/// as written): the last non-empty line of each that is a result line.
/// Exactly one report must be made (the same by every container that makes
/// one); the error says what was wrong.
pub fn build_report(messages: Option<&[String]>) -> Result<BuildReport, &'static str> {
    let Some(messages) = messages else {
        return Err("no succeeded Pod of the recorded build Job was found");
    };
    let mut reports: Vec<BuildReport> = messages
        .iter()
        .filter_map(|m| m.lines().rev().find(|l| !l.trim().is_empty()))
        .filter_map(parse_result_line)
        .collect();
    reports.dedup();
    match reports.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            "the build Pod's termination message does not end with a `result image=sha256:<64 hex> packages=sha256:<64 hex>` line",
        ),
        _ => Err("the build Pod's containers report different results"),
    }
}

fn parse_result_line(line: &str) -> Option<BuildReport> {
    let mut words = line.split_ascii_whitespace();
    let (Some(RESULT_LINE), Some(image), Some(packages), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    let image = image.strip_prefix("image=").filter(|d| is_sha256(d))?;
    let packages = packages
        .strip_prefix("packages=")
        .filter(|d| is_sha256(d))?;
    Some(BuildReport {
        image: image.to_owned(),
        packages: packages.to_owned(),
    })
}

/// Whether a result that passed [`check_result`] is what the build Pod
/// reported (read from the Pod controlled by the build Job whose uid the
/// request recorded): its spec never changed since it was created
/// (`metadata.generation` 1: any later patch is a swap), its image's digest
/// and its package lines' digest are the ones the Pod's termination message
/// names. The sentence shows digests only (the Inventory's own values were
/// checked to be digests or are hashed), never other user values.
pub fn check_origin(
    facts: &ResultFacts<'_>,
    report: Result<&BuildReport, &str>,
) -> Result<(), String> {
    let name = facts.name;
    if facts.generation != Some(1) {
        return Err(format!(
            "Inventory {name} was changed after it was created (metadata.generation {} is not 1): a result is written once, by the build",
            facts.generation.unwrap_or_default()
        ));
    }
    let report = report
        .map_err(|why| format!("{why}, so Inventory {name} cannot be told to be the build's"))?;
    let image = facts
        .image
        .and_then(|i| i.rsplit_once('@'))
        .map(|(_, d)| d)
        .filter(|d| is_sha256(d));
    let packages = packages_digest(facts.packages);
    let mut differs = Vec::new();
    if image != Some(report.image.as_str()) {
        differs.push(format!(
            "spec.image's digest {} is not the reported {}",
            image.map_or("(none)", |d| short_digest(d)),
            short_digest(&report.image)
        ));
    }
    if packages.as_deref() != Some(report.packages.as_str()) {
        differs.push(format!(
            "spec.packages digest {} is not the reported {}",
            packages
                .as_deref()
                .map_or("(an entry holds a line break)", short_digest),
            short_digest(&report.packages)
        ));
    }
    if differs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Inventory {name} is not what the build Pod reported: {}",
            differs.join("; ")
        ))
    }
}

/// `sha256:` and the first 12 hex digits, for messages.
fn short_digest(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// Whether a build result may be taken: it carries the nonce whose hash the
/// request recorded, it was created no earlier than the build Job (both
/// times are the apiserver's; a result written before the build could not
/// come from it), and its image is a digest reference. The sentence names
/// the field and never echoes its value.
pub fn check_result(
    facts: &ResultFacts<'_>,
    nonce_hash_recorded: Option<&str>,
    build_job_created: Option<Timestamp>,
) -> Result<(), String> {
    let name = facts.name;
    let carries_nonce = facts
        .nonce
        .zip(nonce_hash_recorded)
        .is_some_and(|(n, h)| nonce_hash(n) == h);
    if !carries_nonce {
        return Err(format!(
            "Inventory {name}: spec.nonce is not the nonce issued to this request's build Job; only the build Job can report its result"
        ));
    }
    match (facts.created, build_job_created) {
        (Some(created), Some(job)) if created >= job => {}
        _ => {
            return Err(format!(
                "Inventory {name} was created before the build Job started (metadata.creationTimestamp): a result must be written by the build; delete it and retry with a new request"
            ));
        }
    }
    match facts.image {
        Some(image) if is_digest_reference(image) => Ok(()),
        Some(_) => Err(format!(
            "Inventory {name}: spec.image is not a digest reference (registry/name@sha256:<64 hex>); tags are refused because they can move"
        )),
        None => Err(format!("Inventory {name}: spec.image is missing")),
    }
}

/// The build result as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutput {
    /// No Inventory under the result's name.
    Absent,
    /// One that cannot be taken; the sentence says why.
    Invalid(String),
    /// One that passed [`check_result`] but is not what the build Pod
    /// reported ([`check_origin`]); the sentence says what differed.
    NotFromBuild(String),
    /// One that can be taken.
    Valid,
}

/// The pinned build result against the Inventory now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Nothing pinned yet.
    Unpinned,
    /// The Inventory is still the pinned object at the pinned version.
    Intact,
    /// It was replaced, changed or deleted after pinning.
    Changed,
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
    /// The Template under `spec.template`, against the recorded one.
    pub template: TemplateSeen,
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
    /// The build Job: the Job under its name whose uid the request recorded
    /// when it created it.
    pub build: &'a JobState,
    /// When the Job under the build Job's name whose uid is not the recorded
    /// one was created (a crash between its create and the status write, a
    /// Job replaced since, or one created by someone else with a forged
    /// owner reference): never adopted, deleted.
    pub build_unrecorded: Option<Timestamp>,
    /// The build result Inventory (`changerequest-<request>`).
    pub output: &'a BuildOutput,
    /// The pinned result against that Inventory now.
    pub pin: Pin,
    /// The Template's build inputs now differ from the approved scope's.
    pub inputs_changed: bool,
    /// The test Job.
    pub test: &'a JobState,
    /// Publication checks on the build result (coverage, no regression):
    /// the failures, empty when publishable. `None` before a result exists.
    pub checks: Option<&'a [String]>,
    /// Now.
    pub now: Timestamp,
}

/// What the controller does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Nothing but the status below.
    Nothing,
    /// Create the build Job and record its uid and nonce's hash; an
    /// existing one is adopted only when its uid is the recorded one
    /// ([`created`] decides the step from what the create found).
    Build,
    /// Delete the Job under the build Job's name that this request did not
    /// record (the uid seen as a precondition); a fresh one, with a fresh
    /// nonce, is created on a later pass.
    DiscardBuild,
    /// Record the build result (uid, resourceVersion, generation, image)
    /// in status before the test Job is created.
    Pin,
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
    if let Some(settled) = settled(o) {
        return Some(settled);
    }
    let phase = o.phase.unwrap_or(Phase::AwaitingApproval);
    if matches!(phase, Phase::Building | Phase::Testing) && o.inputs_changed {
        return Some(step(
            Phase::Failed,
            "TemplateEdited",
            "the Template's build inputs (platform, image, build or test Job template) changed after approval: this request's approval does not cover them; a new request opens for the edited Template",
            Act::Nothing,
        ));
    }
    // Before Building nothing recorded a build Job (its approval was never
    // consumed), and once Building only the recorded one counts.
    if let Some(created) = o.build_unrecorded
        && matches!(
            phase,
            Phase::AwaitingApproval | Phase::Approved | Phase::Building
        )
    {
        return Some(unrecorded_build(phase, created, o.now));
    }
    match phase {
        Phase::AwaitingApproval | Phase::Approved => Some(deciding(o, phase)),
        Phase::Building => Some(building(o)),
        Phase::Testing => Some(testing(o)),
        // Closed phases returned above.
        Phase::Published | Phase::Rejected | Phase::Failed | Phase::Obsolete => None,
    }
}

/// The steps that end an open request whatever its phase: published
/// already, its Template gone or another one, or the Template moved on.
fn settled(o: &Observed<'_>) -> Option<Step> {
    if o.published {
        return Some(step(
            Phase::Published,
            "Published",
            format!("revision {} is published", o.revision.0),
            Act::Nothing,
        ));
    }
    match o.template {
        TemplateSeen::Bound => {}
        TemplateSeen::Absent => {
            return Some(step(
                Phase::Failed,
                "TemplateDeleted",
                "the Template was deleted before publication",
                Act::Nothing,
            ));
        }
        TemplateSeen::Other => {
            return Some(step(
                Phase::Failed,
                "TemplateMismatch",
                "spec.template names a Template other than the one this request was opened for (its metadata.uid is not status.templateUid): spec.template cannot be changed, and a recreated Template is another one; nothing is built or published for it",
                Act::Nothing,
            ));
        }
    }
    let base = o.revision.1.filter(|base| *base != o.revision.0)?;
    Some(step(
        Phase::Obsolete,
        "TemplateChanged",
        format!(
            "the Template moved from revision {base} to {} another way",
            o.revision.0
        ),
        Act::Nothing,
    ))
}

/// Awaiting approval or approved: the decision on the scope in force.
fn deciding(o: &Observed<'_>, phase: Phase) -> Step {
    let Some(_) = o.needed else {
        return step(
            Phase::Obsolete,
            "TemplateCompliant",
            "the Template no longer needs a rebuild",
            Act::Nothing,
        );
    };
    match o.approval {
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
        Approval::Approved(_) => step(Phase::Building, "Building", BUILDING, Act::Build),
    }
}

/// Building: the recorded build Job, then its result.
fn building(o: &Observed<'_>) -> Step {
    match (o.build, &o.pin, o.output) {
        (JobState::Failed(why), _, _) => step(
            Phase::Failed,
            "BuildFailed",
            format!("the build failed: {why}"),
            Act::Nothing,
        ),
        (JobState::Succeeded(_), Pin::Intact, _) => {
            step(Phase::Testing, "Testing", TESTING, Act::Test)
        }
        (JobState::Succeeded(_), Pin::Changed, _) => result_changed(),
        (JobState::Succeeded(_), Pin::Unpinned, BuildOutput::NotFromBuild(why)) => step(
            Phase::Failed,
            "ResultNotFromBuild",
            format!("{why}; nothing is tested or published, a new request rebuilds"),
            Act::Nothing,
        ),
        (JobState::Succeeded(_), Pin::Unpinned, BuildOutput::Valid) => step(
            Phase::Building,
            "ResultPinned",
            "the build result is pinned; the test Job runs against that image next",
            Act::Pin,
        ),
        (JobState::Succeeded(at), Pin::Unpinned, output) => awaiting_result(*at, output, o.now),
        (JobState::Absent, _, _) => step(Phase::Building, "Building", BUILDING, Act::Build),
        (JobState::Running, _, _) => step(Phase::Building, "Building", BUILDING, Act::Nothing),
    }
}

/// A build that succeeded at `at` without a usable result: waited on for
/// [`RESULT_GRACE`], then the request fails saying why.
fn awaiting_result(at: Option<Timestamp>, output: &BuildOutput, now: Timestamp) -> Step {
    let deadline = at.and_then(|t| t.checked_add(RESULT_GRACE).ok());
    let why = match output {
        BuildOutput::Invalid(why) => why.clone(),
        _ => "no Inventory reported it".to_owned(),
    };
    if deadline.is_some_and(|d| d <= now) {
        return step(
            Phase::Failed,
            match output {
                BuildOutput::Invalid(_) => "InvalidBuildResult",
                _ => "NoBuildResult",
            },
            format!("the build succeeded but its result cannot be used: {why}"),
            Act::Nothing,
        );
    }
    Step {
        wake: deadline,
        ..step(
            Phase::Building,
            "AwaitingBuildResult",
            format!("the build succeeded; waiting for its result Inventory ({why})"),
            Act::Nothing,
        )
    }
}

/// Testing: the pin still holds, then the test Job, then the publication
/// checks.
fn testing(o: &Observed<'_>) -> Step {
    match (&o.pin, o.test) {
        (Pin::Unpinned, _) => step(
            Phase::Failed,
            "NoBuildResult",
            "no build result was pinned before the test",
            Act::Nothing,
        ),
        (Pin::Changed, _) => result_changed(),
        (Pin::Intact, JobState::Failed(why)) => step(
            Phase::Failed,
            "TestFailed",
            format!("the test failed: {why}"),
            Act::Nothing,
        ),
        (Pin::Intact, JobState::Absent) => step(Phase::Testing, "Testing", TESTING, Act::Test),
        (Pin::Intact, JobState::Running) => step(Phase::Testing, "Testing", TESTING, Act::Nothing),
        (Pin::Intact, JobState::Succeeded(_)) => match o.checks {
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
            None => result_changed(),
        },
    }
}

/// What creating the Job a step asked for ([`Act::Build`] or [`Act::Test`])
/// found under its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Creation {
    /// This pass created it.
    New,
    /// A Job of this request's already under the name that it may adopt:
    /// for the build Job, the one whose uid it recorded (the cache had not
    /// shown it yet); for the test Job, any it controls.
    Adopted,
    /// A Job of this request's that it did not record (a crash between its
    /// create and the status write), created at this instant.
    Unrecorded(Timestamp),
    /// A Job another owner controls; the sentence says whose.
    Taken(String),
    /// The Job template is unusable; the sentence says why.
    Invalid(String),
}

/// The step once the Job `planned` asked for was created, from the recorded
/// phase: a new Job, or an adoptable one, keeps `planned` (a new build
/// Job's uid is recorded with it, before anything adopts it); an unrecorded
/// one is never adopted ([`unrecorded_build`]); a name held by another
/// owner, or an unusable template, fails the request.
pub fn created(phase: Option<Phase>, planned: Step, creation: Creation, now: Timestamp) -> Step {
    match creation {
        Creation::New | Creation::Adopted => planned,
        Creation::Unrecorded(at) => {
            unrecorded_build(phase.unwrap_or(Phase::AwaitingApproval), at, now)
        }
        Creation::Taken(why) => step(
            Phase::Failed,
            match planned.act {
                Act::Test => "TestJobConflict",
                _ => "BuildJobConflict",
            },
            why,
            Act::Nothing,
        ),
        Creation::Invalid(why) => step(Phase::Failed, "InvalidJobTemplate", why, Act::Nothing),
    }
}

/// How old a Job under the build Job's name that the request did not record
/// must be before it is deleted. Never adopted meanwhile; the hold keeps a
/// status write that keeps failing after each create (a stale CRD, missing
/// RBAC) from turning into a create-and-delete loop, as every deletion and
/// creation wakes the request at once.
pub const UNRECORDED_HOLD: SignedDuration = SignedDuration::from_secs(5);

/// The step for a Job under the build Job's name that the request did not
/// record, created at `created`: the phase stays, the Job goes once
/// [`UNRECORDED_HOLD`] old.
pub fn unrecorded_build(phase: Phase, created: Timestamp, now: Timestamp) -> Step {
    let due = created.checked_add(UNRECORDED_HOLD).unwrap_or(created);
    let held = due > now;
    Step {
        wake: held.then_some(due),
        ..step(
            phase,
            "BuildJobUnrecorded",
            "a Job under this request's build Job name exists that this request did not record creating (status.buildJobUid): it is deleted, never adopted, and a new build Job with a fresh nonce is created",
            if held {
                Act::Nothing
            } else {
                Act::DiscardBuild
            },
        )
    }
}

const BUILDING: &str =
    "the build Job runs; only it holds this request's nonce, which its result must carry";

const TESTING: &str = "the test Job runs against the pinned image";

fn result_changed() -> Step {
    step(
        Phase::Failed,
        "ResultChanged",
        "the build result Inventory was replaced, changed or deleted after it was pinned: what was built and tested can no longer be told from it, so nothing is published; a new request rebuilds",
        Act::Nothing,
    )
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
            digest: digest(&advisories, &packages, "inputs"),
            build_inputs_digest: "inputs".into(),
            advisories,
            packages,
        }
    }

    const UID: &str = "uid-1";
    const OPENSSH: &str = "openssh-client 1:9.2p1-2+deb12u2 openssh";

    fn decision(verdict: Verdict, digest: &str) -> Decision {
        Decision {
            verdict,
            digest: digest.into(),
            request_uid: Some(UID.into()),
            decided_at: None,
            reason: None,
        }
    }

    fn person(decision: Option<&Decision>) -> PersonDecision<'_> {
        PersonDecision {
            decision,
            request_uid: UID,
            voided: None,
            decided_scope: None,
        }
    }

    fn with_digest(digest: &str) -> Scope {
        Scope {
            digest: digest.into(),
            ..Scope::default()
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
        let (aaa, bbb) = (with_digest("aaa"), with_digest("bbb"));
        let required = Some(TemplateApproval::Required);
        assert_eq!(
            approval(required, false, &person(Some(&d)), &aaa),
            Approval::Approved(Approver::Person)
        );
        let stale = approval(required, false, &person(Some(&d)), &bbb);
        let Approval::Awaiting(why) = stale else {
            panic!("{stale:?}")
        };
        assert!(why.contains("scope changed"), "{why}");
        assert!(why.contains("new approval"), "{why}");
        assert!(why.contains("--digest bbb"), "{why}");
        let r = decision(Verdict::Rejected, "aaa");
        assert_eq!(
            approval(
                Some(TemplateApproval::Automatic),
                true,
                &person(Some(&r)),
                &aaa
            ),
            Approval::Rejected
        );
        // A stale rejection does not count either: the policy decides.
        assert_eq!(
            approval(
                Some(TemplateApproval::Automatic),
                false,
                &person(Some(&r)),
                &bbb
            ),
            Approval::Approved(Approver::Policy)
        );
    }

    #[test]
    fn a_decision_counts_only_for_its_request_and_never_after_it_was_voided() {
        let d = decision(Verdict::Approved, "aaa");
        let aaa = with_digest("aaa");
        let required = Some(TemplateApproval::Required);
        // Copied from another request: another uid, or none.
        for uid in [Some("uid-2".to_owned()), None] {
            let copied = Decision {
                request_uid: uid,
                ..d.clone()
            };
            let a = approval(required, false, &person(Some(&copied)), &aaa);
            assert!(
                matches!(&a, Approval::Awaiting(w) if w.contains("requestUid") && !w.contains("uid-2")),
                "{a:?}"
            );
        }
        // A→B: the decision on A is voided; A again: still void.
        let bbb = with_digest("bbb");
        assert_eq!(person(Some(&d)).voids(&bbb), Some("the scope changed"));
        assert_eq!(person(Some(&d)).voids(&aaa), None);
        let voided = PersonDecision {
            voided: Some("the advisories or packages to fix changed"),
            ..person(Some(&d))
        };
        assert_eq!(voided.voids(&bbb), None, "voided once");
        let a = approval(required, false, &voided, &aaa);
        assert!(
            matches!(&a, Approval::Awaiting(w) if w.contains("voided") && w.contains("does not revive") && w.contains("packages")),
            "{a:?}"
        );
        // The policy still decides on its own.
        assert_eq!(
            approval(Some(TemplateApproval::Automatic), false, &voided, &aaa),
            Approval::Approved(Approver::Policy)
        );
    }

    #[test]
    fn a_void_holds_for_every_decision_not_decided_later() {
        let at = |s: i64| {
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(s).expect("ts"),
            ))
        };
        let decided = Decision {
            decided_at: at(1_000),
            reason: Some("CAB-1".into()),
            ..decision(Verdict::Approved, "aaa")
        };
        let void = VoidedDecision {
            generation: Some(3),
            digest: Some("aaa".into()),
            decided_at: at(1_000),
            field_managers: vec!["patchloop-approve:alice".to_owned()],
            reason: "the scope changed".into(),
        };
        assert!(void_holds(&void, Some(&decided), Some(3)));
        // Edits that are not a new decision, whoever writes them and under
        // whichever field manager (the managers are recorded, not
        // compared): the reason, a later generation.
        let reworded = Decision {
            reason: Some("CAB-1, reworded by kubectl edit".into()),
            ..decided.clone()
        };
        assert!(void_holds(&void, Some(&reworded), Some(4)));
        // An older decision put back, one with no time, one for another
        // digest that is no later: still void.
        let older = Decision {
            decided_at: at(500),
            ..decision(Verdict::Approved, "bbb")
        };
        assert!(void_holds(&void, Some(&older), Some(5)));
        let undated = Decision {
            decided_at: None,
            ..decided.clone()
        };
        assert!(void_holds(&void, Some(&undated), Some(4)));
        // A new decision, decided later: it counts on its own.
        let renewed = Decision {
            decided_at: at(2_000),
            ..decided.clone()
        };
        assert!(!void_holds(&void, Some(&renewed), Some(4)));
        assert!(!void_holds(&void, None, Some(3)));
        // A void recorded before voids named their decision: by generation.
        let legacy = VoidedDecision {
            digest: None,
            decided_at: None,
            field_managers: vec![],
            ..void
        };
        assert!(void_holds(&legacy, Some(&renewed), Some(3)));
        assert!(!void_holds(&legacy, Some(&decided), Some(4)));
    }

    #[test]
    fn a_stale_decision_says_what_changed_and_never_echoes_a_non_digest() {
        let decided = Scope {
            digest: "a".repeat(64),
            build_inputs_digest: "inputs-1".into(),
            ..Scope::default()
        };
        let edited = Scope {
            digest: "b".repeat(64),
            build_inputs_digest: "inputs-2".into(),
            ..Scope::default()
        };
        let refixed = Scope {
            digest: "c".repeat(64),
            build_inputs_digest: "inputs-1".into(),
            ..Scope::default()
        };
        let d = decision(Verdict::Approved, &decided.digest);
        let p = PersonDecision {
            decided_scope: Some(&decided),
            ..person(Some(&d))
        };
        let a = approval(Some(TemplateApproval::Required), false, &p, &edited);
        assert!(
            matches!(&a, Approval::Awaiting(w) if w.contains("build inputs") && w.contains("aaaaaaaaaaaa")),
            "{a:?}"
        );
        let a = approval(Some(TemplateApproval::Required), false, &p, &refixed);
        assert!(
            matches!(&a, Approval::Awaiting(w) if w.contains("advisories or packages")),
            "{a:?}"
        );
        let junk = decision(Verdict::Approved, "$(SECRET) not a digest");
        let a = approval(
            Some(TemplateApproval::Required),
            false,
            &person(Some(&junk)),
            &edited,
        );
        assert!(
            matches!(&a, Approval::Awaiting(w) if !w.contains("SECRET") && w.contains("not a scope digest")),
            "{a:?}"
        );
    }

    fn inputs<'a>(build: &'a serde_json::Value, test: &'a serde_json::Value) -> BuildInputs<'a> {
        BuildInputs {
            platform: "Debian:12",
            image: "registry.example/base:1",
            build_job_template: Some(build),
            test_job_template: Some(test),
            base_revision: 1,
            base_image: "registry.example/base:1",
        }
    }

    #[test]
    fn every_build_input_changes_the_digest_and_key_order_does_not() {
        let build = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "builder:1"}]}}}});
        let test = serde_json::json!({"spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"a": "1", "b": "2"}}}}});
        let base = inputs(&build, &test);
        let d = base.digest();
        assert_eq!(d.len(), 64);
        let reordered: serde_json::Value = serde_json::from_str(
            r#"{"spec": {"template": {"metadata": {"labels": {"b": "2", "a": "1"}}}, "backoffLimit": 0}}"#,
        )
        .expect("json");
        assert_eq!(inputs(&build, &reordered).digest(), d);
        let build2 = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "builder:2"}]}}}});
        let test2 = serde_json::json!({"spec": {"backoffLimit": 1, "template": {"metadata": {"labels": {"a": "1", "b": "2"}}}}});
        let changed = [
            BuildInputs {
                platform: "Debian:13",
                ..base
            },
            BuildInputs {
                image: "registry.example/base:2",
                ..base
            },
            BuildInputs {
                build_job_template: Some(&build2),
                ..base
            },
            BuildInputs {
                build_job_template: None,
                ..base
            },
            BuildInputs {
                test_job_template: Some(&test2),
                ..base
            },
            BuildInputs {
                test_job_template: None,
                ..base
            },
            BuildInputs {
                base_revision: 2,
                ..base
            },
            BuildInputs {
                base_image: "registry.example/base@sha256:00",
                ..base
            },
        ];
        let mut seen = BTreeSet::from([d.clone()]);
        for c in changed {
            assert!(seen.insert(c.digest()), "{c:?} collides");
        }
        // The scope digest moves with the inputs, a kept scope too.
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let kept = rebind(&s, &base);
        assert_eq!(kept.digest, digest(&s.advisories, &s.packages, &d));
        assert_eq!(
            (&kept.advisories, &kept.packages),
            (&s.advisories, &s.packages)
        );
        assert_ne!(rebind(&s, &inputs(&build2, &test)).digest, kept.digest);
        assert_ne!(
            digest(&s.advisories, &s.packages, &d),
            digest(&s.advisories, &s.packages, &inputs(&build2, &test).digest())
        );
    }

    #[test]
    fn retention_keeps_the_newest_closed_requests_and_every_publication() {
        let closed = |name, published| Closed { name, published };
        let list = [
            closed("a", false),
            closed("b", true),
            closed("c", false),
            closed("d", false),
            closed("e", true),
            closed("f", false),
        ];
        assert_eq!(to_retire(&list, 2), ["a", "c"]);
        assert_eq!(to_retire(&list, 1), ["a", "c", "d"]);
        // At least the newest stays.
        assert_eq!(to_retire(&list, 0), ["a", "c", "d"]);
        assert!(to_retire(&list, 4).is_empty());
        assert!(to_retire(&list, 10).is_empty());
        assert!(to_retire(&[], 1).is_empty());
    }

    #[test]
    fn only_digest_references_are_images_a_result_may_name() {
        let hex64 = "0123456789abcdef".repeat(4);
        for good in [
            format!("registry.example/golden/base@sha256:{hex64}"),
            format!("localhost:5000/a/b-c__d.e@sha256:{hex64}"),
            format!("base@sha256:{hex64}"),
            format!("registry.example.com/golden/base:r2@sha256:{hex64}"),
            format!("[::1]:5000/base@sha256:{hex64}"),
        ] {
            assert!(is_digest_reference(&good), "{good}");
        }
        for bad in [
            "registry.example/golden/base:2".to_owned(),
            "registry.example/golden/base".to_owned(),
            format!("registry.example/golden/base@sha256:{}", &hex64[..63]),
            format!(
                "registry.example/golden/base@sha256:{}",
                hex64.to_uppercase()
            ),
            format!("registry.example/golden/base@sha512:{hex64}{hex64}"),
            format!("Registry/UPPER@sha256:{hex64}"),
            format!("registry.example/golden/base@sha256:{hex64}\n"),
            format!("$(SECRET)@sha256:{hex64}"),
            format!("-x/base@sha256:{hex64}"),
            format!("{}/b@sha256:{hex64}", "a".repeat(260)),
            "registry.example/golden/base@sha256:2222".to_owned(),
        ] {
            assert!(!is_digest_reference(&bad), "{bad}");
        }
    }

    #[test]
    fn results_need_the_nonce_a_time_after_the_build_and_a_digest() {
        let nonce = "5f1d";
        let hash = nonce_hash(nonce);
        let job = Timestamp::from_second(1_000).expect("ts");
        let image = format!("r.example/base@sha256:{}", "ab".repeat(32));
        let good = ResultFacts {
            name: "changerequest-base-x",
            created: Some(job),
            nonce: Some(nonce),
            image: Some(&image),
            generation: Some(1),
            packages: &[],
        };
        assert_eq!(check_result(&good, Some(&hash), Some(job)), Ok(()));
        let fail = |f: ResultFacts<'_>, h: Option<&str>, j: Option<Timestamp>| {
            check_result(&f, h, j).expect_err("refused")
        };
        let why = fail(
            ResultFacts {
                nonce: Some("guess"),
                ..good
            },
            Some(&hash),
            Some(job),
        );
        assert!(
            why.contains("spec.nonce") && !why.contains("guess"),
            "{why}"
        );
        // The hash itself is not the nonce.
        let why = fail(
            ResultFacts {
                nonce: Some(&hash),
                ..good
            },
            Some(&hash),
            Some(job),
        );
        assert!(why.contains("spec.nonce"), "{why}");
        let why = fail(
            ResultFacts {
                nonce: None,
                ..good
            },
            Some(&hash),
            Some(job),
        );
        assert!(why.contains("spec.nonce"), "{why}");
        // No nonce issued yet: nothing matches.
        fail(good, None, Some(job));
        let early = Timestamp::from_second(999).expect("ts");
        let why = fail(
            ResultFacts {
                created: Some(early),
                ..good
            },
            Some(&hash),
            Some(job),
        );
        assert!(why.contains("before the build Job"), "{why}");
        fail(good, Some(&hash), None);
        let why = fail(
            ResultFacts {
                image: Some("r.example/base:latest"),
                ..good
            },
            Some(&hash),
            Some(job),
        );
        assert!(
            why.contains("digest reference") && !why.contains("latest"),
            "{why}"
        );
        let why = fail(
            ResultFacts {
                image: None,
                ..good
            },
            Some(&hash),
            Some(job),
        );
        assert!(why.contains("spec.image"), "{why}");
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
            template: TemplateSeen::Bound,
            published: false,
            revision: (1, Some(1)),
            needed: scope,
            approval,
            build,
            build_unrecorded: None,
            output: &BuildOutput::Absent,
            pin: Pin::Unpinned,
            inputs_changed: false,
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

        // A valid result is pinned first, then tested.
        let valid = BuildOutput::Valid;
        let mut o = observed(Some(Phase::Building), None, &waiting, &done, &absent);
        o.output = &valid;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Building, Act::Pin));
        o.pin = Pin::Intact;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Testing, Act::Test));

        let mut o = observed(Some(Phase::Testing), None, &waiting, &done, &done);
        o.pin = Pin::Intact;
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
        o.pin = Pin::Intact;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.reason), (Phase::Failed, "TestFailed"));

        let problems = ["libc6 2.36-9+deb12u2 < 2.36-9+deb12u3".to_owned()];
        let mut o = observed(Some(Phase::Testing), None, &waiting, &done, &done);
        o.pin = Pin::Intact;
        o.checks = Some(&problems);
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.reason), (Phase::Failed, "NotPublishable"));

        // Nothing pinned before the test: nothing to publish.
        let running = JobState::Running;
        let o = observed(Some(Phase::Testing), None, &waiting, &done, &running);
        assert_eq!(next(&o).map(|s| s.reason), Some("NoBuildResult"));
    }

    #[test]
    fn a_result_changed_after_pinning_or_an_edited_template_is_never_published() {
        let waiting = Approval::Awaiting("x".into());
        let done = JobState::Succeeded(Some(Timestamp::UNIX_EPOCH));
        let running = JobState::Running;
        for (phase, test) in [
            (Phase::Building, &JobState::Absent),
            (Phase::Testing, &running),
            (Phase::Testing, &done),
        ] {
            let mut o = observed(Some(phase), None, &waiting, &done, test);
            o.pin = Pin::Changed;
            o.checks = Some(&[]);
            let st = next(&o).expect("step");
            assert_eq!(
                (st.phase, st.reason, st.act),
                (Phase::Failed, "ResultChanged", Act::Nothing)
            );
            let mut o = observed(Some(phase), None, &waiting, &done, test);
            o.pin = Pin::Intact;
            o.inputs_changed = true;
            o.checks = Some(&[]);
            let st = next(&o).expect("step");
            assert_eq!(
                (st.phase, st.reason, st.act),
                (Phase::Failed, "TemplateEdited", Act::Nothing)
            );
        }
    }

    #[test]
    fn an_invalid_result_is_waited_on_then_fails_saying_why() {
        let waiting = Approval::Awaiting("x".into());
        let at = Timestamp::from_second(1_000).expect("ts");
        let done = JobState::Succeeded(Some(at));
        let absent = JobState::Absent;
        let invalid = BuildOutput::Invalid("spec.image is not a digest reference".into());
        let mut o = observed(Some(Phase::Building), None, &waiting, &done, &absent);
        o.output = &invalid;
        o.now = at;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Building, Act::Nothing));
        assert!(st.message.contains("digest reference"), "{}", st.message);
        o.now = at.checked_add(RESULT_GRACE).expect("ts");
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.reason), (Phase::Failed, "InvalidBuildResult"));
        assert!(st.message.contains("digest reference"), "{}", st.message);
    }

    #[test]
    fn a_build_job_the_request_did_not_record_is_discarded_never_adopted() {
        // Before Building nothing recorded a build Job: whatever runs under
        // its name (a crash before the status write, a forgery) goes, and
        // the phase stays, whatever the approval says.
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let absent = JobState::Absent;
        for approval in [
            Approval::Approved(Approver::Person),
            Approval::Awaiting("changed".into()),
        ] {
            for phase in [Phase::AwaitingApproval, Phase::Approved] {
                let mut o = observed(Some(phase), Some(&s), &approval, &absent, &absent);
                let created = Timestamp::from_second(1_000).expect("ts");
                o.build_unrecorded = Some(created);
                // Held for a moment (not adopted), then deleted.
                o.now = created;
                let st = next(&o).expect("step");
                assert_eq!(
                    (st.phase, st.reason, st.act),
                    (phase, "BuildJobUnrecorded", Act::Nothing)
                );
                assert_eq!(st.wake, created.checked_add(UNRECORDED_HOLD).ok());
                o.now = created.checked_add(UNRECORDED_HOLD).expect("ts");
                let st = next(&o).expect("step");
                assert_eq!(
                    (st.phase, st.reason, st.act),
                    (phase, "BuildJobUnrecorded", Act::DiscardBuild)
                );
            }
        }
        // Building, and the Job under the name is not the recorded one (the
        // recorded one is gone): even with a valid result, it goes.
        let waiting = Approval::Awaiting("x".into());
        let valid = BuildOutput::Valid;
        let mut o = observed(Some(Phase::Building), None, &waiting, &absent, &absent);
        o.build_unrecorded = Some(Timestamp::UNIX_EPOCH);
        o.now = Timestamp::UNIX_EPOCH
            .checked_add(UNRECORDED_HOLD)
            .expect("ts");
        o.output = &valid;
        let st = next(&o).expect("step");
        assert_eq!((st.phase, st.act), (Phase::Building, Act::DiscardBuild));
        // Once gone, a fresh one is created.
        let o = observed(Some(Phase::Building), None, &waiting, &absent, &absent);
        assert_eq!(next(&o).map(|s| s.act), Some(Act::Build));
    }

    #[test]
    fn a_created_build_job_is_adopted_only_when_new_or_recorded() {
        // The engine decides the build; what the create found decides the
        // step, never the controller.
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let approved = Approval::Approved(Approver::Person);
        let absent = JobState::Absent;
        for phase in [Phase::Approved, Phase::Building] {
            let o = observed(Some(phase), Some(&s), &approved, &absent, &absent);
            let planned = next(&o).expect("step");
            assert_eq!((planned.phase, planned.act), (Phase::Building, Act::Build));
            for found in [Creation::New, Creation::Adopted] {
                let st = created(Some(phase), planned.clone(), found, o.now);
                assert_eq!(st, planned);
            }
            // Under the name, a Job the request did not record: the phase
            // stays, the Job is held, then discarded.
            let at = Timestamp::from_second(1_000).expect("ts");
            let st = created(Some(phase), planned.clone(), Creation::Unrecorded(at), at);
            assert_eq!(
                (st.phase, st.reason, st.act),
                (phase, "BuildJobUnrecorded", Act::Nothing)
            );
            assert_eq!(st.wake, at.checked_add(UNRECORDED_HOLD).ok());
            let later = at.checked_add(UNRECORDED_HOLD).expect("ts");
            let st = created(
                Some(phase),
                planned.clone(),
                Creation::Unrecorded(at),
                later,
            );
            assert_eq!((st.phase, st.act), (phase, Act::DiscardBuild));
        }
    }

    #[test]
    fn a_job_name_held_by_another_owner_or_an_unusable_template_fails() {
        let waiting = Approval::Awaiting("x".into());
        let absent = JobState::Absent;
        let build = next(&observed(
            Some(Phase::Building),
            None,
            &waiting,
            &absent,
            &absent,
        ))
        .expect("step");
        let done = JobState::Succeeded(Some(Timestamp::UNIX_EPOCH));
        let mut o = observed(Some(Phase::Testing), None, &waiting, &done, &absent);
        o.pin = Pin::Intact;
        let test = next(&o).expect("step");
        assert_eq!(test.act, Act::Test);
        for (planned, conflict) in [(build, "BuildJobConflict"), (test, "TestJobConflict")] {
            let st = created(
                Some(planned.phase),
                planned.clone(),
                Creation::Taken("a Job named x-build already exists".into()),
                o.now,
            );
            assert_eq!(
                (st.phase, st.reason, st.act, st.message.as_str()),
                (
                    Phase::Failed,
                    conflict,
                    Act::Nothing,
                    "a Job named x-build already exists"
                )
            );
            let why = "Template spec.buildJobTemplate: missing";
            let st = created(
                Some(planned.phase),
                planned,
                Creation::Invalid(why.into()),
                o.now,
            );
            assert_eq!(
                (st.phase, st.reason, st.message.as_str()),
                (Phase::Failed, "InvalidJobTemplate", why)
            );
        }
    }

    #[test]
    fn a_result_not_from_the_build_pod_fails_at_once() {
        let waiting = Approval::Awaiting("x".into());
        let at = Timestamp::from_second(1_000).expect("ts");
        let done = JobState::Succeeded(Some(at));
        let absent = JobState::Absent;
        let swapped = BuildOutput::NotFromBuild("Inventory changerequest-x is not what the build Pod reported: spec.image's digest sha256:eeeeeeeeeeee is not the reported sha256:bbbbbbbbbbbb".into());
        let mut o = observed(Some(Phase::Building), None, &waiting, &done, &absent);
        o.output = &swapped;
        o.now = at;
        let st = next(&o).expect("step");
        assert_eq!(
            (st.phase, st.reason, st.act),
            (Phase::Failed, "ResultNotFromBuild", Act::Nothing)
        );
        assert!(st.message.contains("build Pod reported"), "{}", st.message);
    }

    #[test]
    fn the_packages_digest_is_of_sorted_lines_as_written() {
        let lines = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let a = packages_digest(&lines(&[
            "libc6 2.36-9 glibc",
            "bash 5.2.15-2+b8 bash 5.2.15-2",
        ]))
        .expect("digest");
        // What `printf '%s\n' … | LC_ALL=C sort | sha256sum` prints.
        let text = "bash 5.2.15-2+b8 bash 5.2.15-2\nlibc6 2.36-9 glibc\n";
        assert_eq!(
            a,
            format!("sha256:{}", hex(&Sha256::digest(text.as_bytes())))
        );
        assert_eq!(
            packages_digest(&lines(&[
                "bash 5.2.15-2+b8 bash 5.2.15-2",
                "libc6 2.36-9 glibc"
            ])),
            Some(a.clone())
        );
        // Bytes, not a locale: upper case sorts first.
        assert_eq!(
            packages_digest(&lines(&["b 1", "B 1"])),
            Some(format!("sha256:{}", hex(&Sha256::digest(b"B 1\nb 1\n"))))
        );
        assert_ne!(
            packages_digest(&lines(&["libc6 2.36-9 glibc"])),
            Some(a.clone())
        );
        assert_eq!(packages_digest(&lines(&["a 1\nb 2"])), None);
        assert_eq!(
            packages_digest(&[]),
            Some(format!("sha256:{}", hex(&Sha256::digest(b""))))
        );
    }

    #[test]
    fn the_build_report_is_the_last_line_of_the_termination_message() {
        let (i, p) = (
            format!("sha256:{}", "b".repeat(64)),
            format!("sha256:{}", "c".repeat(64)),
        );
        let report = BuildReport {
            image: i.clone(),
            packages: p.clone(),
        };
        let line = result_line(&report);
        assert_eq!(line, format!("result image={i} packages={p}"));
        let msgs = |m: &[&str]| m.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ok = msgs(&[&format!("built r2\n{line}\n\n")]);
        assert_eq!(build_report(Some(&ok)), Ok(report.clone()));
        // A sidecar without a report, or reporting the same: one report.
        let ok = msgs(&["", &line, &line]);
        assert_eq!(build_report(Some(&ok)), Ok(report.clone()));
        for bad in [
            format!("{line}\nmore output"),
            format!("result image={i}"),
            format!("result image={i} packages={p} extra"),
            format!("result image=sha256:{} packages={p}", "B".repeat(64)),
            format!("result image={} packages={p}", &i[..70]),
            format!("result packages={p} image={i}"),
        ] {
            assert!(build_report(Some(&msgs(&[&bad]))).is_err(), "{bad}");
        }
        let other = result_line(&BuildReport {
            image: p.clone(),
            packages: i.clone(),
        });
        assert_eq!(
            build_report(Some(&msgs(&[&line, &other]))),
            Err("the build Pod's containers report different results")
        );
        assert!(build_report(None).is_err());
        assert!(build_report(Some(&[])).is_err());
    }

    #[test]
    fn a_result_must_be_the_unchanged_one_the_build_pod_reported() {
        let packages = vec![OPENSSH.to_owned(), "bash 5.2".to_owned()];
        let digest = format!("sha256:{}", "ab".repeat(32));
        let image = format!("r.example/base@{digest}");
        let facts = ResultFacts {
            name: "changerequest-base-x",
            created: None,
            nonce: None,
            image: Some(&image),
            generation: Some(1),
            packages: &packages,
        };
        let report = BuildReport {
            image: digest.clone(),
            packages: packages_digest(&packages).expect("digest"),
        };
        assert_eq!(check_origin(&facts, Ok(&report)), Ok(()));
        // Patched after creation: a swap, whatever it holds now.
        let why = check_origin(
            &ResultFacts {
                generation: Some(2),
                ..facts
            },
            Ok(&report),
        )
        .expect_err("refused");
        assert!(why.contains("metadata.generation 2"), "{why}");
        // Another image, other packages: both named, by digest only.
        let evil = format!("registry.evil.example/backdoor@sha256:{}", "e".repeat(64));
        let more = vec![OPENSSH.to_owned(), "backdoor 1.0".to_owned()];
        let why = check_origin(
            &ResultFacts {
                image: Some(&evil),
                packages: &more,
                ..facts
            },
            Ok(&report),
        )
        .expect_err("refused");
        assert!(
            why.contains("spec.image's digest sha256:eeeeeeeeeeee")
                && why.contains("reported sha256:abababababab")
                && why.contains("spec.packages digest")
                && !why.contains("evil")
                && !why.contains("backdoor"),
            "{why}"
        );
        let why = check_origin(
            &facts,
            Err("no succeeded Pod of the recorded build Job was found"),
        )
        .expect_err("refused");
        assert!(why.contains("no succeeded Pod"), "{why}");
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
        o.template = TemplateSeen::Absent;
        assert_eq!(next(&o).map(|s| s.reason), Some("TemplateDeleted"));
    }

    #[test]
    fn a_request_is_bound_to_the_template_uid_it_recorded() {
        assert_eq!(template_seen(None, Some(Some("t1"))), TemplateSeen::Bound);
        assert_eq!(
            template_seen(Some("t1"), Some(Some("t1"))),
            TemplateSeen::Bound
        );
        assert_eq!(
            template_seen(Some("t1"), Some(Some("t2"))),
            TemplateSeen::Other
        );
        assert_eq!(template_seen(Some("t1"), Some(None)), TemplateSeen::Other);
        assert_eq!(template_seen(Some("t1"), None), TemplateSeen::Absent);
        assert_eq!(template_seen(None, None), TemplateSeen::Absent);
        // Repointed (or recreated) in any open phase: failed, naming the field.
        let s = scope_of(&[("bash", "5.2")], &["DSA-1"]);
        let approved = Approval::Approved(Approver::Person);
        let (absent, running) = (JobState::Absent, JobState::Running);
        for (phase, build) in [
            (None, &absent),
            (Some(Phase::AwaitingApproval), &absent),
            (Some(Phase::Approved), &absent),
            (Some(Phase::Building), &running),
            (Some(Phase::Testing), &absent),
        ] {
            let mut o = observed(phase, Some(&s), &approved, build, &absent);
            o.template = TemplateSeen::Other;
            let st = next(&o).expect("step");
            assert_eq!(
                (st.phase, st.reason, st.act),
                (Phase::Failed, "TemplateMismatch", Act::Nothing)
            );
            assert!(st.message.contains("spec.template"), "{}", st.message);
        }
        // Closed: ignored.
        let mut o = observed(Some(Phase::Rejected), Some(&s), &approved, &absent, &absent);
        o.template = TemplateSeen::Other;
        assert_eq!(next(&o), None);
    }
}
