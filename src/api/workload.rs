//! `Workload`: one live machine (VM, node, instance) whose patch level is kept
//! within policy.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    ComplianceSummary, Finding, InventoryReference, is_object_name, rfc1123_labels,
};

/// The OSV ecosystem pattern a platform must follow: a distribution, a colon
/// and a release (`Debian:12`, `Ubuntu:22.04:LTS`, `AlmaLinux:9`, `Alpine:v3.20`).
pub const PLATFORM_PATTERN: &str = r"^[A-Za-z][A-Za-z ]*:\S.*$";

/// Workload is one live machine: its platform, the template it was provisioned
/// from, and an opaque target handed to remediation Jobs.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "Workload",
    namespaced,
    status = "WorkloadStatus",
    shortname = "wl",
    category = "patchloop",
    doc = "Workload is one live machine (VM, node, instance) whose patch level Patchloop keeps within policy.",
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platform"),
    printcolumn(
        name = "Compliance",
        type_ = "string",
        json_path = ".status.compliance.state"
    ),
    printcolumn(
        name = "Overdue",
        type_ = "integer",
        json_path = ".status.compliance.overdue"
    ),
    printcolumn(
        name = "Remediation",
        type_ = "string",
        json_path = ".status.remediation.phase"
    ),
    printcolumn(
        name = "Template-Current",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"TemplateCurrent\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The operating system in OSV ecosystem naming: `Debian:12`,
    /// `Ubuntu:22.04:LTS`, `AlmaLinux:9`, `Alpine:v3.20`. It selects the
    /// advisories and the version ordering (dpkg, rpm, apk).
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z ]*:\S.*$"))]
    pub platform: String,
    /// The Template (and revision) this machine was provisioned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
    /// How remediation Jobs reach the machine: `address` (a DNS name or an
    /// IP address), `user` (a POSIX user name), `port` (1-65535), `node` (a
    /// Kubernetes node name). Handed to Jobs as JSON (`PATCHLOOP_TARGET`)
    /// once every field is checked; scripts must authenticate the address
    /// against host keys pinned in the policy's Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "target_schema")]
    pub target: Option<serde_json::Value>,
    /// Excludes this Workload from remediation (it is still evaluated).
    #[serde(default)]
    pub paused: bool,
}

/// The schema's share of the target's grammar (the apiserver checks it on
/// write); [`check_target`] is the whole of it, for objects stored before.
/// Unknown fields are kept, not pruned, so the controller can name them.
fn target_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "description": "How remediation Jobs reach the machine, handed to Jobs as JSON once every field is checked.",
        "properties": {
            "address": {
                "type": "string",
                "maxLength": 253,
                "pattern": ADDRESS_PATTERN,
                "description": "Host name (RFC 1123 DNS name) or IPv4/IPv6 address of the machine."
            },
            "user": {
                "type": "string",
                "pattern": USER_PATTERN,
                "description": "The user to connect as (POSIX portable user name: a lower-case letter or _, then up to 31 of a-z 0-9 _ . -)."
            },
            "port": {
                "type": "integer",
                "minimum": 1,
                "maximum": 65535,
                "description": "The SSH port."
            },
            "node": {
                "type": "string",
                "maxLength": 253,
                "pattern": NODE_PATTERN,
                "description": "The Kubernetes node the machine is (set by the node agent)."
            }
        },
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Letters, digits and hyphens in dot-separated labels, or the characters of
/// an IPv6 literal; the exact rules are in [`check_target`].
const ADDRESS_PATTERN: &str = r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|[0-9A-Fa-f:.]+)$";
/// A POSIX portable user name as the reference scripts accept it.
const USER_PATTERN: &str = r"^[a-z_][a-z0-9_.-]{0,31}$";
/// A Kubernetes node name: a lower-case RFC 1123 DNS subdomain.
const NODE_PATTERN: &str =
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$";
/// The fields a target may have.
const TARGET_FIELDS: [&str; 4] = ["address", "user", "port", "node"];

/// A `spec.target` field outside its grammar. The message says what the
/// field must be and never repeats the rejected value (it is the author's
/// data, and it may be built to read as something else in a status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct TargetError {
    /// The field, e.g. `spec.target.address`.
    pub field: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

