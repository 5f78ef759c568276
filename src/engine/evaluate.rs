//! Policy evaluation: (the policies matching an object, its inventory, the
//! advisories, the KEV overlay, the exceptions covering it, now) → findings,
//! one compliance verdict, counts, and the next instant the result can change
//! by itself.
//!
//! Rules (product.md, and the decisions written in the README):
//! - Compliance merges every matching policy to the strictest deadline; each
//!   finding names the policy that set its due date.
//! - Deadlines run from the advisory's publication (its modification time
//!   when a record has no publication time); for known-exploited advisories
//!   the policy's `knownExploited` deadline also runs from the KEV `dateAdded`
//!   (00:00 UTC), and the earlier due date wins.
//! - Remediation follows exactly one policy: the highest `priority`; a tie is
//!   a conflict and nothing is remediated.
//! - A finding is, in this order: NoFixYet (no fixed version published),
//!   Blocked (a matching policy rejects the fix), Exempt (an active exception
//!   names the advisory or one of its CVEs), Overdue (due date passed) or
//!   Pending.
//! - The verdict: Unknown (unknown platform, no advisory data for it, no
//!   inventory, a live inventory older than the strictest `inventoryMaxAge`,
//!   or an affected package whose version cannot be read), then Overdue,
//!   Pending, Exempt, Compliant. No-fix and blocked findings never make an
//!   object non-compliant: there is nothing to install.

use foldhash::HashMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use super::advisory::{Advisory, AdvisoryDb, EcosystemIndex, PassThrough, probe_hash};
use super::inventory::InstalledPackage;
use super::version::{Ecosystem, parse_platform};
use crate::api::common::{
    AffectedPackage, ComplianceState, ComplianceSummary, Duration, Finding, FindingState, Severity,
    time,
};
use crate::api::exception::PatchExceptionSpec;
use crate::api::policy::{DEFAULT_INVENTORY_MAX_AGE, Deadlines, EmergencyRule, PatchPolicySpec};

/// How many actionable findings a status lists; the rest are counted.
pub const STATUS_FINDINGS_CAP: usize = 100;

/// A policy that matches the object.
#[derive(Debug, Clone, Copy)]
pub struct PolicyRef<'a> {
    /// The PatchPolicy's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a PatchPolicySpec,
}

impl<'a> PolicyRef<'a> {
    /// The reference to a PatchPolicy object.
    pub fn of(policy: &'a crate::api::PatchPolicy) -> Self {
        PolicyRef {
            name: policy.metadata.name.as_deref().unwrap_or_default(),
            spec: &policy.spec,
        }
    }
}

/// An exception whose selector matches the object.
#[derive(Debug, Clone, Copy)]
pub struct ExceptionRef<'a> {
    /// The PatchException's name.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a PatchExceptionSpec,
    /// Its creation time (`maxDuration` counts from here).
    pub created: Option<Timestamp>,
}

impl<'a> ExceptionRef<'a> {
    /// The reference to a PatchException object.
    pub fn of(exception: &'a crate::api::PatchException) -> Self {
        ExceptionRef {
            name: exception.metadata.name.as_deref().unwrap_or_default(),
            spec: &exception.spec,
            created: exception.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// The inventory an evaluation judges.
#[derive(Debug, Clone, Copy)]
pub struct InventoryInput<'a> {
    /// The installed packages.
    pub packages: &'a [InstalledPackage],
    /// When the inventory was written (server time for live machines).
    pub collected_at: Timestamp,
    /// `true` for a live machine (ages with `inventoryMaxAge`); `false` for an
    /// image (a Template revision or a build result), which never ages.
    pub ages: bool,
    /// The object has no inventory of its own and is judged by its template
    /// revision's inventory.
    pub provisional: bool,
}

/// Which findings an evaluation materialises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Detail {
    /// Every finding, no-fix and blocked ones included (`patchloop evaluate`).
    #[default]
    All,
    /// Only what a status lists (Pending, Overdue, Exempt); no-fix and
    /// blocked findings are counted, not built. The controller's mode.
    Actionable,
}

/// Everything an evaluation depends on.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Which findings to materialise.
    pub detail: Detail,
    /// The object's platform (`Debian:12`).
    pub platform: &'a str,
    /// The policies matching the object.
    pub policies: &'a [PolicyRef<'a>],
    /// The exceptions matching the object.
    pub exceptions: &'a [ExceptionRef<'a>],
    /// The inventory, if any.
    pub inventory: Option<InventoryInput<'a>>,
    /// The advisory database.
    pub advisories: &'a AdvisoryDb,
    /// Now.
    pub now: Timestamp,
}

/// Why the verdict is Unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownCause {
    /// The platform string names no known distribution and release.
    UnknownPlatform(String),
    /// No advisory data is loaded for the platform's ecosystem.
    NoAdvisoryData(String),
    /// The object has no inventory.
    NoInventory,
    /// Its Inventory cannot be read (the message says where).
    InvalidInventory(String),
    /// The live inventory is older than the strictest `inventoryMaxAge`.
    StaleInventory {
        /// When it was written.
        written: Timestamp,
        /// The limit.
        max_age: SignedDuration,
    },
    /// Affected packages whose installed version cannot be read.
    InvalidVersions(Vec<String>),
}

impl UnknownCause {
    /// The CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            UnknownCause::UnknownPlatform(_) => "UnknownPlatform",
            UnknownCause::NoAdvisoryData(_) => "NoAdvisoryData",
            UnknownCause::NoInventory => "NoInventory",
            UnknownCause::InvalidInventory(_) => "InvalidInventory",
            UnknownCause::StaleInventory { .. } => "InventoryStale",
            UnknownCause::InvalidVersions(_) => "InvalidVersions",
        }
    }

    /// A sentence a person can act on.
    pub fn message(&self) -> String {
        match self {
            UnknownCause::UnknownPlatform(e) => format!("spec.platform: {e}"),
            UnknownCause::NoAdvisoryData(eco) => format!(
                "no advisory data is loaded for {eco}: add or fix an AdvisoryFeed covering it"
            ),
            UnknownCause::NoInventory => {
                "no Inventory reports this object yet: run a reporter (patchloop inventory)".into()
            }
            UnknownCause::InvalidInventory(e) => {
                format!("the Inventory cannot be read: {e}")
            }
            UnknownCause::StaleInventory { written, max_age } => format!(
                "the inventory was written at {written}, longer ago than inventoryMaxAge ({}): the reporter may be down",
                human(*max_age)
            ),
            UnknownCause::InvalidVersions(list) => format!(
                "installed versions that cannot be read for affected packages: {}",
                list.join("; ")
            ),
        }
    }
}

