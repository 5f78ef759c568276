//! `PatchPolicy`: what "patched enough" means for the objects it selects, and
//! how fixes roll out to them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, Severity, int_or_percent, preserved_object};

/// PatchPolicy declares security tiers (deadlines per severity), soak time,
/// rejected fixes, maintenance windows, emergencies and how remediation Jobs
/// roll out to the Workloads and Templates it selects.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "PatchPolicy",
    plural = "patchpolicies",
    namespaced,
    status = "PatchPolicyStatus",
    shortname = "ppol",
    category = "patchloop",
    doc = "PatchPolicy declares deadlines per severity, maintenance windows and how remediation rolls out to the Workloads and Templates it selects.",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.remediation.mode"),
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.workloads.matched"
    ),
    printcolumn(
        name = "Compliant",
        type_ = "integer",
        json_path = ".status.workloads.compliant"
    ),
    printcolumn(
        name = "Overdue",
        type_ = "integer",
        json_path = ".status.workloads.overdue"
    ),
    printcolumn(name = "Next-Window", type_ = "date", json_path = ".status.nextWindow"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PatchPolicySpec {
    /// Which Workloads and Templates in this namespace the policy applies to;
    /// `{}` selects every one of them.
    pub selector: LabelSelector,
    /// When several policies match one object, the highest priority drives its
    /// remediation; a tie is a Conflict and nothing is remediated until it is
    /// resolved. Compliance always merges every matching policy to the
    /// strictest deadlines.
    #[serde(default)]
    pub priority: i32,
    /// How long after an advisory's publication its fix must be installed, per
    /// severity.
    #[serde(default)]
    pub deadlines: Deadlines,
    /// Deadline for advisories in the CISA Known Exploited Vulnerabilities
    /// catalog, counted from the catalog's `dateAdded`; the stricter of this and
    /// the severity deadline wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_exploited: Option<Duration>,
    /// A Workload whose inventory is older than this is Unknown. Image
    /// inventories (Templates) never age.
    #[serde(default = "default_inventory_max_age")]
    pub inventory_max_age: Duration,
    /// Which fixes may be installed.
    #[serde(default)]
    pub approval: FixApproval,
    /// Limits on PatchExceptions that apply to objects of this policy.
    #[serde(default)]
    pub exceptions: ExceptionLimits,
    /// When remediation may run. No window means remediation runs only as an
    /// emergency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// Findings that may be remediated outside maintenance windows and may
    /// approve template rebuilds under `templates.approval:
    /// AutomaticForEmergency`. Absent: no emergencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emergency: Option<EmergencyRule>,
    /// How live Workloads are remediated.
    #[serde(default)]
    pub remediation: Remediation,
    /// How Templates matched by this policy are rebuilt.
    #[serde(default)]
    pub templates: TemplatePolicy,
}

/// The `inventoryMaxAge` of a policy that does not set one, and of objects no
/// policy matches.
pub const DEFAULT_INVENTORY_MAX_AGE: &str = "24h";

fn default_inventory_max_age() -> Duration {
    Duration::from_static(DEFAULT_INVENTORY_MAX_AGE)
}

/// Deadlines per severity, counted from an advisory's publication.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deadlines {
    /// Deadline for critical advisories.
    #[serde(default = "default_critical")]
    pub critical: Duration,
    /// Deadline for high advisories.
    #[serde(default = "default_high")]
    pub high: Duration,
    /// Deadline for medium advisories.
    #[serde(default = "default_medium")]
    pub medium: Duration,
    /// Deadline for low advisories.
    #[serde(default = "default_low")]
    pub low: Duration,
    /// Deadline for advisories whose severity no source states.
    #[serde(default = "default_unknown")]
    pub unknown: Duration,
}

fn default_critical() -> Duration {
    Duration::from_static("7d")
}
fn default_high() -> Duration {
    Duration::from_static("14d")
}
fn default_medium() -> Duration {
    Duration::from_static("30d")
}
fn default_low() -> Duration {
    Duration::from_static("90d")
}
fn default_unknown() -> Duration {
    Duration::from_static("30d")
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            critical: default_critical(),
            high: default_high(),
            medium: default_medium(),
            low: default_low(),
            unknown: default_unknown(),
        }
    }
}

impl Deadlines {
    /// The deadline for one severity.
    pub fn for_severity(&self, severity: Severity) -> &Duration {
        match severity {
            Severity::Critical => &self.critical,
            Severity::High => &self.high,
            Severity::Medium => &self.medium,
            Severity::Low => &self.low,
            Severity::Unknown => &self.unknown,
        }
    }
}