impl WorkloadSpec {
    /// `spec.target` as the JSON handed to Jobs (`{}` without one), once
    /// [`check_target`] accepts it.
    pub fn contract_target(&self) -> Result<String, TargetError> {
        match &self.target {
            None => Ok("{}".to_owned()),
            Some(t) => check_target(t).map(|()| t.to_string()),
        }
    }
}

/// Checks a `spec.target` against the grammar of each field.
pub fn check_target(target: &serde_json::Value) -> Result<(), TargetError> {
    let fail = |field, rule| Err(TargetError { field, rule });
    let Some(fields) = target.as_object() else {
        return fail("spec.target", "must be an object");
    };
    if fields.keys().any(|k| !TARGET_FIELDS.contains(&k.as_str())) {
        return fail(
            "spec.target",
            "has a field other than address, user, port and node; remove it",
        );
    }
    if let Some(address) = fields.get("address")
        && !address.as_str().is_some_and(is_host)
    {
        return fail(
            "spec.target.address",
            "must be a DNS name (RFC 1123: dot-separated labels of 1-63 letters, digits or \
             hyphens, not starting or ending with a hyphen, at most 253 characters, no trailing \
             dot, the last label not all digits) or an IPv4 or IPv6 address",
        );
    }
    if let Some(user) = fields.get("user")
        && !user.as_str().is_some_and(is_user)
    {
        return fail(
            "spec.target.user",
            "must be a POSIX user name: a lower-case letter or _, then up to 31 lower-case \
             letters, digits, _, . or -",
        );
    }
    if let Some(port) = fields.get("port")
        && !port.as_u64().is_some_and(|p| (1..=65535).contains(&p))
    {
        return fail("spec.target.port", "must be a whole number from 1 to 65535");
    }
    if let Some(node) = fields.get("node")
        && !node.as_str().is_some_and(is_object_name)
    {
        return fail(
            "spec.target.node",
            "must be a Kubernetes node name (a lower-case RFC 1123 DNS subdomain)",
        );
    }
    Ok(())
}

/// An IPv4 or IPv6 address (as `std::net` reads them: no zone, no
/// brackets, no shorthand like `10.1`), or a DNS name.
fn is_host(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok() || is_dns_name(s)
}

/// An RFC 1123 DNS name in ASCII (IDNs in their `xn--` form), without a
/// trailing dot, whose last label is not all digits (RFC 3696: so that no
/// resolver reads it as an address, `10.1.1.300` or `0x0a.1`'s cousins).
fn is_dns_name(s: &str) -> bool {
    rfc1123_labels(s)
        && s.rsplit('.')
            .next()
            .is_some_and(|last| !last.bytes().all(|b| b.is_ascii_digit()))
}

fn is_user(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// A reference to a Template revision in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// The Template's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The published revision the machine was provisioned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub revision: Option<i64>,
}

/// Observed state of a Workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Compliant, InventoryFresh, Conflict, Remediating,
    /// RemediationFailed, RemediationUnverified, TemplateCurrent.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The compliance verdict and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceSummary>,
    /// Actionable findings (Pending, Overdue, Exempt), one per advisory, most
    /// urgent first, capped; no-fix and blocked findings are counts only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Actionable findings left out of `findings` by the cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub findings_truncated: i32,
    /// What a remediation Job would install now: the due fixes (Pending or
    /// Overdue, not exempt, not blocked) past their soak time or emergencies.
    /// The driving policy plans its rollout from this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installable: Option<InstallableFixes>,
    /// The per-Workload remediation record; survives Job cleanup and restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<RemediationRecord>,
    /// Which template revision the machine runs and which is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateStatus>,
    /// The inventory the evaluation used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryReference>,
    /// The PatchPolicies matching this Workload; the first drives remediation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Where a Workload stands with its template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateStatus {
    /// The Template's name.
    pub name: String,
    /// The revision the machine was provisioned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The Template's latest published revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<i64>,
    /// True when `revision` is the latest.
    #[serde(default)]
    pub current: bool,
}

