//! `ChangeRequest`: the audited record of one template rebuild, from the
//! findings that opened it to publication. Not owned by its Template: it is
//! the audit trail and outlives it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Severity;

/// The label linking a ChangeRequest to its Template; open requests are found
/// by it, never by recomputing a name.
pub const TEMPLATE_LABEL: &str = "patchloop.dev/template";

/// The name of a request's build result Inventory: the one Inventory that
/// may speak for it.
pub fn result_inventory_name(request: &str) -> String {
    super::inventory::InventorySubject {
        kind: super::inventory::SubjectKind::ChangeRequest,
        name: request.to_owned(),
        revision: None,
    }
    .canonical_inventory_name()
}

/// ChangeRequest records one template rebuild: why (scope), who decided,
/// the build and test Jobs, and the published revision.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "patchloop.dev",
    version = "v1alpha1",
    kind = "ChangeRequest",
    namespaced,
    status = "ChangeRequestStatus",
    shortname = "chg",
    category = "patchloop",
    doc = "ChangeRequest is the audited record of one template rebuild: scope, approval, build, test and publication.",
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.template"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        json_path = ".status.targetRevision"
    ),
    printcolumn(
        name = "Decision",
        type_ = "string",
        priority = 1,
        json_path = ".spec.decision.verdict"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRequestSpec {
    /// The Template to rebuild, in the same namespace. Fixed once the
    /// request is decided (`status.templateUid`): the controller, not the
    /// schema, enforces it (Kubernetes 1.20 has no CEL rules).
    #[schemars(length(min = 1))]
    pub template: String,
    /// A person's decision. It counts only while `digest` equals
    /// `status.scope.digest` and `requestUid` equals this request's
    /// `metadata.uid`; `patchloop approve` fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// A person's decision on a ChangeRequest.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Approved or Rejected.
    pub verdict: Verdict,
    /// The `status.scope.digest` the decision was made on; when the scope
    /// changes before the build starts, the decision stops counting.
    #[schemars(length(min = 1))]
    pub digest: String,
    /// The `metadata.uid` of the ChangeRequest decided on: a decision copied
    /// onto another request (even one with the same name) does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_uid: Option<String>,
    /// When the person decided (as their client said). Each `patchloop
    /// approve` writes a new one, later than the last: with the digest and
    /// the field managers it tells one decision from another, so a voided
    /// decision stays void through edits of its other fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// Why, for the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A decision's verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Verdict {
    /// Rebuild, test and publish.
    Approved,
    /// Close the request without building.
    Rejected,
}

/// ChangeRequest phases.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ChangeRequestPhase {
    /// Waiting for a decision whose digest matches the scope.
    AwaitingApproval,
    /// Approved (by a person or the policy); the build starts next.
    Approved,
    /// The build Job runs.
    Building,
    /// The test Job runs against the built image.
    Testing,
    /// The new revision is published (closed).
    Published,
    /// A person rejected it (closed).
    Rejected,
    /// The build, the test or the publication checks failed (closed).
    Failed,
    /// The template became compliant another way (closed).
    Obsolete,
}

/// Observed state of a ChangeRequest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRequestStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Approved, Published.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the request stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ChangeRequestPhase>,
    /// A sentence saying what happens next or what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the rebuild includes; frozen once the build starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The `metadata.uid` of the Template this request was opened for,
    /// recorded when the request is first decided. A Template under
    /// `spec.template` with another uid (`spec.template` edited, or the
    /// Template deleted and recreated) is not this request's: an open
    /// request fails (`TemplateMismatch`), and retention deletes only
    /// requests that recorded the retaining Template's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_uid: Option<String>,
    /// The policy whose approval rule governs this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The template revision and image the rebuild starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_revision: Option<i64>,
    /// The image the rebuild starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    /// The Template's `metadata.generation` the rebuild uses (its build and
    /// test Job templates): a failed request stands for its findings only
    /// until the Template's spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_generation: Option<i64>,
    /// The revision publication will create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<i64>,
    /// The decision that took effect, as the controller recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,
    /// The scope moved away from the person's decision: that decision stays
    /// void (a scope going A→B→A does not revive it, nor does an edit of its
    /// reason) until a new decision is written (another digest, `decidedAt`
    /// or field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_voided: Option<VoidedDecision>,
    /// Hex SHA-256 of the per-request nonce the build result must carry
    /// (Inventory `spec.nonce`). The nonce itself is generated when the
    /// build Job is created and handed to that Job only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce_hash: Option<String>,
    /// The build Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_job: Option<String>,
    /// The build Job's `metadata.uid`, recorded with the nonce's hash right
    /// after the controller created it. Only that Job is adopted (a Job
    /// under the name with another uid is deleted, never adopted), and only
    /// a Pod it controls reports the build's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_job_uid: Option<String>,
    /// The test Job's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_job: Option<String>,
    /// The accepted build result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<BuildResult>,
    /// When each phase was entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<PhaseTimestamps>,
}