/// Which fixes may be installed, and when.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixApproval {
    /// Soak time: a non-emergency fix is installed only this long after the
    /// advisory's publication. The deadline clock still runs from publication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_after: Option<Duration>,
    /// Advisory ids (or CVE aliases) whose fixes are known to be bad and are
    /// never installed; their findings are reported as Blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
}

/// Limits on the PatchExceptions that cover objects of this policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionLimits {
    /// The longest an exception may last, counted from its creation; a longer
    /// `expires` is capped to this and flagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Duration>,
}

/// A recurring maintenance window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When the window opens: a five-field cron expression (minute hour
    /// day-of-month month day-of-week), e.g. `0 2 * * SAT` or `0 3 * * TUE#2`
    /// (second Tuesday), or `@daily`, `@weekly`, `@monthly`.
    #[schemars(length(min = 6))]
    pub schedule: String,
    /// How long the window stays open once opened.
    pub duration: Duration,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Paris`;
    /// daylight-saving changes are honoured.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// What makes a finding an emergency.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmergencyRule {
    /// Findings of these severities are emergencies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub severities: Vec<Severity>,
    /// Findings listed as known exploited (CISA KEV) are emergencies.
    #[serde(default)]
    pub known_exploited: bool,
}

/// Whether the controller acts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RemediationMode {
    /// Only report compliance; never create a Job. The default, so an omitted
    /// or pruned field never causes action.
    #[default]
    Report,
    /// Create remediation Jobs for non-compliant Workloads.
    Remediate,
}

/// How remediation Jobs roll out across the matched Workloads.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    /// `Report` (default) never creates a Job; `Remediate` does.
    #[serde(default)]
    pub mode: RemediationMode,
    /// The most remediation Jobs in flight at once across the policy: an
    /// integer, or a percentage of matched Workloads rounded up (never 0 for a
    /// non-empty fleet unless 0 or 0% is written).
    #[serde(default = "default_max_concurrent")]
    #[schemars(schema_with = "int_or_percent")]
    pub max_concurrent: IntOrString,
    /// The first N Workloads remediated must be verified before the rest start.
    #[serde(default = "default_canary")]
    #[schemars(range(min = 0))]
    pub canary: i32,
    /// The rollout pauses itself after this many failed or unverified outcomes,
    /// until the `patchloop.dev/resume` annotation gets a new value.
    #[serde(default = "default_max_failures")]
    #[schemars(range(min = 1))]
    pub max_failures: i32,
    /// Tries per Workload and fix set, with exponential backoff between them.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub attempts: i32,
    /// The wait before the second try; it doubles for each further try.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// A successful Job must be confirmed by an inventory written after it
    /// started, within this time; otherwise the outcome is Unverified.
    #[serde(default = "default_verify_timeout")]
    pub verify_timeout: Duration,
    /// The Job's `activeDeadlineSeconds`: a Job running longer fails.
    #[serde(default = "default_job_deadline")]
    pub job_deadline: Duration,
    /// Finished remediation Jobs kept per Workload for inspection; older ones
    /// are deleted once their outcome is recorded.
    #[serde(default = "default_keep_finished_jobs")]
    #[schemars(range(min = 0, max = 20))]
    pub keep_finished_jobs: i32,
    /// Stops new Jobs; running ones finish.
    #[serde(default)]
    pub paused: bool,
    /// A batch/v1 JobTemplateSpec (`metadata`, `spec`) for remediation Jobs.
    /// The controller adds the job contract: environment, the mounted package
    /// list, labels, owner; `restartPolicy` becomes Never, `backoffLimit` 0.
    /// Validated by a server-side dry-run create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub job_template: Option<serde_json::Value>,
}

fn default_max_concurrent() -> IntOrString {
    IntOrString::Int(1)
}
fn default_canary() -> i32 {
    1
}
fn default_max_failures() -> i32 {
    2
}
fn default_attempts() -> i32 {
    3
}
fn default_backoff() -> Duration {
    Duration::from_static("10m")
}
fn default_verify_timeout() -> Duration {
    Duration::from_static("2h")
}
fn default_job_deadline() -> Duration {
    Duration::from_static("1h")
}
fn default_keep_finished_jobs() -> i32 {
    3
}

impl Default for Remediation {
    fn default() -> Self {
        Remediation {
            mode: RemediationMode::Report,
            max_concurrent: default_max_concurrent(),
            canary: default_canary(),
            max_failures: default_max_failures(),
            attempts: default_attempts(),
            backoff: default_backoff(),
            verify_timeout: default_verify_timeout(),
            job_deadline: default_job_deadline(),
            keep_finished_jobs: default_keep_finished_jobs(),
            paused: false,
            job_template: None,
        }
    }
}

/// Who approves template rebuilds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TemplateApproval {
    /// A person approves every ChangeRequest (the default).
    #[default]
    Required,
    /// ChangeRequests proceed without a person.
    Automatic,
    /// ChangeRequests proceed without a person only when a finding is an
    /// emergency by this policy's `emergency` rule.
    AutomaticForEmergency,
}

/// How Templates matched by this policy are rebuilt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplatePolicy {
    /// `Required` (default), `Automatic` or `AutomaticForEmergency`.
    #[serde(default)]
    pub approval: TemplateApproval,
}

/// Observed state of a PatchPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchPolicyStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Conflict, RolloutPaused.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Counts over the matched Workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads: Option<WorkloadCounts>,
    /// Counts over the matched Templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<TemplateCounts>,
    /// The fleet-level rollout ledger (per-Workload records live on each
    /// Workload's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutLedger>,
    /// When the next maintenance window opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_window: Option<Time>,
    /// When the currently open window closes, if one is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_open_until: Option<Time>,
}

/// Counts over the Workloads a policy matches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCounts {
    /// Workloads the selector matches.
    #[serde(default)]
    pub matched: i32,
    /// Compliant Workloads.
    #[serde(default)]
    pub compliant: i32,
    /// Workloads with a fix due, not late yet.
    #[serde(default)]
    pub pending: i32,
    /// Workloads with a fix past due.
    #[serde(default)]
    pub overdue: i32,
    /// Workloads whose remaining findings are all exempt.
    #[serde(default)]
    pub exempt: i32,
    /// Workloads whose compliance cannot be told.
    #[serde(default)]
    pub unknown: i32,
    /// Workloads with a remediation Job running or being verified.
    #[serde(default)]
    pub remediating: i32,
    /// Workloads whose remediation gave up or failed verification.
    #[serde(default)]
    pub failed: i32,
    /// Non-compliant Workloads waiting for a maintenance window.
    #[serde(default)]
    pub waiting_for_window: i32,
    /// Workloads skipped by remediation (`spec.paused`, or a priority conflict).
    #[serde(default)]
    pub skipped: i32,
    /// Workloads provisioned from an older template revision than the latest.
    #[serde(default)]
    pub stale_template: i32,
}

/// Counts over the Templates a policy matches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateCounts {
    /// Templates the selector matches.
    #[serde(default)]
    pub matched: i32,
    /// Compliant Templates.
    #[serde(default)]
    pub compliant: i32,
    /// Non-compliant Templates.
    #[serde(default)]
    pub non_compliant: i32,
    /// Open ChangeRequests of the matched Templates.
    #[serde(default)]
    pub change_requests_open: i32,
    /// Matched Templates that live Workloads run at an older revision.
    #[serde(default)]
    pub stale: i32,
}

/// The fleet-level rollout ledger of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutLedger {
    /// Failed or unverified outcomes since the last resume (counting stops
    /// once the rollout pauses itself).
    #[serde(default)]
    pub failures: i32,
    /// The Workloads of the last few failures, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_failures: Vec<String>,
    /// Verified successes since the last resume, counted up to `canary`: the
    /// canary phase ends when it reaches `canary`.
    #[serde(default)]
    pub verified: i32,
    /// The Workloads started as canaries of the current rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canaries: Vec<String>,
    /// Job outcomes already counted (job names) that are still the current
    /// record of their Workload, so a restart never counts one twice; at
    /// most `canary` + `maxFailures` of them, whatever the fleet's size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted: Vec<String>,
    /// Outcomes of Jobs that finished before this instant are never counted
    /// (set at each resume and at the end of each rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counting_since: Option<Time>,
    /// When the rollout paused itself after `maxFailures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<Time>,
    /// The last `patchloop.dev/resume` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_seen: Option<String>,
}

/// The annotation a person sets to a new value (e.g. a timestamp) to resume a
/// rollout paused by `maxFailures`.
pub const RESUME_ANNOTATION: &str = "patchloop.dev/resume";

impl From<&IntOrString> for crate::engine::rollout::MaxConcurrent {
    fn from(value: &IntOrString) -> Self {
        match value {
            IntOrString::Int(n) => Self::Count(*n),
            IntOrString::String(s) => Self::Text(s.clone()),
        }
    }
}