/// The fixes a Workload needs that may be installed now.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstallableFixes {
    /// Short digest of the packages and minimum fixed versions: remediation
    /// Jobs are named after it, and a new digest starts a new attempt count.
    pub fix_set: String,
    /// How many packages.
    #[serde(default)]
    pub packages: i32,
    /// How many advisories they address.
    #[serde(default)]
    pub advisories: i32,
    /// At least one is an emergency by the driving policy (may run outside
    /// maintenance windows).
    #[serde(default)]
    pub emergency: bool,
    /// The earliest due date among them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Time>,
}

/// Phase of a Workload's remediation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RemediationPhase {
    /// The Job exists and has not finished.
    Running,
    /// The Job succeeded; waiting for an inventory written after it started
    /// that shows the fixed versions.
    Verifying,
    /// A fresh inventory confirmed the fix.
    Verified,
    /// The Job failed; another attempt follows after `backoffUntil`.
    BackingOff,
    /// Every attempt failed: `RemediationFailed`.
    Failed,
    /// The Job succeeded but no fresh inventory confirmed the fix within
    /// `verifyTimeout`: `RemediationUnverified`.
    Unverified,
    /// The Job's script refused to act (exit code 2 and a message beginning
    /// `refused:`: a configuration error on this Workload, e.g. an unpinned
    /// host key or invalid input):
    /// `RemediationRefused`. No new attempt until the Workload's spec
    /// changes; never counted toward the policy's `maxFailures`.
    Refused,
}

/// The result of one finished attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RemediationOutcome {
    /// The Job succeeded and a fresh inventory confirmed the fix.
    Verified,
    /// The Job failed.
    Failed,
    /// The Job succeeded but the fix was not confirmed in time.
    Unverified,
    /// The Job's script refused to act (exit code 2 and a `refused:`
    /// message): a configuration error on this Workload, not a rollout
    /// failure.
    Refused,
}

/// The per-Workload remediation ledger, written by the workload reconciler
/// from the Jobs it observes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationRecord {
    /// The PatchPolicy that drives this Workload's remediation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Short hash of the set of (package, minimum fixed version) addressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix_set: Option<String>,
    /// The attempt number for this fix set, from 1.
    #[serde(default)]
    pub attempt: i32,
    /// The current or last Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Running, Verifying, Verified, BackingOff, Failed, Unverified or Refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RemediationPhase>,
    /// When the current or last Job started (server time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The outcome of the last finished attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RemediationOutcome>,
    /// No new attempt starts before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until: Option<Time>,
    /// What happened, e.g. the failed pod's termination message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The Workload's canonical Inventory as Patchloop saw it when it
    /// created the Job: only a later spec change of it (a higher generation,
    /// or a recreated object) can verify the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_baseline: Option<InventoryVersion>,
    /// With phase `Refused`: the Workload's `metadata.generation` the
    /// refused Job was created for; a new attempt waits for a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_generation: Option<i64>,
}

/// One version of an Inventory, in the apiserver's own terms (no client
/// can set either).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryVersion {
    /// The object's uid; absent when there was no Inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Its `metadata.generation` (0 when there was no Inventory).
    #[serde(default)]
    pub generation: i64,
}

