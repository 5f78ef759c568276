//! Value types shared by several kinds: durations, severities, compliance
//! summaries and findings, schema helpers for the generated CRDs.

use std::fmt;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The one duration grammar of every Patchloop field: one or more
/// `<integer><unit>` terms with units `s`, `m`, `h`, `d` (24h) and `w` (7d),
/// e.g. `90m`, `36h`, `7d`, `1d12h`. The CRD schema carries this very pattern,
/// so what the apiserver accepts is exactly what [`Duration::parse`] accepts.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}[smhdw])+$";

static DURATION_TERM: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"([0-9]{1,9})([smhdw])").expect("static regex"));
static DURATION_WHOLE: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(DURATION_PATTERN).expect("static regex"));

/// A duration as written in a manifest (`7d`, `36h`, `90m`).
///
/// Stored as the user's string and parsed on use, so an object written by an
/// older schema can never make a whole watch fail to deserialize: an invalid
/// value becomes a condition naming the field instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
        })
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {value:?}: expected <integer><unit> terms with units s, m, h, d, w (e.g. 90m, 36h, 7d)"
)]
pub struct DurationError {
    /// The refused text.
    pub value: String,
}

impl Duration {
    /// A duration from a literal known to be valid (defaults, tests).
    pub fn from_static(s: &'static str) -> Self {
        Duration(s.to_owned())
    }

    /// Parses the string into seconds-precision [`jiff::SignedDuration`].
    pub fn parse(&self) -> Result<jiff::SignedDuration, DurationError> {
        let err = || DurationError {
            value: self.0.clone(),
        };
        if !DURATION_WHOLE.is_match(&self.0) {
            return Err(err());
        }
        let mut total: i64 = 0;
        for cap in DURATION_TERM.captures_iter(&self.0) {
            let n: i64 = cap[1].parse().map_err(|_| err())?;
            let unit: i64 = match &cap[2] {
                "s" => 1,
                "m" => 60,
                "h" => 3_600,
                "d" => 86_400,
                "w" => 604_800,
                _ => return Err(err()),
            };
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
        }
        Ok(jiff::SignedDuration::from_secs(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Severity of an advisory, after normalisation (CVSS bands, Debian urgency,
/// Ubuntu priority); `unknown` when no source says.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// No severity is known; governed by `deadlines.unknown`.
    Unknown,
    /// CVSS 0.1-3.9, Debian `low`/`unimportant`, Ubuntu `low`/`negligible`.
    Low,
    /// CVSS 4.0-6.9, Debian/Ubuntu `medium`.
    Medium,
    /// CVSS 7.0-8.9, Debian/Ubuntu `high`.
    High,
    /// CVSS 9.0-10.0, Ubuntu `critical`.
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// The single compliance verdict of a Workload or Template, in precedence
/// order: Unknown > Overdue > Pending > Exempt > Compliant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ComplianceState {
    /// No inventory, inventory too old, or no advisory data for the platform.
    Unknown,
    /// At least one fix is past its due date.
    Overdue,
    /// At least one fix is due but not late yet.
    Pending,
    /// Every remaining finding is covered by an active PatchException.
    Exempt,
    /// Nothing installable is missing.
    Compliant,
}

impl fmt::Display for ComplianceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComplianceState::Unknown => "Unknown",
            ComplianceState::Overdue => "Overdue",
            ComplianceState::Pending => "Pending",
            ComplianceState::Exempt => "Exempt",
            ComplianceState::Compliant => "Compliant",
        })
    }
}

/// The state of one finding (one advisory against one object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FindingState {
    /// A fix is available and due, not late yet.
    Pending,
    /// A fix is available and its due date has passed.
    Overdue,
    /// Covered by an active PatchException.
    Exempt,
    /// The policy rejects the fix (`approval.rejected`): nothing to install.
    Blocked,
    /// The distribution has not published a fix yet.
    NoFixYet,
}

/// Counts and verdict of an evaluation, as shown in status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceSummary {
    /// The single verdict: Unknown > Overdue > Pending > Exempt > Compliant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ComplianceState>,
    /// Why the state is what it is, in a sentence (e.g. why Unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Findings with a fix due but not late yet.
    #[serde(default)]
    pub pending: i32,
    /// Findings past their due date.
    #[serde(default)]
    pub overdue: i32,
    /// Findings covered by an active PatchException.
    #[serde(default)]
    pub exempt: i32,
    /// Findings whose fix the policy rejects (reported, not actionable).
    #[serde(default)]
    pub blocked: i32,
    /// Findings with no fix published yet (reported, not actionable).
    #[serde(default)]
    pub no_fix_yet: i32,
    /// The earliest due date among pending findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<Time>,
}

/// One installed package an advisory affects, with the minimum fixed version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
// The strings are shared (`Arc<str>`) with the inventory and the advisory
// index they come from: an evaluation builds dozens of findings per object,
// and copying each name and version was most of its allocations. They
// serialize as plain strings (a plain comment: doc comments would reach the
// CRD schema).
pub struct AffectedPackage {
    /// The installed (binary) package name.
    pub name: Arc<str>,
    /// The installed version (of the source package when the advisory names a source).
    pub installed: Arc<str>,
    /// The minimum version that fixes the advisory; absent when no fix exists yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<Arc<str>>,
    /// The source package the advisory names, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Arc<str>>,
}

