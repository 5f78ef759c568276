//! Standard `metav1.Condition` handling shared by every kind: conditions are
//! a list-map keyed by `type`; `lastTransitionTime` moves only when `status`
//! changes, so a steady state writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types used across kinds (kstatus-compatible `Ready` first).
pub mod types {
    /// This generation was processed and its inputs are valid (never "compliant").
    pub const READY: &str = "Ready";
    /// Nothing installable is missing (Workload, Template).
    pub const COMPLIANT: &str = "Compliant";
    /// The inventory is younger than the policy's `inventoryMaxAge`.
    pub const INVENTORY_FRESH: &str = "InventoryFresh";
    /// Inventories under other names than the subject's canonical one name
    /// it, and are ignored.
    pub const INVENTORY_IGNORED: &str = "InventoryIgnored";
    /// Several remediation policies tie on priority.
    pub const CONFLICT: &str = "Conflict";
    /// A remediation Job is running or being verified.
    pub const REMEDIATING: &str = "Remediating";
    /// Remediation gave up after `attempts` failures.
    pub const REMEDIATION_FAILED: &str = "RemediationFailed";
    /// A Job succeeded but no fresh inventory confirmed the fix in time.
    pub const REMEDIATION_UNVERIFIED: &str = "RemediationUnverified";
    /// The last Job's script refused to act (exit code 2 and a `refused:`
    /// message): a configuration error on the Workload, retried only once
    /// its spec changes.
    pub const REMEDIATION_REFUSED: &str = "RemediationRefused";
    /// The object runs its template's latest published revision.
    pub const TEMPLATE_CURRENT: &str = "TemplateCurrent";
    /// The policy's rollout paused itself after `maxFailures`.
    pub const ROLLOUT_PAUSED: &str = "RolloutPaused";
    /// A Template has an open ChangeRequest.
    pub const CHANGE_REQUEST_OPEN: &str = "ChangeRequestOpen";
    /// A ChangeRequest's current scope is approved (by a person or the policy).
    pub const APPROVED: &str = "Approved";
    /// A PatchException currently exempts findings.
    pub const ACTIVE: &str = "Active";
    /// An AdvisoryFeed's last refresh failed; the last good data is kept.
    pub const DEGRADED: &str = "Degraded";
}

/// A condition to set, before timestamps and generation are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredCondition {
    /// The condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// CamelCase machine-readable reason.
    pub reason: String,
    /// A sentence a person can act on.
    pub message: String,
}

/// The three condition statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It cannot be told.
    Unknown,
}

impl ConditionStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }

    /// `True` when `b`, else `False`.
    pub fn from_bool(b: bool) -> Self {
        if b {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl DesiredCondition {
    /// A condition with the given type, status, reason and message.
    pub fn new(
        type_: &'static str,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        DesiredCondition {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Builds the next condition list from the previous one: every desired
/// condition is set, keeping the previous `lastTransitionTime` when the status
/// did not change; conditions not desired are dropped. Returns the list and
/// the types whose status changed (the only moments worth an Event).
pub fn merge(
    previous: &[Condition],
    desired: &[DesiredCondition],
    observed_generation: Option<i64>,
    now: &Time,
) -> (Vec<Condition>, Vec<&'static str>) {
    let mut transitions = Vec::new();
    let next = desired
        .iter()
        .map(|d| {
            let old = find(previous, d.type_);
            let unchanged = old.is_some_and(|o| o.status == d.status.as_str());
            if !unchanged {
                transitions.push(d.type_);
            }
            Condition {
                type_: d.type_.to_owned(),
                status: d.status.as_str().to_owned(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation,
                last_transition_time: match old {
                    Some(o) if unchanged => o.last_transition_time.clone(),
                    _ => now.clone(),
                },
            }
        })
        .collect();
    (next, transitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let ready = DesiredCondition::new(types::READY, ConditionStatus::True, "Valid", "ok");
        let (first, t1) = merge(&[], std::slice::from_ref(&ready), Some(1), &at(100));
        assert_eq!(t1, vec![types::READY]);
        assert_eq!(first[0].last_transition_time, at(100));

        let reworded =
            DesiredCondition::new(types::READY, ConditionStatus::True, "Valid", "still ok");
        let (second, t2) = merge(&first, &[reworded], Some(2), &at(200));
        assert!(t2.is_empty(), "same status is no transition");
        assert_eq!(second[0].last_transition_time, at(100));
        assert_eq!(second[0].observed_generation, Some(2));
        assert_eq!(second[0].message, "still ok");

        let flipped = DesiredCondition::new(types::READY, ConditionStatus::False, "Invalid", "bad");
        let (third, t3) = merge(&second, &[flipped], Some(2), &at(300));
        assert_eq!(t3, vec![types::READY]);
        assert_eq!(third[0].last_transition_time, at(300));
        assert!(!is_true(&third, types::READY));
    }

    #[test]
    fn undesired_conditions_are_dropped() {
        let a = DesiredCondition::new(types::READY, ConditionStatus::True, "R", "m");
        let b = DesiredCondition::new(types::CONFLICT, ConditionStatus::True, "Tie", "m");
        let (both, _) = merge(&[], &[a.clone(), b], None, &at(1));
        let (only_a, transitions) = merge(&both, &[a], None, &at(2));
        assert_eq!(only_a.len(), 1);
        assert!(transitions.is_empty());
        assert!(find(&only_a, types::CONFLICT).is_none());
    }
}
