//! Kubernetes label selectors (`matchLabels`, `matchExpressions`) evaluated
//! against an object's labels, without a cluster.

use std::collections::BTreeMap;

/// A selector the apiserver would refuse; the policy or exception carrying it
/// is not Ready and matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector: {0}")]
pub struct SelectorError(pub String);

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, Copy)]
pub struct Requirement<'a> {
    /// The label key.
    pub key: &'a str,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: &'a str,
    /// The values `In` and `NotIn` compare with.
    pub values: &'a [String],
}

/// A label selector as the engine reads it. The API's `LabelSelector`
/// implements it (`crate::api::common`), so the engine names no API type.
pub trait LabelQuery {
    /// `matchLabels`: each key must carry exactly this value.
    fn match_labels(&self) -> impl Iterator<Item = (&str, &str)>;
    /// `matchExpressions`.
    fn requirements(&self) -> impl Iterator<Item = Requirement<'_>>;
}

/// True when `labels` satisfy `selector`. The empty selector `{}` matches
/// everything, as in Kubernetes.
pub fn matches(
    selector: &impl LabelQuery,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    for (key, value) in selector.match_labels() {
        if labels.get(key).map(String::as_str) != Some(value) {
            return Ok(false);
        }
    }
    for expr in selector.requirements() {
        let values = expr.values;
        let present = labels.get(expr.key);
        let ok = match expr.operator {
            "In" | "NotIn" if values.is_empty() => {
                return Err(SelectorError(format!(
                    "operator {} on key {:?} needs values",
                    expr.operator, expr.key
                )));
            }
            "In" => present.is_some_and(|v| values.contains(v)),
            "NotIn" => present.is_none_or(|v| !values.contains(v)),
            "Exists" => present.is_some(),
            "DoesNotExist" => present.is_none(),
            other => {
                return Err(SelectorError(format!(
                    "unknown operator {other:?} on key {:?}",
                    expr.key
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        let sel = LabelSelector::default();
        assert_eq!(matches(&sel, &labels(&[])), Ok(true));
        assert_eq!(matches(&sel, &labels(&[("a", "b")])), Ok(true));
    }

    #[test]
    fn match_labels_and_expressions_combine() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("tier", "gold")])),
            match_expressions: Some(vec![
                expr("app", "In", &["shop", "erp"]),
                expr("legacy", "DoesNotExist", &[]),
                expr("zone", "NotIn", &["dmz"]),
            ]),
        };
        assert_eq!(
            matches(&sel, &labels(&[("tier", "gold"), ("app", "shop")])),
            Ok(true)
        );
        assert_eq!(
            matches(&sel, &labels(&[("tier", "gold"), ("app", "crm")])),
            Ok(false)
        );
        assert_eq!(
            matches(
                &sel,
                &labels(&[("tier", "gold"), ("app", "erp"), ("legacy", "1")])
            ),
            Ok(false)
        );
        assert_eq!(
            matches(
                &sel,
                &labels(&[("tier", "gold"), ("app", "erp"), ("zone", "dmz")])
            ),
            Ok(false)
        );
        assert_eq!(
            matches(&sel, &labels(&[("tier", "silver"), ("app", "shop")])),
            Ok(false)
        );
    }

    #[test]
    fn invalid_expressions_are_errors() {
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("app", "Like", &["x"])]),
            ..Default::default()
        };
        assert!(matches(&sel, &labels(&[])).is_err());
        let sel = LabelSelector {
            match_expressions: Some(vec![expr("app", "In", &[])]),
            ..Default::default()
        };
        assert!(matches(&sel, &labels(&[])).is_err());
    }
}