/// Which policy drives remediation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemediationChoice {
    /// No policy matches.
    None,
    /// This policy (the highest priority).
    Policy(String),
    /// Several policies share the highest priority: nothing is remediated.
    Conflict(Vec<String>),
}

/// What an exception does for this object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionOutcome {
    /// The exception.
    pub name: String,
    /// When it stops counting (`expires`, capped by `maxDuration`).
    pub effective_expires: Timestamp,
    /// The policy whose `exceptions.maxDuration` capped it.
    pub capped_by: Option<String>,
    /// True while `now < effective_expires`.
    pub active: bool,
    /// Findings it exempts now.
    pub exempts: usize,
}

/// One finding with what the engine knows beyond its status form.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluatedFinding {
    /// The status form.
    pub finding: Finding,
    /// The advisory.
    pub advisory: Arc<Advisory>,
    /// An emergency by the driving policy's `emergency` rule.
    pub emergency: bool,
    /// The fix may be installed now (soak over, or an emergency).
    pub installable: bool,
}

/// Counts of findings by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Pending findings.
    pub pending: usize,
    /// Overdue findings.
    pub overdue: usize,
    /// Exempt findings.
    pub exempt: usize,
    /// Blocked findings.
    pub blocked: usize,
    /// Findings without a fix.
    pub no_fix_yet: usize,
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The verdict.
    pub state: ComplianceState,
    /// Set when the verdict is Unknown.
    pub unknown: Option<UnknownCause>,
    /// Every finding, most urgent first.
    pub findings: Vec<EvaluatedFinding>,
    /// Counts by state.
    pub counts: Counts,
    /// The earliest due date of a pending finding.
    pub next_due: Option<Timestamp>,
    /// The next instant the result can change by itself (a due date passing,
    /// a soak ending, an exception expiring, the inventory going stale).
    pub next_change: Option<Timestamp>,
    /// The policy driving remediation.
    pub remediation: RemediationChoice,
    /// What each matching exception does.
    pub exceptions: Vec<ExceptionOutcome>,
    /// Whether the inventory is fresh: `None` without inventory; always
    /// `true` for images.
    pub inventory_fresh: Option<bool>,
}

/// The one definition of an emergency, shared by remediation windows and
/// template approval: a finding whose severity the rule lists, or that is
/// known exploited when the rule says so.
pub fn is_emergency(
    rule: Option<&EmergencyRule>,
    severity: Severity,
    known_exploited: bool,
) -> bool {
    rule.is_some_and(|r| r.severities.contains(&severity) || (r.known_exploited && known_exploited))
}