/// A person's decision voided by a scope change, by its identity: the void
/// holds while `spec.decision` has the same digest, `decidedAt` and field
/// managers, whatever else of it is edited (its reason, say); a new
/// decision (a new `decidedAt`, as `patchloop approve` writes) counts again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoidedDecision {
    /// The request's `metadata.generation` when it was voided. A void
    /// recorded before voids named their decision (no `digest`) holds for
    /// that generation only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The voided decision's `digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The voided decision's `decidedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// The field managers that owned `spec.decision` (from
    /// `metadata.managedFields`, sorted), for the record: the void holds
    /// for every decision not decided later than this one, whoever writes
    /// it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_managers: Vec<String>,
    /// What changed.
    pub reason: String,
}

/// What a rebuild includes and its digest.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// A digest of the advisories and packages below and of the build
    /// inputs (`buildInputsDigest`); decisions name it.
    pub digest: String,
    /// A digest of what determines the build besides the packages: the
    /// Template's platform, image, build and test Job templates, and the
    /// base revision and image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub build_inputs_digest: String,
    /// The advisories the rebuild addresses.
    #[serde(default)]
    pub advisories: Vec<ScopeAdvisory>,
    /// The packages to update and their minimum fixed versions.
    #[serde(default)]
    pub packages: Vec<ScopePackage>,
}

/// One advisory in a scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeAdvisory {
    /// The advisory id.
    pub id: String,
    /// Its severity.
    pub severity: Severity,
    /// Listed as known exploited.
    #[serde(default)]
    pub known_exploited: bool,
    /// Its CVEs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cves: Vec<String>,
    /// When the fix is due on the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<Time>,
}

/// One package in a scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopePackage {
    /// The package name (binary package).
    pub name: String,
    /// The minimum version the new image must carry (of the source package
    /// when `source` is set: Debian and rpm advisories name sources).
    pub fixed: String,
    /// The source package the advisories name, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A decision as it took effect.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRecord {
    /// Approved or Rejected.
    pub verdict: Verdict,
    /// `Person` (spec.decision) or `Policy` (Automatic, AutomaticForEmergency).
    pub by: String,
    /// The field manager that last set `spec.decision`, as the client asserted
    /// it; the apiserver audit log is the authoritative record of who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_manager: Option<String>,
    /// The digest decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The reason given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the controller saw the decision take effect.
    pub effective_at: Time,
    /// The build Job this approval started. An approval starts one build:
    /// once consumed it never starts another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_by: Option<String>,
}

/// The accepted build result, pinned when the request moves to Testing: the
/// test Job tests this image and publication publishes it, only while the
/// Inventory is still this very object (uid) with this very spec
/// (generation).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildResult {
    /// The new image, a digest reference (`…@sha256:<64 hex>`).
    pub image: String,
    /// The Inventory describing it (`changerequest-<request>`).
    pub inventory: String,
    /// The Inventory's `metadata.uid` when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Inventory's `metadata.resourceVersion` when pinned (for the
    /// audit trail: it also moves with the Inventory's status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// The Inventory's `metadata.generation` when pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// When each phase was entered.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTimestamps {
    /// Opened, waiting for approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_approval: Option<Time>,
    /// Approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<Time>,
    /// Build Job created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub building: Option<Time>,
    /// Test Job created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testing: Option<Time>,
    /// Revision published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<Time>,
    /// Rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Time>,
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<Time>,
    /// Became obsolete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub obsolete: Option<Time>,
}