/// One advisory that affects an object, with its deadline and state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
// As in `AffectedPackage`, the strings are shared with the advisory and the
// policy they come from.
pub struct Finding {
    /// The advisory id (e.g. DSA-5532-1, USN-6000-1, CVE-2024-0001).
    pub advisory: Arc<str>,
    /// CVE ids the advisory covers (aliases, upstream and related).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub cves: Arc<[Arc<str>]>,
    /// Normalised severity.
    pub severity: Severity,
    /// Listed in the CISA Known Exploited Vulnerabilities catalog.
    #[serde(default)]
    pub known_exploited: bool,
    /// The installed packages the advisory affects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<AffectedPackage>,
    /// When the advisory was published (the deadline clock starts here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Time>,
    /// When the fix must be installed by (strictest matching policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Time>,
    /// The PatchPolicy whose deadline set `due`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_by: Option<Arc<str>>,
    /// Before this instant the fix is still in the policy's soak time
    /// (`approval.approveAfter`) and is not installed unless it is an emergency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installable_after: Option<Time>,
    /// The PatchException that exempts this finding, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempted_by: Option<String>,
    /// The finding's state.
    pub state: FindingState,
}

/// `skip_serializing_if` for shared slices (`Vec::is_empty` takes a `Vec`).
fn is_empty<T>(list: &Arc<[T]>) -> bool {
    list.is_empty()
}

/// A reference to the Inventory an evaluation used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryReference {
    /// Name of the Inventory object (in the same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the reporter says it collected the inventory (`spec.reportedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<Time>,
    /// The Inventory's `metadata.generation` (the apiserver bumps it on every
    /// spec change): remediation is verified by a change of it after the Job
    /// was created, never by a time a client sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Number of packages in the inventory.
    #[serde(default)]
    pub packages: i32,
    /// True when the object has no inventory of its own yet and was judged by
    /// its template revision's inventory.
    #[serde(default)]
    pub provisional: bool,
}

/// Schema of an embedded object kept as-is (a batch/v1 JobTemplateSpec):
/// stored without an inlined PodSpec schema so every CRD stays far below the
/// 256 KiB limit of client-side apply, validated by a server-side dry-run.
pub fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Schema of `maxConcurrent`-like fields: a non-negative integer or a
/// percentage string. The bare IntOrString schema accepts `-3` and `"abc"`.
pub fn int_or_percent(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "pattern": "^(100|[1-9]?[0-9])%$",
        "minimum": 0
    })
}

/// Dot-separated RFC 1123 labels (letters, digits and inner `-`, 1 to 63
/// each), 253 characters at most: the shape of DNS names and of
/// Kubernetes object names.
pub fn rfc1123_labels(s: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253 && s.split('.').all(label_ok)
}

/// A Kubernetes object (or node) name: a lower-case RFC 1123 DNS subdomain.
pub fn is_object_name(s: &str) -> bool {
    rfc1123_labels(s) && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// A status timestamp: whole seconds, as `metav1.Time` serialises them, so a
/// status built in memory equals the one read back and unchanged state never
/// causes a write.
pub fn time(t: jiff::Timestamp) -> Time {
    let whole = jiff::Timestamp::from_second(t.as_second()).unwrap_or(t);
    Time(whole)
}

/// The name used to label and categorise every Patchloop object.
pub const CATEGORY: &str = "patchloop";

impl crate::engine::selector::LabelQuery
    for k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector
{
    fn match_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn requirements(&self) -> impl Iterator<Item = crate::engine::selector::Requirement<'_>> {
        self.match_expressions
            .iter()
            .flatten()
            .map(|e| crate::engine::selector::Requirement {
                key: &e.key,
                operator: &e.operator,
                values: e.values.as_deref().unwrap_or_default(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_to_seconds() {
        let cases = [
            ("90m", 5_400),
            ("36h", 129_600),
            ("7d", 604_800),
            ("1d12h", 129_600),
            ("2w", 1_209_600),
            ("0s", 0),
            ("1h30m15s", 5_415),
        ];
        for (text, secs) in cases {
            let d = Duration(text.into()).parse().expect(text);
            assert_eq!(d.as_secs(), secs, "{text}");
        }
    }

    #[test]
    fn malformed_durations_are_refused() {
        for text in [
            "", "7", "d", "7 d", "7days", "-1h", "1.5h", "1H", "1h ", "P1D",
        ] {
            let err = Duration(text.into()).parse().expect_err(text);
            assert_eq!(err.value, text);
            assert!(err.to_string().contains("invalid duration"));
        }
    }

    #[test]
    fn schema_pattern_is_the_parser_pattern() {
        let schema = schemars::schema_for!(Duration);
        let pattern = schema
            .get("pattern")
            .and_then(|p| p.as_str())
            .expect("Duration schema has a pattern");
        assert_eq!(pattern, DURATION_PATTERN);
    }

    #[test]
    fn severities_order_by_urgency() {
        assert!(Severity::Critical > Severity::High);
        assert!(Severity::High > Severity::Medium);
        assert!(Severity::Medium > Severity::Low);
        assert!(Severity::Low > Severity::Unknown);
        let json = serde_json::to_string(&Severity::Critical).expect("serialize");
        assert_eq!(json, "\"critical\"");
    }
}