impl InventoryVersion {
    /// Whether `self` (the Inventory now) was written after `baseline`: a
    /// recreated object, or a higher generation of the same one.
    pub fn is_newer_than(&self, baseline: &InventoryVersion) -> bool {
        self.uid.is_some() && (self.uid != baseline.uid || self.generation > baseline.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(target: serde_json::Value) -> Option<&'static str> {
        check_target(&target).err().map(|e| e.field)
    }

    #[test]
    fn addresses_are_dns_names_or_ip_addresses() {
        let long_label = "a".repeat(63);
        let name_253 = [long_label.as_str(); 4].join(".")[..253]
            .trim_end_matches('.')
            .to_owned();
        for ok in [
            "10.0.3.17",
            "::1",
            "2001:db8::17",
            "::ffff:192.0.2.1",
            "web-01",
            "web-01.fleet.example.com",
            "WEB.Example.COM",
            "xn--bcher-kva.example",
            "3com.example",
            long_label.as_str(),
            name_253.as_str(),
        ] {
            assert_eq!(field_of(json!({"address": ok})), None, "{ok}");
        }
        let too_long_label = "a".repeat(64);
        let name_254 = format!("{}.{}", "a".repeat(63), [long_label.as_str(); 3].join("."));
        assert_eq!(name_254.len(), 255);
        for bad in [
            "$(SSH_PASSPHRASE)",
            "$$(X)",
            "$(X",
            "$(A$(B))",
            "",
            "web_01.example",
            "bücher.example",
            "example.com.",
            ".example.com",
            "a..b",
            "-web.example",
            "web-.example",
            too_long_label.as_str(),
            name_254.as_str(),
            "10.0.0.256",
            "10.1",
            "1.2.3.4.5",
            "[::1]",
            "fe80::1%eth0",
            "2001:db8::17::1",
            "-oProxyCommand=sh",
            "host name",
            "host\nname",
        ] {
            assert_eq!(
                field_of(json!({"address": bad})),
                Some("spec.target.address"),
                "{bad:?}"
            );
        }
        assert_eq!(
            field_of(json!({"address": 17})),
            Some("spec.target.address")
        );
    }

    #[test]
    fn users_ports_and_nodes_follow_their_grammar() {
        assert_eq!(
            field_of(json!({"address": "h", "user": "patch", "port": 2222, "node": "10.0.0.5"})),
            None
        );
        assert_eq!(field_of(json!({"user": "_svc.patch-1"})), None);
        for bad in ["Root", "-root", "9patch", "pa$(X)", "", &"a".repeat(33)] {
            assert_eq!(
                field_of(json!({"user": bad})),
                Some("spec.target.user"),
                "{bad}"
            );
        }
        for bad in [json!(0), json!(65536), json!(-22), json!("22"), json!(22.5)] {
            assert_eq!(
                field_of(json!({"port": bad})),
                Some("spec.target.port"),
                "{bad}"
            );
        }
        for bad in ["Node-1", "node_1", "node.", "$(X)"] {
            assert_eq!(
                field_of(json!({"node": bad})),
                Some("spec.target.node"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_target_is_an_object_of_known_fields_and_errors_never_echo_it() {
        assert_eq!(field_of(json!("10.0.0.1")), Some("spec.target"));
        let e = check_target(&json!({"address": "h", "$(SSH_PASSPHRASE)": "x"}))
            .expect_err("unknown field");
        assert_eq!(e.field, "spec.target");
        assert!(!e.to_string().contains("SSH_PASSPHRASE"), "{e}");
        let e = check_target(&json!({"address": "$(SSH_PASSPHRASE)"})).expect_err("bad address");
        assert!(!e.to_string().contains('$'), "{e}");
        let spec = |target| WorkloadSpec {
            platform: "Debian:12".into(),
            template_ref: None,
            target,
            paused: false,
        };
        assert_eq!(spec(None).contract_target().as_deref(), Ok("{}"));
        assert_eq!(
            spec(Some(json!({"address": "10.0.3.17"})))
                .contract_target()
                .as_deref(),
            Ok(r#"{"address":"10.0.3.17"}"#)
        );
        assert!(
            spec(Some(json!({"address": "a b"})))
                .contract_target()
                .is_err()
        );
    }

    #[test]
    fn the_schema_patterns_accept_what_the_checks_accept() {
        let address = regex::Regex::new(ADDRESS_PATTERN).expect("address pattern");
        for ok in ["10.0.3.17", "2001:db8::17", "web-01.example.com"] {
            assert!(address.is_match(ok), "{ok}");
        }
        for bad in ["$(X)", "a b", "web_01", "-o", "example.com."] {
            assert!(!address.is_match(bad), "{bad}");
        }
        assert!(
            regex::Regex::new(USER_PATTERN)
                .expect("user")
                .is_match("patch")
        );
        assert!(
            regex::Regex::new(NODE_PATTERN)
                .expect("node")
                .is_match("node-a.example.com")
        );
    }
}