/// The policy that drives remediation among those matching.
pub fn remediation_policy(policies: &[PolicyRef<'_>]) -> RemediationChoice {
    let Some(top) = policies.iter().map(|p| p.spec.priority).max() else {
        return RemediationChoice::None;
    };
    let mut winners: Vec<String> = policies
        .iter()
        .filter(|p| p.spec.priority == top)
        .map(|p| p.name.to_owned())
        .collect();
    winners.sort();
    winners.dedup();
    if winners.len() == 1 {
        RemediationChoice::Policy(winners.remove(0))
    } else {
        RemediationChoice::Conflict(winners)
    }
}

/// When an exception stops counting: its `expires`, capped by the shortest
/// valid `exceptions.maxDuration` of the matching policies, counted from the
/// exception's creation. Returns the instant and the capping policy.
pub fn effective_expiry(
    exception: &ExceptionRef<'_>,
    policies: &[PolicyRef<'_>],
) -> (Timestamp, Option<String>) {
    let expires = exception.spec.expires.0;
    let Some(created) = exception.created else {
        return (expires, None);
    };
    let mut best = (expires, None);
    for p in policies {
        let Some(max) = p
            .spec
            .exceptions
            .max_duration
            .as_ref()
            .and_then(|d| d.parse().ok())
        else {
            continue;
        };
        let Ok(cap) = created.checked_add(max) else {
            continue;
        };
        if cap < best.0 {
            best = (cap, Some(p.name.to_owned()));
        }
    }
    best
}

fn parse(d: &Duration) -> Option<SignedDuration> {
    d.parse().ok()
}

fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3_600 == 0 {
        format!("{}h", secs / 3_600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

fn kev_start(date: jiff::civil::Date) -> Option<Timestamp> {
    date.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// One policy's deadlines, parsed once per evaluation rather than once per
/// finding.
struct Terms {
    /// The policy; `None` for the built-in defaults (no policy matches).
    /// Shared: every finding whose due date it sets names it.
    policy: Option<Arc<str>>,
    /// Deadline per severity, indexed by [`severity_index`].
    deadlines: [Option<SignedDuration>; 5],
    /// `knownExploited`.
    known_exploited: Option<SignedDuration>,
}

fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Unknown => 0,
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

impl Terms {
    fn of(policy: Option<&str>, deadlines: &Deadlines, kev: Option<&Duration>) -> Self {
        let d = |s| parse(deadlines.for_severity(s));
        Terms {
            policy: policy.map(Arc::from),
            deadlines: [
                d(Severity::Unknown),
                d(Severity::Low),
                d(Severity::Medium),
                d(Severity::High),
                d(Severity::Critical),
            ],
            known_exploited: kev.and_then(parse),
        }
    }

    fn all(policies: &[PolicyRef<'_>]) -> Vec<Terms> {
        if policies.is_empty() {
            return vec![Terms::of(None, &Deadlines::default(), None)];
        }
        policies
            .iter()
            .map(|p| {
                Terms::of(
                    Some(p.name),
                    &p.spec.deadlines,
                    p.spec.known_exploited.as_ref(),
                )
            })
            .collect()
    }
}

/// The strictest due date over the policies: `(due, policy)`.
fn due_date<'t>(
    terms: &'t [Terms],
    published: Option<Timestamp>,
    severity: Severity,
    kev_added: Option<Timestamp>,
) -> Option<(Timestamp, Option<&'t Arc<str>>)> {
    let published = published?;
    let mut best: Option<(Timestamp, Option<&'t Arc<str>>)> = None;
    let mut consider = |due: Option<Timestamp>, by: Option<&'t Arc<str>>| {
        if let Some(due) = due
            && best.as_ref().is_none_or(|(b, _)| due < *b)
        {
            best = Some((due, by));
        }
    };
    for t in terms {
        consider(
            t.deadlines[severity_index(severity)].and_then(|d| published.checked_add(d).ok()),
            t.policy.as_ref(),
        );
        if let (Some(added), Some(kev)) = (kev_added, t.known_exploited) {
            consider(added.checked_add(kev).ok(), t.policy.as_ref());
        }
    }
    best
}

fn is_rejected(policies: &[PolicyRef<'_>], advisory: &Advisory) -> bool {
    policies.iter().any(|p| {
        p.spec.approval.rejected.iter().any(|r| {
            r.eq_ignore_ascii_case(&advisory.id)
                || advisory.cves.iter().any(|c| c.eq_ignore_ascii_case(r))
        })
    })
}

fn names_advisory(exception: &PatchExceptionSpec, advisory: &Advisory) -> bool {
    exception.advisories.iter().any(|a| {
        a.eq_ignore_ascii_case(&advisory.id)
            || advisory.cves.iter().any(|c| c.eq_ignore_ascii_case(a))
    })
}

fn state_rank(s: FindingState) -> u8 {
    match s {
        FindingState::Overdue => 0,
        FindingState::Pending => 1,
        FindingState::Exempt => 2,
        FindingState::Blocked => 3,
        FindingState::NoFixYet => 4,
    }
}

/// Evaluates one object in three steps: [`match_packages`] (which
/// advisories affect which installed packages: the hot path),
/// [`judge_hits`] (each finding's state under the policies and exceptions)
/// and [`verdict`].
pub fn evaluate<'a>(input: &Input<'a>) -> Evaluation {
    let now = input.now;
    let remediation = remediation_policy(input.policies);
    let driving: Option<&PolicyRef<'_>> = match &remediation {
        RemediationChoice::Policy(name) => input.policies.iter().find(|p| p.name == name),
        _ => None,
    };
    let mut exceptions = exception_outcomes(input);
    let mut evaluation = Evaluation {
        state: ComplianceState::Unknown,
        unknown: None,
        findings: Vec::new(),
        counts: Counts::default(),
        next_due: None,
        next_change: None,
        remediation,
        exceptions: Vec::new(),
        inventory_fresh: None,
    };
    let mut wake = Wake { now, next: None };
    // Unknown before any finding: the exceptions still say what they cap.
    let unknown = |mut evaluation: Evaluation,
                   cause,
                   exceptions: Vec<(ExceptionRef<'_>, ExceptionOutcome)>,
                   wake: Wake| {
        evaluation.unknown = Some(cause);
        evaluation.exceptions = exceptions.into_iter().map(|(_, o)| o).collect();
        evaluation.next_change = wake.next;
        evaluation
    };

    let platform = match parse_platform(input.platform) {
        Ok(p) => p,
        Err(e) => {
            let cause = UnknownCause::UnknownPlatform(e.to_string());
            return unknown(evaluation, cause, exceptions, wake);
        }
    };
    let Some(inventory) = input.inventory else {
        return unknown(evaluation, UnknownCause::NoInventory, exceptions, wake);
    };
    let stale = freshness(input.policies, &inventory, &mut wake);
    evaluation.inventory_fresh = Some(stale.is_none());
    let ecosystem = platform.osv_ecosystem();
    let Some(ecosystem_index) = input
        .advisories
        .ecosystem(ecosystem)
        .filter(|_| input.advisories.has_data_for(ecosystem))
    else {
        let cause = UnknownCause::NoAdvisoryData(ecosystem.to_owned());
        return unknown(evaluation, cause, exceptions, wake);
    };

    let matched = match_packages(input, platform.family, ecosystem_index, inventory.packages);
    evaluation.counts.no_fix_yet += matched.no_fix_only;
    judge_hits(
        input,
        driving,
        matched.hits,
        &mut exceptions,
        &mut wake,
        &mut evaluation,
    );
    sort_findings(&mut evaluation.findings);
    evaluation.unknown = stale.or_else(|| {
        (!matched.invalid.is_empty()).then_some(UnknownCause::InvalidVersions(matched.invalid))
    });
    evaluation.state = verdict(evaluation.unknown.as_ref(), &evaluation.counts);
    evaluation.exceptions = exceptions.into_iter().map(|(_, o)| o).collect();
    evaluation.next_change = wake.next;
    evaluation
}

/// The earliest time after now at which the evaluation would change: a
/// due date, an expiry, a soak's end or the inventory going stale.
struct Wake {
    now: Timestamp,
    next: Option<Timestamp>,
}

impl Wake {
    fn at(&mut self, t: Timestamp) {
        if t > self.now && self.next.is_none_or(|n| t < n) {
            self.next = Some(t);
        }
    }
}

/// Each matching exception with its expiry (capped by the policies) and
/// whether it is active now.
fn exception_outcomes<'a>(input: &Input<'a>) -> Vec<(ExceptionRef<'a>, ExceptionOutcome)> {
    input
        .exceptions
        .iter()
        .map(|e| {
            let (effective_expires, capped_by) = effective_expiry(e, input.policies);
            let outcome = ExceptionOutcome {
                name: e.name.to_owned(),
                effective_expires,
                capped_by,
                active: input.now < effective_expires,
                exempts: 0,
            };
            (*e, outcome)
        })
        .collect()
}

/// Whether a live inventory is older than the strictest `inventoryMaxAge`
/// of the policies (a template's inventory does not age); wakes when a
/// fresh one will go stale.
fn freshness(
    policies: &[PolicyRef<'_>],
    inventory: &InventoryInput<'_>,
    wake: &mut Wake,
) -> Option<UnknownCause> {
    if !inventory.ages {
        return None;
    }
    let max_age = policies
        .iter()
        .filter_map(|p| parse(&p.spec.inventory_max_age))
        .min()
        .or_else(|| parse(&Duration::from_static(DEFAULT_INVENTORY_MAX_AGE)))?;
    let stale_at = inventory.collected_at.checked_add(max_age).ok()?;
    if stale_at <= wake.now {
        return Some(UnknownCause::StaleInventory {
            written: inventory.collected_at,
            max_age,
        });
    }
    wake.at(stale_at);
    None
}

/// An advisory affecting installed packages, before it is judged.
struct Hit {
    advisory: Arc<Advisory>,
    severity: Severity,
    packages: Vec<AffectedPackage>,
}

/// What matching found.
struct Matched {
    /// The advisories with their affected packages.
    hits: Vec<Hit>,
    /// Advisories affecting the object with no fix for any of its packages
    /// (counted only, in [`Detail::Actionable`] mode).
    no_fix_only: usize,
    /// Packages whose version the ecosystem cannot read.
    invalid: Vec<String>,
}

/// A probe: a package (source) name and the inventory's own version string.
type ProbeKey<'p> = (&'p str, &'p Arc<str>);

/// Matches the installed packages against the ecosystem's advisories.
/// Debian and Ubuntu advisories name source packages; rpm and apk
/// advisories may name either, so both names are probed there. Binary
/// packages of one source share its (name, version): each distinct probe is
/// tested once, then attributed to every binary.
fn match_packages(
    input: &Input<'_>,
    family: Ecosystem,
    ecosystem_index: &EcosystemIndex,
    packages: &[InstalledPackage],
) -> Matched {
    // First every probe key is hashed, in a loop of its own: the names and
    // versions are small strings spread over the heap and rarely in cache,
    // and a short loop of independent iterations lets the CPU fetch many of
    // them at once, where hashing inside the grouping loop waited for each
    // miss in turn (it was the largest cost of an evaluation).
    let mut keyed: Vec<(u64, ProbeKey<'_>, &InstalledPackage)> = Vec::with_capacity(packages.len());
    // The memo's hash, so that each probe below hashes nothing again.
    let hash = |(name, version): ProbeKey<'_>| probe_hash(name, version);
    for pkg in packages {
        let source = (pkg.source_name(), pkg.shared_source_version());
        keyed.push((hash(source), source, pkg));
        if family != Ecosystem::Dpkg && pkg.base_name() != pkg.source_name() {
            let base = (pkg.base_name(), &pkg.version);
            keyed.push((hash(base), base, pkg));
        }
    }
    // Then packages are grouped by that hash; keys that hash alike are
    // told apart by their strings (in cache by now) through `same_hash`.
    let mut probe_keys: Vec<(u64, ProbeKey<'_>)> = Vec::new();
    let mut same_hash: Vec<Option<usize>> = Vec::new();
    let mut by_hash: std::collections::HashMap<u64, usize, PassThrough> =
        std::collections::HashMap::with_capacity_and_hasher(keyed.len(), PassThrough);
    let mut members: Vec<(usize, &InstalledPackage)> = Vec::with_capacity(keyed.len());
    for (hash, probe, pkg) in keyed {
        let fresh = probe_keys.len();
        let key = match by_hash.entry(hash) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(fresh);
                fresh
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                let mut key = *slot.get();
                loop {
                    if probe_keys[key].1 == probe {
                        break key;
                    }
                    match same_hash[key] {
                        Some(next) => key = next,
                        None => {
                            same_hash[key] = Some(fresh);
                            break fresh;
                        }
                    }
                }
            }
        };
        if key == fresh {
            probe_keys.push((hash, probe));
            same_hash.push(None);
        }
        members.push((key, pkg));
    }
    members.sort_unstable_by_key(|(key, _)| *key);

    let only_actionable = input.detail == Detail::Actionable;
    // Advisories are told apart by their ordinal in the database: an integer
    // key, read from the probe result without touching the advisory.
    let mut hit_index: HashMap<u32, usize> = HashMap::default();
    let mut hits: Vec<Hit> = Vec::new();
    let mut without_fix: Vec<u32> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    for group in members.chunk_by(|a, b| a.0 == b.0) {
        let (hash, (name, version)) = probe_keys[group[0].0];
        let matches =
            match input
                .advisories
                .probe_hashed(ecosystem_index, family, hash, name, version)
            {
                Ok(m) => m,
                Err(e) => {
                    invalid.extend(group.iter().map(|(_, pkg)| format!("{}: {e}", pkg.name)));
                    continue;
                }
            };
        for m in matches.iter() {
            // Status needs no-fix findings as a count only.
            if only_actionable && m.fixed.is_none() {
                without_fix.push(m.ordinal);
                continue;
            }
            let next = hits.len();
            let at = *hit_index.entry(m.ordinal).or_insert(next);
            if at == next {
                hits.push(Hit {
                    advisory: Arc::clone(&m.advisory),
                    severity: m.severity,
                    packages: Vec::with_capacity(group.len()),
                });
            }
            let hit = &mut hits[at];
            hit.severity = hit.severity.max(m.severity);
            for (_, pkg) in group {
                if hit.packages.iter().any(|p| p.name == pkg.name) {
                    continue;
                }
                hit.packages.push(AffectedPackage {
                    name: Arc::clone(&pkg.name),
                    installed: Arc::clone(version),
                    fixed: m.fixed.clone(),
                    // The probed name is the package's source but for the
                    // `:ARCH`-less base name of an rpm or apk package.
                    source: (name != &*pkg.name).then(|| match &pkg.source {
                        Some(source) if **source == *name => Arc::clone(source),
                        _ => Arc::from(name),
                    }),
                });
            }
        }
    }
    without_fix.sort_unstable();
    without_fix.dedup();
    invalid.sort();
    invalid.dedup();
    Matched {
        no_fix_only: without_fix
            .iter()
            .filter(|ordinal| !hit_index.contains_key(*ordinal))
            .count(),
        hits,
        invalid,
    }
}

/// Judges each hit: its due date (the strictest policy), whether it is
/// an emergency, rejected, exempted or installable yet, and so its state;
/// counts every state and builds the findings the detail level asks for.
fn judge_hits(
    input: &Input<'_>,
    driving: Option<&PolicyRef<'_>>,
    hits: Vec<Hit>,
    exceptions: &mut [(ExceptionRef<'_>, ExceptionOutcome)],
    wake: &mut Wake,
    evaluation: &mut Evaluation,
) {
    let now = input.now;
    let only_actionable = input.detail == Detail::Actionable;
    let soak = |p: &PolicyRef<'_>| p.spec.approval.approve_after.as_ref().and_then(parse);
    let soak_time = match driving {
        Some(p) => soak(p),
        None => input.policies.iter().filter_map(soak).max(),
    };
    let emergency_rule = driving.and_then(|p| p.spec.emergency.as_ref());
    let terms = Terms::all(input.policies);

    for hit in hits {
        let advisory = hit.advisory;
        let kev = input.advisories.known_exploited(&advisory);
        let known_exploited = kev.is_some();
        let kev_added = kev.and_then(|k| kev_start(k.date_added));
        let due = due_date(&terms, advisory.published, hit.severity, kev_added);
        let has_fix = hit.packages.iter().any(|p| p.fixed.is_some());
        let emergency = is_emergency(emergency_rule, hit.severity, known_exploited);
        let installable_after = match (soak_time, advisory.published) {
            (Some(s), Some(p)) if !emergency => p.checked_add(s).ok(),
            _ => None,
        };
        let mut exempted_by = None;
        let state = if !has_fix {
            FindingState::NoFixYet
        } else if is_rejected(input.policies, &advisory) {
            FindingState::Blocked
        } else if let Some((_, outcome)) = exceptions
            .iter_mut()
            .find(|(e, o)| o.active && names_advisory(e.spec, &advisory))
        {
            outcome.exempts += 1;
            wake.at(outcome.effective_expires);
            exempted_by = Some(outcome.name.clone());
            FindingState::Exempt
        } else if due.as_ref().is_some_and(|(d, _)| *d <= now) {
            FindingState::Overdue
        } else {
            if let Some((d, _)) = &due {
                wake.at(*d);
            }
            FindingState::Pending
        };
        let actionable = matches!(state, FindingState::Pending | FindingState::Overdue);
        if actionable && let Some(after) = installable_after {
            wake.at(after);
        }
        let counts = &mut evaluation.counts;
        match state {
            FindingState::Pending => counts.pending += 1,
            FindingState::Overdue => counts.overdue += 1,
            FindingState::Exempt => counts.exempt += 1,
            FindingState::Blocked => counts.blocked += 1,
            FindingState::NoFixYet => counts.no_fix_yet += 1,
        }
        if only_actionable && matches!(state, FindingState::NoFixYet | FindingState::Blocked) {
            continue;
        }
        if state == FindingState::Pending
            && let Some((d, _)) = &due
            && evaluation.next_due.is_none_or(|n| *d < n)
        {
            evaluation.next_due = Some(*d);
        }
        let mut packages = hit.packages;
        packages.sort_by(|a, b| a.name.cmp(&b.name));
        evaluation.findings.push(EvaluatedFinding {
            finding: Finding {
                advisory: advisory.id.clone(),
                cves: advisory.cves.clone(),
                severity: hit.severity,
                known_exploited,
                packages,
                published: advisory.published.map(time),
                due: due.as_ref().map(|(d, _)| time(*d)),
                due_by: due.and_then(|(_, by)| by.cloned()),
                installable_after: installable_after.filter(|a| *a > now).map(time),
                exempted_by,
                state,
            },
            installable: installable_after.is_none_or(|a| a <= now),
            emergency,
            advisory,
        });
    }
}

/// Findings in the order a person reads them: overdue first, then by due
/// date, severity (highest first) and advisory id.
fn sort_findings(findings: &mut [EvaluatedFinding]) {
    findings.sort_by(|a, b| {
        let (fa, fb) = (&a.finding, &b.finding);
        state_rank(fa.state)
            .cmp(&state_rank(fb.state))
            .then_with(|| {
                fa.due
                    .as_ref()
                    .map(|t| t.0)
                    .cmp(&fb.due.as_ref().map(|t| t.0))
            })
            .then_with(|| fb.severity.cmp(&fa.severity))
            .then_with(|| fa.advisory.cmp(&fb.advisory))
    });
}

/// The object's state: Unknown when anything is, else the worst state of
/// its findings.
fn verdict(unknown: Option<&UnknownCause>, counts: &Counts) -> ComplianceState {
    if unknown.is_some() {
        ComplianceState::Unknown
    } else if counts.overdue > 0 {
        ComplianceState::Overdue
    } else if counts.pending > 0 {
        ComplianceState::Pending
    } else if counts.exempt > 0 {
        ComplianceState::Exempt
    } else {
        ComplianceState::Compliant
    }
}

impl Evaluation {
    /// The status summary.
    pub fn summary(&self) -> ComplianceSummary {
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        ComplianceSummary {
            state: Some(self.state),
            reason: Some(self.reason()),
            pending: count(self.counts.pending),
            overdue: count(self.counts.overdue),
            exempt: count(self.counts.exempt),
            blocked: count(self.counts.blocked),
            no_fix_yet: count(self.counts.no_fix_yet),
            next_due: self.next_due.map(time),
        }
    }

    /// One sentence explaining the verdict.
    pub fn reason(&self) -> String {
        if let Some(cause) = &self.unknown {
            return cause.message();
        }
        let c = &self.counts;
        match self.state {
            ComplianceState::Overdue => format!(
                "{} fix(es) past due, {} pending: install them or add a PatchException",
                c.overdue, c.pending
            ),
            ComplianceState::Pending => format!("{} fix(es) due, none late yet", c.pending),
            ComplianceState::Exempt => format!(
                "every missing fix is covered by a PatchException ({} finding(s))",
                c.exempt
            ),
            _ => {
                let mut s = "nothing installable is missing".to_owned();
                if c.no_fix_yet + c.blocked > 0 {
                    s.push_str(&format!(
                        " ({} advisory(ies) without a fix, {} with a rejected fix)",
                        c.no_fix_yet, c.blocked
                    ));
                }
                s
            }
        }
    }

    /// The actionable findings (Pending, Overdue, Exempt) for status, capped,
    /// with the number left out.
    pub fn status_findings(&self, cap: usize) -> (Vec<Finding>, i32) {
        let actionable: Vec<&EvaluatedFinding> = self
            .findings
            .iter()
            .filter(|f| {
                matches!(
                    f.finding.state,
                    FindingState::Pending | FindingState::Overdue | FindingState::Exempt
                )
            })
            .collect();
        let truncated = actionable.len().saturating_sub(cap);
        (
            actionable
                .into_iter()
                .take(cap)
                .map(|f| f.finding.clone())
                .collect(),
            i32::try_from(truncated).unwrap_or(i32::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::exception::PatchExceptionSpec;
    use crate::api::policy::PatchPolicySpec;
    use crate::engine::advisory::{KevCatalog, KevEntry, OsvRecord};
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp literal")
    }

    fn policy(extra: serde_json::Value) -> PatchPolicySpec {
        let mut spec = json!({"selector": {}});
        if let (Some(base), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(spec).expect("policy spec")
    }

    fn exception(advisories: &[&str], expires: &str) -> PatchExceptionSpec {
        serde_json::from_value(json!({
            "advisories": advisories, "selector": {}, "reason": "r", "approvedBy": "sec",
            "expires": expires,
        }))
        .expect("exception spec")
    }

    /// Two advisories on source `openssl` (fixed 3.0.11-1~deb12u2, published
    /// 2026-11-01), one on `glibc` without a fix, one on `zlib` (high, KEV).
    fn db(kev: bool) -> AdvisoryDb {
        let rec =
            |v: serde_json::Value| -> OsvRecord { serde_json::from_value(v).expect("record") };
        let records = vec![
            rec(
                json!({"id": "DSA-9001-1", "published": "2026-11-01T00:00:00Z", "related": ["CVE-2026-1000"],
                "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}]}]}),
            ),
            rec(
                json!({"id": "CVE-2026-1000", "published": "2026-10-31T00:00:00Z",
                "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H"}],
                "affected": [{"package": {"ecosystem": "Debian:13", "name": "openssl"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.3.0-1"}]}]}]}),
            ),
            rec(
                json!({"id": "CVE-2026-2000", "published": "2026-11-01T00:00:00Z",
                "affected": [{"package": {"ecosystem": "Debian:12", "name": "glibc"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
                  "ecosystem_specific": {"urgency": "low"}}]}),
            ),
            rec(
                json!({"id": "DSA-9002-1", "published": "2026-11-10T00:00:00Z", "related": ["CVE-2026-3000"],
                "affected": [{"package": {"ecosystem": "Debian:12", "name": "zlib"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1:1.2.13.dfsg-1+deb12u1"}]}],
                  "ecosystem_specific": {"urgency": "medium"}}]}),
            ),
        ];
        let mut catalog = KevCatalog::default();
        if kev {
            catalog.entries.insert(
                "CVE-2026-3000".into(),
                KevEntry {
                    cve: "CVE-2026-3000".into(),
                    date_added: jiff::civil::Date::constant(2026, 11, 12),
                    due_date: None,
                },
            );
        }
        AdvisoryDb::build(records, catalog, &[]).0
    }

    fn packages() -> Vec<InstalledPackage> {
        [
            "libssl3 3.0.11-1~deb12u1 openssl",
            "openssl 3.0.11-1~deb12u1",
            "libc6 2.36-9+deb12u3 glibc",
            "zlib1g 1:1.2.13.dfsg-1 zlib",
            "bash 5.2.15-2+b2",
        ]
        .iter()
        .map(|l| crate::engine::inventory::parse_compact(l).expect("compact line"))
        .collect()
    }

    fn run(
        db: &AdvisoryDb,
        policies: &[PolicyRef<'_>],
        exceptions: &[ExceptionRef<'_>],
        pkgs: &[InstalledPackage],
        collected: &str,
        now: &str,
    ) -> Evaluation {
        evaluate(&Input {
            detail: Detail::All,
            platform: "Debian:12",
            policies,
            exceptions,
            inventory: Some(InventoryInput {
                packages: pkgs,
                collected_at: ts(collected),
                ages: true,
                provisional: false,
            }),
            advisories: db,
            now: ts(now),
        })
    }

    #[test]
    fn findings_map_source_advisories_to_binary_packages() {
        let db = db(false);
        let gold = policy(json!({"deadlines": {"high": "7d", "medium": "30d"}}));
        let pkgs = packages();
        let e = run(
            &db,
            &[PolicyRef {
                name: "gold",
                spec: &gold,
            }],
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T01:00:00Z",
        );
        let ids: Vec<_> = e
            .findings
            .iter()
            .map(|f| (&*f.finding.advisory, f.finding.state))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("DSA-9001-1", FindingState::Overdue),
                ("DSA-9002-1", FindingState::Pending),
                ("CVE-2026-2000", FindingState::NoFixYet),
            ]
        );
        let openssl = &e.findings[0].finding;
        assert_eq!(
            openssl.severity,
            Severity::High,
            "derived from CVE-2026-1000's CVSS"
        );
        let names: Vec<_> = openssl.packages.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["libssl3", "openssl"]);
        assert_eq!(openssl.packages[0].source.as_deref(), Some("openssl"));
        assert_eq!(
            openssl.packages[0].fixed.as_deref(),
            Some("3.0.11-1~deb12u2")
        );
        assert_eq!(
            openssl.due.as_ref().map(|t| t.0),
            Some(ts("2026-11-08T00:00:00Z"))
        );
        assert_eq!(openssl.due_by.as_deref(), Some("gold"));
        assert_eq!(e.state, ComplianceState::Overdue);
        assert_eq!(
            (e.counts.overdue, e.counts.pending, e.counts.no_fix_yet),
            (1, 1, 1)
        );
        // The next change by itself: the inventory goes stale after the
        // default 24h, before the zlib finding becomes overdue.
        assert_eq!(e.next_change, Some(ts("2026-11-21T00:00:00Z")));
        assert_eq!(e.next_due, Some(ts("2026-12-10T00:00:00Z")));
    }

    #[test]
    fn pending_becomes_overdue_exactly_at_the_due_date() {
        let db = db(false);
        let gold = policy(
            json!({"deadlines": {"high": "30d", "medium": "30d"}, "inventoryMaxAge": "90d"}),
        );
        let pkgs = packages();
        let p = [PolicyRef {
            name: "gold",
            spec: &gold,
        }];
        let before = run(
            &db,
            &p,
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T12:00:00Z",
        );
        assert_eq!(before.state, ComplianceState::Pending);
        let due = before.next_change.expect("a due date ahead");
        assert_eq!(due, ts("2026-12-01T00:00:00Z"));
        let fresh = due.to_string();
        let at = run(&db, &p, &[], &pkgs, &fresh, &fresh);
        assert_eq!(at.state, ComplianceState::Overdue);
    }

    #[test]
    fn the_strictest_policy_sets_the_due_date() {
        let db = db(false);
        let lax = policy(json!({"deadlines": {"high": "60d"}}));
        let strict = policy(json!({"deadlines": {"high": "2d"}, "priority": 5}));
        let pkgs = packages();
        let e = run(
            &db,
            &[
                PolicyRef {
                    name: "lax",
                    spec: &lax,
                },
                PolicyRef {
                    name: "strict",
                    spec: &strict,
                },
            ],
            &[],
            &pkgs,
            "2026-11-02T00:00:00Z",
            "2026-11-02T01:00:00Z",
        );
        let f = &e
            .findings
            .iter()
            .find(|f| &*f.finding.advisory == "DSA-9001-1")
            .expect("finding")
            .finding;
        assert_eq!(f.due_by.as_deref(), Some("strict"));
        assert_eq!(
            f.due.as_ref().map(|t| t.0),
            Some(ts("2026-11-03T00:00:00Z"))
        );
        assert_eq!(e.remediation, RemediationChoice::Policy("strict".into()));
    }

    #[test]
    fn known_exploited_deadline_runs_from_date_added() {
        let db = db(true);
        let gold = policy(json!({"deadlines": {"medium": "30d"}, "knownExploited": "2d"}));
        let pkgs = packages();
        let e = run(
            &db,
            &[PolicyRef {
                name: "gold",
                spec: &gold,
            }],
            &[],
            &pkgs,
            "2026-11-13T00:00:00Z",
            "2026-11-13T01:00:00Z",
        );
        let f = &e
            .findings
            .iter()
            .find(|f| &*f.finding.advisory == "DSA-9002-1")
            .expect("finding")
            .finding;
        assert!(
            f.known_exploited,
            "KEV matched through the DSA's related CVE"
        );
        assert_eq!(
            f.due.as_ref().map(|t| t.0),
            Some(ts("2026-11-14T00:00:00Z"))
        );
    }

    #[test]
    fn exceptions_exempt_until_they_expire_and_are_capped() {
        let db = db(false);
        let gold = policy(
            json!({"deadlines": {"high": "7d", "medium": "7d"}, "exceptions": {"maxDuration": "10d"}, "inventoryMaxAge": "90d"}),
        );
        let pkgs = packages();
        let p = [PolicyRef {
            name: "gold",
            spec: &gold,
        }];
        let waiver = exception(&["CVE-2026-1000", "DSA-9002-1"], "2027-06-01T00:00:00Z");
        let ex = [ExceptionRef {
            name: "waiver",
            spec: &waiver,
            created: Some(ts("2026-11-15T00:00:00Z")),
        }];
        let e = run(
            &db,
            &p,
            &ex,
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
        );
        assert_eq!(e.state, ComplianceState::Exempt);
        assert_eq!(e.counts.exempt, 2);
        assert_eq!(e.exceptions[0].capped_by.as_deref(), Some("gold"));
        assert_eq!(
            e.exceptions[0].effective_expires,
            ts("2026-11-25T00:00:00Z")
        );
        assert_eq!(e.next_change, Some(ts("2026-11-25T00:00:00Z")));
        let after = run(
            &db,
            &p,
            &ex,
            &pkgs,
            "2026-11-25T00:00:00Z",
            "2026-11-25T00:00:00Z",
        );
        assert_eq!(
            after.state,
            ComplianceState::Overdue,
            "an expired exception stops counting"
        );
        assert!(!after.exceptions[0].active);
    }

    #[test]
    fn rejected_fixes_are_blocked_and_do_not_count_against_compliance() {
        let db = db(false);
        let gold = policy(json!({"approval": {"rejected": ["DSA-9001-1", "CVE-2026-3000"]}}));
        let pkgs = packages();
        let e = run(
            &db,
            &[PolicyRef {
                name: "gold",
                spec: &gold,
            }],
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
        );
        assert_eq!(e.counts.blocked, 2);
        assert_eq!(e.state, ComplianceState::Compliant);
        assert!(e.reason().contains("rejected"));
    }

    #[test]
    fn unknown_when_inputs_are_missing_or_stale() {
        let db = db(false);
        let gold = policy(json!({"inventoryMaxAge": "12h"}));
        let p = [PolicyRef {
            name: "gold",
            spec: &gold,
        }];
        let pkgs = packages();
        let stale = run(
            &db,
            &p,
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T12:00:00Z",
        );
        assert_eq!(stale.state, ComplianceState::Unknown);
        assert_eq!(
            stale.unknown.as_ref().map(UnknownCause::reason),
            Some("InventoryStale")
        );
        assert_eq!(stale.inventory_fresh, Some(false));
        let fresh = run(
            &db,
            &p,
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T11:59:59Z",
        );
        assert_ne!(fresh.state, ComplianceState::Unknown);
        assert_eq!(
            fresh.next_change,
            Some(ts("2026-11-20T12:00:00Z")),
            "the inventory goes stale then"
        );

        // An image inventory never ages.
        let image = evaluate(&Input {
            detail: Detail::All,
            platform: "Debian:12",
            policies: &p,
            exceptions: &[],
            advisories: &db,
            now: ts("2027-11-20T00:00:00Z"),
            inventory: Some(InventoryInput {
                packages: &pkgs,
                collected_at: ts("2026-01-01T00:00:00Z"),
                ages: false,
                provisional: false,
            }),
        });
        assert_eq!(image.state, ComplianceState::Overdue);

        let none = evaluate(&Input {
            detail: Detail::All,
            platform: "Debian:12",
            policies: &p,
            exceptions: &[],
            advisories: &db,
            now: ts("2026-11-20T00:00:00Z"),
            inventory: None,
        });
        assert_eq!(none.unknown, Some(UnknownCause::NoInventory));

        let inv = Some(InventoryInput {
            packages: &pkgs,
            collected_at: ts("2026-11-20T00:00:00Z"),
            ages: true,
            provisional: false,
        });
        let no_data = evaluate(&Input {
            detail: Detail::All,
            platform: "Ubuntu:22.04:LTS",
            policies: &p,
            exceptions: &[],
            advisories: &db,
            now: ts("2026-11-20T00:00:00Z"),
            inventory: inv,
        });
        assert_eq!(
            no_data.unknown,
            Some(UnknownCause::NoAdvisoryData("Ubuntu:22.04:LTS".into()))
        );
        assert_eq!(
            no_data.state,
            ComplianceState::Unknown,
            "no data is never Compliant"
        );

        let bad_platform = evaluate(&Input {
            detail: Detail::All,
            platform: "Windows:11",
            policies: &p,
            exceptions: &[],
            advisories: &db,
            now: ts("2026-11-20T00:00:00Z"),
            inventory: inv,
        });
        assert_eq!(
            bad_platform.unknown.as_ref().map(UnknownCause::reason),
            Some("UnknownPlatform")
        );
    }

    #[test]
    fn an_unreadable_installed_version_is_unknown_never_compliant() {
        let db = db(false);
        let pkgs = vec![
            crate::engine::inventory::parse_compact("libssl3 not:a:version openssl").expect("line"),
        ];
        let e = run(
            &db,
            &[],
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
        );
        assert_eq!(e.state, ComplianceState::Unknown);
        match e.unknown {
            Some(UnknownCause::InvalidVersions(list)) => assert!(list[0].starts_with("libssl3: ")),
            other => panic!("expected InvalidVersions, got {other:?}"),
        }
    }

    #[test]
    fn equal_priorities_conflict() {
        let a = policy(json!({"priority": 10}));
        let b = policy(json!({"priority": 10}));
        let c = policy(json!({"priority": 1}));
        let refs = [
            PolicyRef {
                name: "b",
                spec: &b,
            },
            PolicyRef {
                name: "a",
                spec: &a,
            },
            PolicyRef {
                name: "c",
                spec: &c,
            },
        ];
        assert_eq!(
            remediation_policy(&refs),
            RemediationChoice::Conflict(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            remediation_policy(&refs[2..]),
            RemediationChoice::Policy("c".into())
        );
        assert_eq!(remediation_policy(&[]), RemediationChoice::None);
    }

    #[test]
    fn soak_delays_installation_unless_emergency() {
        let db = db(true);
        let gold = policy(
            json!({"approval": {"approveAfter": "3d"}, "emergency": {"knownExploited": true}}),
        );
        let pkgs = packages();
        let e = run(
            &db,
            &[PolicyRef {
                name: "gold",
                spec: &gold,
            }],
            &[],
            &pkgs,
            "2026-11-12T00:00:00Z",
            "2026-11-12T00:00:00Z",
        );
        let zlib = e
            .findings
            .iter()
            .find(|f| &*f.finding.advisory == "DSA-9002-1")
            .expect("zlib");
        assert!(
            zlib.emergency && zlib.installable,
            "KEV emergency skips the soak"
        );
        let e = run(
            &db,
            &[PolicyRef {
                name: "gold",
                spec: &gold,
            }],
            &[],
            &pkgs,
            "2026-11-02T00:00:00Z",
            "2026-11-02T00:00:00Z",
        );
        let openssl = e
            .findings
            .iter()
            .find(|f| &*f.finding.advisory == "DSA-9001-1")
            .expect("openssl");
        assert!(!openssl.installable);
        assert_eq!(
            openssl.finding.installable_after.as_ref().map(|t| t.0),
            Some(ts("2026-11-04T00:00:00Z"))
        );
        assert!(
            e.next_change
                .is_some_and(|t| t <= ts("2026-11-04T00:00:00Z"))
        );
    }

    #[test]
    fn emergency_definition() {
        let rule = EmergencyRule {
            severities: vec![Severity::Critical],
            known_exploited: true,
        };
        assert!(is_emergency(Some(&rule), Severity::Critical, false));
        assert!(is_emergency(Some(&rule), Severity::Low, true));
        assert!(!is_emergency(Some(&rule), Severity::High, false));
        assert!(!is_emergency(None, Severity::Critical, true));
    }

    #[test]
    fn actionable_detail_counts_what_it_does_not_build() {
        let db = db(false);
        let gold =
            policy(json!({"approval": {"rejected": ["DSA-9002-1"]}, "inventoryMaxAge": "90d"}));
        let pkgs = packages();
        let p = [PolicyRef {
            name: "gold",
            spec: &gold,
        }];
        let input = |detail| Input {
            detail,
            platform: "Debian:12",
            policies: &p,
            exceptions: &[],
            inventory: Some(InventoryInput {
                packages: &pkgs,
                collected_at: ts("2026-11-20T00:00:00Z"),
                ages: true,
                provisional: false,
            }),
            advisories: &db,
            now: ts("2026-11-20T00:00:00Z"),
        };
        let all = evaluate(&input(Detail::All));
        let actionable = evaluate(&input(Detail::Actionable));
        assert_eq!(all.counts, actionable.counts);
        assert_eq!((all.counts.no_fix_yet, all.counts.blocked), (1, 1));
        assert_eq!(all.state, actionable.state);
        assert_eq!(all.next_change, actionable.next_change);
        assert_eq!(all.status_findings(10), actionable.status_findings(10));
        assert_eq!(all.findings.len(), 3);
        assert_eq!(actionable.findings.len(), 1);
    }

    #[test]
    fn one_source_at_two_versions_is_probed_per_version() {
        // A half-upgraded source: libssl3 is fixed, openssl is not. Grouping
        // keys on (source, version), so each binary is judged by its own.
        let db = db(false);
        let pkgs: Vec<InstalledPackage> = [
            "libssl3 3.0.11-1~deb12u2 openssl",
            "openssl 3.0.11-1~deb12u1",
            "libssl-dev 3.0.11-1~deb12u1 openssl",
        ]
        .iter()
        .map(|l| crate::engine::inventory::parse_compact(l).expect("compact line"))
        .collect();
        let e = run(
            &db,
            &[],
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
        );
        let dsa = e
            .findings
            .iter()
            .find(|f| &*f.finding.advisory == "DSA-9001-1")
            .expect("the unfixed binaries are affected");
        let names: Vec<(&str, &str)> = dsa
            .finding
            .packages
            .iter()
            .map(|p| (&*p.name, &*p.installed))
            .collect();
        assert_eq!(
            names,
            [
                ("libssl-dev", "3.0.11-1~deb12u1"),
                ("openssl", "3.0.11-1~deb12u1")
            ]
        );
    }

    #[test]
    fn status_findings_are_capped_with_a_count() {
        let db = db(false);
        let pkgs = packages();
        let e = run(
            &db,
            &[],
            &[],
            &pkgs,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
        );
        let (all, truncated) = e.status_findings(10);
        assert_eq!(
            (all.len(), truncated),
            (2, 0),
            "no-fix findings are counts only"
        );
        let (one, truncated) = e.status_findings(1);
        assert_eq!((one.len(), truncated), (1, 1));
        assert_eq!(one[0].advisory, all[0].advisory, "most urgent first");
    }
}
